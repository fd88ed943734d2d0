//! The feed family: follows, blocks, posts, hybrid fan-out into Redis home feeds, feed reads.
//!
//! Postgres holds the truth (`follows`, `blocks`, `posts`); each home feed in Redis is a capped
//! sorted set of post ids scored by creation time, a cache that is rebuilt from Postgres
//! whenever it is missing. How the pieces keep reads right:
//!
//! - A post is pushed into the feeds that exist (its author's and each follower's) by
//!   [`jobs::FanoutPost`], one Lua call per page of followers. A feed that does not exist is not
//!   created by a push: it is rebuilt in full on its next read, so a feed in Redis is complete.
//! - Authors with more followers than `GROUNDCREW_FEED_FANOUT_MAX_FOLLOWERS` are not pushed:
//!   the fan-out job marks the post `merge` and reads pull such posts from Postgres. The choice
//!   is made per post, so an author crossing the threshold either way leaves every older post
//!   where it was delivered.
//! - Feeds expire after `GROUNDCREW_FEED_INACTIVE_AFTER` (30 days) without a read: pushes skip
//!   inactive followers for free, and their next read rebuilds.
//! - A read shows only posts that exist, are not deleted and whose author is the reader or
//!   someone the reader follows (block removes follows both ways), as the read cache knows
//!   them (`cache`: tombstones and follows sets, corrected when the change commits).
//!   Retraction jobs reclaim the slots later; reads never wait for them.

pub mod cache;
pub mod graph;
pub mod jobs;
pub mod posts;
pub mod read;
pub mod store;

use std::time::Duration;

use crate::{
    queue::Queue,
    settings::{ConfigError, env_duration, env_parse},
};

pub use graph::GraphError;
pub use posts::{Post, PostError};
pub use read::{FeedItem, FeedPage, Position};

crate::queue_jobs! {
    /// Feed fan-out, retraction and backfill.
    pub enum FeedJob for Queue::Feed {
        FanoutPost(jobs::FanoutPost),
        RetractPost(jobs::RetractPost),
        Backfill(jobs::Backfill),
        RetractAuthor(jobs::RetractAuthor),
    }
}

/// The feed family's configuration.
#[derive(Clone, Debug)]
pub struct FeedSettings {
    /// Authors with more followers than this are merged in at read time instead of pushed.
    pub fanout_max_followers: i64,
    /// Entries kept per home feed; older ones fall off.
    pub capacity: usize,
    /// A feed unread this long expires, is no longer pushed to, and is rebuilt on next read.
    pub inactive_after: Duration,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            fanout_max_followers: 10_000,
            capacity: 800,
            inactive_after: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl FeedSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let default = FeedSettings::default();
        let settings = FeedSettings {
            fanout_max_followers: env_parse(
                "GROUNDCREW_FEED_FANOUT_MAX_FOLLOWERS",
                default.fanout_max_followers,
            )?,
            capacity: env_parse("GROUNDCREW_FEED_CAPACITY", default.capacity)?,
            inactive_after: env_duration("GROUNDCREW_FEED_INACTIVE_AFTER", default.inactive_after)?,
        };
        if settings.fanout_max_followers < 0 {
            return Err(ConfigError {
                variable: "GROUNDCREW_FEED_FANOUT_MAX_FOLLOWERS".into(),
                message: "must not be negative".into(),
            });
        }
        if settings.capacity == 0 {
            return Err(ConfigError {
                variable: "GROUNDCREW_FEED_CAPACITY".into(),
                message: "must be at least 1".into(),
            });
        }
        if settings.inactive_after < Duration::from_secs(1) {
            return Err(ConfigError {
                variable: "GROUNDCREW_FEED_INACTIVE_AFTER".into(),
                message: "must be at least 1s".into(),
            });
        }
        Ok(settings)
    }
}
