//! HTTP tests: the app on port 0 against a real Postgres and Redis per test.

mod auth;
mod cli;
mod errors;
mod helpers;
mod idempotency;
mod ops;
mod rate_limit;
mod readiness;
mod spec;
