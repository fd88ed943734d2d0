//! Group commit for the webhook inbox. A receipt is a row in `webhook_inbox`, a row in
//! `job_outbox` and a commit that waits for the WAL flush. One statement and one commit per
//! receipt held ingest to ~2,400 requests a second on two cores, most of Postgres's work being
//! per statement and per commit, not per row (bench/RESULTS.md). Here receipts that arrive
//! together share one statement: a receipt that finds a writer free goes at once, alone; those
//! that arrive while every writer is busy go together in the next batch. Nothing waits on a
//! timer, so a lone webhook is no slower than before.
//!
//! A batch is one autocommitted statement: every receipt in it is stored, or none is and each
//! caller gets the error (the provider retries a non-2xx). The caller is answered after the
//! commit, so a 200 still means stored. Rows go in (provider, event id) order: two batches
//! holding the same two events in opposite orders each waited on the other's uncommitted row
//! and Postgres killed one as a deadlock (seen in the burst test).

use std::{
    collections::HashSet,
    sync::{Arc, OnceLock},
};

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::{
    broker::{Broker, JobMeta},
    job::Envelope,
    outbox::{self, OutboxCleaner},
};

use super::{Incoming, ProcessEvent, Received};

/// Batches written at once. Several, so that one batch's WAL flush overlaps the next one's
/// statement.
const WRITERS: usize = 4;
/// Receipts per statement at most.
const MAX_BATCH: usize = 256;
/// Receipts waiting for a writer at most; callers beyond wait to queue.
const QUEUED: usize = 4096;

struct Receipt {
    incoming: Incoming,
    request_id: Option<String>,
    reply: oneshot::Sender<Result<Received, sqlx::Error>>,
}

/// Writes webhook receipts to the inbox in batches. Part of `Services`; its task starts on
/// first use, on the caller's runtime.
pub struct InboxWriter {
    target: Target,
    receipts: OnceLock<mpsc::Sender<Receipt>>,
}

/// Where batches go.
#[derive(Clone)]
struct Target {
    db: PgPool,
    broker: Broker,
    cleaner: Arc<OutboxCleaner>,
}

impl InboxWriter {
    pub fn new(db: PgPool, broker: Broker, cleaner: Arc<OutboxCleaner>) -> Self {
        InboxWriter {
            target: Target {
                db,
                broker,
                cleaner,
            },
            receipts: OnceLock::new(),
        }
    }

    /// Stores the event once and enqueues its processing, with whatever receipts arrive
    /// alongside.
    pub async fn write(
        &self,
        incoming: Incoming,
        request_id: Option<String>,
    ) -> Result<Received, sqlx::Error> {
        let receipts = self.receipts.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUED);
            tokio::spawn(gather(self.target.clone(), receiver));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let receipt = Receipt {
            incoming,
            request_id,
            reply,
        };
        if receipts.send(receipt).await.is_err() {
            return Err(sqlx::Error::PoolClosed);
        }
        answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
    }
}

/// Takes a writer, then everything queued by then, as one batch.
async fn gather(target: Target, mut receipts: mpsc::Receiver<Receipt>) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    while let Some(first) = receipts.recv().await {
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receipts.try_recv() {
                Ok(receipt) => batch.push(receipt),
                Err(_) => break,
            }
        }
        let target = target.clone();
        tokio::spawn(async move {
            write_batch(&target, batch).await;
            drop(writer);
        });
    }
}

async fn write_batch(target: &Target, batch: Vec<Receipt>) {
    metrics::histogram!("groundcrew_webhook_batch_size").record(batch.len() as f64);
    let inbox_ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let job_ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
    let jobs: Vec<Envelope> = inbox_ids
        .iter()
        .map(|&inbox_id| Envelope::of(&ProcessEvent { inbox_id }))
        .collect();
    let metas: Vec<JobMeta> = batch
        .iter()
        .map(|r| JobMeta::new(r.request_id.clone()))
        .collect();
    let column = |field: fn(&Incoming) -> &str| -> Vec<&str> {
        batch.iter().map(|r| field(&r.incoming)).collect()
    };
    let written: Result<Vec<Uuid>, sqlx::Error> = sqlx::query_scalar(
        "WITH incoming AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::uuid[], $7::jsonb[], $8::jsonb[])
                 AS t(id, provider, event_id, event_type, body, job_id, args, meta)
         ), written AS (
             INSERT INTO webhook_inbox (id, provider, event_id, event_type, body)
             SELECT id, provider, event_id, event_type, body FROM incoming
             ORDER BY provider, event_id
             ON CONFLICT (provider, event_id) DO NOTHING
             RETURNING id
         ), job AS (
             INSERT INTO job_outbox (id, queue, kind, args, max_attempts, meta)
             SELECT i.job_id, $9, $10, i.args, $11, i.meta
             FROM incoming i JOIN written w ON w.id = i.id
         )
         SELECT id FROM written",
    )
    .bind(&inbox_ids)
    .bind(column(|i| i.provider.as_str()))
    .bind(column(|i| &i.event_id))
    .bind(column(|i| &i.event_type))
    .bind(column(|i| &i.body))
    .bind(&job_ids)
    .bind(jobs.iter().map(|j| j.args.clone()).collect::<Vec<_>>())
    .bind(
        metas
            .iter()
            .map(|m| serde_json::to_value(m).expect("meta serializes"))
            .collect::<Vec<_>>(),
    )
    .bind(jobs[0].queue.name())
    .bind(jobs[0].kind)
    .bind(jobs[0].max_attempts as i32)
    .fetch_all(&target.db)
    .await;
    let written: HashSet<Uuid> = match written {
        Ok(written) => written.into_iter().collect(),
        Err(e) => {
            for receipt in batch {
                let _ = receipt.reply.send(Err(copy_error(&e)));
            }
            return;
        }
    };
    let mut to_dispatch = Vec::with_capacity(written.len());
    let mut answers = Vec::with_capacity(batch.len());
    for (((receipt, inbox_id), job_id), (job, meta)) in batch
        .into_iter()
        .zip(inbox_ids)
        .zip(job_ids)
        .zip(jobs.into_iter().zip(metas))
    {
        let received = if written.contains(&inbox_id) {
            metrics::counter!("groundcrew_webhooks_received_total", "provider" => receipt.incoming.provider.as_str()).increment(1);
            to_dispatch.push((job_id, job, meta));
            Received::Queued(inbox_id)
        } else {
            Received::Duplicate
        };
        answers.push((receipt.reply, received));
    }
    outbox::dispatch_written(&target.cleaner, &target.broker, to_dispatch).await;
    for (reply, received) in answers {
        let _ = reply.send(Ok(received));
    }
}

/// The batch's error for each of its callers (`sqlx::Error` is not `Clone`), keeping what
/// tells an outage (answered 503) from a failed query (500).
fn copy_error(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::Tls(tls) => sqlx::Error::Io(std::io::Error::other(tls.to_string())),
        other => sqlx::Error::Protocol(other.to_string()),
    }
}
