//! The soak behind `scripts/soak.sh`: a release `celgate serve` on loopback
//! under gRPC Check load while its policy set is swapped between two
//! versions 10 times a second and a local JWKS issuer rotates its signing
//! key; every answer must come whole from one version.
//!
//! ```text
//! cargo run --release --example soak -- --celgate target/release/celgate --duration-s 600
//! ```
//!
//! * Version A denies `/x` with 403, header `x-version: a`, body `a`;
//!   version B allows it, adding `x-version: b`. A token that does not
//!   verify is a 401 with `x-version: a|b` and body `a-token|b-token`. Each
//!   part of an answer (gRPC code, HTTP status, header, body) names one
//!   version: an answer with parts of both is *mixed* (A's status with B's
//!   header, or B's status with A's header, …), one with a part of neither
//!   (the failure denial, a 5xx) is *wrong*. The classifier checks itself on
//!   both mixes before the run.
//! * The versions are swapped by renaming a complete file into the watched
//!   directory (never a half-written file).
//! * The issuer serves its JWKS on loopback and rotates every
//!   `--rotate-s` seconds to a new `kid` (cycling through RSA, EC and Ed25519
//!   keys), publishing the new and the previous key; the load uses fresh
//!   tokens signed by the current key, so celgate must follow each rotation
//!   (unknown `kid` → refresh). With `--prepublish` the issuer publishes its
//!   next key a rotation ahead and the set lives `--rotate-s / 3` seconds, as
//!   a careful issuer does: celgate's background refresh then has the key
//!   before the first token needs it. Every 64th request carries a forged token
//!   (the current `kid`, another key) and must be a 401.
//! * The server's RSS (`VmRSS`) is sampled every 2 s; after a warm-up (a
//!   tenth of the run, at least 10 s) it may grow by at most `--rss-growth-mib`.
//!
//! Exit status: 0 when every answer was one whole version, no gRPC error,
//! no valid token refused, no forged token accepted and RSS stayed flat;
//! 1 otherwise; 2 on a set-up error.

use envoy_types::pb::envoy::service::auth::v3::{
    authorization_client::AuthorizationClient, check_response::HttpResponse, CheckRequest,
    CheckResponse,
};
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: soak --celgate PATH [--duration-s 600] [--swaps-per-s 10] \
[--rotate-s 15] [--prepublish] [--concurrency 8] [--rss-growth-mib 32]";

struct Args {
    celgate: PathBuf,
    duration: Duration,
    swaps_per_s: u32,
    rotate: Duration,
    prepublish: bool,
    concurrency: usize,
    rss_growth_kib: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        celgate: PathBuf::new(),
        duration: Duration::from_secs(600),
        swaps_per_s: 10,
        rotate: Duration::from_secs(15),
        prepublish: false,
        concurrency: 8,
        rss_growth_kib: 32 * 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{arg}: {v:?} is not a number"))
        };
        match arg.as_str() {
            "--celgate" => a.celgate = PathBuf::from(value()?),
            "--duration-s" => a.duration = Duration::from_secs(number(value()?)?),
            "--swaps-per-s" => a.swaps_per_s = number(value()?)?.clamp(1, 1000) as u32,
            "--rotate-s" => a.rotate = Duration::from_secs(number(value()?)?.max(1)),
            "--prepublish" => a.prepublish = true,
            "--concurrency" => a.concurrency = number(value()?)?.clamp(1, 256) as usize,
            "--rss-growth-mib" => a.rss_growth_kib = number(value()?)? * 1024,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.celgate.as_os_str().is_empty() {
        return Err(format!("--celgate is required\n{USAGE}"));
    }
    Ok(a)
}

// ------------------------------------------------------------ the versions

const ISSUER: &str = "https://soak.issuer.test/";
const AUDIENCE: &str = "soak";

/// Policy version `v` ("a" or "b"), verifying tokens against `jwks_url`.
fn policy(v: &str, jwks_url: &str) -> String {
    let decide = if v == "a" {
        r#"envoy.Denied(403).WithHeader("x-version", "a").WithBody("a").Response()"#.to_owned()
    } else {
        r#"envoy.Allowed().WithHeader("x-version", "b").Response()"#.to_owned()
    };
    format!(
        r#"# Soak version {v}.
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: soak
spec:
  evaluation: {{ mode: Envoy }}
  failurePolicy: Fail
  matchConditions:
  - name: x
    expression: object.attributes.request.http.path == "/x"
  variables:
  - name: bearer
    expression: object.attributes.request.http.headers[?"authorization"].orValue("").split(" ")
  - name: token
    expression: >
      size(variables.bearer) == 2 && variables.bearer[0] == "Bearer"
        ? jwt.Decode(variables.bearer[1], jwks.Fetch("{jwks_url}"))
        : null
  validations:
  - expression: >
      variables.token == null || !variables.token.Valid
        || variables.token.Claims.?iss.orValue("") != "{ISSUER}"
        || variables.token.Claims.?aud.orValue("") != "{AUDIENCE}"
        ? envoy.Denied(401).WithHeader("x-version", "{v}").WithBody("{v}-token").Response()
        : null
  - expression: >
      {decide}
"#
    )
}

/// Which version a part of an answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    A,
    B,
    Neither,
}

/// What an answer was, read part by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A whole answer of version A (403) or B (allowed).
    Version(Part),
    /// A whole 401 of one version: the token was refused.
    TokenRefused(Part),
    /// Parts of both versions.
    Mixed,
    /// A part of neither version.
    Wrong,
}

fn classify(r: &CheckResponse) -> Kind {
    let code = r.status.as_ref().map_or(-1, |s| s.code);
    let header = |hs: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        let values: Vec<&str> = hs
            .iter()
            .filter_map(|h| h.header.as_ref())
            .filter(|h| h.key.eq_ignore_ascii_case("x-version"))
            .map(|h| h.value.as_str())
            .collect();
        match values.as_slice() {
            ["a"] => Part::A,
            ["b"] => Part::B,
            _ => Part::Neither,
        }
    };
    let mut parts = Vec::new();
    let mut token = false;
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            // Allowed: B's gRPC code, B's header, no body.
            parts.push(if code == 0 { Part::B } else { Part::Neither });
            parts.push(header(&ok.headers));
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            parts.push(if code == 7 { Part::A } else { Part::Neither });
            let status = d.status.as_ref().map_or(0, |s| s.code);
            match (status, d.body.as_str()) {
                (403, "a") => parts.extend([Part::A, Part::A]),
                (403, "b") => parts.extend([Part::A, Part::B]),
                (401, "a-token") => {
                    token = true;
                    parts.push(Part::A);
                }
                (401, "b-token") => {
                    token = true;
                    parts.push(Part::B);
                }
                _ => parts.push(Part::Neither),
            }
            if token {
                // A denial is what both versions send here: the gRPC code
                // says nothing of the version.
                parts.remove(0);
            }
            parts.push(header(&d.headers));
        }
        Some(HttpResponse::ErrorResponse(_)) | None => parts.push(Part::Neither),
    }
    let a = parts.contains(&Part::A);
    let b = parts.contains(&Part::B);
    if a && b {
        Kind::Mixed
    } else if parts.contains(&Part::Neither) {
        Kind::Wrong
    } else if token {
        Kind::TokenRefused(if a { Part::A } else { Part::B })
    } else {
        Kind::Version(if a { Part::A } else { Part::B })
    }
}

/// The classifier must see both mixes, or a mixed answer could pass.
fn check_classifier() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::envoy::service::auth::v3::{DeniedHttpResponse, OkHttpResponse};
    use envoy_types::pb::google::rpc::Status;
    let h = |v: &str| {
        vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-version".into(),
                value: v.into(),
                ..Default::default()
            }),
            ..Default::default()
        }]
    };
    let allowed = |v: &str| CheckResponse {
        status: Some(Status {
            code: 0,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: h(v),
            ..Default::default()
        })),
        ..Default::default()
    };
    let denied = |status: i32, v: &str, body: &str| CheckResponse {
        status: Some(Status {
            code: 7,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: status }),
            headers: h(v),
            body: body.into(),
        })),
        ..Default::default()
    };
    assert_eq!(classify(&allowed("b")), Kind::Version(Part::B));
    assert_eq!(classify(&denied(403, "a", "a")), Kind::Version(Part::A));
    assert_eq!(
        classify(&denied(401, "b", "b-token")),
        Kind::TokenRefused(Part::B)
    );
    // A's status with B's header, and B's status with A's header.
    assert_eq!(classify(&denied(403, "b", "a")), Kind::Mixed);
    assert_eq!(classify(&allowed("a")), Kind::Mixed);
    assert_eq!(classify(&denied(403, "a", "b")), Kind::Mixed);
    assert_eq!(classify(&denied(401, "a", "b-token")), Kind::Mixed);
    // The failure denial, and an answer without the header.
    assert_eq!(classify(&denied(403, "", "")), Kind::Wrong);
    assert_eq!(classify(&allowed("")), Kind::Wrong);
}

// ------------------------------------------------------------ the issuer

struct SigningKey {
    alg: Algorithm,
    key: EncodingKey,
    public: serde_json::Value,
}

fn signing_keys(root: &Path) -> Result<Vec<SigningKey>, String> {
    let files = [
        ("tests/keys/ec256.pem", Algorithm::ES256),
        ("tests/keys/rsa.pem", Algorithm::RS256),
        ("tests/keys/ed25519.pem", Algorithm::EdDSA),
        ("tests/keys/rsa2.pem", Algorithm::PS256),
        ("tests/keys/ec384.pem", Algorithm::ES384),
    ];
    files
        .iter()
        .map(|(file, alg)| {
            let pem = std::fs::read(root.join(file)).map_err(|e| format!("{file}: {e}"))?;
            let key = match alg {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                _ => EncodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| format!("{file}: {e}"))?;
            let public = serde_json::to_value(
                Jwk::from_encoding_key(&key, *alg).map_err(|e| format!("{file}: {e}"))?,
            )
            .map_err(|e| e.to_string())?;
            Ok(SigningKey {
                alg: *alg,
                key,
                public,
            })
        })
        .collect()
}

/// The issuer's state: generation `n` signs with key `n % len` under the
/// `kid` `soak-n`, and publishes generations `n - 1` and `n` (and `n + 1`
/// when it pre-publishes its next key).
struct Issuer {
    keys: Vec<SigningKey>,
    prepublish: bool,
    generation: RwLock<u64>,
    forger: EncodingKey,
    fetches: AtomicU64,
}

impl Issuer {
    fn jwks(&self) -> String {
        let n = *self.generation.read().unwrap();
        let mut keys = Vec::new();
        for g in n.saturating_sub(1)..=n + u64::from(self.prepublish) {
            let k = &self.keys[g as usize % self.keys.len()];
            let mut jwk = k.public.clone();
            jwk["kid"] = json!(format!("soak-{g}"));
            keys.push(jwk);
        }
        json!({ "keys": keys }).to_string()
    }

    fn mint(&self, serial: u64, forged: bool) -> String {
        let n = *self.generation.read().unwrap();
        let k = &self.keys[n as usize % self.keys.len()];
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "soak",
            "iat": now, "exp": now + 600, "jti": format!("{n}-{serial}"),
        });
        let (alg, key) = if forged {
            (Algorithm::RS256, &self.forger)
        } else {
            (k.alg, &k.key)
        };
        let mut header = Header::new(alg);
        header.kid = Some(format!("soak-{n}"));
        jsonwebtoken::encode(&header, &claims, key).expect("signing")
    }
}

// ------------------------------------------------------------ the server

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
    Some((status, body))
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

// ------------------------------------------------------------ the run

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    version_a: AtomicU64,
    version_b: AtomicU64,
    mixed: AtomicU64,
    wrong: AtomicU64,
    grpc_errors: AtomicU64,
    valid_token_refused: AtomicU64,
    forged_refused: AtomicU64,
    forged_accepted: AtomicU64,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    check_classifier();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(args)).unwrap_or_else(|e| {
        eprintln!("soak: {e}");
        2
    });
    std::process::exit(code);
}

async fn run(args: Args) -> Result<i32, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let watched = dir.path().join("policies");
    let staging = dir.path().join("staging");
    std::fs::create_dir(&watched).map_err(|e| e.to_string())?;
    std::fs::create_dir(&staging).map_err(|e| e.to_string())?;

    // The issuer.
    let forger = EncodingKey::from_rsa_pem(
        &std::fs::read(root.join("examples/identity/keys/issuer.pem"))
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let issuer = Arc::new(Issuer {
        keys: signing_keys(&root)?,
        prepublish: args.prepublish,
        generation: RwLock::new(0),
        forger,
        fetches: AtomicU64::new(0),
    });
    // Pre-publishing, the set is short-lived so that celgate's background
    // refresh sees the next key well before it is used.
    let max_age = if args.prepublish {
        (args.rotate.as_secs() / 3).max(1)
    } else {
        300
    };
    let cache_control = format!("max-age={max_age}");
    let app = {
        let issuer = issuer.clone();
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                issuer.fetches.fetch_add(1, Ordering::Relaxed);
                let body = issuer.jwks();
                let cache_control = cache_control.clone();
                async move {
                    (
                        [
                            ("content-type", "application/json".to_owned()),
                            ("cache-control", cache_control),
                        ],
                        body,
                    )
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let issuer_addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let jwks_url = format!("http://{issuer_addr}/jwks.json");
    let versions = [policy("a", &jwks_url), policy("b", &jwks_url)];
    std::fs::write(watched.join("soak.yaml"), &versions[0]).map_err(|e| e.to_string())?;

    // The server.
    let (grpc, http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let log = std::fs::File::create(dir.path().join("celgate.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&args.celgate)
        .arg("serve")
        .arg("--policies")
        .arg(&watched)
        .args(["--grpc-addr", &grpc, "--http-addr", &http])
        .args(["--jwks-allowed-urls", &format!("http://{issuer_addr}/")])
        .args(["--jwks-min-refresh-s", "2", "--jwks-min-ttl-s", "1"])
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", args.celgate.display()))?;
    let server = Server(child);
    let pid = server.0.id();
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = http_get(&http, "/readyz").await {
            break;
        }
        if Instant::now() > ready_by {
            let log = std::fs::read_to_string(dir.path().join("celgate.log")).unwrap_or_default();
            return Err(format!("celgate did not become ready:\n{log}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "soak: celgate pid {pid} on {grpc}, issuer on {issuer_addr}, {} s, {} swaps/s, rotation every {} s ({}), {} workers",
        args.duration.as_secs(),
        args.swaps_per_s,
        args.rotate.as_secs(),
        if args.prepublish {
            "next key pre-published"
        } else {
            "new key used at once"
        },
        args.concurrency
    );

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let swaps = Arc::new(AtomicU64::new(0));
    let rotations = Arc::new(AtomicU64::new(0));

    // Tokens: a pool of fresh ones from the current key, renewed every second.
    let tokens: Arc<RwLock<Vec<String>>> = Arc::new(RwLock::new(Vec::new()));
    let renew = |issuer: &Issuer, tokens: &RwLock<Vec<String>>, serial: &mut u64| {
        let fresh: Vec<String> = (0..16)
            .map(|_| {
                *serial += 1;
                issuer.mint(*serial, false)
            })
            .collect();
        *tokens.write().unwrap() = fresh;
    };
    let mut serial = 0;
    renew(&issuer, &tokens, &mut serial);
    let forged = Arc::new(RwLock::new(issuer.mint(0, true)));
    let mut tasks = Vec::new();
    {
        let (issuer, tokens, forged, stop, rotations) = (
            issuer.clone(),
            tokens.clone(),
            forged.clone(),
            stop.clone(),
            rotations.clone(),
        );
        let rotate = args.rotate;
        tasks.push(tokio::spawn(async move {
            let mut last_rotation = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if last_rotation.elapsed() >= rotate {
                    // Publish first, then sign with the new key.
                    *issuer.generation.write().unwrap() += 1;
                    rotations.fetch_add(1, Ordering::Relaxed);
                    last_rotation = Instant::now();
                }
                renew(&issuer, &tokens, &mut serial);
                *forged.write().unwrap() = issuer.mint(serial, true);
            }
        }));
    }

    // The swapper: a complete file renamed over the served one.
    {
        let (stop, swaps, versions) = (stop.clone(), swaps.clone(), versions.clone());
        let (watched, staging) = (watched.clone(), staging.clone());
        let period = Duration::from_secs(1) / args.swaps_per_s;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let tmp = staging.join(format!("soak-{n}.yaml"));
                let ok = std::fs::write(&tmp, &versions[(n % 2) as usize]).is_ok()
                    && std::fs::rename(&tmp, watched.join("soak.yaml")).is_ok();
                if ok {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // RSS samples.
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    {
        let (stop, samples) = (stop.clone(), samples.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    samples
                        .lock()
                        .unwrap()
                        .push((started.elapsed().as_secs_f64(), kib));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }

    // The load.
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (stop, counts, tokens, forged) =
            (stop.clone(), counts.clone(), tokens.clone(), forged.clone());
        let mut client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut i: u64 = w as u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let is_forged = i.is_multiple_of(64);
                let token = if is_forged {
                    forged.read().unwrap().clone()
                } else {
                    let t = tokens.read().unwrap();
                    t[(i as usize) % t.len()].clone()
                };
                let mut req = CheckRequest::default();
                let h = celgate::request_json::http_mut(&mut req);
                h.method = "GET".into();
                h.path = "/x".into();
                h.host = "soak.test".into();
                h.headers
                    .insert("authorization".into(), format!("Bearer {token}"));
                let mut request = tonic::Request::new(req);
                request.set_timeout(Duration::from_secs(10));
                counts.requests.fetch_add(1, Ordering::Relaxed);
                let answer = match client.check(request).await {
                    Ok(r) => classify(r.get_ref()),
                    Err(status) => {
                        if counts.grpc_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("soak: gRPC error: {status}");
                        }
                        continue;
                    }
                };
                let c = &counts;
                match (answer, is_forged) {
                    (Kind::Mixed, _) => {
                        c.mixed.fetch_add(1, Ordering::Relaxed);
                    }
                    (Kind::Wrong, _) => {
                        c.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    (Kind::TokenRefused(_), true) => {
                        c.forged_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    (Kind::Version(_), true) => {
                        c.forged_accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    (Kind::TokenRefused(_), false) => {
                        c.valid_token_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    (Kind::Version(Part::A), false) => {
                        c.version_a.fetch_add(1, Ordering::Relaxed);
                    }
                    (Kind::Version(_), false) => {
                        c.version_b.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // Progress, then stop.
    let mut next_report = Duration::from_secs(30);
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed() >= next_report {
            next_report += Duration::from_secs(30);
            println!(
                "soak: {:>4.0} s  requests {}  a {}  b {}  mixed {}  wrong {}  grpc errors {}  swaps {}  rotations {}  rss {} KiB",
                started.elapsed().as_secs_f64(),
                counts.requests.load(Ordering::Relaxed),
                counts.version_a.load(Ordering::Relaxed),
                counts.version_b.load(Ordering::Relaxed),
                counts.mixed.load(Ordering::Relaxed),
                counts.wrong.load(Ordering::Relaxed),
                counts.grpc_errors.load(Ordering::Relaxed),
                swaps.load(Ordering::Relaxed),
                rotations.load(Ordering::Relaxed),
                rss_kib(pid).unwrap_or(0),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for w in workers {
        if tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .is_err()
        {
            return Err("a load worker did not stop within 30 s of the end".into());
        }
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let metrics = http_get(&http, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let reloads_applied = metric(&metrics, "celgate_policy_reloads_total{result=\"applied\"}");
    let reloads_unchanged = metric(
        &metrics,
        "celgate_policy_reloads_total{result=\"unchanged\"}",
    );
    let reloads_failed = metric(&metrics, "celgate_policy_reloads_total{result=\"error\"}");
    let alive = http_get(&http, "/readyz").await.map(|(s, _)| s);
    drop(server);

    // The figures.
    let samples = samples.lock().unwrap().clone();
    let warm_up = (elapsed.as_secs_f64() / 10.0).max(10.0);
    let start_rss = samples.first().map_or(0, |s| s.1);
    let peak_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let end_rss = samples.last().map_or(0, |s| s.1);
    let baseline = samples
        .iter()
        .find(|s| s.0 >= warm_up)
        .map_or(end_rss, |s| s.1);
    let peak_after = samples
        .iter()
        .filter(|s| s.0 >= warm_up)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let requests = c(&counts.requests);
    let secs = elapsed.as_secs_f64();
    println!("soak: done after {secs:.0} s");
    println!(
        "  requests {requests} ({:.0}/s): version A {}, version B {}, valid token refused {}, forged refused {}",
        requests as f64 / secs,
        c(&counts.version_a),
        c(&counts.version_b),
        c(&counts.valid_token_refused),
        c(&counts.forged_refused)
    );
    println!(
        "  mixed {}, wrong {}, forged accepted {}, gRPC errors {}",
        c(&counts.mixed),
        c(&counts.wrong),
        c(&counts.forged_accepted),
        c(&counts.grpc_errors)
    );
    println!(
        "  swaps {} ({:.1}/s); reloads applied {reloads_applied}, unchanged {reloads_unchanged}, refused {reloads_failed}",
        c(&swaps),
        c(&swaps) as f64 / secs
    );
    println!(
        "  key rotations {}, JWKS fetches {}",
        c(&rotations),
        c(&issuer.fetches)
    );
    println!(
        "  RSS KiB: start {start_rss}, after warm-up ({warm_up:.0} s) {baseline}, peak {peak_rss}, end {end_rss}"
    );
    let mut failures = Vec::new();
    for (what, n) in [
        ("mixed answers", c(&counts.mixed)),
        ("wrong answers", c(&counts.wrong)),
        ("gRPC errors", c(&counts.grpc_errors)),
        ("valid tokens refused", c(&counts.valid_token_refused)),
        ("forged tokens accepted", c(&counts.forged_accepted)),
    ] {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    if c(&counts.version_a) == 0 || c(&counts.version_b) == 0 {
        failures.push("one version never answered: the swaps were not applied".into());
    }
    if c(&counts.forged_refused) == 0 {
        failures.push("no forged token was tried".into());
    }
    if c(&rotations) > 0 && c(&issuer.fetches) < 2 {
        failures.push("celgate never fetched the rotated key set".into());
    }
    if peak_after > baseline + args.rss_growth_kib {
        failures.push(format!(
            "RSS grew from {baseline} KiB after warm-up to {peak_after} KiB (limit +{} KiB)",
            args.rss_growth_kib
        ));
    }
    if alive != Some(200) {
        failures.push(format!("/readyz answered {alive:?} at the end"));
    }
    if failures.is_empty() {
        println!("soak: PASS");
        Ok(0)
    } else {
        let log = std::fs::read_to_string(dir.path().join("celgate.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("soak: FAIL: {}", failures.join("; "));
        eprintln!("--- celgate log (last lines) ---");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
        Ok(1)
    }
}
