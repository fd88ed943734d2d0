//! 1,000 escrows approved at once → releases completed per second end to end (split booked,
//! transfers made at a local fake Stripe, released), then the invariants checked. Prints one
//! JSON line per run.
//!
//! `CARGO_TARGET_DIR=… cargo run --release -p groundcrew-jobs --example bench_escrow -- [runs] [escrows] [concurrency]`

use std::{sync::Arc, time::Instant};

use groundcrew_jobs::{
    Queue,
    escrow::{
        EscrowSettings, Role, State,
        store::{self, Actor, NewEscrow},
        stripe::StripeClient,
    },
    worker::PoolSpec,
};
use groundcrew_testkit::{
    TestEnv,
    stripe::{FakeStripe, SECRET_KEY},
};
use uuid::Uuid;

async fn user(env: &TestEnv, with_account: bool) -> Uuid {
    let id = env.user().await;
    if with_account {
        let mut tx = env.services.begin().await.expect("begin");
        store::set_payout_account(&mut tx, id, &format!("acct_{}", id.simple()))
            .await
            .expect("account");
        tx.commit().await.expect("commit");
    }
    id
}

async fn run(escrows: usize, concurrency: usize) -> serde_json::Value {
    let mut env = TestEnv::new().await;
    let stripe = FakeStripe::start().await;
    env.services.escrow = Arc::new(EscrowSettings {
        review_window: EscrowSettings::DEFAULT_REVIEW_WINDOW,
        stripe: StripeClient::new(stripe.base_url(), Some(SECRET_KEY.to_owned())),
        stripe_webhook_secret: None,
    });
    let settings = env.services.escrow.clone();
    // A mix of referral cases: a quarter of the influencers have an agent.
    let agent = user(&env, true).await;
    let mut ids = Vec::with_capacity(escrows);
    let sponsor = user(&env, false).await;
    for n in 0..escrows {
        let influencer = user(&env, true).await;
        if n % 4 == 0 {
            let mut conn = env.services.db.acquire().await.expect("conn");
            store::refer(&mut conn, agent, influencer)
                .await
                .expect("refer");
        }
        let mut tx = env.services.begin().await.expect("begin");
        let escrow = store::create(
            &mut tx,
            NewEscrow {
                deal_id: &format!("deal-{n}"),
                sponsor_id: sponsor,
                influencer_id: influencer,
                amount_cents: 10_000 + n as i64 * 37,
                currency: "usd",
            },
        )
        .await
        .expect("create");
        let event = serde_json::json!({"data": {"object": {"id": format!("pi_{n}"),
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
        tx.commit().await.expect("commit");
        ids.push(escrow.id);
    }
    // The PaymentIntent jobs queued by `create` find their escrows funded and do nothing.

    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Escrow,
        concurrency,
    }]);
    let started = Instant::now();
    let mut tx = env.services.begin().await.expect("begin");
    let approver = Actor {
        role: Role::Sponsor,
        user_id: Some(sponsor),
    };
    for id in &ids {
        store::transition(&mut tx, &settings, *id, State::Approved, approver, None)
            .await
            .expect("approve");
    }
    tx.commit().await.expect("commit");
    loop {
        let released: i64 =
            sqlx::query_scalar("SELECT count(*) FROM escrows WHERE state = 'released'")
                .fetch_one(&env.services.db)
                .await
                .expect("count");
        if released as usize == escrows {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    workers.shutdown().await;

    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY transaction_id
         HAVING sum(amount_cents) <> 0) t",
    )
    .fetch_one(&env.services.db)
    .await
    .expect("balance");
    let escrow_accounts_not_zero: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT account FROM ledger_entries WHERE account LIKE 'escrow:%'
         GROUP BY account HAVING sum(amount_cents) <> 0) t",
    )
    .fetch_one(&env.services.db)
    .await
    .expect("escrow accounts");
    let payouts_mismatch: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM escrows e WHERE amount_cents <>
         (SELECT sum(amount_cents) FROM escrow_payouts p WHERE p.escrow_id = e.id)",
    )
    .fetch_one(&env.services.db)
    .await
    .expect("payouts");
    let transfer_legs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM escrow_payouts WHERE party <> 'platform'")
            .fetch_one(&env.services.db)
            .await
            .expect("legs");
    let transfers = stripe.transfers();
    let mut keys: Vec<&str> = transfers
        .iter()
        .map(|t| t.idempotency_key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let violations = unbalanced
        + escrow_accounts_not_zero
        + payouts_mismatch
        + (transfers.len() as i64 - transfer_legs).abs()
        + (transfers.len() - keys.len()) as i64;
    serde_json::json!({
        "bench": "escrow_release",
        "escrows": escrows,
        "concurrency": concurrency,
        "seconds": elapsed.as_secs_f64(),
        "releases_per_second": escrows as f64 / elapsed.as_secs_f64(),
        "transfers": transfers.len(),
        "violations": violations,
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let runs = args.first().copied().unwrap_or(3);
    let escrows = args.get(1).copied().unwrap_or(1000);
    let concurrency = args
        .get(2)
        .copied()
        .unwrap_or(Queue::Escrow.default_concurrency());
    for _ in 0..runs {
        println!("{}", run(escrows, concurrency).await);
    }
}
