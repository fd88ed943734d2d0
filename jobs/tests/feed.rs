//! The feed family against real Postgres and Redis, through the library calls the HTTP routes
//! make: fan-out, retraction, backfill, blocks, the celebrity merge, rebuilds, concurrency, and
//! a property test that every feed equals what Postgres says it should be.

use std::{collections::HashSet, sync::Arc, time::Duration};

use groundcrew_jobs::{
    JobTx, Queue,
    feed::{self, FeedSettings, graph, posts, read},
    worker::PoolSpec,
};
use groundcrew_testkit::{InProcess, TestEnv, eventually};
use proptest::prelude::*;
use uuid::Uuid;

const DRAIN: Duration = Duration::from_secs(30);

async fn env_with(settings: FeedSettings) -> TestEnv {
    let mut env = TestEnv::new().await;
    env.services.feed = Arc::new(settings);
    env
}

fn feed_workers(env: &TestEnv) -> InProcess {
    env.spawn_workers(vec![PoolSpec {
        queue: Queue::Feed,
        concurrency: 16,
    }])
}

async fn users(env: &TestEnv, n: usize) -> Vec<Uuid> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(env.user().await);
    }
    all
}

async fn post(env: &TestEnv, author: Uuid, text: &str) -> Uuid {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let post = posts::create_post(&mut tx, author, text, &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    post.id
}

async fn delete(env: &TestEnv, author: Uuid, id: Uuid) {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    posts::delete_post(&mut tx, author, id).await.unwrap();
    tx.commit().await.unwrap();
}

async fn follow(env: &TestEnv, follower: Uuid, followee: Uuid) {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    graph::follow(&mut tx, follower, followee).await.unwrap();
    tx.commit().await.unwrap();
}

async fn unfollow(env: &TestEnv, follower: Uuid, followee: Uuid) {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    graph::unfollow(&mut tx, follower, followee).await.unwrap();
    tx.commit().await.unwrap();
}

async fn block(env: &TestEnv, blocker: Uuid, blocked: Uuid) {
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    graph::block(&mut tx, blocker, blocked).await.unwrap();
    tx.commit().await.unwrap();
}

/// Every post id of a user's feed, page by page.
async fn feed_ids(env: &TestEnv, reader: Uuid, page: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let got = read::read_feed(&env.services, reader, page, cursor.as_deref())
            .await
            .unwrap();
        ids.extend(got.items.iter().map(|i| i.id));
        match got.next_cursor {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

/// The feed as Postgres alone defines it: the reader's and their followees' live posts.
async fn expected_feed(env: &TestEnv, reader: Uuid) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT p.id FROM posts p
         WHERE p.deleted_at IS NULL
           AND (p.author_id = $1 OR p.author_id IN (SELECT followee_id FROM follows WHERE follower_id = $1))
         ORDER BY p.created_at DESC, p.id DESC",
    )
    .bind(reader)
    .fetch_all(&env.services.db)
    .await
    .unwrap()
}

/// Waits until every feed job enqueued so far has run.
async fn drain(env: &TestEnv) {
    eventually(DRAIN, "the feed queue to drain", || async {
        let outbox: i64 =
            sqlx::query_scalar("SELECT count(*) FROM job_outbox WHERE queue = 'feed'")
                .fetch_one(&env.services.db)
                .await
                .unwrap();
        let depth = env.services.broker.depth(Queue::Feed).await.unwrap();
        assert_eq!(depth.dead, 0, "a feed job died");
        (outbox == 0 && depth.pending + depth.scheduled + depth.running == 0).then_some(())
    })
    .await;
}

/// What Redis holds for a user's feed (without reading it, which would rebuild it).
async fn stored(env: &TestEnv, reader: Uuid) -> Vec<Uuid> {
    feed::store::FeedStore::new(&env.services)
        .members(reader)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reaches_author_and_followers_and_delete_retracts_it() {
    let env = TestEnv::new().await;
    let workers = feed_workers(&env);
    let author = env.user().await;
    let followers = users(&env, 3).await;
    for f in &followers {
        follow(&env, *f, author).await;
    }
    let everyone: Vec<Uuid> = followers.iter().copied().chain([author]).collect();
    for u in &everyone {
        feed_ids(&env, *u, 20).await; // builds each feed, so the fan-out has somewhere to write
    }
    drain(&env).await;

    let id = post(&env, author, "first run of the season").await;
    drain(&env).await;
    for u in &everyone {
        assert_eq!(stored(&env, *u).await, vec![id], "pushed into Redis");
        assert_eq!(feed_ids(&env, *u, 20).await.first(), Some(&id));
    }

    delete(&env, author, id).await;
    drain(&env).await;
    for u in &everyone {
        assert!(stored(&env, *u).await.is_empty(), "retracted from Redis");
        assert!(feed_ids(&env, *u, 20).await.is_empty());
    }
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_backfills_unfollow_and_block_retract() {
    let env = TestEnv::new().await;
    let workers = feed_workers(&env);
    let [reader, author, other] = users(&env, 3).await[..] else {
        unreachable!()
    };
    let older = post(&env, author, "older").await;
    let newer = post(&env, author, "newer").await;
    let own = post(&env, reader, "mine").await;
    drain(&env).await;
    assert_eq!(feed_ids(&env, reader, 20).await, vec![own]);

    follow(&env, reader, author).await;
    drain(&env).await;
    assert_eq!(stored(&env, reader).await.len(), 3, "backfilled into Redis");
    assert_eq!(feed_ids(&env, reader, 20).await, vec![own, newer, older]);

    unfollow(&env, reader, author).await;
    assert_eq!(
        feed_ids(&env, reader, 20).await,
        vec![own],
        "gone at once, before the retraction runs"
    );
    drain(&env).await;
    assert_eq!(
        stored(&env, reader).await,
        vec![own],
        "and retracted from Redis"
    );

    // Block: both directions lose each other's posts and the follows end.
    follow(&env, reader, other).await;
    follow(&env, other, reader).await;
    let others = post(&env, other, "other's").await;
    drain(&env).await;
    assert!(feed_ids(&env, reader, 20).await.contains(&others));
    assert!(feed_ids(&env, other, 20).await.contains(&own));
    block(&env, other, reader).await;
    drain(&env).await;
    assert_eq!(feed_ids(&env, reader, 20).await, vec![own]);
    assert_eq!(feed_ids(&env, other, 20).await, vec![others]);
    assert_eq!(stored(&env, reader).await, vec![own]);
    assert_eq!(stored(&env, other).await, vec![others]);
    assert_eq!(
        graph::follow_counts(&env.services.db, reader)
            .await
            .unwrap(),
        (0, 0)
    );
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    assert!(matches!(
        graph::follow(&mut tx, reader, other).await,
        Err(feed::GraphError::Blocked)
    ));
    workers.shutdown().await;
}

/// A warm feed is read from Redis alone: with Postgres unreachable it reads back the same,
/// page by page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_feed_reads_from_redis_alone() {
    let env = TestEnv::new().await;
    let [reader, author] = users(&env, 2).await[..] else {
        unreachable!()
    };
    let workers = feed_workers(&env);
    follow(&env, reader, author).await;
    feed_ids(&env, reader, 20).await;
    drain(&env).await;
    for text in ["one", "two", "three"] {
        post(&env, author, text).await;
        post(&env, reader, text).await;
    }
    drain(&env).await;
    workers.shutdown().await;
    let warm = feed_ids(&env, reader, 2).await;
    assert_eq!(warm, expected_feed(&env, reader).await);

    let mut offline = env.services.clone();
    offline.db = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/unreachable")
        .unwrap();
    let mut read = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = read::read_feed(&offline, reader, 2, cursor.as_deref())
            .await
            .expect("read without Postgres");
        read.extend(page.items.iter().map(|i| i.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(read, warm);
}

/// Reads show posts from the read cache, which a delete, an unfollow or a block corrects as it
/// commits: with no worker running to retract anything, the posts are still in the reader's
/// feed in Redis and no longer shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_unfollows_and_blocks_hide_posts_before_any_job_runs() {
    let env = TestEnv::new().await;
    let [reader, author, blocker] = users(&env, 3).await[..] else {
        unreachable!()
    };
    let workers = feed_workers(&env);
    follow(&env, reader, author).await;
    follow(&env, reader, blocker).await;
    feed_ids(&env, reader, 20).await;
    drain(&env).await;
    let kept = post(&env, author, "kept").await;
    let deleted = post(&env, author, "deleted").await;
    let blockers = post(&env, blocker, "the blocker's").await;
    drain(&env).await;
    // Caches the follows set, the posts and the handles.
    assert_eq!(
        feed_ids(&env, reader, 20).await,
        vec![blockers, deleted, kept]
    );
    workers.shutdown().await;

    delete(&env, author, deleted).await;
    assert_eq!(feed_ids(&env, reader, 20).await, vec![blockers, kept]);
    block(&env, blocker, reader).await;
    assert_eq!(feed_ids(&env, reader, 20).await, vec![kept]);
    unfollow(&env, reader, author).await;
    assert!(feed_ids(&env, reader, 20).await.is_empty());
    assert_eq!(stored(&env, reader).await.len(), 3, "nothing retracted yet");

    let workers = feed_workers(&env);
    drain(&env).await;
    assert!(
        stored(&env, reader).await.is_empty(),
        "retracted from Redis"
    );
    follow(&env, reader, author).await;
    drain(&env).await;
    assert_eq!(
        feed_ids(&env, reader, 20).await,
        vec![kept],
        "followed again"
    );
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celebrity_posts_are_merged_at_read_in_order_across_pages() {
    let env = env_with(FeedSettings {
        fanout_max_followers: 5,
        ..FeedSettings::default()
    })
    .await;
    let workers = feed_workers(&env);
    let celebrity = env.user().await;
    let friend = env.user().await;
    let fans = users(&env, 6).await;
    for (i, fan) in fans.iter().enumerate() {
        follow(&env, *fan, celebrity).await;
        if i < 2 {
            follow(&env, *fan, friend).await;
        }
        feed_ids(&env, *fan, 20).await;
    }
    drain(&env).await;

    // Interleaved: celebrity, friend, celebrity, … — 24 posts, read as 3 pages of 8.
    let (mut posted, mut celebrity_posts, mut friend_posts) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..12 {
        celebrity_posts.push(post(&env, celebrity, &format!("celebrity {i}")).await);
        friend_posts.push(post(&env, friend, &format!("friend {i}")).await);
        posted.extend([
            *celebrity_posts.last().unwrap(),
            *friend_posts.last().unwrap(),
        ]);
    }
    drain(&env).await;
    posted.reverse();
    celebrity_posts.reverse();
    let in_redis: HashSet<Uuid> = stored(&env, fans[0]).await.into_iter().collect();
    assert!(friend_posts.iter().all(|p| in_redis.contains(p)), "pushed");
    assert!(
        celebrity_posts.iter().all(|p| !in_redis.contains(p)),
        "a celebrity's posts are not fanned out"
    );
    for fan in &fans[..2] {
        assert_eq!(
            feed_ids(&env, *fan, 8).await,
            posted,
            "three pages, newest first, no duplicates or gaps"
        );
    }
    for fan in &fans[2..] {
        assert_eq!(feed_ids(&env, *fan, 8).await, celebrity_posts);
    }

    // Crossing the threshold downwards: older posts stay merged, new ones are pushed, and the
    // feed still reads in one order.
    unfollow(&env, fans[5], celebrity).await;
    let pushed = post(&env, celebrity, "now below the threshold").await;
    drain(&env).await;
    assert!(stored(&env, fans[0]).await.contains(&pushed));
    let mut expected = vec![pushed];
    expected.extend(&posted);
    assert_eq!(feed_ids(&env, fans[0], 7).await, expected);
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_lost_from_redis_are_rebuilt_from_postgres() {
    let mut env = TestEnv::with_private_redis(|_| {}).await;
    env.services.feed = Arc::new(FeedSettings {
        fanout_max_followers: 2,
        ..FeedSettings::default()
    });
    let workers = feed_workers(&env);
    let all = users(&env, 5).await;
    for (i, a) in all.iter().enumerate() {
        for b in &all[..i] {
            follow(&env, *a, *b).await;
        }
    }
    for (i, a) in all.iter().enumerate() {
        post(&env, *a, &format!("post {i}")).await;
        feed_ids(&env, *a, 3).await;
    }
    drain(&env).await;
    let mut before = Vec::new();
    for u in &all {
        before.push(feed_ids(&env, *u, 3).await);
    }
    assert_eq!(before[4].len(), 5, "the last user sees everyone");

    let mut conn = env.services.broker.connection();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    for (u, was) in all.iter().zip(&before) {
        assert_eq!(&feed_ids(&env, *u, 3).await, was);
    }
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_by_many_authors_are_neither_lost_nor_duplicated() {
    const AUTHORS: usize = 1000;
    let env = env_with(FeedSettings {
        capacity: 2 * AUTHORS,
        ..FeedSettings::default()
    })
    .await;
    let reader = env.user().await;
    let authors = users(&env, AUTHORS).await;
    for a in &authors {
        follow(&env, reader, *a).await;
    }
    feed_ids(&env, reader, 100).await;
    let workers = feed_workers(&env);
    drain(&env).await;

    let posted: Vec<Uuid> = futures::future::join_all(authors.iter().enumerate().map(|(i, a)| {
        let env = &env;
        async move { post(env, *a, &format!("post {i}")).await }
    }))
    .await;
    drain(&env).await;

    let stored = stored(&env, reader).await;
    assert_eq!(stored.len(), AUTHORS);
    assert_eq!(
        stored.iter().collect::<HashSet<_>>(),
        posted.iter().collect::<HashSet<_>>()
    );
    let read = feed_ids(&env, reader, 100).await;
    assert_eq!(read.len(), AUTHORS, "no duplicates across pages");
    assert_eq!(read, expected_feed(&env, reader).await);
    workers.shutdown().await;
}

#[derive(Clone, Debug)]
enum Op {
    Follow(usize, usize),
    Unfollow(usize, usize),
    Block(usize, usize),
    Unblock(usize, usize),
    Post(usize),
    /// Deletes the n-th live post, if there is one.
    Delete(usize),
    Read(usize),
    /// Redis loses a user's feed, their follows set and the merge-authors set.
    Evict(usize),
}

const PEOPLE: usize = 5;

fn op() -> impl Strategy<Value = Op> {
    let u = 0..PEOPLE;
    prop_oneof![
        4 => (u.clone(), u.clone()).prop_map(|(a, b)| Op::Follow(a, b)),
        1 => (u.clone(), u.clone()).prop_map(|(a, b)| Op::Unfollow(a, b)),
        1 => (u.clone(), u.clone()).prop_map(|(a, b)| Op::Block(a, b)),
        1 => (u.clone(), u.clone()).prop_map(|(a, b)| Op::Unblock(a, b)),
        4 => u.clone().prop_map(Op::Post),
        1 => (0..8usize).prop_map(Op::Delete),
        2 => u.clone().prop_map(Op::Read),
        1 => u.prop_map(Op::Evict),
    ]
}

/// Random graph and post operations; after the queue drains every feed equals the feed
/// computed from Postgres. The fan-out threshold is 2, so authors cross it both ways.
#[test]
fn every_feed_equals_postgres_after_random_operations() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(env_with(FeedSettings {
        fanout_max_followers: 2,
        ..FeedSettings::default()
    }));
    let workers = rt.block_on(async { feed_workers(&env) });
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(op(), 1..40))| {
        rt.block_on(run_and_compare(&env, ops));
    });
    rt.block_on(workers.shutdown());
}

async fn run_and_compare(env: &TestEnv, ops: Vec<Op>) {
    let people = users(env, PEOPLE).await;
    let mut live: Vec<(Uuid, Uuid)> = Vec::new();
    for op in ops {
        let mut tx = JobTx::begin(&env.services).await.unwrap();
        match op {
            Op::Follow(a, b) => {
                // Refusals (self, blocked) are part of the sequence.
                let _ = graph::follow(&mut tx, people[a], people[b]).await;
            }
            Op::Unfollow(a, b) => graph::unfollow(&mut tx, people[a], people[b])
                .await
                .unwrap(),
            Op::Block(a, b) => {
                let _ = graph::block(&mut tx, people[a], people[b]).await;
            }
            Op::Unblock(a, b) => graph::unblock(&mut tx, people[a], people[b]).await.unwrap(),
            Op::Post(a) => {
                let p = posts::create_post(&mut tx, people[a], "hello", &[])
                    .await
                    .unwrap();
                live.push((people[a], p.id));
            }
            Op::Delete(n) if !live.is_empty() => {
                let (author, id) = live.remove(n % live.len());
                posts::delete_post(&mut tx, author, id).await.unwrap();
            }
            Op::Delete(_) => {}
            Op::Read(a) => {
                read::read_feed(&env.services, people[a], 3, None)
                    .await
                    .unwrap();
            }
            Op::Evict(a) => {
                let keys = feed::cache::CacheKeys::new(&env.services.broker);
                redis::cmd("DEL")
                    .arg(feed::store::FeedStore::new(&env.services).key(people[a]))
                    .arg(keys.follows(people[a]))
                    .arg(keys.merge_authors())
                    .query_async::<()>(&mut env.services.broker.connection())
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
    }
    drain(env).await;
    for p in &people {
        assert_eq!(feed_ids(env, *p, 2).await, expected_feed(env, *p).await);
    }
}
