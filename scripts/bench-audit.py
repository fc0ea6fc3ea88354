#!/usr/bin/env python3
"""What the audit log costs ingest: scripts/bench-ingest.sh with Strata alone, ROUNDS
times with the audit log on and off, alternating which goes first, at 1 and 4
associations; prints each run, the median instances/s, and the audit-on/audit-off
ratio within each round (same minute, same disk state) with its median.

Usage: scripts/bench-audit.py [N_INSTANCES=1000] [ROUNDS=3]
"""

import os
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
n = sys.argv[1] if len(sys.argv) > 1 else "1000"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
configs = {"on": "[audit]\nenabled = true", "off": "[audit]\nenabled = false"}


def run(label, r):
    base = int(os.environ.get("BENCH_PORT_BASE", "21800")) + 10 * r + (0 if label == "on" else 5)
    env = dict(os.environ, BENCH_RECEIVERS="strata", BENCH_PORT_BASE=str(base),
               STRATA_EXTRA_TOML=configs[label])
    proc = subprocess.run([os.path.join(here, "bench-ingest.sh"), n], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr[-2000:])
        sys.exit(1)
    got = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] == "strata" and cells[1].isdigit() and cells[3]:
            got[int(cells[1])] = float(cells[3])
    return got


results = []
for r in range(rounds):
    order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
    got = {}
    for label in order:
        got[label] = run(label, r)
        print(f"round {r + 1} audit {label}: " +
              ", ".join(f"{a} assoc {v:.1f} inst/s" for a, v in sorted(got[label].items())), flush=True)
    results.append(got)

print("\n| associations | audit on (median inst/s) | audit off | on/off per round | median cost |")
print("|---:|---:|---:|---|---:|")
for a in (1, 4):
    on = [g["on"][a] for g in results]
    off = [g["off"][a] for g in results]
    ratios = [g["on"][a] / g["off"][a] for g in results]
    print(f"| {a} | {statistics.median(on):.1f} | {statistics.median(off):.1f} | "
          f"{', '.join(f'{x:.3f}' for x in ratios)} | {100 * (1 - statistics.median(ratios)):.1f}% |")
