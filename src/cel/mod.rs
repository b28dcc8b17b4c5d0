//! The CEL environment policies are compiled against and evaluated in.
//!
//! One [`Env`] is built per process: the standard library, the strings, lists,
//! math and encoders extensions, a sets library, a regex `matches` that caches
//! compiled patterns, the `envoy` library, the `jwt`/`jwks` library and the
//! `mcp` library. Every function is a plain `fn`, so the environment is shared
//! read-only by every request (the `mcp` parse cache is per request, see
//! [`mcp::in_request`]).

pub mod convert;
pub mod envoy;
pub mod jwt;
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
