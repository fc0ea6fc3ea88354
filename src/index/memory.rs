//! `MemoryIndex`: the index logic of [`KvIndex`] over `BTreeMap`s, for tests (and any
//! caller that wants an index without a disk). Nothing survives the process; `sync` means
//! nothing here.
//!
//! Each column family is an `Arc<BTreeMap>` behind one `Mutex`. A write changes the maps
//! under the mutex (cloning a map only if a scan still holds it: copy on write), so a
//! `get` sees a batch whole or not at all. A scan takes the column family's current map
//! and lets go of the mutex before visiting, so the visitor may call back into the index,
//! and it reads that one snapshot to the end, as a RocksDB iterator does.

use super::kv::{Batch, BatchOp, EntryVisitor, KvEngine, KvIndex};
use super::IndexError;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory [`KvEngine`].
#[derive(Default)]
pub struct MemoryEngine {
    cfs: Mutex<HashMap<&'static str, Arc<Tree>>>,
}

/// The index in memory, for tests.
pub type MemoryIndex = KvIndex<MemoryEngine>;

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine's maps; a panic elsewhere cannot leave them half-written (every write
    /// is applied by `write` below without calling out), so poisoning is ignored.
    fn cfs(&self) -> MutexGuard<'_, HashMap<&'static str, Arc<Tree>>> {
        self.cfs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KvEngine for MemoryEngine {
    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        Ok(self.cfs().get(cf).and_then(|t| t.get(key).cloned()))
    }

    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        visit: &mut EntryVisitor<'_>,
    ) -> Result<(), IndexError> {
        let Some(tree) = self.cfs().get(cf).cloned() else {
            return Ok(());
        };
        for (k, v) in tree.range::<[u8], _>((Bound::Included(from), Bound::Unbounded)) {
            if !visit(k, v)? {
                break;
            }
        }
        Ok(())
    }

    fn write(&self, batch: Batch, _sync: bool) -> Result<(), IndexError> {
        let mut cfs = self.cfs();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { cf, key, value } => {
                    Arc::make_mut(cfs.entry(cf).or_default()).insert(key, value);
                }
                BatchOp::Delete { cf, key } => {
                    if let Some(tree) = cfs.get_mut(cf).filter(|t| t.contains_key(&key)) {
                        Arc::make_mut(tree).remove(&key);
                    }
                }
            }
        }
        Ok(())
    }
}

impl KvIndex<MemoryEngine> {
    /// An empty index in memory.
    pub fn new() -> Self {
        KvIndex::open(MemoryEngine::new(), true).expect("an empty memory index opens")
    }
}

impl Default for KvIndex<MemoryEngine> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::conformance;
    use crate::index::Index;

    #[test]
    fn memory_index_passes_the_conformance_suite() {
        conformance::run_suite(&|| (Box::new(MemoryIndex::new()) as Box<dyn Index>, None));
    }
}
