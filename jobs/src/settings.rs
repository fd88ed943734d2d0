//! Configuration shared by every process, read from the environment once at start. A bad
//! value stops the process with a message naming the variable.

use std::{str::FromStr, time::Duration};

#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

/// Reads an optional variable, parsing it with `FromStr`.
pub fn env_parse<T>(variable: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(variable) {
        Ok(raw) if !raw.trim().is_empty() => raw.trim().parse().map_err(|e| ConfigError {
            variable: variable.into(),
            message: format!("cannot parse {raw:?}: {e}"),
        }),
        _ => Ok(default),
    }
}

/// Reads an optional duration such as `500ms`, `30s`, `7d`.
pub fn env_duration(variable: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match std::env::var(variable) {
        Ok(raw) if !raw.trim().is_empty() => {
            humantime::parse_duration(raw.trim()).map_err(|e| ConfigError {
                variable: variable.into(),
                message: format!("cannot parse {raw:?} as a duration like 30s or 7d: {e}"),
            })
        }
        _ => Ok(default),
    }
}

pub fn env_string(variable: &'static str, default: &str) -> String {
    std::env::var(variable)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// What the job core needs to reach its stores and run jobs.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    pub database_url: String,
    pub redis_url: String,
    /// Every Redis key starts with this, so tenants and tests never collide.
    pub queue_prefix: String,
    /// How long a worker may hold a job without renewing before another takes it over.
    /// Recovery of a dead worker's jobs is bounded by this plus `reclaim_interval`.
    pub lease: Duration,
    /// How long finished jobs stay visible to `GET /v1/ops/jobs/{id}` before Redis expires them.
    pub retention: Duration,
    /// After SIGTERM, how long in-flight jobs may run before they are handed back.
    pub shutdown_grace: Duration,
    /// An idle worker checks its queue at least this often even without a wake-up signal.
    pub poll_interval: Duration,
}

/// The HS256 secret the API signs tokens with; the workers sign unsubscribe links with it.
pub const JWT_SECRET_VARIABLE: &str = "GROUNDCREW_JWT_SECRET";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/groundcrew";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

impl CoreSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let settings = Self {
            database_url: env_string("DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url: env_string("REDIS_URL", DEFAULT_REDIS_URL),
            queue_prefix: env_string("GROUNDCREW_QUEUE_PREFIX", "groundcrew"),
            lease: env_duration("GROUNDCREW_JOB_LEASE", Duration::from_secs(30))?,
            retention: env_duration("GROUNDCREW_JOB_RETENTION", Duration::from_secs(3600))?,
            shutdown_grace: env_duration("GROUNDCREW_SHUTDOWN_GRACE", Duration::from_secs(30))?,
            poll_interval: env_duration("GROUNDCREW_POLL_INTERVAL", Duration::from_millis(500))?,
        };
        if settings.lease < Duration::from_secs(1) {
            return Err(ConfigError {
                variable: "GROUNDCREW_JOB_LEASE".into(),
                message: "must be at least 1s".into(),
            });
        }
        if settings.queue_prefix.contains(['{', '}', ' ']) {
            return Err(ConfigError {
                variable: "GROUNDCREW_QUEUE_PREFIX".into(),
                message: "must not contain braces or spaces".into(),
            });
        }
        Ok(settings)
    }

    /// How often each pool looks for expired leases.
    pub fn reclaim_interval(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(5))
    }
}
