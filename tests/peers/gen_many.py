#!/usr/bin/env python3
"""Write one study of N tiny CT Image Storage instances (8x8 pixels, explicit VR little
endian, about 1.5 KB each), in series of up to 1,000, for tests of very large studies
(more than 65,535 instances: sub-operation counters are US, PS3.7 9.3).

Usage: gen_many.py --out DIR --count N [--study UID]
Prints {"files": N, "study": UID} as JSON.
"""

import argparse
import io
import json
import os

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--study", default=None)
    args = ap.parse_args()
    # short enough that "<study>.<series>.<n>" stays within 64 characters
    study = args.study or f"2.25.{int(generate_uid(entropy_srcs=['gen_many', str(args.count)]).split('.')[-1]) % 10**20}"
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.PatientID = "MANY"
    ds.PatientName = "MANY^INSTANCES"
    ds.StudyInstanceUID = study
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "MANY1"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(128)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    os.makedirs(args.out, exist_ok=True)
    # pydicom writes one template; each instance is the template with its UIDs and
    # InstanceNumber put in place (fixed widths: series 101.., instance 10001..; no
    # leading zeros in UID components, PS3.5 9.1), which is 20x faster than save_as
    series_t, sop_t, num_t = f"{study}.999", f"{study}.999.99999", "999999"
    ds.SeriesInstanceUID = series_t
    ds.SOPInstanceUID = sop_t
    meta.MediaStorageSOPInstanceUID = sop_t
    ds.InstanceNumber = num_t
    ds.SeriesNumber = 1
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    template = buf.getvalue()
    assert template.count(sop_t.encode()) == 2 and template.count(num_t.encode()) == 1
    for i in range(args.count):
        series, n = divmod(i, 1000)
        if n == 0:
            folder = os.path.join(args.out, f"{series + 1:03d}")
            os.makedirs(folder, exist_ok=True)
        series_uid = f"{study}.{series + 101}"
        sop = f"{series_uid}.{n + 10001}"
        data = (
            template.replace(sop_t.encode(), sop.encode())
            .replace(series_t.encode(), series_uid.encode())
            .replace(num_t.encode(), f"{n + 1:>6}".encode())
        )
        with open(os.path.join(folder, f"{n + 1:04d}.dcm"), "wb") as f:
            f.write(data)
    print(json.dumps({"files": args.count, "study": study}))


if __name__ == "__main__":
    main()
