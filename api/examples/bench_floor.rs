//! The floor `bench/run-http.sh` compares the API with: a bare poem server on the same machine.
//! `GET /` answers hello (what poem costs with nothing of ours); `POST /verify` runs the sports
//! webhook's signature verification (`routes::webhooks::verify`) and stores nothing, the floor
//! of the webhook ingest route.
//!
//!     cargo run --release -p groundcrew-api --example bench_floor -- 127.0.0.1:8091

use groundcrew_api::routes::webhooks::{Signed, verify};
use groundcrew_jobs::webhooks::Provider;
use poem::{
    EndpointExt, Route, Server, get, handler, http::HeaderMap, listener::TcpListener, post,
};

#[handler]
fn hello() -> &'static str {
    "hello"
}

#[handler]
fn verify_only(headers: &HeaderMap, body: Vec<u8>) -> poem::Result<&'static str> {
    let secret = std::env::var("GROUNDCREW_SPORTS_WEBHOOK_SECRET").ok();
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    verify(
        Provider::Sports,
        Signed::Standard {
            id: h("webhook-id"),
            timestamp: h("webhook-timestamp"),
            signature: h("webhook-signature"),
        },
        secret.as_deref(),
        &body,
    )?;
    Ok(r#"{"status":"verified"}"#)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8091".into());
    let app = Route::new()
        .at("/", get(hello))
        .at("/verify", post(verify_only))
        .map_to_response();
    Server::new(TcpListener::bind(addr)).run(app).await
}
