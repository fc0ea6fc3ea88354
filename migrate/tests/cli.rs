//! The command line alone (no peers): usage errors are clear. The migration itself is
//! tested against Orthanc and a running Strata in the workspace's integration tests
//! (`tests/migrate.rs`), which use the binary this test makes cargo build.

use std::process::Command;

fn migrate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata-migrate"))
}

#[test]
fn usage_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = migrate()
        .arg("--state")
        .arg(dir.path())
        .args(["plan", "--source", "not-an-ae"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AE@HOST:PORT"));
    let out = migrate()
        .arg("--state")
        .arg(dir.path())
        .args(["status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plan"));
}
