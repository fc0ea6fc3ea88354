#!/usr/bin/env python3
"""Writes one multi-frame Part-10 object of a given size class, streamed to disk (never
held in memory): Multi-frame Grayscale Word Secondary Capture, explicit VR LE,
4096 x 4096 x 16 bits per frame (32 MiB), N frames of a slowly varying ramp.
Prints {"sop": uid, "study": uid, "series": uid, "bytes": file size} as JSON.

Usage: gen_big.py OUT.dcm FRAMES
"""

import json
import os
import struct
import sys

from pydicom.uid import generate_uid

SC_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
ROWS = COLS = 4096


def element(tag, vr, value):
    group, elem = tag
    if isinstance(value, str):
        value = value.encode()
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
    head = struct.pack("<HH", group, elem) + vr
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def us(v):
    return struct.pack("<H", v)


def main():
    out, frames = sys.argv[1], int(sys.argv[2])
    sop, study, series = generate_uid(), generate_uid(), generate_uid()
    meta = b"".join([
        element((2, 1), b"OB", b"\0\1"),
        element((2, 2), b"UI", SC_WORD),
        element((2, 3), b"UI", sop),
        element((2, 0x10), b"UI", "1.2.840.10008.1.2.1"),
        element((2, 0x12), b"UI", "1.2.826.0.1.3680043.9.7433.1"),
    ])
    meta = element((2, 0), b"UL", struct.pack("<I", len(meta))) + meta
    frame_bytes = ROWS * COLS * 2
    data = b"".join([
        element((8, 0x16), b"UI", SC_WORD),
        element((8, 0x18), b"UI", sop),
        element((8, 0x60), b"CS", "OT"),
        element((0x10, 0x10), b"PN", "Big^Object"),
        element((0x10, 0x20), b"LO", "BIG01"),
        element((0x20, 0x0D), b"UI", study),
        element((0x20, 0x0E), b"UI", series),
        element((0x20, 0x13), b"IS", "1"),
        element((0x28, 0x02), b"US", us(1)),
        element((0x28, 0x04), b"CS", "MONOCHROME2"),
        element((0x28, 0x08), b"IS", str(frames)),
        element((0x28, 0x10), b"US", us(ROWS)),
        element((0x28, 0x11), b"US", us(COLS)),
        element((0x28, 0x100), b"US", us(16)),
        element((0x28, 0x101), b"US", us(16)),
        element((0x28, 0x102), b"US", us(15)),
        element((0x28, 0x103), b"US", us(0)),
    ])
    pixel_header = struct.pack("<HH", 0x7FE0, 0x10) + b"OW\0\0" + struct.pack("<I", frame_bytes * frames)
    with open(out, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta + data + pixel_header)
        row = bytes(range(256)) * (COLS * 2 // 256)
        block = row * 64  # 64 rows
        for n in range(frames):
            for _ in range(ROWS // 64):
                f.write(block)
    print(json.dumps({"sop": sop, "study": study, "series": series, "bytes": os.path.getsize(out)}))


if __name__ == "__main__":
    main()
