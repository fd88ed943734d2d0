//! The webhook receivers over HTTP (signature conformance for Stripe, Persona and Standard
//! Webhooks: a refused delivery stores nothing) and the verification flow as a new user sees
//! it, against real Postgres/Redis, a fake Stripe, local APNs and a real SMTP server.

#[allow(dead_code)]
#[path = "http/helpers.rs"]
mod helpers;

use std::{sync::Arc, time::Duration};

use groundcrew_api::{ApiState, auth::issue_token};
use groundcrew_jobs::{
    Queue, Services,
    notify::{
        Providers,
        settings::{NotifySettings, SmtpPool},
    },
    verification::VerificationSettings,
    webhooks::signature::{TOLERANCE_SECONDS, sign_standard, sign_timestamped_hex},
    worker::PoolSpec,
};
use groundcrew_testkit::{
    InProcess, TestEnv,
    apns::FakeApns,
    eventually, identity,
    smtp::SmtpServer,
    stripe::{self, FakeStripe},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const STRIPE_SECRET: &str = "whsec_stripe_test_secret";
const PERSONA_SECRET: &str = "wbhsec_persona_test_secret";
/// The secret of the Standard Webhooks published test vector.
const SPORTS_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WITHIN: Duration = Duration::from_secs(20);

struct App {
    env: TestEnv,
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    _workers: Option<InProcess>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn secrets() -> VerificationSettings {
    VerificationSettings {
        stripe_webhook_secret: Some(STRIPE_SECRET.into()),
        persona_webhook_secret: Some(PERSONA_SECRET.into()),
        sports_webhook_secret: Some(SPORTS_SECRET.into()),
        ..VerificationSettings::unconfigured()
    }
}

/// The API on port 0 with these provider settings; with `workers`, the verification and notify
/// pools run too.
async fn app(
    verification: VerificationSettings,
    notify: Option<NotifySettings>,
    workers: bool,
) -> App {
    let mut env = TestEnv::new().await;
    env.services.verification = Arc::new(verification);
    if let Some(notify) = notify {
        env.services.notify = Arc::new(Providers::new(notify).expect("providers"));
    }
    let mut services = Services::new(env.settings.clone(), 40).expect("services");
    services.verification = env.services.verification.clone();
    let config = helpers::test_config();
    let state = ApiState::new(services, config.clone()).expect("state");
    let acceptor = groundcrew_api::bind(config.http_addr).await.expect("bind");
    let addr = poem::listener::Acceptor::local_addr(&acceptor)[0]
        .as_socket_addr()
        .copied()
        .expect("a TCP address");
    let stop = CancellationToken::new();
    tokio::spawn(groundcrew_api::serve(state, acceptor, stop.clone()));
    let workers = workers.then(|| {
        env.spawn_workers(vec![
            PoolSpec {
                queue: Queue::Verification,
                concurrency: 4,
            },
            PoolSpec {
                queue: Queue::Notify,
                concurrency: 4,
            },
        ])
    });
    App {
        env,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        stop,
        _workers: workers,
    }
}

impl App {
    async fn post(&self, path: &str, headers: &[(&str, String)], body: &str) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        req.send().await.expect("request")
    }

    async fn inbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM webhook_inbox")
            .fetch_one(&self.env.services.db)
            .await
            .unwrap()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Outside the tolerance with room for the request to arrive seconds after `now()` was read: at
/// tolerance + 1 a second boundary crossed in flight made "ahead" look fresh (a CI failure). The
/// exact edge is checked by the unit tests in `webhooks::signature`, at a fixed clock.
const STALE: i64 = TOLERANCE_SECONDS + 30;

fn stripe_body(id: &str) -> String {
    json!({"id": id, "type": "identity.verification_session.processing", "data": {"object": {"id": "vs_none"}}}).to_string()
}

async fn refused(app: &App, path: &str, headers: Vec<(&str, String)>, body: &str, case: &str) {
    let resp = app.post(path, &headers, body).await;
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {text}");
    assert!(text.contains("\"code\""), "{case}: error shape: {text}");
    assert_eq!(app.inbox_rows().await, 0, "{case}: nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_and_persona_signatures_are_checked_before_anything_is_stored() {
    let app = app(secrets(), None, false).await;
    let body = stripe_body("evt_1");
    let sig = |secret: &str, t: i64, b: &str| sign_timestamped_hex(secret, t, b.as_bytes());
    let good = sig(STRIPE_SECRET, now(), &body);
    let hex_part = good.split("v1=").nth(1).unwrap().to_owned();
    let t = now();
    for (case, header) in [
        ("missing header", None),
        ("v1 alone", Some(format!("t={t},v1="))),
        ("truncated", Some(format!("t={t},v1={}", &hex_part[..32]))),
        ("wrong length", Some(format!("t={t},v1={hex_part}00"))),
        ("wrong secret", Some(sig("whsec_other", t, &body))),
        ("stale", Some(sig(STRIPE_SECRET, t - STALE, &body))),
        ("ahead", Some(sig(STRIPE_SECRET, t + STALE, &body))),
        ("no timestamp", Some(format!("v1={hex_part}"))),
    ] {
        let headers = header
            .map(|h| vec![("stripe-signature", h)])
            .unwrap_or_default();
        refused(&app, "/v1/webhooks/stripe", headers, &body, case).await;
    }
    let reserialized =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    refused(
        &app,
        "/v1/webhooks/stripe",
        vec![("stripe-signature", good.clone())],
        &reserialized,
        "re-serialized body",
    )
    .await;

    // Two signatures (secret rotation), one valid → accepted; a repeat → 200, nothing repeated.
    let rotated = format!("{},v1={}", sig("whsec_old", t, &body), hex_part);
    for expected in ["queued", "duplicate"] {
        let resp = app
            .post(
                "/v1/webhooks/stripe",
                &[("stripe-signature", rotated.clone())],
                &body,
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.json::<Value>().await.unwrap()["status"], expected);
    }
    assert_eq!(app.inbox_rows().await, 1);

    // Persona: space-separated groups during rotation; the second group is the valid one.
    let persona = identity::persona_inquiry_event(
        "evt_p1",
        "approved",
        "inq_1",
        &Uuid::now_v7().to_string(),
        None,
    );
    let groups = format!(
        "{} {}",
        sig("wbhsec_old", t, &persona),
        sig(PERSONA_SECRET, t, &persona)
    );
    let resp = app
        .post(
            "/v1/webhooks/persona",
            &[("persona-signature", groups)],
            &persona,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .post(
            "/v1/webhooks/persona",
            &[("persona-signature", sig("wbhsec_old", t, &persona))],
            &persona,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.inbox_rows().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_vector_and_broken_signatures_over_http() {
    let app = app(secrets(), None, false).await;
    // The published Standard Webhooks vector's id and body, at a current timestamp (its own
    // timestamp is years outside the tolerance; the unit tests check its exact signature).
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    let body = r#"{"type":"event.result","data":{"external_id":"g1","status":"final","home_score":1,"away_score":0}}"#;
    let t = now();
    let headers = |id: &str, ts: i64, sig: String| {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]
    };
    let good = sign_standard(SPORTS_SECRET, id, t, body.as_bytes());
    let b64 = good.trim_start_matches("v1,").to_owned();
    for (case, h) in [
        ("v1, alone", headers(id, t, "v1,".into())),
        ("truncated", headers(id, t, format!("v1,{}", &b64[..20]))),
        ("wrong length", headers(id, t, format!("v1,{b64}AAAA"))),
        (
            "wrong secret",
            headers(
                id,
                t,
                sign_standard("whsec_dGVzdA==", id, t, body.as_bytes()),
            ),
        ),
        ("other id", headers("msg_other", t, good.clone())),
        (
            "stale",
            headers(
                id,
                t - STALE,
                sign_standard(SPORTS_SECRET, id, t - STALE, body.as_bytes()),
            ),
        ),
        (
            "ahead",
            headers(
                id,
                t + STALE,
                sign_standard(SPORTS_SECRET, id, t + STALE, body.as_bytes()),
            ),
        ),
        (
            "missing signature",
            headers(id, t, good.clone())[..2].to_vec(),
        ),
        ("missing id", headers(id, t, good.clone())[1..].to_vec()),
    ] {
        refused(&app, "/v1/webhooks/sports", h, body, case).await;
    }
    refused(
        &app,
        "/v1/webhooks/sports",
        headers(id, t, good.clone()),
        &body.replace(':', ": "),
        "re-serialized body",
    )
    .await;
    let two = format!("v1,{} {good}", &b64[1..]);
    let resp = app
        .post("/v1/webhooks/sports", &headers(id, t, two), body)
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "two signatures, one valid");
    assert_eq!(app.inbox_rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_secret_refuses_and_an_unknown_type_is_recorded_and_ignored() {
    let app = app(
        VerificationSettings {
            stripe_webhook_secret: Some(STRIPE_SECRET.into()),
            ..VerificationSettings::unconfigured()
        },
        None,
        true,
    )
    .await;
    let body = r#"{"id":"x"}"#;
    let resp = app
        .post(
            "/v1/webhooks/sports",
            &[
                ("webhook-id", "m1".into()),
                ("webhook-timestamp", now().to_string()),
                (
                    "webhook-signature",
                    sign_standard(SPORTS_SECRET, "m1", now(), body.as_bytes()),
                ),
            ],
            body,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "webhook_not_configured"
    );
    let unknown =
        json!({"id": "evt_u", "type": "customer.created", "data": {"object": {}}}).to_string();
    let resp = app
        .post(
            "/v1/webhooks/stripe",
            &[(
                "stripe-signature",
                sign_timestamped_hex(STRIPE_SECRET, now(), unknown.as_bytes()),
            )],
            &unknown,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let outcome: String = eventually(WITHIN, "processed", || async {
        sqlx::query_scalar("SELECT outcome FROM webhook_inbox WHERE processed_at IS NOT NULL")
            .fetch_optional(&app.env.services.db)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(outcome, "ignored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_verifies_and_gets_the_badge_a_push_and_an_email() {
    let stripe = FakeStripe::start().await;
    let apns = FakeApns::start().await;
    let smtp = SmtpServer::start();
    let notify = NotifySettings {
        apns: Some(apns.settings()),
        fcm: None,
        smtp_url: Some(smtp.url()),
        smtp_pool: SmtpPool::default(),
        mail_from: "groundcrew <noreply@groundcrew.test>".into(),
        data_dir: std::env::temp_dir().join("gc-verification-test-data"),
        one_click: None,
    };
    let app = app(
        VerificationSettings {
            stripe_api_base: stripe.base_url(),
            stripe_secret_key: Some(stripe::SECRET_KEY.into()),
            ..secrets()
        },
        Some(notify),
        true,
    )
    .await;
    let user = Uuid::now_v7();
    let token = issue_token(
        &helpers::test_config().auth,
        helpers::SECRET,
        user,
        &[],
        Duration::from_secs(600),
    );
    let call = |method: reqwest::Method, path: &str| {
        app.http
            .request(method, format!("{}{path}", app.base))
            .bearer_auth(&token)
    };
    let resp = call(reqwest::Method::PUT, "/v1/me")
        .json(&json!({"handle": "newbie", "email": "newbie@example.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    sqlx::query("INSERT INTO devices (id, token, user_id, platform) VALUES ($1, $2, $3, 'apns')")
        .bind(Uuid::now_v7())
        .bind("a".repeat(64))
        .bind(user)
        .execute(&app.env.services.db)
        .await
        .unwrap();

    let resp = call(reqwest::Method::POST, "/v1/me/verifications")
        .json(&json!({"provider": "stripe_identity", "kind": "identity"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let started: Value = resp.json().await.unwrap();
    assert_eq!(started["status"], "pending");
    let item: Value = eventually(WITHIN, "the provider session", || async {
        let list: Value = call(reqwest::Method::GET, "/v1/me/verifications")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let item = list["items"][0].clone();
        item["session_url"].is_string().then_some(item)
    })
    .await;
    assert_eq!(item["id"], started["id"]);
    assert_eq!(item["status"], "requires_input");
    assert!(item["client_secret"].is_string());
    let session = &stripe.identity_sessions()[0].0;

    let event = identity::stripe_identity_event(
        "evt_e2e",
        "verified",
        session,
        started["id"].as_str().unwrap(),
        None,
    );
    let resp = app
        .post(
            "/v1/webhooks/stripe",
            &[(
                "stripe-signature",
                sign_timestamped_hex(STRIPE_SECRET, now(), event.as_bytes()),
            )],
            &event,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    eventually(WITHIN, "GET /v1/me to show verified", || async {
        let me: Value = call(reqwest::Method::GET, "/v1/me")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (me["verified"] == true).then_some(())
    })
    .await;
    eventually(WITHIN, "a push at APNs", || async {
        (apns.request_count() == 1).then_some(())
    })
    .await;
    // The profile's welcome email comes too; the verification result is its own message.
    let is_result = |m: &groundcrew_testkit::smtp::Mail| {
        m.header("subject")
            .is_some_and(|s| s.contains("You are verified"))
    };
    let mail = eventually(WITHIN, "the verification email at SMTP", || async {
        smtp.messages().into_iter().find(is_result)
    })
    .await;
    assert_eq!(mail.rcpt_to, ["newbie@example.test"]);
    assert_eq!(smtp.messages().iter().filter(|m| is_result(m)).count(), 1);
    let list: Value = call(reqwest::Method::GET, "/v1/me/verifications")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["status"], "verified");
    assert!(list["items"][0]["expires_at"].is_string());
}
