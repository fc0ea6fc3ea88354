#!/usr/bin/env python3
"""QIDO-RS study-search latency over HTTP (PS3.18 10.6), against any DICOMweb server.

Usage: bench_qido.py --url http://HOST:PORT/dicom-web [--queries 1000] [--label NAME]

The HTTP twin of bench_find.py: first lists the server's studies (one search returning
PatientID, StudyDate and AccessionNumber, `limit` 100000), then times --queries study
searches of each kind — by PatientID, by a 7-day StudyDate range, by AccessionNumber,
and by PatientID with `includefield=BodyPartExamined` (an attribute outside Strata's
index columns: read from the study's first metadata record) — each from the request to
the parsed JSON answer, over one kept-alive connection (requests.Session), values of
existing studies picked at random (fixed seed). Prints one Markdown table row per kind:
label, kind, studies, matches/query, p50, p99.
"""

import argparse
import datetime
import random
import statistics
import time

import requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    session = requests.Session()
    headers = {"Accept": "application/dicom+json"}

    def search(params):
        r = session.get(f"{args.url}/studies", params=params, headers=headers)
        if r.status_code == 204:
            return []
        r.raise_for_status()
        return r.json()

    def value(study, tag):
        v = study.get(tag, {}).get("Value") or [""]
        return str(v[0])

    studies = search({"limit": "100000", "includefield": "00100020,00080020,00080050"})
    rows = [(value(s, "00100020"), value(s, "00080020"), value(s, "00080050")) for s in studies]
    rows = [r for r in rows if r[0] and r[1] and r[2]]
    if not rows:
        raise SystemExit("no studies to query")
    rng = random.Random(7)

    def week(d):
        start = datetime.datetime.strptime(d, "%Y%m%d")
        return f"{d}-{(start + datetime.timedelta(days=6)).strftime('%Y%m%d')}"

    kinds = [
        ("PatientID", lambda r: {"PatientID": r[0]}),
        ("StudyDate range (7 days)", lambda r: {"StudyDate": week(r[1])}),
        ("AccessionNumber", lambda r: {"AccessionNumber": r[2]}),
        ("PatientID + includefield=BodyPartExamined",
         lambda r: {"PatientID": r[0], "includefield": "BodyPartExamined"}),
    ]
    for name, make in kinds:
        times, found = [], 0
        for _ in range(args.queries):
            params = make(rng.choice(rows))
            t = time.perf_counter()
            found += len(search(params))
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        print(f"| {args.label} | {name} | {len(rows)} | {found / args.queries:.1f} | "
              f"{statistics.median(times):.2f} ms | {p99:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
