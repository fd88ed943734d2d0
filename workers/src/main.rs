//! `workers`: runs one pool per queue it is given, the outbox relay, and the probe endpoint.
//! Scale a queue by running more of these with `--queues <name>`.

use std::net::SocketAddr;

use clap::Parser;
use groundcrew_jobs::{outbox, process, telemetry, worker};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Queues to work, comma-separated (default: all).
    #[arg(long, env = "GROUNDCREW_QUEUES", default_value = "")]
    queues: String,
    /// Handlers at once per queue, e.g. `notify=64,feed=8`; others use their default.
    #[arg(long, env = "GROUNDCREW_CONCURRENCY", default_value = "")]
    concurrency: String,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[arg(
        long,
        env = "GROUNDCREW_METRICS_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    metrics_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_tracing("pretty");
    telemetry::metrics();
    let pools = worker::parse_pools(&args.queues, &args.concurrency).map_err(anyhow::Error::msg)?;
    let connections = pools
        .iter()
        .map(|p| p.concurrency)
        .sum::<usize>()
        .clamp(4, 64) as u32;
    let services = process::start(connections).await?;
    let stop = process::stop_on_signal();

    let background = tokio_util::sync::CancellationToken::new();
    let probes = tokio::spawn(telemetry::serve_probes(
        args.metrics_addr,
        services.clone(),
        background.clone(),
    ));
    let relay = tokio::spawn(outbox::run_relay(services.clone(), background.clone()));
    let sampler = tokio::spawn(telemetry::sample_queue_depths(
        services.clone(),
        pools.iter().map(|p| p.queue).collect(),
        background.clone(),
    ));

    worker::run_workers(services, pools, stop).await;

    background.cancel();
    let _ = tokio::join!(relay, sampler);
    probes.await??;
    Ok(())
}
