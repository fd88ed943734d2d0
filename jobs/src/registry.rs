//! Which enum of job kinds each queue's pool decodes into. A family lists its kinds in its own
//! `queue_jobs!`; this is the one place that maps queues to those enums.

use std::sync::Arc;

use futures::{FutureExt, future::BoxFuture};
use tokio_util::sync::CancellationToken;

use crate::{
    escrow::EscrowJob, feed::FeedJob, maintenance::MaintenanceJob, media::MediaJob,
    notify::NotifyJob, picks::PicksJob, queue::Queue, verification::VerificationJob, worker::Pool,
};

pub(crate) fn run_pool(pool: Arc<Pool>, stop: CancellationToken) -> BoxFuture<'static, ()> {
    match pool.queue() {
        Queue::Feed => pool.run::<FeedJob>(stop).boxed(),
        Queue::Media => pool.run::<MediaJob>(stop).boxed(),
        Queue::Picks => pool.run::<PicksJob>(stop).boxed(),
        Queue::Escrow => pool.run::<EscrowJob>(stop).boxed(),
        Queue::Notify => pool.run::<NotifyJob>(stop).boxed(),
        Queue::Verification => pool.run::<VerificationJob>(stop).boxed(),
        Queue::Maintenance => pool.run::<MaintenanceJob>(stop).boxed(),
    }
}
