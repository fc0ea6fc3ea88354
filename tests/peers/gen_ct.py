#!/usr/bin/env python3
"""Generate synthetic, realistic-looking CT Image Storage Part-10 files.

Usage:
    gen_ct.py --out DIR [--studies N=1] [--instances M=200]
              [--rows 512 --cols 512] [--seed S=1]
              [--patient-prefix P=STRATA] [--start-date YYYYMMDD=20240102]

Writes N studies (one patient, one CT series per study) of M instances each:

    DIR/<study_index>/<instance>.dcm      e.g. DIR/001/0001.dcm

Study indexes and instance numbers are 1-based and zero-padded so that
lexical order equals numeric order (InstanceNumber == the file's number).
Files of the same name are overwritten; other files in DIR are left alone
(use an empty DIR if a smaller set must not mix with an earlier one).

Every file is CT Image Storage (1.2.840.10008.5.1.4.1.1.2) encoded as
Explicit VR Little Endian with 16-bit unsigned pixel data (12 bits stored,
rows*cols*2 bytes; 512x512 -> 512 KiB).  The pixel content is a body-like
elliptical phantom (fat/muscle shell, organs, spine, lungs in upper slices,
contrast-filled vessels) that changes from slice to slice, plus noise, so
the data is not trivially compressible.

Everything is deterministic for a given set of arguments: UIDs are derived
with pydicom.uid.generate_uid(entropy_srcs=...) from the seed, patient prefix
and indexes, and the noise uses a numpy Generator seeded the same way, so a
rerun produces byte-identical files.  Studies are spread over different
dates (one every 9 days starting at --start-date) and times.

The generator is built for speed: one template dataset is built and only
the per-instance elements (UIDs, position, pixel data, ...) are changed
before each write; pixel arrays are computed vectorised with numpy.

On success a single JSON line is printed on stdout:
    {"files": n, "bytes": total_bytes, "studies": [StudyInstanceUID, ...]}
and the exit status is 0; on any error it is non-zero.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

PIXEL_SPACING = 0.7  # mm
SLICE_THICKNESS = 1.25  # mm
RESCALE_INTERCEPT = -1024
# Stored value = HU + 1024, 12 bits stored.
MAX_STORED = 4095


def uid(*parts: object) -> str:
    """Deterministic UID derived from the given parts."""
    return str(generate_uid(entropy_srcs=["strata-gen-ct"] + [str(p) for p in parts]))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--studies", type=int, default=1, help="number of studies (default 1)")
    p.add_argument("--instances", type=int, default=200, help="instances per study (default 200)")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--cols", type=int, default=512)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--patient-prefix", default="STRATA", help="prefix for PatientID / PatientName")
    p.add_argument("--start-date", default="20240102", help="StudyDate of the first study (YYYYMMDD)")
    a = p.parse_args(argv)
    if a.studies < 1 or a.instances < 1:
        p.error("--studies and --instances must be >= 1")
    if a.rows < 16 or a.cols < 16 or a.rows > 65535 or a.cols > 65535:
        p.error("--rows/--cols must be within 16..65535")
    try:
        a.start = dt.datetime.strptime(a.start_date, "%Y%m%d").date()
    except ValueError:
        p.error("--start-date must be YYYYMMDD")
    return a


class Phantom:
    """Vectorised body-like CT phantom; one instance per image geometry."""

    def __init__(self, rows: int, cols: int):
        # Normalised coordinates in [-1, 1], y down (anterior at top).
        y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
        x = np.linspace(-1.0, 1.0, cols, dtype=np.float32)[None, :]
        self.x = x
        self.y = y
        self.shape = (rows, cols)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2 <= 1.0

    def slice(self, z: float, rng: np.random.Generator) -> np.ndarray:
        """z in [0, 1]: 0 = top of the scanned range, 1 = bottom."""
        hu = np.full(self.shape, -1000.0, dtype=np.float32)  # air
        # Patient table (a thin curved slab under the body).
        hu[(self.y > 0.78) & (self.y < 0.82) & (np.abs(self.x) < 0.9)] = 150.0
        # Body outline: slightly varying with z.
        bx = 0.80 + 0.06 * np.sin(np.pi * z)
        by = 0.58 + 0.05 * np.sin(np.pi * z + 0.4)
        body = self.ellipse(0.0, 0.05, bx, by)
        hu[body] = -90.0  # subcutaneous fat
        inner = self.ellipse(0.0, 0.05, bx - 0.06, by - 0.06)
        hu[inner] = 45.0  # soft tissue / muscle
        # Lungs in the upper third, shrinking with z.
        if z < 0.4:
            s = 1.0 - z / 0.4
            for side in (-1.0, 1.0):
                lung = self.ellipse(side * 0.33, -0.02, 0.24 * s + 0.02, 0.36 * s + 0.02)
                hu[lung & inner] = -850.0
        else:
            # Abdomen: liver (right of patient = left of image), kidneys, bowel gas.
            liver = self.ellipse(-0.30, -0.05, 0.30 * (1.2 - z), 0.28 * (1.2 - z))
            hu[liver & inner] = 60.0
            for side in (-1.0, 1.0):
                k = self.ellipse(side * 0.28, 0.25, 0.08, 0.12)
                hu[k & inner] = 30.0
            for j in range(3):
                gx = 0.25 * np.cos(7.0 * z + 2.1 * j)
                gy = -0.10 + 0.15 * np.sin(5.0 * z + j)
                gas = self.ellipse(gx, gy, 0.04 + 0.01 * j, 0.03)
                hu[gas & inner] = -700.0
        # Heart in the upper slices.
        if z < 0.35:
            heart = self.ellipse(0.08, -0.05, 0.20, 0.17)
            hu[heart & inner] = 40.0
        # Aorta (contrast) and spine (vertebral body + cortical rim).
        hu[self.ellipse(0.05, 0.18, 0.045, 0.045)] = 250.0
        vb = self.ellipse(0.0, 0.36, 0.10, 0.085)
        hu[vb] = 700.0
        hu[self.ellipse(0.0, 0.36, 0.075, 0.06)] = 250.0
        # Spinous process position wobbles between vertebrae.
        hu[self.ellipse(0.0, 0.52, 0.025, 0.06 + 0.03 * abs(np.sin(40.0 * z)))] = 600.0
        # Ribs in the upper half: small bright dots around the body wall.
        if z < 0.55:
            for a in np.linspace(0.0, 2.0 * np.pi, 14, endpoint=False):
                if np.sin(a) > 0.85:  # leave the spine region free
                    continue
                rx = (bx - 0.09) * np.cos(a)
                ry = 0.05 + (by - 0.09) * np.sin(a)
                hu[self.ellipse(rx, ry, 0.022, 0.022)] = 900.0
        # Quantum noise inside the body only (air stays clean).
        noise = rng.normal(0.0, 18.0, self.shape).astype(np.float32)
        hu += noise * body
        stored = np.clip(hu - RESCALE_INTERCEPT, 0, MAX_STORED)
        return stored.astype("<u2")


def build_template(a: argparse.Namespace) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "STRATA_GEN_CT"
    ds.file_meta = meta

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = ""
    ds.StudyDate = ""
    ds.SeriesDate = ""
    ds.ContentDate = ""
    ds.StudyTime = ""
    ds.SeriesTime = ""
    ds.ContentTime = ""
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "Strata Synthetic"
    ds.InstitutionName = "Strata Test Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ""
    ds.SeriesDescription = ""
    ds.ManufacturerModelName = "gen_ct.py"
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{SLICE_THICKNESS:g}"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = ""
    ds.SeriesInstanceUID = ""
    ds.StudyID = ""
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = ""
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = "0"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = a.rows
    ds.Columns = a.cols
    ds.PixelSpacing = [PIXEL_SPACING, PIXEL_SPACING]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1500"]
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = b""
    return ds


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    ds = build_template(a)
    phantom = Phantom(a.rows, a.cols)
    field_of_view = a.cols * PIXEL_SPACING
    sdigits = max(3, len(str(a.studies)))
    idigits = max(4, len(str(a.instances)))
    first_names = ["ALICE", "BOB", "CAROL", "DAVE", "ERIN", "FRANK", "GRACE", "HEIDI", "IVAN", "JUDY"]
    descriptions = ["CT CHEST ABDOMEN", "CT THORAX", "CT ABDOMEN PELVIS W CONTRAST", "CT TRAUMA"]
    physicians = ["HOUSE^GREGORY", "GREY^MEREDITH", "KILDARE^JAMES", "QUINN^MICHAELA"]
    pfx = a.patient_prefix

    total_bytes = 0
    nfiles = 0
    study_uids: list[str] = []
    for s in range(a.studies):
        sidx = s + 1
        study_uid = uid(a.seed, pfx, "study", sidx)
        series_uid = uid(a.seed, pfx, "series", sidx)
        study_uids.append(study_uid)
        study_date = (a.start + dt.timedelta(days=9 * s)).strftime("%Y%m%d")
        minutes = (s * 97) % (10 * 60) + 7 * 60  # between 07:00 and 17:00
        study_time = f"{minutes // 60:02d}{minutes % 60:02d}{(s * 13) % 60:02d}"
        birth = dt.date(1940, 1, 1) + dt.timedelta(days=(a.seed * 7919 + s * 3331) % (60 * 365))

        ds.PatientID = f"{pfx}{sidx:0{sdigits}d}"
        ds.PatientName = f"{pfx}^{first_names[s % len(first_names)]}{sidx}"
        ds.PatientBirthDate = birth.strftime("%Y%m%d")
        ds.PatientSex = "FM"[s % 2]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = uid(a.seed, pfx, "for", sidx)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = study_time
        ds.AccessionNumber = f"ACC{a.seed:02d}{sidx:0{sdigits}d}"[:16]
        ds.StudyID = f"S{sidx}"[:16]
        ds.StudyDescription = descriptions[s % len(descriptions)]
        ds.ReferringPhysicianName = physicians[s % len(physicians)]
        ds.SeriesDescription = f"AXIAL {SLICE_THICKNESS:g}mm STD"

        study_dir = os.path.join(a.out, f"{sidx:0{sdigits}d}")
        os.makedirs(study_dir, exist_ok=True)
        rng = np.random.default_rng([a.seed, sidx])
        for i in range(a.instances):
            inum = i + 1
            z = i / max(1, a.instances - 1)
            zpos = -(i * SLICE_THICKNESS)
            sop_uid = uid(a.seed, pfx, "sop", sidx, inum)
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.InstanceNumber = inum
            ds.ImagePositionPatient = [f"{-field_of_view / 2:g}", f"{-field_of_view / 2:g}", f"{zpos:g}"]
            ds.SliceLocation = f"{zpos:g}"
            ds.PixelData = phantom.slice(z, rng).tobytes()
            path = os.path.join(study_dir, f"{inum:0{idigits}d}.dcm")
            dcmwrite(path, ds, enforce_file_format=True)
            total_bytes += os.path.getsize(path)
            nfiles += 1

    print(json.dumps({"files": nfiles, "bytes": total_bytes, "studies": study_uids}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - report and fail
        print(f"gen_ct.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
