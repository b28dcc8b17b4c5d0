//! The request and answer of HTTP mode (`spec.evaluation.mode: HTTP`), as
//! the Kyverno Authz Server's HTTP authorizer defines them.
//!
//! ```cel
//! "bar" in object.attributes.Header("foo")
//!   ? http.Allowed().Response()
//!   : http.Denied("not allowed").Response()
//! ```
//!
//! `object` is an `http.CheckRequest`: `object.attributes` holds the
//! method, the headers (a `map(string, list(string))` keyed by the
//! canonical form of each name, `X-Api-Key`, as Go's `net/http` keeps
//! them), the host, the protocol (`HTTP/1.1`), the body (`bytes`) and its
//! length, the scheme, the decoded path, the decoded query parameters
//! (`map(string, list(string))`) and the fragment. `Header(name)` finds a
//! header whatever the case of `name`; `QueryParam(name)` a parameter by
//! its exact name; both give an empty list for none.
//!
//! A validation answers `http.Allowed().Response()` or
//! `http.Denied(reason).Response()` (an `http.CheckResponse` with `ok` or
//! `denied` set) or null. The messages may also be written as literals
//! (`http.CheckRequest{attributes: http.CheckRequestAttributes{...}}`), as
//! the server's input expression does, and the output expression builds an
//! `httpserver.HttpResponse{status, header, body}`.
//!
//! Every value is an [`Object`] that shares what it holds: reading
//! `object.attributes.header` hands out the request's own map, never a copy.
//! The outbound `http.Get`/`http.Post`/`http.Client` of [`super::http`] are
//! the same in both modes; `http.Allowed` and `http.Denied` are HTTP mode's
//! and the `envoy.*` builders Envoy mode's (the checker refuses a policy that
//! mixes them).

use crate::cel::eval::value::{equals, Bin, OwnedMap};
use crate::cel::eval::{Ctx, Error, Function, Key, Map, Object, Str, Value};
use std::any::Any;
use std::sync::Arc;

pub const CHECK_REQUEST: &str = "http.CheckRequest";
pub const ATTRIBUTES: &str = "http.CheckRequestAttributes";
pub const CHECK_RESPONSE: &str = "http.CheckResponse";
pub const RESPONSE_OK: &str = "http.CheckResponseOk";
pub const RESPONSE_DENIED: &str = "http.CheckResponseDenied";
pub const SERVER_RESPONSE: &str = "httpserver.HttpResponse";

/// A `map(string, list(string))` (headers, query parameters), held as the
/// CEL map it is read as.
#[derive(Clone)]
pub struct MultiMap(Arc<OwnedMap<'static>>);

impl Default for MultiMap {
    fn default() -> Self {
        MultiMap(Arc::new(OwnedMap::default()))
    }
}

impl std::fmt::Debug for MultiMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values may be credentials.
        f.debug_list().entries(self.names()).finish()
    }
}

impl PartialEq for MultiMap {
    fn eq(&self, other: &Self) -> bool {
        equals(&self.value(), &other.value())
    }
}

impl MultiMap {
    /// The map of `pairs`, the values of a name repeated kept in order.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut m = OwnedMap::default();
        let mut lists: indexmap::IndexMap<String, Vec<Value<'static>>> = indexmap::IndexMap::new();
        for (k, v) in pairs {
            lists.entry(k).or_default().push(Value::string(v));
        }
        for (k, vs) in lists {
            m.insert(Key::String(Str::from(k)), Value::list(vs));
        }
        MultiMap(Arc::new(m))
    }

    /// The map as CEL reads it.
    pub fn value(&self) -> Value<'static> {
        Value::Map(Map::Owned(self.0.clone()))
    }

    /// The values of `name` (exactly that key); none when absent.
    pub fn get(&self, name: &str) -> Option<Value<'static>> {
        self.0
            .get(&Key::String(Str::Owned(Arc::from(name))))
            .cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().filter_map(|k| match k {
            Key::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Every name with each of its values, in order.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        for (k, v) in self.0.iter() {
            let (Key::String(k), Value::List(vs)) = (k, v) else {
                continue;
            };
            for v in vs.iter() {
                if let Value::String(s) = v {
                    out.push((k.as_str(), s.as_str()));
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A map an expression built, which must be a `map(string,
    /// list(string))`; the error says what is not.
    pub fn from_value(ctx: &mut Ctx<'_>, v: &Value<'_>) -> Result<Self, String> {
        let Value::Map(m) = v else {
            return Err(format!(
                "must be a map(string, list(string)), not {}",
                v.type_name()
            ));
        };
        let entries = m.entries();
        ctx.charge(entries.len() as u64)
            .map_err(|e| e.message.clone())?;
        let mut out = OwnedMap::default();
        for (k, v) in entries {
            let Value::String(k) = k else {
                return Err(format!("keys must be strings, not {}", k.type_name()));
            };
            let Value::List(items) = v else {
                return Err(format!(
                    "the value of {:?} must be a list(string), not {}",
                    k.as_str(),
                    v.type_name()
                ));
            };
            ctx.charge(items.len() as u64)
                .map_err(|e| e.message.clone())?;
            let mut list = Vec::with_capacity(items.len());
            for item in items.iter() {
                match item {
                    Value::String(s) => list.push(Value::string(s.as_str())),
                    other => {
                        return Err(format!(
                            "the values of {:?} must be strings, not {}",
                            k.as_str(),
                            other.type_name()
                        ))
                    }
                }
            }
            out.insert(Key::String(Str::from(k.to_string())), Value::list(list));
        }
        Ok(MultiMap(Arc::new(out)))
    }

    fn to_json(&self) -> serde_json::Value {
        crate::cel::eval::value::to_json(&self.value()).unwrap_or_default()
    }
}

/// `http.CheckRequest`: the request HTTP-mode policies decide.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckRequest {
    pub attributes: Arc<Attributes>,
}

/// `http.CheckRequestAttributes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attributes {
    pub method: Arc<str>,
    /// By canonical name (`X-Api-Key`); the `Host` header is [`host`](Self::host).
    pub header: MultiMap,
    pub host: Arc<str>,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: Arc<str>,
    pub content_length: i64,
    pub body: Arc<[u8]>,
    pub scheme: Arc<str>,
    /// Percent-decoded.
    pub path: Arc<str>,
    /// Decoded names and values.
    pub query: MultiMap,
    pub fragment: Arc<str>,
}

impl Default for Attributes {
    fn default() -> Self {
        let empty: Arc<str> = Arc::from("");
        Attributes {
            method: empty.clone(),
            header: MultiMap::default(),
            host: empty.clone(),
            protocol: empty.clone(),
            content_length: 0,
            body: Arc::from(&[][..]),
            scheme: empty.clone(),
            path: empty.clone(),
            query: MultiMap::default(),
            fragment: empty,
        }
    }
}

impl Attributes {
    /// The values of header `name`, matched as Go's `http.Header.Values`
    /// matches it: by its canonical form.
    pub fn header_values(&self, name: &str) -> Option<Value<'static>> {
        self.header.get(&canonical_header_key(name))
    }
}

/// `http.CheckResponse`: `ok` or `denied` is set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckResponse {
    pub ok: Option<ResponseOk>,
    pub denied: Option<ResponseDenied>,
}

impl CheckResponse {
    pub fn allowed() -> Self {
        CheckResponse {
            ok: Some(ResponseOk),
            denied: None,
        }
    }

    /// Whether the response allows the request: `ok` set and `denied` not.
    pub fn is_allowed(&self) -> bool {
        self.denied.is_none() && self.ok.is_some()
    }
}

/// `http.CheckResponseOk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseOk;

/// `http.CheckResponseDenied`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseDenied {
    pub reason: String,
}

/// `httpserver.HttpResponse`: what the output expression answers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerResponse {
    pub status: i64,
    pub header: MultiMap,
    pub body: Arc<[u8]>,
}

fn s(v: &Arc<str>) -> Value<'static> {
    Value::String(Str::Owned(v.clone()))
}

impl Object for CheckRequest {
    fn type_name(&self) -> &str {
        CHECK_REQUEST
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        (name == "attributes").then(|| Value::Object(self.attributes.clone()))
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<CheckRequest>() == Some(self)
    }
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "attributes": self.attributes.to_json()? }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Object for Attributes {
    fn type_name(&self) -> &str {
        ATTRIBUTES
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        Some(match name {
            "method" => s(&self.method),
            "header" => self.header.value(),
            "host" => s(&self.host),
            "protocol" => s(&self.protocol),
            "contentLength" => Value::Int(self.content_length),
            "body" => Value::Bytes(Bin::Owned(self.body.clone())),
            "scheme" => s(&self.scheme),
            "path" => s(&self.path),
            "query" => self.query.value(),
            "fragment" => s(&self.fragment),
            _ => return None,
        })
    }
    /// Set when not the zero value, as for the fields of a Go struct.
    fn has(&self, name: &str) -> Option<bool> {
        Some(match name {
            "method" => !self.method.is_empty(),
            "header" => !self.header.is_empty(),
            "host" => !self.host.is_empty(),
            "protocol" => !self.protocol.is_empty(),
            "contentLength" => self.content_length != 0,
            "body" => !self.body.is_empty(),
            "scheme" => !self.scheme.is_empty(),
            "path" => !self.path.is_empty(),
            "query" => !self.query.is_empty(),
            "fragment" => !self.fragment.is_empty(),
            _ => return None,
        })
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<Attributes>() == Some(self)
    }
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "method": &*self.method,
            "header": self.header.to_json(),
            "host": &*self.host,
            "protocol": &*self.protocol,
            "contentLength": self.content_length,
            "body": String::from_utf8_lossy(&self.body),
            "scheme": &*self.scheme,
            "path": &*self.path,
            "query": self.query.to_json(),
            "fragment": &*self.fragment,
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Object for CheckResponse {
    fn type_name(&self) -> &str {
        CHECK_RESPONSE
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        match name {
            // An unset half reads as its empty message (`has()` tells).
            "ok" => Some(Value::object(ResponseOk)),
            "denied" => Some(Value::object(self.denied.clone().unwrap_or_default())),
            _ => None,
        }
    }
    fn has(&self, name: &str) -> Option<bool> {
        match name {
            "ok" => Some(self.ok.is_some()),
            "denied" => Some(self.denied.is_some()),
            _ => None,
        }
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<CheckResponse>() == Some(self)
    }
    fn to_json(&self) -> Option<serde_json::Value> {
        let mut m = serde_json::Map::new();
        if self.ok.is_some() {
            m.insert("ok".into(), serde_json::json!({}));
        }
        if let Some(d) = &self.denied {
            m.insert("denied".into(), serde_json::json!({ "reason": d.reason }));
        }
        Some(serde_json::Value::Object(m))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

response_object!(ResponseOk, RESPONSE_OK);

impl Object for ResponseDenied {
    fn type_name(&self) -> &str {
        RESPONSE_DENIED
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        (name == "reason").then(|| Value::string(self.reason.as_str()))
    }
    fn has(&self, name: &str) -> Option<bool> {
        (name == "reason").then_some(!self.reason.is_empty())
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<ResponseDenied>() == Some(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Object for ServerResponse {
    fn type_name(&self) -> &str {
        SERVER_RESPONSE
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        Some(match name {
            "status" => Value::Int(self.status),
            "header" => self.header.value(),
            "body" => Value::Bytes(Bin::Owned(self.body.clone())),
            _ => return None,
        })
    }
    fn has(&self, name: &str) -> Option<bool> {
        Some(match name {
            "status" => self.status != 0,
            "header" => !self.header.is_empty(),
            "body" => !self.body.is_empty(),
            _ => return None,
        })
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<ServerResponse>() == Some(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A header name in the canonical form Go's `net/http` keys headers by
/// (`textproto.CanonicalMIMEHeaderKey`): the first letter and each letter
/// after a `-` upper case, the others lower case. A name holding a byte
/// that cannot be in a header name is left as it is, as Go leaves it.
pub fn canonical_header_key(name: &str) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return name.to_owned();
    }
    let mut upper = true;
    name.bytes()
        .map(|b| {
            let c = if upper {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            };
            upper = b == b'-';
            c as char
        })
        .collect()
}

/// The `http.CheckResponse` a validation returned; `Err` gives back any
/// other value.
pub fn into_check_response(v: Value<'_>) -> Result<CheckResponse, Value<'_>> {
    match v.downcast::<CheckResponse>() {
        Some(r) => Ok(r.clone()),
        None => Err(v),
    }
}

/// The `http.CheckRequest` an input expression returned (a literal, or
/// `object` itself).
pub fn into_check_request(v: Value<'_>) -> Result<CheckRequest, Value<'_>> {
    match v.downcast::<CheckRequest>() {
        Some(r) => Ok(r.clone()),
        None => Err(v),
    }
}

pub fn into_server_response(v: Value<'_>) -> Result<ServerResponse, Value<'_>> {
    match v.downcast::<ServerResponse>() {
        Some(r) => Ok(r.clone()),
        None => Err(v),
    }
}

pub const FUNCTIONS: &[Function] = &[
    Function::global("http.Allowed", 0, allowed),
    Function::global("http.Denied", 1, denied),
    Function::method("Header", 1, header),
    Function::method("QueryParam", 1, query_param),
];

fn allowed<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match args {
        [] => Ok(Value::object(ResponseOk)),
        _ => Err(Error::no_overload("http.Allowed", args)),
    }
}

fn denied<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match args {
        [Value::String(reason)] => Ok(Value::object(ResponseDenied {
            reason: reason.to_string(),
        })),
        _ => Err(Error::no_overload("http.Denied", args)),
    }
}

fn attributes<'a>(f: &str, args: &'a [Value<'_>]) -> Result<(&'a Attributes, &'a str), Error> {
    match args {
        [a, Value::String(name)] => match a.downcast::<Attributes>() {
            Some(a) => Ok((a, name.as_str())),
            None => Err(Error::no_overload(f, args)),
        },
        _ => Err(Error::no_overload(f, args)),
    }
}

fn header<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (a, name) = attributes("Header", args)?;
    ctx.charge_bytes(name.len())?;
    Ok(a.header_values(name)
        .unwrap_or_else(|| Value::list(Vec::new())))
}

fn query_param<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (a, name) = attributes("QueryParam", args)?;
    Ok(a.query.get(name).unwrap_or_else(|| Value::list(Vec::new())))
}

/// `.Response()` of `http.Allowed()` and `http.Denied(reason)` (reached
/// through the `Response` method that the `envoy` library registers, which
/// hands on every receiver that is not its own).
pub fn response<'r>(args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match args {
        [r] if r.downcast::<ResponseOk>().is_some() => Ok(Value::object(CheckResponse::allowed())),
        [r] => match r.downcast::<ResponseDenied>() {
            Some(d) => Ok(Value::object(CheckResponse {
                ok: None,
                denied: Some(d.clone()),
            })),
            None => Err(Error::no_overload("Response", args)),
        },
        _ => Err(Error::no_overload("Response", args)),
    }
}

/// The checker's declarations of HTTP mode's functions.
pub const DECLS: &str = "
http.Allowed() -> http.CheckResponseOk
http.Denied(string) -> http.CheckResponseDenied
(http.CheckRequestAttributes).Header(string) -> list(string)
(http.CheckRequestAttributes).QueryParam(string) -> list(string)
(http.CheckResponseOk).Response() -> http.CheckResponse
(http.CheckResponseDenied).Response() -> http.CheckResponse
";

/// The functions only HTTP-mode expressions may call.
pub const HTTP_MODE_FUNCTIONS: &[&str] = &["http.Allowed", "http.Denied"];

pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = {
    use crate::cel::check::cost::Bound::{Body, Fixed, Header, HeaderList};
    &[
        (CHECK_REQUEST, &[("attributes", ATTRIBUTES, Fixed)]),
        (
            ATTRIBUTES,
            &[
                ("method", "string", Header),
                ("header", "map(string, list(string))", HeaderList),
                ("host", "string", Header),
                ("protocol", "string", Header),
                ("contentLength", "int", Fixed),
                ("body", "bytes", Body),
                ("scheme", "string", Header),
                ("path", "string", Header),
                ("query", "map(string, list(string))", HeaderList),
                ("fragment", "string", Header),
            ],
        ),
        (
            CHECK_RESPONSE,
            &[
                ("ok", RESPONSE_OK, Fixed),
                ("denied", RESPONSE_DENIED, Fixed),
            ],
        ),
        (RESPONSE_OK, &[]),
        (RESPONSE_DENIED, &[("reason", "string", Header)]),
        (
            SERVER_RESPONSE,
            &[
                ("status", "int", Fixed),
                ("header", "map(string, list(string))", HeaderList),
                ("body", "bytes", Body),
            ],
        ),
    ]
};

/// Builds the HTTP-mode message `name` of a literal from its fields (name
/// and value; fields set to null are left out by the caller).
pub fn build<'r>(
    ctx: &mut Ctx<'r>,
    name: &'static str,
    fields: Vec<(&'static str, Value<'r>)>,
) -> Result<Value<'r>, Error> {
    let refused =
        |field: &str, why: String| Error::function(name, format!("{name}.{field}: {why}"));
    let string = |field: &str, v: &Value<'_>| match v {
        Value::String(s) => Ok(Arc::<str>::from(s.as_str())),
        other => Err(refused(
            field,
            format!("takes a string, not {}", other.type_name()),
        )),
    };
    Ok(match name {
        CHECK_REQUEST => {
            let mut r = CheckRequest::default();
            for (f, v) in fields {
                match v.downcast::<Attributes>() {
                    Some(a) if f == "attributes" => r.attributes = Arc::new(a.clone()),
                    _ => return Err(refused(f, format!("cannot take {}", v.type_name()))),
                }
            }
            Value::object(r)
        }
        ATTRIBUTES => {
            let mut a = Attributes::default();
            for (f, v) in fields {
                match f {
                    "method" => a.method = string(f, &v)?,
                    "host" => a.host = string(f, &v)?,
                    "protocol" => a.protocol = string(f, &v)?,
                    "scheme" => a.scheme = string(f, &v)?,
                    "path" => a.path = string(f, &v)?,
                    "fragment" => a.fragment = string(f, &v)?,
                    "header" => {
                        a.header = MultiMap::from_value(ctx, &v).map_err(|e| refused(f, e))?
                    }
                    "query" => {
                        a.query = MultiMap::from_value(ctx, &v).map_err(|e| refused(f, e))?
                    }
                    "contentLength" => match v {
                        Value::Int(n) => a.content_length = n,
                        other => {
                            return Err(refused(
                                f,
                                format!("takes an int, not {}", other.type_name()),
                            ))
                        }
                    },
                    "body" => match &v {
                        Value::Bytes(b) => a.body = Arc::from(b.as_bytes()),
                        other => {
                            return Err(refused(
                                f,
                                format!("takes bytes, not {}", other.type_name()),
                            ))
                        }
                    },
                    other => return Err(refused(other, "is no field".into())),
                }
            }
            Value::object(a)
        }
        CHECK_RESPONSE => {
            let mut r = CheckResponse::default();
            for (f, v) in fields {
                match f {
                    "ok" if v.downcast::<ResponseOk>().is_some() => r.ok = Some(ResponseOk),
                    "denied" => match v.downcast::<ResponseDenied>() {
                        Some(d) => r.denied = Some(d.clone()),
                        None => return Err(refused(f, format!("cannot take {}", v.type_name()))),
                    },
                    _ => return Err(refused(f, format!("cannot take {}", v.type_name()))),
                }
            }
            if r.ok.is_some() == r.denied.is_some() {
                return Err(refused("ok", "set exactly one of ok and denied".into()));
            }
            Value::object(r)
        }
        RESPONSE_OK => match fields.first() {
            None => Value::object(ResponseOk),
            Some((f, _)) => return Err(refused(f, "is no field".into())),
        },
        RESPONSE_DENIED => {
            let mut d = ResponseDenied::default();
            for (f, v) in fields {
                d.reason = string(f, &v)?.to_string();
            }
            Value::object(d)
        }
        SERVER_RESPONSE => {
            let mut r = ServerResponse::default();
            for (f, v) in fields {
                match (f, &v) {
                    ("status", Value::Int(n)) => r.status = *n,
                    ("header", _) => {
                        r.header = MultiMap::from_value(ctx, &v).map_err(|e| refused(f, e))?
                    }
                    ("body", Value::Bytes(b)) => r.body = Arc::from(b.as_bytes()),
                    (f, other) => {
                        return Err(refused(f, format!("cannot take {}", other.type_name())))
                    }
                }
            }
            Value::object(r)
        }
        other => return Err(Error::internal(format!("{other} is no HTTP-mode message"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::{test_global, test_method};
    use crate::cel::eval::Meter;

    fn attrs() -> Attributes {
        Attributes {
            header: MultiMap::from_pairs([
                ("X-Api-Key".to_owned(), "k1".to_owned()),
                ("Accept".to_owned(), "a".to_owned()),
                ("Accept".to_owned(), "b".to_owned()),
            ]),
            query: MultiMap::from_pairs([("foo".to_owned(), "bar".to_owned())]),
            ..Default::default()
        }
    }

    fn strings(v: Value<'_>) -> Vec<String> {
        match v {
            Value::List(l) => l
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.to_string(),
                    other => panic!("{other:?}"),
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn canonical_keys_are_gos() {
        for (name, want) in [
            ("x-api-key", "X-Api-Key"),
            ("X-API-KEY", "X-Api-Key"),
            ("content-type", "Content-Type"),
            ("foo", "Foo"),
            ("a--b", "A--B"),
            ("x_y", "X_y"),
            ("bad name", "bad name"),
            ("", ""),
        ] {
            assert_eq!(canonical_header_key(name), want, "{name}");
        }
    }

    #[test]
    fn header_matches_any_case_and_query_param_the_exact_name() {
        let a = Value::object(attrs());
        for name in ["x-api-key", "X-API-KEY", "X-Api-Key"] {
            let v = test_method("Header", &[a.clone(), Value::str(name)]).unwrap();
            assert_eq!(strings(v), ["k1"], "{name}");
        }
        let v = test_method("Header", &[a.clone(), Value::str("accept")]).unwrap();
        assert_eq!(strings(v), ["a", "b"]);
        let v = test_method("Header", &[a.clone(), Value::str("missing")]).unwrap();
        assert!(strings(v).is_empty());
        let v = test_method("QueryParam", &[a.clone(), Value::str("foo")]).unwrap();
        assert_eq!(strings(v), ["bar"]);
        let v = test_method("QueryParam", &[a.clone(), Value::str("Foo")]).unwrap();
        assert!(strings(v).is_empty());
        let e = test_method("Header", &[Value::str("x"), Value::str("a")]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::NoSuchOverload);
    }

    #[test]
    fn allowed_and_denied_make_responses() {
        let ok = test_global("http.Allowed", &[]).unwrap();
        let r = into_check_response(response(&[ok]).unwrap()).unwrap();
        assert!(r.is_allowed());
        let d = test_global("http.Denied", &[Value::str("no")]).unwrap();
        let r = into_check_response(response(&[d]).unwrap()).unwrap();
        assert_eq!(r.denied.as_ref().unwrap().reason, "no");
        assert!(!r.is_allowed());
        assert!(test_global("http.Denied", &[Value::Int(1)]).is_err());
        assert!(response(&[Value::Int(1)]).is_err());
    }

    #[test]
    fn a_long_header_name_is_charged() {
        let a = Value::object(attrs());
        let name = "x".repeat(100_000);
        let mut ctx = Ctx::new(None, Meter::new(100));
        let e = crate::cel::eval::lib::call(&mut ctx, "Header", true, &[a, Value::str(&name)])
            .unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
    }

    #[test]
    fn literals_build_and_refuse() {
        let mut ctx = Ctx::new(None, Meter::new(1_000_000));
        let header = Value::map(OwnedMap::from_iter([(
            Key::String(Str::from("X-A")),
            Value::list(vec![Value::str("1")]),
        )]));
        let a = build(
            &mut ctx,
            ATTRIBUTES,
            vec![("method", Value::str("GET")), ("header", header)],
        )
        .unwrap();
        let got = a.downcast::<Attributes>().unwrap();
        assert_eq!(&*got.method, "GET");
        assert_eq!(got.header.pairs(), [("X-A", "1")]);
        let bad = Value::map(OwnedMap::from_iter([(
            Key::String(Str::from("X-A")),
            Value::str("1"),
        )]));
        let e = build(&mut ctx, ATTRIBUTES, vec![("header", bad)]).unwrap_err();
        assert!(e.message.contains("list(string)"), "{}", e.message);
        let e = build(&mut ctx, CHECK_RESPONSE, vec![]).unwrap_err();
        assert!(e.message.contains("exactly one"), "{}", e.message);
        let r = build(
            &mut ctx,
            SERVER_RESPONSE,
            vec![
                ("status", Value::Int(401)),
                ("body", Value::bytes(b"no".to_vec())),
            ],
        )
        .unwrap();
        let r = into_server_response(r).unwrap();
        assert_eq!((r.status, &*r.body), (401, &b"no"[..]));
    }
}
