//! (to be written)

use crate::cel::eval::Function;

pub const FUNCTIONS: &[Function] = &[];

/// The response a validation returned (stub until the library is ported).
pub fn check_response<'a>(_v: &'a crate::cel::eval::Value<'_>) -> Option<&'a crate::cel::envoy::CheckResponse> {
    None
}
