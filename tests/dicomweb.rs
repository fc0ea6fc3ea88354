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
        "qido_all_levels_above",
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
        "wado_study_rendered",
        "wado_series_thumbnail",
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
    // one frame as a single application/octet-stream body (PS3.18 8.7.3.1), 64 x 64 x 16
    // bits; several frames singly is 406; a media range with q=0 is not acceptable
    let frame_url = format!("{url}/studies/{study}/series/{series}/instances/{sop}/frames/1");
    let single = run_ok(std::process::Command::new("curl").args([
        "-s",
        "-f",
        "-H",
        "Accept: Application/Octet-Stream",
        &frame_url,
    ]));
    assert_eq!(single.stdout.len(), 64 * 64 * 2);
    let (code, _) = curl(
        &["-H", "Accept: application/octet-stream"],
        &format!("{url}/studies/{study}/series/{series}/instances/{sop}/frames/1,1,2"),
    );
    assert!(code == 406 || code == 400, "{code}");
    let (code, _) = curl(
        &["-H", "Accept: image/png;q=0"],
        &format!("{frame_url}/rendered"),
    );
    assert_eq!(code, 406);
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
    // no boundary; refused before the body is read, the answer must still reach a
    // client that is sending a large body (the server reads what is left before it
    // closes: RFC 9112 section 9.6): several times, with 4 MiB behind the part
    let large = body(&[
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n",
        &bytes.repeat(8),
        b"\r\n--XyZ--\r\n",
    ]);
    for _ in 0..10 {
        let (code, text) = post("multipart/related; type=\"application/dicom\"", &large);
        assert_eq!(code, 400, "{text}");
    }
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
    // implicit VR is not for the web (PS3.18 8.7.3): refused before anything is sent
    let (code, text) = curl(
        &[
            "-H",
            "Accept: multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2",
        ],
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
    // the failed instance is named (PS3.18 10.5.3.2: ReferencedSOPInstanceUID, Type 1)
    let sop = strata::dicom::header::read_header_blocking(&file)
        .unwrap()
        .sop_instance_uid;
    assert!(text.contains(&sop), "{text}");
    assert_eq!(archive.total_instances(), 0, "nothing stored");
    // a good store still works afterwards, and the server answers
    let (code, text) = post(related, &whole);
    assert_eq!(code, 200, "{text}");
    assert_eq!(archive.total_instances(), 1);
    assert!(server.echo_ok());
    server.stop();
}

/// A throw-away Orthanc with its DICOMweb plugin (Debian `orthanc-dicomweb`), Strata
/// configured as its remote DICOMweb server `strata`; stopped when dropped.
pub(crate) struct OrthancWeb {
    pid: i32,
    pub(crate) api: String,
}

impl OrthancWeb {
    fn start(dir: &std::path::Path, strata_http: u16) -> OrthancWeb {
        OrthancWeb::start_with_token(dir, strata_http, None)
    }

    /// With `token`: Orthanc sends `Authorization: Bearer <token>` to Strata (the
    /// plugin's `HttpHeaders` of a server).
    pub(crate) fn start_with_token(
        dir: &std::path::Path,
        strata_http: u16,
        token: Option<&str>,
    ) -> OrthancWeb {
        let (dicom, http) = (free_port(), free_port());
        let server = serde_json::json!({
            "Url": format!("http://127.0.0.1:{strata_http}/dicom-web/"),
            "HttpHeaders": token
                .map(|t| serde_json::json!({ "Authorization": format!("Bearer {t}") }))
                .unwrap_or_else(|| serde_json::json!({})),
        });
        let extra = serde_json::json!({
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "Servers": { "strata": server } },
        })
        .to_string();
        run_ok(
            std::process::Command::new(repo_root().join("scripts/start-orthanc.sh"))
                .env("ORTHANC_EXTRA_JSON", extra)
                .arg(dir)
                .arg(dicom.to_string())
                .arg(http.to_string()),
        );
        let pid = std::fs::read_to_string(dir.join("orthanc.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        OrthancWeb {
            pid,
            api: format!("http://127.0.0.1:{http}"),
        }
    }

    /// POST `body` to an Orthanc REST route; (status, JSON answer).
    pub(crate) fn post(&self, route: &str, body: &str) -> (u16, serde_json::Value) {
        let (code, text) = curl(&["-X", "POST", "-d", body], &format!("{}{route}", self.api));
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub(crate) fn get(&self, route: &str) -> serde_json::Value {
        let (_, text) = curl(&[], &format!("{}{route}", self.api));
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for OrthancWeb {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
    }
}

/// The values of a DICOM JSON attribute as comparable JSON: every number as a float
/// (a DS of `1.0` is the JSON number 1.0 from Strata, as written, and 1 from Orthanc:
/// the same number), PN as its groups, recursively.
fn attribute_values(a: &serde_json::Value) -> serde_json::Value {
    fn norm(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Number(n) => serde_json::json!(n.as_f64()),
            serde_json::Value::Array(items) => items.iter().map(norm).collect(),
            serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), norm(v))).collect(),
            other => other.clone(),
        }
    }
    norm(&a.get("Value").cloned().unwrap_or(serde_json::Value::Null))
}

/// Orthanc's DICOMweb plugin, with Strata as its remote server: its QIDO finds our
/// studies, its `retrieve` pulls a whole study into Orthanc, its `stow` pushes a study
/// into Strata. Then the same study in both: QIDO and metadata JSON compared attribute
/// by attribute; the deliberate differences are the ones listed in
/// `docs/conformance-dicomweb.md` (RetrieveURL and BulkDataURI name each server, and
/// Orthanc adds SpecificCharacterSet to QIDO answers where Strata's JSON is UTF-8).
#[test]
fn orthanc_dicomweb_finds_pulls_and_pushes_through_strata_and_agrees_with_it() {
    let archive = Archive::new("dicomweb-orthanc");
    let dir = archive.dir.path().join("ct");
    run_ok(python("gen_ct.py").arg("--out").arg(&dir).args([
        "--studies",
        "2",
        "--instances",
        "3",
        "--rows",
        "32",
        "--cols",
        "32",
    ]));
    let a: Vec<PathBuf> = dcm_files(&dir.join("001"));
    let b: Vec<PathBuf> = dcm_files(&dir.join("002"));
    let study_a = strata::dicom::header::read_header_blocking(&a[0])
        .unwrap()
        .study_uid;
    let study_b = strata::dicom::header::read_header_blocking(&b[0])
        .unwrap()
        .study_uid;
    run_ok(archive.strata(&["import"]).args(&a));
    let server = archive.start();
    let orthanc = OrthancWeb::start(&archive.dir.path().join("orthanc"), server.http_port);

    // Orthanc's QIDO through Strata
    let (code, found) = orthanc.post("/dicom-web/servers/strata/get", r#"{"Uri": "/studies"}"#);
    assert_eq!(code, 200, "{found}");
    let uids: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["0020000D"]["Value"][0].as_str())
        .collect();
    assert_eq!(uids, vec![study_a.as_str()], "{found}");
    // Orthanc pulls study A (WADO-RS)
    let (code, pulled) = orthanc.post(
        "/dicom-web/servers/strata/retrieve",
        &format!(r#"{{"Resources": [{{"Study": "{study_a}"}}]}}"#),
    );
    assert_eq!(code, 200, "{pulled}");
    assert_eq!(orthanc.get("/statistics")["CountInstances"], 3);
    // Orthanc pushes study B (STOW-RS) after receiving it over its REST API
    for f in &b {
        let (code, _) = curl(
            &["-X", "POST", "--data-binary", &format!("@{}", f.display())],
            &format!("{}/instances", orthanc.api),
        );
        assert_eq!(code, 200);
    }
    let lookup = orthanc.post("/tools/lookup", &study_b).1;
    let orthanc_id = lookup[0]["ID"].as_str().unwrap().to_string();
    let (code, pushed) = orthanc.post(
        "/dicom-web/servers/strata/stow",
        &format!(r#"{{"Resources": ["{orthanc_id}"], "Synchronous": true}}"#),
    );
    assert_eq!(code, 200, "{pushed}");
    assert_eq!(archive.total_instances(), 6, "study B stowed into Strata");

    // the same study A, asked of both servers' own DICOMweb
    let ours_url = format!("http://127.0.0.1:{}/dicom-web", server.http_port);
    let theirs_url = format!("{}/dicom-web", orthanc.api);
    let json =
        |url: String| -> serde_json::Value { serde_json::from_str(&curl(&[], &url).1).unwrap() };
    let deliberate = ["00081190", "00080005", "7FE00010"];
    let compare = |what: &str, ours: &serde_json::Value, theirs: &serde_json::Value| {
        let (o, t) = (ours.as_object().unwrap(), theirs.as_object().unwrap());
        for (tag, value) in o {
            if deliberate.contains(&tag.as_str()) {
                continue;
            }
            if let Some(other) = t.get(tag) {
                assert_eq!(
                    attribute_values(value),
                    attribute_values(other),
                    "{what} {tag}: Strata {value} vs Orthanc {other}"
                );
                assert_eq!(value["vr"], other["vr"], "{what} {tag}");
            }
        }
    };
    let q = format!("/studies?StudyInstanceUID={study_a}");
    compare(
        "QIDO study",
        &json(format!("{ours_url}{q}"))[0],
        &json(format!("{theirs_url}{q}"))[0],
    );
    let ours = json(format!("{ours_url}/studies/{study_a}/metadata"));
    let theirs = json(format!("{theirs_url}/studies/{study_a}/metadata"));
    let by_sop = |list: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["00080018"]["Value"][0].as_str().unwrap().to_string(),
                    m.clone(),
                )
            })
            .collect()
    };
    let (ours, theirs) = (by_sop(&ours), by_sop(&theirs));
    assert_eq!(ours.len(), 3);
    for (sop, m) in &ours {
        let t = &theirs[sop];
        compare("metadata", m, t);
        // and neither leaves out what the other gives (bulk data aside)
        for tag in t.as_object().unwrap().keys() {
            if !deliberate.contains(&tag.as_str()) {
                assert!(
                    m.get(tag).is_some(),
                    "metadata {tag} only from Orthanc: {t}"
                );
            }
        }
    }
    server.stop();
}
