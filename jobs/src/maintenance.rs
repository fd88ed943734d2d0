//! The maintenance family: cron work, and the canary kinds used by benchmarks and health checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    job::{Backoff, Job, JobContext, JobError, Policy},
    queue::Queue,
};

crate::queue_jobs! {
    /// Cron work and canaries.
    pub enum MaintenanceJob for Queue::Maintenance {
        Noop(Noop),
        Canary(Canary),
        SweepIdempotencyKeys(SweepIdempotencyKeys),
    }
}

/// Does nothing and records nothing: the unit of the throughput benchmarks, and the job the
/// `canary` schedule sends through scheduler → queue → worker.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "maintenance.noop";
    const QUEUE: Queue = Queue::Maintenance;

    async fn run(self, _ctx: JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A job whose effect is visible in Postgres: it records each attempt, holds for `hold_ms`,
/// then records its effect once per job id (a re-run finds it done), or fails the way it is
/// told to. Operators use
/// it to prove a deployment end to end; the crash and retry tests use it to count effects.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Canary {
    #[serde(default)]
    pub hold_ms: u64,
    #[serde(default)]
    pub fail: CanaryFailure,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryFailure {
    #[default]
    Never,
    /// A transient error on every attempt.
    Always,
    /// A permanent error at once.
    Permanent,
}

impl Job for Canary {
    const KIND: &'static str = "maintenance.canary";
    const QUEUE: Queue = Queue::Maintenance;
    const POLICY: Policy = Policy {
        max_attempts: 4,
        timeout: Duration::from_secs(120),
        backoff: Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        },
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        sqlx::query(
            "INSERT INTO canary_attempts (job_id, attempt, first_run, worker_id)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(ctx.id)
        .bind(ctx.attempt as i32)
        .bind(ctx.first_run)
        .bind(&*ctx.worker_id)
        .execute(&ctx.services.db)
        .await?;
        if self.hold_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.hold_ms)).await;
        }
        match self.fail {
            CanaryFailure::Always => return Err(JobError::retry("canary told to fail")),
            CanaryFailure::Permanent => return Err(JobError::fail("canary told to fail for good")),
            CanaryFailure::Never => {}
        }
        sqlx::query(
            "INSERT INTO canary_effects (job_id, worker_id) VALUES ($1, $2)
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(ctx.id)
        .bind(&*ctx.worker_id)
        .execute(&ctx.services.db)
        .await?;
        Ok(())
    }
}

/// `Idempotency-Key` records are kept this long; after it the key may name a new request.
pub const IDEMPOTENCY_KEY_RETENTION_HOURS: i32 = 24;
const SWEEP_BATCH: i64 = 5_000;

/// Deletes `Idempotency-Key` records past their retention (the hourly
/// `maintenance_sweep_idempotency_keys` schedule): without it the table keeps every keyed
/// creating POST forever.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SweepIdempotencyKeys {}

impl Job for SweepIdempotencyKeys {
    const KIND: &'static str = "maintenance.sweep_idempotency_keys";
    const QUEUE: Queue = Queue::Maintenance;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let deleted = sweep_idempotency_keys(&ctx.services.db).await?;
        tracing::info!(deleted, "expired idempotency keys deleted");
        Ok(())
    }
}

/// Deletes expired keys in batches, each its own short statement, and returns how many. The
/// age is checked again on the row being deleted, so a key that a new request reclaimed
/// meanwhile (its `created_at` reset) stays.
pub async fn sweep_idempotency_keys(db: &PgPool) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE created_at < now() - make_interval(hours => $1)
               AND (user_id, key) IN (
                   SELECT user_id, key FROM idempotency_keys
                   WHERE created_at < now() - make_interval(hours => $1) LIMIT $2)",
        )
        .bind(IDEMPOTENCY_KEY_RETENTION_HOURS)
        .bind(SWEEP_BATCH)
        .execute(db)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < SWEEP_BATCH as u64 {
            return Ok(total);
        }
    }
}
