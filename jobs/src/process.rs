//! What every binary does around its work: start-up of the shared handles, and shutdown on
//! SIGTERM or Ctrl-C.

use std::num::NonZeroU32;

use tokio_util::sync::CancellationToken;

use crate::{
    Services, StartError, db,
    settings::{CoreSettings, env_parse},
};

/// Reads the core settings, builds the handles and applies migrations. The binary's Postgres
/// pool size is a default that `GROUNDCREW_DB_CONNECTIONS` overrides.
pub async fn start(default_db_connections: u32) -> Result<Services, StartError> {
    let settings = CoreSettings::from_env()?;
    let default = NonZeroU32::new(default_db_connections).unwrap_or(NonZeroU32::MIN);
    let connections = env_parse("GROUNDCREW_DB_CONNECTIONS", default)?;
    let services = Services::new(settings, connections.get())?;
    db::migrate(&services.db).await?;
    Ok(services)
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
        }
        token.cancel();
    });
    stop
}
