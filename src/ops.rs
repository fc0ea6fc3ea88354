//! The archive operations behind the CLI: listing, showing, exporting, verifying,
//! reindexing and importing. Each returns a serialisable report; `main.rs` prints it.
//! All of them block (they run on plain threads in the CLI process).

use crate::archive::{
    finish_interrupted_reindex, index_objects_blocking, quarantine, rebuild_dirs, ArchiveLock,
    ReadOnlyArchive,
};
use crate::config::Config;
use crate::dicom::part10::is_valid_uid;
use crate::index::{Index, InstanceEntry, ObjectRecord, RocksIndex, StudyRecord, Tier};
use crate::ingest::{Ingest, IngestError};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use strata_tiers::{ColdStore, HotDisk, ObjectId};

#[derive(Debug, Serialize)]
pub struct StudySummary {
    pub study_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub study_date: String,
    pub accession_number: String,
    pub study_description: String,
    pub modalities: Vec<String>,
    pub series: u64,
    pub instances: u64,
    pub objects: u64,
    pub bytes: u64,
    /// Last store or retrieval (ms since the epoch), for the tiering policy.
    pub last_access_ms: Option<u64>,
}

impl StudySummary {
    fn new(study_uid: String, s: StudyRecord) -> Self {
        StudySummary {
            last_access_ms: None,
            study_uid,
            patient_id: s.patient_id,
            patient_name: s.patient_name,
            study_date: s.study_date,
            accession_number: s.accession_number,
            study_description: s.study_description,
            modalities: s.modalities,
            series: s.series,
            instances: s.instances,
            objects: s.objects,
            bytes: s.bytes,
        }
    }
}

pub fn list_studies(index: &dyn Index) -> Result<Vec<StudySummary>> {
    index
        .studies()?
        .into_iter()
        .map(|(uid, s)| {
            let last_access_ms = index.last_access(&uid)?;
            Ok(StudySummary {
                last_access_ms,
                ..StudySummary::new(uid, s)
            })
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct VersionView {
    pub id: String,
    pub size: u64,
    pub received_at_ms: u64,
    /// `hot` (a file on hot disk) or `cold` (only in packs).
    pub tier: String,
    /// The hot file, or the first cold copy as `key@offset`.
    pub location: String,
    /// Every verified copy in a cold pack.
    pub cold_copies: Vec<ColdCopyView>,
    /// The scrubber's latest check of this object.
    pub last_verified: Option<crate::index::FixityRecord>,
    pub calling_ae: String,
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct ColdCopyView {
    pub pack: String,
    pub key: String,
    pub offset: u64,
    pub stored_size: u64,
    pub compression: crate::tiering::pack::Compression,
}

/// Where the archive's tiers are, for the views that name locations.
#[derive(Clone, Copy)]
pub struct Tiers<'a> {
    pub hot: &'a HotDisk,
    pub cold: &'a ColdStore,
}

impl<'a> Tiers<'a> {
    pub fn of(archive: &'a ReadOnlyArchive) -> Self {
        Tiers {
            hot: &archive.hot,
            cold: &archive.cold,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InstanceView {
    pub sop_instance_uid: String,
    pub series_uid: String,
    pub study_uid: String,
    pub sop_class_uid: String,
    pub instance_number: String,
    pub transfer_syntax_uid: String,
    /// Every kept version, oldest first; the last one is served.
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Serialize)]
pub struct SeriesView {
    pub series_uid: String,
    pub modality: String,
    pub series_number: String,
    pub series_description: String,
    pub instances: Vec<InstanceView>,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct StudyView {
    pub study: StudySummary,
    pub series: Vec<SeriesView>,
}

fn version_views(
    tiers: Tiers<'_>,
    index: &dyn Index,
    entry: &InstanceEntry,
) -> Result<Vec<VersionView>> {
    entry
        .record
        .versions
        .iter()
        .map(|v| {
            let id = ObjectId::from_hex(&v.id).context("index holds a malformed object id")?;
            let rec: Option<ObjectRecord> = index.object(&id)?;
            let cold_copies: Vec<ColdCopyView> = rec
                .iter()
                .flat_map(|r| r.cold.iter())
                .map(|c| ColdCopyView {
                    key: c
                        .pack_id()
                        .map(|p| tiers.cold.key_of(&p))
                        .unwrap_or_default(),
                    pack: c.pack.clone(),
                    offset: c.offset,
                    stored_size: c.stored_size,
                    compression: c.compression,
                })
                .collect();
            let hot_copy = rec.as_ref().is_none_or(|r| r.tier == Tier::Hot);
            let location = match (hot_copy, cold_copies.first()) {
                (false, Some(c)) => format!("{}@{}", c.key, c.offset),
                _ => tiers.hot.path_of(&id).display().to_string(),
            };
            Ok(VersionView {
                id: v.id.clone(),
                size: v.size,
                received_at_ms: v.received_at_ms,
                tier: if hot_copy { "hot" } else { "cold" }.into(),
                location,
                cold_copies,
                last_verified: index.fixity(&id)?,
                calling_ae: rec
                    .as_ref()
                    .map(|r| r.provenance.calling_ae.clone())
                    .unwrap_or_default(),
                source: rec.map(|r| r.provenance.source).unwrap_or_default(),
            })
        })
        .collect()
}

fn instance_view(tiers: Tiers<'_>, index: &dyn Index, e: &InstanceEntry) -> Result<InstanceView> {
    Ok(InstanceView {
        sop_instance_uid: e.sop_instance_uid.clone(),
        series_uid: e.series_uid.clone(),
        study_uid: e.study_uid.clone(),
        sop_class_uid: e.record.sop_class_uid.clone(),
        instance_number: e.record.instance_number.clone(),
        transfer_syntax_uid: e.record.transfer_syntax_uid.clone(),
        versions: version_views(tiers, index, e)?,
    })
}

/// A study with its series and instances (`ls STUDY`, `show STUDY`).
pub fn study_view(
    tiers: Tiers<'_>,
    index: &dyn Index,
    study_uid: &str,
) -> Result<Option<StudyView>> {
    let Some(summary) = list_study(index, study_uid)? else {
        return Ok(None);
    };
    let mut by_series: BTreeMap<String, Vec<InstanceView>> = BTreeMap::new();
    for e in index.instances_of_study(study_uid)? {
        by_series
            .entry(e.series_uid.clone())
            .or_default()
            .push(instance_view(tiers, index, &e)?);
    }
    let mut series = Vec::new();
    for (series_uid, rec) in index.series_of_study(study_uid)? {
        let mut instances = by_series.remove(&series_uid).unwrap_or_default();
        instances.sort_by(|a, b| {
            natural(&a.instance_number)
                .cmp(&natural(&b.instance_number))
                .then(a.sop_instance_uid.cmp(&b.sop_instance_uid))
        });
        series.push(SeriesView {
            series_uid,
            modality: rec.modality,
            series_number: rec.series_number,
            series_description: rec.series_description,
            instances,
            bytes: rec.bytes,
        });
    }
    Ok(Some(StudyView {
        study: summary,
        series,
    }))
}

fn natural(n: &str) -> (i64, String) {
    (n.trim().parse().unwrap_or(i64::MAX), n.to_string())
}

fn list_study(index: &dyn Index, study_uid: &str) -> Result<Option<StudySummary>> {
    Ok(index
        .study(study_uid)?
        .map(|s| StudySummary::new(study_uid.to_string(), s)))
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Shown {
    Study(StudyView),
    Series {
        study_uid: String,
        series: SeriesView,
    },
    Instance(InstanceView),
}

/// Whatever `uid` names: a study, a series or an instance.
pub fn show(tiers: Tiers<'_>, index: &dyn Index, uid: &str) -> Result<Option<Shown>> {
    if let Some(view) = study_view(tiers, index, uid)? {
        return Ok(Some(Shown::Study(view)));
    }
    if let Some((study_uid, _)) = index.series(uid)? {
        let view =
            study_view(tiers, index, &study_uid)?.context("series refers to a missing study")?;
        if let Some(series) = view.series.into_iter().find(|s| s.series_uid == uid) {
            return Ok(Some(Shown::Series { study_uid, series }));
        }
    }
    if let Some(entry) = index.instance(uid)? {
        return Ok(Some(Shown::Instance(instance_view(tiers, index, &entry)?)));
    }
    Ok(None)
}

#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    pub studies: usize,
    pub files: usize,
    pub bytes: u64,
}

/// Writes `out/<study>/<series>/<sop>.dcm` for the served version of every instance,
/// byte-identical to the stored object (so `b3sum` of each file equals its id). Objects
/// in the cold tier are read from their packs, one streamed GET per pack; an object
/// whose pack awaits a restore fails the export with "pending restore".
pub fn export(archive: &ReadOnlyArchive, studies: &[String], out: &Path) -> Result<ExportReport> {
    let index = archive.index.as_ref();
    let reader = archive.reader();
    let rt = runtime()?;
    let mut report = ExportReport::default();
    for study in studies {
        if !is_valid_uid(study) {
            bail!("{study:?} is not a valid Study Instance UID");
        }
        let entries = index.instances_of_study(study)?;
        if entries.is_empty() {
            bail!("no study {study} in the archive");
        }
        let mut dest_of: BTreeMap<ObjectId, PathBuf> = BTreeMap::new();
        for e in entries {
            if !(is_valid_uid(&e.study_uid)
                && is_valid_uid(&e.series_uid)
                && is_valid_uid(&e.sop_instance_uid))
            {
                bail!("index entry with an invalid UID in study {study}; run `strata verify`");
            }
            let current = e.record.current().context("instance without versions")?;
            let id = ObjectId::from_hex(&current.id).context("malformed object id in index")?;
            let dir = out.join(&e.study_uid).join(&e.series_uid);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            dest_of.insert(id, dir.join(format!("{}.dcm", e.sop_instance_uid)));
        }
        let ids: Vec<ObjectId> = dest_of.keys().copied().collect();
        let failed = rt.block_on(reader.read_many(&ids, &mut |id, bytes| {
            let dest = &dest_of[&id];
            write_durably(dest, &bytes).map_err(|e| {
                crate::tiering::TieringError::Other(format!("write {}: {e}", dest.display()))
            })?;
            report.files += 1;
            report.bytes += bytes.len() as u64;
            Ok(())
        }))?;
        if let Some((id, e)) = failed.first() {
            bail!(
                "{} object(s) of study {study} could not be read; first: {id}: {e}",
                failed.len()
            );
        }
        report.studies += 1;
    }
    Ok(report)
}

/// A small runtime for the CLI's calls to the cold tier.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("start a runtime")
}

/// Writes a file through a temporary name and fsyncs it (an export is meant to outlive
/// the archive).
fn write_durably(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.partial"));
    let result = std::fs::File::create(&tmp).and_then(|mut f| {
        use std::io::Write;
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dest)
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub id: String,
    pub path: String,
    pub study_uid: String,
    pub sop_instance_uid: String,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub bytes_checked: u64,
    pub seconds: f64,
    /// Indexed objects whose file is gone.
    pub missing: Vec<Problem>,
    /// Indexed objects whose bytes no longer hash to their id (or differ in size).
    pub corrupt: Vec<Problem>,
    /// Files in the hot tier that the index does not know.
    pub orphans: Vec<Problem>,
    /// Instance versions that point at an object the index does not hold.
    pub dangling: Vec<Problem>,
    /// Files under `objects/` whose name or place is not an object id's.
    pub strays: Vec<String>,
    /// Objects recorded hot whose file is gone but which have a verified cold copy (a
    /// move to cold that stopped mid-delete; the next tiering pass finishes it).
    pub pending_eviction: Vec<Problem>,
    /// Files of deleted studies not removed yet (a deletion interrupted after its
    /// tombstone; the next start finishes it). Not a loss.
    pub pending_deletion: usize,
    pub packs_checked: usize,
    pub pack_bytes_checked: u64,
    /// Recorded packs that are missing from the cold tier, or whose bytes, structure,
    /// manifest or members do not check out.
    pub bad_packs: Vec<PackProblem>,
    /// Cold-only objects without a cold copy, or whose copies name no recorded pack.
    pub unreachable: Vec<Problem>,
    /// Packs in the cold tier that no record names (uploads cut short by a crash;
    /// the tiering worker deletes them after `orphan_grace`). Not a loss.
    pub unrecorded_packs: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackProblem {
    pub pack: String,
    pub key: String,
    pub study_uid: String,
    pub detail: String,
    /// SOP Instance UIDs of the objects with a copy in this pack.
    pub instances: Vec<String>,
}

/// Which tiers `verify` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyScope {
    Hot,
    Cold,
    All,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.corrupt.is_empty()
            && self.orphans.is_empty()
            && self.dangling.is_empty()
            && self.strays.is_empty()
            && self.bad_packs.is_empty()
            && self.unreachable.is_empty()
    }
}

/// Re-hashes every indexed object (hot files, cold packs or both) and checks index ↔
/// objects both ways.
pub fn verify(
    archive: &ReadOnlyArchive,
    workers: usize,
    scope: VerifyScope,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let index = archive.index.as_ref();
    let mut all: Vec<(ObjectId, ObjectRecord)> = Vec::new();
    index.for_each_object(&mut |id, rec| {
        all.push((id, rec));
        true
    })?;
    let known: HashSet<ObjectId> = all.iter().map(|(id, _)| *id).collect();
    let mut report = if scope == VerifyScope::Cold {
        VerifyReport::default()
    } else {
        verify_hot(archive, workers, &all, &known)?
    };
    if scope != VerifyScope::Hot {
        verify_cold(archive, &all, &mut report)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The cold half of `verify`: every recorded pack read back whole, its blake3 checked
/// against its id and every member against the manifest's blake3 and sha256; every
/// cold copy must name a recorded pack and a member at its offset.
fn verify_cold(
    archive: &ReadOnlyArchive,
    all: &[(ObjectId, ObjectRecord)],
    report: &mut VerifyReport,
) -> Result<()> {
    let index = archive.index.as_ref();
    let rt = runtime()?;
    let packs: BTreeMap<ObjectId, crate::index::PackRecord> = index.packs()?.into_iter().collect();
    // pack -> (object, offset, sop)
    let mut copies: BTreeMap<ObjectId, Vec<(ObjectId, u64, String)>> = BTreeMap::new();
    for (id, rec) in all {
        for c in &rec.cold {
            match c.pack_id().filter(|p| packs.contains_key(p)) {
                Some(p) => {
                    copies
                        .entry(p)
                        .or_default()
                        .push((*id, c.offset, rec.sop_instance_uid.clone()))
                }
                None => report.unreachable.push(Problem {
                    id: id.to_hex(),
                    path: c.pack.clone(),
                    study_uid: rec.study_uid.clone(),
                    sop_instance_uid: rec.sop_instance_uid.clone(),
                    detail: format!("cold copy names pack {} that is not recorded", c.pack),
                }),
            }
        }
        if rec.tier == Tier::Cold && rec.cold.is_empty() {
            report.unreachable.push(Problem {
                id: id.to_hex(),
                path: String::new(),
                study_uid: rec.study_uid.clone(),
                sop_instance_uid: rec.sop_instance_uid.clone(),
                detail: "recorded cold-only but has no cold copy".into(),
            });
        }
    }
    let tmp_dir = archive.data_dir.join("tmp-packs");
    std::fs::create_dir_all(&tmp_dir).ok();
    for (pack_id, record) in &packs {
        let members = copies.get(pack_id).cloned().unwrap_or_default();
        let problem = |detail: String| PackProblem {
            pack: pack_id.to_hex(),
            key: archive.cold.key_of(pack_id),
            study_uid: record.study_uid.clone(),
            detail,
            instances: members.iter().map(|m| m.2.clone()).collect(),
        };
        match check_pack(archive, &rt, pack_id, &tmp_dir) {
            Ok((size, manifest)) => {
                report.packs_checked += 1;
                report.pack_bytes_checked += size;
                let listed: HashSet<(String, u64)> = manifest
                    .members
                    .iter()
                    .map(|m| (m.blake3.clone(), m.offset))
                    .collect();
                if let Some((id, offset, _)) = members
                    .iter()
                    .find(|(id, o, _)| !listed.contains(&(id.to_hex(), *o)))
                {
                    report.bad_packs.push(problem(format!(
                        "the index places object {id} at offset {offset}, the manifest does not"
                    )));
                } else if size != record.size {
                    report.bad_packs.push(problem(format!(
                        "{size} bytes, the index says {}",
                        record.size
                    )));
                }
            }
            Err(detail) => report.bad_packs.push(problem(detail)),
        }
    }
    for (id, _, _) in rt.block_on(archive.cold.list_detailed())? {
        if !packs.contains_key(&id) && index.pack(&id)?.is_none() {
            report.unrecorded_packs.push(archive.cold.key_of(&id));
        }
    }
    Ok(())
}

/// Downloads a pack to a temporary file, hashing it, then reads it through
/// [`pack::read_all`](crate::tiering::pack::read_all). Returns its size and manifest,
/// or what is wrong with it.
fn check_pack(
    archive: &ReadOnlyArchive,
    rt: &tokio::runtime::Runtime,
    pack_id: &ObjectId,
    tmp_dir: &Path,
) -> std::result::Result<(u64, crate::tiering::pack::Manifest), String> {
    let file = download_pack(&archive.cold, rt, pack_id, tmp_dir)?;
    let size = file.as_file().metadata().map_err(|e| e.to_string())?.len();
    let reader = std::io::BufReader::new(file.reopen().map_err(|e| e.to_string())?);
    let manifest =
        crate::tiering::pack::read_all(reader, &mut |_, _| Ok(())).map_err(|e| e.to_string())?;
    Ok((size, manifest))
}

/// Streams a pack into a temporary file and checks its blake3 against its id.
fn download_pack(
    cold: &ColdStore,
    rt: &tokio::runtime::Runtime,
    pack_id: &ObjectId,
    tmp_dir: &Path,
) -> std::result::Result<tempfile::NamedTempFile, String> {
    use futures::StreamExt;
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| e.to_string())?;
    let hash = rt.block_on(async {
        let mut stream = cold
            .stream_range(pack_id, None)
            .await
            .map_err(|e| e.to_string())?;
        let mut hasher = blake3::Hasher::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(ObjectId::from_hash(hasher.finalize()))
    })?;
    if &hash != pack_id {
        return Err(format!("the pack's bytes hash to {hash}, not to its id"));
    }
    Ok(file)
}

/// The hot half of `verify`.
fn verify_hot(
    archive: &ReadOnlyArchive,
    workers: usize,
    all: &[(ObjectId, ObjectRecord)],
    known: &HashSet<ObjectId>,
) -> Result<VerifyReport> {
    let index = archive.index.as_ref();
    let hot = &archive.hot;
    let objects: Vec<&(ObjectId, ObjectRecord)> =
        all.iter().filter(|(_, r)| r.tier == Tier::Hot).collect();
    let report = Mutex::new(VerifyReport::default());
    let next = AtomicUsize::new(0);
    let problem = |id: &ObjectId, rec: &ObjectRecord, detail: String| Problem {
        id: id.to_hex(),
        path: hot.path_of(id).display().to_string(),
        study_uid: rec.study_uid.clone(),
        sop_instance_uid: rec.sop_instance_uid.clone(),
        detail,
    };
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, rec)) = objects.get(i).copied() else {
                    break;
                };
                let outcome = hot.rehash_blocking(id);
                let mut r = report.lock().expect("verify report lock");
                r.objects_checked += 1;
                match outcome {
                    Ok((actual, size)) => {
                        r.bytes_checked += size;
                        if actual != *id {
                            r.corrupt
                                .push(problem(id, rec, format!("bytes hash to {actual}")));
                        } else if size != rec.size {
                            r.corrupt.push(problem(
                                id,
                                rec,
                                format!("size {size}, index says {}", rec.size),
                            ));
                        }
                    }
                    Err(e) if e.is_not_found() && !rec.cold.is_empty() => {
                        r.pending_eviction.push(problem(
                            id,
                            rec,
                            "hot file is missing; its cold copy is verified".into(),
                        ))
                    }
                    Err(e) if e.is_not_found() => {
                        r.missing.push(problem(id, rec, "file is missing".into()))
                    }
                    Err(e) => r.corrupt.push(problem(id, rec, format!("unreadable: {e}"))),
                }
            });
        }
    });
    let mut report = report.into_inner().expect("verify report lock");

    let (ids, strays) = hot.list_blocking()?;
    let mut suspects: Vec<ObjectId> = ids.into_iter().filter(|id| !known.contains(id)).collect();
    // A running server renames an object into place a little before its index record
    // commits: catch up with the primary a few times before calling anything an orphan.
    let retries = if crate::archive::writer_active(&archive.data_dir) {
        10
    } else {
        0
    };
    for _ in 0..retries {
        if suspects.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        index.catch_up()?;
        let mut still = Vec::with_capacity(suspects.len());
        for id in suspects {
            if !index.has_object(&id)? {
                still.push(id);
            }
        }
        suspects = still;
    }
    for id in suspects {
        if index.deleted_object(&id)?.is_some() {
            report.pending_deletion += 1;
            continue;
        }
        report.orphans.push(Problem {
            id: id.to_hex(),
            path: hot.path_of(&id).display().to_string(),
            study_uid: String::new(),
            sop_instance_uid: String::new(),
            detail: "not in the index".into(),
        });
    }
    report.strays = strays
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();

    // instance records that point nowhere
    for (study_uid, _) in index.studies()? {
        for e in index.instances_of_study(&study_uid)? {
            for v in &e.record.versions {
                let ok = match ObjectId::from_hex(&v.id) {
                    Some(id) => known.contains(&id) || index.has_object(&id)?,
                    None => false,
                };
                if !ok {
                    report.dangling.push(Problem {
                        id: v.id.clone(),
                        path: String::new(),
                        study_uid: e.study_uid.clone(),
                        sop_instance_uid: e.sop_instance_uid.clone(),
                        detail: "instance version without an object record".into(),
                    });
                }
            }
        }
    }
    Ok(report)
}

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
    /// Packs that could not be used (unreadable, corrupt, or awaiting a restore), with
    /// the reason. Their objects are indexed only if another copy exists.
    pub packs_skipped: Vec<(String, String)>,
}

/// Rebuilds the index from the hot objects and the cold packs alone, then swaps it in
/// atomically.
pub fn reindex(config: &Config, progress: &indicatif::ProgressBar) -> Result<ReindexReport> {
    let data_dir = &config.archive.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let _lock = ArchiveLock::acquire(data_dir, "reindex")?;
    finish_interrupted_reindex(data_dir)?;
    let hot = HotDisk::open(config.hot_dir())?;
    hot.sweep_tmp_blocking()?;
    let (index_dir, rebuild_dir, old_dir) = rebuild_dirs(config);
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
    let (tombstones, holds, live_again) = if index_dir.join("CURRENT").exists() {
        let old = RocksIndex::open_primary(&index_dir)?;
        let tombstones = old.tombstones()?;
        let mut holds = Vec::new();
        for (study, _) in old.studies()? {
            if let Some(h) = old.hold(&study)? {
                holds.push((study, h));
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
    let unusable;
    {
        let rebuilt = RocksIndex::open_primary(&rebuild_dir)?;
        let live: Vec<ObjectId> = live_again.iter().copied().collect();
        for t in &tombstones {
            rebuilt.restore_tombstone(t, &live)?;
        }
        for (study, h) in &holds {
            rebuilt.set_hold(study, Some(h))?;
        }
        let mut live = Vec::with_capacity(ids.len());
        for id in ids {
            if rebuilt.deleted_object(&id)?.is_some() && !live_again.contains(&id) {
                let path = hot.path_of(&id);
                tracing::warn!(object = %id, "finishing an interrupted deletion");
                std::fs::remove_file(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
                report.deleted_files += 1;
            } else {
                live.push(id);
            }
        }
        let (indexed, quarantined) =
            index_objects_blocking(&hot, &rebuilt, &live, "reindex", || progress.inc(1))?;
        report.indexed = indexed;
        unusable = quarantined;
        reindex_cold(config, &rebuilt, &mut report)?;
        report.studies = rebuilt.studies()?.len();
    }
    // swap: index -> index.old, index.rebuild -> index, then drop index.old
    if index_dir.exists() {
        std::fs::rename(&index_dir, &old_dir).context("move the old index aside")?;
    }
    std::fs::rename(&rebuild_dir, &index_dir).context("move the rebuilt index into place")?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .context("fsync the archive directory")?;
    if old_dir.exists() {
        std::fs::remove_dir_all(&old_dir).context("remove the old index")?;
    }
    // Only now, with the rebuilt index (which lacks them) in place, move unusable
    // objects aside: an interrupted reindex leaves the old index whole.
    for path in unusable {
        report
            .quarantined
            .push(quarantine(data_dir, &path)?.display().to_string());
    }
    Ok(report)
}

/// Adds every pack in the cold tier to a rebuilt index: members already indexed from a
/// hot file gain their cold copy; the others are indexed from the pack alone.
fn reindex_cold(config: &Config, rebuilt: &RocksIndex, report: &mut ReindexReport) -> Result<()> {
    use crate::index::{NewObject, Provenance};
    let cold = ColdStore::open(&config.cold_spec())?;
    let rt = runtime()?;
    let tmp_dir = config.pack_tmp_dir();
    std::fs::create_dir_all(&tmp_dir).with_context(|| format!("create {}", tmp_dir.display()))?;
    let listed = rt
        .block_on(cold.list_detailed())
        .with_context(|| format!("list the cold tier {}", cold.describe()))?;
    for (pack_id, _size, modified_ms) in listed {
        let key = cold.key_of(&pack_id);
        let file = match download_pack(&cold, &rt, &pack_id, &tmp_dir) {
            Ok(file) => file,
            Err(reason) => {
                tracing::warn!(pack = %key, %reason, "reindex: pack skipped");
                report.packs_skipped.push((key, reason));
                continue;
            }
        };
        let size = file.as_file().metadata()?.len();
        let mut news: BTreeMap<ObjectId, NewObject> = BTreeMap::new();
        let scratch = tmp_dir.join(format!("member-{}", std::process::id()));
        let read = crate::tiering::pack::read_all(
            std::io::BufReader::new(file.reopen()?),
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
                    NewObject {
                        id,
                        size: bytes.len() as u64,
                        attrs,
                        provenance: Provenance {
                            received_at_ms: modified_ms.max(0) as u64,
                            calling_ae: "reindex".into(),
                            source: format!("cold:{key}"),
                        },
                    },
                );
                Ok(())
            },
        );
        let _ = std::fs::remove_file(&scratch);
        let manifest = match read {
            Ok(manifest)
                if !manifest.members.is_empty()
                    && manifest.members.iter().all(|m| {
                        ObjectId::from_hex(&m.blake3)
                            .and_then(|id| rebuilt.deleted_object(&id).ok().flatten())
                            .is_some()
                    }) =>
            {
                report.deleted_packs += 1;
                continue;
            }
            Ok(manifest) => manifest,
            Err(e) => {
                tracing::warn!(pack = %key, error = %e, "reindex: pack skipped");
                report.packs_skipped.push((key, e.to_string()));
                continue;
            }
        };
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
        let members = crate::tiering::mover::packed_objects(&pack_id, &manifest, &mut |m| {
            ObjectId::from_hex(&m.blake3).and_then(|id| news.remove(&id))
        });
        rebuilt.record_pack(&pack_id, &record, &members)?;
        report.packs += 1;
    }
    Ok(())
}

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub files: usize,
    pub stored: usize,
    pub new_versions: usize,
    pub already_present: usize,
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub path: String,
    pub reason: String,
}

/// Every regular file under `paths` (files as given, folders recursively), sorted.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if !p.exists() {
            bail!("{} does not exist", p.display());
        }
        for entry in walkdir::WalkDir::new(p).follow_links(true) {
            let entry = entry.with_context(|| format!("walk {}", p.display()))?;
            if entry.file_type().is_file() {
                files.push(entry.into_path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Imports files in parallel through the same ingest pipeline as the network path.
pub fn import(
    ingest: &Ingest,
    files: &[PathBuf],
    workers: usize,
    progress: &indicatif::ProgressBar,
) -> ImportReport {
    let report = Mutex::new(ImportReport {
        files: files.len(),
        ..Default::default()
    });
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = files.get(i) else { break };
                let result = ingest.import_file_blocking(path);
                progress.inc(1);
                let mut r = report.lock().expect("import report lock");
                match result {
                    Ok(stored) => match stored.outcome {
                        crate::index::CommitOutcome::Stored => r.stored += 1,
                        crate::index::CommitOutcome::NewVersion => r.new_versions += 1,
                        crate::index::CommitOutcome::AlreadyPresent => r.already_present += 1,
                    },
                    Err(e) => r.rejected.push(Rejected {
                        path: path.display().to_string(),
                        reason: describe(&e),
                    }),
                }
            });
        }
    });
    report.into_inner().expect("import report lock")
}

fn describe(e: &IngestError) -> String {
    e.to_string()
}

#[derive(Debug, Default, Serialize)]
pub struct ManifestReport {
    pub studies: usize,
    pub files: usize,
    pub bytes: u64,
    /// sha256 of `manifest-sha256.txt` and of `manifest-blake3.txt`.
    pub manifest_sha256: String,
    pub manifest_blake3_sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a BagIt bag (RFC 8493) of the studies into `out`: the export under `data/`,
/// `manifest-sha256.txt` and `manifest-blake3.txt` (also in the `sha256sum -c` / `b3sum
/// -c` format), `bagit.txt`, `bag-info.txt`, `strata-summary.txt` (counts, bytes and the
/// manifests' own sha256, with a sign-off line) and `tagmanifest-sha256.txt`. Every file
/// is fsynced. `out` must not exist or be empty.
pub fn manifest(
    archive: &ReadOnlyArchive,
    studies: &[String],
    out: &Path,
) -> Result<ManifestReport> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!(
            "{} is not empty: a bag goes into a new directory",
            out.display()
        );
    }
    let data = out.join("data");
    let exported = export(archive, studies, &data)?;
    // every payload file, sorted, hashed from what is on disk now
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&data)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    files.sort();
    let mut sha_lines = String::new();
    let mut b3_lines = String::new();
    let mut bytes = 0u64;
    for path in &files {
        let content = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let rel = path
            .strip_prefix(out)
            .expect("payload under the bag")
            .to_string_lossy()
            .replace('\\', "/");
        sha_lines.push_str(&format!("{}  {rel}\n", sha256_hex(&content)));
        b3_lines.push_str(&format!("{}  {rel}\n", blake3::hash(&content).to_hex()));
        bytes += content.len() as u64;
    }
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let day = &date[..10];
    let write = |name: &str, text: &str| -> Result<()> {
        let path = out.join(name);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        use std::io::Write;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        Ok(())
    };
    write("manifest-sha256.txt", &sha_lines)?;
    write("manifest-blake3.txt", &b3_lines)?;
    write(
        "bagit.txt",
        "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
    )?;
    write(
        "bag-info.txt",
        &format!(
            "Bag-Software-Agent: strata {}\nBagging-Date: {day}\nPayload-Oxum: {bytes}.{}\nExternal-Description: {} studies exported from Strata; each file's blake3 is its object id\n",
            env!("CARGO_PKG_VERSION"),
            files.len(),
            exported.studies
        ),
    )?;
    let report = ManifestReport {
        studies: exported.studies,
        files: files.len(),
        bytes,
        manifest_sha256: sha256_hex(sha_lines.as_bytes()),
        manifest_blake3_sha256: sha256_hex(b3_lines.as_bytes()),
    };
    let mut summary = format!(
        "Strata export manifest\n\nCreated: {date}\nStudies: {}\nFiles: {}\nBytes: {}\nsha256 of manifest-sha256.txt: {}\nsha256 of manifest-blake3.txt: {}\n\nStudies:\n",
        report.studies, report.files, report.bytes, report.manifest_sha256, report.manifest_blake3_sha256
    );
    for s in studies {
        summary.push_str(&format!("  {s}\n"));
    }
    summary.push_str(
        "\nCheck with: sha256sum -c manifest-sha256.txt; b3sum -c manifest-blake3.txt; or any BagIt validator.\n\nChecked by: ____________________   Date: ____________   Signature: ____________\n",
    );
    write("strata-summary.txt", &summary)?;
    let mut tags = String::new();
    for name in [
        "bagit.txt",
        "bag-info.txt",
        "manifest-sha256.txt",
        "manifest-blake3.txt",
        "strata-summary.txt",
    ] {
        let content = std::fs::read(out.join(name))?;
        tags.push_str(&format!("{}  {name}\n", sha256_hex(&content)));
    }
    write("tagmanifest-sha256.txt", &tags)?;
    std::fs::File::open(out).and_then(|d| d.sync_all())?;
    Ok(report)
}

#[derive(Debug, Default, Serialize)]
pub struct DeleteReport {
    pub study_uid: String,
    pub objects: usize,
    pub hot_files_deleted: usize,
    pub packs_deleted: usize,
}

/// Appends one CLI access to the audit log, synced.
pub fn audit_cli(
    config: &Config,
    action: &'static str,
    uids: Vec<String>,
    outcome: String,
) -> Result<()> {
    if !config.audit.enabled {
        return Ok(());
    }
    let log = crate::audit::AuditLog::open(&config.archive.data_dir)?;
    log.append(&[crate::audit::Event {
        actor: crate::audit::Actor::cli(),
        action,
        uids,
        outcome,
    }])?;
    log.sync()?;
    Ok(())
}

/// Deletes a study from every tier (server stopped), unless it is under a legal hold:
/// the request is audited first, then one synced index batch replaces the study by a
/// tombstone (UIDs, object ids, who, why, when), and only then are its hot files and
/// cold packs removed. A crash after the tombstone is finished by the next start (or
/// reindex), never undone.
pub fn delete(config: &Config, study_uid: &str, reason: &str) -> Result<DeleteReport> {
    use crate::index::Tombstone;
    if !is_valid_uid(study_uid) {
        bail!("{study_uid:?} is not a valid Study Instance UID");
    }
    if reason.trim().is_empty() {
        bail!("say why with --reason: it is kept in the tombstone and the audit log");
    }
    let (archive, _recovery) = crate::archive::Archive::open_exclusive(config, "delete")?;
    let index = archive.index.clone();
    let who = crate::audit::Actor::cli().user;
    if let Some(hold) = index.hold(study_uid)? {
        audit_cli(
            config,
            "delete",
            vec![study_uid.into()],
            format!("refused: under legal hold ({})", hold.why),
        )?;
        archive.close(true)?;
        bail!(
            "study {study_uid} is under legal hold (placed by {} at {}: {}); lift it first with `strata hold {study_uid} --release`",
            hold.who,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(hold.since_ms)
            ),
            hold.why
        );
    }
    let study = index
        .study(study_uid)?
        .with_context(|| format!("no study {study_uid} in the archive"))?;
    let mut objects = Vec::new();
    for e in index.instances_of_study(study_uid)? {
        for v in &e.record.versions {
            objects.push((
                e.series_uid.clone(),
                e.sop_instance_uid.clone(),
                v.id.clone(),
            ));
        }
    }
    let packs: Vec<ObjectId> = index
        .packs()?
        .into_iter()
        .filter(|(_, p)| p.study_uid == study_uid)
        .map(|(id, _)| id)
        .collect();
    let tombstone = Tombstone {
        study_uid: study_uid.to_string(),
        patient_id: study.patient_id.clone(),
        objects,
        packs: packs.iter().map(|p| p.to_hex()).collect(),
        who: who.clone(),
        why: reason.to_string(),
        deleted_at_ms: crate::index::rocks::unix_ms_now(),
    };
    audit_cli(
        config,
        "delete",
        vec![study_uid.into()],
        format!("requested: {reason}"),
    )?;
    index.tombstone_study(&tombstone)?;
    crate::tiering::failpoint("delete-after-tombstone");
    let mut report = DeleteReport {
        study_uid: study_uid.to_string(),
        objects: tombstone.objects.len(),
        ..Default::default()
    };
    for (_, _, id) in &tombstone.objects {
        let Some(id) = ObjectId::from_hex(id) else {
            continue;
        };
        let path = archive.hot.path_of(&id);
        match std::fs::remove_file(&path) {
            Ok(()) => report.hot_files_deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
        }
    }
    let rt = runtime()?;
    for pack in &packs {
        use strata_tiers::BlobStore;
        rt.block_on(archive.cold.delete(pack))
            .with_context(|| format!("delete pack {pack}"))?;
        report.packs_deleted += 1;
    }
    audit_cli(
        config,
        "delete",
        vec![study_uid.into()],
        format!(
            "done: {} objects, {} hot files, {} packs",
            report.objects, report.hot_files_deleted, report.packs_deleted
        ),
    )?;
    archive.close(true)?;
    Ok(report)
}

/// Places or lifts a legal hold (server stopped); audited.
pub fn hold(config: &Config, study_uid: &str, reason: &str, release: bool) -> Result<()> {
    let (archive, _recovery) = crate::archive::Archive::open_exclusive(config, "hold")?;
    if archive.index.study(study_uid)?.is_none() {
        archive.close(true)?;
        bail!("no study {study_uid} in the archive");
    }
    let record = crate::index::HoldRecord {
        who: crate::audit::Actor::cli().user,
        why: reason.to_string(),
        since_ms: crate::index::rocks::unix_ms_now(),
    };
    archive
        .index
        .set_hold(study_uid, (!release).then_some(&record))?;
    audit_cli(
        config,
        "hold",
        vec![study_uid.into()],
        if release {
            "released".into()
        } else {
            format!("placed: {reason}")
        },
    )?;
    archive.close(true)?;
    Ok(())
}

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// What was fixed, one line each.
    pub repaired: Vec<String>,
    /// What could not be fixed because no good copy is left (nothing was changed).
    pub unrepairable: Vec<String>,
}

/// `strata verify --repair` (server stopped): finds the problems `verify` finds, then
/// restores each corrupt or missing copy from another verified copy — a hot object from
/// its cold pack member (the corrupt file is quarantined, never deleted), a bad pack by
/// re-packing its members from their hot copies. With no good copy left it says so and
/// changes nothing for that object.
pub fn repair(config: &Config, workers: usize) -> Result<(VerifyReport, RepairReport)> {
    let (archive, _recovery) = crate::archive::Archive::open_exclusive(config, "repair")?;
    let readonly = ReadOnlyArchive::open(config)?;
    let found = verify(&readonly, workers, VerifyScope::All)?;
    let tiering = archive.tiering();
    let reader = readonly.reader();
    let rt = runtime()?;
    let mut report = RepairReport::default();
    let index = archive.index.clone();

    // hot copies: corrupt or missing, restored from a cold copy; that includes files
    // recorded hot whose cold copy is safe (verify counts those as pending eviction)
    let mut gone_with_cold_copy = Vec::new();
    index.for_each_object(&mut |id, r| {
        if r.tier == crate::index::Tier::Hot
            && !r.cold.is_empty()
            && !archive.hot.path_of(&id).exists()
        {
            gone_with_cold_copy.push(Problem {
                id: id.to_hex(),
                path: archive.hot.path_of(&id).display().to_string(),
                study_uid: r.study_uid.clone(),
                sop_instance_uid: r.sop_instance_uid.clone(),
                detail: "hot file is missing".into(),
            });
        }
        true
    })?;
    for p in found
        .corrupt
        .iter()
        .chain(found.missing.iter())
        .chain(gone_with_cold_copy.iter())
    {
        let Some(id) = ObjectId::from_hex(&p.id) else {
            continue;
        };
        let copies = index.object(&id)?.map(|r| r.cold).unwrap_or_default();
        match rt.block_on(reader.read_cold(&id, &copies)) {
            Ok(bytes) => {
                let path = archive.hot.path_of(&id);
                if path.exists() {
                    quarantine(&archive.data_dir, &path)?;
                }
                use strata_tiers::BlobStore;
                rt.block_on(archive.hot.put(&id, bytes::Bytes::from(bytes)))?;
                report.repaired.push(format!(
                    "object {id} (study {}, instance {}): hot copy restored from its cold pack ({})",
                    p.study_uid, p.sop_instance_uid, p.detail
                ));
            }
            Err(e) => report.unrepairable.push(format!(
                "object {id} (study {}, instance {}): {} and no good cold copy ({e})",
                p.study_uid, p.sop_instance_uid, p.detail
            )),
        }
    }

    // bad packs: re-packed from the members' hot copies when every member has one
    for bad in &found.bad_packs {
        let Some(pack) = ObjectId::from_hex(&bad.pack) else {
            continue;
        };
        let mut members = Vec::new();
        index.for_each_object(&mut |id, r| {
            if r.cold.iter().any(|c| c.pack == bad.pack) {
                members.push((id, r));
            }
            true
        })?;
        let without_copy: Vec<String> = members
            .iter()
            .filter(|(id, r)| {
                let hot_ok = r.tier == crate::index::Tier::Hot
                    && archive
                        .hot
                        .rehash_blocking(id)
                        .is_ok_and(|(actual, _)| actual == *id);
                let other_pack = r.cold.iter().any(|c| c.pack != bad.pack);
                !(hot_ok || other_pack)
            })
            .map(|(_, r)| r.sop_instance_uid.clone())
            .collect();
        if !without_copy.is_empty() {
            report.unrepairable.push(format!(
                "pack {} (study {}): {}; {} instance(s) have no other good copy: {}",
                bad.pack,
                bad.study_uid,
                bad.detail,
                without_copy.len(),
                without_copy.join(", ")
            ));
            continue;
        }
        index.drop_pack(&pack)?;
        {
            use strata_tiers::BlobStore;
            rt.block_on(archive.cold.delete(&pack))?;
        }
        let hot_members: Vec<_> = members
            .into_iter()
            .filter(|(_, r)| r.tier == crate::index::Tier::Hot)
            .map(|(id, mut r)| {
                r.cold.retain(|c| c.pack != bad.pack);
                (id, r)
            })
            .filter(|(_, r)| r.cold.is_empty())
            .collect();
        if !hot_members.is_empty() {
            rt.block_on(tiering.pack_and_record(&bad.study_uid, &hot_members))?;
        }
        report.repaired.push(format!(
            "pack {} (study {}): {}; replaced by a new pack of its {} members' hot copies",
            bad.pack,
            bad.study_uid,
            bad.detail,
            hot_members.len()
        ));
    }
    for line in &report.repaired {
        audit_cli(config, "repair", Vec::new(), format!("repaired: {line}"))?;
    }
    for line in &report.unrepairable {
        audit_cli(
            config,
            "repair",
            Vec::new(),
            format!("NOT repaired: {line}"),
        )?;
    }
    drop(readonly);
    drop(tiering);
    archive.close(true)?;
    Ok((found, report))
}

#[derive(Debug, Default, Serialize)]
pub struct RetentionReport {
    /// (study, StudyDate) of the studies the rule selects.
    pub due: Vec<(String, String)>,
    pub deleted: Vec<String>,
    /// Selected but under a legal hold: kept.
    pub held: Vec<String>,
}

/// Applies `[retention]` (server stopped): deletes the studies older than the rule,
/// except those under a legal hold; with `dry_run`, only says which.
pub fn retention(config: &Config, dry_run: bool) -> Result<RetentionReport> {
    let age = config.retention.study_age;
    if age.is_zero() {
        bail!("[retention] study_age is 0s: retention is off");
    }
    let cutoff_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        .saturating_sub(age.as_secs());
    // YYYYMMDD of the cutoff (civil date from days since the epoch)
    let days = (cutoff_secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let cutoff = format!("{y:04}{m:02}{d:02}");
    let mut report = RetentionReport::default();
    {
        let archive = ReadOnlyArchive::open(config)?;
        for (uid, s) in archive.index.studies()? {
            let date = s.study_date.trim();
            if valid_study_date(date) && *date < *cutoff {
                if archive.index.hold(&uid)?.is_some() {
                    report.held.push(uid.clone());
                }
                report.due.push((uid, date.to_string()));
            }
        }
    }
    if dry_run {
        return Ok(report);
    }
    for (uid, date) in &report.due {
        if report.held.contains(uid) {
            continue;
        }
        delete(
            config,
            uid,
            &format!(
                "retention: StudyDate {date} is older than {}",
                humantime::format_duration(age)
            ),
        )?;
        report.deleted.push(uid.clone());
    }
    Ok(report)
}

/// A real calendar date `YYYYMMDD` from 1900 on (placeholders such as `00000000` or
/// `19000000` are not dates, and retention never acts on them).
fn valid_study_date(date: &str) -> bool {
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (y, m, d): (u32, u32, u32) = (
        date[..4].parse().unwrap_or(0),
        date[4..6].parse().unwrap_or(0),
        date[6..].parse().unwrap_or(0),
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1900 && (1..=days).contains(&d)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_acts_only_on_real_dates() {
        for good in ["19000101", "20240229", "20231231"] {
            assert!(valid_study_date(good), "{good}");
        }
        for bad in [
            "00000000", "19000000", "20230229", "20241301", "18991231", "2024011", "",
        ] {
            assert!(!valid_study_date(bad), "{bad}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
