//! Ack means durable (DESIGN promise 1): `kill -9` in the middle of a multi-association
//! send, restart, and every instance whose success response was received is there and
//! verifies; nothing corrupt, nothing indexed without its object.

use crate::common::*;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends `files` to `port` over four associations (pynetdicom, one process each) and,
/// once `crash_after` stores were acknowledged, calls `crash` while the rest are in
/// flight; returns the SOP Instance UIDs whose success response was received.
pub(crate) fn send_and_crash(
    port: u16,
    files: &[std::path::PathBuf],
    crash_after: usize,
    crash: impl FnOnce(),
) -> HashSet<String> {
    let port = port.to_string();
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut readers = Vec::new();
    let mut children = Vec::new();
    for chunk in files.chunks(files.len().div_ceil(4)) {
        let mut child = python("store_pynetdicom.py")
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--called-ae",
                "STRATA",
                "--ts",
                "explicit",
            ])
            .args(chunk)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acked = acked.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["status"].as_u64() == Some(0) {
                    acked
                        .lock()
                        .unwrap()
                        .insert(v["sop_instance_uid"].as_str().unwrap().to_string());
                }
            }
        }));
        children.push(child);
    }
    // crash once a good number of stores were acknowledged, while the rest are in flight
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < crash_after {
        assert!(Instant::now() < deadline, "stores were too slow to start");
        std::thread::sleep(Duration::from_millis(5));
    }
    crash();
    for mut c in children {
        let _ = c.wait();
    }
    for r in readers {
        r.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= crash_after && acked.len() < files.len(),
        "the crash must land mid-send ({} acked)",
        acked.len()
    );
    acked
}

#[test]
fn kill9_mid_send_loses_no_acknowledged_instance() {
    let archive = Archive::new("crash-mid-send");
    let server = archive.start();
    let ct = dcm_files(ct_study());
    let port = server.dicom_port;
    let acked = send_and_crash(port, &ct, 40, || server.kill9());

    // restart: start-up recovery runs, then every acknowledged instance must be present
    let server = archive.start();
    let studies = archive.ls_json();
    let study = studies[0]["study_uid"].as_str().unwrap().to_string();
    let view: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut archive.strata(&["ls", &study, "--json"])).stdout)
            .unwrap();
    let present: HashSet<String> = view["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .map(|i| i["sop_instance_uid"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );
    let (clean, report) = archive.verify_json();
    assert!(clean, "verify after crash: {report}");
    assert_eq!(report["corrupt"].as_array().unwrap().len(), 0);
    assert_eq!(report["dangling"].as_array().unwrap().len(), 0);
    let tmp = archive.data_dir().join("hot/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "tmp files are swept at start-up"
    );

    // and the archive keeps working: send everything again, all accounted for once
    crate::store::storescu_send(server.dicom_port, &ct);
    assert_eq!(archive.total_instances() as usize, ct.len());
    server.stop();
}

/// `kill -9` of `strata import` and of `strata reindex` half-way, then the same command
/// again: every object is there once, the index is whole, and verify is clean. An index
/// swap interrupted between its two renames is repaired by the next exclusive open.
#[test]
fn kill9_mid_import_and_mid_reindex_loses_nothing() {
    let archive = Archive::new("crash-import-reindex");
    let ct = dcm_files(ct_study());

    let mut import = archive.strata(&["import"]).arg(ct_study()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let _ = import.kill();
    let _ = import.wait();
    let out = run(archive.strata(&["import", "--json"]).arg(ct_study()));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = report["stored"].as_u64().unwrap() + report["already_present"].as_u64().unwrap();
    assert_eq!(stored as usize, ct.len(), "{report}");
    assert_eq!(archive.total_instances() as usize, ct.len());
    // last_access_ms is the stored-at time, which a reindex takes from the files' mtime
    let without_access = |mut v: serde_json::Value| {
        for s in v.as_array_mut().unwrap() {
            s.as_object_mut().unwrap().remove("last_access_ms");
        }
        v
    };
    let before = without_access(archive.ls_json());

    let mut reindex = archive.strata(&["reindex"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = reindex.kill();
    let _ = reindex.wait();
    run_ok(&mut archive.strata(&["reindex"]));
    assert_eq!(without_access(archive.ls_json()), before);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");

    // the swap's crash window: `index` moved aside, the rebuilt one not yet in place
    let data = archive.data_dir();
    std::fs::rename(data.join("index"), data.join("index.old")).unwrap();
    std::fs::create_dir_all(data.join("index.rebuild")).unwrap();
    let server = archive.start();
    assert_eq!(without_access(archive.ls_json()), before);
    assert!(!data.join("index.rebuild").exists() && !data.join("index.old").exists());
    server.stop();
}
