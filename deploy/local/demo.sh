#!/usr/bin/env bash
# The main job on a fresh Debian machine: make PostgreSQL and Redis
# available, build leakscan, generate a demo instance (several projects,
# 31 repositories with 4 branches each and planted fake secrets, one
# personal project ~alice), start the whole cluster with `leakscan up`,
# trigger a total rescan through the REST API, show its progress, and end
# with a per-project summary and what to try next.
#
#   LEAKSCAN_DEMO_DIR   where the demo instance lives (default ~/.cache/leakscan-demo)
#   LEAKSCAN_DEMO_STOP  1: stop the cluster at the end (default: leave it running)
#   LEAKSCAN_LISTEN     REST address (default 127.0.0.1:7990)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}"
DEMO_DIR="${LEAKSCAN_DEMO_DIR:-$HOME/.cache/leakscan-demo}"
LISTEN="${LEAKSCAN_LISTEN:-127.0.0.1:7990}"
BASE="http://$LISTEN"
ADMIN_PASSWORD="${LEAKSCAN_ADMIN_PASSWORD:-demo-admin}"
AUTH="admin:$ADMIN_PASSWORD"
DATABASE=leakscan_demo
PG=postgres://postgres:postgres@127.0.0.1:5432

echo "== setting up (build dependencies, PostgreSQL, Redis)"
bash deploy/local/services.sh >/dev/null
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (rustup) first" >&2
  exit 2
fi
for tool in curl psql redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 2; }
done

echo "== building leakscan (release; the first build compiles Vectorscan, a few minutes)"
cargo build --release --bins -q
LEAKSCAN="$CARGO_TARGET_DIR/release/leakscan"

ROOT="$DEMO_DIR/root"
if [ ! -f "$DEMO_DIR/.generated" ]; then
  echo "== generating the demo instance in $ROOT"
  rm -rf "$ROOT" "$DEMO_DIR/manifests"
  mkdir -p "$DEMO_DIR/manifests"
  seed=1
  for spec in PAY:8 WEB:8 DATA:8 OPS:5 '~alice:2'; do
    project="${spec%%:*}"; count="${spec##*:}"
    for i in $(seq 1 "$count"); do
      slug="$(echo "$project" | tr -d '~' | tr 'A-Z' 'a-z')-service-$i"
      python3 bench/gen_repo.py --out "$ROOT/$project/$slug.git" --commits 300 --branches 3 \
        --target-bytes 3MB --secrets 6 --seed "$seed" --repack none --force --quiet \
        --manifest "$DEMO_DIR/manifests/$project-$slug.json" >/dev/null 2>"$DEMO_DIR/gen.log" ||
        { cat "$DEMO_DIR/gen.log" >&2; exit 1; }
      seed=$((seed + 1))
    done
    echo "   $project: $count repositories"
  done
  touch "$DEMO_DIR/.generated"
fi

echo "== a fresh database ($DATABASE) and Redis prefix (leakscan-demo:)"
PGOPTIONS=--client-min-messages=warning psql -q "$PG/postgres" -c "drop database if exists $DATABASE with (force)" -c "create database $DATABASE" >/dev/null
redis-cli -u redis://127.0.0.1:6379 --scan --pattern 'leakscan-demo:*' | xargs -r redis-cli -u redis://127.0.0.1:6379 del >/dev/null

if curl -s -o /dev/null "$BASE/health/live"; then
  echo "something already listens on $LISTEN: stop it or set LEAKSCAN_LISTEN" >&2
  exit 2
fi
echo "== leakscan up (gateway, coordinator, 2 workers) on $BASE"
LOG="$DEMO_DIR/leakscan-up.log"
LEAKSCAN_DATABASE_URL="$PG/$DATABASE" \
LEAKSCAN_REDIS_URL="redis://127.0.0.1:6379?prefix=leakscan-demo:" \
LEAKSCAN_ADMIN_USER=admin LEAKSCAN_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
  "$LEAKSCAN" up --repos-root "$ROOT" --listen "$LISTEN" --workers 2 --data-dir "$DEMO_DIR/data" \
  >"$DEMO_DIR/leakscan-up.out" 2>"$LOG" &
UP_PID=$!
for _ in $(seq 1 300); do
  curl -sf -o /dev/null "$BASE/health/ready" && break
  kill -0 "$UP_PID" 2>/dev/null || { echo "leakscan up stopped; see $LOG" >&2; tail -n 20 "$LOG" >&2; exit 2; }
  sleep 0.2
done
curl -sf -o /dev/null "$BASE/health/ready" || { echo "leakscan up is not ready; see $LOG" >&2; exit 2; }
head -n 1 "$DEMO_DIR/leakscan-up.out"

echo "== total rescan: PUT /rest/security/latest/status/total_rescan"
START=$(date +%s.%N)
SCAN_KEY=$(curl -sf -u "$AUTH" -X PUT "$BASE/rest/security/latest/status/total_rescan" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["scanKey"])')
echo "   scanKey $SCAN_KEY"
while true; do
  JOB=$(curl -sf -u "$AUTH" "$BASE/rest/security/latest/jobs/$SCAN_KEY")
  read -r STATE PROGRESS DONE TOTAL < <(echo "$JOB" | python3 -c \
    'import json,sys; j=json.load(sys.stdin); print(j["state"], j["progress"], j["tasksDone"], j["tasksTotal"])')
  BAR=$(python3 -c "p=$PROGRESS; print('#' * (p // 4) + '.' * (25 - p // 4))")
  printf '\r   [%s] %3s%%  %s/%s branches  %s   ' "$BAR" "$PROGRESS" "$DONE" "$TOTAL" "$STATE"
  case "$STATE" in done|failed|cancelled) break ;; esac
  sleep 0.3
done
END=$(date +%s.%N)
echo
printf '   finished in %.1f s\n' "$(echo "$END - $START" | bc -l 2>/dev/null || python3 -c "print($END - $START)")"

echo "== per-project summary (GET /rest/security/latest/dashboard)"
curl -sf -u "$AUTH" "$BASE/rest/security/latest/dashboard" | python3 -c '
import json, sys
rows = json.load(sys.stdin)["projects"]
print("   %-8s %6s %9s %9s %9s  %s" % ("project", "repos", "branches", "scanned", "findings", "status"))
for r in rows:
    print("   %-8s %6d %9d %9d %9d  %s" % (r["project"], r["repositories"], r["branches"],
          r["branchesScanned"], r["findings"], r["status"]))
'

cat <<EOT

== try next (the cluster keeps running; log in $LOG)
   curl -u $AUTH $BASE/rest/api/latest/projects
   curl -u $AUTH $BASE/rest/api/latest/projects/PAY/repos
   curl -u $AUTH '$BASE/rest/security/1.0/scan/PAY/repos/pay-service-1?branch=main'
   curl -u $AUTH '$BASE/rest/security/1.0/scan/~alice/repos/alice-service-1?branch=main'
   curl -u $AUTH -X PUT '$BASE/rest/security/latest/status/projects/WEB?email=you@example.com'
   curl -u $AUTH $BASE/rest/security/latest/jobs
   curl -N -u $AUTH $BASE/rest/security/latest/jobs/$SCAN_KEY/events
   stop it: kill $UP_PID
EOT
if [ "${LEAKSCAN_DEMO_STOP:-0}" = 1 ]; then
  kill "$UP_PID"
  wait "$UP_PID" || true
fi
