//! The CEL environment policies are compiled against and evaluated in.
//!
//! One [`Env`] is built per process: the standard library, the strings, lists,
//! math and encoders extensions, a sets library, a regex `matches` that caches
//! compiled patterns, the `envoy` library, the `jwt`/`jwks` library and the
//! `mcp` library. Every function is a plain `fn`, so the environment is shared
//! read-only by every request (the `mcp` parse cache is per request, see
//! [`mcp::in_request`]).

pub mod check;
pub mod convert;
pub mod envoy;
pub mod eval;
pub mod jwt;
pub mod limits;
pub mod macros;
pub mod mcp;
mod regex_cache;
pub use regex_cache::walk;
mod sets;
pub mod view;

use cel::Env;
use std::sync::{Arc, LazyLock};

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(build_env()));

/// The shared environment every policy is compiled with and evaluated in.
pub fn env() -> &'static Arc<Env> {
    &ENV
}

fn build_env() -> Env {
    let mut env = Env::stdlib();
    // Registration only fails on a duplicate declaration, which is a bug in
    // this module caught by every test run, not a condition to recover from.
    env.add_extension(cel::extensions::strings)
        .expect("strings extension");
    env.add_extension(cel::extensions::lists)
        .expect("lists extension");
    env.add_extension(cel::extensions::math)
        .expect("math extension");
    env.add_extension(cel::extensions::encoders)
        .expect("encoders extension");
    env.add_extension(sets::extension).expect("sets extension");
    env.add_extension(regex_cache::extension)
        .expect("regex extension");
    env.add_extension(envoy::extension).expect("envoy library");
    env.add_extension(jwt::extension).expect("jwt library");
    env.add_extension(mcp::extension).expect("mcp library");
    for m in macros::all() {
        env.add_macro(m).expect("celgate's macros");
    }
    env
}

/// Compile-time check of a literal regular expression, so that a policy with
/// a broken pattern is refused when it loads rather than failing per request.
pub use regex_cache::check_literal_patterns;

/// The string a map or message is indexed with (`m["k"]`, `m.k`): the key of
/// every map-like value this crate exposes (request view, JWT, MCP request).
pub(crate) fn string_key(idx: &dyn cel::common::value::Val) -> Result<&str, cel::ExecutionError> {
    idx.downcast_ref::<cel::common::types::CelString>()
        .map(|s| s.inner())
        .ok_or_else(|| cel::ExecutionError::UnexpectedType {
            got: idx.get_type().name().to_owned(),
            want: "string".to_owned(),
        })
}

/// What went wrong in a CEL evaluation, as a fixed name that is safe to log:
/// the CEL error messages themselves quote values (`No such key: <the key>`,
/// `String("<the value>")`), which are often request data.
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

    /// The kind of a CEL execution error, and for a function error the
    /// function's name (from the policy or this crate, never from the request).
    pub fn of(e: &cel::ExecutionError) -> (ErrorKind, Option<&str>) {
        use cel::ExecutionError as E;
        #[allow(deprecated)]
        let kind = match e {
            E::NoSuchKey(_) => ErrorKind::NoSuchKey,
            E::NoSuchOverload(_) => ErrorKind::NoSuchOverload,
            E::UndeclaredReference(_) => ErrorKind::UndeclaredReference,
            E::InvalidArgumentCount { .. } | E::MissingArgumentOrTarget => {
                ErrorKind::InvalidArgumentCount
            }
            E::FunctionError { function, .. } => {
                let kind = if function == "mcp.Parse" {
                    ErrorKind::McpParse
                } else {
                    ErrorKind::FunctionError
                };
                return (kind, Some(function.as_str()));
            }
            E::DivisionByZero(_) | E::RemainderByZero(_) => ErrorKind::DivisionByZero,
            E::Overflow(..) => ErrorKind::Overflow,
            E::IndexOutOfBounds(_) => ErrorKind::IndexOutOfBounds,
            E::DuplicateKey(_) => ErrorKind::DuplicateKey,
            E::InternalError(_) => ErrorKind::Internal,
            E::UnsupportedTargetType { .. }
            | E::NotSupportedAsMethod { .. }
            | E::UnsupportedKeyType(_)
            | E::UnexpectedType { .. }
            | E::ValuesNotComparable(..)
            | E::UnsupportedUnaryOperator(..)
            | E::UnsupportedBinaryOperator(..)
            | E::UnsupportedMapIndex(_)
            | E::UnsupportedListIndex(_)
            | E::UnsupportedIndex(..) => ErrorKind::TypeMismatch,
            _ => ErrorKind::Internal,
        };
        (kind, None)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
