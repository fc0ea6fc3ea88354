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
//! - [`ahead`]: pack windows — the members of one pack a retrieval reads next, fetched
//!   with one ranged GET.
//! - [`purge`]: removes this node's hot files of objects deleted on any node.
//! - [`replicate`]: replicas of single objects in the cold tier, before their study
//!   ages into a pack (nodes sharing an index).
//! - [`worker`]: the background policy loop in `strata serve` (age, watermarks,
//!   archive class, orphan uploads) and the `strata tier` passes.
//!
//! Every step of a move is idempotent and ordered so that a crash anywhere leaves at
//! least one verified copy, and the next pass finishes the move (see [`mover`]).

pub mod ahead;
pub mod mover;
pub mod pack;
pub mod purge;
pub mod reader;
pub mod replicate;
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
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    /// Another node holds the lease on this job (it is doing it).
    #[error("another node holds the lease on {0}")]
    LeasedElsewhere(String),
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
    /// This node (`[cluster] node_id`).
    pub node: Arc<str>,
    /// Fetches objects hot on other nodes (`[cluster] secret_file` set).
    pub peers: Option<Arc<crate::peer::Peers>>,
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
            busy: Arc::new(tokio::sync::Mutex::new(())),
            metrics: None,
            audit,
            claim: None,
            claimed: Arc::new(tokio::sync::OnceCell::new()),
            last_orphan_scan_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            node: config.cluster.node().into(),
            peers: crate::peer::Peers::of_config(&config),
            config,
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
            node: self.node.clone(),
            peers: self.peers.clone(),
            window_bytes: self.config.cold.read_window_mb.min(64) << 20,
        }
    }
}

/// This node's lease on a job while it lives ([`Tiering::take_lease`]): renewed every
/// third of `[cluster] lease` by a background task, released when dropped. A node that
/// dies stops renewing, and its lease lapses within `[cluster] lease`.
pub struct Lease {
    job: String,
    node: Arc<str>,
    index: Arc<dyn Index>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        let (index, job, node) = (self.index.clone(), self.job.clone(), self.node.clone());
        let release = move || {
            if let Err(e) = index.release(&job, &node) {
                tracing::warn!(job, error = %e, "cannot release a lease; it lapses by itself");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(release)),
            Err(_) => release(),
        }
    }
}

impl Tiering {
    /// The nodes alive now by their heartbeats ([`crate::index::NodeRecord::alive`]).
    pub async fn alive_nodes(&self) -> Result<std::collections::BTreeSet<String>, TieringError> {
        let index = self.index.clone();
        blocking(move || {
            let now = crate::index::unix_ms_now();
            Ok(index
                .nodes()?
                .into_iter()
                .filter(|n| n.alive(now))
                .map(|n| n.node_id)
                .collect())
        })
        .await
    }

    /// Takes the lease on `job` for this node ([`crate::index::WorkQueue::claim`]), or
    /// [`TieringError::LeasedElsewhere`] when another node holds it.
    pub async fn take_lease(&self, job: &str) -> Result<Lease, TieringError> {
        let term = self.config.cluster.lease;
        let claim = {
            let (index, job, node) = (self.index.clone(), job.to_string(), self.node.clone());
            move || {
                let now = crate::index::unix_ms_now();
                index.claim(&job, &node, now, now + term.as_millis() as u64)
            }
        };
        let first = claim.clone();
        if !blocking(move || Ok(first()?)).await? {
            return Err(TieringError::LeasedElsewhere(job.to_string()));
        }
        let renewal = tokio::spawn({
            let job = job.to_string();
            async move {
                loop {
                    tokio::time::sleep(term / 3).await;
                    let renew = claim.clone();
                    match tokio::task::spawn_blocking(renew).await {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => {
                            tracing::error!(job, "lease lost to another node while working");
                            return;
                        }
                        Ok(Err(e)) => tracing::warn!(job, error = %e, "cannot renew a lease"),
                        Err(_) => return,
                    }
                }
            }
        });
        Ok(Lease {
            job: job.to_string(),
            node: self.node.clone(),
            index: self.index.clone(),
            renewal,
        })
    }
}

/// Runs `pass` until `stop` turns true: after a pass that succeeds, waits `interval`;
/// after one that fails, waits a backoff that doubles from a second up to
/// `max_backoff`; a notified `trigger` cuts any wait short. `what` names the pass in the
/// log.
pub(crate) async fn run_passes<F, Fut>(
    what: &str,
    interval: std::time::Duration,
    max_backoff: std::time::Duration,
    trigger: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), TieringError>>,
{
    let second = std::time::Duration::from_secs(1);
    let mut backoff = second;
    loop {
        let wait = match pass().await {
            Ok(()) => {
                backoff = second;
                interval
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "{what} pass failed; backing off");
                let wait = backoff;
                backoff = (backoff * 2).min(max_backoff);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.notified() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Fault injection for the crash tests: when `STRATA_FAILPOINT` names this point, the
/// process kills itself with SIGKILL right here, exactly as `kill -9` would — on the
/// first pass, or after `STRATA_FAILPOINT_SKIP` passes. Unset in normal operation, where
/// this is one environment lookup per step.
pub fn failpoint(name: &str) {
    static PASSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if std::env::var("STRATA_FAILPOINT").is_ok_and(|v| v == name) {
        let skip: u64 = std::env::var("STRATA_FAILPOINT_SKIP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < skip {
            return;
        }
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
