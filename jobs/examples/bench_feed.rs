//! Feed benchmarks on the local Postgres and Redis, one JSON line per measurement:
//!
//! - `fanout`: deliveries per second of one post to N followers (`feed.fanout_post` run
//!   directly), alternated with `redis-benchmark -P 16 -t zadd` on the same Redis (A B A B), so
//!   load from other processes affects both.
//! - `post_to_visible`: from committing a post (what `POST /v1/posts` does) to the post being
//!   in the last follower's Redis feed, with a feed worker pool running; p50/p99.
//! - `feed_read`: `read_feed` (what `GET /v1/feed` runs, without HTTP) from many tasks.
//!
//!     cargo run --release -p groundcrew-jobs --example bench_feed -- 10000,100000,1000000 3
//!
//! Arguments: follower counts, rounds per count.

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use groundcrew_jobs::{
    Job, JobContext, JobTx, Queue,
    feed::{FeedSettings, jobs::FanoutPost, posts, read, store::FeedStore},
    worker::PoolSpec,
};
use groundcrew_testkit::TestEnv;
use serde_json::json;
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .get(1)
        .map_or("10000,100000".into(), String::clone)
        .split(',')
        .map(|s| s.parse().expect("follower counts"))
        .collect();
    let rounds: usize = args.get(2).map_or(3, |r| r.parse().expect("rounds"));

    for &followers in &sizes {
        let mut env = TestEnv::new().await;
        // Every size is pushed, to measure the push path (the merge path costs nothing here).
        env.services.feed = Arc::new(FeedSettings {
            fanout_max_followers: 1 << 40,
            ..FeedSettings::default()
        });
        let (author, users) = seed(&env, followers).await;
        build_feeds(&env, &users).await;
        for round in 0..rounds {
            println!("{}", baseline_zadd(followers.min(1_000_000)));
            let post = new_post(&env, author, round).await;
            let started = Instant::now();
            FanoutPost { post_id: post }
                .run(context(&env))
                .await
                .expect("fan-out");
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"bench": "fanout", "followers": followers, "round": round,
                       "seconds": secs, "deliveries_per_sec": (followers + 1) as f64 / secs})
            );
        }
        if followers == 10_000 {
            post_to_visible(&env, author, *users.last().unwrap()).await;
            feed_read(&env, &users).await;
        }
    }
}

/// `followers` users following one author, written with set-based SQL.
async fn seed(env: &TestEnv, followers: usize) -> (Uuid, Vec<Uuid>) {
    let db = &env.services.db;
    let author = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, handle) VALUES ($1, 'author')")
        .bind(author)
        .execute(db)
        .await
        .unwrap();
    let users: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO users (id, handle)
         SELECT gen_random_uuid(), 'f' || i FROM generate_series(1, $1) i RETURNING id",
    )
    .bind(followers as i64)
    .fetch_all(db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO follows (follower_id, followee_id) SELECT unnest($1::uuid[]), $2")
        .bind(&users)
        .bind(author)
        .execute(db)
        .await
        .unwrap();
    sqlx::query("ANALYZE").execute(db).await.unwrap();
    (author, users)
}

/// Every follower has read their feed recently, so every one is written by the fan-out.
async fn build_feeds(env: &TestEnv, users: &[Uuid]) {
    let store = FeedStore::new(&env.services);
    for chunk in users.chunks(5000) {
        futures::future::join_all(chunk.chunks(100).map(|c| {
            let store = &store;
            async move {
                for u in c {
                    store.begin_rebuild(*u).await.unwrap();
                    store.finish_rebuild(*u, &[]).await.unwrap();
                }
            }
        }))
        .await;
    }
}

/// A post written without its fan-out job: the benchmark runs the fan-out itself.
async fn new_post(env: &TestEnv, author: Uuid, n: usize) -> Uuid {
    sqlx::query_scalar("INSERT INTO posts (id, author_id, text) VALUES ($1, $2, $3) RETURNING id")
        .bind(Uuid::now_v7())
        .bind(author)
        .bind(format!("post {n}"))
        .fetch_one(&env.services.db)
        .await
        .unwrap()
}

fn context(env: &TestEnv) -> JobContext {
    JobContext {
        id: Uuid::now_v7(),
        attempt: 1,
        max_attempts: 1,
        first_run: true,
        worker_id: Arc::from("bench"),
        request_id: None,
        services: env.services.clone(),
    }
}

/// `redis-benchmark -P 16 -t zadd` on the same Redis: the ceiling for sorted-set writes.
fn baseline_zadd(requests: usize) -> serde_json::Value {
    let out = Command::new("redis-benchmark")
        .args([
            "-P",
            "16",
            "-t",
            "zadd",
            "--csv",
            "-n",
            &requests.max(100_000).to_string(),
        ])
        .output()
        .expect("redis-benchmark on PATH");
    let text = String::from_utf8_lossy(&out.stdout);
    // --csv: "test","rps",… then "ZADD","512820.53",…
    let rps: f64 = text
        .rsplit("\"ZADD\",")
        .next()
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or(f64::NAN);
    json!({"bench": "redis_benchmark_zadd_p16", "requests_per_sec": rps})
}

/// Commit → visible in the last follower's feed, over 20 posts, with a feed pool running.
async fn post_to_visible(env: &TestEnv, author: Uuid, last: Uuid) {
    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Feed,
        concurrency: 16,
    }]);
    let store = FeedStore::new(&env.services);
    let mut conn = env.services.broker.connection();
    let mut took = Vec::new();
    for n in 0..20 {
        let started = Instant::now();
        let mut tx = JobTx::begin(&env.services).await.unwrap();
        let post = posts::create_post(&mut tx, author, &format!("timed {n}"), &[])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        loop {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(store.key(last))
                .arg(post.id.to_string())
                .query_async(&mut conn)
                .await
                .unwrap();
            if score.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    workers.shutdown().await;
    took.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"bench": "post_to_visible", "followers": 10_000, "posts": 20,
               "p50_ms": took[took.len() / 2], "p99_ms": took[took.len() - 1]})
    );
}

/// `read_feed` for random followers (first page of 20) from 64 tasks for 10 s.
async fn feed_read(env: &TestEnv, users: &[Uuid]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let users = Arc::new(users.to_vec());
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let services = env.services.clone();
            let users = users.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = t * 7919;
                while Instant::now() < deadline {
                    let reader = users[i % users.len()];
                    i += 64;
                    let started = Instant::now();
                    let page = read::read_feed(&services, reader, 20, None).await.unwrap();
                    assert!(!page.items.is_empty());
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"bench": "feed_read", "tasks": 64, "seconds": 10, "requests": all.len(),
               "req_per_sec": all.len() as f64 / 10.0,
               "p50_ms": all[all.len() / 2], "p99_ms": all[all.len() * 99 / 100]})
    );
}
