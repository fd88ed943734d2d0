//! Fixed-window rate limits in Redis, per user, per client IP, and a stricter class for routes
//! that cause paid work (email, push). Redis trouble lets requests through (logged): losing the
//! limiter for a while is better than refusing work the outbox could still accept.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use poem::{Endpoint, Request, Response, http::header::AUTHORIZATION};

use crate::{ApiState, auth::Caller, error::ApiError};

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

#[derive(Clone)]
pub struct RateLimiter {
    limits: RateLimits,
    prefix: String,
    conn: redis::aio::ConnectionManager,
}

impl RateLimiter {
    pub fn new(limits: RateLimits, broker: &groundcrew_jobs::broker::Broker) -> Self {
        RateLimiter {
            limits,
            prefix: format!("{}:rl", broker.prefix()),
            conn: broker.connection(),
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
        self.check_all(&[(class, subject)]).await
    }

    /// Counts one request against each budget, in one round trip; 429 when any is over, with
    /// the longest wait among those over.
    pub async fn check_all(&self, budgets: &[(Class, &str)]) -> Result<(), ApiError> {
        // Per budget: start the window at the first hit (SET NX keeps a running window's
        // expiry), count, read what is left. Plain commands rather than a script, so the keys
        // of one request may live on different Cluster nodes.
        let mut pipe = redis::pipe();
        for (class, subject) in budgets {
            let key = format!("{}:{}:{subject}", self.prefix, class.name());
            let window_ms = self.limit(*class).window.as_millis() as u64;
            pipe.cmd("SET")
                .arg(&key)
                .arg(0)
                .arg("PX")
                .arg(window_ms)
                .arg("NX")
                .ignore()
                .incr(&key, 1)
                .pttl(&key);
        }
        let mut conn = self.conn.clone();
        let counted = pipe.query_async::<Vec<(u64, i64)>>(&mut conn);
        let counts = match tokio::time::timeout(CHECK_TIMEOUT, counted).await {
            Ok(Ok(counts)) => counts,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate limiter unavailable; letting the request through");
                return Ok(());
            }
            Err(_) => {
                tracing::warn!("rate limiter timed out; letting the request through");
                return Ok(());
            }
        };
        let mut wait_ms = None;
        for ((class, _), (count, ttl_ms)) in budgets.iter().zip(counts) {
            let limit = self.limit(*class);
            if count > u64::from(limit.max) {
                metrics::counter!("groundcrew_http_rate_limited_total", "class" => class.name())
                    .increment(1);
                // A key without expiry (set by hand) waits a whole window.
                let ttl_ms = u64::try_from(ttl_ms).unwrap_or(limit.window.as_millis() as u64);
                wait_ms = wait_ms.max(Some(ttl_ms));
            }
        }
        match wait_ms {
            Some(ms) => Err(ApiError::rate_limited(ms.div_ceil(1000).max(1))),
            None => Ok(()),
        }
    }
}

/// A caller whose token this middleware verified; `BearerAuth` takes it from here.
#[derive(Clone)]
pub struct Verified(pub Caller);

/// Limits `/v1` requests before anything else runs: per client address, and per user when the
/// request carries a valid bearer token — both counted in one Redis round trip.
pub async fn limit_requests<E: Endpoint>(ep: E, mut req: Request) -> poem::Result<Response> {
    if req.uri().path().starts_with("/v1/")
        && let Some(state) = req.data::<ApiState>()
    {
        let ip = client_ip(&req, &state.config.trusted_proxies);
        match bearer_token(&req).and_then(|t| state.verifier.verify(t).ok()) {
            Some(caller) => {
                let user = caller.id.to_string();
                let budgets = [(Class::Ip, ip.as_str()), (Class::User, user.as_str())];
                state.limiter.check_all(&budgets).await?;
                req.set_data(Verified(caller));
            }
            None => state.limiter.check(Class::Ip, &ip).await?,
        }
    }
    ep.call(req).await.map(poem::IntoResponse::into_response)
}

fn bearer_token(req: &Request) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
/// address in `X-Forwarded-For`, read from the right, that is not a trusted proxy itself (what
/// lies to its left the client wrote and could forge).
fn client_ip(req: &Request, trusted: &[IpNet]) -> String {
    // Canonical: on a dual-stack listener an IPv4 peer arrives as `::ffff:a.b.c.d`, which an
    // IPv4 network in the list would not contain.
    let Some(peer) = req
        .remote_addr()
        .as_socket_addr()
        .map(|a| a.ip().to_canonical())
    else {
        return "unknown".into();
    };
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer;
    if is_trusted(&peer) {
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for hop in forwarded.iter().rev() {
            // An unreadable entry ends the chain: the last hop read is as far as we can trust.
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            let ip = ip.to_canonical();
            client = ip;
            if !is_trusted(&ip) {
                break;
            }
        }
    }
    client.to_string()
}
