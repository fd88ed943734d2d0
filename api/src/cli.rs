//! The `api` binary's subcommands.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::{Parser, Subcommand};
use groundcrew_jobs::{
    CoreSettings, Queue, Services, db, outbox, process, schedule, telemetry, worker,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    ApiState,
    auth::{Role, issue_token},
    config::ApiConfig,
};

#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default). Needs GROUNDCREW_JWT_SECRET.
    Serve,
    /// The API, every worker pool, the outbox relay and the scheduler in one process; creates
    /// the database if missing and prints an admin token.
    Dev,
    /// Print a token signed with GROUNDCREW_JWT_SECRET.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: Uuid,
        /// A role to grant; repeat for several (admin, ops_read, feeds, agent).
        #[arg(long = "role", value_parser = parse_role)]
        roles: Vec<Role>,
        /// How long the token is valid, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Print the OpenAPI spec (committed as openapi/openapi.json).
    Openapi,
}

fn parse_role(s: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown role {s:?} (admin, ops_read, feeds, agent)"))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Dev => dev().await,
        Command::Token { sub, roles, ttl } => {
            let config = ApiConfig::from_env()?;
            let secret = config.auth.require_secret()?;
            println!("{}", issue_token(&config.auth, secret, sub, &roles, ttl));
            Ok(())
        }
        Command::Openapi => {
            println!("{}", crate::spec_json());
            Ok(())
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    telemetry::init_tracing("json");
    let config = ApiConfig::from_env()?;
    config.auth.require_secret()?;
    let services = process::start(20).await?;
    let stop = process::stop_on_signal();
    run_api(services, config, stop).await
}

async fn run_api(
    services: Services,
    config: ApiConfig,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let addr = config.http_addr;
    let state = ApiState::new(services, config).map_err(anyhow::Error::msg)?;
    let acceptor = crate::bind(addr).await?;
    tracing::info!(%addr, "API listening; docs at /docs");
    crate::serve(state, acceptor, stop).await?;
    Ok(())
}

async fn dev() -> anyhow::Result<()> {
    telemetry::init_tracing("pretty");
    let mut config = ApiConfig::from_env()?;
    if config.auth.jwt_secret.is_none() {
        let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let token = issue_token(
            &config.auth,
            &secret,
            Uuid::now_v7(),
            &[Role::Admin],
            Duration::from_secs(7 * 24 * 3600),
        );
        println!("GROUNDCREW_JWT_SECRET={secret}");
        println!("admin token (7 days): {token}");
        println!("try it: http://{}/docs", config.http_addr);
        config.auth.jwt_secret = Some(secret);
    }
    let settings = CoreSettings::from_env()?;
    db::create_if_missing(&settings.database_url).await?;
    let services = process::start(40).await?;
    let pools = worker::parse_pools("", "").map_err(anyhow::Error::msg)?;
    let schedules = schedule::load()?;
    let stop = process::stop_on_signal();

    let background = CancellationToken::new();
    let relay = tokio::spawn(outbox::run_relay(services.clone(), background.clone()));
    let sampler = tokio::spawn(telemetry::sample_queue_depths(
        services.clone(),
        Queue::ALL.to_vec(),
        background.clone(),
    ));
    let workers = tokio::spawn(worker::run_workers(services.clone(), pools, stop.clone()));
    // The scheduler's tick streams are not Send: it gets a thread of its own.
    let scheduler = {
        let (services, stop) = (services.clone(), stop.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("scheduler runtime")
                .block_on(schedule::run_scheduler(services, schedules, stop))
        })
    };

    let served = run_api(services, config, stop.clone()).await;
    stop.cancel();
    let _ = workers.await;
    background.cancel();
    let _ = tokio::join!(relay, sampler);
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    served
}
