//! Grading a game's picks in one set-based statement, with exact numeric arithmetic.
//!
//! Each user's stats are the sum over their picks of a *contribution* that depends only on the
//! pick's stored status, stake and profit (an open or locked pick contributes nothing). The
//! statement grades every pick of the game, keeps only the picks whose grade changed, and adds
//! `contribution(new) − contribution(old)` per user to `pick_stats`. Hence:
//! - the same result twice changes no pick, so it changes no stats and notifies nobody;
//! - a corrected score subtracts exactly what the earlier grading added, so stats end as if the
//!   corrected score had come first;
//! - two settlements of one game serialize on the event row; the second grades nothing.

use sqlx::PgConnection;
use uuid::Uuid;

/// The outcome of each pick as `(status, profit_units)` columns, for a `FROM picks p,
/// sports_events e` join. Margin is the selected side's advantage: positive wins, zero
/// pushes, negative loses. Profit is rounded half away from zero to 4 decimals, once.
pub const GRADE_SQL: &str = "
    CASE
      WHEN e.status = 'canceled' THEN 'void'
      ELSE CASE sign(CASE p.market || ':' || p.selection
        WHEN 'moneyline:home' THEN e.home_score - e.away_score
        WHEN 'moneyline:away' THEN e.away_score - e.home_score
        WHEN 'spread:home'    THEN e.home_score + p.line - e.away_score
        WHEN 'spread:away'    THEN e.away_score + p.line - e.home_score
        WHEN 'total:over'     THEN e.home_score + e.away_score - p.line
        WHEN 'total:under'    THEN p.line - (e.home_score + e.away_score)
      END) WHEN 1 THEN 'won' WHEN 0 THEN 'push' ELSE 'lost' END
    END";

/// Profit of pick `p` given its graded status (a SQL expression).
pub fn profit_sql(status: &str) -> String {
    format!(
        "CASE {status}
           WHEN 'won' THEN round(CASE WHEN p.odds > 0 THEN p.stake_units * p.odds / 100
                                      ELSE p.stake_units * 100 / -p.odds END, 4)
           WHEN 'lost' THEN -p.stake_units
           ELSE 0
         END"
    )
}

/// What a settlement changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Graded {
    /// Picks whose grade changed.
    pub picks: u64,
    /// Users whose picks changed, each once, in id order.
    pub users: Vec<Uuid>,
}

/// Grades every pick of a final or canceled game and moves the stats of the users whose picks
/// changed. The caller holds the event row lock (`FOR UPDATE`) and commits.
pub async fn grade_event(conn: &mut PgConnection, event_id: Uuid) -> Result<Graded, sqlx::Error> {
    // `before` reads the picks as they were when the statement began (every CTE shares one
    // snapshot), so it gives each changed pick's old contribution.
    let sql = format!(
        "WITH before AS (
           SELECT id, status, stake_units, profit_units FROM picks WHERE event_id = $1
         ),
         graded AS (
           SELECT p.id, g.status, {PROFIT} AS profit_units
           FROM picks p
           JOIN sports_events e ON e.id = p.event_id
           CROSS JOIN LATERAL (SELECT {GRADE_SQL} AS status) g
           WHERE p.event_id = $1 AND e.status IN ('final', 'canceled')
         ),
         changed AS (
           UPDATE picks p
           SET status = g.status, profit_units = g.profit_units, settled_at = now(),
               locked_at = COALESCE(p.locked_at, now())
           FROM graded g
           WHERE p.id = g.id
             AND (p.status, p.profit_units) IS DISTINCT FROM (g.status, g.profit_units)
           RETURNING p.id, p.user_id, p.stake_units, p.status, p.profit_units
         ),
         deltas AS (
           SELECT c.user_id,
             sum(n.settled - o.settled) AS picks_settled,
             sum(n.wins - o.wins) AS wins,
             sum(n.losses - o.losses) AS losses,
             sum(n.pushes - o.pushes) AS pushes,
             sum(n.voids - o.voids) AS voids,
             sum(n.staked - o.staked) AS units_staked,
             sum(n.profit - o.profit) AS units_profit
           FROM changed c
           JOIN before b ON b.id = c.id
           CROSS JOIN LATERAL ({CONTRIBUTION}) n
           CROSS JOIN LATERAL ({CONTRIBUTION_BEFORE}) o
           GROUP BY c.user_id
         ),
         applied AS (
           INSERT INTO pick_stats AS s (user_id, picks_settled, wins, losses, pushes, voids,
                                        units_staked, units_profit)
           -- A fixed order takes the stats row locks in the same order in every settlement.
           SELECT * FROM deltas ORDER BY user_id
           ON CONFLICT (user_id) DO UPDATE SET
             picks_settled = s.picks_settled + EXCLUDED.picks_settled,
             wins = s.wins + EXCLUDED.wins,
             losses = s.losses + EXCLUDED.losses,
             pushes = s.pushes + EXCLUDED.pushes,
             voids = s.voids + EXCLUDED.voids,
             units_staked = s.units_staked + EXCLUDED.units_staked,
             units_profit = s.units_profit + EXCLUDED.units_profit,
             updated_at = now()
           RETURNING user_id
         )
         SELECT (SELECT count(*) FROM changed) AS picks,
                coalesce((SELECT array_agg(user_id ORDER BY user_id) FROM applied), '{{}}') AS users",
        PROFIT = profit_sql("g.status"),
        CONTRIBUTION = contribution("c"),
        CONTRIBUTION_BEFORE = contribution("b"),
    );
    let (picks, users): (i64, Vec<Uuid>) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(event_id)
        .fetch_one(conn)
        .await?;
    Ok(Graded {
        picks: picks as u64,
        users,
    })
}

/// A pick's contribution to its user's stats, from the columns of row alias `t`.
fn contribution(t: &str) -> String {
    format!(
        "SELECT ({t}.status IN ('won', 'lost', 'push'))::int AS settled,
                ({t}.status = 'won')::int AS wins,
                ({t}.status = 'lost')::int AS losses,
                ({t}.status = 'push')::int AS pushes,
                ({t}.status = 'void')::int AS voids,
                CASE WHEN {t}.status IN ('won', 'lost', 'push') THEN {t}.stake_units ELSE 0 END
                  AS staked,
                coalesce({t}.profit_units, 0) AS profit"
    )
}

/// The floor the benchmark compares settlement against: one statement that only grades.
pub async fn grade_only(conn: &mut PgConnection, event_id: Uuid) -> Result<u64, sqlx::Error> {
    // The target table cannot be referenced laterally in UPDATE … FROM, so the grade
    // expression appears twice; Postgres evaluates both per row, which only makes the floor
    // slower, never faster.
    let sql = format!(
        "UPDATE picks p SET status = {GRADE_SQL}, profit_units = {PROFIT}, settled_at = now()
         FROM sports_events e
         WHERE e.id = p.event_id AND p.event_id = $1",
        PROFIT = profit_sql(&format!("({GRADE_SQL})")),
    );
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(event_id)
        .execute(conn)
        .await?
        .rows_affected())
}
