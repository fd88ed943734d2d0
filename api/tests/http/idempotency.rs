//! Idempotency-Key: one effect for any number of duplicates, and no reuse with another body.

use futures::future::join_all;
use groundcrew_jobs::maintenance;
use reqwest::{Method, StatusCode};
use uuid::Uuid;

use crate::helpers::{TestApp, announcement, expect_error};

async fn announcements(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ops_announcements")
        .fetch_one(&app.env.services.db)
        .await
        .unwrap()
}

async fn announce_with_key(
    app: &TestApp,
    admin: &str,
    key: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    app.post_keyed("/v1/ops/notifications", Some(admin), key, body)
        .await
}

#[tokio::test]
async fn concurrent_duplicates_cause_one_effect() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let body = announcement(&[Uuid::now_v7(), Uuid::now_v7()]);
    let responses = join_all((0..20).map(|_| {
        app.request(Method::POST, "/v1/ops/notifications", Some(&admin))
            .header("Idempotency-Key", "announce-1")
            .header("X-Request-Id", "req-announce-1")
            .json(&body)
            .send()
    }))
    .await;
    let mut bodies = Vec::new();
    for resp in responses {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        bodies.push(resp.text().await.unwrap());
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(announcements(&app).await, 1);
    let request_id: Option<String> = sqlx::query_scalar("SELECT request_id FROM ops_announcements")
        .fetch_one(&app.env.services.db)
        .await
        .unwrap();
    assert_eq!(request_id.as_deref(), Some("req-announce-1"));

    let mut other = body.clone();
    other["title"] = "Something else".into();
    expect_error(
        announce_with_key(&app, &admin, "announce-1", &other).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(announcements(&app).await, 1);
}

#[tokio::test]
async fn without_a_key_each_request_counts() {
    let app = TestApp::start().await;
    let admin = app.admin();
    let body = announcement(&[Uuid::now_v7()]);
    for _ in 0..2 {
        let resp = app.post("/v1/ops/notifications", Some(&admin), &body).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(announcements(&app).await, 2);
}

#[tokio::test]
async fn the_hourly_sweep_deletes_expired_keys_and_keeps_live_ones() {
    let app = TestApp::start().await;
    let admin = app.admin();
    for key in ["old-1", "old-2", "live"] {
        let resp = announce_with_key(&app, &admin, key, &announcement(&[Uuid::now_v7()])).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }
    let db = &app.env.services.db;
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'
         WHERE key LIKE 'old-%'",
    )
    .execute(db)
    .await
    .unwrap();

    let deleted = maintenance::sweep_idempotency_keys(db).await.unwrap();
    assert_eq!(deleted, 2);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(db)
        .await
        .unwrap();
    assert_eq!(left, vec!["live".to_owned()]);
    // The live key is still held: another body under it is refused.
    expect_error(
        announce_with_key(&app, &admin, "live", &announcement(&[Uuid::now_v7()])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
}
