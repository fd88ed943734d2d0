//! The API's settings, read from the environment once at start. A bad value stops the process
//! with a message naming the variable.

use std::{net::SocketAddr, time::Duration};

use groundcrew_jobs::settings::{ConfigError, env_parse, env_string};
use ipnet::IpNet;

use crate::rate_limit::{Limit, RateLimits};

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub http_addr: SocketAddr,
    pub auth: AuthConfig,
    /// Origins allowed by CORS; empty means no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    pub rate_limits: RateLimits,
    /// Load balancers and proxies in front of the API: from these peers the client address is
    /// read from `X-Forwarded-For`. Empty: the peer is the client, and the header is ignored.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// HS256 secret. `None` only before dev mode has generated one.
    pub jwt_secret: Option<String>,
    /// PEM text holding RS256 and/or EdDSA public keys, any number of blocks.
    pub public_keys_pem: Option<String>,
    pub issuer: String,
    pub audience: String,
}

pub use groundcrew_jobs::settings::JWT_SECRET_VARIABLE;
const PUBLIC_KEYS_VARIABLE: &str = "GROUNDCREW_JWT_PUBLIC_KEYS_FILE";

impl AuthConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let public_keys_pem = match std::env::var(PUBLIC_KEYS_VARIABLE) {
            Ok(path) if !path.trim().is_empty() => Some(
                std::fs::read_to_string(path.trim()).map_err(|e| ConfigError {
                    variable: PUBLIC_KEYS_VARIABLE.into(),
                    message: format!("cannot read {path:?}: {e}"),
                })?,
            ),
            _ => None,
        };
        Ok(AuthConfig {
            jwt_secret: std::env::var(JWT_SECRET_VARIABLE)
                .ok()
                .filter(|s| !s.is_empty()),
            public_keys_pem,
            issuer: env_string("GROUNDCREW_JWT_ISSUER", "groundcrew"),
            audience: env_string("GROUNDCREW_JWT_AUDIENCE", "groundcrew-api"),
        })
    }

    /// Outside dev mode a token secret must be configured.
    pub fn require_secret(&self) -> Result<&str, ConfigError> {
        self.jwt_secret.as_deref().ok_or_else(|| ConfigError {
            variable: JWT_SECRET_VARIABLE.into(),
            message: "required outside dev mode (the HS256 secret tokens are signed with)".into(),
        })
    }
}

impl ApiConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let per_minute = |variable: &'static str, default: u32| {
            env_parse(variable, default).map(|max| Limit {
                max,
                window: Duration::from_secs(60),
            })
        };
        Ok(ApiConfig {
            http_addr: env_parse(
                "GROUNDCREW_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            auth: AuthConfig::from_env()?,
            cors_origins: env_string("GROUNDCREW_CORS_ORIGINS", "")
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect(),
            body_limit: env_parse("GROUNDCREW_HTTP_BODY_LIMIT", 1024 * 1024)?,
            rate_limits: RateLimits {
                per_user: per_minute("GROUNDCREW_RATE_LIMIT_PER_MINUTE", 600)?,
                per_ip: per_minute("GROUNDCREW_RATE_LIMIT_IP_PER_MINUTE", 1200)?,
                paid: per_minute("GROUNDCREW_RATE_LIMIT_PAID_PER_MINUTE", 60)?,
            },
            trusted_proxies: trusted_proxies()?,
        })
    }
}

/// `GROUNDCREW_TRUSTED_PROXIES`: addresses and networks, comma-separated (`10.0.0.0/8, ::1`).
fn trusted_proxies() -> Result<Vec<IpNet>, ConfigError> {
    const VARIABLE: &str = "GROUNDCREW_TRUSTED_PROXIES";
    env_string(VARIABLE, "")
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError {
                    variable: VARIABLE.into(),
                    message: format!("{entry:?} is neither an IP address nor a network (CIDR)"),
                })
        })
        .collect()
}
