//! A bare apalis-redis 1.0 worker (no layer of ours) draining no-op tasks: the comparison the
//! issue asks for, in the two configurations shared/APALIS-REDIS.md measured.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use apalis::prelude::*;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::measure::{Meter, emit};

/// Tasks per push. One push of 50,000 is one Lua call that outlives the connection's 500 ms
/// response timeout (trap 5 in shared/APALIS-REDIS.md).
const PUSH_CHUNK: usize = 1000;
/// Scheduled ids moved to the active list per call; well under Lua's unpack limit.
const PROMOTE_CHUNK: usize = 1000;
const DEPTH_POLL: Duration = Duration::from_millis(2);
const STALL: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Preset {
    /// apalis_redis defaults: task locking on, batch 10.
    Default,
    /// `lock_tasks(false)` and batch 100: the fastest configuration measured.
    Fast,
}

impl Preset {
    fn config(self) -> Config {
        match self {
            Preset::Default => Config::default(),
            Preset::Fast => Config::default().lock_tasks(false).batch_size(100),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Preset::Default => "default",
            Preset::Fast => "fast",
        }
    }
}

/// The same empty payload as `maintenance.noop`.
#[derive(Debug, Serialize, Deserialize)]
struct NoopTask {}

async fn noop(_task: NoopTask) {}

/// Every push lands in the scheduled set (trap 2), and the worker's first fetch would promote
/// all 50,000 with one `unpack`, which fails past ~8,000 (trap 3) and kills the worker. So
/// the pre-fill promotes them itself, in slices, exactly as fetch_next.lua would.
const PROMOTE: &str = r"
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then return 0 end
redis.call('RPUSH', KEYS[2], unpack(ids))
redis.call('ZREM', KEYS[1], unpack(ids))
return #ids
";

async fn promote_all(conn: &mut ConnectionManager, config: &Config) -> anyhow::Result<u64> {
    let script = redis::Script::new(PROMOTE);
    let mut promoted = 0;
    loop {
        let moved: u64 = script
            .key(config.scheduled_jobs_set())
            .key(config.active_jobs_list())
            .arg(PROMOTE_CHUNK)
            .invoke_async(conn)
            .await
            .context("promote scheduled tasks")?;
        if moved == 0 {
            return Ok(promoted);
        }
        promoted += moved;
    }
}

pub async fn drain(
    redis_url: &str,
    jobs: u64,
    concurrency: usize,
    preset: Preset,
) -> anyhow::Result<()> {
    let mut conn = apalis_redis::connect(redis_url)
        .await
        .context("connect to Redis")?;
    let run_id = &Uuid::new_v4().simple().to_string()[..12];
    let config = preset.config().queue(format!("bench-apalis-{run_id}"));
    let mut storage = RedisStorage::<NoopTask>::new(conn.clone()).with_config(config.clone());
    let mut left = jobs as usize;
    while left > 0 {
        let chunk = left.min(PUSH_CHUNK);
        storage
            .push_bulk((0..chunk).map(|_| NoopTask {}).collect())
            .await
            .context("pre-fill")?;
        left -= chunk;
    }
    let promoted = promote_all(&mut conn, &config).await?;
    if promoted != jobs {
        bail!("pre-fill queued {promoted} of {jobs} tasks");
    }

    let meter = Meter::start(redis_url).await?;
    let worker = WorkerBuilder::new(format!("bench-{run_id}"))
        .backend(storage)
        .concurrency(concurrency)
        .build(noop);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
        Ok::<(), std::io::Error>(())
    }));

    let mut first_fetch = None;
    let end = loop {
        let (active, done): (u64, u64) = redis::pipe()
            .llen(config.active_jobs_list())
            .scard(config.done_jobs_set())
            .query_async(&mut conn)
            .await?;
        let now = Instant::now();
        if first_fetch.is_none() && active < jobs {
            first_fetch = Some(now);
        }
        if done >= jobs {
            break now;
        }
        if running.is_finished() {
            bail!("the apalis worker exited with {done} of {jobs} tasks done");
        }
        if now - meter.started() > STALL {
            bail!("drain stalled with {done} of {jobs} tasks done");
        }
        tokio::time::sleep(DEPTH_POLL).await;
    };
    let origin = meter.started();
    let spent = meter.stop().await?;
    let first = first_fetch.unwrap_or(end);
    let secs = (end - first).as_secs_f64();
    let _ = stop.send(());
    if tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .is_err()
    {
        tracing::warn!("the apalis worker did not stop within 5 s; abandoned");
    }
    emit(json!({
        "system": "apalis-redis", "config": preset.name(), "mode": "drain", "jobs": jobs,
        "concurrency": concurrency, "rate": jobs as f64 / secs, "secs": secs,
        "startup_secs": (first - origin).as_secs_f64(),
        "worker_cpu": spent.worker_cpu, "redis_cpu": spent.redis_cpu,
        "redis_cpu_us_per_job": spent.redis_cpu * 1e6 / jobs as f64,
    }));
    Ok(())
}
