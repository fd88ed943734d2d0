//! The media family: uploads, image thumbnails, video renditions.

use crate::queue::Queue;

crate::queue_jobs! {
    /// Thumbnails and renditions.
    pub enum MediaJob for Queue::Media {}
}
