//! groundcrew's job core (queues, transactional enqueue, worker runtime, scheduler) and the
//! domain of every job family. Binaries are thin wrappers around what is here.

// The job core.
pub mod broker;
pub mod db;
pub mod job;
pub mod outbox;
pub mod process;
pub mod queue;
pub mod registry;
pub mod schedule;
pub mod settings;
pub mod telemetry;
pub mod worker;

// The job families.
pub mod escrow;
pub mod feed;
pub mod maintenance;
pub mod media;
pub mod notify;
pub mod picks;
pub mod verification;
pub mod webhooks;

use std::sync::Arc;

/// Every process links this crate, so this is every process's allocator. Under the HTTP
/// benchmark glibc's malloc was ~3 % of all CPU (`malloc_consolidate`, `free`, `unlink_chunk`):
/// requests allocate and free many small objects on several threads (JSON values, headers,
/// rows). With mimalloc the API served 4–13 % more requests per route (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use job::{Job, JobContext, JobError, Policy};
pub use outbox::{JobTx, RunAt};
pub use queue::Queue;
pub use settings::CoreSettings;

/// Everything a handler or a route needs to reach the outside world. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub db: sqlx::PgPool,
    pub broker: broker::Broker,
    pub settings: Arc<CoreSettings>,
    pub feed: Arc<feed::FeedSettings>,
    pub picks: Arc<picks::PicksSettings>,
    pub notify: Arc<notify::Providers>,
    pub escrow: Arc<escrow::EscrowSettings>,
    pub verification: Arc<verification::VerificationSettings>,
    pub media: Arc<media::MediaSettings>,
    /// Deletes outbox rows once their jobs are in Redis.
    pub outbox: Arc<outbox::OutboxCleaner>,
    /// Writes webhook receipts in batches.
    pub inbox: Arc<webhooks::ingest::InboxWriter>,
}

impl Services {
    /// Builds the handles without connecting: a process starts while a store is down.
    pub fn new(settings: CoreSettings, max_db_connections: u32) -> Result<Self, StartError> {
        let db = db::pool(&settings.database_url, max_db_connections)?;
        let broker = broker::Broker::new(&settings.redis_url, &settings.queue_prefix)?;
        let outbox = Arc::new(outbox::OutboxCleaner::new(db.clone()));
        Ok(Services {
            inbox: Arc::new(webhooks::ingest::InboxWriter::new(
                db.clone(),
                broker.clone(),
                outbox.clone(),
            )),
            outbox,
            db,
            broker,
            settings: Arc::new(settings),
            feed: Arc::new(feed::FeedSettings::from_env()?),
            picks: Arc::new(picks::PicksSettings::from_env()?),
            notify: Arc::new(notify::Providers::from_env()?),
            verification: Arc::new(verification::VerificationSettings::from_env()?),
            escrow: Arc::new(escrow::EscrowSettings::from_env()?),
            media: Arc::new(media::MediaSettings::from_env()?),
        })
    }

    pub async fn begin(&self) -> Result<JobTx, sqlx::Error> {
        JobTx::begin(self).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] settings::ConfigError),
    #[error("DATABASE_URL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
