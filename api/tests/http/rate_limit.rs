//! Rate limits: a burst past the limit gets 429 with Retry-After, and passes once it elapses.

use std::time::{Duration, Instant};

use groundcrew_api::rate_limit::Limit;
use groundcrew_testkit::{TestEnv, eventually};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

use crate::helpers::{TestApp, announcement, expect_error};

#[tokio::test]
async fn per_user_limit_recovers_after_retry_after() {
    let small = Limit {
        max: 5,
        window: Duration::from_secs(2),
    };
    let app = TestApp::start_with(TestEnv::new().await, |c| c.rate_limits.per_user = small).await;
    let token = app.user();
    for _ in 0..5 {
        assert_ne!(
            app.get("/v1/me", Some(&token)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let limited = app.get("/v1/me", Some(&token)).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    expect_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // Another user has a budget of their own.
    assert_eq!(
        app.get("/v1/me", Some(&app.user())).await.status(),
        StatusCode::NOT_FOUND
    );

    let limited_at = Instant::now();
    eventually(
        Duration::from_secs(retry_after + 2),
        "the window to pass",
        || async {
            let status = app.get("/v1/me", Some(&token)).await.status();
            (status != StatusCode::TOO_MANY_REQUESTS).then_some(())
        },
    )
    .await;
    assert!(limited_at.elapsed() <= Duration::from_secs(retry_after + 1));
}

#[tokio::test]
async fn paid_routes_have_a_stricter_limit() {
    let app =
        TestApp::start_with(TestEnv::new().await, |c| c.rate_limits.paid = per_minute(2)).await;
    let admin = app.admin();
    let body = announcement(&[Uuid::now_v7()]);
    for _ in 0..2 {
        assert_eq!(
            app.post("/v1/ops/notifications", Some(&admin), &body)
                .await
                .status(),
            StatusCode::ACCEPTED
        );
    }
    let resp = app.post("/v1/ops/notifications", Some(&admin), &body).await;
    assert!(resp.headers().contains_key("retry-after"));
    expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Reads are not paid work.
    assert_eq!(
        app.get("/v1/ops/queues", Some(&admin)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn per_ip_limit_applies_before_auth_and_with_a_token() {
    let app = TestApp::start_with(TestEnv::new().await, |c| {
        c.rate_limits.per_ip = per_minute(3)
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            app.get("/v1/me", None).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    expect_error(
        app.get("/v1/me", None).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // A valid token does not open another budget for the same address.
    expect_error(
        app.get("/v1/me", Some(&app.user())).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // Probes are not limited.
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    // The test client connects from 127.0.0.1: here, the load balancer.
    let app = TestApp::start_with(TestEnv::new().await, |c| {
        c.rate_limits.per_ip = per_minute(2);
        c.trusted_proxies = vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
    })
    .await;
    let statuses = [
        "203.0.113.7",
        "203.0.113.7",
        "203.0.113.7",
        // Another client behind the same balancer: not limited by the first one's requests.
        "203.0.113.8",
        // What the client wrote left of the hop our proxies saw opens no new budget: the
        // nearest untrusted address, after an internal hop, is still 203.0.113.7.
        "198.51.100.1, 203.0.113.7, 10.1.2.3",
    ];
    assert_eq!(
        forwarded_statuses(&app, &statuses).await,
        [401, 401, 429, 401, 429]
    );
}

#[tokio::test]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let app = TestApp::start_with(TestEnv::new().await, |c| {
        c.rate_limits.per_ip = per_minute(2)
    })
    .await;
    let forged = ["203.0.113.1", "203.0.113.2", "203.0.113.3"];
    assert_eq!(forwarded_statuses(&app, &forged).await, [401, 401, 429]);
}

fn per_minute(max: u32) -> Limit {
    Limit {
        max,
        window: Duration::from_secs(60),
    }
}

/// The status of an unauthenticated `GET /v1/me` with each `X-Forwarded-For`, in turn.
async fn forwarded_statuses(app: &TestApp, forwarded: &[&str]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for value in forwarded {
        let resp = app
            .request(Method::GET, "/v1/me", None)
            .header("x-forwarded-for", *value)
            .send()
            .await
            .expect("request");
        statuses.push(resp.status().as_u16());
    }
    statuses
}
