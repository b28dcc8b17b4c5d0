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
        .args(["--jwks-allowed-urls", &issuer_addr.to_string()]);
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
