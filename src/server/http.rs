//! The HTTP side: `GET /livez` (the process is up), `GET /readyz` (a policy
//! set is loaded and being served, with detail on the last reload),
//! `GET /policies` (what is loaded, from where, since when), `GET /metrics`
//! (Prometheus text format) and `GET /report` (what each policy has been
//! doing, since the start and recently); over TLS with `--http-tls-cert`.

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
        .route("/metrics", get(metrics))
        .route("/report", get(report))
        .with_state(state)
}

/// Ready while a set is served — also after a refused reload, since the
/// last good set keeps serving; the refusal is in `lastReloadError`. The
/// same for TLS: refused certificate files leave the last good certificate
/// serving, so `/readyz` stays 200 and names the refusal under
/// `tls.<listener>.lastReloadError`. Also
/// ready with broken or ignored Kubernetes objects (listed in `kubernetes`):
/// one bad object a cluster user applies must not take the pods out.
async fn readyz(AxState(state): AxState<Arc<State>>) -> (StatusCode, Json<serde_json::Value>) {
    let set = state.policies.load();
    let r = &state.reload;
    let stopping = state.shutting_down.load(Ordering::Relaxed);
    (
        if stopping {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        },
        Json(json!({
            "status": if stopping { "shutting down" } else { "ready" },
            "policies": set.policies.len(),
            "httpPolicies": set.http_policies.len(),
            "exceptions": set.exceptions.len(),
            "loadedAt": rfc3339::format(set.loaded_at),
            "reloads": {
                "applied": r.applied_total.load(Ordering::Relaxed),
                "unchanged": r.unchanged_total.load(Ordering::Relaxed),
                "errors": r.errors_total.load(Ordering::Relaxed),
            },
            "lastReloadError": r.last_error(),
            "kubernetes": r.kube(),
            "jwksCaBundleError": crate::identity::tls::ca_bundle_error(),
            // Never affects readiness: the shadow set enforces nothing.
            "shadow": state.options.shadow.as_ref().map(|s| {
                let set = s.policies.load();
                json!({
                    "policies": set.policies.len(),
                    "exceptions": set.exceptions.len(),
                    "loadedAt": rfc3339::format(set.loaded_at),
                    "reloads": {
                        "applied": s.reload.applied_total.load(Ordering::Relaxed),
                        "unchanged": s.reload.unchanged_total.load(Ordering::Relaxed),
                        "errors": s.reload.errors_total.load(Ordering::Relaxed),
                    },
                    "lastReloadError": s.reload.last_error(),
                    "kubernetes": s.reload.kube(),
                })
            }),
            "tls": tls_listeners(&state)
                .into_iter()
                .map(|t| (t.listener().label(), t.status()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        })),
    )
}

async fn policies(AxState(state): AxState<Arc<State>>) -> Json<serde_json::Value> {
    let set = state.policies.load();
    let policies: Vec<_> = set
        // Envoy-mode policies first: their positions are the index's.
        .all_policies()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "name": p.name,
                "mode": p.mode.as_str(),
                "source": p.location.source(),
                "file": p.location.path.display().to_string(),
                "document": p.location.document,
                "line": p.location.line,
                "loadedAt": rfc3339::format(p.loaded_at),
                "failurePolicy": match p.failure_policy {
                    FailurePolicy::Fail => "Fail",
                    FailurePolicy::Ignore => "Ignore",
                },
                "validationActions": p.actions.names(),
                "validations": p.validations.len(),
                "exceptions": p.exceptions.iter().map(|e| e.exception.name.as_str()).collect::<Vec<_>>(),
                // The attribute and how many literals, never the literals
                // (HTTP-mode policies are not indexed: null).
                "selection": set.index.selection(i).map(|s| s.to_json()),
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
                "mode": e.mode.as_str(),
                "policies": e.policy_refs,
            })
        })
        .collect();
    Json(json!({
        "loadedAt": rfc3339::format(set.loaded_at),
        "policies": policies,
        "exceptions": exceptions,
        "kubernetes": state.reload.kube(),
    }))
}

/// Per-policy counts since the start and over the recent windows
/// ([`crate::telemetry::report`]): the policies served, in evaluation order,
/// then the shadow set's, then those a reload removed that still count in
/// the last hour.
async fn report(AxState(state): AxState<Arc<State>>) -> Json<crate::telemetry::report::ReportDoc> {
    Json(crate::telemetry::report::view(&state))
}

/// Prometheus text exposition: the request-path series of
/// [`crate::telemetry::metrics`] plus the policy set and reload state.
async fn metrics(
    AxState(state): AxState<Arc<State>>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    use std::fmt::Write as _;
    let set = state.policies.load();
    let r = &state.reload;
    let mut extra = String::new();
    let _ = write!(
        extra,
        "# HELP celgate_policies Policies and exceptions in the set being served.\n\
         # TYPE celgate_policies gauge\n\
         celgate_policies{{kind=\"ValidatingPolicy\"}} {}\n\
         celgate_policies{{kind=\"PolicyException\"}} {}\n\
         # HELP celgate_policy_set_loaded_timestamp_seconds When the set being served was loaded.\n\
         # TYPE celgate_policy_set_loaded_timestamp_seconds gauge\n\
         celgate_policy_set_loaded_timestamp_seconds {}\n\
         # HELP celgate_policy_reloads_total Reloads, by result: applied (a new set serves), unchanged, error (refused; the last good set serves).\n\
         # TYPE celgate_policy_reloads_total counter\n\
         celgate_policy_reloads_total{{result=\"applied\"}} {}\n\
         celgate_policy_reloads_total{{result=\"unchanged\"}} {}\n\
         celgate_policy_reloads_total{{result=\"error\"}} {}\n\
         # HELP celgate_policy_reload_errors_total Reloads refused because the new documents do not load.\n\
         # TYPE celgate_policy_reload_errors_total counter\n\
         celgate_policy_reload_errors_total {}\n\
         # HELP celgate_policy_reload_failing 1 while the latest reload was refused (cleared by the next good one).\n\
         # TYPE celgate_policy_reload_failing gauge\n\
         celgate_policy_reload_failing {}\n",
        set.policies.len(),
        set.exceptions.len(),
        set.loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        r.applied_total.load(Ordering::Relaxed),
        r.unchanged_total.load(Ordering::Relaxed),
        r.errors_total.load(Ordering::Relaxed),
        r.errors_total.load(Ordering::Relaxed),
        u8::from(r.last_error().is_some()),
    );
    extra.push_str(&crate::telemetry::extra_metrics());
    extra.push_str(&super::tls::render_metrics(&tls_listeners(&state)));
    extra.push_str(&state.pool.render_metrics());
    if let Some(shadow) = &state.options.shadow {
        extra.push_str(&shadow.render_metrics());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::metrics::global().render(&extra),
    )
}

/// Serves the routes on `listener`, over TLS when `--http-tls-cert` is set.
pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match state.options.http_tls.clone() {
        Some(tls) => {
            let listener = super::tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, router(state))
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The listeners with TLS.
fn tls_listeners(state: &State) -> Vec<&super::tls::ServerTls> {
    [&state.options.tls, &state.options.http_tls]
        .into_iter()
        .flatten()
        .map(|t| &**t)
        .collect()
}
