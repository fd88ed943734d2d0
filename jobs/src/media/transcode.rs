//! The transcode job: pending → processing → ready | failed. The renditions are written to
//! fixed object keys and their rows upserted, and the status moves to `ready` (with the owner's
//! "media ready" notification) in one guarded transaction, so a re-run after a crash overwrites
//! the same objects and notifies at most once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::{MediaKind, thumbnails, video};
use crate::{
    job::{Backoff, Job, JobContext, JobError, Policy},
    notify::{Category, Notification, notify},
    queue::Queue,
};

/// Makes the renditions of one uploaded item.
#[derive(Debug, Serialize, Deserialize)]
pub struct Transcode {
    pub media_id: Uuid,
}

/// Why an item ended `failed`; stored and shown as `error.code`, so never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCode {
    UnsupportedType,
    TooLarge,
    Corrupt,
    TooLong,
    Timeout,
}

impl FailureCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureCode::UnsupportedType => "unsupported_type",
            FailureCode::TooLarge => "too_large",
            FailureCode::Corrupt => "corrupt",
            FailureCode::TooLong => "too_long",
            FailureCode::Timeout => "timeout",
        }
    }
}

/// How making renditions went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The input itself is the problem: another attempt would fail the same way.
    #[error("{}: {message}", code.as_str())]
    Rejected { code: FailureCode, message: String },
    /// Storage, disk or the database: worth another attempt.
    #[error("{0}")]
    Transient(String),
}

impl ProcessError {
    pub fn rejected(code: FailureCode, message: impl Into<String>) -> Self {
        ProcessError::Rejected {
            code,
            message: message.into(),
        }
    }

    pub fn transient(error: impl std::fmt::Display) -> Self {
        ProcessError::Transient(error.to_string())
    }
}

/// One rendition, already written to storage under `{media_id}/{name}`.
#[derive(Clone, Debug)]
pub struct Rendition {
    pub name: &'static str,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// What the item turned out to be, with its renditions.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub width: u32,
    pub height: u32,
    pub duration_ms: Option<i64>,
    pub renditions: Vec<Rendition>,
}

impl Job for Transcode {
    const KIND: &'static str = "media.transcode";
    const QUEUE: Queue = Queue::Media;
    const POLICY: Policy = Policy {
        max_attempts: 5,
        // Above the per-run ffmpeg limit (default 10 min), which fails the item with
        // `timeout` before the runtime would cut the attempt off.
        timeout: Duration::from_secs(30 * 60),
        backoff: Backoff {
            base: Duration::from_secs(5),
            max: Duration::from_secs(600),
        },
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let db = &ctx.services.db;
        let Some(row) = sqlx::query(
            "UPDATE media SET status = 'processing', updated_at = now()
             WHERE id = $1 AND status IN ('pending', 'processing')
             RETURNING kind",
        )
        .bind(self.media_id)
        .fetch_optional(db)
        .await?
        else {
            // Already ready or failed (a repeat delivery), or swept away.
            return Ok(());
        };
        let kind = match row.get::<String, _>("kind").as_str() {
            "video" => MediaKind::Video,
            _ => MediaKind::Image,
        };
        let media = &ctx.services.media;
        let rendered = match kind {
            MediaKind::Image => thumbnails::render(media, self.media_id).await,
            MediaKind::Video => video::render(media, self.media_id).await,
        };
        match rendered {
            Ok(rendered) => self.ready(&ctx, rendered).await,
            Err(ProcessError::Rejected { code, message }) => {
                tracing::info!(media_id = %self.media_id, code = code.as_str(), %message, "media failed");
                sqlx::query(
                    "UPDATE media SET status = 'failed', error_code = $2, error_message = $3,
                            updated_at = now()
                     WHERE id = $1 AND status = 'processing'",
                )
                .bind(self.media_id)
                .bind(code.as_str())
                .bind(&message)
                .execute(db)
                .await?;
                Ok(())
            }
            Err(ProcessError::Transient(error)) => Err(JobError::retry(error)),
        }
    }
}

impl Transcode {
    async fn ready(&self, ctx: &JobContext, rendered: Rendered) -> Result<(), JobError> {
        let mut tx = ctx.services.begin().await?;
        let r = &rendered.renditions;
        sqlx::query(
            "INSERT INTO media_renditions (media_id, name, content_type, width, height, bytes)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::int[], $6::bigint[])
             ON CONFLICT (media_id, name) DO UPDATE
                SET content_type = EXCLUDED.content_type, width = EXCLUDED.width,
                    height = EXCLUDED.height, bytes = EXCLUDED.bytes",
        )
        .bind(self.media_id)
        .bind(r.iter().map(|r| r.name).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.content_type).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.width as i32).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.height as i32).collect::<Vec<_>>())
        .bind(r.iter().map(|r| r.bytes as i64).collect::<Vec<_>>())
        .execute(tx.conn())
        .await?;
        let owner: Option<(Uuid, String)> = sqlx::query_as(
            "UPDATE media SET status = 'ready', width = $2, height = $3, duration_ms = $4,
                    error_code = NULL, error_message = NULL, updated_at = now()
             WHERE id = $1 AND status = 'processing'
             RETURNING owner_id, kind",
        )
        .bind(self.media_id)
        .bind(rendered.width as i32)
        .bind(rendered.height as i32)
        .bind(rendered.duration_ms)
        .fetch_optional(tx.conn())
        .await?;
        if let Some((owner, kind)) = owner {
            let what = if kind == "video" { "video" } else { "photo" };
            notify(
                &mut tx,
                Notification::new(
                    owner,
                    Category::Social,
                    format!("Your {what} is ready"),
                    format!("Your {what} has been processed and can be posted."),
                )
                .data(serde_json::json!({ "media_id": self.media_id, "kind": kind })),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
