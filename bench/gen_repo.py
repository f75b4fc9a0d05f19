#!/usr/bin/env python3
"""Generate a realistic git repository for benchmarking secret scanners.

The repository is built from *real* source text (crate sources downloaded by
cargo, or files under /usr/share, /usr/lib/python3*, /usr/include as a
fallback) committed as a long, evolving history on several branches:
files are added, edited (lines inserted/deleted/replaced), extended with
chunks of other real files, renamed and deleted; branches fork from main at
various points and are merged back now and then.

Fake credentials of well-known shapes are planted at random commits on various
branches (some removed again later) and listed in a JSON manifest, so the
planted secrets are a ground truth for recall checks.

Everything is streamed into one `git fast-import` process (never one git
command per commit), so 50,000+ commits and 1 GB of unique blob content take
minutes.  Afterwards the repository is repacked like a real one.

Python 3.11, standard library only.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import time
from collections import deque

GENERATOR_VERSION = 2   # bump when the output for the same parameters changes

DEFAULT_SOURCE = "~/.cargo/registry/src"
FALLBACK_SOURCES = ["/usr/share", "/usr/lib/python3*", "/usr/include"]

# Extensions taken from the source directories, and the top-level area of the
# generated repository they go to.
AREA_BY_EXT = {
    ".rs": "crates", ".py": "python", ".c": "native", ".h": "native",
    ".cc": "native", ".cpp": "native", ".hpp": "native", ".go": "go",
    ".js": "web", ".ts": "web", ".css": "web", ".html": "web",
    ".md": "docs", ".rst": "docs", ".txt": "docs",
    ".toml": "config", ".yml": "config", ".yaml": "config", ".json": "config",
    ".cfg": "config", ".ini": "config", ".xml": "config",
    ".sh": "scripts", ".pl": "scripts", ".pm": "scripts", ".rb": "scripts",
    ".lua": "scripts", ".tcl": "scripts", ".java": "java",
}
MIN_FILE, MAX_FILE = 200, 256 * 1024     # pool files outside this are ignored
GROW_CAP = 200 * 1024                      # files are not appended to past this
MAX_EXT_SHARE = 0.35                       # one extension fills at most this of the pool

# Pool files that already look like credentials are skipped, so that the
# planted secrets are the only real-looking ones.
SECRETISH = re.compile(
    rb"AKIA[0-9A-Z]{16}|PRIVATE KEY-----|gh[pousr]_[A-Za-z0-9]{30}|glpat-|"
    rb"xox[abposr]-|sk_live_|SG\.[\w-]{20}|npm_[A-Za-z0-9]{30}|sk-proj-|"
    rb"postgres(?:ql)?://[^:\s/]+:[^@\s]+@|aws_secret_access_key"
)

AUTHORS = [
    ("Alice Martin", "alice.martin@example.com", "+0100"),
    ("Bob Nakamura", "bob@example.org", "+0900"),
    ("Carla Souza", "carla.souza@example.com", "-0300"),
    ("Dmitri Volkov", "dvolkov@example.net", "+0300"),
    ("Emma Schmidt", "emma.schmidt@example.de", "+0200"),
    ("Farid Haddad", "farid@example.com", "+0400"),
    ("Grace O'Neill", "grace.oneill@example.ie", "+0000"),
    ("Hiro Tanaka", "hiro.tanaka@example.jp", "+0900"),
    ("Ines Duarte", "ines.duarte@example.pt", "+0000"),
    ("Jamal Carter", "jcarter@example.com", "-0500"),
    ("Kaisa Virtanen", "kaisa.virtanen@example.fi", "+0200"),
    ("Liam Walsh", "liam.walsh@example.com", "-0800"),
    ("Mei Chen", "mei.chen@example.cn", "+0800"),
    ("Nadia Petrova", "nadia.p@example.net", "+0100"),
    ("Oscar Lindqvist", "oscar@example.se", "+0100"),
    ("Priya Raman", "priya.raman@example.in", "+0530"),
]

MSG_EDIT = [
    "Fix off-by-one in {name}", "Refactor {name}", "Update {name}",
    "Clean up {name}", "Improve error handling in {name}",
    "Handle empty input in {name}", "Simplify logic in {name}",
    "Tweak {name}", "Fix typo in {name}", "Address review comments in {name}",
    "Remove dead code from {name}", "Optimize hot path in {name}",
]
MSG_ADD = ["Add {name}", "Import {name}", "Introduce {name}", "Vendor {name}"]
MSG_APPEND = ["Extend {name}", "Add more helpers to {name}", "Expand {name}"]
MSG_RENAME = ["Rename {old} to {name}", "Move {name}", "Reorganize: move {name}"]
MSG_DELETE = ["Remove {name}", "Drop unused {name}", "Delete obsolete {name}"]
MSG_REMOVE_SECRET = ["Remove hard-coded credentials from {name}",
                     "Scrub leaked token in {name}", "Move secret out of {name}",
                     "Stop committing keys ({name})"]
BRANCH_NAMES = ["develop", "release/1.x", "feature/async-io", "feature/new-parser",
                "hotfix/overflow", "feature/plugin-api", "experiment/simd",
                "release/2.x", "feature/config-v2", "feature/telemetry"]

BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"   # real AWS key ids: AKIA + [A-Z2-7]{16}
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "_-"
DIGITS = "0123456789"

SECRET_KINDS = ["aws_access_key_id", "aws_secret_access_key", "github_pat",
                "gitlab_pat", "slack_bot_token", "stripe_live_key",
                "sendgrid_api_key", "npm_token", "openai_project_key",
                "rsa_private_key", "postgres_url"]
VAR_NAME = {
    "github_pat": "GITHUB_TOKEN", "gitlab_pat": "GITLAB_TOKEN",
    "slack_bot_token": "SLACK_BOT_TOKEN", "stripe_live_key": "STRIPE_SECRET_KEY",
    "sendgrid_api_key": "SENDGRID_API_KEY", "npm_token": "NPM_TOKEN",
    "openai_project_key": "OPENAI_API_KEY", "postgres_url": "DATABASE_URL",
}
HASH_COMMENT = {".py", ".toml", ".yml", ".yaml", ".sh", ".rb", ".pl", ".pm",
                ".cfg", ".ini", ".txt", ".env", ".conf", ""}
SLASH_COMMENT = {".rs", ".c", ".h", ".cc", ".cpp", ".hpp", ".js", ".ts", ".go",
                 ".java", ".css"}


def log(*a):
    try:
        print(*a, file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError):
        pass      # nobody reads our progress any more: carry on


# --------------------------------------------------------------------------
# Source pool
# --------------------------------------------------------------------------

class Pool:
    """Real text files: list of (repo_path, content)."""

    def __init__(self, entries):
        self.entries = entries
        self.total = sum(len(c) for _, c in entries)

    def random_lines(self, rng, k):
        """k consecutive real lines from a random pool file (ends with \\n)."""
        _, c = self.entries[rng.randrange(len(self.entries))]
        pos = line_start(c, rng.randrange(len(c)))
        end = skip_lines(c, pos, k)
        chunk = c[pos:end]
        if not chunk.endswith(b"\n"):
            chunk += b"\n"
        return chunk


def _sanitize(part):
    part = re.sub(r"[^A-Za-z0-9._+-]", "_", part)
    if part in (".", "..", ".git", ""):
        part = "_" + part.strip(".") + "_"
    return part


def map_repo_path(path, root, registry_style):
    """Maps a source file to a path in the generated repository, keeping a
    realistic structure: area/<package>/.../file."""
    rel = os.path.relpath(path, root).split(os.sep)
    ext = os.path.splitext(rel[-1])[1].lower()
    area = AREA_BY_EXT.get(ext, "misc")
    if registry_style and len(rel) >= 2:
        # [index.crates.io-xxxx/]<crate-1.2.3>/src/lib.rs -> crates/<crate>/src/lib.rs
        parts = rel[1:] if rel[0].startswith("index.") or "github.com-" in rel[0] else rel
        crate = re.sub(r"-\d[\w.+-]*$", "", parts[0])
        out = [area, crate] + parts[1:][-3:]
    else:
        out = [area] + rel[-3:]
    return "/".join(_sanitize(p) for p in out)


def collect_pool(source_dirs, want_bytes, rng, explicit):
    """Walks source dirs (with fallbacks unless explicit) and reads a pool of
    real text files of about want_bytes."""
    def candidates(pattern):
        out = []
        for root in sorted(glob.glob(os.path.expanduser(pattern))):
            if not os.path.isdir(root):
                continue
            registry_style = "registry" in root and "cargo" in root
            for dirpath, dirnames, files in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
                for f in sorted(files):
                    ext = os.path.splitext(f)[1].lower()
                    if ext not in AREA_BY_EXT:
                        continue
                    p = os.path.join(dirpath, f)
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or not MIN_FILE <= st.st_size <= MAX_FILE:
                        continue
                    out.append((p, st.st_size, root, registry_style))
        return out

    dirs = list(source_dirs)
    cands = []
    used = []
    for d in dirs:
        c = candidates(d)
        cands += c
        used.append(d)
    if not explicit:
        for d in FALLBACK_SOURCES:
            if sum(s for _, s, _, _ in cands) >= want_bytes:
                break
            c = candidates(d)
            if c:
                cands += c
                used.append(d)
    if not cands:
        sys.exit(f"gen_repo: no source files found in {used}")
    rng.shuffle(cands)
    per_ext_cap = max(MAX_EXT_SHARE * want_bytes, 1)
    per_ext = {}
    entries, total, seen_paths = [], 0, set()
    for p, size, root, reg in cands:
        if total >= want_bytes:
            break
        ext = os.path.splitext(p)[1].lower()
        if per_ext.get(ext, 0) + size > per_ext_cap:
            continue
        try:
            with open(p, "rb") as fh:
                data = fh.read(MAX_FILE + 1)
        except OSError:
            continue
        if b"\0" in data or SECRETISH.search(data):
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        rp = map_repo_path(p, root, reg)
        if rp in seen_paths:
            continue
        seen_paths.add(rp)
        entries.append((rp, data))
        per_ext[ext] = per_ext.get(ext, 0) + len(data)
        total += len(data)
    if not entries:
        sys.exit(f"gen_repo: no usable text files found in {used}")
    return Pool(entries), used


# --------------------------------------------------------------------------
# Byte-level line helpers
# --------------------------------------------------------------------------

def line_start(buf, pos):
    return buf.rfind(b"\n", 0, pos) + 1


def skip_lines(buf, pos, k):
    for _ in range(k):
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return len(buf)
        pos = nl + 1
    return pos


class IndexedSet:
    """Set with O(1) add/remove/random choice."""

    def __init__(self, items=()):
        self.items = list(items)
        self.pos = {x: i for i, x in enumerate(self.items)}

    def copy(self):
        n = IndexedSet.__new__(IndexedSet)
        n.items = list(self.items)
        n.pos = dict(self.pos)
        return n

    def add(self, x):
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def remove(self, x):
        i = self.pos.pop(x)
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def choice(self, rng):
        return self.items[rng.randrange(len(self.items))]

    def __len__(self):
        return len(self.items)

    def __contains__(self, x):
        return x in self.pos


# --------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------

def rand(rng, alphabet, n):
    return "".join(rng.choices(alphabet, k=n))


def make_secret(rng, kind):
    if kind == "aws_access_key_id":
        return "AKIA" + rand(rng, BASE32, 16)
    if kind == "aws_secret_access_key":
        return rand(rng, B64, 40)
    if kind == "github_pat":
        return "ghp_" + rand(rng, ALNUM, 36)
    if kind == "gitlab_pat":
        return "glpat-" + rand(rng, URLSAFE, 20)
    if kind == "slack_bot_token":
        return ("xoxb-" + rand(rng, DIGITS, rng.randint(11, 13)) + "-"
                + rand(rng, DIGITS, rng.randint(11, 13)) + "-" + rand(rng, ALNUM, 24))
    if kind == "stripe_live_key":
        return "sk_live_" + rand(rng, ALNUM, 24)
    if kind == "sendgrid_api_key":
        return "SG." + rand(rng, URLSAFE, 22) + "." + rand(rng, URLSAFE, 43)
    if kind == "npm_token":
        return "npm_" + rand(rng, ALNUM, 36)
    if kind == "openai_project_key":
        return "sk-proj-" + rand(rng, URLSAFE, 48)
    if kind == "postgres_url":
        return "postgres://app:" + rand(rng, ALNUM, 16) + "@db.internal:5432/app"
    if kind == "rsa_private_key":
        body = ["MIIEowIBAAKCAQEA" + rand(rng, B64, 48)]
        body += [rand(rng, B64, 64) for _ in range(19)]
        return "\n".join(["-----BEGIN RSA PRIVATE KEY-----"] + body
                         + ["-----END RSA PRIVATE KEY-----"])
    raise ValueError(kind)


def secret_line(kind, secret, ext, key_id=None):
    """The line (or PEM block) that carries the secret in a file of type ext."""
    if kind == "rsa_private_key":
        return secret
    if kind in ("aws_access_key_id", "aws_secret_access_key"):
        c = "# " if ext in HASH_COMMENT else "// " if ext in SLASH_COMMENT else ""
        line = f"{c}{kind} = {secret}"
        if key_id:   # a secret access key is planted right below its key id
            line = f"{c}aws_access_key_id = {key_id}\n" + line
        return line
    var = VAR_NAME[kind]
    if ext == ".py":
        return f'{var} = "{secret}"'
    if ext == ".rs":
        return f'const {var}: &str = "{secret}";'
    if ext in (".c", ".h", ".cc", ".cpp", ".hpp"):
        return f'#define {var} "{secret}"'
    if ext in (".js", ".ts"):
        return f'const {var} = "{secret}";'
    if ext == ".go":
        return f'const {var} = "{secret}"'
    if ext == ".java":
        return f'static final String {var} = "{secret}";'
    if ext in (".toml", ".cfg", ".ini"):
        return f'{var.lower()} = "{secret}"'
    if ext in (".yml", ".yaml"):
        return f"{var.lower()}: {secret}"
    if ext == ".json":
        return f'"{var.lower()}": "{secret}",'
    if ext == ".sh":
        return f'export {var}="{secret}"'
    return f"{var}={secret}"


def new_secret_file(rng, kind, secret, key_id):
    """(path, content lines, index of the first secret line) for a fresh file."""
    env = rng.choice(["staging", "prod", "dev", "ci", "local"])
    if kind in ("aws_access_key_id", "aws_secret_access_key"):
        path = rng.choice([f"deploy/{env}/credentials", f"config/aws-{env}.ini",
                           f"ops/{env}/aws.cfg"])
        pre = ["[default]", f"region = {rng.choice(['us-east-1', 'eu-west-1', 'ap-south-1'])}"]
        post = ["output = json", ""]
        lines = ([f"aws_access_key_id = {key_id}"] if key_id else []) + [f"{kind} = {secret}"]
        return path, pre + lines + post, len(pre)
    if kind == "rsa_private_key":
        path = rng.choice([f"keys/deploy_{env}.pem", f"config/ssl/{env}.key",
                           f"ops/{env}/id_rsa"])
        return path, secret.split("\n") + [""], 0
    if kind == "npm_token":
        path = rng.choice(["web/.npmrc", f"ci/{env}.npmrc", ".npmrc"])
        pre = ["registry=https://registry.npmjs.org/"]
        return path, pre + [f"//registry.npmjs.org/:_authToken={secret}", ""], 1
    ext = rng.choice([".env", ".yml", ".toml", ".py", ".sh"])
    base = {".env": f"config/{env}.env", ".yml": f"deploy/{env}/values.yml",
            ".toml": f"config/{env}.toml", ".py": f"python/settings_{env}.py",
            ".sh": f"scripts/env_{env}.sh"}[ext]
    pre = {".env": [f"APP_ENV={env}", "LOG_LEVEL=info"],
           ".yml": ["app:", f"  env: {env}", "secrets:"],
           ".toml": ["[service]", f'env = "{env}"', "", "[secrets]"],
           ".py": ["import os", "", f'ENV = "{env}"', "DEBUG = False"],
           ".sh": ["#!/bin/sh", "set -eu", f"export APP_ENV={env}"]}[ext]
    line = secret_line(kind, secret, ext)
    if ext == ".yml":
        line = "  " + line
    return base, pre + [line, ""], len(pre)


# --------------------------------------------------------------------------
# Repository model
# --------------------------------------------------------------------------

class Branch:
    def __init__(self, name):
        self.name = name
        self.ref = f"refs/heads/{name}"
        self.files = {}            # path -> (blob mark, content)
        self.paths = IndexedSet()  # current paths (staged view)
        self.head = None           # mark of last commit
        self.fork_from = None      # mark to start from (first commit only)
        self.touched = set()       # paths changed since fork / last merge
        self.protected = {}        # path -> set(secret ids)
        self.recent = deque(maxlen=64)
        self.pending_removals = [] # (due index, secret id)
        self.commits = 0

    def fork(self, name):
        b = Branch(name)
        b.files = dict(self.files)
        b.paths = self.paths.copy()
        b.fork_from = self.head
        b.protected = {p: set(s) for p, s in self.protected.items()}
        b.recent = deque(self.recent, maxlen=64)
        return b


class Generator:
    def __init__(self, args, pool, out):
        self.a = args
        self.rng = random.Random(args.seed)
        self.pool = pool
        self.out = out
        self.mark = 0
        self.emitted = 0          # blob bytes written
        self.blobs = 0
        self.pool_next = 0
        self.pool_order = list(range(len(pool.entries)))
        self.rng.shuffle(self.pool_order)
        self.recycle = 0
        self.secrets = []         # manifest entries (commit marks resolved later)
        self.pending = []         # secrets planted/removed in the commit being built
        self.avg_op = 8192.0      # running mean of blob bytes per op (pacing)
        n = args.commits
        span = 5 * 365 * 86400
        self.ts = 1514764800 + self.rng.randrange(86400 * 30)
        self.step = max(60, min(86400, span // max(n, 1)))
        self.merges = 0
        self.branch_list = []

    # -- low level --------------------------------------------------------
    def new_mark(self):
        self.mark += 1
        return self.mark

    def write_blob(self, content):
        m = self.new_mark()
        self.out.write(b"blob\nmark :%d\ndata %d\n" % (m, len(content)))
        self.out.write(content)
        self.out.write(b"\n")
        self.emitted += len(content)
        self.blobs += 1
        return m

    def write_commit(self, br, message, changes, merge_mark=None):
        """changes: list of bytes lines (M/D commands)."""
        self.ts += self.rng.randint(self.step // 4, self.step * 7 // 4)
        name, email, tz = self.author
        m = self.new_mark()
        msg = message.encode()
        ident = b"%s <%s> %d %s\n" % (name.encode(), email.encode(), self.ts, tz.encode())
        w = self.out.write
        w(b"commit %s\nmark :%d\nauthor %scommitter %s" % (br.ref.encode(), m, ident, ident))
        w(b"data %d\n%s\n" % (len(msg), msg))
        if br.head is None and br.fork_from is not None:
            w(b"from :%d\n" % br.fork_from)
        if merge_mark is not None:
            w(b"merge :%d\n" % merge_mark)
        for c in changes:
            w(c)
        w(b"\n")
        br.head = m
        br.commits += 1
        return m

    # -- content helpers ----------------------------------------------------
    def take_pool_file(self, br):
        """(path, content) of a not yet used pool file; recycled (slightly
        changed, under another path) once the pool is used up."""
        rng = self.rng
        if self.pool_next >= len(self.pool_order):
            self.pool_next = 0
            self.recycle += 1
            rng.shuffle(self.pool_order)
        path, content = self.pool.entries[self.pool_order[self.pool_next]]
        self.pool_next += 1
        if self.recycle:
            top, _, rest = path.partition("/")
            path = f"{top}/third_party/v{self.recycle}/{rest}"
            header = self.pool.random_lines(rng, rng.randint(1, 4))
            content = header + content
        if path in br.paths:
            stem, ext = os.path.splitext(path)
            i = 2
            while f"{stem}_{i}{ext}" in br.paths:
                i += 1
            path = f"{stem}_{i}{ext}"
        return path, content

    def edit_content(self, content, hunks):
        rng = self.rng
        for _ in range(hunks):
            pos = line_start(content, rng.randrange(len(content) + 1))
            op = rng.random()
            k = rng.randint(1, 8)
            if op < 0.4 or not content:           # insert
                content = content[:pos] + self.pool.random_lines(rng, k) + content[pos:]
            elif op < 0.65:                       # delete
                end = skip_lines(content, pos, k)
                if end - pos < len(content):
                    content = content[:pos] + content[end:]
            else:                                 # replace
                end = skip_lines(content, pos, k)
                content = content[:pos] + self.pool.random_lines(rng, rng.randint(1, 8)) + content[end:]
        return content

    # -- one commit ---------------------------------------------------------
    def pick_file(self, br, staged, locked, want):
        """A modifiable path (not protected, not locked), preferring recently
        touched ones and sizes not far above want."""
        rng = self.rng
        best = None
        for attempt in range(8):
            if br.recent and rng.random() < 0.5:
                p = br.recent[rng.randrange(len(br.recent))]
                if p not in br.paths:
                    continue
            else:
                if not len(br.paths):
                    return None
                p = br.paths.choice(rng)
            if p in br.protected or p in locked:
                continue
            size = len(self.current(br, staged, p))
            if size <= 2 * want + 4096:
                return p
            if best is None or size < best[0]:
                best = (size, p)
        return best[1] if best else None

    def current(self, br, staged, p):
        if p in staged:
            return staged[p][1]
        return br.files[p][1]

    def normal_commit(self, idx, br, plants):
        rng = self.rng
        staged = {}          # path -> (mark or None, content) ; None = deleted
        locked = set()       # paths that must not change again in this commit
        descr = []
        # keep the blob bytes written on a straight line from 0 to the target:
        # this commit's budget is the mean per-commit share, corrected by the
        # current deviation from that line (spread over the next 100 commits)
        per_commit = self.a.target_bytes / self.a.commits
        deviation = self.emitted - per_commit * idx
        budget = max(0.0, per_commit - deviation / 100)
        want = budget * rng.lognormvariate(0, 0.7) / math.exp(0.245)
        before = self.emitted
        staged_bytes = 0

        def stage(p, content):
            nonlocal staged_bytes
            staged[p] = (None, content)
            staged_bytes += len(content)
            if p not in br.paths:
                br.paths.add(p)
            br.recent.append(p)

        def delete(p):
            staged[p] = None
            br.paths.remove(p)

        # scheduled secret removals on this branch
        due = [r for r in br.pending_removals if r[0] <= idx]
        for r in due:
            br.pending_removals.remove(r)
            self.remove_secret(br, r[1], staged, locked, stage, delete, descr)

        # planted secrets
        for sid in plants:
            self.plant_secret(idx, br, sid, staged, locked, stage, descr)

        nops = 0
        initial = br.head is None and br.fork_from is None
        while True:
            if initial:
                if nops >= 30 and staged_bytes >= want:
                    break
                op = "add"
            else:
                # stop when the next op would more likely overshoot `want`
                # than not (unbiased pacing: no systematic overshoot)
                if nops >= 1 and (staged_bytes + self.avg_op / 2 >= want or nops >= 400):
                    break
                if plants and nops == 0 and rng.random() < 0.5:
                    break          # the planting commit only plants
                r = rng.random()
                nfiles = len(br.paths)
                if nfiles < 20 or r < 0.14:
                    op = "add"
                elif r < 0.24:
                    op = "append"
                elif r < 0.27:
                    op = "rename"
                elif r < 0.30 and nfiles > 60:
                    op = "delete"
                else:
                    op = "edit"
            nops += 1
            if op == "add":
                p, content = self.take_pool_file(br)
                stage(p, content)
                descr.append(rng.choice(MSG_ADD).format(name=os.path.basename(p)))
                continue
            p = self.pick_file(br, staged, locked, want)
            if p is None:
                p, content = self.take_pool_file(br)
                stage(p, content)
                descr.append(rng.choice(MSG_ADD).format(name=os.path.basename(p)))
                continue
            content = self.current(br, staged, p)
            if op == "edit" or (op == "append" and len(content) > GROW_CAP):
                stage(p, self.edit_content(content, rng.randint(1, 4)))
                descr.append(rng.choice(MSG_EDIT).format(name=os.path.basename(p)))
            elif op == "append":
                chunk = self.pool.random_lines(rng, rng.randint(20, 200))
                if content and not content.endswith(b"\n"):
                    content += b"\n"
                stage(p, content + chunk)
                descr.append(rng.choice(MSG_APPEND).format(name=os.path.basename(p)))
            elif op == "delete":
                delete(p)
                locked.add(p)
                descr.append(rng.choice(MSG_DELETE).format(name=os.path.basename(p)))
            elif op == "rename":
                np_ = self.rename_target(br, p)
                if np_ is None:
                    continue
                entry = staged.get(p) or br.files[p]
                delete(p)
                if rng.random() < 0.5:
                    stage(np_, self.edit_content(entry[1], 1))
                else:
                    staged[np_] = entry                # pure rename: same blob
                    br.paths.add(np_)
                locked.add(p)
                locked.add(np_)
                descr.append(rng.choice(MSG_RENAME).format(
                    old=os.path.basename(p), name=os.path.basename(np_)))

        if nops and not initial:
            self.avg_op = 0.98 * self.avg_op + 0.02 * (staged_bytes / nops)
        changes = []
        for p, v in staged.items():
            if v is None:
                if p in br.files:
                    del br.files[p]
                    changes.append(b"D %s\n" % p.encode())
                continue
            mark, content = v
            if mark is None:
                mark = self.write_blob(content)
            br.files[p] = (mark, content)
            changes.append(b"M 100644 :%d %s\n" % (mark, p.encode()))
        if br.name != "main":
            br.touched.update(staged)
        if not changes:       # e.g. a rename that could not happen: keep the commit non-empty
            p, content = self.take_pool_file(br)
            br.paths.add(p)
            mark = self.write_blob(content)
            br.files[p] = (mark, content)
            if br.name != "main":
                br.touched.add(p)
            changes.append(b"M 100644 :%d %s\n" % (mark, p.encode()))
            descr.append(rng.choice(MSG_ADD).format(name=os.path.basename(p)))
        subject = descr[0] if descr else "Update"
        body = ""
        if len(descr) > 1:
            body = "\n\n" + "\n".join("- " + d for d in descr[1:12]) + "\n"
        cm = self.write_commit(br, subject + body, changes)
        for sid in self.pending:
            s = self.secrets[sid]
            if s.get("_commit_mark") == "pending":
                s["_commit_mark"] = cm
            if s.get("_removed_mark") == "pending":
                s["_removed_mark"] = cm
        self.pending.clear()
        return self.emitted - before

    def rename_target(self, br, p):
        rng = self.rng
        d, base = os.path.split(p)
        stem, ext = os.path.splitext(base)
        for _ in range(5):
            if rng.random() < 0.5 and len(br.paths) > 1:
                other = br.paths.choice(rng)
                np_ = os.path.join(os.path.dirname(other), base)
            else:
                np_ = os.path.join(d, rng.choice(["new_", "old_", "legacy_", ""]) + stem
                                   + rng.choice(["_impl", "_v2", "_util", "s", ""]) + ext)
            if np_ != p and np_ not in br.paths:
                return np_
        return None

    def plant_secret(self, idx, br, sid, staged, locked, stage, descr):
        rng = self.rng
        s = self.secrets[sid]
        kind, secret = s["kind"], s["secret"]
        comp = s.get("_companion")
        key_id = self.secrets[comp]["secret"] if comp is not None else None
        new_file = rng.random() < (0.6 if kind == "rsa_private_key" else 0.35)
        target = None if new_file else self.pick_file(br, staged, locked, 1 << 30)
        if target is None:
            path, lines, li = new_secret_file(rng, kind, secret, key_id)
            stem, ext = os.path.splitext(path)
            i = sid
            while path in br.paths:
                path = f"{stem}_{i}{ext}"
                i += 1000
            content = ("\n".join(lines)).encode()
            line_no = li + 1
            stage(path, content)
            descr.append(rng.choice(MSG_ADD).format(name=os.path.basename(path)))
        else:
            path = target
            content = self.current(br, staged, path)
            pos = line_start(content, rng.randrange(len(content) + 1))
            if pos == len(content) and content and not content.endswith(b"\n"):
                content += b"\n"
                pos = len(content)
            ext = os.path.splitext(path)[1].lower()
            text = secret_line(kind, secret, ext, key_id)
            line_no = content.count(b"\n", 0, pos) + 1
            content = content[:pos] + text.encode() + b"\n" + content[pos:]
            stage(path, content)
            descr.append(rng.choice(MSG_EDIT).format(name=os.path.basename(path)))
        locked.add(path)
        lines = content.split(b"\n")
        if comp is not None:
            c = self.secrets[comp]
            c.update(branch=br.name, path=path, line=line_no, line_text=lines[line_no - 1].decode(),
                     commit_index=idx, _commit_mark="pending")
            br.protected.setdefault(path, set()).add(comp)
            self.pending.append(comp)
            line_no += 1
        br.protected.setdefault(path, set()).add(sid)
        s.update(branch=br.name, path=path, line=line_no, line_text=lines[line_no - 1].decode(),
                 commit_index=idx, _commit_mark="pending", _new_file=target is None)
        self.pending.append(sid)
        if s.get("_remove_after"):
            br.pending_removals.append((idx + s["_remove_after"], sid))

    def remove_secret(self, br, sid, staged, locked, stage, delete, descr):
        rng = self.rng
        s = self.secrets[sid]
        path = next((p for p, ids in br.protected.items() if sid in ids), None)
        if path is None or path in locked:
            return                 # overwritten by a merge meanwhile
        content = self.current(br, staged, path)
        first = s["secret"].split("\n")[0].encode()
        if s["kind"] == "rsa_private_key":
            first = s["secret"].split("\n")[1].encode()
        i = content.find(first)
        if i < 0:
            return
        ids = br.protected[path]
        comp = s.get("_companion")
        mine = {sid} if comp is None else {sid, comp}
        if s["_new_file"] and ids == mine and rng.random() < 0.5:
            delete(path)
        else:
            if s["kind"] == "rsa_private_key":
                start = content.rfind(b"-----BEGIN", 0, i)
                end = content.find(b"-----END", i)
                end = skip_lines(content, end, 1)
            else:
                start = line_start(content, i)
                end = skip_lines(content, start, 1)
                if comp is not None:           # the key id line just above
                    start = line_start(content, max(start - 1, 0))
            stage(path, content[:start] + content[end:])
        locked.add(path)
        ids.difference_update(mine)
        if not ids:
            del br.protected[path]
        descr.append(rng.choice(MSG_REMOVE_SECRET).format(name=os.path.basename(path)))
        for x in mine:
            self.secrets[x]["_removed_mark"] = "pending"
            self.pending.append(x)

    def merge_commit(self, main, br):
        changes = []
        for p in sorted(br.touched):
            if p in br.files:
                mark, content = br.files[p]
                if main.files.get(p, (None,))[0] == mark:
                    continue
                main.files[p] = (mark, content)
                main.paths.add(p)
                changes.append(b"M 100644 :%d %s\n" % (mark, p.encode()))
                if p in br.protected:
                    main.protected[p] = set(br.protected[p])
                else:
                    main.protected.pop(p, None)
            elif p in main.files:
                del main.files[p]
                main.paths.remove(p)
                main.protected.pop(p, None)
                changes.append(b"D %s\n" % p.encode())
        br.touched.clear()
        self.merges += 1
        msg = f"Merge branch '{br.name}'"
        return self.write_commit(main, msg, changes, merge_mark=br.head)

    # -- whole history ------------------------------------------------------
    def run(self):
        a, rng = self.a, self.rng
        n = a.commits
        main = Branch("main")
        branches = [main]
        names = BRANCH_NAMES[:a.branches] + [f"feature/topic-{i}" for i in range(len(BRANCH_NAMES), a.branches)]
        forks = sorted(rng.randint(1, max(1, int(n * 0.6))) for _ in names)
        fork_at = {}
        for name, f in zip(names, forks):
            fork_at.setdefault(f, []).append(name)
        weight = {"main": 2.0}
        for name in names:
            weight[name] = rng.uniform(0.4, 1.4)

        # secret plan: kinds round-robin (shuffled), commit indices distinct
        # (an aws_secret_access_key comes with its own aws_access_key_id
        # line, listed as a manifest entry of its own: it takes two slots)
        kinds, slots = [], 0
        while slots < a.secrets:
            k = list(SECRET_KINDS)
            rng.shuffle(k)
            for kind in k:
                need = 2 if kind == "aws_secret_access_key" else 1
                if slots + need <= a.secrets:
                    kinds.append(kind)
                    slots += need
        n_plants = len(kinds)
        if n_plants <= n - 1:
            idxs = sorted(rng.sample(range(1, n), n_plants))
        else:
            idxs = sorted(rng.randrange(1, max(n, 2)) for _ in range(n_plants))
        plan = {}   # idx -> [sid]
        for k, i in zip(kinds, idxs):
            remove_after = None
            if rng.random() < a.removed_fraction and i < n * 0.9:
                remove_after = rng.randint(1, max(1, min(n - i - 1, max(10, n // 5))))
            companion = None
            if k == "aws_secret_access_key":
                companion = len(self.secrets)
                self.secrets.append({"id": companion, "kind": "aws_access_key_id",
                                     "secret": make_secret(rng, "aws_access_key_id"),
                                     "_companion_of": companion + 1})
            sid = len(self.secrets)
            self.secrets.append({"id": sid, "kind": k, "secret": make_secret(rng, k),
                                 "_remove_after": remove_after, "_companion": companion})
            plan.setdefault(i, []).append(sid)
        p_merge = min(0.05, max(1 / 800, 8 * max(a.branches, 1) / n))

        t0 = time.time()
        next_report = max(1, n // 20)
        for idx in range(n):
            for name in fork_at.get(idx, []):
                nb = main.fork(name)
                branches.append(nb)
            self.author = AUTHORS[rng.randrange(len(AUTHORS))]
            plants = plan.get(idx, [])
            if plants:
                # round-robin over the branches alive at this point
                br = branches[plants[0] % len(branches)]
            else:
                overdue = [b for b in branches if any(d <= idx for d, _ in b.pending_removals)]
                if overdue:
                    br = overdue[0]
                else:
                    mergeable = [b for b in branches[1:] if b.touched and b.head is not None]
                    if mergeable and rng.random() < p_merge:
                        self.merge_commit(main, rng.choice(mergeable))
                        continue
                    br = rng.choices(branches, weights=[weight[b.name] for b in branches])[0]
            self.normal_commit(idx, br, plants)
            if not a.quiet and (idx + 1) % next_report == 0:
                el = time.time() - t0
                log(f"  {idx + 1}/{n} commits, {self.emitted / 1e6:.0f} MB blobs, "
                    f"{len(branches)} branches, {el:.0f}s")
        self.branch_list = branches
        self.out.write(b"done\n")


# --------------------------------------------------------------------------

def run_git(repo, *args, **kw):
    return subprocess.run(["git", "-C", repo, *args], check=True, **kw)


def parse_size(s):
    s = s.strip().upper()
    mult = 1
    for suf, m in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if s.endswith(suf):
            s, mult = s[: -len(suf)], m
            break
    return int(float(s) * mult)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="repository directory to create (bare unless --non-bare)")
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--branches", type=int, default=3, help="branches besides main (default 3)")
    ap.add_argument("--target-bytes", type=parse_size, default=50_000_000,
                    help="approximate unique blob bytes (accepts 50MB, 1G, ...; default 50 MB)")
    ap.add_argument("--secrets", type=int, default=50)
    ap.add_argument("--removed-fraction", type=float, default=0.35,
                    help="share of planted secrets removed again later (default 0.35)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--source-dir", action="append",
                    help=f"where to take real source text from (repeatable; default {DEFAULT_SOURCE}, "
                         f"falling back to {', '.join(FALLBACK_SOURCES)} if too small)")
    ap.add_argument("--pool-bytes", type=parse_size, default=None,
                    help="size of the real-text pool to read (default: target/4, 8 MB..128 MB)")
    ap.add_argument("--manifest", help="secrets manifest path (default DIR/../<name>.secrets.json)")
    ap.add_argument("--repack", choices=["full", "gc", "none"], default="full",
                    help="full: git repack -adf --depth=50 --window=10 (default); gc: git gc; none")
    ap.add_argument("--non-bare", action="store_true",
                    help="create a non-bare repository (nothing checked out) instead of a bare one")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    if a.commits < 1 or a.branches < 0 or a.secrets < 0:
        ap.error("--commits must be >= 1, --branches and --secrets >= 0")

    t_start = time.time()
    out = os.path.abspath(os.path.expanduser(a.out))
    name = os.path.basename(out.rstrip("/"))
    if name.endswith(".git"):
        name = name[:-4]
    manifest = os.path.abspath(os.path.expanduser(a.manifest)) if a.manifest else \
        os.path.join(os.path.dirname(out), f"{name}.secrets.json")
    if os.path.exists(out) and os.listdir(out):
        if not a.force:
            sys.exit(f"gen_repo: {out} exists and is not empty (use --force to replace it)")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    if os.path.exists(manifest):
        os.remove(manifest)    # the manifest is written last: it marks a complete repository

    explicit = bool(a.source_dir)
    sources = a.source_dir or [DEFAULT_SOURCE]
    want_pool = a.pool_bytes or int(min(128e6, max(8e6, a.target_bytes / 4)))
    pool_rng = random.Random(f"pool-{a.seed}")
    t0 = time.time()
    pool, used = collect_pool(sources, want_pool, pool_rng, explicit)
    log(f"gen_repo: pool of {len(pool.entries)} real files, {pool.total / 1e6:.1f} MB "
        f"from {', '.join(used)} ({time.time() - t0:.1f}s)")

    init = ["git", "init", "-q", "--initial-branch=main"] + ([] if a.non_bare else ["--bare"]) + [out]
    subprocess.run(init, check=True)
    gitdir = out if not a.non_bare else os.path.join(out, ".git")
    for h in glob.glob(os.path.join(gitdir, "hooks", "*.sample")):
        os.remove(h)
    # inside the new repository: a killed run leaves nothing behind elsewhere
    marks = os.path.join(gitdir, "gen-repo.marks")
    fi = subprocess.Popen(["git", "-C", out, "fast-import", "--quiet", "--done",
                           f"--export-marks={marks}", "--depth=50"],
                          stdin=subprocess.PIPE, bufsize=1 << 20)
    gen = Generator(a, pool, fi.stdin)
    t0 = time.time()
    failed = None
    try:
        gen.run()
    except BrokenPipeError as e:      # fast-import died (it reports why on stderr)
        failed = e
    finally:
        try:
            fi.stdin.close()          # never leave fast-import waiting for input
        except BrokenPipeError:
            pass
        if sys.exc_info()[0] not in (None, BrokenPipeError):
            fi.kill()
    rc = fi.wait()
    if rc != 0 or failed:
        sys.exit(f"gen_repo: git fast-import failed (exit code {rc})")
    t_import = time.time() - t0
    log(f"gen_repo: fast-import done: {a.commits} commits, {gen.blobs} blobs, "
        f"{gen.emitted / 1e6:.1f} MB blob data written, {gen.merges} merges ({t_import:.1f}s)")

    # resolve commit marks -> sha
    mark_sha = {}
    with open(marks) as fh:
        for line in fh:
            m, sha = line.split()
            mark_sha[int(m[1:])] = sha
    os.remove(marks)

    # which branch heads still contain each secret
    for s in gen.secrets:
        heads = []
        for b in gen.branch_list:
            if any(s["id"] in ids for ids in b.protected.values()):
                heads.append(b.name)
        s["in_branch_heads"] = heads

    t0 = time.time()
    if a.repack == "full":
        run_git(out, "repack", "-adf", "-q", "--depth=50", "--window=10")
    elif a.repack == "gc":
        run_git(out, "gc", "-q")
    t_repack = time.time() - t0

    entries = []
    for s in gen.secrets:
        if "_commit_mark" not in s:
            continue
        rm = s.get("_removed_mark")
        entries.append({
            "id": s["id"], "kind": s["kind"], "secret": s["secret"],
            "branch": s["branch"], "commit": mark_sha[s["_commit_mark"]],
            "path": s["path"], "line": s["line"], "line_text": s["line_text"],
            "removed": isinstance(rm, int),
            "removed_commit": mark_sha[rm] if isinstance(rm, int) else None,
            "in_branch_heads": s["in_branch_heads"],
        })

    # summary
    out_objs = subprocess.run(
        ["git", "-C", out, "cat-file", "--batch-all-objects",
         "--batch-check=%(objecttype) %(objectsize)"],
        check=True, capture_output=True, text=True).stdout
    counts, sizes = {}, {}
    for line in out_objs.splitlines():
        t, sz = line.split()
        counts[t] = counts.get(t, 0) + 1
        sizes[t] = sizes.get(t, 0) + int(sz)
    pack_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(gitdir, "objects", "pack", "*.pack")))
    ncommits = int(subprocess.run(["git", "-C", out, "rev-list", "--all", "--count"],
                                  check=True, capture_output=True, text=True).stdout)
    refs = subprocess.run(["git", "-C", out, "for-each-ref", "--format=%(refname:short)", "refs/heads"],
                          check=True, capture_output=True, text=True).stdout.split()
    total_time = time.time() - t_start
    summary = {
        "repo": out, "manifest": manifest, "commits": ncommits, "branches": refs,
        "merges": gen.merges, "blobs": counts.get("blob", 0),
        "unique_blob_bytes": sizes.get("blob", 0), "trees": counts.get("tree", 0),
        "pack_bytes": pack_bytes, "secrets_planted": len(entries),
        "secrets_removed": sum(e["removed"] for e in entries),
        "pool_files": len(pool.entries), "pool_bytes": pool.total, "pool_sources": used,
        "seconds_import": round(t_import, 1), "seconds_repack": round(t_repack, 1),
        "seconds_total": round(total_time, 1),
    }
    params = {"generator_version": GENERATOR_VERSION, "commits": a.commits, "branches": a.branches,
              "target_bytes": a.target_bytes, "secrets": a.secrets, "seed": a.seed,
              "removed_fraction": a.removed_fraction, "source_dirs": sources,
              "repack": a.repack, "bare": not a.non_bare}
    with open(manifest, "w") as fh:
        json.dump({"repo": out, "params": params, "summary": summary, "secrets": entries}, fh, indent=1)
        fh.write("\n")

    print(f"repository        {out}")
    print(f"manifest          {manifest}")
    print(f"commits           {ncommits}  ({gen.merges} merges)")
    print(f"branches          {len(refs)}: {' '.join(refs)}")
    print(f"blobs             {counts.get('blob', 0)}")
    print(f"unique blob bytes {sizes.get('blob', 0)}  ({sizes.get('blob', 0) / 1e6:.1f} MB)")
    print(f"pack size         {pack_bytes}  ({pack_bytes / 1e6:.1f} MB)")
    print(f"secrets planted   {len(entries)}  ({summary['secrets_removed']} removed later)")
    print(f"time              {total_time:.1f}s  (import {t_import:.1f}s, repack {t_repack:.1f}s)")


if __name__ == "__main__":
    main()
