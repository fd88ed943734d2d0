//! Provider configuration, read once at start. Every provider is optional: without its
//! credentials its deliveries are `skipped` ("provider not configured"), and email falls back to
//! files under `GROUNDCREW_DATA_DIR/mail`. Secrets are held here and never printed: the `Debug`
//! impls leave them out.

use std::{fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::unsubscribe::OneClick;
use crate::settings::{ConfigError, JWT_SECRET_VARIABLE, env_duration, env_parse, env_string};

#[derive(Clone, Debug)]
pub struct NotifySettings {
    pub apns: Option<ApnsSettings>,
    pub fcm: Option<FcmSettings>,
    /// lettre URL form (`smtp://host:port`, `smtps://user:pass@host`); `None`: file transport.
    pub smtp_url: Option<String>,
    pub smtp_pool: SmtpPool,
    pub mail_from: String,
    /// Where the file transport writes (`<data dir>/mail`).
    pub data_dir: PathBuf,
    /// One-click unsubscribe links (`GROUNDCREW_PUBLIC_URL`); `None`: a `mailto:` to the sender.
    pub one_click: Option<OneClick>,
}

/// SMTP conversations one process holds at once (and the connections its pool keeps), and how
/// long an email waits for one before its delivery continues in a later job.
#[derive(Clone, Copy, Debug)]
pub struct SmtpPool {
    pub connections: usize,
    pub wait: Duration,
}

impl Default for SmtpPool {
    fn default() -> Self {
        SmtpPool {
            connections: 10,
            // A third of the delivery job's timeout: a batch queued behind others still records
            // what it sent rather than being cut off and sending it all again.
            wait: Duration::from_secs(20),
        }
    }
}

#[derive(Clone)]
pub struct ApnsSettings {
    pub endpoint: String,
    /// Devices registered with `environment: sandbox` go here.
    pub sandbox_endpoint: String,
    /// The .p8 key (PKCS#8 PEM, P-256).
    pub key_pem: String,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id, used when a device has no `app_id` of its own.
    pub topic: String,
}

impl fmt::Debug for ApnsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsSettings")
            .field("endpoint", &self.endpoint)
            .field("sandbox_endpoint", &self.sandbox_endpoint)
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct FcmSettings {
    pub endpoint: String,
    pub account: ServiceAccount,
}

/// The fields of a Google service-account JSON key file that the OAuth flow needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub private_key_id: String,
    pub private_key: String,
    pub client_email: String,
    pub token_uri: String,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_APNS_ENDPOINT: &str = "https://api.push.apple.com";
pub const DEFAULT_APNS_SANDBOX_ENDPOINT: &str = "https://api.sandbox.push.apple.com";
pub const DEFAULT_FCM_ENDPOINT: &str = "https://fcm.googleapis.com";
pub const DEFAULT_MAIL_FROM: &str = "groundcrew <noreply@localhost>";

fn config_error(variable: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable: variable.into(),
        message: message.into(),
    }
}

fn optional(variable: &str) -> Option<String> {
    std::env::var(variable)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn read_file(variable: &str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| config_error(variable, format!("{path}: {e}")))
}

impl NotifySettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(NotifySettings {
            apns: Self::apns_from_env()?,
            fcm: Self::fcm_from_env()?,
            smtp_url: optional("GROUNDCREW_SMTP_URL"),
            smtp_pool: Self::smtp_pool_from_env()?,
            mail_from: env_string("GROUNDCREW_MAIL_FROM", DEFAULT_MAIL_FROM),
            data_dir: PathBuf::from(env_string("GROUNDCREW_DATA_DIR", "./data")),
            one_click: Self::one_click_from_env()?,
        })
    }

    fn smtp_pool_from_env() -> Result<SmtpPool, ConfigError> {
        let variable = "GROUNDCREW_SMTP_CONNECTIONS";
        let connections = env_parse(variable, SmtpPool::default().connections)?;
        if connections == 0 {
            return Err(config_error(variable, "at least 1"));
        }
        Ok(SmtpPool {
            connections,
            wait: env_duration("GROUNDCREW_SMTP_WAIT", SmtpPool::default().wait)?,
        })
    }

    /// The API's public URL for unsubscribe links, signed with the API's token secret.
    fn one_click_from_env() -> Result<Option<OneClick>, ConfigError> {
        let variable = "GROUNDCREW_PUBLIC_URL";
        let Some(public_url) = optional(variable) else {
            return Ok(None);
        };
        if !(public_url.starts_with("https://") || public_url.starts_with("http://")) {
            return Err(config_error(
                variable,
                "an http(s) URL, e.g. https://api.example.com",
            ));
        }
        let Some(secret) = optional(JWT_SECRET_VARIABLE) else {
            return Err(config_error(
                JWT_SECRET_VARIABLE,
                "unsubscribe links (GROUNDCREW_PUBLIC_URL is set) are signed with it",
            ));
        };
        Ok(Some(OneClick { public_url, secret }))
    }

    /// All four token-auth variables, or none of them.
    fn apns_from_env() -> Result<Option<ApnsSettings>, ConfigError> {
        let names = [
            "GROUNDCREW_APNS_KEY_FILE",
            "GROUNDCREW_APNS_KEY_ID",
            "GROUNDCREW_APNS_TEAM_ID",
            "GROUNDCREW_APNS_TOPIC",
        ];
        let values: Vec<Option<String>> = names.iter().map(|n| optional(n)).collect();
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        if let Some(missing) = names.iter().zip(&values).find(|(_, v)| v.is_none()) {
            return Err(config_error(
                missing.0,
                "APNs token auth needs the key file, key id, team id and topic",
            ));
        }
        let [key_file, key_id, team_id, topic] =
            <[String; 4]>::try_from(values.into_iter().flatten().collect::<Vec<_>>())
                .expect("four values checked above");
        let key_pem = read_file("GROUNDCREW_APNS_KEY_FILE", &key_file)?;
        jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(|e| {
            config_error(
                "GROUNDCREW_APNS_KEY_FILE",
                format!("not a P-256 .p8 key: {e}"),
            )
        })?;
        Ok(Some(ApnsSettings {
            endpoint: env_string("GROUNDCREW_APNS_ENDPOINT", DEFAULT_APNS_ENDPOINT),
            sandbox_endpoint: env_string(
                "GROUNDCREW_APNS_SANDBOX_ENDPOINT",
                DEFAULT_APNS_SANDBOX_ENDPOINT,
            ),
            key_pem,
            key_id,
            team_id,
            topic,
        }))
    }

    fn fcm_from_env() -> Result<Option<FcmSettings>, ConfigError> {
        let variable = "GROUNDCREW_FCM_CREDENTIALS_FILE";
        let Some(path) = optional(variable) else {
            return Ok(None);
        };
        let account: ServiceAccount = serde_json::from_str(&read_file(variable, &path)?)
            .map_err(|e| config_error(variable, format!("not a service-account JSON: {e}")))?;
        jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| config_error(variable, format!("private_key is not an RSA key: {e}")))?;
        Ok(Some(FcmSettings {
            endpoint: env_string("GROUNDCREW_FCM_ENDPOINT", DEFAULT_FCM_ENDPOINT),
            account,
        }))
    }
}
