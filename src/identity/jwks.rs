//! `jwks.Fetch(url)`: JSON Web Key Sets fetched over HTTP(S) and cached per
//! URL.
//!
//! * The first use of a URL fetches it, inline. Concurrent first uses make
//!   one request (the others wait for it). A failed first fetch is an error,
//!   and is answered from memory for [`JwtConfig::jwks_min_refresh_interval`]
//!   before the issuer is asked again.
//! * A set is fresh for the issuer's `Cache-Control: max-age`, bounded to
//!   [`JwtConfig::jwks_min_ttl`, `jwks_max_ttl`], or
//!   [`JwtConfig::jwks_default_ttl`] without one. A stale set is still
//!   served, and one background thread refreshes it.
//! * A token naming a `kid` the set lacks (the issuer rotated its keys)
//!   makes one inline refresh, single-flight.
//! * Every fetch after the first successful one (background or for a `kid`)
//!   is rate limited to one per [`JwtConfig::jwks_min_refresh_interval`] per
//!   URL, so a stream of made-up `kid`s cannot hammer the issuer.
//! * A failed refresh (issuer down, non-200, invalid JSON, no usable key)
//!   keeps the cached set: keys are never dropped because the issuer is ill.
//! * Fetches are bounded by [`JwtConfig::connect_timeout`] and
//!   [`JwtConfig::timeout`], follow no redirects (a redirect could leave the
//!   allow-list), and read at most [`JwtConfig::jwks_max_bytes`].
//!
//! Evaluation is synchronous, and may run on a tokio worker thread: an
//! inline fetch then runs inside [`tokio::task::block_in_place`] so the
//! worker's other tasks move to another thread meanwhile. Without a runtime
//! (CLI, tests), or on a current-thread runtime, it simply blocks.
//!
//! [`JwtConfig::jwks_min_refresh_interval`]: super::JwtConfig::jwks_min_refresh_interval
//! [`JwtConfig::jwks_min_ttl`, `jwks_max_ttl`]: super::JwtConfig::jwks_min_ttl
//! [`JwtConfig::jwks_default_ttl`]: super::JwtConfig::jwks_default_ttl
//! [`JwtConfig::connect_timeout`]: super::JwtConfig::connect_timeout
//! [`JwtConfig::timeout`]: super::JwtConfig::timeout
//! [`JwtConfig::jwks_max_bytes`]: super::JwtConfig::jwks_max_bytes

use super::keys::{fingerprint, Key};
use super::{bump, IdentityError, JwksUrlStats, JwtConfig, Runtime, COUNTERS, RUNTIME};
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A fetched key set: the keys of one JWKS document, prepared.
#[derive(Debug)]
pub struct KeySet {
    /// The URL it came from.
    pub url: Arc<str>,
    keys: Vec<Arc<Key>>,
    /// Identifies the URL in the verified-token cache.
    pub(crate) source_fingerprint: [u8; 32],
    /// Increases with every fetch of any URL.
    generation: u64,
    expires_at: Instant,
}

impl KeySet {
    /// The usable signing keys.
    pub fn keys(&self) -> &[Arc<Key>] {
        &self.keys
    }

    /// The key with this `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// Whether the set holds the key with this fingerprint.
    pub fn holds(&self, fingerprint: &[u8; 32]) -> bool {
        self.keys.iter().any(|k| &k.fingerprint == fingerprint)
    }

    /// Whether the set is within its cache lifetime.
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

/// The cache state of one URL.
struct Entry {
    url: String,
    set: ArcSwapOption<KeySet>,
    /// Held for every HTTP request to the URL: single flight.
    fetch: Mutex<FetchState>,
    /// A background refresh thread is running.
    refreshing: AtomicBool,
    /// Milliseconds since [`START`] before which no refresh is made.
    next_refresh_ms: AtomicU64,
    fetches: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
struct FetchState {
    /// The last failure of a first fetch, answered until the interval passes.
    last_error: Option<(Instant, IdentityError)>,
}

static START: LazyLock<Instant> = LazyLock::new(Instant::now);
static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTRY: LazyLock<RwLock<HashMap<String, Arc<Entry>>>> = LazyLock::new(Default::default);

fn now_ms() -> u64 {
    START.elapsed().as_millis() as u64
}

/// The key set at `url`, from the cache when it has one (see the module
/// documentation for when the issuer is asked).
///
/// Errors: the URL is refused by [`JwtConfig::allowed_jwks_urls`] or is not
/// http(s); nothing is cached and the fetch fails.
pub fn fetch(url: &str) -> Result<Arc<KeySet>, IdentityError> {
    let rt = RUNTIME.load();
    check_url(&rt.cfg, url)?;
    let entry = entry(url, rt.cfg.max_jwks_urls)?;
    if let Some(set) = entry.set.load_full() {
        if set.is_fresh() {
            bump(&COUNTERS.jwks_cache_hits);
        } else {
            bump(&COUNTERS.jwks_stale_hits);
            refresh_in_background(&entry);
        }
        return Ok(set);
    }
    drop(rt);
    blocking(|| first_fetch(&entry))
}

/// Installs the JWKS document `body` as the key set of `url`, fresh for good
/// and never fetched: for test suites, which name an issuer's URL in their
/// policies but must not depend on the issuer. Returns the number of keys.
pub fn preload(url: &str, body: &[u8]) -> Result<usize, String> {
    let keys = parse(body)?;
    if keys.is_empty() {
        return Err("the document holds no usable signing key".into());
    }
    let n = keys.len();
    let entry = entry(url, usize::MAX).map_err(|e| e.to_string())?;
    entry.next_refresh_ms.store(u64::MAX, Ordering::Relaxed);
    entry.set.store(Some(Arc::new(KeySet {
        url: url.into(),
        keys,
        source_fingerprint: fingerprint(b"jwks", url.as_bytes()),
        generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
        expires_at: Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
    })));
    Ok(n)
}

/// The set to use for a token whose `kid` is not in `set`: a newer set that
/// has it, fetched now if the rate limit allows, else `None`.
pub(crate) fn refresh_for_kid(set: &KeySet, kid: &str) -> Option<Arc<KeySet>> {
    let entry = REGISTRY.read().ok()?.get(&*set.url).cloned()?;
    let newer = |entry: &Entry| {
        entry
            .set
            .load_full()
            .filter(|cur| cur.generation > set.generation)
    };
    if let Some(cur) = newer(&entry) {
        return cur.by_kid(kid).is_some().then_some(cur);
    }
    if now_ms() < entry.next_refresh_ms.load(Ordering::Relaxed) {
        bump(&COUNTERS.jwks_kid_refreshes_refused);
        return None;
    }
    blocking(|| {
        let _flight = lock(&entry.fetch);
        // Someone refreshed while we waited for the lock: that will do.
        if let Some(cur) = newer(&entry) {
            return cur.by_kid(kid).is_some().then_some(cur);
        }
        if now_ms() < entry.next_refresh_ms.load(Ordering::Relaxed) {
            bump(&COUNTERS.jwks_kid_refreshes_refused);
            return None;
        }
        tracing::info!(url = %entry.url, "unknown kid: refreshing the key set");
        let rt = RUNTIME.load_full();
        let set = do_fetch(&entry, &rt, true).ok()?;
        set.by_kid(kid).is_some().then_some(set)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn entry(url: &str, max: usize) -> Result<Arc<Entry>, IdentityError> {
    if let Some(e) = REGISTRY.read().unwrap_or_else(|p| p.into_inner()).get(url) {
        return Ok(e.clone());
    }
    let mut reg = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = reg.get(url) {
        return Ok(e.clone());
    }
    if reg.len() >= max {
        return Err(IdentityError::TooManyUrls(max, url.to_owned()));
    }
    let e = Arc::new(Entry {
        url: url.to_owned(),
        set: ArcSwapOption::empty(),
        fetch: Mutex::new(FetchState::default()),
        refreshing: AtomicBool::new(false),
        next_refresh_ms: AtomicU64::new(0),
        fetches: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    reg.insert(url.to_owned(), e.clone());
    Ok(e)
}

fn first_fetch(entry: &Entry) -> Result<Arc<KeySet>, IdentityError> {
    let mut state = lock(&entry.fetch);
    if let Some(set) = entry.set.load_full() {
        return Ok(set);
    }
    let rt = RUNTIME.load_full();
    if let Some((at, e)) = &state.last_error {
        if at.elapsed() < rt.cfg.jwks_min_refresh_interval {
            return Err(e.clone());
        }
    }
    match do_fetch(entry, &rt, false) {
        Ok(set) => {
            state.last_error = None;
            Ok(set)
        }
        Err(e) => {
            state.last_error = Some((Instant::now(), e.clone()));
            Err(e)
        }
    }
}

fn refresh_in_background(entry: &Arc<Entry>) {
    if now_ms() < entry.next_refresh_ms.load(Ordering::Relaxed)
        || entry.refreshing.swap(true, Ordering::AcqRel)
    {
        return;
    }
    let e = entry.clone();
    let spawned = std::thread::Builder::new()
        .name("jwks-refresh".into())
        .spawn(move || {
            {
                let _flight = lock(&e.fetch);
                let stale = e.set.load().as_ref().is_none_or(|s| !s.is_fresh());
                if stale && now_ms() >= e.next_refresh_ms.load(Ordering::Relaxed) {
                    let rt = RUNTIME.load_full();
                    // A failure is logged and counted; the stale set stays.
                    let _ = do_fetch(&e, &rt, true);
                }
            }
            e.refreshing.store(false, Ordering::Release);
        });
    if let Err(err) = spawned {
        tracing::warn!(url = %entry.url, error = %err, "cannot start a JWKS refresh thread");
        entry.refreshing.store(false, Ordering::Release);
    }
}

/// One HTTP request; called with the entry's fetch lock held. A refresh
/// (any fetch but the first) arms the rate limit.
fn do_fetch(entry: &Entry, rt: &Runtime, refresh: bool) -> Result<Arc<KeySet>, IdentityError> {
    let interval = rt.cfg.jwks_min_refresh_interval.as_millis() as u64;
    if refresh {
        entry
            .next_refresh_ms
            .store(now_ms().saturating_add(interval), Ordering::Relaxed);
    }
    bump(&COUNTERS.jwks_fetches);
    entry.fetches.fetch_add(1, Ordering::Relaxed);
    match http_fetch(rt, &entry.url) {
        Ok((keys, ttl)) => {
            tracing::info!(url = %entry.url, keys = keys.len(), ttl_s = ttl.as_secs(), "JWKS fetched");
            let set = Arc::new(KeySet {
                url: entry.url.as_str().into(),
                keys,
                source_fingerprint: fingerprint(b"jwks", entry.url.as_bytes()),
                generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
                expires_at: Instant::now() + ttl,
            });
            entry.set.store(Some(set.clone()));
            Ok(set)
        }
        Err(reason) => {
            bump(&COUNTERS.jwks_fetch_errors);
            entry.errors.fetch_add(1, Ordering::Relaxed);
            let cached = entry.set.load().is_some();
            tracing::warn!(url = %entry.url, error = %reason, serving_cached = cached, "JWKS fetch failed");
            Err(IdentityError::Fetch {
                url: entry.url.clone(),
                reason,
            })
        }
    }
}

pub(crate) fn agent(cfg: &JwtConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_global(Some(cfg.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("celgate")
        .build()
        .into()
}

fn http_fetch(rt: &Runtime, url: &str) -> Result<(Vec<Arc<Key>>, Duration), String> {
    let mut resp = rt
        .agent
        .get(url)
        .header("accept", "application/jwk-set+json, application/json")
        .call()
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("HTTP status {status}"));
    }
    let ttl = ttl(
        &rt.cfg,
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
    );
    let body = resp
        .body_mut()
        .with_config()
        .limit(rt.cfg.jwks_max_bytes)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    Ok((parse(&body)?, ttl))
}

/// The usable signing keys of a JWKS document. Keys that cannot be used
/// are skipped (and logged); a document with none is an error.
pub fn parse(body: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWK set (no `keys` array)")?;
    let mut keys = Vec::with_capacity(list.len());
    for (i, k) in list.iter().enumerate() {
        let Some(obj) = k.as_object() else {
            tracing::warn!(index = i, "JWKS entry is not an object; skipped");
            continue;
        };
        match Key::from_jwk(obj) {
            Ok(Some(key)) => keys.push(Arc::new(key)),
            Ok(None) => {}
            Err(e) => tracing::warn!(index = i, error = %e, "unusable JWK skipped"),
        }
    }
    if keys.is_empty() {
        return Err("no usable signing key in the set".into());
    }
    Ok(keys)
}

/// Cache lifetime from a `Cache-Control` header, bounded by the settings.
fn ttl(cfg: &JwtConfig, cache_control: Option<&str>) -> Duration {
    let mut ttl = cfg.jwks_default_ttl;
    for d in cache_control.unwrap_or("").split(',') {
        let d = d.trim().to_ascii_lowercase();
        if let Some(v) = d.strip_prefix("max-age=") {
            if let Ok(s) = v.trim_matches('"').parse::<u64>() {
                ttl = Duration::from_secs(s);
            }
        } else if d == "no-cache" || d == "no-store" {
            ttl = Duration::ZERO;
            break;
        }
    }
    ttl.max(cfg.jwks_min_ttl)
        .min(cfg.jwks_max_ttl.max(cfg.jwks_min_ttl))
}

/// Refuses URLs that are not http(s) or not on the allow-list.
fn check_url(cfg: &JwtConfig, url: &str) -> Result<(), IdentityError> {
    let scheme_len = if url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://") {
        8
    } else if url.len() >= 7 && url[..7].eq_ignore_ascii_case("http://") {
        7
    } else {
        return Err(IdentityError::BadUrl(url.to_owned()));
    };
    let rest = &url[scheme_len..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.is_empty() || authority.contains('@') {
        return Err(IdentityError::BadUrl(url.to_owned()));
    }
    if cfg.allowed_jwks_urls.is_empty() {
        return Ok(());
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    };
    let allowed = cfg.allowed_jwks_urls.iter().any(|a| {
        if a.contains("://") {
            url.starts_with(a.as_str())
                && (a.ends_with('/')
                    || matches!(url[a.len()..].chars().next(), None | Some('/' | '?' | '#')))
        } else {
            a.eq_ignore_ascii_case(authority) || a.eq_ignore_ascii_case(host)
        }
    });
    if allowed {
        Ok(())
    } else {
        Err(IdentityError::UrlNotAllowed(url.to_owned()))
    }
}

/// Runs `f`, which blocks, without stalling a tokio worker thread.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(crate) fn url_stats() -> Vec<JwksUrlStats> {
    let reg = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<JwksUrlStats> = reg
        .values()
        .map(|e| {
            let set = e.set.load_full();
            JwksUrlStats {
                url: e.url.clone(),
                fetches: e.fetches.load(Ordering::Relaxed),
                errors: e.errors.load(Ordering::Relaxed),
                keys: set.as_ref().map_or(0, |s| s.keys.len()),
                fresh_for: set
                    .as_ref()
                    .map(|s| s.expires_at.saturating_duration_since(Instant::now())),
            }
        })
        .collect();
    out.sort_by(|a, b| a.url.cmp(&b.url));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_bounded() {
        let cfg = JwtConfig::default();
        assert_eq!(ttl(&cfg, None), Duration::from_secs(300));
        assert_eq!(
            ttl(&cfg, Some("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(ttl(&cfg, Some("max-age=1")), Duration::from_secs(60));
        assert_eq!(
            ttl(&cfg, Some("max-age=99999999")),
            Duration::from_secs(86400)
        );
        assert_eq!(ttl(&cfg, Some("no-store")), Duration::from_secs(60));
        assert_eq!(ttl(&cfg, Some("max-age=junk")), Duration::from_secs(300));
    }

    #[test]
    fn url_checks() {
        let any = JwtConfig::default();
        assert!(check_url(&any, "https://issuer.example/jwks").is_ok());
        assert!(check_url(&any, "HTTP://issuer.example").is_ok());
        for bad in [
            "ftp://x/",
            "file:///etc/passwd",
            "https://",
            "https://u:p@host/",
            "issuer",
        ] {
            assert!(
                matches!(check_url(&any, bad), Err(IdentityError::BadUrl(_))),
                "{bad}"
            );
        }
        let cfg = JwtConfig {
            allowed_jwks_urls: vec![
                "https://issuer.example/tenant".into(),
                "keys.example:8443".into(),
                "Other.Example".into(),
            ],
            ..JwtConfig::default()
        };
        for ok in [
            "https://issuer.example/tenant",
            "https://issuer.example/tenant/jwks",
            "https://issuer.example/tenant?x=1",
            "https://keys.example:8443/jwks",
            "http://other.example/jwks",
            "https://other.example:444/jwks",
        ] {
            assert!(check_url(&cfg, ok).is_ok(), "{ok}");
        }
        for refused in [
            "https://issuer.example/tenant2/jwks",
            "https://issuer.example/",
            "https://issuer.example.evil/tenant",
            "https://keys.example/jwks",
            "https://other.example.evil/jwks",
        ] {
            assert_eq!(
                check_url(&cfg, refused),
                Err(IdentityError::UrlNotAllowed(refused.into())),
                "{refused}"
            );
        }
    }

    #[test]
    fn parse_skips_unusable_keys() {
        let doc = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"},{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},7]}"#;
        let keys = parse(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"keys":[]}"#).is_err());
    }
}
