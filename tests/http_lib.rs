//! The `http` CEL library against a loopback server whose requests are
//! counted: allowed URLs are fetched and cached by max-age, concurrent GETs
//! share one request, refused URLs are refused at load (a literal) or at
//! run time (a computed one), timeouts and the response limit hold, a
//! server that is down is an error that `failurePolicy` decides, and POST
//! sends its body and headers.

use celgate::engine::{evaluate, EngineConfig};
use celgate::outbound::http::{self, HttpConfig};
use celgate::policy::{load::parse_documents, PolicySet};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    headers: HashMap<String, String>,
    body: String,
}

struct Server {
    port: u16,
    /// Requests by path (without the query).
    seen: Mutex<HashMap<String, Vec<Seen>>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> usize {
        self.seen.lock().unwrap().get(path).map_or(0, Vec::len)
    }

    fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

/// The answer to a path: status, extra headers, body, delay.
fn route(path: &str) -> (u16, &'static str, String, Duration) {
    let p = path.split('?').next().unwrap_or("");
    let name = p.rsplit('/').next().unwrap_or("");
    let last = |prefix: &str| p.starts_with(prefix);
    if last("/ok/cached") {
        return (
            200,
            "Cache-Control: max-age=60\r\n",
            format!(r#"{{"path":"{name}","n":1}}"#),
            Duration::ZERO,
        );
    }
    if last("/ok/uncached") {
        return (200, "", r#"{"fresh":true}"#.into(), Duration::ZERO);
    }
    if last("/ok/slow-shared") {
        return (
            200,
            "",
            r#"{"shared":true}"#.into(),
            Duration::from_millis(300),
        );
    }
    if last("/ok/slow") {
        return (200, "", "{}".into(), Duration::from_secs(3));
    }
    if last("/ok/big") {
        return (
            200,
            "",
            format!(r#"{{"x":"{}"}}"#, "a".repeat(8_000)),
            Duration::ZERO,
        );
    }
    if last("/ok/array") {
        return (200, "", "[1,2]".into(), Duration::ZERO);
    }
    if last("/ok/html") {
        return (200, "", "<html></html>".into(), Duration::ZERO);
    }
    if last("/ok/missing") {
        return (404, "", r#"{"error":"no"}"#.into(), Duration::ZERO);
    }
    if last("/ok/redirect") {
        return (
            302,
            "Location: /ok/uncached\r\n",
            String::new(),
            Duration::ZERO,
        );
    }
    if last("/ok/echo") {
        return (200, "", r#"{"echoed":true}"#.into(), Duration::ZERO);
    }
    (200, "", r#"{"secret":true}"#.into(), Duration::ZERO)
}

fn serve(server: Arc<Server>, listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let server = server.clone();
        std::thread::spawn(move || {
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let mut lines = head.lines();
            let first = lines.next().unwrap_or("");
            let mut parts = first.split(' ');
            let method = parts.next().unwrap_or("").to_owned();
            let target = parts.next().unwrap_or("").to_owned();
            let headers: HashMap<String, String> = lines
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                .collect();
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
            let path = target.split('?').next().unwrap_or("").to_owned();
            server
                .seen
                .lock()
                .unwrap()
                .entry(path)
                .or_default()
                .push(Seen {
                    method,
                    headers,
                    body,
                });
            let (status, extra, body, delay) = route(&target);
            std::thread::sleep(delay);
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes());
        });
    }
}

/// The server, and the port of one that is down (bound, then closed); the
/// library configured once for the whole binary: `/ok/` of the server and
/// the down port allowed, a 1 s timeout, answers up to 4 KiB.
fn server() -> (&'static Server, u16) {
    static S: OnceLock<(Arc<Server>, u16)> = OnceLock::new();
    let (s, down) = S.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Arc::new(Server {
            port,
            seen: Mutex::new(HashMap::new()),
        });
        let s = server.clone();
        std::thread::spawn(move || serve(s, listener));
        http::configure(HttpConfig {
            allowed_urls: vec![
                format!("http://127.0.0.1:{port}/ok/"),
                format!("http://127.0.0.1:{down}/"),
            ],
            check_literals: true,
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            max_response_bytes: 4096,
            ..HttpConfig::default()
        });
        (server, down)
    });
    (s, *down)
}

fn policy(name: &str, failure: &str, variable: &str, validation: &str) -> String {
    format!(
        r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {{ name: {name} }}
spec:
  evaluation: {{ mode: Envoy }}
  failurePolicy: {failure}
  variables:
  - name: data
    expression: '{variable}'
  validations:
  - expression: '{validation}'
"#
    )
}

fn load(yaml: &str) -> Result<PolicySet, String> {
    server();
    let docs = parse_documents(Path::new("http.yaml"), yaml).map_err(|e| e.to_string())?;
    PolicySet::compile(docs).map_err(|e| e.to_string())
}

fn request(path: &str) -> CheckRequest {
    celgate::request_json::from_value(&serde_json::json!({
        "attributes": {"request": {"http": {"method": "GET", "path": path, "headers": {"x-user": "alice"}}}}
    }))
    .unwrap()
}

/// A validation that reads `variables.data` (a variable is computed when
/// an expression uses it) and then allows.
const USE: &str = "variables.data.statusCode > 0 ? envoy.Allowed().Response() : null";

/// Allowed when `variables.data` reads `want` at `field`, else 403.
fn expect(field: &str, want: &str) -> String {
    format!(
        "variables.data.{field} == {want} ? envoy.Allowed().Response() : envoy.Denied(403).Response()"
    )
}

#[test]
fn an_allowed_url_is_fetched_once_and_cached_by_max_age() {
    let (s, _) = server();
    let url = s.url("/ok/cached/one");
    let set = load(&policy(
        "cached",
        "Fail",
        &format!("http.Get(\"{url}\")"),
        &expect(
            "path",
            "\"one\" && variables.data.n == 1.0 && variables.data.statusCode == 200",
        ),
    ))
    .unwrap();
    for _ in 0..5 {
        let d = evaluate(&set, &EngineConfig::default(), &request("/"));
        assert!(d.allowed(), "{d:?}");
    }
    assert_eq!(s.hits("/ok/cached/one"), 1);

    // No max-age: asked every time.
    let url = s.url("/ok/uncached");
    let set = load(&policy(
        "uncached",
        "Fail",
        &format!("http.Get(\"{url}\")"),
        &expect("fresh", "true"),
    ))
    .unwrap();
    let before = s.hits("/ok/uncached");
    for _ in 0..3 {
        assert!(evaluate(&set, &EngineConfig::default(), &request("/")).allowed());
    }
    assert_eq!(s.hits("/ok/uncached") - before, 3);
    assert!(http::stats().cache_hits >= 4);
    // The same counters on /metrics.
    let metrics = celgate::telemetry::extra_metrics();
    let hits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("celgate_http_cache_hits_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("celgate_http_cache_hits_total on /metrics");
    assert!(hits >= 4, "{metrics}");
}

#[test]
fn a_literal_url_not_allowed_is_refused_at_load() {
    let (s, _) = server();
    let url = s.url("/secret/data?key=SECRET");
    let e = load(&policy(
        "literal",
        "Fail",
        &format!("http.Get(\"{url}\")"),
        &expect("secret", "true"),
    ))
    .unwrap_err();
    assert!(e.contains("literal"), "{e}");
    assert!(e.contains("is not allowed (--http-allowed-urls)"), "{e}");
    assert!(e.contains("http.Get"), "{e}");
    // The client form and Post are checked too; https to the host is not
    // what the list admits either.
    for call in [
        format!("http.Client(\"\").Get(\"{url}\")"),
        format!("http.Post(\"{url}\", {{}})"),
        "http.Get(\"https://elsewhere.example/\")".to_owned(),
    ] {
        let e = load(&policy("literal2", "Fail", &call, "null")).unwrap_err();
        assert!(e.contains("not allowed"), "{call}: {e}");
    }
    // Misuse is refused by the checker.
    let e = load(&policy("typed", "Fail", "http.Get(1)", "null")).unwrap_err();
    assert!(e.contains("http.Get"), "{e}");
    let e = load(&policy(
        "typed2",
        "Fail",
        "http.Get(\"x\", {\"a\": 1})",
        "null",
    ))
    .unwrap_err();
    assert!(e.contains("http.Get"), "{e}");
    assert_eq!(s.hits("/secret/data"), 0);
}

#[test]
fn a_computed_url_not_allowed_is_denied_at_run_time_under_fail() {
    let (s, _) = server();
    let base = s.url("/secret/");
    let set = load(&policy(
        "computed",
        "Fail",
        &format!("http.Get(\"{base}\" + object.attributes.request.http.path)"),
        &expect("secret", "true"),
    ))
    .unwrap();
    let d = evaluate(&set, &EngineConfig::default(), &request("x?key=SECRET"));
    assert!(!d.allowed());
    let e = d.error.as_ref().expect("an evaluation error");
    let shown = e.message().to_owned();
    assert!(shown.contains("not allowed"), "{shown}");
    assert!(!shown.contains("SECRET"), "{shown}");
    assert!(!shown.contains("/secret/"), "{shown}");
    assert_eq!(s.hits("/secret/x"), 0);
}

#[test]
fn a_slow_server_is_cut_off_by_the_timeout() {
    let (s, _) = server();
    let set = load(&policy(
        "slow",
        "Fail",
        &format!("http.Get(\"{}\")", s.url("/ok/slow")),
        USE,
    ))
    .unwrap();
    let started = Instant::now();
    let d = evaluate(&set, &EngineConfig::default(), &request("/"));
    let took = started.elapsed();
    assert!(!d.allowed(), "{d:?}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_millis(2_500), "{took:?}");
    let e = d.error.as_ref().expect("an evaluation error");
    assert_eq!(e.function.as_deref(), Some("http.Get"));
    assert!(e.message().contains("timeout"), "{}", e.message());
}

#[test]
fn oversize_non_json_and_non_2xx_answers_are_errors() {
    let (s, _) = server();
    for (path, why) in [
        ("/ok/big", "larger than 4096 bytes"),
        ("/ok/html", "not JSON"),
        ("/ok/missing", "HTTP status 404"),
        ("/ok/redirect", "HTTP status 302"),
    ] {
        let set = load(&policy(
            "bad",
            "Fail",
            &format!("http.Get(\"{}\")", s.url(path)),
            USE,
        ))
        .unwrap();
        let d = evaluate(&set, &EngineConfig::default(), &request("/"));
        assert!(!d.allowed(), "{path}");
        let shown = d.error.as_ref().map(|e| e.message().to_owned());
        assert!(
            shown.as_deref().unwrap_or("").contains(why),
            "{path}: {shown:?}"
        );
    }
    // A body that is not an object comes under `body`.
    let set = load(&policy(
        "array",
        "Fail",
        &format!("http.Get(\"{}\")", s.url("/ok/array")),
        &expect("body", "[1.0, 2.0]"),
    ))
    .unwrap();
    assert!(evaluate(&set, &EngineConfig::default(), &request("/")).allowed());
}

#[test]
fn a_server_that_is_down_denies_under_fail_and_is_skipped_under_ignore() {
    let (_, down) = server();
    let url = format!("http://127.0.0.1:{down}/data");
    let fail = load(&policy(
        "down-fail",
        "Fail",
        &format!("http.Get(\"{url}\")"),
        USE,
    ))
    .unwrap();
    let d = evaluate(&fail, &EngineConfig::default(), &request("/"));
    assert!(!d.allowed(), "{d:?}");
    let ignore = load(&policy(
        "down-ignore",
        "Ignore",
        &format!("http.Get(\"{url}\")"),
        "variables.data.statusCode == 0 ? null : envoy.Denied(403).Response()",
    ))
    .unwrap();
    let d = evaluate(&ignore, &EngineConfig::default(), &request("/"));
    assert!(d.allowed(), "{d:?}");
}

#[test]
fn post_sends_its_body_and_headers_and_is_never_cached() {
    let (s, _) = server();
    let set = load(&policy(
        "post",
        "Fail",
        &format!(
            "http.Post(\"{}\", {{\"user\": object.attributes.request.http.headers[\"x-user\"], \"n\": [1, 2]}}, {{\"x-api-key\": \"k1\"}})",
            s.url("/ok/echo")
        ),
        &expect("echoed", "true"),
    ))
    .unwrap();
    for _ in 0..2 {
        assert!(evaluate(&set, &EngineConfig::default(), &request("/")).allowed());
    }
    let seen = s.requests("/ok/echo");
    assert_eq!(seen.len(), 2);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.headers.get("x-api-key").map(String::as_str), Some("k1"));
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body, serde_json::json!({"user": "alice", "n": [1, 2]}));
}

#[test]
fn concurrent_gets_of_one_url_make_one_request() {
    let (s, _) = server();
    let url = s.url("/ok/slow-shared");
    let set = Arc::new(
        load(&policy(
            "shared",
            "Fail",
            &format!("http.Get(\"{url}\")"),
            &expect("shared", "true"),
        ))
        .unwrap(),
    );
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (set, barrier) = (set.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                evaluate(&set, &EngineConfig::default(), &request("/")).allowed()
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    // The answer has no max-age: only the sharing saved the requests.
    assert_eq!(s.hits("/ok/slow-shared"), 1);
}
