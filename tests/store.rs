//! C-STORE from real peers: DCMTK storescu and pynetdicom, every transfer syntax family,
//! concurrent associations; then ls counts, export byte-identity (`b3sum`) and dataset
//! equality with what was sent.

use crate::common::*;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use strata::dicom::part10::read_foreign_meta;

/// The storescu option proposing a file's own (compressed) transfer syntax.
fn storescu_ts_option(ts: &str) -> Option<&'static str> {
    Some(match ts {
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2" => return None,
        "1.2.840.10008.1.2.4.50" => "-xy",
        "1.2.840.10008.1.2.4.51" => "-xx",
        "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => "-xs",
        "1.2.840.10008.1.2.4.80" => "-xt",
        "1.2.840.10008.1.2.4.81" => "-xu",
        "1.2.840.10008.1.2.4.90" => "-xv",
        "1.2.840.10008.1.2.4.91" => "-xw",
        "1.2.840.10008.1.2.5" => "-xr",
        "1.2.840.10008.1.2.1.99" => "-xd",
        "1.2.840.10008.1.2.4.100" => "-xm",
        "1.2.840.10008.1.2.4.101" => "-xh",
        "1.2.840.10008.1.2.4.102" => "-xn",
        "1.2.840.10008.1.2.4.103" => "-xl",
        _ => return Some("-x="),
    })
}

pub fn meta_of(path: &Path) -> strata::dicom::part10::ForeignMeta {
    let bytes = std::fs::read(path).unwrap();
    read_foreign_meta(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Sends files with storescu, one association per transfer-syntax group, proposing each
/// file's own transfer syntax; asserts that every store succeeded.
pub fn storescu_send(port: u16, files: &[PathBuf]) {
    let mut groups: BTreeMap<Option<&str>, Vec<&PathBuf>> = BTreeMap::new();
    for f in files {
        groups
            .entry(storescu_ts_option(&meta_of(f).transfer_syntax_uid))
            .or_default()
            .push(f);
    }
    for (option, group) in groups {
        for chunk in group.chunks(400) {
            let mut cmd = dcmtk("storescu");
            cmd.args(["-R", "-nh", "-aec", "STRATA"]);
            if let Some(o) = option {
                cmd.arg(o);
            }
            cmd.arg("127.0.0.1")
                .arg(port.to_string())
                .args(chunk.iter());
            let out = run(&mut cmd);
            let text = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            let failures: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("E:") || l.starts_with("F:"))
                .collect();
            assert!(
                out.status.success() && failures.is_empty(),
                "storescu {option:?} failed:\n{}",
                failures.join("\n")
            );
        }
    }
}

/// For every exported file: `b3sum` equals the id the archive reports for it.
pub fn assert_export_matches_ids(archive: &Archive, out: &Path) -> usize {
    let studies = archive.ls_json();
    let mut expected: BTreeMap<PathBuf, String> = BTreeMap::new();
    for s in studies.as_array().unwrap() {
        let uid = s["study_uid"].as_str().unwrap();
        let o = run_ok(&mut archive.strata(&["ls", uid, "--json"]));
        let view: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for series in view["series"].as_array().unwrap() {
            for inst in series["instances"].as_array().unwrap() {
                let id = inst["versions"].as_array().unwrap().last().unwrap()["id"]
                    .as_str()
                    .unwrap();
                let path = out
                    .join(uid)
                    .join(series["series_uid"].as_str().unwrap())
                    .join(format!(
                        "{}.dcm",
                        inst["sop_instance_uid"].as_str().unwrap()
                    ));
                expected.insert(path, id.to_string());
            }
        }
    }
    let files = dcm_files(out);
    assert_eq!(
        files.len(),
        expected.len(),
        "one exported file per instance"
    );
    for chunk in files.chunks(200) {
        let o = run_ok(Command::new("b3sum").args(chunk));
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let (hash, path) = line.split_once("  ").unwrap();
            let want = expected
                .get(Path::new(path))
                .unwrap_or_else(|| panic!("unexpected export {path}"));
            assert_eq!(hash, want, "b3sum of {path} differs from its id");
        }
    }
    files.len()
}

use std::process::Command;

fn distinct_sops(files: &[PathBuf]) -> HashSet<String> {
    files.iter().map(|f| meta_of(f).sop_instance_uid).collect()
}

#[test]
fn storescu_ct_study_and_pydicom_samples_round_trip() {
    let archive = Archive::new("store-round-trip");
    let server = archive.start();
    let ct: Vec<PathBuf> = dcm_files(ct_study());
    assert!(ct.len() >= 200);
    let (valid, _) = pydicom_samples();
    storescu_send(server.dicom_port, &ct);
    storescu_send(server.dicom_port, valid);

    let mut all = ct.clone();
    all.extend(valid.iter().cloned());
    let sops = distinct_sops(&all);
    assert_eq!(
        archive.total_instances() as usize,
        sops.len(),
        "ls counts one instance per SOP Instance UID"
    );

    // export while the server runs; every file's b3sum is its id
    let out = archive.dir.path().join("export");
    run_ok(&mut archive.strata(&["export", "--all", "--out", out.to_str().unwrap()]));
    assert_eq!(assert_export_matches_ids(&archive, &out), sops.len());

    // the CT study went over in its own transfer syntax: datasets are byte-identical
    for f in &ct {
        let sent = std::fs::read(f).unwrap();
        let m = read_foreign_meta(&sent).unwrap();
        let sent_meta = meta_of(f);
        let study = find_study_dir(&out, &sent_meta.sop_instance_uid);
        let got = std::fs::read(&study).unwrap();
        let gm = read_foreign_meta(&got).unwrap();
        assert!(
            sent[m.dataset_offset..] == got[gm.dataset_offset..],
            "{} dataset differs",
            f.display()
        );
    }
    // every sample: the same dataset (values compared where storescu converted the
    // syntax). Several samples are encodings of one SOP instance: those are kept as
    // versions of it, and only the unambiguous ones are compared with the export.
    let mut by_sop: BTreeMap<String, Vec<&PathBuf>> = BTreeMap::new();
    for f in valid {
        by_sop
            .entry(meta_of(f).sop_instance_uid)
            .or_default()
            .push(f);
    }
    let unique: Vec<&PathBuf> = by_sop
        .values()
        .filter(|v| v.len() == 1)
        .map(|v| v[0])
        .collect();
    let mut cmd = python("compare_datasets.py");
    cmd.arg("--exported").arg(&out).args(unique.iter());
    run_ok(&mut cmd);
    for (sop, files) in by_sop.iter().filter(|(_, v)| v.len() > 1) {
        let o = run_ok(&mut archive.strata(&["show", sop, "--json"]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let versions = v["versions"].as_array().unwrap().len();
        // distinct bytes become versions; encodings the sender converted to the same
        // bytes are one object
        assert!(
            (1..=files.len()).contains(&versions),
            "{sop}: {versions} versions for {} encodings",
            files.len()
        );
    }

    let (clean, report) = archive.verify_json();
    assert!(clean, "verify: {report}");
    assert!(server.metrics().contains("strata_instances_stored_total"));

    // The metadata records captured at ingest (from the objects kept in memory as they
    // arrived over C-STORE) are the ones `reindex` captures from the stored files: every
    // study's WADO-RS metadata (PS3.18 10.4.1.1.2, DICOM JSON as PS3.18 Annex F) is the
    // same before and after. (Instances sent in several encodings are left out: which
    // version is served after `reindex` follows the files' times, which two stores in
    // the same millisecond may tie.)
    let studies: Vec<String> = archive
        .ls_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["study_uid"].as_str().unwrap().to_string())
        .collect();
    let metadata = |server: &Server| -> Vec<Vec<serde_json::Value>> {
        studies
            .iter()
            .map(|s| {
                let path = format!("/dicom-web/studies/{s}/metadata");
                let (code, body) = http_get(server.http_port, &path).unwrap();
                assert_eq!(code, 200, "{path}: {body}");
                let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
                all.into_iter()
                    .filter(|i| {
                        let sop = i["00080018"]["Value"][0].as_str().unwrap_or_default();
                        by_sop.get(sop).is_none_or(|files| files.len() == 1)
                    })
                    .collect()
            })
            .collect()
    };
    let captured = metadata(&server);
    server.stop();
    run_ok(&mut archive.strata(&["reindex"]));
    let server = archive.start();
    for (study, (ingested, rebuilt)) in studies.iter().zip(captured.iter().zip(metadata(&server))) {
        assert_eq!(
            ingested, &rebuilt,
            "study {study}: metadata captured at ingest vs by reindex"
        );
    }
    server.stop();
}

fn find_study_dir(out: &Path, sop: &str) -> PathBuf {
    walk(out)
        .into_iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(&format!("{sop}.dcm")))
        .unwrap_or_else(|| panic!("{sop} not exported"))
}

#[test]
fn pynetdicom_sends_explicit_implicit_jpeg_and_rle() {
    let archive = Archive::new("store-pynetdicom");
    let server = archive.start();
    let port = server.dicom_port.to_string();
    let ct: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(5).collect();
    let picks = run_ok(&mut python("pick_compressed.py"));
    let picks: serde_json::Value = serde_json::from_slice(&picks.stdout).unwrap();
    // three files of each, with distinct SOP Instance UIDs (some samples share one)
    let mut seen = HashSet::new();
    let mut pick = |key: &str| -> Vec<String> {
        picks[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .filter(|p| seen.insert(meta_of(Path::new(p)).sop_instance_uid))
            .take(3)
            .collect()
    };
    let jpeg = pick("jpeg_baseline");
    let rle = pick("rle");
    assert!(!jpeg.is_empty() && !rle.is_empty());

    let send = |ts: &str, files: &[String]| {
        let mut cmd = python("store_pynetdicom.py");
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--called-ae",
            "STRATA",
            "--ts",
            ts,
        ])
        .args(files);
        let out = run_ok(&mut cmd);
        let used: HashSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["transfer_syntax"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        used
    };
    let ct_a: Vec<String> = ct[..2].iter().map(|p| p.display().to_string()).collect();
    let ct_b: Vec<String> = ct[2..].iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        send("explicit", &ct_a),
        HashSet::from([EXPLICIT_VR_LE.to_string()])
    );
    assert_eq!(
        send("implicit", &ct_b),
        HashSet::from([IMPLICIT_VR_LE.to_string()])
    );
    assert_eq!(
        send("as-is", &jpeg),
        HashSet::from(["1.2.840.10008.1.2.4.50".to_string()])
    );
    assert_eq!(
        send("as-is", &rle),
        HashSet::from(["1.2.840.10008.1.2.5".to_string()])
    );

    // stored in the syntax they were sent in
    let expect_ts = [
        (&ct_a, EXPLICIT_VR_LE),
        (&ct_b, IMPLICIT_VR_LE),
        (&jpeg, "1.2.840.10008.1.2.4.50"),
        (&rle, "1.2.840.10008.1.2.5"),
    ];
    for (files, ts) in expect_ts {
        for f in files.iter() {
            let sop = meta_of(Path::new(f)).sop_instance_uid;
            let o = run_ok(&mut archive.strata(&["show", &sop, "--json"]));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["kind"], "instance");
            assert_eq!(v["transfer_syntax_uid"], ts, "{f}");
        }
    }
    let sent: Vec<PathBuf> = ct
        .iter()
        .cloned()
        .chain(jpeg.iter().chain(rle.iter()).map(PathBuf::from))
        .collect();
    assert_eq!(
        archive.total_instances() as usize,
        distinct_sops(&sent).len()
    );
    let out = archive.dir.path().join("export");
    run_ok(&mut archive.strata(&["export", "--all", "--out", out.to_str().unwrap()]));
    let mut cmd = python("compare_datasets.py");
    cmd.arg("--exported")
        .arg(&out)
        .args(ct.iter())
        .args(jpeg.iter())
        .args(rle.iter());
    run_ok(&mut cmd);
    server.stop();
}

#[test]
fn eight_concurrent_associations_store_correctly() {
    let archive = Archive::new("store-concurrent");
    let server = archive.start();
    let ct = dcm_files(ct_study());
    let chunks: Vec<Vec<PathBuf>> = ct
        .chunks(ct.len().div_ceil(8))
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(chunks.len(), 8);
    let children: Vec<_> = chunks
        .iter()
        .map(|chunk| {
            storescu(server.dicom_port)
                .args(chunk)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "storescu: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(archive.total_instances() as usize, ct.len());
    // re-sending identical bytes is a no-op success: still stored once
    storescu_send(server.dicom_port, &ct[..10]);
    let studies = archive.ls_json();
    assert_eq!(studies[0]["instances"].as_u64().unwrap() as usize, ct.len());
    assert_eq!(
        studies[0]["objects"].as_u64().unwrap() as usize,
        ct.len(),
        "identical re-sends add no object"
    );
    let metrics = server.metrics();
    assert!(
        metrics.contains("strata_duplicate_stores_total 10"),
        "{metrics}"
    );
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    server.stop();
}

/// Same SOP Instance UID, different bytes: a new version by default (both kept, the
/// newest served); refused with 0x0111 under `on_conflicting_version = "reject"`.
#[test]
fn conflicting_versions_are_kept_or_refused_by_policy() {
    use crate::common::raw;
    let ct = dcm_files(ct_study());
    let bytes = std::fs::read(&ct[0]).unwrap();
    let meta = read_foreign_meta(&bytes).unwrap();
    let original = bytes[meta.dataset_offset..].to_vec();
    let mut changed = original.clone();
    let n = changed.len();
    changed[n - 10] ^= 0xFF; // one pixel differs
    let sop = meta.sop_instance_uid.clone();

    for (policy, second_status, versions) in [("keep", 0u16, 2usize), ("reject", 0x0111, 1)] {
        let archive = Archive::new(&format!("versions-{policy}"));
        let text = std::fs::read_to_string(&archive.config).unwrap().replace(
            "min_free_space_mb = 0",
            &format!("min_free_space_mb = 0\non_conflicting_version = \"{policy}\""),
        );
        std::fs::write(&archive.config, text).unwrap();
        let server = archive.start();
        let mut a = raw::associate(
            server.dicom_port,
            "STRATA",
            CT_IMAGE_STORAGE,
            EXPLICIT_VR_LE,
        )
        .unwrap();
        assert_eq!(
            raw::store(&mut a, CT_IMAGE_STORAGE, &sop, &original).unwrap(),
            0
        );
        assert_eq!(
            raw::store(&mut a, CT_IMAGE_STORAGE, &sop, &changed).unwrap(),
            second_status,
            "{policy}"
        );
        // identical bytes again: always a no-op success
        assert_eq!(
            raw::store(&mut a, CT_IMAGE_STORAGE, &sop, &original).unwrap(),
            0
        );
        // the same data set in other bytes (Data Set Trailing Padding, PS3.5 §7.8.1,
        // appended): no conflict under either policy, and no new version
        let mut padded = original.clone();
        padded.extend_from_slice(&[0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0, 4, 0, 0, 0]);
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(
            raw::store(&mut a, CT_IMAGE_STORAGE, &sop, &padded).unwrap(),
            0,
            "{policy}"
        );
        let _ = a.release();
        let shown: serde_json::Value =
            serde_json::from_slice(&run_ok(&mut archive.strata(&["show", &sop, "--json"])).stdout)
                .unwrap();
        assert_eq!(
            shown["versions"].as_array().unwrap().len(),
            versions,
            "{policy}: {shown}"
        );
        assert_eq!(
            archive.total_instances(),
            1,
            "versions do not count as instances"
        );
        // export serves the newest version
        let out = archive.dir.path().join("export");
        run_ok(&mut archive.strata(&["export", "--all", "--out", out.to_str().unwrap()]));
        let exported = std::fs::read(find_study_dir(&out, &sop)).unwrap();
        let em = read_foreign_meta(&exported).unwrap();
        let want = if policy == "keep" {
            &changed
        } else {
            &original
        };
        assert!(
            exported[em.dataset_offset..] == want[..],
            "{policy}: export serves the wrong version"
        );
        let (clean, report) = archive.verify_json();
        assert!(clean, "{report}");
        server.stop();
    }
}

/// An explicit VR LE element with a short (2-byte) length.
fn short_element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == b"UI" { 0 } else { b' ' });
    }
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend_from_slice(&v);
}

/// A minimal dataset with encapsulated pixel data (empty offset table, one fragment).
fn encapsulated_dataset(sop_class: &str, sop: &str, study: &str, series: &str) -> Vec<u8> {
    let mut d = Vec::new();
    short_element(&mut d, 0x0008, 0x0016, b"UI", sop_class.as_bytes());
    short_element(&mut d, 0x0008, 0x0018, b"UI", sop.as_bytes());
    short_element(&mut d, 0x0008, 0x0060, b"CS", b"ES");
    short_element(&mut d, 0x0010, 0x0020, b"LO", b"VIDEO1");
    short_element(&mut d, 0x0020, 0x000D, b"UI", study.as_bytes());
    short_element(&mut d, 0x0020, 0x000E, b"UI", series.as_bytes());
    d.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    d.extend_from_slice(&[
        0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0, 0, 0, 1, 0xB3, 1, 2, 3, 4,
    ]);
    d.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    d
}

/// Every encapsulated family — JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG-2, H.264, HEVC — is
/// negotiated and stored verbatim in the syntax it came in.
#[test]
fn encapsulated_and_video_transfer_syntaxes_are_stored_verbatim() {
    use crate::common::raw;
    let archive = Archive::new("store-video");
    let server = archive.start();
    const VIDEO_ENDOSCOPIC: &str = "1.2.840.10008.5.1.4.1.1.77.1.1.1";
    let syntaxes = [
        "1.2.840.10008.1.2.4.80",  // JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  // JPEG 2000 lossless
        "1.2.840.10008.1.2.4.201", // HTJ2K lossless
        "1.2.840.10008.1.2.5",     // RLE lossless
        "1.2.840.10008.1.2.4.100", // MPEG-2 MP@ML
        "1.2.840.10008.1.2.4.102", // MPEG-4 AVC/H.264 HP@4.1
        "1.2.840.10008.1.2.4.107", // HEVC/H.265 Main
    ];
    for (i, ts) in syntaxes.iter().enumerate() {
        let sop = format!("1.2.826.0.1.3680043.9.99.{i}");
        let dataset = encapsulated_dataset(
            VIDEO_ENDOSCOPIC,
            &sop,
            "1.2.826.0.1.3680043.9.99",
            "1.2.826.0.1.3680043.9.99.100",
        );
        let mut a = raw::associate(server.dicom_port, "STRATA", VIDEO_ENDOSCOPIC, ts)
            .unwrap_or_else(|e| panic!("{ts} not negotiated: {e}"));
        assert_eq!(
            a.presentation_contexts()[0]
                .transfer_syntax
                .trim_end_matches('\0'),
            *ts
        );
        assert_eq!(
            raw::store(&mut a, VIDEO_ENDOSCOPIC, &sop, &dataset).unwrap(),
            0,
            "{ts}"
        );
        let _ = a.release();
        let shown: serde_json::Value =
            serde_json::from_slice(&run_ok(&mut archive.strata(&["show", &sop, "--json"])).stdout)
                .unwrap();
        assert_eq!(shown["transfer_syntax_uid"], *ts);
        // the stored object holds exactly the bytes sent, after our meta group
        let path = shown["versions"][0]["location"].as_str().unwrap();
        let stored = std::fs::read(path).unwrap();
        let m = read_foreign_meta(&stored).unwrap();
        assert_eq!(m.transfer_syntax_uid, *ts);
        assert!(
            stored[m.dataset_offset..] == dataset[..],
            "{ts}: not verbatim"
        );
    }
    assert_eq!(archive.total_instances() as usize, syntaxes.len());
    server.stop();
}

/// Issue 12, one acceptance rule for every ingest path: pydicom's rtplan.dcm and
/// rtdose.dcm carry file meta UIDs that differ from their data sets' own (PS3.10 7.1
/// requires them equal). C-STORE stores the data set under its own UIDs; `import` used
/// to refuse these files ("dataset does not match"). Both paths now accept them, under
/// the data sets' own UIDs. pydicom's rtstruct.dcm is a bare data set (no preamble, no
/// file meta: implicit VR LE), which `storescu` reads and sends; `import` takes it too,
/// inferring its transfer syntax from its first element (PS3.5 §7.1).
#[test]
fn import_and_c_store_take_files_with_inconsistent_meta_alike() {
    let archive = Archive::new("store-rt-meta");
    let samples = pydicom_samples()
        .0
        .first()
        .and_then(|p| p.parent())
        .expect("pydicom's test files")
        .to_path_buf();
    let files = [samples.join("rtplan.dcm"), samples.join("rtdose.dcm")];
    let out = run_ok(archive.strata(&["import", "--json"]).args(&files));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stored"], 2, "{report}");
    // stored under the data sets' own SOP Instance UIDs, not the file meta's
    for sop in [
        "1.2.777.777.77.7.7777.7777.20030903150023",
        "1.9.999.999.99.9.9999.9999.20030818153516",
    ] {
        let shown = run_ok(&mut archive.strata(&["show", sop, "--json"]));
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(shown["kind"], "instance", "{shown}");
    }
    let bare = samples.join("rtstruct.dcm");
    let out = run_ok(archive.strata(&["import", "--json"]).arg(&bare));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stored"], 1, "{report}");
    let rtstruct = "1.2.826.0.1.3680043.8.498.2010020400001";
    let server = archive.start();
    storescu_send(server.dicom_port, &files);
    run_ok(
        dcmtk("storescu")
            .args(["-nh", "-aec", "STRATA", "127.0.0.1"])
            .arg(server.dicom_port.to_string())
            .arg(&bare),
    );
    server.stop();
    // the same SOP Instances: no new instance; and although DCMTK re-encodes the data
    // sets (other bytes, another object id), they are the same data sets: no new version
    assert_eq!(archive.total_instances(), 3);
    for sop in [
        "1.2.777.777.77.7.7777.7777.20030903150023",
        "1.9.999.999.99.9.9999.9999.20030818153516",
        rtstruct,
    ] {
        let shown = run_ok(&mut archive.strata(&["show", sop, "--json"]));
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(shown["versions"].as_array().unwrap().len(), 1, "{shown}");
    }
}

/// Issue 12: the same instance arriving again through another path — re-encoded by
/// DCMTK's `dcmconv` in another transfer syntax (implicit VR LE, explicit VR big endian,
/// deflated), with group lengths added, with trailing padding (PS3.5 §7.8.1 Data Set
/// Trailing Padding) — holds the same data set: it makes no new version, and the served
/// version stays. A data set that differs in one value (`dcmodify`) is a new version,
/// which `import` and `show` say.
#[test]
fn the_same_instance_re_encoded_is_no_new_version_a_changed_one_is() {
    let archive = Archive::new("store-same-dataset");
    let original = dcm_files(ct_study())[0].clone();
    let sop = meta_of(&original).sop_instance_uid;
    let server = archive.start();
    storescu_send(server.dicom_port, std::slice::from_ref(&original));
    server.stop();
    let served = || -> serde_json::Value {
        let shown = run_ok(&mut archive.strata(&["show", &sop, "--json"]));
        serde_json::from_slice(&shown.stdout).unwrap()
    };
    let first = served()["versions"][0]["id"].clone();

    let dir = archive.dir.path().join("re-encoded");
    std::fs::create_dir_all(&dir).unwrap();
    let mut variants = Vec::new();
    for (name, args) in [
        ("implicit", &["+ti"][..]),
        ("big-endian", &["+tb"][..]),
        ("deflated", &["+td"][..]),
        ("group-lengths", &["+te", "+g"][..]),
        ("padded", &["+te", "+p", "8", "4"][..]),
    ] {
        let out = dir.join(format!("{name}.dcm"));
        run_ok(dcmtk("dcmconv").args(args).arg(&original).arg(&out));
        variants.push(out);
    }
    for v in &variants {
        assert_ne!(
            std::fs::read(v).unwrap(),
            std::fs::read(&original).unwrap(),
            "{} is another encoding",
            v.display()
        );
    }
    let out = run_ok(archive.strata(&["import", "--json"]).args(&variants));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["same_data_set"].as_array().unwrap().len(),
        variants.len(),
        "{report}"
    );
    assert!(
        report["new_versions"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let shown = served();
    assert_eq!(shown["versions"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["versions"][0]["id"], first);
    // and through C-STORE too: DCMTK sends the implicit VR file as it is
    let server = archive.start();
    storescu_send(server.dicom_port, &variants[..1]);
    server.stop();
    assert_eq!(served()["versions"].as_array().unwrap().len(), 1);
    let audit = run_ok(&mut archive.strata(&["audit", "log", "--json"]));
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains("the same data set as"),
        "the audit log says why nothing was kept"
    );

    // one value differs: a new version, said by import and show, and served
    let changed = dir.join("changed.dcm");
    std::fs::copy(&original, &changed).unwrap();
    run_ok(
        dcmtk("dcmodify")
            .args(["-nb", "-m", "(0008,103E)=CHANGED"])
            .arg(&changed),
    );
    let out = run_ok(archive.strata(&["import"]).arg(&changed));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 new versions") && text.contains(&format!("new version of {sop}")),
        "{text}"
    );
    let shown = served();
    let versions = shown["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{shown}");
    assert_eq!(versions[0]["id"], first, "the first version is kept");
    assert!(versions[1]["dataset"].is_string(), "{shown}");
    let human = run_ok(&mut archive.strata(&["show", &sop]));
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("version 2") && human.contains("served"),
        "{human}"
    );
    // what is queried is what is served: the series now answers with the new value
    // (issue 11: C-FIND showed the first version while C-GET sent the second)
    let study = strata::dicom::header::read_header_blocking(&original)
        .unwrap()
        .study_uid;
    let shown = run_ok(&mut archive.strata(&["show", &study, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown["series"][0]["series_description"], "CHANGED",
        "{shown}"
    );
    // the changed data set sent again in another encoding: still two versions
    let changed_implicit = dir.join("changed-implicit.dcm");
    run_ok(
        dcmtk("dcmconv")
            .arg("+ti")
            .arg(&changed)
            .arg(&changed_implicit),
    );
    let out = run_ok(archive.strata(&["import", "--json"]).arg(&changed_implicit));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["same_data_set"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(served()["versions"].as_array().unwrap().len(), 2);
    // private elements (GE's, in pydicom's CT_small.dcm) are read in implicit VR without
    // their VR: their text still hashes as text (second trial: a `dcmconv +ti` copy of
    // it was taken for a new version)
    let ge = pydicom_samples()
        .0
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "CT_small.dcm"))
        .unwrap()
        .clone();
    run_ok(archive.strata(&["import"]).arg(&ge));
    let ge_implicit = dir.join("ct-small-implicit.dcm");
    run_ok(dcmtk("dcmconv").arg("+ti").arg(&ge).arg(&ge_implicit));
    let out = run_ok(archive.strata(&["import", "--json"]).arg(&ge_implicit));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["same_data_set"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
}

/// Retired storage SOP classes (PS3.6 Table A-1, "Retired") are still sent by old
/// modalities — an ultrasound cart sending Ultrasound Image Storage (Retired),
/// 1.2.840.10008.5.1.4.1.1.6. With private classes refused (so nothing is accepted just
/// for being unknown), the association accepts the class and the C-STORE gets 0x0000
/// (pynetdicom), and the object lists as stored.
#[test]
fn retired_storage_sop_classes_are_stored() {
    let archive = Archive::with_config("retired-class", "accept_private_sop_classes = false\n");
    let file = archive.dir.path().join("us-retired.dcm");
    std::fs::copy(&dcm_files(ct_study())[0], &file).unwrap();
    run_ok(
        dcmtk("dcmodify")
            .args([
                "-nb",
                "-m",
                "(0008,0016)=1.2.840.10008.5.1.4.1.1.6",
                "-i",
                "(0008,0060)=US",
            ])
            .arg(&file),
    );
    let server = archive.start();
    let out = run_ok(python("store_pynetdicom.py").args([
        "--host",
        "127.0.0.1",
        "--port",
        &server.dicom_port.to_string(),
        "--called-ae",
        "STRATA",
        "--ts",
        "as-is",
        &file.display().to_string(),
    ]));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["status"], 0, "{line}");
    server.stop();
    let studies = archive.ls_json();
    assert_eq!(studies[0]["modalities"][0], "US", "{studies}");
    assert_eq!(archive.total_instances(), 1);
}
