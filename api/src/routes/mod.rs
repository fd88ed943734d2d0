//! One module per route family; each holds an `…Api` struct listed in `openapi_service`.

pub mod escrow;
pub mod feed;
pub mod media;
pub mod notify;
pub mod ops;
pub mod picks;
pub mod profiles;
pub mod service;
pub mod verification;
pub mod webhooks;

use chrono::{DateTime, Utc};

/// Redis keeps times as Unix milliseconds; the API speaks RFC 3339.
pub(crate) fn from_unix_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}
