#!/usr/bin/env bash
# The HTTP benchmark (issues #3, #4, #9): wrk on loopback against the API (release build) and
# a bare poem server (api/examples/bench_floor.rs) on the same machine, Postgres and Redis on it
# too. Targets alternate within each round so that load from elsewhere falls on all alike.
#
#   phase 1 (no workers):  floor GET /, GET /healthz, PUT /v1/me, POST /v1/posts (enqueues),
#           POST /v1/webhooks/sports (signed, unique ids) with nothing processing them yet
#   phase 2 (workers for feed + verification running):  first the time to drain phase 1's
#           fan-outs and webhook inbox, and to read every feed once (each first read rebuilds
#           the feed from Postgres); then GET /v1/feed, POST /v1/webhooks/sports again
#           (now processed alongside), the floor's verify-only POST /verify; then the time for
#           the webhook inbox backlog to return to zero.
#
#   bench/run-http.sh                        # 3 rounds of 10 s per target, 64 connections
#   ROUNDS=5 DURATION=20 CONNECTIONS=128 bench/run-http.sh
#   FOLLOWS=0 bench/run-http.sh              # no social graph (each feed holds its own posts)
#   ONLY="put_me post_posts" ROUNDS=1 bench/run-http.sh   # only these targets
#   KEEP_DB=1 bench/run-http.sh              # leave the database gc_bench_http_<pid> behind
#   REL=/tmp/build bench/run-http.sh         # binaries built before (api, workers, examples/)
#   PERF_DIR=/tmp/prof bench/run-http.sh     # a system-wide `perf record` of each wrk run:
#                                            # perf report -i /tmp/prof/put_me.data --sort comm,dso
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
USERS=${USERS:-1000}
FOLLOWS=${FOLLOWS:-50}
OUT=${OUT:-bench/results/http-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
PG=${GROUNDCREW_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}

command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; } >/dev/null

# REL: a directory holding api, workers and examples/bench_floor already built (default: built
# here, in one build for all three, so cargo resolves features once; two builds rebuild each
# other's crates).
if [ -z "${REL:-}" ]; then
  cargo build --release -p groundcrew-api -p workers --bin api --bin workers --example bench_floor
  REL=${CARGO_TARGET_DIR:-target}/release
fi
WORK=$(mktemp -d)
free_port() {
  local port=$((20000 + RANDOM % 20000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids=($!)
db=gc_bench_http_$$
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP_DB:-}" ] || psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
psql "$PG/postgres" -qc "CREATE DATABASE $db" >/dev/null

api_port=$(free_port)
floor_port=$((api_port + 1))
export DATABASE_URL=$PG/$db REDIS_URL=redis://127.0.0.1:$redis_port RUST_LOG=warn
export GROUNDCREW_QUEUE_PREFIX=bench GROUNDCREW_HTTP_ADDR=127.0.0.1:$api_port
export GROUNDCREW_JWT_SECRET=bench-secret-$RANDOM$RANDOM
export GROUNDCREW_SPORTS_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
export GROUNDCREW_RATE_LIMIT_PER_MINUTE=1000000000 GROUNDCREW_RATE_LIMIT_IP_PER_MINUTE=1000000000
export GROUNDCREW_RATE_LIMIT_PAID_PER_MINUTE=1000000000
"$REL/api" serve >"$WORK/api.log" 2>&1 &
pids+=($!)
"$REL/examples/bench_floor" "127.0.0.1:$floor_port" >"$WORK/floor.log" 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$api_port/healthz" >/dev/null &&
  curl -sf "http://127.0.0.1:$floor_port/" >/dev/null; do sleep 0.2; done

API=http://127.0.0.1:$api_port
FLOOR=http://127.0.0.1:$floor_port
mkdir -p "$(dirname "$OUT")" ${PERF_DIR:+"$PERF_DIR"}
echo "# $(date -u +%FT%TZ) nproc $(nproc) connections $CONNECTIONS duration ${DURATION}s users $USERS follows $FOLLOWS" >>"$OUT"

requests() { python3 bench/http/requests.py "$@"; }
# One wrk run of DURATION seconds; prints and records its JSON line tagged with the target.
measure() { # target url file
  case " ${ONLY:-$1} " in *" $1 "*) ;; *) return 0 ;; esac
  local load perf=() sampler result
  load=$(cut -d' ' -f1 /proc/loadavg)
  [ -z "${PERF_DIR:-}" ] || perf=(perf record -a -q -F 999 -e cpu-clock -o "$PERF_DIR/$1.data" --)
  sample_background >"$WORK/background" 2>/dev/null &
  sampler=$!
  result=$("${perf[@]}" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s bench/http/replay.lua "$2" -- "$3" 2 | grep '^{')
  pkill -P "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  sed "s/^{/{\"target\":\"$1\",\"load\":$load,\"background\":$(background_json),/" <<<"$result" | tee -a "$OUT"
}
# What else ran while wrk did, to explain a slow round: every 0.5 s, the tables autovacuum was
# working on and how many checkpoints Postgres had started (one line per sample, one session).
sample_background() {
  printf '%s\n\\watch 0.5\n' "SELECT coalesce(string_agg(DISTINCT substring(query FROM 'autovacuum: [A-Z ]+ [a-z_.]+'), ';'), '')
      || '|' || (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)
    FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'" | psql "$DATABASE_URL" -At 2>/dev/null
}
# The sampler's findings as JSON: autovacuum runs seen and checkpoints started during the run.
background_json() {
  python3 - "$WORK/background" <<'PY'
import json, sys
lines = [l.strip().split("|") for l in open(sys.argv[1]) if "|" in l]
vacuums = sorted({v for l in lines for v in l[0].split(";") if v})
checkpoints = [int(l[1]) for l in lines if l[1].isdigit()]
print(json.dumps({"autovacuum": vacuums,
                  "checkpoints": checkpoints[-1] - checkpoints[0] if checkpoints else None}))
PY
}
sql() { psql "$DATABASE_URL" -tAc "$1"; }
wait_for() { # description, shell test; polls for up to 300 s
  local deadline=$((SECONDS + 300))
  until eval "$2"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "timed out waiting for $1" >&2; exit 1; }
    sleep 0.2
  done
}

requests users "$USERS" "$GROUNDCREW_JWT_SECRET" >"$WORK/users.tsv"
for kind in me posts feed; do requests "$kind" "$WORK/users.tsv" >"$WORK/$kind.tsv"; done
requests get / >"$WORK/hello.tsv"
requests get /healthz >"$WORK/healthz.tsv"
# Every user exists before the profile updates and posts are timed.
wrk -t2 -c"$CONNECTIONS" -d3s -s bench/http/replay.lua "$API" -- "$WORK/me.tsv" 2 >/dev/null
[ "$(sql 'SELECT count(*) FROM users')" = "$USERS" ] || { echo "users were not all created" >&2; exit 1; }
# The social graph: each user follows the FOLLOWS users after it in id order (wrapping), so
# every feed mixes FOLLOWS + 1 authors and every post fans out to FOLLOWS followers.
sql "WITH u AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM users)
     INSERT INTO follows (follower_id, followee_id)
     SELECT a.id, b.id FROM u a JOIN u b ON (b.n - a.n + $USERS) % $USERS BETWEEN 1 AND $FOLLOWS" >/dev/null

for round in $(seq "$ROUNDS"); do
  echo "## phase 1, round $round of $ROUNDS" >&2
  measure floor_hello "$FLOOR" "$WORK/hello.tsv"
  measure healthz "$API" "$WORK/healthz.tsv"
  measure put_me "$API" "$WORK/me.tsv"
  measure post_posts "$API" "$WORK/posts.tsv"
  case " ${ONLY:-sports_ingest} " in *" sports_ingest "*)
    requests sports $((DURATION * 20000)) "$GROUNDCREW_SPORTS_WEBHOOK_SECRET" >"$WORK/sports.tsv" ;;
  esac
  measure sports_ingest "$API" "$WORK/sports.tsv"
done

"$REL/workers" --queues feed,verification --metrics-addr "127.0.0.1:$(free_port)" >"$WORK/workers.log" 2>&1 &
pids+=($!)
started=$SECONDS
wait_for "the fan-out backlog" '[ "$(redis-cli -p "$redis_port" llen "{bench:feed}:pending")" = 0 ]'
wait_for "the webhook inbox" '[ "$(sql "SELECT count(*) FROM webhook_inbox WHERE processed_at IS NULL")" = 0 ]'
echo "{\"target\":\"phase1_drain\",\"secs\":$((SECONDS - started)),\"posts\":$(sql 'SELECT count(*) FROM posts'),\"events\":$(sql 'SELECT count(*) FROM webhook_inbox')}" | tee -a "$OUT"

# A first read rebuilds the feed from Postgres (a new reader, or Redis lost the feed): with a
# social graph that is tens of milliseconds each, and a thousand of them would swamp a 10 s
# run. Every feed is read once, timed as a line of its own, before reads are measured.
case " ${ONLY:-get_feed} " in *" get_feed "*)
  python3 bench/http/warm.py "$API" "$WORK/feed.tsv" "$CONNECTIONS" feed_first_reads | tee -a "$OUT" ;;
esac

for round in $(seq "$ROUNDS"); do
  echo "## phase 2, round $round of $ROUNDS" >&2
  measure get_feed "$API" "$WORK/feed.tsv"
  # Enough unique deliveries for 20k req/s; signed now, inside the 5-minute tolerance.
  requests sports $((DURATION * 20000)) "$GROUNDCREW_SPORTS_WEBHOOK_SECRET" >"$WORK/sports.tsv"
  measure sports_webhook "$API" "$WORK/sports.tsv"
  requests verify $((DURATION * 20000)) "$GROUNDCREW_SPORTS_WEBHOOK_SECRET" >"$WORK/verify.tsv"
  measure floor_verify "$FLOOR" "$WORK/verify.tsv"
done
started=$SECONDS
wait_for "the webhook inbox" '[ "$(sql "SELECT count(*) FROM webhook_inbox WHERE processed_at IS NULL")" = 0 ]'
echo "{\"target\":\"inbox_drain\",\"secs_after_last_run\":$((SECONDS - started)),\"events\":$(sql 'SELECT count(*) FROM webhook_inbox')}" | tee -a "$OUT"

python3 bench/http/summarize.py "$OUT"
