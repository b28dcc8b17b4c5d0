//! Kyverno's HTTP authorization protocol at the root of the authorization
//! listener (`--authz-http-addr`): every path other than `/envoy/...` and
//! `/forward-auth` is a request for the HTTP-mode policies
//! (`spec.evaluation.mode: HTTP`) to decide, answered as the Kyverno Authz
//! Server's HTTP server answers ([`crate::httpmode`]).
//!
//! With no HTTP-mode policy loaded these paths answer 404, not an allow (a
//! proxy pointed at a mistyped path must not be let through).
//!
//! The evaluation runs on the decision threads, within the queue bound and
//! the decision deadline of gRPC decisions; a body over
//! `--max-request-bytes` or slower than the read timeout is refused with a
//! 413 or 408, a full queue or a passed deadline is the failure denial.

use super::authz_http::read_body;
use super::grpc::{check_span, join_callers_trace, record_span};
use super::{limits, State};
use crate::engine::{Decision, EvalError, FailureReason, HttpDecision};
use crate::httpmode::{self, HttpMode};
use crate::telemetry::metrics::{self, DecidedBy, Mode, Protocol};
use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::Router;
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, AttributeContext, CheckRequest,
};
use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Instant;

/// The routes answering HTTP-mode requests (every path).
pub fn router(state: Arc<State>, mode: Arc<HttpMode>) -> Router {
    Router::new().fallback(answer).with_state((state, mode))
}

async fn answer(
    AxState((state, mode)): AxState<(Arc<State>, Arc<HttpMode>)>,
    req: Request,
) -> Response {
    let started = Instant::now();
    if state.policies.load().http_policies.is_empty() {
        // Without HTTP-mode policies every request would be allowed: a
        // proxy pointed at a mistyped path must not read that as an allow.
        return (
            http::StatusCode::NOT_FOUND,
            "no such endpoint on the authorization listener (and no HTTP-mode policy is loaded)\n",
        )
            .into_response();
    }
    let work = async {
        let (parts, body) = req.into_parts();
        // The span, decision log line and protocol count see the request as
        // received (method, path, host, headers), as Envoy's would.
        let seen = Arc::new(as_check_request(&parts));
        let span = check_span();
        let traced = !span.is_disabled();
        if traced {
            join_callers_trace(&span, None, &seen);
            span.record("celgate.protocol", Protocol::KyvernoHttp.as_str());
        }
        let body = match read_body(&state, body, &parts.headers).await {
            Ok(b) => b,
            Err(why) => {
                count(DecidedBy::Unreadable, started);
                let status = why.status(&state.config);
                let mut r = httpmode::refusal(&state.config, FailureReason::Unreadable);
                *r.status_mut() = u16::try_from(status)
                    .ok()
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
                    .unwrap_or(http::StatusCode::BAD_REQUEST);
                let d = HttpDecision::failed(
                    FailureReason::Unreadable,
                    None,
                    EvalError::server(format!("request refused: {why}")),
                )
                .as_decision(status);
                record(&state, &span, &seen, &d, &[], started);
                tracing::warn!(
                    kind = why.kind(),
                    protocol = "kyverno_http",
                    "request denied: {why}"
                );
                return into_axum(r);
            }
        };
        let set = state.policies.load_full();
        let config = state.config.clone();
        let trace_policies = traced && state.options.trace_policies;
        let decided = limits::on_pool(&state, move || {
            httpmode::answer_detailed(&set, &config, &mode, &parts, &body, trace_policies)
        })
        .await;
        match decided {
            Ok(a) => {
                let status = i32::from(a.response.status().as_u16());
                let d = a.decision.as_decision(status);
                record(&state, &span, &seen, &d, &a.trace, started);
                into_axum(a.response)
            }
            Err(reason) => {
                count(
                    match reason {
                        FailureReason::Overload => DecidedBy::Overload,
                        FailureReason::Timeout => DecidedBy::Timeout,
                        _ => DecidedBy::Internal,
                    },
                    started,
                );
                let r = httpmode::refusal(&state.config, reason);
                let d =
                    HttpDecision::failed(reason, None, EvalError::server(format!("{reason:?}")))
                        .as_decision(i32::from(r.status().as_u16()));
                record(&state, &span, &seen, &d, &[], started);
                into_axum(r)
            }
        }
    };
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("the HTTP-mode request failed; request denied");
            count(DecidedBy::Internal, started);
            into_axum(httpmode::refusal(&state.config, FailureReason::Internal))
        }
    }
}

fn count(how: DecidedBy<'_>, started: Instant) {
    let m = metrics::global();
    if m.enabled() {
        m.decided_in(Mode::Http, how, started.elapsed());
    }
}

/// The span's attributes, the decision log's line and the protocol's count
/// of one answer.
fn record(
    state: &State,
    span: &tracing::Span,
    seen: &CheckRequest,
    d: &Decision,
    traces: &[crate::engine::PolicyTrace],
    started: Instant,
) {
    if !span.is_disabled() {
        record_span(span, seen, d, traces);
    }
    if let Some(log) = &state.options.decision_log {
        log.record(seen, d, started.elapsed());
    }
    let m = metrics::global();
    if m.enabled() {
        m.answered(Protocol::KyvernoHttp, d.allowed());
    }
}

/// The received request as an Envoy `CheckRequest` (method, path with its
/// query, host, lower-case headers, `x-request-id`), for the span and the
/// decision log only: the policies read the `http.CheckRequest`.
fn as_check_request(parts: &http::request::Parts) -> CheckRequest {
    let mut headers = std::collections::HashMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v: &mut String| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    let http = attribute_context::HttpRequest {
        id: headers.get("x-request-id").cloned().unwrap_or_default(),
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        host,
        headers,
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn into_axum(r: http::Response<bytes::Bytes>) -> Response {
    r.map(Body::from).into_response()
}
