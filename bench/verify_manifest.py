#!/usr/bin/env python3
"""Checks a gen_repo.py secrets manifest against its repository.

For every planted secret: `git show COMMIT:PATH` has the secret on the stated
line (for a PEM key: the BEGIN line, with the key body below it); for a removed
one, the secret is gone from the file (or the file is gone) at removed_commit;
in_branch_heads matches what the branch heads contain.  Also checks commit and
branch counts.  Exit status 0 when everything matches.

Usage: python3 bench/verify_manifest.py MANIFEST.json [--repo DIR]
"""

import argparse
import json
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--repo", help="repository (default: the one named in the manifest)")
    a = ap.parse_args()
    m = json.load(open(a.manifest))
    repo = a.repo or m["repo"]

    def git(*args):
        return subprocess.run(["git", "-C", repo, *args], capture_output=True)

    # read every blob needed with one cat-file process
    specs = []
    for s in m["secrets"]:
        specs.append(f"{s['commit']}:{s['path']}")
        if s["removed_commit"]:
            specs.append(f"{s['removed_commit']}:{s['path']}")
    heads = {}
    for line in git("for-each-ref", "--format=%(refname:short)", "refs/heads").stdout.decode().split():
        heads[line] = None
    p = subprocess.run(["git", "-C", repo, "cat-file", "--batch"],
                       input="".join(x + "\n" for x in specs).encode(), capture_output=True)
    data, pos, blobs = p.stdout, 0, {}
    for spec in specs:
        nl = data.index(b"\n", pos)
        header = data[pos:nl].decode()
        pos = nl + 1
        if header.endswith("missing"):
            blobs[spec] = None
            continue
        size = int(header.split()[2])
        blobs[spec] = data[pos:pos + size]
        pos += size + 1

    failed = set()     # secret ids
    other = 0          # repository-level failures
    for s in m["secrets"]:
        where = f"#{s['id']} {s['kind']} {s['commit'][:10]}:{s['path']}:{s['line']}"
        blob = blobs[f"{s['commit']}:{s['path']}"]
        if blob is None:
            print(f"FAIL {where}: file missing at commit"); failed.add(s["id"]); continue
        lines = blob.decode("utf-8", "replace").split("\n")
        got = lines[s["line"] - 1] if s["line"] - 1 < len(lines) else ""
        secret_lines = s["secret"].split("\n")
        if len(secret_lines) == 1:
            ok = s["secret"] in got
        else:
            ok = lines[s["line"] - 1:s["line"] - 1 + len(secret_lines)] == secret_lines
        if not ok or got != s["line_text"]:
            print(f"FAIL {where}: line is {got[:100]!r}"); failed.add(s["id"]); continue
        if s["removed_commit"]:
            after = blobs[f"{s['removed_commit']}:{s['path']}"]
            if after is not None and secret_lines[-2 if len(secret_lines) > 1 else 0].encode() in after:
                print(f"FAIL {where}: still present at removed_commit {s['removed_commit'][:10]}"); failed.add(s["id"])
                continue
        for h in heads:
            r = git("grep", "-q", "-F", "-e", secret_lines[min(1, len(secret_lines) - 1)], h)
            present = r.returncode == 0
            if present != (h in s["in_branch_heads"]):
                print(f"FAIL {where}: in_branch_heads says {h in s['in_branch_heads']} for {h}, "
                      f"git grep says {present}"); failed.add(s["id"])
    ncommits = int(git("rev-list", "--all", "--count").stdout)
    want = m["summary"]["commits"]
    if ncommits != want or m["params"]["commits"] != ncommits:
        print(f"FAIL commit count {ncommits}, manifest says {want}, asked {m['params']['commits']}"); other += 1
    if len(heads) != m["params"]["branches"] + 1:
        print(f"FAIL {len(heads)} branches, expected {m['params']['branches'] + 1}"); other += 1
    kinds = sorted({s["kind"] for s in m["secrets"]})
    branches = sorted({s["branch"] for s in m["secrets"]})
    print(f"{len(m['secrets'])} secrets checked ({sum(s['removed'] for s in m['secrets'])} removed), "
          f"{len(kinds)} kinds, on branches {', '.join(branches)}; {ncommits} commits, "
          f"{len(heads)} branches")
    print(f"{len(m['secrets']) - len(failed)} passed, {len(failed) + other} failed")
    sys.exit(1 if failed or other else 0)


if __name__ == "__main__":
    main()
