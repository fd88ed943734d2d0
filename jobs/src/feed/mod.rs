//! The feed family: follows, posts, hybrid fan-out into Redis home feeds, feed reads.

use crate::queue::Queue;

crate::queue_jobs! {
    /// Feed fan-out, retraction and backfill.
    pub enum FeedJob for Queue::Feed {}
}
