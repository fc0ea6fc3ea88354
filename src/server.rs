//! `strata serve`: composes the archive and its adapters in one process — the DICOM
//! listener ([`crate::dimse::listener`]), the HTTP endpoint ([`crate::http`]), and the
//! background workers (tiering policy, scrubber, audit anchoring) — over one
//! [`Archive`]. A watch channel broadcasts shutdown; `run` waits for every association
//! to drain and every worker to stop before it closes the archive.

use crate::archive::{Archive, Error};
use crate::config::Config;
use crate::dimse::context::AssocContext;
use crate::http;
use crate::metrics::Metrics;
use crate::storage::Storage;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Runs the server until `shutdown` resolves, then drains and closes the archive
/// (recording a clean stop unless a store failed to sync or index). `http_listener`
/// serves HTTPS when `[http] tls` (the `[tls]` files are read here: an unusable one is
/// an [`Error::Invalid`] before anything is served); `loopback_listener` is the plain
/// HTTP listener on loopback beside it (`[http] loopback_port`).
pub async fn run(
    config: Config,
    storage: Storage,
    dicom_listener: TcpListener,
    http_listener: TcpListener,
    loopback_listener: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Metrics::new();
    let archive = Archive::serving(&config, &storage, metrics)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // the audit chain head goes to the cold tier from time to time, and at the end
    let anchor_task = archive.audit.clone().map(|log| {
        let (cold, every, lock_days, mut stop, config) = (
            archive.cold.clone(),
            config.audit.anchor_interval,
            config.audit.anchor_lock_days,
            shutdown_rx.clone(),
            config.clone(),
        );
        // never into a cold tier another archive claimed (its own anchors would then
        // look like a rewrite of its log)
        let anchor = move || {
            let (log, cold, config) = (log.clone(), cold.clone(), config.clone());
            async move {
                crate::storage::cold_tier::check_marker(&config, &cold)
                    .await
                    .map_err(|e| e.to_string())?;
                crate::audit::anchor(&log, &cold, lock_days).await
            }
        };
        tokio::spawn(async move {
            loop {
                if let Err(e) = anchor().await {
                    tracing::warn!(error = %e, "could not anchor the audit chain head");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => {
                        let _ = anchor().await;
                        return;
                    }
                }
            }
        })
    });

    // governance records an earlier run could not copy to the cold tier
    let governed = archive.clone();
    tokio::spawn(async move { governed.sync_governance_or_log().await });

    // Say at once, and exactly, when the cold tier cannot be used (ingest goes on).
    let (cold, claim_config) = (archive.cold.clone(), config.clone());
    tokio::spawn(async move {
        match cold.preflight().await {
            Ok(()) => match crate::storage::cold_tier::check_marker(&claim_config, &cold).await {
                Ok(()) => tracing::info!(cold = cold.describe(), "cold tier preflight passed"),
                Err(e) => tracing::error!("COLD TIER NOT USABLE: {e}"),
            },
            Err(e) => tracing::error!("COLD TIER NOT USABLE: {e}"),
        }
    });

    // The tiering worker: ingest never waits on it, and it stops with the server.
    let tier_trigger = Arc::new(tokio::sync::Notify::new());
    if !config.tiering.enabled {
        // no policy pass will publish them: the per-tier gauges once, at start
        let tiering = archive.tiering().clone();
        tokio::spawn(async move { tiering.publish_status().await });
    }
    let tier_task = config.tiering.enabled.then(|| {
        tokio::spawn(crate::tiering::worker::run_worker(
            archive.tiering().clone(),
            tier_trigger.clone(),
            shutdown_rx.clone(),
        ))
    });
    let scrub_task = config.scrub.enabled.then(|| {
        tokio::spawn(crate::tiering::scrub::run_scrubber(
            archive.tiering().clone(),
            shutdown_rx.clone(),
        ))
    });

    let http_task = if config.http.tls {
        // HTTPS with the [tls] files (checked at start: a bad file stops it here)
        let tls = crate::tls::server_config(&config.tls, "[http] tls", &[b"http/1.1"])
            .map_err(|e| Error::InvalidRequest(format!("cannot serve HTTPS: {e}")))?;
        let metrics = archive.metrics().clone();
        let listener = crate::tls::TlsListener::new(http_listener, tls, move |peer, why| {
            metrics
                .tls_handshake_failures
                .with_label_values(&["http"])
                .inc();
            tracing::warn!(%peer, reason = %why, "HTTPS: TLS handshake refused");
        })
        .map_err(|e| Error::Internal(format!("HTTPS listener: {e}")))?;
        tokio::spawn(http::serve(listener, archive.clone(), shutdown_rx.clone()))
    } else {
        tokio::spawn(http::serve(
            http_listener,
            archive.clone(),
            shutdown_rx.clone(),
        ))
    };
    // plain HTTP on loopback beside HTTPS, for the CLI and local probes
    let loopback_task = loopback_listener
        .map(|listener| tokio::spawn(http::serve(listener, archive.clone(), shutdown_rx.clone())));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ae_title = config.dicom.ae_title,
        cold = archive.cold.describe(),
        dicom = ?dicom_listener.local_addr().ok(),
        http = %http::local_addr_display(&config),
        data_dir = %config.archive.data_dir.display(),
        "strata serving"
    );
    let dicom_task = tokio::spawn(crate::dimse::listener::run(
        dicom_listener,
        AssocContext {
            config: Arc::new(config.dicom.clone()),
            archive: archive.clone(),
            shutdown: shutdown_rx.clone(),
            principal: crate::archive::Principal::system("dimse"),
        },
        shutdown_rx.clone(),
    ));

    shutdown.await;
    let _ = shutdown_tx.send(true);
    let _ = dicom_task.await;
    let _ = http_task.await;
    if let Some(task) = loopback_task {
        let _ = task.await;
    }
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
    tokio::task::spawn_blocking(move || {
        let clean = archive.shutdown_blocking();
        storage.close(clean)
    })
    .await
    .map_err(|e| Error::Internal(format!("shutdown task failed: {e}")))??;
    tracing::info!("stopped cleanly");
    Ok(())
}
