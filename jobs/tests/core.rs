//! The job core against real Postgres and Redis: outbox semantics, retries and dead jobs,
//! delayed jobs, pausing, lease fencing, bursts and vacuum.

use std::time::Duration;

use chrono::{DateTime, Utc};
use groundcrew_jobs::{
    JobTx, Queue, RunAt,
    broker::{Outcome, Settlement},
    maintenance::{Canary, CanaryFailure, Noop},
    outbox::write_then_enqueue,
    worker::PoolSpec,
};
use groundcrew_testkit::{InProcess, TestEnv, eventually};
use sqlx::Row;
use uuid::Uuid;

fn maintenance(concurrency: usize) -> Vec<PoolSpec> {
    vec![PoolSpec {
        queue: Queue::Maintenance,
        concurrency,
    }]
}

async fn effects(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM canary_effects")
        .fetch_one(&env.services.db)
        .await
        .unwrap()
}

async fn attempts_of(env: &TestEnv, id: Uuid) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar("SELECT at FROM canary_attempts WHERE job_id = $1 ORDER BY at")
        .bind(id)
        .fetch_all(&env.services.db)
        .await
        .unwrap()
}

/// Waits for the background delete that follows a successful dispatch.
async fn outbox_drained(env: &TestEnv) {
    eventually(
        Duration::from_secs(5),
        "dispatched rows to leave the outbox",
        || async { (outbox_rows(env).await == 0).then_some(()) },
    )
    .await;
}

async fn outbox_rows(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_outbox")
        .fetch_one(&env.services.db)
        .await
        .unwrap()
}

/// Brings the test's Redis back with a relay and a maintenance pool, and waits for the one
/// job the test enqueued while Redis was down to have its effect.
async fn redis_back_and_the_job_ran(env: &mut TestEnv) -> (InProcess, InProcess) {
    env.private_redis.as_mut().unwrap().restart();
    let relay = env.spawn_relay();
    let workers = env.spawn_workers(maintenance(2));
    eventually(Duration::from_secs(15), "the job to run", || async {
        (effects(env).await == 1).then_some(())
    })
    .await;
    (relay, workers)
}

async fn enqueue(env: &TestEnv, job: &Canary, at: RunAt) -> Uuid {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let id = tx.enqueue_at(job, at).await.unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_job_runs_once_and_rolled_back_job_never_exists() {
    let env = TestEnv::new().await;
    let workers = env.spawn_workers(maintenance(4));

    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let rolled_back = tx.enqueue(&Canary::default()).await.unwrap();
    tx.rollback().await.unwrap();
    let committed = enqueue(&env, &Canary::default(), RunAt::Now).await;

    eventually(
        Duration::from_secs(10),
        "the committed job's effect",
        || async { (effects(&env).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(attempts_of(&env, committed).await.len(), 1);
    assert!(attempts_of(&env, rolled_back).await.is_empty());
    assert!(
        env.services
            .broker
            .job(rolled_back)
            .await
            .unwrap()
            .is_none()
    );
    outbox_drained(&env).await;
    let record = env.services.broker.job(committed).await.unwrap().unwrap();
    assert_eq!(record.status, "succeeded");
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_committed_while_redis_is_down_runs_once_when_it_is_back() {
    let mut env = TestEnv::with_private_redis(|_| {}).await;
    env.private_redis.as_mut().unwrap().stop();

    let id = enqueue(&env, &Canary::default(), RunAt::Now).await;
    assert_eq!(outbox_rows(&env).await, 1, "the job waits in the outbox");

    let (relay, workers) = redis_back_and_the_job_ran(&mut env).await;
    assert_eq!(
        env.canary_runs(id).await,
        vec![(1, Some(false))],
        "a relayed job's run is not a first run: the relay cannot know it never ran"
    );
    // A second relay pass and more time must not run it again.
    groundcrew_jobs::outbox::relay_once(&env.services.db, &env.services.broker)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts_of(&env, id).await.len(), 1);
    workers.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_writes_a_row_and_its_job_and_a_duplicate_enqueues_nothing() {
    let mut env = TestEnv::with_private_redis(|_| {}).await;
    let db = &env.services.db;
    sqlx::query("CREATE TABLE probe_inbox (key text PRIMARY KEY)")
        .execute(db)
        .await
        .unwrap();
    env.private_redis.as_mut().unwrap().stop();
    let canary = Canary::default();
    let write = |key: Option<&'static str>| {
        write_then_enqueue(
            &env.services,
            "INSERT INTO probe_inbox (key) VALUES ($1) ON CONFLICT DO NOTHING RETURNING key",
            1,
            move |query| query.bind(key),
            &canary,
            None,
        )
    };

    let row = write(Some("evt_1"))
        .await
        .unwrap()
        .expect("the first write");
    assert_eq!(
        row.get::<String, _>("key"),
        "evt_1",
        "the written row comes back"
    );
    assert!(write(Some("evt_1")).await.unwrap().is_none(), "a duplicate");
    assert!(write(None).await.is_err(), "a failed write (NULL key)");
    assert_eq!(
        outbox_rows(&env).await,
        1,
        "one job, waiting while Redis is down"
    );

    let (relay, workers) = redis_back_and_the_job_ran(&mut env).await;
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM canary_attempts")
        .fetch_one(&env.services.db)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the one job ran once");
    workers.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_pushing_a_row_twice_runs_the_job_once() {
    let env = TestEnv::new().await;
    // Simulate a crash between the Redis push and the outbox delete: the row is still there.
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let id = tx.enqueue(&Canary::default()).await.unwrap();
    tx.commit().await.unwrap();
    outbox_drained(&env).await;
    sqlx::query("INSERT INTO job_outbox (id, queue, kind, args, max_attempts, created_at)
                 VALUES ($1, 'maintenance', 'maintenance.canary', '{}', 4, now() - interval '1 minute')")
        .bind(id)
        .execute(&env.services.db)
        .await
        .unwrap();
    let workers = env.spawn_workers(maintenance(2));
    eventually(Duration::from_secs(10), "the job to run", || async {
        (effects(&env).await == 1).then_some(())
    })
    .await;
    assert_eq!(
        groundcrew_jobs::outbox::relay_once(&env.services.db, &env.services.broker)
            .await
            .unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        attempts_of(&env, id).await.len(),
        1,
        "the re-push was deduped by job id"
    );
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_job_backs_off_to_max_attempts_then_is_dead_and_retryable() {
    let env = TestEnv::new().await;
    let workers = env.spawn_workers(maintenance(2));
    let job = Canary {
        fail: CanaryFailure::Always,
        ..Default::default()
    };
    let id = enqueue(&env, &job, RunAt::Now).await;

    let record = eventually(Duration::from_secs(30), "the job to die", || async {
        let r = env.services.broker.job(id).await.unwrap()?;
        (r.status == "dead").then_some(r)
    })
    .await;
    let max = <Canary as groundcrew_jobs::Job>::POLICY.max_attempts as usize;
    let attempts = attempts_of(&env, id).await;
    assert_eq!(attempts.len(), max, "tried exactly max attempts");
    assert_eq!(record.attempts as usize, max);
    assert!(
        record
            .last_error
            .as_deref()
            .unwrap()
            .contains("canary told to fail")
    );
    // Delays grow: base 200 ms doubling, jitter between half and all of it.
    let gaps: Vec<i64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    assert!(gaps[0] >= 100, "first retry waited {gaps:?}");
    assert!(gaps[2] >= 400, "third retry waited {gaps:?}");
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");
    let depth = env.services.broker.depth(Queue::Maintenance).await.unwrap();
    assert_eq!(depth.dead, 1);

    let list = env
        .services
        .broker
        .dead_jobs(Queue::Maintenance, 0, 10)
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);

    assert_eq!(
        env.services
            .broker
            .revive(Queue::Maintenance, &[id])
            .await
            .unwrap(),
        1
    );
    eventually(
        Duration::from_secs(10),
        "the revived job to run",
        || async { (attempts_of(&env, id).await.len() > max).then_some(()) },
    )
    .await;
    workers.shutdown().await;

    // Only the very first run is a first run; a revived job starts its attempts over, not that.
    let runs = env.canary_runs(id).await;
    let mut expected: Vec<(i32, Option<bool>)> = (1..=max as i32)
        .map(|attempt| (attempt, Some(attempt == 1)))
        .collect();
    expected.push((1, Some(false)));
    assert_eq!(runs[..=max], expected[..], "attempts and first runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_is_dead_after_one_attempt() {
    let env = TestEnv::new().await;
    let workers = env.spawn_workers(maintenance(2));
    let job = Canary {
        fail: CanaryFailure::Permanent,
        ..Default::default()
    };
    let id = enqueue(&env, &job, RunAt::Now).await;
    eventually(Duration::from_secs(10), "the job to die", || async {
        let r = env.services.broker.job(id).await.unwrap()?;
        (r.status == "dead").then_some(())
    })
    .await;
    assert_eq!(attempts_of(&env, id).await.len(), 1);
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_job_runs_at_its_postgres_time_and_not_before() {
    let env = TestEnv::new().await;
    let workers = env.spawn_workers(maintenance(2));
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(tx.conn())
        .await
        .unwrap();
    let id = tx
        .enqueue_at(&Canary::default(), RunAt::In(Duration::from_secs(2)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let run_at = now + chrono::Duration::seconds(2);

    let started = eventually(Duration::from_secs(10), "the delayed job", || async {
        attempts_of(&env, id).await.first().copied()
    })
    .await;
    let late = (started - run_at).num_milliseconds();
    assert!(late >= 0, "ran {}ms before its run_at", -late);
    assert!(late <= 1000, "ran {late}ms after its run_at");
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_queue_runs_nothing_until_resumed() {
    let env = TestEnv::new().await;
    let workers = env.spawn_workers(maintenance(2));
    env.services.broker.pause(Queue::Maintenance).await.unwrap();
    enqueue(&env, &Canary::default(), RunAt::Now).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        effects(&env).await,
        0,
        "a paused queue's pools fetch nothing"
    );
    assert!(
        env.services
            .broker
            .depth(Queue::Maintenance)
            .await
            .unwrap()
            .paused
    );
    env.services
        .broker
        .resume(Queue::Maintenance)
        .await
        .unwrap();
    eventually(Duration::from_secs(2), "the job after resume", || async {
        (effects(&env).await == 1).then_some(())
    })
    .await;
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_settlement_after_recovery_changes_nothing() {
    let env = TestEnv::with(|s| s.lease = Duration::from_secs(1)).await;
    let broker = &env.services.broker;
    let id = enqueue(&env, &Canary::default(), RunAt::Now).await;
    let lease = Duration::from_millis(300);
    let first = broker
        .fetch(Queue::Maintenance, 10, lease, "worker-a")
        .await
        .unwrap();
    assert_eq!(first.jobs.len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(broker.reclaim(Queue::Maintenance).await.unwrap(), 1);
    let second = broker
        .fetch(Queue::Maintenance, 10, lease, "worker-b")
        .await
        .unwrap();
    assert_eq!(second.jobs[0].id, id);
    assert!(second.jobs[0].lease > first.jobs[0].lease);

    // Worker B finishes; worker A wakes up and reports a failure for its stale lease.
    let settle = |lease, outcome| Settlement { id, lease, outcome };
    let b = settle(second.jobs[0].lease, Outcome::Succeeded);
    assert_eq!(
        broker
            .settle(Queue::Maintenance, env.settings.retention, &[b])
            .await
            .unwrap(),
        1
    );
    let a = settle(
        first.jobs[0].lease,
        Outcome::Dead {
            error: "late".into(),
        },
    );
    assert_eq!(
        broker
            .settle(Queue::Maintenance, env.settings.retention, &[a])
            .await
            .unwrap(),
        0
    );
    let record = broker.job(id).await.unwrap().unwrap();
    assert_eq!(record.status, "succeeded");
    assert_eq!(record.worker.as_deref(), Some("worker-b"));
    assert_eq!(broker.depth(Queue::Maintenance).await.unwrap().dead, 0);
}

/// apalis-redis promotes every due job in one `unpack` and its worker dies past ~8,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_ten_thousand_due_jobs_all_run() {
    let env = TestEnv::new().await;
    let jobs: Vec<Noop> = (0..10_000).map(|_| Noop {}).collect();
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    for chunk in jobs.chunks(2000) {
        for job in chunk {
            tx.enqueue_at(job, RunAt::In(Duration::from_millis(500)))
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    let workers = env.spawn_workers(maintenance(32));
    eventually(Duration::from_secs(60), "all 10,000 to finish", || async {
        let d = env.services.broker.depth(Queue::Maintenance).await.unwrap();
        (d.pending + d.scheduled + d.running == 0).then_some(())
    })
    .await;
    assert_eq!(
        env.services
            .broker
            .depth(Queue::Maintenance)
            .await
            .unwrap()
            .dead,
        0
    );
    workers.shutdown().await;
}

/// Finished jobs expire, so memory returns to where it was (apalis-redis keeps them forever).
/// Also pushes 100,000 jobs through the outbox in large batches (apalis-redis times out on one
/// 50,000-job push).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_to_its_level_after_100k_jobs() {
    let env = TestEnv::with_private_redis(|s| s.retention = Duration::from_secs(1)).await;
    let workers = env.spawn_workers(maintenance(64));
    // What the data takes: used memory less the clients' buffers (a connection's query
    // buffer grows with a big push and shrinks when Redis gets round to it; not job data).
    let used = |info: String| -> u64 {
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap()
        };
        field("used_memory:") - field("mem_clients_normal:")
    };
    // Warm up first (scripts loaded, connections and buffers allocated), so the baseline
    // holds everything a running queue needs and the comparison sees only what jobs leave.
    let run = |n: usize| {
        let env = &env;
        async move {
            let jobs: Vec<Noop> = (0..n).map(|_| Noop {}).collect();
            for chunk in jobs.chunks(25_000) {
                let mut tx = JobTx::begin(&env.services).await.unwrap();
                tx.enqueue_many(chunk).await.unwrap();
                tx.commit().await.unwrap();
            }
            eventually(Duration::from_secs(120), "jobs to finish", || async {
                let d = env.services.broker.depth(Queue::Maintenance).await.unwrap();
                (d.pending + d.scheduled + d.running == 0).then_some(())
            })
            .await;
        }
    };
    let memory = || async {
        let mut redis = env.services.broker.connection();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut redis)
            .await
            .unwrap();
        used(info)
    };
    let expired = || async {
        eventually(
            Duration::from_secs(60),
            "finished jobs to expire",
            || async {
                let mut redis = env.services.broker.connection();
                let keys: u64 = redis::cmd("DBSIZE").query_async(&mut redis).await.unwrap();
                (keys <= 5).then_some(())
            },
        )
        .await
    };
    run(1000).await;
    expired().await;
    let before = memory().await;
    run(100_000).await;
    expired().await;
    // Redis gives back the keyspace's grown hash tables in its cron, a little per tick: the
    // memory returns over the next seconds, not at the instant the last key expires.
    let after = eventually(
        Duration::from_secs(30),
        "memory to return within 10 % of its level before",
        || async {
            let now = memory().await;
            (now as f64 <= before as f64 * 1.10).then_some(now)
        },
    )
    .await;
    println!("used_memory before {before}, after {after}");
    workers.shutdown().await;
}

/// apalis workers were seen looping on "consumer not registered" after a Redis restart; ours
/// reconnect and keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_working_across_a_redis_restart() {
    let mut env = TestEnv::with_private_redis(|_| {}).await;
    let relay = env.spawn_relay();
    let workers = env.spawn_workers(maintenance(2));
    enqueue(&env, &Canary::default(), RunAt::Now).await;
    eventually(Duration::from_secs(10), "the first job", || async {
        (effects(&env).await == 1).then_some(())
    })
    .await;

    env.private_redis.as_mut().unwrap().restart();
    enqueue(&env, &Canary::default(), RunAt::Now).await;
    eventually(
        Duration::from_secs(20),
        "a job after the restart",
        || async { (effects(&env).await == 2).then_some(()) },
    )
    .await;
    workers.shutdown().await;
    relay.shutdown().await;
}

/// An idle worker must start new work promptly: apalis-redis was seen stalling 20–30 s.
/// Here every one of 300 jobs, enqueued at ~100/s, starts within a second of its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_starts_each_arrival_promptly() {
    let env = TestEnv::new().await;
    let workers = env.spawn_workers(maintenance(4));
    let mut waits = Vec::new();
    for _ in 0..300 {
        let mut tx = JobTx::begin(&env.services).await.unwrap();
        let id = tx.enqueue(&Canary::default()).await.unwrap();
        let committed: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(tx.conn())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        waits.push((id, committed));
        tokio::time::sleep(Duration::from_millis(10)).await; // pacing the producer, not waiting on a result
    }
    eventually(Duration::from_secs(20), "all 300 jobs", || async {
        (effects(&env).await == 300).then_some(())
    })
    .await;
    let mut worst = chrono::Duration::zero();
    for (id, committed) in waits {
        let started = attempts_of(&env, id).await[0];
        worst = worst.max(started - committed);
    }
    assert!(
        worst < chrono::Duration::seconds(1),
        "slowest start took {worst}"
    );
    workers.shutdown().await;
}
