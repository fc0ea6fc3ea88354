#!/usr/bin/env python3
"""Scale benchmark (issue 17, item 4): does a store or a query cost more in a full archive?

One archive (RocksDB index, the embedded default) is measured at checkpoints — by default
empty, 1 M and 10 M instances. Between checkpoints its index is grown, never rebuilt, by
the synthetic generator (`cargo bench --bench find_index` with ARCHIVE, TOTAL and
ONLY=fill: realistic studies — a modality mix of about 100 instances per study, patients
with several studies, ~14 studies a day — each instance with a metadata record made from a
real CT object, written through `Index::commit` without the network). At each checkpoint
`strata serve` runs on the archive and:

1. ingest: 1,000 real CT instances (525 KB, tests/peers/gen_ct.py, a fresh seed per
   checkpoint and per run so that nothing is a duplicate) are sent with DCMTK storescu over
   1 association, then another 1,000 over 4 associations (4 processes); instances/s, and
   the mean C-STORE duration Strata measures (`strata_cstore_duration_seconds`) at 1;
2. queries: 1,000 study-level C-FIND of each kind (PatientID, a 7-day StudyDate range,
   AccessionNumber) over one association from a minimal dicom-ul client, and 300 QIDO-RS
   study searches of each kind over one HTTP connection, values from random synthetic
   studies; p50 and p99;
   (not at 0: an empty archive has no synthetic studies to look for);
3. the index's bytes per instance (the files under data_dir/index, all instances counted)
   and the server's peak RSS (VmHWM) at the end.

The synthetic instances have no files, so the background work that reads objects
(scrubbing, tiering) is off in this archive's config; everything else is the default.

Usage: scripts/bench-scale.py [TOTAL=10000000] [CHECKPOINTS=0,1000000,TOTAL]
Environment: BENCH_ROOT (default /var/tmp/strata-bench; the archive goes in
BENCH_ROOT/scale, kept between runs so a later run continues where one stopped),
BENCH_PORT_BASE (default 41800), CARGO_TARGET_DIR. Needs ~2.5 KB of disk per synthetic
instance (25 GB for 10 M) and 6 x 525 MB of generated CT data.
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, here := os.path.dirname(os.path.abspath(__file__)))
from bench_strata import config_text, metric  # noqa: E402

repo = os.path.dirname(here)
total = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
checkpoints = [int(c) for c in (sys.argv[2] if len(sys.argv) > 2 else f"0,1000000,{total}").split(",")]
root = os.environ.get("BENCH_ROOT", "/var/tmp/strata-bench")
target = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/strata-target")
os.environ["CARGO_TARGET_DIR"] = target
os.environ["TCP_NODELAY"] = "1"
base = int(os.environ.get("BENCH_PORT_BASE", "41800"))
dicom_port, http_port = base, base + 1
work = os.path.join(root, "scale")
data_dir = os.path.join(work, "data")
os.makedirs(work, exist_ok=True)
strata = os.path.join(target, "release", "strata")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


sh(["cargo", "build", "--release", "--locked", "--bin", "strata"], cwd=repo)
template_dir = os.path.join(root, "scale-template")
if not os.path.isdir(template_dir):
    sh([sys.executable, os.path.join(repo, "tests/peers/gen_ct.py"), "--out", template_dir,
        "--studies", "1", "--instances", "1", "--seed", "99"], stdout=subprocess.DEVNULL)
template = next(os.path.join(d, f) for d, _, fs in os.walk(template_dir) for f in fs if f.endswith(".dcm"))

config = os.path.join(work, "strata.toml")
with open(config, "w") as f:
    f.write(config_text(data_dir, dicom_port, http_port, "[scrub]\nenabled = false\n[tiering]\nenabled = false\n"))


def bench(env):
    """Runs the find_index bench with `env`; its stdout."""
    out = subprocess.run(["cargo", "bench", "--locked", "--bench", "find_index"], cwd=repo,
                         env=dict(os.environ, ARCHIVE=data_dir, METADATA_TEMPLATE=template, **env),
                         check=True, capture_output=True, text=True)
    return out.stdout


def ct_set(tag):
    """1,000 fresh generated CT instances (a seed of their own); their paths."""
    d = os.path.join(work, f"ct-{tag}")
    if not os.path.exists(d + ".complete"):
        shutil.rmtree(d, ignore_errors=True)
        seed = int(time.time() * 1000) % 1_000_000_000
        sh([sys.executable, os.path.join(repo, "tests/peers/gen_ct.py"), "--out", d,
            "--studies", "5", "--instances", "200", "--seed", str(seed)], stdout=subprocess.DEVNULL)
        open(d + ".complete", "w").close()
    return sorted(os.path.join(p, f) for p, _, fs in os.walk(d) for f in fs if f.endswith(".dcm"))


def send(files, assoc):
    """storescu over `assoc` associations; instances/s."""
    started = time.perf_counter()
    procs = []
    for i in range(assoc):
        part = files[i * len(files) // assoc:(i + 1) * len(files) // assoc]
        procs.append(subprocess.Popen(["/usr/bin/storescu", "-aet", "SCALE", "-aec", "STRATA", "127.0.0.1",
                                       str(dicom_port), *part], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if any(p.wait() != 0 for p in procs):
        sys.exit("bench-scale: a storescu failed")
    return len(files) / (time.perf_counter() - started)


def tables(text):
    """{(table title, row name): (matches, p50 ms, p99 ms)} from the bench's Markdown."""
    out, title = {}, ""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[2] == "p50":
            title = cells[0]
        elif line.startswith("| ") and len(cells) == 4 and cells[2].endswith(" ms"):
            out[(title, cells[0])] = (float(cells[1]), float(cells[2][:-3]), float(cells[3][:-3]))
    return out


rows = []
for n, checkpoint in enumerate(checkpoints):
    t0 = time.perf_counter()
    filled = bench({"TOTAL": str(checkpoint), "ONLY": "fill"}) if checkpoint else ""
    fill_s = time.perf_counter() - t0
    made = re.search(r"built (\d+) instances", filled)
    log(f"checkpoint {checkpoint}: filled in {fill_s:.0f} s ({made.group(1) if made else 0} new)")
    server = subprocess.Popen([strata, "--config", config, "serve"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"serve-{checkpoint}.log"), "w"))
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        before = (metric(http_port, "strata_cstore_duration_seconds_sum"), metric(http_port, "strata_cstore_duration_seconds_count"))
        tag = f"{checkpoint}-{int(time.time())}"
        one = send(ct_set(f"{tag}-1"), 1)
        after = (metric(http_port, "strata_cstore_duration_seconds_sum"), metric(http_port, "strata_cstore_duration_seconds_count"))
        cstore_ms = (after[0] - before[0]) / max(1, after[1] - before[1]) * 1000
        four = send(ct_set(f"{tag}-4"), 4)
        # an empty archive has no synthetic studies to look for: its queries are not timed
        queries = tables(bench({"ONLY": "query", "FIND_PORT": str(dicom_port), "QIDO_PORT": str(http_port)})) \
            if checkpoint else {}
        with open(f"/proc/{server.pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    info = bench({"ONLY": "fill", "TOTAL": "0"})
    per = re.search(r": (\d+) synthetic instances in (\d+) studies, ([\d.]+) MB, (\d+) bytes per instance", info)
    held = int(per.group(1)) + 2000 * (n + 1) if per else 0
    rows.append({"checkpoint": checkpoint, "synthetic": int(per.group(1)) if per else 0, "held": held,
                 "index_mb": float(per.group(3)) if per else 0.0,
                 "fill_s": fill_s, "one": one, "four": four, "cstore_ms": cstore_ms, "rss": rss, "queries": queries})
    log(json.dumps({k: v for k, v in rows[-1].items() if k != "queries"}))
    # the ingested real instances leave the hot disk before the next checkpoint's fill
    # (kept out of the synthetic count; they are 2,000 of millions)

print(f"### Flat cost from an empty archive to {checkpoints[-1]:,} instances (RocksDB index)\n")
print("| instances in the index | ingest 1 assoc. inst/s | mean C-STORE ms | ingest 4 assoc. inst/s | index bytes/instance | peak RSS MiB |")
print("|---:|---:|---:|---:|---:|---:|")
for r in rows:
    per = r["index_mb"] * 1e6 / max(1, r["held"])
    print(f"| {r['held']:,} | {r['one']:.1f} | {r['cstore_ms']:.2f} | {r['four']:.1f} | {per:.0f} | {r['rss']:.1f} |")
for title in ("over DICOM (one association, minimal client)", "QIDO-RS (one connection)"):
    print(f"\n| {title}: p50 / p99 ms (matches per query) | " + " | ".join(f"{r['held']:,}" for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for kind in ("PatientID", "StudyDate range (7 days)", "AccessionNumber"):
        cells = []
        for r in rows:
            q = r["queries"].get((title, kind))
            cells.append(f"{q[1]:.2f} / **{q[2]:.2f}** ({q[0]:.1f})" if q else "-")
        print(f"| {kind} | " + " | ".join(cells) + " |")
first, last = rows[0], rows[-1]
print(f"\nIngest at {last['held']:,} vs {first['held']:,}: 1 association {last['one'] / first['one']:.2f}x, "
      f"4 associations {last['four'] / first['four']:.2f}x")
for r in rows[1:]:
    if r["fill_s"] and r["checkpoint"]:
        print(f"Generator: filled to {r['checkpoint']:,} in {r['fill_s']:.0f} s")
