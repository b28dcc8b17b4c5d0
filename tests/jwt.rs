//! The `jwt` / `jwks` CEL library: every algorithm verifies, every kind of
//! bad token is `Valid == false` (never an error), real faults are errors,
//! and the JWKS cache behaves (rotation, issuer down or ill, slow issuer,
//! unknown-kid storms, max-age, allow-list) against a loopback issuer whose
//! requests are counted. Tokens are minted at run time from the key pairs
//! in `tests/keys/`.

use celgate::engine::{evaluate, EngineConfig};
use celgate::identity::{self, JwtConfig};
use celgate::policy::{load::parse_documents, PolicySet};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value as Json};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

const RSA: &str = include_str!("keys/rsa.pem");
const RSA_PUB: &str = include_str!("keys/rsa.pub.pem");
const RSA2: &str = include_str!("keys/rsa2.pem");
const RSA2_PUB: &str = include_str!("keys/rsa2.pub.pem");
const EC256: &str = include_str!("keys/ec256.pem");
const EC256_PUB: &str = include_str!("keys/ec256.pub.pem");
const EC384: &str = include_str!("keys/ec384.pem");
const EC384_PUB: &str = include_str!("keys/ec384.pub.pem");
const ED: &str = include_str!("keys/ed25519.pem");
const ED_PUB: &str = include_str!("keys/ed25519.pub.pem");
const SECRET: &str = "an hmac secret of decent length";

// ---------------------------------------------------------------- set-up

/// One configuration for the whole binary (tests run in parallel and the
/// library's settings are process-wide): loopback allowed, over plain http
/// too (an explicit opt-in: the loopback issuers here serve http), short
/// timeouts, a 1 s lower bound on max-age so expiry can be watched, and
/// invalid tokens remembered for longer than any test waits, so a token
/// accepted again after a rotation shows the rotation, not the TTL.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        identity::configure(JwtConfig {
            allowed_jwks_urls: vec!["127.0.0.1".into()],
            allow_http: true,
            invalid_cache_ttl: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            jwks_min_ttl: Duration::from_secs(1),
            jwks_max_ttl: Duration::from_secs(3600),
            ..JwtConfig::default()
        });
    });
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Json {
    json!({
        "sub": "alice",
        "role": "admin",
        "iss": "https://issuer.test",
        "exp": now() + 600,
        "nbf": now() - 10,
        "profile": { "groups": ["dev", "ops"], "level": 3 }
    })
}

fn encoding_key(alg: Algorithm) -> EncodingKey {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => EncodingKey::from_secret(SECRET.as_bytes()),
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
            EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap()
        }
        ES256 => EncodingKey::from_ec_pem(EC256.as_bytes()).unwrap(),
        ES384 => EncodingKey::from_ec_pem(EC384.as_bytes()).unwrap(),
        EdDSA => EncodingKey::from_ed_pem(ED.as_bytes()).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

fn public_key(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => SECRET,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => RSA_PUB,
        ES256 => EC256_PUB,
        ES384 => EC384_PUB,
        EdDSA => ED_PUB,
        other => panic!("no test key for {other:?}"),
    }
}

fn mint_with(alg: Algorithm, kid: Option<&str>, claims: &Json, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, key).unwrap()
}

fn mint(alg: Algorithm, kid: Option<&str>, claims: &Json) -> String {
    mint_with(alg, kid, claims, &encoding_key(alg))
}

const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The public JWK of `alg`'s test key pair, with a `kid`.
fn jwk(alg: Algorithm, kid: &str, private_pem: Option<&str>) -> Json {
    let key = match private_pem {
        Some(pem) => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        None => encoding_key(alg),
    };
    let mut v = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
    v["kid"] = json!(kid);
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        v.as_object_mut().unwrap().remove("alg");
    }
    v
}

fn jwks_doc(keys: &[Json]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A result of [`eval`], in the terms the assertions use.
#[derive(Debug, PartialEq)]
enum Value {
    Bool(bool),
    Int(i64),
    String(String),
    /// Any other value, as the evaluator prints it.
    Other(String),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

/// Evaluates `expr` by celgate's evaluator with the names in `bound`
/// (strings) bound by `cel.bind`. An error reads `function: message`, as
/// the engine reports it.
fn eval_bound(expr: &str, bound: &[(&str, &str)]) -> Result<Value, String> {
    use celgate::cel::eval::{self, plan, Ctx, Meter};
    setup();
    let mut source = expr.to_owned();
    for (name, value) in bound.iter().rev() {
        source = format!(
            "cel.bind({name}, {}, {source})",
            serde_json::to_string(value).unwrap()
        );
    }
    let parsed = celgate::cel::env()
        .compile(&source)
        .map_err(|e| e.to_string())?;
    let program = plan::compile(parsed.expression(), &|_| None).map_err(|e| e.to_string())?;
    let mut ctx = Ctx::new(None, Meter::new(eval::ctx::DEFAULT_BUDGET));
    match program.eval(&mut ctx) {
        Ok(eval::Value::Bool(b)) => Ok(Value::Bool(b)),
        Ok(eval::Value::Int(i)) => Ok(Value::Int(i)),
        Ok(eval::Value::String(s)) => Ok(Value::String(s.as_str().to_owned())),
        Ok(other) => Ok(Value::Other(format!("{other:?}"))),
        Err(e) => Err(match &e.function {
            Some(f) => format!("{f}: {}", e.message),
            None => e.message.clone(),
        }),
    }
}

/// Evaluates `expr` with `token` (string) and `url` (string) bound.
fn eval(expr: &str, token: &str, url: &str) -> Result<Value, String> {
    eval_bound(expr, &[("token", token), ("url", url)])
}

fn valid_with_key(token: &str, key: &str) -> bool {
    match eval_bound(
        "jwt.Decode(token, key).Valid",
        &[("token", token), ("key", key)],
    ) {
        Ok(Value::Bool(b)) => b,
        other => panic!("expected a bool, got {other:?}"),
    }
}

fn valid_with_jwks(token: &str, url: &str) -> bool {
    match eval("jwt.Decode(token, jwks.Fetch(url)).Valid", token, url) {
        Ok(Value::Bool(b)) => b,
        other => panic!("expected a bool, got {other:?}"),
    }
}

fn direct_decode(token: &str, key: &str) -> identity::token::Decoded {
    setup();
    let k = identity::keys::prepared(key).unwrap();
    identity::token::decode(token, identity::token::Keys::One(&k))
}

fn url_stats(url: &str) -> identity::JwksUrlStats {
    identity::stats()
        .jwks
        .into_iter()
        .find(|s| s.url == url)
        .unwrap_or_else(|| panic!("no stats for {url}"))
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- issuer

#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
    cache_control: Option<String>,
    delay: Duration,
}

/// A loopback JWKS issuer: answers every request with the current
/// [`Reply`] and counts requests; `stop` closes the port.
struct Issuer {
    port: u16,
    /// This issuer's number in the process: part of its URL, so that no
    /// two issuers share one even when the system hands a closed one's
    /// port to a new one (the key-set cache is the process's, keyed by URL).
    id: usize,
    reply: Arc<Mutex<Reply>>,
    requests: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

impl Issuer {
    fn start(body: String, cache_control: Option<&str>) -> Issuer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let reply = Arc::new(Mutex::new(Reply {
            status: 200,
            body,
            cache_control: cache_control.map(str::to_owned),
            delay: Duration::ZERO,
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let (r, n, s) = (reply.clone(), requests.clone(), stopped.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let (r, n) = (r.clone(), n.clone());
                        std::thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            let mut buf = Vec::new();
                            let mut chunk = [0u8; 1024];
                            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                                match conn.read(&mut chunk) {
                                    Ok(0) | Err(_) => return,
                                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                                }
                            }
                            n.fetch_add(1, Ordering::SeqCst);
                            let reply = r.lock().unwrap().clone();
                            std::thread::sleep(reply.delay);
                            let mut resp = format!(
                                "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                                reply.status,
                                reply.body.len()
                            );
                            if let Some(cc) = &reply.cache_control {
                                resp.push_str(&format!("Cache-Control: {cc}\r\n"));
                            }
                            resp.push_str("\r\n");
                            resp.push_str(&reply.body);
                            let _ = conn.write_all(resp.as_bytes());
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Issuer {
            port,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            reply,
            requests,
            stopped,
        }
    }

    fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/{}/.well-known/jwks.json",
            self.port, self.id
        )
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn set(&self, f: impl FnOnce(&mut Reply)) {
        f(&mut self.reply.lock().unwrap());
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // the accept loop polls every 5 ms; give it time to drop the port
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// An issuer publishing every test key, `kid` = algorithm name.
fn full_issuer() -> Issuer {
    let keys: Vec<Json> = ALL
        .iter()
        .map(|a| jwk(*a, &format!("{a:?}"), None))
        .collect();
    Issuer::start(jwks_doc(&keys), Some("max-age=600"))
}

// ---------------------------------------------------------------- valid

#[test]
fn every_algorithm_verifies_with_pem_or_secret() {
    for alg in ALL {
        let t = mint(alg, None, &claims());
        assert!(valid_with_key(&t, public_key(alg)), "{alg:?}");
    }
}

#[test]
fn every_algorithm_verifies_with_jwks() {
    let issuer = full_issuer();
    for alg in ALL {
        let t = mint(alg, Some(&format!("{alg:?}")), &claims());
        assert!(valid_with_jwks(&t, &issuer.url()), "{alg:?}");
    }
    // and without a kid: any key of the set allowing the algorithm
    for alg in [Algorithm::RS256, Algorithm::ES384, Algorithm::EdDSA] {
        let t = mint(alg, None, &claims());
        assert!(valid_with_jwks(&t, &issuer.url()), "{alg:?} without kid");
    }
    assert_eq!(issuer.requests(), 1, "one fetch serves all");
}

#[test]
fn claims_and_header_are_maps_with_optional_syntax() {
    let t = mint(Algorithm::HS256, Some("k1"), &claims());
    let s = |expr: &str| eval(&expr.replace("KEY", &format!("{SECRET:?}")), &t, "");
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims.sub"#),
        Ok(Value::from("alice"))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims.?role.orValue("")"#),
        Ok(Value::from("admin"))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims.?missing.orValue("none")"#),
        Ok(Value::from("none"))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims.?profile.?groups.orValue([])[1]"#),
        Ok(Value::from("ops"))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims[?"role"].hasValue()"#),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        s(r#"has(jwt.Decode(token, KEY).Claims.profile.level)"#),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        s(r#""ops" in jwt.Decode(token, KEY).Claims.profile.groups"#),
        Ok(Value::Bool(true))
    );
    // numbers are doubles, as in the Kyverno Authz Server (protobuf Struct)
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims.profile.level == 3.0"#),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        s(r#"int(jwt.Decode(token, KEY).Claims.profile.level) == 3"#),
        Ok(Value::Bool(true))
    );
    // cross-type numeric comparisons, as cel-go enables them in Kyverno
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims.profile.level == 3"#),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims.exp > 1700000000"#),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        s(r#"string(jwt.Decode(token, KEY).Claims.profile.level)"#),
        Ok(Value::from("3"))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Header.alg"#),
        Ok(Value::from("HS256"))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Header.kid"#),
        Ok(Value::from("k1"))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).?Valid.orValue(false)"#),
        Ok(Value::Bool(true))
    );
    // A token is a `jwt.Token` with three fields, not a map: it has no size
    // (the checker refuses `size()` of it when a policy loads).
    assert_eq!(
        s(r#"size(jwt.Decode(token, KEY))"#),
        Err("no such overload: size(jwt.Token)".into())
    );
    assert_eq!(
        s(
            r#"[jwt.Decode(token, KEY).Valid, has(jwt.Decode(token, KEY).Claims), has(jwt.Decode(token, KEY).Header)].all(b, b)"#
        ),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, KEY).Claims.exists(k, k == "iss")"#),
        Ok(Value::Bool(true))
    );
}

#[test]
fn invalid_tokens_have_empty_claims_but_a_header() {
    let t = mint(Algorithm::HS256, Some("k9"), &claims());
    let s = |expr: &str| eval(expr, &t, "");
    assert_eq!(
        s(r#"jwt.Decode(token, "wrong secret").Valid"#),
        Ok(Value::Bool(false))
    );
    assert_eq!(
        s(r#"size(jwt.Decode(token, "wrong secret").Claims)"#),
        Ok(Value::Int(0))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, "wrong secret").Claims.?role.orValue("")"#),
        Ok(Value::from(""))
    );
    assert_eq!(
        s(r#"jwt.Decode(token, "wrong secret").Header.kid"#),
        Ok(Value::from("k9"))
    );
    assert_eq!(
        eval(r#"size(jwt.Decode(token, "s").Header)"#, "garbage", ""),
        Ok(Value::Int(0))
    );
}

// ---------------------------------------------------------------- invalid

use identity::token::Invalid;

fn assert_invalid(token: &str, key: &str, why: Invalid) {
    assert!(!valid_with_key(token, key), "expected invalid ({why:?})");
    assert_eq!(direct_decode(token, key).invalid, Some(why));
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn bad_signature() {
    let t = mint(Algorithm::RS256, None, &claims());
    assert_invalid(&t, RSA2_PUB, Invalid::BadSignature);
    let t = mint(Algorithm::HS256, None, &claims());
    assert_invalid(&t, "another secret", Invalid::BadSignature);
    // a flipped signature byte
    let mut bytes = mint(Algorithm::ES256, None, &claims()).into_bytes();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    assert_invalid(
        &String::from_utf8(bytes).unwrap(),
        EC256_PUB,
        Invalid::BadSignature,
    );
}

#[test]
fn spliced_payload() {
    let mut admin = claims();
    admin["sub"] = json!("mallory");
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::EdDSA] {
        let real = mint(alg, None, &claims());
        let other = mint(alg, None, &admin);
        let sig = real.rsplit('.').next().unwrap();
        let (head, _) = other.rsplit_once('.').unwrap();
        assert_invalid(
            &format!("{head}.{sig}"),
            public_key(alg),
            Invalid::BadSignature,
        );
    }
}

#[test]
fn alg_none() {
    let body = b64(&claims().to_string());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"typ":"JWT"}"#,
    ] {
        let h = b64(header);
        // unsigned, and with a made-up signature
        assert!(!valid_with_key(&format!("{h}.{body}."), SECRET));
        assert_invalid(
            &format!("{h}.{body}.c2ln"),
            SECRET,
            Invalid::UnsupportedAlgorithm,
        );
        assert_invalid(
            &format!("{h}.{body}.c2ln"),
            RSA_PUB,
            Invalid::UnsupportedAlgorithm,
        );
    }
}

#[test]
fn hmac_with_public_key_pem_is_algorithm_confusion() {
    // signed HS256 with the PEM text of the public key as the secret
    for pem in [RSA_PUB, EC256_PUB, ED_PUB] {
        let key = EncodingKey::from_secret(pem.as_bytes());
        let t = mint_with(Algorithm::HS256, None, &claims(), &key);
        assert_invalid(&t, pem, Invalid::AlgorithmNotAllowed);
        let t = mint_with(Algorithm::HS512, None, &claims(), &key);
        assert_invalid(&t, pem, Invalid::AlgorithmNotAllowed);
    }
}

#[test]
fn algorithm_not_allowed_for_the_key_type() {
    let rs = mint(Algorithm::RS256, None, &claims());
    assert_invalid(&rs, EC256_PUB, Invalid::AlgorithmNotAllowed);
    assert_invalid(&rs, ED_PUB, Invalid::AlgorithmNotAllowed);
    assert_invalid(&rs, SECRET, Invalid::AlgorithmNotAllowed);
    let es384 = mint(Algorithm::ES384, None, &claims());
    assert_invalid(&es384, EC256_PUB, Invalid::AlgorithmNotAllowed);
    let es256 = mint(Algorithm::ES256, None, &claims());
    assert_invalid(&es256, EC384_PUB, Invalid::AlgorithmNotAllowed);
    assert_invalid(&es256, RSA_PUB, Invalid::AlgorithmNotAllowed);
}

#[test]
fn expired_and_not_yet_valid() {
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    assert_invalid(&mint(Algorithm::HS256, None, &c), SECRET, Invalid::Expired);
    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    assert_invalid(
        &mint(Algorithm::ES256, None, &c),
        EC256_PUB,
        Invalid::NotYetValid,
    );
    // within the default 30 s leeway
    let mut c = claims();
    c["exp"] = json!(now() - 5);
    c["nbf"] = json!(now() + 5);
    assert!(valid_with_key(&mint(Algorithm::HS256, None, &c), SECRET));
    // no exp at all is fine; a non-numeric exp is not
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert!(valid_with_key(&mint(Algorithm::HS256, None, &c), SECRET));
    c["exp"] = json!("tomorrow");
    assert_invalid(
        &mint(Algorithm::HS256, None, &c),
        SECRET,
        Invalid::BadClaims,
    );
}

#[test]
fn a_cached_token_expires_on_time() {
    // exp = now - 28: inside the 30 s leeway now, outside it within ~3 s.
    let mut c = claims();
    c["exp"] = json!(now() - 28);
    c["jti"] = json!("expiring");
    let t = mint(Algorithm::HS256, None, &c);
    assert!(valid_with_key(&t, SECRET));
    assert!(valid_with_key(&t, SECRET), "served from the token cache");
    wait_for("the token to expire", Duration::from_secs(5), || {
        !valid_with_key(&t, SECRET)
    });
    assert_eq!(direct_decode(&t, SECRET).invalid, Some(Invalid::Expired));
}

/// Pseudo-random bytes without a dependency.
fn random_bytes(n: usize) -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let s = std::collections::hash_map::RandomState::new();
    (0..n)
        .map(|i| {
            let mut h = s.build_hasher();
            h.write_usize(i);
            h.finish() as u8
        })
        .collect()
}

#[test]
fn garbage_strings() {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let random = e.encode(random_bytes(200));
    let random_parts = format!(
        "{}.{}.{}",
        e.encode(random_bytes(30)),
        e.encode(random_bytes(60)),
        e.encode(random_bytes(64))
    );
    let json_not_object = format!("{}.{}.c2ln", b64("[1,2]"), b64("{}"));
    for t in [
        "",
        "abc",
        "a.b.c",
        "...",
        "Bearer x",
        random.as_str(),
        random_parts.as_str(),
        json_not_object.as_str(),
    ] {
        for key in [SECRET, RSA_PUB] {
            assert!(!valid_with_key(t, key), "{t:?}");
            assert_eq!(
                direct_decode(t, key).invalid,
                Some(Invalid::Malformed),
                "{t:?}"
            );
        }
    }
    // a verified signature over a payload that is not a JSON object
    let h = b64(r#"{"alg":"HS256"}"#);
    let p = b64("[1]");
    let sig = jsonwebtoken::crypto::sign(
        format!("{h}.{p}").as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    assert_invalid(&format!("{h}.{p}.{sig}"), SECRET, Invalid::BadClaims);
}

#[test]
fn key_faults_are_errors() {
    let t = mint(Algorithm::HS256, None, &claims());
    let bad_pem = "-----BEGIN PUBLIC KEY-----\nAAAAAAAA\n-----END PUBLIC KEY-----";
    for (key, says) in [
        (bad_pem, "not a usable PEM"),
        (RSA, "private key"),
        ("", "empty HMAC secret"),
    ] {
        let err = eval_bound(
            "jwt.Decode(token, key).Valid",
            &[("token", &t), ("key", key)],
        )
        .unwrap_err();
        assert!(err.contains(says), "{err}");
    }
}

// ---------------------------------------------------------------- jwks

#[test]
fn jwks_unknown_kid_and_confusion_are_invalid() {
    let issuer = Issuer::start(
        jwks_doc(&[
            jwk(Algorithm::RS256, "rsa", None),
            jwk(Algorithm::ES256, "ec", None),
        ]),
        None,
    );
    let url = issuer.url();
    assert!(valid_with_jwks(
        &mint(Algorithm::RS256, Some("rsa"), &claims()),
        &url
    ));
    assert!(!valid_with_jwks(
        &mint(Algorithm::RS256, Some("nope"), &claims()),
        &url
    ));
    // an RS token presented as the EC key's kid
    assert!(!valid_with_jwks(
        &mint(Algorithm::RS256, Some("ec"), &claims()),
        &url
    ));
    // HS256 signed with the RSA public key's PEM, naming the RSA kid
    let key = EncodingKey::from_secret(RSA_PUB.as_bytes());
    assert!(!valid_with_jwks(
        &mint_with(Algorithm::HS256, Some("rsa"), &claims(), &key),
        &url
    ));
    // the JWK's alg (RS256) narrows what the RSA key accepts
    assert!(!valid_with_jwks(
        &mint(Algorithm::PS256, Some("rsa"), &claims()),
        &url
    ));
    // a key from elsewhere under a known kid
    let foreign = EncodingKey::from_rsa_pem(RSA2.as_bytes()).unwrap();
    assert!(!valid_with_jwks(
        &mint_with(Algorithm::RS256, Some("rsa"), &claims(), &foreign),
        &url
    ));
    assert!(!valid_with_jwks("a.b.c", &url));
}

#[test]
fn keys_sharing_a_kid_are_told_apart_by_algorithm() {
    let issuer = Issuer::start(
        jwks_doc(&[
            jwk(Algorithm::RS256, "dup", None),
            jwk(Algorithm::ES256, "dup", None),
        ]),
        None,
    );
    let url = issuer.url();
    assert!(valid_with_jwks(
        &mint(Algorithm::RS256, Some("dup"), &claims()),
        &url
    ));
    assert!(valid_with_jwks(
        &mint(Algorithm::ES256, Some("dup"), &claims()),
        &url
    ));
    assert!(!valid_with_jwks(
        &mint(Algorithm::ES384, Some("dup"), &claims()),
        &url
    ));
    assert_eq!(issuer.requests(), 1);
}

#[test]
fn rotation_is_picked_up_with_exactly_one_refetch() {
    let issuer = Issuer::start(
        jwks_doc(&[jwk(Algorithm::RS256, "old", None)]),
        Some("max-age=3600"),
    );
    let url = issuer.url();
    let old = mint(Algorithm::RS256, Some("old"), &claims());
    assert!(valid_with_jwks(&old, &url));
    assert_eq!(issuer.requests(), 1);
    // the issuer rotates to a new key pair
    issuer.set(|r| r.body = jwks_doc(&[jwk(Algorithm::RS256, "new", Some(RSA2))]));
    let key = EncodingKey::from_rsa_pem(RSA2.as_bytes()).unwrap();
    let new = mint_with(Algorithm::RS256, Some("new"), &claims(), &key);
    assert!(valid_with_jwks(&new, &url));
    assert_eq!(issuer.requests(), 2, "exactly one refetch");
    assert!(valid_with_jwks(&new, &url));
    assert_eq!(issuer.requests(), 2);
    // the old key is gone from the set: its token no longer verifies, even
    // though it sits in the token cache
    assert!(!valid_with_jwks(&old, &url));
    assert_eq!(issuer.requests(), 2, "rate limited");
}

/// The first requests after an issuer rotates all carry the new kid at
/// once: while one of them refreshes the set, the others wait for that
/// refresh instead of being refused by the rate limit it armed.
#[test]
fn concurrent_requests_with_a_new_kid_share_one_refresh() {
    let issuer = Issuer::start(
        jwks_doc(&[jwk(Algorithm::RS256, "before", None)]),
        Some("max-age=3600"),
    );
    let url = issuer.url();
    assert!(valid_with_jwks(
        &mint(Algorithm::RS256, Some("before"), &claims()),
        &url
    ));
    assert_eq!(issuer.requests(), 1);
    // The issuer rotates, and answers slowly enough for the requests below
    // to meet the refresh in flight.
    issuer.set(|r| {
        r.body = jwks_doc(&[jwk(Algorithm::RS256, "after", Some(RSA2))]);
        r.delay = Duration::from_millis(300);
    });
    let key = EncodingKey::from_rsa_pem(RSA2.as_bytes()).unwrap();
    let token = mint_with(Algorithm::RS256, Some("after"), &claims(), &key);
    let refused = identity::stats().jwks_kid_refreshes_refused;
    let verdicts: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (token, url) = (&token, &url);
                s.spawn(move || {
                    // The first starts the refresh; the rest arrive during it.
                    std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 50 }));
                    valid_with_jwks(token, url)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        verdicts,
        vec![true; 8],
        "every request with the new kid is valid"
    );
    assert_eq!(issuer.requests(), 2, "one refresh served them all");
    assert_eq!(identity::stats().jwks_kid_refreshes_refused, refused);
}

#[test]
fn unknown_kids_do_not_storm_the_issuer() {
    let issuer = Issuer::start(
        jwks_doc(&[jwk(Algorithm::ES256, "ec", None)]),
        Some("max-age=3600"),
    );
    let url = issuer.url();
    let before = identity::stats().jwks_kid_refreshes_refused;
    for i in 0..50 {
        let t = mint(Algorithm::ES256, Some(&format!("bogus-{i}")), &claims());
        assert!(!valid_with_jwks(&t, &url));
    }
    // the first fetch, then one refresh for the first unknown kid; the other
    // 49 are refused by the rate limit
    assert_eq!(issuer.requests(), 2);
    assert!(identity::stats().jwks_kid_refreshes_refused >= before + 49);
    assert!(valid_with_jwks(
        &mint(Algorithm::ES256, Some("ec"), &claims()),
        &url
    ));
    assert_eq!(issuer.requests(), 2);
}

#[test]
fn issuer_down_after_first_fetch_keeps_serving_cached_keys() {
    let issuer = Issuer::start(
        jwks_doc(&[jwk(Algorithm::EdDSA, "ed", None)]),
        Some("max-age=1"),
    );
    let url = issuer.url();
    let t = mint(Algorithm::EdDSA, Some("ed"), &claims());
    assert!(valid_with_jwks(&t, &url));
    issuer.stop();
    std::thread::sleep(Duration::from_millis(1100));
    // stale: served, and a background refresh is attempted (and fails)
    let t2 = mint(
        Algorithm::EdDSA,
        Some("ed"),
        &json!({"sub": "bob", "exp": now() + 60}),
    );
    assert!(valid_with_jwks(&t2, &url));
    wait_for("the failed refresh", Duration::from_secs(3), || {
        url_stats(&url).errors == 1
    });
    assert_eq!(url_stats(&url).fetches, 2);
    assert!(valid_with_jwks(&t, &url));
    assert!(valid_with_jwks(&t2, &url));
    assert_eq!(url_stats(&url).keys, 1);
    // an unknown kid while the issuer is down: invalid, not an error
    assert!(!valid_with_jwks(
        &mint(Algorithm::EdDSA, Some("x"), &claims()),
        &url
    ));
}

#[test]
fn issuer_answering_garbage_keeps_serving_cached_keys() {
    let issuer = Issuer::start(
        jwks_doc(&[jwk(Algorithm::ES384, "ec", None)]),
        Some("max-age=1"),
    );
    let url = issuer.url();
    let t = mint(Algorithm::ES384, Some("ec"), &claims());
    assert!(valid_with_jwks(&t, &url));
    issuer.set(|r| r.body = "<html>oops</html>".into());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(valid_with_jwks(&t, &url));
    wait_for("the failed refresh", Duration::from_secs(3), || {
        url_stats(&url).errors == 1
    });
    assert!(valid_with_jwks(&t, &url));
    assert_eq!(url_stats(&url).keys, 1);
}

#[test]
fn issuer_answering_an_error_status_keeps_serving_cached_keys() {
    let issuer = Issuer::start(
        jwks_doc(&[jwk(Algorithm::PS384, "rsa", None)]),
        Some("max-age=1"),
    );
    let url = issuer.url();
    let t = mint(Algorithm::PS384, Some("rsa"), &claims());
    assert!(valid_with_jwks(&t, &url));
    issuer.set(|r| r.status = 503);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(valid_with_jwks(&t, &url));
    wait_for("the failed refresh", Duration::from_secs(3), || {
        url_stats(&url).errors == 1
    });
    assert!(valid_with_jwks(&t, &url));
}

#[test]
fn garbage_with_nothing_cached_is_an_error() {
    let t = mint(Algorithm::RS256, Some("rsa"), &claims());
    for (status, body, says) in [
        (200, "{not json", "invalid JSON"),
        (200, r#"{"keys": []}"#, "no usable signing key"),
        (404, "{}", "HTTP status 404"),
    ] {
        let issuer = Issuer::start(body.into(), None);
        issuer.set(|r| r.status = status);
        let url = issuer.url();
        let err = eval("jwt.Decode(token, jwks.Fetch(url)).Valid", &t, &url).unwrap_err();
        assert!(err.contains(says) && err.contains(&url), "{err}");
        // answered from memory for a while: no second request
        assert!(eval("jwks.Fetch(url) != null", &t, &url).is_err());
        assert_eq!(issuer.requests(), 1);
    }
}

#[test]
fn slow_issuer_is_cut_off_by_the_timeout() {
    let issuer = Issuer::start(jwks_doc(&[jwk(Algorithm::RS256, "rsa", None)]), None);
    issuer.set(|r| r.delay = Duration::from_secs(4));
    let url = issuer.url();
    let t = mint(Algorithm::RS256, Some("rsa"), &claims());
    let start = Instant::now();
    let err = eval("jwt.Decode(token, jwks.Fetch(url)).Valid", &t, &url).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert!(err.contains(&url), "{err}");
}

#[test]
fn unreachable_issuer_with_nothing_cached_is_an_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/jwks");
    let err = eval("jwks.Fetch(url) != null", "", &url).unwrap_err();
    assert!(err.contains("jwks.Fetch") && err.contains(&url), "{err}");
}

#[test]
fn concurrent_first_fetches_make_one_request() {
    let issuer = Issuer::start(jwks_doc(&[jwk(Algorithm::ES256, "ec", None)]), None);
    issuer.set(|r| r.delay = Duration::from_millis(300));
    let url = issuer.url();
    let t = mint(Algorithm::ES256, Some("ec"), &claims());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (t, url) = (t.clone(), url.clone());
            std::thread::spawn(move || valid_with_jwks(&t, &url))
        })
        .collect();
    for th in threads {
        assert!(th.join().unwrap());
    }
    assert_eq!(issuer.requests(), 1);
}

#[test]
fn max_age_is_honoured_and_bounded() {
    let issuer = Issuer::start(
        jwks_doc(&[jwk(Algorithm::HS384, "h", None)]),
        Some("public, max-age=1"),
    );
    let url = issuer.url();
    let t = mint(Algorithm::HS384, Some("h"), &claims());
    for _ in 0..20 {
        assert!(valid_with_jwks(&t, &url));
    }
    assert_eq!(issuer.requests(), 1, "fresh for max-age");
    assert!(url_stats(&url).fresh_for.unwrap() <= Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(valid_with_jwks(&t, &url), "stale keys are served meanwhile");
    wait_for("the background refresh", Duration::from_secs(3), || {
        issuer.requests() == 2
    });
    wait_for("the new set", Duration::from_secs(3), || {
        url_stats(&url).fresh_for.unwrap() > Duration::ZERO
    });
    // later stale reads within the rate-limit interval do not refetch
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..5 {
        assert!(valid_with_jwks(&t, &url));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(issuer.requests(), 2);

    // bounded above by jwks_max_ttl (1 h here), defaulted without a header
    let long = Issuer::start(
        jwks_doc(&[jwk(Algorithm::HS384, "h", None)]),
        Some("max-age=999999"),
    );
    assert!(valid_with_jwks(&t, &long.url()));
    let fresh = url_stats(&long.url()).fresh_for.unwrap();
    assert!(
        fresh <= Duration::from_secs(3600) && fresh > Duration::from_secs(3500),
        "{fresh:?}"
    );
    let none = Issuer::start(jwks_doc(&[jwk(Algorithm::HS384, "h", None)]), None);
    assert!(valid_with_jwks(&t, &none.url()));
    let fresh = url_stats(&none.url()).fresh_for.unwrap();
    assert!(
        fresh <= Duration::from_secs(300) && fresh > Duration::from_secs(290),
        "{fresh:?}"
    );
}

#[test]
fn urls_off_the_allow_list_are_refused() {
    let t = mint(Algorithm::RS256, Some("rsa"), &claims());
    for url in [
        "https://issuer.example/jwks",
        "http://localhost:1/jwks",
        "file:///etc/passwd",
    ] {
        let err = eval("jwt.Decode(token, jwks.Fetch(url)).Valid", &t, url).unwrap_err();
        assert!(err.contains(url), "{err}");
    }
}

#[test]
fn fetch_works_inside_a_multi_thread_runtime() {
    let issuer = Issuer::start(jwks_doc(&[jwk(Algorithm::RS512, "rsa", None)]), None);
    let url = issuer.url();
    let t = mint(Algorithm::RS512, Some("rsa"), &claims());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(async move {
        tokio::spawn(async move { valid_with_jwks(&t, &url) })
            .await
            .unwrap()
    });
    assert!(ok);
    assert_eq!(issuer.requests(), 1);
}

#[test]
fn fetch_works_inside_a_current_thread_runtime() {
    let issuer = Issuer::start(jwks_doc(&[jwk(Algorithm::ES256, "ec", None)]), None);
    let url = issuer.url();
    let t = mint(Algorithm::ES256, Some("ec"), &claims());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(async move { valid_with_jwks(&t, &url) }));
}

#[test]
fn the_token_cache_is_used() {
    let mut c = claims();
    c["jti"] = json!("cache-test");
    let t = mint(Algorithm::RS256, None, &c);
    let before = identity::stats();
    for _ in 0..10 {
        assert!(valid_with_key(&t, RSA_PUB));
    }
    let after = identity::stats();
    // other tests run meanwhile, so only lower bounds hold
    assert!(after.token_cache_hits >= before.token_cache_hits + 9);
    assert!(after.token_cache_misses > before.token_cache_misses);
    // the same token with another key is not a hit
    assert_eq!(
        direct_decode(&t, RSA2_PUB).invalid,
        Some(Invalid::BadSignature)
    );
}

// ---------------------------------------------------------------- engine

fn policy_set(yaml: &str) -> PolicySet {
    PolicySet::compile(parse_documents(Path::new("jwt.yaml"), yaml).unwrap()).unwrap()
}

fn request(authorization: Option<&str>) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let headers = match authorization {
        Some(a) => json!({ "authorization": a }),
        None => json!({}),
    };
    celgate::request_json::parse(
        &json!({"attributes": {"request": {"http": {"method": "GET", "path": "/api", "headers": headers}}}})
            .to_string(),
    )
    .unwrap()
}

const POLICY: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: jwt }
spec:
  evaluation: { mode: Envoy }
  variables:
  - name: authorization
    expression: object.attributes.request.http.headers[?"authorization"].orValue("").split(" ")
  - name: token
    expression: >
      size(variables.authorization) == 2 && variables.authorization[0].lowerAscii() == "bearer"
        ? jwt.Decode(variables.authorization[1], KEY)
        : null
  validations:
  - expression: >
      variables.token == null || !variables.token.Valid ? envoy.Denied(401).Response() : null
  - expression: >
      variables.token.Claims.?role.orValue("") != "admin" ? envoy.Denied(403).Response() : null
  - expression: >
      envoy.Allowed()
        .WithHeader("x-sub", variables.token.Claims.sub)
        .WithHeader("x-group", variables.token.Claims.?profile.?groups.orValue(["none"])[0])
        .Response()
"#;

fn check_policy(set: &PolicySet, token_for: impl Fn(&Json) -> String) {
    let config = EngineConfig::default();
    let status = |auth: Option<String>| evaluate(set, &config, &request(auth.as_deref()));

    let d = status(Some(format!("Bearer {}", token_for(&claims()))));
    assert!(d.allowed(), "{d:?}");
    let ok = match &d.response.outcome {
        celgate::response::Outcome::Ok(ok) => ok.clone(),
        other => panic!("{other:?}"),
    };
    let header = |k: &str| {
        ok.headers
            .iter()
            .find(|h| h.key == k)
            .map(|h| h.value.clone())
    };
    assert_eq!(header("x-sub").as_deref(), Some("alice"));
    assert_eq!(header("x-group").as_deref(), Some("dev"));

    let mut user = claims();
    user["role"] = json!("user");
    assert_eq!(
        status(Some(format!("Bearer {}", token_for(&user)))).http_status(),
        403
    );
    let mut no_role = claims();
    no_role.as_object_mut().unwrap().remove("role");
    assert_eq!(
        status(Some(format!("Bearer {}", token_for(&no_role)))).http_status(),
        403
    );
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let d = status(Some(format!("Bearer {}", token_for(&expired))));
    assert_eq!((d.http_status(), d.error.is_none()), (401, true), "{d:?}");
    let d = status(Some("Bearer not.a.jwt".into()));
    assert_eq!((d.http_status(), d.error.is_none()), (401, true), "{d:?}");
    assert_eq!(status(None).http_status(), 401);
}

#[test]
fn engine_policy_with_a_pem_key() {
    setup();
    let set = policy_set(&POLICY.replace("KEY", &serde_json::to_string(EC256_PUB).unwrap()));
    check_policy(&set, |c| mint(Algorithm::ES256, None, c));
    // a token from the wrong key: a clean 401, not an evaluation error
    let wrong = mint(Algorithm::ES384, None, &claims());
    let d = evaluate(
        &set,
        &EngineConfig::default(),
        &request(Some(&format!("Bearer {wrong}"))),
    );
    assert_eq!((d.http_status(), d.error.is_none()), (401, true), "{d:?}");
}

#[test]
fn engine_policy_with_a_secret() {
    setup();
    let set = policy_set(&POLICY.replace("KEY", &format!("{SECRET:?}")));
    check_policy(&set, |c| mint(Algorithm::HS256, None, c));
}

#[test]
fn engine_policy_with_jwks() {
    setup();
    let issuer = full_issuer();
    let set = policy_set(&POLICY.replace("KEY", &format!("jwks.Fetch({:?})", issuer.url())));
    check_policy(&set, |c| mint(Algorithm::PS256, Some("PS256"), c));
    check_policy(&set, |c| mint(Algorithm::EdDSA, Some("EdDSA"), c));
    assert_eq!(issuer.requests(), 1);

    // a refused JWKS URL is an evaluation error: failurePolicy Fail denies
    let set = policy_set(&POLICY.replace("KEY", r#"jwks.Fetch("https://elsewhere.example/jwks")"#));
    let t = mint(Algorithm::PS256, Some("PS256"), &claims());
    let d = evaluate(
        &set,
        &EngineConfig::default(),
        &request(Some(&format!("Bearer {t}"))),
    );
    assert!(!d.allowed());
    assert!(
        d.error
            .as_ref()
            .unwrap()
            .detailed()
            .contains("https://elsewhere.example/jwks"),
        "{d:?}"
    );
}

// ---------------------------------------------------------------- invalid-token cache

#[test]
fn a_repeated_bad_token_is_verified_once() {
    let secret = "a secret only the invalid-cache test uses";
    let forged = mint_with(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(b"the attacker's secret"),
    );
    setup();
    let key = identity::keys::prepared(secret).unwrap();
    for _ in 0..100 {
        assert_eq!(
            direct_decode(&forged, secret).invalid,
            Some(Invalid::BadSignature)
        );
    }
    assert_eq!(key.verifications(), 1, "one signature check for 100 tries");
    // through CEL as well
    for _ in 0..10 {
        assert!(!valid_with_key(&forged, secret));
    }
    assert_eq!(key.verifications(), 1);
    // the key still accepts a good token, and the forged one stays invalid
    let good = mint_with(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(secret.as_bytes()),
    );
    assert!(valid_with_key(&good, secret));
    assert_eq!(key.verifications(), 2);
    assert!(!valid_with_key(&forged, secret));
    assert_eq!(key.verifications(), 2);
}

#[test]
fn a_remembered_bad_token_is_accepted_once_its_key_is_published() {
    // The issuer publishes rsa under kid "k"; the token is signed with rsa2
    // under the same kid, so it is a bad signature until the issuer rotates.
    let issuer = Issuer::start(
        jwks_doc(&[jwk(Algorithm::RS256, "k", None)]),
        Some("max-age=1"),
    );
    let url = issuer.url();
    let rsa2 = EncodingKey::from_rsa_pem(RSA2.as_bytes()).unwrap();
    let t = mint_with(Algorithm::RS256, Some("k"), &claims(), &rsa2);
    for _ in 0..30 {
        assert!(!valid_with_jwks(&t, &url));
    }
    let set = identity::jwks::fetch(&url).unwrap();
    assert_eq!(set.keys()[0].verifications(), 1, "remembered as invalid");
    // The rotation: once the set is fetched again (max-age 1 s), the token
    // is checked afresh — well before the 60 s it would be remembered.
    issuer.set(|r| r.body = jwks_doc(&[jwk(Algorithm::RS256, "k", Some(RSA2))]));
    let start = Instant::now();
    wait_for(
        "the rotated key to verify the token",
        Duration::from_secs(8),
        || valid_with_jwks(&t, &url),
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(issuer.requests() >= 2);
}

#[test]
fn a_token_not_yet_valid_is_not_remembered_as_invalid() {
    // nbf just past the 30 s leeway: invalid now, valid in about 2 s
    let mut c = claims();
    c["nbf"] = json!(now() + 32);
    c["jti"] = json!("not-yet");
    let t = mint(Algorithm::ES384, None, &c);
    assert_eq!(
        direct_decode(&t, EC384_PUB).invalid,
        Some(Invalid::NotYetValid)
    );
    wait_for("the token to become valid", Duration::from_secs(6), || {
        direct_decode(&t, EC384_PUB).valid
    });
}

// ---------------------------------------------------------------- https issuer, private CA

const TLS_CA: &str = include_str!("keys/tls/ca.pem");
const TLS_OTHER_CA: &str = include_str!("keys/tls/other-ca.pem");
const TLS_CERT: &str = include_str!("keys/tls/server.pem");
const TLS_KEY: &str = include_str!("keys/tls/server.key");

/// A loopback JWKS issuer over HTTPS with a certificate from the test CA
/// (tests/keys/tls). Counts requests that got past the TLS handshake.
struct TlsIssuer {
    port: u16,
    /// As [`Issuer`]'s: part of every URL of this issuer.
    id: usize,
    requests: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

impl TlsIssuer {
    fn start(body: String) -> TlsIssuer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(TLS_CERT.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(TLS_KEY.as_bytes()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let (n, s) = (requests.clone(), stopped.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (n, body, config) = (n.clone(), body.clone(), config.clone());
                std::thread::spawn(move || {
                    tcp.set_nonblocking(false).unwrap();
                    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    n.fetch_add(1, Ordering::SeqCst);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes());
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        TlsIssuer {
            port,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            requests,
            stopped,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{}{path}", self.port, self.id)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TlsIssuer {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// The only test that changes the CA bundle (the roots are process-wide):
/// the issuer's private CA is trusted only while the bundle holds it, a
/// broken bundle on reload keeps the previous roots, and a reload to
/// another CA takes effect. Each step uses a fresh path, so no cached set
/// or remembered failure answers for it.
#[test]
fn a_private_ca_is_trusted_only_through_the_ca_bundle() {
    setup();
    let issuer = TlsIssuer::start(jwks_doc(&[jwk(Algorithm::ES256, "ec", None)]));
    let t = mint(Algorithm::ES256, Some("ec"), &claims());
    let expr = "jwt.Decode(token, jwks.Fetch(url)).Valid";

    // The web PKI roots do not know the test CA: the fetch fails.
    let err = eval(expr, &t, &issuer.url("/before")).unwrap_err();
    assert!(err.contains(&issuer.url("/before")), "{err}");
    assert_eq!(issuer.requests(), 0);

    // The bundle at start: trusted.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, TLS_CA).unwrap();
    assert_eq!(identity::tls::load_ca_bundle(&path).unwrap(), 1);
    assert!(valid_with_jwks(&t, &issuer.url("/loaded")));
    assert_eq!(issuer.requests(), 1);
    assert_eq!(identity::stats().ca_bundle_certificates, 1);

    let watch = identity::tls::watch_ca_bundle(path.clone(), Duration::from_millis(20)).unwrap();

    // A broken bundle: refused and counted; the test CA stays trusted.
    let errors = identity::stats().ca_bundle_errors;
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    wait_for(
        "the broken bundle to be refused",
        Duration::from_secs(5),
        || identity::stats().ca_bundle_errors > errors,
    );
    assert!(valid_with_jwks(&t, &issuer.url("/after-broken")));
    // ... and reported (for /readyz) until the file holds a usable bundle.
    let reported = identity::tls::ca_bundle_error().expect("the refused reload is reported");
    assert!(
        reported.error.contains(&path.display().to_string()),
        "{reported:?}"
    );

    // A bundle of another CA only: the issuer is no longer trusted.
    let loads = identity::stats().ca_bundle_loads;
    std::fs::write(&path, TLS_OTHER_CA).unwrap();
    wait_for("the other CA to be loaded", Duration::from_secs(5), || {
        identity::stats().ca_bundle_loads > loads
    });
    assert!(eval(expr, &t, &issuer.url("/other-ca")).is_err());
    assert!(
        identity::tls::ca_bundle_error().is_none(),
        "cleared by a good load"
    );

    // Both CAs in one file: trusted again.
    let loads = identity::stats().ca_bundle_loads;
    std::fs::write(&path, format!("{TLS_OTHER_CA}{TLS_CA}")).unwrap();
    wait_for(
        "the two-CA bundle to be loaded",
        Duration::from_secs(5),
        || identity::stats().ca_bundle_loads > loads,
    );
    assert_eq!(identity::stats().ca_bundle_certificates, 2);
    assert!(valid_with_jwks(&t, &issuer.url("/both")));

    // Without a bundle, the web PKI roots only.
    drop(watch);
    identity::tls::clear_ca_bundle();
    assert!(eval(expr, &t, &issuer.url("/cleared")).is_err());
    assert_eq!(issuer.requests(), 3);
}

#[test]
fn a_ca_bundle_that_cannot_be_used_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    assert!(identity::tls::load_ca_bundle(&missing).is_err());
    let key = dir.path().join("key.pem");
    std::fs::write(&key, TLS_KEY).unwrap();
    let err = identity::tls::load_ca_bundle(&key).unwrap_err().to_string();
    assert!(err.contains("private key"), "{err}");
    assert!(
        !err.contains("MIG"),
        "the key's content is never quoted: {err}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(identity::tls::load_ca_bundle(&empty).is_err());
}
