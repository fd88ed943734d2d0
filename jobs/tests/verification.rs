//! The verification family against real Postgres and Redis and local Stripe / Persona servers:
//! provider sessions, provider events applied forward-only, the badge and `age_verified`, the
//! result notification, and expiry.

use std::{sync::Arc, time::Duration};

use chrono::{Months, NaiveDate, Utc};
use groundcrew_jobs::{
    JobTx, Queue,
    verification::{self, Kind, ProviderKind, VerificationSettings, age},
    webhooks::{Incoming, Provider, Received, receive},
    worker::PoolSpec,
};
use groundcrew_testkit::{
    InProcess, TestEnv, eventually,
    identity::{self, FakePersona},
    stripe::{self, FakeStripe},
};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(20);

async fn env_with(settings: VerificationSettings) -> (TestEnv, InProcess) {
    let mut env = TestEnv::new().await;
    env.services.verification = Arc::new(settings);
    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Verification,
        concurrency: 4,
    }]);
    (env, workers)
}

fn with_stripe(stripe: &FakeStripe) -> VerificationSettings {
    VerificationSettings {
        stripe_api_base: stripe.base_url(),
        stripe_secret_key: Some(stripe::SECRET_KEY.into()),
        ..VerificationSettings::unconfigured()
    }
}

fn with_persona(persona: &FakePersona) -> VerificationSettings {
    VerificationSettings {
        persona_api_base: persona.base_url(),
        persona_api_key: Some(identity::PERSONA_API_KEY.into()),
        ..VerificationSettings::unconfigured()
    }
}

async fn user(env: &TestEnv, timezone: &str) -> Uuid {
    let email = format!("{}@example.test", Uuid::now_v7());
    env.user_with(Some(&email), timezone).await
}

async fn start(env: &TestEnv, user: Uuid, provider: ProviderKind, kind: Kind) -> Uuid {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let id = verification::start(&mut tx, user, provider, kind)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

/// (status, detail, provider session id, session url, client secret) once `ready` holds.
type Row = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn row(env: &TestEnv, id: Uuid) -> Row {
    sqlx::query_as(
        "SELECT status, detail, provider_session_id, session_url, client_secret
         FROM verifications WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.services.db)
    .await
    .unwrap()
}

async fn status_becomes(env: &TestEnv, id: Uuid, status: &str) -> Row {
    eventually(WITHIN, &format!("status {status}"), || async {
        let r = row(env, id).await;
        (r.0 == status).then_some(r)
    })
    .await
}

async fn badges(env: &TestEnv, user: Uuid) -> (bool, bool) {
    sqlx::query_as("SELECT verified, age_verified FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&env.services.db)
        .await
        .unwrap()
}

async fn deliver(env: &TestEnv, provider: Provider, body: &str) -> Received {
    let incoming = Incoming::parse(provider, body.as_bytes(), None).unwrap();
    receive(&env.services, incoming, None).await.unwrap()
}

async fn all_processed(env: &TestEnv, events: i64) -> Vec<String> {
    eventually(WITHIN, "events processed", || async {
        let outcomes: Vec<String> = sqlx::query_scalar(
            "SELECT outcome FROM webhook_inbox WHERE processed_at IS NOT NULL ORDER BY received_at",
        )
        .fetch_all(&env.services.db)
        .await
        .unwrap();
        (outcomes.len() as i64 == events).then_some(outcomes)
    })
    .await
}

async fn notifications(env: &TestEnv, user: Uuid) -> Vec<(String, Option<serde_json::Value>)> {
    sqlx::query_as("SELECT title, email FROM notifications WHERE user_id = $1 ORDER BY id")
        .bind(user)
        .fetch_all(&env.services.db)
        .await
        .unwrap()
}

/// A Stripe Identity verification with its session opened at the fake Stripe.
async fn opened(env: &TestEnv, user: Uuid, kind: Kind) -> (Uuid, String) {
    let id = start(env, user, ProviderKind::StripeIdentity, kind).await;
    let r = status_becomes(env, id, "requires_input").await;
    (id, r.2.expect("session id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_identity_session_is_created_once_with_what_the_app_needs() {
    let stripe = FakeStripe::start().await;
    let (env, _workers) = env_with(with_stripe(&stripe)).await;
    let alice = user(&env, "UTC").await;
    let id = start(&env, alice, ProviderKind::StripeIdentity, Kind::Identity).await;
    let (_, detail, session, url, secret) = status_becomes(&env, id, "requires_input").await;
    assert_eq!(detail, None);
    let sessions = stripe.identity_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(session.as_deref(), Some(sessions[0].0.as_str()));
    assert_eq!(sessions[0].1["type"], "document");
    assert_eq!(sessions[0].1["metadata[verification_id]"], id.to_string());
    assert!(url.unwrap().starts_with("https://verify.stripe.com/"));
    assert!(secret.unwrap().starts_with(&sessions[0].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persona_inquiry_is_created_with_our_id_as_its_reference() {
    let persona = FakePersona::start().await;
    let (env, _workers) = env_with(with_persona(&persona)).await;
    let alice = user(&env, "UTC").await;
    let id = start(&env, alice, ProviderKind::Persona, Kind::Age).await;
    let (_, _, session, url, token) = status_becomes(&env, id, "requires_input").await;
    assert_eq!(persona.inquiries(), vec![("inq_1".into(), id.to_string())]);
    assert_eq!(session.as_deref(), Some("inq_1"));
    assert!(url.unwrap().ends_with("inquiry-id=inq_1"));
    assert!(token.unwrap().starts_with("sess_"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_the_session_fails_with_a_clear_detail() {
    let (env, _workers) = env_with(VerificationSettings::unconfigured()).await;
    let alice = user(&env, "UTC").await;
    let stripe_id = start(&env, alice, ProviderKind::StripeIdentity, Kind::Identity).await;
    let persona_id = start(&env, alice, ProviderKind::Persona, Kind::Identity).await;
    let stripe_row = status_becomes(&env, stripe_id, "failed").await;
    let persona_row = status_becomes(&env, persona_id, "failed").await;
    assert!(
        stripe_row
            .1
            .unwrap()
            .contains("GROUNDCREW_STRIPE_SECRET_KEY")
    );
    assert!(
        persona_row
            .1
            .unwrap()
            .contains("GROUNDCREW_PERSONA_API_KEY")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_then_a_late_processing_leaves_it_verified_with_badge_and_one_notification() {
    let stripe = FakeStripe::start().await;
    let (env, _workers) = env_with(with_stripe(&stripe)).await;
    let alice = user(&env, "UTC").await;
    let (id, session) = opened(&env, alice, Kind::Identity).await;
    let v = id.to_string();
    deliver(
        &env,
        Provider::Stripe,
        &identity::stripe_identity_event("evt_1", "verified", &session, &v, None),
    )
    .await;
    all_processed(&env, 1).await;
    deliver(
        &env,
        Provider::Stripe,
        &identity::stripe_identity_event("evt_2", "processing", &session, &v, None),
    )
    .await;
    let outcomes = all_processed(&env, 2).await;
    assert_eq!(outcomes, ["verified", "stale"]);
    status_becomes(&env, id, "verified").await;
    assert_eq!(badges(&env, alice).await, (true, false));
    let (verified_at, expires_at): (chrono::DateTime<Utc>, chrono::DateTime<Utc>) =
        sqlx::query_as("SELECT verified_at, expires_at FROM verifications WHERE id = $1")
            .bind(id)
            .fetch_one(&env.services.db)
            .await
            .unwrap();
    assert_eq!(
        expires_at,
        verified_at.checked_add_months(Months::new(12)).unwrap()
    );
    let sent = notifications(&env, alice).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].1.as_ref().unwrap()["template"],
        "verification_result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_verified_event_delivered_five_times_concurrently_applies_once() {
    let stripe = FakeStripe::start().await;
    let (env, _workers) = env_with(with_stripe(&stripe)).await;
    let alice = user(&env, "UTC").await;
    let (id, session) = opened(&env, alice, Kind::Identity).await;
    let body =
        identity::stripe_identity_event("evt_dup", "verified", &session, &id.to_string(), None);
    let deliveries = (0..5).map(|_| {
        let services = env.services.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let incoming = Incoming::parse(Provider::Stripe, body.as_bytes(), None).unwrap();
            receive(&services, incoming, None).await.unwrap()
        })
    });
    let queued = futures::future::join_all(deliveries)
        .await
        .into_iter()
        .filter(|r| matches!(r.as_ref().unwrap(), Received::Queued(_)))
        .count();
    assert_eq!(queued, 1);
    assert_eq!(all_processed(&env, 1).await, ["verified"]);
    assert_eq!(notifications(&env, alice).await.len(), 1);
}

/// A birth date `years` years and `days` days before today in `timezone`.
fn born(timezone: &str, years: u32, days_short: u64) -> NaiveDate {
    let today = age::local_date(Utc::now(), timezone);
    today.checked_sub_months(Months::new(12 * years)).unwrap() + chrono::Days::new(days_short)
}

/// A Persona age check approved with this birth date; the user's badges afterwards.
async fn age_check(env: &TestEnv, timezone: &str, birthdate: NaiveDate) -> (bool, bool) {
    let user = user(env, timezone).await;
    let id = start(env, user, ProviderKind::Persona, Kind::Age).await;
    let inquiry = status_becomes(env, id, "requires_input")
        .await
        .2
        .expect("inquiry id");
    let event_id = format!("evt_{}", Uuid::now_v7().simple());
    let body = identity::persona_inquiry_event(
        &event_id,
        "approved",
        &inquiry,
        &id.to_string(),
        Some(birthdate),
    );
    deliver(env, Provider::Persona, &body).await;
    status_becomes(env, id, "verified").await;
    badges(env, user).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_is_counted_on_the_day_in_the_users_time_zone() {
    let persona = FakePersona::start().await;
    let (env, _workers) = env_with(with_persona(&persona)).await;
    // Zones on both sides of the date line, so "today" differs between them for part of the day.
    for tz in ["Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"] {
        assert_eq!(
            age_check(&env, tz, born(tz, 18, 0)).await,
            (true, true),
            "exactly 18 in {tz}"
        );
        assert_eq!(
            age_check(&env, tz, born(tz, 18, 1)).await,
            (true, false),
            "a day short in {tz}"
        );
    }
    // Born on Feb 29: 18 on Mar 1 of the (always common) 18th year.
    let leap_born = NaiveDate::from_ymd_opt(2004, 2, 29).unwrap();
    let today = age::local_date(Utc::now(), "UTC");
    assert_eq!(
        age_check(&env, "UTC", leap_born).await.1,
        today >= NaiveDate::from_ymd_opt(2022, 3, 1).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_reminds_once_thirty_days_before_and_then_takes_the_badge() {
    let stripe = FakeStripe::start().await;
    let (env, _workers) = env_with(with_stripe(&stripe)).await;
    let alice = user(&env, "UTC").await;
    let (id, session) = opened(&env, alice, Kind::Identity).await;
    deliver(
        &env,
        Provider::Stripe,
        &identity::stripe_identity_event("evt_v", "verified", &session, &id.to_string(), None),
    )
    .await;
    status_becomes(&env, id, "verified").await;
    let sweep = || async {
        let mut tx = JobTx::begin(&env.services).await.unwrap();
        tx.enqueue(&verification::SweepExpiry {}).await.unwrap();
        tx.commit().await.unwrap();
    };
    let reminders = || async {
        notifications(&env, alice)
            .await
            .into_iter()
            .filter(|(_, email)| {
                email
                    .as_ref()
                    .is_some_and(|e| e["template"] == "reverification_reminder")
            })
            .count()
    };
    let set_expiry = |interval: &'static str| {
        let db = env.services.db.clone();
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE verifications SET expires_at = now() + interval '{interval}' WHERE id = $1"
            )))
            .bind(id)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    set_expiry("29 days").await;
    sweep().await;
    sweep().await;
    eventually(WITHIN, "a reminder", || async {
        (reminders().await == 1).then_some(())
    })
    .await;
    assert_eq!(
        badges(&env, alice).await,
        (true, false),
        "still verified before expiry"
    );

    set_expiry("-1 second").await;
    sweep().await;
    eventually(WITHIN, "the badge removed", || async {
        (badges(&env, alice).await == (false, false)).then_some(())
    })
    .await;
    assert_eq!(reminders().await, 1, "one reminder per verification");
}
