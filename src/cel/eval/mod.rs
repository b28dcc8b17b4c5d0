//! celgate's own CEL evaluator.
//!
//! An expression is parsed by the `cel` crate's parser and type-checked by
//! [`crate::cel::check`] when its policy loads; [`plan`] then compiles it
//! into a tree of resolved operations: field paths of the request become
//! direct reads, constant sub-expressions are folded, `variables.<name>`
//! becomes a slot, each call is bound to its library function. At request
//! time the plan runs against an evaluation context ([`Ctx`]) that holds
//! everything of the request: the `CheckRequest` (read in place through the
//! borrowed [`value::Value`] model), the policy's lazily computed variables,
//! the libraries' per-request caches, and the cost meter.
//!
//! The meter charges each step, each comprehension iteration and each
//! string or list operation by the size it walks; a request that exceeds
//! its budget stops with an error ([`ErrorKind::CostExceeded`]), which the
//! policy's `failurePolicy` decides like any other error.
//!
//! Semantics are cel-go's: errors propagate through everything but `&&`,
//! `||`, `?:` (on the branch not taken) and the comprehensions built from
//! them, which absorb an error when the other side decides; `a.?b` and
//! `a[?k]` are `optional.none()` only when the field or key is absent, and
//! an error otherwise.

pub mod ctx;
pub mod lib;
pub mod plan;
pub mod request;
pub mod value;

pub use crate::cel::ErrorKind;
pub use ctx::{Ctx, Host, HttpCall, HttpResponse, Meter};
pub use plan::{compile, Program};
pub use value::{Key, Map, Object, Str, Type, Value};

use std::borrow::Cow;
use std::fmt;

/// An evaluation error. Its message may quote request data: it is for the
/// user's own tools (`check --explain`, `test`), never for logs; what is
/// logged is the [`ErrorKind`] and the function name.
///
/// A pointer to its [`ErrorData`] (read through `Deref`: `e.kind`), so that
/// the `Result` every evaluation step returns is no larger than a value.
#[derive(Clone, PartialEq)]
pub struct Error(Box<ErrorData>);

/// What an [`Error`] says.
#[derive(Clone, PartialEq)]
pub struct ErrorData {
    pub kind: ErrorKind,
    /// The function that failed (a name of the policy or of celgate).
    pub function: Option<Cow<'static, str>>,
    pub message: String,
}

crate::cel::boxed_error!(Error, ErrorData);

impl Error {
    #[cold]
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorData {
            kind,
            function: None,
            message: message.into(),
        }
        .into()
    }

    /// A function refused its arguments (`int("x")`, `jwt.Decode` of a bad
    /// token, ...).
    #[cold]
    pub fn function(function: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ErrorData {
            kind: ErrorKind::FunctionError,
            function: Some(function.into()),
            message: message.into(),
        }
        .into()
    }

    /// No overload of `function` takes these arguments.
    #[cold]
    pub fn no_overload(function: &str, args: &[Value<'_>]) -> Self {
        let types: Vec<&str> = args.iter().map(Value::type_name).collect();
        Error::new(
            ErrorKind::NoSuchOverload,
            format!("no such overload: {function}({})", types.join(", ")),
        )
    }

    #[cold]
    pub fn no_such_key(key: &Value<'_>) -> Self {
        let shown = match key {
            Value::String(s) => format!("{:?}", s.as_str()),
            Value::Int(i) => i.to_string(),
            Value::Uint(u) => format!("{u}u"),
            Value::Bool(b) => b.to_string(),
            other => format!("<{}>", other.type_name()),
        };
        Error::new(ErrorKind::NoSuchKey, format!("no such key: {shown}"))
    }

    #[cold]
    pub fn no_such_field(type_name: &str, field: &str) -> Self {
        Error::new(
            ErrorKind::NoSuchKey,
            format!("no such field '{field}' on {type_name}"),
        )
    }

    #[cold]
    pub fn type_mismatch(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::TypeMismatch, message)
    }

    #[cold]
    pub fn overflow(op: &str) -> Self {
        Error::new(ErrorKind::Overflow, format!("{op}: integer overflow"))
    }

    #[cold]
    pub fn division_by_zero() -> Self {
        Error::new(ErrorKind::DivisionByZero, "division by zero")
    }

    #[cold]
    pub fn modulus_by_zero() -> Self {
        Error::new(ErrorKind::DivisionByZero, "modulus by zero")
    }

    #[cold]
    pub fn index_out_of_bounds(index: i64, len: usize) -> Self {
        Error::new(
            ErrorKind::IndexOutOfBounds,
            format!("index {index} out of range for a list of {len}"),
        )
    }

    #[cold]
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Without the message (which may quote request data), so that `{:?}` is
/// safe wherever it ends up.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(function) = &self.function {
            d.field("function", function);
        }
        d.field("message_bytes", &self.message.len()).finish()
    }
}

impl std::error::Error for Error {}

/// The result of every evaluation step.
pub type Result<'r, T = Value<'r>> = std::result::Result<T, Error>;

/// A library function's implementation. `args` holds the receiver first for
/// a method call (`"ab".contains("a")`: `["ab", "a"]`). It returns
/// [`Error::no_overload`] for argument types it does not take, so that
/// another library's function of the same name may be tried.
pub type NativeFn = for<'r> fn(&mut Ctx<'r>, &[Value<'r>]) -> std::result::Result<Value<'r>, Error>;

/// A library function that may take its arguments (`args` holds the
/// receiver first), so that a builder changes the value its receiver
/// holds instead of copying it ([`Value::object_mut`]). Bound where it is
/// the only function a call may reach; [`Function::f`] serves elsewhere.
pub type OwningFn =
    for<'r> fn(&mut Ctx<'r>, &mut [Value<'r>]) -> std::result::Result<Value<'r>, Error>;

/// One function of a library, as the planner binds calls to it.
#[derive(Clone, Copy)]
pub struct Function {
    /// The name as written: `size`, `contains`, `math.ceil`, `jwt.Decode`.
    pub name: &'static str,
    /// Called on a receiver (`x.f(...)`) rather than globally (`f(x, ...)`).
    pub receiver: bool,
    /// Number of arguments, the receiver excluded; `None`: any.
    pub arity: Option<usize>,
    pub f: NativeFn,
    /// The same function taking its arguments, where it has that form.
    pub owning: Option<OwningFn>,
    /// Whether the result depends on its arguments alone (no request
    /// state, no clock, no I/O), so that a call on constants is folded
    /// when the policy loads.
    pub pure: bool,
}

impl Function {
    pub const fn global(name: &'static str, arity: usize, f: NativeFn) -> Self {
        Function {
            name,
            receiver: false,
            arity: Some(arity),
            f,
            owning: None,
            pure: true,
        }
    }

    pub const fn method(name: &'static str, arity: usize, f: NativeFn) -> Self {
        Function {
            name,
            receiver: true,
            arity: Some(arity),
            f,
            owning: None,
            pure: true,
        }
    }

    /// Also gives the form of the function that takes its arguments.
    pub const fn owning(mut self, f: OwningFn) -> Self {
        self.owning = Some(f);
        self
    }

    /// Marks the function as reading more than its arguments.
    pub const fn impure(mut self) -> Self {
        self.pure = false;
        self
    }
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}/{:?}",
            if self.receiver { "." } else { "" },
            self.name,
            self.arity
        )
    }
}
