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
/// `Struct` reads: the claims' and header's form, identical to
/// [`crate::cel::convert::json_object_to_map`]'s).
pub(crate) fn struct_value(o: &serde_json::Map<String, Json>) -> Value<'static> {
    Value::map(
        o.iter()
            .map(|(k, v)| (Key::String(Str::Owned(Arc::from(k.as_str()))), json(v)))
            .collect::<OwnedMap<'static>>(),
    )
}

fn json(j: &Json) -> Value<'static> {
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
            token::decode(token, Keys::One(&key))
        }
        other => match other.downcast::<JwkSet>() {
            Some(set) => {
                ctx.charge_bytes(token.len())?;
                token::decode(token, Keys::Set(&set.0))
            }
            None => return Err(Error::no_overload(F, args)),
        },
    };
    Ok(Value::object(Token::from(decoded)))
}

fn fetch<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "jwks.Fetch";
    let [Value::String(url)] = args else {
        return Err(Error::no_overload(F, args));
    };
    ctx.host()
        .jwks(url)
        .map(|s| Value::object(JwkSet(s)))
        .map_err(|e| Error::function(F, e))
}
