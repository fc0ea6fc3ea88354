"""Helpers for the strata-migrate regression tests (pydicom 3 / pynetdicom 3), taken from
the field-case reproductions (shared/field-cases-2/lib.py): a scripted legacy PACS with
quirks, a synthetic CT generator, C-FIND and strata-migrate runners. Synthetic data only."""
import os, sys, io, json, time, threading, subprocess
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt, build_context
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.dsutils import encode, decode
import pynetdicom.service_class as sc

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
N = int(os.environ.get("N", "0"))
PORT = int(os.environ.get("PORT", 12500 + N))
SRC_PORT = int(os.environ.get("SRC_PORT", 12540 + N))
HOST = "127.0.0.1"

RESULTS = []


def check(name, ok, observed, expected):
    RESULTS.append((name, bool(ok)))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}\n    expected: {expected}\n    observed: {observed}", flush=True)
    return ok


def finish():
    bad = [n for n, ok in RESULTS if not ok]
    print("RESULT:", "PASS" if not bad else "FAIL (" + "; ".join(bad) + ")", flush=True)
    sys.exit(0 if not bad else 1)


_counter = [0]


def uid(prefix="2.25."):
    """Random-ish made-up UID (2.25 + random integer)."""
    return generate_uid(prefix=None)


def make_ct(pid="PID001", name="SYNTH^ONE", study=None, series=None, sop=None,
            study_date="20240105", study_time="101500", inst=1, size=(8, 8), random_pixels=False,
            series_number=1):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = sop or uid()
    ds.StudyInstanceUID = study or uid()
    ds.SeriesInstanceUID = series or uid()
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = "ACC" + pid[-3:]
    ds.StudyID = "1"
    ds.StudyDescription = "SYNTH STUDY"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = inst
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    rows, cols = size
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    if random_pixels:
        arr = np.random.default_rng(inst * 7919 + rows).integers(0, 65535, rows * cols, dtype=np.uint16)
    else:
        arr = (np.arange(rows * cols, dtype=np.uint32) * 257 % 65536).astype(np.uint16)
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW"
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm
    return ds


def store(datasets, port=None, ae_title="STRATA", calling="SYNTH_SCU"):
    """C-STORE datasets to an SCP; returns list of statuses."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(HOST, port or PORT, ae_title=ae_title)
    assert assoc.is_established, "association with the archive failed"
    out = []
    for ds in datasets:
        st = assoc.send_c_store(ds)
        out.append(st.Status if st else None)
    assoc.release()
    return out


def find(identifier, port=None, ae_title="STRATA", model=STUDY_FIND, calling="SYNTH_SCU"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate(HOST, port or PORT, ae_title=ae_title)
    assert assoc.is_established
    matches, final = [], None
    for status, ds in assoc.send_c_find(identifier, model):
        if status and status.Status in (0xFF00, 0xFF01):
            matches.append(ds)
        elif status:
            final = status.Status
    assoc.release()
    return final, matches


def q(level, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


# --------------------------------------------------------------------------------------
# A configurable legacy PACS (the migration source), with the quirks of real systems.
# --------------------------------------------------------------------------------------

def _raw_text(ds, keyword):
    """The value as sent on the wire (only the UI NUL padding removed), or None."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag not in ds:
        return None
    elem = ds.get_item(tag)
    val = elem.value
    if isinstance(val, bytes):
        return val.rstrip(b"\0").decode("ascii", "replace")
    if val is None:
        return ""
    if isinstance(val, (list, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in val)
    return str(val)


def set_raw(ds, keyword, text):
    """Sets a text element to exactly this value (e.g. a UID with a trailing space, which
    pydicom would otherwise strip on assignment); it is written as is."""
    setattr(ds, keyword, text.strip() or "1")
    ds[keyword]._value = text


def stored_text(ds, keyword):
    """The stored value of a text element, raw bytes kept (only NUL padding removed)."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag not in ds:
        return ""
    elem = ds.get_item(tag)
    if isinstance(elem.value, bytes):
        return elem.value.rstrip(b"\0").decode("ascii", "replace")
    return str(elem.value)


def _match_text(key, value, exact_uid=False):
    """PS3.4 C.2.2.2 for the keys the migration tool sends: universal, list of UIDs,
    wildcard prefix, ranges are handled by callers."""
    if key is None or key == "":
        return True
    if exact_uid:
        return value in key.split("\\")
    if key.endswith("*") and "*" not in key[:-1]:
        return value.startswith(key[:-1])
    return value == key


def _in_range(key, value):
    if not key:
        return True
    if "-" in key:
        a, b = key.split("-", 1)
        if not value:
            return False
        return (not a or value >= a) and (not b or value <= b)
    return value == key


class LegacyPacs:
    """Holds Datasets in memory; Study Root (and/or Patient Root) FIND and MOVE.

    quirks:
      models: "study" | "patient" | "both"
      count: {study_uid: int | None}   NumberOfStudyRelatedInstances override (None: omit)
      hide_in_find: set of SOP UIDs missing from IMAGE-level answers
      move_skip: set of SOP UIDs a C-MOVE silently does not send
      move_mode: "normal" | "final_first" | "lie"
      final_first_delay: seconds between the final response and the first C-STORE
      no_match_status: status of a C-MOVE that matches nothing (default 0x0000)
      move_silence: seconds before the first C-MOVE response / sub-operation
      find_delay: seconds before answering each C-FIND
      uid_exact: compare UIDs byte-exactly as stored (trailing spaces significant)
    """

    def __init__(self, datasets, port=None, ae_title="OLDPACS", destinations=None, **quirks):
        self.datasets = datasets
        self.port = port or SRC_PORT
        self.ae_title = ae_title
        self.destinations = destinations or {"STRATA": (HOST, PORT)}
        self.q = quirks
        self.moves = []          # log of C-MOVE requests: (level, uids, sent, reported)
        self.finds = []
        self.lock = threading.Lock()
        self.late_threads = []

    # ---- matching
    def _study_uid(self, ds):
        return stored_text(ds, "StudyInstanceUID")

    def select(self, ident, level):
        out = []
        for ds in self.datasets:
            ok = True
            for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                key = _raw_text(ident, kw)
                if key is None or key == "":
                    continue
                stored = stored_text(ds, kw)
                if not self.q.get("uid_exact"):
                    stored = stored.rstrip(" ")
                    key = "\\".join(k.rstrip(" ") for k in key.split("\\"))
                if not _match_text(key, stored, exact_uid=True):
                    ok = False
            pid = _raw_text(ident, "PatientID")
            if pid and not _match_text(pid, str(ds.PatientID)):
                ok = False
            if not _in_range(_raw_text(ident, "StudyDate") or "", str(ds.get("StudyDate", ""))):
                ok = False
            if not _in_range(_raw_text(ident, "StudyTime") or "", str(ds.get("StudyTime", ""))):
                ok = False
            mods = _raw_text(ident, "ModalitiesInStudy")
            if mods and str(ds.Modality) not in mods.split("\\"):
                ok = False
            if ok:
                out.append(ds)
        return out

    def handle_find(self, event):
        if self.q.get("find_delay"):
            time.sleep(self.q["find_delay"])
        ident = event.identifier
        level = str(ident.QueryRetrieveLevel).strip()
        self.finds.append(level)
        model = event.request.AffectedSOPClassUID
        if model == PATIENT_FIND and level in ("STUDY", "SERIES", "IMAGE") and not _raw_text(ident, "PatientID"):
            # Patient Root hierarchical: the higher unique key is required
            yield 0xA900, None
            return
        matched = self.select(ident, level)
        if level == "IMAGE":
            hide = self.q.get("hide_in_find", set())
            matched = [d for d in matched if str(d.SOPInstanceUID) not in hide]
        seen = {}
        keyattr = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
                   "IMAGE": "SOPInstanceUID"}[level]
        for d in matched:
            k = stored_text(d, keyattr)
            if k in seen:
                continue
            seen[k] = d
        for k, d in seen.items():
            if event.is_cancelled:
                yield 0xFE00, None
                return
            rsp = Dataset()
            rsp.QueryRetrieveLevel = level
            for elem in ident:
                kw = elem.keyword
                if kw in ("QueryRetrieveLevel", ""):
                    continue
                if kw == "NumberOfStudyRelatedInstances":
                    s = self._study_uid(d)
                    counts = self.q.get("count", {})
                    if s in counts:
                        if counts[s] is None:
                            continue
                        setattr(rsp, kw, str(counts[s]))
                    else:
                        setattr(rsp, kw, str(sum(1 for x in self.datasets if self._study_uid(x) == s)))
                    continue
                if kw == "ModalitiesInStudy":
                    s = self._study_uid(d)
                    rsp.ModalitiesInStudy = sorted({str(x.Modality) for x in self.datasets
                                                    if self._study_uid(x) == s})
                    continue
                if kw in d:
                    rsp.add(pydicom.DataElement(d[kw].tag, d[kw].VR, d[kw].value))
                    rsp[kw]._value = d[kw].value          # exactly as stored
                else:
                    rsp.add(pydicom.DataElement(elem.tag, elem.VR, elem.value))
            rsp.RetrieveAETitle = self.ae_title
            yield 0xFF00, rsp

    # ---- move (own implementation: full control over responses)
    def resolve_move(self, ident):
        level = str(ident.QueryRetrieveLevel).strip()
        return level, self.select(ident, level)

    def send_stores(self, dest, datasets, originator_ae, msg_id):
        addr, port = self.destinations[dest]
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(addr, port, ae_title=dest)
        results = []
        if not assoc.is_established:
            return [None] * len(datasets)
        for d in datasets:
            st = assoc.send_c_store(d, originator_aet=originator_ae, originator_id=msg_id)
            results.append(st.Status if st and "Status" in st else None)
        assoc.release()
        return results

    def move_scp(self, service, req, context):
        cx_id = context.context_id
        ts = context.transfer_syntax[0]
        ident = decode(req.Identifier, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)

        def respond(status, remaining=None, completed=0, failed=0, warning=0, failed_uids=None, comment=None):
            rsp = C_MOVE()
            rsp.MessageIDBeingRespondedTo = req.MessageID
            rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
            rsp.Status = status
            if remaining is not None:
                rsp.NumberOfRemainingSuboperations = remaining
            rsp.NumberOfCompletedSuboperations = completed
            rsp.NumberOfFailedSuboperations = failed
            rsp.NumberOfWarningSuboperations = warning
            if comment:
                rsp.ErrorComment = comment
            if failed_uids:
                d = Dataset()
                d.FailedSOPInstanceUIDList = failed_uids
                rsp.Identifier = io.BytesIO(encode(d, ts.is_implicit_VR, ts.is_little_endian))
            service.dimse.send_msg(rsp, cx_id)

        dest = req.MoveDestination.strip() if isinstance(req.MoveDestination, str) else req.MoveDestination.decode().strip()
        if dest not in self.destinations:
            respond(0xA801)
            return
        if self.q.get("move_silence"):
            time.sleep(self.q["move_silence"])
        level, matched = self.resolve_move(ident)
        originator = service.assoc.requestor.ae_title
        if not matched:
            st = self.q.get("no_match_status", 0x0000)
            with self.lock:
                self.moves.append((level, [], 0, 0, st))
            respond(st, comment="no matching instances" if st != 0 else None)
            return
        skip = self.q.get("move_skip", set())
        to_send = [d for d in matched if str(d.SOPInstanceUID) not in skip]
        mode = self.q.get("move_mode", "normal")
        if mode == "final_first":
            # the final response first (all counted as completed), the C-STOREs later on
            # another association (as some PACS/proxies forward asynchronously)
            respond(0x0000, completed=len(matched))
            delay = self.q.get("final_first_delay", 3)

            def later():
                time.sleep(delay)
                self.send_stores(dest, to_send, originator, req.MessageID)
            t = threading.Thread(target=later, daemon=True)
            t.start()
            self.late_threads.append(t)
            with self.lock:
                self.moves.append((level, [str(d.SOPInstanceUID) for d in matched], len(to_send), len(matched), 0))
            return
        results = self.send_stores(dest, to_send, originator, req.MessageID)
        ok = sum(1 for r in results if r == 0)
        bad = [str(d.SOPInstanceUID) for d, r in zip(to_send, results) if r != 0]
        if mode == "lie":
            # counts claim every matched instance was sent
            respond(0x0000, completed=len(matched))
            with self.lock:
                self.moves.append((level, [str(d.SOPInstanceUID) for d in matched], ok, len(matched), 0))
            return
        # normal, with an honest account of what was not sent
        failed_uids = bad + [str(d.SOPInstanceUID) for d in matched if str(d.SOPInstanceUID) in skip]
        status = 0x0000 if not failed_uids else (0xB000 if ok else 0xA702)
        with self.lock:
            self.moves.append((level, [str(d.SOPInstanceUID) for d in matched], ok, ok, status))
        respond(status, completed=ok, failed=len(failed_uids), failed_uids=failed_uids or None)

    def start(self):
        pacs = self
        sc.QueryRetrieveServiceClass._move_scp = lambda service, req, context: pacs.move_scp(service, req, context)
        ae = AE(ae_title=self.ae_title)
        models = self.q.get("models", "study")
        finds, moves = [], []
        if models in ("study", "both"):
            finds.append(STUDY_FIND); moves.append(STUDY_MOVE)
        if models in ("patient", "both"):
            finds.append(PATIENT_FIND); moves.append(PATIENT_MOVE)
        for a in finds + moves + ["1.2.840.10008.1.1"]:
            ae.add_supported_context(a, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_requested_context(CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.network_timeout = 300
        ae.dimse_timeout = 300
        self.server = ae.start_server((HOST, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_FIND, self.handle_find)])
        return self

    def stop(self):
        for t in self.late_threads:
            t.join(timeout=30)
        self.server.shutdown()


def run(cmd, timeout=600, env=None):
    """Runs a command, returns (rc, stdout+stderr)."""
    p = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=timeout,
                       env=env)
    return p.returncode, p.stdout + p.stderr


def migrate(state, *args, timeout=600):
    exe = os.environ.get("MIGRATE", os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/strata-target"), "release", "strata-migrate"))
    return run([exe, "--state", state] + list(args), timeout=timeout)


def strata(*args, timeout=600):
    exe = os.environ.get("STRATA", os.path.join(os.environ.get("CARGO_TARGET_DIR", "/var/tmp/strata-target"), "release", "strata"))
    cfg = os.path.join(os.environ["DIR"], "strata.toml")
    return run([exe, "--config", cfg] + list(args), timeout=timeout)


def archive_sops(study_uid, port=None):
    """SOP Instance UIDs the archive lists for a study (IMAGE-level, hierarchical)."""
    st, series = find(q("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=""), port=port)
    out = set()
    for s in series:
        st, imgs = find(q("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=s.SeriesInstanceUID,
                          SOPInstanceUID=""), port=port)
        out |= {str(i.SOPInstanceUID) for i in imgs}
    return out


def sh(cmd):
    print("$", cmd, flush=True)
    rc, out = run(cmd)
    print(out.rstrip(), flush=True)
    return rc, out


# --------------------------------------------------------------------------------------
# Cold tier helpers (moto behind the fault proxy)
# --------------------------------------------------------------------------------------
MOTO_PORT = int(os.environ.get("MOTO_PORT", 12560 + N))
PROXY_PORT = int(os.environ.get("PROXY_PORT", 12580 + N))
BUCKET = "strata-cold"


def s3():
    import boto3
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{MOTO_PORT}", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def proxy(**mode):
    """Sets the fault proxy's behaviour (read per request)."""
    path = os.path.join(os.environ["DIR"], "proxy.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(mode, f)
    os.replace(tmp, path)


def cold_config(prefix="site1", endpoint_port=None, extra_cold="", extra_tiering="", path_style=True):
    return f"""
[cold]
url = "s3://{BUCKET}/{prefix}"
endpoint = "http://127.0.0.1:{endpoint_port or PROXY_PORT}"
region = "us-east-1"
allow_http = true
path_style = {str(path_style).lower()}
request_timeout = "10s"
{extra_cold}
[tiering]
enabled = true
hot_max_age = "30days"
scan_interval = "1h"
max_backoff = "2s"
orphan_grace = "1h"
{extra_tiering}
"""


def big_study(n=40, size=(512, 512), pid="PIDB01", day="20240801"):
    st, se = uid(), uid()
    return st, [make_ct(pid=pid, study=st, series=se, inst=i + 1, size=size, random_pixels=True, study_date=day)
                for i in range(n)]


def keys(prefix=""):
    c = s3()
    out = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def export_ok(study, expected_datasets, tag="export"):
    """Exports a study and compares each file's SOP UID and pixel bytes with the originals."""
    out = os.path.join(os.environ["DIR"], tag)
    shutil_rm(out)
    rc, txt = strata("export", study, "--out", out)
    got = {}
    for root, _, files in os.walk(out):
        for f in files:
            d = pydicom.dcmread(os.path.join(root, f))
            got[str(d.SOPInstanceUID)] = d.PixelData
    want = {str(d.SOPInstanceUID): d.PixelData for d in expected_datasets}
    same = sum(1 for k, v in want.items() if got.get(k) == v)
    return rc, txt, same, len(want)


def shutil_rm(p):
    import shutil
    shutil.rmtree(p, ignore_errors=True)


def cget(study_uid, port=None, ae_title="STRATA"):
    """C-GET a study (Study Root) with CT storage role; returns (final status, counts, failed uids, got sops)."""
    from pynetdicom import build_role
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as SR_GET
    got = []
    def on_store(event):
        got.append(str(event.dataset.SOPInstanceUID))
        return 0x0000
    ae = AE(ae_title="SYNTH_GET")
    ae.add_requested_context(SR_GET)
    ae.add_requested_context(CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(HOST, port or PORT, ae_title=ae_title, ext_neg=[build_role(CT, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    final, counts, failed = None, None, []
    for status, ds in assoc.send_c_get(q("STUDY", StudyInstanceUID=study_uid), SR_GET):
        if status and status.Status not in (0xFF00, 0xFF01):
            final = status.Status
            counts = tuple(status.get(k, None) for k in ("NumberOfCompletedSuboperations", "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"))
            comment = status.get("ErrorComment", None)
            if ds is not None and "FailedSOPInstanceUIDList" in ds:
                v = ds.FailedSOPInstanceUIDList
                failed = [str(x) for x in (v if isinstance(v, (list, pydicom.multival.MultiValue)) else [v])]
    assoc.release()
    return final, counts, failed, got
