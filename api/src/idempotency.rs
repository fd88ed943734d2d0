//! `Idempotency-Key` for creating POSTs: the same key with the same body replays the first
//! response; with another body it is refused (422 `idempotency_key_reused`).
//!
//! The key row is inserted in the request's own transaction. A duplicate arriving while the
//! first request runs blocks on that uncommitted row inside Postgres (the in-progress marker),
//! then sees the committed response and replays it, or, if the first rolled back, goes ahead
//! itself. So concurrent duplicates cause one effect, and a crash leaves no stale marker.
//!
//! A route uses it like this:
//!
//! ```ignore
//! let mut claim = match idempotency::begin(&state, &request_id, caller.id, key.0, "POST /v1/x", &body).await? {
//!     Begun::Replay(first) => return Ok(Created(Json(first))),
//!     Begun::Fresh(claim) => claim,
//! };
//! /* writes and enqueues through claim.tx() */
//! claim.commit(StatusCode::CREATED, &response).await?;
//! ```

use groundcrew_jobs::{JobTx, maintenance::IDEMPOTENCY_KEY_RETENTION_HOURS};
use poem::http::StatusCode;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{ApiState, error::ApiError, request_id::RequestId};

pub enum Begun<T> {
    /// First time: do the work through the claim and commit it with the response.
    Fresh(Box<Claim>),
    /// A request with this key and body already succeeded; this is its response body.
    Replay(T),
}

/// A transaction that owns the key (when one was given) until it commits or rolls back.
pub struct Claim {
    tx: JobTx,
    key: Option<(Uuid, String)>,
}

impl Claim {
    pub fn tx(&mut self) -> &mut JobTx {
        &mut self.tx
    }

    /// Records the response under the key and commits it together with the work.
    pub async fn commit<T: ToJSON>(mut self, status: StatusCode, body: &T) -> Result<(), ApiError> {
        if let Some((user, key)) = &self.key {
            sqlx::query(
                "UPDATE idempotency_keys SET status = $3, body = $4 WHERE user_id = $1 AND key = $2",
            )
            .bind(user)
            .bind(key)
            .bind(i32::from(status.as_u16()))
            .bind(body.to_json())
            .execute(self.tx.conn())
            .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// Opens the request's transaction and claims `key` for `caller`, or finds the response to
/// replay. `route` names the operation, so one key cannot be replayed on another route.
pub async fn begin<T: ParseFromJSON>(
    state: &ApiState,
    request_id: &RequestId,
    caller: Uuid,
    key: Option<String>,
    route: &str,
    request: &impl ToJSON,
) -> Result<Begun<T>, ApiError> {
    let mut tx = state
        .services
        .begin()
        .await?
        .with_request_id(Some(request_id.0.clone()));
    let Some(key) = key else {
        return Ok(Begun::Fresh(Box::new(Claim { tx, key: None })));
    };
    let hash = fingerprint(route, request);
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, key) DO UPDATE
             SET request_hash = EXCLUDED.request_hash, status = NULL, body = NULL, created_at = now()
             WHERE idempotency_keys.created_at < now() - make_interval(hours => $4)",
    )
    .bind(caller)
    .bind(&key)
    .bind(&hash)
    .bind(IDEMPOTENCY_KEY_RETENTION_HOURS)
    .execute(tx.conn())
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(Begun::Fresh(Box::new(Claim {
            tx,
            key: Some((caller, key)),
        })));
    }
    let (first_hash, body): (String, Option<serde_json::Value>) = sqlx::query_as(
        "SELECT request_hash, body FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind(caller)
    .bind(&key)
    .fetch_one(tx.conn())
    .await?;
    tx.rollback().await?;
    if first_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        ));
    }
    let first = T::parse_from_json(body).map_err(|e| {
        tracing::error!(error = %e.into_message(), "stored idempotent response does not parse");
        ApiError::internal()
    })?;
    Ok(Begun::Replay(first))
}

fn fingerprint(route: &str, request: &impl ToJSON) -> String {
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(request.to_json_string().as_bytes());
    hex::encode(hasher.finalize())
}
