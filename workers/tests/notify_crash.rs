//! kill -9 a `workers` process in the middle of 1,000 pushes to the local APNs endpoint, then
//! let a second process finish. Every device must receive its notification; the only repeats
//! (counted at the APNs server) are sends of the batches in flight at the kill — at most the
//! pool's concurrency × the delivery batch — and a repeat carries the collapse id of the first
//! send, so the device shows one notification.

mod common;

use std::{collections::HashMap, time::Duration};

use common::Workers;

use groundcrew_jobs::{
    JobTx,
    notify::{Category, DELIVER_BATCH, Notification, notify_many},
};
use groundcrew_testkit::{TestEnv, apns::FakeApns, eventually};
use uuid::Uuid;

const PUSHES: usize = 1000;
/// One batch in flight: at most 400 repeats of 1,000, so the bound below can fail.
const CONCURRENCY: usize = 1;

fn notify_env(apns: &FakeApns, dir: &std::path::Path) -> Vec<(String, String)> {
    let mut env = apns.child_env(dir);
    env.push(("GROUNDCREW_DATA_DIR".into(), dir.display().to_string()));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_repeats_only_in_flight_pushes_with_the_same_collapse_id() {
    let env = TestEnv::with(|s| {
        s.lease = Duration::from_secs(2);
        s.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let apns = FakeApns::start().await;
    // Slow answers keep a full pool of sends in flight when the kill lands.
    apns.set_delay(Duration::from_millis(20));
    let dir = std::env::temp_dir().join(format!("gc-notify-crash-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();

    let users: Vec<Uuid> = (0..PUSHES).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "WITH u AS (SELECT id, row_number() OVER () AS n FROM unnest($1::uuid[]) AS id)
         , users AS (INSERT INTO users (id, handle) SELECT id, 'crash_' || n FROM u)
         INSERT INTO devices (id, token, user_id, platform)
         SELECT gen_random_uuid(), 'device' || lpad(n::text, 4, '0'), id, 'apns' FROM u",
    )
    .bind(&users)
    .execute(&env.services.db)
    .await
    .unwrap();
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let ids = notify_many(
        &mut tx,
        users
            .iter()
            .map(|u| Notification::new(*u, Category::Social, "Match day", "Your picks lock soon"))
            .collect(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let first = Workers::start(&env, "notify", CONCURRENCY, notify_env(&apns, &dir));
    eventually(Duration::from_secs(30), "a third of the pushes", || async {
        (apns.request_count() >= PUSHES / 3).then_some(())
    })
    .await;
    drop(first); // Child::kill is SIGKILL
    let at_kill = apns.request_count();
    assert!(at_kill < PUSHES, "killed mid-batch ({at_kill} sent)");

    let _second = Workers::start(&env, "notify", CONCURRENCY, notify_env(&apns, &dir));
    eventually(Duration::from_secs(60), "every delivery sent", || async {
        let sent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'",
        )
        .fetch_one(&env.services.db)
        .await
        .unwrap();
        (sent == PUSHES as i64).then_some(())
    })
    .await;

    let requests = apns.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.auth_error.is_none() && r.status == 200)
    );
    let mut by_device: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &requests {
        by_device
            .entry(r.device_token.as_str())
            .or_default()
            .push(r.header("apns-collapse-id").unwrap());
    }
    assert_eq!(by_device.len(), PUSHES, "every device received its push");
    let repeats = requests.len() - PUSHES;
    let in_flight = CONCURRENCY * DELIVER_BATCH;
    assert!(
        repeats <= in_flight,
        "{repeats} repeats; only the ≤{in_flight} in-flight sends may repeat"
    );
    let notification_ids: std::collections::HashSet<String> =
        ids.iter().map(Uuid::to_string).collect();
    for collapse_ids in by_device.values() {
        assert!(notification_ids.contains(collapse_ids[0]));
        assert!(
            collapse_ids.iter().all(|c| c == &collapse_ids[0]),
            "a repeat carries the first send's collapse id: {collapse_ids:?}"
        );
    }
    eprintln!("killed after {at_kill} pushes; {repeats} repeated");
    let _ = std::fs::remove_dir_all(&dir);
}
