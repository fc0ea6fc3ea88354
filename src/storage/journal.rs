//! # The ingest journal: one `fdatasync` per commit group (issue 17, DESIGN promise 1)
//!
//! A commit group of small objects is made durable by appending one record per object —
//! its index record and its bytes — to a preallocated, already written segment file and
//! syncing that file once (`fdatasync(2)`): an overwrite of written space, so the sync
//! carries no allocation or directory change. The objects are then renamed into place
//! and indexed **without** syncs ([`HotDisk::place_batch_unsynced_blocking`],
//! [`Catalog::commit_unsynced`]), and acknowledged. A checkpointer makes what was
//! applied durable in the background (`syncfs(2)` of the hot file system, then the
//! index's log) and records the journal position it reached in `checkpoint`; segments
//! wholly before it are reused.
//!
//! After a crash, [`replay_blocking`] reads the records from the checkpoint on: each
//! object whose file is missing or does not hash to its id is rewritten from the record,
//! and every object is indexed with its own provenance. The first record that does not
//! check (a torn tail) ends the replay.
//!
//! ## Layout (`<data_dir>/hot/journal/`)
//! ```text
//! 0000000000000003.seg   segment n: journal positions [n·SEGMENT, (n+1)·SEGMENT)
//! checkpoint             {"v":1,"lsn":N}: every record before position N is applied
//!                        and durable without the journal
//! ```
//!
//! ## Record (little-endian, at journal position `lsn`, 8-byte aligned)
//! ```text
//! 0   "STRJ"          magic
//! 4   u16 = 1         record format version
//! 6   u16 = 0         reserved
//! 8   u64             lsn: this record's own position (a stale record in a reused
//!                     segment names an older one, so it never checks)
//! 16  u32             header length H (JSON: id, size, attrs, provenance, dataset,
//!                     replicate)
//! 20  u32             metadata length M (the object's metadata record, as indexed;
//!                     0: not in the record — ingest captures it while the group is
//!                     synced, or none could be captured — and a replay that indexes
//!                     the object captures it from the object's bytes)
//! 24  u64             object length B
//! 32  [u8; 16]        blake3(bytes 0..32 ‖ header ‖ metadata), first 16 bytes
//! 48  header, metadata, then the object's B bytes (they must hash to its id)
//! ```
//! A record never spans segments: one that does not fit starts the next segment.

use crate::dicom::header::InstanceAttrs;
use crate::index::{Index, IndexError, NewObject, Provenance};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use strata_tiers::{HotDisk, ObjectId, TierError};

/// Bytes of journal per segment file (32 MiB).
pub const SEGMENT: u64 = 32 * 1024 * 1024;
/// Segment files kept for reuse at most; a writer that needs another while none is free
/// checkpoints first.
pub const SEGMENTS: u64 = 4;
/// The largest object journaled; larger ones are made durable in place, as without a
/// journal.
pub const MAX_OBJECT: u64 = 16 * 1024 * 1024;
/// The most bytes one commit group journals; a larger group is made durable in place
/// (its own syncs are then amortised over many objects, and a journal would only write
/// every byte twice).
pub const MAX_GROUP: u64 = 4 * 1024 * 1024;

const MAGIC: &[u8; 4] = b"STRJ";
const VERSION: u16 = 1;
const FIXED: usize = 48;
const CHECKPOINT: &str = "checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("journal checkpoint {0}: unreadable ({1})")]
    Checkpoint(PathBuf, String),
}

impl JournalError {
    pub fn is_out_of_space(&self) -> bool {
        match self {
            JournalError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            JournalError::Tier(e) => e.is_out_of_space(),
            _ => false,
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io {
        action,
        path,
        source,
    }
}

/// The JSON header of a record: a [`NewObject`] without its metadata bytes.
#[derive(Serialize, Deserialize)]
struct Header {
    id: String,
    size: u64,
    attrs: InstanceAttrs,
    provenance: Provenance,
    dataset: Option<String>,
    replicate: bool,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    v: u32,
    lsn: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.seg"))
}

fn read_checkpoint(dir: &Path) -> Result<u64, JournalError> {
    let path = dir.join(CHECKPOINT);
    match fs::read(&path) {
        Ok(bytes) => {
            let c: Checkpoint = serde_json::from_slice(&bytes)
                .map_err(|e| JournalError::Checkpoint(path.clone(), e.to_string()))?;
            if c.v != 1 {
                return Err(JournalError::Checkpoint(
                    path,
                    format!("format version {} is not one this Strata reads", c.v),
                ));
            }
            Ok(c.lsn)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io("read", &path)(e)),
    }
}

/// Writes the checkpoint crash-safely (tmp file, fsync, rename, directory fsync).
fn write_checkpoint(dir: &Path, lsn: u64) -> Result<(), JournalError> {
    let tmp = dir.join("checkpoint.tmp");
    let body = serde_json::to_vec(&Checkpoint { v: 1, lsn }).expect("checkpoint serialises");
    fs::write(&tmp, &body)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .map_err(io("write", &tmp))?;
    let path = dir.join(CHECKPOINT);
    fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    fsync_dir(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

fn check_of(fixed: &[u8], header: &[u8], metadata: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&fixed[..32]);
    h.update(header);
    h.update(metadata);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// One object to journal: its index record and the file holding its bytes — or the
/// bytes themselves, when still in memory ([`strata_tiers::TmpObject::kept`]).
pub struct Entry<'a> {
    pub object: &'a NewObject,
    pub file: &'a Path,
    pub kept: Option<Vec<&'a [u8]>>,
}

/// Whether a commit group goes through the journal ([`MAX_OBJECT`], [`MAX_GROUP`]).
pub fn fits(sizes: impl Iterator<Item = u64>) -> bool {
    let mut total = 0;
    for size in sizes {
        if size > MAX_OBJECT {
            return false;
        }
        total += size;
    }
    total <= MAX_GROUP
}

struct Writer {
    /// The segment being appended to, and its number.
    segment: Option<(u64, File)>,
    /// The next record's position.
    lsn: u64,
}

/// The ingest journal of one hot tier. Appends come from one thread (the committer);
/// checkpoints from the checkpointer or, when no segment is free, from the appender.
pub struct Journal {
    dir: PathBuf,
    hot: HotDisk,
    index: Arc<dyn Index>,
    writer: Mutex<Writer>,
    /// Every record before this position is renamed into place and indexed.
    applied: AtomicU64,
    /// The position in `checkpoint`.
    checkpointed: AtomicU64,
    checkpointing: Mutex<()>,
    /// Held while a segment file is made or renamed (by the appender or ahead of it).
    preparing: Mutex<()>,
    /// The segment being appended to.
    current: AtomicU64,
    /// Set while appends fail (the group is then synced in place), so that is said once.
    failing: std::sync::atomic::AtomicBool,
}

impl Journal {
    /// Opens the journal of `hot` after [`replay_blocking`], appending from `lsn` (the
    /// replay's end, which it checkpointed).
    pub fn open(hot: HotDisk, index: Arc<dyn Index>, lsn: u64) -> Result<Self, JournalError> {
        let dir = hot.root().join("journal");
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(Journal {
            dir,
            hot,
            index,
            writer: Mutex::new(Writer { segment: None, lsn }),
            applied: AtomicU64::new(lsn),
            checkpointed: AtomicU64::new(lsn),
            checkpointing: Mutex::new(()),
            preparing: Mutex::new(()),
            current: AtomicU64::new(lsn / SEGMENT),
            failing: Default::default(),
        })
    }

    /// Appends one record per entry and makes them durable together (one `fdatasync` per
    /// segment written, normally one). Returns the position after the last record, to
    /// pass to [`Journal::mark_applied`] once the objects are placed and indexed.
    pub fn append_blocking(&self, entries: &[Entry<'_>]) -> Result<u64, JournalError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut touched: Vec<u64> = Vec::new();
        for entry in entries {
            let o = entry.object;
            let header = serde_json::to_vec(&Header {
                id: o.id.to_hex(),
                size: o.size,
                attrs: o.attrs.clone(),
                provenance: o.provenance.clone(),
                dataset: o.dataset.clone(),
                replicate: o.replicate,
            })
            .expect("journal header serialises");
            let metadata = o.metadata.as_deref().unwrap_or(&[]);
            let len = align8((FIXED + header.len() + metadata.len()) as u64 + o.size);
            if len > SEGMENT {
                // never for a group that fits(); refuse rather than write a record that
                // replay could not read
                return Err(io("append", &self.dir)(std::io::Error::other(
                    "record larger than a segment",
                )));
            }
            if writer.lsn % SEGMENT + len > SEGMENT {
                writer.lsn = (writer.lsn / SEGMENT + 1) * SEGMENT;
            }
            let n = writer.lsn / SEGMENT;
            if writer.segment.as_ref().map(|(m, _)| *m) != Some(n) {
                writer.segment = Some((n, self.prepare_segment(n, true)?));
                self.current.store(n, Ordering::Release);
            }
            let (_, file) = writer.segment.as_ref().expect("segment just prepared");
            let off = writer.lsn % SEGMENT;
            let mut fixed = [0u8; FIXED];
            fixed[0..4].copy_from_slice(MAGIC);
            fixed[4..6].copy_from_slice(&VERSION.to_le_bytes());
            fixed[8..16].copy_from_slice(&writer.lsn.to_le_bytes());
            fixed[16..20].copy_from_slice(&(header.len() as u32).to_le_bytes());
            fixed[20..24].copy_from_slice(&(metadata.len() as u32).to_le_bytes());
            fixed[24..32].copy_from_slice(&o.size.to_le_bytes());
            let check = check_of(&fixed, &header, metadata);
            fixed[32..48].copy_from_slice(&check);
            let mut head = Vec::with_capacity(FIXED + header.len() + metadata.len());
            head.extend_from_slice(&fixed);
            head.extend_from_slice(&header);
            head.extend_from_slice(metadata);
            let seg = segment_path(&self.dir, n);
            file.write_all_at(&head, off).map_err(io("write", &seg))?;
            let body = off + head.len() as u64;
            match &entry.kept {
                Some(parts) if parts.iter().map(|p| p.len() as u64).sum::<u64>() == o.size => {
                    let mut at = body;
                    for part in parts {
                        file.write_all_at(part, at).map_err(io("write", &seg))?;
                        at += part.len() as u64;
                    }
                }
                _ => copy_object(entry.file, file, body, o.size, &seg)?,
            }
            if !touched.contains(&n) {
                touched.push(n);
            }
            writer.lsn += len;
        }
        for n in touched {
            let seg = segment_path(&self.dir, n);
            match &writer.segment {
                Some((m, file)) if *m == n => file.sync_data(),
                _ => File::open(&seg).and_then(|f| f.sync_data()),
            }
            .map_err(io("fdatasync", &seg))?;
        }
        Ok(writer.lsn)
    }

    /// Records whether the last append worked; true when that changed (to say once).
    pub fn note_append(&self, worked: bool) -> bool {
        self.failing.swap(!worked, Ordering::AcqRel) == worked
    }

    /// Says every record before `lsn` is placed and indexed (unsynced).
    pub fn mark_applied(&self, lsn: u64) {
        self.applied.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Whether records were applied since the last checkpoint.
    pub fn behind(&self) -> bool {
        self.applied.load(Ordering::Acquire) > self.checkpointed.load(Ordering::Acquire)
    }

    /// Makes every applied record durable without the journal — the hot file system
    /// (`syncfs`), then the index's log — and records the position reached.
    pub fn checkpoint_blocking(&self) -> Result<(), JournalError> {
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let applied = self.applied.load(Ordering::Acquire);
        if applied <= self.checkpointed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.hot.sync_all_blocking()?;
        crate::tiering::failpoint("journal-mid-checkpoint");
        self.index.sync()?;
        write_checkpoint(&self.dir, applied)?;
        self.checkpointed.store(applied, Ordering::Release);
        Ok(())
    }

    /// Prepares the segment after the one being appended to, so the appender does not
    /// wait for it (called by the checkpointer).
    pub fn prepare_ahead_blocking(&self) -> Result<(), JournalError> {
        let next = self.current.load(Ordering::Acquire) + 1;
        self.prepare_segment(next, false).map(drop)
    }

    /// The file for segment `n`, written and synced over its whole length: one made
    /// ahead (or in which replay ended), a reused one wholly before the checkpoint
    /// (renamed), else a new one. When every kept segment is still needed, the appender
    /// (`urgent`) checkpoints first; ahead of it, nothing is done.
    fn prepare_segment(&self, n: u64, urgent: bool) -> Result<File, JournalError> {
        let _one = self.preparing.lock().unwrap_or_else(|p| p.into_inner());
        let path = segment_path(&self.dir, n);
        if let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) {
            if file.metadata().map(|m| m.len() == SEGMENT).unwrap_or(false) {
                return Ok(file);
            }
        }
        let mut reusable = self.reusable()?;
        if reusable.is_none() && self.segment_count()? >= SEGMENTS {
            if !urgent {
                return Err(io("prepare", &path)(std::io::Error::other(
                    "no segment free yet",
                )));
            }
            self.checkpoint_blocking()?;
            reusable = self.reusable()?;
        }
        match reusable {
            Some(old) => fs::rename(&old, &path).map_err(io("rename", &old))?,
            None => {
                // a new segment takes SEGMENT bytes: only with room for it and as much
                // again for objects, and never below the free-space floor
                self.hot.check_free_space_blocking()?;
                if self.hot.free_bytes_blocking()? < 2 * SEGMENT {
                    return Err(io("create", &path)(std::io::Error::from_raw_os_error(
                        libc::ENOSPC,
                    )));
                }
                let tmp = self.dir.join("segment.tmp");
                let made = File::create(&tmp).and_then(|file| {
                    let zeros = vec![0u8; 1024 * 1024];
                    let mut off = 0;
                    while off < SEGMENT {
                        file.write_all_at(&zeros, off)?;
                        off += zeros.len() as u64;
                    }
                    file.sync_all()?;
                    fs::rename(&tmp, &path)
                });
                if let Err(e) = made {
                    let _ = fs::remove_file(&tmp);
                    return Err(io("create", &path)(e));
                }
            }
        }
        fsync_dir(&self.dir)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))
    }

    fn segments(&self) -> Result<Vec<(u64, PathBuf)>, JournalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("read", &self.dir))? {
            let path = entry.map_err(io("read", &self.dir))?.path();
            let n = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            if let Some(n) = n {
                out.push((n, path));
            }
        }
        out.sort();
        Ok(out)
    }

    fn segment_count(&self) -> Result<u64, JournalError> {
        Ok(self.segments()?.len() as u64)
    }

    /// The oldest segment file wholly before the checkpoint, if any.
    fn reusable(&self) -> Result<Option<PathBuf>, JournalError> {
        let done = self.checkpointed.load(Ordering::Acquire);
        Ok(self
            .segments()?
            .into_iter()
            .find(|(n, _)| (n + 1) * SEGMENT <= done)
            .map(|(_, p)| p))
    }
}

/// Copies `len` bytes of `from` into `to` at `off` (`copy_file_range(2)`, in the
/// kernel; a read/write loop where it is refused).
fn copy_object(from: &Path, to: &File, off: u64, len: u64, seg: &Path) -> Result<(), JournalError> {
    let src = File::open(from).map_err(io("open", from))?;
    let mut copied = 0u64;
    while copied < len {
        let mut in_off: libc::loff_t = copied as libc::loff_t;
        let mut out_off: libc::loff_t = (off + copied) as libc::loff_t;
        // SAFETY: both descriptors are open for the call; the offsets are ours.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut in_off,
                to.as_raw_fd(),
                &mut out_off,
                (len - copied) as usize,
                0,
            )
        };
        if n > 0 {
            copied += n as u64;
            continue;
        }
        if n == 0 {
            return Err(io("copy", from)(std::io::Error::other(
                "the object file is shorter than its size",
            )));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => break,
            _ => return Err(io("copy", seg)(err)),
        }
    }
    let mut buf = vec![0u8; 256 * 1024];
    while copied < len {
        let want = ((len - copied) as usize).min(buf.len());
        let n = src
            .read_at(&mut buf[..want], copied)
            .map_err(io("read", from))?;
        if n == 0 {
            return Err(io("copy", from)(std::io::Error::other(
                "the object file is shorter than its size",
            )));
        }
        to.write_all_at(&buf[..n], off + copied)
            .map_err(io("write", seg))?;
        copied += n as u64;
    }
    Ok(())
}

/// What [`replay_blocking`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Records read from the checkpoint on.
    pub records: usize,
    /// Objects whose file was missing or torn, rewritten from their record.
    pub rewritten: usize,
    /// Objects the index lacked, indexed from their record.
    pub indexed: usize,
    /// The position after the last record that checked: appends continue there.
    pub end: u64,
}

/// Replays the journal of `hot` into its files and `index` (see the module docs), then
/// checkpoints at its end. Run with exclusive access, before anything is stored.
pub fn replay_blocking(hot: &HotDisk, index: &dyn Index) -> Result<Replay, JournalError> {
    let dir = hot.root().join("journal");
    if !dir.is_dir() {
        return Ok(Replay::default());
    }
    let start = read_checkpoint(&dir)?;
    let mut report = Replay {
        end: start,
        ..Default::default()
    };
    let mut lsn = start;
    let mut objects: Vec<NewObject> = Vec::new();
    let mut open: Option<(u64, File)> = None;
    loop {
        let n = lsn / SEGMENT;
        if open.as_ref().map(|(m, _)| *m) != Some(n) {
            match File::open(segment_path(&dir, n)) {
                Ok(f) => open = Some((n, f)),
                Err(_) => break,
            }
        }
        let (_, file) = open.as_ref().expect("segment open");
        match read_record(file, lsn, hot, index)? {
            Some((object, len, rewritten)) => {
                report.records += 1;
                report.rewritten += usize::from(rewritten);
                objects.extend(object);
                lsn += len;
            }
            None => {
                // not a record here: the rest of this segment was skipped by a record
                // that did not fit, or the tail is torn. The next segment tells.
                let next = (n + 1) * SEGMENT;
                let continues = lsn != next
                    && File::open(segment_path(&dir, n + 1))
                        .ok()
                        .is_some_and(|f| read_fixed(&f, next).is_some());
                if !continues {
                    break;
                }
                lsn = next;
            }
        }
    }
    for chunk in objects.chunks(256) {
        let mut missing: Vec<NewObject> = Vec::new();
        for o in chunk {
            if !index.has_object(&o.id)? {
                let mut o = o.clone();
                if o.metadata.is_none() {
                    o.metadata = crate::dicom::metadata::capture_blocking(&hot.path_of(&o.id));
                }
                missing.push(o);
            }
        }
        if !missing.is_empty() {
            index.commit(&missing)?;
            report.indexed += missing.len();
        }
    }
    if report.records > 0 {
        hot.sync_all_blocking()?;
        index.sync()?;
        write_checkpoint(&dir, lsn)?;
        tracing::warn!(
            records = report.records,
            rewritten = report.rewritten,
            indexed = report.indexed,
            "unclean stop: replayed the ingest journal"
        );
    }
    report.end = lsn;
    Ok(report)
}

/// The fixed part of the record at `lsn` if it is one (magic, version, its own lsn).
fn read_fixed(file: &File, lsn: u64) -> Option<[u8; FIXED]> {
    let off = lsn % SEGMENT;
    if off + FIXED as u64 > SEGMENT {
        return None;
    }
    let mut fixed = [0u8; FIXED];
    file.read_exact_at(&mut fixed, off).ok()?;
    let ok = &fixed[0..4] == MAGIC
        && u16::from_le_bytes([fixed[4], fixed[5]]) == VERSION
        && u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes")) == lsn;
    ok.then_some(fixed)
}

/// Reads and checks the record at `lsn`; makes its object's file whole (rewriting it
/// when missing or torn) unless the index says the object left the hot disk since —
/// deleted (a tombstone) or moved to the cold tier — in which case nothing of it is
/// restored (the returned object is then `None`). `None` when no valid record is there.
#[allow(clippy::type_complexity)]
fn read_record(
    file: &File,
    lsn: u64,
    hot: &HotDisk,
    index: &dyn Index,
) -> Result<Option<(Option<NewObject>, u64, bool)>, JournalError> {
    let Some(fixed) = read_fixed(file, lsn) else {
        return Ok(None);
    };
    let off = lsn % SEGMENT;
    let h = u32::from_le_bytes(fixed[16..20].try_into().expect("4 bytes")) as u64;
    let m = u32::from_le_bytes(fixed[20..24].try_into().expect("4 bytes")) as u64;
    let b = u64::from_le_bytes(fixed[24..32].try_into().expect("8 bytes"));
    let len = align8(FIXED as u64 + h + m + b);
    if off + len > SEGMENT {
        return Ok(None);
    }
    let mut meta = vec![0u8; (h + m) as usize];
    if file.read_exact_at(&mut meta, off + FIXED as u64).is_err() {
        return Ok(None);
    }
    if check_of(&fixed, &meta[..h as usize], &meta[h as usize..]) != fixed[32..48] {
        return Ok(None);
    }
    let Ok(header) = serde_json::from_slice::<Header>(&meta[..h as usize]) else {
        return Ok(None);
    };
    let Some(id) = ObjectId::from_hex(&header.id) else {
        return Ok(None);
    };
    // the object's bytes: whole in the record (they hash to its id), else a torn tail
    let body = off + FIXED as u64 + h + m;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    while done < b {
        let want = ((b - done) as usize).min(buf.len());
        if file.read_exact_at(&mut buf[..want], body + done).is_err() {
            return Ok(None);
        }
        hasher.update(&buf[..want]);
        done += want as u64;
    }
    if ObjectId::from_hash(hasher.finalize()) != id {
        return Ok(None);
    }
    // after the record was written the object may have been deleted or aged out of the
    // hot tier (and the checkpoint not yet passed it): never bring it back
    let left_hot = index.deleted_object(&id)?.is_some()
        || index
            .object(&id)?
            .is_some_and(|r| r.tier != crate::index::Tier::Hot);
    if left_hot {
        return Ok(Some((None, len, false)));
    }
    let whole = match hot.rehash_blocking(&id) {
        Ok((found, size)) => found == id && size == b,
        Err(_) => false,
    };
    if !whole {
        let path = hot.path_of(&id);
        if path.exists() {
            fs::remove_file(&path).map_err(io("remove torn object", &path))?;
        }
        let mut tmp = hot.create_tmp_blocking()?;
        let mut done = 0u64;
        while done < b {
            let want = ((b - done) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..want], body + done)
                .map_err(io("read", hot.root()))?;
            tmp.write_all_blocking(&buf[..want])?;
            done += want as u64;
        }
        hot.persist_batch_blocking(vec![(tmp, id)])
            .pop()
            .expect("one result")?;
    }
    let object = NewObject {
        id,
        size: header.size,
        attrs: header.attrs,
        provenance: header.provenance,
        dataset: header.dataset,
        // none in the record (crate::ingest::LateMetadata): captured from the object,
        // now whole, if the replay indexes it
        metadata: (m > 0).then(|| meta[h as usize..].to_vec()),
        replicate: header.replicate,
    };
    Ok(Some((Some(object), len, !whole)))
}

#[cfg(test)]
mod tests {
    //! Append, crash (drop without checkpoint), replay: every record comes back, a torn
    //! tail ends the replay, stale records of a reused segment are never read, and a
    //! torn object file is rewritten from its record.
    use super::*;
    use crate::index::conformance::object;
    use crate::index::MemoryIndex;

    struct Fixture {
        _dir: tempfile::TempDir,
        hot: HotDisk,
        index: Arc<dyn Index>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let hot = HotDisk::open(dir.path().join("hot")).unwrap();
        Fixture {
            _dir: dir,
            hot,
            index: Arc::new(MemoryIndex::new()),
        }
    }

    /// Journals and places `n` objects of `size` bytes one group each, as the committer
    /// does, and (with `apply`) indexes them unsynced and marks them applied; returns
    /// them and each record's end position.
    fn store(
        f: &Fixture,
        journal: &Journal,
        (first, n, size): (usize, usize, usize),
        apply: bool,
    ) -> Vec<(NewObject, u64)> {
        (first..first + n)
            .map(|i| {
                let payload: Vec<u8> = (0..size).map(|b| (b * 31 + i * 7) as u8).collect();
                let o = object(
                    "1.2.3",
                    "1.2.3.1",
                    &format!("1.2.3.1.{i}"),
                    &payload,
                    i as u64,
                );
                let mut tmp = f.hot.create_tmp_blocking().unwrap();
                tmp.write_all_blocking(&payload).unwrap();
                let end = journal
                    .append_blocking(&[Entry {
                        object: &o,
                        file: tmp.path(),
                        kept: None,
                    }])
                    .unwrap();
                f.hot.place_batch_unsynced_blocking(vec![(tmp, o.id)]);
                if apply {
                    f.index.commit_unsynced(std::slice::from_ref(&o)).unwrap();
                    journal.mark_applied(end);
                }
                (o, end)
            })
            .collect()
    }

    fn all_indexed(f: &Fixture, objects: &[(NewObject, u64)]) -> bool {
        objects
            .iter()
            .all(|(o, _)| f.index.has_object(&o.id).unwrap())
    }

    #[test]
    fn replay_indexes_what_was_journaled_and_ends_at_a_torn_tail() {
        let f = fixture();
        let journal = Journal::open(f.hot.clone(), f.index.clone(), 0).unwrap();
        let objects = store(&f, &journal, (0, 5, 100_000), false);
        drop(journal); // a crash: nothing checkpointed, nothing indexed

        // tear the last record: its last object byte never reached the disk
        let (_, before_last) = objects[3];
        let last_end = objects[4].1;
        let seg = segment_path(&f.hot.root().join("journal"), 0);
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.write_all_at(&[0xFF, 0xFF, 0xFF, 0xFF], last_end - 12)
            .unwrap();
        drop(file);

        let replay = replay_blocking(&f.hot, f.index.as_ref()).unwrap();
        assert_eq!(replay.records, 4, "{replay:?}");
        assert_eq!(replay.indexed, 4);
        assert_eq!(replay.end, before_last);
        assert!(all_indexed(&f, &objects[..4]));
        assert!(!f.index.has_object(&objects[4].0.id).unwrap());
        // its own provenance, not "recovered"
        let record = f.index.object(&objects[0].0.id).unwrap().unwrap();
        assert_eq!(record.provenance.calling_ae, "TEST");

        // appending resumes at the end; a second replay starts from its checkpoint
        let journal = Journal::open(f.hot.clone(), f.index.clone(), replay.end).unwrap();
        let more = store(&f, &journal, (10, 2, 50_000), false);
        drop(journal);
        let again = replay_blocking(&f.hot, f.index.as_ref()).unwrap();
        assert_eq!(again.records, 2, "{again:?}");
        assert!(all_indexed(&f, &more));
    }

    #[test]
    fn a_torn_object_file_is_rewritten_from_its_record() {
        let f = fixture();
        let journal = Journal::open(f.hot.clone(), f.index.clone(), 0).unwrap();
        let objects = store(&f, &journal, (0, 2, 70_000), false);
        drop(journal);
        // power lost before the checkpoint: one file torn, one gone
        let torn = f.hot.path_of(&objects[0].0.id);
        std::fs::write(&torn, b"only the start").unwrap();
        std::fs::remove_file(f.hot.path_of(&objects[1].0.id)).unwrap();

        let replay = replay_blocking(&f.hot, f.index.as_ref()).unwrap();
        assert_eq!((replay.records, replay.rewritten), (2, 2), "{replay:?}");
        for (o, _) in &objects {
            let (found, size) = f.hot.rehash_blocking(&o.id).unwrap();
            assert_eq!((found, size), (o.id, o.size));
        }
    }

    #[test]
    fn checkpoints_reuse_segments_and_stale_records_are_never_replayed() {
        let f = fixture();
        let journal = Journal::open(f.hot.clone(), f.index.clone(), 0).unwrap();
        // ~3 MiB records: more than SEGMENTS segments' worth, so segments are reused
        // (the appender checkpoints when none is free)
        let n = (SEGMENTS * SEGMENT / (3 << 20) + 8) as usize;
        let objects = store(&f, &journal, (0, n, 3 << 20), true);
        journal.checkpoint_blocking().unwrap();
        let segments = journal.segments().unwrap();
        assert!(
            segments.len() as u64 <= SEGMENTS + 1,
            "segments are reused: {segments:?}"
        );
        let end = objects.last().unwrap().1;
        drop(journal);
        // everything checkpointed: nothing to replay, though the reused segments still
        // hold old records
        let replay = replay_blocking(&f.hot, f.index.as_ref()).unwrap();
        assert_eq!((replay.records, replay.end), (0, end), "{replay:?}");
    }

    #[test]
    fn an_object_deleted_after_its_record_is_not_brought_back() {
        let f = fixture();
        let journal = Journal::open(f.hot.clone(), f.index.clone(), 0).unwrap();
        let objects = store(&f, &journal, (0, 2, 30_000), true);
        // the study is deleted (tombstones, files removed) before any checkpoint
        f.index
            .tombstone_study(&crate::index::Tombstone {
                study_uid: "1.2.3".into(),
                patient_id: "P1".into(),
                objects: Vec::new(),
                packs: Vec::new(),
                who: "test".into(),
                why: "a deletion before the checkpoint".into(),
                deleted_at_ms: 1,
                partial: false,
            })
            .unwrap();
        for (o, _) in &objects {
            std::fs::remove_file(f.hot.path_of(&o.id)).unwrap();
        }
        drop(journal);
        let replay = replay_blocking(&f.hot, f.index.as_ref()).unwrap();
        assert_eq!(
            (replay.records, replay.rewritten, replay.indexed),
            (2, 0, 0),
            "{replay:?}"
        );
        for (o, _) in &objects {
            assert!(!f.hot.path_of(&o.id).exists());
            assert!(!f.index.has_object(&o.id).unwrap());
        }
    }

    #[test]
    fn only_small_groups_are_journaled() {
        assert!(fits([525_000u64; 4].into_iter()));
        assert!(!fits([MAX_OBJECT + 1].into_iter()));
        assert!(!fits([1_000_000u64; 5].into_iter()));
    }
}
