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
//! * [`token`]: signature and time checks, the cache of verified tokens and
//!   the short-lived cache of invalid ones.
//! * [`url`]: JWKS URLs normalised, matched against the allow-list and
//!   redacted (no query, no userinfo) for logs, errors and metrics.
//! * [`tls`]: the roots trusted for fetches: the web PKI plus an optional
//!   CA bundle, reloaded when its file changes.
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
pub mod tls;
pub mod token;
pub mod url;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Settings of the identity library. Set once at start-up with
/// [`configure`]; the defaults suit a server facing an OIDC issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// URLs `jwks.Fetch` may fetch, matched on normalised URLs (see
    /// [`url`]). An entry with `://` is a URL prefix
    /// (`https://issuer.example/keys` allows that URL and the ones below it
    /// on a path-segment boundary); an entry without is a host, or
    /// `host:port`, matched exactly (ASCII case insensitive). Empty (the
    /// default) allows any host. A refused URL is an evaluation error naming
    /// it (without its query).
    pub allowed_jwks_urls: Vec<String>,
    /// Allow plain `http` for every URL the allow-list admits. Without it,
    /// `http` is allowed only by an `http://` prefix entry that admits the
    /// URL. Default false: a man in the middle could swap the keys.
    pub allow_http: bool,
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
    /// Distinct JWKS URLs held at once; one more evicts the least recently
    /// used (fetched again when next needed). Default 256.
    pub max_jwks_urls: usize,
    /// Verified tokens remembered (0 disables the cache). Default 10 000.
    pub token_cache_size: usize,
    /// Invalid tokens remembered so a repeated bad token is not verified
    /// again (0 disables the cache). Default 10 000.
    pub invalid_cache_size: usize,
    /// How long an invalid token is remembered. Default 10 s.
    pub invalid_cache_ttl: Duration,
    /// PEM / secret key strings kept prepared. Default 256.
    pub key_cache_size: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            allowed_jwks_urls: Vec::new(),
            allow_http: false,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            leeway: Duration::from_secs(30),
            jwks_default_ttl: Duration::from_secs(300),
            jwks_min_ttl: Duration::from_secs(60),
            jwks_max_ttl: Duration::from_secs(24 * 3600),
            jwks_min_refresh_interval: Duration::from_secs(10),
            jwks_max_bytes: 1 << 20,
            max_jwks_urls: 256,
            token_cache_size: 10_000,
            invalid_cache_size: 10_000,
            invalid_cache_ttl: Duration::from_secs(10),
            key_cache_size: 256,
        }
    }
}

/// The settings in force with what is built from them.
pub(crate) struct Runtime {
    pub cfg: JwtConfig,
    /// `cfg.allowed_jwks_urls`, parsed.
    pub allow: Vec<url::AllowEntry>,
    /// Rebuilt when the CA bundle changes.
    pub agent: ArcSwap<ureq::Agent>,
    pub tokens: token::TokenCache,
    pub invalid: token::InvalidCache,
    pub keys: keys::KeyCache,
    /// Key set URLs as written, parsed and judged once.
    pub urls: jwks::UrlMemo,
}

impl Runtime {
    fn new(cfg: JwtConfig) -> Self {
        let mut allow = Vec::with_capacity(cfg.allowed_jwks_urls.len());
        for e in &cfg.allowed_jwks_urls {
            match url::AllowEntry::parse(e) {
                Ok(a) => allow.push(a),
                Err(p) => {
                    // `JwtConfig::check` refuses this before start; should
                    // it get here, it admits nothing (and keeps the list
                    // non-empty, which would otherwise mean "any host").
                    tracing::error!(entry = %url::redact_raw(e), error = %p, "JWKS allow-list entry ignored");
                    allow.push(url::AllowEntry::Host {
                        host: String::new(),
                        port: Some(0),
                    });
                }
            }
        }
        Runtime {
            agent: ArcSwap::from_pointee(tls::agent(&cfg)),
            allow,
            tokens: token::TokenCache::new(cfg.token_cache_size),
            invalid: token::InvalidCache::new(cfg.invalid_cache_size),
            keys: keys::KeyCache::new(cfg.key_cache_size),
            urls: jwks::UrlMemo::default(),
            cfg,
        }
    }
}

impl JwtConfig {
    /// Refuses settings that cannot work: an allow-list entry that does not
    /// parse (see [`url`]).
    pub fn check(&self) -> Result<(), IdentityError> {
        for e in &self.allowed_jwks_urls {
            url::AllowEntry::parse(e).map_err(|p| IdentityError::BadAllowEntry {
                entry: url::redact_raw(e),
                reason: p.0,
            })?;
        }
        Ok(())
    }
}

static RUNTIME: LazyLock<ArcSwap<Runtime>> =
    LazyLock::new(|| ArcSwap::from_pointee(Runtime::new(JwtConfig::default())));

pub(crate) fn runtime() -> arc_swap::Guard<Arc<Runtime>> {
    RUNTIME.load()
}

/// Replaces the settings. Meant for start-up; calling it again is allowed
/// (tests do) and starts with empty token and key caches. Cached key sets
/// are kept: their lifetimes were fixed when they were fetched. The CA
/// bundle in force ([`tls::load_ca_bundle`]) is kept.
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
    #[error("JWKS URL {0} is not allowed (--jwks-allowed-urls)")]
    UrlNotAllowed(String),
    #[error("JWKS URL {0} is plain http, which a man in the middle could change: use https, or allow it with an http:// entry in --jwks-allowed-urls or --jwks-allow-http")]
    HttpNotAllowed(String),
    #[error("JWKS URL {url} is not usable: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("--jwks-allowed-urls entry {entry:?} is not usable: {reason}")]
    BadAllowEntry { entry: String, reason: &'static str },
    #[error("JWKS {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("CA bundle {path}: {reason}")]
    CaBundle { path: String, reason: String },
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
    /// `jwt.Decode` calls answered invalid from the invalid-token cache.
    pub invalid_cache_hits: u64,
    /// Signature verifications made (each key tried counts).
    pub signature_verifications: u64,
    /// JWKS URLs dropped from the cache to make room for another.
    pub jwks_evictions: u64,
    /// JWKS URLs cached now.
    pub jwks_urls: u64,
    /// CA bundle loads that succeeded (the first included).
    pub ca_bundle_loads: u64,
    /// CA bundle reloads refused (the previous roots kept serving).
    pub ca_bundle_errors: u64,
    /// Certificates in the CA bundle in force (0 without one).
    pub ca_bundle_certificates: u64,
    /// One entry per JWKS URL in use (URLs that differ only in their
    /// query are summed under one label).
    pub jwks: Vec<JwksUrlStats>,
}

/// The state of one JWKS URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrlStats {
    /// The normalised URL without its query: safe for labels and logs.
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
    /// What nearly every request with a token counts, kept per thread.
    pub hits: crate::telemetry::metrics::PerThread<Hits>,
    pub jwks_stale_hits: AtomicU64,
    pub jwks_kid_refreshes_refused: AtomicU64,
    pub token_cache_misses: AtomicU64,
    pub signature_verifications: AtomicU64,
    pub jwks_evictions: AtomicU64,
    pub ca_bundle_loads: AtomicU64,
    pub ca_bundle_errors: AtomicU64,
    pub ca_bundle_certificates: AtomicU64,
}

/// Cache hits: key sets answered from cache, tokens answered from the
/// verified and from the invalid token caches.
#[derive(Default)]
pub(crate) struct Hits {
    pub jwks_cache: AtomicU64,
    pub token_cache: AtomicU64,
    pub invalid_cache: AtomicU64,
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
        jwks_cache_hits: c.hits.sum(|h| &h.jwks_cache),
        jwks_stale_hits: get(&c.jwks_stale_hits),
        jwks_kid_refreshes_refused: get(&c.jwks_kid_refreshes_refused),
        token_cache_hits: c.hits.sum(|h| &h.token_cache),
        token_cache_misses: get(&c.token_cache_misses),
        invalid_cache_hits: c.hits.sum(|h| &h.invalid_cache),
        signature_verifications: get(&c.signature_verifications),
        jwks_evictions: get(&c.jwks_evictions),
        jwks_urls: jwks::registered_urls() as u64,
        ca_bundle_loads: get(&c.ca_bundle_loads),
        ca_bundle_errors: get(&c.ca_bundle_errors),
        ca_bundle_certificates: get(&c.ca_bundle_certificates),
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
