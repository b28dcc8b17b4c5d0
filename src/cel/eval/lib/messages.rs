//! Envoy's response written as CEL message literals, as the Kyverno Authz
//! Server's policies may write it:
//!
//! ```cel
//! envoy.service.auth.v3.CheckResponse{
//!   status: google.rpc.Status{code: 7},
//!   denied_response: envoy.service.auth.v3.DeniedHttpResponse{
//!     status: envoy.type.v3.HttpStatus{code: 403}, body: "no"}}
//! ```
//!
//! A literal builds the same values as the builders of [`super::envoy`]
//! (the response model of [`crate::response`]): a `CheckResponse{...}` is
//! the value `.Response()` returns, an `OkHttpResponse{...}` the value of
//! `envoy.Allowed()`, a `HeaderValueOption{...}` that of `envoy.Header`,
//! so the two forms mix. Proto3 rules: a field left out is its zero value,
//! and a scalar or list set to its zero value is as if left out; enums are
//! ints. The checks are the builders' (a denial status in 300–599, header
//! names that are HTTP tokens, no CR, LF or NUL in values).
//!
//! Envoy decides by `status.code`: 0 (OK) allows, anything else denies.
//! celgate sends 0 or 7 (PERMISSION_DENIED), so a literal must use one of
//! those, and the response half it sets must agree with it: `ok_response`
//! with 0, `denied_response` with 7. A denial without a `denied_response`,
//! or whose `HttpStatus` is 0, is a 403, Envoy's default.
//!
//! The fields of the protos that celgate does not send to Envoy are
//! declared, so that naming one is refused with why rather than dropped.

use super::envoy::{legacy_json, Refused};
use crate::cel::eval::{Ctx, Error, Object, Value};
use crate::response::{
    self, CheckResponse, DeniedResponse, HeaderOption, OkResponse, Outcome, QueryParam,
};
use std::any::Any;

/// The messages a literal may build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CheckResponse,
    OkHttpResponse,
    DeniedHttpResponse,
    HeaderValueOption,
    HeaderValue,
    QueryParameter,
    HttpStatus,
    RpcStatus,
    /// A message of HTTP mode ([`super::httpauthz`]), built there.
    HttpMode,
}

/// A field of a message: its proto name, its type as CEL sees it (in the
/// checker's notation), and, for a field celgate does not send, why.
#[derive(Debug)]
pub struct FieldDecl {
    pub name: &'static str,
    pub ty: &'static str,
    pub unsent: Option<&'static str>,
}

/// A message: its kind, full name and every field of its proto.
#[derive(Debug)]
pub struct MessageDecl {
    pub kind: Kind,
    pub name: &'static str,
    pub fields: &'static [FieldDecl],
}

impl FieldDecl {
    /// Whether the field holds a message (which `null` leaves unset).
    pub fn is_message(&self) -> bool {
        self.ty.contains('.') && !self.ty.contains('(')
    }
}

impl MessageDecl {
    /// The index and declaration of the field `name`.
    pub fn field(&self, name: &str) -> Option<(usize, &'static FieldDecl)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name)
    }
}

const fn sent(name: &'static str, ty: &'static str) -> FieldDecl {
    FieldDecl {
        name,
        ty,
        unsent: None,
    }
}

const fn unsent(name: &'static str, ty: &'static str, why: &'static str) -> FieldDecl {
    FieldDecl {
        name,
        ty,
        unsent: Some(why),
    }
}

pub const CHECK_RESPONSE: &str = "envoy.service.auth.v3.CheckResponse";
pub const OK_HTTP_RESPONSE: &str = "envoy.service.auth.v3.OkHttpResponse";
pub const DENIED_HTTP_RESPONSE: &str = "envoy.service.auth.v3.DeniedHttpResponse";
pub const HEADER_VALUE_OPTION: &str = "envoy.config.core.v3.HeaderValueOption";
pub const HEADER_VALUE: &str = "envoy.config.core.v3.HeaderValue";
pub const QUERY_PARAMETER: &str = "envoy.config.core.v3.QueryParameter";
pub const HTTP_STATUS: &str = "envoy.type.v3.HttpStatus";
pub const RPC_STATUS: &str = "google.rpc.Status";

const HVO_LIST: &str = "list(envoy.config.core.v3.HeaderValueOption)";

/// Every message a literal may build, with every field of its proto
/// (a unit test holds them to the vendored protos).
pub const MESSAGES: &[MessageDecl] = &[
    MessageDecl {
        kind: Kind::CheckResponse,
        name: CHECK_RESPONSE,
        fields: &[
            sent("status", RPC_STATUS),
            sent("denied_response", DENIED_HTTP_RESPONSE),
            sent("ok_response", OK_HTTP_RESPONSE),
            unsent(
                "error_response",
                DENIED_HTTP_RESPONSE,
                "celgate answers with ok_response or denied_response only",
            ),
            sent("dynamic_metadata", "map(string, dyn)"),
        ],
    },
    MessageDecl {
        kind: Kind::OkHttpResponse,
        name: OK_HTTP_RESPONSE,
        fields: &[
            sent("headers", HVO_LIST),
            sent("headers_to_remove", "list(string)"),
            unsent(
                "dynamic_metadata",
                "map(string, dyn)",
                "Envoy deprecated it; set the CheckResponse's dynamic_metadata",
            ),
            sent("response_headers_to_add", HVO_LIST),
            sent(
                "query_parameters_to_set",
                "list(envoy.config.core.v3.QueryParameter)",
            ),
            sent("query_parameters_to_remove", "list(string)"),
        ],
    },
    MessageDecl {
        kind: Kind::DeniedHttpResponse,
        name: DENIED_HTTP_RESPONSE,
        fields: &[
            sent("status", HTTP_STATUS),
            sent("headers", HVO_LIST),
            sent("body", "string"),
        ],
    },
    MessageDecl {
        kind: Kind::HeaderValueOption,
        name: HEADER_VALUE_OPTION,
        fields: &[
            sent("header", HEADER_VALUE),
            unsent("append", "dyn", "Envoy deprecated it; set append_action"),
            sent("append_action", "int"),
            sent("keep_empty_value", "bool"),
        ],
    },
    MessageDecl {
        kind: Kind::HeaderValue,
        name: HEADER_VALUE,
        fields: &[
            sent("key", "string"),
            sent("value", "string"),
            unsent("raw_value", "bytes", "set value, a string"),
        ],
    },
    MessageDecl {
        kind: Kind::QueryParameter,
        name: QUERY_PARAMETER,
        fields: &[sent("key", "string"), sent("value", "string")],
    },
    MessageDecl {
        kind: Kind::HttpStatus,
        name: HTTP_STATUS,
        fields: &[sent("code", "int")],
    },
    MessageDecl {
        kind: Kind::RpcStatus,
        name: RPC_STATUS,
        fields: &[
            sent("code", "int"),
            sent("message", "string"),
            unsent("details", "list(dyn)", "celgate sends no status details"),
        ],
    },
];

/// HTTP mode's messages ([`super::httpauthz`]): the request (which the
/// server's input expression may rewrite), the response, and the output
/// expression's `httpserver.HttpResponse`.
pub const HTTP_MESSAGES: &[MessageDecl] = {
    use super::httpauthz as h;
    const MULTI: &str = "map(string, list(string))";
    &[
        MessageDecl {
            kind: Kind::HttpMode,
            name: h::CHECK_REQUEST,
            fields: &[sent("attributes", h::ATTRIBUTES)],
        },
        MessageDecl {
            kind: Kind::HttpMode,
            name: h::ATTRIBUTES,
            fields: &[
                sent("method", "string"),
                sent("header", MULTI),
                sent("host", "string"),
                sent("protocol", "string"),
                sent("contentLength", "int"),
                sent("body", "bytes"),
                sent("scheme", "string"),
                sent("path", "string"),
                sent("query", MULTI),
                sent("fragment", "string"),
            ],
        },
        MessageDecl {
            kind: Kind::HttpMode,
            name: h::CHECK_RESPONSE,
            fields: &[
                sent("ok", h::RESPONSE_OK),
                sent("denied", h::RESPONSE_DENIED),
            ],
        },
        MessageDecl {
            kind: Kind::HttpMode,
            name: h::RESPONSE_OK,
            fields: &[],
        },
        MessageDecl {
            kind: Kind::HttpMode,
            name: h::RESPONSE_DENIED,
            fields: &[sent("reason", "string")],
        },
        MessageDecl {
            kind: Kind::HttpMode,
            name: h::SERVER_RESPONSE,
            fields: &[
                sent("status", "int"),
                sent("header", MULTI),
                sent("body", "bytes"),
            ],
        },
    ]
};

/// The message a literal names (a leading `.` allowed, as in cel-go).
pub fn lookup(name: &str) -> Option<&'static MessageDecl> {
    let name = name.strip_prefix('.').unwrap_or(name);
    MESSAGES
        .iter()
        .chain(HTTP_MESSAGES)
        .find(|m| m.name == name)
}

/// `envoy.config.core.v3.HeaderValue{...}`, to be a `HeaderValueOption`'s
/// header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderValue {
    pub key: String,
    pub value: String,
}

/// `envoy.type.v3.HttpStatus{...}`, to be a `DeniedHttpResponse`'s status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpStatus {
    pub code: i64,
}

/// `google.rpc.Status{...}`, to be a `CheckResponse`'s status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcStatus {
    pub code: i64,
    pub message: String,
}

/// Read like the request's `header_map` entries, which are of this type.
impl Object for HeaderValue {
    fn type_name(&self) -> &str {
        HEADER_VALUE
    }
    fn field(&self, name: &str) -> Option<Value<'static>> {
        match name {
            "key" => Some(Value::string(self.key.as_str())),
            "value" => Some(Value::string(self.value.as_str())),
            "raw_value" => Some(Value::bytes(Vec::new())),
            _ => None,
        }
    }
    fn has(&self, name: &str) -> Option<bool> {
        match name {
            "key" => Some(!self.key.is_empty()),
            "value" => Some(!self.value.is_empty()),
            "raw_value" => Some(false),
            _ => None,
        }
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other.as_any().downcast_ref::<HeaderValue>() == Some(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
response_object!(HttpStatus, HTTP_STATUS);
response_object!(RpcStatus, RPC_STATUS);

/// gRPC `OK`: the request is allowed.
const GRPC_OK: i64 = crate::decision::GRPC_OK as i64;
/// gRPC `PERMISSION_DENIED`, the code celgate denies with.
const GRPC_DENIED: i64 = crate::decision::GRPC_PERMISSION_DENIED as i64;
/// Envoy's status for a denial that names none.
const DEFAULT_DENIAL: i64 = 403;

/// Builds the message `m` from the fields a literal sets: each the index
/// of its declaration in `m.fields` and its value (fields set to `null`
/// or to an empty optional are left out by the caller).
pub fn build<'r>(
    ctx: &mut Ctx<'r>,
    m: &'static MessageDecl,
    fields: Vec<(usize, Value<'r>)>,
) -> Result<Value<'r>, Error> {
    if m.kind == Kind::HttpMode {
        let named = fields
            .into_iter()
            .filter_map(|(i, v)| m.fields.get(i).map(|f| (f.name, v)))
            .collect();
        return super::httpauthz::build(ctx, m.name, named);
    }
    let mut f = Fields { ctx, m, fields };
    Ok(match m.kind {
        Kind::HttpMode => unreachable!("built above"),
        Kind::HeaderValue => {
            f.refuse_unsent()?;
            Value::object(HeaderValue {
                key: f.string("key")?,
                value: f.string("value")?,
            })
        }
        Kind::HttpStatus => Value::object(HttpStatus {
            code: f.int("code")?,
        }),
        Kind::RpcStatus => {
            f.refuse_unsent()?;
            Value::object(RpcStatus {
                code: f.int("code")?,
                message: f.string("message")?,
            })
        }
        Kind::QueryParameter => {
            let (key, value) = (f.string("key")?, f.string("value")?);
            let q = response::query_param_checked(key, value).map_err(|e| f.error("key", e))?;
            Value::object(q)
        }
        Kind::HeaderValueOption => {
            f.refuse_unsent()?;
            let header = f.object::<HeaderValue>("header")?.unwrap_or_default();
            let keep = f.bool("keep_empty_value")?;
            let action = f.int("append_action")?;
            let action = usize::try_from(action)
                .ok()
                .filter(|a| *a < response::HEADER_APPEND_ACTIONS.len())
                .ok_or_else(|| {
                    f.error(
                        "append_action",
                        format!(
                            "{action} is not a HeaderAppendAction (0 to {})",
                            response::HEADER_APPEND_ACTIONS.len() - 1
                        ),
                    )
                })?;
            let mut h = response::header_option(header.key, header.value, keep)
                .map_err(|e| f.error("header", e))?;
            h.append_action = action as i32;
            Value::object(h)
        }
        Kind::OkHttpResponse => {
            f.refuse_unsent()?;
            let mut ok = OkResponse {
                headers: f.objects::<HeaderOption>("headers")?,
                response_headers_to_add: f.objects::<HeaderOption>("response_headers_to_add")?,
                query_parameters_to_set: f.objects::<QueryParam>("query_parameters_to_set")?,
                ..Default::default()
            };
            for name in f.strings("headers_to_remove")? {
                if let Some(p) = response::header_name_problem(&name) {
                    return Err(f.error("headers_to_remove", p));
                }
                ok.headers_to_remove.push(name);
            }
            for name in f.strings("query_parameters_to_remove")? {
                let q = response::query_param_checked(name, String::new())
                    .map_err(|e| f.error("query_parameters_to_remove", e))?;
                ok.query_parameters_to_remove.push(q.key);
            }
            Value::object(ok)
        }
        Kind::DeniedHttpResponse => {
            let code = match f.object::<HttpStatus>("status")? {
                Some(s) if s.code != 0 => s.code,
                _ => DEFAULT_DENIAL,
            };
            let mut d = response::denial(code).map_err(|e| f.error("status", e))?;
            d.headers = f.objects::<HeaderOption>("headers")?;
            d.body = f.string("body")?;
            Value::object(d)
        }
        Kind::CheckResponse => {
            f.refuse_unsent()?;
            let status = f.object::<RpcStatus>("status")?.unwrap_or_default();
            let ok = f.object::<OkResponse>("ok_response")?;
            let denied = f.object::<DeniedResponse>("denied_response")?;
            let outcome = match (status.code, ok, denied) {
                (_, Some(_), Some(_)) => {
                    return Err(f.error(
                        "ok_response",
                        "ok_response and denied_response are both set; a response has one",
                    ))
                }
                (GRPC_OK, ok, None) => Outcome::Ok(ok.unwrap_or_default()),
                (GRPC_OK, None, Some(_)) => {
                    return Err(f.error(
                        "denied_response",
                        "set with status.code 0 (OK), which Envoy allows: deny with status.code 7",
                    ))
                }
                (GRPC_DENIED, None, denied) => Outcome::Denied(denied.unwrap_or(DeniedResponse {
                    status: DEFAULT_DENIAL as i32,
                    ..Default::default()
                })),
                (GRPC_DENIED, Some(_), None) => {
                    return Err(f.error(
                        "ok_response",
                        "set with status.code 7, which Envoy denies: allow with status.code 0",
                    ))
                }
                (other, _, _) => {
                    return Err(f.error(
                        "status",
                        format!(
                            "code {other} cannot be sent: celgate allows with 0 (OK) and denies with 7 (PERMISSION_DENIED)"
                        ),
                    ))
                }
            };
            let metadata = match f.take("dynamic_metadata") {
                None => None,
                Some(v) => {
                    let json = legacy_json(f.ctx, &v).map_err(|e| match e {
                        Refused::Cost(e) => e,
                        Refused::Text(t) => f.error("dynamic_metadata", t),
                    })?;
                    let m = response::metadata_object(json)
                        .map_err(|e| f.error("dynamic_metadata", e))?;
                    (!m.is_empty()).then_some(m)
                }
            };
            Value::object(CheckResponse {
                outcome,
                message: status.message,
                metadata,
            })
        }
    })
}

/// The fields a literal set, taken one by one.
struct Fields<'c, 'r> {
    ctx: &'c mut Ctx<'r>,
    m: &'static MessageDecl,
    fields: Vec<(usize, Value<'r>)>,
}

impl<'r> Fields<'_, 'r> {
    fn error(&self, field: &str, message: impl std::fmt::Display) -> Error {
        Error::function(self.m.name, format!("{}.{field}: {message}", self.m.name))
    }

    /// A field celgate does not send is refused (the checker refuses it
    /// first; this keeps the builder safe whatever planned it).
    fn refuse_unsent(&self) -> Result<(), Error> {
        for (i, _) in &self.fields {
            if let Some(f) = self.m.fields.get(*i) {
                if let Some(why) = f.unsent {
                    return Err(self.error(f.name, format!("is not sent to Envoy: {why}")));
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, name: &str) -> Option<Value<'r>> {
        let (index, _) = self.m.field(name)?;
        let at = self.fields.iter().rposition(|(i, _)| *i == index)?;
        Some(self.fields.swap_remove(at).1)
    }

    fn wrong(&self, name: &str, want: &str, v: &Value<'_>) -> Error {
        Error::type_mismatch(format!(
            "{}.{name} takes {want}, not {}",
            self.m.name,
            v.type_name()
        ))
    }

    fn string(&mut self, name: &str) -> Result<String, Error> {
        match self.take(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) => {
                self.ctx.charge_bytes(s.len())?;
                Ok(s.to_string())
            }
            Some(other) => Err(self.wrong(name, "string", &other)),
        }
    }

    fn int(&mut self, name: &str) -> Result<i64, Error> {
        match self.take(name) {
            None => Ok(0),
            Some(Value::Int(i)) => Ok(i),
            Some(other) => Err(self.wrong(name, "int", &other)),
        }
    }

    fn bool(&mut self, name: &str) -> Result<bool, Error> {
        match self.take(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(self.wrong(name, "bool", &other)),
        }
    }

    /// A message field: `None` when left out.
    fn object<T: Object + Clone + Default>(&mut self, name: &str) -> Result<Option<T>, Error> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(mut v) => match v.object_mut::<T>() {
                Some(t) => Ok(Some(std::mem::take(t))),
                None => {
                    let want = self.m.field(name).map_or("a message", |(_, f)| f.ty);
                    Err(self.wrong(name, want, &v))
                }
            },
        }
    }

    fn list(&mut self, name: &str) -> Result<Vec<Value<'r>>, Error> {
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::List(l)) => {
                self.ctx.charge(l.len() as u64)?;
                Ok(l.iter().cloned().collect())
            }
            Some(other) => {
                let want = self.m.field(name).map_or("a list", |(_, f)| f.ty);
                Err(self.wrong(name, want, &other))
            }
        }
    }

    fn objects<T: Object + Clone>(&mut self, name: &str) -> Result<Vec<T>, Error> {
        let items = self.list(name)?;
        let mut out = Vec::with_capacity(items.len());
        for v in items {
            match v.downcast::<T>() {
                Some(t) => out.push(t.clone()),
                None => {
                    let want = self.m.field(name).map_or("messages", |(_, f)| f.ty);
                    return Err(self.wrong(name, want, &v));
                }
            }
        }
        Ok(out)
    }

    fn strings(&mut self, name: &str) -> Result<Vec<String>, Error> {
        let items = self.list(name)?;
        let mut out = Vec::with_capacity(items.len());
        for v in items {
            match v {
                Value::String(s) => {
                    self.ctx.charge_bytes(s.len())?;
                    out.push(s.to_string());
                }
                other => return Err(self.wrong(name, "list(string)", &other)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::check::{proto, Ty};
    use crate::cel::eval::Meter;

    #[test]
    fn the_fields_are_the_vendored_protos() {
        let objects = proto::objects().unwrap();
        for m in MESSAGES {
            let fields = objects[m.name].fields.as_ref().unwrap();
            let mut want: Vec<(String, String)> = fields
                .iter()
                .map(|(n, f)| (n.clone(), f.ty.to_string()))
                .collect();
            let mut got: Vec<(String, String)> = m
                .fields
                .iter()
                .map(|f| {
                    let ty: Ty = crate::cel::check::types::parse(f.ty).unwrap();
                    (f.name.to_owned(), ty.to_string())
                })
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{}", m.name);
        }
        assert!(lookup(".google.rpc.Status").is_some());
        assert!(lookup("google.rpc.Code").is_none());
    }

    fn ctx() -> Ctx<'static> {
        Ctx::new(None, Meter::new(1_000_000))
    }

    fn make(name: &str, fields: Vec<(&str, Value<'static>)>) -> Result<Value<'static>, Error> {
        let m = lookup(name).unwrap();
        let fields = fields
            .into_iter()
            .map(|(n, v)| (m.field(n).unwrap().0, v))
            .collect();
        build(&mut ctx(), m, fields)
    }

    fn s(v: &str) -> Value<'static> {
        Value::string(v)
    }

    #[test]
    fn a_denial_and_its_defaults() {
        let status = make(RPC_STATUS, vec![("code", Value::Int(7))]).unwrap();
        let r = make(CHECK_RESPONSE, vec![("status", status.clone())]).unwrap();
        let want = CheckResponse {
            outcome: Outcome::Denied(DeniedResponse {
                status: 403,
                ..Default::default()
            }),
            message: String::new(),
            metadata: None,
        };
        assert_eq!(r.downcast::<CheckResponse>(), Some(&want));
        let hs = make(HTTP_STATUS, vec![("code", Value::Int(0))]).unwrap();
        let d = make(DENIED_HTTP_RESPONSE, vec![("status", hs)]).unwrap();
        assert_eq!(d.downcast::<DeniedResponse>().unwrap().status, 403);
        let r = make(
            CHECK_RESPONSE,
            vec![("status", status), ("denied_response", d)],
        )
        .unwrap();
        assert_eq!(r.downcast::<CheckResponse>(), Some(&want));
        // No status at all: Envoy reads OK.
        let r = make(CHECK_RESPONSE, vec![]).unwrap();
        assert!(r.downcast::<CheckResponse>().unwrap().allowed());
    }

    #[test]
    fn a_header_value_reads_like_the_requests() {
        let hv = make(HEADER_VALUE, vec![("key", s("x-a")), ("value", s("1"))]).unwrap();
        let Value::Object(o) = &hv else { panic!() };
        assert_eq!(o.field("key").unwrap().as_str(), Some("x-a"));
        assert_eq!(o.field("value").unwrap().as_str(), Some("1"));
        assert_eq!(o.has("raw_value"), Some(false));
        assert!(o.field("nope").is_none());
    }

    #[test]
    fn headers_carry_append_action_and_keep_empty_value() {
        let hv = make(HEADER_VALUE, vec![("key", s("x-a")), ("value", s(""))]).unwrap();
        let h = make(
            HEADER_VALUE_OPTION,
            vec![
                ("header", hv),
                ("append_action", Value::Int(2)),
                ("keep_empty_value", Value::Bool(true)),
            ],
        )
        .unwrap();
        let h = h.downcast::<HeaderOption>().unwrap();
        assert_eq!((h.append_action, h.keep_empty_value), (2, true));
    }

    #[test]
    fn refusals_name_the_field() {
        type Case = (
            &'static str,
            Vec<(&'static str, Value<'static>)>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                HEADER_VALUE_OPTION,
                vec![],
                "envoy.config.core.v3.HeaderValueOption.header: the header name is empty",
            ),
            (
                HEADER_VALUE_OPTION,
                vec![("append_action", Value::Int(4))],
                "envoy.config.core.v3.HeaderValueOption.append_action: 4 is not a HeaderAppendAction (0 to 3)",
            ),
            (
                HTTP_STATUS,
                vec![("code", s("403"))],
                "envoy.type.v3.HttpStatus.code takes int, not string",
            ),
            (
                QUERY_PARAMETER,
                vec![("value", s("v"))],
                "envoy.config.core.v3.QueryParameter.key: the query parameter name is empty",
            ),
            (
                OK_HTTP_RESPONSE,
                vec![("headers_to_remove", Value::list(vec![s(":path")]))],
                "envoy.service.auth.v3.OkHttpResponse.headers_to_remove: the header name is not an HTTP token (a colon at byte 0)",
            ),
            (
                OK_HTTP_RESPONSE,
                vec![("headers", Value::list(vec![s("x")]))],
                "envoy.service.auth.v3.OkHttpResponse.headers takes list(envoy.config.core.v3.HeaderValueOption), not string",
            ),
            (
                CHECK_RESPONSE,
                vec![("ok_response", Value::object(OkResponse::default())), ("denied_response", Value::object(DeniedResponse::default()))],
                "envoy.service.auth.v3.CheckResponse.ok_response: ok_response and denied_response are both set; a response has one",
            ),
            (
                CHECK_RESPONSE,
                vec![("status", Value::object(RpcStatus { code: 16, message: String::new() }))],
                "envoy.service.auth.v3.CheckResponse.status: code 16 cannot be sent: celgate allows with 0 (OK) and denies with 7 (PERMISSION_DENIED)",
            ),
            (
                CHECK_RESPONSE,
                vec![("denied_response", Value::object(DeniedResponse::default()))],
                "envoy.service.auth.v3.CheckResponse.denied_response: set with status.code 0 (OK), which Envoy allows: deny with status.code 7",
            ),
            (
                CHECK_RESPONSE,
                vec![("error_response", Value::object(DeniedResponse::default()))],
                "envoy.service.auth.v3.CheckResponse.error_response: is not sent to Envoy: celgate answers with ok_response or denied_response only",
            ),
            (
                CHECK_RESPONSE,
                vec![("dynamic_metadata", Value::list(vec![]))],
                "envoy.service.auth.v3.CheckResponse.dynamic_metadata: expects a map with string keys, got list",
            ),
        ];
        for (name, fields, want) in cases {
            let e = make(name, fields).unwrap_err();
            assert_eq!(e.message, want);
        }
    }

    #[test]
    fn a_small_budget_stops_a_big_body() {
        let m = lookup(DENIED_HTTP_RESPONSE).unwrap();
        let body = Value::string("b".repeat(100_000));
        let mut c = Ctx::new(None, Meter::new(100));
        let e = build(&mut c, m, vec![(m.field("body").unwrap().0, body)]).unwrap_err();
        assert_eq!(e.kind, crate::cel::ErrorKind::CostExceeded);
    }
}
