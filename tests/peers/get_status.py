#!/usr/bin/env python3
"""Send a Study Root C-GET (STUDY level) offering to store only CT Image Storage (in
explicit and implicit VR little endian, SCP role); print the final response as JSON:
{"status": int, "error_comment": str, "completed": int, "failed": int, "received": int}.

Usage: get_status.py --port P (--study UID | --patient ID) [--called-ae STRATA] [--max-pdu N]

--patient sends a C-GET at PATIENT level instead, in the Patient Root model (or in
Study Root with --model study, which has no PATIENT level: a refusal is expected).

--max-pdu sets the maximum PDU length we announce (0: unlimited, PS3.8 D.1).
"""

import argparse
import json

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelGet as PGET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--study")
    ap.add_argument("--patient")
    ap.add_argument("--model", choices=["patient", "study"], default=None)
    ap.add_argument("--max-pdu", type=int, default=16382)
    args = ap.parse_args()
    received = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="GETSTATUS")
    ae.add_requested_context(GET)
    ae.add_requested_context(PGET)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        args.host,
        args.port,
        ae_title=args.called_ae,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        max_pdu=args.max_pdu,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        raise SystemExit("association failed")
    ds = Dataset()
    if args.patient:
        ds.QueryRetrieveLevel = "PATIENT"
        ds.PatientID = args.patient
        model = GET if args.model == "study" else PGET
    else:
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = args.study
        model = GET
    final = None
    for status, _ in assoc.send_c_get(ds, model, msg_id=1):
        if status is not None and status.Status not in (0xFF00, 0xFF01):
            final = status
    assoc.release()
    print(json.dumps({
        "status": final.Status,
        "error_comment": str(final.get("ErrorComment", "")),
        "completed": int(final.get("NumberOfCompletedSuboperations", 0)),
        "failed": int(final.get("NumberOfFailedSuboperations", 0)),
        "received": len(received),
    }))


if __name__ == "__main__":
    main()
