#!/usr/bin/env bash
# Benchmark leakscan against Kingfisher and against the git read floor on one
# repository (any repository: one made by gen_repo.py or a clone of a big
# public one).  Each tool runs K times; the table shows the median run.
#
# usage: bash bench/run.sh REPO [--threads N] [--runs K] [--leakscan PATH]
#                               [--no-build] [--timeout SECONDS]
#                               [--tools leakscan,kingfisher,floor]
#                               [--manifest FILE] [--results DIR]
#
#   --threads N     threads for leakscan and kingfisher (default: nproc)
#   --runs K        runs per tool, the median is reported (default 3)
#   --leakscan PATH leakscan binary (default:
#                   ${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}/release/leakscan;
#                   built with `cargo build --release -p leakscan-cli` if missing)
#   --no-build      never build leakscan; skip it if the binary is missing
#   --timeout S     limit for each single tool run (default 1800)
#   --tools LIST    comma-separated subset of leakscan,kingfisher,floor
#   --manifest FILE secrets manifest of gen_repo.py (default: found beside the
#                   repository as <name>.secrets.json); adds a "planted" column:
#                   how many planted secrets a tool found (its report contains
#                   the secret, or a finding at the planted path and line)
#   --results DIR   where to keep outputs (default:
#                   ${BENCH_DIR:-$HOME/.cache/leakscan-bench}/results/<repo>-<time>)
#
# Environment: BENCH_VENV (Kingfisher's venv, default
# ${BENCH_DIR:-$HOME/.cache/leakscan-bench}/venv), KINGFISHER (a kingfisher
# binary to use instead of installing one), CARGO_TARGET_DIR.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$HOME/.cache/leakscan-bench}
BENCH_VENV=${BENCH_VENV:-$BENCH_DIR/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/leakscan-target}

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "run.sh: $*" >&2; exit 2; }

REPO="" THREADS=$(nproc) RUNS=3 LEAKSCAN="" NO_BUILD=0 TIMEOUT=1800
TOOLS="leakscan,kingfisher,floor" MANIFEST="" RESULTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --leakscan) LEAKSCAN=$2; shift 2 ;;
    --no-build) NO_BUILD=1; shift ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --manifest) MANIFEST=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$REPO" ] || die "more than one repository given"; REPO=$1; shift ;;
  esac
done
[ -n "$REPO" ] || usage
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer (seconds)"
REPO=$(cd "$REPO" 2>/dev/null && pwd) || die "no such directory: $REPO"
GITDIR=$(git -C "$REPO" rev-parse --absolute-git-dir 2>/dev/null) || die "not a git repository: $REPO"
want() { [[ ",$TOOLS," == *",$1,"* ]]; }

# ---------------------------------------------------------------- prerequisites
if [ ! -x /usr/bin/time ]; then
  echo "run.sh: /usr/bin/time missing, installing Debian package 'time'" >&2
  { apt-get install -y -q time >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q time >/dev/null 2>&1; }; } \
    || die "could not install /usr/bin/time (apt-get install time)"
fi
command -v timeout >/dev/null || die "timeout (coreutils) missing"

name=$(basename "$REPO"); name=${name%.git}
if [ -z "$MANIFEST" ] && [ -f "$(dirname "$REPO")/$name.secrets.json" ]; then
  MANIFEST="$(dirname "$REPO")/$name.secrets.json"
fi
RESULTS=${RESULTS:-$BENCH_DIR/results/$name-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS" || die "cannot create $RESULTS"
RUNS_TSV=$RESULTS/runs.tsv
printf 'tool\trun\twall_s\tmax_rss_kib\tfindings\texit\tplanted_found\n' > "$RUNS_TSV"
NOTES=$RESULTS/notes.txt; : > "$NOTES"
note() { echo "$*" | tee -a "$NOTES" >&2; }

# leakscan
LEAKSCAN_OK=0
if want leakscan; then
  LEAKSCAN=${LEAKSCAN:-$CARGO_TARGET_DIR/release/leakscan}
  if [ ! -x "$LEAKSCAN" ]; then
    if [ "$NO_BUILD" = 1 ]; then
      note "leakscan: binary not found at $LEAKSCAN (--no-build given): skipping leakscan"
    else
      note "leakscan: binary not found at $LEAKSCAN, building: cargo build --release -p leakscan-cli"
      if (cd "$ROOT" && cargo build --release -p leakscan-cli) >&2 && [ -x "$LEAKSCAN" ]; then
        LEAKSCAN_OK=1
      else
        note "leakscan: build failed or produced no $LEAKSCAN: skipping leakscan"
      fi
    fi
  else
    LEAKSCAN_OK=1
  fi
fi

# kingfisher
KF_OK=0
if want kingfisher; then
  KF=${KINGFISHER:-$BENCH_VENV/bin/kingfisher}
  if [ ! -x "$KF" ]; then
    note "kingfisher: installing kingfisher-bin into $BENCH_VENV"
    if { [ -x "$BENCH_VENV/bin/pip" ] || python3 -m venv "$BENCH_VENV"; } >&2 \
       && "$BENCH_VENV/bin/pip" install -q kingfisher-bin >&2 && [ -x "$KF" ]; then
      :
    else
      note "kingfisher: could not be installed (pip install kingfisher-bin into $BENCH_VENV failed): skipping kingfisher"
    fi
  fi
  if [ -x "$KF" ]; then
    if "$KF" --version >/dev/null 2>&1; then KF_OK=1
    else note "kingfisher: $KF does not run: skipping kingfisher"; fi
  fi
fi

# ---------------------------------------------------------------- repository facts
echo "run.sh: measuring $REPO" >&2
BLOB_BYTES=$(git -C "$REPO" cat-file --batch-all-objects --batch-check='%(objecttype) %(objectsize)' \
             | awk '$1 == "blob" { s += $2; n++ } END { printf "%d %d\n", s, n }')
BLOBS=${BLOB_BYTES#* }; BLOB_BYTES=${BLOB_BYTES% *}
COMMITS=$(git -C "$REPO" rev-list --all --count 2>/dev/null || echo "?")
PACK_BYTES=$(find "$GITDIR/objects" -type f \( -name '*.pack' -o -path '*/objects/??/*' \) -printf '%s\n' | awk '{s+=$1} END {printf "%d", s}')

# warm the page cache so that no tool pays for the first read from disk
find "$GITDIR/objects" -type f -name '*.pack' -exec cat {} + > /dev/null 2>&1

# ---------------------------------------------------------------- measuring
# measure TOOL RUN STDOUT_FILE CMD...: one bounded, timed run; appends to runs.tsv
measure() {
  local tool=$1 run=$2 out=$3; shift 3
  local t0 t1 rc rss wall
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$RESULTS/$tool.$run.time" \
    timeout --kill-after=30 "$TIMEOUT" "$@" > "$out" 2> "$RESULTS/$tool.$run.stderr"
  rc=$?
  t1=$(date +%s.%N)
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  rss=$(tail -n 1 "$RESULTS/$tool.$run.time" 2>/dev/null)
  [[ "$rss" =~ ^[0-9]+$ ]] || rss=""
  LAST_RC=$rc LAST_WALL=$wall LAST_RSS=$rss
}

# count_findings TOOL FILE: prints "findings planted_found" (planted: "-" without manifest)
count_findings() {
  python3 - "$1" "$2" "$MANIFEST" <<'EOF'
import json, sys
tool, path, manifest = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    text = open(path, encoding="utf-8", errors="replace").read()
    data = json.loads(text) if text.strip() else []
except (OSError, ValueError):
    print("? -"); sys.exit()
if isinstance(data, dict):
    for key in ("findings", "matches", "results"):
        if isinstance(data.get(key), list):
            data = data[key]
            break
n = len(data) if isinstance(data, list) else "?"
# (path, line) of every finding, wherever the report keeps them
locs = set()
def walk(x):
    if isinstance(x, dict):
        p, l = x.get("path"), x.get("line")
        if isinstance(p, str) and isinstance(l, int):
            locs.add((p, l))
        for v in x.values():
            walk(v)
    elif isinstance(x, list):
        for v in x:
            walk(v)
walk(data)
planted = "-"
if manifest:
    try:
        secrets = json.load(open(manifest))["secrets"]
        found = 0
        for s in secrets:
            lines = s["secret"].split("\n")
            probe = lines[1] if len(lines) > 1 else lines[0]   # PEM: first body line
            # found: the secret appears in the report, or a finding points at
            # its planted location (reports may redact the secret)
            found += probe in text or any((s["path"], s["line"] + i) in locs
                                          for i in range(len(lines)))
        planted = f"{found}/{len(secrets)}"
    except (OSError, ValueError, KeyError):
        pass
print(n, planted)
EOF
}

record() { # tool run findings planted
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$LAST_WALL" "$LAST_RSS" "$3" "$LAST_RC" "$4" >> "$RUNS_TSV"
}

KF_CMD=""
for run in $(seq 1 "$RUNS"); do
  if want floor; then
    echo "run.sh: [$run/$RUNS] floor: git cat-file --batch-all-objects --batch" >&2
    measure floor "$run" /dev/null git -C "$REPO" cat-file --batch-all-objects --batch
    [ "$LAST_RC" = 0 ] || note "floor: run $run exited with $LAST_RC"
    record floor "$run" "-" "-"
  fi
  if [ "$LEAKSCAN_OK" = 1 ]; then
    echo "run.sh: [$run/$RUNS] leakscan" >&2
    OUT=$RESULTS/leakscan.$run.json
    rm -f "$OUT"
    measure leakscan "$run" "$RESULTS/leakscan.$run.stdout" \
      "$LEAKSCAN" scan "$REPO" --format json --output "$OUT" --threads "$THREADS"
    case "$LAST_RC" in
      0|1) read -r F P < <(count_findings leakscan "$OUT") ;;
      124|137) note "leakscan: run $run timed out after ${TIMEOUT}s"; F="timeout"; P="-" ;;
      *) note "leakscan: run $run failed with exit code $LAST_RC (see $RESULTS/leakscan.$run.stderr)"; F="error"; P="-" ;;
    esac
    record leakscan "$run" "$F" "$P"
  fi
  if [ "$KF_OK" = 1 ]; then
    echo "run.sh: [$run/$RUNS] kingfisher" >&2
    OUT=$RESULTS/kingfisher.$run.json
    rm -f "$OUT"
    KF_ARGS=(scan "$REPO" --no-validate --git-history full --format json --output "$OUT"
             --jobs "$THREADS" --git-repo-timeout "$TIMEOUT" --no-update-check --quiet)
    KF_CMD="$KF ${KF_ARGS[*]}"
    measure kingfisher "$run" "$RESULTS/kingfisher.$run.stdout" "$KF" "${KF_ARGS[@]}"
    # kingfisher exits 0 without findings, 200 with findings (205: validated ones)
    case "$LAST_RC" in
      0|200|205) read -r F P < <(count_findings kingfisher "$OUT") ;;
      124|137) note "kingfisher: run $run timed out after ${TIMEOUT}s"; F="timeout"; P="-" ;;
      *) note "kingfisher: run $run failed with exit code $LAST_RC (see $RESULTS/kingfisher.$run.stderr)"; F="error"; P="-" ;;
    esac
    record kingfisher "$run" "$F" "$P"
  fi
done

# ---------------------------------------------------------------- report
{
  echo "repository: $REPO"
  echo "commits: $COMMITS   blobs: $BLOBS   unique blob bytes: $BLOB_BYTES ($(awk -v b="$BLOB_BYTES" 'BEGIN{printf "%.1f", b/1e6}') MB)   on-disk objects: $(awk -v b="$PACK_BYTES" 'BEGIN{printf "%.1f", b/1e6}') MB"
  echo "threads: $THREADS   runs: $RUNS (median shown)   timeout: ${TIMEOUT}s   cpus: $(nproc)"
  [ -n "$MANIFEST" ] && echo "manifest: $MANIFEST"
  [ "$LEAKSCAN_OK" = 1 ] && echo "leakscan: $LEAKSCAN scan $REPO --format json --output FILE --threads $THREADS"
  [ -n "$KF_CMD" ] && echo "kingfisher: $KF_CMD" && echo "kingfisher version: $("$KF" --version 2>/dev/null)"
  want floor && echo "floor: git -C $REPO cat-file --batch-all-objects --batch > /dev/null"
  echo
  python3 - "$RUNS_TSV" "$BLOB_BYTES" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
blob_bytes = int(sys.argv[2])
order = ["leakscan", "kingfisher", "floor"]
med = {}
for tool in order:
    rs = [r for r in rows if r["tool"] == tool]
    if not rs:
        continue
    ok = [r for r in rs if r["findings"] not in ("error", "timeout")]
    walls = [float(r["wall_s"]) for r in ok]
    rss = [int(r["max_rss_kib"]) for r in ok if r["max_rss_kib"]]
    finds = [r["findings"] for r in ok]
    wall = statistics.median(walls) if walls else None
    med[tool] = {
        "wall": wall,
        "mbs": blob_bytes / 1e6 / wall if wall else None,
        "rss": statistics.median(rss) / 1024 if rss else None,
        "findings": statistics.median_low([int(f) for f in finds]) if finds and all(f.isdigit() for f in finds)
                    else (finds[-1] if finds else "-"),
        "planted": ok[-1]["planted_found"] if ok else "-",
        "ok": f"{len(ok)}/{len(rs)}",
    }
fmt = "{:<11} {:>10} {:>14} {:>9} {:>10} {:>9} {:>9} {:>6}"
print(fmt.format("tool", "wall (s)", "blob bytes", "MB/s", "RSS (MiB)", "findings", "planted", "runs"))
for tool, m in med.items():
    f = lambda v, p: "-" if v is None else f"{v:.{p}f}"
    print(fmt.format(tool, f(m["wall"], 2), blob_bytes, f(m["mbs"], 1), f(m["rss"], 1),
                     str(m["findings"]), m["planted"], m["ok"]))
print()
l, k, fl = med.get("leakscan", {}), med.get("kingfisher", {}), med.get("floor", {})
if l.get("mbs") and k.get("mbs"):
    print(f"leakscan MB/s / kingfisher MB/s: {l['mbs'] / k['mbs']:.2f}x")
else:
    print("leakscan MB/s / kingfisher MB/s: n/a")
if l.get("wall") and fl.get("wall"):
    print(f"leakscan wall / floor wall:      {l['wall'] / fl['wall']:.2f}x")
else:
    print("leakscan wall / floor wall:      n/a")
if k.get("wall") and fl.get("wall"):
    print(f"kingfisher wall / floor wall:    {k['wall'] / fl['wall']:.2f}x")
EOF
  if [ -s "$NOTES" ]; then echo; echo "notes:"; sed 's/^/  /' "$NOTES"; fi
  echo
  echo "per-run data: $RUNS_TSV"
} | tee "$RESULTS/summary.txt"
