//! The policy authors' commands as a user runs them: exit statuses and
//! output of `check`, `validate`, `test`, `completions` and `--help`, on
//! good, denied and broken inputs, and `serve` where it refuses to start.
//! Outputs are pinned as snapshots (`tests/snapshots/`); timings are masked.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn celgate(args: &[&str], stdin: Option<&str>) -> Out {
    celgate_with(args, &[], stdin)
}

/// As [`celgate`], with environment variables set.
fn celgate_with(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CELGATE_POLICIES")
        .env_remove("CELGATE_ALLOW_EMPTY")
        .env_remove("CELGATE_LOG")
        .env_remove("CELGATE_FAILURE_STATUS")
        .env_remove("CELGATE_FAILURE_BODY")
        .env_remove("CELGATE_FAILURE_HEADER")
        .env("COLUMNS", "100")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run celgate");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("wait for celgate");
    Out {
        code: out.status.code().expect("exit status"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Masks `time="0.000123"` so snapshots do not depend on speed.
fn mask_times(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("time=\"") {
        out.push_str(&rest[..i + 6]);
        rest = &rest[i + 6..];
        let end = rest.find('"').unwrap_or(rest.len());
        out.push_str("[t]");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn check_allowed_prints_the_response_and_exits_0() {
    let o = celgate(
        &["check", "--request", "tests/cli/requests/allowed.json"],
        None,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stderr, "");
    insta::assert_snapshot!(o.stdout);
}

/// `check --http-request`: an HTTP request (LF line ends accepted) for the
/// HTTP-mode policies, with the HTTP server's options; the answer printed
/// as HTTP, the exit status as for --request.
#[test]
fn check_decides_an_http_request_for_the_http_mode_policies() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kyverno-http");
    let read = |f: &str| std::fs::read_to_string(example.join(f)).unwrap();
    let (input, output) = (read("input.cel"), read("output.cel"));
    let args = |explain: bool| {
        let mut a = vec![
            "check",
            "--policies",
            "examples/kyverno-http/policy.yaml",
            "--http-request",
            "-",
            "--input-expression",
            input.as_str(),
            "--output-expression",
            output.as_str(),
        ];
        if explain {
            a.push("--explain");
        }
        a
    };
    let alice = "GET / HTTP/1.1\nHost: celgate\nX-Original-Method: GET\n\
                 X-Original-Url: http://app.example/api/orders\nX-Api-Key: demo-key-alice\n\n";
    let o = celgate(&args(false), Some(alice));
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "HTTP/1.1 200 OK\n\n"),
        "{}",
        o.stderr
    );
    let nobody = "GET / HTTP/1.1\r\nHost: celgate\r\nX-Original-Method: GET\r\n\
                  X-Original-Url: http://app.example/api/orders\r\n\r\n";
    let o = celgate(&args(true), Some(nobody));
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stdout.starts_with("HTTP/1.1 401 Unauthorized\n"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.ends_with("\n\nUnauthorized\n"), "{}", o.stdout);
    assert!(
        o.stderr.contains("api-keys"),
        "--explain names the policy: {}",
        o.stderr
    );
    // Without the original request the input expression fails: exit 4.
    let o = celgate(&args(false), Some("GET / HTTP/1.1\nHost: celgate\n\n"));
    assert_eq!(o.code, 4, "{} {}", o.stdout, o.stderr);
    // Not a request; and the Envoy-mode policies alone, which decide nothing here.
    let o = celgate(&args(false), Some("hello"));
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = celgate(
        &["check", "--policies", "policies", "--http-request", "-"],
        Some("GET / HTTP/1.1\nHost: a\n\n"),
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("no HTTP-mode ValidatingPolicy"),
        "{}",
        o.stderr
    );
    // One of --request and --http-request, never both.
    let o = celgate(&["check", "--policies", "policies"], None);
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = celgate(&["check", "--request", "-", "--http-request", "-"], None);
    assert_eq!(o.code, 2, "{}", o.stderr);
}

#[test]
fn check_denied_exits_3_and_explains() {
    let o = celgate(
        &[
            "check",
            "--policies",
            "policies",
            "--request",
            "tests/cli/requests/denied.json",
            "--explain",
        ],
        None,
    );
    assert_eq!(o.code, 3, "{}", o.stderr);
    let json: serde_json::Value = serde_json::from_str(&o.stdout).expect("stdout is JSON");
    assert_eq!(json["deniedResponse"]["status"]["code"], 404);
    insta::assert_snapshot!("check_denied_stdout", o.stdout);
    insta::assert_snapshot!("check_denied_explain", o.stderr);
}

#[test]
fn check_reads_standard_input_and_explains_variables() {
    let req = r#"{"attributes":{"request":{"http":{"method":"POST","path":"/api/orders","headers":{"x-api-key":"demo-key-bob"}}}}}"#;
    let o = celgate(&["check", "--request", "-", "--explain"], Some(req));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("variable key = \"demo-key-bob\" (evaluated once)"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("allow-public-paths: skipped"),
        "{}",
        o.stderr
    );
    insta::assert_snapshot!(o.stderr);
}

#[test]
fn check_evaluation_error_is_a_denial_with_exit_4() {
    let o = celgate(
        &[
            "check",
            "--policies",
            "tests/cli/erroring",
            "--request",
            "-",
            "--explain",
            "--failure-status",
            "503",
        ],
        Some(r#"{"attributes":{"request":{"http":{"headers":{"x-n":"0"}}}}}"#),
    );
    assert_eq!(o.code, 4, "{}", o.stderr);
    insta::assert_snapshot!("check_error_stdout", o.stdout);
    insta::assert_snapshot!("check_error_explain", o.stderr);
}

/// `check` answers with the failure denial `serve` would send: the marker
/// header and the fixed body by default, both set by the same flags and
/// variables, the header off with an empty value.
#[test]
fn check_shows_the_failure_denial_serve_sends() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec![
            "check",
            "--policies",
            "tests/cli/erroring",
            "--request",
            "tests/cli/requests/allowed.json",
        ];
        all.extend_from_slice(args);
        let o = celgate_with(&all, env, None);
        assert_eq!(o.code, 4, "{args:?} {env:?}: {}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON");
        v["deniedResponse"].clone()
    };
    let d = run(&[], &[]);
    assert_eq!(
        d["headers"],
        serde_json::json!([{"key": "x-celgate-failure", "value": "evaluation"}])
    );
    assert_eq!(
        d["body"],
        "request denied: a policy could not be evaluated\n"
    );
    let d = run(&["--failure-header", "X-Why", "--failure-body", "{}"], &[]);
    assert_eq!(
        d["headers"],
        serde_json::json!([{"key": "x-why", "value": "evaluation"}])
    );
    assert_eq!(d["body"], "{}");
    let d = run(
        &[],
        &[("CELGATE_FAILURE_HEADER", ""), ("CELGATE_FAILURE_BODY", "")],
    );
    assert_eq!(
        d,
        serde_json::json!({"status": {"code": 403}}),
        "no header, no body"
    );
    let d = run(&["--failure-header="], &[]);
    assert!(d.get("headers").is_none(), "{d}");

    for bad in ["x:y", "content-length", "two words"] {
        let o = celgate(
            &[
                "check",
                "--request",
                "tests/cli/requests/allowed.json",
                "--failure-header",
                bad,
            ],
            None,
        );
        assert_eq!(o.code, 2, "{bad}: {}", o.stderr);
        assert!(o.stderr.contains("--failure-header"), "{}", o.stderr);
    }
}

#[test]
fn check_bad_request_exits_2_and_policies_that_do_not_load_exit_1() {
    let o = celgate(
        &[
            "check",
            "--request",
            "tests/cli/requests/not-a-request.json",
        ],
        None,
    );
    assert_eq!(o.code, 2);
    assert_eq!(o.stdout, "");
    insta::assert_snapshot!("check_bad_request", o.stderr);

    let o = celgate(
        &["check", "--request", "tests/cli/requests/missing.json"],
        None,
    );
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("missing.json"), "{}", o.stderr);

    let o = celgate(
        &[
            "check",
            "--policies",
            "tests/cli/broken",
            "--request",
            "tests/cli/requests/allowed.json",
        ],
        None,
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(o.stdout, "");
    assert!(
        o.stderr.contains("spec.validations[2].expression"),
        "{}",
        o.stderr
    );
}

#[test]
fn validate_good_policies_exit_0() {
    let o = celgate(&["validate"], None);
    assert_eq!(o.code, 0, "{}", o.stdout);
    insta::assert_snapshot!(o.stdout);
}

#[test]
fn validate_reports_every_problem_with_file_line_policy_and_field() {
    let o = celgate(
        &[
            "validate",
            "--policies",
            "tests/cli/broken",
            "--policies",
            "tests/cli/warnings",
        ],
        None,
    );
    assert_eq!(o.code, 1);
    insta::assert_snapshot!(o.stdout);
}

#[test]
fn validate_json_output_for_tools() {
    let o = celgate(
        &[
            "validate",
            "--policies",
            "tests/cli/broken",
            "--policies",
            "tests/cli/warnings",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(o.code, 1);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON");
    assert_eq!(v["errors"], 5);
    assert_eq!(v["warnings"], 5);
    let problems = v["problems"].as_array().expect("problems");
    let undefined = problems
        .iter()
        .find(|p| p["field"] == "spec.validations[2].expression")
        .expect("the undefined variable is reported");
    assert_eq!(undefined["file"], "tests/cli/broken/bad-cel.yaml");
    assert_eq!(undefined["line"], 18);
    assert_eq!(undefined["policy"], "broken-cel");
    assert_eq!(undefined["severity"], "error");
    insta::assert_snapshot!(o.stdout);
}

#[test]
fn check_explain_shows_what_audit_policies_would_have_denied() {
    let request = r#"{"attributes": {"request": {"http": {"method": "DELETE", "path": "/boom"}}}}"#;
    let o = celgate(
        &[
            "check",
            "--policies",
            "tests/cases/audit/policies.yaml",
            "--request",
            "-",
            "--explain",
            "--audit-header",
            "x-celgate-audit",
        ],
        Some(request),
    );
    assert_eq!(o.code, 0, "allowed: {}{}", o.stdout, o.stderr);
    let response: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON");
    assert_eq!(
        response["okResponse"]["responseHeadersToAdd"][1],
        serde_json::json!({"key": "x-celgate-audit", "value": "a-shadow-key, b-warn-method, c-audit-broken"})
    );
    for line in [
        "a-shadow-key: would deny: recorded, not enforced (validationActions [Audit]); evaluation goes on",
        "c-audit-broken: evaluation error: recorded, not enforced (validationActions [Audit]); evaluation goes on",
        "decision: allowed by policy z-decide, spec.validations[0]",
        "audit: policy a-shadow-key would have denied with HTTP 401: spec.validations[1] (validationActions [Audit])",
        "audit: policy b-warn-method would have denied with HTTP 405: spec.validations[0] (validationActions [Warn]); the client is warned",
        "audit: policy c-audit-broken would have denied with HTTP 403: failed to evaluate (spec.validations[0].expression: no_such_key) (validationActions [Audit])",
    ] {
        assert!(o.stderr.contains(line), "{line:?} not in:\n{}", o.stderr);
    }
}

#[test]
fn check_explain_names_the_policies_the_index_ruled_out() {
    let request =
        r#"{"attributes": {"request": {"http": {"host": "zzz", "method": "GET", "path": "/"}}}}"#;
    let args = [
        "check",
        "--policies",
        "tests/cases/index/policies.yaml",
        "--request",
        "-",
        "--explain",
    ];
    let o = celgate(&args, Some(request));
    assert_eq!(o.code, 0, "allowed: {}{}", o.stdout, o.stderr);
    for line in [
        "a-host: skipped by the policy index, not evaluated (a matchCondition is false: indexed on request.http.host: 1 value)",
        "d-path-prefix: skipped by the policy index, not evaluated (a matchCondition is false: indexed on request.http.path: 1 prefix)",
        "the policy index ruled out 7 of them without evaluating their matchConditions",
        "decision: allowed by policy z-allow, spec.validations[0]",
    ] {
        assert!(o.stderr.contains(line), "{line:?} not in:\n{}", o.stderr);
    }
    // Without the index: the same answer, every condition evaluated.
    let mut off = args.to_vec();
    off.push("--no-policy-index");
    let linear = celgate(&off, Some(request));
    assert_eq!((linear.code, &linear.stdout), (o.code, &o.stdout));
    assert!(!linear.stderr.contains("policy index"), "{}", linear.stderr);
    assert!(linear
        .stderr
        .contains("a-host: skipped (a matchCondition is false)"));
}

#[test]
fn validate_warns_of_unindexed_policies_when_asked() {
    let args = ["validate", "--policies", "tests/cases/index/policies.yaml"];
    let o = celgate(&args, None);
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert!(!o.stdout.contains("policy index"), "{}", o.stdout);
    let o = celgate(&[&args[..], &["--warn-unindexed"]].concat(), None);
    assert_eq!(o.code, 0, "{}", o.stdout);
    let warned: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.contains("the policy index reads none of these conditions"))
        .collect();
    // The seven near misses; neither the indexed policies nor z-allow,
    // which has no matchConditions.
    assert_eq!(warned.len(), 7, "{}", o.stdout);
    assert!(
        warned.iter().all(|l| l.contains("policy n")),
        "{}",
        o.stdout
    );
}

#[test]
fn validate_warnings_alone_exit_0() {
    let o = celgate(&["validate", "--policies", "tests/cli/warnings"], None);
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert!(
        o.stdout
            .contains("so spec.validations[1].expression will never run"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("did you mean validations?"),
        "{}",
        o.stdout
    );
}

#[test]
fn test_passing_suites_exit_0() {
    let o = celgate(&["test", "policies"], None);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    insta::assert_snapshot!(o.stdout);
}

#[test]
fn test_failing_suite_names_the_case_with_expected_and_got() {
    let o = celgate(&["test", "tests/cli/failing"], None);
    assert_eq!(o.code, 1);
    assert!(o
        .stdout
        .contains("FAIL    failing-on-purpose  wrong user header"));
    assert!(o
        .stdout
        .contains(r#"headers: expected {"x-user": "bob"}, got {"x-user": "alice"}"#));
    insta::assert_snapshot!(o.stdout);
}

#[test]
fn test_filter_runs_matching_cases_only() {
    let o = celgate(&["test", "tests/cli/failing", "--filter", "health"], None);
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert!(o.stdout.contains("1 passed, 0 failed"), "{}", o.stdout);
    let o = celgate(
        &["test", "tests/cli/failing", "--filter", "nothing matches"],
        None,
    );
    assert_eq!(o.code, 2);
}

#[test]
fn test_junit_output_is_well_formed_and_counts() {
    let o = celgate(&["test", "tests/cli/failing", "--output", "junit"], None);
    assert_eq!(o.code, 1);
    let doc = roxmltree::Document::parse(&o.stdout).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("3"));
    assert_eq!(root.attribute("failures"), Some("2"));
    let failures: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .collect();
    assert_eq!(failures.len(), 2);
    insta::assert_snapshot!(mask_times(&o.stdout));
}

#[test]
fn test_without_suites_exit_2() {
    let o = celgate(&["test", "tests/cli/broken"], None);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("no test suites"), "{}", o.stderr);
}

/// Each error names the file at fault once: the file, then what is wrong.
#[test]
fn errors_name_the_file_once() {
    let suite = "tests/cli/faults/bad-suite/bad.test.yaml";
    let o = celgate(&["test", suite], None);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(o.stderr.matches(suite).count(), 1, "{}", o.stderr);
    assert!(
        o.stderr.starts_with(&format!(
            "celgate: {suite}: document 1: not valid YAML/JSON"
        )),
        "{}",
        o.stderr
    );
    // A suite with no name of its own is called by its file, and that file
    // is not named twice on one line.
    let unnamed = "tests/cli/faults/unnamed/unnamed.test.yaml";
    let o = celgate(&["test", unnamed], None);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.starts_with(&format!(
            "celgate: suite did not run: {unnamed}: its policies do not load"
        )),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.matches(unnamed).count(), 1, "{}", o.stderr);
    assert!(
        o.stdout
            .ends_with(&format!("failed:\n  {unnamed}: suite did not run\n")),
        "{}",
        o.stdout
    );

    let o = celgate(
        &[
            "check",
            "--request",
            "tests/cli/requests/not-a-request.json",
        ],
        None,
    );
    assert_eq!(
        o.stderr.matches("not-a-request.json").count(),
        1,
        "{}",
        o.stderr
    );
    let o = celgate(
        &["check", "--request", "tests/cli/requests/missing.json"],
        None,
    );
    assert_eq!(o.stderr.matches("missing.json").count(), 1, "{}", o.stderr);
    for policies in [
        "tests/cli/faults/yaml",
        "tests/cli/faults/cel",
        "tests/cli/nowhere",
    ] {
        let o = celgate(
            &[
                "check",
                "--policies",
                policies,
                "--request",
                "tests/cli/requests/allowed.json",
            ],
            None,
        );
        assert_eq!(o.stderr.matches(policies).count(), 1, "{}", o.stderr);
        let o = celgate(&["validate", "--policies", policies], None);
        assert_eq!(o.stdout.matches(policies).count(), 1, "{}", o.stdout);
    }
}

/// No Envoy-mode policy: every request would be allowed, so, as `serve`,
/// `check`, `validate` and a test suite refuse the set unless asked for it.
#[test]
fn zero_policies_are_refused_unless_allowed_and_always_said() {
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check",
            "--policies",
            "tests/cli/faults/empty",
            "--request",
            "tests/cli/requests/denied.json",
        ];
        args.extend_from_slice(extra);
        celgate(&args, None)
    };
    let o = check(&[]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(o.stdout, "");
    assert!(
        o.stderr.starts_with(
            "celgate: no Envoy-mode ValidatingPolicy in tests/cli/faults/empty, \
             so every request would be allowed; refused"
        ) && o.stderr.contains("--allow-empty"),
        "{}",
        o.stderr
    );
    let o = check(&["--allow-empty"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .starts_with("celgate: warning: no Envoy-mode ValidatingPolicy"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.contains("okResponse"), "{}", o.stdout);

    let o = celgate(&["validate", "--policies", "tests/cli/faults/empty"], None);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stdout
            .contains("\nerror: no Envoy-mode ValidatingPolicy in tests/cli/faults/empty"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.ends_with("invalid: 1 error(s), 1 warning(s)\n"),
        "{}",
        o.stdout
    );
    // Allowed through the environment, as `serve`'s flag: a warning.
    let o = celgate_with(
        &[
            "validate",
            "--policies",
            "tests/cli/faults/empty",
            "--output",
            "json",
        ],
        &[("CELGATE_ALLOW_EMPTY", "true")],
        None,
    );
    assert_eq!(o.code, 0, "{}", o.stdout);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON");
    let last = v["problems"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["severity"], "warning", "{last}");
    assert!(last["file"].is_null(), "{last}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("(accepted: --allow-empty)"),
        "{last}"
    );

    let o = celgate(&["test", "tests/cli/faults/suites/empty.test.yaml"], None);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr.starts_with(
            "celgate: suite empty did not run: tests/cli/faults/suites/empty.test.yaml: \
             no Envoy-mode ValidatingPolicy"
        ) && o.stderr.contains("allowEmpty: true"),
        "{}",
        o.stderr
    );
    let o = celgate(&["test", "tests/cli/faults/empty-allowed"], None);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("1 passed, 0 failed"), "{}", o.stdout);
    // Accepted, and said, as `check --allow-empty` says it.
    assert_eq!(
        o.stderr,
        "celgate: warning: suite empty-allowed (tests/cli/faults/empty-allowed/empty.test.yaml): \
         no Envoy-mode ValidatingPolicy in tests/cli/faults/empty-allowed/../empty, so every \
         request would be allowed (accepted: `allowEmpty: true`)\n"
    );
}

#[test]
fn test_path_that_does_not_exist_exits_1_like_a_policy_path() {
    let o = celgate(&["test", "tests/cli/nowhere"], None);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(o.stdout, "");
    assert!(o.stderr.contains("tests/cli/nowhere"), "{}", o.stderr);
}

#[test]
fn completions_and_manual() {
    for shell in ["bash", "zsh", "fish"] {
        let o = celgate(&["completions", shell], None);
        assert_eq!(o.code, 0, "{shell}: {}", o.stderr);
        for word in ["validate", "explain", "policies", "junit"] {
            assert!(o.stdout.contains(word), "{shell} completion lacks {word}");
        }
    }
    let o = celgate(&["man"], None);
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.starts_with(".ie"),
        "{}",
        &o.stdout[..80.min(o.stdout.len())]
    );
    assert!(o.stdout.contains(".TH celgate"));
    let o = celgate(&["completions", "tcsh"], None);
    assert_eq!(o.code, 2);
}

#[test]
fn help_documents_exit_status_and_environment() {
    let o = celgate(&["--help"], None);
    assert_eq!(o.code, 0);
    assert!(
        o.stdout
            .contains("EXIT STATUS (the same for every command)"),
        "{}",
        o.stdout
    );
    let o = celgate(&["check", "--help"], None);
    assert!(
        o.stdout.contains("[env: CELGATE_POLICIES=]"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("Exit status: 0 allowed, 3 denied"),
        "{}",
        o.stdout
    );
    insta::assert_snapshot!("help_check", o.stdout);
    // serve's failure denial: the same flags as check, each with its variable.
    let o = celgate(&["serve", "--help"], None);
    for flag in [
        "--failure-status",
        "CELGATE_FAILURE_STATUS",
        "--failure-body",
        "CELGATE_FAILURE_BODY",
        "--failure-header",
        "CELGATE_FAILURE_HEADER",
        "[default: x-celgate-failure]",
    ] {
        assert!(o.stdout.contains(flag), "serve --help lacks {flag}");
    }
}

/// Runs celgate without input and waits at most 20 s (a `serve` that
/// starts is stopped and fails the test); its exit status and output.
fn celgate_until_exit(args: &[&str]) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CELGATE_POLICIES")
        .env_remove("CELGATE_ALLOW_EMPTY")
        .env_remove("CELGATE_LOG")
        .env("COLUMNS", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run celgate");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("{args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Out {
        code: out.status.code().expect("exit status"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// The first error line of an error output: warnings are passed over, and a
/// heading (a line ending in `:`) is followed by the first item of its list.
fn first_error(text: &str) -> String {
    let mut lines = text.lines().filter(|l| !l.contains("warning:"));
    let first = lines.next().unwrap_or("(nothing)").to_owned();
    if !first.ends_with(':') {
        return first;
    }
    match lines.find(|l| l.starts_with("  - ")) {
        Some(item) => format!("{first}\n    {}", item.trim_start()),
        None => first,
    }
}

/// The same faults through every command: each exits 1 and its first error
/// line names the fault (validate's report is its standard output).
#[test]
fn every_command_reports_the_same_faults_with_the_same_status() {
    let grpc = format!("127.0.0.1:{}", common::free_port());
    let http = format!("127.0.0.1:{}", common::free_port());
    let mut table = String::new();
    for fault in ["missing", "yaml", "cel", "empty"] {
        let policies = format!("tests/cli/faults/{fault}");
        let suite = format!("tests/cli/faults/suites/{fault}.test.yaml");
        let runs: [(&str, Vec<&str>); 5] = [
            (
                "check",
                vec![
                    "check",
                    "--policies",
                    &policies,
                    "--request",
                    "tests/cli/requests/allowed.json",
                ],
            ),
            ("validate", vec!["validate", "--policies", &policies]),
            ("test", vec!["test", &suite]),
            (
                "diff",
                vec![
                    "diff",
                    "--from",
                    "policies",
                    "--to",
                    &policies,
                    "--requests",
                    "tests/cli/requests/allowed.json",
                ],
            ),
            (
                "serve",
                vec![
                    "serve",
                    "--policies",
                    &policies,
                    "--grpc-addr",
                    &grpc,
                    "--http-addr",
                    &http,
                    "--no-watch",
                    "--log",
                    "error",
                ],
            ),
        ];
        for (command, args) in runs {
            let o = celgate_until_exit(&args);
            let errors = if command == "validate" {
                &o.stdout
            } else {
                &o.stderr
            };
            assert_eq!(o.code, 1, "{command} on {fault}: {}{}", o.stdout, o.stderr);
            assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
            table.push_str(&format!(
                "{command} ({fault}): exit {}\n  {}\n",
                o.code,
                first_error(errors)
            ));
        }
    }
    // test's own PATH, as a policy path of the other commands.
    let o = celgate_until_exit(&["test", "tests/cli/faults/missing"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    table.push_str(&format!(
        "test PATH (missing): exit {}\n  {}\n",
        o.code,
        first_error(&o.stderr)
    ));
    insta::assert_snapshot!(table);
}

/// `celgate ... | head`: a reader that has gone away ends the output
/// quietly, with the usual exit status, also when standard error goes to the
/// same closed pipe (`2>&1 | head`).
#[test]
fn closed_stdout_ends_every_command_quietly() {
    let allowed = "tests/cli/requests/allowed.json";
    let denied = "tests/cli/requests/denied.json";
    let cases: &[(&[&str], i32)] = &[
        (&["check", "--request", allowed], 0),
        (&["check", "--request", denied, "--explain"], 3),
        (&["validate"], 0),
        (&["validate", "--output", "json"], 0),
        (&["validate", "--policies", "tests/cli/broken"], 1),
        (&["test", "policies"], 0),
        (&["test", "tests/cli/failing", "--output", "junit"], 1),
        (&["test", "tests/cli/faults/suites"], 1),
        (
            &[
                "diff",
                "--from",
                "policies",
                "--to",
                "policies",
                "--requests",
                "tests/cli/diff/requests",
            ],
            0,
        ),
        (
            &[
                "diff",
                "--from",
                DIFF_FROM,
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/diff/requests",
                "tests/cli/diff/suite",
            ],
            1,
        ),
        (&["completions", "bash"], 0),
        (&["man"], 0),
        (&["--help"], 0),
    ];
    for &(args, code) in cases {
        for both in [false, true] {
            // A pipe whose reading end is closed before celgate starts: every
            // write fails with EPIPE.
            let (reader, writer) = std::io::pipe().expect("pipe");
            drop(reader);
            let stderr = if both {
                Stdio::from(writer.try_clone().expect("pipe"))
            } else {
                Stdio::piped()
            };
            let out = Command::new(env!("CARGO_BIN_EXE_celgate"))
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env_remove("CELGATE_POLICIES")
                .env_remove("CELGATE_ALLOW_EMPTY")
                .env_remove("CELGATE_LOG")
                .env_remove("RUST_BACKTRACE")
                .stdin(Stdio::null())
                .stdout(writer)
                .stderr(stderr)
                .output()
                .expect("run celgate");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{args:?} (stderr closed too: {both}): {err}"
            );
            assert!(
                !err.contains("panicked") && !err.contains("Broken pipe"),
                "{args:?}: {err}"
            );
        }
    }
}

/// `serve --help` names every path the HTTP listener serves.
#[test]
fn serve_help_names_every_http_route() {
    let router = std::fs::read_to_string("src/server/http.rs").unwrap();
    let routes: Vec<&str> = router
        .split(".route(\"")
        .skip(1)
        .map(|r| &r[..r.find('"').unwrap()])
        .collect();
    assert!(routes.contains(&"/metrics"), "{routes:?}");
    let o = celgate(&["serve", "--help"], None);
    assert_eq!(o.code, 0);
    let help = o.stdout.split("--http-addr").nth(1).unwrap();
    let help = &help[..help.find("[env:").unwrap()];
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for route in routes {
        assert!(
            help.contains(&format!("GET {route} ")),
            "--http-addr help lacks {route}:\n{help}"
        );
    }
}

/// `serve` on free loopback ports, output to `<log_dir>/serve.log`.
fn spawn_serve(
    args: &[&str],
    env: &[(&str, &str)],
    log_dir: &Path,
) -> (common::ChildGuard, SocketAddr) {
    let http = common::loopback(common::free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_celgate"));
    cmd.arg("serve")
        .args(args)
        .args(["--grpc-addr", &format!("127.0.0.1:{}", common::free_port())])
        .args(["--http-addr", &http.to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for var in [
        "CELGATE_POLICIES",
        "CELGATE_ALLOW_EMPTY",
        "CELGATE_KUBE",
        "CELGATE_NO_WATCH",
        "CELGATE_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    (common::ChildGuard::spawn("serve", cmd, log_dir), http)
}

/// Waits up to 20 s for `serve` to exit; its exit status and output.
fn refused(server: &mut common::ChildGuard) -> String {
    server.wait_exit("serve refusing to start")
}

/// Waits up to 20 s for `/readyz` to answer 200; its JSON.
fn ready(server: &mut common::ChildGuard, http: SocketAddr) -> serde_json::Value {
    let mut body = None;
    server.wait_until("not ready", || {
        body = match common::get_blocking(http, "/readyz") {
            Ok((200, b)) => Some(b),
            _ => None,
        };
        body.is_some()
    });
    serde_json::from_str(&body.unwrap()).expect("/readyz is JSON")
}

const ENVOY_POLICY: &str = "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: { name: p }\nspec:\n  evaluation: { mode: Envoy }\n  validations:\n  - expression: envoy.Denied(403).Response()\n";

#[test]
fn serve_refuses_to_start_with_no_envoy_policy() {
    let logs = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let renamed = tempfile::tempdir().unwrap();
    std::fs::write(renamed.path().join("p.yaml.bak"), ENVOY_POLICY).unwrap();
    let admission = tempfile::tempdir().unwrap();
    std::fs::write(
        admission.path().join("p.yaml"),
        ENVOY_POLICY.replace("mode: Envoy", "mode: Kubernetes"),
    )
    .unwrap();
    let cases = [
        ("an empty directory", empty.path().to_str().unwrap()),
        (
            "the only policy renamed to .bak",
            renamed.path().to_str().unwrap(),
        ),
        (
            "only a Kubernetes-mode policy",
            admission.path().to_str().unwrap(),
        ),
        ("no policy paths at all", ""),
        // HTTP-mode policies decide nothing without the authorization
        // listener: every gRPC Check would be allowed.
        (
            "only an HTTP-mode policy, without --authz-http-addr",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/cases/httpmode-nginx/policy.yaml"
            ),
        ),
    ];
    for (what, dir) in cases {
        let (mut server, _) = spawn_serve(&["--policies", dir], &[], logs.path());
        let out = refused(&mut server);
        assert!(out.contains("exit status: 1"), "{what}: {out}");
        assert!(
            out.contains("refusing to start")
                && out.contains("no Envoy-mode ValidatingPolicy")
                && out.contains("--allow-empty"),
            "{what}: {out}"
        );
    }
}

#[test]
fn serve_takes_http_mode_policies_alone_when_it_answers_them() {
    let logs = tempfile::tempdir().unwrap();
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cases/httpmode-nginx/policy.yaml"
    );
    let (mut server, http) = spawn_serve(
        &["--policies", policy, "--authz-http-addr", "127.0.0.1:0"],
        &[],
        logs.path(),
    );
    let r = ready(&mut server, http);
    assert_eq!(
        (&r["policies"], &r["httpPolicies"]),
        (&0.into(), &1.into()),
        "{r}"
    );
    server.stop();
}

#[test]
fn serve_with_allow_empty_serves_an_empty_set_and_loads_a_late_path() {
    let logs = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let (mut server, http) = spawn_serve(
        &[
            "--policies",
            empty.path().to_str().unwrap(),
            "--allow-empty",
        ],
        &[],
        logs.path(),
    );
    let r = ready(&mut server, http);
    assert_eq!(r["policies"], 0, "{r}");
    server.stop();
    let log = server.log_tail();
    assert!(
        log.contains(
            "no Envoy-mode ValidatingPolicy, every request is allowed (accepted: --allow-empty)"
        ),
        "serve says it serves nothing:\n{log}"
    );

    // Through the environment, with a path that does not exist yet.
    let root = tempfile::tempdir().unwrap();
    let later = root.path().join("policies");
    let (mut server, http) = spawn_serve(
        &["--policies", later.to_str().unwrap()],
        &[("CELGATE_ALLOW_EMPTY", "true")],
        logs.path(),
    );
    let r = ready(&mut server, http);
    assert_eq!(r["policies"], 0, "{r}");
    assert!(
        r["lastReloadError"].to_string().contains("policies"),
        "the missing path is shown: {r}"
    );
    std::fs::create_dir(&later).unwrap();
    std::fs::write(later.join("p.yaml"), ENVOY_POLICY).unwrap();
    let start = Instant::now();
    loop {
        let r = ready(&mut server, http);
        if r["policies"] == 1 && r["lastReloadError"].is_null() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the late path was not loaded: {r}\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn misspelt_kinds_and_modes_are_errors_in_validate_and_serve() {
    let o = celgate(
        &[
            "validate",
            "--policies",
            "tests/cli/misspelt",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(o.code, 1, "{}", o.stdout);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("JSON");
    let problems = v["problems"].as_array().expect("problems");
    let error = |policy: &str, field: &str, says: &str| {
        let p = problems
            .iter()
            .find(|p| p["policy"] == policy)
            .unwrap_or_else(|| panic!("{policy} is reported: {}", o.stdout));
        assert_eq!(p["severity"], "error", "{p}");
        assert_eq!(p["field"], field, "{p}");
        assert!(p["message"].as_str().unwrap().contains(says), "{p}");
        assert!(p["line"].as_u64().unwrap() > 1, "{p}");
    };
    error(
        "lower-case-mode",
        "spec.evaluation.mode",
        "did you mean Envoy?",
    );
    error(
        "transposed-mode",
        "spec.evaluation.mode",
        "did you mean Envoy?",
    );
    error("plural-kind", "kind", "did you mean ValidatingPolicy?");
    error("unknown-kind", "kind", "not a kind of policies.kyverno.io");
    error(
        "misspelt-group",
        "apiVersion",
        "did you mean policies.kyverno.io/v1",
    );
    error(
        "unknown-version",
        "apiVersion",
        "not a version celgate reads",
    );
    error(
        "misspelt-evaluation",
        "spec.evalution",
        "did you mean evaluation?",
    );
    error(
        "lower-case-exception-mode",
        "spec.evaluationMode",
        "did you mean Envoy?",
    );
    assert_eq!(v["errors"], 8, "{}", o.stdout);
    // A real Kubernetes-mode policy is still only skipped.
    let admission = problems
        .iter()
        .find(|p| p["message"].as_str().unwrap().contains("\"admission\""))
        .expect("the admission policy is reported");
    assert_eq!(admission["severity"], "warning");
    assert_eq!(v["warnings"], 1, "{}", o.stdout);

    let logs = tempfile::tempdir().unwrap();
    let (mut server, _) = spawn_serve(&["--policies", "tests/cli/misspelt"], &[], logs.path());
    let out = refused(&mut server);
    assert!(out.contains("exit status: 1"), "{out}");
    assert!(
        out.contains("refusing to start")
            && out.contains("\"transposed-mode\": spec.evaluation.mode: invalid"),
        "{out}"
    );
}

#[test]
fn json_policies_and_requests_are_read_as_json() {
    // Both files escape the emoji as a surrogate pair, as json.dumps does.
    let request = std::fs::read_to_string("tests/cli/requests/emoji.json").unwrap();
    assert!(request.contains("\\ud83d\\udc31"), "{request}");
    let o = celgate(
        &[
            "check",
            "--policies",
            "tests/cli/json",
            "--request",
            "tests/cli/requests/emoji.json",
        ],
        None,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        v["okResponse"]["headers"][0]["value"], "\u{1f431} Tom",
        "{}",
        o.stdout
    );
    // A JSON error still names the line.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        "{\n  \"apiVersion\": \"policies.kyverno.io/v1\",\n  \"kind\" \"ValidatingPolicy\"\n}\n",
    )
    .unwrap();
    let o = celgate(
        &["validate", "--policies", dir.path().to_str().unwrap()],
        None,
    );
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stdout.contains("bad.json:3: error"), "{}", o.stdout);
}

const DIFF_FROM: &str = "tests/cli/diff/from";
const DIFF_TO: &str = "tests/cli/diff/to";

/// `celgate diff` with the test data's policies and the given extra arguments.
fn diff(requests: &[&str], extra: &[&str]) -> Out {
    let mut args = vec!["diff", "--from", DIFF_FROM, "--to", DIFF_TO, "--requests"];
    args.extend_from_slice(requests);
    args.extend_from_slice(extra);
    celgate(&args, None)
}

const DIFF_CORPUS: [&str; 3] = [
    "tests/cli/diff/requests",
    "tests/cli/diff/suite",
    "tests/cli/diff/logs/decisions.jsonl",
];

/// Request files, a suite (inline, file and token cases) and a decision
/// log: every changed request with both answers and what changed, exit 1.
#[test]
fn diff_prints_every_changed_request_and_exits_1() {
    let o = diff(&DIFF_CORPUS, &[]);
    assert_eq!(o.code, 1, "{}{}", o.stdout, o.stderr);
    // The JSON file with no `attributes` is left out, with a note; the
    // suite's request file is read through the suite only.
    assert_eq!(
        o.stderr,
        "celgate: note: tests/cli/diff/requests/more/notes.json: not a CheckRequest (no \
         `attributes`), skipped\n"
    );
    assert!(!o.stdout.contains("suite/requests/alice-writes.json"));
    assert!(o
        .stdout
        .contains("12 requests (4 replayed from decision logs, 1 of them decided by --from otherwise than logged), 8 changed"));
    insta::assert_snapshot!(o.stdout);
}

#[test]
fn diff_allow_changes_exits_0_with_the_same_report() {
    let changed = diff(&DIFF_CORPUS, &[]);
    let o = diff(&DIFF_CORPUS, &["--allow-changes"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, changed.stdout);
}

#[test]
fn diff_without_changes_exits_0_and_says_so() {
    let o = celgate(
        &[
            "diff",
            "--from",
            DIFF_FROM,
            "--to",
            "tests/cli/diff/from/api-key.yaml",
            "--to",
            "tests/cli/diff/from/not-found.yaml",
            "--requests",
            "tests/cli/diff/requests/alice-reads.json",
            "tests/cli/diff/requests/more",
        ],
        None,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "3 requests, 0 changed\n");
}

/// `--output json` (or `--format json`): counts, and each change's fields
/// and both answers whole.
#[test]
fn diff_json_output_for_tools() {
    let o = diff(&DIFF_CORPUS, &["--format", "json"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["requests"], 12);
    assert_eq!(v["replayed"], 4);
    assert_eq!(v["unlikeLogged"], 1);
    assert_eq!(v["changed"], 8);
    let bob = &v["changes"][1];
    assert_eq!(bob["name"], "tests/cli/diff/requests/bob-reads.json");
    assert_eq!(
        bob["fields"],
        serde_json::json!(["allowed", "status", "headers", "removedHeaders", "body"])
    );
    assert_eq!(bob["from"]["allowed"], true);
    assert_eq!(bob["to"]["status"], 403);
    // A policy in audit changes no answer, and still shows.
    let admin = &v["changes"][2];
    assert_eq!(admin["fields"], serde_json::json!(["audit"]));
    assert_eq!(admin["to"]["audit"][0]["policy"], "admin-audit");
    assert_eq!(admin["to"]["audit"][0]["enforced"], false);
    assert_eq!(v["changes"][6]["replayed"], true);
    assert_eq!(v["changes"][6]["logged"]["status"], 404);
    assert!(v["changes"][0].get("logged").is_none());
    let same = diff(&DIFF_CORPUS, &["--output", "json"]);
    assert_eq!(same.stdout, o.stdout);
    insta::assert_snapshot!(o.stdout);
}

/// Bad requests exit 2, policies that do not load (either side) exit 1,
/// each with one line that names the fault.
#[test]
fn diff_reports_bad_input_with_2_and_policies_that_do_not_load_with_1() {
    let runs: &[(&str, Vec<&str>)] = &[
        (
            "--requests path that does not exist",
            vec![
                "--from",
                DIFF_FROM,
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/diff/nowhere",
            ],
        ),
        (
            "not a CheckRequest",
            vec![
                "--from",
                DIFF_FROM,
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/requests/not-a-request.json",
            ],
        ),
        (
            "a decision log with another line",
            vec![
                "--from",
                DIFF_FROM,
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/diff/logs/broken.jsonl",
            ],
        ),
        (
            "a suite file that does not parse",
            vec![
                "--from",
                DIFF_FROM,
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/faults/bad-suite/bad.test.yaml",
            ],
        ),
        (
            "no request found",
            vec![
                "--from",
                DIFF_FROM,
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/diff/empty",
            ],
        ),
        (
            "--from that does not exist",
            vec![
                "--from",
                "tests/cli/diff/nowhere",
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/diff/requests",
            ],
        ),
        (
            "--to with CEL errors",
            vec![
                "--from",
                DIFF_FROM,
                "--to",
                "tests/cli/faults/cel",
                "--requests",
                "tests/cli/diff/requests",
            ],
        ),
        (
            "--from without an Envoy-mode policy",
            vec![
                "--from",
                "tests/cli/faults/empty",
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/diff/requests",
            ],
        ),
        (
            "--from without an Envoy-mode policy, --allow-empty",
            vec![
                "--from",
                "tests/cli/faults/empty",
                "--to",
                DIFF_TO,
                "--requests",
                "tests/cli/diff/requests",
                "--allow-empty",
                "--allow-changes",
            ],
        ),
    ];
    let mut table = String::new();
    for (what, args) in runs {
        let mut all = vec!["diff"];
        all.extend_from_slice(args);
        let o = celgate(&all, None);
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
        // The first line, and the first problem under it when it lists them.
        let mut lines = o.stderr.lines().filter(|l| !l.contains("note:"));
        let mut first = lines.next().unwrap_or("(nothing)").to_owned();
        if first.ends_with(':') {
            first = format!("{first}\n  {}", lines.next().unwrap_or_default());
        }
        table.push_str(&format!("{what}: exit {}\n  {first}\n", o.code));
    }
    insta::assert_snapshot!(table);
}
