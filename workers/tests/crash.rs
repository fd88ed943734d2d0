//! The real `workers` binary as a child process: killed, stopped, overlapped and terminated
//! while it holds jobs. Every job's effect must be recorded exactly once (canary_effects has a
//! row per job id), and nothing may be lost.
//!
//! Recovery bound with the lease these tests use (2 s): lease + reclaim interval (lease / 3)
//! ≈ 2.7 s after the last renewal; each test allows that plus the jobs' own hold time.

mod common;

use std::time::{Duration, Instant};

use common::{NO_ENV, Workers};

use groundcrew_jobs::{JobTx, Queue, maintenance::Canary};
use groundcrew_testkit::{TestEnv, eventually};
use nix::sys::signal::Signal;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(2);

async fn env() -> TestEnv {
    TestEnv::with(|s| {
        s.lease = LEASE;
        s.shutdown_grace = Duration::from_secs(1);
    })
    .await
}

async fn enqueue_canaries(env: &TestEnv, n: usize, hold_ms: u64) -> Vec<Uuid> {
    let jobs: Vec<Canary> = (0..n)
        .map(|_| Canary {
            hold_ms,
            ..Default::default()
        })
        .collect();
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let ids = tx.enqueue_many(&jobs).await.unwrap();
    tx.commit().await.unwrap();
    ids
}

async fn count(env: &TestEnv, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&env.services.db)
        .await
        .unwrap()
}

async fn wait_for_count(env: &TestEnv, sql: &'static str, n: i64, within: Duration, what: &str) {
    eventually(within, what, || async {
        (count(env, sql).await >= n).then_some(())
    })
    .await;
}

const STARTED: &str = "SELECT count(DISTINCT job_id) FROM canary_attempts";
const EFFECTS: &str = "SELECT count(*) FROM canary_effects";

/// Every job has exactly one effect and the queue is empty.
async fn assert_all_done_once(env: &TestEnv, ids: &[Uuid]) {
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM canary_effects WHERE job_id = ANY($1)")
            .bind(ids)
            .fetch_one(&env.services.db)
            .await
            .unwrap();
    assert_eq!(done, ids.len() as i64, "every job's effect is recorded");
    assert_eq!(
        count(env, EFFECTS).await,
        ids.len() as i64,
        "and recorded once"
    );
    let depth = env.services.broker.depth(Queue::Maintenance).await.unwrap();
    assert_eq!(
        (depth.pending, depth.running, depth.dead),
        (0, 0, 0),
        "{depth:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_100_in_flight_loses_nothing() {
    let env = env().await;
    let ids = enqueue_canaries(&env, 100, 4000).await;
    let first = Workers::start(&env, "maintenance", 100, NO_ENV);
    wait_for_count(
        &env,
        STARTED,
        100,
        Duration::from_secs(20),
        "100 jobs in flight",
    )
    .await;
    assert_eq!(count(&env, EFFECTS).await, 0, "killed before any finished");
    first.signal(Signal::SIGKILL);
    drop(first);
    let killed_at = Instant::now();

    let _second = Workers::start(&env, "maintenance", 100, NO_ENV);
    wait_for_count(
        &env,
        EFFECTS,
        100,
        Duration::from_secs(30),
        "all 100 effects",
    )
    .await;
    let took = killed_at.elapsed();
    // Recovery (lease + reclaim interval after the last renewal) plus the 4 s hold.
    assert!(
        took < LEASE + LEASE / 3 + Duration::from_secs(4) + Duration::from_secs(3),
        "took {took:?}"
    );
    assert_all_done_once(&env, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_worker_loses_its_jobs_and_its_late_results_change_nothing() {
    let env = env().await;
    let ids = enqueue_canaries(&env, 20, 2000).await;
    let stopped = Workers::start(&env, "maintenance", 20, NO_ENV);
    wait_for_count(
        &env,
        STARTED,
        20,
        Duration::from_secs(20),
        "20 jobs in flight",
    )
    .await;
    stopped.signal(Signal::SIGSTOP);

    let mut other = Workers::start(&env, "maintenance", 20, NO_ENV);
    wait_for_count(
        &env,
        EFFECTS,
        20,
        Duration::from_secs(30),
        "the jobs to finish elsewhere",
    )
    .await;
    let finishers: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT worker_id FROM canary_effects")
            .fetch_all(&env.services.db)
            .await
            .unwrap();
    assert_eq!(finishers.len(), 1);
    other.signal(Signal::SIGTERM);
    other.exited(Duration::from_secs(10)).await;

    // The stopped worker wakes and finishes its stale attempts; on SIGTERM it flushes their
    // settlements before it exits, so once it has exited every late acknowledgement is in.
    let attempts_before = count(&env, "SELECT count(*) FROM canary_attempts").await;
    let mut stopped = stopped;
    stopped.signal(Signal::SIGCONT);
    stopped.signal(Signal::SIGTERM);
    let status = stopped.exited(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    for id in &ids {
        let job = env.services.broker.job(*id).await.unwrap().unwrap();
        assert_eq!(job.status, "succeeded");
        assert_eq!(
            job.worker.as_deref(),
            Some(finishers[0].as_str()),
            "the finisher's record stands"
        );
    }
    assert_eq!(
        count(&env, "SELECT count(*) FROM canary_attempts").await,
        attempts_before,
        "no job ran again"
    );
    assert_all_done_once(&env, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_recovers_the_old_process_jobs() {
    let env = env().await;
    let ids = enqueue_canaries(&env, 60, 3000).await;
    // Old and new processes of one deployment overlap (same host; ids differ by pid and a
    // random part, so the new one can never be mistaken for the old).
    let old = Workers::start(&env, "maintenance", 30, NO_ENV);
    wait_for_count(
        &env,
        STARTED,
        30,
        Duration::from_secs(20),
        "the old process busy",
    )
    .await;
    let _new = Workers::start(&env, "maintenance", 30, NO_ENV);
    wait_for_count(
        &env,
        STARTED,
        60,
        Duration::from_secs(20),
        "both processes busy",
    )
    .await;
    old.signal(Signal::SIGKILL);
    drop(old);
    wait_for_count(&env, EFFECTS, 60, Duration::from_secs(30), "every job").await;
    assert_all_done_once(&env, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_hands_back_every_job() {
    let env = env().await;
    // Short jobs finish within the 1 s grace; long ones are handed back; 40 more wait their
    // turn in the queue and must not be touched. Those are enqueued once the 20 run, so the 20
    // running are these: a queued job among the first 20 once left a short one fetched but not
    // started, handed back at the signal, and its one run was not a first run.
    let short = enqueue_canaries(&env, 10, 200).await;
    let long = enqueue_canaries(&env, 10, 5000).await;
    let mut worker = Workers::start(&env, "maintenance", 20, NO_ENV);
    wait_for_count(
        &env,
        STARTED,
        20,
        Duration::from_secs(20),
        "20 jobs running",
    )
    .await;
    let queued = enqueue_canaries(&env, 40, 0).await;
    worker.signal(Signal::SIGTERM);
    let status = worker.exited(Duration::from_secs(10)).await;
    assert!(status.success(), "clean exit: {status:?}");

    let depth = env.services.broker.depth(Queue::Maintenance).await.unwrap();
    assert_eq!(
        depth.running, 0,
        "nothing left leased to the stopped worker"
    );
    let _next = Workers::start(&env, "maintenance", 20, NO_ENV);
    let all: Vec<Uuid> = short.iter().chain(&long).chain(&queued).copied().collect();
    wait_for_count(&env, EFFECTS, 60, Duration::from_secs(30), "every job").await;
    assert_all_done_once(&env, &all).await;

    // A job handed back gets its attempt back, but its next run is not a first run: the one
    // handed back may have done part of its work. (Queued jobs the stopped worker had fetched
    // but not started are handed back too, and may run either way.)
    for (jobs, expected) in [
        (&short, vec![(1, Some(true))]),
        (&long, vec![(1, Some(true)), (1, Some(false))]),
    ] {
        for id in jobs {
            let runs = env.canary_runs(*id).await;
            assert_eq!(runs, expected, "runs of job {id}");
        }
    }
}
