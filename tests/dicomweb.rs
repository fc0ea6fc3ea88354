//! DICOMweb (PS3.18) against PyPI dicomweb-client: STOW-RS of generated CT and of
//! pydicom's valid samples, QIDO-RS at every level, WADO-RS of instances (byte-identical
//! to the stored objects: blake3 equals the id), studies and metadata; and bad requests,
//! each a 4xx with a reason, nothing stored half-way, the server serving on.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `curl` of `url` with extra arguments; (HTTP status, body).
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = run(std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// SOP Instance UID -> object id (served version), from `strata show --json`.
fn object_ids(archive: &Archive, study: &str) -> BTreeMap<String, String> {
    let out = run_ok(&mut archive.strata(&["show", study, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids = BTreeMap::new();
    for series in shown["series"].as_array().unwrap() {
        for i in series["instances"].as_array().unwrap() {
            let versions = i["versions"].as_array().unwrap();
            ids.insert(
                i["sop_instance_uid"].as_str().unwrap().to_string(),
                versions.last().unwrap()["id"].as_str().unwrap().to_string(),
            );
        }
    }
    ids
}

#[test]
fn dicomweb_client_stores_finds_and_retrieves_byte_identical_objects() {
    let archive = Archive::new("dicomweb");
    let dir = archive.dir.path().join("ct");
    run_ok(python("gen_ct.py").arg("--out").arg(&dir).args([
        "--instances",
        "3",
        "--rows",
        "64",
        "--cols",
        "64",
    ]));
    let ct: Vec<PathBuf> = dcm_files(&dir.join("001"));
    let study = strata::dicom::header::read_header_blocking(&ct[0])
        .unwrap()
        .study_uid;
    let server = archive.start();
    let url = format!("http://127.0.0.1:{}/dicom-web", server.http_port);
    let out = run_ok(
        python("dicomweb_check.py")
            .args(["--url", &url, "--stow"])
            .args(&ct),
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["stow_referenced"], 3, "{r}");
    assert_eq!(r["stow_failed"], 0, "{r}");
    assert_eq!(r["stow_all_referenced"], true, "{r}");
    for check in [
        "qido_wildcard",
        "qido_date_range",
        "qido_date_range_excludes",
        "qido_includefield",
        "wado_study_uids_ok",
        "wado_metadata_has_patient",
        "wado_metadata_no_pixels",
        "wado_frame_matches",
        "wado_bulkdata_matches",
        "wado_rendered_png",
        "wado_rendered_jpeg",
        "wado_rendered_viewport",
        "wado_rendered_not_blank",
        "wado_thumbnail",
    ] {
        assert_eq!(r[check], true, "{check}: {r}");
    }
    assert_eq!(r["qido_studies"], 1, "{r}");
    assert_eq!(r["qido_study_by_uid"], 1, "{r}");
    assert_eq!(r["qido_series"], 1, "{r}");
    assert_eq!(r["qido_instances"], 3, "{r}");
    assert_eq!(r["qido_all_instances"], 3, "{r}");
    assert_eq!(r["qido_limit"], 1, "{r}");
    assert_eq!(r["wado_study"], 3, "{r}");
    assert_eq!(r["wado_metadata"], 3, "{r}");
    // WADO-RS with transfer-syntax=* sends the stored object: its blake3 is its id
    let ids = object_ids(&archive, &study);
    assert_eq!(ids.len(), 3);
    for (sop, id) in &ids {
        assert_eq!(r["wado_hashes"][sop], id.as_str(), "{sop}: {r}");
    }
    // WADO-URI (PS3.18 9): the object as stored (its blake3 is its id), a JPEG by
    // default, a PNG when asked; malformed requests are 400
    let (sop, id) = ids.iter().next().unwrap();
    let series = {
        let out = run_ok(&mut archive.strata(&["show", sop, "--json"]));
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        shown["series_uid"].as_str().unwrap().to_string()
    };
    let wado = format!(
        "http://127.0.0.1:{}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}",
        server.http_port
    );
    let dcm = archive.dir.path().join("wado.dcm");
    let fetched = run(std::process::Command::new("curl")
        .args(["-s", "-f", "-o"])
        .arg(&dcm)
        .arg(format!("{wado}&contentType=application/dicom")));
    assert!(fetched.status.success());
    let b3 = run_ok(
        std::process::Command::new("b3sum")
            .arg("--no-names")
            .arg(&dcm),
    );
    assert_eq!(String::from_utf8_lossy(&b3.stdout).trim(), id.as_str());
    let jpeg = run_ok(std::process::Command::new("curl").args(["-s", "-f", &wado]));
    assert_eq!(&jpeg.stdout[..3], b"\xff\xd8\xff", "JPEG by default");
    let png = run_ok(std::process::Command::new("curl").args([
        "-s",
        "-f",
        &format!("{wado}&contentType=image/png&windowCenter=40&windowWidth=400&rows=16"),
    ]));
    assert_eq!(&png.stdout[..4], b"\x89PNG");
    let (code, text) = curl(&[], &wado.replace("&objectUID=", "&nothing="));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("objectUID"), "{text}");
    let (code, _) = curl(&[], &wado.replace("requestType=WADO", "requestType=XYZ"));
    assert_eq!(code, 400);
    let (code, _) = curl(&[], &format!("{wado}&anonymize=yes"));
    assert_eq!(code, 400);
    // every route counted under its template, with method and status (issue 13 item 4)
    let metrics = server.metrics();
    let counted = |route: &str, status: &str| {
        metrics.lines().any(|l| {
            l.starts_with("strata_http_requests_total")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{status}\""))
        })
    };
    assert!(counted("/dicom-web/studies", "200"), "{metrics}");
    assert!(counted("/wado", "400"), "{metrics}");
    assert!(counted(
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered",
        "200"
    ));
    assert!(metrics.contains("strata_http_request_duration_seconds_bucket"));
    // the stores are audited as web accesses
    let stores = archive.audit_records("store");
    assert_eq!(stores.len(), 3);
    assert!(
        stores.iter().all(|s| s["actor"]["kind"] == "web"),
        "{stores:?}"
    );
    assert!(stores.iter().all(|s| s["actor"]["service"] == "dicomweb"));

    // pydicom's valid samples, in their own syntaxes, through STOW-RS too
    let (valid, _) = pydicom_samples();
    let samples: Vec<PathBuf> = valid.iter().take(12).cloned().collect();
    let before = archive.total_instances();
    let out = run(python("dicomweb_check.py")
        .args(["--url", &url, "--stow"])
        .args(&samples));
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["stow_failed"], 0, "{r}");
    assert!(archive.total_instances() > before);
    server.stop();
}

/// Bad requests get a 4xx with a reason, store nothing half-way, and the server goes on.
#[test]
fn bad_dicomweb_requests_get_4xx_and_store_nothing() {
    let archive = Archive::new("dicomweb-bad");
    let server = archive.start();
    let base = format!("http://127.0.0.1:{}/dicom-web", server.http_port);
    let studies = format!("{base}/studies");
    let file = dcm_files(ct_study())[0].clone();
    let bytes = std::fs::read(&file).unwrap();
    let made = std::cell::Cell::new(0);
    let body = |parts: &[&[u8]]| -> PathBuf {
        made.set(made.get() + 1);
        let p = archive.dir.path().join(format!("body-{}", made.get()));
        std::fs::write(&p, parts.concat()).unwrap();
        p
    };
    let post = |ct: &str, path: &PathBuf| {
        curl(
            &[
                "-X",
                "POST",
                "-H",
                &format!("Content-Type: {ct}"),
                "--data-binary",
                &format!("@{}", path.display()),
            ],
            &studies,
        )
    };
    let related = "multipart/related; type=\"application/dicom\"; boundary=XyZ";
    // wrong Content-Type
    let whole = body(&[
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n",
        &bytes,
        b"\r\n--XyZ--\r\n",
    ]);
    let (code, text) = post("application/json", &whole);
    assert_eq!(code, 415, "{text}");
    // no boundary
    let (code, text) = post("multipart/related; type=\"application/dicom\"", &whole);
    assert_eq!(code, 400, "{text}");
    // a part cut short (no closing boundary): refused, not stored
    let cut = body(&[
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n",
        &bytes[..bytes.len() / 2],
    ]);
    let (code, text) = post(related, &cut);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("00081198"), "FailedSOPSequence: {text}");
    // a well-framed part holding half an object: refused with 0xC000, not stored
    let half = body(&[
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n",
        &bytes[..bytes.len() / 2],
        b"\r\n--XyZ--\r\n",
    ]);
    let (code, text) = post(related, &half);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("49152"), "FailureReason 0xC000: {text}");
    // garbage in place of a multipart body
    let garbage = body(&[b"this is not a multipart body at all"]);
    let (code, text) = post(related, &garbage);
    assert!((400..500).contains(&code), "{code} {text}");
    assert_eq!(archive.total_instances(), 0, "nothing stored half-way");
    // queries and retrievals the archive cannot answer
    let (code, text) = curl(&[], &format!("{studies}?limit=abc"));
    assert_eq!(code, 400, "{text}");
    let (code, text) = curl(&[], &format!("{studies}?NotAKeyword=1"));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("NotAKeyword"), "{text}");
    let (code, _) = curl(&[], &format!("{studies}/1.2.3.4.5"));
    assert_eq!(code, 404);
    let (code, _) = curl(&[], &format!("{studies}/1.2.3.4.5/metadata"));
    assert_eq!(code, 404);
    let (code, text) = curl(
        &["-H", "Accept: image/png"],
        &format!("{studies}/1.2.3.4.5"),
    );
    assert_eq!(code, 406, "{text}");
    // an instance of another study than the URL names (PS3.18 10.5.1): refused with
    // 0xA900 before anything is stored
    let (code, text) = curl(
        &[
            "-X",
            "POST",
            "-H",
            &format!("Content-Type: {related}"),
            "--data-binary",
            &format!("@{}", whole.display()),
        ],
        &format!("{studies}/1.2.3.4.5"),
    );
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("43264"), "FailureReason 0xA900: {text}");
    assert_eq!(archive.total_instances(), 0, "nothing stored");
    // a good store still works afterwards, and the server answers
    let (code, text) = post(related, &whole);
    assert_eq!(code, 200, "{text}");
    assert_eq!(archive.total_instances(), 1);
    assert!(server.echo_ok());
    server.stop();
}
