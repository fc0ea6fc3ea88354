//! The DICOM listener, a mini-redis skeleton: a semaphore caps associations (extra ones
//! get A-ASSOCIATE-RJ transient, local-limit-exceeded, PS3.8 9.3.4), an address
//! allow-list (A-ASSOCIATE-RJ permanent), TCP_NODELAY, backoff on accept errors, and on
//! shutdown: stop accepting, let open associations drain for up to [`DRAIN_TIMEOUT`],
//! then abort the rest. The same loop serves the DICOM TLS port.

use super::association::{serve_association, serve_tls_association};
use super::context::AssocContext;
use super::negotiation::{RJ_LOCAL_LIMIT_EXCEEDED, RJ_NOT_ALLOWED};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// How long a graceful shutdown waits for open associations.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts associations until `stop` turns true, then drains them. With `tls`, this is
/// the DICOM TLS port (PS3.15 B.1): each connection starts with a TLS handshake, and a
/// refusal (address not allowed, too many associations) closes the connection instead of
/// sending an A-ASSOCIATE-RJ, which could not be read before the handshake. `limit` caps
/// the associations of every listener sharing it (`[dicom] max_associations`).
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limit: Arc<Semaphore>,
    ctx: AssocContext,
    mut stop: watch::Receiver<bool>,
) {
    let config = ctx.config.clone();
    let metrics = ctx.archive.metrics().clone();
    let mut associations = JoinSet::new();
    let mut accept_backoff = Duration::from_millis(10);
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            Some(_) = associations.join_next(), if !associations.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => { accept_backoff = Duration::from_millis(10); conn }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(accept_backoff).await;
                    accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if !config.allowed_addresses.is_empty() && !config.allowed_addresses.contains(&peer.ip()) {
            tracing::warn!(%peer, "rejected: address not allowed");
            ctx.archive.connection_refused(
                &crate::archive::Principal::dicom("", &peer.to_string()),
                "address not in [dicom] allowed_addresses",
            );
            metrics
                .associations_rejected
                .with_label_values(&["address"])
                .inc();
            if tls.is_none() {
                let _ = stream.write_all(&RJ_NOT_ALLOWED).await;
            }
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_associations, "rejected: too many associations");
            ctx.archive.connection_refused(
                &crate::archive::Principal::dicom("", &peer.to_string()),
                "too many associations ([dicom] max_associations)",
            );
            metrics
                .associations_rejected
                .with_label_values(&["limit"])
                .inc();
            if tls.is_none() {
                let _ = stream.write_all(&RJ_LOCAL_LIMIT_EXCEEDED).await;
            }
            continue;
        };
        let (ctx, tls) = (ctx.clone(), tls.clone());
        associations.spawn(async move {
            match tls {
                Some(tls) => serve_tls_association(ctx, stream, peer, tls).await,
                None => serve_association(ctx, stream, peer).await,
            }
            drop(permit);
        });
    }
    tracing::info!(
        open = associations.len(),
        "shutting down: no new associations"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while associations.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("associations still open after {DRAIN_TIMEOUT:?}; aborting them");
        associations.shutdown().await;
    }
}
