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
