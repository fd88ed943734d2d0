//! `notify.deliver` (one notification) and `notify.deliver_batch` (up to [`BATCH`], what
//! `notify_many` enqueues for bulk sends): each notification to every target it has (each
//! enabled device, the user's email address). Three statements per run, whatever the batch
//! size: read the notifications with their users' preferences and devices; plan the delivery
//! rows (inserted once, `ON CONFLICT DO NOTHING`) and read back those still to send; record
//! every send's outcome. A re-run (retry, crash) sends only what is still `pending`, or
//! `deferred` and due, with the same send id.
//!
//! Outcomes: category off → `skipped`; no credentials for a provider → `skipped` ("provider
//! not configured"); suppressed address → `skipped`; push during quiet hours → `deferred` and
//! this job enqueued again for the end of the window (email is not held back: it does not
//! ring). Invalid token → device disabled, delivery `failed`. 429/5xx/network → the job
//! retries no sooner than the provider asked, and the last attempt marks the rows `failed`.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, NaiveTime, Utc};
use futures::{StreamExt, future::join_all, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use super::{
    Category, EmailSpec,
    email::{MailOutcome, Outgoing},
    preferences::{Categories, QuietHours, zone},
    push::{PushMessage, PushOutcome},
};
use crate::{
    job::{Backoff, Job, JobContext, JobError, Policy},
    outbox::{JobTx, RunAt},
    queue::Queue,
};

/// Delivers one notification on every channel it has.
#[derive(Debug, Serialize, Deserialize)]
pub struct Deliver {
    pub notification_id: Uuid,
}

impl Job for Deliver {
    const KIND: &'static str = "notify.deliver";
    const QUEUE: Queue = Queue::Notify;
    const POLICY: Policy = Policy {
        max_attempts: 8,
        timeout: Duration::from_secs(60),
        backoff: Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(600),
        },
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        deliver(&ctx, &[self.notification_id]).await
    }
}

/// Notifications per `notify.deliver_batch`: Postgres work per notification falls with the
/// batch (three statements for all of them), while one slow provider answer holds back at
/// most this many.
pub const BATCH: usize = 100;

/// Delivers several notifications in one run (bulk sends: settlements, digests, reminders).
/// A transient failure of any send retries the batch; the re-run sends only what is left.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeliverBatch {
    pub notification_ids: Vec<Uuid>,
}

impl Job for DeliverBatch {
    const KIND: &'static str = "notify.deliver_batch";
    const QUEUE: Queue = Queue::Notify;
    const POLICY: Policy = Deliver::POLICY;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        deliver(&ctx, &self.notification_ids).await
    }
}

/// Push outlives a deferral or a provider outage by this much before the provider drops it.
const PUSH_LIFETIME: chrono::Duration = chrono::Duration::days(1);
const NOT_CONFIGURED: &str = "provider not configured";
/// Emails one run sends at once: lettre's default SMTP pool size.
const EMAILS_IN_FLIGHT: usize = 10;

/// A delivery row to insert if it does not exist yet.
struct Planned {
    notification_id: Uuid,
    channel: &'static str,
    target: String,
    status: &'static str,
    detail: Option<String>,
    deferred_until: Option<DateTime<Utc>>,
}

/// A delivery row as the send step sees it.
struct Row_ {
    id: Uuid,
    notification_id: Uuid,
    channel: String,
    target: String,
    send_id: String,
    status: String,
    deferred_until: Option<DateTime<Utc>>,
    inserted: bool,
    app_id: Option<String>,
    sandbox: bool,
    device_enabled: Option<bool>,
}

/// What a send came to: the row's new status and detail, and a device to disable.
struct Settled {
    id: Uuid,
    status: &'static str,
    detail: Option<String>,
    disable: Option<String>,
    retry_after: Option<Option<Duration>>,
}

/// What a send needs of its notification.
struct Message {
    user_id: Uuid,
    title: String,
    body: String,
    data: Value,
    created_at: DateTime<Utc>,
    email: Option<EmailSpec>,
    handle: Option<String>,
}

async fn deliver(ctx: &JobContext, notification_ids: &[Uuid]) -> Result<(), JobError> {
    let services = &ctx.services;
    let providers = &services.notify;
    let found = sqlx::query(
        "SELECT n.id, n.user_id, n.category, n.title, n.body, n.data, n.push, n.email,
                n.created_at, u.email AS address, u.handle, u.timezone,
                p.categories, p.quiet_start, p.quiet_end, now() AS now,
                EXISTS (SELECT 1 FROM email_suppressions s WHERE s.email = lower(u.email))
                    AS suppressed,
                COALESCE((SELECT array_agg(d.token || ' ' || d.platform) FROM devices d
                          WHERE d.user_id = n.user_id AND d.enabled), '{}') AS devices
         FROM notifications n
         LEFT JOIN users u ON u.id = n.user_id
         LEFT JOIN notification_preferences p ON p.user_id = n.user_id
         WHERE n.id = ANY($1)",
    )
    .bind(notification_ids)
    .fetch_all(&services.db)
    .await?;
    if found.len() < notification_ids.len() {
        let missing = notification_ids.len() - found.len();
        if found.is_empty() {
            return Err(JobError::fail(format!(
                "notification {} does not exist",
                notification_ids[0]
            )));
        }
        tracing::warn!(missing, "notifications of the batch no longer exist");
    }
    let Some(now) = found.first().map(|n| n.get::<DateTime<Utc>, _>("now")) else {
        return Ok(());
    };

    let mut plan = Vec::new();
    let mut messages = HashMap::new();
    for n in &found {
        let notification_id: Uuid = n.get("id");
        let email = plan_notification(providers, n, now, &mut plan);
        messages.insert(
            notification_id,
            Message {
                user_id: n.get("user_id"),
                title: n.get("title"),
                body: n.get("body"),
                data: n.get("data"),
                created_at: n.get("created_at"),
                email,
                handle: n.get("handle"),
            },
        );
    }
    if plan.is_empty() {
        return Ok(());
    }

    let rows = record_plan(ctx, &plan).await?;
    let due = rows.iter().filter(|r| {
        r.status == "pending"
            || (r.status == "deferred" && r.deferred_until.is_some_and(|t| t <= now))
    });
    // Pushes are streams on one HTTP/2 connection per provider: all at once. Each email needs
    // an SMTP connection of its own for the whole conversation; more at once than the
    // transport's pool only opens connections the server may refuse.
    let (emails, pushes): (Vec<&Row_>, Vec<&Row_>) = due.partition(|r| r.channel == "email");
    // Futures built up front: a closure inside the stream trips rustc's `Send` check of the
    // job's future (rust-lang/rust#102211).
    let pushes: Vec<_> = pushes
        .into_iter()
        .map(|r| send(ctx, &messages, r))
        .collect();
    let emails: Vec<_> = emails
        .into_iter()
        .map(|r| send(ctx, &messages, r))
        .collect();
    let (mut settled, emailed) = futures::join!(
        join_all(pushes),
        stream::iter(emails)
            .buffer_unordered(EMAILS_IN_FLIGHT)
            .collect::<Vec<_>>()
    );
    settled.extend(emailed);
    record_outcomes(ctx, &settled).await
}

/// One send of one delivery row, and what it came to.
async fn send(ctx: &JobContext, messages: &HashMap<Uuid, Message>, row: &Row_) -> Settled {
    let providers = &ctx.services.notify;
    let n = &messages[&row.notification_id];
    let message = PushMessage {
        title: &n.title,
        body: &n.body,
        data: &n.data,
        notification_id: row.notification_id,
        send_id: &row.send_id,
        expires_at: (row.deferred_until.unwrap_or(n.created_at) + PUSH_LIFETIME).timestamp(),
    };
    let outcome = match row.channel.as_str() {
        "email" => {
            let spec = n
                .email
                .as_ref()
                .expect("an email row comes from an email spec");
            return send_email(ctx, row, spec, n.user_id, n.handle.clone()).await;
        }
        _ if row.device_enabled != Some(true) => {
            PushOutcome::Failed("device disabled or removed".into())
        }
        "apns" => match &providers.apns {
            Some(apns) => {
                apns.send(&row.target, row.sandbox, row.app_id.as_deref(), &message)
                    .await
            }
            None => return skipped(row.id),
        },
        _ => match &providers.fcm {
            Some(fcm) => fcm.send(&row.target, &message).await,
            None => return skipped(row.id),
        },
    };
    settle_push(row, outcome)
}

/// Adds one notification's delivery rows to `plan` (its devices when it pushes, its user's
/// address when it emails) and returns its email spec.
fn plan_notification(
    providers: &super::Providers,
    n: &sqlx::postgres::PgRow,
    now: DateTime<Utc>,
    plan: &mut Vec<Planned>,
) -> Option<EmailSpec> {
    let notification_id: Uuid = n.get("id");
    let category: Option<Category> = serde_json::from_value(Value::String(n.get("category"))).ok();
    let allowed = category
        .is_none_or(|c| Categories::from_json(n.get::<Option<Value>, _>("categories")).allows(c));
    let quiet_until = match (
        n.get::<Option<NaiveTime>, _>("quiet_start"),
        n.get::<Option<NaiveTime>, _>("quiet_end"),
    ) {
        (Some(start), Some(end)) => QuietHours { start, end }
            .deferred_until(now, zone(n.get::<Option<String>, _>("timezone").as_deref())),
        _ => None,
    };
    if n.get::<bool, _>("push") {
        for device in n.get::<Vec<String>, _>("devices") {
            let (token, platform) = device.rsplit_once(' ').expect("token and platform");
            let configured = match platform {
                "apns" => providers.apns.is_some(),
                _ => providers.fcm.is_some(),
            };
            let channel = if platform == "apns" { "apns" } else { "fcm" };
            plan.push(decide(
                notification_id,
                channel,
                token,
                allowed,
                configured,
                quiet_until,
            ));
        }
    }
    let email: Option<EmailSpec> = n
        .get::<Option<Value>, _>("email")
        .and_then(|v| serde_json::from_value(v).ok());
    let address: Option<String> = n.get("address");
    if email.is_some() {
        let mut row = decide(
            notification_id,
            "email",
            address.as_deref().unwrap_or(""),
            allowed,
            true,
            None,
        );
        if address.is_none() {
            (row.status, row.detail) = ("skipped", Some("no email address".into()));
        } else if row.status == "pending" && n.get::<bool, _>("suppressed") {
            (row.status, row.detail) = ("skipped", Some("address suppressed".into()));
        }
        plan.push(row);
    }
    email
}

fn decide(
    notification_id: Uuid,
    channel: &'static str,
    target: &str,
    allowed: bool,
    configured: bool,
    quiet_until: Option<DateTime<Utc>>,
) -> Planned {
    let (status, detail, deferred_until) = if !allowed {
        ("skipped", Some("category off".to_owned()), None)
    } else if !configured {
        ("skipped", Some(NOT_CONFIGURED.to_owned()), None)
    } else if let Some(until) = quiet_until {
        (
            "deferred",
            Some(format!("quiet hours until {}", until.to_rfc3339())),
            Some(until),
        )
    } else {
        ("pending", None, None)
    };
    Planned {
        notification_id,
        channel,
        target: target.to_owned(),
        status,
        detail,
        deferred_until,
    }
}

/// Inserts the planned rows that do not exist yet and returns every row of the notifications.
/// A notification with new deferred rows enqueues `notify.deliver` again for the end of its
/// quiet hours, in the same transaction, so a crash cannot leave a deferral without its wake-up.
async fn record_plan(ctx: &JobContext, plan: &[Planned]) -> Result<Vec<Row_>, JobError> {
    let mut notification_ids: Vec<Uuid> = plan.iter().map(|p| p.notification_id).collect();
    notification_ids.dedup();
    let mut tx = JobTx::begin(&ctx.services).await?;
    let rows = sqlx::query(
        "WITH plan AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::timestamptz[])
                 AS p(id, notification_id, channel, target, status, detail, deferred_until)
         ), inserted AS (
             INSERT INTO notification_deliveries
                 (id, notification_id, channel, target, send_id, status, detail, deferred_until)
             SELECT id, notification_id, channel, target, notification_id::text, status, detail,
                    deferred_until
             FROM plan
             ON CONFLICT (notification_id, channel, target) DO NOTHING
             RETURNING id, notification_id, channel, target, send_id, status, deferred_until,
                       true AS inserted
         ), known AS (
             -- The statement's snapshot does not see the rows inserted above: no overlap.
             SELECT id, notification_id, channel, target, send_id, status, deferred_until,
                    false AS inserted
             FROM notification_deliveries WHERE notification_id = ANY($8)
         )
         SELECT r.*, d.app_id, d.environment = 'sandbox' AS sandbox, d.enabled AS device_enabled
         FROM (SELECT * FROM inserted UNION ALL SELECT * FROM known) r
         LEFT JOIN devices d ON r.channel <> 'email' AND d.token = r.target",
    )
    .bind(plan.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(plan.iter().map(|p| p.notification_id).collect::<Vec<_>>())
    .bind(plan.iter().map(|p| p.channel).collect::<Vec<_>>())
    .bind(plan.iter().map(|p| p.target.as_str()).collect::<Vec<_>>())
    .bind(plan.iter().map(|p| p.status).collect::<Vec<_>>())
    .bind(plan.iter().map(|p| p.detail.as_deref()).collect::<Vec<_>>())
    .bind(plan.iter().map(|p| p.deferred_until).collect::<Vec<_>>())
    .bind(&notification_ids)
    .fetch_all(tx.conn())
    .await?;
    let rows: Vec<Row_> = rows
        .iter()
        .map(|r| Row_ {
            id: r.get("id"),
            notification_id: r.get("notification_id"),
            channel: r.get("channel"),
            target: r.get("target"),
            send_id: r.get("send_id"),
            status: r.get("status"),
            deferred_until: r.get("deferred_until"),
            inserted: r.get("inserted"),
            app_id: r.get("app_id"),
            sandbox: r.get::<Option<bool>, _>("sandbox").unwrap_or(false),
            device_enabled: r.get("device_enabled"),
        })
        .collect();
    // Each notification wakes at its latest new deferral.
    let mut wake_ups: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    for row in rows.iter().filter(|r| r.inserted) {
        if let Some(at) = row.deferred_until {
            let wake = wake_ups.entry(row.notification_id).or_insert(at);
            *wake = (*wake).max(at);
        }
    }
    for (notification_id, at) in wake_ups {
        tx.enqueue_at(&Deliver { notification_id }, RunAt::At(at))
            .await?;
    }
    tx.commit().await?;
    Ok(rows)
}

fn skipped(id: Uuid) -> Settled {
    Settled {
        id,
        status: "skipped",
        detail: Some(NOT_CONFIGURED.into()),
        disable: None,
        retry_after: None,
    }
}

fn settle_push(row: &Row_, outcome: PushOutcome) -> Settled {
    metrics::counter!("groundcrew_notify_sends_total", "channel" => row.channel.clone(),
    "outcome" => match &outcome {
        PushOutcome::Sent => "sent",
        PushOutcome::InvalidToken(_) => "invalid_token",
        PushOutcome::Retry { .. } => "retry",
        PushOutcome::Failed(_) => "failed",
    })
    .increment(1);
    let mut settled = Settled {
        id: row.id,
        status: "failed",
        detail: None,
        disable: None,
        retry_after: None,
    };
    match outcome {
        PushOutcome::Sent => settled.status = "sent",
        PushOutcome::InvalidToken(detail) => {
            settled.disable = Some(row.target.clone());
            settled.detail = Some(detail);
        }
        PushOutcome::Retry { detail, after } => {
            settled.status = "pending";
            settled.detail = Some(detail);
            settled.retry_after = Some(after);
        }
        PushOutcome::Failed(detail) => settled.detail = Some(detail),
    }
    settled
}

async fn send_email(
    ctx: &JobContext,
    row: &Row_,
    spec: &EmailSpec,
    user_id: Uuid,
    handle: Option<String>,
) -> Settled {
    let mailer = &ctx.services.notify.mailer;
    let unsubscribe_url = mailer.unsubscribe_url(user_id);
    let mut vars = json!({"handle": handle, "email": row.target});
    if let (Some(vars), Some(given)) = (vars.as_object_mut(), spec.vars.as_object()) {
        vars.extend(given.clone());
        vars.insert("unsubscribe_url".into(), json!(unsubscribe_url));
    }
    let outgoing = Outgoing {
        to: &row.target,
        send_id: &row.send_id,
        template: &spec.template,
        vars: &vars,
    };
    let outcome = match mailer.build(&outgoing, &unsubscribe_url) {
        Ok(message) => mailer.send(message).await,
        Err(detail) => MailOutcome::Failed(detail),
    };
    metrics::counter!("groundcrew_notify_sends_total", "channel" => "email",
    "outcome" => match &outcome {
        MailOutcome::Sent => "sent",
        MailOutcome::Retry(_) => "retry",
        MailOutcome::Failed(_) => "failed",
    })
    .increment(1);
    let (status, detail, retry_after) = match outcome {
        MailOutcome::Sent => ("sent", None, None),
        MailOutcome::Retry(detail) => ("pending", Some(detail), Some(None)),
        MailOutcome::Failed(detail) => ("failed", Some(detail), None),
    };
    Settled {
        id: row.id,
        status,
        detail,
        disable: None,
        retry_after,
    }
}

/// Writes every outcome in one statement, disables dead tokens, and turns transient failures
/// into a retry of the job (the last attempt marks them failed instead).
async fn record_outcomes(ctx: &JobContext, settled: &[Settled]) -> Result<(), JobError> {
    if settled.is_empty() {
        return Ok(());
    }
    let last_attempt = ctx.attempt >= ctx.max_attempts;
    let status = |s: &Settled| {
        if s.status == "pending" && last_attempt {
            "failed"
        } else {
            s.status
        }
    };
    sqlx::query(
        "UPDATE notification_deliveries d
         SET status = o.status, detail = o.detail, attempts = d.attempts + 1, updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS o(id, status, detail)
         WHERE d.id = o.id",
    )
    .bind(settled.iter().map(|s| s.id).collect::<Vec<_>>())
    .bind(settled.iter().map(status).collect::<Vec<_>>())
    .bind(
        settled
            .iter()
            .map(|s| s.detail.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&ctx.services.db)
    .await?;
    let dead: Vec<(&str, &str)> = settled
        .iter()
        .filter_map(|s| Some((s.disable.as_deref()?, s.detail.as_deref().unwrap_or(""))))
        .collect();
    if !dead.is_empty() {
        sqlx::query(
            "UPDATE devices d SET enabled = false, disabled_reason = o.reason, updated_at = now()
             FROM unnest($1::text[], $2::text[]) AS o(token, reason)
             WHERE d.token = o.token",
        )
        .bind(dead.iter().map(|d| d.0).collect::<Vec<_>>())
        .bind(dead.iter().map(|d| d.1).collect::<Vec<_>>())
        .execute(&ctx.services.db)
        .await?;
    }
    let retries: Vec<&Settled> = settled.iter().filter(|s| s.retry_after.is_some()).collect();
    let Some(first) = retries.first() else {
        return Ok(());
    };
    let error = format!(
        "{} of {} sends to retry: {}",
        retries.len(),
        settled.len(),
        first.detail.as_deref().unwrap_or("")
    );
    if last_attempt {
        return Err(JobError::fail(error));
    }
    Err(JobError::Retry {
        error,
        after: retries.iter().filter_map(|s| s.retry_after.flatten()).max(),
    })
}
