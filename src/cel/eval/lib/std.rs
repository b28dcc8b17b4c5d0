//! (to be written)

use crate::cel::eval::Function;

pub const FUNCTIONS: &[Function] = &[];
