//! APNs over HTTP/2 with token auth. Payloads are built with `a2`; the transport is ours (a2's
//! `Client` only talks to Apple's hosts): one HTTP/2 connection per APNs host (rustls with
//! ALPN h2; h2c to a plain `http://` endpoint), every send a stream on it, opened again when it
//! closes. hyper's connection handle directly, not a client with a pool: reqwest's request and
//! response layers cost a third of a bare HTTP/2 client's rate here, and hyper-util's pooled
//! client a checkout per request on top (`bench_notify`, bench/results/notify.md); APNs needs
//! none of what they add (redirects, cookies, decompression, many hosts). Apple's certificate is
//! checked against the system's CA store (ca-certificates in the image; `SSL_CERT_FILE` or
//! `SSL_CERT_DIR` point elsewhere), which is also how a test has it trust a local CA.

use std::{
    sync::{Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use a2::{
    DefaultNotificationBuilder, ErrorBody, ErrorReason, NotificationBuilder, NotificationOptions,
    request::payload::PayloadLike,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{client::conn::http2::SendRequest, header::HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::connect::HttpConnector,
    rt::{TokioExecutor, TokioTimer},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use tower_service::Service;

use super::{
    push::{PushMessage, PushOutcome, network_error, retry_after},
    settings::ApnsSettings,
};

/// Apple accepts a provider token for an hour and rejects refreshing it more than once per 20
/// minutes; renewing at 50 minutes stays inside both.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
/// A send with no answer after this long is retried (with the same collapse id).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Apple closes connections idle for long; a ping keeps ours open and finds dead ones.
const KEEP_ALIVE: Duration = Duration::from_secs(60);

pub struct ApnsClient {
    production: Connection,
    sandbox: Connection,
    settings: ApnsSettings,
    key: EncodingKey,
    /// The signed provider token as its `authorization` header value, and when it was signed.
    token: RwLock<Option<(HeaderValue, Instant)>>,
}

/// One HTTP/2 connection to one APNs host, shared by every send.
struct Connection {
    base: String,
    connector: HttpsConnector<HttpConnector>,
    /// The open connection's handle; `None` before the first send and after it closed.
    open: Mutex<Option<SendRequest<Full<Bytes>>>>,
    /// Held while connecting, so a burst of sends opens one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl Connection {
    /// The connector both hosts share: rustls over TCP without Nagle, h2 by ALPN, checking
    /// certificates against the system's store (read once, here).
    fn connector() -> Result<HttpsConnector<HttpConnector>, String> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        // Many small frames in flight: Nagle would hold each behind the previous one's ACK.
        tcp.set_nodelay(true);
        // Sends wait behind a connect in progress; an unreachable host fails them all at once.
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Ok(hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("APNs: the system's CA certificates: {e}"))?
            .https_or_http()
            .enable_http2()
            .wrap_connector(tcp))
    }

    fn new(base: &str, connector: HttpsConnector<HttpConnector>) -> Self {
        Connection {
            base: base.trim_end_matches('/').to_owned(),
            connector,
            open: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<SendRequest<Full<Bytes>>> {
        let open = self.open.lock().expect("connection lock");
        open.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// A handle on the open connection, connecting first when there is none.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        match self.current() {
            Some(sender) => Ok(sender),
            // Boxed: the TLS and HTTP/2 handshakes' state is kilobytes, and unboxed it would be
            // part of every send's future, which a batch holds a hundred of (moving and zeroing
            // them was a tenth of the worker process's CPU; bench/results/notify.md, run 8).
            None => Box::pin(self.connect()).await,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        let uri: hyper::Uri = self
            .base
            .parse()
            .map_err(|e| format!("APNs endpoint {}: {e}", self.base))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.base))?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .map_err(|e| format!("HTTP/2 handshake with {}: {e}", self.base))?;
        let base = self.base.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(endpoint = %base, error = %e, "APNs connection closed");
            }
        });
        *self.open.lock().expect("connection lock") = Some(sender.clone());
        Ok(sender)
    }
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
        let connector = Connection::connector()?;
        Ok(ApnsClient {
            production: Connection::new(&settings.endpoint, connector.clone()),
            sandbox: Connection::new(&settings.sandbox_endpoint, connector),
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
        let connection = if sandbox {
            &self.sandbox
        } else {
            &self.production
        };
        let url = format!("{}/3/device/{device_token}", connection.base);
        let request = hyper::Request::post(url)
            .header("authorization", authorization)
            .header("apns-push-type", "alert")
            .header("apns-topic", topic.unwrap_or(&self.settings.topic))
            .header("apns-priority", "10")
            .header("apns-expiration", message.expires_at)
            .header("apns-collapse-id", message.send_id)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(Self::payload(message, device_token))));
        let request = match request {
            Ok(request) => request,
            Err(e) => return PushOutcome::Failed(format!("APNs request: {e}")),
        };
        let exchange = async {
            let mut sender = connection.sender().await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = match parts.status.as_u16() {
                200 => Bytes::new(),
                _ => body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default(),
            };
            Ok::<_, String>((parts, body))
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
