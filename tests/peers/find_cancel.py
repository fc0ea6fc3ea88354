#!/usr/bin/env python3
"""Send a universal Study Root C-FIND (STUDY level) and a C-CANCEL after the first N
pending responses; print {"pending": count, "final_status": int} as JSON.

Usage: find_cancel.py --port P [--host 127.0.0.1] [--called-ae STRATA] [--after N]
"""

import argparse
import json
import socket

from pydicom.dataset import Dataset
from pynetdicom import AE, _config
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--after", type=int, default=3)
    args = ap.parse_args()
    ae = AE(ae_title="CANCELSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    if not assoc.is_established:
        raise SystemExit("association failed")
    try:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception:  # noqa: BLE001 - best effort
        pass
    cx = [c for c in assoc.accepted_contexts if c.abstract_syntax == StudyRootQueryRetrieveInformationModelFind][0]
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    pending = 0
    final = None
    for status, _identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=1):
        if status is None:
            break
        if status.Status in (0xFF00, 0xFF01):
            pending += 1
            if pending == args.after:
                assoc.send_c_cancel(1, cx.context_id)
        else:
            final = status.Status
    assoc.release()
    print(json.dumps({"pending": pending, "final_status": final}))


if __name__ == "__main__":
    main()
