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

# The manifest tests (tests/deploy.rs) render deploy/k8s with kubectl and
# validate it with kubernetes-validate (from PyPI, in a venv of its own).
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl is needed for the manifest tests: install it (https://kubernetes.io/docs/tasks/tools/)" >&2
  exit 1
fi
TOOLS_VENV="${LEAKSCAN_TOOLS_VENV:-$HOME/.cache/leakscan-tools-venv}"
if [ ! -x "$TOOLS_VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install --quiet 'kubernetes-validate==1.37.0'
fi
export LEAKSCAN_K8S_VALIDATE="$TOOLS_VENV/bin/kubernetes-validate"

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
