//! The Postgres pool and migrations.

use std::time::Duration;

use sqlx::{
    PgPool,
    migrate::MigrateDatabase,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool that connects lazily, so processes start (and report not-ready) while Postgres is down.
///
/// No ping on checkout: sqlx's default round trip per `acquire` was a fifth of the Postgres
/// round trips of an enqueuing request (measured with perf: most of Postgres's CPU here is
/// waking for messages, not executing them). sqlx still pings every connection it takes back,
/// off the request's path, and drops a broken one; a connection that broke while idle fails
/// its next statement, which answers 503 (API) or retries (job) like any Postgres outage.
///
/// JIT compilation is off for our sessions: every statement here is short, but where a table
/// grew faster than its statistics the planner's estimate passes `jit_above_cost` and Postgres
/// compiles the statement with LLVM on every run — a sixth of all CPU in a push run
/// (bench/results/notify.md, run 7).
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse::<PgConnectOptions>()?.options([("jit", "off")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Applies pending migrations. sqlx holds a Postgres advisory lock while it does, so several
/// processes starting at once migrate once.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Creates the database if it does not exist (dev mode).
pub async fn create_if_missing(url: &str) -> Result<(), sqlx::Error> {
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
    }
    Ok(())
}
