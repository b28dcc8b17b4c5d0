//! The HTTP side: `GET /livez` (the process is up), `GET /readyz` (a policy
//! set is loaded and being served, with detail on the last reload) and
//! `GET /policies` (what is loaded, from where, since when).

use super::State;
use crate::policy::FailurePolicy;
use crate::sources::rfc3339;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/policies", get(policies))
        .with_state(state)
}

/// Ready while a set is served — also after a refused reload, since the
/// last good set keeps serving; the refusal is in `lastReloadError`.
async fn readyz(AxState(state): AxState<Arc<State>>) -> (StatusCode, Json<serde_json::Value>) {
    let set = state.policies.load();
    let r = &state.reload;
    (
        StatusCode::OK,
        Json(json!({
            "status": "ready",
            "policies": set.policies.len(),
            "exceptions": set.exceptions.len(),
            "loadedAt": rfc3339::format(set.loaded_at),
            "reloads": {
                "applied": r.applied_total.load(Ordering::Relaxed),
                "unchanged": r.unchanged_total.load(Ordering::Relaxed),
                "errors": r.errors_total.load(Ordering::Relaxed),
            },
            "lastReloadError": r.last_error(),
        })),
    )
}

async fn policies(AxState(state): AxState<Arc<State>>) -> Json<serde_json::Value> {
    let set = state.policies.load();
    let policies: Vec<_> = set
        .policies
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "source": p.location.source(),
                "file": p.location.path.display().to_string(),
                "document": p.location.document,
                "line": p.location.line,
                "loadedAt": rfc3339::format(p.loaded_at),
                "failurePolicy": match p.failure_policy {
                    FailurePolicy::Fail => "Fail",
                    FailurePolicy::Ignore => "Ignore",
                },
                "validations": p.validations.len(),
                "exceptions": p.exceptions.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let exceptions: Vec<_> = set
        .exceptions
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "source": e.location.source(),
                "file": e.location.path.display().to_string(),
                "document": e.location.document,
                "line": e.location.line,
                "loadedAt": rfc3339::format(e.loaded_at),
                "policies": e.policy_refs,
            })
        })
        .collect();
    Json(json!({
        "loadedAt": rfc3339::format(set.loaded_at),
        "policies": policies,
        "exceptions": exceptions,
    }))
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
