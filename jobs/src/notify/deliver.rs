//! `notify.deliver` (one notification) and `notify.deliver_batch` (up to [`BATCH`], what
//! `notify_many` enqueues for bulk sends): each notification to every target it has (each
//! enabled device, the user's email address). At most three statements per run, whatever the
//! batch size: read the notifications with their users' preferences and devices, then the
//! delivery rows they already have (unless the run is the first delivery of new notifications,
//! which have none); after the sends, write every row's outcome (in one transaction with the
//! wake-ups of new deferrals and the disabling of dead tokens when there are any).
//!
//! A delivery row is written once its outcome is known, not before the send: a run that dies
//! between its sends and the write leaves no row, and the re-run sends again with the same
//! send id (the collapse id), exactly what a row left `pending` would have led to. Writing the
//! row once instead of inserting it `pending` and updating it halves the Postgres writes per
//! push. A re-run (retry, crash) sends only targets without a row, rows still `pending`, and
//! rows `deferred` and due; a row once `sent` is never written over.
//!
//! Outcomes: category off → `skipped`; no credentials for a provider → `skipped` ("provider
//! not configured"); suppressed address → `skipped`; push during quiet hours → `deferred` and
//! this job enqueued again for the end of the window (email is not held back: it does not
//! ring). Invalid token → device disabled, delivery `failed`. 429/5xx/network → the job
//! retries no sooner than the provider asked, and the last attempt marks the rows `failed`.
//! An email that finds every SMTP connection busy for the whole wait stays `pending`, and a
//! new job sends it (no attempt spent: nothing failed).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, NaiveTime, Utc};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgConnection, Row, postgres::PgRow};
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
    /// See [`DeliverBatch::first_delivery`].
    #[serde(default)]
    pub first_delivery: bool,
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
        deliver(&ctx, &[self.notification_id], self.first_delivery).await
    }
}

/// Notifications per `notify.deliver_batch`. Postgres spends ~360 µs of CPU on a batch
/// whatever its size (two statements and a commit, which flushes the WAL): 3.6 µs a push at
/// 100 notifications, 0.9 at 400 (bench_notify, Postgres's CPU per push 12.9 → 11.1 → 9.4 µs
/// at 100, 200, 400). Against that, one slow provider answer holds back the rows of at most
/// this many, and a killed worker's repeats (each with its collapse id) are at most its
/// concurrency × this many.
pub const BATCH: usize = 400;

/// Delivers several notifications in one run (bulk sends: settlements, digests, reminders).
/// A transient failure of any send retries the batch; the re-run sends only what is left.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeliverBatch {
    pub notification_ids: Vec<Uuid>,
    /// Enqueued by `notify` with its notifications, which no other job delivers: a first run
    /// of this job (`JobContext::first_run`) finds no delivery rows, and does not read them.
    /// False (jobs enqueued before the field existed too) for wake-ups of deferrals and
    /// continued emails.
    #[serde(default)]
    pub first_delivery: bool,
}

impl Job for DeliverBatch {
    const KIND: &'static str = "notify.deliver_batch";
    const QUEUE: Queue = Queue::Notify;
    // A batch's sends queue behind the process's other batches for a connection's streams
    // (`http2::Host`): a pool of 64 batches of 400 behind a provider answering 500 pushes a
    // second takes 51 s, near a single delivery's 60.
    const POLICY: Policy = Policy {
        timeout: Duration::from_secs(300),
        ..Deliver::POLICY
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        deliver(&ctx, &self.notification_ids, self.first_delivery).await
    }
}

/// Push outlives a deferral or a provider outage by this much before the provider drops it.
const PUSH_LIFETIME: chrono::Duration = chrono::Duration::days(1);
const NOT_CONFIGURED: &str = "provider not configured";

/// A delivery this run sends.
struct Due {
    notification_id: Uuid,
    channel: &'static str,
    target: String,
    send_id: String,
    deferred_until: Option<DateTime<Utc>>,
    app_id: Option<String>,
    sandbox: bool,
    /// The delivery row existed when this run read it.
    existed: bool,
}

/// A delivery row as this run leaves it: inserted, or written over when it exists.
struct Outcome {
    notification_id: Uuid,
    channel: &'static str,
    target: String,
    status: &'static str,
    detail: Option<String>,
    deferred_until: Option<DateTime<Utc>>,
    /// Whether this run sent (or tried to): counted in the row's `attempts`.
    attempted: bool,
    /// The provider said the device token is dead.
    dead_token: bool,
    /// Transient failure: `Some(the delay the provider asked for)`.
    retry_after: Option<Option<Duration>>,
    /// Not tried for want of a free SMTP connection: a later job continues it.
    continued: bool,
    /// The row existed when this run read it: written over (unless `sent`), not inserted.
    existed: bool,
}

impl Outcome {
    /// A decision made without sending, for a target without a row.
    fn decided(
        notification_id: Uuid,
        channel: &'static str,
        target: &str,
        status: &'static str,
        detail: String,
    ) -> Self {
        Outcome {
            notification_id,
            channel,
            target: target.to_owned(),
            status,
            detail: Some(detail),
            deferred_until: None,
            attempted: false,
            dead_token: false,
            retry_after: None,
            continued: false,
            existed: false,
        }
    }
}

/// A delivery row the notification already has.
#[derive(sqlx::FromRow)]
struct Existing {
    status: String,
    deferred_until: Option<DateTime<Utc>>,
    send_id: String,
}

/// A delivery row as the run reads it, with its key.
#[derive(sqlx::FromRow)]
struct ExistingRow {
    notification_id: Uuid,
    channel: String,
    target: String,
    #[sqlx(flatten)]
    row: Existing,
}

/// A notification as the run reads it, with what its user set and has.
struct Found {
    id: Uuid,
    user_id: Uuid,
    category: String,
    title: String,
    body: String,
    data: Value,
    push: bool,
    email: Option<Value>,
    created_at: DateTime<Utc>,
    address: Option<String>,
    handle: Option<String>,
    timezone: Option<String>,
    categories: Option<Value>,
    quiet_start: Option<NaiveTime>,
    quiet_end: Option<NaiveTime>,
    now: DateTime<Utc>,
    suppressed: bool,
    /// The user's enabled devices when the notification pushes.
    devices: Vec<Device>,
}

/// One row of the read: a notification with one device, or with none (no device columns).
struct FoundRow {
    notification: Found,
    token: Option<String>,
    platform: Option<String>,
    app_id: Option<String>,
    sandbox: Option<bool>,
}

// The read: one row per (notification, enabled device), the delivery rows by a second
// statement. Postgres spends 6.1 µs per notification on the two where it spent 7.7
// aggregating devices and rows into arrays per notification (two LATERAL array_agg
// subqueries), 8.9 instead of 12.2 µs when each has a row (backend CPU, batches of 100).
// Both look up each notification's rows by index in a LATERAL subquery that `OFFSET 0` keeps
// from being flattened into a join: as a join, tables without statistics yet (new, or filled
// since autovacuum last ran) were hash-joined against a full scan of `devices` and of
// `notification_deliveries` for every batch, and Postgres took 77 % of the machine
// (bench_notify: 9.4k push/s against 18.6k).
// The ids are compared with `ANY` of an InitPlan's array, not of `$1` itself: with `$1`,
// each of a connection's first five runs was planned for its 100 literal ids, and priced
// against 100 index probes Postgres chose to read `notifications` in full (2 ms of 2.4 a
// batch at 20,000 notifications). On a pool of 20 fresh connections that was half the
// batches of a 20,000-push run: 8–10 ms a batch on average in Postgres, 1.3–1.4 now.
// Behind the InitPlan every plan looks the ids up, and after five runs the plan is kept,
// not made again.
// The user's row is looked up only for what needs it, an email (address, handle) or quiet
// hours (time zone): a push-only notification to a user without quiet hours, a bulk send's
// usual case, skips the probe (a One-Time Filter on the fenced subquery).
const READ_NOTIFICATIONS: &str =
    "SELECT n.id, n.user_id, n.category, n.title, n.body, n.data, n.push, n.email,
            n.created_at, u.email AS address, u.handle, u.timezone,
            p.categories, p.quiet_start, p.quiet_end, now() AS now,
            n.email IS NOT NULL AND EXISTS (
                SELECT 1 FROM email_suppressions s WHERE s.email = lower(u.email))
                AS suppressed,
            d.token, d.platform, d.app_id, d.sandbox
     FROM notifications n
     LEFT JOIN notification_preferences p ON p.user_id = n.user_id
     LEFT JOIN LATERAL (
         SELECT u.email, u.handle, u.timezone FROM users u
         WHERE (n.email IS NOT NULL OR p.quiet_start IS NOT NULL) AND u.id = n.user_id
         OFFSET 0) u ON true
     LEFT JOIN LATERAL (
         SELECT d.token, d.platform, d.app_id, d.environment = 'sandbox' AS sandbox
         FROM devices d WHERE n.push AND d.user_id = n.user_id AND d.enabled OFFSET 0) d
         ON true
     WHERE n.id = ANY(COALESCE((SELECT $1::uuid[]), '{}'))";

impl sqlx::FromRow<'_, PgRow> for FoundRow {
    /// By position, in the order of [`READ_NOTIFICATIONS`]'s columns (types are still checked):
    /// by name, each of a row's 21 columns was looked up in a map, a third of sqlx's CPU in a
    /// push run.
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(FoundRow {
            notification: Found {
                id: row.try_get(0)?,
                user_id: row.try_get(1)?,
                category: row.try_get(2)?,
                title: row.try_get(3)?,
                body: row.try_get(4)?,
                data: row.try_get(5)?,
                push: row.try_get(6)?,
                email: row.try_get(7)?,
                created_at: row.try_get(8)?,
                address: row.try_get(9)?,
                handle: row.try_get(10)?,
                timezone: row.try_get(11)?,
                categories: row.try_get(12)?,
                quiet_start: row.try_get(13)?,
                quiet_end: row.try_get(14)?,
                now: row.try_get(15)?,
                suppressed: row.try_get(16)?,
                devices: Vec::new(),
            },
            token: row.try_get(17)?,
            platform: row.try_get(18)?,
            app_id: row.try_get(19)?,
            sandbox: row.try_get(20)?,
        })
    }
}

struct Device {
    token: String,
    platform: String,
    app_id: Option<String>,
    sandbox: bool,
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

async fn deliver(
    ctx: &JobContext,
    notification_ids: &[Uuid],
    first_delivery: bool,
) -> Result<(), JobError> {
    let services = &ctx.services;
    // Both reads on one connection: sqlx answers a round trip (a ping) for every connection
    // given back to the pool. It goes back before the sends, which take milliseconds.
    let mut conn = services.db.acquire().await?;
    let rows: Vec<FoundRow> = sqlx::query_as(READ_NOTIFICATIONS)
        .bind(notification_ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut found: Vec<Found> = Vec::new();
    let mut position = HashMap::new();
    for row in rows {
        let i = *position.entry(row.notification.id).or_insert_with(|| {
            found.push(row.notification);
            found.len() - 1
        });
        if let (Some(token), Some(platform)) = (row.token, row.platform) {
            found[i].devices.push(Device {
                token,
                platform,
                app_id: row.app_id,
                sandbox: row.sandbox.unwrap_or(false),
            });
        }
    }
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
    let Some(now) = found.first().map(|n| n.now) else {
        return Ok(());
    };
    // Read after the notifications, in a snapshot of its own: a row another run wrote in
    // between only makes the plan more current, and one written after the read is what
    // `record_outcomes` guards against anyway. Not read at all by the first run of the job
    // `notify` enqueued with its notifications: no other job has delivered them, and no run of
    // this one started before (a run handed back at shutdown leaves `first_run` false).
    let delivered: Vec<ExistingRow> = if first_delivery && ctx.first_run {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT x.notification_id, x.channel, x.target, x.status, x.deferred_until, x.send_id
             FROM unnest($1::uuid[]) AS i(id)
             CROSS JOIN LATERAL (
                 SELECT * FROM notification_deliveries x WHERE x.notification_id = i.id OFFSET 0
             ) x",
        )
        .bind(notification_ids)
        .fetch_all(&mut *conn)
        .await?
    };
    drop(conn);
    let mut existing: HashMap<Uuid, HashMap<(String, String), Existing>> = HashMap::new();
    for d in delivered {
        existing
            .entry(d.notification_id)
            .or_default()
            .insert((d.channel, d.target), d.row);
    }

    let (mut dues, mut outcomes) = (Vec::new(), Vec::new());
    let mut messages = HashMap::new();
    for n in found {
        let rows = existing.remove(&n.id).unwrap_or_default();
        let email = plan_notification(&services.notify, &n, rows, now, &mut dues, &mut outcomes);
        messages.insert(
            n.id,
            Message {
                user_id: n.user_id,
                title: n.title,
                body: n.body,
                data: n.data,
                created_at: n.created_at,
                email,
                handle: n.handle,
            },
        );
    }

    // All at once: pushes are streams on one HTTP/2 connection per provider, and each client
    // (the mailer too) caps what it has in flight for the whole process.
    // Collected before the await: a closure held across it trips rustc's `Send` check of the
    // job's future (rust-lang/rust#102211).
    let sends: Vec<_> = dues.iter().map(|d| send(ctx, &messages, d)).collect();
    let sent = join_all(sends).await;
    count_sends(&sent);
    outcomes.extend(sent);
    record_outcomes(ctx, &outcomes).await
}

/// One send of one delivery, and what it came to.
async fn send(ctx: &JobContext, messages: &HashMap<Uuid, Message>, due: &Due) -> Outcome {
    let providers = &ctx.services.notify;
    let n = &messages[&due.notification_id];
    if due.channel == "email" {
        let spec = n
            .email
            .as_ref()
            .expect("an email due comes from an email spec");
        return send_email(ctx, due, spec, n.user_id, n.handle.clone()).await;
    }
    let message = PushMessage {
        title: &n.title,
        body: &n.body,
        data: &n.data,
        notification_id: due.notification_id,
        send_id: &due.send_id,
        expires_at: (due.deferred_until.unwrap_or(n.created_at) + PUSH_LIFETIME).timestamp(),
    };
    let outcome = match due.channel {
        "apns" => match &providers.apns {
            Some(apns) => {
                apns.send(&due.target, due.sandbox, due.app_id.as_deref(), &message)
                    .await
            }
            None => return not_configured(due),
        },
        _ => match &providers.fcm {
            Some(fcm) => fcm.send(&due.target, &message).await,
            None => return not_configured(due),
        },
    };
    settle_push(due, outcome)
}

/// Sorts one notification's targets (its enabled devices when it pushes, its user's address
/// when it emails) into what to send now and what is decided without sending, and returns its
/// email spec. Targets with a row follow the row: `pending` and due `deferred` ones are sent,
/// the rest are done. A row still to send whose device is gone fails.
fn plan_notification(
    providers: &super::Providers,
    n: &Found,
    mut existing: HashMap<(String, String), Existing>,
    now: DateTime<Utc>,
    dues: &mut Vec<Due>,
    outcomes: &mut Vec<Outcome>,
) -> Option<EmailSpec> {
    let notification_id = n.id;
    let category = Category::parse(&n.category);
    let allowed = category.is_none_or(|c| Categories::from_json(n.categories.clone()).allows(c));
    let quiet_until = match (n.quiet_start, n.quiet_end) {
        (Some(start), Some(end)) => {
            QuietHours { start, end }.deferred_until(now, zone(n.timezone.as_deref()))
        }
        _ => None,
    };
    // The row of an email that cannot go out (no address) is written whether it exists or not.
    let no_address_row = existing.contains_key(&("email".to_owned(), String::new()));
    let mut plan = |channel: &'static str, target: &str, device: (Option<String>, bool), new| {
        let due = |send_id: String, deferred_until, existed| Due {
            notification_id,
            channel,
            target: target.to_owned(),
            send_id,
            deferred_until,
            app_id: device.0.clone(),
            sandbox: device.1,
            existed,
        };
        // A first delivery has no rows, and no key to build for each of its targets.
        let row = if existing.is_empty() {
            None
        } else {
            existing.remove(&(channel.to_owned(), target.to_owned()))
        };
        match row {
            Some(row) if still_to_send(&row, now) => {
                dues.push(due(row.send_id, row.deferred_until, true));
            }
            Some(_) => {}
            // A first send's id is its notification's, as the row will store it.
            None => match new {
                Some(outcome) => outcomes.push(outcome),
                None => dues.push(due(notification_id.to_string(), None, false)),
            },
        }
    };

    if n.push {
        for device in &n.devices {
            let channel = channel(&device.platform);
            let configured = match channel {
                "apns" => providers.apns.is_some(),
                _ => providers.fcm.is_some(),
            };
            let new = decide(
                notification_id,
                channel,
                &device.token,
                allowed,
                configured,
                quiet_until,
            );
            plan(
                channel,
                &device.token,
                (device.app_id.clone(), device.sandbox),
                new,
            );
        }
    }
    let email: Option<EmailSpec> = n
        .email
        .as_ref()
        .and_then(|v| EmailSpec::deserialize(v).ok());
    if email.is_some() {
        match &n.address {
            None => outcomes.push(Outcome {
                existed: no_address_row,
                ..Outcome::decided(
                    notification_id,
                    "email",
                    "",
                    "skipped",
                    "no email address".into(),
                )
            }),
            Some(address) => {
                let mut new = decide(notification_id, "email", address, allowed, true, None);
                if new.is_none() && n.suppressed {
                    new = Some(Outcome::decided(
                        notification_id,
                        "email",
                        address,
                        "skipped",
                        "address suppressed".into(),
                    ));
                }
                plan("email", address, (None, false), new);
            }
        }
    }
    for ((name, target), row) in existing {
        if still_to_send(&row, now) {
            let channel = channel(&name);
            let gone = match channel {
                "email" => "email address changed",
                _ => "device disabled or removed",
            };
            outcomes.push(Outcome {
                existed: true,
                ..Outcome::decided(notification_id, channel, &target, "failed", gone.into())
            });
        }
    }
    email
}

/// A channel's name as delivery rows store it (`apns`, `fcm`, `email`; devices' platforms are
/// the first two).
fn channel(name: &str) -> &'static str {
    match name {
        "apns" => "apns",
        "fcm" => "fcm",
        _ => "email",
    }
}

fn still_to_send(row: &Existing, now: DateTime<Utc>) -> bool {
    row.status == "pending"
        || (row.status == "deferred" && row.deferred_until.is_some_and(|t| t <= now))
}

/// A new target's fate: `None` to send it now, or what is decided without sending.
fn decide(
    notification_id: Uuid,
    channel: &'static str,
    target: &str,
    allowed: bool,
    configured: bool,
    quiet_until: Option<DateTime<Utc>>,
) -> Option<Outcome> {
    if !allowed {
        Some(Outcome::decided(
            notification_id,
            channel,
            target,
            "skipped",
            "category off".into(),
        ))
    } else if !configured {
        Some(Outcome::decided(
            notification_id,
            channel,
            target,
            "skipped",
            NOT_CONFIGURED.into(),
        ))
    } else {
        let until = quiet_until?;
        let mut deferred = Outcome::decided(
            notification_id,
            channel,
            target,
            "deferred",
            format!("quiet hours until {}", until.to_rfc3339()),
        );
        deferred.deferred_until = Some(until);
        Some(deferred)
    }
}

fn not_configured(due: &Due) -> Outcome {
    Outcome {
        existed: due.existed,
        ..Outcome::decided(
            due.notification_id,
            due.channel,
            &due.target,
            "skipped",
            NOT_CONFIGURED.into(),
        )
    }
}

/// What was sent, with the outcome still to fill in.
fn attempted(due: &Due, status: &'static str) -> Outcome {
    Outcome {
        notification_id: due.notification_id,
        channel: due.channel,
        target: due.target.clone(),
        status,
        detail: None,
        deferred_until: due.deferred_until,
        attempted: true,
        dead_token: false,
        retry_after: None,
        continued: false,
        existed: due.existed,
    }
}

fn settle_push(due: &Due, outcome: PushOutcome) -> Outcome {
    match outcome {
        PushOutcome::Sent => attempted(due, "sent"),
        PushOutcome::InvalidToken(detail) => Outcome {
            detail: Some(detail),
            dead_token: true,
            ..attempted(due, "failed")
        },
        PushOutcome::Retry { detail, after } => Outcome {
            detail: Some(detail),
            retry_after: Some(after),
            ..attempted(due, "pending")
        },
        PushOutcome::Failed(detail) => Outcome {
            detail: Some(detail),
            ..attempted(due, "failed")
        },
    }
}

async fn send_email(
    ctx: &JobContext,
    due: &Due,
    spec: &EmailSpec,
    user_id: Uuid,
    handle: Option<String>,
) -> Outcome {
    let mailer = &ctx.services.notify.mailer;
    let unsubscribe_url = mailer.unsubscribe_url(user_id, due.notification_id);
    let mut vars = json!({"handle": handle, "email": due.target});
    if let (Some(vars), Some(given)) = (vars.as_object_mut(), spec.vars.as_object()) {
        vars.extend(given.clone());
        vars.insert("unsubscribe_url".into(), json!(unsubscribe_url));
    }
    let outgoing = Outgoing {
        to: &due.target,
        send_id: &due.send_id,
        template: &spec.template,
        vars: &vars,
    };
    let outcome = match mailer.build(&outgoing, &unsubscribe_url) {
        Ok(message) => mailer.send(message).await,
        Err(detail) => MailOutcome::Failed(detail),
    };
    match outcome {
        MailOutcome::Sent => attempted(due, "sent"),
        MailOutcome::Retry(detail) => Outcome {
            detail: Some(detail),
            retry_after: Some(None),
            ..attempted(due, "pending")
        },
        MailOutcome::Failed(detail) => Outcome {
            detail: Some(detail),
            ..attempted(due, "failed")
        },
        MailOutcome::Busy => Outcome {
            detail: Some("waiting for an SMTP connection".into()),
            attempted: false,
            continued: true,
            ..attempted(due, "pending")
        },
    }
}

/// Counts a run's sends by channel and outcome (`groundcrew_notify_sends_total`), once per
/// pair: a counter looked up per send cost the Prometheus recorder's key building and map
/// lookup on every push.
fn count_sends(sent: &[Outcome]) {
    let mut counts: HashMap<(&'static str, &'static str), u64> = HashMap::new();
    for o in sent.iter().filter(|o| o.attempted || o.continued) {
        let outcome = if o.continued {
            "busy"
        } else if o.dead_token {
            "invalid_token"
        } else if o.retry_after.is_some() {
            "retry"
        } else if o.status == "sent" {
            "sent"
        } else {
            "failed"
        };
        *counts.entry((o.channel, outcome)).or_default() += 1;
    }
    for ((channel, outcome), n) in counts {
        metrics::counter!("groundcrew_notify_sends_total", "channel" => channel, "outcome" => outcome)
            .increment(n);
    }
}

/// Writes every outcome's row, in one transaction with the wake-ups of new deferrals (a crash
/// cannot leave a deferral without its wake-up), the disabling of dead tokens and the job that
/// continues emails no connection was free for; then turns transient failures into a retry of
/// the job (the last attempt marks them failed instead).
async fn record_outcomes(ctx: &JobContext, outcomes: &[Outcome]) -> Result<(), JobError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let last_attempt = ctx.attempt >= ctx.max_attempts;
    let retries: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.retry_after.is_some())
        .collect();
    let dead: Vec<&Outcome> = outcomes.iter().filter(|o| o.dead_token).collect();
    // Each notification wakes at its latest new deferral.
    let mut wake_ups: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    for o in outcomes.iter().filter(|o| o.status == "deferred") {
        if let Some(at) = o.deferred_until {
            let wake = wake_ups.entry(o.notification_id).or_insert(at);
            *wake = (*wake).max(at);
        }
    }
    // Emails that found every connection busy are no failure and cost no attempt: a new job
    // sends them, unless this one is retried anyway (its re-run sends every pending row).
    let mut waiting: Vec<Uuid> = Vec::new();
    if retries.is_empty() || last_attempt {
        waiting = outcomes
            .iter()
            .filter(|o| o.continued)
            .map(|o| o.notification_id)
            .collect();
        waiting.sort_unstable();
        waiting.dedup();
    }

    // Rows that did not exist at the read (nearly all: a first run has none) are inserted
    // plainly, by `COPY`: a plain insert cost 3.4 µs of Postgres CPU a row where the upsert
    // costs 5.5 (it probes the key before a speculative insert; batches of 100), and `COPY`
    // 0.3-0.5 µs a push less again ([`copy_rows`]). Only rows that existed need the guarded
    // upsert. A row written between the read and this insert (by a run presumed dead that
    // woke up, or one that overtook this) fails the insert with a unique violation: then
    // everything is written again guarded, so a `sent` row is never written over.
    let (new, known): (Vec<&Outcome>, Vec<&Outcome>) = outcomes.iter().partition(|o| !o.existed);
    let all: Vec<&Outcome> = outcomes.iter().collect();
    if known.is_empty() && dead.is_empty() && wake_ups.is_empty() && waiting.is_empty() {
        // The common run: new rows and nothing else, one statement committed on its own. A
        // transaction around it cost two more round trips (BEGIN, COMMIT) of a batch's eight.
        let mut conn = ctx.services.db.acquire().await?;
        match write_rows(&mut conn, &new, last_attempt, false).await {
            Ok(()) => {}
            Err(e) if written_since_read(&e) => {
                write_rows(&mut conn, &all, last_attempt, true).await?;
            }
            Err(e) => return Err(e.into()),
        }
        return retry_or_done(&retries, outcomes.len(), last_attempt);
    }
    let mut tx = JobTx::begin(&ctx.services).await?;
    match write_rows(tx.conn(), &new, last_attempt, false).await {
        Ok(()) => write_rows(tx.conn(), &known, last_attempt, true).await?,
        // Starting the transaction over on this rare path is cheaper than a savepoint on
        // every run.
        Err(e) if written_since_read(&e) => {
            tx.rollback().await?;
            tx = JobTx::begin(&ctx.services).await?;
            write_rows(tx.conn(), &all, last_attempt, true).await?;
        }
        Err(e) => return Err(e.into()),
    }
    if !dead.is_empty() {
        sqlx::query(
            "UPDATE devices d SET enabled = false, disabled_reason = o.reason, updated_at = now()
             FROM unnest($1::text[], $2::text[]) AS o(token, reason)
             WHERE d.token = o.token",
        )
        .bind(dead.iter().map(|o| o.target.as_str()).collect::<Vec<_>>())
        .bind(
            dead.iter()
                .map(|o| o.detail.as_deref().unwrap_or(""))
                .collect::<Vec<_>>(),
        )
        .execute(tx.conn())
        .await?;
    }
    for (notification_id, at) in wake_ups {
        let wake_up = Deliver {
            notification_id,
            first_delivery: false,
        };
        tx.enqueue_at(&wake_up, RunAt::At(at)).await?;
    }
    for chunk in waiting.chunks(BATCH) {
        tx.enqueue(&DeliverBatch {
            notification_ids: chunk.to_vec(),
            first_delivery: false,
        })
        .await?;
    }
    tx.commit().await?;
    retry_or_done(&retries, outcomes.len(), last_attempt)
}

/// Whether the plain insert failed on a row another run wrote since this one read (a unique
/// violation). Logged, to explain the duplicate-key error it leaves in Postgres's log.
fn written_since_read(e: &sqlx::Error) -> bool {
    let unique = matches!(e, sqlx::Error::Database(e) if e.is_unique_violation());
    if unique {
        tracing::info!("delivery rows written since the read: writing every row guarded");
    }
    unique
}

/// The job's end once its outcomes are written: done, or retried for the transient failures
/// among them (failed on the last attempt).
fn retry_or_done(
    retries: &[&Outcome],
    outcomes: usize,
    last_attempt: bool,
) -> Result<(), JobError> {
    let Some(first) = retries.first() else {
        return Ok(());
    };
    let error = format!(
        "{} of {} sends to retry: {}",
        retries.len(),
        outcomes,
        first.detail.as_deref().unwrap_or("")
    );
    if last_attempt {
        return Err(JobError::fail(error));
    }
    Err(JobError::Retry {
        error,
        after: retries.iter().filter_map(|o| o.retry_after.flatten()).max(),
    })
}

/// The rows of a batch's outcomes, one per array element.
const INSERT_ROWS: &str = "INSERT INTO notification_deliveries AS d
         (notification_id, channel, target, send_id, status, detail, deferred_until, attempts)
     SELECT notification_id, channel, target, notification_id::text, status, detail,
            deferred_until, attempts
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::timestamptz[], $7::int[])
         AS o(notification_id, channel, target, status, detail, deferred_until, attempts)";

/// What makes the insert a guarded write: an existing row is written over unless it is `sent`,
/// so a late run (a stopped worker's) cannot write a sent row back.
const UNLESS_SENT: &str = "ON CONFLICT (notification_id, channel, target) DO UPDATE
     SET status = EXCLUDED.status, detail = EXCLUDED.detail,
         deferred_until = COALESCE(EXCLUDED.deferred_until, d.deferred_until),
         attempts = d.attempts + EXCLUDED.attempts, updated_at = now()
     WHERE d.status <> 'sent'";

/// Writes the rows of these outcomes with one statement: new rows by `COPY` (see
/// [`copy_rows`]), or (`guarded`) the insert with [`UNLESS_SENT`].
async fn write_rows(
    conn: &mut PgConnection,
    outcomes: &[&Outcome],
    last_attempt: bool,
    guarded: bool,
) -> Result<(), sqlx::Error> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let status = |o: &&Outcome| {
        if o.status == "pending" && last_attempt && !o.continued {
            "failed"
        } else {
            o.status
        }
    };
    if !guarded {
        return copy_rows(conn, outcomes, status).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("{INSERT_ROWS} {UNLESS_SENT}")))
        .bind(
            outcomes
                .iter()
                .map(|o| o.notification_id)
                .collect::<Vec<_>>(),
        )
        .bind(outcomes.iter().map(|o| o.channel).collect::<Vec<_>>())
        .bind(
            outcomes
                .iter()
                .map(|o| o.target.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(outcomes.iter().map(status).collect::<Vec<_>>())
        .bind(
            outcomes
                .iter()
                .map(|o| o.detail.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| o.deferred_until)
                .collect::<Vec<_>>(),
        )
        .bind(
            outcomes
                .iter()
                .map(|o| i32::from(o.attempted))
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts rows that did not exist with `COPY ... FROM STDIN (FORMAT binary)`: Postgres writes
/// them to the table a page at a time (one WAL record per page, not per row) and reads no
/// arrays to unnest. A row that exists by now fails it with a unique violation, as the insert
/// would.
async fn copy_rows(
    conn: &mut PgConnection,
    outcomes: &[&Outcome],
    status: impl Fn(&&Outcome) -> &'static str,
) -> Result<(), sqlx::Error> {
    let mut data = CopyBinary::new(outcomes.len() * 160);
    for o in outcomes {
        data.row(8); // the statement's eight columns, in its order
        data.field(Some(o.notification_id.as_bytes()));
        data.field(Some(o.channel.as_bytes()));
        data.field(Some(o.target.as_bytes()));
        // A new row's send id is its notification's, as the first send carried it.
        data.field(Some(
            o.notification_id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        ));
        data.field(Some(status(o).as_bytes()));
        data.field(o.detail.as_deref().map(str::as_bytes));
        data.field(o.deferred_until.map(pg_timestamp).as_ref().map(|t| &t[..]));
        data.field(Some(&i32::from(o.attempted).to_be_bytes()));
    }
    let mut copy = conn
        .copy_in_raw(
            "COPY notification_deliveries
                 (notification_id, channel, target, send_id, status, detail, deferred_until,
                  attempts)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(data.finish()).await?;
    copy.finish().await?;
    Ok(())
}

/// Postgres's binary `COPY` format: a header, each row its field count and each field its
/// length (-1 for NULL) and bytes, a trailer.
struct CopyBinary(Vec<u8>);

impl CopyBinary {
    fn new(capacity: usize) -> Self {
        let mut data = Vec::with_capacity(capacity + 21);
        data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        data.extend_from_slice(&[0; 8]); // no flags, no header extension
        CopyBinary(data)
    }

    fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    fn field(&mut self, value: Option<&[u8]>) {
        match value {
            Some(bytes) => {
                let len = i32::try_from(bytes.len()).expect("a field under 2 GiB");
                self.0.extend_from_slice(&len.to_be_bytes());
                self.0.extend_from_slice(bytes);
            }
            None => self.0.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

/// A `timestamptz` as binary `COPY` carries it: microseconds since 2000-01-01 UTC.
fn pg_timestamp(at: DateTime<Utc>) -> [u8; 8] {
    const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;
    (at.timestamp_micros() - POSTGRES_EPOCH_US).to_be_bytes()
}
