//! The policy authors' commands as a user runs them: exit statuses and
//! output of `check`, `validate`, `test`, `completions` and `--help`, on
//! good, denied and broken inputs. Outputs are pinned as snapshots
//! (`tests/snapshots/`); timings are masked.

use std::io::Write as _;
use std::process::{Command, Stdio};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn celgate(args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CELGATE_POLICIES")
        .env_remove("CELGATE_LOG")
        .env_remove("CELGATE_FAILURE_STATUS")
        .env("COLUMNS", "100")
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

#[test]
fn check_bad_request_or_policies_exit_2() {
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
    assert_eq!(o.code, 2);
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
    assert_eq!(v["warnings"], 6);
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
fn validate_warnings_alone_exit_0() {
    let o = celgate(&["validate", "--policies", "tests/cli/warnings"], None);
    assert_eq!(o.code, 0, "{}", o.stdout);
    assert!(o.stdout.contains("never run"), "{}", o.stdout);
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
    assert!(o.stdout.contains("EXIT STATUS"), "{}", o.stdout);
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
}
