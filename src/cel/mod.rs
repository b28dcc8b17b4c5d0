//! CEL in celgate: the `cel` crate parses expressions ([`env`]), celgate
//! checks them ([`check`]), plans and evaluates them ([`eval`]).
//!
//! One parsing environment is built per process: the standard macros, the
//! macros of the `cel` crate's lists and math extensions (`sortBy`,
//! `math.greatest`, `math.least`) and celgate's own ([`macros`]). It is
//! only ever used to parse: evaluation is [`eval`]'s.

/// `Deref`, `DerefMut` and `From` for an error type that is a pointer to
/// its data (`struct $outer(Box<$data>)`), so that every `Result` holding
/// it is no larger than its value, and its fields read as `e.kind`.
macro_rules! boxed_error {
    ($outer:ident, $data:ident) => {
        impl From<$data> for $outer {
            #[cold]
            fn from(d: $data) -> Self {
                $outer(Box::new(d))
            }
        }

        impl std::ops::Deref for $outer {
            type Target = $data;
            fn deref(&self) -> &$data {
                &self.0
            }
        }

        impl std::ops::DerefMut for $outer {
            fn deref_mut(&mut self) -> &mut $data {
                &mut self.0
            }
        }
    };
}
pub(crate) use boxed_error;

pub mod check;
pub mod eval;
pub mod limits;
pub mod macros;

use cel::common::ast::{EntryExpr, Expr, LiteralValue};
use cel::Env;
use regex::Regex;
use std::sync::{Arc, LazyLock};

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(build_env()));

/// The shared environment every policy expression is parsed with.
pub fn env() -> &'static Arc<Env> {
    &ENV
}

fn build_env() -> Env {
    let mut env = Env::stdlib();
    // Registration only fails on a duplicate declaration, which is a bug in
    // this module caught by every test run, not a condition to recover from.
    // These two extensions are here for the macros they add to parsing.
    env.add_extension(cel::extensions::lists)
        .expect("lists extension");
    env.add_extension(cel::extensions::math)
        .expect("math extension");
    for m in macros::all() {
        env.add_macro(m).expect("celgate's macros");
    }
    env
}

/// Every `matches` call whose pattern is a string literal, checked to
/// compile: a policy with a broken pattern is refused when it loads rather
/// than failing per request.
pub fn check_literal_patterns(expr: &cel::IdedExpr) -> Result<(), String> {
    let mut err = None;
    walk(expr, &mut |e| {
        if let Expr::Call(call) = &e.expr {
            if call.func_name == "matches" {
                if let Some(pattern) = call.args.last() {
                    if let Expr::Literal(LiteralValue::String(s)) = &pattern.expr {
                        if let Err(e) = Regex::new(s.inner()) {
                            err.get_or_insert_with(|| {
                                format!("invalid regex {:?}: {e}", s.inner())
                            });
                        }
                    }
                }
            }
        }
    });
    err.map_or(Ok(()), Err)
}

/// Visits every sub-expression of `expr`.
pub fn walk(expr: &cel::IdedExpr, f: &mut dyn FnMut(&cel::IdedExpr)) {
    f(expr);
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                walk(t, f);
            }
            for a in &call.args {
                walk(a, f);
            }
        }
        Expr::Comprehension(c) => {
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                walk(e, f);
            }
        }
        Expr::List(l) => l.elements.iter().for_each(|e| walk(e, f)),
        Expr::Map(m) => m.entries.iter().for_each(|e| walk_entry(&e.expr, f)),
        Expr::Struct(s) => s.entries.iter().for_each(|e| walk_entry(&e.expr, f)),
        Expr::Select(s) => walk(&s.operand, f),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn walk_entry(entry: &EntryExpr, f: &mut dyn FnMut(&cel::IdedExpr)) {
    match entry {
        EntryExpr::MapEntry(m) => {
            walk(&m.key, f);
            walk(&m.value, f);
        }
        EntryExpr::StructField(s) => walk(&s.value, f),
    }
}

/// What went wrong in a CEL evaluation, as a fixed name that is safe to log:
/// the error messages themselves quote values (`no such key: "<the key>"`),
/// which are often request data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A map or message lookup of a key that is not there.
    NoSuchKey,
    /// A function or operator applied to argument types it has no overload for.
    NoSuchOverload,
    /// A value of the wrong type (operands of an operator, an index, a key).
    TypeMismatch,
    /// A name that is not declared.
    UndeclaredReference,
    /// Too few or too many arguments.
    InvalidArgumentCount,
    /// `mcp.Parse` refused the body.
    McpParse,
    /// Another function refused its arguments (`int("x")`, `jwt.Verify`, ...).
    FunctionError,
    DivisionByZero,
    Overflow,
    IndexOutOfBounds,
    /// A map literal with the same key twice.
    DuplicateKey,
    /// An expression returned the wrong type (a condition not a bool, a
    /// validation neither a response nor null).
    ResultType,
    /// The request's evaluation spent its cost budget (`--cost-budget`) or
    /// ran past its deadline.
    CostExceeded,
    /// An error in celgate itself (a panic, a broken invariant).
    Internal,
    /// An error the request could not be decided for before any policy ran
    /// (set by the server: undecodable request, deadline, overload).
    Server,
}

impl ErrorKind {
    /// The kind's name as logged, traced and written to the decision log.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoSuchKey => "no_such_key",
            ErrorKind::NoSuchOverload => "no_such_overload",
            ErrorKind::TypeMismatch => "type_mismatch",
            ErrorKind::UndeclaredReference => "undeclared_reference",
            ErrorKind::InvalidArgumentCount => "invalid_argument_count",
            ErrorKind::McpParse => "mcp_parse",
            ErrorKind::FunctionError => "function_error",
            ErrorKind::DivisionByZero => "division_by_zero",
            ErrorKind::Overflow => "overflow",
            ErrorKind::IndexOutOfBounds => "index_out_of_bounds",
            ErrorKind::DuplicateKey => "duplicate_key",
            ErrorKind::ResultType => "result_type",
            ErrorKind::CostExceeded => "cost_exceeded",
            ErrorKind::Internal => "internal",
            ErrorKind::Server => "server",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
