//! Fixed-window rate limits in Redis, per user, per client IP, and a stricter class for routes
//! that cause paid work (email, push). Redis trouble lets requests through (logged): losing the
//! limiter for a while is better than refusing work the outbox could still accept.

use std::{net::IpAddr, time::Duration};

use poem::{Endpoint, Request, Response};
use redis::Script;

use crate::{ApiState, error::ApiError};

/// How long a limiter check may take before the request goes through unchecked.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    pub per_user: Limit,
    pub per_ip: Limit,
    /// Per user, on routes that send email or push.
    pub paid: Limit,
}

/// Which budget a request draws from.
#[derive(Clone, Copy, Debug)]
pub enum Class {
    User,
    Ip,
    Paid,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::User => "user",
            Class::Ip => "ip",
            Class::Paid => "paid",
        }
    }
}

/// Counts a hit and returns the count and the milliseconds left in the window. The window
/// starts at the first hit; the expiry is set again if it was ever lost.
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
";

#[derive(Clone)]
pub struct RateLimiter {
    limits: RateLimits,
    prefix: String,
    conn: redis::aio::ConnectionManager,
    script: std::sync::Arc<Script>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits, broker: &groundcrew_jobs::broker::Broker) -> Self {
        RateLimiter {
            limits,
            prefix: format!("{}:rl", broker.prefix()),
            conn: broker.connection(),
            script: std::sync::Arc::new(Script::new(HIT)),
        }
    }

    fn limit(&self, class: Class) -> Limit {
        match class {
            Class::User => self.limits.per_user,
            Class::Ip => self.limits.per_ip,
            Class::Paid => self.limits.paid,
        }
    }

    /// Counts one request of `subject` against `class`; 429 with the seconds to wait when over.
    pub async fn check(&self, class: Class, subject: &str) -> Result<(), ApiError> {
        let limit = self.limit(class);
        let key = format!("{}:{}:{subject}", self.prefix, class.name());
        let mut conn = self.conn.clone();
        let mut invocation = self.script.prepare_invoke();
        invocation.key(&key).arg(limit.window.as_millis() as u64);
        let hit = invocation.invoke_async::<(u64, u64)>(&mut conn);
        match tokio::time::timeout(CHECK_TIMEOUT, hit).await {
            Ok(Ok((count, _))) if count <= u64::from(limit.max) => Ok(()),
            Ok(Ok((_, ttl_ms))) => {
                metrics::counter!("groundcrew_http_rate_limited_total", "class" => class.name())
                    .increment(1);
                Err(ApiError::rate_limited(ttl_ms.div_ceil(1000).max(1)))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate limiter unavailable; letting the request through");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("rate limiter timed out; letting the request through");
                Ok(())
            }
        }
    }
}

/// Limits `/v1` requests per client address before anything else runs.
pub async fn limit_by_ip<E: Endpoint>(ep: E, req: Request) -> poem::Result<Response> {
    if req.uri().path().starts_with("/v1/") {
        let ip = client_ip(&req);
        if let Some(state) = req.data::<ApiState>() {
            state.limiter.check(Class::Ip, &ip).await?;
        }
    }
    ep.call(req).await.map(poem::IntoResponse::into_response)
}

fn client_ip(req: &Request) -> String {
    req.remote_addr()
        .as_socket_addr()
        .map(|a| a.ip())
        .map(|ip: IpAddr| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}
