//! `KvIndex`: the index logic, once, over any ordered key-value engine (garage's `db`
//! idea; TiKV's engine traits).
//!
//! The index is a handful of record types laid out in column families of sorted keys.
//! Everything that gives the layout its meaning (counters, versions, secondary indexes,
//! the access queue, tombstones) lives here, in [`KvIndex`]; an engine only has to get a
//! value, scan a column family in key order from a start key, and write a batch of puts
//! and deletes atomically, optionally synced. [`super::rocks::RocksEngine`] does it on
//! RocksDB (the only module importing `rocksdb`), [`super::memory::MemoryEngine`] on
//! `BTreeMap`s for tests. The layout below is the on-disk format of every archive: it
//! changes only with [`SCHEMA_VERSION`].
//!
//! ## Column families and keys (`\0` separates UIDs; UIDs never contain it)
//! | CF | key | value |
//! |---|---|---|
//! | `meta` | `schema` | index schema version (u32 LE) |
//! | `meta` | `tier_totals` | `TierTotals`: running totals of objects per tier, packs, queue |
//! | `meta` | `archive_id` | the archive's id, as its cold tier's marker names it (UTF-8) |
//! | `meta` | `migrated/<step>` | when a start-up migration step ran (ms since the epoch, u64 LE) |
//! | `objects` | 32-byte object id | `ObjectRecord` |
//! | `instances` | `study\0series\0sop` | `InstanceRecord` |
//! | `sop_index` | `sop` | every `study\0series` holding it, one per line, most recent last |
//! | `series` | `study\0series` | `SeriesRecord` |
//! | `series_index` | `series` | every `study` holding it, one per line, most recent last |
//! | `studies` | `study` | `StudyRecord` |
//! | `patients` | `patient_id` | `PatientRecord` |
//! | `idx_patient_id`, `idx_study_date`, `idx_accession` | `value\0study` | empty |
//! | `study_access` | `study` | last store or retrieval, ms since the epoch (u64 LE) |
//! | `access_queue` | last access (u64 BE) `study` | empty: the tiering queue, oldest first |
//! | `packs` | 32-byte pack id | `PackRecord` |
//! | `tombstones` | `study`, or `study\0deleted_at_ms` (20 digits) for a partial one | `Tombstone` (a deleted study, or some of its instances: UIDs, ids, who, why, when) |
//! | `deleted_objects` | 32-byte object id | the study it was deleted with |
//! | `holds` | `study` | `HoldRecord` (legal hold) |
//! | `fixity` | 32-byte object id | `FixityRecord` (the scrubber's last check) |
//! | `instance_metadata` | 32-byte object id | the object's metadata record ([`crate::dicom::metadata`]; its own version byte) |
//! | `patient_links` | patient key as stored (`PatientID`, or `PatientID\Issuer`: `records::patient_key`) | `PatientLink`: the identity it is known by now |
//! | `patient_aliases` | `current\0stored` (a current PatientID, a stored patient key) | empty: the stored patients linked to a current PatientID |
//! | `hl7_messages` | message control id | what processing it gave (its ACK's text), for exactly-once |
//! | `rejected` | `study\0series\0sop` | `RejectionRecord`: an instance an IOCM rejection note hides |
//! | `nodes` | node id | `NodeRecord`: a node's last heartbeat (`strata cluster status`) |
//! | `leases` | job name | `LeaseRecord`: which node holds a job until when ([`WorkQueue::claim`]) |
//! | `replication` | node id, 0, object id | u64 received at (ms): objects the node has yet to replicate to the cold tier |
//! | `purges` | node id, 0, object id | the study UID: hot files of deleted objects that node has yet to remove |
//!
//! `instance_metadata`, `patient_links`, `patient_aliases`, `hl7_messages`, `rejected` and `nodes` came after
//! schema 1 without changing it: an index written before them lacks the families (a RocksDB primary creates it on opening; a secondary reads it as
//! empty) and its objects have no records until `reindex`, or until they are stored
//! again; readers then fall back to the objects.
//!
//! ## Why every write takes one mutex
//! Several threads of one process write the index: the group committer (`commit`), the
//! tiering worker (`record_pack`, `set_tier`, `record_access`, `dequeue`), deletes
//! (`tombstone_study`), repair (`drop_pack`), holds. Most writes read records and write
//! them back (an object record gets a cold copy from `record_pack`, its tier from
//! `set_tier`, its hot copy back from `commit`; a study's counters grow with each
//! `commit`). An engine's atomic batch makes each write all-or-nothing but does not stop
//! two read-modify-writes from interleaving, and the second would silently undo the
//! first. So every write method of [`KvIndex`] runs under one write mutex, held from its
//! first read to the end of its batch: within one process no update is ever lost.
//!
//! Reads take no lock: an engine's single get or scan sees whole batches (RocksDB
//! iterators read from an implicit snapshot; the memory engine copies on write).
//!
//! The price is that writers wait for each other, including for a synced `commit`'s
//! fsync; writes are few and short next to the fsync the group committer already
//! batches. A mutex only serialises one process: the RocksDB index has exactly one
//! writing process (RocksDB's LOCK file and the archive lock see to it). A backend shared
//! by several processes or nodes, such as PostgreSQL, must give the same guarantee itself,
//! with transactions (`SERIALIZABLE`, or `SELECT ... FOR UPDATE` on the rows a write
//! reads), and retry on conflict.
//!
//! A write that panics leaves nothing behind (its batch was never written), so a poisoned
//! mutex is taken over rather than propagated.

use super::records::{decode, encode, issuers_agree};
use super::{
    unix_ms_now, Catalog, ColdCopy, CommitOutcome, FixityRecord, Governance, HoldRecord,
    IndexError, InstanceEntry, InstanceRecord, LeaseRecord, NewObject, NodeRecord, ObjectRecord,
    OtherPatient, PackRecord, PackedObject, PatientLink, PatientRecord, Placement, RejectionRecord,
    SecondaryKey, SeriesRecord, StudyRecord, Tier, TierTotals, Tombstone, VersionRef, WorkQueue,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use strata_tiers::ObjectId;

/// The start-up migrations of records written by earlier builds ([`Governance::migrated`]):
/// an index this build creates is marked as having had them all.
pub const MIGRATION_STEPS: [&str; 1] = [PATIENT_ISSUERS_MIGRATION];

/// Study records get their patients' IssuerOfPatientID; links follow
/// ([`crate::archive::Archive::migrate_patient_model_blocking`]).
pub const PATIENT_ISSUERS_MIGRATION: &str = "patient-issuers-1";

/// The version of the key layout above, stored under `meta`/`schema`.
pub const SCHEMA_VERSION: u32 = 1;

pub const CF_META: &str = "meta";
pub const CF_OBJECTS: &str = "objects";
pub const CF_INSTANCES: &str = "instances";
pub const CF_SOP_INDEX: &str = "sop_index";
pub const CF_SERIES: &str = "series";
pub const CF_SERIES_INDEX: &str = "series_index";
pub const CF_STUDIES: &str = "studies";
pub const CF_PATIENTS: &str = "patients";
pub const CF_IDX_PATIENT_ID: &str = "idx_patient_id";
pub const CF_IDX_STUDY_DATE: &str = "idx_study_date";
pub const CF_IDX_ACCESSION: &str = "idx_accession";
pub const CF_STUDY_ACCESS: &str = "study_access";
pub const CF_ACCESS_QUEUE: &str = "access_queue";
pub const CF_PACKS: &str = "packs";
pub const CF_TOMBSTONES: &str = "tombstones";
pub const CF_DELETED_OBJECTS: &str = "deleted_objects";
pub const CF_HOLDS: &str = "holds";
pub const CF_FIXITY: &str = "fixity";
pub const CF_INSTANCE_METADATA: &str = "instance_metadata";
pub const CF_PATIENT_LINKS: &str = "patient_links";
pub const CF_PATIENT_ALIASES: &str = "patient_aliases";
pub const CF_HL7_MESSAGES: &str = "hl7_messages";
pub const CF_REJECTED: &str = "rejected";
pub const CF_NODES: &str = "nodes";
pub const CF_LEASES: &str = "leases";
pub const CF_REPLICATION: &str = "replication";
pub const CF_PURGES: &str = "purges";

/// Every column family; an engine creates them all when it creates a store.
pub const ALL_CFS: [&str; 27] = [
    CF_META,
    CF_OBJECTS,
    CF_INSTANCES,
    CF_SOP_INDEX,
    CF_SERIES,
    CF_SERIES_INDEX,
    CF_STUDIES,
    CF_PATIENTS,
    CF_IDX_PATIENT_ID,
    CF_IDX_STUDY_DATE,
    CF_IDX_ACCESSION,
    CF_STUDY_ACCESS,
    CF_ACCESS_QUEUE,
    CF_PACKS,
    CF_TOMBSTONES,
    CF_DELETED_OBJECTS,
    CF_HOLDS,
    CF_FIXITY,
    CF_INSTANCE_METADATA,
    CF_PATIENT_LINKS,
    CF_PATIENT_ALIASES,
    CF_HL7_MESSAGES,
    CF_REJECTED,
    CF_NODES,
    CF_LEASES,
    CF_REPLICATION,
    CF_PURGES,
];

/// Called with each `(key, value)` of a scan; returns whether to go on.
pub type EntryVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, IndexError> + 'a;

/// One change of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        cf: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: &'static str,
        key: Vec<u8>,
    },
}

/// Puts and deletes across column families, applied atomically and in order by
/// [`KvEngine::write`] (a later change of the same key wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    pub fn put(&mut self, cf: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put {
            cf,
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn delete(&mut self, cf: &'static str, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete {
            cf,
            key: key.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The changes, in the order they were added.
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// An ordered key-value store with column families: all [`KvIndex`] needs of a storage
/// engine. Column families are the names in [`ALL_CFS`].
///
/// Contract (the conformance suite checks it through [`KvIndex`]):
/// - [`KvEngine::get`] and [`KvEngine::scan`] see every [`KvEngine::write`] that returned
///   before them, and never half of one batch within one column family;
/// - [`KvEngine::scan`] visits keys in ascending byte order, from the first key `>=`
///   `from`, until the visitor returns `false` or the column family ends, and lets the
///   visitor call back into the engine (it holds no lock while visiting);
/// - [`KvEngine::write`] applies the whole batch or nothing; with `sync`, it is on stable
///   storage when the call returns.
pub trait KvEngine: Send + Sync {
    /// The value under `key` in `cf`.
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError>;
    /// Visits `cf` in key order from `from` (inclusive) until `visit` returns false.
    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        visit: &mut EntryVisitor<'_>,
    ) -> Result<(), IndexError>;
    /// The values of many keys at once (in `keys`' order): one round trip on an engine
    /// across a network ([`super::PgEngine`]), a loop of [`KvEngine::get`] by default.
    fn get_many(
        &self,
        keys: &[(&'static str, Vec<u8>)],
    ) -> Result<Vec<Option<Vec<u8>>>, IndexError> {
        keys.iter().map(|(cf, k)| self.get(cf, k)).collect()
    }
    /// Applies `batch` atomically; durable on return if `sync`.
    fn write(&self, batch: Batch, sync: bool) -> Result<(), IndexError>;
    /// Whether a write with `sync` false is durable after a later
    /// [`KvEngine::sync_wal`] (a local log, as RocksDB's WAL). False by default: such an
    /// engine is always written synced where durability is deferred.
    fn defers_sync(&self) -> bool {
        false
    }
    /// Makes every earlier write durable, for an engine that [`KvEngine::defers_sync`].
    fn sync_wal(&self) -> Result<(), IndexError> {
        Ok(())
    }
    /// For a read replica: picks up what the primary wrote since. No-op by default.
    fn refresh(&self) -> Result<(), IndexError> {
        Ok(())
    }
    /// Serialises the writers of every process sharing the engine (several nodes on one
    /// PostgreSQL): [`KvIndex`] calls it after taking its own mutex, before a write's
    /// first read; the write's [`KvEngine::write`] releases it (atomically with the
    /// batch), or [`KvEngine::unlock_writes`] when the write wrote nothing. No-op for an
    /// engine one process owns.
    fn lock_writes(&self) -> Result<(), IndexError> {
        Ok(())
    }
    /// Releases what [`KvEngine::lock_writes`] took if no write did.
    fn unlock_writes(&self) {}
    /// Whether other processes write the engine too: then nothing read once (such as
    /// whether any patient link exists) may be remembered.
    fn shared(&self) -> bool {
        false
    }
}

/// Held by every write of [`KvIndex`]: its process mutex and, for a shared engine, the
/// engine's write lock ([`KvEngine::lock_writes`]), released when dropped.
struct WriteGuard<'a, E: KvEngine> {
    _process: MutexGuard<'a, ()>,
    engine: &'a E,
}

impl<E: KvEngine> Drop for WriteGuard<'_, E> {
    fn drop(&mut self) {
        self.engine.unlock_writes();
    }
}

/// The index over an engine: implements [`Catalog`], [`Placement`], [`WorkQueue`] and
/// [`Governance`] (hence [`super::Index`]). See the module docs for the write mutex.
pub struct KvIndex<E: KvEngine> {
    engine: E,
    /// Held by every write method from its first read to its batch's write.
    write_lock: Mutex<()>,
    /// Whether `patient_links` / `rejected` hold anything: read at open and at each
    /// [`Catalog::refresh`], set by the writes. Until the hospital corrects a patient
    /// or rejects an instance, queries pay nothing for either (no lookup per study).
    links_present: AtomicBool,
    rejections_present: AtomicBool,
}

fn corrupt(cf: &'static str, key: &[u8], reason: String) -> IndexError {
    IndexError::Corrupt {
        cf,
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

fn decode_at<T: DeserializeOwned>(
    cf: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, IndexError> {
    decode(value).map_err(|reason| corrupt(cf, key, reason))
}

/// The values of the SOP and series indexes: every place a UID is found (a study, or
/// study\0series), most recent last, one per line (a UID never holds a newline). The
/// same UID may be in several studies (a study corrected under a new Study Instance
/// UID); lookups answer with the most recent. Values written before were one place,
/// which reads the same.
fn places(value: &[u8]) -> Vec<&[u8]> {
    value
        .split(|b| *b == b'\n')
        .filter(|p| !p.is_empty())
        .collect()
}

/// `value`'s places with `place` moved (or added) to the end.
fn with_place(value: Option<&[u8]>, place: &[u8]) -> Vec<u8> {
    let mut kept: Vec<&[u8]> = value
        .map(places)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| *p != place)
        .collect();
    kept.push(place);
    kept.join(&b'\n')
}

/// `value`'s places without `place`, or `None` when none is left.
fn without_place(value: &[u8], place: &[u8]) -> Option<Vec<u8>> {
    let kept: Vec<&[u8]> = places(value).into_iter().filter(|p| *p != place).collect();
    (!kept.is_empty()).then(|| kept.join(&b'\n'))
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn key3(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut k = key2(a, b);
    k.push(0);
    k.extend_from_slice(c.as_bytes());
    k
}

fn queue_key(at_ms: u64, study_uid: &str) -> Vec<u8> {
    let mut key = at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(study_uid.as_bytes());
    key
}

fn split_key(key: &[u8]) -> Vec<String> {
    key.split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn decode_ms(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_le_bytes)
}

impl<E: KvEngine> KvIndex<E> {
    /// Wraps an engine and checks its schema version. A `writable` index initialises the
    /// version of an empty store; a read replica accepts an empty one as it is.
    /// Reads whether the overlay families hold anything (one seek each).
    fn check_overlays(&self) -> Result<(), IndexError> {
        // another process may add links or rejections any time: never assume none
        let shared = self.engine.shared();
        self.links_present.store(
            shared || self.holds_any(CF_PATIENT_LINKS)?,
            Ordering::Release,
        );
        self.rejections_present
            .store(shared || self.holds_any(CF_REJECTED)?, Ordering::Release);
        Ok(())
    }

    /// Whether `cf` holds anything (one seek).
    fn holds_any(&self, cf: &'static str) -> Result<bool, IndexError> {
        let mut found = false;
        self.engine.scan(cf, b"", &mut |_, _| {
            found = true;
            Ok(false)
        })?;
        Ok(found)
    }

    /// The first `limit` entries of `node`'s queue in `cf` (keys node id, 0, object
    /// id: `replication`, `purges`), with their values.
    fn node_queue(
        &self,
        cf: &'static str,
        node: &str,
        limit: usize,
    ) -> Result<Vec<(ObjectId, Vec<u8>)>, IndexError> {
        let mut prefix = node.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        self.scan_prefix(cf, &prefix, &mut |key, value| {
            if let Some(id) = key
                .get(prefix.len()..)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                out.push((ObjectId::from_bytes(id), value.to_vec()));
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    pub fn open(engine: E, writable: bool) -> Result<Self, IndexError> {
        let index = KvIndex {
            engine,
            write_lock: Mutex::new(()),
            links_present: AtomicBool::new(true),
            rejections_present: AtomicBool::new(true),
        };
        index.check_overlays()?;
        index.check_schema(writable)?;
        if writable && stored_totals(&index.engine)?.is_none() {
            // an index written before the running totals: count them once
            let totals = index.scan_totals()?;
            let mut batch = Batch::default();
            batch.put(CF_META, TOTALS_KEY, encode(&totals));
            index.engine.write(batch, true)?;
        }
        Ok(index)
    }

    /// The [`TierTotals`] counted by scanning the objects, packs and access queue: what
    /// the running totals must always equal (the conformance suite checks it).
    pub fn scan_totals(&self) -> Result<TierTotals, IndexError> {
        let mut totals = TierTotals::default();
        let mut failure = None;
        self.scan_prefix(CF_OBJECTS, b"", &mut |k, v| {
            match decode_at::<ObjectRecord>(CF_OBJECTS, k, v) {
                Ok(r) => totals.apply(&TierTotals::object_delta(&r, 1)),
                Err(e) => {
                    failure = Some(e);
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        for (_, p) in self.scan_records::<PackRecord>(CF_PACKS, b"")? {
            totals.apply(&TierTotals::pack_delta(&p, 1));
        }
        self.engine.scan(CF_ACCESS_QUEUE, b"", &mut |_, _| {
            totals.queued_studies += 1;
            Ok(true)
        })?;
        Ok(totals)
    }

    /// The engine underneath.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    fn check_schema(&self, may_initialise: bool) -> Result<(), IndexError> {
        match self.engine.get(CF_META, b"schema")? {
            Some(v) if v.len() == 4 => {
                let found = u32::from_le_bytes(v[..4].try_into().expect("4 bytes"));
                if found != SCHEMA_VERSION {
                    return Err(IndexError::Storage(format!(
                        "index schema version {found} is not supported (this build reads {SCHEMA_VERSION})"
                    )));
                }
                Ok(())
            }
            Some(_) => Err(IndexError::Corrupt {
                cf: CF_META,
                key: "schema".into(),
                reason: "bad length".into(),
            }),
            None if may_initialise => {
                let mut batch = Batch::default();
                batch.put(CF_META, &b"schema"[..], SCHEMA_VERSION.to_le_bytes());
                // an index this build creates has none of the older records to migrate
                for step in MIGRATION_STEPS {
                    batch.put(
                        CF_META,
                        migration_key(step).into_bytes(),
                        unix_ms_now().to_le_bytes().to_vec(),
                    );
                }
                self.engine.write(batch, true)
            }
            None => Ok(()),
        }
    }

    /// The record of a study about to be deleted (whole or in part), read under the write
    /// mutex: [`IndexError::Held`] while a legal hold stands, an error for an unknown
    /// study.
    fn study_to_delete(&self, study: &str) -> Result<StudyRecord, IndexError> {
        if let Some(hold) = self.holds(study)?.into_iter().next() {
            return Err(IndexError::Held {
                study_uid: study.to_string(),
                hold,
            });
        }
        self.get::<StudyRecord>(CF_STUDIES, study.as_bytes())?
            .ok_or_else(|| IndexError::Storage(format!("no study {study} in the index")))
    }

    /// Takes the write mutex (see the module docs), and a shared engine's write lock. A
    /// poisoned mutex is taken over: the write that panicked wrote nothing.
    fn writer(&self) -> Result<WriteGuard<'_, E>, IndexError> {
        let process = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.engine.lock_writes()?;
        Ok(WriteGuard {
            _process: process,
            engine: &self.engine,
        })
    }

    fn pending(&self) -> PendingWrites<'_, E> {
        PendingWrites {
            engine: &self.engine,
            values: HashMap::new(),
            fetched: HashMap::new(),
        }
    }

    fn get<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, IndexError> {
        match self.engine.get(cf, key)? {
            None => Ok(None),
            Some(v) => decode_at(cf, key, &v).map(Some),
        }
    }

    /// Visits `(key, value)` of every entry whose key starts with `prefix`.
    fn scan_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
        visit: &mut EntryVisitor<'_>,
    ) -> Result<(), IndexError> {
        self.engine.scan(cf, prefix, &mut |k, v| {
            if !k.starts_with(prefix) {
                return Ok(false);
            }
            visit(k, v)
        })
    }

    fn scan_records<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, IndexError> {
        let mut out = Vec::new();
        self.scan_prefix(cf, prefix, &mut |k, v| {
            out.push((k.to_vec(), decode_at(cf, k, v)?));
            Ok(true)
        })?;
        Ok(out)
    }
}

/// The `rejected` key of an instance.
fn rejected_key(study: &str, series: &str, sop: &str) -> Vec<u8> {
    format!("{study}\0{series}\0{sop}").into_bytes()
}

/// The `meta` key recording that the start-up migration `step` ran.
fn migration_key(step: &str) -> String {
    format!("migrated/{step}")
}

/// The `patient_aliases` key of a stored patient key linked to the PatientID `current`.
fn alias_key(current: &str, stored: &str) -> Vec<u8> {
    let mut key = current.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(stored.as_bytes());
    key
}

/// Read-modify-write cache for one write: records read from the engine or written earlier
/// in the same batch, flushed into one [`Batch`] at the end.
struct PendingWrites<'a, E: KvEngine> {
    engine: &'a E,
    /// `None` is a pending delete.
    values: HashMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    /// Values read ahead ([`PendingWrites::prefetch`]), as the engine had them.
    fetched: HashMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

impl<E: KvEngine> PendingWrites<'_, E> {
    fn get<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, IndexError> {
        match self.get_raw(cf, key)? {
            Some(v) => decode_at(cf, key, &v).map(Some),
            None => Ok(None),
        }
    }

    fn get_raw(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let at = (cf, key.to_vec());
        match self.values.get(&at).or_else(|| self.fetched.get(&at)) {
            Some(v) => Ok(v.clone()),
            None => self.engine.get(cf, key),
        }
    }

    /// Reads `keys` ahead in one [`KvEngine::get_many`] (keys written or read ahead
    /// already are skipped): later reads of them cost no round trip.
    fn prefetch(&mut self, keys: Vec<(&'static str, Vec<u8>)>) -> Result<(), IndexError> {
        let mut seen = HashSet::new();
        let keys: Vec<_> = keys
            .into_iter()
            .filter(|k| {
                !self.values.contains_key(k)
                    && !self.fetched.contains_key(k)
                    && seen.insert(k.clone())
            })
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let values = self.engine.get_many(&keys)?;
        self.fetched.extend(keys.into_iter().zip(values));
        Ok(())
    }

    fn put<T: Serialize>(&mut self, cf: &'static str, key: Vec<u8>, record: &T) {
        self.values.insert((cf, key), Some(encode(record)));
    }

    fn put_raw(&mut self, cf: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.values.insert((cf, key.into()), Some(value.into()));
    }

    fn delete(&mut self, cf: &'static str, key: impl Into<Vec<u8>>) {
        self.values.insert((cf, key.into()), None);
    }

    /// Moves a study's access time (and its access-queue entry) to `at_ms`; an older
    /// time never replaces a newer one.
    fn touch_study(&mut self, study_uid: &str, at_ms: u64) -> Result<(), IndexError> {
        let previous = self
            .get_raw(CF_STUDY_ACCESS, study_uid.as_bytes())?
            .and_then(|v| decode_ms(&v));
        if let Some(previous) = previous {
            if previous >= at_ms {
                return Ok(());
            }
            self.delete(CF_ACCESS_QUEUE, queue_key(previous, study_uid));
        }
        self.put_raw(
            CF_STUDY_ACCESS,
            study_uid.as_bytes().to_vec(),
            at_ms.to_le_bytes().to_vec(),
        );
        self.put_raw(CF_ACCESS_QUEUE, queue_key(at_ms, study_uid), Vec::new());
        Ok(())
    }

    /// The batch, with the running [`TierTotals`] moved by what it changes in `objects`,
    /// `packs` and `access_queue` (each key's stored value against its final pending
    /// one): every write keeps them, whichever method makes it.
    fn into_batch(self) -> Result<Batch, IndexError> {
        let mut delta = [0i64; 8];
        let add = |delta: &mut [i64; 8], d: [i64; 8]| {
            for (a, b) in delta.iter_mut().zip(d) {
                *a += b;
            }
        };
        for ((cf, key), value) in &self.values {
            let cf = *cf;
            if ![CF_OBJECTS, CF_PACKS, CF_ACCESS_QUEUE].contains(&cf) {
                continue;
            }
            let old = self.engine.get(cf, key)?;
            match cf {
                CF_OBJECTS => {
                    for (bytes, sign) in [(old.as_deref(), -1), (value.as_deref(), 1)] {
                        if let Some(bytes) = bytes {
                            let r: ObjectRecord = decode_at(cf, key, bytes)?;
                            add(&mut delta, TierTotals::object_delta(&r, sign));
                        }
                    }
                }
                CF_PACKS => {
                    for (bytes, sign) in [(old.as_deref(), -1), (value.as_deref(), 1)] {
                        if let Some(bytes) = bytes {
                            let p: PackRecord = decode_at(cf, key, bytes)?;
                            add(&mut delta, TierTotals::pack_delta(&p, sign));
                        }
                    }
                }
                _ => delta[7] += value.is_some() as i64 - old.is_some() as i64,
            }
        }
        let mut batch = Batch::default();
        if delta != [0; 8] {
            let mut totals = stored_totals(self.engine)?.unwrap_or_default();
            totals.apply(&delta);
            batch.put(CF_META, TOTALS_KEY, encode(&totals));
        }
        for ((cf, key), value) in self.values {
            match value {
                Some(value) => batch.put(cf, key, value),
                None => batch.delete(cf, key),
            }
        }
        Ok(batch)
    }

    fn write(self, sync: bool) -> Result<(), IndexError> {
        let engine = self.engine;
        engine.write(self.into_batch()?, sync)
    }
}

impl<E: KvEngine> KvIndex<E> {
    /// [`Catalog::commit`], its batch written synced or not.
    fn commit_group(
        &self,
        objects: &[NewObject],
        sync: bool,
    ) -> Result<Vec<CommitOutcome>, IndexError> {
        let _writer = self.writer()?;
        let mut pending = self.pending();
        // what committing reads, in one round trip (several on a networked engine)
        let mut ahead = vec![(CF_META, TOTALS_KEY.to_vec())];
        for obj in objects {
            let a = &obj.attrs;
            ahead.extend([
                (CF_OBJECTS, obj.id.as_bytes().to_vec()),
                (CF_INSTANCE_METADATA, obj.id.as_bytes().to_vec()),
                (
                    CF_INSTANCES,
                    key3(&a.study_uid, &a.series_uid, &a.sop_instance_uid),
                ),
                (CF_SOP_INDEX, a.sop_instance_uid.as_bytes().to_vec()),
                (CF_SERIES, key2(&a.study_uid, &a.series_uid)),
                (CF_SERIES_INDEX, a.series_uid.as_bytes().to_vec()),
                (CF_STUDIES, a.study_uid.as_bytes().to_vec()),
                (CF_STUDY_ACCESS, a.study_uid.as_bytes().to_vec()),
                (CF_PATIENTS, a.patient_id.as_bytes().to_vec()),
            ]);
        }
        pending.prefetch(ahead)?;
        let mut seen: HashSet<ObjectId> = HashSet::new();
        let mut outcomes = Vec::with_capacity(objects.len());
        for obj in objects {
            if !seen.insert(obj.id) {
                outcomes.push(CommitOutcome::AlreadyPresent);
                continue;
            }
            let key = obj.id.as_bytes().to_vec();
            if let Some(mut existing) = pending.get::<ObjectRecord>(CF_OBJECTS, &key)? {
                // Every committed object was just made durable on hot disk: a cold-only
                // object sent again has its hot copy back.
                if existing.tier == Tier::Cold {
                    existing.tier = Tier::Hot;
                    existing.hot_node =
                        (!obj.provenance.node.is_empty()).then(|| obj.provenance.node.clone());
                    pending.put(CF_OBJECTS, key.clone(), &existing);
                }
                // indexed before metadata records existed: it gets one now
                if let Some(m) = &obj.metadata {
                    if pending.get_raw(CF_INSTANCE_METADATA, &key)?.is_none() {
                        pending.put_raw(CF_INSTANCE_METADATA, key.clone(), m.clone());
                    }
                }
                outcomes.push(CommitOutcome::AlreadyPresent);
                continue;
            }
            // stored again after its study was deleted: it lives again, and a later
            // reindex or recovery must not take it for a deletion to finish
            pending.delete(CF_DELETED_OBJECTS, obj.id.as_bytes().to_vec());
            outcomes.push(apply_new_object(&mut pending, obj, Tier::Hot, Vec::new())?);
        }
        pending.write(sync)?;
        Ok(outcomes)
    }
}

impl<E: KvEngine> Catalog for KvIndex<E> {
    fn commit(&self, objects: &[NewObject]) -> Result<Vec<CommitOutcome>, IndexError> {
        self.commit_group(objects, true)
    }

    fn commit_unsynced(&self, objects: &[NewObject]) -> Result<Vec<CommitOutcome>, IndexError> {
        self.commit_group(objects, !self.engine.defers_sync())
    }

    fn sync(&self) -> Result<(), IndexError> {
        self.engine.sync_wal()
    }

    fn has_object(&self, id: &ObjectId) -> Result<bool, IndexError> {
        Ok(self.engine.get(CF_OBJECTS, id.as_bytes())?.is_some())
    }

    fn object(&self, id: &ObjectId) -> Result<Option<ObjectRecord>, IndexError> {
        self.get(CF_OBJECTS, id.as_bytes())
    }

    fn for_each_object(
        &self,
        visit: &mut dyn FnMut(ObjectId, ObjectRecord) -> bool,
    ) -> Result<(), IndexError> {
        self.scan_prefix(CF_OBJECTS, b"", &mut |k, v| {
            let id = ObjectId::from_slice(k).ok_or_else(|| IndexError::Corrupt {
                cf: CF_OBJECTS,
                key: format!("{k:02x?}"),
                reason: "key is not a 32-byte id".into(),
            })?;
            let rec = decode(v).map_err(|reason| IndexError::Corrupt {
                cf: CF_OBJECTS,
                key: id.to_hex(),
                reason,
            })?;
            Ok(visit(id, rec))
        })
    }

    fn studies(&self) -> Result<Vec<(String, StudyRecord)>, IndexError> {
        Ok(self
            .scan_records(CF_STUDIES, b"")?
            .into_iter()
            .map(|(k, r)| (String::from_utf8_lossy(&k).into_owned(), r))
            .collect())
    }

    fn study(&self, study_uid: &str) -> Result<Option<StudyRecord>, IndexError> {
        self.get(CF_STUDIES, study_uid.as_bytes())
    }

    fn studies_many(&self, study_uids: &[String]) -> Result<Vec<Option<StudyRecord>>, IndexError> {
        let keys: Vec<(&'static str, Vec<u8>)> = study_uids
            .iter()
            .map(|uid| (CF_STUDIES, uid.as_bytes().to_vec()))
            .collect();
        self.engine
            .get_many(&keys)?
            .into_iter()
            .zip(&keys)
            .map(|(v, (cf, k))| v.map(|v| decode_at(cf, k, &v)).transpose())
            .collect()
    }

    fn for_each_study(
        &self,
        visit: &mut dyn FnMut(&str, StudyRecord) -> bool,
    ) -> Result<(), IndexError> {
        self.scan_prefix(CF_STUDIES, b"", &mut |k, v| {
            let uid = String::from_utf8_lossy(k);
            let rec = decode_at(CF_STUDIES, k, v)?;
            Ok(visit(&uid, rec))
        })
    }

    fn series_of_study(&self, study_uid: &str) -> Result<Vec<(String, SeriesRecord)>, IndexError> {
        let prefix = key2(study_uid, "");
        Ok(self
            .scan_records(CF_SERIES, &prefix)?
            .into_iter()
            .map(|(k, r)| (String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), r))
            .collect())
    }

    fn instances_of_study(&self, study_uid: &str) -> Result<Vec<InstanceEntry>, IndexError> {
        let prefix = key2(study_uid, "");
        Ok(self
            .scan_records::<InstanceRecord>(CF_INSTANCES, &prefix)?
            .into_iter()
            .map(|(k, record)| {
                let parts = split_key(&k);
                InstanceEntry {
                    study_uid: parts.first().cloned().unwrap_or_default(),
                    series_uid: parts.get(1).cloned().unwrap_or_default(),
                    sop_instance_uid: parts.get(2).cloned().unwrap_or_default(),
                    record,
                }
            })
            .collect())
    }

    fn first_instance(
        &self,
        study_uid: &str,
        series_uid: Option<&str>,
    ) -> Result<Option<InstanceEntry>, IndexError> {
        let prefix = match series_uid {
            Some(series) => key3(study_uid, series, ""),
            None => key2(study_uid, ""),
        };
        let mut first = None;
        self.scan_prefix(CF_INSTANCES, &prefix, &mut |k, v| {
            let parts = split_key(k);
            first = Some(InstanceEntry {
                study_uid: parts.first().cloned().unwrap_or_default(),
                series_uid: parts.get(1).cloned().unwrap_or_default(),
                sop_instance_uid: parts.get(2).cloned().unwrap_or_default(),
                record: decode_at(CF_INSTANCES, k, v)?,
            });
            Ok(false)
        })?;
        Ok(first)
    }

    fn instance_metadata(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, IndexError> {
        self.engine.get(CF_INSTANCE_METADATA, id.as_bytes())
    }

    fn series(&self, series_uid: &str) -> Result<Option<(String, SeriesRecord)>, IndexError> {
        let Some(studies) = self.engine.get(CF_SERIES_INDEX, series_uid.as_bytes())? else {
            return Ok(None);
        };
        let Some(study) = places(&studies)
            .last()
            .map(|s| String::from_utf8_lossy(s).into_owned())
        else {
            return Ok(None);
        };
        Ok(self
            .get(CF_SERIES, &key2(&study, series_uid))?
            .map(|r| (study, r)))
    }

    fn instance(&self, sop_instance_uid: &str) -> Result<Option<InstanceEntry>, IndexError> {
        let Some(all) = self.engine.get(CF_SOP_INDEX, sop_instance_uid.as_bytes())? else {
            return Ok(None);
        };
        let Some(place) = places(&all).last().map(|p| p.to_vec()) else {
            return Ok(None);
        };
        let parts = split_key(&place);
        let (study, series) = match parts.as_slice() {
            [a, b] => (a.clone(), b.clone()),
            _ => {
                return Err(IndexError::Corrupt {
                    cf: CF_SOP_INDEX,
                    key: sop_instance_uid.into(),
                    reason: "value is not study\\0series".into(),
                })
            }
        };
        let record = self.get(CF_INSTANCES, &key3(&study, &series, sop_instance_uid))?;
        Ok(record.map(|record| InstanceEntry {
            study_uid: study,
            series_uid: series,
            sop_instance_uid: sop_instance_uid.into(),
            record,
        }))
    }

    fn studies_by(&self, key: SecondaryKey, value: &str) -> Result<Vec<String>, IndexError> {
        let cf = match key {
            SecondaryKey::PatientId => CF_IDX_PATIENT_ID,
            SecondaryKey::StudyDate => CF_IDX_STUDY_DATE,
            SecondaryKey::AccessionNumber => CF_IDX_ACCESSION,
        };
        let prefix = key2(value, "");
        let mut out = Vec::new();
        self.scan_prefix(cf, &prefix, &mut |k, _| {
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            Ok(true)
        })?;
        Ok(out)
    }

    fn studies_by_date_range(&self, from: &str, to: &str) -> Result<Vec<String>, IndexError> {
        let mut out = Vec::new();
        self.engine
            .scan(CF_IDX_STUDY_DATE, from.as_bytes(), &mut |k, _| {
                let Some(sep) = k.iter().position(|&b| b == 0) else {
                    return Ok(true);
                };
                let date = &k[..sep];
                if !to.is_empty() && date > to.as_bytes() {
                    return Ok(false);
                }
                if !date.is_empty() {
                    out.push(String::from_utf8_lossy(&k[sep + 1..]).into_owned());
                }
                Ok(true)
            })?;
        Ok(out)
    }

    fn refresh(&self) -> Result<(), IndexError> {
        self.engine.refresh()?;
        self.check_overlays()
    }
}

impl<E: KvEngine> WorkQueue for KvIndex<E> {
    fn record_access(&self, study_uids: &[String], at_ms: u64) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut pending = self.pending();
        for uid in study_uids {
            pending.touch_study(uid, at_ms)?;
        }
        pending.write(false)
    }

    fn last_access(&self, study_uid: &str) -> Result<Option<u64>, IndexError> {
        Ok(self
            .engine
            .get(CF_STUDY_ACCESS, study_uid.as_bytes())?
            .and_then(|v| decode_ms(&v)))
    }

    fn accessed_before(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, IndexError> {
        let mut out = Vec::new();
        self.engine.scan(CF_ACCESS_QUEUE, b"", &mut |key, _| {
            if key.len() < 8 || out.len() >= limit {
                return Ok(false);
            }
            let at = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
            if at >= before_ms {
                return Ok(false);
            }
            out.push((at, String::from_utf8_lossy(&key[8..]).into_owned()));
            Ok(true)
        })?;
        Ok(out)
    }

    fn dequeue(&self, at_ms: u64, study_uid: &str) -> Result<(), IndexError> {
        // A blind delete, but under the mutex all the same: it must not interleave with a
        // `touch_study` moving the same study's entry.
        let _writer = self.writer()?;
        let mut pending = self.pending();
        pending.delete(CF_ACCESS_QUEUE, queue_key(at_ms, study_uid));
        pending.write(false)
    }

    fn claim(&self, job: &str, node: &str, now_ms: u64, until_ms: u64) -> Result<bool, IndexError> {
        // read, decide and write under the writer lock: on a shared index that lock is
        // cluster-wide, so two nodes never both take one lease
        let _writer = self.writer()?;
        let mut pending = self.pending();
        let held: Option<LeaseRecord> = pending.get(CF_LEASES, job.as_bytes())?;
        let taken_ms = match held {
            Some(lease) if lease.node != node && lease.until_ms > now_ms => return Ok(false),
            Some(lease) if lease.node == node => lease.taken_ms,
            _ => now_ms,
        };
        pending.put(
            CF_LEASES,
            job.as_bytes().to_vec(),
            &LeaseRecord {
                node: node.to_string(),
                taken_ms,
                until_ms,
            },
        );
        pending.write(true)?;
        Ok(true)
    }

    fn release(&self, job: &str, node: &str) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut pending = self.pending();
        let held: Option<LeaseRecord> = pending.get(CF_LEASES, job.as_bytes())?;
        if held.is_some_and(|lease| lease.node == node) {
            pending.delete(CF_LEASES, job.as_bytes().to_vec());
            pending.write(true)?;
        }
        Ok(())
    }

    fn leases(&self) -> Result<Vec<(String, LeaseRecord)>, IndexError> {
        Ok(self
            .scan_records::<LeaseRecord>(CF_LEASES, b"")?
            .into_iter()
            .map(|(k, lease)| (String::from_utf8_lossy(&k).into_owned(), lease))
            .collect())
    }
}

impl<E: KvEngine> Placement for KvIndex<E> {
    fn record_pack(
        &self,
        pack_id: &ObjectId,
        pack: &PackRecord,
        members: &[PackedObject],
    ) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut pending = self.pending();
        for member in members {
            let key = member.id.as_bytes().to_vec();
            match pending.get::<ObjectRecord>(CF_OBJECTS, &key)? {
                Some(mut record) => {
                    if !record.cold.contains(&member.copy) {
                        record.cold.push(member.copy.clone());
                        pending.put(CF_OBJECTS, key, &record);
                    }
                }
                None => match &member.new {
                    Some(new) => {
                        // indexed from a pack: if it was deleted once, it lives again
                        pending.delete(CF_DELETED_OBJECTS, key.clone());
                        apply_new_object(&mut pending, new, Tier::Cold, vec![member.copy.clone()])?;
                    }
                    None => {
                        return Err(IndexError::Storage(format!(
                            "pack member {} is not an indexed object",
                            member.id
                        )))
                    }
                },
            }
        }
        pending.put(CF_PACKS, pack_id.as_bytes().to_vec(), pack);
        pending.write(true)
    }

    fn drop_pack(&self, pack_id: &ObjectId) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let hex = pack_id.to_hex();
        let mut pending = self.pending();
        let mut changed = Vec::new();
        self.scan_prefix(CF_OBJECTS, b"", &mut |k, v| {
            let mut record: ObjectRecord = decode_at(CF_OBJECTS, k, v)?;
            if record.cold.iter().any(|c| c.pack == hex) {
                record.cold.retain(|c| c.pack != hex);
                changed.push((k.to_vec(), record));
            }
            Ok(true)
        })?;
        for (k, record) in changed {
            pending.put(CF_OBJECTS, k, &record);
        }
        pending.delete(CF_PACKS, pack_id.as_bytes().to_vec());
        pending.write(true)
    }

    fn update_pack(&self, pack_id: &ObjectId, pack: &PackRecord) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut pending = self.pending();
        pending.put(CF_PACKS, pack_id.as_bytes().to_vec(), pack);
        pending.write(true)
    }

    fn pack(&self, pack_id: &ObjectId) -> Result<Option<PackRecord>, IndexError> {
        self.get(CF_PACKS, pack_id.as_bytes())
    }

    fn packs(&self) -> Result<Vec<(ObjectId, PackRecord)>, IndexError> {
        Ok(self
            .scan_records::<PackRecord>(CF_PACKS, b"")?
            .into_iter()
            .filter_map(|(k, v)| ObjectId::from_slice(&k).map(|id| (id, v)))
            .collect())
    }

    fn set_tier(&self, ids: &[ObjectId], tier: Tier, node: Option<&str>) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut pending = self.pending();
        let holder = match tier {
            Tier::Hot => node.filter(|n| !n.is_empty()).map(str::to_string),
            Tier::Cold => None,
        };
        for id in ids {
            let key = id.as_bytes().to_vec();
            if let Some(mut record) = pending.get::<ObjectRecord>(CF_OBJECTS, &key)? {
                if record.tier != tier || record.hot_node != holder {
                    record.tier = tier;
                    record.hot_node = holder.clone();
                    pending.put(CF_OBJECTS, key, &record);
                }
            }
        }
        pending.write(true)
    }

    fn replication_queue(
        &self,
        node: &str,
        limit: usize,
    ) -> Result<Vec<(ObjectId, u64)>, IndexError> {
        self.node_queue(CF_REPLICATION, node, limit)?
            .into_iter()
            .map(|(id, v)| Ok((id, decode_at(CF_REPLICATION, id.as_bytes(), &v)?)))
            .collect()
    }

    fn purge_queue(&self, node: &str, limit: usize) -> Result<Vec<ObjectId>, IndexError> {
        Ok(self
            .node_queue(CF_PURGES, node, limit)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    fn purged(&self, node: &str, ids: &[ObjectId]) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut pending = self.pending();
        for id in ids {
            pending.delete(CF_PURGES, replication_key(node, id));
        }
        pending.write(true)
    }

    fn set_replicated(
        &self,
        node: &str,
        ids: &[ObjectId],
        replica: bool,
    ) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut pending = self.pending();
        for id in ids {
            let key = id.as_bytes().to_vec();
            if let Some(mut record) = pending.get::<ObjectRecord>(CF_OBJECTS, &key)? {
                if record.replica != replica {
                    record.replica = replica;
                    pending.put(CF_OBJECTS, key, &record);
                }
            }
            pending.delete(CF_REPLICATION, replication_key(node, id));
        }
        pending.write(true)
    }

    fn record_fixity(&self, id: &ObjectId, record: &FixityRecord) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut batch = Batch::default();
        batch.put(CF_FIXITY, id.as_bytes().to_vec(), encode(record));
        self.engine.write(batch, false)
    }

    fn fixity(&self, id: &ObjectId) -> Result<Option<FixityRecord>, IndexError> {
        self.get(CF_FIXITY, id.as_bytes())
    }

    fn tier_totals(&self) -> Result<TierTotals, IndexError> {
        match stored_totals(&self.engine)? {
            Some(t) => Ok(t),
            // a read-only view of an index not yet opened for writing since the totals
            None => self.scan_totals(),
        }
    }
}

impl<E: KvEngine> Governance for KvIndex<E> {
    fn tombstone_study(&self, given: &Tombstone) -> Result<Tombstone, IndexError> {
        let _writer = self.writer()?;
        let study = &given.study_uid;
        let record = self.study_to_delete(study)?;
        let mut pending = self.pending();
        // what the tombstone names is read now, under the write lock
        let mut t = Tombstone {
            objects: Vec::new(),
            ..given.clone()
        };
        let instances = self.instances_of_study(study)?;
        for e in &instances {
            for v in &e.record.versions {
                t.objects.push((
                    e.series_uid.clone(),
                    e.sop_instance_uid.clone(),
                    v.id.clone(),
                ));
                let copies = ObjectId::from_hex(&v.id)
                    .map(|id| self.get::<ObjectRecord>(CF_OBJECTS, id.as_bytes()))
                    .transpose()?
                    .flatten()
                    .map(|r| r.cold)
                    .unwrap_or_default();
                for c in copies {
                    if !t.packs.contains(&c.pack) {
                        t.packs.push(c.pack);
                    }
                }
            }
        }
        for e in instances {
            pending.delete(
                CF_INSTANCES,
                key3(&e.study_uid, &e.series_uid, &e.sop_instance_uid),
            );
            // the SOP may also be in another study (a corrected copy): that place stays
            if let Some(v) = self
                .engine
                .get(CF_SOP_INDEX, e.sop_instance_uid.as_bytes())?
            {
                let place = key2(study, &e.series_uid);
                match without_place(&v, &place) {
                    Some(rest) => {
                        pending.put_raw(CF_SOP_INDEX, e.sop_instance_uid.as_bytes(), rest)
                    }
                    None => pending.delete(CF_SOP_INDEX, e.sop_instance_uid.as_bytes()),
                }
            }
            for v in &e.record.versions {
                if let Some(id) = ObjectId::from_hex(&v.id) {
                    let record = self.get::<ObjectRecord>(CF_OBJECTS, id.as_bytes())?;
                    forget_object(&mut pending, &id, record.as_ref(), study);
                }
            }
        }
        for (series_uid, _) in self.series_of_study(study)? {
            pending.delete(CF_SERIES, key2(study, &series_uid));
            // the same series UID may be in another study too: that place stays
            if let Some(v) = self.engine.get(CF_SERIES_INDEX, series_uid.as_bytes())? {
                match without_place(&v, study.as_bytes()) {
                    Some(rest) => pending.put_raw(CF_SERIES_INDEX, series_uid.as_bytes(), rest),
                    None => pending.delete(CF_SERIES_INDEX, series_uid.as_bytes()),
                }
            }
        }
        // every secondary-index entry of the study: its own values and any differing
        // value one of its instances carried
        let suffix = {
            let mut s = vec![0u8];
            s.extend_from_slice(study.as_bytes());
            s
        };
        for cf in [CF_IDX_PATIENT_ID, CF_IDX_STUDY_DATE, CF_IDX_ACCESSION] {
            self.engine.scan(cf, b"", &mut |key, _| {
                if key.ends_with(&suffix) {
                    pending.delete(cf, key);
                }
                Ok(true)
            })?;
        }
        for pack in &t.packs {
            if let Some(id) = ObjectId::from_hex(pack) {
                pending.delete(CF_PACKS, id.as_bytes());
            }
        }
        // the study counted once for its own patient and once for each other identity
        let patient_ids = std::iter::once(&record.patient_id)
            .chain(record.other_patients.iter().map(|o| &o.patient_id));
        for patient_id in patient_ids {
            if let Some(mut patient) =
                self.get::<PatientRecord>(CF_PATIENTS, patient_id.as_bytes())?
            {
                patient.studies = patient.studies.saturating_sub(1);
                if patient.studies == 0 {
                    pending.delete(CF_PATIENTS, patient_id.as_bytes());
                } else {
                    pending.put_raw(CF_PATIENTS, patient_id.as_bytes(), encode(&patient));
                }
            }
        }
        if let Some(at) = self.last_access(study)? {
            pending.delete(CF_ACCESS_QUEUE, queue_key(at, study));
        }
        pending.delete(CF_STUDY_ACCESS, study.as_bytes());
        pending.delete(CF_STUDIES, study.as_bytes());
        pending.put_raw(CF_TOMBSTONES, t.key(), encode(&t));
        pending.write(true)?;
        Ok(t)
    }

    fn tombstone_instances(
        &self,
        given: &Tombstone,
        instances: &[(String, String)],
    ) -> Result<Tombstone, IndexError> {
        let _writer = self.writer()?;
        let study = &given.study_uid;
        let mut record = self.study_to_delete(study)?;
        let mut pending = self.pending();
        let mut t = Tombstone {
            objects: Vec::new(),
            partial: true,
            ..given.clone()
        };
        let all = self.instances_of_study(study)?;
        let named = |e: &InstanceEntry| {
            instances
                .iter()
                .any(|(series, sop)| *series == e.series_uid && *sop == e.sop_instance_uid)
        };
        let (doomed, kept): (Vec<&InstanceEntry>, Vec<&InstanceEntry>) =
            all.iter().partition(|e| named(e));
        if doomed.is_empty() {
            return Ok(t);
        }
        // every pack of the study goes: the objects kept must have their hot copy
        let mut kept_records = Vec::new();
        for e in &kept {
            for v in &e.record.versions {
                let Some(id) = ObjectId::from_hex(&v.id) else {
                    continue;
                };
                let Some(mut r) = self.get::<ObjectRecord>(CF_OBJECTS, id.as_bytes())? else {
                    continue;
                };
                if r.tier != Tier::Hot {
                    return Err(IndexError::Storage(format!(
                        "object {} of study {study} is in the cold tier only: recall the study before deleting some of its instances",
                        v.id
                    )));
                }
                for c in std::mem::take(&mut r.cold) {
                    if !t.packs.contains(&c.pack) {
                        t.packs.push(c.pack);
                    }
                }
                kept_records.push((id, r));
            }
        }
        for (id, r) in kept_records {
            pending.put(CF_OBJECTS, id.as_bytes().to_vec(), &r);
        }
        let mut series_left: HashMap<String, SeriesRecord> = HashMap::new();
        for e in &doomed {
            t.objects.extend(e.record.versions.iter().map(|v| {
                (
                    e.series_uid.clone(),
                    e.sop_instance_uid.clone(),
                    v.id.clone(),
                )
            }));
            pending.delete(
                CF_INSTANCES,
                key3(&e.study_uid, &e.series_uid, &e.sop_instance_uid),
            );
            pending.delete(
                CF_REJECTED,
                rejected_key(study, &e.series_uid, &e.sop_instance_uid),
            );
            if let Some(v) = self
                .engine
                .get(CF_SOP_INDEX, e.sop_instance_uid.as_bytes())?
            {
                match without_place(&v, &key2(study, &e.series_uid)) {
                    Some(rest) => {
                        pending.put_raw(CF_SOP_INDEX, e.sop_instance_uid.as_bytes(), rest)
                    }
                    None => pending.delete(CF_SOP_INDEX, e.sop_instance_uid.as_bytes()),
                }
            }
            let mut bytes = 0;
            for v in &e.record.versions {
                bytes += v.size;
                if let Some(id) = ObjectId::from_hex(&v.id) {
                    let record = self.get::<ObjectRecord>(CF_OBJECTS, id.as_bytes())?;
                    for c in record.iter().flat_map(|r| &r.cold) {
                        if !t.packs.contains(&c.pack) {
                            t.packs.push(c.pack.clone());
                        }
                    }
                    forget_object(&mut pending, &id, record.as_ref(), study);
                }
            }
            let series = match series_left.remove(&e.series_uid) {
                Some(s) => Some(s),
                None => self.get::<SeriesRecord>(CF_SERIES, &key2(study, &e.series_uid))?,
            };
            if let Some(mut s) = series {
                s.instances = s.instances.saturating_sub(1);
                s.bytes = s.bytes.saturating_sub(bytes);
                series_left.insert(e.series_uid.clone(), s);
            }
            record.instances = record.instances.saturating_sub(1);
            record.objects = record
                .objects
                .saturating_sub(e.record.versions.len() as u64);
            record.bytes = record.bytes.saturating_sub(bytes);
        }
        for (series_uid, s) in series_left {
            if s.instances > 0 {
                pending.put(CF_SERIES, key2(study, &series_uid), &s);
                continue;
            }
            // a series left empty goes, and with it its place in the study
            pending.delete(CF_SERIES, key2(study, &series_uid));
            if let Some(v) = self.engine.get(CF_SERIES_INDEX, series_uid.as_bytes())? {
                match without_place(&v, study.as_bytes()) {
                    Some(rest) => pending.put_raw(CF_SERIES_INDEX, series_uid.as_bytes(), rest),
                    None => pending.delete(CF_SERIES_INDEX, series_uid.as_bytes()),
                }
            }
            record.series = record.series.saturating_sub(1);
            for other in &mut record.other_patients {
                other.series.retain(|s| *s != series_uid);
            }
            record.other_patients.retain(|o| !o.series.is_empty());
        }
        // ModalitiesInStudy: of the series left
        let mut modalities: Vec<String> = Vec::new();
        for (series_uid, s) in self.series_of_study(study)? {
            let gone = pending
                .get::<SeriesRecord>(CF_SERIES, &key2(study, &series_uid))?
                .is_none();
            if !gone && !s.modality.is_empty() && !modalities.contains(&s.modality) {
                modalities.push(s.modality);
            }
        }
        modalities.sort();
        record.modalities = modalities;
        for pack in &t.packs {
            if let Some(id) = ObjectId::from_hex(pack) {
                pending.delete(CF_PACKS, id.as_bytes());
            }
        }
        pending.put(CF_STUDIES, study.as_bytes().to_vec(), &record);
        pending.put_raw(CF_TOMBSTONES, t.key(), encode(&t));
        pending.write(true)?;
        Ok(t)
    }

    fn tombstones(&self) -> Result<Vec<Tombstone>, IndexError> {
        Ok(self
            .scan_records::<Tombstone>(CF_TOMBSTONES, b"")?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    fn restore_tombstone(&self, t: &Tombstone, live: &[ObjectId]) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut batch = Batch::default();
        for (_, _, id) in &t.objects {
            if let Some(id) = ObjectId::from_hex(id).filter(|id| !live.contains(id)) {
                batch.put(CF_DELETED_OBJECTS, id.as_bytes(), t.study_uid.as_bytes());
            }
        }
        batch.put(CF_TOMBSTONES, t.key(), encode(t));
        self.engine.write(batch, true)
    }

    fn deleted_object(&self, id: &ObjectId) -> Result<Option<String>, IndexError> {
        Ok(self
            .engine
            .get(CF_DELETED_OBJECTS, id.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn set_holds(&self, study_uid: &str, holds: &[HoldRecord]) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut batch = Batch::default();
        if holds.is_empty() {
            batch.delete(CF_HOLDS, study_uid.as_bytes());
        } else {
            batch.put(CF_HOLDS, study_uid.as_bytes(), encode(&holds));
        }
        self.engine.write(batch, true)
    }

    fn set_patient_links(
        &self,
        links: &[(String, PatientLink)],
        message: Option<(&str, &str)>,
    ) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut batch = Batch::default();
        for (stored, link) in links {
            if let Some(old) = self.get::<PatientLink>(CF_PATIENT_LINKS, stored.as_bytes())? {
                batch.delete(CF_PATIENT_ALIASES, alias_key(&old.patient_id, stored));
            }
            batch.put(CF_PATIENT_LINKS, stored.as_bytes(), encode(link));
            batch.put(
                CF_PATIENT_ALIASES,
                alias_key(&link.patient_id, stored),
                Vec::new(),
            );
        }
        if let Some((control_id, outcome)) = message {
            batch.put(
                CF_HL7_MESSAGES,
                control_id.as_bytes(),
                outcome.as_bytes().to_vec(),
            );
        }
        self.engine.write(batch, true)?;
        if !links.is_empty() {
            self.links_present.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn patient_link(&self, patient_id: &str) -> Result<Option<PatientLink>, IndexError> {
        if !self.links_present.load(Ordering::Acquire) {
            return Ok(None);
        }
        self.get(CF_PATIENT_LINKS, patient_id.as_bytes())
    }

    fn patient_aliases(&self, current: &str) -> Result<Vec<String>, IndexError> {
        if !self.links_present.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let prefix = alias_key(current, "");
        let mut out = Vec::new();
        self.scan_prefix(CF_PATIENT_ALIASES, &prefix, &mut |k, _| {
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            Ok(true)
        })?;
        Ok(out)
    }

    fn patient_links(&self) -> Result<Vec<(String, PatientLink)>, IndexError> {
        Ok(self
            .scan_records::<PatientLink>(CF_PATIENT_LINKS, b"")?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    fn set_patient_issuers(
        &self,
        issuers: &[(String, String, String)],
    ) -> Result<usize, IndexError> {
        let _writer = self.writer()?;
        let mut p = self.pending();
        let mut changed = 0;
        for (study_uid, patient_id, issuer) in issuers {
            let Some(mut study) = p.get::<StudyRecord>(CF_STUDIES, study_uid.as_bytes())? else {
                continue;
            };
            let mut touched = false;
            if &study.patient_id == patient_id && study.issuer_of_patient_id.is_empty() {
                study.issuer_of_patient_id = issuer.clone();
                touched = true;
            }
            for other in &mut study.other_patients {
                if &other.patient_id == patient_id && other.issuer_of_patient_id.is_empty() {
                    other.issuer_of_patient_id = issuer.clone();
                    touched = true;
                }
            }
            if touched {
                changed += 1;
                p.put(CF_STUDIES, study_uid.as_bytes().to_vec(), &study);
            }
        }
        p.write(true)?;
        Ok(changed)
    }

    fn archive_id(&self) -> Result<Option<String>, IndexError> {
        Ok(self
            .engine
            .get(CF_META, ARCHIVE_ID_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn set_archive_id(&self, id: &str) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut batch = Batch::default();
        batch.put(CF_META, ARCHIVE_ID_KEY, id.as_bytes().to_vec());
        self.engine.write(batch, true)
    }

    fn set_node(&self, node: &NodeRecord) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut batch = Batch::default();
        batch.put(CF_NODES, node.node_id.as_bytes(), encode(node));
        self.engine.write(batch, false)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, IndexError> {
        Ok(self
            .scan_records::<NodeRecord>(CF_NODES, b"")?
            .into_iter()
            .map(|(_, n)| n)
            .collect())
    }

    fn migrated(&self, step: &str) -> Result<bool, IndexError> {
        Ok(self
            .engine
            .get(CF_META, migration_key(step).as_bytes())?
            .is_some())
    }

    fn mark_migrated(&self, step: &str) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut batch = Batch::default();
        batch.put(
            CF_META,
            migration_key(step).into_bytes(),
            unix_ms_now().to_le_bytes().to_vec(),
        );
        self.engine.write(batch, true)
    }

    fn reject_instances(
        &self,
        instances: &[(String, String, String)],
        rejection: &RejectionRecord,
    ) -> Result<(), IndexError> {
        let _writer = self.writer()?;
        let mut batch = Batch::default();
        for (study, series, sop) in instances {
            batch.put(
                CF_REJECTED,
                rejected_key(study, series, sop),
                encode(rejection),
            );
        }
        self.engine.write(batch, true)?;
        self.rejections_present.store(true, Ordering::Release);
        Ok(())
    }

    fn any_patient_links(&self) -> Result<bool, IndexError> {
        Ok(self.links_present.load(Ordering::Acquire) && self.holds_any(CF_PATIENT_LINKS)?)
    }

    fn any_rejections(&self) -> Result<bool, IndexError> {
        Ok(self.rejections_present.load(Ordering::Acquire) && self.holds_any(CF_REJECTED)?)
    }

    fn rejections_of_study(
        &self,
        study_uid: &str,
    ) -> Result<Vec<(String, String, RejectionRecord)>, IndexError> {
        if !self.rejections_present.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let prefix = rejected_key(study_uid, "", "");
        let prefix = &prefix[..prefix.len() - 1];
        Ok(self
            .scan_records::<RejectionRecord>(CF_REJECTED, prefix)?
            .into_iter()
            .filter_map(|(k, r)| {
                let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let (series, sop) = key.split_once('\0')?;
                Some((series.to_string(), sop.to_string(), r))
            })
            .collect())
    }

    fn rejections(&self) -> Result<Vec<(String, String, String, RejectionRecord)>, IndexError> {
        Ok(self
            .scan_records::<RejectionRecord>(CF_REJECTED, b"")?
            .into_iter()
            .filter_map(|(k, r)| {
                let key = String::from_utf8_lossy(&k).into_owned();
                let mut parts = key.splitn(3, '\0');
                Some((
                    parts.next()?.to_string(),
                    parts.next()?.to_string(),
                    parts.next()?.to_string(),
                    r,
                ))
            })
            .collect())
    }

    fn hl7_message(&self, control_id: &str) -> Result<Option<String>, IndexError> {
        Ok(self
            .engine
            .get(CF_HL7_MESSAGES, control_id.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn holds(&self, study_uid: &str) -> Result<Vec<HoldRecord>, IndexError> {
        /// A list of holds; records written before several holds per study were one.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Several(Vec<HoldRecord>),
            One(HoldRecord),
        }
        Ok(match self.get::<Stored>(CF_HOLDS, study_uid.as_bytes())? {
            None => Vec::new(),
            Some(Stored::Several(holds)) => holds,
            Some(Stored::One(hold)) => vec![hold],
        })
    }
}

/// Key of the archive's id in `meta` (the one its cold tier's marker names).
const ARCHIVE_ID_KEY: &[u8] = b"archive_id";

/// Key of the running [`TierTotals`] in `meta`.
const TOTALS_KEY: &[u8] = b"tier_totals";

/// The stored running totals, if this index has them yet.
fn stored_totals<E: KvEngine>(engine: &E) -> Result<Option<TierTotals>, IndexError> {
    engine
        .get(CF_META, TOTALS_KEY)?
        .map(|v| decode_at(CF_META, TOTALS_KEY, &v))
        .transpose()
}

/// A deleted object leaves the index: its record and metadata go, it is marked deleted
/// (with its study), and the node whose hot disk holds its file is asked to remove it
/// (CF `purges`, [`Placement::purge_queue`]): the deleting node removes its own files at
/// once, every node's purge pass the rest.
fn forget_object<E: KvEngine>(
    pending: &mut PendingWrites<'_, E>,
    id: &ObjectId,
    record: Option<&ObjectRecord>,
    study: &str,
) {
    if let Some(node) = record.and_then(|r| r.hot_node.as_deref()) {
        pending.put_raw(CF_PURGES, replication_key(node, id), study.as_bytes());
    }
    pending.delete(CF_OBJECTS, id.as_bytes());
    pending.delete(CF_INSTANCE_METADATA, id.as_bytes());
    pending.put_raw(CF_DELETED_OBJECTS, id.as_bytes(), study.as_bytes());
}

/// Key of an object in a node's replication queue: node id, 0, object id.
fn replication_key(node: &str, id: &ObjectId) -> Vec<u8> {
    let mut key = node.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Adds one new object to the pending writes: the object record, its instance (new or a
/// new version), and the series, study and patient records with their counters.
fn apply_new_object<E: KvEngine>(
    p: &mut PendingWrites<'_, E>,
    obj: &NewObject,
    tier: Tier,
    cold: Vec<ColdCopy>,
) -> Result<CommitOutcome, IndexError> {
    let a = &obj.attrs;
    let version = VersionRef {
        id: obj.id.to_hex(),
        size: obj.size,
        received_at_ms: obj.provenance.received_at_ms,
        dataset: obj.dataset.clone(),
    };
    p.put(
        CF_OBJECTS,
        obj.id.as_bytes().to_vec(),
        &ObjectRecord {
            size: obj.size,
            tier,
            cold,
            study_uid: a.study_uid.clone(),
            series_uid: a.series_uid.clone(),
            sop_instance_uid: a.sop_instance_uid.clone(),
            sop_class_uid: a.sop_class_uid.clone(),
            transfer_syntax_uid: a.transfer_syntax_uid.clone(),
            provenance: obj.provenance.clone(),
            hot_node: (tier == Tier::Hot && !obj.provenance.node.is_empty())
                .then(|| obj.provenance.node.clone()),
            replica: false,
        },
    );
    if obj.replicate && tier == Tier::Hot {
        p.put(
            CF_REPLICATION,
            replication_key(&obj.provenance.node, &obj.id),
            &obj.provenance.received_at_ms,
        );
    }
    if let Some(m) = &obj.metadata {
        p.put_raw(CF_INSTANCE_METADATA, obj.id.as_bytes().to_vec(), m.clone());
    }

    // instance
    let instance_key = key3(&a.study_uid, &a.series_uid, &a.sop_instance_uid);
    let existing: Option<InstanceRecord> = p.get(CF_INSTANCES, &instance_key)?;
    // a new version that is served now: what C-FIND answers follows it (the series and
    // study records take its values), so that what is queried is what is retrieved
    let mut served_anew = false;
    let (outcome, instance) = match existing {
        Some(mut rec) => {
            // Keep versions ordered by receive time; the newest is served.
            let at = rec
                .versions
                .iter()
                .position(|v| v.received_at_ms > version.received_at_ms)
                .unwrap_or(rec.versions.len());
            let newest = at == rec.versions.len();
            rec.versions.insert(at, version);
            if newest {
                rec.transfer_syntax_uid = a.transfer_syntax_uid.clone();
                rec.sop_class_uid = a.sop_class_uid.clone();
                rec.instance_number = a.instance_number.clone();
                served_anew = true;
            }
            (CommitOutcome::NewVersion, rec)
        }
        None => (
            CommitOutcome::Stored,
            InstanceRecord {
                sop_class_uid: a.sop_class_uid.clone(),
                instance_number: a.instance_number.clone(),
                transfer_syntax_uid: a.transfer_syntax_uid.clone(),
                versions: vec![version],
            },
        ),
    };
    p.put(CF_INSTANCES, instance_key, &instance);
    let sop_key = a.sop_instance_uid.as_bytes().to_vec();
    let places = with_place(
        p.get_raw(CF_SOP_INDEX, &sop_key)?.as_deref(),
        &key2(&a.study_uid, &a.series_uid),
    );
    p.put_raw(CF_SOP_INDEX, sop_key, places);
    let new_instance = outcome == CommitOutcome::Stored;

    // series
    let series_key = key2(&a.study_uid, &a.series_uid);
    let mut new_series = false;
    let mut series: SeriesRecord = match p.get(CF_SERIES, &series_key)? {
        Some(s) => s,
        None => {
            new_series = true;
            SeriesRecord {
                study_uid: a.study_uid.clone(),
                modality: a.modality.clone(),
                series_number: a.series_number.clone(),
                series_description: a.series_description.clone(),
                instances: 0,
                bytes: 0,
            }
        }
    };
    if served_anew {
        series.modality = a.modality.clone();
        series.series_number = a.series_number.clone();
        series.series_description = a.series_description.clone();
    }
    series.instances += new_instance as u64;
    series.bytes += obj.size;
    p.put(CF_SERIES, series_key, &series);
    let series_key = a.series_uid.as_bytes().to_vec();
    let places = with_place(
        p.get_raw(CF_SERIES_INDEX, &series_key)?.as_deref(),
        a.study_uid.as_bytes(),
    );
    p.put_raw(CF_SERIES_INDEX, series_key, places);

    // study
    let mut new_study = false;
    let mut study: StudyRecord = match p.get(CF_STUDIES, a.study_uid.as_bytes())? {
        Some(s) => s,
        None => {
            new_study = true;
            StudyRecord {
                patient_id: a.patient_id.clone(),
                issuer_of_patient_id: a.issuer_of_patient_id.clone(),
                patient_name: a.patient_name.clone(),
                patient_birth_date: a.patient_birth_date.clone(),
                patient_sex: a.patient_sex.clone(),
                study_date: a.study_date.clone(),
                study_time: a.study_time.clone(),
                accession_number: a.accession_number.clone(),
                study_id: a.study_id.clone(),
                study_description: a.study_description.clone(),
                referring_physician_name: a.referring_physician_name.clone(),
                modalities: Vec::new(),
                series: 0,
                instances: 0,
                objects: 0,
                bytes: 0,
                other_patients: Vec::new(),
            }
        }
    };
    // A patient conflict: the instance names another patient than the study was filed
    // under: another PatientID, or the same one from another known issuer (an unknown
    // issuer is no other patient, and a known one is learnt). A new series is kept under
    // the identity it was sent with (findable by it) and listed in the study record; a
    // series stays with the identity of its first instance. Ingest logs and audits every
    // conflicting object.
    let conflict = !new_study
        && (a.patient_id != study.patient_id
            || !issuers_agree(&a.issuer_of_patient_id, &study.issuer_of_patient_id));
    if !conflict && study.issuer_of_patient_id.is_empty() {
        study.issuer_of_patient_id = a.issuer_of_patient_id.clone();
    }
    let mut new_identity = false;
    if conflict && new_series {
        match study.other_patients.iter_mut().find(|o| {
            o.patient_id == a.patient_id
                && issuers_agree(&o.issuer_of_patient_id, &a.issuer_of_patient_id)
        }) {
            Some(other) => {
                other.series.push(a.series_uid.clone());
                if other.issuer_of_patient_id.is_empty() {
                    other.issuer_of_patient_id = a.issuer_of_patient_id.clone();
                }
            }
            None => {
                new_identity = true;
                study.other_patients.push(OtherPatient {
                    patient_id: a.patient_id.clone(),
                    issuer_of_patient_id: a.issuer_of_patient_id.clone(),
                    patient_name: a.patient_name.clone(),
                    patient_birth_date: a.patient_birth_date.clone(),
                    patient_sex: a.patient_sex.clone(),
                    series: vec![a.series_uid.clone()],
                    first_seen_ms: obj.provenance.received_at_ms,
                });
            }
        }
    }
    if served_anew && !conflict {
        study.patient_name = a.patient_name.clone();
        study.patient_birth_date = a.patient_birth_date.clone();
        study.patient_sex = a.patient_sex.clone();
    }
    if served_anew {
        study.study_date = a.study_date.clone();
        study.study_time = a.study_time.clone();
        study.accession_number = a.accession_number.clone();
        study.study_id = a.study_id.clone();
        study.study_description = a.study_description.clone();
        study.referring_physician_name = a.referring_physician_name.clone();
    }
    if !a.modality.is_empty() && !study.modalities.contains(&a.modality) {
        study.modalities.push(a.modality.clone());
        study.modalities.sort();
    }
    study.series += new_series as u64;
    study.instances += new_instance as u64;
    study.objects += 1;
    study.bytes += obj.size;
    p.put(CF_STUDIES, a.study_uid.as_bytes().to_vec(), &study);
    p.touch_study(
        &a.study_uid,
        obj.provenance.received_at_ms.max(unix_ms_now()),
    )?;
    // Secondary indexes: the study's own values, plus any differing value an instance
    // carries (a query on either finds the study).
    for (cf, value) in [
        (CF_IDX_PATIENT_ID, &a.patient_id),
        (CF_IDX_STUDY_DATE, &a.study_date),
        (CF_IDX_ACCESSION, &a.accession_number),
    ] {
        p.put_raw(cf, key2(value, &a.study_uid), Vec::new());
    }

    // patient
    let mut patient: PatientRecord =
        p.get(CF_PATIENTS, a.patient_id.as_bytes())?
            .unwrap_or(PatientRecord {
                patient_name: a.patient_name.clone(),
                patient_birth_date: a.patient_birth_date.clone(),
                patient_sex: a.patient_sex.clone(),
                studies: 0,
            });
    patient.studies += (new_study || new_identity) as u64;
    p.put(CF_PATIENTS, a.patient_id.as_bytes().to_vec(), &patient);
    Ok(outcome)
}
