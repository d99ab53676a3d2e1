//! The HTTP endpoints: /metrics, /healthz, /readyz.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// What /metrics answers: the Prometheus text exposition of a registry.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the endpoints on `listener` until the task is dropped; /readyz
/// answers 200 while `ready` is set, else 503 with `not_ready`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Render,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
) {
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, not_ready)
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP endpoint stopped");
    }
}

/// Binds `addr` and serves the endpoints there in a task of their own.
pub async fn spawn(
    addr: std::net::SocketAddr,
    metrics: Render,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(serve(listener, metrics, ready, not_ready));
    Ok(())
}
