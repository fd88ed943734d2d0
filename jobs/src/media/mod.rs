//! The media family: uploads, image thumbnails, video renditions.
//!
//! - [`upload`]: `POST /v1/media` streams the body into storage after sniffing its type, and
//!   records the row with its [`Transcode`] job.
//! - [`transcode`]: the job and its status moves (pending → processing → ready | failed), using
//!   [`thumbnails`] for images and [`video`] (ffprobe, ffmpeg) for videos.
//! - [`access`]: owner-only until a post attaches an item; posts attach only their author's.
//! - [`sweep`]: the daily removal of uploads never attached.
//! - [`storage`]: object_store over `file://` or `s3://`; [`settings`]: limits and places.

pub mod access;
pub mod settings;
pub mod sniff;
pub mod storage;
pub mod sweep;
pub mod thumbnails;
pub mod transcode;
pub mod upload;
pub mod video;

use crate::queue::Queue;

pub use settings::{MediaLimits, MediaSettings};
pub use sniff::{MediaKind, MediaType};
pub use storage::MediaStorage;
pub use sweep::SweepUnattached;
pub use transcode::{FailureCode, Transcode};

crate::queue_jobs! {
    /// Thumbnails and renditions.
    pub enum MediaJob for Queue::Media {
        Transcode(Transcode),
        SweepUnattached(SweepUnattached),
    }
}
