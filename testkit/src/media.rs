//! Test media made at test time with the system's ffmpeg (lavfi `color`, `testsrc2`, `sine`),
//! so no large file is committed, plus the EXIF block a phone photo carries.

use std::{path::Path, process::Command};

use bytes::Bytes;
use groundcrew_jobs::{
    Services,
    media::{
        MediaType,
        upload::{self, UploadError},
    },
};
use uuid::Uuid;

/// Uploads `bytes` as the API does: streamed in 64 KiB chunks with the length declared.
pub async fn upload(
    services: &Services,
    owner: Uuid,
    declared: MediaType,
    bytes: &[u8],
) -> Result<Uuid, UploadError> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    upload::receive(
        services,
        owner,
        declared,
        Some(bytes.len() as u64),
        None,
        futures::stream::iter(chunks),
    )
    .await
    .map(|uploaded| uploaded.id)
}

/// Runs ffmpeg with `args` (quiet, overwriting), failing the test if it fails.
pub fn ffmpeg(args: &[&str]) {
    crate::run_tool(
        Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
            .args(args),
    );
}

/// The stored (sideways) picture of [`phone_photo`]: this wide and high, with a red square in
/// its top-left corner on blue.
pub const PHOTO_STORED: (u32, u32) = (4000, 3000);
pub const PHOTO_MARK: u32 = 600;

/// A 12-megapixel JPEG as a phone held upright writes it: the sensor's 4000×3000 pixels with
/// EXIF orientation 6 (display rotated 90° clockwise) and GPS tags. Upright it is 3000×4000 with
/// the red square in its top-right corner. `textured` adds noise, so the JPEG is as heavy to
/// decode as a real photo (the benchmark uses it).
pub fn phone_photo(dir: &Path, textured: bool) -> Vec<u8> {
    let path = dir.join("sensor.jpg");
    let (w, h) = PHOTO_STORED;
    let mut filter =
        format!("drawbox=x=0:y=0:w={PHOTO_MARK}:h={PHOTO_MARK}:color=red:t=fill,format=yuv420p");
    if textured {
        filter = format!("noise=alls=30:allf=t,{filter}");
    }
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("color=c=blue:s={w}x{h}"),
        "-vf",
        &filter,
        "-frames:v",
        "1",
        "-q:v",
        "2",
        path.to_str().expect("utf-8 path"),
    ]);
    let jpeg = std::fs::read(path).expect("ffmpeg's JPEG");
    with_exif(&jpeg, &exif_orientation_6_with_gps())
}

/// Inserts `exif` (a TIFF structure) as an APP1 segment right after the JPEG's SOI marker.
pub fn with_exif(jpeg: &[u8], exif: &[u8]) -> Vec<u8> {
    assert_eq!(&jpeg[..2], [0xFF, 0xD8], "a JPEG starts with SOI");
    let payload_len = 6 + exif.len();
    let mut out = Vec::with_capacity(jpeg.len() + payload_len + 4);
    out.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE1]);
    out.extend_from_slice(&((payload_len + 2) as u16).to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A little-endian TIFF block: IFD0 with Orientation = 6 and a GPS IFD pointer; the GPS IFD with
/// latitude 48°51'24" N and longitude 2°21'3" E. Written by hand (the layout is fixed and a few
/// dozen bytes) rather than through an EXIF-writing crate used by this one helper.
pub fn exif_orientation_6_with_gps() -> Vec<u8> {
    const SHORT: u16 = 3;
    const LONG: u16 = 4;
    const ASCII: u16 = 2;
    const RATIONAL: u16 = 5;
    let entry = |out: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value);
    };
    // Offsets from the TIFF header: IFD0 at 8 (2 entries: 30 bytes), the GPS IFD at 38
    // (4 entries: 54 bytes), then the two rationals triplets at 92 and 116.
    let (ifd0, gps_ifd, latitude, longitude) = (8u32, 38u32, 92u32, 116u32);
    let mut out = Vec::new();
    out.extend_from_slice(b"II*\0");
    out.extend_from_slice(&ifd0.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    entry(&mut out, 0x0112, SHORT, 1, [6, 0, 0, 0]);
    entry(&mut out, 0x8825, LONG, 1, gps_ifd.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    entry(&mut out, 0x0001, ASCII, 2, *b"N\0\0\0");
    entry(&mut out, 0x0002, RATIONAL, 3, latitude.to_le_bytes());
    entry(&mut out, 0x0003, ASCII, 2, *b"E\0\0\0");
    entry(&mut out, 0x0004, RATIONAL, 3, longitude.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for (degrees, minutes, seconds) in [(48u32, 51u32, 24u32), (2, 21, 3)] {
        for value in [degrees, minutes, seconds] {
            out.extend_from_slice(&value.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
    }
    assert_eq!(out.len(), 140);
    out
}

/// A small JPEG (`w`×`h`, a test pattern), no EXIF.
pub fn small_jpeg(dir: &Path, w: u32, h: u32) -> Vec<u8> {
    let path = dir.join(format!("small-{w}x{h}.jpg"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=s={w}x{h}"),
        "-frames:v",
        "1",
        path.to_str().expect("utf-8 path"),
    ]);
    std::fs::read(path).expect("ffmpeg's JPEG")
}

/// A PNG decompression bomb: 13000×13000 black pixels at one bit each compress to about twenty
/// kilobytes, and would decode to 500 MB of RGB.
pub fn png_bomb(dir: &Path) -> Vec<u8> {
    let path = dir.join("bomb.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=13000x13000",
        "-frames:v",
        "1",
        "-pix_fmt",
        "monob",
        path.to_str().expect("utf-8 path"),
    ]);
    std::fs::read(path).expect("ffmpeg's PNG")
}

/// An H.264 + AAC MP4 of `seconds` of test pattern and a 440 Hz tone (`audio`), `w`×`h`.
pub fn video_mp4(dir: &Path, seconds: u32, w: u32, h: u32, audio: bool) -> Vec<u8> {
    let path = dir.join(format!("video-{seconds}s-{w}x{h}-{audio}.mp4"));
    let video = format!("testsrc2=s={w}x{h}:r=30:d={seconds}");
    let tone = format!("sine=frequency=440:d={seconds}");
    let mut args = vec!["-f", "lavfi", "-i", &video];
    if audio {
        args.extend(["-f", "lavfi", "-i", &tone, "-c:a", "aac"]);
    }
    args.extend([
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        path.to_str().expect("utf-8 path"),
    ]);
    ffmpeg(&args);
    std::fs::read(path).expect("ffmpeg's MP4")
}

/// An MP4 with a tone and no picture.
pub fn audio_only_mp4(dir: &Path) -> Vec<u8> {
    let path = dir.join("audio-only.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:d=2",
        "-c:a",
        "aac",
        path.to_str().expect("utf-8 path"),
    ]);
    std::fs::read(path).expect("ffmpeg's MP4")
}

/// What ffprobe says of a file: (width, height, duration in seconds) of its first video stream.
pub fn ffprobe_video(path: &Path) -> (u32, u32, f64) {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height:format=duration"])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe on PATH");
    assert!(output.status.success(), "ffprobe {}", path.display());
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("ffprobe reported no {name}: {text}"))
            .to_owned()
    };
    (
        field("width").parse().expect("width"),
        field("height").parse().expect("height"),
        field("duration").parse().expect("duration"),
    )
}
