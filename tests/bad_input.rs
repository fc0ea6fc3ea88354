//! Bad input never hurts (DESIGN promise 7): broken datasets get their DIMSE status,
//! protocol garbage ends only its own association, wrong AE titles are rejected, and
//! the server keeps answering C-ECHO with nothing stored or half-written.

use crate::common::raw;
use crate::common::*;
use std::io::Write;
use std::net::TcpStream;
use strata::dicom::part10::read_foreign_meta;

const A900: u16 = 0xA900;
const C000: u16 = 0xC000;

fn hot_files(archive: &Archive) -> Vec<std::path::PathBuf> {
    let objects = archive.data_dir().join("hot/objects");
    let tmp = archive.data_dir().join("hot/tmp");
    let mut all = if objects.exists() {
        walk(&objects)
    } else {
        vec![]
    };
    if tmp.exists() {
        all.extend(walk(&tmp));
    }
    all
}

/// The dataset part of a file: after the meta group if it has one, else the whole file.
fn dataset_bytes(path: &std::path::Path) -> (Vec<u8>, &'static str) {
    let bytes = std::fs::read(path).unwrap();
    match read_foreign_meta(&bytes) {
        Ok(m) if m.transfer_syntax_uid == IMPLICIT_VR_LE => {
            (bytes[m.dataset_offset..].to_vec(), IMPLICIT_VR_LE)
        }
        Ok(m) => (bytes[m.dataset_offset..].to_vec(), EXPLICIT_VR_LE),
        Err(_) => (bytes, IMPLICIT_VR_LE),
    }
}

#[test]
fn broken_pydicom_files_get_failure_statuses_and_nothing_is_stored() {
    let archive = Archive::new("bad-pydicom");
    let server = archive.start();
    let (_, broken) = pydicom_samples();
    assert!(broken.len() >= 10, "expected pydicom's broken sample files");
    for (i, file) in broken.iter().enumerate() {
        let (dataset, ts) = dataset_bytes(file);
        let mut a = raw::associate(server.dicom_port, "STRATA", CT_IMAGE_STORAGE, ts).unwrap();
        // Claim a UID the file does not carry: whatever the file holds, it must not be stored.
        let status = raw::store(
            &mut a,
            CT_IMAGE_STORAGE,
            &format!("1.2.826.0.1.3680043.99.{i}"),
            &dataset,
        )
        .unwrap_or_else(|e| panic!("{}: no response: {e}", file.display()));
        assert!(
            status == A900 || status == C000,
            "{}: status {status:#06x}, expected 0xA900 or 0xC000",
            file.display()
        );
        let _ = a.release();
    }
    assert!(server.echo_ok(), "server must keep answering C-ECHO");
    assert!(
        hot_files(&archive).is_empty(),
        "nothing may be written: {:?}",
        hot_files(&archive)
    );
    let metrics = server.metrics();
    assert!(
        metrics.contains("strata_store_rejections_total"),
        "{metrics}"
    );
    server.stop();
}

#[test]
fn truncated_and_mismatched_datasets_are_refused_with_the_right_status() {
    let archive = Archive::new("bad-dataset");
    let server = archive.start();
    let ct = dcm_files(ct_study());
    let bytes = std::fs::read(&ct[0]).unwrap();
    let meta = read_foreign_meta(&bytes).unwrap();
    let dataset = &bytes[meta.dataset_offset..];
    let mut a = raw::associate(
        server.dicom_port,
        "STRATA",
        CT_IMAGE_STORAGE,
        EXPLICIT_VR_LE,
    )
    .unwrap();

    // the SOP Instance UID in the dataset differs from the announced one
    assert_eq!(
        raw::store(&mut a, CT_IMAGE_STORAGE, "1.2.3.4.5.6", dataset).unwrap(),
        A900
    );
    // the dataset's SOP class differs from the announced (and negotiated) one
    let mut b = raw::associate(
        server.dicom_port,
        "STRATA",
        "1.2.840.10008.5.1.4.1.1.4",
        EXPLICIT_VR_LE,
    )
    .unwrap();
    assert_eq!(
        raw::store(
            &mut b,
            "1.2.840.10008.5.1.4.1.1.4",
            &meta.sop_instance_uid,
            dataset
        )
        .unwrap(),
        A900
    );
    let _ = b.release();
    // truncated in the middle of the pixel data
    let cut = &dataset[..dataset.len() - 1000];
    assert_eq!(
        raw::store(&mut a, CT_IMAGE_STORAGE, &meta.sop_instance_uid, cut).unwrap(),
        C000
    );
    // pure garbage as a dataset
    let garbage: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(
        raw::store(&mut a, CT_IMAGE_STORAGE, &meta.sop_instance_uid, &garbage).unwrap(),
        C000
    );
    // an empty dataset
    assert_eq!(
        raw::store(&mut a, CT_IMAGE_STORAGE, &meta.sop_instance_uid, &[]).unwrap(),
        C000
    );
    // and after all that, the real thing on the same association succeeds
    assert_eq!(
        raw::store(&mut a, CT_IMAGE_STORAGE, &meta.sop_instance_uid, dataset).unwrap(),
        0
    );
    let _ = a.release();
    assert_eq!(archive.total_instances(), 1);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    server.stop();
}

#[test]
fn garbage_bytes_and_oversized_pdus_end_only_their_connection() {
    let archive = Archive::with_config("bad-protocol", "max_pdu_length = 16384\n");
    let server = archive.start();
    // random bytes instead of an A-ASSOCIATE-RQ
    let mut s = TcpStream::connect(("127.0.0.1", server.dicom_port)).unwrap();
    let noise: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(7919) % 251) as u8)
        .collect();
    let _ = s.write_all(&noise);
    drop(s);
    // a P-DATA PDU announcing 1 GiB inside an established association
    let mut a = raw::associate(
        server.dicom_port,
        "STRATA",
        CT_IMAGE_STORAGE,
        EXPLICIT_VR_LE,
    )
    .unwrap();
    a.inner_stream()
        .write_all(&[0x04, 0, 0x40, 0, 0, 0, 1, 2, 3, 4])
        .unwrap();
    match a.receive() {
        Ok(dicom_ul::Pdu::AbortRQ { .. }) | Err(_) => {}
        Ok(other) => panic!("an oversized PDU must abort the association, got {other:?}"),
    }
    // half an A-ASSOCIATE-RQ, then silence is handled by the read timeout; just close
    let mut s = TcpStream::connect(("127.0.0.1", server.dicom_port)).unwrap();
    let _ = s.write_all(&[0x01, 0x00, 0x00, 0x00]);
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(server.echo_ok(), "server must keep answering C-ECHO");
    assert!(
        server.log_text().contains("aborting association")
            || server.log_text().contains("not established")
    );
    server.stop();
}

#[test]
fn wrong_called_ae_and_unlisted_callers_are_rejected() {
    let archive = Archive::with_config(
        "bad-ae",
        "allowed_calling_ae_titles = [\"ECHOSCU\", \"STORESCU\"]\n",
    );
    let server = archive.start();
    let port = server.dicom_port.to_string();
    let wrong = run(dcmtk("echoscu").args(["-aec", "NOTSTRATA", "127.0.0.1", &port]));
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("Called AE Title Not Recognized"));
    let stranger =
        run(dcmtk("echoscu").args(["-aet", "STRANGER", "-aec", "STRATA", "127.0.0.1", &port]));
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("Calling AE Title Not Recognized"));
    assert!(server.echo_ok());
    server.stop();

    // an address allow-list that excludes loopback
    let archive = Archive::with_config("bad-address", "allowed_addresses = [\"10.1.2.3\"]\n");
    let server = archive.start();
    let refused = run(dcmtk("echoscu").args([
        "-aec",
        "STRATA",
        "127.0.0.1",
        &server.dicom_port.to_string(),
    ]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Rejected"));
    server.stop();
}

#[test]
fn association_cap_rejects_extra_associations_transiently() {
    let archive = Archive::with_config("bad-cap", "max_associations = 1\n");
    let server = archive.start();
    let held = raw::associate(
        server.dicom_port,
        "STRATA",
        CT_IMAGE_STORAGE,
        EXPLICIT_VR_LE,
    )
    .unwrap();
    let second = raw::associate(
        server.dicom_port,
        "STRATA",
        CT_IMAGE_STORAGE,
        EXPLICIT_VR_LE,
    );
    assert!(
        second.is_err(),
        "a second association must be rejected while one is open"
    );
    let _ = held.release();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        server.echo_ok(),
        "after the first association ends, new ones are accepted"
    );
    server.stop();
}

#[test]
fn non_storage_requests_and_sop_classes_get_failure_statuses() {
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    let archive = Archive::new("bad-sop-class");
    let server = archive.start();
    let ct = dcm_files(ct_study());
    let bytes = std::fs::read(&ct[0]).unwrap();
    let meta = read_foreign_meta(&bytes).unwrap();
    let dataset = &bytes[meta.dataset_offset..];

    // a C-STORE of a standard SOP class that is not a storage class: 0x0122
    const WORKLIST_FIND: &str = "1.2.840.10008.5.1.4.31";
    let mut a = raw::associate(server.dicom_port, "STRATA", WORKLIST_FIND, EXPLICIT_VR_LE).unwrap();
    assert_eq!(
        raw::store(&mut a, WORKLIST_FIND, "1.2.3.4", dataset).unwrap(),
        0x0122
    );

    // a C-FIND (not offered yet) gets a failure response, and the association goes on
    let pc = a.presentation_contexts()[0].id;
    let mut cmd = Vec::new();
    for (elem, value) in [
        (0x0002u16, b"1.2.840.10008.5.1.4.31\0".to_vec()),
        (0x0100, 0x0020u16.to_le_bytes().to_vec()),
        (0x0110, 7u16.to_le_bytes().to_vec()),
        (0x0700, 0u16.to_le_bytes().to_vec()),
        (0x0800, 0x0101u16.to_le_bytes().to_vec()),
    ] {
        cmd.extend_from_slice(&0u16.to_le_bytes());
        cmd.extend_from_slice(&elem.to_le_bytes());
        cmd.extend_from_slice(&(value.len() as u32).to_le_bytes());
        cmd.extend_from_slice(&value);
    }
    a.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd,
        }],
    })
    .unwrap();
    match a.receive().unwrap() {
        Pdu::PData { data } => assert_eq!(raw::status_of(&data[0].data), Some(0x0211)),
        other => panic!("expected a C-FIND-RSP, got {other:?}"),
    }
    let _ = a.release();

    // a private SOP class is accepted and stored (accept_private_sop_classes = true)
    const PRIVATE: &str = "1.2.826.0.1.3680043.9.7.1";
    let mut private = dataset.to_vec();
    // rewrite the dataset's SOP Class UID (0008,0016) in place to the private UID
    let pos = private
        .windows(4)
        .position(|w| w == [0x08, 0x00, 0x16, 0x00])
        .expect("SOPClassUID element");
    let len = u16::from_le_bytes([private[pos + 6], private[pos + 7]]) as usize;
    let mut uid = PRIVATE.as_bytes().to_vec();
    uid.resize(len, 0);
    assert!(PRIVATE.len() <= len);
    private[pos + 8..pos + 8 + len].copy_from_slice(&uid);
    let mut b = raw::associate(server.dicom_port, "STRATA", PRIVATE, EXPLICIT_VR_LE).unwrap();
    assert_eq!(
        raw::store(&mut b, PRIVATE, &meta.sop_instance_uid, &private).unwrap(),
        0
    );
    let _ = b.release();
    assert_eq!(archive.total_instances(), 1);
    assert!(server.echo_ok());
    server.stop();
}

/// Resource limits a hostile or broken peer runs into: an endless command set, a data
/// set above `max_object_mb`, and a deflate bomb. Each ends only its own association or
/// store, leaves nothing on disk, and the server keeps answering.
#[test]
fn endless_commands_oversized_objects_and_deflate_bombs_are_contained() {
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    let archive = Archive::with_config("bad-limits", "max_object_mb = 2\n");
    let server = archive.start();

    // 1. command fragments that never end
    let mut a = raw::associate(
        server.dicom_port,
        "STRATA",
        CT_IMAGE_STORAGE,
        EXPLICIT_VR_LE,
    )
    .unwrap();
    let pc = a.presentation_contexts()[0].id;
    let mut aborted = false;
    for _ in 0..100 {
        let sent = a.send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: false,
                data: vec![0u8; 8000],
            }],
        });
        if sent.is_err() {
            aborted = true;
            break;
        }
    }
    if !aborted {
        aborted = matches!(a.receive(), Ok(Pdu::AbortRQ { .. }) | Err(_));
    }
    assert!(aborted, "an endless command set must abort the association");

    // 2. a data set over max_object_mb (2 MiB): the association is aborted
    let ct = dcm_files(ct_study());
    let bytes = std::fs::read(&ct[0]).unwrap();
    let meta = read_foreign_meta(&bytes).unwrap();
    let mut big = bytes[meta.dataset_offset..].to_vec();
    big.extend(std::iter::repeat_n(0u8, 2 << 20)); // framing is irrelevant: it never gets that far
    let mut b = raw::associate(
        server.dicom_port,
        "STRATA",
        CT_IMAGE_STORAGE,
        EXPLICIT_VR_LE,
    )
    .unwrap();
    assert!(
        raw::store(&mut b, CT_IMAGE_STORAGE, &meta.sop_instance_uid, &big).is_err(),
        "oversized object must abort"
    );

    // 3. a deflated data set that inflates past the cap (1 GiB of zeros in one element)
    const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
    let out = run_ok(std::process::Command::new("python3").args([
        "-c",
        "import sys, zlib, struct\n\
         c = zlib.compressobj(9, zlib.DEFLATED, -15)\n\
         head = b'\\x08\\x00\\x16\\x00UI\\x1a\\x001.2.840.10008.5.1.4.1.1.2\\x00'\n\
         head += struct.pack('<HH2sHI', 0x0009, 0x0010, b'OB', 0, (1 << 30) + 2)\n\
         out = [c.compress(head)]\n\
         z = bytes(1 << 24)\n\
         for _ in range(65): out.append(c.compress(z))\n\
         out.append(c.flush())\n\
         sys.stdout.buffer.write(b''.join(out))",
    ]));
    let bomb = out.stdout;
    assert!(
        bomb.len() < 4 << 20,
        "the bomb is small: {} bytes",
        bomb.len()
    );
    let mut c = raw::associate(server.dicom_port, "STRATA", CT_IMAGE_STORAGE, DEFLATED).unwrap();
    let status = raw::store(&mut c, CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.9.5.1", &bomb).unwrap();
    assert_eq!(status, C000);
    let _ = c.release();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let log = server.log_text();
    assert!(
        log.contains("inflated data set exceeds"),
        "refused for its size: {log}"
    );

    assert!(server.echo_ok());
    assert!(hot_files(&archive)
        .iter()
        .all(|p| !p.starts_with(archive.data_dir().join("hot/tmp"))));
    assert_eq!(
        hot_files(&archive).len(),
        0,
        "nothing stored or left behind"
    );
    server.stop();
}

/// Issue 11 item 3: a C-MOVE-RQ without Move Destination (0000,0600), a required
/// element, gets a C-MOVE-RSP (command field 0x8021) with a failure status and a
/// comment saying so (PS3.7 9.1.4.1) — never a C-GET or silence; the server keeps
/// serving.
#[test]
fn a_c_move_without_a_destination_is_answered_as_a_failed_c_move() {
    use crate::common::raw;
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    let archive = Archive::new("bad-move-no-destination");
    let server = archive.start();
    let move_model = "1.2.840.10008.5.1.4.1.2.2.2";
    let mut a = raw::associate(server.dicom_port, "STRATA", move_model, IMPLICIT_VR_LE).unwrap();
    let element = |out: &mut Vec<u8>, g: u16, e: u16, v: &[u8]| {
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    };
    let mut body = Vec::new();
    element(&mut body, 0, 0x0002, b"1.2.840.10008.5.1.4.1.2.2.2\0");
    element(&mut body, 0, 0x0100, &0x0021u16.to_le_bytes());
    element(&mut body, 0, 0x0110, &7u16.to_le_bytes());
    element(&mut body, 0, 0x0700, &0u16.to_le_bytes());
    element(&mut body, 0, 0x0800, &0u16.to_le_bytes());
    let mut command = Vec::new();
    element(&mut command, 0, 0, &(body.len() as u32).to_le_bytes());
    command.extend_from_slice(&body);
    let mut identifier = Vec::new();
    element(&mut identifier, 0x0008, 0x0052, b"STUDY ");
    element(&mut identifier, 0x0020, 0x000D, b"1.2.3.4\0");
    let pc = a.presentation_contexts()[0].id;
    for (value_type, data) in [
        (PDataValueType::Command, command),
        (PDataValueType::Data, identifier),
    ] {
        a.send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type,
                is_last: true,
                data,
            }],
        })
        .unwrap();
    }
    let Pdu::PData { data } = a.receive().unwrap() else {
        panic!("no response")
    };
    let rsp = &data[0].data;
    let field = rsp
        .windows(8)
        .position(|w| w[..4] == [0, 0, 0, 1] && w[4..8] == [2, 0, 0, 0])
        .map(|p| u16::from_le_bytes([rsp[p + 8], rsp[p + 9]]));
    assert_eq!(field, Some(0x8021), "a C-MOVE-RSP");
    let status = raw::status_of(rsp).unwrap();
    assert_eq!(status, 0xA801, "Move Destination Unknown");
    assert!(String::from_utf8_lossy(rsp).contains("no Move Destination"));
    let _ = a.release();
    assert!(server.echo_ok());
    server.stop();
}

/// PS3.8 9.3.2.2: presentation context IDs are odd integers 1-255, so an A-ASSOCIATE-RQ
/// proposes at most 128 contexts. pynetdicom proposing the maximum, 128, gets every one
/// answered and a working association (and refuses to propose a 129th itself); a request
/// of more than 128 (IDs repeat) or with even IDs is an invalid PDU parameter: A-ABORT
/// from the service provider with reason 6 (PS3.8 9.3.8, action AA-8), and the server
/// goes on serving.
#[test]
fn more_than_128_presentation_contexts_or_even_ids_are_refused_at_association() {
    let archive = Archive::new("bad-contexts");
    let server = archive.start();
    let port = server.dicom_port.to_string();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run_ok(
            python("contexts_limit.py")
                .args(["--port", &port])
                .args(args),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let most = json(&["pynetdicom"]);
    assert_eq!(most["established"], true, "{most}");
    assert_eq!(most["accepted"], 128, "{most}");
    assert_eq!(most["echo"], 0, "{most}");
    assert_eq!(most["pynetdicom_refuses_a_129th"], true, "{most}");
    let ok = json(&["raw", "--contexts", "128", "--ids", "odd"]);
    assert_eq!(ok["pdu"], "AC", "{ok}");
    assert_eq!(ok["results"].as_array().unwrap().len(), 128);
    for (contexts, ids) in [("129", "wrap"), ("200", "wrap"), ("3", "even")] {
        let answer = json(&["raw", "--contexts", contexts, "--ids", ids]);
        assert_eq!(
            (&answer["pdu"], &answer["source"], &answer["reason"]),
            (
                &serde_json::json!("ABORT"),
                &serde_json::json!(2),
                &serde_json::json!(6)
            ),
            "{contexts} contexts, {ids} IDs: {answer}"
        );
    }
    assert!(server.echo_ok());
    assert!(server.log_text().contains("is proposed twice"));
    assert!(server.log_text().contains("is even"));
    server.stop();
}
