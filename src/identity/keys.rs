//! Verification keys, prepared once and reused for every token.
//!
//! A key knows the algorithms its type allows, so that a token can never
//! choose how it is checked: an RSA key verifies RS*/PS* only, an EC P-256
//! key ES256, P-384 ES384, an Ed25519 key EdDSA, and a secret HS* only. In
//! particular a PEM public key is never used as an HMAC secret (the classic
//! algorithm-confusion attack). A JWK's own `alg` narrows this further.

use super::IdentityError;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a key is, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Every algorithm a key of this kind can verify.
    pub fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => &[HS256, HS384, HS512],
            KeyKind::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            KeyKind::EcP256 => &[ES256],
            KeyKind::EcP384 => &[ES384],
            KeyKind::Ed25519 => &[EdDSA],
        }
    }
}

/// A prepared verification key.
#[derive(Debug)]
pub struct Key {
    /// The JWK's `kid`; `None` for PEM and secret keys.
    pub kid: Option<String>,
    pub kind: KeyKind,
    algorithms: Vec<Algorithm>,
    decoding: DecodingKey,
    /// SHA-256 over the key's source text: identifies the key in the
    /// verified-token cache without holding the key itself there.
    pub fingerprint: [u8; 32],
    /// Signatures checked with this key.
    verifications: AtomicU64,
}

impl Key {
    fn new(
        kid: Option<String>,
        kind: KeyKind,
        alg: Option<Algorithm>,
        decoding: DecodingKey,
        fingerprint: [u8; 32],
    ) -> Result<Key, String> {
        let algorithms: Vec<Algorithm> = match alg {
            None => kind.algorithms().to_vec(),
            Some(a) if kind.algorithms().contains(&a) => vec![a],
            Some(a) => return Err(format!("alg {a:?} does not fit a {kind:?} key")),
        };
        Ok(Key {
            kid,
            kind,
            algorithms,
            decoding,
            fingerprint,
            verifications: AtomicU64::new(0),
        })
    }

    /// How many signatures this key has checked.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// Checks `signature` (base64url, the token's third part) over
    /// `message` (the first two parts and their dot). False for an
    /// algorithm this key does not allow, whatever the signature.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        if !self.allows(alg) {
            return false;
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        super::bump(&super::COUNTERS.signature_verifications);
        jsonwebtoken::crypto::verify(signature, message, &self.decoding, alg).unwrap_or(false)
    }

    /// A key from the string given to `jwt.Decode`: a PEM public key (RSA
    /// PKCS#1 or SPKI, EC P-256/P-384 SPKI, Ed25519 SPKI) when it starts
    /// with `-----BEGIN`, else an HMAC secret (its UTF-8 bytes, as given).
    ///
    /// A PEM that cannot be used, a private key and an empty secret are
    /// errors: they are mistakes in the policy, not in the request.
    pub fn from_string(s: &str) -> Result<Key, IdentityError> {
        let t = s.trim();
        if !t.starts_with("-----BEGIN") {
            if s.is_empty() {
                return Err(IdentityError::EmptySecret);
            }
            let fp = fingerprint(b"secret", s.as_bytes());
            return Key::new(
                None,
                KeyKind::Hmac,
                None,
                DecodingKey::from_secret(s.as_bytes()),
                fp,
            )
            .map_err(IdentityError::BadPem);
        }
        if t.contains("PRIVATE KEY-----") {
            return Err(IdentityError::PrivateKey);
        }
        let pem = t.as_bytes();
        let fp = fingerprint(b"pem", pem);
        let (kind, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            let der = k.try_get_as_bytes().unwrap_or_default();
            (jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
                .key_utils
                .rsa_pub_components_from_public_key)(der)
            .map_err(|e| IdentityError::BadPem(format!("bad RSA public key: {e}")))?;
            (KeyKind::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            let kind = match k.kind() {
                DecodingKeyKind::SecretOrDer(p) if p.len() == 65 => KeyKind::EcP256,
                DecodingKeyKind::SecretOrDer(p) if p.len() == 97 => KeyKind::EcP384,
                _ => {
                    return Err(IdentityError::BadPem(
                        "EC keys must be on P-256 or P-384".into(),
                    ))
                }
            };
            (kind, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            match k.kind() {
                DecodingKeyKind::SecretOrDer(p) if p.len() == 32 => {}
                _ => return Err(IdentityError::BadPem("bad Ed25519 public key".into())),
            }
            (KeyKind::Ed25519, k)
        } else {
            return Err(IdentityError::BadPem(
                "not an RSA, EC (P-256, P-384) or Ed25519 public key".into(),
            ));
        };
        Key::new(None, kind, None, key, fp).map_err(IdentityError::BadPem)
    }

    /// A key from one entry of a JWKS `keys` array. `Ok(None)` for a key
    /// that is not for signatures (`use` other than `sig`, an encryption
    /// `alg`) or of a type or curve not supported; `Err` for a broken one.
    pub fn from_jwk(
        jwk: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Key>, String> {
        let text = |name: &str| jwk.get(name).and_then(|v| v.as_str());
        let need = |name: &str| text(name).ok_or_else(|| format!("JWK without `{name}`"));
        if text("use").is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let alg = match text("alg") {
            None => None,
            Some(a) => match Algorithm::from_str(a) {
                Ok(a) => Some(a),
                Err(_) => return Ok(None),
            },
        };
        let bad = |e: jsonwebtoken::errors::Error| e.to_string();
        let (kind, key) = match need("kty")? {
            "RSA" => (
                KeyKind::Rsa,
                DecodingKey::from_rsa_components(need("n")?, need("e")?).map_err(bad)?,
            ),
            "EC" => {
                let kind = match need("crv")? {
                    "P-256" => KeyKind::EcP256,
                    "P-384" => KeyKind::EcP384,
                    _ => return Ok(None),
                };
                (
                    kind,
                    DecodingKey::from_ec_components(need("x")?, need("y")?).map_err(bad)?,
                )
            }
            "OKP" => {
                if need("crv")? != "Ed25519" {
                    return Ok(None);
                }
                (
                    KeyKind::Ed25519,
                    DecodingKey::from_ed_components(need("x")?).map_err(bad)?,
                )
            }
            "oct" => {
                use base64::Engine;
                let k = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(need("k")?.trim_end_matches('='))
                    .map_err(|e| e.to_string())?;
                if k.is_empty() {
                    return Err("empty oct key".into());
                }
                (KeyKind::Hmac, DecodingKey::from_secret(&k))
            }
            _ => return Ok(None),
        };
        let source = serde_json::to_vec(jwk).unwrap_or_default();
        let fp = fingerprint(b"jwk", &source);
        Key::new(text("kid").map(str::to_owned), kind, alg, key, fp).map(Some)
    }
}

pub(crate) fn fingerprint(domain: &[u8], data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// PEM and secret strings already prepared, looked up by the string.
/// Bounded; evicts the least useful entries when full.
pub(crate) struct KeyCache {
    cache: quick_cache::sync::Cache<String, Arc<Key>>,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The prepared key for `s`, preparing it on first use.
    pub fn get(&self, s: &str) -> Result<Arc<Key>, IdentityError> {
        if let Some(k) = self.cache.get(s) {
            return Ok(k);
        }
        let k = Arc::new(Key::from_string(s)?);
        self.cache.insert(s.to_owned(), k.clone());
        Ok(k)
    }
}

/// The prepared key for a `jwt.Decode` key string (cached).
pub fn prepared(s: &str) -> Result<Arc<Key>, IdentityError> {
    super::runtime().keys.get(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_allow_hmac_only() {
        let k = Key::from_string("s3cret").unwrap();
        assert_eq!(k.kind, KeyKind::Hmac);
        assert!(k.allows(Algorithm::HS256) && !k.allows(Algorithm::RS256));
    }

    #[test]
    fn bad_strings_are_errors() {
        assert_eq!(
            Key::from_string("").unwrap_err(),
            IdentityError::EmptySecret
        );
        assert!(matches!(
            Key::from_string("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
            Err(IdentityError::BadPem(_))
        ));
        assert_eq!(
            Key::from_string("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .unwrap_err(),
            IdentityError::PrivateKey
        );
    }

    #[test]
    fn jwk_alg_narrows_and_foreign_keys_are_skipped() {
        let jwk = |v: serde_json::Value| v.as_object().unwrap().clone();
        let k = Key::from_jwk(&jwk(serde_json::json!({
            "kty": "oct", "k": "c2VjcmV0", "alg": "HS384", "kid": "a"
        })))
        .unwrap()
        .unwrap();
        assert!(k.allows(Algorithm::HS384) && !k.allows(Algorithm::HS256));
        assert_eq!(k.kid.as_deref(), Some("a"));
        let enc = jwk(serde_json::json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}));
        assert!(Key::from_jwk(&enc).unwrap().is_none());
        let p521 = jwk(serde_json::json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}));
        assert!(Key::from_jwk(&p521).unwrap().is_none());
        let mismatch = jwk(serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "alg": "RS256"}));
        assert!(Key::from_jwk(&mismatch).is_err());
    }
}
