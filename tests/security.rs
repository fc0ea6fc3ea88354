//! TLS on the HTTP port (issue 14, items 2 and 6) against real clients: curl and OpenSSL's
//! `s_client`, with a CA, a server and a client certificate made by the `openssl` CLI.
//! HTTPS answers with https URLs; plain HTTP and TLS 1.1 are refused at the handshake
//! (counted); the CLI reaches the admin API over the plain loopback port; with
//! `client_ca_file` a client without a certificate from that CA is refused; a
//! world-readable key stops `strata serve` at start with the reason.

use crate::common::*;
use std::path::Path;
use std::process::Command;

/// Makes `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1 and localhost) and
/// `client.pem`/`client.key` in `dir`, keys mode 0600.
pub(crate) fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        run_ok(Command::new("openssl").current_dir(dir).args(args));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Strata Test CA",
            ],
        ]
        .concat(),
    );
    for (name, subject, ext) in [
        (
            "server",
            "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        (
            "client",
            "/CN=EHR-VIEWER/O=Hospital",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    subject,
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{ext}"),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    for key in ["ca.key", "server.key", "client.key"] {
        set_mode(&dir.join(key), 0o600);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An archive serving HTTPS on its HTTP port and plain HTTP on a loopback port (which the
/// harness then uses for health checks); `client_ca` adds mutual TLS.
fn tls_archive(name: &str, certs: &Path, client_ca: bool) -> (Archive, u16) {
    let mut archive = Archive::new(name);
    let https = archive.http_port;
    let loopback = free_port();
    let text = std::fs::read_to_string(&archive.config).unwrap();
    let client_ca = if client_ca {
        format!("client_ca_file = \"{}\"\n", certs.join("ca.pem").display())
    } else {
        String::new()
    };
    let text = text.replace(
        &format!("[http]\nport = {https}\n"),
        &format!("[http]\nport = {https}\ntls = true\nloopback_port = {loopback}\n"),
    ) + &format!(
        "\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{client_ca}",
        certs.join("server.pem").display(),
        certs.join("server.key").display()
    );
    std::fs::write(&archive.config, text).unwrap();
    archive.http_port = loopback;
    (archive, https)
}

/// curl over HTTPS trusting the test CA; (exit status, HTTP status, body).
fn curl_https(certs: &Path, extra: &[&str], url: &str) -> (bool, String, String) {
    let out = run(Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(certs.join("ca.pem"))
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(url));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (out.status.success(), code.to_string(), body.to_string())
}

#[test]
fn https_serves_verified_clients_and_refuses_plain_http_old_tls_and_readable_keys() {
    let certs = scratch("tls-certs");
    make_certificates(certs.path());
    let (archive, https) = tls_archive("tls-http", certs.path(), false);
    let server = archive.start();
    let base = format!("https://127.0.0.1:{https}");

    // HTTPS, the server's certificate verified against the CA (PS3.15 B.1, BCP 195)
    let (ok, code, _) = curl_https(certs.path(), &[], &format!("{base}/healthz"));
    assert!(ok && code == "200", "{code}");
    // a stored study is found over HTTPS, and its RetrieveURL is an https URL
    run_ok(storescu(server.dicom_port).args(dcm_files(ct_study()).iter().take(2)));
    let (ok, code, body) = curl_https(certs.path(), &[], &format!("{base}/dicom-web/studies"));
    assert!(ok && code == "200", "{code}: {body}");
    let studies: serde_json::Value = serde_json::from_str(&body).unwrap();
    let url = studies[0]["00081190"]["Value"][0].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{base}/dicom-web/studies/")),
        "{url}"
    );

    // plain HTTP on the TLS port: no answer, the handshake is refused and counted
    let plain = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://127.0.0.1:{https}/healthz"),
    ]));
    assert!(!plain.status.success());
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000");
    // TLS 1.1 is refused by the server (TLS 1.2 and 1.3 only)
    let old = run(Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{https}")])
        .args(["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null()));
    let text =
        String::from_utf8_lossy(&old.stdout).to_string() + &String::from_utf8_lossy(&old.stderr);
    assert!(text.contains("alert handshake failure"), "{text}");
    let tls12 = run(Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{https}"),
            "-tls1_2",
        ])
        .arg("-CAfile")
        .arg(certs.path().join("ca.pem"))
        .stdin(std::process::Stdio::null()));
    let text = String::from_utf8_lossy(&tls12.stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let metrics = server.metrics();
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("strata_tls_handshake_failures_total{service=\"http\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused >= 2, "{metrics}");
    let audited = archive.audit_records("connect");
    assert!(
        audited.len() >= 2
            && audited.iter().all(|r| r["actor"]["service"] == "https"
                && r["outcome"]
                    .as_str()
                    .unwrap()
                    .starts_with("refused: TLS handshake")),
        "{audited:?}"
    );
    // the CLI reaches the admin API over the plain loopback port
    let status = run_ok(&mut archive.strata(&["tier", "status", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(status.is_object(), "{status}");
    server.stop();

    // mutual TLS: a client certificate from the configured CA is required
    let (archive, https) = tls_archive("tls-mutual", certs.path(), true);
    let server = archive.start();
    let url = format!("https://127.0.0.1:{https}/healthz");
    let (ok, _, _) = curl_https(certs.path(), &[], &url);
    assert!(!ok, "a client without a certificate must be refused");
    let cert = certs.path().join("client.pem");
    let key = certs.path().join("client.key");
    let (ok, code, _) = curl_https(
        certs.path(),
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &url,
    );
    assert!(ok && code == "200", "{code}");
    server.stop();

    // a world-readable key stops the server at start, saying why
    set_mode(&certs.path().join("server.key"), 0o644);
    let out = run(&mut archive.strata(&["serve"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by everyone") && err.contains("server.key"),
        "{err}"
    );
}

/// DICOM TLS (PS3.15 B.1, BCP 195) against DCMTK: with client certificates required,
/// echoscu (also with its BCP 195 profile), storescu, findscu and getscu work over TLS
/// and the audit log names the peer by AE title *and* certificate subject; a client
/// without a certificate and a plain DICOM client on the TLS port are refused at the
/// handshake (counted), while the plain port goes on serving.
#[test]
fn dicom_tls_serves_certified_peers_and_names_them_in_the_audit_log() {
    let certs = scratch("dicom-tls-certs");
    make_certificates(certs.path());
    let tls_port = free_port();
    let dir = certs.path();
    let archive = Archive::with_config(
        "dicom-tls",
        &format!(
            "tls_port = {tls_port}\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display(),
            dir.join("ca.pem").display()
        ),
    );
    let server = archive.start();
    let port = tls_port.to_string();
    let tls = |tool: &str| {
        let mut cmd = dcmtk(tool);
        cmd.args(["-aec", "STRATA", "+tls"])
            .arg(dir.join("client.key"))
            .arg(dir.join("client.pem"))
            .arg("+cf")
            .arg(dir.join("ca.pem"));
        cmd
    };
    run_ok(tls("echoscu").args(["127.0.0.1", &port]));
    run_ok(tls("echoscu").args(["+px", "127.0.0.1", &port])); // DCMTK's BCP 195 profile
    let files: Vec<_> = dcm_files(ct_study()).into_iter().take(2).collect();
    run_ok(tls("storescu").args(["127.0.0.1", &port]).args(&files));
    let study = strata::dicom::header::read_header_blocking(&files[0])
        .unwrap()
        .study_uid;
    let found = run_ok(
        tls("findscu")
            .args(["-v", "-S", "-k", "QueryRetrieveLevel=STUDY"])
            .args([
                "-k",
                &format!("StudyInstanceUID={study}"),
                "-k",
                "NumberOfStudyRelatedInstances",
                "127.0.0.1",
                &port,
            ]),
    );
    let text = String::from_utf8_lossy(&found.stderr).to_string()
        + &String::from_utf8_lossy(&found.stdout);
    assert!(text.contains("(0020,1208) IS [2 ]"), "{text}");
    // C-GET over TLS (pynetdicom, which DCMTK's getscu cannot do): the instances come
    // back over the requester's own TLS association
    let got = run_ok(
        python("get_status.py")
            .args(["--port", &port, "--study", &study, "--tls-ca"])
            .arg(dir.join("ca.pem"))
            .arg("--tls-cert")
            .arg(dir.join("client.pem"))
            .arg("--tls-key")
            .arg(dir.join("client.key")),
    );
    let got: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["status"], 0, "{got}");
    assert_eq!(got["received"], 2, "{got}");

    // the caller is its AE title and its certificate's subject
    let stores = archive.audit_records("store");
    assert_eq!(stores.len(), 2, "{stores:?}");
    for s in &stores {
        assert_eq!(s["actor"]["ae_title"], "STORESCU", "{s}");
        assert_eq!(
            s["actor"]["certificate"], "CN=EHR-VIEWER, O=Hospital",
            "{s}"
        );
    }

    // refused at the handshake: no client certificate, and plain DICOM on the TLS port
    let anonymous = run(dcmtk("echoscu")
        .args(["-aec", "STRATA", "+tla", "+cf"])
        .arg(dir.join("ca.pem"))
        .args(["127.0.0.1", &port]));
    assert!(!anonymous.status.success());
    let plain = run(dcmtk("echoscu").args(["-aec", "STRATA", "127.0.0.1", &port]));
    assert!(!plain.status.success());
    // a client certificate from another CA
    let other = scratch("dicom-tls-other-ca");
    make_certificates(other.path());
    let foreign = run(dcmtk("echoscu")
        .args(["-aec", "STRATA", "+tls"])
        .arg(other.path().join("client.key"))
        .arg(other.path().join("client.pem"))
        .arg("+cf")
        .arg(dir.join("ca.pem"))
        .args(["127.0.0.1", &port]));
    assert!(!foreign.status.success());
    let metrics = server.metrics();
    assert!(
        metrics.contains("strata_tls_handshake_failures_total{service=\"dicom\"} 3"),
        "{metrics}"
    );
    // each refusal is an audit record with the peer's address, and the log verifies
    let refused = archive.audit_records("connect");
    assert_eq!(refused.len(), 3, "{refused:?}");
    for r in &refused {
        assert!(
            r["outcome"]
                .as_str()
                .unwrap()
                .starts_with("refused: DICOM TLS"),
            "{r}"
        );
        assert!(
            r["actor"]["address"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{r}"
        );
    }
    // the plain port serves on
    assert!(server.echo_ok());
    server.stop();
    // the log verifies, its head anchored at the stop
    run_ok(&mut archive.strata(&["audit", "verify"]));
}

/// C-MOVE to a destination marked `tls = true` goes over DICOM TLS: DCMTK's storescp with
/// TLS, requiring a client certificate, receives the study; Strata verified it against
/// `[tls] peer_ca_file` and presented its own certificate.
/// C-MOVE over TLS both ways: pynetdicom requests it on the DICOM TLS port with its
/// client certificate (mutual TLS; DCMTK's movescu has no TLS), and Strata sends the
/// study to DCMTK `storescp +tls` (a `[[dicom.peers]]` entry with `tls = true`, which
/// requires our client certificate).
#[test]
fn c_move_reaches_a_tls_destination_over_tls() {
    let certs = scratch("move-tls-certs");
    make_certificates(certs.path());
    let dir = certs.path();
    let (dest_port, tls_port) = (free_port(), free_port());
    let archive = Archive::with_config(
        "move-tls",
        &format!(
            "tls_port = {tls_port}\n\n\
             [[dicom.peers]]\nae_title = \"TLSDEST\"\nhost = \"localhost\"\nport = {dest_port}\ntls = true\n\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\npeer_ca_file = \"{}\"\nclient_ca_file = \"{}\"\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display(),
            dir.join("ca.pem").display(),
            dir.join("ca.pem").display()
        ),
    );
    let server = archive.start();
    let (_, study) = store_two_ct(server.dicom_port);
    let received = scratch("move-tls-received");
    let mut storescp = dcmtk("storescp")
        .args(["-aet", "TLSDEST", "+tls"])
        .arg(dir.join("server.key"))
        .arg(dir.join("server.pem"))
        .arg("+cf")
        .arg(dir.join("ca.pem"))
        .arg("-od")
        .arg(received.path())
        .arg(dest_port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(dest_port);
    // the requester over TLS too (pynetdicom; DCMTK's movescu has no TLS), mutual TLS,
    // on the TLS port
    wait_for_port(tls_port);
    let moved = run(python("get_status.py")
        .args(["--port", &tls_port.to_string(), "--study", &study])
        .args(["--move-to", "TLSDEST", "--host", "localhost", "--tls-ca"])
        .arg(dir.join("ca.pem"))
        .arg("--tls-cert")
        .arg(dir.join("client.pem"))
        .arg("--tls-key")
        .arg(dir.join("client.key")));
    let _ = storescp.kill();
    let _ = storescp.wait();
    let text = String::from_utf8_lossy(&moved.stderr).to_string()
        + &String::from_utf8_lossy(&moved.stdout);
    assert!(moved.status.success(), "{text}");
    let answer: serde_json::Value = serde_json::from_slice(&moved.stdout).unwrap();
    assert_eq!(
        (answer["status"].as_u64(), answer["completed"].as_u64()),
        (Some(0), Some(2)),
        "{text}"
    );
    assert_eq!(walk(received.path()).len(), 2, "{text}");
    server.stop();
}

/// `strata-migrate` over DICOM TLS both ways (issue 14, item 1): a "legacy PACS" (a
/// Strata whose only DICOM port is its TLS port, mutual TLS) is planned and migrated
/// into a destination that also speaks TLS only; the source's C-MOVE reaches the
/// destination over TLS too. Without the CA bundle, or plain TCP against the TLS port,
/// `plan` fails with the reason and writes no ledger.
#[test]
fn strata_migrate_plans_and_moves_over_tls() {
    let certs = scratch("migrate-tls-certs");
    make_certificates(certs.path());
    let dir = certs.path();
    let tls_files = format!(
        "\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\npeer_ca_file = \"{}\"\n",
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        dir.join("ca.pem").display(),
        dir.join("ca.pem").display()
    );
    let (source_tls, dest_tls) = (free_port(), free_port());
    let dest = Archive::with_config(
        "migrate-tls-dest",
        &format!("tls_port = {dest_tls}\n{tls_files}"),
    );
    let source = Archive::with_config(
        "migrate-tls-source",
        &format!(
            "ae_title = \"LEGACY\"\ntls_port = {source_tls}\n\n\
             [[dicom.peers]]\nae_title = \"STRATA\"\nhost = \"localhost\"\nport = {dest_tls}\ntls = true\n{tls_files}"
        ),
    );
    let (dest_server, source_server) = (dest.start(), source.start());
    wait_for_port(source_tls);
    wait_for_port(dest_tls);
    let files: Vec<_> = dcm_files(ct_study()).into_iter().take(3).collect();
    run_ok(
        dcmtk("storescu")
            .args([
                "-aec",
                "LEGACY",
                "127.0.0.1",
                &source_server.dicom_port.to_string(),
            ])
            .args(&files),
    );

    let state = scratch("migrate-tls-state");
    let state = state.path().join("ledger");
    let source_ae = format!("LEGACY@localhost:{source_tls}");
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    let client = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    // refused cleanly: TLS asked for without the CAs; plain TCP to the TLS port
    let no_ca = run(&mut crate::migrate::migrate(
        &state,
        &["plan", "--source", &source_ae, "--source-tls"],
    ));
    assert!(!no_ca.status.success());
    assert!(
        String::from_utf8_lossy(&no_ca.stderr).contains("--tls-ca"),
        "{}",
        String::from_utf8_lossy(&no_ca.stderr)
    );
    let plain = run(&mut crate::migrate::migrate(
        &state,
        &["--timeout", "5s", "plan", "--source", &source_ae],
    ));
    assert!(!plain.status.success());
    assert!(
        !state.exists(),
        "a failed plan writes no ledger: {}",
        String::from_utf8_lossy(&plain.stderr)
    );

    let ca = dir.join("ca.pem");
    let with_tls = |args: &[&str]| {
        let mut cmd = crate::migrate::migrate(&state, &["--tls-ca", ca.to_str().unwrap()]);
        cmd.args(client).args(args);
        cmd
    };
    run_ok(&mut with_tls(&[
        "plan",
        "--source",
        &source_ae,
        "--source-tls",
    ]));
    run_ok(&mut with_tls(&[
        "run",
        "--dest-ae",
        "STRATA",
        "--dest",
        &format!("localhost:{dest_tls}"),
        "--dest-tls",
    ]));
    assert_eq!(crate::migrate::verified(&state), 1);
    assert_eq!(dest.total_instances(), 3);
    // the source saw the migration tool by its certificate
    source_server.stop();
    dest_server.stop();
    let finds = source.audit_records("query");
    assert!(
        finds
            .iter()
            .any(|r| r["actor"]["ae_title"] == "STRATA_MIGRATE"
                && r["actor"]["certificate"] == "CN=EHR-VIEWER, O=Hospital"),
        "{finds:?}"
    );
}
