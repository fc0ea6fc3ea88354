//! Replicas: a second durable copy of each object a node receives, in the cold tier,
//! before its study ages into a pack (docs/scale-out.md "Durability across nodes").
//!
//! A node that replicates ([`crate::config::Config::replicates`]) queues each object it
//! stores in the same index commit as the object itself (CF `replication`, keyed by node
//! and object). [`Tiering::replicate`] then, per object:
//!
//! 1. **copies** the hot file to the cold tier as it is — a Part-10 file at
//!    `<prefix>/objects/ab/<id>.dcm` ([`strata_tiers::ColdStore::replicas`]), checked
//!    against the id on the way;
//! 2. **verifies** it by reading it back and re-hashing it (the upload call's success is
//!    not trusted);
//! 3. **records** the replica on the object record and takes it off the queue, synced.
//!
//! With `[cluster] ack_after = "local"` the background [`run_replicator`] does this
//! within a bounded lag of the ack (the lag is `strata_replication_lag_seconds`); with
//! `"replicated"` the store does it before it acknowledges. A crash anywhere leaves the
//! object queued, and the next pass copies it again (same key, same bytes). An object
//! packed meanwhile leaves the queue: its pack is the second copy. Once an object is in
//! a recorded pack, the mover records that it no longer counts on its replica, then
//! deletes it ([`Tiering::drop_replicas`]); the orphan scan deletes replicas no record
//! counts on.

use super::{blocking, Tiering, TieringError};
use crate::index::unix_ms_now;
use std::sync::Arc;
use std::time::Duration;
use strata_tiers::{BlobStore, ObjectId};
use tokio::sync::{watch, Notify};

/// Objects taken off the queue per pass, and replicas uploaded at once.
const BATCH: usize = 256;
const IN_FLIGHT: usize = 4;

impl Tiering {
    /// Replicates this node's objects `ids` to the cold tier now (copy, verify, record;
    /// see the module docs). An object whose hot file is gone but that is in a recorded
    /// pack, or no longer in the index, just leaves the queue. Returns how many replicas
    /// were written.
    pub async fn replicate(&self, ids: &[ObjectId]) -> Result<usize, TieringError> {
        use futures::StreamExt;
        let replicas = self.cold.replicas();
        let results: Vec<Result<Option<ObjectId>, (ObjectId, TieringError)>> =
            futures::stream::iter(ids.iter().copied())
                .map(|id| {
                    let replicas = replicas.clone();
                    async move {
                        self.replicate_one(&replicas, &id)
                            .await
                            .map_err(|e| (id, e))
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
        let mut done = Vec::new();
        let mut settled = Vec::new();
        let mut first_error = None;
        for result in results {
            match result {
                Ok(Some(id)) => done.push(id),
                Ok(None) => {}
                Err((id, e)) => {
                    tracing::warn!(object = %id, error = %e, "replica not written; the object stays queued");
                    first_error.get_or_insert(e);
                }
            }
        }
        // objects that need no replica (in a pack, or gone) leave the queue without one
        for id in ids {
            if !done.contains(id) {
                settled.push(*id);
            }
        }
        let (index, node, written) = (self.index.clone(), self.node.clone(), done.clone());
        blocking(move || Ok(index.set_replicated(&node, &written, true)?)).await?;
        if first_error.is_none() {
            let (index, node) = (self.index.clone(), self.node.clone());
            let settled = self.needing_no_replica(settled).await?;
            blocking(move || Ok(index.set_replicated(&node, &settled, false)?)).await?;
        }
        if let Some(m) = &self.metrics {
            m.replicated_objects.inc_by(done.len() as u64);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done.len()),
        }
    }

    /// Of `ids` (not replicated by this pass), those that need no replica: gone from
    /// the index, or with a recorded pack copy.
    async fn needing_no_replica(&self, ids: Vec<ObjectId>) -> Result<Vec<ObjectId>, TieringError> {
        let index = self.index.clone();
        blocking(move || {
            let mut out = Vec::new();
            for id in ids {
                match index.object(&id)? {
                    None => out.push(id),
                    Some(r) if !r.cold.is_empty() => out.push(id),
                    Some(_) => {}
                }
            }
            Ok(out)
        })
        .await
    }

    /// Copies one hot object to the replicas and reads it back. `Ok(None)`: it needs no
    /// replica (in a pack already, or gone).
    async fn replicate_one(
        &self,
        replicas: &strata_tiers::ColdStore,
        id: &ObjectId,
    ) -> Result<Option<ObjectId>, TieringError> {
        let (index, oid) = (self.index.clone(), *id);
        let Some(record) = blocking(move || Ok(index.object(&oid)?)).await? else {
            return Ok(None);
        };
        if !record.cold.is_empty() || record.replica {
            // in a pack, or replicated already
            return Ok(None);
        }
        let path = self.hot.path_of(id);
        if !path.exists() {
            return Err(TieringError::Unreadable {
                id: id.to_hex(),
                detail: format!(
                    "no hot file at {} to replicate, and no pack copy",
                    path.display()
                ),
            });
        }
        // never into a prefix another archive claimed (once per process)
        if let Some(claim) = &self.claim {
            self.claimed
                .get_or_try_init(|| async { claim().await.map_err(TieringError::Other) })
                .await?;
        }
        replicas
            .put_file(id, bytes::Bytes::new(), &path, None)
            .await?;
        let size = replicas.verify(id).await?;
        if size != record.size {
            replicas.delete(id).await?;
            return Err(TieringError::Other(format!(
                "replica of {id} reads back as {size} bytes, not {}; deleted, to be written again",
                record.size
            )));
        }
        Ok(Some(*id))
    }

    /// One pass over this node's replication queue: replicates what waits, then updates
    /// the lag gauges. Returns what is left waiting and the oldest wait (ms).
    pub async fn replicate_pending(&self) -> Result<(usize, u64), TieringError> {
        let (index, node) = (self.index.clone(), self.node.clone());
        let queued = blocking(move || Ok(index.replication_queue(&node, BATCH)?)).await?;
        let ids: Vec<ObjectId> = queued.iter().map(|(id, _)| *id).collect();
        let outcome = if ids.is_empty() {
            Ok(0)
        } else {
            self.replicate(&ids).await
        };
        let status = self.publish_replication_lag().await?;
        outcome.map(|_| status)
    }

    /// Sets the replication gauges from the queue; returns (waiting, oldest wait ms).
    pub async fn publish_replication_lag(&self) -> Result<(usize, u64), TieringError> {
        let (index, node) = (self.index.clone(), self.node.clone());
        let (pending, lag) =
            blocking(move || Ok(replication_lag_blocking(index.as_ref(), &node)?)).await?;
        if let Some(m) = &self.metrics {
            m.replication_pending.set(pending as i64);
            m.replication_lag_seconds.set(lag as f64 / 1000.0);
        }
        Ok((pending, lag))
    }

    /// For objects now in a recorded pack: records that they no longer count on their
    /// replicas, then deletes the replicas (record before delete: a crash in between
    /// leaves a replica no record counts on, which the orphan scan deletes).
    pub async fn drop_replicas(&self, ids: &[ObjectId]) -> Result<(), TieringError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (index, node, marked) = (self.index.clone(), self.node.clone(), ids.to_vec());
        blocking(move || Ok(index.set_replicated(&node, &marked, false)?)).await?;
        let replicas = self.cold.replicas();
        for id in ids {
            replicas.delete(id).await?;
        }
        Ok(())
    }

    /// Deletes replicas no object record counts on (dropped after a pack was recorded,
    /// a crash before the delete; the object deleted), once older than `orphan_grace`.
    /// Returns how many.
    pub async fn collect_orphan_replicas(&self, now_ms: u64) -> Result<usize, TieringError> {
        let grace = self.config.tiering.orphan_grace.as_millis() as i64;
        let replicas = self.cold.replicas();
        let listed: Vec<ObjectId> = replicas
            .list_detailed()
            .await?
            .into_iter()
            .filter(|(_, _, modified)| (now_ms as i64) - modified >= grace)
            .map(|(id, _, _)| id)
            .collect();
        let index = self.index.clone();
        let orphans = blocking(move || {
            let mut out = Vec::new();
            for id in listed {
                let counted = index.object(&id)?.is_some_and(|r| r.replica);
                if !counted {
                    out.push(id);
                }
            }
            Ok(out)
        })
        .await?;
        for id in &orphans {
            tracing::info!(object = %id, "deleting a replica no record counts on");
            replicas.delete(id).await?;
        }
        Ok(orphans.len())
    }
}

/// How many objects `node` has yet to replicate, and how long the oldest of them has
/// waited (ms; 0 when none waits).
pub fn replication_lag_blocking(
    index: &dyn crate::index::Index,
    node: &str,
) -> Result<(usize, u64), crate::index::IndexError> {
    let queued = index.replication_queue(node, usize::MAX)?;
    let now = unix_ms_now();
    let lag = queued
        .iter()
        .map(|(_, at)| now.saturating_sub(*at))
        .max()
        .unwrap_or(0);
    Ok((queued.len(), lag))
}

/// The background replicator of `strata serve`: a pass whenever a store says there is
/// work (`trigger`) and at least every second while objects wait, until `stop`.
pub async fn run_replicator(t: Tiering, trigger: Arc<Notify>, stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(1);
    super::run_passes(
        "replication",
        every,
        t.config.tiering.max_backoff,
        trigger,
        stop,
        || async { t.replicate_pending().await.map(|_| ()) },
    )
    .await
}
