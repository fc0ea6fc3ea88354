//! Patient identity from the hospital's HL7 v2 feed (issue 15): python-hl7's MLLPClient
//! (PyPI `hl7`) sends ADT messages to `[hl7] port`; Strata answers each with an ACK
//! (HL7 v2.5.1 2.9: MSA-1 AA, AE or AR, MSA-2 the control id), applies a message once
//! however often it is resent, and answers C-FIND and QIDO-RS with the current identity
//! at once while the stored objects stay byte-identical. `reindex` from the objects and
//! the governance log alone reproduces the merged state.

use crate::common::*;
use crate::find::{findscu, values};
use std::process::Stdio;

/// Sends `messages` over one MLLP connection; each ACK as JSON.
fn send(port: u16, messages: &[String]) -> Vec<serde_json::Value> {
    let out = send_output(port, messages);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// [`send`]'s process output, whether or not every ACK came.
fn send_output(port: u16, messages: &[String]) -> std::process::Output {
    send_with(&["--port".into(), port.to_string().into()], messages)
}

/// `hl7_send.py` with `args`, `messages` on its standard input; its output.
fn send_with(args: &[std::ffi::OsString], messages: &[String]) -> std::process::Output {
    use std::io::Write;
    let mut child = python("hl7_send.py")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(messages).unwrap().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// An ADT message (HL7 v2.5.1), segments ended by CR.
fn adt(trigger: &str, control_id: &str, pid: &str, name: &str, mrg: Option<&str>) -> String {
    let mut m = format!(
        "MSH|^~\\&|EHR|HOSPITAL|STRATA|RADIOLOGY|20261130120000||ADT^{trigger}^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|{trigger}|20261130120000\r\
         PID|1||{pid}^^^HOSPITAL^MR||{name}||19700102|F\r"
    );
    if let Some(prior) = mrg {
        m.push_str(&format!("MRG|{prior}^^^HOSPITAL^MR\r"));
    }
    m
}

fn studies_for(port: u16, pid: &str) -> (usize, String) {
    findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("PatientID={pid}"),
            "PatientName",
            "StudyInstanceUID",
        ],
    )
}

#[test]
fn an_adt_feed_updates_merges_and_renames_patients_once_and_reindex_keeps_it() {
    let hl7_port = free_port();
    let dest_port = free_port();
    let archive = Archive::with_config(
        "patients-hl7",
        &format!(
            "\n[[dicom.peers]]\nae_title = \"DEST\"\nhost = \"127.0.0.1\"\nport = {dest_port}\n\n[hl7]\nport = {hl7_port}\n"
        ),
    );
    let data = scratch("patients-hl7-data");
    let server = archive.start();
    let port = server.dicom_port;
    let files = two_patients(data.path(), port);
    wait_for_port(hl7_port);
    let objects = || {
        let mut names: Vec<String> = walk(&archive.data_dir().join("hot/objects"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    };
    let objects_before = objects();
    assert_eq!(objects_before.len(), 4);

    let acks = send(
        hl7_port,
        &[
            adt("A08", "MSG-1", "ALICE001", "SMITH^ALICE", None),
            adt("A40", "MSG-2", "ALICE001", "SMITH^ALICE", Some("BOB001")),
            // the same message again (the sender never saw its ACK): applied once
            adt("A40", "MSG-2", "ALICE001", "SMITH^ALICE", Some("BOB001")),
            "this is not HL7".to_string(),
            adt("A40", "MSG-3", "ALICE001", "SMITH^ALICE", None),
            // an admission: not a message Strata acts on
            adt("A01", "MSG-4", "ALICE001", "SMITH^ALICE", None),
            adt("A47", "MSG-5", "ALICE-NEW", "SMITH^ALICE", Some("ALICE001")),
            // a late update of an ID merged away would undo the merge: refused
            adt("A08", "MSG-6", "BOB001", "LATE^BOB", None),
            // another sending system's MSG-1 is another message (MSH-10 is unique per
            // sender only): applied, not taken for the EHR's MSG-1
            adt("A08", "MSG-1", "ALICE-NEW", "SMITH^ALICE", None).replacen("|EHR|", "|RIS|", 1),
        ],
    );
    let codes: Vec<(&str, &str)> = acks
        .iter()
        .map(|a| {
            (
                a["code"].as_str().unwrap(),
                a["control_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            ("AA", "MSG-1"),
            ("AA", "MSG-2"),
            ("AA", "MSG-2"),
            ("AR", ""),
            ("AE", "MSG-3"),
            ("AR", "MSG-4"),
            ("AA", "MSG-5"),
            ("AE", "MSG-6"),
            ("AA", "MSG-1"),
        ],
        "{acks:?}"
    );
    assert!(
        acks[7]["err"]
            .as_str()
            .unwrap()
            .contains("known as ALICE-NEW"),
        "{acks:?}"
    );
    assert!(
        !acks[8]["text"]
            .as_str()
            .unwrap()
            .contains("already processed"),
        "{acks:?}"
    );
    assert!(
        acks[2]["text"]
            .as_str()
            .unwrap()
            .contains("already processed"),
        "{acks:?}"
    );
    assert!(
        acks[4]["err"].as_str().unwrap().contains("MRG-1"),
        "{acks:?}"
    );
    assert!(
        acks[5]["err"].as_str().unwrap().contains("ADT^A01"),
        "{acks:?}"
    );

    // C-FIND answers with the identity known now: both patients' studies under the new
    // ID and name, none under the old IDs
    let check = |port: u16| {
        let (n, text) = studies_for(port, "ALICE-NEW");
        assert_eq!(n, 2, "{text}");
        assert!(
            values(&text, "PatientName")
                .iter()
                .all(|v| v == "SMITH^ALICE"),
            "{text}"
        );
        for old in ["ALICE001", "BOB001"] {
            let (n, text) = studies_for(port, old);
            assert_eq!(n, 0, "{old}: {text}");
        }
    };
    check(port);
    // QIDO-RS too
    let (code, body) =
        http_get(server.http_port, "/dicom-web/studies?PatientID=ALICE-NEW").unwrap();
    assert_eq!(code, 200);
    let found: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 2, "{body}");

    // SERIES level under the current identity too (QIDO-RS and C-FIND), and FHIR's
    // ImagingStudy lists the merged study's series
    let bob_study = strata::dicom::header::read_header_blocking(&files[2])
        .unwrap()
        .study_uid;
    let (code, body) = http_get(
        server.http_port,
        &format!("/dicom-web/studies/{bob_study}/series"),
    )
    .unwrap();
    assert_eq!(code, 200);
    let series: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(series.as_array().unwrap().len(), 1, "{body}");
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            &format!("StudyInstanceUID={bob_study}"),
            "SeriesInstanceUID",
            "PatientID",
        ],
    );
    assert_eq!(n, 1, "{text}");
    let (_, body) = http_get(server.http_port, "/fhir/ImagingStudy?patient=ALICE-NEW").unwrap();
    let bundle: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{body}");
    assert!(
        entries.iter().all(|e| e["resource"]["series"]
            .as_array()
            .is_some_and(|s| !s.is_empty())),
        "{body}"
    );
    // FHIR: Bob's old Patient is replaced by the survivor (R4 Patient.link), the
    // patient ALICE-NEW of the feed's assigning authority HOSPITAL (PID-3.4)
    let (code, body) = http_get(server.http_port, "/fhir/Patient/BOB001").unwrap();
    assert_eq!(code, 200, "{body}");
    let old: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(old["active"], false, "{body}");
    assert_eq!(old["link"][0]["type"], "replaced-by", "{body}");
    let survivor = strata::http::fhir::patient_id_to_fhir("ALICE-NEW\\HOSPITAL").unwrap();
    assert_eq!(
        old["link"][0]["other"]["reference"],
        format!("Patient/{survivor}"),
        "{body}"
    );
    let (code, body) = http_get(server.http_port, &format!("/fhir/Patient/{survivor}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let now: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(now["identifier"][0]["value"], "ALICE-NEW", "{body}");
    assert_eq!(
        now["identifier"][0]["assigner"]["display"], "HOSPITAL",
        "{body}"
    );
    // and it is valid R4 (FHIR.js, unexpected properties being errors)
    let mut validate = std::process::Command::new("node")
        .arg(peer_script("fhir_validate.js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        validate
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
    }
    let checked = validate.wait_with_output().unwrap();
    let checked: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(checked["invalid"], serde_json::json!([]), "{checked}");
    let (code, body) = http_get(server.http_port, "/fhir/Patient/ALICE-NEW").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ALICE-NEW"), "{body}");
    // C-GET (DCMTK getscu) of Bob's former study: its data sets carry the survivor's
    // current identity, read back by dcmdump; the stored objects are untouched
    let bob_study = strata::dicom::header::read_header_blocking(&files[2])
        .unwrap()
        .study_uid;
    let got = data.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    let out = crate::retrieve::get_study(port, &bob_study, &got);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = walk(&got);
    assert_eq!(received.len(), 2);
    for f in &received {
        let dump = run_ok(
            dcmtk("dcmdump")
                .args(["+P", "0010,0020", "+P", "0010,0010"])
                .arg(f),
        );
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(
            text.contains("[ALICE-NEW]") && text.contains("[SMITH^ALICE]"),
            "{text}"
        );
    }
    // C-MOVE (DCMTK movescu to storescp) too
    let moved = data.path().join("moved");
    let scp = crate::retrieve::Storescp::start(dest_port, &moved);
    let text = crate::retrieve::movescu(
        port,
        "DEST",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={bob_study}"),
        ],
    );
    assert!(text.contains("Final Move Response (Success)"), "{text}");
    drop(scp);
    let received = walk(&moved);
    assert_eq!(received.len(), 2);
    for f in &received {
        let dump = run_ok(dcmtk("dcmdump").args(["+P", "0010,0020"]).arg(f));
        assert!(String::from_utf8_lossy(&dump.stdout).contains("[ALICE-NEW]"));
    }
    // WADO-RS instances: the Part-10 bytes carry the survivor's ID, not Bob's
    let bob = strata::dicom::header::read_header_blocking(&files[2]).unwrap();
    let (code, body) = http_request(
        server.http_port,
        "GET",
        &format!(
            "/dicom-web/studies/{bob_study}/series/{}/instances/{}",
            bob.series_uid, bob.sop_instance_uid
        ),
    )
    .unwrap();
    assert_eq!(code, 200);
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"ALICE-NEW") && !has(b"BOB001"));
    // WADO-RS metadata too
    let (code, body) = http_get(
        server.http_port,
        &format!("/dicom-web/studies/{bob_study}/metadata"),
    )
    .unwrap();
    assert_eq!(code, 200);
    let meta: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        meta.as_array()
            .unwrap()
            .iter()
            .all(|m| m["00100020"]["Value"][0] == "ALICE-NEW"
                && m["00100010"]["Value"][0]["Alphabetic"] == "SMITH^ALICE"),
        "{body}"
    );
    server.stop();

    // nothing stored changed: the same objects, and they verify
    assert_eq!(objects(), objects_before);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    // export: as stored, each file hashes (b3sum) to its object id and keeps the
    // identity it arrived with; --current carries the identity known now
    let as_stored = data.path().join("as-stored");
    run_ok(
        archive
            .strata(&["export", &bob_study, "--as-stored", "--out"])
            .arg(&as_stored),
    );
    for f in walk(&as_stored) {
        let sum = run_ok(
            std::process::Command::new("b3sum")
                .args(["--no-names"])
                .arg(&f),
        );
        let sum = String::from_utf8_lossy(&sum.stdout).trim().to_string();
        assert!(
            objects_before.contains(&sum),
            "{} hashes to {sum}",
            f.display()
        );
        let dump = run_ok(dcmtk("dcmdump").args(["+P", "0010,0020"]).arg(&f));
        assert!(String::from_utf8_lossy(&dump.stdout).contains("[BOB001]"));
    }
    let current = data.path().join("current");
    run_ok(
        archive
            .strata(&["export", &bob_study, "--current", "--out"])
            .arg(&current),
    );
    let exported = walk(&current);
    assert_eq!(exported.len(), 2);
    for f in exported {
        let dump = run_ok(dcmtk("dcmdump").args(["+P", "0010,0020"]).arg(&f));
        assert!(String::from_utf8_lossy(&dump.stdout).contains("[ALICE-NEW]"));
    }
    // each change once in the audit log, by the feed, with its control id
    let merges = archive.audit_records("patient_merge");
    assert_eq!(merges.len(), 1, "{merges:?}");
    assert_eq!(merges[0]["actor"]["kind"], "hl7");
    assert_eq!(merges[0]["actor"]["user"], "EHR^HOSPITAL");
    assert!(merges[0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("EHR^HOSPITAL|MSG-2: "));
    assert_eq!(
        archive.audit_records("patient_update").len(),
        2,
        "MSG-1 of the EHR and of the RIS"
    );
    assert_eq!(archive.audit_records("patient_id_change").len(), 1);
    run_ok(&mut archive.strata(&["audit", "verify"]));

    // reindex from the objects and the governance log alone: the same identities, and
    // the control ids still known
    archive.lose_index();
    run_ok(&mut archive.strata(&["reindex"]));
    let server = archive.start();
    check(server.dicom_port);
    resend_is_known(
        hl7_port,
        &[adt(
            "A40",
            "MSG-2",
            "ALICE001",
            "SMITH^ALICE",
            Some("BOB001"),
        )],
    );
    server.stop();
    assert_eq!(archive.audit_records("patient_merge").len(), 1);
}

/// Stores two one-study patients (ALICE001, BOB001) into a started archive; the files.
fn two_patients(data: &std::path::Path, port: u16) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for prefix in ["ALICE", "BOB"] {
        small_ct(
            &data.join(prefix),
            &[
                "--studies",
                "1",
                "--instances",
                "2",
                "--patient-prefix",
                prefix,
            ],
        );
        files.extend(dcm_files(&data.join(prefix)));
    }
    run_ok(storescu(port).args(&files));
    files
}

/// Sends `messages` again: acknowledged `AA` as already processed, not applied twice.
fn resend_is_known(hl7_port: u16, messages: &[String]) {
    let again = send(hl7_port, messages);
    assert_eq!(again[0]["code"], "AA", "{again:?}");
    assert!(
        again[0]["text"]
            .as_str()
            .unwrap()
            .contains("already processed"),
        "{again:?}"
    );
}

/// findscu at IMAGE level for the instances of `series`'s series (Study Root).
fn series_images(port: u16, series: &strata::dicom::header::InstanceAttrs) -> (usize, String) {
    findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={}", series.study_uid),
            &format!("SeriesInstanceUID={}", series.series_uid),
            "SOPInstanceUID",
        ],
    )
}

/// The SOP Instance UIDs of `files`.
fn sop_uids(files: &[std::path::PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            strata::dicom::header::read_header_blocking(f)
                .unwrap()
                .sop_instance_uid
        })
        .collect()
}

/// pynetdicom (`send_rejection.py`) sending a rejection note titled (`code`, DCM) of
/// patient `patient` that rejects the instances `sops` of `series`'s study and series.
fn rejection_note(
    port: u16,
    code: &str,
    patient: &str,
    series: &strata::dicom::header::InstanceAttrs,
    sops: &[&str],
) -> std::process::Command {
    let mut cmd = python("send_rejection.py");
    cmd.args(["--port", &port.to_string(), "--code", code])
        .args(["--study", &series.study_uid, "--patient", patient])
        .args(["--series", &series.series_uid])
        .args(["--sop-class", &series.sop_class_uid]);
    for sop in sops {
        cmd.args(["--sop", sop]);
    }
    cmd
}

/// Starts the server with `failpoint` set, sends `message`, sees no ACK come (the
/// server killed itself there, as kill -9 would), and reaps it.
fn cut_by(archive: &Archive, hl7_port: u16, failpoint: &str, message: &str) {
    let server = archive.start_with_env(&[("STRATA_FAILPOINT", failpoint)]);
    wait_for_port(hl7_port);
    let cut = send_output(hl7_port, &[message.to_string()]);
    assert!(
        String::from_utf8_lossy(&cut.stdout).trim().is_empty(),
        "{failpoint}: no ACK came"
    );
    server.kill9();
}

/// kill -9 between receipt and ACK (HL7 v2 exactly-once, issue 15): a message cut
/// after the governance log took it but before the index did is applied at the next
/// start (and audited then, saying so); one cut after it was applied but before its
/// ACK is, when the sender sends it again, acknowledged without a second change.
#[test]
fn an_hl7_message_cut_by_kill_9_is_applied_exactly_once() {
    let hl7_port = free_port();
    let archive = Archive::with_config("patients-kill", &format!("\n[hl7]\nport = {hl7_port}\n"));
    let data = scratch("patients-kill-data");
    let server = archive.start();
    two_patients(data.path(), server.dicom_port);
    server.stop();
    let merge = adt("A40", "MSG-K1", "ALICE001", "SMITH^ALICE", Some("BOB001"));
    cut_by(&archive, hl7_port, "patient-after-governance", &merge);

    // restarted: the merge is there before anything is resent
    let server = archive.start();
    let (n, text) = studies_for(server.dicom_port, "ALICE001");
    assert_eq!(n, 2, "{text}");
    assert_eq!(studies_for(server.dicom_port, "BOB001").0, 0);
    resend_is_known(hl7_port, std::slice::from_ref(&merge));
    server.stop();
    let merges = archive.audit_records("patient_merge");
    assert_eq!(merges.len(), 1, "{merges:?}");
    assert!(
        merges[0]["outcome"]
            .as_str()
            .unwrap()
            .contains("after a crash"),
        "{merges:?}"
    );

    // cut after the change, before its ACK
    let update = adt("A08", "MSG-K2", "ALICE001", "JONES^ALICE", None);
    cut_by(&archive, hl7_port, "hl7-before-ack", &update);
    let server = archive.start();
    wait_for_port(hl7_port);
    resend_is_known(hl7_port, std::slice::from_ref(&update));
    let (_, text) = studies_for(server.dicom_port, "ALICE001");
    assert!(
        values(&text, "PatientName")
            .iter()
            .all(|v| v == "JONES^ALICE"),
        "{text}"
    );
    server.stop();
    assert_eq!(archive.audit_records("patient_update").len(), 1);

    // a CLI merge (no control id) cut after its audit record, before the index took
    // it: in effect at the next start, and audited again saying so (never in effect
    // unaudited)
    let server = archive.start_with_env(&[("STRATA_FAILPOINT", "patient-after-audit")]);
    let cut = run(&mut archive.strata(&[
        "patient",
        "merge",
        "ALICE001",
        "--into",
        "ZED001",
        "--name",
        "ZED^ALICE",
    ]));
    assert!(!cut.status.success(), "the server died before answering");
    server.kill9();
    let server = archive.start();
    assert_eq!(studies_for(server.dicom_port, "ZED001").0, 2);
    assert_eq!(studies_for(server.dicom_port, "ALICE001").0, 0);
    server.stop();
    let merges = archive.audit_records("patient_merge");
    assert_eq!(merges.len(), 3, "{merges:?}");
    assert_eq!(merges[1]["actor"]["kind"], "cli");
    assert!(merges[2]["outcome"]
        .as_str()
        .unwrap()
        .contains("after a crash"));
    run_ok(&mut archive.strata(&["audit", "verify"]));
}

/// `strata patient merge` for clinics without an HL7 feed (through the running
/// server's admin API), `strata patient show` and `history`.
#[test]
fn the_cli_merges_shows_and_tells_the_history_of_patients() {
    let archive = Archive::new("patients-cli");
    let data = scratch("patients-cli-data");
    let server = archive.start();
    two_patients(data.path(), server.dicom_port);
    let merged = run_ok(
        &mut archive.strata(&["patient", "merge", "BOB001", "--into", "ALICE001", "--json"]),
    );
    let merged: serde_json::Value = serde_json::from_slice(&merged.stdout).unwrap();
    assert_eq!(merged["studies"], 2, "{merged}");
    // the survivor keeps the name the archive knew it by
    let (n, text) = studies_for(server.dicom_port, "ALICE001");
    assert_eq!(n, 2, "{text}");
    assert!(
        values(&text, "PatientName")
            .iter()
            .all(|v| v.starts_with("ALICE^")),
        "{text}"
    );
    server.stop();
    let shown = run_ok(&mut archive.strata(&["patient", "show", "BOB001", "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["patient_id"], "ALICE001", "{shown}");
    assert_eq!(shown["studies"].as_array().unwrap().len(), 2, "{shown}");
    // strata ls shows each study under its patient's current identity, and what it
    // was stored under
    let listed = archive.ls_json();
    let studies = listed.as_array().unwrap();
    assert!(
        studies.iter().all(|s| s["patient_id"] == "ALICE001"),
        "{listed}"
    );
    assert!(
        studies.iter().any(|s| s["stored_patient_id"] == "BOB001"),
        "{listed}"
    );
    let history = run_ok(&mut archive.strata(&["patient", "history", "ALICE001", "--json"]));
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    let merges = archive.audit_records("patient_merge");
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0]["actor"]["kind"], "cli");
    // a merge into itself is refused with the reason (no server: the archive itself)
    let refused = run(&mut archive.strata(&["patient", "merge", "ALICE001", "--into", "ALICE001"]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("into itself"));
}

/// Prior prefetch (issue 15): an order (ORM^O01) for a patient whose earlier study was
/// moved to the cold tier brings it back to hot disk in the background; the order is
/// acknowledged AA once on record, and a resend starts nothing new.
#[test]
fn an_order_brings_the_patients_cold_priors_back_to_hot() {
    let hl7_port = free_port();
    let archive = Archive::with_config(
        "patients-prefetch",
        &format!("\n[hl7]\nport = {hl7_port}\n\n[prefetch]\nmax_age = \"0s\"\n"),
    );
    let data = scratch("patients-prefetch-data");
    let server = archive.start();
    let files = two_patients(data.path(), server.dicom_port);
    let alice_study = strata::dicom::header::read_header_blocking(&files[0])
        .unwrap()
        .study_uid;
    let hot = || walk(&archive.data_dir().join("hot/objects")).len();
    run_ok(&mut archive.strata(&["tier", "move", &alice_study, "--to", "cold"]));
    assert_eq!(hot(), 2, "Alice's study left hot disk");
    let order = "MSH|^~\\&|RIS|HOSPITAL|STRATA|RADIOLOGY|20261130||ORM^O01|ORD-1|P|2.5.1\r\
                 PID|1||ALICE001^^^HOSPITAL^MR||ALICE^A\r\
                 ORC|NW|ORD-1\r\
                 OBR|1|ORD-1||CTCHEST^CT CHEST\r"
        .to_string();
    wait_for_port(hl7_port);
    let acks = send(hl7_port, std::slice::from_ref(&order));
    assert_eq!(acks[0]["code"], "AA", "{acks:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while hot() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the prior is back on hot disk within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    resend_is_known(hl7_port, std::slice::from_ref(&order));
    server.stop();
    let prefetch = archive.audit_records("prefetch");
    assert_eq!(prefetch.len(), 1, "{prefetch:?}");
    assert!(prefetch[0]["uids"].to_string().contains(&alice_study));
    let moves = archive.audit_records("tier_move");
    assert!(
        moves.iter().any(|m| m["actor"]["kind"] == "hl7"),
        "{moves:?}"
    );
}

/// IHE IOCM (issue 15): pynetdicom sends a rejection note (a Key Object Selection
/// titled (113001, DCM, "Rejected for Quality Reasons"), PS3.3 A.35.4) for one
/// instance of a study: the instance vanishes from C-FIND and QIDO-RS, C-MOVE and
/// WADO-RS no longer send it, `strata ls --rejected` lists it with who rejected it,
/// the audit log has the rejection, and the stored object stays; `reindex` keeps it
/// hidden.
#[test]
fn a_rejection_note_hides_the_instances_it_rejects() {
    let archive = Archive::new("patients-iocm");
    let data = scratch("patients-iocm-data");
    let server = archive.start();
    let files = two_patients(data.path(), server.dicom_port);
    let rejected = strata::dicom::header::read_header_blocking(&files[0]).unwrap();
    let kept = strata::dicom::header::read_header_blocking(&files[1]).unwrap();
    let sent = run_ok(&mut rejection_note(
        server.dicom_port,
        "113001",
        &rejected.patient_id,
        &rejected,
        &[&rejected.sop_instance_uid],
    ));
    let sent: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(sent["status"], 0, "{sent}");
    // a note of Bob's naming Alice's other instance rejects nothing (IOCM: a note
    // rejects its own patient's instances)
    let bob = strata::dicom::header::read_header_blocking(&files[2]).unwrap();
    run_ok(&mut rejection_note(
        server.dicom_port,
        "113039",
        &bob.patient_id,
        &kept,
        &[&kept.sop_instance_uid],
    ));

    let images = |port: u16| series_images(port, &rejected).1;
    let text = images(server.dicom_port);
    assert!(!text.contains(&rejected.sop_instance_uid), "{text}");
    assert!(text.contains(&kept.sop_instance_uid), "{text}");
    let (code, body) = http_get(
        server.http_port,
        &format!("/dicom-web/studies/{}/instances", rejected.study_uid),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains(&rejected.sop_instance_uid) && body.contains(&kept.sop_instance_uid));
    // FHIR's ImagingStudy neither lists nor counts it
    let (code, body) = http_get(
        server.http_port,
        &format!("/fhir/ImagingStudy?patient={}", rejected.patient_id),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(!body.contains(&rejected.sop_instance_uid), "{body}");
    let bundle: serde_json::Value = serde_json::from_str(&body).unwrap();
    let study = &bundle["entry"][0]["resource"];
    assert_eq!(
        study["numberOfInstances"], 2,
        "the kept instance and the note: {body}"
    );
    // retrieve: the rejected instance is not sent
    let (code, _) = http_get(
        server.http_port,
        &format!(
            "/dicom-web/studies/{}/series/{}/instances/{}/metadata",
            rejected.study_uid, rejected.series_uid, rejected.sop_instance_uid
        ),
    )
    .unwrap();
    assert_eq!(code, 404);
    let got = data.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    let out = crate::retrieve::get_study(server.dicom_port, &rejected.study_uid, &got);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = sop_uids(&walk(&got));
    assert!(
        !received.contains(&rejected.sop_instance_uid),
        "{received:?}"
    );
    assert!(received.contains(&kept.sop_instance_uid), "{received:?}");
    server.stop();

    let listed = run_ok(&mut archive.strata(&["ls", "--rejected", "--json"]));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        listed[0]["sop_instance_uid"],
        rejected.sop_instance_uid.as_str()
    );
    assert_eq!(listed[0]["rejection"]["code"], "113001");
    assert!(listed[0]["rejection"]["by"]
        .as_str()
        .unwrap()
        .starts_with("QC_STATION@"));
    let audit = archive.audit_records("reject");
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["actor"]["ae_title"], "QC_STATION");
    assert!(
        audit[1]["outcome"].as_str().unwrap().starts_with("refused"),
        "{audit:?}"
    );
    // the stored object is still there and verifies; reindex keeps the rejection
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    archive.lose_index();
    run_ok(&mut archive.strata(&["reindex"]));
    let server = archive.start();
    let text = images(server.dicom_port);
    assert!(!text.contains(&rejected.sop_instance_uid), "{text}");
    server.stop();
}

/// The ADT feed over TLS (`[hl7] tls`, mutual with `client_ca_file`): python-hl7's
/// MLLPClient, its socket wrapped in TLS with a client certificate, is answered; a
/// client without a certificate is refused at the handshake, and that is audited.
#[test]
fn the_hl7_feed_speaks_tls_to_certified_senders_only() {
    let certs = scratch("patients-hl7-tls-certs");
    crate::security::make_certificates(certs.path());
    let dir = certs.path();
    let hl7_port = free_port();
    let archive = Archive::with_config(
        "patients-hl7-tls",
        &format!(
            "\n[hl7]\nport = {hl7_port}\ntls = true\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display(),
            dir.join("ca.pem").display()
        ),
    );
    let data = scratch("patients-hl7-tls-data");
    let server = archive.start();
    two_patients(data.path(), server.dicom_port);
    wait_for_port(hl7_port);
    let tls_send = |client_cert: bool, message: &str| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--host".into(),
            "localhost".into(),
            "--port".into(),
            hl7_port.to_string().into(),
            "--tls-ca".into(),
            dir.join("ca.pem").into(),
        ];
        if client_cert {
            args.extend([
                "--tls-cert".into(),
                dir.join("client.pem").into(),
                "--tls-key".into(),
                dir.join("client.key").into(),
            ]);
        }
        send_with(&args, &[message.to_string()])
    };
    let ok = tls_send(true, &adt("A08", "TLS-1", "ALICE001", "TLS^ALICE", None));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ack: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(ack["code"], "AA", "{ack}");
    let (_, text) = studies_for(server.dicom_port, "ALICE001");
    assert!(
        values(&text, "PatientName")
            .iter()
            .all(|v| v == "TLS^ALICE"),
        "{text}"
    );
    let refused = tls_send(
        false,
        &adt("A08", "TLS-2", "ALICE001", "NOCERT^ALICE", None),
    );
    assert!(!refused.status.success());
    server.stop();
    let connects = archive.audit_records("connect");
    assert!(
        connects.iter().any(|r| r["actor"]["kind"] == "hl7"
            && r["outcome"]
                .as_str()
                .unwrap()
                .starts_with("refused: TLS handshake")),
        "{connects:?}"
    );
    assert_eq!(archive.audit_records("patient_update").len(), 1);
}

/// IOCM deletion (issue 15): a study whose every instance a note rejected as "Data
/// Retention Policy Expired" (113039) is deleted by `strata retention` — audited and
/// tombstoned like any deletion, never under a legal hold — even with the age rule off;
/// a note rejecting for quality reasons (113001) only hides.
#[test]
fn retention_deletes_studies_their_rejection_notes_expire() {
    let archive = Archive::new("patients-iocm-retention");
    let data = scratch("patients-iocm-retention-data");
    let server = archive.start();
    let files = two_patients(data.path(), server.dicom_port);
    let reject = |file: &std::path::Path, sops: &[&std::path::Path], code: &str| {
        let first = strata::dicom::header::read_header_blocking(file).unwrap();
        let sops: Vec<std::path::PathBuf> = sops.iter().map(|f| f.to_path_buf()).collect();
        let uids = sop_uids(&sops);
        let uids: Vec<&str> = uids.iter().map(String::as_str).collect();
        run_ok(&mut rejection_note(
            server.dicom_port,
            code,
            &first.patient_id,
            &first,
            &uids,
        ));
        first.study_uid
    };
    // Alice's study wholly expired; Bob's rejected for quality (hidden, kept)
    let alice = reject(&files[0], &[&files[0], &files[1]], "113039");
    let bob = reject(&files[2], &[&files[2], &files[3]], "113001");
    server.stop();
    let dry = run_ok(&mut archive.strata(&["retention", "--dry-run", "--json"]));
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(dry["rejected"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(dry["rejected"][0][0], alice.as_str());
    run_ok(&mut archive.strata(&["retention"]));
    let tombs = run_ok(&mut archive.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&tombs.stdout).unwrap();
    let tombs = tombs.as_array().unwrap();
    assert_eq!(tombs.len(), 1, "{tombs:?}");
    assert!(
        tombs[0]["why"].as_str().unwrap().contains("113039"),
        "{tombs:?}"
    );
    let held = run_ok(&mut archive.strata(&["show", &bob, "--json"]));
    assert!(
        !held.stdout.is_empty(),
        "Bob's rejected study is hidden, not deleted"
    );
    assert!(archive.verify_json().0);
}

/// `PatientID` P100 from two issuers (issue 15, "patients keyed by (PatientID,
/// IssuerOfPatientID)"): WEST's data sets carry IssuerOfPatientID (0010,0021); EAST's CT
/// does not, and `[[patients.issuer]]` names its issuer by its calling AE. They are two
/// patients: C-FIND at PATIENT level answers one per issuer (PS3.4 C.6.1.1.2 matching
/// keys; IssuerOfPatientID single-value matching picks one), an ADT message that names
/// no issuer (PID-3.4) is refused as ambiguous, one that names EAST changes EAST's
/// patient only, a merge of WEST's P100 (MRG-1.4) leaves EAST's alone, a PATIENT-level
/// C-MOVE without the issuer is refused while the ID is ambiguous, and `reindex` from
/// the objects and the governance log gives each study the same patient again.
#[test]
fn the_same_patient_id_from_two_issuers_is_two_patients() {
    let hl7_port = free_port();
    let dest_port = free_port();
    let archive = Archive::with_config(
        "patients-issuers",
        &format!(
            "\n[[dicom.peers]]\nae_title = \"DEST\"\nhost = \"127.0.0.1\"\nport = {dest_port}\n\n[hl7]\nport = {hl7_port}\n\n[patients]\ndefault_issuer = \"\"\n\n[[patients.issuer]]\ncalling_ae = \"EASTCT\"\nissuer = \"EAST\"\n"
        ),
    );
    let data = scratch("patients-issuers-data");
    let server = archive.start();
    let port = server.dicom_port;
    let mut studies = Vec::new();
    for (dir, issuer, seed) in [("west", Some("WEST"), "1"), ("east", None, "2")] {
        let dir = data.path().join(dir);
        small_ct(
            &dir,
            &[
                "--studies",
                "1",
                "--instances",
                "2",
                "--patient-prefix",
                "P",
                "--seed",
                seed,
            ],
        );
        let files = dcm_files(&dir);
        for f in &files {
            let mut modify = dcmtk("dcmodify");
            modify.args(["-nb", "-m", "PatientID=P100"]);
            if let Some(issuer) = issuer {
                modify.args(["-i", &format!("IssuerOfPatientID={issuer}")]);
            }
            run_ok(modify.arg(f));
        }
        studies.push(
            strata::dicom::header::read_header_blocking(&files[0])
                .unwrap()
                .study_uid,
        );
        let mut store = storescu(port);
        if issuer.is_none() {
            store.args(["-aet", "EASTCT"]);
        }
        run_ok(store.args(&files));
    }
    let (west_study, east_study) = (studies[0].clone(), studies[1].clone());
    wait_for_port(hl7_port);
    let patients = |issuer: &str| {
        findscu(
            port,
            "-P",
            &[
                "QueryRetrieveLevel=PATIENT",
                "PatientID=P100",
                &format!("IssuerOfPatientID={issuer}"),
                "PatientName",
                "NumberOfPatientRelatedStudies",
            ],
        )
    };
    let (n, text) = patients("");
    assert_eq!(n, 2, "one patient per issuer: {text}");
    let mut issuers = values(&text, "IssuerOfPatientID");
    issuers.sort();
    assert_eq!(issuers, vec!["EAST", "WEST"], "{text}");
    let (n, text) = patients("EAST");
    assert_eq!(n, 1, "{text}");
    // FHIR: a Patient per issuer (R4 Identifier.assigner), each read back by its id,
    // each study's subject the right one; valid R4
    let fhir = format!("http://127.0.0.1:{}/fhir", server.http_port);
    let (code, found) = crate::fhir::get_json(&format!("{fhir}/Patient?identifier=P100"));
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["total"], 2, "{found}");
    let mut resources = vec![found.clone()];
    for entry in found["entry"].as_array().unwrap() {
        let id = entry["resource"]["id"].as_str().unwrap();
        let (code, patient) = crate::fhir::get_json(&format!("{fhir}/Patient/{id}"));
        assert_eq!(code, 200, "{patient}");
        assert_eq!(patient["id"], id);
        let issuer = patient["identifier"][0]["assigner"]["display"]
            .as_str()
            .unwrap();
        let (_, studies) =
            crate::fhir::get_json(&format!("{fhir}/ImagingStudy?patient=Patient/{id}"));
        assert_eq!(studies["total"], 1, "{issuer}: {studies}");
        let study = &studies["entry"][0]["resource"];
        assert_eq!(study["subject"]["reference"], format!("Patient/{id}"));
        let expected = if issuer == "EAST" {
            &east_study
        } else {
            &west_study
        };
        assert_eq!(study["id"], expected.as_str(), "{issuer}: {studies}");
        resources.extend([patient, studies]);
    }
    crate::fhir::assert_valid_r4(&resources);
    // a PATIENT-level C-MOVE naming P100 alone would send two patients as one: refused
    let text = crate::retrieve::movescu_model(
        port,
        "DEST",
        "-P",
        &["QueryRetrieveLevel=PATIENT", "PatientID=P100"],
    );
    // PS3.4 C.4.2.1.5: A900, the identifier does not match (the reason is in the
    // ErrorComment and the log)
    assert!(
        text.contains("Final Move Response (Error: DataSetDoesNotMatchSOPClass)"),
        "{text}"
    );

    let with_issuer = |m: String, pid_issuer: &str, mrg_issuer: &str| {
        m.replace("^^^HOSPITAL^MR||", &format!("^^^{pid_issuer}^MR||"))
            .replace(
                "MRG|P100^^^HOSPITAL^MR",
                &format!("MRG|P100^^^{mrg_issuer}^MR"),
            )
    };
    let acks = send(
        hl7_port,
        &[
            // PID-3.4 empty: which P100?
            with_issuer(adt("A08", "ISS-1", "P100", "EAST^ONLY", None), "", ""),
            with_issuer(
                adt("A08", "ISS-2", "P100", "EAST^RENAMED", None),
                "EAST",
                "",
            ),
            with_issuer(
                adt("A40", "ISS-3", "Q200", "WEST^SURVIVOR", Some("P100")),
                "WEST",
                "WEST",
            ),
        ],
    );
    let codes: Vec<&str> = acks.iter().map(|a| a["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["AE", "AA", "AA"], "{acks:?}");
    assert!(
        acks[0]["text"]
            .as_str()
            .unwrap()
            .contains("several issuers"),
        "{acks:?}"
    );
    let study_of = |port: u16, pid: &str| {
        findscu(
            port,
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                &format!("PatientID={pid}"),
                "IssuerOfPatientID",
                "PatientName",
                "StudyInstanceUID",
            ],
        )
    };
    let check = |port_label: &str| {
        let (n, text) = study_of(port, "P100");
        assert_eq!(n, 1, "{port_label}: only EAST's P100 is left: {text}");
        assert_eq!(values(&text, "StudyInstanceUID"), vec![east_study.clone()]);
        assert_eq!(values(&text, "PatientName"), vec!["EAST^RENAMED"]);
        assert_eq!(values(&text, "IssuerOfPatientID"), vec!["EAST"]);
        let (n, text) = study_of(port, "Q200");
        assert_eq!(n, 1, "{port_label}: {text}");
        assert_eq!(values(&text, "StudyInstanceUID"), vec![west_study.clone()]);
        assert_eq!(values(&text, "PatientName"), vec!["WEST^SURVIVOR"]);
        assert_eq!(values(&text, "IssuerOfPatientID"), vec!["WEST"]);
    };
    check("after the feed");

    // a PATIENT-level C-MOVE of Q200 sends WEST's study carrying the survivor's identity
    let moved = data.path().join("moved");
    let scp = crate::retrieve::Storescp::start(dest_port, &moved);
    let text = crate::retrieve::movescu_model(
        port,
        "DEST",
        "-P",
        &["QueryRetrieveLevel=PATIENT", "PatientID=Q200"],
    );
    assert!(text.contains("Final Move Response (Success)"), "{text}");
    drop(scp);
    let received = walk(&moved);
    assert_eq!(received.len(), 2);
    for f in &received {
        let dump = run_ok(
            dcmtk("dcmdump")
                .args(["+P", "0010,0020", "+P", "0010,0021"])
                .arg(f),
        );
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains("[Q200]") && dump.contains("[WEST]"), "{dump}");
    }
    server.stop();

    // reindex: EAST's issuer (from the sender's default: not in the objects) comes
    // back from the governance log, WEST's from the data sets, and the links follow
    archive.lose_index();
    run_ok(&mut archive.strata(&["reindex"]));
    let server = archive.start();
    let port = server.dicom_port;
    let (n, text) = study_of(port, "P100");
    assert_eq!(n, 1, "after reindex: {text}");
    assert_eq!(values(&text, "IssuerOfPatientID"), vec!["EAST"]);
    assert_eq!(values(&text, "PatientName"), vec!["EAST^RENAMED"]);
    let (n, text) = study_of(port, "Q200");
    assert_eq!(n, 1, "after reindex: {text}");
    assert_eq!(values(&text, "PatientName"), vec!["WEST^SURVIVOR"]);
    server.stop();
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
}

/// A rejection note cut by kill -9 after its governance and audit records, before the
/// index took it (IHE IOCM, issue 15; "nothing lost"): at the next start the
/// instance is hidden before anything is served, and the replay is audited too.
#[test]
fn a_rejection_cut_by_kill_9_is_in_effect_after_restart() {
    let archive = Archive::new("patients-iocm-kill");
    let data = scratch("patients-iocm-kill-data");
    let server = archive.start();
    let files = two_patients(data.path(), server.dicom_port);
    server.stop();
    let rejected = strata::dicom::header::read_header_blocking(&files[0]).unwrap();
    let server = archive.start_with_env(&[("STRATA_FAILPOINT", "reject-after-audit")]);
    let _ = run(&mut rejection_note(
        server.dicom_port,
        "113001",
        &rejected.patient_id,
        &rejected,
        &[&rejected.sop_instance_uid],
    ));
    server.kill9();
    let server = archive.start();
    let (n, text) = series_images(server.dicom_port, &rejected);
    server.stop();
    assert!(
        !values(&text, "SOPInstanceUID").contains(&rejected.sop_instance_uid),
        "{text}"
    );
    assert_eq!(n, 1, "{text}");
    let rejections = archive.audit_records("reject");
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    assert!(rejections[1]["outcome"]
        .as_str()
        .unwrap()
        .contains("after a crash"));
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
}

/// IHE IOCM (issue 15): "Data Retention Policy Expired" (113039) for one instance of a
/// study that keeps its other. The study is in the cold tier; `strata retention`
/// recalls it (copy, verify, record), deletes that instance from every tier (its hot
/// file, and the study's pack, which holds it) and keeps the other, hot until it ages
/// to cold again. The retention is killed right after the partial tombstone: the next
/// start removes the instance's hot file, the next policy pass the pack; `verify`
/// stays clean throughout; the instance kept is still retrievable, and `reindex` from
/// the objects and the packs alone does not bring the deleted one back.
#[test]
fn retention_deletes_the_expired_instances_of_a_study_that_stays() {
    let archive = Archive::with_config(
        "patients-iocm-partial",
        "\n[tiering]\norphan_grace = \"0s\"\n",
    );
    let data = scratch("patients-iocm-partial-data");
    let server = archive.start();
    let files = two_patients(data.path(), server.dicom_port);
    let expired = strata::dicom::header::read_header_blocking(&files[0]).unwrap();
    let kept = strata::dicom::header::read_header_blocking(&files[1]).unwrap();
    assert_eq!(kept.series_uid, expired.series_uid);
    run_ok(&mut archive.strata(&["tier", "move", &expired.study_uid, "--to", "cold"]));
    run_ok(&mut rejection_note(
        server.dicom_port,
        "113039",
        &expired.patient_id,
        &expired,
        &[&expired.sop_instance_uid],
    ));
    server.stop();
    let dry = run_ok(&mut archive.strata(&["retention", "--dry-run", "--json"]));
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(dry["rejected"].as_array().unwrap().len(), 0, "{dry}");
    assert_eq!(
        dry["rejected_instances"][0]["instances"][0][1],
        expired.sop_instance_uid.as_str(),
        "{dry}"
    );

    // killed right after the partial tombstone
    let cut = run(archive
        .strata(&["retention"])
        .env("STRATA_FAILPOINT", "delete-instances-after-tombstone"));
    assert!(!cut.status.success());
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    // the index lost now, with the deletion unfinished (the instance's recalled hot file
    // and the study's pack, holding both instances, still there): `reindex` from the
    // objects, the packs and the governance log keeps the instance deleted and does
    // not record the pack again
    archive.lose_index();
    let rebuilt = run_ok(&mut archive.strata(&["reindex", "--json"]));
    let rebuilt: serde_json::Value = serde_json::from_slice(&rebuilt.stdout).unwrap();
    assert_eq!(rebuilt["deleted_packs"], 1, "{rebuilt}");
    // the next start finishes the hot side, the next policy pass the pack
    let server = archive.start();
    let (n, text) = series_images(server.dicom_port, &expired);
    assert_eq!(n, 1, "{text}");
    assert_eq!(
        values(&text, "SOPInstanceUID"),
        vec![kept.sop_instance_uid.clone()]
    );
    server.stop();
    // (the server's worker may have collected the old pack already)
    run_ok(&mut archive.strata(&["tier", "run", "--json"]));
    let status = run_ok(&mut archive.strata(&["tier", "status", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["packs"], 0, "the study's old pack is gone: {status}");
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    assert_eq!(report["pending_deletion"], 0, "{report}");
    assert!(
        report["unrecorded_packs"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let tombs = run_ok(&mut archive.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&tombs.stdout).unwrap();
    assert_eq!(tombs.as_array().unwrap().len(), 1, "{tombs}");
    assert_eq!(tombs[0]["partial"], true, "{tombs}");
    assert_eq!(tombs[0]["objects"].as_array().unwrap().len(), 1, "{tombs}");
    assert!(
        tombs[0]["why"].as_str().unwrap().contains("113039"),
        "{tombs}"
    );
    // what stays is retrievable (as stored: b3sum is its id)
    let out = data.path().join("exported");
    run_ok(
        archive
            .strata(&["export", &expired.study_uid, "--out"])
            .arg(&out),
    );
    let exported = sop_uids(&walk(&out));
    assert!(exported.contains(&kept.sop_instance_uid), "{exported:?}");
    assert!(
        !exported.contains(&expired.sop_instance_uid),
        "{exported:?}"
    );

    // reindex from the objects (and the packs) alone: the instance stays deleted
    archive.lose_index();
    run_ok(&mut archive.strata(&["reindex"]));
    let shown = run_ok(&mut archive.strata(&["show", &expired.study_uid, "--json"]));
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(shown.contains(&kept.sop_instance_uid), "{shown}");
    assert!(!shown.contains(&expired.sop_instance_uid), "{shown}");
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    let deletes = archive.audit_records("delete");
    assert!(
        deletes.iter().any(|d| d["outcome"]
            .as_str()
            .unwrap()
            .contains("requested, 1 instances")),
        "{deletes:?}"
    );
}
