//! Timestamps of the runtime's own spans, so the latency benchmark sees when a handler starts
//! without any hook in the runtime: `jobs/src/worker.rs` opens a `process` span (with the
//! `job_id` field) right before it runs a handler, and `Broker::push` (jobs/src/broker.rs)
//! opens a `publish` span around each push script, which the outbox runs right after the
//! Postgres commit.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Instant,
};

use tracing::{
    Metadata, Subscriber,
    field::{Field, Visit},
    span,
    subscriber::Interest,
};
use tracing_subscriber::{
    Layer, filter::LevelFilter, layer::Context, layer::SubscriberExt, util::SubscriberInitExt,
};
use uuid::Uuid;

tokio::task_local! {
    /// The job whose commit (or push) is running on this task. `publish` carries no job id, so the
    /// span clock reads it from here.
    pub static ENQUEUING: Uuid;
}

/// When each job's spans opened, on the process's monotonic clock.
#[derive(Default)]
pub struct SpanTimes {
    pub started: Mutex<Vec<(Uuid, Instant)>>,
    pub published: Mutex<Vec<(Uuid, Instant)>>,
}

struct SpanClock(Arc<SpanTimes>);

fn is_watched(meta: &Metadata<'_>) -> bool {
    meta.is_span()
        && meta.target().starts_with("groundcrew_jobs")
        && matches!(meta.name(), "process" | "publish")
}

impl<S: Subscriber> Layer<S> for SpanClock {
    // Every other callsite stays disabled, so the clock costs nothing elsewhere.
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_watched(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        is_watched(meta)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
        let at = Instant::now();
        match attrs.metadata().name() {
            "process" => {
                let mut job = JobIdField(None);
                attrs.record(&mut job);
                if let Some(id) = job.0 {
                    self.0.started.lock().expect("span times").push((id, at));
                }
            }
            "publish" => {
                if let Ok(id) = ENQUEUING.try_with(|id| *id) {
                    self.0.published.lock().expect("span times").push((id, at));
                }
            }
            _ => {}
        }
    }
}

struct JobIdField(Option<Uuid>);

impl Visit for JobIdField {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "job_id" {
            self.0 = format!("{value:?}").parse().ok();
        }
    }
}

/// Warnings and errors to stderr, plus the span clock when a benchmark needs it.
pub fn init_tracing(clock: Option<Arc<SpanTimes>>) {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(LevelFilter::WARN);
    tracing_subscriber::registry()
        .with(logs)
        .with(clock.map(SpanClock))
        .init();
}
