//! The feed queue's job kinds. Each is idempotent: adding a post id to a sorted set twice, or
//! removing it twice, leaves the same feed, so a re-run after a crash repeats no effect.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    job::{Job, JobContext, JobError, Policy},
    queue::Queue,
};

use super::{
    cache::FeedCache,
    store::{Entry, FeedStore},
};

/// Followers per page of a fan-out or retraction: one Postgres query and one Redis round trip.
pub const PAGE: i64 = 2000;

/// Pushes a post into its author's feed and, unless the author has more followers than the
/// threshold, into every follower's feed that exists.
#[derive(Debug, Serialize, Deserialize)]
pub struct FanoutPost {
    pub post_id: Uuid,
}

impl Job for FanoutPost {
    const KIND: &'static str = "feed.fanout_post";
    const QUEUE: Queue = Queue::Feed;
    const POLICY: Policy = Policy {
        // A million followers take seconds; the cut-off is for a stuck run.
        timeout: Duration::from_secs(600),
        ..Policy::DEFAULT
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let services = &ctx.services;
        let db = &services.db;
        let Some(post) = load_post(db, self.post_id).await? else {
            return Err(JobError::fail(format!("no post {}", self.post_id)));
        };
        if post.deleted {
            return Ok(());
        }
        let store = FeedStore::new(services);
        let entry = post.entry(self.post_id);
        store.add_to_existing(&[post.author_id], &[entry]).await?;
        if decide_delivery(
            db,
            self.post_id,
            post.author_id,
            services.feed.fanout_max_followers,
        )
        .await?
            == "merge"
        {
            // On every run, so a run that failed here adds the author when retried.
            FeedCache::new(services)
                .add_merge_author(post.author_id)
                .await?;
            return Ok(());
        }
        let store = &store;
        each_follower_page(db, post.author_id, Some(self.post_id), |page| async move {
            store.add_to_existing(&page, &[entry]).await.map(drop)
        })
        .await
    }
}

/// Removes a deleted post from its author's feed and every follower's.
#[derive(Debug, Serialize, Deserialize)]
pub struct RetractPost {
    pub post_id: Uuid,
}

impl Job for RetractPost {
    const KIND: &'static str = "feed.retract_post";
    const QUEUE: Queue = Queue::Feed;
    const POLICY: Policy = FanoutPost::POLICY;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let db = &ctx.services.db;
        let Some(post) = load_post(db, self.post_id).await? else {
            return Err(JobError::fail(format!("no post {}", self.post_id)));
        };
        FeedCache::new(&ctx.services)
            .hide_post(self.post_id)
            .await?;
        let store = FeedStore::new(&ctx.services);
        let posts = [self.post_id];
        store.remove(&[post.author_id], &posts).await?;
        if post.delivery.as_deref() == Some("merge") {
            return Ok(());
        }
        // Every follower, inactive ones too: a feed that expires later is rebuilt anyway, but
        // one that is still there must not keep the post.
        let (store, posts) = (&store, &posts);
        each_follower_page(db, post.author_id, None, |page| async move {
            store.remove(&page, posts).await
        })
        .await
    }
}

/// After a follow: the followee's recent pushed posts into the follower's feed. (Posts merged
/// at read time need nothing.)
#[derive(Debug, Serialize, Deserialize)]
pub struct Backfill {
    pub follower: Uuid,
    pub followee: Uuid,
}

impl Job for Backfill {
    const KIND: &'static str = "feed.backfill";
    const QUEUE: Queue = Queue::Feed;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let services = &ctx.services;
        // The follow's own invalidation, again: the process that committed it may have died
        // before making it.
        FeedCache::new(services)
            .forget_follows(self.follower)
            .await?;
        let posts: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT p.id, p.created_at FROM posts p
             WHERE p.author_id = $2 AND p.deleted_at IS NULL AND p.delivery IS DISTINCT FROM 'merge'
               AND EXISTS (SELECT 1 FROM follows WHERE follower_id = $1 AND followee_id = $2)
             ORDER BY p.created_at DESC, p.id DESC LIMIT $3",
        )
        .bind(self.follower)
        .bind(self.followee)
        .bind(services.feed.capacity as i64)
        .fetch_all(&services.db)
        .await?;
        let entries: Vec<Entry> = posts
            .into_iter()
            .map(|(post_id, at)| Entry { at, post_id })
            .collect();
        FeedStore::new(services)
            .add_to_existing(&[self.follower], &entries)
            .await?;
        Ok(())
    }
}

/// After an unfollow or a block: the author's posts out of the reader's feed, unless the
/// reader follows the author again by the time this runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct RetractAuthor {
    pub reader: Uuid,
    pub author: Uuid,
}

impl Job for RetractAuthor {
    const KIND: &'static str = "feed.retract_author";
    const QUEUE: Queue = Queue::Feed;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let services = &ctx.services;
        // The change's own invalidation, again, as in `Backfill`.
        FeedCache::new(services).forget_follows(self.reader).await?;
        let store = FeedStore::new(services);
        let in_feed = store.members(self.reader).await?;
        if in_feed.is_empty() {
            return Ok(());
        }
        let authored: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM posts WHERE id = ANY($1) AND author_id = $3
               AND NOT EXISTS (SELECT 1 FROM follows WHERE follower_id = $2 AND followee_id = $3)",
        )
        .bind(&in_feed)
        .bind(self.reader)
        .bind(self.author)
        .fetch_all(&services.db)
        .await?;
        store.remove(&[self.reader], &authored).await?;
        Ok(())
    }
}

struct PostRow {
    author_id: Uuid,
    created_at: DateTime<Utc>,
    deleted: bool,
    delivery: Option<String>,
}

impl PostRow {
    fn entry(&self, post_id: Uuid) -> Entry {
        Entry {
            at: self.created_at,
            post_id,
        }
    }
}

async fn load_post(db: &PgPool, id: Uuid) -> Result<Option<PostRow>, sqlx::Error> {
    let row: Option<(Uuid, DateTime<Utc>, bool, Option<String>)> = sqlx::query_as(
        "SELECT author_id, created_at, deleted_at IS NOT NULL, delivery FROM posts WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(
        row.map(|(author_id, created_at, deleted, delivery)| PostRow {
            author_id,
            created_at,
            deleted,
            delivery,
        }),
    )
}

/// Decides once per post whether it is pushed or merged at read time, from the author's
/// follower count when its fan-out first runs; a re-run keeps the first decision. Counting
/// stops one past the threshold, so a celebrity costs no more than anyone else.
async fn decide_delivery(
    db: &PgPool,
    post_id: Uuid,
    author: Uuid,
    max_followers: i64,
) -> Result<String, sqlx::Error> {
    sqlx::query(
        "UPDATE posts SET delivery = CASE
             WHEN (SELECT count(*) FROM (SELECT 1 FROM follows WHERE followee_id = $2 LIMIT $3 + 1) f) > $3
             THEN 'merge' ELSE 'push' END
         WHERE id = $1 AND delivery IS NULL",
    )
    .bind(post_id)
    .bind(author)
    .bind(max_followers)
    .execute(db)
    .await?;
    sqlx::query_scalar("SELECT delivery FROM posts WHERE id = $1")
        .bind(post_id)
        .fetch_one(db)
        .await
}

/// Applies `apply` to the author's followers page by page (keyset over `follows_by_followee`),
/// reading the next page from Postgres while the current one is written to Redis.
async fn each_follower_page<F, Fut>(
    db: &PgPool,
    author: Uuid,
    while_live: Option<Uuid>,
    mut apply: F,
) -> Result<(), JobError>
where
    F: FnMut(Vec<Uuid>) -> Fut,
    Fut: Future<Output = redis::RedisResult<()>>,
{
    let mut page = followers_page(db, author, Uuid::nil(), while_live).await?;
    while let Some(&last) = page.last() {
        let (next, applied) =
            tokio::join!(followers_page(db, author, last, while_live), apply(page));
        applied?;
        page = next?;
    }
    Ok(())
}

/// A page of the author's followers after `after`. With `while_live`, the page is empty once
/// that post is deleted, so a fan-out racing a delete stops early.
async fn followers_page(
    db: &PgPool,
    author: Uuid,
    after: Uuid,
    while_live: Option<Uuid>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT follower_id FROM follows
         WHERE followee_id = $1 AND follower_id > $2
           AND ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM posts WHERE id = $3 AND deleted_at IS NULL))
         ORDER BY follower_id LIMIT $4",
    )
    .bind(author)
    .bind(after)
    .bind(while_live)
    .bind(PAGE)
    .fetch_all(db)
    .await
}
