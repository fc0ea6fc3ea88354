#!/usr/bin/env python3
"""A/B ingest of two Strata binaries, alternating.

Usage: scripts/ab-ingest.py BIN_A BIN_B [PAIRS=6] [N_INSTANCES=1000] [ASSOCIATIONS=1]

For each pair, each binary in turn (A first in odd pairs, B first in even ones) gets a
fresh archive in a new directory under $BENCH_ROOT/ab (the old ones are deleted only at
the end: on ext4 without a journal a just-deleted inode is skipped by a linear scan
when new files are made, which would tax the next run), is sent the N generated CT
instances of $BENCH_ROOT/data-N (scripts/bench-ingest.sh makes them) by DCMTK
storescu with TCP_NODELAY=1 (over one association, or ASSOCIATIONS storescu processes
in parallel, each sending a contiguous share), and is stopped by pid. Per run it
prints instances/s (wall time around storescu), the server's CPU per instance
(/proc/PID/stat utime+stime) and the means of strata_commit_phase_seconds; at the
end the median of each binary and of the pairs' changes, and how many pairs B won.

A tool for deciding whether a change to the one-association store path is kept
(docs/benchmarks.md); the figures against Orthanc come from bench-ingest-rounds.py.
Environment: BENCH_ROOT (default /var/tmp/strata-bench), BENCH_PORT_BASE (default
45100: the DICOM port, and +1 for HTTP).
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

if len(sys.argv) < 3:
    sys.exit(__doc__)
bins = {"A": os.path.abspath(sys.argv[1]), "B": os.path.abspath(sys.argv[2])}
pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 6
n = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
assocs = int(sys.argv[5]) if len(sys.argv) > 5 else 1
root = os.environ.get("BENCH_ROOT", "/var/tmp/strata-bench")
data = os.path.join(root, f"data-{n}")
port = int(os.environ.get("BENCH_PORT_BASE", "45100"))
files = sorted(
    os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if f.endswith(".dcm")
)
if len(files) != n:
    sys.exit(f"expected {n} instances in {data}: run scripts/bench-ingest.sh {n} first")
work = os.path.join(root, "ab")
os.makedirs(work, exist_ok=True)
PHASES = ["receive", "admit", "answer", "files", "place", "index"]
TICK = os.sysconf("SC_CLK_TCK")


def http(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port + 1}{path}", timeout=5) as r:
        return r.read().decode()


def run(tag, binary):
    d = os.path.join(work, f"{tag}-{os.getpid()}-{time.monotonic_ns()}")
    os.makedirs(d)
    cfg = os.path.join(d, "strata.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[archive]\ndata_dir = "{d}/data"\n[dicom]\nae_title = "STRATA"\nport = {port}\n'
            f'bind = "127.0.0.1"\n[http]\nport = {port + 1}\nbind = "127.0.0.1"\n'
        )
    log = open(os.path.join(d, "serve.log"), "w")
    server = subprocess.Popen([binary, "--config", cfg, "serve"], stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                http("/healthz")
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"{binary} did not become healthy: {d}/serve.log")
        env = dict(os.environ, TCP_NODELAY="1")
        share = -(-len(files) // assocs)
        started = time.monotonic()
        senders = [
            subprocess.Popen(
                ["/usr/bin/storescu", "-aet", "ABSCU", "-aec", "STRATA", "127.0.0.1",
                 str(port)] + files[i:i + share],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for i in range(0, len(files), share)
        ]
        if any(s.wait() != 0 for s in senders):
            sys.exit(f"storescu failed against {binary}: {d}/serve.log")
        elapsed = time.monotonic() - started
        metrics = http("/metrics")
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu_ms = (int(fields[11]) + int(fields[12])) * 1000 / TICK / n
    finally:
        server.terminate()
        server.wait(timeout=60)
    means = {}
    for p in PHASES:
        s = re.search(r'strata_commit_phase_seconds_sum\{phase="%s"[^}]*\} (\S+)' % p, metrics)
        c = re.search(r'strata_commit_phase_seconds_count\{phase="%s"[^}]*\} (\S+)' % p, metrics)
        if s and c and float(c.group(1)) > 0:
            means[p] = float(s.group(1)) / float(c.group(1)) * 1000
    rate = n / elapsed
    print(f"{tag}: {rate:7.1f} inst/s  cpu {cpu_ms:.2f} ms/inst  "
          + " ".join(f"{p}={v:.3f}" for p, v in means.items()), flush=True)
    return rate


rates = {"A": [], "B": []}
try:
    for i in range(pairs):
        order = ["A", "B"] if i % 2 == 0 else ["B", "A"]
        for which in order:
            rates[which].append(run(f"{which}{i + 1}", bins[which]))
finally:
    shutil.rmtree(work, ignore_errors=True)
changes = [b / a - 1 for a, b in zip(rates["A"], rates["B"])]
print(f"\nA {bins['A']}: median {statistics.median(rates['A']):.1f} inst/s")
print(f"B {bins['B']}: median {statistics.median(rates['B']):.1f} inst/s")
print(f"B against A: median change {100 * statistics.median(changes):+.1f} %, "
      f"B faster in {sum(c > 0 for c in changes)} of {len(changes)} pairs")
