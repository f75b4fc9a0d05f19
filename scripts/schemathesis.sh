#!/usr/bin/env bash
# Runs schemathesis (PyPI) against /rest/openapi.json of a local gateway
# with a fresh database and a demo repository root, as the system admin.
#
#   bash scripts/schemathesis.sh [--max-examples 25] [extra schemathesis options]
#
# Installs schemathesis with pip if missing. The checks: every default
# check of `schemathesis run` (no server error, responses conform to the
# document's status codes and content types, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}"
EXAMPLES=25
if [ "${1:-}" = "--max-examples" ]; then EXAMPLES=$2; shift 2; fi
command -v schemathesis >/dev/null || pip install -q schemathesis
bash deploy/local/services.sh >/dev/null
cargo build --release -q -p leakscan-gateway
WORK=$(mktemp -d)
PG=postgres://postgres:postgres@127.0.0.1:5432
DATABASE=leakscan_schemathesis_$$
LISTEN=127.0.0.1:7997
psql -q "$PG/postgres" -c "create database $DATABASE" >/dev/null
mkdir -p "$WORK/root/DEMO"
git init -q -b main "$WORK/src"
echo "token = itk_0123456789abcdef" > "$WORK/src/app.env"
git -C "$WORK/src" add -A
git -C "$WORK/src" -c user.name=Dev -c user.email=dev@example.com commit -q -m init
git clone -q --bare "$WORK/src" "$WORK/root/DEMO/app.git"
LEAKSCAN_DATABASE_URL="$PG/$DATABASE" LEAKSCAN_REDIS_URL="redis://127.0.0.1:6379?prefix=leakscan-schemathesis-$$:" \
LEAKSCAN_ADMIN_USER=admin LEAKSCAN_ADMIN_PASSWORD=schemathesis LEAKSCAN_MASTER_KEY=$(openssl rand -hex 32) \
LEAKSCAN_LOG=warn \
  "$CARGO_TARGET_DIR/release/leakscan-gateway" --listen "$LISTEN" --repos-root "$WORK/root" \
  >"$WORK/gateway.out" 2>"$WORK/gateway.log" &
GATEWAY=$!
cleanup() {
  kill "$GATEWAY" 2>/dev/null || true
  wait "$GATEWAY" 2>/dev/null || true
  psql -q "$PG/postgres" -c "drop database if exists $DATABASE with (force)" >/dev/null || true
  echo "gateway log: $WORK/gateway.log"
}
trap cleanup EXIT
for _ in $(seq 1 300); do curl -sf -o /dev/null "http://$LISTEN/health/ready" && break; sleep 0.1; done
status=0
schemathesis run "http://$LISTEN/rest/openapi.json" --auth admin:schemathesis \
  --max-examples "$EXAMPLES" --workers 2 --request-timeout 30 "$@" || status=$?
if ! kill -0 "$GATEWAY" 2>/dev/null; then
  echo "the gateway is not running any more" >&2
  exit 1
fi
exit "$status"
