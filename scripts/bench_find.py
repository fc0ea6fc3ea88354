#!/usr/bin/env python3
"""C-FIND study-level latency over DICOM, one association, against any SCP.

Usage: bench_find.py --port P [--host 127.0.0.1] [--called-ae AE] [--queries 1000]
                     [--label NAME]

First enumerates the target's studies (one universal STUDY query returning PatientID,
StudyDate, AccessionNumber), then times --queries study-level queries of each kind —
by PatientID, by a 7-day StudyDate range, by AccessionNumber — each from the C-FIND-RQ
to its final response, picking values of existing studies at random (fixed seed).
Prints one Markdown table row per kind: label, kind, studies, matches/query, p50, p99.
"""

import argparse
import datetime
import random
import socket
import statistics
import time

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND


def query(assoc, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for k, v in keys.items():
        setattr(ds, k, v)
    out = []
    for status, ident in assoc.send_c_find(ds, FIND):
        if status and status.Status in (0xFF00, 0xFF01):
            out.append(ident)
    return out


def week(d):
    """A 7-day DA range starting on `d` (YYYYMMDD)."""
    start = datetime.datetime.strptime(d, "%Y%m%d")
    return f"{d}-{(start + datetime.timedelta(days=6)).strftime('%Y%m%d')}"


# The study-level query kinds, from a (PatientID, StudyDate, AccessionNumber) row.
KINDS = [
    ("PatientID", lambda r: {"PatientID": r[0]}),
    ("StudyDate range (7 days)", lambda r: {"StudyDate": week(r[1])}),
    ("AccessionNumber", lambda r: {"AccessionNumber": r[2]}),
]


def time_kinds(rows, kinds, run, queries, label):
    """Times `queries` calls of `run(keys)` (which returns the number of matches) per kind,
    keys made from rows picked at random (fixed seed); prints one Markdown row per kind."""
    rng = random.Random(7)
    for name, make in kinds:
        times, found = [], 0
        for _ in range(queries):
            keys = make(rng.choice(rows))
            t = time.perf_counter()
            found += run(keys)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        print(f"| {label} | {name} | {len(rows)} | {found / queries:.1f} | "
              f"{statistics.median(times):.2f} ms | {p99:.2f} ms |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    ae = AE(ae_title="BENCHFIND")
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae, max_pdu=262144)
    if not assoc.is_established:
        raise SystemExit("association failed")
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception:  # noqa: BLE001 - best effort
        pass
    studies = query(assoc, PatientID="", StudyDate="", AccessionNumber="")
    rows = [(str(s.PatientID), str(s.StudyDate), str(s.AccessionNumber)) for s in studies]
    time_kinds(rows, KINDS, lambda keys: len(query(assoc, **keys)), args.queries, args.label)
    assoc.release()


if __name__ == "__main__":
    main()
