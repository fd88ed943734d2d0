//! `bench-queue`: queue benchmarks of our runtime against a bare apalis-redis worker, with
//! the same JSON lines as the BullMQ peer script (shared/peers/bullmq/bench.mjs). See
//! bench/README.md for how to run them and bench/run-queue.sh for the side-by-side sweep.

mod apalis;
mod measure;
mod ours;
mod spans;
mod summarize;

use std::{path::PathBuf, sync::Arc};

use clap::{Parser, Subcommand};
use groundcrew_testkit::PrivateRedis;

#[derive(Parser)]
#[command(
    name = "bench-queue",
    about = "Queue benchmarks: drain, enqueue, latency"
)]
struct Cli {
    /// A Redis that holds nothing else. Without it, a private redis-server is started on a
    /// free port for this run.
    #[arg(long, env = "BENCH_REDIS_URL", global = true)]
    redis_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drain pre-filled no-op jobs through our worker runtime, in process.
    Drain {
        #[arg(long, default_value_t = 50_000)]
        jobs: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Drain pre-filled no-op tasks with a bare apalis-redis 1.0 worker.
    DrainApalis {
        #[arg(long, default_value_t = 50_000)]
        jobs: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, value_enum, default_value = "default")]
        config: apalis::Preset,
    },
    /// Enqueue no-op jobs through the outbox (JobTx), no workers running.
    Enqueue {
        #[arg(long, value_enum, default_value = "single")]
        mode: ours::EnqueueMode,
        #[arg(long, default_value_t = 50_000)]
        jobs: u64,
        /// Concurrent producer tasks, each running its share of the transactions in turn.
        #[arg(long, default_value_t = 1)]
        tasks: usize,
        /// Jobs per transaction in batch mode.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Enqueue→start latency at a steady rate while our workers run in process.
    Latency {
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, value_enum, default_value = "outbox")]
        path: ours::LatencyPath,
    },
    /// Print the markdown tables (medians, ratios) of JSON result lines.
    Summarize { files: Vec<PathBuf> },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Summarize { files } = &cli.command {
        let mut input = String::new();
        for file in files {
            input.push_str(&std::fs::read_to_string(file)?);
            input.push('\n');
        }
        print!("{}", summarize::markdown(&input));
        return Ok(());
    }

    let clock = Arc::new(spans::SpanTimes::default());
    let needs_clock = matches!(cli.command, Command::Latency { .. });
    spans::init_tracing(needs_clock.then(|| clock.clone()));
    // The runtime records its job metrics as it does in the `workers` binary.
    groundcrew_jobs::telemetry::metrics();
    let private = cli.redis_url.is_none().then(PrivateRedis::start);
    let redis_url = cli
        .redis_url
        .clone()
        .or_else(|| private.as_ref().map(PrivateRedis::url))
        .expect("a Redis URL or a private Redis");

    match cli.command {
        Command::Drain { jobs, concurrency } => ours::drain(&redis_url, jobs, concurrency).await,
        Command::DrainApalis {
            jobs,
            concurrency,
            config,
        } => apalis::drain(&redis_url, jobs, concurrency, config).await,
        Command::Enqueue {
            mode,
            jobs,
            tasks,
            batch,
        } => ours::enqueue(&redis_url, mode, jobs, tasks, batch).await,
        Command::Latency {
            rate,
            seconds,
            concurrency,
            path,
        } => ours::latency(&redis_url, rate, seconds, concurrency, path, clock).await,
        Command::Summarize { .. } => unreachable!("handled above"),
    }
}
