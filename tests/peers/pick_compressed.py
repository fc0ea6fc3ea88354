#!/usr/bin/env python3
"""List valid pydicom sample files in JPEG Baseline and RLE Lossless syntaxes.

Usage:
    pick_compressed.py [--pretty]

Prints one JSON object on stdout:
    {"jpeg_baseline": [abs paths], "rle": [abs paths]}

Candidates are the "valid" files of sample_files.py (same directory): Part-10
files a storage SCU can send as-is.  They are grouped by the file meta
Transfer Syntax UID: JPEG Baseline (Process 1) 1.2.840.10008.1.2.4.50 and
RLE Lossless 1.2.840.10008.1.2.5.  Intended for `store_pynetdicom.py --ts
as-is`.  Exits non-zero if either list is empty.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from pydicom.filereader import read_file_meta_info

sys.dont_write_bytecode = True  # keep tests/peers free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sample_files  # noqa: E402

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore")
    root = sample_files.test_files_dir()
    out: dict[str, list[str]] = {"jpeg_baseline": [], "rle": []}
    for path in sample_files.candidates(root):
        try:
            ts = str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
        except Exception:  # noqa: BLE001 - not a Part-10 file
            continue
        key = {JPEG_BASELINE: "jpeg_baseline", RLE_LOSSLESS: "rle"}.get(ts)
        if key and sample_files.why_broken(path) is None:
            out[key].append(path)
    print(json.dumps(out, indent=2 if "--pretty" in argv else None))
    if not out["jpeg_baseline"] or not out["rle"]:
        print("pick_compressed.py: no JPEG Baseline or no RLE sample found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
