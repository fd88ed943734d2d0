//! The 30-day ROI leaderboard: rebuilt whole from the picks table into a Redis sorted set and
//! swapped in atomically, so readers see the previous board or the new one, never a mix.
//!
//! Each member carries its whole entry (`user_id|roi|units_profit|picks_settled`), so a read is
//! one `ZREVRANGE` and cannot straddle a swap. Scores are the ROI as a double, for ordering
//! only; the exact ROI is in the member. Ties order by user id (descending, as Redis does).

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::{Services, broker::Broker, job::JobError};

/// The only window the API offers today.
pub const WINDOW: &str = "30d";
const WINDOW_SQL: &str = "interval '30 days'";
/// Members written per Redis round trip while building.
const CHUNK: usize = 5000;

fn key(broker: &Broker) -> String {
    // One hash tag for the board and its scratch copies: RENAME needs them in one Cluster slot.
    format!("{{{}:picks:leaderboard}}:roi:{WINDOW}", broker.prefix())
}

fn generated_key(broker: &Broker) -> String {
    format!("{}:generated_at", key(broker))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub rank: u64,
    pub user_id: Uuid,
    /// Exact, 6 decimals.
    pub roi: String,
    pub units_profit: String,
    pub picks_settled: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Board {
    pub items: Vec<Entry>,
    /// When the board was computed (Postgres time); `None` before the first rebuild.
    pub generated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderboardError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl From<LeaderboardError> for JobError {
    fn from(e: LeaderboardError) -> Self {
        match e {
            LeaderboardError::Db(e) => e.into(),
            LeaderboardError::Redis(e) => e.into(),
        }
    }
}

/// Recomputes the board from graded picks settled in the window and swaps it in. Returns the
/// number of ranked users.
pub async fn rebuild(services: &Services, min_picks: u32) -> Result<usize, LeaderboardError> {
    let sql = format!(
        "SELECT user_id, count(*) AS picks_settled,
                sum(profit_units)::text AS units_profit,
                round(sum(profit_units) / sum(stake_units), 6)::text AS roi,
                (sum(profit_units) / sum(stake_units))::float8 AS score
         FROM picks
         WHERE status IN ('won', 'lost', 'push') AND settled_at >= now() - {WINDOW_SQL}
         GROUP BY user_id
         HAVING count(*) >= $1"
    );
    let mut conn = services.db.acquire().await?;
    let generated_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(i64::from(min_picks))
        .fetch_all(&mut *conn)
        .await?;
    drop(conn);
    let members: Vec<(f64, String)> = rows
        .iter()
        .map(|row| {
            let member = format!(
                "{}|{}|{}|{}",
                row.get::<Uuid, _>("user_id"),
                row.get::<String, _>("roi"),
                row.get::<String, _>("units_profit"),
                row.get::<i64, _>("picks_settled"),
            );
            (row.get::<f64, _>("score"), member)
        })
        .collect();

    let broker = &services.broker;
    let mut redis = broker.connection();
    let board = key(broker);
    // A scratch key per rebuild, so two rebuilds never write into one; it expires if this
    // process dies before the swap.
    let scratch = format!("{board}:building:{}", Uuid::new_v4().simple());
    for chunk in members.chunks(CHUNK) {
        redis::pipe()
            .zadd_multiple(&scratch, chunk)
            .ignore()
            .expire(&scratch, 600)
            .ignore()
            .query_async::<()>(&mut redis)
            .await?;
    }
    let mut swap = redis::pipe();
    swap.atomic();
    if members.is_empty() {
        swap.del(&board).ignore();
    } else {
        swap.rename(&scratch, &board)
            .ignore()
            .persist(&board)
            .ignore();
    }
    swap.set(generated_key(broker), generated_at.to_rfc3339())
        .ignore();
    swap.query_async::<()>(&mut redis).await?;
    Ok(members.len())
}

/// The top `limit` entries of the board as last rebuilt.
pub async fn top(broker: &Broker, limit: usize) -> redis::RedisResult<Board> {
    let mut redis = broker.connection();
    let (members, generated_at): (Vec<String>, Option<String>) = redis::pipe()
        .atomic()
        .zrevrange(key(broker), 0, limit.max(1) as isize - 1)
        .get(generated_key(broker))
        .query_async(&mut redis)
        .await?;
    let items = members
        .iter()
        .enumerate()
        .filter_map(|(i, member)| {
            let mut parts = member.split('|');
            Some(Entry {
                rank: i as u64 + 1,
                user_id: parts.next()?.parse().ok()?,
                roi: parts.next()?.to_owned(),
                units_profit: parts.next()?.to_owned(),
                picks_settled: parts.next()?.parse().ok()?,
            })
        })
        .collect();
    let generated_at = generated_at
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(Board {
        items,
        generated_at,
    })
}
