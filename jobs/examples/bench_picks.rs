//! Settlement and leaderboard benchmarks for the picks family, against the local Postgres and
//! Redis (a fresh database and key prefix, removed at the end). Prints one JSON line per
//! measurement and a summary line with medians.
//!
//!     cargo run --release -p groundcrew-jobs --example bench_picks -- [runs]
//!
//! - `settle`: one game, 100,000 picks from 50,000 users; the settle job's work (grading, stats,
//!   50,000 notifications and their delivery jobs, commit and dispatch to Redis).
//! - `floor`: the same game graded by one UPDATE that only grades the picks.
//!   The two alternate, with the picks reset and vacuumed before each run.
//! - `leaderboard`: rebuild of the 30-day board from 1,000,000 graded picks (100,000 users).

use std::time::Instant;

use groundcrew_jobs::{
    JobTx,
    picks::{EventRef, events::ResultStatus, grading, jobs::settle_in, leaderboard, record_result},
};
use groundcrew_testkit::TestEnv;
use uuid::Uuid;

const USERS: i64 = 50_000;
const BOARD_USERS: i64 = 100_000;
const BOARD_GAMES: i64 = 10;

async fn exec(env: &TestEnv, sql: &'static str) {
    sqlx::query(sql).execute(&env.services.db).await.unwrap();
}

async fn unlink_notify_queue(env: &TestEnv) {
    let mut redis = env.services.broker.connection();
    let pattern = format!("{{{}:notify}}*", env.settings.queue_prefix);
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut redis)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// Back to "every pick locked, nothing graded", as before the result.
async fn reset(env: &TestEnv) {
    exec(
        env,
        "UPDATE picks SET status = 'locked', profit_units = NULL, settled_at = NULL",
    )
    .await;
    exec(
        env,
        "TRUNCATE pick_stats, notifications, job_outbox CASCADE",
    )
    .await;
    exec(
        env,
        "UPDATE sports_events SET status = 'live', home_score = NULL, away_score = NULL",
    )
    .await;
    exec(env, "VACUUM ANALYZE picks").await;
    exec(env, "VACUUM ANALYZE pick_stats").await;
    exec(env, "VACUUM ANALYZE notifications").await;
    unlink_notify_queue(env).await;
}

async fn record(env: &TestEnv, event_id: Uuid) {
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
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let env = TestEnv::new().await;
    let event_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sports_events (id, external_id, sport, home_team, away_team, starts_at)
         VALUES ($1, 'bench', 'nfl', 'H', 'A', now() - interval '3 hours')",
    )
    .bind(event_id)
    .execute(&env.services.db)
    .await
    .unwrap();
    // 50,000 users × (moneyline, spread): both sides, a spread of ±7 (pushes at 27–20) and
    // ±6.5, odds from -300 to +300.
    sqlx::query(
        "INSERT INTO picks (id, user_id, event_id, market, selection, line, odds, stake_units,
                            status, locked_at)
         SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(u::text, 12, '0'))::uuid,
                $1, m, CASE WHEN u % 2 = 0 THEN 'home' ELSE 'away' END,
                CASE WHEN m = 'spread' THEN
                  CASE WHEN u % 2 = 0 THEN -1 ELSE 1 END * CASE WHEN u % 3 = 0 THEN 7 ELSE 6.5 END
                END,
                CASE WHEN u % 4 < 2 THEN -100 - (u % 200) ELSE 100 + (u % 200) END,
                1 + (u % 5) * 0.25, 'locked', now() - interval '3 hours'
         FROM generate_series(1, $2) u, unnest(ARRAY['moneyline', 'spread']) m",
    )
    .bind(event_id)
    .bind(USERS)
    .execute(&env.services.db)
    .await
    .unwrap();

    let (mut floors, mut ours) = (Vec::new(), Vec::new());
    for run in 0..runs {
        reset(&env).await;
        exec(
            &env,
            "UPDATE sports_events SET status = 'final', home_score = 27, away_score = 20",
        )
        .await;
        let started = Instant::now();
        let mut tx = env.services.db.begin().await.unwrap();
        let graded = grading::grade_only(&mut tx, event_id).await.unwrap();
        tx.commit().await.unwrap();
        let floor = started.elapsed().as_secs_f64();
        println!("{{\"bench\":\"floor\",\"run\":{run},\"picks\":{graded},\"seconds\":{floor:.3}}}");
        floors.push(floor);

        reset(&env).await;
        record(&env, event_id).await;
        let started = Instant::now();
        let mut tx = JobTx::begin(&env.services).await.unwrap();
        let settled = settle_in(&mut tx, event_id).await.unwrap();
        tx.commit().await.unwrap();
        let took = started.elapsed().as_secs_f64();
        println!(
            "{{\"bench\":\"settle\",\"run\":{run},\"picks\":{},\"users\":{},\"seconds\":{took:.3}}}",
            settled.picks,
            settled.users.len()
        );
        ours.push(took);
    }
    let (floor, settle) = (median(&mut floors), median(&mut ours));
    println!(
        "{{\"bench\":\"settle_summary\",\"runs\":{runs},\"median_settle_s\":{settle:.3},\"median_floor_s\":{floor:.3},\"ratio\":{:.2}}}",
        settle / floor
    );

    // The leaderboard: 1,000,000 graded picks, 100,000 users with 10 each.
    exec(
        &env,
        "TRUNCATE picks, pick_stats, notifications, job_outbox CASCADE",
    )
    .await;
    sqlx::query(
        "INSERT INTO sports_events (id, external_id, sport, home_team, away_team, starts_at,
                                    status, home_score, away_score)
         SELECT gen_random_uuid(), 'board-' || g, 'nfl', 'H', 'A', now() - interval '2 days',
                'final', 1, 0
         FROM generate_series(1, $1) g",
    )
    .bind(BOARD_GAMES)
    .execute(&env.services.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO picks (id, user_id, event_id, market, selection, odds, stake_units,
                            status, profit_units, locked_at, settled_at)
         SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(u::text, 12, '0'))::uuid,
                e.id, 'moneyline', 'home', -110, 1 + (u % 4),
                CASE WHEN (u + g) % 3 = 0 THEN 'lost' ELSE 'won' END,
                CASE WHEN (u + g) % 3 = 0 THEN -(1 + (u % 4))
                     ELSE round((1 + (u % 4)) * 100 / 110.0, 4) END,
                now() - interval '1 day', now() - interval '1 day'
         FROM (SELECT id, row_number() OVER () AS g FROM sports_events
               WHERE external_id LIKE 'board-%') e,
              generate_series(1, $1) u",
    )
    .bind(BOARD_USERS)
    .execute(&env.services.db)
    .await
    .unwrap();
    exec(&env, "VACUUM ANALYZE picks").await;
    let mut boards = Vec::new();
    for run in 0..runs.min(3) {
        let started = Instant::now();
        let ranked = leaderboard::rebuild(&env.services, 10).await.unwrap();
        let took = started.elapsed().as_secs_f64();
        println!(
            "{{\"bench\":\"leaderboard\",\"run\":{run},\"graded_picks\":{},\"ranked\":{ranked},\"seconds\":{took:.3}}}",
            BOARD_USERS * BOARD_GAMES
        );
        boards.push(took);
    }
    println!(
        "{{\"bench\":\"leaderboard_summary\",\"median_s\":{:.3}}}",
        median(&mut boards)
    );
}
