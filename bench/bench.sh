#!/usr/bin/env bash
# The one benchmark command: generate (or reuse) a synthetic repository with
# bench/gen_repo.py, then scan it with bench/run.sh (leakscan vs Kingfisher vs
# the git read floor).  See bench/README.md.
#
# usage: bash bench/bench.sh [generator options] [run.sh options] [--regen]
#
# generator options (defaults give the standard benchmark repository):
#   --commits N            (default 50000)
#   --target-bytes BYTES   unique blob bytes, e.g. 1000000000 or 1GB (default 1000000000)
#   --branches N           branches besides main (default 3)
#   --secrets N            planted secrets (default 50)
#   --seed N               (default 1)
#   --source-dir DIR       real source text to use (repeatable; default: gen_repo's)
#   --regen                regenerate even if a matching repository exists
# run.sh options, passed on: --threads N, --runs K, --leakscan PATH, --no-build,
#   --timeout S, --tools LIST, --results DIR
#
# The repository goes to ${BENCH_DIR:-$HOME/.cache/leakscan-bench}/
# repo-c<commits>-t<bytes>-b<branches>-s<secrets>-seed<seed>.git with its
# manifest <same name>.secrets.json beside it, and is reused as long as that
# manifest records the same parameters (and generator version).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/leakscan-bench}
export BENCH_DIR
export PYTHONDONTWRITEBYTECODE=1   # bench.sh imports gen_repo: leave no __pycache__ in bench/

COMMITS=50000 TARGET=1000000000 BRANCHES=3 SECRETS=50 SEED=1 REGEN=0
SOURCES=() RUN_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --commits) COMMITS=$2; shift 2 ;;
    --target-bytes) TARGET=$2; shift 2 ;;
    --branches) BRANCHES=$2; shift 2 ;;
    --secrets) SECRETS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --source-dir) SOURCES+=("$2"); shift 2 ;;
    --regen) REGEN=1; shift ;;
    --threads|--runs|--leakscan|--timeout|--tools|--results) RUN_ARGS+=("$1" "$2"); shift 2 ;;
    --no-build) RUN_ARGS+=("$1"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

TARGET=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); from gen_repo import parse_size; print(parse_size(sys.argv[2]))' "$HERE" "$TARGET")
NAME="repo-c$COMMITS-t$TARGET-b$BRANCHES-s$SECRETS-seed$SEED"
REPO=$BENCH_DIR/$NAME.git
MANIFEST=$BENCH_DIR/$NAME.secrets.json
mkdir -p "$BENCH_DIR"

GEN_ARGS=(--out "$REPO" --commits "$COMMITS" --target-bytes "$TARGET" --branches "$BRANCHES"
          --secrets "$SECRETS" --seed "$SEED")
for s in ${SOURCES[@]+"${SOURCES[@]}"}; do GEN_ARGS+=(--source-dir "$s"); done

# Does the existing repository match?  (its manifest is written last, so a
# manifest with the same parameters means a complete, matching repository)
matches() {
  [ -d "$REPO" ] && [ -f "$MANIFEST" ] || return 1
  python3 - "$HERE" "$MANIFEST" "$COMMITS" "$TARGET" "$BRANCHES" "$SECRETS" "$SEED" \
      ${SOURCES[@]+"${SOURCES[@]}"} <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[1])
import gen_repo
p = json.load(open(sys.argv[2])).get("params", {})
commits, target, branches, secrets, seed = map(int, sys.argv[3:8])
sources = sys.argv[8:] or [gen_repo.DEFAULT_SOURCE]
want = {"generator_version": gen_repo.GENERATOR_VERSION, "commits": commits,
        "target_bytes": target, "branches": branches, "secrets": secrets, "seed": seed,
        "source_dirs": sources, "repack": "full", "bare": True}
diff = {k: (p.get(k), v) for k, v in want.items() if p.get(k) != v}
if diff:
    print(f"bench.sh: existing repository differs: {diff}", file=sys.stderr)
sys.exit(1 if diff else 0)
EOF
}

if [ "$REGEN" = 0 ] && matches; then
  echo "bench.sh: reusing $REPO (same parameters)" >&2
else
  echo "bench.sh: generating $REPO" >&2
  t0=$(date +%s.%N)
  python3 "$HERE/gen_repo.py" "${GEN_ARGS[@]}" --force
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "bench.sh: generated in %.1f s\n", b - a }' >&2
fi

exec bash "$HERE/run.sh" "$REPO" --manifest "$MANIFEST" ${RUN_ARGS[@]+"${RUN_ARGS[@]}"}
