//! FHIR R4 (`/fhir`): every resource Strata emits validates with FHIR.js (npm `fhir`)
//! against R4; SMART's PyPI `fhirclient` finds a patient's studies by
//! `ImagingStudy?patient=…` and follows the Endpoint to WADO-RS; searches page; bad
//! requests get an OperationOutcome with a 4xx.

use crate::common::*;

pub(crate) fn get_json(url: &str) -> (u16, serde_json::Value) {
    let out = run(std::process::Command::new("curl").args(["-s", "-w", "\n%{http_code}", url]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// FHIR.js validates `resources` against R4 (unexpected properties are errors): each is
/// checked, none is invalid.
pub(crate) fn assert_valid_r4(resources: &[serde_json::Value]) {
    let mut validate = std::process::Command::new("node");
    validate
        .arg(peer_script("fhir_validate.js"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = validate.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            serde_json::Value::Array(resources.to_vec())
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(verdict["checked"], resources.len(), "{verdict}");
    assert_eq!(verdict["invalid"], serde_json::json!([]), "{verdict}");
}

#[test]
fn fhir_resources_validate_and_lead_a_fhir_client_to_pixels() {
    let archive = Archive::new("fhir");
    let dir = archive.dir.path().join("ct");
    run_ok(python("gen_ct.py").arg("--out").arg(&dir).args([
        "--studies",
        "3",
        "--instances",
        "2",
        "--rows",
        "32",
        "--cols",
        "32",
    ]));
    run_ok(archive.strata(&["import"]).arg(&dir));
    let server = archive.start();
    let base = format!("http://127.0.0.1:{}/fhir", server.http_port);

    // every kind of resource, gathered for the validator
    let mut resources = Vec::new();
    let (code, capability) = get_json(&format!("{base}/metadata"));
    assert_eq!(code, 200);
    assert_eq!(capability["fhirVersion"], "4.0.1");
    resources.push(capability);
    let (code, bundle) = get_json(&format!("{base}/ImagingStudy"));
    assert_eq!(code, 200, "{bundle}");
    assert_eq!(bundle["total"], 3, "{bundle}");
    let studies: Vec<serde_json::Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    resources.push(bundle.clone());
    let first = &studies[0];
    let study_id = first["id"].as_str().unwrap().to_string();
    let patient_ref = first["subject"]["reference"].as_str().unwrap().to_string();
    let patient_id = patient_ref.trim_start_matches("Patient/").to_string();
    assert_eq!(first["numberOfInstances"], 2, "{first}");
    assert_eq!(first["series"][0]["instance"].as_array().unwrap().len(), 2);
    assert_eq!(first["endpoint"][0]["reference"], "Endpoint/dicomweb");
    let (code, study) = get_json(&format!("{base}/ImagingStudy/{study_id}"));
    assert_eq!(code, 200);
    resources.push(study);
    let (code, patient) = get_json(&format!("{base}/{patient_ref}"));
    assert_eq!(code, 200, "{patient}");
    resources.push(patient);
    let (code, endpoint) = get_json(&format!("{base}/Endpoint/dicomweb"));
    assert_eq!(code, 200);
    assert_eq!(endpoint["connectionType"]["code"], "dicom-wado-rs");
    resources.push(endpoint);
    let (code, patients) = get_json(&format!("{base}/Patient?identifier={patient_id}"));
    assert_eq!(code, 200);
    assert_eq!(patients["total"], 1, "{patients}");
    resources.push(patients);
    // paging: one per page, the next link leads to the rest
    let (_, page) = get_json(&format!("{base}/ImagingStudy?_count=1"));
    assert_eq!(page["total"], 3);
    assert_eq!(page["entry"].as_array().unwrap().len(), 1);
    let next = page["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next link")["url"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, page2) = get_json(&next);
    assert_ne!(
        page2["entry"][0]["resource"]["id"],
        page["entry"][0]["resource"]["id"]
    );
    resources.push(page);
    resources.push(page2);

    assert_valid_r4(&resources);

    // fhirclient: the patient's studies, then from the Endpoint to WADO-RS
    let out = run_ok(python("fhir_check.py").args(["--base", &base, "--patient", &patient_id]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["studies"], serde_json::json!([study_id]), "{r}");
    assert_eq!(r["instances"], 2, "{r}");
    assert_eq!(r["endpoint_type"], "dicom-wado-rs", "{r}");
    assert_eq!(r["wado_status"], 200, "{r}");
    assert!(r["wado_bytes"].as_u64().unwrap() > 1000, "{r}");
    assert_eq!(r["by_identifier"], serde_json::json!([study_id]), "{r}");
    assert_eq!(r["by_started"], true, "{r}");
    assert_eq!(r["not_by_started"], true, "{r}");

    // bad requests: an OperationOutcome with a 4xx; the server goes on
    let (code, oo) = get_json(&format!("{base}/ImagingStudy?color=blue"));
    assert_eq!(code, 400);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    // R4 3.1.1.4: `Prefer: handling=lenient` has unknown parameters ignored (and left
    // out of the self link); without it they are refused, as above
    let out = run(std::process::Command::new("curl").args([
        "-s",
        "-H",
        "Prefer: handling=lenient",
        &format!("{base}/ImagingStudy?color=blue&modality=CT"),
    ]));
    let lenient: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lenient["resourceType"], "Bundle", "{lenient}");
    let own = lenient["link"][0]["url"].as_str().unwrap();
    assert!(
        own.contains("modality=CT") && !own.contains("color"),
        "{own}"
    );
    let (code, _) = get_json(&format!("{base}/ImagingStudy?started=yesterday"));
    assert_eq!(code, 400);
    let (code, oo) = get_json(&format!("{base}/ImagingStudy/1.2.3.4.5"));
    assert_eq!(code, 404);
    assert_eq!(oo["issue"][0]["code"], "not-found");
    let (code, _) = get_json(&format!("{base}/Patient"));
    assert_eq!(code, 400);
    // token and reference values are exact: C-FIND wildcards never reach other patients
    let (code, _) = get_json(&format!("{base}/ImagingStudy?patient=STRATA*"));
    assert_eq!(code, 400);
    let (code, _) = get_json(&format!("{base}/Patient?identifier=*"));
    assert_eq!(code, 400);
    let (code, _) = get_json(&format!("{base}/Patient/x2a")); // "*" in hex
    assert_eq!(code, 404);
    // a modality list with systems (R4 token list)
    let dcm = "http://dicom.nema.org/resources/ontology/DCM";
    let (code, found) = get_json(&format!("{base}/ImagingStudy?modality={dcm}|MR,{dcm}|CT"));
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["total"], 3, "{found}");
    let (code, _) = get_json(&format!("{base}/Endpoint/other"));
    assert_eq!(code, 404);
    // searches are audited as queries by a FHIR client
    let queries = archive.audit_records("query");
    assert!(
        queries.iter().any(|q| q["actor"]["service"] == "fhir"),
        "{queries:?}"
    );
    server.stop();
}
