//! The `mcp` library: Model Context Protocol requests (JSON-RPC 2.0)
//! read from the request body.
//!
//! ```cel
//! mcp.Parse(object.attributes.request.http.body).ToolCall.Name
//! variables.req.ToolCall.GetStringArgument("repo", "")
//! mcp.Unauthorized("https://mcp.example.com/.well-known/oauth-protected-resource").Response()
//! ```
//!
//! The checks, the refusals and their messages are
//! [`crate::cel::mcp`]'s; this module turns a checked message into values.
//!
//! **Parsed once per request.** `mcp.Parse` given the request's own `body`
//! or `raw_body` (read in place, directly or through a variable: recognised
//! by address and length) parses it on the first call and keeps the result,
//! a refusal too, in the context's cache for the rest of the request; the
//! body's bytes are charged on that first call only. Any other string is
//! parsed (and charged) on each call. A body Envoy marked partial
//! (`x-envoy-auth-partial-body: true` on the request) is refused.
//!
//! **Result.** An `mcp.MCPRequest` object with `Method`, `ID`, `Kind`,
//! `Name` and one section per method (`ToolCall`, `ResourceRead`,
//! `PromptGet`, `Initialize`, `Paginated`, `SetLogLevel`), each an object
//! of its own type. A section the message does not have is an object of
//! type `null_type` that has no fields: `has(req.ToolCall.Name)` is false,
//! `req.ToolCall.?Name` is empty, `req.ToolCall.Name` is an error.
//! JSON numbers in arguments are `int` when integral, `uint` beyond `int`,
//! else `double`.

use crate::cel::envoy::DeniedResponse;
use crate::cel::eval::lib::envoy::{legacy_json, Refused};
use crate::cel::eval::value::{from_json, to_json, Bin};
use crate::cel::eval::{Ctx, Error, Function, Map, Object, Value};
use crate::cel::mcp::{self as old, Message, MessageKind, SectionKind, Slot};
use serde_json::Value as Json;
use std::any::Any;
use std::sync::Arc;

/// `mcp.Parse(body)`: one parsed MCP message, shared by every value handed
/// out for it.
#[derive(Debug)]
pub struct Request {
    kind: MessageKind,
    method: Value<'static>,
    id: Value<'static>,
    kind_val: Value<'static>,
    name: Value<'static>,
    section: Option<Arc<Section>>,
}

/// A method's parameters (`req.ToolCall`, ...).
#[derive(Debug)]
pub struct Section {
    kind: SectionKind,
    fields: Vec<(&'static str, Value<'static>)>,
}

/// A section the message does not have: `null_type`, with no fields.
#[derive(Debug)]
pub struct Absent;

impl Request {
    fn from_message(m: Message) -> Request {
        Request {
            kind: m.kind,
            kind_val: Value::str(m.kind.as_str()),
            method: Value::string(m.method),
            id: from_json(&m.id),
            name: Value::string(m.name),
            section: m.section.map(|(kind, fields)| {
                Arc::new(Section {
                    kind,
                    fields: fields.iter().map(|(k, v)| (*k, from_json(v))).collect(),
                })
            }),
        }
    }

    pub fn method(&self) -> &str {
        self.method.as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The tool's name for `tools/call`.
    pub fn tool_name(&self) -> Option<&str> {
        self.section
            .as_ref()
            .filter(|s| s.kind == SectionKind::ToolCall)
            .and_then(|s| s.get("Name"))
            .and_then(Value::as_str)
    }

    fn section(&self, kind: SectionKind) -> Value<'static> {
        match &self.section {
            Some(s) if s.kind == kind => Value::Object(s.clone()),
            _ => Value::object(Absent),
        }
    }

    /// The arguments the getters read: `tools/call`'s, else `prompts/get`'s.
    fn arguments(&self) -> Option<&Value<'static>> {
        self.section
            .as_ref()
            .filter(|s| matches!(s.kind, SectionKind::ToolCall | SectionKind::PromptGet))
            .and_then(|s| s.get("Arguments"))
    }

    /// As [`crate::cel::mcp::McpRequest::to_json`] writes it.
    pub fn to_json(&self) -> Json {
        let mut out = serde_json::Map::new();
        out.insert("Method".into(), Json::String(self.method().to_owned()));
        out.insert("ID".into(), to_json(&self.id).unwrap_or(Json::Null));
        out.insert("Kind".into(), Json::String(self.kind.as_str().to_owned()));
        out.insert(
            "Name".into(),
            Json::String(self.name.as_str().unwrap_or_default().to_owned()),
        );
        for (kind, field, _) in SectionKind::ALL {
            let j = match &self.section {
                Some(s) if s.kind == kind => s.to_json(),
                _ => Json::Null,
            };
            out.insert(field.into(), j);
        }
        Json::Object(out)
    }
}

impl Section {
    fn get(&self, name: &str) -> Option<&Value<'static>> {
        self.fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn to_json(&self) -> Json {
        Json::Object(
            self.fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), to_json(v).unwrap_or(Json::Null)))
                .collect(),
        )
    }
}

impl Object for Request {
    fn type_name(&self) -> &str {
        "mcp.MCPRequest"
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        Some(match name {
            "Method" => self.method.clone(),
            "ID" => self.id.clone(),
            "Kind" => self.kind_val.clone(),
            "Name" => self.name.clone(),
            _ => {
                let (kind, _, _) = SectionKind::ALL.into_iter().find(|(_, f, _)| *f == name)?;
                self.section(kind)
            }
        })
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other
            .as_any()
            .downcast_ref::<Request>()
            .is_some_and(|o| std::ptr::eq(self, o) || self.to_json() == o.to_json())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Object for Section {
    fn type_name(&self) -> &str {
        SectionKind::ALL
            .iter()
            .find(|(k, _, _)| *k == self.kind)
            .map_or("mcp.Section", |(_, _, t)| t)
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        self.get(name).cloned()
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<Section>().is_some_and(|o| {
            o.kind == self.kind
                && o.fields.len() == self.fields.len()
                && self
                    .fields
                    .iter()
                    .zip(&o.fields)
                    .all(|((ka, va), (kb, vb))| ka == kb && crate::cel::eval::value::equals(va, vb))
        })
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Object for Absent {
    fn type_name(&self) -> &str {
        "null_type"
    }
    fn has(&self, _name: &str) -> Option<bool> {
        Some(false)
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().is::<Absent>()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The parsed MCP request behind `v`, if it is one.
pub fn request<'a>(v: &'a Value<'_>) -> Option<&'a Request> {
    v.downcast::<Request>()
}

/// The JSON of an MCP value, for the builders' JSON ([`legacy_json`]):
/// `None` for an object of another library.
pub(crate) fn object_json(o: &dyn Object) -> Option<Json> {
    let o = o.as_any();
    if let Some(r) = o.downcast_ref::<Request>() {
        Some(r.to_json())
    } else if let Some(s) = o.downcast_ref::<Section>() {
        Some(s.to_json())
    } else {
        o.is::<Absent>().then_some(Json::Null)
    }
}

/// The value of `mcp.<name>`, if it is one of the method constants.
pub fn constant(name: &str) -> Option<Value<'static>> {
    old::CONSTANTS
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| Value::str(v))
}

pub const FUNCTIONS: &[Function] = &[
    Function::global("mcp.Parse", 1, parse).impure(),
    Function::global("mcp.Unauthorized", 1, unauthorized),
    Function::global("mcp.Unauthorized", 2, unauthorized),
    Function::global("mcp.InsufficientScope", 1, insufficient_scope),
    Function::global("mcp.InsufficientScope", 2, insufficient_scope),
    Function::global("mcp.ErrorBody", 3, error_body),
    Function::method("ErrorBody", 2, error_body),
    Function::method("GetStringArgument", 2, get_string),
    Function::method("GetIntArgument", 2, get_int),
    Function::method("GetFloatArgument", 2, get_float),
    Function::method("GetBoolArgument", 2, get_bool),
    Function::method("GetStringSliceArgument", 2, get_string_slice),
    Function::method("GetIntSliceArgument", 2, get_int_slice),
    Function::method("GetFloatSliceArgument", 2, get_float_slice),
    Function::method("GetBoolSliceArgument", 2, get_bool_slice),
];

type Cached = Result<Arc<Request>, Arc<str>>;

/// The parses of the request's two body buffers, for the rest of the
/// request.
#[derive(Default)]
struct ParseCache {
    body: Option<Cached>,
    raw_body: Option<Cached>,
}

impl ParseCache {
    fn slot(&mut self, slot: Slot) -> &mut Option<Cached> {
        match slot {
            Slot::Body => &mut self.body,
            Slot::RawBody => &mut self.raw_body,
        }
    }
}

fn parse<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "mcp.Parse";
    let bytes: &[u8] = match args {
        [Value::String(s)] => s.as_bytes(),
        [Value::Bytes(b)] => Bin::as_bytes(b),
        _ => return Err(Error::no_overload(F, args)),
    };
    let http = ctx
        .request()
        .and_then(|r| r.attributes.as_ref())
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let slot = old::body_slot(http, bytes);
    let hit = slot.and_then(|s| ctx.cache::<ParseCache>().slot(s).clone());
    let result = match hit {
        Some(hit) => hit,
        None => {
            // The parse refuses a body over the limit before reading it.
            ctx.charge_bytes(bytes.len().min(old::max_body_bytes().saturating_add(1)))?;
            let r: Cached = old::parse_checked(http, bytes)
                .map(|m| Arc::new(Request::from_message(m)))
                .map_err(Arc::from);
            if let Some(s) = slot {
                *ctx.cache::<ParseCache>().slot(s) = Some(r.clone());
            }
            r
        }
    };
    match result {
        Ok(r) => Ok(Value::Object(r)),
        Err(e) => Err(Error::function(F, &*e)),
    }
}

fn strings<'a>(args: &'a [Value<'_>]) -> Option<(&'a str, Option<&'a str>)> {
    match args {
        [Value::String(a)] => Some((a, None)),
        [Value::String(a), Value::String(b)] => Some((a, Some(b))),
        _ => None,
    }
}

fn denial<'r>(
    ctx: &mut Ctx<'r>,
    f: &'static str,
    args: &[Value<'r>],
    make: fn(&str, Option<&str>) -> Result<DeniedResponse, String>,
) -> Result<Value<'r>, Error> {
    let (a, b) = strings(args).ok_or_else(|| Error::no_overload(f, args))?;
    ctx.charge_bytes(a.len() + b.map_or(0, str::len))?;
    make(a, b)
        .map(Value::object)
        .map_err(|e| Error::function(f, e))
}

fn unauthorized<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    denial(ctx, "mcp.Unauthorized", args, old::unauthorized_response)
}

fn insufficient_scope<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    denial(
        ctx,
        "mcp.InsufficientScope",
        args,
        old::insufficient_scope_response,
    )
}

/// `mcp.ErrorBody(id, code, message)` and `req.ErrorBody(code, message)`.
fn error_body<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "ErrorBody";
    let [id, Value::Int(code), Value::String(message)] = args else {
        return Err(Error::no_overload(F, args));
    };
    let id = match request(id) {
        Some(req) => to_json(&req.id).unwrap_or(Json::Null),
        None => {
            let id = legacy_json(ctx, id).map_err(|e| match e {
                Refused::Cost(e) => e,
                Refused::Text(t) => Error::function(F, t),
            })?;
            if !matches!(id, Json::Null | Json::String(_) | Json::Number(_)) {
                return Err(Error::function(
                    F,
                    "the id must be a string, an integer or null",
                ));
            }
            id
        }
    };
    ctx.charge_bytes(message.len())?;
    Ok(Value::string(old::error_body_text(&id, *code, message)))
}

/// The arguments a getter reads on `receiver`: `Err` for a receiver no
/// getter takes, `Ok(None)` for one without arguments (an absent section,
/// `null`, a section of another method).
fn arguments<'a>(receiver: &'a Value<'_>) -> Result<Option<&'a Map<'static>>, ()> {
    let args = if let Some(r) = receiver.downcast::<Request>() {
        r.arguments()
    } else if let Some(s) = receiver.downcast::<Section>() {
        s.get("Arguments")
    } else if matches!(receiver, Value::Null) || receiver.downcast::<Absent>().is_some() {
        None
    } else {
        return Err(());
    };
    Ok(match args {
        Some(Value::Map(m)) => Some(m),
        _ => None,
    })
}

/// `receiver.Get…Argument(key, default)`: the argument converted by
/// `convert` (each element of a list for a slice getter, charged one unit
/// per element), or `default` when it is missing or of another type.
fn getter<'r>(
    ctx: &mut Ctx<'r>,
    name: &str,
    args: &[Value<'r>],
    convert: fn(&Value<'static>) -> Option<Value<'static>>,
    slice: bool,
) -> Result<Value<'r>, Error> {
    let [receiver, Value::String(key), default] = args else {
        return Err(Error::no_overload(name, args));
    };
    let map = arguments(receiver).map_err(|()| Error::no_overload(name, args))?;
    let Some(v) = map.and_then(|m| m.get(&Value::str(key))) else {
        return Ok(default.clone());
    };
    let found = if slice {
        match &v {
            // Any other element makes the whole argument "of another
            // type" (the default), never a shorter list.
            Value::List(l) => {
                ctx.charge(l.len() as u64)?;
                l.iter()
                    .map(convert)
                    .collect::<Option<Vec<_>>>()
                    .map(Value::list)
            }
            _ => None,
        }
    } else {
        convert(&v)
    };
    Ok(found.unwrap_or_else(|| default.clone()))
}

fn as_int(v: &Value<'_>) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Uint(u) => i64::try_from(*u).ok(),
        // JSON has one number type: 3.0 is the integer 3.
        Value::Double(d) => {
            (d.fract() == 0.0 && *d >= i64::MIN as f64 && *d < i64::MAX as f64).then_some(*d as i64)
        }
        _ => None,
    }
}

fn as_float(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        Value::Int(i) => Some(*i as f64),
        Value::Uint(u) => Some(*u as f64),
        _ => None,
    }
}

fn string_of(v: &Value<'static>) -> Option<Value<'static>> {
    matches!(v, Value::String(_)).then(|| v.clone())
}

fn int_of(v: &Value<'static>) -> Option<Value<'static>> {
    as_int(v).map(Value::Int)
}

fn float_of(v: &Value<'static>) -> Option<Value<'static>> {
    as_float(v).map(Value::Double)
}

fn bool_of(v: &Value<'static>) -> Option<Value<'static>> {
    matches!(v, Value::Bool(_)).then(|| v.clone())
}

fn get_string<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    getter(ctx, "GetStringArgument", args, string_of, false)
}

fn get_int<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    getter(ctx, "GetIntArgument", args, int_of, false)
}

fn get_float<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    getter(ctx, "GetFloatArgument", args, float_of, false)
}

fn get_bool<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    getter(ctx, "GetBoolArgument", args, bool_of, false)
}

fn get_string_slice<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    getter(ctx, "GetStringSliceArgument", args, string_of, true)
}

fn get_int_slice<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    getter(ctx, "GetIntSliceArgument", args, int_of, true)
}

fn get_float_slice<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    getter(ctx, "GetFloatSliceArgument", args, float_of, true)
}

fn get_bool_slice<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    getter(ctx, "GetBoolSliceArgument", args, bool_of, true)
}
