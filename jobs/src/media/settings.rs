//! Media settings, read once at start: where objects are stored, where scratch files go, and the
//! limits uploads and transcodes are held to.

use std::{path::PathBuf, time::Duration};

use super::storage::{MediaStorage, StorageError};
use crate::settings::{ConfigError, env_duration, env_parse, env_string};

#[derive(Clone, Debug)]
pub struct MediaSettings {
    pub storage: MediaStorage,
    /// Scratch space for transcodes (`$GROUNDCREW_DATA_DIR/tmp`): on the data disk, not `/tmp`,
    /// so a video's input and outputs fit, and a killed worker's leftovers are found again.
    pub scratch_dir: PathBuf,
    pub limits: MediaLimits,
}

#[derive(Clone, Copy, Debug)]
pub struct MediaLimits {
    /// Largest image upload, bytes.
    pub max_image_bytes: u64,
    /// Largest video upload, bytes.
    pub max_video_bytes: u64,
    /// Longest video accepted.
    pub max_video_duration: Duration,
    /// Largest decoded picture, in pixels (width × height): a 100 MP image is 300 MB of RGB.
    pub max_image_pixels: u64,
    /// Largest width or height of a decoded picture.
    pub max_image_dimension: u32,
    /// Largest video frame, in pixels (4K UHD by default).
    pub max_video_pixels: u64,
    /// One ffmpeg run longer than this is killed and the media fails with `timeout`.
    pub ffmpeg_timeout: Duration,
    /// Largest output file one ffmpeg run may write (`-fs`).
    pub max_rendition_bytes: u64,
}

impl Default for MediaLimits {
    fn default() -> Self {
        MediaLimits {
            max_image_bytes: 25 * 1024 * 1024,
            max_video_bytes: 500 * 1024 * 1024,
            max_video_duration: Duration::from_secs(180),
            max_image_pixels: 50_000_000,
            max_image_dimension: 12_000,
            max_video_pixels: 3840 * 2160,
            ffmpeg_timeout: Duration::from_secs(600),
            max_rendition_bytes: 300 * 1024 * 1024,
        }
    }
}

impl MediaSettings {
    /// `GROUNDCREW_STORAGE_URL` (default `file://$GROUNDCREW_DATA_DIR/media`; `s3://bucket` takes
    /// its endpoint and credentials from the `AWS_*` variables) and the `GROUNDCREW_MEDIA_*`
    /// limits.
    pub fn from_env() -> Result<Self, ConfigError> {
        let data_dir = PathBuf::from(env_string("GROUNDCREW_DATA_DIR", "./data"));
        let default_url = format!("file://{}", absolute(&data_dir.join("media")).display());
        let url = env_string("GROUNDCREW_STORAGE_URL", &default_url);
        let storage = MediaStorage::open(&url, Vec::new()).map_err(|e| ConfigError {
            variable: "GROUNDCREW_STORAGE_URL".into(),
            message: e.to_string(),
        })?;
        let defaults = MediaLimits::default();
        let limits = MediaLimits {
            max_image_bytes: env_parse(
                "GROUNDCREW_MEDIA_MAX_IMAGE_BYTES",
                defaults.max_image_bytes,
            )?,
            max_video_bytes: env_parse(
                "GROUNDCREW_MEDIA_MAX_VIDEO_BYTES",
                defaults.max_video_bytes,
            )?,
            max_video_duration: Duration::from_secs(env_parse(
                "GROUNDCREW_MEDIA_MAX_VIDEO_SECONDS",
                defaults.max_video_duration.as_secs(),
            )?),
            max_image_pixels: env_parse(
                "GROUNDCREW_MEDIA_MAX_IMAGE_PIXELS",
                defaults.max_image_pixels,
            )?,
            ffmpeg_timeout: env_duration(
                "GROUNDCREW_MEDIA_FFMPEG_TIMEOUT",
                defaults.ffmpeg_timeout,
            )?,
            ..defaults
        };
        Ok(MediaSettings {
            storage,
            scratch_dir: absolute(&data_dir.join("tmp")),
            limits,
        })
    }

    /// Local storage and scratch under `data_dir`, default limits: what tests start from.
    pub fn local(data_dir: &std::path::Path) -> Result<Self, StorageError> {
        let root = absolute(&data_dir.join("media"));
        Ok(MediaSettings {
            storage: MediaStorage::open(&format!("file://{}", root.display()), Vec::new())?,
            scratch_dir: absolute(&data_dir.join("tmp")),
            limits: MediaLimits::default(),
        })
    }

    /// The largest upload of either kind: what the route may read before it knows the kind.
    pub fn max_upload_bytes(&self) -> u64 {
        self.limits.max_image_bytes.max(self.limits.max_video_bytes)
    }
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
