//! The `mcp` library: Model Context Protocol requests (JSON-RPC 2.0)
//! read from the request body.
//!
//! ```cel
//! mcp.Parse(object.attributes.request.http.body).ToolCall.Name
//! variables.req.ToolCall.GetStringArgument("repo", "")
//! mcp.Unauthorized("https://mcp.example.com/.well-known/oauth-protected-resource").Response()
//! ```
//!
//! The checks, the refusals and their messages are [`crate::mcp`]'s; this
//! module turns a checked message into values.
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
//! `PromptGet`, `Initialize`, `Paginated`, `SetLogLevel`, `Elicitation`),
//! each an object of its own type. A section the message does not have is
//! an object of type `null_type` that has no fields: `has(req.ToolCall.Name)`
//! is false, `req.ToolCall.?Name` is empty, `req.ToolCall.Name` is an error.
//! JSON numbers in arguments are `int` when integral, `uint` beyond `int`,
//! else `double`.
//!
//! **Argument getters convert** as Kyverno's (and mcp-go's) do, so that a
//! policy reads the value an MCP server reads: `"500"` is the int `500`,
//! `42.7` the int `42` (truncated toward zero), `"true"` and non-zero
//! numbers are `true`; a slice getter drops the elements it cannot convert.
//! Where Go's conversion would turn a huge number into a small one, the
//! getters saturate instead (`1e30` is the largest `int`), and a NaN is an
//! evaluation error rather than a value every comparison is false against.

use crate::cel::eval::lib::envoy::{legacy_json, Refused};
use crate::cel::eval::value::{from_json, to_json, Bin};
use crate::cel::eval::{Ctx, Error, Function, Map, Object, Value};
use crate::mcp::{self as message, Message, MessageKind, SectionKind, Slot};
use crate::response::DeniedResponse;
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

    /// The arguments the getters read: a tool call's, else a resource
    /// read's, else a prompt's (a message has at most one of them).
    fn arguments(&self) -> Option<&Value<'static>> {
        self.section
            .as_ref()
            .filter(|s| {
                matches!(
                    s.kind,
                    SectionKind::ToolCall | SectionKind::ResourceRead | SectionKind::PromptGet
                )
            })
            .and_then(|s| s.get("Arguments"))
    }

    /// Every field, a section the message does not have as `null`.
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
    fn to_json(&self) -> Option<Json> {
        Some(Request::to_json(self))
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
    fn to_json(&self) -> Option<Json> {
        Some(Section::to_json(self))
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
    fn to_json(&self) -> Option<Json> {
        Some(Json::Null)
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
    message::CONSTANTS
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| Value::str(v))
}

/// Parses one MCP (JSON-RPC 2.0) message with every check `mcp.Parse`
/// makes except the partial-body header, which needs the request. Not
/// memoised; counted in [`crate::mcp::parse_count`].
pub fn parse_body(bytes: &[u8]) -> Result<Request, String> {
    message::parse_message(bytes).map(Request::from_message)
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
    let slot = message::body_slot(http, bytes);
    let hit = slot.and_then(|s| ctx.cache::<ParseCache>().slot(s).clone());
    let result = match hit {
        Some(hit) => hit,
        None => {
            // The parse refuses a body over the limit before reading it.
            ctx.charge_bytes(bytes.len().min(message::max_body_bytes().saturating_add(1)))?;
            let r: Cached = message::parse_checked(http, bytes)
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
    denial(
        ctx,
        "mcp.Unauthorized",
        args,
        message::unauthorized_response,
    )
}

fn insufficient_scope<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    denial(
        ctx,
        "mcp.InsufficientScope",
        args,
        message::insufficient_scope_response,
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
    Ok(Value::string(message::error_body_text(&id, *code, message)))
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

/// How a getter reads one value: `Ok(Some(v))` converted, `Ok(None)` not
/// convertible (the default for a scalar getter, dropped from a list),
/// `Err` refused (a NaN: see [`Reading`]).
type Convert =
    fn(&mut Ctx<'_>, &'static str, &Value<'static>) -> Result<Option<Value<'static>>, Error>;

/// `receiver.Get…Argument(key, default)`: the argument converted by
/// `convert`, or `default` when it is missing or not convertible. A slice
/// getter takes a list only (anything else gives the default) and converts
/// each element, dropping those that are not convertible (charged one unit
/// per element, plus the bytes of the strings it reads).
fn getter<'r>(
    ctx: &mut Ctx<'r>,
    name: &'static str,
    args: &[Value<'r>],
    convert: Convert,
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
            Value::List(l) => {
                ctx.charge(l.len() as u64)?;
                let mut out = Vec::with_capacity(l.len());
                for e in l.iter() {
                    if let Some(c) = convert(ctx, name, e)? {
                        out.push(c);
                    }
                }
                Some(Value::list(out))
            }
            _ => None,
        }
    } else {
        convert(ctx, name, &v)?
    };
    Ok(found.unwrap_or_else(|| default.clone()))
}

/// What a numeric string says: an integer that fits `int` exactly, else a
/// double (a fraction, an exponent, an integer beyond `int`, an infinity or
/// NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reading {
    Int(i64),
    Float(f64),
}

/// Reads `s` as a number, or `None` when it is not one. Accepted, after
/// ASCII whitespace is trimmed and an optional sign: a decimal integer or
/// decimal number (`42`, `4.2`, `.5`, `5.`, `1e30`), `0x` / `0o` / `0b`
/// integers, hexadecimal numbers with a binary exponent (`0x1.8p3`),
/// `inf` / `infinity` / `nan` in any case, and `_` between two digits.
/// This takes every string Go's `strconv.Atoi` and `strconv.ParseFloat`
/// take (what Kyverno and mcp-go servers convert) and the other common
/// spellings lenient servers read as numbers, so a policy reads the number
/// a server would.
fn read_number(s: &str) -> Option<Reading> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let owned;
    let t = if t.contains('_') {
        let b = t.as_bytes();
        let ok = b.iter().enumerate().all(|(i, &c)| {
            c != b'_'
                || (i > 0
                    && i + 1 < b.len()
                    && b[i - 1].is_ascii_alphanumeric()
                    && b[i + 1].is_ascii_alphanumeric())
        });
        if !ok {
            return None;
        }
        owned = t.replace('_', "");
        owned.as_str()
    } else {
        t
    };
    let (negative, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let sign = |f: f64| if negative { -f } else { f };
    if body.eq_ignore_ascii_case("inf") || body.eq_ignore_ascii_case("infinity") {
        return Some(Reading::Float(sign(f64::INFINITY)));
    }
    if body.eq_ignore_ascii_case("nan") {
        return Some(Reading::Float(f64::NAN));
    }
    let b = body.as_bytes();
    if b.len() > 2 && b[0] == b'0' {
        let radix = match b[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            b'b' | b'B' => 2,
            _ => 0,
        };
        if radix == 16 && body[2..].contains(['.', 'p', 'P']) {
            return hex_float(&body[2..]).map(|f| Reading::Float(sign(f)));
        }
        if radix != 0 {
            return radix_integer(&body[2..], radix, negative);
        }
    }
    decimal(body, negative)
}

/// An integer's magnitude in `radix`, as a [`Reading`] with its sign.
fn radix_integer(digits: &str, radix: u32, negative: bool) -> Option<Reading> {
    if digits.is_empty() {
        return None;
    }
    let mut exact: Option<u128> = Some(0);
    let mut approx = 0f64;
    for c in digits.chars() {
        let d = c.to_digit(radix)?;
        exact = exact
            .and_then(|v| v.checked_mul(u128::from(radix)))
            .and_then(|v| v.checked_add(u128::from(d)));
        approx = approx * f64::from(radix) + f64::from(d);
    }
    let signed = exact
        .and_then(|m| i128::try_from(m).ok())
        .map(|m| if negative { -m } else { m });
    Some(match signed.and_then(|v| i64::try_from(v).ok()) {
        Some(i) => Reading::Int(i),
        None => Reading::Float(if negative { -approx } else { approx }),
    })
}

/// A decimal integer or number (no sign: `negative` is it).
fn decimal(body: &str, negative: bool) -> Option<Reading> {
    let b = body.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let int_len = digits(0);
    let mut i = int_len;
    let mut frac_len = 0;
    if b.get(i) == Some(&b'.') {
        frac_len = digits(i + 1);
        i += 1 + frac_len;
    }
    if int_len + frac_len == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_len = digits(i);
        if exp_len == 0 {
            return None;
        }
        i += exp_len;
    }
    if i != b.len() {
        return None;
    }
    let text = if negative {
        format!("-{body}")
    } else {
        body.to_owned()
    };
    if i == int_len {
        if let Ok(v) = text.parse::<i64>() {
            return Some(Reading::Int(v));
        }
    }
    text.parse::<f64>().ok().map(Reading::Float)
}

/// A hexadecimal mantissa with an optional `.` and `p` exponent (after
/// `0x`), rounded to the nearest double.
fn hex_float(s: &str) -> Option<f64> {
    let (mantissa, exp) = match s.find(['p', 'P']) {
        Some(at) => (&s[..at], Some(&s[at + 1..])),
        None => (s, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((a, b)) => (a, b),
        None => (mantissa, ""),
    };
    if int_part.len() + frac_part.len() == 0 {
        return None;
    }
    // Up to 15 significant hex digits (60 bits) are kept exactly; any
    // further non-zero digit sets a sticky low bit, which rounds as the
    // exact value would (the bits kept are more than a double holds).
    let mut m: u64 = 0;
    let mut kept = 0u32;
    let mut scale: i64 = 0;
    let mut sticky = false;
    for (c, fractional) in int_part
        .chars()
        .map(|c| (c, false))
        .chain(frac_part.chars().map(|c| (c, true)))
    {
        let d = c.to_digit(16)?;
        if m == 0 && d == 0 {
            if fractional {
                scale -= 4;
            }
            continue;
        }
        if kept < 15 {
            m = m << 4 | u64::from(d);
            kept += 1;
            if fractional {
                scale -= 4;
            }
        } else {
            sticky |= d != 0;
            if !fractional {
                scale += 4;
            }
        }
    }
    if sticky {
        m |= 1;
    }
    let e: i64 = match exp {
        None => 0,
        Some(e) => {
            let (neg, digits) = match e.as_bytes().first()? {
                b'-' => (true, &e[1..]),
                b'+' => (false, &e[1..]),
                _ => (false, e),
            };
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            // Saturated: any exponent past ±100000 is 0 or infinity alike.
            let v = digits.parse::<i64>().unwrap_or(i64::MAX).min(100_000);
            if neg {
                -v
            } else {
                v
            }
        }
    };
    let mut exp2 = (e + scale).clamp(-200_000, 200_000);
    let mut x = m as f64;
    while exp2 > 1000 && x.is_finite() && x != 0.0 {
        x *= 2f64.powi(1000);
        exp2 -= 1000;
    }
    while exp2 < -1000 && x != 0.0 {
        x *= 2f64.powi(-1000);
        exp2 += 1000;
    }
    Some(x * 2f64.powi(exp2 as i32))
}

/// A double as an `int`: truncated toward zero, saturated at the ends of
/// the range (so `1e30` is the largest `int`, never a small or negative
/// number).
fn saturating_int(d: f64) -> i64 {
    // `as` truncates toward zero and saturates; NaN is refused before.
    d as i64
}

fn nan_refused(name: &'static str) -> Error {
    Error::function(
        name,
        "the argument is NaN, which no limit can be checked against",
    )
}

fn string_of(
    _: &mut Ctx<'_>,
    _: &'static str,
    v: &Value<'static>,
) -> Result<Option<Value<'static>>, Error> {
    Ok(matches!(v, Value::String(_)).then(|| v.clone()))
}

/// A JSON number or a numeric string, as a [`Reading`]; `None` for
/// anything else.
fn reading_of(ctx: &mut Ctx<'_>, v: &Value<'_>) -> Result<Option<Reading>, Error> {
    Ok(match v {
        Value::Int(i) => Some(Reading::Int(*i)),
        Value::Uint(u) => Some(match i64::try_from(*u) {
            Ok(i) => Reading::Int(i),
            Err(_) => Reading::Float(*u as f64),
        }),
        Value::Double(d) => Some(Reading::Float(*d)),
        Value::String(s) => {
            ctx.charge_bytes(s.len())?;
            read_number(s)
        }
        _ => None,
    })
}

fn int_of(
    ctx: &mut Ctx<'_>,
    name: &'static str,
    v: &Value<'static>,
) -> Result<Option<Value<'static>>, Error> {
    match reading_of(ctx, v)? {
        Some(Reading::Int(i)) => Ok(Some(Value::Int(i))),
        Some(Reading::Float(d)) if d.is_nan() => Err(nan_refused(name)),
        Some(Reading::Float(d)) => Ok(Some(Value::Int(saturating_int(d)))),
        None => Ok(None),
    }
}

fn float_of(
    ctx: &mut Ctx<'_>,
    name: &'static str,
    v: &Value<'static>,
) -> Result<Option<Value<'static>>, Error> {
    match reading_of(ctx, v)? {
        Some(Reading::Int(i)) => Ok(Some(Value::Double(i as f64))),
        Some(Reading::Float(d)) if d.is_nan() => Err(nan_refused(name)),
        Some(Reading::Float(d)) => Ok(Some(Value::Double(d))),
        None => Ok(None),
    }
}

/// The words read as booleans, whatever their case (after trimming ASCII
/// whitespace): Go's `strconv.ParseBool` set and the `yes`/`no`, `y`/`n`,
/// `on`/`off` that lenient servers also take.
fn bool_word(s: &str) -> Option<bool> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    const TRUE: [&str; 6] = ["true", "t", "1", "yes", "y", "on"];
    const FALSE: [&str; 6] = ["false", "f", "0", "no", "n", "off"];
    if TRUE.iter().any(|w| t.eq_ignore_ascii_case(w)) {
        Some(true)
    } else if FALSE.iter().any(|w| t.eq_ignore_ascii_case(w)) {
        Some(false)
    } else {
        None
    }
}

fn bool_of(
    ctx: &mut Ctx<'_>,
    _: &'static str,
    v: &Value<'static>,
) -> Result<Option<Value<'static>>, Error> {
    Ok(match v {
        Value::Bool(b) => Some(Value::Bool(*b)),
        Value::Int(i) => Some(Value::Bool(*i != 0)),
        Value::Uint(u) => Some(Value::Bool(*u != 0)),
        Value::Double(d) => Some(Value::Bool(*d != 0.0)),
        Value::String(s) => {
            ctx.charge_bytes(s.len())?;
            bool_word(s).map(Value::Bool)
        }
        _ => None,
    })
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

/// The library's overloads, for the type checker. A request's sections
/// (`ToolCall`, `PromptGet`, ...) are absent or present by request, so they
/// are `dyn`, and the argument getters are declared on every receiver they
/// take. A getter returns its default as given, so the default is declared
/// with the result's type (`[]` is a `list(dyn)`, which fits any).
pub const DECLS: &str = "
mcp.Parse(string) -> mcp.MCPRequest
mcp.Parse(bytes) -> mcp.MCPRequest
mcp.Unauthorized(string) -> envoy.service.auth.v3.DeniedHttpResponse
mcp.Unauthorized(string, string) -> envoy.service.auth.v3.DeniedHttpResponse
mcp.InsufficientScope(string) -> envoy.service.auth.v3.DeniedHttpResponse
mcp.InsufficientScope(string, string) -> envoy.service.auth.v3.DeniedHttpResponse
mcp.ErrorBody(dyn, int, string) -> string
(mcp.MCPRequest).ErrorBody(int, string) -> string
(mcp.MCPRequest).GetStringArgument(string, string) -> string
(mcp.ToolCall).GetStringArgument(string, string) -> string
(mcp.ResourceRead).GetStringArgument(string, string) -> string
(mcp.PromptGet).GetStringArgument(string, string) -> string
(null).GetStringArgument(string, string) -> string
(mcp.MCPRequest).GetIntArgument(string, int) -> int
(mcp.ToolCall).GetIntArgument(string, int) -> int
(mcp.ResourceRead).GetIntArgument(string, int) -> int
(mcp.PromptGet).GetIntArgument(string, int) -> int
(null).GetIntArgument(string, int) -> int
(mcp.MCPRequest).GetFloatArgument(string, double) -> double
(mcp.ToolCall).GetFloatArgument(string, double) -> double
(mcp.ResourceRead).GetFloatArgument(string, double) -> double
(mcp.PromptGet).GetFloatArgument(string, double) -> double
(null).GetFloatArgument(string, double) -> double
(mcp.MCPRequest).GetBoolArgument(string, bool) -> bool
(mcp.ToolCall).GetBoolArgument(string, bool) -> bool
(mcp.ResourceRead).GetBoolArgument(string, bool) -> bool
(mcp.PromptGet).GetBoolArgument(string, bool) -> bool
(null).GetBoolArgument(string, bool) -> bool
(mcp.MCPRequest).GetStringSliceArgument(string, list(string)) -> list(string)
(mcp.ToolCall).GetStringSliceArgument(string, list(string)) -> list(string)
(mcp.ResourceRead).GetStringSliceArgument(string, list(string)) -> list(string)
(mcp.PromptGet).GetStringSliceArgument(string, list(string)) -> list(string)
(null).GetStringSliceArgument(string, list(string)) -> list(string)
(mcp.MCPRequest).GetIntSliceArgument(string, list(int)) -> list(int)
(mcp.ToolCall).GetIntSliceArgument(string, list(int)) -> list(int)
(mcp.ResourceRead).GetIntSliceArgument(string, list(int)) -> list(int)
(mcp.PromptGet).GetIntSliceArgument(string, list(int)) -> list(int)
(null).GetIntSliceArgument(string, list(int)) -> list(int)
(mcp.MCPRequest).GetFloatSliceArgument(string, list(double)) -> list(double)
(mcp.ToolCall).GetFloatSliceArgument(string, list(double)) -> list(double)
(mcp.ResourceRead).GetFloatSliceArgument(string, list(double)) -> list(double)
(mcp.PromptGet).GetFloatSliceArgument(string, list(double)) -> list(double)
(null).GetFloatSliceArgument(string, list(double)) -> list(double)
(mcp.MCPRequest).GetBoolSliceArgument(string, list(bool)) -> list(bool)
(mcp.ToolCall).GetBoolSliceArgument(string, list(bool)) -> list(bool)
(mcp.ResourceRead).GetBoolSliceArgument(string, list(bool)) -> list(bool)
(mcp.PromptGet).GetBoolSliceArgument(string, list(bool)) -> list(bool)
(null).GetBoolSliceArgument(string, list(bool)) -> list(bool)
";

/// A parsed request's fields.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = {
    use crate::cel::check::cost::Bound::{Body, BodyJson};
    &[(
        "mcp.MCPRequest",
        &[
            ("Method", "string", Body),
            ("ID", "dyn", BodyJson),
            ("Kind", "string", Body),
            ("Name", "string", Body),
            ("ToolCall", "dyn", BodyJson),
            ("ResourceRead", "dyn", BodyJson),
            ("PromptGet", "dyn", BodyJson),
            ("Initialize", "dyn", BodyJson),
            ("Paginated", "dyn", BodyJson),
            ("SetLogLevel", "dyn", BodyJson),
            ("Elicitation", "dyn", BodyJson),
        ],
    )]
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::{lib, Meter};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as Req,
    };
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use serde_json::json;

    use crate::cel::eval::lib::call;

    fn ctx() -> Ctx<'static> {
        Ctx::new(None, Meter::new(1_000_000))
    }

    fn json_of(v: &Value<'_>) -> Json {
        let mut c = ctx();
        match legacy_json(&mut c, v) {
            Ok(j) => j,
            Err(_) => panic!("no JSON for {v:?}"),
        }
    }

    const BODIES: &[&str] = &[
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"git_push","arguments":{"repo":"a/b","n":3,"f":2.0,"big":18446744073709551615,"tags":["x","y"],"ns":[1,2.5],"on":true}}}"#,
        r#"{"jsonrpc":"2.0","id":"p","method":"prompts/get","params":{"name":"greet","arguments":{"who":"bob","n":"3"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"file:///b"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"initialize","params":{"protocolVersion":"2025-06-18","clientInfo":{"name":"c","version":"1"},"capabilities":{"roots":{}}}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"cursor":"c1"}}"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"logging/setLevel","params":{"level":"debug"}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":"s-1","result":{"action":"accept"}}"#,
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":10,"method":"elicitation/create","params":{"mode":"form","message":"Your name?","requestedSchema":{"type":"object","properties":{"name":{"type":"string"}}}}}"#,
    ];

    /// Each of [`BODIES`] parsed, as JSON.
    const PARSED: &[&str] = &[
        r#"{"Elicitation":null,"ID":7,"Initialize":null,"Kind":"request","Method":"tools/call","Name":"git_push","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":{"Arguments":{"big":18446744073709551615,"f":2.0,"n":3,"ns":[1,2.5],"on":true,"repo":"a/b","tags":["x","y"]},"Name":"git_push"}}"#,
        r#"{"Elicitation":null,"ID":"p","Initialize":null,"Kind":"request","Method":"prompts/get","Name":"greet","Paginated":null,"PromptGet":{"Arguments":{"n":"3","who":"bob"},"Name":"greet"},"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":1,"Initialize":null,"Kind":"request","Method":"resources/read","Name":"file:///a","Paginated":null,"PromptGet":null,"ResourceRead":{"Arguments":{},"URI":"file:///a"},"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":2,"Initialize":null,"Kind":"request","Method":"resources/subscribe","Name":"file:///b","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":3,"Initialize":{"Capabilities":{"roots":{}},"ClientInfo":{"name":"c","version":"1"},"ProtocolVersion":"2025-06-18"},"Kind":"request","Method":"initialize","Name":"","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":4,"Initialize":null,"Kind":"request","Method":"tools/list","Name":"","Paginated":{"Cursor":"c1"},"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":5,"Initialize":null,"Kind":"request","Method":"logging/setLevel","Name":"","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":{"Level":"debug"},"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":null,"Initialize":null,"Kind":"notification","Method":"notifications/initialized","Name":"","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":"s-1","Initialize":null,"Kind":"response","Method":"","Name":"","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":null,"Initialize":null,"Kind":"response","Method":"","Name":"","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":null,"ID":9,"Initialize":null,"Kind":"request","Method":"ping","Name":"","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
        r#"{"Elicitation":{"ElicitationID":"","Message":"Your name?","Mode":"form","RequestedSchema":{"properties":{"name":{"type":"string"}},"type":"object"},"URL":""},"ID":10,"Initialize":null,"Kind":"request","Method":"elicitation/create","Name":"","Paginated":null,"PromptGet":null,"ResourceRead":null,"SetLogLevel":null,"ToolCall":null}"#,
    ];

    /// The type of a field whose value is `j` in [`PARSED`]: a section is
    /// of its own type, or `null_type` when the message has none.
    fn type_of(field: &str, j: &Json) -> String {
        match j {
            Json::Null => "null_type".into(),
            Json::String(_) => "string".into(),
            Json::Number(_) => "int".into(),
            _ => format!("mcp.{field}"),
        }
    }

    const FIELDS: &[&str] = &[
        "Method",
        "ID",
        "Kind",
        "Name",
        "ToolCall",
        "ResourceRead",
        "PromptGet",
        "Initialize",
        "Paginated",
        "SetLogLevel",
        "Elicitation",
    ];

    #[test]
    fn parsed_requests_have_every_field() {
        for (body, parsed) in BODIES.iter().zip(PARSED) {
            let want: Json = serde_json::from_str(parsed).unwrap();
            let mut c = ctx();
            let r = call(&mut c, "mcp.Parse", false, &[Value::str(body)]).unwrap();
            assert_eq!(r.type_name(), "mcp.MCPRequest");
            assert_eq!(json_of(&r), want, "{body}");
            let req = request(&r).unwrap();
            assert_eq!(req.method(), want["Method"]);
            assert_eq!(req.kind().as_str(), want["Kind"]);
            assert_eq!(req.tool_name(), want["ToolCall"]["Name"].as_str(), "{body}");
            for field in FIELDS {
                let v = req.field(field).unwrap();
                assert_eq!(json_of(&v), want[field], "{body}: {field}");
                assert_eq!(
                    v.type_name(),
                    type_of(field, &want[field]),
                    "{body}: {field}"
                );
            }
            // The same body parsed twice gives equal requests.
            let again = call(&mut c, "mcp.Parse", false, &[Value::bytes(body.as_bytes())]).unwrap();
            assert!(crate::cel::eval::value::equals(&r, &again));
        }
        // JSON integers stay ints in arguments (as before).
        let r = call(&mut ctx(), "mcp.Parse", false, &[Value::str(BODIES[0])]).unwrap();
        let tc = request(&r).unwrap().field("ToolCall").unwrap();
        let Some(Value::Map(args)) = tc.downcast::<Section>().unwrap().field("Arguments") else {
            panic!("arguments are a map")
        };
        assert!(matches!(args.get(&Value::str("n")), Some(Value::Int(3))));
        assert!(matches!(
            args.get(&Value::str("big")),
            Some(Value::Uint(u64::MAX))
        ));
        assert!(matches!(args.get(&Value::str("f")), Some(Value::Double(_))));
    }

    #[test]
    fn absent_sections_have_no_fields() {
        let r = call(&mut ctx(), "mcp.Parse", false, &[Value::str(BODIES[5])]).unwrap();
        let absent = request(&r).unwrap().field("ToolCall").unwrap();
        let Value::Object(o) = &absent else {
            panic!("an object")
        };
        assert_eq!(o.type_name(), "null_type");
        assert_eq!(o.has("Name"), Some(false));
        assert!(o.field("Name").is_none());
        let present = request(&r).unwrap().field("Paginated").unwrap();
        let Value::Object(p) = &present else {
            panic!("an object")
        };
        assert_eq!(p.type_name(), "mcp.Paginated");
        assert_eq!(p.has("Cursor"), Some(true));
        assert!(p.field("Nope").is_none());
        // A selection into an absent section is safe.
        let v = crate::cel::eval::plan::eval_standalone(&format!(
            "mcp.Parse(r'{}').ToolCall.?Name.orValue('')",
            BODIES[5]
        ))
        .unwrap();
        assert_eq!(json_of(&v), json!(""));
    }

    #[test]
    fn refusals_are_the_parser_messages() {
        let bodies = [
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping""#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#,
            "  ",
        ];
        for body in bodies {
            let e = call(&mut ctx(), "mcp.Parse", false, &[Value::str(body)]).unwrap_err();
            assert_eq!(e.kind, crate::cel::ErrorKind::FunctionError);
            assert_eq!(e.function.as_deref(), Some("mcp.Parse"));
            let want = message::parse_message(body.as_bytes()).unwrap_err();
            assert_eq!(e.message, want, "{body}");
            assert_ne!(crate::mcp::refusal_reason(&e.message), "other");
        }
        let body = BODIES[10];
        let e = crate::mcp::with_max_body_bytes(10, || {
            call(&mut ctx(), "mcp.Parse", false, &[Value::str(body)]).unwrap_err()
        });
        assert_eq!(crate::mcp::refusal_reason(&e.message), "body_too_large");
        let e = call(&mut ctx(), "mcp.Parse", false, &[Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::NoSuchOverload);
    }

    fn check_request(body: &str, raw: &[u8], partial: bool) -> CheckRequest {
        let mut headers = std::collections::HashMap::new();
        if partial {
            headers.insert("x-envoy-auth-partial-body".to_owned(), " TRUE".to_owned());
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Req {
                    http: Some(HttpRequest {
                        body: body.to_owned(),
                        raw_body: raw.to_vec(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn http(r: &CheckRequest) -> &HttpRequest {
        r.attributes
            .as_ref()
            .unwrap()
            .request
            .as_ref()
            .unwrap()
            .http
            .as_ref()
            .unwrap()
    }

    #[test]
    fn the_request_body_is_parsed_and_charged_once_per_request() {
        let body = BODIES[0];
        let req = check_request(body, body.as_bytes(), false);
        let h = http(&req);
        let mut c = Ctx::new(Some(&req), Meter::new(1_000_000));
        let before = crate::mcp::parse_count();
        let a = call(&mut c, "mcp.Parse", false, &[Value::str(&h.body)]).unwrap();
        let used = c.meter.used();
        assert!(used >= body.len() as u64 / 10, "the body is charged");
        let b = call(&mut c, "mcp.Parse", false, &[Value::str(&h.body)]).unwrap();
        assert_eq!(c.meter.used(), used, "a cached parse is not charged again");
        assert_eq!(crate::mcp::parse_count(), before + 1);
        let (Value::Object(a), Value::Object(b)) = (&a, &b) else {
            panic!("objects")
        };
        assert!(Arc::ptr_eq(a, b), "the same parse");
        // raw_body is a buffer of its own: parsed once too.
        let raw = Value::Bytes(Bin::Borrowed(&h.raw_body));
        call(&mut c, "mcp.Parse", false, std::slice::from_ref(&raw)).unwrap();
        call(&mut c, "mcp.Parse", false, &[raw]).unwrap();
        assert_eq!(crate::mcp::parse_count(), before + 2);
        // A copy of the body is not the request's: parsed on each call.
        call(&mut c, "mcp.Parse", false, &[Value::str(body)]).unwrap();
        call(&mut c, "mcp.Parse", false, &[Value::str(body)]).unwrap();
        assert_eq!(crate::mcp::parse_count(), before + 4);
        // A new request (a new context) parses again.
        let mut c = Ctx::new(Some(&req), Meter::new(1_000_000));
        call(&mut c, "mcp.Parse", false, &[Value::str(&h.body)]).unwrap();
        assert_eq!(crate::mcp::parse_count(), before + 5);
    }

    #[test]
    fn a_partial_body_is_refused_once_per_request() {
        let body = BODIES[10];
        let req = check_request(body, b"", true);
        let h = http(&req);
        let mut c = Ctx::new(Some(&req), Meter::new(1_000_000));
        let before = crate::mcp::parse_count();
        for _ in 0..2 {
            let e = call(&mut c, "mcp.Parse", false, &[Value::str(&h.body)]).unwrap_err();
            assert_eq!(crate::mcp::refusal_reason(&e.message), "partial_body");
            assert_eq!(e.function.as_deref(), Some("mcp.Parse"));
        }
        assert_eq!(crate::mcp::parse_count(), before + 1);
        // A copy of the body in a request marked partial is refused too.
        let e = call(&mut c, "mcp.Parse", false, &[Value::str(body)]).unwrap_err();
        assert_eq!(
            e.message,
            "the body is incomplete (Envoy sent only part of it: x-envoy-auth-partial-body: \
             true); raise with_request_body.max_request_bytes or keep MCP bodies smaller"
        );
    }

    #[test]
    fn a_small_budget_stops_a_big_body() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","x":"{}"}}"#,
            "a".repeat(100_000)
        );
        let mut c = Ctx::new(None, Meter::new(1_000));
        let e = call(&mut c, "mcp.Parse", false, &[Value::string(body)]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
    }

    #[test]
    fn getters_read_arguments_or_give_the_default() {
        let tool = BODIES[0];
        let prompt = BODIES[1];
        let list = BODIES[5];
        // The receivers, each with the row of `WANT` it gives.
        let receivers: &[(&str, &str, usize)] = &[
            (tool, "mcp.Parse(body)", 0),
            (tool, "mcp.Parse(body).ToolCall", 0),
            (prompt, "mcp.Parse(body)", 1),
            (prompt, "mcp.Parse(body).PromptGet", 1),
            (list, "mcp.Parse(body)", 2),
            (list, "mcp.Parse(body).ToolCall", 2),
            (tool, "null", 2),
        ];
        let calls: &[(&str, &str, Value<'static>, &str)] = &[
            ("GetStringArgument", "repo", Value::str("d"), "'d'"),
            ("GetStringArgument", "who", Value::str("d"), "'d'"),
            ("GetStringArgument", "n", Value::str("d"), "'d'"),
            ("GetIntArgument", "n", Value::Int(-1), "-1"),
            ("GetIntArgument", "f", Value::Int(-1), "-1"),
            ("GetIntArgument", "big", Value::Int(-1), "-1"),
            ("GetIntArgument", "repo", Value::Int(-1), "-1"),
            ("GetFloatArgument", "n", Value::Double(0.5), "0.5"),
            ("GetFloatArgument", "big", Value::Double(0.5), "0.5"),
            ("GetFloatArgument", "f", Value::Double(0.5), "0.5"),
            ("GetBoolArgument", "on", Value::Bool(false), "false"),
            ("GetBoolArgument", "n", Value::Bool(false), "false"),
            ("GetStringSliceArgument", "tags", Value::list(vec![]), "[]"),
            ("GetStringSliceArgument", "ns", Value::list(vec![]), "[]"),
            (
                "GetIntSliceArgument",
                "ns",
                Value::list(vec![Value::Int(0)]),
                "[0]",
            ),
            ("GetFloatSliceArgument", "ns", Value::list(vec![]), "[]"),
            ("GetBoolSliceArgument", "tags", Value::list(vec![]), "[]"),
            ("GetStringArgument", "missing", Value::str("d"), "'d'"),
        ];
        // By receiver (the tool call's arguments, the prompt's, none), the
        // result of each of `calls`, as JSON.
        const WANT: [[&str; 18]; 3] = [
            [
                r#""a/b""#,
                r#""d""#,
                r#""d""#,
                "3",
                "2",
                "9223372036854775807",
                "-1",
                "3.0",
                "1.8446744073709552e+19",
                "2.0",
                "true",
                "true",
                r#"["x","y"]"#,
                "[]",
                "[1,2]",
                "[1.0,2.5]",
                "[true]",
                r#""d""#,
            ],
            [
                r#""d""#, r#""bob""#, r#""3""#, "3", "-1", "-1", "-1", "3.0", "0.5", "0.5",
                "false", "false", "[]", "[]", "[0]", "[]", "[]", r#""d""#,
            ],
            [
                r#""d""#, r#""d""#, r#""d""#, "-1", "-1", "-1", "-1", "0.5", "0.5", "0.5", "false",
                "false", "[]", "[]", "[0]", "[]", "[]", r#""d""#,
            ],
        ];
        for (body, receiver, row) in receivers {
            for (i, (name, key, default, default_text)) in calls.iter().enumerate() {
                let expr = format!("{receiver}.{name}('{key}', {default_text})");
                let want: Json = serde_json::from_str(WANT[*row][i]).unwrap();
                let mut c = ctx();
                let r = match *receiver {
                    "null" => Value::Null,
                    _ => {
                        let r = call(&mut c, "mcp.Parse", false, &[Value::str(body)]).unwrap();
                        match receiver.strip_prefix("mcp.Parse(body)") {
                            Some("") => r,
                            Some(f) => request(&r).unwrap().field(&f[1..]).unwrap(),
                            None => unreachable!(),
                        }
                    }
                };
                let got = call(&mut c, name, true, &[r, Value::str(key), default.clone()]).unwrap();
                assert_eq!(json_of(&got), want, "{body}: {expr}");
            }
        }
        let e = call(
            &mut ctx(),
            "GetStringArgument",
            true,
            &[Value::Int(1), Value::str("k"), Value::str("")],
        );
        assert_eq!(e.unwrap_err().kind, crate::cel::ErrorKind::NoSuchOverload);
    }

    #[test]
    fn denials_and_error_bodies() {
        use crate::response::HeaderOption;
        let s = Value::str;
        let denials: &[(&str, Vec<Value<'static>>, i32, &str)] = &[
            (
                "mcp.Unauthorized",
                vec![s("https://r/m")],
                401,
                r#"Bearer resource_metadata="https://r/m""#,
            ),
            (
                "mcp.Unauthorized",
                vec![s("https://r/m"), s(r#"a "b"\c"#)],
                401,
                r#"Bearer resource_metadata="https://r/m", scope="a \"b\"\\c""#,
            ),
            (
                "mcp.InsufficientScope",
                vec![s("files:write")],
                403,
                r#"Bearer error="insufficient_scope", scope="files:write""#,
            ),
            (
                "mcp.InsufficientScope",
                vec![s("s"), s("https://r/m")],
                403,
                r#"Bearer error="insufficient_scope", scope="s", resource_metadata="https://r/m""#,
            ),
        ];
        for (name, args, status, header) in denials {
            let got = call(&mut ctx(), name, false, args).unwrap();
            let want = DeniedResponse {
                status: *status,
                headers: vec![HeaderOption::new("www-authenticate", *header)],
                body: String::new(),
            };
            assert_eq!(got.downcast::<DeniedResponse>(), Some(&want), "{name}");
        }
        let e = call(&mut ctx(), "mcp.Unauthorized", false, &[s("a\r\nb")]).unwrap_err();
        assert_eq!(
            e.message,
            "the resource metadata URL contains a control character"
        );

        let body = BODIES[0];
        let mut c = ctx();
        let r = call(&mut c, "mcp.Parse", false, &[Value::str(body)]).unwrap();
        let got = call(
            &mut c,
            "ErrorBody",
            true,
            &[r.clone(), Value::Int(-32602), s("bad \"x\"")],
        )
        .unwrap();
        assert_eq!(
            json_of(&got),
            json!(r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"bad \"x\""}}"#)
        );
        let ids: &[(Value<'static>, &str)] = &[
            (r.clone(), "7"),
            (Value::Int(5), "5"),
            (s("a"), r#""a""#),
            (Value::Null, "null"),
            (Value::Double(1.5), "1.5"),
            (Value::Uint(3), "3"),
        ];
        for (id, text) in ids {
            let got = call(
                &mut c,
                "mcp.ErrorBody",
                false,
                &[id.clone(), Value::Int(1), s("m")],
            )
            .unwrap();
            let want =
                format!(r#"{{"jsonrpc":"2.0","id":{text},"error":{{"code":1,"message":"m"}}}}"#);
            assert_eq!(json_of(&got), json!(want), "{text}");
        }
        for id in [Value::Bool(true), Value::list(vec![])] {
            let e = call(&mut c, "mcp.ErrorBody", false, &[id, Value::Int(1), s("m")]).unwrap_err();
            assert_eq!(e.message, "the id must be a string, an integer or null");
            assert_eq!(e.function.as_deref(), Some("ErrorBody"));
        }
    }

    #[test]
    fn constants() {
        assert_eq!(
            constant("ToolsCallMethod").unwrap().as_str(),
            Some("tools/call")
        );
        for (name, _) in crate::mcp::CONSTANTS {
            assert_eq!(constant(name).unwrap().as_str(), crate::mcp::constant(name));
        }
        assert!(constant("Nope").is_none());
        assert!(lib::lookup("mcp.Parse", false, 1).iter().all(|f| !f.pure));
    }

    fn parse_body_str(s: &str) -> Result<Request, String> {
        parse_body(s.as_bytes())
    }

    #[test]
    fn tools_call() {
        let r = parse_body_str(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"git_push","arguments":{"repo":"a/b","n":3}}}"#,
        )
        .unwrap();
        assert_eq!(r.method(), "tools/call");
        assert_eq!(r.kind(), MessageKind::Request);
        assert_eq!(r.tool_name(), Some("git_push"));
        assert_eq!(
            r.to_json()["ToolCall"]["Arguments"],
            serde_json::json!({"repo": "a/b", "n": 3})
        );
        assert_eq!(r.to_json()["ID"], 7);
        assert_eq!(r.to_json()["Name"], "git_push");
    }

    #[test]
    fn notifications_and_responses() {
        let n =
            parse_body_str(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.kind(), MessageKind::Notification);
        assert_eq!(n.to_json()["ID"], Json::Null);
        let r =
            parse_body_str(r#"{"jsonrpc":"2.0","id":"s-1","result":{"action":"accept"}}"#).unwrap();
        assert_eq!(r.kind(), MessageKind::Response);
        assert_eq!(r.method(), "");
        let e = parse_body_str(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}"#)
            .unwrap();
        assert_eq!(e.kind(), MessageKind::Response);
    }

    #[test]
    fn numeric_strings() {
        use Reading::{Float, Int};
        let cases: &[(&str, Option<Reading>)] = &[
            ("42", Some(Int(42))),
            ("+42", Some(Int(42))),
            ("-42", Some(Int(-42))),
            ("007", Some(Int(7))),
            (" 500\n", Some(Int(500))),
            ("1_000", Some(Int(1000))),
            ("9223372036854775807", Some(Int(i64::MAX))),
            ("-9223372036854775808", Some(Int(i64::MIN))),
            ("9223372036854775808", Some(Float(9.223_372_036_854_776e18))),
            ("42.7", Some(Float(42.7))),
            (".5", Some(Float(0.5))),
            ("5.", Some(Float(5.0))),
            ("1e30", Some(Float(1e30))),
            ("-1E-3", Some(Float(-0.001))),
            ("1e400", Some(Float(f64::INFINITY))),
            ("-Infinity", Some(Float(f64::NEG_INFINITY))),
            ("inf", Some(Float(f64::INFINITY))),
            ("0x1F4", Some(Int(500))),
            ("-0x10", Some(Int(-16))),
            ("0o17", Some(Int(15))),
            ("0b101", Some(Int(5))),
            ("0x_ff", Some(Int(255))),
            ("0xffffffffffffffffffff", Some(Float(1.2089258196146292e24))),
            ("0x1p-2", Some(Float(0.25))),
            ("0x1.8p1", Some(Float(3.0))),
            ("0x.8", Some(Float(0.5))),
            ("0x1p100000000", Some(Float(f64::INFINITY))),
            ("0x1.fffffffffffff8p0", Some(Float(2.0))),
            ("", None),
            ("  ", None),
            ("abc", None),
            ("12abc", None),
            ("1__0", None),
            ("_1", None),
            ("1_", None),
            ("1e", None),
            ("1e+", None),
            (".", None),
            ("-", None),
            ("0x", None),
            ("0xg", None),
            ("0b2", None),
            ("0x1p", None),
            ("--1", None),
            ("1.2.3", None),
            ("１２", None),
        ];
        for (s, want) in cases {
            assert_eq!(read_number(s), *want, "{s:?}");
        }
        assert!(matches!(read_number("NaN"), Some(Float(f)) if f.is_nan()));
        assert!(matches!(read_number("-nan"), Some(Float(f)) if f.is_nan()));
    }

    /// `receiver.name(key, default)` on the arguments `args` of a
    /// tools/call.
    fn get(name: &str, args: &str, key: &str, default: Value<'static>) -> Result<Json, Error> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{args}}}}}"#
        );
        let mut c = ctx();
        let r = call(&mut c, "mcp.Parse", false, &[Value::string(body)]).unwrap();
        call(&mut c, name, true, &[r, Value::str(key), default]).map(|v| json_of(&v))
    }

    #[test]
    fn scalar_getters_convert() {
        let int = |args: &str| get("GetIntArgument", args, "x", Value::Int(-1)).unwrap();
        let float = |args: &str| get("GetFloatArgument", args, "x", Value::Double(-1.0)).unwrap();
        let boolean = |args: &str| get("GetBoolArgument", args, "x", Value::Bool(false)).unwrap();
        let string = |args: &str| get("GetStringArgument", args, "x", Value::str("d")).unwrap();
        let cases: &[(&str, Json, Json, Json, Json)] = &[
            // arguments, int, double, bool, string
            (
                r#"{"x":42}"#,
                json!(42),
                json!(42.0),
                json!(true),
                json!("d"),
            ),
            (
                r#"{"x":"500"}"#,
                json!(500),
                json!(500.0),
                json!(false),
                json!("500"),
            ),
            (
                r#"{"x":42.7}"#,
                json!(42),
                json!(42.7),
                json!(true),
                json!("d"),
            ),
            (
                r#"{"x":-42.7}"#,
                json!(-42),
                json!(-42.7),
                json!(true),
                json!("d"),
            ),
            (
                r#"{"x":"42.7"}"#,
                json!(42),
                json!(42.7),
                json!(false),
                json!("42.7"),
            ),
            (r#"{"x":0}"#, json!(0), json!(0.0), json!(false), json!("d")),
            (
                r#"{"x":0.0}"#,
                json!(0),
                json!(0.0),
                json!(false),
                json!("d"),
            ),
            (
                r#"{"x":1e30}"#,
                json!(i64::MAX),
                json!(1e30),
                json!(true),
                json!("d"),
            ),
            (
                r#"{"x":-1e30}"#,
                json!(i64::MIN),
                json!(-1e30),
                json!(true),
                json!("d"),
            ),
            (
                r#"{"x":"1e30"}"#,
                json!(i64::MAX),
                json!(1e30),
                json!(false),
                json!("1e30"),
            ),
            (
                r#"{"x":18446744073709551615}"#,
                json!(i64::MAX),
                json!(1.8446744073709552e19),
                json!(true),
                json!("d"),
            ),
            (
                r#"{"x":"99999999999999999999"}"#,
                json!(i64::MAX),
                json!(1e20),
                json!(false),
                json!("99999999999999999999"),
            ),
            (
                r#"{"x":"Infinity"}"#,
                json!(i64::MAX),
                json!(-1.0),
                json!(false),
                json!("Infinity"),
            ),
            (
                r#"{"x":"-inf"}"#,
                json!(i64::MIN),
                json!(-1.0),
                json!(false),
                json!("-inf"),
            ),
            (
                r#"{"x":"0x1F4"}"#,
                json!(500),
                json!(500.0),
                json!(false),
                json!("0x1F4"),
            ),
            (
                r#"{"x":"true"}"#,
                json!(-1),
                json!(-1.0),
                json!(true),
                json!("true"),
            ),
            (
                r#"{"x":"FALSE"}"#,
                json!(-1),
                json!(-1.0),
                json!(false),
                json!("FALSE"),
            ),
            (
                r#"{"x":" yes "}"#,
                json!(-1),
                json!(-1.0),
                json!(true),
                json!(" yes "),
            ),
            (
                r#"{"x":"1"}"#,
                json!(1),
                json!(1.0),
                json!(true),
                json!("1"),
            ),
            (
                r#"{"x":"0"}"#,
                json!(0),
                json!(0.0),
                json!(false),
                json!("0"),
            ),
            (
                r#"{"x":"2"}"#,
                json!(2),
                json!(2.0),
                json!(false),
                json!("2"),
            ),
            (
                r#"{"x":"abc"}"#,
                json!(-1),
                json!(-1.0),
                json!(false),
                json!("abc"),
            ),
            (
                r#"{"x":true}"#,
                json!(-1),
                json!(-1.0),
                json!(true),
                json!("d"),
            ),
            (
                r#"{"x":null}"#,
                json!(-1),
                json!(-1.0),
                json!(false),
                json!("d"),
            ),
            (
                r#"{"x":[1]}"#,
                json!(-1),
                json!(-1.0),
                json!(false),
                json!("d"),
            ),
            (
                r#"{"x":{"a":1}}"#,
                json!(-1),
                json!(-1.0),
                json!(false),
                json!("d"),
            ),
            (
                r#"{"y":1}"#,
                json!(-1),
                json!(-1.0),
                json!(false),
                json!("d"),
            ),
            // Not an object: no arguments.
            ("[1]", json!(-1), json!(-1.0), json!(false), json!("d")),
            (r#""x""#, json!(-1), json!(-1.0), json!(false), json!("d")),
        ];
        for (args, i, f, b, st) in cases {
            assert_eq!(&int(args), i, "GetIntArgument {args}");
            assert_eq!(&boolean(args), b, "GetBoolArgument {args}");
            assert_eq!(&string(args), st, "GetStringArgument {args}");
            if args.contains("nfinity") || args.contains("inf") {
                // An infinite double has no JSON: checked below.
                continue;
            }
            assert_eq!(&float(args), f, "GetFloatArgument {args}");
        }
    }

    #[test]
    fn infinities_read_as_infinite_doubles() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":"Infinity","b":"-1e400","c":["inf"]}}}"#;
        let mut c = ctx();
        let r = call(&mut c, "mcp.Parse", false, &[Value::str(body)]).unwrap();
        let f = |c: &mut Ctx<'static>, name: &str, key: &'static str, d: Value<'static>| {
            call(c, name, true, &[r.clone(), Value::str(key), d]).unwrap()
        };
        assert!(
            matches!(f(&mut c, "GetFloatArgument", "a", Value::Double(0.0)), Value::Double(d) if d == f64::INFINITY)
        );
        assert!(
            matches!(f(&mut c, "GetFloatArgument", "b", Value::Double(0.0)), Value::Double(d) if d == f64::NEG_INFINITY)
        );
        let Value::List(l) = f(&mut c, "GetFloatSliceArgument", "c", Value::list(vec![])) else {
            panic!("a list")
        };
        assert!(matches!(l[0], Value::Double(d) if d == f64::INFINITY));
    }

    #[test]
    fn nan_is_an_error_for_every_numeric_getter() {
        for (name, default) in [
            ("GetIntArgument", Value::Int(0)),
            ("GetFloatArgument", Value::Double(0.0)),
            ("GetIntSliceArgument", Value::list(vec![])),
            ("GetFloatSliceArgument", Value::list(vec![])),
        ] {
            let args = if name.contains("Slice") {
                r#"{"x":[1,"NaN"]}"#
            } else {
                r#"{"x":"nan"}"#
            };
            let e = get(name, args, "x", default).unwrap_err();
            assert_eq!(e.kind, crate::cel::ErrorKind::FunctionError, "{name}");
            assert_eq!(e.function.as_deref(), Some(name));
            assert!(e.message.contains("NaN"), "{}", e.message);
        }
        // Not a number for the others: the default, or dropped.
        assert_eq!(
            get("GetBoolArgument", r#"{"x":"NaN"}"#, "x", Value::Bool(true)).unwrap(),
            json!(true)
        );
        assert_eq!(
            get(
                "GetBoolSliceArgument",
                r#"{"x":["NaN",1]}"#,
                "x",
                Value::list(vec![])
            )
            .unwrap(),
            json!([true])
        );
        assert_eq!(
            get("GetStringArgument", r#"{"x":"NaN"}"#, "x", Value::str("")).unwrap(),
            json!("NaN")
        );
    }

    #[test]
    fn slice_getters_convert_and_drop() {
        let mixed = r#"{"x":["a","42",7,2.9,-2.9,true,false,"true","no",null,[1],{"k":1},"1e30",1e30,"0x10","",0]}"#;
        let cases: &[(&str, Json)] = &[
            (
                "GetStringSliceArgument",
                json!(["a", "42", "true", "no", "1e30", "0x10", ""]),
            ),
            (
                "GetIntSliceArgument",
                json!([42, 7, 2, -2, i64::MAX, i64::MAX, 16, 0]),
            ),
            (
                "GetFloatSliceArgument",
                json!([42.0, 7.0, 2.9, -2.9, 1e30, 1e30, 16.0, 0.0]),
            ),
            (
                "GetBoolSliceArgument",
                json!([true, true, true, true, false, true, false, true, false]),
            ),
        ];
        for (name, want) in cases {
            let got = get(name, mixed, "x", Value::list(vec![Value::Null])).unwrap();
            assert_eq!(&got, want, "{name}");
            // Nothing convertible: an empty list, not the default.
            let got = get(name, r#"{"x":[null,{}]}"#, "x", Value::list(vec![])).unwrap();
            assert_eq!(got, json!([]), "{name}");
            // Not a list: the default.
            for args in [r#"{"x":"42"}"#, r#"{"x":1}"#, r#"{}"#, "[[1]]"] {
                let got = get(name, args, "x", Value::list(vec![Value::str("d")])).unwrap();
                assert_eq!(got, json!(["d"]), "{name} {args}");
            }
        }
    }

    #[test]
    fn getters_read_tool_resource_and_prompt_arguments() {
        let bodies = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"n":"5"}}}"#,
                "ToolCall",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"u","arguments":{"n":"5"}}}"#,
                "ResourceRead",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p","arguments":{"n":"5"}}}"#,
                "PromptGet",
            ),
        ];
        for (body, section) in bodies {
            let mut c = ctx();
            let r = call(&mut c, "mcp.Parse", false, &[Value::str(body)]).unwrap();
            let s = request(&r).unwrap().field(section).unwrap();
            for receiver in [r.clone(), s] {
                let got = call(
                    &mut c,
                    "GetIntArgument",
                    true,
                    &[receiver, Value::str("n"), Value::Int(0)],
                )
                .unwrap();
                assert!(matches!(got, Value::Int(5)), "{section}");
            }
        }
        // A resource read without arguments reads the defaults.
        let v = crate::cel::eval::plan::eval_standalone(
            r#"mcp.Parse('{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"u"}}').ResourceRead.GetIntArgument("n", 9)"#,
        )
        .unwrap();
        assert!(matches!(v, Value::Int(9)));
    }

    #[test]
    fn the_string_bypass_of_an_int_limit_is_read_as_the_number() {
        // `limit <= 100` must see 500 however it is written.
        for limit in [
            r#""500""#,
            "500",
            "500.0",
            r#""500.9""#,
            r#"" 500 ""#,
            r#""5e2""#,
            r#""0x1F4""#,
            "1e30",
            r#""1e30""#,
            "18446744073709551615",
        ] {
            let got = get(
                "GetIntArgument",
                &format!(r#"{{"limit":{limit}}}"#),
                "limit",
                Value::Int(10),
            )
            .unwrap();
            assert!(got.as_i64().unwrap() >= 500, "{limit}: {got}");
        }
    }

    #[test]
    fn a_small_budget_stops_a_big_slice() {
        let items = vec![format!("\"{}\"", "7".repeat(1000)); 900].join(",");
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"x":[{items}]}}}}}}"#
        );
        let r = call(&mut ctx(), "mcp.Parse", false, &[Value::string(body)]).unwrap();
        let mut c = Ctx::new(None, Meter::new(10_000));
        let e = call(
            &mut c,
            "GetIntSliceArgument",
            true,
            &[r, Value::str("x"), Value::list(vec![])],
        )
        .unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
    }
}
