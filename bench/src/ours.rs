//! Our runtime: drain, enqueue through the outbox, and enqueue→start latency.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use groundcrew_jobs::{
    JobTx, Queue, Services,
    broker::{JobMeta, Outgoing},
    job::Envelope,
    maintenance::Noop,
    worker::PoolSpec,
};
use groundcrew_testkit::TestEnv;
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::{
    measure::{Meter, emit, percentile, sorted},
    spans::{ENQUEUING, SpanTimes},
};

/// How often the drain polls the queue depth; bounds the error on its start and end times.
const DEPTH_POLL: Duration = Duration::from_millis(2);
/// A drain or a latency run that takes longer than this has stalled.
const STALL: Duration = Duration::from_secs(300);

/// A fresh, migrated database (dropped at the end) and a key prefix of its own on `redis_url`.
async fn bench_env(redis_url: &str) -> TestEnv {
    let redis_url = redis_url.to_owned();
    TestEnv::with(move |s| {
        s.redis_url = redis_url;
        s.queue_prefix = format!("bench:{}", &Uuid::new_v4().simple().to_string()[..12]);
    })
    .await
}

fn noop_outgoing() -> Outgoing {
    let noop = Envelope::of(&Noop {});
    Outgoing {
        id: Uuid::now_v7(),
        queue: noop.queue,
        kind: noop.kind.to_owned(),
        args: noop.args.to_string(),
        max_attempts: noop.max_attempts,
        run_at_ms: None,
        meta: JobMeta::default(),
    }
}

fn maintenance_pool(concurrency: usize) -> Vec<PoolSpec> {
    vec![PoolSpec {
        queue: Queue::Maintenance,
        concurrency,
    }]
}

/// Fills the maintenance queue the way the outbox dispatch does (Broker::push), then times
/// the in-process runtime draining it, from the first fetch until every job is settled.
pub async fn drain(redis_url: &str, jobs: u64, concurrency: usize) -> anyhow::Result<()> {
    let env = bench_env(redis_url).await;
    let broker = env.services.broker.clone();
    let fill: Vec<Outgoing> = (0..jobs).map(|_| noop_outgoing()).collect();
    let pushed = broker.push(&fill).await.context("pre-fill")?;
    if pushed != jobs {
        bail!("pre-fill pushed {pushed} of {jobs} jobs");
    }
    drop(fill);

    let meter = Meter::start(redis_url).await?;
    let workers = env.spawn_workers(maintenance_pool(concurrency));
    let mut first_fetch = None;
    let end = loop {
        let depth = broker.depth(Queue::Maintenance).await?;
        let now = Instant::now();
        if first_fetch.is_none() && depth.pending < jobs {
            first_fetch = Some(now);
        }
        if depth.pending + depth.scheduled + depth.running == 0 {
            break now;
        }
        if now - meter.started() > STALL {
            bail!("drain stalled: {depth:?}");
        }
        tokio::time::sleep(DEPTH_POLL).await;
    };
    let origin = meter.started();
    let spent = meter.stop().await?;
    let first = first_fetch.unwrap_or(end);
    let secs = (end - first).as_secs_f64();
    let dead = broker.depth(Queue::Maintenance).await?.dead;
    workers.shutdown().await;
    emit(json!({
        "system": "groundcrew", "mode": "drain", "jobs": jobs, "concurrency": concurrency,
        "rate": jobs as f64 / secs, "secs": secs,
        "startup_secs": (first - origin).as_secs_f64(),
        "dead": dead, "worker_cpu": spent.worker_cpu, "redis_cpu": spent.redis_cpu,
        "redis_cpu_us_per_job": spent.redis_cpu * 1e6 / jobs as f64,
    }));
    Ok(())
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EnqueueMode {
    /// One transaction per job.
    Single,
    /// `JobTx::enqueue_many` of `--batch` jobs per transaction.
    Batch,
}

/// Enqueue rate through the outbox: from the first `begin` to the last `commit` (whose
/// dispatch has pushed the jobs to Redis). No workers run.
pub async fn enqueue(
    redis_url: &str,
    mode: EnqueueMode,
    jobs: u64,
    tasks: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let env = bench_env(redis_url).await;
    let services = env.services.clone();
    let per_tx = match mode {
        EnqueueMode::Single => 1,
        EnqueueMode::Batch => batch.max(1) as u64,
    };
    let transactions = jobs.div_ceil(per_tx);
    let tasks = tasks.max(1) as u64;
    let meter = Meter::start(redis_url).await?;
    let mut producers = JoinSet::new();
    for task in 0..tasks {
        let services = services.clone();
        producers.spawn(async move {
            // Transactions task, task + tasks, …: the tasks share the work evenly.
            for tx_no in (task..transactions).step_by(tasks as usize) {
                let size = per_tx.min(jobs - tx_no * per_tx) as usize;
                let mut tx = JobTx::begin(&services).await?;
                if size == 1 {
                    tx.enqueue(&Noop {}).await?;
                } else {
                    let noops: Vec<Noop> = (0..size).map(|_| Noop {}).collect();
                    tx.enqueue_many(&noops).await?;
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = producers.join_next().await {
        done??;
    }
    let secs = meter.started().elapsed().as_secs_f64();
    let spent = meter.stop().await?;
    let depth = services.broker.depth(Queue::Maintenance).await?;
    let left_in_outbox = outbox_backlog(&services).await?;
    emit(json!({
        "system": "groundcrew", "mode": format!("enqueue-{}", mode_name(mode, per_tx, tasks)),
        "jobs": jobs, "tasks": tasks, "rate": jobs as f64 / secs, "secs": secs,
        "in_redis": depth.pending, "left_in_outbox": left_in_outbox,
        "worker_cpu": spent.worker_cpu, "redis_cpu": spent.redis_cpu,
    }));
    Ok(())
}

fn mode_name(mode: EnqueueMode, per_tx: u64, tasks: u64) -> String {
    let mode = match mode {
        EnqueueMode::Single => "single".into(),
        EnqueueMode::Batch => format!("batch{per_tx}"),
    };
    if tasks > 1 {
        format!("{mode}-{tasks}tasks")
    } else {
        mode
    }
}

/// Rows the commit's dispatch did not push (it would log why); expected 0.
async fn outbox_backlog(services: &Services) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM job_outbox")
        .fetch_one(&services.db)
        .await?)
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LatencyPath {
    /// `JobTx` begin, enqueue, commit: what the API does.
    Outbox,
    /// `Broker::push` alone: the Redis part of the path, for comparison with BullMQ's `add`.
    Broker,
}

/// Enqueues single jobs at a steady rate while the runtime works in this process; reports
/// the time from just before `commit()` (or the push) to the opening of the job's `process`
/// span, i.e. the handler's start.
pub async fn latency(
    redis_url: &str,
    rate: u64,
    seconds: u64,
    concurrency: usize,
    path: LatencyPath,
    clock: Arc<SpanTimes>,
) -> anyhow::Result<()> {
    let env = bench_env(redis_url).await;
    let services = env.services.clone();
    let workers = env.spawn_workers(maintenance_pool(concurrency));
    // The same warm-up as the BullMQ script: the pool has subscribed and gone idle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let jobs = rate * seconds;
    let sent: Arc<Mutex<Vec<(Uuid, Instant)>>> = Arc::default();
    let mut producers = JoinSet::new();
    let mut commit_ms = Vec::with_capacity(jobs as usize);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let paced_from = Instant::now();
    let mut launched = 0;
    while launched < jobs {
        tick.tick().await;
        let due = ((paced_from.elapsed().as_secs_f64() * rate as f64) as u64).min(jobs);
        while launched < due {
            producers.spawn(enqueue_one(services.clone(), path, sent.clone()));
            launched += 1;
        }
        while let Some(done) = producers.try_join_next() {
            commit_ms.push(done??);
        }
    }
    let paced_secs = paced_from.elapsed().as_secs_f64();
    while let Some(done) = producers.join_next().await {
        commit_ms.push(done??);
    }
    let waited_from = Instant::now();
    while (clock.started.lock().expect("span times").len() as u64) < jobs {
        if waited_from.elapsed() > STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers.shutdown().await;

    let started: HashMap<Uuid, Instant> = clock
        .started
        .lock()
        .expect("span times")
        .iter()
        .copied()
        .collect();
    let published: HashMap<Uuid, Instant> = clock
        .published
        .lock()
        .expect("span times")
        .iter()
        .copied()
        .collect();
    let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
    let mut total = Vec::new();
    let mut to_publish = Vec::new();
    let mut publish_to_start = Vec::new();
    for (id, at) in sent.lock().expect("sent").iter() {
        let Some(&start) = started.get(id) else {
            continue;
        };
        total.push(ms(*at, start));
        if let Some(&publish) = published.get(id) {
            to_publish.push(ms(*at, publish));
            publish_to_start.push(ms(publish, start));
        }
    }
    let total = sorted(total);
    let to_publish = sorted(to_publish);
    let publish_to_start = sorted(publish_to_start);
    let commit_ms = sorted(commit_ms);
    emit(json!({
        "system": "groundcrew", "mode": "latency", "path": format!("{path:?}").to_lowercase(),
        "jobs": jobs, "concurrency": concurrency, "rate": rate,
        "achieved_rate": jobs as f64 / paced_secs, "started": total.len(),
        "p50_ms": percentile(&total, 0.5), "p90_ms": percentile(&total, 0.9),
        "p99_ms": percentile(&total, 0.99), "max_ms": percentile(&total, 1.0),
        "breakdown": {
            "commit_call_p50_ms": percentile(&commit_ms, 0.5),
            "commit_call_p99_ms": percentile(&commit_ms, 0.99),
            "pg_commit_p50_ms": percentile(&to_publish, 0.5),
            "pg_commit_p99_ms": percentile(&to_publish, 0.99),
            "push_to_start_p50_ms": percentile(&publish_to_start, 0.5),
            "push_to_start_p99_ms": percentile(&publish_to_start, 0.99),
        },
    }));
    Ok(())
}

/// Enqueues one no-op job; returns how long the commit (or push) took, in ms.
async fn enqueue_one(
    services: Services,
    path: LatencyPath,
    sent: Arc<Mutex<Vec<(Uuid, Instant)>>>,
) -> anyhow::Result<f64> {
    let at = match path {
        LatencyPath::Outbox => {
            let mut tx = JobTx::begin(&services).await?;
            let id = tx.enqueue(&Noop {}).await?;
            let at = Instant::now();
            sent.lock().expect("sent").push((id, at));
            ENQUEUING.scope(id, tx.commit()).await?;
            at
        }
        LatencyPath::Broker => {
            let job = noop_outgoing();
            let at = Instant::now();
            sent.lock().expect("sent").push((job.id, at));
            let id = job.id;
            ENQUEUING.scope(id, services.broker.push(&[job])).await?;
            at
        }
    };
    Ok(at.elapsed().as_secs_f64() * 1e3)
}
