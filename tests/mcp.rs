//! The `mcp` library's behaviour that data files cannot show: a request's body
//! is parsed once however many expressions and policies call `mcp.Parse`, and
//! not at all when none does; load-time refusal of unknown constants.
//!
//! `mcp::parse_count()` counts the parses made on the calling thread, and the
//! engine evaluates a request synchronously on the caller's thread, so the
//! counts below are exact even with other tests running in parallel.

use celgate::engine::{evaluate, evaluate_traced, EngineConfig};
use celgate::mcp;
use celgate::policy::{load::parse_documents, PolicySet};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::path::Path;

fn compile(text: &str) -> PolicySet {
    PolicySet::compile(parse_documents(Path::new("mcp.yaml"), text).expect("yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn request(path: &str, body: &str, raw: bool) -> CheckRequest {
    let mut http = serde_json::json!({
        "method": "POST",
        "path": path,
        "headers": {"x-user-roles": "editor"},
    });
    if raw {
        use base64::Engine;
        http["raw_body"] = base64::engine::general_purpose::STANDARD
            .encode(body)
            .into();
    } else {
        http["body"] = body.into();
    }
    celgate::request_json::from_value(&serde_json::json!({
        "attributes": {"request": {"http": http}}
    }))
    .unwrap()
}

const TOOL_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_issue","arguments":{"repo":"acme/app","limit":5}}}"#;

/// Two policies, six expressions calling `mcp.Parse`: in variables and in
/// validations, inline and through a variable, on `body` and (in a second
/// policy) through a conditional that picks `raw_body` or `body`.
const MANY_PARSES: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: a-first }
spec:
  evaluation: { mode: Envoy }
  variables:
  - name: req
    expression: mcp.Parse(object.attributes.request.http.body)
  - name: tool
    expression: mcp.Parse(object.attributes.request.http.body).ToolCall.Name
  validations:
  - expression: 'mcp.Parse(object.attributes.request.http.body).Method != mcp.ToolsCallMethod ? envoy.Denied(400).Response() : null'
  - expression: 'variables.req.ToolCall.GetStringArgument("repo", "").startsWith("secret/") ? envoy.Denied(403).Response() : null'
  - expression: 'variables.tool == "delete_repo" ? envoy.Denied(403).Response() : null'
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: b-second }
spec:
  evaluation: { mode: Envoy }
  variables:
  - name: req
    expression: >
      size(object.attributes.request.http.raw_body) > 0
        ? mcp.Parse(object.attributes.request.http.raw_body)
        : mcp.Parse(object.attributes.request.http.body)
  validations:
  - expression: 'mcp.Parse(object.attributes.request.http.body).ToolCall.GetIntArgument("limit", 0) > 100 ? envoy.Denied(403).Response() : null'
  - expression: envoy.Allowed().WithHeader("x-tool", variables.req.ToolCall.Name).Response()
"#;

const NO_MCP: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: plain }
spec:
  evaluation: { mode: Envoy }
  variables:
  - name: roles
    expression: object.attributes.request.http.headers[?"x-user-roles"].orValue("").split(",")
  validations:
  - expression: '"editor" in variables.roles && object.attributes.request.http.body.contains("tools/call") ? envoy.Allowed().Response() : envoy.Denied(403).Response()'
"#;

#[test]
fn several_expressions_and_policies_parse_the_body_once() {
    let set = compile(MANY_PARSES);
    let config = EngineConfig::default();
    let req = request("/mcp", TOOL_CALL, false);

    let before = mcp::parse_count();
    let d = evaluate(&set, &config, &req);
    assert!(d.allowed(), "{d:?}");
    assert_eq!(d.policy.as_deref(), Some("b-second"));
    assert_eq!(
        mcp::parse_count() - before,
        1,
        "six mcp.Parse calls over two policies should parse the body once"
    );

    // A second evaluation of the same request is a new request: parsed once more.
    let before = mcp::parse_count();
    evaluate(&set, &config, &req);
    assert_eq!(mcp::parse_count() - before, 1);

    // Traced evaluation (check --explain) goes through the same cache.
    let before = mcp::parse_count();
    let (d, trace) = evaluate_traced(&set, &config, &req);
    assert!(d.allowed());
    assert_eq!(mcp::parse_count() - before, 1);
    let req_var = trace[0]
        .variables
        .iter()
        .find(|v| v.name == "req")
        .expect("req evaluated");
    assert_eq!(req_var.result["ToolCall"]["Name"], "create_issue");
    assert_eq!(req_var.result["Method"], "tools/call");
}

#[test]
fn raw_body_is_parsed_once_as_well() {
    let set = compile(MANY_PARSES);
    let req = request("/mcp", TOOL_CALL, true);
    let before = mcp::parse_count();
    let d = evaluate(&set, &EngineConfig::default(), &req);
    // `body` reads `raw_body` when only that is set (Envoy's pack_as_bytes):
    // every call in both policies, on `body` or `raw_body`, is one parse of
    // the same buffer; a-first says nothing and b-second allows.
    assert!(d.allowed(), "{d:?}");
    assert_eq!(mcp::parse_count() - before, 1);

    // Only b-second: the same.
    let only_b = MANY_PARSES
        .split("---")
        .nth(1)
        .expect("second document")
        .replace(
            "mcp.Parse(object.attributes.request.http.body).ToolCall",
            "variables.req.ToolCall",
        );
    let set = compile(&only_b);
    let before = mcp::parse_count();
    let d = evaluate(&set, &EngineConfig::default(), &req);
    assert!(d.allowed(), "{d:?}");
    assert_eq!(mcp::parse_count() - before, 1);
}

#[test]
fn an_error_is_memoised_too() {
    let set = compile(MANY_PARSES);
    let batch = format!("[{TOOL_CALL}]");
    let before = mcp::parse_count();
    let d = evaluate(
        &set,
        &EngineConfig::default(),
        &request("/mcp", &batch, false),
    );
    assert!(!d.allowed());
    assert!(
        d.error
            .as_ref()
            .map(|e| e.detailed())
            .unwrap_or_default()
            .contains("batch"),
        "{d:?}"
    );
    assert_eq!(mcp::parse_count() - before, 1);
}

#[test]
fn policies_that_never_call_mcp_parse_nothing() {
    let set = compile(NO_MCP);
    let before = mcp::parse_count();
    for _ in 0..10 {
        let d = evaluate(
            &set,
            &EngineConfig::default(),
            &request("/mcp", TOOL_CALL, false),
        );
        assert!(d.allowed(), "{d:?}");
    }
    assert_eq!(mcp::parse_count() - before, 0);
}

#[test]
fn a_string_that_is_not_the_request_body_is_parsed_on_each_call() {
    let set = compile(
        r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: literal }
spec:
  evaluation: { mode: Envoy }
  validations:
  - expression: 'mcp.Parse(''{"jsonrpc":"2.0","id":1,"method":"ping"}'').Method == mcp.PingMethod ? null : envoy.Denied(500).Response()'
  - expression: 'mcp.Parse(''{"jsonrpc":"2.0","id":1,"method":"ping"}'').Method == mcp.PingMethod ? envoy.Allowed().Response() : null'
"#,
    );
    let before = mcp::parse_count();
    let d = evaluate(
        &set,
        &EngineConfig::default(),
        &request("/", TOOL_CALL, false),
    );
    assert!(d.allowed(), "{d:?}");
    assert_eq!(mcp::parse_count() - before, 2);
}

#[test]
fn the_partial_body_header_is_seen_by_the_body_only_form() {
    let set = compile(MANY_PARSES);
    let mut req = request("/mcp", TOOL_CALL, false);
    let http = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers
        .insert(mcp::PARTIAL_BODY_HEADER.into(), "true".into());
    let d = evaluate(&set, &EngineConfig::default(), &req);
    assert!(!d.allowed());
    assert!(
        d.error
            .as_ref()
            .map(|e| e.detailed())
            .unwrap_or_default()
            .contains("incomplete"),
        "{d:?}"
    );
    // Outside an evaluation there is no current request: the body parses.
    assert!(celgate::cel::eval::lib::mcp::parse_body(TOOL_CALL.as_bytes()).is_ok());
}

#[test]
fn an_unknown_constant_is_a_load_error() {
    let docs = parse_documents(
        Path::new("typo.yaml"),
        r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: typo }
spec:
  evaluation: { mode: Envoy }
  validations:
  - expression: 'mcp.Parse(object.attributes.request.http.body).Method == mcp.ToolCallMethod ? envoy.Denied(403).Response() : null'
"#,
    )
    .unwrap();
    let err = PolicySet::compile(docs).unwrap_err().to_string();
    assert!(
        err.contains("unknown constant `mcp.ToolCallMethod`") && err.contains("ToolsCallMethod"),
        "{err}"
    );
}
