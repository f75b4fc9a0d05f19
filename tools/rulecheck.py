#!/usr/bin/env python3
"""Quick pre-check of engine/rules/*.yml with Python's re (the Rust test is the real gate).

Usage: python3 tools/rulecheck.py [FILE...]   (default: every engine/rules/*.yml)
"""
import glob, math, re, sys, collections
import yaml

ALLOWED = {"id", "name", "aliases", "pattern", "keywords", "min_entropy", "stopwords", "generic",
           "severity", "confidence", "decode", "checksum", "references", "examples", "negative_examples"}

def entropy(s: str) -> float:
    if not s:
        return 0.0
    counts = collections.Counter(s.encode())
    n = len(s.encode())
    return -sum(c / n * math.log2(c / n) for c in counts.values())

PLACEHOLDER_WORDS = ("example", "sample", "dummy", "placeholder", "changeme", "your_", "your-", "redacted",
                     "xxxxx", "***", "...", "fake", "foobar", "lorem", "_here", "-here", "process.env",
                     "os.environ", "getenv", "${", "{{", "}}", "%(", "$(")

def looks_placeholder(secret: str, keywords) -> bool:
    """A rough copy of engine/src/lookalike.rs (the Rust test is the real gate)."""
    body = secret.lower()
    for k in keywords:
        if len(k) >= 3:
            body = body.replace(k.lower(), "", 1)
    if any(w in body for w in PLACEHOLDER_WORDS + ("testpass", "testtoken", "testsecret", "testkey",
                                                    "test123", "testing123", "testuser")):
        return True
    if len(body) > 128:
        return False
    alnum = [c.lower() for c in body if c.isalnum()]
    same = rising = falling = 1
    for a, b in zip(alnum, alnum[1:]):
        same = same + 1 if a == b else 1
        rising = rising + 1 if ord(b) == ord(a) + 1 else 1
        falling = falling + 1 if ord(a) == ord(b) + 1 else 1
        if (same >= 6 and same * 4 >= len(alnum)) or max(rising, falling) >= 6:
            return True
    return False

def findings(rule, rx, text):
    out = []
    for m in rx.finditer(text):
        # The first group that took part (alternatives may each capture the secret).
        secret = next((g for g in m.groups() if g is not None), None) if rx.groups >= 1 else m.group(0)
        if secret is None:
            continue
        lines = text.splitlines()
        line_no = text.count("\n", 0, m.start())
        line = lines[line_no] if line_no < len(lines) else ""
        if "pragma: allowlist secret" in line:
            continue
        if rule.get("min_entropy") and entropy(secret) < rule["min_entropy"]:
            continue
        if any(w.lower() in secret.lower() for w in rule.get("stopwords", []) or []):
            continue
        if looks_placeholder(secret, rule.get("keywords") or []):
            continue
        out.append((m, secret))
    return out

def main():
    files = sys.argv[1:] or sorted(glob.glob("engine/rules/*.yml"))
    ids = {}
    errors = 0
    total = 0
    for f in files:
        doc = yaml.safe_load(open(f))
        if set(doc) != {"rules"}:
            print(f"{f}: top level must be exactly 'rules:'"); errors += 1; continue
        for r in doc["rules"]:
            total += 1
            rid = r.get("id", "?")
            def err(msg):
                nonlocal errors
                errors += 1
                print(f"{f}: {rid}: {msg}")
            extra = set(r) - ALLOWED
            if extra: err(f"unknown keys {extra}")
            for k in ("id", "name", "pattern", "keywords", "severity", "references", "examples", "negative_examples"):
                if not r.get(k): err(f"missing {k}")
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", str(rid)): err("bad id")
            for name in [rid] + (r.get("aliases") or []):
                if name in ids: err(f"duplicate id/alias {name} (also in {ids[name]})")
                ids[name] = f
            if r.get("severity") not in ("LOW", "MEDIUM", "HIGH", "CRITICAL"): err("bad severity")
            if r.get("confidence", "HIGH") not in ("LOW", "MEDIUM", "HIGH"): err("bad confidence")
            pat = r.get("pattern", "")
            if "(?P<" in pat or "(?<" in pat or "(?=" in pat or "(?!" in pat: err("unsupported syntax")
            if re.search(r"\{\d*, \d*\}", pat): err("space inside {m,n}")
            try:
                rx = re.compile(pat)
            except re.error as e:
                err(f"regex: {e}"); continue
            if rx.groups < 1: err("pattern needs capture group 1 (the secret)")
            kws = [k.lower() for k in r.get("keywords") or []]
            for ex in r.get("examples") or []:
                fs = findings(r, rx, ex)
                if not fs: err(f"example does not match: {ex[:80]!r}")
                for m, _ in fs:
                    if not any(k in m.group(0).lower() for k in kws):
                        err(f"match {m.group(0)[:60]!r} contains no keyword")
            # Decoded values are judged by the engine only (the Rust test checks these).
            for ex in ([] if r.get("decode") else r.get("negative_examples") or []):
                if findings(r, rx, ex): err(f"negative example matches: {ex[:80]!r}")
    print(f"{total} rules in {len(files)} files, {errors} errors")
    sys.exit(1 if errors else 0)

main()
