//! The CEL standard library: arithmetic, `size`, the type conversions,
//! the string predicates and `matches`, the timestamp and duration
//! accessors, and the optional values' constructors and accessors.
//!
//! Semantics are cel-go's:
//! - `int` and `uint` arithmetic is checked (an overflow is an error, as
//!   are division and modulus by zero); `double` is IEEE 754; operands of
//!   different numeric types have no overload.
//! - Timestamps lie within 0001-01-01T00:00:00Z and
//!   9999-12-31T23:59:59.999999999Z; durations within what an `i64` counts
//!   in nanoseconds (about ±292 years, cel-go's `time.Duration`). A result
//!   outside is an error of kind `Overflow`.
//! - `string(double)` writes Go's `%g` (`1`, `1.5`, `1e+100`, `-0.0045`).
//! - `duration(string)` reads Go's `time.ParseDuration` syntax.
//! - The duration accessors return the whole duration in that unit,
//!   truncated (`duration('3730s').getMinutes()` is 62).

use crate::cel::eval::value::{format_duration, Bin};
use crate::cel::eval::{Ctx, Error, ErrorData, ErrorKind, Function, Str, Value};
use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, TimeDelta, Timelike, Utc};
use std::sync::Arc;

type R<'r> = Result<Value<'r>, Error>;

pub const FUNCTIONS: &[Function] = &[
    // Arithmetic.
    Function::global("_+_", 2, add),
    Function::global("_-_", 2, sub),
    Function::global("_*_", 2, mul),
    Function::global("_/_", 2, div),
    Function::global("_%_", 2, rem),
    Function::global("-_", 1, neg),
    // Sizes.
    Function::global("size", 1, size),
    Function::method("size", 0, size),
    // Conversions.
    Function::global("int", 1, to_int),
    Function::global("uint", 1, to_uint),
    Function::global("double", 1, to_double),
    Function::global("string", 1, to_string),
    Function::global("bytes", 1, to_bytes),
    Function::global("bool", 1, to_bool),
    Function::global("timestamp", 1, to_timestamp),
    Function::global("duration", 1, to_duration),
    Function::global("dyn", 1, dyn_),
    Function::global("type", 1, type_),
    // Strings.
    Function::method("contains", 1, contains),
    Function::method("startsWith", 1, starts_with),
    Function::method("endsWith", 1, ends_with),
    // The compiled patterns are cached per thread, which changes nothing
    // of the result: the call is pure.
    Function::method("matches", 1, matches),
    Function::global("matches", 2, matches),
    // Timestamps (in UTC, or in the time zone of the argument) and
    // durations.
    Function::method("getFullYear", 0, get_full_year),
    Function::method("getFullYear", 1, get_full_year),
    Function::method("getMonth", 0, get_month),
    Function::method("getMonth", 1, get_month),
    Function::method("getDayOfYear", 0, get_day_of_year),
    Function::method("getDayOfYear", 1, get_day_of_year),
    Function::method("getDayOfMonth", 0, get_day_of_month),
    Function::method("getDayOfMonth", 1, get_day_of_month),
    Function::method("getDate", 0, get_date),
    Function::method("getDate", 1, get_date),
    Function::method("getDayOfWeek", 0, get_day_of_week),
    Function::method("getDayOfWeek", 1, get_day_of_week),
    Function::method("getHours", 0, get_hours),
    Function::method("getHours", 1, get_hours),
    Function::method("getMinutes", 0, get_minutes),
    Function::method("getMinutes", 1, get_minutes),
    Function::method("getSeconds", 0, get_seconds),
    Function::method("getSeconds", 1, get_seconds),
    Function::method("getMilliseconds", 0, get_milliseconds),
    Function::method("getMilliseconds", 1, get_milliseconds),
    // Optional values (`or` and `orValue` are lazy: the planner's).
    Function::global("optional.of", 1, optional_of),
    Function::global("optional.none", 0, optional_none),
    Function::global("optional.ofNonZeroValue", 1, optional_of_non_zero_value),
    Function::method("value", 0, optional_value),
    Function::method("hasValue", 0, optional_has_value),
];

// ---------------------------------------------------------------------------
// Ranges of timestamps and durations.

/// 0001-01-01T00:00:00Z in Unix seconds.
const MIN_UNIX_SECONDS: i64 = -62_135_596_800;
/// 9999-12-31T23:59:59Z in Unix seconds.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// An error of a result out of CEL's range of timestamps or durations, or
/// of a conversion's target type.
fn range_error(function: &'static str, message: impl Into<String>) -> Error {
    ErrorData {
        kind: ErrorKind::Overflow,
        function: Some(function.into()),
        message: message.into(),
    }
    .into()
}

fn checked_timestamp(function: &'static str, t: DateTime<Utc>) -> R<'static> {
    if (MIN_UNIX_SECONDS..=MAX_UNIX_SECONDS).contains(&t.timestamp()) {
        Ok(Value::Timestamp(t))
    } else {
        Err(range_error(function, "timestamp out of range"))
    }
}

fn checked_duration(function: &'static str, d: Option<TimeDelta>) -> R<'static> {
    match d {
        Some(d) if d.num_nanoseconds().is_some() => Ok(Value::Duration(d)),
        _ => Err(range_error(function, "duration out of range")),
    }
}

/// The duration in nanoseconds, exactly (a duration read from a request
/// may lie beyond the `i64` nanoseconds of one CEL computes).
fn total_nanos(d: TimeDelta) -> i128 {
    i128::from(d.num_seconds()) * 1_000_000_000 + i128::from(d.subsec_nanos())
}

// ---------------------------------------------------------------------------
// Arithmetic.

fn add<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    use Value as V;
    let [a, b] = args else {
        return Err(Error::no_overload("_+_", args));
    };
    match (a, b) {
        (V::Int(x), V::Int(y)) => x
            .checked_add(*y)
            .map(V::Int)
            .ok_or_else(|| Error::overflow("_+_")),
        (V::Uint(x), V::Uint(y)) => x
            .checked_add(*y)
            .map(V::Uint)
            .ok_or_else(|| Error::overflow("_+_")),
        (V::Double(x), V::Double(y)) => Ok(V::Double(x + y)),
        (V::String(x), V::String(y)) => {
            if y.is_empty() {
                return Ok(a.clone());
            }
            if x.is_empty() {
                return Ok(b.clone());
            }
            ctx.charge_bytes(x.len() + y.len())?;
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(x);
            s.push_str(y);
            Ok(V::string(s))
        }
        (V::Bytes(x), V::Bytes(y)) => {
            if y.is_empty() {
                return Ok(a.clone());
            }
            if x.is_empty() {
                return Ok(b.clone());
            }
            ctx.charge_bytes(x.len() + y.len())?;
            let mut v = Vec::with_capacity(x.len() + y.len());
            v.extend_from_slice(x);
            v.extend_from_slice(y);
            Ok(V::bytes(v))
        }
        (V::List(x), V::List(y)) => {
            if y.is_empty() {
                return Ok(a.clone());
            }
            if x.is_empty() {
                return Ok(b.clone());
            }
            ctx.charge((x.len() + y.len()) as u64)?;
            let mut v = Vec::with_capacity(x.len() + y.len());
            v.extend(x.iter().cloned());
            v.extend(y.iter().cloned());
            Ok(V::list(v))
        }
        (V::Timestamp(t), V::Duration(d)) | (V::Duration(d), V::Timestamp(t)) => {
            match t.checked_add_signed(*d) {
                Some(t) => checked_timestamp("_+_", t),
                None => Err(range_error("_+_", "timestamp out of range")),
            }
        }
        (V::Duration(x), V::Duration(y)) => checked_duration("_+_", x.checked_add(y)),
        _ => Err(Error::no_overload("_+_", args)),
    }
}

fn sub<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    use Value as V;
    let [a, b] = args else {
        return Err(Error::no_overload("_-_", args));
    };
    match (a, b) {
        (V::Int(x), V::Int(y)) => x
            .checked_sub(*y)
            .map(V::Int)
            .ok_or_else(|| Error::overflow("_-_")),
        (V::Uint(x), V::Uint(y)) => x
            .checked_sub(*y)
            .map(V::Uint)
            .ok_or_else(|| Error::overflow("_-_")),
        (V::Double(x), V::Double(y)) => Ok(V::Double(x - y)),
        (V::Timestamp(x), V::Timestamp(y)) => {
            checked_duration("_-_", Some(x.signed_duration_since(*y)))
        }
        (V::Timestamp(t), V::Duration(d)) => match t.checked_sub_signed(*d) {
            Some(t) => checked_timestamp("_-_", t),
            None => Err(range_error("_-_", "timestamp out of range")),
        },
        (V::Duration(x), V::Duration(y)) => checked_duration("_-_", x.checked_sub(y)),
        _ => Err(Error::no_overload("_-_", args)),
    }
}

fn mul<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    use Value as V;
    match args {
        [V::Int(x), V::Int(y)] => x
            .checked_mul(*y)
            .map(V::Int)
            .ok_or_else(|| Error::overflow("_*_")),
        [V::Uint(x), V::Uint(y)] => x
            .checked_mul(*y)
            .map(V::Uint)
            .ok_or_else(|| Error::overflow("_*_")),
        [V::Double(x), V::Double(y)] => Ok(V::Double(x * y)),
        _ => Err(Error::no_overload("_*_", args)),
    }
}

fn div<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    use Value as V;
    match args {
        [V::Int(_), V::Int(0)] | [V::Uint(_), V::Uint(0)] => Err(Error::division_by_zero()),
        // i64::MIN / -1
        [V::Int(x), V::Int(y)] => x
            .checked_div(*y)
            .map(V::Int)
            .ok_or_else(|| Error::overflow("_/_")),
        [V::Uint(x), V::Uint(y)] => Ok(V::Uint(x / y)),
        [V::Double(x), V::Double(y)] => Ok(V::Double(x / y)),
        _ => Err(Error::no_overload("_/_", args)),
    }
}

fn rem<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    use Value as V;
    match args {
        [V::Int(_), V::Int(0)] | [V::Uint(_), V::Uint(0)] => Err(Error::modulus_by_zero()),
        // i64::MIN % -1
        [V::Int(x), V::Int(y)] => x
            .checked_rem(*y)
            .map(V::Int)
            .ok_or_else(|| Error::overflow("_%_")),
        [V::Uint(x), V::Uint(y)] => Ok(V::Uint(x % y)),
        _ => Err(Error::no_overload("_%_", args)),
    }
}

fn neg<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Int(x)] => x
            .checked_neg()
            .map(Value::Int)
            .ok_or_else(|| Error::overflow("-_")),
        [Value::Double(x)] => Ok(Value::Double(-x)),
        _ => Err(Error::no_overload("-_", args)),
    }
}

// ---------------------------------------------------------------------------
// size

fn size<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    let n = match args {
        [Value::String(s)] => {
            ctx.charge_bytes(s.len())?;
            s.chars().count()
        }
        [Value::Bytes(b)] => b.len(),
        [Value::List(l)] => l.len(),
        [Value::Map(m)] => m.len(),
        _ => return Err(Error::no_overload("size", args)),
    };
    Ok(Value::Int(n as i64))
}

// ---------------------------------------------------------------------------
// Conversions.

/// 2^63 as a double: the first double above `i64::MAX`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
/// 2^64 as a double: the first double above `u64::MAX`.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

fn to_int<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Int(i)] => Ok(Value::Int(*i)),
        [Value::Uint(u)] => i64::try_from(*u)
            .map(Value::Int)
            .map_err(|_| range_error("int", "range error converting a uint to int")),
        // cel-go refuses both ends, -2^63 included.
        [Value::Double(d)] => {
            if *d > -TWO_POW_63 && *d < TWO_POW_63 {
                Ok(Value::Int(*d as i64))
            } else {
                Err(range_error(
                    "int",
                    format!("range error converting {} to int", format_double(*d)),
                ))
            }
        }
        [Value::String(s)] => {
            ctx.charge_bytes(s.len())?;
            s.parse::<i64>()
                .map(Value::Int)
                .map_err(|_| Error::function("int", format!("cannot convert {:?} to int", &**s)))
        }
        [Value::Timestamp(t)] => Ok(Value::Int(t.timestamp())),
        _ => Err(Error::no_overload("int", args)),
    }
}

fn to_uint<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Uint(u)] => Ok(Value::Uint(*u)),
        [Value::Int(i)] => u64::try_from(*i)
            .map(Value::Uint)
            .map_err(|_| range_error("uint", "range error converting a negative int to uint")),
        [Value::Double(d)] => {
            if *d >= 0.0 && *d < TWO_POW_64 {
                Ok(Value::Uint(*d as u64))
            } else {
                Err(range_error(
                    "uint",
                    format!("range error converting {} to uint", format_double(*d)),
                ))
            }
        }
        [Value::String(s)] => {
            ctx.charge_bytes(s.len())?;
            // Go's ParseUint takes no sign, where Rust's takes a `+`.
            let parsed = if s.starts_with('+') {
                None
            } else {
                s.parse::<u64>().ok()
            };
            parsed.map(Value::Uint).ok_or_else(|| {
                Error::function("uint", format!("cannot convert {:?} to uint", &**s))
            })
        }
        _ => Err(Error::no_overload("uint", args)),
    }
}

fn to_double<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Double(d)] => Ok(Value::Double(*d)),
        [Value::Int(i)] => Ok(Value::Double(*i as f64)),
        [Value::Uint(u)] => Ok(Value::Double(*u as f64)),
        [Value::String(s)] => {
            ctx.charge_bytes(s.len())?;
            parse_double(s).map(Value::Double).ok_or_else(|| {
                Error::function("double", format!("cannot convert {:?} to double", &**s))
            })
        }
        _ => Err(Error::no_overload("double", args)),
    }
}

/// A double as Go's `strconv.ParseFloat` reads it: decimal or exponent
/// notation, `NaN`, `Inf`, `Infinity` (any case, signed); a finite number
/// too large for a double is refused rather than made infinite.
fn parse_double(s: &str) -> Option<f64> {
    let d: f64 = s.parse().ok()?;
    if d.is_infinite() && !s.to_ascii_lowercase().contains("inf") {
        return None;
    }
    Some(d)
}

/// A double as Go's `fmt` `%g` writes it: the shortest decimal that reads
/// back to the same double, in exponent notation when the exponent is
/// below -4 or at least 6 (`1e+06`, `1.5e-07`), else plain (`123.456`).
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_owned();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let mut out = String::new();
    if d.is_sign_negative() {
        out.push('-');
    }
    if d == 0.0 {
        out.push('0');
        return out;
    }
    // Rust's `{:e}` is the shortest round-trip form: `1.2345e6`.
    let sci = format!("{:e}", d.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            out.push('0');
        }
        out.push_str(&e.to_string());
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

/// A timestamp as cel-go writes it: RFC 3339 in UTC, with the fraction of
/// a second it needs and no more (`2009-02-13T23:31:30Z`, `...30.5Z`).
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    let mut out = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    crate::cel::eval::value::push_fraction(&mut out, t.timestamp_subsec_nanos() % 1_000_000_000);
    out.push('Z');
    out
}

fn to_string<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::String(s)] => Ok(Value::String(s.clone())),
        [Value::Bool(b)] => Ok(Value::str(if *b { "true" } else { "false" })),
        [Value::Int(i)] => Ok(Value::string(i.to_string())),
        [Value::Uint(u)] => Ok(Value::string(u.to_string())),
        [Value::Double(d)] => Ok(Value::string(format_double(*d))),
        [Value::Bytes(b)] => {
            ctx.charge_bytes(b.len())?;
            let invalid = |_| Error::function("string", "invalid UTF-8 in bytes");
            match b {
                Bin::Borrowed(b) => std::str::from_utf8(b)
                    .map(|s| Value::String(Str::Borrowed(s)))
                    .map_err(invalid),
                Bin::Owned(b) => std::str::from_utf8(b)
                    .map(|s| Value::String(Str::Owned(Arc::from(s))))
                    .map_err(invalid),
            }
        }
        [Value::Timestamp(t)] => Ok(Value::string(format_timestamp(t))),
        [Value::Duration(d)] => Ok(Value::string(format_duration(*d))),
        _ => Err(Error::no_overload("string", args)),
    }
}

fn to_bytes<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Bytes(b)] => Ok(Value::Bytes(b.clone())),
        [Value::String(Str::Borrowed(s))] => Ok(Value::Bytes(Bin::Borrowed(s.as_bytes()))),
        [Value::String(s)] => {
            ctx.charge_bytes(s.len())?;
            Ok(Value::Bytes(Bin::Owned(Arc::from(s.as_bytes()))))
        }
        _ => Err(Error::no_overload("bytes", args)),
    }
}

fn to_bool<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Bool(b)] => Ok(Value::Bool(*b)),
        // Go's strconv.ParseBool.
        [Value::String(s)] => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Value::Bool(true)),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Value::Bool(false)),
            other => Err(Error::function(
                "bool",
                format!("type conversion error: {other:?} is not a bool"),
            )),
        },
        _ => Err(Error::no_overload("bool", args)),
    }
}

fn to_timestamp<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Timestamp(t)] => Ok(Value::Timestamp(*t)),
        [Value::Int(secs)] => match DateTime::from_timestamp(*secs, 0) {
            Some(t) => checked_timestamp("timestamp", t),
            None => Err(range_error("timestamp", "timestamp out of range")),
        },
        [Value::String(s)] => {
            ctx.charge_bytes(s.len())?;
            let t = parse_timestamp(s)?;
            checked_timestamp("timestamp", t)
        }
        _ => Err(Error::no_overload("timestamp", args)),
    }
}

/// An RFC 3339 timestamp, as Go's `time.Parse(time.RFC3339, ..)` reads
/// it: an upper-case `T` and `Z` (or a numeric offset), a fraction of a
/// second optional, no leap second; normalised to UTC.
fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, Error> {
    let refuse = || {
        Error::function(
            "timestamp",
            format!("cannot parse {s:?} as an RFC 3339 timestamp"),
        )
    };
    if s.as_bytes().get(10) != Some(&b'T') || s.ends_with('z') {
        return Err(refuse());
    }
    let t = DateTime::parse_from_rfc3339(s).map_err(|_| refuse())?;
    if t.timestamp_subsec_nanos() >= 1_000_000_000 {
        return Err(refuse());
    }
    Ok(t.with_timezone(&Utc))
}

fn to_duration<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Duration(d)] => Ok(Value::Duration(*d)),
        [Value::String(s)] => {
            ctx.charge_bytes(s.len())?;
            parse_duration(s).map(|n| Value::Duration(TimeDelta::nanoseconds(n)))
        }
        _ => Err(Error::no_overload("duration", args)),
    }
}

/// A duration in Go's `time.ParseDuration` syntax (`1h2m3.5s`, `-1.5h`,
/// `100ms`, `1us`, `1µs`, `1ns`, `0`), in nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, Error> {
    let invalid = || Error::function("duration", format!("invalid duration {s:?}"));
    let overflow = || range_error("duration", format!("duration {s:?} out of range"));
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // The number: digits, a fraction, or both.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let mut whole: u128 = 0;
        for b in rest[..int_len].bytes() {
            whole = whole * 10 + u128::from(b - b'0');
            if whole > LIMIT {
                return Err(overflow());
            }
        }
        rest = &rest[int_len..];
        // Up to 20 fraction digits are exact enough for a nanosecond of
        // an hour; the rest are read and ignored.
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        if let Some(after) = rest.strip_prefix('.') {
            let frac_len = after.bytes().take_while(u8::is_ascii_digit).count();
            for b in after[..frac_len].bytes().take(20) {
                frac = frac * 10 + u128::from(b - b'0');
                scale *= 10;
            }
            rest = &after[frac_len..];
            if int_len == 0 && frac_len == 0 {
                return Err(invalid());
            }
        } else if int_len == 0 {
            return Err(invalid());
        }
        // The unit.
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += whole * unit + frac * unit / scale;
        if total > LIMIT {
            return Err(overflow());
        }
    }
    if negative {
        Ok((-(total as i128)) as i64)
    } else if total == LIMIT {
        Err(overflow())
    } else {
        Ok(total as i64)
    }
}

fn dyn_<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [v] => Ok(v.clone()),
        _ => Err(Error::no_overload("dyn", args)),
    }
}

fn type_<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [v] => Ok(Value::Type(v.type_of())),
        _ => Err(Error::no_overload("type", args)),
    }
}

// ---------------------------------------------------------------------------
// Strings.

fn contains<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::String(s), Value::String(sub)] => {
            ctx.charge_bytes(s.len() + sub.len())?;
            Ok(Value::Bool(super::strings::find(s, sub).is_some()))
        }
        _ => Err(Error::no_overload("contains", args)),
    }
}

fn starts_with<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::String(s), Value::String(prefix)] => {
            ctx.charge_bytes(prefix.len())?;
            Ok(Value::Bool(s.starts_with(prefix.as_str())))
        }
        _ => Err(Error::no_overload("startsWith", args)),
    }
}

fn ends_with<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::String(s), Value::String(suffix)] => {
            ctx.charge_bytes(suffix.len())?;
            Ok(Value::Bool(s.ends_with(suffix.as_str())))
        }
        _ => Err(Error::no_overload("endsWith", args)),
    }
}

/// Whether the pattern matches anywhere in the text (unanchored, as
/// cel-go's `matches`). A literal pattern was compiled when the policy
/// loaded; a computed one is compiled on first use and cached
/// ([`super::regex`]).
fn matches<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::String(text), pattern] => {
            let invalid = |e: String| {
                let shown = pattern.as_str().unwrap_or_default();
                Error::function("matches", format!("invalid regex {shown:?}: {e}"))
            };
            let Some(re) = super::regex::argument(ctx, pattern, invalid)? else {
                return Err(Error::no_overload("matches", args));
            };
            ctx.charge_bytes(text.len())?;
            Ok(Value::Bool(re.is_match(text)))
        }
        _ => Err(Error::no_overload("matches", args)),
    }
}

// ---------------------------------------------------------------------------
// Timestamps and durations.

/// The time zone argument of a timestamp accessor, as cel-go reads it: an
/// IANA name (`America/Los_Angeles`, `UTC`) or, when it holds a `:`, an
/// offset `[+-]HH:MM` (`+05:30`, `-08:00`, `02:00`).
fn civil_time(
    t: &DateTime<Utc>,
    zone: &str,
    function: &'static str,
) -> Result<NaiveDateTime, Error> {
    let unknown = || Error::function(function, format!("unknown time zone {zone:?}"));
    if let Some((hours, minutes)) = zone.split_once(':') {
        let hours = i64::from(hours.parse::<i32>().map_err(|_| unknown())?);
        let minutes = i64::from(minutes.parse::<i32>().map_err(|_| unknown())?);
        let offset = if zone.starts_with('-') {
            hours * 60 - minutes
        } else {
            hours * 60 + minutes
        };
        let offset = offset
            .checked_mul(60)
            .and_then(|s| i32::try_from(s).ok())
            .and_then(FixedOffset::east_opt)
            .ok_or_else(unknown)?;
        return Ok(t.with_timezone(&offset).naive_local());
    }
    if zone.is_empty() || zone == "UTC" {
        return Ok(t.naive_utc());
    }
    let tz: chrono_tz::Tz = zone.parse().map_err(|_| unknown())?;
    Ok(t.with_timezone(&tz).naive_local())
}

/// A timestamp accessor (`t.f()` / `t.f(zone)`) or, where `of_duration`
/// is given, a duration accessor (`d.f()`).
fn time_part<'r>(
    ctx: &mut Ctx<'r>,
    function: &'static str,
    args: &[Value<'r>],
    of_timestamp: fn(&NaiveDateTime) -> i64,
    of_duration: Option<fn(i128) -> i128>,
) -> R<'r> {
    match args {
        [Value::Timestamp(t)] => Ok(Value::Int(of_timestamp(&t.naive_utc()))),
        [Value::Timestamp(t), Value::String(zone)] => {
            ctx.charge_bytes(zone.len())?;
            Ok(Value::Int(of_timestamp(&civil_time(t, zone, function)?)))
        }
        [Value::Duration(d)] => match of_duration {
            Some(f) => {
                let n = f(total_nanos(*d));
                i64::try_from(n)
                    .map(Value::Int)
                    .map_err(|_| range_error(function, "duration out of range"))
            }
            None => Err(Error::no_overload(function, args)),
        },
        _ => Err(Error::no_overload(function, args)),
    }
}

macro_rules! accessor {
    ($f:ident, $name:literal, $ts:expr, $dur:expr) => {
        fn $f<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
            time_part(ctx, $name, args, $ts, $dur)
        }
    };
}

accessor!(get_full_year, "getFullYear", |t| i64::from(t.year()), None);
accessor!(get_month, "getMonth", |t| i64::from(t.month0()), None);
accessor!(
    get_day_of_year,
    "getDayOfYear",
    |t| i64::from(t.ordinal0()),
    None
);
accessor!(
    get_day_of_month,
    "getDayOfMonth",
    |t| i64::from(t.day0()),
    None
);
accessor!(get_date, "getDate", |t| i64::from(t.day()), None);
accessor!(
    get_day_of_week,
    "getDayOfWeek",
    |t| i64::from(t.weekday().num_days_from_sunday()),
    None
);
accessor!(
    get_hours,
    "getHours",
    |t| i64::from(t.hour()),
    Some(|n| n / 3_600_000_000_000)
);
accessor!(
    get_minutes,
    "getMinutes",
    |t| i64::from(t.minute()),
    Some(|n| n / 60_000_000_000)
);
accessor!(
    get_seconds,
    "getSeconds",
    |t| i64::from(t.second()),
    Some(|n| n / 1_000_000_000)
);
accessor!(
    get_milliseconds,
    "getMilliseconds",
    |t| i64::from(t.nanosecond() % 1_000_000_000 / 1_000_000),
    Some(|n| n / 1_000_000)
);

// ---------------------------------------------------------------------------
// Optional values.

fn optional_of<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [v] => Ok(Value::some(v.clone())),
        _ => Err(Error::no_overload("optional.of", args)),
    }
}

fn optional_none<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [] => Ok(Value::Optional(None)),
        _ => Err(Error::no_overload("optional.none", args)),
    }
}

fn optional_of_non_zero_value<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [v] if v.is_zero() => Ok(Value::Optional(None)),
        [v] => Ok(Value::some(v.clone())),
        _ => Err(Error::no_overload("optional.ofNonZeroValue", args)),
    }
}

fn optional_value<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Optional(Some(v))] => Ok(Value::clone(v)),
        [Value::Optional(None)] => Err(Error::function("value", "optional.none() dereference")),
        _ => Err(Error::no_overload("value", args)),
    }
}

fn optional_has_value<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> R<'r> {
    match args {
        [Value::Optional(o)] => Ok(Value::Bool(o.is_some())),
        _ => Err(Error::no_overload("hasValue", args)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::call as call_in;
    use crate::cel::eval::value::{equals, OwnedMap};
    use crate::cel::eval::{Key, Meter, Type};

    fn ctx() -> Ctx<'static> {
        Ctx::new(None, Meter::new(1_000_000))
    }

    fn call(name: &str, args: &[Value<'static>]) -> R<'static> {
        call_in(&mut ctx(), name, false, args)
    }

    fn method(name: &str, args: &[Value<'static>]) -> R<'static> {
        call_in(&mut ctx(), name, true, args)
    }

    fn ok(r: R<'static>) -> Value<'static> {
        match r {
            Ok(v) => v,
            Err(e) => panic!("unexpected error: {}", e.message),
        }
    }

    fn err(r: R<'static>) -> Error {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e,
        }
    }

    fn assert_value(r: R<'static>, want: Value<'static>) {
        let got = ok(r);
        assert!(
            equals(&got, &want) && got.type_name() == want.type_name(),
            "got {got:?}, want {want:?}"
        );
    }

    fn s(v: &'static str) -> Value<'static> {
        Value::str(v)
    }

    fn ts(v: &'static str) -> Value<'static> {
        ok(call("timestamp", &[s(v)]))
    }

    fn dur(v: &'static str) -> Value<'static> {
        ok(call("duration", &[s(v)]))
    }

    fn kind(r: R<'static>) -> ErrorKind {
        err(r).kind
    }

    #[test]
    fn int_arithmetic_is_checked() {
        use Value::Int;
        assert_value(call("_+_", &[Int(40), Int(2)]), Int(42));
        assert_value(call("_-_", &[Int(-42), Int(-12)]), Int(-30));
        assert_value(call("_*_", &[Int(-30), Int(-2)]), Int(60));
        assert_value(call("_/_", &[Int(-80), Int(-2)]), Int(40));
        assert_value(call("_%_", &[Int(43), Int(-5)]), Int(3));
        assert_value(call("_%_", &[Int(-3), Int(5)]), Int(-3));
        assert_value(call("-_", &[Int(42)]), Int(-42));
        for (op, a, b) in [
            ("_+_", i64::MAX, 1),
            ("_-_", i64::MIN, 1),
            ("_-_", 1, -i64::MAX),
            ("_*_", 5_000_000_000, 5_000_000_000),
            ("_*_", i64::MIN, -1),
            ("_/_", i64::MIN, -1),
            ("_%_", i64::MIN, -1),
        ] {
            assert_eq!(
                kind(call(op, &[Int(a), Int(b)])),
                ErrorKind::Overflow,
                "{op}"
            );
        }
        assert_eq!(kind(call("-_", &[Int(i64::MIN)])), ErrorKind::Overflow);
        assert_eq!(
            kind(call("_/_", &[Int(15), Int(0)])),
            ErrorKind::DivisionByZero
        );
        let e = err(call("_%_", &[Int(34), Int(0)]));
        assert_eq!(e.kind, ErrorKind::DivisionByZero);
        assert!(e.message.contains("modulus by zero"));
    }

    #[test]
    fn uint_arithmetic_is_checked() {
        use Value::Uint;
        assert_value(call("_+_", &[Uint(42), Uint(2)]), Uint(44));
        assert_value(call("_-_", &[Uint(42), Uint(12)]), Uint(30));
        assert_value(call("_/_", &[Uint(60), Uint(2)]), Uint(30));
        assert_value(call("_%_", &[Uint(42), Uint(5)]), Uint(2));
        assert_eq!(
            kind(call("_+_", &[Uint(u64::MAX), Uint(1)])),
            ErrorKind::Overflow
        );
        assert_eq!(kind(call("_-_", &[Uint(0), Uint(1)])), ErrorKind::Overflow);
        assert_eq!(
            kind(call("_*_", &[Uint(5_000_000_000), Uint(5_000_000_000)])),
            ErrorKind::Overflow
        );
        assert_eq!(
            kind(call("_/_", &[Uint(1), Uint(0)])),
            ErrorKind::DivisionByZero
        );
        assert_eq!(
            kind(call("_%_", &[Uint(1), Uint(0)])),
            ErrorKind::DivisionByZero
        );
        assert_eq!(kind(call("-_", &[Uint(5)])), ErrorKind::NoSuchOverload);
    }

    #[test]
    fn double_arithmetic_is_ieee_and_types_do_not_mix() {
        use Value::{Double, Int, Uint};
        assert_value(call("_+_", &[Double(4.25), Double(15.25)]), Double(19.5));
        assert_value(
            call("_/_", &[Double(15.75), Double(0.0)]),
            Double(f64::INFINITY),
        );
        assert_value(
            call("_*_", &[Double(2.0), Double(-8.988466e307)]),
            Double(f64::NEG_INFINITY),
        );
        match ok(call("-_", &[Double(0.0)])) {
            Double(d) => assert!(d == 0.0 && d.is_sign_negative()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            kind(call("_%_", &[Double(47.5), Double(5.5)])),
            ErrorKind::NoSuchOverload
        );
        assert_eq!(
            kind(call("_+_", &[Int(1), Uint(1)])),
            ErrorKind::NoSuchOverload
        );
        assert_eq!(
            kind(call("_+_", &[Int(1), Double(1.0)])),
            ErrorKind::NoSuchOverload
        );
        assert_eq!(
            kind(call("-_", &[Value::Bool(false)])),
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn concatenation() {
        assert_value(call("_+_", &[s("he"), s("llo")]), s("hello"));
        assert_value(call("_+_", &[s(""), s("Ω")]), s("Ω"));
        assert_value(
            call("_+_", &[Value::bytes(*b"abc"), Value::bytes(*b"def")]),
            Value::bytes(*b"abcdef"),
        );
        let l = ok(call(
            "_+_",
            &[
                Value::list(vec![Value::Int(1)]),
                Value::list(vec![s("a"), Value::Int(2)]),
            ],
        ));
        assert!(equals(
            &l,
            &Value::list(vec![Value::Int(1), s("a"), Value::Int(2)])
        ));
        assert_eq!(
            kind(call("_+_", &[s("a"), Value::bytes(*b"b")])),
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn big_strings_are_charged_before_the_work() {
        let big: &'static str = Box::leak("x".repeat(1_000_000).into_boxed_str());
        let mut small = Ctx::new(None, Meter::new(1_000));
        for (name, receiver, args) in [
            ("_+_", false, vec![s(big), s("y")]),
            ("size", false, vec![s(big)]),
            ("size", true, vec![s(big)]),
            ("contains", true, vec![s(big), s("y")]),
            ("matches", true, vec![s(big), s("y+")]),
            ("matches", false, vec![s(big), s("y+")]),
            ("int", false, vec![s(big)]),
            ("double", false, vec![s(big)]),
            ("duration", false, vec![s(big)]),
            ("timestamp", false, vec![s(big)]),
            ("bytes", false, vec![Value::string(big)]),
            ("string", false, vec![Value::bytes(big.as_bytes())]),
        ] {
            let mut fresh = Ctx::new(None, Meter::new(1_000));
            let e = call_in(&mut fresh, name, receiver, &args).unwrap_err();
            assert_eq!(e.kind, ErrorKind::CostExceeded, "{name}");
        }
        // The same within a budget: charged a tenth of a unit per byte.
        let mut ample = ctx();
        assert_value(
            call_in(&mut ample, "size", false, &[s(big)]),
            Value::Int(1_000_000),
        );
        assert!(ample.meter.used() >= 100_000);
        // A list concatenation is charged per element.
        let list = Value::list(vec![Value::Int(0); 2_000]);
        let e = call_in(&mut small, "_+_", false, &[list.clone(), list]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
    }

    #[test]
    fn sizes() {
        assert_value(call("size", &[s("πέντε")]), Value::Int(5));
        assert_value(method("size", &[s("🐱😀")]), Value::Int(2));
        assert_value(call("size", &[Value::bytes(*b"abc")]), Value::Int(3));
        assert_value(
            method("size", &[Value::list(vec![Value::Null, Value::Null])]),
            Value::Int(2),
        );
        let mut m = OwnedMap::default();
        m.insert(Key::Int(1), Value::Null);
        assert_value(call("size", &[Value::map(m)]), Value::Int(1));
        assert_eq!(
            kind(call("size", &[Value::Int(1)])),
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn int_conversions() {
        use Value::{Double, Int, Uint};
        assert_value(call("int", &[Uint(42)]), Int(42));
        assert_value(call("int", &[Uint(i64::MAX as u64)]), Int(i64::MAX));
        assert_eq!(kind(call("int", &[Uint(u64::MAX)])), ErrorKind::Overflow);
        assert_value(call("int", &[Double(-123.456)]), Int(-123));
        assert_value(call("int", &[Double(1.9)]), Int(1));
        assert_value(call("int", &[Double(-7.9)]), Int(-7));
        assert_value(
            call("int", &[Double(36028797018963968.0)]),
            Int(36028797018963968),
        );
        for d in [
            9223372036854775807.0,
            -9223372036854775808.0,
            1e99,
            f64::NAN,
            f64::INFINITY,
        ] {
            let e = err(call("int", &[Double(d)]));
            assert_eq!(e.kind, ErrorKind::Overflow, "{d}");
            assert!(e.message.contains("range"));
        }
        assert_value(call("int", &[s("987")]), Int(987));
        assert_value(call("int", &[s("-987")]), Int(-987));
        assert_eq!(kind(call("int", &[s("9.5")])), ErrorKind::FunctionError);
        assert_eq!(kind(call("int", &[s("")])), ErrorKind::FunctionError);
        assert_eq!(
            kind(call("int", &[s("9223372036854775808")])),
            ErrorKind::FunctionError
        );
        assert_value(call("int", &[ts("2004-09-16T23:59:59Z")]), Int(1095379199));
        assert_value(call("int", &[ts("1969-12-31T23:59:59.5Z")]), Int(-1));
        assert_eq!(
            kind(call("int", &[Value::Bool(true)])),
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn uint_conversions() {
        use Value::{Double, Int, Uint};
        assert_value(call("uint", &[Int(1729)]), Uint(1729));
        assert_eq!(kind(call("uint", &[Int(-1)])), ErrorKind::Overflow);
        assert_value(call("uint", &[Double(25.5)]), Uint(25));
        assert_value(
            call("uint", &[Double(36028797018963969.0)]),
            Uint(36028797018963968),
        );
        assert_eq!(kind(call("uint", &[Double(6.022e23)])), ErrorKind::Overflow);
        assert_eq!(
            kind(call("uint", &[Double(18446744073709551615.0)])),
            ErrorKind::Overflow
        );
        assert_eq!(kind(call("uint", &[Double(-0.5)])), ErrorKind::Overflow);
        assert_eq!(kind(call("uint", &[Double(f64::NAN)])), ErrorKind::Overflow);
        assert_value(call("uint", &[s("300")]), Uint(300));
        assert_value(call("uint", &[s("18446744073709551615")]), Uint(u64::MAX));
        assert_eq!(kind(call("uint", &[s("+3")])), ErrorKind::FunctionError);
        assert_eq!(kind(call("uint", &[s("-3")])), ErrorKind::FunctionError);
    }

    #[test]
    fn double_conversions() {
        use Value::{Double, Int, Uint};
        assert_value(
            call("double", &[Int(-1_000_000_000_000_000)]),
            Double(-1e15),
        );
        assert_value(
            call("double", &[Int(i64::MAX)]),
            Double(9.223372036854776e18),
        );
        assert_value(
            call("double", &[Uint(u64::MAX)]),
            Double(1.8446744073709552e19),
        );
        assert_value(call("double", &[s("-84.32e7")]), Double(-843200000.0));
        assert_value(call("double", &[s("1e3")]), Double(1000.0));
        assert_value(call("double", &[s("6.02214e23")]), Double(6.02214e23));
        assert_value(call("double", &[s("Infinity")]), Double(f64::INFINITY));
        assert_value(call("double", &[s("-Infinity")]), Double(f64::NEG_INFINITY));
        assert_value(call("double", &[s("-Inf")]), Double(f64::NEG_INFINITY));
        match ok(call("double", &[s("NaN")])) {
            Double(d) => assert!(d.is_nan()),
            other => panic!("{other:?}"),
        }
        match ok(call("double", &[s("-0.0")])) {
            Double(d) => assert!(d == 0.0 && d.is_sign_negative()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            kind(call("double", &[s("1e400")])),
            ErrorKind::FunctionError
        );
        assert_eq!(kind(call("double", &[s("abc")])), ErrorKind::FunctionError);
        assert_eq!(kind(call("double", &[s("")])), ErrorKind::FunctionError);
    }

    #[test]
    fn doubles_format_as_go_g() {
        for (d, want) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (123.456, "123.456"),
            (-4.5e-3, "-0.0045"),
            (1e100, "1e+100"),
            (1e6, "1e+06"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-0.0, "-0"),
            (0.0, "0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (100.0, "100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(format_double(d), want, "{d:e}");
        }
        assert_value(call("string", &[Value::Double(1e100)]), s("1e+100"));
    }

    #[test]
    fn string_conversions() {
        assert_value(call("string", &[Value::Int(-456)]), s("-456"));
        assert_value(call("string", &[Value::Uint(9876)]), s("9876"));
        assert_value(call("string", &[Value::Bool(true)]), s("true"));
        assert_value(call("string", &[s("x")]), s("x"));
        assert_value(call("string", &[Value::bytes(*b"\xc3\xbf")]), s("ÿ"));
        let e = err(call("string", &[Value::bytes(*b"\x00\xff")]));
        assert_eq!(e.kind, ErrorKind::FunctionError);
        assert!(e.message.contains("invalid UTF-8"));
        assert_value(
            call("string", &[ts("2009-02-13T23:31:30Z")]),
            s("2009-02-13T23:31:30Z"),
        );
        assert_value(
            call("string", &[ts("9999-12-31T23:59:59.999999999Z")]),
            s("9999-12-31T23:59:59.999999999Z"),
        );
        assert_value(
            call("string", &[ts("2009-02-13T23:31:30.50+01:00")]),
            s("2009-02-13T22:31:30.5Z"),
        );
        assert_value(call("string", &[dur("1h")]), s("3600s"));
        assert_value(call("string", &[dur("-1.5s")]), s("-1.5s"));
        assert_eq!(
            kind(call("string", &[Value::Null])),
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn bytes_bool_dyn_and_type() {
        assert_value(call("bytes", &[s("ÿ")]), Value::bytes(*b"\xc3\xbf"));
        assert_value(
            call("bytes", &[Value::string("abc")]),
            Value::bytes(*b"abc"),
        );
        assert_value(
            call("bytes", &[Value::bytes(*b"\xff")]),
            Value::bytes(*b"\xff"),
        );
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_value(call("bool", &[s(t)]), Value::Bool(true));
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_value(call("bool", &[s(f)]), Value::Bool(false));
        }
        assert_eq!(kind(call("bool", &[s("TrUe")])), ErrorKind::FunctionError);
        assert_value(call("bool", &[Value::Bool(true)]), Value::Bool(true));
        assert_value(call("dyn", &[s("x")]), s("x"));
        assert_value(call("type", &[Value::Int(0)]), Value::Type(Type::Int));
        assert_value(call("type", &[Value::Null]), Value::Type(Type::Null));
        assert_value(
            call("type", &[Value::Type(Type::Int)]),
            Value::Type(Type::Type),
        );
        assert_value(
            call("type", &[Value::Optional(None)]),
            Value::Type(Type::Optional),
        );
        assert_value(
            call("type", &[ts("2009-02-13T23:31:30Z")]),
            Value::Type(Type::Timestamp),
        );
    }

    #[test]
    fn timestamps_parse_and_stay_in_range() {
        assert_value(
            call("int", &[ts("2009-02-13T23:31:30Z")]),
            Value::Int(1234567890),
        );
        assert_value(
            call("int", &[ts("2009-02-14T01:31:30+02:00")]),
            Value::Int(1234567890),
        );
        assert_value(
            call("timestamp", &[Value::Int(1234567890)]),
            ts("2009-02-13T23:31:30Z"),
        );
        let t = ts("2009-02-13T23:31:30Z");
        assert_value(call("timestamp", std::slice::from_ref(&t)), t);
        assert_value(
            call("timestamp", &[Value::Int(-62135596800)]),
            ts("0001-01-01T00:00:00Z"),
        );
        for bad in [
            "2009-02-13 23:31:30Z",
            "2009-02-13t23:31:30Z",
            "2009-02-13T23:31:30z",
            "2009-02-13T23:31:30",
            "2009-02-13",
            "2016-12-31T23:59:60Z",
            "10000-01-01T00:00:00Z",
        ] {
            assert_eq!(
                kind(call("timestamp", &[s(bad)])),
                ErrorKind::FunctionError,
                "{bad}"
            );
        }
        for (v, is_string) in [
            (s("0000-01-01T00:00:00Z"), true),
            (s("0001-01-01T00:59:59+01:00"), true),
            (Value::Int(-62135596801), false),
            (Value::Int(253402300800), false),
            (Value::Int(i64::MIN), false),
        ] {
            let e = err(call("timestamp", &[v]));
            assert_eq!(e.kind, ErrorKind::Overflow, "{is_string}");
            assert!(e.message.contains("range"));
        }
    }

    #[test]
    fn durations_parse_as_go() {
        let nanos = |v: Value<'static>| match v {
            Value::Duration(d) => d.num_nanoseconds().unwrap(),
            other => panic!("{other:?}"),
        };
        for (text, want) in [
            ("0", 0),
            ("-0", 0),
            ("1h", 3_600_000_000_000),
            ("1h2m3.5s", 3_723_500_000_000),
            ("-1.5h", -5_400_000_000_000),
            ("+2s", 2_000_000_000),
            ("100ms", 100_000_000),
            ("1us", 1_000),
            ("1\u{b5}s", 1_000),
            ("1\u{3bc}s", 1_000),
            ("1ns", 1),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("1.0000000001s", 1_000_000_000),
            ("-999999999ns", -999_999_999),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ] {
            assert_eq!(nanos(ok(call("duration", &[s(text)]))), want, "{text}");
        }
        for bad in ["", "1", "s", "1x", "1h 2m", ".s", "-", "1.2.3s", "1hh"] {
            assert_eq!(
                kind(call("duration", &[s(bad)])),
                ErrorKind::FunctionError,
                "{bad}"
            );
        }
        for over in [
            "320000000000s",
            "-320000000000s",
            "2562047h47m16.854775808s",
            "99999999999999999999999h",
        ] {
            assert_eq!(
                kind(call("duration", &[s(over)])),
                ErrorKind::Overflow,
                "{over}"
            );
        }
        let d = dur("100s");
        assert_value(call("duration", std::slice::from_ref(&d)), d);
    }

    #[test]
    fn time_arithmetic_and_ranges() {
        assert_value(
            call("_+_", &[ts("2009-02-13T23:00:00Z"), dur("240s")]),
            ts("2009-02-13T23:04:00Z"),
        );
        assert_value(
            call("_+_", &[dur("120s"), ts("2009-02-13T23:01:00Z")]),
            ts("2009-02-13T23:03:00Z"),
        );
        assert_value(call("_+_", &[dur("600s"), dur("50s")]), dur("650s"));
        assert_value(
            call(
                "_+_",
                &[ts("0001-01-01T00:00:01.000000001Z"), dur("-999999999ns")],
            ),
            ts("0001-01-01T00:00:00.000000002Z"),
        );
        assert_value(
            call("_-_", &[ts("2009-02-13T23:10:00Z"), dur("600s")]),
            ts("2009-02-13T23:00:00Z"),
        );
        assert_value(
            call(
                "_-_",
                &[ts("2009-02-13T23:31:00Z"), ts("2009-02-13T23:29:00Z")],
            ),
            dur("120s"),
        );
        assert_value(call("_-_", &[dur("900s"), dur("42s")]), dur("858s"));
        let max = Value::Duration(TimeDelta::nanoseconds(i64::MAX));
        let min = Value::Duration(TimeDelta::nanoseconds(i64::MIN + 1));
        for (op, a, b) in [
            ("_+_", ts("0001-01-01T00:00:00Z"), dur("-1ns")),
            ("_+_", ts("9999-12-31T23:59:59.999999999Z"), dur("1ns")),
            ("_+_", dur("1s"), ts("9999-12-31T23:59:59Z")),
            ("_-_", ts("0001-01-01T00:00:00Z"), dur("1s")),
            (
                "_-_",
                ts("9999-12-31T23:59:59Z"),
                ts("0001-01-01T00:00:00Z"),
            ),
            (
                "_-_",
                ts("0001-01-01T00:00:00Z"),
                ts("9999-12-31T23:59:59Z"),
            ),
            ("_+_", max.clone(), dur("1ns")),
            ("_-_", min.clone(), dur("2ns")),
            ("_-_", max, min),
        ] {
            let e = err(call(op, &[a, b]));
            assert_eq!(e.kind, ErrorKind::Overflow, "{op}");
            assert!(e.message.contains("range"));
        }
        assert_eq!(
            kind(call("_-_", &[dur("1s"), ts("2009-02-13T23:00:00Z")])),
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn timestamp_accessors_in_utc() {
        let t = ts("2009-02-13T23:31:30Z");
        for (name, want) in [
            ("getFullYear", 2009),
            ("getMonth", 1),
            ("getDayOfYear", 43),
            ("getDayOfMonth", 12),
            ("getDate", 13),
            ("getDayOfWeek", 5),
            ("getHours", 23),
            ("getMinutes", 31),
            ("getSeconds", 30),
            ("getMilliseconds", 0),
        ] {
            assert_value(method(name, std::slice::from_ref(&t)), Value::Int(want));
        }
        assert_value(
            method("getMilliseconds", &[ts("2009-02-13T23:31:20.123456789Z")]),
            Value::Int(123),
        );
        assert_value(
            method("getDayOfWeek", &[ts("2023-01-01T00:00:00Z")]),
            Value::Int(0),
        );
    }

    #[test]
    fn timestamp_accessors_in_time_zones() {
        let t = ts("2009-02-13T23:31:30Z");
        let early = ts("2009-02-13T02:00:00Z");
        for (name, at, zone, want) in [
            ("getDate", &t, "Australia/Sydney", 14),
            ("getDayOfMonth", &t, "US/Central", 12),
            ("getDayOfMonth", &t, "+11:00", 13),
            ("getDayOfMonth", &early, "-02:30", 11),
            ("getDayOfMonth", &early, "America/St_Johns", 11),
            ("getDayOfWeek", &t, "UTC", 5),
            ("getDayOfYear", &t, "US/Central", 43),
            ("getFullYear", &t, "-09:30", 2009),
            ("getHours", &t, "02:00", 1),
            ("getMinutes", &t, "Asia/Kathmandu", 16),
            ("getMonth", &t, "UTC", 1),
            ("getSeconds", &t, "-00:00", 30),
            ("getHours", &t, "America/Los_Angeles", 15),
            ("getHours", &t, "+05:30", 5),
            ("getMinutes", &t, "+05:30", 1),
            ("getMinutes", &t, "-00:30", 1),
            (
                "getFullYear",
                &ts("2009-12-31T23:00:00Z"),
                "Europe/Paris",
                2010,
            ),
        ] {
            assert_value(method(name, &[(*at).clone(), s(zone)]), Value::Int(want));
        }
        for zone in [
            "Mars/Olympus",
            "utc",
            "+5",
            "12:xx",
            "48:00",
            "Local",
            "9223372036854775807:00",
            "1:-9223372036854775808",
        ] {
            assert_eq!(
                kind(method("getHours", &[t.clone(), s(zone)])),
                ErrorKind::FunctionError,
                "{zone}"
            );
        }
    }

    #[test]
    fn the_reference_examples() {
        let t = ts("2026-03-15T08:05:09.250Z");
        let eve = ts("2026-12-31T23:30:00Z");
        for (name, at, zone, want) in [
            ("getMonth", &t, None, 2),
            ("getDayOfYear", &t, None, 73),
            ("getDayOfMonth", &t, None, 14),
            ("getDate", &t, None, 15),
            ("getDayOfWeek", &t, None, 0),
            ("getHours", &t, None, 8),
            ("getHours", &t, Some("+02:00"), 10),
            ("getHours", &t, Some("America/Los_Angeles"), 1),
            ("getFullYear", &eve, Some("+01:00"), 2027),
            ("getMonth", &eve, Some("+01:00"), 0),
            ("getDayOfYear", &eve, Some("+01:00"), 0),
            ("getDayOfMonth", &eve, Some("+01:00"), 0),
            ("getDate", &eve, Some("+01:00"), 1),
            ("getDayOfWeek", &eve, Some("+01:00"), 5),
            ("getMinutes", &t, Some("+05:30"), 35),
            ("getSeconds", &t, Some("UTC"), 9),
            ("getMilliseconds", &t, None, 250),
            ("getMilliseconds", &t, Some("UTC"), 250),
        ] {
            let mut args = vec![(*at).clone()];
            args.extend(zone.map(s));
            assert_value(method(name, &args), Value::Int(want));
        }
        assert_value(method("getMinutes", &[dur("1h30m")]), Value::Int(90));
        assert_value(method("getMilliseconds", &[dur("1.5s")]), Value::Int(1500));
        assert_value(call("_+_", &[dur("250ms"), dur("1.5s")]), dur("1750ms"));
        assert_value(
            call("int", &[ts("2026-01-01T00:00:00Z")]),
            Value::Int(1767225600),
        );
        assert_value(
            call("_+_", &[ts("2026-01-01T00:00:00Z"), dur("36h")]),
            ts("2026-01-02T12:00:00Z"),
        );
        assert_value(call("string", &[dur("90s")]), s("90s"));
        assert_value(
            call("timestamp", &[Value::Int(0)]),
            ts("1970-01-01T00:00:00Z"),
        );
        assert_value(call("int", &[Value::Double(2.9)]), Value::Int(2));
    }

    #[test]
    fn duration_accessors_are_totals() {
        assert_value(method("getHours", &[dur("10000s")]), Value::Int(2));
        assert_value(method("getMinutes", &[dur("3730s")]), Value::Int(62));
        assert_value(method("getSeconds", &[dur("3730s")]), Value::Int(3730));
        assert_value(
            method("getMilliseconds", &[dur("123.321456789s")]),
            Value::Int(123321),
        );
        assert_value(method("getMinutes", &[dur("-90s")]), Value::Int(-1));
        assert_value(method("getSeconds", &[dur("-1.5s")]), Value::Int(-1));
        assert_eq!(
            kind(method("getFullYear", &[dur("1s")])),
            ErrorKind::NoSuchOverload
        );
        assert_eq!(
            kind(method("getHours", &[dur("1s"), s("UTC")])),
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn string_predicates() {
        assert_value(
            method("contains", &[s("abababc"), s("ababc")]),
            Value::Bool(true),
        );
        assert_value(method("contains", &[s(""), s("x")]), Value::Bool(false));
        assert_value(
            method("contains", &[s("Straße"), s("aß")]),
            Value::Bool(true),
        );
        assert_value(
            method("startsWith", &[s("завтра"), s("за")]),
            Value::Bool(true),
        );
        assert_value(
            method("startsWith", &[s("foobar"), s("bar")]),
            Value::Bool(false),
        );
        assert_value(
            method("endsWith", &[s("🐱😀😛"), s("😛")]),
            Value::Bool(true),
        );
        assert_value(method("endsWith", &[s(""), s("")]), Value::Bool(true));
        assert_eq!(
            kind(method("contains", &[Value::bytes(*b"ab"), s("a")])),
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn matches_searches_anywhere() {
        assert_value(
            method("matches", &[s("hubba"), s("ubb")]),
            Value::Bool(true),
        );
        assert_value(
            call("matches", &[s("hubba"), s("^ubb")]),
            Value::Bool(false),
        );
        assert_value(
            method("matches", &[s(""), s("foo|bar")]),
            Value::Bool(false),
        );
        assert_value(method("matches", &[s("cows"), s("")]), Value::Bool(true));
        assert_value(
            method("matches", &[s("banana"), s("ba(na)*")]),
            Value::Bool(true),
        );
        assert_value(
            method("matches", &[s("🐱😀😀"), s("(a|😀){2}")]),
            Value::Bool(true),
        );
        // Served from the cache the second time.
        assert_value(
            call("matches", &[s("hubba"), s("^ubb")]),
            Value::Bool(false),
        );
        let e = err(method("matches", &[s("x"), s("(")]));
        assert_eq!(e.kind, ErrorKind::FunctionError);
        assert_eq!(e.function.as_deref(), Some("matches"));
    }

    #[test]
    fn optionals() {
        assert_value(
            method("hasValue", &[ok(call("optional.of", &[Value::Null]))]),
            Value::Bool(true),
        );
        assert_value(
            method("hasValue", &[ok(call("optional.none", &[]))]),
            Value::Bool(false),
        );
        assert_value(
            method("value", &[ok(call("optional.of", &[Value::Int(42)]))]),
            Value::Int(42),
        );
        for zero in [
            Value::Null,
            Value::Int(0),
            s(""),
            Value::list(vec![]),
            Value::map(OwnedMap::default()),
            Value::Double(0.0),
            dur("0"),
        ] {
            let o = ok(call("optional.ofNonZeroValue", &[zero]));
            assert_value(method("hasValue", &[o]), Value::Bool(false));
        }
        let o = ok(call("optional.ofNonZeroValue", &[Value::Int(42)]));
        assert_value(method("value", &[o]), Value::Int(42));
        let e = err(method("value", &[Value::Optional(None)]));
        assert!(e.message.contains("optional.none() dereference"));
        assert_eq!(
            kind(method("hasValue", &[Value::Int(1)])),
            ErrorKind::NoSuchOverload
        );
    }
}
