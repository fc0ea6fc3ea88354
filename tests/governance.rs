//! Governance without downtime: `strata hold`, `strata delete` and `strata verify
//! --repair` run while `strata serve` holds the archive and takes C-STOREs, through the
//! server's admin API; nothing stored meanwhile is lost, and the audit log names the
//! command-line user.

use crate::common::*;
use crate::integrity::imported_ct_studies;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn hold_delete_and_repair_work_while_the_server_runs_under_store_load() {
    let archive = Archive::new("governance-live");
    let (_, studies) = imported_ct_studies(&archive, 31, "20240301");
    let (a, b, c) = (studies[0].clone(), studies[1].clone(), studies[2].clone());
    // A gets a cold copy, then one of its hot files is damaged: repair has work to do
    run_ok(&mut archive.strata(&["tier", "move", &a, "--to", "cold"]));
    run_ok(&mut archive.strata(&["tier", "move", &a, "--to", "hot"]));
    let shown = run_ok(&mut archive.strata(&["show", &a, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let victim = shown["series"][0]["instances"][0]["versions"][0]["location"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();

    let server = archive.start();
    // the load, on its own thread: the CT study in chunks of 10, new instances first,
    // then the same again (acknowledged as already stored) until the commands are done
    let ct: Vec<_> = dcm_files(ct_study()).into_iter().take(120).collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (ct, sent, stop, port) = (ct.clone(), sent.clone(), stop.clone(), server.dicom_port);
        std::thread::spawn(move || {
            for chunk in ct.chunks(10).cycle() {
                if stop.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) >= ct.len() {
                    break;
                }
                crate::store::storescu_send(port, chunk);
                sent.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        })
    };
    while sent.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // and one C-STORE held open across the commands: its data set trickles in, 1 KiB
    // every 50 ms, and its last fragment goes only once the commands are done
    let held_open = dcm_files(ct_study())[150].clone();
    let meta = crate::store::meta_of(&held_open);
    let dataset = std::fs::read(&held_open).unwrap()[meta.dataset_offset..].to_vec();
    let commands_done = Arc::new(AtomicBool::new(false));
    let in_flight = {
        let (done, port) = (commands_done.clone(), server.dicom_port);
        let (class, sop, ts) = (
            meta.sop_class_uid.clone(),
            meta.sop_instance_uid.clone(),
            meta.transfer_syntax_uid.clone(),
        );
        std::thread::spawn(move || {
            use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
            let mut a = raw::associate(port, "STRATA", &class, &ts).unwrap();
            let pc = a.presentation_contexts()[0].id;
            let send = |a: &mut raw::Assoc, value_type, is_last, data: Vec<u8>| {
                a.send(&Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: pc,
                        value_type,
                        is_last,
                        data,
                    }],
                })
                .unwrap()
            };
            let command = raw::store_command(1, &class, &sop);
            send(&mut a, PDataValueType::Command, true, command);
            let chunks: Vec<&[u8]> = dataset.chunks(1024).collect();
            let (last, rest) = chunks.split_last().unwrap();
            for chunk in rest {
                send(&mut a, PDataValueType::Data, false, chunk.to_vec());
                if !done.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            assert!(
                done.load(Ordering::SeqCst),
                "the commands outlasted the trickled data set"
            );
            send(&mut a, PDataValueType::Data, true, last.to_vec());
            let status = match a.receive().unwrap() {
                Pdu::PData { data } => raw::status_of(&data[0].data),
                other => panic!("unexpected {other:?}"),
            };
            let _ = a.release();
            status
        })
    };
    let cli = |args: &[&str]| {
        let mut cmd = archive.strata(args);
        cmd.env("USER", "alice").env_remove("SUDO_USER");
        run(&mut cmd)
    };
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    ok(cli(&["hold", &b, "--reason", "litigation 2026-31"]));
    // a second matter holds the study too; a release must say which, and says why
    ok(cli(&["hold", &b, "--reason", "audit 2026-7"]));
    let which = cli(&["hold", &b, "--release", "--reason", "closed"]);
    assert!(!which.status.success());
    let msg = String::from_utf8_lossy(&which.stderr);
    assert!(
        msg.contains("--hold") && msg.contains("litigation 2026-31"),
        "{msg}"
    );
    let lifted = ok(cli(&[
        "hold",
        &b,
        "--release",
        "--hold",
        "audit 2026-7",
        "--reason",
        "audit closed",
    ]));
    assert!(
        lifted.contains("\"audit 2026-7\"") && lifted.contains("lifted"),
        "{lifted}"
    );
    let none = cli(&["hold", &c, "--release", "--reason", "x"]);
    assert!(
        !none.status.success(),
        "no hold to lift is an error, not 'lifted'"
    );
    assert!(String::from_utf8_lossy(&none.stderr).contains("under no legal hold"));
    let refused = cli(&["delete", &b, "--reason", "cleanup"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("legal hold"));
    let deleted = ok(cli(&["delete", &c, "--reason", "duplicate study"]));
    assert!(deleted.contains("deleted study"), "{deleted}");
    let repaired = ok(cli(&["verify", "--repair"]));
    assert!(repaired.contains("repaired: object"), "{repaired}");
    commands_done.store(true, Ordering::SeqCst);
    assert_eq!(
        in_flight.join().unwrap(),
        Some(0x0000),
        "the store open across the commands is acknowledged"
    );
    stop.store(true, Ordering::SeqCst);
    load.join().expect("every store acknowledged");

    // nothing stored meanwhile was lost; C is gone, B held, A whole again
    assert_eq!(archive.total_instances(), 3 + 3 + ct.len() as u64 + 1);
    let (clean, report) = archive.verify_json();
    assert!(clean, "{report}");
    server.stop();

    for action in ["hold", "delete", "repair"] {
        let records = archive.audit_records(action);
        assert!(!records.is_empty(), "no {action} record");
        for r in &records {
            assert_eq!(r["actor"]["kind"], "cli", "{r}");
            assert_eq!(r["actor"]["user"], "alice", "{r}");
            assert_eq!(r["actor"]["address"], "admin-api", "{r}");
        }
    }
    assert!(run(&mut archive.strata(&["audit", "verify"]))
        .status
        .success());
}
