//! # The archive on disk: one process owns it
//!
//! An archive directory holds `hot/` (objects), `index/` (RocksDB) and `strata.lock`.
//! Commands that write ([`Storage::open_exclusive`]: `serve`, `import`, `reindex`) take an
//! exclusive `flock` on `strata.lock` and write their pid and purpose into it, so a second
//! writer is told plainly who holds the archive. Read-only commands
//! ([`ReadOnlyStorage::open`]: `ls`, `show`, `export`, `verify`) take no lock and read the
//! index as a RocksDB secondary, which is safe while `strata serve` runs.
//!
//! ## Start-up recovery
//! Opening exclusively sweeps leftover tmp files. If the previous owner did not stop
//! cleanly (no `clean-shutdown` marker), it also looks for complete objects the index
//! lacks — a crash between rename and index commit leaves exactly those — re-hashes each,
//! and adopts it into the index (provenance `recovered`); an object whose bytes do not
//! match its name is moved to `quarantine/`, never deleted.
//!
//! [`reindex`] rebuilds the index from the hot objects and the cold packs alone
//! (DESIGN promise 5), with the holds and tombstones of the [`governance_log`].

pub mod cold_tier;
pub mod governance_log;
pub mod journal;
pub mod reindex;

use crate::config::Config;
use crate::config::IndexBackend;
use crate::dicom::header::read_header_blocking;
use crate::index::prelude::*;
use crate::index::{CommitOutcome, IndexError, NewObject, PgIndex, Provenance, RocksIndex};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_tiers::{ColdStore, HotDisk, ObjectId};

const LOCK_FILE: &str = "strata.lock";
const CLEAN_MARKER: &str = "clean-shutdown";
const QUARANTINE: &str = "quarantine";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "the archive at {data_dir} is in use by pid {pid} ({holder}); stop it first (this command needs exclusive access)"
    )]
    InUse {
        data_dir: PathBuf,
        pid: String,
        holder: String,
    },
    #[error("no archive at {0} (nothing stored yet?)")]
    Missing(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("ingest journal replay: {0}")]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Tier(#[from] strata_tiers::TierError),
    #[error("cannot start a runtime for the cold tier: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(
        "this archive's packs are in the cold tier {recorded}, but the configuration names {configured}; \
         run with the configuration that names {recorded} (its [cold] section), or, to move the archive, \
         copy every pack to the new tier first and then edit {}", record.display()
    )]
    ColdTierMismatch {
        recorded: String,
        configured: String,
        record: PathBuf,
    },
    /// The configured cold tier's marker names another archive.
    #[error("the cold tier {cold} belongs to another Strata archive (its marker archive/strata-archive.json names archive {theirs}; this one is {ours}): two archives must not share a bucket prefix. Point [cold] url at this archive's own prefix; to restore that archive on this node, run `strata reindex` (it adopts the marker)")]
    ColdTierClaimed {
        cold: String,
        theirs: String,
        ours: String,
    },
}

/// A small runtime for the offline commands' calls to the cold tier (reindex).
fn runtime() -> Result<tokio::runtime::Runtime, StorageError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(StorageError::Runtime)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

/// The exclusive lock on an archive, held for the life of the value.
#[derive(Debug)]
pub struct ArchiveLock {
    _file: File,
}

impl ArchiveLock {
    pub fn acquire(data_dir: &Path, purpose: &str) -> Result<Self, StorageError> {
        fs::create_dir_all(data_dir).map_err(io("create", data_dir))?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let mut parts = holder.trim().splitn(2, ' ');
            return Err(StorageError::InUse {
                data_dir: data_dir.to_path_buf(),
                pid: parts.next().unwrap_or("?").to_string(),
                holder: parts.next().unwrap_or("unknown").to_string(),
            });
        }
        file.set_len(0).map_err(io("truncate", &path))?;
        file.rewind().map_err(io("rewind", &path))?;
        writeln!(file, "{} strata {}", std::process::id(), purpose).map_err(io("write", &path))?;
        Ok(ArchiveLock { _file: file })
    }
}

/// Whether a writer (`serve`, `import`, `reindex`) holds the archive right now.
pub fn writer_active(data_dir: &Path) -> bool {
    let Ok(file) = File::open(data_dir.join(LOCK_FILE)) else {
        return false;
    };
    // SAFETY: flock on a file descriptor we own; a shared lock is released at once.
    let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if free {
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    }
    !free
}

/// Archives from before the governance log keep their holds and tombstones only in the
/// index: copy them into the log once (a marker file says it was done).
fn backfill_governance_log(data_dir: &Path, index: &dyn Index) -> Result<(), StorageError> {
    use governance_log::{GovernanceLog, GovernanceRecord};
    let marker = data_dir.join("governance").join("backfilled-v1");
    if marker.exists() {
        return Ok(());
    }
    let log = GovernanceLog::new(data_dir);
    let logged = log.read()?;
    for t in index.tombstones()? {
        let record = GovernanceRecord::Tombstone(t);
        if !logged.contains(&record) {
            log.append(record)?;
        }
    }
    let mut held = Vec::new();
    index.for_each_study(&mut |uid, _| {
        held.push(uid.to_string());
        true
    })?;
    for study_uid in held {
        for hold in index.holds(&study_uid)? {
            let record = GovernanceRecord::Hold {
                study_uid: study_uid.clone(),
                hold,
            };
            if !logged.contains(&record) {
                log.append(record)?;
            }
        }
    }
    let dir = marker.parent().expect("marker directory");
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(io("create", &marker))?;
    sync_dir(dir)
}

/// What the writer holding the archive right now is doing (`serve`, `import`, …, as it
/// wrote into the lock file), or `None` when no writer holds it.
pub fn writer_purpose(data_dir: &Path) -> Option<String> {
    if !writer_active(data_dir) {
        return None;
    }
    let text = fs::read_to_string(data_dir.join(LOCK_FILE)).ok()?;
    // "<pid> strata <purpose>"
    text.trim().splitn(3, ' ').nth(2).map(str::to_string)
}

/// An archive opened for writing.
pub struct Storage {
    pub data_dir: PathBuf,
    pub hot: HotDisk,
    pub cold: ColdStore,
    pub index: Arc<dyn Index>,
    /// Where the ingest journal goes on after start-up replay ([`journal::Replay::end`]).
    pub journal_lsn: u64,
    _lock: ArchiveLock,
}

/// The archive's index as `[index]` configures it: RocksDB under the data directory —
/// the primary, or a read-only secondary beside a running server — or the PostgreSQL
/// database the nodes share (docs/scale-out.md).
pub fn open_index(config: &Config, primary: bool) -> Result<Arc<dyn Index>, StorageError> {
    Ok(match config.index.backend {
        IndexBackend::Rocksdb if primary => {
            Arc::new(RocksIndex::open_primary(&config.index_dir())?)
        }
        IndexBackend::Rocksdb => Arc::new(RocksIndex::open_secondary(&config.index_dir())?),
        IndexBackend::Postgres => {
            let password = config
                .index
                .password()
                .map_err(|e| StorageError::Index(IndexError::Storage(e.to_string())))?;
            Arc::new(PgIndex::open_postgres_with(
                &config.index.url,
                password.as_deref(),
                config.index.ca(),
            )?)
        }
    })
}

/// What start-up recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub tmp_swept: usize,
    pub adopted: usize,
    pub quarantined: Vec<PathBuf>,
    /// What replaying the ingest journal did.
    pub journal: journal::Replay,
}

impl Storage {
    /// Locks and opens the archive for writing, running start-up recovery.
    pub fn open_exclusive(
        config: &Config,
        purpose: &str,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        let data_dir = config.archive.data_dir.clone();
        let lock = ArchiveLock::acquire(&data_dir, purpose)?;
        finish_interrupted_reindex(&data_dir)?;
        let hot = HotDisk::open(config.hot_dir())?
            .with_free_space_floor(config.archive.min_free_space_mb * 1024 * 1024);
        let index = open_index(config, true)?;
        cold_tier::check(config, true, || Ok(!index.packs()?.is_empty()))?;
        backfill_governance_log(&data_dir, index.as_ref())?;
        let cold = ColdStore::open(&config.cold_spec())?;
        let mut report = RecoveryReport {
            tmp_swept: hot.sweep_tmp_blocking()?,
            ..Default::default()
        };
        // acknowledged objects whose durability only the journal holds, with their own
        // provenance, before orphans are adopted as "recovered"
        let replay = journal::replay_blocking(&hot, index.as_ref())?;
        report.journal = replay.clone();
        let marker = data_dir.join(CLEAN_MARKER);
        if !marker.exists() {
            let (adopted, quarantined) = adopt_orphans_blocking(
                &data_dir,
                &hot,
                index.as_ref(),
                &config.cluster.node(),
                config.replicates(),
            )?;
            report.adopted = adopted;
            report.quarantined = quarantined;
        } else {
            fs::remove_file(&marker).map_err(io("remove", &marker))?;
            sync_dir(&data_dir)?;
        }
        Ok((
            Storage {
                data_dir,
                hot,
                cold,
                index,
                journal_lsn: replay.end,
                _lock: lock,
            },
            report,
        ))
    }

    /// Records a clean stop, so the next start skips the orphan scan — unless `clean` is
    /// false (a sync or index commit failed while running), in which case the next start
    /// scans for files the index lacks.
    pub fn close(self, clean: bool) -> Result<(), StorageError> {
        let marker = self.data_dir.join(CLEAN_MARKER);
        drop(self.index);
        if !clean {
            tracing::warn!(
                "stopping after storage failures: the next start will scan for unindexed objects"
            );
            return Ok(());
        }
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(io("create", &marker))?;
        sync_dir(&self.data_dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// An archive opened for reading only, alongside a possibly running server.
pub struct ReadOnlyStorage {
    pub data_dir: PathBuf,
    pub hot: HotDisk,
    pub cold: ColdStore,
    pub index: Arc<dyn Index>,
}

impl ReadOnlyStorage {
    pub fn open(config: &Config) -> Result<Self, StorageError> {
        let rocks = config.index.backend == IndexBackend::Rocksdb;
        if rocks && !config.index_dir().join("CURRENT").exists() {
            return Err(StorageError::Missing(config.archive.data_dir.clone()));
        }
        let hot = HotDisk::open_existing(config.hot_dir())?;
        let index = open_index(config, false)?;
        cold_tier::check(config, false, || Ok(!index.packs()?.is_empty()))?;
        Ok(ReadOnlyStorage {
            data_dir: config.archive.data_dir.clone(),
            hot,
            cold: ColdStore::open(&config.cold_spec())?,
            index,
        })
    }
}

/// Indexes existing hot objects (recovery and reindex). Each object is re-hashed first;
/// objects whose bytes do not match their name, or that cannot be indexed, are returned
/// as unusable (the caller decides when to [`quarantine`] them).
/// Returns (indexed, unusable paths).
pub fn index_objects_blocking(
    hot: &HotDisk,
    index: &dyn Index,
    ids: &[ObjectId],
    calling_ae: &str,
    node: &str,
    replicate: bool,
    mut progress: impl FnMut(),
) -> Result<(usize, Vec<PathBuf>), StorageError> {
    let mut quarantined = Vec::new();
    let mut batch: Vec<NewObject> = Vec::new();
    let mut indexed = 0;
    let flush = |batch: &mut Vec<NewObject>| -> Result<usize, StorageError> {
        let outcomes = index.commit(batch)?;
        batch.clear();
        Ok(outcomes
            .iter()
            .filter(|o| **o != CommitOutcome::AlreadyPresent)
            .count())
    };
    for id in ids {
        progress();
        let path = hot.path_of(id);
        let (actual, size) = hot.rehash_blocking(id)?;
        let attrs = if actual == *id {
            read_header_blocking(&path).map_err(|e| e.to_string())
        } else {
            Err(format!("bytes hash to {actual}"))
        };
        let attrs = match attrs {
            Ok(a) => a,
            Err(why) => {
                tracing::error!(path = %path.display(), %why, "object cannot be indexed");
                quarantined.push(path);
                continue;
            }
        };
        let received_at_ms = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        batch.push(NewObject {
            id: *id,
            size,
            attrs,
            dataset: None,
            metadata: crate::dicom::metadata::capture_blocking(&path),
            replicate,
            provenance: Provenance {
                received_at_ms,
                calling_ae: calling_ae.into(),
                source: String::new(),
                node: node.to_string(),
            },
        });
        if batch.len() >= 256 {
            indexed += flush(&mut batch)?;
        }
    }
    if !batch.is_empty() {
        indexed += flush(&mut batch)?;
    }
    Ok((indexed, quarantined))
}

/// Moves an unusable object to `quarantine/` (never deletes it); a name already there
/// gets a numeric suffix.
pub fn quarantine(data_dir: &Path, path: &Path) -> Result<PathBuf, StorageError> {
    let dir = data_dir.join(QUARANTINE);
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut dest = dir.join(&name);
    let mut n = 1;
    while dest.exists() {
        dest = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    fs::rename(path, &dest).map_err(io("quarantine", path))?;
    sync_dir(&dir)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    tracing::error!(from = %path.display(), to = %dest.display(), "object moved to quarantine");
    Ok(dest)
}

fn adopt_orphans_blocking(
    data_dir: &Path,
    hot: &HotDisk,
    index: &dyn Index,
    node: &str,
    replicate: bool,
) -> Result<(usize, Vec<PathBuf>), StorageError> {
    let (ids, _strays) = hot.list_blocking()?;
    let mut orphans = Vec::new();
    for id in ids {
        if index.has_object(&id)? {
            continue;
        }
        if let Some(study) = index.deleted_object(&id)? {
            // a deletion interrupted after its tombstone: finish it, never adopt
            let path = hot.path_of(&id);
            tracing::warn!(object = %id, study, "finishing an interrupted deletion");
            fs::remove_file(&path).map_err(io("remove", &path))?;
            continue;
        }
        orphans.push(id);
    }
    if orphans.is_empty() {
        return Ok((0, Vec::new()));
    }
    tracing::warn!(
        count = orphans.len(),
        "unclean stop: adopting objects the index lacks"
    );
    let (adopted, unusable) =
        index_objects_blocking(hot, index, &orphans, "recovered", node, replicate, || {})?;
    // Orphans are not in the index, so nothing refers to them: quarantine now.
    let quarantined = unusable
        .iter()
        .map(|p| quarantine(data_dir, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((adopted, quarantined))
}

/// Paths used by `strata reindex` to swap in a rebuilt index.
pub fn rebuild_dirs(config: &Config) -> (PathBuf, PathBuf, PathBuf) {
    let d = &config.archive.data_dir;
    (
        d.join("index"),
        d.join("index.rebuild"),
        d.join("index.old"),
    )
}

/// If a reindex was interrupted mid-swap, put the archive back in a consistent state:
/// an `index.old` without `index` is restored; leftovers are removed.
pub(crate) fn finish_interrupted_reindex(data_dir: &Path) -> Result<(), StorageError> {
    let (index, rebuild, old) = (
        data_dir.join("index"),
        data_dir.join("index.rebuild"),
        data_dir.join("index.old"),
    );
    if !index.exists() && old.exists() {
        fs::rename(&old, &index).map_err(io("restore", &old))?;
        sync_dir(data_dir)?;
    }
    for leftover in [rebuild, old] {
        if leftover.exists() {
            fs::remove_dir_all(&leftover).map_err(io("remove", &leftover))?;
        }
    }
    Ok(())
}
