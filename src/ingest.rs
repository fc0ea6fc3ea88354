//! # Ingest: received bytes → durable, indexed object (DESIGN promises 1–3)
//!
//! 1. [`ObjectWriter`] streams the deterministic Part-10 prefix and then the dataset, as
//!    it arrives, into a hot-tier tmp object while hashing it with blake3. An object the
//!    ingest journal can take (up to [`journal::MAX_GROUP`]) is hashed and gathered in
//!    reused staging buffers as each chunk arrives, on the receiving task (a copy, no
//!    system call), and written to its file only once whole (step 2); a larger one goes
//!    to its file [`FLUSH_AT`] bytes at a time, and is never held in memory whole.
//! 2. [`Ingest::submit_blocking`] parses only the header (stopping before pixel data),
//!    checks it against what the sender claimed, and hands the object to the group
//!    committer; the same thread then captures a gathered object's metadata record
//!    ([`LateMetadata`]) and writes it to its tmp file
//!    ([`strata_tiers::hot::DeferredWrite`]) while the committer journals it from memory.
//! 3. The group committer takes every object waiting and makes it durable — a small
//!    group by one append to the ingest journal and one `fdatasync`, then renames the
//!    files into place (once each file is written) and indexes them unsynced; a large
//!    group or one the journal cannot take by syncing the files, renaming them, syncing
//!    the directory entries and one synced index batch — and only then answers each
//!    caller. Concurrent stores thus share syncs: that is the group commit. Its two
//!    stages (files, index) run on two threads as a pipeline.
//!
//! Only after the committer answers may the caller acknowledge (C-STORE-RSP success).
//! A crash before that leaves a tmp file (swept at start-up) or a complete object that
//! the index lacks (adopted at start-up by start-up recovery in [`crate::storage`]).

use crate::audit::Actor;
use crate::config::ConflictPolicy;
use crate::dicom::header::{
    dataset_hash_blocking, read_header_blocking, read_header_from, InstanceAttrs,
};
use crate::dicom::part10::{
    bare_dataset_meta, object_prefix, read_foreign_meta, MetaError, UNKNOWN_UID,
};
use crate::index::{CommitOutcome, Index, NewObject, Provenance};
use crate::metrics::{Metrics, RejectReason};
use crate::storage::journal::{self, Journal};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use std::io::Read;
use std::sync::mpsc;
use std::sync::Arc;
use strata_tiers::hot::{DeferredWrite, TmpObject};
use strata_tiers::{HotDisk, ObjectId, TierError};

/// The tmp file to go on writing — after re-checking the free-space floor, so a long
/// data set cannot fill the disk — or a new one.
/// A new tmp file is written past the page cache, keeping up to `keep` bytes of the
/// object in memory for the journal ([`HotDisk::create_direct_tmp_blocking`]).
fn tmp_with_room(
    hot: &HotDisk,
    tmp: Option<TmpObject>,
    keep: u64,
) -> Result<TmpObject, IngestError> {
    match tmp {
        Some(t) => {
            hot.check_free_space_blocking()?;
            Ok(t)
        }
        None => Ok(hot.create_direct_tmp_blocking(keep)?),
    }
}

/// Buffered bytes that trigger a write to the tmp file.
pub const FLUSH_AT: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("out of space: {0}")]
    OutOfSpace(String),
    #[error("dataset does not match: {0}")]
    DatasetMismatch(String),
    #[error("cannot understand the dataset: {0}")]
    Unparseable(String),
    #[error("a different version of this instance is stored: {0}")]
    ConflictingVersion(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

impl IngestError {
    pub fn reason(&self) -> RejectReason {
        match self {
            IngestError::OutOfSpace(_) => RejectReason::OutOfSpace,
            IngestError::DatasetMismatch(_) => RejectReason::DatasetMismatch,
            IngestError::Unparseable(_) => RejectReason::Unparseable,
            IngestError::ConflictingVersion(_) => RejectReason::ConflictingVersion,
            IngestError::Storage(_) => RejectReason::InternalError,
        }
    }
}

impl From<TierError> for IngestError {
    fn from(e: TierError) -> Self {
        if e.is_out_of_space() {
            IngestError::OutOfSpace(e.to_string())
        } else {
            IngestError::Storage(e.to_string())
        }
    }
}

/// A stored (or already present) object, as reported to the caller.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: ObjectId,
    pub size: u64,
    pub outcome: CommitOutcome,
    pub attrs: InstanceAttrs,
}

/// What [`Ingest::screen_blocking`] found about a written object.
enum Screen {
    /// A new SOP Instance UID, the same bytes as a stored version, or not comparable.
    Unknown,
    /// A stored SOP Instance UID with another data set (its hash, hex).
    Other { dataset: String },
    /// A stored SOP Instance UID, and the same data set as the stored version `as_id`.
    Same { as_id: ObjectId },
}

fn to_hex(hash: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

struct CommitJob {
    tmp: TmpObject,
    object: NewObject,
    /// Set when the data set is already stored as this object: nothing is persisted or
    /// indexed; the committer audits and answers in order with the others.
    same_as: Option<ObjectId>,
    /// Who stored it, for the audit record the committer writes before the answer.
    actor: Actor,
    reply: Reply,
    /// The object's metadata record when it is captured after the hand-off, while the
    /// committer journals the object ([`LateMetadata`]); the index stage takes it.
    metadata_later: Option<LateRecord>,
}

/// Where the committer receives a [`LateMetadata`]'s record (`None`: none could be
/// captured).
type LateRecord = mpsc::Receiver<Option<Vec<u8>>>;

/// The metadata record of an object kept in memory, captured by the submitting thread
/// after it handed the object on ([`Ingest::submit_blocking`]), so that the capture
/// (dicom-object's parse, dicom-json, zstd: a few tenths of a millisecond of CPU) runs
/// while the committer waits for the journal's `fdatasync`, not before it. The journal
/// record goes without it (metadata length 0: replay captures it again from the
/// object, docs/formats.md); the index record gets it.
pub(crate) struct LateMetadata {
    kept: strata_tiers::hot::KeptBytes,
    tx: mpsc::SyncSender<Option<Vec<u8>>>,
}

impl LateMetadata {
    /// Captures the record and hands it to the committer. Dropped unrun, the object is
    /// indexed without a record (read from the object when asked for, as for objects
    /// stored before records existed).
    pub(crate) fn capture(self) {
        let parts = self.kept.parts();
        let _ = self
            .tx
            .send(crate::dicom::metadata::capture_from(Slices::new(&parts)));
    }
}

/// Completes an instance's attributes before it is committed, by the archive's policy
/// (the sender's default IssuerOfPatientID: [`crate::archive::patients`]); an error
/// refuses the instance before anything is indexed.
pub type AttrsPolicy =
    Arc<dyn Fn(&mut InstanceAttrs, &Provenance) -> Result<(), String> + Send + Sync>;

/// The ingest pipeline of one archive. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    policy: Option<AttrsPolicy>,
    hot: HotDisk,
    index: Arc<dyn Index>,
    /// Set when a sync or index commit failed: files may then be on disk unindexed, so
    /// the next start must run the orphan scan (no clean-shutdown marker).
    failures: Arc<std::sync::atomic::AtomicBool>,
    conflicts: ConflictPolicy,
    jobs: mpsc::Sender<CommitJob>,
    metrics: Metrics,
    committer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Queue each new object for a replica in the cold tier in its commit
    /// ([`NewObject::replicate`]).
    replicate: bool,
    /// The ingest journal and its checkpointer, when `[ingest] journal` is on.
    journal: Option<Arc<Journal>>,
    checkpointer: Arc<std::sync::Mutex<Option<Checkpointer>>>,
}

/// The thread that checkpoints the journal ([`Journal::checkpoint_blocking`]) every
/// `[ingest] journal_checkpoint_ms` while records were applied since, and prepares the
/// next segment ahead of the appender.
struct Checkpointer {
    stop: mpsc::Sender<()>,
    handle: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    fn start(journal: Arc<Journal>, every: std::time::Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("strata-checkpointer".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if journal.behind() {
                        if let Err(e) = journal.checkpoint_blocking() {
                            tracing::error!(error = %e, "journal checkpoint failed (retried)");
                        }
                    }
                    if let Err(e) = journal.prepare_ahead_blocking() {
                        tracing::debug!(error = %e, "next journal segment not prepared yet");
                    }
                }
            })
            .expect("spawn checkpointer thread");
        Checkpointer { stop, handle }
    }
}

impl Ingest {
    /// Starts the group committer thread. It stops when every `Ingest` clone is dropped.
    pub fn start(
        hot: HotDisk,
        index: Arc<dyn Index>,
        conflicts: ConflictPolicy,
        max_batch: usize,
        metrics: Metrics,
        audit: Option<crate::audit::AuditLog>,
        journal: Option<(Journal, std::time::Duration)>,
    ) -> Self {
        let checkpointer = journal.map(|(journal, every)| {
            let journal = Arc::new(journal);
            (journal.clone(), Checkpointer::start(journal, every))
        });
        let (journal, checkpointer) = match checkpointer {
            Some((journal, c)) => (Some(journal), Some(c)),
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel::<CommitJob>();
        let failures = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let parts = CommitterParts {
            hot: hot.clone(),
            index: index.clone(),
            max_batch: max_batch.max(1),
            metrics: metrics.clone(),
            failures: failures.clone(),
            audit,
            journal: journal.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("strata-committer".into())
            .spawn(move || run_committer(rx, parts))
            .expect("spawn committer thread");
        Ingest {
            policy: None,
            hot,
            index,
            failures,
            conflicts,
            jobs: tx,
            metrics,
            committer: Arc::new(std::sync::Mutex::new(Some(handle))),
            replicate: false,
            journal,
            checkpointer: Arc::new(std::sync::Mutex::new(checkpointer)),
        }
    }

    /// This pipeline, queueing each new object for a replica in the cold tier
    /// (docs/scale-out.md "Durability across nodes").
    pub fn with_replication(mut self, replicate: bool) -> Self {
        self.replicate = replicate;
        self
    }

    /// This pipeline, completing each instance's attributes with `policy`.
    pub fn with_attrs_policy(mut self, policy: AttrsPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Stops accepting work and waits until the committer has answered everything and
    /// released the index. Call once every other clone is gone (their senders keep the
    /// committer alive).
    pub fn shutdown_blocking(self) {
        let Ingest {
            jobs,
            committer,
            journal,
            checkpointer,
            ..
        } = self;
        drop(jobs);
        let handle = committer.lock().expect("committer handle lock").take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        let checkpointer = checkpointer.lock().expect("checkpointer lock").take();
        if let Some(c) = checkpointer {
            let _ = c.stop.send(());
            let _ = c.handle.join();
        }
        // everything applied made durable without the journal: the next start replays
        // nothing (a failure here only means it will)
        if let Some(journal) = journal {
            if let Err(e) = journal.checkpoint_blocking() {
                tracing::error!(error = %e, "final journal checkpoint failed; the next start replays");
            }
        }
    }

    /// Whether any sync or index commit failed since start (see `failures`).
    pub fn had_failures(&self) -> bool {
        self.failures.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn hot(&self) -> &HotDisk {
        &self.hot
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Bytes of an object received over the network kept in memory: what the journal
    /// may take, so that it is not read back (0 without a journal).
    pub fn keep(&self) -> u64 {
        if self.journal.is_some() {
            journal::MAX_GROUP
        } else {
            0
        }
    }

    /// A writer for an object received over the network, into `tmp` when the caller
    /// made it already (a direct tmp object keeping [`Ingest::keep`] bytes, made on a
    /// thread that may block).
    pub fn writer(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax_uid: &str,
        tmp: Option<TmpObject>,
    ) -> ObjectWriter {
        ObjectWriter::new(
            self.hot.clone(),
            object_prefix(sop_class_uid, sop_instance_uid, transfer_syntax_uid),
            self.keep(),
            tmp,
        )
    }

    /// Checks a fully written tmp object (one pass: framing and header values) against
    /// what the sender claimed and hands it to the group committer. The returned
    /// [`PendingCommit`] resolves once the object is durable, indexed and audited (as
    /// stored by `actor`), and only after the returned [`LateMetadata`], if any, was
    /// captured or dropped: the caller runs it next, on its own thread.
    fn submit_blocking(
        &self,
        written: WrittenObject,
        expected_sop_class_uid: &str,
        expected_sop_instance_uid: &str,
        provenance: Provenance,
        actor: Actor,
    ) -> Result<(PendingCommit, Option<LateMetadata>), IngestError> {
        // the object's bytes as still held in memory, else its file
        let kept = written.tmp.kept();
        let mut attrs = match &kept {
            Some(parts) => read_header_from(Slices::new(parts)),
            None => read_header_blocking(written.tmp.path()),
        }
        .map_err(|e| IngestError::Unparseable(e.to_string()))?;
        if attrs.sop_instance_uid != expected_sop_instance_uid {
            return Err(IngestError::DatasetMismatch(format!(
                "dataset SOP Instance UID {} differs from the announced {}",
                attrs.sop_instance_uid, expected_sop_instance_uid
            )));
        }
        if attrs.sop_class_uid != expected_sop_class_uid {
            return Err(IngestError::DatasetMismatch(format!(
                "dataset SOP Class UID {} differs from the announced {}",
                attrs.sop_class_uid, expected_sop_class_uid
            )));
        }
        if let Some(policy) = &self.policy {
            policy(&mut attrs, &provenance).map_err(IngestError::Storage)?;
        }
        let screened = self.screen_blocking(&attrs, &written);
        if self.conflicts == ConflictPolicy::Reject && !matches!(screened, Screen::Same { .. }) {
            self.refuse_conflicting_version(&attrs, &written.id)?;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        // The metadata record: none for a data set stored already (not indexed); kept
        // in memory, captured after the hand-off; else from the file, now (the
        // committer renames it)
        let same = matches!(screened, Screen::Same { .. });
        let late = written.tmp.kept_bytes().filter(|_| !same).map(|kept| {
            let (tx, rx) = mpsc::sync_channel(1);
            (LateMetadata { kept, tx }, rx)
        });
        let (dataset, same_as) = match screened {
            Screen::Unknown => (None, None),
            Screen::Other { dataset } => (Some(dataset), None),
            Screen::Same { as_id } => (None, Some(as_id)),
        };
        let object = NewObject {
            id: written.id,
            size: written.size,
            attrs: attrs.clone(),
            provenance,
            dataset,
            metadata: match &late {
                None if !same => crate::dicom::metadata::capture_blocking(written.tmp.path()),
                _ => None,
            },
            replicate: self.replicate,
        };
        let (late, metadata_later) = late.unzip();
        self.jobs
            .send(CommitJob {
                tmp: written.tmp,
                object,
                same_as,
                actor,
                reply,
                metadata_later,
            })
            .map_err(|_| IngestError::Storage("the committer has stopped".into()))?;
        let pending = PendingCommit {
            answer,
            stored: Stored {
                id: written.id,
                size: written.size,
                outcome: CommitOutcome::Stored,
                attrs,
            },
        };
        Ok((pending, late))
    }

    /// Whether a written object's SOP Instance UID is already stored under other bytes and,
    /// if so, whether one of the stored versions holds the same data set (equal data-set
    /// hashes, `docs/formats.md`): the same instance re-encoded by another path (another
    /// transfer syntax, group lengths, padding) is then no new version (issue 12).
    ///
    /// A stored version is compared by the hash recorded with it or, failing that, by
    /// hashing its hot copy; a version only in the cold tier without a recorded hash
    /// cannot be compared, and the new object becomes a version (nothing is lost; the log
    /// says why). Any read failure here likewise keeps the new object.
    fn screen_blocking(&self, attrs: &InstanceAttrs, written: &WrittenObject) -> Screen {
        let entry = match self.index.instance(&attrs.sop_instance_uid) {
            Ok(Some(entry)) => entry,
            // unknown UID; or the index fails, which the commit will report
            _ => return Screen::Unknown,
        };
        let versions = &entry.record.versions;
        if versions.iter().any(|v| v.id == written.id.to_hex()) {
            return Screen::Unknown; // the same bytes: the committer says "already present"
        }
        let hashed = match written.tmp.kept() {
            Some(parts) => crate::dicom::header::dataset_hash_from(Slices::new(&parts)),
            None => dataset_hash_blocking(written.tmp.path()),
        };
        let dataset = match hashed {
            Ok(hash) => to_hex(&hash),
            Err(e) => {
                tracing::warn!(sop_instance_uid = %attrs.sop_instance_uid, error = %e,
                    "cannot compute the data-set hash; stored as a new version");
                return Screen::Unknown;
            }
        };
        for version in versions.iter().rev() {
            let Some(id) = ObjectId::from_hex(&version.id) else {
                continue;
            };
            let known = match &version.dataset {
                Some(hash) => Some(hash.clone()),
                None => {
                    let path = self.hot.path_of(&id);
                    if path.exists() {
                        dataset_hash_blocking(&path).ok().map(|h| to_hex(&h))
                    } else {
                        tracing::info!(sop_instance_uid = %attrs.sop_instance_uid, version = %id,
                            "a stored version is only in the cold tier and has no recorded \
                             data-set hash: not compared, the new object becomes a version");
                        None
                    }
                }
            };
            if known.as_deref() == Some(dataset.as_str()) {
                return Screen::Same { as_id: id };
            }
        }
        Screen::Other { dataset }
    }

    /// With the `reject` policy: refuses an object whose SOP Instance UID is stored with
    /// other bytes. (Two conflicting stores racing each other both become versions:
    /// nothing is lost either way.)
    fn refuse_conflicting_version(
        &self,
        attrs: &InstanceAttrs,
        id: &ObjectId,
    ) -> Result<(), IngestError> {
        let existing = self
            .index
            .instance(&attrs.sop_instance_uid)
            .map_err(|e| IngestError::Storage(e.to_string()))?;
        match existing {
            Some(entry) if !entry.record.versions.iter().any(|v| v.id == id.to_hex()) => {
                Err(IngestError::ConflictingVersion(format!(
                    "SOP Instance {} is stored as object {}; this one is {}",
                    attrs.sop_instance_uid,
                    entry.record.current().map(|v| v.id.as_str()).unwrap_or("?"),
                    id
                )))
            }
            _ => Ok(()),
        }
    }

    /// Stores a Part-10 byte stream (a file for `strata import`, later a STOW-RS part):
    /// re-frames it with our deterministic meta group, keeping the data set bytes
    /// exactly, streaming it to a tmp file in chunks. Blocks until the object is
    /// durable, indexed and audited.
    pub fn store_part10_blocking(
        &self,
        reader: &mut dyn Read,
        expect_study: Option<&str>,
        provenance: Provenance,
        actor: Actor,
    ) -> Result<Stored, IngestError> {
        let mut head = vec![0u8; 64 * 1024];
        let mut filled = 0;
        while filled < head.len() {
            let n = reader
                .read(&mut head[filled..])
                .map_err(|e| IngestError::Unparseable(format!("cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        head.truncate(filled);
        let meta = match read_foreign_meta(&head) {
            Ok(meta) => meta,
            // a bare data set, as storescu would send it: the same acceptance rule
            Err(MetaError::NotPart10) => bare_dataset_meta(&head).ok_or_else(|| {
                IngestError::Unparseable(format!(
                    "{}, nor a bare DICOM data set",
                    MetaError::NotPart10
                ))
            })?,
            Err(e) => return Err(IngestError::Unparseable(e.to_string())),
        };
        if dicom_transfer_syntax_registry::TransferSyntaxRegistry
            .get(&meta.transfer_syntax_uid)
            .is_none_or(|ts| ts.is_unsupported())
        {
            return Err(IngestError::Unparseable(format!(
                "transfer syntax {} is not one Strata can read",
                meta.transfer_syntax_uid
            )));
        }
        let mut writer = BlockingObjectWriter::new(
            &self.hot,
            object_prefix(
                &meta.sop_class_uid,
                &meta.sop_instance_uid,
                &meta.transfer_syntax_uid,
            ),
            self.keep(),
        )?;
        writer.write(&head[meta.dataset_offset..])?;
        let mut buf = vec![0u8; FLUSH_AT];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| IngestError::Unparseable(format!("cannot read: {e}")))?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n])?;
        }
        let (written, deferred) = writer.finish()?;
        // PS3.10 7.1: the file meta's Media Storage SOP Class/Instance UIDs must be the
        // data set's own. When a file's disagree, the data set is what is stored — as a
        // C-STORE of it would be (one acceptance rule for every path) — so the object is
        // framed under the data set's UIDs.
        let bare = meta.sop_instance_uid == UNKNOWN_UID;
        let attrs = match written.tmp.kept() {
            Some(parts) => read_header_from(Slices::new(&parts)),
            None => read_header_blocking(written.tmp.path()),
        }
        .map_err(|e| {
            IngestError::Unparseable(if bare {
                format!(
                    "{}; read as a bare data set in {}: {e}",
                    MetaError::NotPart10,
                    dicom_transfer_syntax_registry::TransferSyntaxRegistry
                        .get(&meta.transfer_syntax_uid)
                        .map_or(meta.transfer_syntax_uid.as_str(), |ts| ts.name())
                )
            } else {
                e.to_string()
            })
        })?;
        // a store into a named study (STOW-RS to /studies/{study}) takes only its
        // instances; refused before anything is committed (the tmp file is dropped)
        if let Some(study) = expect_study.filter(|s| *s != attrs.study_uid) {
            return Err(IngestError::DatasetMismatch(format!(
                "its StudyInstanceUID {} is not the study {study} the request names",
                attrs.study_uid
            )));
        }
        let (written, deferred) = if (&attrs.sop_class_uid, &attrs.sop_instance_uid)
            == (&meta.sop_class_uid, &meta.sop_instance_uid)
        {
            (written, deferred)
        } else {
            drop(deferred); // this framing is not kept
            if !bare {
                tracing::warn!(
                    media_storage_sop_instance_uid = meta.sop_instance_uid,
                    sop_instance_uid = attrs.sop_instance_uid,
                    "the file meta names other SOP UIDs than its data set; storing the data set under its own"
                );
            }
            let old_prefix = object_prefix(
                &meta.sop_class_uid,
                &meta.sop_instance_uid,
                &meta.transfer_syntax_uid,
            )
            .len() as u64;
            self.reframe_blocking(
                written,
                old_prefix,
                object_prefix(
                    &attrs.sop_class_uid,
                    &attrs.sop_instance_uid,
                    &meta.transfer_syntax_uid,
                ),
            )?
        };
        let (pending, _) = self.submit_and_write_blocking(
            written,
            deferred,
            &attrs.sop_class_uid,
            &attrs.sop_instance_uid,
            provenance,
            actor,
        )?;
        pending.wait_blocking()
    }

    /// Hands a written object to the group committer ([`Ingest::submit_blocking`]) and
    /// then, on this thread, writes its tmp file if that was deferred and captures its
    /// metadata record if that was left for later ([`LateMetadata`]), both while the
    /// committer journals it from memory; returns the pending commit and when it was
    /// handed on. A refused object's deferred write is dropped unrun.
    fn submit_and_write_blocking(
        &self,
        written: WrittenObject,
        deferred: Option<DeferredWrite>,
        expected_sop_class_uid: &str,
        expected_sop_instance_uid: &str,
        provenance: Provenance,
        actor: Actor,
    ) -> Result<(PendingCommit, std::time::Instant), IngestError> {
        let submitted = self.submit_blocking(
            written,
            expected_sop_class_uid,
            expected_sop_instance_uid,
            provenance,
            actor,
        );
        let admitted = std::time::Instant::now();
        let (pending, late) = submitted?;
        if let Some(late) = late {
            late.capture();
        }
        if let Some(write) = deferred {
            write.run_blocking();
        }
        Ok((pending, admitted))
    }

    /// A new tmp object: `prefix`, then the data set of `written` (which starts at
    /// `old_prefix`), read from memory when it is kept there. The old tmp file is
    /// removed.
    fn reframe_blocking(
        &self,
        written: WrittenObject,
        old_prefix: u64,
        prefix: Vec<u8>,
    ) -> Result<(WrittenObject, Option<DeferredWrite>), IngestError> {
        use std::io::{Seek, SeekFrom};
        let storage = |e: std::io::Error| IngestError::Storage(format!("re-frame: {e}"));
        let mut writer = BlockingObjectWriter::new(&self.hot, prefix, self.keep())?;
        let mut copy = |from: &mut dyn Read| -> Result<(), IngestError> {
            let mut buf = vec![0u8; FLUSH_AT];
            loop {
                let n = from.read(&mut buf).map_err(storage)?;
                if n == 0 {
                    return Ok(());
                }
                writer.write(&buf[..n])?;
            }
        };
        match written.tmp.kept() {
            Some(parts) => {
                let mut from = Slices::new(&parts);
                from.seek(SeekFrom::Start(old_prefix)).map_err(storage)?;
                copy(&mut from)?;
            }
            None => {
                let mut from = std::fs::File::open(written.tmp.path()).map_err(storage)?;
                from.seek(SeekFrom::Start(old_prefix)).map_err(storage)?;
                copy(&mut from)?;
            }
        }
        drop(written);
        writer.finish()
    }
}

/// Objects made durable on disk, on their way to the index stage.
struct DurableGroup {
    objects: Vec<NewObject>,
    /// Per object: the stored object with the same data set (nothing to index).
    same_as: Vec<Option<ObjectId>>,
    actors: Vec<Actor>,
    replies: Vec<Reply>,
    /// Set when the group's files were placed unsynced behind journal records: the
    /// position after them, to mark applied once indexed.
    journaled: Option<u64>,
    /// Whether every file of the group is durable in place (no journal): its index
    /// write is then synced.
    synced: bool,
    /// Per object: a journaled object's tmp file, which the index stage renames into
    /// place once it is written ([`DurableGroup::place_blocking`]).
    unplaced: Vec<Option<TmpObject>>,
    /// Per object: its metadata record when it is still being captured
    /// ([`LateMetadata`]), taken by the index stage ([`DurableGroup::take_metadata`]),
    /// so the files stage goes on to the next group meanwhile. Empty once taken.
    later: Vec<Option<LateRecord>>,
}

impl DurableGroup {
    /// Waits for the metadata records still being captured and puts each in its index
    /// record (a capture that ended without one leaves it out: the object is then read
    /// when its metadata is asked for).
    fn take_metadata(&mut self) {
        debug_assert_eq!(self.later.len(), self.objects.len(), "one entry per object");
        for (object, later) in self.objects.iter_mut().zip(self.later.drain(..)) {
            if let Some(rx) = later {
                object.metadata = rx.recv().ok().flatten();
            }
        }
    }

    /// Adds another group's objects to this one.
    fn merge(&mut self, more: DurableGroup) {
        self.objects.extend(more.objects);
        self.same_as.extend(more.same_as);
        self.actors.extend(more.actors);
        self.replies.extend(more.replies);
        self.unplaced.extend(more.unplaced);
        self.later.extend(more.later);
        self.journaled = self.journaled.max(more.journaled);
        self.synced &= more.synced;
    }

    /// Renames the journaled objects' tmp files into place, each once it is written (its
    /// [`strata_tiers::hot::DeferredWrite`] may still run; no sync: the journal holds
    /// the bytes). An object whose file could not be written or placed is answered with
    /// that failure and leaves the group. Returns whether there was anything to place.
    fn place_blocking(&mut self, hot: &HotDisk, failures: &std::sync::atomic::AtomicBool) -> bool {
        let at: Vec<usize> = (0..self.objects.len())
            .filter(|&i| self.unplaced[i].is_some())
            .collect();
        if at.is_empty() {
            return false;
        }
        let items = at
            .iter()
            .map(|&i| (self.unplaced[i].take().expect("some"), self.objects[i].id))
            .collect();
        let placed = hot.place_batch_unsynced_blocking(items);
        crate::tiering::failpoint("journal-after-place");
        let mut failed: std::collections::HashMap<usize, TierError> = at
            .into_iter()
            .zip(placed)
            .filter_map(|(i, r)| r.err().map(|e| (i, e)))
            .collect();
        if failed.is_empty() {
            return true;
        }
        failures.store(true, std::sync::atomic::Ordering::Release);
        let n = self.objects.len();
        let entries = std::mem::take(&mut self.objects)
            .into_iter()
            .zip(std::mem::take(&mut self.same_as))
            .zip(std::mem::take(&mut self.actors))
            .zip(std::mem::take(&mut self.replies))
            .zip(std::mem::take(&mut self.unplaced));
        for (i, ((((object, same), actor), reply), unplaced)) in entries.enumerate() {
            match failed.remove(&i) {
                Some(e) => {
                    tracing::error!(id = %object.id, error = %e, "could not place a journaled object");
                    let _ = reply.send(Err(e.into()));
                }
                None => {
                    self.objects.push(object);
                    self.same_as.push(same);
                    self.actors.push(actor);
                    self.replies.push(reply);
                    self.unplaced.push(unplaced);
                }
            }
        }
        debug_assert!(self.objects.len() < n);
        true
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<CommitOutcome, IngestError>>;

/// What the group committer's two stages share.
struct CommitterParts {
    hot: HotDisk,
    index: Arc<dyn Index>,
    max_batch: usize,
    metrics: Metrics,
    failures: Arc<std::sync::atomic::AtomicBool>,
    audit: Option<crate::audit::AuditLog>,
    journal: Option<Arc<Journal>>,
}

/// The group committer: two threads in a pipeline. The files stage makes each group of
/// waiting objects durable (one journal append and sync; or in place: one sync, renames,
/// one sync) and passes it on; the index stage merges every durable group waiting,
/// places journaled files, writes one RocksDB batch and answers.
/// Per object the order is always files, then index, then answer; across objects the two
/// syncs overlap, so throughput is bounded by the slower stage, not by their sum.
fn run_committer(rx: mpsc::Receiver<CommitJob>, parts: CommitterParts) {
    let CommitterParts {
        hot,
        index,
        max_batch,
        metrics,
        failures,
        audit,
        journal,
    } = parts;
    let (durable_tx, durable_rx) = mpsc::channel::<DurableGroup>();
    let index_stage = {
        let parts = CommitterParts {
            hot: hot.clone(),
            index: index.clone(),
            max_batch,
            metrics: metrics.clone(),
            failures: failures.clone(),
            audit,
            journal: journal.clone(),
        };
        std::thread::Builder::new()
            .name("strata-indexer".into())
            .spawn(move || run_index_stage(durable_rx, &parts))
            .expect("spawn index stage thread")
    };
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        metrics.commit_batch_size.observe(jobs.len() as f64);
        let stage = FilesStage {
            hot: &hot,
            index: index.as_ref(),
            metrics: &metrics,
            failures: &failures,
            journal: journal.as_deref(),
        };
        if let Some(group) = stage.persist_group(jobs) {
            if durable_tx.send(group).is_err() {
                break;
            }
        }
    }
    drop(durable_tx);
    let _ = index_stage.join();
}

/// For each committed object that names another PatientID than the one it is filed
/// under, what happened (a patient conflict, `StudyRecord::other_patients`): a new series
/// kept under its own PatientID in a study filed under another, or an instance filed
/// under its series' PatientID. One index read per study of the group.
fn patient_conflicts(
    index: &dyn Index,
    objects: &[NewObject],
    outcomes: &[CommitOutcome],
) -> Vec<Option<String>> {
    let mut studies: std::collections::HashMap<&str, Option<crate::index::StudyRecord>> =
        std::collections::HashMap::new();
    objects
        .iter()
        .zip(outcomes)
        .map(|(o, outcome)| {
            if !matches!(outcome, CommitOutcome::Stored | CommitOutcome::NewVersion) {
                return None;
            }
            let a = &o.attrs;
            let study = studies
                .entry(&a.study_uid)
                .or_insert_with(|| match index.study(&a.study_uid) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "study record unreadable for the patient check");
                        None
                    }
                })
                .as_ref()?;
            let owner = study.patient_of_series(&a.series_uid).patient_id;
            if owner != a.patient_id {
                Some(format!(
                    "patient conflict: the object names PatientID {:?}, its series is filed \
                     under {owner:?} (and findable under it)",
                    a.patient_id
                ))
            } else if study.patient_id != a.patient_id {
                Some(format!(
                    "patient conflict: the study is filed under PatientID {:?}, this object's \
                     series is kept and findable under the PatientID it names, {:?}",
                    study.patient_id, a.patient_id
                ))
            } else {
                None
            }
        })
        .collect()
}

/// The audit record of one store; `conflict` says how its PatientID conflicts with where
/// it is filed, if it does.
fn store_event(
    object: &NewObject,
    actor: Actor,
    outcome: CommitOutcome,
    conflict: Option<&str>,
) -> crate::audit::Event {
    let a = &object.attrs;
    let mut event = crate::audit::Event {
        actor,
        action: "store",
        uids: vec![
            a.study_uid.clone(),
            a.series_uid.clone(),
            a.sop_instance_uid.clone(),
        ],
        outcome: match outcome {
            CommitOutcome::Stored => format!("stored {}", object.id),
            CommitOutcome::NewVersion => format!("stored {} as a new version", object.id),
            CommitOutcome::AlreadyPresent => format!("already stored {}", object.id),
            CommitOutcome::SameDataSet { as_id } => format!(
                "already stored: the same data set as {as_id} (these bytes, {}, not kept)",
                object.id
            ),
        },
    };
    if let Some(conflict) = conflict {
        event.outcome.push_str("; ");
        event.outcome.push_str(conflict);
    }
    event
}

/// What the files stage works with.
struct FilesStage<'a> {
    hot: &'a HotDisk,
    index: &'a dyn Index,
    metrics: &'a Metrics,
    failures: &'a std::sync::atomic::AtomicBool,
    journal: Option<&'a Journal>,
}

impl FilesStage<'_> {
    /// Files stage: skip objects already indexed, make the rest durable under their ids —
    /// through the journal for a small group ([`journal::fits`]), else in place.
    fn persist_group(&self, jobs: Vec<CommitJob>) -> Option<DurableGroup> {
        let FilesStage {
            hot,
            index,
            metrics,
            failures,
            ..
        } = *self;
        let mut to_persist = Vec::with_capacity(jobs.len());
        let mut waiting = Vec::with_capacity(jobs.len());
        let mut later = Vec::with_capacity(jobs.len());
        let mut same = Vec::new();
        for job in jobs {
            if let Some(as_id) = job.same_as {
                same.push((job.object, as_id, job.actor, job.reply));
                continue;
            }
            match index.has_object(&job.object.id) {
                // indexed and on disk: a duplicate (if the file went missing, the new copy
                // is persisted below and repairs it)
                Ok(true) if hot.path_of(&job.object.id).exists() => {
                    metrics.duplicates.inc();
                    let _ = job.reply.send(Ok(CommitOutcome::AlreadyPresent));
                }
                Ok(_) => {
                    to_persist.push((job.tmp, job.object.id));
                    waiting.push((job.object, job.actor, job.reply));
                    later.push(job.metadata_later);
                }
                Err(e) => {
                    let _ = job.reply.send(Err(IngestError::Storage(e.to_string())));
                }
            }
        }
        let mut group = DurableGroup {
            objects: Vec::with_capacity(waiting.len() + same.len()),
            same_as: Vec::with_capacity(waiting.len() + same.len()),
            actors: Vec::with_capacity(waiting.len() + same.len()),
            replies: Vec::with_capacity(waiting.len() + same.len()),
            journaled: None,
            synced: true,
            unplaced: Vec::with_capacity(waiting.len() + same.len()),
            later: Vec::with_capacity(waiting.len() + same.len()),
        };
        for (object, as_id, actor, reply) in same {
            group.objects.push(object);
            group.same_as.push(Some(as_id));
            group.actors.push(actor);
            group.replies.push(reply);
            group.unplaced.push(None);
            group.later.push(None);
        }
        let persisted: Vec<Result<Option<TmpObject>, TierError>> = if to_persist.is_empty() {
            Vec::new()
        } else {
            let started = std::time::Instant::now();
            let journaled = self.journal_blocking(&to_persist, &waiting);
            let persisted = match journaled {
                Some(end) => {
                    group.journaled = Some(end);
                    group.synced = false;
                    // placed by the index stage, each once its file is written, while
                    // this stage journals the next group
                    to_persist
                        .into_iter()
                        .map(|(tmp, _)| Ok(Some(tmp)))
                        .collect()
                }
                None => hot
                    .persist_batch_blocking(to_persist)
                    .into_iter()
                    .map(|r| r.map(|_| None))
                    .collect(),
            };
            metrics
                .commit_seconds
                .with_label_values(&["files"])
                .observe(started.elapsed().as_secs_f64());
            persisted
        };
        for (((object, actor, reply), result), later) in
            waiting.into_iter().zip(persisted).zip(later)
        {
            match result {
                Ok(unplaced) => {
                    group.later.push(later);
                    group.objects.push(object);
                    group.same_as.push(None);
                    group.actors.push(actor);
                    group.replies.push(reply);
                    group.unplaced.push(unplaced);
                }
                Err(e) => {
                    tracing::error!(id = %object.id, error = %e, "could not make an object durable");
                    failures.store(true, std::sync::atomic::Ordering::Release);
                    let _ = reply.send(Err(e.into()));
                }
            }
        }
        (!group.objects.is_empty()).then_some(group)
    }

    /// Appends the group to the journal when there is one and the group fits; the
    /// position after its records, or `None` to make it durable in place (a journal
    /// failure, such as a full disk for a new segment, falls back to that too).
    fn journal_blocking(
        &self,
        to_persist: &[(TmpObject, ObjectId)],
        waiting: &[(NewObject, Actor, Reply)],
    ) -> Option<u64> {
        let journal = self.journal?;
        if !journal::fits(waiting.iter().map(|(o, _, _)| o.size)) {
            return None;
        }
        let entries: Vec<journal::Entry<'_>> = to_persist
            .iter()
            .zip(waiting)
            .map(|((tmp, _), (object, _, _))| journal::Entry {
                object,
                file: tmp.path(),
                kept: tmp.kept(),
            })
            .collect();
        let appended = journal.append_blocking(&entries);
        let changed = journal.note_append(appended.is_ok());
        match appended {
            Ok(end) => {
                if changed {
                    tracing::info!("the ingest journal takes appends again");
                }
                crate::tiering::failpoint("journal-after-append");
                Some(end)
            }
            Err(e) => {
                if changed {
                    tracing::warn!(error = %e, "cannot append to the ingest journal; commit groups are synced in place until it can");
                }
                None
            }
        }
    }
}

/// Index stage: for every durable group waiting, the journaled files renamed into place
/// (each once written), one index batch (synced unless the journal holds the group),
/// then the answers.
fn run_index_stage(rx: mpsc::Receiver<DurableGroup>, parts: &CommitterParts) {
    let (hot, index, max_batch, metrics) = (
        &parts.hot,
        parts.index.as_ref(),
        parts.max_batch,
        &parts.metrics,
    );
    let (failures, audit, journal) = (
        parts.failures.as_ref(),
        parts.audit.as_ref(),
        parts.journal.as_deref(),
    );
    while let Ok(mut group) = rx.recv() {
        while group.objects.len() < max_batch * 4 {
            match rx.try_recv() {
                Ok(more) => group.merge(more),
                Err(_) => break,
            }
        }
        // captured while the group was made durable ([`LateMetadata`]); before
        // place_blocking, which may drop objects from the group
        group.take_metadata();
        let started = std::time::Instant::now();
        if group.place_blocking(hot, failures) {
            metrics
                .commit_seconds
                .with_label_values(&["place"])
                .observe(started.elapsed().as_secs_f64());
            if group.objects.is_empty() {
                continue;
            }
        }
        let started = std::time::Instant::now();
        // objects whose data set is stored already are answered, not indexed
        let to_index: Vec<NewObject> = group
            .objects
            .iter()
            .zip(&group.same_as)
            .filter(|(_, same)| same.is_none())
            .map(|(o, _)| o.clone())
            .collect();
        let committed = if to_index.is_empty() {
            Ok(Vec::new())
        } else if group.synced {
            index.commit(&to_index)
        } else {
            // the journal holds these objects durably until the next checkpoint
            index.commit_unsynced(&to_index)
        };
        if let (Some(journal), Some(end), Ok(_)) = (journal, group.journaled, &committed) {
            crate::tiering::failpoint("journal-after-index");
            journal.mark_applied(end);
        }
        metrics
            .commit_seconds
            .with_label_values(&["index"])
            .observe(started.elapsed().as_secs_f64());
        let committed = committed.map(|indexed| {
            let mut indexed = indexed.into_iter();
            group
                .same_as
                .iter()
                .map(|same| match same {
                    Some(as_id) => CommitOutcome::SameDataSet { as_id: *as_id },
                    None => indexed.next().expect("one outcome per indexed object"),
                })
                .collect::<Vec<_>>()
        });
        match committed {
            Ok(outcomes) => {
                let conflicts = patient_conflicts(index, &group.objects, &outcomes);
                for (o, conflict) in group.objects.iter().zip(&conflicts) {
                    if let Some(conflict) = conflict {
                        metrics.patient_conflicts.inc();
                        tracing::warn!(
                            study = %o.attrs.study_uid,
                            series = %o.attrs.series_uid,
                            sop = %o.attrs.sop_instance_uid,
                            "{conflict}"
                        );
                    }
                }
                // audited before acknowledged: every store has its record
                if let Some(log) = audit {
                    let events: Vec<crate::audit::Event> = group
                        .objects
                        .iter()
                        .zip(std::mem::take(&mut group.actors))
                        .zip(&outcomes)
                        .zip(&conflicts)
                        .map(|(((o, actor), outcome), conflict)| {
                            store_event(o, actor, *outcome, conflict.as_deref())
                        })
                        .collect();
                    log.record(&events);
                }
                for ((object, reply), outcome) in
                    group.objects.iter().zip(group.replies).zip(outcomes)
                {
                    if matches!(
                        outcome,
                        CommitOutcome::AlreadyPresent | CommitOutcome::SameDataSet { .. }
                    ) {
                        metrics.duplicates.inc();
                    } else {
                        metrics.instances_stored.inc();
                        metrics.bytes_stored.inc_by(object.size);
                    }
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                // The files are durable but unindexed: the next start's recovery adopts
                // them (no clean-shutdown marker is written after a failure).
                tracing::error!(error = %e, count = group.objects.len(), "index commit failed");
                failures.store(true, std::sync::atomic::Ordering::Release);
                for reply in group.replies {
                    let _ = reply.send(Err(IngestError::Storage(format!(
                        "index commit failed: {e}"
                    ))));
                }
            }
        }
    }
}

/// An object handed to the committer; resolves when it is durable and indexed.
pub struct PendingCommit {
    answer: tokio::sync::oneshot::Receiver<Result<CommitOutcome, IngestError>>,
    stored: Stored,
}

impl PendingCommit {
    fn finish(
        stored: Stored,
        answer: Result<Result<CommitOutcome, IngestError>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<Stored, IngestError> {
        let outcome = answer
            .map_err(|_| IngestError::Storage("the committer dropped the request".into()))??;
        Ok(Stored { outcome, ..stored })
    }

    /// Waits from async code, without holding a thread.
    pub async fn wait(self) -> Result<Stored, IngestError> {
        let answer = self.answer.await;
        Self::finish(self.stored, answer)
    }

    pub fn wait_blocking(self) -> Result<Stored, IngestError> {
        let answer = self.answer.blocking_recv();
        Self::finish(self.stored, answer)
    }
}

/// Consecutive byte slices (an object kept in memory, [`TmpObject::kept`]) read and
/// sought as one stream.
struct Slices<'a> {
    parts: &'a [&'a [u8]],
    pos: u64,
    len: u64,
}

impl<'a> Slices<'a> {
    fn new(parts: &'a [&'a [u8]]) -> Self {
        let len = parts.iter().map(|p| p.len() as u64).sum();
        Slices { parts, pos: 0, len }
    }
}

impl std::io::Read for Slices<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut start = 0u64;
        for part in self.parts {
            let end = start + part.len() as u64;
            if self.pos < end {
                let from = &part[(self.pos - start) as usize..];
                let n = from.len().min(buf.len());
                buf[..n].copy_from_slice(&from[..n]);
                self.pos += n as u64;
                return Ok(n);
            }
            start = end;
        }
        Ok(0)
    }
}

impl std::io::Seek for Slices<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            std::io::SeekFrom::Start(p) => Some(p),
            std::io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let pos = pos.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        self.pos = pos;
        Ok(pos)
    }
}

/// A fully written tmp object with its id and size.
#[derive(Debug)]
pub struct WrittenObject {
    pub tmp: TmpObject,
    pub id: ObjectId,
    pub size: u64,
}

/// The tmp file and the hasher of an object being written.
type WriterState = (TmpObject, Box<blake3::Hasher>);

/// Streams an object into a tmp file from async code. Received chunks are kept as they
/// came (no copy) until [`FLUSH_AT`] bytes are waiting; they are then hashed and staged
/// (written, for an object past what is kept in memory) on the blocking pool *while the
/// next chunks arrive* (double buffering: at most one such task in flight, plus one
/// chunk set filling).
pub struct ObjectWriter {
    hot: HotDisk,
    /// Bytes of the object its tmp file keeps in memory (see [`tmp_with_room`]).
    keep: u64,
    /// The tmp file and hasher, when no write is in flight.
    idle: Option<(Option<TmpObject>, Box<blake3::Hasher>)>,
    in_flight: Option<tokio::task::JoinHandle<Result<WriterState, IngestError>>>,
    chunks: Vec<Vec<u8>>,
    buffered: usize,
}

impl ObjectWriter {
    fn new(hot: HotDisk, prefix: Vec<u8>, keep: u64, tmp: Option<TmpObject>) -> Self {
        let mut writer = ObjectWriter {
            hot,
            keep,
            idle: Some((tmp, Box::new(blake3::Hasher::new()))),
            in_flight: None,
            buffered: 0,
            chunks: Vec::new(),
        };
        if !writer.keep_now(&prefix) {
            writer.buffered = prefix.len();
            writer.chunks.push(prefix);
        }
        writer
    }

    /// Hashes and stages `data` at once, on the caller's thread, when the object is
    /// still kept whole in memory (nothing queued, nothing in flight, within `keep`):
    /// a copy into reused buffers ([`TmpObject::try_keep`]); a stage that fills is
    /// written to the tmp file on the blocking pool meanwhile
    /// ([`strata_tiers::hot::EarlyWrite`]). False when `data` must take the queued path.
    fn keep_now(&mut self, data: &[u8]) -> bool {
        if self.in_flight.is_some() || !self.chunks.is_empty() {
            return false;
        }
        let Some((Some(tmp), hasher)) = self.idle.as_mut() else {
            return false;
        };
        let mut early = Vec::new();
        if !tmp.try_keep(data, &mut early) {
            return false;
        }
        hasher.update(data);
        // each full stage starts for the disk now, while the rest arrives
        for write in early {
            tokio::task::spawn_blocking(move || write.run_blocking());
        }
        true
    }

    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), IngestError> {
        if self.keep_now(&data) {
            return Ok(());
        }
        self.buffered += data.len();
        self.chunks.push(data);
        if self.buffered >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the write in flight, if any, and takes back the file and hasher.
    async fn settle(&mut self) -> Result<(Option<TmpObject>, Box<blake3::Hasher>), IngestError> {
        if let Some(task) = self.in_flight.take() {
            let (tmp, hasher) = task
                .await
                .map_err(|e| IngestError::Storage(format!("writer task failed: {e}")))??;
            return Ok((Some(tmp), hasher));
        }
        Ok(self.idle.take().expect("writer state is idle or in flight"))
    }

    /// Starts writing the buffered chunks; returns once the previous write is done.
    async fn flush(&mut self) -> Result<(), IngestError> {
        let (tmp, mut hasher) = self.settle().await?;
        let (hot, keep) = (self.hot.clone(), self.keep);
        let chunks = std::mem::take(&mut self.chunks);
        self.buffered = 0;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut tmp = tmp_with_room(&hot, tmp, keep)?;
            for chunk in &chunks {
                hasher.update(chunk);
                tmp.write_all_blocking(chunk)?;
            }
            Ok((tmp, hasher))
        }));
        Ok(())
    }

    /// Writes what is buffered, then — in the same blocking task — checks the object and
    /// hands it to the group committer ([`Ingest::submit_blocking`]); resolves once it is
    /// durable and indexed.
    pub async fn finish_and_commit(
        mut self,
        ingest: &Ingest,
        expected_sop_class_uid: String,
        expected_sop_instance_uid: String,
        provenance: Provenance,
        actor: Actor,
    ) -> Result<Stored, IngestError> {
        let started = std::time::Instant::now();
        let (tmp, mut hasher) = self.settle().await?;
        let (hot, keep) = (self.hot.clone(), self.keep);
        let chunks = std::mem::take(&mut self.chunks);
        let ingest = ingest.clone();
        let phases = ingest.metrics.commit_seconds.clone();
        let (pending, admitted) = tokio::task::spawn_blocking(move || {
            let mut tmp = tmp_with_room(&hot, tmp, keep)?;
            for chunk in &chunks {
                hasher.update(chunk);
                tmp.write_all_blocking(chunk)?;
            }
            // an object the journal takes from memory is written to its file here, while
            // the committer journals it (the committer waits for this write before it
            // renames the file into place)
            let deferred = tmp.defer_write_blocking()?;
            let written = WrittenObject {
                id: ObjectId::from_hash(hasher.finalize()),
                size: tmp.len(),
                tmp,
            };
            ingest.submit_and_write_blocking(
                written,
                deferred,
                &expected_sop_class_uid,
                &expected_sop_instance_uid,
                provenance,
                actor,
            )
        })
        .await
        .map_err(|e| IngestError::Storage(format!("writer task failed: {e}")))??;
        phases
            .with_label_values(&["admit"])
            .observe((admitted - started).as_secs_f64());
        let stored = pending.wait().await;
        phases
            .with_label_values(&["answer"])
            .observe(admitted.elapsed().as_secs_f64());
        stored
    }
}

/// The same as [`ObjectWriter`] for threads that may block (import, STOW-RS).
pub struct BlockingObjectWriter {
    tmp: TmpObject,
    hasher: blake3::Hasher,
}

impl BlockingObjectWriter {
    /// A writer whose object is kept in memory while it stays within `keep` bytes
    /// ([`Ingest::keep`]; written at [`BlockingObjectWriter::finish`] or later, past the
    /// page cache), or written through the page cache as it comes (`keep` 0).
    pub fn new(hot: &HotDisk, prefix: Vec<u8>, keep: u64) -> Result<Self, IngestError> {
        let tmp = if keep > 0 {
            hot.create_direct_tmp_blocking(keep)?
        } else {
            hot.create_tmp_blocking()?
        };
        let mut w = BlockingObjectWriter {
            tmp,
            hasher: blake3::Hasher::new(),
        };
        w.write(&prefix)?;
        Ok(w)
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), IngestError> {
        self.hasher.update(data);
        self.tmp.write_all_blocking(data)?;
        Ok(())
    }

    /// The object written, and — for one kept in memory — the write of its tmp file,
    /// deferred for the caller to run once the object is handed on (see
    /// [`TmpObject::defer_write_blocking`]); otherwise its file is complete.
    pub fn finish(mut self) -> Result<(WrittenObject, Option<DeferredWrite>), IngestError> {
        let deferred = self.tmp.defer_write_blocking()?;
        Ok((
            WrittenObject {
                id: ObjectId::from_hash(self.hasher.finalize()),
                size: self.tmp.len(),
                tmp: self.tmp,
            },
            deferred,
        ))
    }
}

#[cfg(test)]
mod tests {
    //! The index stage's placing of journaled files: an object whose deferred write
    //! failed is answered with that failure and leaves the group; the others are placed.
    use super::*;
    use crate::index::conformance::object;

    #[test]
    fn a_failed_deferred_write_refuses_its_object_and_places_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let hot = HotDisk::open(dir.path()).unwrap();
        let mut group = DurableGroup {
            objects: Vec::new(),
            same_as: Vec::new(),
            actors: Vec::new(),
            replies: Vec::new(),
            journaled: Some(1),
            synced: false,
            unplaced: Vec::new(),
            later: Vec::new(),
        };
        let mut answers = Vec::new();
        for (i, write) in [true, false, true].into_iter().enumerate() {
            let payload = format!("object {i}").into_bytes();
            let mut tmp = hot.create_direct_tmp_blocking(1 << 20).unwrap();
            tmp.write_all_blocking(&payload).unwrap();
            let deferred = tmp.defer_write_blocking().unwrap().expect("kept");
            if write {
                deferred.run_blocking();
            } else {
                drop(deferred); // abandoned: as a write that failed
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            group
                .objects
                .push(object("1.2", "1.2.1", &format!("1.2.1.{i}"), &payload, 0));
            group.same_as.push(None);
            group.actors.push(Actor::system("test"));
            group.replies.push(reply);
            group.unplaced.push(Some(tmp));
            answers.push(answer);
        }
        let failures = std::sync::atomic::AtomicBool::new(false);
        assert!(group.place_blocking(&hot, &failures));
        assert!(failures.load(std::sync::atomic::Ordering::Acquire));
        let kept: Vec<&str> = group
            .objects
            .iter()
            .map(|o| o.attrs.sop_instance_uid.as_str())
            .collect();
        assert_eq!(kept, ["1.2.1.0", "1.2.1.2"]);
        assert_eq!(group.replies.len(), 2);
        assert!(group.unplaced.iter().all(Option::is_none));
        for o in &group.objects {
            assert_eq!(hot.rehash_blocking(&o.id).unwrap().0, o.id);
        }
        let refused = answers.remove(1).blocking_recv().unwrap();
        assert!(refused.is_err(), "{refused:?}");
        assert!(!hot.path_of(&ObjectId::of_bytes(b"object 1")).exists());
        // nothing left to place: a second call does nothing
        assert!(!group.place_blocking(&hot, &failures));
    }
}
