//! `strata cluster status`: the nodes sharing the archive's index, from their heartbeats
//! (docs/scale-out.md); read beside a running server.

use super::print::{iso, print_json};
use anyhow::Result;
use strata::archive::{Archive, Principal};
use strata::config::Config;

/// Prints the nodes; exit 1 when one of them is down (silent for three heartbeats
/// without having said it stopped).
pub fn status(config: &Config, json: bool) -> Result<i32> {
    let archive = Archive::read_only(config)?;
    let nodes = archive.cluster_status_blocking(&Principal::cli_user())?;
    let down = nodes.iter().any(|n| !n.alive && !n.node.stopped);
    if json {
        print_json(&nodes)?;
    } else {
        println!(
            "{:<20} {:<8} {:<25} {:>9} {:>14} {:>14} {:>9} {:>7}  VERSION",
            "NODE", "STATE", "LAST HEARD", "SILENT s", "HOT USED", "HOT FREE", "UNREPL", "LAG s"
        );
        for n in &nodes {
            let state = match (n.alive, n.node.stopped) {
                (true, _) => "alive",
                (false, true) => "stopped",
                (false, false) => "DOWN",
            };
            println!(
                "{:<20} {:<8} {:<25} {:>9} {:>14} {:>14} {:>9} {:>7}  {}",
                n.node.node_id,
                state,
                iso(n.node.heartbeat_ms),
                n.silent_ms / 1000,
                n.node.hot_used_bytes,
                n.node.hot_free_bytes,
                n.node.replication_pending,
                n.node.replication_lag_ms / 1000,
                n.node.version
            );
        }
        println!(
            "{} nodes, {} alive",
            nodes.len(),
            nodes.iter().filter(|n| n.alive).count()
        );
    }
    Ok(if down { 1 } else { 0 })
}
