//! # strata-tiers: storage mechanics, nothing else
//!
//! This crate knows bytes and content addresses. It does not know DICOM, and it does not
//! know the index: those are policy, and live in the `strata` crate. The split follows
//! Neon's `remote_storage` (mechanics) versus its pageserver (policy), and TiKV's rule
//! that a storage trait crate must not depend on the engine behind it.
//!
//! ## The contract
//!
//! A [`BlobStore`] holds immutable objects keyed by their [`ObjectId`], the blake3 hash of
//! the object's bytes. Every implementation promises:
//!
//! - `put(id, bytes)` refuses bytes that do not hash to `id` ([`TierError::HashMismatch`]);
//!   once it returns `Ok`, the object is durable (for the hot disk: fsynced and renamed
//!   into place with its directory fsynced). Putting an object that already exists is a
//!   no-op that returns `Ok(PutOutcome::AlreadyPresent)`.
//! - `get`, `get_range` and `head` of a missing object return [`TierError::NotFound`].
//! - `delete` of a missing object is `Ok` (idempotent).
//! - `list` returns every object id exactly once, in no particular order.
//!
//! The shared conformance suite ([`conformance::run_suite`], behind the `testing`
//! feature) checks these rules, and every implementation runs it.
//!
//! ## Layout
//! - [`id`]: `ObjectId` and its hex and fan-out forms.
//! - [`error`]: `TierError`, one enum for every implementation.
//! - [`hot`]: `HotDisk`, the local-disk tier with crash-safe writes and group sync.
//! - [`memory`]: `MemoryStore`, an in-memory tier for tests.
//! - [`cold`]: `ColdStore`, the cold tier over `object_store` (S3-compatible, local
//!   filesystem, memory), with S3 storage classes and restores through `aws-sdk-s3`.

pub mod cold;
pub mod error;
pub mod hot;
pub mod id;
pub mod memory;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;

pub use cold::{ColdSpec, ColdStore};
pub use error::TierError;
pub use hot::{HotDisk, TmpObject};
pub use id::ObjectId;
pub use memory::MemoryStore;

use bytes::Bytes;
use std::ops::Range;

/// What a successful `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written by this call.
    Stored,
    /// An object with this id already existed; nothing was written.
    AlreadyPresent,
}

/// Size and identity of a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    pub id: ObjectId,
    pub size: u64,
}

/// A content-addressed object store. See the crate documentation for the contract.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` under `id`, durably, after checking that they hash to `id`.
    async fn put(&self, id: &ObjectId, bytes: Bytes) -> Result<PutOutcome, TierError>;
    /// Reads the whole object.
    async fn get(&self, id: &ObjectId) -> Result<Bytes, TierError>;
    /// Reads `range` of the object (clamped reads are an error: the range must fit).
    async fn get_range(&self, id: &ObjectId, range: Range<u64>) -> Result<Bytes, TierError>;
    /// Size of the object.
    async fn head(&self, id: &ObjectId) -> Result<ObjectMeta, TierError>;
    /// Removes the object; a missing object is not an error.
    async fn delete(&self, id: &ObjectId) -> Result<(), TierError>;
    /// Every object id in the store.
    async fn list(&self) -> Result<Vec<ObjectId>, TierError>;
}

/// Checks that `bytes` hash to `id`; the one place that rule lives.
pub fn check_content_address(id: &ObjectId, bytes: &[u8]) -> Result<(), TierError> {
    let actual = ObjectId::of_bytes(bytes);
    if &actual == id {
        Ok(())
    } else {
        Err(TierError::HashMismatch {
            expected: *id,
            actual,
        })
    }
}

/// Checks a requested range against an object's size.
pub(crate) fn check_range(id: &ObjectId, range: &Range<u64>, size: u64) -> Result<(), TierError> {
    if range.start > range.end || range.end > size {
        return Err(TierError::InvalidRange {
            id: *id,
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(())
}
