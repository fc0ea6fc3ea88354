//! # The HTTP adapter
//!
//! One axum router on the `[http]` port: `/metrics` (Prometheus text format),
//! `/healthz` (liveness: the process answers and its hot disk is reachable), `/readyz`
//! (readiness: index, hot disk above its floor, cold tier answering; 200 or 503 with
//! the state of each as JSON), and the admin API ([`admin`]) under `/admin/`, which answers loopback
//! peers only. Every admin route calls the application layer ([`crate::archive`]) with
//! the caller's [`Principal`](crate::archive::Principal) and maps its typed error to a
//! status with [`Error::http_status`](crate::archive::Error::http_status). DICOMweb and
//! FHIR routes join here, on the same pattern (garage's `src/api/`: parse the request
//! into a typed call once, call the use case, render the answer). The nodes of a
//! cluster fetch each other's hot objects on [`internal`].

pub mod admin;
pub mod auth;
pub mod dicomweb;
pub mod fhir;
pub mod internal;
pub mod viewer;
pub mod wado_uri;

use crate::archive::Archive;
use crate::config::Config;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use tokio::sync::watch;

pub fn local_addr_display(config: &Config) -> String {
    format!("{}:{}", config.http.bind, config.http.port)
}

/// The whole router over `archive`, every route counted and timed ([`observe`]).
pub fn router(archive: Archive) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(admin::routes())
        .merge(dicomweb::routes())
        .merge(wado_uri::routes())
        .merge(fhir::routes())
        .merge(internal::routes())
        .merge(viewer::routes(&archive))
        .route_layer(axum::middleware::from_fn_with_state(
            archive.clone(),
            auth::authenticate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            archive.clone(),
            observe,
        ))
        .with_state(archive)
}

/// Counts each request under its route template (axum's `MatchedPath`, never the
/// request's own path: labels stay a fixed set) with its method and status, and times
/// it to the response head.
async fn observe(
    State(archive): State<Archive>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = matched
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let m = archive.metrics();
    m.http_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    m.http_requests
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    response
}

/// `http://host:port` of a request, for the URLs an answer carries (RetrieveURL,
/// BulkDataURI, FHIR references): the Host header, with our `[http] port` when it names
/// none (some clients send the host alone on any port), else the loopback address.
pub fn origin(archive: &Archive, headers: &axum::http::HeaderMap) -> String {
    let port = archive.config().http.port;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(|h| {
            let has_port = !h.ends_with(']')
                && h.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if has_port || port == 80 {
                h.to_string()
            } else {
                format!("{h}:{port}")
            }
        })
        .unwrap_or_else(|| format!("127.0.0.1:{port}"));
    // HTTPS when `[http] tls`, except on the plain loopback port (its own Host port)
    let http = &archive.config().http;
    let on_loopback_port = http.loopback_port != 0
        && host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>() == Ok(http.loopback_port));
    let scheme = if http.tls && !on_loopback_port {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

/// Serves HTTP on `listener` — a [`tokio::net::TcpListener`], or a [`crate::tls::TlsListener`] for
/// HTTPS — until `shutdown` turns true.
pub async fn serve<L>(listener: L, archive: Archive, mut shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use axum::serve::ListenerExt;
    let result = axum::serve(
        listener.tap_io(|_| {}),
        router(archive).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    })
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn metrics(State(archive): State<Archive>) -> impl IntoResponse {
    let hot = archive.hot().clone();
    if let Ok(Ok(free)) = tokio::task::spawn_blocking(move || hot.free_bytes_blocking()).await {
        archive.metrics().hot_free_bytes.set(free as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        archive.metrics().render(),
    )
}

async fn healthz(State(archive): State<Archive>) -> impl IntoResponse {
    let hot = archive.hot().clone();
    match tokio::task::spawn_blocking(move || hot.free_bytes_blocking()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("hot tier unavailable: {e}\n"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn readyz(State(archive): State<Archive>) -> impl IntoResponse {
    let readiness = archive.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&readiness).unwrap_or_default(),
    )
}
