#!/usr/bin/env bash
# Media benchmark: our image pipeline vs vipsthumbnail and ImageMagick on the same 12 MP JPEG
# (three widths each), and our video job vs the raw ffmpeg command it runs. Every run is its
# own process under /usr/bin/time, so wall time and peak RSS are measured the same way for all.
# Prints one line per run, then medians. Needs libvips-tools, imagemagick and time (installed
# here if missing; not part of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-7}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/groundcrew/target}"

need=()
command -v vipsthumbnail >/dev/null || need+=(libvips-tools)
[ -x /usr/bin/convert ] && /usr/bin/convert -version 2>/dev/null | grep -q ImageMagick || need+=(imagemagick)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build -q --release -p groundcrew-jobs --example bench_media
BIN="$CARGO_TARGET_DIR/release/examples/bench_media"
WORK="${WORK:-$(mktemp -d)}"
"$BIN" prepare "$WORK" >/dev/null
PHOTO="$WORK/photo.jpg"
VIDEO="$WORK/video.mp4"
OUT="$WORK/out"
mkdir -p "$OUT"
mapfile -t FFMPEG_ARGS < <("$BIN" ffmpeg-args "$VIDEO" "$OUT")

# One timed run: prints "<label> <wall seconds> <max RSS KiB>".
timed() {
  local label="$1"; shift
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >/dev/null 2>&1
  echo "$label $(tail -n1 "$WORK/time")"
}

ours_image()   { "$BIN" image "$PHOTO" "$OUT"; }
vips_image()   { for w in 1080 640 320; do vipsthumbnail "$PHOTO" --size "${w}x" -o "$OUT/vips$w.jpg[Q=82,strip]"; done; }
magick_image() {
  /usr/bin/convert "$PHOTO" -auto-orient -strip -quality 82 \
    \( +clone -resize 1080x -write "$OUT/im1080.jpg" +delete \) \
    \( +clone -resize 640x -write "$OUT/im640.jpg" +delete \) \
    -resize 320x "$OUT/im320.jpg"
}
ours_video()   { "$BIN" video "$VIDEO" "$OUT"; }
export -f ours_image vips_image magick_image ours_video
export BIN PHOTO VIDEO OUT
export FFMPEG_ARGS_FILE="$WORK/ffmpeg-args"
printf '%s\n' "${FFMPEG_ARGS[@]}" > "$FFMPEG_ARGS_FILE"

echo "# $(date -u +%FT%TZ) $(uptime)"
echo "# ffmpeg ${FFMPEG_ARGS[*]}"
lines=()
for i in $(seq "$RUNS"); do
  # Alternating, so load from other work on the machine falls on every system alike.
  lines+=("$(timed ours_image bash -c ours_image)")
  lines+=("$(timed vipsthumbnail bash -c vips_image)")
  lines+=("$(timed convert bash -c magick_image)")
  lines+=("$(timed ours_video bash -c ours_video)")
  lines+=("$(timed raw_ffmpeg bash -c 'mapfile -t a < "$FFMPEG_ARGS_FILE"; ffmpeg "${a[@]}"')")
  echo "# run $i done: $(uptime)"
done
printf '%s\n' "${lines[@]}"
echo "# median wall seconds, median and max peak RSS (KiB):"
for label in ours_image vipsthumbnail convert ours_video raw_ffmpeg; do
  runs=$(printf '%s\n' "${lines[@]}" | awk -v l="$label" '$1 == l')
  n=$(echo "$runs" | wc -l); mid=$(( (n + 1) / 2 ))
  wall=$(echo "$runs" | awk '{ print $2 }' | sort -n | sed -n "${mid}p")
  rss=$(echo "$runs" | awk '{ print $3 }' | sort -n | sed -n "${mid}p")
  max=$(echo "$runs" | awk '{ print $3 }' | sort -n | tail -n1)
  echo "$label wall $wall rss $rss max_rss $max"
done
