//! Issue 16: the proven engines a scaled-out archive stands on, as real clusters on
//! loopback, with failures injected:
//! - PostgreSQL with Patroni + etcd (tests/peers/patroni.sh: three etcd members, two
//!   PostgreSQL nodes, synchronous replication): the leader is killed during ingest; no
//!   acknowledged instance is lost, ingest resumes by itself once the replica is promoted,
//!   and `verify` is clean.
//! - SeaweedFS (tests/peers/seaweedfs.sh: a master, two volume servers with replication
//!   001, the S3 gateway) as the cold tier: the cold-tier conformance suite, then the
//!   tiering path (studies packed into it), then one volume server killed: every object
//!   still reads back, checked.

use crate::common::*;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A cluster started by a peer script (`tests/peers/NAME.sh start DIR BASE`), stopped
/// by it on drop; `vars` are the KEY=VALUE lines `start` printed.
struct Cluster {
    script: PathBuf,
    dir: PathBuf,
    vars: BTreeMap<String, String>,
}

impl Cluster {
    fn start(name: &str, dir: &Path, base: u16) -> Cluster {
        let script = repo_root().join(format!("tests/peers/{name}.sh"));
        let out = run(Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir)
            .arg(base.to_string()));
        assert!(
            out.status.success(),
            "{name}.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Cluster {
            script,
            dir: dir.to_path_buf(),
            vars,
        }
    }

    fn command(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new("bash")
                .arg(&self.script)
                .arg(args[0])
                .arg(&self.dir)
                .args(&args[1..]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Stores `files` over four pynetdicom associations at once; returns the SOP Instance
/// UIDs acknowledged with success, and how many stores got another answer or none.
fn store_round(port: u16, files: &[PathBuf]) -> (HashSet<String>, usize) {
    let mut children = Vec::new();
    for chunk in files.chunks(files.len().div_ceil(4)) {
        children.push(
            python("store_pynetdicom.py")
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--called-ae",
                    "STRATA",
                    "--ts",
                    "explicit",
                    "--timeout",
                    "30",
                ])
                .args(chunk)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let (mut acked, mut failed) = (HashSet::new(), 0);
    for mut child in children {
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["status"].as_u64() == Some(0) {
                acked.insert(v["sop_instance_uid"].as_str().unwrap().to_string());
            } else {
                failed += 1;
            }
        }
        let _ = child.wait();
    }
    (acked, failed)
}

/// The SOP Instance UIDs the archive lists, study by study.
fn stored_sops(archive: &Archive) -> HashSet<String> {
    let mut out = HashSet::new();
    for study in archive.study_uids() {
        let view: serde_json::Value =
            serde_json::from_slice(&run_ok(&mut archive.strata(&["ls", &study, "--json"])).stdout)
                .unwrap();
        for series in view["series"].as_array().unwrap() {
            for i in series["instances"].as_array().unwrap() {
                out.insert(i["sop_instance_uid"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

/// Writes `[index]` (a PostgreSQL URL) into the archive's configuration in place of the
/// one the test harness chose.
fn use_index_url(archive: &Archive, url: &str) {
    let text = std::fs::read_to_string(&archive.config).unwrap();
    let mine = text
        .split_once("\n[index]")
        .map_or(text.as_str(), |(m, _)| m);
    std::fs::write(
        &archive.config,
        format!("{mine}\n[index]\nbackend = \"postgres\"\nurl = \"{url}\"\n"),
    )
    .unwrap();
}

/// Issue 16: PostgreSQL failover with Patroni + etcd during ingest. Small CT studies go
/// in round after round over four associations to a node whose index URL names both
/// PostgreSQL nodes (`target_session_attrs=read-write`); after a few rounds the leader
/// is killed (Patroni and postgres, SIGKILL). Stores during the failover are refused
/// (failure status, nothing acknowledged); once the replica is promoted (≈ 10 s), stores
/// are acknowledged again without anyone touching the node; every instance ever
/// acknowledged is in the index; after a restart (recovery adopts what was written but
/// never indexed) `verify` is clean.
#[test]
fn ingest_survives_a_postgresql_failover_and_resumes_by_itself() {
    let dir = scratch("patroni");
    let cluster = Cluster::start(
        "patroni",
        &dir.path().join("ha"),
        free_port_range(10, false),
    );
    let url = cluster.vars["PG_URL"].clone();
    let archive = Archive::new("failover");
    use_index_url(&archive, &url);
    let server = archive.start();
    let data = scratch("failover-data");
    small_ct(
        data.path(),
        &["--studies", "30", "--instances", "24", "--seed", "31"],
    );
    let files = dcm_files(data.path());
    let mut acked = HashSet::new();
    let mut refused = 0;
    let mut killed_at: Option<Instant> = None;
    let mut acked_after_failover = 0;
    for (n, round) in files.chunks(24).enumerate() {
        let (ok, failed) = store_round(server.dicom_port, round);
        if killed_at.is_some() {
            refused += failed;
            if !ok.is_empty() && refused > 0 {
                acked_after_failover += ok.len();
            }
        }
        acked.extend(ok);
        if n == 3 {
            let port = cluster.command(&["kill-leader"]);
            eprintln!("killed the PostgreSQL leader on port {port}");
            killed_at = Some(Instant::now());
        }
        if killed_at.is_some_and(|at| at.elapsed() > Duration::from_secs(40))
            || acked_after_failover >= 72
        {
            break;
        }
        if killed_at.is_some() {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert!(
        refused > 0,
        "the failover was never felt: no store was refused"
    );
    assert!(
        acked_after_failover >= 72,
        "ingest did not resume by itself after the failover ({acked_after_failover} acknowledged since)"
    );
    let new_leader = cluster.command(&["leader", "30"]);
    eprintln!(
        "new leader on port {new_leader}; {} acknowledged, {refused} refused",
        acked.len()
    );
    let stored = stored_sops(&archive);
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged, then lost in the failover: {lost:?}"
    );
    server.kill9();
    let server = archive.start();
    let (clean, report) = archive.verify_json();
    assert!(clean, "verify after the failover: {report}");
    server.stop();
}

/// Issue 16: a real multi-node S3 cluster (SeaweedFS: two volume servers, each blob on
/// both) as the cold tier. The cold-tier conformance suite passes on it; studies moved to
/// cold are packed into it; with one volume server killed, `verify` reads every pack back
/// and finds each object intact, and a retrieval (WADO-URI) serves a cold object whose
/// blake3 is its id.
#[test]
fn a_seaweedfs_cluster_as_the_cold_tier_loses_nothing_with_a_volume_server_down() {
    let dir = scratch("seaweedfs");
    let cluster = Cluster::start(
        "seaweedfs",
        &dir.path().join("sw"),
        free_port_range(5, true),
    );
    let endpoint = cluster.vars["S3_ENDPOINT"].clone();
    let bucket = cluster.vars["BUCKET"].clone();

    // the cold-tier contract, as every other store passes it
    let mut cmd = Command::new("true");
    with_test_credentials(&mut cmd);
    for (k, v) in cmd.get_envs() {
        // SAFETY: set before any thread of this test reads the environment.
        unsafe { std::env::set_var(k, v.unwrap()) };
    }
    let spec = strata_tiers::ColdSpec {
        url: format!("s3://{bucket}/conformance"),
        endpoint: Some(endpoint.clone()),
        region: Some("us-east-1".into()),
        allow_http: true,
        path_style: true,
        timeout: Duration::from_secs(20),
        max_retries: 2,
    };
    let store = strata_tiers::ColdStore::open(&spec).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(strata_tiers::conformance::run_suite(&store));

    // the tiering path into it
    let archive = Archive::with_config(
        "seaweedfs",
        &format!(
            "\n[cold]\nurl = \"s3://{bucket}/strata\"\nendpoint = \"{endpoint}\"\nallow_http = true\npath_style = true\nrequest_timeout = \"20s\"\n"
        ),
    );
    let data = scratch("seaweedfs-data");
    small_ct(
        data.path(),
        &["--studies", "3", "--instances", "4", "--seed", "41"],
    );
    run_ok(archive.strata(&["import"]).arg(data.path()));
    let server = archive.start();
    for study in archive.study_uids() {
        run_ok(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));
    }
    let status: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut archive.strata(&["tier", "status", "--json"])).stdout)
            .unwrap();
    assert_eq!(status["studies_cold"], 3, "{status}");
    assert_eq!(status["hot_objects"], 0, "{status}");

    // one volume server dies: every pack still reads back whole and checks out
    cluster.command(&["kill-volume", "1"]);
    let (clean, report) = archive.verify_json();
    assert!(clean, "verify with a volume server down: {report}");
    let study = archive.study_uids().remove(0);
    let (sop, series) = {
        let view: serde_json::Value =
            serde_json::from_slice(&run_ok(&mut archive.strata(&["ls", &study, "--json"])).stdout)
                .unwrap();
        let series = &view["series"][0];
        (
            series["instances"][0]["sop_instance_uid"]
                .as_str()
                .unwrap()
                .to_string(),
            series["series_uid"].as_str().unwrap().to_string(),
        )
    };
    let shown: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut archive.strata(&["show", &sop, "--json"])).stdout)
            .unwrap();
    let id = shown["versions"][0]["id"].as_str().unwrap().to_string();
    let file = dir.path().join("wado.dcm");
    run_ok(Command::new("curl").args(["-s", "-f", "-o"]).arg(&file).arg(format!(
        "http://127.0.0.1:{}/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&contentType=application/dicom",
        server.http_port
    )));
    let b3 = run_ok(Command::new("b3sum").arg("--no-names").arg(&file));
    assert_eq!(String::from_utf8_lossy(&b3.stdout).trim(), id);
    server.stop();
}

/// The index's traffic over TLS: a PostgreSQL that takes TCP connections over TLS only
/// (`hostssl`, a certificate from a test CA for localhost). With `sslmode=require` in the
/// URL and `[index] ca_file` naming that CA, a node stores and finds through it, and the
/// server sees its sessions encrypted (`pg_stat_ssl`). Without the CA (the system's
/// roots do not know it) the node refuses to start, naming the certificate; without
/// `sslmode`, the server refuses the plain connection and the node says so.
#[test]
fn the_index_travels_over_tls_when_its_url_asks() {
    let dir = scratch("pg-tls");
    let pg = dir.path().join("pg");
    let port = free_port();
    run_ok(
        Command::new("bash")
            .arg(repo_root().join("tests/peers/postgres.sh"))
            .args(["start"])
            .arg(&pg)
            .args([&port.to_string(), "ssl"]),
    );
    struct Stop(PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(repo_root().join("tests/peers/postgres.sh"))
                .arg("stop")
                .arg(&self.0)
                .status();
        }
    }
    let _stop = Stop(pg.clone());
    let ca = PathBuf::from(format!("{}.ca.pem", pg.display()));
    let url = format!("postgresql://postgres@localhost:{port}/postgres?sslmode=require");
    let archive = Archive::new("pg-tls");
    let with_index = |index: &str| {
        let text = std::fs::read_to_string(&archive.config).unwrap();
        let mine = text
            .split_once("\n[index]")
            .map_or(text.clone(), |(m, _)| m.to_string());
        std::fs::write(&archive.config, format!("{mine}\n[index]\n{index}")).unwrap();
    };

    // TLS, the server verified against the CA: stores and finds
    with_index(&format!(
        "backend = \"postgres\"\nurl = \"{url}\"\nca_file = \"{}\"\n",
        ca.display()
    ));
    let server = archive.start();
    let data = scratch("pg-tls-data");
    small_ct(data.path(), &["--studies", "1", "--instances", "3"]);
    run_ok(storescu(server.dicom_port).args(dcm_files(data.path())));
    assert_eq!(archive.total_instances(), 3);
    let encrypted = run_ok(Command::new("psql").args([
        &url,
        "-Atc",
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND application_name = 'strata'",
    ]));
    let sessions: u32 = String::from_utf8_lossy(&encrypted.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(sessions > 0, "the node's sessions are encrypted");
    server.stop();

    // no CA for the server's certificate: refused, and said why
    with_index(&format!("backend = \"postgres\"\nurl = \"{url}\"\n"));
    let refused = run(&mut archive.strata(&["ls", "--json"]));
    let why = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(!refused.status.success());
    assert!(why.contains("certificate"), "{why}");
    // no TLS asked: the server refuses the plain connection
    let plain = url.replace("?sslmode=require", "");
    with_index(&format!("backend = \"postgres\"\nurl = \"{plain}\"\n"));
    let refused = run(&mut archive.strata(&["ls", "--json"]));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        why.contains("no encryption") || why.contains("pg_hba"),
        "{why}"
    );
}
