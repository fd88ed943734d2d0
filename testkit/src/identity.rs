//! A local Persona API (`POST /inquiries`, bearer key, `Idempotency-Key` replayed like Persona
//! does) and the webhook bodies Stripe Identity and Persona send, for tests that drive a
//! verification end to end. The Stripe side of identity lives in the fake Stripe
//! (`stripe.rs`, `/v1/identity/verification_sessions`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use serde_json::{Value, json};

use crate::http_server::{self, Received, Reply, reply};

pub const PERSONA_API_KEY: &str = "persona_sandbox_groundcrew";

#[derive(Default)]
struct State {
    /// Idempotency key → the first response.
    replies: HashMap<String, String>,
    /// (inquiry id, reference-id) of each inquiry created.
    inquiries: Vec<(String, String)>,
}

pub struct FakePersona {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePersona {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (addr, task) = http_server::serve({
            let state = state.clone();
            move |req| {
                let state = state.clone();
                async move { handle(&state, req) }
            }
        })
        .await;
        FakePersona { addr, state, task }
    }

    /// What `GROUNDCREW_PERSONA_API_BASE` is set to.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// (inquiry id, reference-id) of each inquiry created.
    pub fn inquiries(&self) -> Vec<(String, String)> {
        self.state.lock().expect("state").inquiries.clone()
    }
}

impl Drop for FakePersona {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn handle(state: &Mutex<State>, req: Received) -> Reply {
    let error = |status: u16, title: &str| {
        reply(
            status,
            json!({ "errors": [{ "title": title }] }).to_string(),
        )
    };
    let authorized = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {PERSONA_API_KEY}"));
    if !authorized {
        return error(401, "Must be authenticated to access this endpoint");
    }
    if req.method != hyper::Method::POST || req.path != "/api/v1/inquiries" {
        return error(404, "Not found");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return error(400, "Malformed JSON");
    };
    let key = req
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut state = state.lock().expect("state");
    if let Some(first) = key.as_ref().and_then(|k| state.replies.get(k)) {
        return reply(200, first.clone());
    }
    let reference = body
        .pointer("/data/attributes/reference-id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let id = format!("inq_{}", state.inquiries.len() + 1);
    let response = json!({
        "data": {
            "type": "inquiry", "id": id,
            "attributes": { "status": "created", "reference-id": reference },
        },
        "meta": { "session-token": format!("sess_{}", uuid::Uuid::new_v4().simple()) },
    })
    .to_string();
    state.inquiries.push((id, reference));
    if let Some(key) = key {
        state.replies.insert(key, response.clone());
    }
    reply(201, response)
}

/// A Stripe `identity.verification_session.<status>` event body, as Stripe posts it.
/// `dob` is the verified birth date (`verified_outputs.dob`), for age checks.
pub fn stripe_identity_event(
    event_id: &str,
    status: &str,
    session_id: &str,
    verification_id: &str,
    dob: Option<chrono::NaiveDate>,
) -> String {
    use chrono::Datelike;
    let verified_outputs =
        dob.map(|d| json!({ "dob": { "year": d.year(), "month": d.month(), "day": d.day() } }));
    json!({
        "id": event_id,
        "object": "event",
        "type": format!("identity.verification_session.{status}"),
        "data": { "object": {
            "id": session_id,
            "object": "identity.verification_session",
            "status": status,
            "metadata": { "verification_id": verification_id },
            "verified_outputs": verified_outputs,
        }},
    })
    .to_string()
}

/// A Persona `inquiry.<name>` event body, as Persona posts it.
pub fn persona_inquiry_event(
    event_id: &str,
    name: &str,
    inquiry_id: &str,
    reference_id: &str,
    birthdate: Option<chrono::NaiveDate>,
) -> String {
    json!({
        "data": {
            "type": "event",
            "id": event_id,
            "attributes": {
                "name": format!("inquiry.{name}"),
                "payload": { "data": {
                    "type": "inquiry",
                    "id": inquiry_id,
                    "attributes": {
                        "reference-id": reference_id,
                        "birthdate": birthdate.map(|d| d.to_string()),
                    },
                }},
            },
        },
    })
    .to_string()
}
