//! `jwt.Decode`: signature and time checks, and the verified-token cache.
//!
//! A token is valid when it is a compact JWS whose header names a supported
//! algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA;
//! never `none`) that the key allows, whose signature verifies with the key
//! (with a key set: the key named by `kid`, or without `kid` any key of the
//! set that allows the algorithm), whose payload is a JSON object, and whose
//! `exp` and `nbf`, when present, are numbers that admit the current time
//! within [`JwtConfig::leeway`](super::JwtConfig::leeway). A header with
//! `crit` is refused (no extension is understood). `iat`, `iss` and `aud`
//! are the policy's to check, in `Claims`.
//!
//! Anything else makes the token invalid: [`Decoded::valid`] is false, the
//! claims are empty (so that unverified claims cannot be used by mistake)
//! and the header is the parsed header if there was one.
//!
//! Valid tokens are remembered, keyed by SHA-256 over the key's (or key
//! set URL's) fingerprint and the token: a repeated token costs a hash and
//! a lookup, with `exp`/`nbf` checked again against the clock on every
//! hit, and, for a key set, that the verifying key is still in the set.
//! Tokens are never stored nor logged in clear.
//!
//! Invalid tokens are remembered too, under the same key, for
//! [`JwtConfig::invalid_cache_ttl`](super::JwtConfig::invalid_cache_ttl) (a
//! few seconds) in a cache of their own (so a flood of distinct bad tokens
//! can evict only other bad tokens): a flood of one bad token pays one
//! signature check per TTL, not one per request. What could change with
//! time or with the issuer is never remembered: an unknown `kid` (a refresh
//! may bring it; a refused or failed refresh is transient) and a token not
//! yet valid. For a key set, the answer holds only for the set it was
//! checked against: once the set is fetched again (key rotation), the
//! token is checked afresh.

use super::jwks::{self, KeySet};
use super::keys::Key;
use super::{bump, runtime, COUNTERS};
use crate::cel::eval::Value;
use base64::Engine;
use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// Tokens longer than this are invalid without further ado.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// What a token is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    /// A PEM public key or HMAC secret.
    One(&'a Key),
    /// A key set from `jwks.Fetch`.
    Set(&'a Arc<KeySet>),
}

/// Why a token is invalid (for logs and tests; policies only see `Valid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not three base64url parts with a JSON object header.
    Malformed,
    /// `alg` missing, `none`, unknown, or a `crit` header.
    UnsupportedAlgorithm,
    /// The key (or no key of the set) may verify this algorithm.
    AlgorithmNotAllowed,
    /// The key set has no key with the token's `kid`, even after a refresh.
    UnknownKid,
    BadSignature,
    /// The payload is not a JSON object, or `exp`/`nbf` are not numbers.
    BadClaims,
    Expired,
    NotYetValid,
}

/// The result of `jwt.Decode`.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub valid: bool,
    /// Why not valid; `None` when valid.
    pub invalid: Option<Invalid>,
    /// The claims when valid, else empty, as the evaluator reads them.
    pub claims_value: Value<'static>,
    /// The header when it could be parsed, else empty.
    pub header_value: Value<'static>,
}

/// A JSON object of a token (its header or claims) as the evaluator reads
/// it, built once per verification and shared with the cache. Numbers are
/// `double`, as cel-go reads JSON.
#[derive(Debug, Clone)]
pub struct Part {
    pub value: Value<'static>,
}

impl Part {
    fn of(o: &serde_json::Map<String, serde_json::Value>) -> Part {
        Part {
            value: crate::cel::eval::lib::jwt::struct_value(o),
        }
    }
}

static EMPTY: LazyLock<Part> = LazyLock::new(|| Part::of(&serde_json::Map::new()));

/// A verified token, as cached.
#[derive(Debug)]
struct Verified {
    /// Fingerprint of the key that verified it.
    key: [u8; 32],
    exp: Option<f64>,
    nbf: Option<f64>,
    claims: Part,
    header: Part,
}

/// Bounded cache of verified tokens (none when the size is 0).
pub(crate) struct TokenCache {
    cache: Option<quick_cache::sync::Cache<[u8; 32], Arc<Verified>>>,
}

impl TokenCache {
    pub fn new(size: usize) -> Self {
        TokenCache {
            cache: (size > 0).then(|| quick_cache::sync::Cache::new(size)),
        }
    }
}

/// An invalid token, as remembered: a few bytes, whatever the token's size
/// (its header is parsed again on a hit, which costs far less than a
/// signature check), so a flood of distinct large bad tokens cannot make
/// this cache big.
#[derive(Debug)]
struct Remembered {
    why: Invalid,
    /// The answer carried the token's parsed header.
    has_header: bool,
    until: Instant,
    /// The key set's generation it was checked against (0 for one key).
    generation: u64,
}

/// Bounded, short-lived cache of invalid tokens (none when the size is 0).
pub(crate) struct InvalidCache {
    cache: Option<quick_cache::sync::Cache<[u8; 32], Arc<Remembered>>>,
}

impl InvalidCache {
    pub fn new(size: usize) -> Self {
        InvalidCache {
            cache: (size > 0).then(|| quick_cache::sync::Cache::new(size)),
        }
    }
}

/// Whether an invalid answer may be remembered: not when time or a refresh
/// could change it.
fn rememberable(why: Invalid) -> bool {
    !matches!(why, Invalid::UnknownKid | Invalid::NotYetValid)
}

fn invalid(why: Invalid, header: Option<Part>) -> Decoded {
    let header = header.unwrap_or_else(|| EMPTY.clone());
    Decoded {
        valid: false,
        invalid: Some(why),
        claims_value: EMPTY.value.clone(),
        header_value: header.value,
    }
}

fn valid(claims: &Part, header: &Part) -> Decoded {
    Decoded {
        valid: true,
        invalid: None,
        claims_value: claims.value.clone(),
        header_value: header.value.clone(),
    }
}

/// Verifies `token` against `keys`. Never fails: a token that does not
/// verify is [`Decoded::valid`] `== false`.
pub fn decode(token: &str, keys: Keys<'_>) -> Decoded {
    decode_with(token, keys, true).expect("a decode that may verify always answers")
}

/// As [`decode`], from the token caches alone: `None` when the token would
/// have to be verified (a signature check costs up to a few hundred
/// microseconds, and an unknown `kid` fetches the key set again), for a
/// thread that must stay responsive.
pub fn decode_cached(token: &str, keys: Keys<'_>) -> Option<Decoded> {
    decode_with(token, keys, false)
}

fn decode_with(token: &str, keys: Keys<'_>, may_verify: bool) -> Option<Decoded> {
    let rt = runtime();
    let leeway = rt.cfg.leeway.as_secs_f64();
    let cache = rt.tokens.cache.as_ref();
    let bad = rt.invalid.cache.as_ref();
    let generation = match keys {
        Keys::One(_) => 0,
        Keys::Set(s) => s.generation,
    };
    let id = (cache.is_some() || bad.is_some()).then(|| {
        let source = match keys {
            Keys::One(k) => &k.fingerprint,
            Keys::Set(s) => &s.source_fingerprint,
        };
        let mut h = Sha256::new();
        h.update(source);
        h.update(token.as_bytes());
        <[u8; 32]>::from(h.finalize())
    });
    if let (Some(cache), Some(id)) = (cache, &id) {
        if let Some(v) = cache.get(id) {
            let key_ok = match keys {
                Keys::One(k) => k.fingerprint == v.key,
                Keys::Set(s) => s.holds(&v.key),
            };
            if key_ok && check_times(v.exp, v.nbf, leeway).is_ok() {
                bump(&COUNTERS.hits.mine().token_cache);
                return Some(valid(&v.claims, &v.header));
            }
            // Expired, or its key is gone: verify afresh for the reason.
            cache.remove(id);
        }
    }
    if let (Some(bad), Some(id)) = (bad, &id) {
        if let Some(r) = bad.get(id) {
            if r.generation == generation && Instant::now() < r.until {
                bump(&COUNTERS.hits.mine().invalid_cache);
                let header = if r.has_header { header_of(token) } else { None };
                return Some(invalid(r.why, header));
            }
            bad.remove(id);
        }
    }
    if !may_verify {
        return None;
    }
    bump(&COUNTERS.token_cache_misses);
    Some(match verify(token, keys, leeway) {
        Ok(v) => {
            let d = valid(&v.claims, &v.header);
            if let (Some(cache), Some(id)) = (cache, id) {
                cache.insert(id, Arc::new(v));
            }
            d
        }
        Err((why, header)) => {
            tracing::debug!(reason = ?why, "JWT not valid");
            if let (Some(bad), Some(id)) = (bad, id) {
                if rememberable(why) {
                    bad.insert(
                        id,
                        Arc::new(Remembered {
                            why,
                            has_header: header.is_some(),
                            until: Instant::now() + rt.cfg.invalid_cache_ttl,
                            generation,
                        }),
                    );
                }
            }
            invalid(why, header)
        }
    })
}

type Fail = (Invalid, Option<Part>);

fn b64(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()
}

fn json_object(bytes: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(bytes).ok()? {
        serde_json::Value::Object(o) => Some(o),
        _ => None,
    }
}

/// The parsed header (first part) of a token, as [`verify`] parses it.
fn header_of(token: &str) -> Option<Part> {
    let h = token.split('.').next()?;
    b64(h).and_then(|b| json_object(&b)).map(|j| Part::of(&j))
}

fn verify(token: &str, keys: Keys<'_>, leeway: f64) -> Result<Verified, Fail> {
    if token.len() > MAX_TOKEN_LEN {
        return Err((Invalid::Malformed, None));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((Invalid::Malformed, None));
    };
    if p.is_empty() || s.is_empty() {
        return Err((Invalid::Malformed, None));
    }
    let header_json = b64(h)
        .and_then(|b| json_object(&b))
        .ok_or((Invalid::Malformed, None))?;
    let header = Part::of(&header_json);
    let fail = |why: Invalid| (why, Some(header.clone()));

    let alg = header_json
        .get("alg")
        .and_then(|a| a.as_str())
        .and_then(|a| Algorithm::from_str(a).ok())
        .ok_or_else(|| fail(Invalid::UnsupportedAlgorithm))?;
    if header_json.contains_key("crit") {
        return Err(fail(Invalid::UnsupportedAlgorithm));
    }
    let message = &token.as_bytes()[..h.len() + 1 + p.len()];

    let key_fp = match keys {
        Keys::One(k) => {
            if !k.allows(alg) {
                return Err(fail(Invalid::AlgorithmNotAllowed));
            }
            if !k.verify(alg, message, s) {
                return Err(fail(Invalid::BadSignature));
            }
            k.fingerprint
        }
        Keys::Set(set) => {
            let kid = header_json.get("kid").and_then(|k| k.as_str());
            let newer;
            let mut set: &KeySet = set;
            if let Some(kid) = kid {
                if set.by_kid(kid).is_none() {
                    newer =
                        jwks::refresh_for_kid(set, kid).ok_or_else(|| fail(Invalid::UnknownKid))?;
                    set = &newer;
                }
            }
            // The keys named by `kid` (several may share one), or every key
            // without `kid`; of those, the ones allowed to verify `alg`.
            let mut candidates = set
                .keys()
                .iter()
                .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
                .filter(|k| k.allows(alg))
                .peekable();
            if candidates.peek().is_none() {
                return Err(fail(Invalid::AlgorithmNotAllowed));
            }
            candidates
                .find(|k| k.verify(alg, message, s))
                .ok_or_else(|| fail(Invalid::BadSignature))?
                .fingerprint
        }
    };

    let claims = b64(p)
        .and_then(|b| json_object(&b))
        .ok_or_else(|| fail(Invalid::BadClaims))?;
    let number = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| fail(Invalid::BadClaims)),
    };
    let exp = number("exp")?;
    let nbf = number("nbf")?;
    check_times(exp, nbf, leeway).map_err(fail)?;
    Ok(Verified {
        key: key_fp,
        exp,
        nbf,
        claims: Part::of(&claims),
        header,
    })
}

/// `exp` must be after now, `nbf` at or before now, each within `leeway`
/// seconds.
fn check_times(exp: Option<f64>, nbf: Option<f64>, leeway: f64) -> Result<(), Invalid> {
    let now = super::unix_now();
    if exp.is_some_and(|exp| now >= exp + leeway) {
        return Err(Invalid::Expired);
    }
    if nbf.is_some_and(|nbf| now + leeway < nbf) {
        return Err(Invalid::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_window() {
        let now = crate::identity::unix_now();
        assert_eq!(check_times(None, None, 30.0), Ok(()));
        assert_eq!(
            check_times(Some(now + 100.0), Some(now - 100.0), 30.0),
            Ok(())
        );
        // within the leeway on both sides
        assert_eq!(
            check_times(Some(now - 10.0), Some(now + 10.0), 30.0),
            Ok(())
        );
        assert_eq!(
            check_times(Some(now - 60.0), None, 30.0),
            Err(Invalid::Expired)
        );
        assert_eq!(
            check_times(None, Some(now + 60.0), 30.0),
            Err(Invalid::NotYetValid)
        );
        assert_eq!(
            check_times(Some(now - 1.0), None, 0.0),
            Err(Invalid::Expired)
        );
    }

    #[test]
    fn what_may_change_is_never_remembered_as_invalid() {
        assert!(!rememberable(Invalid::UnknownKid));
        assert!(!rememberable(Invalid::NotYetValid));
        for why in [
            Invalid::Malformed,
            Invalid::UnsupportedAlgorithm,
            Invalid::AlgorithmNotAllowed,
            Invalid::BadSignature,
            Invalid::BadClaims,
            Invalid::Expired,
        ] {
            assert!(rememberable(why), "{why:?}");
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let key = Key::from_string("secret").unwrap();
        for t in [
            "", "abc", "a.b.c", "a.b", "...", "e30.e30.", "e30..sig", "a.b.c.d",
        ] {
            let d = decode(t, Keys::One(&key));
            assert!(!d.valid, "{t:?}");
            assert_eq!(d.invalid, Some(Invalid::Malformed), "{t:?}");
        }
        // `{}` header: parses, but names no algorithm
        let d = decode("e30.e30.c2ln", Keys::One(&key));
        assert_eq!(d.invalid, Some(Invalid::UnsupportedAlgorithm));
    }
}
