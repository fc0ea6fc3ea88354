#!/usr/bin/env python3
"""Ingest benchmark in rounds: runs scripts/bench-ingest.sh ROUNDS times, rotating the
order of the receivers each round (strata/orthanc/storescp, then orthanc/storescp/strata,
...) so that drift of this VM's disk over time does not favour whoever runs first. Prints
every round's figures, then per receiver and association count the median instances/s,
and Strata's ratios computed within each round (same minute, same disk state) with their
median, min and max.

Each round also runs scripts/probe-floor.py on BENCH_ROOT's file system, right after the
receivers, with the mean size of the generated instances as stored: the physical floor of
one durable instance (loopback receive + pwrite over written space + one fdatasync) and
the disk's synced sequential bandwidth. Strata at 1 association is reported against the
floor, at 4 associations against the bandwidth (in instances/s of that size), each
within its round.

Usage: scripts/bench-ingest-rounds.py [N_INSTANCES=1000] [ROUNDS=3]
Environment: as scripts/bench-ingest.sh (STRATA_BIN, BENCH_ROOT, ...).
Exit status: non-zero if any round failed.
"""

import json
import os
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
n = sys.argv[1] if len(sys.argv) > 1 else "1000"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
receivers = ["strata", "orthanc", "storescp"]
rates = []  # per round: {(receiver, assoc): inst/s}
phases = {}  # (assoc, phase) -> [ms per round]
peak_rss = []
failed = False
for r in range(rounds):
    order = receivers[r % 3:] + receivers[:r % 3]
    # fresh ports each round: a port just released may still be unusable for a moment
    base = int(os.environ.get("BENCH_PORT_BASE", "41300")) + 10 * r
    env = dict(os.environ, BENCH_RECEIVERS=" ".join(order), BENCH_PORT_BASE=str(base))
    print(f"## round {r + 1}: {' → '.join(order)}", flush=True)
    proc = subprocess.run([os.path.join(here, "bench-ingest.sh"), n], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        failed = True
        print(proc.stdout + proc.stderr[-2000:])
    got = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in receivers and cells[1].isdigit() and cells[3]:
            got[(cells[0], int(cells[1]))] = float(cells[3])
            if cells[0] == "strata" and cells[5] not in ("-", ""):
                peak_rss.append(float(cells[5]))
            print(line)
        if line.startswith("Strata phases, "):
            print(line)
            assoc = int(line.split()[2])
            for pair in line.rsplit(": ", 1)[1].split():
                name, ms = pair.split("=")
                phases.setdefault((assoc, name), []).append(float(ms))
    data = os.path.join(os.environ.get("BENCH_ROOT", "/var/tmp/strata-bench"), f"data-{n}")
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs if f.endswith(".dcm")]
    # stored = sent + the fixed Part-10 preamble and meta group Strata writes (about the same)
    size = int(sum(sizes) / len(sizes)) if sizes else 537_600
    probe = subprocess.run([os.path.join(here, "probe-floor.py"), os.path.join(os.path.dirname(data), "probe"), str(size)],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        floor = json.loads(probe.stdout)
        got["floor"] = floor
        print(f"| floor | 1 | | {floor['floor_inst_s']:.1f} | | (one durable {size} B write: {floor['mean_ms']:.3f} ms mean) |")
        print(f"| disk bandwidth | - | | {floor['bandwidth_inst_s']:.1f} | {floor['synced_mb_s']:.1f} | (synced sequential) |")
    else:
        failed = True
        print(probe.stderr[-2000:])
    rates.append(got)

print(f"\n### Median of {rounds} rounds, {n} CT instances\n")
print("| receiver | associations | median inst/s | min | max |")
print("|---|---:|---:|---:|---:|")
for rec in receivers:
    for a in (1, 4):
        vals = [g[(rec, a)] for g in rates if (rec, a) in g]
        if vals:
            print(f"| {rec} | {a} | {statistics.median(vals):.1f} | {min(vals):.1f} | {max(vals):.1f} |")
print("\n| Strata's ratio (within each round) | median | min | max |")
print("|---|---:|---:|---:|")
for other in ("orthanc", "storescp"):
    for a in (1, 4):
        vals = [g[("strata", a)] / g[(other, a)] for g in rates if ("strata", a) in g and (other, a) in g]
        if vals:
            print(f"| vs {other}, {a} association{'s' if a > 1 else ''} | {statistics.median(vals):.2f}x | {min(vals):.2f}x | {max(vals):.2f}x |")
print("\n| Strata against the physical floor (within each round) | median | min | max |")
print("|---|---:|---:|---:|")
for a, key, what in ((1, "floor_inst_s", "1 association / one durable write's floor"),
                     (4, "bandwidth_inst_s", "4 associations / synced bandwidth")):
    vals = [g[("strata", a)] / g["floor"][key] for g in rates if ("strata", a) in g and "floor" in g]
    if vals:
        print(f"| {what} | {statistics.median(vals):.2f}x | {min(vals):.2f}x | {max(vals):.2f}x |")
if peak_rss:
    print(f"\nStrata peak RSS (VmHWM), highest of all runs: {max(peak_rss):.1f} MiB")
if phases:
    print("\n| Strata phase (strata_commit_phase_seconds), median ms | 1 association | 4 associations |")
    print("|---|---:|---:|")
    for name in ("receive", "admit", "answer", "files", "place", "index"):
        cells = [f"{statistics.median(phases[(a, name)]):.3f}" if (a, name) in phases else "-" for a in (1, 4)]
        per = "per instance" if name in ("receive", "admit", "answer") else "per commit group"
        print(f"| {name} ({per}) | {cells[0]} | {cells[1]} |")
sys.exit(1 if failed else 0)
