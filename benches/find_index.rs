//! C-FIND study-level latency on a large index (issue 4's benchmark, in-process part):
//! builds an index of 50,000 studies × 20 instances (1,000,000 instances) directly with
//! `Index::commit` (a generator, not the network), then times 1,000 study-level queries
//! each by PatientID, by a one-week StudyDate range and by AccessionNumber through
//! `query::find`, printing p50 and p99.
//!
//! `cargo bench --bench find_index` (STUDIES=50000 INSTANCES=20 by default; the index is
//! kept in /var/tmp/strata-find-bench-… and reused when it is complete). With
//! `METADATA_TEMPLATE=<a CT object>` every instance also gets a metadata record made
//! from that object's (its UIDs replaced), as ingest would keep, and the index goes to
//! a directory of its own (`…-meta`). It prints the index's bytes per instance.
//!
//! With `INDEX_URL=postgresql://…` the index is a PostgreSQL one (`[index] backend =
//! "postgres"`, issue 16) in that database instead, built once (the index's meta records
//! that it is complete) and queried the same way; it prints the database's size per
//! instance (`pg_database_size`).
//!
//! With `FIND_PORT=<port>` set (a `strata serve` on that index, as `scripts/bench-find.sh`
//! starts), the same queries also go over DICOM from a minimal dicom-ul client on one
//! association — end-to-end latency without a heavyweight client's decoding cost.

use std::time::Instant;
use strata::dicom::header::InstanceAttrs;
use strata::dicom::metadata::InstanceMetadata;
use strata::index::prelude::*;
use strata::index::{Index, NewObject, PgIndex, Provenance, RocksIndex};
use strata::query::{find, Key, Level, Model, Query};
use strata_tiers::ObjectId;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn date_of(study: usize) -> String {
    // studies spread over ~14 years, a dozen a day
    let day = study / 12;
    let (y, d) = (2010 + day / 365, day % 365);
    format!("{y:04}{:02}{:02}", 1 + d / 31 % 12, 1 + d % 28)
}

/// A metadata record template: a real object's record and its three UIDs, replaced by
/// each synthetic instance's own.
struct Template {
    metadata: InstanceMetadata,
    uids: [String; 3],
}

impl Template {
    fn load(path: &std::path::Path) -> Template {
        let metadata = InstanceMetadata::of_file(path).expect("template object");
        let attrs = strata::dicom::header::read_header_blocking(path).expect("template header");
        Template {
            metadata,
            uids: [attrs.sop_instance_uid, attrs.series_uid, attrs.study_uid],
        }
    }

    fn record(&self, sop: &str, series: &str, study: &str) -> Vec<u8> {
        let mut json = self.metadata.json.clone();
        for (from, to) in self.uids.iter().zip([sop, series, study]) {
            json = json.replace(from.as_str(), to);
        }
        InstanceMetadata {
            json,
            has_pixels: self.metadata.has_pixels,
        }
        .encode()
    }
}

fn build(index: &dyn Index, studies: usize, per_study: usize, template: Option<&Template>) {
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for s in 0..studies {
        let study_uid = format!("1.2.826.0.1.3680043.9.1000.{s}");
        let series_uid = format!("{study_uid}.1");
        for i in 0..per_study {
            let sop = format!("{series_uid}.{i}");
            batch.push(NewObject {
                id: ObjectId::of_bytes(sop.as_bytes()),
                size: 525_000,
                attrs: InstanceAttrs {
                    patient_id: format!("PID{:06}", s / 3),
                    patient_name: format!("PATIENT^{:06}", s / 3),
                    patient_birth_date: "19600101".into(),
                    patient_sex: "O".into(),
                    study_uid: study_uid.clone(),
                    study_date: date_of(s),
                    study_time: "101010".into(),
                    accession_number: format!("ACC{s:07}"),
                    study_id: format!("{s}"),
                    study_description: "CT CHEST".into(),
                    referring_physician_name: String::new(),
                    series_uid: series_uid.clone(),
                    series_number: "1".into(),
                    modality: "CT".into(),
                    series_description: "AXIAL".into(),
                    sop_instance_uid: sop.clone(),
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                    instance_number: format!("{}", i + 1),
                    transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                    ..Default::default()
                },
                dataset: None,
                metadata: template.map(|t| t.record(&sop, &series_uid, &study_uid)),
                replicate: false,
                provenance: Provenance {
                    received_at_ms: 0,
                    calling_ae: "BENCH".into(),
                    source: String::new(),
                    node: String::new(),
                },
            });
            if batch.len() == 10_000 {
                index.commit(&batch).expect("commit");
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        index.commit(&batch).expect("commit");
    }
    println!(
        "built an index of {studies} studies, {} instances in {:.1} s",
        studies * per_study,
        started.elapsed().as_secs_f64()
    );
}

fn study_query(keys: Vec<(u32, &[u8; 2], String)>) -> Query {
    let mut all: Vec<Key> = keys
        .into_iter()
        .map(|(tag, vr, value)| Key {
            tag,
            vr: *vr,
            value,
        })
        .collect();
    for (tag, vr) in [
        (0x0020_000Du32, b"UI"),
        (0x0010_0010, b"PN"),
        (0x0008_0061, b"CS"),
        (0x0020_1208, b"IS"),
    ] {
        if !all.iter().any(|k| k.tag == tag) {
            all.push(Key {
                tag,
                vr: *vr,
                value: String::new(),
            });
        }
    }
    Query {
        level: Level::Study,
        keys: all,
        relational: false,
    }
}

/// Makes one query from a random study number.
type QueryMaker = dyn Fn(usize) -> Query;

fn percentiles(mut micros: Vec<f64>) -> (f64, f64) {
    micros.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| micros[((micros.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99))
}

/// Implicit VR LE identifier for a study-level query with one matching key.
fn identifier(key: (u16, u16, &str)) -> Vec<u8> {
    let mut elements: Vec<(u16, u16, Vec<u8>)> = vec![
        (0x0008, 0x0052, b"STUDY ".to_vec()),
        (0x0010, 0x0010, Vec::new()),
        (0x0020, 0x000D, Vec::new()),
        (0x0020, 0x1208, Vec::new()),
    ];
    let mut v = key.2.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    elements.push((key.0, key.1, v));
    elements.sort();
    let mut out = Vec::new();
    for (g, e, v) in elements {
        out.extend_from_slice(&g.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(&v);
    }
    out
}

/// Sends one C-FIND over `assoc` and reads responses to the final one; returns matches.
fn find_over_dicom(
    assoc: &mut dicom_ul::association::ClientAssociation<std::net::TcpStream>,
    msg: u16,
    id: Vec<u8>,
) -> usize {
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};
    let pc = assoc.presentation_contexts()[0].id;
    let cmd = strata::dimse::command::ResponseBuilder::request(0x0020, msg, true)
        .uid(0x0000_0002, "1.2.840.10008.5.1.4.1.2.2.1")
        .encode();
    assoc
        .send(&Pdu::PData {
            data: vec![
                PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: cmd,
                },
                PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Data,
                    is_last: true,
                    data: id,
                },
            ],
        })
        .expect("send C-FIND");
    let mut matches = 0;
    loop {
        let Pdu::PData { data } = assoc.receive().expect("receive") else {
            panic!("unexpected PDU")
        };
        for pdv in data {
            if pdv.value_type == PDataValueType::Command {
                let c = strata::dimse::command::Command::decode(&pdv.data).expect("command");
                match c.status() {
                    Some(0xFF00) | Some(0xFF01) => matches += 1,
                    Some(_) => return matches,
                    None => panic!("response without status"),
                }
            }
        }
    }
}

fn main() {
    let studies = env("STUDIES", 50_000);
    let per_study = env("INSTANCES", 20);
    // METADATA_TEMPLATE=<a CT object>: every instance gets a metadata record like its
    let template = std::env::var_os("METADATA_TEMPLATE").map(|p| Template::load(p.as_ref()));
    let suffix = if template.is_some() { "-meta" } else { "" };
    let index: Box<dyn Index> = match std::env::var("INDEX_URL") {
        Ok(url) => {
            let index = PgIndex::open_postgres(&url, None).expect("open the PostgreSQL index");
            let step = format!("bench-find-{studies}x{per_study}{suffix}");
            if !index.migrated(&step).expect("meta") {
                build(&index, studies, per_study, template.as_ref());
                index.mark_migrated(&step).expect("meta");
            }
            let size = std::process::Command::new("psql")
                .args([&url, "-Atc", "SELECT pg_database_size(current_database())"])
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<f64>()
                        .ok()
                });
            if let Some(bytes) = size {
                println!(
                    "PostgreSQL index at {url}: {:.1} MB, {:.0} bytes per instance",
                    bytes / 1e6,
                    bytes / (studies * per_study) as f64
                );
            }
            Box::new(index)
        }
        Err(_) => {
            let dir = std::path::PathBuf::from(format!(
                "/var/tmp/strata-find-bench-{studies}x{per_study}{suffix}"
            ));
            let complete = dir.join("complete");
            if !complete.exists() {
                let _ = std::fs::remove_dir_all(&dir);
                let index = RocksIndex::open_primary(&dir.join("index")).expect("open index");
                build(&index, studies, per_study, template.as_ref());
                std::fs::write(&complete, b"").unwrap();
            }
            let bytes: u64 = std::fs::read_dir(dir.join("index"))
                .expect("index dir")
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            println!(
                "index at {}: {:.1} MB, {:.0} bytes per instance",
                dir.display(),
                bytes as f64 / 1e6,
                bytes as f64 / (studies * per_study) as f64
            );
            // a secondary: works alongside a `strata serve` holding the index
            Box::new(RocksIndex::open_secondary(&dir.join("index")).expect("open index"))
        }
    };
    let index = index.as_ref();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    println!(
        "\n| query (study level, {} instances) | matches/query | p50 | p99 |",
        studies * per_study
    );
    println!("|---|---:|---:|---:|");
    let kinds: [(&str, Box<QueryMaker>); 3] = [
        (
            "PatientID",
            Box::new(|s| study_query(vec![(0x0010_0020, b"LO", format!("PID{:06}", s / 3))])),
        ),
        (
            "StudyDate range (7 days)",
            Box::new(|s| {
                let from = date_of(s);
                let to = format!(
                    "{}{:02}",
                    &from[..6],
                    (from[6..].parse::<u32>().unwrap() + 6).min(31)
                );
                study_query(vec![(0x0008_0020, b"DA", format!("{from}-{to}"))])
            }),
        ),
        (
            "AccessionNumber",
            Box::new(|s| study_query(vec![(0x0008_0050, b"SH", format!("ACC{s:07}"))])),
        ),
    ];
    for (name, make) in kinds.iter() {
        let mut times = Vec::with_capacity(1000);
        let mut found = 0usize;
        for _ in 0..1000 {
            let q = make(next(studies));
            let t = Instant::now();
            let answers = find(index, Model::StudyRoot, &q).expect("query");
            times.push(t.elapsed().as_secs_f64() * 1e6);
            found += answers.len();
        }
        let (p50, p99) = percentiles(times);
        println!(
            "| {name} | {:.1} | {:.2} ms | {:.2} ms |",
            found as f64 / 1000.0,
            p50 / 1000.0,
            p99 / 1000.0
        );
    }

    let Ok(port) = std::env::var("FIND_PORT") else {
        return;
    };
    let mut assoc = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("FINDBENCH")
        .with_presentation_context("1.2.840.10008.5.1.4.1.2.2.1", vec!["1.2.840.10008.1.2"])
        .establish_with(&format!("STRATA@127.0.0.1:{port}"))
        .expect("associate");
    println!("\n| over DICOM (one association, minimal client) | matches/query | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    let dicom_kinds: [(&str, Box<KeyMaker>); 3] = [
        (
            "PatientID",
            Box::new(|s| (0x0010, 0x0020, format!("PID{:06}", s / 3))),
        ),
        (
            "StudyDate range (7 days)",
            Box::new(|s| {
                let from = date_of(s);
                let to = format!(
                    "{}{:02}",
                    &from[..6],
                    (from[6..].parse::<u32>().unwrap() + 6).min(31)
                );
                (0x0008, 0x0020, format!("{from}-{to}"))
            }),
        ),
        (
            "AccessionNumber",
            Box::new(|s| (0x0008, 0x0050, format!("ACC{s:07}"))),
        ),
    ];
    let mut msg = 0u16;
    for (name, make) in dicom_kinds.iter() {
        let mut times = Vec::with_capacity(1000);
        let mut found = 0usize;
        for _ in 0..1000 {
            let (g, e, v) = make(next(studies));
            msg = msg.wrapping_add(1);
            let t = Instant::now();
            found += find_over_dicom(&mut assoc, msg, identifier((g, e, &v)));
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let (p50, p99) = percentiles(times);
        println!(
            "| {name} | {:.1} | {:.2} ms | {:.2} ms |",
            found as f64 / 1000.0,
            p50 / 1000.0,
            p99 / 1000.0
        );
    }
    let _ = assoc.release();
}

/// Makes one (group, element, value) matching key from a random study number.
type KeyMaker = dyn Fn(usize) -> (u16, u16, String);
