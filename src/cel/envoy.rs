//! The `envoy` CEL library: builders for the Envoy `CheckResponse`.
//!
//! ```cel
//! envoy.Allowed().WithHeader("x-user", "alice").WithoutHeader("x-api-key").Response()
//! envoy.Denied(403).WithBody("admins only").Response().WithMessage("not an admin")
//! ```
//!
//! Builders refuse what Envoy could not send: `envoy.Denied(n)` needs a
//! status in 300–599 (a denial is never a 1xx or 2xx), and a header name must
//! be an HTTP token (RFC 9110 `tchar`s, so no `:` pseudo-headers, no spaces
//! and no control characters) and a header value must hold no CR, LF or NUL
//! (header splitting). Either is an evaluation error, so `failurePolicy:
//! Fail` denies; the error never quotes the value.
//!
//! The values are small immutable Rust structs: every `With*` returns a new
//! builder, so a builder kept in a variable and extended in two places gives
//! two independent responses. The mapping onto the protobuf message lives in
//! [`crate::decision`].

use cel::common::types::{
    CelBool, CelInt, CelString, Type, BOOL_TYPE, DYN_TYPE, INT_TYPE, STRING_TYPE,
};
use cel::common::value::{CowVal, FromVal, StaticVal, Val};
use cel::{DeclarationError, Env, ExecutionError};
use std::any::Any;

const OK: Type = Type::new_struct_type("envoy.service.auth.v3.OkHttpResponse");
const DENIED: Type = Type::new_struct_type("envoy.service.auth.v3.DeniedHttpResponse");
const RESPONSE: Type = Type::new_struct_type("envoy.service.auth.v3.CheckResponse");
const HEADER: Type = Type::new_struct_type("envoy.config.core.v3.HeaderValueOption");
const QUERY: Type = Type::new_struct_type("envoy.config.core.v3.QueryParameter");
static OK_T: Type = OK;
static DENIED_T: Type = DENIED;
static RESPONSE_T: Type = RESPONSE;
static HEADER_T: Type = HEADER;
static QUERY_T: Type = QUERY;

/// `envoy.Header(name, value)`: a header to add, `keep_empty_value` optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOption {
    pub key: String,
    pub value: String,
    pub keep_empty_value: bool,
}

impl HeaderOption {
    /// A header celgate itself sets (not checked: the caller's name is known good).
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderOption {
            key: key.into(),
            value: value.into(),
            keep_empty_value: false,
        }
    }
}

/// `envoy.QueryParam(name, value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParam {
    pub key: String,
    pub value: String,
}

/// `envoy.Allowed()` and what its `With*` methods add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OkResponse {
    /// Added to the request that goes upstream.
    pub headers: Vec<HeaderOption>,
    /// Removed from the request before it goes upstream.
    pub headers_to_remove: Vec<String>,
    /// Added to the response the client gets.
    pub response_headers_to_add: Vec<HeaderOption>,
    pub query_parameters_to_set: Vec<QueryParam>,
    pub query_parameters_to_remove: Vec<String>,
}

/// `envoy.Denied(status)` and what its `With*` methods add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeniedResponse {
    /// HTTP status sent to the client.
    pub status: i32,
    /// Headers on the denial sent to the client.
    pub headers: Vec<HeaderOption>,
    pub body: String,
}

/// The outcome half of a [`CheckResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(OkResponse),
    Denied(DeniedResponse),
}

/// `.Response()`: what a validation returns to decide a request.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResponse {
    pub outcome: Outcome,
    /// `google.rpc.Status.message`.
    pub message: String,
    /// `dynamic_metadata`, set by `WithMetadata`.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CheckResponse {
    pub fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }
}

macro_rules! static_val {
    ($ty:ty, $cel:expr) => {
        impl Val for $ty {
            fn get_type(&self) -> &Type {
                &$cel
            }
            fn cel_type() -> &'static Type {
                &$cel
            }
            fn equals(&self, other: &dyn Val) -> bool {
                other.downcast_ref::<$ty>().is_some_and(|o| o == self)
            }
            fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
                Box::new(self.clone())
            }
            fn as_any(&self) -> Option<&dyn Any> {
                Some(self)
            }
        }
        impl StaticVal for $ty {}
    };
}
static_val!(HeaderOption, HEADER_T);
static_val!(QueryParam, QUERY_T);
static_val!(OkResponse, OK_T);
static_val!(DeniedResponse, DENIED_T);
static_val!(CheckResponse, RESPONSE_T);

type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;
type Ret<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

fn arg<'a, 'b, 'v, T>(
    f: &str,
    args: &'a [CowVal<'b, 'v>],
    i: usize,
) -> Result<&'a T, ExecutionError>
where
    T: FromVal<'a, 'v> + Val,
{
    args.get(i)
        .and_then(|a| a.downcast_ref::<T>())
        .ok_or_else(|| {
            ExecutionError::function_error(
                f,
                format!("argument {i} must be a {}", T::cel_type().name()),
            )
        })
}

fn string(f: &str, args: &[CowVal<'_, '_>], i: usize) -> Result<String, ExecutionError> {
    arg::<CelString>(f, args, i).map(|s| s.inner().to_owned())
}

fn owned<'b, 'v, T: Val + 'static>(v: T) -> Ret<'b, 'v> {
    Ok(CowVal::owned(v))
}

pub fn extension(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_overload("envoy.Allowed", "envoy_allowed", vec![], allowed)?;
    env.add_overload("envoy.Denied", "envoy_denied_int", vec![INT_TYPE], denied)?;
    env.add_overload(
        "envoy.Header",
        "envoy_header_string_string",
        vec![STRING_TYPE, STRING_TYPE],
        header,
    )?;
    env.add_overload(
        "envoy.QueryParam",
        "envoy_query_param_string_string",
        vec![STRING_TYPE, STRING_TYPE],
        query_param,
    )?;

    env.add_member_overload(
        "KeepEmptyValue",
        "header_keep_empty_value",
        HEADER,
        vec![],
        keep_empty,
    )?;
    env.add_member_overload(
        "KeepEmptyValue",
        "header_keep_empty_value_bool",
        HEADER,
        vec![BOOL_TYPE],
        keep_empty_bool,
    )?;

    env.add_member_overload(
        "WithHeader",
        "ok_with_header_string_string",
        OK,
        vec![STRING_TYPE, STRING_TYPE],
        ok_with_header,
    )?;
    env.add_member_overload(
        "WithHeader",
        "ok_with_header_header",
        OK,
        vec![HEADER],
        ok_with_header,
    )?;
    env.add_member_overload(
        "WithHeader",
        "denied_with_header_string_string",
        DENIED,
        vec![STRING_TYPE, STRING_TYPE],
        denied_with_header,
    )?;
    env.add_member_overload(
        "WithHeader",
        "denied_with_header_header",
        DENIED,
        vec![HEADER],
        denied_with_header,
    )?;
    env.add_member_overload(
        "WithoutHeader",
        "ok_without_header_string",
        OK,
        vec![STRING_TYPE],
        ok_without_header,
    )?;
    env.add_member_overload(
        "WithResponseHeader",
        "ok_with_response_header_string_string",
        OK,
        vec![STRING_TYPE, STRING_TYPE],
        ok_with_response_header,
    )?;
    env.add_member_overload(
        "WithResponseHeader",
        "ok_with_response_header_header",
        OK,
        vec![HEADER],
        ok_with_response_header,
    )?;
    env.add_member_overload(
        "WithQueryParam",
        "ok_with_query_param_string_string",
        OK,
        vec![STRING_TYPE, STRING_TYPE],
        ok_with_query_param,
    )?;
    env.add_member_overload(
        "WithQueryParam",
        "ok_with_query_param_param",
        OK,
        vec![QUERY],
        ok_with_query_param,
    )?;
    env.add_member_overload(
        "WithoutQueryParam",
        "ok_without_query_param_string",
        OK,
        vec![STRING_TYPE],
        ok_without_query_param,
    )?;
    env.add_member_overload(
        "WithBody",
        "denied_with_body_string",
        DENIED,
        vec![STRING_TYPE],
        denied_with_body,
    )?;
    env.add_member_overload("Response", "ok_response", OK, vec![], ok_response)?;
    env.add_member_overload(
        "Response",
        "denied_response",
        DENIED,
        vec![],
        denied_response,
    )?;
    env.add_member_overload(
        "WithMessage",
        "response_with_message_string",
        RESPONSE,
        vec![STRING_TYPE],
        with_message,
    )?;
    env.add_member_overload(
        "WithMetadata",
        "response_with_metadata_map",
        RESPONSE,
        vec![DYN_TYPE],
        with_metadata,
    )?;
    Ok(())
}

fn allowed<'b, 'v>(_: Args<'b, 'v>) -> Ret<'b, 'v> {
    owned(OkResponse::default())
}

/// HTTP statuses a denial may carry.
pub const DENIAL_STATUSES: std::ops::RangeInclusive<i64> = 300..=599;

fn denied<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let code = *arg::<CelInt>("envoy.Denied", &args, 0)?.inner();
    owned(denial(code).map_err(|e| ExecutionError::function_error("envoy.Denied", e))?)
}

/// `envoy.Denied(code)`: refused unless `code` is a denial status.
pub(crate) fn denial(code: i64) -> Result<DeniedResponse, String> {
    if !DENIAL_STATUSES.contains(&code) {
        return Err(format!(
            "HTTP status {code} is not a denial status (300 to 599)"
        ));
    }
    Ok(DeniedResponse {
        status: code as i32,
        ..Default::default()
    })
}

/// Why a header name cannot be sent, if it cannot. Never quotes the name.
pub fn header_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the header name is empty".into());
    }
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    name.bytes().position(|b| !tchar(b)).map(|i| {
        format!(
            "the header name is not an HTTP token ({} at byte {i})",
            byte_kind(name.as_bytes()[i])
        )
    })
}

/// Why a header value cannot be sent, if it cannot. Never quotes the value.
pub fn header_value_problem(value: &str) -> Option<String> {
    value
        .bytes()
        .position(|b| matches!(b, b'\r' | b'\n' | 0))
        .map(|i| {
            format!(
                "the header value holds {} at byte {i}",
                byte_kind(value.as_bytes()[i])
            )
        })
}

fn byte_kind(b: u8) -> &'static str {
    match b {
        b'\r' => "a CR",
        b'\n' => "a LF",
        0 => "a NUL",
        b':' => "a colon",
        b' ' | b'\t' => "whitespace",
        b if b.is_ascii_control() => "a control character",
        b if !b.is_ascii() => "a non-ASCII character",
        _ => "a separator",
    }
}

/// A header to send: the name must be a token, the value free of CR/LF/NUL.
fn checked_header(
    f: &str,
    key: String,
    value: String,
    keep_empty_value: bool,
) -> Result<HeaderOption, ExecutionError> {
    header_option(key, value, keep_empty_value).map_err(|e| ExecutionError::function_error(f, e))
}

/// [`checked_header`]'s check, with its refusal as text.
pub(crate) fn header_option(
    key: String,
    value: String,
    keep_empty_value: bool,
) -> Result<HeaderOption, String> {
    if let Some(p) = header_name_problem(&key) {
        return Err(p);
    }
    if let Some(p) = header_value_problem(&value) {
        return Err(format!("header {key:?}: {p}"));
    }
    Ok(HeaderOption {
        key,
        value,
        keep_empty_value,
    })
}

fn header<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    const F: &str = "envoy.Header";
    owned(checked_header(
        F,
        string(F, &args, 0)?,
        string(F, &args, 1)?,
        false,
    )?)
}

/// Why a query parameter's name or value cannot be sent, if it cannot:
/// Envoy writes it into the request line, where CR, LF or NUL would split
/// or end it. Never quotes the text.
fn query_problem(what: &str, text: &str) -> Option<String> {
    text.bytes()
        .position(|b| matches!(b, b'\r' | b'\n' | 0))
        .map(|i| {
            format!(
                "the query parameter {what} holds {} at byte {i}",
                byte_kind(text.as_bytes()[i])
            )
        })
}

/// A query parameter to set or remove, refused when it cannot be sent.
fn checked_query(f: &str, key: String, value: String) -> Result<QueryParam, ExecutionError> {
    query_param_checked(key, value).map_err(|e| ExecutionError::function_error(f, e))
}

/// [`checked_query`]'s check, with its refusal as text.
pub(crate) fn query_param_checked(key: String, value: String) -> Result<QueryParam, String> {
    if key.is_empty() {
        return Err("the query parameter name is empty".into());
    }
    if let Some(p) = query_problem("name", &key).or_else(|| query_problem("value", &value)) {
        return Err(p);
    }
    Ok(QueryParam { key, value })
}

fn query_param<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    const F: &str = "envoy.QueryParam";
    owned(checked_query(
        F,
        string(F, &args, 0)?,
        string(F, &args, 1)?,
    )?)
}

fn keep_empty<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let mut h = arg::<HeaderOption>("KeepEmptyValue", &args, 0)?.clone();
    h.keep_empty_value = true;
    owned(h)
}

fn keep_empty_bool<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let mut h = arg::<HeaderOption>("KeepEmptyValue", &args, 0)?.clone();
    h.keep_empty_value = *arg::<CelBool>("KeepEmptyValue", &args, 1)?.inner();
    owned(h)
}

/// The header of a `(name, value)` or `(header)` call starting at argument 1.
fn header_arg(f: &str, args: &[CowVal<'_, '_>]) -> Result<HeaderOption, ExecutionError> {
    if args.len() == 3 {
        checked_header(f, string(f, args, 1)?, string(f, args, 2)?, false)
    } else {
        // `envoy.Header` checked it already; checking again is cheap and
        // keeps this safe whatever made the value.
        let h = arg::<HeaderOption>(f, args, 1)?;
        checked_header(f, h.key.clone(), h.value.clone(), h.keep_empty_value)
    }
}

fn ok_with<'b, 'v>(
    f: &str,
    args: &[CowVal<'b, 'v>],
    change: impl FnOnce(&mut OkResponse) -> Result<(), ExecutionError>,
) -> Ret<'b, 'v> {
    let mut ok = arg::<OkResponse>(f, args, 0)?.clone();
    change(&mut ok)?;
    owned(ok)
}

fn denied_with<'b, 'v>(
    f: &str,
    args: &[CowVal<'b, 'v>],
    change: impl FnOnce(&mut DeniedResponse) -> Result<(), ExecutionError>,
) -> Ret<'b, 'v> {
    let mut d = arg::<DeniedResponse>(f, args, 0)?.clone();
    change(&mut d)?;
    owned(d)
}

fn ok_with_header<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let h = header_arg("WithHeader", &args)?;
    ok_with("WithHeader", &args, |ok| {
        ok.headers.push(h);
        Ok(())
    })
}

fn denied_with_header<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let h = header_arg("WithHeader", &args)?;
    denied_with("WithHeader", &args, |d| {
        d.headers.push(h);
        Ok(())
    })
}

fn ok_without_header<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let name = string("WithoutHeader", &args, 1)?;
    if let Some(p) = header_name_problem(&name) {
        return Err(ExecutionError::function_error("WithoutHeader", p));
    }
    ok_with("WithoutHeader", &args, |ok| {
        ok.headers_to_remove.push(name);
        Ok(())
    })
}

fn ok_with_response_header<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let h = header_arg("WithResponseHeader", &args)?;
    ok_with("WithResponseHeader", &args, |ok| {
        ok.response_headers_to_add.push(h);
        Ok(())
    })
}

fn ok_with_query_param<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let f = "WithQueryParam";
    let q = if args.len() == 3 {
        checked_query(f, string(f, &args, 1)?, string(f, &args, 2)?)?
    } else {
        arg::<QueryParam>(f, &args, 1)?.clone()
    };
    ok_with(f, &args, |ok| {
        ok.query_parameters_to_set.push(q);
        Ok(())
    })
}

fn ok_without_query_param<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let name = checked_query(
        "WithoutQueryParam",
        string("WithoutQueryParam", &args, 1)?,
        String::new(),
    )?
    .key;
    ok_with("WithoutQueryParam", &args, |ok| {
        ok.query_parameters_to_remove.push(name);
        Ok(())
    })
}

fn denied_with_body<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let body = string("WithBody", &args, 1)?;
    denied_with("WithBody", &args, |d| {
        d.body = body;
        Ok(())
    })
}

fn ok_response<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let ok = arg::<OkResponse>("Response", &args, 0)?.clone();
    owned(CheckResponse {
        outcome: Outcome::Ok(ok),
        message: String::new(),
        metadata: None,
    })
}

fn denied_response<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let d = arg::<DeniedResponse>("Response", &args, 0)?.clone();
    owned(CheckResponse {
        outcome: Outcome::Denied(d),
        message: String::new(),
        metadata: None,
    })
}

fn with_message<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let mut r = arg::<CheckResponse>("WithMessage", &args, 0)?.clone();
    r.message = string("WithMessage", &args, 1)?;
    owned(r)
}

fn with_metadata<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let mut r = arg::<CheckResponse>("WithMetadata", &args, 0)?.clone();
    let meta = args
        .get(1)
        .ok_or_else(|| ExecutionError::function_error("WithMetadata", "expects a map"))?;
    r.metadata = Some(
        crate::cel::convert::to_json(&**meta)
            .and_then(metadata_object)
            .map_err(|e| ExecutionError::function_error("WithMetadata", e))?,
    );
    owned(r)
}

/// The argument of `WithMetadata`, as JSON: it must be an object.
pub(crate) fn metadata_object(
    j: serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match j {
        serde_json::Value::Object(m) => Ok(m),
        other => Err(format!(
            "expects a map with string keys, got {}",
            json_kind(&other)
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "map",
    }
}

/// The library's overloads, for the type checker.
pub const DECLS: &str = "
envoy.Allowed() -> envoy.service.auth.v3.OkHttpResponse
envoy.Denied(int) -> envoy.service.auth.v3.DeniedHttpResponse
envoy.Header(string, string) -> envoy.config.core.v3.HeaderValueOption
envoy.QueryParam(string, string) -> envoy.config.core.v3.QueryParameter
(envoy.config.core.v3.HeaderValueOption).KeepEmptyValue() -> envoy.config.core.v3.HeaderValueOption
(envoy.config.core.v3.HeaderValueOption).KeepEmptyValue(bool) -> envoy.config.core.v3.HeaderValueOption
(envoy.service.auth.v3.OkHttpResponse).WithHeader(string, string) -> envoy.service.auth.v3.OkHttpResponse
(envoy.service.auth.v3.OkHttpResponse).WithHeader(envoy.config.core.v3.HeaderValueOption) -> envoy.service.auth.v3.OkHttpResponse
(envoy.service.auth.v3.DeniedHttpResponse).WithHeader(string, string) -> envoy.service.auth.v3.DeniedHttpResponse
(envoy.service.auth.v3.DeniedHttpResponse).WithHeader(envoy.config.core.v3.HeaderValueOption) -> envoy.service.auth.v3.DeniedHttpResponse
(envoy.service.auth.v3.OkHttpResponse).WithoutHeader(string) -> envoy.service.auth.v3.OkHttpResponse
(envoy.service.auth.v3.OkHttpResponse).WithResponseHeader(string, string) -> envoy.service.auth.v3.OkHttpResponse
(envoy.service.auth.v3.OkHttpResponse).WithResponseHeader(envoy.config.core.v3.HeaderValueOption) -> envoy.service.auth.v3.OkHttpResponse
(envoy.service.auth.v3.OkHttpResponse).WithQueryParam(string, string) -> envoy.service.auth.v3.OkHttpResponse
(envoy.service.auth.v3.OkHttpResponse).WithQueryParam(envoy.config.core.v3.QueryParameter) -> envoy.service.auth.v3.OkHttpResponse
(envoy.service.auth.v3.OkHttpResponse).WithoutQueryParam(string) -> envoy.service.auth.v3.OkHttpResponse
(envoy.service.auth.v3.DeniedHttpResponse).WithBody(string) -> envoy.service.auth.v3.DeniedHttpResponse
(envoy.service.auth.v3.OkHttpResponse).Response() -> envoy.service.auth.v3.CheckResponse
(envoy.service.auth.v3.DeniedHttpResponse).Response() -> envoy.service.auth.v3.CheckResponse
(envoy.service.auth.v3.CheckResponse).WithMessage(string) -> envoy.service.auth.v3.CheckResponse
(envoy.service.auth.v3.CheckResponse).WithMetadata(map(string, dyn)) -> envoy.service.auth.v3.CheckResponse
";

/// The library's values have no fields an expression can read: they are
/// built and passed on.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = &[
    ("envoy.service.auth.v3.OkHttpResponse", &[]),
    ("envoy.service.auth.v3.DeniedHttpResponse", &[]),
    ("envoy.service.auth.v3.CheckResponse", &[]),
    ("envoy.config.core.v3.HeaderValueOption", &[]),
    ("envoy.config.core.v3.QueryParameter", &[]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_problems_never_quote_the_value() {
        let secret = "SUPERSECRET-TOKEN\r\nx-evil: 1";
        let p = header_value_problem(secret).unwrap();
        assert_eq!(p, "the header value holds a CR at byte 17");
        assert!(!p.contains("SUPERSECRET"));
        let p = header_name_problem("SECRET\nname").unwrap();
        assert!(!p.contains("SECRET"), "{p}");
        assert!(header_value_problem("a\tb \u{e9}").is_none());
        assert!(header_name_problem("x-Custom_1.!#$%&'*+^`|~").is_none());
        for bad in ["", ":path", "x a", "x\u{e9}", "x(y)", "x\0", "a,b"] {
            assert!(header_name_problem(bad).is_some(), "{bad:?}");
        }
        let e = checked_header("WithHeader", "x-user".into(), secret.into(), false).unwrap_err();
        assert!(!format!("{e:?}").contains("SUPERSECRET"), "{e:?}");
    }
}
