//! Token verification behind the CEL `jwt` and `jwks` libraries.
//!
//! ```cel
//! jwt.Decode(token, "hmac-secret")                 // or a PEM public key (RSA, EC, Ed25519)
//! jwt.Decode(token, jwks.Fetch("https://issuer/.well-known/jwks.json"))
//! ```
//!
//! * [`keys`]: verification keys, prepared once — from a PEM or secret string
//!   (cached by the string) or from a JWK — each with the algorithms its type
//!   allows.
//! * [`jwks`]: key sets fetched over HTTP(S), cached per URL, refreshed in
//!   the background, on an unknown `kid` (rate limited) and never dropped
//!   because the issuer is down.
//! * [`token`]: signature and time checks, and the cache of verified tokens.
//!
//! A token that does not verify for any reason (signature, key, algorithm,
//! time, format) is *invalid*, never an error: only faults of the policy or
//! of the infrastructure (an unparseable key, a JWKS that cannot be had) are
//! [`IdentityError`]s.
//!
//! State lives in statics because CEL functions are plain `fn`s; the
//! settings are swapped in whole by [`configure`].

pub mod jwks;
pub mod keys;
pub mod token;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Settings of the identity library. Set once at start-up with
/// [`configure`]; the defaults suit a server facing an OIDC issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// URLs `jwks.Fetch` may fetch. An entry with `://` is a URL prefix
    /// (`https://issuer.example/keys` allows that URL and the ones below it:
    /// the prefix must end at `/`, `?`, `#` or the end of the URL); an entry
    /// without is a host, or `host:port`, matched exactly (ASCII case
    /// insensitive). Empty (the default) allows any `http`/`https` URL.
    /// A refused URL is an evaluation error naming it.
    pub allowed_jwks_urls: Vec<String>,
    /// Limit on DNS, TCP connect and TLS handshake of a JWKS fetch. Default 2 s.
    pub connect_timeout: Duration,
    /// Limit on a whole JWKS fetch, body included. Default 5 s.
    pub timeout: Duration,
    /// Clock skew tolerated on `exp` and `nbf`. Default 30 s.
    pub leeway: Duration,
    /// How long a key set is fresh when the issuer sends no
    /// `Cache-Control: max-age`. Default 5 min.
    pub jwks_default_ttl: Duration,
    /// Lower bound on an issuer's `max-age` (also used for `no-cache` and
    /// `no-store`). Default 60 s.
    pub jwks_min_ttl: Duration,
    /// Upper bound on an issuer's `max-age`. Default 24 h.
    pub jwks_max_ttl: Duration,
    /// Least time between two fetches of one URL after the first: a stale
    /// set's background refresh, a refresh for an unknown `kid`, and the
    /// retry of a first fetch that failed. Unknown `kid`s within this time
    /// are answered invalid without asking the issuer. Default 10 s.
    pub jwks_min_refresh_interval: Duration,
    /// Largest JWKS body accepted. Default 1 MiB.
    pub jwks_max_bytes: u64,
    /// Distinct JWKS URLs held at once; `jwks.Fetch` of one more is an
    /// error. Default 64.
    pub max_jwks_urls: usize,
    /// Verified tokens remembered (0 disables the cache). Default 10 000.
    pub token_cache_size: usize,
    /// PEM / secret key strings kept prepared. Default 256.
    pub key_cache_size: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            allowed_jwks_urls: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            leeway: Duration::from_secs(30),
            jwks_default_ttl: Duration::from_secs(300),
            jwks_min_ttl: Duration::from_secs(60),
            jwks_max_ttl: Duration::from_secs(24 * 3600),
            jwks_min_refresh_interval: Duration::from_secs(10),
            jwks_max_bytes: 1 << 20,
            max_jwks_urls: 64,
            token_cache_size: 10_000,
            key_cache_size: 256,
        }
    }
}

/// The settings in force with what is built from them.
pub(crate) struct Runtime {
    pub cfg: JwtConfig,
    pub agent: ureq::Agent,
    pub tokens: token::TokenCache,
    pub keys: keys::KeyCache,
}

impl Runtime {
    fn new(cfg: JwtConfig) -> Self {
        Runtime {
            agent: jwks::agent(&cfg),
            tokens: token::TokenCache::new(cfg.token_cache_size),
            keys: keys::KeyCache::new(cfg.key_cache_size),
            cfg,
        }
    }
}

static RUNTIME: LazyLock<ArcSwap<Runtime>> =
    LazyLock::new(|| ArcSwap::from_pointee(Runtime::new(JwtConfig::default())));

pub(crate) fn runtime() -> arc_swap::Guard<Arc<Runtime>> {
    RUNTIME.load()
}

/// Replaces the settings. Meant for start-up; calling it again is allowed
/// (tests do) and starts with empty token and key caches. Cached key sets
/// are kept: their lifetimes were fixed when they were fetched.
pub fn configure(cfg: JwtConfig) {
    RUNTIME.store(Arc::new(Runtime::new(cfg)));
}

/// The settings in force.
pub fn config() -> JwtConfig {
    RUNTIME.load().cfg.clone()
}

/// Faults of the identity library: these are evaluation errors, unlike a
/// token that does not verify, which is only `Valid == false`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the key is not a usable PEM public key: {0}")]
    BadPem(String),
    #[error("a private key was given; jwt.Decode needs the public key")]
    PrivateKey,
    #[error("an empty HMAC secret cannot verify anything")]
    EmptySecret,
    #[error("JWKS URL {0} is not allowed (JwtConfig::allowed_jwks_urls)")]
    UrlNotAllowed(String),
    #[error("JWKS URL {0} is not an http or https URL")]
    BadUrl(String),
    #[error("too many JWKS URLs in use (at most {0}); not fetching {1}")]
    TooManyUrls(usize, String),
    #[error("JWKS {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// Counters since the process started, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtStats {
    /// HTTP requests made for key sets (all URLs).
    pub jwks_fetches: u64,
    /// Of those, the ones that gave no usable key set.
    pub jwks_fetch_errors: u64,
    /// `jwks.Fetch` calls answered from a fresh cached set.
    pub jwks_cache_hits: u64,
    /// `jwks.Fetch` calls answered from an expired set (a refresh was due).
    pub jwks_stale_hits: u64,
    /// Unknown `kid`s answered invalid without a fetch (rate limit).
    pub jwks_kid_refreshes_refused: u64,
    /// `jwt.Decode` calls answered from the verified-token cache.
    pub token_cache_hits: u64,
    /// `jwt.Decode` calls that verified a signature (or failed before it).
    pub token_cache_misses: u64,
    /// One entry per JWKS URL in use.
    pub jwks: Vec<JwksUrlStats>,
}

/// The state of one JWKS URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrlStats {
    pub url: String,
    /// HTTP requests made for it.
    pub fetches: u64,
    /// Of those, the failed ones.
    pub errors: u64,
    /// Usable keys in the cached set (0 when none is cached).
    pub keys: usize,
    /// Time left before the cached set is stale; `None` when nothing is
    /// cached, zero when stale.
    pub fresh_for: Option<Duration>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub jwks_fetches: AtomicU64,
    pub jwks_fetch_errors: AtomicU64,
    pub jwks_cache_hits: AtomicU64,
    pub jwks_stale_hits: AtomicU64,
    pub jwks_kid_refreshes_refused: AtomicU64,
    pub token_cache_hits: AtomicU64,
    pub token_cache_misses: AtomicU64,
}

pub(crate) static COUNTERS: LazyLock<Counters> = LazyLock::new(Counters::default);

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of the counters.
pub fn stats() -> JwtStats {
    let c = &*COUNTERS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    JwtStats {
        jwks_fetches: get(&c.jwks_fetches),
        jwks_fetch_errors: get(&c.jwks_fetch_errors),
        jwks_cache_hits: get(&c.jwks_cache_hits),
        jwks_stale_hits: get(&c.jwks_stale_hits),
        jwks_kid_refreshes_refused: get(&c.jwks_kid_refreshes_refused),
        token_cache_hits: get(&c.token_cache_hits),
        token_cache_misses: get(&c.token_cache_misses),
        jwks: jwks::url_stats(),
    }
}

/// Seconds since the Unix epoch, as a float (JWT `NumericDate`).
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
