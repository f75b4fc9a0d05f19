#!/usr/bin/env python3
"""Detection quality: recall and look-alike rate per category, leakscan beside its peers.

Each labelled snippet (JSON lines: id, label positive|negative, category or
rule_name, text, optional path_hint, optional clean) is written byte for byte
to DIR/ID.txt, or DIR/ID/<basename of path_hint> when the file's name matters.
Each scanner scans DIR once with its default settings; an id counts as
reported when any finding's path starts with it. Recall is over the positives
(the clean ones, where a set marks them), the look-alike rate over the
negatives.

Usage: eval.py --corpus FILE [--corpus FILE ...] [--leakscan BIN]
               [--peer kingfisher=BIN] [--peer gitleaks=BIN] [--peer betterleaks=BIN]
               [--misses N] [--json OUT] [--keep]
"""
import argparse, collections, json, os, shutil, subprocess, sys, tempfile
from pathlib import Path


def load(path):
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                sys.exit(f"{path}:{number}: not JSON: {error}")
            if row.get("label") not in ("positive", "negative") or "id" not in row or "text" not in row:
                sys.exit(f"{path}:{number}: needs id, label (positive|negative) and text")
            row.setdefault("category", row.get("rule_name", "uncategorised"))
            rows.append(row)
    return rows


def write_snippets(rows, root):
    for row in rows:
        hint = row.get("path_hint")
        if hint:
            target = root / row["id"] / os.path.basename(hint.rstrip("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
        else:
            target = root / f"{row['id']}.txt"
        target.write_bytes(row["text"].encode("utf-8"))


def snippet_id(path, root_text):
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if path.startswith(root_text):
        path = path[len(root_text):]
    first = path.lstrip("/").split("/", 1)[0]
    return first[:-4] if first.endswith(".txt") else first


def relative_ids(paths, root):
    """Ids whose snippet a finding's path points into."""
    found = set()
    root_text = str(root.resolve())
    for path in paths:
        if not path:
            continue
        path = str(path)
        if path.startswith("file://"):
            path = path[len("file://"):]
        if path.startswith(root_text):
            path = path[len(root_text):]
        path = path.lstrip("/").lstrip("./")
        first = path.split("/", 1)[0]
        found.add(first[:-4] if first.endswith(".txt") else first)
    return found


def run(command, **kwargs):
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800, **kwargs)


LEAKSCAN_RULES = collections.defaultdict(set)


def scan_leakscan(binary, root, out):
    result = run([binary, "scan", str(root), "--format", "json", "--output", str(out), "--show-secrets"])
    if result.returncode not in (0, 1):
        sys.exit(f"leakscan failed ({result.returncode}): {result.stderr.decode(errors='replace')[-2000:]}")
    findings = json.loads(out.read_text() or "[]")
    for finding in findings:
        LEAKSCAN_RULES[snippet_id(finding.get("path", ""), str(root.resolve()))].add(
            f"{finding['rule']}={finding['secret'][:60]}")
    return findings, [f.get("path") for f in findings]


def deep_paths(value):
    """Every `path` string anywhere in a finding (peers nest it differently)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("path", "File", "file") and isinstance(item, str):
                yield item
            else:
                yield from deep_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from deep_paths(item)


def read_findings(out):
    text = out.read_text() if out.exists() else ""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    if isinstance(data, dict):
        data = data.get("findings", [])
    return data


def scan_peer(tool, binary, root, out):
    """Each peer with its default rules and settings, output as JSON."""
    commands = {
        "kingfisher": [binary, "scan", str(root), "--no-validate", "--format", "json", "--output", str(out)],
        "gitleaks": [binary, "dir", str(root), "--report-format", "json", "--report-path", str(out),
                     "--no-banner", "--exit-code", "0"],
        "betterleaks": [binary, str(root), "--output", str(out), "--no-banner", "--exit-code", "0"],
    }
    result = run(commands[tool])
    if not out.exists():
        sys.exit(f"{tool} failed ({result.returncode}): {result.stderr.decode(errors='replace')[-2000:]}")
    findings = read_findings(out)
    # One finding may name its path more than once; each counts once.
    return findings, [path for finding in findings for path in set(deep_paths(finding))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="append", required=True)
    parser.add_argument("--leakscan", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/leakscan-target")), "release", "leakscan"))
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=BINARY",
                        help="a peer to run beside leakscan: kingfisher, gitleaks or betterleaks")
    parser.add_argument("--misses", type=int, default=0, help="print up to N missed positives and flagged negatives of leakscan")
    parser.add_argument("--json", help="write the per-tool, per-category figures here")
    parser.add_argument("--keep", action="store_true", help="keep the snippet folder")
    args = parser.parse_args()

    peers = {}
    for item in args.peer:
        name, _, binary = item.partition("=")
        if name not in ("kingfisher", "gitleaks", "betterleaks") or not binary:
            sys.exit(f"--peer {item!r}: expected kingfisher=PATH, gitleaks=PATH or betterleaks=PATH")
        peers[name] = binary
    tools = ["leakscan"] + list(peers)
    for corpus in args.corpus:
        rows = load(corpus)
        counted = [r for r in rows if r["label"] == "negative" or r.get("clean", True)]
        workdir = Path(tempfile.mkdtemp(prefix="leakscan-quality-"))
        root = workdir / "snippets"
        root.mkdir()
        write_snippets(rows, root)
        reported = {}
        for tool in tools:
            out = workdir / f"{tool}.json"
            if tool == "leakscan":
                _, paths = scan_leakscan(args.leakscan, root, out)
            else:
                _, paths = scan_peer(tool, peers[tool], root, out)
            reported[tool] = relative_ids(paths, root)
        report(corpus, counted, reported, args)
        if args.misses and "leakscan" in reported:
            show_misses(counted, reported["leakscan"], args.misses)
        if args.keep:
            print(f"# snippets kept in {root}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def rate(rows, found):
    if not rows:
        return None
    return 100.0 * sum(1 for r in rows if r["id"] in found) / len(rows)


def cell(value):
    return "    -" if value is None else f"{value:5.1f}"


def report(corpus, rows, reported, args):
    tools = list(reported)
    by_category = collections.defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    positives = [r for r in rows if r["label"] == "positive"]
    negatives = [r for r in rows if r["label"] == "negative"]
    print(f"\n## {corpus}: {len(positives)} positives, {len(negatives)} look-alikes, {len(by_category)} categories")
    print("recall % / look-alikes flagged %\n")
    header = f"| {'category':<34} | {'pos':>4} | {'neg':>4} | " + " | ".join(f"{t:>17}" for t in tools) + " |"
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    figures = {}
    many = len(by_category) > 40
    listed = sorted(by_category) if not many else []
    for category in listed + ["ALL"]:
        group = rows if category == "ALL" else by_category[category]
        pos = [r for r in group if r["label"] == "positive"]
        neg = [r for r in group if r["label"] == "negative"]
        cells = []
        for tool in tools:
            recall, flagged = rate(pos, reported[tool]), rate(neg, reported[tool])
            figures.setdefault(tool, {})[category] = {"recall": recall, "flagged": flagged}
            cells.append(f"{cell(recall)} / {cell(flagged)}")
        print(f"| {category:<34} | {len(pos):>4} | {len(neg):>4} | " + " | ".join(f"{c:>17}" for c in cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


def show_misses(rows, found, limit):
    missed = [r for r in rows if r["label"] == "positive" and r["id"] not in found]
    flagged = [r for r in rows if r["label"] == "negative" and r["id"] in found]
    print(f"\n# leakscan missed {len(missed)} positives; first {limit}:")
    for row in missed[:limit]:
        print(f"  - [{row['category']}] {row['id']}: {row['text'][:160]!r}")
    print(f"# leakscan flagged {len(flagged)} look-alikes; first {limit}:")
    for row in flagged[:limit]:
        print(f"  - [{row['category']}] {row['id']}: {row['text'][:160]!r}")
        print(f"      by {sorted(LEAKSCAN_RULES.get(row['id'], []))}")


if __name__ == "__main__":
    main()
