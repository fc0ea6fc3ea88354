#!/usr/bin/env python3
"""Storage commitment SCU (push model) with pynetdicom.

Usage: commit_scu.py --port P [--host 127.0.0.1] [--called-ae STRATA] CLASS_UID:SOP_UID...

Sends one N-ACTION (ActionTypeID 1) listing the given instances, then waits for the
N-EVENT-REPORT on the same association (SCP role negotiated for the Storage Commitment
Push Model SOP class) and prints JSON:
  {"action_status": int, "event_type": int, "committed": [sop...], "failed": [[sop, reason]...]}
"""

import argparse
import json
import threading

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("refs", nargs="+")
    args = ap.parse_args()
    got = threading.Event()
    result = {}

    def on_report(event):
        ds = event.event_information
        result["event_type"] = event.event_type
        result["committed"] = [str(i.ReferencedSOPInstanceUID) for i in getattr(ds, "ReferencedSOPSequence", [])]
        result["failed"] = [[str(i.ReferencedSOPInstanceUID), int(i.FailureReason)] for i in getattr(ds, "FailedSOPSequence", [])]
        got.set()
        return 0x0000, None

    ae = AE(ae_title="COMMITSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae, ext_neg=[role],
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    if not assoc.is_established:
        raise SystemExit("association failed")
    # did the SCP answer the role selection, granting the SCP role for the event report?
    cx = [c for c in assoc.accepted_contexts if c.abstract_syntax == StorageCommitmentPushModel][0]
    result["scp_role"] = bool(cx.as_scp)
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    items = []
    for ref in args.refs:
        cls, sop = ref.split(":", 1)
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = sop
        items.append(item)
    ds.ReferencedSOPSequence = items
    status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    result["action_status"] = int(status.Status) if status else None
    got.wait(20)
    assoc.release()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
