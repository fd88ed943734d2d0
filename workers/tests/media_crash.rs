//! The real `workers` binary killed with SIGKILL in the middle of a video transcode, while
//! ffmpeg is writing the renditions into the item's scratch directory. The job is handed to the
//! next worker when the lease runs out; that run removes the dead run's scratch files (and stops
//! the ffmpeg it left running), transcodes again into the same object keys, and ends ready with
//! one notification and no scratch files left.

mod common;

use std::{path::Path, time::Duration};

use common::{NO_ENV, Workers};

use groundcrew_jobs::media::MediaType;
use groundcrew_testkit::{TestEnv, eventually, media as test_media};

/// The scratch directories under `dir` (one per transcode in progress).
fn scratch_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_transcode_then_the_rerun_cleans_up_and_ends_ready() {
    let env = TestEnv::with(|s| {
        s.lease = Duration::from_secs(2);
        s.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let db = &env.services.db;
    let owner = env.user().await;
    let video = test_media::video_mp4(env.data_dir.path(), 20, 1920, 1080, true);
    let id = test_media::upload(&env.services, owner, MediaType::Mp4, &video)
        .await
        .unwrap();
    let scratch = env.services.media.scratch_dir.clone();

    let first = Workers::start(&env, "media", 1, NO_ENV);
    let dead_run = eventually(
        Duration::from_secs(120),
        "ffmpeg to be writing the renditions",
        || {
            let dirs = scratch_dirs(&scratch);
            async move {
                dirs.into_iter()
                    .find(|d| std::fs::metadata(d.join("v720.mp4")).is_ok_and(|m| m.len() > 0))
            }
        },
    )
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM media WHERE id = $1")
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(status, "processing");
    first.kill_9();

    let _second = Workers::start(&env, "media", 1, NO_ENV);
    eventually(
        Duration::from_secs(180),
        "the rerun to end ready",
        || async {
            let status: String = sqlx::query_scalar("SELECT status FROM media WHERE id = $1")
                .bind(id)
                .fetch_one(db)
                .await
                .ok()?;
            assert_ne!(status, "failed");
            (status == "ready").then_some(())
        },
    )
    .await;

    assert!(
        !dead_run.exists(),
        "the killed run's scratch files are gone"
    );
    assert!(scratch_dirs(&scratch).is_empty(), "no scratch files left");
    let orphans = processes_mentioning(&dead_run.display().to_string());
    assert!(
        orphans.is_empty(),
        "the killed run's ffmpeg still runs: {orphans:?}"
    );
    let renditions: Vec<String> =
        sqlx::query_scalar("SELECT name FROM media_renditions WHERE media_id = $1 ORDER BY name")
            .bind(id)
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(renditions, ["poster", "v360", "v720"]);
    let v720 = env
        .data_dir
        .path()
        .join("media")
        .join(id.to_string())
        .join("v720");
    let (w, h, seconds) = test_media::ffprobe_video(&v720);
    assert_eq!((w, h), (1280, 720));
    assert!((seconds - 20.0).abs() <= 0.1, "{seconds}");
    let notified: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE data->>'media_id' = $1")
            .bind(id.to_string())
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(notified, 1);
}
