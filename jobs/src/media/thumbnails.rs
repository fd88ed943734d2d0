//! Image renditions: decode within limits, turn upright by the EXIF orientation, resize to the
//! fixed widths (never up) with Lanczos3, and encode JPEG from the pixels alone, so no EXIF, GPS
//! or other metadata of the original survives.

use std::io::Cursor;

use bytes::Bytes;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{
    DynamicImage, ImageDecoder, ImageError, ImageReader, Limits, RgbImage,
    codecs::jpeg::JpegEncoder,
};
use uuid::Uuid;

use super::{
    MediaType,
    settings::{MediaLimits, MediaSettings},
    storage::MediaStorage,
    transcode::{FailureCode, ProcessError, Rendered, Rendition},
};

/// Rendition names and their widths, largest first: each is resized from the one before, which
/// keeps the Lanczos quality and costs a fraction of resizing from the original each time.
pub const WIDTHS: [(&str, u32); 3] = [("w1080", 1080), ("w640", 640), ("w320", 320)];

/// Photos are viewed, not printed: 82 keeps them visually clean at about half the bytes of 95.
pub const JPEG_QUALITY: u8 = 82;

/// Renders the renditions of `{media_id}/original` and writes them to storage.
pub async fn render(settings: &MediaSettings, media_id: Uuid) -> Result<Rendered, ProcessError> {
    let original = settings
        .storage
        .get(&MediaStorage::original_key(media_id))
        .await
        .map_err(ProcessError::transient)?;
    let limits = settings.limits;
    let encoded = tokio::task::spawn_blocking(move || thumbnails(&original, &limits))
        .await
        .map_err(ProcessError::transient)??;
    let mut renditions = Vec::with_capacity(encoded.images.len());
    for (name, width, height, jpeg) in encoded.images {
        let bytes = jpeg.len() as u64;
        settings
            .storage
            .put(&MediaStorage::rendition_key(media_id, name), jpeg)
            .await
            .map_err(ProcessError::transient)?;
        renditions.push(Rendition {
            name,
            content_type: "image/jpeg",
            width,
            height,
            bytes,
        });
    }
    Ok(Rendered {
        width: encoded.width,
        height: encoded.height,
        duration_ms: None,
        renditions,
    })
}

/// The upright picture's size and each rendition as (name, width, height, JPEG bytes).
pub struct Thumbnails {
    pub width: u32,
    pub height: u32,
    pub images: Vec<(&'static str, u32, u32, Bytes)>,
}

/// The CPU part of [`render`], without storage: what the benchmark times.
pub fn thumbnails(original: &[u8], limits: &MediaLimits) -> Result<Thumbnails, ProcessError> {
    let upright = decode_upright(original, limits)?.into_rgb8();
    let (width, height) = upright.dimensions();
    let mut images = Vec::with_capacity(WIDTHS.len());
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    let mut previous: Option<RgbImage> = None;
    for (name, target) in WIDTHS {
        let source = previous.as_ref().unwrap_or(&upright);
        let w = target.min(width);
        // Aspect kept to the nearest pixel; never below one.
        let h = ((u64::from(height) * u64::from(w) + u64::from(width) / 2) / u64::from(width))
            .max(1) as u32;
        let resized = if (w, h) == source.dimensions() {
            source.clone()
        } else {
            let mut out = RgbImage::new(w, h);
            resizer
                .resize(source, &mut out, &options)
                .map_err(|e| ProcessError::transient(format!("resize: {e}")))?;
            out
        };
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
            .encode_image(&resized)
            .map_err(|e| ProcessError::transient(format!("JPEG encoding: {e}")))?;
        images.push((name, w, h, Bytes::from(jpeg)));
        previous = Some(resized);
    }
    Ok(Thumbnails {
        width,
        height,
        images,
    })
}

/// Decodes with the size limits checked from the header before any pixel is allocated, then
/// applies the EXIF orientation.
fn decode_upright(original: &[u8], limits: &MediaLimits) -> Result<DynamicImage, ProcessError> {
    let Some(kind) = MediaType::sniff(original) else {
        return Err(ProcessError::rejected(
            FailureCode::UnsupportedType,
            "not a JPEG, PNG or WebP image",
        ));
    };
    if kind == MediaType::Jpeg && !jpeg_is_complete(original) {
        return Err(ProcessError::rejected(
            FailureCode::Corrupt,
            "the JPEG is truncated (no end-of-image marker after its last scan)",
        ));
    }
    let mut reader = ImageReader::new(Cursor::new(original))
        .with_guessed_format()
        .map_err(|e| ProcessError::rejected(FailureCode::Corrupt, e.to_string()))?;
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_image_dimension);
    decoder_limits.max_image_height = Some(limits.max_image_dimension);
    // Room for the largest allowed picture at 8 bytes a pixel (16-bit RGBA PNG).
    decoder_limits.max_alloc = Some(limits.max_image_pixels.saturating_mul(8));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > limits.max_image_pixels {
        return Err(ProcessError::rejected(
            FailureCode::TooLarge,
            format!("{w}×{h} is over {} pixels", limits.max_image_pixels),
        ));
    }
    let orientation = decoder.orientation().map_err(classify)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// image's JPEG decoder is lenient: a truncated file decodes with its missing rows grey. A
/// complete JPEG has an end-of-image marker after its last start-of-scan; inside entropy-coded
/// data 0xFF is always stuffed (`FF 00`), so these two byte pairs are markers wherever they occur.
fn jpeg_is_complete(jpeg: &[u8]) -> bool {
    let last = |marker: u8| jpeg.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

fn classify(e: ImageError) -> ProcessError {
    match &e {
        ImageError::Limits(_) => ProcessError::rejected(FailureCode::TooLarge, e.to_string()),
        ImageError::Unsupported(_) => {
            ProcessError::rejected(FailureCode::UnsupportedType, e.to_string())
        }
        _ => ProcessError::rejected(FailureCode::Corrupt, e.to_string()),
    }
}
