#!/usr/bin/env python3
"""Send a Study Root C-MOVE (STUDY level) and a C-CANCEL after the first N pending
responses; print {"pending": count, "final_status": int, "completed": int} as JSON.

Usage: move_cancel.py --port P --study UID --dest AE [--called-ae STRATA] [--after N]
"""

import argparse
import json

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--study", required=True)
    ap.add_argument("--dest", required=True)
    ap.add_argument("--after", type=int, default=3)
    args = ap.parse_args()
    ae = AE(ae_title="CANCELMOVE")
    ae.add_requested_context(MOVE)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    if not assoc.is_established:
        raise SystemExit("association failed")
    cx = [c for c in assoc.accepted_contexts if c.abstract_syntax == MOVE][0]
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = args.study
    pending, final, completed = 0, None, None
    for status, _ in assoc.send_c_move(ds, args.dest, MOVE, msg_id=1):
        if status is None:
            break
        if status.Status in (0xFF00,):
            pending += 1
            if pending == args.after:
                assoc.send_c_cancel(1, cx.context_id)
        else:
            final = int(status.Status)
            completed = int(getattr(status, "NumberOfCompletedSuboperations", 0) or 0)
    assoc.release()
    print(json.dumps({"pending": pending, "final_status": final, "completed": completed}))


if __name__ == "__main__":
    main()
