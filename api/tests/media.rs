//! Uploads and renditions over HTTP, with the media workers running in-process: the 202 and the
//! item's progress, 413 and 415 with nothing stored, owner-only visibility until a post attaches
//! the item, rendition bytes from local storage, and the redirect to a signed URL on S3.

#[allow(dead_code)]
#[path = "http/helpers.rs"]
mod helpers;
#[allow(dead_code)]
mod social;

use futures::StreamExt;
use std::{sync::Arc, time::Duration};

use groundcrew_jobs::{Queue, worker::PoolSpec};
use groundcrew_testkit::{InProcess, TestEnv, eventually, media as test_media, s3::MotoS3};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use helpers::{TestApp, expect_error};
use social::{User, json_with, signed_up};

const WITHIN: Duration = Duration::from_secs(120);

fn media_workers(app: &TestApp) -> InProcess {
    app.env.spawn_workers(vec![PoolSpec {
        queue: Queue::Media,
        concurrency: 2,
    }])
}

async fn upload(
    app: &TestApp,
    user: &User,
    content_type: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.request(Method::POST, "/v1/media", Some(&user.token))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn ready(app: &TestApp, user: &User, id: &str) -> Value {
    eventually(WITHIN, "the upload to be ready", || async {
        let media = json_with(
            app.get(&format!("/v1/media/{id}"), Some(&user.token)).await,
            StatusCode::OK,
        )
        .await;
        assert_ne!(media["status"], "failed", "{media}");
        (media["status"] == "ready").then_some(media)
    })
    .await
}

fn stored_files(app: &TestApp) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    walk(&app.env.data_dir.path().join("media"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_accepted_processed_and_private_until_a_post_attaches_it() {
    let app = TestApp::start().await;
    let _workers = media_workers(&app);
    let owner = signed_up(&app, "lifter", None).await;
    let other = signed_up(&app, "spotter", None).await;
    let jpeg = test_media::small_jpeg(app.env.data_dir.path(), 1600, 1200);

    let accepted = json_with(
        upload(&app, &owner, "image/jpeg", jpeg).await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(accepted["kind"], "image");
    assert_eq!(accepted["status"], "pending");
    let id = accepted["id"].as_str().unwrap().to_owned();

    let media = ready(&app, &owner, &id).await;
    assert_eq!(media["owner_id"], owner.id.to_string());
    assert_eq!(
        (media["width"].as_i64(), media["height"].as_i64()),
        (Some(1600), Some(1200))
    );
    let renditions = media["renditions"].as_array().unwrap();
    let shapes: Vec<(&str, i64, i64)> = renditions
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["width"].as_i64().unwrap(),
                r["height"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        [("w320", 320, 240), ("w640", 640, 480), ("w1080", 1080, 810)]
    );
    let w640 = &renditions[1];
    assert_eq!(w640["url"], format!("/v1/media/{id}/renditions/w640"));
    let bytes = app
        .get(w640["url"].as_str().unwrap(), Some(&owner.token))
        .await;
    assert_eq!(bytes.status(), StatusCode::OK);
    assert_eq!(bytes.headers()["content-type"], "image/jpeg");
    let body = bytes.bytes().await.unwrap();
    assert_eq!(body.len() as i64, w640["bytes"].as_i64().unwrap());
    assert_eq!(&body[..3], [0xFF, 0xD8, 0xFF]);

    // Not attached yet: others see nothing, not even that it exists.
    let hidden = app
        .get(&format!("/v1/media/{id}"), Some(&other.token))
        .await;
    expect_error(hidden, StatusCode::NOT_FOUND, "media_not_found").await;
    let hidden = app
        .get(
            &format!("/v1/media/{id}/renditions/w320"),
            Some(&other.token),
        )
        .await;
    expect_error(hidden, StatusCode::NOT_FOUND, "media_not_found").await;
    // Nor may they attach it to their own post.
    let stolen = app
        .post(
            "/v1/posts",
            Some(&other.token),
            &json!({ "text": "mine", "media_ids": [id] }),
        )
        .await;
    expect_error(
        stolen,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    let post = app
        .post(
            "/v1/posts",
            Some(&owner.token),
            &json!({ "text": "new PR", "media_ids": [id] }),
        )
        .await;
    assert_eq!(post.status(), StatusCode::CREATED);
    let seen = json_with(
        app.get(&format!("/v1/media/{id}"), Some(&other.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(seen["status"], "ready");
    let bytes = app
        .get(
            &format!("/v1/media/{id}/renditions/w320"),
            Some(&other.token),
        )
        .await;
    assert_eq!(bytes.status(), StatusCode::OK);
    let missing = app
        .get(
            &format!("/v1/media/{id}/renditions/v720"),
            Some(&other.token),
        )
        .await;
    expect_error(missing, StatusCode::NOT_FOUND, "rendition_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_get_413_and_wrong_types_415_with_nothing_stored() {
    const LIMIT: usize = 200_000;
    let mut env = TestEnv::new().await;
    let mut media = (*env.services.media).clone();
    media.limits.max_image_bytes = LIMIT as u64;
    env.services.media = Arc::new(media);
    let app = TestApp::start_with(env, |_| {}).await;
    let user = signed_up(&app, "uploader", None).await;
    let dir = app.env.data_dir.path().to_owned();
    let photo = test_media::phone_photo(&dir, true);
    assert!(photo.len() > LIMIT + 1);

    // The client sends `sent` bytes of the photo and then stalls, so the answer can only come
    // from what the server has read so far (and the server closing early cannot race a write).
    let stalled = |sent: usize, declared: Option<usize>| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = photo[..sent]
            .chunks(32 * 1024)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let body = futures::stream::iter(chunks).chain(futures::stream::pending());
        let mut request = app
            .request(Method::POST, "/v1/media", Some(&user.token))
            .header("content-type", "image/jpeg");
        if let Some(length) = declared {
            request = request.header("content-length", length);
        }
        request.body(reqwest::Body::wrap_stream(body)).send()
    };
    // By Content-Length, before the body is read.
    let declared = stalled(16 * 1024, Some(photo.len())).await.unwrap();
    expect_error(declared, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Streamed without a length: cut off at the limit (one byte past it is enough).
    let streamed = stalled(LIMIT + 1, None).await.unwrap();
    expect_error(streamed, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    let text = upload(
        &app,
        &user,
        "image/jpeg",
        b"hello, I am not a photo".to_vec(),
    )
    .await;
    expect_error(
        text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let small = test_media::small_jpeg(&dir, 64, 48);
    let lying = upload(&app, &user, "image/png", small.clone()).await;
    expect_error(
        lying,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let gif = upload(&app, &user, "image/gif", small).await;
    assert_eq!(gif.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert_eq!(stored_files(&app), 0);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM media")
        .fetch_one(&app.env.services.db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_renditions_redirect_to_a_signed_url_that_serves_them() {
    let moto = MotoS3::start();
    let mut env = TestEnv::new().await;
    env.services.media = Arc::new(moto.media_settings(env.data_dir.path()));
    let app = TestApp::start_with(env, |_| {}).await;
    let _workers = media_workers(&app);
    let owner = signed_up(&app, "creator", None).await;
    let jpeg = test_media::small_jpeg(app.env.data_dir.path(), 1200, 900);
    let accepted = json_with(
        upload(&app, &owner, "image/jpeg", jpeg).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    let media = ready(&app, &owner, &id).await;
    let w320 = &media["renditions"][0];
    assert_eq!(w320["name"], "w320");

    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = no_follow
        .get(format!("{}{}", app.base, w320["url"].as_str().unwrap()))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&moto.endpoint()), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let signed = reqwest::get(location).await.unwrap();
    assert_eq!(signed.status(), StatusCode::OK);
    let body = signed.bytes().await.unwrap();
    assert_eq!(body.len() as i64, w320["bytes"].as_i64().unwrap());
    let keys = moto.keys();
    for name in ["original", "w320", "w640", "w1080"] {
        assert!(keys.contains(&format!("{id}/{name}")), "{name} in {keys:?}");
    }
}
