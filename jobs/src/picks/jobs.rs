//! The picks family's job kinds. Each is idempotent: locking moves only `open` picks of a game
//! that has started by Postgres' clock; settlement changes only picks whose grade differs;
//! the leaderboard is rebuilt whole and swapped in.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{events::Event, grading, leaderboard};
use crate::{
    job::{Backoff, Job, JobContext, JobError, Policy},
    notify::{Category, Notification, notify_many},
    outbox::{JobTx, RunAt},
    queue::Queue,
};

/// Locks a game's open picks at its start. Enqueued for the start time when the game is
/// created or moved; the job carries the start it was scheduled for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockEvent {
    pub event_id: Uuid,
    pub starts_at: DateTime<Utc>,
}

impl LockEvent {
    pub fn new(event: &Event) -> Self {
        LockEvent {
            event_id: event.id,
            starts_at: event.starts_at,
        }
    }
}

/// Whether a lock found its game started.
#[derive(Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// Started by Postgres' clock: this many picks were locked now.
    Locked(u64),
    /// Not started yet; the game starts at this time.
    NotStarted(DateTime<Utc>),
    /// No such game (or it is already final or canceled and needs no lock).
    Gone,
}

/// Locks the open picks of a game if Postgres' clock says it has started. Holding the event row
/// exclusively while reading the clock orders this against pick writes (see `events`).
pub async fn lock_if_started(
    conn: &mut PgConnection,
    event_id: Uuid,
) -> Result<LockOutcome, sqlx::Error> {
    let Some(row) =
        sqlx::query("SELECT starts_at, status FROM sports_events WHERE id = $1 FOR UPDATE")
            .bind(event_id)
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(LockOutcome::Gone);
    };
    let status: String = row.get("status");
    if status == "final" || status == "canceled" {
        return Ok(LockOutcome::Gone);
    }
    // Read the clock only now that the row is ours: `now()` is the transaction's start, which
    // may precede a wait for the lock.
    let started: bool = sqlx::query_scalar(
        "UPDATE sports_events SET status = 'live', updated_at = now()
         WHERE id = $1 AND starts_at <= clock_timestamp()
         RETURNING true",
    )
    .bind(event_id)
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(false);
    if !started {
        return Ok(LockOutcome::NotStarted(row.get("starts_at")));
    }
    let locked = sqlx::query(
        "UPDATE picks SET status = 'locked', locked_at = now()
         WHERE event_id = $1 AND status = 'open'",
    )
    .bind(event_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(LockOutcome::Locked(locked))
}

impl Job for LockEvent {
    const KIND: &'static str = "picks.lock_event";
    const QUEUE: Queue = Queue::Picks;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = JobTx::begin(&ctx.services).await?;
        match lock_if_started(tx.conn(), self.event_id).await? {
            LockOutcome::Locked(n) => {
                tracing::info!(event_id = %self.event_id, picks = n, "picks locked at start");
            }
            // Ran early for the start it was scheduled for (Redis time ahead of Postgres'):
            // try again at that start. A job for a start that has since moved does nothing;
            // the move enqueued the lock for the new start, and the sweeper backs both up.
            LockOutcome::NotStarted(starts_at) if starts_at == self.starts_at => {
                tx.enqueue_at(&self, RunAt::At(starts_at)).await?;
            }
            LockOutcome::NotStarted(_) | LockOutcome::Gone => {}
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Every minute: locks the picks of any game past its start that still has open picks (a lock
/// job lost to a dead job, or a game whose start moved earlier).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SweepLocks {}

impl Job for SweepLocks {
    const KIND: &'static str = "picks.sweep_locks";
    const QUEUE: Queue = Queue::Picks;
    const POLICY: Policy = Policy {
        max_attempts: 3,
        ..Policy::DEFAULT
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT p.event_id FROM picks p
             JOIN sports_events e ON e.id = p.event_id
             WHERE p.status = 'open' AND e.starts_at <= now()",
        )
        .fetch_all(&ctx.services.db)
        .await?;
        // One transaction per game: a busy game does not hold up the others.
        for event_id in due {
            let mut tx = JobTx::begin(&ctx.services).await?;
            if let LockOutcome::Locked(n) = lock_if_started(tx.conn(), event_id).await? {
                tracing::warn!(%event_id, picks = n, "sweeper locked picks the lock job missed");
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Grades every pick of a final or canceled game, moves the stats, notifies each user whose
/// picks changed once. Enqueued by [`super::record_result`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettleEvent {
    pub event_id: Uuid,
}

impl Job for SettleEvent {
    const KIND: &'static str = "picks.settle_event";
    const QUEUE: Queue = Queue::Picks;
    const POLICY: Policy = Policy {
        max_attempts: 10,
        timeout: Duration::from_secs(300),
        backoff: Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(600),
        },
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = JobTx::begin(&ctx.services)
            .await?
            .with_request_id(ctx.request_id.clone());
        settle_in(&mut tx, self.event_id).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("no sports event {0}")]
    NotFound(Uuid),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<SettleError> for JobError {
    fn from(e: SettleError) -> Self {
        match e {
            SettleError::NotFound(_) => JobError::fail(e),
            SettleError::Db(e) => e.into(),
        }
    }
}

/// Settles a game in the caller's transaction: the event row lock serializes settlements of
/// one game, so a second one (another worker, a redelivery) grades what the first left.
pub async fn settle_in(tx: &mut JobTx, event_id: Uuid) -> Result<grading::Graded, SettleError> {
    let row = sqlx::query(
        "SELECT status, home_team, away_team, home_score, away_score
         FROM sports_events WHERE id = $1 FOR UPDATE",
    )
    .bind(event_id)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(SettleError::NotFound(event_id))?;
    let status: String = row.get("status");
    if status != "final" && status != "canceled" {
        return Ok(grading::Graded::default());
    }
    let graded = grading::grade_event(tx.conn(), event_id).await?;
    let (home, away): (String, String) = (row.get("home_team"), row.get("away_team"));
    let body = match (
        row.get::<Option<i32>, _>("home_score"),
        row.get::<Option<i32>, _>("away_score"),
    ) {
        (Some(h), Some(a)) if status == "final" => {
            format!("{home} {h}–{a} {away}: your picks are graded.")
        }
        _ => format!("{home} vs {away} was canceled: your picks are void."),
    };
    let data = serde_json::json!({ "event_id": event_id, "status": status });
    let notifications = graded
        .users
        .iter()
        .map(|user| {
            Notification::new(*user, Category::Picks, "Picks settled", body.clone())
                .data(data.clone())
        })
        .collect();
    notify_many(tx, notifications).await?;
    tracing::info!(%event_id, picks = graded.picks, users = graded.users.len(), "event settled");
    Ok(graded)
}

/// Rebuilds the 30-day ROI leaderboard into Redis (every 15 minutes, and on demand through
/// `POST /v1/ops/schedules/picks_leaderboard/run`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RebuildLeaderboard {}

impl Job for RebuildLeaderboard {
    const KIND: &'static str = "picks.rebuild_leaderboard";
    const QUEUE: Queue = Queue::Picks;
    const POLICY: Policy = Policy {
        max_attempts: 3,
        timeout: Duration::from_secs(300),
        ..Policy::DEFAULT
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        leaderboard::rebuild(&ctx.services, ctx.services.picks.leaderboard_min_picks).await?;
        Ok(())
    }
}
