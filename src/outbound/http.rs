//! The requests of the CEL `http` library (`http.Get`, `http.Post`,
//! `http.Client(caBundle)`): external data for a decision, fetched on the
//! decision's own thread.
//!
//! * Only URLs that [`HttpConfig::allowed_urls`] admits are requested; the
//!   list is empty by default, so nothing is, until the operator opts in.
//!   Entries are those of `--jwks-allowed-urls` ([`crate::identity::url`]):
//!   a host (`https` only) or a URL prefix; plain `http` only through an
//!   `http://` prefix entry. A literal URL that the list refuses is refused
//!   when the policy loads ([`check_literal`]); a computed one when the call
//!   runs (an evaluation error, so the policy's `failurePolicy` decides).
//! * Each exchange is bounded by [`HttpConfig::connect_timeout`],
//!   [`HttpConfig::timeout`] and the decision's own deadline (whichever
//!   ends first), and reads at most [`HttpConfig::max_response_bytes`].
//! * Redirects are not followed unless [`HttpConfig::follow_redirects`];
//!   then at most [`MAX_REDIRECTS`], each to a URL the list admits, and the
//!   policy's headers go along only while the origin stays the same.
//! * A `GET` answer is cached for its `Cache-Control: max-age`, bounded by
//!   [`HttpConfig::cache_min_ttl`] and [`HttpConfig::cache_max_ttl`];
//!   without `max-age` (or with `no-store`, `no-cache`, `max-age=0`) it is
//!   not. The cache is keyed by the URL, the headers and the client's CA
//!   bundle, and holds at most [`HttpConfig::cache_max_bytes`] of answers
//!   (the least recently used go first). `POST` is never cached.
//! * Concurrent `GET`s of one key make one request: the others wait for it
//!   and share its answer, or its failure.
//! * A status outside 2xx, a body that is not JSON, a body over the limit,
//!   a refused URL, a timeout: each is an error ([`HttpError`]).
//!
//! Logs, spans and metrics never name a URL, a header or a body; errors
//! (returned in the decision, never logged) name the URL's origin only.

use crate::cel::eval::value::{Key, OwnedMap};
use crate::cel::eval::{Str, Value};
use crate::identity::tls::{bundle_digest, bundle_roots, CaBundle};
use crate::identity::url::{judge, AllowEntry, JwksUrl, Verdict};
use crate::outbound::lock;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use ureq::tls::RootCerts;

/// Most redirects followed for one call (with `follow_redirects`).
pub const MAX_REDIRECTS: usize = 5;

/// Memory counted for a cached answer besides its body.
const ENTRY_OVERHEAD: u64 = 256;

/// CA bundles of `http.Client(caBundle)` kept parsed, with their clients.
const MAX_CLIENTS: usize = 32;

/// Settings of the `http` library; the defaults refuse every URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// URLs the library may request (see the module documentation). Empty
    /// (the default): none.
    pub allowed_urls: Vec<String>,
    /// Refuse, when a policy loads, a literal URL that the list refuses.
    /// The server sets it; `celgate check` and `celgate test`, which have
    /// no allow-list of their own, do not.
    pub check_literals: bool,
    /// Limit on DNS, TCP connect and TLS handshake. Default 500 ms.
    pub connect_timeout: Duration,
    /// Limit on a whole exchange, body included (redirects each count
    /// anew, all within the decision's deadline). Default 1 s.
    pub timeout: Duration,
    /// Largest response body read. Default 1 MiB.
    pub max_response_bytes: u64,
    /// Follow redirects (to allowed URLs). Default false.
    pub follow_redirects: bool,
    /// Lower bound on a cached answer's `max-age`. Default 0.
    pub cache_min_ttl: Duration,
    /// Upper bound on a cached answer's `max-age`. Default 5 min.
    pub cache_max_ttl: Duration,
    /// Memory for cached answers (bodies plus a small overhead each);
    /// 0 disables the cache. Default 16 MiB.
    pub cache_max_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_urls: Vec::new(),
            check_literals: false,
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            max_response_bytes: 1 << 20,
            follow_redirects: false,
            cache_min_ttl: Duration::ZERO,
            cache_max_ttl: Duration::from_secs(300),
            cache_max_bytes: 16 << 20,
        }
    }
}

impl HttpConfig {
    /// Refuses settings that cannot work: an allow-list entry that does not
    /// parse, a lower TTL bound over the upper one.
    pub fn check(&self) -> Result<(), HttpError> {
        for e in &self.allowed_urls {
            AllowEntry::parse(e).map_err(|p| HttpError::BadAllowEntry {
                entry: crate::identity::url::redact_raw(e),
                reason: p.0,
            })?;
        }
        if self.cache_min_ttl > self.cache_max_ttl {
            return Err(HttpError::Settings(
                "--http-cache-min-ttl-s must not exceed --http-cache-max-ttl-s",
            ));
        }
        Ok(())
    }
}

/// Why a call of the `http` library failed. Messages name a URL by its
/// origin only.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("the URL is not usable: {0}")]
    BadUrl(&'static str),
    #[error("{0} is not allowed (--http-allowed-urls)")]
    NotAllowed(String),
    #[error("{0} is plain http: only an http:// entry of --http-allowed-urls allows it")]
    PlainHttp(String),
    #[error("--http-allowed-urls entry {entry:?} is not usable: {reason}")]
    BadAllowEntry { entry: String, reason: &'static str },
    #[error("{0}")]
    Settings(&'static str),
    #[error("request header {0:?} is {1}")]
    BadHeader(String, &'static str),
    #[error("the CA bundle is not usable: {0}")]
    CaBundle(String),
    #[error("the decision's deadline has passed")]
    Deadline,
    #[error("{origin}: {reason}")]
    Failed { origin: String, reason: String },
}

/// `GET` or `POST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A client with its own roots: `http.Client(caBundle)`.
pub struct Client {
    digest: [u8; 32],
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// One call.
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    /// Sent as given, in this order.
    pub headers: Vec<(&'a str, &'a str)>,
    /// The JSON text of a `POST`'s body.
    pub body: Option<Vec<u8>>,
    /// `None`: the default client (web PKI roots).
    pub client: Option<&'a Client>,
    /// The decision's deadline: no exchange runs past it.
    pub deadline: Option<Instant>,
}

/// A JSON answer, as the library returns it: the body's object with
/// `statusCode` added, or `{"body": <value>, "statusCode": <int>}` for a
/// body that is not an object (`null` for an empty one).
#[derive(Debug)]
pub struct Response {
    pub value: Value<'static>,
    /// The body's length.
    pub bytes: usize,
}

struct Runtime {
    cfg: HttpConfig,
    allow: Vec<AllowEntry>,
    agent: ureq::Agent,
}

impl Runtime {
    fn new(cfg: HttpConfig) -> Self {
        let allow = cfg
            .allowed_urls
            .iter()
            // `HttpConfig::check` refuses a bad entry before start; should
            // one get here it admits nothing.
            .filter_map(|e| AllowEntry::parse(e).ok())
            .collect();
        Runtime {
            agent: crate::outbound::agent(cfg.connect_timeout, cfg.timeout, RootCerts::WebPki),
            allow,
            cfg,
        }
    }
}

static RUNTIME: LazyLock<ArcSwap<Runtime>> =
    LazyLock::new(|| ArcSwap::from_pointee(Runtime::new(HttpConfig::default())));

/// Replaces the settings. Cached answers and parsed CA bundles are dropped.
pub fn configure(cfg: HttpConfig) {
    RUNTIME.store(Arc::new(Runtime::new(cfg)));
    let mut reg = lock(&CACHE);
    reg.map.clear();
    reg.bytes = 0;
    drop(reg);
    lock(&CLIENTS).clear();
}

/// The settings in force.
pub fn config() -> HttpConfig {
    RUNTIME.load().cfg.clone()
}

/// The URL, parsed, if the allow-list admits it.
fn admit(rt: &Runtime, url: &str) -> Result<JwksUrl, HttpError> {
    let parsed = JwksUrl::parse(url).map_err(|p| HttpError::BadUrl(p.0))?;
    if rt.allow.is_empty() {
        return Err(HttpError::NotAllowed(parsed.origin()));
    }
    match judge(&rt.allow, false, &parsed) {
        Verdict::Allowed => Ok(parsed),
        Verdict::PlainHttp => Err(HttpError::PlainHttp(parsed.origin())),
        Verdict::NotListed => Err(HttpError::NotAllowed(parsed.origin())),
    }
}

/// For the policy loader: a literal URL of `http.Get` / `http.Post` that
/// the settings in force refuse (when they ask for it:
/// [`HttpConfig::check_literals`]).
pub fn check_literal(url: &str) -> Result<(), HttpError> {
    let rt = RUNTIME.load();
    if !rt.cfg.check_literals {
        return Ok(());
    }
    admit(&rt, url).map(|_| ())
}

/// The client of `http.Client(pem)`: the certificates of the PEM bundle
/// are the only roots it trusts (as Kyverno's). Parsed bundles are kept.
pub fn client(pem: &str) -> Result<Arc<Client>, HttpError> {
    let digest: [u8; 32] = Sha256::digest(pem.as_bytes()).into();
    if let Some(c) = lock(&CLIENTS).get(&digest) {
        return Ok(c.clone());
    }
    let bundle = CaBundle::from_pem(pem.as_bytes()).map_err(HttpError::CaBundle)?;
    debug_assert_eq!(bundle_digest(&bundle), digest);
    let cfg = &RUNTIME.load().cfg;
    let c = Arc::new(Client {
        digest,
        agent: crate::outbound::agent(cfg.connect_timeout, cfg.timeout, bundle_roots(&bundle)),
    });
    let mut clients = lock(&CLIENTS);
    if clients.len() >= MAX_CLIENTS {
        clients.clear();
    }
    clients.insert(digest, c.clone());
    Ok(c)
}

static CLIENTS: LazyLock<Mutex<HashMap<[u8; 32], Arc<Client>>>> = LazyLock::new(Default::default);

// ---------------------------------------------------------------- cache

struct Cached {
    response: Arc<Response>,
    expires: Instant,
}

/// A request's result and when it came.
type Outcome = (Instant, Result<Arc<Response>, HttpError>);

/// The cache state of one key.
struct Slot {
    fresh: Mutex<Option<Cached>>,
    /// Held for the request: single flight. Holds the last result and
    /// when it came, for those who waited for it.
    flight: Mutex<Option<Outcome>>,
    last_used: AtomicU64,
    /// Bytes counted for the cached answer (0 when none).
    size: AtomicU64,
}

#[derive(Default)]
struct Registry {
    map: HashMap<[u8; 32], Arc<Slot>>,
    bytes: u64,
}

static CACHE: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);
static TICK: AtomicU64 = AtomicU64::new(0);

/// The cache key of a GET: URL, headers, client.
fn key(url: &JwksUrl, headers: &[(&str, &str)], client: Option<&Client>) -> [u8; 32] {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, url.normalised().as_bytes());
    let mut sorted: Vec<(String, &str)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), *v))
        .collect();
    sorted.sort();
    for (k, v) in &sorted {
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    field(&mut h, client.map_or(&[][..], |c| &c.digest[..]));
    h.finalize().into()
}

fn slot(k: &[u8; 32]) -> Arc<Slot> {
    let mut reg = lock(&CACHE);
    let s = reg.map.entry(*k).or_insert_with(|| {
        Arc::new(Slot {
            fresh: Mutex::new(None),
            flight: Mutex::new(None),
            last_used: AtomicU64::new(0),
            size: AtomicU64::new(0),
        })
    });
    s.last_used
        .store(TICK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    s.clone()
}

fn fresh(slot: &Slot) -> Option<Arc<Response>> {
    let f = lock(&slot.fresh);
    f.as_ref()
        .filter(|c| Instant::now() < c.expires)
        .map(|c| c.response.clone())
}

/// Keeps `response` for `ttl` in `slot` (if still registered under `k`),
/// evicting the least recently used answers beyond the memory bound; or,
/// with nothing to keep, forgets the slot.
fn store(k: &[u8; 32], slot: &Arc<Slot>, kept: Option<(Arc<Response>, Duration)>, max: u64) {
    let mut reg = lock(&CACHE);
    let registered = reg.map.get(k).is_some_and(|s| Arc::ptr_eq(s, slot));
    if !registered {
        return;
    }
    let size = kept
        .as_ref()
        .map_or(0, |(r, _)| r.bytes as u64 + ENTRY_OVERHEAD);
    let old = slot.size.swap(0, Ordering::Relaxed);
    reg.bytes = reg.bytes.saturating_sub(old);
    let Some((response, ttl)) = kept.filter(|_| size <= max) else {
        *lock(&slot.fresh) = None;
        reg.map.remove(k);
        return;
    };
    while reg.bytes + size > max {
        let victim = reg
            .map
            .iter()
            .filter(|(vk, s)| *vk != k && s.size.load(Ordering::Relaxed) > 0)
            .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed))
            .map(|(vk, _)| *vk);
        let Some(v) = victim else { break };
        if let Some(s) = reg.map.remove(&v) {
            reg.bytes = reg.bytes.saturating_sub(s.size.swap(0, Ordering::Relaxed));
            *lock(&s.fresh) = None;
            bump(&COUNTERS.evictions);
        }
    }
    slot.size.store(size, Ordering::Relaxed);
    reg.bytes += size;
    *lock(&slot.fresh) = Some(Cached {
        response,
        expires: Instant::now() + ttl,
    });
}

/// How long an answer with this `Cache-Control` is kept (zero: not kept).
fn cache_ttl(cfg: &HttpConfig, cache_control: Option<&str>) -> Duration {
    use crate::outbound::{freshness, Freshness};
    match freshness(cache_control) {
        Freshness::MaxAge(d) if !d.is_zero() => d.max(cfg.cache_min_ttl).min(cfg.cache_max_ttl),
        _ => Duration::ZERO,
    }
}

// ---------------------------------------------------------------- calls

static PRELOADED: LazyLock<std::sync::RwLock<HashMap<String, Arc<Response>>>> =
    LazyLock::new(Default::default);

/// Installs `body` (JSON) as the answer of `url`, with status 200, for
/// every call of that URL (any method, headers and client), never
/// requested and never expiring: for test suites, whose policies name a
/// service that must not be asked. A preloaded URL needs no allow-list
/// entry.
pub fn preload(url: &str, body: &[u8]) -> Result<(), String> {
    let parsed = JwksUrl::parse(url).map_err(|p| p.to_string())?;
    let value = answer(body, 200)?;
    PRELOADED.write().unwrap_or_else(|p| p.into_inner()).insert(
        parsed.normalised(),
        Arc::new(Response {
            value,
            bytes: body.len(),
        }),
    );
    Ok(())
}

fn preloaded(url: &str) -> Option<Arc<Response>> {
    let reg = PRELOADED.read().unwrap_or_else(|p| p.into_inner());
    if reg.is_empty() {
        return None;
    }
    let url = JwksUrl::parse(url).ok()?.normalised();
    reg.get(&url).cloned()
}

/// The answer of a `GET` if the cache has a fresh one, without blocking;
/// `None` when only a request can answer (or the URL is refused: [`call`]
/// says why).
pub fn cached(call: &Call<'_>) -> Option<Arc<Response>> {
    if let Some(r) = preloaded(call.url) {
        return Some(r);
    }
    if call.method != Method::Get {
        return None;
    }
    let rt = RUNTIME.load();
    let url = admit(&rt, call.url).ok()?;
    let k = key(&url, &call.headers, call.client);
    let slot = lock(&CACHE).map.get(&k)?.clone();
    slot.last_used
        .store(TICK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    let r = fresh(&slot)?;
    bump(&COUNTERS.cache_hits);
    Some(r)
}

/// Makes `call` (a `GET` from the cache when it can), blocking this
/// thread for the request.
pub fn call(call: &Call<'_>) -> Result<Arc<Response>, HttpError> {
    if let Some(r) = preloaded(call.url) {
        return Ok(r);
    }
    let rt = RUNTIME.load_full();
    let url = admit(&rt, call.url)?;
    check_headers(&call.headers)?;
    if call.method == Method::Post {
        return crate::outbound::blocking(|| send(&rt, url, call).map(|(r, _)| r));
    }
    let k = key(&url, &call.headers, call.client);
    let slot = slot(&k);
    if let Some(r) = fresh(&slot) {
        bump(&COUNTERS.cache_hits);
        return Ok(r);
    }
    let started = Instant::now();
    crate::outbound::blocking(|| {
        let mut flight = lock(&slot.flight);
        // A request that ended while we waited was the one we waited for.
        if let Some((ended, result)) = flight.as_ref() {
            if *ended >= started {
                bump(&COUNTERS.shared);
                return result.clone();
            }
        }
        if let Some(r) = fresh(&slot) {
            bump(&COUNTERS.cache_hits);
            return Ok(r);
        }
        let result = send(&rt, url, call);
        let kept = match &result {
            Ok((r, ttl)) if !ttl.is_zero() => Some((r.clone(), *ttl)),
            _ => None,
        };
        store(&k, &slot, kept, rt.cfg.cache_max_bytes);
        let result = result.map(|(r, _)| r);
        *flight = Some((Instant::now(), result.clone()));
        result
    })
}

/// Header names a policy may not set: the client's own framing.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

fn check_headers(headers: &[(&str, &str)]) -> Result<(), HttpError> {
    for (name, value) in headers {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(HttpError::BadHeader(
                crate::identity::url::redact_raw(name),
                "not a valid header name",
            ));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(HttpError::BadHeader(
                (*name).to_owned(),
                "set by celgate itself",
            ));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(HttpError::BadHeader(
                (*name).to_owned(),
                "given a value with a line break or NUL",
            ));
        }
    }
    Ok(())
}

/// The time an exchange may take: the configured limit or what is left of
/// the decision's deadline, whichever is shorter.
fn time_left(limit: Duration, deadline: Option<Instant>) -> Result<Duration, HttpError> {
    match deadline {
        None => Ok(limit),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(HttpError::Deadline)
            } else {
                Ok(left.min(limit))
            }
        }
    }
}

/// The URL a redirect's `Location` names, relative to `base`.
fn resolve(base: &JwksUrl, location: &str) -> Result<JwksUrl, HttpError> {
    let absolute = if location.contains("://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        let scheme = if base.is_https() { "https" } else { "http" };
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{}{location}", base.origin())
    } else {
        let dir = &base.path()[..base.path().rfind('/').map_or(0, |i| i + 1)];
        format!("{}{dir}{location}", base.origin())
    };
    JwksUrl::parse(&absolute).map_err(|p| HttpError::Failed {
        origin: base.origin(),
        reason: format!("a redirect to a URL that is not usable: {p}"),
    })
}

/// The exchange, redirects included: the answer and how long to cache it.
fn send(
    rt: &Runtime,
    mut url: JwksUrl,
    call: &Call<'_>,
) -> Result<(Arc<Response>, Duration), HttpError> {
    let agent = call.client.map_or(&rt.agent, |c| &c.agent);
    let mut method = call.method;
    let mut same_origin = true;
    let first_origin = url.origin();
    bump(&COUNTERS.requests);
    let r = (|| {
        for hop in 0..=MAX_REDIRECTS {
            let timeout = time_left(rt.cfg.timeout, call.deadline)?;
            let target = url.normalised();
            let fail = |reason: String| HttpError::Failed {
                origin: url.origin(),
                // The client's message may quote the URL, query and all.
                reason: reason.replace(&target, &url.origin()),
            };
            let headers = call.headers.iter().filter(|_| same_origin);
            let result = match method {
                Method::Get => {
                    let mut req = agent.get(&target);
                    for (k, v) in headers {
                        req = req.header(*k, *v);
                    }
                    req.config().timeout_global(Some(timeout)).build().call()
                }
                Method::Post => {
                    let mut req = agent.post(&target);
                    let mut typed = false;
                    for (k, v) in headers {
                        typed |= k.eq_ignore_ascii_case("content-type");
                        req = req.header(*k, *v);
                    }
                    if !typed {
                        req = req.header("content-type", "application/json");
                    }
                    let body = call.body.as_deref().unwrap_or(b"null");
                    req.config()
                        .timeout_global(Some(timeout))
                        .build()
                        .send(body)
                }
            };
            let mut resp = result.map_err(|e| fail(e.to_string()))?;
            let status = resp.status().as_u16();
            if rt.cfg.follow_redirects && matches!(status, 301 | 302 | 303 | 307 | 308) {
                if hop == MAX_REDIRECTS {
                    return Err(fail(format!("more than {MAX_REDIRECTS} redirects")));
                }
                let location = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| fail(format!("HTTP status {status} without a Location")))?;
                let next = resolve(&url, location)?;
                let next = admit(rt, &next.normalised())
                    .map_err(|e| fail(format!("redirected to a URL that is not allowed: {e}")))?;
                if status == 303 || (method == Method::Post && matches!(status, 301 | 302)) {
                    method = Method::Get;
                }
                same_origin &= next.origin() == first_origin;
                url = next;
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(fail(format!("HTTP status {status}")));
            }
            let ttl = if method == Method::Get && call.method == Method::Get {
                cache_ttl(
                    &rt.cfg,
                    resp.headers()
                        .get("cache-control")
                        .and_then(|v| v.to_str().ok()),
                )
            } else {
                Duration::ZERO
            };
            let max = rt.cfg.max_response_bytes;
            let body = resp
                .body_mut()
                .with_config()
                .limit(max)
                .read_to_vec()
                .map_err(|e| match e {
                    ureq::Error::BodyExceedsLimit(_) => fail(format!(
                        "the response is larger than {max} bytes (--http-max-response-bytes)"
                    )),
                    e => fail(e.to_string()),
                })?;
            let value = answer(&body, status).map_err(fail)?;
            return Ok((
                Arc::new(Response {
                    value,
                    bytes: body.len(),
                }),
                ttl,
            ));
        }
        unreachable!("the loop returns by its last hop")
    })();
    if r.is_err() {
        bump(&COUNTERS.errors);
        tracing::debug!(
            method = if call.method == Method::Get {
                "GET"
            } else {
                "POST"
            },
            "http library call failed"
        );
    }
    r
}

/// The value of a JSON answer (see [`Response`]).
fn answer(body: &[u8], status: u16) -> Result<Value<'static>, String> {
    use serde_json::Value as Json;
    let json: Json = if body.iter().all(u8::is_ascii_whitespace) {
        Json::Null
    } else {
        serde_json::from_slice(body).map_err(|e| format!("the response is not JSON: {e}"))?
    };
    let key = |s: &str| Key::String(Str::Owned(Arc::from(s)));
    let status = Value::Int(i64::from(status));
    let map: OwnedMap<'static> = match &json {
        Json::Object(o) => {
            let mut m: OwnedMap<'static> = o
                .iter()
                .map(|(k, v)| (key(k), crate::cel::eval::lib::jwt::json(v)))
                .collect();
            m.insert(key("statusCode"), status);
            m
        }
        other => [
            (key("body"), crate::cel::eval::lib::jwt::json(other)),
            (key("statusCode"), status),
        ]
        .into_iter()
        .collect(),
    };
    Ok(Value::map(map))
}

// ---------------------------------------------------------------- stats

/// Counters since the process started, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Requests made (a call with redirects counts once).
    pub requests: u64,
    /// Of those, the ones that gave no answer.
    pub errors: u64,
    /// `GET`s answered from the cache.
    pub cache_hits: u64,
    /// `GET`s that waited for the same request of another call.
    pub shared: u64,
    /// Cached answers dropped to make room.
    pub evictions: u64,
    /// Bytes held by cached answers now.
    pub cache_bytes: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    cache_hits: AtomicU64,
    shared: AtomicU64,
    evictions: AtomicU64,
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(Counters::default);

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of the counters.
pub fn stats() -> HttpStats {
    let c = &*COUNTERS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    HttpStats {
        requests: get(&c.requests),
        errors: get(&c.errors),
        cache_hits: get(&c.cache_hits),
        shared: get(&c.shared),
        evictions: get(&c.evictions),
        cache_bytes: lock(&CACHE).bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HttpConfig {
        HttpConfig {
            cache_min_ttl: Duration::from_secs(10),
            cache_max_ttl: Duration::from_secs(100),
            ..HttpConfig::default()
        }
    }

    #[test]
    fn only_a_positive_max_age_is_cached_within_bounds() {
        let c = cfg();
        assert_eq!(cache_ttl(&c, None), Duration::ZERO);
        assert_eq!(cache_ttl(&c, Some("max-age=0")), Duration::ZERO);
        assert_eq!(cache_ttl(&c, Some("no-store, max-age=60")), Duration::ZERO);
        assert_eq!(cache_ttl(&c, Some("max-age=1")), Duration::from_secs(10));
        assert_eq!(cache_ttl(&c, Some("max-age=50")), Duration::from_secs(50));
        assert_eq!(
            cache_ttl(&c, Some("max-age=5000")),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn answers_carry_the_status() {
        let v = answer(br#"{"a": 1, "statusCode": "x"}"#, 200).unwrap();
        let j = crate::cel::eval::value::to_json(&v).unwrap();
        assert_eq!(j, serde_json::json!({"a": 1.0, "statusCode": 200}));
        let v = answer(b"[1, true]", 201).unwrap();
        let j = crate::cel::eval::value::to_json(&v).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"body": [1.0, true], "statusCode": 201})
        );
        let v = answer(b" ", 204).unwrap();
        let j = crate::cel::eval::value::to_json(&v).unwrap();
        assert_eq!(j, serde_json::json!({"body": null, "statusCode": 204}));
        assert!(answer(b"<html>", 200).unwrap_err().contains("not JSON"));
    }

    #[test]
    fn headers_are_checked() {
        assert!(check_headers(&[("x-api-key", "v"), ("Content-Type", "a/b")]).is_ok());
        for bad in [
            ("Host", "x"),
            ("bad name", "x"),
            ("", "x"),
            ("x", "a\r\nb: c"),
        ] {
            assert!(check_headers(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redirects_resolve_against_the_base() {
        let base = JwksUrl::parse("https://h.example/a/b?q=1").unwrap();
        for (loc, want) in [
            ("https://o.example/x", "https://o.example/x"),
            ("//o.example/x", "https://o.example/x"),
            ("/x?y=1", "https://h.example/x?y=1"),
            ("c", "https://h.example/a/c"),
            ("../c", "https://h.example/c"),
        ] {
            assert_eq!(resolve(&base, loc).unwrap().normalised(), want, "{loc}");
        }
    }

    #[test]
    fn the_deadline_bounds_the_timeout() {
        let limit = Duration::from_secs(5);
        assert_eq!(time_left(limit, None).unwrap(), limit);
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(time_left(limit, Some(soon)).unwrap() <= Duration::from_millis(100));
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(time_left(limit, Some(past)), Err(HttpError::Deadline));
    }

    #[test]
    fn keys_tell_headers_and_clients_apart() {
        let u = JwksUrl::parse("https://h.example/x").unwrap();
        let a = key(&u, &[("A", "1"), ("b", "2")], None);
        assert_eq!(a, key(&u, &[("b", "2"), ("a", "1")], None));
        assert_ne!(a, key(&u, &[("a", "1"), ("b", "3")], None));
        assert_ne!(a, key(&u, &[("a", "12")], None));
        assert_ne!(key(&u, &[], None), key(&u, &[("", "")], None));
    }
}
