#!/usr/bin/env python3
"""Study Root C-FIND (STUDY level) on a presentation context proposing one transfer
syntax only; prints {"syntax": uid, "accepted": bool, "matches": [[PatientID,
StudyInstanceUID, PatientName], ...]} per syntax as JSON lines.

Usage: find_in_syntax.py --port P [--called-ae STRATA]
"""

import argparse
import json

from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit)
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    args = ap.parse_args()
    # the last: an SCU proposing only a compressed syntax (its identifiers are explicit
    # VR little endian, PS3.5 A.4)
    for ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
               DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit):
        ae = AE(ae_title="SYNTAXFIND")
        ae.add_requested_context(FIND, [ts])
        assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
        accepted = assoc.is_established and bool(assoc.accepted_contexts)
        matches = []
        if accepted:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = ""
            ds.PatientName = ""
            ds.StudyInstanceUID = ""
            for status, identifier in assoc.send_c_find(ds, FIND):
                if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                    matches.append([str(identifier.PatientID), str(identifier.StudyInstanceUID),
                                    str(identifier.PatientName)])
            assoc.release()
        print(json.dumps({"syntax": str(ts), "accepted": accepted, "matches": matches}))


if __name__ == "__main__":
    main()
