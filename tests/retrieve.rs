//! C-MOVE SCP against DCMTK movescu, with DCMTK storescp as the destination: a whole
//! study, a single image, an unknown destination (0xA801) and a destination that is
//! down (failure, the server keeps serving).

use crate::common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use strata::dicom::header::read_header_blocking;

pub(crate) struct Storescp(Child);

impl Storescp {
    pub(crate) fn start(port: u16, dir: &Path) -> Storescp {
        Self::start_with(port, dir, "+xa")
    }

    /// `syntaxes` is storescp's transfer syntax option (`+xa` all, `+xi` implicit only).
    fn start_with(port: u16, dir: &Path, syntaxes: &str) -> Storescp {
        std::fs::create_dir_all(dir).unwrap();
        let child = dcmtk("storescp")
            .args(["-aet", "DEST", syntaxes, "-od"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        Storescp(child)
    }
}

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn movescu(port: u16, destination: &str, keys: &[&str]) -> String {
    movescu_model(port, destination, "-S", keys)
}

/// [`movescu`] in the information model `model` (`-S` study root, `-P` patient root).
pub(crate) fn movescu_model(port: u16, destination: &str, model: &str, keys: &[&str]) -> String {
    let mut cmd = dcmtk("movescu");
    cmd.args(["-v", model, "-aec", "STRATA", "-aem", destination]);
    for k in keys {
        cmd.arg("-k").arg(k);
    }
    cmd.arg("127.0.0.1").arg(port.to_string());
    let out = run(&mut cmd);
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn received_sops(dir: &Path) -> BTreeSet<String> {
    walk(dir)
        .iter()
        .map(|p| read_header_blocking(p).unwrap().sop_instance_uid)
        .collect()
}

#[test]
fn movescu_moves_studies_and_images_to_a_configured_destination() {
    let dest_port = free_port();
    let down_port = free_port();
    let archive = Archive::with_config(
        "retrieve",
        &format!(
            "\n[[dicom.peers]]\nae_title = \"DEST\"\nhost = \"127.0.0.1\"\nport = {dest_port}\n\n[[dicom.peers]]\nae_title = \"DOWN\"\nhost = \"127.0.0.1\"\nport = {down_port}\n"
        ),
    );
    let ct: Vec<PathBuf> = dcm_files(ct_study());
    run(archive.strata(&["import"]).args(&ct));
    let server = archive.start();
    let attrs = read_header_blocking(&ct[0]).unwrap();
    let recv = archive.dir.path().join("received");
    let scp = Storescp::start(dest_port, &recv);

    let last_access = || -> u64 {
        let studies = archive.ls_json();
        studies.as_array().unwrap()[0]["last_access_ms"]
            .as_u64()
            .expect("stores record an access")
    };
    let stored_at = last_access();
    std::thread::sleep(std::time::Duration::from_millis(20));

    // a whole study
    let text = movescu(
        server.dicom_port,
        "DEST",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={}", attrs.study_uid),
        ],
    );
    assert!(text.contains("Final Move Response (Success)"), "{text}");
    let sent: BTreeSet<String> = ct
        .iter()
        .map(|p| read_header_blocking(p).unwrap().sop_instance_uid)
        .collect();
    assert_eq!(received_sops(&recv), sent);
    assert!(
        text.contains("Pending"),
        "pending responses with counters: {text}"
    );
    assert!(
        last_access() > stored_at,
        "a retrieval updates the study's last access"
    );

    // one image
    std::fs::remove_dir_all(&recv).unwrap();
    std::fs::create_dir_all(&recv).unwrap();
    let text = move_image(server.dicom_port, &attrs);
    assert!(text.contains("Final Move Response (Success)"), "{text}");
    assert_eq!(
        received_sops(&recv),
        BTreeSet::from([attrs.sop_instance_uid.clone()])
    );
    drop(scp);

    // a destination nobody configured
    let text = movescu(
        server.dicom_port,
        "NOWHERE",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={}", attrs.study_uid),
        ],
    );
    assert!(text.contains("MoveDestinationUnknown"), "{text}");

    // a configured destination that is down: every sub-operation fails, clearly
    let text = movescu(
        server.dicom_port,
        "DOWN",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={}", attrs.study_uid),
        ],
    );
    assert!(
        text.contains("Final Move Response") && !text.contains("Final Move Response (Success)"),
        "{text}"
    );
    assert!(server.log_text().contains("C-MOVE destination unreachable"));
    assert!(server.echo_ok());
    server.stop();
}

fn curl(args: &[&str]) -> String {
    let out = run_ok(std::process::Command::new("curl").arg("-sf").args(args));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Orthanc, configured with Strata as a modality, finds a study in Strata through its
/// REST API (`/modalities/{name}/query`, i.e. C-FIND to Strata) and pulls it into itself
/// (C-MOVE to Strata with Orthanc as the destination).
#[test]
fn orthanc_finds_and_pulls_a_study_from_strata() {
    let orthanc_dicom = free_port();
    let orthanc_http = free_port();
    let archive = Archive::with_config(
        "retrieve-orthanc",
        &format!("\n[[dicom.peers]]\nae_title = \"ORTHANC\"\nhost = \"127.0.0.1\"\nport = {orthanc_dicom}\n"),
    );
    let ct: Vec<PathBuf> = dcm_files(ct_study());
    run(archive.strata(&["import"]).args(&ct));
    let server = archive.start();
    let attrs = read_header_blocking(&ct[0]).unwrap();

    let orthanc_dir = archive.dir.path().join("orthanc");
    run_ok(
        std::process::Command::new(repo_root().join("scripts/start-orthanc.sh"))
            .arg(&orthanc_dir)
            .arg(orthanc_dicom.to_string())
            .arg(orthanc_http.to_string())
            .arg("ORTHANC"),
    );
    let pid: i32 = std::fs::read_to_string(orthanc_dir.join("orthanc.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0, libc::SIGTERM) };
        }
    }
    let _orthanc = Kill(pid);
    let api = format!("http://127.0.0.1:{orthanc_http}");
    curl(&[
        "-X",
        "PUT",
        &format!("{api}/modalities/STRATA"),
        "-d",
        &format!(
            "{{\"AET\":\"STRATA\",\"Host\":\"127.0.0.1\",\"Port\":{}}}",
            server.dicom_port
        ),
    ]);

    // C-FIND from Orthanc into Strata
    let query = curl(&[
        "-X",
        "POST",
        &format!("{api}/modalities/STRATA/query"),
        "-d",
        &format!(
            "{{\"Level\":\"Study\",\"Query\":{{\"PatientID\":\"{}\",\"StudyInstanceUID\":\"\"}}}}",
            attrs.patient_id
        ),
    ]);
    let query: serde_json::Value = serde_json::from_str(&query).unwrap();
    let id = query["ID"].as_str().unwrap().to_string();
    let answers: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("{api}/queries/{id}/answers?expand")])).unwrap();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0].to_string().contains(&attrs.study_uid),
        "{answers:?}"
    );

    // C-MOVE: Orthanc asks Strata to send the study to Orthanc itself
    curl(&[
        "-X",
        "POST",
        &format!("{api}/queries/{id}/retrieve"),
        "-d",
        "{\"TargetAet\":\"ORTHANC\",\"Synchronous\":true}",
    ]);
    let stats: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("{api}/statistics")])).unwrap();
    assert_eq!(
        stats["CountInstances"].as_u64(),
        Some(ct.len() as u64),
        "{stats}"
    );
    assert_eq!(stats["CountStudies"].as_u64(), Some(1));
    server.stop();
}

/// C-GET with DCMTK getscu: the study comes back over getscu's own association
/// (SCP role negotiated for the storage classes), every instance once.
#[test]
fn getscu_gets_a_study_over_its_own_association() {
    let archive = Archive::new("retrieve-get");
    let ct: Vec<PathBuf> = dcm_files(ct_study());
    run(archive.strata(&["import"]).args(&ct));
    let server = archive.start();
    let attrs = read_header_blocking(&ct[0]).unwrap();
    let out_dir = archive.dir.path().join("got");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = get_study(server.dicom_port, &attrs.study_uid, &out_dir);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Number of Failed Suboperations    : 0"),
        "{text}"
    );
    let sent: BTreeSet<String> = ct
        .iter()
        .map(|p| read_header_blocking(p).unwrap().sop_instance_uid)
        .collect();
    assert_eq!(received_sops(&out_dir), sent);
    // an IMAGE-level get of one instance, and a get of an unknown study (nothing, success)
    let one = archive.dir.path().join("one");
    std::fs::create_dir_all(&one).unwrap();
    run(dcmtk("getscu")
        .args(["-S", "-aec", "STRATA", "-od"])
        .arg(&one)
        .args([
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            &format!("StudyInstanceUID={}", attrs.study_uid),
            "-k",
            &format!("SeriesInstanceUID={}", attrs.series_uid),
            "-k",
            &format!("SOPInstanceUID={}", attrs.sop_instance_uid),
        ])
        .arg("127.0.0.1")
        .arg(server.dicom_port.to_string()));
    assert_eq!(
        received_sops(&one),
        BTreeSet::from([attrs.sop_instance_uid.clone()])
    );
    assert!(server.echo_ok());
    server.stop();
}

/// Issue 12 (trial): a C-GET whose instances fit none of the requester's storage
/// contexts (an MR study, CT Image Storage offered) fails with 0xA702 (PS3.4 C.4.3.1.4)
/// and an Error Comment (0000,0902) saying why, not a bare status.
#[test]
fn a_c_get_nothing_can_be_sent_for_says_why() {
    let archive = Archive::new("retrieve-get-why");
    let mr = pydicom_samples()
        .0
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "MR_small.dcm"))
        .expect("pydicom's MR_small.dcm")
        .clone();
    run_ok(archive.strata(&["import"]).arg(&mr));
    let study = read_header_blocking(&mr).unwrap().study_uid;
    let server = archive.start();
    let out = run_ok(python("get_status.py").args([
        "--port",
        &server.dicom_port.to_string(),
        "--study",
        &study,
    ]));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], 0xA702, "{answer}");
    assert_eq!(
        (answer["failed"].as_u64(), answer["received"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(
        answer["error_comment"]
            .as_str()
            .unwrap()
            .starts_with("no accepted presentation context"),
        "{answer}"
    );
    assert!(server.echo_ok());
    server.stop();
}

/// A peer announcing maximum PDU length 0 ("no limit", PS3.8 D.1) gets every instance of
/// a C-GET, in PDVs of at most 256 KiB (one such chunk in memory), decoded by pynetdicom.
#[test]
fn a_c_get_for_a_peer_without_a_pdu_limit_completes() {
    let archive = Archive::new("get-unlimited-pdu");
    let files = dcm_files(ct_study());
    run_ok(archive.strata(&["import"]).args(&files));
    let study = read_header_blocking(&files[0]).unwrap().study_uid;
    let server = archive.start();
    let out = run_ok(python("get_status.py").args([
        "--port",
        &server.dicom_port.to_string(),
        "--study",
        &study,
        "--max-pdu",
        "0",
    ]));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], 0, "{answer}");
    assert_eq!(
        answer["completed"].as_u64(),
        Some(files.len() as u64),
        "{answer}"
    );
    assert_eq!(
        answer["received"].as_u64(),
        Some(files.len() as u64),
        "{answer}"
    );
    server.stop();
}

/// Storage commitment with pynetdicom as SCU: stored instances are committed, an unknown
/// UID fails with 0x0112, and an instance whose object was corrupted on disk fails with
/// 0x0110 — the bytes are re-hashed, not just looked up.
#[test]
fn storage_commitment_rehashes_before_committing() {
    let archive = Archive::new("commit");
    let ct: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(4).collect();
    run(archive.strata(&["import"]).args(&ct));
    let server = archive.start();
    let sops: Vec<String> = ct
        .iter()
        .map(|p| read_header_blocking(p).unwrap().sop_instance_uid)
        .collect();

    // corrupt the object of the last instance
    let shown: serde_json::Value =
        serde_json::from_slice(&run_ok(&mut archive.strata(&["show", &sops[3], "--json"])).stdout)
            .unwrap();
    let path = shown["versions"][0]["location"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 7] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let mut cmd = python("commit_scu.py");
    cmd.args(["--port", &server.dicom_port.to_string()]);
    for sop in &sops {
        cmd.arg(format!("{CT_IMAGE_STORAGE}:{sop}"));
    }
    cmd.arg(format!("{CT_IMAGE_STORAGE}:1.2.826.0.1.3680043.9.404.1"));
    let out = run_ok(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["action_status"], 0, "{v}");
    assert_eq!(
        v["scp_role"], true,
        "the SCP role the requester asked for is granted (role selection, PS3.7 D.3.3.4)"
    );
    assert_eq!(v["event_type"], 2, "failures present: {v}");
    let committed: BTreeSet<String> = v["committed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(committed, sops[..3].iter().cloned().collect());
    let failed: Vec<(String, u64)> = v["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f[0].as_str().unwrap().to_string(), f[1].as_u64().unwrap()))
        .collect();
    assert!(failed.contains(&(sops[3].clone(), 0x0110)), "{v}");
    assert!(
        failed.contains(&("1.2.826.0.1.3680043.9.404.1".to_string(), 0x0112)),
        "{v}"
    );
    assert!(server.echo_ok());
    server.stop();
}

/// A C-CANCEL in the middle of a C-MOVE: final status 0xFE00 with the counters so far,
/// fewer instances delivered than the study holds, and the server keeps serving.
#[test]
fn c_cancel_stops_a_move_midway() {
    let dest_port = free_port();
    let archive = Archive::with_config(
        "retrieve-cancel",
        &format!("move_associations = 1\n\n[[dicom.peers]]\nae_title = \"DEST\"\nhost = \"127.0.0.1\"\nport = {dest_port}\n"),
    );
    let ct: Vec<PathBuf> = dcm_files(ct_study());
    run(archive.strata(&["import"]).args(&ct));
    let server = archive.start();
    let attrs = read_header_blocking(&ct[0]).unwrap();
    let recv = archive.dir.path().join("received");
    let _scp = Storescp::start(dest_port, &recv);
    let out = run_ok(python("move_cancel.py").args([
        "--port",
        &server.dicom_port.to_string(),
        "--study",
        &attrs.study_uid,
        "--dest",
        "DEST",
        "--after",
        "3",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["final_status"].as_u64(), Some(0xFE00), "{v}");
    let delivered = walk(&recv).len(); // files, not parsed: one may still be being written
    assert!(
        delivered >= 3 && delivered < ct.len(),
        "cancelled midway: {delivered} delivered, {v}"
    );
    assert!(server.echo_ok());
    server.stop();
}

/// A destination that accepts only Implicit VR Little Endian still gets a study stored
/// in Explicit VR Little Endian: native syntaxes are converted among themselves.
#[test]
fn move_converts_native_syntaxes_for_a_destination_that_needs_it() {
    let (archive, dest_port) = archive_with_dest("retrieve-convert");
    let ct: Vec<PathBuf> = dcm_files(ct_study()).into_iter().take(20).collect();
    run(archive.strata(&["import"]).args(&ct));
    let server = archive.start();
    let attrs = read_header_blocking(&ct[0]).unwrap();
    let recv = archive.dir.path().join("received");
    let scp = Storescp::start_with(dest_port, &recv, "+xi");
    let text = movescu(
        server.dicom_port,
        "DEST",
        &[
            "QueryRetrieveLevel=STUDY",
            &format!("StudyInstanceUID={}", attrs.study_uid),
        ],
    );
    assert!(text.contains("Final Move Response (Success)"), "{text}");
    drop(scp);
    let files = walk(&recv);
    assert_eq!(files.len(), ct.len());
    for f in &files {
        let meta = strata::dicom::part10::read_foreign_meta(&std::fs::read(f).unwrap()).unwrap();
        assert_eq!(meta.transfer_syntax_uid, IMPLICIT_VR_LE, "{}", f.display());
    }
    let sent: BTreeSet<String> = ct
        .iter()
        .map(|p| read_header_blocking(p).unwrap().sop_instance_uid)
        .collect();
    assert_eq!(received_sops(&recv), sent);
    server.stop();
}

/// An archive that knows one C-MOVE destination, `DEST` on loopback, and its port.
fn archive_with_dest(name: &str) -> (Archive, u16) {
    let dest_port = free_port();
    let archive = Archive::with_config(
        name,
        &format!(
            "\n[[dicom.peers]]\nae_title = \"DEST\"\nhost = \"127.0.0.1\"\nport = {dest_port}\n"
        ),
    );
    (archive, dest_port)
}

/// getscu of a study (STUDY level, getscu's default proposals) into `dir`.
pub(crate) fn get_study(port: u16, study_uid: &str, dir: &Path) -> std::process::Output {
    run(dcmtk("getscu")
        .args(["-v", "-S", "-aec", "STRATA", "-od"])
        .arg(dir)
        .args([
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={study_uid}"),
        ])
        .arg("127.0.0.1")
        .arg(port.to_string()))
}

/// movescu of one instance (IMAGE level) to DEST; its output.
fn move_image(port: u16, attrs: &strata::dicom::header::InstanceAttrs) -> String {
    movescu(
        port,
        "DEST",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={}", attrs.study_uid),
            &format!("SeriesInstanceUID={}", attrs.series_uid),
            &format!("SOPInstanceUID={}", attrs.sop_instance_uid),
        ],
    )
}

/// The pixel data of a Part-10 file as bytes (dicom-object), and its transfer syntax.
fn pixels_of(path: &Path) -> (String, Vec<u8>) {
    let obj = dicom_object::open_file(path).unwrap();
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let pixels = obj
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    (ts, pixels)
}

/// Issue 12 item 5: a destination that accepts only uncompressed syntaxes (storescp's
/// default, getscu's default) gets RLE, JPEG-LS, JPEG 2000 and JPEG objects decompressed
/// by the registry's codecs (dicom-rs), instead of a failed sub-operation. The lossless
/// ones come out bit-identical to the uncompressed original (pydicom's MR_small.dcm and
/// its lossless encodings of the same image); the lossy JPEG comes out native, RGB, with
/// every pixel.
#[test]
fn compressed_objects_are_decompressed_for_a_destination_that_takes_only_native() {
    let (archive, dest_port) = archive_with_dest("retrieve-decompress");
    let sample = |name: &str| -> PathBuf {
        pydicom_samples()
            .0
            .iter()
            .chain(pydicom_samples().1.iter())
            .find(|p| p.file_name().is_some_and(|n| n == name))
            .unwrap_or_else(|| panic!("pydicom's {name}"))
            .clone()
    };
    let (_, original) = pixels_of(&sample("MR_small.dcm"));
    let server = archive.start();
    let native = [EXPLICIT_VR_LE, IMPLICIT_VR_LE];
    for (n, name) in [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
    ]
    .iter()
    .enumerate()
    {
        let file = sample(name);
        // each becomes the served version of its instance (the MR ones share one UID)
        crate::store::storescu_send(server.dicom_port, std::slice::from_ref(&file));
        let attrs = read_header_blocking(&file).unwrap();
        let recv = archive.dir.path().join(format!("received-{n}"));
        let scp = Storescp::start_with(dest_port, &recv, "+xe");
        let text = move_image(server.dicom_port, &attrs);
        drop(scp);
        assert!(
            text.contains("Final Move Response (Success)"),
            "{name}: {text}"
        );
        let files = walk(&recv);
        assert_eq!(files.len(), 1, "{name}");
        let (ts, pixels) = pixels_of(&files[0]);
        assert!(native.contains(&ts.as_str()), "{name} arrived in {ts}");
        if name.starts_with("MR_small") {
            assert!(
                pixels == original,
                "{name}: decoded pixels differ from the original"
            );
        } else {
            assert_eq!(pixels.len(), 100 * 100 * 3, "{name}");
            let obj = dicom_object::open_file(&files[0]).unwrap();
            let photometric = obj
                .element(dicom_dictionary_std::tags::PHOTOMETRIC_INTERPRETATION)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(photometric, "RGB", "{name}");
        }
    }
    // C-GET with getscu's default proposals (uncompressed only): the JPEG 2000 version is
    // served now, and comes back decompressed
    let attrs = read_header_blocking(&sample("MR_small.dcm")).unwrap();
    let got = archive.dir.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    let out = get_study(server.dicom_port, &attrs.study_uid, &got);
    let files = walk(&got);
    assert_eq!(files.len(), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let (ts, pixels) = pixels_of(&files[0]);
    assert!(native.contains(&ts.as_str()), "C-GET answered in {ts}");
    assert!(pixels == original);
    server.stop();
}

/// Trial finding: a study corrected under a new Study Instance UID (the same series and
/// SOP Instance UIDs) leaves two studies holding the same instances. A SERIES- or
/// IMAGE-level C-MOVE or C-GET naming the original study must send the original's data
/// set, never the corrected copy's (PS3.4 C.4.2.2.1: the unique keys above the level
/// name the study).
#[test]
fn a_retrieve_names_its_study_even_when_another_holds_the_same_uids() {
    let (archive, dest_port) = archive_with_dest("retrieve-two-copies");
    let original = dcm_files(ct_study())[0].clone();
    let attrs = read_header_blocking(&original).unwrap();
    let corrected = archive.dir.path().join("corrected.dcm");
    std::fs::copy(&original, &corrected).unwrap();
    run_ok(
        dcmtk("dcmodify")
            .args([
                "-nb",
                "-m",
                "(0020,000D)=2.25.777000777",
                "-m",
                "(0010,0010)=CORRECTED^COPY",
            ])
            .arg(&corrected),
    );
    run_ok(archive.strata(&["import"]).arg(&original));
    run_ok(archive.strata(&["import"]).arg(&corrected));
    let server = archive.start();
    let study_of = |dir: &Path| -> Vec<String> {
        walk(dir)
            .iter()
            .map(|f| read_header_blocking(f).unwrap().study_uid)
            .collect()
    };
    for (n, level) in ["SERIES", "IMAGE"].iter().enumerate() {
        let recv = archive.dir.path().join(format!("moved-{n}"));
        let scp = Storescp::start(dest_port, &recv);
        let mut keys = vec![
            format!("QueryRetrieveLevel={level}"),
            format!("StudyInstanceUID={}", attrs.study_uid),
            format!("SeriesInstanceUID={}", attrs.series_uid),
        ];
        if *level == "IMAGE" {
            keys.push(format!("SOPInstanceUID={}", attrs.sop_instance_uid));
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let text = movescu(server.dicom_port, "DEST", &keys);
        drop(scp);
        assert!(text.contains("Final Move Response (Success)"), "{text}");
        assert_eq!(
            study_of(&recv),
            vec![attrs.study_uid.clone()],
            "{level} C-MOVE"
        );
    }
    let got = archive.dir.path().join("got");
    std::fs::create_dir_all(&got).unwrap();
    run(dcmtk("getscu")
        .args(["-S", "-aec", "STRATA", "-od"])
        .arg(&got)
        .args([
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            &format!("StudyInstanceUID={}", attrs.study_uid),
            "-k",
            &format!("SeriesInstanceUID={}", attrs.series_uid),
        ])
        .arg("127.0.0.1")
        .arg(server.dicom_port.to_string()));
    assert_eq!(
        study_of(&got),
        vec![attrs.study_uid.clone()],
        "SERIES C-GET"
    );
    server.stop();
}

/// Issue 11 field cases. A deflated object goes to a receiver that takes only implicit
/// VR LE inflated and re-encoded (every peer supports the default transfer syntax;
/// deflate is lossless). An implicit-VR RT Dose whose DVH Data (DS) value is ~160 KB goes
/// to a receiver that prefers explicit VR LE with that value as UN, whose length field
/// is 32-bit (PS3.5 §6.2.2), instead of failing with 0xA702.
#[test]
fn deflated_and_overlong_values_reach_native_only_receivers() {
    let (archive, dest_port) = archive_with_dest("retrieve-deflate-un");
    let deflated = pydicom_samples()
        .0
        .iter()
        .chain(pydicom_samples().1.iter())
        .find(|p| p.file_name().is_some_and(|n| n == "image_dfl.dcm"))
        .expect("pydicom's image_dfl.dcm")
        .clone();
    let dose = archive.dir.path().join("rtdose-dvh.dcm");
    let made = run_ok(python("make_rtdose_dvh.py").arg(&dose));
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    assert!(made["bytes"].as_u64().unwrap() > 0xFFFF, "{made}");
    run_ok(archive.strata(&["import"]).arg(&deflated).arg(&dose));
    let server = archive.start();
    for (n, (file, syntaxes, want)) in [
        (&deflated, "+xi", IMPLICIT_VR_LE),
        (&dose, "+xe", EXPLICIT_VR_LE),
    ]
    .into_iter()
    .enumerate()
    {
        let attrs = read_header_blocking(file).unwrap();
        let recv = archive.dir.path().join(format!("received-{n}"));
        let scp = Storescp::start_with(dest_port, &recv, syntaxes);
        let text = move_image(server.dicom_port, &attrs);
        drop(scp);
        assert!(
            text.contains("Final Move Response (Success)"),
            "{}: {text}",
            file.display()
        );
        let files = walk(&recv);
        assert_eq!(files.len(), 1, "{}", file.display());
        let meta =
            strata::dicom::part10::read_foreign_meta(&std::fs::read(&files[0]).unwrap()).unwrap();
        assert_eq!(meta.transfer_syntax_uid, want, "{}", file.display());
        // DCMTK reads what arrived, whole
        run_ok(dcmtk("dcmdump").arg("-q").arg(&files[0]));
        if n == 1 {
            let bytes = std::fs::read(&files[0]).unwrap();
            assert!(
                bytes
                    .windows(6)
                    .any(|w| w == [0x04, 0x30, 0x58, 0x00, b'U', b'N']),
                "DVH Data goes as UN"
            );
            let count = run_ok(std::process::Command::new("python3").arg("-c").arg(format!(
                "import pydicom; print(len(pydicom.dcmread({:?}).DVHSequence[0].DVHData))",
                files[0].display().to_string()
            )));
            // pydicom reads the UN value as its bytes: every byte of the DS value arrived
            let sent = made["bytes"].as_u64().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&count.stdout).trim(),
                (sent + sent % 2).to_string()
            );
        }
    }
    server.stop();
}

/// Peak resident memory of a process (VmHWM, KiB → bytes), from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Runs `strata export` of a study into `out`, beside the running server; returns the
/// exported files and the command's peak RSS (measured by its parent, Python's
/// `getrusage(RUSAGE_CHILDREN)`).
fn export_with_peak(archive: &Archive, study_uid: &str, out: &Path) -> (Vec<PathBuf>, u64) {
    let mut export = archive.strata(&["export", study_uid, "--out"]);
    export.arg(out);
    let program = export.get_program().to_owned();
    let args: Vec<std::ffi::OsString> = export.get_args().map(|a| a.to_owned()).collect();
    let result = run_ok(
        std::process::Command::new("python3")
            .arg("-c")
            .arg("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
            .arg(program)
            .args(args)
            .envs(export.get_envs().filter_map(|(k, v)| v.map(|v| (k, v)))),
    );
    let text = String::from_utf8_lossy(&result.stdout);
    // the last line is Python's: the return code and the child's peak RSS in KiB
    let line = text.lines().last().unwrap_or_default();
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(fields.first(), Some(&0), "export failed: {text}");
    (walk(out), fields[1] * 1024)
}

/// Issue 11 item 2: a 2.1 GB multi-frame object is stored (storescu), C-MOVEd (to
/// storescp), C-GETed (getscu), exported and described by WADO-RS metadata; then moved to
/// the cold tier (packed as a stream), C-MOVEd, C-GETed, exported and described again
/// from its pack, and recalled to hot —
/// while `strata serve`'s peak RSS stays under 300 MiB, and each `strata export`'s too.
/// Hot objects stream from their file (after a re-hash in chunks against their id); a
/// cold one is staged from its pack into a tmp file on hot disk, decompressed and
/// checked on the way, and streams from there. The figures are printed and recorded in
/// `docs/benchmarks.md`.
#[test]
fn a_two_gigabyte_object_is_stored_moved_and_got_in_bounded_memory() {
    let (archive, dest_port) = archive_with_dest("retrieve-big");
    let big = archive.dir.path().join("big.dcm");
    let made = run_ok(python("gen_big.py").arg(&big).arg("65"));
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();
    let size = made["bytes"].as_u64().unwrap();
    assert!(size >= 2 << 30, "{made}");
    let server = archive.start();
    let out = run(dcmtk("storescu")
        .args(["-aec", "STRATA", "127.0.0.1"])
        .arg(server.dicom_port.to_string())
        .arg(&big));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&big);
    assert_eq!(archive.total_instances(), 1);
    let (attrs, id) = {
        let studies = archive.ls_json();
        let study = studies[0]["study_uid"].as_str().unwrap().to_string();
        let shown = run_ok(&mut archive.strata(&["show", &study, "--json"]));
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        let series = &shown["series"][0];
        let instance = &series["instances"][0];
        let attrs = strata::dicom::header::InstanceAttrs {
            study_uid: study,
            series_uid: series["series_uid"].as_str().unwrap().into(),
            sop_instance_uid: instance["sop_instance_uid"].as_str().unwrap().into(),
            ..Default::default()
        };
        (
            attrs,
            instance["versions"][0]["id"].as_str().unwrap().to_string(),
        )
    };
    // one round: C-MOVE, C-GET and export, each checked whole and then removed; the
    // moved and got copies carry `patient_id` (the export is the object as stored)
    let round = |tier: &str, patient_id: &str| -> u64 {
        let recv = archive.dir.path().join(format!("moved-{tier}"));
        let scp = Storescp::start(dest_port, &recv);
        let text = move_image(server.dicom_port, &attrs);
        drop(scp);
        assert!(
            text.contains("Final Move Response (Success)"),
            "{tier}: {text}"
        );
        let got = archive.dir.path().join(format!("got-{tier}"));
        std::fs::create_dir_all(&got).unwrap();
        get_study(server.dicom_port, &attrs.study_uid, &got);
        // WADO-RS metadata of it: parsed from the checked file up to its pixel data
        let meta = run_ok(std::process::Command::new("curl").args([
            "-s",
            "-f",
            &format!(
                "http://127.0.0.1:{}/dicom-web/studies/{}/metadata",
                server.http_port, attrs.study_uid
            ),
        ]));
        let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
        assert!(
            meta[0]["7FE00010"]["BulkDataURI"].is_string(),
            "{tier}: {}",
            meta.to_string().chars().take(300).collect::<String>()
        );
        // WADO-RS: the instance in a multipart answer, streamed (meta group, the header
        // as it goes out, the pixel data as stored)
        let wado = archive.dir.path().join(format!("wado-{tier}"));
        run_ok(std::process::Command::new("curl").args([
            "-s",
            "-f",
            "-o",
            wado.to_str().unwrap(),
            &format!(
                "http://127.0.0.1:{}/dicom-web/studies/{}/series/{}/instances/{}",
                server.http_port, attrs.study_uid, attrs.series_uid, attrs.sop_instance_uid
            ),
        ]));
        let answered = std::fs::metadata(&wado).unwrap().len();
        assert!(
            answered > size && answered < size + 4096,
            "{tier}: WADO-RS answered {answered} bytes"
        );
        let mut start = vec![0u8; 8192];
        std::io::Read::read_exact(&mut std::fs::File::open(&wado).unwrap(), &mut start).unwrap();
        assert!(
            start
                .windows(patient_id.len())
                .any(|w| w == patient_id.as_bytes()),
            "{tier}: the WADO-RS copy names {patient_id}"
        );
        let _ = std::fs::remove_file(&wado);
        let (exported, export_peak) = export_with_peak(
            &archive,
            &attrs.study_uid,
            &archive.dir.path().join(format!("exported-{tier}")),
        );
        let sent: Vec<PathBuf> = walk(&recv).into_iter().chain(walk(&got)).collect();
        for f in &sent {
            let dump = run_ok(dcmtk("dcmdump").args(["+P", "0010,0020", "-M"]).arg(f));
            let dump = String::from_utf8_lossy(&dump.stdout);
            assert!(dump.contains(&format!("[{patient_id}]")), "{tier}: {dump}");
        }
        let files: Vec<PathBuf> = sent.into_iter().chain(exported.iter().cloned()).collect();
        assert_eq!(files.len(), 3, "{tier}: {files:?}");
        // the data sets arrived whole (their sizes, meta groups aside); the export is
        // the stored object itself
        for f in &files {
            let received = std::fs::metadata(f).unwrap().len();
            assert!(
                received + 1024 > size && received < size + 1024,
                "{tier}: {} is {received} bytes",
                f.display()
            );
        }
        let b3 = run_ok(
            std::process::Command::new("b3sum")
                .arg("--no-names")
                .arg(&exported[0]),
        );
        assert_eq!(
            String::from_utf8_lossy(&b3.stdout).trim(),
            id,
            "{tier}: export"
        );
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
        eprintln!("strata export peak RSS, {tier}: {} MiB", export_peak >> 20);
        export_peak
    };
    let export_hot = round("hot", "BIG01");
    let peak_hot = peak_rss(server.pid());
    eprintln!(
        "strata serve peak RSS while storing, C-MOVEing and C-GETing a {size}-byte object from hot: {} MiB",
        peak_hot >> 20
    );
    // to the cold tier (the local one) through the running server: packed as a stream
    run_ok(&mut archive.strata(&["tier", "move", &attrs.study_uid, "--to", "cold"]));
    let status = run_ok(&mut archive.strata(&["tier", "status", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["cold_only_objects"], 1, "{status}");
    // the hospital merges the patient (issue 15): what goes out now carries the
    // survivor's identity, its header coerced and its 2 GB of pixel data streamed as
    // stored (docs/patients.md "Coercion on the way out")
    run_ok(&mut archive.strata(&[
        "patient",
        "merge",
        "BIG01",
        "--into",
        "BIG02",
        "--name",
        "BIG^MERGED",
    ]));
    let export_cold = round("cold", "BIG02");
    // and recalled: streamed from its pack into place, checked against its id
    run_ok(&mut archive.strata(&["tier", "move", &attrs.study_uid, "--to", "hot"]));
    let status = run_ok(&mut archive.strata(&["tier", "status", "--json"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["hot_objects"], 1, "{status}");
    let peak = peak_rss(server.pid());
    eprintln!(
        "strata serve peak RSS after packing, C-MOVEing, C-GETing from cold and recalling it: {} MiB",
        peak >> 20
    );
    server.stop();
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    assert!(peak < 300 << 20, "peak RSS {} MiB", peak >> 20);
    for (tier, p) in [("hot", export_hot), ("cold", export_cold)] {
        assert!(p < 300 << 20, "export peak RSS from {tier} {} MiB", p >> 20);
    }
}

/// A study of 65,600 instances (more than a US counter holds) C-MOVEd to DCMTK storescp,
/// watched by pynetdicom: every sub-operation is done, the counters of every response
/// saturate at 65,535 instead of wrapping (PS3.7 9.3.4.2: the counters are US; Strata
/// keeps them whole and reports min(n, 65535)), and the final status is 0x0000. storescp
/// serves one association at a time: the lanes Strata opens beyond the first
/// (`move_associations` = 4) wait or fail, and the lane that got through sends their
/// share too (before, a quarter of the study failed once a lane timed out).
#[test]
fn a_study_of_more_than_65535_instances_is_moved_whole_with_saturated_counters() {
    const COUNT: u64 = 65_600;
    let dest_port = free_port();
    let archive = Archive::with_config(
        "move-65600",
        &format!(
            "\n[[dicom.peers]]\nae_title = \"DEST\"\nhost = \"127.0.0.1\"\nport = {dest_port}\n"
        ),
    );
    let gen = archive.dir.path().join("many");
    let out = run_ok(
        python("gen_many.py")
            .arg("--out")
            .arg(&gen)
            .args(["--count", &COUNT.to_string()]),
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let study = made["study"].as_str().unwrap().to_string();
    run_ok(archive.strata(&["import"]).arg(&gen));
    std::fs::remove_dir_all(&gen).unwrap();
    assert_eq!(archive.total_instances(), COUNT);
    let server = archive.start();
    // storescp receives and acknowledges every instance without writing it
    let _scp = Storescp::start_with(dest_port, &archive.dir.path().join("sink"), "--ignore");
    let out = run_ok(python("move_counts.py").args([
        "--port",
        &server.dicom_port.to_string(),
        "--study",
        &study,
        "--dest",
        "DEST",
    ]));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["final_status"], 0, "{seen}");
    assert_eq!(seen["wrapped"], false, "{seen}");
    assert_eq!(seen["pending"], COUNT - 1, "{seen}");
    assert_eq!(seen["first"]["remaining"], 65_535, "{seen}");
    assert_eq!(seen["first"]["completed"], 1, "{seen}");
    assert_eq!(seen["final"]["completed"], 65_535, "{seen}");
    assert_eq!(seen["final"]["failed"], 0, "{seen}");
    server.stop();
    // the audit record holds the whole count
    let retrieves = archive.audit_records("retrieve");
    let retrieve = retrieves.first().expect("a retrieve record");
    let outcome = retrieve["outcome"].as_str().unwrap();
    assert!(
        outcome.ends_with(&format!("{COUNT} sent, 0 failed")),
        "{outcome}"
    );
}
