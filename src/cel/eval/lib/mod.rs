//! The libraries: each file declares its functions ([`Function`]) and
//! implements them beside the declaration. The planner binds every call of
//! an expression to the functions of its name here when the policy loads.
//!
//! Types the checker knows each overload by are declared in the checker's
//! tables (`check/std.decls` and the libraries' `DECLS`); here a function
//! dispatches on the runtime types of its arguments and answers
//! [`Error::no_overload`](super::Error::no_overload) for those it does not
//! take, so that several libraries may define the same name (`reverse` on a
//! string and on a list).

/// [`Object`](super::Object) for a value that is one message of a response,
/// named by its message type and compared by `PartialEq` (the libraries that
/// build responses: `envoy` and its message literals).
macro_rules! response_object {
    ($ty:ty, $name:expr) => {
        impl $crate::cel::eval::Object for $ty {
            fn type_name(&self) -> &str {
                $name
            }
            fn equals(&self, other: &dyn $crate::cel::eval::Object) -> bool {
                other.as_any().downcast_ref::<$ty>() == Some(self)
            }
            fn as_any(&self) -> &dyn ::std::any::Any {
                self
            }
        }
    };
}

pub mod envoy;
pub mod format;
pub mod http;
pub mod httpauthz;
pub mod json;
pub mod jwt;
pub mod lists;
pub mod mcp;
pub mod messages;
pub mod net;
pub mod quantity;
pub mod regex;
pub mod semver;
pub mod std;
pub mod strings;
pub mod url;

use super::{Ctx, Error, ErrorKind, Function, Value};
use ::std::collections::HashMap;
use ::std::sync::LazyLock;

/// Every library's functions, in lookup order (the operators and names
/// the planner evaluates itself, `_&&_`, `_==_`, `_[_]`, `or`, ..., are not
/// among them).
pub fn all_functions() -> impl Iterator<Item = &'static Function> {
    [
        std::FUNCTIONS,
        strings::FUNCTIONS,
        lists::FUNCTIONS,
        envoy::FUNCTIONS,
        jwt::FUNCTIONS,
        http::FUNCTIONS,
        httpauthz::FUNCTIONS,
        mcp::FUNCTIONS,
        net::FUNCTIONS,
        url::FUNCTIONS,
        quantity::FUNCTIONS,
        semver::FUNCTIONS,
        regex::FUNCTIONS,
        format::FUNCTIONS,
        json::FUNCTIONS,
    ]
    .into_iter()
    .flatten()
}

/// The libraries' value types an expression may name (`net.IP`,
/// `kubernetes.URL`), by their full names.
pub fn is_type_name(name: &str) -> bool {
    [
        net::TYPES,
        url::TYPES,
        quantity::TYPES,
        semver::TYPES,
        format::TYPES,
    ]
    .iter()
    .any(|t| t.contains(&name))
}

type Registry = HashMap<(&'static str, bool), Vec<&'static Function>>;

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut r: Registry = HashMap::new();
    for f in all_functions() {
        r.entry((f.name, f.receiver)).or_default().push(f);
    }
    r
});

/// The functions a call of `name` with `args` arguments (the receiver
/// excluded) may be bound to, in the order they are tried.
pub fn lookup(name: &str, receiver: bool, args: usize) -> Vec<&'static Function> {
    REGISTRY
        .get(&(name, receiver))
        .map(|fs| {
            fs.iter()
                .copied()
                .filter(|f| f.arity.is_none_or(|a| a == args))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether any function of this name exists, called either way.
pub fn exists(name: &str) -> bool {
    REGISTRY.contains_key(&(name, false)) || REGISTRY.contains_key(&(name, true))
}

/// Calls `name` with `args` as the planner binds a call: each of
/// `functions` in turn, until one takes the arguments (the others answer
/// `no_such_overload`).
pub fn dispatch<'r>(
    ctx: &mut Ctx<'r>,
    functions: &[&'static Function],
    name: &str,
    args: &[Value<'r>],
) -> Result<Value<'r>, Error> {
    if let [f] = functions {
        return (f.f)(ctx, args);
    }
    let mut last = None;
    for f in functions {
        match (f.f)(ctx, args) {
            Err(e) if e.kind == ErrorKind::NoSuchOverload => last = Some(e),
            r => return r,
        }
    }
    Err(last.unwrap_or_else(|| Error::no_overload(name, args)))
}

/// For the libraries' unit tests: calls `name` (a method when `receiver`,
/// `args` holding the receiver first) as an expression would.
#[cfg(test)]
pub(crate) fn call<'r>(
    ctx: &mut Ctx<'r>,
    name: &str,
    receiver: bool,
    args: &[Value<'r>],
) -> Result<Value<'r>, Error> {
    let arity = args.len() - usize::from(receiver);
    let functions = lookup(name, receiver, arity);
    assert!(!functions.is_empty(), "no function {name}/{arity}");
    dispatch(ctx, &functions, name, args)
}

/// For the libraries' unit tests: the method `name` on `args[0]`, in a
/// context with a budget of a million units.
#[cfg(test)]
pub(crate) fn test_method<'r>(name: &str, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    call(
        &mut Ctx::new(None, super::Meter::new(1_000_000)),
        name,
        true,
        args,
    )
}

/// For the libraries' unit tests: the global function `name`, likewise.
#[cfg(test)]
pub(crate) fn test_global<'r>(name: &str, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    call(
        &mut Ctx::new(None, super::Meter::new(1_000_000)),
        name,
        false,
        args,
    )
}
