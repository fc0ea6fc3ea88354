//! The HTTP endpoint: `/metrics` (Prometheus text format) and `/healthz`.

use crate::config::Config;
use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use strata_tiers::HotDisk;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub hot: HotDisk,
}

pub fn local_addr_display(config: &Config) -> String {
    format!("{}:{}", config.http.bind, config.http.port)
}

pub async fn serve(listener: TcpListener, state: HttpState, mut shutdown: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    let result = axum::serve(listener, app)
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
