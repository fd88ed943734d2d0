//! Per-user pick statistics, as kept incrementally by settlement, and the same figures
//! recomputed from the picks table (the check the tests hold the incremental path to).

use sqlx::{PgConnection, Row, postgres::PgRow};
use uuid::Uuid;

/// A user's record. Decimals are exact, as Postgres prints them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub user_id: Uuid,
    /// Graded non-void picks (won, lost, push).
    pub picks_settled: i64,
    pub wins: i64,
    pub losses: i64,
    pub pushes: i64,
    pub voids: i64,
    pub units_staked: String,
    pub units_profit: String,
    /// units_profit / units_staked to 6 decimals; 0 when nothing is staked.
    pub roi: String,
    /// wins / (wins + losses) to 6 decimals; 0 when there are none.
    pub win_rate: String,
}

const DERIVED: &str = "
    round(CASE WHEN units_staked = 0 THEN 0 ELSE units_profit / units_staked END, 6)::text AS roi,
    round(CASE WHEN wins + losses = 0 THEN 0 ELSE wins::numeric / (wins + losses) END, 6)::text
      AS win_rate";

impl Stats {
    fn from_row(row: &PgRow) -> Self {
        Stats {
            user_id: row.get("user_id"),
            picks_settled: row.get("picks_settled"),
            wins: row.get("wins"),
            losses: row.get("losses"),
            pushes: row.get("pushes"),
            voids: row.get("voids"),
            units_staked: row.get("units_staked"),
            units_profit: row.get("units_profit"),
            roi: row.get("roi"),
            win_rate: row.get("win_rate"),
        }
    }
}

/// The stats settlement keeps; a user without settled picks has all zeros.
pub async fn user_stats(conn: &mut PgConnection, user_id: Uuid) -> Result<Stats, sqlx::Error> {
    let sql = format!(
        "SELECT $1::uuid AS user_id, picks_settled, wins, losses, pushes, voids,
                units_staked::numeric(20, 2)::text AS units_staked,
                units_profit::numeric(22, 4)::text AS units_profit, {DERIVED}
         FROM (
           SELECT coalesce(s.picks_settled, 0) AS picks_settled, coalesce(s.wins, 0) AS wins,
                  coalesce(s.losses, 0) AS losses, coalesce(s.pushes, 0) AS pushes,
                  coalesce(s.voids, 0) AS voids, coalesce(s.units_staked, 0) AS units_staked,
                  coalesce(s.units_profit, 0) AS units_profit
           FROM (SELECT 1) one LEFT JOIN pick_stats s ON s.user_id = $1
         ) t"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_one(conn)
        .await?;
    Ok(Stats::from_row(&row))
}

/// Every user's stats as stored, in user order (users with a row only).
pub async fn all_stats(conn: &mut PgConnection) -> Result<Vec<Stats>, sqlx::Error> {
    let sql = format!(
        "SELECT user_id, picks_settled, wins, losses, pushes, voids,
                units_staked::numeric(20, 2)::text AS units_staked,
                units_profit::numeric(22, 4)::text AS units_profit, {DERIVED}
         FROM pick_stats
         WHERE (picks_settled, voids) <> (0, 0)
         ORDER BY user_id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(Stats::from_row).collect())
}

/// Every user's stats recomputed from the picks table, in user order: what `all_stats` must
/// equal at any commit.
pub async fn recomputed_stats(conn: &mut PgConnection) -> Result<Vec<Stats>, sqlx::Error> {
    let sql = format!(
        "SELECT user_id, picks_settled, wins, losses, pushes, voids,
                units_staked::numeric(20, 2)::text AS units_staked,
                units_profit::numeric(22, 4)::text AS units_profit, {DERIVED}
         FROM (
           SELECT user_id,
                  count(*) FILTER (WHERE status IN ('won', 'lost', 'push')) AS picks_settled,
                  count(*) FILTER (WHERE status = 'won') AS wins,
                  count(*) FILTER (WHERE status = 'lost') AS losses,
                  count(*) FILTER (WHERE status = 'push') AS pushes,
                  count(*) FILTER (WHERE status = 'void') AS voids,
                  coalesce(sum(stake_units) FILTER (WHERE status IN ('won', 'lost', 'push')), 0)
                    AS units_staked,
                  coalesce(sum(profit_units), 0) AS units_profit
           FROM picks
           WHERE status IN ('won', 'lost', 'push', 'void')
           GROUP BY user_id
         ) r
         ORDER BY user_id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(Stats::from_row).collect())
}
