//! The cost of the `mcp` library on the request path. `cargo bench --bench mcp`.
//!
//! - **no mcp**: the six bench policies (which never call `mcp.Parse`) on a
//!   request without a body, and on the same request carrying a 4 KiB
//!   JSON-RPC body: the body must cost nothing (it is never parsed; asserted).
//! - **parse once**: one `mcp.Parse` call per request, against five calls
//!   spread over two policies (inline and through variables): the five share
//!   one parse (asserted), so they cost one parse plus small change, not five.
//!   `parse_body` alone shows what one parse costs.

use celgate::cel::eval::lib::mcp::parse_body;
use celgate::engine::{evaluate, EngineConfig};
use celgate::mcp;
use celgate::policy::{load::parse_documents, PolicySet};
use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::hint::black_box;
use std::path::{Path, PathBuf};

fn request(path: &str, body: &str) -> CheckRequest {
    celgate::request_json::from_value(&serde_json::json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "10.0.0.7", "portValue": 51234}}},
            "request": {"http": {
                "id": "4b8f8a8e-1c1a-4b7e-9a55-1d2b3c4d5e6f",
                "method": "POST", "path": path, "host": "api.example.com",
                "scheme": "https", "protocol": "HTTP/1.1", "body": body,
                "headers": {
                    "x-api-key": "k-alice-7f3a9c", "x-tenant": "acme",
                    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
                    "accept": "application/json, text/event-stream",
                    "content-type": "application/json",
                    "x-user-roles": "developer", "x-user-scopes": "mcp:read mcp:write"
                }
            }}
        }
    }))
    .unwrap()
}

fn compile(text: &str) -> PolicySet {
    PolicySet::compile(parse_documents(Path::new("bench.yaml"), text).unwrap()).unwrap()
}

/// A `tools/call` of about `size` bytes (the padding is in an argument).
fn tool_call(size: usize) -> String {
    let base = serde_json::json!({
        "jsonrpc": "2.0", "id": 42, "method": "tools/call",
        "params": {"name": "create_issue", "arguments": {
            "repo": "acme/app", "title": "crash on start", "labels": ["bug", "ui"], "limit": 5,
            "body": ""
        }}
    })
    .to_string();
    let pad = size.saturating_sub(base.len());
    base.replace(r#""body":"""#, &format!(r#""body":"{}""#, "x".repeat(pad)))
}

const ONE_CALL: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: mcp-one }
spec:
  evaluation: { mode: Envoy }
  validations:
  - expression: 'mcp.Parse(object.attributes.request.http.body).ToolCall.GetStringArgument("repo", "").startsWith("secret/") ? envoy.Denied(403).Response() : null'
  - expression: '!("developer" in object.attributes.request.http.headers[?"x-user-roles"].orValue("").split(",")) ? envoy.Denied(403).Response() : null'
  - expression: '!("mcp:write" in object.attributes.request.http.headers[?"x-user-scopes"].orValue("").split(" ")) ? envoy.Denied(403).Response() : null'
  - expression: 'object.attributes.request.http.headers[?"x-tenant"].orValue("") == "" ? envoy.Denied(400).Response() : null'
  - expression: envoy.Allowed().Response()
"#;

const FIVE_CALLS: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: mcp-a }
spec:
  evaluation: { mode: Envoy }
  variables:
  - name: req
    expression: mcp.Parse(object.attributes.request.http.body)
  validations:
  - expression: 'mcp.Parse(object.attributes.request.http.body).Method != mcp.ToolsCallMethod ? envoy.Denied(400).Response() : null'
  - expression: 'variables.req.ToolCall.GetStringArgument("repo", "").startsWith("secret/") ? envoy.Denied(403).Response() : null'
  - expression: 'mcp.Parse(object.attributes.request.http.body).ToolCall.GetIntArgument("limit", 0) > 100 ? envoy.Denied(403).Response() : null'
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: mcp-b }
spec:
  evaluation: { mode: Envoy }
  validations:
  - expression: 'mcp.Parse(object.attributes.request.http.body).ToolCall.GetBoolArgument("force", false) ? envoy.Denied(403).Response() : null'
  - expression: 'mcp.Parse(object.attributes.request.http.body).ToolCall.GetStringSliceArgument("labels", []).exists(l, l == "internal") ? envoy.Denied(403).Response() : envoy.Allowed().Response()'
"#;

/// Parses made while evaluating `request` once.
fn parses(set: &PolicySet, request: &CheckRequest) -> u64 {
    let before = mcp::parse_count();
    let d = evaluate(set, &EngineConfig::default(), request);
    assert!(d.allowed(), "{d:?}");
    mcp::parse_count() - before
}

fn bench(c: &mut Criterion) {
    let config = EngineConfig::default();

    let six =
        PolicySet::load(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/policies")])
            .unwrap();
    let no_body = request("/api/orders", "");
    let with_body = request("/api/orders", &tool_call(4096));
    assert_eq!(parses(&six, &no_body), 0);
    assert_eq!(parses(&six, &with_body), 0);
    let mut g = c.benchmark_group("no mcp");
    g.bench_function("six policies, no body", |b| {
        b.iter(|| evaluate(black_box(&six), &config, black_box(&no_body)))
    });
    g.bench_function("six policies, 4 KiB JSON-RPC body", |b| {
        b.iter(|| evaluate(black_box(&six), &config, black_box(&with_body)))
    });
    g.finish();

    let one = compile(ONE_CALL);
    let five = compile(FIVE_CALLS);
    let mut g = c.benchmark_group("parse once");
    for size in [1024, 16 * 1024] {
        let req = request("/mcp", &tool_call(size));
        assert_eq!(parses(&one, &req), 1);
        assert_eq!(parses(&five, &req), 1, "five calls, one parse");
        let kib = size / 1024;
        g.bench_function(format!("1 call, {kib} KiB body"), |b| {
            b.iter(|| evaluate(black_box(&one), &config, black_box(&req)))
        });
        g.bench_function(format!("5 calls in 2 policies, {kib} KiB body"), |b| {
            b.iter(|| evaluate(black_box(&five), &config, black_box(&req)))
        });
        let body = tool_call(size).into_bytes();
        g.bench_function(format!("parse_body alone, {kib} KiB"), |b| {
            b.iter(|| parse_body(black_box(&body)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
