//! Full disk: with the free-space floor above the free space, or the disk really full,
//! stores get 0xA700, nothing half-written remains, and stores succeed again once space
//! is back — without restarting. The hot tier sits on a small tmpfs mounted for the test
//! (the test suite runs as root, as the project's scripts require).

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Mount(PathBuf);

impl Mount {
    /// Mounts a small tmpfs, or says loudly why it cannot (not root, no mount rights).
    fn tmpfs(dir: &Path, size_mb: u64) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "WARNING: cannot mount a tmpfs for the full-disk test ({}); running the \
                 free-space-floor half only, ENOSPC is NOT exercised",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Fills `dir`'s filesystem until about `leave` bytes remain free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let filler = dir.join("filler");
    let free = free_bytes(dir);
    assert!(free > leave);
    std::fs::write(&filler, vec![0xAAu8; (free - leave) as usize]).unwrap();
    filler
}

fn send(port: u16, files: &[&Path], expect: &str) {
    let mut cmd = python("store_pynetdicom.py");
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--called-ae",
        "STRATA",
        "--ts",
        "as-is",
    ])
    .args(["--expect-status", expect])
    .args(files);
    run_ok(&mut cmd);
}

fn assert_nothing_written(hot: &Path) {
    let leftovers: Vec<PathBuf> = walk(hot)
        .into_iter()
        .filter(|p| !p.ends_with("filler"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written or stored files left behind: {leftovers:?}"
    );
}

#[test]
fn full_disk_refuses_with_a700_and_recovers_when_space_returns() {
    let archive = Archive::with_config("full-disk", "");
    // floor of 1 MiB on a 24 MiB hot tier
    let text = std::fs::read_to_string(&archive.config)
        .unwrap()
        .replace("min_free_space_mb = 0", "min_free_space_mb = 1");
    std::fs::write(&archive.config, text).unwrap();
    let hot = archive.data_dir().join("hot");
    let Some(_mount) = Mount::tmpfs(&hot, 24) else {
        return floor_only_fallback(&archive);
    };
    let server = archive.start();

    let small = dcm_files(ct_study())[0].clone();
    let big_dir = archive.dir.path().join("big");
    run_ok(python("gen_ct.py").arg("--out").arg(&big_dir).args([
        "--instances",
        "1",
        "--rows",
        "1536",
        "--cols",
        "1536",
        "--seed",
        "9",
    ]));
    let big = dcm_files(&big_dir)[0].clone();
    assert!(std::fs::metadata(&big).unwrap().len() > 4 << 20);

    // 1. below the configured floor: refused before anything is written
    let filler = fill(&hot, 512 << 10);
    send(server.dicom_port, &[&small], "0xA700");
    assert_nothing_written(&hot);

    // 2. above the floor but too little room for the object: the write hits ENOSPC
    std::fs::remove_file(&filler).unwrap();
    let filler = fill(&hot, 2 << 20);
    send(server.dicom_port, &[&big], "0xA700");
    assert_nothing_written(&hot);
    assert!(server.echo_ok());

    // 3. space is back: the same stores succeed, no restart needed
    std::fs::remove_file(&filler).unwrap();
    send(server.dicom_port, &[&small, &big], "0x0000");
    assert_eq!(archive.total_instances(), 2);
    let metrics = server.metrics();
    assert!(
        metrics.contains("strata_store_rejections_total{reason=\"out_of_space\"} 2"),
        "{metrics}"
    );
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    server.stop();
}

/// Issue 17: a full disk while the ingest journal takes the stores. The hot tier (and
/// its journal, `hot/journal`) sits on a 96 MiB tmpfs. Stores go through the journal;
/// then the disk is filled to the brim: stores are refused with 0xA700 (no room for the
/// object, nor for another journal segment) and the server keeps serving; with space
/// back they succeed again. Then `kill -9` and a restart (the journal is replayed):
/// every acknowledged instance is there and verify is clean.
#[test]
fn a_full_disk_during_journal_writes_refuses_and_loses_nothing() {
    let archive = Archive::with_config("full-disk-journal", "");
    let hot = archive.data_dir().join("hot");
    let Some(_mount) = Mount::tmpfs(&hot, 96) else {
        eprintln!("WARNING: no tmpfs: the full-disk journal test is NOT exercised");
        return;
    };
    let server = archive.start();
    let ct = dcm_files(ct_study());
    let refs = |range: std::ops::Range<usize>| -> Vec<&Path> {
        ct[range].iter().map(|p| p.as_path()).collect()
    };
    send(server.dicom_port, &refs(0..20), "0x0000");
    let segments = std::fs::read_dir(hot.join("journal"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count();
    assert!(segments >= 1, "the stores went through the journal");

    let filler = fill(&hot, 256 << 10);
    send(server.dicom_port, &refs(20..25), "0xA700");
    assert!(server.echo_ok());

    std::fs::remove_file(&filler).unwrap();
    // more than the first segment holds: the journal needs another, for which there is
    // no room (it then syncs the groups in place)
    send(server.dicom_port, &refs(20..80), "0x0000");
    assert_eq!(archive.total_instances(), 80);
    server.kill9();

    let server = archive.start();
    assert_eq!(archive.total_instances(), 80);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    server.stop();
}

/// Without mount rights: a floor far above the free space refuses every store with
/// 0xA700 and writes nothing; with the floor lowered (a restart), the same store succeeds.
fn floor_only_fallback(archive: &Archive) {
    let config = std::fs::read_to_string(&archive.config).unwrap();
    std::fs::write(
        &archive.config,
        config.replace("min_free_space_mb = 1", "min_free_space_mb = 1000000000"),
    )
    .unwrap();
    let small = dcm_files(ct_study())[0].clone();
    let server = archive.start();
    send(server.dicom_port, &[&small], "0xA700");
    assert_nothing_written(&archive.data_dir().join("hot"));
    server.stop();
    std::fs::write(
        &archive.config,
        config.replace("min_free_space_mb = 1", "min_free_space_mb = 0"),
    )
    .unwrap();
    let server = archive.start();
    send(server.dicom_port, &[&small], "0x0000");
    assert_eq!(archive.total_instances(), 1);
    server.stop();
}

/// `[audit] fail_closed` (the default): when the audit log cannot take the record of an
/// access to pixel data — its disk is full — C-GET and WADO-RS are refused (a DIMSE
/// failure, HTTP 503) and nothing is sent; queries still answer; once the disk has
/// room again, retrievals work and are on record.
#[test]
fn retrievals_fail_closed_while_the_audit_log_cannot_be_written() {
    let archive = Archive::new("audit-fail-closed");
    let Some(mount) = Mount::tmpfs(&archive.data_dir().join("audit"), 1) else {
        eprintln!("WARNING: no tmpfs: the fail-closed audit test is NOT exercised");
        return;
    };
    let server = archive.start();
    let (_, study) = store_two_ct(server.dicom_port);
    let get = |tag: &str| {
        python("get_status.py")
            .args(["--port", &server.dicom_port.to_string(), "--study", &study])
            .arg("--called-ae")
            .arg(tag)
            .output()
            .unwrap()
    };
    let wado = format!("/dicom-web/studies/{study}");

    let filler = fill(&mount.0, 0);
    // the log's last page may still take a record or two: retrieve until one is refused
    let mut went_ahead = 0;
    let refused = loop {
        let out = get("STRATA");
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if r["status"] != 0 {
            break r;
        }
        went_ahead += 1;
        assert!(
            went_ahead < 20,
            "retrievals never refused on a full audit disk: {r}"
        );
    };
    assert_eq!(
        refused["received"], 0,
        "nothing sent without a record: {refused}"
    );
    let (code, body) = http_get(server.http_port, &wado).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("audit"), "{body}");
    // queries are not pixel data: they answer (their record's failure is logged)
    let (code, _) = http_get(server.http_port, "/dicom-web/studies").unwrap();
    assert_eq!(code, 200);
    assert!(server.log_text().contains("AUDIT RECORD NOT WRITTEN"));

    std::fs::remove_file(&filler).unwrap();
    let got = get("STRATA");
    let r: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(
        (r["status"].as_u64(), r["received"].as_u64()),
        (Some(0), Some(2)),
        "{r}"
    );
    let (code, _) = http_request(server.http_port, "GET", &wado).unwrap();
    assert_eq!(code, 200);
    server.stop();
    let begun = archive.audit_records("begin_transfer");
    assert_eq!(
        begun.len(),
        went_ahead + 2,
        "only retrievals on record went ahead: {begun:?}"
    );
}
