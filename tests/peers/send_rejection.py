#!/usr/bin/env python3
"""Send an IHE IOCM rejection note with pynetdicom: a Key Object Selection Document
(PS3.3 A.35.4) titled with a CID 7011 code, referencing instances in its
CurrentRequestedProcedureEvidenceSequence; print {"status": int} of the C-STORE.

Usage: send_rejection.py --port P --code 113001 --study UID --patient ID
           --series UID --sop-class UID --sop UID [--sop UID ...] [--calling-ae AE]
"""

import argparse
import json

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
MEANINGS = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called-ae", default="STRATA")
    ap.add_argument("--calling-ae", default="QC_STATION")
    ap.add_argument("--code", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--patient", required=True)
    ap.add_argument("--series", required=True)
    ap.add_argument("--sop-class", required=True)
    ap.add_argument("--sop", action="append", required=True)
    args = ap.parse_args()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = KOS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = args.study
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = args.patient
    ds.PatientName = ""
    ds.Modality = "KO"
    ds.SeriesNumber = 999
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    title = Dataset()
    title.CodeValue = args.code
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = MEANINGS[args.code]
    ds.ConceptNameCodeSequence = [title]
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    refs = []
    content = []
    for uid in args.sop:
        r = Dataset()
        r.ReferencedSOPClassUID = args.sop_class
        r.ReferencedSOPInstanceUID = uid
        refs.append(r)
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "IMAGE"
        ref = Dataset()
        ref.ReferencedSOPClassUID = args.sop_class
        ref.ReferencedSOPInstanceUID = uid
        item.ReferencedSOPSequence = [ref]
        content.append(item)
    series = Dataset()
    series.SeriesInstanceUID = args.series
    series.ReferencedSOPSequence = refs
    study = Dataset()
    study.StudyInstanceUID = args.study
    study.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [study]
    ds.ContentSequence = content

    ae = AE(ae_title=args.calling_ae)
    ae.add_requested_context(KOS, ExplicitVRLittleEndian)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_ae)
    if not assoc.is_established:
        raise SystemExit("association failed")
    status = assoc.send_c_store(ds)
    assoc.release()
    print(json.dumps({"status": int(status.Status), "note": str(ds.SOPInstanceUID)}))


if __name__ == "__main__":
    main()
