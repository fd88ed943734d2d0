//! The picks family against real Postgres and Redis: grading rules, the pick window and the
//! lock at start by Postgres time, re-settlement, concurrent settlement, and stats that always
//! equal a recomputation from the picks table.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use groundcrew_jobs::{
    JobTx, Queue, RunAt,
    picks::{
        EventRef, LockEvent, PicksSettings, RecordOutcome,
        events::{
            Event, Market, NewEvent, NewPick, Pick, PickError, ResultStatus, Selection,
            create_event, get_pick, place_pick, reschedule_event,
        },
        jobs::settle_in,
        leaderboard, record_result, stats,
    },
    worker::PoolSpec,
};
use groundcrew_testkit::{TestEnv, eventually};
use uuid::Uuid;

fn picks_pool() -> Vec<PoolSpec> {
    vec![PoolSpec {
        queue: Queue::Picks,
        concurrency: 4,
    }]
}

async fn db_now(env: &TestEnv) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&env.services.db)
        .await
        .unwrap()
}

/// A game starting `starts_in_ms` after Postgres' clock (negative: already started).
async fn event(env: &TestEnv, external_id: &str, starts_in_ms: i64) -> Event {
    let starts_at = db_now(env).await + chrono::Duration::milliseconds(starts_in_ms);
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let event = create_event(
        &mut tx,
        &NewEvent {
            external_id: external_id.into(),
            sport: "nfl".into(),
            home_team: "Home".into(),
            away_team: "Away".into(),
            starts_at,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    event
}

async fn pick(
    env: &TestEnv,
    user: Uuid,
    event_id: Uuid,
    (market, selection, line): (Market, Selection, Option<f64>),
    odds: i32,
    stake_units: f64,
) -> Result<Pick, PickError> {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let placed = place_pick(
        &mut tx,
        user,
        &NewPick {
            event_id,
            market,
            selection,
            line,
            odds,
            stake_units,
        },
    )
    .await;
    if placed.is_ok() {
        tx.commit().await.unwrap();
    }
    placed
}

async fn result(env: &TestEnv, event_id: Uuid, status: ResultStatus, score: Option<(i32, i32)>) {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    record_result(
        &mut tx,
        EventRef::Id(event_id),
        status,
        score.map(|s| s.0),
        score.map(|s| s.1),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Settles in the test's own transaction (the job's code path without the queue).
async fn settle(env: &TestEnv, event_id: Uuid) -> groundcrew_jobs::picks::grading::Graded {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let graded = settle_in(&mut tx, event_id).await.unwrap();
    tx.commit().await.unwrap();
    graded
}

async fn fetch(env: &TestEnv, id: Uuid) -> Pick {
    let mut conn = env.services.db.acquire().await.unwrap();
    get_pick(&mut conn, id).await.unwrap().unwrap()
}

async fn assert_stats_match_picks(env: &TestEnv) {
    let mut conn = env.services.db.acquire().await.unwrap();
    let kept = stats::all_stats(&mut conn).await.unwrap();
    let recomputed = stats::recomputed_stats(&mut conn).await.unwrap();
    assert_eq!(kept, recomputed, "incremental stats equal a recomputation");
}

const ML_HOME: (Market, Selection, Option<f64>) = (Market::Moneyline, Selection::Home, None);
const ML_AWAY: (Market, Selection, Option<f64>) = (Market::Moneyline, Selection::Away, None);
const fn spread(selection: Selection, line: f64) -> (Market, Selection, Option<f64>) {
    (Market::Spread, selection, Some(line))
}
const fn total(selection: Selection, line: f64) -> (Market, Selection, Option<f64>) {
    (Market::Total, selection, Some(line))
}
use Selection::{Away, Home, Over, Under};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grading_table_covers_every_market_selection_and_outcome() {
    let env = TestEnv::new().await;
    // (final score or canceled, pick, odds, stake, expected status, expected profit)
    type Case = (
        (Market, Selection, Option<f64>),
        i32,
        f64,
        &'static str,
        &'static str,
    );
    /// A final score (none: canceled) and the picks graded against it.
    type Game = (Option<(i32, i32)>, Vec<Case>);
    let games: Vec<Game> = vec![
        (
            Some((21, 17)),
            vec![
                (ML_HOME, -150, 1.5, "won", "1.0000"),
                (ML_AWAY, 130, 1.0, "lost", "-1.0000"),
                (spread(Home, -4.0), -110, 1.0, "push", "0.0000"),
                (spread(Away, 4.0), -110, 1.0, "push", "0.0000"),
                (spread(Home, -3.5), -110, 1.0, "won", "0.9091"),
                (spread(Away, 3.5), -110, 1.0, "lost", "-1.0000"),
                (spread(Home, -7.0), 120, 2.0, "lost", "-2.0000"),
                (spread(Away, 7.0), 120, 2.0, "won", "2.4000"),
                (spread(Away, 4.5), 100, 0.5, "won", "0.5000"),
                (spread(Home, -4.5), -100, 0.5, "lost", "-0.5000"),
                (total(Over, 38.0), -110, 1.0, "push", "0.0000"),
                (total(Under, 38.0), -110, 1.0, "push", "0.0000"),
                (total(Over, 37.5), 105, 1.0, "won", "1.0500"),
                (total(Under, 37.5), -105, 1.0, "lost", "-1.0000"),
                (total(Over, 45.5), 250, 0.1, "lost", "-0.1000"),
                (total(Under, 45.5), -120, 1.2, "won", "1.0000"),
                (total(Under, 44.0), -333, 3.33, "won", "1.0000"),
            ],
        ),
        (
            Some((20, 20)),
            vec![
                (ML_HOME, -200, 2.0, "push", "0.0000"),
                (ML_AWAY, 170, 1.0, "push", "0.0000"),
                (spread(Home, 0.0), -110, 1.0, "push", "0.0000"),
                (spread(Away, 0.5), -115, 2.3, "won", "2.0000"),
                (spread(Home, -0.5), 110, 1.0, "lost", "-1.0000"),
                (total(Over, 40.0), -110, 1.0, "push", "0.0000"),
                (total(Under, 39.5), 100, 1.0, "lost", "-1.0000"),
                (total(Over, 39.5), 100, 1.0, "won", "1.0000"),
            ],
        ),
        (
            Some((3, 24)),
            vec![
                (ML_HOME, 400, 1.0, "lost", "-1.0000"),
                (ML_AWAY, -600, 6.0, "won", "1.0000"),
                (spread(Home, 21.0), -110, 1.0, "push", "0.0000"),
                (spread(Home, 21.5), -110, 1.1, "won", "1.0000"),
                (spread(Away, -21.5), -110, 1.0, "lost", "-1.0000"),
                (spread(Away, -20.5), -110, 1.0, "won", "0.9091"),
            ],
        ),
        (
            None,
            vec![
                (ML_HOME, -150, 1.0, "void", "0.0000"),
                (ML_AWAY, 130, 1.0, "void", "0.0000"),
                (spread(Home, -3.0), -110, 1.0, "void", "0.0000"),
                (spread(Away, 3.5), -110, 1.0, "void", "0.0000"),
                (total(Over, 41.0), -110, 1.0, "void", "0.0000"),
                (total(Under, 41.5), -110, 1.0, "void", "0.0000"),
            ],
        ),
    ];
    for (g, (score, cases)) in games.into_iter().enumerate() {
        let game = event(&env, &format!("game-{g}"), 3_600_000).await;
        let mut placed = Vec::new();
        for case in &cases {
            // One user per pick: a user has one pick per (event, market).
            let p = pick(&env, Uuid::now_v7(), game.id, case.0, case.1, case.2)
                .await
                .unwrap();
            assert_eq!(p.status, "open");
            placed.push(p.id);
        }
        let status = match score {
            Some(_) => ResultStatus::Final,
            None => ResultStatus::Canceled,
        };
        result(&env, game.id, status, score).await;
        let graded = settle(&env, game.id).await;
        assert_eq!(graded.picks, cases.len() as u64);
        for (id, case) in placed.into_iter().zip(&cases) {
            let p = fetch(&env, id).await;
            assert_eq!(
                (p.status.as_str(), p.profit_units.as_deref()),
                (case.3, Some(case.4)),
                "{score:?}: {:?} at {:+} for {}u",
                case.0,
                case.1,
                case.2
            );
            assert!(p.settled_at.is_some() && p.locked_at.is_some());
        }
    }
    assert_stats_match_picks(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_picks_are_refused_with_the_field_at_fault() {
    let env = TestEnv::new().await;
    let game = event(&env, "g", 3_600_000).await;
    let user = Uuid::now_v7();
    let invalid = |r: Result<Pick, PickError>| match r {
        Err(PickError::Invalid(e)) => e.field,
        other => panic!("expected a validation error, got {other:?}"),
    };
    let cases = [
        ((Market::Moneyline, Over, None), -110, 1.0, "selection"),
        ((Market::Total, Home, Some(40.5)), -110, 1.0, "selection"),
        (ML_HOME, -99, 1.0, "odds"),
        (ML_HOME, 99, 1.0, "odds"),
        (ML_HOME, 0, 1.0, "odds"),
        (ML_HOME, -110, 0.0, "stake_units"),
        (ML_HOME, -110, 100.01, "stake_units"),
        (ML_HOME, -110, 1.005, "stake_units"),
        ((Market::Moneyline, Home, Some(1.5)), -110, 1.0, "line"),
        ((Market::Spread, Home, None), -110, 1.0, "line"),
        ((Market::Total, Over, None), -110, 1.0, "line"),
        (spread(Home, 2.25), -110, 1.0, "line"),
        (total(Over, -3.5), -110, 1.0, "line"),
    ];
    for (kind, odds, stake, field) in cases {
        assert_eq!(
            invalid(pick(&env, user, game.id, kind, odds, stake).await),
            field
        );
    }
    pick(&env, user, game.id, ML_HOME, 100, 100.0)
        .await
        .unwrap();
    assert!(matches!(
        pick(&env, user, game.id, ML_AWAY, -100, 0.1).await,
        Err(PickError::Duplicate)
    ));
    pick(&env, user, game.id, spread(Away, 2.5), -110, 1.0)
        .await
        .unwrap();
    assert!(matches!(
        pick(&env, user, Uuid::now_v7(), ML_HOME, -110, 1.0).await,
        Err(PickError::EventNotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_a_second_before_start_is_locked_at_start_and_a_second_after_is_refused() {
    let env = TestEnv::new().await;
    let soon = event(&env, "soon", 1_000).await;
    let started = event(&env, "started", -1_000).await;
    let workers = env.spawn_workers(picks_pool());

    let accepted = pick(&env, Uuid::now_v7(), soon.id, ML_HOME, -110, 1.0)
        .await
        .unwrap();
    assert_eq!(accepted.status, "open");
    assert!(matches!(
        pick(&env, Uuid::now_v7(), started.id, ML_HOME, -110, 1.0).await,
        Err(PickError::EventStarted)
    ));

    let locked = eventually(
        Duration::from_secs(15),
        "the pick locked at start",
        || async {
            let p = fetch(&env, accepted.id).await;
            (p.status == "locked").then_some(p)
        },
    )
    .await;
    assert!(locked.locked_at.unwrap() >= soon.starts_at);
    // Once locked, the window is closed too.
    assert!(matches!(
        pick(&env, Uuid::now_v7(), soon.id, ML_AWAY, -110, 1.0).await,
        Err(PickError::EventStarted)
    ));
    workers.shutdown().await;
}

/// A lock job that runs before the start by Postgres' clock (a worker or Redis clock five
/// minutes fast, or a game moved later) locks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_job_running_early_locks_nothing_and_waits_for_the_start() {
    let env = TestEnv::new().await;
    let game = event(&env, "later", 5 * 60_000).await;
    let p = pick(&env, Uuid::now_v7(), game.id, ML_HOME, -110, 1.0)
        .await
        .unwrap();
    let workers = env.spawn_workers(picks_pool());

    // What a clock five minutes fast does: the lock for this start fires now.
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let early = tx
        .enqueue_at(&LockEvent::new(&game), RunAt::Now)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the early lock job to finish",
        || async {
            let job = env.services.broker.job(early).await.unwrap()?;
            (job.status == "succeeded").then_some(())
        },
    )
    .await;
    assert_eq!(fetch(&env, p.id).await.status, "open");
    let mut conn = env.services.db.acquire().await.unwrap();
    let status = groundcrew_jobs::picks::events::get_event(&mut conn, game.id)
        .await
        .unwrap()
        .unwrap()
        .status;
    assert_eq!(status, "scheduled");
    // The picks can still be made, and a lock stays scheduled for the start.
    pick(&env, Uuid::now_v7(), game.id, ML_AWAY, 120, 1.0)
        .await
        .unwrap();
    let depth = env.services.broker.depth(Queue::Picks).await.unwrap();
    assert!(depth.scheduled >= 1, "{depth:?}");
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_start_later_moves_the_lock() {
    let env = TestEnv::new().await;
    let game = event(&env, "moved", 1_500).await;
    let p = pick(&env, Uuid::now_v7(), game.id, ML_HOME, -110, 1.0)
        .await
        .unwrap();
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let later = db_now(&env).await + chrono::Duration::minutes(10);
    reschedule_event(&mut tx, game.id, later).await.unwrap();
    tx.commit().await.unwrap();
    let workers = env.spawn_workers(picks_pool());

    // The lock for the old start falls due and finds the game not started.
    eventually(
        Duration::from_secs(15),
        "the old start's lock to run",
        || async {
            let d = env.services.broker.depth(Queue::Picks).await.unwrap();
            (d.scheduled == 1 && d.pending == 0 && d.running == 0).then_some(())
        },
    )
    .await;
    assert_eq!(fetch(&env, p.id).await.status, "open");
    pick(&env, Uuid::now_v7(), game.id, ML_AWAY, 120, 1.0)
        .await
        .unwrap();
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_locks_started_games_the_lock_job_missed() {
    let env = TestEnv::new().await;
    let game = event(&env, "missed", 800).await;
    let p = pick(&env, Uuid::now_v7(), game.id, ML_HOME, -110, 1.0)
        .await
        .unwrap();
    // The lock job is lost (as if it had died): drop the queue's scheduled jobs.
    let depth_before = env.services.broker.depth(Queue::Picks).await.unwrap();
    assert_eq!(depth_before.scheduled, 1);
    let keys = env.services.broker.keys(Queue::Picks).clone();
    let mut redis = env.services.broker.connection();
    let _: () = redis::cmd("DEL")
        .arg(&keys.scheduled)
        .query_async(&mut redis)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the start to pass", || async {
        (db_now(&env).await >= game.starts_at).then_some(())
    })
    .await;
    assert_eq!(fetch(&env, p.id).await.status, "open");

    let schedules = groundcrew_jobs::schedule::load().unwrap();
    let sweep = schedules
        .iter()
        .find(|s| s.name == "picks_sweep_locks")
        .unwrap();
    groundcrew_jobs::schedule::run_now(&env.services, sweep)
        .await
        .unwrap();
    let workers = env.spawn_workers(picks_pool());
    eventually(Duration::from_secs(10), "the sweeper's lock", || async {
        (fetch(&env, p.id).await.status == "locked").then_some(())
    })
    .await;
    workers.shutdown().await;
}

/// A fixed slate over two games, with fixed user ids so two databases can be compared.
async fn slate(env: &TestEnv) -> (Event, Event) {
    let a = event(env, "slate-a", 3_600_000).await;
    let b = event(env, "slate-b", 3_600_000).await;
    let users: Vec<Uuid> = (1..=6u128).map(Uuid::from_u128).collect();
    let kinds = [
        (ML_HOME, -150),
        (spread(Away, 3.5), -110),
        (total(Over, 38.0), 120),
    ];
    for (i, user) in users.iter().enumerate() {
        for (k, (kind, odds)) in kinds.iter().enumerate() {
            // Alternate sides so every user has winners and losers either way.
            let kind = if (i + k) % 2 == 0 {
                *kind
            } else {
                let flip = match kind.1 {
                    Home => Away,
                    Away => Home,
                    Over => Under,
                    Under => Over,
                };
                (
                    kind.0,
                    flip,
                    kind.2
                        .map(|l| if kind.0 == Market::Spread { -l } else { l }),
                )
            };
            let stake = 1.0 + i as f64 * 0.25;
            pick(env, *user, a.id, kind, *odds, stake).await.unwrap();
            pick(env, *user, b.id, kind, *odds, stake).await.unwrap();
        }
    }
    (a, b)
}

type Snapshot = (
    Vec<(Uuid, String, String, String, String, Option<String>)>,
    Vec<stats::Stats>,
    Vec<(u64, Uuid, String, String, i64)>,
);

async fn snapshot(env: &TestEnv) -> Snapshot {
    let picks = sqlx::query_as(
        "SELECT p.user_id, e.external_id, p.market, p.selection, p.status, p.profit_units::text
         FROM picks p JOIN sports_events e ON e.id = p.event_id
         ORDER BY 1, 2, 3",
    )
    .fetch_all(&env.services.db)
    .await
    .unwrap();
    let mut conn = env.services.db.acquire().await.unwrap();
    let kept = stats::all_stats(&mut conn).await.unwrap();
    assert_eq!(kept, stats::recomputed_stats(&mut conn).await.unwrap());
    leaderboard::rebuild(&env.services, 1).await.unwrap();
    let board = leaderboard::top(&env.services.broker, 100).await.unwrap();
    let board = board
        .items
        .into_iter()
        .map(|e| (e.rank, e.user_id, e.roi, e.units_profit, e.picks_settled))
        .collect();
    (picks, kept, board)
}

async fn notifications_per_user(env: &TestEnv) -> Vec<(Uuid, i64)> {
    sqlx::query_as("SELECT user_id, count(*) FROM notifications GROUP BY 1 ORDER BY 1")
        .fetch_all(&env.services.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrected_score_resettles_exactly_as_if_it_had_come_first() {
    let corrected = TestEnv::new().await;
    let (a, b) = slate(&corrected).await;
    result(&corrected, b.id, ResultStatus::Final, Some((10, 30))).await;
    settle(&corrected, b.id).await;
    result(&corrected, a.id, ResultStatus::Final, Some((21, 17))).await;
    let first = settle(&corrected, a.id).await;
    assert_eq!(first.users.len(), 6);
    assert_eq!(
        notifications_per_user(&corrected).await,
        (1..=6u128)
            .map(|u| (Uuid::from_u128(u), 2))
            .collect::<Vec<_>>(),
        "one notification per user per settled game"
    );
    let before_correction = snapshot(&corrected).await;
    result(&corrected, a.id, ResultStatus::Final, Some((17, 21))).await;
    settle(&corrected, a.id).await;

    let direct = TestEnv::new().await;
    let (a2, b2) = slate(&direct).await;
    result(&direct, b2.id, ResultStatus::Final, Some((10, 30))).await;
    settle(&direct, b2.id).await;
    result(&direct, a2.id, ResultStatus::Final, Some((17, 21))).await;
    settle(&direct, a2.id).await;

    let after = snapshot(&corrected).await;
    assert_ne!(
        after, before_correction,
        "the correction changed the outcome"
    );
    assert_eq!(after, snapshot(&direct).await);

    // The same result again: nothing to settle, nothing changes, nobody is notified.
    let mut tx = JobTx::begin(&corrected.services).await.unwrap();
    let again = record_result(
        &mut tx,
        EventRef::External("slate-a".into()),
        ResultStatus::Final,
        Some(17),
        Some(21),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(again, RecordOutcome::Unchanged { event_id: a.id });
    let notified = notifications_per_user(&corrected).await;
    let regraded = settle(&corrected, a.id).await;
    assert_eq!(regraded.picks, 0);
    assert_eq!(snapshot(&corrected).await, after);
    assert_eq!(notifications_per_user(&corrected).await, notified);

    // Canceled after all: every pick of the game is void and its stakes leave the stats.
    result(&corrected, a.id, ResultStatus::Canceled, None).await;
    settle(&corrected, a.id).await;
    let (picks, _, _) = snapshot(&corrected).await;
    assert!(
        picks
            .iter()
            .filter(|p| p.1 == "slate-a")
            .all(|p| p.4 == "void" && p.5.as_deref() == Some("0.0000"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_settling_one_game_grade_each_pick_once() {
    let env = TestEnv::new().await;
    let game = event(&env, "busy", 3_600_000).await;
    sqlx::query(
        "INSERT INTO picks (id, user_id, event_id, market, selection, line, odds, stake_units)
         SELECT gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(u::text, 12, '0'))::uuid,
                $1, m, CASE WHEN m = 'total' THEN 'over' ELSE 'home' END,
                CASE m WHEN 'spread' THEN -3.5 WHEN 'total' THEN 40.5 END, -110, 1
         FROM generate_series(1, 2000) u, unnest(ARRAY['moneyline', 'spread', 'total']) m",
    )
    .bind(game.id)
    .execute(&env.services.db)
    .await
    .unwrap();
    result(&env, game.id, ResultStatus::Final, Some((24, 20))).await;
    // Two extra settlements besides the one record_result enqueued, on two worker pools.
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let settle_job = groundcrew_jobs::picks::SettleEvent { event_id: game.id };
    tx.enqueue(&settle_job).await.unwrap();
    tx.enqueue(&settle_job).await.unwrap();
    tx.commit().await.unwrap();
    let first = env.spawn_workers(picks_pool());
    let second = env.spawn_workers(picks_pool());
    // And two settlements racing in this process.
    let (x, y) = tokio::join!(settle(&env, game.id), settle(&env, game.id));
    assert!(x.picks + y.picks <= 6000);
    eventually(
        Duration::from_secs(30),
        "the settle jobs to finish",
        || async {
            let d = env.services.broker.depth(Queue::Picks).await.unwrap();
            (d.pending == 0 && d.running == 0 && d.scheduled == 1).then_some(())
        },
    )
    .await;
    let graded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM picks WHERE status IN ('won', 'lost')")
            .fetch_one(&env.services.db)
            .await
            .unwrap();
    assert_eq!(graded, 6000);
    assert_stats_match_picks(&env).await;
    let mut conn = env.services.db.acquire().await.unwrap();
    let one = stats::user_stats(&mut conn, Uuid::from_u128(7))
        .await
        .unwrap();
    // Home 24–20: moneyline won, -3.5 won, over 40.5 won: three wins at -110.
    assert_eq!(
        (
            one.picks_settled,
            one.wins,
            one.units_staked.as_str(),
            one.units_profit.as_str()
        ),
        (3, 3, "3.00", "2.7273")
    );
    assert_eq!(one.win_rate, "1.000000");
    let per_user = notifications_per_user(&env).await;
    assert_eq!(per_user.len(), 2000);
    assert!(
        per_user.iter().all(|(_, n)| *n == 1),
        "each user notified once"
    );
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_ranks_by_roi_with_a_minimum_of_settled_picks() {
    let mut env = TestEnv::new().await;
    env.services.picks = Arc::new(PicksSettings {
        leaderboard_min_picks: 2,
    });
    let (a, b) = slate(&env).await;
    let lone = Uuid::from_u128(99);
    let c = event(&env, "lone", 3_600_000).await;
    pick(&env, lone, c.id, ML_HOME, 500, 1.0).await.unwrap();
    for (game, score) in [(a.id, (21, 17)), (b.id, (14, 35)), (c.id, (1, 0))] {
        result(&env, game, ResultStatus::Final, Some(score)).await;
    }
    let workers = env.spawn_workers(picks_pool());
    eventually(Duration::from_secs(20), "three games settled", || async {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM picks WHERE settled_at IS NULL")
            .fetch_one(&env.services.db)
            .await
            .unwrap();
        (open == 0).then_some(())
    })
    .await;
    let schedules = groundcrew_jobs::schedule::load().unwrap();
    let rebuild = schedules
        .iter()
        .find(|s| s.name == "picks_leaderboard")
        .unwrap();
    groundcrew_jobs::schedule::run_now(&env.services, rebuild)
        .await
        .unwrap();
    let board = eventually(Duration::from_secs(10), "the rebuilt board", || async {
        let board = leaderboard::top(&env.services.broker, 100).await.unwrap();
        board.generated_at.is_some().then_some(board)
    })
    .await;
    workers.shutdown().await;
    assert_eq!(board.items.len(), 6, "the user with one pick is not ranked");
    assert!(board.items.iter().all(|e| e.user_id != lone));
    let mut conn = env.services.db.acquire().await.unwrap();
    for (i, entry) in board.items.iter().enumerate() {
        assert_eq!(entry.rank, i as u64 + 1);
        let s = stats::user_stats(&mut conn, entry.user_id).await.unwrap();
        assert_eq!((entry.picks_settled, &entry.roi), (s.picks_settled, &s.roi));
        assert_eq!(entry.units_profit, s.units_profit);
    }
    let rois: Vec<f64> = board.items.iter().map(|e| e.roi.parse().unwrap()).collect();
    assert!(rois.windows(2).all(|w| w[0] >= w[1]), "{rois:?}");
    let top3 = leaderboard::top(&env.services.broker, 3).await.unwrap();
    assert_eq!(top3.items, board.items[..3]);
}
