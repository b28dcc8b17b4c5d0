//! End to end through real proxies asking celgate's HTTP authorization
//! listener (`--authz-http-addr`):
//!
//! ```text
//! test client (127.0.0.2) ──▶ Envoy (ext_authz http_service) ──/envoy/...──▶ celgate
//!                          ──▶ nginx (auth_request)           ──/forward-auth─▶ celgate
//!                          ──▶ Caddy (forward_auth)           ──/forward-auth─▶ celgate
//!                          ──▶ nginx (auth_request)           ──/ (Kyverno HTTP mode)─▶ celgate
//!                                  │
//!                                  └──(if allowed, with the allow's headers)──▶ echo upstream
//! ```
//!
//! celgate trusts 127.0.0.1 (the proxies) only; the client connects from
//! 127.0.0.2, so its own `X-Forwarded-*` headers are those of an untrusted
//! address and must not change any decision. The policies are
//! tests/authz_http/policies.yaml (Kyverno's HTTP mode: those of
//! examples/kyverno-http, with its input and output expressions); the proxy
//! configs tests/e2e-http/.
//!
//! Needs the binaries: Envoy as in tests/envoy_e2e.rs, nginx
//! (`$CELGATE_NGINX` or on PATH) and Caddy (`$CELGATE_CADDY` or on PATH);
//! scripts/test.sh installs them. Without one the test fails; it never skips.

mod common;

use common::{
    celgate_bin, envoy_base_id, free_ports, http_request_from, locate_caddy, locate_envoy,
    locate_nginx, loopback, repo_root, upstream_header, wait_http_200, ChildGuard, EchoUpstream,
    HttpResponse,
};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const CLIENT: [u8; 4] = [127, 0, 0, 2];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Proxy {
    Envoy,
    Nginx,
    Caddy,
    /// nginx asking Kyverno's HTTP mode at celgate's root.
    NginxKyverno,
}

struct Stack {
    kind: Proxy,
    proxy: ChildGuard,
    celgate: ChildGuard,
    upstream: EchoUpstream,
    front: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- celgate output -----\n{}\n----- {:?} output -----\n{}\n--------------------------",
                self.celgate.log_tail(),
                self.kind,
                self.proxy.log_tail()
            );
        }
    }
}

impl Stack {
    async fn start(kind: Proxy) -> Stack {
        let bin = match kind {
            Proxy::Envoy => locate_envoy(),
            Proxy::Nginx | Proxy::NginxKyverno => locate_nginx(),
            Proxy::Caddy => locate_caddy(),
        };
        let upstream = EchoUpstream::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = free_ports(5);
        let (admin, listen, grpc, http, authz) = (p[0], p[1], p[2], p[3], p[4]);

        let mut cmd = Command::new(celgate_bin());
        cmd.arg("serve").arg("--policies");
        if kind == Proxy::NginxKyverno {
            let example = repo_root().join("examples/kyverno-http");
            let read = |f: &str| std::fs::read_to_string(example.join(f)).unwrap();
            cmd.arg(example.join("policy.yaml"))
                .args(["--input-expression", &read("input.cel")])
                .args(["--output-expression", &read("output.cel")]);
        } else {
            cmd.arg(repo_root().join("tests/authz_http/policies.yaml"));
        }
        cmd.args(["--grpc-addr", &loopback(grpc).to_string()])
            .args(["--http-addr", &loopback(http).to_string()])
            .args(["--authz-http-addr", &loopback(authz).to_string()])
            .args(["--trusted-proxies", "127.0.0.1/32"])
            .args(["--decision-timeout-ms", "10000"])
            .env("NO_COLOR", "1");
        let mut celgate = ChildGuard::spawn("celgate", cmd, dir.path());

        let template = match kind {
            Proxy::Envoy => "envoy.yaml.tmpl",
            Proxy::Nginx => "nginx.conf.tmpl",
            Proxy::NginxKyverno => "nginx-kyverno.conf.tmpl",
            Proxy::Caddy => "Caddyfile.tmpl",
        };
        let config = std::fs::read_to_string(repo_root().join("tests/e2e-http").join(template))
            .expect("read the proxy config template")
            .replace("{{ADMIN_PORT}}", &admin.to_string())
            .replace("{{LISTEN_PORT}}", &listen.to_string())
            .replace("{{UPSTREAM_PORT}}", &upstream.addr.port().to_string())
            .replace("{{AUTHZ_PORT}}", &authz.to_string())
            .replace("{{DIR}}", &dir.path().display().to_string());
        assert!(!config.contains("{{"), "unfilled placeholder:\n{config}");
        let config_path = dir.path().join(template.trim_end_matches(".tmpl"));
        std::fs::write(&config_path, config).expect("write the proxy config");
        let mut cmd = Command::new(&bin);
        match kind {
            Proxy::Envoy => {
                cmd.arg("-c")
                    .arg(&config_path)
                    .args(["--base-id", &envoy_base_id().to_string()])
                    .args(["--concurrency", "1", "-l", "warning"]);
            }
            Proxy::Nginx | Proxy::NginxKyverno => {
                cmd.arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&config_path)
                    .args(["-e", "stderr"]);
            }
            Proxy::Caddy => {
                cmd.args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(&config_path)
                    // Caddy keeps its state under these: never the user's.
                    .env("HOME", dir.path())
                    .env("XDG_DATA_HOME", dir.path().join("data"))
                    .env("XDG_CONFIG_HOME", dir.path().join("config"));
            }
        }
        let mut proxy = ChildGuard::spawn(&format!("{kind:?}").to_lowercase(), cmd, dir.path());

        if let Err(e) = wait_http_200(
            loopback(http),
            "/readyz",
            Duration::from_secs(15),
            &mut celgate,
        )
        .await
        {
            panic!("celgate never became ready: {e}");
        }
        let (ready_addr, ready_path) = match kind {
            Proxy::Envoy => (loopback(admin), "/ready"),
            _ => (loopback(listen), "/__ready"),
        };
        if let Err(e) =
            wait_http_200(ready_addr, ready_path, Duration::from_secs(15), &mut proxy).await
        {
            panic!("{kind:?} ({}) never became ready: {e}", bin.display());
        }
        Stack {
            kind,
            proxy,
            celgate,
            upstream,
            front: loopback(listen),
            _dir: dir,
        }
    }

    async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        http_request_from(
            IpAddr::from(CLIENT),
            self.front,
            method,
            target,
            headers,
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {target} through {:?}: {e}", self.kind))
    }

    /// A request that must reach the upstream: returns what it received.
    async fn allowed(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Value {
        let before = self.upstream.count();
        let r = self.send(method, target, headers, body).await;
        assert_eq!(
            r.status,
            200,
            "{:?}: {method} {target} should be allowed; got {} {:?} {:?}",
            self.kind,
            r.status,
            r.headers,
            r.text()
        );
        assert_eq!(
            self.upstream.count(),
            before + 1,
            "{:?}: {method} {target} did not reach the upstream once",
            self.kind
        );
        self.upstream.last().unwrap()
    }

    /// A request that must be denied with `status`, never reaching the upstream.
    async fn denied(&self, status: u16, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let before = self.upstream.count();
        let r = self.send("GET", target, headers, None).await;
        assert_eq!(
            r.status,
            status,
            "{:?}: GET {target} should be denied with {status}; got {} {:?} {:?}",
            self.kind,
            r.status,
            r.headers,
            r.text()
        );
        assert_eq!(
            self.upstream.count(),
            before,
            "{:?}: GET {target} was denied but reached the upstream",
            self.kind
        );
        r
    }
}

fn one<'a>(seen: &'a Value, name: &str) -> &'a str {
    match upstream_header(seen, name).as_slice() {
        [v] => v,
        other => panic!("upstream header {name}: expected one value, got {other:?} in {seen}"),
    }
}

/// What every proxy must do: allows reach the upstream with the identity
/// header (and never the client's own), denials reach the client with their
/// status, headers and body, and an untrusted client's forwarded headers
/// change nothing.
async fn scenario(s: &Stack) {
    let k = s.kind;

    // The identity header from the allow replaces the client's; the key the
    // policy removes does not reach the upstream.
    let seen = s
        .allowed(
            "GET",
            "/api/orders",
            &[("x-api-key", "secret-key"), ("x-user", "mallory")],
            None,
        )
        .await;
    assert_eq!(one(&seen, "x-user"), "alice", "{k:?}");
    assert!(
        upstream_header(&seen, "x-api-key").is_empty(),
        "{k:?}: {seen}"
    );

    // What the policies see: the original method, path (with query) and host,
    // the client's headers, and the client's address (taken from the trusted
    // proxy's X-Forwarded-For, whatever the client put there itself).
    let seen = s
        .allowed(
            "GET",
            "/echo/a?b=c",
            &[
                ("host", "app.example"),
                ("x-probe", "7"),
                ("x-forwarded-for", "10.9.9.9"),
            ],
            None,
        )
        .await;
    assert_eq!(one(&seen, "x-seen-method"), "GET", "{k:?}");
    assert_eq!(one(&seen, "x-seen-path"), "/echo/a?b=c", "{k:?}");
    assert_eq!(one(&seen, "x-seen-host"), "app.example", "{k:?}");
    assert_eq!(one(&seen, "x-seen-probe"), "7", "{k:?}");
    assert_eq!(one(&seen, "x-seen-source"), "127.0.0.2", "{k:?}");
    assert_eq!(seen["path"], "/echo/a?b=c", "{k:?}");

    // Denials: status, headers and body reach the client.
    let r = s.denied(401, "/api/orders", &[]).await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey realm=\"celgate\""),
        "{k:?}"
    );
    assert_eq!(r.text(), "missing api key\n", "{k:?}");
    let r = s
        .denied(403, "/api/orders", &[("x-api-key", "guess")])
        .await;
    assert_eq!(r.text(), "unknown api key\n", "{k:?}");
    let r = s.denied(418, "/teapot", &[]).await;
    assert_eq!(r.header("x-reason"), Some("tea"), "{k:?}");
    assert_eq!(r.text(), "short and stout\n", "{k:?}");
    let r = s.denied(403, "/fail", &[]).await;
    assert_eq!(r.header("x-celgate-failure"), Some("evaluation"), "{k:?}");

    // Spoofed forwarded headers from the (untrusted) client: the decision
    // is the one for the real request.
    let spoofed = [
        ("x-forwarded-for", "10.9.9.9"),
        ("x-forwarded-uri", "/echo"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-host", "trusted.example"),
        ("x-forwarded-proto", "https"),
    ];
    let r = s.denied(403, "/internal", &spoofed).await;
    assert_eq!(r.text(), "internal only\n", "{k:?}");
    let r = s.denied(401, "/api/orders", &spoofed).await;
    assert_eq!(r.text(), "missing api key\n", "{k:?}");
    // The other names of the forwarded attributes: whatever the proxy
    // does with them, never an allow.
    let before = s.upstream.count();
    let r = s
        .send(
            "GET",
            "/api/orders",
            &[("x-original-uri", "/echo"), ("x-original-method", "GET")],
            None,
        )
        .await;
    assert_ne!(r.status, 200, "{k:?}: {:?}", r.text());
    assert_eq!(s.upstream.count(), before, "{k:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_service_end_to_end() {
    let s = Stack::start(Proxy::Envoy).await;
    scenario(&s).await;
    // Envoy sends the body when it buffers it (with_request_body).
    let seen = s
        .allowed("POST", "/echo/body", &[], Some(b"hello celgate"))
        .await;
    assert_eq!(seen["body"], "hello celgate");
    assert_eq!(one(&seen, "x-seen-method"), "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_end_to_end() {
    let s = Stack::start(Proxy::Nginx).await;
    scenario(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_end_to_end() {
    let s = Stack::start(Proxy::Caddy).await;
    scenario(&s).await;
}

/// Kyverno's HTTP mode behind nginx, as its ingress-nginx tutorial sets it
/// up: the example's policy, input and output expressions, nginx sending
/// the original request in X-Original-Url and X-Original-Method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_kyverno_http_mode_end_to_end() {
    let s = Stack::start(Proxy::NginxKyverno).await;
    let alice = ("x-api-key", "demo-key-alice");
    let seen = s.allowed("GET", "/api/orders?page=2", &[alice], None).await;
    assert_eq!(seen["path"], "/api/orders?page=2");
    s.allowed("GET", "/hello", &[], None).await;
    s.allowed(
        "POST",
        "/api/orders",
        &[("x-api-key", "demo-key-bob")],
        None,
    )
    .await;
    // No key: the output expression's 401 (nginx answers it with its page).
    s.denied(401, "/api/orders", &[]).await;
    // A client's own X-Original-* never describe the request: nginx sets them.
    s.denied(
        401,
        "/api/orders",
        &[
            ("x-original-url", "http://app.example/hello"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    let before = s.upstream.count();
    let r = s.send("DELETE", "/api/orders", &[alice], None).await;
    assert_eq!(r.status, 403, "alice may not delete: {r:?}");
    assert_eq!(s.upstream.count(), before, "a denial reached the upstream");
}

/// The shipped examples: their suites pass, and nginx and Caddy accept their
/// configs (Envoy's is validated with every shipped Envoy config, in
/// tests/container.rs).
#[test]
fn examples_suites_pass_and_proxy_configs_validate() {
    for example in ["envoy-http", "nginx", "caddy", "kyverno-http"] {
        let out = Command::new(celgate_bin())
            .arg("test")
            .arg(repo_root().join("examples").join(example))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "celgate test examples/{example}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for conf in [
        "examples/nginx/nginx.conf",
        "examples/kyverno-http/nginx.conf",
    ] {
        let out = Command::new(locate_nginx())
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .args(["-e", "stderr", "-c"])
            .arg(repo_root().join(conf))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nginx -t {conf}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(locate_caddy())
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(repo_root().join("examples/caddy/Caddyfile"))
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "caddy validate examples/caddy/Caddyfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
