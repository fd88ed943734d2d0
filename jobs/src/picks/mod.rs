//! The picks family: lock at game start, settle on result, stats, leaderboards.

use crate::queue::Queue;

crate::queue_jobs! {
    /// Pick locking and settlement.
    pub enum PicksJob for Queue::Picks {}
}
