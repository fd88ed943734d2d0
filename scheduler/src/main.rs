//! `scheduler`: fires the cron table. Run as many replicas as you like; each tick enqueues once.

use std::net::SocketAddr;

use clap::Parser;
use groundcrew_jobs::{process, schedule, telemetry};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[arg(
        long,
        env = "GROUNDCREW_METRICS_ADDR",
        default_value = "127.0.0.1:9091"
    )]
    metrics_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_tracing("pretty");
    telemetry::metrics();
    let schedules = schedule::load()?;
    let services = process::start(4).await?;
    let stop = process::stop_on_signal();
    let probes = tokio::spawn(telemetry::serve_probes(
        args.metrics_addr,
        services.clone(),
        stop.clone(),
    ));
    schedule::run_scheduler(services, schedules, stop).await;
    probes.await??;
    Ok(())
}
