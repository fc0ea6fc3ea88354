//! `strata serve`: the DICOM listener and the HTTP endpoint, with a mini-redis skeleton —
//! a semaphore caps associations, a watch channel broadcasts shutdown, and `run` waits for
//! every association to drain before returning.

use crate::archive::Archive;
use crate::config::Config;
use crate::http;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::scp::{serve_association, ScpContext, RJ_LOCAL_LIMIT_EXCEEDED, RJ_NOT_ALLOWED};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// How long a graceful shutdown waits for open associations.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the server until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    archive: Archive,
    dicom_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let index: Arc<dyn crate::index::Index> = archive.index.clone();
    let audit = config
        .audit
        .enabled
        .then(|| crate::audit::AuditLog::open(&config.archive.data_dir))
        .transpose()?;
    let ingest = Ingest::start(
        archive.hot.clone(),
        index,
        config.archive.on_conflicting_version,
        config.ingest.max_commit_batch,
        metrics.clone(),
        audit.clone(),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tiering = archive.tiering().with_metrics(metrics.tier.clone());
    tiering.audit = audit.clone();
    let ctx = ScpContext {
        config: Arc::new(config.dicom.clone()),
        ingest: ingest.clone(),
        index: archive.index.clone(),
        reader: tiering.reader(),
        shutdown: shutdown_rx.clone(),
        audit: audit.clone(),
        actor: crate::audit::Actor::default(),
    };
    // the audit chain head goes to the cold tier from time to time, and at the end
    let anchor_task = audit.clone().map(|log| {
        let (cold, every, lock_days, mut stop) = (
            archive.cold.clone(),
            config.audit.anchor_interval,
            config.audit.anchor_lock_days,
            shutdown_rx.clone(),
        );
        tokio::spawn(async move {
            loop {
                if let Err(e) = crate::audit::anchor(&log, &cold, lock_days).await {
                    tracing::warn!(error = %e, "could not anchor the audit chain head");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => {
                        let _ = crate::audit::anchor(&log, &cold, lock_days).await;
                        return;
                    }
                }
            }
        })
    });

    // The tiering worker: ingest never waits on it, and it stops with the server.
    let tier_trigger = Arc::new(tokio::sync::Notify::new());
    let tier_task = config.tiering.enabled.then(|| {
        tokio::spawn(crate::tiering::worker::run_worker(
            tiering.clone(),
            tier_trigger.clone(),
            shutdown_rx.clone(),
        ))
    });

    let scrub_task = config.scrub.enabled.then(|| {
        tokio::spawn(crate::tiering::scrub::run_scrubber(
            tiering.clone(),
            shutdown_rx.clone(),
        ))
    });

    let http_task = tokio::spawn(http::serve(
        http_listener,
        http::HttpState {
            metrics: metrics.clone(),
            hot: archive.hot.clone(),
            tiering: tiering.clone(),
        },
        shutdown_rx.clone(),
    ));

    let limit = Arc::new(Semaphore::new(config.dicom.max_associations));
    let mut associations = JoinSet::new();
    tokio::pin!(shutdown);
    tracing::info!(
        ae_title = config.dicom.ae_title,
        dicom = %dicom_listener.local_addr()?,
        http = %http::local_addr_display(&config),
        data_dir = %config.archive.data_dir.display(),
        "strata serving"
    );
    let mut accept_backoff = Duration::from_millis(10);
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = associations.join_next(), if !associations.is_empty() => continue,
            accepted = dicom_listener.accept() => match accepted {
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
        if !config.dicom.allowed_addresses.is_empty()
            && !config.dicom.allowed_addresses.contains(&peer.ip())
        {
            tracing::warn!(%peer, "rejected: address not allowed");
            metrics
                .associations_rejected
                .with_label_values(&["address"])
                .inc();
            let _ = stream.write_all(&RJ_NOT_ALLOWED).await;
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = config.dicom.max_associations, "rejected: too many associations");
            metrics
                .associations_rejected
                .with_label_values(&["limit"])
                .inc();
            let _ = stream.write_all(&RJ_LOCAL_LIMIT_EXCEEDED).await;
            continue;
        };
        let ctx = ctx.clone();
        associations.spawn(async move {
            serve_association(ctx, stream, peer).await;
            drop(permit);
        });
    }

    tracing::info!(
        open = associations.len(),
        "shutting down: no new associations"
    );
    let _ = shutdown_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while associations.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("associations still open after {DRAIN_TIMEOUT:?}; aborting them");
        associations.shutdown().await;
    }
    let _ = http_task.await;
    if let Some(task) = anchor_task {
        let _ = task.await;
    }
    if let Some(task) = scrub_task {
        task.abort();
        let _ = task.await;
    }
    if let Some(task) = tier_task {
        // A move in progress is abandoned at its next await; every step is resumable.
        task.abort();
        let _ = task.await;
    }
    drop(ctx);
    drop(tiering);
    tokio::task::spawn_blocking(move || {
        let clean = !ingest.had_failures();
        ingest.shutdown_blocking();
        archive.close(clean)
    })
    .await??;
    tracing::info!("stopped cleanly");
    Ok(())
}
