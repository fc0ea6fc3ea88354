//! # The application layer: one use case per thing a caller can ask of the archive
//!
//! Every adapter — the DIMSE service ([`crate::dimse`]), the HTTP routes
//! ([`crate::http`]), the `strata` command line, later DICOMweb, FHIR and HL7 — calls the
//! use cases here, never the index, ingest or the tiers directly. Each use case:
//!
//! - takes the caller's identity, a [`Principal`] (a DICOM peer's AE title and address, a
//!   command-line user, the server's own workers; later a token subject or a TLS
//!   certificate), so that what it does is attributed;
//! - writes its own audit record (DESIGN promise 8), so an adapter cannot forget one: a
//!   store is audited by the group committer before it is acknowledged, a query by the
//!   search task when it ends, a retrieval when its handle finishes or is dropped, and
//!   every governance action (delete, hold, retention, repair, tier move) before it
//!   returns;
//! - returns a typed [`Error`] that each adapter maps to its own status
//!   ([`Error::dimse_status`], [`Error::http_status`]).
//!
//! | use case | module | adapters today |
//! |---|---|---|
//! | store (a C-STORE stream; a Part-10 byte stream) | [`store`] | C-STORE, `strata import` (later STOW-RS) |
//! | find (a typed [`crate::query::Query`]) | [`find`] | C-FIND (later QIDO-RS) |
//! | retrieve (resolve, read, audit) | [`retrieve`] | C-MOVE, C-GET, storage commitment |
//! | list and show | [`catalog`] | `strata ls`, `strata show` |
//! | export, BagIt manifest | [`export`] | `strata export`, `strata manifest` |
//! | verify, repair | [`integrity`] | `strata verify [--repair]`, admin API |
//! | delete, hold, retention | [`governance`] | `strata delete/hold/retention`, admin API |
//! | tier status, pass, forced move | [`tier`] | `strata tier`, admin API |
//! | readiness | [`health`] | `/readyz` |
//!
//! An [`Archive`] is a cheap handle (clone it into tasks). It is opened in one of three
//! ways: by `strata serve` over the storage it owns ([`Archive::serving`]), by a CLI
//! command that owns the archive for a moment ([`Archive::exclusive`]), or read-only
//! beside a running server ([`Archive::read_only`]).

pub mod access;
pub mod catalog;
pub mod cluster;
pub mod error;
pub mod export;
pub mod find;
pub mod governance;
pub mod health;
pub mod integrity;
pub mod patients;
pub mod prefetch;
pub mod principal;
pub mod rejection;
pub mod retrieve;
pub mod store;
pub mod tier;

pub use error::Error;
pub use principal::Principal;

use crate::audit::{AuditLog, Event};
use crate::config::Config;
use crate::index::Index;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::storage::{ReadOnlyStorage, Storage};
use crate::tiering::reader::ObjectReader;
use crate::tiering::Tiering;
use std::path::PathBuf;
use std::sync::Arc;
use strata_tiers::{ColdStore, HotDisk};

/// The archive as its callers see it. Cheap to clone.
#[derive(Clone)]
pub struct Archive {
    pub(crate) config: Arc<Config>,
    pub(crate) data_dir: PathBuf,
    pub(crate) hot: HotDisk,
    pub(crate) cold: ColdStore,
    pub(crate) index: Arc<dyn Index>,
    pub(crate) tiering: Tiering,
    pub(crate) reader: ObjectReader,
    pub(crate) audit: Option<AuditLog>,
    /// The ingest pipeline; absent in a read-only archive.
    pub(crate) ingest: Option<Ingest>,
    /// Holds and tombstones, kept outside the index too (promise 5).
    pub(crate) governance: crate::storage::governance_log::GovernanceLog,
    pub(crate) metrics: Metrics,
    /// Sync every audit record as it is written (a short-lived command-line process
    /// may exit before the log's flusher runs); the server leaves it to the flusher.
    pub(crate) sync_each_audit: bool,
    /// The cold tier's last readiness answer and when it was taken, reused for `[cold]
    /// readiness_interval`: probes do not each cost S3 requests.
    pub(crate) cold_probe: Arc<tokio::sync::Mutex<Option<(std::time::Instant, health::Check)>>>,
    /// The bearer-token validator of `strata serve` when `[auth] issuer` is set.
    pub(crate) tokens: Option<Arc<crate::oidc::Validator>>,
    /// Serialises patient identity changes ([`patients`]).
    pub(crate) patient_changes: Arc<tokio::sync::Mutex<()>>,
}

impl Archive {
    /// The archive of `strata serve`: ingest (group committer) started, tiering counted
    /// in `metrics`, every access audited when `[audit] enabled`.
    pub fn serving(config: &Config, storage: &Storage, metrics: Metrics) -> Result<Self, Error> {
        let mut archive = Self::writable(config, storage, metrics)?;
        archive.sync_each_audit = false;
        if config.auth.enabled() {
            let validator =
                crate::oidc::Validator::new(&config.auth).map_err(Error::InvalidRequest)?;
            archive.tokens = Some(Arc::new(validator));
        }
        Ok(archive)
    }

    /// The archive of a CLI command that holds the archive lock for its duration
    /// (import, reindex, and governance while no server runs).
    pub fn exclusive(config: &Config, storage: &Storage) -> Result<Self, Error> {
        Self::writable(config, storage, Metrics::new())
    }

    fn writable(config: &Config, storage: &Storage, metrics: Metrics) -> Result<Self, Error> {
        let audit = open_audit(config)?;
        let index: Arc<dyn Index> = storage.index.clone();
        let journal = if config.ingest.journal {
            let opened = crate::storage::journal::Journal::open(
                storage.hot.clone(),
                index.clone(),
                storage.journal_lsn,
            );
            match opened {
                Ok(journal) => Some((
                    journal,
                    std::time::Duration::from_millis(config.ingest.journal_checkpoint_ms.max(1)),
                )),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the ingest journal; every commit group is synced in place");
                    None
                }
            }
        } else {
            None
        };
        let ingest = Ingest::start(
            storage.hot.clone(),
            index.clone(),
            config.archive.on_conflicting_version,
            config.ingest.max_commit_batch,
            metrics.clone(),
            audit.clone(),
            journal,
        )
        .with_replication(config.replicates());
        let tiers = (&storage.data_dir, &storage.hot, &storage.cold, index);
        Ok(Self::assemble(config, tiers, audit, Some(ingest), metrics))
    }

    /// An archive opened read-only beside a possibly running server (its index as a
    /// RocksDB secondary): listing, showing, export, verify.
    pub fn read_only(config: &Config) -> Result<Self, Error> {
        let storage = ReadOnlyStorage::open(config)?;
        // a read-only command still works when the log cannot be opened; each access
        // it makes is then reported as not audited
        let audit = open_audit(config).unwrap_or_else(|e| {
            tracing::error!(error = %e, "AUDIT LOG UNAVAILABLE: accesses will not be recorded");
            None
        });
        let index: Arc<dyn Index> = storage.index.clone();
        let tiers = (&storage.data_dir, &storage.hot, &storage.cold, index);
        Ok(Self::assemble(config, tiers, audit, None, Metrics::new()))
    }

    fn assemble(
        config: &Config,
        (data_dir, hot, cold, index): (&PathBuf, &HotDisk, &ColdStore, Arc<dyn Index>),
        audit: Option<AuditLog>,
        ingest: Option<Ingest>,
        metrics: Metrics,
    ) -> Self {
        let config = Arc::new(config.clone());
        let governance = crate::storage::governance_log::GovernanceLog::new(data_dir);
        let ingest = ingest.map(|ingest| {
            match patients::default_issuer_policy(&config, &governance, &index) {
                Some(policy) => ingest.with_attrs_policy(policy),
                None => ingest,
            }
        });
        let mut tiering = Tiering::new(hot.clone(), cold.clone(), index.clone(), config.clone());
        if ingest.is_some() {
            tiering = tiering.with_metrics(metrics.tier.clone());
        }
        tiering.audit = audit.clone();
        let (claim_config, claim_cold, claim_index) = (config.clone(), cold.clone(), index.clone());
        tiering.claim = Some(Arc::new(move || {
            let (config, cold, index) = (
                claim_config.clone(),
                claim_cold.clone(),
                claim_index.clone(),
            );
            Box::pin(async move {
                crate::storage::cold_tier::claim(&config, &cold, false, Some(index.as_ref()))
                    .await
                    .map_err(|e| e.to_string())
            })
        }));
        Archive {
            config,
            governance,
            data_dir: data_dir.clone(),
            hot: hot.clone(),
            cold: cold.clone(),
            reader: tiering.reader(),
            tiering,
            index,
            audit,
            ingest,
            metrics,
            sync_each_audit: true,
            cold_probe: Arc::default(),
            tokens: None,
            patient_changes: Arc::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bearer-token validator, when `[auth] issuer` is set (`strata serve` only).
    pub fn tokens(&self) -> Option<&Arc<crate::oidc::Validator>> {
        self.tokens.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn hot(&self) -> &HotDisk {
        &self.hot
    }

    /// The tiering policy over this archive (the background worker and scrubber).
    pub fn tiering(&self) -> &Tiering {
        &self.tiering
    }

    /// The ingest pipeline, or [`Error::ReadOnly`].
    pub(crate) fn ingest(&self) -> Result<&Ingest, Error> {
        self.ingest.as_ref().ok_or(Error::ReadOnly)
    }

    /// Whether a store failed to sync or index since start (the next start must then
    /// scan for unindexed objects).
    pub fn had_failures(&self) -> bool {
        self.ingest.as_ref().is_some_and(|i| i.had_failures())
    }

    /// Stops ingest once every other clone of this archive is gone (their committer
    /// handles keep it alive), and says whether everything stored was also indexed.
    pub fn shutdown_blocking(self) -> bool {
        let clean = !self.had_failures();
        if let Some(ingest) = self.ingest {
            ingest.shutdown_blocking();
        }
        clean
    }

    /// Appends one audit record and makes it durable before returning (governance
    /// actions: the record must exist before the action's effects do).
    pub(crate) fn audit_synced(
        &self,
        principal: &Principal,
        action: &'static str,
        uids: Vec<String>,
        outcome: String,
    ) -> Result<(), Error> {
        if let Some(log) = &self.audit {
            log.append(&[Event {
                actor: principal.actor(),
                action,
                uids,
                outcome,
            }])?;
            log.sync()?;
        }
        Ok(())
    }

    /// Appends one audit record; a failure is logged loudly, not returned (the access
    /// already happened). Blocking.
    pub(crate) fn audit_blocking(
        &self,
        principal: &Principal,
        action: &'static str,
        uids: Vec<String>,
        outcome: String,
    ) {
        if let Some(log) = &self.audit {
            record(
                log,
                self.sync_each_audit,
                event(principal, action, uids, outcome),
            );
        }
    }

    /// A connection refused before any request could be made on it — a TLS handshake
    /// that failed, an association rejected or not negotiated — recorded in the audit
    /// log as action `connect` with outcome `refused: <why>`, attributed to what is
    /// known of the caller (its address, and its AE title once it sent one). Does not
    /// wait for the record (callable from any thread, with or without a runtime).
    pub fn connection_refused(&self, principal: &Principal, why: &str) {
        self.connection_refused_as(principal, "connect", why);
    }

    /// [`Archive::connection_refused`] recorded as `action` (`authenticate`: a web
    /// request without a valid token).
    pub fn connection_refused_as(&self, principal: &Principal, action: &'static str, why: &str) {
        self.audit_on_drop(principal, action, Vec::new(), format!("refused: {why}"));
    }

    /// [`Archive::audit_blocking`] from a `Drop` (a use case's handle dropped before it
    /// finished) or an async context: written before it returns (in `block_in_place` on
    /// a multi-threaded runtime).
    pub(crate) fn audit_on_drop(
        &self,
        principal: &Principal,
        action: &'static str,
        uids: Vec<String>,
        outcome: String,
    ) {
        let Some(log) = self.audit.clone() else {
            return;
        };
        let (sync, e) = (
            self.sync_each_audit,
            event(principal, action, uids, outcome),
        );
        let write = move || record(&log, sync, e);
        // written before this returns: a task queued on the blocking pool would be
        // dropped, unwritten, if the runtime shut down before it started
        match tokio::runtime::Handle::try_current().map(|rt| rt.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
            _ => write(),
        }
    }

    /// Records, before pixel data goes out, that it is about to (action
    /// `begin_transfer`, DCM 110102), written and synced before this returns. When that
    /// fails and `[audit] fail_closed` (the default) the access is refused with
    /// [`Error::Audit`]; otherwise the failure is logged and the access goes on.
    pub(crate) async fn audit_before_access(
        &self,
        principal: &Principal,
        uids: Vec<String>,
        outcome: String,
    ) -> Result<(), Error> {
        let Some(log) = self.audit.clone() else {
            return Ok(());
        };
        let e = event(principal, "begin_transfer", uids, outcome);
        let written = tokio::task::spawn_blocking(move || {
            log.append(&[e])?;
            log.sync()
        })
        .await
        .map_err(|e| Error::Internal(format!("audit task failed: {e}")))?;
        match written {
            Ok(()) => Ok(()),
            Err(e) if self.config.audit.fail_closed => {
                tracing::error!(error = %e, "AUDIT RECORD NOT WRITTEN: access to pixel data refused");
                Err(Error::Audit(e))
            }
            Err(e) => {
                tracing::error!(error = %e, "AUDIT RECORD NOT WRITTEN ([audit] fail_closed = false: access goes on)");
                Ok(())
            }
        }
    }

    /// [`Archive::audit_blocking`] from async code (on the blocking pool).
    pub(crate) async fn audit(
        &self,
        principal: &Principal,
        action: &'static str,
        uids: Vec<String>,
        outcome: String,
    ) {
        let Some(log) = self.audit.clone() else {
            return;
        };
        let (sync, e) = (
            self.sync_each_audit,
            event(principal, action, uids, outcome),
        );
        let _ = tokio::task::spawn_blocking(move || record(&log, sync, e)).await;
    }
}

fn event(principal: &Principal, action: &'static str, uids: Vec<String>, outcome: String) -> Event {
    Event {
        actor: principal.actor(),
        action,
        uids,
        outcome,
    }
}

/// Appends `event` (and syncs it when `sync`), logging a failure loudly. Blocking.
fn record(log: &AuditLog, sync: bool, event: Event) {
    log.record(&[event]);
    if sync {
        if let Err(e) = log.sync() {
            tracing::error!(error = %e, "AUDIT RECORD NOT MADE DURABLE");
        }
    }
}

fn open_audit(config: &Config) -> Result<Option<AuditLog>, Error> {
    Ok(config
        .audit
        .enabled
        .then(|| AuditLog::open(&config.archive.data_dir))
        .transpose()?)
}

/// The runtime the calling thread belongs to: the blocking use cases that read the cold
/// tier run on a runtime's blocking pool and use its handle.
pub(crate) fn current_runtime() -> Result<tokio::runtime::Handle, Error> {
    tokio::runtime::Handle::try_current().map_err(|_| {
        Error::Internal("call this use case on a tokio runtime's blocking pool".into())
    })
}

/// Runs blocking work (index, files, hashing) on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}
