//! Removing the hot files of deleted objects on every node.
//!
//! A deletion (`strata delete`, retention, IOCM) runs on one node: it removes that
//! node's hot files itself, and its tombstone queues, in the same index batch, the
//! removal of each deleted object's hot file for the node that holds it (CF `purges`,
//! [`crate::index::Placement::purge_queue`]). Every `strata serve` runs
//! [`run_purger`]: it takes its own queue, removes each file (unlink, then a directory
//! fsync), and takes the entries off the queue. An object stored again on this node
//! since its deletion (live in the index again, hot here) keeps its file. A file already
//! gone (the deleting node's own) just leaves the queue.

use super::{blocking, Tiering, TieringError};
use std::sync::Arc;
use std::time::Duration;
use strata_tiers::BlobStore;
use tokio::sync::{watch, Notify};

/// Queue entries taken per pass.
const BATCH: usize = 1024;

impl Tiering {
    /// One pass over this node's purge queue; returns how many hot files it removed.
    pub async fn purge_pending(&self) -> Result<usize, TieringError> {
        let (index, node) = (self.index.clone(), self.node.clone());
        let queued = blocking(move || Ok(index.purge_queue(&node, BATCH)?)).await?;
        if queued.is_empty() {
            return Ok(0);
        }
        let mut removed = 0;
        for id in &queued {
            let (index, node, oid) = (self.index.clone(), self.node.clone(), *id);
            let live =
                blocking(move || Ok(index.object(&oid)?.is_some_and(|r| r.hot_on(&node)))).await?;
            if live {
                continue; // stored again since its deletion: its file is served again
            }
            if self.hot.path_of(id).exists() {
                self.hot.delete(id).await?;
                removed += 1;
                tracing::info!(object = %id, "removed the hot file of a deleted object");
            }
        }
        let (index, node) = (self.index.clone(), self.node.clone());
        blocking(move || Ok(index.purged(&node, &queued)?)).await?;
        Ok(removed)
    }
}

/// The purge loop of `strata serve`: a pass every five seconds until `stop`.
pub async fn run_purger(t: Tiering, stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(5);
    let trigger = Arc::new(Notify::new());
    super::run_passes(
        "purge",
        every,
        t.config.tiering.max_backoff,
        trigger,
        stop,
        || async { t.purge_pending().await.map(|_| ()) },
    )
    .await
}
