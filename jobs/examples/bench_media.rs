//! The media pipelines' CPU parts as one-shot commands, so `bench/media.sh` can time each run
//! and read its peak memory with `/usr/bin/time -v`, side by side with `vipsthumbnail`,
//! ImageMagick `convert` and the raw ffmpeg command line on the same inputs.
//!
//!     bench_media prepare DIR          # writes DIR/photo.jpg (12 MP, EXIF orientation 6 + GPS)
//!                                      # and DIR/video.mp4 (10 s 1080p H.264 + AAC)
//!     bench_media image FILE OUTDIR    # our image job's work: decode, orient, 3 widths, encode
//!     bench_media video FILE OUTDIR    # our video job's work: ffprobe, then the ffmpeg run
//!     bench_media ffmpeg-args FILE OUTDIR  # that ffmpeg run's arguments, one per line

use std::path::{Path, PathBuf};

use groundcrew_jobs::media::{MediaLimits, thumbnails, video};
use groundcrew_testkit::media as test_media;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> PathBuf {
        match args.get(i) {
            Some(a) => PathBuf::from(a),
            None => usage(),
        }
    };
    let limits = MediaLimits::default();
    match args.first().map(String::as_str) {
        Some("prepare") => prepare(&arg(1)),
        Some("image") => {
            let original = std::fs::read(arg(1)).expect("input");
            let out = thumbnails::thumbnails(&original, &limits).expect("thumbnails");
            for (name, w, h, jpeg) in &out.images {
                std::fs::write(arg(2).join(format!("{name}.jpg")), jpeg).expect("write");
                println!("{name} {w}x{h} {} bytes", jpeg.len());
            }
        }
        Some("video") => {
            let done = video::transcode_file(&arg(1), &arg(2), &limits)
                .await
                .expect("transcode");
            for file in &done.files {
                println!("{} {}x{}", file.name, file.width, file.height);
            }
        }
        Some("ffmpeg-args") => {
            let probe = video::probe(&arg(1), limits.ffmpeg_timeout)
                .await
                .expect("probe");
            let files = video::plan_outputs(&probe, &arg(2));
            let poster_at = video::poster_time(&probe);
            for a in video::ffmpeg_args(&arg(1), &files, probe.has_audio, poster_at, &limits) {
                println!("{a}");
            }
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_media prepare DIR | image FILE OUTDIR | video FILE OUTDIR | ffmpeg-args FILE OUTDIR"
    );
    std::process::exit(2)
}

fn prepare(dir: &Path) {
    std::fs::create_dir_all(dir).expect("bench dir");
    let photo = test_media::phone_photo(dir, true);
    std::fs::write(dir.join("photo.jpg"), &photo).expect("photo");
    let mp4 = test_media::video_mp4(dir, 10, 1920, 1080, true);
    std::fs::write(dir.join("video.mp4"), &mp4).expect("video");
    println!(
        "photo.jpg {} bytes, video.mp4 {} bytes",
        photo.len(),
        mp4.len()
    );
}
