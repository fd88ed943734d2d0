//! Which enum of job kinds each queue's pool decodes into. Adding a queue or moving a kind
//! happens here and in the family's `queue_jobs!`.

use std::sync::Arc;

use futures::{FutureExt, future::BoxFuture};
use tokio_util::sync::CancellationToken;

use crate::{maintenance::MaintenanceJob, queue::Queue, worker::Pool};

crate::queue_jobs! {
    /// Feed fan-out, retraction and backfill.
    pub enum FeedJob for Queue::Feed {}
}
crate::queue_jobs! {
    /// Thumbnails and renditions.
    pub enum MediaJob for Queue::Media {}
}
crate::queue_jobs! {
    /// Pick locking and settlement.
    pub enum PicksJob for Queue::Picks {}
}
crate::queue_jobs! {
    /// Escrow payments, releases and refunds.
    pub enum EscrowJob for Queue::Escrow {}
}
crate::queue_jobs! {
    /// Push and email delivery.
    pub enum NotifyJob for Queue::Notify {}
}
crate::queue_jobs! {
    /// Identity-verification sessions and provider events.
    pub enum VerificationJob for Queue::Verification {}
}

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
