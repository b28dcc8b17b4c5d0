//! The lists extension (`slice`, `flatten`, `distinct`, `reverse`, `sort`,
//! `sortBy`'s `@sortByAssociatedKeys`, `lists.range`), the sets extension
//! (`sets.contains`, `sets.equivalent`, `sets.intersects`) and the math
//! extension (`math.ceil`, ..., `math.greatest`/`math.least` through
//! `math.@max`/`math.@min`), with cel-go's `ext` semantics.
//!
//! Elements are compared by CEL equality and ordering
//! ([`equals`], [`compare`]): `1`, `1u` and `1.0` are the same element.
//! What compares every pair (`distinct`, the sets functions) is charged
//! the number of pairs before it starts, so that a large list is refused
//! by the budget instead of computed.

use crate::cel::eval::value::{compare, compare_numbers, equals, List};
use crate::cel::eval::{Ctx, Error, Function, Value};
use std::cmp::Ordering;

pub const FUNCTIONS: &[Function] = &[
    Function::method("slice", 2, slice),
    Function::method("flatten", 0, flatten),
    Function::method("flatten", 1, flatten),
    Function::method("distinct", 0, distinct),
    Function::method("reverse", 0, reverse),
    Function::method("sort", 0, sort),
    Function::method("@sortByAssociatedKeys", 1, sort_by_keys),
    Function::global("lists.range", 1, range),
    Function::method("isSorted", 0, is_sorted),
    Function::method("sum", 0, sum),
    Function::method("min", 0, list_min),
    Function::method("max", 0, list_max),
    Function::method("indexOf", 1, index_of),
    Function::method("lastIndexOf", 1, last_index_of),
    Function::method("includes", 1, includes),
    Function::global("sets.contains", 2, sets_contains),
    Function::global("sets.equivalent", 2, sets_equivalent),
    Function::global("sets.intersects", 2, sets_intersects),
    Function::global("math.ceil", 1, ceil),
    Function::global("math.floor", 1, floor),
    Function::global("math.round", 1, round),
    Function::global("math.trunc", 1, trunc),
    Function::global("math.isInf", 1, is_inf),
    Function::global("math.isNaN", 1, is_nan),
    Function::global("math.isFinite", 1, is_finite),
    Function::global("math.abs", 1, abs),
    Function::global("math.sign", 1, sign),
    Function::global("math.sqrt", 1, sqrt),
    Function::global("math.bitAnd", 2, bit_and),
    Function::global("math.bitOr", 2, bit_or),
    Function::global("math.bitXor", 2, bit_xor),
    Function::global("math.bitNot", 1, bit_not),
    Function::global("math.bitShiftLeft", 2, bit_shift_left),
    Function::global("math.bitShiftRight", 2, bit_shift_right),
    Function {
        name: "math.@max",
        receiver: false,
        arity: None,
        f: max,
        owning: None,
        pure: true,
    },
    Function {
        name: "math.@min",
        receiver: false,
        arity: None,
        f: min,
        owning: None,
        pure: true,
    },
];

fn n(len: usize) -> u64 {
    len as u64
}

/// `n * n`, saturating: the charge of comparing every pair of `n` elements.
fn pairs(a: usize, b: usize) -> u64 {
    n(a).saturating_mul(n(b))
}

// ---------------------------------------------------------------------------
// Lists

fn slice<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::List(l), Value::Int(start), Value::Int(end)] = args else {
        return Err(Error::no_overload("slice", args));
    };
    let (start, end) = (*start, *end);
    if start < 0 || end < 0 {
        return Err(Error::function(
            "slice",
            format!("cannot slice({start}, {end}), negative indexes not supported"),
        ));
    }
    if start > end {
        return Err(Error::function(
            "slice",
            format!(
                "cannot slice({start}, {end}), start index must be less than or equal to end index"
            ),
        ));
    }
    if end > l.len() as i64 {
        return Err(Error::function(
            "slice",
            format!("cannot slice({start}, {end}), list is length {}", l.len()),
        ));
    }
    let (a, b) = (start as usize, end as usize);
    if a == 0 && b == l.len() {
        return Ok(Value::List(l.clone()));
    }
    ctx.charge(n(b - a))?;
    Ok(Value::list(l[a..b].to_vec()))
}

/// `flatten()` is `flatten(1)`: nested lists are spliced in, down to
/// `depth` levels; other elements are kept as they are.
fn flatten<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (list, depth) = match args {
        [Value::List(l)] => (l, 1),
        [Value::List(l), Value::Int(d)] => (l, *d),
        _ => return Err(Error::no_overload("flatten", args)),
    };
    if depth < 0 {
        return Err(Error::function("flatten", "level must be non-negative"));
    }
    ctx.charge(n(list.len()))?;
    let mut out = Vec::with_capacity(list.len());
    // An explicit stack of (list, next index, depth left) instead of
    // recursion.
    let mut stack: Vec<(&[Value<'r>], usize, i64)> = vec![(list.as_slice(), 0, depth)];
    while let Some((items, i, d)) = stack.pop() {
        let Some(item) = items.get(i) else { continue };
        stack.push((items, i + 1, d));
        match item {
            Value::List(inner) if d > 0 => {
                ctx.charge(n(inner.len()))?;
                stack.push((inner.as_slice(), 0, d - 1));
            }
            other => out.push(other.clone()),
        }
    }
    Ok(Value::list(out))
}

/// The elements without repeats (by CEL equality), each where it first
/// occurs.
fn distinct<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::List(l)] = args else {
        return Err(Error::no_overload("distinct", args));
    };
    ctx.charge(pairs(l.len(), l.len()))?;
    let mut out: Vec<Value<'r>> = Vec::new();
    for v in l.iter() {
        if !out.iter().any(|seen| equals(seen, v)) {
            out.push(v.clone());
        }
    }
    if out.len() == l.len() {
        return Ok(Value::List(l.clone()));
    }
    Ok(Value::list(out))
}

fn reverse<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::List(l)] = args else {
        return Err(Error::no_overload("reverse", args));
    };
    ctx.charge(n(l.len()))?;
    Ok(Value::list(l.iter().rev().cloned().collect()))
}

/// Checks that `keys` can be sorted (all of one orderable type, as cel-go
/// requires) and charges the sort.
fn check_sort_keys(
    ctx: &mut Ctx<'_>,
    function: &'static str,
    keys: &List<'_>,
) -> Result<(), Error> {
    let len = keys.len();
    ctx.charge(n(len))?;
    let Some(first) = keys.first() else {
        return Ok(());
    };
    if !matches!(
        first,
        Value::Int(_)
            | Value::Uint(_)
            | Value::Double(_)
            | Value::String(_)
            | Value::Bytes(_)
            | Value::Bool(_)
            | Value::Timestamp(_)
            | Value::Duration(_)
    ) {
        return Err(Error::function(
            function,
            "list elements must be comparable",
        ));
    }
    if keys
        .iter()
        .any(|k| std::mem::discriminant(k) != std::mem::discriminant(first))
    {
        return Err(Error::function(
            function,
            "list elements must have the same type",
        ));
    }
    let log = u64::from(usize::BITS - len.leading_zeros());
    ctx.charge(n(len).saturating_mul(log))
}

/// The order of two sort keys of the same type: [`compare`], with NaN
/// after every other double so that the order is total.
fn key_order(a: &Value<'_>, b: &Value<'_>) -> Ordering {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => x
            .partial_cmp(y)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan())),
        _ => compare(a, b).unwrap_or(Ordering::Equal),
    }
}

fn sort<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::List(l)] = args else {
        return Err(Error::no_overload("sort", args));
    };
    check_sort_keys(ctx, "sort", l)?;
    let mut out = l.to_vec();
    out.sort_by(key_order);
    Ok(Value::list(out))
}

/// `list.@sortByAssociatedKeys(keys)`: the list ordered by the key at the
/// same position (what `list.sortBy(x, key(x))` expands to); stable.
fn sort_by_keys<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::List(l), Value::List(keys)] = args else {
        return Err(Error::no_overload("@sortByAssociatedKeys", args));
    };
    if l.len() != keys.len() {
        return Err(Error::function(
            "sortBy",
            format!(
                "@sortByAssociatedKeys() expected a list of the same size as the associated keys list, but got {} and {} elements respectively.",
                l.len(),
                keys.len()
            ),
        ));
    }
    check_sort_keys(ctx, "sortBy", keys)?;
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&i, &j| key_order(&keys[i], &keys[j]));
    Ok(Value::list(
        order.into_iter().map(|i| l[i].clone()).collect(),
    ))
}

/// `lists.range(n)`: `[0, 1, ..., n-1]`; empty when `n <= 0`.
fn range<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::Int(count)] = args else {
        return Err(Error::no_overload("lists.range", args));
    };
    let count = (*count).max(0);
    ctx.charge(count as u64)?;
    Ok(Value::list((0..count).map(Value::Int).collect()))
}

// ---------------------------------------------------------------------------
// Sets

fn two_lists<'a, 'r>(
    name: &str,
    args: &'a [Value<'r>],
) -> Result<(&'a List<'r>, &'a List<'r>), Error> {
    match args {
        [Value::List(a), Value::List(b)] => Ok((a, b)),
        _ => Err(Error::no_overload(name, args)),
    }
}

/// Whether every element of `b` is in `a`.
fn all_in(a: &[Value<'_>], b: &[Value<'_>]) -> bool {
    b.iter().all(|x| a.iter().any(|y| equals(x, y)))
}

fn sets_contains<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (a, b) = two_lists("sets.contains", args)?;
    ctx.charge(pairs(a.len(), b.len()))?;
    Ok(Value::Bool(all_in(a, b)))
}

fn sets_equivalent<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (a, b) = two_lists("sets.equivalent", args)?;
    ctx.charge(pairs(a.len(), b.len()).saturating_mul(2))?;
    Ok(Value::Bool(all_in(a, b) && all_in(b, a)))
}

fn sets_intersects<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (a, b) = two_lists("sets.intersects", args)?;
    ctx.charge(pairs(a.len(), b.len()))?;
    Ok(Value::Bool(
        b.iter().any(|x| a.iter().any(|y| equals(x, y))),
    ))
}

// ---------------------------------------------------------------------------
// Math

fn double_fn<'r>(
    name: &str,
    args: &[Value<'r>],
    f: impl FnOnce(f64) -> Value<'r>,
) -> Result<Value<'r>, Error> {
    match args {
        [Value::Double(d)] => Ok(f(*d)),
        _ => Err(Error::no_overload(name, args)),
    }
}

fn ceil<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    double_fn("math.ceil", args, |d| Value::Double(d.ceil()))
}

fn floor<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    double_fn("math.floor", args, |d| Value::Double(d.floor()))
}

/// Half away from zero, as Go's `math.Round`.
fn round<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    double_fn("math.round", args, |d| Value::Double(d.round()))
}

fn trunc<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    double_fn("math.trunc", args, |d| Value::Double(d.trunc()))
}

fn is_inf<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    double_fn("math.isInf", args, |d| Value::Bool(d.is_infinite()))
}

fn is_nan<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    double_fn("math.isNaN", args, |d| Value::Bool(d.is_nan()))
}

fn is_finite<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    double_fn("math.isFinite", args, |d| Value::Bool(d.is_finite()))
}

fn abs<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match args {
        [Value::Int(i)] => i
            .checked_abs()
            .map(Value::Int)
            .ok_or_else(|| Error::overflow("math.abs")),
        [Value::Uint(u)] => Ok(Value::Uint(*u)),
        [Value::Double(d)] => Ok(Value::Double(d.abs())),
        _ => Err(Error::no_overload("math.abs", args)),
    }
}

/// -1, 0 or 1 of the argument's type; a NaN or a zero double is returned
/// as it is.
fn sign<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match args {
        [Value::Int(i)] => Ok(Value::Int(i.signum())),
        [Value::Uint(u)] => Ok(Value::Uint(u64::from(*u != 0))),
        [Value::Double(d)] => Ok(Value::Double(if *d > 0.0 {
            1.0
        } else if *d < 0.0 {
            -1.0
        } else {
            *d
        })),
        _ => Err(Error::no_overload("math.sign", args)),
    }
}

fn sqrt<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let d = match args {
        [Value::Int(i)] => *i as f64,
        [Value::Uint(u)] => *u as f64,
        [Value::Double(d)] => *d,
        _ => return Err(Error::no_overload("math.sqrt", args)),
    };
    Ok(Value::Double(d.sqrt()))
}

fn bitwise<'r>(
    name: &str,
    args: &[Value<'r>],
    int: fn(i64, i64) -> i64,
    uint: fn(u64, u64) -> u64,
) -> Result<Value<'r>, Error> {
    match args {
        [Value::Int(a), Value::Int(b)] => Ok(Value::Int(int(*a, *b))),
        [Value::Uint(a), Value::Uint(b)] => Ok(Value::Uint(uint(*a, *b))),
        _ => Err(Error::no_overload(name, args)),
    }
}

fn bit_and<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    bitwise("math.bitAnd", args, |a, b| a & b, |a, b| a & b)
}

fn bit_or<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    bitwise("math.bitOr", args, |a, b| a | b, |a, b| a | b)
}

fn bit_xor<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    bitwise("math.bitXor", args, |a, b| a ^ b, |a, b| a ^ b)
}

fn bit_not<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    match args {
        [Value::Int(a)] => Ok(Value::Int(!a)),
        [Value::Uint(a)] => Ok(Value::Uint(!a)),
        _ => Err(Error::no_overload("math.bitNot", args)),
    }
}

/// The shift of a `bitShift*` call: an error when negative, `None` (the
/// result is 0) from 64 on.
fn shift(name: &'static str, by: i64) -> Result<Option<u32>, Error> {
    if by < 0 {
        return Err(Error::function(
            name,
            format!("{name}() negative offset: {by}"),
        ));
    }
    Ok(u32::try_from(by).ok().filter(|s| *s < 64))
}

fn bit_shift_left<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const NAME: &str = "math.bitShiftLeft";
    match args {
        [Value::Int(a), Value::Int(by)] => Ok(Value::Int(
            shift(NAME, *by)?.map_or(0, |s| a.wrapping_shl(s)),
        )),
        [Value::Uint(a), Value::Int(by)] => Ok(Value::Uint(
            shift(NAME, *by)?.map_or(0, |s| a.wrapping_shl(s)),
        )),
        _ => Err(Error::no_overload(NAME, args)),
    }
}

/// A logical shift, also of an `int` (its bits as unsigned), as cel-go.
fn bit_shift_right<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const NAME: &str = "math.bitShiftRight";
    match args {
        [Value::Int(a), Value::Int(by)] => Ok(Value::Int(
            shift(NAME, *by)?.map_or(0, |s| ((*a as u64) >> s) as i64),
        )),
        [Value::Uint(a), Value::Int(by)] => {
            Ok(Value::Uint(shift(NAME, *by)?.map_or(0, |s| a >> s)))
        }
        _ => Err(Error::no_overload(NAME, args)),
    }
}

fn is_number(v: &Value<'_>) -> bool {
    matches!(v, Value::Int(_) | Value::Uint(_) | Value::Double(_))
}

/// `math.@max` / `math.@min` (`math.greatest` / `math.least`): of the
/// arguments, or of the elements of a single list argument. Numbers of
/// different types compare by value; the winner is returned unchanged (the
/// first of equals; a NaN never replaces the current winner).
fn extremum<'r>(
    ctx: &mut Ctx<'r>,
    name: &str,
    args: &[Value<'r>],
    replace_when: Ordering,
) -> Result<Value<'r>, Error> {
    let items: &[Value<'r>] = match args {
        [Value::List(l)] => {
            ctx.charge(n(l.len()))?;
            if l.is_empty() {
                return Err(Error::function(
                    name.to_owned(),
                    format!("{name}(list) argument must not be empty"),
                ));
            }
            l
        }
        [] => return Err(Error::no_overload(name, args)),
        _ => {
            ctx.charge(n(args.len()))?;
            args
        }
    };
    if !items.iter().all(is_number) {
        return Err(Error::no_overload(name, items));
    }
    best_of(items, replace_when, |a, b| Ok(compare_numbers(a, b))).cloned()
}

/// The element of `items` (not empty) that a later one replaces only when
/// `order(best, next)` is `replace_when`: the first of equals.
fn best_of<'a, 'r>(
    items: &'a [Value<'r>],
    replace_when: Ordering,
    mut order: impl FnMut(&Value<'r>, &Value<'r>) -> Result<Option<Ordering>, Error>,
) -> Result<&'a Value<'r>, Error> {
    let mut best = &items[0];
    for next in &items[1..] {
        if order(best, next)? == Some(replace_when) {
            best = next;
        }
    }
    Ok(best)
}

fn max<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    extremum(ctx, "math.@max", args, Ordering::Less)
}

fn min<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    extremum(ctx, "math.@min", args, Ordering::Greater)
}

// ---------------------------------------------------------------------------
// The Kubernetes lists library: `isSorted`, `sum`, `min`, `max`, `indexOf`,
// `lastIndexOf`, `includes`.

/// The declarations the type checker reads for the Kubernetes lists
/// library (the others of this file are in `std.decls`).
pub const KUBERNETES_DECLS: &str = "
(list(int)).isSorted() -> bool
(list(uint)).isSorted() -> bool
(list(double)).isSorted() -> bool
(list(bool)).isSorted() -> bool
(list(duration)).isSorted() -> bool
(list(timestamp)).isSorted() -> bool
(list(string)).isSorted() -> bool
(list(bytes)).isSorted() -> bool
(list(int)).sum() -> int
(list(uint)).sum() -> uint
(list(double)).sum() -> double
(list(duration)).sum() -> duration
(list(int)).min() -> int
(list(uint)).min() -> uint
(list(double)).min() -> double
(list(bool)).min() -> bool
(list(duration)).min() -> duration
(list(timestamp)).min() -> timestamp
(list(string)).min() -> string
(list(bytes)).min() -> bytes
(list(int)).max() -> int
(list(uint)).max() -> uint
(list(double)).max() -> double
(list(bool)).max() -> bool
(list(duration)).max() -> duration
(list(timestamp)).max() -> timestamp
(list(string)).max() -> string
(list(bytes)).max() -> bytes
(list(A)).indexOf(A) -> int
(list(A)).lastIndexOf(A) -> int
(dyn).includes(dyn) -> bool
";

/// The list a method is called on, charged a unit per element before it
/// is walked.
fn walked<'a, 'r>(
    ctx: &mut Ctx<'r>,
    name: &str,
    args: &'a [Value<'r>],
) -> Result<&'a List<'r>, Error> {
    match args.first() {
        Some(Value::List(l)) => {
            ctx.charge(l.len() as u64)?;
            Ok(l)
        }
        _ => Err(Error::no_overload(name, args)),
    }
}

/// Whether `v` is of a kind with an order (what `min`, `max` and
/// `isSorted` take).
fn ordered_kind(v: &Value<'_>) -> bool {
    matches!(
        v,
        Value::Int(_)
            | Value::Uint(_)
            | Value::Double(_)
            | Value::String(_)
            | Value::Bytes(_)
            | Value::Bool(_)
            | Value::Timestamp(_)
            | Value::Duration(_)
    )
}

/// The order of two elements; an error when they cannot be ordered (a
/// list mixing strings and numbers, a list of maps). A NaN orders with
/// nothing: `None`.
fn element_order(name: &str, a: &Value<'_>, b: &Value<'_>) -> Result<Option<Ordering>, Error> {
    if !ordered_kind(a) || !crate::cel::eval::value::orderable(a, b) {
        let bad = if ordered_kind(a) { b } else { a };
        return Err(Error::new(
            crate::cel::eval::ErrorKind::NoSuchOverload,
            format!(
                "no such overload: {name}() of a list of {} and {} elements",
                a.type_name(),
                bad.type_name()
            ),
        ));
    }
    Ok(compare(a, b))
}

/// `l.isSorted()`: whether no element is greater than the next one.
fn is_sorted<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let l = walked(ctx, "isSorted", args)?;
    if let [only] = l.as_slice() {
        if !ordered_kind(only) {
            return Err(Error::no_overload("isSorted", std::slice::from_ref(only)));
        }
    }
    for pair in l.windows(2) {
        if element_order("isSorted", &pair[0], &pair[1])? == Some(Ordering::Greater) {
            return Ok(Value::Bool(false));
        }
    }
    Ok(Value::Bool(true))
}

/// `l.sum()`: the sum of a list of `int`, `uint`, `double` or `duration`
/// (all of one type); `0` for an empty list. Overflow is an error.
fn sum<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let l = walked(ctx, "sum", args)?;
    let Some(first) = l.first() else {
        return Ok(Value::Int(0));
    };
    let mut acc = first.clone();
    for next in &l[1..] {
        acc = match (&acc, next) {
            (Value::Int(a), Value::Int(b)) => a
                .checked_add(*b)
                .map(Value::Int)
                .ok_or_else(|| Error::overflow("sum"))?,
            (Value::Uint(a), Value::Uint(b)) => a
                .checked_add(*b)
                .map(Value::Uint)
                .ok_or_else(|| Error::overflow("sum"))?,
            (Value::Double(a), Value::Double(b)) => Value::Double(a + b),
            (Value::Duration(a), Value::Duration(b)) => match a.checked_add(b) {
                Some(d) if d.num_nanoseconds().is_some() => Value::Duration(d),
                _ => {
                    return Err(Error::new(
                        crate::cel::eval::ErrorKind::Overflow,
                        "sum: duration out of range",
                    ))
                }
            },
            _ => {
                return Err(Error::new(
                    crate::cel::eval::ErrorKind::NoSuchOverload,
                    format!(
                        "no such overload: sum() of a list of {} and {} elements",
                        acc.type_name(),
                        next.type_name()
                    ),
                ))
            }
        };
    }
    match acc {
        Value::Int(_) | Value::Uint(_) | Value::Double(_) | Value::Duration(_) => Ok(acc),
        other => Err(Error::new(
            crate::cel::eval::ErrorKind::NoSuchOverload,
            format!(
                "no such overload: sum() of a list of {} elements",
                other.type_name()
            ),
        )),
    }
}

/// The least (`Ordering::Greater`: replace when the kept one is greater)
/// or greatest element; the first of equal ones.
fn extreme<'r>(
    ctx: &mut Ctx<'r>,
    name: &'static str,
    args: &[Value<'r>],
    replace_when: Ordering,
) -> Result<Value<'r>, Error> {
    let l = walked(ctx, name, args)?;
    let Some(first) = l.first() else {
        return Err(Error::function(
            name,
            format!("{name} called on empty list"),
        ));
    };
    if !ordered_kind(first) {
        return Err(Error::no_overload(name, std::slice::from_ref(first)));
    }
    best_of(l, replace_when, |a, b| element_order(name, a, b)).cloned()
}

fn list_min<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    extreme(ctx, "min", args, Ordering::Greater)
}

fn list_max<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    extreme(ctx, "max", args, Ordering::Less)
}

/// `l.indexOf(x)`: the index of the first element equal to `x`, or -1.
/// (`indexOf` of a string is the strings extension's.)
fn index_of<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let l = walked(ctx, "indexOf", args)?;
    let x = &args[1];
    Ok(Value::Int(
        l.iter().position(|e| equals(e, x)).map_or(-1, |i| i as i64),
    ))
}

/// `l.lastIndexOf(x)`: the index of the last element equal to `x`, or -1.
fn last_index_of<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let l = walked(ctx, "lastIndexOf", args)?;
    let x = &args[1];
    Ok(Value::Int(
        l.iter()
            .rposition(|e| equals(e, x))
            .map_or(-1, |i| i as i64),
    ))
}

/// `l.includes(x)`: whether an element of the list equals `x`; on a value
/// that is not a list, whether it equals `x`.
fn includes<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [target, x] = args else {
        return Err(Error::no_overload("includes", args));
    };
    Ok(Value::Bool(match target {
        Value::List(l) => {
            ctx.charge(l.len() as u64)?;
            l.iter().any(|e| equals(e, x))
        }
        other => equals(other, x),
    }))
}

#[cfg(test)]
mod kubernetes_tests {
    use crate::cel::eval::lib::call;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::{Ctx, Error, ErrorKind, Meter, Value};
    use chrono::{TimeDelta, TimeZone, Utc};

    fn l(v: Vec<Value<'static>>) -> Value<'static> {
        Value::list(v)
    }
    fn ints(v: &[i64]) -> Value<'static> {
        l(v.iter().copied().map(Value::Int).collect())
    }
    fn strs(v: &[&str]) -> Value<'static> {
        l(v.iter().map(|s| Value::string(*s)).collect())
    }

    #[track_caller]
    fn is(got: Result<Value<'_>, Error>, want: Value<'_>) {
        let got = got.unwrap_or_else(|e| panic!("error {}", e.message));
        assert!(
            equals(&got, &want) && got.type_name() == want.type_name(),
            "{got:?} is not {want:?}"
        );
    }

    #[test]
    fn is_sorted() {
        is(
            method("isSorted", &[ints(&[1, 2, 2, 3])]),
            Value::Bool(true),
        );
        is(method("isSorted", &[ints(&[1, 3, 2])]), Value::Bool(false));
        is(method("isSorted", &[ints(&[])]), Value::Bool(true));
        is(
            method("isSorted", &[strs(&["a", "b", "c"])]),
            Value::Bool(true),
        );
        is(method("isSorted", &[strs(&["b", "a"])]), Value::Bool(false));
        let mixed = l(vec![Value::Int(1), Value::Uint(2), Value::Double(2.5)]);
        is(method("isSorted", &[mixed]), Value::Bool(true));
        let durations = l(vec![
            Value::Duration(TimeDelta::seconds(1)),
            Value::Duration(TimeDelta::seconds(2)),
        ]);
        is(method("isSorted", &[durations]), Value::Bool(true));
        let e = method("isSorted", &[l(vec![Value::Int(1), Value::string("a")])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = method("isSorted", &[l(vec![l(vec![])])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn sum() {
        is(method("sum", &[ints(&[1, 2, 3])]), Value::Int(6));
        is(method("sum", &[ints(&[])]), Value::Int(0));
        is(
            method("sum", &[l(vec![Value::Uint(1), Value::Uint(2)])]),
            Value::Uint(3),
        );
        is(
            method("sum", &[l(vec![Value::Double(0.5), Value::Double(1.0)])]),
            Value::Double(1.5),
        );
        is(
            method(
                "sum",
                &[l(vec![
                    Value::Duration(TimeDelta::seconds(1)),
                    Value::Duration(TimeDelta::milliseconds(500)),
                ])],
            ),
            Value::Duration(TimeDelta::milliseconds(1500)),
        );
        let e = method("sum", &[ints(&[i64::MAX, 1])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overflow);
        let e = method("sum", &[l(vec![Value::Uint(u64::MAX), Value::Uint(1)])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overflow);
        let e = method("sum", &[l(vec![Value::Int(1), Value::Double(1.0)])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = method("sum", &[strs(&["a"])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn min_and_max() {
        is(method("min", &[ints(&[3, 1, 2])]), Value::Int(1));
        is(method("max", &[ints(&[3, 1, 2])]), Value::Int(3));
        is(method("min", &[strs(&["b", "a", "c"])]), Value::string("a"));
        is(method("max", &[strs(&["b", "a", "c"])]), Value::string("c"));
        is(
            method("max", &[l(vec![Value::Bool(false), Value::Bool(true)])]),
            Value::Bool(true),
        );
        let t = |s| Value::Timestamp(Utc.timestamp_opt(s, 0).unwrap());
        is(method("min", &[l(vec![t(20), t(10), t(30)])]), t(10));
        is(
            method("max", &[l(vec![Value::bytes(*b"a"), Value::bytes(*b"b")])]),
            Value::bytes(*b"b"),
        );
        // Numbers of different types compare by value; the first of equal
        // ones is kept.
        is(
            method(
                "min",
                &[l(vec![Value::Uint(1), Value::Int(1), Value::Double(2.0)])],
            ),
            Value::Uint(1),
        );
        let e = method("min", &[ints(&[])]).unwrap_err();
        assert_eq!(e.message, "min called on empty list");
        let e = method("max", &[ints(&[])]).unwrap_err();
        assert_eq!(e.message, "max called on empty list");
        let e = method("max", &[l(vec![Value::string("a"), Value::Int(1)])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = method("max", &[l(vec![Value::Null])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn index_of_and_includes() {
        let list = ints(&[1, 2, 3, 2]);
        is(
            method("indexOf", &[list.clone(), Value::Int(2)]),
            Value::Int(1),
        );
        is(
            method("lastIndexOf", &[list.clone(), Value::Int(2)]),
            Value::Int(3),
        );
        is(
            method("indexOf", &[list.clone(), Value::Int(9)]),
            Value::Int(-1),
        );
        is(
            method("lastIndexOf", &[list.clone(), Value::Int(9)]),
            Value::Int(-1),
        );
        is(
            method("indexOf", &[list.clone(), Value::Double(3.0)]),
            Value::Int(2),
        );
        is(
            method("indexOf", &[ints(&[]), Value::Int(1)]),
            Value::Int(-1),
        );
        // A string's indexOf is still the strings extension's.
        is(
            method("indexOf", &[Value::string("abc"), Value::string("c")]),
            Value::Int(2),
        );
        let e = method("indexOf", &[Value::Int(1), Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        is(
            method("includes", &[list.clone(), Value::Int(3)]),
            Value::Bool(true),
        );
        is(
            method("includes", &[list, Value::Int(7)]),
            Value::Bool(false),
        );
        is(
            method("includes", &[Value::Int(7), Value::Int(7)]),
            Value::Bool(true),
        );
    }

    #[test]
    fn elements_are_charged_before_the_walk() {
        let big = ints(&vec![1; 10_000]);
        for name in ["isSorted", "sum", "min", "max"] {
            let mut ctx = Ctx::new(None, Meter::new(1_000));
            let e = call(&mut ctx, name, true, std::slice::from_ref(&big)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::CostExceeded, "{name}");
        }
        for name in ["indexOf", "lastIndexOf", "includes"] {
            let mut ctx = Ctx::new(None, Meter::new(1_000));
            let e = call(&mut ctx, name, true, &[big.clone(), Value::Int(2)]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::CostExceeded, "{name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cel::eval::lib::call as call_in;
    use crate::cel::eval::lib::test_global as global;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::{Ctx, Error, ErrorKind, Meter, Value};
    use std::time::Instant;

    fn i(v: i64) -> Value<'static> {
        Value::Int(v)
    }
    fn u(v: u64) -> Value<'static> {
        Value::Uint(v)
    }
    fn d(v: f64) -> Value<'static> {
        Value::Double(v)
    }
    fn ints(v: &[i64]) -> Value<'static> {
        Value::list(v.iter().copied().map(Value::Int).collect())
    }
    fn list<'r>(v: Vec<Value<'r>>) -> Value<'r> {
        Value::list(v)
    }

    /// Asserts `got` is `want` by CEL equality and of the same types.
    #[track_caller]
    fn same(got: Result<Value<'_>, Error>, want: Value<'_>) {
        let got = got.unwrap_or_else(|e| panic!("error {}: {e:?}", e.message));
        assert!(
            equals(&got, &want) && format!("{got:?}") == format!("{want:?}"),
            "{got:?} != {want:?}"
        );
    }

    #[track_caller]
    fn err(r: Result<Value<'_>, Error>) -> Error {
        match r {
            Err(e) => e,
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    #[test]
    fn slice_reverse_range() {
        let l = ints(&[1, 2, 3, 4]);
        same(method("slice", &[l.clone(), i(1), i(3)]), ints(&[2, 3]));
        same(
            method("slice", &[l.clone(), i(0), i(4)]),
            ints(&[1, 2, 3, 4]),
        );
        same(method("slice", &[l.clone(), i(4), i(4)]), ints(&[]));
        for (a, b, msg) in [
            (-1, 2, "negative indexes"),
            (3, 2, "start index must be less than or equal"),
            (0, 5, "list is length 4"),
        ] {
            let e = err(method("slice", &[l.clone(), i(a), i(b)]));
            assert!(e.message.contains(msg), "{}", e.message);
        }
        same(
            method("reverse", std::slice::from_ref(&l)),
            ints(&[4, 3, 2, 1]),
        );
        same(global("lists.range", &[i(4)]), ints(&[0, 1, 2, 3]));
        same(global("lists.range", &[i(0)]), ints(&[]));
        same(global("lists.range", &[i(-3)]), ints(&[]));
        let e = err(method("reverse", &[i(1)]));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn flatten_by_depth() {
        // [1, [2, [3, [4]]], []]
        let nested = list(vec![
            i(1),
            list(vec![i(2), list(vec![i(3), ints(&[4])])]),
            ints(&[]),
        ]);
        same(
            method("flatten", std::slice::from_ref(&nested)),
            list(vec![i(1), i(2), list(vec![i(3), ints(&[4])])]),
        );
        same(method("flatten", &[nested.clone(), i(0)]), nested.clone());
        same(
            method("flatten", &[nested.clone(), i(2)]),
            list(vec![i(1), i(2), i(3), ints(&[4])]),
        );
        same(
            method("flatten", &[nested.clone(), i(100)]),
            ints(&[1, 2, 3, 4]),
        );
        let e = err(method("flatten", &[nested, i(-1)]));
        assert_eq!(e.message, "level must be non-negative");
    }

    #[test]
    fn distinct_keeps_first_occurrences() {
        same(
            method("distinct", &[ints(&[1, 2, 2, 3, 1])]),
            ints(&[1, 2, 3]),
        );
        same(
            method("distinct", &[list(vec![i(1), u(1), d(1.0), d(2.0), i(2)])]),
            list(vec![i(1), d(2.0)]),
        );
        same(
            method(
                "distinct",
                &[list(vec![ints(&[1]), ints(&[1]), Value::str("a")])],
            ),
            list(vec![ints(&[1]), Value::str("a")]),
        );
        same(method("distinct", &[ints(&[])]), ints(&[]));
    }

    #[test]
    fn distinct_of_a_large_list_is_refused_by_the_budget() {
        let big = list((0..20_000).map(Value::Int).collect());
        let mut ctx = Ctx::new(None, Meter::new(1_000_000));
        let started = Instant::now();
        let e = err(call_in(
            &mut ctx,
            "distinct",
            true,
            std::slice::from_ref(&big),
        ));
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        assert!(
            started.elapsed().as_millis() < 100,
            "{:?}",
            started.elapsed()
        );
        let mut ctx = Ctx::new(None, Meter::new(1_000_000));
        let e = err(call_in(
            &mut ctx,
            "sets.intersects",
            false,
            &[big.clone(), big],
        ));
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        let mut ctx = Ctx::new(None, Meter::new(1_000));
        let e = err(call_in(&mut ctx, "lists.range", false, &[i(1 << 40)]));
        assert_eq!(e.kind, ErrorKind::CostExceeded);
    }

    #[test]
    fn sort_one_orderable_type() {
        same(method("sort", &[ints(&[3, 1, 2])]), ints(&[1, 2, 3]));
        same(
            method("sort", &[list(vec![Value::str("b"), Value::str("a")])]),
            list(vec![Value::str("a"), Value::str("b")]),
        );
        same(
            method("sort", &[list(vec![d(2.5), d(f64::NEG_INFINITY), d(-1.0)])]),
            list(vec![d(f64::NEG_INFINITY), d(-1.0), d(2.5)]),
        );
        same(method("sort", &[ints(&[])]), ints(&[]));
        let e = err(method("sort", &[list(vec![i(1), d(2.0)])]));
        assert_eq!(e.message, "list elements must have the same type");
        let e = err(method("sort", &[list(vec![ints(&[1]), ints(&[0])])]));
        assert_eq!(e.message, "list elements must be comparable");
        // NaN does not break the sort.
        let got = method("sort", &[list(vec![d(f64::NAN), d(1.0), d(0.0)])]).unwrap();
        let Value::List(got) = got else { panic!() };
        assert!(equals(&got[0], &d(0.0)) && equals(&got[1], &d(1.0)));
    }

    #[test]
    fn sort_by_associated_keys_is_stable() {
        let items = list(vec![
            Value::str("c"),
            Value::str("a1"),
            Value::str("b"),
            Value::str("a2"),
        ]);
        same(
            method(
                "@sortByAssociatedKeys",
                &[items.clone(), ints(&[3, 1, 2, 1])],
            ),
            list(vec![
                Value::str("a1"),
                Value::str("a2"),
                Value::str("b"),
                Value::str("c"),
            ]),
        );
        let e = err(method(
            "@sortByAssociatedKeys",
            &[items.clone(), ints(&[1])],
        ));
        assert!(e.message.contains("same size"), "{}", e.message);
        let e = err(method(
            "@sortByAssociatedKeys",
            &[items, list(vec![i(1), u(2), i(3), i(4)])],
        ));
        assert_eq!(e.message, "list elements must have the same type");
    }

    #[test]
    fn sets_by_cel_equality() {
        let a = list(vec![i(1), i(2), ints(&[3])]);
        same(
            global("sets.contains", &[a.clone(), list(vec![u(1), d(2.0)])]),
            Value::Bool(true),
        );
        same(
            global("sets.contains", &[a.clone(), ints(&[])]),
            Value::Bool(true),
        );
        same(
            global("sets.contains", &[a.clone(), ints(&[4])]),
            Value::Bool(false),
        );
        same(
            global("sets.contains", &[a.clone(), list(vec![ints(&[3])])]),
            Value::Bool(true),
        );
        same(
            global(
                "sets.equivalent",
                &[ints(&[1, 2, 2]), list(vec![u(2), d(1.0)])],
            ),
            Value::Bool(true),
        );
        same(
            global("sets.equivalent", &[ints(&[1, 2]), ints(&[1])]),
            Value::Bool(false),
        );
        same(
            global("sets.intersects", &[a.clone(), ints(&[5, 2])]),
            Value::Bool(true),
        );
        same(
            global("sets.intersects", &[a, ints(&[])]),
            Value::Bool(false),
        );
        let e = err(global("sets.contains", &[ints(&[1]), i(1)]));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn math_rounding_and_predicates() {
        same(global("math.ceil", &[d(-1.2)]), d(-1.0));
        same(global("math.floor", &[d(-1.2)]), d(-2.0));
        same(global("math.round", &[d(-1.5)]), d(-2.0));
        same(global("math.round", &[d(1.5)]), d(2.0));
        same(global("math.round", &[d(1.4)]), d(1.0));
        same(global("math.trunc", &[d(-1.7)]), d(-1.0));
        same(global("math.isNaN", &[d(f64::NAN)]), Value::Bool(true));
        same(
            global("math.isInf", &[d(f64::NEG_INFINITY)]),
            Value::Bool(true),
        );
        same(global("math.isFinite", &[d(f64::NAN)]), Value::Bool(false));
        for name in [
            "math.ceil",
            "math.floor",
            "math.round",
            "math.trunc",
            "math.isNaN",
        ] {
            assert_eq!(
                err(global(name, &[i(1)])).kind,
                ErrorKind::NoSuchOverload,
                "{name}"
            );
        }
        let Ok(Value::Double(r)) = global("math.round", &[d(f64::NAN)]) else {
            panic!()
        };
        assert!(r.is_nan());
    }

    #[test]
    fn math_abs_sign_sqrt() {
        same(global("math.abs", &[i(-11)]), i(11));
        same(global("math.abs", &[u(1)]), u(1));
        same(global("math.abs", &[d(-11.5)]), d(11.5));
        assert_eq!(
            err(global("math.abs", &[i(i64::MIN)])).kind,
            ErrorKind::Overflow
        );
        same(global("math.sign", &[i(-11)]), i(-1));
        same(global("math.sign", &[i(0)]), i(0));
        same(global("math.sign", &[u(100)]), u(1));
        same(global("math.sign", &[u(0)]), u(0));
        same(global("math.sign", &[d(-32.0)]), d(-1.0));
        same(global("math.sign", &[d(0.0)]), d(0.0));
        assert_eq!(
            err(global("math.sign", &[Value::Bool(true)])).kind,
            ErrorKind::NoSuchOverload
        );
        same(global("math.sqrt", &[d(2.25)]), d(1.5));
        same(global("math.sqrt", &[i(16)]), d(4.0));
        same(global("math.sqrt", &[u(81)]), d(9.0));
        let Ok(Value::Double(r)) = global("math.sqrt", &[i(-1)]) else {
            panic!()
        };
        assert!(r.is_nan());
    }

    #[test]
    fn math_bits() {
        same(global("math.bitAnd", &[i(1), i(-1)]), i(1));
        same(global("math.bitAnd", &[u(1), u(3)]), u(1));
        same(global("math.bitOr", &[i(4), i(-2)]), i(-2));
        same(global("math.bitXor", &[i(4), i(-2)]), i(-6));
        same(global("math.bitNot", &[i(0)]), i(-1));
        same(global("math.bitNot", &[u(1)]), u(u64::MAX - 1));
        assert_eq!(
            err(global("math.bitAnd", &[u(2), i(1)])).kind,
            ErrorKind::NoSuchOverload
        );
        same(global("math.bitShiftLeft", &[i(1), i(2)]), i(4));
        same(global("math.bitShiftLeft", &[i(1), i(63)]), i(i64::MIN));
        same(global("math.bitShiftLeft", &[i(-1), i(200)]), i(0));
        same(global("math.bitShiftLeft", &[u(1), i(64)]), u(0));
        same(
            global("math.bitShiftRight", &[i(-1024), i(3)]),
            i(2305843009213693824),
        );
        same(global("math.bitShiftRight", &[i(-1024), i(64)]), i(0));
        same(global("math.bitShiftRight", &[u(1024), i(2)]), u(256));
        for name in ["math.bitShiftLeft", "math.bitShiftRight"] {
            let e = err(global(name, &[u(1), i(-1)]));
            assert!(e.message.contains("negative offset"), "{}", e.message);
        }
        assert_eq!(
            err(global("math.bitShiftLeft", &[d(4.3), i(1)])).kind,
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn greatest_and_least() {
        same(global("math.@max", &[i(-5)]), i(-5));
        same(global("math.@max", &[i(1), d(1.0)]), i(1));
        same(global("math.@max", &[i(-7), i(5)]), i(5));
        same(global("math.@max", &[u(5), i(-7)]), u(5));
        same(
            global("math.@max", &[i(1), d(1.797693e308)]),
            d(1.797693e308),
        );
        same(global("math.@max", &[u(1), u(u64::MAX)]), u(u64::MAX));
        same(global("math.@max", &[i(i64::MIN), i(1)]), i(1));
        same(
            global(
                "math.@max",
                &[list(vec![d(5.4), i(10), u(3), d(-5.0), d(3.5)])],
            ),
            i(10),
        );
        same(global("math.@min", &[i(1), u(1)]), i(1));
        same(global("math.@min", &[u(1), d(1.0), d(1.0)]), u(1));
        same(
            global(
                "math.@min",
                &[d(5.4), i(10), u(3), d(-5.0), d(1.797693e308)],
            ),
            d(-5.0),
        );
        same(
            global(
                "math.@min",
                &[list(vec![d(5.4), u(10), u(3), u(1), d(3.5)])],
            ),
            u(1),
        );
        let e = err(global("math.@max", &[ints(&[])]));
        assert!(e.message.contains("must not be empty"), "{}", e.message);
        let e = err(global("math.@min", &[i(1), Value::str("a")]));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = err(global("math.@max", &[list(vec![i(1), Value::str("a")])]));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        // A NaN never wins.
        same(global("math.@max", &[i(1), d(f64::NAN), i(2)]), i(2));
    }
}
