#!/usr/bin/env python3
"""The noise figure: findings per GB when scanning real source trees that hold
no live credentials (the crates cargo has downloaded, Python's site-packages),
for leakscan and, with --peer, its peers; then a random sample of leakscan's
findings to triage by hand.

Usage: noise.py [--leakscan BIN] [--peer NAME=BIN ...] [--sample N] TREE [TREE ...]
"""
import argparse, importlib.util, json, os, random, subprocess, sys, tempfile, time
from pathlib import Path

spec = importlib.util.spec_from_file_location("quality_eval", Path(__file__).with_name("eval.py"))
quality_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality_eval)


def tree_bytes(root):
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--leakscan", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/leakscan-target")), "release", "leakscan"))
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--sample", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("\n## noise: findings per GB of source trees without live credentials\n")
    print("| tree | GB | tool | findings | per GB | seconds |")
    print("|---|---|---|---|---|---|")
    sample_pool = []
    for tree in args.trees:
        gigabytes = tree_bytes(tree) / 1e9
        work = Path(tempfile.mkdtemp(prefix="leakscan-noise-"))
        tools = [("leakscan", args.leakscan)] + [tuple(p.split("=", 1)) for p in args.peer]
        for tool, binary in tools:
            out = work / f"{tool}.json"
            started = time.monotonic()
            if tool == "leakscan":
                findings, _ = quality_eval.scan_leakscan(binary, Path(tree), out)
                sample_pool += [(tree, f) for f in findings]
            else:
                findings, _ = quality_eval.scan_peer(tool, binary, Path(tree), out)
            seconds = time.monotonic() - started
            print(f"| {tree} | {gigabytes:.2f} | {tool} | {len(findings)} | {len(findings) / max(gigabytes, 1e-9):.1f} | {seconds:.0f} |")
    rng = random.Random(args.seed)
    sample = rng.sample(sample_pool, min(args.sample, len(sample_pool)))
    print(f"\n## a random sample of {len(sample)} leakscan findings to triage\n")
    for tree, finding in sample:
        print(f"- {finding['rule']} ({finding.get('confidence')}) {tree}/{finding['path']}:{finding.get('line')} "
              f"secret {finding['secret'][:24]!r}")


if __name__ == "__main__":
    main()
