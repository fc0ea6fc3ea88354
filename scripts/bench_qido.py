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
import os
import sys

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_find import KINDS, time_kinds  # noqa: E402  (the same query kinds and timing)


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
    kinds = KINDS + [("PatientID + includefield=BodyPartExamined",
                      lambda r: {"PatientID": r[0], "includefield": "BodyPartExamined"})]
    time_kinds(rows, kinds, lambda params: len(search(params)), args.queries, args.label)


if __name__ == "__main__":
    main()
