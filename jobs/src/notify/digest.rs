//! The weekly email digest: each user with an email address, `email_digest = weekly` (the
//! default) and something new in the past seven days gets one `weekly_digest` email listing
//! it. Run by the scheduler on Mondays; users are claimed per (user, week) in
//! `email_digests` in the same transaction as their digest, in batches, so a re-run or an
//! overlapping run sends nobody a second digest for the week.

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::{
    job::{Job, JobContext, JobError},
    notify::{Category, Notification, notify_many},
    outbox::JobTx,
    queue::Queue,
};

/// Users per transaction.
const BATCH: i64 = 500;
/// Most updates listed in one digest (the newest).
const MAX_ITEMS: i64 = 20;
/// What marks a notification as a digest, so digests never list digests.
const DIGEST_MARK: &str = "weekly_digest";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SendWeeklyDigests {}

impl Job for SendWeeklyDigests {
    const KIND: &'static str = "notify.weekly_digests";
    const QUEUE: Queue = Queue::Notify;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        while send_batch(&ctx).await? == BATCH as usize {}
        Ok(())
    }
}

/// Claims up to `BATCH` users due a digest this week and records their digests; returns how
/// many it claimed.
async fn send_batch(ctx: &JobContext) -> Result<usize, sqlx::Error> {
    let mut tx = JobTx::begin(&ctx.services).await?;
    let claimed: Vec<(Uuid, String, chrono::NaiveDate)> = sqlx::query_as(
        "WITH due AS (
             SELECT u.id FROM users u
             LEFT JOIN notification_preferences p ON p.user_id = u.id
             WHERE u.email IS NOT NULL AND coalesce(p.email_digest, 'weekly') = 'weekly'
               AND EXISTS (SELECT 1 FROM notifications n
                           WHERE n.user_id = u.id AND n.created_at > now() - interval '7 days'
                             AND n.data->>'digest' IS NULL)
               AND NOT EXISTS (SELECT 1 FROM email_digests d
                               WHERE d.user_id = u.id AND d.week_of = date_trunc('week', now())::date)
             ORDER BY u.id LIMIT $1)
         INSERT INTO email_digests (user_id, week_of)
         SELECT id, date_trunc('week', now())::date FROM due
         ON CONFLICT DO NOTHING
         RETURNING user_id, (SELECT handle FROM users WHERE id = user_id), week_of",
    )
    .bind(BATCH)
    .fetch_all(tx.conn())
    .await?;
    let users: Vec<Uuid> = claimed.iter().map(|(id, ..)| *id).collect();
    let items: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT user_id, title, body FROM (
             SELECT user_id, title, body, id,
                    row_number() OVER (PARTITION BY user_id ORDER BY id DESC) AS newest
             FROM notifications
             WHERE user_id = ANY($1) AND created_at > now() - interval '7 days'
               AND data->>'digest' IS NULL) n
         WHERE newest <= $2 ORDER BY user_id, id DESC",
    )
    .bind(&users)
    .bind(MAX_ITEMS)
    .fetch_all(tx.conn())
    .await?;
    let digests = claimed
        .iter()
        .map(|(user, handle, week_of)| {
            let listed: Vec<_> = items
                .iter()
                .filter(|(owner, ..)| owner == user)
                .map(|(_, title, body)| json!({"title": title, "body": body}))
                .collect();
            let count = listed.len();
            Notification::new(
                *user,
                Category::Social,
                "Your week",
                format!("{count} update{}", if count == 1 { "" } else { "s" }),
            )
            .data(json!({"digest": DIGEST_MARK, "week_of": week_of}))
            .email("weekly_digest", json!({"handle": handle, "items": listed}))
            .without_push()
        })
        .collect();
    notify_many(&mut tx, digests).await?;
    tx.commit().await?;
    Ok(claimed.len())
}
