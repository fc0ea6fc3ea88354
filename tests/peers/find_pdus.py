#!/usr/bin/env python3
"""Study Root C-FIND (STUDY level) from pynetdicom with a given maximum PDU length,
recording every P-DATA-TF it receives; prints one JSON object: {"max_pdu": n, "pdus":
[[["command"|"data", is_last, length], ...], ...] (the PDVs of each P-DATA-TF in order),
"matches": [[PatientID, StudyInstanceUID], ...]}.

Usage: find_pdus.py --port P --max-pdu N [--called-ae STRATA]
"""

import argparse
import json

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-pdu", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    args = ap.parse_args()
    pdus = []

    def received(event):
        if isinstance(event.pdu, P_DATA_TF):
            # PS3.8 E.2: the first byte of each PDV is its message control header
            # (bit 0: command, bit 1: last fragment)
            pdus.append([["command" if item.presentation_data_value[0] & 1 else "data",
                          bool(item.presentation_data_value[0] & 2),
                          len(item.presentation_data_value) - 1]
                         for item in event.pdu.presentation_data_value_items])

    ae = AE(ae_title="PDUFIND")
    ae.add_requested_context(FIND)
    # associate's own max_pdu is what pynetdicom proposes (AE.maximum_pdu_size is not)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae, max_pdu=args.max_pdu,
                         evt_handlers=[(evt.EVT_PDU_RECV, received)])
    assert assoc.is_established, "association refused"
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "StudyID",
                    "ReferringPhysicianName", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                    "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, "")
    matches = []
    for status, identifier in assoc.send_c_find(ds, FIND):
        if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
            matches.append([str(identifier.PatientID), str(identifier.StudyInstanceUID)])
    assoc.release()
    print(json.dumps({"max_pdu": args.max_pdu, "pdus": pdus, "matches": sorted(matches)}))


if __name__ == "__main__":
    main()
