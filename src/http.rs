//! The HTTP endpoint: `/metrics` (Prometheus text format) and `/healthz`, plus the
//! admin routes the `strata tier` commands use while the server runs (one process owns
//! the archive): `GET /tier/status`, `POST /tier/run`, `POST /tier/move/{study}/{to}`.
//! Admin routes answer loopback peers only.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::tiering::Tiering;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use strata_tiers::HotDisk;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub hot: HotDisk,
    pub tiering: Tiering,
}

pub fn local_addr_display(config: &Config) -> String {
    format!("{}:{}", config.http.bind, config.http.port)
}

pub async fn serve(listener: TcpListener, state: HttpState, mut shutdown: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/tier/status", get(tier_status))
        .route("/tier/run", post(tier_run))
        .route("/tier/move/{study}/{to}", post(tier_move))
        .with_state(state);
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.changed().await;
    })
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let hot = state.hot.clone();
    if let Ok(Ok(free)) = tokio::task::spawn_blocking(move || hot.free_bytes_blocking()).await {
        state.metrics.hot_free_bytes.set(free as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    let hot = state.hot.clone();
    match tokio::task::spawn_blocking(move || hot.free_bytes_blocking()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("hot tier unavailable: {e}\n"),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

type AdminReply = (StatusCode, String);

fn admin_only(peer: &SocketAddr) -> Result<(), AdminReply> {
    if peer.ip().is_loopback() {
        Ok(())
    } else {
        Err((
            StatusCode::FORBIDDEN,
            "admin routes answer loopback peers only\n".into(),
        ))
    }
}

fn json_reply<T: serde::Serialize>(value: &T) -> AdminReply {
    (
        StatusCode::OK,
        serde_json::to_string_pretty(value).unwrap_or_default(),
    )
}

fn failed(e: impl std::fmt::Display) -> AdminReply {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
}

async fn tier_status(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<HttpState>,
) -> AdminReply {
    if let Err(reply) = admin_only(&peer) {
        return reply;
    }
    let tiering = state.tiering.clone();
    match tokio::task::spawn_blocking(move || tiering.status_blocking()).await {
        Ok(Ok(status)) => json_reply(&status),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

async fn tier_run(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<HttpState>,
) -> AdminReply {
    if let Err(reply) = admin_only(&peer) {
        return reply;
    }
    match state.tiering.run_pass().await {
        Ok(report) => json_reply(&report),
        Err(e) => failed(e),
    }
}

async fn tier_move(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<HttpState>,
    Path((study, to)): Path<(String, String)>,
) -> AdminReply {
    if let Err(reply) = admin_only(&peer) {
        return reply;
    }
    match crate::tiering::worker::force_move(&state.tiering, &study, &to).await {
        Ok(report) => json_reply(&report),
        Err(e) => failed(e),
    }
}
