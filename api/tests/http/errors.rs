//! Every failure status comes out of a real request in the one error shape.

use reqwest::{Method, StatusCode, header::CONTENT_TYPE};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, announcement, expect_error};

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::start().await;
    let resp = app
        .request(Method::PUT, "/v1/me", Some(&app.user()))
        .header(CONTENT_TYPE, "application/json")
        .body("{\"handle\": ")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "malformed_json").await;
}

#[tokio::test]
async fn missing_token_is_401() {
    let app = TestApp::start().await;
    expect_error(
        app.get("/v1/me", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn ops_route_without_admin_is_403() {
    let app = TestApp::start().await;
    let resp = app.get("/v1/ops/queues", Some(&app.user())).await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn unknown_things_are_404() {
    let app = TestApp::start().await;
    let user = app.user();
    expect_error(
        app.get("/v1/nowhere", Some(&user)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        app.get("/v1/me", Some(&user)).await,
        StatusCode::NOT_FOUND,
        "profile_not_found",
    )
    .await;
    let path = format!("/v1/users/{}", Uuid::now_v7());
    expect_error(
        app.get(&path, Some(&user)).await,
        StatusCode::NOT_FOUND,
        "user_not_found",
    )
    .await;
}

#[tokio::test]
async fn wrong_method_is_405() {
    let app = TestApp::start().await;
    let resp = app
        .request(Method::DELETE, "/v1/ops/queues", Some(&app.admin()))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[tokio::test]
async fn taken_handle_is_409() {
    let app = TestApp::start().await;
    let body = json!({"handle": "same_handle"});
    assert_eq!(
        app.put("/v1/me", Some(&app.user()), &body).await.status(),
        StatusCode::OK
    );
    let resp = app.put("/v1/me", Some(&app.user()), &body).await;
    expect_error(resp, StatusCode::CONFLICT, "handle_taken").await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = TestApp::start().await;
    let huge = json!({"handle": "big", "display_name": "x".repeat(app.config.body_limit)});
    let resp = app.put("/v1/me", Some(&app.user()), &huge).await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = TestApp::start().await;
    let resp = app
        .request(Method::POST, "/v1/ops/notifications", Some(&app.admin()))
        .header(CONTENT_TYPE, "text/plain")
        .body(announcement(&[Uuid::now_v7()]).to_string())
        .send()
        .await
        .unwrap();
    expect_error(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn invalid_input_is_422() {
    let app = TestApp::start().await;
    let user = app.user();
    for body in [
        json!({"handle": "No Caps"}),
        json!({"handle": "ok_handle", "is_admin": true}),
        json!({"handle": "ok_handle", "timezone": "Mars/Olympus"}),
        json!({"display_name": "no handle"}),
    ] {
        let resp = app.put("/v1/me", Some(&user), &body).await;
        expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }
    let resp = app.get("/v1/users/not-a-uuid", Some(&user)).await;
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let resp = app
        .get("/v1/ops/dead-jobs?limit=1000", Some(&app.admin()))
        .await;
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
}

#[tokio::test]
async fn profile_round_trip() {
    let app = TestApp::start().await;
    let id = Uuid::now_v7();
    let token = app.token(id, &[]);
    let body = json!({"handle": "ada_l", "display_name": "Ada", "email": "ada@example.com",
                      "timezone": "Europe/London", "locale": "en-GB", "birthdate": "1990-12-10"});
    let resp = app.put("/v1/me", Some(&token), &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let me: serde_json::Value = app.get("/v1/me", Some(&token)).await.json().await.unwrap();
    assert_eq!(me["id"], id.to_string());
    assert_eq!(me["handle"], "ada_l");
    assert_eq!(me["timezone"], "Europe/London");
    assert_eq!(me["verified"], false);
    let public: serde_json::Value = app
        .get(&format!("/v1/users/{id}"), Some(&app.user()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(public["handle"], "ada_l");
    assert_eq!(public["followers_count"], 0);
    assert!(public.get("email").is_none(), "email is private: {public}");
}

#[tokio::test]
async fn responses_carry_the_request_id() {
    let app = TestApp::start().await;
    let resp = app
        .request(Method::GET, "/healthz", None)
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-123");
    let generated = app.get("/v1/me", None).await;
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(Uuid::parse_str(id).unwrap().get_version_num(), 7);
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let app = TestApp::start().await;
    app.get("/healthz", None).await;
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(text.contains("groundcrew_http_requests_total"), "{text}");
    assert!(text.contains("route=\"healthz\""), "{text}");
    assert!(
        text.contains("groundcrew_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn docs_spec_compression_and_cors() {
    let app = TestApp::start_with(groundcrew_testkit::TestEnv::new().await, |c| {
        c.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    assert_eq!(app.get("/docs", None).await.status(), StatusCode::OK);
    let spec = app
        .request(Method::GET, "/openapi.json", None)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(spec.status(), StatusCode::OK);
    assert_eq!(spec.headers()["content-encoding"], "gzip");

    let preflight = app
        .request(Method::OPTIONS, "/v1/me", None)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}
