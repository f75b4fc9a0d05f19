#!/usr/bin/env bash
# The main job on a fresh Debian machine: install what the build needs, build
# leakscan, generate a demo repository (real source text from this machine as
# a long history on several branches, with planted fake secrets, some removed
# again), scan its whole history, and check every planted secret was found.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}"
DEMO_DIR="${LEAKSCAN_DEMO_DIR:-$HOME/.cache/leakscan-demo}"

echo "== setting up (build dependencies, PostgreSQL, Redis)"
bash deploy/local/services.sh >/dev/null
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (rustup) first" >&2
  exit 2
fi
echo "== building leakscan (release; the first build compiles Vectorscan, a few minutes)"
cargo build --release -p leakscan-cli
LEAKSCAN="$CARGO_TARGET_DIR/release/leakscan"

REPO="$DEMO_DIR/demo-repo.git"
MANIFEST="$DEMO_DIR/demo-repo.secrets.json"
if [ ! -d "$REPO" ] || [ ! -f "$MANIFEST" ]; then
  echo "== generating the demo repository in $REPO"
  mkdir -p "$DEMO_DIR"
  python3 bench/gen_repo.py --out "$REPO" --manifest "$MANIFEST" --commits 4000 --branches 3 \
    --target-bytes 60MB --secrets 40 --seed 7 --force --quiet
fi

echo "== leakscan scan $REPO"
# Exit code 1 means "findings": expected here.
"$LEAKSCAN" scan "$REPO" --format text --output "$DEMO_DIR/findings.txt" || [ $? -eq 1 ]
head -n 30 "$DEMO_DIR/findings.txt"
echo "..."
"$LEAKSCAN" scan "$REPO" --format json --show-secrets --output "$DEMO_DIR/findings.json" || [ $? -eq 1 ]
"$LEAKSCAN" scan "$REPO" --format sarif --output "$DEMO_DIR/findings.sarif" || [ $? -eq 1 ]
"$LEAKSCAN" scan "$REPO" --format csv --output "$DEMO_DIR/findings.csv" || [ $? -eq 1 ]

python3 - "$MANIFEST" "$DEMO_DIR/findings.json" <<'PY'
import collections, json, sys
planted = json.load(open(sys.argv[1]))["secrets"]
findings = json.load(open(sys.argv[2]))
found = {(f["commit"], f["path"], f["line"]) for f in findings}
missed = [s for s in planted if (s["commit"], s["path"], s["line"]) not in found]
print()
print(f"planted secrets: {len(planted)} ({sum(s['removed'] for s in planted)} removed again later); "
      f"found at the right commit, path and line: {len(planted) - len(missed)}")
print(f"findings in all: {len(findings)}; by rule:")
for rule, count in collections.Counter(f["rule"] for f in findings).most_common():
    print(f"  {count:4} {rule}")
if missed:
    print("MISSED:", *missed, sep="\n  ")
    sys.exit(1)
PY
echo
echo "Reports: $DEMO_DIR/findings.{json,sarif,csv}"
echo "Try next:  $LEAKSCAN scan /path/to/any/repo   |   $LEAKSCAN rules   |   bash bench/bench.sh (benchmark)"
