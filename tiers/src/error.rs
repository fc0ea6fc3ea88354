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

    pub fn is_not_found(&self) -> bool {
        matches!(self, TierError::NotFound { .. })
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
