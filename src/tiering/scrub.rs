//! The scrubber: a background worker of `strata serve` that re-hashes every object in
//! every tier once per `[scrub] cycle`, never reading faster than `max_mb_per_s`.
//!
//! A hot object is re-hashed from its file; an object with cold copies also has each
//! copy read (one ranged GET of its pack member) and checked against its id, and so has
//! its replica in the cold tier, if it has one. Each check
//! is recorded in the index (`fixity`: when, ok or not, what was wrong) and counted in
//! the metrics; a failure is logged with the object, its location and its study, for
//! `strata verify --repair` to act on. The scrubber never changes data. Nodes that
//! share an index split the objects among them ([`scrubs`]).

use super::{blocking, Tiering, TieringError};
use crate::index::rocks::unix_ms_now;
use crate::index::{FixityRecord, ObjectRecord};
use std::time::{Duration, Instant};
use strata_tiers::ObjectId;
use tokio::sync::watch;

/// What one check of an object found.
struct Checked {
    /// Bytes read and hashed.
    bytes: u64,
    /// Copies actually read and hashed (a pack awaiting a restore is not).
    copies_read: usize,
    /// What is wrong, if anything.
    outcome: Result<(), String>,
    /// Copies that could not be checked now, and why (not failures).
    unchecked: Vec<String>,
}

/// Checks one object in each tier that holds it.
async fn check(t: &Tiering, id: &ObjectId, record: &ObjectRecord) -> Checked {
    let mut problems = Vec::new();
    let mut unchecked = Vec::new();
    let mut copies_read = 0;
    let mut bytes = 0;
    if record.hot_on(&t.node) {
        let (hot, oid) = (t.hot.clone(), *id);
        match blocking(move || Ok(hot.rehash_blocking(&oid)?)).await {
            Ok((actual, size)) => {
                bytes += size;
                copies_read += 1;
                if actual != *id {
                    problems.push(format!(
                        "hot copy {} hashes to {actual}",
                        t.hot.path_of(id).display()
                    ));
                }
            }
            Err(e) => problems.push(format!("hot copy {}: {e}", t.hot.path_of(id).display())),
        }
    }
    let reader = t.reader();
    for copy in &record.cold {
        // a pack in an archive storage class is never read by the scrubber: a read asks
        // S3 for a restore, which costs (retrieval fees, hours); its size is checked
        // with a HEAD, which does not
        let pack = copy.pack_id();
        let archived = match pack {
            Some(pack_id) => {
                let index = t.index.clone();
                blocking(move || Ok(index.pack(&pack_id)?))
                    .await
                    .ok()
                    .flatten()
                    .filter(|p| strata_tiers::cold::is_archive_class(&p.storage_class))
            }
            None => None,
        };
        if let (Some(record), Some(pack_id)) = (archived, pack) {
            use strata_tiers::BlobStore;
            match t.cold.head(&pack_id).await {
                Ok(meta) if meta.size == record.size => unchecked.push(format!(
                    "cold copy in pack {} not read: archived ({}), its size checked without a restore",
                    copy.pack, record.storage_class
                )),
                Ok(meta) => problems.push(format!(
                    "pack {} is {} bytes in the cold tier, the index says {}",
                    copy.pack, meta.size, record.size
                )),
                Err(e) => problems.push(format!("pack {}: {e}", copy.pack)),
            }
            continue;
        }
        // streamed through a hasher, never held whole (a member of gigabytes costs a
        // few chunks of memory); `Counted` says how many bytes came out
        match reader.pipe_copy(id, copy, Counted(0)).await {
            Ok(Counted(n)) => {
                bytes += n;
                copies_read += 1;
            }
            // archived: checked once restored, never counted as verified before
            Err(e) if e.is_pending_restore() => unchecked.push(format!(
                "cold copy in pack {} not checked: archived, restore pending",
                copy.pack
            )),
            Err(e) => problems.push(format!(
                "cold copy in pack {} at {}: {e}",
                copy.pack, copy.offset
            )),
        }
    }
    if record.replica {
        match reader.pipe_replica(id, Counted(0)).await {
            Ok(Counted(n)) => {
                bytes += n;
                copies_read += 1;
            }
            Err(e) => problems.push(format!("replica in the cold tier: {e}")),
        }
    }
    Checked {
        bytes,
        copies_read,
        outcome: if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        },
        unchecked,
    }
}

/// Whether `node` checks object `id` this cycle, of the `alive` nodes: its own hot
/// objects; not those hot on another live node; and, of the rest (cold only, or hot on
/// a node that is down), those for which `node` ranks first among the live nodes by
/// blake3(node id, object id) (rendezvous hashing: a node that goes down has its share
/// spread over the others at the next cycle). No live node recorded: every object.
fn scrubs(node: &str, alive: &[String], id: &ObjectId, record: &ObjectRecord) -> bool {
    if record.hot_on(node) {
        return true;
    }
    if record
        .hot_elsewhere(node)
        .is_some_and(|holder| alive.iter().any(|n| n == holder))
    {
        return false;
    }
    let rank = |n: &str| {
        let mut h = blake3::Hasher::new();
        h.update(n.as_bytes());
        h.update(id.as_bytes());
        *h.finalize().as_bytes()
    };
    alive
        .iter()
        .max_by_key(|n| rank(n))
        .is_none_or(|first| first == node)
}

/// Runs cycles until `stop` turns true.
pub async fn run_scrubber(t: Tiering, mut stop: watch::Receiver<bool>) {
    let cfg = t.config.scrub.clone();
    let cap = (cfg.max_mb_per_s.max(1) * 1_000_000) as f64;
    loop {
        let index = t.index.clone();
        let objects = match blocking(move || {
            let mut all = Vec::new();
            index.for_each_object(&mut |id, r| {
                all.push((id, r));
                true
            })?;
            Ok::<_, TieringError>(all)
        })
        .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "scrubber: cannot list objects");
                Vec::new()
            }
        };
        // nodes sharing the index split the work (docs/scale-out.md): each checks what
        // is hot on its own disk, and the cold-only objects the live nodes rank it first for
        let alive: Vec<String> = t
            .alive_nodes()
            .await
            .map(|nodes| nodes.into_iter().collect())
            .unwrap_or_default();
        let objects: Vec<_> = objects
            .into_iter()
            .filter(|(id, r)| scrubs(&t.node, &alive, id, r))
            .collect();
        let cycle_started = Instant::now();
        let per_object = cfg.cycle.div_f64(objects.len().max(1) as f64);
        for (n, (id, _)) in objects.iter().enumerate() {
            let started = Instant::now();
            // the list is as old as the cycle: take the object as it is now
            let (index, oid) = (t.index.clone(), *id);
            let Ok(Some(record)) = blocking(move || Ok(index.object(&oid)?)).await else {
                continue; // deleted since
            };
            let record = &record;
            let Checked {
                bytes,
                copies_read,
                outcome,
                unchecked,
            } = check(&t, id, record).await;
            if copies_read == 0 && outcome.is_ok() {
                // nothing could be read (every copy awaits a restore): no verdict, and
                // above all no "verified" (the previous record stays)
                tracing::info!(object = %id, reasons = %unchecked.join("; "), "fixity not checked this cycle");
                tokio::select! {
                    _ = tokio::time::sleep(per_object.saturating_sub(started.elapsed())) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            if let Some(m) = &t.metrics {
                m.scrub_objects.inc();
                m.scrub_bytes.inc_by(bytes);
                m.scrub_progress
                    .set((n + 1) as f64 / objects.len().max(1) as f64);
                if outcome.is_err() {
                    m.scrub_failures.inc();
                }
            }
            if let Err(detail) = &outcome {
                tracing::error!(
                    object = %id,
                    study = %record.study_uid,
                    instance = %record.sop_instance_uid,
                    %detail,
                    "FIXITY FAILURE: run `strata verify --repair`"
                );
            }
            let ok = outcome.is_ok();
            let mut detail = outcome.err().unwrap_or_default();
            for note in unchecked {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(&note);
            }
            let fixity = FixityRecord {
                verified_at_ms: unix_ms_now(),
                ok,
                detail,
            };
            let (index, oid) = (t.index.clone(), *id);
            let _ = blocking(move || Ok(index.record_fixity(&oid, &fixity)?)).await;
            // pace: never above the bandwidth cap, and spread over the cycle
            let wait = Duration::from_secs_f64(bytes as f64 / cap)
                .max(per_object)
                .saturating_sub(started.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
        tracing::info!(
            objects = objects.len(),
            seconds = cycle_started.elapsed().as_secs(),
            "scrub cycle complete"
        );
        if objects.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(cfg.cycle.min(Duration::from_secs(60))) => {}
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// A writer that keeps only a count of what it was given.
struct Counted(u64);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hot_node: Option<&str>, tier: crate::index::Tier) -> ObjectRecord {
        ObjectRecord {
            size: 1,
            tier,
            cold: Vec::new(),
            study_uid: String::new(),
            series_uid: String::new(),
            sop_instance_uid: String::new(),
            sop_class_uid: String::new(),
            transfer_syntax_uid: String::new(),
            provenance: crate::index::Provenance {
                received_at_ms: 0,
                calling_ae: String::new(),
                source: String::new(),
                node: String::new(),
            },
            hot_node: hot_node.map(str::to_string),
            replica: false,
        }
    }

    #[test]
    fn live_nodes_split_the_objects_each_once() {
        use crate::index::Tier;
        let alive: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut per_node = [0usize; 3];
        for n in 0..300u32 {
            let id = ObjectId::of_bytes(&n.to_le_bytes());
            let cold = record(None, Tier::Cold);
            let takers: Vec<usize> = (0..3)
                .filter(|&i| scrubs(&alive[i], &alive, &id, &cold))
                .collect();
            assert_eq!(
                takers.len(),
                1,
                "a cold-only object is checked by exactly one node"
            );
            per_node[takers[0]] += 1;
            // hot on b: only b, while b is alive
            let on_b = record(Some("b"), Tier::Hot);
            assert!(scrubs("b", &alive, &id, &on_b));
            assert!(!scrubs("a", &alive, &id, &on_b) && !scrubs("c", &alive, &id, &on_b));
            // b down: one of a and c checks its cold copies
            let without_b = vec!["a".to_string(), "c".to_string()];
            let takers = ["a", "c"]
                .iter()
                .filter(|n| scrubs(n, &without_b, &id, &on_b))
                .count();
            assert_eq!(takers, 1);
        }
        assert!(
            per_node.iter().all(|&n| n > 50),
            "shares are even: {per_node:?}"
        );
        // a record from before nodes were named is the one node's own
        let id = ObjectId::of_bytes(b"x");
        assert!(scrubs(
            "a",
            &alive,
            &id,
            &record(None, crate::index::Tier::Hot)
        ));
    }
}
