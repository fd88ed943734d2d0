//! Reading a home feed: a window of post ids from Redis (rebuilt from Postgres first when the
//! feed is missing), shown from the read cache (`cache.rs`), merged with the recent posts of
//! followed authors above the fan-out threshold. A warm read of a reader who follows no such
//! author asks Postgres nothing; when Redis cannot hold what a read needs, the page is hydrated
//! in one SQL query instead.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::Services;

use super::{
    cache::{FeedCache, FillError, Lookup, Missing, Shown},
    store::{Entry, FeedStore},
};

/// Where a page ends: the position of its last item.
pub type Position = Entry;

/// Rounds one page may take when a read hides many stale entries; the page then ends early
/// with a cursor, and the next request carries on.
const MAX_ROUNDS: usize = 4;
/// Cache reads per round: one per repair a read may need (feed, follows set, merge-authors
/// set, posts to cache), then one that shows the page.
const REPAIRS: usize = 5;

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct FeedItem {
    pub id: Uuid,
    pub author_id: Uuid,
    pub author_handle: String,
    pub text: String,
    pub media_ids: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl FeedItem {
    fn position(&self) -> Position {
        Entry {
            at: self.created_at,
            post_id: self.id,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// Opaque; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a cursor this feed returned")]
    BadCursor,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl From<FillError> for ReadError {
    fn from(e: FillError) -> Self {
        match e {
            FillError::Database(e) => ReadError::Database(e),
            FillError::Redis(e) => ReadError::Redis(e),
        }
    }
}

pub fn encode_cursor(position: Position) -> String {
    format!(
        "{:x}.{}",
        position.at.timestamp_micros(),
        position.post_id.simple()
    )
}

pub fn decode_cursor(cursor: &str) -> Result<Position, ReadError> {
    let (micros, id) = cursor.split_once('.').ok_or(ReadError::BadCursor)?;
    let micros = i64::from_str_radix(micros, 16).map_err(|_| ReadError::BadCursor)?;
    Ok(Entry {
        at: DateTime::from_timestamp_micros(micros).ok_or(ReadError::BadCursor)?,
        post_id: Uuid::try_parse(id).map_err(|_| ReadError::BadCursor)?,
    })
}

/// One page of `reader`'s home feed, newest first, `limit` items at most (1–100).
pub async fn read_feed(
    services: &Services,
    reader: Uuid,
    limit: usize,
    cursor: Option<&str>,
) -> Result<FeedPage, ReadError> {
    let limit = limit.clamp(1, 100);
    let mut below = cursor.map(decode_cursor).transpose()?;
    let store = FeedStore::new(services);
    let cache = FeedCache::new(services);
    let mut items: Vec<FeedItem> = Vec::with_capacity(limit + 1);
    for _ in 0..MAX_ROUNDS {
        let need = limit - items.len();
        // Room for entries a read hides (deleted, unfollowed, blocked) before retraction
        // removes them; rare, and a page short of them takes another round.
        let want = need + need / 4 + 4;
        let (window, rows) = match cached_page(services, &cache, reader, below, want, need + 1)
            .await?
        {
            Some(page) => {
                metrics::counter!("groundcrew_feed_reads_total", "from" => "cache").increment(1);
                page
            }
            None => {
                metrics::counter!("groundcrew_feed_reads_total", "from" => "postgres").increment(1);
                postgres_page(services, &store, reader, below, want, need + 1).await?
            }
        };
        // Past the last window entry fetched, Redis may hold more; only what sorts at or above
        // it is certain to be in order.
        let boundary = (window.len() == want).then(|| window[want - 1]);
        items.extend(
            rows.into_iter()
                .filter(|row| boundary.is_none_or(|b| row.position() >= b)),
        );
        if items.len() > limit {
            items.truncate(limit);
            let next_cursor = items.last().map(|i| encode_cursor(i.position()));
            return Ok(FeedPage { items, next_cursor });
        }
        match boundary {
            None => {
                return Ok(FeedPage {
                    items,
                    next_cursor: None,
                });
            }
            Some(boundary) if items.len() == limit => {
                let last = items.last().map_or(boundary, FeedItem::position);
                return Ok(FeedPage {
                    items,
                    next_cursor: Some(encode_cursor(last)),
                });
            }
            Some(boundary) => below = Some(boundary),
        }
    }
    let next_cursor = below.map(encode_cursor);
    Ok(FeedPage { items, next_cursor })
}

/// A window of `want` entries below `below` and up to `limit` of the posts to show from it and
/// from merged authors, newest first, from the cache; Postgres is asked only for what is not
/// cached (then cached) and for merged authors' posts. `None` when Redis still lacks something
/// after `REPAIRS` tries (flushed again or evicting).
async fn cached_page(
    services: &Services,
    cache: &FeedCache,
    reader: Uuid,
    below: Option<Position>,
    want: usize,
    limit: usize,
) -> Result<Option<(Vec<Entry>, Vec<FeedItem>)>, ReadError> {
    let db = &services.db;
    for _ in 0..REPAIRS {
        let (merged_authors, entries) = match cache.window(reader, below, want).await? {
            Lookup::Missing(Missing::Feed) => {
                rebuild(services, &FeedStore::new(services), reader).await?;
                continue;
            }
            Lookup::Missing(Missing::Follows) => {
                cache.rebuild_follows(db, reader).await?;
                continue;
            }
            Lookup::Missing(Missing::MergeAuthors) => {
                cache.rebuild_merge_authors(db).await?;
                continue;
            }
            Lookup::Ready {
                merged_authors,
                entries,
            } => (merged_authors, entries),
        };
        let unknown: Vec<Uuid> = entries
            .iter()
            .filter(|(_, shown)| matches!(shown, Shown::Unknown))
            .map(|(entry, _)| entry.post_id)
            .collect();
        if !unknown.is_empty() {
            cache.fill(db, &unknown).await?;
            continue;
        }
        let window: Vec<Entry> = entries.iter().map(|(entry, _)| *entry).collect();
        let mut rows: Vec<FeedItem> = entries
            .into_iter()
            .filter_map(|(_, shown)| match shown {
                Shown::Post(item) => Some(item),
                Shown::Hidden | Shown::Unknown => None,
            })
            .collect();
        if !merged_authors.is_empty() {
            rows.extend(merged_posts(services, &merged_authors, below, limit).await?);
            rows.sort_by_key(|row| std::cmp::Reverse(row.position()));
            rows.dedup_by_key(|row| row.id);
        }
        rows.truncate(limit);
        return Ok(Some((window, rows)));
    }
    Ok(None)
}

/// The same as [`cached_page`] from Postgres alone: the window from Redis (or from the rebuild
/// when Redis loses it again at once), hydrated in one query.
async fn postgres_page(
    services: &Services,
    store: &FeedStore,
    reader: Uuid,
    below: Option<Position>,
    want: usize,
    limit: usize,
) -> Result<(Vec<Entry>, Vec<FeedItem>), ReadError> {
    let window = match store.window(reader, below, want).await? {
        Some(window) => window,
        None => {
            let rebuilt = rebuild(services, store, reader).await?;
            match store.window(reader, below, want).await? {
                Some(window) => window,
                None => rebuilt
                    .into_iter()
                    .filter(|e| below.is_none_or(|b| *e < b))
                    .take(want)
                    .collect(),
            }
        }
    };
    let ids: Vec<Uuid> = window.iter().map(|e| e.post_id).collect();
    let rows = hydrate(services, reader, &ids, below, limit).await?;
    Ok((window, rows))
}

/// Rebuilds a missing feed from Postgres: the reader's own posts and the pushed posts of
/// everyone they follow, newest first, up to the capacity.
async fn rebuild(
    services: &Services,
    store: &FeedStore,
    reader: Uuid,
) -> Result<Vec<Entry>, ReadError> {
    store.begin_rebuild(reader).await?;
    // Newest first per author (each an index range of `posts_by_author`), then merged: the
    // same rows as one `author_id = $1 OR author_id IN (…)` filter, whose generic plan read
    // every live post in the table (5 ms at 14k posts, growing with the table).
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "(SELECT p.id, p.created_at FROM posts p
          WHERE p.author_id = $1 AND p.deleted_at IS NULL
          ORDER BY p.created_at DESC, p.id DESC LIMIT $2)
         UNION ALL
         (SELECT p.id, p.created_at FROM follows f
          CROSS JOIN LATERAL (
              SELECT p.id, p.created_at FROM posts p
              WHERE p.author_id = f.followee_id AND p.deleted_at IS NULL
                AND p.delivery IS DISTINCT FROM 'merge'
              ORDER BY p.created_at DESC, p.id DESC LIMIT $2) p
          WHERE f.follower_id = $1)
         ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(reader)
    .bind(services.feed.capacity as i64)
    .fetch_all(&services.db)
    .await?;
    let entries: Vec<Entry> = rows
        .into_iter()
        .map(|(post_id, at)| Entry { at, post_id })
        .collect();
    store.finish_rebuild(reader, &entries).await?;
    Ok(entries)
}

/// The page's posts: the window's ids plus merged posts of followed authors above the
/// threshold, without deleted posts or authors the reader no longer follows (block ends
/// follows both ways), with each author's handle — looked up for the page's rows only.
async fn hydrate(
    services: &Services,
    reader: Uuid,
    window: &[Uuid],
    below: Option<Position>,
    limit: usize,
) -> Result<Vec<FeedItem>, sqlx::Error> {
    sqlx::query_as(
        "WITH candidate AS (
             SELECT unnest($2::uuid[]) AS id
             UNION
             (SELECT p.id FROM follows f JOIN posts p ON p.author_id = f.followee_id
              WHERE f.follower_id = $1 AND p.delivery = 'merge' AND p.deleted_at IS NULL
                AND ($3::timestamptz IS NULL OR (p.created_at, p.id) < ($3, $4::uuid))
              ORDER BY p.created_at DESC, p.id DESC LIMIT $5)
         ), page AS (
             SELECT p.id, p.author_id, p.text, p.media_ids, p.created_at
             FROM candidate c JOIN posts p ON p.id = c.id
             WHERE p.deleted_at IS NULL
               AND ($3::timestamptz IS NULL OR (p.created_at, p.id) < ($3, $4::uuid))
               AND (p.author_id = $1
                    OR EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = $1 AND f.followee_id = p.author_id))
             ORDER BY p.created_at DESC, p.id DESC LIMIT $5
         )
         SELECT page.id, page.author_id, u.handle AS author_handle, page.text, page.media_ids,
                page.created_at
         FROM page JOIN users u ON u.id = page.author_id
         ORDER BY page.created_at DESC, page.id DESC",
    )
    .bind(reader)
    .bind(window)
    .bind(below.map(|b| b.at))
    .bind(below.map(|b| b.post_id))
    .bind(limit as i64)
    .fetch_all(&services.db)
    .await
}

/// The recent posts of `authors` merged at read time, below `below`, newest first: each
/// author's an index range of `posts_merged_by_author`.
async fn merged_posts(
    services: &Services,
    authors: &[Uuid],
    below: Option<Position>,
    limit: usize,
) -> Result<Vec<FeedItem>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.author_id, u.handle AS author_handle, p.text, p.media_ids, p.created_at
         FROM unnest($1::uuid[]) a(id)
         CROSS JOIN LATERAL (
             SELECT p.* FROM posts p
             WHERE p.author_id = a.id AND p.delivery = 'merge' AND p.deleted_at IS NULL
               AND ($2::timestamptz IS NULL OR (p.created_at, p.id) < ($2, $3::uuid))
             ORDER BY p.created_at DESC, p.id DESC LIMIT $4) p
         JOIN users u ON u.id = p.author_id
         ORDER BY p.created_at DESC, p.id DESC LIMIT $4",
    )
    .bind(authors)
    .bind(below.map(|b| b.at))
    .bind(below.map(|b| b.post_id))
    .bind(limit as i64)
    .fetch_all(&services.db)
    .await
}
