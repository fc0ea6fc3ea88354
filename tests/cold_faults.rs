//! Cold-tier faults reproduced against an S3-compatible server (moto) with a
//! fault-injecting proxy in front (`tests/peers/s3_fault_proxy.py`), as public reports of
//! other systems describe them (issue 12, item 3). Each checks that the fault costs no
//! data and no truth: nothing lands in the wrong bucket, `reindex` does not drop what it
//! could not list, an upload cut before its completion is found and aborted.

use crate::common::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command};

/// The fault proxy in front of a moto server, stopped (by pid) on drop.
struct FaultProxy {
    child: Child,
    port: u16,
    control: PathBuf,
    log: PathBuf,
}

impl FaultProxy {
    fn start(dir: &std::path::Path, upstream: u16) -> Self {
        let port = free_port();
        let (control, log) = (dir.join("proxy.json"), dir.join("proxy.log"));
        std::fs::write(&control, "{}").unwrap();
        let child = Command::new("python3")
            .arg(peer_script("s3_fault_proxy.py"))
            .args([
                "--listen",
                &port.to_string(),
                "--upstream",
                &upstream.to_string(),
            ])
            .arg("--control")
            .arg(&control)
            .arg("--log")
            .arg(&log)
            .spawn()
            .unwrap();
        wait_for_port(port);
        FaultProxy {
            child,
            port,
            control,
            log,
        }
    }

    /// Switches faults (the control file is re-read on every request).
    fn set(&self, faults: serde_json::Value) {
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, faults.to_string()).unwrap();
        std::fs::rename(&tmp, &self.control).unwrap();
    }

    fn requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's lines from line `from` on.
    fn requests_since(&self, from: usize) -> Vec<String> {
        self.requests()
            .lines()
            .skip(from)
            .map(str::to_string)
            .collect()
    }

    /// A `[cold]` section for `bucket` reached through the proxy, path style.
    fn cold_section(&self, bucket: &str, extra: &str) -> String {
        format!(
            "[cold]\nurl = \"s3://{bucket}/strata\"\nendpoint = \"http://127.0.0.1:{}\"\nallow_http = true\nrequest_timeout = \"5s\"\n{extra}\n",
            self.port
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keys under `bucket` on moto, listed by an independent client (boto3).
fn keys(moto: &S3Server, bucket: &str) -> Vec<String> {
    let script = format!(
        "import boto3, json\nc = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\nprint(json.dumps([o['Key'] for o in c.list_objects_v2(Bucket='{bucket}').get('Contents', [])]))",
        moto.port
    );
    let out = run_ok(Command::new("python3").args(["-c", &script]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn only_study(archive: &Archive) -> String {
    archive.ls_json()[0]["study_uid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `path_style = false` with a custom endpoint and `url = "s3://strata-cold/site1"`:
/// requests name the bucket in the Host (`strata-cold.<endpoint>`), the packs land in
/// the configured bucket under the prefix, and nothing in a bucket named like the prefix
/// (they once went to `endpoint/site1/…`). The proxy serves `*.s3.example.test` as a
/// virtual-hosted S3 would; Strata reaches it through HTTP_PROXY, without DNS.
#[test]
fn virtual_hosted_requests_address_the_configured_bucket() {
    let moto = S3Server::moto();
    moto.create_bucket("strata-cold");
    moto.create_bucket("site1");
    let dir = scratch("faults-vhost");
    let proxy = FaultProxy::start(dir.path(), moto.port);
    proxy.set(serde_json::json!({"vhost_domain": "s3.example.test"}));
    let archive = Archive::with_config(
        "faults-vhost-archive",
        "[cold]\nurl = \"s3://strata-cold/site1\"\nendpoint = \"http://s3.example.test:9000\"\npath_style = false\nallow_http = true\nrequest_timeout = \"5s\"\n",
    );
    let via_proxy = |args: &[&str]| {
        let mut cmd = archive.strata(args);
        cmd.env("HTTP_PROXY", format!("http://127.0.0.1:{}", proxy.port))
            .env("http_proxy", format!("http://127.0.0.1:{}", proxy.port))
            .env("NO_PROXY", "")
            .env("no_proxy", "");
        cmd
    };
    let ct: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(3).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    run_ok(&mut via_proxy(&["tier", "move", &study, "--to", "cold"]));
    let packed = keys(&moto, "strata-cold");
    assert!(
        packed.iter().any(|k| k.starts_with("site1/packs/")),
        "the pack is in the configured bucket, under the prefix: {packed:?}"
    );
    assert!(
        keys(&moto, "site1").is_empty(),
        "nothing in a bucket named like the prefix"
    );
    let log = proxy.requests();
    assert!(
        log.lines()
            .any(|l| l.contains(" strata-cold.s3.example.test")),
        "virtual-hosted requests name the bucket in the Host: {log}"
    );
    // and it reads back through the same addressing
    let out = dir.path().join("export");
    run_ok(&mut via_proxy(&[
        "export",
        &study,
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(walk(&out).len(), 3);
}

/// While the bucket's LIST lags behind its PUTs (new packs readable, not yet listed),
/// `reindex` keeps the current index — it would lack a study it records in cold — and
/// says why; once the listing catches up, it rebuilds the same index.
#[test]
fn reindex_keeps_the_index_while_the_listing_lags() {
    let moto = S3Server::moto();
    moto.create_bucket("lagging");
    let dir = scratch("faults-list-lag");
    let proxy = FaultProxy::start(dir.path(), moto.port);
    let archive = Archive::with_config(
        "faults-list-lag-archive",
        &proxy.cold_section("lagging", ""),
    );
    let ct: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(3).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    proxy.set(serde_json::json!({"hide_new_from_list": 3600}));
    run_ok(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));

    let out = run(&mut archive.strata(&["reindex"]));
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("THE CURRENT INDEX IS KEPT") && text.contains("not found in the cold tier"),
        "{text}"
    );
    assert_eq!(archive.total_instances(), 3, "the study is still listed");
    let shown = run_ok(&mut archive.strata(&["show", &study]));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("cold"));

    proxy.set(serde_json::json!({}));
    run_ok(&mut archive.strata(&["reindex"]));
    assert_eq!(archive.total_instances(), 3);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
}

/// An outage between a multipart upload's parts and its completion, during which the
/// abort fails too: the move fails and keeps every hot copy; the upload left behind is
/// shown by `verify` and `tier status`, and the next policy pass after `orphan_grace`
/// aborts it; the move then succeeds.
#[test]
fn an_upload_cut_before_completion_is_found_and_aborted() {
    let moto = S3Server::moto();
    moto.create_bucket("cut");
    let dir = scratch("faults-multipart");
    let proxy = FaultProxy::start(dir.path(), moto.port);
    let archive = Archive::with_config(
        "faults-multipart-archive",
        &proxy.cold_section(
            "cut",
            "\n[tiering]\norphan_grace = \"0s\"\nhot_max_age = \"100days\"\n",
        ),
    );
    // a pack above the multipart threshold (16 MiB): 200 CT slices, ~23 MB after zstd
    let ct: Vec<PathBuf> = dcm_files(ct_study());
    let n = ct.len() as u64;
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    proxy.set(serde_json::json!({"fail_complete_and_abort": true}));
    let out = run(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));
    assert!(!out.status.success(), "the move cannot complete");
    assert!(
        proxy.requests().contains("(injected)"),
        "the pack went up as a multipart upload: {}",
        proxy.requests()
    );
    let status = |archive: &Archive| -> serde_json::Value {
        let out = run(&mut archive.strata(&["tier", "status", "--json"]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(status(&archive)["hot_objects"], n, "every hot copy kept");

    proxy.set(serde_json::json!({}));
    assert!(status(&archive)["incomplete_uploads"].as_u64().unwrap() >= 1);
    let out = run(&mut archive.strata(&["verify", "--tier", "cold", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "nothing is lost: {report}");
    assert!(
        !report["incomplete_uploads"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let pass = run_ok(&mut archive.strata(&["tier", "run", "--json"]));
    let pass: serde_json::Value = serde_json::from_slice(&pass.stdout).unwrap();
    assert!(pass["uploads_aborted"].as_u64().unwrap() >= 1, "{pass}");
    assert_eq!(status(&archive)["incomplete_uploads"], 0);
    run_ok(&mut archive.strata(&["tier", "move", &study, "--to", "cold", "--json"]));
    assert_eq!(status(&archive)["cold_only_objects"], n);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
}

/// Issue 11 item 4 (cloud cost): the background worker's passes do not LIST the whole
/// bucket each `scan_interval`; the orphan scan runs once, then every
/// `orphan_scan_interval`. Counted in the proxy's request log over the same few passes,
/// with the scan due every pass and with the default (a day).
#[test]
fn background_passes_do_not_list_the_bucket_each_time() {
    let moto = S3Server::moto();
    moto.create_bucket("idle");
    let dir = scratch("faults-idle-lists");
    let proxy = FaultProxy::start(dir.path(), moto.port);
    let lists = |every: &str| -> usize {
        let before = proxy.requests().lines().count();
        let archive = Archive::with_config(
            &format!("faults-idle-{}", every.replace(' ', "")),
            &proxy.cold_section(
                "idle",
                &format!(
                    "\n[tiering]\nscan_interval = \"1s\"\norphan_scan_interval = \"{every}\"\n"
                ),
            ),
        );
        let server = archive.start();
        std::thread::sleep(std::time::Duration::from_secs(5));
        server.stop();
        proxy
            .requests()
            .lines()
            .skip(before)
            // a LIST (objects or multipart uploads) is a GET of the bucket itself
            .filter(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                parts.first() == Some(&"GET") && parts.get(2) == Some(&"/idle")
            })
            .count()
    };
    let every_pass = lists("0s");
    let daily = lists("1day");
    assert!(
        every_pass >= 4,
        "the scan due every pass lists each time: {every_pass}"
    );
    assert!(daily <= 2, "with the default, once at start: {daily}");
}

/// The parts of a `multipart/related` body, split on the boundary its first line names.
fn multipart_parts(body: &[u8]) -> Vec<Vec<u8>> {
    let eol = body
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a boundary line");
    let delimiter = [b"\r\n".as_slice(), &body[..eol]].concat();
    let mut parts = Vec::new();
    let mut at = eol + 2;
    loop {
        let head_end = at
            + body[at..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("part headers");
        let content = head_end + 4;
        let end = content
            + body[content..]
                .windows(delimiter.len())
                .position(|w| w == delimiter.as_slice())
                .expect("a closing delimiter");
        parts.push(body[content..end].to_vec());
        at = end + delimiter.len();
        if body[at..].starts_with(b"--") {
            return parts;
        }
        at += 2;
    }
}

/// Whether the ranges (first byte, length) share no byte.
fn disjoint(ranges: &[(u64, u64)]) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort();
    sorted.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0)
}

/// The ranged GETs of packs in the proxy's log from line `from` on: (first byte, length).
fn pack_range_gets(proxy: &FaultProxy, from: usize) -> Vec<(u64, u64)> {
    proxy
        .requests()
        .lines()
        .skip(from)
        .filter(|l| l.starts_with("GET ") && l.contains("/packs/"))
        .filter_map(|l| {
            let range = l.split(" range=bytes=").nth(1)?.split(' ').next()?;
            let (a, b) = range.split_once('-')?;
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            Some((a, b - a + 1))
        })
        .collect()
}

/// Issue 13: a study read from an S3 cold tier costs one ranged GET per window of its
/// pack (at most 8 MiB of it), not one per instance, over WADO-RS and C-GET alike; what
/// comes back is byte-identical to what was stored (each part hashes to its object id).
/// The next window's GET is under way while one is read (the proxy releases the first
/// window only when another arrives). A window GET that fails (503 on long ranges, from
/// the proxy) costs nothing but speed: its members are read singly, and the answer is
/// the same.
#[test]
fn a_cold_study_is_read_a_pack_window_at_a_time_and_singly_when_a_window_fails() {
    let moto = S3Server::moto();
    moto.create_bucket("windows");
    let dir = scratch("faults-windows");
    let proxy = FaultProxy::start(dir.path(), moto.port);
    let archive = Archive::with_config(
        "faults-windows-archive",
        // (the scrubber's own reads of each member would mix with the ones counted)
        &(proxy.cold_section("windows", "") + "\n[scrub]\nenabled = false\n"),
    );
    let ct: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(100).collect();
    run_ok(archive.strata(&["import"]).args(&ct));
    let study = only_study(&archive);
    run_ok(&mut archive.strata(&["tier", "move", &study, "--to", "cold"]));
    let ids: BTreeSet<String> = object_ids(&archive, &study).into_values().collect();
    assert_eq!(ids.len(), 100);
    let server = archive.start();
    let wado = |label: &str| {
        let (code, body) = http_request(
            server.http_port,
            "GET",
            &format!("/dicom-web/studies/{study}"),
        )
        .expect("WADO-RS answers");
        assert_eq!(code, 200, "{label}: {}", String::from_utf8_lossy(&body));
        let got: BTreeSet<String> = multipart_parts(&body)
            .iter()
            .map(|p| blake3::hash(p).to_hex().to_string())
            .collect();
        assert_eq!(got, ids, "{label}: each stored object, byte-identical");
    };

    // WADO-RS: a probe of one byte, then windows of at most 8 MiB
    let from = proxy.requests().lines().count();
    wado("from windows");
    let gets = pack_range_gets(&proxy, from);
    let windows: Vec<_> = gets.iter().filter(|g| g.1 > 1).collect();
    assert!(
        !windows.is_empty() && windows.len() <= 4,
        "100 instances (~12 MB of pack) in a few windows, not a GET each: {gets:?}"
    );
    assert!(windows.iter().all(|g| g.1 <= 8 << 20), "{gets:?}");
    // the instances go in pack order: no byte of the pack is fetched twice
    let spans: Vec<(u64, u64)> = windows.iter().map(|g| **g).collect();
    assert!(disjoint(&spans), "windows do not overlap: {gets:?}");
    // a member's mean size in the pack (the windows cover every member, once); the
    // generated CT members all compress to within a few % of it, so a threshold of 1.5
    // times it fails every window of two members or more and no single member
    let member = spans.iter().map(|s| s.1).sum::<u64>() / 100;

    // C-GET (DCMTK getscu): the same, through the same reader
    let from = proxy.requests().lines().count();
    let got_dir = dir.path().join("got");
    std::fs::create_dir_all(&got_dir).unwrap();
    let out = run(dcmtk("getscu")
        .args(["-S", "-aec", "STRATA", "-od"])
        .arg(&got_dir)
        .args(["-k", "QueryRetrieveLevel=STUDY", "-k"])
        .arg(format!("StudyInstanceUID={study}"))
        .arg("127.0.0.1")
        .arg(server.dicom_port.to_string()));
    assert_eq!(
        std::fs::read_dir(&got_dir).unwrap().count(),
        100,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let gets = pack_range_gets(&proxy, from);
    assert!(
        !gets.is_empty() && gets.len() <= 4,
        "C-GET reads the pack a window at a time: {gets:?}"
    );
    assert!(disjoint(&gets), "C-GET's windows do not overlap: {gets:?}");

    // The next window is on its way while one is read: the proxy holds the first window
    // GET until another GET of more than one byte arrives (at most 3 s, below the
    // tier's 5 s request timeout, then 503). Were the windows fetched one after the
    // other, nothing else would come meanwhile: the held one would fail and its members
    // be read singly.
    proxy.set(serde_json::json!({"hold_long_range_until_another": {"over": 1, "seconds": 3}}));
    let from = proxy.requests().lines().count();
    wado("with the next window fetched ahead");
    let log = proxy.requests_since(from);
    assert!(
        !log.iter().any(|l| l.contains("(injected)")),
        "the first window was released by the next one's GET: {log:?}"
    );
    let windows: Vec<(u64, u64)> = pack_range_gets(&proxy, from)
        .into_iter()
        .filter(|g| g.1 > 1)
        .collect();
    assert!(
        (2..=4).contains(&windows.len()) && disjoint(&windows),
        "{windows:?}"
    );

    // every window GET fails: each member is read singly, and the answer is the same
    proxy.set(serde_json::json!({"fail_ranges_over": member * 3 / 2}));
    let from = proxy.requests().lines().count();
    wado("singly, after failed windows");
    let log = proxy.requests_since(from);
    assert!(
        log.iter().any(|l| l.contains("(injected)")),
        "a window was tried: {log:?}"
    );
    let singles = pack_range_gets(&proxy, from)
        .into_iter()
        .filter(|g| g.1 > 1 && g.1 <= member * 3 / 2)
        .count();
    assert!(singles >= 100, "each member read by itself: {log:?}");
    assert!(server.echo_ok());
    server.stop();
}
