//! No policy can crash or hang the process through its shape: expressions
//! over the load-time limits (length, nesting, depth counted through
//! variables) and `variables` read other than by name are refused when they
//! load, with the file, line, field and limit named — by `validate`, by
//! `serve` at start, and by a reload while serving, which keeps the last good
//! set answering. Expressions at the limits load and evaluate.

mod common;

use common::{free_port, get_blocking, loopback, ChildGuard};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const REFUSED: &str = "tests/refused";
const REQUEST: &str = r#"{"attributes": {"request": {"http": {"method": "GET", "path": "/"}}}}"#;

fn celgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_celgate"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    for var in [
        "CELGATE_POLICIES",
        "CELGATE_ALLOW_EMPTY",
        "CELGATE_KUBE",
        "CELGATE_NO_WATCH",
        "CELGATE_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A policy whose one validation is `expression`.
fn policy(name: &str, expression: &str) -> String {
    format!(
        "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: {name} }}\nspec:\n  evaluation: {{ mode: Envoy }}\n  validations:\n  - expression: '{expression}'\n"
    )
}

/// `1 + 1 + …` with `terms` terms: `terms` levels deep.
fn chain(terms: usize) -> String {
    format!("1{}", " + 1".repeat(terms - 1))
}

/// The 2,000-term chain of the issue.
fn too_deep() -> String {
    policy(
        "too-deep",
        &format!("{} > 0 ? envoy.Denied(500).Response() : null", chain(2000)),
    )
}

fn self_reading_variable() -> String {
    "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: { name: self-reading }\nspec:\n  evaluation: { mode: Envoy }\n  variables:\n  - name: a\n    expression: '[variables][0].a'\n  validations:\n  - expression: 'variables.a ? null : null'\n".to_owned()
}

#[test]
fn every_refused_policy_gives_exactly_its_expected_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join(REFUSED))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "{files:?}");
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut want: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(str::to_owned)
            .collect();
        assert!(!want.is_empty(), "{}: no `# expect:` line", path.display());
        let rel = path.strip_prefix(root).unwrap();
        let out = celgate()
            .args(["validate", "--output", "json", "--policies"])
            .arg(rel)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{}: exit {:?}, not 1\n{stdout}{}",
                rel.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let mut got: Vec<String> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert_eq!(p["file"], rel.to_str().unwrap());
                let place = match p["column"].as_u64() {
                    Some(c) => format!("{}:{c}", p["line"]),
                    None => p["line"].to_string(),
                };
                format!(
                    "{place}: {}: {}",
                    p["field"].as_str().unwrap_or("-"),
                    p["message"].as_str().unwrap_or("-")
                )
            })
            .collect();
        want.sort();
        got.sort();
        if got != want {
            failures.push(format!(
                "{}:\n  want {want:#?}\n  got  {got:#?}",
                rel.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// No false refusals: every policy the project ships (the bundled set, the
/// examples, the semantic cases) loads under the checker and the default
/// cost budget, with no error.
#[test]
fn every_shipped_policy_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("policies")];
    for parent in ["examples", "tests/cases"] {
        for entry in std::fs::read_dir(root.join(parent)).unwrap() {
            let path = entry.unwrap().path();
            let policies = path.join("policies");
            if policies.is_dir() {
                dirs.push(policies);
            } else if path.is_dir() && parent == "tests/cases" {
                dirs.push(path);
            }
        }
    }
    assert!(dirs.len() >= 18, "{dirs:?}");
    for dir in dirs {
        let out = celgate()
            .args(["validate", "--output", "json", "--policies"])
            .arg(&dir)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["errors"],
            0,
            "{}: {}",
            dir.display(),
            serde_json::to_string_pretty(&report["problems"]).unwrap()
        );
        let loaded = |key: &str| report[key].as_array().map_or(0, Vec::len);
        assert!(
            loaded("policies") + loaded("httpPolicies") > 0,
            "{}: no policy loaded",
            dir.display()
        );
    }
}

#[test]
fn validate_and_check_name_the_limit_and_exit_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, limit) in [
        (
            "deep.yaml",
            too_deep(),
            "spec.validations[0].expression: expression is nested more deeply than the limit of 100 levels",
        ),
        (
            "self.yaml",
            self_reading_variable(),
            "spec.variables[0].expression: `variables` can only be used",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = celgate()
            .args(["validate", "--policies"])
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains(limit), "{stdout}");
        // `check` refuses the set (exit 1, as `validate`) rather than
        // overflowing its stack.
        let request = dir.path().join("r.json");
        std::fs::write(&request, REQUEST).unwrap();
        let out = celgate()
            .args(["check", "--request"])
            .arg(&request)
            .arg("--policies")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("the limit of") || stderr.contains("`variables` can only"), "{stderr}");
    }
}

#[test]
fn an_expression_at_the_depth_limit_loads_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    // `chain(99) > 0` is 100 levels; the conditional around it one more, so
    // the chain is 98 terms.
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        policy(
            "at-the-limit",
            &format!("{} > 0 ? envoy.Denied(418).Response() : null", chain(98)),
        ),
    )
    .unwrap();
    let request = dir.path().join("r.json");
    std::fs::write(&request, REQUEST).unwrap();
    let out = celgate()
        .args(["check", "--request"])
        .arg(&request)
        .arg("--policies")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("418"), "{stdout}");
}

/// `serve` on free loopback ports, watching `dir`.
fn serve(dir: &Path, logs: &Path) -> (ChildGuard, SocketAddr, SocketAddr) {
    let grpc = loopback(free_port());
    let http = loopback(free_port());
    let mut cmd = celgate();
    cmd.args(["serve", "--policies"])
        .arg(dir)
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--http-addr", &http.to_string()]);
    (ChildGuard::spawn("serve", cmd, logs), grpc, http)
}

/// A misspelt request field: a type error.
fn misspelt_field() -> String {
    policy(
        "typo",
        r#"object.attributes.request.http.header[?"x"].orValue("") == "" ? envoy.Denied(500).Response() : null"#,
    )
}

/// Every pair of headers against the body: over the cost budget.
fn too_costly() -> String {
    policy(
        "costly",
        "object.attributes.request.http.headers.exists(k, object.attributes.request.http.headers.exists(j, object.attributes.request.http.body.contains(k + j))) ? envoy.Denied(500).Response() : null",
    )
}

/// A validation that returns a string.
fn not_a_response() -> String {
    policy("string-result", r#"object.attributes.request.http.method"#)
}

#[test]
fn serve_refuses_to_start_with_a_policy_over_the_limits() {
    for text in [
        too_deep(),
        self_reading_variable(),
        misspelt_field(),
        too_costly(),
        not_a_response(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), text).unwrap();
        let (mut server, _, _) = serve(dir.path(), logs.path());
        let exited = server.wait_exit("serve refusing to start");
        // A refusal, not a crash (134 is an abort: a stack overflow).
        assert!(exited.contains("exit status: 1"), "{exited}");
        assert!(
            [
                "limit_exceeded",
                "variables_misused",
                "type_error",
                "cost_exceeded",
                "result_type"
            ]
            .iter()
            .any(|k| exited.contains(k)),
            "{exited}"
        );
    }
}

fn request() -> CheckRequest {
    celgate::request_json::from_value(&serde_json::json!(
        {"attributes": {"request": {"http": {"method": "GET", "path": "/x"}}}}
    ))
    .unwrap()
}

async fn status(grpc: SocketAddr) -> i32 {
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    match client
        .check(request())
        .await
        .unwrap()
        .into_inner()
        .http_response
    {
        Some(HttpResponse::DeniedResponse(d)) => d.status.map(|s| s.code).unwrap_or(0),
        other => panic!("not a denial: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_over_the_limits_is_refused_and_the_last_good_set_answers() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.yaml"),
        policy("good", "envoy.Denied(401).Response()"),
    )
    .unwrap();
    let (mut server, grpc, http) = serve(dir.path(), logs.path());
    server.wait_until("ready", || {
        matches!(get_blocking(http, "/readyz"), Ok((200, _)))
    });
    assert_eq!(status(grpc).await, 401);

    for (refused, (name, text, kind)) in (1..).zip([
        ("deep.yaml", too_deep(), "limit_exceeded"),
        ("self.yaml", self_reading_variable(), "variables_misused"),
        ("typo.yaml", misspelt_field(), "type_error"),
        ("costly.yaml", too_costly(), "cost_exceeded"),
        ("string.yaml", not_a_response(), "result_type"),
    ]) {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        server.wait_until("the reload is refused", || {
            get_blocking(http, "/readyz").is_ok_and(|(code, body)| {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                code == 200 && v["reloads"]["errors"] == refused && body.contains(kind)
            })
        });
        // Alive, and the last good set still decides.
        server.check_alive().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status(grpc).await, 401);
        std::fs::remove_file(&file).unwrap();
    }

    // A policy at the depth limit is evaluated on the decision threads.
    std::fs::write(
        dir.path().join("good.yaml"),
        policy(
            "good",
            &format!("{} > 0 ? envoy.Denied(402).Response() : null", chain(98)),
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(grpc).await != 402 {
        server.check_alive().unwrap_or_else(|e| panic!("{e}"));
        assert!(Instant::now() < deadline, "{}", server.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.check_alive().unwrap_or_else(|e| panic!("{e}"));
}

/// Request data is converted to CEL values recursively; its depth is bounded
/// by the JSON parser (128 levels) before any conversion: a deeply nested
/// MCP body is an evaluation error (a denial), and a deeply nested request
/// file is refused, neither a crash.
#[test]
fn deeply_nested_request_data_is_refused_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        policy(
            "mcp",
            "mcp.Parse(object.attributes.request.http.body).Method == \"tools/call\" ? envoy.Denied(409).Response() : null",
        ),
    )
    .unwrap();
    let request = dir.path().join("r.json");
    let check = |levels: usize| {
        let deep = format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let body = format!(
            r#"{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {{"name": "t", "arguments": {{"a": {deep}}}}}}}"#
        );
        std::fs::write(
            &request,
            serde_json::json!({"attributes": {"request": {"http": {
                "method": "POST", "path": "/mcp", "body": body}}}})
            .to_string(),
        )
        .unwrap();
        let out = celgate()
            .args(["check", "--explain", "--request"])
            .arg(&request)
            .arg("--policies")
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    // Shallow: parsed, the policy decides (3: denied by a policy).
    let (code, text) = check(3);
    assert_eq!(code, Some(3), "{text}");
    // Deep: refused by the parser; the policy's error is a denial (4).
    let (code, text) = check(100_000);
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("recursion limit exceeded"), "{text}");

    // A request file nested deeper than the parser's limit.
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_request = format!(
        r#"{{"attributes": {{"metadataContext": {{"filterMetadata": {{"x": {{"a": {deep}}}}}}}}}}}"#
    );
    std::fs::write(&request, deep_request).unwrap();
    let out = celgate()
        .args(["check", "--request"])
        .arg(&request)
        .arg("--policies")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
