//! `matches()` with compiled patterns cached per thread.
//!
//! The stock overload compiles its pattern on every call. Here each worker
//! thread keeps the patterns it has seen, so a policy's regex is compiled once
//! per thread and the hot path takes no lock.

use cel::common::ast::Expr;
use cel::common::types::{CelBool, CelString, STRING_TYPE};
use cel::common::value::CowVal;
use cel::{DeclarationError, Env, ExecutionError};
use regex::Regex;
use std::cell::RefCell;
use std::collections::HashMap;

/// Patterns kept per thread before the cache is emptied; bounds memory when
/// policies build patterns from request data.
const MAX_CACHED: usize = 512;

thread_local! {
    static CACHE: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

pub fn extension(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_overload(
        "matches",
        "matches_string_string",
        vec![STRING_TYPE, STRING_TYPE],
        matches,
    )?;
    env.add_member_overload(
        "matches",
        "string_matches_string",
        STRING_TYPE,
        vec![STRING_TYPE],
        matches,
    )
}

fn matches<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let text = str_arg(&args, 0)?;
    let pattern = str_arg(&args, 1)?;
    let hit = CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(re) = cache.get(pattern) {
            return Ok(re.is_match(text));
        }
        let re = Regex::new(pattern).map_err(|e| {
            ExecutionError::function_error("matches", format!("invalid regex '{pattern}': {e}"))
        })?;
        let hit = re.is_match(text);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(pattern.to_owned(), re);
        Ok(hit)
    })?;
    Ok(CowVal::owned(CelBool::from(hit)))
}

fn str_arg<'a>(args: &'a [CowVal<'_, '_>], i: usize) -> Result<&'a str, ExecutionError> {
    args.get(i)
        .and_then(|v| v.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::function_error("matches", "expects (string, string)"))
}

/// Every `matches` call whose pattern is a string literal, checked to compile.
pub fn check_literal_patterns(expr: &cel::IdedExpr) -> Result<(), String> {
    let mut err = None;
    walk(expr, &mut |e| {
        if let Expr::Call(call) = &e.expr {
            if call.func_name == "matches" {
                if let Some(pattern) = call.args.last() {
                    if let Expr::Literal(cel::common::ast::LiteralValue::String(s)) = &pattern.expr
                    {
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

fn walk_entry(entry: &cel::common::ast::EntryExpr, f: &mut dyn FnMut(&cel::IdedExpr)) {
    match entry {
        cel::common::ast::EntryExpr::MapEntry(m) => {
            walk(&m.key, f);
            walk(&m.value, f);
        }
        cel::common::ast::EntryExpr::StructField(s) => walk(&s.value, f),
    }
}
