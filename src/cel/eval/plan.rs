//! (being written) The planner: checked AST → executable plan.

use super::{Ctx, Error, Value};

/// A compiled expression.
#[derive(Debug)]
pub struct Program {}

impl Program {
    pub fn eval<'r>(&'r self, _ctx: &mut Ctx<'r>) -> Result<Value<'r>, Error> {
        Err(Error::internal("not yet"))
    }
}

pub fn compile() {}
