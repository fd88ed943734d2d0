//! Home feeds in Redis: one sorted set per user under `<prefix>:feed:<user id>`, members are
//! post ids, scores the post's creation time in microseconds (exact in a double until 2255).
//! Two markers at score 0 say whether the set is complete: `~building` while a rebuild runs
//! (so pushes made meanwhile land in it), `~built` once it holds everything Postgres had.

use std::{str::FromStr, sync::LazyLock};

use chrono::{DateTime, Utc};
use redis::{Script, aio::ConnectionManager};
use uuid::Uuid;

use crate::Services;

use super::FeedSettings;

static ADD_TO_EXISTING: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("add.lua")));

const BUILDING: &str = "~building";
/// Marks a feed (and, in `cache`, a set) as holding everything Postgres had.
pub(super) const BUILT: &str = "~built";

/// One post in a feed, where it sorts: newest first, ties broken by id (UUIDv7, so by time too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub post_id: Uuid,
}

impl Entry {
    pub(super) fn score(&self) -> i64 {
        self.at.timestamp_micros()
    }
}

/// Handle on the feeds; cheap to build per job or request.
pub struct FeedStore {
    conn: ConnectionManager,
    prefix: String,
    capacity: usize,
    ttl_secs: i64,
}

impl FeedStore {
    pub fn new(services: &Services) -> Self {
        Self::with_settings(services, &services.feed)
    }

    pub fn with_settings(services: &Services, settings: &FeedSettings) -> Self {
        FeedStore {
            conn: services.broker.connection(),
            prefix: format!("{}:feed:", services.broker.prefix()),
            capacity: settings.capacity,
            ttl_secs: settings.inactive_after.as_secs() as i64,
        }
    }

    pub fn key(&self, user: Uuid) -> String {
        format!("{}{}", self.prefix, user)
    }

    /// Adds `entries` to each of `users`' feeds that exist, in one round trip; returns how many
    /// feeds were written.
    pub async fn add_to_existing(
        &self,
        users: &[Uuid],
        entries: &[Entry],
    ) -> redis::RedisResult<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        self.add(users, entries, false).await
    }

    async fn add(
        &self,
        users: &[Uuid],
        entries: &[Entry],
        mark_built: bool,
    ) -> redis::RedisResult<u64> {
        if users.is_empty() {
            return Ok(0);
        }
        let mut call = ADD_TO_EXISTING.prepare_invoke();
        for user in users {
            call.key(self.key(*user));
        }
        call.arg(self.capacity)
            .arg(if mark_built { "1" } else { "0" });
        for entry in entries {
            call.arg(entry.score()).arg(entry.post_id.to_string());
        }
        call.invoke_async(&mut self.conn.clone()).await
    }

    /// Removes posts from each of `users`' feeds, in one round trip.
    pub async fn remove(&self, users: &[Uuid], posts: &[Uuid]) -> redis::RedisResult<()> {
        if users.is_empty() || posts.is_empty() {
            return Ok(());
        }
        let members: Vec<String> = posts.iter().map(Uuid::to_string).collect();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.zrem(self.key(*user), &members).ignore();
        }
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// Every post id in a feed (at most its capacity).
    pub async fn members(&self, user: Uuid) -> redis::RedisResult<Vec<Uuid>> {
        let raw: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.key(user))
            .arg("(0")
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(raw.iter().filter_map(|m| Uuid::from_str(m).ok()).collect())
    }

    /// Up to `count` entries strictly older than `below` (newest first), and whether the feed
    /// is complete; `None` when the feed has to be rebuilt first. Counts as activity: the
    /// feed's expiry moves forward.
    pub async fn window(
        &self,
        user: Uuid,
        below: Option<Entry>,
        count: usize,
    ) -> redis::RedisResult<Option<Vec<Entry>>> {
        let key = self.key(user);
        let (built, raw): (Option<f64>, Vec<(String, f64)>) = redis::pipe()
            .zscore(&key, BUILT)
            .add_command(window_range(&key, below, count))
            .expire(&key, self.ttl_secs)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        if built.is_none() {
            return Ok(None);
        }
        Ok(Some(entries_below(raw, below, count)))
    }

    /// First step of a rebuild: makes the feed exist, so pushes from now on land in it, before
    /// the caller reads Postgres.
    pub async fn begin_rebuild(&self, user: Uuid) -> redis::RedisResult<()> {
        let key = self.key(user);
        redis::pipe()
            .zadd(&key, BUILDING, 0)
            .ignore()
            .expire(&key, self.ttl_secs)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Last step of a rebuild: adds what Postgres had (a union, so pushes made during the
    /// rebuild stay) and marks the feed complete; does nothing if the feed vanished meanwhile
    /// (the next read rebuilds again).
    pub async fn finish_rebuild(&self, user: Uuid, entries: &[Entry]) -> redis::RedisResult<()> {
        self.add(&[user], entries, true).await.map(drop)
    }
}

/// The feed entries from `below` down, newest first, with their scores: enough that
/// [`entries_below`] can keep `count` of them strictly below `below`.
pub(super) fn window_range(key: &str, below: Option<Entry>, count: usize) -> redis::Cmd {
    let max = below.map_or("+inf".to_owned(), |b| b.score().to_string());
    // Entries at exactly `below`'s microsecond sort by id; room to skip those not below it.
    let slack = if below.is_some() { 8 } else { 0 };
    let mut range = redis::cmd("ZREVRANGEBYSCORE");
    range
        .arg(key)
        .arg(max)
        .arg("(0")
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(count + slack);
    range
}

/// The first `count` entries of a [`window_range`] reply strictly below `below` (the reply may
/// start with entries at `below`'s own microsecond).
pub(super) fn entries_below(
    raw: Vec<(String, f64)>,
    below: Option<Entry>,
    count: usize,
) -> Vec<Entry> {
    raw.into_iter()
        .filter_map(|(member, score)| {
            Some(Entry {
                at: DateTime::from_timestamp_micros(score as i64)?,
                post_id: Uuid::from_str(&member).ok()?,
            })
        })
        .filter(|e| below.is_none_or(|b| *e < b))
        .take(count)
        .collect()
}
