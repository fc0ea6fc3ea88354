//! # The metadata index
//!
//! The index answers "what do we hold, and where": patients, studies, series, instances,
//! and per stored object its blake3 id, size, location and provenance. It is the fast
//! source of truth while running, and it is *rebuildable*: every field except provenance
//! (when and from whom an object came) is derived from the stored objects themselves, so
//! `strata reindex` can reconstruct it from the hot directory alone (DESIGN promise 5).
//!
//! ## Small traits
//! Callers see the index through four small traits, one per kind of work, each with its
//! own contract:
//! - [`Catalog`]: what is stored (objects, studies, series, instances, the secondary
//!   indexes), written by the group committer's [`Catalog::commit`];
//! - [`Placement`]: where the copies are (cold packs, hot or cold tier, fixity checks),
//!   written by the tiering worker, repair and the scrubber;
//! - [`WorkQueue`]: the tiering policy's access queue;
//! - [`Governance`]: deletions (tombstones) and legal holds.
//!
//! [`Index`] is all four (blanket-implemented), so `Arc<dyn Index>` goes everywhere; a
//! caller brings the methods into scope with `use crate::index::prelude::*;`.
//!
//! ## One logic, several engines
//! The logic (record layout, counters, secondary indexes, queue) lives once, in
//! [`kv::KvIndex`], over a small ordered key-value [`kv::KvEngine`]: RocksDB
//! ([`rocks`], the embedded default and the only module that imports the `rocksdb`
//! crate, TiKV's engine-traits rule) and an in-memory engine for tests ([`memory`]).
//! One conformance suite (`conformance`, tests only) runs against each.
//!
//! ## Consistency
//! - Every write is one atomic batch (across column families); the methods documented
//!   as *synced* are durable on return, the others (access times, fixity, dequeue) may be
//!   lost in a crash, which only delays or repeats work.
//! - Several threads of one process write: the group committer, the tiering worker,
//!   deletes, repair. Every write method of [`kv::KvIndex`] runs under one write mutex, so
//!   the read-modify-write of shared records (an object record touched by `commit`,
//!   `record_pack` and `set_tier`; a study's counters) never loses an update. Reads take
//!   no lock. A backend shared by several processes (PostgreSQL) must give the same
//!   guarantee with transactions.
//! - Readers may be the same process or a RocksDB secondary in another process
//!   (`strata ls` while `strata serve` runs); [`Catalog::refresh`] brings a secondary up
//!   to date.
//!
//! Every method blocks: call it from the blocking pool or a plain thread.

pub mod kv;
pub mod memory;
pub mod postgres;
pub mod records;
pub mod rocks;

#[cfg(test)]
pub mod conformance;

pub use kv::{KvEngine, KvIndex};
pub use memory::{MemoryEngine, MemoryIndex};
pub use postgres::{PgEngine, PgIndex};
pub use records::{issuers_agree, patient_key, split_patient_key};
pub use records::{
    ColdCopy, CommitOutcome, Compression, FixityRecord, HoldRecord, InstanceEntry, InstanceRecord,
    LeaseRecord, NewObject, NodeRecord, ObjectRecord, OtherPatient, PackRecord, PackedObject,
    PatientIdentity, PatientLink, PatientRecord, Provenance, RejectionRecord, SeriesRecord,
    StudyRecord, Tier, TierTotals, Tombstone, VersionRef,
};
pub use rocks::{RocksEngine, RocksIndex};

use strata_tiers::ObjectId;

/// Brings every index trait into scope, to call methods on `dyn Index`:
/// `use crate::index::prelude::*;`.
pub mod prelude {
    pub use super::{Catalog, Governance, Index, Placement, WorkQueue};
}

/// Milliseconds since the Unix epoch (0 if the clock is before it), for provenance and
/// access times. Also reachable as `index::rocks::unix_ms_now`.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index storage error: {0}")]
    Storage(String),
    #[error("index record in {cf} under {key:?} is unreadable: {reason}")]
    Corrupt {
        cf: &'static str,
        key: String,
        reason: String,
    },
    #[error("the index at {path} is in use by another process: {detail}")]
    Locked { path: String, detail: String },
    /// A legal hold forbids the write (a study's tombstone).
    #[error("study {study_uid} is under legal hold")]
    Held { study_uid: String, hold: HoldRecord },
}

/// What the archive holds: objects, and the patient / study / series / instance
/// hierarchy with its secondary indexes.
///
/// Contract:
/// - [`Catalog::commit`] applies a whole group of new objects in **one synced, atomic
///   batch**: durable on return, all or nothing. It is this trait's only writer
///   ([`Placement::record_pack`] also adds objects known only from a pack, for reindex).
/// - A study's, series' and patient's counters count what was committed into them
///   (instances are distinct SOP Instance UIDs, objects are stored versions), with no
///   update lost when other writers run at the same time.
/// - Reads see every write that returned before them (on a primary); a read replica sees
///   them after [`Catalog::refresh`].
pub trait Catalog {
    /// Applies a group of newly persisted objects in one synced, atomic batch and says,
    /// per object, what it did. Objects already indexed are reported, not re-added.
    fn commit(&self, objects: &[NewObject]) -> Result<Vec<CommitOutcome>, IndexError>;
    /// [`Catalog::commit`], visible to readers on return but durable only after the next
    /// [`Catalog::sync`] (or any later synced write): for objects whose durability an
    /// ingest journal already holds (`crate::storage::journal`), which replays them after
    /// a crash. An engine that cannot defer durability commits synced (the default).
    fn commit_unsynced(&self, objects: &[NewObject]) -> Result<Vec<CommitOutcome>, IndexError> {
        self.commit(objects)
    }
    /// Makes every write that returned before it durable (RocksDB: `FlushWAL(sync)`).
    /// No-op for an engine whose writes are all durable on return (the default).
    fn sync(&self) -> Result<(), IndexError> {
        Ok(())
    }
    /// Whether an object with this id is indexed.
    fn has_object(&self, id: &ObjectId) -> Result<bool, IndexError>;
    fn object(&self, id: &ObjectId) -> Result<Option<ObjectRecord>, IndexError>;
    /// Visits every indexed object until `visit` returns false.
    fn for_each_object(
        &self,
        visit: &mut dyn FnMut(ObjectId, ObjectRecord) -> bool,
    ) -> Result<(), IndexError>;
    /// Every study, ordered by Study Instance UID.
    fn studies(&self) -> Result<Vec<(String, StudyRecord)>, IndexError>;
    fn study(&self, study_uid: &str) -> Result<Option<StudyRecord>, IndexError>;
    /// The records of many studies at once, in `study_uids`' order (one round trip on a
    /// networked engine; C-FIND's candidate studies).
    fn studies_many(&self, study_uids: &[String]) -> Result<Vec<Option<StudyRecord>>, IndexError> {
        study_uids.iter().map(|uid| self.study(uid)).collect()
    }
    /// Visits every study in Study Instance UID order until `visit` returns false,
    /// without loading them all.
    fn for_each_study(
        &self,
        visit: &mut dyn FnMut(&str, StudyRecord) -> bool,
    ) -> Result<(), IndexError>;
    fn series_of_study(&self, study_uid: &str) -> Result<Vec<(String, SeriesRecord)>, IndexError>;
    fn instances_of_study(&self, study_uid: &str) -> Result<Vec<InstanceEntry>, IndexError>;
    /// A series by its UID, with the study it belongs to.
    fn series(&self, series_uid: &str) -> Result<Option<(String, SeriesRecord)>, IndexError>;
    /// An instance by its SOP Instance UID.
    fn instance(&self, sop_instance_uid: &str) -> Result<Option<InstanceEntry>, IndexError>;
    /// The first instance (in UID order) of a study, or of one of its series: the one
    /// whose metadata record answers for attributes of the study or series the index
    /// does not keep.
    fn first_instance(
        &self,
        study_uid: &str,
        series_uid: Option<&str>,
    ) -> Result<Option<InstanceEntry>, IndexError>;
    /// An object's metadata record ([`crate::dicom::metadata`], its encoded bytes), if it
    /// was indexed with one.
    fn instance_metadata(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, IndexError>;
    /// Studies whose PatientID, StudyDate or AccessionNumber equals `value` (secondary
    /// indexes; no scan).
    fn studies_by(&self, key: SecondaryKey, value: &str) -> Result<Vec<String>, IndexError>;
    /// Studies whose StudyDate lies in `from..=to` (`YYYYMMDD`; an empty bound is open),
    /// from the StudyDate index without a scan of the studies.
    fn studies_by_date_range(&self, from: &str, to: &str) -> Result<Vec<String>, IndexError>;
    /// For a read replica, e.g. a RocksDB secondary: picks up what the primary wrote
    /// since. A no-op for an index that reads its own writes.
    fn refresh(&self) -> Result<(), IndexError> {
        Ok(())
    }
}

/// Where the copies of objects are: cold study packs, whether a hot copy remains, and
/// the scrubber's latest fixity check.
///
/// Contract:
/// - [`Placement::record_pack`], [`Placement::drop_pack`], [`Placement::update_pack`]
///   and [`Placement::set_tier`] are each **one synced, atomic batch**; the tiering
///   worker relies on it for "copy, verify, record, then delete" (DESIGN promise 4).
/// - They read object records and write them back; no concurrent writer (a `commit`
///   giving a cold object its hot copy back, another pack) loses its update.
/// - [`Placement::record_fixity`] is not synced.
pub trait Placement {
    /// Records a verified pack and its members' cold copies in one synced batch. Members
    /// not yet indexed are added from their `new` attributes as cold-only objects
    /// (reindex); a copy already recorded is not added twice.
    fn record_pack(
        &self,
        pack_id: &ObjectId,
        pack: &PackRecord,
        members: &[PackedObject],
    ) -> Result<(), IndexError>;
    /// Forgets a pack: its record and every object's copy in it (repair, after the
    /// objects were found to have other good copies); synced.
    fn drop_pack(&self, pack_id: &ObjectId) -> Result<(), IndexError>;
    /// Rewrites a pack record (its storage class after an archive move).
    fn update_pack(&self, pack_id: &ObjectId, pack: &PackRecord) -> Result<(), IndexError>;
    fn pack(&self, pack_id: &ObjectId) -> Result<Option<PackRecord>, IndexError>;
    /// Every recorded pack.
    fn packs(&self) -> Result<Vec<(ObjectId, PackRecord)>, IndexError>;
    /// Marks objects as having (`Hot`, on `node`'s hot disk: [`ObjectRecord::hot_node`])
    /// or no longer having (`Cold`) a hot copy; synced.
    fn set_tier(&self, ids: &[ObjectId], tier: Tier, node: Option<&str>) -> Result<(), IndexError>;
    /// Objects `node` has yet to replicate to the cold tier, with when each was
    /// received (ms since the epoch), at most `limit`, in id order. Queued by `commit`
    /// for objects whose [`NewObject::replicate`] is set, in the same batch.
    fn replication_queue(
        &self,
        node: &str,
        limit: usize,
    ) -> Result<Vec<(ObjectId, u64)>, IndexError>;
    /// Deleted objects whose hot file is on `node`'s disk, for it to remove, at most
    /// `limit` (queued by the deletion's tombstone, in the same batch).
    fn purge_queue(&self, node: &str, limit: usize) -> Result<Vec<ObjectId>, IndexError>;
    /// Takes objects off `node`'s purge queue (their hot files are removed); synced.
    fn purged(&self, node: &str, ids: &[ObjectId]) -> Result<(), IndexError>;
    /// Records that objects have (`replica`) or no longer have (they are in a recorded
    /// pack, or gone) a verified replica in the cold tier, and takes them off `node`'s
    /// replication queue either way; synced.
    fn set_replicated(&self, node: &str, ids: &[ObjectId], replica: bool)
        -> Result<(), IndexError>;
    /// Records the scrubber's latest check of an object (not synced: a lost record only
    /// means the object is checked again).
    fn record_fixity(&self, id: &ObjectId, record: &FixityRecord) -> Result<(), IndexError>;
    fn fixity(&self, id: &ObjectId) -> Result<Option<FixityRecord>, IndexError>;
    /// Objects and bytes per tier, packs and queued studies: running totals kept by every
    /// write (no scan), equal at every moment to what a scan of the objects, packs and
    /// queue would count.
    fn tier_totals(&self) -> Result<TierTotals, IndexError>;
}

/// The tiering policy's access queue: when each study was last stored into or
/// retrieved, and the studies ordered by that time, oldest first.
///
/// Contract:
/// - Nothing here is synced: an access time lost in a crash only delays aging.
/// - A study has at most one queue entry, at its [`WorkQueue::last_access`]; an older
///   access time never replaces a newer one. `commit` touches the studies it stores into.
pub trait WorkQueue {
    /// Records that these studies were accessed (retrieved) at `at_ms`, for the tiering
    /// policy. Not synced: an access time lost in a crash only delays aging.
    fn record_access(&self, study_uids: &[String], at_ms: u64) -> Result<(), IndexError>;
    /// When the study was last stored into or retrieved, if ever recorded.
    fn last_access(&self, study_uid: &str) -> Result<Option<u64>, IndexError>;
    /// The access queue, oldest first: `(last access ms, study)` for entries accessed
    /// before `before_ms`, at most `limit`. An entry whose time is older than the study's
    /// [`WorkQueue::last_access`] is stale (the study was accessed again).
    fn accessed_before(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, IndexError>;
    /// Removes one access-queue entry (its work is done, or it is stale).
    fn dequeue(&self, at_ms: u64, study_uid: &str) -> Result<(), IndexError>;
    /// Takes (or renews) the lease on `job` for `node` until `until_ms`, unless another
    /// node holds it past `now_ms`; synced. Returns whether `node` holds it now. On a
    /// shared index no two nodes hold one lease at once (docs/scale-out.md "Leases").
    fn claim(&self, job: &str, node: &str, now_ms: u64, until_ms: u64) -> Result<bool, IndexError>;
    /// Gives up `node`'s lease on `job` (nothing when another node holds it).
    fn release(&self, job: &str, node: &str) -> Result<(), IndexError>;
    /// Every lease recorded (expired ones too, until taken again or released).
    fn leases(&self) -> Result<Vec<(String, LeaseRecord)>, IndexError>;
}

/// Deletions and legal holds.
///
/// Contract:
/// - [`Governance::tombstone_study`], [`Governance::restore_tombstone`] and
///   [`Governance::set_hold`] are each **one synced, atomic batch**.
/// - A tombstoned study is gone from the catalog (its study, series, instances, object
///   records, secondary-index entries, access-queue entry and packs), and each of its
///   objects is marked deleted with it until stored again.
pub trait Governance {
    /// Removes a study from the index in one synced batch, leaving a tombstone (and each
    /// of its objects marked deleted) in its place, and returns that tombstone.
    /// `tombstone` gives who, why and when, and packs the caller knows of; its objects
    /// — and the packs holding their cold copies — are read here, under the write
    /// serialisation, so that an instance stored while the delete runs is either in the
    /// tombstone or not deleted. A study under a legal hold is refused
    /// ([`IndexError::Held`]), checked under the same serialisation; an unknown study is
    /// an error.
    fn tombstone_study(&self, tombstone: &Tombstone) -> Result<Tombstone, IndexError>;
    /// Deletes some instances `(series, sop)` of a study that lives on, as
    /// [`Governance::tombstone_study`] deletes a whole one: their records and every
    /// version's object record go (marked deleted), the study's and series' counters and
    /// ModalitiesInStudy follow, a series left empty goes, and a partial tombstone
    /// ([`Tombstone::partial`]) is written in their place, in one synced batch. Every
    /// pack of the study is dropped from the index (the caller deletes them), so every
    /// object the study keeps must have its hot copy (recalled first), else an error;
    /// they are hot-only afterwards. Instances the study does not hold are ignored; a
    /// study under a legal hold is refused ([`IndexError::Held`]).
    fn tombstone_instances(
        &self,
        tombstone: &Tombstone,
        instances: &[(String, String)],
    ) -> Result<Tombstone, IndexError>;
    fn tombstones(&self) -> Result<Vec<Tombstone>, IndexError>;
    /// Writes a tombstone and its deleted-object marks (reindex carries them over from
    /// the old index), except for the objects in `live`, stored again since.
    fn restore_tombstone(&self, tombstone: &Tombstone, live: &[ObjectId])
        -> Result<(), IndexError>;
    /// The study an object was deleted with, if it was.
    fn deleted_object(&self, id: &ObjectId) -> Result<Option<String>, IndexError>;
    /// Sets the legal holds standing on a study (none: every hold lifted); synced. A
    /// study may have several (one per matter), each placed and lifted on its own.
    fn set_holds(&self, study_uid: &str, holds: &[HoldRecord]) -> Result<(), IndexError>;
    /// The legal holds standing on a study, oldest first.
    fn holds(&self, study_uid: &str) -> Result<Vec<HoldRecord>, IndexError>;
    /// Links stored patients (by [`patient_key`]) to the identity they are
    /// known by now, and records the HL7 message (control id, outcome) that did it, in
    /// one synced batch.
    fn set_patient_links(
        &self,
        links: &[(String, PatientLink)],
        message: Option<(&str, &str)>,
    ) -> Result<(), IndexError>;
    /// The identity a stored patient (its [`patient_key`]) is known by now, if
    /// it was ever changed.
    fn patient_link(&self, patient_key: &str) -> Result<Option<PatientLink>, IndexError>;
    /// The stored patient keys linked to an identity whose PatientID is `current` (of
    /// any issuer; itself among them once its own demographics were updated).
    fn patient_aliases(&self, current: &str) -> Result<Vec<String>, IndexError>;
    /// Every link, for reindex and `strata patient`.
    fn patient_links(&self) -> Result<Vec<(String, PatientLink)>, IndexError>;
    /// Sets the IssuerOfPatientID of study identities `(study, PatientID, issuer)` that
    /// have none yet (the study's own patient, or one of its other patients), in one
    /// synced batch; identities that have one keep it. Returns how many studies changed.
    /// For `reindex` (issuers a sender's configured default gave) and the start-up
    /// migration of records written before issuers were kept.
    fn set_patient_issuers(
        &self,
        issuers: &[(String, String, String)],
    ) -> Result<usize, IndexError>;
    /// The id of the archive this index belongs to (the one its cold tier's marker
    /// names), once claimed: the nodes sharing the index share it.
    fn archive_id(&self) -> Result<Option<String>, IndexError>;
    /// Records the archive's id (synced).
    fn set_archive_id(&self, id: &str) -> Result<(), IndexError>;
    /// Records what a node says of itself ([`NodeRecord`], its heartbeat); not synced
    /// (a lost heartbeat is the next one late).
    fn set_node(&self, node: &NodeRecord) -> Result<(), IndexError>;
    /// Every node that ever ran on this index, by node id.
    fn nodes(&self) -> Result<Vec<NodeRecord>, IndexError>;
    /// Whether the start-up migration `step` ran on this index.
    fn migrated(&self, step: &str) -> Result<bool, IndexError>;
    /// Records that the start-up migration `step` ran (synced).
    fn mark_migrated(&self, step: &str) -> Result<(), IndexError>;
    /// The outcome recorded for an HL7 message control id already processed.
    fn hl7_message(&self, control_id: &str) -> Result<Option<String>, IndexError>;
    /// Marks instances `(study, series, sop)` rejected (an IOCM rejection note), in
    /// one synced batch; they need not be held (yet).
    fn reject_instances(
        &self,
        instances: &[(String, String, String)],
        rejection: &RejectionRecord,
    ) -> Result<(), IndexError>;
    /// Whether the archive holds any patient link (an identity the hospital changed): a
    /// query need not look up each patient's current identity when it holds none.
    fn any_patient_links(&self) -> Result<bool, IndexError> {
        Ok(!self.patient_links()?.is_empty())
    }
    /// Whether any instance of the archive was ever rejected (a query need not look
    /// for rejections study by study when none was).
    fn any_rejections(&self) -> Result<bool, IndexError> {
        Ok(!self.rejections()?.is_empty())
    }
    /// The rejected instances of a study: `(series, sop, why)`.
    fn rejections_of_study(
        &self,
        study_uid: &str,
    ) -> Result<Vec<(String, String, RejectionRecord)>, IndexError>;
    /// Every rejected instance: `(study, series, sop, why)`.
    fn rejections(&self) -> Result<Vec<(String, String, String, RejectionRecord)>, IndexError>;
}

/// The archive's metadata index: all four traits. See the module docs for the
/// consistency rules; `use crate::index::prelude::*;` to call its methods.
pub trait Index: Catalog + Placement + WorkQueue + Governance + Send + Sync {}

impl<T: Catalog + Placement + WorkQueue + Governance + Send + Sync + ?Sized> Index for T {}

/// The attributes with a secondary index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondaryKey {
    PatientId,
    StudyDate,
    AccessionNumber,
}
