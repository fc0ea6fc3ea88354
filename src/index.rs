//! # The metadata index
//!
//! The index answers "what do we hold, and where": patients, studies, series, instances,
//! and per stored object its blake3 id, size, location and provenance. It is the fast
//! source of truth while running, and it is *rebuildable*: every field except provenance
//! (when and from whom an object came) is derived from the stored objects themselves, so
//! `strata reindex` can reconstruct it from the hot directory alone (DESIGN promise 5).
//!
//! The [`Index`] trait keeps RocksDB out of the rest of the code: only
//! [`rocks`] imports the `rocksdb` crate (TiKV's engine-traits rule).
//!
//! ## Consistency
//! - All writes go through [`Index::commit`], which applies a whole group of new objects
//!   in **one synced write batch** (atomic across column families, durable on return).
//! - There is one writer per archive (the group committer thread of the process that
//!   holds the archive lock), so the read-modify-write of study, series and patient
//!   records inside `commit` needs no further locking.
//! - Readers may be the same process or a RocksDB secondary in another process
//!   (`strata ls` while `strata serve` runs); [`Index::catch_up`] refreshes a secondary.
//!
//! Every method blocks: call it from the blocking pool or a plain thread.

pub mod records;
pub mod rocks;

pub use records::{
    ColdCopy, CommitOutcome, FixityRecord, HoldRecord, InstanceEntry, InstanceRecord, NewObject,
    ObjectRecord, PackRecord, PackedObject, PatientRecord, Provenance, SeriesRecord, StudyRecord,
    Tier, Tombstone, VersionRef,
};
pub use rocks::RocksIndex;

use strata_tiers::ObjectId;

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
}

/// The archive's metadata index. See the module docs for the consistency rules.
pub trait Index: Send + Sync {
    /// Applies a group of newly persisted objects in one synced, atomic batch and says,
    /// per object, what it did. Objects already indexed are reported, not re-added.
    fn commit(&self, objects: &[NewObject]) -> Result<Vec<CommitOutcome>, IndexError>;
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
    /// Studies whose PatientID, StudyDate or AccessionNumber equals `value` (secondary
    /// indexes; no scan).
    fn studies_by(&self, key: SecondaryKey, value: &str) -> Result<Vec<String>, IndexError>;
    /// Studies whose StudyDate lies in `from..=to` (`YYYYMMDD`; an empty bound is open),
    /// from the StudyDate index without a scan of the studies.
    fn studies_by_date_range(&self, from: &str, to: &str) -> Result<Vec<String>, IndexError>;
    /// Records that these studies were accessed (retrieved) at `at_ms`, for the tiering
    /// policy. Not synced: an access time lost in a crash only delays aging.
    fn record_access(&self, study_uids: &[String], at_ms: u64) -> Result<(), IndexError>;
    /// When the study was last stored into or retrieved, if ever recorded.
    fn last_access(&self, study_uid: &str) -> Result<Option<u64>, IndexError>;
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
    /// Marks objects as having (`Hot`) or no longer having (`Cold`) a hot copy; synced.
    fn set_tier(&self, ids: &[ObjectId], tier: Tier) -> Result<(), IndexError>;
    /// The access queue, oldest first: `(last access ms, study)` for entries accessed
    /// before `before_ms`, at most `limit`. An entry whose time is older than the study's
    /// [`Index::last_access`] is stale (the study was accessed again).
    fn accessed_before(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, IndexError>;
    /// Removes one access-queue entry (its work is done, or it is stale).
    fn dequeue(&self, at_ms: u64, study_uid: &str) -> Result<(), IndexError>;
    /// Removes a study from the index in one synced batch, leaving `tombstone` (and each
    /// of its objects marked deleted) in its place.
    fn tombstone_study(&self, tombstone: &Tombstone) -> Result<(), IndexError>;
    fn tombstones(&self) -> Result<Vec<Tombstone>, IndexError>;
    /// Writes a tombstone and its deleted-object marks (reindex carries them over from
    /// the old index), except for the objects in `live`, stored again since.
    fn restore_tombstone(&self, tombstone: &Tombstone, live: &[ObjectId])
        -> Result<(), IndexError>;
    /// The study an object was deleted with, if it was.
    fn deleted_object(&self, id: &ObjectId) -> Result<Option<String>, IndexError>;
    /// Records the scrubber's latest check of an object (not synced: a lost record only
    /// means the object is checked again).
    fn record_fixity(&self, id: &ObjectId, record: &FixityRecord) -> Result<(), IndexError>;
    fn fixity(&self, id: &ObjectId) -> Result<Option<FixityRecord>, IndexError>;
    /// Places (`Some`) or lifts (`None`) a legal hold; synced.
    fn set_hold(&self, study_uid: &str, hold: Option<&HoldRecord>) -> Result<(), IndexError>;
    fn hold(&self, study_uid: &str) -> Result<Option<HoldRecord>, IndexError>;
    /// For a read-only secondary: pick up what the primary wrote since. No-op otherwise.
    fn catch_up(&self) -> Result<(), IndexError>;
    /// TEMPORARY (replaced by the index-traits merge).
    fn refresh(&self) -> Result<(), IndexError> {
        self.catch_up()
    }
}

/// TEMPORARY (replaced by the index-traits merge).
pub mod prelude {
    pub use super::Index;
}

/// The attributes with a secondary index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondaryKey {
    PatientId,
    StudyDate,
    AccessionNumber,
}
