//! A local APNs endpoint speaking HTTP/2 (h2c, or over TLS with `start_tls`): it checks the
//! provider token (ES256 with a key generated per server, `kid`, `iss`, a recent `iat`) and the
//! headers Apple requires, records every request, and answers what the test scripted per device
//! token (200 otherwise).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::Deserialize;

use crate::http_server::{Received, STREAM_LIMIT, reply, serve_with};

pub const KEY_ID: &str = "TESTKEY123";
pub const TEAM_ID: &str = "TEAM123456";
pub const TOPIC: &str = "app.groundcrew.test";

/// What the server answers one request for a token.
#[derive(Clone, Debug)]
pub enum ApnsReply {
    Ok,
    /// A status with an APNs `reason` and, for 429/503, an optional `Retry-After` in seconds.
    Error {
        status: u16,
        reason: &'static str,
        retry_after: Option<u64>,
    },
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct ApnsRequest {
    pub device_token: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// `None` when the provider token checked out, else why not.
    pub auth_error: Option<String>,
    pub status: u16,
    pub at: std::time::Instant,
}

impl ApnsRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("APNs body is JSON")
    }
}

#[derive(Default)]
struct State {
    requests: Vec<ApnsRequest>,
    scripts: HashMap<String, VecDeque<ApnsReply>>,
    delay: Duration,
    /// Tokens whose signature checked out, with their `iat`. A provider reuses one token for
    /// up to an hour; verifying its ES256 signature on every request made this fake, not the
    /// client, the cost of the push benchmarks. The `iat` window is still checked each time.
    verified_tokens: HashMap<String, u64>,
}

pub struct FakeApns {
    pub url: String,
    /// The .p8 key (PKCS#8 PEM) the client signs with.
    pub key_pem: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: u64,
}

fn check_token(
    authorization: Option<&str>,
    public: &DecodingKey,
    state: &Mutex<State>,
) -> Result<(), String> {
    let token = authorization
        .and_then(|a| a.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or("no bearer token")?;
    let known = state.lock().unwrap().verified_tokens.get(token).copied();
    let iat = match known {
        Some(iat) => iat,
        None => {
            let iat = check_signature(token, public)?;
            let mut state = state.lock().unwrap();
            state.verified_tokens.insert(token.to_owned(), iat);
            iat
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if iat > now + 60 || iat + 3600 < now {
        return Err(format!("iat {iat} is not within the last hour"));
    }
    Ok(())
}

/// The token's `kid`, ES256 signature and `iss`; returns its `iat`.
fn check_signature(token: &str, public: &DecodingKey) -> Result<u64, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    if header.kid.as_deref() != Some(KEY_ID) {
        return Err(format!("kid {:?}", header.kid));
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims = ["iss".to_owned()].into();
    let claims = jsonwebtoken::decode::<Claims>(token, public, &validation)
        .map_err(|e| e.to_string())?
        .claims;
    if claims.iss != TEAM_ID {
        return Err(format!("iss {}", claims.iss));
    }
    Ok(claims.iat)
}

/// Apple's own checks on the headers, as 400 reasons.
fn check_headers(headers: &HashMap<String, String>) -> Option<&'static str> {
    match headers.get("apns-push-type").map(String::as_str) {
        Some(
            "alert" | "background" | "voip" | "location" | "complication" | "fileprovider" | "mdm"
            | "liveactivity" | "pushtotalk",
        ) => {}
        _ => return Some("InvalidPushType"),
    }
    if headers.get("apns-topic").is_none_or(|t| t.is_empty()) {
        return Some("MissingTopic");
    }
    if !matches!(
        headers.get("apns-priority").map(String::as_str),
        None | Some("5" | "10" | "1")
    ) {
        return Some("BadPriority");
    }
    if headers
        .get("apns-collapse-id")
        .is_some_and(|c| c.len() > 64)
    {
        return Some("BadCollapseId");
    }
    if headers
        .get("apns-expiration")
        .is_some_and(|e| e.parse::<u64>().is_err())
    {
        return Some("BadExpirationDate");
    }
    None
}

impl FakeApns {
    pub async fn start() -> Self {
        Self::start_with(None, STREAM_LIMIT).await
    }

    /// The same endpoint over TLS with a certificate from `ca` (HTTP/2 by ALPN), at `https://`.
    pub async fn start_tls(ca: &crate::tls::TestCa) -> Self {
        Self::start_with(Some(ca.server_config()), STREAM_LIMIT).await
    }

    /// The endpoint allowing a connection only `limit` streams at once: a stream opened
    /// beyond it is refused (REFUSED_STREAM).
    pub async fn start_with_stream_limit(limit: u32) -> Self {
        Self::start_with(None, limit).await
    }

    async fn start_with(tls: Option<std::sync::Arc<rustls::ServerConfig>>, limit: u32) -> Self {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let key_pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 PEM")
            .to_string();
        let public_pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("SPKI PEM");
        let public = DecodingKey::from_ec_pem(public_pem.as_bytes()).expect("public key");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let handler = move |request: Received| {
            let state = shared.clone();
            let public = public.clone();
            async move { Self::handle(request, &state, &public).await }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (addr, task) = serve_with(handler, tls, limit).await;
        FakeApns {
            url: format!("{scheme}://{addr}"),
            key_pem,
            state,
            task,
        }
    }

    async fn handle(
        request: Received,
        state: &Mutex<State>,
        public: &DecodingKey,
    ) -> crate::http_server::Reply {
        let headers: HashMap<String, String> = request
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let device_token = request
            .path
            .strip_prefix("/3/device/")
            .unwrap_or_default()
            .to_owned();
        let auth_error = check_token(
            headers.get("authorization").map(String::as_str),
            public,
            state,
        )
        .err();
        let (scripted, delay) = {
            let mut state = state.lock().unwrap();
            let scripted = state
                .scripts
                .get_mut(&device_token)
                .and_then(VecDeque::pop_front);
            (scripted, state.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (status, reason, retry_after) =
            if request.method != hyper::Method::POST || device_token.is_empty() {
                (405, Some("MethodNotAllowed"), None)
            } else if auth_error.is_some() {
                (403, Some("InvalidProviderToken"), None)
            } else if let Some(reason) = check_headers(&headers) {
                (400, Some(reason), None)
            } else if serde_json::from_slice::<serde_json::Value>(&request.body).is_err() {
                (400, Some("PayloadEmpty"), None)
            } else {
                match scripted.unwrap_or(ApnsReply::Ok) {
                    ApnsReply::Ok => (200, None, None),
                    ApnsReply::Error {
                        status,
                        reason,
                        retry_after,
                    } => (status, Some(reason), retry_after),
                }
            };
        state.lock().unwrap().requests.push(ApnsRequest {
            device_token,
            headers: headers.clone(),
            body: request.body.to_vec(),
            auth_error,
            status,
            at: std::time::Instant::now(),
        });
        let body = match reason {
            Some(reason) if status == 410 => format!(
                r#"{{"reason":"{reason}","timestamp":{}}}"#,
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
            ),
            Some(reason) => format!(r#"{{"reason":"{reason}"}}"#),
            None => String::new(),
        };
        let mut response = reply(status, body);
        if let Some(id) = headers.get("apns-id") {
            response
                .headers_mut()
                .insert("apns-id", id.parse().expect("header value"));
        }
        if let Some(seconds) = retry_after {
            response.headers_mut().insert("retry-after", seconds.into());
        }
        response
    }

    /// The replies for the next requests to `device_token`, in order; 200 after them.
    pub fn script(&self, device_token: &str, replies: Vec<ApnsReply>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(device_token.to_owned(), replies.into());
    }

    /// Holds every answer this long (keeps sends in flight for crash tests).
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn requests(&self) -> Vec<ApnsRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// Forgets the requests so far. Benchmarks start each phase from an empty log: a log grown
    /// by the phases before made the later ones pay for its growth (page faults, copies).
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests = Vec::new();
    }

    /// Settings that point the platform's APNs client here.
    pub fn settings(&self) -> groundcrew_jobs::notify::settings::ApnsSettings {
        groundcrew_jobs::notify::settings::ApnsSettings {
            endpoint: self.url.clone(),
            sandbox_endpoint: self.url.clone(),
            key_pem: self.key_pem.clone(),
            key_id: KEY_ID.into(),
            team_id: TEAM_ID.into(),
            topic: TOPIC.into(),
        }
    }

    /// Writes the key where a child process can read it (`GROUNDCREW_APNS_KEY_FILE`).
    pub fn write_key(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("AuthKey.p8");
        std::fs::write(&path, &self.key_pem).expect("write the .p8 key");
        path
    }

    /// The environment a `workers` child needs to push here.
    pub fn child_env(&self, dir: &std::path::Path) -> Vec<(String, String)> {
        vec![
            ("GROUNDCREW_APNS_ENDPOINT".into(), self.url.clone()),
            ("GROUNDCREW_APNS_SANDBOX_ENDPOINT".into(), self.url.clone()),
            (
                "GROUNDCREW_APNS_KEY_FILE".into(),
                self.write_key(dir).display().to_string(),
            ),
            ("GROUNDCREW_APNS_KEY_ID".into(), KEY_ID.into()),
            ("GROUNDCREW_APNS_TEAM_ID".into(), TEAM_ID.into()),
            ("GROUNDCREW_APNS_TOPIC".into(), TOPIC.into()),
        ]
    }
}

impl Drop for FakeApns {
    fn drop(&mut self) {
        self.task.abort();
    }
}
