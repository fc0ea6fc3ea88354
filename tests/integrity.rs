//! Integrity for auditors: an exported study and its BagIt manifest verify with
//! `sha256sum -c`, Debian's `b3sum -c` and the PyPI `bagit` validator, and one changed
//! byte fails all three.

use crate::common::*;
use std::process::Command;

#[test]
fn a_bag_verifies_with_standard_tools_and_a_bagit_validator() {
    let archive = Archive::new("integrity-bag");
    let ct: Vec<_> = dcm_files(ct_study()).into_iter().take(6).collect();
    let samples: Vec<_> = pydicom_samples().0.iter().take(8).cloned().collect();
    run(archive.strata(&["import"]).args(&ct).args(&samples));
    let bag = archive.dir.path().join("bag");
    let out = run_ok(archive.strata(&["manifest", "--all", "--out"]).arg(&bag));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("bag written"), "{text}");
    let files = walk(&bag.join("data")).len();
    assert!(files >= 6);

    let check = |cmd: &mut Command| cmd.current_dir(&bag).status().unwrap().success();
    let sha = || check(Command::new("sha256sum").args(["-c", "--quiet", "manifest-sha256.txt"]));
    let b3 = || check(Command::new("b3sum").args(["-c", "--quiet", "manifest-blake3.txt"]));
    let tags =
        || check(Command::new("sha256sum").args(["-c", "--quiet", "tagmanifest-sha256.txt"]));
    let validator = || check(python("bagit_validate.py").arg(&bag));
    assert!(sha() && b3() && tags(), "manifests must check");
    assert!(validator(), "the bagit validator must accept the bag");
    // every payload file's blake3 is its object id: the manifest lists ids
    let manifest = std::fs::read_to_string(bag.join("manifest-blake3.txt")).unwrap();
    assert_eq!(manifest.lines().count(), files);
    let summary = std::fs::read_to_string(bag.join("strata-summary.txt")).unwrap();
    assert!(summary.contains(&format!("Files: {files}")), "{summary}");

    // one flipped byte
    let victim = walk(&bag.join("data")).remove(0);
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&victim, &bytes).unwrap();
    assert!(
        !sha() && !b3(),
        "a changed payload must fail both manifests"
    );
    assert!(!validator(), "a changed payload must fail the validator");
}

fn audit_verify(archive: &Archive) -> (bool, serde_json::Value) {
    let out = run(&mut archive.strata(&["audit", "verify", "--json"]));
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&out.stderr))),
    )
}

/// Every access lands in the hash-chained log; editing, deleting, inserting or
/// reordering one record is found and named, and so is a consistent rewrite of the
/// whole log once its head was anchored in the cold tier.
#[test]
fn the_audit_log_records_accesses_and_detects_tampering() {
    let archive = Archive::new("integrity-audit");
    let server = archive.start();
    let ct: Vec<_> = dcm_files(ct_study()).into_iter().take(5).collect();
    crate::store::storescu_send(server.dicom_port, &ct);
    let study = archive.ls_json()[0]["study_uid"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(dcmtk("findscu").args([
        "-S",
        "-aec",
        "STRATA",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        &format!("StudyInstanceUID={study}"),
        "127.0.0.1",
        &server.dicom_port.to_string(),
    ]));
    let got = archive.dir.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    run_ok(
        dcmtk("getscu")
            .args(["-S", "-aec", "STRATA", "-od"])
            .arg(&got)
            .args(["-k", "QueryRetrieveLevel=STUDY", "-k"])
            .arg(format!("StudyInstanceUID={study}"))
            .arg("127.0.0.1")
            .arg(server.dicom_port.to_string()),
    );
    run_ok(
        archive
            .strata(&["export", &study, "--out"])
            .arg(archive.dir.path().join("x")),
    );
    run_ok(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));
    server.stop(); // anchors the head in the cold tier

    let out = run_ok(&mut archive.strata(&["audit", "log", "--json", "--study", &study]));
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for action in ["store", "retrieve", "export", "tier_move"] {
        assert!(actions.contains(&action), "no {action} record: {actions:?}");
    }
    // an export says where the files went
    let export = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "export")
        .unwrap();
    let outcome = export["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("ok (to /") && outcome.ends_with("/x)"),
        "{outcome}"
    );
    // (the CLI's `ls` and `show` are query records of their own, by the OS user)
    let queries = archive.audit_records("query");
    let query = queries
        .iter()
        .find(|q| q["actor"]["kind"] == "dicom")
        .expect("a C-FIND query record");
    assert_eq!(query["actor"]["ae_title"], "FINDSCU");
    let stores = actions.iter().filter(|a| **a == "store").count();
    assert_eq!(stores, ct.len());
    let (ok, report) = audit_verify(&archive);
    assert!(ok, "{report}");
    assert!(report["anchors_checked"].as_u64().unwrap() >= 1);

    let log = archive.data_dir().join("audit/audit.log");
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<String> = original.lines().map(String::from).collect();
    let check = |variant: Vec<String>, line: u64| {
        std::fs::write(&log, variant.join("\n") + "\n").unwrap();
        let (ok, report) = audit_verify(&archive);
        assert!(!ok, "tampering went unnoticed");
        assert_eq!(report["first_bad"][0].as_u64(), Some(line), "{report}");
    };
    let mut edited = lines.clone();
    edited[2] = edited[2].replacen("\"store\"", "\"query\"", 1);
    check(edited, 3);
    let mut deleted = lines.clone();
    deleted.remove(3);
    check(deleted, 4);
    let mut inserted = lines.clone();
    inserted.insert(2, lines[4].clone());
    check(inserted, 3);
    let mut reordered = lines.clone();
    reordered.swap(1, 2);
    check(reordered, 2);

    // a consistent rewrite: every record re-hashed after a change, so the chain holds,
    // but the anchored head no longer matches
    std::fs::write(&log, &original).unwrap();
    assert!(audit_verify(&archive).0);
    let out = run_ok(
        std::process::Command::new("python3")
            .arg(peer_script("audit_rewrite.py"))
            .arg(&log),
    );
    assert!(out.status.success());
    let (ok, report) = audit_verify(&archive);
    assert!(!ok, "a consistent rewrite went unnoticed: {report}");
    assert!(
        report["first_bad"][2]
            .as_str()
            .unwrap()
            .contains("anchored"),
        "{report}"
    );
    std::fs::write(&log, &original).unwrap();
    assert!(audit_verify(&archive).0);

    // for a SIEM: one DICOM audit message (PS3.15 A.5, IHE ATNA) per record
    let out = run_ok(&mut archive.strata(&["audit", "export", "--format", "dicom"]));
    let check = "import sys, xml.etree.ElementTree as ET\n\
        n = 0\n\
        for line in sys.stdin:\n\
        \tm = ET.fromstring(line)\n\
        \tassert m.tag == 'AuditMessage'\n\
        \tev = m.find('EventIdentification')\n\
        \tassert ev.get('EventActionCode') and ev.get('EventDateTime')\n\
        \tassert ev.find('EventID').get('codeSystemName') == 'DCM'\n\
        \tassert m.find('ActiveParticipant') is not None\n\
        \tassert m.find('AuditSourceIdentification').get('AuditSourceID') == 'STRATA'\n\
        \tn += 1\n\
        print(n)\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", check])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = child.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "audit messages are not well-formed"
    );
    assert_eq!(
        String::from_utf8_lossy(&parsed.stdout).trim(),
        original.lines().count().to_string()
    );
}

/// A deleted study leaves a tombstone, is gone from C-FIND, and verify and reindex stay
/// clean; a held study cannot be deleted; a deletion killed after its tombstone is
/// finished at the next start, never undone.
#[test]
fn deletion_tombstones_and_legal_holds() {
    use std::os::unix::process::ExitStatusExt;
    let archive = Archive::new("integrity-delete");
    let (gen, studies) = imported_ct_studies(&archive, 21, "20240102");
    let (a, b, c) = (&studies[0], &studies[1], &studies[2]);
    // A also has a cold pack
    run_ok(&mut archive.strata(&["tier", "move", a, "--to", "cold"]));
    assert_eq!(walk(&archive.data_dir().join("cold/packs")).len(), 1);

    // a held study cannot be deleted
    run_ok(&mut archive.strata(&["hold", b, "--reason", "litigation 2026-17"]));
    let out = run(&mut archive.strata(&["delete", b, "--reason", "cleanup"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("legal hold"));
    assert_eq!(archive.total_instances(), 9);

    // delete A: gone from every tier, tombstoned
    run_ok(&mut archive.strata(&["delete", a, "--reason", "patient request"]));
    assert!(
        walk(&archive.data_dir().join("cold/packs")).is_empty(),
        "pack deleted"
    );
    let out = run_ok(&mut archive.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tombs[0]["study_uid"].as_str(), Some(a.as_str()));
    assert_eq!(tombs[0]["why"], "patient request");
    assert_eq!(tombs[0]["objects"].as_array().unwrap().len(), 3);
    assert_eq!(archive.total_instances(), 6);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");

    // a deletion killed right after its tombstone: finished at the next start
    let out = run(archive
        .strata(&["delete", c, "--reason", "duplicate study"])
        .env("STRATA_FAILPOINT", "delete-after-tombstone"));
    assert_eq!(out.status.signal(), Some(9));
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    assert_eq!(report["pending_deletion"], 3, "{report}");
    let server = archive.start();
    let (clean, report) = archive.verify_json();
    assert!(clean && report["pending_deletion"] == 0, "{report}");
    // C-FIND no longer finds the deleted studies, and still finds B
    for (uid, expected) in [(a, 0), (c, 0), (b, 1)] {
        let out = run_ok(dcmtk("findscu").args([
            "-v",
            "-S",
            "-aec",
            "STRATA",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={uid}"),
            "127.0.0.1",
            &server.dicom_port.to_string(),
        ]));
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(text.matches("(Pending)").count(), expected, "{text}");
    }
    server.stop();

    // reindex keeps the tombstones and the hold, and brings nothing back
    run_ok(&mut archive.strata(&["reindex"]));
    assert_eq!(archive.total_instances(), 3);
    let out = run_ok(&mut archive.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tombs.as_array().unwrap().len(), 2);
    let out = run(&mut archive.strata(&["delete", b, "--reason", "cleanup"]));
    assert!(!out.status.success(), "the hold survives reindex");
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");

    // a deleted study sent again lives again, also through a reindex
    run_ok(archive.strata(&["import"]).arg(&gen));
    assert_eq!(archive.total_instances(), 9);
    run_ok(&mut archive.strata(&["reindex"]));
    assert_eq!(archive.total_instances(), 9, "{}", archive.ls_json());
    assert!(archive.verify_json().0);

    let log = run_ok(&mut archive.strata(&["audit", "log", "--json", "--study", a]));
    let log: serde_json::Value = serde_json::from_slice(&log.stdout).unwrap();
    let outcomes: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "delete")
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.iter().any(|o| o.starts_with("requested")),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| o.starts_with("done")),
        "{outcomes:?}"
    );
    assert!(run(&mut archive.strata(&["audit", "verify"]))
        .status
        .success());
}

/// Imports 4 CT instances and gives every one a copy in both tiers; returns the study
/// and the hot files.
fn study_in_both_tiers(archive: &Archive) -> (String, Vec<std::path::PathBuf>) {
    let ct: Vec<_> = dcm_files(ct_study()).into_iter().take(4).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = archive.ls_json()[0]["study_uid"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));
    run_ok(&mut archive.strata(&["tier", "move", &study, "--to", "hot"]));
    let hot = walk(&archive.data_dir().join("hot/objects"));
    (study, hot)
}

/// Generates three small CT studies of three instances (see [`small_ct_studies`]),
/// imports them, and returns their folder and Study Instance UIDs (in `ls` order).
pub(crate) fn imported_ct_studies(
    archive: &Archive,
    seed: u32,
    start_date: &str,
) -> (std::path::PathBuf, Vec<String>) {
    let gen = small_ct_studies(archive, "gen", 3, 3, seed, start_date);
    run_ok(archive.strata(&["import"]).arg(&gen));
    (gen, archive.study_uids())
}

/// `studies` generated CT studies of `instances` 64x64 slices, one every 9 days from
/// `start_date`, under the archive's directory.
fn small_ct_studies(
    archive: &Archive,
    name: &str,
    studies: usize,
    instances: usize,
    seed: u32,
    start_date: &str,
) -> std::path::PathBuf {
    let dir = archive.dir.path().join(name);
    small_ct(
        &dir,
        &[
            "--studies",
            &studies.to_string(),
            "--instances",
            &instances.to_string(),
            "--seed",
            &seed.to_string(),
            "--start-date",
            start_date,
        ],
    );
    dir
}

fn repair(archive: &Archive) -> (bool, String) {
    let out = run(&mut archive.strata(&["verify", "--repair"]));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn flip(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(path, &bytes).unwrap();
}

/// A flipped byte in a hot object, a deleted hot file, a flipped byte in a pack, a
/// deleted pack and a truncated pack are each found by verify with the object or pack
/// and its study; `verify --repair` fixes every case with a good copy elsewhere, and
/// says loudly, changing nothing, when there is none.
#[test]
fn verify_finds_damage_and_repair_restores_from_the_other_tier() {
    let archive = Archive::new("integrity-repair");
    let (study, hot) = study_in_both_tiers(&archive);
    assert_eq!(hot.len(), 4);
    let packs = || walk(&archive.data_dir().join("cold/packs"));

    // hot damage: one flipped byte, one deleted file
    flip(&hot[0], 5000);
    std::fs::remove_file(&hot[1]).unwrap();
    let (clean, report) = archive.verify_json();
    assert!(!clean);
    assert_eq!(
        report["corrupt"][0]["study_uid"].as_str(),
        Some(study.as_str())
    );
    // the deleted file still has its cold copy: not a loss, but not as recorded either
    let gone = &report["pending_eviction"][0];
    assert_eq!(
        gone["id"].as_str().unwrap(),
        hot[1].file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(gone["study_uid"].as_str(), Some(study.as_str()));
    let (ok, text) = repair(&archive);
    assert!(ok, "{text}");
    assert_eq!(text.matches("hot copy restored").count(), 2, "{text}");
    assert!(archive.verify_json().0);

    // cold damage, each repaired from the hot copies: a flipped byte, a truncated pack,
    // a deleted pack
    for damage in ["flip", "truncate", "delete"] {
        let pack = packs().remove(0);
        match damage {
            "flip" => flip(&pack, 20_000),
            "truncate" => {
                let len = std::fs::metadata(&pack).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&pack)
                    .unwrap()
                    .set_len(len / 3)
                    .unwrap();
            }
            _ => std::fs::remove_file(&pack).unwrap(),
        }
        let (clean, report) = archive.verify_json();
        assert!(!clean, "{damage}");
        let bad = &report["bad_packs"][0];
        assert_eq!(
            bad["study_uid"].as_str(),
            Some(study.as_str()),
            "{damage}: {report}"
        );
        assert_eq!(bad["instances"].as_array().unwrap().len(), 4);
        let (ok, text) = repair(&archive);
        assert!(ok, "{damage}: {text}");
        assert!(text.contains("replaced by a new pack"), "{damage}: {text}");
        let (clean, report) = archive.verify_json();
        assert!(clean, "{damage}: {report}");
        assert_eq!(packs().len(), 1);
    }

    // no good copy left: cold only, then the pack is damaged
    run_ok(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));
    let pack = packs().remove(0);
    flip(&pack, 20_000);
    let before = std::fs::read(&pack).unwrap();
    let (ok, text) = repair(&archive);
    assert!(!ok, "{text}");
    assert!(text.contains("NO GOOD COPY LEFT"), "{text}");
    assert_eq!(std::fs::read(&pack).unwrap(), before, "nothing changed");
    assert!(!archive.verify_json().0);
}

/// The scrubber re-hashes every object of every tier on its cycle, records the outcome
/// per object, counts failures in /metrics and logs them with the object and study.
#[test]
fn the_scrubber_finds_and_records_damage() {
    let archive = Archive::with_config(
        "integrity-scrub",
        "[scrub]\ncycle = \"2s\"\nmax_mb_per_s = 1000\n",
    );
    let (study, hot) = study_in_both_tiers(&archive);
    flip(&hot[0], 4000);
    let damaged = hot[0].file_name().unwrap().to_string_lossy().to_string();
    let server = archive.start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let m = server.metrics();
        if m.contains("strata_scrub_objects_total 4") || m.contains("strata_scrub_objects_total 5")
        {
            assert!(m.contains("strata_scrub_failures_total 1"), "{m}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scrubber did not finish a cycle"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let log = server.log_text();
    assert!(
        log.contains("FIXITY FAILURE") && log.contains(&damaged) && log.contains(&study),
        "{log}"
    );
    server.stop();
    let shown = run_ok(&mut archive.strata(&["show", &study, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let versions: Vec<&serde_json::Value> = shown["series"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["versions"][0])
        .collect();
    let bad: Vec<_> = versions
        .iter()
        .filter(|v| v["last_verified"]["ok"] == false)
        .collect();
    assert_eq!(bad.len(), 1, "{shown}");
    assert_eq!(bad[0]["id"].as_str(), Some(damaged.as_str()));
    assert!(versions
        .iter()
        .all(|v| v["last_verified"]["verified_at_ms"].as_u64().is_some()));
}

/// Retention (off by default) deletes the studies older than its rule, each with a
/// tombstone, and keeps a held one.
#[test]
fn retention_deletes_old_studies_except_held_ones() {
    let archive = Archive::with_config(
        "integrity-retention",
        "[retention]\nstudy_age = \"365days\"\n",
    );
    let gen = small_ct_studies(&archive, "gen", 3, 2, 23, "20190101");
    let recent = small_ct_studies(&archive, "recent", 1, 2, 24, "20991231");
    run_ok(archive.strata(&["import"]).arg(&gen).arg(&recent));
    let held = archive
        .ls_json()
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["study_date"].as_str().unwrap().starts_with("2019"))
        .unwrap()["study_uid"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(&mut archive.strata(&["hold", &held, "--reason", "audit"]));
    let out = run_ok(&mut archive.strata(&["retention", "--dry-run"]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("3 studies due, 0 deleted, 1 held"), "{text}");
    assert_eq!(archive.ls_json().as_array().unwrap().len(), 4);
    let out = run_ok(&mut archive.strata(&["retention"]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("3 studies due, 2 deleted, 1 held"), "{text}");
    assert_eq!(archive.ls_json().as_array().unwrap().len(), 2);
    let out = run_ok(&mut archive.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tombs.as_array().unwrap().len(), 2);
    assert!(tombs[0]["why"].as_str().unwrap().starts_with("retention"));
    assert!(archive.verify_json().0);

    // through a running server started without a rule: the command's rule applies
    // (it used to answer "retention is off" from the server's configuration)
    let cli_config = archive.dir.path().join("cli.toml");
    std::fs::copy(&archive.config, &cli_config).unwrap();
    let text = std::fs::read_to_string(&archive.config)
        .unwrap()
        .replace("study_age = \"365days\"", "study_age = \"0s\"");
    std::fs::write(&archive.config, text).unwrap();
    let server = archive.start();
    let mut cmd = std::process::Command::new(strata_bin());
    cmd.arg("--config")
        .arg(&cli_config)
        .args(["retention", "--dry-run"]);
    let out = run_ok(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("1 studies due, 0 deleted, 1 held"), "{text}");
    server.stop();
}

/// Chain heads anchored in an S3 bucket with Object Lock are kept under a COMPLIANCE
/// retention, and `audit verify` checks the log against them.
#[test]
fn audit_anchors_are_locked_in_an_object_lock_bucket() {
    let moto = S3Server::moto();
    let boto = |code: &str| {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n{code}",
            moto.port
        );
        run_ok(std::process::Command::new("python3").args(["-c", &script]))
    };
    boto("s3.create_bucket(Bucket='locked', ObjectLockEnabledForBucket=True)");
    let archive = Archive::with_config(
        "integrity-lock",
        &format!(
            "{}\n[audit]\nanchor_lock_days = 1\n",
            moto.cold_section("locked", "")
        ),
    );
    let ct: Vec<_> = dcm_files(ct_study()).into_iter().take(2).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let out = run_ok(&mut archive.strata(&["audit", "anchor"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("anchored record 2"));
    // locked: COMPLIANCE mode, and even a versioned delete is refused
    let out = boto(
        "k = s3.list_objects_v2(Bucket='locked', Prefix='strata/audit/heads/')['Contents'][0]['Key']\n\
         h = s3.head_object(Bucket='locked', Key=k)\n\
         print(h.get('ObjectLockMode'))\n\
         try:\n\
         \ts3.delete_object(Bucket='locked', Key=k, VersionId=h.get('VersionId'))\n\
         \tprint('deleted')\n\
         except Exception as e:\n\
         \tprint('refused')",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["COMPLIANCE", "refused"],
        "{text}"
    );
    let (ok, report) = audit_verify(&archive);
    assert!(ok, "{report}");
    assert_eq!(report["anchors_checked"], 1);
}

/// Issue 12: the archive records which cold tier holds its packs. A configuration that
/// names another one (or none: the local default) is refused by every command, with
/// both named, instead of taking the packs for lost and "repairing" them.
#[test]
fn another_cold_tier_is_refused_not_taken_for_lost_packs() {
    let archive = Archive::new("integrity-cold-identity");
    let (_study, _) = study_in_both_tiers(&archive);
    let other = archive.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&archive.config).unwrap()
        + &format!(
            "\n[cold]\nurl = \"file://{}\"\n",
            archive.dir.path().join("elsewhere").display()
        );
    std::fs::write(&other, text).unwrap();
    let with_other = |args: &[&str]| {
        let mut cmd = std::process::Command::new(strata_bin());
        cmd.arg("--config").arg(&other).args(args);
        cmd
    };
    for args in [
        &["verify", "--json"][..],
        &["verify", "--repair"],
        &["ls"],
        // the audit anchors live in the cold tier too (packs or not)
        &["audit", "verify"],
        &["audit", "anchor"],
    ] {
        let out = run(&mut with_other(args));
        assert_eq!(out.status.code(), Some(2), "{args:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("packs are in the cold tier default") && err.contains("elsewhere"),
            "{args:?}: {err}"
        );
    }
    let mut serve = with_other(&["serve"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            serve.kill().unwrap();
            panic!("serve started against another cold tier");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(2));
    // nothing was touched: with its own configuration the archive is whole
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    assert!(report["packs_checked"].as_u64().unwrap() >= 1, "{report}");
}

/// Issue 12 (DESIGN promise 5): legal holds and tombstones live in the governance log
/// too, so a lost index forgets neither which studies are held nor which were deleted —
/// nor brings back the files of a deletion cut short — and a study stored again after
/// its deletion still lives again.
#[test]
fn holds_and_tombstones_survive_a_lost_index() {
    use std::os::unix::process::ExitStatusExt;
    let archive = Archive::new("integrity-lost-index");
    let (gen, studies) = imported_ct_studies(&archive, 41, "20240501");
    let (a, b, c) = (&studies[0], &studies[1], &studies[2]);
    run_ok(&mut archive.strata(&["hold", b, "--reason", "litigation 2026-41"]));
    run_ok(&mut archive.strata(&["delete", a, "--reason", "patient request"]));
    // a deletion killed right after its tombstone: C's files are still on disk
    let out = run(archive
        .strata(&["delete", c, "--reason", "duplicate"])
        .env("STRATA_FAILPOINT", "delete-after-tombstone"));
    assert_eq!(out.status.signal(), Some(9));

    let lose_the_index = || {
        archive.lose_index();
        run_ok(&mut archive.strata(&["reindex"]));
    };
    lose_the_index();
    assert_eq!(archive.total_instances(), 3, "{}", archive.ls_json());
    assert_eq!(archive.ls_json()[0]["study_uid"].as_str(), Some(b.as_str()));
    let out = run_ok(&mut archive.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut deleted: Vec<&str> = tombs
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["study_uid"].as_str().unwrap())
        .collect();
    deleted.sort();
    let mut expected = vec![a.as_str(), c.as_str()];
    expected.sort();
    assert_eq!(deleted, expected);
    assert!(tombs
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["stored_again"] == false));
    // `show` of a deleted study says it was deleted, by whom and why
    let out = run(&mut archive.strata(&["show", a]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("study deleted by")
            && err.contains("patient request"),
        "{err}"
    );
    let out = run(&mut archive.strata(&["delete", b, "--reason", "cleanup"]));
    assert!(!out.status.success(), "the hold survives a lost index");
    assert!(String::from_utf8_lossy(&out.stderr).contains("legal hold"));
    // `holds` lists it, `ls` shows it
    let out = run_ok(&mut archive.strata(&["holds", "--json"]));
    let holds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(holds[0]["study_uid"].as_str(), Some(b.as_str()), "{holds}");
    assert_eq!(holds[0]["hold"]["why"], "litigation 2026-41");
    assert_eq!(
        archive.ls_json()[0]["holds"][0]["why"],
        "litigation 2026-41"
    );
    let out = run_ok(&mut archive.strata(&["ls", b]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("LEGAL HOLD"));
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    assert_eq!(
        report["pending_deletion"], 0,
        "the cut-short deletion was finished"
    );

    // stored again after the deletions: A and C live again, through a lost index too
    run_ok(archive.strata(&["import"]).arg(&gen));
    assert_eq!(archive.total_instances(), 9);
    lose_the_index();
    assert_eq!(archive.total_instances(), 9, "{}", archive.ls_json());
    let out = run_ok(&mut archive.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        tombs
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["stored_again"] == true),
        "the tombstones stay, as history, marked: {tombs}"
    );
    assert!(archive.verify_json().0);
}

/// Issue 12, backup and restore (`docs/operations.md`): a node lost whole comes back
/// from its cold tier plus the backed-up governance and audit logs — every study that
/// was in cold, its legal hold, its deletions (never brought back), and an audit chain
/// that still verifies against its anchors in the cold tier — and its holds and
/// deletions come back from the cold tier alone too.
#[test]
fn a_lost_node_is_restored_from_the_bucket_and_its_governance_log() {
    let bucket = scratch("restore-bucket");
    let cold = format!("[cold]\nurl = \"file://{}\"\n", bucket.path().display());
    let node = Archive::with_config("restore-node", &cold);
    let (_, studies) = imported_ct_studies(&node, 51, "20240601");
    let (a, b, c) = (&studies[0], &studies[1], &studies[2]);
    run_ok(&mut node.strata(&["hold", b, "--reason", "litigation 2026-51"]));
    run_ok(&mut node.strata(&["delete", c, "--reason", "patient request"]));
    for study in [a, b] {
        run_ok(&mut node.strata(&["tier", "move", study, "--to", "cold"]));
    }
    // D: deleted while in cold (its pack deleted with it); then stored again, and aged
    // to cold again (a new pack, named by no deletion): it lives, and must come back
    let gen_d = small_ct_studies(&node, "gen-d", 1, 3, 52, "20240602");
    run_ok(node.strata(&["import"]).arg(&gen_d));
    let d = &node
        .ls_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["study_uid"].as_str().unwrap().to_string())
        .find(|s| s != a && s != b)
        .unwrap();
    run_ok(&mut node.strata(&["tier", "move", d, "--to", "cold"]));
    run_ok(&mut node.strata(&["delete", d, "--reason", "wrong patient"]));
    run_ok(node.strata(&["import"]).arg(&gen_d));
    run_ok(&mut node.strata(&["tier", "move", d, "--to", "cold"]));
    run_ok(&mut node.strata(&["audit", "anchor"]));

    // the machine is lost; a new one gets the configuration and the backed-up logs
    let new = Archive::with_config("restore-new", &cold);
    std::fs::create_dir_all(new.data_dir()).unwrap();
    for dir in ["governance", "audit"] {
        run_ok(
            std::process::Command::new("cp")
                .arg("-r")
                .arg(node.data_dir().join(dir))
                .arg(new.data_dir().join(dir)),
        );
    }
    let d_before = node.strata(&["show", d, "--json"]).output().unwrap().stdout;
    drop(node);
    let out = run_ok(&mut new.strata(&["reindex"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("were stored again since and are kept"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A, B and D (C was deleted; D deleted, then stored again)
    let instances_of = |archive: &Archive, study: &str| -> u64 {
        let out = run_ok(&mut archive.strata(&["show", study, "--json"]));
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        shown["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["instances"].as_array().unwrap().len() as u64)
            .sum()
    };
    let d_count = {
        let shown: serde_json::Value = serde_json::from_slice(&d_before).unwrap();
        shown["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["instances"].as_array().unwrap().len() as u64)
            .sum::<u64>()
    };
    assert_eq!(
        instances_of(&new, d),
        d_count,
        "D was stored again: it lives"
    );
    assert_eq!(new.total_instances(), 6 + d_count, "{}", new.ls_json());
    // and its pack is no orphan: the policy pass keeps it, and it reads back
    let with_grace =
        std::fs::read_to_string(&new.config).unwrap() + "\n[tiering]\norphan_grace = \"0s\"\n";
    std::fs::write(&new.config, with_grace).unwrap();
    run_ok(&mut new.strata(&["tier", "run"]));
    assert_eq!(instances_of(&new, d), d_count);
    let out = new.dir.path().join("export-d");
    run_ok(&mut new.strata(&["export", d, "--out", out.to_str().unwrap()]));
    assert_eq!(walk(&out).len() as u64, d_count);
    let out = run_ok(&mut new.strata(&["holds", "--json"]));
    let holds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(holds[0]["study_uid"].as_str(), Some(b.as_str()), "{holds}");
    let out = run(&mut new.strata(&["delete", b, "--reason", "cleanup"]));
    assert!(!out.status.success(), "the hold came back");
    let out = run_ok(&mut new.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tombs[0]["study_uid"].as_str(), Some(c.as_str()), "{tombs}");
    let (clean, report) = new.verify_json();
    assert!(clean, "{report}");
    run_ok(&mut new.strata(&["audit", "verify"]));

    // and from the bucket alone: the governance records were copied there too
    let bare = Archive::with_config("restore-bare", &cold);
    run_ok(&mut bare.strata(&["reindex"]));
    assert_eq!(bare.total_instances(), 6 + d_count, "{}", bare.ls_json());
    let out = run_ok(&mut bare.strata(&["holds", "--json"]));
    let holds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(holds[0]["study_uid"].as_str(), Some(b.as_str()), "{holds}");
    let out = run_ok(&mut bare.strata(&["tombstones", "--json"]));
    let tombs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tombs[0]["study_uid"].as_str(), Some(c.as_str()), "{tombs}");
}

/// Second trial: `audit anchor` never says it anchored a head it did not write. An
/// anchor already in the cold tier for the same record with another hash (a node
/// restored without its audit log, say) is reported, and the existing anchor stays.
#[test]
fn an_anchor_already_there_with_another_hash_is_reported_not_claimed() {
    let archive = Archive::new("integrity-anchor-clash");
    let ct: Vec<std::path::PathBuf> = dcm_files(ct_study()).into_iter().take(2).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    run_ok(&mut archive.strata(&["audit", "anchor"]));
    let heads = archive.data_dir().join("cold/audit/heads");
    let anchor = walk(&heads).pop().expect("an anchor");
    let mut other: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&anchor).unwrap()).unwrap();
    other["hash"] = serde_json::Value::String("ab".repeat(32));
    std::fs::write(&anchor, other.to_string()).unwrap();
    let out = run(&mut archive.strata(&["audit", "anchor"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is already in the cold tier with hash")
            && err.contains("nothing was anchored"),
        "{err}"
    );
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&anchor).unwrap()).unwrap();
    assert_eq!(kept["hash"], other["hash"], "the existing anchor stays");
}
