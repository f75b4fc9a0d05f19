#!/usr/bin/env bash
# Cluster benchmark: a total rescan of a generated instance with `leakscan
# up`, for 1 and 2 workers (median of RUNS), the no-change rescan, the same
# repositories scanned one by one with `leakscan scan`, and the latency of
# the status endpoint under load (wrk, if installed: apt install wrk).
# With --policy, instead: total rescans (2 workers) after each kind of
# policy change, to show what the blob-result cache spares.
# With --status-load RATE, instead: the status endpoint's latency at RATE
# requests a second (open loop, bench/status_load.py) while a total rescan
# runs (2 workers), once per run.
#
#   bash bench/cluster.sh [--repos 200] [--commits 150] [--bytes 1MB] [--runs 3] [--cli-runs 3] [--root DIR] [--policy] [--status-load 500]
#
# --root reuses an existing instance (e.g. the demo's ~/.cache/leakscan-demo/root).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}"
REPOS=200 COMMITS=150 BYTES=1MB RUNS=3 CLI_RUNS=3 ROOT="" POLICY="" STATUS_LOAD=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repos) REPOS=$2; shift 2 ;;
    --commits) COMMITS=$2; shift 2 ;;
    --bytes) BYTES=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --cli-runs) CLI_RUNS=$2; shift 2 ;;
    --root) ROOT=$2; shift 2 ;;
    --policy) POLICY=1; shift ;;
    --status-load) STATUS_LOAD=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/leakscan-bench}"
PG=postgres://postgres:postgres@127.0.0.1:5432
DATABASE=leakscan_bench
LISTEN=127.0.0.1:7999
BASE="http://$LISTEN"
AUTH=admin:bench
bash deploy/local/services.sh >/dev/null
cargo build --release --bins -q
LEAKSCAN="$CARGO_TARGET_DIR/release/leakscan"

if [ -z "$ROOT" ]; then
  ROOT="$BENCH_DIR/instance-r$REPOS-c$COMMITS-b$BYTES"
  if [ ! -f "$ROOT/.generated" ]; then
    echo "generating $REPOS repositories in $ROOT"
    mkdir -p "$ROOT/../manifests-r$REPOS"
    for i in $(seq 1 "$REPOS"); do
      project="P$(( (i - 1) / 25 ))"
      python3 bench/gen_repo.py --out "$ROOT/$project/repo-$i.git" --commits "$COMMITS" --branches 2 \
        --target-bytes "$BYTES" --secrets 4 --seed "$i" --repack none --force --quiet \
        --manifest "$ROOT/../manifests-r$REPOS/$project-$i.json" >/dev/null 2>&1
    done
    touch "$ROOT/.generated"
  fi
fi
REPO_COUNT=$(find "$ROOT" -mindepth 2 -maxdepth 2 -type d | wc -l)
BYTES_TOTAL=$(du -sb "$ROOT" | cut -f1)
echo "instance: $ROOT ($REPO_COUNT repositories, $((BYTES_TOTAL / 1000000)) MB on disk)"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
now() { date +%s.%N; }

# Runs one total rescan on a fresh database; prints "<seconds> <blobsRead>".
rescan() {
  local start key state job
  start=$(now)
  key=$(curl -sf -u "$AUTH" -X PUT "$BASE/rest/security/latest/status/total_rescan" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["scanKey"])')
  while true; do
    job=$(curl -sf -u "$AUTH" "$BASE/rest/security/latest/jobs/$key")
    state=$(echo "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    case "$state" in done|failed|cancelled) break ;; esac
    sleep 0.1
  done
  [ "$state" = done ] || { echo "rescan ended $state: $job" >&2; exit 1; }
  echo "$(echo "$(now) - $start" | bc -l) $(echo "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["blobsRead"])')"
}

start_cluster() {
  if curl -s -o /dev/null "$BASE/health/live"; then
    echo "something already listens on $LISTEN" >&2; exit 1
  fi
  PGOPTIONS=--client-min-messages=warning psql -q "$PG/postgres" -c "drop database if exists $DATABASE with (force)" -c "create database $DATABASE" >/dev/null
  redis-cli --scan --pattern 'leakscan-bench:*' | xargs -r redis-cli del >/dev/null
  rm -rf "$BENCH_DIR/up-data"
  LEAKSCAN_DATABASE_URL="$PG/$DATABASE" LEAKSCAN_REDIS_URL="redis://127.0.0.1:6379?prefix=leakscan-bench:" \
  LEAKSCAN_ADMIN_USER=admin LEAKSCAN_ADMIN_PASSWORD=bench LEAKSCAN_LOG=warn \
    "$LEAKSCAN" up --repos-root "$ROOT" --listen "$LISTEN" --workers "$1" --data-dir "$BENCH_DIR/up-data" \
    >/dev/null 2>"$BENCH_DIR/up.log" &
  UP_PID=$!
  for _ in $(seq 1 600); do curl -sf -o /dev/null "$BASE/health/ready" && return 0; sleep 0.1; done
  echo "leakscan up did not start" >&2; exit 1
}
stop_cluster() { kill "$UP_PID"; wait "$UP_PID" 2>/dev/null || true; UP_PID=""; }
UP_PID=""
trap '[ -n "$UP_PID" ] && kill "$UP_PID" 2>/dev/null || true' EXIT

# Total rescans after policy changes, each timed; prints one line per step.
policy_changes() {
  local step seconds blobs
  start_cluster 2
  read -r seconds blobs < <(rescan); echo "first total rescan: ${seconds}s, blobs read $blobs"
  for step in "no change::" \
      "built-in rule switched off:DELETE:/rest/security/1.0/hardcoded/AWS_CLIENT_ID" \
      "built-in rule switched on:POST:/rest/security/1.0/hardcoded/AWS_CLIENT_ID" \
      "global allowlist rule added:POST:/rest/api/latest/secret-scanning/allowlist" \
      "global custom rule added:POST:/rest/api/latest/secret-scanning/rules"; do
    IFS=: read -r label method path <<<"$step"
    case "$path" in
      */allowlist) curl -sf -u "$AUTH" -X POST -H 'Content-Type: application/json' \
        -d '{"name":"tests","pathRegex":"^tests?/"}' "$BASE$path" >/dev/null ;;
      */rules) curl -sf -u "$AUTH" -X POST -H 'Content-Type: application/json' \
        -d '{"name":"INTERNAL_TOKEN","lineRegex":"(itk_[0-9a-f]{16})"}' "$BASE$path" >/dev/null ;;
      "") ;;
      *) curl -sf -u "$AUTH" -X "$method" "$BASE$path" >/dev/null ;;
    esac
    read -r seconds blobs < <(rescan)
    echo "$label: total rescan ${seconds}s, blobs read $blobs"
  done
  stop_cluster
}

# The status endpoint under RATE requests a second while a total rescan runs.
status_under_load() {
  local rate=$1 repo_path project slug stop key
  repo_path=$(find "$ROOT" -mindepth 2 -maxdepth 2 -type d | sort | head -n 1)
  project=$(basename "$(dirname "$repo_path")"); slug=$(basename "$repo_path" .git)
  stop="$BENCH_DIR/status-load.stop"; rm -f "$stop"
  start_cluster 2
  python3 bench/status_load.py "$BASE/rest/security/1.0/scan/$project/repos/$slug?branch=main" \
    --rate "$rate" --seconds 120 --user "$AUTH" --stop "$stop" &
  local loader=$!
  read -r seconds blobs < <(rescan)
  touch "$stop"; wait "$loader"
  echo "  (total rescan ${seconds}s, blobs read $blobs, ran throughout the load)"
  stop_cluster
}

if [ -n "$STATUS_LOAD" ]; then
  for run in $(seq 1 "$RUNS"); do echo "run $run"; status_under_load "$STATUS_LOAD"; done
  exit 0
fi

if [ -n "$POLICY" ]; then
  for run in $(seq 1 "$RUNS"); do echo "run $run"; policy_changes; done
  exit 0
fi

for workers in 1 2; do
  totals=() nochange=()
  for run in $(seq 1 "$RUNS"); do
    start_cluster "$workers"
    read -r seconds blobs < <(rescan)
    totals+=("$seconds")
    read -r again again_blobs < <(rescan)
    nochange+=("$again")
    [ "$again_blobs" = 0 ] || echo "warning: the no-change rescan read $again_blobs blobs" >&2
    if [ "$workers" = 2 ] && [ "$run" = 1 ] && command -v wrk >/dev/null; then
      repo_path=$(find "$ROOT" -mindepth 2 -maxdepth 2 -type d | sort | head -n 1)
      project=$(basename "$(dirname "$repo_path")"); slug=$(basename "$repo_path" .git)
      cat > "$BENCH_DIR/wrk-auth.lua" <<LUA
wrk.headers["Authorization"] = "Basic $(printf '%s' "$AUTH" | base64)"
LUA
      echo "status endpoint under load: wrk -t2 -c8 -d15s /rest/security/1.0/scan/$project/repos/$slug?branch=main"
      wrk -t2 -c8 -d15s --latency -s "$BENCH_DIR/wrk-auth.lua" \
        "$BASE/rest/security/1.0/scan/$project/repos/$slug?branch=main" | grep -E "Requests/sec|Latency|50%|75%|90%|99%"
    fi
    stop_cluster
    echo "workers=$workers run=$run: total rescan ${seconds}s (blobs read $blobs), no-change rescan ${again}s"
  done
  echo "workers=$workers median: total rescan $(printf '%s\n' "${totals[@]}" | median)s, no-change rescan $(printf '%s\n' "${nochange[@]}" | median)s"
done

# The same repositories with `leakscan scan`, one after another, all cores.
empty=$(mktemp -d); git init -q "$empty"
echo x > "$empty/x"; git -C "$empty" add x
git -C "$empty" -c user.name=bench -c user.email=bench@example.com commit -qm x
startup=$( { /usr/bin/time -f %e "$LEAKSCAN" scan "$empty" >/dev/null; } 2>&1 | tail -n 1 )
cli_runs=()
for run in $(seq 1 "$CLI_RUNS"); do
  start=$(now)
  for repo in $(find "$ROOT" -mindepth 2 -maxdepth 2 -type d | sort); do
    "$LEAKSCAN" scan "$repo" --format json >/dev/null || [ $? -eq 1 ]
  done
  cli_runs+=("$(echo "$(now) - $start" | bc -l)")
done
cli=$(printf '%s\n' "${cli_runs[@]}" | median)
echo "leakscan scan, one repository after another: median ${cli}s (start-up on a one-commit repository ${startup}s, paid once per repository: x$REPO_COUNT)"
rm -rf "$empty"
