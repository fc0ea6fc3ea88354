#!/usr/bin/env python3
"""Send DICOM files to a storage SCP with pynetdicom C-STORE (one association).

Usage:
    store_pynetdicom.py --host H --port P --called-ae AE [--calling-ae PYSCU]
                        --ts explicit|implicit|as-is [--expect-status HEX]
                        [--timeout SECONDS] FILES...

Transfer syntax modes:
  explicit  every file is re-encoded as Explicit VR Little Endian; for each
            SOP class exactly one presentation context is proposed, with
            Explicit VR Little Endian as its only transfer syntax.
  implicit  same with Implicit VR Little Endian.
            Only use these two modes for natively (uncompressed) encoded
            files: encapsulated (JPEG, RLE, ...) files are refused rather
            than decompressed.  Explicit VR Big Endian files are converted
            properly (OW/OL/OF/OD/OV values, including pixel data, are byte
            swapped); deflated files are inflated.
  as-is     for each (SOP class, transfer syntax) pair found in the files one
            context proposing exactly the file's own transfer syntax; the
            data set bytes are sent verbatim from the file (used for JPEG
            Baseline and RLE Lossless files, for instance); an odd-length
            deflated stream gets the one 00H pad byte PS3.5 A.5 requires.

All files go over a single association (at most 128 presentation contexts).
One JSON line is printed per file, in order, as soon as it is done:
    {"file": path, "sop_instance_uid": uid, "transfer_syntax": ts_used,
     "status": int or null}
(plus an "error" key when the file could not be sent; status is null when no
response was received).  Exit status is 0 only if every file got a response
whose status equals --expect-status (default 0x0000); 1 otherwise, and 2 on
usage errors.  Example expecting every store to be refused for lack of
resources:  store_pynetdicom.py ... --ts explicit --expect-status 0xA700 f.dcm
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.transport import AssociationSocket

MAX_CONTEXTS = 128
DEFLATED = str(DeflatedExplicitVRLittleEndian)
SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _enable_tcp_nodelay() -> None:
    """pynetdicom leaves Nagle on; with delayed ACKs every store then costs
    ~40 ms on loopback.  Set TCP_NODELAY on the sockets it creates."""
    original = AssociationSocket._create_socket

    def create(self, address):  # type: ignore[no-untyped-def]
        sock = original(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    AssociationSocket._create_socket = create  # type: ignore[method-assign]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--called-ae", required=True)
    p.add_argument("--calling-ae", default="PYSCU")
    p.add_argument("--ts", required=True, choices=("explicit", "implicit", "as-is"))
    p.add_argument("--expect-status", default="0x0000",
                   help="status every C-STORE must return for exit 0 (hex, default 0x0000)")
    p.add_argument("--timeout", type=float, default=60.0, help="network/DIMSE timeout in seconds")
    p.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    try:
        a.expect = int(a.expect_status, 16)
    except ValueError:
        p.error("--expect-status must be a hex number such as 0x0000 or A700")
    return a


def swap_to_little_endian(ds: pydicom.Dataset) -> None:
    """Byte-swap the raw OW/OL/OF/OD/OV values of a big-endian data set.

    pydicom converts numeric VRs (US, SS, FL, ...) from their decoded values,
    but keeps 'other' VR values as raw bytes, which must be swapped by hand.
    """
    bits = int(ds.get("BitsAllocated", 16) or 16)
    # iterall() parses every raw element (nested ones too) into a
    # DataElement, so nothing is later copied verbatim in big endian.
    for elem in ds.iterall():
        width = SWAP_WIDTH.get(elem.VR)
        value = elem.value
        if not width or not isinstance(value, (bytes, bytearray)) or not value:
            continue
        if elem.tag == 0x7FE00010 and elem.VR == "OW" and bits > 16 and bits % 8 == 0:
            width = bits // 8
        if len(value) % width:
            raise ValueError(f"{elem.tag} length {len(value)} is not a multiple of {width}")
        arr = np.frombuffer(value, dtype=np.dtype(f">u{width}"))
        elem.value = arr.astype(f"<u{width}").tobytes()
    ds.set_original_encoding(False, True, ds.original_character_set)


class Item:
    def __init__(self, path: str):
        self.path = path
        self.sop_class: str | None = None
        self.sop_instance: str | None = None
        self.file_ts: str | None = None
        self.error: str | None = None
        self.ts_used: str | None = None
        self.status: int | None = None

    def report(self) -> dict:
        out = {"file": self.path, "sop_instance_uid": self.sop_instance,
               "transfer_syntax": self.ts_used, "status": self.status}
        if self.error:
            out["error"] = self.error
        return out


def scan(path: str, mode: str) -> Item:
    """Read just enough of a file to know which context it needs."""
    it = Item(path)
    try:
        if mode == "as-is":
            meta = read_file_meta_info(path)
            it.sop_class = str(meta.MediaStorageSOPClassUID)
            it.sop_instance = str(meta.MediaStorageSOPInstanceUID)
            it.file_ts = str(meta.TransferSyntaxUID)
            return it
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ts = UID(ds.file_meta.TransferSyntaxUID)
        it.sop_class = str(ds.SOPClassUID)
        it.sop_instance = str(ds.SOPInstanceUID)
        it.file_ts = str(ts)
        if ts.is_compressed:
            raise ValueError(f"file is encapsulated ({ts.name}); use --ts as-is")
    except Exception as exc:  # noqa: BLE001
        it.error = f"{type(exc).__name__}: {exc}"
    return it


def padded_copy(path: str, tmpdir: str) -> str:
    """A deflated data set must reach the wire with even length (PS3.5
    A.5: pad with one 00H byte); files often store the odd-length stream.
    Return path unchanged if already even, else a padded copy in tmpdir."""
    _, offset = split_dataset(Path(path))
    if (os.path.getsize(path) - offset) % 2 == 0:
        return path
    copy = os.path.join(tmpdir, "deflated.dcm")
    shutil.copyfile(path, copy)
    with open(copy, "ab") as f:
        f.write(b"\x00")
    return copy


def load_dataset(path: str) -> pydicom.Dataset:
    """Full data set of a natively encoded file, ready for re-encoding."""
    ds = pydicom.dcmread(path)
    if not UID(ds.file_meta.TransferSyntaxUID).is_little_endian:
        swap_to_little_endian(ds)
        # The data set is now explicit VR little endian; pynetdicom
        # re-encodes it for the proposed (little endian) context.
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s", stream=sys.stderr)

    target = ExplicitVRLittleEndian if a.ts == "explicit" else ImplicitVRLittleEndian
    items = [scan(f, a.ts) for f in a.files]
    contexts: list[tuple[str, str]] = []
    for it in items:
        if it.error:
            continue
        key = (it.sop_class, it.file_ts if a.ts == "as-is" else str(target))
        if key not in contexts:
            contexts.append(key)
    if len(contexts) > MAX_CONTEXTS:
        print(f"store_pynetdicom.py: {len(contexts)} presentation contexts needed, "
              f"at most {MAX_CONTEXTS} fit in one association", file=sys.stderr)
        return 2

    _enable_tcp_nodelay()
    ae = AE(ae_title=a.calling_ae)
    ae.acse_timeout = a.timeout
    ae.dimse_timeout = a.timeout
    ae.network_timeout = a.timeout
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, [ts])
    # as-is: stream the data set bytes straight from the file, no re-encoding.
    _config.STORE_SEND_CHUNKED_DATASET = a.ts == "as-is"

    ok = True

    def emit(it: Item) -> None:
        nonlocal ok
        if it.status is None and not it.error:
            it.error = "not sent (association lost)"
        print(json.dumps(it.report()), flush=True)
        if it.status != a.expect:
            ok = False

    tmpdir = tempfile.mkdtemp(prefix="store_pynetdicom.")
    assoc = None
    if contexts:
        assoc = ae.associate(a.host, a.port, ae_title=a.called_ae)
        if not assoc.is_established:
            for it in items:
                it.error = it.error or "association rejected, aborted or never connected"
            assoc = None
    try:
        for it in items:
            if it.error or assoc is None or not assoc.is_established:
                emit(it)
                continue
            try:
                want = it.file_ts if a.ts == "as-is" else str(target)
                accepted = [cx for cx in assoc.accepted_contexts
                            if cx.abstract_syntax == it.sop_class and cx.transfer_syntax[0] == want]
                if not accepted:
                    it.error = "presentation context not accepted by the SCP"
                else:
                    it.ts_used = str(accepted[0].transfer_syntax[0])
                    if a.ts == "as-is":
                        payload = padded_copy(it.path, tmpdir) if it.file_ts == DEFLATED else it.path
                    else:
                        payload = load_dataset(it.path)
                    status = assoc.send_c_store(payload)
                    if status is not None and "Status" in status:
                        it.status = int(status.Status)
                    else:
                        it.error = "no C-STORE response"
            except Exception as exc:  # noqa: BLE001
                it.error = f"{type(exc).__name__}: {exc}"
            emit(it)
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
        ae.shutdown()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
