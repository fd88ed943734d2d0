//! What a feed read needs besides the feed itself, cached in Redis so that a warm read asks
//! Postgres nothing: each post (author and body, or a tombstone once deleted), each author's
//! handle, each reader's follows, and the authors whose posts are merged at read time.
//! [`FeedCache::window`] reads a window of the feed with all of it.
//!
//! Hydration in Postgres was ~440 µs of Postgres CPU per read and capped reads at ~2,000/s on
//! two cores (bench/RESULTS.md). Each cached fact is kept right this way:
//!
//! - Posts only change by deletion. A delete writes a tombstone over the cached post after it
//!   commits, and its retraction job writes it again (in case the process died in between). A
//!   read that finds a post missing caches it from Postgres with `SET NX`, so a fill that read
//!   the post just before the delete committed cannot overwrite the tombstone. Both expire
//!   after [`POST_TTL`]; the next read caches the truth again.
//! - Follows sets change with follow, unfollow and block: each deletes the sets it changed
//!   after it commits, and its feed job (backfill, retraction) deletes them again. A rebuild
//!   takes a lease in the set before it reads Postgres and writes only if the lease is still
//!   there, so a rebuild that read Postgres before a change committed never outlives the change.
//!   A read hides every post whose author the set does not hold: an unfollow or a block hides
//!   the author's posts at once, whatever their retraction job and in-flight fan-outs do.
//! - Handles change with `PUT /v1/me`, which deletes the cached handle after it commits. A read
//!   racing the change may cache the old handle again; it expires within [`HANDLE_TTL`].
//! - The merge-authors set only grows: the fan-out job adds an author whenever it decides to
//!   merge one of their posts. A read that finds it missing rebuilds it from Postgres.

use std::{collections::HashMap, str::FromStr, sync::LazyLock, time::Duration};

use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Services, broker::Broker, outbox::JobTx};

use super::{
    read::FeedItem,
    store::{BUILT, Entry, FeedStore, entries_below, window_range},
};

/// Ends a follows-set rebuild: adds the followees only if the rebuild's lease is still there.
static FINISH_FOLLOWS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
         for i = 2, #ARGV, 1000 do
           redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
         end
         redis.call('SADD', KEYS[1], '~built')
         return 1",
    )
});

/// How long a cached post or tombstone lives without being written again.
pub const POST_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a cached handle lives: the bound on showing an old handle after a change.
pub const HANDLE_TTL: Duration = Duration::from_secs(600);

/// Set members added per command when a set is rebuilt.
const CHUNK: usize = 1000;

/// Where each cached fact lives, under the queue prefix (and its hash tag).
pub struct CacheKeys {
    prefix: String,
}

impl CacheKeys {
    pub fn new(broker: &Broker) -> Self {
        CacheKeys {
            prefix: broker.prefix().to_owned(),
        }
    }

    fn handle_prefix(&self) -> String {
        format!("{}:handle:", self.prefix)
    }

    pub fn post(&self, id: Uuid) -> String {
        format!("{}:post:{id}", self.prefix)
    }

    pub fn handle(&self, user: Uuid) -> String {
        format!("{}:handle:{user}", self.prefix)
    }

    pub fn follows(&self, user: Uuid) -> String {
        format!("{}:follows:{user}", self.prefix)
    }

    pub fn merge_authors(&self) -> String {
        format!("{}:merge-authors", self.prefix)
    }
}

/// After `tx` commits, `users`' follows sets are rebuilt on their next read.
pub fn follows_changed(tx: &mut JobTx, users: &[Uuid]) {
    let keys = CacheKeys::new(tx.broker());
    for user in users {
        tx.after_commit().del(keys.follows(*user)).ignore();
    }
}

/// After `tx` commits, the post is hidden from every feed that still holds it.
pub fn post_deleted(tx: &mut JobTx, post: Uuid) {
    let key = CacheKeys::new(tx.broker()).post(post);
    tx.after_commit()
        .set_ex(key, "", POST_TTL.as_secs())
        .ignore();
}

/// After `tx` commits, the user's posts show their handle as Postgres has it.
pub fn handle_changed(tx: &mut JobTx, user: Uuid) {
    let key = CacheKeys::new(tx.broker()).handle(user);
    tx.after_commit().del(key).ignore();
}

/// A post as cached: the author's id (36 characters, read without parsing the rest) and this,
/// as JSON.
#[derive(Serialize, Deserialize)]
struct CachedBody {
    text: String,
    media_ids: Vec<Uuid>,
}

/// What the cache says about one window entry.
pub enum Shown {
    /// Show it.
    Post(FeedItem),
    /// Deleted, or by an author the reader does not follow.
    Hidden,
    /// The post or its author's handle is not cached.
    Unknown,
}

/// A set the read script needs and Redis does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    Feed,
    Follows,
    MergeAuthors,
}

pub enum Lookup {
    Missing(Missing),
    Ready {
        /// Followed authors with posts merged at read time.
        merged_authors: Vec<Uuid>,
        /// Up to the count asked for, strictly below the cursor, newest first.
        entries: Vec<(Entry, Shown)>,
    },
}

/// The first trip of a read: whether the feed, the follows set and the merge-authors set are
/// built, the window (member, score) and the followed merge authors.
type FirstTrip = (Option<f64>, bool, bool, Vec<(String, f64)>, Vec<String>);

/// Handle on the read cache; cheap to build per request.
pub struct FeedCache {
    conn: ConnectionManager,
    keys: CacheKeys,
    feeds: FeedStore,
    activity_ttl_secs: i64,
}

impl FeedCache {
    pub fn new(services: &Services) -> Self {
        FeedCache {
            conn: services.broker.connection(),
            keys: CacheKeys::new(&services.broker),
            feeds: FeedStore::new(services),
            activity_ttl_secs: services.feed.inactive_after.as_secs() as i64,
        }
    }

    /// Up to `count` entries of `reader`'s feed strictly below `below`, each with what the
    /// cache knows of it. Counts as activity: the feed and follows set expire later.
    ///
    /// Three round trips of plain commands: the sets and the window, the window's posts, then
    /// the follows and handles of the page's authors (each once; a page repeats authors). One
    /// Lua script did it in one trip at ~120 µs of Redis a read, two thirds of it in the Lua VM
    /// and its reply; Redis, single-threaded, was then the busiest process under load.
    pub async fn window(
        &self,
        reader: Uuid,
        below: Option<Entry>,
        count: usize,
    ) -> redis::RedisResult<Lookup> {
        let feed = self.feeds.key(reader);
        let follows = self.keys.follows(reader);
        let merge_authors = self.keys.merge_authors();
        let mut conn = self.conn.clone();
        // Atomic, so that a feed dropped meanwhile cannot pass for a complete, empty one.
        let (feed_built, follows_built, merge_built, raw, merged): FirstTrip = redis::pipe()
            .atomic()
            .zscore(&feed, BUILT)
            .sismember(&follows, BUILT)
            .sismember(&merge_authors, BUILT)
            .add_command(window_range(&feed, below, count))
            .sinter(&[&follows, &merge_authors])
            .expire(&feed, self.activity_ttl_secs)
            .ignore()
            .expire(&follows, self.activity_ttl_secs)
            .ignore()
            .query_async(&mut conn)
            .await?;
        match (feed_built, follows_built, merge_built) {
            (None, _, _) => return Ok(Lookup::Missing(Missing::Feed)),
            (_, false, _) => return Ok(Lookup::Missing(Missing::Follows)),
            (_, _, false) => return Ok(Lookup::Missing(Missing::MergeAuthors)),
            _ => {}
        }
        let window = entries_below(raw, below, count);
        let merged_authors = merged.iter().filter_map(|m| m.parse().ok()).collect();
        if window.is_empty() {
            return Ok(Lookup::Ready {
                merged_authors,
                entries: Vec::new(),
            });
        }
        let post_keys: Vec<String> = window.iter().map(|e| self.keys.post(e.post_id)).collect();
        let posts: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&post_keys)
            .query_async(&mut conn)
            .await?;
        let mut authors: Vec<&str> = posts
            .iter()
            .flatten()
            .filter(|post| post.len() > 36)
            .map(|post| &post[..36])
            .collect();
        authors.sort_unstable();
        authors.dedup();
        let mut shown_authors: HashMap<&str, Option<String>> = HashMap::new();
        if !authors.is_empty() {
            let prefix = self.keys.handle_prefix();
            let handle_keys: Vec<String> = authors.iter().map(|a| format!("{prefix}{a}")).collect();
            let (still_built, followed, handles): (bool, Vec<bool>, Vec<Option<String>>) =
                redis::pipe()
                    .atomic()
                    .sismember(&follows, BUILT)
                    .cmd("SMISMEMBER")
                    .arg(&follows)
                    .arg(&authors)
                    .cmd("MGET")
                    .arg(&handle_keys)
                    .query_async(&mut conn)
                    .await?;
            // Dropped since the first trip (a follow change committed): its members say
            // nothing now, and would hide every author.
            if !still_built {
                return Ok(Lookup::Missing(Missing::Follows));
            }
            let reader = reader.to_string();
            for ((author, followed), handle) in authors.iter().zip(followed).zip(handles) {
                if followed || *author == reader {
                    shown_authors.insert(author, handle);
                }
            }
        }
        let entries = window
            .into_iter()
            .zip(&posts)
            .map(|(entry, post)| (entry, shown(entry, post.as_deref(), &shown_authors)))
            .collect();
        Ok(Lookup::Ready {
            merged_authors,
            entries,
        })
    }

    /// Caches `posts` (and their authors' handles) from Postgres; tombstones for posts deleted
    /// or gone.
    pub async fn fill(&self, db: &PgPool, posts: &[Uuid]) -> Result<(), FillError> {
        let rows: Vec<(Uuid, Uuid, String, Vec<Uuid>, bool, String)> = sqlx::query_as(
            "SELECT p.id, p.author_id, p.text, p.media_ids, p.deleted_at IS NOT NULL, u.handle
             FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = ANY($1)",
        )
        .bind(posts)
        .fetch_all(db)
        .await?;
        let mut pipe = redis::pipe();
        let post_ttl = POST_TTL.as_secs();
        for id in posts {
            if !rows.iter().any(|row| row.0 == *id) {
                pipe.set_ex(self.keys.post(*id), "", post_ttl).ignore();
            }
        }
        for (id, author, text, media_ids, deleted, handle) in rows {
            if deleted {
                pipe.set_ex(self.keys.post(id), "", post_ttl).ignore();
                continue;
            }
            let body = serde_json::to_string(&CachedBody { text, media_ids })
                .expect("a post body serializes");
            pipe.cmd("SET")
                .arg(self.keys.post(id))
                .arg(format!("{author}{body}"))
                .arg("NX")
                .arg("EX")
                .arg(post_ttl)
                .ignore();
            pipe.set_ex(self.keys.handle(author), handle, HANDLE_TTL.as_secs())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Rebuilds `reader`'s follows set from Postgres, unless a follow change commits meanwhile
    /// (the next read rebuilds then).
    pub async fn rebuild_follows(&self, db: &PgPool, reader: Uuid) -> Result<(), FillError> {
        let key = self.keys.follows(reader);
        let lease = format!("~lease:{}", Uuid::new_v4().simple());
        redis::pipe()
            .sadd(&key, &lease)
            .ignore()
            .expire(&key, self.activity_ttl_secs)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        let followees: Vec<Uuid> =
            sqlx::query_scalar("SELECT followee_id FROM follows WHERE follower_id = $1")
                .bind(reader)
                .fetch_all(db)
                .await?;
        let mut finish = FINISH_FOLLOWS.key(&key);
        finish.arg(&lease);
        for followee in followees {
            finish.arg(followee.to_string());
        }
        finish.invoke_async::<i64>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Rebuilds the merge-authors set from Postgres. Fan-outs that add to it meanwhile only
    /// add what Postgres would have said.
    pub async fn rebuild_merge_authors(&self, db: &PgPool) -> Result<(), FillError> {
        let authors: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT author_id FROM posts WHERE delivery = 'merge' AND deleted_at IS NULL",
        )
        .fetch_all(db)
        .await?;
        let key = self.keys.merge_authors();
        let mut pipe = redis::pipe();
        for chunk in authors.chunks(CHUNK) {
            let members: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            pipe.sadd(&key, members).ignore();
        }
        pipe.sadd(&key, BUILT).ignore();
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    /// Records that `author` has posts merged at read time.
    pub async fn add_merge_author(&self, author: Uuid) -> redis::RedisResult<()> {
        redis::cmd("SADD")
            .arg(self.keys.merge_authors())
            .arg(author.to_string())
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Hides a deleted post from every feed (the retraction job's copy of [`post_deleted`]).
    pub async fn hide_post(&self, post: Uuid) -> redis::RedisResult<()> {
        redis::cmd("SET")
            .arg(self.keys.post(post))
            .arg("")
            .arg("EX")
            .arg(POST_TTL.as_secs())
            .query_async(&mut self.conn.clone())
            .await
    }

    /// Makes `user`'s follows set be rebuilt on their next read (the feed jobs' copy of
    /// [`follows_changed`]).
    pub async fn forget_follows(&self, user: Uuid) -> redis::RedisResult<()> {
        redis::cmd("DEL")
            .arg(self.keys.follows(user))
            .query_async(&mut self.conn.clone())
            .await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// What to show for `entry` given its cached post (if any) and the authors to show with their
/// cached handles.
fn shown(entry: Entry, post: Option<&str>, authors: &HashMap<&str, Option<String>>) -> Shown {
    let Some(cached) = post else {
        return Shown::Unknown;
    };
    if cached.is_empty() {
        return Shown::Hidden;
    }
    if cached.len() <= 36 {
        return Shown::Unknown;
    }
    let (author, body) = cached.split_at(36);
    let handle = match authors.get(author) {
        None => return Shown::Hidden,
        Some(None) => return Shown::Unknown,
        Some(Some(handle)) => handle,
    };
    match (
        Uuid::from_str(author),
        serde_json::from_str::<CachedBody>(body),
    ) {
        (Ok(author_id), Ok(body)) => Shown::Post(FeedItem {
            id: entry.post_id,
            author_id,
            author_handle: handle.clone(),
            text: body.text,
            media_ids: body.media_ids,
            created_at: entry.at,
        }),
        // Written by another version: cache it again.
        _ => Shown::Unknown,
    }
}
