//! The shadow policy set through the real binary: a second set decides the
//! same requests after each answer is sent; where it would decide otherwise
//! the disagreement is counted by deciding policy and written to the
//! decision log, while the live answers stay exactly those of the served
//! set. A slow shadow set times out or is dropped, never waited for; the
//! shadow files are hot-reloaded and a broken one keeps its last good version.

mod common;

use celgate::engine::EngineConfig;
use celgate::policy::PolicySet;
use common::{celgate_bin, free_ports, http_get, loopback, wait_http_200, ChildGuard};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A request value that must never reach the decision log.
const SECRET: &str = "query-secret-7f3a";

/// A ValidatingPolicy named `name` whose validations are `rules` (CEL
/// expressions, in order).
fn policy(name: &str, rules: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: policies.kyverno.io/v1alpha1\nkind: ValidatingPolicy\nmetadata:\n  name: {name}\n\
         spec:\n  evaluation:\n    mode: Envoy\n  validations:\n"
    );
    for r in rules {
        s.push_str(&format!("  - expression: \"{r}\"\n"));
    }
    s
}

const PATH: &str = "object.attributes.request.http.path";
const METHOD: &str = "object.attributes.request.http.method";

/// Denies requests whose `field` is `value` with `status`, else says nothing.
fn deny_if(field: &str, value: &str, status: u16) -> String {
    format!("{field} == '{value}' ? envoy.Denied({status}).Response() : null")
}

fn request(method: &str, path: &str) -> CheckRequest {
    celgate::request_json::from_value(&serde_json::json!(
        {"attributes": {"request": {"http": {"method": method, "path": path, "host": "api.test", "headers": {"x-secret": SECRET}}}}}
    ))
    .unwrap()
}

/// The HTTP status the client gets: 200 when allowed.
fn status(r: &CheckResponse) -> i32 {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code),
        _ => 200,
    }
}

struct Server {
    guard: ChildGuard,
    grpc: SocketAddr,
    http: SocketAddr,
    _logs: tempfile::TempDir,
}

impl Server {
    async fn start(live: &Path, shadow: &Path, extra: &[&str]) -> Server {
        let ports = free_ports(2);
        let (grpc, http) = (loopback(ports[0]), loopback(ports[1]));
        let logs = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(celgate_bin());
        cmd.args(["serve", "--policies"])
            .arg(live)
            .arg("--shadow-policies")
            .arg(shadow)
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--http-addr", &http.to_string()])
            .args(["--reload-quiet-ms", "20"])
            .args(extra)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let mut guard = ChildGuard::spawn("celgate", cmd, logs.path());
        wait_http_200(http, "/readyz", Duration::from_secs(20), &mut guard)
            .await
            .unwrap();
        Server {
            guard,
            grpc,
            http,
            _logs: logs,
        }
    }

    async fn check(&self, method: &str, path: &str) -> i32 {
        let mut client = AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap();
        let r = client
            .check(request(method, path))
            .await
            .expect("a decision, never a gRPC error")
            .into_inner();
        status(&r)
    }

    async fn metrics(&self) -> String {
        http_get(self.http, "/metrics", &[]).await.unwrap().text()
    }

    async fn readyz(&self) -> Value {
        let r = http_get(self.http, "/readyz", &[]).await.unwrap();
        assert_eq!(r.status, 200, "the shadow set never affects readiness");
        r.json()
    }

    /// Waits until `done` holds of `/metrics` (shadow evaluations end after
    /// the answers), failing with the metrics and the log after 20 s.
    async fn wait_metrics(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.metrics().await;
            if done(&m) {
                return m;
            }
            self.guard.check_alive().unwrap();
            assert!(
                Instant::now() < deadline,
                "{what}: not reached\n{m}\n{}",
                self.guard.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

/// The value of the series written exactly as `series` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn result(text: &str, r: &str) -> f64 {
    metric(
        text,
        &format!("celgate_shadow_evaluations_total{{result=\"{r}\"}}"),
    )
}

fn results_total(text: &str) -> f64 {
    ["agree", "disagree", "error", "dropped", "timeout"]
        .iter()
        .map(|r| result(text, r))
        .sum()
}

fn disagreements(text: &str, live: &str, shadow: &str, kind: &str) -> f64 {
    metric(
        text,
        &format!("celgate_shadow_disagreements_total{{live_policy=\"{live}\",shadow_policy=\"{shadow}\",kind=\"{kind}\"}}"),
    )
}

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let (live, shadow) = (root.path().join("live"), root.path().join("shadow"));
    std::fs::create_dir(&live).unwrap();
    std::fs::create_dir(&shadow).unwrap();
    (root, live, shadow)
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreements_are_counted_by_policy_and_logged_while_live_answers_stay() {
    let (root, live, shadow) = dirs();
    std::fs::write(
        live.join("live.yaml"),
        policy(
            "live-rules",
            &[
                &deny_if(PATH, "/admin", 403),
                &deny_if(PATH, "/old", 404),
                &deny_if(PATH, "/beta", 403),
            ],
        ),
    )
    .unwrap();
    // The rehearsed change: DELETE denied, /old gone for good, /beta open.
    std::fs::write(
        shadow.join("shadow.yaml"),
        policy(
            "shadow-rules",
            &[
                &deny_if(METHOD, "DELETE", 403),
                &deny_if(PATH, "/admin", 403),
                &deny_if(PATH, "/old", 410),
            ],
        ),
    )
    .unwrap();
    let log = root.path().join("decisions.jsonl");
    let mut s = Server::start(&live, &shadow, &["--decision-log", log.to_str().unwrap()]).await;

    // (method, path, the live answer)
    let cases = [
        ("GET", "/x", 200),
        ("GET", "/x", 200),
        ("POST", "/x", 200),
        ("GET", "/admin", 403),
        ("GET", "/admin", 403),
        ("DELETE", "/x", 200),
        (
            "DELETE",
            Box::leak(format!("/x?token={SECRET}").into_boxed_str()),
            200,
        ),
        ("GET", "/old", 404),
        ("GET", "/beta", 403),
    ];
    for (method, path, want) in cases {
        assert_eq!(
            s.check(method, path).await,
            want,
            "{method} {path}: the live answer is the served set's"
        );
    }
    let m = s
        .wait_metrics("every shadow evaluation counted", |m| {
            results_total(m) == cases.len() as f64
        })
        .await;
    assert_eq!(result(&m, "agree"), 5.0, "{m}");
    assert_eq!(result(&m, "disagree"), 4.0, "{m}");
    for r in ["error", "dropped", "timeout"] {
        assert_eq!(result(&m, r), 0.0, "{r}\n{m}");
    }
    assert_eq!(
        disagreements(&m, "", "shadow-rules", "allow_deny"),
        2.0,
        "{m}"
    );
    assert_eq!(
        disagreements(&m, "live-rules", "shadow-rules", "status"),
        1.0,
        "{m}"
    );
    assert_eq!(
        disagreements(&m, "live-rules", "", "deny_allow"),
        1.0,
        "{m}"
    );
    assert_eq!(
        m.matches("celgate_shadow_disagreements_total{").count(),
        3,
        "agreements are not disagreement series:\n{m}"
    );
    // The served set's series are the served set's alone.
    assert!(
        !m.contains("{policy=\"shadow-rules\"") && !m.contains(",policy=\"shadow-rules\""),
        "shadow policies are not counted as live ones:\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            "authz_decisions_total{mode=\"envoy\",decision=\"deny\",source=\"policy\",policy=\"live-rules\"}"
        ),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "celgate_shadow_policies{kind=\"ValidatingPolicy\"}"),
        1.0
    );

    // The decision log: one line per decision, one shadow line per
    // disagreement, each pointing at its decision's line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = log_lines(&log);
        if lines.len() >= cases.len() + 4 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains(SECRET),
        "no request value beyond the decision log's own:\n{text}"
    );
    let (shadow_lines, decision_lines): (Vec<&Value>, Vec<&Value>) =
        lines.iter().partition(|l| l["type"] == "shadow");
    assert_eq!(decision_lines.len(), cases.len(), "{text}");
    assert_eq!(shadow_lines.len(), 4, "disagreements only:\n{text}");
    let deletes: Vec<&&Value> = shadow_lines
        .iter()
        .filter(|l| l["method"] == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 2, "{text}");
    for l in &deletes {
        assert_eq!(l["result"], "disagree");
        assert_eq!(l["kind"], "allow_deny");
        assert_eq!(l["path"], "/x", "without the query string");
        assert_eq!(l["host"], "api.test");
        assert_eq!(
            l["live"],
            serde_json::json!({"decision": "allow", "status": 200})
        );
        assert_eq!(
            l["shadow"],
            serde_json::json!({"decision": "deny", "status": 403, "policy": "shadow-rules", "validation": 0})
        );
        let id = l["decisionId"].as_str().expect("the live decision's line");
        let decision = decision_lines
            .iter()
            .find(|d| d["id"] == id)
            .expect("decisionId names a decision line");
        assert_eq!(decision["method"], "DELETE");
        assert_eq!(decision["decision"], "allow");
        assert!(l.get("headers").is_none() && l.get("source").is_none());
    }
    let old = shadow_lines.iter().find(|l| l["path"] == "/old").unwrap();
    assert_eq!(old["kind"], "status");
    assert_eq!(
        (&old["live"]["status"], &old["shadow"]["status"]),
        (&serde_json::json!(404), &serde_json::json!(410))
    );
    assert_eq!(old["live"]["policy"], "live-rules");
    let beta = shadow_lines.iter().find(|l| l["path"] == "/beta").unwrap();
    assert_eq!(beta["kind"], "deny_allow");
    assert_eq!(
        beta["shadow"],
        serde_json::json!({"decision": "allow", "status": 200})
    );
    s.guard.stop();
}

/// A policy that is cheap to check and slow to run: two nested `all()` over
/// `n` numbers (n² steps), then an allow.
fn slow_policy(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: slow }}\n\
         spec:\n  evaluation: {{ mode: Envoy }}\n  variables:\n  - name: l\n    expression: '[{}]'\n  \
         validations:\n  - expression: >\n      variables.l.all(a, variables.l.all(b, a + b >= 0))\n      \
         ? envoy.Allowed().Response() : envoy.Denied(403).Response()\n",
        list.join(",")
    )
}

/// Writes the slow policy into `dir`, sized so one evaluation takes at least
/// `at_least` in this build, or as long as a policy within the load-time cost
/// budget can take, if that is at least `at_least / 10` (still far past the
/// test's 1 ms shadow deadline).
fn write_slow_policy(dir: &Path, at_least: Duration) {
    let mut n = 200;
    let mut slowest: Option<(usize, Duration)> = None;
    for _ in 0..6 {
        std::fs::write(dir.join("slow.yaml"), slow_policy(n)).unwrap();
        // Over the cost budget: the previous size is as slow as it gets.
        let Ok(set) = PolicySet::load(&[dir.to_path_buf()]) else {
            break;
        };
        let t = Instant::now();
        let d = celgate::engine::evaluate(&set, &EngineConfig::default(), &request("GET", "/"));
        assert!(d.allowed());
        let took = t.elapsed();
        if took >= at_least {
            return;
        }
        slowest = Some((n, took));
        n *= 2;
    }
    match slowest {
        Some((n, took)) if took >= at_least / 10 => {
            std::fs::write(dir.join("slow.yaml"), slow_policy(n)).unwrap();
        }
        _ => panic!("could not make a policy slower than {:?}", at_least / 10),
    }
}

/// A shadow set far slower than its deadline: every comparison it gets is a
/// timeout, those it cannot take while busy are dropped, and every live
/// answer is the served set's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_set_times_out_or_is_dropped_and_never_changes_the_answer() {
    let (_root, live, shadow) = dirs();
    std::fs::write(
        live.join("live.yaml"),
        policy("live-rules", &[&deny_if(METHOD, "DELETE", 403)]),
    )
    .unwrap();
    write_slow_policy(&shadow, Duration::from_millis(500));
    let mut s = Server::start(
        &live,
        &shadow,
        &[
            "--shadow-timeout-ms",
            "1",
            "--shadow-threads",
            "1",
            "--shadow-max-pending",
            "1",
        ],
    )
    .await;
    const SENT: usize = 12;
    let mut tasks = Vec::new();
    for i in 0..SENT {
        let method = if i % 2 == 0 { "GET" } else { "DELETE" };
        let (grpc, req) = (s.grpc, request(method, "/x"));
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            let r = client.check(req).await.unwrap().into_inner();
            (method, status(&r))
        }));
    }
    for t in tasks {
        let (method, got) = t.await.unwrap();
        assert_eq!(got, if method == "DELETE" { 403 } else { 200 });
    }
    let m = s
        .wait_metrics("every shadow evaluation counted", |m| {
            results_total(m) == SENT as f64
        })
        .await;
    assert!(result(&m, "timeout") >= 1.0, "{m}");
    assert!(
        result(&m, "dropped") >= 1.0,
        "one thread busy for 500 ms and one place in the queue: the rest are dropped\n{m}"
    );
    assert_eq!(result(&m, "agree") + result(&m, "disagree"), 0.0, "{m}");
    assert_eq!(result(&m, "error"), 0.0, "{m}");
    // The live answers are counted as usual.
    assert_eq!(
        metric(
            &m,
            "authz_decisions_total{mode=\"envoy\",decision=\"deny\",source=\"policy\",policy=\"live-rules\"}"
        ),
        (SENT / 2) as f64
    );
    // Still serving, and still answering with the live set.
    assert_eq!(s.check("DELETE", "/y").await, 403);
    s.guard.stop();
}

/// Editing the shadow file changes what is compared; a broken edit keeps
/// the last good shadow set (and never touches the live one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_files_are_hot_reloaded_and_a_broken_one_keeps_the_last_good_set() {
    let (_root, live, shadow) = dirs();
    std::fs::write(
        live.join("live.yaml"),
        policy("live-rules", &[&deny_if(PATH, "/admin", 403)]),
    )
    .unwrap();
    let file = shadow.join("shadow.yaml");
    std::fs::write(
        &file,
        policy("shadow-a", &[&deny_if(METHOD, "DELETE", 403)]),
    )
    .unwrap();
    let mut s = Server::start(&live, &shadow, &[]).await;

    assert_eq!(s.check("DELETE", "/x").await, 200);
    s.wait_metrics("DELETE disagrees under shadow-a", |m| {
        disagreements(m, "", "shadow-a", "allow_deny") == 1.0
    })
    .await;

    // The change: PUT denied instead of DELETE, under another name.
    std::fs::write(&file, policy("shadow-b", &[&deny_if(METHOD, "PUT", 403)])).unwrap();
    s.wait_metrics("the shadow set reloaded", |m| {
        metric(m, "celgate_shadow_reloads_total{result=\"applied\"}") == 1.0
    })
    .await;
    assert_eq!(s.check("DELETE", "/x").await, 200);
    assert_eq!(s.check("PUT", "/x").await, 200);
    let m = s
        .wait_metrics("the new behaviour counted", |m| results_total(m) == 3.0)
        .await;
    assert_eq!(disagreements(&m, "", "shadow-a", "allow_deny"), 1.0, "{m}");
    assert_eq!(disagreements(&m, "", "shadow-b", "allow_deny"), 1.0, "{m}");
    assert_eq!(result(&m, "agree"), 1.0, "DELETE now agrees\n{m}");

    // A broken edit: refused, the last good shadow set stays.
    std::fs::write(
        &file,
        policy("shadow-c", &["object.attributes.request.http.method == ("]),
    )
    .unwrap();
    s.wait_metrics("the broken shadow file refused", |m| {
        metric(m, "celgate_shadow_reload_failing") == 1.0
    })
    .await;
    let ready = s.readyz().await;
    assert_eq!(ready["status"], "ready");
    assert!(
        ready["lastReloadError"].is_null(),
        "the live set is untouched: {ready}"
    );
    assert!(!ready["shadow"]["lastReloadError"].is_null(), "{ready}");
    assert_eq!(ready["shadow"]["policies"], 1);
    assert_eq!(s.check("PUT", "/x").await, 200);
    assert_eq!(s.check("GET", "/admin").await, 403);
    let m = s
        .wait_metrics("compared with the last good set", |m| {
            results_total(m) == 5.0
        })
        .await;
    assert_eq!(disagreements(&m, "", "shadow-b", "allow_deny"), 2.0, "{m}");
    assert_eq!(metric(&m, "celgate_policy_reload_failing"), 0.0, "{m}");
    s.guard.stop();
}

/// The shadow set is held to the live set's load checks at start-up, and
/// nonsense sampling is a usage error.
#[test]
fn serve_refuses_a_shadow_set_that_does_not_load_and_a_bad_sample() {
    let (_root, live, shadow) = dirs();
    std::fs::write(
        live.join("live.yaml"),
        policy("live-rules", &[&deny_if(PATH, "/admin", 403)]),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(celgate_bin())
            .args([
                "serve",
                "--no-watch",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .arg("--policies")
            .arg(&live)
            .arg("--shadow-policies")
            .arg(&shadow)
            .args(extra)
            .output()
            .unwrap()
    };
    // Empty: refused like an empty --policies.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shadow") && err.contains("--allow-empty"),
        "{err}"
    );
    std::fs::write(
        shadow.join("broken.yaml"),
        policy("shadow-x", &["object.attributes.request.http.method == ("]),
    )
    .unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the shadow policies do not load"), "{err}");
    assert!(err.contains("broken.yaml"), "{err}");
    let out = run(&["--shadow-sample", "1.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shadow-sample"));
}
