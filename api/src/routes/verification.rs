//! Identity and age verification: start one (a job opens the provider session) and list the
//! caller's, with what the app needs to open each provider's flow.

use chrono::{DateTime, Utc};
use groundcrew_jobs::verification::{self, Kind, ProviderKind};
use poem::{http::StatusCode, web::Data};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, param::Header, payload::Json};
use uuid::Uuid;

use crate::{
    ApiState, Tag,
    auth::BearerAuth,
    error::ApiError,
    idempotency::{self, Begun},
    request_id::RequestId,
    route_error,
};

pub struct VerificationApi;

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum VerificationProvider {
    StripeIdentity,
    Persona,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum VerificationKind {
    /// A government ID (and selfie) check; grants the verified badge.
    Identity,
    /// The same check, also setting `age_verified` when the birth date is 18+ years ago.
    Age,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct VerificationInput {
    pub provider: VerificationProvider,
    pub kind: VerificationKind,
}

#[derive(Debug, Object)]
pub struct VerificationStarted {
    pub id: Uuid,
    /// Always `pending`: the provider session is created in the background.
    pub status: String,
}

#[derive(Debug, Object, sqlx::FromRow)]
pub struct VerificationItem {
    pub id: Uuid,
    /// `stripe_identity` or `persona`.
    pub provider: String,
    /// `identity` or `age`.
    pub kind: String,
    /// `pending`, `requires_input`, `processing`, `verified`, `failed` or `canceled`.
    pub status: String,
    /// Why it failed, when it did (for example, the provider is not configured).
    pub detail: Option<String>,
    /// The provider's hosted flow, once the session exists.
    pub session_url: Option<String>,
    /// For the provider's mobile SDK (Stripe client secret, Persona session token).
    pub client_secret: Option<String>,
    pub verified_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct VerificationList {
    pub items: Vec<VerificationItem>,
}

#[derive(ApiResponse)]
enum Started {
    /// Recorded; the provider session is being created.
    #[oai(status = 202)]
    Accepted(Json<VerificationStarted>),
}

route_error!(
    /// Failures of `POST /v1/me/verifications`.
    StartVerificationError: 400, 401, 404, 413, 415, 422, 429, 503
);
route_error!(
    /// Failures of `GET /v1/me/verifications`.
    ListVerificationsError: 401, 429, 503
);

#[OpenApi(tag = "Tag::Verification")]
impl VerificationApi {
    /// Start a verification
    ///
    /// A job creates the session at the provider; poll `GET /v1/me/verifications` for its
    /// `session_url` / `client_secret`. 404 `profile_not_found` before `PUT /v1/me`. Send an
    /// `Idempotency-Key` so a retried request starts one verification.
    #[oai(
        path = "/v1/me/verifications",
        method = "post",
        operation_id = "start_verification"
    )]
    async fn start_verification(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        /// Replays the first response for a repeated key with the same body.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: Json<VerificationInput>,
    ) -> Result<Started, StartVerificationError> {
        let input = body.0;
        let mut claim = match idempotency::begin(
            &state,
            &request_id,
            auth.0.id,
            idempotency_key.0,
            "start_verification",
            &input,
        )
        .await?
        {
            Begun::Replay(first) => return Ok(Started::Accepted(Json(first))),
            Begun::Fresh(claim) => claim,
        };
        let provider = match input.provider {
            VerificationProvider::StripeIdentity => ProviderKind::StripeIdentity,
            VerificationProvider::Persona => ProviderKind::Persona,
        };
        let kind = match input.kind {
            VerificationKind::Identity => Kind::Identity,
            VerificationKind::Age => Kind::Age,
        };
        let id = match verification::start(claim.tx(), auth.0.id, provider, kind).await {
            Err(e)
                if e.as_database_error()
                    .is_some_and(|d| d.is_foreign_key_violation()) =>
            {
                return Err(
                    ApiError::not_found("profile_not_found", "create it with PUT /v1/me").into(),
                );
            }
            other => other?,
        };
        let started = VerificationStarted {
            id,
            status: "pending".into(),
        };
        claim.commit(StatusCode::ACCEPTED, &started).await?;
        Ok(Started::Accepted(Json(started)))
    }

    /// The caller's verifications, newest first
    #[oai(
        path = "/v1/me/verifications",
        method = "get",
        operation_id = "list_verifications"
    )]
    async fn list_verifications(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
    ) -> Result<Json<VerificationList>, ListVerificationsError> {
        let items: Vec<VerificationItem> = sqlx::query_as(
            "SELECT id, provider, kind, status, detail, session_url, client_secret,
                    verified_at, expires_at, created_at
             FROM verifications WHERE user_id = $1 ORDER BY created_at DESC LIMIT 100",
        )
        .bind(auth.0.id)
        .fetch_all(&state.services.db)
        .await?;
        Ok(Json(VerificationList { items }))
    }
}
