//! The type checker: every expression of a policy is checked when the policy
//! loads, against the declarations of the environment ([`decls`]): the type
//! of `object` (the Envoy `CheckRequest`, from the vendored protos), the
//! policy's variables (each typed from its own expression), and every
//! function and operator with its overloads. A misspelt field, an undeclared
//! function, a call no overload takes, or a condition that is not a `bool`
//! is an error that points at the sub-expression where it is.
//!
//! Checking is gradual, as cel-go's: what cannot be known before a request
//! arrives (JWT claims, MCP arguments, `dyn`) is accepted wherever it could
//! fit and checked when the expression runs.
//!
//! The same walk estimates each expression's worst-case cost ([`cost`]).
//! The walk recurses over the expression, whose depth the load-time limits
//! ([`crate::cel::limits`]) bound before it runs.

pub mod cost;
pub mod decls;
pub mod proto;
pub mod types;

use cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SelectExpr, StructExpr,
};
use cel::Program;
pub use cost::Info;
use decls::{display_name, Decls};
use std::collections::HashMap;
pub use types::Ty;

/// A mistake found in an expression, at a byte offset of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    pub offset: usize,
    pub message: String,
}

/// Which environment an expression is checked in: what `object` is and
/// which functions and message literals it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// An Envoy-mode policy: `object` is the Envoy `CheckRequest`, the
    /// answer an `envoy.*` response.
    #[default]
    Envoy,
    /// An HTTP-mode policy, or the HTTP server's input expression: `object`
    /// is an `http.CheckRequest`, the answer an `http.CheckResponse`.
    Http,
    /// The HTTP server's output expression: `object` is the
    /// `http.CheckResponse`, the answer an `httpserver.HttpResponse`.
    HttpOutput,
}

impl Mode {
    fn is_http(self) -> bool {
        matches!(self, Mode::Http | Mode::HttpOutput)
    }

    /// Why a call of `name` (a global function) is refused in this mode.
    fn refuses_function(self, name: &str) -> Option<String> {
        use crate::cel::eval::lib::httpauthz::HTTP_MODE_FUNCTIONS;
        if self.is_http() && name.starts_with("envoy.") {
            return Some(format!(
                "`{name}` is a function of Envoy-mode policies; an HTTP-mode policy answers with http.Allowed().Response() or http.Denied(reason).Response()"
            ));
        }
        if self == Mode::Envoy && HTTP_MODE_FUNCTIONS.contains(&name) {
            return Some(format!(
                "`{name}` is a function of HTTP-mode policies (spec.evaluation.mode: HTTP); an Envoy-mode policy answers with envoy.Allowed() or envoy.Denied(status) and .Response()"
            ));
        }
        None
    }

    /// Why a literal of message `name` is refused in this mode.
    fn refuses_message(self, name: &str) -> Option<String> {
        use crate::cel::eval::lib::httpauthz::SERVER_RESPONSE;
        let http = name.starts_with("http.") || name.starts_with("httpserver.");
        if self == Mode::Envoy && http {
            return Some(format!(
                "{name} is a message of HTTP mode (spec.evaluation.mode: HTTP), not of Envoy-mode policies"
            ));
        }
        if self.is_http() && !http {
            return Some(format!(
                "{name} is a message of Envoy-mode policies, not of HTTP mode"
            ));
        }
        if name == SERVER_RESPONSE && self != Mode::HttpOutput {
            return Some(format!(
                "{name} is built by the HTTP server's output expression only"
            ));
        }
        None
    }

    /// The type of `object`.
    pub fn object_type(self) -> &'static str {
        use crate::cel::eval::lib::httpauthz;
        match self {
            Mode::Envoy => proto::CHECK_REQUEST,
            Mode::Http => httpauthz::CHECK_REQUEST,
            Mode::HttpOutput => httpauthz::CHECK_RESPONSE,
        }
    }

    /// The response a validation returns in this mode.
    pub fn response_type(self) -> &'static str {
        match self {
            Mode::Envoy => CHECK_RESPONSE,
            _ => crate::cel::eval::lib::httpauthz::CHECK_RESPONSE,
        }
    }
}

/// Names a policy's expressions may read besides `object`.
#[derive(Default)]
pub struct Scope {
    /// The environment (Envoy mode unless said otherwise).
    pub mode: Mode,
    /// `variables.<name>`: what is known of each declared variable; `None`
    /// where no policy's variables are known (matchConditions, which the
    /// policy compiler refuses to let read them, and an exception's
    /// conditions before they are checked against each policy they name):
    /// every `variables.<name>` is then `dyn`.
    pub variables: Option<HashMap<String, Info>>,
}

/// The response a validation returns.
pub const CHECK_RESPONSE: &str = "envoy.service.auth.v3.CheckResponse";

/// Namespaces of functions and constants, which are not values.
const NAMESPACES: &[&str] = &[
    "envoy",
    "jwt",
    "jwks",
    "http",
    "mcp",
    "math",
    "optional",
    "base64",
    "sets",
    "strings",
    "lists",
    "net",
    "kubernetes",
    "format",
    "json",
];

/// Checks `program` in `scope`: its type, size and cost, or every mistake.
pub fn check(program: &Program, scope: &Scope) -> Result<Info, Vec<CheckError>> {
    let mut c = Checker {
        decls: decls::get(),
        program,
        scope,
        locals: Vec::new(),
        errors: Vec::new(),
    };
    let info = c.expr(program.expression(), 0);
    if c.errors.is_empty() {
        Ok(info)
    } else {
        c.errors.sort_by_key(|e| e.offset);
        c.errors.dedup();
        Err(c.errors)
    }
}

struct Checker<'a> {
    decls: &'static Decls,
    program: &'a Program,
    scope: &'a Scope,
    /// Comprehension variables in scope, innermost last.
    locals: Vec<(String, Info)>,
    errors: Vec<CheckError>,
}

impl Checker<'_> {
    fn offset(&self, e: &IdedExpr, parent: usize) -> usize {
        self.program
            .source_info()
            .offset_for(e.id)
            .map_or(parent, |(start, _)| start as usize)
    }

    fn source(&self) -> &str {
        &self.program.source_info().source
    }

    /// The offset of `word` (a field's or a function's name) at `from`:
    /// just before it when `from` is the call's `(`, else the first one
    /// after it, else `from`.
    fn find_word(&self, from: usize, word: &str) -> usize {
        let src = self.source();
        if src.get(from..).is_some_and(|r| r.starts_with('(')) {
            if let Some(before) = src.get(..from) {
                let trimmed = before.trim_end();
                if trimmed.ends_with(word) {
                    return trimmed.len() - word.len();
                }
            }
        }
        src.get(from..)
            .and_then(|rest| rest.find(word))
            .map_or(from, |i| from + i)
    }

    fn error(&mut self, offset: usize, message: String) -> Info {
        self.errors.push(CheckError { offset, message });
        Info::new(Ty::Dyn)
    }

    fn local(&self, name: &str) -> Option<&Info> {
        self.locals
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, i)| i)
    }

    fn expr(&mut self, e: &IdedExpr, parent: usize) -> Info {
        let at = self.offset(e, parent);
        match &e.expr {
            Expr::Literal(l) => literal(l),
            Expr::Ident(name) => self.ident(name, at),
            Expr::Select(s) => self.select(s, at),
            Expr::Call(c) => self.call(c, at),
            Expr::List(l) => {
                let mut elem: Option<Ty> = None;
                let mut info = Info::new(Ty::Dyn);
                let mut elem_size: f64 = 1.0;
                for (i, x) in l.elements.iter().enumerate() {
                    let xi = self.expr(x, at);
                    info.cost += xi.cost;
                    elem_size = elem_size.max(xi.size);
                    let xat = self.offset(x, at);
                    let t = if l.optional_indices.contains(&i) {
                        self.optional_value(xi.ty, xat, "an optional element `?x`")
                    } else {
                        xi.ty
                    };
                    elem = Some(join_or_dyn(elem, t));
                }
                info.ty = Ty::list(elem.unwrap_or(Ty::Dyn));
                info.size = l.elements.len().max(1) as f64;
                info.elem = elem_size;
                info
            }
            Expr::Map(m) => {
                let mut key: Option<Ty> = None;
                let mut value: Option<Ty> = None;
                let mut info = Info::new(Ty::Dyn);
                let mut elem_size: f64 = 1.0;
                for entry in &m.entries {
                    let EntryExpr::MapEntry(me) = &entry.expr else {
                        continue;
                    };
                    let k = self.expr(&me.key, at);
                    let v = self.expr(&me.value, at);
                    info.cost += k.cost + v.cost;
                    elem_size = elem_size.max(v.size);
                    let kat = self.offset(&me.key, at);
                    if !matches!(k.ty, Ty::Int | Ty::Uint | Ty::Bool | Ty::String | Ty::Dyn) {
                        self.error(
                            kat,
                            format!("map keys must be int, uint, bool or string, not {}", k.ty),
                        );
                    }
                    let vt = if me.optional {
                        self.optional_value(v.ty, kat, "an optional entry `?k: v`")
                    } else {
                        v.ty
                    };
                    key = Some(join_or_dyn(key, k.ty));
                    value = Some(join_or_dyn(value, vt));
                }
                info.ty = Ty::map(key.unwrap_or(Ty::Dyn), value.unwrap_or(Ty::Dyn));
                info.size = m.entries.len().max(1) as f64;
                info.elem = elem_size;
                info
            }
            Expr::Struct(s) => self.message(e, s, at),
            Expr::Comprehension(c) => self.comprehension(c, at),
            Expr::Unspecified => Info::new(Ty::Dyn),
        }
    }

    /// A message literal: one of the messages of an Envoy `CheckResponse`
    /// ([`crate::cel::eval::lib::messages`]), each field known, sent to
    /// Envoy, set once and given a value of its type. A literal that is
    /// constant is built now, and one that cannot be built (a denial status
    /// of 200, a header name with a space) is an error here.
    fn message(&mut self, e: &IdedExpr, s: &StructExpr, at: usize) -> Info {
        use crate::cel::eval::lib::messages;
        let Some(m) = messages::lookup(&s.type_name) else {
            let known: Vec<&str> = messages::MESSAGES
                .iter()
                .chain(messages::HTTP_MESSAGES)
                .map(|m| m.name)
                .filter(|n| self.scope.mode.refuses_message(n).is_none())
                .collect();
            let hint = match did_you_mean(&s.type_name, &known) {
                h if h.is_empty() => format!(": a literal builds one of {}", known.join(", ")),
                h => h,
            };
            let at = self.name_before(at, &s.type_name);
            return self.error(at, format!("unknown message type `{}`{hint}", s.type_name));
        };
        if let Some(why) = self.scope.mode.refuses_message(m.name) {
            let at = self.name_before(at, &s.type_name);
            return self.error(at, why);
        }
        let before = self.errors.len();
        let mut info = Info::new(Ty::object(m.name));
        let mut seen: Vec<usize> = Vec::new();
        for entry in &s.entries {
            let EntryExpr::StructField(f) = &entry.expr else {
                continue;
            };
            let field_at = match self.program.source_info().offset_for(entry.id) {
                Some((o, _)) => self.name_before(o as usize, &f.field),
                None => self.find_word(at, &f.field),
            };
            let value = self.expr(&f.value, at);
            info.cost += value.cost;
            let Some((index, decl)) = m.field(&f.field) else {
                let known: Vec<&str> = m.fields.iter().map(|f| f.name).collect();
                self.error(
                    field_at,
                    format!(
                        "no field {:?} on {}{}",
                        f.field,
                        m.name,
                        did_you_mean(&f.field, &known)
                    ),
                );
                continue;
            };
            if let Some(why) = decl.unsent {
                self.error(
                    field_at,
                    format!(
                        "field {:?} of {} is not sent to Envoy by celgate: {why}",
                        f.field, m.name
                    ),
                );
                continue;
            }
            if seen.contains(&index) {
                self.error(
                    field_at,
                    format!("field {:?} of {} is set twice", f.field, m.name),
                );
                continue;
            }
            seen.push(index);
            let value_at = self.offset(&f.value, at);
            let t = if f.optional {
                self.optional_value(value.ty, value_at, "an optional field `?f: v`")
            } else {
                value.ty
            };
            let want = types::parse(decl.ty).unwrap_or(Ty::Dyn);
            if !types::assignable(&want, &t, &mut types::Subst::new()) {
                self.error(
                    value_at,
                    format!("field {:?} of {} takes {want}, not {t}", f.field, m.name),
                );
            }
        }
        // A constant literal is built now: what cannot be built is refused
        // where it is written (the planner would refuse it too, with no
        // position).
        if self.errors.len() == before && self.closed(e) {
            if let Err(problem) = crate::cel::eval::plan::compile(e, &|_| Some(0)) {
                let at = self.name_before(at, &s.type_name);
                return self.error(at, problem.0);
            }
        }
        info
    }

    /// The offset of `name` when it ends just before `at` (a message's name
    /// before its `{`, a field's before its `:`), else `at`.
    fn name_before(&self, at: usize, name: &str) -> usize {
        let src = self.source();
        match src.get(..at).map(str::trim_end) {
            Some(before) if before.ends_with(name) => before.len() - name.len(),
            _ => at,
        }
    }

    /// Whether `e` reads none of the comprehension variables in scope, so
    /// that it can be planned on its own.
    fn closed(&self, e: &IdedExpr) -> bool {
        let mut closed = true;
        crate::cel::walk(e, &mut |x| {
            if let Expr::Ident(n) = &x.expr {
                if self.local(n).is_some() {
                    closed = false;
                }
            }
        });
        closed
    }

    /// The value inside `t`, which `what` (an optional element or entry)
    /// must hold as an optional.
    fn optional_value(&mut self, t: Ty, at: usize, what: &str) -> Ty {
        match t {
            Ty::Optional(inner) => *inner,
            Ty::Dyn => Ty::Dyn,
            other => {
                self.error(at, format!("{what} must be an optional value, not {other}"));
                Ty::Dyn
            }
        }
    }

    fn ident(&mut self, name: &str, at: usize) -> Info {
        if let Some(i) = self.local(name) {
            let mut i = i.clone();
            i.cost = 1.0;
            return i;
        }
        match name {
            "object" => Info::new(Ty::object(self.scope.mode.object_type())),
            "variables" => {
                // Only `variables.<name>` is allowed; the policy compiler
                // reports any other use.
                Info::new(Ty::Dyn)
            }
            "bool" => Info::new(Ty::Type(Box::new(Ty::Bool))),
            "int" => Info::new(Ty::Type(Box::new(Ty::Int))),
            "uint" => Info::new(Ty::Type(Box::new(Ty::Uint))),
            "double" => Info::new(Ty::Type(Box::new(Ty::Double))),
            "string" => Info::new(Ty::Type(Box::new(Ty::String))),
            "bytes" => Info::new(Ty::Type(Box::new(Ty::Bytes))),
            "list" => Info::new(Ty::Type(Box::new(Ty::list(Ty::Dyn)))),
            "map" => Info::new(Ty::Type(Box::new(Ty::map(Ty::Dyn, Ty::Dyn)))),
            "null_type" => Info::new(Ty::Type(Box::new(Ty::Null))),
            "type" => Info::new(Ty::Type(Box::new(Ty::Type(Box::new(Ty::Dyn))))),
            "dyn" => Info::new(Ty::Type(Box::new(Ty::Dyn))),
            "optional_type" => Info::new(Ty::Type(Box::new(Ty::optional(Ty::Dyn)))),
            n if NAMESPACES.contains(&n) => self.error(
                at,
                format!(
                    "`{n}` is a library, not a value: call one of its functions, e.g. {}",
                    example(n)
                ),
            ),
            n => {
                let mut names: Vec<&str> = self.locals.iter().map(|(n, _)| n.as_str()).collect();
                names.push("object");
                names.push("variables");
                self.error(
                    at,
                    format!("undeclared reference to `{n}`{}", did_you_mean(n, &names)),
                )
            }
        }
    }

    fn select(&mut self, s: &SelectExpr, at: usize) -> Info {
        if !s.test {
            if let Some(q) = qualified(&s.operand) {
                let t = match format!("{q}.{}", s.field).as_str() {
                    "google.protobuf.Timestamp" => Some(Ty::Timestamp),
                    "google.protobuf.Duration" => Some(Ty::Duration),
                    _ => None,
                };
                let root_is_local = self.local(q.split('.').next().unwrap_or("")).is_some();
                if let Some(t) = t {
                    if !root_is_local {
                        return Info::new(Ty::Type(Box::new(t)));
                    }
                }
                // An enum constant of the protos is an int, as in cel-go.
                if !root_is_local && proto::enum_constant(&format!("{q}.{}", s.field)).is_some() {
                    return Info::new(Ty::Int);
                }
            }
        }
        if let Expr::Ident(root) = &s.operand.expr {
            if self.local(root).is_none() {
                if root == "variables" {
                    let info = self
                        .scope
                        .variables
                        .as_ref()
                        .and_then(|v| v.get(&s.field))
                        .cloned();
                    // Undeclared variables are reported by the policy
                    // compiler, with the names that are declared.
                    let mut info = info.unwrap_or_else(|| Info::new(Ty::Dyn));
                    info.cost = 1.0;
                    if s.test {
                        info.ty = Ty::Bool;
                    }
                    return info;
                }
                if matches!(root.as_str(), "net" | "kubernetes") && !s.test {
                    let name = format!("{root}.{}", s.field);
                    if crate::cel::eval::lib::is_type_name(&name) {
                        return Info::new(Ty::Type(Box::new(Ty::object(&name))));
                    }
                }
                if root == "mcp" && !s.test {
                    if crate::mcp::is_constant(&s.field) {
                        let len = crate::mcp::constant(&s.field).map_or(1, str::len);
                        return Info::sized(Ty::String, (len as f64, 1.0));
                    }
                    let at = self.find_word(at, &s.field);
                    let known: Vec<&str> = crate::mcp::CONSTANTS.iter().map(|(k, _)| *k).collect();
                    return self.error(
                        at,
                        format!(
                            "unknown constant `mcp.{}`{}",
                            s.field,
                            did_you_mean(&s.field, &known)
                        ),
                    );
                }
            }
        }
        let operand = self.expr(&s.operand, at);
        let field_at = self.find_word(at, &s.field);
        let mut info = self.field(&operand, &s.field, field_at);
        info.cost += operand.cost;
        if s.test {
            info.ty = Ty::Bool;
            info.size = 1.0;
        }
        info
    }

    /// `operand.name`.
    fn field(&mut self, operand: &Info, name: &str, at: usize) -> Info {
        match &operand.ty {
            Ty::Dyn => Info {
                total: operand.total,
                ..Info::sized(Ty::Dyn, (operand.elem, operand.elem))
            },
            Ty::Map(k, v) => {
                if !matches!(**k, Ty::String | Ty::Dyn) {
                    return self.error(
                        at,
                        format!("`.{name}` selects a string key, but the map's keys are {k}"),
                    );
                }
                Info {
                    total: operand.total,
                    ..Info::sized((**v).clone(), (operand.elem, operand.elem))
                }
            }
            Ty::Object(type_name) => {
                let Some(object) = self.decls.objects.get(&**type_name) else {
                    return Info::new(Ty::Dyn);
                };
                match &object.fields {
                    None => self.error(
                        at,
                        format!("{type_name} has no fields: it is only passed to functions (no field {name:?})"),
                    ),
                    Some(fields) => match fields.get(name) {
                        Some(f) => Info {
                        total: f.bound.total(),
                        ..Info::sized(f.ty.clone(), f.bound.sizes())
                    },
                        None => {
                            let known: Vec<&str> = fields.keys().map(String::as_str).collect();
                            self.error(
                                at,
                                format!("no field {name:?} on {type_name}{}", did_you_mean(name, &known)),
                            )
                        }
                    },
                }
            }
            // Selecting on an optional selects on its value, if any.
            Ty::Optional(inner) => {
                let value = Info {
                    total: operand.total,
                    ..Info::sized((**inner).clone(), (operand.size, operand.elem))
                };
                let mut info = self.field(&value, name, at);
                if !info.ty.is_dyn() {
                    info.ty = Ty::optional(info.ty);
                }
                info
            }
            other => self.error(at, format!("{other} has no fields (no field {name:?})")),
        }
    }

    fn call(&mut self, c: &CallExpr, at: usize) -> Info {
        // `ns.f(...)` is the global function `ns.f` when one is declared.
        let mut name = c.func_name.clone();
        let mut target = c.target.as_deref();
        if let Some(t) = target {
            if let Some(q) = qualified(t) {
                let root = q.split('.').next().unwrap_or("");
                let full = format!("{q}.{}", c.func_name);
                // A name that is not a value (`cel.bind`, `url.parse`) is
                // read as a function's, so that an unknown library is one
                // error naming the function.
                let is_value = self.local(root).is_some() || matches!(root, "object" | "variables");
                if !is_value {
                    name = full;
                    target = None;
                }
            }
        }
        let name_at = self.find_word(at, &c.func_name);
        match name.as_str() {
            "_&&_" | "_||_" => {
                let mut info = Info::new(Ty::Bool);
                for a in &c.args {
                    let ai = self.expr(a, at);
                    info.cost += ai.cost;
                    if !matches!(ai.ty, Ty::Bool | Ty::Dyn) {
                        let aat = self.offset(a, at);
                        self.error(
                            aat,
                            format!(
                                "`{}` takes bool operands, not {}",
                                display_name(&name),
                                ai.ty
                            ),
                        );
                    }
                }
                return info;
            }
            "_?._" => {
                // `a.?b`: the field as an optional.
                let operand = self.expr(&c.args[0], at);
                let Some(Expr::Literal(LiteralValue::String(field))) =
                    c.args.get(1).map(|a| &a.expr)
                else {
                    return Info::new(Ty::Dyn);
                };
                let inner = match &operand.ty {
                    Ty::Optional(t) => Info::sized((**t).clone(), (operand.size, operand.elem)),
                    _ => operand.clone(),
                };
                let field_at = self.find_word(at, field.inner());
                let mut info = self.field(&inner, field.inner(), field_at);
                info.ty = Ty::optional(info.ty);
                info.cost += operand.cost;
                return info;
            }
            _ => {}
        }
        if target.is_none() {
            if let Some(why) = self.scope.mode.refuses_function(&name) {
                return self.error(name_at, why);
            }
        }
        let recv = target.map(|t| self.expr(t, at));
        if !self.decls.functions.contains_key(&name) {
            // The arguments of an unknown function (a macro of a library
            // celgate lacks may bind names) are not checked.
            let n = c.args.len();
            let args = vec![Info::new(Ty::Dyn); n];
            return self.resolve(&name, recv.as_ref(), &args, name_at);
        }
        let args: Vec<Info> = c.args.iter().map(|a| self.expr(a, at)).collect();
        let children: f64 = recv.iter().chain(&args).map(|i| i.cost).sum();
        let mut info = self.resolve(&name, recv.as_ref(), &args, name_at);
        self.outbound_url(&name, recv.as_ref(), c, at);
        let (cost, sizes) = cost::call(&name, recv.as_ref(), &args, &info.ty);
        info.cost = cost;
        info.size = sizes.0;
        info.elem = sizes.1;
        // The pieces of a string share its bytes; what a function makes
        // of a list or a value holds no more than they did.
        let first = recv.as_ref().or(args.first());
        info.total = match name.as_str() {
            "split" | "findAll" => first.map(|r| r.size),
            "_+_" => Some(recv.iter().chain(&args).map(Info::total).sum()),
            _ => first.and_then(|f| f.total),
        };
        // A literal count bounds the result: `s.split(",", 8)`,
        // `lists.range(10)`.
        let count = match c.args.last().map(|a| &a.expr) {
            Some(Expr::Literal(LiteralValue::Int(n))) => Some(i64::from(*n).max(1) as f64),
            _ => None,
        };
        match (name.as_str(), count) {
            ("split", Some(n)) if args.len() == 2 => info.size = info.size.min(n),
            ("lists.range", Some(n)) => info.size = n,
            _ => {}
        }
        info.cost += children;
        info
    }

    /// A literal URL of the `http` library that the server's allow-list
    /// refuses is an error of the policy, found before any request runs.
    fn outbound_url(&mut self, name: &str, recv: Option<&Info>, c: &CallExpr, at: usize) {
        use crate::cel::eval::lib::http;
        let method = recv.is_some();
        if !http::takes_url(name, method)
            || recv.is_some_and(|r| !matches!(&r.ty, Ty::Object(t) if &**t == "http.Context"))
        {
            return;
        }
        let Some(arg) = c.args.first() else { return };
        let Expr::Literal(LiteralValue::String(url)) = &arg.expr else {
            return;
        };
        if let Err(e) = crate::outbound::http::check_literal(url.inner()) {
            let arg_at = self.offset(arg, at);
            self.error(arg_at, format!("`{}`: {e}", display_name(name)));
        }
    }

    /// The overload a call takes, and its result.
    fn resolve(&mut self, name: &str, recv: Option<&Info>, args: &[Info], at: usize) -> Info {
        let shown = display_name(name);
        let Some(overloads) = self.decls.functions.get(name) else {
            let mut known: Vec<&str> = self
                .decls
                .functions
                .iter()
                .filter(|(_, o)| o.iter().any(|o| o.receiver.is_some() == recv.is_some()))
                .map(|(n, _)| n.as_str())
                .filter(|n| n.starts_with(|c: char| c.is_ascii_alphabetic()) && !n.contains(".@"))
                .collect();
            known.sort_unstable();
            let kind = if recv.is_some() { "method" } else { "function" };
            return self.error(
                at,
                format!("undeclared {kind} `{shown}`{}", did_you_mean(name, &known)),
            );
        };
        let shaped: Vec<&decls::Overload> = overloads
            .iter()
            .filter(|o| o.receiver.is_some() == recv.is_some() && o.params.len() == args.len())
            .collect();
        let list = |os: &[decls::Overload]| {
            os.iter()
                .map(|o| o.signature(name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if shaped.is_empty() {
            let how = if recv.is_some() {
                "as a method"
            } else {
                "as a function"
            };
            return self.error(
                at,
                format!(
                    "`{shown}` is not declared with {} argument(s) {how}; declared: {}",
                    args.len(),
                    list(overloads)
                ),
            );
        }
        let mut results: Vec<Ty> = Vec::new();
        for o in &shaped {
            let mut s = types::Subst::new();
            let recv_ok = match (&o.receiver, recv) {
                (Some(r), Some(i)) => types::assignable(r, &i.ty, &mut s),
                _ => true,
            };
            if recv_ok
                && o.params
                    .iter()
                    .zip(args)
                    .all(|(p, a)| types::assignable(p, &a.ty, &mut s))
            {
                let r = o.result.substitute(&s);
                if !results.contains(&r) {
                    results.push(r);
                }
            }
        }
        match results.len() {
            0 if name == "_?_:_" && args.len() == 3 && matches!(args[0].ty, Ty::Bool | Ty::Dyn) => {
                self.error(
                    at,
                    format!(
                        "the branches of `?:` have different types: {} and {} (wrap one in dyn() to mix them)",
                        args[1].ty, args[2].ty
                    ),
                )
            }
            0 => {
                let got: Vec<String> = args.iter().map(|a| a.ty.to_string()).collect();
                let applied = match recv {
                    Some(r) => format!("{}.{shown}({})", r.ty, got.join(", ")),
                    None => format!("({})", got.join(", ")),
                };
                self.error(
                    at,
                    format!(
                        "no overload of `{shown}` for {applied}; declared: {}",
                        list(overloads)
                    ),
                )
            }
            1 => Info::new(results.remove(0)),
            _ => Info::new(Ty::Dyn),
        }
    }

    fn comprehension(&mut self, c: &ComprehensionExpr, at: usize) -> Info {
        let range = self.expr(&c.iter_range, at);
        let n = range.count();
        let (first, second) = match &range.ty {
            Ty::List(t) => (Ty::Int, (**t).clone()),
            Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
            Ty::Dyn => (Ty::Dyn, Ty::Dyn),
            other => {
                let rat = self.offset(&c.iter_range, at);
                self.error(
                    rat,
                    format!("cannot iterate over {other}: a comprehension needs a list or a map"),
                );
                (Ty::Dyn, Ty::Dyn)
            }
        };
        // The elements share the range's total size: a body whose cost
        // grows with its element's size costs, summed over the elements, as
        // much as it would on elements of the average size.
        let each = range.elem.min(range.total() / n).max(1.0);
        let elem_info = |t: Ty| Info::sized(t, (each, each));
        // With one variable, it is the element of a list or the key of a map.
        let (v1, v2) = match (&c.iter_var2, &range.ty) {
            (None, Ty::List(_)) => (elem_info(second.clone()), None),
            (None, _) => (elem_info(first.clone()), None),
            (Some(_), _) => (Info::new(first), Some(elem_info(second))),
        };
        let init = self.expr(&c.accu_init, at);
        let mut accu = init.clone();
        accu.size = accu.size.max(n);
        accu.elem = accu.elem.max(range.elem);
        let depth = self.locals.len();
        self.locals.push((c.accu_var.clone(), accu.clone()));
        self.locals.push((c.iter_var.clone(), v1));
        if let (Some(name), Some(v2)) = (&c.iter_var2, v2) {
            self.locals.push((name.clone(), v2));
        }
        let cond = self.expr(&c.loop_cond, at);
        let step = self.expr(&c.loop_step, at);
        self.locals.truncate(depth);
        // The accumulator's type, joined with what the steps make of it.
        if let Some(j) = accu.ty.join(&step.ty) {
            accu.ty = j;
        }
        self.locals.push((c.accu_var.clone(), accu));
        let result = self.expr(&c.result, at);
        self.locals.truncate(depth);
        let total = matches!(result.ty, Ty::List(_)).then(|| range.total());
        Info {
            ty: result.ty,
            size: result.size,
            elem: result.elem,
            cost: range.cost + init.cost + n * (cond.cost + step.cost) + result.cost,
            total,
        }
    }
}

fn literal(l: &LiteralValue) -> Info {
    match l {
        LiteralValue::Boolean(_) => Info::new(Ty::Bool),
        LiteralValue::Int(_) => Info::new(Ty::Int),
        LiteralValue::UInt(_) => Info::new(Ty::Uint),
        LiteralValue::Double(_) => Info::new(Ty::Double),
        LiteralValue::Null => Info::new(Ty::Null),
        LiteralValue::String(s) => Info::sized(Ty::String, (s.inner().len().max(1) as f64, 1.0)),
        LiteralValue::Bytes(b) => Info::sized(Ty::Bytes, (b.inner().len().max(1) as f64, 1.0)),
    }
}

/// The type of a list's elements (a map's keys or values) so far, joined
/// with the next one's: as in cel-go, elements of different types make a
/// `list(dyn)` rather than an error.
fn join_or_dyn(prev: Option<Ty>, t: Ty) -> Ty {
    match prev {
        None => t,
        Some(p) => p.join(&t).unwrap_or(Ty::Dyn),
    }
}

/// `a.b.c` as text, when `e` spells a qualified name.
fn qualified(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Ident(n) => Some(n.clone()),
        Expr::Select(s) if !s.test => Some(format!("{}.{}", qualified(&s.operand)?, s.field)),
        _ => None,
    }
}

fn example(namespace: &str) -> &'static str {
    match namespace {
        "envoy" => "envoy.Allowed()",
        "jwt" => "jwt.Decode(token, key)",
        "jwks" => "jwks.Fetch(url)",
        "http" => "http.Get(url)",
        "mcp" => "mcp.Parse(body)",
        "math" => "math.abs(x)",
        "optional" => "optional.of(x)",
        "base64" => "base64.decode(s)",
        "sets" => "sets.contains(a, b)",
        "strings" => "strings.quote(s)",
        "net" => "type(x) == net.IP",
        "kubernetes" => "type(x) == kubernetes.Quantity",
        "format" => "format.dns1123Label().validate(s)",
        "json" => "json.unmarshal(s)",
        _ => "lists.range(n)",
    }
}

/// `; did you mean "x"?` for the closest of `known` within two edits.
pub fn did_you_mean(name: &str, known: &[&str]) -> String {
    // No name that long is a typo of a declared one.
    if name.len() > 64 {
        return String::new();
    }
    let lower = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| {
            (
                crate::policy::edit_distance(&lower, &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, _)| {
            *d <= if name.len() <= 3 {
                1
            } else {
                2.max(name.len() / 4)
            }
        })
        .min()
        .map(|(_, k)| format!("; did you mean {:?}?", display_name(k)))
        .unwrap_or_default()
}

/// What a validation or condition must return, checked against `t`.
pub fn result_error(t: &Ty, want_bool: bool) -> Option<String> {
    result_error_in(Mode::Envoy, t, want_bool)
}

/// As [`result_error`], for an expression of `mode`: an HTTP-mode
/// validation returns an `http.CheckResponse` or null.
pub fn result_error_in(mode: Mode, t: &Ty, want_bool: bool) -> Option<String> {
    if want_bool {
        return (!matches!(t, Ty::Bool | Ty::Dyn)).then(|| format!("must be a bool, not {t}"));
    }
    if mode != Mode::Envoy {
        let want = mode.response_type();
        return match t {
            Ty::Dyn | Ty::Null => None,
            Ty::Object(n) if &**n == want => None,
            Ty::Object(n) if n.starts_with("http.CheckResponse") => Some(format!(
                "must return {want} or null, not {t}: add .Response()"
            )),
            _ => Some(format!("must return {want} or null, not {t}")),
        };
    }
    match t {
        Ty::Dyn | Ty::Null => None,
        Ty::Object(n) if &**n == CHECK_RESPONSE => None,
        Ty::Object(n) if n.ends_with("HttpResponse") => Some(format!(
            "must return {CHECK_RESPONSE} or null, not {t}: add .Response()"
        )),
        _ => Some(format!("must return {CHECK_RESPONSE} or null, not {t}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scope of the cases: a decoded token, a parsed MCP request, an int.
    fn scope() -> Scope {
        let vars = [
            ("token", Ty::object("jwt.Token")),
            ("req", Ty::object("mcp.MCPRequest")),
            ("n", Ty::Int),
        ];
        Scope {
            variables: Some(
                vars.into_iter()
                    .map(|(n, t)| (n.to_owned(), Info::new(t)))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn every_case_of_the_corpus() {
        let mut failures = Vec::new();
        let mut count = 0;
        for (i, line) in include_str!("testdata/cases.txt").lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            count += 1;
            let (expr, want, refused) = match (line.split_once(" => "), line.split_once(" !! ")) {
                (Some((e, t)), _) => (e, t, false),
                (_, Some((e, m))) => (e, m, true),
                _ => panic!("line {}: neither => nor !!: {line}", i + 1),
            };
            let program = match crate::cel::env().compile(expr) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("line {}: {expr}: does not parse: {e}", i + 1));
                    continue;
                }
            };
            let got = check(&program, &scope());
            let ok = match (&got, refused) {
                (Ok(info), false) => info.ty.to_string() == want,
                (Err(errors), true) => errors.iter().any(|e| e.message.contains(want)),
                _ => false,
            };
            if !ok {
                failures.push(format!("line {}: {expr}: want {want}, got {got:?}", i + 1));
            }
        }
        assert!(count > 80, "{count} cases");
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
