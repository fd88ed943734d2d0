//! Operators' view of the job core: queues, dead jobs, job status, schedules, workers, and
//! announcements to users. Writes need `admin`; reads also accept `ops_read`.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use groundcrew_jobs::{
    Queue,
    broker::JobRecord,
    notify::{self, Category, Notification},
    schedule,
};
use poem::{http::StatusCode, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
};
use uuid::Uuid;

use super::from_unix_ms;
use crate::{
    ApiState, Tag,
    auth::{BearerAuth, Caller, Role},
    error::ApiError,
    idempotency::{self, Begun},
    rate_limit::Class,
    request_id::RequestId,
    route_error,
};

pub struct OpsApi;

const READERS: &[Role] = &[Role::Admin, Role::OpsRead];
const WRITERS: &[Role] = &[Role::Admin];

#[derive(Debug, Object)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

#[derive(Debug, Object)]
pub struct QueueInfo {
    pub name: String,
    pub pending: u64,
    pub scheduled: u64,
    pub running: u64,
    pub dead: u64,
    pub paused: bool,
    /// Age of the oldest pending job: the signal to scale the queue's pool on.
    pub oldest_pending_age_seconds: f64,
    /// Live worker processes serving this queue.
    pub workers: u64,
}

#[derive(Debug, Object)]
pub struct DeadJobPage {
    pub items: Vec<DeadJob>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Object)]
pub struct DeadJob {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub failed_at: Option<DateTime<Utc>>,
    pub payload: serde_json::Value,
}

#[derive(Debug, Object)]
pub struct Retried {
    /// How many dead jobs went back to pending.
    pub retried: u64,
}

#[derive(Debug, Object)]
pub struct JobStatus {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// `outbox` (committed, not yet in Redis), `pending`, `scheduled`, `running`,
    /// `succeeded` or `dead`.
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct ScheduleList {
    pub items: Vec<ScheduleInfo>,
}

#[derive(Debug, Object)]
pub struct ScheduleInfo {
    pub name: String,
    /// `sec min hour day-of-month month day-of-week`, or `off`.
    pub cron: String,
    /// The kind of job each tick enqueues.
    pub job: String,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct ScheduleRun {
    pub job_id: Uuid,
}

#[derive(Debug, Object)]
pub struct WorkerList {
    pub items: Vec<WorkerItem>,
}

#[derive(Debug, Object)]
pub struct WorkerItem {
    pub id: String,
    pub queues: Vec<String>,
    pub in_flight: u64,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum NotificationCategory {
    Social,
    Picks,
    Payments,
    Verification,
    Marketing,
}

/// An announcement to send to users.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct AnnouncementInput {
    #[oai(validator(min_items = 1, max_items = 1000, unique_items))]
    pub user_ids: Vec<Uuid>,
    pub category: NotificationCategory,
    #[oai(validator(min_length = 1, max_length = 200))]
    pub title: String,
    #[oai(validator(min_length = 1, max_length = 2000))]
    pub body: String,
    /// Delivered to the apps with the notification.
    pub data: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Object)]
pub struct AnnouncementAccepted {
    pub id: Uuid,
    pub recipients: u32,
}

#[derive(ApiResponse)]
enum Done {
    /// Done.
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
enum RetryAccepted {
    /// The jobs are pending again.
    #[oai(status = 202)]
    Accepted(Json<Retried>),
}

#[derive(ApiResponse)]
enum RunAccepted {
    /// The schedule's job is enqueued.
    #[oai(status = 202)]
    Accepted(Json<ScheduleRun>),
}

#[derive(ApiResponse)]
enum AnnouncementQueued {
    /// Accepted for delivery.
    #[oai(status = 202)]
    Accepted(Json<AnnouncementAccepted>),
}

route_error!(
    /// Failures of the ops listings.
    OpsReadError: 401, 403, 429, 503
);
route_error!(
    /// Failures of ops routes that name a queue, job or schedule.
    OpsTargetError: 401, 403, 404, 422, 429, 503
);
route_error!(
    /// Failures of the dead-job listing.
    DeadJobsError: 401, 403, 422, 429, 503
);
route_error!(
    /// Failures of `POST /v1/ops/notifications`.
    AnnouncementError: 400, 401, 403, 413, 415, 422, 429, 503
);

#[OpenApi(tag = "Tag::Ops")]
impl OpsApi {
    /// Queue depths, pause state, latency and live workers
    #[oai(path = "/v1/ops/queues", method = "get", operation_id = "list_queues")]
    async fn list_queues(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
    ) -> Result<Json<QueueList>, OpsReadError> {
        auth.0.require_any(READERS)?;
        let broker = &state.services.broker;
        let workers = broker.workers().await?;
        let mut queues = Vec::with_capacity(Queue::ALL.len());
        for queue in Queue::ALL {
            let depth = broker.depth(queue).await?;
            queues.push(QueueInfo {
                name: queue.name().into(),
                pending: depth.pending,
                scheduled: depth.scheduled,
                running: depth.running,
                dead: depth.dead,
                paused: depth.paused,
                oldest_pending_age_seconds: depth.oldest_pending_age.as_secs_f64(),
                workers: workers
                    .iter()
                    .filter(|w| w.queues.iter().any(|q| q == queue.name()))
                    .count() as u64,
            });
        }
        Ok(Json(QueueList { queues }))
    }

    /// Pause a queue
    ///
    /// Its pools stop fetching until it is resumed; jobs keep arriving. 404 for an unknown queue.
    #[oai(
        path = "/v1/ops/queues/:name/pause",
        method = "post",
        operation_id = "pause_queue"
    )]
    async fn pause_queue(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        name: Path<String>,
    ) -> Result<Done, OpsTargetError> {
        set_paused(&state, &auth.0, &name, true).await
    }

    /// Resume a paused queue
    #[oai(
        path = "/v1/ops/queues/:name/resume",
        method = "post",
        operation_id = "resume_queue"
    )]
    async fn resume_queue(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        name: Path<String>,
    ) -> Result<Done, OpsTargetError> {
        set_paused(&state, &auth.0, &name, false).await
    }

    /// Dead jobs, oldest failure first
    ///
    /// Jobs that failed for good or ran out of attempts, with their last error. Without
    /// `queue`, every queue in turn.
    #[oai(
        path = "/v1/ops/dead-jobs",
        method = "get",
        operation_id = "list_dead_jobs"
    )]
    async fn list_dead_jobs(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        queue: Query<Option<String>>,
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))] limit: Query<Option<u64>>,
        cursor: Query<Option<String>>,
    ) -> Result<Json<DeadJobPage>, DeadJobsError> {
        auth.0.require_any(READERS)?;
        let queues: Vec<Queue> = match queue.0.as_deref() {
            Some(name) => vec![
                name.parse()
                    .map_err(|e| ApiError::invalid_field("queue", format!("{e}")))?,
            ],
            None => Queue::ALL.to_vec(),
        };
        let limit = limit.0.unwrap_or(50);
        let mut position = match cursor.0.as_deref() {
            Some(c) => DeadJobCursor::decode(c, &queues)?,
            None => DeadJobCursor {
                queue: 0,
                offset: 0,
            },
        };
        let mut items = Vec::new();
        while position.queue < queues.len() && (items.len() as u64) < limit {
            let queue = queues[position.queue];
            let wanted = limit - items.len() as u64;
            let page = state
                .services
                .broker
                .dead_jobs(queue, position.offset, wanted)
                .await?;
            position.offset += page.len() as u64;
            if (page.len() as u64) < wanted {
                position = DeadJobCursor {
                    queue: position.queue + 1,
                    offset: 0,
                };
            }
            items.extend(page.into_iter().map(dead_job));
        }
        let next_cursor =
            (position.queue < queues.len()).then(|| position.encode(queues[position.queue]));
        Ok(Json(DeadJobPage { items, next_cursor }))
    }

    /// Retry one dead job
    ///
    /// Puts it back in line with its attempts reset. 404 when no dead job has this id.
    #[oai(
        path = "/v1/ops/dead-jobs/:id/retry",
        method = "post",
        operation_id = "retry_dead_job"
    )]
    async fn retry_dead_job(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<RetryAccepted, OpsTargetError> {
        auth.0.require_any(WRITERS)?;
        let broker = &state.services.broker;
        let not_dead = || ApiError::not_found("dead_job_not_found", "no dead job has this id");
        let job = broker.job(id.0).await?.ok_or_else(not_dead)?;
        let retried = broker.revive(job.queue, &[id.0]).await?;
        if retried == 0 {
            return Err(not_dead().into());
        }
        Ok(RetryAccepted::Accepted(Json(Retried { retried })))
    }

    /// Retry every dead job of a queue
    #[oai(
        path = "/v1/ops/queues/:name/dead-jobs/retry",
        method = "post",
        operation_id = "retry_dead_jobs"
    )]
    async fn retry_dead_jobs(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        name: Path<String>,
    ) -> Result<RetryAccepted, OpsTargetError> {
        auth.0.require_any(WRITERS)?;
        let retried = state
            .services
            .broker
            .revive_all(queue_named(&name)?)
            .await?;
        Ok(RetryAccepted::Accepted(Json(Retried { retried })))
    }

    /// A job's status
    ///
    /// Finished jobs stay visible for the retention (`GROUNDCREW_JOB_RETENTION`); a job
    /// committed while Redis was down shows as `outbox` until the relay pushes it.
    #[oai(path = "/v1/ops/jobs/:id", method = "get", operation_id = "get_job")]
    async fn get_job(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        id: Path<Uuid>,
    ) -> Result<Json<JobStatus>, OpsTargetError> {
        auth.0.require_any(READERS)?;
        if let Some(job) = state.services.broker.job(id.0).await? {
            return Ok(Json(job_status(job)));
        }
        let waiting: Option<(String, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT queue, kind, created_at FROM job_outbox WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&state.services.db)
                .await?;
        let (queue, kind, created_at) =
            waiting.ok_or_else(|| ApiError::not_found("job_not_found", "no job has this id"))?;
        Ok(Json(JobStatus {
            id: id.0,
            queue,
            kind,
            status: "outbox".into(),
            attempts: 0,
            last_error: None,
            enqueued_at: Some(created_at),
            started_at: None,
            finished_at: None,
        }))
    }

    /// The cron table with next and last runs
    #[oai(
        path = "/v1/ops/schedules",
        method = "get",
        operation_id = "list_schedules"
    )]
    async fn list_schedules(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
    ) -> Result<Json<ScheduleList>, OpsReadError> {
        auth.0.require_any(READERS)?;
        let statuses = schedule::statuses(&state.services, &load_schedules()?).await?;
        Ok(Json(ScheduleList {
            items: statuses
                .into_iter()
                .map(|s| ScheduleInfo {
                    name: s.name.into(),
                    cron: s.cron,
                    job: s.job.into(),
                    next_run_at: s.next_run_at,
                    last_run_at: s.last_run_at,
                })
                .collect(),
        }))
    }

    /// Run a schedule now
    ///
    /// Enqueues its job at once, outside its cron times. 404 for an unknown schedule.
    #[oai(
        path = "/v1/ops/schedules/:name/run",
        method = "post",
        operation_id = "run_schedule"
    )]
    async fn run_schedule(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        name: Path<String>,
    ) -> Result<RunAccepted, OpsTargetError> {
        auth.0.require_any(WRITERS)?;
        let schedule = load_schedules()?
            .into_iter()
            .find(|s| s.name == name.0)
            .ok_or_else(|| {
                ApiError::not_found("schedule_not_found", "no schedule has this name")
            })?;
        let job_id = schedule::run_now(&state.services, &schedule).await?;
        Ok(RunAccepted::Accepted(Json(ScheduleRun { job_id })))
    }

    /// Live worker processes
    #[oai(
        path = "/v1/ops/workers",
        method = "get",
        operation_id = "list_workers"
    )]
    async fn list_workers(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
    ) -> Result<Json<WorkerList>, OpsReadError> {
        auth.0.require_any(READERS)?;
        let workers = state.services.broker.workers().await?;
        Ok(Json(WorkerList {
            items: workers
                .into_iter()
                .map(|w| WorkerItem {
                    id: w.id,
                    queues: w.queues,
                    in_flight: w.in_flight,
                    last_heartbeat_at: from_unix_ms(w.last_heartbeat_ms),
                })
                .collect(),
        }))
    }

    /// Announce something to users
    ///
    /// Recorded now and delivered by the notify family as push and email, honouring each
    /// user's preferences. Send an `Idempotency-Key` so a retried request announces once.
    /// Counts against the stricter rate limit of routes that cause paid work.
    #[oai(
        path = "/v1/ops/notifications",
        method = "post",
        operation_id = "create_announcement"
    )]
    async fn create_announcement(
        &self,
        state: Data<&ApiState>,
        auth: BearerAuth,
        request_id: RequestId,
        /// Replays the first response for a repeated key with the same body.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: Json<AnnouncementInput>,
    ) -> Result<AnnouncementQueued, AnnouncementError> {
        let caller: &Caller = &auth.0;
        caller.require_any(WRITERS)?;
        state
            .limiter
            .check(Class::Paid, &caller.id.to_string())
            .await?;
        let input = body.0;
        let mut claim = match idempotency::begin(
            &state,
            &request_id,
            caller.id,
            idempotency_key.0,
            "create_announcement",
            &input,
        )
        .await?
        {
            Begun::Replay(first) => return Ok(AnnouncementQueued::Accepted(Json(first))),
            Begun::Fresh(claim) => claim,
        };
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO ops_announcements
                 (id, created_by, user_ids, category, title, body, data, request_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(caller.id)
        .bind(&input.user_ids)
        .bind(poem_openapi::types::ToJSON::to_json_string(&input.category).trim_matches('"'))
        .bind(&input.title)
        .bind(&input.body)
        .bind(serde_json::to_value(input.data.clone().unwrap_or_default()).unwrap_or_default())
        .bind(&request_id.0)
        .execute(claim.tx().conn())
        .await?;
        on_announcement_created(claim.tx(), id, &input).await?;
        let accepted = AnnouncementAccepted {
            id,
            recipients: input.user_ids.len() as u32,
        };
        claim.commit(StatusCode::ACCEPTED, &accepted).await?;
        Ok(AnnouncementQueued::Accepted(Json(accepted)))
    }
}

/// Runs in the transaction that records the announcement, so the deliveries exist exactly
/// when the announcement commits.
pub async fn on_announcement_created(
    tx: &mut groundcrew_jobs::JobTx,
    id: Uuid,
    announcement: &AnnouncementInput,
) -> Result<(), ApiError> {
    let category = match announcement.category {
        NotificationCategory::Social => Category::Social,
        NotificationCategory::Picks => Category::Picks,
        NotificationCategory::Payments => Category::Payments,
        NotificationCategory::Verification => Category::Verification,
        NotificationCategory::Marketing => Category::Marketing,
    };
    let mut data = serde_json::Map::from_iter(announcement.data.clone().unwrap_or_default());
    // Lets the apps and operators tie a notification back to the announcement that sent it.
    data.insert("announcement_id".into(), serde_json::json!(id));
    let notifications = announcement
        .user_ids
        .iter()
        .map(|user| {
            Notification::new(*user, category, &announcement.title, &announcement.body)
                .data(serde_json::Value::Object(data.clone()))
        })
        .collect();
    notify::notify_many(tx, notifications).await?;
    Ok(())
}

async fn set_paused(
    state: &ApiState,
    caller: &Caller,
    name: &str,
    paused: bool,
) -> Result<Done, OpsTargetError> {
    caller.require_any(WRITERS)?;
    let queue = queue_named(name)?;
    let broker = &state.services.broker;
    if paused {
        broker.pause(queue).await?;
    } else {
        broker.resume(queue).await?;
    }
    Ok(Done::NoContent)
}

fn queue_named(name: &str) -> Result<Queue, ApiError> {
    name.parse()
        .map_err(|e| ApiError::not_found("queue_not_found", format!("{e}")))
}

fn load_schedules() -> Result<Vec<schedule::Schedule>, ApiError> {
    schedule::load().map_err(|e| {
        tracing::error!(error = %e, "schedule table does not load");
        ApiError::internal()
    })
}

fn dead_job(job: JobRecord) -> DeadJob {
    DeadJob {
        id: job.id,
        queue: job.queue.name().into(),
        payload: serde_json::from_str(&job.args).unwrap_or(serde_json::Value::Null),
        kind: job.kind,
        attempts: job.attempts,
        last_error: job.last_error,
        failed_at: job.finished_at_ms.and_then(from_unix_ms),
    }
}

fn job_status(job: JobRecord) -> JobStatus {
    JobStatus {
        id: job.id,
        queue: job.queue.name().into(),
        kind: job.kind,
        status: job.status,
        attempts: job.attempts,
        last_error: job.last_error,
        enqueued_at: from_unix_ms(job.enqueued_at_ms),
        started_at: job.started_at_ms.and_then(from_unix_ms),
        finished_at: job.finished_at_ms.and_then(from_unix_ms),
    }
}

/// Where the next page of dead jobs starts: a queue and a position in its dead set. Opaque to
/// clients (base64 of `queue:offset`).
struct DeadJobCursor {
    /// Index into the queues being listed.
    queue: usize,
    offset: u64,
}

impl DeadJobCursor {
    fn encode(&self, queue: Queue) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", queue.name(), self.offset))
    }

    fn decode(cursor: &str, queues: &[Queue]) -> Result<Self, ApiError> {
        let invalid = || ApiError::invalid_field("cursor", "not a cursor this listing returned");
        let text = URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(invalid)?;
        let (name, offset) = text.split_once(':').ok_or_else(invalid)?;
        let queue = queues
            .iter()
            .position(|q| q.name() == name)
            .ok_or_else(invalid)?;
        Ok(DeadJobCursor {
            queue,
            offset: offset.parse().map_err(|_| invalid())?,
        })
    }
}
