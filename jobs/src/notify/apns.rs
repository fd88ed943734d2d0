//! APNs over HTTP/2 with token auth. Payloads are built with `a2`; the transport is ours (a2's
//! `Client` only talks to Apple's hosts): hyper's pooled client speaking HTTP/2 only (rustls,
//! ALPN h2; h2c to a plain `http://` endpoint), so every send is a stream on a kept-alive
//! connection per endpoint. hyper directly rather than reqwest: reqwest's request and response
//! layers cost a third of a bare HTTP/2 client's rate here (`bench_notify`: 24k against 38.6k
//! push/s), and APNs needs none of them (no redirects, cookies, decompression).

use std::{
    sync::RwLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use a2::{
    DefaultNotificationBuilder, ErrorBody, ErrorReason, NotificationBuilder, NotificationOptions,
    request::payload::PayloadLike,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{
    push::{PushMessage, PushOutcome, network_error, retry_after},
    settings::ApnsSettings,
};

/// Apple accepts a provider token for an hour and rejects refreshing it more than once per 20
/// minutes; renewing at 50 minutes stays inside both.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
/// A send with no answer after this long is retried (with the same collapse id).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ApnsClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    settings: ApnsSettings,
    key: EncodingKey,
    token: RwLock<Option<(String, Instant)>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl ApnsClient {
    pub fn new(settings: ApnsSettings) -> Result<Self, String> {
        let key = EncodingKey::from_ec_pem(settings.key_pem.as_bytes())
            .map_err(|e| format!("APNs key: {e}"))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http2()
            .build();
        let http = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_while_idle(true)
            .build(connector);
        Ok(ApnsClient {
            http,
            settings,
            key,
            token: RwLock::new(None),
        })
    }

    /// The cached provider token, or a freshly signed one when it is older than 50 minutes.
    pub fn provider_token(&self) -> Result<String, String> {
        if let Some((token, at)) = &*self.token.read().expect("token lock")
            && at.elapsed() < TOKEN_LIFETIME
        {
            return Ok(token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.settings.key_id.clone());
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: &self.settings.team_id,
            iat,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the APNs token: {e}"))?;
        *self.token.write().expect("token lock") = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    fn forget_token(&self) {
        *self.token.write().expect("token lock") = None;
    }

    /// The JSON body of an alert push: `aps.alert {title, body}`, plus the notification's id and
    /// data as custom keys.
    pub fn payload(message: &PushMessage<'_>, device_token: &str) -> String {
        let mut payload = DefaultNotificationBuilder::new()
            .set_title(message.title)
            .set_body(message.body)
            .set_sound("default")
            .build(device_token, NotificationOptions::default());
        let id = message.notification_id.to_string();
        payload
            .add_custom_data("notification_id", &id)
            .and_then(|p| p.add_custom_data("data", message.data))
            .expect("JSON values serialize");
        payload.to_json_string().expect("payload serializes")
    }

    pub async fn send(
        &self,
        device_token: &str,
        sandbox: bool,
        topic: Option<&str>,
        message: &PushMessage<'_>,
    ) -> PushOutcome {
        let bearer = match self.provider_token() {
            Ok(token) => token,
            Err(e) => return PushOutcome::Failed(e),
        };
        let base = if sandbox {
            &self.settings.sandbox_endpoint
        } else {
            &self.settings.endpoint
        };
        let url = format!("{}/3/device/{device_token}", base.trim_end_matches('/'));
        let request = hyper::Request::post(url)
            .header("authorization", format!("bearer {bearer}"))
            .header("apns-push-type", "alert")
            .header("apns-topic", topic.unwrap_or(&self.settings.topic))
            .header("apns-priority", "10")
            .header("apns-expiration", message.expires_at.to_string())
            .header("apns-collapse-id", message.send_id)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(Self::payload(message, device_token))));
        let request = match request {
            Ok(request) => request,
            Err(e) => return PushOutcome::Failed(format!("APNs request: {e}")),
        };
        let exchange = async {
            let response = self.http.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = match parts.status.as_u16() {
                200 => Bytes::new(),
                _ => body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default(),
            };
            Ok::<_, hyper_util::client::legacy::Error>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return network_error("APNs", &e),
            Err(_) => {
                let waited = format!("no answer within {} s", REQUEST_TIMEOUT.as_secs());
                return network_error("APNs", &waited);
            }
        };
        let status = parts.status.as_u16();
        if status == 200 {
            return PushOutcome::Sent;
        }
        let after = retry_after(&parts.headers);
        let reason = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.reason)
            .map_err(|_| format!("APNs answered {status}"));
        self.classify(status, reason, after)
    }

    fn classify(
        &self,
        status: u16,
        reason: Result<ErrorReason, String>,
        after: Option<Duration>,
    ) -> PushOutcome {
        let detail = match &reason {
            Ok(reason) => format!("APNs {status} {reason:?}"),
            Err(detail) => detail.clone(),
        };
        match (status, &reason) {
            (410, _)
            | (400, Ok(ErrorReason::BadDeviceToken | ErrorReason::DeviceTokenNotForTopic)) => {
                PushOutcome::InvalidToken(detail)
            }
            (403, Ok(ErrorReason::ExpiredProviderToken | ErrorReason::InvalidProviderToken)) => {
                self.forget_token();
                PushOutcome::Retry {
                    detail,
                    after: None,
                }
            }
            (429 | 500..=599, _) => PushOutcome::Retry { detail, after },
            _ => PushOutcome::Failed(detail),
        }
    }
}
