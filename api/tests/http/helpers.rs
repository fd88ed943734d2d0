//! The app on port 0 against a test's own database and Redis prefix, and a client for it.

use std::time::Duration;

use groundcrew_api::{
    ApiState,
    auth::{Role, issue_token},
    config::{ApiConfig, AuthConfig},
    rate_limit::{Limit, RateLimits},
};
use groundcrew_jobs::Services;
use groundcrew_testkit::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-for-hs256";
pub const RSA_PRIVATE: &str = include_str!("../keys/rsa_private.pem");
pub const RSA_PUBLIC: &str = include_str!("../keys/rsa_public.pem");
pub const ED_PRIVATE: &str = include_str!("../keys/ed25519_private.pem");
pub const ED_PUBLIC: &str = include_str!("../keys/ed25519_public.pem");

pub fn test_config() -> ApiConfig {
    let generous = Limit {
        max: 100_000,
        window: Duration::from_secs(60),
    };
    ApiConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        auth: AuthConfig {
            jwt_secret: Some(SECRET.into()),
            public_keys_pem: Some(format!("{RSA_PUBLIC}{ED_PUBLIC}")),
            issuer: "groundcrew".into(),
            audience: "groundcrew-api".into(),
        },
        cors_origins: vec![],
        body_limit: 64 * 1024,
        rate_limits: RateLimits {
            per_user: generous,
            per_ip: generous,
            paid: generous,
        },
        trusted_proxies: vec![],
    }
}

pub struct TestApp {
    pub env: TestEnv,
    pub base: String,
    pub http: reqwest::Client,
    pub config: ApiConfig,
    stop: CancellationToken,
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with(TestEnv::new().await, |_| {}).await
    }

    pub async fn start_with(env: TestEnv, tweak: impl FnOnce(&mut ApiConfig)) -> Self {
        groundcrew_jobs::telemetry::init_tracing("pretty");
        let mut config = test_config();
        tweak(&mut config);
        // More connections than the fixture's pool: the idempotency test holds 20 at once.
        let mut services = Services::new(env.settings.clone(), 40).expect("services");
        // Media stored where the test's workers read it (its data dir, or its local S3).
        services.media = env.services.media.clone();
        let state = ApiState::new(services, config.clone()).expect("state");
        let acceptor = groundcrew_api::bind(config.http_addr).await.expect("bind");
        let addr = poem::listener::Acceptor::local_addr(&acceptor)[0]
            .as_socket_addr()
            .copied()
            .expect("a TCP address");
        let stop = CancellationToken::new();
        tokio::spawn(groundcrew_api::serve(state, acceptor, stop.clone()));
        TestApp {
            env,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            config,
            stop,
        }
    }

    pub fn token(&self, sub: Uuid, roles: &[Role]) -> String {
        issue_token(
            &self.config.auth,
            SECRET,
            sub,
            roles,
            Duration::from_secs(600),
        )
    }

    pub fn admin(&self) -> String {
        self.token(Uuid::now_v7(), &[Role::Admin])
    }

    pub fn user(&self) -> String {
        self.token(Uuid::now_v7(), &[])
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.request(Method::GET, path, token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        self.request(Method::POST, path, token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// A creating POST with an `Idempotency-Key`.
    pub async fn post_keyed(
        &self,
        path: &str,
        token: Option<&str>,
        key: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.request(Method::POST, path, token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        self.request(Method::PUT, path, token)
            .json(body)
            .send()
            .await
            .expect("request")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Asserts the status and the error shape; returns the error object.
pub async fn expect_error(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let got = resp.status();
    let body: Value = resp.json().await.expect("a JSON error body");
    assert_eq!(got, status, "status; body {body}");
    let error = body["error"].clone();
    assert_eq!(error["code"], code, "code; body {body}");
    assert!(error["message"].is_string(), "message; body {body}");
    assert!(error["details"].is_object(), "details; body {body}");
    error
}

pub fn announcement(user_ids: &[Uuid]) -> Value {
    serde_json::json!({
        "user_ids": user_ids,
        "category": "social",
        "title": "Hello",
        "body": "We shipped something.",
    })
}
