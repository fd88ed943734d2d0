//! A Stripe-compatible HTTP client: form-encoded POSTs with the secret key as bearer token and
//! an `Idempotency-Key` on every one, so a call repeated after a crash is the same call at the
//! provider. Only the endpoints the escrow family uses; `post_form` serves any other.

use std::time::Duration;

use serde::Deserialize;

use crate::job::JobError;

#[derive(Clone, Debug)]
pub struct StripeClient {
    base: String,
    secret_key: Option<String>,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("the payment provider is not configured (GROUNDCREW_STRIPE_SECRET_KEY unset)")]
    NotConfigured,
    #[error("payment provider unreachable: {0}")]
    Network(#[from] reqwest::Error),
    #[error("payment provider answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("payment provider answered without {0}")]
    Shape(&'static str),
}

impl From<StripeError> for JobError {
    /// Network trouble, 409 (a concurrent request with the same key), 429 and 5xx are worth
    /// another attempt; any other 4xx and a missing key will fail the same way again.
    fn from(e: StripeError) -> Self {
        match &e {
            StripeError::Network(_) => JobError::retry(e),
            StripeError::Status {
                status,
                retry_after,
                ..
            } if *status == 409 || *status == 429 || *status >= 500 => JobError::Retry {
                error: e.to_string(),
                after: *retry_after,
            },
            _ => JobError::fail(e),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub client_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Created {
    pub id: String,
}

impl StripeClient {
    pub fn new(base: impl Into<String>, secret_key: Option<String>) -> Self {
        StripeClient {
            base: base.into().trim_end_matches('/').to_owned(),
            secret_key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        }
    }

    pub fn is_configured(&self) -> bool {
        self.secret_key.is_some()
    }

    /// `POST {base}{path}` with `params` form-encoded (Stripe's `metadata[key]` style included).
    pub async fn post_form<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        idempotency_key: &str,
        params: &[(&str, String)],
    ) -> Result<T, StripeError> {
        let key = self
            .secret_key
            .as_deref()
            .ok_or(StripeError::NotConfigured)?;
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency_key)
            .form(params)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let message = body
                .pointer("/error/message")
                .and_then(|m| m.as_str())
                .unwrap_or("no message")
                .to_owned();
            return Err(StripeError::Status {
                status,
                message,
                retry_after,
            });
        }
        resp.json()
            .await
            .map_err(|_| StripeError::Shape("a JSON object"))
    }

    pub async fn create_payment_intent(
        &self,
        idempotency_key: &str,
        amount_cents: i64,
        currency: &str,
        escrow_id: &str,
    ) -> Result<PaymentIntent, StripeError> {
        self.post_form(
            "/v1/payment_intents",
            idempotency_key,
            &[
                ("amount", amount_cents.to_string()),
                ("currency", currency.to_lowercase()),
                ("metadata[escrow_id]", escrow_id.to_owned()),
                ("transfer_group", escrow_id.to_owned()),
            ],
        )
        .await
    }

    pub async fn create_transfer(
        &self,
        idempotency_key: &str,
        amount_cents: i64,
        currency: &str,
        destination: &str,
        escrow_id: &str,
    ) -> Result<Created, StripeError> {
        self.post_form(
            "/v1/transfers",
            idempotency_key,
            &[
                ("amount", amount_cents.to_string()),
                ("currency", currency.to_lowercase()),
                ("destination", destination.to_owned()),
                ("transfer_group", escrow_id.to_owned()),
            ],
        )
        .await
    }

    pub async fn create_refund(
        &self,
        idempotency_key: &str,
        payment_intent: &str,
    ) -> Result<Created, StripeError> {
        self.post_form(
            "/v1/refunds",
            idempotency_key,
            &[("payment_intent", payment_intent.to_owned())],
        )
        .await
    }
}
