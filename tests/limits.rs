//! Bounded work: a slow policy under `--decision-timeout-ms` is answered with
//! the failure denial in time, a full decision queue with the overload
//! denial, and gRPC health, `/readyz`, `/livez` and `/metrics` keep answering
//! while every evaluation thread is busy.

mod common;

use celgate::engine::EngineConfig;
use celgate::policy::PolicySet;
use celgate::server::grpc::AuthzService;
use celgate::server::limits::{Limits, OVERLOAD_STATUS};
use celgate::server::{serve_on, ServeOptions, State};
use common::{celgate_bin, free_ports, http_get, loopback, wait_http_200, ChildGuard};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A request value that must never reach the log.
const MARKER: &str = "REQUEST-MARKER-5d1c";

fn request() -> CheckRequest {
    let v = serde_json::json!({"attributes": {"request": {"http": {"method": "GET", "path": "/slow", "headers": {"x-marker": MARKER}}}}});
    celgate::request_json::from_value(&v).unwrap()
}

/// A policy that is cheap to check and slow to run: two nested `all()` over
/// a list of `n` numbers (n² steps), then an allow.
fn write_slow_policy(dir: &Path, n: usize) {
    let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    std::fs::write(
        dir.join("slow.yaml"),
        format!(
            "apiVersion: policies.kyverno.io/v1\n\
             kind: ValidatingPolicy\n\
             metadata: {{ name: slow }}\n\
             spec:\n  \
               evaluation: {{ mode: Envoy }}\n  \
               failurePolicy: Fail\n  \
               variables:\n  \
               - name: l\n    \
                 expression: '[{}]'\n  \
               validations:\n  \
               - expression: >\n      \
                   variables.l.all(a, variables.l.all(b, a + b >= 0))\n      \
                   ? envoy.Allowed().Response() : envoy.Denied(403).Response()\n",
            list.join(",")
        ),
    )
    .unwrap();
}

/// The engine's defaults without a run-time cost budget.
fn unmetered() -> EngineConfig {
    EngineConfig {
        cost_budget: u64::MAX,
        ..EngineConfig::default()
    }
}

/// A directory holding the slow policy, sized so that one evaluation takes
/// at least `at_least` here (debug or release), and how long it took.
async fn slow_policy(at_least: Duration) -> (tempfile::TempDir, Duration) {
    // Slow on purpose: neither the load-time estimate nor the run-time
    // budget may stop it, the deadline must.
    celgate::cel::check::cost::configure(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let mut n = 200;
    for _ in 0..4 {
        write_slow_policy(dir.path(), n);
        let set = PolicySet::load(&[dir.path().to_path_buf()]).expect("the slow policy loads");
        let service = AuthzService::new(State::new(set, unmetered()));
        let took = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let d = service.decide(&request());
            assert!(d.allowed(), "the slow policy allows: {d:?}");
            t.elapsed()
        })
        .await
        .unwrap();
        if took >= at_least {
            return (dir, took);
        }
        n *= 2;
    }
    panic!("could not make a policy slower than {at_least:?}");
}

async fn check(grpc: SocketAddr, r: CheckRequest) -> (CheckResponse, Duration) {
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let t = Instant::now();
    let resp = client
        .check(r)
        .await
        .expect("a decision, never a gRPC error")
        .into_inner();
    (resp, t.elapsed())
}

/// A denial's status, body and headers.
type Denial<'a> = (i32, &'a str, Vec<(String, String)>);

fn denial(r: &CheckResponse) -> Option<Denial<'_>> {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => Some((
            d.status.as_ref().map_or(0, |s| s.code),
            d.body.as_str(),
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
        )),
        _ => None,
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

const TIMEOUT_SERIES: &str =
    "authz_decisions_total{mode=\"envoy\",decision=\"deny\",source=\"timeout\",policy=\"\"}";
const OVERLOAD_SERIES: &str =
    "authz_decisions_total{mode=\"envoy\",decision=\"deny\",source=\"overload\",policy=\"\"}";

/// `serve_on` on two loopback ports, until [`Server::stop`].
struct Server {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), celgate::server::ServeError>>,
}

impl Server {
    async fn start(state: std::sync::Arc<State>) -> Server {
        let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc, http) = (g.local_addr().unwrap(), h.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(state, g, h, async {
            let _ = stopped.await;
        }));
        Server {
            grpc,
            http,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// Health, readiness, liveness and metrics, each answering within `within`.
async fn probes_answer(grpc: SocketAddr, http: SocketAddr, within: Duration) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let t = Instant::now();
    let status = tokio::time::timeout(
        within,
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("gRPC health answers while evaluations run")
    .unwrap()
    .into_inner()
    .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert!(t.elapsed() < within);
    for path in ["/readyz", "/livez", "/metrics"] {
        let t = Instant::now();
        let r = tokio::time::timeout(within, http_get(http, path, &[]))
            .await
            .unwrap_or_else(|_| panic!("{path} answers while evaluations run"))
            .unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert!(t.elapsed() < within, "{path} took {:?}", t.elapsed());
    }
}

/// Through the binary and its flags: every slow request is answered with the
/// failure denial soon after the deadline, long before its evaluation would
/// end; probes keep answering meanwhile; each timeout is counted and logged
/// without request data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_policy_past_the_deadline_gets_the_failure_denial_and_probes_keep_answering() {
    let (dir, eval) = slow_policy(Duration::from_millis(800)).await;
    let ports = free_ports(2);
    let (grpc, http) = (loopback(ports[0]), loopback(ports[1]));
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(celgate_bin());
    cmd.args(["serve", "--no-watch", "--policies"])
        .arg(dir.path())
        .args(["--max-expression-cost", &u64::MAX.to_string()])
        .args(["--cost-budget", &u64::MAX.to_string()])
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--http-addr", &http.to_string()])
        .args(["--decision-timeout-ms", "100", "--decision-threads", "2"])
        .args([
            "--failure-status",
            "504",
            "--failure-body",
            "evaluation failed\n",
        ]);
    let mut server = ChildGuard::spawn("celgate", cmd, logs.path());
    wait_http_200(http, "/readyz", Duration::from_secs(10), &mut server)
        .await
        .unwrap();

    // Keep both evaluation threads busy for the whole test: two requests at
    // a time, one after another.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                answers.push(check(grpc, request()).await);
            }
            answers
        }));
    }
    // Each request holds a thread for the deadline, then the next one
    // comes: a single reading can fall between two. Both threads must be
    // seen busy at once, within a generous bound.
    let busy_by = Instant::now() + Duration::from_secs(5);
    loop {
        let m = http_get(http, "/metrics", &[]).await.unwrap().text();
        assert_eq!(metric(&m, "celgate_decision_threads"), 2.0, "{m}");
        if metric(&m, "celgate_decision_threads_busy") == 2.0 {
            break;
        }
        assert!(Instant::now() < busy_by, "never both threads busy:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probes_until = Instant::now() + eval.min(Duration::from_secs(2));
    let mut rounds = 0;
    while Instant::now() < probes_until {
        probes_answer(grpc, http, Duration::from_millis(500)).await;
        rounds += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for l in load {
        answers.extend(l.await.unwrap());
    }
    assert!(rounds >= 2, "probed {rounds} times");
    assert!(answers.len() >= 2);
    for (resp, took) in &answers {
        let (status, body, headers) = denial(resp).expect("the failure denial");
        assert_eq!((status, body), (504, "evaluation failed\n"));
        assert_eq!(
            headers,
            vec![("x-celgate-failure".into(), "timeout".into())]
        );
        assert!(
            *took < Duration::from_millis(600) && *took * 3 < eval,
            "answered after {took:?}; one evaluation takes {eval:?}"
        );
    }

    let m = http_get(http, "/metrics", &[]).await.unwrap().text();
    assert_eq!(metric(&m, TIMEOUT_SERIES), answers.len() as f64, "{m}");
    assert_eq!(metric(&m, OVERLOAD_SERIES), 0.0);
    server.stop();
    let log = server.log_tail();
    assert!(
        log.contains("decision deadline exceeded"),
        "the timeout is logged:\n{log}"
    );
    assert!(!log.contains(MARKER), "no request data in the log:\n{log}");
}

/// More concurrent slow requests than threads + queue: the extra ones are
/// denied at once with 503, the others decided; all are answered and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_gets_the_overload_denial_at_once() {
    let (dir, eval) = slow_policy(Duration::from_millis(500)).await;
    let set = PolicySet::load(&[dir.path().to_path_buf()]).unwrap();
    let options = ServeOptions {
        limits: Limits {
            threads: 1,
            max_pending: 1,
            timeout: Duration::from_secs(30),
            ..Default::default()
        },
        ..Default::default()
    };
    let state = State::with_options(set, unmetered(), options);
    let server = Server::start(state).await;
    let (grpc, http) = (server.grpc, server.http);
    let before = http_get(http, "/metrics", &[]).await.unwrap().text();

    const SENT: usize = 6;
    let tasks: Vec<_> = (0..SENT)
        .map(|_| tokio::spawn(check(grpc, request())))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    probes_answer(grpc, http, Duration::from_millis(500)).await;
    let mut overloaded = 0;
    let mut allowed = 0;
    for t in tasks {
        let (resp, took) = tokio::time::timeout(eval * 4 + Duration::from_secs(5), t)
            .await
            .expect("every request is answered")
            .unwrap();
        match denial(&resp) {
            Some((status, body, headers)) => {
                assert_eq!(status, OVERLOAD_STATUS, "{resp:?}");
                assert_eq!(
                    body,
                    "request denied: too many requests pending, retry later\n"
                );
                assert_eq!(
                    headers,
                    vec![
                        ("x-celgate-failure".into(), "overload".into()),
                        ("retry-after".into(), "1".into())
                    ]
                );
                assert!(
                    took < Duration::from_millis(300) && took * 2 < eval,
                    "the overload denial is sent at once, not after {took:?}"
                );
                overloaded += 1;
            }
            None => allowed += 1,
        }
    }
    // One evaluating, one waiting: exactly two admitted.
    assert_eq!(allowed, 2, "one thread + one pending are decided");
    assert_eq!(overloaded + allowed, SENT);

    let after = http_get(http, "/metrics", &[]).await.unwrap().text();
    assert_eq!(
        metric(&after, OVERLOAD_SERIES) - metric(&before, OVERLOAD_SERIES),
        overloaded as f64,
        "{after}"
    );
    server.stop().await;
}

/// Nonsense limits are refused at start-up, naming the flag.
#[test]
fn serve_refuses_a_zero_deadline_and_documents_the_flags() {
    let out = std::process::Command::new(celgate_bin())
        .args(["serve", "--decision-timeout-ms", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--decision-timeout-ms"), "{err}");

    let help = std::process::Command::new(celgate_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--decision-timeout-ms",
        "--decision-threads",
        "--max-pending-decisions",
        "CELGATE_DECISION_TIMEOUT_MS",
    ] {
        assert!(help.contains(flag), "{flag} missing from serve --help");
    }
}

/// A decision that needs more than `--inline-budget` is abandoned on the
/// thread that received it and made again on the decision threads: its
/// answer is the full evaluation's, and it is counted once, policy by
/// policy, as is one decided where it arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_past_the_inline_budget_is_made_once_on_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let policy = |name: &str, validation: &str| {
        format!(
            "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: {name} }}\nspec:\n  evaluation: {{ mode: Envoy }}\n  failurePolicy: Ignore\n  validations:\n  - expression: '{validation}'\n"
        )
    };
    std::fs::write(
        dir.path().join("policies.yaml"),
        [
            policy("a-cheap", "null"),
            // Past the 2,000 units of the default inline budget, and under
            // `Ignore`: an abandoned attempt must not pass for an ignored
            // error, which would let `c-allow` decide.
            policy(
                "b-walk",
                r#"object.attributes.request.http.path == "/walk" && lists.range(5000).all(i, i >= 0) ? envoy.Denied(409).Response() : null"#,
            ),
            policy("c-allow", "envoy.Allowed().Response()"),
        ]
        .join("---\n"),
    )
    .unwrap();
    let set = PolicySet::load(&[dir.path().to_path_buf()]).unwrap();
    let state = State::with_options(set, EngineConfig::default(), ServeOptions::default());
    let server = Server::start(state).await;
    let (grpc, http) = (server.grpc, server.http);
    let at = |path: &str| {
        celgate::request_json::from_value(&serde_json::json!({"attributes": {"request": {"http": {"method": "GET", "path": path}}}}))
            .unwrap()
    };
    for _ in 0..3 {
        let (walk, _) = check(grpc, at("/walk")).await;
        assert_eq!(denial(&walk).map(|d| d.0), Some(409), "{walk:?}");
        let (cheap, _) = check(grpc, at("/")).await;
        assert!(denial(&cheap).is_none(), "{cheap:?}");
    }
    let m = http_get(http, "/metrics", &[]).await.unwrap().text();
    let count = |series: &str| metric(&m, series);
    assert_eq!(
        count(r#"authz_policy_evaluations_total{policy="a-cheap",decision="none"}"#),
        6.0,
        "{m}"
    );
    assert_eq!(
        count(r#"authz_policy_evaluations_total{policy="b-walk",decision="deny"}"#),
        3.0,
        "{m}"
    );
    assert_eq!(
        count(r#"authz_policy_evaluations_total{policy="c-allow",decision="allow"}"#),
        3.0,
        "{m}"
    );
    assert_eq!(
        count(
            r#"authz_decisions_total{mode="envoy",decision="deny",source="policy",policy="b-walk"}"#
        ),
        3.0,
        "{m}"
    );
    server.stop().await;
}
