//! `RocksIndex`: the [`Index`] over RocksDB. The only module that imports `rocksdb`.
//!
//! ## Column families and keys (`\0` separates UIDs; UIDs never contain it)
//! | CF | key | value |
//! |---|---|---|
//! | `meta` | `schema` | index schema version (u32 LE) |
//! | `objects` | 32-byte object id | `ObjectRecord` |
//! | `instances` | `study\0series\0sop` | `InstanceRecord` |
//! | `sop_index` | `sop` | `study\0series` |
//! | `series` | `study\0series` | `SeriesRecord` |
//! | `series_index` | `series` | `study` |
//! | `studies` | `study` | `StudyRecord` |
//! | `patients` | `patient_id` | `PatientRecord` |
//! | `idx_patient_id`, `idx_study_date`, `idx_accession` | `value\0study` | empty |
//! | `study_access` | `study` | last store or retrieval, ms since the epoch (u64 LE) |
//! | `access_queue` | last access (u64 BE) `study` | empty: the tiering queue, oldest first |
//! | `packs` | 32-byte pack id | `PackRecord` |
//! | `tombstones` | `study` | `Tombstone` (a deleted study: UIDs, ids, who, why, when) |
//! | `deleted_objects` | 32-byte object id | the study it was deleted with |
//! | `holds` | `study` | `HoldRecord` (legal hold) |
//! | `fixity` | 32-byte object id | `FixityRecord` (the scrubber's last check) |

use super::records::{decode, encode};
use super::{
    ColdCopy, CommitOutcome, FixityRecord, HoldRecord, Index, IndexError, InstanceEntry,
    InstanceRecord, NewObject, ObjectRecord, PackRecord, PackedObject, PatientRecord, SecondaryKey,
    SeriesRecord, StudyRecord, Tier, Tombstone, VersionRef,
};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use strata_tiers::ObjectId;

const SCHEMA_VERSION: u32 = 1;

const CF_META: &str = "meta";
const CF_OBJECTS: &str = "objects";
const CF_INSTANCES: &str = "instances";
const CF_SOP_INDEX: &str = "sop_index";
const CF_SERIES: &str = "series";
const CF_SERIES_INDEX: &str = "series_index";
const CF_STUDIES: &str = "studies";
const CF_PATIENTS: &str = "patients";
const CF_IDX_PATIENT_ID: &str = "idx_patient_id";
const CF_IDX_STUDY_DATE: &str = "idx_study_date";
const CF_IDX_ACCESSION: &str = "idx_accession";
const CF_STUDY_ACCESS: &str = "study_access";
const CF_ACCESS_QUEUE: &str = "access_queue";
const CF_PACKS: &str = "packs";
const CF_TOMBSTONES: &str = "tombstones";
const CF_DELETED_OBJECTS: &str = "deleted_objects";
const CF_HOLDS: &str = "holds";
const CF_FIXITY: &str = "fixity";

const ALL_CFS: [&str; 18] = [
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
];

/// Called with each `(key, value)` of a scan; returns whether to go on.
type EntryVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, IndexError> + 'a;

pub struct RocksIndex {
    db: DB,
    secondary: bool,
    /// Keeps a secondary's private directory alive as long as the handle.
    _secondary_dir: Option<tempfile::TempDir>,
}

fn storage(e: rocksdb::Error) -> IndexError {
    IndexError::Storage(e.to_string())
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RocksIndex {
    fn options() -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_open_files(512);
        opts
    }

    /// Opens (creating if needed) the index for writing. RocksDB's own LOCK file makes a
    /// second writer fail; the archive lock above it gives the friendlier message.
    pub fn open_primary(path: &Path) -> Result<Self, IndexError> {
        let opts = Self::options();
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
            if e.to_string().contains("lock") {
                IndexError::Locked {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                }
            } else {
                storage(e)
            }
        })?;
        let index = RocksIndex {
            db,
            secondary: false,
            _secondary_dir: None,
        };
        index.check_schema(true)?;
        Ok(index)
    }

    /// Opens the index as a read-only RocksDB secondary; works while a primary runs.
    pub fn open_secondary(path: &Path) -> Result<Self, IndexError> {
        if !path.join("CURRENT").exists() {
            return Err(IndexError::Storage(format!(
                "no index at {} (has this archive ever been written to?)",
                path.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-secondary-")
            .tempdir()
            .map_err(|e| {
                IndexError::Storage(format!("cannot create a secondary directory: {e}"))
            })?;
        let mut opts = Self::options();
        opts.set_max_open_files(-1);
        let db = DB::open_cf_as_secondary(&opts, path, dir.path(), ALL_CFS).map_err(storage)?;
        let index = RocksIndex {
            db,
            secondary: true,
            _secondary_dir: Some(dir),
        };
        index.check_schema(false)?;
        Ok(index)
    }

    fn check_schema(&self, may_initialise: bool) -> Result<(), IndexError> {
        let cf = self.cf(CF_META);
        match self.db.get_cf(cf, b"schema").map_err(storage)? {
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
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                self.db
                    .put_cf_opt(cf, b"schema", SCHEMA_VERSION.to_le_bytes(), &wo)
                    .map_err(storage)
            }
            None => Ok(()),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are fixed at open")
    }

    fn get<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, IndexError> {
        match self.db.get_pinned_cf(self.cf(cf), key).map_err(storage)? {
            None => Ok(None),
            Some(v) => decode(&v).map(Some).map_err(|reason| IndexError::Corrupt {
                cf,
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            }),
        }
    }

    /// Visits `(key, value)` of every entry whose key starts with `prefix`.
    fn scan_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
        visit: &mut EntryVisitor<'_>,
    ) -> Result<(), IndexError> {
        let iter = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(storage)?;
            if !k.starts_with(prefix) {
                break;
            }
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn scan_records<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, IndexError> {
        let mut out = Vec::new();
        self.scan_prefix(cf, prefix, &mut |k, v| {
            let rec = decode(v).map_err(|reason| IndexError::Corrupt {
                cf,
                key: String::from_utf8_lossy(k).into_owned(),
                reason,
            })?;
            out.push((k.to_vec(), rec));
            Ok(true)
        })?;
        Ok(out)
    }
}

/// Read-modify-write cache for one commit: records read from the DB or written earlier in
/// the same batch, flushed into one `WriteBatch` at the end.
struct PendingWrites<'a> {
    index: &'a RocksIndex,
    /// `None` is a pending delete.
    values: HashMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> PendingWrites<'a> {
    fn get<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, IndexError> {
        match self.values.get(&(cf, key.to_vec())) {
            Some(Some(v)) => decode(v).map(Some).map_err(|reason| IndexError::Corrupt {
                cf,
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            }),
            Some(None) => Ok(None),
            None => self.index.get(cf, key),
        }
    }

    fn get_raw(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        match self.values.get(&(cf, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self
                .index
                .db
                .get_cf(self.index.cf(cf), key)
                .map_err(storage),
        }
    }

    fn put<T: Serialize>(&mut self, cf: &'static str, key: Vec<u8>, record: &T) {
        self.values.insert((cf, key), Some(encode(record)));
    }

    fn put_raw(&mut self, cf: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.values.insert((cf, key), Some(value));
    }

    fn delete(&mut self, cf: &'static str, key: Vec<u8>) {
        self.values.insert((cf, key), None);
    }

    /// Moves a study's access time (and its access-queue entry) to `at_ms`; an older
    /// time never replaces a newer one.
    fn touch_study(&mut self, study_uid: &str, at_ms: u64) -> Result<(), IndexError> {
        let previous = self
            .get_raw(CF_STUDY_ACCESS, study_uid.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_le_bytes);
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

    fn into_batch(self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for ((cf, key), value) in self.values {
            match value {
                Some(value) => batch.put_cf(self.index.cf(cf), key, value),
                None => batch.delete_cf(self.index.cf(cf), key),
            }
        }
        batch
    }

    fn write_synced(self) -> Result<(), IndexError> {
        let db = &self.index.db;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(self.into_batch(), &wo).map_err(storage)
    }
}

impl Index for RocksIndex {
    fn commit(&self, objects: &[NewObject]) -> Result<Vec<CommitOutcome>, IndexError> {
        let mut pending = PendingWrites {
            index: self,
            values: HashMap::new(),
        };
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
                    pending.put(CF_OBJECTS, key, &existing);
                }
                outcomes.push(CommitOutcome::AlreadyPresent);
                continue;
            }
            // stored again after its study was deleted: it lives again, and a later
            // reindex or recovery must not take it for a deletion to finish
            pending.delete(CF_DELETED_OBJECTS, obj.id.as_bytes().to_vec());
            outcomes.push(apply_new_object(&mut pending, obj, Tier::Hot, Vec::new())?);
        }
        pending.write_synced()?;
        Ok(outcomes)
    }

    fn has_object(&self, id: &ObjectId) -> Result<bool, IndexError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_OBJECTS), id.as_bytes())
            .map_err(storage)?
            .is_some())
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

    fn for_each_study(
        &self,
        visit: &mut dyn FnMut(&str, StudyRecord) -> bool,
    ) -> Result<(), IndexError> {
        self.scan_prefix(CF_STUDIES, b"", &mut |k, v| {
            let uid = String::from_utf8_lossy(k);
            let rec = decode(v).map_err(|reason| IndexError::Corrupt {
                cf: CF_STUDIES,
                key: uid.to_string(),
                reason,
            })?;
            Ok(visit(&uid, rec))
        })
    }

    fn study(&self, study_uid: &str) -> Result<Option<StudyRecord>, IndexError> {
        self.get(CF_STUDIES, study_uid.as_bytes())
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

    fn series(&self, series_uid: &str) -> Result<Option<(String, SeriesRecord)>, IndexError> {
        let Some(study) = self
            .db
            .get_cf(self.cf(CF_SERIES_INDEX), series_uid)
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let study = String::from_utf8_lossy(&study).into_owned();
        Ok(self
            .get(CF_SERIES, &key2(&study, series_uid))?
            .map(|r| (study, r)))
    }

    fn instance(&self, sop_instance_uid: &str) -> Result<Option<InstanceEntry>, IndexError> {
        let Some(place) = self
            .db
            .get_cf(self.cf(CF_SOP_INDEX), sop_instance_uid)
            .map_err(storage)?
        else {
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
        let iter = self.db.iterator_cf(
            self.cf(CF_IDX_STUDY_DATE),
            IteratorMode::From(from.as_bytes(), Direction::Forward),
        );
        for item in iter {
            let (k, _) = item.map_err(storage)?;
            let Some(sep) = k.iter().position(|&b| b == 0) else {
                continue;
            };
            let date = &k[..sep];
            if !to.is_empty() && date > to.as_bytes() {
                break;
            }
            if !date.is_empty() {
                out.push(String::from_utf8_lossy(&k[sep + 1..]).into_owned());
            }
        }
        Ok(out)
    }

    fn record_access(&self, study_uids: &[String], at_ms: u64) -> Result<(), IndexError> {
        let mut pending = PendingWrites {
            index: self,
            values: HashMap::new(),
        };
        for uid in study_uids {
            pending.touch_study(uid, at_ms)?;
        }
        self.db.write(pending.into_batch()).map_err(storage)
    }

    fn record_pack(
        &self,
        pack_id: &ObjectId,
        pack: &PackRecord,
        members: &[PackedObject],
    ) -> Result<(), IndexError> {
        let mut pending = PendingWrites {
            index: self,
            values: HashMap::new(),
        };
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
        pending.write_synced()
    }

    fn drop_pack(&self, pack_id: &ObjectId) -> Result<(), IndexError> {
        let hex = pack_id.to_hex();
        let mut pending = PendingWrites {
            index: self,
            values: HashMap::new(),
        };
        let mut changed = Vec::new();
        self.scan_prefix(CF_OBJECTS, b"", &mut |k, v| {
            let mut record: ObjectRecord = decode(v).map_err(|reason| IndexError::Corrupt {
                cf: CF_OBJECTS,
                key: String::from_utf8_lossy(k).into_owned(),
                reason,
            })?;
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
        pending.write_synced()
    }

    fn update_pack(&self, pack_id: &ObjectId, pack: &PackRecord) -> Result<(), IndexError> {
        let mut pending = PendingWrites {
            index: self,
            values: HashMap::new(),
        };
        pending.put(CF_PACKS, pack_id.as_bytes().to_vec(), pack);
        pending.write_synced()
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

    fn set_tier(&self, ids: &[ObjectId], tier: Tier) -> Result<(), IndexError> {
        let mut pending = PendingWrites {
            index: self,
            values: HashMap::new(),
        };
        for id in ids {
            let key = id.as_bytes().to_vec();
            if let Some(mut record) = pending.get::<ObjectRecord>(CF_OBJECTS, &key)? {
                if record.tier != tier {
                    record.tier = tier;
                    pending.put(CF_OBJECTS, key, &record);
                }
            }
        }
        pending.write_synced()
    }

    fn tombstone_study(&self, t: &Tombstone) -> Result<(), IndexError> {
        let study = &t.study_uid;
        let mut batch = WriteBatch::default();
        let Some(record) = self.get::<StudyRecord>(CF_STUDIES, study.as_bytes())? else {
            return Err(IndexError::Storage(format!(
                "no study {study} in the index"
            )));
        };
        for e in self.instances_of_study(study)? {
            batch.delete_cf(
                self.cf(CF_INSTANCES),
                key3(&e.study_uid, &e.series_uid, &e.sop_instance_uid),
            );
            // the SOP index may point at another copy of this SOP in another study
            if self
                .db
                .get_cf(self.cf(CF_SOP_INDEX), &e.sop_instance_uid)
                .map_err(storage)?
                .is_some_and(|v| split_key(&v).first() == Some(study))
            {
                batch.delete_cf(self.cf(CF_SOP_INDEX), &e.sop_instance_uid);
            }
            for v in &e.record.versions {
                if let Some(id) = ObjectId::from_hex(&v.id) {
                    batch.delete_cf(self.cf(CF_OBJECTS), id.as_bytes());
                    batch.put_cf(self.cf(CF_DELETED_OBJECTS), id.as_bytes(), study.as_bytes());
                }
            }
        }
        for (series_uid, _) in self.series_of_study(study)? {
            batch.delete_cf(self.cf(CF_SERIES), key2(study, &series_uid));
            // the series index may point at the same series UID in another study
            if self
                .db
                .get_cf(self.cf(CF_SERIES_INDEX), &series_uid)
                .map_err(storage)?
                .is_some_and(|v| v == study.as_bytes())
            {
                batch.delete_cf(self.cf(CF_SERIES_INDEX), &series_uid);
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
            for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
                let (key, _) = item.map_err(storage)?;
                if key.ends_with(&suffix) {
                    batch.delete_cf(self.cf(cf), &key);
                }
            }
        }
        let _ = &record;
        for pack in &t.packs {
            if let Some(id) = ObjectId::from_hex(pack) {
                batch.delete_cf(self.cf(CF_PACKS), id.as_bytes());
            }
        }
        if let Some(mut patient) =
            self.get::<PatientRecord>(CF_PATIENTS, record.patient_id.as_bytes())?
        {
            patient.studies = patient.studies.saturating_sub(1);
            if patient.studies == 0 {
                batch.delete_cf(self.cf(CF_PATIENTS), record.patient_id.as_bytes());
            } else {
                batch.put_cf(
                    self.cf(CF_PATIENTS),
                    record.patient_id.as_bytes(),
                    encode(&patient),
                );
            }
        }
        if let Some(at) = self.last_access(study)? {
            batch.delete_cf(self.cf(CF_ACCESS_QUEUE), queue_key(at, study));
        }
        batch.delete_cf(self.cf(CF_STUDY_ACCESS), study.as_bytes());
        batch.delete_cf(self.cf(CF_STUDIES), study.as_bytes());
        batch.put_cf(self.cf(CF_TOMBSTONES), study.as_bytes(), encode(t));
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(storage)
    }

    fn tombstones(&self) -> Result<Vec<Tombstone>, IndexError> {
        Ok(self
            .scan_records::<Tombstone>(CF_TOMBSTONES, b"")?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    fn restore_tombstone(&self, t: &Tombstone, live: &[ObjectId]) -> Result<(), IndexError> {
        let mut batch = WriteBatch::default();
        for (_, _, id) in &t.objects {
            if let Some(id) = ObjectId::from_hex(id).filter(|id| !live.contains(id)) {
                batch.put_cf(
                    self.cf(CF_DELETED_OBJECTS),
                    id.as_bytes(),
                    t.study_uid.as_bytes(),
                );
            }
        }
        batch.put_cf(self.cf(CF_TOMBSTONES), t.study_uid.as_bytes(), encode(t));
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(storage)
    }

    fn deleted_object(&self, id: &ObjectId) -> Result<Option<String>, IndexError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_DELETED_OBJECTS), id.as_bytes())
            .map_err(storage)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn set_hold(&self, study_uid: &str, hold: Option<&HoldRecord>) -> Result<(), IndexError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        match hold {
            Some(h) => self
                .db
                .put_cf_opt(self.cf(CF_HOLDS), study_uid, encode(h), &wo),
            None => self.db.delete_cf_opt(self.cf(CF_HOLDS), study_uid, &wo),
        }
        .map_err(storage)
    }

    fn record_fixity(&self, id: &ObjectId, record: &FixityRecord) -> Result<(), IndexError> {
        self.db
            .put_cf(self.cf(CF_FIXITY), id.as_bytes(), encode(record))
            .map_err(storage)
    }

    fn fixity(&self, id: &ObjectId) -> Result<Option<FixityRecord>, IndexError> {
        self.get(CF_FIXITY, id.as_bytes())
    }

    fn hold(&self, study_uid: &str) -> Result<Option<HoldRecord>, IndexError> {
        self.get(CF_HOLDS, study_uid.as_bytes())
    }

    fn accessed_before(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, IndexError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_ACCESS_QUEUE), IteratorMode::Start)
        {
            let (key, _) = item.map_err(storage)?;
            if key.len() < 8 || out.len() >= limit {
                break;
            }
            let at = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
            if at >= before_ms {
                break;
            }
            out.push((at, String::from_utf8_lossy(&key[8..]).into_owned()));
        }
        Ok(out)
    }

    fn dequeue(&self, at_ms: u64, study_uid: &str) -> Result<(), IndexError> {
        self.db
            .delete_cf(self.cf(CF_ACCESS_QUEUE), queue_key(at_ms, study_uid))
            .map_err(storage)
    }

    fn last_access(&self, study_uid: &str) -> Result<Option<u64>, IndexError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_STUDY_ACCESS), study_uid)
            .map_err(storage)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_le_bytes))
    }

    fn catch_up(&self) -> Result<(), IndexError> {
        if self.secondary {
            self.db.try_catch_up_with_primary().map_err(storage)?;
        }
        Ok(())
    }
}

/// Adds one new object to the pending writes: the object record, its instance (new or a
/// new version), and the series, study and patient records with their counters.
fn apply_new_object(
    p: &mut PendingWrites<'_>,
    obj: &NewObject,
    tier: Tier,
    cold: Vec<ColdCopy>,
) -> Result<CommitOutcome, IndexError> {
    let a = &obj.attrs;
    let version = VersionRef {
        id: obj.id.to_hex(),
        size: obj.size,
        received_at_ms: obj.provenance.received_at_ms,
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
        },
    );

    // instance
    let instance_key = key3(&a.study_uid, &a.series_uid, &a.sop_instance_uid);
    let existing: Option<InstanceRecord> = p.get(CF_INSTANCES, &instance_key)?;
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
    p.put_raw(
        CF_SOP_INDEX,
        a.sop_instance_uid.as_bytes().to_vec(),
        key2(&a.study_uid, &a.series_uid),
    );
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
    series.instances += new_instance as u64;
    series.bytes += obj.size;
    p.put(CF_SERIES, series_key, &series);
    p.put_raw(
        CF_SERIES_INDEX,
        a.series_uid.as_bytes().to_vec(),
        a.study_uid.as_bytes().to_vec(),
    );

    // study
    let mut new_study = false;
    let mut study: StudyRecord = match p.get(CF_STUDIES, a.study_uid.as_bytes())? {
        Some(s) => s,
        None => {
            new_study = true;
            StudyRecord {
                patient_id: a.patient_id.clone(),
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
            }
        }
    };
    if !a.modality.is_empty() && !study.modalities.contains(&a.modality) {
        study.modalities.push(a.modality.clone());
        study.modalities.sort();
    }
    study.series += new_series as u64;
    study.instances += new_instance as u64;
    study.objects += 1;
    study.bytes += obj.size;
    p.put(CF_STUDIES, a.study_uid.as_bytes().to_vec(), &study);
    p.touch_study(&a.study_uid, obj.provenance.received_at_ms.max(now_ms()))?;
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
    patient.studies += new_study as u64;
    p.put(CF_PATIENTS, a.patient_id.as_bytes().to_vec(), &patient);
    Ok(outcome)
}

/// Milliseconds since the Unix epoch, for provenance.
pub fn unix_ms_now() -> u64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::header::InstanceAttrs;
    use crate::index::Provenance;

    fn object(study: &str, series: &str, sop: &str, payload: &[u8], at: u64) -> NewObject {
        NewObject {
            id: ObjectId::of_bytes(payload),
            size: payload.len() as u64,
            attrs: InstanceAttrs {
                patient_id: "P1".into(),
                study_uid: study.into(),
                series_uid: series.into(),
                sop_instance_uid: sop.into(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                modality: "CT".into(),
                study_date: "20240101".into(),
                accession_number: "ACC1".into(),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                ..Default::default()
            },
            provenance: Provenance {
                received_at_ms: at,
                calling_ae: "TEST".into(),
                source: "127.0.0.1:1".into(),
            },
        }
    }

    #[test]
    fn commit_counts_instances_versions_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let index = RocksIndex::open_primary(dir.path()).unwrap();
        let a = object("1.1", "1.1.1", "1.1.1.1", b"a", 1);
        let b = object("1.1", "1.1.1", "1.1.1.2", b"b", 2);
        let a2 = object("1.1", "1.1.1", "1.1.1.1", b"a-changed", 3);
        let outcomes = index.commit(&[a.clone(), b, a.clone()]).unwrap();
        assert_eq!(
            outcomes,
            vec![
                CommitOutcome::Stored,
                CommitOutcome::Stored,
                CommitOutcome::AlreadyPresent
            ]
        );
        assert_eq!(
            index.commit(std::slice::from_ref(&a)).unwrap(),
            vec![CommitOutcome::AlreadyPresent]
        );
        assert_eq!(
            index.commit(std::slice::from_ref(&a2)).unwrap(),
            vec![CommitOutcome::NewVersion]
        );

        let study = index.study("1.1").unwrap().unwrap();
        assert_eq!((study.series, study.instances, study.objects), (1, 2, 3));
        assert_eq!(study.bytes, 1 + 1 + 9);
        let inst = index.instance("1.1.1.1").unwrap().unwrap();
        assert_eq!(inst.record.versions.len(), 2);
        assert_eq!(inst.record.current().unwrap().id, a2.id.to_hex());
        assert_eq!(index.instances_of_study("1.1").unwrap().len(), 2);
        assert_eq!(index.series("1.1.1").unwrap().unwrap().0, "1.1");
        assert_eq!(
            index.studies_by(SecondaryKey::PatientId, "P1").unwrap(),
            vec!["1.1"]
        );
        assert_eq!(
            index
                .studies_by(SecondaryKey::AccessionNumber, "ACC1")
                .unwrap(),
            vec!["1.1"]
        );
        assert!(index
            .studies_by(SecondaryKey::StudyDate, "2024")
            .unwrap()
            .is_empty());
        let mut n = 0;
        index
            .for_each_object(&mut |_, _| {
                n += 1;
                true
            })
            .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn secondary_sees_primary_writes_after_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let primary = RocksIndex::open_primary(dir.path()).unwrap();
        primary
            .commit(&[object("2.1", "2.1.1", "2.1.1.1", b"x", 1)])
            .unwrap();
        let secondary = RocksIndex::open_secondary(dir.path()).unwrap();
        assert!(secondary.study("2.1").unwrap().is_some());
        primary
            .commit(&[object("2.2", "2.2.1", "2.2.1.1", b"y", 2)])
            .unwrap();
        secondary.catch_up().unwrap();
        assert!(secondary.study("2.2").unwrap().is_some());
        assert!(
            RocksIndex::open_primary(dir.path()).is_err(),
            "a second writer must be refused"
        );
    }
}
