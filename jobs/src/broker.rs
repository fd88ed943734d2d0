//! The Redis side of the queues: our own Lua scripts instead of apalis-redis, because each of
//! the traps in shared/APALIS-REDIS.md sits in its scripts or its polling (see the comment at
//! the top of each script under jobs/lua). In short:
//! - leasing is O(batch), not O(backlog) (`fetch.lua`);
//! - due jobs are promoted in bounded slices (`fetch.lua`), so a burst never kills a worker;
//! - a plain push is pending at once and publishes a wake-up; idle workers also poll on a
//!   short interval and sleep exactly until the next scheduled job falls due (worker.rs);
//! - pushes are chunked and the response timeout is seconds, not 500 ms (`push`);
//! - leases are per job with a fencing number, so recovery never depends on worker names and
//!   late acknowledgements are ignored (`settle.lua`, `reclaim.lua`);
//! - max attempts are enforced from the count Redis keeps (`fetch.lua`, worker.rs);
//! - finished jobs expire after the retention (`settle.lua`);
//! - every time a decision depends on is Redis server time (`TIME`), not the worker's clock;
//! - all keys of one queue share a hash tag, so its scripts are slot-safe in Cluster mode.

use std::{collections::HashMap, sync::Arc, time::Duration};

use redis::{
    AsyncCommands, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use crate::queue::Queue;

/// Jobs per script call when pushing. Keeps one call well under the response timeout
/// (apalis-redis pushes 50,000 in one call and times out).
const PUSH_CHUNK: usize = 500;

/// A job as it goes into Redis.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub id: Uuid,
    pub queue: Queue,
    pub kind: String,
    pub args: String,
    pub max_attempts: u32,
    /// Unix milliseconds; `None` runs as soon as a worker is free.
    pub run_at_ms: Option<i64>,
    pub meta: JobMeta,
}

/// What travels with a job besides its payload.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Pushed by the outbox relay, which cannot tell a row whose push failed from one pushed
    /// and run whose delete was lost: after the job's retention, its Redis record gone, the
    /// push is not deduped and the job runs again. Its runs are never first runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relayed: bool,
}

impl JobMeta {
    /// A job's metadata as its enqueuer writes it (the relay marks it `relayed` later).
    pub fn new(request_id: Option<String>) -> Self {
        JobMeta {
            request_id,
            relayed: false,
        }
    }
}

/// A job leased to this worker.
#[derive(Clone, Debug)]
pub struct Leased {
    pub id: Uuid,
    pub kind: String,
    pub args: String,
    pub max_attempts: u32,
    pub meta: JobMeta,
    pub attempt: u32,
    /// The fencing number of this lease; settling with an older one is ignored.
    pub lease: u64,
}

#[derive(Debug)]
pub enum NextDue {
    Paused,
    Nothing,
    AtMs(i64),
}

#[derive(Debug)]
pub struct Fetched {
    pub now_ms: i64,
    pub next_due: NextDue,
    pub jobs: Vec<Leased>,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Succeeded,
    Retry {
        delay: Duration,
        error: String,
    },
    Dead {
        error: String,
    },
    /// Handed back unstarted or unfinished at shutdown; does not count as an attempt.
    Released,
}

#[derive(Clone, Debug)]
pub struct Settlement {
    pub id: Uuid,
    pub lease: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueDepth {
    pub pending: u64,
    pub scheduled: u64,
    pub running: u64,
    pub dead: u64,
    pub paused: bool,
    pub oldest_pending_age: Duration,
}

/// A job's record as ops see it.
#[derive(Clone, Debug)]
pub struct JobRecord {
    pub id: Uuid,
    pub queue: Queue,
    pub kind: String,
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub args: String,
    pub last_error: Option<String>,
    pub enqueued_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub worker: Option<String>,
}

#[derive(Clone, Debug)]
pub struct WorkerInfo {
    pub id: String,
    pub queues: Vec<String>,
    pub in_flight: u64,
    pub last_heartbeat_ms: i64,
}

struct Scripts {
    enqueue: Script,
    fetch: Script,
    settle: Script,
    renew: Script,
    reclaim: Script,
    revive: Script,
    depth: Script,
}

/// The Redis key names of one queue. The `{prefix:queue}` hash tag keeps them in one slot.
#[derive(Clone, Debug)]
pub struct QueueKeys {
    pub pending: String,
    pub scheduled: String,
    pub inflight: String,
    pub dead: String,
    pub paused: String,
    pub job_prefix: String,
    pub wake: String,
}

impl QueueKeys {
    fn new(prefix: &str, queue: Queue) -> Self {
        let tag = format!("{{{prefix}:{queue}}}");
        QueueKeys {
            pending: format!("{tag}:pending"),
            scheduled: format!("{tag}:scheduled"),
            inflight: format!("{tag}:inflight"),
            dead: format!("{tag}:dead"),
            paused: format!("{tag}:paused"),
            job_prefix: format!("{tag}:job:"),
            wake: format!("{prefix}:wake:{queue}"),
        }
    }
}

/// A handle on the queues in Redis. Cheap to clone; connects lazily and reconnects, so a
/// process starts (and the API accepts work into the outbox) while Redis is down.
#[derive(Clone)]
pub struct Broker {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: Arc<str>,
    keys: Arc<HashMap<Queue, QueueKeys>>,
    scripts: Arc<Scripts>,
}

impl Broker {
    pub fn new(redis_url: &str, prefix: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let keys = Queue::ALL
            .into_iter()
            .map(|q| (q, QueueKeys::new(prefix, q)))
            .collect();
        Ok(Broker {
            conn,
            client,
            prefix: prefix.into(),
            keys: Arc::new(keys),
            scripts: Arc::new(Scripts {
                enqueue: Script::new(include_str!("../lua/enqueue.lua")),
                fetch: Script::new(include_str!("../lua/fetch.lua")),
                settle: Script::new(include_str!("../lua/settle.lua")),
                renew: Script::new(include_str!("../lua/renew.lua")),
                reclaim: Script::new(include_str!("../lua/reclaim.lua")),
                revive: Script::new(include_str!("../lua/revive.lua")),
                depth: Script::new(include_str!("../lua/depth.lua")),
            }),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn keys(&self, queue: Queue) -> &QueueKeys {
        &self.keys[&queue]
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A connection for callers that need Redis for their own data (feeds, rate limits).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }

    /// Adds jobs; ids already present are skipped. Returns how many were new.
    pub async fn push(&self, jobs: &[Outgoing]) -> redis::RedisResult<u64> {
        let mut by_queue: HashMap<Queue, Vec<&Outgoing>> = HashMap::new();
        for job in jobs {
            by_queue.entry(job.queue).or_default().push(job);
        }
        let mut conn = self.conn.clone();
        let mut added = 0;
        for (queue, jobs) in by_queue {
            let keys = self.keys(queue);
            for chunk in jobs.chunks(PUSH_CHUNK) {
                let mut inv = self.scripts.enqueue.prepare_invoke();
                inv.key(&keys.pending)
                    .key(&keys.scheduled)
                    .arg(&keys.job_prefix)
                    .arg(&keys.wake);
                for job in chunk {
                    inv.arg(job.id.to_string())
                        .arg(&job.kind)
                        .arg(&job.args)
                        .arg(job.max_attempts)
                        .arg(job.run_at_ms.unwrap_or(0))
                        .arg(serde_json::to_string(&job.meta).unwrap_or_default());
                }
                let span = tracing::info_span!("publish", queue = %queue, jobs = chunk.len());
                added += inv.invoke_async::<u64>(&mut conn).instrument(span).await?;
            }
        }
        Ok(added)
    }

    pub async fn fetch(
        &self,
        queue: Queue,
        batch: usize,
        lease: Duration,
        worker_id: &str,
    ) -> redis::RedisResult<Fetched> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        let raw: Vec<redis::Value> = self
            .scripts
            .fetch
            .key(&keys.pending)
            .key(&keys.scheduled)
            .key(&keys.inflight)
            .key(&keys.paused)
            .arg(&keys.job_prefix)
            .arg(batch.max(1))
            .arg(lease.as_millis() as u64)
            .arg(worker_id)
            .invoke_async(&mut conn)
            .await?;
        let now_ms: i64 = redis::from_redis_value(raw[0].clone())?;
        let next: i64 = redis::from_redis_value(raw[1].clone())?;
        let mut jobs = Vec::with_capacity((raw.len() - 2) / 7);
        for j in raw[2..].chunks_exact(7) {
            let id: String = redis::from_redis_value(j[0].clone())?;
            let meta: String = redis::from_redis_value(j[4].clone())?;
            jobs.push(Leased {
                id: id.parse().map_err(|_| bad_reply("job id is not a UUID"))?,
                kind: redis::from_redis_value(j[1].clone())?,
                args: redis::from_redis_value(j[2].clone())?,
                max_attempts: redis::from_redis_value(j[3].clone())?,
                meta: serde_json::from_str(&meta).unwrap_or_default(),
                attempt: redis::from_redis_value(j[5].clone())?,
                lease: redis::from_redis_value(j[6].clone())?,
            });
        }
        let next_due = match next {
            -1 => NextDue::Paused,
            0 => NextDue::Nothing,
            at => NextDue::AtMs(at),
        };
        Ok(Fetched {
            now_ms,
            next_due,
            jobs,
        })
    }

    /// Records outcomes; returns how many were applied (stale leases are ignored).
    pub async fn settle(
        &self,
        queue: Queue,
        retention: Duration,
        batch: &[Settlement],
    ) -> redis::RedisResult<u64> {
        let keys = self.keys(queue);
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(&keys.inflight)
            .key(&keys.scheduled)
            .key(&keys.dead)
            .key(&keys.pending)
            .arg(&keys.job_prefix)
            .arg(retention.as_millis() as u64)
            .arg(&keys.wake);
        for s in batch {
            let (outcome, delay, error) = match &s.outcome {
                Outcome::Succeeded => ("ok", 0, ""),
                Outcome::Retry { delay, error } => ("retry", delay.as_millis() as u64, &**error),
                Outcome::Dead { error } => ("dead", 0, &**error),
                Outcome::Released => ("release", 0, ""),
            };
            inv.arg(s.id.to_string())
                .arg(s.lease)
                .arg(outcome)
                .arg(delay)
                .arg(error);
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await
    }

    /// Extends leases still held; returns the ids whose lease was lost.
    pub async fn renew(
        &self,
        queue: Queue,
        lease: Duration,
        held: &[(Uuid, u64)],
    ) -> redis::RedisResult<Vec<Uuid>> {
        let keys = self.keys(queue);
        let mut inv = self.scripts.renew.prepare_invoke();
        inv.key(&keys.inflight)
            .arg(&keys.job_prefix)
            .arg(lease.as_millis() as u64);
        for (id, lease) in held {
            inv.arg(id.to_string()).arg(*lease);
        }
        let mut conn = self.conn.clone();
        let lost: Vec<String> = inv.invoke_async(&mut conn).await?;
        Ok(lost.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// Puts jobs with expired leases back in line; returns how many it looked at.
    pub async fn reclaim(&self, queue: Queue) -> redis::RedisResult<u64> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        self.scripts
            .reclaim
            .key(&keys.inflight)
            .key(&keys.pending)
            .key(&keys.dead)
            .arg(&keys.job_prefix)
            .arg(500)
            .arg(&keys.wake)
            .invoke_async(&mut conn)
            .await
    }

    pub async fn depth(&self, queue: Queue) -> redis::RedisResult<QueueDepth> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        let (pending, scheduled, running, dead, paused, age_ms): (u64, u64, u64, u64, u8, u64) =
            self.scripts
                .depth
                .key(&keys.pending)
                .key(&keys.scheduled)
                .key(&keys.inflight)
                .key(&keys.dead)
                .key(&keys.paused)
                .arg(&keys.job_prefix)
                .invoke_async(&mut conn)
                .await?;
        Ok(QueueDepth {
            pending,
            scheduled,
            running,
            dead,
            paused: paused == 1,
            oldest_pending_age: Duration::from_millis(age_ms),
        })
    }

    /// Stops the queue's pools from fetching (checked on every fetch) until resumed.
    pub async fn pause(&self, queue: Queue) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        conn.set::<_, _, ()>(&self.keys(queue).paused, 1).await
    }

    pub async fn resume(&self, queue: Queue) -> redis::RedisResult<()> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        conn.del::<_, ()>(&keys.paused).await?;
        conn.publish::<_, _, ()>(&keys.wake, "resume").await
    }

    /// Moves the given dead jobs back to pending; returns how many moved.
    pub async fn revive(&self, queue: Queue, ids: &[Uuid]) -> redis::RedisResult<u64> {
        let keys = self.keys(queue);
        let mut inv = self.scripts.revive.prepare_invoke();
        inv.key(&keys.dead)
            .key(&keys.pending)
            .arg(&keys.job_prefix)
            .arg(&keys.wake);
        for id in ids {
            inv.arg(id.to_string());
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await
    }

    /// Moves every dead job of a queue back to pending.
    pub async fn revive_all(&self, queue: Queue) -> redis::RedisResult<u64> {
        let mut conn = self.conn.clone();
        let mut revived = 0;
        loop {
            let ids: Vec<String> = conn.zrange(&self.keys(queue).dead, 0, 499).await?;
            if ids.is_empty() {
                return Ok(revived);
            }
            let ids: Vec<Uuid> = ids.iter().filter_map(|s| s.parse().ok()).collect();
            revived += self.revive(queue, &ids).await?;
        }
    }

    /// Finds a job by id on any queue.
    pub async fn job(&self, id: Uuid) -> redis::RedisResult<Option<JobRecord>> {
        let mut pipe = redis::pipe();
        for queue in Queue::ALL {
            pipe.hgetall(format!("{}{id}", self.keys(queue).job_prefix));
        }
        let mut conn = self.conn.clone();
        let found: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(Queue::ALL
            .into_iter()
            .zip(found)
            .find(|(_, h)| !h.is_empty())
            .map(|(queue, h)| record(id, queue, h)))
    }

    /// Dead jobs, oldest failure first, from position `offset` of the queue's dead set.
    pub async fn dead_jobs(
        &self,
        queue: Queue,
        offset: u64,
        limit: u64,
    ) -> redis::RedisResult<Vec<JobRecord>> {
        let keys = self.keys(queue);
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn
            .zrange(&keys.dead, offset as isize, (offset + limit) as isize - 1)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new()); // an empty pipeline is an error in redis-rs
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(format!("{}{id}", keys.job_prefix));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .iter()
            .zip(hashes)
            .filter_map(|(id, h)| Some(record(id.parse().ok()?, queue, h)))
            .collect())
    }

    fn workers_key(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Announces a live worker process; entries older than `ttl` are dropped from listings.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        queues: &[Queue],
        in_flight: u64,
        ttl: Duration,
    ) -> redis::RedisResult<()> {
        let key = format!("{}:worker:{worker_id}", self.prefix);
        let queues = queues
            .iter()
            .map(|q| q.name())
            .collect::<Vec<_>>()
            .join(",");
        let mut conn = self.conn.clone();
        let now: (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now_ms = now.0 * 1000 + now.1 / 1000;
        redis::pipe()
            .zadd(self.workers_key(), worker_id, now_ms)
            .zrembyscore(self.workers_key(), "-inf", now_ms - ttl.as_millis() as i64)
            .hset_multiple(
                &key,
                &[
                    ("queues", queues),
                    ("in_flight", in_flight.to_string()),
                    ("heartbeat", now_ms.to_string()),
                ],
            )
            .pexpire(&key, ttl.as_millis() as i64)
            .query_async::<()>(&mut conn)
            .await
    }

    pub async fn retire(&self, worker_id: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .zrem(self.workers_key(), worker_id)
            .del(format!("{}:worker:{worker_id}", self.prefix))
            .query_async::<()>(&mut conn)
            .await
    }

    pub async fn workers(&self) -> redis::RedisResult<Vec<WorkerInfo>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn.zrange(self.workers_key(), 0, -1).await?;
        if ids.is_empty() {
            return Ok(Vec::new()); // an empty pipeline is an error in redis-rs
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(format!("{}:worker:{id}", self.prefix));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .into_iter()
            .zip(hashes)
            .filter(|(_, h)| !h.is_empty())
            .map(|(id, h)| WorkerInfo {
                id,
                queues: h
                    .get("queues")
                    .map(|q| q.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
                in_flight: h.get("in_flight").and_then(|v| v.parse().ok()).unwrap_or(0),
                last_heartbeat_ms: h.get("heartbeat").and_then(|v| v.parse().ok()).unwrap_or(0),
            })
            .collect())
    }
}

fn bad_reply(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, what))
}

fn record(id: Uuid, queue: Queue, h: HashMap<String, String>) -> JobRecord {
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
    JobRecord {
        id,
        queue,
        kind: h.get("kind").cloned().unwrap_or_default(),
        status: h.get("status").cloned().unwrap_or_default(),
        attempts: num("attempts").unwrap_or(0) as u32,
        max_attempts: num("max_attempts").unwrap_or(0) as u32,
        args: h.get("args").cloned().unwrap_or_else(|| "null".into()),
        last_error: h.get("last_error").cloned(),
        enqueued_at_ms: num("enqueued_at").unwrap_or(0),
        started_at_ms: num("started_at"),
        finished_at_ms: num("finished_at"),
        worker: h.get("worker").cloned(),
    }
}
