//! Third-party webhooks: Stripe (payments and identity), Persona, sports data. Each receiver
//! verifies the signature over the exact bytes received before anything is stored, then hands
//! the event to the inbox (`groundcrew_jobs::webhooks`), which stores it once per provider
//! event id and queues its processing.
//!
//! Answers: valid and new → 200 `queued`; a repeat of a stored event id → 200 `duplicate`;
//! a bad, missing or stale signature, or an unset secret → 400 with nothing stored.

use groundcrew_jobs::webhooks::{
    Incoming, Provider, Received, receive,
    signature::{self, SignatureError},
};
use poem::{http::StatusCode, web::Data};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::Header,
    payload::{Binary, Json},
};

use crate::{ApiState, Tag, error::ApiError, request_id::RequestId, route_error};

pub struct WebhooksApi;

/// The body as the exact bytes received: signatures are computed over them, and a
/// re-serialized JSON body would not verify. `Binary` accepts any content type, which suits
/// providers that label JSON in various ways; the signature, not the label, decides.
type RawBody = Binary<Vec<u8>>;

#[derive(Debug, Object)]
pub struct WebhookAccepted {
    /// `queued` (new event) or `duplicate` (this event id was received before).
    pub status: String,
}

#[derive(ApiResponse)]
enum Accepted {
    /// Stored and queued, or already stored.
    #[oai(status = 200)]
    Ok(Json<WebhookAccepted>),
}

route_error!(
    /// Failures of the webhook receivers: 400 `invalid_signature`, `webhook_not_configured`
    /// or `malformed_payload`.
    WebhookError: 400, 413, 429, 503
);

/// The signature headers a receiver got; each scheme reads its own.
pub enum Signed<'a> {
    /// `Stripe-Signature` or `Persona-Signature`: `t=…,v1=…`.
    TimestampedHex(Option<&'a str>),
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Standard {
        id: Option<&'a str>,
        timestamp: Option<&'a str>,
        signature: Option<&'a str>,
    },
}

/// Verifies a delivery against `secret` and reads its event id and type; stores nothing.
/// The receivers and the ingest benchmark's verify-only floor share it.
pub fn verify(
    provider: Provider,
    signed: Signed<'_>,
    secret: Option<&str>,
    body: &[u8],
) -> Result<Incoming, ApiError> {
    let now = chrono::Utc::now().timestamp();
    let (checked, webhook_id) = match signed {
        Signed::TimestampedHex(header) => (
            signature::verify_timestamped_hex(header, secret, body, now),
            None,
        ),
        Signed::Standard {
            id,
            timestamp,
            signature,
        } => (
            signature::verify_standard(id, timestamp, signature, secret, body, now),
            id,
        ),
    };
    checked.map_err(|e| {
        let code = match e {
            SignatureError::NotConfigured => "webhook_not_configured",
            _ => "invalid_signature",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    })?;
    Incoming::parse(provider, body, webhook_id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_payload", e.to_string()))
}

async fn accept(
    state: &ApiState,
    request_id: RequestId,
    incoming: Incoming,
) -> Result<Accepted, WebhookError> {
    let status = match receive(&state.services, incoming, Some(request_id.0)).await? {
        Received::Queued(_) => "queued",
        Received::Duplicate => "duplicate",
    };
    Ok(Accepted::Ok(Json(WebhookAccepted {
        status: status.into(),
    })))
}

#[OpenApi(tag = "Tag::Webhooks")]
impl WebhooksApi {
    /// Stripe events
    ///
    /// `payment_intent.*` (escrow) and `identity.verification_session.*` (verification),
    /// signed with `GROUNDCREW_STRIPE_WEBHOOK_SECRET`.
    #[oai(
        path = "/v1/webhooks/stripe",
        method = "post",
        operation_id = "stripe_webhook"
    )]
    async fn stripe_webhook(
        &self,
        state: Data<&ApiState>,
        request_id: RequestId,
        /// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "{t}.{body}">`, several `v1` during rotation.
        #[oai(name = "Stripe-Signature")]
        signature: Header<Option<String>>,
        body: RawBody,
    ) -> Result<Accepted, WebhookError> {
        let secrets = &state.services.verification;
        let incoming = verify(
            Provider::Stripe,
            Signed::TimestampedHex(signature.0.as_deref()),
            secrets.stripe_webhook_secret.as_deref(),
            &body.0,
        )?;
        accept(&state, request_id, incoming).await
    }

    /// Persona events
    ///
    /// `inquiry.*`, signed with `GROUNDCREW_PERSONA_WEBHOOK_SECRET`.
    #[oai(
        path = "/v1/webhooks/persona",
        method = "post",
        operation_id = "persona_webhook"
    )]
    async fn persona_webhook(
        &self,
        state: Data<&ApiState>,
        request_id: RequestId,
        /// `t=…,v1=…`; during secret rotation, several such groups separated by spaces.
        #[oai(name = "Persona-Signature")]
        signature: Header<Option<String>>,
        body: RawBody,
    ) -> Result<Accepted, WebhookError> {
        let secrets = &state.services.verification;
        let incoming = verify(
            Provider::Persona,
            Signed::TimestampedHex(signature.0.as_deref()),
            secrets.persona_webhook_secret.as_deref(),
            &body.0,
        )?;
        accept(&state, request_id, incoming).await
    }

    /// Sports-data events
    ///
    /// Standard Webhooks, signed with `GROUNDCREW_SPORTS_WEBHOOK_SECRET` (`whsec_…`);
    /// `event.result` settles the game's picks.
    #[oai(
        path = "/v1/webhooks/sports",
        method = "post",
        operation_id = "sports_webhook"
    )]
    async fn sports_webhook(
        &self,
        state: Data<&ApiState>,
        request_id: RequestId,
        /// The event id; a repeat of a received id is answered 200 and not processed again.
        #[oai(name = "webhook-id")]
        id: Header<Option<String>>,
        /// Unix seconds; more than 300 s away from our clock is refused.
        #[oai(name = "webhook-timestamp")]
        timestamp: Header<Option<String>>,
        /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, space-separated when several.
        #[oai(name = "webhook-signature")]
        signature: Header<Option<String>>,
        body: RawBody,
    ) -> Result<Accepted, WebhookError> {
        let secrets = &state.services.verification;
        let incoming = verify(
            Provider::Sports,
            Signed::Standard {
                id: id.0.as_deref(),
                timestamp: timestamp.0.as_deref(),
                signature: signature.0.as_deref(),
            },
            secrets.sports_webhook_secret.as_deref(),
            &body.0,
        )?;
        accept(&state, request_id, incoming).await
    }
}
