//! What the push providers share: the message handed to them and how a send can end.

use std::time::Duration;

/// One push to one device.
#[derive(Clone, Copy, Debug)]
pub struct PushMessage<'a> {
    pub title: &'a str,
    pub body: &'a str,
    pub data: &'a serde_json::Value,
    pub notification_id: uuid::Uuid,
    /// Carried by every send of the same delivery (collapse id, apns-id, FCM tag), so a repeat
    /// after a crash replaces the first on the device instead of showing twice.
    pub send_id: &'a str,
    /// Unix seconds after which the provider may drop an undelivered push.
    pub expires_at: i64,
}

/// How one send ended, as the delivery records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Sent,
    /// The provider says the token is dead: disable the device, the delivery failed.
    InvalidToken(String),
    /// Transient (429, 5xx, network): try again, no sooner than `after` when the provider asked.
    Retry {
        detail: String,
        after: Option<Duration>,
    },
    /// Permanent for this message (payload rejected, bad topic): the delivery failed.
    Failed(String),
}

/// Reads `Retry-After` in its delta-seconds form (what APNs and Google send).
pub fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A network error never reached a verdict: the push may or may not have arrived, so it is
/// retried (a repeat carries the same collapse id).
pub fn network_error(provider: &str, e: &dyn std::fmt::Display) -> PushOutcome {
    PushOutcome::Retry {
        detail: format!("{provider} unreachable: {e}"),
        after: None,
    }
}
