//! `strata-migrate` against a real legacy PACS (Orthanc, started by the project's script)
//! into a running Strata: a capped inventory still finds everything, `kill -9` of the
//! migration and a restart of the source end in a complete, verified migration with no
//! verified study moved again, a deleted source instance is reported, and a destination
//! the source does not know fails fast with what to configure.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn migrate_bin() -> PathBuf {
    let bin = strata_bin().with_file_name("strata-migrate");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

pub(crate) fn migrate(state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(migrate_bin());
    cmd.arg("--state").arg(state).args(args);
    cmd
}

struct Orthanc {
    dir: PathBuf,
    dicom: u16,
    http: u16,
    extra: String,
    pid: Option<i32>,
}

impl Orthanc {
    fn start(dir: PathBuf, extra: String) -> Self {
        let mut o = Orthanc {
            dir,
            dicom: free_port(),
            http: free_port(),
            extra,
            pid: None,
        };
        o.launch();
        o
    }

    fn launch(&mut self) {
        run_ok(
            Command::new(repo_root().join("scripts/start-orthanc.sh"))
                .arg(&self.dir)
                .arg(self.dicom.to_string())
                .arg(self.http.to_string())
                .arg("OLDPACS")
                .env("ORTHANC_EXTRA_JSON", &self.extra),
        );
        let pid = std::fs::read_to_string(self.dir.join("orthanc.pid")).unwrap();
        self.pid = Some(pid.trim().parse().unwrap());
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn aet(&self) -> String {
        format!("OLDPACS@127.0.0.1:{}", self.dicom)
    }

    fn api(&self, method: &str, path: &str) -> serde_json::Value {
        let out = run_ok(Command::new("curl").args([
            "-sf",
            "-X",
            method,
            &format!("http://127.0.0.1:{}{path}", self.http),
        ]));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn instances(&self) -> u64 {
        self.api("GET", "/statistics")["CountInstances"]
            .as_u64()
            .unwrap()
    }

    fn studies(&self) -> u64 {
        self.api("GET", "/statistics")["CountStudies"]
            .as_u64()
            .unwrap()
    }

    /// Loads files through Orthanc's REST API (those it refuses are skipped).
    fn store(&self, files: &[PathBuf]) {
        let script = "import sys, urllib.request\n\
            for p in sys.argv[2:]:\n\
            \ttry:\n\
            \t\turllib.request.urlopen(urllib.request.Request(sys.argv[1], data=open(p, 'rb').read(), method='POST')).read()\n\
            \texcept Exception as e:\n\
            \t\tprint(p, e, file=sys.stderr)\n";
        run_ok(
            Command::new("python3")
                .args([
                    "-c",
                    script,
                    &format!("http://127.0.0.1:{}/instances", self.http),
                ])
                .args(files),
        );
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` generated studies of 4 small CT slices, one every 9 days.
fn generated_studies(dir: &Path, n: usize, seed: u32) -> Vec<PathBuf> {
    run_ok(python("gen_ct.py").arg("--out").arg(dir).args([
        "--studies",
        &n.to_string(),
        "--instances",
        "4",
        "--rows",
        "64",
        "--cols",
        "64",
        "--seed",
        &seed.to_string(),
        "--patient-prefix",
        "LEGACY",
        "--start-date",
        "20190101",
    ]));
    walk(dir)
}

fn orthanc_knowing(archive: &Archive, dir: PathBuf, limit: usize) -> Orthanc {
    Orthanc::start(
        dir,
        format!(
            "{{\"LimitFindResults\": {limit}, \"DicomModalities\": {{\"STRATA\": [\"STRATA\", \"127.0.0.1\", {}], \"DOWN\": [\"DOWN\", \"127.0.0.1\", 9]}}}}",
            archive.dicom_port
        ),
    )
}

fn status(state: &Path) -> serde_json::Value {
    let out = run_ok(&mut migrate(state, &["status", "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(crate) fn verified(state: &Path) -> u64 {
    status(state)["by_state"]["verified"].as_u64().unwrap_or(0)
}

/// `strata-migrate run` into the test's Strata.
fn run_to_strata(state: &Path, archive: &Archive) -> Command {
    migrate(
        state,
        &[
            "run",
            "--dest-ae",
            "STRATA",
            "--dest",
            &format!("127.0.0.1:{}", archive.dicom_port),
        ],
    )
}

fn spawn_run(state: &Path, archive: &Archive, extra: &[&str]) -> Child {
    run_to_strata(state, archive)
        .args(["--retries", "8"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Per study: (status, attempts), from the ledger's report.
fn attempts(state: &Path, out: &Path) -> std::collections::BTreeMap<String, (String, u64)> {
    let _ = run(migrate(state, &["report", "--out"]).arg(out));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    summary["studies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["study_uid"].as_str().unwrap().to_string(),
                (
                    s["status"].as_str().unwrap().to_string(),
                    s["attempts"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn capped_inventory_finds_every_study() {
    let archive = Archive::new("migrate-capped");
    let orthanc = orthanc_knowing(&archive, archive.dir.path().join("orthanc"), 5);
    orthanc.store(&generated_studies(&archive.dir.path().join("gen"), 24, 3));
    assert_eq!(orthanc.studies(), 24);
    let state = archive.dir.path().join("state");
    let out = run_ok(&mut migrate(&state, &["plan", "--source", &orthanc.aet()]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("caps answers at 5"), "{text}");
    assert_eq!(status(&state)["studies"], 24, "{text}");
}

#[test]
fn migrates_a_legacy_pacs_completely_through_kills_and_restarts() {
    let archive = Archive::new("migrate-full");
    let server = archive.start();
    let mut orthanc = orthanc_knowing(&archive, archive.dir.path().join("orthanc"), 0);
    let generated = generated_studies(&archive.dir.path().join("gen"), 24, 5);
    orthanc.store(&generated);
    orthanc.store(&pydicom_samples().0);
    let source_instances = orthanc.instances();
    let source_studies = orthanc.studies();
    assert!(
        source_studies >= 40,
        "{source_studies} studies in the source"
    );
    let state = archive.dir.path().join("state");

    // inventory: dated studies by date window, undated ones by the PatientID sweep
    let out = run_ok(&mut migrate(
        &state,
        &[
            "plan",
            "--source",
            &orthanc.aet(),
            "--calling-ae",
            "MIGRATOR",
        ],
    ));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        status(&state)["studies"].as_u64(),
        Some(source_studies),
        "{text}"
    );

    // kill -9 in the middle of a run
    let mut child = spawn_run(&state, &archive, &["--max-rate", "40", "--parallel", "2"]);
    wait_until("a few verified studies", Duration::from_secs(120), || {
        verified(&state) >= 3
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let before = verified(&state);
    assert!(before < source_studies, "the run was not interrupted");
    let report_dir = archive.dir.path().join("report");
    let first_attempts = attempts(&state, &report_dir);

    // run again, and restart the source in the middle of it
    let mut child = spawn_run(&state, &archive, &["--max-rate", "40", "--parallel", "2"]);
    wait_until(
        "progress after the restart",
        Duration::from_secs(120),
        || verified(&state) >= before + 3,
    );
    orthanc.restart();
    let status_code = child.wait().unwrap();
    // a study in flight while the source was down may have failed: run once more
    if !status_code.success() || verified(&state) < source_studies {
        run(&mut run_to_strata(&state, &archive));
    }
    assert_eq!(verified(&state), source_studies, "{}", status(&state));

    // a study verified before the kill was never moved again
    let final_attempts = attempts(&state, &report_dir);
    let mut checked = 0;
    for (uid, (state_then, n)) in &first_attempts {
        if state_then == "verified" {
            assert_eq!(final_attempts[uid].1, *n, "study {uid} was moved again");
            checked += 1;
        }
    }
    assert!(checked >= 3);
    let again = run_ok(&mut run_to_strata(&state, &archive));
    assert!(String::from_utf8_lossy(&again.stdout).contains(&format!(
        "0 verified, 0 failed, {source_studies} already verified"
    )));
    assert_eq!(attempts(&state, &report_dir), final_attempts);

    // the report: every instance arrived, and Strata agrees
    let out = run_ok(migrate(&state, &["report", "--out"]).arg(&report_dir));
    assert!(String::from_utf8_lossy(&out.stdout).contains("complete"));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["totals"]["complete"], true, "{summary}");
    assert_eq!(
        summary["totals"]["source_instances"].as_u64(),
        Some(source_instances)
    );
    assert_eq!(summary["totals"]["missing_instances"], 0);
    let csv = std::fs::read_to_string(report_dir.join("instances.csv")).unwrap();
    assert_eq!(
        csv.lines()
            .filter(|l| l.ends_with(",yes,yes,arrived"))
            .count() as u64,
        source_instances
    );
    assert!(std::fs::read_to_string(report_dir.join("summary.txt"))
        .unwrap()
        .contains("RESULT: COMPLETE"));
    assert_eq!(archive.total_instances(), source_instances);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    server.stop();
}

#[test]
fn deleted_source_instances_are_reported_and_unknown_destinations_fail_fast() {
    let archive = Archive::new("migrate-edge");
    let server = archive.start();
    let orthanc = orthanc_knowing(&archive, archive.dir.path().join("orthanc"), 100);
    let generated = generated_studies(&archive.dir.path().join("gen"), 3, 9);
    orthanc.store(&generated);
    let state = archive.dir.path().join("state");
    run_ok(&mut migrate(&state, &["plan", "--source", &orthanc.aet()]));
    assert_eq!(status(&state)["studies"], 3);

    // issue 12: the source settings `plan` recorded can be corrected by `run`, but only
    // after a C-ECHO with them succeeds
    let header = || -> serde_json::Value {
        let text = std::fs::read_to_string(state.join("ledger.jsonl")).unwrap();
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    };
    let planned_ae = header()["calling_ae"].clone();
    let out = run(&mut migrate(
        &state,
        &[
            "run",
            "--source",
            "OLDPACS@127.0.0.1:9",
            "--dest-ae",
            "STRATA",
            "--dest",
            &format!("127.0.0.1:{}", archive.dicom_port),
        ],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("settings not changed"));
    assert_eq!(header()["calling_ae"], planned_ae);

    // a destination the source does not know: fails at once, says what to configure
    // (with a corrected calling AE title, which the source answers a C-ECHO from)
    let out = run(&mut migrate(
        &state,
        &[
            "run",
            "--calling-ae",
            "MIGRATE_FIXED",
            "--dest-ae",
            "NOWHERE",
            "--dest",
            &format!("127.0.0.1:{}", archive.dicom_port),
        ],
    ));
    assert_eq!(header()["calling_ae"], "MIGRATE_FIXED");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not know the destination AE") && err.contains("DicomModalities"),
        "{err}"
    );
    assert!(!err.contains("retrying"), "fails at once: {err}");

    // issue 12: a destination that is down (the source knows "DOWN" at 127.0.0.1:9,
    // where nothing listens) is said as such, not blamed on the source's nodes
    let out = run(&mut migrate(
        &state,
        &[
            "--timeout",
            "5s",
            "run",
            "--dest-ae",
            "DOWN",
            "--dest",
            "127.0.0.1:9",
            "--retries",
            "0",
        ],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not answer us either") && !err.contains("does not know"),
        "{err}"
    );

    // an instance deleted from the source after planning
    let victim = orthanc.api("GET", "/instances")[0]
        .as_str()
        .unwrap()
        .to_string();
    orthanc.api("DELETE", &format!("/instances/{victim}"));
    run_ok(&mut run_to_strata(&state, &archive));
    let report_dir = archive.dir.path().join("report");
    run(migrate(&state, &["report", "--out"]).arg(&report_dir));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["totals"]["vanished_from_source"], 1, "{summary}");
    let txt = std::fs::read_to_string(report_dir.join("summary.txt")).unwrap();
    assert!(txt.contains("no longer in the source"), "{txt}");
    assert_eq!(archive.total_instances(), 11);
    server.stop();
}

/// Issue 12: the report is what a clinic signs, so it claims only what it knows. Each
/// scenario runs a scripted legacy PACS (`tests/peers/legacy/`, from the field-case
/// reproductions) against this archive and checks `strata-migrate plan/run/report`:
/// - `counts.py`: NumberOfStudyRelatedInstances is optional and may be wrong (PS3.4
///   C.6.1.1.4): absent or low, the study still moves; but a study whose source counts 6
///   while listing and sending 4 is never signed off as complete;
/// - `patient_root.py`: a source may offer only Patient Root (PS3.4 C.6): the refusal
///   names the missing Study Root model, and after that failed inventory `run` and
///   `report` do not say complete;
/// - `timeout.py`: pending C-MOVE responses are optional (PS3.4 C.4.2.3.1): a timed-out
///   study is reported as a timeout, never as instances that left the source, and
///   verifies with a longer timeout;
/// - `trailing_uid.py`: a source storing a Study Instance UID with a trailing space and
///   matching byte-exactly gets it back exactly so (PS3.5 §6.2), and the study migrates
///   whole; a study the source lists but gives no instance of is never signed off.
#[test]
fn the_migration_report_claims_only_what_it_knows() {
    for scenario in ["counts", "patient_root", "timeout", "trailing_uid"] {
        let archive = Archive::new(&format!("migrate-honesty-{scenario}"));
        let server = archive.start();
        let out = run(std::process::Command::new("python3")
            .arg(peer_script(&format!("legacy/{scenario}.py")))
            .env("DIR", archive.dir.path())
            .env("PORT", archive.dicom_port.to_string())
            .env("SRC_PORT", free_port().to_string())
            .env("MIGRATE", migrate_bin())
            .env("STRATA", strata_bin()));
        server.stop();
        assert!(
            out.status.success(),
            "{scenario}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue 12 (trial): a source that answers C-ECHO from anyone but queries and moves only
/// from AE titles it knows (Orthanc with `DicomAlwaysAllowFind`/`Move` = false). A
/// mistyped `--calling-ae` is refused by `plan` before any ledger is written and by `run`
/// before the ledger's settings change — naming the C-FIND the source refused, not just a
/// C-ECHO that proves nothing. And a run whose source stops knowing us stops at once,
/// saying why, instead of retrying study after study.
#[test]
fn a_calling_ae_the_source_does_not_know_is_named_before_anything_is_recorded() {
    let archive = Archive::new("migrate-calling-ae");
    let server = archive.start();
    let knows = |ours: &str| {
        format!(
            "{{\"DicomAlwaysAllowFind\": false, \"DicomAlwaysAllowMove\": false, \"DicomModalities\": {{\"STRATA\": [\"STRATA\", \"127.0.0.1\", {}], \"US\": [\"{ours}\", \"127.0.0.1\", 9]}}}}",
            archive.dicom_port
        )
    };
    let mut orthanc = Orthanc::start(archive.dir.path().join("orthanc"), knows("STRATA_MIGRATE"));
    let generated = generated_studies(&archive.dir.path().join("gen"), 2, 21);
    orthanc.store(&generated);
    let state = archive.dir.path().join("state");

    let out = run(&mut migrate(
        &state,
        &[
            "plan",
            "--source",
            &orthanc.aet(),
            "--calling-ae",
            "STRATA_MIGRAT",
        ],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused its C-FIND") && err.contains("\"STRATA_MIGRAT\""),
        "{err}"
    );
    assert!(err.contains("no ledger written"), "{err}");
    assert!(!state.join("ledger.jsonl").exists(), "nothing recorded");

    run_ok(&mut migrate(&state, &["plan", "--source", &orthanc.aet()]));
    assert_eq!(status(&state)["studies"], 2);
    let out = run(run_to_strata(&state, &archive).args(["--calling-ae", "STRATA_MIGRAT"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused its C-FIND") && err.contains("settings not changed"),
        "{err}"
    );

    // the source forgets us between plan and run: the run stops at its first C-MOVE
    orthanc.extra = knows("SOMEONE_ELSE");
    orthanc.restart();
    let out = run(&mut run_to_strata(&state, &archive));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused its C-FIND") && err.contains("The run stops here"),
        "{err}"
    );
    assert!(
        !err.contains("retrying"),
        "no retrying study after study: {err}"
    );
    assert_eq!(archive.total_instances(), 0);
    orthanc.kill();
    server.stop();
}

/// Issue 12 (field case: one Study Instance UID under two PatientIDs in the source,
/// which Orthanc keeps as two studies): every instance migrates, and the report warns
/// that the source holds the study under both PatientIDs (PS3.3 C.7.2: a study has one
/// patient) instead of filing one patient's instances under the other without a word.
#[test]
fn a_study_the_source_holds_under_two_patients_is_reported() {
    let archive = Archive::new("migrate-two-patients");
    let server = archive.start();
    let orthanc = orthanc_knowing(&archive, archive.dir.path().join("orthanc"), 100);
    let generated = generated_studies(&archive.dir.path().join("gen"), 1, 31);
    // two of its four instances under another patient, in their own series
    for f in &generated[2..] {
        run_ok(
            dcmtk("dcmodify")
                .args([
                    "-nb",
                    "-m",
                    "(0010,0020)=OTHER602",
                    "-m",
                    "(0020,000E)=2.25.602602602",
                ])
                .arg(f),
        );
    }
    orthanc.store(&generated);
    let state = archive.dir.path().join("state");
    run_ok(&mut migrate(&state, &["plan", "--source", &orthanc.aet()]));
    run(&mut run_to_strata(&state, &archive));
    let report_dir = archive.dir.path().join("report");
    run(migrate(&state, &["report", "--out"]).arg(&report_dir));
    let summary = std::fs::read_to_string(report_dir.join("summary.txt")).unwrap();
    assert!(
        summary.contains("WARNING: the source holds 1 study UID(s) under more than one PatientID")
            && summary.contains("OTHER602"),
        "{summary}"
    );
    assert_eq!(archive.total_instances(), 4, "every instance migrated");
    server.stop();
}

/// Issue 11 field case: a source that caps IMAGE-level C-FIND answers (Orthanc's
/// `LimitFindInstances`, as old PACS do) besides STUDY-level ones (`LimitFindResults`).
/// Verification lists each series narrower (by InstanceNumber) until the source's own
/// count is reached, so every instance is still reconciled and the migration completes.
#[test]
fn a_source_that_caps_instance_listings_is_still_reconciled() {
    let archive = Archive::new("migrate-capped-instances");
    let server = archive.start();
    let orthanc = Orthanc::start(
        archive.dir.path().join("orthanc"),
        format!(
            "{{\"LimitFindResults\": 100, \"LimitFindInstances\": 2, \"DicomModalities\": {{\"STRATA\": [\"STRATA\", \"127.0.0.1\", {}]}}}}",
            archive.dicom_port
        ),
    );
    let generated = generated_studies(&archive.dir.path().join("gen"), 2, 41);
    orthanc.store(&generated);
    let state = archive.dir.path().join("state");
    run_ok(&mut migrate(&state, &["plan", "--source", &orthanc.aet()]));
    let out = run(&mut run_to_strata(&state, &archive));
    let report_dir = archive.dir.path().join("report");
    run(migrate(&state, &["report", "--out"]).arg(&report_dir));
    let summary = std::fs::read_to_string(report_dir.join("summary.txt")).unwrap();
    assert!(
        summary.contains("RESULT: COMPLETE"),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(archive.total_instances(), generated.len() as u64);
    server.stop();
}
