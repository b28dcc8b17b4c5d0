//! `envoy.service.auth.v3.Authorization/Check`.

use super::decode::{self, Unreadable};
use super::State;
use crate::decision::to_check_response;
use crate::engine::{self, Decision, FailureReason};
use crate::telemetry::metrics::{self, DecidedBy, Protocol};
use crate::telemetry::otel::DECISION_TARGET;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use futures_util::FutureExt as _;
use prost::Message as _;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tonic::codegen::{http, Bytes};
use tonic::{Request, Response, Status};
use tracing::field::Empty;

#[derive(Debug, Clone)]
pub struct AuthzService {
    state: Arc<State>,
}

impl AuthzService {
    pub fn new(state: Arc<State>) -> Self {
        AuthzService { state }
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// One decision. A panic anywhere in evaluation is caught and answered
    /// with the failure denial: a request can never take the server down or
    /// slip through.
    pub fn decide(&self, request: &CheckRequest) -> Decision {
        self.decide_traced(request, false).0
    }

    /// As [`AuthzService::decide`]; with `trace`, also what each policy did.
    pub fn decide_traced(
        &self,
        request: &CheckRequest,
        trace: bool,
    ) -> (Decision, Vec<engine::PolicyTrace>) {
        self.decide_traced_if(request, trace, None, || true)
    }

    /// As [`AuthzService::decide_traced`]; the decision is counted in
    /// `authz_decisions_total` only if `answers()` says it is the answer
    /// (false when the deadline answered first: see [`super::limits`]).
    pub fn decide_traced_if(
        &self,
        request: &CheckRequest,
        trace: bool,
        deadline: Option<Instant>,
        answers: impl FnOnce() -> bool,
    ) -> (Decision, Vec<engine::PolicyTrace>) {
        self.decide_with(Instant::now(), answers, |set, config| {
            Some(engine::evaluate_within(
                set, config, request, deadline, trace,
            ))
        })
        .expect("an evaluation in full always decides")
    }

    /// As [`AuthzService::decide_traced`], on the thread that received the
    /// request, within the first `units` of the cost budget and without
    /// blocking ([`engine::evaluate_inline`]); `None`, with nothing
    /// counted, when the evaluation needs more. `started` is when the
    /// request was received: the decision's duration counts from there.
    pub fn decide_inline(
        &self,
        request: &CheckRequest,
        trace: bool,
        units: u64,
        started: Instant,
    ) -> Option<(Decision, Vec<engine::PolicyTrace>)> {
        self.decide_with(
            started,
            || true,
            |set, config| engine::evaluate_inline(set, config, request, units, trace),
        )
    }

    /// Runs `evaluate` on the current policy set, catching a panic (the
    /// failure denial), and counts the decision, timed from `started`, in
    /// metrics when `answers()`.
    fn decide_with(
        &self,
        started: Instant,
        answers: impl FnOnce() -> bool,
        evaluate: impl FnOnce(
            &crate::policy::PolicySet,
            &engine::EngineConfig,
        ) -> Option<(Decision, Vec<engine::PolicyTrace>)>,
    ) -> Option<(Decision, Vec<engine::PolicyTrace>)> {
        let set = self.state.policies.load();
        let config = &self.state.config;
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluate(&set, config)));
        let metrics = metrics::global();
        match result {
            Ok(None) => None,
            Ok(Some((d, traces))) => {
                if answers() && metrics.enabled() {
                    let policy = d.policy.as_deref().and_then(|p| set.get(p));
                    let how = match (policy, &d.error) {
                        (Some(p), None) => DecidedBy::Policy {
                            policy: &p.metrics,
                            allowed: d.allowed(),
                        },
                        (Some(p), Some(_)) => DecidedBy::Error(&p.metrics),
                        (None, _) => DecidedBy::Default,
                    };
                    metrics.decided(how, started.elapsed());
                }
                Some((d, traces))
            }
            Err(_) => {
                tracing::error!("policy evaluation panicked; request denied");
                if answers() {
                    metrics.decided(DecidedBy::Internal, started.elapsed());
                }
                let d = engine::failure_decision(
                    config,
                    FailureReason::Internal,
                    "internal error during evaluation".into(),
                );
                Some((d, Vec::new()))
            }
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        // The server's own path (`CheckService`) hands the shadow comparison
        // over once the reply has gone out; a caller of this method has no
        // reply to wait for, and the comparison is dropped.
        let (decision, _shadow) = self
            .decide_request(
                Arc::new(request),
                Some(&metadata),
                Protocol::Grpc,
                Instant::now(),
            )
            .await;
        Ok(Response::new(to_check_response(decision.response)))
    }
}

impl AuthzService {
    /// One decision on a request read off any listener, with everything
    /// around it: the span (a child of the caller's trace context, from
    /// `metadata` or the request's headers), the decision itself (inline or
    /// on the decision threads, within the deadline), the decision log, the
    /// per-listener count, and the shadow comparison to hand over once the
    /// answer is sent. `started` is when the request was read: the
    /// decision's deadline and duration count from there.
    pub(crate) async fn decide_request(
        &self,
        request: Arc<CheckRequest>,
        metadata: Option<&tonic::metadata::MetadataMap>,
        protocol: Protocol,
        started: Instant,
    ) -> (Decision, Option<super::shadow::ShadowJob>) {
        let span = check_span();
        let traced = !span.is_disabled();
        if traced {
            join_callers_trace(&span, metadata, &request);
            span.record("celgate.protocol", protocol.as_str());
        }
        let (decision, traces) = super::limits::decide(
            self,
            request.clone(),
            traced && self.state.options.trace_policies,
            started,
        )
        .await;
        let took = started.elapsed();
        if traced {
            record_span(&span, &request, &decision, &traces);
        }
        let logged = match &self.state.options.decision_log {
            Some(log) => log.record(&request, &decision, took),
            None => None,
        };
        let m = metrics::global();
        if m.enabled() {
            m.answered(protocol, decision.allowed());
        }
        tracing::debug!(
            allowed = decision.allowed(),
            status = decision.http_status(),
            policy = decision.policy.as_deref().unwrap_or(""),
            protocol = protocol.as_str(),
            "decision"
        );
        let shadow = super::shadow::sample(&self.state, &request, &decision, logged);
        (decision, shadow)
    }

    /// Records `d`, the denial of a request refused before any policy ran
    /// (it could not be read, or its forwarded attributes cannot be
    /// trusted), like any decision: span, decision log, metrics (as
    /// unreadable) and a WARN line naming the kind of problem, never the
    /// request's bytes.
    pub(crate) fn record_refusal(
        &self,
        metadata: Option<&tonic::metadata::MetadataMap>,
        d: &Decision,
        protocol: Protocol,
        kind: &'static str,
        why: &dyn std::fmt::Display,
    ) {
        let span = check_span();
        let request = CheckRequest::default();
        if !span.is_disabled() {
            join_callers_trace(&span, metadata, &request);
            span.record("celgate.protocol", protocol.as_str());
            record_span(&span, &request, d, &[]);
        }
        let m = metrics::global();
        m.decided(DecidedBy::Unreadable, std::time::Duration::ZERO);
        if m.enabled() {
            m.answered(protocol, false);
        }
        if let Some(log) = &self.state.options.decision_log {
            log.record(&request, d, std::time::Duration::ZERO);
        }
        tracing::warn!(kind, protocol = protocol.as_str(), "request denied: {why}");
    }
}

/// The span of one `Check`, read or not: its attributes are filled in once
/// the decision is made ([`record_span`]).
pub(super) fn check_span() -> tracing::Span {
    tracing::info_span!(
        target: DECISION_TARGET,
        "ext_authz check",
        otel.kind = "server",
        otel.status_code = Empty,
        decision = Empty,
        "http.response.status_code" = Empty,
        "celgate.policy" = Empty,
        "celgate.validation" = Empty,
        "celgate.policies_evaluated" = Empty,
        "celgate.error" = Empty,
        "celgate.audit" = Empty,
        "celgate.protocol" = Empty,
        "http.request.method" = Empty,
        "url.path" = Empty,
    )
}

/// Makes `span` a child of the caller's W3C trace context (`traceparent`,
/// `tracestate`): first the gRPC metadata, where a tracing Envoy puts the
/// context of its ext_authz client span, then the checked request's headers
/// (the client's own context, when Envoy does not trace).
pub(super) fn join_callers_trace(
    span: &tracing::Span,
    metadata: Option<&tonic::metadata::MetadataMap>,
    request: &CheckRequest,
) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if let Some(metadata) = metadata.filter(|m| m.contains_key("traceparent")) {
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&MetadataExtractor(metadata))
        });
        let _ = span.set_parent(cx);
        return;
    }
    let Some(http) = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return;
    };
    if crate::cel::eval::request::request_header(http, "traceparent").is_none() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(http)));
    let _ = span.set_parent(cx);
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The checked request's headers, in either encoding (`headers` or
/// `header_map`); values that are not UTF-8 are absent.
struct HeaderExtractor<'a>(
    &'a envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match crate::cel::eval::request::request_header(self.0, key)? {
            std::borrow::Cow::Borrowed(v) => std::str::from_utf8(v).ok(),
            // Repeated in `header_map`: not a valid trace context anyway.
            std::borrow::Cow::Owned(_) => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        crate::cel::eval::request::request_header_names(self.0)
    }
}

/// The decision's attributes. Never a header value, a token or an error
/// message (which may quote request data): the failing field only.
pub(super) fn record_span(
    span: &tracing::Span,
    request: &CheckRequest,
    d: &Decision,
    traces: &[engine::PolicyTrace],
) {
    span.record("decision", if d.allowed() { "allow" } else { "deny" });
    span.record("http.response.status_code", d.http_status());
    span.record("celgate.policies_evaluated", d.evaluated as i64);
    if let Some(p) = &d.policy {
        span.record("celgate.policy", p.as_str());
    }
    if let Some(i) = d.validation {
        span.record("celgate.validation", i as i64);
    }
    if let Some(e) = &d.error {
        // The summary (field and error kind), never the message.
        span.record("celgate.error", e.summary().as_str());
        span.record("otel.status_code", "ERROR");
    }
    if let Some(h) = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    {
        span.record("http.request.method", h.method.as_str());
        let path = h.path.split_once('?').map_or(h.path.as_str(), |(p, _)| p);
        span.record("url.path", path);
    }
    if !d.audit.is_empty() {
        let names: Vec<&str> = d.audit.iter().map(|a| a.policy.as_str()).collect();
        span.record("celgate.audit", names.join(",").as_str());
    }
    for a in &d.audit {
        tracing::info!(
            target: DECISION_TARGET,
            parent: span,
            policy = %a.policy,
            status = a.status,
            validation = a.validation.map_or(-1, |i| i as i64),
            error = a.error.as_deref().unwrap_or(""),
            enforced = a.enforced,
            "policy audit: would deny"
        );
    }
    for t in traces {
        tracing::info!(
            target: DECISION_TARGET,
            parent: span,
            policy = %t.policy,
            outcome = %t.outcome,
            exception = t.exception.as_deref().unwrap_or(""),
            "policy evaluated"
        );
    }
}

/// The gRPC path of `Check`.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// `envoy.service.auth.v3.Authorization` on the wire. Instead of tonic's
/// generated server (which answers a request it cannot decode, or one over
/// its size limit, with a gRPC error, and a client set to fail open then
/// lets the request through), this reads the call itself: at most
/// `--max-request-bytes` of it, decoded leniently ([`decode`]). Every `Check`
/// is answered with a `CheckResponse`: a request that cannot be read, and a
/// panic anywhere on the way, get the failure denial.
#[derive(Debug, Clone)]
pub struct CheckService {
    inner: AuthzService,
}

impl CheckService {
    pub fn new(state: Arc<State>) -> Self {
        CheckService {
            inner: AuthzService::new(state),
        }
    }
}

impl tonic::server::NamedService for CheckService {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for CheckService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let svc = self.inner.clone();
        Box::pin(async move {
            if req.uri().path() != CHECK_PATH {
                return Ok(Status::unimplemented("").into_http());
            }
            let (response, shadow) = svc.answer(req).await;
            let mut reply = grpc_reply(&response);
            if let Some(job) = shadow {
                // Submitted when the body is dropped: after its last frame
                // went to the connection (or the caller went away).
                reply = reply.map(|body| {
                    tonic::body::Body::new(AfterReply {
                        body,
                        job: Some(job),
                    })
                });
            }
            Ok(reply)
        })
    }
}

impl AuthzService {
    /// One `Check` call, from its HTTP/2 request to the `CheckResponse`, with
    /// the shadow comparison to hand over once it is sent.
    async fn answer(
        &self,
        req: http::Request<tonic::body::Body>,
    ) -> (CheckResponse, Option<super::shadow::ShadowJob>) {
        let (parts, body) = req.into_parts();
        let limit = self.state.options.max_request_bytes();
        // A request's message has almost always arrived with its headers:
        // it is read without arming the read timeout (a timer costs a
        // clock read and a reference on the runtime shared by every
        // thread); only one still on its way gets the timeout.
        let mut reading = std::pin::pin!(decode::read_message(body, limit));
        let read = match futures_util::poll!(reading.as_mut()) {
            std::task::Poll::Ready(read) => read,
            std::task::Poll::Pending => {
                tokio::time::timeout(self.state.options.limits.read_timeout, reading)
                    .await
                    .unwrap_or(Err(Unreadable::Slow))
            }
        }
        .and_then(|bytes| decode::decode_check_request(&bytes));
        let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers);
        let request = match read {
            Ok(r) => r,
            Err(Unreadable::Transport) => {
                // The stream broke (the caller cancelled, e.g. Envoy when its
                // client went away): nobody is left to answer and nothing
                // was decided, so this is not counted as a decision.
                tracing::debug!("check cancelled before its request arrived");
                let d = engine::failure_decision(
                    &self.state.config,
                    FailureReason::Unreadable,
                    "request not received".into(),
                );
                return (to_check_response(d.response), None);
            }
            Err(why) => return (self.unreadable(&metadata, &why), None),
        };
        // Straight into its `Arc`, the decision's shared form: the request
        // (about a kilobyte) is not moved through a tonic `Request` and the
        // trait's boxed future on the way.
        let request = Arc::new(request);
        let started = Instant::now();
        match std::panic::AssertUnwindSafe(self.decide_request(
            request,
            Some(&metadata),
            Protocol::Grpc,
            started,
        ))
        .catch_unwind()
        .await
        {
            Ok((decision, job)) => (to_check_response(decision.response), job),
            Err(_) => {
                tracing::error!("the check failed outside policy evaluation; request denied");
                metrics::global().decided(DecidedBy::Internal, started.elapsed());
                let d = engine::failure_decision(
                    &self.state.config,
                    FailureReason::Internal,
                    "internal error while answering".into(),
                );
                (to_check_response(d.response), None)
            }
        }
    }

    /// The failure denial for a request that could not be read, recorded
    /// like any decision (span, decision log, metrics, a WARN line naming
    /// the problem, never the request's bytes).
    fn unreadable(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        why: &Unreadable,
    ) -> CheckResponse {
        let d = engine::failure_decision(
            &self.state.config,
            FailureReason::Unreadable,
            format!("request unreadable: {why}"),
        );
        self.record_refusal(Some(metadata), &d, Protocol::Grpc, why.kind(), why);
        to_check_response(d.response)
    }
}

/// A unary gRPC reply carrying `response`, status OK.
fn grpc_reply(response: &CheckResponse) -> http::Response<tonic::body::Body> {
    let len = response.encoded_len();
    let mut data = Vec::with_capacity(5 + len);
    data.push(0);
    data.extend_from_slice(&(len as u32).to_be_bytes());
    response
        .encode(&mut data)
        .expect("a Vec grows to fit the message");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut reply = http::Response::new(tonic::body::Body::new(Reply {
        data: Some(Bytes::from(data)),
        trailers: Some(trailers),
    }));
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    reply
}

/// One message, then the trailers.
struct Reply {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let frame = match (self.data.take(), self.trailers.take()) {
            (Some(d), t) => {
                self.trailers = t;
                Some(Ok(http_body::Frame::data(d)))
            }
            (None, Some(t)) => Some(Ok(http_body::Frame::trailers(t))),
            (None, None) => None,
        };
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// A reply body that hands its shadow comparison over when dropped.
struct AfterReply {
    body: tonic::body::Body,
    job: Option<super::shadow::ShadowJob>,
}

impl Drop for AfterReply {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            job.submit();
        }
    }
}

impl http_body::Body for AfterReply {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The largest message the other gRPC services (health, reflection) read.
const SMALL_MESSAGE_BYTES: usize = 64 << 10;

/// The Envoy protos' file descriptor set (built from `proto/` by build.rs),
/// for server reflection.
pub const AUTHZ_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/authz_descriptor.bin"));

pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    phase: tokio::sync::watch::Receiver<super::Phase>,
) -> Result<(), tonic::transport::Error> {
    use super::limits;
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(limits::TCP_KEEPALIVE));
    // grpc.health.v1: "" and the Authorization service are SERVING until
    // shutdown starts, so probes and load balancers stop sending first.
    let (reporter, health) = tonic_health::server::health_reporter();
    let health = health
        .max_decoding_message_size(SMALL_MESSAGE_BYTES)
        .max_encoding_message_size(SMALL_MESSAGE_BYTES);
    reporter.set_serving::<CheckService>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(AUTHZ_DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| {
        tracing::error!(error = %e, "reflection descriptors are broken");
        e
    });
    let reflection_v1alpha = reflection().build_v1alpha();
    // The evaluation threads start before the first request; the HTTP/2
    // and message limits are explicit (tonic leaves concurrent streams
    // unlimited). See `limits`.
    let threads = state.pool.start(&state.options.limits);
    if let Some(shadow) = &state.options.shadow {
        shadow.start();
    }
    let tls = state.options.tls.clone();
    tracing::debug!(threads, "evaluation threads ready");
    let mut router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits::MAX_CONCURRENT_STREAMS))
        .http2_max_header_list_size(Some(limits::MAX_HEADER_LIST_BYTES))
        .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
        .add_service(CheckService::new(state))
        .add_service(health);
    if let (Ok(v1), Ok(v1alpha)) = (reflection_v1, reflection_v1alpha) {
        router = router
            .add_service(
                v1.max_decoding_message_size(SMALL_MESSAGE_BYTES)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                v1alpha
                    .max_decoding_message_size(SMALL_MESSAGE_BYTES)
                    .max_encoding_message_size(usize::MAX),
            );
    }
    let mut not_ready = phase.clone();
    tokio::spawn(async move {
        if not_ready
            .wait_for(|p| *p >= super::Phase::NotReady)
            .await
            .is_ok()
        {
            reporter.set_not_serving::<CheckService>().await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let mut stop = phase;
    let stopped = async move {
        let _ = stop.wait_for(|p| *p == super::Phase::Stop).await;
    };
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(super::tls::incoming(incoming, tls), stopped)
                .await
        }
        None => router.serve_with_incoming_shutdown(incoming, stopped).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
    use opentelemetry::propagation::Extractor as _;

    #[test]
    fn trace_context_is_found_in_header_map_too() {
        let h = HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    HeaderValue {
                        key: "traceparent".into(),
                        value: String::new(),
                        raw_value: b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                            .to_vec(),
                    },
                    HeaderValue {
                        key: "tracestate".into(),
                        value: String::new(),
                        raw_value: b"\xff".to_vec(),
                    },
                ],
            }),
            ..Default::default()
        };
        let x = HeaderExtractor(&h);
        assert_eq!(
            x.get("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(x.get("tracestate"), None, "not UTF-8: absent");
        assert_eq!(x.keys(), ["traceparent", "tracestate"]);
    }

    #[test]
    fn the_reply_is_one_framed_message_then_grpc_status_ok() {
        let response = CheckResponse::default();
        let mut reply = grpc_reply(&response);
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()["content-type"], "application/grpc");
        let body = reply.body_mut();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut frames = Vec::new();
        rt.block_on(async {
            while let Some(f) = std::future::poll_fn(|cx| {
                http_body::Body::poll_frame(std::pin::Pin::new(&mut *body), cx)
            })
            .await
            {
                frames.push(f.unwrap());
            }
        });
        assert_eq!(frames.len(), 2);
        let data = frames[0].data_ref().unwrap();
        assert_eq!(&data[..5], &[0, 0, 0, 0, response.encoded_len() as u8]);
        assert_eq!(frames[1].trailers_ref().unwrap()["grpc-status"], "0");
    }
}
