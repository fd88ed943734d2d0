//! Creating a verification: the row (in the request's transaction) and the job that opens the
//! session at the provider. The provider call carries the verification id as its idempotency
//! key, so a repeat after a crash gets the same session back.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::{Kind, ProviderKind, settings::VerificationSettings, status::advance};
use crate::{
    job::{Job, JobContext, JobError, Policy},
    outbox::JobTx,
    queue::Queue,
};

/// Records a pending verification and enqueues the creation of its provider session.
pub async fn start(
    tx: &mut JobTx,
    user_id: Uuid,
    provider: ProviderKind,
    kind: Kind,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO verifications (id, user_id, provider, kind) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(user_id)
        .bind(provider.as_str())
        .bind(kind.as_str())
        .execute(tx.conn())
        .await?;
    tx.enqueue(&CreateSession {
        verification_id: id,
    })
    .await?;
    Ok(id)
}

/// Opens the provider session of one verification.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateSession {
    pub verification_id: Uuid,
}

impl Job for CreateSession {
    const KIND: &'static str = "verification.create_session";
    const QUEUE: Queue = Queue::Verification;
    const POLICY: Policy = Policy {
        max_attempts: 8,
        timeout: Duration::from_secs(60),
        ..Policy::DEFAULT
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let row = sqlx::query(
            "SELECT user_id, provider, kind, provider_session_id IS NOT NULL AS opened, status
             FROM verifications WHERE id = $1",
        )
        .bind(self.verification_id)
        .fetch_optional(&ctx.services.db)
        .await?
        .ok_or_else(|| JobError::fail("verification not found"))?;
        if row.get::<bool, _>("opened") || row.get::<String, _>("status") != "pending" {
            return Ok(());
        }
        let provider: String = row.get("provider");
        let kind: String = row.get("kind");
        let settings = &ctx.services.verification;
        let opened = match provider.as_str() {
            "stripe_identity" => {
                open_stripe(settings, self.verification_id, row.get("user_id"), &kind).await
            }
            _ => open_persona(settings, self.verification_id).await,
        };
        let last_attempt = ctx.attempt >= ctx.max_attempts;
        match opened {
            Ok(session) => self.store(&ctx, session).await,
            Err(OpenError::Transient(e, after)) if !last_attempt => {
                Err(JobError::Retry { error: e, after })
            }
            Err(OpenError::Transient(detail, _) | OpenError::Refused(detail)) => {
                // The user sees why in GET /v1/me/verifications instead of a session that
                // never opens.
                tracing::warn!(verification_id = %self.verification_id, %detail, "provider session not created");
                self.fail(&ctx, &detail).await
            }
        }
    }
}

impl CreateSession {
    async fn store(&self, ctx: &JobContext, session: Session) -> Result<(), JobError> {
        let mut tx = JobTx::begin(&ctx.services).await?;
        sqlx::query(
            "UPDATE verifications SET provider_session_id = $2, session_url = $3,
                    client_secret = $4, updated_at = now()
             WHERE id = $1",
        )
        .bind(self.verification_id)
        .bind(&session.id)
        .bind(&session.url)
        .bind(&session.client_secret)
        .execute(tx.conn())
        .await?;
        advance(&mut tx, self.verification_id, "requires_input", None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fail(&self, ctx: &JobContext, detail: &str) -> Result<(), JobError> {
        sqlx::query(
            "UPDATE verifications SET status = 'failed', detail = $2, updated_at = now()
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(self.verification_id)
        .bind(detail)
        .execute(&ctx.services.db)
        .await?;
        Ok(())
    }
}

/// What the app needs to open the provider's flow.
#[derive(Debug)]
struct Session {
    id: String,
    url: Option<String>,
    client_secret: Option<String>,
}

enum OpenError {
    /// Worth another attempt (network, 5xx, 429), no sooner than the provider asked.
    Transient(String, Option<Duration>),
    /// The provider or our configuration refuses; retrying changes nothing.
    Refused(String),
}

async fn open_stripe(
    settings: &VerificationSettings,
    id: Uuid,
    user_id: Uuid,
    kind: &str,
) -> Result<Session, OpenError> {
    let key = settings.stripe_secret_key.as_deref().ok_or_else(|| {
        OpenError::Refused(
            "Stripe Identity is not configured (GROUNDCREW_STRIPE_SECRET_KEY)".into(),
        )
    })?;
    let id_text = id.to_string();
    let user_text = user_id.to_string();
    let form = [
        ("type", "document"),
        ("metadata[verification_id]", id_text.as_str()),
        ("metadata[user_id]", user_text.as_str()),
        ("metadata[kind]", kind),
    ];
    let response = settings
        .http
        .post(format!(
            "{}/v1/identity/verification_sessions",
            settings.stripe_api_base.trim_end_matches('/')
        ))
        .bearer_auth(key)
        .header("Idempotency-Key", format!("verification-{id}"))
        .form(&form)
        .send()
        .await;
    let json = read(response, "Stripe").await?;
    let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Session {
        id: text("id").ok_or_else(|| OpenError::Refused("Stripe answered without an id".into()))?,
        url: text("url"),
        client_secret: text("client_secret"),
    })
}

async fn open_persona(settings: &VerificationSettings, id: Uuid) -> Result<Session, OpenError> {
    let key = settings.persona_api_key.as_deref().ok_or_else(|| {
        OpenError::Refused("Persona is not configured (GROUNDCREW_PERSONA_API_KEY)".into())
    })?;
    let mut attributes = serde_json::json!({ "reference-id": id.to_string() });
    if let Some(template) = &settings.persona_template_id {
        attributes["inquiry-template-id"] = template.clone().into();
    }
    let response = settings
        .http
        .post(format!(
            "{}/inquiries",
            settings.persona_api_base.trim_end_matches('/')
        ))
        .bearer_auth(key)
        .header("Idempotency-Key", format!("verification-{id}"))
        .header("Persona-Version", "2023-01-05")
        .json(&serde_json::json!({ "data": { "attributes": attributes } }))
        .send()
        .await;
    let json = read(response, "Persona").await?;
    let inquiry = json
        .pointer("/data/id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| OpenError::Refused("Persona answered without an inquiry id".into()))?;
    Ok(Session {
        id: inquiry.to_owned(),
        url: Some(format!(
            "https://withpersona.com/verify?inquiry-id={inquiry}"
        )),
        client_secret: json
            .pointer("/meta/session-token")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    })
}

/// Classifies a provider answer: 2xx → its JSON; 429/5xx/network → transient; other 4xx →
/// refused, with the provider's message (never our key) as the detail.
async fn read(
    response: Result<reqwest::Response, reqwest::Error>,
    provider: &str,
) -> Result<serde_json::Value, OpenError> {
    let response =
        response.map_err(|e| OpenError::Transient(format!("{provider} unreachable: {e}"), None))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        return serde_json::from_str(&body)
            .map_err(|_| OpenError::Transient(format!("{provider} answered non-JSON"), None));
    }
    let message: String = body.chars().take(300).collect();
    let detail = format!("{provider} answered {}: {message}", status.as_u16());
    if status.as_u16() == 429 || status.is_server_error() {
        Err(OpenError::Transient(detail, retry_after))
    } else {
        Err(OpenError::Refused(detail))
    }
}
