#!/usr/bin/env python3
"""Study Root C-FIND with pynetdicom, optionally negotiating relational queries.

Usage: find_relational.py --port P [--relational] --level LEVEL KEY=VALUE...
Prints {"status": final status, "matches": [identifier as {keyword: value}]} as JSON.
"""

import argparse
import json

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--relational", action="store_true")
    ap.add_argument("--level", required=True)
    ap.add_argument("keys", nargs="*")
    args = ap.parse_args()
    ae = AE(ae_title="RELFIND")
    ae.add_requested_context(FIND)
    ext = []
    if args.relational:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = FIND
        item.service_class_application_information = b"\x01"
        ext.append(item)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae, ext_neg=ext)
    if not assoc.is_established:
        raise SystemExit("association failed")
    ds = Dataset()
    ds.QueryRetrieveLevel = args.level
    for kv in args.keys:
        k, v = kv.split("=", 1)
        setattr(ds, k, v)
    matches, final = [], None
    for status, ident in assoc.send_c_find(ds, FIND):
        if status is None:
            break
        if status.Status in (0xFF00, 0xFF01):
            matches.append({e.keyword: str(e.value) for e in ident if e.keyword})
        else:
            final = int(status.Status)
    assoc.release()
    print(json.dumps({"status": final, "matches": matches}))


if __name__ == "__main__":
    main()
