//! The OAuth variant of the MCP gateway example end to end, through a real Envoy:
//!
//! ```text
//! MCP client ──POST /mcp + Bearer JWT──▶ Envoy (examples/mcp-gateway/oauth/envoy.yaml)
//!                  │        ──gRPC Check (+ body)──▶ celgate (examples/mcp-gateway/oauth/policies)
//!                  │                                   └──GET──▶ JWKS of the authorization server (in-test)
//!                  ├── /.well-known/oauth-protected-resource[/mcp] answered by Envoy
//!                  └──(allowed)──▶ JSON-RPC upstream standing in for the MCP server (in-test)
//! ```
//!
//! The shipped `envoy.yaml` runs with only its ports moved to free loopback ones, a longer
//! ext_authz timeout and `status_on_error: 503` (so a 401 or 403 seen here is celgate's own
//! answer). The policies run as shipped, with the JWKS URL pointed at the loopback issuer.
//! Tokens are minted per run from the example's test key, as the suite's runner does.
//!
//! Needs Envoy (`$CELGATE_ENVOY`, `.venv/bin/envoy` or `envoy` on PATH); never skips.

mod common;

use common::{repo_root, upstream_header, EchoUpstream, Gateway, HttpResponse};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const EXAMPLE: &str = "examples/mcp-gateway/oauth";
const RESOURCE: &str = "https://mcp.example.test/mcp";
const ISSUER: &str = "https://auth.example.test";
const JWKS_URL: &str = "https://auth.example.test/.well-known/jwks.json";
const METADATA: &str = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp";

fn replace_once(config: String, from: &str, to: &str) -> String {
    assert_eq!(
        config.matches(from).count(),
        1,
        "{EXAMPLE}/envoy.yaml should contain {from:?} exactly once"
    );
    config.replace(from, to)
}

/// A token as the authorization server would issue it, signed with `key` (relative to the
/// repository); `extra` is more of the token spec (`expiresIn: -5m`).
fn token_signed(key: &str, claims: Value, extra: &str) -> String {
    let spec = format!("key: {key}\nalg: ES256\nkid: auth-1\nclaims: {claims}\n{extra}");
    let spec: celgate::suite_token::TokenSpec = serde_yaml_ng::from_str(&spec).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    format!(
        "Bearer {}",
        celgate::suite_token::mint(&spec, &repo_root(), now).unwrap()
    )
}

/// A token for this MCP server, for `sub`, with `scope` (none if empty).
fn token(sub: &str, scope: &str) -> String {
    let mut claims = json!({"iss": ISSUER, "aud": RESOURCE, "sub": sub});
    if !scope.is_empty() {
        claims["scope"] = json!(scope);
    }
    token_signed(&format!("{EXAMPLE}/keys/auth-server.pem"), claims, "")
}

fn rpc(id: u32, method: &str, params: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        .to_string()
        .into_bytes()
}

fn call(id: u32, tool: &str, arguments: Value) -> Vec<u8> {
    rpc(
        id,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    )
}

/// An MCP client's headers with `authorization` (none if empty) and `more`.
fn client<'a>(authorization: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if !authorization.is_empty() {
        h.push(("authorization", authorization));
    }
    h.extend_from_slice(more);
    h
}

fn www_authenticate(resp: &HttpResponse) -> Option<&str> {
    resp.header("www-authenticate")
}

fn invalid_token(why: &str) -> String {
    format!(
        r#"Bearer error="invalid_token", error_description="{why}", resource_metadata="{METADATA}""#
    )
}

/// Serves the example's JWKS on loopback; returns its address and the fetch count.
async fn authorization_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = std::fs::read_to_string(repo_root().join(EXAMPLE).join("keys/jwks.json")).unwrap();
    let counter = fetches.clone();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = jwks.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, fetches)
}

async fn start(policies: &std::path::Path, jwks_origin: &str) -> Gateway {
    let example =
        std::fs::read_to_string(repo_root().join(EXAMPLE).join("envoy.yaml")).expect("read");
    Gateway::start_with(
        policies,
        // plain http to the loopback issuer: an explicit prefix opts in
        &["--jwks-allowed-urls", &format!("{jwks_origin}/")],
        EchoUpstream::start_json_rpc().await,
        |p| {
            let mut c = example;
            for (from, to) in [
                ("address: 127.0.0.1, port_value: 10000", format!("address: 127.0.0.1, port_value: {}", p.listen)),
                ("port_value: 9901", format!("port_value: {}", p.admin)),
                ("port_value: 8080", format!("port_value: {}", p.upstream)),
                ("port_value: 9191", format!("port_value: {}", p.grpc)),
                ("timeout: 2s", "timeout: 5s".to_owned()),
                ("failure_mode_allow: false", "failure_mode_allow: false\n              status_on_error: { code: ServiceUnavailable }".to_owned()),
            ] {
                c = replace_once(c, from, &to);
            }
            c
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_oauth_resource_server_through_envoy() {
    let (issuer, fetches) = authorization_server().await;
    let origin = format!("http://{issuer}");

    // The shipped policies, with the JWKS URL moved to the loopback issuer.
    let dir = tempfile::tempdir().unwrap();
    let mut pointed = 0;
    for entry in std::fs::read_dir(repo_root().join(EXAMPLE).join("policies")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        pointed += usize::from(text.contains(JWKS_URL));
        let text = text.replace(JWKS_URL, &format!("{origin}/.well-known/jwks.json"));
        std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
    }
    assert_eq!(pointed, 2, "the token and scope policies name the JWKS");
    let h = start(dir.path(), &origin).await;

    // 1. The protected-resource metadata (RFC 9728), answered by Envoy without a token (a bad
    //    one is no obstacle either), at the URL the 401s name and at the bare well-known path.
    let metadata_path = METADATA.strip_prefix("https://mcp.example.test").unwrap();
    for (path, auth) in [
        (metadata_path, ""),
        ("/.well-known/oauth-protected-resource", ""),
        (metadata_path, "Bearer not.a.jwt"),
    ] {
        let resp = h.send("GET", path, &client(auth, &[]), None).await;
        assert_eq!(resp.status, 200, "{path}: {:?}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            resp.json(),
            json!({
                "resource": RESOURCE,
                "authorization_servers": [ISSUER],
                "scopes_supported": ["repo:read", "repo:write", "repo:admin"],
                "bearer_methods_supported": ["header"],
                "resource_name": "Example MCP server",
            })
        );
    }
    assert_eq!(h.upstream.count(), 0, "Envoy answers the metadata itself");
    assert_eq!(fetches.load(Ordering::SeqCst), 0, "no token was verified");

    // 2. No token: 401 naming the metadata URL, no error code; the server never sees it.
    let init = rpc(
        1,
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}),
    );
    let resp = h
        .denied(401, "POST", "/mcp", &client("", &[]), Some(&init))
        .await;
    let challenge = format!(r#"Bearer resource_metadata="{METADATA}""#);
    assert_eq!(www_authenticate(&resp), Some(challenge.as_str()));
    let resp = h.denied(401, "GET", "/mcp", &client("", &[]), None).await;
    assert_eq!(www_authenticate(&resp), Some(challenge.as_str()));

    // 3. Tokens that fail a check: 401 invalid_token.
    let expired = token_signed(
        &format!("{EXAMPLE}/keys/auth-server.pem"),
        json!({"iss": ISSUER, "aud": RESOURCE, "sub": "ann", "scope": "repo:admin"}),
        "expiresIn: -5m",
    );
    let forged = token_signed(
        "tests/keys/ec256.pem",
        json!({"iss": ISSUER, "aud": RESOURCE, "sub": "mallory", "scope": "repo:admin"}),
        "",
    );
    let other_audience = token_signed(
        &format!("{EXAMPLE}/keys/auth-server.pem"),
        json!({"iss": ISSUER, "aud": "https://other-mcp.example.test/mcp", "sub": "ann", "scope": "repo:admin"}),
        "",
    );
    let delete = call(2, "delete_repo", json!({"repo": "acme/app"}));
    for (bearer, why) in [
        (&expired, "the token is invalid or expired"),
        (&forged, "the token is invalid or expired"),
        (&other_audience, "the token was not issued for this server"),
    ] {
        let resp = h
            .denied(401, "POST", "/mcp", &client(bearer, &[]), Some(&delete))
            .await;
        assert_eq!(www_authenticate(&resp), Some(invalid_token(why).as_str()));
    }

    // 4. Any valid token may initialize and list tools. The MCP server gets the subject, never
    //    the token; a client's own identity headers do not survive (a token without scopes
    //    removes x-user-scopes rather than leaving the client's).
    let plain = token("ann", "");
    let spoof = [("x-user", "root"), ("x-user-scopes", "repo:admin")];
    let (resp, seen) = h
        .allowed("POST", "/mcp", &client(&plain, &spoof), Some(&init))
        .await;
    assert_eq!(resp.json()["id"], 1, "the MCP server's JSON-RPC answer");
    assert_eq!(upstream_header(&seen, "x-user"), vec!["ann"]);
    assert!(upstream_header(&seen, "authorization").is_empty(), "{seen}");
    assert!(upstream_header(&seen, "x-user-scopes").is_empty(), "{seen}");
    let list = rpc(3, "tools/list", json!({}));
    h.allowed("POST", "/mcp", &client(&plain, &[]), Some(&list))
        .await;
    // A notification: the MCP server answers 202.
    let before = h.upstream.count();
    let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let resp = h
        .send("POST", "/mcp", &client(&plain, &[]), Some(note))
        .await;
    assert_eq!(resp.status, 202, "{:?}", resp.text());
    assert_eq!(h.upstream.count(), before + 1);

    // 5. A tool the token's scopes do not cover: 403 insufficient_scope with the scope needed,
    //    and a JSON-RPC error for the client; the server never sees the call.
    let reader = token("ann", "repo:read");
    let resp = h
        .denied(403, "POST", "/mcp", &client(&reader, &spoof), Some(&delete))
        .await;
    assert_eq!(
        www_authenticate(&resp),
        Some(format!(r#"Bearer error="insufficient_scope", scope="repo:admin", resource_metadata="{METADATA}""#).as_str())
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.json(),
        json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -32001, "message": "the token lacks the scope repo:admin"}})
    );

    // 6. A tool on no list: 403, no scope challenge.
    let shell = call(4, "run_shell", json!({"cmd": "id"}));
    let admin = token("carol", "repo:read repo:admin");
    let resp = h
        .denied(403, "POST", "/mcp", &client(&admin, &[]), Some(&shell))
        .await;
    assert_eq!(www_authenticate(&resp), None);
    assert_eq!(resp.json()["error"]["message"], "unknown tool run_shell");

    // 7. Covered calls go through, byte for byte, with the subject and scopes and no token.
    let search = call(5, "search", json!({"query": "crash ✓"}));
    let (_, seen) = h
        .allowed("POST", "/mcp", &client(&reader, &spoof), Some(&search))
        .await;
    assert_eq!(seen["body"], json!(String::from_utf8(search).unwrap()));
    assert_eq!(upstream_header(&seen, "x-user"), vec!["ann"]);
    assert_eq!(upstream_header(&seen, "x-user-scopes"), vec!["repo:read"]);
    assert!(upstream_header(&seen, "authorization").is_empty(), "{seen}");
    let (resp, seen) = h
        .allowed("POST", "/mcp", &client(&admin, &[]), Some(&delete))
        .await;
    assert_eq!(resp.json()["id"], 2);
    assert_eq!(upstream_header(&seen, "x-user"), vec!["carol"]);
    assert_eq!(
        upstream_header(&seen, "x-user-scopes"),
        vec!["repo:read repo:admin"]
    );
    assert!(upstream_header(&seen, "authorization").is_empty(), "{seen}");

    // 8. The SSE stream (GET, no body) needs only a valid token.
    let (_, seen) = h.allowed("GET", "/mcp", &client(&reader, &[]), None).await;
    assert!(upstream_header(&seen, "authorization").is_empty(), "{seen}");

    // The issuer was asked once: the key set is cached across requests.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    let mut h = h;
    h.celgate.check_alive().unwrap_or_else(|e| panic!("{e}"));
    h.envoy.check_alive().unwrap_or_else(|e| panic!("{e}"));
}
