//! The worker runtime: one pool per queue in a process, each fetching leased batches,
//! running handlers under a concurrency limit, and settling outcomes in batches.
//!
//! Crash safety: every job a pool holds is leased in Redis until a deadline that a keeper task
//! renews; if the process dies or stops, the lease runs out and any pool's keeper puts the job
//! back (reclaim.lua). Recovery bound: `GROUNDCREW_JOB_LEASE` + the reclaim interval
//! (lease / 3, at most 5 s); 40 s with the defaults.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};
use tokio::{
    sync::{Notify, Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    Services,
    broker::{Leased, NextDue, Outcome, Settlement},
    job::{JobContext, JobError, QueueJobs},
    queue::Queue,
    registry,
};

/// Most jobs one fetch leases.
const MAX_BATCH: usize = 100;
/// Most outcomes one settle call records.
const SETTLE_BATCH: usize = 256;
const HEARTBEAT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct PoolSpec {
    pub queue: Queue,
    /// Handlers running at once.
    pub concurrency: usize,
}

/// A unique id per process (host, pid, random), so a restarted process never inherits, and
/// never blocks the recovery of, its predecessor's jobs.
pub fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let suffix: u32 = rand::random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

/// Runs the given pools until `stop` is cancelled, then shuts them down gracefully: no more
/// fetching, in-flight jobs get `shutdown_grace` to finish, the rest are handed back.
pub async fn run_workers(services: Services, specs: Vec<PoolSpec>, stop: CancellationToken) {
    let worker_id: Arc<str> = new_worker_id().into();
    tracing::info!(worker_id = %worker_id, pools = ?specs, "worker starting");
    let pools: Vec<Arc<Pool>> = specs
        .iter()
        .map(|spec| {
            Arc::new(Pool {
                queue: spec.queue,
                concurrency: spec.concurrency.max(1),
                services: services.clone(),
                worker_id: worker_id.clone(),
                wake: Arc::new(Notify::new()),
                room: Notify::new(),
                held: Mutex::new(HashMap::new()),
            })
        })
        .collect();

    let background = CancellationToken::new();
    let wake_channels = pools
        .iter()
        .map(|p| (services.broker.keys(p.queue).wake.clone(), p.wake.clone()))
        .collect();
    let listener = tokio::spawn(listen_for_wakeups(
        services.broker.client().clone(),
        wake_channels,
        background.clone(),
    ));
    let heartbeat = tokio::spawn(heartbeat(
        services.clone(),
        worker_id.clone(),
        pools.clone(),
        background.clone(),
    ));

    let mut running = JoinSet::new();
    for pool in &pools {
        running.spawn(registry::run_pool(pool.clone(), stop.clone()));
    }
    while running.join_next().await.is_some() {}

    background.cancel();
    let _ = listener.await;
    let _ = heartbeat.await;
    if let Err(e) = services.broker.retire(&worker_id).await {
        tracing::warn!(error = %e, "could not remove the worker from the registry");
    }
    tracing::info!(worker_id = %worker_id, "worker stopped");
}

pub(crate) struct Pool {
    queue: Queue,
    concurrency: usize,
    services: Services,
    worker_id: Arc<str>,
    /// Signalled by the wake-up listener when jobs arrive on this queue.
    wake: Arc<Notify>,
    /// Signalled when held jobs are settled, so the fetch loop has room again.
    room: Notify,
    /// Jobs leased to this pool and not yet settled, with their lease numbers.
    held: Mutex<HashMap<Uuid, u64>>,
}

impl Pool {
    pub(crate) fn queue(&self) -> Queue {
        self.queue
    }

    fn held_count(&self) -> usize {
        self.held.lock().expect("held lock").len()
    }

    /// The fetch loop. Leases ahead of the concurrency (`Queue::lease_ahead`), so the next jobs
    /// are already here when a handler finishes; the extra ones wait on the semaphore, leased
    /// and renewed like the running ones.
    pub(crate) async fn run<Q: QueueJobs>(self: Arc<Self>, stop: CancellationToken) {
        let settings = self.services.settings.clone();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let settler = tokio::spawn(self.clone().settle_loop(settle_rx));
        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(self.clone().keep_leases(keeper_stop.clone()));
        let mut tasks = JoinSet::new();
        let capacity = self.queue.lease_ahead(self.concurrency);
        let mut failures = 0u32;

        while !stop.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let held = self.held_count();
            if held >= capacity {
                tokio::select! {
                    _ = self.room.notified() => continue,
                    _ = stop.cancelled() => break,
                }
            }
            let batch = (capacity - held).min(MAX_BATCH);
            let fetched = match self
                .services
                .broker
                .fetch(self.queue, batch, settings.lease, &self.worker_id)
                .await
            {
                Ok(f) => {
                    failures = 0;
                    f
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(queue = %self.queue, error = %e, "fetch failed");
                    let pause = Duration::from_millis(50 << failures.min(6));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = stop.cancelled() => break,
                    }
                }
            };
            if fetched.jobs.is_empty() {
                // Idle: wake on a published arrival, when the next scheduled job falls due,
                // or after the poll interval, whichever is first.
                let wait = match fetched.next_due {
                    NextDue::AtMs(at) => Duration::from_millis((at - fetched.now_ms).max(1) as u64)
                        .min(settings.poll_interval),
                    NextDue::Paused | NextDue::Nothing => settings.poll_interval,
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            {
                let mut held = self.held.lock().expect("held lock");
                for job in &fetched.jobs {
                    held.insert(job.id, job.lease);
                }
            }
            for job in fetched.jobs {
                tasks.spawn(
                    self.clone()
                        .execute::<Q>(job, slots.clone(), settle_tx.clone()),
                );
            }
        }

        // Shutdown. Jobs waiting for a slot are handed back at once; running ones get the grace.
        slots.close();
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let unfinished: Vec<(Uuid, u64)> = self
                .held
                .lock()
                .expect("held lock")
                .iter()
                .map(|(id, lease)| (*id, *lease))
                .collect();
            tracing::warn!(queue = %self.queue, jobs = unfinished.len(), "grace period over; handing jobs back");
            for (id, lease) in unfinished {
                let _ = settle_tx.send(Settlement {
                    id,
                    lease,
                    outcome: Outcome::Released,
                });
            }
        }
        drop(settle_tx);
        let _ = settler.await;
        keeper_stop.cancel();
        let _ = keeper.await;
    }

    async fn execute<Q: QueueJobs>(
        self: Arc<Self>,
        job: Leased,
        slots: Arc<Semaphore>,
        settle: mpsc::UnboundedSender<Settlement>,
    ) {
        let outcome = match slots.acquire_owned().await {
            Ok(_slot) => {
                let span = tracing::info_span!(
                    "process",
                    queue = %self.queue,
                    job_id = %job.id,
                    kind = %job.kind,
                    attempt = job.attempt,
                    request_id = job.meta.request_id.as_deref().unwrap_or(""),
                );
                self.attempt::<Q>(&job).instrument(span).await
            }
            Err(_closed) => Outcome::Released,
        };
        let _ = settle.send(Settlement {
            id: job.id,
            lease: job.lease,
            outcome,
        });
    }

    async fn attempt<Q: QueueJobs>(&self, job: &Leased) -> Outcome {
        let started = Instant::now();
        let task = match Q::decode(&job.kind, &job.args) {
            Ok(task) => task,
            Err(e) => {
                tracing::error!(error = %e, "undecodable job is dead");
                self.record(&job.kind, "dead", started);
                return Outcome::Dead {
                    error: e.to_string(),
                };
            }
        };
        let kind = task.kind();
        let policy = task.policy();
        let ctx = JobContext {
            id: job.id,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            first_run: job.lease == 1 && !job.meta.relayed,
            worker_id: self.worker_id.clone(),
            request_id: job.meta.request_id.clone(),
            services: self.services.clone(),
        };
        let run = AssertUnwindSafe(task.run(ctx)).catch_unwind();
        let result = match tokio::time::timeout(policy.timeout, run).await {
            Err(_) => Err(JobError::retry(format!(
                "timed out after {}",
                humantime::format_duration(policy.timeout)
            ))),
            Ok(Err(panic)) => Err(JobError::retry(format!(
                "handler panicked: {}",
                panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or(panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("?")
            ))),
            Ok(Ok(result)) => result,
        };
        let outcome = match result {
            Ok(()) => Outcome::Succeeded,
            Err(JobError::Retry { error, after }) if job.attempt < job.max_attempts => {
                let delay = policy.backoff.delay(job.attempt, after);
                tracing::warn!(%error, retry_in = ?delay, "attempt failed; will retry");
                Outcome::Retry { delay, error }
            }
            Err(JobError::Retry { error, .. }) => {
                tracing::error!(%error, "last attempt failed; job is dead");
                Outcome::Dead {
                    error: format!("{error} (attempt {} of {})", job.attempt, job.max_attempts),
                }
            }
            Err(JobError::Fail(error)) => {
                tracing::error!(%error, "permanent failure; job is dead");
                Outcome::Dead { error }
            }
        };
        let label = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Retry { .. } => "retried",
            _ => "dead",
        };
        self.record(kind, label, started);
        outcome
    }

    fn record(&self, kind: &str, outcome: &'static str, started: Instant) {
        let queue = self.queue.name();
        metrics::counter!("groundcrew_jobs_total", "queue" => queue, "kind" => kind.to_owned(), "outcome" => outcome).increment(1);
        metrics::histogram!("groundcrew_job_duration_seconds", "queue" => queue, "kind" => kind.to_owned())
            .record(started.elapsed().as_secs_f64());
    }

    /// Records outcomes in batches: whatever has finished since the last call goes in one script.
    async fn settle_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Settlement>) {
        let settings = self.services.settings.clone();
        let mut batch = Vec::with_capacity(SETTLE_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < SETTLE_BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            let give_up = Instant::now() + settings.lease;
            let mut pause = Duration::from_millis(50);
            loop {
                match self
                    .services
                    .broker
                    .settle(self.queue, settings.retention, &batch)
                    .await
                {
                    Ok(_) => break,
                    // Past the lease the jobs are someone else's: they will run again there.
                    Err(e) if Instant::now() >= give_up => {
                        tracing::error!(error = %e, jobs = batch.len(), "could not record outcomes; the jobs will run again after their lease");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "settle failed; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            }
            {
                let mut held = self.held.lock().expect("held lock");
                for s in &batch {
                    if held.get(&s.id) == Some(&s.lease) {
                        held.remove(&s.id);
                    }
                }
            }
            self.room.notify_one();
            batch.clear();
        }
    }

    /// Renews this pool's leases and reclaims jobs whose lease ran out anywhere.
    async fn keep_leases(self: Arc<Self>, stop: CancellationToken) {
        let settings = self.services.settings.clone();
        let renew_every = settings.lease / 3;
        let reclaim_every = settings.reclaim_interval();
        let mut renew = tokio::time::interval(renew_every);
        let mut reclaim = tokio::time::interval(reclaim_every);
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let held: Vec<(Uuid, u64)> = self.held.lock().expect("held lock")
                        .iter().map(|(id, lease)| (*id, *lease)).collect();
                    if held.is_empty() { continue; }
                    match self.services.broker.renew(self.queue, settings.lease, &held).await {
                        Ok(lost) if !lost.is_empty() => {
                            tracing::warn!(queue = %self.queue, jobs = lost.len(), "leases lost (recovered by another worker); results will be ignored");
                            let mut held = self.held.lock().expect("held lock");
                            for id in lost { held.remove(&id); }
                            drop(held);
                            self.room.notify_one();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
                    }
                }
                _ = reclaim.tick() => {
                    match self.services.broker.reclaim(self.queue).await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(queue = %self.queue, jobs = n, "recovered jobs from expired leases"),
                        Err(e) => tracing::warn!(error = %e, "reclaim failed"),
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// One pub/sub connection per process: a message on a queue's wake channel wakes its pool.
/// After every (re)connect all pools are woken once, in case something arrived meanwhile.
async fn listen_for_wakeups(
    client: redis::Client,
    channels: HashMap<String, Arc<Notify>>,
    stop: CancellationToken,
) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                let mut subscribed = true;
                for channel in channels.keys() {
                    if let Err(e) = pubsub.subscribe(channel).await {
                        tracing::warn!(error = %e, "subscribe failed");
                        subscribed = false;
                    }
                }
                if subscribed {
                    channels.values().for_each(|n| n.notify_one());
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            msg = messages.next() => match msg {
                                Some(msg) => {
                                    if let Some(n) = channels.get(msg.get_channel_name()) {
                                        n.notify_one();
                                    }
                                }
                                None => break,
                            },
                            _ = stop.cancelled() => return,
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "wake-up listener cannot connect"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn heartbeat(
    services: Services,
    worker_id: Arc<str>,
    pools: Vec<Arc<Pool>>,
    stop: CancellationToken,
) {
    let queues: Vec<Queue> = pools.iter().map(|p| p.queue).collect();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let in_flight: usize = pools.iter().map(|p| p.held_count()).sum();
                if let Err(e) = services.broker.heartbeat(&worker_id, &queues, in_flight as u64, HEARTBEAT * 4).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Parses `--queues feed,notify` (empty: every queue) and `--concurrency notify=64,feed=8`.
pub fn parse_pools(queues: &str, concurrency: &str) -> Result<Vec<PoolSpec>, String> {
    let mut overrides = HashMap::new();
    for pair in concurrency
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (name, n) = pair
            .split_once('=')
            .ok_or_else(|| format!("--concurrency: expected queue=number, got {pair:?}"))?;
        let queue: Queue = name
            .trim()
            .parse()
            .map_err(|e| format!("--concurrency: {e}"))?;
        let n: usize = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--concurrency: {pair:?} needs a positive number"))?;
        overrides.insert(queue, n);
    }
    let selected: Vec<Queue> = if queues.trim().is_empty() {
        Queue::ALL.to_vec()
    } else {
        queues
            .split(',')
            .map(|q| q.trim().parse().map_err(|e| format!("--queues: {e}")))
            .collect::<Result<_, _>>()?
    };
    if let Some(q) = overrides.keys().find(|q| !selected.contains(q)) {
        return Err(format!("--concurrency names {q}, which is not in --queues"));
    }
    Ok(selected
        .into_iter()
        .map(|queue| PoolSpec {
            queue,
            concurrency: overrides
                .get(&queue)
                .copied()
                .unwrap_or(queue.default_concurrency()),
        })
        .collect())
}
