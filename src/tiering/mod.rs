//! # Tiering: policy over the hot and cold tiers
//!
//! `strata-tiers` knows how to store bytes; this module decides what goes where and
//! keeps the index in step (DESIGN promises 4, 5 and 6):
//!
//! - [`pack`]: the study-pack format (tar + manifest + zstd members).
//! - [`mover`]: moves one study between tiers — pack, upload, verify by reading back,
//!   record, and only then delete the hot copies — and back (recall to hot).
//! - [`reader`]: reads an object from wherever it is: the hot file, or one ranged GET of
//!   its pack member; a whole study streams from its packs.
//! - [`worker`]: the background policy loop in `strata serve` (age, watermarks,
//!   archive class, orphan uploads) and the `strata tier` passes.
//!
//! Every step of a move is idempotent and ordered so that a crash anywhere leaves at
//! least one verified copy, and the next pass finishes the move (see [`mover`]).

pub mod mover;
pub mod pack;
pub mod reader;
pub mod scrub;
pub mod worker;

use crate::config::Config;
use crate::index::{Index, IndexError};
use crate::metrics::TierMetrics;
use std::sync::Arc;
use strata_tiers::{ColdStore, HotDisk, TierError};

#[derive(Debug, thiserror::Error)]
pub enum TieringError {
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Pack(#[from] pack::PackError),
    #[error("object {id} has no readable copy: {detail}")]
    Unreadable { id: String, detail: String },
    #[error("study {0} is not in the archive")]
    UnknownStudy(String),
    #[error("{0}")]
    Other(String),
}

impl TieringError {
    /// The cold tier is unreachable or failing: back off and retry later.
    pub fn is_transient(&self) -> bool {
        matches!(self, TieringError::Tier(e) if e.is_remote())
    }

    pub fn is_pending_restore(&self) -> bool {
        matches!(self, TieringError::Tier(e) if e.is_pending_restore())
    }
}

/// A claim of the cold tier: `Ok`, or why this archive may not write there.
pub type ColdClaim =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Everything the tiering code works with. Cheap to clone.
#[derive(Clone)]
pub struct Tiering {
    pub hot: HotDisk,
    pub cold: ColdStore,
    pub index: Arc<dyn Index>,
    pub config: Arc<Config>,
    /// Held by a policy pass or a forced move, so that two never work at once (clones
    /// share it).
    pub busy: Arc<tokio::sync::Mutex<()>>,
    /// Where moves and recalls are counted (`strata serve`); absent in the CLI.
    pub metrics: Option<TierMetrics>,
    /// Where tier moves are recorded.
    pub audit: Option<crate::audit::AuditLog>,
    /// Claims the cold tier for this archive before the first pack is uploaded (its
    /// marker, `storage::cold_tier::claim`, supplied by the application layer so that
    /// tiering does not reach up into storage); `None` claims nothing.
    pub claim: Option<ColdClaim>,
    /// Set once this process has claimed the cold tier for the archive (its marker).
    pub claimed: Arc<tokio::sync::OnceCell<()>>,
    /// When the last orphan scan ran (ms since the epoch; 0: not yet).
    pub last_orphan_scan_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Tiering {
    pub fn new(hot: HotDisk, cold: ColdStore, index: Arc<dyn Index>, config: Arc<Config>) -> Self {
        let audit = config
            .audit
            .enabled
            .then(|| crate::audit::AuditLog::open(&config.archive.data_dir).ok())
            .flatten();
        Tiering {
            hot,
            cold,
            index,
            config,
            busy: Arc::new(tokio::sync::Mutex::new(())),
            metrics: None,
            audit,
            claim: None,
            claimed: Arc::new(tokio::sync::OnceCell::new()),
            last_orphan_scan_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    pub fn with_metrics(mut self, metrics: TierMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn reader(&self) -> reader::ObjectReader {
        reader::ObjectReader {
            hot: self.hot.clone(),
            cold: self.cold.clone(),
            index: self.index.clone(),
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
        }
    }
}

/// Fault injection for the crash tests: when `STRATA_FAILPOINT` names this point, the
/// process kills itself with SIGKILL right here, exactly as `kill -9` would. Unset in
/// normal operation, where this is one environment lookup per move step.
pub fn failpoint(name: &str) {
    if std::env::var("STRATA_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::warn!(failpoint = name, "failpoint reached: killing the process");
        // SAFETY: kill(2) with our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Runs blocking work (index, files, pack building) off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, TieringError>
where
    F: FnOnce() -> Result<T, TieringError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TieringError::Other(format!("blocking task failed: {e}")))?
}
