//! C-MOVE SCP against DCMTK movescu, with DCMTK storescp as the destination: a whole
//! study, a single image, an unknown destination (0xA801) and a destination that is
//! down (failure, the server keeps serving).

use crate::common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use strata::dicom::header::read_header_blocking;

struct Storescp(Child);

impl Storescp {
    fn start(port: u16, dir: &Path) -> Storescp {
        std::fs::create_dir_all(dir).unwrap();
        let child = dcmtk("storescp")
            .args(["-aet", "DEST", "+xa", "-od"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Storescp(child)
    }
}

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn movescu(port: u16, destination: &str, keys: &[&str]) -> String {
    let mut cmd = dcmtk("movescu");
    cmd.args(["-v", "-S", "-aec", "STRATA", "-aem", destination]);
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

    // one image
    std::fs::remove_dir_all(&recv).unwrap();
    std::fs::create_dir_all(&recv).unwrap();
    let text = movescu(
        server.dicom_port,
        "DEST",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={}", attrs.study_uid),
            &format!("SeriesInstanceUID={}", attrs.series_uid),
            &format!("SOPInstanceUID={}", attrs.sop_instance_uid),
        ],
    );
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
