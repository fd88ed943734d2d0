//! Fixtures the escrow tests share: a test environment whose escrow family talks to a local
//! fake Stripe, users, and escrows brought to a given state through the real code paths.

#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use groundcrew_jobs::{
    Queue,
    escrow::{
        EscrowSettings, State,
        store::{self, Actor, NewEscrow},
        stripe::StripeClient,
    },
    webhooks::{self, Incoming, Provider},
    worker::PoolSpec,
};
use groundcrew_testkit::{
    TestEnv, eventually,
    stripe::{FakeStripe, SECRET_KEY, payment_intent_event},
};
use uuid::Uuid;

pub struct Market {
    pub env: TestEnv,
    pub stripe: FakeStripe,
}

impl Market {
    pub async fn new() -> Self {
        Self::with_review_window(EscrowSettings::DEFAULT_REVIEW_WINDOW).await
    }

    pub async fn with_review_window(review_window: Duration) -> Self {
        let mut env = TestEnv::new().await;
        let stripe = FakeStripe::start().await;
        env.services.escrow = Arc::new(EscrowSettings {
            review_window,
            stripe: StripeClient::new(stripe.base_url(), Some(SECRET_KEY.to_owned())),
            stripe_webhook_secret: None,
        });
        Market { env, stripe }
    }

    /// The escrow pool, and the verification pool that processes stored webhooks.
    pub fn pools(escrow_concurrency: usize) -> Vec<PoolSpec> {
        vec![
            PoolSpec {
                queue: Queue::Escrow,
                concurrency: escrow_concurrency,
            },
            PoolSpec {
                queue: Queue::Verification,
                concurrency: 4,
            },
        ]
    }

    pub async fn user(&self) -> Uuid {
        self.env.user().await
    }

    pub async fn payout_account(&self, user: Uuid) {
        let mut tx = self.env.services.begin().await.expect("begin");
        store::set_payout_account(&mut tx, user, &format!("acct_{}", user.simple()))
            .await
            .expect("payout account");
        tx.commit().await.expect("commit");
    }

    pub async fn refer(&self, agent: Uuid, user: Uuid) {
        let mut conn = self.env.services.db.acquire().await.expect("conn");
        store::refer(&mut conn, agent, user)
            .await
            .expect("referral");
    }

    pub async fn create(&self, sponsor: Uuid, influencer: Uuid, amount_cents: i64) -> Uuid {
        let mut tx = self.env.services.begin().await.expect("begin");
        let escrow = store::create(
            &mut tx,
            NewEscrow {
                deal_id: &format!("deal-{}", Uuid::now_v7()),
                sponsor_id: sponsor,
                influencer_id: influencer,
                amount_cents,
                currency: "usd",
            },
        )
        .await
        .expect("create escrow");
        tx.commit().await.expect("commit");
        escrow.id
    }

    /// The escrow's PaymentIntent, once the job has created it.
    pub async fn payment_intent(&self, escrow: Uuid) -> String {
        eventually(
            Duration::from_secs(20),
            "the PaymentIntent",
            || async move {
                let mut conn = self.env.services.db.acquire().await.expect("conn");
                store::get(&mut conn, escrow)
                    .await
                    .expect("get")?
                    .payment_intent_id
            },
        )
        .await
    }

    /// A provider event about the escrow's PaymentIntent stored in the inbox, as the webhook
    /// route stores it.
    pub async fn webhook(
        &self,
        event_id: &str,
        event_type: &str,
        escrow: Uuid,
    ) -> webhooks::Received {
        let intent = self.payment_intent(escrow).await;
        let body = payment_intent_event(event_id, event_type, &intent, &escrow.to_string());
        let incoming = Incoming::parse(Provider::Stripe, body.as_bytes(), None).expect("parse");
        webhooks::receive(&self.env.services, incoming, None)
            .await
            .expect("receive")
    }

    pub async fn state(&self, id: Uuid) -> State {
        let mut conn = self.env.services.db.acquire().await.expect("conn");
        store::get(&mut conn, id)
            .await
            .expect("get")
            .expect("escrow")
            .state
    }

    pub async fn wait_for(&self, id: Uuid, state: State) {
        eventually(Duration::from_secs(20), state.as_str(), || async move {
            (self.state(id).await == state).then_some(())
        })
        .await;
    }

    pub async fn step(
        &self,
        id: Uuid,
        to: State,
        actor: Actor,
    ) -> Result<store::Escrow, store::MoveError> {
        let mut tx = self.env.services.begin().await.expect("begin");
        let out = store::transition(&mut tx, &self.env.services.escrow, id, to, actor, None).await;
        if out.is_ok() {
            tx.commit().await.expect("commit");
        }
        out
    }

    /// Funds the escrow through the provider's events (processed by the running workers) and
    /// takes the work to review.
    pub async fn under_review(&self, sponsor: Uuid, influencer: Uuid, amount_cents: i64) -> Uuid {
        let _ = sponsor;
        let id = self.create(sponsor, influencer, amount_cents).await;
        self.webhook(&format!("evt_ok_{id}"), "payment_intent.succeeded", id)
            .await;
        self.wait_for(id, State::Locked).await;
        let influencer_actor = Actor {
            role: groundcrew_jobs::escrow::Role::Influencer,
            user_id: Some(influencer),
        };
        self.step(id, State::WorkInProgress, influencer_actor)
            .await
            .expect("start work");
        self.step(id, State::WorkSubmitted, influencer_actor)
            .await
            .expect("submit work");
        id
    }

    /// Every ledger transaction sums to zero (the database also refuses one that does not).
    pub async fn unbalanced_transactions(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries
             GROUP BY transaction_id HAVING sum(amount_cents) <> 0) t",
        )
        .fetch_one(&self.env.services.db)
        .await
        .expect("query")
    }
}
