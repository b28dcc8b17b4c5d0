//! Observability of the real binary: OTLP spans joined to the caller's
//! trace (received by an OTLP collector inside the test), exact `/metrics`
//! after a known sequence of checks, gRPC health and reflection, and the
//! decision log — none of which may carry a token or an Authorization value.

mod common;

use common::{free_port, get_blocking, hex, loopback, serve_ready, span_attr as attr, Collector};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const SECRET_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl";
const SECRET_KEY: &str = "demo-key-alice";

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

struct Server {
    child: Child,
    grpc: u16,
    http: u16,
}

impl Server {
    fn start(extra: &[&str], env: &[(&str, String)]) -> Server {
        Self::start_with(&repo("policies"), extra, env)
    }

    /// As [`Server::start`], serving the policies under `policies`.
    fn start_with(policies: &std::path::Path, extra: &[&str], env: &[(&str, String)]) -> Server {
        let extra = [&["--no-watch"], extra].concat();
        let (child, grpc, http) = serve_ready(policies, &extra, env);
        Server { child, grpc, http }
    }

    /// SIGTERM and wait for exit 0.
    fn stop(mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.wait_exit(Duration::from_secs(15));
    }

    /// Waits for the process to exit 0 on its own.
    fn wait_exit(&mut self, within: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status:?}");
                return;
            }
            assert!(start.elapsed() < within, "did not stop within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let h: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    celgate::request_json::from_value(&serde_json::json!({"attributes": {
        "source": {"address": {"socketAddress": {"address": "10.1.2.3", "portValue": 5555}}},
        "request": {"http": {"id": "req-1", "method": method, "host": "api.example", "path": path, "headers": h}}
    }}))
    .unwrap()
}

async fn check(grpc: u16, reqs: Vec<CheckRequest>) -> Vec<i32> {
    let mut c = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let mut out = Vec::new();
    for r in reqs {
        let resp = c.check(r).await.unwrap().into_inner();
        out.push(resp.status.map(|s| s.code).unwrap_or(-1));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_callers_trace_with_decision_attributes_and_no_secrets() {
    let (collector, otlp) = Collector::start().await;
    let server = tokio::task::spawn_blocking(move || {
        Server::start(
            &["--trace-policies"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
                ("OTEL_SERVICE_NAME", "celgate-under-test".into()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ],
        )
    })
    .await
    .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let codes = check(
        server.grpc,
        vec![request(
            "POST",
            "/api/orders?access_token=abc",
            &[
                ("traceparent", &format!("00-{trace_id}-{parent}-01")),
                ("authorization", &format!("Bearer {SECRET_TOKEN}")),
                ("x-api-key", SECRET_KEY),
            ],
        )],
    )
    .await;
    assert_eq!(codes, [0]);
    // Shutdown flushes what is buffered.
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let span = collector.first_span(Duration::from_secs(10)).await;
    assert_eq!(attr(&span, "celgate.protocol").as_deref(), Some("grpc"));
    assert_eq!(hex(&span.trace_id), trace_id, "joined the caller's trace");
    assert_eq!(
        hex(&span.parent_span_id),
        parent,
        "child of the caller's span"
    );
    assert_eq!(attr(&span, "decision").as_deref(), Some("allow"));
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(&span, "celgate.policy").as_deref(),
        Some("require-api-key")
    );
    assert_eq!(attr(&span, "celgate.validation").as_deref(), Some("2"));
    assert_eq!(
        attr(&span, "celgate.policies_evaluated").as_deref(),
        Some("3")
    );
    assert_eq!(attr(&span, "url.path").as_deref(), Some("/api/orders"));
    let policies: Vec<String> = span
        .events
        .iter()
        .filter_map(|e| {
            e.attributes
                .iter()
                .find(|a| a.key == "policy")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
        })
        .collect();
    assert_eq!(
        policies,
        [
            "allow-public-paths",
            "deny-unlisted-paths",
            "require-api-key"
        ]
    );
    let dump = format!("{span:?}");
    for secret in [SECRET_TOKEN, SECRET_KEY, "access_token", "abc\""] {
        assert!(
            !dump.contains(secret),
            "the span carries {secret:?}: {dump}"
        );
    }
}

/// tonic's incoming stream from an already bound listener.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_and_health_and_reflection_answer() {
    let server = tokio::task::spawn_blocking(|| Server::start(&[], &[]))
        .await
        .unwrap();
    let codes = check(
        server.grpc,
        vec![
            request("GET", "/healthz", &[]), // allow-public-paths: allow
            request("GET", "/admin", &[]),   // deny-unlisted-paths: 404
            request("GET", "/api/a", &[]),   // require-api-key: 401
            request("GET", "/api/a", &[("x-api-key", "guess")]), // require-api-key: 403
            request("GET", "/api/a", &[("x-api-key", SECRET_KEY)]), // require-api-key: allow
            request("GET", "/api/b", &[("x-api-key", "demo-key-bob")]), // require-api-key: allow
        ],
    )
    .await;
    assert_eq!(codes, [0, 7, 7, 7, 0, 0]);
    let http = server.http;
    let (status, text) =
        tokio::task::spawn_blocking(move || get_blocking(loopback(http), "/metrics").unwrap())
            .await
            .unwrap();
    assert_eq!(status, 200);
    let m = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("no series {s}:\n{text}"));
    let d = |decision: &str, source: &str, policy: &str| {
        format!("authz_decisions_total{{mode=\"envoy\",decision=\"{decision}\",source=\"{source}\",policy=\"{policy}\"}}")
    };
    assert_eq!(m(&d("allow", "policy", "allow-public-paths")), 1.0);
    assert_eq!(m(&d("deny", "policy", "deny-unlisted-paths")), 1.0);
    assert_eq!(m(&d("deny", "policy", "require-api-key")), 2.0);
    assert_eq!(m(&d("allow", "policy", "require-api-key")), 2.0);
    assert_eq!(m(&d("allow", "default", "")), 0.0);
    let e = |policy: &str, decision: &str| {
        format!("authz_policy_evaluations_total{{policy=\"{policy}\",decision=\"{decision}\"}}")
    };
    // Name order: every request meets allow-public-paths first.
    assert_eq!(m(&e("allow-public-paths", "allow")), 1.0);
    assert_eq!(m(&e("allow-public-paths", "skipped")), 5.0);
    assert_eq!(m(&e("deny-unlisted-paths", "deny")), 1.0);
    assert_eq!(m(&e("deny-unlisted-paths", "skipped")), 4.0);
    assert_eq!(m(&e("require-api-key", "deny")), 2.0);
    assert_eq!(m(&e("require-api-key", "allow")), 2.0);
    assert_eq!(m(&e("require-api-key", "error")), 0.0);
    assert_eq!(m("authz_decision_duration_seconds_count"), 6.0);
    assert_eq!(
        m("authz_decision_duration_seconds_bucket{le=\"+Inf\"}"),
        6.0
    );
    assert!(text.contains("authz_decision_duration_seconds_bucket{le=\"0.000005\"}"));
    assert_eq!(
        m("authz_policy_evaluation_duration_seconds_count{policy=\"require-api-key\"}"),
        4.0
    );
    assert_eq!(m("celgate_policies{kind=\"ValidatingPolicy\"}"), 3.0);
    assert_eq!(m("celgate_policy_reload_errors_total"), 0.0);
    assert!(text.contains("# TYPE authz_decision_duration_seconds histogram"));
    assert!(!text.contains(SECRET_KEY));

    // grpc.health.v1, for the empty name and the Authorization service.
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", server.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, 1, "{service:?} is SERVING");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    // Server reflection (v1), as grpcurl uses it.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| {
        tokio_stream_once(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        })
    };
    let mut stream = refl
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let mut stream = refl
        .server_reflection_info(ask(MessageRequest::FileContainingSymbol(
            "envoy.service.auth.v3.Authorization".into(),
        )))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = resp.message_response else {
        panic!("{resp:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    let first = String::from_utf8_lossy(&files.file_descriptor_proto[0]);
    assert!(first.contains("external_auth.proto"), "{first}");
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::iter(std::iter::once(item))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_log_lines_are_json_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let arg = log.display().to_string();
    let server = tokio::task::spawn_blocking(move || {
        Server::start(
            &[
                "--decision-log",
                &arg,
                "--decision-log-headers",
                "user-agent,x-request-id",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let codes = check(
        server.grpc,
        vec![
            request(
                "POST",
                "/api/orders?token=s3cr3t",
                &[
                    ("authorization", &format!("Bearer {SECRET_TOKEN}")),
                    ("x-api-key", SECRET_KEY),
                    ("user-agent", "curl/8"),
                    ("cookie", "session=abc"),
                ],
            ),
            request("GET", "/admin", &[("user-agent", "curl/8")]),
        ],
    )
    .await;
    assert_eq!(codes, [0, 7]);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let a = &lines[0];
    assert_eq!(a["decision"], "allow");
    assert_eq!(a["status"], 200);
    assert_eq!(a["policy"], "require-api-key");
    assert_eq!(a["method"], "POST");
    assert_eq!(a["host"], "api.example");
    assert_eq!(a["path"], "/api/orders", "no query string");
    assert_eq!(a["source"], "10.1.2.3");
    assert_eq!(a["requestId"], "req-1");
    assert_eq!(a["headers"], serde_json::json!({"user-agent": "curl/8"}));
    assert!(a["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(a["latencyUs"].is_u64());
    assert!(a["time"].is_string());
    assert_ne!(lines[0]["id"], lines[1]["id"]);
    assert_eq!(lines[1]["status"], 404);
    assert_eq!(lines[1]["decision"], "deny");
    for secret in [SECRET_TOKEN, SECRET_KEY, "s3cr3t", "session=abc", "Bearer"] {
        assert!(!text.contains(secret), "the log carries {secret:?}: {text}");
    }
}

/// `validationActions` as an operator sees it: the per-policy counter's
/// `audit_deny` and `audit_error`, the decision log's `audit` list, the
/// decision span's `celgate.audit` attribute and events, and the warning and
/// audit headers the client gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_policies_are_counted_logged_traced_and_never_enforced() {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let (collector, otlp) = Collector::start().await;
    let args = [
        "--decision-log".to_owned(),
        log.display().to_string(),
        "--audit-header".to_owned(),
        "x-celgate-audit".to_owned(),
    ];
    let server = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_with(
            &repo("tests/cases/audit/policies.yaml"),
            &args,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ],
        )
    })
    .await
    .unwrap();
    let key = ("x-api-key", SECRET_KEY);
    let requests = vec![
        request("DELETE", "/x", &[]), // a-shadow-key and b-warn-method would deny
        request("GET", "/boom", &[key]), // c-audit-broken fails under Fail
        request("GET", "/admin", &[key]), // d-deny-audit denies, enforced
        request("GET", "/x", &[key]), // nothing to record
    ];
    let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{}", server.grpc))
        .await
        .unwrap();
    let mut answers = Vec::new();
    for r in requests {
        let resp = client.check(r).await.unwrap().into_inner();
        let code = resp.status.map(|s| s.code).unwrap_or(-1);
        let headers: Vec<(String, String)> = match resp.http_response {
            Some(HttpResponse::OkResponse(ok)) => ok.response_headers_to_add,
            Some(HttpResponse::DeniedResponse(d)) => d.headers,
            _ => Vec::new(),
        }
        .into_iter()
        .filter_map(|h| h.header.map(|h| (h.key, h.value)))
        .collect();
        answers.push((code, headers));
    }
    let h = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        answers,
        [
            (
                0,
                vec![
                    h(
                        "warning",
                        "299 - \"celgate: policy b-warn-method would deny this request (status 405)\""
                    ),
                    h("x-celgate-audit", "a-shadow-key, b-warn-method"),
                ]
            ),
            (0, vec![h("x-celgate-audit", "c-audit-broken")]),
            (7, vec![]),
            (0, vec![]),
        ]
    );
    let http = server.http;
    let (_, text) =
        tokio::task::spawn_blocking(move || get_blocking(loopback(http), "/metrics").unwrap())
            .await
            .unwrap();
    let m = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("no series {s}:\n{text}"));
    let e = |policy: &str, decision: &str| {
        m(&format!(
            "authz_policy_evaluations_total{{policy=\"{policy}\",decision=\"{decision}\"}}"
        ))
    };
    let (_, listed) =
        tokio::task::spawn_blocking(move || get_blocking(loopback(http), "/policies").unwrap())
            .await
            .unwrap();
    assert!(
        !listed.contains("/boom"),
        "no literal of a matchCondition: {listed}"
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed["policies"][2]["selection"],
        serde_json::json!({"indexed": true, "attribute": "request.http.path", "values": 1, "prefixes": 0})
    );
    assert_eq!(
        listed["policies"][0]["selection"],
        serde_json::json!({"indexed": false, "reason": "no matchConditions"})
    );
    let actions: Vec<(String, serde_json::Value)> = listed["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["validationActions"].clone(),
            )
        })
        .collect();
    assert_eq!(
        actions[0],
        ("a-shadow-key".into(), serde_json::json!(["Audit"]))
    );
    assert_eq!(
        actions[4],
        ("d-deny-audit".into(), serde_json::json!(["Deny", "Audit"]))
    );
    assert_eq!(actions[6], ("z-decide".into(), serde_json::json!(["Deny"])));
    assert_eq!(e("a-shadow-key", "audit_deny"), 1.0);
    assert_eq!(e("a-shadow-key", "deny"), 0.0, "never counted as enforced");
    assert_eq!(e("a-shadow-key", "none"), 3.0);
    assert_eq!(e("b-warn-method", "audit_deny"), 1.0);
    assert_eq!(e("c-audit-broken", "audit_error"), 1.0);
    assert_eq!(e("c-audit-broken", "error"), 0.0);
    assert_eq!(e("d-deny-audit", "deny"), 1.0, "enforced: a denial");
    assert_eq!(e("d-deny-audit", "audit_deny"), 0.0);
    assert_eq!(e("z-decide", "allow"), 3.0);
    let d = |decision: &str, policy: &str| {
        m(&format!(
            "authz_decisions_total{{mode=\"envoy\",decision=\"{decision}\",source=\"policy\",policy=\"{policy}\"}}"
        ))
    };
    assert_eq!(d("allow", "z-decide"), 3.0);
    assert_eq!(d("deny", "d-deny-audit"), 1.0);
    assert!(metric(
        &text,
        "authz_decisions_total{mode=\"envoy\",decision=\"deny\",source=\"policy\",policy=\"a-shadow-key\"}"
    )
    .is_none());
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let audit: Vec<serde_json::Value> = lines.iter().map(|l| l["audit"].clone()).collect();
    assert_eq!(
        audit,
        [
            serde_json::json!([
                {"policy": "a-shadow-key", "status": 401, "validation": 1, "enforced": false},
                {"policy": "b-warn-method", "status": 405, "validation": 0, "enforced": false},
            ]),
            serde_json::json!([
                {"policy": "c-audit-broken", "status": 403,
                 "error": "spec.validations[0].expression: no_such_key", "enforced": false},
            ]),
            serde_json::json!([
                {"policy": "d-deny-audit", "status": 403, "validation": 0, "enforced": true},
            ]),
            serde_json::Value::Null,
        ]
    );
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[0]["policy"], "z-decide");
    assert!(!text.contains(SECRET_KEY));

    // The spans: one per check; the audited ones name the policies and
    // carry one event each.
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.spans.lock().unwrap().len() < 4 {
        assert!(Instant::now() < deadline, "four spans did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = collector.spans.lock().unwrap().clone();
    let mut audited: Vec<String> = spans
        .iter()
        .filter_map(|s| attr(s, "celgate.audit"))
        .collect();
    audited.sort();
    assert_eq!(
        audited,
        [
            "a-shadow-key,b-warn-method",
            "c-audit-broken",
            "d-deny-audit"
        ]
    );
    let first = spans
        .iter()
        .find(|s| attr(s, "celgate.audit").as_deref() == Some("a-shadow-key,b-warn-method"))
        .unwrap();
    let events: Vec<(String, Option<String>, Option<String>)> = first
        .events
        .iter()
        .map(|e| {
            let get = |k: &str| {
                e.attributes
                    .iter()
                    .find(|a| a.key == k)
                    .and_then(|a| a.value.as_ref())
                    .and_then(|v| match &v.value {
                        Some(AnyValue::StringValue(s)) => Some(s.clone()),
                        Some(AnyValue::IntValue(i)) => Some(i.to_string()),
                        Some(AnyValue::BoolValue(b)) => Some(b.to_string()),
                        _ => None,
                    })
            };
            (e.name.clone(), get("policy"), get("status"))
        })
        .collect();
    assert_eq!(
        events,
        [
            (
                "policy audit: would deny".to_owned(),
                Some("a-shadow-key".to_owned()),
                Some("401".to_owned())
            ),
            (
                "policy audit: would deny".to_owned(),
                Some("b-warn-method".to_owned()),
                Some("405".to_owned())
            ),
        ]
    );
    assert!(!format!("{spans:?}").contains(SECRET_KEY));
}

#[test]
fn decision_log_refuses_credential_headers() {
    let out = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["serve", "--policies"])
        .arg(repo("policies"))
        .args([
            "--decision-log",
            "stdout",
            "--decision-log-headers",
            "user-agent,Authorization",
        ])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"authorization\" carries credentials"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_in_grpc_metadata_wins_over_the_request_headers() {
    // A tracing Envoy puts its ext_authz client span's context in the gRPC
    // metadata; the checked request's headers carry the client's own.
    let (collector, otlp) = Collector::start().await;
    let server = tokio::task::spawn_blocking(move || {
        Server::start(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ],
        )
    })
    .await
    .unwrap();
    let (envoy_trace, envoy_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let (client_trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut c = AuthorizationClient::connect(format!("http://127.0.0.1:{}", server.grpc))
        .await
        .unwrap();
    let mut req = tonic::Request::new(request(
        "GET",
        "/healthz",
        &[(
            "traceparent",
            &format!("00-{client_trace}-{client_span}-01"),
        )],
    ));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{envoy_trace}-{envoy_span}-01").parse().unwrap(),
    );
    c.check(req).await.unwrap();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let span = collector.first_span(Duration::from_secs(10)).await;
    assert_eq!(hex(&span.trace_id), envoy_trace);
    assert_eq!(hex(&span.parent_span_id), envoy_span);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_answering_while_reporting_not_ready() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let server = tokio::task::spawn_blocking(|| Server::start(&["--shutdown-delay-s", "3"], &[]))
        .await
        .unwrap();
    let (grpc, http) = (server.grpc, server.http);
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let serving = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    assert_eq!(serving(&mut health).await, 1, "SERVING before the signal");
    let signalled = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    // Within the delay: not ready, NOT_SERVING, and checks still answered.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let ready = tokio::task::spawn_blocking(move || get_blocking(loopback(http), "/readyz"))
            .await
            .unwrap()
            .unwrap()
            .0;
        if ready == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        serving(&mut health).await,
        2,
        "NOT_SERVING during the delay"
    );
    assert_eq!(
        check(grpc, vec![request("GET", "/healthz", &[])]).await,
        [0]
    );
    // Then it stops on its own, after the delay (no second signal: that
    // would end the delay).
    let took = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.wait_exit(Duration::from_secs(15));
        signalled.elapsed()
    })
    .await
    .unwrap();
    assert!(took >= Duration::from_secs(3), "stopped after {took:?}");
}

#[test]
fn a_second_signal_ends_the_shutdown_delay() {
    let mut server = Server::start(&["--shutdown-delay-s", "120"], &[]);
    let term = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success())
    };
    term(server.child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_blocking(loopback(server.http), "/readyz").unwrap().0 != 503 {
        assert!(Instant::now() < deadline, "not in the delay");
        std::thread::sleep(Duration::from_millis(20));
    }
    term(server.child.id());
    // Well before the 120 s delay.
    server.wait_exit(Duration::from_secs(15));
}

#[test]
fn healthcheck_command_reports_readiness_for_container_health_checks() {
    let run = |addr: String| {
        Command::new(env!("CARGO_BIN_EXE_celgate"))
            .args(["healthcheck", "--timeout-ms", "500"])
            .env("CELGATE_HTTP_ADDR", addr)
            .output()
            .unwrap()
    };
    let server = Server::start(&[], &[]);
    // The address serve was given, unspecified host included.
    for addr in [
        format!("127.0.0.1:{}", server.http),
        format!("0.0.0.0:{}", server.http),
    ] {
        let out = run(addr.clone());
        assert!(out.status.success(), "{addr}: {out:?}");
    }
    let http = server.http;
    server.stop();
    let out = run(format!("127.0.0.1:{http}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/readyz") && err.contains(&http.to_string()),
        "{err}"
    );
}

/// A decision asked over the HTTP authorization listener has the same span,
/// joined to the trace context of the original request's headers, and says
/// which protocol asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_authorization_spans_name_their_protocol() {
    let (collector, otlp) = Collector::start().await;
    let authz = free_port();
    let server = tokio::task::spawn_blocking(move || {
        Server::start(
            &["--authz-http-addr", &format!("127.0.0.1:{authz}")],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ],
        )
    })
    .await
    .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4737";
    let r = common::http_get(
        loopback(authz),
        "/forward-auth",
        &[
            ("x-forwarded-uri", "/api/orders"),
            ("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "{:?}", r.text());
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let span = collector.first_span(Duration::from_secs(10)).await;
    assert_eq!(hex(&span.trace_id), trace_id, "joined the request's trace");
    assert_eq!(
        attr(&span, "celgate.protocol").as_deref(),
        Some("forward_auth")
    );
    assert_eq!(attr(&span, "url.path").as_deref(), Some("/api/orders"));
    assert_eq!(attr(&span, "decision").as_deref(), Some("deny"));
}

/// Kyverno's HTTP mode is observed as every other protocol: its decisions
/// have the decision span (joined to the request's trace, naming the
/// protocol), a decision log line (the request as received, without its
/// credentials) and their protocol's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kyverno_http_mode_decisions_are_traced_logged_and_counted() {
    let (collector, otlp) = Collector::start().await;
    let authz = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let log_arg = log.display().to_string();
    let example = repo("examples/kyverno-http");
    let read = |f: &str| std::fs::read_to_string(example.join(f)).unwrap();
    let (input, output) = (read("input.cel"), read("output.cel"));
    let policy = example.join("policy.yaml");
    let server = tokio::task::spawn_blocking(move || {
        Server::start_with(
            &policy,
            &[
                "--authz-http-addr",
                &format!("127.0.0.1:{authz}"),
                "--input-expression",
                &input,
                "--output-expression",
                &output,
                "--decision-log",
                &log_arg,
            ],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ],
        )
    })
    .await
    .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4737";
    let original = [
        ("x-original-method", "GET"),
        ("x-original-url", "http://app.example/api/orders"),
    ];
    let mut allowed = original.to_vec();
    allowed.push(("x-api-key", "demo-key-alice"));
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    allowed.push(("traceparent", &traceparent));
    let r = common::http_get(loopback(authz), "/check", &allowed)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.text());
    let r = common::http_get(loopback(authz), "/check", &original)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{:?}", r.text());
    let metrics = common::http_get(loopback(server.http), "/metrics", &[])
        .await
        .unwrap()
        .text();
    for (decision, n) in [("allow", 1.0), ("deny", 1.0)] {
        let series = format!(
            "celgate_authz_requests_total{{protocol=\"kyverno_http\",decision=\"{decision}\"}}"
        );
        assert_eq!(metric(&metrics, &series), Some(n), "{series}");
    }
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let span = collector.first_span(Duration::from_secs(10)).await;
    assert_eq!(hex(&span.trace_id), trace_id, "joined the request's trace");
    assert_eq!(
        attr(&span, "celgate.protocol").as_deref(),
        Some("kyverno_http")
    );
    assert_eq!(attr(&span, "decision").as_deref(), Some("allow"));
    assert_eq!(attr(&span, "celgate.policy").as_deref(), Some("api-keys"));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        (
            &lines[0]["decision"],
            &lines[0]["status"],
            &lines[0]["policy"]
        ),
        (&"allow".into(), &200.into(), &"api-keys".into())
    );
    assert_eq!(
        (
            &lines[1]["decision"],
            &lines[1]["status"],
            &lines[1]["path"]
        ),
        (&"deny".into(), &401.into(), &"/check".into())
    );
    assert!(!text.contains("demo-key-alice"), "{text}");
}
