//! Video renditions with the system's `ffprobe` and `ffmpeg`: probe the streams and duration,
//! refuse what is not a video or is over the limits, then one ffmpeg run decodes the input once
//! and writes `v360.mp4`, `v720.mp4` (H.264 + AAC, `+faststart`, never upscaled, even sizes) and
//! `poster.jpg`.
//!
//! Untrusted input meets ffmpeg here, so: the input is a local file in a scratch directory (never
//! a URL), `-protocol_whitelist file` keeps playlists and references from reaching the network,
//! each run has a wall-clock limit (the child is killed when it passes, or when the job is
//! dropped at worker shutdown: `kill_on_drop`) and an output size limit (`-fs`), and the scratch
//! directory is removed when the job ends however it ends. A worker killed with SIGKILL cannot
//! clean up, so the next run of the same item removes what its predecessor left, and ffmpeg's own
//! `-timelimit` ends a run orphaned that way.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use super::{
    settings::{MediaLimits, MediaSettings},
    storage::MediaStorage,
    transcode::{FailureCode, ProcessError, Rendered, Rendition},
};

/// Rendition names and the size of the picture's short side (360p, 720p).
pub const RENDITIONS: [(&str, u32); 2] = [("v360", 360), ("v720", 720)];

/// Renders the renditions of `{media_id}/original` and writes them to storage.
pub async fn render(settings: &MediaSettings, media_id: Uuid) -> Result<Rendered, ProcessError> {
    let scratch = scratch_dir(&settings.scratch_dir, media_id)?;
    let input = scratch.path().join("input");
    settings
        .storage
        .download_to(&MediaStorage::original_key(media_id), &input)
        .await
        .map_err(ProcessError::transient)?;
    let outputs = transcode_file(&input, scratch.path(), &settings.limits).await?;
    let mut renditions = Vec::with_capacity(outputs.files.len());
    for file in &outputs.files {
        let bytes = settings
            .storage
            .upload_file(
                &MediaStorage::rendition_key(media_id, file.name),
                &file.path,
            )
            .await
            .map_err(ProcessError::transient)?;
        renditions.push(Rendition {
            name: file.name,
            content_type: file.content_type,
            width: file.width,
            height: file.height,
            bytes,
        });
    }
    Ok(Rendered {
        width: outputs.width,
        height: outputs.height,
        duration_ms: Some(outputs.duration_ms),
        renditions,
    })
}

/// A fresh scratch directory for one item under `dir`, after removing any an earlier run of the
/// same item left behind (a worker killed mid-transcode), and killing the ffmpeg that run may
/// have left running.
pub fn scratch_dir(dir: &Path, media_id: Uuid) -> Result<tempfile::TempDir, ProcessError> {
    let prefix = format!("media-{media_id}-");
    std::fs::create_dir_all(dir).map_err(ProcessError::transient)?;
    for entry in std::fs::read_dir(dir).map_err(ProcessError::transient)? {
        let entry = entry.map_err(ProcessError::transient)?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let leftover = entry.path();
            tracing::info!(%media_id, path = %leftover.display(), "removing a killed run's scratch files");
            kill_orphan(&leftover);
            std::fs::remove_dir_all(&leftover).map_err(ProcessError::transient)?;
        }
    }
    tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(dir)
        .map_err(ProcessError::transient)
}

/// The tool's pid, written next to its files so a later run can stop it.
const PID_FILE: &str = "tool.pid";

/// Kills the tool a killed run started in `scratch`, if it still runs there: the pid must
/// still name a process whose command line mentions `scratch` (pids are reused).
fn kill_orphan(scratch: &Path) {
    let Some(pid) = std::fs::read_to_string(scratch.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = scratch.display().to_string();
    if String::from_utf8_lossy(&cmdline).contains(&needle) {
        tracing::warn!(pid, "killing an ffmpeg left running by a killed worker");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// One output of the ffmpeg run, in the scratch directory.
pub struct OutputFile {
    pub name: &'static str,
    pub content_type: &'static str,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
}

pub struct Transcoded {
    pub width: u32,
    pub height: u32,
    pub duration_ms: i64,
    pub files: Vec<OutputFile>,
}

/// Probes `input` and writes the renditions into `out_dir`: the local part of [`render`], which
/// the benchmark times.
pub async fn transcode_file(
    input: &Path,
    out_dir: &Path,
    limits: &MediaLimits,
) -> Result<Transcoded, ProcessError> {
    let probe = probe(input, limits.ffmpeg_timeout).await?;
    if probe.duration > limits.max_video_duration {
        return Err(ProcessError::rejected(
            FailureCode::TooLong,
            format!(
                "{:.1} s is over the {} s limit",
                probe.duration.as_secs_f64(),
                limits.max_video_duration.as_secs()
            ),
        ));
    }
    if u64::from(probe.width) * u64::from(probe.height) > limits.max_video_pixels {
        return Err(ProcessError::rejected(
            FailureCode::TooLarge,
            format!(
                "{}×{} is over the frame size limit",
                probe.width, probe.height
            ),
        ));
    }
    let files = plan_outputs(&probe, out_dir);
    let args = ffmpeg_args(input, &files, probe.has_audio, poster_time(&probe), limits);
    run_tool("ffmpeg", &args, limits.ffmpeg_timeout, Some(out_dir)).await?;
    for file in &files {
        let written = std::fs::metadata(&file.path).map_err(|_| {
            ProcessError::rejected(
                FailureCode::Corrupt,
                format!("ffmpeg wrote no {}", file.name),
            )
        })?;
        if written.len() >= limits.max_rendition_bytes {
            return Err(ProcessError::rejected(
                FailureCode::TooLarge,
                format!("{} reached the output size limit", file.name),
            ));
        }
    }
    Ok(Transcoded {
        width: probe.width,
        height: probe.height,
        duration_ms: probe.duration.as_millis() as i64,
        files,
    })
}

/// The renditions of a probed video, as files in `out_dir`: the two sizes, then the poster at
/// the larger size.
pub fn plan_outputs(probe: &Probe, out_dir: &Path) -> Vec<OutputFile> {
    let videos = RENDITIONS.iter().map(|&(name, short_side)| {
        let (width, height) = fit_short_side(probe.width, probe.height, short_side);
        OutputFile {
            name,
            content_type: "video/mp4",
            path: out_dir.join(format!("{name}.mp4")),
            width,
            height,
        }
    });
    let (width, height) = fit_short_side(probe.width, probe.height, 720);
    let poster = OutputFile {
        name: "poster",
        content_type: "image/jpeg",
        path: out_dir.join("poster.jpg"),
        width,
        height,
    };
    videos.chain([poster]).collect()
}

/// One second in (past fade-ins and black first frames), or the middle of a shorter clip.
pub fn poster_time(probe: &Probe) -> Duration {
    (probe.duration / 2).min(Duration::from_secs(1))
}

/// The ffmpeg command line: one decode, three outputs. Shared with the benchmark, whose raw
/// ffmpeg baseline runs the same arguments.
pub fn ffmpeg_args(
    input: &Path,
    files: &[OutputFile],
    has_audio: bool,
    poster_at: Duration,
    limits: &MediaLimits,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-protocol_whitelist",
        "file",
    ]
    .map(String::from)
    .into();
    // CPU seconds; a backstop for a run whose worker was killed (the wall-clock limit is ours).
    args.extend([
        "-timelimit".into(),
        (limits.ffmpeg_timeout.as_secs() * 4).max(1).to_string(),
    ]);
    args.extend(["-i".into(), input.display().to_string()]);
    let fs = limits.max_rendition_bytes.to_string();
    for file in files {
        let scale = format!("scale={}:{}", file.width, file.height);
        args.extend(["-map".into(), "0:v:0".into()]);
        if file.content_type == "video/mp4" {
            let video = [
                "-vf",
                scale.as_str(),
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "23",
                "-pix_fmt",
                "yuv420p",
                "-movflags",
                "+faststart",
                "-fs",
                fs.as_str(),
            ];
            args.extend(video.map(String::from));
            if has_audio {
                args.extend(
                    ["-map", "0:a:0", "-c:a", "aac", "-b:a", "128k", "-ac", "2"].map(String::from),
                );
            }
        } else {
            let seconds = format!("{:.3}", poster_at.as_secs_f64());
            let poster = [
                "-ss",
                seconds.as_str(),
                "-frames:v",
                "1",
                "-update",
                "1",
                "-vf",
                scale.as_str(),
                "-q:v",
                "3",
                "-fs",
                fs.as_str(),
            ];
            args.extend(poster.map(String::from));
        }
        args.push(file.path.display().to_string());
    }
    args
}

/// Scales so the short side is `short_side` (or stays as it is when smaller: never upscaled),
/// keeping the aspect, with both sides even as H.264 in 4:2:0 needs.
pub fn fit_short_side(width: u32, height: u32, short_side: u32) -> (u32, u32) {
    let short = width.min(height).max(1);
    let target = short_side.min(short);
    let even = |v: f64| ((v / 2.0).round() as u32 * 2).max(2);
    let scale = f64::from(target) / f64::from(short);
    (
        even(f64::from(width) * scale),
        even(f64::from(height) * scale),
    )
}

/// What ffprobe says of the input: the displayed size (rotation applied), duration and audio.
#[derive(Debug)]
pub struct Probe {
    pub width: u32,
    pub height: u32,
    pub duration: Duration,
    pub has_audio: bool,
}

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    format: Option<ProbeFormat>,
}

#[derive(Deserialize)]
struct ProbeStream {
    codec_type: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    duration: Option<String>,
    #[serde(default)]
    disposition: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    side_data_list: Vec<serde_json::Value>,
    #[serde(default)]
    tags: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ProbeFormat {
    duration: Option<String>,
}

pub async fn probe(input: &Path, limit: Duration) -> Result<Probe, ProcessError> {
    let args: Vec<String> = [
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
    ]
    .map(String::from)
    .into_iter()
    .chain([input.display().to_string()])
    .collect();
    let stdout = run_tool("ffprobe", &args, limit, None).await?;
    let json: ProbeJson = serde_json::from_slice(&stdout).map_err(|e| {
        ProcessError::rejected(FailureCode::Corrupt, format!("ffprobe output: {e}"))
    })?;
    let is = |s: &ProbeStream, kind: &str| s.codec_type.as_deref() == Some(kind);
    // Cover art in an audio file is a "video" stream too; it is not a video.
    let video = json.streams.iter().find(|s| {
        is(s, "video") && s.disposition.get("attached_pic").and_then(|v| v.as_i64()) != Some(1)
    });
    let Some(video) = video else {
        return Err(ProcessError::rejected(
            FailureCode::UnsupportedType,
            "the file has no video stream",
        ));
    };
    let (Some(w), Some(h)) = (video.width, video.height) else {
        return Err(ProcessError::rejected(
            FailureCode::Corrupt,
            "the video stream has no size",
        ));
    };
    let rotation = video
        .side_data_list
        .iter()
        .find_map(|d| d.get("rotation").and_then(|r| r.as_f64()))
        .or_else(|| {
            video
                .tags
                .get("rotate")
                .and_then(|r| r.as_str()?.parse().ok())
        })
        .unwrap_or(0.0);
    let quarter_turn = (rotation.abs() as i64 / 90) % 2 == 1;
    let (width, height) = if quarter_turn { (h, w) } else { (w, h) };
    let seconds = json
        .format
        .and_then(|f| f.duration)
        .or_else(|| video.duration.clone())
        .and_then(|d| d.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d > 0.0)
        .ok_or_else(|| ProcessError::rejected(FailureCode::Corrupt, "no duration"))?;
    Ok(Probe {
        width,
        height,
        duration: Duration::from_secs_f64(seconds),
        has_audio: json.streams.iter().any(|s| is(s, "audio")),
    })
}

/// Runs ffmpeg or ffprobe with a wall-clock limit; returns its stdout. A non-zero exit means the
/// input could not be read (`corrupt`, with the tool's last words); the limit passing means
/// `timeout`. The child is killed when this future is dropped, at the limit or at shutdown.
async fn run_tool(
    program: &str,
    args: &[String],
    limit: Duration,
    scratch: Option<&Path>,
) -> Result<Vec<u8>, ProcessError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C or SIGTERM meant for the worker does not stop the
        // tool under a job the worker is still finishing in its grace period.
        .process_group(0)
        .spawn()
        .map_err(|e| ProcessError::transient(format!("cannot start {program}: {e}")))?;
    if let (Some(dir), Some(pid)) = (scratch, child.id()) {
        std::fs::write(dir.join(PID_FILE), pid.to_string()).map_err(ProcessError::transient)?;
    }
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let finished = tokio::time::timeout(limit, async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (read_out, read_err, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        read_out.and(read_err)?;
        Ok::<_, std::io::Error>((status?, out, err))
    })
    .await;
    match finished {
        Err(_) => Err(ProcessError::rejected(
            FailureCode::Timeout,
            format!(
                "{program} ran longer than {}",
                humantime::format_duration(limit)
            ),
        )),
        Ok(Err(e)) => Err(ProcessError::transient(format!("{program}: {e}"))),
        Ok(Ok((status, out, _))) if status.success() => Ok(out),
        Ok(Ok((status, _, err))) => {
            let err = String::from_utf8_lossy(&err);
            let tail: String = err
                .trim()
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(ProcessError::rejected(
                FailureCode::Corrupt,
                format!("{program} exited with {status}: {tail}"),
            ))
        }
    }
}
