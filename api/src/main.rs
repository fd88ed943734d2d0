//! `api`: the HTTP API (`serve`, the default), everything in one process (`dev`), a token for
//! trying it (`token`), or the OpenAPI spec (`openapi`).

use clap::Parser;
use groundcrew_api::cli::{Cli, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Cli::parse()).await
}
