//! `RocksIndex`: the index logic of [`KvIndex`] over RocksDB, the embedded default. The
//! only module that imports `rocksdb`.
//!
//! [`RocksEngine`] maps the [`KvEngine`] calls one to one onto RocksDB: a column family
//! per name in [`ALL_CFS`] (the layout is in [`super::kv`]), `get_pinned_cf`, a forward
//! iterator from the start key, and a `WriteBatch` written with `sync` when asked. A
//! primary owns the directory (RocksDB's LOCK file refuses a second one); any number of
//! read-only secondaries may follow it, each with a private directory for its own logs,
//! and pick up the primary's writes on [`Catalog::refresh`](super::Catalog::refresh)
//! (`try_catch_up_with_primary`).

use super::kv::{Batch, BatchOp, EntryVisitor, KvEngine, KvIndex, ALL_CFS};
use super::IndexError;
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use std::path::Path;

/// Milliseconds since the Unix epoch, for provenance (defined in [`super`]).
pub use super::unix_ms_now;

/// A RocksDB database with the index's column families, as a [`KvEngine`].
pub struct RocksEngine {
    db: DB,
    secondary: bool,
    /// Keeps a secondary's private directory alive as long as the handle.
    _secondary_dir: Option<tempfile::TempDir>,
}

/// The index on RocksDB.
pub type RocksIndex = KvIndex<RocksEngine>;

fn storage(e: rocksdb::Error) -> IndexError {
    IndexError::Storage(e.to_string())
}

/// The block cache every column family shares: data blocks, and the index and filter
/// blocks too (charged to it, so that they do not grow outside it with the index).
pub const BLOCK_CACHE_BYTES: usize = 64 << 20;
/// All memtables of all column families together (RocksDB's `db_write_buffer_size`).
pub const MEMTABLE_BYTES: usize = 64 << 20;

impl RocksEngine {
    /// The database's options. Memory stays bounded whatever the index holds: one shared
    /// [`BLOCK_CACHE_BYTES`] block cache (RocksDB would give each column family a 32 MB
    /// cache of its own, and keep index and filter blocks outside any cache, growing
    /// with the data: 402 MiB RSS at 1 M instances) and at most [`MEMTABLE_BYTES`] of
    /// memtables (by default 64 MB per family, two each).
    fn options() -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_open_files(512);
        opts.set_db_write_buffer_size(MEMTABLE_BYTES);
        opts
    }

    /// A column family's options: the shared block cache, index and filter blocks in it
    /// (level 0's pinned), and a bloom filter (10 bits per key) so that a point lookup
    /// (is this object stored?) reads no data block of a file that cannot hold the key.
    ///
    /// Index and filter blocks are partitioned (a two-level index; filters cut in ~4 KiB
    /// partitions, the top level pinned): a point lookup in a file then reads one small
    /// filter partition, not the file's whole filter. At 10 M instances the filters of a
    /// 7.9 GB index outgrow the cache, and whole per-file filters were read from the
    /// disk for every key a commit looks up.
    fn family_options(cache: &rocksdb::Cache) -> Options {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_bloom_filter(10.0, false);
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(MEMTABLE_BYTES / 4);
        opts
    }

    /// Opens (creating if needed) the database for writing. RocksDB's own LOCK file makes
    /// a second writer fail; the archive lock above it gives the friendlier message.
    pub fn open_primary(path: &Path) -> Result<Self, IndexError> {
        Self::open_primary_cached(path, BLOCK_CACHE_BYTES)
    }

    /// [`RocksEngine::open_primary`] with a block cache of `cache_bytes` instead of
    /// [`BLOCK_CACHE_BYTES`]: for a bulk load by a tool that owns the archive for a while
    /// (the scale benchmark's generator, whose random lookups over tens of millions of
    /// keys would otherwise read most index blocks from the disk).
    pub fn open_primary_cached(path: &Path, cache_bytes: usize) -> Result<Self, IndexError> {
        let opts = Self::options();
        let cache = rocksdb::Cache::new_lru_cache(cache_bytes).map_err(storage)?;
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Self::family_options(&cache)));
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
        Ok(RocksEngine {
            db,
            secondary: false,
            _secondary_dir: None,
        })
    }

    /// Opens the database as a read-only RocksDB secondary; works while a primary runs.
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
        // only the families the primary has: one written before a family was added
        // lacks it until a primary opens it (reads of it then find nothing)
        let existing = DB::list_cf(&opts, path).map_err(storage)?;
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES).map_err(storage)?;
        let cfs = ALL_CFS
            .iter()
            .filter(|cf| existing.iter().any(|e| e == *cf))
            .map(|n| ColumnFamilyDescriptor::new(*n, Self::family_options(&cache)));
        let db =
            DB::open_cf_descriptors_as_secondary(&opts, path, dir.path(), cfs).map_err(storage)?;
        Ok(RocksEngine {
            db,
            secondary: true,
            _secondary_dir: Some(dir),
        })
    }

    /// Rewrites every column family's files (a full manual compaction), so that they all
    /// take the current table options; for a benchmark's index after the options change.
    pub fn compact_all(&self) -> Result<(), IndexError> {
        for name in ALL_CFS {
            self.db
                .compact_range_cf(self.cf(name)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Flushes every memtable, then waits (up to `timeout`) until no column family has
    /// a compaction pending or running: after a bulk load (a generator, a reindex) the
    /// index then serves without background compaction competing for the disk. Returns
    /// whether it settled in time.
    pub fn settle(&self, timeout: std::time::Duration) -> Result<bool, IndexError> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)?).map_err(storage)?;
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut busy = false;
            for name in ALL_CFS {
                let cf = self.cf(name)?;
                for property in [
                    "rocksdb.compaction-pending",
                    "rocksdb.num-running-compactions",
                ] {
                    busy |= self
                        .db
                        .property_int_value_cf(cf, property)
                        .map_err(storage)?
                        .unwrap_or(0)
                        > 0;
                }
            }
            if !busy {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Whether this is a read-only secondary.
    pub fn is_secondary(&self) -> bool {
        self.secondary
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, IndexError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| IndexError::Storage(format!("no column family {name}")))
    }
}

impl KvEngine for RocksEngine {
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        if self.secondary && self.db.cf_handle(cf).is_none() {
            return Ok(None);
        }
        Ok(self
            .db
            .get_pinned_cf(self.cf(cf)?, key)
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        visit: &mut EntryVisitor<'_>,
    ) -> Result<(), IndexError> {
        if self.secondary && self.db.cf_handle(cf).is_none() {
            return Ok(());
        }
        let iter = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(from, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(storage)?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<(), IndexError> {
        let mut wb = WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { cf, key, value } => wb.put_cf(self.cf(cf)?, key, value),
                BatchOp::Delete { cf, key } => wb.delete_cf(self.cf(cf)?, key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(storage)
    }

    fn defers_sync(&self) -> bool {
        true
    }

    fn sync_wal(&self) -> Result<(), IndexError> {
        self.db.flush_wal(true).map_err(storage)
    }

    fn refresh(&self) -> Result<(), IndexError> {
        if self.secondary {
            self.db.try_catch_up_with_primary().map_err(storage)?;
        }
        Ok(())
    }
}

impl KvIndex<RocksEngine> {
    /// Opens (creating if needed) the index for writing; initialises the schema version
    /// of a new index and refuses one it cannot read. See [`RocksEngine::open_primary`].
    pub fn open_primary(path: &Path) -> Result<Self, IndexError> {
        KvIndex::open(RocksEngine::open_primary(path)?, true)
    }

    /// [`KvIndex::open_primary`] with a block cache of `cache_bytes`
    /// ([`RocksEngine::open_primary_cached`]).
    pub fn open_primary_cached(path: &Path, cache_bytes: usize) -> Result<Self, IndexError> {
        KvIndex::open(RocksEngine::open_primary_cached(path, cache_bytes)?, true)
    }

    /// Opens the index as a read-only RocksDB secondary; works while a primary runs.
    pub fn open_secondary(path: &Path) -> Result<Self, IndexError> {
        KvIndex::open(RocksEngine::open_secondary(path)?, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::conformance;
    use crate::index::prelude::*;
    use crate::index::SecondaryKey;

    #[test]
    fn rocks_index_passes_the_conformance_suite() {
        conformance::run_suite(&|| {
            let dir = tempfile::tempdir().unwrap();
            let index = RocksIndex::open_primary(dir.path()).unwrap();
            (Box::new(index) as Box<dyn Index>, Some(dir))
        });
    }

    #[test]
    fn secondary_sees_primary_writes_after_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let primary = RocksIndex::open_primary(dir.path()).unwrap();
        primary
            .commit(&[conformance::object("2.1", "2.1.1", "2.1.1.1", b"x", 1)])
            .unwrap();
        let secondary = RocksIndex::open_secondary(dir.path()).unwrap();
        assert!(secondary.engine().is_secondary());
        assert!(secondary.study("2.1").unwrap().is_some());
        primary
            .commit(&[conformance::object("2.2", "2.2.1", "2.2.1.1", b"y", 2)])
            .unwrap();
        secondary.refresh().unwrap();
        assert!(secondary.study("2.2").unwrap().is_some());
        assert!(
            RocksIndex::open_primary(dir.path()).is_err(),
            "a second writer must be refused"
        );
    }

    /// An index written by the layout of schema version 1, byte for byte, opens and reads.
    #[test]
    fn schema_v1_layout_reads_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, dir.path(), ALL_CFS).unwrap();
            let put = |cf: &str, k: &[u8], v: &[u8]| {
                db.put_cf(db.cf_handle(cf).unwrap(), k, v).unwrap();
            };
            put("meta", b"schema", &1u32.to_le_bytes());
            let mut study = vec![1u8];
            study.extend_from_slice(
                br#"{"patient_id":"P1","patient_name":"DOE^JANE","patient_birth_date":"19700101","patient_sex":"F","study_date":"20240102","study_time":"101010","accession_number":"A1","study_id":"S1","study_description":"CT","referring_physician_name":"","modalities":["CT"],"series":1,"instances":2,"objects":3,"bytes":100}"#,
            );
            put("studies", b"1.2", &study);
            put("idx_patient_id", b"P1\x001.2", b"");
            put("idx_study_date", b"20240102\x001.2", b"");
            put("study_access", b"1.2", &7u64.to_le_bytes());
            let mut queue_key = 7u64.to_be_bytes().to_vec();
            queue_key.extend_from_slice(b"1.2");
            put("access_queue", &queue_key, b"");
        }
        let index = RocksIndex::open_primary(dir.path()).unwrap();
        let study = index.study("1.2").unwrap().unwrap();
        assert_eq!(
            (study.patient_name.as_str(), study.objects),
            ("DOE^JANE", 3)
        );
        assert_eq!(
            index.studies_by(SecondaryKey::PatientId, "P1").unwrap(),
            vec!["1.2"]
        );
        assert_eq!(
            index.studies_by_date_range("20240101", "20240131").unwrap(),
            vec!["1.2"]
        );
        assert_eq!(index.last_access("1.2").unwrap(), Some(7));
        assert_eq!(
            index.accessed_before(8, 10).unwrap(),
            vec![(7, "1.2".to_string())]
        );
    }

    #[test]
    fn another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let db = DB::open_cf(&opts, dir.path(), ALL_CFS).unwrap();
            db.put_cf(db.cf_handle("meta").unwrap(), b"schema", 2u32.to_le_bytes())
                .unwrap();
        }
        let err = RocksIndex::open_primary(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("schema version 2"), "{err}");
    }
}
