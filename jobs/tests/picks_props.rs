//! Property: whatever picks are made and whatever results (with corrections, repeats and
//! cancellations) arrive in whatever order, the stats settlement keeps incrementally equal the
//! stats recomputed from the picks table.

use groundcrew_jobs::{
    JobTx,
    picks::{
        EventRef,
        events::{Market, NewEvent, NewPick, ResultStatus, create_event, place_pick},
        jobs::settle_in,
        record_result, stats,
    },
};
use groundcrew_testkit::TestEnv;
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Clone, Debug)]
struct PickSpec {
    user: u8,
    game: u8,
    market: Market,
    second_side: bool,
    half_points: i16,
    odds: i32,
    stake_cents: u32,
}

#[derive(Clone, Debug)]
enum Outcome {
    Final(i32, i32),
    Canceled,
}

fn pick_spec() -> impl Strategy<Value = PickSpec> {
    (
        0u8..6,
        0u8..3,
        prop_oneof![
            Just(Market::Moneyline),
            Just(Market::Spread),
            Just(Market::Total)
        ],
        any::<bool>(),
        0i16..20,
        prop_oneof![-400i32..=-100, 100i32..=400],
        10u32..=10_000,
    )
        .prop_map(
            |(user, game, market, second_side, half_points, odds, stake_cents)| PickSpec {
                user,
                game,
                market,
                second_side,
                half_points,
                odds,
                stake_cents,
            },
        )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => (0i32..6, 0i32..6).prop_map(|(h, a)| Outcome::Final(h, a)),
        1 => Just(Outcome::Canceled),
    ]
}

async fn run_case(env: &TestEnv, case: u64, picks: Vec<PickSpec>, results: Vec<(u8, Outcome)>) {
    let mut games = Vec::new();
    for g in 0..3 {
        let mut tx = JobTx::begin(&env.services).await.unwrap();
        let starts_at: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT now() + interval '1 hour'")
                .fetch_one(tx.conn())
                .await
                .unwrap();
        let event = create_event(
            &mut tx,
            &NewEvent {
                external_id: format!("case-{case}-{g}"),
                sport: "nba".into(),
                home_team: "H".into(),
                away_team: "A".into(),
                starts_at,
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        games.push(event.id);
    }
    for p in &picks {
        let [first, second] = p.market.selections();
        // Small lines around small scores, so pushes and half-point lines both come up.
        let line = match p.market {
            Market::Moneyline => None,
            Market::Spread => Some(f64::from(p.half_points) / 2.0 - 5.0),
            Market::Total => Some(f64::from(p.half_points) / 2.0),
        };
        let mut tx = JobTx::begin(&env.services).await.unwrap();
        let placed = place_pick(
            &mut tx,
            Uuid::from_u128(u128::from(case) << 8 | u128::from(p.user)),
            &NewPick {
                event_id: games[usize::from(p.game)],
                market: p.market,
                selection: if p.second_side { second } else { first },
                line,
                odds: p.odds,
                stake_units: f64::from(p.stake_cents) / 100.0,
            },
        )
        .await;
        // A repeated (user, game, market) is refused; that is part of the property's input.
        if placed.is_ok() {
            tx.commit().await.unwrap();
        }
    }
    for (game, outcome) in results {
        let event_id = games[usize::from(game)];
        let (status, home, away) = match outcome {
            Outcome::Final(h, a) => (ResultStatus::Final, Some(h), Some(a)),
            Outcome::Canceled => (ResultStatus::Canceled, None, None),
        };
        let mut tx = JobTx::begin(&env.services).await.unwrap();
        record_result(&mut tx, EventRef::Id(event_id), status, home, away)
            .await
            .unwrap();
        settle_in(&mut tx, event_id).await.unwrap();
        tx.commit().await.unwrap();
        let mut conn = env.services.db.acquire().await.unwrap();
        assert_eq!(
            stats::all_stats(&mut conn).await.unwrap(),
            stats::recomputed_stats(&mut conn).await.unwrap()
        );
    }
}

#[test]
fn incremental_stats_equal_stats_recomputed_from_picks() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // One database for every case (a fresh one per case would dominate the run time); each
    // case has its own users and games, and the property holds over the whole table.
    let env = rt.block_on(TestEnv::new());
    let case = std::sync::atomic::AtomicU64::new(0);
    let config = ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        picks in proptest::collection::vec(pick_spec(), 1..40),
        results in proptest::collection::vec((0u8..3, outcome()), 1..8),
    )| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        rt.block_on(run_case(&env, case, picks, results));
    });
    drop(env);
}
