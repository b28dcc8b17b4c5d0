//! The MCP gateway example end to end, through a real Envoy:
//!
//! ```text
//! MCP client ──POST /mcp (JSON-RPC)──▶ Envoy (examples/mcp-gateway/envoy.yaml, ext_authz with the body)
//!                                        │       ──gRPC Check──▶ celgate (examples/mcp-gateway/policies)
//!                                        └──(allowed)──▶ echo upstream standing in for the MCP server
//! ```
//!
//! The shipped `envoy.yaml` is used as it is, with only its ports moved to free loopback ones, a
//! longer ext_authz timeout, `status_on_error: 503` (so a 403 seen here is celgate's own answer,
//! never Envoy's error fallback) and a small `max_request_bytes`, so that a body just over it
//! arrives at celgate cut short and marked `x-envoy-auth-partial-body: true`.
//!
//! Needs Envoy (`$CELGATE_ENVOY`, `.venv/bin/envoy` or `envoy` on PATH); never skips.

mod common;

use common::{repo_root, upstream_header, Gateway};
use serde_json::{json, Value};

const EXAMPLE: &str = "examples/mcp-gateway/envoy.yaml";
const AUDIENCE: &str = "https://mcp.example.com/mcp";
const METADATA: &str = "https://mcp.example.com/.well-known/oauth-protected-resource";
/// `max_request_bytes` in the test's copy of the example.
const MAX_REQUEST_BYTES: usize = 4096;

fn replace_once(config: String, from: &str, to: &str) -> String {
    assert_eq!(
        config.matches(from).count(),
        1,
        "{EXAMPLE} should contain {from:?} exactly once"
    );
    config.replace(from, to)
}

async fn start() -> Gateway {
    let example = std::fs::read_to_string(repo_root().join(EXAMPLE)).expect("read the example");
    Gateway::start(
        &repo_root().join("examples/mcp-gateway/policies"),
        &[],
        |p| {
            let mut c = example;
            for (from, to) in [
                ("address: 127.0.0.1, port_value: 10000", format!("address: 127.0.0.1, port_value: {}", p.listen)),
                ("port_value: 9901", format!("port_value: {}", p.admin)),
                ("port_value: 8080", format!("port_value: {}", p.upstream)),
                ("port_value: 9191", format!("port_value: {}", p.grpc)),
                ("cluster_name: celgate\n                timeout: 1s", "cluster_name: celgate\n                timeout: 5s".to_owned()),
                ("max_request_bytes: 1048576", format!("max_request_bytes: {MAX_REQUEST_BYTES}")),
                ("failure_mode_allow: false", "failure_mode_allow: false\n              status_on_error: { code: ServiceUnavailable }".to_owned()),
            ] {
                c = replace_once(c, from, &to);
            }
            c
        },
    )
    .await
}

fn rpc(id: u32, method: &str, params: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        .to_string()
        .into_bytes()
}

/// Headers of a caller as the upstream authenticator would set them.
fn caller<'a>(roles: &'a str, scopes: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("x-user", "ann"),
        ("x-token-audience", AUDIENCE),
        ("x-user-roles", roles),
        ("x-user-scopes", scopes),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_gateway_through_envoy() {
    let h = start().await;

    // 1. The protected-resource metadata is open: Envoy answers it, ext_authz is off there.
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let before = h.upstream.count();
        let resp = h.send("GET", path, &[], None).await;
        assert_eq!(resp.status, 200, "{path}: {:?}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.json()["resource"], AUDIENCE);
        assert_eq!(h.upstream.count(), before, "answered by Envoy itself");
    }

    // 2. No caller: the MCP spec's 401 with the metadata URL.
    let list = rpc(1, "tools/list", json!({}));
    let resp = h.denied(401, "POST", "/mcp", &[], Some(&list)).await;
    assert_eq!(
        resp.header("www-authenticate"),
        Some(format!(r#"Bearer resource_metadata="{METADATA}", scope="mcp:read""#).as_str()),
        "headers {:?}",
        resp.headers
    );

    // 3. A permitted tool call: allowed, and the JSON-RPC body reaches the MCP server intact.
    let call = rpc(
        2,
        "tools/call",
        json!({"name": "search_issues", "arguments": {"repo": "acme/app", "query": "crash ✓"}}),
    );
    let (_, seen) = h
        .allowed("POST", "/mcp", &caller("viewer", "mcp:read"), Some(&call))
        .await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(
        seen["body"],
        json!(String::from_utf8(call.clone()).unwrap()),
        "the JSON-RPC body must reach the MCP server byte for byte"
    );
    assert_eq!(upstream_header(&seen, "x-mcp-tool"), vec!["search_issues"]);
    assert_eq!(upstream_header(&seen, "x-mcp-method"), vec!["tools/call"]);

    // 4. A tool the role may not call: 403 with a JSON-RPC error body.
    let create = rpc(
        3,
        "tools/call",
        json!({"name": "create_issue", "arguments": {"repo": "acme/app"}}),
    );
    let resp = h
        .denied(
            403,
            "POST",
            "/mcp",
            &caller("viewer", "mcp:read"),
            Some(&create),
        )
        .await;
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.json(),
        json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32001, "message": "your role may not call create_issue"}})
    );

    // 5. The role but not the scope: 403 insufficient_scope.
    let resp = h
        .denied(
            403,
            "POST",
            "/mcp",
            &caller("developer", "mcp:read"),
            Some(&create),
        )
        .await;
    assert_eq!(
        resp.header("www-authenticate"),
        Some(format!(r#"Bearer error="insufficient_scope", scope="mcp:write", resource_metadata="{METADATA}""#).as_str())
    );

    // 6. Mcp-Name disagreeing with the body: 400 HeaderMismatch.
    let mut headers = caller("admin", "mcp:read mcp:admin");
    headers.extend([("mcp-method", "tools/call"), ("mcp-name", "search_issues")]);
    let delete = rpc(
        4,
        "tools/call",
        json!({"name": "delete_repo", "arguments": {"repo": "acme/app"}}),
    );
    let resp = h.denied(400, "POST", "/mcp", &headers, Some(&delete)).await;
    assert_eq!(resp.json()["error"]["code"], -32001);

    // 7. A JSON-RPC batch: refused by mcp.Parse, denied by celgate under failurePolicy Fail
    //    (403; Envoy's own error answer would be 503 here).
    let batch = format!("[{}]", String::from_utf8(list.clone()).unwrap());
    h.denied(
        403,
        "POST",
        "/mcp",
        &caller("viewer", "mcp:read"),
        Some(batch.as_bytes()),
    )
    .await;

    // 8. A body over Envoy's max_request_bytes: Envoy sends celgate the first part with
    //    x-envoy-auth-partial-body: true, and mcp.Parse refuses it for that reason.
    let long = rpc(
        5,
        "tools/call",
        json!({"name": "search_issues", "arguments": {"repo": "acme/app", "query": "x".repeat(MAX_REQUEST_BYTES)}}),
    );
    assert!(long.len() > MAX_REQUEST_BYTES);
    h.denied(
        403,
        "POST",
        "/mcp",
        &caller("viewer", "mcp:read"),
        Some(&long),
    )
    .await;
    let log = h.celgate.log_tail();
    assert!(
        log.contains("error_kind=\"mcp_parse\"") && log.contains("reason=\"partial_body\""),
        "celgate should log that the body was refused as partial; its log:\n{log}"
    );

    let mut h = h;
    h.celgate.check_alive().unwrap_or_else(|e| panic!("{e}"));
    h.envoy.check_alive().unwrap_or_else(|e| panic!("{e}"));
}
