//! What capturing an instance's metadata record costs at ingest (`src/dicom/metadata.rs`),
//! next to the header walk ingest already does for the index (`read_header_blocking`),
//! per object, on real files: dicom-object reading the data set up to its pixel data,
//! dicom-json, and zstd.
//!
//! `cargo bench --bench metadata_capture [-- DIR]` (default: the 1,000 generated CT
//! instances of `scripts/bench-move.sh` / `bench-dicomweb.sh`, 513 KB each). Prints the
//! mean per object of each step and the record's size.

use std::time::Instant;
use strata::dicom::header::read_header_blocking;
use strata::dicom::metadata::InstanceMetadata;

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "/var/tmp/strata-bench/move-data-1000".into());
    let mut paths = Vec::new();
    files(dir.as_ref(), &mut paths);
    paths.sort();
    assert!(!paths.is_empty(), "no files under {dir}");
    // warm the page cache: both steps then read from memory
    for p in &paths {
        let _ = std::fs::read(p);
    }
    let t = Instant::now();
    for p in &paths {
        read_header_blocking(p).expect("header");
    }
    let header = t.elapsed().as_secs_f64() / paths.len() as f64;
    let (mut parse, mut encode, mut bytes, mut json) = (0.0, 0.0, 0usize, 0usize);
    for p in &paths {
        let t = Instant::now();
        let m = InstanceMetadata::of_file(p).expect("metadata");
        parse += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let record = m.encode();
        encode += t.elapsed().as_secs_f64();
        bytes += record.len();
        json += m.json.len();
    }
    let n = paths.len() as f64;
    println!("metadata capture over {} objects in {dir}", paths.len());
    println!("| step (mean per object) | µs |");
    println!("|---|---:|");
    println!(
        "| header walk for the index (read_header_blocking) | {:.1} |",
        header * 1e6
    );
    println!(
        "| dicom-object read to pixel data + dicom-json | {:.1} |",
        parse / n * 1e6
    );
    println!("| zstd (level 1) of the JSON | {:.1} |", encode / n * 1e6);
    println!(
        "record: {:.0} bytes of JSON, {:.0} bytes stored",
        json as f64 / n,
        bytes as f64 / n
    );
}
