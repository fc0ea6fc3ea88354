//! The library's error: what a use case can fail with, and how each adapter says it.
//!
//! One enum for every use case (thiserror; the errors of the core modules are wrapped
//! as sources, never flattened into text), with the classifications adapters and
//! policies need: [`Error::dimse_status`] (PS3.7 Annex C status codes),
//! [`Error::http_status`] (RFC 9110) and [`Error::is_transient`] (retry later).
//! Nothing branches on an error's message.

use crate::dicom::status;
use crate::ingest::IngestError;
use crate::query::QueryError;
use crate::tiering::TieringError;
use strata_tiers::TierError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (a malformed UID, a missing argument).
    #[error("{0}")]
    InvalidRequest(String),
    /// The request names something the archive does not hold.
    #[error("{0}")]
    NotFound(String),
    /// Legal holds forbid the request (delete, retention). `who`, `since` and `why` are
    /// the first hold's; `holds` names every standing one.
    #[error("study {study_uid} is under legal hold: {holds}; lift each first with `strata hold {study_uid} --release --hold \"<its reason>\" --reason <why>`")]
    Held {
        study_uid: String,
        who: String,
        since: String,
        why: String,
        holds: String,
    },
    /// Some objects of a request could not be read; `source` is the first failure.
    #[error("{what}: {source}")]
    Unreadable {
        what: String,
        #[source]
        source: TieringError,
    },
    /// The caller's grant does not allow the request: `who` lacks the role `needs`, or
    /// is restricted to one patient (docs/security.md "Roles").
    #[error("{who} may not {action}: {why}")]
    Forbidden {
        who: String,
        action: &'static str,
        why: String,
    },
    /// This archive was opened read-only (a CLI command beside a running server).
    #[error("the archive is open read-only")]
    ReadOnly,
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Tiering(#[from] TieringError),
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A failure of the archive's own machinery (a task that died).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    /// The DIMSE status that reports this failure (PS3.7 C.4 for C-STORE and C-FIND,
    /// PS3.4 C.4.1.1.4 for query identifiers).
    pub fn dimse_status(&self) -> u16 {
        match self {
            Error::Ingest(e) => match e {
                IngestError::OutOfSpace(_) | IngestError::Storage(_) => status::OUT_OF_RESOURCES,
                IngestError::DatasetMismatch(_) => status::DATASET_DOES_NOT_MATCH,
                IngestError::Unparseable(_) => status::CANNOT_UNDERSTAND,
                IngestError::ConflictingVersion(_) => status::DUPLICATE_SOP_INSTANCE,
            },
            Error::Query(QueryError::Index(_)) => status::UNABLE_TO_PROCESS,
            Error::Query(_) | Error::InvalidRequest(_) => status::DATASET_DOES_NOT_MATCH,
            Error::NotFound(_) | Error::Held { .. } => status::UNABLE_TO_PROCESS,
            Error::Forbidden { .. } => status::NOT_AUTHORIZED,
            Error::Tier(e) if e.is_out_of_space() => status::OUT_OF_RESOURCES,
            Error::Index(_) | Error::Internal(_) => status::UNABLE_TO_PROCESS,
            _ => status::PROCESSING_FAILURE,
        }
    }

    /// The HTTP status that reports this failure (RFC 9110 §15).
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Query(QueryError::Index(_)) => 500,
            Error::InvalidRequest(_) | Error::Query(_) => 400,
            Error::NotFound(_) => 404,
            Error::Forbidden { .. } => 403,
            Error::Held { .. } => 409,
            // another node is doing this job now (its lease): try again later
            Error::Tiering(TieringError::LeasedElsewhere(_)) => 409,
            Error::Ingest(IngestError::ConflictingVersion(_)) => 409,
            Error::Ingest(IngestError::DatasetMismatch(_) | IngestError::Unparseable(_)) => 400,
            Error::Ingest(IngestError::OutOfSpace(_)) => 507,
            e if e.is_pending_restore() => 503,
            // the access could not be put on record (fail closed): try again later
            Error::Audit(_) => 503,
            e if e.is_transient() => 503,
            _ => 500,
        }
    }

    /// Whether trying again later may succeed: the cold tier is unreachable or failing,
    /// an archived pack is being restored, or the hot disk is full.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Tiering(e) | Error::Unreadable { source: e, .. } => {
                e.is_transient() || e.is_pending_restore()
            }
            Error::Tier(e) => e.is_remote() || e.is_pending_restore() || e.is_out_of_space(),
            Error::Ingest(IngestError::OutOfSpace(_)) => true,
            _ => false,
        }
    }

    /// Whether an archived pack must first be restored (S3 RestoreObject pending).
    pub fn is_pending_restore(&self) -> bool {
        match self {
            Error::Tiering(e) | Error::Unreadable { source: e, .. } => e.is_pending_restore(),
            Error::Tier(e) => e.is_pending_restore(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_standards() {
        // PS3.4 B.2.3: out of resources A7xx, data set does not match A9xx, cannot
        // understand Cxxx; PS3.4 C.4.1.1.4: identifier does not match SOP class A900.
        let e = Error::Ingest(IngestError::OutOfSpace("full".into()));
        assert_eq!((e.dimse_status(), e.http_status()), (0xA700, 507));
        assert!(e.is_transient());
        let e = Error::Ingest(IngestError::Unparseable("x".into()));
        assert_eq!((e.dimse_status(), e.http_status()), (0xC000, 400));
        let e = Error::Ingest(IngestError::ConflictingVersion("x".into()));
        assert_eq!((e.dimse_status(), e.http_status()), (0x0111, 409));
        let e = Error::Query(QueryError::MissingLevel);
        assert_eq!((e.dimse_status(), e.http_status()), (0xA900, 400));
        let e = Error::NotFound("no study".into());
        assert_eq!(e.http_status(), 404);
        assert!(!e.is_transient());
        let id = strata_tiers::ObjectId::of_bytes(b"x");
        let e = Error::Tier(TierError::PendingRestore { id });
        assert_eq!(e.http_status(), 503);
        assert!(e.is_transient() && e.is_pending_restore());
    }
}
