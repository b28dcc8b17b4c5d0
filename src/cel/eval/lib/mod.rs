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

pub mod envoy;
pub mod jwt;
pub mod lists;
pub mod mcp;
pub mod net;
pub mod std;
pub mod strings;

use super::Function;
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
        mcp::FUNCTIONS,
        net::FUNCTIONS,
    ]
    .into_iter()
    .flatten()
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
