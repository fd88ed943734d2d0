//! The daily sweep of uploads never attached to a post: after 24 h they and every object under
//! their prefix (original and renditions) are deleted. Objects go first, then the row, so a
//! crash between the two leaves a row (without some objects) that the next sweep finds again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    job::{Job, JobContext, JobError, Policy},
    queue::Queue,
};

/// How long an upload may wait to be attached to a post.
pub const UNATTACHED_TTL: &str = "24 hours";

/// Items per batch: bounded so one sweep never holds a long list in memory.
const BATCH: i64 = 200;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SweepUnattached {}

impl Job for SweepUnattached {
    const KIND: &'static str = "media.sweep_unattached";
    const QUEUE: Queue = Queue::Media;
    const POLICY: Policy = Policy {
        max_attempts: 3,
        timeout: Duration::from_secs(30 * 60),
        ..Policy::DEFAULT
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let deleted = sweep_unattached(&ctx).await?;
        if deleted > 0 {
            tracing::info!(deleted, "swept unattached uploads");
        }
        Ok(())
    }
}

async fn sweep_unattached(ctx: &JobContext) -> Result<u64, JobError> {
    let storage = &ctx.services.media.storage;
    let mut deleted = 0;
    loop {
        // The rows stay locked while their objects go: a post attaching one of them waits,
        // then finds it gone (and is refused) instead of pointing at deleted objects.
        let mut tx = ctx.services.db.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM media
             WHERE attached_at IS NULL AND created_at < now() - $1::interval
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(UNATTACHED_TTL)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            storage.delete_all(*id).await.map_err(JobError::retry)?;
        }
        sqlx::query("DELETE FROM media WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        deleted += ids.len() as u64;
        if (ids.len() as i64) < BATCH {
            return Ok(deleted);
        }
    }
}
