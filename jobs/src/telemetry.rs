//! Logs, metrics and the health/metrics endpoint every process serves.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use poem::{
    EndpointExt, IntoResponse, Route, Server, get, handler, http::StatusCode,
    listener::TcpListener, web::Data,
};
use tokio_util::sync::CancellationToken;

use crate::{Services, queue::Queue};

/// JSON logs when `GROUNDCREW_LOG_FORMAT=json`, human-readable otherwise; filter from `RUST_LOG`.
pub fn init_tracing(default_format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = std::env::var("GROUNDCREW_LOG_FORMAT").unwrap_or_else(|_| default_format.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the Prometheus recorder once per process and returns the handle that renders it.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0, 300.0,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // A second recorder (tests running several apps in one process) keeps the first.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Keeps the queue gauges current: jobs by state, and queue latency (age of the oldest
/// pending job: the signal to autoscale a pool on).
pub async fn sample_queue_depths(services: Services, queues: Vec<Queue>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for queue in &queues {
            let Ok(depth) = services.broker.depth(*queue).await else {
                continue;
            };
            let q = queue.name();
            for (state, n) in [
                ("pending", depth.pending),
                ("scheduled", depth.scheduled),
                ("running", depth.running),
                ("dead", depth.dead),
            ] {
                metrics::gauge!("groundcrew_queue_jobs", "queue" => q, "state" => state)
                    .set(n as f64);
            }
            metrics::gauge!("groundcrew_queue_latency_seconds", "queue" => q)
                .set(depth.oldest_pending_age.as_secs_f64());
            metrics::gauge!("groundcrew_queue_paused", "queue" => q)
                .set(u8::from(depth.paused) as f64);
        }
    }
}

/// Whether Postgres and Redis both answer within a second; names the one that does not.
pub async fn readiness(services: &Services) -> Result<(), &'static str> {
    let timeout = Duration::from_secs(1);
    let db = tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&services.db));
    if !matches!(db.await, Ok(Ok(_))) {
        return Err("postgres");
    }
    if !matches!(
        tokio::time::timeout(timeout, services.broker.ping()).await,
        Ok(Ok(()))
    ) {
        return Err("redis");
    }
    Ok(())
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(Data(services): Data<&Services>) -> poem::Response {
    match readiness(services).await {
        Ok(()) => "ready".into_response(),
        Err(down) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{down} unavailable"),
        )
            .into_response(),
    }
}

#[handler]
fn render_metrics() -> String {
    metrics().render()
}

/// `/healthz`, `/readyz` and `/metrics` for the worker and scheduler processes.
pub async fn serve_probes(
    addr: SocketAddr,
    services: Services,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(render_metrics))
        .data(services);
    Server::new(TcpListener::bind(addr))
        .run_with_graceful_shutdown(app, stop.cancelled_owned(), Some(Duration::from_secs(1)))
        .await
}
