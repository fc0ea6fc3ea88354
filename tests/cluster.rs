//! Nodes of one archive (issue 16): each `strata serve` records a heartbeat in the
//! index, and `strata cluster status` shows every node, alive, stopped or down. On a
//! PostgreSQL index (`STRATA_TEST_PG`, the second pass of `scripts/test.sh`), two nodes
//! with their own hot disks share the index and the cold tier: a study DCMTK stores on
//! one is found by findscu on the other at once (read-your-writes across nodes).

use crate::common::*;
use crate::find::findscu;

fn status(archive: &Archive) -> (i32, serde_json::Value) {
    let out = run(&mut archive.strata(&["cluster", "status", "--json"]));
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
    )
}

/// findscu on `port` finds one study per entry of `instances`, with that many
/// NumberOfStudyRelatedInstances.
fn finds_studies(port: u16, instances: &[&str]) {
    let (n, text) = findscu(
        port,
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID",
            "NumberOfStudyRelatedInstances",
        ],
    );
    assert_eq!(n, instances.len(), "{text}");
    assert_eq!(
        crate::find::values(&text, "NumberOfStudyRelatedInstances"),
        instances
    );
}

fn node<'a>(nodes: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == id)
        .unwrap_or_else(|| panic!("no node {id}: {nodes}"))
}

#[test]
fn nodes_share_the_index_and_say_whether_they_are_alive() {
    let cold = scratch("cluster-cold");
    let shared = format!(
        "\n[cold]\nurl = \"file://{}\"\n\n[cluster]\nheartbeat = \"1s\"\n",
        cold.path().display()
    );
    let a = Archive::with_config("cluster-a", &format!("{shared}node_id = \"node-a\"\n"));
    let server_a = a.start();
    let (code, nodes) = status(&a);
    assert_eq!(code, 0, "{nodes}");
    assert_eq!(node(&nodes, "node-a")["alive"], true, "{nodes}");
    assert!(node(&nodes, "node-a")["hot_free_bytes"].as_u64().unwrap() > 0);
    // its metrics say which node they are (checked and stripped by `metrics`)
    assert!(server_a.metrics().contains("strata_active_associations"));

    if let Some(b) = a.another_node("cluster-b", &format!("{shared}node_id = \"node-b\"\n")) {
        let data = scratch("cluster-data");
        small_ct(data.path(), &["--studies", "1", "--instances", "3"]);
        run_ok(storescu(server_a.dicom_port).args(dcm_files(data.path())));
        // a packs the study: the bucket is claimed for the archive (its id, in the
        // index too); b, with no id of its own, joins it — its cold tier checks out
        let study = a.ls_json()[0]["study_uid"].as_str().unwrap().to_string();
        run_ok(&mut a.strata(&["tier", "move", &study, "--to", "cold"]));
        let server_b = b.start();
        let checked = run(&mut b.strata(&["tier", "status"]));
        assert!(
            checked.status.success(),
            "{}",
            String::from_utf8_lossy(&checked.stdout)
        );
        // stored on a, found on b at once
        finds_studies(server_b.dicom_port, &["3"]);
        let (code, nodes) = status(&b);
        assert_eq!(code, 0, "{nodes}");
        assert_eq!(node(&nodes, "node-b")["alive"], true, "{nodes}");
        assert_eq!(node(&nodes, "node-a")["alive"], true, "{nodes}");
        // a node killed goes silent: down after three heartbeats, and the status says so
        server_b.kill9();
        std::thread::sleep(std::time::Duration::from_millis(4500));
        let (code, nodes) = status(&a);
        assert_eq!(code, 1, "a node is down: {nodes}");
        assert_eq!(node(&nodes, "node-b")["alive"], false, "{nodes}");
        assert_eq!(node(&nodes, "node-b")["stopped"], false, "{nodes}");
    }
    // a node stopped cleanly says so: stopped, not down
    server_a.stop();
    let (_, nodes) = status(&a);
    assert_eq!(node(&nodes, "node-a")["stopped"], true, "{nodes}");
    assert_eq!(node(&nodes, "node-a")["alive"], false, "{nodes}");
}

/// The `[cold]` and `[cluster]` sections three test nodes share: one cold tier, a
/// one-second heartbeat, and the secret of their internal route (a file only its owner
/// reads).
fn shared_cluster(cold: &std::path::Path, secret_dir: &std::path::Path, extra: &str) -> String {
    let cold = format!("[cold]\nurl = \"file://{}\"\n", cold.display());
    shared_cluster_on(&cold, secret_dir, extra)
}

/// [`shared_cluster`] with the cold tier `cold` (a whole `[cold]` section: an S3 bucket).
fn shared_cluster_on(cold: &str, secret_dir: &std::path::Path, extra: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let secret = secret_dir.join("cluster.secret");
    std::fs::write(
        &secret,
        "c2VjcmV0LXNoYXJlZC1ieS10aGUtdGVzdC1ub2Rlcy0wMTIzNDU2Nzg5\n",
    )
    .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "\n{cold}{extra}\n[cluster]\nheartbeat = \"1s\"\nlease = \"5s\"\nsecret_file = \"{}\"\n",
        secret.display()
    )
}

/// The data set of a Part-10 file (the bytes after its meta group): what a C-STORE
/// carries, whatever meta group the receiver writes.
fn data_set(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let meta = strata::dicom::part10::read_foreign_meta(&bytes).unwrap();
    bytes[meta.dataset_offset..].to_vec()
}

/// The blake3 (b3sum) of what `url` answers, downloaded into `file`.
fn b3_of_download(url: &str, file: &std::path::Path) -> String {
    run_ok(
        std::process::Command::new("curl")
            .args(["-s", "-f", "-o"])
            .arg(file)
            .arg(url),
    );
    let b3 = run_ok(
        std::process::Command::new("b3sum")
            .arg("--no-names")
            .arg(file),
    );
    String::from_utf8_lossy(&b3.stdout).trim().to_string()
}

/// SOP Instance UID -> data set, of Part-10 files.
fn data_sets(files: &[std::path::PathBuf]) -> std::collections::BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|p| {
            let sop = strata::dicom::header::read_header_blocking(p)
                .unwrap()
                .sop_instance_uid;
            (sop, data_set(p))
        })
        .collect()
}

/// A `[[dicom.peers]]` entry for the C-MOVE destination `DEST` (storescp) at `port`.
fn dest_peer(port: u16) -> String {
    format!("\n[[dicom.peers]]\nae_title = \"DEST\"\nhost = \"127.0.0.1\"\nport = {port}\n")
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 16: three nodes on one PostgreSQL index and one S3 bucket as their cold tier
/// (in scripts/test.sh's PostgreSQL pass, a SeaweedFS cluster: `S3Server::start`). DCMTK stores on node 1; findscu and QIDO-RS on node 2 find everything at once;
/// movescu from node 3 delivers the same data sets, which node 3 fetches from node 1's
/// hot disk over the internal route (checked against their ids); WADO-URI and WADO-RS on
/// node 3 return the stored object (b3sum equals the id). The internal route refuses
/// requests without a node token, with a token of another secret, and for another
/// object.
#[test]
fn three_nodes_store_find_and_retrieve_from_each_others_hot_disks() {
    // one S3 bucket for the three nodes' cold tier
    let s3 = S3Server::start();
    s3.create_bucket("three");
    let secrets = scratch("three-secret");
    let dest_port = free_port();
    let shared = shared_cluster_on(&s3.cold_section("three", ""), secrets.path(), "");
    let a = Archive::with_config("three-a", &format!("{shared}node_id = \"node-1\"\n"));
    let Some(b) = a.another_node("three-b", &format!("{shared}node_id = \"node-2\"\n")) else {
        eprintln!("three nodes need a PostgreSQL index (STRATA_TEST_PG): skipped on RocksDB");
        return;
    };
    let peer = dest_peer(dest_port);
    let c = a
        .another_node("three-c", &format!("{peer}{shared}node_id = \"node-3\"\n"))
        .unwrap();
    let (server_a, server_b, server_c) = (a.start(), b.start(), c.start());

    let data = scratch("three-data");
    small_ct(data.path(), &["--studies", "2", "--instances", "3"]);
    let sent = dcm_files(data.path());
    run_ok(storescu(server_a.dicom_port).args(&sent));

    // found on node 2 at once, over DIMSE and over DICOMweb (QIDO-RS)
    finds_studies(server_b.dicom_port, &["3", "3"]);
    let (code, body) = http_get(server_b.http_port, "/dicom-web/studies").unwrap();
    assert_eq!(code, 200, "{body}");
    let studies: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(studies.as_array().map(Vec::len), Some(2), "{body}");

    // moved from node 3: every data set as sent
    let recv = c.dir.path().join("received");
    let scp = crate::retrieve::Storescp::start(dest_port, &recv);
    for study in a.ls_json().as_array().unwrap() {
        let uid = study["study_uid"].as_str().unwrap();
        let text = crate::retrieve::movescu(
            server_c.dicom_port,
            "DEST",
            &[
                "QueryRetrieveLevel=STUDY",
                &format!("StudyInstanceUID={uid}"),
            ],
        );
        assert!(text.contains("Final Move Response (Success)"), "{text}");
    }
    drop(scp);
    let received = data_sets(&walk(&recv));
    assert_eq!(received.len(), 6);
    assert!(
        received == data_sets(&sent),
        "node 3 moved other data sets than node 1 received"
    );
    let fetched = counter(&server_c.metrics(), "strata_peer_fetches_total");
    assert!(fetched >= 6.0, "node 3 fetched from node 1: {fetched}");

    // WADO-URI on node 3: the stored object, byte for byte
    let shown = {
        let out =
            run_ok(&mut c.strata(&["show", &received.keys().next().unwrap().clone(), "--json"]));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let id = shown["versions"]
        .as_array()
        .map(|v| v.last().unwrap()["id"].clone());
    let id = id.unwrap_or_else(|| shown["id"].clone());
    let id = id
        .as_str()
        .unwrap_or_else(|| panic!("no id in {shown}"))
        .to_string();
    let wado = format!(
        "http://127.0.0.1:{}/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}&contentType=application/dicom",
        server_c.http_port,
        shown["study_uid"].as_str().unwrap(),
        shown["series_uid"].as_str().unwrap(),
        shown["sop_instance_uid"].as_str().unwrap(),
    );
    let dcm = c.dir.path().join("wado.dcm");
    assert_eq!(b3_of_download(&wado, &dcm), id);
    // WADO-RS on node 3 too: the instance as stored (transfer-syntax=*), byte for byte
    let wado_rs = format!(
        "http://127.0.0.1:{}/dicom-web/studies/{}/series/{}/instances/{}",
        server_c.http_port,
        shown["study_uid"].as_str().unwrap(),
        shown["series_uid"].as_str().unwrap(),
        shown["sop_instance_uid"].as_str().unwrap(),
    );
    let script = format!(
        "import sys, requests, blake3; sys.path.insert(0, {:?}); from dicomweb_check import parts; \
         r = requests.get({wado_rs:?}, headers={{'Accept': 'multipart/related; type=\"application/dicom\"; transfer-syntax=*'}}); \
         r.raise_for_status(); print(blake3.blake3(parts(r)[0][1]).hexdigest())",
        repo_root().join("tests/peers").display().to_string()
    );
    let out = run_ok(std::process::Command::new("python3").args(["-c", &script]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        id,
        "WADO-RS on node 3"
    );

    // the internal route: a node token for this object only, made with the shared secret
    let route = format!(
        "http://127.0.0.1:{}/internal/objects/{id}",
        server_a.http_port
    );
    let status = |args: &[&str]| -> String {
        let out = run(std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .arg(&route));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(status(&[]), "401");
    let other = strata::peer::Peers::new("intruder", &[9u8; 32]).unwrap();
    let oid = strata_tiers::ObjectId::from_hex(&id).unwrap();
    assert_eq!(
        status(&[
            "-H",
            &format!("Authorization: Bearer {}", other.token(&oid))
        ]),
        "403"
    );
    let secret = std::fs::read(secrets.path().join("cluster.secret")).unwrap();
    let node = strata::peer::Peers::new("node-x", secret.trim_ascii_end()).unwrap();
    let elsewhere = strata_tiers::ObjectId::of_bytes(b"another object");
    assert_eq!(
        status(&[
            "-H",
            &format!("Authorization: Bearer {}", node.token(&elsewhere))
        ]),
        "403",
        "a token opens its own object only"
    );
    assert_eq!(
        status(&["-H", &format!("Authorization: Bearer {}", node.token(&oid))]),
        "200"
    );

    // node 1 gone for good: what it held hot is unreadable elsewhere until it is in the
    // bucket; once packed (by node 3, from node 1's disk), node 3 serves it from cold
    for study in &a.study_uids() {
        run_ok(&mut c.strata(&["tier", "move", study, "--to", "cold"]));
    }
    server_a.kill9();
    std::fs::remove_dir_all(a.data_dir()).unwrap();
    assert_eq!(b3_of_download(&wado, &dcm), id);
    drop(server_b);
}

/// Issue 16: two nodes racing on tiering. Both run a policy pass every second over the
/// same access queue; studies stored on either node, and one stored half on each, age
/// after two seconds. Each study is packed exactly once (one pack per study in the
/// bucket, one upload per study across both nodes' counters), every hot copy is
/// evicted by the node that holds it, and `verify` is clean on both nodes.
#[test]
fn two_nodes_racing_on_tiering_pack_each_study_once() {
    let cold = scratch("race-cold");
    let secrets = scratch("race-secret");
    let shared = shared_cluster(
        cold.path(),
        secrets.path(),
        "\n[tiering]\nhot_max_age = \"2s\"\nscan_interval = \"1s\"\n",
    );
    let a = Archive::with_config("race-a", &format!("{shared}node_id = \"node-a\"\n"));
    let Some(b) = a.another_node("race-b", &format!("{shared}node_id = \"node-b\"\n")) else {
        eprintln!("two nodes need a PostgreSQL index (STRATA_TEST_PG): skipped on RocksDB");
        return;
    };
    let (server_a, server_b) = (a.start(), b.start());
    let (on_a, on_b, split) = (
        scratch("race-a-data"),
        scratch("race-b-data"),
        scratch("race-split"),
    );
    small_ct(
        on_a.path(),
        &["--studies", "3", "--instances", "2", "--seed", "11"],
    );
    small_ct(
        on_b.path(),
        &["--studies", "3", "--instances", "2", "--seed", "12"],
    );
    small_ct(
        split.path(),
        &["--studies", "1", "--instances", "4", "--seed", "13"],
    );
    let halves = dcm_files(split.path());
    run_ok(
        storescu(server_a.dicom_port)
            .args(dcm_files(on_a.path()))
            .args(&halves[..2]),
    );
    run_ok(
        storescu(server_b.dicom_port)
            .args(dcm_files(on_b.path()))
            .args(&halves[2..]),
    );
    let studies = a.ls_json().as_array().unwrap().len();
    assert_eq!(studies, 7);

    let status = || -> serde_json::Value {
        let out = run_ok(&mut a.strata(&["tier", "status", "--json"]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let s = status();
        if s["studies_cold"] == studies as u64 && s["hot_objects"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not all cold: {s}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let s = status();
    assert_eq!(s["packs"], studies as u64, "one pack per study: {s}");
    let packs = walk(cold.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .count();
    assert_eq!(packs, studies, "one pack per study in the bucket");
    let uploads = counter(&server_a.metrics(), "strata_tier_pack_uploads_total")
        + counter(&server_b.metrics(), "strata_tier_pack_uploads_total");
    assert_eq!(
        uploads as usize, studies,
        "each study uploaded once across the nodes"
    );
    // each node evicted what it held: its hot disk has no object files left
    for node in [&a, &b] {
        let left = hot_files(node);
        assert!(left.is_empty(), "hot files left: {left:?}");
        let (clean, report) = node.verify_json();
        assert!(clean, "{report}");
    }
}

/// The SOP Instance UIDs node `archive`'s C-MOVE of every study it lists delivers to a
/// fresh storescp, with the data sets received.
fn moved_from(
    archive: &Archive,
    server: &Server,
    dest_port: u16,
    into: &std::path::Path,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let scp = crate::retrieve::Storescp::start(dest_port, into);
    for study in archive.study_uids() {
        crate::retrieve::movescu(
            server.dicom_port,
            "DEST",
            &[
                "QueryRetrieveLevel=STUDY",
                &format!("StudyInstanceUID={study}"),
            ],
        );
    }
    drop(scp);
    data_sets(&walk(into))
}

/// Issue 16: `kill -9` of a node under a 4-association load. With
/// `[cluster] ack_after = "replicated"`, every acknowledged instance is retrievable from
/// another node — byte for byte — even once the dead node's data directory is deleted
/// (it is read from its replica in the cold tier). With `local`, every acknowledged
/// instance is retrievable from the other node once the dead node restarts, and the
/// restarted node's replication lag returns to 0.
#[test]
fn a_node_killed_under_load_loses_no_acknowledged_instance() {
    let cold = scratch("kill-cold");
    let secrets = scratch("kill-secret");
    let dest_port = free_port();
    let peer = dest_peer(dest_port);
    let shared = shared_cluster(cold.path(), secrets.path(), "");
    let sent = dcm_files(ct_study());
    let sent_sets = data_sets(&sent);
    let replicated = Archive::with_config(
        "kill-replicated",
        &format!("{shared}node_id = \"node-r\"\nack_after = \"replicated\"\n"),
    );
    let Some(other) = replicated.another_node(
        "kill-other",
        &format!("{peer}{shared}node_id = \"node-o\"\n"),
    ) else {
        eprintln!("nodes need a PostgreSQL index (STRATA_TEST_PG): skipped on RocksDB");
        return;
    };
    let server_other = other.start();

    // replicated: the dead node's disk lost for good
    let server = replicated.start();
    let acked = crate::crash::send_and_crash(server.dicom_port, &sent, 40, || server.kill9());
    std::fs::remove_dir_all(replicated.data_dir()).unwrap();
    let received = moved_from(
        &other,
        &server_other,
        dest_port,
        &scratch("kill-r-recv").path().join("r"),
    );
    let lost: Vec<&String> = acked
        .iter()
        .filter(|s| !received.contains_key(*s))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged, then lost with the node's disk: {lost:?}"
    );
    for sop in &acked {
        assert!(
            received[sop] == sent_sets[sop],
            "{sop}: other data than sent"
        );
    }
    let (clean, report) = other.verify_json();
    assert!(clean, "{report}");

    // local: the node restarts; what it acked is served by the other node, and its
    // replicas catch up
    let local = other
        .another_node("kill-local", &format!("{shared}node_id = \"node-l\"\n"))
        .unwrap();
    // a fresh study set: the same objects are stored already
    let fresh = scratch("kill-fresh");
    small_ct(
        fresh.path(),
        &["--studies", "2", "--instances", "60", "--seed", "21"],
    );
    let fresh_files = dcm_files(fresh.path());
    let server = local.start();
    let acked =
        crate::crash::send_and_crash(server.dicom_port, &fresh_files, 30, || server.kill9());
    let server = local.start();
    let received = moved_from(
        &other,
        &server_other,
        dest_port,
        &scratch("kill-l-recv").path().join("l"),
    );
    let lost: Vec<&String> = acked
        .iter()
        .filter(|s| !received.contains_key(*s))
        .collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let metrics = server.metrics();
        let lag = counter(&metrics, "strata_replication_lag_seconds");
        let pending = counter(&metrics, "strata_replication_pending");
        if lag == 0.0 && pending == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replication lag stays at {lag} s, {pending} waiting"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let (clean, report) = local.verify_json();
    assert!(clean, "{report}");
}

/// The object files on a node's hot disk (`hot/objects`: not its tmp files, nor its
/// ingest journal).
fn hot_files(node: &Archive) -> Vec<std::path::PathBuf> {
    let objects = node.data_dir().join("hot/objects");
    if objects.exists() {
        walk(&objects)
    } else {
        Vec::new()
    }
}

/// Issue 16: a study stored on one node and deleted on another is gone from both hot
/// disks (the deleting node's tombstone queues the removal for the node holding the
/// files, whose purge pass removes them) and from the cold tier's replicas; `verify` is
/// clean on both nodes.
#[test]
fn a_deletion_on_one_node_removes_the_hot_files_on_the_others() {
    let cold = scratch("purge-cold");
    let secrets = scratch("purge-secret");
    let shared = shared_cluster(cold.path(), secrets.path(), "");
    let a = Archive::with_config("purge-a", &format!("{shared}node_id = \"node-a\"\n"));
    let Some(b) = a.another_node("purge-b", &format!("{shared}node_id = \"node-b\"\n")) else {
        eprintln!("two nodes need a PostgreSQL index (STRATA_TEST_PG): skipped on RocksDB");
        return;
    };
    let (server_a, _server_b) = (a.start(), b.start());
    let data = scratch("purge-data");
    small_ct(data.path(), &["--studies", "1", "--instances", "3"]);
    run_ok(storescu(server_a.dicom_port).args(dcm_files(data.path())));
    assert_eq!(hot_files(&a).len(), 3);
    let replicas = || {
        let dir = cold.path().join("objects");
        if dir.exists() {
            walk(&dir)
        } else {
            Vec::new()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while replicas().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "not replicated: {:?}",
            replicas()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let study = a.study_uids().remove(0);
    run_ok(&mut b.strata(&["delete", &study, "--reason", "test: wrong patient"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !hot_files(&a).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "node a kept the deleted study's files: {:?}",
            hot_files(&a)
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(replicas().is_empty(), "replicas left: {:?}", replicas());
    assert!(a.study_uids().is_empty());
    for node in [&a, &b] {
        let (clean, report) = node.verify_json();
        assert!(clean, "{report}");
    }
}
