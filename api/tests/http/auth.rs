//! Bearer JWT: what verifies, what is refused, and which roles open which routes.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    ED_PRIVATE, RSA_PRIVATE, RSA_PUBLIC, SECRET, TestApp, announcement, expect_error,
};

fn claims() -> Value {
    json!({
        "sub": Uuid::now_v7(),
        "exp": chrono::Utc::now().timestamp() + 600,
        "iss": "groundcrew",
        "aud": "groundcrew-api",
        "roles": ["admin"],
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

async fn status_with(app: &TestApp, token: &str) -> StatusCode {
    app.get("/v1/ops/workers", Some(token)).await.status()
}

#[tokio::test]
async fn accepted_algorithms_verify() {
    let app = TestApp::start().await;
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    for token in [
        hs256(&claims()),
        sign(Algorithm::RS256, &rsa, &claims()),
        sign(Algorithm::EdDSA, &ed, &claims()),
    ] {
        assert_eq!(status_with(&app, &token).await, StatusCode::OK);
    }
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let app = TestApp::start().await;
    let mut missing_sub = claims();
    missing_sub.as_object_mut().unwrap().remove("sub");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    // Algorithm confusion: HS256 "signed" with the RSA public key as the shared secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        &claims(),
    );
    let cases = [
        (
            "expired",
            hs256(&with(
                claims(),
                "exp",
                json!(chrono::Utc::now().timestamp() - 3600),
            )),
        ),
        (
            "wrong aud",
            hs256(&with(claims(), "aud", json!("someone-else"))),
        ),
        ("wrong iss", hs256(&with(claims(), "iss", json!("evil")))),
        (
            "sub not a uuid",
            hs256(&with(claims(), "sub", json!("bob"))),
        ),
        ("missing sub", hs256(&missing_sub)),
        ("alg none", alg_none),
        ("HS/RS confusion", confused),
        (
            "bad signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another secret"),
                &claims(),
            ),
        ),
        ("garbage", "not.a.token".into()),
    ];
    for (case, token) in cases {
        let resp = app.get("/v1/ops/workers", Some(&token)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{case}");
        expect_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
}

#[tokio::test]
async fn roles_open_routes() {
    let app = TestApp::start().await;
    let ops_read = hs256(&with(claims(), "roles", json!(["ops_read"])));
    let plain = hs256(&with(
        claims(),
        "roles",
        json!(["feeds", "some_future_role"]),
    ));

    assert_eq!(
        app.get("/v1/me", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/ops/queues", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/ops/queues", Some(&plain)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/v1/ops/queues", Some(&ops_read)).await.status(),
        StatusCode::OK
    );

    let resp = app
        .post("/v1/ops/queues/feed/pause", Some(&ops_read), &json!({}))
        .await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
    let resp = app
        .post(
            "/v1/ops/notifications",
            Some(&ops_read),
            &announcement(&[Uuid::now_v7()]),
        )
        .await;
    expect_error(resp, StatusCode::FORBIDDEN, "forbidden").await;
}
