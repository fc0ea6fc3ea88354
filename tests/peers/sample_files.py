#!/usr/bin/env python3
"""Classify pydicom's bundled test files into sendable ("valid") and "broken".

Usage:
    sample_files.py [--pretty] [--explain]

Prints one JSON object on stdout:
    {"dir": <pydicom test_files dir>, "valid": [abs paths], "broken": [abs paths]}

Every regular file under pydicom/data/test_files (recursively) that looks like
DICOM is considered: names ending in .dcm, or without an extension (e.g. the
DICOMDIR test tree).  Obvious non-DICOM files (.py, .json, .txt, .gz, .bz2,
.zip, .dump, .icc, README...) are skipped entirely.

A file is "valid" - i.e. a Part-10 file a DICOM storage SCU can send as-is -
when all of these hold:
  * pydicom.dcmread(path) succeeds without force=True;
  * it has file meta information with TransferSyntaxUID,
    MediaStorageSOPClassUID and MediaStorageSOPInstanceUID;
  * the dataset has SOPClassUID, SOPInstanceUID, StudyInstanceUID and
    SeriesInstanceUID, encoded with VR UI (explicit UN is refused: DCMTK
    cannot find such UIDs), and SOPClassUID / SOPInstanceUID equal the
    meta's MediaStorageSOPClassUID / MediaStorageSOPInstanceUID;
  * every element, including PixelData when present, can be read (the pixel
    data is loaded but never decoded);
  * DCMTK `/usr/bin/dcmdump -q` exits 0 on it.
Everything else goes to "broken".  Lists are sorted.  Note that several
valid samples share a SOP Instance UID (e.g. MR_small*.dcm, SC_rgb_rle*.dcm
are re-encodings of the same instance).  With --explain, the
reason each broken file was rejected is printed to stderr.

Exits non-zero if the directory cannot be found, dcmdump is missing, or the
classification is clearly wrong (no valid or no broken files at all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pydicom
from pydicom.errors import InvalidDicomError

DCMDUMP = "/usr/bin/dcmdump"
SKIP_EXT = {
    ".py", ".pyc", ".json", ".txt", ".gz", ".bz2", ".zip", ".xz", ".dump",
    ".icc", ".md", ".rst", ".png", ".jpg", ".jpeg", ".j2k", ".jp2", ".bin",
}


def test_files_dir() -> str:
    return os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def candidates(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            path = os.path.abspath(os.path.join(dirpath, name))
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            base, ext = os.path.splitext(name)
            ext = ext.lower()
            if name.upper().startswith("README") or ext in SKIP_EXT:
                continue
            if ext not in ("", ".dcm"):
                continue
            out.append(path)
    return out


def why_broken(path: str) -> str | None:
    """Return None when the file is valid, else a short reason."""
    try:
        ds = pydicom.dcmread(path)  # no force
    except (InvalidDicomError, Exception) as exc:  # noqa: BLE001
        return f"dcmread: {type(exc).__name__}: {exc}"
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return "no file meta"
    for kw in ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
        if not str(meta.get(kw, "") or "").strip():
            return f"meta lacks {kw}"
    try:
        for tag in (0x00080016, 0x00080018, 0x0020000D, 0x0020000E):
            # pydicom silently maps UN to the dictionary VR; DCMTK cannot
            # find UIDs stored as explicit UN, so the file is not sendable.
            # (Checked on the raw elements, before they are parsed.)
            raw = ds.get_item(tag)
            if raw is not None and raw.VR not in (None, "UI"):
                return f"{pydicom.tag.Tag(tag)} has VR {raw.VR}, not UI"
        # Force every element to be parsed (and value-converted); catches
        # truncated files and elements with undecodable values.
        for elem in ds.iterall():
            _ = elem.value
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(kw, "") or "").strip():
                return f"dataset lacks {kw}"
        if ds.SOPClassUID != meta.MediaStorageSOPClassUID:
            return "SOPClassUID != MediaStorageSOPClassUID"
        if ds.SOPInstanceUID != meta.MediaStorageSOPInstanceUID:
            return "SOPInstanceUID != MediaStorageSOPInstanceUID"
        for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if kw in ds:
                data = getattr(ds, kw)
                if data is None or len(data) == 0:
                    return f"empty {kw}"
    except Exception as exc:  # noqa: BLE001
        return f"read: {type(exc).__name__}: {exc}"
    try:
        r = subprocess.run([DCMDUMP, "-q", path], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=60)
    except subprocess.TimeoutExpired:
        return "dcmdump timed out"
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        return f"dcmdump exit {r.returncode}" + (f": {msg[0]}" if msg else "")
    return None


def main(argv: list[str]) -> int:
    # pydicom warns about odd values in several samples; they are not errors.
    warnings.simplefilter("ignore")
    explain = "--explain" in argv
    pretty = "--pretty" in argv
    root = test_files_dir()
    if not os.path.isdir(root):
        print(f"sample_files.py: {root} not found", file=sys.stderr)
        return 1
    if not os.access(DCMDUMP, os.X_OK):
        print(f"sample_files.py: {DCMDUMP} not found", file=sys.stderr)
        return 1
    valid, broken = [], []
    for path in candidates(root):
        reason = why_broken(path)
        if reason is None:
            valid.append(path)
        else:
            broken.append(path)
            if explain:
                print(f"broken: {os.path.relpath(path, root)}: {reason}", file=sys.stderr)
    print(json.dumps({"dir": root, "valid": valid, "broken": broken}, indent=2 if pretty else None))
    if not valid or not broken:
        print("sample_files.py: suspicious classification (an empty list)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
