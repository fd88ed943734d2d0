//! A local server that speaks the slice of Stripe's API the platform uses: form-encoded
//! `POST /v1/payment_intents`, `/v1/transfers` and `/v1/refunds` with a bearer secret key.
//! Like Stripe, it replays the first response to a repeated `Idempotency-Key`; it counts the
//! transfers and refunds it really made, and can hold transfer responses (after making the
//! transfer) so a test can kill the caller between the provider's effect and its record.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use hyper::body::Bytes;
use tokio::sync::{Notify, watch};

use crate::http_server::{self, Received, Reply, reply};

pub const SECRET_KEY: &str = "sk_test_groundcrew";

#[derive(Clone, Debug)]
pub struct Transfer {
    pub id: String,
    pub amount: i64,
    pub destination: String,
    pub idempotency_key: String,
}

#[derive(Default)]
struct State {
    /// Idempotency key → the first response's (status, body).
    replies: HashMap<String, (u16, String)>,
    transfers: Vec<Transfer>,
    refunds: Vec<(String, String)>,
    payment_intents: Vec<(String, i64)>,
    /// Identity verification sessions created, with the form they were created from.
    identity_sessions: Vec<(String, HashMap<String, String>)>,
    requests: usize,
}

pub struct FakeStripe {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    hold_transfers: watch::Sender<bool>,
    transfer_made: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeStripe {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (hold_transfers, holding) = watch::channel(false);
        let transfer_made = Arc::new(Notify::new());
        let (addr, task) = http_server::serve({
            let state = state.clone();
            let transfer_made = transfer_made.clone();
            move |req| handle(state.clone(), holding.clone(), transfer_made.clone(), req)
        })
        .await;
        FakeStripe {
            addr,
            state,
            hold_transfers,
            transfer_made,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Transfers made (one per idempotency key), in order.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.state.lock().expect("state").transfers.clone()
    }

    /// Refunds made: (payment intent, idempotency key).
    pub fn refunds(&self) -> Vec<(String, String)> {
        self.state.lock().expect("state").refunds.clone()
    }

    pub fn payment_intents(&self) -> usize {
        self.state.lock().expect("state").payment_intents.len()
    }

    /// Identity verification sessions created: (id, the form they were created from).
    pub fn identity_sessions(&self) -> Vec<(String, HashMap<String, String>)> {
        self.state.lock().expect("state").identity_sessions.clone()
    }

    /// Requests received, replays included.
    pub fn requests(&self) -> usize {
        self.state.lock().expect("state").requests
    }

    /// While on, a transfer is made and then its response withheld until switched off.
    pub fn hold_transfer_responses(&self, on: bool) {
        self.hold_transfers.send_replace(on);
    }

    /// Resolves once the next new transfer has been made.
    pub async fn next_transfer(&self) {
        self.transfer_made.notified().await
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    mut holding: watch::Receiver<bool>,
    transfer_made: Arc<Notify>,
    req: Received,
) -> Reply {
    let authorized = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SECRET_KEY}"));
    if !authorized {
        return error(401, "Invalid API Key provided");
    }
    if req.method != hyper::Method::POST {
        return error(405, "method not allowed");
    }
    let Some(key) = req
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return error(400, "this fake demands an Idempotency-Key on every POST");
    };
    let form: HashMap<String, String> = form_urlencoded(&req.body);
    let (status, body, new_transfer) = {
        let mut state = state.lock().expect("state");
        state.requests += 1;
        if let Some((status, body)) = state.replies.get(&key) {
            (*status, body.clone(), false)
        } else {
            let (status, body, transfer) = create(&mut state, &req.path, &key, &form);
            state.replies.insert(key.clone(), (status, body.clone()));
            (status, body, transfer)
        }
    };
    if new_transfer {
        transfer_made.notify_one();
        // The transfer exists; its caller learns so only when the test lets go.
        let _ = holding.wait_for(|hold| !*hold).await;
    }
    reply(status, body)
}

fn create(
    state: &mut State,
    path: &str,
    key: &str,
    form: &HashMap<String, String>,
) -> (u16, String, bool) {
    let amount = form.get("amount").and_then(|a| a.parse::<i64>().ok());
    match path {
        "/v1/payment_intents" => {
            let Some(amount) = amount else {
                return (400, error_body("amount is required"), false);
            };
            let id = format!("pi_{}", state.payment_intents.len() + 1);
            let body = serde_json::json!({
                "id": id, "object": "payment_intent", "amount": amount,
                "currency": form.get("currency"), "status": "requires_payment_method",
                "client_secret": format!("{id}_secret_{}", uuid::Uuid::new_v4().simple()),
                "metadata": {"escrow_id": form.get("metadata[escrow_id]")},
            });
            state.payment_intents.push((id, amount));
            (200, body.to_string(), false)
        }
        "/v1/transfers" => {
            let (Some(amount), Some(destination)) = (amount, form.get("destination")) else {
                return (
                    400,
                    error_body("amount and destination are required"),
                    false,
                );
            };
            let id = format!("tr_{}", state.transfers.len() + 1);
            state.transfers.push(Transfer {
                id: id.clone(),
                amount,
                destination: destination.clone(),
                idempotency_key: key.to_owned(),
            });
            let body = serde_json::json!({
                "id": id, "object": "transfer", "amount": amount, "destination": destination,
            });
            (200, body.to_string(), true)
        }
        "/v1/refunds" => {
            let Some(intent) = form.get("payment_intent") else {
                return (400, error_body("payment_intent is required"), false);
            };
            let id = format!("re_{}", state.refunds.len() + 1);
            state.refunds.push((intent.clone(), key.to_owned()));
            let body = serde_json::json!({
                "id": id, "object": "refund", "payment_intent": intent, "status": "succeeded",
            });
            (200, body.to_string(), false)
        }
        "/v1/identity/verification_sessions" => {
            let id = format!("vs_{}", state.identity_sessions.len() + 1);
            let body = serde_json::json!({
                "id": id, "object": "identity.verification_session", "status": "requires_input",
                "type": form.get("type"),
                "url": format!("https://verify.stripe.com/start/{id}"),
                "client_secret": format!("{id}_secret_{}", uuid::Uuid::new_v4().simple()),
                "metadata": {"verification_id": form.get("metadata[verification_id]")},
            });
            state.identity_sessions.push((id, form.clone()));
            (200, body.to_string(), false)
        }
        _ => (404, error_body("unrecognized request URL"), false),
    }
}

fn error_body(message: &str) -> String {
    serde_json::json!({"error": {"type": "invalid_request_error", "message": message}}).to_string()
}

fn error(status: u16, message: &str) -> Reply {
    reply(status, error_body(message))
}

fn form_urlencoded(body: &Bytes) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A signed Stripe webhook: the `Stripe-Signature` header for `body` at `timestamp`.
pub fn sign_webhook(secret: &str, timestamp: i64, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// A `payment_intent.*` event body as Stripe sends it.
pub fn payment_intent_event(
    event_id: &str,
    event_type: &str,
    intent_id: &str,
    escrow_id: &str,
) -> String {
    serde_json::json!({
        "id": event_id,
        "object": "event",
        "type": event_type,
        "data": {"object": {
            "id": intent_id, "object": "payment_intent",
            "metadata": {"escrow_id": escrow_id},
        }},
    })
    .to_string()
}
