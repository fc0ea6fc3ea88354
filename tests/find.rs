//! C-FIND SCP against DCMTK findscu: both information models, all four levels,
//! wildcards, date ranges, UID lists, computed attributes, and refusals.

use crate::common::*;
use std::path::PathBuf;
use strata::dicom::header::read_header_blocking;

/// Runs findscu with the given model flag (`-S` study root, `-P` patient root) and keys;
/// returns (number of pending responses, whole output).
pub(crate) fn findscu(port: u16, model: &str, keys: &[&str]) -> (usize, String) {
    let mut cmd = dcmtk("findscu");
    cmd.args(["-v", "-aec", "STRATA", model]);
    for k in keys {
        cmd.arg("-k").arg(k);
    }
    cmd.arg("127.0.0.1").arg(port.to_string());
    let out = run(&mut cmd);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let pending = text
        .lines()
        .filter(|l| l.contains("Find Response:") && l.contains("(Pending)"))
        .count();
    (pending, text)
}

/// The values findscu printed for `keyword`, in order.
pub(crate) fn values(text: &str, keyword: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.trim_end().ends_with(keyword))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.trim().to_string()))
        .collect()
}

#[test]
fn findscu_queries_every_level_of_both_models() {
    let archive = Archive::new("find");
    let ct: Vec<PathBuf> = dcm_files(ct_study());
    let (valid, _) = pydicom_samples();
    let mut files = ct.clone();
    files.extend(valid.iter().take(30).cloned());
    run(archive.strata(&["import"]).args(&files));
    let server = archive.start();
    let port = server.dicom_port;
    let ct_attrs = read_header_blocking(&ct[0]).unwrap();
    let studies = archive.ls_json();
    let total_studies = studies.as_array().unwrap().len();
    assert!(total_studies > 3);

    // STUDY level, universal match: every study, with computed attributes
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "NumberOfStudyRelatedInstances",
        ],
    );
    assert_eq!(n, total_studies, "{text}");

    // by PatientID (secondary index), with the computed counts and modalities
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("PatientID={}", ct_attrs.patient_id),
            "StudyInstanceUID",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "PatientName",
            "AccessionNumber",
        ],
    );
    assert_eq!(n, 1, "{text}");
    assert_eq!(
        values(&text, "StudyInstanceUID"),
        vec![ct_attrs.study_uid.clone()]
    );
    assert_eq!(
        values(&text, "NumberOfStudyRelatedInstances"),
        vec![ct.len().to_string()]
    );
    assert_eq!(
        values(&text, "NumberOfStudyRelatedSeries"),
        vec!["1".to_string()]
    );
    assert_eq!(values(&text, "ModalitiesInStudy"), vec!["CT".to_string()]);
    assert_eq!(
        values(&text, "AccessionNumber"),
        vec![ct_attrs.accession_number.clone()]
    );

    // by AccessionNumber, by exact date, by a date range that contains it and one that does not
    let (n, _) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("AccessionNumber={}", ct_attrs.accession_number),
        ],
    );
    assert_eq!(n, 1);
    let (n, _) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyDate={}", ct_attrs.study_date),
            &format!("PatientID={}", ct_attrs.patient_id),
        ],
    );
    assert_eq!(n, 1);
    let year: i32 = ct_attrs.study_date[..4].parse().unwrap();
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyDate={}0101-{}1231", year, year),
            "StudyInstanceUID",
        ],
    );
    assert!(
        values(&text, "StudyInstanceUID").contains(&ct_attrs.study_uid),
        "{text}"
    );
    assert!(n >= 1);
    let (_, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyDate=-{}1231", year - 1),
            "StudyInstanceUID",
        ],
    );
    assert!(!values(&text, "StudyInstanceUID").contains(&ct_attrs.study_uid));

    // wildcards, and PN case-insensitively
    let name = ct_attrs.patient_name.to_lowercase();
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("PatientName={}*", &name[..3]),
            "StudyInstanceUID",
        ],
    );
    assert!(
        n >= 1 && values(&text, "StudyInstanceUID").contains(&ct_attrs.study_uid),
        "{text}"
    );
    let (n, _) = findscu(
        port,
        "-S",
        &["QueryRetrieveLevel=STUDY", "PatientName=NOBODY*"],
    );
    assert_eq!(n, 0);

    // a UID list of two studies
    let other = studies
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["study_uid"].as_str().unwrap().to_string())
        .find(|u| *u != ct_attrs.study_uid)
        .unwrap();
    let (n, _) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={}\\{}", ct_attrs.study_uid, other),
        ],
    );
    assert_eq!(n, 2);

    // SERIES and IMAGE levels
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={}", ct_attrs.study_uid),
            "SeriesInstanceUID",
            "Modality",
            "NumberOfSeriesRelatedInstances",
        ],
    );
    assert_eq!(n, 1);
    assert_eq!(
        values(&text, "SeriesInstanceUID"),
        vec![ct_attrs.series_uid.clone()]
    );
    assert_eq!(
        values(&text, "NumberOfSeriesRelatedInstances"),
        vec![ct.len().to_string()]
    );
    let (n, _) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={}", ct_attrs.study_uid),
            &format!("SeriesInstanceUID={}", ct_attrs.series_uid),
            "SOPInstanceUID",
        ],
    );
    assert_eq!(n, ct.len());
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={}", ct_attrs.study_uid),
            &format!("SeriesInstanceUID={}", ct_attrs.series_uid),
            &format!("SOPInstanceUID={}", ct_attrs.sop_instance_uid),
            "InstanceNumber",
        ],
    );
    assert_eq!(n, 1);
    assert_eq!(
        values(&text, "InstanceNumber"),
        vec![ct_attrs.instance_number.clone()]
    );

    // Patient Root: PATIENT level with computed counts, then STUDY under the patient
    let (n, text) = findscu(
        port,
        "-P",
        &[
            "QueryRetrieveLevel=PATIENT",
            &format!("PatientID={}", ct_attrs.patient_id),
            "PatientName",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedInstances",
        ],
    );
    assert_eq!(n, 1, "{text}");
    assert_eq!(
        values(&text, "NumberOfPatientRelatedInstances"),
        vec![ct.len().to_string()]
    );
    let (n, _) = findscu(
        port,
        "-P",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("PatientID={}", ct_attrs.patient_id),
            "StudyInstanceUID",
        ],
    );
    assert_eq!(n, 1);

    // refusals: IMAGE without its series, no level at all; the server keeps serving
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={}", ct_attrs.study_uid),
        ],
    );
    assert_eq!(n, 0);
    assert!(
        text.contains("Final Find Response (Error: DataSetDoesNotMatchSOPClass)"),
        "{text}"
    );
    let (n, _) = findscu(port, "-S", &["PatientID=X"]);
    assert_eq!(n, 0);
    assert!(server.echo_ok());
    server.stop();
}

/// A C-CANCEL in the middle of a large result stream stops it with 0xFE00 (Cancel), long
/// before all matches were sent, and the association goes on to release. Read to the
/// end, the same search delivers every match once.
#[test]
fn c_cancel_stops_a_streaming_c_find() {
    use strata::index::{NewObject, Provenance};
    let archive = Archive::new("find-cancel");
    // an index of 20,000 studies, written directly (this test is about the stream), in
    // whichever index the archive's configuration names
    {
        let config = strata::config::Config::load(Some(&archive.config)).unwrap();
        let index = strata::storage::open_index(&config, true).unwrap();
        let mut batch = Vec::new();
        for s in 0..20_000 {
            let uid = format!("1.2.826.0.1.3680043.9.2000.{s}");
            batch.push(NewObject {
                id: strata_tiers::ObjectId::of_bytes(uid.as_bytes()),
                size: 1,
                attrs: strata::dicom::header::InstanceAttrs {
                    patient_id: format!("P{s}"),
                    study_uid: uid.clone(),
                    series_uid: format!("{uid}.1"),
                    sop_instance_uid: format!("{uid}.1.1"),
                    sop_class_uid: CT_IMAGE_STORAGE.into(),
                    transfer_syntax_uid: EXPLICIT_VR_LE.into(),
                    ..Default::default()
                },
                dataset: None,
                metadata: None,
                replicate: false,
                provenance: Provenance {
                    received_at_ms: 0,
                    calling_ae: "TEST".into(),
                    source: String::new(),
                    node: String::new(),
                },
            });
            if batch.len() == 5000 {
                index.commit(&batch).unwrap();
                batch.clear();
            }
        }
    }
    std::fs::create_dir_all(archive.data_dir()).unwrap();
    std::fs::write(archive.data_dir().join("clean-shutdown"), b"").unwrap();
    let server = archive.start();
    // read to the end, every match arrives once: the search hands them over in batches
    // once the reader falls behind (src/archive/find.rs), and DCMTK reads each pending
    // response from one P-DATA-TF of two PDVs
    let (pending, text) = findscu(
        server.dicom_port,
        "-S",
        &["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
    );
    assert_eq!(pending, 20_000);
    let mut uids = values(&text, "StudyInstanceUID");
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 20_000, "each study once");
    let out = run_ok(python("find_cancel.py").args([
        "--port",
        &server.dicom_port.to_string(),
        "--after",
        "3",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["final_status"].as_u64(), Some(0xFE00), "{v}");
    let pending = v["pending"].as_u64().unwrap();
    assert!((3..20_000).contains(&pending), "cancelled mid-stream: {v}");
    assert!(server.echo_ok());
    server.stop();
}

/// Relational queries (extended negotiation): with them, an IMAGE-level query may name
/// only study-level keys; without them, it is refused (hierarchical model).
#[test]
fn relational_queries_when_negotiated() {
    let archive = Archive::new("find-relational");
    let ct: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(10).collect();
    run(archive.strata(&["import"]).args(&ct));
    let server = archive.start();
    let attrs = read_header_blocking(&ct[0]).unwrap();
    let port = server.dicom_port.to_string();
    let find = |relational: bool, keys: &[&str]| -> serde_json::Value {
        let mut cmd = python("find_relational.py");
        cmd.args(["--port", &port]);
        if relational {
            cmd.arg("--relational");
        }
        cmd.args(keys);
        serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap()
    };
    let keys = [
        "--level",
        "IMAGE",
        &format!("PatientID={}", attrs.patient_id),
        "SOPInstanceUID=",
        "Modality=CT",
        "StudyInstanceUID=",
    ];
    let related = find(true, &keys);
    assert_eq!(related["status"], 0, "{related}");
    let matches = related["matches"].as_array().unwrap();
    assert_eq!(matches.len(), ct.len(), "{related}");
    assert!(matches
        .iter()
        .all(|m| m["StudyInstanceUID"] == attrs.study_uid.as_str()));
    let hierarchical = find(false, &keys);
    assert_eq!(hierarchical["status"], 0xA900, "{hierarchical}");
    assert!(hierarchical["matches"].as_array().unwrap().is_empty());
    server.stop();
}

/// Issue 11 item 1 (PS3.5 §6.1, Annexes H, I, J): every file of pydicom's
/// `charset_files` with a patient name is stored and listed with the name pydicom decodes
/// (an independent decoder), and found by a pynetdicom C-FIND written in the file's own
/// character set and in UTF-8; answers carry ISO_IR 192. The field cases: a Latin-1 query
/// (`Häb*`) finds a Latin-1 name; a GB18030 query for another two-character name does
/// not match (it used to: only the length was compared).
#[test]
fn names_in_every_character_set_are_stored_listed_and_found() {
    let archive = Archive::new("find-charsets");
    let script = "import json\nfrom pydicom.data import get_charset_files\nimport pydicom\nout=[]\nfor f in sorted(get_charset_files('*.dcm')):\n    d=pydicom.dcmread(f)\n    if 'PatientName' not in d or not str(d.PatientName):\n        continue\n    cs=d.get('SpecificCharacterSet','')\n    cs='\\\\'.join(cs) if not isinstance(cs,str) else cs\n    out.append({'path':f,'id':str(d.PatientID),'name':str(d.PatientName),'charset':cs})\nprint(json.dumps(out, ensure_ascii=False))";
    let out = run_ok(std::process::Command::new("python3").args(["-c", script]));
    let files: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(files.len() >= 12, "pydicom's charset files: {files:?}");
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    let imported = run(archive.strata(&["import", "--json"]).args(&paths));
    let report: serde_json::Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert!(
        report["rejected"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // listed with pydicom's decoding, for every patient ID
    let listed = archive.ls_json();
    let name_of = |id: &str| -> Vec<String> {
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["patient_id"] == id)
            .map(|s| s["patient_name"].as_str().unwrap().to_string())
            .collect()
    };
    for f in &files {
        let (id, name) = (f["id"].as_str().unwrap(), f["name"].as_str().unwrap());
        assert!(
            name_of(id).iter().any(|n| n == name),
            "{}: listed {:?}, pydicom reads {name:?}",
            f["path"],
            name_of(id)
        );
    }

    let server = archive.start();
    let find = |charset: &str, name: &str| -> Vec<serde_json::Value> {
        let out = run_ok(python("find_charset.py").args([
            "--port",
            &server.dicom_port.to_string(),
            "--charset",
            charset,
            "--name",
            name,
        ]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for f in &files {
        let (id, name, charset) = (
            f["id"].as_str().unwrap(),
            f["name"].as_str().unwrap(),
            f["charset"].as_str().unwrap(),
        );
        for query_charset in [charset, "ISO_IR 192"] {
            let found = find(query_charset, name);
            assert!(
                found
                    .iter()
                    .any(|m| m["patient_id"] == id && m["patient_name"] == name),
                "{} queried in {query_charset:?} for {name:?}: {found:?}",
                f["path"]
            );
            assert!(
                found.iter().all(|m| m["charset"] == "ISO_IR 192"),
                "{found:?}"
            );
        }
    }
    // the field cases
    let latin = find("ISO_IR 100", "Äne*");
    assert!(
        latin.iter().any(|m| m["patient_id"] == "SCSGERM"),
        "{latin:?}"
    );
    let other = find("GB18030", "Wang^XiaoDong=王^小明");
    assert!(
        !other.iter().any(|m| m["patient_id"] == "X2EXAMPLE"),
        "a different ideographic name must not match: {other:?}"
    );
    let ideographic = find("ISO_IR 192", "山田^太郎");
    assert!(
        ideographic.iter().any(|m| m["patient_id"] == "H31EXAMPLE"),
        "{ideographic:?}"
    );
    server.stop();
}

/// Issue 11 item 3: C-FIND answers in the transfer syntax of the presentation context
/// they answer on (PS3.7 §9.3) — implicit and explicit VR little endian, explicit VR big
/// endian, deflated — so that a requester proposing only one of them reads the same
/// matches (pynetdicom decodes each in its syntax); and a requester proposing only a
/// compressed syntax (JPEG baseline) is answered in explicit VR little endian.
#[test]
fn answers_come_in_the_syntax_of_their_presentation_context() {
    let archive = Archive::new("find-syntaxes");
    let ct: Vec<std::path::PathBuf> = dcm_files(ct_study()).into_iter().take(1).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let attrs = strata::dicom::header::read_header_blocking(&ct[0]).unwrap();
    let server = archive.start();
    let out = run_ok(python("find_in_syntax.py").args(["--port", &server.dicom_port.to_string()]));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for line in &lines {
        assert_eq!(line["accepted"], true, "{line}");
        assert_eq!(
            line["matches"],
            serde_json::json!([[attrs.patient_id, attrs.study_uid, attrs.patient_name]]),
            "{line}"
        );
    }
    assert!(server.echo_ok());
    server.stop();
}

/// Issue 11 field case (PS3.4 C.2.2.2.6, PS3.5 6.2.2): sequence keys — an empty sequence,
/// one empty item, an item with a universal key — in explicit and implicit VR are
/// universal: the study matches (0xFF00 then 0x0000; implicit VR used to fail with
/// 0xA900), and they come back as SQ or not at all, never as UN. A UR return key
/// (RetrieveURL) comes back as UR.
#[test]
fn sequence_keys_are_universal_and_never_come_back_as_un() {
    let archive = Archive::new("find-sequence-keys");
    let ct: Vec<std::path::PathBuf> = dcm_files(ct_study()).into_iter().take(1).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = strata::dicom::header::read_header_blocking(&ct[0])
        .unwrap()
        .study_uid;
    let server = archive.start();
    let out = run_ok(python("find_sequence_keys.py").args([
        "--port",
        &server.dicom_port.to_string(),
        "--study",
        &study,
    ]));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for line in &lines {
        assert_eq!(line["statuses"], serde_json::json!([0xFF00, 0]), "{line}");
        let vrs = line["vrs"].as_array().unwrap();
        assert_eq!(vrs.len(), 1, "{line}");
        for vr in vrs[0].as_array().unwrap() {
            assert!(
                vr.is_null() || vr == "SQ" || vr == "UR",
                "returned as SQ, UR or not at all, never UN: {line}"
            );
        }
    }
    assert_eq!(lines[4]["vrs"], serde_json::json!([["UR"]]), "{}", lines[4]);
    server.stop();
}

/// One JSON value per line of a peer script's output.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Issue 11 field case: one StudyInstanceUID sent twice under different PatientIDs (P601
/// with three instances, then P602 with two in another series, both over DCMTK storescu,
/// both acknowledged). Neither patient's images may vanish from that patient's queries
/// (PS3.4 C.4.1.2.2: matching on PatientID; PS3.3 C.7.2.1: a study has one patient, so
/// this is a conflict): each PatientID finds the study with its own instances and
/// retrieves only those, `strata ls` and `show` flag the conflict, it is logged, counted
/// and audited.
#[test]
fn a_study_sent_under_two_patients_stays_findable_under_each_and_is_flagged() {
    let archive = Archive::new("patient-conflict");
    let dir = archive.dir.path().join("ct");
    run_ok(python("gen_ct.py").arg("--out").arg(&dir).args([
        "--instances",
        "5",
        "--rows",
        "32",
        "--cols",
        "32",
    ]));
    let files = dcm_files(&dir.join("001"));
    assert_eq!(files.len(), 5);
    let study_uid = read_header_blocking(&files[0]).unwrap().study_uid;
    for (i, f) in files.iter().enumerate() {
        let (pid, name, series) = if i < 3 {
            ("P601", "ALPHA^ANN", "2.25.601601")
        } else {
            ("P602", "BETA^BOB", "2.25.602602")
        };
        run_ok(
            dcmtk("dcmodify")
                .args([
                    "-nb",
                    "-m",
                    &format!("PatientID={pid}"),
                    "-m",
                    &format!("PatientName={name}"),
                    "-m",
                    &format!("SeriesInstanceUID={series}"),
                ])
                .arg(f),
        );
    }
    let server = archive.start();
    let port = server.dicom_port.to_string();
    for part in [&files[..3], &files[3..]] {
        let out = run(dcmtk("storescu")
            .args(["-aec", "STRATA", "127.0.0.1", &port])
            .args(part));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let by_patient = |pid: &str| {
        let (n, text) = findscu(
            server.dicom_port,
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                &format!("PatientID={pid}"),
                "StudyInstanceUID",
                "PatientName",
                "NumberOfStudyRelatedInstances",
            ],
        );
        assert_eq!(n, 1, "{pid}: {text}");
        assert_eq!(values(&text, "StudyInstanceUID"), vec![study_uid.clone()]);
        // the last value printed is the response's (the request is printed first)
        let last = |k| values(&text, k).pop().unwrap_or_default();
        (
            last("PatientID"),
            last("PatientName"),
            last("NumberOfStudyRelatedInstances"),
        )
    };
    let one = |s: &str| s.to_string();
    assert_eq!(
        by_patient("P601"),
        (one("P601"), one("ALPHA^ANN"), one("3"))
    );
    assert_eq!(by_patient("P602"), (one("P602"), one("BETA^BOB"), one("2")));
    // Patient Root, IMAGE level under P602: its two instances, with its identity
    let (n, text) = findscu(
        server.dicom_port,
        "-P",
        &[
            "QueryRetrieveLevel=IMAGE",
            "PatientID=P602",
            &format!("StudyInstanceUID={study_uid}"),
            "SeriesInstanceUID=2.25.602602",
            "SOPInstanceUID",
        ],
    );
    assert_eq!(n, 2, "{text}");
    assert!(
        values(&text, "PatientID").iter().all(|p| p == "P602"),
        "{text}"
    );
    assert!(server
        .metrics()
        .contains("strata_patient_conflicts_total 2"));
    assert!(server.log_text().contains("patient conflict"));
    // a C-GET of patient P602 gets P602's two instances, not P601's three
    for (pid, count) in [("P602", 2), ("P601", 3)] {
        let out = run_ok(python("get_status.py").args(["--port", &port, "--patient", pid]));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["status"], 0, "{pid}: {answer}");
        assert_eq!(answer["received"], count, "{pid}: {answer}");
    }
    // Study Root has no PATIENT level (PS3.4 C.6.2): refused as C-FIND refuses it
    let out = run_ok(python("get_status.py").args([
        "--port",
        &port,
        "--patient",
        "P602",
        "--model",
        "study",
    ]));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], 0xA900, "{answer}");
    assert_eq!(answer["received"], 0, "{answer}");
    server.stop();

    // flagged in `ls` (text and JSON) and `show`
    let ls = run_ok(&mut archive.strata(&["ls"]));
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains("PATIENT CONFLICT") && ls.contains("P602"),
        "{ls}"
    );
    let studies = archive.ls_json();
    let conflicts = &studies[0]["patient_conflicts"];
    assert_eq!(conflicts[0]["patient_id"], "P602", "{studies}");
    assert_eq!(conflicts[0]["series"][0], "2.25.602602");
    let show = run_ok(&mut archive.strata(&["show", &study_uid]));
    assert!(String::from_utf8_lossy(&show.stdout).contains("PATIENT CONFLICT"));
    // audited: the two P602 stores say so
    let flagged = archive
        .audit_records("store")
        .iter()
        .filter(|r| {
            r["outcome"]
                .as_str()
                .unwrap_or("")
                .contains("patient conflict")
        })
        .count();
    assert_eq!(flagged, 2, "two P602 stores flagged");
}

/// Issue 11 field case: an empty StudyTime is unknown, not midnight, so it lies in no
/// range (PS3.4 C.2.2.2.5): findscu's `StudyTime=-0930` finds the study taken at 08:00
/// and not the one whose StudyTime is empty; `StudyTime=` (universal) finds both.
#[test]
fn an_empty_study_time_is_in_no_time_range() {
    let archive = Archive::new("find-empty-time");
    let source = dcm_files(ct_study())[0].clone();
    let mut files = Vec::new();
    for (n, time) in [(1, "080000"), (2, "")] {
        let f = archive.dir.path().join(format!("t{n}.dcm"));
        std::fs::copy(&source, &f).unwrap();
        run_ok(
            dcmtk("dcmodify")
                .args([
                    "-nb",
                    "-m",
                    &format!("StudyInstanceUID=2.25.9300{n}"),
                    "-m",
                    &format!("SeriesInstanceUID=2.25.9300{n}.1"),
                    "-m",
                    &format!("SOPInstanceUID=2.25.9300{n}.1.1"),
                    "-m",
                    &format!("StudyTime={time}"),
                    "-m",
                    "PatientID=TIME930",
                ])
                .arg(&f),
        );
        files.push(f);
    }
    run_ok(archive.strata(&["import"]).args(&files));
    let server = archive.start();
    let find = |time: &str| {
        let (n, text) = findscu(
            server.dicom_port,
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                "PatientID=TIME930",
                &format!("StudyTime={time}"),
                "StudyInstanceUID",
            ],
        );
        (n, values(&text, "StudyInstanceUID"))
    };
    let (n, uids) = find("-0930");
    assert_eq!(n, 1, "{uids:?}");
    assert!(uids.contains(&"2.25.93001".to_string()), "{uids:?}");
    assert!(!uids.contains(&"2.25.93002".to_string()), "{uids:?}");
    assert_eq!(find("").0, 2);
    server.stop();
}

/// Attributes the index keeps no column for (Rows, Columns, BodyPartExamined) are matched
/// and returned from each instance's metadata record, the same way over C-FIND (findscu)
/// and QIDO-RS (PS3.4 C.2.2.2 matching; PS3.18 10.6 `includefield`): at image level from
/// the instance, at series and study level from their first instance. `reindex` rebuilds
/// the records from the objects alone, and the answers stay the same.
#[test]
fn attributes_outside_the_index_are_matched_from_metadata_records_and_survive_reindex() {
    let archive = Archive::new("find-metadata");
    let mut studies = Vec::new();
    for (name, rows, seed) in [("big", "64", "1"), ("small", "32", "2")] {
        let dir = archive.dir.path().join(name);
        run_ok(python("gen_ct.py").arg("--out").arg(&dir).args([
            "--instances",
            "2",
            "--rows",
            rows,
            "--cols",
            rows,
            "--seed",
            seed,
            "--patient-prefix",
            name,
        ]));
        let files = dcm_files(&dir.join("001"));
        studies.push(read_header_blocking(&files[0]).unwrap());
        run_ok(archive.strata(&["import"]).args(&files));
    }
    let check = |server: &Server| {
        // C-FIND, IMAGE level: Rows matched per instance, Columns returned
        let big = &studies[0];
        let image = |rows: &str| {
            findscu(
                server.dicom_port,
                "-S",
                &[
                    "QueryRetrieveLevel=IMAGE",
                    &format!("StudyInstanceUID={}", big.study_uid),
                    &format!("SeriesInstanceUID={}", big.series_uid),
                    &format!("Rows={rows}"),
                    "Columns",
                    "SOPInstanceUID",
                ],
            )
        };
        let (n, text) = image("64");
        assert_eq!(n, 2, "{text}");
        // findscu prints a US value without brackets; one request line, two answers
        let columns = text.lines().filter(|l| l.contains("(0028,0011) US 64 "));
        assert_eq!(columns.count(), 2, "{text}");
        assert_eq!(image("32").0, 0);
        // C-FIND, STUDY level, from the study's first instance
        let (n, text) = findscu(
            server.dicom_port,
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                "BodyPartExamined=CHEST",
                "Rows=32",
                "StudyInstanceUID",
            ],
        );
        assert_eq!(n, 1, "{text}");
        assert!(text.contains(&studies[1].study_uid), "{text}");

        // QIDO-RS, the same matching
        let qido = |path: &str| -> serde_json::Value {
            let (code, body) = http_get(server.http_port, &format!("/dicom-web{path}")).unwrap();
            assert_eq!(code, 200, "{path}: {body}");
            serde_json::from_str(&body).unwrap()
        };
        let found = qido("/instances?Rows=32&includefield=Columns");
        let found = found.as_array().unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        for i in found {
            assert_eq!(i["00280011"]["Value"][0], 32, "{i}");
            assert_eq!(i["0020000D"]["Value"][0], studies[1].study_uid.as_str());
        }
        let series = qido("/series?Rows=64&includefield=BodyPartExamined");
        let series = series.as_array().unwrap();
        assert_eq!(series.len(), 1, "{series:?}");
        assert_eq!(series[0]["00180015"]["Value"][0], "CHEST");
        assert_eq!(series[0]["0020000E"]["Value"][0], big.series_uid.as_str());
        let all = qido("/studies?BodyPartExamined=CHEST");
        assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
        assert_eq!(
            qido("/studies?BodyPartExamined=HEAD"),
            serde_json::json!([])
        );
    };
    let server = archive.start();
    check(&server);
    server.stop();
    // the records are rebuilt from the objects alone
    run_ok(&mut archive.strata(&["reindex"]));
    let server = archive.start();
    check(&server);
    server.stop();
}

/// Each C-FIND pending response whose command and identifier fit the requester's maximum
/// PDU length goes as one P-DATA-TF holding a command PDV and a data PDV, each marked
/// last (PS3.8 9.3.5: a P-DATA-TF carries one or more PDVs; PS3.8 E.2: each PDV's
/// control header says command or data set, and last fragment); with a maximum too
/// small for both, the command and the identifier come in PDUs of their own, the
/// identifier fragmented within the limit (PS3.8 9.3.1). pynetdicom reads the same
/// matches either way.
#[test]
fn find_responses_share_one_pdu_when_they_fit_and_split_when_they_do_not() {
    let archive = Archive::new("find-pdus");
    let dir = archive.dir.path().join("ct");
    small_ct(
        &dir,
        &["--studies", "3", "--instances", "1", "--seed", "31"],
    );
    run_ok(archive.strata(&["import"]).args(dcm_files(&dir)));
    let server = archive.start();
    let port = server.dicom_port.to_string();
    let run = |max_pdu: &str| -> serde_json::Value {
        let out = run_ok(python("find_pdus.py").args(["--port", &port, "--max-pdu", max_pdu]));
        serde_json::from_slice(&out.stdout).expect("find_pdus.py prints JSON")
    };
    let pdvs = |v: &serde_json::Value| -> Vec<Vec<(String, bool, u64)>> {
        serde_json::from_value(v["pdus"].clone()).unwrap()
    };

    let roomy = run("16384");
    let pdus = pdvs(&roomy);
    assert_eq!(roomy["matches"].as_array().unwrap().len(), 3, "{roomy}");
    // three pending responses of two PDVs each, then the final response alone
    assert_eq!(pdus.len(), 4, "{pdus:?}");
    for pending in &pdus[..3] {
        let kinds: Vec<(&str, bool)> = pending
            .iter()
            .map(|(k, last, _)| (k.as_str(), *last))
            .collect();
        assert_eq!(kinds, [("command", true), ("data", true)], "{pdus:?}");
    }
    assert_eq!(pdus[3].len(), 1, "{pdus:?}");
    assert_eq!(pdus[3][0].0, "command");

    // a limit below one identifier: the command alone, then the identifier in fragments
    // of at most max - 6 bytes, the last one marked
    let tight = run("128");
    assert_eq!(
        tight["matches"], roomy["matches"],
        "the same matches either way"
    );
    let pdus = pdvs(&tight);
    assert!(
        pdus.iter().all(|p| p.len() == 1),
        "one PDV per PDU: {pdus:?}"
    );
    assert!(
        pdus.iter().all(|p| p[0].2 <= 122),
        "within the limit: {pdus:?}"
    );
    let data_last = pdus.iter().filter(|p| p[0].0 == "data" && p[0].1).count();
    assert_eq!(data_last, 3, "one complete identifier per match: {pdus:?}");
    assert!(pdus.len() > 3 * 3, "identifiers fragmented: {pdus:?}");
    assert!(server.echo_ok());
    server.stop();
}
