//! Transactional enqueue. A job is a row in `job_outbox`, written in the caller's transaction:
//! commit ⇒ the job exists, rollback ⇒ it never did. Right after commit the rows are pushed to
//! Redis and deleted; if that fails (Redis down, process killed) the relay pushes them later.
//! A row may be pushed twice (pushed, then the process died before the delete); the push
//! skips job ids Redis already has, so the job still runs once per enqueue.

use std::{sync::OnceLock, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction, postgres::PgRow};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Services,
    broker::{Broker, JobMeta, Outgoing},
    job::{Envelope, Job},
    queue::Queue,
};

/// Rows younger than this are left to the process that wrote them.
const RELAY_GRACE: Duration = Duration::from_secs(1);
const RELAY_BATCH: i64 = 1000;
/// How long the cleaner gathers dispatched ids before one delete; far below `RELAY_GRACE`.
const CLEAN_LINGER: Duration = Duration::from_millis(20);
const CLEAN_BATCH: usize = 10_000;

/// When a job should run.
#[derive(Clone, Copy, Debug)]
pub enum RunAt {
    Now,
    At(DateTime<Utc>),
    /// After a delay from the transaction's Postgres time.
    In(Duration),
}

/// A Postgres transaction that can enqueue jobs. Use `conn()` for the domain writes.
pub struct JobTx {
    tx: Transaction<'static, Postgres>,
    staged: Vec<Outgoing>,
    broker: Broker,
    cleaner: std::sync::Arc<OutboxCleaner>,
    request_id: Option<String>,
    after_commit: redis::Pipeline,
}

impl JobTx {
    pub async fn begin(services: &Services) -> Result<Self, sqlx::Error> {
        Ok(JobTx {
            tx: services.db.begin().await?,
            staged: Vec::new(),
            broker: services.broker.clone(),
            cleaner: services.outbox.clone(),
            request_id: None,
            after_commit: redis::pipe(),
        })
    }

    /// Carries the id of the request that caused the work into every job it enqueues.
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Redis writes that must not happen before the commit (cache invalidations), sent in one
    /// round trip after it. Best effort, like the dispatch: whatever they repair must also be
    /// repaired by a job enqueued in the same transaction, which retries.
    pub fn after_commit(&mut self) -> &mut redis::Pipeline {
        &mut self.after_commit
    }

    pub async fn enqueue<J: Job>(&mut self, job: &J) -> Result<Uuid, sqlx::Error> {
        self.enqueue_envelope(Envelope::of(job), RunAt::Now).await
    }

    pub async fn enqueue_at<J: Job>(&mut self, job: &J, at: RunAt) -> Result<Uuid, sqlx::Error> {
        self.enqueue_envelope(Envelope::of(job), at).await
    }

    pub async fn enqueue_envelope(
        &mut self,
        job: Envelope,
        at: RunAt,
    ) -> Result<Uuid, sqlx::Error> {
        let ids = self.insert(vec![job], at).await?;
        Ok(ids[0])
    }

    /// Enqueues many jobs with one statement.
    pub async fn enqueue_many<J: Job>(&mut self, jobs: &[J]) -> Result<Vec<Uuid>, sqlx::Error> {
        self.insert(jobs.iter().map(Envelope::of).collect(), RunAt::Now)
            .await
    }

    async fn insert(&mut self, jobs: Vec<Envelope>, at: RunAt) -> Result<Vec<Uuid>, sqlx::Error> {
        let ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::now_v7()).collect();
        let meta = JobMeta::new(self.request_id.clone());
        let meta_json = serde_json::to_value(&meta).expect("meta serializes");
        let (fixed, delay_ms) = match at {
            RunAt::Now => (None, None),
            RunAt::At(t) => (Some(t), None),
            RunAt::In(d) => (None, Some(d.as_millis() as i64)),
        };
        let rows = sqlx::query(
            "INSERT INTO job_outbox (id, queue, kind, args, max_attempts, run_at, meta)
             SELECT id, queue, kind, args, max_attempts,
                    COALESCE($6, now() + $7 * interval '1 millisecond'), $8
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int[])
                  AS t(id, queue, kind, args, max_attempts)
             RETURNING id, (extract(epoch FROM run_at) * 1000)::bigint AS run_at_ms",
        )
        .bind(&ids)
        .bind(jobs.iter().map(|j| j.queue.name()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.kind).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.args.clone()).collect::<Vec<_>>())
        .bind(
            jobs.iter()
                .map(|j| j.max_attempts as i32)
                .collect::<Vec<_>>(),
        )
        .bind(fixed)
        .bind(delay_ms)
        .bind(&meta_json)
        .fetch_all(&mut *self.tx)
        .await?;
        let run_at: std::collections::HashMap<Uuid, Option<i64>> = rows
            .iter()
            .map(|r| (r.get("id"), r.get("run_at_ms")))
            .collect();
        for (id, job) in ids.iter().zip(jobs) {
            let run_at_ms = run_at.get(id).copied().flatten();
            self.staged
                .push(outgoing(*id, &job, run_at_ms, meta.clone()));
        }
        Ok(ids)
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }

    /// Commits, then hands the jobs to Redis. A failure after the commit is logged, not
    /// returned: the work is accepted and the relay will deliver it.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await?;
        if !self.staged.is_empty() {
            dispatch(&self.cleaner, &self.broker, &self.staged).await;
        }
        if !self.after_commit.is_empty() {
            let sent = self
                .after_commit
                .query_async::<()>(&mut self.broker.connection())
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "Redis writes after commit failed; the transaction's jobs will make them");
            }
        }
        Ok(())
    }
}

/// The parameters `write_then_enqueue` hands its caller's statement.
pub type WriteQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Runs one data-modifying statement of the caller's and, when it wrote a row, enqueues `job`
/// in the same autocommitted statement: one round trip to Postgres instead of four (BEGIN, the
/// write, the outbox insert, COMMIT). For ingest paths, where those round trips were most of
/// Postgres's work per request; anything that needs more than one write uses [`JobTx`].
///
/// `write` is an `INSERT … RETURNING …` of one row (any statement that returns what it wrote)
/// whose parameters are `$1`…`$params`, bound in that order by `bind`. Returns the row `write`
/// returned, or `None` when it wrote nothing (an `ON CONFLICT DO NOTHING` duplicate, a
/// `SELECT` that matched nothing) and no job exists.
pub async fn write_then_enqueue<J: Job>(
    services: &Services,
    write: &str,
    params: usize,
    bind: impl for<'q> FnOnce(WriteQuery<'q>) -> WriteQuery<'q>,
    job: &J,
    request_id: Option<String>,
) -> Result<Option<PgRow>, sqlx::Error> {
    let job = Envelope::of(job);
    let meta = JobMeta::new(request_id);
    let at = |n: usize| params + n;
    let sql = format!(
        "WITH written AS ({write}),
         job AS (INSERT INTO job_outbox (id, queue, kind, args, max_attempts, meta)
                 SELECT ${}, ${}, ${}, ${}, ${}, ${} WHERE EXISTS (SELECT 1 FROM written))
         SELECT * FROM written",
        at(1),
        at(2),
        at(3),
        at(4),
        at(5),
        at(6)
    );
    let id = Uuid::now_v7();
    let written = bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .bind(id)
        .bind(job.queue.name())
        .bind(job.kind)
        .bind(&job.args)
        .bind(job.max_attempts as i32)
        .bind(serde_json::to_value(&meta).expect("meta serializes"))
        .fetch_optional(&services.db)
        .await?;
    if written.is_some() {
        let pushed = outgoing(id, &job, None, meta);
        dispatch(&services.outbox, &services.broker, &[pushed]).await;
    }
    Ok(written)
}

/// Hands to Redis jobs whose outbox rows the caller wrote and committed in a statement of its
/// own (a batch of webhook receipts): `(outbox id, job, meta)` each.
pub(crate) async fn dispatch_written(
    cleaner: &OutboxCleaner,
    broker: &Broker,
    jobs: Vec<(Uuid, Envelope, JobMeta)>,
) {
    let outgoing: Vec<Outgoing> = jobs
        .into_iter()
        .map(|(id, job, meta)| outgoing(id, &job, None, meta))
        .collect();
    if !outgoing.is_empty() {
        dispatch(cleaner, broker, &outgoing).await;
    }
}

/// What is pushed to Redis for `job`, written to the outbox as `id`.
fn outgoing(id: Uuid, job: &Envelope, run_at_ms: Option<i64>, meta: JobMeta) -> Outgoing {
    Outgoing {
        id,
        queue: job.queue,
        kind: job.kind.to_owned(),
        args: job.args.to_string(),
        max_attempts: job.max_attempts,
        run_at_ms,
        meta,
    }
}

async fn dispatch(cleaner: &OutboxCleaner, broker: &Broker, jobs: &[Outgoing]) {
    if let Err(e) = broker.push(jobs).await {
        tracing::warn!(error = %e, jobs = jobs.len(), "Redis push failed; the outbox relay will retry");
        return;
    }
    for job in jobs {
        metrics::counter!("groundcrew_jobs_enqueued_total", "queue" => job.queue.name(), "kind" => job.kind.clone()).increment(1);
    }
    cleaner.delete_later(jobs.iter().map(|j| j.id).collect());
}

/// Deletes dispatched outbox rows off every caller's path, gathered into one transaction per
/// `CLEAN_LINGER` instead of one per commit: at 1,000 enqueues a second that is ~50 Postgres
/// transactions instead of 1,000 competing with the enqueuing commits. Deletes run without
/// waiting for a disk flush; a lost one (crash, or the runtime gone) only lets the relay
/// re-push rows, and the push skips ids Redis already has.
pub struct OutboxCleaner {
    db: PgPool,
    ids: OnceLock<mpsc::UnboundedSender<Vec<Uuid>>>,
}

impl OutboxCleaner {
    pub fn new(db: PgPool) -> Self {
        OutboxCleaner {
            db,
            ids: OnceLock::new(),
        }
    }

    /// Started on first use, on the caller's runtime: building `Services` needs none.
    fn delete_later(&self, ids: Vec<Uuid>) {
        let sender = self.ids.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(clean(self.db.clone(), receiver));
            sender
        });
        let _ = sender.send(ids);
    }
}

async fn clean(db: PgPool, mut dispatched: mpsc::UnboundedReceiver<Vec<Uuid>>) {
    while let Some(mut ids) = dispatched.recv().await {
        tokio::time::sleep(CLEAN_LINGER).await;
        while ids.len() < CLEAN_BATCH {
            match dispatched.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        if let Err(e) = delete_dispatched(&db, &ids).await {
            tracing::warn!(error = %e, "outbox delete failed; the relay will re-push (deduped by id)");
        }
    }
}

async fn delete_dispatched(db: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM job_outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Pushes outbox rows older than the grace period; returns how many it pushed. Several relays
/// may run (every worker process runs one): `SKIP LOCKED` splits the rows between them.
pub async fn relay_once(db: &PgPool, broker: &Broker) -> Result<usize, RelayError> {
    let mut tx = db.begin().await?;
    let rows = sqlx::query(
        "SELECT id, queue, kind, args::text AS args, max_attempts, meta::text AS meta,
                (extract(epoch FROM run_at) * 1000)::bigint AS run_at_ms
         FROM job_outbox
         WHERE created_at < now() - $1 * interval '1 millisecond'
         ORDER BY created_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(RELAY_GRACE.as_millis() as i64)
    .bind(RELAY_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        let queue: String = row.get("queue");
        let Ok(queue) = queue.parse::<Queue>() else {
            tracing::error!(queue, "outbox row names an unknown queue; left in place");
            continue;
        };
        let meta: String = row.get("meta");
        let meta = JobMeta {
            relayed: true,
            ..serde_json::from_str(&meta).unwrap_or_default()
        };
        jobs.push(Outgoing {
            id: row.get("id"),
            queue,
            kind: row.get("kind"),
            args: row.get("args"),
            max_attempts: row.get::<i32, _>("max_attempts") as u32,
            run_at_ms: row.get("run_at_ms"),
            meta,
        });
    }
    broker.push(&jobs).await?;
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    sqlx::query("DELETE FROM job_outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(jobs = jobs.len(), "outbox relay pushed jobs left behind");
    Ok(jobs.len())
}

/// Runs the relay until `stop`, and keeps the outbox backlog gauge current.
pub async fn run_relay(services: Services, stop: CancellationToken) {
    loop {
        let pushed = match relay_once(&services.db, &services.broker).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay pass failed");
                0
            }
        };
        if let Ok(backlog) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_outbox")
            .fetch_one(&services.db)
            .await
        {
            metrics::gauge!("groundcrew_outbox_backlog").set(backlog as f64);
        }
        if pushed as i64 == RELAY_BATCH {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
    }
}
