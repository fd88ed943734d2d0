//! The media family against real Postgres, Redis, ffmpeg and object storage (the local
//! filesystem, and S3 as a local moto server speaks it): uploads, image and video renditions,
//! the failures each bad input ends in, the ready notification, and the sweep of uploads never
//! attached to a post.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use groundcrew_jobs::{
    Job, JobContext, JobTx, Queue,
    feed::posts::{self, PostError},
    media::{
        MediaSettings, MediaStorage, MediaType, SweepUnattached, Transcode,
        upload::{self, UploadError},
    },
    worker::PoolSpec,
};
use groundcrew_testkit::{
    InProcess, TestEnv, eventually,
    media::{self as test_media, PHOTO_MARK},
    s3::MotoS3,
};
use image::{GenericImageView, Rgb};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(120);

enum Backend {
    Local,
    S3(MotoS3),
}

impl Backend {
    fn s3() -> Self {
        Backend::S3(MotoS3::start())
    }
}

/// A test's stores with media workers running, storing on `backend`.
async fn env_on(backend: &Backend, tweak: impl FnOnce(&mut MediaSettings)) -> (TestEnv, InProcess) {
    let mut env = TestEnv::new().await;
    let mut media = match backend {
        Backend::Local => (*env.services.media).clone(),
        Backend::S3(moto) => moto.media_settings(env.data_dir.path()),
    };
    tweak(&mut media);
    env.services.media = Arc::new(media);
    let workers = env.spawn_workers(vec![PoolSpec {
        queue: Queue::Media,
        concurrency: 2,
    }]);
    (env, workers)
}

async fn upload(
    env: &TestEnv,
    owner: Uuid,
    declared: MediaType,
    bytes: &[u8],
) -> Result<Uuid, UploadError> {
    test_media::upload(&env.services, owner, declared, bytes).await
}

/// Waits until the item leaves pending/processing; returns (status, error code).
async fn settled(env: &TestEnv, id: Uuid) -> (String, Option<String>) {
    eventually(WITHIN, "the media to be ready or failed", || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT status, error_code FROM media WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&env.services.db)
        .await
        .ok()
        .filter(|(status, _)| status == "ready" || status == "failed")
    })
    .await
}

async fn rendition_rows(env: &TestEnv, id: Uuid) -> Vec<(String, i32, i32, i64)> {
    sqlx::query_as(
        "SELECT name, width, height, bytes FROM media_renditions WHERE media_id = $1 ORDER BY width, name",
    )
    .bind(id)
    .fetch_all(&env.services.db)
    .await
    .unwrap()
}

async fn object(env: &TestEnv, id: Uuid, name: &str) -> Bytes {
    env.services
        .media
        .storage
        .get(&MediaStorage::rendition_key(id, name))
        .await
        .unwrap()
}

async fn ready_notifications(env: &TestEnv, owner: Uuid, id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM notifications WHERE user_id = $1 AND data->>'media_id' = $2",
    )
    .bind(owner)
    .bind(id.to_string())
    .fetch_one(&env.services.db)
    .await
    .unwrap()
}

fn is_red(p: Rgb<u8>) -> bool {
    p[0] > 200 && p[1] < 60 && p[2] < 60
}

fn is_blue(p: Rgb<u8>) -> bool {
    p[0] < 60 && p[1] < 60 && p[2] > 200
}

async fn phone_photo_becomes_three_upright_renditions(backend: Backend) {
    let (env, _workers) = env_on(&backend, |_| {}).await;
    let owner = env.user().await;
    let photo = test_media::phone_photo(env.data_dir.path(), false);
    assert!(photo.windows(6).any(|w| w == b"Exif\0\0"));
    let id = upload(&env, owner, MediaType::Jpeg, &photo).await.unwrap();

    assert_eq!(settled(&env, id).await, ("ready".into(), None));
    let (width, height): (Option<i32>, Option<i32>) =
        sqlx::query_as("SELECT width, height FROM media WHERE id = $1")
            .bind(id)
            .fetch_one(&env.services.db)
            .await
            .unwrap();
    // Stored 4000×3000, displayed upright (orientation 6) as 3000×4000.
    assert_eq!((width, height), (Some(3000), Some(4000)));
    let rows = rendition_rows(&env, id).await;
    let expected = [
        ("w320", 320, 427),
        ("w640", 640, 853),
        ("w1080", 1080, 1440),
    ];
    assert_eq!(rows.len(), 3);
    for ((name, w, h, bytes), (want_name, want_w, want_h)) in rows.iter().zip(expected) {
        assert_eq!((name.as_str(), *w, *h), (want_name, want_w, want_h));
        let jpeg = object(&env, id, name).await;
        assert_eq!(jpeg.len() as i64, *bytes);
        // No metadata survives: no APP1 (EXIF/XMP) segment, no EXIF header, no GPS values.
        assert!(
            !jpeg.windows(2).any(|m| m == [0xFF, 0xE1]),
            "{name} has an APP1"
        );
        assert!(
            !jpeg.windows(6).any(|m| m == b"Exif\0\0"),
            "{name} has EXIF"
        );
        let picture = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(picture.dimensions(), (want_w as u32, want_h as u32));
        // The red mark was the sensor's top-left; upright it is the top-right corner.
        let mark = PHOTO_MARK * want_w as u32 / 3000;
        let inset = (mark / 4).max(2);
        assert!(
            is_red(*picture.get_pixel(want_w as u32 - inset, inset)),
            "{name} top-right"
        );
        assert!(is_blue(*picture.get_pixel(inset, inset)), "{name} top-left");
        assert!(
            is_blue(*picture.get_pixel(inset, want_h as u32 - inset)),
            "{name} bottom-left"
        );
    }
    assert_eq!(ready_notifications(&env, owner, id).await, 1);

    // A repeat delivery of the job changes nothing and notifies no one again.
    let ctx = JobContext {
        id: Uuid::now_v7(),
        attempt: 1,
        max_attempts: 5,
        first_run: true,
        worker_id: "test".into(),
        request_id: None,
        services: env.services.clone(),
    };
    Transcode { media_id: id }.run(ctx).await.unwrap();
    assert_eq!(ready_notifications(&env, owner, id).await, 1);
    assert_eq!(rendition_rows(&env, id).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_12_megapixel_phone_photo_becomes_three_upright_renditions_without_exif() {
    phone_photo_becomes_three_upright_renditions(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_12_megapixel_phone_photo_becomes_three_upright_renditions_without_exif() {
    phone_photo_becomes_three_upright_renditions(Backend::s3()).await;
}

async fn a_10_second_1080p_video_becomes_v360_v720_and_a_poster(backend: Backend) {
    let (env, _workers) = env_on(&backend, |_| {}).await;
    let owner = env.user().await;
    let video = test_media::video_mp4(env.data_dir.path(), 10, 1920, 1080, true);
    let id = upload(&env, owner, MediaType::Mp4, &video).await.unwrap();

    assert_eq!(settled(&env, id).await, ("ready".into(), None));
    let (width, height, duration_ms): (Option<i32>, Option<i32>, Option<i64>) =
        sqlx::query_as("SELECT width, height, duration_ms FROM media WHERE id = $1")
            .bind(id)
            .fetch_one(&env.services.db)
            .await
            .unwrap();
    assert_eq!((width, height), (Some(1920), Some(1080)));
    assert!(
        (duration_ms.unwrap() - 10_000).abs() <= 100,
        "{duration_ms:?}"
    );
    let rows = rendition_rows(&env, id).await;
    let names: Vec<(&str, i32, i32)> = rows.iter().map(|r| (r.0.as_str(), r.1, r.2)).collect();
    assert_eq!(
        names,
        [
            ("v360", 640, 360),
            ("poster", 1280, 720),
            ("v720", 1280, 720)
        ]
    );
    let out = tempfile::tempdir().unwrap();
    for (name, w, h) in [("v360", 640, 360), ("v720", 1280, 720)] {
        let path = out.path().join(format!("{name}.mp4"));
        std::fs::write(&path, object(&env, id, name).await).unwrap();
        let (pw, ph, seconds) = test_media::ffprobe_video(&path);
        assert_eq!((pw, ph), (w, h), "{name}");
        assert!((seconds - 10.0).abs() <= 0.1, "{name} lasts {seconds}");
    }
    let poster = image::load_from_memory(&object(&env, id, "poster").await).unwrap();
    assert_eq!(poster.dimensions(), (1280, 720));
    // The scratch directory is gone with the job.
    let scratch = &env.services.media.scratch_dir;
    assert_eq!(std::fs::read_dir(scratch).unwrap().count(), 0);
    assert_eq!(ready_notifications(&env, owner, id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_second_1080p_video_becomes_two_playable_renditions_and_a_poster() {
    a_10_second_1080p_video_becomes_v360_v720_and_a_poster(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_10_second_1080p_video_becomes_two_playable_renditions_and_a_poster() {
    a_10_second_1080p_video_becomes_v360_v720_and_a_poster(Backend::s3()).await;
}

/// Puts `bytes` in storage and records them as an item of `kind`, bypassing the upload's
/// sniffing, as if it had been fooled: the job must not trust the row either.
async fn stored_as(env: &TestEnv, owner: Uuid, media_type: MediaType, bytes: &[u8]) -> Uuid {
    let id = Uuid::now_v7();
    env.services
        .media
        .storage
        .put(
            &MediaStorage::original_key(id),
            Bytes::copy_from_slice(bytes),
        )
        .await
        .unwrap();
    upload::record(
        &env.services,
        None,
        id,
        owner,
        media_type,
        bytes.len() as u64,
    )
    .await
    .unwrap();
    id
}

async fn bad_inputs_fail_with_their_code(backend: Backend) {
    let (env, _workers) = env_on(&backend, |m| {
        m.limits.max_video_duration = Duration::from_secs(3);
    })
    .await;
    let owner = env.user().await;
    let dir = env.data_dir.path();
    let good = test_media::small_jpeg(dir, 800, 600);

    let bomb = upload(&env, owner, MediaType::Png, &test_media::png_bomb(dir))
        .await
        .unwrap();
    let truncated = upload(&env, owner, MediaType::Jpeg, &good[..good.len() / 2])
        .await
        .unwrap();
    let text = stored_as(&env, owner, MediaType::Jpeg, b"hello, I am not a photo\n").await;
    let audio_only = upload(
        &env,
        owner,
        MediaType::Mp4,
        &test_media::audio_only_mp4(dir),
    )
    .await
    .unwrap();
    let long = upload(
        &env,
        owner,
        MediaType::Mp4,
        &test_media::video_mp4(dir, 5, 320, 240, false),
    )
    .await
    .unwrap();

    for (id, code) in [
        (bomb, "too_large"),
        (truncated, "corrupt"),
        (text, "unsupported_type"),
        (audio_only, "unsupported_type"),
        (long, "too_long"),
    ] {
        assert_eq!(
            settled(&env, id).await,
            ("failed".into(), Some(code.into())),
            "{code}"
        );
        assert_eq!(rendition_rows(&env, id).await.len(), 0);
        assert_eq!(ready_notifications(&env, owner, id).await, 0);
    }
    // The failures were the inputs', not the workers': they go on with the next upload.
    let fine = upload(&env, owner, MediaType::Jpeg, &good).await.unwrap();
    assert_eq!(settled(&env, fine).await, ("ready".into(), None));
    let widths: Vec<i32> = rendition_rows(&env, fine)
        .await
        .iter()
        .map(|r| r.1)
        .collect();
    // 800 px wide: w1080 is not upscaled.
    assert_eq!(widths, [320, 640, 800]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bomb_truncated_text_audio_only_and_too_long_fail_with_their_code() {
    bad_inputs_fail_with_their_code(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bomb_truncated_text_audio_only_and_too_long_fail_with_their_code() {
    bad_inputs_fail_with_their_code(Backend::s3()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_or_of_the_wrong_type_are_refused_and_not_stored() {
    let (env, _workers) = env_on(&Backend::Local, |m| {
        m.limits.max_image_bytes = 100_000;
    })
    .await;
    let owner = env.user().await;
    let dir = env.data_dir.path();
    let photo = test_media::phone_photo(dir, true);
    assert!(photo.len() > 100_000);

    // Declared too large: refused before reading; and streamed without a length: refused at
    // the limit.
    assert!(matches!(
        upload(&env, owner, MediaType::Jpeg, &photo).await,
        Err(UploadError::TooLarge { limit: 100_000 })
    ));
    let chunks: Vec<Result<Bytes, std::io::Error>> = photo
        .chunks(16 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let streamed = upload::receive(
        &env.services,
        owner,
        MediaType::Jpeg,
        None,
        None,
        futures::stream::iter(chunks),
    )
    .await;
    assert!(matches!(streamed, Err(UploadError::TooLarge { .. })));

    let png = test_media::png_bomb(dir);
    assert!(matches!(
        upload(&env, owner, MediaType::Jpeg, &png).await,
        Err(UploadError::Unsupported(_))
    ));
    assert!(matches!(
        upload(&env, owner, MediaType::Jpeg, b"hello, I am not a photo").await,
        Err(UploadError::Unsupported(_))
    ));
    let media_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM media")
        .fetch_one(&env.services.db)
        .await
        .unwrap();
    assert_eq!(media_rows, 0);
    let stored = walk_files(&env.data_dir.path().join("media"));
    assert!(stored.is_empty(), "left in storage: {stored:?}");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk_files(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_attach_only_their_authors_media_and_a_day_old_unattached_upload_is_swept() {
    let (env, _workers) = env_on(&Backend::Local, |_| {}).await;
    let owner = env.user().await;
    let stranger = env.user().await;
    let jpeg = test_media::small_jpeg(env.data_dir.path(), 640, 480);
    let attached = upload(&env, owner, MediaType::Jpeg, &jpeg).await.unwrap();
    let forgotten = upload(&env, owner, MediaType::Jpeg, &jpeg).await.unwrap();
    let fresh = upload(&env, owner, MediaType::Jpeg, &jpeg).await.unwrap();
    for id in [attached, forgotten, fresh] {
        assert_eq!(settled(&env, id).await.0, "ready");
    }

    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let refused = posts::create_post(&mut tx, stranger, "mine now", &[attached]).await;
    assert!(matches!(refused, Err(PostError::MediaNotOwned(id)) if id == attached));
    drop(tx);
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    let unknown = Uuid::now_v7();
    let refused = posts::create_post(&mut tx, owner, "ghost", &[attached, unknown]).await;
    assert!(matches!(refused, Err(PostError::MediaNotOwned(id)) if id == unknown));
    drop(tx);
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    posts::create_post(&mut tx, owner, "gym day", &[attached])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    sqlx::query("UPDATE media SET created_at = now() - interval '25 hours' WHERE id <> $1")
        .bind(fresh)
        .execute(&env.services.db)
        .await
        .unwrap();
    let mut tx = JobTx::begin(&env.services).await.unwrap();
    tx.enqueue(&SweepUnattached {}).await.unwrap();
    tx.commit().await.unwrap();
    eventually(WITHIN, "the forgotten upload to be swept", || async {
        let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM media ORDER BY id")
            .fetch_all(&env.services.db)
            .await
            .ok()?;
        (left == [attached, fresh]).then_some(())
    })
    .await;
    let root = env.data_dir.path().join("media");
    assert!(walk_files(&root.join(forgotten.to_string())).is_empty());
    assert_eq!(walk_files(&root.join(attached.to_string())).len(), 4);
    assert_eq!(walk_files(&root.join(fresh.to_string())).len(), 4);
}
