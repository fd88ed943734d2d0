//! Webhook ingest load: signed Standard Webhooks deliveries (unique ids) to
//! `POST /v1/webhooks/sports` on loopback, against a floor that runs the same verification
//! (`routes::webhooks::verify`) and stores nothing. Prints req/s and latency percentiles of each,
//! then how long the verification pool takes to drain the inbox backlog.
//!
//!     cargo run --release -p groundcrew-api --example bench_webhooks -- [seconds] [connections]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use groundcrew_api::{
    ApiState,
    routes::webhooks::{Signed, verify},
};
use groundcrew_jobs::{
    Queue, Services, verification::VerificationSettings, webhooks::Provider,
    webhooks::signature::sign_standard, worker::PoolSpec,
};
use groundcrew_testkit::TestEnv;
use poem::{EndpointExt, Route, handler, http::HeaderMap, listener::TcpListener, post};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BODY: &str = r#"{"type":"event.result","data":{"external_id":"bench-missing","status":"final","home_score":1,"away_score":0}}"#;

#[handler]
fn verify_only(headers: &HeaderMap, body: Vec<u8>) -> poem::Result<&'static str> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    verify(
        Provider::Sports,
        Signed::Standard {
            id: h("webhook-id"),
            timestamp: h("webhook-timestamp"),
            signature: h("webhook-signature"),
        },
        Some(SECRET),
        &body,
    )?;
    Ok(r#"{"status":"verified"}"#)
}

async fn load(url: String, seconds: u64, connections: usize, run: &str) -> (f64, Vec<Duration>) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (http, url, run) = (http.clone(), url.clone(), run.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let id = format!("msg_{run}_{c}_{n}");
                    n += 1;
                    let t = chrono::Utc::now().timestamp();
                    let sent = Instant::now();
                    let resp = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("webhook-id", &id)
                        .header("webhook-timestamp", t.to_string())
                        .header(
                            "webhook-signature",
                            sign_standard(SECRET, &id, t, BODY.as_bytes()),
                        )
                        .body(BODY)
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(
                        resp.status(),
                        200,
                        "{}",
                        resp.text().await.unwrap_or_default()
                    );
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

fn report(name: &str, (rate, lat): &(f64, Vec<Duration>)) {
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{name}: {} requests, {rate:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(10);
    let connections = args.get(1).copied().unwrap_or(32) as usize;
    let mut env = TestEnv::new().await;
    let verification = Arc::new(VerificationSettings {
        sports_webhook_secret: Some(SECRET.into()),
        ..VerificationSettings::unconfigured()
    });
    env.services.verification = verification.clone();
    let mut services = Services::new(env.settings.clone(), 40).expect("services");
    services.verification = verification;
    let mut config = groundcrew_api::config::ApiConfig::from_env().expect("config");
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.auth.jwt_secret = Some("bench".into());
    // Providers post from few addresses; the per-IP limit would measure itself, not ingest.
    config.rate_limits.per_ip.max = u32::MAX;
    let state = ApiState::new(services, config.clone()).expect("state");
    let acceptor = groundcrew_api::bind(config.http_addr).await.expect("bind");
    let addr = *poem::listener::Acceptor::local_addr(&acceptor)[0]
        .as_socket_addr()
        .unwrap();
    tokio::spawn(groundcrew_api::serve(state, acceptor, Default::default()));
    let floor_port = groundcrew_testkit::free_port();
    tokio::spawn(
        poem::Server::new(TcpListener::bind(format!("127.0.0.1:{floor_port}"))).run(
            Route::new()
                .at("/v1/webhooks/sports", post(verify_only))
                .boxed(),
        ),
    );
    tokio::time::sleep(Duration::from_millis(200)).await; // the floor server binds in the background
    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Verification,
        concurrency: 16,
    }]);
    let api_url = format!("http://{addr}/v1/webhooks/sports");
    let floor_url = format!("http://127.0.0.1:{floor_port}/v1/webhooks/sports");
    for round in 0..2 {
        report(
            &format!("floor (verify only) #{round}"),
            &load(
                floor_url.clone(),
                seconds,
                connections,
                &format!("f{round}"),
            )
            .await,
        );
        let ingest = load(api_url.clone(), seconds, connections, &format!("a{round}")).await;
        report(
            &format!("ingest (verify + inbox + enqueue) #{round}"),
            &ingest,
        );
        let drain = Instant::now();
        loop {
            let backlog: i64 =
                sqlx::query_scalar("SELECT count(*) FROM webhook_inbox WHERE processed_at IS NULL")
                    .fetch_one(&env.services.db)
                    .await
                    .unwrap();
            if backlog == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "inbox backlog back to zero {:.2} s after the run",
            drain.elapsed().as_secs_f64()
        );
    }
    workers.shutdown().await;
}
