#!/usr/bin/env python3
"""Send a Study Root C-GET (STUDY level) offering to store only CT Image Storage (in
explicit and implicit VR little endian, SCP role); print the final response as JSON:
{"status": int, "error_comment": str, "completed": int, "failed": int, "received": int}.

Usage: get_status.py --port P (--study UID | --patient ID) [--called-ae STRATA] [--max-pdu N]

--patient sends a C-GET at PATIENT level instead, in the Patient Root model (or in
Study Root with --model study, which has no PATIENT level: a refusal is expected).

--max-pdu sets the maximum PDU length we announce (0: unlimited, PS3.8 D.1).

--tls-ca CA.pem [--tls-cert C.pem --tls-key K.pem] associates over TLS (PS3.15 B.1),
verifying the server against CA.pem and presenting the client certificate if given.

--move-to AE sends a Study Root C-MOVE to that destination instead (DCMTK's movescu
has no TLS); "received" is then 0 and "completed" counts what the destination took.
"""

import argparse
import json
import ssl

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelGet as PGET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--study")
    ap.add_argument("--patient")
    ap.add_argument("--model", choices=["patient", "study"], default=None)
    ap.add_argument("--max-pdu", type=int, default=16382)
    ap.add_argument("--tls-ca")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--move-to")
    args = ap.parse_args()
    tls_args = None
    if args.tls_ca:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.tls_ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if args.tls_cert:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        tls_args = (context, args.host)
    received = []

    def on_store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="GETSTATUS")
    ae.add_requested_context(GET)
    ae.add_requested_context(PGET)
    ae.add_requested_context(MOVE)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        args.host,
        args.port,
        ae_title=args.called_ae,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        max_pdu=args.max_pdu,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
        tls_args=tls_args,
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
    if args.move_to:
        responses = assoc.send_c_move(ds, args.move_to, MOVE, msg_id=1)
    else:
        responses = assoc.send_c_get(ds, model, msg_id=1)
    for status, _ in responses:
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
