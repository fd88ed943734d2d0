//! The escrow routes over HTTP against real Postgres and Redis: opening an escrow, who sees
//! it, which moves the machine and the caller's role allow, the ledger once money is in, and
//! referrals.

#[allow(dead_code)]
#[path = "http/helpers.rs"]
mod helpers;

use groundcrew_api::auth::Role;
use groundcrew_jobs::escrow::store;
use helpers::{TestApp, expect_error};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// A user with a profile (escrow parties need one); returns their id and token.
async fn member(app: &TestApp, roles: &[Role]) -> (Uuid, String) {
    let id = Uuid::now_v7();
    let token = app.token(id, roles);
    let handle = format!("u{}", &id.simple().to_string()[20..]);
    let resp = app
        .put("/v1/me", Some(&token), &json!({ "handle": handle }))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    (id, token)
}

fn deal(influencer: Uuid) -> Value {
    json!({
        "deal_id": format!("deal-{}", Uuid::now_v7()),
        "influencer_id": influencer,
        "amount_cents": 11_000,
        "currency": "usd",
    })
}

async fn json_of(resp: reqwest::Response, status: StatusCode) -> Value {
    let got = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(got, status, "body {body}");
    body
}

async fn create(app: &TestApp, sponsor: &str, body: &Value, key: &str) -> reqwest::Response {
    app.post_keyed("/v1/escrows", Some(sponsor), key, body)
        .await
}

async fn transition(app: &TestApp, token: &str, id: &str, to: &str) -> reqwest::Response {
    app.post(
        &format!("/v1/escrows/{id}/transitions"),
        Some(token),
        &json!({ "to": to }),
    )
    .await
}

#[tokio::test]
async fn a_sponsor_opens_one_escrow_per_deal() {
    let app = TestApp::start().await;
    let (sponsor_id, sponsor) = member(&app, &[]).await;
    let (influencer_id, _) = member(&app, &[]).await;
    let body = deal(influencer_id);

    let escrow = json_of(
        create(&app, &sponsor, &body, "deal-1").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(escrow["state"], "pending_payment");
    assert_eq!(escrow["sponsor_id"], sponsor_id.to_string());
    assert_eq!(escrow["amount_cents"], 11_000);
    assert_eq!(escrow["history"], json!([]));
    // A retry with the same key is the same escrow, not a conflict.
    let again = json_of(
        create(&app, &sponsor, &body, "deal-1").await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(again["id"], escrow["id"]);

    expect_error(
        create(&app, &sponsor, &body, "deal-2").await,
        StatusCode::CONFLICT,
        "duplicate_deal",
    )
    .await;
    let mut too_small = deal(influencer_id);
    too_small["amount_cents"] = json!(99);
    expect_error(
        create(&app, &sponsor, &too_small, "deal-3").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    // An influencer without a profile cannot be paid.
    let error = expect_error(
        create(&app, &sponsor, &deal(Uuid::now_v7()), "deal-4").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(error["details"]["field"], "influencer_id");
}

#[tokio::test]
async fn only_the_parties_and_admins_see_an_escrow() {
    let app = TestApp::start().await;
    let (_, sponsor) = member(&app, &[]).await;
    let (influencer_id, influencer) = member(&app, &[]).await;
    let escrow = json_of(
        create(&app, &sponsor, &deal(influencer_id), "k").await,
        StatusCode::CREATED,
    )
    .await;
    let id = escrow["id"].as_str().unwrap();
    let path = format!("/v1/escrows/{id}");

    for token in [&sponsor, &influencer, &app.admin()] {
        let seen = json_of(app.get(&path, Some(token)).await, StatusCode::OK).await;
        assert_eq!(seen["id"], escrow["id"]);
        assert!(seen["payouts"].is_array());
    }
    // A stranger cannot tell this escrow from a missing one.
    let stranger = app.user();
    expect_error(
        app.get(&path, Some(&stranger)).await,
        StatusCode::NOT_FOUND,
        "escrow_not_found",
    )
    .await;
    expect_error(
        app.get(&format!("{path}/ledger"), Some(&stranger)).await,
        StatusCode::NOT_FOUND,
        "escrow_not_found",
    )
    .await;
    expect_error(
        transition(&app, &stranger, id, "cancelled").await,
        StatusCode::NOT_FOUND,
        "escrow_not_found",
    )
    .await;
}

#[tokio::test]
async fn moves_follow_the_machine_and_the_callers_role() {
    let app = TestApp::start().await;
    let (_, sponsor) = member(&app, &[]).await;
    let (influencer_id, influencer) = member(&app, &[]).await;
    let escrow = json_of(
        create(&app, &sponsor, &deal(influencer_id), "k").await,
        StatusCode::CREATED,
    )
    .await;
    let id = escrow["id"].as_str().unwrap();

    expect_error(
        transition(&app, &sponsor, id, "released").await,
        StatusCode::CONFLICT,
        "invalid_transition",
    )
    .await;
    // The edge exists, but payment states move only by the payment provider.
    expect_error(
        transition(&app, &sponsor, id, "payment_processing").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let error = expect_error(
        transition(&app, &sponsor, id, "paid").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(error["details"]["field"], "to");

    // The provider's webhook confirms the payment (the Stripe route's own job-side call).
    let mut tx = app.env.services.begin().await.unwrap();
    let payment = json!({"data": {"object": {"id": "pi_test", "metadata": {"escrow_id": id}}}});
    store::apply_payment_event(
        &mut tx,
        &app.env.services.escrow,
        "payment_intent.succeeded",
        &payment,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // Only the influencer starts the work.
    expect_error(
        transition(&app, &sponsor, id, "work_in_progress").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let moved = json_of(
        transition(&app, &influencer, id, "work_in_progress").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(moved["state"], "work_in_progress");
    let last = moved["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["from"], "locked");
    assert_eq!(last["actor"], "influencer");

    // The money in is one balanced transaction.
    let ledger = json_of(
        app.get(&format!("/v1/escrows/{id}/ledger"), Some(&influencer))
            .await,
        StatusCode::OK,
    )
    .await;
    let transactions = ledger["transactions"].as_array().unwrap();
    assert!(!transactions.is_empty(), "ledger {ledger}");
    for t in transactions {
        let entries = t["entries"].as_array().unwrap();
        let sum: i64 = entries
            .iter()
            .map(|e| e["amount_cents"].as_i64().unwrap())
            .sum();
        assert_eq!(sum, 0, "transaction {t}");
        assert!(
            entries
                .iter()
                .any(|e| e["account"] == format!("escrow:{id}")),
            "transaction {t}"
        );
    }
}

#[tokio::test]
async fn a_user_is_referred_once_by_an_agent_for_themself_or_an_admin() {
    let app = TestApp::start().await;
    let (agent_id, agent) = member(&app, &[Role::Agent]).await;
    let (user_id, user) = member(&app, &[]).await;
    let referral = json!({ "agent_id": agent_id, "user_id": user_id });

    // Not an agent, or an agent naming someone else.
    expect_error(
        app.post("/v1/referrals", Some(&user), &referral).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let other_agent = app.token(Uuid::now_v7(), &[Role::Agent]);
    expect_error(
        app.post("/v1/referrals", Some(&other_agent), &referral)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let created = json_of(
        app.post("/v1/referrals", Some(&agent), &referral).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["user_id"], user_id.to_string());
    expect_error(
        app.post("/v1/referrals", Some(&app.admin()), &referral)
            .await,
        StatusCode::CONFLICT,
        "already_referred",
    )
    .await;
}

#[tokio::test]
async fn a_payout_account_needs_a_profile() {
    let app = TestApp::start().await;
    let (_, user) = member(&app, &[]).await;
    let body = json!({ "provider_account_id": "acct_123" });
    let resp = app.put("/v1/me/payout-account", Some(&user), &body).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_error(
        app.put("/v1/me/payout-account", Some(&app.user()), &body)
            .await,
        StatusCode::NOT_FOUND,
        "profile_not_found",
    )
    .await;
}
