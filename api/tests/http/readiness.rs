//! Readiness follows Redis down and back; rate limiting fails open meanwhile.

use std::time::Duration;

use groundcrew_testkit::{TestEnv, eventually};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, expect_error};

#[tokio::test]
async fn readyz_follows_redis() {
    let env = TestEnv::with_private_redis(|_| {}).await;
    let mut app = TestApp::start_with(env, |_| {}).await;
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);

    app.env.private_redis.as_mut().unwrap().stop();
    let resp = app.get("/readyz", None).await;
    let error = expect_error(
        resp,
        StatusCode::SERVICE_UNAVAILABLE,
        "dependency_unavailable",
    )
    .await;
    assert_eq!(error["details"]["dependency"], "redis");

    // Postgres-only work goes on: the rate limiter lets requests through without Redis.
    let resp = app
        .put("/v1/me", Some(&app.user()), &json!({"handle": "no_redis"}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    app.env.private_redis.as_mut().unwrap().restart();
    eventually(
        Duration::from_secs(15),
        "readiness after Redis restarts",
        || async { (app.get("/readyz", None).await.status() == StatusCode::OK).then_some(()) },
    )
    .await;
}
