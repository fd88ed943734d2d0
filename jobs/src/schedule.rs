//! The cron table and the scheduler loop. Each schedule's ticks come from apalis-cron's
//! `CronScheduler` stream; a tick enqueues its job in the same transaction that inserts
//! `(name, tick)` into `schedule_runs`, so any number of scheduler replicas enqueue each tick
//! exactly once, and a crash mid-tick either enqueued it or left it for another replica.

use std::str::FromStr;

use apalis_cron::CronScheduler;
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Services,
    job::Envelope,
    maintenance::Noop,
    outbox::{JobTx, RunAt},
    settings::ConfigError,
};

/// A schedule as the code defines it. Cron expressions have a seconds field first:
/// `sec min hour day-of-month month day-of-week`.
pub struct ScheduleDef {
    pub name: &'static str,
    pub cron: &'static str,
    pub job: fn() -> Envelope,
}

/// The code-defined cron table. Each entry can be overridden with
/// `GROUNDCREW_SCHEDULE_<NAME>` set to another cron expression, or to `off`.
pub fn table() -> Vec<ScheduleDef> {
    vec![
        ScheduleDef {
            name: "canary",
            cron: "0 * * * * *",
            job: || Envelope::of(&Noop {}),
        },
        ScheduleDef {
            name: "picks_sweep_locks",
            cron: "30 * * * * *",
            job: || Envelope::of(&crate::picks::SweepLocks {}),
        },
        ScheduleDef {
            name: "picks_leaderboard",
            cron: "0 */15 * * * *",
            job: || Envelope::of(&crate::picks::RebuildLeaderboard {}),
        },
        ScheduleDef {
            name: "verification_expiry",
            cron: "0 7 * * * *",
            job: || Envelope::of(&crate::verification::SweepExpiry {}),
        },
        ScheduleDef {
            name: "notify_weekly_digest",
            cron: "0 0 9 * * Mon",
            job: || Envelope::of(&crate::notify::SendWeeklyDigests {}),
        },
        ScheduleDef {
            name: "escrow_auto_approve",
            cron: "15 * * * * *",
            job: || Envelope::of(&crate::escrow::AutoApprove {}),
        },
        ScheduleDef {
            name: "escrow_sweep_payouts",
            cron: "45 */5 * * * *",
            job: || Envelope::of(&crate::escrow::SweepPayouts {}),
        },
        ScheduleDef {
            name: "media_sweep_unattached",
            cron: "0 23 * * * *",
            job: || Envelope::of(&crate::media::SweepUnattached {}),
        },
        ScheduleDef {
            name: "maintenance_sweep_idempotency_keys",
            cron: "0 41 * * * *",
            job: || Envelope::of(&crate::maintenance::SweepIdempotencyKeys {}),
        },
    ]
}

#[derive(Clone)]
pub struct Schedule {
    pub name: &'static str,
    pub cron: String,
    /// `None` when switched off by the environment.
    pub expr: Option<cron::Schedule>,
    pub job: fn() -> Envelope,
}

impl Schedule {
    pub fn env_variable(name: &str) -> String {
        format!("GROUNDCREW_SCHEDULE_{}", name.to_uppercase())
    }
}

/// The table with the environment's overrides applied.
pub fn load() -> Result<Vec<Schedule>, ConfigError> {
    table()
        .into_iter()
        .map(|def| {
            let variable = Schedule::env_variable(def.name);
            let cron = std::env::var(&variable)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| def.cron.to_owned());
            let expr = if cron.trim() == "off" {
                None
            } else {
                Some(cron::Schedule::from_str(&cron).map_err(|e| ConfigError {
                    variable: variable.clone(),
                    message: format!("invalid cron expression {cron:?}: {e}"),
                })?)
            };
            Ok(Schedule {
                name: def.name,
                cron,
                expr,
                job: def.job,
            })
        })
        .collect()
}

/// Enqueues the schedule's job for `tick` unless some replica already did. Returns the job id
/// when this call enqueued it.
pub async fn fire(
    services: &Services,
    schedule: &Schedule,
    tick: DateTime<Utc>,
    manual: bool,
) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = JobTx::begin(services).await?;
    let claimed = sqlx::query(
        "INSERT INTO schedule_runs (name, tick, job_id, manual) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name, tick) DO NOTHING",
    )
    .bind(schedule.name)
    .bind(tick)
    .bind(Uuid::nil())
    .bind(manual)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(None);
    }
    let id = tx.enqueue_envelope((schedule.job)(), RunAt::Now).await?;
    sqlx::query("UPDATE schedule_runs SET job_id = $3 WHERE name = $1 AND tick = $2")
        .bind(schedule.name)
        .bind(tick)
        .bind(id)
        .execute(tx.conn())
        .await?;
    tx.commit().await?;
    Ok(Some(id))
}

/// Runs a schedule now, outside its cron times (the ops route).
pub async fn run_now(services: &Services, schedule: &Schedule) -> Result<Uuid, sqlx::Error> {
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&services.db)
        .await?;
    Ok(fire(services, schedule, now, true)
        .await?
        .unwrap_or_else(Uuid::nil))
}

pub struct ScheduleStatus {
    pub name: &'static str,
    pub cron: String,
    pub job: &'static str,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
}

pub async fn statuses(
    services: &Services,
    schedules: &[Schedule],
) -> Result<Vec<ScheduleStatus>, sqlx::Error> {
    let last: std::collections::HashMap<String, DateTime<Utc>> =
        sqlx::query("SELECT name, max(tick) AS last FROM schedule_runs GROUP BY name")
            .fetch_all(&services.db)
            .await?
            .into_iter()
            .map(|r| (r.get("name"), r.get("last")))
            .collect();
    Ok(schedules
        .iter()
        .map(|s| ScheduleStatus {
            name: s.name,
            cron: s.cron.clone(),
            job: (s.job)().kind,
            next_run_at: s.expr.as_ref().and_then(|e| e.upcoming(Utc).next()),
            last_run_at: last.get(s.name).copied(),
        })
        .collect())
}

/// Fires every enabled schedule on its ticks until `stop`. apalis-cron's tick stream is not
/// `Send`, so the schedules run as local tasks on one thread; they only wait and enqueue.
pub async fn run_scheduler(services: Services, schedules: Vec<Schedule>, stop: CancellationToken) {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(fire_on_ticks(services, schedules, stop))
        .await;
}

async fn fire_on_ticks(services: Services, schedules: Vec<Schedule>, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for schedule in schedules {
        let Some(expr) = schedule.expr.clone() else {
            tracing::info!(schedule = schedule.name, "schedule switched off");
            continue;
        };
        let services = services.clone();
        let stop = stop.clone();
        tasks.spawn_local(async move {
            let mut ticks = std::pin::pin!(CronScheduler::new(expr).into_stream());
            loop {
                let tick = tokio::select! {
                    tick = ticks.next() => tick,
                    _ = stop.cancelled() => return,
                };
                let Some(Ok(tick)) = tick else {
                    tracing::error!(schedule = schedule.name, "cron stream ended");
                    return;
                };
                let at = Utc
                    .timestamp_opt(tick.get_timestamp() as i64, 0)
                    .single()
                    .unwrap_or_else(Utc::now);
                match fire(&services, &schedule, at, false).await {
                    Ok(Some(id)) => {
                        metrics::counter!("groundcrew_schedule_ticks_total", "schedule" => schedule.name).increment(1);
                        tracing::info!(schedule = schedule.name, tick = %at, job_id = %id, "schedule fired");
                    }
                    Ok(None) => tracing::debug!(schedule = schedule.name, tick = %at, "tick already fired by another replica"),
                    Err(e) => tracing::error!(schedule = schedule.name, error = %e, "schedule tick failed"),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
