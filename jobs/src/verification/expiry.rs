//! Expiry a year after verification: a reminder 30 days before (once per verification), and
//! the badge taken from users whose last live verification has expired. Run by the scheduler;
//! each pass handles a bounded batch and a busy table catches up over the next ticks.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    job::{Job, JobContext, JobError},
    notify::{Category, Notification, notify_many},
    outbox::JobTx,
    queue::Queue,
};

const BATCH: i64 = 1000;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SweepExpiry {}

impl Job for SweepExpiry {
    const KIND: &'static str = "verification.sweep_expiry";
    const QUEUE: Queue = Queue::Verification;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = JobTx::begin(&ctx.services).await?;
        let reminded: Vec<(Uuid, Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "UPDATE verifications SET reminder_sent_at = now()
             WHERE id IN (
                 SELECT id FROM verifications
                 WHERE status = 'verified' AND expired_at IS NULL AND reminder_sent_at IS NULL
                   AND expires_at > now() AND expires_at <= now() + interval '30 days'
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, user_id, expires_at",
        )
        .bind(BATCH)
        .fetch_all(tx.conn())
        .await?;
        let reminders = reminded
            .iter()
            .map(|(id, user, expires_at)| {
                let vars = serde_json::json!({
                    "verification_id": id,
                    "expires_on": expires_at.date_naive().to_string(),
                });
                Notification::new(
                    *user,
                    Category::Verification,
                    "Your verification expires soon",
                    format!(
                        "Verify again before {} to keep your badge.",
                        expires_at.date_naive()
                    ),
                )
                .data(vars.clone())
                .email("reverification_reminder", vars)
            })
            .collect();
        notify_many(&mut tx, reminders).await?;
        let expired_users: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE verifications SET expired_at = now()
             WHERE id IN (
                 SELECT id FROM verifications
                 WHERE status = 'verified' AND expired_at IS NULL AND expires_at <= now()
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING user_id",
        )
        .bind(BATCH)
        .fetch_all(tx.conn())
        .await?;
        // A user keeps each flag while another live verification still grants it.
        sqlx::query(
            "UPDATE users u SET
                 verified = EXISTS (SELECT 1 FROM verifications v WHERE v.user_id = u.id
                     AND v.status = 'verified' AND v.expired_at IS NULL AND v.expires_at > now()),
                 age_verified = EXISTS (SELECT 1 FROM verifications v WHERE v.user_id = u.id
                     AND v.status = 'verified' AND v.expired_at IS NULL AND v.expires_at > now()
                     AND v.kind = 'age' AND v.adult),
                 updated_at = now()
             WHERE u.id = ANY($1)",
        )
        .bind(&expired_users)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        if !reminded.is_empty() || !expired_users.is_empty() {
            tracing::info!(
                reminded = reminded.len(),
                expired = expired_users.len(),
                "verification expiry sweep"
            );
        }
        Ok(())
    }
}
