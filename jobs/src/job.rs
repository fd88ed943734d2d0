//! What a job kind is: a payload struct with a stable name, its queue, and the policy the
//! runtime applies to it (attempts, timeout, backoff). Handlers say per error whether it is
//! worth retrying.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use rand::Rng;
use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::{Services, queue::Queue};

/// How the runtime treats one kind of job.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Attempts in all, the first included; after the last failure the job is dead.
    pub max_attempts: u32,
    /// One attempt longer than this is cut off and counts as a transient failure.
    pub timeout: Duration,
    pub backoff: Backoff,
}

impl Policy {
    pub const DEFAULT: Policy = Policy {
        max_attempts: 10,
        timeout: Duration::from_secs(60),
        backoff: Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        },
    };
}

/// Exponential backoff with jitter: attempt n waits between half and all of
/// `base * 2^(n-1)`, capped at `max`, and never less than a provider's `Retry-After`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max);
        let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// Why an attempt did not succeed, and whether another attempt could.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient (network, 5xx, 429, lock timeout): try again after the backoff, or no sooner
    /// than `after` when the other side said so.
    #[error("{error}")]
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Permanent (bad input, missing row): the job is dead at once.
    #[error("{0}")]
    Fail(String),
}

impl JobError {
    pub fn retry(error: impl std::fmt::Display) -> Self {
        JobError::Retry {
            error: error.to_string(),
            after: None,
        }
    }

    pub fn fail(error: impl std::fmt::Display) -> Self {
        JobError::Fail(error.to_string())
    }
}

impl From<sqlx::Error> for JobError {
    /// A database error is transient when waiting could fix it: the pool, the network, a
    /// deadlock, a serialization failure, a lock or statement timeout. Anything else (a
    /// missing row, a violated constraint) will fail the same way next time.
    fn from(e: sqlx::Error) -> Self {
        let transient = match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
            sqlx::Error::Database(db) => matches!(
                db.code().as_deref(),
                Some("40001" | "40P01" | "55P03" | "57014" | "53300" | "57P01")
            ),
            _ => false,
        };
        if transient {
            JobError::retry(e)
        } else {
            JobError::fail(e)
        }
    }
}

impl From<redis::RedisError> for JobError {
    fn from(e: redis::RedisError) -> Self {
        JobError::retry(e)
    }
}

/// What a handler gets besides its payload.
#[derive(Clone)]
pub struct JobContext {
    pub id: Uuid,
    pub attempt: u32,
    pub max_attempts: u32,
    /// No worker held this job before: it is the job's first lease, so no earlier run of it
    /// can have done any of its work. Unlike `attempt == 1`, false after a hand-back at
    /// shutdown (which gives the attempt back, though the run may have done part of the work),
    /// and after a revive; false too for a job handed back before it started (the lease does
    /// not tell the two apart), and for a job the outbox relay pushed (`JobMeta::relayed`),
    /// which costs a handler only the check it would skip.
    pub first_run: bool,
    pub worker_id: Arc<str>,
    pub request_id: Option<String>,
    pub services: Services,
}

/// One kind of job. Implement it on the payload struct; the struct's constructor takes domain
/// ids, and the struct is what gets serialized into the queue.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable name, `family.action`; stored with every job, so never renamed.
    const KIND: &'static str;
    const QUEUE: Queue;
    const POLICY: Policy = Policy::DEFAULT;

    fn run(self, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// A job ready to be written to the outbox, its type erased (the scheduler's table holds these).
#[derive(Clone, Debug)]
pub struct Envelope {
    pub queue: Queue,
    pub kind: &'static str,
    pub args: serde_json::Value,
    pub max_attempts: u32,
}

impl Envelope {
    pub fn of<J: Job>(job: &J) -> Self {
        Envelope {
            queue: J::QUEUE,
            kind: J::KIND,
            args: serde_json::to_value(job).expect("job payloads serialize to JSON"),
            max_attempts: J::POLICY.max_attempts,
        }
    }
}

pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("no job kind {0:?} on this queue")]
    UnknownKind(String),
    #[error("cannot decode the arguments of {kind}: {error}")]
    Args {
        kind: &'static str,
        error: serde_json::Error,
    },
}

/// The kinds one queue carries, as an enum; the worker decodes each fetched job into it and
/// dispatches with a match. Generated by [`queue_jobs!`].
pub trait QueueJobs: Sized + Send + 'static {
    const QUEUE: Queue;
    fn decode(kind: &str, args: &str) -> Result<Self, DecodeError>;
    fn kind(&self) -> &'static str;
    fn policy(&self) -> Policy;
    fn run(self, ctx: JobContext) -> JobFuture;
}

/// Declares a queue's enum of job kinds. Each payload type must implement [`Job`] with the
/// same queue, which is checked at compile time.
#[macro_export]
macro_rules! queue_jobs {
    ($(#[$meta:meta])* pub enum $name:ident for $queue:path { $($variant:ident($ty:ty)),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub enum $name { $($variant($ty)),* }

        $(const _: () = assert!(
            matches!(<$ty as $crate::job::Job>::QUEUE, $queue),
            "a job kind listed on the wrong queue"
        );)*

        impl $crate::job::QueueJobs for $name {
            const QUEUE: $crate::queue::Queue = $queue;

            #[allow(unused_variables)]
            fn decode(kind: &str, args: &str) -> Result<Self, $crate::job::DecodeError> {
                $(if kind == <$ty as $crate::job::Job>::KIND {
                    return ::serde_json::from_str(args).map(Self::$variant).map_err(|error| {
                        $crate::job::DecodeError::Args { kind: <$ty as $crate::job::Job>::KIND, error }
                    });
                })*
                Err($crate::job::DecodeError::UnknownKind(kind.to_owned()))
            }

            fn kind(&self) -> &'static str {
                match *self { $(Self::$variant(_) => <$ty as $crate::job::Job>::KIND,)* }
            }

            fn policy(&self) -> $crate::job::Policy {
                match *self { $(Self::$variant(_) => <$ty as $crate::job::Job>::POLICY,)* }
            }

            #[allow(unused_variables)]
            fn run(self, ctx: $crate::job::JobContext) -> $crate::job::JobFuture {
                match self { $(Self::$variant(job) => Box::pin($crate::job::Job::run(job, ctx)),)* }
            }
        }
    };
}
