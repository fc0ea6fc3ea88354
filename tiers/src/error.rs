//! One error type for every tier implementation, with classification methods so that
//! policy code can decide (retry, report out-of-space, give up) without matching on
//! backend details.

use crate::ObjectId;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    #[error("object {id} not found")]
    NotFound { id: ObjectId },
    #[error("bytes hash to {actual}, not to the requested id {expected}")]
    HashMismatch {
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error("range {start}..{end} is outside object {id} of {size} bytes")]
    InvalidRange {
        id: ObjectId,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("out of space: {free} bytes free at {path}, floor is {floor}")]
    BelowFreeSpaceFloor {
        path: PathBuf,
        free: u64,
        floor: u64,
    },
    #[error("remote object {key} not found")]
    RemoteNotFound { key: String },
    #[error("cold tier: failed to {action} {key}: {detail}")]
    Remote {
        action: &'static str,
        key: String,
        detail: String,
    },
    #[error("pack {id} is in an archive storage class (GLACIER or DEEP_ARCHIVE); a restore was requested and is pending: try again later (S3 takes hours)")]
    PendingRestore { id: ObjectId },
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TierError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        TierError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(detail: impl Into<String>) -> Self {
        TierError::Config(detail.into())
    }

    /// Names the object in a remote not-found error, for the id-keyed API.
    pub(crate) fn for_id(self, id: &ObjectId) -> Self {
        match self {
            TierError::RemoteNotFound { .. } => TierError::NotFound { id: *id },
            other => other,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            TierError::NotFound { .. } | TierError::RemoteNotFound { .. }
        )
    }

    /// True when the object exists but sits in an archive class awaiting a restore.
    pub fn is_pending_restore(&self) -> bool {
        matches!(self, TierError::PendingRestore { .. })
    }

    /// True when a remote store could not be reached or answered with an error: the
    /// caller should back off and try again.
    pub fn is_remote(&self) -> bool {
        matches!(self, TierError::Remote { .. })
    }

    /// True when the failure is a lack of space (ENOSPC, EDQUOT or the configured floor):
    /// the caller should answer "out of resources" and may retry later.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            TierError::BelowFreeSpaceFloor { .. } => true,
            TierError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ),
            _ => false,
        }
    }
}
