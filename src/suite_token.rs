//! Tokens minted by the test runner, so suites need no expiring fixtures.
//!
//! ```yaml
//! - name: admin may delete
//!   token:
//!     key: keys/issuer.pem        # private key (PEM), relative to the suite
//!     alg: RS256                  # default: RS256 with `key`, HS256 with `secret`
//!     kid: issuer-1               # optional `kid` header
//!     claims: { sub: alice, roles: [admin] }
//!     expiresIn: 1h               # default 1h; negative for an expired token; `never`
//!   request: { attributes: { request: { http: { method: DELETE, path: /repos/x } } } }
//! ```
//!
//! The token goes into the request's `authorization` header as
//! `Bearer <token>`; `header` and `scheme` change that (`scheme: ""` puts
//! the bare token). `iat` is now; `exp` is now + `expiresIn` and `nbf` is
//! now + `notBeforeIn` when given, unless the claims set them.

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenSpec {
    /// PEM private key file (RSA, EC or Ed25519), relative to the suite file.
    pub key: Option<String>,
    /// HMAC secret, for HS256/384/512.
    pub secret: Option<String>,
    pub alg: Option<String>,
    pub kid: Option<String>,
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Extra header fields (e.g. `typ`).
    #[serde(default)]
    pub header_fields: serde_json::Map<String, serde_json::Value>,
    pub expires_in: Option<String>,
    pub not_before_in: Option<String>,
    /// Request header that carries the token (default `authorization`).
    pub header: Option<String>,
    /// Prefix before the token (default `Bearer`; empty for none).
    pub scheme: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("give exactly one of `key` (a PEM private key file) and `secret`")]
    KeyChoice,
    #[error("{0}: {1}")]
    KeyFile(String, std::io::Error),
    #[error("unknown alg {0:?}")]
    Alg(String),
    #[error("alg {alg} does not go with {with}")]
    AlgMismatch { alg: String, with: &'static str },
    #[error("key {0}: {1}")]
    Key(String, jsonwebtoken::errors::Error),
    #[error("{field}: {value:?} is not a duration like 30s, 5m, -1h, 2d or never")]
    Duration { field: &'static str, value: String },
    #[error("header_fields: {0}")]
    Header(String),
    #[error("signing: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// Mints the token and sets it on `request`.
pub fn apply(spec: &TokenSpec, dir: &Path, request: &mut CheckRequest) -> Result<(), TokenError> {
    let token = mint(spec, dir, now())?;
    let header = spec
        .header
        .clone()
        .unwrap_or_else(|| "authorization".into())
        .to_ascii_lowercase();
    let value = match spec.scheme.as_deref() {
        None => format!("Bearer {token}"),
        Some("") => token,
        Some(s) => format!("{s} {token}"),
    };
    crate::request_json::http_mut(request)
        .headers
        .insert(header, value);
    Ok(())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The signed token, with times relative to `now` (seconds since the epoch).
pub fn mint(spec: &TokenSpec, dir: &Path, now: i64) -> Result<String, TokenError> {
    let (alg, key) = match (&spec.key, &spec.secret) {
        (Some(file), None) => {
            let path = dir.join(file);
            let pem = std::fs::read(&path)
                .map_err(|e| TokenError::KeyFile(path.display().to_string(), e))?;
            let alg = parse_alg(spec.alg.as_deref().unwrap_or("RS256"))?;
            let key = match alg {
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                _ => {
                    return Err(TokenError::AlgMismatch {
                        alg: format!("{alg:?}"),
                        with: "a PEM key (use `secret` for HS*)",
                    })
                }
            }
            .map_err(|e| TokenError::Key(file.clone(), e))?;
            (alg, key)
        }
        (None, Some(secret)) => {
            let alg = parse_alg(spec.alg.as_deref().unwrap_or("HS256"))?;
            if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(TokenError::AlgMismatch {
                    alg: format!("{alg:?}"),
                    with: "a `secret` (use `key` with a PEM private key)",
                });
            }
            (alg, EncodingKey::from_secret(secret.as_bytes()))
        }
        _ => return Err(TokenError::KeyChoice),
    };
    let mut header = Header::new(alg);
    header.kid = spec.kid.clone();
    if !spec.header_fields.is_empty() {
        let mut h = serde_json::to_value(&header).map_err(|e| TokenError::Header(e.to_string()))?;
        for (k, v) in &spec.header_fields {
            h[k] = v.clone();
        }
        header = serde_json::from_value(h).map_err(|e| TokenError::Header(e.to_string()))?;
    }
    let mut claims = spec.claims.clone();
    claims.entry("iat").or_insert(now.into());
    match spec.expires_in.as_deref() {
        Some("never") => {}
        other => {
            let d = duration("expiresIn", other.unwrap_or("1h"))?;
            claims.entry("exp").or_insert((now + d).into());
        }
    }
    if let Some(nb) = spec.not_before_in.as_deref() {
        let d = duration("notBeforeIn", nb)?;
        claims.entry("nbf").or_insert((now + d).into());
    }
    jsonwebtoken::encode(&header, &claims, &key).map_err(TokenError::Sign)
}

fn parse_alg(s: &str) -> Result<Algorithm, TokenError> {
    Algorithm::from_str(s).map_err(|_| TokenError::Alg(s.to_owned()))
}

/// `30s`, `5m`, `-1h`, `2d`, or a bare number of seconds.
fn duration(field: &'static str, s: &str) -> Result<i64, TokenError> {
    let bad = || TokenError::Duration {
        field,
        value: s.to_owned(),
    };
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let n: i64 = num.trim().parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn spec(yaml: &str) -> TokenSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn hmac_token_carries_claims_and_times() {
        let s = spec(
            "secret: s3cret\nkid: k1\nclaims: { sub: alice }\nexpiresIn: 10m\nnotBeforeIn: -1m",
        );
        let t = mint(&s, Path::new("."), 1_000_000).unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        let d =
            jsonwebtoken::decode::<serde_json::Value>(&t, &DecodingKey::from_secret(b"s3cret"), &v)
                .unwrap();
        assert_eq!(d.header.kid.as_deref(), Some("k1"));
        assert_eq!(d.claims["sub"], "alice");
        assert_eq!(d.claims["iat"], 1_000_000);
        assert_eq!(d.claims["exp"], 1_000_600);
        assert_eq!(d.claims["nbf"], 999_940);
    }

    #[test]
    fn explicit_claims_win_and_never_expires() {
        let s = spec("secret: x\nclaims: { iat: 5 }\nexpiresIn: never");
        let t = mint(&s, Path::new("."), 100).unwrap();
        let payload = t.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let json: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json, serde_json::json!({"iat": 5}));
    }

    #[test]
    fn bad_specs_are_explained() {
        let e = mint(&spec("{}"), Path::new("."), 0).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = mint(&spec("secret: x\nalg: RS256"), Path::new("."), 0).unwrap_err();
        assert!(e.to_string().contains("does not go with"), "{e}");
        let e = mint(&spec("secret: x\nexpiresIn: soon"), Path::new("."), 0).unwrap_err();
        assert!(e.to_string().contains("expiresIn"), "{e}");
        let e = mint(&spec("key: missing.pem"), Path::new("."), 0).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }

    #[test]
    fn pem_keys_sign_tokens_their_public_keys_verify() {
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
        for (key, alg, public) in [
            ("rsa.pem", "RS256", "rsa.pub.pem"),
            ("rsa.pem", "PS384", "rsa.pub.pem"),
            ("ec256.pem", "ES256", "ec256.pub.pem"),
            ("ed25519.pem", "EdDSA", "ed25519.pub.pem"),
        ] {
            let s = spec(&format!(
                "key: {key}\nalg: {alg}\nkid: k\nclaims: {{ sub: bob }}"
            ));
            let t = mint(&s, &keys, now()).unwrap_or_else(|e| panic!("{alg}: {e}"));
            let pem = std::fs::read(keys.join(public)).unwrap();
            let d = match alg {
                "ES256" => DecodingKey::from_ec_pem(&pem),
                "EdDSA" => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .unwrap();
            let alg = parse_alg(alg).unwrap();
            let got = jsonwebtoken::decode::<serde_json::Value>(&t, &d, &Validation::new(alg))
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(got.claims["sub"], "bob");
            assert_eq!(got.header.alg, alg);
        }
        // A key of the wrong type for the algorithm is a clear error.
        let e = mint(&spec("key: ec256.pem\nalg: RS256"), &keys, 0).unwrap_err();
        assert!(e.to_string().contains("ec256.pem"), "{e}");
    }

    #[test]
    fn token_lands_in_the_authorization_header() {
        let s = spec("secret: x");
        let mut r = CheckRequest::default();
        apply(&s, Path::new("."), &mut r).unwrap();
        let h = &r.attributes.unwrap().request.unwrap().http.unwrap().headers;
        assert!(h["authorization"].starts_with("Bearer ey"));
    }
}
