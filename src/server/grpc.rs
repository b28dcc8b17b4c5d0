//! `envoy.service.auth.v3.Authorization/Check`.

use super::State;
use crate::decision::to_check_response;
use crate::engine::{self, Decision};
use crate::telemetry::metrics::{self, DecidedBy};
use crate::telemetry::otel::DECISION_TARGET;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use std::sync::Arc;
use std::time::Instant;
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
        self.decide_traced_if(request, trace, || true)
    }

    /// As [`AuthzService::decide_traced`]; the decision is counted in
    /// `authz_decisions_total` only if `answers()` says it is the answer
    /// (false when the deadline answered first: see [`super::limits`]).
    pub fn decide_traced_if(
        &self,
        request: &CheckRequest,
        trace: bool,
        answers: impl FnOnce() -> bool,
    ) -> (Decision, Vec<engine::PolicyTrace>) {
        let started = Instant::now();
        let set = self.state.policies.load();
        let config = &self.state.config;
        let mut traces = Vec::new();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if trace {
                let (d, t) = engine::evaluate_traced(&set, config, request);
                traces = t;
                d
            } else {
                engine::evaluate(&set, config, request)
            }
        }));
        let metrics = metrics::global();
        match result {
            Ok(d) => {
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
                (d, traces)
            }
            Err(_) => {
                tracing::error!("policy evaluation panicked; request denied");
                if answers() {
                    metrics.decided(DecidedBy::Internal, started.elapsed());
                }
                let d = engine::failure_decision(
                    config,
                    None,
                    "internal error during evaluation".into(),
                );
                (d, Vec::new())
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
        let request = Arc::new(request);
        let span = tracing::info_span!(
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
            "http.request.method" = Empty,
            "url.path" = Empty,
        );
        let traced = !span.is_disabled();
        if traced {
            join_callers_trace(&span, &metadata, &request);
        }
        let started = Instant::now();
        let (decision, traces) = super::limits::decide(
            self,
            request.clone(),
            traced && self.state.options.trace_policies,
        )
        .await;
        let took = started.elapsed();
        if traced {
            record_span(&span, &request, &decision, &traces);
        }
        if let Some(log) = &self.state.options.decision_log {
            log.record(&request, &decision, took);
        }
        tracing::debug!(
            allowed = decision.allowed(),
            status = decision.http_status(),
            policy = decision.policy.as_deref().unwrap_or(""),
            "decision"
        );
        Ok(Response::new(to_check_response(&decision)))
    }
}

/// Makes `span` a child of the caller's W3C trace context (`traceparent`,
/// `tracestate`): first the gRPC metadata, where a tracing Envoy puts the
/// context of its ext_authz client span, then the checked request's headers
/// (the client's own context, when Envoy does not trace).
fn join_callers_trace(
    span: &tracing::Span,
    metadata: &tonic::metadata::MetadataMap,
    request: &CheckRequest,
) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if metadata.contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&MetadataExtractor(metadata))
        });
        let _ = span.set_parent(cx);
        return;
    }
    let Some(headers) = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map(|h| &h.headers)
    else {
        return;
    };
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
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

struct HeaderExtractor<'a>(&'a std::collections::HashMap<String, String>);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The decision's attributes. Never a header value, a token or an error
/// message (which may quote request data): the failing field only.
fn record_span(
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
    reporter
        .set_serving::<AuthorizationServer<AuthzService>>()
        .await;
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
    tracing::debug!(threads, "evaluation threads ready");
    let authz = AuthorizationServer::new(AuthzService::new(state))
        .max_decoding_message_size(limits::MAX_DECODING_MESSAGE_BYTES)
        .max_encoding_message_size(limits::MAX_ENCODING_MESSAGE_BYTES);
    let mut router = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits::MAX_CONCURRENT_STREAMS))
        .http2_max_header_list_size(Some(limits::MAX_HEADER_LIST_BYTES))
        .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
        .add_service(authz)
        .add_service(health);
    if let (Ok(v1), Ok(v1alpha)) = (reflection_v1, reflection_v1alpha) {
        router = router.add_service(v1).add_service(v1alpha);
    }
    let mut not_ready = phase.clone();
    tokio::spawn(async move {
        if not_ready
            .wait_for(|p| *p >= super::Phase::NotReady)
            .await
            .is_ok()
        {
            reporter
                .set_not_serving::<AuthorizationServer<AuthzService>>()
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let mut stop = phase;
    router
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|p| *p == super::Phase::Stop).await;
        })
        .await
}
