//! The archive operations behind the CLI: listing, showing, exporting, verifying,
//! reindexing and importing. Each returns a serialisable report; `main.rs` prints it.
//! All of them block (they run on plain threads in the CLI process).

use crate::archive::{
    finish_interrupted_reindex, index_objects_blocking, quarantine, rebuild_dirs, ArchiveLock,
    ReadOnlyArchive,
};
use crate::config::Config;
use crate::dicom::part10::is_valid_uid;
use crate::index::{Index, InstanceEntry, ObjectRecord, RocksIndex, StudyRecord};
use crate::ingest::{Ingest, IngestError};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use strata_tiers::{HotDisk, ObjectId};

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
    pub tier: String,
    pub location: String,
    pub calling_ae: String,
    pub source: String,
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
    hot: &HotDisk,
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
            Ok(VersionView {
                id: v.id.clone(),
                size: v.size,
                received_at_ms: v.received_at_ms,
                tier: "hot".into(),
                location: hot.path_of(&id).display().to_string(),
                calling_ae: rec
                    .as_ref()
                    .map(|r| r.provenance.calling_ae.clone())
                    .unwrap_or_default(),
                source: rec.map(|r| r.provenance.source).unwrap_or_default(),
            })
        })
        .collect()
}

fn instance_view(hot: &HotDisk, index: &dyn Index, e: &InstanceEntry) -> Result<InstanceView> {
    Ok(InstanceView {
        sop_instance_uid: e.sop_instance_uid.clone(),
        series_uid: e.series_uid.clone(),
        study_uid: e.study_uid.clone(),
        sop_class_uid: e.record.sop_class_uid.clone(),
        instance_number: e.record.instance_number.clone(),
        transfer_syntax_uid: e.record.transfer_syntax_uid.clone(),
        versions: version_views(hot, index, e)?,
    })
}

/// A study with its series and instances (`ls STUDY`, `show STUDY`).
pub fn study_view(hot: &HotDisk, index: &dyn Index, study_uid: &str) -> Result<Option<StudyView>> {
    let Some(summary) = list_study(index, study_uid)? else {
        return Ok(None);
    };
    let mut by_series: BTreeMap<String, Vec<InstanceView>> = BTreeMap::new();
    for e in index.instances_of_study(study_uid)? {
        by_series
            .entry(e.series_uid.clone())
            .or_default()
            .push(instance_view(hot, index, &e)?);
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
pub fn show(hot: &HotDisk, index: &dyn Index, uid: &str) -> Result<Option<Shown>> {
    if let Some(view) = study_view(hot, index, uid)? {
        return Ok(Some(Shown::Study(view)));
    }
    if let Some((study_uid, _)) = index.series(uid)? {
        let view =
            study_view(hot, index, &study_uid)?.context("series refers to a missing study")?;
        if let Some(series) = view.series.into_iter().find(|s| s.series_uid == uid) {
            return Ok(Some(Shown::Series { study_uid, series }));
        }
    }
    if let Some(entry) = index.instance(uid)? {
        return Ok(Some(Shown::Instance(instance_view(hot, index, &entry)?)));
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
/// byte-identical to the stored object (so `b3sum` of each file equals its id).
pub fn export(archive: &ReadOnlyArchive, studies: &[String], out: &Path) -> Result<ExportReport> {
    let index = &archive.index;
    let mut report = ExportReport::default();
    for study in studies {
        if !is_valid_uid(study) {
            bail!("{study:?} is not a valid Study Instance UID");
        }
        let entries = index.instances_of_study(study)?;
        if entries.is_empty() {
            bail!("no study {study} in the archive");
        }
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
            let dest = dir.join(format!("{}.dcm", e.sop_instance_uid));
            let tmp = dir.join(format!(".{}.dcm.partial", e.sop_instance_uid));
            let src = archive.hot.path_of(&id);
            let copied = copy_durably(&src, &tmp)
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
                .with_context(|| format!("copy {} (object {id})", src.display()))?;
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("rename into {}", dest.display()))?;
            report.files += 1;
            report.bytes += copied;
        }
        report.studies += 1;
    }
    Ok(report)
}

/// Copies a file and fsyncs the copy (an export is meant to outlive the archive).
fn copy_durably(src: &Path, dest: &Path) -> std::io::Result<u64> {
    let copied = std::fs::copy(src, dest)?;
    std::fs::File::open(dest)?.sync_all()?;
    Ok(copied)
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
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.corrupt.is_empty()
            && self.orphans.is_empty()
            && self.dangling.is_empty()
            && self.strays.is_empty()
    }
}

/// Re-hashes every indexed object and checks index ↔ objects both ways.
pub fn verify(archive: &ReadOnlyArchive, workers: usize) -> Result<VerifyReport> {
    let started = Instant::now();
    let index = &archive.index;
    let hot = &archive.hot;
    let mut objects: Vec<(ObjectId, ObjectRecord)> = Vec::new();
    index.for_each_object(&mut |id, rec| {
        objects.push((id, rec));
        true
    })?;
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
                let Some((id, rec)) = objects.get(i) else {
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
                    Err(e) if e.is_not_found() => {
                        r.missing.push(problem(id, rec, "file is missing".into()))
                    }
                    Err(e) => r.corrupt.push(problem(id, rec, format!("unreadable: {e}"))),
                }
            });
        }
    });
    let mut report = report.into_inner().expect("verify report lock");

    // files the index does not know; re-check after catching up with a running server,
    // which may have renamed an object into place just before committing its record.
    let known: HashSet<ObjectId> = objects.iter().map(|(id, _)| *id).collect();
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
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[derive(Debug, Default, Serialize)]
pub struct ReindexReport {
    pub objects_found: usize,
    pub indexed: usize,
    pub quarantined: Vec<String>,
    pub studies: usize,
}

/// Rebuilds the index from the hot objects alone, then swaps it in atomically.
pub fn reindex(config: &Config, progress: &indicatif::ProgressBar) -> Result<ReindexReport> {
    let data_dir = &config.archive.data_dir;
    if !config.hot_dir().join("objects").exists() {
        bail!(
            "no archive at {} (no hot/objects directory)",
            data_dir.display()
        );
    }
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
    let unusable;
    {
        let rebuilt = RocksIndex::open_primary(&rebuild_dir)?;
        let (indexed, quarantined) =
            index_objects_blocking(&hot, &rebuilt, &ids, "reindex", || progress.inc(1))?;
        report.indexed = indexed;
        unusable = quarantined;
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
