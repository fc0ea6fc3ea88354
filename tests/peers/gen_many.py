#!/usr/bin/env python3
"""Write N tiny CT Image Storage instances (8x8 pixels, explicit VR little endian, about
1.5 KB each) in S studies, each in series of up to 1,000: for tests of very large studies
(more than 65,535 instances: sub-operation counters are US, PS3.7 9.3) and of archives
with many studies (the idle S3 request benchmark).

Usage: gen_many.py --out DIR --count N [--studies S=1] [--root UID]
Writes DIR/<study>/<series>/<n>.dcm (the study level only when S > 1) and prints
{"files": N, "study": first StudyInstanceUID, "studies": S} as JSON.
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
    ap.add_argument("--studies", type=int, default=1)
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    # short enough that "<root>.<study>.<series>.<n>" stays within 64 characters
    root = args.root or f"2.25.{int(generate_uid(entropy_srcs=['gen_many', str(args.count)]).split('.')[-1]) % 10**20}"
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.PatientName = "MANY^INSTANCES"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
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
    # pydicom writes one template; each instance is the template with its UIDs, IDs and
    # InstanceNumber put in place. Fixed widths (study 10000001.., series 101..,
    # instance 10001..; no leading zeros in UID components, PS3.5 9.1) keep every
    # element's length, which is 20x faster than a save_as per file.
    study_t = f"{root}.99999999"
    series_t, sop_t = f"{study_t}.999", f"{study_t}.999.99999"
    pid_t, acc_t, num_t = "PID99999999", "ACC99999999", "999999"
    ds.StudyInstanceUID = study_t
    ds.SeriesInstanceUID = series_t
    ds.SOPInstanceUID = sop_t
    meta.MediaStorageSOPInstanceUID = sop_t
    ds.PatientID, ds.AccessionNumber, ds.InstanceNumber = pid_t, acc_t, num_t
    ds.SeriesNumber = 1
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    template = buf.getvalue()
    # InstanceNumber (0020,0013) IS, found by its element header (explicit VR LE)
    num_el = b"\x20\x00\x13\x00IS\x06\x00" + num_t.encode()
    for t, n in ((sop_t.encode(), 2), (num_el, 1), (pid_t.encode(), 1), (acc_t.encode(), 1)):
        assert template.count(t) == n, t
    per_study = -(-args.count // args.studies)
    first = None
    for i in range(args.count):
        k, j = divmod(i, per_study)
        series, n = divmod(j, 1000)
        study_uid = f"{root}.{10000001 + k}"
        first = first or study_uid
        top = os.path.join(args.out, f"{k + 1:06d}") if args.studies > 1 else args.out
        folder = os.path.join(top, f"{series + 1:03d}")
        if n == 0:
            os.makedirs(folder, exist_ok=True)
        series_uid = f"{study_uid}.{series + 101}"
        sop = f"{series_uid}.{n + 10001}"
        data = (
            template.replace(sop_t.encode(), sop.encode())
            .replace(series_t.encode(), series_uid.encode())
            .replace(study_t.encode(), study_uid.encode())
            .replace(num_el, num_el[:8] + f"{n + 1:>6}".encode())
            .replace(pid_t.encode(), f"P{10000001 + k}".ljust(11).encode())
            .replace(acc_t.encode(), f"A{10000001 + k}".ljust(11).encode())
        )
        with open(os.path.join(folder, f"{n + 1:04d}.dcm"), "wb") as f:
            f.write(data)
    print(json.dumps({"files": args.count, "study": first, "studies": args.studies}))


if __name__ == "__main__":
    main()
