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
//!
//! **Scale (issue 17, item 4)**: with `ARCHIVE=<data_dir>` the index is that archive's own
//! (`<data_dir>/index`, so a `strata serve` with that `data_dir` serves it) and is grown,
//! never rebuilt, to `TOTAL` synthetic instances (default 10,000,000) of a realistic
//! shape ([`Shape::Realistic`]: a modality mix with series and instance counts per
//! modality, about 100 instances per study on average, ~2.5 studies per patient, ~14
//! studies a day from 2006, every instance with a metadata record when
//! `METADATA_TEMPLATE` is set). `<data_dir>/synthetic.json` records how far it got (a run
//! stopped half-way goes on from there). With `ONLY=compact` it only rewrites the index's
//! files with the current table options. With `ONLY=fill` it only fills; with
//! `ONLY=query` it never fills, only queries (in process on a secondary, then the server
//! with `FIND_PORT` and `QIDO_PORT`). `QIDO_PORT=<port>` times the same three kinds as
//! QIDO-RS study searches (`GET /dicom-web/studies?…`, application/dicom+json) over one
//! kept-alive HTTP connection (reqwest).

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

/// SplitMix64: a well-mixed 64-bit value from a seed (study numbers), so that every
/// study's shape is a pure function of its number (a grown index never changes).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// How the synthetic studies look: what values a study has and how many instances.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Issue 4's: one CT series of `INSTANCES` per study, three studies per patient, a
    /// dozen studies a day.
    Uniform,
    /// Issue 17's: per study, by weight — CT 30 % (2–4 series of 30–130), MR 20 % (3–6
    /// series of 15–40), CR 20 % and DX 10 % (1–2 series of 1–2), US 10 % (1 series of
    /// 10–40), MG 10 % (1 series of 4): about 100 instances per study. 2,000 patients per
    /// 5,000 studies (about a year), so ~2.5 studies per patient; ~14 studies a day from
    /// 2006 on; AccessionNumber unique per study.
    Realistic,
}

impl Shape {
    fn patient_id(self, s: usize) -> String {
        match self {
            Shape::Uniform => format!("PID{:06}", s / 3),
            // 2,000 patients per block of 5,000 studies (about a year): ~2.5 studies each
            Shape::Realistic => format!("P{:04}{:05}", s / 5000, mix(s as u64 ^ 0xA5) % 2000),
        }
    }

    fn study_date(self, s: usize) -> String {
        match self {
            Shape::Uniform => date_of(s),
            Shape::Realistic => {
                // ~14 studies a day (5,000 a year) from 2006-01-01
                let day = s / 14;
                let (y, d) = (2006 + day / 365, day % 365);
                format!("{y:04}{:02}{:02}", 1 + d / 31 % 12, 1 + d % 28)
            }
        }
    }

    fn accession(self, s: usize) -> String {
        match self {
            Shape::Uniform => format!("ACC{s:07}"),
            Shape::Realistic => format!("A{s:09}"),
        }
    }

    /// (modality, instances per series) of study `s`.
    fn series(self, s: usize, per_study: usize) -> (&'static str, Vec<usize>) {
        if self == Shape::Uniform {
            return ("CT", vec![per_study]);
        }
        let r = mix(s as u64);
        let pick = |k: u64, lo: u64, hi: u64| (lo + (mix(r ^ k) % (hi - lo + 1))) as usize;
        let (modality, series, lo, hi) = match r % 100 {
            0..=29 => ("CT", pick(1, 2, 4), 30, 130),
            30..=49 => ("MR", pick(1, 3, 6), 15, 40),
            50..=69 => ("CR", pick(1, 1, 2), 1, 2),
            70..=79 => ("DX", pick(1, 1, 2), 1, 2),
            80..=89 => ("US", 1, 10, 40),
            _ => ("MG", 1, 4, 4),
        };
        let counts = (0..series).map(|i| pick(10 + i as u64, lo, hi)).collect();
        (modality, counts)
    }

    /// A 7-day StudyDate range from study `s`'s date (DA range, PS3.4 C.2.2.2.5).
    fn week_from(self, s: usize) -> String {
        let from = self.study_date(s);
        let to = format!(
            "{}{:02}",
            &from[..6],
            (from[6..].parse::<u32>().unwrap() + 6).min(31)
        );
        format!("{from}-{to}")
    }
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

/// Commits synthetic studies `first..` of `shape` in batches of 10,000 instances until
/// the index holds `total` instances (`done` of them already there), calling `saved`
/// after each batch with (next study, instances so far). Returns the same pair.
fn build(
    index: &dyn Index,
    shape: Shape,
    (first, done): (usize, usize),
    total: usize,
    per_study: usize,
    template: Option<&Template>,
    mut saved: impl FnMut(usize, usize),
) -> (usize, usize) {
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    let (mut s, mut count) = (first, done);
    while count < total {
        let study_uid = format!("1.2.826.0.1.3680043.9.1000.{s}");
        let (modality, series) = shape.series(s, per_study);
        for (n, instances) in series.iter().enumerate() {
            let series_uid = format!("{study_uid}.{}", n + 1);
            for i in 0..*instances {
                let sop = format!("{series_uid}.{i}");
                batch.push(NewObject {
                    id: ObjectId::of_bytes(sop.as_bytes()),
                    size: 525_000,
                    attrs: InstanceAttrs {
                        patient_id: shape.patient_id(s),
                        patient_name: format!("PATIENT^{}", shape.patient_id(s)),
                        patient_birth_date: "19600101".into(),
                        patient_sex: "O".into(),
                        study_uid: study_uid.clone(),
                        study_date: shape.study_date(s),
                        study_time: "101010".into(),
                        accession_number: shape.accession(s),
                        study_id: format!("{s}"),
                        study_description: format!("{modality} STUDY"),
                        referring_physician_name: String::new(),
                        series_uid: series_uid.clone(),
                        series_number: format!("{}", n + 1),
                        modality: modality.into(),
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
            }
        }
        s += 1;
        count += series.iter().sum::<usize>();
        // whole studies per batch: a stopped run resumes at a study boundary
        if batch.len() >= 10_000 {
            index.commit(&batch).expect("commit");
            batch.clear();
            saved(s, count);
        }
    }
    if !batch.is_empty() {
        index.commit(&batch).expect("commit");
        saved(s, count);
    }
    println!(
        "built {} instances ({} studies) in {:.1} s: now {count} instances in {s} studies",
        count - done,
        s - first,
        started.elapsed().as_secs_f64()
    );
    (s, count)
}

/// Issue 4's index: `studies` studies of `per_study` instances ([`Shape::Uniform`]).
fn build_uniform(index: &dyn Index, studies: usize, per_study: usize, template: Option<&Template>) {
    let whole = (0, 0);
    let total = studies * per_study;
    build(
        index,
        Shape::Uniform,
        whole,
        total,
        per_study,
        template,
        |_, _| {},
    );
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
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

/// Times `n` calls of `run` (which returns its matches) on values `prepare` makes outside
/// the timed part, and prints one Markdown row: name, matches per query, p50, p99.
fn time_kind<T>(
    name: &str,
    n: usize,
    mut prepare: impl FnMut() -> T,
    mut run: impl FnMut(T) -> usize,
) {
    let mut times = Vec::with_capacity(n);
    let mut found = 0usize;
    for _ in 0..n {
        let value = prepare();
        let t = Instant::now();
        found += run(value);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (p50, p99) = percentiles(times);
    println!(
        "| {name} | {:.1} | {:.2} ms | {:.2} ms |",
        found as f64 / n as f64,
        p50 / 1000.0,
        p99 / 1000.0
    );
}

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
    let mut studies = env("STUDIES", 50_000);
    let per_study = env("INSTANCES", 20);
    // METADATA_TEMPLATE=<a CT object>: every instance gets a metadata record like its
    let template = std::env::var_os("METADATA_TEMPLATE").map(|p| Template::load(p.as_ref()));
    let suffix = if template.is_some() { "-meta" } else { "" };
    let only = std::env::var("ONLY").unwrap_or_default();
    let mut shape = Shape::Uniform;
    let mut instances = studies * per_study;
    let index: Box<dyn Index> = if let Some(archive) = std::env::var_os("ARCHIVE") {
        let dir = std::path::PathBuf::from(archive);
        let total = env("TOTAL", 10_000_000);
        let progress = dir.join("synthetic.json");
        let (first, done) = std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice::<(usize, usize)>(&b).ok())
            .unwrap_or((0, 0));
        shape = Shape::Realistic;
        if only == "compact" {
            // rewrite the index's files with the current table options, then stop
            let cache_mb = env("FILL_CACHE_MB", 4096);
            let index = RocksIndex::open_primary_cached(&dir.join("index"), cache_mb << 20)
                .expect("open index");
            let started = Instant::now();
            index.engine().compact_all().expect("compact");
            index
                .engine()
                .settle(std::time::Duration::from_secs(3600))
                .expect("settle");
            println!("compacted in {:.1} s", started.elapsed().as_secs_f64());
            return;
        }
        let (next, count) = if only != "query" && done < total {
            std::fs::create_dir_all(&dir).expect("archive dir");
            // a bulk load: a large block cache (FILL_CACHE_MB, default 4096) for the
            // generator only; `strata serve` on the archive keeps its bounded one
            let cache_mb = env("FILL_CACHE_MB", 4096);
            let index = RocksIndex::open_primary_cached(&dir.join("index"), cache_mb << 20)
                .expect("open index");
            let built = build(
                &index,
                shape,
                (first, done),
                total,
                per_study,
                template.as_ref(),
                |s, c| {
                    let tmp = dir.join("synthetic.json.tmp");
                    std::fs::write(&tmp, serde_json::to_vec(&(s, c)).unwrap()).unwrap();
                    std::fs::rename(&tmp, &progress).unwrap();
                },
            );
            // measured later without the bulk load's compactions competing
            let started = Instant::now();
            let settled = index
                .engine()
                .settle(std::time::Duration::from_secs(3600))
                .expect("settle");
            println!(
                "compactions settled ({settled}) in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            built
        } else {
            (first, done)
        };
        studies = next;
        instances = count;
        let bytes = dir_bytes(&dir.join("index"));
        println!(
            "index at {}: {count} synthetic instances in {next} studies, {:.1} MB, {:.0} bytes per instance",
            dir.display(),
            bytes as f64 / 1e6,
            bytes as f64 / count.max(1) as f64
        );
        if only == "fill" {
            return;
        }
        Box::new(RocksIndex::open_secondary(&dir.join("index")).expect("open index"))
    } else {
        match std::env::var("INDEX_URL") {
            Ok(url) => {
                let index = PgIndex::open_postgres(&url, None).expect("open the PostgreSQL index");
                let step = format!("bench-find-{studies}x{per_study}{suffix}");
                if !index.migrated(&step).expect("meta") {
                    build_uniform(&index, studies, per_study, template.as_ref());
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
                    build_uniform(&index, studies, per_study, template.as_ref());
                    std::fs::write(&complete, b"").unwrap();
                }
                let bytes = dir_bytes(&dir.join("index"));
                println!(
                    "index at {}: {:.1} MB, {:.0} bytes per instance",
                    dir.display(),
                    bytes as f64 / 1e6,
                    bytes as f64 / (studies * per_study) as f64
                );
                // a secondary: works alongside a `strata serve` holding the index
                Box::new(RocksIndex::open_secondary(&dir.join("index")).expect("open index"))
            }
        }
    };
    let index = index.as_ref();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n.max(1) as u64) as usize
    };
    println!("\n| query (study level, {instances} instances) | matches/query | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    let kinds: [(&str, Box<QueryMaker>); 3] = [
        (
            "PatientID",
            Box::new(move |s| study_query(vec![(0x0010_0020, b"LO", shape.patient_id(s))])),
        ),
        (
            "StudyDate range (7 days)",
            Box::new(move |s| study_query(vec![(0x0008_0020, b"DA", shape.week_from(s))])),
        ),
        (
            "AccessionNumber",
            Box::new(move |s| study_query(vec![(0x0008_0050, b"SH", shape.accession(s))])),
        ),
    ];
    for (name, make) in kinds.iter() {
        time_kind(
            name,
            1000,
            || make(next(studies)),
            |q| find(index, Model::StudyRoot, &q).expect("query").len(),
        );
    }

    if let Ok(port) = std::env::var("FIND_PORT") {
        find_over_dicom_kinds(&port, shape, studies, &mut next);
    }
    if let Ok(port) = std::env::var("QIDO_PORT") {
        qido_kinds(&port, shape, studies, &mut next);
    }
}

/// Times 1,000 study-level C-FIND of each kind over one association to the `strata
/// serve` on `port` (a minimal dicom-ul client), values from random studies of `shape`.
fn find_over_dicom_kinds(
    port: &str,
    shape: Shape,
    studies: usize,
    next: &mut impl FnMut(usize) -> usize,
) {
    let mut assoc = dicom_ul::ClientAssociationOptions::new()
        .calling_ae_title("FINDBENCH")
        .with_presentation_context("1.2.840.10008.5.1.4.1.2.2.1", vec!["1.2.840.10008.1.2"])
        .establish_with(&format!("STRATA@127.0.0.1:{port}"))
        .expect("associate");
    println!("\n| over DICOM (one association, minimal client) | matches/query | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    let dicom_kinds = key_kinds(shape);
    let mut msg = 0u16;
    for (name, make) in dicom_kinds.iter() {
        time_kind(
            name,
            1000,
            || {
                let (g, e, v) = make(next(studies));
                msg = msg.wrapping_add(1);
                (msg, identifier((g, e, &v)))
            },
            |(msg, id)| find_over_dicom(&mut assoc, msg, id),
        );
    }
    let _ = assoc.release();
}

/// Times 300 QIDO-RS study searches of each kind (PS3.18 10.6: `GET
/// /dicom-web/studies?PatientID=…`, `StudyDate=from-to`, `AccessionNumber=…`, Accept
/// application/dicom+json) on one kept-alive connection to the HTTP `port`, from the
/// request to the parsed JSON array; values from random studies of `shape`.
fn qido_kinds(port: &str, shape: Shape, studies: usize, next: &mut impl FnMut(usize) -> usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    println!("\n| QIDO-RS (one connection) | matches/query | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    let kinds = key_kinds(shape);
    for (name, make) in kinds.iter() {
        let prepare = || {
            let (g, e, v) = make(next(studies));
            format!("http://127.0.0.1:{port}/dicom-web/studies?{g:04X}{e:04X}={v}")
        };
        time_kind(name, 300, prepare, |url| {
            let answers: Vec<serde_json::Value> = rt.block_on(async {
                let r = client
                    .get(&url)
                    .header("Accept", "application/dicom+json")
                    .send()
                    .await
                    .expect("QIDO-RS request");
                if r.status() == reqwest::StatusCode::NO_CONTENT {
                    return Vec::new();
                }
                assert!(r.status().is_success(), "{url}: {}", r.status());
                r.json().await.expect("a JSON array")
            });
            answers.len()
        });
    }
}

/// Makes one (group, element, value) matching key from a random study number.
type KeyMaker = dyn Fn(usize) -> (u16, u16, String);

/// The three study-level query kinds as single matching keys of `shape`'s studies.
fn key_kinds(shape: Shape) -> [(&'static str, Box<KeyMaker>); 3] {
    [
        (
            "PatientID",
            Box::new(move |s| (0x0010, 0x0020, shape.patient_id(s))),
        ),
        (
            "StudyDate range (7 days)",
            Box::new(move |s| (0x0008, 0x0020, shape.week_from(s))),
        ),
        (
            "AccessionNumber",
            Box::new(move |s| (0x0008, 0x0050, shape.accession(s))),
        ),
    ]
}
