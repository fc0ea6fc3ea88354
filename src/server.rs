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

/// The sockets `strata serve` listens on, bound by the caller (which names what failed).
pub struct Listeners {
    /// The plain DICOM port (`[dicom] port`), unless 0.
    pub dicom: Option<TcpListener>,
    /// The DICOM TLS port (`[dicom] tls_port`), unless 0.
    pub dicom_tls: Option<TcpListener>,
    /// `[http] port`: HTTPS when `[http] tls`.
    pub http: TcpListener,
    /// Plain HTTP on loopback beside HTTPS (`[http] loopback_port`), unless 0.
    pub http_loopback: Option<TcpListener>,
    /// The HL7 v2 MLLP port (`[hl7] port`), unless 0.
    pub hl7: Option<TcpListener>,
}

/// Runs the server until `shutdown` resolves, then drains and closes the archive
/// (recording a clean stop unless a store failed to sync or index). The `[tls]` files
/// are read here when HTTPS or the DICOM TLS port needs them: an unusable one is an
/// [`Error::InvalidRequest`] before anything is served.
pub async fn run(
    config: Config,
    storage: Storage,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Metrics::for_node(&config.cluster.node());
    let archive = Archive::serving(&config, &storage, metrics)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // an index written before patients were (PatientID, issuer) pairs is migrated once,
    // and patient identity changes and rejection notes the index missed (a crash
    // between the governance log and the index) are applied, before anything is served
    let migrating = archive.clone();
    crate::archive::blocking(move || migrating.migrate_patient_model_blocking()).await?;
    let reconciling = archive.clone();
    let replayed =
        crate::archive::blocking(move || reconciling.reconcile_governance_blocking()).await?;
    if replayed > 0 {
        tracing::warn!(
            records = replayed,
            "governance records the index lacked applied from the log"
        );
    }

    // the audit chain head goes to the cold tier from time to time, and at the end
    let anchor_task = archive.audit.clone().map(|log| {
        let (cold, every, lock_days, mut stop, config, index) = (
            archive.cold.clone(),
            config.audit.anchor_interval,
            config.audit.anchor_lock_days,
            shutdown_rx.clone(),
            config.clone(),
            archive.index.clone(),
        );
        // never into a cold tier another archive claimed (its own anchors would then
        // look like a rewrite of its log)
        let anchor = move || {
            let (log, cold, config, index) =
                (log.clone(), cold.clone(), config.clone(), index.clone());
            async move {
                crate::storage::cold_tier::check_marker(&config, &cold, Some(index.as_ref()))
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

    // this node says it is alive, every [cluster] heartbeat, and that it stopped
    let heartbeat_task = {
        let (node, every, mut stop) = (
            archive.clone(),
            config.cluster.heartbeat,
            shutdown_rx.clone(),
        );
        let started = crate::index::unix_ms_now();
        let beat = move |stopped: bool| {
            let node = node.clone();
            async move {
                let beating =
                    crate::archive::blocking(move || node.heartbeat_blocking(started, stopped));
                if let Err(e) = beating.await {
                    tracing::warn!(error = %e, "could not record this node's heartbeat");
                }
            }
        };
        tokio::spawn(async move {
            loop {
                beat(false).await;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => {
                        beat(true).await;
                        return;
                    }
                }
            }
        })
    };

    // governance records an earlier run could not copy to the cold tier
    let governed = archive.clone();
    tokio::spawn(async move { governed.sync_governance_or_log().await });

    // Say at once, and exactly, when the cold tier cannot be used (ingest goes on).
    let (cold, claim_config, claim_index) =
        (archive.cold.clone(), config.clone(), archive.index.clone());
    tokio::spawn(async move {
        let marker = crate::storage::cold_tier::check_marker(
            &claim_config,
            &cold,
            Some(claim_index.as_ref()),
        );
        match cold.preflight().await {
            Ok(()) => match marker.await {
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
    // replicas of what this node receives, within a bounded lag (docs/scale-out.md)
    let replication_task = config.replicates().then(|| {
        tokio::spawn(crate::tiering::replicate::run_replicator(
            archive.tiering().clone(),
            Arc::new(tokio::sync::Notify::new()),
            shutdown_rx.clone(),
        ))
    });
    // hot files of objects deleted on any node
    let purge_task = tokio::spawn(crate::tiering::purge::run_purger(
        archive.tiering().clone(),
        shutdown_rx.clone(),
    ));
    let scrub_task = config.scrub.enabled.then(|| {
        tokio::spawn(crate::tiering::scrub::run_scrubber(
            archive.tiering().clone(),
            shutdown_rx.clone(),
        ))
    });

    let Listeners {
        dicom: dicom_listener,
        dicom_tls: dicom_tls_listener,
        http: http_listener,
        http_loopback: loopback_listener,
        hl7: hl7_listener,
    } = listeners;
    // the hospital's ADT feed
    let hl7_task = match hl7_listener {
        None => None,
        Some(listener) if config.hl7.tls => {
            let listener = tls_listener(&archive, listener, "[hl7] tls", "hl7", &[], |peer| {
                crate::archive::Principal::hl7("", &peer.to_string())
            })?;
            Some(tokio::spawn(crate::hl7::serve(
                listener,
                archive.clone(),
                shutdown_rx.clone(),
            )))
        }
        Some(listener) => Some(tokio::spawn(crate::hl7::serve(
            listener,
            archive.clone(),
            shutdown_rx.clone(),
        ))),
    };
    let http_task = if config.http.tls {
        // HTTPS with the [tls] files (checked at start: a bad file stops it here)
        let listener = tls_listener(
            &archive,
            http_listener,
            "[http] tls",
            "http",
            &[b"http/1.1"],
            |peer| crate::archive::Principal::web("https", &peer.to_string()),
        )?;
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
        dicom = ?dicom_listener.as_ref().and_then(|l| l.local_addr().ok()),
        dicom_tls = ?dicom_tls_listener.as_ref().and_then(|l| l.local_addr().ok()),
        http = %http::local_addr_display(&config),
        data_dir = %config.archive.data_dir.display(),
        "strata serving"
    );
    let outbound_tls = match config.dicom.peers.iter().any(|p| p.tls) {
        true => Some(
            crate::tls::client_config(&config.tls)
                .map_err(|e| Error::InvalidRequest(format!("cannot reach TLS peers: {e}")))?,
        ),
        false => None,
    };
    let assoc_ctx = AssocContext {
        config: Arc::new(config.dicom.clone()),
        archive: archive.clone(),
        shutdown: shutdown_rx.clone(),
        principal: crate::archive::Principal::system("dimse"),
        outbound_tls,
        socket: None,
    };
    // one cap on the associations of both DICOM ports
    let limit = Arc::new(tokio::sync::Semaphore::new(config.dicom.max_associations));
    let dicom_tls = match &dicom_tls_listener {
        Some(_) => Some(
            crate::tls::server_config(&config.tls, "[dicom] tls_port", &[])
                .map_err(|e| Error::InvalidRequest(format!("cannot serve DICOM TLS: {e}")))?,
        ),
        None => None,
    };
    let mut dicom_tasks = Vec::new();
    for (listener, tls) in [(dicom_listener, None), (dicom_tls_listener, dicom_tls)] {
        if let Some(listener) = listener {
            dicom_tasks.push(tokio::spawn(crate::dimse::listener::run(
                listener,
                tls,
                limit.clone(),
                assoc_ctx.clone(),
                shutdown_rx.clone(),
            )));
        }
    }
    // the listeners hold the only clones: the archive's last handles must go with them,
    // or shutting ingest down would wait for this one forever
    drop(assoc_ctx);

    shutdown.await;
    let _ = shutdown_tx.send(true);
    for task in dicom_tasks {
        let _ = task.await;
    }
    let _ = http_task.await;
    if let Some(task) = loopback_task {
        let _ = task.await;
    }
    if let Some(task) = hl7_task {
        let _ = task.await;
    }
    if let Some(task) = anchor_task {
        let _ = task.await;
    }
    let _ = heartbeat_task.await;
    if let Some(task) = scrub_task {
        task.abort();
        let _ = task.await;
    }
    purge_task.abort();
    let _ = purge_task.await;
    if let Some(task) = replication_task {
        // a replica in progress is abandoned; the object stays queued
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

/// A TLS listener over `listener` with the `[tls]` files (`what` names the setting in
/// errors); a refused handshake is counted under `service`, logged, and audited as a
/// refused connection of the caller `who` makes of the peer's address.
fn tls_listener(
    archive: &Archive,
    listener: TcpListener,
    what: &str,
    service: &'static str,
    alpn: &[&[u8]],
    who: fn(&std::net::SocketAddr) -> crate::archive::Principal,
) -> Result<crate::tls::TlsListener, Error> {
    let tls = crate::tls::server_config(&archive.config().tls, what, alpn)
        .map_err(|e| Error::InvalidRequest(format!("cannot serve {what}: {e}")))?;
    let refused = archive.clone();
    crate::tls::TlsListener::new(listener, tls, move |peer, why| {
        refused
            .metrics()
            .tls_handshake_failures
            .with_label_values(&[service])
            .inc();
        tracing::warn!(%peer, reason = %why, service, "TLS handshake refused");
        refused.connection_refused(&who(&peer), &format!("TLS handshake: {why}"));
    })
    .map_err(|e| Error::Internal(format!("{what} listener: {e}")))
}
