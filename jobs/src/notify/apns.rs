//! APNs over HTTP/2 with token auth. Payloads are built with `a2`; the transport is ours (a2's
//! `Client` only talks to Apple's hosts): one HTTP/2 connection per APNs host
//! ([`super::http2::Host`]), every send a stream on it.

use std::{
    sync::RwLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use a2::{
    DefaultNotificationBuilder, ErrorBody, ErrorReason, NotificationBuilder, NotificationOptions,
    request::payload::PayloadLike,
};
use bytes::Bytes;
use hyper::{
    Method, Request, Uri,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{
    http2::{self, Host},
    push::{PushMessage, PushOutcome, network_error, retry_after},
    settings::ApnsSettings,
};

// Request headers made once: a name given as a string is parsed and, for a name outside the
// standard set like these, copied into a new allocation on every request (building request
// heads was 4-5 % of the worker process's CPU).
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
const ALERT: HeaderValue = HeaderValue::from_static("alert");
const IMMEDIATELY: HeaderValue = HeaderValue::from_static("10");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Apple accepts a provider token for an hour and rejects refreshing it more than once per 20
/// minutes; renewing at 50 minutes stays inside both.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

pub struct ApnsClient {
    production: Host,
    sandbox: Host,
    settings: ApnsSettings,
    key: EncodingKey,
    /// The signed provider token as its `authorization` header value, and when it was signed.
    token: RwLock<Option<(HeaderValue, Instant)>>,
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
        let connector = http2::connector().map_err(|e| format!("APNs: {e}"))?;
        Ok(ApnsClient {
            production: Host::new(&settings.endpoint, connector.clone()),
            sandbox: Host::new(&settings.sandbox_endpoint, connector),
            settings,
            key,
            token: RwLock::new(None),
        })
    }

    /// The `authorization` header with the cached provider token, or with a freshly signed one
    /// when it is older than 50 minutes.
    pub fn authorization(&self) -> Result<HeaderValue, String> {
        if let Some((value, at)) = &*self.token.read().expect("token lock")
            && at.elapsed() < TOKEN_LIFETIME
        {
            return Ok(value.clone());
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
        let value = HeaderValue::try_from(format!("bearer {token}"))
            .map_err(|e| format!("APNs token as a header: {e}"))?;
        *self.token.write().expect("token lock") = Some((value.clone(), Instant::now()));
        Ok(value)
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

    /// The request head of a push to `device_token` at the APNs host `base` (the benchmark's
    /// bare client sends these too).
    pub fn head(
        &self,
        base: &str,
        device_token: &str,
        topic: Option<&str>,
        authorization: HeaderValue,
        message: &PushMessage<'_>,
    ) -> Result<Request<()>, hyper::http::Error> {
        // Filled in place: `Request::builder` moves the whole request through a closure for
        // every header it adds.
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::try_from(format!("{base}/3/device/{device_token}"))?;
        let topic = HeaderValue::try_from(topic.unwrap_or(&self.settings.topic))?;
        let collapse_id = HeaderValue::try_from(message.send_id)?;
        let headers = request.headers_mut();
        headers.reserve(7);
        headers.insert(AUTHORIZATION, authorization);
        headers.insert(APNS_PUSH_TYPE, ALERT);
        headers.insert(APNS_TOPIC, topic);
        headers.insert(APNS_PRIORITY, IMMEDIATELY);
        headers.insert(APNS_EXPIRATION, HeaderValue::from(message.expires_at));
        headers.insert(APNS_COLLAPSE_ID, collapse_id);
        headers.insert(CONTENT_TYPE, JSON);
        Ok(request)
    }

    pub async fn send(
        &self,
        device_token: &str,
        sandbox: bool,
        topic: Option<&str>,
        message: &PushMessage<'_>,
    ) -> PushOutcome {
        let authorization = match self.authorization() {
            Ok(value) => value,
            Err(e) => return PushOutcome::Failed(e),
        };
        let host = if sandbox {
            &self.sandbox
        } else {
            &self.production
        };
        let head = self.head(host.base(), device_token, topic, authorization, message);
        let head = match head {
            Ok(head) => head,
            Err(e) => return PushOutcome::Failed(format!("APNs request: {e}")),
        };
        let body = Bytes::from(Self::payload(message, device_token));
        let answer = match host.send(head, body).await {
            Ok(answer) => answer,
            Err(e) => return network_error("APNs", &e),
        };
        let status = answer.status.as_u16();
        if status == 200 {
            return PushOutcome::Sent;
        }
        let after = retry_after(&answer.headers);
        let reason = serde_json::from_slice::<ErrorBody>(&answer.body)
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
