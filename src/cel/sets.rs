//! The `sets` extension (cel-go `ext.Sets()`): `sets.contains`,
//! `sets.equivalent` and `sets.intersects` over lists.

use cel::common::traits::Iterable;
use cel::common::types::{CelBool, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{DeclarationError, Env, ExecutionError};

pub fn extension(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_overload(
        "sets.contains",
        "list_sets_contains_list",
        vec![LIST_TYPE, LIST_TYPE],
        contains,
    )?;
    env.add_overload(
        "sets.equivalent",
        "list_sets_equivalent_list",
        vec![LIST_TYPE, LIST_TYPE],
        equivalent,
    )?;
    env.add_overload(
        "sets.intersects",
        "list_sets_intersects_list",
        vec![LIST_TYPE, LIST_TYPE],
        intersects,
    )
}

fn lists<'a, 'v>(
    name: &str,
    args: &'a [CowVal<'_, 'v>],
) -> Result<(&'a (dyn Iterable + 'v), &'a (dyn Iterable + 'v)), ExecutionError> {
    let get = |i: usize| {
        args.get(i)
            .and_then(|v| v.as_iterable())
            .ok_or_else(|| ExecutionError::function_error(name, "expects (list, list)"))
    };
    Ok((get(0)?, get(1)?))
}

fn has(list: &dyn Iterable, x: &dyn Val) -> bool {
    let mut it = list.iter();
    while let Some(e) = it.next() {
        if e.equals(x) {
            return true;
        }
    }
    false
}

/// Whether every element of `b` is in `a`.
fn all_in(a: &dyn Iterable, b: &dyn Iterable) -> bool {
    let mut it = b.iter();
    while let Some(e) = it.next() {
        if !has(a, e) {
            return false;
        }
    }
    true
}

fn contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = lists("sets.contains", &args)?;
    Ok(CowVal::owned(CelBool::from(all_in(a, b))))
}

fn equivalent<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = lists("sets.equivalent", &args)?;
    Ok(CowVal::owned(CelBool::from(all_in(a, b) && all_in(b, a))))
}

fn intersects<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = lists("sets.intersects", &args)?;
    let mut it = b.iter();
    while let Some(e) = it.next() {
        if has(a, e) {
            return Ok(CowVal::owned(CelBool::from(true)));
        }
    }
    Ok(CowVal::owned(CelBool::from(false)))
}
