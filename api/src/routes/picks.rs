//! Sports picks: events and their results (admin/feeds), picks, per-user stats and the ROI
//! leaderboard. The rules (pick window, grading) live in `groundcrew_jobs::picks`; these
//! routes authenticate, validate the shape, and map the job side's errors once, below.

use chrono::{DateTime, Utc};
use groundcrew_jobs::picks::{
    EventRef, RecordError, RecordOutcome,
    events::{self, EventError, Market, NewEvent, NewPick, PickError, ResultStatus, Selection},
    leaderboard, record_result, stats,
};
use poem::{http::StatusCode, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};
use uuid::Uuid;

use crate::{
    ApiState, Tag,
    auth::{BearerAuth, Role},
    error::{ApiError, IntoApiError},
    idempotency::{self, Begun},
    request_id::RequestId,
    route_error,
};

pub struct PicksApi;

/// Who may record games and their results: operators and the sports-data feed.
const FEEDERS: &[Role] = &[Role::Admin, Role::Feeds];

/// A game to take picks on.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct EventInput {
    /// The sports-data provider's id for the game; unique.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub external_id: String,
    #[oai(validator(min_length = 1, max_length = 50))]
    pub sport: String,
    #[oai(validator(min_length = 1, max_length = 100))]
    pub home_team: String,
    #[oai(validator(min_length = 1, max_length = 100))]
    pub away_team: String,
    /// Picks are accepted strictly before this time (by the server's clock).
    pub starts_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct SportsEvent {
    pub id: Uuid,
    pub external_id: String,
    pub sport: String,
    pub home_team: String,
    pub away_team: String,
    pub starts_at: DateTime<Utc>,
    /// `scheduled`, `live`, `final` or `canceled`.
    pub status: String,
    pub home_score: Option<i32>,
    pub away_score: Option<i32>,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ResultStatusInput {
    Final,
    Canceled,
}

/// A game's result. `final` needs both scores; `canceled` voids the game's picks.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct ResultInput {
    pub status: ResultStatusInput,
    #[oai(validator(minimum(value = "0")))]
    pub home_score: Option<i32>,
    #[oai(validator(minimum(value = "0")))]
    pub away_score: Option<i32>,
}

#[derive(Debug, Object)]
pub struct ResultAccepted {
    pub event_id: Uuid,
    /// `settling` when the result is new or corrected (the game's picks are being graded),
    /// `unchanged` when the same result was already recorded.
    pub settlement: String,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum MarketInput {
    Moneyline,
    Spread,
    Total,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum SelectionInput {
    Home,
    Away,
    Over,
    Under,
}

/// A pick. moneyline and spread take `home`/`away`, total takes `over`/`under`; spread and
/// total need a `line` (a multiple of 0.5), moneyline takes none.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct PickInput {
    pub event_id: Uuid,
    pub market: MarketInput,
    pub selection: SelectionInput,
    pub line: Option<f64>,
    /// American odds: ≤ −100 or ≥ +100.
    pub odds: i32,
    /// 0.1 to 100 units, at most two decimals.
    pub stake_units: f64,
}

#[derive(Debug, Object)]
pub struct PickView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub event_id: Uuid,
    pub market: String,
    pub selection: String,
    pub line: Option<f64>,
    pub odds: i32,
    pub stake_units: f64,
    /// `open`, `locked`, `won`, `lost`, `push` or `void`.
    pub status: String,
    /// Set once graded: positive when won, −stake when lost, 0 for push and void.
    pub profit_units: Option<f64>,
    pub locked_at: Option<DateTime<Utc>>,
    pub settled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct UserStats {
    pub user_id: Uuid,
    /// Graded non-void picks (won, lost, push).
    pub picks_settled: i64,
    pub wins: i64,
    pub losses: i64,
    pub pushes: i64,
    pub voids: i64,
    pub units_staked: f64,
    pub units_profit: f64,
    /// units_profit / units_staked (0 when nothing is staked).
    pub roi: f64,
    /// wins / (wins + losses) (0 when there are none).
    pub win_rate: f64,
}

#[derive(Debug, Object)]
pub struct Leaderboard {
    pub items: Vec<LeaderboardItem>,
    /// When the board was computed; absent before its first build.
    pub generated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct LeaderboardItem {
    pub rank: u64,
    pub user_id: Uuid,
    /// Absent when the user has no profile.
    pub handle: Option<String>,
    pub roi: f64,
    pub units_profit: f64,
    pub picks_settled: i64,
}

#[derive(ApiResponse)]
enum EventCreated {
    /// The game is recorded; its picks lock at `starts_at`.
    #[oai(status = 201)]
    Created(Json<SportsEvent>),
}

#[derive(ApiResponse)]
enum ResultQueued {
    /// The result is recorded; settlement runs in the background.
    #[oai(status = 202)]
    Accepted(Json<ResultAccepted>),
}

#[derive(ApiResponse)]
enum PickPlaced {
    /// The pick is open until the game starts.
    #[oai(status = 201)]
    Created(Json<PickView>),
}

route_error!(
    /// Failures of `POST /v1/sports/events`.
    CreateEventError: 400, 401, 403, 409, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/sports/events/{id}` and `GET /v1/picks/{id}`.
    GetPicksResourceError: 401, 404, 422, 429, 503
);
route_error!(
    /// Failures of `POST /v1/sports/events/{id}/result`.
    RecordResultError: 400, 401, 403, 404, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `POST /v1/picks`.
    PlacePickError: 400, 401, 404, 409, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of the stats and leaderboard reads.
    PicksReadError: 401, 422, 429, 503
);

#[OpenApi(tag = "Tag::Picks")]
impl PicksApi {
    /// Record a game
    ///
    /// Needs `admin` or `feeds`. 409 `duplicate_external_id` when the provider's id is known.
    #[oai(
        path = "/v1/sports/events",
        method = "post",
        operation_id = "create_sports_event"
    )]
    async fn create_event(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        body: Json<EventInput>,
    ) -> Result<EventCreated, CreateEventError> {
        auth.0.require_any(FEEDERS)?;
        let input = body.0;
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        let event = events::create_event(
            &mut tx,
            &NewEvent {
                external_id: input.external_id,
                sport: input.sport,
                home_team: input.home_team,
                away_team: input.away_team,
                starts_at: input.starts_at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(EventCreated::Created(Json(event_view(event))))
    }

    /// A game
    #[oai(
        path = "/v1/sports/events/:id",
        method = "get",
        operation_id = "get_sports_event"
    )]
    async fn get_event(
        &self,
        state: Data<&ApiState>,
        _auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<SportsEvent>, GetPicksResourceError> {
        let mut conn = state.services.db.acquire().await?;
        let event = events::get_event(&mut conn, id.0)
            .await?
            .ok_or(EventError::NotFound)?;
        Ok(Json(event_view(event)))
    }

    /// Record a game's result
    ///
    /// Needs `admin` or `feeds`. The game's picks are graded in the background; posting a
    /// different final score re-grades them, the same result again changes nothing.
    #[oai(
        path = "/v1/sports/events/:id/result",
        method = "post",
        operation_id = "record_sports_result"
    )]
    async fn record_result(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        id: Path<Uuid>,
        body: Json<ResultInput>,
    ) -> Result<ResultQueued, RecordResultError> {
        auth.0.require_any(FEEDERS)?;
        let input = body.0;
        let status = match input.status {
            ResultStatusInput::Final => ResultStatus::Final,
            ResultStatusInput::Canceled => ResultStatus::Canceled,
        };
        let mut tx = state
            .services
            .begin()
            .await?
            .with_request_id(Some(request_id.0));
        let outcome = record_result(
            &mut tx,
            EventRef::Id(id.0),
            status,
            input.home_score,
            input.away_score,
        )
        .await?;
        tx.commit().await?;
        let (event_id, settlement) = match outcome {
            RecordOutcome::Settling { event_id } => (event_id, "settling"),
            RecordOutcome::Unchanged { event_id } => (event_id, "unchanged"),
        };
        Ok(ResultQueued::Accepted(Json(ResultAccepted {
            event_id,
            settlement: settlement.into(),
        })))
    }

    /// Place a pick
    ///
    /// Accepted strictly before the game starts (409 `event_started` at or after), one per
    /// user, game and market (409 `duplicate_pick`). Send an `Idempotency-Key` so a retried
    /// request places one pick.
    #[oai(path = "/v1/picks", method = "post", operation_id = "place_pick")]
    async fn place_pick(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        /// Replays the first response for a repeated key with the same body.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: Json<PickInput>,
    ) -> Result<PickPlaced, PlacePickError> {
        let caller = auth.0.id;
        let input = body.0;
        let mut claim = match idempotency::begin(
            &state,
            &request_id,
            caller,
            idempotency_key.0,
            "place_pick",
            &input,
        )
        .await?
        {
            Begun::Replay(first) => return Ok(PickPlaced::Created(Json(first))),
            Begun::Fresh(claim) => claim,
        };
        let new = NewPick {
            event_id: input.event_id,
            market: match input.market {
                MarketInput::Moneyline => Market::Moneyline,
                MarketInput::Spread => Market::Spread,
                MarketInput::Total => Market::Total,
            },
            selection: match input.selection {
                SelectionInput::Home => Selection::Home,
                SelectionInput::Away => Selection::Away,
                SelectionInput::Over => Selection::Over,
                SelectionInput::Under => Selection::Under,
            },
            line: input.line,
            odds: input.odds,
            stake_units: input.stake_units,
        };
        let pick = pick_view(events::place_pick(claim.tx(), caller, &new).await?);
        claim.commit(StatusCode::CREATED, &pick).await?;
        Ok(PickPlaced::Created(Json(pick)))
    }

    /// A pick
    ///
    /// Picks are the community's public record (they make up stats and leaderboards), so any
    /// signed-in user may read one.
    #[oai(path = "/v1/picks/:id", method = "get", operation_id = "get_pick")]
    async fn get_pick(
        &self,
        state: Data<&ApiState>,
        _auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<PickView>, GetPicksResourceError> {
        let mut conn = state.services.db.acquire().await?;
        let pick = events::get_pick(&mut conn, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("pick_not_found", "no pick has this id"))?;
        Ok(Json(pick_view(pick)))
    }

    /// A user's pick record
    ///
    /// All zeros for a user without graded picks.
    #[oai(
        path = "/v1/users/:id/stats",
        method = "get",
        operation_id = "get_user_stats"
    )]
    async fn user_stats(
        &self,
        state: Data<&ApiState>,
        _auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<UserStats>, PicksReadError> {
        let mut conn = state.services.db.acquire().await?;
        let s = stats::user_stats(&mut conn, id.0).await?;
        Ok(Json(UserStats {
            user_id: s.user_id,
            picks_settled: s.picks_settled,
            wins: s.wins,
            losses: s.losses,
            pushes: s.pushes,
            voids: s.voids,
            units_staked: decimal(&s.units_staked),
            units_profit: decimal(&s.units_profit),
            roi: decimal(&s.roi),
            win_rate: decimal(&s.win_rate),
        }))
    }

    /// The ROI leaderboard
    ///
    /// Users with enough graded picks in the window, best ROI first. The board is rebuilt
    /// periodically; `generated_at` says when.
    #[oai(
        path = "/v1/leaderboards/roi",
        method = "get",
        operation_id = "get_roi_leaderboard"
    )]
    async fn leaderboard(
        &self,
        state: Data<&ApiState>,
        _auth: BearerAuth,
        /// Only `30d` today.
        window: Query<Option<String>>,
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))] limit: Query<Option<u64>>,
    ) -> Result<Json<Leaderboard>, PicksReadError> {
        if let Some(window) = window.0.as_deref()
            && window != leaderboard::WINDOW
        {
            return Err(ApiError::invalid_field(
                "window",
                format!("the only window is {}", leaderboard::WINDOW),
            )
            .into());
        }
        let limit = limit.0.unwrap_or(50) as usize;
        let board = leaderboard::top(&state.services.broker, limit).await?;
        // The board holds ids only; handles are read at request time so renames show at once.
        let ids: Vec<Uuid> = board.items.iter().map(|e| e.user_id).collect();
        let handles: std::collections::HashMap<Uuid, String> =
            sqlx::query_as("SELECT id, handle FROM users WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&state.services.db)
                .await?
                .into_iter()
                .collect();
        Ok(Json(Leaderboard {
            items: board
                .items
                .into_iter()
                .map(|e| LeaderboardItem {
                    rank: e.rank,
                    handle: handles.get(&e.user_id).cloned(),
                    user_id: e.user_id,
                    roi: decimal(&e.roi),
                    units_profit: decimal(&e.units_profit),
                    picks_settled: e.picks_settled,
                })
                .collect(),
            generated_at: board.generated_at,
        }))
    }
}

/// The job side keeps decimals exact as Postgres prints them (plain `-12.3400`), which always
/// parses; JSON clients get numbers.
fn decimal(text: &str) -> f64 {
    text.parse().unwrap_or_default()
}

fn event_view(e: events::Event) -> SportsEvent {
    SportsEvent {
        id: e.id,
        external_id: e.external_id,
        sport: e.sport,
        home_team: e.home_team,
        away_team: e.away_team,
        starts_at: e.starts_at,
        status: e.status,
        home_score: e.home_score,
        away_score: e.away_score,
    }
}

fn pick_view(p: events::Pick) -> PickView {
    PickView {
        id: p.id,
        user_id: p.user_id,
        event_id: p.event_id,
        market: p.market,
        selection: p.selection,
        line: p.line.as_deref().map(decimal),
        odds: p.odds,
        stake_units: decimal(&p.stake_units),
        status: p.status,
        profit_units: p.profit_units.as_deref().map(decimal),
        locked_at: p.locked_at,
        settled_at: p.settled_at,
    }
}

// The family's one mapping from the job side's errors to the API's: `?` in any route above
// goes through these.

fn event_not_found() -> ApiError {
    ApiError::not_found("event_not_found", "no sports event has this id")
}

impl IntoApiError for EventError {
    fn into_api_error(self) -> ApiError {
        match self {
            EventError::DuplicateExternalId => ApiError::conflict(
                "duplicate_external_id",
                "an event with this external_id exists",
            ),
            EventError::NotFound => event_not_found(),
            EventError::NotScheduled => ApiError::conflict("event_started", self.to_string()),
            EventError::Db(e) => e.into(),
        }
    }
}

impl IntoApiError for RecordError {
    fn into_api_error(self) -> ApiError {
        match self {
            RecordError::NotFound => event_not_found(),
            RecordError::Invalid(message) => ApiError::validation(message),
            RecordError::Db(e) => e.into(),
        }
    }
}

impl IntoApiError for PickError {
    fn into_api_error(self) -> ApiError {
        match self {
            PickError::Invalid(invalid) => ApiError::invalid_field(invalid.field, invalid.message),
            PickError::EventNotFound => event_not_found(),
            PickError::EventStarted => {
                ApiError::conflict("event_started", "the game has started; picks are closed")
            }
            PickError::Duplicate => ApiError::conflict(
                "duplicate_pick",
                "you already have a pick for this game and market",
            ),
            PickError::Db(e) => e.into(),
        }
    }
}
