#!/usr/bin/env python3
"""Exercise a DICOMweb server with PyPI dicomweb-client (its Python API), and report what
happened as one JSON object on stdout. Checks made here are recorded as booleans; the
Rust test asserts them, so a failure names what went wrong.

Usage: dicomweb_check.py --url http://127.0.0.1:PORT/dicom-web --stow FILE... [--study UID]

1. STOW-RS: every FILE in one request (dicomweb-client `store_instances`).
2. QIDO-RS: studies, series, instances; a wildcard and a date range; includefield.
3. WADO-RS: each stored instance with transfer-syntax=* (raw multipart, so that the bytes
   of each part can be hashed with blake3: they must equal the stored object's id, which
   the caller compares), and the study and its metadata through dicomweb-client.
"""

import argparse
import json
import re

import blake3
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient


def parts(response):
    """The parts of a multipart/related response, split on its boundary."""
    ct = response.headers["Content-Type"]
    boundary = re.search(r'boundary="?([^";]+)"?', ct).group(1).encode()
    out = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        out.append((head.decode(), body[:-2] if body.endswith(b"\r\n") else body))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--stow", nargs="+", required=True)
    args = ap.parse_args()
    c = DICOMwebClient(url=args.url)
    report = {}

    # 1. STOW-RS
    datasets = [pydicom.dcmread(f) for f in args.stow]
    answer = c.store_instances(datasets)
    stored = [str(i.ReferencedSOPInstanceUID) for i in answer.get("ReferencedSOPSequence", [])]
    report["stow_referenced"] = len(stored)
    report["stow_failed"] = len(answer.get("FailedSOPSequence", []))
    wanted = {str(d.SOPInstanceUID) for d in datasets}
    report["stow_all_referenced"] = wanted <= set(stored)

    # 2. QIDO-RS
    ds = datasets[0]
    study = str(ds.StudyInstanceUID)
    studies = c.search_for_studies()
    report["qido_studies"] = len(studies)
    found = c.search_for_studies(search_filters={"StudyInstanceUID": study})
    report["qido_study_by_uid"] = len(found)
    pid = str(ds.PatientID)
    report["qido_wildcard"] = len(
        c.search_for_studies(search_filters={"PatientID": pid[:3] + "*"})
    ) >= 1
    date = str(ds.get("StudyDate", ""))
    if date:
        report["qido_date_range"] = any(
            s["0020000D"]["Value"][0] == study
            for s in c.search_for_studies(search_filters={"StudyDate": f"{date}-{date}"})
        )
        report["qido_date_range_excludes"] = not any(
            s["0020000D"]["Value"][0] == study
            for s in c.search_for_studies(search_filters={"StudyDate": "19000101-19000102"})
        )
    with_desc = c.search_for_studies(
        search_filters={"StudyInstanceUID": study}, fields=["StudyDescription"]
    )
    report["qido_includefield"] = "00081030" in with_desc[0]
    series = c.search_for_series(study)
    report["qido_series"] = len(series)
    se = series[0]["0020000E"]["Value"][0]
    instances = c.search_for_instances(study, se)
    report["qido_instances"] = len(instances)
    every = c.search_for_instances()
    report["qido_all_instances"] = len(every)
    # All Series / All Instances carry the levels above (PS3.18 10.6.3.3)
    report["qido_all_levels_above"] = all(
        "0020000D" in x and "00100020" in x for x in c.search_for_series()) and all(
        "0020000E" in x and "00080060" in x and "0020000D" in x for x in every)
    report["qido_limit"] = len(c.search_for_studies(limit=1))

    # 3. WADO-RS: raw bytes of each instance as stored
    hashes = {}
    for d in datasets:
        url = (f"{args.url}/studies/{d.StudyInstanceUID}/series/{d.SeriesInstanceUID}"
               f"/instances/{d.SOPInstanceUID}")
        r = requests.get(url, headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        r.raise_for_status()
        p = parts(r)
        hashes[str(d.SOPInstanceUID)] = blake3.blake3(p[0][1]).hexdigest() if p else None
    report["wado_hashes"] = hashes
    whole = c.retrieve_study(study)
    report["wado_study"] = len(whole)
    report["wado_study_uids_ok"] = all(str(x.StudyInstanceUID) == study for x in whole)
    meta = c.retrieve_study_metadata(study)
    report["wado_metadata"] = len(meta)
    report["wado_metadata_has_patient"] = all("00100020" in m for m in meta)
    report["wado_metadata_no_pixels"] = all("7FE00010" not in m or "BulkDataURI" in m["7FE00010"] for m in meta)

    # 4. frames, bulk data, rendered and thumbnail of the first instance with pixels
    d = next((x for x in datasets if "PixelData" in x), None)
    if d is not None:
        st, se, sop = str(d.StudyInstanceUID), str(d.SeriesInstanceUID), str(d.SOPInstanceUID)
        expected = d.pixel_array
        frames = c.retrieve_instance_frames(st, se, sop, frame_numbers=[1])
        first = expected if int(d.get("NumberOfFrames", 1)) == 1 else expected[0]
        report["wado_frame_matches"] = len(frames) == 1 and frames[0] == first.astype(first.dtype.newbyteorder("<")).tobytes()
        m = next(x for x in meta if x["00080018"]["Value"][0] == sop) if st == study else None
        if m is not None and "7FE00010" in m:
            bulk = c.retrieve_bulkdata(m["7FE00010"]["BulkDataURI"])
            report["wado_bulkdata_matches"] = bulk[0] == expected.astype(expected.dtype.newbyteorder("<")).tobytes()
        png = c.retrieve_instance_rendered(st, se, sop, media_types=("image/png",))
        report["wado_rendered_png"] = png[:8] == b"\x89PNG\r\n\x1a\n"
        jpeg = c.retrieve_instance_rendered(st, se, sop, params={"window": "40,400", "viewport": "32,32"})
        report["wado_rendered_jpeg"] = jpeg[:3] == b"\xff\xd8\xff"
        from PIL import Image
        import io
        img = Image.open(io.BytesIO(jpeg))
        report["wado_rendered_viewport"] = max(img.size) <= 32
        extrema = Image.open(io.BytesIO(png)).convert("L").getextrema()
        report["wado_rendered_not_blank"] = extrema[0] != extrema[1]
        thumb = requests.get(f"{args.url}/studies/{st}/series/{se}/instances/{sop}/thumbnail")
        report["wado_thumbnail"] = thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
        # study rendered: one JPEG part per instance; series thumbnail: one image
        r = requests.get(f"{args.url}/studies/{st}/rendered")
        images = parts(r) if r.status_code == 200 else []
        count = sum(1 for x in datasets if str(x.StudyInstanceUID) == st)
        report["wado_study_rendered"] = len(images) == count and all(
            b[:3] == b"\xff\xd8\xff" for _, b in images)
        t = requests.get(f"{args.url}/studies/{st}/series/{se}/thumbnail", headers={"Accept": "image/png"})
        report["wado_series_thumbnail"] = t.status_code == 200 and t.content[:4] == b"\x89PNG"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
