//! `HotDisk`: the local-disk tier.
//!
//! ## Layout
//! ```text
//! <root>/objects/ab/cd/abcd…   one file per object, named by its 64-hex blake3 id
//! <root>/tmp/<pid>.<n>.tmp     objects being received; swept at start-up
//! ```
//!
//! ## Crash-safe writes, with group sync
//!
//! An object is written to a tmp file, then [`HotDisk::persist_batch_blocking`] makes a
//! whole batch of them durable at once:
//!
//! 1. the file data of every tmp file in the batch is flushed (`fdatasync` for a batch of
//!    one, a single `syncfs(2)` of the hot filesystem for a larger batch — one journal
//!    commit instead of one per file, which is what makes concurrent stores cheap);
//! 2. each tmp file is renamed to its fan-out path (or dropped, if that id is present);
//! 3. the directory entries are flushed (the parent directories' `fsync`, or again one
//!    `syncfs`).
//!
//! A crash before step 3 completes leaves either a tmp file (swept at start-up) or a
//! complete object at its final path; never a partial object under its id, because the
//! rename happens only after the data is durable. The caller (the ingest pipeline)
//! records the object in its index only after this returns.
//!
//! Every call here blocks; the `_blocking` suffix says so. Async callers go through the
//! [`BlobStore`](crate::BlobStore) impl, which hops to the blocking pool.

use crate::{
    check_content_address, check_range, BlobStore, ObjectId, ObjectMeta, PutOutcome, TierError,
};
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The hot local-disk tier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HotDisk {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    objects: PathBuf,
    tmp: PathBuf,
    free_space_floor: u64,
    /// Held open for the tier's life: `syncfs(2)` (Linux ≥ 5.8) reports writeback errors
    /// of the filesystem that happened since *this descriptor* was opened, so a fresh
    /// descriptor per call would miss errors of writeback started earlier.
    sync_handle: Arc<File>,
    stages: Arc<StagePool>,
}

/// Bytes an object being received is gathered in before they go to disk past the page
/// cache (`O_DIRECT`, [`HotDisk::create_direct_tmp_blocking`]); a multiple of
/// [`DIRECT_ALIGN`].
pub const DIRECT_STAGE: usize = 256 * 1024;

/// The offset, length and memory alignment of an `O_DIRECT` write here: 4 KiB, the
/// largest logical block size of the devices a hot tier sits on (ext4 and XFS accept
/// any multiple of the device's own, usually 512 bytes).
pub const DIRECT_ALIGN: usize = 4096;

/// Staging buffers kept for reuse: a fresh buffer's pages are faulted in on first touch
/// (about 7 µs per 4 KiB page on a virtual machine that returns freed memory to its
/// host), so each one is allocated once and handed from object to object.
const POOLED_STAGES: usize = 128;

/// A staging buffer whose usable [`DIRECT_STAGE`] bytes start at a [`DIRECT_ALIGN`]
/// boundary of its heap allocation (which does not move with the `Vec`).
#[derive(Debug)]
struct Stage {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl Stage {
    fn new() -> Self {
        let buf = vec![0u8; DIRECT_STAGE + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Stage {
            buf,
            start,
            filled: 0,
        }
    }

    /// A placeholder holding no buffer (for moving a stage out of a struct being
    /// dismantled); never filled nor pooled.
    fn empty() -> Self {
        Stage {
            buf: Vec::new(),
            start: 0,
            filled: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.filled]
    }

    /// Copies as much of `data` as fits; returns how much.
    fn take(&mut self, data: &[u8]) -> usize {
        let space = &mut self.buf[self.start + self.filled..self.start + DIRECT_STAGE];
        let n = space.len().min(data.len());
        space[..n].copy_from_slice(&data[..n]);
        self.filled += n;
        n
    }
}

/// The staging buffers of a hot tier, shared by its clones.
#[derive(Debug, Default)]
struct StagePool(std::sync::Mutex<Vec<Stage>>);

impl StagePool {
    fn get(&self) -> Stage {
        let pooled = self.0.lock().map(|mut p| p.pop()).unwrap_or(None);
        pooled.unwrap_or_else(Stage::new)
    }

    fn put_all(&self, stages: impl IntoIterator<Item = Stage>) {
        for stage in stages {
            self.put(stage);
        }
    }

    /// Takes back the stages no one else holds (a stage an early write still holds is
    /// freed by it instead).
    fn put_shared(&self, stages: Vec<Arc<Stage>>) {
        self.put_all(stages.into_iter().filter_map(|s| Arc::try_unwrap(s).ok()));
    }

    fn put(&self, mut stage: Stage) {
        if stage.buf.is_empty() {
            return; // a placeholder (Stage::empty)
        }
        stage.filled = 0;
        if let Ok(mut pool) = self.0.lock() {
            if pool.len() < POOLED_STAGES {
                pool.push(stage);
            }
        }
    }
}

/// Where the next bytes of a direct tmp object go: the offset past what is on disk, and
/// whether its descriptor still has `O_DIRECT`.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// Bytes already written to the file.
    on_disk: u64,
    /// Whether the descriptor still has `O_DIRECT` (cleared for an unaligned tail, or
    /// after the file system refused an `O_DIRECT` write).
    o_direct: bool,
}

impl Placement {
    /// Writes `bytes` (a staging buffer's, so aligned in memory) at the end of what is on
    /// disk: past the page cache while `O_DIRECT` holds and the length is aligned, else
    /// through it.
    fn write(&mut self, file: &File, path: &Path, bytes: &[u8]) -> Result<(), TierError> {
        use std::os::unix::fs::FileExt;
        if !bytes.len().is_multiple_of(DIRECT_ALIGN) {
            self.buffered(file, path)?;
        }
        let result = file.write_all_at(bytes, self.on_disk);
        match result {
            Err(e) if self.o_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // a file system or device that takes no O_DIRECT write of this shape
                self.buffered(file, path)?;
                file.write_all_at(bytes, self.on_disk)
            }
            other => other,
        }
        .map_err(|e| TierError::io("write", path, e))?;
        self.on_disk += bytes.len() as u64;
        Ok(())
    }

    /// Writes every stage in order: each one's aligned part past the page cache, an
    /// unaligned tail (only the last stage has one) through it.
    fn write_stages(
        &mut self,
        file: &File,
        path: &Path,
        stages: &[Arc<Stage>],
    ) -> Result<(), TierError> {
        for stage in stages {
            let bytes = stage.filled();
            let aligned = bytes.len() - bytes.len() % DIRECT_ALIGN;
            if aligned > 0 {
                self.write(file, path, &bytes[..aligned])?;
            }
            if aligned < bytes.len() {
                self.write(file, path, &bytes[aligned..])?;
            }
        }
        Ok(())
    }

    /// Writes the `stages` of a kept object that no early write took (those after the
    /// first `early.len()`), then waits for the early writes: afterwards all of `stages`
    /// is on disk, or the first failure is returned.
    fn write_rest(
        &mut self,
        file: &File,
        path: &Path,
        stages: &[Arc<Stage>],
        early: &[Arc<WriteDone>],
    ) -> Result<(), TierError> {
        // while kept, nothing was written but by the early writes (a prefix)
        self.on_disk = self.on_disk.max((early.len() * DIRECT_STAGE) as u64);
        let written = self.write_stages(file, path, &stages[early.len()..]);
        let waited = early.iter().try_for_each(|done| done.wait(path));
        written.and(waited)
    }

    /// Clears `O_DIRECT` on the descriptor: later writes go through the page cache.
    fn buffered(&mut self, file: &File, path: &Path) -> Result<(), TierError> {
        if !self.o_direct {
            return Ok(());
        }
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT)
            }
        };
        if rc < 0 {
            return Err(TierError::io(
                "clear O_DIRECT",
                path,
                std::io::Error::last_os_error(),
            ));
        }
        self.o_direct = false;
        Ok(())
    }
}

/// The `O_DIRECT` state of a tmp object: staged bytes not yet on disk.
///
/// While the object stays within `keep` bytes it is kept in memory: full stages are
/// kept, each also handed to an [`EarlyWrite`] when it fills through
/// [`TmpObject::try_keep`], and the rest is written at the end, by
/// [`TmpObject::complete_blocking`] or by a [`DeferredWrite`] on another thread. Once it
/// grows past `keep`, what was kept is written and each later full stage is written as
/// it fills.
#[derive(Debug)]
struct Direct {
    stage: Stage,
    at: Placement,
    pool: Arc<StagePool>,
    /// Full stages, kept while the object stays within `keep`.
    kept: Vec<Arc<Stage>>,
    /// The early writes of the first `early.len()` kept stages.
    early: Vec<Arc<WriteDone>>,
    /// Bytes of the object to keep in memory (0: none).
    keep: u64,
}

impl Direct {
    /// The current stage is full: keeps it (and takes a fresh one) while the object stays
    /// within `keep`; else writes what was kept, then it, and keeps nothing more.
    fn stage_full(&mut self, file: &File, path: &Path) -> Result<(), TierError> {
        if (self.kept.len() as u64 + 1) * DIRECT_STAGE as u64 <= self.keep {
            let full = Arc::new(std::mem::replace(&mut self.stage, self.pool.get()));
            self.kept.push(full);
            return Ok(());
        }
        self.keep = 0;
        let kept = std::mem::take(&mut self.kept);
        let early = std::mem::take(&mut self.early);
        self.at.write_rest(file, path, &kept, &early)?;
        self.pool.put_shared(kept);
        self.at.write(file, path, self.stage.filled())?;
        self.stage.filled = 0;
        Ok(())
    }
}

/// The bytes of an object kept in memory, shared by its tmp object, its early writes and
/// a [`DeferredWrite`]; the buffers go back to their pool when the last holder drops
/// them.
#[derive(Debug)]
struct Kept {
    stages: Vec<Arc<Stage>>,
    pool: Arc<StagePool>,
}

impl Kept {
    fn parts(&self) -> Vec<&[u8]> {
        self.stages.iter().map(|s| s.filled()).collect()
    }
}

/// An object's bytes kept in memory ([`TmpObject::kept_bytes`]), shared: the buffers go
/// back to their pool once the last holder drops them. Never written to again.
#[derive(Debug, Clone)]
pub struct KeptBytes(Arc<Kept>);

impl KeptBytes {
    /// The bytes, in order, as slices of the staging buffers.
    pub fn parts(&self) -> Vec<&[u8]> {
        self.0.parts()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.pool.put_shared(std::mem::take(&mut self.stages));
    }
}

/// How a deferred or early write ended: a failure as its OS error code and message.
type WriteOutcome = Result<(), (Option<i32>, String)>;

/// The outcome of a [`DeferredWrite`] or an [`EarlyWrite`], which its tmp object waits
/// for.
#[derive(Debug, Default)]
struct WriteDone {
    result: std::sync::Mutex<Option<WriteOutcome>>,
    ready: std::sync::Condvar,
}

impl WriteDone {
    fn set(&self, result: Result<(), TierError>) {
        let mut slot = self.result.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(result.map_err(|e| (os_code(&e), e.to_string())));
        self.ready.notify_all();
    }

    /// Waits for the outcome; a failure comes back as a write failure of `path` with the
    /// same OS error code.
    fn wait(&self, path: &Path) -> Result<(), TierError> {
        let mut slot = self.result.lock().unwrap_or_else(|p| p.into_inner());
        while slot.is_none() {
            slot = self.ready.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
        match slot.as_ref().expect("set") {
            Ok(()) => Ok(()),
            Err((code, msg)) => {
                tracing::debug!(path = %path.display(), error = %msg, "deferred write failed");
                Err(TierError::io("write", path, same_error(*code, msg)))
            }
        }
    }
}

/// The write of a kept object's bytes to its tmp file, split off the tmp object
/// ([`TmpObject::defer_write_blocking`]) so that another thread does it while the tmp
/// object goes on (to a journal that writes the same bytes from memory, say). The tmp
/// object's [`TmpObject::complete_blocking`] — and so every persist or place of it —
/// waits for this write and fails with it. Dropped without running, it fails too.
#[derive(Debug)]
pub struct DeferredWrite {
    file: File,
    path: PathBuf,
    at: Placement,
    kept: Arc<Kept>,
    /// The early writes of the first stages, to wait for.
    early: Vec<Arc<WriteDone>>,
    done: Option<Arc<WriteDone>>,
}

impl DeferredWrite {
    /// Writes what no early write took of the object to its tmp file (no sync), waits
    /// for the early writes, and tells the tmp object how it went.
    pub fn run_blocking(mut self) {
        let result = self
            .at
            .write_rest(&self.file, &self.path, &self.kept.stages, &self.early);
        if let Some(done) = self.done.take() {
            done.set(result);
        }
    }
}

/// The write of one full stage of a kept object, started as soon as it filled
/// ([`TmpObject::try_keep`]) so that most of the object is on its way to the disk while
/// the rest arrives; for a thread that may block. Its tmp object (or its
/// [`DeferredWrite`]) waits for it. Dropped without running, it fails.
#[derive(Debug)]
pub struct EarlyWrite {
    file: File,
    path: PathBuf,
    offset: u64,
    stage: Option<Arc<Stage>>,
    done: Option<Arc<WriteDone>>,
}

impl EarlyWrite {
    /// Writes the stage at its offset, past the page cache (no sync).
    pub fn run_blocking(mut self) {
        use std::os::unix::fs::FileExt;
        let stage = self.stage.take().expect("run once");
        let result = match self.file.write_all_at(stage.filled(), self.offset) {
            // a file system or device that takes no O_DIRECT write of this shape
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => OpenOptions::new()
                .write(true)
                .open(&self.path)
                .and_then(|f| f.write_all_at(stage.filled(), self.offset)),
            other => other,
        }
        .map_err(|e| TierError::io("write", &self.path, e));
        // the stage goes back before the waiter wakes (Kept then finds it unshared)
        drop(stage);
        if let Some(done) = self.done.take() {
            done.set(result);
        }
    }
}

impl Drop for EarlyWrite {
    fn drop(&mut self) {
        abandon(&mut self.done, &self.path, "an early write was abandoned");
    }
}

impl Drop for DeferredWrite {
    fn drop(&mut self) {
        abandon(
            &mut self.done,
            &self.path,
            "the object's deferred write was abandoned",
        );
    }
}

/// Fails a write dropped before it ran (its tmp object then fails to complete).
fn abandon(done: &mut Option<Arc<WriteDone>>, path: &Path, why: &'static str) {
    if let Some(done) = done.take() {
        done.set(Err(TierError::io(
            "write",
            path,
            std::io::Error::other(why),
        )));
    }
}

/// An object being written. Its file is removed on drop unless it was persisted.
#[derive(Debug)]
pub struct TmpObject {
    file: File,
    path: PathBuf,
    /// Bytes accepted (on disk and staged).
    len: u64,
    armed: bool,
    /// Set for a direct tmp object until [`TmpObject::complete_blocking`].
    direct: Option<Box<Direct>>,
    /// The object's bytes kept in memory (see [`TmpObject::kept`]).
    kept: Option<Arc<Kept>>,
    /// The write another thread does for it ([`TmpObject::defer_write_blocking`]).
    deferred: Option<Arc<WriteDone>>,
}

impl TmpObject {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends bytes to the tmp file, and asks the kernel to start writing them to disk
    /// now (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, a hint that does not wait), so the
    /// durability sync at commit finds most of the data already written.
    ///
    /// A direct tmp object ([`HotDisk::create_direct_tmp_blocking`]) instead gathers the
    /// bytes in its staging buffers: within its `keep` size it writes nothing yet, beyond
    /// it each full buffer goes to disk past the page cache; the file holds every byte
    /// only after [`TmpObject::complete_blocking`].
    pub fn write_all_blocking(&mut self, buf: &[u8]) -> Result<(), TierError> {
        if let Some(direct) = &mut self.direct {
            let mut rest = buf;
            while !rest.is_empty() {
                let n = direct.stage.take(rest);
                rest = &rest[n..];
                if direct.stage.filled == DIRECT_STAGE {
                    direct.stage_full(&self.file, &self.path)?;
                }
            }
            self.len += buf.len() as u64;
            return Ok(());
        }
        self.file
            .write_all(buf)
            .map_err(|e| TierError::io("write", &self.path, e))?;
        // SAFETY: a plain syscall on a file descriptor we own; failure is harmless.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.len as libc::off64_t,
                buf.len() as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Takes `buf` into memory, with no system call, when this is a direct tmp object that
    /// stays within its `keep` size with it (nothing of it written yet); returns whether
    /// it did. Otherwise nothing is taken: write it with
    /// [`TmpObject::write_all_blocking`]. (For async callers: copying into reused
    /// staging buffers never blocks.)
    ///
    /// Each stage that fills here comes back in `early` as an [`EarlyWrite`] (while the
    /// descriptor has `O_DIRECT`), for the caller to run on a thread that may block.
    pub fn try_keep(&mut self, buf: &[u8], early: &mut Vec<EarlyWrite>) -> bool {
        let Some(direct) = &mut self.direct else {
            return false;
        };
        if direct.at.on_disk > 0 || self.len + buf.len() as u64 > direct.keep {
            return false;
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let n = direct.stage.take(rest);
            rest = &rest[n..];
            if direct.stage.filled == DIRECT_STAGE {
                let full = Arc::new(std::mem::replace(&mut direct.stage, direct.pool.get()));
                let index = direct.kept.len();
                direct.kept.push(full.clone());
                // early writes cover a prefix of the kept stages
                if direct.at.o_direct && direct.early.len() == index {
                    if let Ok(file) = self.file.try_clone() {
                        let done = Arc::new(WriteDone::default());
                        direct.early.push(done.clone());
                        early.push(EarlyWrite {
                            file,
                            path: self.path.clone(),
                            offset: (index * DIRECT_STAGE) as u64,
                            stage: Some(full),
                            done: Some(done),
                        });
                    }
                }
            }
        }
        self.len += buf.len() as u64;
        true
    }

    /// Writes what a direct tmp object still stages: the aligned part past the page
    /// cache, the last partial block through it — or, after
    /// [`TmpObject::defer_write_blocking`], waits for that write and fails with it.
    /// Afterwards the file holds every byte written, for readers of
    /// [`TmpObject::path`] and for the sync that makes it durable. A no-op for a buffered
    /// tmp object and when called again.
    pub fn complete_blocking(&mut self) -> Result<(), TierError> {
        if let Some(done) = self.deferred.take() {
            let result = done.wait(&self.path);
            if result.is_err() {
                // it stays failed for every later caller
                self.deferred = Some(done);
            }
            return result;
        }
        let Some(direct) = self.direct.take() else {
            return Ok(());
        };
        let mut direct = *direct;
        let mut kept = std::mem::take(&mut direct.kept);
        kept.push(Arc::new(std::mem::replace(
            &mut direct.stage,
            Stage::empty(),
        )));
        let early = std::mem::take(&mut direct.early);
        let result = direct.at.write_rest(&self.file, &self.path, &kept, &early);
        let kept = Kept {
            stages: kept,
            pool: direct.pool.clone(),
        };
        if result.is_ok() && direct.keep > 0 && self.len <= direct.keep {
            self.kept = Some(Arc::new(kept));
        }
        result
    }

    /// For a direct tmp object still within its `keep` size (nothing written yet): hands
    /// the write of its bytes to the returned [`DeferredWrite`], for another thread to
    /// run, and keeps them readable here through [`TmpObject::kept`] at once. Any other
    /// tmp object is completed here ([`TmpObject::complete_blocking`]) and `None` comes
    /// back.
    pub fn defer_write_blocking(&mut self) -> Result<Option<DeferredWrite>, TierError> {
        match &self.direct {
            Some(d) if d.keep > 0 && self.len <= d.keep && d.at.on_disk == 0 => {}
            _ => return self.complete_blocking().map(|()| None),
        }
        let file = self
            .file
            .try_clone()
            .map_err(|e| TierError::io("dup", &self.path, e))?;
        let mut direct = *self.direct.take().expect("matched above");
        let mut kept = std::mem::take(&mut direct.kept);
        kept.push(Arc::new(std::mem::replace(
            &mut direct.stage,
            Stage::empty(),
        )));
        let kept = Arc::new(Kept {
            stages: kept,
            pool: direct.pool.clone(),
        });
        let done = Arc::new(WriteDone::default());
        self.kept = Some(kept.clone());
        self.deferred = Some(done.clone());
        Ok(Some(DeferredWrite {
            file,
            path: self.path.clone(),
            at: direct.at,
            kept,
            early: std::mem::take(&mut direct.early),
            done: Some(done),
        }))
    }

    /// The object's bytes, in order, when it was written by a direct tmp object asked to
    /// keep them ([`HotDisk::create_direct_tmp_blocking`]) and stayed within that size;
    /// after [`TmpObject::complete_blocking`] or [`TmpObject::defer_write_blocking`].
    pub fn kept(&self) -> Option<Vec<&[u8]>> {
        self.kept.as_deref().map(Kept::parts)
    }

    /// A hold on the bytes [`TmpObject::kept`] returns that outlives this tmp object
    /// (moved on to be journaled and placed): another thread reads them meanwhile.
    pub fn kept_bytes(&self) -> Option<KeptBytes> {
        self.kept.clone().map(KeptBytes)
    }

    /// Opens the tmp file again for reading (e.g. to parse what was received).
    pub fn reopen_blocking(&self) -> Result<File, TierError> {
        File::open(&self.path).map_err(|e| TierError::io("reopen", &self.path, e))
    }
}

impl Drop for TmpObject {
    fn drop(&mut self) {
        if let Some(mut direct) = self.direct.take() {
            let stage = std::mem::replace(&mut direct.stage, Stage::empty());
            direct.pool.put_shared(std::mem::take(&mut direct.kept));
            direct.pool.put(stage);
        }
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl HotDisk {
    /// Opens (creating if needed) a hot tier rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, TierError> {
        let root = root.into();
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        for dir in [&root, &objects, &tmp] {
            if !dir.is_dir() {
                fs::create_dir_all(dir).map_err(|e| TierError::io("create directory", dir, e))?;
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fsync_dir(parent)?;
                }
            }
        }
        // The 256 first-level fan-out directories exist from the start, so storing an
        // object creates at most one directory (`ab/cd`) and syncs at most two.
        if !objects.join("ff").is_dir() {
            for i in 0..=255u8 {
                let d = objects.join(format!("{i:02x}"));
                fs::create_dir_all(&d).map_err(|e| TierError::io("create directory", &d, e))?;
            }
            fsync_dir(&objects)?;
        }
        let sync_handle =
            Arc::new(File::open(&objects).map_err(|e| TierError::io("open", &objects, e))?);
        Ok(HotDisk {
            inner: Arc::new(Inner {
                root,
                objects,
                tmp,
                free_space_floor: 0,
                sync_handle,
                stages: Arc::default(),
            }),
        })
    }

    /// Opens an existing hot tier without creating anything (for read-only tools).
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Self, TierError> {
        let root = root.into();
        let objects = root.join("objects");
        let sync_handle =
            Arc::new(File::open(&objects).map_err(|e| TierError::io("open", &objects, e))?);
        Ok(HotDisk {
            inner: Arc::new(Inner {
                tmp: root.join("tmp"),
                root,
                objects,
                free_space_floor: 0,
                sync_handle,
                stages: Arc::default(),
            }),
        })
    }

    /// Refuse new objects while fewer than `floor` bytes are free.
    pub fn with_free_space_floor(self, floor: u64) -> Self {
        let inner = &self.inner;
        HotDisk {
            inner: Arc::new(Inner {
                root: inner.root.clone(),
                objects: inner.objects.clone(),
                tmp: inner.tmp.clone(),
                free_space_floor: floor,
                sync_handle: inner.sync_handle.clone(),
                stages: inner.stages.clone(),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn objects_dir(&self) -> &Path {
        &self.inner.objects
    }

    /// Where the object with this id lives (whether or not it exists).
    pub fn path_of(&self, id: &ObjectId) -> PathBuf {
        self.inner.objects.join(id.fanout_path())
    }

    /// Free bytes available to us on the hot filesystem.
    pub fn free_bytes_blocking(&self) -> Result<u64, TierError> {
        self.space_blocking().map(|(free, _)| free)
    }

    /// `(free bytes available to us, total bytes)` of the hot filesystem.
    pub fn space_blocking(&self) -> Result<(u64, u64), TierError> {
        let path = std::ffi::CString::new(self.inner.root.as_os_str().as_encoded_bytes()).map_err(
            |_| {
                TierError::io(
                    "statvfs",
                    &self.inner.root,
                    std::io::ErrorKind::InvalidInput.into(),
                )
            },
        )?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(TierError::io(
                "statvfs",
                &self.inner.root,
                std::io::Error::last_os_error(),
            ));
        }
        Ok((
            st.f_bavail as u64 * st.f_frsize as u64,
            st.f_blocks as u64 * st.f_frsize as u64,
        ))
    }

    /// Errors with [`TierError::BelowFreeSpaceFloor`] when free space is under the floor.
    pub fn check_free_space_blocking(&self) -> Result<(), TierError> {
        let floor = self.inner.free_space_floor;
        if floor == 0 {
            return Ok(());
        }
        let free = self.free_bytes_blocking()?;
        if free < floor {
            return Err(TierError::BelowFreeSpaceFloor {
                path: self.inner.root.clone(),
                free,
                floor,
            });
        }
        Ok(())
    }

    /// Removes every leftover tmp file (from a crash). Call only with exclusive access.
    pub fn sweep_tmp_blocking(&self) -> Result<usize, TierError> {
        let mut removed = 0;
        let dir = &self.inner.tmp;
        let entries = fs::read_dir(dir).map_err(|e| TierError::io("read directory", dir, e))?;
        for entry in entries.flatten() {
            if fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Creates a new tmp file for an incoming object.
    pub fn create_tmp_blocking(&self) -> Result<TmpObject, TierError> {
        self.new_tmp_blocking(false, 0)
    }

    /// Creates a new tmp file whose bytes go to disk past the page cache (`O_DIRECT`,
    /// open(2)), [`DIRECT_STAGE`] bytes at a time from a reused aligned buffer; the
    /// last partial block goes through the page cache at
    /// [`TmpObject::complete_blocking`]. Filling fresh page-cache pages costs more than
    /// the disk write itself on a virtual machine (docs/benchmarks.md, "Where a
    /// one-association store spends its time"); it also keeps a large ingest from
    /// evicting what readers use. Where the file system refuses `O_DIRECT` the object
    /// is written through the page cache, as [`HotDisk::create_tmp_blocking`] does.
    ///
    /// An object of at most `keep` bytes stays in memory, in those buffers, until the tmp
    /// object is dropped ([`TmpObject::kept`]): for a caller that writes it again (the
    /// ingest journal) without reading it back from the disk. Such an object is written
    /// to its file only once it is whole — at [`TmpObject::complete_blocking`], or by the
    /// [`DeferredWrite`] of [`TmpObject::defer_write_blocking`] on another thread — so
    /// receiving it never waits for the disk.
    pub fn create_direct_tmp_blocking(&self, keep: u64) -> Result<TmpObject, TierError> {
        self.new_tmp_blocking(true, keep)
    }

    fn new_tmp_blocking(&self, direct: bool, keep: u64) -> Result<TmpObject, TierError> {
        use std::os::unix::fs::OpenOptionsExt;
        self.check_free_space_blocking()?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .inner
            .tmp
            .join(format!("{}.{}.tmp", std::process::id(), n));
        let open = |flags: i32| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(flags)
                .open(&path)
        };
        let (file, o_direct) = match direct.then(|| open(libc::O_DIRECT)) {
            Some(Ok(file)) => (file, true),
            // EINVAL: this file system has no O_DIRECT (tmpfs before 6.6, some FUSE)
            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => (
                open(0).map_err(|e| TierError::io("create tmp file", &path, e))?,
                false,
            ),
            Some(Err(e)) => return Err(TierError::io("create tmp file", &path, e)),
            None => (
                open(0).map_err(|e| TierError::io("create tmp file", &path, e))?,
                false,
            ),
        };
        Ok(TmpObject {
            file,
            path,
            len: 0,
            armed: true,
            direct: direct.then(|| {
                Box::new(Direct {
                    stage: self.inner.stages.get(),
                    at: Placement {
                        on_disk: 0,
                        o_direct,
                    },
                    pool: self.inner.stages.clone(),
                    kept: Vec::new(),
                    early: Vec::new(),
                    keep,
                })
            }),
            kept: None,
            deferred: None,
        })
    }

    /// Makes a batch of tmp objects durable under their ids (see the module docs).
    /// Each item's result is reported separately; a failed sync fails the whole batch.
    pub fn persist_batch_blocking(
        &self,
        items: Vec<(TmpObject, ObjectId)>,
    ) -> Vec<Result<PutOutcome, TierError>> {
        with_completed(items, |items| self.persist_completed_blocking(items))
    }

    /// [`HotDisk::persist_batch_blocking`] for tmp objects whose files hold all their bytes.
    fn persist_completed_blocking(
        &self,
        items: Vec<(TmpObject, ObjectId)>,
    ) -> Vec<Result<PutOutcome, TierError>> {
        let single = items.len() == 1;
        // 1. file data
        let data_sync = if single {
            items[0]
                .0
                .file
                .sync_data()
                .map_err(|e| TierError::io("fsync", &items[0].0.path, e))
        } else {
            self.syncfs_blocking()
        };
        if let Err(e) = data_sync {
            return fail_all(items.len(), "sync", &self.inner.root, &e);
        }
        // 2. renames
        let (results, touched_dirs) = self.rename_batch_blocking(items);
        // 3. directory entries: an fsync of each directory that gained one (a new object's
        //    own, and the parents of fan-out directories it created), up to
        //    DIR_FSYNCS_BEFORE_SYNCFS of them; beyond that one syncfs. A syncfs also waits
        //    for everything else dirty on the file system (the index's compactions, other
        //    associations' tmp files): in a 5 M-instance archive it doubled the files
        //    phase of a one-association store (0.44 -> 0.94 ms).
        let dir_sync = if touched_dirs.len() <= DIR_FSYNCS_BEFORE_SYNCFS {
            touched_dirs.iter().try_for_each(|d| fsync_dir(d))
        } else {
            self.syncfs_blocking()
        };
        if let Err(e) = dir_sync {
            let msg = e.to_string();
            return results
                .into_iter()
                .map(|r| {
                    r.and(Err(TierError::io(
                        "sync",
                        &self.inner.root,
                        std::io::Error::other(msg.clone()),
                    )))
                })
                .collect();
        }
        results
    }

    /// Moves a batch of tmp objects under their ids **without making anything durable**:
    /// for objects whose bytes an ingest journal already holds durably; a later
    /// [`HotDisk::sync_all_blocking`] makes their data and directory entries durable.
    /// Readers find them at once. (A crash before that sync may leave such an object
    /// torn under its id: whoever holds its bytes elsewhere must check and rewrite it.)
    pub fn place_batch_unsynced_blocking(
        &self,
        items: Vec<(TmpObject, ObjectId)>,
    ) -> Vec<Result<PutOutcome, TierError>> {
        with_completed(items, |items| self.rename_batch_blocking(items).0)
    }

    /// Makes everything written to the hot file system durable (`syncfs(2)`): data,
    /// inodes and directory entries.
    pub fn sync_all_blocking(&self) -> Result<(), TierError> {
        self.syncfs_blocking()
    }

    /// Renames each tmp object to its fan-out path (or drops it, if that id is present);
    /// returns the results and the directories that gained an entry.
    fn rename_batch_blocking(
        &self,
        items: Vec<(TmpObject, ObjectId)>,
    ) -> (Vec<Result<PutOutcome, TierError>>, Vec<PathBuf>) {
        let mut touched_dirs: Vec<PathBuf> = Vec::new();
        let mut results = Vec::with_capacity(items.len());
        for (mut tmp, id) in items {
            let dest = self.path_of(&id);
            if dest.exists() {
                // Its entry may come from a batch whose directory sync failed: sync the
                // directory again with this batch before anyone relies on it.
                if let Some(parent) = dest.parent() {
                    if !touched_dirs.iter().any(|d| d == parent) {
                        touched_dirs.push(parent.to_path_buf());
                    }
                }
                results.push(Ok(PutOutcome::AlreadyPresent));
                continue; // tmp removed on drop
            }
            let parent = dest
                .parent()
                .expect("fan-out path has a parent")
                .to_path_buf();
            let result = create_fanout_dir(&self.inner.objects, &parent, &mut touched_dirs)
                .and_then(|()| {
                    fs::rename(&tmp.path, &dest)
                        .map_err(|e| TierError::io("rename into place", &dest, e))
                });
            match result {
                Ok(()) => {
                    tmp.armed = false;
                    if !touched_dirs.contains(&parent) {
                        touched_dirs.push(parent);
                    }
                    results.push(Ok(PutOutcome::Stored));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        (results, touched_dirs)
    }

    fn syncfs_blocking(&self) -> Result<(), TierError> {
        // SAFETY: the handle is an open file descriptor for the life of `self`.
        let rc = unsafe { libc::syncfs(self.inner.sync_handle.as_raw_fd()) };
        if rc != 0 {
            return Err(TierError::io(
                "syncfs",
                &self.inner.root,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Opens a stored object for reading.
    pub fn open_object_blocking(&self, id: &ObjectId) -> Result<File, TierError> {
        let path = self.path_of(id);
        File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                TierError::NotFound { id: *id }
            } else {
                TierError::io("open", &path, e)
            }
        })
    }

    /// Re-hashes a stored object; returns the id its bytes hash to and its size.
    pub fn rehash_blocking(&self, id: &ObjectId) -> Result<(ObjectId, u64), TierError> {
        let mut file = self.open_object_blocking(id)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| TierError::io("read", self.path_of(id), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((ObjectId::from_hash(hasher.finalize()), size))
    }

    /// Every file under `objects/` whose name is a valid id at the right fan-out path;
    /// anything else found there is returned as a stray path.
    pub fn list_blocking(&self) -> Result<(Vec<ObjectId>, Vec<PathBuf>), TierError> {
        let mut ids = Vec::new();
        let mut strays = Vec::new();
        let read =
            |dir: &Path| fs::read_dir(dir).map_err(|e| TierError::io("read directory", dir, e));
        for l1 in read(&self.inner.objects)?.flatten() {
            if !l1.path().is_dir() {
                strays.push(l1.path());
                continue;
            }
            for l2 in read(&l1.path())?.flatten() {
                if !l2.path().is_dir() {
                    strays.push(l2.path());
                    continue;
                }
                for obj in read(&l2.path())?.flatten() {
                    let name = obj.file_name();
                    match name.to_str().and_then(ObjectId::from_hex) {
                        Some(id) if self.path_of(&id) == obj.path() => ids.push(id),
                        _ => strays.push(obj.path()),
                    }
                }
            }
        }
        Ok((ids, strays))
    }

    fn put_blocking(&self, id: &ObjectId, bytes: &[u8]) -> Result<PutOutcome, TierError> {
        check_content_address(id, bytes)?;
        if self.path_of(id).exists() {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let mut tmp = self.create_tmp_blocking()?;
        tmp.write_all_blocking(bytes)?;
        self.persist_batch_blocking(vec![(tmp, *id)])
            .pop()
            .expect("one result per item")
    }

    fn get_range_blocking(
        &self,
        id: &ObjectId,
        range: Option<Range<u64>>,
    ) -> Result<Bytes, TierError> {
        let mut file = self.open_object_blocking(id)?;
        let path = self.path_of(id);
        let size = file
            .metadata()
            .map_err(|e| TierError::io("stat", &path, e))?
            .len();
        let range = range.unwrap_or(0..size);
        check_range(id, &range, size)?;
        file.seek(SeekFrom::Start(range.start))
            .map_err(|e| TierError::io("seek", &path, e))?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        file.read_exact(&mut buf)
            .map_err(|e| TierError::io("read", &path, e))?;
        Ok(Bytes::from(buf))
    }
}

fn create_fanout_dir(
    objects: &Path,
    parent: &Path,
    touched: &mut Vec<PathBuf>,
) -> Result<(), TierError> {
    if parent.is_dir() {
        return Ok(());
    }
    // Record every directory that gains an entry so its entry is synced too.
    let mid = parent.parent().unwrap_or(objects).to_path_buf();
    if !mid.is_dir() && !touched.contains(&objects.to_path_buf()) {
        touched.push(objects.to_path_buf());
    }
    fs::create_dir_all(parent).map_err(|e| TierError::io("create directory", parent, e))?;
    if !touched.contains(&mid) {
        touched.push(mid);
    }
    Ok(())
}

/// Completes each tmp object ([`TmpObject::complete_blocking`]: what it still stages, or
/// its deferred write); one that fails gets that error as its result (its tmp file is
/// dropped), the others go on to `then`, which returns one result for each of them.
fn with_completed(
    items: Vec<(TmpObject, ObjectId)>,
    then: impl FnOnce(Vec<(TmpObject, ObjectId)>) -> Vec<Result<PutOutcome, TierError>>,
) -> Vec<Result<PutOutcome, TierError>> {
    let mut failed = Vec::with_capacity(items.len());
    let mut ready = Vec::with_capacity(items.len());
    for (mut tmp, id) in items {
        match tmp.complete_blocking() {
            Ok(()) => {
                failed.push(None);
                ready.push((tmp, id));
            }
            Err(e) => failed.push(Some(e)),
        }
    }
    let mut done = if ready.is_empty() {
        Vec::new()
    } else {
        then(ready)
    }
    .into_iter();
    failed
        .into_iter()
        .map(|f| match f {
            Some(e) => Err(e),
            None => done.next().expect("one result per completed object"),
        })
        .collect()
}

/// The OS error code of a failure, for passing it on (so that
/// [`TierError::is_out_of_space`] still answers for a copy of it).
fn os_code(e: &TierError) -> Option<i32> {
    match e {
        TierError::Io { source, .. } if source.raw_os_error().is_some() => source.raw_os_error(),
        e if e.is_out_of_space() => Some(libc::ENOSPC),
        _ => None,
    }
}

/// An I/O error standing for a failure described by its OS error code or message.
fn same_error(code: Option<i32>, msg: &str) -> std::io::Error {
    match code {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::other(msg.to_string()),
    }
}

/// `n` results, each the failure `e` of the whole batch (as `action` on `path`).
fn fail_all(
    n: usize,
    action: &'static str,
    path: &Path,
    e: &TierError,
) -> Vec<Result<PutOutcome, TierError>> {
    let (code, msg) = (os_code(e), e.to_string());
    (0..n)
        .map(|_| Err(TierError::io(action, path, same_error(code, &msg))))
        .collect()
}

/// Directories a commit group syncs one by one before one syncfs is cheaper.
const DIR_FSYNCS_BEFORE_SYNCFS: usize = 8;

fn fsync_dir(dir: &Path) -> Result<(), TierError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TierError::io("fsync directory", dir, e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TierError> + Send + 'static,
) -> Result<T, TierError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        TierError::io(
            "join blocking task",
            PathBuf::new(),
            std::io::Error::other(e),
        )
    })?
}

#[async_trait::async_trait]
impl BlobStore for HotDisk {
    async fn put(&self, id: &ObjectId, bytes: Bytes) -> Result<PutOutcome, TierError> {
        let (this, id) = (self.clone(), *id);
        blocking(move || this.put_blocking(&id, &bytes)).await
    }

    async fn get(&self, id: &ObjectId) -> Result<Bytes, TierError> {
        let (this, id) = (self.clone(), *id);
        blocking(move || this.get_range_blocking(&id, None)).await
    }

    async fn get_range(&self, id: &ObjectId, range: Range<u64>) -> Result<Bytes, TierError> {
        let (this, id) = (self.clone(), *id);
        blocking(move || this.get_range_blocking(&id, Some(range))).await
    }

    async fn head(&self, id: &ObjectId) -> Result<ObjectMeta, TierError> {
        let (this, id) = (self.clone(), *id);
        blocking(move || {
            let file = this.open_object_blocking(&id)?;
            let size = file
                .metadata()
                .map_err(|e| TierError::io("stat", this.path_of(&id), e))?
                .len();
            Ok(ObjectMeta { id, size })
        })
        .await
    }

    async fn delete(&self, id: &ObjectId) -> Result<(), TierError> {
        let (this, id) = (self.clone(), *id);
        blocking(move || {
            let path = this.path_of(&id);
            match fs::remove_file(&path) {
                Ok(()) => fsync_dir(path.parent().expect("fan-out parent")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(TierError::io("delete", &path, e)),
            }
        })
        .await
    }

    async fn list(&self) -> Result<Vec<ObjectId>, TierError> {
        let this = self.clone();
        blocking(move || this.list_blocking().map(|(ids, _)| ids)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn hot_disk_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = HotDisk::open(dir.path()).unwrap();
        crate::conformance::run_suite(&store).await;
    }

    #[test]
    fn batch_persist_dedupes_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let hot = HotDisk::open(dir.path()).unwrap();
        let mut items = Vec::new();
        for payload in [&b"one"[..], b"two", b"one"] {
            let mut tmp = hot.create_tmp_blocking().unwrap();
            tmp.write_all_blocking(payload).unwrap();
            items.push((tmp, ObjectId::of_bytes(payload)));
        }
        let outcomes: Vec<_> = hot
            .persist_batch_blocking(items)
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            outcomes,
            vec![
                PutOutcome::Stored,
                PutOutcome::Stored,
                PutOutcome::AlreadyPresent
            ]
        );
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let (ids, strays) = hot.list_blocking().unwrap();
        assert_eq!(ids.len(), 2);
        assert!(strays.is_empty());
    }

    /// A direct tmp object holds exactly the bytes written, whatever their sizes and
    /// however they are cut (aligned stages past the page cache, the tail through it);
    /// it keeps them in memory while they fit in `keep`, and no more once they do not.
    #[test]
    fn direct_tmp_objects_hold_and_keep_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let hot = HotDisk::open(dir.path()).unwrap();
        let keep = 4 * DIRECT_STAGE as u64;
        for size in [
            0,
            1,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            DIRECT_STAGE - 1,
            DIRECT_STAGE,
            DIRECT_STAGE + 7,
            3 * DIRECT_STAGE + DIRECT_ALIGN + 3,
            4 * DIRECT_STAGE,
            4 * DIRECT_STAGE + 1,
            9 * DIRECT_STAGE + 5,
        ] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            let mut tmp = hot.create_direct_tmp_blocking(keep).unwrap();
            // in uneven pieces, as P-DATA arrives
            for piece in bytes.chunks(100_003) {
                tmp.write_all_blocking(piece).unwrap();
            }
            tmp.complete_blocking().unwrap();
            tmp.complete_blocking().unwrap(); // idempotent
            assert_eq!(tmp.len(), size as u64);
            assert_eq!(std::fs::read(tmp.path()).unwrap(), bytes, "size {size}");
            match tmp.kept() {
                Some(parts) => {
                    assert!(size as u64 <= keep, "size {size} kept beyond {keep}");
                    assert_eq!(parts.concat(), bytes, "size {size}");
                }
                None => assert!(size as u64 > keep, "size {size} not kept"),
            }
            let id = ObjectId::of_bytes(&bytes);
            let r = hot.persist_batch_blocking(vec![(tmp, id)]);
            assert!(r[0].is_ok(), "{r:?}");
            assert_eq!(hot.rehash_blocking(&id).unwrap(), (id, size as u64));
        }
    }

    /// A kept object's write handed to another thread: its bytes are readable from
    /// memory at once, persisting it waits for the write, and an abandoned or failed
    /// write fails the persist (nothing is placed under the id).
    #[test]
    fn a_deferred_write_is_waited_for_and_its_failure_fails_the_persist() {
        let dir = tempfile::tempdir().unwrap();
        let hot = HotDisk::open(dir.path()).unwrap();
        let keep = 4 * DIRECT_STAGE as u64;
        for size in [0, 1, DIRECT_STAGE, 2 * DIRECT_STAGE + 13, 4 * DIRECT_STAGE] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 13 + size) as u8).collect();
            let mut tmp = hot.create_direct_tmp_blocking(keep).unwrap();
            let mut early = Vec::new();
            for (i, piece) in bytes.chunks(16_384).enumerate() {
                if i % 2 == 0 {
                    assert!(tmp.try_keep(piece, &mut early), "size {size}: within keep");
                } else {
                    tmp.write_all_blocking(piece).unwrap();
                }
            }
            // receiving never waited for the disk: the full stages that filled through
            // try_keep are handed out as early writes, the rest is written at the end
            let write = tmp.defer_write_blocking().unwrap().expect("deferred");
            assert_eq!(tmp.kept().unwrap().concat(), bytes, "size {size}");
            let writer = std::thread::spawn(move || {
                // the early writes last, after the deferred write began waiting for them
                std::thread::sleep(std::time::Duration::from_millis(20));
                write.run_blocking();
            });
            let early_writer = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(40));
                for w in early {
                    w.run_blocking();
                }
            });
            let id = ObjectId::of_bytes(&bytes);
            let r = hot.persist_batch_blocking(vec![(tmp, id)]);
            writer.join().unwrap();
            early_writer.join().unwrap();
            assert!(r[0].is_ok(), "{r:?}");
            assert_eq!(hot.rehash_blocking(&id).unwrap(), (id, size as u64));
        }
        // abandoned: the persist fails and leaves nothing under the id
        let mut tmp = hot.create_direct_tmp_blocking(keep).unwrap();
        tmp.write_all_blocking(b"never written").unwrap();
        drop(tmp.defer_write_blocking().unwrap().expect("deferred"));
        let id = ObjectId::of_bytes(b"never written");
        let r = hot.persist_batch_blocking(vec![(tmp, id)]);
        assert!(r[0].is_err(), "{r:?}");
        assert!(!hot.path_of(&id).exists());
        // an abandoned early write fails the deferred write that waits for it, and also
        // a completion in place once the object grows past `keep`
        let bytes = vec![3u8; DIRECT_STAGE + 10];
        for past_keep in [false, true] {
            let mut tmp = hot.create_direct_tmp_blocking(keep).unwrap();
            let mut early = Vec::new();
            assert!(tmp.try_keep(&bytes, &mut early));
            assert_eq!(early.len(), 1);
            drop(early);
            let r = if past_keep {
                tmp.write_all_blocking(&vec![4u8; 4 * DIRECT_STAGE])
            } else {
                let write = tmp.defer_write_blocking().unwrap().expect("deferred");
                write.run_blocking();
                tmp.complete_blocking()
            };
            assert!(r.is_err(), "past keep {past_keep}: {r:?}");
        }
        // past `keep` nothing is deferred: completed in place
        let big = vec![7u8; 4 * DIRECT_STAGE + 1];
        let mut tmp = hot.create_direct_tmp_blocking(keep).unwrap();
        assert!(
            !tmp.try_keep(&big, &mut Vec::new()),
            "beyond keep: not taken"
        );
        tmp.write_all_blocking(&big).unwrap();
        assert!(tmp.defer_write_blocking().unwrap().is_none());
        assert_eq!(std::fs::read(tmp.path()).unwrap(), big);
        assert!(tmp.kept().is_none());
    }

    #[test]
    fn dropped_tmp_is_removed_and_floor_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let hot = HotDisk::open(dir.path()).unwrap();
        let tmp = hot.create_tmp_blocking().unwrap();
        let path = tmp.path().to_path_buf();
        drop(tmp);
        assert!(!path.exists());
        let full = hot.with_free_space_floor(u64::MAX);
        let err = full.create_tmp_blocking().unwrap_err();
        assert!(err.is_out_of_space(), "{err}");
    }
}
