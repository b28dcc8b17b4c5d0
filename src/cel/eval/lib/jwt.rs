//! The `jwt` and `jwks` libraries (the verification itself is in
//! [`crate::identity`]).
//!
//! ```cel
//! jwt.Decode(token, "hmac-secret")          // or a PEM public key
//! jwt.Decode(token, jwks.Fetch("https://issuer/.well-known/jwks.json"))
//! ```
//!
//! `jwt.Decode` returns a `jwt.Token` with `Valid` (bool), `Claims` and
//! `Header` (maps; JSON numbers are `double`, as cel-go reads JSON and as
//! the Kyverno Authz Server exposes claims). The maps are built once per
//! verified token and shared with the process-wide token cache. A token
//! that does not verify is `Valid == false` with empty claims; errors are
//! kept for faults: an unusable key string, a refused or unreachable JWKS
//! URL. `jwks.Fetch(url)` returns an opaque `jwks.Set`, fetched through the
//! context's [`Host`](crate::cel::eval::Host).

use crate::cel::eval::value::{Key, OwnedMap};
use crate::cel::eval::{Ctx, Error, Function, Object, Str, Value};
use crate::identity::jwks::KeySet;
use crate::identity::keys;
use crate::identity::token::{self, Decoded, Keys};
use serde_json::Value as Json;
use std::any::Any;
use std::sync::Arc;

/// The value of `jwt.Decode(...)`.
#[derive(Debug, Clone)]
pub struct Token {
    valid: bool,
    claims: Value<'static>,
    header: Value<'static>,
}

impl Token {
    pub fn valid(&self) -> bool {
        self.valid
    }
    pub fn claims(&self) -> &Value<'static> {
        &self.claims
    }
    pub fn header(&self) -> &Value<'static> {
        &self.header
    }
}

impl From<Decoded> for Token {
    fn from(d: Decoded) -> Self {
        Token {
            valid: d.valid,
            claims: d.claims_value,
            header: d.header_value,
        }
    }
}

impl Object for Token {
    fn type_name(&self) -> &str {
        "jwt.Token"
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        match name {
            "Valid" => Some(Value::Bool(self.valid)),
            "Claims" => Some(self.claims.clone()),
            "Header" => Some(self.header.clone()),
            _ => None,
        }
    }
    fn equals(&self, other: &dyn Object) -> bool {
        use crate::cel::eval::value::equals;
        other.as_any().downcast_ref::<Token>().is_some_and(|o| {
            o.valid == self.valid
                && equals(&o.claims, &self.claims)
                && equals(&o.header, &self.header)
        })
    }
    fn to_json(&self) -> Option<serde_json::Value> {
        use crate::cel::eval::value::to_json;
        Some(serde_json::json!({
            "Valid": self.valid,
            "Claims": to_json(&self.claims)?,
            "Header": to_json(&self.header)?,
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The value of `jwks.Fetch(url)`.
#[derive(Debug, Clone)]
pub struct JwkSet(pub Arc<KeySet>);

impl Object for JwkSet {
    fn type_name(&self) -> &str {
        "jwks.Set"
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other
            .as_any()
            .downcast_ref::<JwkSet>()
            .is_some_and(|o| Arc::ptr_eq(&o.0, &self.0))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A JSON object as a CEL map, numbers as `double` (as a protobuf
/// `Struct` reads: the claims' and header's form).
pub(crate) fn struct_value(o: &serde_json::Map<String, Json>) -> Value<'static> {
    Value::map(
        o.iter()
            .map(|(k, v)| (Key::String(Str::Owned(Arc::from(k.as_str()))), json(v)))
            .collect::<OwnedMap<'static>>(),
    )
}

/// A JSON value as CEL reads it, numbers as `double` (as cel-go reads
/// JSON).
pub(crate) fn json(j: &Json) -> Value<'static> {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Value::string(s.as_str()),
        Json::Array(a) => Value::list(a.iter().map(json).collect()),
        Json::Object(o) => struct_value(o),
    }
}

pub const FUNCTIONS: &[Function] = &[
    // Both read the process's token and key caches and the clock.
    Function::global("jwt.Decode", 2, decode).impure(),
    Function::global("jwks.Fetch", 1, fetch).impure(),
];

fn decode<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "jwt.Decode";
    let [Value::String(token), keys] = args else {
        return Err(Error::no_overload(F, args));
    };
    let decoded = match keys {
        Value::String(key) => {
            ctx.charge_bytes(token.len() + key.len())?;
            let key = keys::prepared(key).map_err(|e| Error::function(F, e.to_string()))?;
            decode_here(ctx, token, Keys::One(&key))?
        }
        other => match other.downcast::<JwkSet>() {
            Some(set) => {
                ctx.charge_bytes(token.len())?;
                decode_here(ctx, token, Keys::Set(&set.0))?
            }
            None => return Err(Error::no_overload(F, args)),
        },
    };
    Ok(Value::object(Token::from(decoded)))
}

/// The token decoded on this thread: on one that must stay responsive
/// ([`Ctx::may_block`] false), only from the token caches; a signature to
/// check (or a key set to fetch again for an unknown `kid`) gives up, and
/// the evaluation is made again where it may take its time. A token decoded
/// earlier in the same request with the same keys (policies of one API
/// often each decode the bearer token) is answered from the request's own
/// memo, without hashing it again for the process-wide caches.
fn decode_here(ctx: &mut Ctx<'_>, token: &str, keys: Keys<'_>) -> Result<token::Decoded, Error> {
    let source = Source::of(keys);
    if let Some(d) = ctx.cache::<Decodes>().find(token, &source) {
        return Ok(d);
    }
    let decoded = if ctx.may_block() {
        token::decode(token, keys)
    } else {
        token::decode_cached(token, keys).ok_or_else(|| ctx.meter.give_up())?
    };
    ctx.cache::<Decodes>().remember(token, source, &decoded);
    Ok(decoded)
}

/// What a token was checked against, as the request's memo tells keys
/// apart: a key by its fingerprint, a key set by identity (held, so that
/// its address cannot be reused within the request).
enum Source {
    Key([u8; 32]),
    Set(Arc<KeySet>),
}

impl Source {
    fn of(keys: Keys<'_>) -> Source {
        match keys {
            Keys::One(k) => Source::Key(k.fingerprint),
            Keys::Set(s) => Source::Set(s.clone()),
        }
    }
}

/// The same key by fingerprint, the same key set by identity.
impl PartialEq for Source {
    fn eq(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Key(a), Source::Key(b)) => a == b,
            (Source::Set(a), Source::Set(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// What a request worked out once, by a string the policy gave (a token, a
/// URL) and what else tells entries apart: a [`Ctx::cache`], of a few
/// entries at most (past those, the work is done again).
struct Memo<K, V>(Vec<(Box<str>, K, V)>);

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo(Vec::new())
    }
}

impl<K: PartialEq, V: Clone> Memo<K, V> {
    const MAX: usize = 4;

    fn find(&self, s: &str, k: &K) -> Option<V> {
        self.0
            .iter()
            .find(|(s2, k2, _)| &**s2 == s && k2 == k)
            .map(|(_, _, v)| v.clone())
    }

    fn remember(&mut self, s: &str, k: K, v: &V) {
        if self.0.len() < Self::MAX {
            self.0.push((s.into(), k, v.clone()));
        }
    }
}

/// The tokens decoded in one request, by token and what it was checked
/// against.
type Decodes = Memo<Source, token::Decoded>;

/// The key sets fetched in one request, by URL as the policy wrote it:
/// policies of one API often each fetch their issuer's set, and the request
/// then reads it from the process-wide cache once, and uses the same set
/// throughout.
type Fetched = Memo<(), Arc<KeySet>>;

fn fetch<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "jwks.Fetch";
    let [Value::String(url)] = args else {
        return Err(Error::no_overload(F, args));
    };
    if let Some(s) = ctx.cache::<Fetched>().find(url, &()) {
        return Ok(Value::object(JwkSet(s)));
    }
    let set = if ctx.may_block() {
        ctx.host().jwks(url).map_err(|e| Error::function(F, e))?
    } else {
        ctx.host()
            .jwks_cached(url)
            .ok_or_else(|| ctx.meter.give_up())?
    };
    ctx.cache::<Fetched>().remember(url, (), &set);
    Ok(Value::object(JwkSet(set)))
}

/// The library's overloads, for the type checker.
pub const DECLS: &str = "
jwt.Decode(string, string) -> jwt.Token
jwt.Decode(string, jwks.Set) -> jwt.Token
jwks.Fetch(string) -> jwks.Set
";

/// A decoded token's fields; a key set has none.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = {
    use crate::cel::check::cost::Bound::{Fixed, HeaderJson};
    &[
        (
            "jwt.Token",
            &[
                ("Valid", "bool", Fixed),
                ("Claims", "map(string, dyn)", HeaderJson),
                ("Header", "map(string, dyn)", HeaderJson),
            ],
        ),
        ("jwks.Set", &[]),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::{lib, Host, Meter};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn call<'r>(ctx: &mut Ctx<'r>, name: &str, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
        let fs = lib::lookup(name, false, args.len());
        assert_eq!(fs.len(), 1, "{name}");
        (fs[0].f)(ctx, args)
    }

    fn ctx() -> Ctx<'static> {
        Ctx::new(None, Meter::new(1_000_000))
    }

    fn hs256(claims: &Json, secret: &str) -> String {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        encode(&h, claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    /// `j` with every number a double, as claims and headers are read.
    fn doubles(j: &Json) -> Json {
        match j {
            Json::Number(n) => json!(n.as_f64().unwrap()),
            Json::Array(a) => Json::Array(a.iter().map(doubles).collect()),
            Json::Object(o) => {
                Json::Object(o.iter().map(|(k, v)| (k.clone(), doubles(v))).collect())
            }
            other => other.clone(),
        }
    }

    /// What `jwt.Decode` of an HS256 token of [`hs256`] with `claims` gives,
    /// field by field, when it verifies (`valid`) and when it does not.
    fn expected(claims: &Json, valid: bool) -> [(&'static str, Json); 3] {
        [
            ("Valid", json!(valid)),
            ("Claims", if valid { doubles(claims) } else { json!({}) }),
            ("Header", json!({"alg": "HS256", "kid": "k1", "typ": "JWT"})),
        ]
    }

    fn field_json(t: &Value<'_>, name: &str) -> Json {
        let t = t.downcast::<Token>().expect("a token");
        crate::cel::eval::value::to_json(&t.field(name).unwrap()).unwrap()
    }

    fn claims() -> Json {
        let exp = crate::identity::unix_now() as i64 + 3600;
        json!({"sub": "alice", "exp": exp, "n": 3, "f": 1.5, "roles": ["a", "b"],
               "nested": {"x": null, "ok": true, "big": 18446744073709551615u64}})
    }

    #[test]
    fn decode_with_a_secret() {
        let claims = claims();
        let token = hs256(&claims, "s3cret");
        let mut c = ctx();
        let t = call(
            &mut c,
            "jwt.Decode",
            &[Value::string(token.clone()), Value::str("s3cret")],
        )
        .unwrap();
        assert_eq!(t.type_name(), "jwt.Token");
        for (field, want) in expected(&claims, true) {
            assert_eq!(field_json(&t, field), want, "{field}");
        }
        let tok = t.downcast::<Token>().unwrap();
        assert!(tok.valid());
        // Numbers are doubles, as cel-go reads JSON.
        let Value::Map(m) = tok.claims() else {
            panic!("claims are a map")
        };
        assert!(matches!(m.get(&Value::str("n")), Some(Value::Double(d)) if d == 3.0));
        // Another secret: not valid, empty claims, the header still read.
        let bad = call(
            &mut c,
            "jwt.Decode",
            &[Value::string(token.clone()), Value::str("other")],
        )
        .unwrap();
        for (field, want) in expected(&claims, false) {
            assert_eq!(field_json(&bad, field), want, "{field}");
        }
        assert_eq!(field_json(&bad, "Valid"), json!(false));
        assert_eq!(field_json(&bad, "Claims"), json!({}));
        assert_eq!(field_json(&bad, "Header")["kid"], "k1");
        // The same token twice (the second from the token cache) is equal.
        let again = call(
            &mut c,
            "jwt.Decode",
            &[Value::string(token), Value::str("s3cret")],
        )
        .unwrap();
        assert!(crate::cel::eval::value::equals(&t, &again));
        assert!(!crate::cel::eval::value::equals(&t, &bad));
    }

    #[test]
    fn a_token_decoded_twice_in_a_request_is_answered_by_its_keys_only() {
        use base64::Engine;
        let set_doc = |secret: &str| {
            let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
            json!({"keys": [{"kty": "oct", "k": k, "kid": "k1", "alg": "HS256"}]}).to_string()
        };
        let (good, other) = (
            "https://evlibs-memo-good.test/jwks.json",
            "https://evlibs-memo-other.test/jwks.json",
        );
        crate::identity::jwks::preload(good, set_doc("memo-s3cret").as_bytes()).unwrap();
        crate::identity::jwks::preload(other, set_doc("memo-other").as_bytes()).unwrap();
        let token = hs256(&claims(), "memo-s3cret");
        let mut c = ctx();
        let decode = |c: &mut Ctx<'static>, url: &str, key: Option<&str>| {
            let keys = match key {
                Some(k) => Value::string(k),
                None => call(c, "jwks.Fetch", &[Value::string(url)]).unwrap(),
            };
            let t = call(c, "jwt.Decode", &[Value::string(token.clone()), keys]).unwrap();
            field_json(&t, "Valid")
        };
        // Verified against its set; against another set, or a secret that is
        // not its key, in the same request: not valid, memo or not.
        for _ in 0..2 {
            assert_eq!(decode(&mut c, good, None), json!(true));
            assert_eq!(decode(&mut c, other, None), json!(false));
            assert_eq!(decode(&mut c, "", Some("memo-other")), json!(false));
            assert_eq!(decode(&mut c, "", Some("memo-s3cret")), json!(true));
        }
        assert_eq!(
            c.cache::<Decodes>().0.len(),
            4,
            "one entry per token and keys"
        );
        // A request of its own starts with nothing remembered.
        assert!(ctx().cache::<Decodes>().0.is_empty());
    }

    #[test]
    fn an_unusable_key_is_an_error_as_before() {
        let token = hs256(&claims(), "s3cret");
        let pem = "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----";
        let mut c = ctx();
        let e = call(
            &mut c,
            "jwt.Decode",
            &[Value::string(token.clone()), Value::str(pem)],
        )
        .unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::FunctionError);
        assert_eq!(e.function.as_deref(), Some("jwt.Decode"));
        assert_eq!(
            e.message,
            "the key is not a usable PEM public key: not an RSA, EC (P-256, P-384) or \
             Ed25519 public key"
        );
        // Not a string or a key set: for another overload.
        let e = call(&mut c, "jwt.Decode", &[Value::string(token), Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::NoSuchOverload);
    }

    #[test]
    fn a_context_that_must_not_block_gives_up_where_a_fetch_would_be_needed() {
        use base64::Engine;
        let quiet = || Ctx::new(None, Meter::new(1_000_000)).without_blocking();
        // `f(args)` in a context that must not block: it gives up.
        let gives_up = |f: &str, args: &[Value<'static>]| {
            let mut c = quiet();
            let e = call(&mut c, f, args).unwrap_err();
            assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded, "{f}");
            assert!(c.meter.yielded(), "{f}");
        };
        // Never fetched: only a fetch could answer.
        gives_up(
            "jwks.Fetch",
            &[Value::str("https://evlibs-unfetched.test/jwks.json")],
        );

        // A cached set is answered; a token not verified yet is a signature
        // to check, which gives up; once verified (and cached) it decodes.
        let url = "https://evlibs-jwt-quiet.test/jwks.json";
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("jwks-s3cret");
        let doc = json!({"keys": [{"kty": "oct", "k": k, "kid": "k1", "alg": "HS256"}]});
        crate::identity::jwks::preload(url, doc.to_string().as_bytes()).unwrap();
        let mut c = quiet();
        let set = call(&mut c, "jwks.Fetch", &[Value::str(url)]).unwrap();
        assert!(!c.meter.yielded());
        let mut fresh = claims();
        fresh["jti"] = json!("quiet-context-token");
        let token = hs256(&fresh, "jwks-s3cret");
        gives_up("jwt.Decode", &[Value::string(token.clone()), set.clone()]);
        call(
            &mut ctx(),
            "jwt.Decode",
            &[Value::string(token.clone()), set.clone()],
        )
        .unwrap();
        let mut c = quiet();
        let t = call(&mut c, "jwt.Decode", &[Value::string(token), set.clone()]).unwrap();
        assert_eq!(field_json(&t, "Valid"), json!(true));
        assert!(!c.meter.yielded());

        // A `kid` the set lacks would send the decoder to fetch the set again.
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("rotated".into());
        let token = encode(&h, &claims(), &EncodingKey::from_secret(b"jwks-s3cret")).unwrap();
        gives_up("jwt.Decode", &[Value::string(token.clone()), set.clone()]);
        // Where blocking is allowed, the same token is simply not valid.
        let t = call(&mut ctx(), "jwt.Decode", &[Value::string(token), set]).unwrap();
        assert_eq!(field_json(&t, "Valid"), json!(false));
    }

    #[test]
    fn decode_with_a_fetched_key_set() {
        use base64::Engine;
        let url = "https://evlibs-jwt.test/jwks.json";
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("jwks-s3cret");
        let doc = json!({"keys": [{"kty": "oct", "k": k, "kid": "k1", "alg": "HS256"}]});
        crate::identity::jwks::preload(url, doc.to_string().as_bytes()).unwrap();
        let claims = claims();
        let token = hs256(&claims, "jwks-s3cret");
        let mut c = ctx();
        let set = call(&mut c, "jwks.Fetch", &[Value::str(url)]).unwrap();
        assert_eq!(set.type_name(), "jwks.Set");
        let t = call(&mut c, "jwt.Decode", &[Value::string(token.clone()), set]).unwrap();
        for (field, want) in expected(&claims, true) {
            assert_eq!(field_json(&t, field), want, "{field}");
        }
        assert_eq!(field_json(&t, "Valid"), json!(true));
    }

    struct Refusing;
    impl Host for Refusing {
        fn jwks(&self, url: &str) -> Result<Arc<KeySet>, String> {
            Err(format!("refused {url}"))
        }
    }

    #[test]
    fn key_sets_come_from_the_host() {
        let host = Refusing;
        let mut c = Ctx::new(None, Meter::new(1_000)).with_host(&host);
        let e = call(&mut c, "jwks.Fetch", &[Value::str("https://x.test/k")]).unwrap_err();
        assert_eq!(e.function.as_deref(), Some("jwks.Fetch"));
        assert_eq!(e.message, "refused https://x.test/k");
        assert!(lib::lookup("jwks.Fetch", false, 1).iter().all(|f| !f.pure));
        assert!(lib::lookup("jwt.Decode", false, 2).iter().all(|f| !f.pure));
    }

    #[test]
    fn a_small_budget_stops_a_big_token() {
        let mut c = Ctx::new(None, Meter::new(100));
        let big = "a".repeat(60_000);
        let e = call(&mut c, "jwt.Decode", &[Value::string(big), Value::str("k")]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
    }
}
