//! Bearer tokens and roles (issue 14, items 3 to 5) against real peers: an OIDC issuer
//! (npm `oauth2-mock-server`, its discovery document and JWKS), `dicomweb-client`'s CLI
//! with `--bearer-token`, SMART's `fhirclient`, Orthanc's DICOMweb client with an
//! `Authorization` header, curl, and DCMTK for the DICOM side of the roles.
//!
//! RFC 6750 §3.1: a request without a token answers 401 with `WWW-Authenticate: Bearer
//! realm=…`; an expired, wrongly issued, wrongly addressed or forged token 401 with
//! `error="invalid_token"`; a valid token without the role 403 with
//! `error="insufficient_scope"`. A token restricted to one patient sees that patient's
//! studies only, and nothing of another's leaks through QIDO-RS, WADO-RS, WADO-URI or
//! FHIR. DIMSE callers mapped to a role by AE title are refused what it does not allow
//! (PS3.7 C.5: status 0124H, Refused: Not Authorized). Every case is on the audit record
//! with its identity, and `strata audit verify` stays clean.

use crate::common::*;
use crate::dicomweb::OrthancWeb;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The OIDC issuer: `tests/peers/mock_idp.mjs` (oauth2-mock-server), its tokens by name.
struct Idp {
    child: Child,
    issuer: String,
    tokens: HashMap<String, String>,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Idp {
    fn start(patient: &str) -> Idp {
        let npm = std::env::var("STRATA_NPM").unwrap_or_else(|_| "/var/tmp/strata-npm".into());
        let mut child = Command::new("node")
            .arg(peer_script("mock_idp.mjs"))
            .args(["0", patient])
            .env("NODE_PATH", format!("{npm}/node_modules"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs the OIDC issuer");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first: serde_json::Value =
            serde_json::from_str(&lines.next().expect("the issuer starts").unwrap()).unwrap();
        let issuer = first["issuer"].as_str().unwrap().to_string();
        let mut tokens = HashMap::new();
        for line in lines.by_ref().take(10) {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            tokens.insert(
                v["name"].as_str().unwrap().to_string(),
                v["token"].as_str().unwrap().to_string(),
            );
        }
        assert_eq!(tokens.len(), 10, "the issuer printed every token");
        Idp {
            child,
            issuer,
            tokens,
            lines,
        }
    }

    /// Has the issuer publish a new signing key (kid rollover) and returns a token
    /// signed with it.
    fn rotate(&mut self) -> String {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"rotate\n").unwrap();
        stdin.flush().unwrap();
        let line = self.lines.next().expect("the issuer rotates").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["name"], "rotated");
        v["token"].as_str().unwrap().to_string()
    }

    fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP request with curl: (status, response headers, body).
fn web(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[&str],
) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, "-D"])
        .arg(&headers)
        .args(extra);
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = run(cmd.arg(format!("http://127.0.0.1:{port}{path}")));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        std::fs::read_to_string(&headers).unwrap_or_default(),
        body.to_string(),
    )
}

/// Writes a one- or two-instance CT study of patient `<prefix>001`; (files, study UID).
fn study_of(dir: &Path, prefix: &str, instances: usize) -> (Vec<PathBuf>, String) {
    let out = dir.join(prefix);
    let made = small_ct(
        &out,
        &[
            "--studies",
            "1",
            "--instances",
            &instances.to_string(),
            "--patient-prefix",
            prefix,
        ],
    );
    let study = made["studies"][0].as_str().unwrap().to_string();
    (dcm_files(&out), study)
}

/// A STOW-RS body of `file` (PS3.18 10.5: multipart/related; type="application/dicom").
fn stow_body(dir: &Path, file: &Path) -> PathBuf {
    let mut body = b"--BOUNDARY\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    body.extend(std::fs::read(file).unwrap());
    body.extend(b"\r\n--BOUNDARY--\r\n");
    let path = dir.join("stow.body");
    std::fs::write(&path, body).unwrap();
    path
}

const STOW_TYPE: &str =
    "Content-Type: multipart/related; type=\"application/dicom\"; boundary=BOUNDARY";

#[test]
fn tokens_and_roles_decide_every_web_and_dicom_access_and_each_is_audited() {
    let work = scratch("tokens-data");
    let (alice_files, alice) = study_of(work.path(), "ALICE", 2);
    let (bob_files, bob) = study_of(work.path(), "BOB", 2);
    let (carol_files, _carol) = study_of(work.path(), "CAROL", 1);
    let mut idp = Idp::start("ALICE001");
    let archive = Archive::with_config(
        "tokens",
        &format!(
            "\n[auth]\nissuer = \"{}\"\naudience = \"strata\"\n\n\
             [[access.dicom]]\nae_title = \"VIEWONLY\"\nroles = [\"viewer\"]\n\n\
             [[access.dicom]]\nae_title = \"STOREONLY\"\nroles = [\"uploader\"]\n",
            idp.issuer
        ),
    );
    let server = archive.start();
    let (dicom, http) = (server.dicom_port, server.http_port);

    // DICOM: the default roles store; a viewer-only AE cannot store, an uploader-only AE
    // cannot query (0124H, Refused: Not Authorized)
    run_ok(storescu(dicom).args(alice_files.iter().chain(&bob_files)));
    assert_eq!(archive.total_instances(), 4);
    let refused = run(storescu(dicom)
        .args(["-v", "-aet", "VIEWONLY"])
        .args(&carol_files));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        said.to_lowercase().contains("status: 0x124"),
        "storescu is told it is not authorized: {said}"
    );
    assert_eq!(archive.total_instances(), 4, "nothing stored by a viewer");
    let find = run(dcmtk("findscu")
        .args(["-v", "-S", "-aet", "STOREONLY", "-aec"])
        .arg("STRATA")
        .args(["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"])
        .args(["127.0.0.1", &dicom.to_string()]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&find.stdout),
        String::from_utf8_lossy(&find.stderr)
    );
    assert!(
        !said.contains(&alice) && said.to_lowercase().contains("0x124"),
        "an uploader-only AE finds nothing: {said}"
    );

    // no token, and each kind of bad token: 401, with the challenge RFC 6750 §3.1 asks
    let (code, headers, _) = web(http, "GET", "/dicom-web/studies", None, &[]);
    assert_eq!(code, 401);
    assert!(
        headers
            .to_lowercase()
            .contains("www-authenticate: bearer realm=\"strata\""),
        "{headers}"
    );
    // the CapabilityStatement stays open, and says tokens are needed (SMART on FHIR)
    let (code, _, body) = web(http, "GET", "/fhir/metadata", None, &[]);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("SMART-on-FHIR") && body.contains(&idp.issuer),
        "{body}"
    );
    let viewer = idp.token("viewer").to_string();
    let viewer = viewer.as_str();
    let tampered = {
        // the payload changed (a role added), the signature kept
        let parts: Vec<&str> = viewer.split('.').collect();
        use base64::engine::{general_purpose::URL_SAFE_NO_PAD as B64, Engine};
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["roles"] = serde_json::json!(["viewer", "admin"]);
        format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        )
    };
    for (name, token, why) in [
        ("expired", idp.token("expired").to_string(), "expired"),
        ("wrong-iss", idp.token("wrong-iss").to_string(), "issuer"),
        ("wrong-aud", idp.token("wrong-aud").to_string(), "audience"),
        ("wrong-key", idp.token("wrong-key").to_string(), "signature"),
        ("tampered", tampered, "signature"),
        ("garbage", "not.a.jwt".to_string(), "well-formed"),
    ] {
        let (code, headers, body) = web(http, "GET", "/dicom-web/studies", Some(&token), &[]);
        assert_eq!(code, 401, "{name}: {body}");
        assert!(
            headers.contains("error=\"invalid_token\""),
            "{name}: {headers}"
        );
        assert!(body.contains(why), "{name}: the reason says {why}: {body}");
    }

    // dicomweb-client's CLI with --bearer-token (its own HTTP stack)
    let search = |token: &str| {
        run(Command::new("dicomweb_client")
            .args(["--url", &format!("http://127.0.0.1:{http}/dicom-web")])
            .args(["--bearer-token", token, "search", "studies"]))
    };
    let found = search(viewer);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let listed = String::from_utf8_lossy(&found.stdout);
    assert!(listed.contains(&alice) && listed.contains(&bob), "{listed}");
    assert!(!search(idp.token("expired")).status.success());
    // the issuer rolls its keys: a token naming a key Strata has not seen is checked
    // against the JWKS fetched again (Strata cached it at the first token)
    let rotated = idp.rotate();
    let (code, _, body) = web(http, "GET", "/dicom-web/studies", Some(&rotated), &[]);
    assert_eq!(
        code, 200,
        "a new key is fetched when a token names it: {body}"
    );
    // a SMART scope (user/*.read) in an ES256 token reads too
    let (code, _, body) = web(
        http,
        "GET",
        "/dicom-web/studies",
        Some(idp.token("smart-read")),
        &[],
    );
    assert_eq!(code, 200, "{body}");

    // a viewer cannot STOW (403, insufficient_scope); an uploader can
    let body = stow_body(work.path(), &carol_files[0]);
    let data = format!("@{}", body.display());
    let stow = ["-H", STOW_TYPE, "--data-binary", data.as_str()];
    let (code, headers, text) = web(http, "POST", "/dicom-web/studies", Some(viewer), &stow);
    assert_eq!(code, 403, "{text}");
    assert!(
        headers.contains("error=\"insufficient_scope\""),
        "{headers}"
    );
    assert!(
        text.contains("uploader"),
        "the refusal names the role: {text}"
    );
    assert_eq!(archive.total_instances(), 4);
    let (code, _, text) = web(
        http,
        "POST",
        "/dicom-web/studies",
        Some(idp.token("uploader")),
        &stow,
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(archive.total_instances(), 5);

    // a token restricted to ALICE001: her studies only; nothing about Bob leaks
    let patient = idp.token("patient");
    let studies_of = |path: &str| -> Vec<String> {
        let (code, _, body) = web(http, "GET", path, Some(patient), &[]);
        assert_eq!(code, 200, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["0020000D"]["Value"][0].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(studies_of("/dicom-web/studies"), vec![alice.clone()]);
    assert!(studies_of("/dicom-web/studies?PatientID=BOB001").is_empty());
    assert!(studies_of(&format!("/dicom-web/studies?StudyInstanceUID={bob}")).is_empty());
    assert!(studies_of(&format!("/dicom-web/studies/{bob}/series")).is_empty());
    let (code, _, _) = web(
        http,
        "GET",
        &format!("/dicom-web/studies/{alice}/metadata"),
        Some(patient),
        &[],
    );
    assert_eq!(code, 200);
    let (code, _, _) = web(
        http,
        "GET",
        &format!("/dicom-web/studies/{bob}/metadata"),
        Some(patient),
        &[],
    );
    assert_eq!(
        code, 404,
        "another patient's study is as if it were not held"
    );
    let (code, _, _) = web(
        http,
        "GET",
        &format!("/dicom-web/studies/{bob}"),
        Some(patient),
        &[],
    );
    assert_eq!(code, 404);
    let (code, _, body) = web(
        http,
        "GET",
        "/fhir/ImagingStudy?patient=BOB001",
        Some(patient),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(&bob), "{body}");
    let (_, _, body) = web(http, "GET", "/fhir/ImagingStudy", Some(patient), &[]);
    assert!(body.contains(&alice) && !body.contains(&bob), "{body}");
    let (code, _, _) = web(http, "POST", "/dicom-web/studies", Some(patient), &stow);
    assert_eq!(code, 403, "a patient-restricted token is read-only");

    // fhirclient (SMART's client) with the viewer's token finds both patients' studies
    let fhir = run(Command::new("python3").arg("-c").arg(format!(
        "from fhirclient.server import FHIRServer\n\
         from fhirclient.models.imagingstudy import ImagingStudy\n\
         srv = FHIRServer(None, base_uri='http://127.0.0.1:{http}/fhir')\n\
         srv.session.headers['Authorization'] = 'Bearer {viewer}'\n\
         found = ImagingStudy.where(struct={{}}).perform_resources(srv)\n\
         print(' '.join(i.value for s in found for i in (s.identifier or [])))\n\
         srv.session.headers['Authorization'] = 'Bearer {}'\n\
         try:\n    ImagingStudy.where(struct={{}}).perform_resources(srv)\n    print('NO-401')\n\
         except Exception as e:\n    print('REFUSED', type(e).__name__)\n",
        idp.token("expired")
    )));
    let said = String::from_utf8_lossy(&fhir.stdout);
    assert!(
        fhir.status.success(),
        "{}",
        String::from_utf8_lossy(&fhir.stderr)
    );
    assert!(said.contains(&alice) && said.contains(&bob), "{said}");
    assert!(said.contains("REFUSED FHIRUnauthorizedException"), "{said}");

    // Orthanc's DICOMweb client, its server entry carrying an Authorization header
    let orthanc =
        OrthancWeb::start_with_token(&archive.dir.path().join("orthanc"), http, Some(viewer));
    let (code, found) = orthanc.post("/dicom-web/servers/strata/get", r#"{"Uri": "/studies"}"#);
    assert_eq!(code, 200, "{found}");
    assert_eq!(found.as_array().map(Vec::len), Some(3), "{found}");
    drop(orthanc);

    // the admin API: the CLI's token decides (a viewer may not run a tier pass)
    let tier_run = |token: Option<&str>| {
        let mut cmd = archive.strata(&["tier", "run", "--json"]);
        cmd.env_remove("STRATA_TOKEN");
        if let Some(t) = token {
            cmd.env("STRATA_TOKEN", t);
        }
        run(&mut cmd)
    };
    let out = tier_run(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set STRATA_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tier_run(Some(viewer));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs role admin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tier_run(Some(idp.token("admin")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();

    // the audit trail: refusals with why and who, accesses with the token's identity
    let authn = archive.audit_records("authenticate");
    assert!(authn.len() >= 8, "{authn:?}");
    assert!(authn
        .iter()
        .all(|r| r["outcome"].as_str().unwrap().starts_with("refused: ")
            && r["actor"]["kind"] == "web"));
    assert!(authn
        .iter()
        .any(|r| r["outcome"].as_str().unwrap().contains("expired")));
    let queries = archive.audit_records("query");
    assert!(queries.iter().any(|r| r["actor"]["user"] == "viewer-user"
        && r["actor"]["client"] == "test-client"
        && r["actor"]["service"] == "dicomweb"));
    assert!(queries
        .iter()
        .any(|r| r["actor"]["user"] == "patient-viewer"));
    let stores = archive.audit_records("store");
    assert!(stores.iter().any(|r| r["actor"]["ae_title"] == "VIEWONLY"
        && r["outcome"]
            .as_str()
            .unwrap()
            .starts_with("refused: needs role uploader")));
    assert!(stores.iter().any(|r| r["actor"]["user"] == "viewer-user"
        && r["outcome"].as_str().unwrap().starts_with("refused")));
    assert!(stores.iter().any(|r| r["actor"]["user"] == "uploader-user"
        && !r["outcome"].as_str().unwrap().starts_with("refused")));
    let passes = archive.audit_records("tier_pass");
    assert!(passes.iter().any(|r| r["actor"]["user"] == "viewer-user"
        && r["outcome"].as_str().unwrap().starts_with("refused")));
    assert!(passes
        .iter()
        .any(|r| r["actor"]["user"] == "admin-user" && r["actor"]["service"] == "admin"));
    run_ok(&mut archive.strata(&["audit", "verify"]));
    let atna = run_ok(&mut archive.strata(&["audit", "export", "--format", "dicom"]));
    let atna = String::from_utf8_lossy(&atna.stdout);
    assert!(
        atna.contains("UserID=\"web:viewer-user\"")
            && atna.contains("AlternativeUserID=\"test-client\""),
        "the ATNA export names the token's user and client"
    );
    assert!(
        atna.contains("csd-code=\"110114\""),
        "refused authentications are ATNA User Authentication events"
    );
}

/// The viewer with tokens on: OHIF takes the token from its URL (`&token=`, read by its
/// viewer route and sent as `Authorization: Bearer` with each DICOMweb call), so a link
/// from the EHR carrying the token opens the study in headless Chromium; the same link
/// without the token draws nothing, each of its calls refused (401) and audited.
#[test]
fn the_viewer_opens_a_study_with_the_token_its_link_carries() {
    let archive_data = scratch("tokens-viewer-data");
    let made = small_ct(
        &archive_data.path().join("ct"),
        &[
            "--studies",
            "1",
            "--instances",
            "3",
            "--patient-prefix",
            "VIEW",
        ],
    );
    let study = made["studies"][0].as_str().unwrap().to_string();
    let idp = Idp::start("VIEW001");
    let archive = Archive::with_config(
        "tokens-viewer",
        &format!("\n[auth]\nissuer = \"{}\"\n", idp.issuer),
    );
    run_ok(
        archive
            .strata(&["import"])
            .args(dcm_files(&archive_data.path().join("ct"))),
    );
    let server = archive.start();
    let base = format!(
        "http://127.0.0.1:{}/viewer?StudyInstanceUIDs={study}",
        server.http_port
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer-token-screenshots");
    let check = |url: &str, timeout: &str| -> serde_json::Value {
        let checked = run_ok(python("viewer_check.py").args([
            "--url",
            url,
            "--out",
            out.to_str().unwrap(),
            "--timeout",
            timeout,
        ]));
        serde_json::from_slice(&checked.stdout).unwrap()
    };
    // the patient-restricted token of this patient: an EHR-embedded viewer
    let with = check(&format!("{base}&token={}", idp.token("patient")), "90");
    assert_eq!(
        with["drawn"],
        true,
        "{with} (screenshots in {})",
        out.display()
    );
    let retrieves = archive.audit_records("retrieve");
    assert!(
        retrieves
            .iter()
            .any(|r| r["actor"]["user"] == "patient-viewer" && r["actor"]["service"] == "dicomweb"),
        "{retrieves:?}"
    );
    let refused_before = archive.audit_records("authenticate").len();
    let without = check(&base, "20");
    assert_eq!(without["drawn"], false, "{without}");
    assert!(
        archive.audit_records("authenticate").len() > refused_before,
        "the viewer's calls without a token were refused and audited"
    );
    server.stop();
}
