//! The nodes of an archive: each `strata serve` says, every `[cluster] heartbeat`, that
//! it is alive and how full its hot disk is ([`NodeRecord`] in the shared index), and
//! once more, `stopped`, when it stops cleanly; `strata cluster status` reads them
//! (docs/scale-out.md). An archive on RocksDB is a cluster of one.

use super::principal::Role;
use super::{Archive, Error, Principal};
use crate::index::{unix_ms_now, NodeRecord};
use serde::Serialize;

/// A node as `strata cluster status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: NodeRecord,
    /// Heard from within three heartbeats, and not stopped.
    pub alive: bool,
    /// Milliseconds since its last heartbeat.
    pub silent_ms: u64,
}

impl Archive {
    /// This node's id (`[cluster] node_id`, else the host name).
    pub fn node_id(&self) -> String {
        self.config.cluster.node()
    }

    /// Records that this node, started at `started_ms`, is alive — or, with
    /// `stopped`, that it stopped cleanly (blocking).
    pub fn heartbeat_blocking(&self, started_ms: u64, stopped: bool) -> Result<(), Error> {
        let (used, free) = match self.hot.space_blocking() {
            Ok((free, total)) => (total.saturating_sub(free), free),
            Err(_) => (0, 0),
        };
        let config = &self.config;
        let node = self.node_id();
        let (pending, lag) =
            crate::tiering::replicate::replication_lag_blocking(self.index.as_ref(), &node)?;
        self.index.set_node(&NodeRecord {
            node_id: node,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms,
            heartbeat_ms: unix_ms_now(),
            heartbeat_interval_ms: config.cluster.heartbeat.as_millis() as u64,
            dicom_port: config.dicom.port,
            http_port: config.http.port,
            hot_used_bytes: used,
            hot_free_bytes: free,
            stopped,
            url: config.cluster.advertise(&config.http),
            replication_pending: pending as u64,
            replication_lag_ms: lag,
        })?;
        Ok(())
    }

    /// Every node of the archive, this one's view of their liveness (blocking), for
    /// `principal` (who needs `auditor`); audited as a `query`.
    pub fn cluster_status_blocking(&self, principal: &Principal) -> Result<Vec<NodeView>, Error> {
        self.authorize(principal, Role::Auditor, "query", &[])?;
        let now = unix_ms_now();
        let nodes: Vec<NodeView> = self
            .index
            .nodes()?
            .into_iter()
            .map(|node| NodeView {
                alive: node.alive(now),
                silent_ms: now.saturating_sub(node.heartbeat_ms),
                node,
            })
            .collect();
        self.audit_blocking(
            principal,
            "query",
            Vec::new(),
            format!("cluster status: {} nodes", nodes.len()),
        );
        Ok(nodes)
    }
}
