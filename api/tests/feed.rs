//! The social graph, posts and the home feed over HTTP, against real Postgres and Redis with
//! the feed workers running in-process.

#[allow(dead_code)]
#[path = "http/helpers.rs"]
mod helpers;
#[allow(dead_code)]
mod social;

use groundcrew_jobs::{Queue, worker::PoolSpec};
use groundcrew_testkit::{InProcess, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use helpers::{TestApp, expect_error};
use social::{User, WITHIN, json_with, signed_up};

fn feed_workers(app: &TestApp) -> InProcess {
    app.env.spawn_workers(vec![PoolSpec {
        queue: Queue::Feed,
        concurrency: 4,
    }])
}

async fn send(app: &TestApp, method: Method, path: &str, user: &User) -> reqwest::Response {
    app.request(method, path, Some(&user.token))
        .send()
        .await
        .unwrap()
}

async fn follow(app: &TestApp, follower: &User, followee: Uuid) -> reqwest::Response {
    send(
        app,
        Method::PUT,
        &format!("/v1/me/following/{followee}"),
        follower,
    )
    .await
}

async fn feed(app: &TestApp, user: &User) -> Vec<Value> {
    let page = json_with(app.get("/v1/feed", Some(&user.token)).await, StatusCode::OK).await;
    page["items"].as_array().unwrap().clone()
}

async fn counts(app: &TestApp, viewer: &User, user: Uuid) -> (i64, i64) {
    let profile = json_with(
        app.get(&format!("/v1/users/{user}"), Some(&viewer.token))
            .await,
        StatusCode::OK,
    )
    .await;
    (
        profile["followers_count"].as_i64().unwrap(),
        profile["following_count"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reaches_every_follower_and_deleting_it_retracts_it() {
    let app = TestApp::start().await;
    let _workers = feed_workers(&app);
    let author = signed_up(&app, "author", None).await;
    let mut readers = vec![];
    for handle in ["ann", "ben", "cat"] {
        let reader = signed_up(&app, handle, None).await;
        assert_eq!(follow(&app, &reader, author.id).await.status(), 204);
        readers.push(reader);
    }
    assert_eq!(counts(&app, &readers[0], author.id).await, (3, 0));
    assert_eq!(counts(&app, &author, readers[0].id).await, (0, 1));
    // Reading first makes the feeds exist, so the post reaches them by fan-out.
    for reader in &readers {
        assert!(feed(&app, reader).await.is_empty());
    }

    let body = json!({ "text": "first light" });
    let created = |key: &'static str| app.post_keyed("/v1/posts", Some(&author.token), key, &body);
    let post = json_with(created("post-1").await, StatusCode::CREATED).await;
    let replayed = json_with(created("post-1").await, StatusCode::CREATED).await;
    assert_eq!(replayed, post, "a retried POST posts once");
    assert_eq!(post["author_id"], json!(author.id));
    assert_eq!(post["text"], "first light");
    assert_eq!(post["media_ids"], json!([]));
    let id = post["id"].as_str().unwrap().to_owned();

    for user in readers.iter().chain([&author]) {
        let top = eventually(WITHIN, "the post at the top of the feed", || async {
            feed(&app, user)
                .await
                .into_iter()
                .next()
                .filter(|item| item["id"] == id.as_str())
        })
        .await;
        assert_eq!(
            top["author"],
            json!({ "id": author.id, "handle": "author" })
        );
        assert_eq!(top["text"], "first light");
    }
    let fetched = json_with(
        app.get(&format!("/v1/posts/{id}"), Some(&readers[0].token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(fetched, post);

    let path = format!("/v1/posts/{id}");
    expect_error(
        send(&app, Method::DELETE, &path, &readers[0]).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(
        send(&app, Method::DELETE, &path, &author).await.status(),
        204
    );
    for user in readers.iter().chain([&author]) {
        assert!(
            feed(&app, user).await.is_empty(),
            "a deleted post leaves every feed"
        );
    }
    expect_error(
        app.get(&path, Some(&readers[0].token)).await,
        StatusCode::NOT_FOUND,
        "post_not_found",
    )
    .await;

    // Without a key or media a post is one statement with its fan-out job; it spreads alike.
    let quick = json_with(
        app.post(
            "/v1/posts",
            Some(&author.token),
            &json!({ "text": "second light" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(quick["text"], "second light");
    for user in readers.iter().chain([&author]) {
        eventually(WITHIN, "the text-only post in the feed", || async {
            feed(&app, user)
                .await
                .into_iter()
                .next()
                .filter(|item| item["id"] == quick["id"])
        })
        .await;
    }

    // A new handle shows on the author's posts in every feed at once.
    let renamed = app
        .request(Method::PUT, "/v1/me", Some(&author.token))
        .json(&json!({ "handle": "renamed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    for user in readers.iter().chain([&author]) {
        assert_eq!(feed(&app, user).await[0]["author"]["handle"], "renamed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfollowing_and_blocking_take_posts_out_of_the_feed() {
    let app = TestApp::start().await;
    let _workers = feed_workers(&app);
    let alice = signed_up(&app, "alice", None).await;
    let bob = signed_up(&app, "bob", None).await;
    let post = json_with(
        app.post("/v1/posts", Some(&bob.token), &json!({ "text": "hi" }))
            .await,
        StatusCode::CREATED,
    )
    .await;

    // Following backfills the followee's recent posts.
    assert_eq!(follow(&app, &alice, bob.id).await.status(), 204);
    assert_eq!(
        follow(&app, &alice, bob.id).await.status(),
        204,
        "idempotent"
    );
    eventually(WITHIN, "the backfilled post", || async {
        let items = feed(&app, &alice).await;
        (items.first().map(|i| &i["id"]) == Some(&post["id"])).then_some(())
    })
    .await;
    assert_eq!(counts(&app, &alice, bob.id).await, (1, 0));

    let following = format!("/v1/me/following/{}", bob.id);
    assert_eq!(
        send(&app, Method::DELETE, &following, &alice)
            .await
            .status(),
        204
    );
    assert!(feed(&app, &alice).await.is_empty());
    assert_eq!(counts(&app, &alice, bob.id).await, (0, 0));

    // A block ends follows both ways and stops new ones from either side.
    assert_eq!(follow(&app, &alice, bob.id).await.status(), 204);
    assert_eq!(follow(&app, &bob, alice.id).await.status(), 204);
    let blocks = format!("/v1/me/blocks/{}", alice.id);
    assert_eq!(send(&app, Method::PUT, &blocks, &bob).await.status(), 204);
    assert_eq!(counts(&app, &alice, bob.id).await, (0, 0));
    assert_eq!(counts(&app, &alice, alice.id).await, (0, 0));
    assert!(feed(&app, &alice).await.is_empty());
    expect_error(
        app.get(
            &format!("/v1/posts/{}", post["id"].as_str().unwrap()),
            Some(&alice.token),
        )
        .await,
        StatusCode::NOT_FOUND,
        "post_not_found",
    )
    .await;
    for (follower, followee) in [(&alice, bob.id), (&bob, alice.id)] {
        expect_error(
            follow(&app, follower, followee).await,
            StatusCode::FORBIDDEN,
            "blocked",
        )
        .await;
    }

    assert_eq!(
        send(&app, Method::DELETE, &blocks, &bob).await.status(),
        204
    );
    assert_eq!(
        counts(&app, &alice, bob.id).await,
        (0, 0),
        "unblocking restores no follow"
    );
    assert_eq!(follow(&app, &alice, bob.id).await.status(), 204);
}

#[tokio::test]
async fn following_refuses_unknown_users_oneself_and_callers_without_a_profile() {
    let app = TestApp::start().await;
    let alice = signed_up(&app, "alice", None).await;
    expect_error(
        follow(&app, &alice, Uuid::now_v7()).await,
        StatusCode::NOT_FOUND,
        "user_not_found",
    )
    .await;
    let error = expect_error(
        follow(&app, &alice, alice.id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(error["details"]["field"], "user_id");
    let id = Uuid::now_v7();
    let nobody = User {
        id,
        token: app.token(id, &[]),
    };
    expect_error(
        follow(&app, &nobody, alice.id).await,
        StatusCode::CONFLICT,
        "profile_required",
    )
    .await;
    expect_error(
        app.post(
            "/v1/posts",
            Some(&nobody.token),
            &json!({ "text": "hello" }),
        )
        .await,
        StatusCode::CONFLICT,
        "profile_required",
    )
    .await;
    expect_error(
        app.request(
            Method::PUT,
            "/v1/me/following/not-a-uuid",
            Some(&alice.token),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}
