#!/usr/bin/env bash
# Export benchmark: N findings (default 1,000,000) in one repository,
# written straight into PostgreSQL, then exported through the gateway as a
# project CSV and as the instance zip. Prints each export's time and size
# and the gateway's peak resident memory (VmHWM) before and after.
#
#   bash bench/export.sh [--findings 1000000] [--runs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}"
FINDINGS=1000000 RUNS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --findings) FINDINGS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/leakscan-bench}/export"
PG=postgres://postgres:postgres@127.0.0.1:5432
DATABASE=leakscan_bench_export
LISTEN=127.0.0.1:7998
BASE="http://$LISTEN"
AUTH=admin:bench
bash deploy/local/services.sh >/dev/null
cargo build --release -q -p leakscan-gateway
mkdir -p "$BENCH_DIR"
rm -rf "$BENCH_DIR/root"; mkdir -p "$BENCH_DIR/root/BENCH"
git init -q --bare "$BENCH_DIR/root/BENCH/big.git"
PGOPTIONS=--client-min-messages=warning psql -q "$PG/postgres" -c "drop database if exists $DATABASE with (force)" -c "create database $DATABASE" >/dev/null

LEAKSCAN_DATABASE_URL="$PG/$DATABASE" LEAKSCAN_REDIS_URL="redis://127.0.0.1:6379?prefix=leakscan-bench-export:" \
LEAKSCAN_ADMIN_USER=admin LEAKSCAN_ADMIN_PASSWORD=bench LEAKSCAN_LOG=warn \
  "$CARGO_TARGET_DIR/release/leakscan-gateway" --listen "$LISTEN" --repos-root "$BENCH_DIR/root" \
  >/dev/null 2>"$BENCH_DIR/gateway.log" &
GATEWAY=$!
trap 'kill "$GATEWAY" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do curl -sf -o /dev/null "$BASE/health/ready" && break; sleep 0.1; done

echo "inserting $FINDINGS findings"
psql -q "$PG/$DATABASE" <<SQL
insert into branches (repository_id, name, head_commit, last_scanned_commit)
  select id, 'main', repeat('a', 40), repeat('a', 40) from repositories;
insert into secret_keys (wrapped_key) values (decode(repeat('00', 60), 'hex'));
insert into findings (repository_id, rule_id, rule_name, severity, commit, path, line, author, author_email,
                      commit_date, fingerprint, redacted, secret_key_id, secret_ciphertext, secret_hash)
  select r.id, 'AWS_ACCESS_KEY_ID', 'AWS access key id', 'CRITICAL', md5(i::text) || '01234567',
         'services/svc-' || (i % 997) || '/config/settings-' || i || '.env', i % 300 + 1,
         'Dev Example', 'dev@example.com', now() - make_interval(secs => i), md5('f' || i) || md5('g' || i),
         'AKIA…', k.id, decode(md5('s' || i), 'hex'), md5('h' || i)
  from generate_series(1, $FINDINGS) i, repositories r, (select id from secret_keys limit 1) k;
insert into finding_branches (finding_id, branch) select id, 'main' from findings;
analyze;
SQL

peak() { grep VmHWM "/proc/$GATEWAY/status" | awk '{print $2 / 1024 " MiB"}'; }
echo "gateway peak memory before: $(peak)"
for run in $(seq 1 "$RUNS"); do
  for uri in "/rest/security/latest/export-report/projects/BENCH" \
             "/rest/security/latest/export-report?confirmExpensiveOperation=true"; do
    out=$(curl -sf -u "$AUTH" -o "$BENCH_DIR/out" -w '%{time_total} %{size_download}' "$BASE$uri")
    echo "run $run $uri: ${out% *}s, $(( ${out#* } / 1000000 )) MB; gateway peak memory $(peak)"
  done
done
echo "rows in the CSV: $(( $(curl -sf -u "$AUTH" "$BASE/rest/security/latest/export-report/projects/BENCH" | wc -l) - 1 ))"
