//! FCM over the HTTP v1 API (`POST /v1/projects/{project}/messages:send`) with a service
//! account's OAuth2 access token: a JWT-bearer assertion (RS256, signed with the account's key)
//! is exchanged at the account's `token_uri`, and the token is reused until shortly before it
//! expires. Sends share one HTTP/2 connection ([`super::http2::Host`], as APNs's do); the token
//! exchange, a request an hour, goes through reqwest. Google's certificates are checked against
//! the system's CA store (`SSL_CERT_FILE` / `SSL_CERT_DIR` point elsewhere, e.g. at a proxy's
//! CA).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::RwLock;

use super::{
    http2::{self, Host},
    push::{PushMessage, PushOutcome, network_error, retry_after},
    settings::FcmSettings,
};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// A token is renewed this long before Google says it expires, so no send races its expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

pub struct FcmClient {
    /// The token endpoint's client.
    http: reqwest::Client,
    /// The v1 endpoint's connection. One HTTP/2 connection, not reqwest's pool: over plain
    /// http reqwest spoke HTTP/1.1 and opened a connection per concurrent request (a notify
    /// pool of 64 batches of 100 opened 6,400 at once and stalled on the listener's backlog).
    sends: Host,
    /// `/v1/projects/{project}/messages:send` under the endpoint.
    send_url: String,
    settings: FcmSettings,
    key: EncodingKey,
    /// The access token, and until when to use it.
    token: RwLock<Option<(String, Instant)>>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: ErrorStatus,
}

#[derive(Deserialize)]
struct ErrorStatus {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl ErrorStatus {
    /// FCM's own code (`UNREGISTERED`, `QUOTA_EXCEEDED`…) when given, else the RPC status.
    fn code(&self) -> &str {
        self.details
            .iter()
            .find_map(|d| d.get("errorCode")?.as_str())
            .unwrap_or(&self.status)
    }
}

impl FcmClient {
    pub fn new(settings: FcmSettings) -> Result<Self, String> {
        let key = EncodingKey::from_rsa_pem(settings.account.private_key.as_bytes())
            .map_err(|e| format!("FCM service-account key: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("FCM HTTP client: {e}"))?;
        let sends = Host::new(
            &settings.endpoint,
            http2::connector().map_err(|e| format!("FCM: {e}"))?,
        );
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            sends.base(),
            settings.account.project_id
        );
        Ok(FcmClient {
            http,
            sends,
            send_url,
            settings,
            key,
            token: RwLock::new(None),
        })
    }

    /// The cached OAuth2 access token, or a fresh one when it is about to expire.
    pub async fn access_token(&self) -> Result<String, PushOutcome> {
        if let Some((token, until)) = &*self.token.read().await
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        // Boxed: the exchange's state would otherwise be part of every send's future, which a
        // batch holds a hundred of (apns.rs says what that cost).
        Box::pin(self.renew_token()).await
    }

    async fn renew_token(&self) -> Result<String, PushOutcome> {
        // One exchange at a time: senders that queued behind it reuse its token.
        let mut slot = self.token.write().await;
        if let Some((token, until)) = &*slot
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let account = &self.settings.account;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(account.private_key_id.clone());
        let claims = AssertionClaims {
            iss: &account.client_email,
            scope: SCOPE,
            aud: &account.token_uri,
            iat,
            exp: iat + 3600,
        };
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| PushOutcome::Failed(format!("signing the FCM assertion: {e}")))?;
        // The assertion is base64url and dots: nothing in the form needs escaping but the
        // grant type, written here escaped.
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let response = self
            .http
            .post(&account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| network_error("FCM token endpoint", &with_causes(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let after = retry_after(response.headers());
            let detail = format!("FCM token endpoint answered {status}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                PushOutcome::Retry { detail, after }
            } else {
                PushOutcome::Failed(detail)
            });
        }
        let token: TokenResponse = response.json().await.map_err(|e| PushOutcome::Retry {
            detail: format!("FCM token response: {e}"),
            after: None,
        })?;
        let until =
            Instant::now() + Duration::from_secs(token.expires_in).saturating_sub(EXPIRY_MARGIN);
        *slot = Some((token.access_token.clone(), until));
        Ok(token.access_token)
    }

    /// The v1 message: notification title/body, the data as strings (FCM data values must be
    /// strings), and the send id as Android collapse key and notification tag and as the
    /// apns-collapse-id FCM forwards to iOS devices.
    pub fn message(message: &PushMessage<'_>, device_token: &str) -> Value {
        let mut data: serde_json::Map<String, Value> = match message.data {
            Value::Object(fields) => fields
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), Value::String(text))
                })
                .collect(),
            _ => Default::default(),
        };
        data.insert(
            "notification_id".into(),
            Value::String(message.notification_id.to_string()),
        );
        json!({
            "message": {
                "token": device_token,
                "notification": {"title": message.title, "body": message.body},
                "data": data,
                "android": {
                    "collapse_key": message.send_id,
                    "notification": {"tag": message.send_id},
                },
                "apns": {"headers": {"apns-collapse-id": message.send_id}},
            }
        })
    }

    /// The request head of a send with this access token (the benchmark's bare client sends
    /// these too).
    pub fn head(&self, access_token: &str) -> Result<Request<()>, hyper::http::Error> {
        Request::post(&self.send_url)
            .header("authorization", format!("Bearer {access_token}"))
            .header("content-type", "application/json")
            .body(())
    }

    pub async fn send(&self, device_token: &str, message: &PushMessage<'_>) -> PushOutcome {
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        let head = match self.head(&token) {
            Ok(head) => head,
            Err(e) => return PushOutcome::Failed(format!("FCM request: {e}")),
        };
        let body = Bytes::from(Self::message(message, device_token).to_string());
        let answer = match self.sends.send(head, body).await {
            Ok(answer) => answer,
            Err(e) => return network_error("FCM", &e),
        };
        let status = answer.status.as_u16();
        if answer.status.is_success() {
            return PushOutcome::Sent;
        }
        let after = retry_after(&answer.headers);
        let error = serde_json::from_slice::<ErrorResponse>(&answer.body)
            .ok()
            .map(|e| e.error);
        let code = error.as_ref().map(ErrorStatus::code).unwrap_or("");
        let detail = match &error {
            Some(e) => format!("FCM {status} {code}: {}", e.message),
            None => format!("FCM answered {status}"),
        };
        match (status, code) {
            (_, "UNREGISTERED" | "INVALID_ARGUMENT" | "SENDER_ID_MISMATCH") | (404, _) => {
                PushOutcome::InvalidToken(detail)
            }
            (401, _) | (_, "UNAUTHENTICATED") => {
                *self.token.write().await = None;
                PushOutcome::Retry {
                    detail,
                    after: None,
                }
            }
            (_, "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL") | (429 | 500..=599, _) => {
                PushOutcome::Retry { detail, after }
            }
            _ => PushOutcome::Failed(detail),
        }
    }
}

/// reqwest's own message is only "error sending request for url (…)"; why (a refused
/// connection, an untrusted certificate) is in its sources, and the delivery's detail is where an
/// operator looks for it.
fn with_causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
