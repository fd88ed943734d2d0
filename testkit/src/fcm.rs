//! A local FCM HTTP v1 endpoint with its OAuth2 token endpoint. The token endpoint checks the
//! JWT-bearer assertion (RS256 with the key of a service account generated per server, `kid`,
//! `iss`, `aud` = its own URL, the messaging scope); the send endpoint accepts only tokens it
//! issued, records each message, and answers what the test scripted per device token. Both over
//! plain http, or over TLS with `start_tls`.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::{
    RsaPrivateKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http_server::{Received, Reply, STREAM_LIMIT, reply, serve_with};

pub const PROJECT_ID: &str = "groundcrew-test";
pub const CLIENT_EMAIL: &str = "push@groundcrew-test.iam.gserviceaccount.com";
pub const PRIVATE_KEY_ID: &str = "fcm-test-key-1";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// What the send endpoint answers one message for a device token.
#[derive(Clone, Debug)]
pub enum FcmReply {
    Ok,
    /// An HTTP status, the RPC status and FCM's `errorCode`, and optionally `Retry-After`.
    Error {
        status: u16,
        rpc_status: &'static str,
        error_code: &'static str,
        retry_after: Option<u64>,
    },
}

#[derive(Clone, Debug)]
pub struct FcmRequest {
    pub device_token: String,
    pub body: Value,
    pub status: u16,
    pub version: hyper::Version,
}

#[derive(Default)]
struct State {
    issued: HashSet<String>,
    token_requests: usize,
    assertion_errors: Vec<String>,
    messages: Vec<FcmRequest>,
    scripts: HashMap<String, VecDeque<FcmReply>>,
}

pub struct FakeFcm {
    pub url: String,
    /// The service-account JSON, `token_uri` pointing at this server.
    pub credentials_json: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    scope: String,
    iat: u64,
    exp: u64,
}

impl FakeFcm {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Both endpoints over TLS with a certificate from `ca` (HTTP/2 or HTTP/1.1 by ALPN), at
    /// `https://`; so is the service account's `token_uri`.
    pub async fn start_tls(ca: &crate::tls::TestCa) -> Self {
        Self::start_with(Some(ca.server_config())).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let private = RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("RSA key");
        let private_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 PEM")
            .to_string();
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("SPKI PEM");
        let public = DecodingKey::from_rsa_pem(public_pem.as_bytes()).expect("public key");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let url_slot: Arc<Mutex<String>> = Arc::default();
        let url_in_handler = url_slot.clone();
        let handler = move |request: Received| {
            let state = shared.clone();
            let public = public.clone();
            let token_uri = format!("{}/token", url_in_handler.lock().unwrap());
            async move { handle(request, &state, &public, &token_uri) }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (addr, task) = serve_with(handler, tls, STREAM_LIMIT).await;
        let url = format!("{scheme}://{addr}");
        *url_slot.lock().unwrap() = url.clone();
        let credentials_json = json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": PRIVATE_KEY_ID,
            "private_key": private_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "token_uri": format!("{url}/token"),
        })
        .to_string();
        FakeFcm {
            url,
            credentials_json,
            state,
            task,
        }
    }

    pub fn script(&self, device_token: &str, replies: Vec<FcmReply>) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(device_token.to_owned(), replies.into());
    }

    pub fn messages(&self) -> Vec<FcmRequest> {
        self.state.lock().unwrap().messages.clone()
    }

    /// Forgets the messages so far (as `FakeApns::clear_requests`, for benchmark phases).
    pub fn clear_messages(&self) {
        self.state.lock().unwrap().messages = Vec::new();
    }

    /// Access tokens issued (a cached token means one for many sends).
    pub fn token_requests(&self) -> usize {
        self.state.lock().unwrap().token_requests
    }

    /// Why assertions were refused, if any were.
    pub fn assertion_errors(&self) -> Vec<String> {
        self.state.lock().unwrap().assertion_errors.clone()
    }

    /// Settings that point the platform's FCM client here.
    pub fn settings(&self) -> groundcrew_jobs::notify::settings::FcmSettings {
        groundcrew_jobs::notify::settings::FcmSettings {
            endpoint: self.url.clone(),
            account: serde_json::from_str(&self.credentials_json).expect("service account"),
        }
    }

    pub fn write_credentials(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("service-account.json");
        std::fs::write(&path, &self.credentials_json).expect("write the credentials");
        path
    }

    /// The environment a `workers` child needs to push here.
    pub fn child_env(&self, dir: &std::path::Path) -> Vec<(String, String)> {
        vec![
            ("GROUNDCREW_FCM_ENDPOINT".into(), self.url.clone()),
            (
                "GROUNDCREW_FCM_CREDENTIALS_FILE".into(),
                self.write_credentials(dir).display().to_string(),
            ),
        ]
    }
}

impl Drop for FakeFcm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rpc_error(status: u16, rpc_status: &str, error_code: Option<&str>) -> Reply {
    let details = match error_code {
        Some(code) => json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]),
        None => json!([]),
    };
    reply(
        status,
        json!({"error": {"code": status, "message": format!("{rpc_status} (fake)"),
                         "status": rpc_status, "details": details}})
        .to_string(),
    )
}

fn check_assertion(form: &str, public: &DecodingKey, token_uri: &str) -> Result<(), String> {
    let fields: HashMap<&str, &str> = form
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    if fields.get("grant_type") != Some(&"urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return Err(format!("grant_type {:?}", fields.get("grant_type")));
    }
    let assertion = fields.get("assertion").ok_or("no assertion")?;
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| e.to_string())?;
    if header.kid.as_deref() != Some(PRIVATE_KEY_ID) {
        return Err(format!("kid {:?}", header.kid));
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, public, &validation)
        .map_err(|e| e.to_string())?
        .claims;
    if claims.scope != SCOPE || claims.iss != CLIENT_EMAIL || claims.exp <= claims.iat {
        return Err(format!(
            "scope {} / iat {} / exp {}",
            claims.scope, claims.iat, claims.exp
        ));
    }
    Ok(())
}

fn handle(request: Received, state: &Mutex<State>, public: &DecodingKey, token_uri: &str) -> Reply {
    let mut state = state.lock().unwrap();
    if request.path == "/token" {
        state.token_requests += 1;
        let form = String::from_utf8_lossy(&request.body);
        if let Err(e) = check_assertion(&form, public, token_uri) {
            state.assertion_errors.push(e);
            return reply(400, r#"{"error":"invalid_grant"}"#);
        }
        let token = format!("ya29.fake-{}", uuid::Uuid::new_v4().simple());
        state.issued.insert(token.clone());
        return reply(
            200,
            json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
        );
    }
    if request.path != format!("/v1/projects/{PROJECT_ID}/messages:send") {
        return rpc_error(404, "NOT_FOUND", None);
    }
    let bearer = request
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state.issued.contains(bearer) {
        return rpc_error(401, "UNAUTHENTICATED", None);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        return rpc_error(400, "INVALID_ARGUMENT", None);
    };
    let device_token = body["message"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let scripted = state
        .scripts
        .get_mut(&device_token)
        .and_then(VecDeque::pop_front)
        .unwrap_or(FcmReply::Ok);
    let (status, response) = match scripted {
        FcmReply::Ok => (
            200,
            reply(
                200,
                json!({"name": format!("projects/{PROJECT_ID}/messages/{}", state.messages.len())})
                    .to_string(),
            ),
        ),
        FcmReply::Error {
            status,
            rpc_status,
            error_code,
            retry_after,
        } => {
            let mut response = rpc_error(status, rpc_status, Some(error_code));
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", seconds.into());
            }
            (status, response)
        }
    };
    state.messages.push(FcmRequest {
        device_token,
        body,
        status,
        version: request.version,
    });
    response
}
