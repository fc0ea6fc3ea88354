//! The zero-footprint viewer by URL: Debian's headless Chromium (Selenium through
//! Debian's chromedriver) opens `/viewer?StudyInstanceUIDs=<uid>` and the study's image
//! is drawn — the viewport canvas's pixels are not blank — read by OHIF over Strata's
//! own DICOMweb; the screenshots are kept in the test's output. The viewer's files never
//! shadow an API path, and turning the viewer off or lacking its files is said plainly.

use crate::common::*;
use std::path::PathBuf;

#[test]
fn the_viewer_opens_a_study_by_url_and_draws_it() {
    let archive = Archive::new("viewer");
    let ct = dcm_files(ct_study());
    run_ok(archive.strata(&["import"]).args(&ct[..4]));
    let study = strata::dicom::header::read_header_blocking(&ct[0])
        .unwrap()
        .study_uid;
    let server = archive.start();
    let base = format!("http://127.0.0.1:{}", server.http_port);
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer-screenshots");
    let checked = run_ok(python("viewer_check.py").args([
        "--url",
        &format!("{base}/viewer?StudyInstanceUIDs={study}"),
        "--out",
        out.to_str().unwrap(),
    ]));
    let r: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    eprintln!("viewer screenshots in {}", out.display());
    assert_eq!(r["drawn"], true, "{r} (screenshots in {})", out.display());
    assert!(out.join("viewport.png").exists());
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    // the viewer read the study over DICOMweb, audited as web retrievals
    let retrieves = archive.audit_records("retrieve");
    assert!(
        retrieves
            .iter()
            .any(|r| r["actor"]["service"] == "dicomweb"),
        "{retrieves:?}"
    );
    // an unknown API path stays a 404, never the viewer's index.html
    assert_eq!(
        http_get(server.http_port, "/dicom-web/nothing-here").map(|r| r.0),
        Some(404)
    );
    assert_eq!(
        http_get(server.http_port, "/fhir/Nothing/1").map(|r| r.0),
        Some(404)
    );
    server.stop();
}

#[test]
fn a_viewer_turned_off_or_not_installed_is_said_plainly() {
    let off = Archive::with_config("viewer-off", "\n[web]\nviewer = false\n");
    let server = off.start();
    assert_eq!(
        http_get(server.http_port, "/viewer").map(|r| r.0),
        Some(404)
    );
    server.stop();
    let missing = Archive::with_config(
        "viewer-missing",
        "\n[web]\nviewer_dir = \"/nonexistent/strata-viewer\"\n",
    );
    let server = missing.start();
    let (code, body) = http_get(server.http_port, "/viewer").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("install-viewer.sh"), "{body}");
    // the APIs are untouched
    assert_eq!(
        http_get(server.http_port, "/healthz").map(|r| r.0),
        Some(200)
    );
    server.stop();
}
