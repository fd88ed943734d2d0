//! The real `workers` binary killed with SIGKILL in the middle of a settlement: the game's
//! picks graded, the stats moved and the notifications written, but not committed. The
//! settlement is one transaction, so the rerun on another process converges to the end state
//! of a single clean settlement: each pick graded once, stats equal to a recomputation, each
//! user notified once.

mod common;

use std::time::Duration;

use common::{NO_ENV, Workers};

use groundcrew_jobs::{
    JobTx, Queue,
    picks::{EventRef, events::ResultStatus, record_result, stats},
};
use groundcrew_testkit::{TestEnv, eventually};
use uuid::Uuid;

const USERS: i64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_settlement_then_rerun_converges() {
    let env = TestEnv::with(|s| {
        s.lease = Duration::from_secs(2);
        s.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let db = &env.services.db;
    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sports_events (id, external_id, sport, home_team, away_team, starts_at)
         VALUES ($1, 'crash', 'nfl', 'H', 'A', now() - interval '1 hour')",
    )
    .bind(event_id)
    .execute(db)
    .await
    .unwrap();
    // Each user: a moneyline on home (wins 27–20) and a total over 47 (a push at 47).
    sqlx::query(
        "INSERT INTO picks (id, user_id, event_id, market, selection, line, odds, stake_units,
                            status, locked_at)
         SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(u::text, 12, '0'))::uuid,
                $1, m, CASE m WHEN 'total' THEN 'over' ELSE 'home' END,
                CASE m WHEN 'total' THEN 47 END, 150, 2, 'locked', now()
         FROM generate_series(1, $2) u, unnest(ARRAY['moneyline', 'total']) m",
    )
    .bind(event_id)
    .bind(USERS)
    .execute(db)
    .await
    .unwrap();

    // The result is recorded (its settle job is in Redis); then the outbox is held, so the
    // settlement stops at its last write (the notifications' delivery jobs), after grading
    // the picks, moving the stats and writing the notifications, before its commit.
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    record_result(
        &mut tx,
        EventRef::Id(event_id),
        ResultStatus::Final,
        Some(27),
        Some(20),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE job_outbox IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let first = Workers::start(&env, "picks", 2, NO_ENV);
    eventually(
        Duration::from_secs(60),
        "the settlement to reach its delivery jobs",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE 'INSERT INTO job_outbox%'",
            )
            .fetch_one(db)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    first.kill_9();
    blocker.rollback().await.unwrap();

    let _second = Workers::start(&env, "picks", 2, NO_ENV);
    eventually(
        Duration::from_secs(60),
        "the rerun's settlement",
        || async {
            let graded: i64 =
                sqlx::query_scalar("SELECT count(*) FROM picks WHERE status IN ('won', 'push')")
                    .fetch_one(db)
                    .await
                    .unwrap();
            (graded == 2 * USERS).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the picks queue to drain",
        || async {
            let d = env.services.broker.depth(Queue::Picks).await.unwrap();
            (d.pending == 0 && d.running == 0).then_some(())
        },
    )
    .await;

    let mut conn = db.acquire().await.unwrap();
    let kept = stats::all_stats(&mut conn).await.unwrap();
    assert_eq!(kept, stats::recomputed_stats(&mut conn).await.unwrap());
    assert_eq!(kept.len() as i64, USERS);
    let one = &kept[0];
    assert_eq!(
        (
            one.picks_settled,
            one.wins,
            one.pushes,
            one.units_staked.as_str(),
            one.units_profit.as_str()
        ),
        (2, 1, 1, "4.00", "3.0000")
    );
    let (notified, notifications): (i64, i64) =
        sqlx::query_as("SELECT count(DISTINCT user_id), count(*) FROM notifications")
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(
        (notified, notifications),
        (USERS, USERS),
        "each user notified once"
    );
    let profits: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT profit_units::text FROM picks ORDER BY 1")
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(profits, ["0.0000", "3.0000"]);
}
