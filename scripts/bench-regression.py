#!/usr/bin/env python3
"""Strata against an earlier commit of itself, side by side, on the same data in one run.

Builds BASE_REV (in a git worktree under $BENCH_ROOT) and the working tree in release
mode, then runs ROUNDS rounds; each round measures both binaries, in an order that
alternates from round to round (base then new, new then base), so that drift of the
disk or the machine over time favours neither:

- ingest: scripts/bench-ingest.sh N_INSTANCES with BENCH_RECEIVERS=strata and
  STRATA_BIN set to each binary (DCMTK storescu over 1 and 4 associations, fresh
  archive each run, every instance counted afterwards);
- C-FIND: each binary serves the same generated index of 1,000,000 instances (50,000
  studies, built once by `cargo bench --bench find_index`), queried by
  scripts/bench_find.py over one association (QUERIES queries per kind).

Prints every round's figures, then per measure the median of the new/base ratios
computed within each round (throughput: >1 is faster; latency: <1 is faster).

Usage: scripts/bench-regression.py BASE_REV [N_INSTANCES=1000] [ROUNDS=3] [QUERIES=300]
Environment: BENCH_ROOT (default /var/tmp/strata-bench; a tmpfs there measures the
software alone, with fsync free), BENCH_PARTS ("ingest find" by default, or one of
them), CARGO_TARGET_DIR (default /var/tmp/strata-target). Exit status non-zero if any
run failed.
"""

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(here)
if len(sys.argv) < 2:
    sys.exit(__doc__)
base_rev = sys.argv[1]
n = sys.argv[2] if len(sys.argv) > 2 else "1000"
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
queries = sys.argv[4] if len(sys.argv) > 4 else "300"
root = os.environ.get("BENCH_ROOT", "/var/tmp/strata-bench")
target = os.environ.setdefault("CARGO_TARGET_DIR", "/var/tmp/strata-target")
work = os.path.join(root, "regression")
os.makedirs(work, exist_ok=True)
INDEX_DIR = "/var/tmp/strata-find-bench-50000x20"
FIND_PORT, HTTP_PORT = 41450, 41451


def run(cmd, **kw):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def build(src, name):
    """Builds `strata` from the workspace at `src`; returns a copy of the binary."""
    run(["cargo", "build", "--release", "--locked", "--bin", "strata",
         "--manifest-path", os.path.join(src, "Cargo.toml")], stdout=sys.stderr)
    dest = os.path.join(work, name)
    shutil.copy2(os.path.join(target, "release", "strata"), dest)
    return dest


base_src = os.path.join(work, "base-src")
if os.path.exists(base_src):
    run(["git", "-C", base_src, "checkout", "--quiet", "--detach", base_rev])
else:
    run(["git", "-C", repo, "worktree", "add", "--detach", base_src, base_rev])
binaries = {"base": build(base_src, "strata-base"), "new": build(repo, "strata-new")}
parts = os.environ.get("BENCH_PARTS", "ingest find").split()
if "find" in parts and not os.path.exists(os.path.join(INDEX_DIR, "index", "CURRENT")):
    run(["cargo", "bench", "--locked", "--bench", "find_index"], cwd=repo, stdout=sys.stderr)


def ingest(binary, rnd):
    env = dict(os.environ, BENCH_RECEIVERS="strata", STRATA_BIN=binary,
               BENCH_PORT_BASE=str(41300 + 10 * rnd))
    out = subprocess.run([os.path.join(here, "bench-ingest.sh"), n], env=env,
                         capture_output=True, text=True)
    got = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] == "strata" and cells[1].isdigit() and cells[3]:
            got[f"ingest, {cells[1]} assoc. (inst/s)"] = float(cells[3])
    if out.returncode != 0 or len(got) != 2:
        print(out.stdout + out.stderr[-2000:], file=sys.stderr)
        return None
    return got


def find(binary):
    cfg = os.path.join(work, "find.toml")
    with open(cfg, "w") as f:
        f.write(f'[archive]\ndata_dir = "{INDEX_DIR}"\nmin_free_space_mb = 0\n'
                f'[dicom]\nport = {FIND_PORT}\nbind = "127.0.0.1"\n'
                f'[http]\nport = {HTTP_PORT}\nbind = "127.0.0.1"\n'
                '[tiering]\nenabled = false\n[scrub]\nenabled = false\n')
    open(os.path.join(INDEX_DIR, "clean-shutdown"), "a").close()
    log = open(os.path.join(work, "find-serve.log"), "a")
    server = subprocess.Popen([binary, "--config", cfg, "serve"], stderr=log)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        out = subprocess.run([sys.executable, os.path.join(here, "bench_find.py"),
                              "--port", str(FIND_PORT), "--queries", queries],
                             capture_output=True, text=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    got = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[4].endswith(" ms"):
            got[f"C-FIND {cells[1]}, p50 (ms)"] = float(cells[4][:-3])
    if out.returncode != 0 or len(got) != 3:
        print(out.stdout + out.stderr[-2000:], file=sys.stderr)
        return None
    return got


results = []  # per round: {"base": {...}, "new": {...}}
failed = False
for r in range(rounds):
    order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
    print(f"## round {r + 1}: {' then '.join(order)}", flush=True)
    got = {}
    for who in order:
        figures = {}
        runs = []
        if "ingest" in parts:
            runs.append(ingest(binaries[who], r))
        if "find" in parts:
            runs.append(find(binaries[who]))
        for part in runs:
            if part is None:
                failed = True
            else:
                figures.update(part)
        got[who] = figures
        print(f"  {who}: " + ", ".join(f"{k} {v:g}" for k, v in figures.items()), flush=True)
    results.append(got)

measures = sorted({k for g in results for k in g.get("base", {})})
print(f"\n### {base_rev} (base) vs the working tree (new): {rounds} rounds, "
      f"{n} CT instances, {queries} queries per kind\n")
print("| measure | base (median) | new (median) | new/base (median of rounds) | min | max |")
print("|---|---:|---:|---:|---:|---:|")
for m in measures:
    pairs = [(g["base"][m], g["new"][m]) for g in results
             if m in g.get("base", {}) and m in g.get("new", {})]
    if not pairs:
        continue
    ratios = [b and nw / b for b, nw in pairs]
    print(f"| {m} | {statistics.median(p[0] for p in pairs):g} | "
          f"{statistics.median(p[1] for p in pairs):g} | {statistics.median(ratios):.2f} | "
          f"{min(ratios):.2f} | {max(ratios):.2f} |")
sys.exit(1 if failed else 0)
