//! The escrow family's job kinds. Each provider call carries an idempotency key derived from
//! ids in Postgres (the escrow for a PaymentIntent or refund, the payout leg for a transfer), so
//! a job repeated after a crash repeats the same call and the provider makes it once; the
//! result is recorded with a guarded update, so recording twice changes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::store::{self, Actor};
use super::{machine::State, stripe::StripeClient};
use crate::{
    job::{Backoff, Job, JobContext, JobError, Policy},
    notify::{Category, Notification, notify},
    outbox::JobTx,
    queue::Queue,
};

/// Money jobs retry for a long time (provider outages); the sweeper also re-enqueues them.
const MONEY_POLICY: Policy = Policy {
    max_attempts: 20,
    timeout: Duration::from_secs(60),
    backoff: Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(1800),
    },
};

fn provider(ctx: &JobContext) -> &StripeClient {
    &ctx.services.escrow.stripe
}

/// Creates the escrow's PaymentIntent and stores its id and client secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePaymentIntent {
    pub escrow_id: Uuid,
}

impl CreatePaymentIntent {
    pub fn new(escrow_id: Uuid) -> Self {
        CreatePaymentIntent { escrow_id }
    }
}

impl Job for CreatePaymentIntent {
    const KIND: &'static str = "escrow.create_payment_intent";
    const QUEUE: Queue = Queue::Escrow;
    const POLICY: Policy = MONEY_POLICY;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let escrow = read_escrow(&ctx, self.escrow_id).await?;
        if escrow.client_secret.is_some() || escrow.state != State::PendingPayment {
            return Ok(());
        }
        let intent = provider(&ctx)
            .create_payment_intent(
                &format!("payment_intent-{}", escrow.id),
                escrow.amount_cents,
                &escrow.currency,
                &escrow.id.to_string(),
            )
            .await?;
        sqlx::query(
            "UPDATE escrows SET payment_intent_id = $2, client_secret = $3, updated_at = now()
             WHERE id = $1 AND client_secret IS NULL",
        )
        .bind(escrow.id)
        .bind(&intent.id)
        .bind(&intent.client_secret)
        .execute(&ctx.services.db)
        .await?;
        Ok(())
    }
}

/// Releases an approved escrow: approved → releasing (split booked, legs recorded), a transfer
/// per leg whose payee has a payout account, and releasing → released once every leg is paid.
/// A leg without an account waits; the payout sweeper (and setting the account) runs this again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub escrow_id: Uuid,
}

impl Release {
    pub fn new(escrow_id: Uuid) -> Self {
        Release { escrow_id }
    }
}

impl Job for Release {
    const KIND: &'static str = "escrow.release";
    const QUEUE: Queue = Queue::Escrow;
    const POLICY: Policy = MONEY_POLICY;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let settings = &ctx.services.escrow;
        let mut tx = begin(&ctx).await?;
        let escrow = lock_escrow(&mut tx, self.escrow_id).await?;
        let escrow = match escrow.state {
            State::Approved => {
                let escrow = store::apply(
                    &mut tx,
                    settings,
                    escrow,
                    State::Releasing,
                    Actor::SYSTEM,
                    None,
                )
                .await?;
                tx.commit().await?;
                escrow
            }
            State::Releasing => {
                tx.rollback().await?;
                escrow
            }
            // Released already, or never approved: nothing to do.
            _ => return Ok(()),
        };

        let legs = sqlx::query(
            "SELECT p.id, p.user_id, p.amount_cents, a.provider_account_id
             FROM escrow_payouts p LEFT JOIN payout_accounts a ON a.user_id = p.user_id
             WHERE p.escrow_id = $1 AND p.status IN ('pending', 'waiting_account')",
        )
        .bind(escrow.id)
        .fetch_all(&ctx.services.db)
        .await?;
        let mut waiting = Vec::new();
        for leg in &legs {
            let leg_id: Uuid = leg.get("id");
            let Some(destination) = leg.get::<Option<String>, _>("provider_account_id") else {
                waiting.push(leg_id);
                continue;
            };
            let user_id: Uuid = leg.get("user_id");
            let amount: i64 = leg.get("amount_cents");
            // The leg's id is the key: a transfer repeated after a crash is the same transfer.
            let transfer = provider(&ctx)
                .create_transfer(
                    &format!("transfer-{leg_id}"),
                    amount,
                    &escrow.currency,
                    &destination,
                    &escrow.id.to_string(),
                )
                .await?;
            let mut tx = begin(&ctx).await?;
            let recorded = sqlx::query(
                "UPDATE escrow_payouts SET status = 'paid', transfer_id = $2, paid_at = now()
                 WHERE id = $1 AND status <> 'paid'",
            )
            .bind(leg_id)
            .bind(&transfer.id)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if recorded == 1 {
                let money = format!("{}.{:02}", amount / 100, amount % 100);
                notify(
                    &mut tx,
                    Notification::new(
                        user_id,
                        Category::Payments,
                        format!("Payout of {money} {}", escrow.currency.to_uppercase()),
                        format!("We paid out {money} for deal {}.", escrow.deal_id),
                    )
                    .data(serde_json::json!({"escrow_id": escrow.id, "transfer_id": transfer.id}))
                    .email(
                        "payout_receipt",
                        serde_json::json!({
                            "amount": money,
                            "currency": escrow.currency,
                            "deal_id": escrow.deal_id,
                            "transfer_id": transfer.id,
                        }),
                    ),
                )
                .await?;
            }
            tx.commit().await?;
        }
        if !waiting.is_empty() {
            sqlx::query(
                "UPDATE escrow_payouts SET status = 'waiting_account'
                 WHERE id = ANY($1) AND status = 'pending'",
            )
            .bind(&waiting)
            .execute(&ctx.services.db)
            .await?;
            tracing::info!(escrow_id = %escrow.id, legs = waiting.len(), "payout legs wait for payout accounts");
            return Ok(());
        }

        let mut tx = begin(&ctx).await?;
        let escrow = lock_escrow(&mut tx, escrow.id).await?;
        let unpaid: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM escrow_payouts
             WHERE escrow_id = $1 AND status IN ('pending', 'waiting_account')",
        )
        .bind(escrow.id)
        .fetch_one(tx.conn())
        .await?;
        if escrow.state == State::Releasing && unpaid == 0 {
            store::apply(
                &mut tx,
                settings,
                escrow,
                State::Released,
                Actor::SYSTEM,
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Refunds a refunding escrow's payment in full at the provider, then refunding → refunded
/// with the refund booked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refund {
    pub escrow_id: Uuid,
}

impl Refund {
    pub fn new(escrow_id: Uuid) -> Self {
        Refund { escrow_id }
    }
}

impl Job for Refund {
    const KIND: &'static str = "escrow.refund";
    const QUEUE: Queue = Queue::Escrow;
    const POLICY: Policy = MONEY_POLICY;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let escrow = read_escrow(&ctx, self.escrow_id).await?;
        if escrow.state != State::Refunding {
            return Ok(());
        }
        let intent = escrow
            .payment_intent_id
            .as_deref()
            .ok_or_else(|| JobError::fail("a funded escrow without a PaymentIntent"))?;
        provider(&ctx)
            .create_refund(&format!("refund-{}", escrow.id), intent)
            .await?;
        let mut tx = begin(&ctx).await?;
        match store::transition(
            &mut tx,
            &ctx.services.escrow,
            escrow.id,
            State::Refunded,
            Actor::SYSTEM,
            None,
        )
        .await
        {
            // Another run recorded it first.
            Err(store::MoveError::Transition(_)) => return Ok(()),
            Err(store::MoveError::NotFound) => return Err(JobError::fail("escrow not found")),
            Err(store::MoveError::Db(e)) => return Err(e.into()),
            Ok(_) => {}
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Approves work whose review window has passed (Postgres' clock). Scheduled every minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoApprove {}

/// Escrows one sweep approves; the next sweep takes the rest.
const AUTO_APPROVE_BATCH: i64 = 500;

impl Job for AutoApprove {
    const KIND: &'static str = "escrow.auto_approve";
    const QUEUE: Queue = Queue::Escrow;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = begin(&ctx).await?;
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM escrows WHERE state = 'under_review' AND review_deadline <= now()
             ORDER BY review_deadline LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(AUTO_APPROVE_BATCH)
        .fetch_all(tx.conn())
        .await?;
        for id in &due {
            store::transition(
                &mut tx,
                &ctx.services.escrow,
                *id,
                State::Approved,
                Actor::SYSTEM,
                Some("review window passed"),
            )
            .await?;
        }
        tx.commit().await?;
        if !due.is_empty() {
            tracing::info!(approved = due.len(), "escrows auto-approved");
        }
        Ok(())
    }
}

/// Re-enqueues releases and refunds left unfinished (a leg waiting for a payout account, a job
/// that died during a provider outage). Their jobs are idempotent, so a spare run is harmless.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPayouts {}

impl Job for SweepPayouts {
    const KIND: &'static str = "escrow.sweep_payouts";
    const QUEUE: Queue = Queue::Escrow;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = begin(&ctx).await?;
        let stuck = sqlx::query(
            "SELECT id, state FROM escrows
             WHERE state IN ('approved', 'releasing', 'refunding')
               AND updated_at < now() - interval '1 minute'",
        )
        .fetch_all(tx.conn())
        .await?;
        let mut releases = Vec::new();
        let mut refunds = Vec::new();
        for row in &stuck {
            let id: Uuid = row.get("id");
            if row.get::<String, _>("state") == "refunding" {
                refunds.push(Refund::new(id));
            } else {
                releases.push(Release::new(id));
            }
        }
        tx.enqueue_many(&releases).await?;
        tx.enqueue_many(&refunds).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn begin(ctx: &JobContext) -> Result<JobTx, JobError> {
    Ok(JobTx::begin(&ctx.services)
        .await?
        .with_request_id(ctx.request_id.clone()))
}

impl From<store::MoveError> for JobError {
    fn from(e: store::MoveError) -> Self {
        match e {
            store::MoveError::Db(e) => e.into(),
            other => JobError::fail(other),
        }
    }
}

/// The escrow as it is now; a job whose escrow is gone can never succeed.
async fn read_escrow(ctx: &JobContext, id: Uuid) -> Result<store::Escrow, JobError> {
    let mut conn = ctx.services.db.acquire().await?;
    store::get(&mut conn, id)
        .await?
        .ok_or_else(|| JobError::fail("escrow not found"))
}

/// The escrow, row-locked for the rest of the transaction.
async fn lock_escrow(tx: &mut JobTx, id: Uuid) -> Result<store::Escrow, JobError> {
    store::lock(tx.conn(), id)
        .await?
        .ok_or_else(|| JobError::fail("escrow not found"))
}
