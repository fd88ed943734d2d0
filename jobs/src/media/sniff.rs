//! What an upload really is, from its first bytes. Only five signatures are accepted, so they are
//! matched here directly rather than through a general sniffing crate that knows hundreds of
//! types we would then have to refuse one by one.

use serde::{Deserialize, Serialize};

/// Bytes needed to tell every accepted type apart.
pub const SNIFF_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaType {
    Jpeg,
    Png,
    Webp,
    Mp4,
    QuickTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Video,
}

impl MediaKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
        }
    }
}

impl MediaType {
    pub const fn content_type(self) -> &'static str {
        match self {
            MediaType::Jpeg => "image/jpeg",
            MediaType::Png => "image/png",
            MediaType::Webp => "image/webp",
            MediaType::Mp4 => "video/mp4",
            MediaType::QuickTime => "video/quicktime",
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
        [
            MediaType::Jpeg,
            MediaType::Png,
            MediaType::Webp,
            MediaType::Mp4,
            MediaType::QuickTime,
        ]
        .into_iter()
        .find(|t| t.content_type() == essence)
    }

    pub const fn kind(self) -> MediaKind {
        match self {
            MediaType::Jpeg | MediaType::Png | MediaType::Webp => MediaKind::Image,
            MediaType::Mp4 | MediaType::QuickTime => MediaKind::Video,
        }
    }

    /// The type the bytes say they are, if it is one we accept.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return Some(MediaType::Jpeg);
        }
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Some(MediaType::Png);
        }
        if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            return Some(MediaType::Webp);
        }
        // ISO base media: a box size, then `ftyp` and the major brand.
        if head.len() >= 12 && &head[4..8] == b"ftyp" {
            return Some(if &head[8..12] == b"qt  " {
                MediaType::QuickTime
            } else {
                MediaType::Mp4
            });
        }
        None
    }

    /// Whether bytes sniffed as `self` may be sent as `declared`. MP4 and QuickTime share one
    /// container, and phones label either as the other, so within video they are interchangeable.
    pub fn agrees_with(self, declared: MediaType) -> bool {
        self == declared || (self.kind() == MediaKind::Video && declared.kind() == MediaKind::Video)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(
            MediaType::sniff(b"\xFF\xD8\xFF\xE0\0\x10JFIF"),
            Some(MediaType::Jpeg)
        );
        assert_eq!(
            MediaType::sniff(b"\x89PNG\r\n\x1a\n\0\0"),
            Some(MediaType::Png)
        );
        assert_eq!(
            MediaType::sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(MediaType::Webp)
        );
        assert_eq!(
            MediaType::sniff(b"\0\0\0\x20ftypisom\0\0"),
            Some(MediaType::Mp4)
        );
        assert_eq!(
            MediaType::sniff(b"\0\0\0\x14ftypqt  \0\0"),
            Some(MediaType::QuickTime)
        );
        assert_eq!(MediaType::sniff(b"hello, I am a jpeg"), None);
        assert_eq!(MediaType::sniff(b"GIF89a"), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            MediaType::from_content_type("image/JPEG; q=1"),
            Some(MediaType::Jpeg)
        );
        assert_eq!(MediaType::from_content_type("image/gif"), None);
        assert!(MediaType::Mp4.agrees_with(MediaType::QuickTime));
        assert!(!MediaType::Png.agrees_with(MediaType::Jpeg));
    }
}
