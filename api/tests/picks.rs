//! The picks routes over HTTP against real Postgres and Redis: who may record games, the pick
//! window, the validation a bettor sees, and a result graded by the picks pool as the pick and
//! the user's stats then show it.

#[allow(dead_code)]
#[path = "http/helpers.rs"]
mod helpers;

use std::time::Duration;

use chrono::{Duration as Span, Utc};
use groundcrew_api::auth::Role;
use groundcrew_jobs::{Queue, worker::PoolSpec};
use groundcrew_testkit::eventually;
use helpers::{TestApp, expect_error};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(20);

fn event_body(starts_in: Span) -> Value {
    json!({
        "external_id": format!("game-{}", Uuid::now_v7()),
        "sport": "nba",
        "home_team": "Celtics",
        "away_team": "Knicks",
        "starts_at": (Utc::now() + starts_in).to_rfc3339(),
    })
}

/// Records a game as the sports-data feed; returns its id.
async fn create_event(app: &TestApp, starts_in: Span) -> String {
    let feed = app.token(Uuid::now_v7(), &[Role::Feeds]);
    let resp = app
        .post("/v1/sports/events", Some(&feed), &event_body(starts_in))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let event: Value = resp.json().await.unwrap();
    event["id"].as_str().unwrap().to_owned()
}

fn moneyline(event_id: &str, selection: &str, odds: i32, stake: f64) -> Value {
    json!({
        "event_id": event_id, "market": "moneyline", "selection": selection,
        "odds": odds, "stake_units": stake,
    })
}

async fn json_of(resp: reqwest::Response, status: StatusCode) -> Value {
    let got = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(got, status, "body {body}");
    body
}

#[tokio::test]
async fn only_admins_and_the_feed_record_games_and_results() {
    let app = TestApp::start().await;
    let body = event_body(Span::hours(1));
    let user = app.user();
    expect_error(
        app.post("/v1/sports/events", Some(&user), &body).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let admin = app.admin();
    let event = json_of(
        app.post("/v1/sports/events", Some(&admin), &body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(event["status"], "scheduled");
    assert_eq!(event["home_team"], "Celtics");
    expect_error(
        app.post("/v1/sports/events", Some(&admin), &body).await,
        StatusCode::CONFLICT,
        "duplicate_external_id",
    )
    .await;

    let id = event["id"].as_str().unwrap();
    let fetched = json_of(
        app.get(&format!("/v1/sports/events/{id}"), Some(&user))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(fetched["external_id"], body["external_id"]);
    expect_error(
        app.get(
            &format!("/v1/sports/events/{}", Uuid::now_v7()),
            Some(&user),
        )
        .await,
        StatusCode::NOT_FOUND,
        "event_not_found",
    )
    .await;

    let result = json!({"status": "final", "home_score": 100, "away_score": 90});
    expect_error(
        app.post(
            &format!("/v1/sports/events/{id}/result"),
            Some(&user),
            &result,
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // A final result without scores cannot be graded.
    expect_error(
        app.post(
            &format!("/v1/sports/events/{id}/result"),
            Some(&admin),
            &json!({"status": "final"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn picks_are_taken_once_per_market_and_only_before_the_start() {
    let app = TestApp::start().await;
    let event = create_event(&app, Span::hours(1)).await;
    let user = app.user();

    let pick = json_of(
        app.post(
            "/v1/picks",
            Some(&user),
            &moneyline(&event, "home", -110, 1.5),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(pick["status"], "open");
    assert_eq!(pick["stake_units"], 1.5);
    assert_eq!(pick["odds"], -110);

    // Same game and market, other side: still a second pick.
    expect_error(
        app.post(
            "/v1/picks",
            Some(&user),
            &moneyline(&event, "away", 120, 1.0),
        )
        .await,
        StatusCode::CONFLICT,
        "duplicate_pick",
    )
    .await;
    // Another market of the same game is a pick of its own.
    let total = json!({
        "event_id": event, "market": "total", "selection": "over", "line": 210.5,
        "odds": -105, "stake_units": 1,
    });
    let total = json_of(
        app.post("/v1/picks", Some(&user), &total).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(total["line"], 210.5);

    let started = create_event(&app, Span::minutes(-1)).await;
    expect_error(
        app.post(
            "/v1/picks",
            Some(&user),
            &moneyline(&started, "home", 150, 1.0),
        )
        .await,
        StatusCode::CONFLICT,
        "event_started",
    )
    .await;
    expect_error(
        app.post(
            "/v1/picks",
            Some(&user),
            &moneyline(&Uuid::now_v7().to_string(), "home", 150, 1.0),
        )
        .await,
        StatusCode::NOT_FOUND,
        "event_not_found",
    )
    .await;
}

#[tokio::test]
async fn picks_the_rules_refuse_are_422_naming_the_field() {
    let app = TestApp::start().await;
    let event = create_event(&app, Span::hours(1)).await;
    let user = app.user();
    let spread_without_line = json!({
        "event_id": event, "market": "spread", "selection": "home",
        "odds": -110, "stake_units": 1,
    });
    let error = expect_error(
        app.post("/v1/picks", Some(&user), &spread_without_line)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(error["details"]["field"], "line");

    let error = expect_error(
        app.post(
            "/v1/picks",
            Some(&user),
            &moneyline(&event, "home", -99, 1.0),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(error["details"]["field"], "odds");

    // Nothing was placed: the valid pick is still the user's first for the market.
    assert_eq!(
        app.post(
            "/v1/picks",
            Some(&user),
            &moneyline(&event, "home", -100, 1.0)
        )
        .await
        .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_retried_pick_with_the_same_key_is_placed_once() {
    let app = TestApp::start().await;
    let event = create_event(&app, Span::hours(1)).await;
    let user = app.user();
    let body = moneyline(&event, "away", 130, 2.0);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = app
            .post_keyed("/v1/picks", Some(&user), "pick-1", &body)
            .await;
        ids.push(json_of(resp, StatusCode::CREATED).await["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
}

#[tokio::test]
async fn a_result_grades_the_picks_and_the_stats_follow() {
    let app = TestApp::start().await;
    let workers = app.env.spawn_workers(vec![PoolSpec {
        queue: Queue::Picks,
        concurrency: 2,
    }]);
    let event = create_event(&app, Span::hours(1)).await;
    let (winner_id, loser_id) = (Uuid::now_v7(), Uuid::now_v7());
    let winner = app.token(winner_id, &[]);
    let loser = app.token(loser_id, &[]);
    let won = json_of(
        app.post(
            "/v1/picks",
            Some(&winner),
            &moneyline(&event, "home", 150, 2.0),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let lost = json_of(
        app.post(
            "/v1/picks",
            Some(&loser),
            &moneyline(&event, "away", -200, 3.0),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    let feed = app.token(Uuid::now_v7(), &[Role::Feeds]);
    let accepted = json_of(
        app.post(
            &format!("/v1/sports/events/{event}/result"),
            Some(&feed),
            &json!({"status": "final", "home_score": 3, "away_score": 1}),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(accepted["settlement"], "settling");

    let graded = |pick: Value, token: String| {
        let app = &app;
        async move {
            let path = format!("/v1/picks/{}", pick["id"].as_str().unwrap());
            eventually(WITHIN, "the pick to be graded", || async {
                let pick: Value = app.get(&path, Some(&token)).await.json().await.ok()?;
                (pick["settled_at"].is_string()).then_some(pick)
            })
            .await
        }
    };
    let won = graded(won, winner.clone()).await;
    assert_eq!(won["status"], "won");
    assert_eq!(won["profit_units"], 3.0); // 2 units at +150
    let lost = graded(lost, loser.clone()).await;
    assert_eq!(lost["status"], "lost");
    assert_eq!(lost["profit_units"], -3.0);

    let stats = json_of(
        app.get(&format!("/v1/users/{winner_id}/stats"), Some(&loser))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stats["user_id"], winner_id.to_string());
    assert_eq!(stats["picks_settled"], 1);
    assert_eq!(stats["wins"], 1);
    assert_eq!(stats["losses"], 0);
    assert_eq!(stats["units_staked"], 2.0);
    assert_eq!(stats["units_profit"], 3.0);
    assert_eq!(stats["roi"], 1.5);
    assert_eq!(stats["win_rate"], 1.0);
    let stats = json_of(
        app.get(&format!("/v1/users/{loser_id}/stats"), Some(&winner))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stats["losses"], 1);
    assert_eq!(stats["roi"], -1.0);
    assert_eq!(stats["win_rate"], 0.0);
    workers.shutdown().await;
}

#[tokio::test]
async fn the_leaderboard_offers_the_30_day_window() {
    let app = TestApp::start().await;
    let user = app.user();
    let board = json_of(
        app.get("/v1/leaderboards/roi?window=30d&limit=10", Some(&user))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(board["items"], json!([]));
    let error = expect_error(
        app.get("/v1/leaderboards/roi?window=7d", Some(&user)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(error["details"]["field"], "window");
}
