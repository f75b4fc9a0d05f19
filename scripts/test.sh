#!/usr/bin/env bash
# The project's test command (README): services, formatting, clippy, every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash deploy/local/services.sh > /tmp/leakscan-services.env
set -a; . /tmp/leakscan-services.env; set +a

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
# Everything builds with the release profile: Vectorscan (C++) is compiled
# once and shared by clippy, the tests and the benchmark binaries.
echo "== cargo clippy -D warnings"
cargo clippy --release --workspace --all-targets -- -D warnings
cargo clippy --release -p leakscan-engine --no-default-features --all-targets -- -D warnings
echo "== tests (keyword prefilter only, pure Rust)"
cargo nextest run --release -p leakscan-engine --no-default-features --no-fail-fast
echo "== tests (default features)"
cargo test --release --workspace --doc
# The end-to-end tests (tests/) start the real binaries: build them first.
cargo build --release --workspace --bins
cargo nextest run --release --workspace --no-fail-fast
