//! The CLI on its own: config, import (summary, exclusivity), show, verify finding each
//! kind of damage, and reindex rebuilding the index from the objects alone.

use crate::common::*;
use std::path::PathBuf;

#[test]
fn config_prints_every_default_and_rejects_unknown_keys() {
    let out = run_ok(std::process::Command::new(strata_bin()).arg("config"));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "[archive]",
        "data_dir = \"./strata-data\"",
        "[dicom]",
        "ae_title = \"STRATA\"",
        "port = 11112",
        "[http]",
        "port = 8080",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    let dir = scratch("cli-config");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[dicom]\nae_titel = \"X\"\n").unwrap();
    let out = run(std::process::Command::new(strata_bin())
        .arg("--config")
        .arg(&bad)
        .arg("config"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ae_titel"));
}

#[test]
fn import_summarises_and_reindex_rebuilds_the_same_index() {
    let archive = Archive::new("cli-import");
    let ct = dcm_files(ct_study());
    let (valid, broken) = pydicom_samples();
    let samples = archive.dir.path().join("samples");
    std::fs::create_dir_all(&samples).unwrap();
    for (i, f) in valid.iter().chain(broken.iter()).enumerate() {
        std::fs::copy(
            f,
            samples.join(format!(
                "{i:03}-{}",
                f.file_name().unwrap().to_str().unwrap()
            )),
        )
        .unwrap();
    }
    std::fs::write(samples.join("README.txt"), "not dicom").unwrap();

    let out = run(archive
        .strata(&["import", "--json"])
        .arg(ct_study())
        .arg(&samples));
    assert_eq!(out.status.code(), Some(1), "rejections make import exit 1");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // the CT folder also holds the generator's `.complete` marker, rejected as non-DICOM
    let files = walk(ct_study()).len() + valid.len() + broken.len() + 1;
    assert_eq!(report["files"].as_u64().unwrap() as usize, files);
    let rejected = report["rejected"].as_array().unwrap();
    assert!(rejected
        .iter()
        .any(|r| r["path"].as_str().unwrap().ends_with("README.txt")
            && r["reason"]
                .as_str()
                .unwrap()
                .contains("not a DICOM Part-10 file")));
    // (the DICOMDIRs among them are skipped, said as such, rather than rejected)
    let skipped_now = report["skipped"].as_array().unwrap().len();
    assert!(
        rejected.len() + skipped_now > broken.len() / 2,
        "most broken files are rejected: {rejected:?}"
    );
    for r in rejected {
        assert!(!r["reason"].as_str().unwrap().is_empty());
    }
    let stored = report["stored"].as_u64().unwrap();
    let versions = report["new_versions"].as_array().unwrap().len() as u64;
    let present = report["already_present"].as_u64().unwrap();
    let same = report["same_data_set"].as_array().unwrap().len() as u64;
    let skipped = report["skipped"].as_array().unwrap().len() as u64;
    assert_eq!(
        (stored + versions + present + same + skipped) as usize + rejected.len(),
        files
    );
    assert_eq!(archive.total_instances(), stored);

    // importing again: everything already present
    let again: serde_json::Value =
        serde_json::from_slice(&run(archive.strata(&["import", "--json"]).arg(ct_study())).stdout)
            .unwrap();
    assert_eq!(
        again["already_present"].as_u64().unwrap() as usize,
        ct.len()
    );

    // import needs exclusive access and says who holds the archive
    let server = archive.start();
    let busy = run(archive.strata(&["import"]).arg(ct_study()));
    assert_eq!(busy.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&busy.stderr);
    assert!(
        msg.contains(&format!("in use by pid {}", server.pid())) && msg.contains("serve"),
        "{msg}"
    );
    let before = archive.ls_json();
    server.stop();

    // reindex from the objects alone gives the same studies and counts
    archive.lose_index();
    run_ok(&mut archive.strata(&["reindex"]));
    let after = archive.ls_json();
    let strip = |v: &serde_json::Value| -> Vec<(String, u64, u64, u64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["study_uid"].as_str().unwrap().to_string(),
                    s["instances"].as_u64().unwrap(),
                    s["objects"].as_u64().unwrap(),
                    s["bytes"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(strip(&before), strip(&after));
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
}

#[test]
fn verify_finds_corrupt_missing_and_orphan_objects() {
    let archive = Archive::new("cli-verify");
    let ct: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(6).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let (clean, _) = archive.verify_json();
    assert!(clean);

    let objects = walk(&archive.data_dir().join("hot/objects"));
    assert_eq!(objects.len(), 6);
    // flip one byte in the pixel data of one object
    let mut bytes = std::fs::read(&objects[0]).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x01;
    std::fs::write(&objects[0], bytes).unwrap();
    // delete another
    std::fs::remove_file(&objects[1]).unwrap();
    // and drop in an object the index does not know (valid name, valid content)
    let orphan = b"an object nobody indexed";
    let id = blake3::hash(orphan).to_hex().to_string();
    let dir = archive
        .data_dir()
        .join("hot/objects")
        .join(&id[..2])
        .join(&id[2..4]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&id), orphan).unwrap();

    let (clean, report) = archive.verify_json();
    assert!(!clean);
    let ids = |k: &str| -> Vec<String> {
        report[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    let name = |p: &PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(ids("corrupt"), vec![name(&objects[0])]);
    assert_eq!(ids("missing"), vec![name(&objects[1])]);
    assert_eq!(ids("orphans"), vec![id]);
    let corrupt = &report["corrupt"][0];
    assert!(
        corrupt["study_uid"].as_str().unwrap().len() > 5,
        "names the study: {corrupt}"
    );
    assert!(corrupt["sop_instance_uid"].as_str().unwrap().len() > 5);

    // show names every kind of UID
    let study = archive.ls_json()[0]["study_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let shown: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut archive.strata(&["show", &study, "--json"])).stdout)
            .unwrap();
    assert_eq!(shown["kind"], "study");
    let series = shown["series"][0]["series_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let shown: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut archive.strata(&["show", &series, "--json"])).stdout)
            .unwrap();
    assert_eq!(shown["kind"], "series");
    let missing = run(&mut archive.strata(&["show", "1.2.3.999"]));
    assert_eq!(missing.status.code(), Some(2));
}

/// Issue 12, operations polish: `show` in plain text with ISO 8601 times; output piped
/// into `head` ends quietly (no panic); an
/// audit log no anchor vouches for is a warning with its own exit code (3), not
/// "intact"; an error is said once; SIGHUP does not stop the server; and a request for
/// an unknown study through the running server's admin API says "no study", not an
/// HTTP status.
#[test]
fn piped_output_unanchored_audit_and_unknown_studies_are_reported_plainly() {
    let archive = Archive::new("cli-polish");
    let ct: Vec<_> = dcm_files(ct_study()).into_iter().take(3).collect();
    run_ok(archive.strata(&["import"]).args(&ct));

    let out = run(std::process::Command::new("sh").arg("-c").arg(format!(
        "'{}' --config '{}' audit export --format json | head -1",
        strata_bin().display(),
        archive.config.display()
    )));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    // stores are recorded, but nothing anchored the chain yet
    let out = run(&mut archive.strata(&["audit", "verify"]));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("NO anchor"));
    run_ok(&mut archive.strata(&["audit", "anchor"]));
    run_ok(&mut archive.strata(&["audit", "verify"]));

    // `show` speaks plainly (not TOML), with ISO 8601 times
    let study = archive.ls_json()[0]["study_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run_ok(&mut archive.strata(&["show", &study]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("study {study}")), "{text}");
    assert!(
        text.contains(", served: ") && text.contains("received 20"),
        "{text}"
    );
    assert!(
        !text.contains("[[") && !text.contains("received_at_ms"),
        "{text}"
    );

    // every error said once, with its context
    let out = run(std::process::Command::new(strata_bin()).args([
        "--config",
        "/nonexistent/strata.toml",
        "ls",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("/nonexistent/strata.toml"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let server = archive.start();
    // SIGHUP does not end the server: it says the configuration is read at start
    run_ok(std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(server.echo_ok(), "the server goes on after SIGHUP");
    assert!(server.log_text().contains("SIGHUP received and ignored"));
    let out = run(&mut archive.strata(&["hold", "1.2.3.4.5.404", "--reason", "x"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no study 1.2.3.4.5.404") && !err.contains("404:") && !err.contains("500"),
        "{err}"
    );
    server.stop();
}

/// Issue 12 (trial): `audit verify` where there is no archive says so, and creates
/// nothing (it used to create `<data_dir>/cold` and fail with "No such file or
/// directory (os error 2)").
#[test]
fn audit_commands_without_an_archive_say_so_and_create_nothing() {
    let archive = Archive::new("cli-audit-nothing");
    for args in [&["audit", "verify"][..], &["audit", "anchor"]] {
        let out = run(&mut archive.strata(args));
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no audit log at"), "{args:?}: {err}");
        assert!(
            !archive.data_dir().exists(),
            "{args:?} created the data directory"
        );
    }
}

/// Issue 12: every listing, status and action command speaks JSON with `--json` (and
/// text without it), with times as ms since the epoch in JSON and ISO 8601 in text.
#[test]
fn every_command_speaks_json_when_asked() {
    let archive = Archive::with_config("cli-json", "[retention]\nstudy_age = \"365days\"\n");
    let ct: Vec<std::path::PathBuf> = dcm_files(ct_study()).into_iter().take(3).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = archive.ls_json()[0]["study_uid"]
        .as_str()
        .unwrap()
        .to_string();
    let out_dir = archive.dir.path().join("out");
    let bag = archive.dir.path().join("bag");
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run(&mut archive.strata(args));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    assert_eq!(
        json(&[
            "export",
            &study,
            "--out",
            out_dir.to_str().unwrap(),
            "--json"
        ])["files"],
        3
    );
    assert_eq!(
        json(&["manifest", &study, "--out", bag.to_str().unwrap(), "--json"])["files"],
        3
    );
    let held = json(&["hold", &study, "--reason", "matter 9", "--json"]);
    assert_eq!(held["hold"]["why"], "matter 9");
    assert!(held["hold"]["since_ms"].as_u64().is_some());
    for args in [
        &["ls", "--json"][..],
        &["show", &study, "--json"],
        &["holds", "--json"],
        &["tombstones", "--json"],
        &["tier", "status", "--json"],
        &["tier", "run", "--json"],
        &["verify", "--json"],
        &["audit", "verify", "--json"],
        &["audit", "log", "--json"],
        &["audit", "anchor", "--json"],
        &["retention", "--dry-run", "--json"],
        &["reindex", "--json"],
    ] {
        json(args);
    }
    let released = json(&["hold", &study, "--release", "--reason", "closed", "--json"]);
    assert_eq!(released["released"], true);
    assert_eq!(
        json(&["delete", &study, "--reason", "test", "--json"])["objects"],
        3
    );
}

/// Issue 11 field case: `strata import` of a CD folder (a DICOMDIR and the files it
/// indexes) stores the files and skips the DICOMDIR, saying why (PS3.10 §8.6: it is the
/// media's directory, not an instance), and exits 0; it used to reject it and exit 1.
#[test]
fn import_of_a_cd_skips_its_dicomdir() {
    let archive = Archive::new("cli-dicomdir");
    let tests = pydicom_samples()
        .0
        .first()
        .and_then(|p| p.parent())
        .unwrap()
        .join("dicomdirtests");
    let cd = archive.dir.path().join("cd");
    std::fs::create_dir_all(&cd).unwrap();
    std::fs::copy(tests.join("DICOMDIR"), cd.join("DICOMDIR")).unwrap();
    run_ok(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(tests.join("77654033"))
            .arg(&cd),
    );
    let out = run(archive.strata(&["import"]).arg(&cd));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("1 skipped") && text.contains("a DICOMDIR"),
        "{text}"
    );
    assert!(archive.total_instances() > 0);
}

/// `strata ls`, `ls STUDY` and `show UID` are accesses too: each is an audit record
/// `query` of the OS user who ran it, naming what was looked at (issue 14, item 5).
#[test]
fn ls_and_show_are_audited_as_the_users_queries() {
    let archive = Archive::new("cli-audit");
    let files: Vec<_> = dcm_files(ct_study()).into_iter().take(2).collect();
    run_ok(archive.strata(&["import"]).args(&files));
    let study = strata::dicom::header::read_header_blocking(&files[0])
        .unwrap()
        .study_uid;
    run_ok(&mut archive.strata(&["ls"]));
    run_ok(&mut archive.strata(&["ls", &study]));
    run_ok(&mut archive.strata(&["show", &study, "--json"]));
    let missing = run(&mut archive.strata(&["show", "1.2.3.4.5"]));
    assert!(!missing.status.success());
    let queries: Vec<_> = archive
        .audit_records("query")
        .into_iter()
        .filter(|q| q["actor"]["kind"] == "cli")
        .collect();
    let outcomes: Vec<&str> = queries
        .iter()
        .map(|q| q["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "ls: 1 studies",
            "ls: shown",
            "show: shown",
            "show: not held"
        ],
        "{queries:?}"
    );
    assert_eq!(queries[1]["uids"][0], study.as_str());
    assert_eq!(queries[3]["uids"][0], "1.2.3.4.5");
    assert!(queries
        .iter()
        .all(|q| !q["actor"]["user"].as_str().unwrap().is_empty()));
}
