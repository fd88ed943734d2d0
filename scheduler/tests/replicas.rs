//! Two `scheduler` processes over several ticks: each tick is enqueued exactly once.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use groundcrew_jobs::Queue;
use groundcrew_testkit::{TestEnv, eventually};

struct Scheduler(Child);

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(env: &TestEnv) -> Scheduler {
    let child = Command::new(env!("CARGO_BIN_EXE_scheduler"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .envs(env.child_env())
        .env("GROUNDCREW_SCHEDULE_CANARY", "* * * * * *")
        // Another schedule onto the canary's queue, firing during the test.
        .env(
            "GROUNDCREW_SCHEDULE_MAINTENANCE_SWEEP_IDEMPOTENCY_KEYS",
            "*/2 * * * * *",
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("scheduler binary");
    Scheduler(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_enqueue_each_tick_once() {
    let env = TestEnv::new().await;
    let a = start(&env);
    let b = start(&env);
    let ticks = |env: &TestEnv| {
        let db = env.services.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM schedule_runs WHERE name = 'canary'")
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    eventually(Duration::from_secs(20), "five ticks", || async {
        (ticks(&env).await >= 5).then_some(())
    })
    .await;
    drop((a, b));

    let ticks = ticks(&env).await;
    // No workers run: every canary job is still pending in Redis, or still in the outbox
    // (dispatched rows are deleted a moment later, so a job may briefly be in both). Other
    // schedules fire during the test, some onto the same queue (the idempotency-key sweep,
    // hourly at :41:00, here every other second); the jobs their runs name are left out.
    let pending_key = env.services.broker.keys(Queue::Maintenance).pending.clone();
    let mut redis = env.services.broker.connection();
    let mut jobs: std::collections::HashSet<String> = redis::cmd("LRANGE")
        .arg(&pending_key)
        .arg(0)
        .arg(-1)
        .query_async::<Vec<String>>(&mut redis)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let outbox: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM job_outbox WHERE queue = 'maintenance'")
            .fetch_all(&env.services.db)
            .await
            .unwrap();
    jobs.extend(outbox.iter().map(uuid::Uuid::to_string));
    let runs: Vec<(String, uuid::Uuid)> = sqlx::query_as("SELECT name, job_id FROM schedule_runs")
        .fetch_all(&env.services.db)
        .await
        .unwrap();
    for (name, job) in &runs {
        if name != "canary" {
            jobs.remove(&job.to_string());
        }
    }
    assert_eq!(
        jobs.len() as i64,
        ticks,
        "one job per tick, whichever replica fired it"
    );
    assert!(
        runs.iter()
            .filter(|(name, _)| name == "canary")
            .all(|(_, job)| jobs.contains(&job.to_string())),
        "each tick's job is the one its run names"
    );
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT date_trunc('second', tick)) FROM schedule_runs WHERE name = 'canary'",
    )
            .fetch_one(&env.services.db)
            .await
            .unwrap();
    assert_eq!(distinct, ticks, "ticks are whole seconds, one row each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_enqueues_and_lists() {
    let env = TestEnv::new().await;
    let schedules = groundcrew_jobs::schedule::load().unwrap();
    let canary = schedules.iter().find(|s| s.name == "canary").unwrap();
    let id = groundcrew_jobs::schedule::run_now(&env.services, canary)
        .await
        .unwrap();
    assert!(env.services.broker.job(id).await.unwrap().is_some());
    let statuses = groundcrew_jobs::schedule::statuses(&env.services, &schedules)
        .await
        .unwrap();
    let status = statuses.iter().find(|s| s.name == "canary").unwrap();
    assert_eq!(status.job, "maintenance.noop");
    assert!(status.last_run_at.is_some());
    assert!(status.next_run_at.is_some());
}
