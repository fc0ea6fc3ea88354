//! Test harness: start `strata serve` on free loopback ports in a temp dir, run the CLI,
//! drive real peers (DCMTK by full path, pynetdicom scripts in `tests/peers/`), and a
//! small raw DICOM client for inputs no well-behaved peer would send.
//!
//! Peers are installed by `scripts/install-peers.sh` (the README's test command runs it);
//! a missing peer fails the test with that hint, it is never skipped silently.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn peer_script(name: &str) -> PathBuf {
    repo_root().join("tests/peers").join(name)
}

/// A DCMTK tool by full path (pynetdicom installs same-named scripts), with Nagle off.
pub fn dcmtk(tool: &str) -> Command {
    let path = PathBuf::from("/usr/bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-peers.sh",
        path.display()
    );
    let mut cmd = Command::new(path);
    cmd.env("TCP_NODELAY", "1");
    cmd
}

pub fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(peer_script(script));
    cmd
}

/// Stores the first two instances of the shared CT study into the server at `port`
/// (storescu) and returns them with their Study Instance UID.
pub fn store_two_ct(port: u16) -> (Vec<PathBuf>, String) {
    let files: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(2).collect();
    run_ok(storescu(port).args(&files));
    let study = strata::dicom::header::read_header_blocking(&files[0])
        .unwrap()
        .study_uid;
    (files, study)
}

/// DCMTK storescu calling STRATA at `port` on loopback; add the files.
pub fn storescu(port: u16) -> Command {
    let mut cmd = dcmtk("storescu");
    cmd.args(["-aec", "STRATA", "127.0.0.1", &port.to_string()]);
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits (up to 10 s) until something listens on `port` on loopback.
pub fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A port that is free now, from 10000-19999: below the kernel's ephemeral range
/// (32768-60999), which every outgoing connection of every test draws its source port
/// from. A port from `bind(0)` comes from that range and, once the probe socket is closed,
/// a client's `connect` may take it before the server under test binds it ("Address
/// already in use"). Ports are handed out once per test process (a counter seeded by the
/// pid, so concurrent test processes start far apart).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 100) as u16 * 97;
    for _ in 0..10000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10000 + (seed + step) % 10000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 10000-19999")
}

/// A base port B below the kernel's ephemeral range (20000-32000) such that B..B+`span`
/// and, with `grpc`, B+10000..B+10000+`span` are all free now (for the peer scripts that
/// lay their ports out from a base: tests/peers/patroni.sh, seaweedfs.sh).
pub fn free_port_range(span: u16, grpc: bool) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let seed = (std::process::id() % 500) as u16 * 20;
    for _ in 0..500 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 20000 + (seed + step * 20) % 2000;
        if (base..base + span).all(free) && (!grpc || (base + 10000..base + 10000 + span).all(free))
        {
            return base;
        }
    }
    panic!("no free port range of {span}")
}

/// A scratch directory under the cargo target dir (kept small; removed on drop).
pub fn scratch(name: &str) -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)
        .unwrap()
}

/// With `STRATA_TEST_PG` set (the URL of a PostgreSQL cluster `scripts/test.sh` started,
/// `postgresql://postgres@127.0.0.1:PORT`), each test archive's index is a fresh database
/// there (`[index] backend = "postgres"`): the end-to-end suites run on the shared index
/// of several nodes as on RocksDB. Unset: RocksDB, the default.
fn postgres_index_section() -> (String, Option<(String, String, String)>) {
    let Ok(base) = std::env::var("STRATA_TEST_PG") else {
        return (String::new(), None);
    };
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "archive_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let (host, port) = base
        .rsplit_once('@')
        .and_then(|(_, hp)| hp.split_once(':'))
        .map(|(h, p)| (h.to_string(), p.trim_end_matches('/').to_string()))
        .expect("STRATA_TEST_PG: postgresql://user@host:port");
    run_ok(Command::new("psql").args([
        "-h",
        &host,
        "-p",
        &port,
        "-U",
        "postgres",
        "-q",
        "-c",
        &format!("CREATE DATABASE {name}"),
    ]));
    (
        format!(
            "\n[index]\nbackend = \"postgres\"\nurl = \"{}/{name}\"\n",
            base.trim_end_matches('/')
        ),
        Some((host, port, name)),
    )
}

/// An archive directory with a config file; servers and CLI runs use it.
pub struct Archive {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub dicom_port: u16,
    pub http_port: u16,
    /// With `STRATA_TEST_PG`: the PostgreSQL (host, port, database) of its index.
    pub postgres: Option<(String, String, String)>,
}

impl Archive {
    pub fn new(name: &str) -> Self {
        Self::with_config(name, "")
    }

    /// `extra` is appended inside the `[dicom]` section unless it opens its own sections.
    pub fn with_config(name: &str, extra: &str) -> Self {
        let dir = scratch(name);
        let dicom_port = free_port();
        let http_port = free_port();
        let config = dir.path().join("strata.toml");
        let (index_section, postgres) = postgres_index_section();
        let text = format!(
            "[archive]\ndata_dir = \"{}\"\nmin_free_space_mb = 0\n\n[http]\nport = {http_port}\nbind = \"127.0.0.1\"\n\n[dicom]\nport = {dicom_port}\nbind = \"127.0.0.1\"\nread_timeout = \"10s\"\n{extra}\n{index_section}",
            dir.path().join("data").display(),
        );
        std::fs::write(&config, text).unwrap();
        Archive {
            dir,
            config,
            dicom_port,
            http_port,
            postgres,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Another node of the same archive: its own data directory (hot disk) and ports,
    /// this one's PostgreSQL index (`[index]` as this one's) and cold tier (`cold`, the
    /// configuration text of a shared `[cold]`), with `extra` (its `[cluster]` section).
    /// `None` without `STRATA_TEST_PG`: on RocksDB an archive is one node.
    pub fn another_node(&self, name: &str, extra: &str) -> Option<Archive> {
        let (host, port, db) = self.postgres.clone()?;
        let node = Archive::with_config(name, extra);
        let text = std::fs::read_to_string(&node.config).unwrap();
        let (mine, _) = text.split_once("\n[index]").expect("an [index] section");
        let shared = format!(
            "{mine}\n[index]\nbackend = \"postgres\"\nurl = \"postgresql://postgres@{host}:{port}/{db}\"\n"
        );
        std::fs::write(&node.config, shared).unwrap();
        Some(Archive {
            postgres: Some((host, port, db)),
            ..node
        })
    }

    /// Loses the index, as a disk or a database lost (for `reindex` tests): the RocksDB
    /// directory removed, or the PostgreSQL index table emptied.
    pub fn lose_index(&self) {
        match &self.postgres {
            None => std::fs::remove_dir_all(self.data_dir().join("index")).unwrap(),
            Some((host, port, name)) => {
                run_ok(Command::new("psql").args([
                    "-h",
                    host,
                    "-p",
                    port,
                    "-U",
                    "postgres",
                    "-d",
                    name,
                    "-q",
                    "-c",
                    "TRUNCATE strata_kv",
                ]));
            }
        }
    }

    /// The StudyInstanceUIDs `strata ls` lists.
    pub fn study_uids(&self) -> Vec<String> {
        self.ls_json()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["study_uid"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn strata(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(strata_bin());
        cmd.arg("--config").arg(&self.config).args(args);
        with_test_credentials(&mut cmd);
        cmd
    }

    pub fn start(&self) -> Server {
        self.start_with_env(&[])
    }

    /// [`Archive::start`] with extra environment variables (a `STRATA_FAILPOINT`).
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let child = with_test_credentials(&mut Command::new(strata_bin()))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("STRATA_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server {
            child: Some(child),
            http_port: self.http_port,
            dicom_port: self.dicom_port,
            log: self.dir.path().join("serve.log"),
        };
        server.wait_healthy();
        server
    }

    pub fn ls_json(&self) -> serde_json::Value {
        let out = run_ok(&mut self.strata(&["ls", "--json"]));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The audit records (`strata audit log --json`) of one action, oldest first.
    pub fn audit_records(&self, action: &str) -> Vec<serde_json::Value> {
        let out = run_ok(&mut self.strata(&["audit", "log", "--json"]));
        let log: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["action"] == action)
            .cloned()
            .collect()
    }

    pub fn total_instances(&self) -> u64 {
        self.ls_json()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["instances"].as_u64().unwrap())
            .sum()
    }

    pub fn verify_json(&self) -> (bool, serde_json::Value) {
        let out = run(&mut self.strata(&["verify", "--json"]));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "verify printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), report)
    }

    pub fn aet(&self) -> String {
        format!("STRATA@127.0.0.1:{}", self.dicom_port)
    }
}

pub struct Server {
    child: Option<Child>,
    pub http_port: u16,
    pub dicom_port: u16,
    pub log: PathBuf,
}

impl Server {
    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(self.http_port, "/healthz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "strata serve did not become healthy; log:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics` (Prometheus text) with each series' `node` label checked — every
    /// series carries the node's id (docs/scale-out.md) — and taken out, so that tests
    /// read the series as a single node's.
    pub fn metrics(&self) -> String {
        let text = http_get(self.http_port, "/metrics")
            .expect("metrics answer")
            .1;
        let mut out = String::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let start = line
                .find("node=\"")
                .unwrap_or_else(|| panic!("a series without its node label: {line}"));
            let end = start + 6 + line[start + 6..].find('"').unwrap() + 1;
            let line = format!("{}{}", &line[..start], &line[end..])
                .replace("{,", "{")
                .replace(",}", "}")
                .replace("{}", "");
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Graceful stop (SIGTERM); asserts a clean exit.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "strata serve exited with {status}; log:\n{}",
            self.log_text()
        );
    }

    /// Crash (SIGKILL).
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the server answers a C-ECHO (via DCMTK echoscu).
    pub fn echo_ok(&self) -> bool {
        dcmtk("echoscu")
            .args([
                "-aec",
                "STRATA",
                "-to",
                "5",
                "127.0.0.1",
                &self.dicom_port.to_string(),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Minimal HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The generated CT study (200 instances, 512x512x16 bit) shared by the tests.
pub fn ct_study() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ct-study-200");
        if !dir.join(".complete").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            run_ok(python("gen_ct.py").arg("--out").arg(&dir).args([
                "--instances",
                "200",
                "--seed",
                "7",
            ]));
            std::fs::write(dir.join(".complete"), b"").unwrap();
        }
        dir
    })
}

/// Generates 64x64 CT studies into `dir` with `tests/peers/gen_ct.py` and `args`
/// (`--studies`, `--instances`, `--seed`, `--patient-prefix`, …); its JSON report
/// (`files`, `bytes`, `studies`).
pub fn small_ct(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        python("gen_ct.py")
            .arg("--out")
            .arg(dir)
            .args(["--rows", "64", "--cols", "64"])
            .args(args),
    );
    serde_json::from_slice(&out.stdout).expect("gen_ct.py reports JSON")
}

/// Every `.dcm` file under `dir`, sorted.
pub fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    files
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// pydicom's sample files: (valid, broken), as classified by `tests/peers/sample_files.py`.
pub fn pydicom_samples() -> &'static (Vec<PathBuf>, Vec<PathBuf>) {
    static SAMPLES: OnceLock<(Vec<PathBuf>, Vec<PathBuf>)> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let out = run_ok(&mut python("sample_files.py"));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let list = |k: &str| {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|p| PathBuf::from(p.as_str().unwrap()))
                .collect::<Vec<_>>()
        };
        (list("valid"), list("broken"))
    })
}

// ---------------------------------------------------------------------------
// A raw DICOM client for inputs no well-behaved peer sends.

pub mod raw {
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    use dicom_ul::ClientAssociationOptions;
    use std::time::Duration;

    pub type Assoc = dicom_ul::association::ClientAssociation<std::net::TcpStream>;

    pub fn associate(
        port: u16,
        called: &str,
        abstract_syntax: &str,
        ts: &str,
    ) -> Result<Assoc, String> {
        ClientAssociationOptions::new()
            .calling_ae_title("RAWSCU")
            .called_ae_title(called)
            .with_presentation_context(abstract_syntax, vec![ts])
            .read_timeout(Duration::from_secs(20))
            .establish_with(&format!("{called}@127.0.0.1:{port}"))
            .map_err(|e| e.to_string())
    }

    fn element(out: &mut Vec<u8>, group: u16, elem: u16, value: &[u8]) {
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&elem.to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }

    fn uid(v: &str) -> Vec<u8> {
        let mut b = v.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            b.push(0);
        }
        b
    }

    /// An Implicit VR LE C-STORE-RQ command set.
    pub fn store_command(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
        let mut body = Vec::new();
        element(&mut body, 0, 0x0002, &uid(sop_class));
        element(&mut body, 0, 0x0100, &1u16.to_le_bytes());
        element(&mut body, 0, 0x0110, &message_id.to_le_bytes());
        element(&mut body, 0, 0x0700, &0u16.to_le_bytes());
        element(&mut body, 0, 0x0800, &0u16.to_le_bytes());
        element(&mut body, 0, 0x1000, &uid(sop_instance));
        let mut out = Vec::new();
        element(&mut out, 0, 0x0000, &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Sends a C-STORE with `dataset` as the data set bytes; returns the response status.
    pub fn store(
        a: &mut Assoc,
        sop_class: &str,
        sop_instance: &str,
        dataset: &[u8],
    ) -> Result<u16, String> {
        let pc = a.presentation_contexts()[0].id;
        a.send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: store_command(1, sop_class, sop_instance),
            }],
        })
        .map_err(|e| e.to_string())?;
        let chunks: Vec<&[u8]> = if dataset.is_empty() {
            vec![&[][..]]
        } else {
            dataset.chunks(16_000).collect()
        };
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            a.send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Data,
                    is_last: i + 1 == n,
                    data: chunk.to_vec(),
                }],
            })
            .map_err(|e| e.to_string())?;
        }
        match a.receive().map_err(|e| e.to_string())? {
            Pdu::PData { data } => {
                let cmd = &data[0].data;
                status_of(cmd).ok_or_else(|| "response without a status".to_string())
            }
            other => Err(format!("unexpected PDU {other:?}")),
        }
    }

    /// Finds (0000,0900) Status in an Implicit VR LE command set.
    pub fn status_of(cmd: &[u8]) -> Option<u16> {
        let mut pos = 0;
        while pos + 8 <= cmd.len() {
            let g = u16::from_le_bytes([cmd[pos], cmd[pos + 1]]);
            let e = u16::from_le_bytes([cmd[pos + 2], cmd[pos + 3]]);
            let len = u32::from_le_bytes(cmd[pos + 4..pos + 8].try_into().unwrap()) as usize;
            if g == 0 && e == 0x0900 && len == 2 {
                return Some(u16::from_le_bytes([cmd[pos + 8], cmd[pos + 9]]));
            }
            pos += 8 + len;
        }
        None
    }
}

/// S3 credentials for the moto server (it accepts any); set on every Strata process so
/// that none of them probes the instance-metadata endpoint.
pub fn with_test_credentials(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

/// An S3-compatible server on loopback for a test, with credentials testing / testing
/// (`with_test_credentials`):
/// - `S3Server::start()`: the S3 gateway `scripts/test.sh` shares among tests when
///   `STRATA_TEST_S3` names it (`http://127.0.0.1:PORT`, a SeaweedFS cluster from
///   tests/peers/seaweedfs.sh: a real multi-node S3 cluster), else a fresh moto server;
/// - `S3Server::moto()`: always moto (in memory), for tests that need what only it offers:
///   stopping the endpoint, archive storage classes restored at once, Object Lock.
///
/// A moto server is stopped by pid on drop; the shared gateway belongs to the script.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    /// "moto" or "seaweedfs".
    pub engine: &'static str,
}

impl S3Server {
    pub fn start() -> Self {
        match std::env::var("STRATA_TEST_S3") {
            Ok(url) => {
                let port = url
                    .trim_end_matches('/')
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .expect("STRATA_TEST_S3: http://127.0.0.1:PORT");
                S3Server {
                    child: None,
                    port,
                    engine: "seaweedfs",
                }
            }
            Err(_) => Self::moto(),
        }
    }

    pub fn moto() -> Self {
        Self::moto_on(free_port())
    }

    pub fn moto_on(port: u16) -> Self {
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (scripts/install-peers.sh installs moto[server])");
        let moto = S3Server {
            child: Some(child),
            port,
            engine: "moto",
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/").is_none() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Runs Python `code` with `s3`, a boto3 client of this server (an independent client,
    /// as an auditor would use); its output.
    pub fn boto(&self, code: &str) -> Output {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', \
             aws_access_key_id='testing', aws_secret_access_key='testing', \
             region_name='us-east-1')\n{code}",
            self.port
        );
        run_ok(Command::new("python3").args(["-c", &script]))
    }

    /// Creates a bucket. On the shared gateway the name must be unique in the whole run
    /// (no test may see another's objects): an existing bucket fails the test.
    pub fn create_bucket(&self, bucket: &str) {
        self.boto(&format!("s3.create_bucket(Bucket='{bucket}')"));
    }

    /// The `[cold]` section of a Strata config pointing at `bucket` on this server.
    pub fn cold_section(&self, bucket: &str, extra: &str) -> String {
        format!(
            "[cold]\nurl = \"s3://{bucket}/strata\"\nendpoint = \"http://127.0.0.1:{}\"\nallow_http = true\nrequest_timeout = \"5s\"\n{extra}\n",
            self.port
        )
    }

    /// Downloads an object with boto3.
    pub fn download(&self, bucket: &str, key: &str, dest: &Path) {
        self.boto(&format!(
            "s3.download_file('{bucket}', '{key}', '{}')",
            dest.display()
        ));
    }

    /// Stops a moto server (the shared gateway cannot be stopped by a test).
    pub fn stop(&mut self) {
        assert_eq!(self.engine, "moto", "only a test's own moto server stops");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Minimal HTTP/1.0 request on loopback with a binary body: (status code, body).
pub fn http_request(port: u16, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, resp[split + 4..].to_vec()))
}

/// SOP Instance UID -> object id (served version), from `strata show --json`.
pub fn object_ids(archive: &Archive, study: &str) -> std::collections::BTreeMap<String, String> {
    let out = run_ok(&mut archive.strata(&["show", study, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids = std::collections::BTreeMap::new();
    for series in shown["series"].as_array().unwrap() {
        for i in series["instances"].as_array().unwrap() {
            let versions = i["versions"].as_array().unwrap();
            ids.insert(
                i["sop_instance_uid"].as_str().unwrap().to_string(),
                versions.last().unwrap()["id"].as_str().unwrap().to_string(),
            );
        }
    }
    ids
}
