//! The `jwt` and `jwks` CEL libraries (the verification itself is in
//! [`crate::identity`]).
//!
//! ```cel
//! jwt.Decode(token, "hmac-secret")          // or a PEM public key
//! jwt.Decode(token, jwks.Fetch("https://issuer/.well-known/jwks.json"))
//! ```
//!
//! `jwt.Decode` returns a map-like value with three entries:
//! `Valid` (bool), `Claims` (map; JSON numbers are doubles, as in the Kyverno
//! Authz Server) and `Header` (map). Field selection, `[]`, `has()`, `in`,
//! `size()`, comprehensions and the optional syntax
//! (`token.Claims.?role.orValue("")`) all work on it. The claims and header
//! are built once per verified token and shared with the token cache, so a
//! cached token costs no JSON parsing; reading them through a variable (as
//! policies do) copies nothing but the leaf values used.
//!
//! `jwks.Fetch(url)` returns an opaque `jwks.Set`, meant to be passed to
//! `jwt.Decode`.
//!
//! A token that does not verify is `Valid == false`; evaluation errors are
//! kept for faults: an unusable key string, a refused or unreachable JWKS URL
//! (plain `http` is refused unless allowed, see [`crate::identity::url`]).
//! Errors name a JWKS URL without its query.

use crate::identity::jwks::{self, KeySet};
use crate::identity::keys;
use crate::identity::token::{self, Decoded, Keys};
use cel::common::traits::{Container, Indexer, Iterable, Iterator as CelIterator, Sizer};
use cel::common::types::{CelBool, CelInt, CelMap, CelString, Type, MAP_TYPE, STRING_TYPE};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::{DeclarationError, Env, ExecutionError};
use std::any::Any;
use std::sync::{Arc, LazyLock};

const SET: Type = Type::new_struct_type("jwks.Set");
static SET_T: Type = SET;

/// The value of `jwt.Decode(...)`: `Valid`, `Claims`, `Header`.
#[derive(Debug, Clone)]
pub struct Token {
    valid: CelBool,
    claims: Arc<CelMap<'static>>,
    header: Arc<CelMap<'static>>,
}

impl Token {
    pub fn valid(&self) -> bool {
        *self.valid.inner()
    }
    pub fn claims(&self) -> &CelMap<'static> {
        &self.claims
    }
    pub fn header(&self) -> &CelMap<'static> {
        &self.header
    }
}

impl From<Decoded> for Token {
    fn from(d: Decoded) -> Self {
        Token {
            valid: CelBool::from(d.valid),
            claims: d.claims,
            header: d.header,
        }
    }
}

const FIELDS: [&str; 3] = ["Valid", "Claims", "Header"];
static FIELD_KEYS: LazyLock<[CelString<'static>; 3]> =
    LazyLock::new(|| FIELDS.map(CelString::from));

impl Token {
    fn field(&self, name: &str) -> Option<&(dyn Val + 'static)> {
        match name {
            "Valid" => Some(&self.valid),
            "Claims" => Some(&*self.claims),
            "Header" => Some(&*self.header),
            _ => None,
        }
    }
}

impl Indexer for Token {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = super::string_key(idx)?;
        self.field(name)
            .map(CowVal::Borrowed)
            .ok_or_else(|| ExecutionError::no_such_key(name))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = super::string_key(idx)?;
        self.field(name)
            .map(|v| v.clone_as_boxed())
            .ok_or_else(|| ExecutionError::no_such_key(name))
    }
}

impl Container for Token {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(value
            .downcast_ref::<CelString>()
            .is_some_and(|k| FIELDS.contains(&k.inner())))
    }
}

impl Sizer for Token {
    fn size(&self) -> CelInt {
        CelInt::from(FIELDS.len() as i64)
    }
}

struct FieldIter(std::slice::Iter<'static, CelString<'static>>);

impl<'b, 'v> CelIterator<'b, 'v> for FieldIter {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.0.next().map(|k| k as &(dyn Val + 'v))
    }
}

impl Iterable for Token {
    fn iter<'b, 'v>(&'b self) -> Box<dyn CelIterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(FieldIter(FIELD_KEYS.iter()))
    }
}

impl Val for Token {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }
    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }
    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }
    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Token>().is_some_and(|o| {
            o.valid() == self.valid()
                && self.claims.equals(&*o.claims)
                && self.header.equals(&*o.header)
        })
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Token {}

/// The value of `jwks.Fetch(url)`.
#[derive(Debug, Clone)]
pub struct JwkSet(pub Arc<KeySet>);

impl Val for JwkSet {
    fn get_type(&self) -> &Type {
        &SET_T
    }
    fn cel_type() -> &'static Type {
        &SET_T
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other
            .downcast_ref::<JwkSet>()
            .is_some_and(|o| Arc::ptr_eq(&o.0, &self.0))
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for JwkSet {}

type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;
type Ret<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

fn string_arg<'a>(
    f: &str,
    args: &'a [CowVal<'_, '_>],
    i: usize,
) -> Result<&'a str, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::function_error(f, format!("argument {i} must be a string")))
}

pub fn extension(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_overload(
        "jwt.Decode",
        "jwt_decode_string_string",
        vec![STRING_TYPE, STRING_TYPE],
        decode_with_key,
    )?;
    env.add_overload(
        "jwt.Decode",
        "jwt_decode_string_jwks_set",
        vec![STRING_TYPE, SET],
        decode_with_set,
    )?;
    env.add_overload("jwks.Fetch", "jwks_fetch_string", vec![STRING_TYPE], fetch)?;
    Ok(())
}

fn decode_with_key<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    const F: &str = "jwt.Decode";
    let token = string_arg(F, &args, 0)?;
    let key = keys::prepared(string_arg(F, &args, 1)?)
        .map_err(|e| ExecutionError::function_error(F, e.to_string()))?;
    Ok(CowVal::owned(Token::from(token::decode(
        token,
        Keys::One(&key),
    ))))
}

fn decode_with_set<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    const F: &str = "jwt.Decode";
    let token = string_arg(F, &args, 0)?;
    let set = args
        .get(1)
        .and_then(|a| a.downcast_ref::<JwkSet>())
        .ok_or_else(|| ExecutionError::function_error(F, "argument 1 must be a jwks.Set"))?;
    Ok(CowVal::owned(Token::from(token::decode(
        token,
        Keys::Set(&set.0),
    ))))
}

fn fetch<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    const F: &str = "jwks.Fetch";
    let url = string_arg(F, &args, 0)?;
    jwks::fetch(url)
        .map(|s| CowVal::owned(JwkSet(s)))
        .map_err(|e| ExecutionError::function_error(F, e.to_string()))
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
