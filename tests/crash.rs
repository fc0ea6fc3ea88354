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
    let acked = send_collecting(port, files, crash_after, crash);
    assert!(
        acked.len() >= crash_after && acked.len() < files.len(),
        "the crash must land mid-send ({} acked)",
        acked.len()
    );
    acked
}

/// [`send_and_crash`] without asking that the crash landed mid-send.
fn send_collecting(
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
    acked
}

/// The SOP Instance UIDs of a study as the archive lists them.
fn present_in(archive: &Archive, study: &str) -> HashSet<String> {
    let view: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut archive.strata(&["ls", study, "--json"])).stdout)
            .unwrap();
    view["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().iter())
        .map(|i| i["sop_instance_uid"].as_str().unwrap().to_string())
        .collect()
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
    let present = present_in(&archive, &study);
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

/// After a restart: every acknowledged instance of the archive's one study is listed,
/// and verify is clean (`what` says which case failed). Returns verify's report.
fn assert_nothing_acked_lost(
    archive: &Archive,
    acked: &HashSet<String>,
    what: &str,
) -> serde_json::Value {
    let study = archive.ls_json()[0]["study_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let present = present_in(archive, &study);
    let lost: Vec<&String> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "{what}: acknowledged but lost: {lost:?}");
    let (clean, report) = archive.verify_json();
    assert!(clean, "{what}: verify after the crash: {report}");
    report
}

/// Every instance the archive holds after the restart — the acknowledged ones and those
/// the journal replay indexed — has its metadata record in the index: QIDO-RS returns
/// `Rows` and `Columns`, which the index keeps no column for, only from the records
/// (PS3.18 10.6.1.2; for an instance without one, `Rows` is only returned, empty, and
/// matches). Ingest leaves a journaled object's record out of its journal record and
/// replay captures it again from the object (docs/formats.md, the ingest journal).
fn assert_all_have_metadata_records(archive: &Archive, server: &Server, what: &str) {
    let study = archive.ls_json()[0]["study_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let present = present_in(archive, &study);
    let (code, body) = http_get(
        server.http_port,
        "/dicom-web/instances?Rows=512&includefield=Columns&limit=10000",
    )
    .unwrap();
    assert_eq!(code, 200, "{what}: {body}");
    let found: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let matched: HashSet<String> = found
        .iter()
        .filter(|i| i["00280010"]["Value"][0] == 512 && i["00280011"]["Value"][0] == 512)
        .filter_map(|i| i["00080018"]["Value"][0].as_str().map(str::to_string))
        .collect();
    let without: Vec<&String> = present.difference(&matched).collect();
    assert!(
        without.is_empty(),
        "{what}: no metadata record for {without:?}"
    );
}

/// Waits until the server's failpoint fired (it logs so before killing itself).
fn wait_for_failpoint(server: &Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("failpoint reached") {
        assert!(
            Instant::now() < deadline,
            "{what}: the failpoint never fired"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One record of the ingest journal, as `docs/formats.md` "Ingest journal" lays it out
/// (read here independently of Strata's code).
struct JournalRecord {
    segment: std::path::PathBuf,
    /// Offset in the segment file.
    offset: u64,
    /// Where the object's bytes start in the segment file, and how many.
    object: (u64, u64),
    id: String,
}

/// The records of the journal from its checkpoint on, up to the first that does not
/// parse (the record format's fixed part: magic, version, own position, lengths).
fn journal_records(data_dir: &std::path::Path) -> Vec<JournalRecord> {
    use std::os::unix::fs::FileExt;
    const SEGMENT: u64 = 32 << 20;
    let dir = data_dir.join("hot/journal");
    let checkpoint: serde_json::Value = std::fs::read(dir.join("checkpoint"))
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or(serde_json::json!({"v": 1, "lsn": 0}));
    let mut lsn = checkpoint["lsn"].as_u64().unwrap();
    let mut records = Vec::new();
    loop {
        let segment = dir.join(format!("{:016x}.seg", lsn / SEGMENT));
        let Ok(file) = std::fs::File::open(&segment) else {
            break;
        };
        let offset = lsn % SEGMENT;
        let mut fixed = [0u8; 48];
        if file.read_exact_at(&mut fixed, offset).is_err()
            || &fixed[0..4] != b"STRJ"
            || u64::from_le_bytes(fixed[8..16].try_into().unwrap()) != lsn
        {
            break;
        }
        let h = u32::from_le_bytes(fixed[16..20].try_into().unwrap()) as u64;
        let m = u32::from_le_bytes(fixed[20..24].try_into().unwrap()) as u64;
        let b = u64::from_le_bytes(fixed[24..32].try_into().unwrap());
        let mut header = vec![0u8; h as usize];
        file.read_exact_at(&mut header, offset + 48).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        records.push(JournalRecord {
            segment,
            offset,
            object: (offset + 48 + h + m, b),
            id: header["id"].as_str().unwrap().to_string(),
        });
        lsn += (48 + h + m + b).div_ceil(8) * 8;
    }
    records
}

/// Issue 17, the ingest journal: `kill -9` at each step of a journaled commit group —
/// its records synced, its files placed (unsynced), its index batch written (unsynced),
/// and in the middle of a checkpoint (file system synced, index log and checkpoint
/// not) — loses no acknowledged instance; the restart replays the journal, and verify
/// is clean.
#[test]
fn kill9_at_each_journal_step_loses_no_acknowledged_instance() {
    let ct = dcm_files(ct_study());
    for (point, skip) in [
        ("journal-after-append", "30"),
        ("journal-after-place", "30"),
        ("journal-after-index", "30"),
        ("journal-mid-checkpoint", "2"),
    ] {
        let archive = Archive::new(&format!("crash-{point}"));
        let server =
            archive.start_with_env(&[("STRATA_FAILPOINT", point), ("STRATA_FAILPOINT_SKIP", skip)]);
        let acked = send_collecting(server.dicom_port, &ct, 0, || {});
        // the failpoint fires mid-send, or (a checkpoint) at the latest just after it
        wait_for_failpoint(&server, point);
        server.kill9();
        assert!(!acked.is_empty(), "{point}: nothing acknowledged before it");

        let server = archive.start();
        let log = server.log_text();
        if point != "journal-mid-checkpoint" {
            assert!(
                log.contains("replayed the ingest journal"),
                "{point}: {log}"
            );
        }
        assert_nothing_acked_lost(&archive, &acked, point);
        assert_all_have_metadata_records(&archive, &server, point);
        // and the archive goes on: everything sent again is there once
        crate::store::storescu_send(server.dicom_port, &ct);
        assert_eq!(archive.total_instances() as usize, ct.len(), "{point}");
        server.stop();
    }
}

/// Issue 17: a torn journal tail, and the files a power loss takes with it. `kill -9`
/// after a group's records are synced; then the last record is torn (its object's last
/// bytes overwritten, as a write cut by the power would leave it) and the files of the
/// records before it are deleted (never synced in place before a checkpoint, they may
/// be lost with the power). The restart rewrites those files from the journal, ends the
/// replay at the torn record, and every acknowledged instance is there, whole.
#[test]
fn a_torn_journal_tail_ends_the_replay_and_journaled_files_are_rewritten() {
    use std::os::unix::fs::FileExt;
    let ct = dcm_files(ct_study());
    // no checkpoint while the study comes in: every record stays after the checkpoint
    let archive = Archive::with_config(
        "crash-torn-journal",
        "[ingest]\njournal_checkpoint_ms = 600000\n",
    );
    let server = archive.start_with_env(&[
        ("STRATA_FAILPOINT", "journal-after-append"),
        ("STRATA_FAILPOINT_SKIP", "40"),
    ]);
    let acked = send_and_crash(server.dicom_port, &ct, 0, || {});
    wait_for_failpoint(&server, "a torn tail");
    server.kill9();

    let records = journal_records(&archive.data_dir());
    assert!(
        records.len() >= 2,
        "records after the checkpoint: {}",
        records.len()
    );
    let (last, before) = records.split_last().unwrap();
    // tear the last record: its object's last 8 bytes never reached the disk
    let seg = std::fs::OpenOptions::new()
        .write(true)
        .open(&last.segment)
        .unwrap();
    let (start, len) = last.object;
    seg.write_all_at(&[0xA5; 8], start + len - 8).unwrap();
    assert!(last.offset < start);
    // lose the files of the records before it
    let objects = archive.data_dir().join("hot/objects");
    let mut deleted = 0;
    for r in before {
        let path = objects.join(&r.id[0..2]).join(&r.id[2..4]).join(&r.id);
        if std::fs::remove_file(&path).is_ok() {
            deleted += 1;
        }
    }
    assert!(deleted > 0, "journaled files to lose");

    let server = archive.start();
    assert!(server.log_text().contains("replayed the ingest journal"));
    let report = assert_nothing_acked_lost(&archive, &acked, "a torn tail");
    assert_all_have_metadata_records(&archive, &server, "a torn tail");
    assert_eq!(
        report["missing"].as_array().map_or(0, |m| m.len()),
        0,
        "{report}"
    );
    // the torn record's instance was never acknowledged; sent again, it is stored
    crate::store::storescu_send(server.dicom_port, &ct);
    assert_eq!(archive.total_instances() as usize, ct.len());
    server.stop();
}
