//! Probes: `GET /livez` (the process is up) and `GET /readyz` (a policy set
//! is loaded and being served).

use super::State;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(AxState(state): AxState<Arc<State>>) -> (StatusCode, Json<serde_json::Value>) {
    let set = state.policies.load();
    let loaded_at: chrono::DateTime<chrono::Utc> = set.loaded_at.into();
    (
        StatusCode::OK,
        Json(serde_json::json!({
            "status": "ready",
            "policies": set.policies.len(),
            "exceptions": set.exceptions.len(),
            "loadedAt": loaded_at.to_rfc3339(),
        })),
    )
}

pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
