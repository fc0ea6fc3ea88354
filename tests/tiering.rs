//! Tiering against the local-filesystem default and real S3-compatible servers (moto, and
//! in scripts/test.sh's second pass a SeaweedFS cluster: `S3Server::start`):
//! studies age to cold and come back byte-identical, packs verify with standard tools
//! alone, the index rebuilds from the cold tier alone, `kill -9` at each step of a move
//! loses nothing, a failing endpoint only delays aging, bad packs are never trusted, and
//! archive-class packs answer "pending restore" before they are read.

use crate::common::*;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The first `n` files of the generated CT study.
fn small_study(n: usize) -> Vec<PathBuf> {
    dcm_files(ct_study()).into_iter().take(n).collect()
}

fn only_study(archive: &Archive) -> String {
    let ls = archive.ls_json();
    let studies = ls.as_array().unwrap();
    assert_eq!(studies.len(), 1, "{ls}");
    studies[0]["study_uid"].as_str().unwrap().to_string()
}

/// SOP Instance UID -> object id of the served version, from `strata show`.
fn object_ids(archive: &Archive, study: &str) -> BTreeMap<String, String> {
    let out = run_ok(&mut archive.strata(&["show", study, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids = BTreeMap::new();
    for series in shown["series"].as_array().unwrap() {
        for instance in series["instances"].as_array().unwrap() {
            let version = instance["versions"].as_array().unwrap().last().unwrap();
            ids.insert(
                instance["sop_instance_uid"].as_str().unwrap().to_string(),
                version["id"].as_str().unwrap().to_string(),
            );
        }
    }
    ids
}

/// Exports the study and checks with Debian's `b3sum` that every file hashes to its id.
fn export_matches_ids(archive: &Archive, study: &str, ids: &BTreeMap<String, String>) {
    let out = archive.dir.path().join(format!("export-{}", rand_suffix()));
    run_ok(archive.strata(&["export", study, "--out"]).arg(&out));
    let files = walk(&out);
    assert_eq!(files.len(), ids.len(), "exported files");
    let b3 = run_ok(std::process::Command::new("b3sum").args(&files));
    for line in String::from_utf8_lossy(&b3.stdout).lines() {
        let (hash, path) = line.split_once("  ").unwrap();
        let sop = Path::new(path).file_stem().unwrap().to_string_lossy();
        assert_eq!(
            ids.get(sop.as_ref()).map(String::as_str),
            Some(hash),
            "{path}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `tar -x`, `zstd -d`, `b3sum -c` and `sha256sum -c` on a pack: no Strata involved.
fn pack_verifies_with_standard_tools(pack: &Path, members: usize) {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "set -e; cd {dir}; tar -xf {pack}; test \"$(head -c 1 manifest.json)\" = '{{'; \
         find objects -name '*.zst' -exec zstd -q -d --rm {{}} +; \
         b3sum -c BLAKE3SUMS; sha256sum -c SHA256SUMS",
        dir = dir.path().display(),
        pack = pack.display()
    );
    let out = run_ok(std::process::Command::new("bash").args(["-c", &script]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches(": OK").count(), 2 * members, "{text}");
    // the manifest is the first member
    let listing = run_ok(std::process::Command::new("tar").arg("-tf").arg(pack));
    let first = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(first.lines().next(), Some("manifest.json"));
}

fn local_packs(archive: &Archive) -> Vec<PathBuf> {
    let dir = archive.data_dir().join("cold").join("packs");
    if !dir.exists() {
        return Vec::new();
    }
    walk(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect()
}

fn hot_files(archive: &Archive) -> usize {
    walk(&archive.data_dir().join("hot").join("objects")).len()
}

fn tier_status(archive: &Archive) -> serde_json::Value {
    // exit 1 when the cold tier is not usable; the status is printed either way
    let out = run(&mut archive.strata(&["tier", "status", "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn move_study(archive: &Archive, study: &str, to: &str) -> serde_json::Value {
    let out = run_ok(&mut archive.strata(&["tier", "move", study, "--to", to, "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn local_cold_round_trip_and_reindex_from_the_cold_tier_alone() {
    let archive = Archive::new("tier-local");
    let ct = dcm_files(ct_study());
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    let ids = object_ids(&archive, &study);
    assert_eq!(ids.len(), ct.len());

    let moved = move_study(&archive, &study, "cold");
    assert_eq!(moved["packs_recorded"], 1, "{moved}");
    assert_eq!(moved["objects_evicted"].as_u64(), Some(ct.len() as u64));
    assert_eq!(
        hot_files(&archive),
        0,
        "hot copies are deleted after the move"
    );
    let status = tier_status(&archive);
    assert_eq!(status["cold_only_objects"].as_u64(), Some(ct.len() as u64));
    assert_eq!(status["hot_objects"], 0);
    assert_eq!(status["packs"], 1);

    // show names the pack and the offset of each instance
    let (sop, id) = ids.iter().next().unwrap();
    let shown = run_ok(&mut archive.strata(&["show", sop, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let version = &shown["versions"][0];
    assert_eq!(version["id"].as_str(), Some(id.as_str()));
    assert_eq!(version["tier"], "cold");
    assert!(version["cold_copies"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("packs/"));
    assert!(version["cold_copies"][0]["offset"].as_u64().unwrap() > 0);

    // byte-identical recall, and a pack that verifies without Strata
    export_matches_ids(&archive, &study, &ids);
    let packs = local_packs(&archive);
    assert_eq!(packs.len(), 1);
    pack_verifies_with_standard_tools(&packs[0], ct.len());
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    assert_eq!(report["packs_checked"], 1);

    // empty index and no hot objects: the cold tier alone restores every study
    archive.lose_index();
    std::fs::remove_dir_all(archive.data_dir().join("hot")).unwrap();
    run_ok(&mut archive.strata(&["reindex"]));
    assert_eq!(archive.total_instances(), ct.len() as u64);
    assert_eq!(object_ids(&archive, &study), ids);
    export_matches_ids(&archive, &study, &ids);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");

    // and back to hot
    let back = move_study(&archive, &study, "hot");
    assert_eq!(back["objects_recalled"].as_u64(), Some(ct.len() as u64));
    assert_eq!(hot_files(&archive), ct.len());
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
}

#[test]
fn s3_policy_ages_studies_and_retrieval_reads_them_from_packs() {
    let s3 = S3Server::start();
    s3.create_bucket("archive");
    let archive = Archive::with_config(
        "tier-s3",
        &format!(
            "{}\n[tiering]\nhot_max_age = \"2s\"\nscan_interval = \"1s\"\n",
            s3.cold_section("archive", "")
        ),
    );
    let server = archive.start();
    let ct = small_study(40);
    crate::store::storescu_send(server.dicom_port, &ct);
    let study = only_study(&archive);
    let ids = object_ids(&archive, &study);
    assert_eq!(ids.len(), ct.len());

    wait_for("the study to age to cold", Duration::from_secs(60), || {
        tier_status(&archive)["cold_only_objects"].as_u64() == Some(ct.len() as u64)
    });
    assert_eq!(hot_files(&archive), 0);
    wait_for("the tier metrics", Duration::from_secs(20), || {
        let m = server.metrics();
        m.contains("strata_tier_pack_uploads_total 1")
            && m.contains(&format!(
                "strata_tier_objects{{tier=\"cold_only\"}} {}",
                ct.len()
            ))
    });

    // C-GET reads every instance back from the pack
    let got = archive.dir.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    let out = run(dcmtk("getscu")
        .args(["-v", "-S", "-aec", "STRATA", "-od"])
        .arg(&got)
        .args([
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={study}"),
        ])
        .arg("127.0.0.1")
        .arg(server.dicom_port.to_string()));
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        text.contains("Number of Failed Suboperations    : 0"),
        "{text}\n{}",
        server.log_text()
    );
    assert_eq!(walk(&got).len(), ct.len());
    export_matches_ids(&archive, &study, &ids);

    // the pack, fetched with a plain GET, verifies with standard tools
    let shown = run_ok(&mut archive.strata(&["show", ids.keys().next().unwrap(), "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let key = shown["versions"][0]["cold_copies"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(key.starts_with("strata/packs/"), "{key}");
    let pack = archive.dir.path().join("downloaded.tar");
    s3.download("archive", &key, &pack);
    pack_verifies_with_standard_tools(&pack, ct.len());
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    assert!(server
        .metrics()
        .contains("strata_tier_recall_duration_seconds_count"));
    server.stop();

    // the cold bucket alone (no index, no hot objects) restores the study
    archive.lose_index();
    std::fs::remove_dir_all(archive.data_dir().join("hot")).unwrap();
    run_ok(&mut archive.strata(&["reindex"]));
    assert_eq!(object_ids(&archive, &study), ids);
    export_matches_ids(&archive, &study, &ids);
}

/// `kill -9` (the failpoint SIGKILLs the process) after upload, after verify, after the
/// index commit and in the middle of the deletes; the next run completes the move with
/// exactly one pack and every instance intact. On the local-filesystem cold tier.
#[test]
fn kill9_at_each_step_of_a_move_loses_nothing() {
    kill9_at_each_step("tier-kill", None, |_| String::new());
}

/// The same on S3: moto, or the SeaweedFS cluster of scripts/test.sh's second pass.
#[test]
fn kill9_at_each_step_of_a_move_to_s3_loses_nothing() {
    let s3 = S3Server::start();
    kill9_at_each_step("tier-kill-s3", Some(&s3), |step| {
        let bucket = format!("kill-{step}-{}", std::process::id());
        s3.create_bucket(&bucket);
        s3.cold_section(&bucket, "")
    });
}

/// For each failpoint step, an archive configured with `cold(step)` (on `s3`, or the
/// local default): kill -9 at the step of a move to cold, then a move that completes; one
/// pack recorded and stored, nothing lost, verify clean.
fn kill9_at_each_step(name: &str, s3: Option<&S3Server>, cold: impl Fn(&str) -> String) {
    let ct = small_study(20);
    for step in ["after-upload", "after-verify", "after-commit", "mid-delete"] {
        let archive = Archive::with_config(&format!("{name}-{step}"), &cold(step));
        run_ok(archive.strata(&["import"]).args(&ct));
        let study = only_study(&archive);
        let ids = object_ids(&archive, &study);

        let out = run(archive
            .strata(&["tier", "move", &study, "--to", "cold"])
            .env("STRATA_FAILPOINT", step));
        assert_eq!(out.status.signal(), Some(9), "{step}: {out:?}");
        // between the crash and the restart every instance is still readable
        export_matches_ids(&archive, &study, &ids);

        move_study(&archive, &study, "cold");
        let status = tier_status(&archive);
        assert_eq!(
            status["packs"], 1,
            "{step}: one pack, no duplicate: {status}"
        );
        let stored = match s3 {
            Some(s3) => {
                let url = status["cold_url"].as_str().unwrap();
                let bucket = url["s3://".len()..].split('/').next().unwrap();
                let out = s3.boto(&format!(
                    "r = s3.list_objects_v2(Bucket='{bucket}', Prefix='strata/packs/')\n\
                     print(sum(1 for o in r.get('Contents', []) if o['Key'].endswith('.tar')))"
                ));
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            }
            None => local_packs(&archive).len(),
        };
        assert_eq!(stored, 1, "{step}: one pack stored, no duplicate");
        assert_eq!(status["cold_only_objects"].as_u64(), Some(ct.len() as u64));
        assert_eq!(hot_files(&archive), 0, "{step}");
        let (clean, report) = archive.verify_json();
        assert!(clean, "{step}: {report}");
        export_matches_ids(&archive, &study, &ids);
    }
}

/// The S3 endpoint goes away while a study is due: stores still succeed, aging backs
/// off, and it completes once the endpoint is back.
#[test]
fn a_cold_tier_outage_only_delays_aging() {
    let mut moto = S3Server::moto();
    moto.create_bucket("archive");
    let archive = Archive::with_config(
        "tier-outage",
        &format!(
            "{}\n[tiering]\nhot_max_age = \"1s\"\nscan_interval = \"1s\"\nmax_backoff = \"2s\"\n",
            moto.cold_section("archive", "readiness_interval = \"2s\"")
        ),
    );
    let server = archive.start();
    let ready = |expected: u16| {
        let (code, body) = http_get(server.http_port, "/readyz").expect("/readyz answers");
        assert_eq!(code, expected, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(ready(200)["cold"]["ok"], true);
    let port = moto.port;
    moto.stop();
    // not ready while the cold tier does not answer (alive all the same), once the last
    // answer is older than readiness_interval (2 s)
    wait_for("readiness to notice", Duration::from_secs(30), || {
        http_get(server.http_port, "/readyz").is_some_and(|(code, _)| code == 503)
    });
    let state = ready(503);
    assert_eq!(
        (state["cold"]["ok"].clone(), state["hot"]["ok"].clone()),
        (false.into(), true.into()),
        "{state}"
    );
    assert_eq!(http_get(server.http_port, "/healthz").unwrap().0, 200);
    let ct = small_study(20);
    crate::store::storescu_send(server.dicom_port, &ct);
    assert_eq!(archive.total_instances(), ct.len() as u64, "ingest goes on");
    std::thread::sleep(Duration::from_secs(4));
    let status = tier_status(&archive);
    assert_eq!(
        status["hot_objects"].as_u64(),
        Some(ct.len() as u64),
        "{status}"
    );
    assert_eq!(status["packs"], 0);
    assert!(
        server.log_text().contains("backing off"),
        "{}",
        server.log_text()
    );

    let moto = S3Server::moto_on(port);
    moto.create_bucket("archive");
    wait_for("readiness to return", Duration::from_secs(60), || {
        http_get(server.http_port, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    wait_for("aging to resume", Duration::from_secs(60), || {
        tier_status(&archive)["cold_only_objects"].as_u64() == Some(ct.len() as u64)
    });
    let study = only_study(&archive);
    let ids = object_ids(&archive, &study);
    export_matches_ids(&archive, &study, &ids);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    server.stop();
}

/// A truncated upload is never trusted for deleting the hot copies; a recorded pack
/// that is later damaged is named by `verify` with its study and instances.
#[test]
fn damaged_packs_are_detected_and_never_trusted() {
    let archive = Archive::new("tier-bad-pack");
    let ct = small_study(20);
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    let ids = object_ids(&archive, &study);

    let out = run(archive
        .strata(&["tier", "move", &study, "--to", "cold"])
        .env("STRATA_FAILPOINT", "after-upload"));
    assert_eq!(out.status.signal(), Some(9));
    let packs = local_packs(&archive);
    assert_eq!(packs.len(), 1);
    let len = std::fs::metadata(&packs[0]).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&packs[0])
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);

    let out = run(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));
    assert!(!out.status.success(), "a truncated pack must fail the move");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verification"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hot_files(&archive), ct.len(), "hot copies kept");
    assert!(
        local_packs(&archive).is_empty(),
        "the bad upload is removed"
    );
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");

    // the next attempt uploads a good pack
    move_study(&archive, &study, "cold");
    export_matches_ids(&archive, &study, &ids);

    // one flipped byte in the recorded pack
    let pack = local_packs(&archive).remove(0);
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&pack, &bytes).unwrap();
    let out = run(&mut archive.strata(&["verify", "--tier", "cold", "--json"]));
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bad = &report["bad_packs"][0];
    assert_eq!(bad["study_uid"].as_str(), Some(study.as_str()), "{report}");
    assert_eq!(bad["instances"].as_array().unwrap().len(), ct.len());
    assert!(bad["key"]
        .as_str()
        .unwrap()
        .contains(&bad["pack"].as_str().unwrap()[..16]));
}

/// Packs in DEEP_ARCHIVE: the first read asks for a restore and says so; once the
/// restore completed (at once on moto) the read succeeds.
#[test]
fn deep_archive_reads_report_pending_restore_then_succeed() {
    let moto = S3Server::moto();
    moto.create_bucket("deep");
    let archive = Archive::with_config(
        "tier-deep",
        &moto.cold_section("deep", "storage_class = \"DEEP_ARCHIVE\""),
    );
    let ct = small_study(5);
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    let ids = object_ids(&archive, &study);
    move_study(&archive, &study, "cold");
    assert_eq!(
        tier_status(&archive)["packs_by_storage_class"]["DEEP_ARCHIVE"],
        1
    );

    let out = archive.dir.path().join("first");
    let first = run(archive.strata(&["export", &study, "--out"]).arg(&out));
    assert!(
        !first.status.success(),
        "an archived pack cannot be read yet"
    );
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("pending"), "{err}");
    let log = run_ok(&mut archive.strata(&["audit", "log", "--json"]));
    assert!(
        String::from_utf8_lossy(&log.stdout).contains("\"action\": \"restore\""),
        "the restore request is audited"
    );
    export_matches_ids(&archive, &study, &ids);
}

/// WADO-RS of a study whose pack is in an archive class (PS3.18 10.4, RFC 9110 10.2.3):
/// 503 with `Retry-After: 3600` while S3 restores it — checked before any part is
/// sent, so never a 200 cut short — then the study itself once it is readable. Its
/// metadata is answered at once, from the metadata records, without a restore.
#[test]
fn wado_rs_answers_503_with_retry_after_while_a_pack_is_restored() {
    let moto = S3Server::moto();
    moto.create_bucket("deepweb");
    let archive = Archive::with_config(
        "tier-deep-web",
        &moto.cold_section("deepweb", "storage_class = \"DEEP_ARCHIVE\""),
    );
    let ct = small_study(3);
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    move_study(&archive, &study, "cold");
    let server = archive.start();
    let url = format!(
        "http://127.0.0.1:{}/dicom-web/studies/{study}",
        server.http_port
    );
    // the metadata comes from the index's metadata records: no restore needed for it
    let (code, body) = http_get(
        server.http_port,
        &format!("/dicom-web/studies/{study}/metadata"),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let metadata: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metadata.as_array().unwrap().len(), 3, "{metadata}");
    assert!(
        metadata[0]["7FE00010"]["BulkDataURI"].is_string(),
        "{metadata}"
    );
    let head =
        run(std::process::Command::new("curl").args(["-s", "-D", "-", "-o", "/dev/null", &url]));
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 3600"), "{head}");
    // the restore was asked for (and moto completes it at once): the study comes
    let (code, _) = {
        let out = run(std::process::Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]));
        (String::from_utf8_lossy(&out.stdout).to_string(), ())
    };
    assert_eq!(code, "200");
    server.stop();
}

/// The tier contract suite (the one the hot disk, memory and local-filesystem stores
/// pass) against the real S3-compatible server, plus a multipart upload.
#[test]
fn cold_store_on_s3_passes_the_conformance_suite() {
    let s3 = S3Server::start();
    s3.create_bucket("conformance");
    let mut cmd = std::process::Command::new("true");
    with_test_credentials(&mut cmd);
    for (k, v) in cmd.get_envs() {
        // SAFETY: set before any thread of this test reads the environment.
        unsafe { std::env::set_var(k, v.unwrap()) };
    }
    let spec = strata_tiers::ColdSpec {
        url: "s3://conformance/suite".into(),
        endpoint: Some(format!("http://127.0.0.1:{}", s3.port)),
        region: Some("us-east-1".into()),
        allow_http: true,
        path_style: true,
        timeout: Duration::from_secs(10),
        max_retries: 2,
    };
    let store = strata_tiers::ColdStore::open(&spec).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        strata_tiers::conformance::run_suite(&store).await;
        // a pack above the multipart threshold, uploaded in parts and read back
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..strata_tiers::cold::MULTIPART_THRESHOLD as usize + 4096)
            .map(|i| (i % 251) as u8)
            .collect();
        let path = dir.path().join("body");
        std::fs::write(&path, &body).unwrap();
        let head = bytes::Bytes::from_static(b"head");
        let mut whole = head.to_vec();
        whole.extend_from_slice(&body);
        let id = strata_tiers::ObjectId::of_bytes(&whole);
        store.put_file(&id, head, &path, None).await.unwrap();
        assert_eq!(store.verify(&id).await.unwrap(), whole.len() as u64);
        assert_eq!(
            store.read_range(&id, 1000..2000).await.unwrap(),
            bytes::Bytes::copy_from_slice(&whole[1000..2000])
        );
    });
}

/// A study larger than the pack limit spans several packs; instances arriving after the
/// study went cold go into a further pack; an upload nobody recorded is collected.
#[test]
fn pack_limit_late_instances_and_orphan_uploads() {
    let archive = Archive::with_config(
        "tier-packs",
        "[tiering]\npack_max_mb = 2\norphan_grace = \"0s\"\nhot_max_age = \"1000days\"\n",
    );
    let ct = dcm_files(ct_study());
    let (first, late) = (&ct[..20], &ct[20..24]);
    run_ok(archive.strata(&["import"]).args(first));
    let study = only_study(&archive);

    // 20 instances of ~525 kB, at most 2 MiB of them per pack: 3 per pack, 7 packs
    let moved = move_study(&archive, &study, "cold");
    assert_eq!(moved["packs_recorded"], 7, "{moved}");
    assert_eq!(local_packs(&archive).len(), 7);

    // late instances: a further pack of the same study
    run_ok(archive.strata(&["import"]).args(late));
    let moved = move_study(&archive, &study, "cold");
    assert_eq!(moved["packs_recorded"], 2, "{moved}");
    assert_eq!(moved["objects_packed"], late.len());
    let ids = object_ids(&archive, &study);
    assert_eq!(ids.len(), 24);
    export_matches_ids(&archive, &study, &ids);

    // an upload cut short before its record, for objects that then changed: an orphan
    run_ok(archive.strata(&["import"]).arg(&ct[24]));
    let out = run(archive
        .strata(&["tier", "move", &study, "--to", "cold"])
        .env("STRATA_FAILPOINT", "after-upload"));
    assert_eq!(out.status.signal(), Some(9));
    let orphan: Vec<PathBuf> = local_packs(&archive);
    assert_eq!(orphan.len(), 10);
    run_ok(archive.strata(&["import"]).arg(&ct[25]));
    let out = run_ok(&mut archive.strata(&["tier", "run", "--json"]));
    let pass: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pass["orphans_deleted"], 1, "{pass}");
    move_study(&archive, &study, "cold");
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    assert!(report["unrecorded_packs"].as_array().unwrap().is_empty());
    let ids = object_ids(&archive, &study);
    assert_eq!(ids.len(), 26);
    export_matches_ids(&archive, &study, &ids);
}

/// An instance sent again after its study went cold has its hot copy back on record;
/// a pack that `reindex` could not read is never collected as an orphan.
#[test]
fn resent_cold_instances_and_unreadable_packs_are_kept() {
    let archive = Archive::with_config(
        "tier-keep",
        "[tiering]\norphan_grace = \"0s\"\nhot_max_age = \"1000days\"\n",
    );
    let ct = small_study(6);
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    move_study(&archive, &study, "cold");
    run_ok(archive.strata(&["import"]).arg(&ct[0]));
    let status = tier_status(&archive);
    assert_eq!(status["hot_objects"], 1, "{status}");
    assert_eq!(hot_files(&archive), 1);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");

    // damage one member, rebuild the index from the cold tier alone: the pack is
    // skipped, and a policy pass must not delete it as an orphan
    let pack = local_packs(&archive).remove(0);
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() - 4096;
    bytes[at] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    archive.lose_index();
    std::fs::remove_dir_all(archive.data_dir().join("hot")).unwrap();
    let out = run(&mut archive.strata(&["reindex"]));
    assert!(!out.status.success(), "a skipped pack must fail reindex");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pack skipped"));
    run_ok(&mut archive.strata(&["tier", "run"]));
    assert!(pack.exists(), "the only copy must not be collected");
}

/// Issue 12, a cold tier that explains itself: with the configured bucket missing, the
/// server says so at start, in those words, and so does `strata tier status`; ingest
/// goes on; a forced move fails naming it and creates no bucket (SeaweedFS would create
/// one on the first PUT into it).
#[test]
fn a_missing_bucket_is_named_at_start_and_in_tier_status() {
    let s3 = S3Server::start();
    let archive = Archive::with_config("tier-preflight", &s3.cold_section("never-created", ""));
    let server = archive.start();
    wait_for("the preflight's verdict", Duration::from_secs(30), || {
        server.log_text().contains("COLD TIER NOT USABLE")
    });
    assert!(
        server
            .log_text()
            .contains("the bucket never-created does not exist"),
        "{}",
        server.log_text()
    );
    let out = run(&mut archive.strata(&["tier", "status"]));
    assert_eq!(out.status.code(), Some(1), "not usable: exit 1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NOT USABLE: configuration: the bucket never-created does not exist"),
        "{text}"
    );
    // /readyz says so too (a HEAD in a missing bucket is a 404 like any missing object)
    let (status, body) = http_get(server.http_port, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not exist"), "{body}");
    let ct = small_study(2);
    crate::store::storescu_send(server.dicom_port, &ct);
    assert_eq!(archive.total_instances(), 2, "ingest goes on");
    // a forced move names the missing bucket (it said "remote object … not found")
    let study = only_study(&archive);
    let out = run(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    // moto refuses the marker's read (NoSuchBucket); an engine that would create the
    // bucket on the first PUT (SeaweedFS) is asked before that write
    assert!(
        msg.contains("does not exist") && msg.contains("never creates buckets"),
        "{msg}"
    );
    assert_eq!(hot_files(&archive), 2, "nothing moved, nothing lost");
    server.stop();
    let out = s3.boto("print(sorted(b['Name'] for b in s3.list_buckets()['Buckets']))");
    let buckets = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !buckets.contains("never-created"),
        "no bucket made: {buckets}"
    );
}

/// Issue 12, cold-tier faults never cost truth: while an archived pack awaits its
/// restore, the scrubber cannot read its members, so it records no fixity verdict for
/// them — never "verified" (it used to record `ok: true` for objects it had not read).
#[test]
fn the_scrubber_never_calls_an_unread_archived_copy_verified() {
    let moto = S3Server::moto();
    moto.create_bucket("deep-scrub");
    let archive = Archive::with_config(
        "tier-deep-scrub",
        &format!(
            "{}\n[scrub]\ncycle = \"1h\"\n",
            moto.cold_section("deep-scrub", "storage_class = \"DEEP_ARCHIVE\"")
        ),
    );
    let ct = small_study(3);
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    move_study(&archive, &study, "cold");
    let server = archive.start();
    wait_for(
        "the scrubber's first object",
        Duration::from_secs(30),
        || server.log_text().contains("fixity not checked this cycle"),
    );
    let log = server.log_text();
    server.stop();
    // issue 11 item 4: and it asked S3 for no restore (a restore costs): it checked the
    // archived pack's size with a HEAD instead
    assert!(
        log.contains("its size checked without a restore"),
        "the scrubber says what it checked: {log}"
    );
    let script = format!(
        "import boto3\nc = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\nfor o in c.list_objects_v2(Bucket='deep-scrub')['Contents']:\n    if '/packs/' in o['Key']:\n        print(c.head_object(Bucket='deep-scrub', Key=o['Key']).get('Restore'))",
        moto.port
    );
    let out = run_ok(std::process::Command::new("python3").args(["-c", &script]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "None",
        "no restore was requested for the archived pack"
    );
    let shown = run_ok(&mut archive.strata(&["show", &study, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    for series in shown["series"].as_array().unwrap() {
        for instance in series["instances"].as_array().unwrap() {
            for version in instance["versions"].as_array().unwrap() {
                assert!(
                    version["last_verified"].is_null(),
                    "an unread copy must not be called verified: {version}"
                );
            }
        }
    }
}

/// Issue 12: `reindex` must not drop what the current index records as safely in cold
/// without having read it. A pack the cold tier does not list (an S3 LIST lagging behind
/// its PUTs; here, moved away) leaves the current index in place, saying why; once the
/// pack is listed again, reindex swaps as usual; `--force` accepts the loss.
#[test]
fn reindex_keeps_the_index_when_a_recorded_pack_is_not_listed() {
    let archive = Archive::new("tier-reindex-lag");
    let ct = small_study(3);
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    move_study(&archive, &study, "cold");
    let packs = walk(&archive.data_dir().join("cold/packs"));
    assert_eq!(packs.len(), 1);
    let aside = archive.dir.path().join("pack-aside");
    std::fs::rename(&packs[0], &aside).unwrap();

    let out = run(&mut archive.strata(&["reindex"]));
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("THE CURRENT INDEX IS KEPT"), "{text}");
    assert!(text.contains("not found in the cold tier"), "{text}");
    assert_eq!(archive.total_instances(), 3, "the study is still indexed");

    std::fs::rename(&aside, &packs[0]).unwrap();
    run_ok(&mut archive.strata(&["reindex"]));
    assert_eq!(archive.total_instances(), 3);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");

    std::fs::rename(&packs[0], &aside).unwrap();
    run(&mut archive.strata(&["reindex", "--force"]));
    assert_eq!(
        archive.total_instances(),
        0,
        "forced: what was not found is forgotten"
    );
}

/// Issue 12: a multipart upload left incomplete (its complete and its abort both failed
/// in an outage) costs storage and holds no pack. `verify` and `tier status` show it
/// until it is gone, and the next policy pass after `orphan_grace` aborts it.
#[test]
fn incomplete_multipart_uploads_are_shown_then_aborted() {
    let s3 = S3Server::start();
    s3.create_bucket("uploads");
    let archive = Archive::with_config(
        "tier-uploads",
        &format!(
            "{}\n[tiering]\norphan_grace = \"0s\"\n",
            s3.cold_section("uploads", "")
        ),
    );
    let ct = small_study(2);
    run_ok(archive.strata(&["import"]).args(&ct));
    // an upload begun as a pack upload would be, never completed
    let key = format!("strata/packs/ab/{}.tar", "ab".repeat(32));
    s3.boto(&format!(
        "u = s3.create_multipart_upload(Bucket='uploads', Key='{key}')\n\
         s3.upload_part(Bucket='uploads', Key='{key}', UploadId=u['UploadId'], PartNumber=1, Body=b'x' * 1024)"
    ));

    assert_eq!(tier_status(&archive)["incomplete_uploads"], 1);
    let out = run(&mut archive.strata(&["verify", "--tier", "cold", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "no loss: {report}");
    assert_eq!(
        report["incomplete_uploads"].as_array().unwrap().len(),
        1,
        "{report}"
    );

    let out = run_ok(&mut archive.strata(&["tier", "run", "--json"]));
    let pass: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pass["uploads_aborted"], 1, "{pass}");
    assert_eq!(tier_status(&archive)["incomplete_uploads"], 0);
}

/// Issue 12: the per-tier metrics are there from the first second, even when the first
/// policy pass cannot reach the cold tier (they used to appear only after a pass that
/// succeeded).
#[test]
fn tier_metrics_are_published_at_start_even_with_the_cold_tier_down() {
    let mut moto = S3Server::moto();
    let section = moto.cold_section("never-up", "");
    moto.stop();
    let archive = Archive::with_config("tier-metrics-start", &section);
    let ct = small_study(2);
    run_ok(archive.strata(&["import"]).args(&ct));
    let server = archive.start();
    wait_for("the tier gauges", Duration::from_secs(10), || {
        server
            .metrics()
            .lines()
            .any(|l| l.starts_with("strata_tier_objects{tier=\"hot\"} 2"))
    });
    server.stop();
}

/// Issue 12 (trial): a CLI command run without the S3 credentials the server has says
/// so, once, instead of an SDK error chain; `verify` still checks the hot tier and
/// reports the cold tier as not checked (exit 1, not clean); an export that cannot read
/// a cold study leaves no empty folders behind; and configurations that cannot work are
/// refused when read (a relative file:// cold tier, plain HTTP without allow_http, two
/// peers with one AE title).
#[test]
fn missing_credentials_and_unusable_settings_are_said_plainly() {
    let s3 = S3Server::start();
    s3.create_bucket("creds");
    let archive = Archive::with_config("tier-creds", &s3.cold_section("creds", ""));
    let ct = small_study(2);
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    move_study(&archive, &study, "cold");
    let without_credentials = |args: &[&str]| {
        let mut cmd = archive.strata(args);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        run(&mut cmd)
    };
    let out = without_credentials(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("checked 0 objects"),
        "the hot tier (empty: the study is only in cold) is checked: {text}"
    );
    assert!(
        text.contains("COLD TIER NOT CHECKED") && text.contains("S3 credentials"),
        "{text}"
    );
    let dest = archive.dir.path().join("export-nocreds");
    let out = without_credentials(&["export", &study, "--out", dest.to_str().unwrap()]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("no S3 credentials were found"), "{msg}");
    assert!(!dest.join(&study).exists(), "no empty folders left behind");

    for (bad, says) in [
        ("[cold]\nurl = \"file://relative/cold\"\n", "file:///absolute/path"),
        (
            "[cold]\nurl = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9\"\n",
            "allow_http",
        ),
        (
            "[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.2\"\nport = 104\n",
            "twice",
        ),
    ] {
        let other = Archive::with_config("tier-bad-config", bad);
        let out = run(&mut other.strata(&["config"]));
        assert!(!out.status.success(), "{bad}");
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.contains(says), "{bad}: {msg}");
    }
}

/// Issue 12: the cold tier carries a marker naming the archive it belongs to
/// (`archive/strata-archive.json`). A second archive configured with the same bucket
/// prefix is refused before it uploads anything (its packs would mix with the first's),
/// saying which archive the prefix belongs to; its hot copies stay. A node restored from
/// the bucket (`reindex`) adopts the marker and works on.
#[test]
fn two_archives_never_share_a_cold_prefix() {
    let bucket = scratch("tier-shared-bucket");
    let cold = format!("[cold]\nurl = \"file://{}\"\n", bucket.path().display());
    let first = Archive::with_config("tier-shared-first", &cold);
    let second = Archive::with_config("tier-shared-second", &cold);
    let ct = small_study(3);
    run_ok(first.strata(&["import"]).args(&ct));
    let study = only_study(&first);
    move_study(&first, &study, "cold");
    let marker = bucket.path().join("archive/strata-archive.json");
    let claimed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(claimed["format"], "strata-cold-tier-marker", "{claimed}");

    let other = small_study(5)[3..].to_vec();
    run_ok(second.strata(&["import"]).args(&other));
    let theirs = only_study(&second);
    let out = run(&mut second.strata(&["tier", "move", &theirs, "--to", "cold"]));
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("belongs to another Strata archive")
            && msg.contains(claimed["archive_id"].as_str().unwrap()),
        "{msg}"
    );
    assert_eq!(hot_files(&second), 2, "nothing moved, nothing lost");
    let packs = walk(&bucket.path().join("packs"));
    assert_eq!(packs.len(), 1, "the first archive's pack alone: {packs:?}");
    // nor its audit anchors (they would make the first's log look rewritten), and its
    // tier status says why the cold tier is not usable for it
    let out = run(&mut second.strata(&["audit", "anchor"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to another Strata archive"));
    let out = run(&mut second.strata(&["tier", "status"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("belongs to another Strata archive"));
    run_ok(&mut first.strata(&["audit", "anchor"]));
    run_ok(&mut first.strata(&["audit", "verify"]));

    // a node restored from the bucket alone adopts the marker
    let restored = Archive::with_config("tier-shared-restored", &cold);
    run_ok(&mut restored.strata(&["reindex"]));
    assert_eq!(restored.total_instances(), 3);
    move_study(&restored, &study, "hot");
    move_study(&restored, &study, "cold");
}
