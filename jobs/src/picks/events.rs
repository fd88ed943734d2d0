//! The writes behind the routes and the sports-data webhook: events, picks and results. Each
//! runs in the caller's [`JobTx`], so the lock and settle jobs it implies commit with it.
//!
//! Pick window. A pick takes a share lock on its event row and then compares Postgres'
//! `clock_timestamp()` with the start; the lock job takes the row exclusively before it
//! compares. So a pick either commits before the lock job looks (and is locked by it) or is
//! judged at a clock reading at or after the start (and refused): no pick stays open past a
//! lock that ran.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row, postgres::PgRow};
use uuid::Uuid;

use super::jobs::{LockEvent, SettleEvent};
use crate::outbox::{JobTx, RunAt};

pub const STAKE_MIN_UNITS: f64 = 0.1;
pub const STAKE_MAX_UNITS: f64 = 100.0;
pub const LINE_MAX_ABS: f64 = 500.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Market {
    Moneyline,
    Spread,
    Total,
}

impl Market {
    pub const ALL: [Market; 3] = [Market::Moneyline, Market::Spread, Market::Total];

    pub const fn as_str(self) -> &'static str {
        match self {
            Market::Moneyline => "moneyline",
            Market::Spread => "spread",
            Market::Total => "total",
        }
    }

    /// The selections this market offers.
    pub const fn selections(self) -> [Selection; 2] {
        match self {
            Market::Moneyline | Market::Spread => [Selection::Home, Selection::Away],
            Market::Total => [Selection::Over, Selection::Under],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    Home,
    Away,
    Over,
    Under,
}

impl Selection {
    pub const fn as_str(self) -> &'static str {
        match self {
            Selection::Home => "home",
            Selection::Away => "away",
            Selection::Over => "over",
            Selection::Under => "under",
        }
    }
}

/// A result the ops route or the sports-data webhook reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    Final,
    Canceled,
}

impl ResultStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            ResultStatus::Final => "final",
            ResultStatus::Canceled => "canceled",
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub external_id: String,
    pub sport: String,
    pub home_team: String,
    pub away_team: String,
    pub starts_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
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

const EVENT_COLUMNS: &str =
    "id, external_id, sport, home_team, away_team, starts_at, status, home_score, away_score";

impl Event {
    fn from_row(row: &PgRow) -> Self {
        Event {
            id: row.get("id"),
            external_id: row.get("external_id"),
            sport: row.get("sport"),
            home_team: row.get("home_team"),
            away_team: row.get("away_team"),
            starts_at: row.get("starts_at"),
            status: row.get("status"),
            home_score: row.get("home_score"),
            away_score: row.get("away_score"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("an event with this external_id exists")]
    DuplicateExternalId,
    #[error("no such event")]
    NotFound,
    #[error("the event has started or finished; its start can no longer move")]
    NotScheduled,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Records a game and schedules the lock of its picks at the start.
pub async fn create_event(tx: &mut JobTx, new: &NewEvent) -> Result<Event, EventError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO sports_events (id, external_id, sport, home_team, away_team, starts_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (external_id) DO NOTHING
         RETURNING {EVENT_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(&new.external_id)
    .bind(&new.sport)
    .bind(&new.home_team)
    .bind(&new.away_team)
    .bind(new.starts_at)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(EventError::DuplicateExternalId)?;
    let event = Event::from_row(&row);
    tx.enqueue_at(&LockEvent::new(&event), RunAt::At(event.starts_at))
        .await?;
    Ok(event)
}

/// Moves a scheduled game's start. The lock job for the new start is enqueued here; the one
/// for the old start finds the start moved and locks nothing (it checks Postgres time).
pub async fn reschedule_event(
    tx: &mut JobTx,
    event_id: Uuid,
    starts_at: DateTime<Utc>,
) -> Result<Event, EventError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM sports_events WHERE id = $1 FOR UPDATE"
    )))
    .bind(event_id)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(EventError::NotFound)?;
    if Event::from_row(&row).status != "scheduled" {
        return Err(EventError::NotScheduled);
    }
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE sports_events SET starts_at = $2, updated_at = now() WHERE id = $1
         RETURNING {EVENT_COLUMNS}"
    )))
    .bind(event_id)
    .bind(starts_at)
    .fetch_one(tx.conn())
    .await?;
    let event = Event::from_row(&row);
    tx.enqueue_at(&LockEvent::new(&event), RunAt::At(event.starts_at))
        .await?;
    Ok(event)
}

pub async fn get_event(conn: &mut PgConnection, id: Uuid) -> Result<Option<Event>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM sports_events WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(Event::from_row))
}

/// How the caller names the game: our id (ops route) or the provider's (webhook).
#[derive(Clone, Debug)]
pub enum EventRef {
    Id(Uuid),
    External(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The result is new or corrected; a settlement is enqueued.
    Settling { event_id: Uuid },
    /// The same result was already recorded; nothing changes.
    Unchanged { event_id: Uuid },
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no such event")]
    NotFound,
    #[error("{0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Records a game's result and enqueues its settlement, in the caller's transaction. Shared by
/// `POST /v1/sports/events/{id}/result` and the sports-data webhook. A final score different
/// from the recorded one re-settles; the same result again changes nothing.
pub async fn record_result(
    tx: &mut JobTx,
    event: EventRef,
    status: ResultStatus,
    home_score: Option<i32>,
    away_score: Option<i32>,
) -> Result<RecordOutcome, RecordError> {
    let (home_score, away_score) = match status {
        ResultStatus::Final => match (home_score, away_score) {
            (Some(h), Some(a)) if h >= 0 && a >= 0 => (Some(h), Some(a)),
            (Some(_), Some(_)) => return Err(RecordError::Invalid("scores cannot be negative")),
            _ => {
                return Err(RecordError::Invalid(
                    "a final result needs home_score and away_score",
                ));
            }
        },
        // A canceled game has no score worth keeping; grading ignores it.
        ResultStatus::Canceled => (None, None),
    };
    let (by_id, by_external) = match event {
        EventRef::Id(id) => (Some(id), None),
        EventRef::External(external) => (None, Some(external)),
    };
    let row = sqlx::query(
        "SELECT id, status, home_score, away_score FROM sports_events
         WHERE id = $1 OR external_id = $2
         FOR UPDATE",
    )
    .bind(by_id)
    .bind(by_external)
    .fetch_optional(tx.conn())
    .await?
    .ok_or(RecordError::NotFound)?;
    let event_id: Uuid = row.get("id");
    let recorded = (
        row.get::<String, _>("status"),
        row.get::<Option<i32>, _>("home_score"),
        row.get::<Option<i32>, _>("away_score"),
    );
    if recorded == (status.as_str().to_owned(), home_score, away_score) {
        return Ok(RecordOutcome::Unchanged { event_id });
    }
    sqlx::query(
        "UPDATE sports_events SET status = $2, home_score = $3, away_score = $4, updated_at = now()
         WHERE id = $1",
    )
    .bind(event_id)
    .bind(status.as_str())
    .bind(home_score)
    .bind(away_score)
    .execute(tx.conn())
    .await?;
    tx.enqueue(&SettleEvent { event_id }).await?;
    Ok(RecordOutcome::Settling { event_id })
}

#[derive(Clone, Debug)]
pub struct NewPick {
    pub event_id: Uuid,
    pub market: Market,
    pub selection: Selection,
    pub line: Option<f64>,
    pub odds: i32,
    pub stake_units: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    pub id: Uuid,
    pub user_id: Uuid,
    pub event_id: Uuid,
    pub market: String,
    pub selection: String,
    /// Exact decimals as Postgres prints them.
    pub line: Option<String>,
    pub odds: i32,
    pub stake_units: String,
    /// `open`, `locked`, `won`, `lost`, `push` or `void`.
    pub status: String,
    pub profit_units: Option<String>,
    pub locked_at: Option<DateTime<Utc>>,
    pub settled_at: Option<DateTime<Utc>>,
}

const PICK_COLUMNS: &str = "id, user_id, event_id, market, selection, line::text AS line, odds,
    stake_units::text AS stake_units, status, profit_units::text AS profit_units, locked_at,
    settled_at";

impl Pick {
    fn from_row(row: &PgRow) -> Self {
        Pick {
            id: row.get("id"),
            user_id: row.get("user_id"),
            event_id: row.get("event_id"),
            market: row.get("market"),
            selection: row.get("selection"),
            line: row.get("line"),
            odds: row.get("odds"),
            stake_units: row.get("stake_units"),
            status: row.get("status"),
            profit_units: row.get("profit_units"),
            locked_at: row.get("locked_at"),
            settled_at: row.get("settled_at"),
        }
    }
}

/// A pick the rules refuse, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidPick {
    pub field: &'static str,
    pub message: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum PickError {
    #[error(transparent)]
    Invalid(#[from] InvalidPick),
    #[error("no such event")]
    EventNotFound,
    #[error("the event has started")]
    EventStarted,
    #[error("a pick for this event and market exists")]
    Duplicate,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Checks a pick against the market rules; returns the line as exact decimal text.
pub fn validate_pick(pick: &NewPick) -> Result<Option<String>, InvalidPick> {
    let invalid = |field, message| Err(InvalidPick { field, message });
    if !pick.market.selections().contains(&pick.selection) {
        return invalid(
            "selection",
            "moneyline and spread take home or away; total takes over or under",
        );
    }
    if pick.odds > -100 && pick.odds < 100 {
        return invalid("odds", "American odds are ≤ -100 or ≥ +100");
    }
    let stake = pick.stake_units;
    if !(STAKE_MIN_UNITS..=STAKE_MAX_UNITS).contains(&stake) {
        return invalid("stake_units", "between 0.1 and 100 units");
    }
    if ((stake * 100.0).round() - stake * 100.0).abs() > 1e-6 {
        return invalid("stake_units", "at most two decimals");
    }
    match (pick.market, pick.line) {
        (Market::Moneyline, None) => Ok(None),
        (Market::Moneyline, Some(_)) => invalid("line", "a moneyline pick takes no line"),
        (_, None) => invalid("line", "spread and total picks need a line"),
        (_, Some(line)) => {
            if !line.is_finite() || line.abs() > LINE_MAX_ABS || (line * 2.0).fract() != 0.0 {
                return invalid("line", "a multiple of 0.5 within ±500");
            }
            if pick.market == Market::Total && line < 0.0 {
                return invalid("line", "a total line is not negative");
            }
            // Multiples of 0.5 are exact in binary, so this prints the exact value.
            Ok(Some(format!("{line:.1}")))
        }
    }
}

/// Places a pick if the game has not started by Postgres' clock at the moment of the write.
pub async fn place_pick(tx: &mut JobTx, user_id: Uuid, new: &NewPick) -> Result<Pick, PickError> {
    let line = validate_pick(new)?;
    // The share lock orders this write against the lock job (see the module comment).
    let open: Option<bool> = sqlx::query_scalar(
        "SELECT status = 'scheduled' FROM sports_events WHERE id = $1 FOR SHARE",
    )
    .bind(new.event_id)
    .fetch_optional(tx.conn())
    .await?;
    match open {
        None => return Err(PickError::EventNotFound),
        Some(false) => return Err(PickError::EventStarted),
        Some(true) => {}
    }
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO picks (id, user_id, event_id, market, selection, line, odds, stake_units)
         SELECT $1, $2, e.id, $4, $5, $6::numeric, $7, $8::numeric
         FROM sports_events e
         WHERE e.id = $3 AND e.starts_at > clock_timestamp()
         ON CONFLICT (user_id, event_id, market) DO NOTHING
         RETURNING {PICK_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(new.event_id)
    .bind(new.market.as_str())
    .bind(new.selection.as_str())
    .bind(line)
    .bind(new.odds)
    .bind(format!("{:.2}", new.stake_units))
    .fetch_optional(tx.conn())
    .await?;
    if let Some(row) = row {
        return Ok(Pick::from_row(&row));
    }
    // Nothing inserted: the start has passed, or this (user, event, market) has a pick.
    let started: bool = sqlx::query_scalar(
        "SELECT starts_at <= clock_timestamp() FROM sports_events WHERE id = $1",
    )
    .bind(new.event_id)
    .fetch_one(tx.conn())
    .await?;
    Err(if started {
        PickError::EventStarted
    } else {
        PickError::Duplicate
    })
}

pub async fn get_pick(conn: &mut PgConnection, id: Uuid) -> Result<Option<Pick>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PICK_COLUMNS} FROM picks WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(Pick::from_row))
}
