//! The `envoy` library: builders for the Envoy `CheckResponse`.
//!
//! ```cel
//! envoy.Allowed().WithHeader("x-user", "alice").WithoutHeader("x-api-key").Response()
//! envoy.Denied(403).WithBody("admins only").Response().WithMessage("not an admin")
//! ```
//!
//! The builders are the response types of [`crate::response`] held as
//! library objects; every `With*` returns a new builder. The checks (a
//! denial status in 300–599, header names that are HTTP tokens, header and
//! query values without CR, LF or NUL) and their messages are that module's.

use crate::cel::eval::value::Bin;
use crate::cel::eval::{Ctx, Error, Function, Map, Value};
use crate::response::{
    self, CheckResponse, DeniedResponse, HeaderOption, OkResponse, Outcome, QueryParam,
};
use serde_json::Value as Json;

const OK: &str = "envoy.service.auth.v3.OkHttpResponse";
const DENIED: &str = "envoy.service.auth.v3.DeniedHttpResponse";
const RESPONSE: &str = "envoy.service.auth.v3.CheckResponse";
const HEADER: &str = "envoy.config.core.v3.HeaderValueOption";
const QUERY: &str = "envoy.config.core.v3.QueryParameter";

response_object!(OkResponse, OK);
response_object!(DeniedResponse, DENIED);
response_object!(CheckResponse, RESPONSE);
response_object!(HeaderOption, HEADER);
response_object!(QueryParam, QUERY);

/// The response a validation returned, taken out of its value (copied only
/// when something else still holds it); `Err` gives back any other value.
pub fn into_check_response(mut v: Value<'_>) -> Result<CheckResponse, Value<'_>> {
    match v.object_mut::<CheckResponse>() {
        Some(r) => Ok(std::mem::replace(
            r,
            CheckResponse {
                outcome: Outcome::Ok(OkResponse::default()),
                message: String::new(),
                metadata: None,
            },
        )),
        None => Err(v),
    }
}

pub const FUNCTIONS: &[Function] = &[
    Function::global("envoy.Allowed", 0, allowed),
    Function::global("envoy.Denied", 1, denied),
    Function::global("envoy.Header", 2, header),
    Function::global("envoy.QueryParam", 2, query_param),
    Function::method("KeepEmptyValue", 0, keep_empty),
    Function::method("KeepEmptyValue", 1, keep_empty),
    Function::method("WithHeader", 1, with_header).owning(with_header_owning),
    Function::method("WithHeader", 2, with_header).owning(with_header_owning),
    Function::method("WithoutHeader", 1, without_header).owning(without_header_owning),
    Function::method("WithResponseHeader", 1, with_response_header)
        .owning(with_response_header_owning),
    Function::method("WithResponseHeader", 2, with_response_header)
        .owning(with_response_header_owning),
    Function::method("WithQueryParam", 1, with_query_param).owning(with_query_param_owning),
    Function::method("WithQueryParam", 2, with_query_param).owning(with_query_param_owning),
    Function::method("WithoutQueryParam", 1, without_query_param)
        .owning(without_query_param_owning),
    Function::method("WithBody", 1, with_body).owning(with_body_owning),
    Function::method("Response", 0, response).owning(response_owning),
    Function::method("WithMessage", 1, with_message).owning(with_message_owning),
    Function::method("WithMetadata", 1, with_metadata).owning(with_metadata_owning),
];

fn allowed<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match args {
        [] => Ok(Value::object(OkResponse::default())),
        _ => Err(Error::no_overload("envoy.Allowed", args)),
    }
}

fn denied<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match args {
        [Value::Int(code)] => response::denial(*code)
            .map(Value::object)
            .map_err(|e| Error::function("envoy.Denied", e)),
        _ => Err(Error::no_overload("envoy.Denied", args)),
    }
}

/// A checked header from `(name, value)`, charged by its size.
fn new_header(
    ctx: &mut Ctx<'_>,
    f: &'static str,
    key: &str,
    value: &str,
    keep_empty_value: bool,
) -> Result<HeaderOption, Error> {
    ctx.charge_bytes(key.len() + value.len())?;
    response::header_option(key.to_owned(), value.to_owned(), keep_empty_value)
        .map_err(|e| Error::function(f, e))
}

fn header<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "envoy.Header";
    match args {
        [Value::String(k), Value::String(v)] => Ok(Value::object(new_header(ctx, F, k, v, false)?)),
        _ => Err(Error::no_overload(F, args)),
    }
}

fn new_query(
    ctx: &mut Ctx<'_>,
    f: &'static str,
    key: &str,
    value: &str,
) -> Result<QueryParam, Error> {
    ctx.charge_bytes(key.len() + value.len())?;
    response::query_param_checked(key.to_owned(), value.to_owned())
        .map_err(|e| Error::function(f, e))
}

fn query_param<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "envoy.QueryParam";
    match args {
        [Value::String(k), Value::String(v)] => Ok(Value::object(new_query(ctx, F, k, v)?)),
        _ => Err(Error::no_overload(F, args)),
    }
}

fn keep_empty<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (Some(h), keep) = (
        args.first().and_then(Value::downcast::<HeaderOption>),
        args.get(1),
    ) else {
        return Err(Error::no_overload("KeepEmptyValue", args));
    };
    let keep = match keep {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::no_overload("KeepEmptyValue", args)),
    };
    Ok(Value::object(HeaderOption {
        keep_empty_value: keep,
        ..h.clone()
    }))
}

/// The header of a `(name, value)` or `(header)` call: `args` without the
/// receiver. `None` for other argument types.
fn header_arg(
    ctx: &mut Ctx<'_>,
    f: &'static str,
    args: &[Value<'_>],
) -> Option<Result<HeaderOption, Error>> {
    match args {
        [Value::String(k), Value::String(v)] => Some(new_header(ctx, f, k, v, false)),
        // `envoy.Header` checked it already; checking again is cheap and
        // keeps this safe whatever made the value.
        [h] => {
            let h = h.downcast::<HeaderOption>()?;
            Some(
                new_header(ctx, f, &h.key, &h.value, h.keep_empty_value).map(|n| HeaderOption {
                    append_action: h.append_action,
                    ..n
                }),
            )
        }
        _ => None,
    }
}

/// The builder methods in their by-reference form (constant folding, a
/// call that may reach several functions): the arguments are copied
/// (reference counts) and the owning form changes the copy.
macro_rules! by_reference {
    ($($name:ident => $owning:ident),* $(,)?) => {$(
        fn $name<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
            let mut args: smallvec::SmallVec<[Value<'r>; 4]> = args.iter().cloned().collect();
            $owning(ctx, &mut args)
        }
    )*};
}
by_reference! {
    with_header => with_header_owning,
    without_header => without_header_owning,
    with_response_header => with_response_header_owning,
    with_query_param => with_query_param_owning,
    without_query_param => without_query_param_owning,
    with_body => with_body_owning,
    response => response_owning,
    with_message => with_message_owning,
    with_metadata => with_metadata_owning,
}

/// The receiver, `args[0]`, once the method has changed what it holds.
fn receiver<'r>(args: &mut [Value<'r>]) -> Value<'r> {
    std::mem::replace(&mut args[0], Value::Null)
}

fn with_header_owning<'r>(ctx: &mut Ctx<'r>, args: &mut [Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "WithHeader";
    let is_builder = matches!(args.first(), Some(v)
        if v.downcast::<OkResponse>().is_some() || v.downcast::<DeniedResponse>().is_some());
    let h = match (
        is_builder,
        header_arg(ctx, F, args.get(1..).unwrap_or_default()),
    ) {
        (true, Some(h)) => h?,
        _ => return Err(Error::no_overload(F, args)),
    };
    if let Some(ok) = args[0].object_mut::<OkResponse>() {
        ok.headers.push(h);
    } else if let Some(d) = args[0].object_mut::<DeniedResponse>() {
        d.headers.push(h);
    }
    Ok(receiver(args))
}

/// Checks that the receiver is an allowed response.
fn ok_receiver(f: &str, args: &[Value<'_>]) -> Result<(), Error> {
    match args.first().and_then(Value::downcast::<OkResponse>) {
        Some(_) => Ok(()),
        None => Err(Error::no_overload(f, args)),
    }
}

/// The allowed response the receiver holds, to change.
fn ok_mut<'a>(args: &'a mut [Value<'_>]) -> &'a mut OkResponse {
    args[0]
        .object_mut::<OkResponse>()
        .expect("the receiver was checked to be an allowed response")
}

fn without_header_owning<'r>(
    ctx: &mut Ctx<'r>,
    args: &mut [Value<'r>],
) -> Result<Value<'r>, Error> {
    const F: &str = "WithoutHeader";
    let [_, Value::String(name)] = &*args else {
        return Err(Error::no_overload(F, args));
    };
    ok_receiver(F, args)?;
    ctx.charge_bytes(name.len())?;
    if let Some(p) = response::header_name_problem(name) {
        return Err(Error::function(F, p));
    }
    let name = name.to_string();
    ok_mut(args).headers_to_remove.push(name);
    Ok(receiver(args))
}

fn with_response_header_owning<'r>(
    ctx: &mut Ctx<'r>,
    args: &mut [Value<'r>],
) -> Result<Value<'r>, Error> {
    const F: &str = "WithResponseHeader";
    ok_receiver(F, args)?;
    let h = header_arg(ctx, F, args.get(1..).unwrap_or_default())
        .ok_or_else(|| Error::no_overload(F, args))??;
    ok_mut(args).response_headers_to_add.push(h);
    Ok(receiver(args))
}

fn with_query_param_owning<'r>(
    ctx: &mut Ctx<'r>,
    args: &mut [Value<'r>],
) -> Result<Value<'r>, Error> {
    const F: &str = "WithQueryParam";
    ok_receiver(F, args)?;
    let q = match args.get(1..).unwrap_or_default() {
        [Value::String(k), Value::String(v)] => new_query(ctx, F, k, v)?,
        // Not checked again, as before: `envoy.QueryParam` made it.
        [q] => q
            .downcast::<QueryParam>()
            .cloned()
            .ok_or_else(|| Error::no_overload(F, args))?,
        _ => return Err(Error::no_overload(F, args)),
    };
    ok_mut(args).query_parameters_to_set.push(q);
    Ok(receiver(args))
}

fn without_query_param_owning<'r>(
    ctx: &mut Ctx<'r>,
    args: &mut [Value<'r>],
) -> Result<Value<'r>, Error> {
    const F: &str = "WithoutQueryParam";
    let [_, Value::String(name)] = &*args else {
        return Err(Error::no_overload(F, args));
    };
    ok_receiver(F, args)?;
    let q = new_query(ctx, F, name, "")?;
    ok_mut(args).query_parameters_to_remove.push(q.key);
    Ok(receiver(args))
}

fn with_body_owning<'r>(_: &mut Ctx<'r>, args: &mut [Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "WithBody";
    let [d, Value::String(body)] = args else {
        return Err(Error::no_overload(F, args));
    };
    let body = body.to_string();
    match d.object_mut::<DeniedResponse>() {
        Some(d) => d.body = body,
        None => return Err(Error::no_overload(F, args)),
    }
    Ok(receiver(args))
}

fn response_owning<'r>(_: &mut Ctx<'r>, args: &mut [Value<'r>]) -> Result<Value<'r>, Error> {
    let outcome = match args {
        [b] => {
            if let Some(ok) = b.object_mut::<OkResponse>() {
                Outcome::Ok(std::mem::take(ok))
            } else if let Some(d) = b.object_mut::<DeniedResponse>() {
                Outcome::Denied(std::mem::take(d))
            } else {
                // HTTP mode's `http.Allowed()`/`http.Denied(r)`: one
                // `Response` method serves both, so that the envoy one keeps
                // its owning form.
                return super::httpauthz::response(args);
            }
        }
        _ => return Err(Error::no_overload("Response", args)),
    };
    Ok(Value::object(CheckResponse {
        outcome,
        message: String::new(),
        metadata: None,
    }))
}

/// The response the receiver holds, to change; an error when it holds none.
fn response_mut<'a>(f: &str, args: &'a mut [Value<'_>]) -> Result<&'a mut CheckResponse, Error> {
    if args[0].downcast::<CheckResponse>().is_none() {
        return Err(Error::no_overload(f, args));
    }
    Ok(args[0]
        .object_mut::<CheckResponse>()
        .expect("the receiver was checked to be a response"))
}

fn with_message_owning<'r>(_: &mut Ctx<'r>, args: &mut [Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "WithMessage";
    let [_, Value::String(m)] = &*args else {
        return Err(Error::no_overload(F, args));
    };
    let m = m.to_string();
    response_mut(F, args)?.message = m;
    Ok(receiver(args))
}

fn with_metadata_owning<'r>(ctx: &mut Ctx<'r>, args: &mut [Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "WithMetadata";
    let [r, meta] = &*args else {
        return Err(Error::no_overload(F, args));
    };
    if r.downcast::<CheckResponse>().is_none() {
        return Err(Error::no_overload(F, args));
    }
    let json = legacy_json(ctx, meta).map_err(|e| match e {
        Refused::Cost(e) => e,
        Refused::Text(t) => Error::function(F, t),
    })?;
    let metadata = response::metadata_object(json).map_err(|e| Error::function(F, e))?;
    response_mut(F, args)?.metadata = Some(metadata);
    Ok(receiver(args))
}

/// Why [`legacy_json`] gave no JSON.
pub(crate) enum Refused {
    /// The request's budget is spent.
    Cost(Error),
    /// A value JSON cannot hold; the message names its type.
    Text(String),
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused::Cost(e)
    }
}

/// A value as JSON exactly as the response builders have always written
/// it: a NaN or infinite double is `null`, bytes base64, a timestamp
/// RFC 3339 with a numeric offset, map keys as their JSON text, an optional its value or `null`, an MCP
/// request or section its fields; a duration, a type, a request message
/// or another library's object is refused. Charged one unit per value
/// and the size of the strings copied.
pub(crate) fn legacy_json(ctx: &mut Ctx<'_>, v: &Value<'_>) -> Result<Json, Refused> {
    ctx.charge(1)?;
    Ok(match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Uint(u) => Json::from(*u),
        Value::Double(d) => serde_json::Number::from_f64(*d)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Value::String(s) => {
            ctx.charge_bytes(s.len())?;
            Json::String(s.to_string())
        }
        Value::Bytes(b) => {
            use base64::Engine;
            ctx.charge_bytes(b.len())?;
            Json::String(base64::engine::general_purpose::STANDARD.encode(Bin::as_bytes(b)))
        }
        Value::Timestamp(t) => Json::String(t.to_rfc3339()),
        Value::List(l) => Json::Array(
            l.iter()
                .map(|e| legacy_json(ctx, e))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(m) => legacy_map(ctx, m)?,
        Value::Optional(Some(inner)) => legacy_json(ctx, inner)?,
        Value::Optional(None) => Json::Null,
        Value::Object(o) => match super::mcp::object_json(o.as_ref()) {
            Some(j) => j,
            None => return Err(Refused::Text(cannot(v))),
        },
        Value::Duration(_) | Value::Type(_) | Value::Node(_) => {
            return Err(Refused::Text(cannot(v)))
        }
    })
}

fn cannot(v: &Value<'_>) -> String {
    format!(
        "a value of type {} cannot be converted to JSON",
        v.type_name()
    )
}

fn legacy_map(ctx: &mut Ctx<'_>, m: &Map<'_>) -> Result<Json, Refused> {
    let mut out = serde_json::Map::new();
    for (k, v) in m.entries() {
        let key = match legacy_json(ctx, &k)? {
            Json::String(s) => s,
            other => other.to_string(),
        };
        out.insert(key, legacy_json(ctx, &v)?);
    }
    Ok(Json::Object(out))
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
/// built (by the functions or by message literals) and passed on.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = &[
    ("envoy.service.auth.v3.OkHttpResponse", &[]),
    ("envoy.service.auth.v3.DeniedHttpResponse", &[]),
    ("envoy.service.auth.v3.CheckResponse", &[]),
    ("envoy.config.core.v3.HeaderValueOption", &[]),
    ("envoy.config.core.v3.QueryParameter", &[]),
    // Built only by message literals (`super::messages`). A literal
    // `envoy.config.core.v3.HeaderValue` keeps the fields of the proto: the
    // request's `header_map` holds them too.
    ("envoy.type.v3.HttpStatus", &[]),
    ("google.rpc.Status", &[]),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::{Meter, Str};

    pub(crate) use crate::cel::eval::lib::call;

    fn s(v: &str) -> Value<'static> {
        Value::string(v)
    }

    fn ctx() -> Ctx<'static> {
        Ctx::new(None, Meter::new(1_000_000))
    }

    #[test]
    fn allowed_builder_collects_every_change() {
        let mut c = ctx();
        let ok = call(&mut c, "envoy.Allowed", false, &[]).unwrap();
        let ok = call(&mut c, "WithHeader", true, &[ok, s("x-user"), s("alice")]).unwrap();
        let h = call(&mut c, "envoy.Header", false, &[s("x-e"), s("")]).unwrap();
        let h = call(&mut c, "KeepEmptyValue", true, &[h]).unwrap();
        let ok = call(&mut c, "WithHeader", true, &[ok, h]).unwrap();
        let ok = call(&mut c, "WithoutHeader", true, &[ok, s("x-api-key")]).unwrap();
        let h = call(&mut c, "envoy.Header", false, &[s("x-r"), s("1")]).unwrap();
        let h = call(&mut c, "KeepEmptyValue", true, &[h, Value::Bool(false)]).unwrap();
        let ok = call(&mut c, "WithResponseHeader", true, &[ok, h]).unwrap();
        let ok = call(&mut c, "WithResponseHeader", true, &[ok, s("x-s"), s("2")]).unwrap();
        let ok = call(&mut c, "WithQueryParam", true, &[ok, s("a"), s("1")]).unwrap();
        let q = call(&mut c, "envoy.QueryParam", false, &[s("b"), s("2")]).unwrap();
        let ok = call(&mut c, "WithQueryParam", true, &[ok, q]).unwrap();
        let ok = call(&mut c, "WithoutQueryParam", true, &[ok, s("c")]).unwrap();
        let r = call(&mut c, "Response", true, &[ok]).unwrap();
        let r = call(&mut c, "WithMessage", true, &[r, s("fine")]).unwrap();
        let header = |key: &str, value: &str, keep_empty_value| HeaderOption {
            key: key.into(),
            value: value.into(),
            keep_empty_value,
            append_action: 0,
        };
        let query = |key: &str, value: &str| QueryParam {
            key: key.into(),
            value: value.into(),
        };
        let want = CheckResponse {
            outcome: Outcome::Ok(OkResponse {
                headers: vec![header("x-user", "alice", false), header("x-e", "", true)],
                headers_to_remove: vec!["x-api-key".into()],
                response_headers_to_add: vec![header("x-r", "1", false), header("x-s", "2", false)],
                query_parameters_to_set: vec![query("a", "1"), query("b", "2")],
                query_parameters_to_remove: vec!["c".into()],
            }),
            message: "fine".into(),
            metadata: None,
        };
        assert_eq!(r.downcast::<CheckResponse>(), Some(&want));
        assert_eq!(r.type_name(), RESPONSE);
    }

    #[test]
    fn denied_builder_and_metadata() {
        let mut c = ctx();
        let d = call(&mut c, "envoy.Denied", false, &[Value::Int(403)]).unwrap();
        assert_eq!(d.type_name(), DENIED);
        let d = call(&mut c, "WithHeader", true, &[d, s("x-why"), s("no")]).unwrap();
        let d = call(&mut c, "WithBody", true, &[d, s("admins only")]).unwrap();
        let r = call(&mut c, "Response", true, &[d]).unwrap();
        let mut meta = crate::cel::eval::value::OwnedMap::default();
        for (k, v) in [
            ("s", s("x")),
            ("i", Value::Int(-3)),
            ("u", Value::Uint(7)),
            ("d", Value::Double(1.5)),
            ("nan", Value::Double(f64::NAN)),
            ("b", Value::Bool(true)),
            ("n", Value::Null),
            ("by", Value::bytes(b"hi".to_vec())),
            ("l", Value::list(vec![Value::Int(1), s("two")])),
            ("o", Value::some(Value::Int(4))),
            ("none", Value::NONE),
        ] {
            meta.insert(crate::cel::eval::Key::String(Str::Borrowed(k)), v);
        }
        let mut inner = crate::cel::eval::value::OwnedMap::default();
        inner.insert(crate::cel::eval::Key::Int(1), Value::Bool(false));
        meta.insert(
            crate::cel::eval::Key::String(Str::Borrowed("m")),
            Value::map(inner),
        );
        let r = call(&mut c, "WithMetadata", true, &[r, Value::map(meta)]).unwrap();
        let metadata = serde_json::json!({"b": true, "by": "aGk=", "d": 1.5, "i": -3,
            "l": [1, "two"], "m": {"1": false}, "n": null, "nan": null, "none": null, "o": 4,
            "s": "x", "u": 7});
        let want = CheckResponse {
            outcome: Outcome::Denied(DeniedResponse {
                status: 403,
                headers: vec![HeaderOption::new("x-why", "no")],
                body: "admins only".into(),
            }),
            message: String::new(),
            metadata: metadata.as_object().cloned(),
        };
        assert_eq!(r.downcast::<CheckResponse>(), Some(&want));
    }

    #[test]
    fn refusals_say_why_without_quoting_the_value() {
        let cases: [(&str, &[Value<'static>], bool, &str); 8] = [
            (
                "envoy.Denied",
                &[Value::Int(200)],
                false,
                "HTTP status 200 is not a denial status (300 to 599)",
            ),
            (
                "envoy.Header",
                &[s("x a"), s("v")],
                false,
                "the header name is not an HTTP token (whitespace at byte 1)",
            ),
            (
                "envoy.Header",
                &[s("x"), s("a\r\nb")],
                false,
                r#"header "x": the header value holds a CR at byte 1"#,
            ),
            (
                "envoy.QueryParam",
                &[s(""), s("v")],
                false,
                "the query parameter name is empty",
            ),
            (
                "envoy.QueryParam",
                &[s("a"), s("v\n")],
                false,
                "the query parameter value holds a LF at byte 1",
            ),
            (
                "WithoutHeader",
                &[s(":path")],
                true,
                "the header name is not an HTTP token (a colon at byte 0)",
            ),
            (
                "WithoutQueryParam",
                &[s("a\0")],
                true,
                "the query parameter name holds a NUL at byte 1",
            ),
            (
                "WithHeader",
                &[s("ok"), s("\0")],
                true,
                r#"header "ok": the header value holds a NUL at byte 0"#,
            ),
        ];
        for (name, args, method, message) in cases {
            let mut c = ctx();
            let mut all = Vec::new();
            if method {
                all.push(Value::object(OkResponse::default()));
            }
            all.extend(args.iter().cloned());
            let e = call(&mut c, name, method, &all).unwrap_err();
            assert_eq!(e.kind, crate::cel::ErrorKind::FunctionError, "{name}");
            assert_eq!(e.function.as_deref(), Some(name));
            assert_eq!(e.message, message, "{name}");
        }
        // Metadata that is not an object, or holds what JSON cannot.
        let mut c = ctx();
        let r = Value::object(CheckResponse {
            outcome: Outcome::Ok(OkResponse::default()),
            message: String::new(),
            metadata: None,
        });
        let e = call(
            &mut c,
            "WithMetadata",
            true,
            &[r.clone(), Value::list(vec![])],
        )
        .unwrap_err();
        assert_eq!(e.message, "expects a map with string keys, got list");
        let mut m = crate::cel::eval::value::OwnedMap::default();
        m.insert(
            crate::cel::eval::Key::String(Str::Borrowed("d")),
            Value::Duration(chrono::TimeDelta::seconds(1)),
        );
        let e = call(&mut c, "WithMetadata", true, &[r, Value::map(m)]).unwrap_err();
        assert_eq!(
            e.message,
            "a value of type google.protobuf.Duration cannot be converted to JSON"
        );
        // Wrong types are no overload, for another library to take.
        let e = call(&mut c, "WithBody", true, &[Value::Int(1), s("x")]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::NoSuchOverload);
    }

    #[test]
    fn builders_are_values() {
        let mut c = ctx();
        let a = call(&mut c, "envoy.Allowed", false, &[]).unwrap();
        let b = call(&mut c, "WithHeader", true, &[a.clone(), s("x"), s("1")]).unwrap();
        let b2 = call(&mut c, "WithHeader", true, &[a.clone(), s("x"), s("1")]).unwrap();
        assert!(crate::cel::eval::value::equals(&b, &b2));
        assert!(!crate::cel::eval::value::equals(&a, &b));
        assert_eq!(a.downcast::<OkResponse>(), Some(&OkResponse::default()));
        assert!(a.downcast::<CheckResponse>().is_none());
    }

    #[test]
    fn a_small_budget_stops_a_big_header() {
        let mut c = Ctx::new(None, Meter::new(100));
        let big = "v".repeat(100_000);
        let e = call(&mut c, "envoy.Header", false, &[s("x"), Value::string(big)]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
    }
}
