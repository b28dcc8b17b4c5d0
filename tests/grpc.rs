//! The real server on ephemeral ports, called with the tonic client; the
//! binary's start-up refusal and its SIGTERM handling.

mod common;

use celgate::engine::EngineConfig;
use celgate::policy::PolicySet;
use celgate::server::{serve_on, State};
use common::{free_port, get_blocking};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn req(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let h: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let v = serde_json::json!({"attributes": {"request": {"http": {"method": "GET", "path": path, "headers": h}}}});
    celgate::request_json::from_value(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_over_grpc_and_graceful_shutdown() {
    let set = PolicySet::load(&[repo("policies")]).expect("bundled policies load");
    let state = State::new(set, EngineConfig::default());
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(state, grpc, http, async {
        let _ = stop_rx.await;
    }));

    let mut client = AuthorizationClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();

    let ok = client
        .check(req("/api/orders", &[("x-api-key", "demo-key-alice")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = ok.http_response else {
        panic!("expected an OK response: {ok:?}")
    };
    let added: Vec<(String, String)> = ok
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    assert_eq!(added, vec![("x-user".to_string(), "alice".to_string())]);
    assert_eq!(ok.headers_to_remove, vec!["x-api-key".to_string()]);

    let denied = client
        .check(req("/api/orders", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status.as_ref().unwrap().code, 7, "PERMISSION_DENIED");
    let Some(HttpResponse::DeniedResponse(d)) = denied.http_response else {
        panic!("expected a denial")
    };
    assert_eq!(d.status.unwrap().code, 401);
    assert_eq!(d.body, "missing api key\n");

    // An empty request (no attributes at all) is judged, not rejected.
    let empty = client
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(empty.http_response, Some(HttpResponse::DeniedResponse(ref d)) if d.status.unwrap().code == 404),
        "{empty:?}"
    );

    let (status, body) = tokio::task::spawn_blocking(move || get_blocking(http_addr, "/readyz"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"policies\":3"), "{body}");
    let (status, _) = tokio::task::spawn_blocking(move || get_blocking(http_addr, "/livez"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);

    drop(client);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after shutdown")
        .unwrap()
        .expect("clean exit");
}

#[test]
fn binary_refuses_broken_policies_naming_file_policy_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: { name: typo }\nspec:\n  evaluation: { mode: Envoy }\n  validations:\n  - expression: envoy.Allowed().Response()\n  - expression: 'envoy.Denied(403'\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["serve", "--policies"])
        .arg(&file)
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("ValidatingPolicy \"typo\""), "{err}");
    assert!(err.contains("spec.validations[1].expression"), "{err}");
}

#[test]
fn binary_exits_zero_on_sigterm() {
    let http_port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["serve", "--policies"])
        .arg(repo("policies"))
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let start = Instant::now();
    while get_blocking(addr, "/readyz").map(|r| r.0).ok() != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("celgate did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Every Check is answered with a decision: hostile bytes on the wire.
// ---------------------------------------------------------------------------

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use prost::Message as _;
use tonic::codegen::{http, Bytes};

/// Sends `message` (any bytes) as the one message of a `Check` call.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = CheckResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = CheckResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<CheckResponse>, tonic::Status> {
        CheckResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// One `Check` carrying `message` as is; the server's answer must be gRPC OK.
async fn check_raw(addr: std::net::SocketAddr, message: Vec<u8>) -> CheckResponse {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(message),
        http::uri::PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check"),
        RawCodec,
    )
    .await
    .unwrap_or_else(|s| panic!("a gRPC error instead of a decision: {s:?}"))
    .into_inner()
}

/// What came back from a hand-made HTTP/2 request: the HTTP status, the gRPC
/// status (trailers, or headers for a trailers-only answer) and the message.
struct RawAnswer {
    http: u16,
    grpc_status: Option<String>,
    response: Option<CheckResponse>,
}

/// A request body that yields its chunks, then ends, fails or stalls.
struct Scripted {
    chunks: Vec<Bytes>,
    then: Then,
}

/// What a [`Scripted`] body does after its last chunk.
#[derive(Clone, Copy)]
enum Then {
    /// Ends the stream: a complete request body.
    End,
    /// Fails: the client gave up half-way.
    Fail,
    /// Never yields again: a client that stalls.
    Stall,
}

impl Scripted {
    fn body(chunks: Vec<Vec<u8>>, then: Then) -> tonic::body::Body {
        tonic::body::Body::new(Scripted {
            chunks: chunks.into_iter().map(Bytes::from).collect(),
            then,
        })
    }
}

impl http_body::Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if !self.chunks.is_empty() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(self.chunks.remove(0)))));
        }
        match self.then {
            Then::End => Poll::Ready(None),
            Then::Fail => Poll::Ready(Some(Err(std::io::Error::other("the client gave up")))),
            Then::Stall => Poll::Pending,
        }
    }
}

/// Sends `body` (raw bytes, gRPC framing and all, as the body yields them) to
/// `Check` over a fresh HTTP/2 connection and returns the HTTP answer.
async fn call_check(
    addr: std::net::SocketAddr,
    body: tonic::body::Body,
) -> Result<http::Response<tonic::body::Body>, tonic::transport::Error> {
    use tonic::codegen::Service as _;
    let mut channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/envoy.service.auth.v3.Authorization/Check"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    channel.call(req).await
}

/// POSTs `body` (raw bytes, gRPC framing and all) to `Check` over HTTP/2.
async fn post_check(addr: std::net::SocketAddr, body: Vec<Vec<u8>>) -> RawAnswer {
    let resp = call_check(addr, Scripted::body(body, Then::End))
        .await
        .expect("an HTTP/2 answer");
    let http_status = resp.status().as_u16();
    let mut grpc_status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx))
            .await
    {
        let frame = frame.expect("body frame");
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(frame) => {
                if let Some(t) = frame.trailers_ref() {
                    if let Some(s) = t.get("grpc-status") {
                        grpc_status = Some(s.to_str().unwrap().to_owned());
                    }
                }
            }
        }
    }
    let response = (data.len() >= 5).then(|| {
        assert_eq!(data[0], 0, "uncompressed");
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(data.len(), 5 + len, "one whole message");
        CheckResponse::decode(&data[5..]).expect("a CheckResponse")
    });
    RawAnswer {
        http: http_status,
        grpc_status,
        response,
    }
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// The denial's HTTP status, or `None` for an allow.
fn denial_status(r: &CheckResponse) -> Option<i32> {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => Some(d.status.unwrap_or_default().code),
        Some(HttpResponse::OkResponse(_)) => None,
        _ => panic!("a CheckResponse that is neither OK nor denied: {r:?}"),
    }
}

/// `authz_decisions_total` for `source` (summed over policies), from /metrics.
async fn decisions(http_addr: std::net::SocketAddr, source: &str) -> u64 {
    let (status, body) = tokio::task::spawn_blocking(move || get_blocking(http_addr, "/metrics"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let needle = format!("source=\"{source}\"");
    body.lines()
        .filter(|l| l.starts_with("authz_decisions_total{") && l.contains(&needle))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Protobuf wire helpers: a length-delimited field.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::bytes::encode(tag, &bytes.to_vec(), &mut out);
    out
}

/// A CheckRequest whose HttpRequest is made of `http` (encoded fields).
fn with_http(http: &[Vec<u8>]) -> Vec<u8> {
    field(1, &field(4, &field(2, &http.concat())))
}

/// HttpRequest.headers entry (tag 3) with raw bytes.
fn header_entry(k: &[u8], v: &[u8]) -> Vec<u8> {
    field(3, &[field(1, k), field(2, v)].concat())
}

const FAILURE_STATUS: i32 = 503;
const LIMIT: usize = 64 * 1024;

const HOSTILE_POLICIES: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: deny-list }
spec:
  evaluation: { mode: Envoy }
  failurePolicy: Fail
  validations:
  - expression: >
      "x-blocked" in object.attributes.request.http.headers
        ? envoy.Denied(451).WithBody("blocked\n").Response()
        : null
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: name-rule }
spec:
  evaluation: { mode: Envoy }
  failurePolicy: Fail
  matchConditions:
  - name: has-name
    expression: '"x-name" in object.attributes.request.http.headers'
  validations:
  - expression: >
      object.attributes.request.http.headers["x-name"].startsWith("a")
        ? envoy.Denied(409).Response()
        : envoy.Allowed().WithHeader("x-name-seen", object.attributes.request.http.headers["x-name"]).Response()
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: body-rule }
spec:
  evaluation: { mode: Envoy }
  failurePolicy: Fail
  matchConditions:
  - name: post
    expression: object.attributes.request.http.method == "POST"
  validations:
  - expression: >
      object.attributes.request.http.body.contains("forbidden")
        ? envoy.Denied(403).WithBody("forbidden content").Response()
        : envoy.Allowed().Response()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_is_answered_with_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("p.yaml"), HOSTILE_POLICIES).unwrap();
    let log = dir.path().join("decisions.jsonl");
    let set = PolicySet::load(&[policies]).expect("policies load");
    let state = State::with_options(
        set,
        EngineConfig {
            failure_status: FAILURE_STATUS,
            failure_body: Some("cannot decide\n".into()),
            failure_header: Some("x-authz-failure".into()),
            ..Default::default()
        },
        celgate::server::ServeOptions {
            max_request_bytes: Some(LIMIT),
            limits: celgate::server::limits::Limits {
                read_timeout: Duration::from_millis(300),
                ..Default::default()
            },
            decision_log: Some(
                celgate::telemetry::decision_log::DecisionLog::start(
                    celgate::telemetry::decision_log::Target::File(log.clone()),
                    &[],
                )
                .unwrap(),
            ),
            ..Default::default()
        },
    );
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(state, grpc, http, async {
        let _ = stop_rx.await;
    }));

    // The configured status and body, and the header naming the reason:
    // `evaluation` for a policy's error, `unreadable` for a request that
    // cannot be read.
    let failure_denial = |r: &CheckResponse| -> Option<String> {
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
            return None;
        };
        let headers: Vec<(&str, &str)> = d
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.as_str(), h.value.as_str()))
            .collect();
        match headers[..] {
            [("x-authz-failure", reason)]
                if d.status.unwrap_or_default().code == FAILURE_STATUS
                    && d.body == "cannot decide\n" =>
            {
                Some(reason.to_owned())
            }
            _ => None,
        }
    };
    let is_failure_denial = |r: &CheckResponse| failure_denial(r).as_deref() == Some("evaluation");
    let is_unreadable_denial =
        |r: &CheckResponse| failure_denial(r).as_deref() == Some("unreadable");
    let unreadable = decisions(http_addr, "unreadable").await;
    let errors = decisions(http_addr, "error").await;

    // Sanity: an ordinary request is allowed.
    let ok = check_raw(addr, with_http(&[field(2, b"GET")])).await;
    assert_eq!(denial_status(&ok), None, "{ok:?}");

    // 1. A header value that is not UTF-8 is read (as bytes): the deny-list
    //    on its presence still denies...
    let r = check_raw(
        addr,
        with_http(&[field(2, b"GET"), header_entry(b"x-blocked", b"\xff\xfe")]),
    )
    .await;
    assert_eq!(denial_status(&r), Some(451), "{r:?}");
    // ... and it never passes for a string: a string function on it is an
    //    evaluation error, so failurePolicy Fail denies.
    let r = check_raw(
        addr,
        with_http(&[field(2, b"GET"), header_entry(b"x-name", b"a\xff")]),
    )
    .await;
    assert!(is_failure_denial(&r), "{r:?}");
    assert_eq!(decisions(http_addr, "error").await, errors + 1);
    // The same header as valid UTF-8 is judged normally.
    let r = check_raw(
        addr,
        with_http(&[field(2, b"GET"), header_entry(b"x-name", b"bob")]),
    )
    .await;
    assert_eq!(denial_status(&r), None, "{r:?}");

    // 2. A body that is not UTF-8: `body` is bytes, `.contains` on it an
    //    error: the failure denial, counted as an evaluation error.
    let r = check_raw(
        addr,
        with_http(&[field(2, b"POST"), field(11, b"forbidden\xff")]),
    )
    .await;
    assert!(is_failure_denial(&r), "{r:?}");
    assert_eq!(decisions(http_addr, "error").await, errors + 2);
    // `raw_body` alone (pack_as_bytes) reads as `body` when it is text.
    let r = check_raw(
        addr,
        with_http(&[field(2, b"POST"), field(12, b"{\"x\":\"forbidden\"}")]),
    )
    .await;
    assert_eq!(denial_status(&r), Some(403), "{r:?}");

    // 3. Requests that cannot be read at all: the failure denial, before any
    //    policy, each counted as source="unreadable".
    let too_big = with_http(&[
        field(2, b"GET"),
        header_entry(b"x-big", &vec![b'a'; LIMIT + 1]),
    ]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized", too_big),
        ("malformed protobuf", b"\xff\xff\xff\xff\xff".to_vec()),
        ("truncated protobuf", b"\x0a\x10abc".to_vec()),
        (
            "non-UTF-8 path",
            with_http(&[field(4, b"/SECRET-PATH\xff")]),
        ),
        (
            "non-UTF-8 header name",
            with_http(&[header_entry(b"x-\xff", b"v")]),
        ),
    ];
    let mut expected = unreadable;
    for (what, message) in cases {
        let r = check_raw(addr, message).await;
        assert!(is_unreadable_denial(&r), "{what}: {r:?}");
        expected += 1;
        assert_eq!(
            decisions(http_addr, "unreadable").await,
            expected,
            "{what}: counted"
        );
    }

    // 4. Broken gRPC framing, sent as raw HTTP/2: still HTTP 200, gRPC OK and
    //    the failure denial.
    let big = framed(&[0u8; 10]);
    let mut huge_prefix = vec![0u8];
    huge_prefix.extend_from_slice(&u32::MAX.to_be_bytes());
    let frames: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("empty body", vec![]),
        ("half a prefix", vec![vec![0, 0]]),
        ("cut short", vec![big[..8].to_vec()]),
        (
            "compressed flag",
            vec![{
                let mut f = framed(b"");
                f[0] = 1;
                f
            }],
        ),
        ("two messages", vec![framed(b""), framed(b"")]),
        ("4 GiB declared", vec![huge_prefix]),
        (
            "oversized in many frames",
            std::iter::once(framed(&vec![0u8; LIMIT * 2])[..5].to_vec())
                .chain(std::iter::repeat_n(vec![0u8; 16 * 1024], 8))
                .collect(),
        ),
    ];
    for (what, body) in frames {
        let a = post_check(addr, body).await;
        assert_eq!(a.http, 200, "{what}");
        assert_eq!(a.grpc_status.as_deref(), Some("0"), "{what}");
        let r = a
            .response
            .unwrap_or_else(|| panic!("{what}: no CheckResponse"));
        assert!(is_unreadable_denial(&r), "{what}: {r:?}");
        expected += 1;
        assert_eq!(
            decisions(http_addr, "unreadable").await,
            expected,
            "{what}: counted"
        );
    }

    // 4b. A call whose stream breaks half-way (the caller cancelled): no one
    //     to answer, nothing decided, nothing counted; the server carries on.
    {
        let half = framed(&[0u8; 100])[..50].to_vec();
        let _ = call_check(addr, Scripted::body(vec![half], Then::Fail)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(decisions(http_addr, "unreadable").await, expected);
    }

    // 4c. A call that sends half its message and then stalls (a slowloris)
    //     holds its stream only until the read timeout: then the failure
    //     denial, counted as unreadable.
    {
        let half = framed(&[0u8; 100])[..50].to_vec();
        let started = std::time::Instant::now();
        let stalled = call_check(addr, Scripted::body(vec![half], Then::Stall));
        let resp = tokio::time::timeout(Duration::from_secs(5), stalled)
            .await
            .expect("answered once the read timeout passed, not left hanging")
            .expect("an HTTP/2 answer");
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        expected += 1;
        assert_eq!(decisions(http_addr, "unreadable").await, expected);
    }

    // 5. A request just under the limit is read and decided.
    let fits = with_http(&[
        field(2, b"GET"),
        header_entry(b"x-big", &vec![b'a'; LIMIT - 100]),
    ]);
    assert!(fits.len() <= LIMIT);
    let r = check_raw(addr, fits).await;
    assert_eq!(denial_status(&r), None, "{r:?}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .unwrap()
        .expect("clean exit");

    // Each unreadable call is in the decision log as a denial naming the
    // problem, never the request's bytes.
    celgate::telemetry::decision_log::drain(Duration::from_secs(5));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let logged = lines
        .iter()
        .filter(|l| {
            l["errorKind"] == "server"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("server: request unreadable: "))
        })
        .inspect(|l| {
            assert_eq!(l["decision"], "deny");
            assert_eq!(l["status"], FAILURE_STATUS);
        })
        .count() as u64;
    assert_eq!(logged, expected - unreadable, "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}
