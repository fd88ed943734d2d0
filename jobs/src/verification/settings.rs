//! Provider settings for identity verification and the webhook receivers, read once at start.
//! Every provider is optional: without an API key its sessions fail with a clear detail, and
//! without a webhook secret its receiver answers 400. Secrets never reach `Debug` or logs.

use std::{fmt, time::Duration};

use crate::settings::{ConfigError, env_string};

pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";
pub const DEFAULT_PERSONA_API_BASE: &str = "https://withpersona.com/api/v1";

#[derive(Clone)]
pub struct VerificationSettings {
    pub stripe_api_base: String,
    pub stripe_secret_key: Option<String>,
    pub stripe_webhook_secret: Option<String>,
    pub persona_api_base: String,
    pub persona_api_key: Option<String>,
    /// The Persona inquiry template new inquiries use (`itmpl_…`).
    pub persona_template_id: Option<String>,
    pub persona_webhook_secret: Option<String>,
    /// Standard Webhooks secret (`whsec_…`) of the sports-data provider.
    pub sports_webhook_secret: Option<String>,
    /// One connection pool for every provider call.
    pub http: reqwest::Client,
}

impl VerificationSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let secret = |variable: &str| {
            std::env::var(variable)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Ok(VerificationSettings {
            stripe_api_base: env_string("GROUNDCREW_STRIPE_API_BASE", DEFAULT_STRIPE_API_BASE),
            stripe_secret_key: secret("GROUNDCREW_STRIPE_SECRET_KEY"),
            stripe_webhook_secret: secret("GROUNDCREW_STRIPE_WEBHOOK_SECRET"),
            persona_api_base: env_string("GROUNDCREW_PERSONA_API_BASE", DEFAULT_PERSONA_API_BASE),
            persona_api_key: secret("GROUNDCREW_PERSONA_API_KEY"),
            persona_template_id: secret("GROUNDCREW_PERSONA_TEMPLATE_ID"),
            persona_webhook_secret: secret("GROUNDCREW_PERSONA_WEBHOOK_SECRET"),
            sports_webhook_secret: secret("GROUNDCREW_SPORTS_WEBHOOK_SECRET"),
            http: http_client(),
        })
    }

    /// No provider configured: what tests start from.
    pub fn unconfigured() -> Self {
        VerificationSettings {
            stripe_api_base: DEFAULT_STRIPE_API_BASE.into(),
            stripe_secret_key: None,
            stripe_webhook_secret: None,
            persona_api_base: DEFAULT_PERSONA_API_BASE.into(),
            persona_api_key: None,
            persona_template_id: None,
            persona_webhook_secret: None,
            sports_webhook_secret: None,
            http: http_client(),
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a TLS backend is compiled in")
}

impl fmt::Debug for VerificationSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationSettings")
            .field("stripe_api_base", &self.stripe_api_base)
            .field("stripe_configured", &self.stripe_secret_key.is_some())
            .field("persona_api_base", &self.persona_api_base)
            .field("persona_configured", &self.persona_api_key.is_some())
            .finish_non_exhaustive()
    }
}
