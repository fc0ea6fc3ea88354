#!/usr/bin/env python3
"""Study Root C-FIND (STUDY level) with the PatientName key written in a given Specific
Character Set (pydicom encodes it); prints the matches as JSON:
[{"patient_id": str, "patient_name": str (decoded by pydicom with the response's own
(0008,0005)), "charset": the response's (0008,0005)}].

Usage: find_charset.py --port P --charset "ISO_IR 100" --name "Häb*" [--called-ae STRATA]
       (charset may be multi-valued: "\\ISO 2022 IR 87")
"""

import argparse
import json

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--charset", required=True)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    ae = AE(ae_title="CHARSETFIND")
    ae.add_requested_context(FIND)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    if not assoc.is_established:
        raise SystemExit("association failed")
    ds = Dataset()
    terms = args.charset.split("\\")
    ds.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = args.name
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    out = []
    for status, identifier in assoc.send_c_find(ds, FIND):
        if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
            identifier.decode()
            out.append({
                "patient_id": str(identifier.get("PatientID", "")),
                "patient_name": str(identifier.get("PatientName", "")),
                "charset": identifier.get("SpecificCharacterSet", ""),
            })
    assoc.release()
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
