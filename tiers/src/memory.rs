//! `MemoryStore`: an in-memory [`BlobStore`], for tests and as the simplest reading of
//! the contract.

use crate::{
    check_content_address, check_range, BlobStore, ObjectId, ObjectMeta, PutOutcome, TierError,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<HashMap<ObjectId, Bytes>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lookup(&self, id: &ObjectId) -> Result<Bytes, TierError> {
        let objects = self.objects.lock().expect("memory store lock poisoned");
        objects
            .get(id)
            .cloned()
            .ok_or(TierError::NotFound { id: *id })
    }
}

#[async_trait::async_trait]
impl BlobStore for MemoryStore {
    async fn put(&self, id: &ObjectId, bytes: Bytes) -> Result<PutOutcome, TierError> {
        check_content_address(id, &bytes)?;
        let mut objects = self.objects.lock().expect("memory store lock poisoned");
        if objects.contains_key(id) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        objects.insert(*id, bytes);
        Ok(PutOutcome::Stored)
    }

    async fn get(&self, id: &ObjectId) -> Result<Bytes, TierError> {
        self.lookup(id)
    }

    async fn get_range(&self, id: &ObjectId, range: Range<u64>) -> Result<Bytes, TierError> {
        let bytes = self.lookup(id)?;
        check_range(id, &range, bytes.len() as u64)?;
        Ok(bytes.slice(range.start as usize..range.end as usize))
    }

    async fn head(&self, id: &ObjectId) -> Result<ObjectMeta, TierError> {
        let size = self.lookup(id)?.len() as u64;
        Ok(ObjectMeta { id: *id, size })
    }

    async fn delete(&self, id: &ObjectId) -> Result<(), TierError> {
        self.objects
            .lock()
            .expect("memory store lock poisoned")
            .remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ObjectId>, TierError> {
        Ok(self
            .objects
            .lock()
            .expect("memory store lock poisoned")
            .keys()
            .copied()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_passes_conformance() {
        crate::conformance::run_suite(&super::MemoryStore::new()).await;
    }
}
