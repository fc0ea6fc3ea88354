//! Why group commit: makes N objects of 512 KiB durable on the hot disk with groups of 1,
//! 4, 16 and 64, and prints objects/s and the speed-up over one sync per object.
//!
//! `cargo bench --bench group_commit` (runs in a temp dir under /var/tmp, a real disk).
//! The side-by-side ingest benchmark against Orthanc and storescp is
//! `scripts/bench-ingest.sh`; see docs/benchmarks.md.

use std::time::Instant;
use strata_tiers::{HotDisk, ObjectId};

fn main() {
    let n: usize = std::env::var("OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let base = std::path::Path::new("/var/tmp");
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut v = vec![0u8; 512 * 1024];
            for (j, b) in v.iter_mut().enumerate() {
                *b = ((i * 7919 + j * 31) % 251) as u8;
            }
            v
        })
        .collect();
    println!("| group size | objects/s | MB/s | speed-up |");
    println!("|---:|---:|---:|---:|");
    let mut baseline = None;
    for group in [1usize, 4, 16, 64] {
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        let hot = HotDisk::open(dir.path()).expect("hot disk");
        let started = Instant::now();
        for chunk in payloads.chunks(group) {
            let items = chunk
                .iter()
                .map(|p| {
                    let mut tmp = hot.create_tmp_blocking().expect("tmp");
                    tmp.write_all_blocking(p).expect("write");
                    (tmp, ObjectId::of_bytes(p))
                })
                .collect();
            for r in hot.persist_batch_blocking(items) {
                r.expect("persist");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = n as f64 / secs;
        let base_rate = *baseline.get_or_insert(rate);
        println!(
            "| {group} | {rate:.0} | {:.0} | {:.2}× |",
            rate * 512.0 * 1024.0 / 1e6,
            rate / base_rate
        );
    }
}
