#!/usr/bin/env python3
"""Find a patient's imaging over FHIR R4 with SMART's `fhirclient`, then follow the
ImagingStudy's Endpoint to WADO-RS, as an EHR would. Prints one JSON object.

Usage: fhir_check.py --base http://127.0.0.1:PORT/fhir --patient ID
"""

import argparse
import json

import requests
from fhirclient import client
from fhirclient.models.endpoint import Endpoint
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.patient import Patient


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--patient", required=True)
    args = ap.parse_args()
    smart = client.FHIRClient(settings={"app_id": "strata-test", "api_base": args.base})
    report = {}
    patient = Patient.read(args.patient, smart.server)
    report["patient_family"] = patient.name[0].family if patient.name else None
    studies = ImagingStudy.where(struct={"patient": args.patient}).perform_resources(smart.server)
    report["studies"] = [s.id for s in studies]
    report["series"] = sum(len(s.series or []) for s in studies)
    report["instances"] = sum(s.numberOfInstances or 0 for s in studies)
    # from FHIR to pixels: the Endpoint's address, then WADO-RS of the first instance
    study = studies[0]
    ref = study.endpoint[0].reference.split("/")[-1]
    endpoint = Endpoint.read(ref, smart.server)
    report["endpoint_type"] = endpoint.connectionType.code
    series = study.series[0]
    instance = series.instance[0]
    url = (f"{endpoint.address}/studies/{study.id}/series/{series.uid}"
           f"/instances/{instance.uid}")
    r = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    report["wado_status"] = r.status_code
    report["wado_bytes"] = len(r.content)
    # the same study by its identifier, and by date and modality
    by_uid = ImagingStudy.where(struct={"identifier": f"urn:oid:{study.id}"}).perform_resources(smart.server)
    report["by_identifier"] = [s.id for s in by_uid]
    started = study.started.isostring if study.started else None
    if started:
        report["by_started"] = study.id in [s.id for s in ImagingStudy.where(
            struct={"started": f"ge{started}", "modality": series.modality.code}).perform_resources(smart.server)]
        report["not_by_started"] = study.id not in [s.id for s in ImagingStudy.where(
            struct={"started": "lt1990-01-01"}).perform_resources(smart.server)]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
