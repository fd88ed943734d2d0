//! The real `workers` binary killed (-9) after the provider made a payout transfer but before
//! the worker could record it: the rerun repeats the call with the same idempotency key, the
//! fake Stripe replays the first response, and exactly one transfer exists.

mod common;

use std::{sync::Arc, time::Duration};

use common::{Workers, stripe_env};

use groundcrew_jobs::escrow::{
    EscrowSettings, Role, State,
    store::{self, Actor, NewEscrow},
    stripe::StripeClient,
};
use groundcrew_testkit::{
    TestEnv, eventually,
    stripe::{FakeStripe, SECRET_KEY},
};

#[tokio::test]
async fn a_worker_killed_between_transfer_and_record_causes_one_transfer() {
    let mut env = TestEnv::with(|s| {
        s.lease = Duration::from_secs(2);
        s.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let stripe = FakeStripe::start().await;
    env.services.escrow = Arc::new(EscrowSettings {
        review_window: EscrowSettings::DEFAULT_REVIEW_WINDOW,
        stripe: StripeClient::new(stripe.base_url(), Some(SECRET_KEY.to_owned())),
        stripe_webhook_secret: None,
    });
    let settings = env.services.escrow.clone();
    let (sponsor, influencer) = (env.user().await, env.user().await);
    let mut tx = env.services.begin().await.expect("begin");
    store::set_payout_account(&mut tx, influencer, "acct_influencer")
        .await
        .expect("account");
    let escrow = store::create(
        &mut tx,
        NewEscrow {
            deal_id: "deal-crash",
            sponsor_id: sponsor,
            influencer_id: influencer,
            amount_cents: 55_000,
            currency: "usd",
        },
    )
    .await
    .expect("create");
    let event = serde_json::json!({"data": {"object": {"id": "pi_crash",
        "metadata": {"escrow_id": escrow.id.to_string()}}}});
    store::apply_payment_event(&mut tx, &settings, "payment_intent.succeeded", &event)
        .await
        .expect("funded");
    let worker = Actor {
        role: Role::Influencer,
        user_id: Some(influencer),
    };
    for to in [State::WorkInProgress, State::WorkSubmitted] {
        store::transition(&mut tx, &settings, escrow.id, to, worker, None)
            .await
            .expect("work");
    }
    let approver = Actor {
        role: Role::Sponsor,
        user_id: Some(sponsor),
    };
    store::transition(
        &mut tx,
        &settings,
        escrow.id,
        State::Approved,
        approver,
        None,
    )
    .await
    .expect("approve");
    tx.commit().await.expect("commit");

    stripe.hold_transfer_responses(true);
    let made = stripe.next_transfer();
    let first = Workers::start(&env, "escrow", 16, stripe_env(&stripe));
    tokio::time::timeout(Duration::from_secs(60), made)
        .await
        .expect("the worker asks for the transfer");
    // The provider has made the transfer; the worker is still waiting for the answer.
    first.kill_9();
    stripe.hold_transfer_responses(false);

    let _second = Workers::start(&env, "escrow", 16, stripe_env(&stripe));
    eventually(
        Duration::from_secs(60),
        "the escrow to be released",
        || async {
            let mut conn = env.services.db.acquire().await.expect("conn");
            let state = store::get(&mut conn, escrow.id).await.expect("get")?.state;
            (state == State::Released).then_some(())
        },
    )
    .await;
    let transfers = stripe.transfers();
    assert_eq!(transfers.len(), 1, "the provider made one transfer");
    assert!(
        stripe.requests() >= 2,
        "the rerun called again, with the same key"
    );
    let mut conn = env.services.db.acquire().await.expect("conn");
    let payouts = store::payouts(&mut conn, escrow.id).await.expect("payouts");
    let influencer_leg = payouts
        .iter()
        .find(|p| p.party == "influencer")
        .expect("influencer leg");
    assert_eq!(
        influencer_leg.transfer_id.as_deref(),
        Some(transfers[0].id.as_str())
    );
    assert_eq!(
        transfers[0].idempotency_key,
        format!("transfer-{}", influencer_leg.id)
    );
}
