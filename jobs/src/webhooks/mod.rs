//! The webhook inbox shared by every provider: a request's signature is verified first
//! (signature.rs), then the raw body is stored once per (provider, event id) and a job processes
//! it. A duplicate delivery finds its row and changes nothing; an unknown event type is stored,
//! processed as `ignored`, and answered 200 like any other.

pub mod ingest;
pub mod signature;
mod sports;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::{
    Services,
    job::{Job, JobContext, JobError},
    outbox::JobTx,
    queue::Queue,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Stripe,
    Persona,
    Sports,
}

impl Provider {
    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Persona => "persona",
            Provider::Sports => "sports",
        }
    }
}

/// A verified webhook, before it is stored.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub provider: Provider,
    pub event_id: String,
    pub event_type: String,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not JSON")]
    NotJson,
    #[error("the body has no {0}")]
    Missing(&'static str),
}

impl Incoming {
    /// Reads the event id and type where each provider puts them: Stripe `id`/`type`, Persona
    /// `data.id`/`data.attributes.name`, Standard Webhooks (sports) the `webhook-id` header and
    /// `type`.
    pub fn parse(
        provider: Provider,
        body: &[u8],
        webhook_id: Option<&str>,
    ) -> Result<Self, PayloadError> {
        let body = std::str::from_utf8(body).map_err(|_| PayloadError::NotJson)?;
        let json: serde_json::Value =
            serde_json::from_str(body).map_err(|_| PayloadError::NotJson)?;
        let text = |pointer: &str| {
            json.pointer(pointer)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let (event_id, event_type) = match provider {
            Provider::Stripe => (text("/id"), text("/type")),
            Provider::Persona => (text("/data/id"), text("/data/attributes/name")),
            Provider::Sports => (webhook_id.map(str::to_owned), text("/type")),
        };
        Ok(Incoming {
            provider,
            event_id: event_id.ok_or(PayloadError::Missing("event id"))?,
            event_type: event_type.ok_or(PayloadError::Missing("event type"))?,
            body: body.to_owned(),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Queued(Uuid),
    Duplicate,
}

/// Stores the event once and enqueues its processing, in one statement with the receipts
/// that arrive alongside (`ingest`).
pub async fn receive(
    services: &Services,
    incoming: Incoming,
    request_id: Option<String>,
) -> Result<Received, sqlx::Error> {
    services.inbox.write(incoming, request_id).await
}

/// A stored event, as the family handlers see it.
#[derive(Clone, Debug)]
pub struct InboxEvent {
    pub id: Uuid,
    pub provider: String,
    pub event_id: String,
    pub event_type: String,
    pub body: serde_json::Value,
}

/// Processes one stored event. The family handler's writes and the `processed_at` mark commit
/// together, so a re-run after a crash finds the event done.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessEvent {
    pub inbox_id: Uuid,
}

impl Job for ProcessEvent {
    const KIND: &'static str = "verification.process_webhook";
    const QUEUE: Queue = Queue::Verification;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = JobTx::begin(&ctx.services)
            .await?
            .with_request_id(ctx.request_id.clone());
        let row = sqlx::query(
            "SELECT provider, event_id, event_type, body, processed_at IS NOT NULL AS done
             FROM webhook_inbox WHERE id = $1 FOR UPDATE",
        )
        .bind(self.inbox_id)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| JobError::fail("inbox row not found"))?;
        if row.get::<bool, _>("done") {
            return Ok(());
        }
        let body: String = row.get("body");
        let event = InboxEvent {
            id: self.inbox_id,
            provider: row.get("provider"),
            event_id: row.get("event_id"),
            event_type: row.get("event_type"),
            body: serde_json::from_str(&body).map_err(JobError::fail)?,
        };
        let outcome = route(&mut tx, &ctx.services, &event).await?;
        sqlx::query("UPDATE webhook_inbox SET processed_at = now(), outcome = $2 WHERE id = $1")
            .bind(self.inbox_id)
            .bind(outcome)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        tracing::info!(provider = %event.provider, event_type = %event.event_type, outcome, "webhook processed");
        Ok(())
    }
}

/// Hands an event to the family that owns it; returns what was done, for the inbox record.
/// Families add a `match` arm on (provider, event type) here as their handlers land; anything
/// without an arm is recorded as ignored.
async fn route(
    tx: &mut JobTx,
    services: &Services,
    event: &InboxEvent,
) -> Result<&'static str, JobError> {
    match (event.provider.as_str(), event.event_type.as_str()) {
        ("stripe", t) if t.starts_with("payment_intent.") => Ok(
            crate::escrow::store::apply_payment_event(tx, &services.escrow, t, &event.body).await?,
        ),
        ("stripe", t) if t.starts_with("identity.verification_session.") => {
            crate::verification::events::apply_stripe(tx, event).await
        }
        ("persona", t) if t.starts_with("inquiry.") => {
            crate::verification::events::apply_persona(tx, event).await
        }
        ("sports", "event.result") => sports::apply_result(tx, event).await,
        _ => Ok("ignored"),
    }
}
