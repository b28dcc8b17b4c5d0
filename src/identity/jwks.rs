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
//! * URLs are normalised first ([`super::url`]); the normalised URL is the
//!   one checked, cached under and fetched. Plain `http` needs an explicit
//!   opt-in. Logs, errors and metric labels name a URL without its query.
//! * At most [`JwtConfig::max_jwks_urls`] URLs are held; one more evicts
//!   the least recently used (it is fetched again when next needed), so a
//!   policy that builds the URL from request data cannot grow memory.
//!
//! Evaluation is synchronous, and may run on a tokio worker thread: an
//! inline fetch then runs through [`crate::outbound::blocking`], which lets
//! the worker's other tasks move to another thread meanwhile.
//!
//! [`JwtConfig::jwks_min_refresh_interval`]: super::JwtConfig::jwks_min_refresh_interval
//! [`JwtConfig::jwks_min_ttl`, `jwks_max_ttl`]: super::JwtConfig::jwks_min_ttl
//! [`JwtConfig::jwks_default_ttl`]: super::JwtConfig::jwks_default_ttl
//! [`JwtConfig::connect_timeout`]: super::JwtConfig::connect_timeout
//! [`JwtConfig::timeout`]: super::JwtConfig::timeout
//! [`JwtConfig::jwks_max_bytes`]: super::JwtConfig::jwks_max_bytes
//! [`JwtConfig::max_jwks_urls`]: super::JwtConfig::max_jwks_urls

use super::keys::{fingerprint, Key};
use super::url::{judge, redact_raw, JwksUrl, Verdict};
use super::{bump, IdentityError, JwksUrlStats, JwtConfig, Runtime, COUNTERS, RUNTIME};
use crate::outbound::{blocking, freshness, lock, Freshness};
use arc_swap::ArcSwapOption;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A fetched key set: the keys of one JWKS document, prepared.
pub struct KeySet {
    /// The URL it came from, normalised (it may hold a query: never log it).
    pub url: Arc<str>,
    keys: Vec<Arc<Key>>,
    /// Identifies the URL in the verified-token cache.
    pub(crate) source_fingerprint: [u8; 32],
    /// Increases with every fetch of any URL.
    pub(crate) generation: u64,
    expires_at: Instant,
}

/// Names the URL without its query, like the logs.
impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url =
            JwksUrl::parse(&self.url).map_or_else(|_| redact_raw(&self.url), |u| u.redacted());
        f.debug_struct("KeySet")
            .field("url", &url)
            .field("keys", &self.keys.len())
            .field("generation", &self.generation)
            .finish()
    }
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
    /// Normalised: what is fetched.
    url: String,
    /// [`JwksUrl::redacted`]: what is logged and labelled.
    label: String,
    /// Preloaded (test suites): never fetched, never evicted.
    pinned: bool,
    /// [`TICK`] at the last use, for eviction.
    last_used: AtomicU64,
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
/// Orders uses of registry entries.
static TICK: AtomicU64 = AtomicU64::new(0);

/// A new stamp from [`TICK`], later than every one given before.
fn next_tick() -> u64 {
    TICK.fetch_add(1, Ordering::Relaxed) + 1
}

fn now_ms() -> u64 {
    START.elapsed().as_millis() as u64
}

/// The key set at `url`, from the cache when it has one (see the module
/// documentation for when the issuer is asked).
///
/// Errors: the URL does not parse, is plain http without an opt-in, or is
/// refused by [`JwtConfig::allowed_jwks_urls`]; nothing is cached and the
/// fetch fails.
pub fn fetch(url: &str) -> Result<Arc<KeySet>, IdentityError> {
    let rt = RUNTIME.load();
    let url = rt.urls.resolve(&rt, url)?;
    let entry = match lookup(&url.key) {
        // A preloaded set is never fetched: no scheme or allow-list question.
        Some(e) if e.pinned => e,
        found => {
            match url.verdict {
                Verdict::Allowed => {}
                Verdict::PlainHttp => return Err(IdentityError::HttpNotAllowed(url.label.clone())),
                Verdict::NotListed => return Err(IdentityError::UrlNotAllowed(url.label.clone())),
            }
            match found {
                Some(e) => e,
                None => entry(&url.key, &url.label, rt.cfg.max_jwks_urls, false),
            }
        }
    };
    if let Some(set) = from_cache(&entry) {
        return Ok(set);
    }
    drop(rt);
    blocking(|| first_fetch(&entry))
}

/// The key set of `url` as [`fetch`] would answer it without fetching: a
/// cached set, fresh or stale (a stale one is refreshed in the background,
/// as `fetch` does), within the allow-list. `None` when only a fetch can
/// answer (a first use, a URL not allowed: `fetch` says why).
pub fn cached(url: &str) -> Option<Arc<KeySet>> {
    let rt = RUNTIME.load();
    let url = rt.urls.resolve(&rt, url).ok()?;
    let entry = lookup(&url.key)?;
    if !entry.pinned && url.verdict != Verdict::Allowed {
        return None;
    }
    from_cache(&entry)
}

/// A key set URL as a policy writes it, parsed and judged against the
/// allow-list once per settings ([`Runtime`]), not once per request.
pub(crate) struct ResolvedUrl {
    /// [`JwksUrl::normalised`]: the registry's key.
    key: String,
    /// [`JwksUrl::redacted`]: for errors and labels.
    label: String,
    verdict: Verdict,
}

/// The URLs resolved under one [`Runtime`] (so a change of the allow-list
/// starts afresh). Bounded: a URL computed from requests cannot make it
/// grow; past the bound a URL is parsed on every use, as before.
#[derive(Default)]
pub(crate) struct UrlMemo(RwLock<HashMap<Box<str>, Arc<ResolvedUrl>>>);

impl UrlMemo {
    const MAX: usize = 256;

    fn resolve(&self, rt: &Runtime, url: &str) -> Result<Arc<ResolvedUrl>, IdentityError> {
        if let Some(r) = self.0.read().unwrap_or_else(|p| p.into_inner()).get(url) {
            return Ok(r.clone());
        }
        let parsed = JwksUrl::parse(url).map_err(|p| IdentityError::BadUrl {
            url: redact_raw(url),
            reason: p.0,
        })?;
        let r = Arc::new(ResolvedUrl {
            key: parsed.normalised(),
            label: parsed.redacted(),
            verdict: judge(&rt.allow, rt.cfg.allow_http, &parsed),
        });
        let mut memo = self.0.write().unwrap_or_else(|p| p.into_inner());
        if memo.len() < Self::MAX {
            memo.insert(url.into(), r.clone());
        }
        Ok(r)
    }
}

/// The cached set of `entry`, counted as a hit; a stale one is served and
/// refreshed in the background.
fn from_cache(entry: &Arc<Entry>) -> Option<Arc<KeySet>> {
    let set = entry.set.load_full()?;
    if set.is_fresh() {
        bump(&COUNTERS.hits.mine().jwks_cache);
    } else {
        bump(&COUNTERS.jwks_stale_hits);
        refresh_in_background(entry);
    }
    Some(set)
}

/// Installs the JWKS document `body` as the key set of `url`, fresh for good
/// and never fetched: for test suites, which name an issuer's URL in their
/// policies but must not depend on the issuer. Returns the number of keys.
pub fn preload(url: &str, body: &[u8]) -> Result<usize, String> {
    let parsed = JwksUrl::parse(url).map_err(|p| p.to_string())?;
    let keys = parse(body)?;
    if keys.is_empty() {
        return Err("the document holds no usable signing key".into());
    }
    let n = keys.len();
    let url = parsed.normalised();
    let entry = entry(&url, &parsed.redacted(), usize::MAX, true);
    entry.next_refresh_ms.store(u64::MAX, Ordering::Relaxed);
    entry.set.store(Some(Arc::new(KeySet {
        url: url.as_str().into(),
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
    let entry = match lookup(&set.url) {
        Some(e) => e,
        // Evicted since `jwks.Fetch` answered: register it again (its first
        // fetch below has no set to compare with, so it is made).
        None => {
            let parsed = JwksUrl::parse(&set.url).ok()?;
            let max = RUNTIME.load().cfg.max_jwks_urls;
            entry(&set.url, &parsed.redacted(), max, false)
        }
    };
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
        // Refused at once only when no fetch is in flight: a request that
        // meets a refresh under way (the first requests after an issuer
        // rotates its key all carry the new kid at once) waits for it below
        // rather than failing on the rate limit that refresh armed. Holding
        // the lock while looking again means a refresh that has just ended
        // is seen too.
        let held = match entry.fetch.try_lock() {
            Err(std::sync::TryLockError::WouldBlock) => None,
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        };
        if let Some(_held) = held {
            if let Some(cur) = newer(&entry) {
                return cur.by_kid(kid).is_some().then_some(cur);
            }
            bump(&COUNTERS.jwks_kid_refreshes_refused);
            return None;
        }
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
        tracing::info!(url = %entry.label, "unknown kid: refreshing the key set");
        let rt = RUNTIME.load_full();
        let set = do_fetch(&entry, &rt, true).ok()?;
        set.by_kid(kid).is_some().then_some(set)
    })
}

/// The registered entry of a normalised URL, marked used.
fn lookup(url: &str) -> Option<Arc<Entry>> {
    let reg = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    let e = reg.get(url)?;
    // Stamped again only when another entry was stamped since: the URL
    // every request reads is not written to, nor is the shared tick, on
    // each of them (two cores would pass those lines back and forth).
    if e.last_used.load(Ordering::Relaxed) != TICK.load(Ordering::Relaxed) {
        e.last_used.store(next_tick(), Ordering::Relaxed);
    }
    Some(e.clone())
}

/// The entry of a normalised URL, registered if new. With `max` entries
/// held already, the least recently used one that is not pinned goes.
fn entry(url: &str, label: &str, max: usize, pinned: bool) -> Arc<Entry> {
    if let Some(e) = lookup(url) {
        return e;
    }
    let mut reg = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = reg.get(url) {
        return e.clone();
    }
    make_room(&mut reg, max);
    let e = Arc::new(new_entry(url, label, pinned));
    reg.insert(url.to_owned(), e.clone());
    e
}

/// Evicts least recently used entries that are not pinned until fewer than
/// `max` remain (or only pinned ones do).
fn make_room(reg: &mut HashMap<String, Arc<Entry>>, max: usize) {
    while reg.len() >= max.max(1) {
        let victim = reg
            .iter()
            .filter(|(_, e)| !e.pinned)
            .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
            .map(|(k, _)| k.clone());
        let Some(victim) = victim else { break };
        if let Some(e) = reg.remove(&victim) {
            bump(&COUNTERS.jwks_evictions);
            tracing::debug!(url = %e.label, "JWKS URL evicted from the cache to make room");
        }
    }
}

fn new_entry(url: &str, label: &str, pinned: bool) -> Entry {
    Entry {
        url: url.to_owned(),
        label: label.to_owned(),
        pinned,
        last_used: AtomicU64::new(next_tick()),
        set: ArcSwapOption::empty(),
        fetch: Mutex::new(FetchState::default()),
        refreshing: AtomicBool::new(false),
        next_refresh_ms: AtomicU64::new(0),
        fetches: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    }
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
        tracing::warn!(url = %entry.label, error = %err, "cannot start a JWKS refresh thread");
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
            tracing::info!(url = %entry.label, keys = keys.len(), ttl_s = ttl.as_secs(), "JWKS fetched");
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
            // The client's message may quote the URL, query and all.
            let reason = reason.replace(&entry.url, &entry.label);
            tracing::warn!(url = %entry.label, error = %reason, serving_cached = cached, "JWKS fetch failed");
            Err(IdentityError::Fetch {
                url: entry.label.clone(),
                reason,
            })
        }
    }
}

fn http_fetch(rt: &Runtime, url: &str) -> Result<(Vec<Arc<Key>>, Duration), String> {
    let agent = rt.agent.load_full();
    let mut resp = agent
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

/// Cache lifetime from a `Cache-Control` header, bounded by the settings
/// (`no-cache` and `no-store` get the lower bound).
fn ttl(cfg: &JwtConfig, cache_control: Option<&str>) -> Duration {
    let ttl = match freshness(cache_control) {
        Freshness::Unspecified => cfg.jwks_default_ttl,
        Freshness::MaxAge(d) => d,
        Freshness::NoStore => Duration::ZERO,
    };
    ttl.max(cfg.jwks_min_ttl)
        .min(cfg.jwks_max_ttl.max(cfg.jwks_min_ttl))
}

pub(crate) fn url_stats() -> Vec<JwksUrlStats> {
    let reg = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    // URLs that differ only in their query share a label: summed.
    let mut by_label: BTreeMap<&str, JwksUrlStats> = BTreeMap::new();
    for e in reg.values() {
        let set = e.set.load_full();
        let s = by_label
            .entry(e.label.as_str())
            .or_insert_with(|| JwksUrlStats {
                url: e.label.clone(),
                fetches: 0,
                errors: 0,
                keys: 0,
                fresh_for: None,
            });
        s.fetches += e.fetches.load(Ordering::Relaxed);
        s.errors += e.errors.load(Ordering::Relaxed);
        s.keys += set.as_ref().map_or(0, |s| s.keys.len());
        if let Some(set) = &set {
            let left = set.expires_at.saturating_duration_since(Instant::now());
            s.fresh_for = Some(s.fresh_for.map_or(left, |f| f.min(left)));
        }
    }
    by_label.into_values().collect()
}

/// URLs held in the registry (for tests and metrics).
pub fn registered_urls() -> usize {
    REGISTRY.read().unwrap_or_else(|p| p.into_inner()).len()
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
    fn eviction_takes_the_least_recently_used_and_spares_pinned_entries() {
        let mut reg = HashMap::new();
        let add = |reg: &mut HashMap<String, Arc<Entry>>, name: &str, pinned: bool| {
            make_room(reg, 3);
            reg.insert(name.to_owned(), Arc::new(new_entry(name, name, pinned)));
        };
        add(&mut reg, "pinned", true);
        add(&mut reg, "a", false);
        add(&mut reg, "b", false);
        // `a` is used again: `b` is now the least recently used
        reg["a"].last_used.store(next_tick(), Ordering::Relaxed);
        add(&mut reg, "c", false);
        let mut names: Vec<&str> = reg.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["a", "c", "pinned"]);
        add(&mut reg, "d", false);
        add(&mut reg, "e", false);
        assert_eq!(reg.len(), 3);
        assert!(reg.contains_key("pinned"));
        // only pinned entries left to evict: the bound gives way to them
        let mut pinned_only = HashMap::new();
        for i in 0..5 {
            make_room(&mut pinned_only, 3);
            let n = format!("p{i}");
            pinned_only.insert(n.clone(), Arc::new(new_entry(&n, &n, true)));
        }
        assert_eq!(pinned_only.len(), 5);
    }

    #[test]
    fn a_lookup_makes_its_entry_the_most_recently_used() {
        // Through the registry, as requests use it; the URLs are this
        // test's own, pinned so that no other test's registration evicts
        // them meanwhile, and removed at the end.
        let (x, y) = ("https://lru-x.invalid/jwks", "https://lru-y.invalid/jwks");
        entry(x, x, usize::MAX, true);
        entry(y, y, usize::MAX, true);
        let stamp = |url| lookup(url).unwrap().last_used.load(Ordering::Relaxed);
        let x_at = stamp(x);
        let y_at = stamp(y);
        assert!(y_at > x_at, "y used after x");
        // x is not re-stamped on every use, only once another entry was:
        // it must still come out the newest.
        let x_again = stamp(x);
        assert!(x_again > y_at, "x used again after y");
        assert!(stamp(x) >= x_again);
        let mut reg = REGISTRY.write().unwrap();
        reg.remove(x);
        reg.remove(y);
    }

    #[test]
    fn a_key_set_debugs_without_its_query() {
        let doc = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]}"#;
        let url = "https://preloaded.example/jwks?api_key=SECRET";
        preload(url, doc).unwrap();
        let set = fetch(url).unwrap();
        let shown = format!("{set:?}");
        assert!(shown.contains("https://preloaded.example/jwks"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
        let stats = url_stats();
        assert!(stats.iter().all(|s| !s.url.contains("SECRET")));
    }

    #[test]
    fn a_url_is_judged_once_per_settings_and_the_memo_stays_bounded() {
        let with_allow = |allow: &[&str]| {
            Runtime::new(JwtConfig {
                allowed_jwks_urls: allow.iter().map(|s| s.to_string()).collect(),
                ..JwtConfig::default()
            })
        };
        let url = "https://issuer.example/keys?tenant=SECRET";
        let listed = with_allow(&["https://issuer.example/"]);
        let first = listed.urls.resolve(&listed, url).unwrap();
        assert_eq!(first.verdict, Verdict::Allowed);
        assert_eq!(first.key, "https://issuer.example/keys?tenant=SECRET");
        assert_eq!(first.label, "https://issuer.example/keys");
        assert!(Arc::ptr_eq(
            &first,
            &listed.urls.resolve(&listed, url).unwrap()
        ));
        // New settings judge afresh: the old verdict is not carried over.
        let other = with_allow(&["https://other.example/"]);
        assert_eq!(
            other.urls.resolve(&other, url).unwrap().verdict,
            Verdict::NotListed
        );
        let open = with_allow(&[]);
        let plain = open.urls.resolve(&open, "http://issuer.example/keys");
        assert_eq!(plain.unwrap().verdict, Verdict::PlainHttp);
        assert!(matches!(
            listed.urls.resolve(&listed, "not a url"),
            Err(IdentityError::BadUrl { .. })
        ));
        // URLs computed from requests cannot grow it past its bound, and are
        // still judged past it.
        for i in 0..UrlMemo::MAX + 50 {
            let u = format!("https://issuer.example/k{i}");
            assert_eq!(
                listed.urls.resolve(&listed, &u).unwrap().verdict,
                Verdict::Allowed
            );
        }
        assert_eq!(listed.urls.0.read().unwrap().len(), UrlMemo::MAX);
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
