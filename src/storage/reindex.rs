//! `strata reindex`: rebuilds the index from the hot objects and the cold packs alone
//! (DESIGN promise 5), then swaps it in atomically. Tombstones and legal holds, which
//! the objects do not carry, are carried over from the old index when there is one and
//! from the governance log ([`super::governance_log`]), so they survive a lost index.
//!
//! ## Crash consistency
//! The new index is built beside the old one (`index.rebuild`), then `index` becomes
//! `index.old`, `index.rebuild` becomes `index`, the directory is synced and `index.old`
//! removed; [`super::finish_interrupted_reindex`] completes or undoes an interrupted
//! swap at the next opening. On PostgreSQL the new index is a table beside the index's,
//! put in its place in one transaction (nothing to undo; an interrupted build leaves a
//! table the next reindex drops). Unusable objects are quarantined only after the swap.

use super::governance_log::{self, GovernanceLog};
use super::{
    finish_interrupted_reindex, index_objects_blocking, io, quarantine, rebuild_dirs, ArchiveLock,
    StorageError,
};
use crate::config::{Config, IndexBackend};
use crate::index::{Index, IndexError, PgIndex, RocksIndex};
use crate::tiering::reader::download_pack_blocking;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use strata_tiers::{ColdStore, HotDisk, ObjectId};

type Result<T> = std::result::Result<T, StorageError>;

#[derive(Debug, Default, Serialize)]
pub struct ReindexReport {
    pub objects_found: usize,
    pub indexed: usize,
    pub quarantined: Vec<String>,
    pub studies: usize,
    /// Cold packs read and recorded.
    pub packs: usize,
    /// Objects indexed from cold packs alone (no hot file).
    pub cold_only_objects: usize,
    /// Files of deleted studies removed (a deletion interrupted after its tombstone).
    pub deleted_files: usize,
    /// Cold packs of deleted studies, skipped.
    pub deleted_packs: usize,
    /// Replicas of single objects found in the cold tier (nodes that replicate), and
    /// how many of their objects had no other copy (indexed from the replica alone).
    #[serde(default)]
    pub replicas: usize,
    #[serde(default)]
    pub replica_only_objects: usize,
    /// Objects of deleted studies that were stored again after the deletion (found in
    /// hot, or in cold after a finished deletion or in a pack it did not name): live.
    pub stored_again: usize,
    /// Packs that could not be used (unreadable, corrupt, or awaiting a restore), with
    /// the reason. Their objects are indexed only if another copy exists.
    pub packs_skipped: Vec<(String, String)>,
    /// Objects the current index records with a verified cold copy that the rebuilt one
    /// lacks (their pack was not listed, or could not be read): (object id, study).
    pub cold_objects_not_found: Vec<(String, String)>,
    /// Whether the rebuilt index replaced the current one. Not when packs were skipped
    /// or objects safely in cold were not found, unless forced: the current index is
    /// then left as it was.
    pub swapped: bool,
}

/// Rebuilds the index from the hot objects and the cold packs alone, then swaps it in
/// atomically — unless that would drop what the current index records as safely in
/// cold without having read it (a pack skipped, or not listed yet: an S3 LIST may lag
/// behind its PUTs), in which case the current index stays, unless `force`.
pub fn reindex(
    config: &Config,
    progress: &indicatif::ProgressBar,
    force: bool,
) -> Result<ReindexReport> {
    let data_dir = &config.archive.data_dir;
    std::fs::create_dir_all(data_dir).map_err(io("create", data_dir))?;
    let _lock = ArchiveLock::acquire(data_dir, "reindex")?;
    finish_interrupted_reindex(data_dir)?;
    // the packs of a lost index are unknown: a recorded cold tier must be the configured one
    let target = Target::of(config)?;
    let old = target.current()?;
    super::cold_tier::check(config, true, || match &old {
        None => Ok(true),
        Some(old) => Ok(!old.packs()?.is_empty()),
    })?;
    // a node restored from the bucket takes the archive id its cold tier names; a cold
    // tier another archive claimed is refused
    {
        let cold = ColdStore::open(&config.cold_spec())?;
        match super::runtime()?.block_on(super::cold_tier::claim(
            config,
            &cold,
            true,
            old.as_deref(),
        )) {
            Ok(()) => {}
            Err(e @ StorageError::ColdTierClaimed { .. }) => return Err(e),
            Err(e) => tracing::warn!(error = %e, "the cold tier's marker could not be checked"),
        }
    }
    let hot = HotDisk::open(config.hot_dir())?;
    hot.sweep_tmp_blocking()?;
    let (ids, strays) = hot.list_blocking()?;
    for stray in strays {
        tracing::warn!(path = %stray.display(), "ignoring a file that is not an object");
    }
    progress.set_length(ids.len() as u64);
    let mut report = ReindexReport {
        objects_found: ids.len(),
        ..Default::default()
    };
    // tombstones and holds are not derivable from the objects: carry them over
    // (objects of a tombstone that were stored again since are live, not deleted)
    let (tombstones, holds, live_again) = if let Some(old) = &old {
        let tombstones = old.tombstones()?;
        let mut holds = Vec::new();
        for (study, _) in old.studies()? {
            let standing = old.holds(&study)?;
            if !standing.is_empty() {
                holds.push((study, standing));
            }
        }
        let mut live_again = HashSet::new();
        for t in &tombstones {
            for (_, _, id) in &t.objects {
                if let Some(id) = ObjectId::from_hex(id) {
                    if old.has_object(&id)? {
                        live_again.insert(id);
                    }
                }
            }
        }
        (tombstones, holds, live_again)
    } else {
        (Vec::new(), Vec::new(), HashSet::new())
    };
    // (a PostgreSQL index is never missing, but may have been emptied: as good as lost)
    let had_index = match &old {
        None => false,
        Some(old) => {
            !matches!(target, Target::Postgres { .. })
                || !old.studies()?.is_empty()
                || !old.tombstones()?.is_empty()
        }
    };
    let (mut tombstones, mut holds, mut live_again) = (tombstones, holds, live_again);
    // ... and the governance log keeps them when the index is gone (promise 5): a hold
    // in either is kept; a tombstone the index lacks is restored, except for objects
    // whose hot file was written after the deletion (stored again since)
    let logged = governance_records(config)?;
    let (log_holds, log_tombstones) = governance_log::replay(&logged);
    for (study, logged) in log_holds {
        match holds.iter_mut().find(|(s, _)| *s == study) {
            Some((_, standing)) => {
                for hold in logged {
                    if !standing.contains(&hold) {
                        standing.push(hold);
                    }
                }
            }
            None => holds.push((study, logged)),
        }
    }
    for (t, finished) in log_tombstones {
        let known = tombstones
            .iter()
            .any(|k| k.study_uid == t.study_uid && k.deleted_at_ms == t.deleted_at_ms);
        if known {
            continue;
        }
        if !had_index && finished {
            // nothing of it was left: whatever is found now was stored again
            live_again.extend(
                t.objects
                    .iter()
                    .filter_map(|(_, _, id)| ObjectId::from_hex(id)),
            );
        } else if !had_index {
            for (_, _, id) in &t.objects {
                let Some(id) = ObjectId::from_hex(id) else {
                    continue;
                };
                let written_ms = std::fs::metadata(hot.path_of(&id))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64);
                if written_ms.is_some_and(|w| w > t.deleted_at_ms) {
                    live_again.insert(id);
                }
            }
        }
        tombstones.push(t);
    }
    let unusable;
    let rebuilt = target.open_rebuild()?;
    {
        let rebuilt = rebuilt.index();
        let live: Vec<ObjectId> = live_again.iter().copied().collect();
        for t in &tombstones {
            rebuilt.restore_tombstone(t, &live)?;
        }
        for (study, h) in &holds {
            rebuilt.set_holds(study, h)?;
        }
        // patient identity changes live in the governance log only (not in the objects,
        // which keep the identity they arrived with): replayed in order
        for change in governance_log::patient_changes(&logged) {
            rebuilt.set_patient_links(&change.links, change.message())?;
        }
        for record in &logged {
            if let governance_log::GovernanceRecord::Rejection {
                instances,
                rejection,
            } = record
            {
                rebuilt.reject_instances(instances, rejection)?;
            }
        }
        let mut live = Vec::with_capacity(ids.len());
        for id in ids {
            if rebuilt.deleted_object(&id)?.is_some() && !live_again.contains(&id) {
                let path = hot.path_of(&id);
                tracing::warn!(object = %id, "finishing an interrupted deletion");
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                report.deleted_files += 1;
            } else {
                live.push(id);
            }
        }
        let (indexed, quarantined) = index_objects_blocking(
            &hot,
            rebuilt,
            &live,
            "reindex",
            &config.cluster.node(),
            config.replicates(),
            || progress.inc(1),
        )?;
        report.indexed = indexed;
        unusable = quarantined;
        reindex_cold(config, rebuilt, &mut report)?;
        // so do the issuers senders' configured defaults gave the studies' patients
        rebuilt.set_patient_issuers(&governance_log::default_issuers(&logged))?;
        for t in &tombstones {
            for (_, _, id) in &t.objects {
                if ObjectId::from_hex(id).is_some_and(|id| rebuilt.has_object(&id).unwrap_or(false))
                {
                    report.stored_again += 1;
                }
            }
        }
        report.studies = rebuilt.studies()?.len();
        // the archive's id goes with the index (the nodes sharing it share the id)
        let id = match old.as_ref().map(|o| o.archive_id()).transpose()?.flatten() {
            Some(id) => Some(id),
            None => super::cold_tier::recorded_archive_id(data_dir)?,
        };
        if let Some(id) = id {
            rebuilt.set_archive_id(&id)?;
        }
        if let Some(old) = old.as_ref().filter(|_| had_index) {
            let mut missing = Vec::new();
            old.for_each_object(&mut |id, record| {
                if !record.cold.is_empty() {
                    missing.push((id, record.study_uid));
                }
                true
            })?;
            for (id, study) in missing {
                if !rebuilt.has_object(&id)? && rebuilt.deleted_object(&id)?.is_none() {
                    report.cold_objects_not_found.push((id.to_hex(), study));
                }
            }
        }
    }
    if !force && (!report.cold_objects_not_found.is_empty() || !report.packs_skipped.is_empty()) {
        tracing::warn!(
            not_found = report.cold_objects_not_found.len(),
            packs_skipped = report.packs_skipped.len(),
            "reindex: the rebuilt index lacks what the current one records in cold; the current index stays"
        );
        drop(old);
        target.discard(rebuilt)?;
        return Ok(report);
    }
    report.swapped = true;
    drop(old);
    target.swap(rebuilt)?;
    // Only now, with the rebuilt index (which lacks them) in place, move unusable
    // objects aside: an interrupted reindex leaves the old index whole.
    for path in unusable {
        report
            .quarantined
            .push(quarantine(data_dir, &path)?.display().to_string());
    }
    Ok(report)
}

/// Where the index is rebuilt and how it replaces the current one.
enum Target {
    /// RocksDB under the data directory: built in `index.rebuild`, swapped by renames
    /// (`index` → `index.old`, `index.rebuild` → `index`; see the module docs).
    Rocks {
        data_dir: std::path::PathBuf,
        index_dir: std::path::PathBuf,
        rebuild_dir: std::path::PathBuf,
        old_dir: std::path::PathBuf,
    },
    /// PostgreSQL: built in a table beside the index's, swapped in one transaction
    /// ([`crate::index::PgEngine::swap_into_place`]); every node sees the old index or
    /// the new one. Other nodes must be stopped while it runs (docs/scale-out.md).
    Postgres {
        url: String,
        password: Option<String>,
        /// `[index] ca_file`, for TLS when the URL asks for it.
        ca_file: Option<std::path::PathBuf>,
    },
}

/// An index being rebuilt.
enum Rebuilt {
    Rocks(Box<RocksIndex>),
    Postgres(Box<PgIndex>),
}

impl Rebuilt {
    fn index(&self) -> &dyn Index {
        match self {
            Rebuilt::Rocks(i) => i.as_ref(),
            Rebuilt::Postgres(i) => i.as_ref(),
        }
    }
}

impl Target {
    fn of(config: &Config) -> Result<Self> {
        Ok(match config.index.backend {
            IndexBackend::Rocksdb => {
                let (index_dir, rebuild_dir, old_dir) = rebuild_dirs(config);
                Target::Rocks {
                    data_dir: config.archive.data_dir.clone(),
                    index_dir,
                    rebuild_dir,
                    old_dir,
                }
            }
            IndexBackend::Postgres => Target::Postgres {
                url: config.index.url.clone(),
                password: config
                    .index
                    .password()
                    .map_err(|e| StorageError::Index(IndexError::Storage(e.to_string())))?,
                ca_file: config.index.ca().map(std::path::Path::to_path_buf),
            },
        })
    }

    /// The current index, when there is one.
    fn current(&self) -> Result<Option<Box<dyn Index>>> {
        Ok(match self {
            Target::Rocks { index_dir, .. } if index_dir.join("CURRENT").exists() => {
                Some(Box::new(RocksIndex::open_primary(index_dir)?))
            }
            Target::Rocks { .. } => None,
            Target::Postgres {
                url,
                password,
                ca_file,
            } => Some(Box::new(PgIndex::open_postgres_with(
                url,
                password.as_deref(),
                ca_file.as_deref(),
            )?)),
        })
    }

    /// A new, empty index to rebuild into.
    fn open_rebuild(&self) -> Result<Rebuilt> {
        Ok(match self {
            Target::Rocks { rebuild_dir, .. } => {
                Rebuilt::Rocks(Box::new(RocksIndex::open_primary(rebuild_dir)?))
            }
            Target::Postgres {
                url,
                password,
                ca_file,
            } => Rebuilt::Postgres(Box::new(PgIndex::open_postgres_rebuild(
                url,
                password.as_deref(),
                ca_file.as_deref(),
            )?)),
        })
    }

    /// Leaves the current index as it is and drops the rebuilt one.
    fn discard(&self, rebuilt: Rebuilt) -> Result<()> {
        match (self, rebuilt) {
            (Target::Rocks { rebuild_dir, .. }, rebuilt) => {
                drop(rebuilt);
                std::fs::remove_dir_all(rebuild_dir).map_err(io("remove", rebuild_dir))
            }
            (Target::Postgres { .. }, Rebuilt::Postgres(rebuilt)) => {
                Ok(rebuilt.engine().discard()?)
            }
            (Target::Postgres { .. }, Rebuilt::Rocks(_)) => {
                unreachable!("a PostgreSQL target rebuilds in PostgreSQL")
            }
        }
    }

    /// Puts the rebuilt index in the current one's place, atomically.
    fn swap(&self, rebuilt: Rebuilt) -> Result<()> {
        match (self, rebuilt) {
            (
                Target::Rocks {
                    data_dir,
                    index_dir,
                    rebuild_dir,
                    old_dir,
                },
                rebuilt,
            ) => {
                drop(rebuilt);
                // index -> index.old, index.rebuild -> index, then drop index.old
                if index_dir.exists() {
                    std::fs::rename(index_dir, old_dir).map_err(io("move aside", index_dir))?;
                }
                std::fs::rename(rebuild_dir, index_dir)
                    .map_err(io("move into place", rebuild_dir))?;
                std::fs::File::open(data_dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("fsync", data_dir))?;
                if old_dir.exists() {
                    std::fs::remove_dir_all(old_dir).map_err(io("remove", old_dir))?;
                }
                Ok(())
            }
            (Target::Postgres { .. }, Rebuilt::Postgres(rebuilt)) => {
                Ok(rebuilt.engine().swap_into_place()?)
            }
            (Target::Postgres { .. }, Rebuilt::Rocks(_)) => {
                unreachable!("a PostgreSQL target rebuilds in PostgreSQL")
            }
        }
    }
}

/// The governance log's records: the local log, or its copies in the cold tier when they
/// go further (a node restored from the bucket alone). Either must hold its chain.
fn governance_records(config: &Config) -> Result<Vec<governance_log::GovernanceRecord>> {
    let data_dir = &config.archive.data_dir;
    let local = GovernanceLog::new(data_dir).read()?;
    let cold = ColdStore::open(&config.cold_spec())?;
    let copies = match super::runtime()?.block_on(cold.get_named_under("governance")) {
        Ok(copies) => copies,
        Err(e) => {
            tracing::warn!(error = %e, "the governance records in the cold tier cannot be listed; using the local log");
            return Ok(local);
        }
    };
    let lines: Vec<(u64, Vec<u8>)> = copies
        .into_iter()
        .map(|(key, bytes)| {
            let seq = key
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (seq, bytes.to_vec())
        })
        .collect();
    match governance_log::records_of(&lines) {
        Ok(records) if records.len() > local.len() => Ok(records),
        Ok(_) => Ok(local),
        Err((i, why)) => Err(StorageError::Io {
            action: "check",
            path: data_dir.join("governance (cold tier copies)"),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("governance record {} in the cold tier: {why}", i + 1),
            ),
        }),
    }
}

/// Adds every pack in the cold tier to a rebuilt index: members already indexed from a
/// hot file gain their cold copy; the others are indexed from the pack alone.
fn reindex_cold(config: &Config, rebuilt: &dyn Index, report: &mut ReindexReport) -> Result<()> {
    use crate::index::NewObject;
    let cold = ColdStore::open(&config.cold_spec())?;
    let rt = super::runtime()?;
    let tmp_dir = config.pack_tmp_dir();
    std::fs::create_dir_all(&tmp_dir).map_err(io("create", &tmp_dir))?;
    // the packs each deleted object was deleted with
    let mut deleted_with: HashMap<ObjectId, HashSet<String>> = HashMap::new();
    // the packs partial deletions (some instances of a study) named
    let mut deleted_by_partial: HashSet<String> = HashSet::new();
    for t in rebuilt.tombstones()? {
        if t.partial {
            deleted_by_partial.extend(t.packs.iter().cloned());
        }
        for (_, _, id) in &t.objects {
            if let Some(id) = ObjectId::from_hex(id) {
                deleted_with
                    .entry(id)
                    .or_default()
                    .extend(t.packs.iter().cloned());
            }
        }
    }
    let listed = rt.block_on(cold.list_detailed())?;
    for (pack_id, _size, modified_ms) in listed {
        let key = cold.key_of(&pack_id);
        let file = match download_pack_blocking(&cold, rt.handle(), &pack_id, &tmp_dir) {
            Ok(file) => file,
            Err(reason) => {
                tracing::warn!(pack = %key, %reason, "reindex: pack skipped");
                report.packs_skipped.push((key, reason));
                continue;
            }
        };
        let size = file
            .as_file()
            .metadata()
            .map_err(io("stat", file.path()))?
            .len();
        let mut news: BTreeMap<ObjectId, NewObject> = BTreeMap::new();
        let scratch = tmp_dir.join(format!("member-{}", std::process::id()));
        let read = crate::tiering::pack::read_all(
            std::io::BufReader::new(file.reopen().map_err(io("open", file.path()))?),
            &mut |member, bytes| {
                let Some(id) = ObjectId::from_hex(&member.blake3) else {
                    return Ok(());
                };
                if rebuilt.has_object(&id).unwrap_or(false) {
                    return Ok(());
                }
                std::fs::write(&scratch, &bytes).map_err(|e| {
                    crate::tiering::pack::PackError::Malformed(format!("scratch file: {e}"))
                })?;
                let attrs = crate::dicom::header::read_header_blocking(&scratch).map_err(|e| {
                    crate::tiering::pack::PackError::CorruptMember {
                        name: member.name.clone(),
                        reason: e.to_string(),
                    }
                })?;
                news.insert(
                    id,
                    found_in_cold(id, bytes.len() as u64, attrs, &scratch, modified_ms, &key),
                );
                Ok(())
            },
        );
        let _ = std::fs::remove_file(&scratch);
        let manifest = match read {
            Ok(manifest) => manifest,
            Err(e) => {
                tracing::warn!(pack = %key, error = %e, "reindex: pack skipped");
                report.packs_skipped.push((key, e.to_string()));
                continue;
            }
        };
        // A member marked deleted is deleted in this pack only if the pack was deleted
        // with its study (named in the tombstone: a deletion to finish). In any other
        // pack it was stored again after the deletion and aged to cold: it lives.
        let mut still_deleted = HashSet::new();
        for m in &manifest.members {
            let Some(id) = ObjectId::from_hex(&m.blake3) else {
                continue;
            };
            let deleted_with_this_pack = deleted_with
                .get(&id)
                .is_some_and(|packs| packs.contains(&pack_id.to_hex()));
            if deleted_with_this_pack && rebuilt.deleted_object(&id)?.is_some() {
                still_deleted.insert(id);
                news.remove(&id);
            }
        }
        // a pack deleted with some instances of a study that stays: its other members
        // were recalled to hot disk before (and are indexed from there); the deletion
        // is to finish, not the pack to record
        let finished_elsewhere = |m: &crate::tiering::pack::Member| -> bool {
            ObjectId::from_hex(&m.blake3).is_some_and(|id| {
                still_deleted.contains(&id)
                    || (deleted_by_partial.contains(&pack_id.to_hex())
                        && rebuilt
                            .object(&id)
                            .ok()
                            .flatten()
                            .is_some_and(|r| r.tier == crate::index::Tier::Hot))
            })
        };
        if !manifest.members.is_empty() && manifest.members.iter().all(finished_elsewhere) {
            report.deleted_packs += 1;
            continue;
        }
        let storage_class = rt
            .block_on(cold.storage_class(&pack_id))
            .ok()
            .flatten()
            .unwrap_or_else(|| "STANDARD".into());
        let record = crate::tiering::mover::pack_record(
            &manifest,
            size,
            &storage_class,
            modified_ms.max(0) as u64,
        );
        report.cold_only_objects += news.len();
        let mut members = crate::tiering::mover::packed_objects(&pack_id, &manifest, &mut |m| {
            ObjectId::from_hex(&m.blake3).and_then(|id| news.remove(&id))
        });
        members.retain(|m| !still_deleted.contains(&m.id));
        rebuilt.record_pack(&pack_id, &record, &members)?;
        report.packs += 1;
    }
    reindex_replicas(&cold, &rt, &tmp_dir, rebuilt, report)
}

/// An object `reindex` found in the cold tier only (in a pack, or a replica at `key`,
/// last modified at `modified_ms`), its bytes in `scratch`.
fn found_in_cold(
    id: ObjectId,
    size: u64,
    attrs: crate::dicom::header::InstanceAttrs,
    scratch: &std::path::Path,
    modified_ms: i64,
    key: &str,
) -> crate::index::NewObject {
    crate::index::NewObject {
        id,
        size,
        attrs,
        dataset: None,
        metadata: crate::dicom::metadata::capture_blocking(scratch),
        replicate: false,
        provenance: crate::index::Provenance {
            received_at_ms: modified_ms.max(0) as u64,
            calling_ae: "reindex".into(),
            source: format!("cold:{key}"),
            node: String::new(),
        },
    }
}

/// Records the replicas of single objects in the cold tier: on objects indexed from hot
/// disk or packs, and, for an object with no other copy (its node's disk lost before its
/// study aged), the object itself, cold, from its replica (checked against its id). A
/// replica of a deleted object finishes its deletion.
fn reindex_replicas(
    cold: &ColdStore,
    rt: &tokio::runtime::Runtime,
    tmp_dir: &std::path::Path,
    rebuilt: &dyn Index,
    report: &mut ReindexReport,
) -> Result<()> {
    use crate::index::Tier;
    use futures::StreamExt;
    use strata_tiers::BlobStore;
    let replicas = cold.replicas();
    for (id, _size, modified_ms) in rt.block_on(replicas.list_detailed())? {
        if rebuilt.deleted_object(&id)?.is_some() && !rebuilt.has_object(&id)? {
            rt.block_on(replicas.delete(&id))?;
            continue;
        }
        report.replicas += 1;
        if rebuilt.has_object(&id)? {
            rebuilt.set_replicated("", &[id], true)?;
            continue;
        }
        let scratch = tmp_dir.join(format!("replica-{}", std::process::id()));
        let fetched: std::result::Result<u64, String> = rt.block_on(async {
            let mut file = std::fs::File::create(&scratch).map_err(|e| e.to_string())?;
            let mut stream = replicas
                .stream_range(&id, None)
                .await
                .map_err(|e| e.to_string())?;
            let (mut hasher, mut size) = (blake3::Hasher::new(), 0u64);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                std::io::Write::write_all(&mut file, &chunk).map_err(|e| e.to_string())?;
            }
            let actual = ObjectId::from_hash(hasher.finalize());
            if actual != id {
                return Err(format!("its bytes hash to {actual}"));
            }
            Ok(size)
        });
        let indexed = fetched.and_then(|size| {
            let attrs =
                crate::dicom::header::read_header_blocking(&scratch).map_err(|e| e.to_string())?;
            let key = replicas.key_of(&id);
            let object = found_in_cold(id, size, attrs, &scratch, modified_ms, &key);
            let index_err = |e: crate::index::IndexError| e.to_string();
            rebuilt.commit(&[object]).map_err(index_err)?;
            rebuilt
                .set_tier(&[id], Tier::Cold, None)
                .map_err(index_err)?;
            rebuilt.set_replicated("", &[id], true).map_err(index_err)
        });
        let _ = std::fs::remove_file(&scratch);
        match indexed {
            Ok(()) => report.replica_only_objects += 1,
            Err(reason) => {
                let key = replicas.key_of(&id);
                tracing::warn!(replica = %key, %reason, "reindex: replica skipped");
                report.packs_skipped.push((key, reason));
            }
        }
    }
    Ok(())
}
