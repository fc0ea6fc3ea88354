#!/usr/bin/env python3
"""Send a Study Root C-MOVE (STUDY level) and watch the sub-operation counters of every
response (PS3.7 9.3.4.2: Number of Remaining/Completed/Failed/Warning Sub-operations,
each US). Prints JSON: {"pending": n, "final_status": int, "first": {counters},
"final": {counters}, "max_remaining": int, "wrapped": bool} where `wrapped` says
whether any counter ever went down where it may only go up (completed, failed, warning)
or up where it may only go down (remaining) — what a 16-bit wrap-around looks like.

Usage: move_counts.py --port P --study UID --dest AE [--called-ae STRATA]
"""

import argparse
import json

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

KEYS = {
    "remaining": "NumberOfRemainingSuboperations",
    "completed": "NumberOfCompletedSuboperations",
    "failed": "NumberOfFailedSuboperations",
    "warning": "NumberOfWarningSuboperations",
}


def counters(status):
    return {k: (int(status.get(v)) if status.get(v) is not None else None) for k, v in KEYS.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--study", required=True)
    ap.add_argument("--dest", required=True)
    args = ap.parse_args()
    ae = AE(ae_title="MOVECOUNTS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    ae.add_requested_context(MOVE)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    if not assoc.is_established:
        raise SystemExit("association failed")
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = args.study
    pending, first, last, final, final_status = 0, None, None, None, None
    max_remaining, wrapped = 0, False
    for status, _ in assoc.send_c_move(ds, args.dest, MOVE, msg_id=1):
        if status is None:
            break
        c = counters(status)
        if status.Status == 0xFF00:
            pending += 1
            first = first or c
            max_remaining = max(max_remaining, c["remaining"] or 0)
            if last is not None:
                if c["remaining"] > last["remaining"]:
                    wrapped = True
                for k in ("completed", "failed", "warning"):
                    if c[k] < last[k]:
                        wrapped = True
            last = c
        else:
            final_status, final = status.Status, c
            if last is not None:
                for k in ("completed", "failed", "warning"):
                    if (c[k] or 0) < last[k]:
                        wrapped = True
    assoc.release()
    print(json.dumps({"pending": pending, "final_status": final_status, "first": first,
                      "final": final, "max_remaining": max_remaining, "wrapped": wrapped}))


if __name__ == "__main__":
    main()
