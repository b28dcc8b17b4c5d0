//! Fuzz targets on the stable toolchain, driven by proptest: what a client,
//! a policy author or an MCP client can hand celgate must never crash it,
//! hang it or make it allow by accident.
//!
//! * `check_bytes_never_crash_nor_allow_unread`: serialized CheckRequests
//!   (random bytes, and valid encodings built from a strategy over methods,
//!   paths, headers with non-UTF-8 bytes, `header_map` with `raw_value`,
//!   bodies with JSON-RPC messages, then mutated at the byte level) →
//!   decode → decision by every shipped policy set (`policies/`,
//!   `examples/*/policies`, `examples/*/*/policies`). A message that cannot be read is never allowed;
//!   no evaluation panics (the server catches a panic and denies, so a
//!   caught panic is reported here as a crash).
//! * `policy_documents_load_or_refuse`: random and mutated policy documents
//!   (YAML and JSON structure, CEL expressions from a small grammar) →
//!   `PolicySet` loading and `celgate validate` answer Ok or an error; a set
//!   that loads is evaluated once on a request. Expressions are nested at
//!   most about 30 levels deep: much deeper nesting overflows the stack of
//!   the CEL parser today, which is a separate issue (depth limits).
//! * `jsonrpc_bodies_parse_or_refuse`: random and mutated JSON-RPC bodies →
//!   `mcp.Parse` (`celgate::cel::eval::lib::mcp::parse_body`) answers Ok or an error,
//!   and a body over the limit is always an error.
//!
//! Each target runs a few hundred cases in `cargo test`. `scripts/fuzz.sh
//! SECONDS` runs them for a set time: `FUZZ_SECONDS` makes each target run
//! rounds of `FUZZ_CASES` cases with seeds `FUZZ_SEED`, `FUZZ_SEED + 1`, …
//! until the time is up, and print how many cases ran. A failing case is
//! shrunk, printed with its seed, and saved in `tests/fuzz.proptest-regressions`,
//! which is replayed first on every later run.

use celgate::engine::{self, Decision, EngineConfig};
use celgate::policy::{load::parse_documents, PolicySet};
use celgate::server::grpc::AuthzService;
use celgate::server::State;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ------------------------------------------------------------ the one step

/// What one serialized CheckRequest was answered with, and whether the
/// message could be read at all.
struct Answer {
    decision: Decision,
    read: bool,
}

/// Bytes → decision: what the gRPC server does with a message body. Today
/// prost's decoder, and a message it cannot read is answered with the
/// failure denial. This is the one function to point at another decoder.
fn decide_bytes(service: &AuthzService, config: &EngineConfig, bytes: &[u8]) -> Answer {
    // The server's own lenient decoder: non-UTF-8 header values and bodies
    // are read as bytes; what it cannot read gets the failure denial.
    match celgate::server::decode::decode_check_request(bytes) {
        Ok(request) => Answer {
            decision: service.decide(&request),
            read: true,
        },
        Err(_) => Answer {
            decision: engine::failure_decision(
                config,
                engine::FailureReason::Unreadable,
                "undecodable CheckRequest".into(),
            ),
            read: false,
        },
    }
}

/// The error `AuthzService::decide` gives a request whose evaluation
/// panicked (it catches the panic and denies).
const CAUGHT_PANIC: &str = "internal error during evaluation";

/// Whether `d` is the denial of a caught panic.
fn panicked(d: &Decision) -> bool {
    d.error
        .as_ref()
        .is_some_and(|e| e.kind == engine::ErrorKind::Server && e.detailed() == CAUGHT_PANIC)
}

/// Any single case taking this long counts as a hang.
const HANG: Duration = Duration::from_secs(20);

// ------------------------------------------------------------ running

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `test` on `strategy`: `default_cases` cases once, or with
/// `FUZZ_SECONDS` set, rounds of `FUZZ_CASES` cases with successive seeds
/// until the time is up. Prints the number of cases run; panics with the
/// seed and the shrunk input on a failure.
fn fuzz<S, F>(target: &str, default_cases: u32, strategy: S, test: F)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
    F: Fn(S::Value) -> Result<(), TestCaseError>,
{
    let seconds = env_u64("FUZZ_SECONDS");
    let cases = env_u64("FUZZ_CASES").map_or(default_cases, |n| n.max(1) as u32);
    let base_seed = env_u64("FUZZ_SEED").unwrap_or(0x63_656c_6761_7465);
    let started = Instant::now();
    let mut total: u64 = 0;
    let mut round: u64 = 0;
    loop {
        let seed = base_seed.wrapping_add(round);
        let config = Config {
            cases,
            rng_seed: RngSeed::Fixed(seed),
            source_file: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz.rs")),
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
                "proptest-regressions",
            ))),
            max_shrink_time: 60_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let counted = std::cell::Cell::new(0u64);
        let result = runner.run(&strategy, |v| {
            counted.set(counted.get() + 1);
            let at = Instant::now();
            let r = test(v);
            if at.elapsed() > HANG {
                return Err(TestCaseError::fail(format!(
                    "one case took {:?} (a hang)",
                    at.elapsed()
                )));
            }
            r
        });
        total += counted.get();
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => panic!(
                "fuzz target {target} failed (FUZZ_SEED={seed}, round {round}): {why}\n\
                 shrunk input: {input:#?}"
            ),
            Err(TestError::Abort(why)) => {
                panic!("fuzz target {target} aborted (FUZZ_SEED={seed}): {why}")
            }
        }
        round += 1;
        match seconds {
            Some(s) if started.elapsed() < Duration::from_secs(s) => continue,
            _ => break,
        }
    }
    // scripts/fuzz.sh reads this line.
    eprintln!(
        "fuzz-result target={target} cases={total} rounds={round} seed={base_seed} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------ byte mutations

/// One change to a byte string; positions are relative to its length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    Duplicate(Index, usize),
    Token(Index, &'static [u8]),
}

fn mutations(tokens: &'static [&'static str], max: usize) -> BoxedStrategy<Vec<Mutation>> {
    byte_mutations(tokens.iter().map(|t| t.as_bytes()).collect(), max)
}

fn byte_mutations(tokens: Vec<&'static [u8]>, max: usize) -> BoxedStrategy<Vec<Mutation>> {
    let one = prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<Index>(), prop::sample::select(tokens)).prop_map(|(i, t)| Mutation::Token(i, t)),
    ];
    prop::collection::vec(one, 0..max).boxed()
}

fn mutate(mut bytes: Vec<u8>, changes: &[Mutation]) -> Vec<u8> {
    for m in changes {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
        match m {
            Mutation::Flip(i, bit) if !bytes.is_empty() => {
                let p = i.index(bytes.len());
                bytes[p] ^= 1 << bit;
            }
            Mutation::Set(i, b) if !bytes.is_empty() => {
                let p = i.index(bytes.len());
                bytes[p] = *b;
            }
            Mutation::Insert(i, b) => {
                let p = at(i, bytes.len());
                bytes.splice(p..p, b.iter().copied());
            }
            Mutation::Delete(i, n) if !bytes.is_empty() => {
                let p = i.index(bytes.len());
                let end = (p + n).min(bytes.len());
                bytes.drain(p..end);
            }
            Mutation::Truncate(i) => {
                let p = at(i, bytes.len());
                bytes.truncate(p);
            }
            Mutation::Duplicate(i, n) if !bytes.is_empty() => {
                let p = i.index(bytes.len());
                let end = (p + n).min(bytes.len());
                let copy = bytes[p..end].to_vec();
                bytes.splice(end..end, copy);
            }
            Mutation::Token(i, t) => {
                let p = at(i, bytes.len());
                bytes.splice(p..p, t.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}

// ------------------------------------------------------------ JSON-RPC bodies

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udc00",
    "\\ud83d\\udc31",
    "1e999999",
    "-0",
    "0.0000001e-400",
    "18446744073709551616",
    "-9223372036854775809",
    "null",
    "true",
    "\"jsonrpc\":\"2.0\",",
    "\"method\":\"tools/call\",",
    "\"id\":",
    "\"params\":{",
    "\"name\":",
    "\"arguments\":",
    "\"uri\":",
    "\u{ff}",
    "\u{feff}",
    "  \n\t",
];

const METHODS: &[&str] = &[
    "tools/call",
    "tools/list",
    "prompts/get",
    "prompts/list",
    "resources/read",
    "resources/list",
    "resources/templates/list",
    "initialize",
    "notifications/initialized",
    "logging/setLevel",
    "ping",
    "",
    "tools/call/",
    "TOOLS/CALL",
];

fn short_text() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(
            &[
                "",
                "a",
                "repo",
                "delete_repo",
                "../etc/passwd",
                "é",
                "\u{0}"
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-z_/.:]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
    .boxed()
}

/// Any JSON value, nested at most `depth` levels.
fn json_value(depth: u32) -> BoxedStrategy<Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)),
        short_text().prop_map(Json::String),
    ];
    leaf.prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(short_text(), inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A JSON-RPC message, mostly well formed, with the fields MCP
/// authorization reads sometimes present, absent or of the wrong type.
fn jsonrpc_message() -> BoxedStrategy<Json> {
    let version = prop_oneof![
        12 => Just(Some(json!("2.0"))),
        1 => Just(None),
        1 => prop::sample::select(&["1.0", "2", ""][..]).prop_map(|v| Some(json!(v))),
        1 => json_value(1).prop_map(Some),
    ];
    let id = prop_oneof![
        8 => any::<i64>().prop_map(|n| Some(json!(n))),
        4 => short_text().prop_map(|s| Some(json!(s))),
        1 => Just(None),
        1 => json_value(1).prop_map(Some),
    ];
    let method = prop_oneof![
        16 => prop::sample::select(METHODS).prop_map(|m| Some(json!(m))),
        1 => Just(None),
        1 => json_value(1).prop_map(Some),
    ];
    let params = prop_oneof![
        1 => Just(None),
        8 => (
            prop::option::of(prop_oneof![6 => short_text().prop_map(Json::String), 1 => json_value(1)]),
            prop::option::of(prop_oneof![
                4 => prop::collection::btree_map(short_text(), json_value(2), 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
                1 => json_value(3),
            ]),
            prop::option::of(prop_oneof![6 => short_text().prop_map(Json::String), 1 => json_value(1)]),
            prop::option::of(short_text()),
            prop::option::of(json_value(2)),
        )
            .prop_map(|(name, arguments, uri, cursor, extra)| {
                let mut p = serde_json::Map::new();
                if let Some(v) = name {
                    p.insert("name".into(), v);
                }
                if let Some(v) = arguments {
                    p.insert("arguments".into(), v);
                }
                if let Some(v) = uri {
                    p.insert("uri".into(), v);
                }
                if let Some(v) = cursor {
                    p.insert("cursor".into(), json!(v));
                }
                if let Some(v) = extra {
                    p.insert("_meta".into(), v);
                }
                Some(Json::Object(p))
            }),
        1 => json_value(2).prop_map(Some),
    ];
    let response = prop::option::weighted(
        0.1,
        prop_oneof![
            json_value(2).prop_map(|v| ("result", v)),
            json_value(2).prop_map(|v| ("error", v)),
        ],
    );
    (version, id, method, params, response)
        .prop_map(|(version, id, method, params, response)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("jsonrpc", version),
                ("id", id),
                ("method", method),
                ("params", params),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            if let Some((k, v)) = response {
                m.insert(k.into(), v);
            }
            Json::Object(m)
        })
        .boxed()
}

/// A body as an MCP client (or an attacker) might send it.
fn jsonrpc_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => jsonrpc_message().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        4 => (jsonrpc_message(), mutations(JSON_TOKENS, 6))
            .prop_map(|(v, m)| mutate(serde_json::to_vec(&v).unwrap(), &m)),
        1 => prop::collection::vec(jsonrpc_message(), 0..3)
            .prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => json_value(4).prop_map(|v| serde_json::to_vec(&v).unwrap()),
        // A duplicate key, which parsers disagree on.
        1 => (prop::sample::select(&["method", "id", "jsonrpc", "params"][..]), jsonrpc_message())
            .prop_map(|(k, v)| {
                let text = serde_json::to_string(&v).unwrap();
                format!("{{\"{k}\":\"x\",{}", text.trim_start_matches('{')).into_bytes()
            }),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
    .boxed()
}

// ------------------------------------------------------------ CheckRequests

/// The wire shape of a CheckRequest with every string field as bytes, so
/// that encodings with non-UTF-8 values can be built. Field numbers are
/// those of envoy/service/auth/v3 and envoy/config/core/v3.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Check {
        #[prost(message, optional, tag = "1")]
        pub attributes: Option<Attributes>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Attributes {
        #[prost(message, optional, tag = "1")]
        pub source: Option<Peer>,
        #[prost(message, optional, tag = "4")]
        pub request: Option<Request>,
        #[prost(message, repeated, tag = "10")]
        pub context_extensions: Vec<Entry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Peer {
        #[prost(bytes = "vec", tag = "2")]
        pub service: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub principal: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        #[prost(message, optional, tag = "2")]
        pub http: Option<Http>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Http {
        #[prost(bytes = "vec", tag = "1")]
        pub id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub method: Vec<u8>,
        #[prost(message, repeated, tag = "3")]
        pub headers: Vec<Entry>,
        #[prost(bytes = "vec", tag = "4")]
        pub path: Vec<u8>,
        #[prost(bytes = "vec", tag = "5")]
        pub host: Vec<u8>,
        #[prost(bytes = "vec", tag = "6")]
        pub scheme: Vec<u8>,
        #[prost(bytes = "vec", tag = "7")]
        pub query: Vec<u8>,
        #[prost(int64, tag = "9")]
        pub size: i64,
        #[prost(bytes = "vec", tag = "10")]
        pub protocol: Vec<u8>,
        #[prost(bytes = "vec", tag = "11")]
        pub body: Vec<u8>,
        #[prost(bytes = "vec", tag = "12")]
        pub raw_body: Vec<u8>,
        #[prost(message, optional, tag = "13")]
        pub header_map: Option<HeaderMap>,
    }
    /// A `map<string, string>` entry.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderMap {
        #[prost(message, repeated, tag = "1")]
        pub headers: Vec<HeaderValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub raw_value: Vec<u8>,
    }
}

const HEADER_NAMES: &[&str] = &[
    "authorization",
    "x-api-key",
    "x-user",
    "x-token-audience",
    "x-user-scopes",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "x-envoy-auth-partial-body",
    "traceparent",
    "host",
    ":path",
    ":method",
    "cookie",
    "Authorization",
    "",
];

/// Protobuf tags and varints that make a mutation change the structure.
const PROTO_TOKENS: &[&[u8]] = &[
    b"\x0a",
    b"\x12",
    b"\x1a",
    b"\x22",
    b"\x6a",
    b"\x52",
    b"\xff\xff\xff\xff\x0f",
    b"\x80",
    b"\x00",
    b"\x0a\x00",
    b"\x0a\x7f",
];

/// Valid bearer tokens for the shipped identity and demo policies, plus
/// near misses, minted once.
fn tokens() -> &'static [String] {
    static TOKENS: OnceLock<Vec<String>> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mint = |spec: &str| {
            let spec: celgate::suite_token::TokenSpec = serde_yaml_ng::from_str(spec).unwrap();
            celgate::suite_token::mint(&spec, root, now).unwrap()
        };
        let identity = mint(
            "{ key: examples/identity/keys/issuer.pem, kid: issuer-1, claims: { iss: 'https://issuer.example.com/', aud: orders-api, sub: alice, roles: [reader, admin] } }",
        );
        let demo = mint(
            "{ key: examples/demo/keys/demo-issuer.pem, alg: ES256, claims: { iss: 'https://issuer.demo.celgate.dev/', aud: celgate-demo, sub: alice, roles: [reader, writer, admin] } }",
        );
        let mcp = mint(
            "{ key: examples/mcp-gateway/oauth/keys/auth-server.pem, alg: ES256, kid: auth-1, claims: { iss: 'https://auth.example.test', aud: 'https://mcp.example.test/mcp', sub: ann, scope: 'repo:read repo:admin' } }",
        );
        let forged = mint(
            "{ key: tests/keys/rsa.pem, kid: issuer-1, claims: { iss: 'https://issuer.example.com/', aud: orders-api, sub: mallory, roles: [admin] } }",
        );
        let mut truncated = identity.clone();
        truncated.truncate(identity.len() - 3);
        vec![
            format!("Bearer {identity}"),
            format!("Bearer {demo}"),
            format!("Bearer {mcp}"),
            format!("Bearer {forged}"),
            format!("bearer {truncated}"),
            "Bearer".into(),
            "Bearer a.b.c".into(),
            "Basic YWxpY2U6c2VjcmV0".into(),
        ]
    })
}

fn header_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => prop::sample::select(
            &[
                "demo-key-alice", "demo-key-bob", "alice", "https://mcp.example.com/mcp",
                "mcp:read mcp:write", "https://mcp.example.test/mcp", "repo:read repo:admin",
                "application/json", "true", "",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => (0..tokens().len()).prop_map(|i| tokens()[i].as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
        2 => "[ -~]{0,40}".prop_map(String::into_bytes),
    ]
    .boxed()
}

fn header_name() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        20 => prop::sample::select(HEADER_NAMES).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
    .boxed()
}

fn utf8_or_bytes(choices: &'static [&'static str]) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        24 => prop::sample::select(choices).prop_map(|s| s.as_bytes().to_vec()),
        1 => "[ -~]{0,24}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..24),
    ]
    .boxed()
}

fn http_request() -> BoxedStrategy<wire::Http> {
    let method = utf8_or_bytes(&["GET", "POST", "DELETE", "HEAD", "PUT", "OPTIONS", "get", ""]);
    let path = utf8_or_bytes(&[
        "/",
        "/public/index.html",
        "/api/orders",
        "/api/orders/1",
        "/api/",
        "/mcp",
        "/mcp?session=1",
        "/x",
        "/admin",
        "/api/../admin",
        "",
        "*",
    ]);
    let headers = prop::collection::vec(
        (header_name(), header_value()).prop_map(|(key, value)| wire::Entry { key, value }),
        0..6,
    );
    let header_map = prop::option::of(prop::collection::vec(
        (header_name(), header_value(), any::<bool>(), any::<bool>()).prop_map(
            |(key, v, raw, both)| wire::HeaderValue {
                key,
                value: if !raw || both { v.clone() } else { Vec::new() },
                raw_value: if raw { v } else { Vec::new() },
            },
        ),
        0..6,
    ));
    let body = prop_oneof![
        3 => Just(Vec::new()),
        4 => jsonrpc_body().prop_map(|b| String::from_utf8_lossy(&b).into_owned().into_bytes()),
        1 => jsonrpc_body(),
        1 => prop::collection::vec(any::<u8>(), 0..128),
    ];
    let raw_body = prop_oneof![4 => Just(Vec::new()), 1 => jsonrpc_body()];
    (
        method,
        path,
        headers,
        header_map,
        body,
        raw_body,
        utf8_or_bytes(&["example.com", "mcp.example.com", ""]),
        any::<i64>(),
    )
        .prop_map(
            |(method, path, headers, header_map, body, raw_body, host, size)| wire::Http {
                id: b"1".to_vec(),
                method,
                headers,
                path,
                host,
                scheme: b"https".to_vec(),
                query: Vec::new(),
                size,
                protocol: b"HTTP/1.1".to_vec(),
                body,
                raw_body,
                header_map: header_map.map(|headers| wire::HeaderMap { headers }),
            },
        )
        .boxed()
}

fn check_request() -> BoxedStrategy<wire::Check> {
    (
        http_request(),
        prop::option::of(utf8_or_bytes(&["spiffe://cluster.local/ns/default/sa/web"])),
        prop::collection::vec(
            (header_name(), header_value()).prop_map(|(key, value)| wire::Entry { key, value }),
            0..2,
        ),
    )
        .prop_map(|(http, principal, context_extensions)| wire::Check {
            attributes: Some(wire::Attributes {
                source: principal.map(|principal| wire::Peer {
                    service: Vec::new(),
                    principal,
                }),
                request: Some(wire::Request { http: Some(http) }),
                context_extensions,
            }),
        })
        .boxed()
}

/// Serialized CheckRequests: valid encodings, mutated ones, and noise.
fn check_bytes() -> BoxedStrategy<Vec<u8>> {
    use prost::Message as _;
    prop_oneof![
        4 => check_request().prop_map(|c| c.encode_to_vec()),
        4 => (check_request(), byte_mutations(PROTO_TOKENS.to_vec(), 6))
            .prop_map(|(c, m)| mutate(c.encode_to_vec(), &m)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
    .boxed()
}

/// One server state per shipped policy set, with the issuer's JWKS
/// preloaded so that nothing is fetched.
fn shipped() -> &'static [(String, AuthzService)] {
    static SETS: OnceLock<Vec<(String, AuthzService)>> = OnceLock::new();
    SETS.get_or_init(|| {
        // Only the shipped issuers' URLs, whose key sets are preloaded: a
        // generated policy cannot make the fuzzer reach the network.
        const JWKS: [(&str, &str); 2] = [
            (
                "https://issuer.example.com/.well-known/jwks.json",
                "examples/identity/keys/jwks.json",
            ),
            (
                "https://auth.example.test/.well-known/jwks.json",
                "examples/mcp-gateway/oauth/keys/jwks.json",
            ),
        ];
        celgate::identity::configure(celgate::identity::JwtConfig {
            allowed_jwks_urls: JWKS.iter().map(|(url, _)| (*url).into()).collect(),
            ..Default::default()
        });
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (url, file) in JWKS {
            let jwks = std::fs::read(root.join(file)).unwrap();
            celgate::identity::jwks::preload(url, &jwks).unwrap();
        }
        let mut dirs = vec![root.join("policies")];
        // examples/*/policies and examples/*/*/policies (a variant of an example).
        let subdirs = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect()
        };
        let mut examples: Vec<PathBuf> = subdirs(&root.join("examples"))
            .into_iter()
            .flat_map(|d| {
                let mut v = subdirs(&d);
                v.push(d);
                v
            })
            .map(|d| d.join("policies"))
            .filter(|p| p.is_dir())
            .collect();
        examples.sort();
        dirs.extend(examples);
        assert!(
            dirs.iter().any(|d| d.ends_with("mcp-gateway/oauth/policies")),
            "expected policies/, examples/*/policies and examples/mcp-gateway/oauth/policies: {dirs:?}"
        );
        dirs.into_iter()
            .map(|d| {
                let set = PolicySet::load(std::slice::from_ref(&d))
                    .unwrap_or_else(|e| panic!("{}: {e}", d.display()));
                assert!(!set.policies.is_empty(), "{}", d.display());
                let state = State::new(set, EngineConfig::default());
                (d.display().to_string(), AuthzService::new(state))
            })
            .collect()
    })
}

#[test]
fn check_bytes_never_crash_nor_allow_unread() {
    let sets = shipped();
    let config = EngineConfig::default();
    let (read, unread, allowed) = (Counter::default(), Counter::default(), Counter::default());
    fuzz("check-bytes", 300, check_bytes(), |bytes| {
        for (name, service) in sets {
            let answer = decide_bytes(service, &config, &bytes);
            if answer.read {
                read.bump()
            } else {
                unread.bump()
            }
            if answer.decision.allowed() {
                allowed.bump();
            }
            if !answer.read {
                prop_assert!(
                    !answer.decision.allowed(),
                    "{name}: unreadable message allowed"
                );
            }
            prop_assert!(!panicked(&answer.decision), "{}: evaluation panicked", name);
        }
        Ok(())
    });
    eprintln!(
        "fuzz-stats target=check-bytes decisions_on_read={} on_unreadable={} allowed={}",
        read.get(),
        unread.get(),
        allowed.get()
    );
    // The generator reaches the policies, and they allow some of it.
    assert!(read.get() > 0 && unread.get() > 0 && allowed.get() > 0);
}

/// A count shared by a target's cases.
#[derive(Default)]
struct Counter(std::sync::atomic::AtomicU64);

impl Counter {
    fn bump(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// ------------------------------------------------------------ policy documents

const CEL_TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "[?",
    ".?",
    "?",
    ":",
    "&&",
    "||",
    "!",
    "-",
    "'",
    "\"",
    "\"\"\"",
    "b'",
    "r'",
    "\\x",
    "\\u",
    "\\U0010ffff",
    "1u",
    "1.0e308",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615u",
    "size(",
    ".map(x, ",
    "object.",
    "variables.",
    "envoy.",
    "mcp.Parse(",
    "has(",
    ".all(",
    "dyn(",
    "int(",
    "duration('",
    "timestamp('",
    ".",
    ",",
    " in ",
    "null",
    "\u{0}",
    "é",
    "\n",
];

const YAML_TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!!str ",
    "---\n",
    "...\n",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    ": ",
    "\n  - ",
    "\n- ",
    "\t",
    "#",
    "\\u",
    "\\ud83d",
    "~",
    "null",
    "0x1F",
    "1e999",
    "? ",
    "|\n",
    ">-\n",
    "%YAML 1.2\n",
    "\u{feff}",
    "\r\n",
    "\u{85}",
    "expression: ",
    "mode: Envoy",
];

const IDENTIFIERS: &[&str] = &[
    "object",
    "object.attributes",
    "object.attributes.request.http",
    "object.attributes.request.http.path",
    "object.attributes.request.http.method",
    "object.attributes.request.http.headers",
    "object.attributes.request.http.body",
    "object.attributes.request.http.raw_body",
    "object.attributes.source.principal",
    "variables.v0",
    "variables.v1",
    "variables.missing",
    "x",
    "unknown",
    "envoy",
    "mcp",
];

/// A CEL expression from a small grammar. Each level of recursion adds at
/// most three levels of syntactic nesting and there are at most 8 levels,
/// so nothing is nested deeper than about 30 (see the module documentation).
fn cel_expr() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}u")),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("null".to_owned()),
        short_text().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[a-z0-9 ]{0,8}".prop_map(|s| format!("b'{s}'")),
        prop::sample::select(IDENTIFIERS).prop_map(str::to_owned),
        prop::sample::select(&["envoy.Allowed().Response()", "envoy.Denied(403).Response()"][..])
            .prop_map(str::to_owned),
    ];
    leaf.prop_recursive(8, 64, 4, |e| {
        let op = prop::sample::select(
            &[
                "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "in",
            ][..],
        );
        let method = prop::sample::select(
            &[
                "startsWith",
                "endsWith",
                "contains",
                "matches",
                "split",
                "lowerAscii",
                "orValue",
                "size",
                "GetStringArgument",
                "WithHeader",
                "WithBody",
                "Response",
            ][..],
        );
        let macro_ = prop::sample::select(&["map", "filter", "all", "exists", "exists_one"][..]);
        let func = prop::sample::select(
            &[
                "size",
                "string",
                "int",
                "uint",
                "double",
                "bytes",
                "bool",
                "type",
                "dyn",
                "has",
                "duration",
                "timestamp",
                "mcp.Parse",
                "envoy.Denied",
                "jwt.Decode",
            ][..],
        );
        prop_oneof![
            (e.clone(), op, e.clone()).prop_map(|(a, o, b)| format!("({a} {o} {b})")),
            (prop::sample::select(&["!", "-"][..]), e.clone()).prop_map(|(o, a)| format!("{o}{a}")),
            (e.clone(), e.clone(), e.clone()).prop_map(|(c, a, b)| format!("({c} ? {a} : {b})")),
            (e.clone(), "[a-zA-Z_][a-zA-Z0-9_]{0,6}").prop_map(|(a, f)| format!("{a}.{f}")),
            (e.clone(), "[a-zA-Z_][a-zA-Z0-9_]{0,6}").prop_map(|(a, f)| format!("{a}.?{f}")),
            (e.clone(), e.clone()).prop_map(|(a, i)| format!("{a}[{i}]")),
            (e.clone(), e.clone()).prop_map(|(a, i)| format!("{a}[?{i}]")),
            (e.clone(), method, prop::collection::vec(e.clone(), 0..3))
                .prop_map(|(a, m, args)| format!("{a}.{m}({})", args.join(", "))),
            (func, prop::collection::vec(e.clone(), 0..3))
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
            (e.clone(), macro_, e.clone()).prop_map(|(a, m, b)| format!("{a}.{m}(x, {b})")),
            prop::collection::vec(e.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((e.clone(), e), 0..3).prop_map(|kv| format!(
                "{{{}}}",
                kv.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ]
    })
    .boxed()
}

fn cel_or_mutated() -> BoxedStrategy<String> {
    prop_oneof![
        3 => cel_expr(),
        2 => (cel_expr(), mutations(CEL_TOKENS, 4))
            .prop_map(|(e, m)| String::from_utf8_lossy(&mutate(e.into_bytes(), &m)).into_owned()),
    ]
    .boxed()
}

fn named(prefix: &'static str) -> BoxedStrategy<Vec<Json>> {
    prop::collection::vec(cel_or_mutated(), 0..3)
        .prop_map(move |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, e)| json!({ "name": format!("{prefix}{i}"), "expression": e }))
                .collect()
        })
        .boxed()
}

/// A ValidatingPolicy or PolicyException, well formed but for its
/// expressions, sometimes with a field of the wrong type or a typo.
fn policy_document() -> BoxedStrategy<Json> {
    let policy = (
        prop::sample::select(&["p-a", "p-b", "", "Upper_Case"][..]),
        prop::sample::select(
            &[
                "policies.kyverno.io/v1",
                "policies.kyverno.io/v1alpha1",
                "policies.kyverno.io/v9",
                "v1",
            ][..],
        ),
        prop::option::of(prop::sample::select(
            &["Envoy", "envoy", "Kubernetes", ""][..],
        )),
        prop::option::of(prop::sample::select(&["Fail", "Ignore", "fail"][..])),
        named("m"),
        named("v"),
        prop::collection::vec(
            (cel_or_mutated(), prop::option::of(short_text())).prop_map(|(e, msg)| match msg {
                Some(m) => json!({ "expression": e, "message": m }),
                None => json!({ "expression": e }),
            }),
            0..4,
        ),
        prop::option::of(("[a-zA-Z]{1,12}", json_value(2))),
    )
        .prop_map(
            |(name, api, mode, failure, matches, variables, validations, extra)| {
                let mut spec = json!({
                    "matchConditions": matches,
                    "variables": variables,
                    "validations": validations,
                });
                if let Some(m) = mode {
                    spec["evaluation"] = json!({ "mode": m });
                }
                if let Some(f) = failure {
                    spec["failurePolicy"] = json!(f);
                }
                if let Some((k, v)) = extra {
                    spec[k] = v;
                }
                json!({
                    "apiVersion": api,
                    "kind": "ValidatingPolicy",
                    "metadata": { "name": name },
                    "spec": spec,
                })
            },
        );
    let exception = (
        prop::sample::select(&["p-a", "p-b", "nope"][..]),
        named("e"),
        prop::option::of(prop::sample::select(&["Envoy", "envoy"][..])),
    )
        .prop_map(|(target, matches, mode)| {
            let mut spec = json!({
                "policyRefs": [{ "name": target, "kind": "ValidatingPolicy" }],
                "matchConditions": matches,
            });
            if let Some(m) = mode {
                spec["evaluationMode"] = json!(m);
            }
            json!({
                "apiVersion": "policies.kyverno.io/v1alpha1",
                "kind": "PolicyException",
                "metadata": { "name": "ex" },
                "spec": spec,
            })
        });
    prop_oneof![4 => policy, 1 => exception, 1 => json_value(4)].boxed()
}

/// A policy file's text: YAML or JSON from structured documents, mutated
/// or not, or a shipped policy file mutated. `true` when it is JSON.
fn policy_file() -> BoxedStrategy<(bool, Vec<u8>)> {
    static SHIPPED: OnceLock<Vec<String>> = OnceLock::new();
    let shipped = SHIPPED.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts = Vec::new();
        for dir in [
            "policies",
            "examples/demo/policies",
            "examples/mcp-gateway/policies",
            "examples/mcp-gateway/oauth/policies",
        ] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "yaml") {
                    texts.push(std::fs::read_to_string(p).unwrap());
                }
            }
        }
        texts.sort();
        texts
    });
    let yaml = prop::collection::vec(policy_document(), 1..3).prop_map(|docs| {
        docs.iter()
            .map(|d| serde_yaml_ng::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("---\n")
            .into_bytes()
    });
    prop_oneof![
        3 => yaml.clone().prop_map(|t| (false, t)),
        3 => (yaml, mutations(YAML_TOKENS, 6)).prop_map(|(t, m)| (false, mutate(t, &m))),
        1 => policy_document().prop_map(|d| (true, serde_json::to_vec_pretty(&d).unwrap())),
        1 => (policy_document(), mutations(JSON_TOKENS, 4))
            .prop_map(|(d, m)| (true, mutate(serde_json::to_vec_pretty(&d).unwrap(), &m))),
        2 => (prop::sample::select(shipped.clone()), mutations(YAML_TOKENS, 6))
            .prop_map(|(t, m)| (false, mutate(t.into_bytes(), &m))),
    ]
    .boxed()
}

#[test]
fn policy_documents_load_or_refuse() {
    let _ = shipped(); // the issuer's JWKS preloaded, every other URL refused
    let dir = tempfile::tempdir().unwrap();
    let request = {
        let mut r = CheckRequest::default();
        let http = celgate::request_json::http_mut(&mut r);
        http.method = "POST".into();
        http.path = "/api/orders".into();
        http.headers
            .insert("authorization".into(), tokens()[0].clone());
        http.body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"repo":"r"}}}"#.into();
        r
    };
    let config = EngineConfig::default();
    let (compiled, refused) = (Counter::default(), Counter::default());
    fuzz(
        "policy-documents",
        200,
        policy_file(),
        |(is_json, bytes)| {
            // Loading from text (the Kubernetes path compiles documents too).
            let text = String::from_utf8_lossy(&bytes);
            let path = Path::new("fuzz.yaml");
            if let Ok(docs) = parse_documents(path, &text) {
                if let Ok(set) = PolicySet::compile(docs) {
                    let service = AuthzService::new(State::new(set, config.clone()));
                    let d = service.decide(&request);
                    prop_assert!(!panicked(&d), "evaluation panicked");
                }
            }
            // `celgate validate` and `serve`'s loader, from a file.
            let file = dir.path().join(if is_json {
                "policy.json"
            } else {
                "policy.yaml"
            });
            std::fs::write(&file, &bytes).unwrap();
            let report = celgate::validate::validate(std::slice::from_ref(&file), true);
            let _ = celgate::validate::render_text(&report);
            let loaded = PolicySet::load(std::slice::from_ref(&file));
            if loaded.is_ok() {
                compiled.bump()
            } else {
                refused.bump()
            }
            prop_assert_eq!(
                report.ok(),
                loaded.is_ok(),
                "validate and load disagree on {}",
                text
            );
            std::fs::remove_file(&file).unwrap();
            Ok(())
        },
    );
    eprintln!(
        "fuzz-stats target=policy-documents loaded={} refused={}",
        compiled.get(),
        refused.get()
    );
    assert!(compiled.get() > 0 && refused.get() > 0);
}

// ------------------------------------------------------------ mcp.Parse

#[test]
fn jsonrpc_bodies_parse_or_refuse() {
    use celgate::cel::eval::lib::mcp::parse_body;
    use celgate::mcp;
    let bodies = prop_oneof![
        4 => jsonrpc_body().prop_map(|b| (b, None)),
        1 => (jsonrpc_body(), 0usize..256).prop_map(|(b, limit)| (b, Some(limit))),
    ];
    let (parsed, refused) = (Counter::default(), Counter::default());
    fuzz("jsonrpc-bodies", 400, bodies, |(body, limit)| {
        let limit = limit.unwrap_or(mcp::DEFAULT_MAX_BODY_BYTES);
        let result = mcp::with_max_body_bytes(limit, || parse_body(&body));
        if body.len() > limit {
            prop_assert!(result.is_err(), "a body over the limit parsed");
        }
        if result.is_ok() {
            parsed.bump()
        } else {
            refused.bump()
        }
        if let Ok(r) = result {
            // Everything a policy can read of it.
            let _ = (r.method(), r.kind(), r.tool_name());
            let j = r.to_json();
            prop_assert!(j.is_object());
        }
        Ok(())
    });
    eprintln!(
        "fuzz-stats target=jsonrpc-bodies parsed={} refused={}",
        parsed.get(),
        refused.get()
    );
    assert!(parsed.get() > 0 && refused.get() > 0);
}
