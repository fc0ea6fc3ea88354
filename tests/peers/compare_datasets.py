#!/usr/bin/env python3
"""Check that every sent file arrived with the same dataset.

Usage: compare_datasets.py --exported DIR SENT_FILES...

For each sent Part-10 file, finds the exported file DIR/<study>/<series>/<sop>.dcm by its
UIDs and compares the two datasets element by element (the file meta group is not
compared: the archive writes its own). Where the sender converted the transfer syntax
(e.g. implicit -> explicit VR, big -> little endian), values are compared as decoded by
pydicom, and pixel data as decoded arrays; otherwise raw values must be equal.
Prints one JSON line per mismatch; exits 0 only if all files match.
"""

import argparse
import json
import os
import sys

import pydicom
from pydicom.uid import UID


def values_equal(a, b, same_ts):
    if a.VR == "SQ" or b.VR == "SQ":
        if len(a.value) != len(b.value):
            return False
        return all(datasets_equal(x, y, same_ts)[0] for x, y in zip(a.value, b.value))
    return a.value == b.value


def ignorable(tag):
    """File meta (the archive writes its own), group lengths (retired; senders such as
    DCMTK recompute or drop them) and trailing padding (FFFC,FFFC), which senders drop."""
    return tag.group == 0x0002 or tag.element == 0x0000 or tag == 0xFFFCFFFC


def datasets_equal(sent, got, same_ts):
    for elem in sent:
        if ignorable(elem.tag):
            continue
        if elem.tag not in got:
            return False, f"{elem.tag} missing"
        other = got[elem.tag]
        if elem.tag == 0x7FE00010 and not same_ts:
            continue  # compared as arrays by the caller
        if not values_equal(elem, other, same_ts):
            return False, f"{elem.tag} differs"
    extra = [e.tag for e in got if not ignorable(e.tag) and e.tag not in sent]
    if extra:
        return False, f"extra elements {extra[:5]}"
    return True, ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exported", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    bad = 0
    for path in args.files:
        sent = pydicom.dcmread(path)
        target = os.path.join(args.exported, sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID + ".dcm")
        if not os.path.exists(target):
            print(json.dumps({"file": path, "error": "not exported", "expected": target}))
            bad += 1
            continue
        got = pydicom.dcmread(target)
        same_ts = UID(sent.file_meta.TransferSyntaxUID) == UID(got.file_meta.TransferSyntaxUID)
        ok, why = datasets_equal(sent, got, same_ts)
        if ok and not same_ts and "PixelData" in sent:
            try:
                import numpy as np

                ok = np.array_equal(sent.pixel_array, got.pixel_array)
                why = "" if ok else "pixel data differs"
            except Exception as e:  # noqa: BLE001 - report, don't crash
                ok, why = False, f"cannot decode pixel data: {e}"
        if not ok:
            print(json.dumps({"file": path, "error": why}))
            bad += 1
    print(json.dumps({"compared": len(args.files), "mismatches": bad}))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
