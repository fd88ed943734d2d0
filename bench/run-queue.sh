#!/usr/bin/env bash
# The side-by-side queue sweep of bench/RESULTS.md: our runtime, a bare apalis-redis worker
# (defaults, and lock_tasks(false) + batch 100) and BullMQ, on one private redis-server that
# is flushed before every run. Systems alternate within each round (A B C D A B C D …) so
# that load from other work on the machine falls on all of them alike. Prints the markdown
# tables at the end; the raw JSON lines (with the load average before each run) stay in $OUT.
#
#   bench/run-queue.sh                              # everything, 3 rounds
#   ROUNDS=5 PHASES=drain CONCURRENCIES="16" bench/run-queue.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
JOBS=${JOBS:-50000}
CONCURRENCIES=${CONCURRENCIES:-"1 16 64"}
SYSTEMS=${SYSTEMS:-"ours apalis-default apalis-fast bullmq"}
PHASES=${PHASES:-"drain enqueue latency"}
SINGLE_JOBS=${SINGLE_JOBS:-2000}
LATENCY_RATE=${LATENCY_RATE:-1000}
LATENCY_SECONDS=${LATENCY_SECONDS:-10}
LATENCY_CONCURRENCY=${LATENCY_CONCURRENCY:-16}
BULLMQ_DIR=${BULLMQ_DIR:-$(cd .. && pwd)/shared/peers/bullmq}
OUT=${OUT:-bench/results/queue-$(date -u +%Y%m%dT%H%M%SZ).jsonl}

# BIN: the bench-queue binary (default: built here); BIN_NEXT: a second build of it, measured
# as the system `ours-next` (label groundcrew-next) for an A/B of a change to the runtime.
if [ -z "${BIN:-}" ]; then
  cargo build --release -p groundcrew-bench
  BIN=${CARGO_TARGET_DIR:-target}/release/bench-queue
fi
BIN_NEXT=${BIN_NEXT:-}
[ -d "$BULLMQ_DIR/node_modules" ] || (cd "$BULLMQ_DIR" && npm install --no-audit --no-fund)

port=$((20000 + RANDOM % 20000))
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
URL=redis://127.0.0.1:$port

mkdir -p "$(dirname "$OUT")"
{
  echo "# $(date -u +%FT%TZ) $(redis-server --version | cut -d' ' -f1-3) on port $port"
  echo "# nproc $(nproc); $(psql -h 127.0.0.1 -U postgres -tAc 'select version()' 2>/dev/null | cut -d, -f1)"
} >>"$OUT"

bullmq() { (cd "$BULLMQ_DIR" && REDIS_PORT=$port node bench.mjs "$@"); }

# One measured run on an empty Redis; its JSON line goes to stdout and $OUT.
run() {
  redis-cli -p "$port" flushall >/dev/null
  echo "# $(date -u +%T) $* load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT"
  "$@" | grep '^{' | sed "s/\"system\":\"groundcrew\"/\"system\":\"${LABEL:-groundcrew}\"/" | tee -a "$OUT"
}

drain() { # system concurrency
  case $1 in
    ours) run "$BIN" --redis-url "$URL" drain --jobs "$JOBS" --concurrency "$2" ;;
    ours-next) LABEL=groundcrew-next run "$BIN_NEXT" --redis-url "$URL" drain --jobs "$JOBS" --concurrency "$2" ;;
    apalis-default | apalis-fast)
      run "$BIN" --redis-url "$URL" drain-apalis --jobs "$JOBS" --concurrency "$2" --config "${1#apalis-}" ;;
    bullmq) run bullmq_drain "$2" ;;
  esac
}

bullmq_drain() { bullmq enqueue bulk "$JOBS" 1000 >/dev/null && bullmq drain "$JOBS" "$1"; }

for round in $(seq "$ROUNDS"); do
  echo "## round $round of $ROUNDS" >&2
  if [[ " $PHASES " == *" drain "* ]]; then
    for c in $CONCURRENCIES; do
      for system in $SYSTEMS; do drain "$system" "$c"; done
    done
  fi
  if [[ " $PHASES " == *" enqueue "* ]]; then
    run "$BIN" --redis-url "$URL" enqueue --mode single --jobs "$SINGLE_JOBS"
    run "$BIN" --redis-url "$URL" enqueue --mode single --jobs "$((SINGLE_JOBS * 4))" --tasks 16
    run bullmq enqueue single "$SINGLE_JOBS"
    run "$BIN" --redis-url "$URL" enqueue --mode batch --jobs "$JOBS" --batch 1000
    run bullmq enqueue bulk "$JOBS" 1000
  fi
  if [[ " $PHASES " == *" latency "* ]]; then
    for path in outbox broker; do
      for bin in "$BIN" $BIN_NEXT; do
        LABEL=$([ "$bin" = "$BIN" ] && echo groundcrew || echo groundcrew-next) \
          run "$bin" --redis-url "$URL" latency --rate "$LATENCY_RATE" \
          --seconds "$LATENCY_SECONDS" --concurrency "$LATENCY_CONCURRENCY" --path "$path"
      done
    done
    run bullmq latency "$LATENCY_RATE" "$LATENCY_SECONDS" "$LATENCY_CONCURRENCY"
  fi
done

echo "# done $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT"
echo
echo "Results: $OUT"
echo
"$BIN" summarize "$OUT"
