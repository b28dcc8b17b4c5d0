//! The HTTP authorization listener (`--authz-http-addr`) in process, on a
//! real socket: Envoy's `http_service` protocol under `/envoy`, forward auth
//! under `/forward-auth`, what each builds from the request, what each
//! answers, and the refusals (malformed forwarded attributes, oversize,
//! untrusted peers), which are never an allow; and Kyverno's HTTP mode at
//! the listener's root, which answers only while HTTP-mode policies are
//! loaded.

mod common;

use celgate::engine::EngineConfig;
use celgate::httpmode::{HttpMode, HttpModeOptions};
use celgate::policy::PolicySet;
use celgate::server::authz_http::TrustedProxies;
use celgate::server::{serve_listeners, Listeners, ServeOptions, State};
use common::{http_request_from, HttpResponse};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Where the tests' client is: the server trusts 127.0.0.1 only, so a
/// client bound to 127.0.0.2 is an untrusted peer.
const UNTRUSTED: [u8; 4] = [127, 0, 0, 2];
const MAX_BODY: usize = 4096;

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), celgate::server::ServeError>>,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(&[], None).await
    }

    /// The Envoy-mode test policies and the files of `more` (from the
    /// repository's root), answering HTTP mode with `http_mode`.
    async fn start_with(more: &[&str], http_mode: Option<HttpModeOptions>) -> Server {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut paths = vec![root.join("tests/authz_http/policies.yaml")];
        paths.extend(more.iter().map(|p| root.join(p)));
        let set = PolicySet::load(&paths).expect("test policies load");
        let state = State::with_options(
            set,
            EngineConfig::default(),
            ServeOptions {
                trusted_proxies: TrustedProxies::parse(&["127.0.0.1/32"]).unwrap(),
                max_request_bytes: Some(MAX_BODY),
                http_mode: http_mode
                    .map(|o| std::sync::Arc::new(HttpMode::compile(&o).expect("options compile"))),
                ..Default::default()
            },
        );
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (grpc, http, authz) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let addr = authz.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_listeners(
            state,
            Listeners {
                grpc,
                http,
                authz_http: Some(authz),
            },
            async {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            stop: Some(tx),
            task,
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
            IpAddr::from([127, 0, 0, 1]),
            self.addr,
            method,
            target,
            headers,
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    async fn get(&self, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.send("GET", target, headers, None).await
    }

    async fn untrusted(&self, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_request_from(
            IpAddr::from(UNTRUSTED),
            self.addr,
            "GET",
            target,
            headers,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("GET {target} from 127.0.0.2: {e}"))
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task)
            .await
            .expect("the server stops within 10 s")
            .unwrap()
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(self.addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }
}

fn seen<'a>(r: &'a HttpResponse, what: &str) -> &'a str {
    r.header(&format!("x-seen-{what}"))
        .unwrap_or_else(|| panic!("no x-seen-{what} in {:?}", r.headers))
}

fn assert_status(r: &HttpResponse, status: u16, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: got {} {:?} {:?}",
        r.status,
        r.headers,
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_http_service_protocol() {
    let s = Server::start().await;

    // The original request: method, path without the prefix (query kept),
    // host, headers; no source address without X-Forwarded-For.
    let r = s
        .get(
            "/envoy/echo/a?b=c",
            &[("host", "app.example"), ("x-probe", "1")],
        )
        .await;
    assert_status(&r, 200, "echo");
    assert_eq!(seen(&r, "method"), "GET");
    assert_eq!(seen(&r, "path"), "/echo/a?b=c");
    assert_eq!(seen(&r, "host"), "app.example");
    assert_eq!(seen(&r, "probe"), "1");
    assert_eq!(seen(&r, "source"), "");
    assert_eq!(seen(&r, "scheme"), "");
    assert_eq!(seen(&r, "body"), "");
    assert!(r.body.is_empty(), "an allow has no body");

    // The body when Envoy sends one; the source address and scheme from a
    // trusted peer's forwarded headers (the right-most untrusted hop).
    let r = s
        .send(
            "POST",
            "/envoy/echo",
            &[
                ("x-forwarded-for", "6.6.6.6, 10.1.2.3"),
                ("x-forwarded-proto", "https"),
            ],
            Some(b"hello"),
        )
        .await;
    assert_status(&r, 200, "echo with a body");
    assert_eq!(seen(&r, "method"), "POST");
    assert_eq!(seen(&r, "body"), "hello");
    assert_eq!(seen(&r, "source"), "10.1.2.3");
    assert_eq!(seen(&r, "scheme"), "https");

    // From an untrusted peer the same forwarded headers are not believed.
    let r = s
        .untrusted(
            "/envoy/echo",
            &[
                ("x-forwarded-for", "10.1.2.3"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    assert_status(&r, 200, "echo from an untrusted peer");
    assert_eq!(seen(&r, "source"), "");
    assert_eq!(seen(&r, "scheme"), "");
    let r = s
        .untrusted("/envoy/internal", &[("x-forwarded-for", "10.1.2.3")])
        .await;
    assert_status(&r, 403, "a spoofed source address from an untrusted peer");
    assert_eq!(r.text(), "internal only\n");
    let r = s
        .get("/envoy/internal", &[("x-forwarded-for", "10.1.2.3")])
        .await;
    assert_status(&r, 200, "the same from the trusted proxy");

    // An allow's headers: to add upstream, and the names to remove.
    let r = s
        .get("/envoy/api/orders", &[("x-api-key", "secret-key")])
        .await;
    assert_status(&r, 200, "api with the key");
    assert_eq!(r.header("x-user"), Some("alice"));
    assert_eq!(
        r.header("x-envoy-auth-headers-to-remove"),
        Some("x-api-key")
    );

    // A denial: its status, headers and body.
    let r = s.get("/envoy/api/orders", &[]).await;
    assert_status(&r, 401, "api without a key");
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey realm=\"celgate\"")
    );
    assert_eq!(r.text(), "missing api key\n");
    let r = s.get("/envoy/teapot", &[]).await;
    assert_status(&r, 418, "teapot");
    assert_eq!(r.header("x-reason"), Some("tea"));
    assert_eq!(r.text(), "short and stout\n");

    // A failurePolicy: Fail policy that cannot be evaluated: the failure denial.
    let r = s.get("/envoy/fail", &[]).await;
    assert_status(&r, 403, "failure");
    assert_eq!(r.header("x-celgate-failure"), Some("evaluation"));

    // The bare prefix is the path "/"; other paths are not this protocol.
    let r = s.get("/envoy?x=1", &[]).await;
    assert_status(&r, 200, "root");
    let r = s.get("/envoyx/echo", &[]).await;
    assert_status(&r, 404, "not under the prefix");
    let r = s.get("/", &[]).await;
    assert_status(&r, 404, "root of the listener");

    // h2c (prior knowledge) works too: Envoy may use HTTP/2 to its cluster.
    h2c_allows(s.addr).await;

    s.stop().await;
}

/// One h2c request by hand (the preface, SETTINGS, a HEADERS frame with a
/// literal header block) to `/envoy/echo`: the answer is a HEADERS frame
/// with `:status 200`.
async fn h2c_allows(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
                                                         // HPACK: :method GET (index 2), :scheme http (6), :path /envoy/echo
                                                         // (literal, name index 4), :authority a (literal, name index 1).
    let mut block = vec![0x82, 0x86, 0x04, 11];
    block.extend_from_slice(b"/envoy/echo");
    block.extend_from_slice(&[0x01, 1, b'a']);
    let len = block.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[1, 0x05, 0, 0, 0, 1]); // HEADERS, END_STREAM|END_HEADERS, stream 1
    out.extend_from_slice(&block);
    stream.write_all(&out).await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("an h2 answer within 5 s")
            .unwrap();
        assert!(n > 0, "connection closed before a HEADERS frame");
        got.extend_from_slice(&buf[..n]);
        // Walk the frames for a HEADERS frame on stream 1.
        let mut i = 0;
        while i + 9 <= got.len() {
            let flen = u32::from_be_bytes([0, got[i], got[i + 1], got[i + 2]]) as usize;
            let (kind, stream_id) = (
                got[i + 3],
                u32::from_be_bytes([got[i + 5], got[i + 6], got[i + 7], got[i + 8]]),
            );
            if i + 9 + flen > got.len() {
                break;
            }
            if kind == 1 && stream_id == 1 {
                // :status 200 is HPACK static index 8 (0x88).
                assert_eq!(got[i + 9], 0x88, "h2 answer is :status 200");
                return;
            }
            i += 9 + flen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth() {
    let s = Server::start().await;
    let fwd = |uri: &'static str| {
        vec![
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", uri),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "10.0.0.7"),
            ("x-probe", "p"),
        ]
    };

    // The original request from the forwarded headers (Traefik, Caddy).
    let r = s.get("/forward-auth", &fwd("/echo/x?y=1")).await;
    assert_status(&r, 200, "echo");
    assert_eq!(seen(&r, "method"), "POST");
    assert_eq!(seen(&r, "path"), "/echo/x?y=1");
    assert_eq!(seen(&r, "host"), "app.example");
    assert_eq!(seen(&r, "scheme"), "https");
    assert_eq!(seen(&r, "source"), "10.0.0.7");
    assert_eq!(seen(&r, "probe"), "p");
    assert!(r.body.is_empty());

    // nginx's names; the host from the subrequest's own Host.
    let r = s
        .get(
            "/forward-auth",
            &[
                ("x-original-uri", "/echo/n"),
                ("x-original-method", "DELETE"),
                ("host", "nginx.example"),
            ],
        )
        .await;
    assert_status(&r, 200, "nginx names");
    assert_eq!(seen(&r, "method"), "DELETE");
    assert_eq!(seen(&r, "path"), "/echo/n");
    assert_eq!(seen(&r, "host"), "nginx.example");
    assert_eq!(seen(&r, "source"), "");

    // An allow's headers for the proxy to copy upstream.
    let mut h = fwd("/api/orders");
    h.push(("x-api-key", "secret-key"));
    let r = s.get("/forward-auth", &h).await;
    assert_status(&r, 200, "api with the key");
    assert_eq!(r.header("x-user"), Some("alice"));
    assert!(r.body.is_empty());

    // Denials: status, headers, body.
    let r = s.get("/forward-auth", &fwd("/api/orders")).await;
    assert_status(&r, 401, "api without the key");
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey realm=\"celgate\"")
    );
    assert_eq!(r.text(), "missing api key\n");
    let r = s.get("/forward-auth", &fwd("/teapot")).await;
    assert_status(&r, 418, "teapot");
    assert_eq!(r.text(), "short and stout\n");
    let r = s.get("/forward-auth", &fwd("/fail")).await;
    assert_status(&r, 403, "failure under Fail");
    assert_eq!(r.header("x-celgate-failure"), Some("evaluation"));

    // Malformed forwarded attributes: 400, never an allow (each of these
    // paths would otherwise be allowed: no policy answers for them).
    for (what, headers) in [
        ("no URI", vec![("x-forwarded-method", "GET")]),
        ("relative URI", vec![("x-forwarded-uri", "echo")]),
        (
            "absolute URI",
            vec![("x-forwarded-uri", "http://evil.example/")],
        ),
        (
            "scheme-relative URI",
            vec![("x-forwarded-uri", "//evil.example/")],
        ),
        ("space in the URI", vec![("x-forwarded-uri", "/a b")]),
        (
            "bad method",
            vec![("x-forwarded-uri", "/x"), ("x-forwarded-method", "G(T")],
        ),
        (
            "bad host",
            vec![("x-forwarded-uri", "/x"), ("x-forwarded-host", "a@b")],
        ),
        (
            "bad proto",
            vec![("x-forwarded-uri", "/x"), ("x-forwarded-proto", "gopher")],
        ),
        (
            "conflicting URIs",
            vec![("x-forwarded-uri", "/x"), ("x-original-uri", "/api/orders")],
        ),
        (
            "two hosts",
            vec![("x-forwarded-uri", "/x"), ("host", "a"), ("host", "b")],
        ),
        (
            "repeated URI",
            vec![("x-forwarded-uri", "/x"), ("x-forwarded-uri", "/x")],
        ),
        (
            "conflicting methods",
            vec![
                ("x-forwarded-uri", "/x"),
                ("x-forwarded-method", "GET"),
                ("x-original-method", "POST"),
            ],
        ),
    ] {
        let r = s.get("/forward-auth", &headers).await;
        assert_status(&r, 400, what);
        assert_eq!(r.header("x-celgate-failure"), Some("unreadable"), "{what}");
    }
    // The same value under both names is fine.
    let r = s
        .get(
            "/forward-auth",
            &[("x-forwarded-uri", "/echo"), ("x-original-uri", "/echo")],
        )
        .await;
    assert_status(&r, 200, "agreeing URIs");

    // An untrusted peer: the failure denial, whatever it forwards; spoofed
    // headers do not change the answer.
    let plain = s.untrusted("/forward-auth", &[]).await;
    let spoofed = s.untrusted("/forward-auth", &fwd("/echo")).await;
    let spoofed_internal = s.untrusted("/forward-auth", &fwd("/internal")).await;
    for r in [&plain, &spoofed, &spoofed_internal] {
        assert_status(r, 403, "untrusted peer");
        assert_eq!(r.header("x-celgate-failure"), Some("unreadable"));
        assert_eq!(r.header("x-seen-path"), None);
    }
    assert_eq!(plain.body, spoofed.body);

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_metrics() {
    let s = Server::start().await;
    let big = vec![b'a'; MAX_BODY + 1];
    for target in ["/envoy/echo", "/forward-auth"] {
        let r = s
            .send("POST", target, &[("x-forwarded-uri", "/echo")], Some(&big))
            .await;
        assert_status(&r, 413, "body over --max-request-bytes");
        assert_eq!(r.header("x-celgate-failure"), Some("unreadable"));
    }
    // A chunked body with no length, over the limit.
    let chunk = format!("{:x}\r\n{}\r\n0\r\n\r\n", big.len(), "a".repeat(big.len()));
    let r = raw(s.addr, format!("POST /envoy/echo HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{chunk}")).await;
    assert!(r.starts_with("HTTP/1.1 413"), "chunked oversize: {r:.80}");

    // Too many header fields, and a header block over the limit.
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let r = raw(
        s.addr,
        format!("GET /envoy/echo HTTP/1.1\r\nhost: a\r\n{many}connection: close\r\n\r\n"),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "too many headers: {r:.80}");
    let huge = "v".repeat(80 * 1024);
    let r = raw(
        s.addr,
        format!(
            "GET /envoy/echo HTTP/1.1\r\nhost: a\r\nx-big: {huge}\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(
        r.is_empty() || r.starts_with("HTTP/1.1 431"),
        "header block over the limit: {r:.80}"
    );

    // The protocols are told apart in the metrics.
    let m = celgate::telemetry::metrics::global();
    use celgate::telemetry::metrics::Protocol;
    let (_, denied) = m.answers(Protocol::EnvoyHttp);
    assert!(denied >= 2, "envoy_http denials counted: {denied}");
    let (_, denied) = m.answers(Protocol::ForwardAuth);
    assert!(denied >= 1, "forward_auth denials counted: {denied}");
    let text = m.render("");
    assert!(
        text.contains("celgate_authz_requests_total{protocol=\"envoy_http\",decision=\"deny\"}"),
        "{text}"
    );
    s.stop().await;
}

/// Kyverno's HTTP authorization protocol at the listener's root, as its
/// server answers: an allow is a 200 with an empty body, a denial a 403
/// with the reason as `text/plain`; the other protocols keep their paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kyverno_http_mode_at_the_root() {
    let s = Server::start_with(&["tests/cases/httpmode/policies.yaml"], None).await;
    let r = s.get("/headers", &[("foo", "bar")]).await;
    assert_status(&r, 200, "allowed");
    assert!(r.body.is_empty(), "an allow has no body: {:?}", r.text());
    let r = s.get("/headers", &[]).await;
    assert_status(&r, 403, "denied");
    assert_eq!(r.text(), "not allowed");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = s.send("POST", "/body", &[], Some(b"hello")).await;
    assert_status(&r, 200, "the body read");
    let r = s.get("/query?foo=bar&sp=a+b", &[]).await;
    assert_status(&r, 200, "query parameters");
    // A failing policy under Fail: the failure denial, not an allow.
    let r = s.get("/fail", &[("x-n", "nope")]).await;
    assert_status(&r, 403, "an error under Fail");
    assert_eq!(r.header("x-celgate-failure"), Some("evaluation"));
    // A body over --max-request-bytes is refused, never decided.
    let big = vec![b'a'; MAX_BODY + 1];
    let r = s.send("POST", "/body", &[], Some(&big)).await;
    assert_status(&r, 413, "oversize");
    // Envoy's protocol keeps its prefix, on the Envoy-mode policies.
    let r = s.get("/envoy/api/orders", &[]).await;
    assert_status(&r, 401, "Envoy mode under /envoy");
    s.stop().await;

    // The ingress-nginx tutorial's options: the original request from
    // x-original-url and x-original-method, 401 for an unauthenticated one.
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/kyverno-http");
    let read = |f: &str| std::fs::read_to_string(example.join(f)).unwrap();
    let options = HttpModeOptions {
        nested_request: false,
        input_expression: Some(read("input.cel")),
        output_expression: Some(read("output.cel")),
    };
    let s = Server::start_with(&["tests/cases/httpmode-nginx/policy.yaml"], Some(options)).await;
    let original = [
        ("x-original-method", "GET"),
        ("x-original-url", "http://myapp.com/anything/api/v1"),
    ];
    let r = s.get("/", &original).await;
    assert_status(&r, 401, "no token");
    assert_eq!(r.text(), "Unauthorized");
    let mut guest = original.to_vec();
    guest.push(("authorization", "Bearer guest"));
    let r = s.get("/", &guest).await;
    assert_status(&r, 200, "a guest reads");
    guest[0] = ("x-original-method", "DELETE");
    let r = s.get("/", &guest).await;
    assert_status(&r, 403, "a guest may not delete");
    assert_eq!(r.text(), "Forbidden");
    // Without the headers the input expression fails: the failure denial.
    let r = s.get("/", &[]).await;
    assert_status(&r, 403, "no original request");
    assert!(r.header("x-celgate-failure").is_some(), "{:?}", r.headers);
    s.stop().await;
}

/// Sends raw bytes, returns what comes back (as text; empty if the server
/// closed the connection without an answer).
async fn raw(addr: SocketAddr, request: String) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut out),
    )
    .await
    .expect("an answer or a close within 10 s");
    String::from_utf8_lossy(&out).into_owned()
}
