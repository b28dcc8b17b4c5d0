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
use super::{limits, State};
use crate::engine::FailureReason;
use crate::httpmode::{self, HttpMode};
use crate::telemetry::metrics::{self, DecidedBy, Mode};
use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::Router;
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
        let body = match read_body(&state, body, &parts.headers).await {
            Ok(b) => b,
            Err(why) => {
                count(DecidedBy::Unreadable, started);
                let mut r = httpmode::refusal(&state.config, FailureReason::Unreadable);
                *r.status_mut() = u16::try_from(why.status(&state.config))
                    .ok()
                    .and_then(|s| http::StatusCode::from_u16(s).ok())
                    .unwrap_or(http::StatusCode::BAD_REQUEST);
                return into_axum(r);
            }
        };
        let set = state.policies.load_full();
        let config = state.config.clone();
        let decided = limits::on_pool(&state, move || {
            httpmode::answer(&set, &config, &mode, &parts, &body)
        })
        .await;
        match decided {
            Ok(r) => into_axum(r),
            Err(reason) => {
                count(
                    match reason {
                        FailureReason::Overload => DecidedBy::Overload,
                        FailureReason::Timeout => DecidedBy::Timeout,
                        _ => DecidedBy::Internal,
                    },
                    started,
                );
                into_axum(httpmode::refusal(&state.config, reason))
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

fn into_axum(r: http::Response<bytes::Bytes>) -> Response {
    r.map(Body::from).into_response()
}
