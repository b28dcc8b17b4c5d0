//! The identity example through a real Envoy: bearer tokens verified against
//! a JWKS served on loopback, roles from the token deciding what the caller
//! may do, and the caller's identity passed upstream.
//!
//! ```text
//! client ──▶ Envoy (ext_authz) ──Check──▶ celgate (examples/identity/policies) ──GET──▶ JWKS (in-test)
//!               └──▶ echo upstream (in-test)
//! ```

mod common;

use common::{
    envoy_base_id, free_ports, http_get, http_request, locate_envoy, loopback, repo_root,
    wait_http_200, ChildGuard, EchoUpstream,
};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ISSUER_JWKS: &str = "https://issuer.example.com/.well-known/jwks.json";

fn token(claims: &str) -> String {
    signed("examples/identity/keys/issuer.pem", claims)
}

/// A token signed with the private key at `key` (relative to the repository).
fn signed(key: &str, claims: &str) -> String {
    let spec: celgate::suite_token::TokenSpec =
        serde_yaml_ng::from_str(&format!("key: {key}\nkid: issuer-1\nclaims: {claims}")).unwrap();
    let dir = repo_root();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    celgate::suite_token::mint(&spec, &dir, now).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_and_roles_through_envoy() {
    let envoy_bin = locate_envoy();
    let dir = tempfile::tempdir().unwrap();

    // The issuer: serves the example's JWKS and counts fetches.
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks =
        std::fs::read_to_string(repo_root().join("examples/identity/keys/jwks.json")).unwrap();
    let counter = fetches.clone();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = jwks.clone();
            async move {
                (
                    [
                        ("content-type", "application/json"),
                        ("cache-control", "max-age=300"),
                    ],
                    body,
                )
            }
        }),
    );
    let issuer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_addr = issuer.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(issuer, app).await });

    // The example's policies, pointed at the loopback issuer.
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for f in ["authenticate.yaml", "roles.yaml"] {
        let text = std::fs::read_to_string(repo_root().join("examples/identity/policies").join(f))
            .unwrap()
            .replace(
                ISSUER_JWKS,
                &format!("http://{issuer_addr}/.well-known/jwks.json"),
            );
        std::fs::write(policies.join(f), text).unwrap();
    }

    let upstream = EchoUpstream::start().await;
    let ports = free_ports(4);
    let (grpc_port, http_port, listen_port, admin_port) = (ports[0], ports[1], ports[2], ports[3]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_celgate"));
    cmd.arg("serve")
        .arg("--policies")
        .arg(&policies)
        .args(["--grpc-addr", &loopback(grpc_port).to_string()])
        .args(["--http-addr", &loopback(http_port).to_string()])
        // plain http to the loopback issuer: an explicit prefix opts in
        .args(["--jwks-allowed-urls", &format!("http://{issuer_addr}/")]);
    let mut celgate = ChildGuard::spawn("celgate", cmd, dir.path());
    let config = std::fs::read_to_string(repo_root().join("tests/e2e/envoy.yaml.tmpl"))
        .unwrap()
        .replace("{{ADMIN_PORT}}", &admin_port.to_string())
        .replace("{{LISTEN_PORT}}", &listen_port.to_string())
        .replace("{{UPSTREAM_PORT}}", &upstream.addr.port().to_string())
        .replace("{{GRPC_PORT}}", &grpc_port.to_string())
        .replace("{{ENCODE_RAW_HEADERS}}", "false")
        .replace("{{PACK_AS_BYTES}}", "false");
    let config_path = dir.path().join("envoy.yaml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(&envoy_bin);
    cmd.arg("-c")
        .arg(&config_path)
        .args(["--base-id", &envoy_base_id().to_string()])
        .args(["--concurrency", "1", "-l", "warning"]);
    let mut envoy = ChildGuard::spawn("envoy", cmd, dir.path());
    wait_http_200(
        loopback(http_port),
        "/readyz",
        Duration::from_secs(15),
        &mut celgate,
    )
    .await
    .unwrap_or_else(|e| panic!("celgate: {e}\n{}", celgate.log_tail()));
    wait_http_200(
        loopback(admin_port),
        "/ready",
        Duration::from_secs(15),
        &mut envoy,
    )
    .await
    .unwrap_or_else(|e| panic!("envoy: {e}\n{}", envoy.log_tail()));
    let front = loopback(listen_port);
    let fail = |what: &str| -> String {
        format!(
            "{what}\n--- celgate ---\n{}\n--- envoy ---\n{}",
            celgate.log_tail(),
            envoy.log_tail()
        )
    };

    // No token: 401 with the bearer challenge; the upstream never sees it.
    let r = http_get(front, "/api/orders", &[]).await.unwrap();
    assert_eq!(r.status, 401, "{}", fail("no token"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));
    assert_eq!(r.text(), "bearer token required\n");
    assert_eq!(upstream.count(), 0);

    let base = r#"{ iss: "https://issuer.example.com/", aud: orders-api, sub: alice"#;
    let reader = format!("Bearer {}", token(&format!("{base}, roles: [reader] }}")));

    // Wrong role: 403 insufficient_scope.
    let r = http_request(
        front,
        "POST",
        "/api/orders",
        &[("authorization", &reader)],
        Some(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{}", fail("reader POST"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"insufficient_scope\"")
    );
    assert_eq!(r.text(), "role writer or admin required\n");
    assert_eq!(upstream.count(), 0);

    // Right role: 200, the upstream sees x-user and no token.
    let r = http_get(front, "/api/orders", &[("authorization", &reader)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", fail("reader GET"));
    let seen = upstream.last().expect("reached the upstream");
    assert_eq!(seen["headers"]["x-user"], serde_json::json!(["alice"]));
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");

    // A forged token (another key under the issuer's kid) is a 401, never a 5xx.
    let forged = signed("tests/keys/rsa.pem", &format!("{base}, roles: [admin] }}"));
    let r = http_request(
        front,
        "DELETE",
        "/api/orders/1",
        &[("authorization", &format!("Bearer {forged}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401, "{}", fail("forged"));
    assert_eq!(upstream.count(), 1);

    // The issuer was asked once: the key set is cached across requests.
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

// ------------------------------------------------------------------------
// JWKS URLs through the server (no Envoy): the scheme rule, the normalised
// allow-list, the bounded URL cache, and URLs kept out of logs and metrics.

/// A loopback issuer answering the example's JWKS on every path; records
/// each request's path and query.
async fn recording_issuer() -> (std::net::SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let jwks =
        std::fs::read_to_string(repo_root().join("examples/identity/keys/jwks.json")).unwrap();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        log.lock().unwrap().push(uri.to_string());
        let body = jwks.clone();
        async move { ([("content-type", "application/json")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A policy fetching `http://{issuer}{x-jwks-path}`: the URL comes from the
/// request, as a careless policy might build it.
fn url_from_request_policy(
    dir: &std::path::Path,
    issuer: std::net::SocketAddr,
) -> std::path::PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("jwks.yaml"),
        format!(
            r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {{ name: jwks-from-request }}
spec:
  evaluation: {{ mode: Envoy }}
  failurePolicy: Fail
  variables:
  - name: url
    expression: '"http://{issuer}" + object.attributes.request.http.headers["x-jwks-path"]'
  validations:
  - expression: >
      jwt.Decode(object.attributes.request.http.headers["x-token"], jwks.Fetch(variables.url)).Valid
        ? envoy.Allowed().Response() : envoy.Denied(401).Response()
"#
        ),
    )
    .unwrap();
    policies
}

struct Server {
    guard: ChildGuard,
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
    log: std::path::PathBuf,
}

async fn start_server(
    name: &str,
    dir: &std::path::Path,
    policies: &std::path::Path,
    extra: &[&str],
) -> Server {
    let ports = free_ports(2);
    let (grpc, http) = (loopback(ports[0]), loopback(ports[1]));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_celgate"));
    cmd.arg("serve")
        .arg("--policies")
        .arg(policies)
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--http-addr", &http.to_string()])
        .args(["--failure-status", "503"])
        .args(extra);
    let mut guard = ChildGuard::spawn(name, cmd, dir);
    wait_http_200(http, "/readyz", Duration::from_secs(15), &mut guard)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Server {
        guard,
        grpc,
        http,
        log: dir.join(format!("{name}.log")),
    }
}

/// The HTTP status of the decision for a request naming `path` on the issuer
/// (200 for an allow).
async fn decide(server: &Server, path: &str, token: &str) -> i32 {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let req =
        celgate::request_json::from_value(&serde_json::json!({"attributes": {"request": {"http": {
            "method": "GET", "path": "/", "headers": {"x-jwks-path": path, "x-token": token}
        }}}}))
        .unwrap();
    match client.check(req).await.unwrap().into_inner().http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.map_or(0, |s| s.code),
        other => panic!("no HTTP response: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_urls_are_checked_normalised_bounded_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, seen) = recording_issuer().await;
    let policies = url_from_request_policy(dir.path(), issuer);
    let t = token(r#"{ iss: "https://issuer.example.com/", aud: orders-api, sub: alice }"#);
    let prefix = format!("http://{issuer}/tenant");
    let ca = repo_root().join("tests/keys/tls/ca.pem");
    let server = start_server(
        "celgate-prefix",
        dir.path(),
        &policies,
        &[
            "--jwks-allowed-urls",
            &prefix,
            "--jwks-max-urls",
            "4",
            "--jwks-ca-bundle",
            ca.to_str().unwrap(),
        ],
    )
    .await;
    let fail = |what: &str| format!("{what}\n{}", server.guard.log_tail());

    // An explicit http:// prefix allows plain http below it.
    assert_eq!(
        decide(&server, "/tenant/jwks", &t).await,
        200,
        "{}",
        fail("prefix")
    );
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Ways out of the prefix are refused (the failure denial) before any
    // request is made.
    for escape in [
        "/tenant/../other/jwks",
        "/tenant/%2e%2e/other/jwks",
        "/tenant/./../other",
        "/tenant2/jwks",
        "/tenant%2F..%2Fother",
        "@evil.example/tenant",
    ] {
        assert_eq!(decide(&server, escape, &t).await, 503, "{}", fail(escape));
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "refused URLs are never fetched"
    );
    // A `..` that stays inside the prefix is fine, and is fetched normalised.
    assert_eq!(decide(&server, "/tenant/x/../jwks2", &t).await, 200);
    assert_eq!(seen.lock().unwrap().last().unwrap(), "/tenant/jwks2");

    // The URL cache is bounded: 12 distinct URLs (secrets in the query), at
    // most 4 held, the others evicted.
    for i in 0..12 {
        let path = format!("/tenant/jwks?key=SECRET-QUERY-{i}");
        assert_eq!(decide(&server, &path, &t).await, 200, "{}", fail(&path));
    }
    assert_eq!(seen.lock().unwrap().len(), 2 + 12);
    let (status, metrics) = common::get_blocking(server.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(gauge("celgate_jwks_urls") <= 4.0, "{metrics}");
    assert!(gauge("celgate_jwks_evictions_total") >= 10.0, "{metrics}");
    assert_eq!(gauge("celgate_jwks_ca_bundle_certificates"), 1.0);
    // An evicted URL is fetched again when used again.
    assert_eq!(
        decide(&server, "/tenant/jwks?key=SECRET-QUERY-0", &t).await,
        200
    );
    assert_eq!(seen.lock().unwrap().len(), 2 + 12 + 1);

    // The query is in no metric label and no log line.
    let (_, metrics) = common::get_blocking(server.http, "/metrics").unwrap();
    assert!(!metrics.contains("SECRET-QUERY"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "celgate_jwks_fetches_total{{url=\"{prefix}/jwks\"}}"
        )),
        "{metrics}"
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains(&format!("{prefix}/jwks")),
        "the fetch is logged: {log}"
    );
    assert!(!log.contains("SECRET-QUERY"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_jwks_needs_an_explicit_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let (issuer, seen) = recording_issuer().await;
    let policies = url_from_request_policy(dir.path(), issuer);
    let t = token(r#"{ iss: "https://issuer.example.com/", aud: orders-api, sub: alice }"#);
    let host = issuer.to_string();

    // A host entry admits https only: plain http is refused, never fetched.
    let strict = start_server(
        "celgate-strict",
        dir.path(),
        &policies,
        &["--jwks-allowed-urls", &host],
    )
    .await;
    assert_eq!(
        decide(&strict, "/jwks", &t).await,
        503,
        "{}",
        strict.guard.log_tail()
    );
    assert!(seen.lock().unwrap().is_empty());
    drop(strict);

    // No allow-list at all: https anywhere, still no plain http.
    let open = start_server("celgate-open", dir.path(), &policies, &[]).await;
    assert_eq!(decide(&open, "/jwks", &t).await, 503);
    assert!(seen.lock().unwrap().is_empty());
    drop(open);

    // --jwks-allow-http opts in.
    let opted = start_server(
        "celgate-http",
        dir.path(),
        &policies,
        &["--jwks-allowed-urls", &host, "--jwks-allow-http"],
    )
    .await;
    assert_eq!(
        decide(&opted, "/jwks", &t).await,
        200,
        "{}",
        opted.guard.log_tail()
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn unusable_identity_settings_refuse_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let policies = repo_root().join("policies");
    let garbage = dir.path().join("bundle.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let key = repo_root().join("tests/keys/tls/server.key");
    let missing = dir.path().join("missing.pem");
    for (args, want) in [
        (
            vec!["--jwks-ca-bundle", garbage.to_str().unwrap()],
            "no PEM certificate",
        ),
        (
            vec!["--jwks-ca-bundle", key.to_str().unwrap()],
            "private key",
        ),
        (
            vec!["--jwks-ca-bundle", missing.to_str().unwrap()],
            "CA bundle",
        ),
        (
            vec!["--jwks-allowed-urls", "https://iss/x?key=1"],
            "no query",
        ),
        (
            vec!["--jwks-allowed-urls", "https://user:pw@iss/x"],
            "userinfo",
        ),
    ] {
        let ports = free_ports(2);
        let mut child = Command::new(env!("CARGO_BIN_EXE_celgate"))
            .arg("serve")
            .arg("--policies")
            .arg(&policies)
            .args(["--grpc-addr", &loopback(ports[0]).to_string()])
            .args(["--http-addr", &loopback(ports[1]).to_string()])
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?}: still running; it should have refused to start");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{args:?}");
        assert!(
            stderr.contains("refusing to start") && stderr.contains(want),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("pw@"), "{stderr}");
    }
}
