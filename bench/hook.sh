#!/usr/bin/env bash
# Push-protection latency: `leakscan hook pre-receive` as git runs it, for a
# 1-commit push and a 1,000-commit push of the benchmark history.
#
# usage: bash bench/hook.sh [--repo REPO.git] [--runs N] [--leakscan PATH]
#
# REPO defaults to the standard benchmark repository of bench/bench.sh
# (generated with its defaults when missing). The pushes are replayed
# against a shared clone (objects borrowed, refs its own): main is set back
# by 1 or 1,000 commits and every other ref removed, so the pushed commits
# are new to it, as in a real push. The hook runs standalone (built-in
# rules, no gateway) with budgets high enough never to cut it short; the
# compiled rules are cached on disk before the first timed run. Prints the
# median and the slowest run (p99 of so few runs) of each.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/leakscan-bench}
REPO=$BENCH_DIR/repo-c50000-t1000000000-b3-s50-seed1.git
RUNS=11
LEAKSCAN=${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}/release/leakscan
while [ $# -gt 0 ]; do
  case "$1" in
    --repo) REPO=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --leakscan) LEAKSCAN=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "hook.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ ! -d "$REPO" ]; then
  echo "hook.sh: generating the benchmark repository $REPO" >&2
  python3 "$HERE/gen_repo.py" --out "$REPO" --commits 50000 --target-bytes 1000000000 \
    --branches 3 --secrets 50 --seed 1 --manifest "${REPO%.git}.secrets.json" --quiet
fi
[ -x "$LEAKSCAN" ] || { echo "hook.sh: no leakscan at $LEAKSCAN (cargo build --release -p leakscan-cli)" >&2; exit 2; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SERVER=$WORK/server.git
git clone -q --bare --shared "$REPO" "$SERVER"
TIP=$(git -C "$SERVER" rev-parse main)
export LEAKSCAN_CACHE_DIR=$WORK/cache

python3 - "$LEAKSCAN" "$SERVER" "$TIP" "$RUNS" <<'PY'
import os, statistics, subprocess, sys, time
leakscan, server, tip, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def git(*args):
    return subprocess.run(["git", "-C", server, *args], check=True, capture_output=True, text=True).stdout.strip()

def set_back(depth):
    """main at tip~depth (first parents), every other ref gone."""
    base = git("rev-parse", f"{tip}~{depth}")
    for ref in git("for-each-ref", "--format=%(refname)").splitlines():
        if ref != "refs/heads/main":
            git("update-ref", "-d", ref)
    git("update-ref", "refs/heads/main", base)
    new = len(git("rev-list", f"{base}..{tip}").splitlines())
    return base, new

def hook(base):
    env = dict(os.environ, GIT_DIR=server)
    started = time.perf_counter()
    result = subprocess.run(
        [leakscan, "hook", "pre-receive", "--mode", "block", "--time-budget", "3600", "--max-blobs", "100000000"],
        input=f"{base} {tip} refs/heads/main\n", env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):
        sys.exit(f"hook failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed, result.returncode

for depth in (1, 1000):
    base, new = set_back(depth)
    hook(base)  # compiles and caches the rules
    times, codes = [], set()
    for _ in range(runs):
        elapsed, code = hook(base)
        times.append(elapsed)
        codes.add(code)
    times.sort()
    verdict = "rejected" if codes == {1} else "accepted" if codes == {0} else f"exit codes {sorted(codes)}"
    print(f"{depth:>5}-commit push ({new} new commits, {runs} runs, {verdict}): "
          f"p50 {statistics.median(times)*1000:.0f} ms, p99 (slowest) {times[-1]*1000:.0f} ms")
PY
