//! No secret or request data in what the server shows: a secret is placed
//! (1) in a request header that policies read and fail on, (2) inlined in a
//! policy expression that fails to load on a reload, (3) in a JSON-RPC body
//! `mcp.Parse` refuses — and must appear nowhere in the server's logs (JSON,
//! debug level), its OTLP spans, its decision log, `/readyz`, `/policies`
//! or `/metrics`. Each time the test also checks that the secret really was
//! on the path (the decision was a failure denial, the reload was refused,
//! `check --explain` and `validate` on the user's machine do show it), so a
//! passing run means redaction, not a secret that never got there.

mod common;

use common::{free_port, get_blocking, loopback, span_attr, Collector};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{check_response, CheckRequest};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// In a request header (x-api-key) and in an MCP body.
const HEADER_SECRET: &str = "SUPERSECRET-APIKEY-7f3a9c";
const BODY_SECRET: &str = "BODYSECRET-51c0de";
/// Inlined in policy expressions that do not load.
const POLICY_SECRET: &str = "HMACSECRET-9d2e4b";
/// The cap on one log line (src/telemetry/otel.rs).
const MAX_LOG_LINE: usize = 8 * 1024;

fn policy(name: &str, failure: &str, path: &str, validation: &str, variables: &str) -> String {
    format!(
        r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {{ name: {name} }}
spec:
  evaluation: {{ mode: Envoy }}
  failurePolicy: {failure}
  matchConditions:
  - name: path
    expression: '{path}'
{variables}  validations:
  - expression: '{validation}'
"#
    )
}

/// Policies that fail on the request's x-api-key or body.
fn write_policies(dir: &Path) {
    let key = r#"object.attributes.request.http.headers["x-api-key"]"#;
    let files = [
        // Every request: an error ignored (logged at debug level).
        (
            "0-ignored.yaml",
            policy(
                "0-ignored",
                "Ignore",
                "true",
                &format!("dyn({key}) + 1 == 2 ? null : null"),
                "",
            ),
        ),
        // The key as a missing map key, through a variable that its
        // exception's condition reads first (exceptions run before the
        // policy's matchConditions, hence the path): the exception's error
        // is the policy's (failurePolicy: Fail).
        (
            "a-lookup.yaml",
            policy(
                "a-lookup",
                "Fail",
                r#"object.attributes.request.http.path == "/lookup""#,
                r#"{"known": 1}[variables.k] == 1 ? null : envoy.Denied(401).Response()"#,
                &format!("  variables:\n  - name: k\n    expression: '{key}'\n"),
            ) + r#"---
apiVersion: policies.kyverno.io/v1
kind: PolicyException
metadata: { name: exempt-known }
spec:
  policyRefs: [{ name: a-lookup }]
  matchConditions:
  - name: known
    expression: 'object.attributes.request.http.path == "/lookup" && {"other": true}[variables.k]'
"#,
        ),
        // The key in an operator it has no overload for (the CEL message
        // quotes String("<the key>")).
        (
            "b-add.yaml",
            policy(
                "b-add",
                "Fail",
                r#"object.attributes.request.http.path == "/add""#,
                &format!("dyn({key}) + 1 == 2 ? null : null"),
                "",
            ),
        ),
        // int() of the header.
        (
            "c-int.yaml",
            policy(
                "c-int",
                "Fail",
                r#"object.attributes.request.http.path == "/int""#,
                &format!("int({key}) > 0 ? null : null"),
                "",
            ),
        ),
        (
            "d-mcp.yaml",
            policy(
                "d-mcp",
                "Fail",
                r#"object.attributes.request.http.path == "/mcp""#,
                r#"mcp.Parse(object.attributes.request.http.body).Method == "tools/call" ? null : null"#,
                "",
            ),
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Documents that do not load, each with the secret inlined.
fn write_broken(dir: &Path) {
    let files = [
        // A CEL syntax error: the message shows the expression.
        (
            "e-hmac.yaml",
            policy(
                "e-hmac",
                "Fail",
                "true",
                &format!(
                    r#"object.attributes.request.http.headers["x-sig"] == "{POLICY_SECRET}" && ("#
                ),
                "",
            ),
        ),
        // An invalid regex: the message quotes the pattern.
        (
            "f-regex.yaml",
            policy(
                "f-regex",
                "Fail",
                "true",
                &format!(r#"object.attributes.request.http.path.matches("({POLICY_SECRET}")"#),
                "",
            ),
        ),
        // A bad value: the message quotes it.
        (
            "g-value.yaml",
            policy(
                "g-value",
                POLICY_SECRET,
                "true",
                "envoy.Allowed().Response()",
                "",
            ),
        ),
        // A spec of the wrong shape: serde's message quotes the value.
        (
            "h-shape.yaml",
            format!(
                "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: h-shape }}\nspec:\n  evaluation: {{ mode: Envoy }}\n  validations: \"{POLICY_SECRET}\"\n"
            ),
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

struct Server {
    child: Child,
    grpc: u16,
    http: u16,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    fn start(policies: &Path, out: &Path, otlp: std::net::SocketAddr) -> Server {
        for attempt in 0..3 {
            let (grpc, http) = (free_port(), free_port());
            let stdout = out.join(format!("stdout-{attempt}.txt"));
            let stderr = out.join(format!("stderr-{attempt}.txt"));
            let mut child = Command::new(env!("CARGO_BIN_EXE_celgate"))
                .args(["--log", "debug", "--log-format", "json"])
                .args(["serve", "--trace-policies", "--reload-quiet-ms", "20"])
                .arg("--policies")
                .arg(policies)
                .arg("--decision-log")
                .arg(out.join("decisions.jsonl"))
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
                .args(["--http-addr", &format!("127.0.0.1:{http}")])
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .env_remove("CELGATE_LOG")
                .stdout(std::fs::File::create(&stdout).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .unwrap();
            let start = Instant::now();
            loop {
                if get_blocking(loopback(http), "/readyz").ok().map(|r| r.0) == Some(200) {
                    return Server {
                        child,
                        grpc,
                        http,
                        stdout,
                        stderr,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "not ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("celgate did not start on three pairs of free ports");
    }

    fn get(&self, path: &str) -> String {
        let (code, body) = get_blocking(loopback(self.http), path).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        body
    }

    /// SIGTERM, wait for exit 0 (spans and the decision log are flushed).
    fn stop(mut self) -> (String, String) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status:?}");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        (
            std::fs::read_to_string(&self.stdout).unwrap(),
            std::fs::read_to_string(&self.stderr).unwrap(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn request(path: &str, body: &str) -> CheckRequest {
    celgate::request_json::from_value(&serde_json::json!({"attributes": {
        "request": {"http": {
            "id": format!("req{path}"),
            "method": "POST",
            "host": "api.example",
            "path": path,
            "headers": {"x-api-key": HEADER_SECRET, "content-type": "application/json"},
            "body": body,
        }}
    }}))
    .unwrap()
}

/// (gRPC status code, HTTP status of the denial or 200).
async fn check(grpc: u16, reqs: Vec<CheckRequest>) -> Vec<(i32, i32)> {
    let mut c = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap()
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let mut out = Vec::new();
    for r in reqs {
        let resp = c.check(r).await.unwrap().into_inner();
        let http = match resp.http_response {
            Some(check_response::HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
            _ => 200,
        };
        out.push((resp.status.map_or(-1, |s| s.code), http));
    }
    out
}

fn assert_absent(what: &str, text: &str) {
    for secret in [HEADER_SECRET, BODY_SECRET, POLICY_SECRET] {
        if let Some(at) = text.find(secret) {
            let from = text[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            panic!(
                "{what} carries {secret:?}: ...{}",
                &text[from..(at + secret.len() + 100).min(text.len())]
            );
        }
    }
}

fn celgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_requests_policies_and_bodies_appear_in_no_log_span_or_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    write_policies(&policies);
    let out = tmp.path().to_path_buf();

    // On the user's machine, `check --explain` shows the error's detail:
    // the secret is in it, so its absence below is redaction.
    let req_file = tmp.path().join("lookup.json");
    std::fs::write(
        &req_file,
        serde_json::json!({"attributes": {"request": {"http": {
            "method": "GET", "path": "/lookup", "headers": {"x-api-key": HEADER_SECRET}}}}})
        .to_string(),
    )
    .unwrap();
    let explain = celgate(&[
        "check",
        "--explain",
        "--policies",
        policies.to_str().unwrap(),
        "--request",
        req_file.to_str().unwrap(),
    ]);
    let explained = String::from_utf8_lossy(&explain.stderr);
    assert!(
        explained.contains(&format!("no such key: \"{HEADER_SECRET}\"")),
        "{explained}"
    );
    assert!(explained.contains("[no_such_key]"), "{explained}");

    let (collector, otlp) = Collector::start().await;
    let (p, o) = (policies.clone(), out.clone());
    let server = tokio::task::spawn_blocking(move || Server::start(&p, &o, otlp))
        .await
        .unwrap();

    // (1) the header secret, (3) the body secret: each a failure denial.
    let bad_id = format!(r#"{{"jsonrpc":"2.0","id":{{"{BODY_SECRET}":1}},"method":"tools/call"}}"#);
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":{{"{BODY_SECRET}":"{}"}},"method":"tools/call"}}"#,
        "x".repeat(900_000)
    );
    let dup = format!(r#"{{"jsonrpc":"2.0","id":1,"{BODY_SECRET}":1,"{BODY_SECRET}":2}}"#);
    let answers = check(
        server.grpc,
        vec![
            request("/lookup", ""),
            request("/add", ""),
            request("/int", ""),
            request("/mcp", &bad_id),
            request("/mcp", &huge),
            request("/mcp", &dup),
        ],
    )
    .await;
    assert_eq!(answers, vec![(7, 403); 6], "each a failure denial");

    // (2) the policy secret: a reload that does not load.
    write_broken(&policies);
    let start = Instant::now();
    let ready = loop {
        let r = server.get("/readyz");
        if !r.contains("\"lastReloadError\":null") {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reload was not refused: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listed = server.get("/policies");
    let metrics = server.get("/metrics");
    // The refusal names file, policy, field and kind.
    for needle in [
        "e-hmac.yaml",
        r#"ValidatingPolicy \"e-hmac\": spec.validations[0].expression: cel_syntax"#,
        r#"ValidatingPolicy \"f-regex\": spec.validations[0].expression: invalid_regex"#,
        r#"ValidatingPolicy \"g-value\": spec.failurePolicy: invalid_value"#,
        r#"ValidatingPolicy \"h-shape\": spec: invalid_spec"#,
    ] {
        assert!(ready.contains(needle), "{needle} not in {ready}");
    }
    assert!(
        metrics.contains("celgate_policy_reload_failing 1"),
        "{metrics}"
    );
    // ... and `validate` on the files shows the detail, secret included.
    let validated = celgate(&["validate", "--policies", policies.to_str().unwrap()]);
    let validated = String::from_utf8_lossy(&validated.stdout);
    for file in ["e-hmac", "f-regex", "g-value", "h-shape"] {
        assert!(validated.contains(&format!("{file}.yaml")), "{validated}");
    }
    assert!(
        validated.matches(POLICY_SECRET).count() >= 4,
        "validate does not show the detail: {validated}"
    );

    let (stdout, stderr) = tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
    let decisions = std::fs::read_to_string(out.join("decisions.jsonl")).unwrap();

    // Logs: JSON lines, each under the cap, naming field and kind.
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| {
            assert!(l.len() < MAX_LOG_LINE, "a log line of {} bytes", l.len());
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .collect();
    assert!(
        stderr.len() < 200_000,
        "{} bytes of logs for a 900 KB body",
        stderr.len()
    );
    let logged = |message: &str, policy: &str, kind: &str| {
        logs.iter()
            .filter(|l| {
                l["fields"]["message"] == message
                    && l["fields"]["policy"] == policy
                    && l["fields"]["error_kind"] == kind
            })
            .count()
    };
    let denied = "policy error: request denied (failurePolicy: Fail)";
    assert_eq!(logged(denied, "a-lookup", "no_such_key"), 1, "{stderr}");
    assert_eq!(logged(denied, "b-add", "no_such_overload"), 1, "{stderr}");
    assert_eq!(logged(denied, "c-int", "function_error"), 1, "{stderr}");
    assert_eq!(logged(denied, "d-mcp", "mcp_parse"), 3, "{stderr}");
    let ignored = "policy error ignored (failurePolicy: Ignore)";
    assert_eq!(
        logged(ignored, "0-ignored", "no_such_overload"),
        6,
        "{stderr}"
    );
    let x0 = "PolicyException exempt-known: spec.matchConditions[0].expression";
    assert!(
        logs.iter().any(|l| l["fields"]["message"] == denied
            && l["fields"]["field"] == x0
            && l["fields"]["error_kind"] == "no_such_key"),
        "{stderr}"
    );
    assert!(
        logs.iter().any(|l| l["fields"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("spec.validations[0].expression: cel_syntax"))),
        "{stderr}"
    );

    // Decision log: the failure denials, with field and kind.
    let lines: Vec<serde_json::Value> = decisions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["policy"].as_str().unwrap_or(""),
                l["error"].as_str().unwrap_or(""),
                l["errorKind"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let v0 = "spec.validations[0].expression";
    assert_eq!(
        kinds,
        [
            ("a-lookup", x0, "no_such_key"),
            ("b-add", v0, "no_such_overload"),
            ("c-int", v0, "function_error"),
            ("d-mcp", v0, "mcp_parse"),
            ("d-mcp", v0, "mcp_parse"),
            ("d-mcp", v0, "mcp_parse"),
        ]
    );

    // Spans: one per check, the error as field and kind.
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.spans.lock().unwrap().len() < 6 {
        assert!(Instant::now() < deadline, "spans did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = collector.spans.lock().unwrap().clone();
    let errors: Vec<String> = spans
        .iter()
        .filter_map(|s| span_attr(s, "celgate.error"))
        .collect();
    assert!(errors.contains(&format!("{x0}: no_such_key")), "{errors:?}");
    for reason in ["invalid_id", "duplicate_key"] {
        assert!(
            errors.contains(&format!("{v0}: mcp_parse ({reason})")),
            "{errors:?}"
        );
    }
    assert!(
        errors.contains(&format!("{v0}: function_error in int")),
        "{errors:?}"
    );

    assert_absent("stderr (logs)", &stderr);
    assert_absent("stdout", &stdout);
    assert_absent("the decision log", &decisions);
    assert_absent("the spans", &format!("{spans:?}"));
    assert_absent("/readyz", &ready);
    assert_absent("/policies", &listed);
    assert_absent("/metrics", &metrics);
}

/// A refused start is a server log too: file, policy, field and kind, never
/// the expression.
#[test]
fn a_refused_start_does_not_print_the_expression() {
    let tmp = tempfile::tempdir().unwrap();
    write_broken(tmp.path());
    let out = celgate(&[
        "serve",
        "--policies",
        tmp.path().to_str().unwrap(),
        "--grpc-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--http-addr",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(
        err.contains(r#"ValidatingPolicy "e-hmac": spec.validations[0].expression: cel_syntax"#),
        "{err}"
    );
    assert!(err.contains("celgate validate"), "{err}");
    assert_absent("the refusal", &err);
    assert_absent("stdout", &String::from_utf8_lossy(&out.stdout));
}
