#!/usr/bin/env python3
"""Writes an implicit VR LE RT Dose whose DVH Data (3004,0058, DS) value is longer than
an explicit-VR 16-bit length allows (~79 KB), as PS3.5 6.2.2's case for UN.
Prints the SOP Instance UID and the DVH Data's byte length as JSON.

Usage: make_rtdose_dvh.py OUT.dcm
"""

import json
import sys

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"

meta = FileMetaDataset()
meta.MediaStorageSOPClassUID = RT_DOSE
meta.MediaStorageSOPInstanceUID = generate_uid()
meta.TransferSyntaxUID = ImplicitVRLittleEndian
ds = Dataset()
ds.file_meta = meta
ds.SOPClassUID = RT_DOSE
ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
ds.StudyInstanceUID = generate_uid()
ds.SeriesInstanceUID = generate_uid()
ds.PatientID = "DVH01"
ds.PatientName = "Dose^Long"
ds.Modality = "RTDOSE"
dvh = Dataset()
dvh.DVHType = "CUMULATIVE"
dvh.DoseUnits = "GY"
dvh.DVHNumberOfBins = 8000
values = []
for i in range(8000):
    values += [f"{0.01 * (i + 1):.4f}", f"{100.0 - i * 0.0125:.4f}"]
dvh.DVHData = values
ds.DVHSequence = Sequence([dvh])
ds.save_as(sys.argv[1], implicit_vr=True, little_endian=True, enforce_file_format=True)
raw = "\\".join(values)
print(json.dumps({"sop": str(ds.SOPInstanceUID), "study": str(ds.StudyInstanceUID), "bytes": len(raw)}))
