#!/usr/bin/env bash
# Makes what leakscan needs available on a bare Debian machine, idempotently:
#  - build dependencies (cmake, g++, libboost-dev for Vectorscan; git; pkg-config; python3-venv),
#  - Chromium and ChromeDriver for the dashboard's browser test,
#  - PostgreSQL on 127.0.0.1:5432 (user postgres, password postgres),
#  - Redis on 127.0.0.1:6379.
# Installs with apt when missing, starts when stopped, does nothing when all runs.
# Prints the URLs to use; tests read LEAKSCAN_TEST_DATABASE_URL / LEAKSCAN_TEST_REDIS_URL.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    log "not root and no sudo: cannot install or start services"; fi
fi

APT_UPDATED=""
apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Build dependencies (Vectorscan builds from source with cmake, g++ and Boost),
# python3-venv for the test tools' venv (scripts/test.sh), and Chromium with
# ChromeDriver (and a font) for the dashboard's browser test (tests/dashboard.rs).
apt_install cmake g++ libboost-dev pkg-config git ca-certificates python3-venv \
  chromium chromium-driver fonts-liberation

# PostgreSQL.
pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt_install postgresql postgresql-client
fi
if ! pg_ready; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    log "no PostgreSQL cluster found under /etc/postgresql"; exit 1
  fi
  log "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
  pg_ready || { log "PostgreSQL did not become ready"; exit 1; }
fi
# A fresh Debian install asks for a password over TCP: give postgres a known one.
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  log "setting the postgres user's password"
  (cd / && $SUDO -u postgres psql -qc "alter user postgres password 'postgres'" >/dev/null 2>&1) \
    || (cd / && su postgres -c "psql -qc \"alter user postgres password 'postgres'\"" >/dev/null)
fi

# Redis.
redis_ready() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server redis-tools
fi
if ! redis_ready; then
  log "starting Redis"
  mkdir -p /tmp/leakscan-redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp/leakscan-redis --logfile /tmp/leakscan-redis/redis.log
  for _ in $(seq 1 60); do redis_ready && break; sleep 0.5; done
  redis_ready || { log "Redis did not become ready"; exit 1; }
fi

echo "LEAKSCAN_TEST_DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres"
echo "LEAKSCAN_TEST_REDIS_URL=redis://127.0.0.1:6379"
