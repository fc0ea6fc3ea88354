#!/usr/bin/env python3
"""C-FIND identifiers with sequence keys (PS3.4 C.2.2.2.6: an empty sequence, or one with an
empty item, asks for it to be returned) and a UR return key, in explicit and implicit VR.
Prints one JSON line per query: {"label", "statuses": [int], "vrs": [[vr or null, ...]]}.

Usage: find_sequence_keys.py --port P --study UID [--called-ae STRATA]
"""

import argparse
import json

import pydicom.config
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

pydicom.config.replace_un_with_known_vr = False  # the VR actually sent


def find(args, query, ts, keywords):
    ae = AE(ae_title="SEQFIND")
    ae.add_requested_context(FIND, [ts])
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    statuses, vrs = [], []
    for status, ident in assoc.send_c_find(query, FIND):
        statuses.append(status.Status if status else None)
        if ident is not None:
            vrs.append([ident[k].VR if k in ident else None for k in keywords])
    assoc.release()
    return statuses, vrs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--study", required=True)
    args = ap.parse_args()
    seq_keys = ["ProcedureCodeSequence", "ReferencedStudySequence"]
    for empty_item in (False, True):
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            q = Dataset()
            q.QueryRetrieveLevel = "STUDY"
            q.StudyInstanceUID = args.study
            q.PatientID = ""
            q.ProcedureCodeSequence = Sequence([Dataset()]) if empty_item else Sequence([])
            item = Dataset()
            item.ReferencedSOPInstanceUID = ""
            q.ReferencedStudySequence = Sequence([item])
            statuses, vrs = find(args, q, ts, seq_keys)
            label = f"{'one empty item' if empty_item else 'empty sequence'}, {ts.name}"
            print(json.dumps({"label": label, "statuses": statuses, "vrs": vrs}))
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = args.study
    q.RetrieveURL = ""
    statuses, vrs = find(args, q, ExplicitVRLittleEndian, ["RetrieveURL"])
    print(json.dumps({"label": "RetrieveURL, explicit VR", "statuses": statuses, "vrs": vrs}))


if __name__ == "__main__":
    main()
