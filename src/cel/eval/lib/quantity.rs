//! The resource quantity library, as Kubernetes defines it for its CEL
//! expressions (`kubernetes.Quantity`).
//!
//! ```cel
//! quantity("1.5Gi").isGreaterThan(quantity("1G"))
//! quantity("500m").add(quantity("1")).compareTo(quantity("1.5")) == 0
//! sign(quantity("-1k")) == -1
//! ```
//!
//! A quantity is written as Kubernetes reads it: an optional sign, a decimal
//! number (`12`, `1.5`, `.5`, `5.`), then a suffix: a decimal SI one (`n`,
//! `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`), a binary SI one (`Ki`,
//! `Mi`, `Gi`, `Ti`, `Pi`, `Ei`) or a decimal exponent (`e3`, `E-2`). Its
//! value is exact: a finer value than a nano (`1e-12`) is rounded away from
//! zero to the next nano, a binary SI quantity is capped at 2^63 - 1 in
//! magnitude, as Kubernetes does. Quantities compare by value
//! (`quantity("1k") == quantity("1000")`).
//!
//! celgate holds a quantity as a 128-bit integer times a power of ten: a
//! value (parsed or computed by `add`/`sub`) that needs more than 38
//! significant digits is an error, where Kubernetes would carry on with
//! arbitrary precision.

use crate::cel::eval::{Ctx, Error, ErrorKind, Function, Object, Value};
use std::any::Any;
use std::cmp::Ordering;
use std::fmt;

/// The type name, as `type(x)` gives it and an expression writes it.
pub const TYPE: &str = "kubernetes.Quantity";
pub const TYPES: &[&str] = &[TYPE];

pub const FUNCTIONS: &[Function] = &[
    Function::global("quantity", 1, quantity),
    Function::global("isQuantity", 1, is_quantity),
    Function::global("sign", 1, sign),
    Function::method("isInteger", 0, is_integer),
    Function::method("asInteger", 0, as_integer),
    Function::method("asApproximateFloat", 0, as_approximate_float),
    Function::method("add", 1, add),
    Function::method("sub", 1, sub),
    Function::method("isGreaterThan", 1, is_greater_than),
    Function::method("isLessThan", 1, is_less_than),
    Function::method("compareTo", 1, compare_to),
];

/// The declarations the type checker reads.
pub const DECLS: &str = "
quantity(string) -> kubernetes.Quantity
isQuantity(string) -> bool
sign(kubernetes.Quantity) -> int
(kubernetes.Quantity).isInteger() -> bool
(kubernetes.Quantity).asInteger() -> int
(kubernetes.Quantity).asApproximateFloat() -> double
(kubernetes.Quantity).add(kubernetes.Quantity) -> kubernetes.Quantity
(kubernetes.Quantity).add(int) -> kubernetes.Quantity
(kubernetes.Quantity).sub(kubernetes.Quantity) -> kubernetes.Quantity
(kubernetes.Quantity).sub(int) -> kubernetes.Quantity
(kubernetes.Quantity).isGreaterThan(kubernetes.Quantity) -> bool
(kubernetes.Quantity).isLessThan(kubernetes.Quantity) -> bool
(kubernetes.Quantity).compareTo(kubernetes.Quantity) -> int
";

/// The library's values have no fields: they are passed to its functions.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = &[(TYPE, &[])];

/// A quantity (`kubernetes.Quantity`): `coef × 10^exp`, with no trailing
/// zero in `coef` (`exp` is 0 for zero) and `exp >= -9`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    coef: i128,
    exp: i64,
}

/// The largest binary SI quantity Kubernetes keeps (2^63 - 1).
const BINARY_CAP: i128 = i64::MAX as i128;

/// Why a string is not a quantity, in Kubernetes' words.
const FORMAT: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const NUMERIC: &str = "unable to parse numeric part of quantity";
const SUFFIX: &str = "unable to parse quantity's suffix";
const DIGITS: &str = "quantity needs more than 38 significant digits";

impl Quantity {
    const ZERO: Quantity = Quantity { coef: 0, exp: 0 };

    /// `coef × 10^exp`, normalized.
    fn new(mut coef: i128, mut exp: i64) -> Quantity {
        if coef == 0 {
            return Quantity::ZERO;
        }
        while coef % 10 == 0 {
            coef /= 10;
            exp += 1;
        }
        Quantity { coef, exp }
    }

    fn from_int(i: i64) -> Quantity {
        Quantity::new(i128::from(i), 0)
    }

    /// The order of the two values.
    fn cmp(&self, other: &Quantity) -> Ordering {
        let (sa, sb) = (self.coef.signum(), other.coef.signum());
        if sa != sb || sa == 0 {
            return sa.cmp(&sb);
        }
        let m = magnitude_cmp(
            (self.coef.unsigned_abs(), self.exp),
            (other.coef.unsigned_abs(), other.exp),
        );
        if sa < 0 {
            m.reverse()
        } else {
            m
        }
    }

    /// `self + other`, or an error when it needs more than 128 bits.
    fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        if self.coef == 0 {
            return Some(*other);
        }
        if other.coef == 0 {
            return Some(*self);
        }
        let exp = self.exp.min(other.exp);
        let a = scale(self.coef, self.exp - exp)?;
        let b = scale(other.coef, other.exp - exp)?;
        Some(Quantity::new(a.checked_add(b)?, exp))
    }

    fn neg(&self) -> Quantity {
        Quantity {
            coef: -self.coef,
            exp: self.exp,
        }
    }

    /// The value as an `int` when it is a whole number in range.
    fn as_i64(&self) -> Option<i64> {
        if self.exp < 0 {
            return None;
        }
        i64::try_from(scale(self.coef, self.exp)?).ok()
    }

    fn as_f64(&self) -> f64 {
        format!("{}e{}", self.coef, self.exp)
            .parse()
            .unwrap_or(f64::NAN)
    }
}

/// `coef × 10^by`, when it fits.
fn scale(coef: i128, by: i64) -> Option<i128> {
    let by = u32::try_from(by).ok()?;
    10i128.checked_pow(by).and_then(|p| coef.checked_mul(p))
}

fn digits(n: u128) -> i64 {
    n.checked_ilog10().map_or(0, |d| i64::from(d) + 1)
}

/// The order of two non-zero magnitudes `c × 10^e`.
fn magnitude_cmp((ca, ea): (u128, i64), (cb, eb): (u128, i64)) -> Ordering {
    let (oa, ob) = (digits(ca) + ea, digits(cb) + eb);
    if oa != ob {
        return oa.cmp(&ob);
    }
    // Same order of magnitude: the exponents differ by fewer than 40.
    let exp = ea.min(eb);
    let up = |c: u128, e: i64| {
        u32::try_from(e - exp)
            .ok()
            .and_then(|by| 10u128.checked_pow(by))
            .and_then(|p| c.checked_mul(p))
    };
    match (up(ca, ea), up(cb, eb)) {
        (Some(a), Some(b)) => a.cmp(&b),
        (None, _) => Ordering::Greater,
        (_, None) => Ordering::Less,
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exp == 0 {
            write!(f, "{}", self.coef)
        } else {
            write!(f, "{}e{}", self.coef, self.exp)
        }
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "quantity({:?})", self.to_string())
    }
}

impl Object for Quantity {
    fn type_name(&self) -> &str {
        TYPE
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other
            .as_any()
            .downcast_ref::<Quantity>()
            .is_some_and(|o| self.cmp(o) == Ordering::Equal)
    }
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.to_string()))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The suffix's meaning: a power of ten or of two.
enum Suffix {
    Ten(i64),
    Two(u32),
}

fn suffix(s: &str) -> Option<Suffix> {
    Some(match s {
        "n" => Suffix::Ten(-9),
        "u" => Suffix::Ten(-6),
        "m" => Suffix::Ten(-3),
        "" => Suffix::Ten(0),
        "k" => Suffix::Ten(3),
        "M" => Suffix::Ten(6),
        "G" => Suffix::Ten(9),
        "T" => Suffix::Ten(12),
        "P" => Suffix::Ten(15),
        "E" => Suffix::Ten(18),
        "Ki" => Suffix::Two(10),
        "Mi" => Suffix::Two(20),
        "Gi" => Suffix::Two(30),
        "Ti" => Suffix::Two(40),
        "Pi" => Suffix::Two(50),
        "Ei" => Suffix::Two(60),
        _ => {
            let rest = s.strip_prefix(['e', 'E']).filter(|r| !r.is_empty())?;
            // Kubernetes reads the exponent as a 64-bit integer and keeps
            // its low 32 bits.
            let e: i64 = rest.parse().ok()?;
            Suffix::Ten(i64::from(e as i32))
        }
    })
}

/// The parts of a quantity's text: sign, integer digits, fraction digits,
/// suffix.
fn split(s: &str) -> Result<(bool, &str, &str, &str), &'static str> {
    let b = s.as_bytes();
    let mut pos = 0;
    let negative = match b.first() {
        Some(b'-') => {
            pos = 1;
            true
        }
        Some(b'+') => {
            pos = 1;
            false
        }
        _ => false,
    };
    let digits_end =
        |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let int_end = digits_end(pos);
    let int = &s[pos..int_end];
    pos = int_end;
    let mut frac = "";
    if b.get(pos) == Some(&b'.') {
        let end = digits_end(pos + 1);
        frac = &s[pos + 1..end];
        pos = end;
    }
    let suffix_start = pos;
    while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if matches!(b.get(pos), Some(b'-' | b'+')) {
        pos += 1;
    }
    if digits_end(pos) != b.len() {
        return Err(FORMAT);
    }
    Ok((negative, int, frac, &s[suffix_start..]))
}

/// `digits × m`, in place (most significant digit first).
fn multiply(digits: &mut Vec<u8>, m: u64) {
    let mut carry: u64 = 0;
    for d in digits.iter_mut().rev() {
        let v = u64::from(*d) * m + carry;
        *d = (v % 10) as u8;
        carry = v / 10;
    }
    let mut head = Vec::new();
    while carry > 0 {
        head.push((carry % 10) as u8);
        carry /= 10;
    }
    head.reverse();
    if !head.is_empty() {
        head.append(digits);
        *digits = head;
    }
}

/// Adds one unit of the last digit, in place.
fn increment(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

/// Reads a quantity as Kubernetes does.
fn parse(s: &str) -> Result<Quantity, &'static str> {
    if s.is_empty() {
        return Err(FORMAT);
    }
    let (negative, int, frac, suf) = split(s)?;
    let suf = suffix(suf).ok_or(SUFFIX)?;
    if int.is_empty() && frac.is_empty() {
        // No digit at all (`-`, `.`, `Mi`): zero, except where Kubernetes
        // takes its slow path, whose decimal reader wants a digit.
        let slow = match suf {
            Suffix::Ten(e) => e < -9,
            Suffix::Two(e) => e >= 50,
        };
        return if slow {
            Err(NUMERIC)
        } else {
            Ok(Quantity::ZERO)
        };
    }
    let int = int.trim_start_matches('0');
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|c| c - b'0').collect();
    // The value is `digits × 10^exp`.
    let mut exp: i64 = -(frac.len() as i64);
    match suf {
        Suffix::Ten(e) => exp += e,
        Suffix::Two(e) => multiply(&mut digits, 1u64 << e),
    }
    // Rounded away from zero to a multiple of a nano.
    if exp < -9 {
        let drop = usize::try_from(-9 - exp).unwrap_or(usize::MAX);
        let keep = digits.len().saturating_sub(drop);
        let inexact = digits[keep..].iter().any(|&d| d != 0);
        digits.truncate(keep);
        if inexact {
            increment(&mut digits);
        }
        exp = -9;
    }
    let mut coef: i128 = 0;
    let start = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
    for &d in &digits[start..] {
        coef = coef
            .checked_mul(10)
            .and_then(|c| c.checked_add(i128::from(d)))
            .ok_or(DIGITS)?;
    }
    let mut q = Quantity::new(coef, exp);
    if matches!(suf, Suffix::Two(_)) && q.cmp(&Quantity::new(BINARY_CAP, 0)) == Ordering::Greater {
        q = Quantity::new(BINARY_CAP, 0);
    }
    Ok(if negative { q.neg() } else { q })
}

/// The text argument, charged by its length (a binary suffix multiplies
/// the digits once more).
fn text<'a>(ctx: &mut Ctx<'_>, v: &'a Value<'_>) -> Result<Option<&'a str>, Error> {
    match v {
        Value::String(s) => {
            ctx.charge_bytes(s.len().saturating_mul(2))?;
            Ok(Some(s.as_str()))
        }
        _ => Ok(None),
    }
}

fn quantity<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("quantity", args));
    };
    parse(s)
        .map(Value::object)
        .map_err(|m| Error::function("quantity", m))
}

fn is_quantity<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("isQuantity", args));
    };
    Ok(Value::Bool(parse(s).is_ok()))
}

/// The quantity at `args[i]`.
fn at<'a>(name: &str, args: &'a [Value<'_>], i: usize) -> Result<&'a Quantity, Error> {
    args.get(i)
        .and_then(Value::downcast::<Quantity>)
        .ok_or_else(|| Error::no_overload(name, args))
}

fn sign<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Int(at("sign", args, 0)?.coef.signum() as i64))
}

fn is_integer<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(at("isInteger", args, 0)?.as_i64().is_some()))
}

fn as_integer<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    at("asInteger", args, 0)?
        .as_i64()
        .map(Value::Int)
        .ok_or_else(|| Error::function("asInteger", "cannot convert value to integer"))
}

fn as_approximate_float<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Double(at("asApproximateFloat", args, 0)?.as_f64()))
}

/// The operand of `add` and `sub`: a quantity or an `int`.
fn operand(name: &str, args: &[Value<'_>]) -> Result<(Quantity, Quantity), Error> {
    let a = *at(name, args, 0)?;
    let b = match args.get(1) {
        Some(Value::Int(i)) => Quantity::from_int(*i),
        _ => *at(name, args, 1)?,
    };
    Ok((a, b))
}

fn sum(name: &str, a: &Quantity, b: &Quantity) -> Result<Value<'static>, Error> {
    a.checked_add(b)
        .map(Value::object)
        .ok_or_else(|| Error::new(ErrorKind::Overflow, format!("{name}: the result {DIGITS}")))
}

fn add<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (a, b) = operand("add", args)?;
    sum("add", &a, &b)
}

fn sub<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (a, b) = operand("sub", args)?;
    sum("sub", &a, &b.neg())
}

fn order(name: &str, args: &[Value<'_>]) -> Result<Ordering, Error> {
    Ok(at(name, args, 0)?.cmp(at(name, args, 1)?))
}

fn is_greater_than<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(
        order("isGreaterThan", args)? == Ordering::Greater,
    ))
}

fn is_less_than<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(order("isLessThan", args)? == Ordering::Less))
}

fn compare_to<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Int(order("compareTo", args)? as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::call as call_in;
    use crate::cel::eval::lib::test_global as global;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::Meter;

    fn q(s: &str) -> Value<'static> {
        global("quantity", &[Value::string(s)]).unwrap_or_else(|e| panic!("quantity({s:?}): {e}"))
    }

    fn parsed(s: &str) -> Quantity {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn cmp(a: &str, b: &str) -> i64 {
        match method("compareTo", &[q(a), q(b)]) {
            Ok(Value::Int(i)) => i,
            other => panic!("{other:?}"),
        }
    }

    fn int(v: Result<Value<'_>, Error>) -> i64 {
        match v {
            Ok(Value::Int(i)) => i,
            other => panic!("not an int: {other:?}"),
        }
    }

    #[test]
    fn quantities_parse_as_kubernetes_reads_them() {
        let cases: &[(&str, i128, i64)] = &[
            ("0", 0, 0),
            ("12Mi", 12 << 20, 0),
            ("1.5G", 15, 8),
            ("200k", 2, 5),
            ("1Ki", 1024, 0),
            ("0.5Ki", 512, 0),
            ("0.1Ki", 1024, -1),
            ("1e3", 1, 3),
            ("1E3", 1, 3),
            ("1e+3", 1, 3),
            ("15e-1", 15, -1),
            ("-1.5", -15, -1),
            ("+2", 2, 0),
            ("100m", 1, -1),
            ("1n", 1, -9),
            ("1u", 1, -6),
            ("1E", 1, 18),
            ("5.", 5, 0),
            (".5", 5, -1),
            ("007", 7, 0),
            // Finer than a nano: rounded away from zero.
            ("1e-12", 1, -9),
            ("0.9n", 1, -9),
            ("-1.0000000001", -1_000_000_001, -9),
            ("1.0000000000", 1, 0),
            // A binary quantity is capped at 2^63 - 1, a decimal one is not.
            ("8Ei", i64::MAX as i128, 0),
            ("-16Ei", -(i64::MAX as i128), 0),
            (
                "9999999999999999999999999999999999999G",
                9_999_999_999_999_999_999_999_999_999_999_999_999,
                9,
            ),
            ("1e100", 1, 100),
            // No digit at all is zero.
            ("-", 0, 0),
            (".", 0, 0),
            ("Mi", 0, 0),
            // Kubernetes keeps the low 32 bits of the exponent.
            ("1e4294967297", 1, 1),
        ];
        for (s, coef, exp) in cases {
            assert_eq!(parsed(s), Quantity::new(*coef, *exp), "{s}");
            assert!(matches!(
                global("isQuantity", &[Value::str(s)]),
                Ok(Value::Bool(true))
            ));
        }
        let refused: &[(&str, &str)] = &[
            ("", FORMAT),
            ("10Mo", FORMAT),
            ("10Mm", SUFFIX),
            ("200K", SUFFIX),
            ("Three", FORMAT),
            ("1,3G", FORMAT),
            ("1.1.M", FORMAT),
            ("1+1.0M", FORMAT),
            ("0.1mi", SUFFIX),
            ("0.1am", FORMAT),
            ("aoeu", FORMAT),
            (".5i", SUFFIX),
            ("1i", SUFFIX),
            ("-3.01e-", SUFFIX),
            ("1e", SUFFIX),
            ("1e99999999999999999999", SUFFIX),
            (" 1", FORMAT),
            ("1 ", FORMAT),
            ("Ei", NUMERIC),
            ("e-20", NUMERIC),
            ("1Ki5", SUFFIX),
            ("1234567890123456789012345678901234567890", DIGITS),
        ];
        for (s, why) in refused {
            assert_eq!(parse(s), Err(*why), "{s}");
            assert!(matches!(
                global("isQuantity", &[Value::str(s)]),
                Ok(Value::Bool(false))
            ));
            let e = global("quantity", &[Value::str(s)]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::FunctionError);
            assert_eq!(e.message, *why);
        }
        assert_eq!(parse("+.e-20"), Err(NUMERIC));
        let e = global("quantity", &[Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn equality_and_order_are_by_value() {
        assert!(equals(&q("200M"), &q("0.2G")));
        assert!(equals(&q("1k"), &q("1000")));
        assert!(equals(&q("2M"), &q("0.002G")) && equals(&q("2000k"), &q("2M")));
        assert!(!equals(&q("200M"), &q("0.3G")));
        assert!(!equals(&q("1"), &Value::Int(1)));
        assert_eq!(cmp("200M", "0.2G"), 0);
        assert_eq!(cmp("50M", "50Mi"), -1);
        assert_eq!(cmp("50Mi", "50M"), 1);
        assert_eq!(cmp("-1", "1n"), -1);
        assert_eq!(cmp("-2", "-1"), -1);
        assert_eq!(cmp("0", "-0"), 0);
        assert_eq!(cmp("1e100", "99999999999999999999999999999999999999"), 1);
        assert_eq!(cmp("-1e100", "-1e99"), -1);
        assert_eq!(cmp("1.7e38", "9e38"), -1);
        let t = |name: &str, a: &str, b: &str| {
            matches!(method(name, &[q(a), q(b)]), Ok(Value::Bool(true)))
        };
        assert!(t("isLessThan", "50M", "50Mi") && !t("isLessThan", "100M", "50M"));
        assert!(t("isGreaterThan", "150Mi", "100Mi") && !t("isGreaterThan", "50M", "100M"));
        let e = method("isLessThan", &[q("1"), Value::Int(2)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn arithmetic() {
        let add = |a: Value<'static>, b: Value<'static>| method("add", &[a, b]).unwrap();
        let sub = |a: Value<'static>, b: Value<'static>| method("sub", &[a, b]).unwrap();
        assert!(equals(&add(q("50k"), q("20")), &q("50.02k")));
        assert!(equals(&add(q("50k"), Value::Int(20)), &q("50020")));
        assert!(equals(&sub(q("50k"), q("20")), &q("49.98k")));
        assert!(equals(&sub(q("50k"), Value::Int(20000)), &q("30k")));
        let chain = sub(
            sub(add(q("50k"), Value::Int(20)), q("100k")),
            Value::Int(-50000),
        );
        assert_eq!(int(method("asInteger", &[chain])), 20);
        let neg = sub(add(q("50k"), Value::Int(20)), q("100k"));
        assert_eq!(int(method("asInteger", &[neg])), -49980);
        // Beyond 2^63: exact, as Kubernetes' arbitrary precision is.
        let big = q("9999999999999999999999999999999999999");
        let (a, b) = (add(big.clone(), q("1")), add(big, q("2")));
        assert_eq!(int(method("compareTo", &[a, b])), -1);
        assert!(equals(&sub(q("1"), q("1")), &q("0")));
        assert!(equals(&add(q("0"), q("1.5")), &q("1500m")));
        assert!(equals(
            &add(q("1.5"), Value::Int(i64::MIN)),
            &q("-9223372036854775806.5")
        ));
        // More than 128 bits: an overflow error.
        let e = method("add", &[q("1e100"), q("1")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overflow);
        let e = method("sub", &[q("1n"), q("1e30")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overflow);
        let e = method("add", &[q("1"), Value::str("1")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn conversions() {
        let is_int = |s: &str| matches!(method("isInteger", &[q(s)]), Ok(Value::Bool(true)));
        assert_eq!(int(method("asInteger", &[q("50k")])), 50000);
        assert_eq!(int(method("asInteger", &[q("-8Ei")])), -i64::MAX);
        assert_eq!(int(method("asInteger", &[q("1.0")])), 1);
        assert!(is_int("50") && is_int("50k") && is_int("50000000G") && is_int("1000m"));
        assert!(!is_int("1.5") && !is_int("1m") && !is_int("9223372036854775808"));
        assert!(!is_int("9999999999999999999999999999999999999G"));
        let e = method("asInteger", &[q("9999999999999999999999999999999999999G")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FunctionError);
        assert_eq!(e.message, "cannot convert value to integer");
        assert!(method("asInteger", &[q("0.5")]).is_err());
        let f = |s: &str| match method("asApproximateFloat", &[q(s)]) {
            Ok(Value::Double(d)) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(f("50.703k"), 50703.0);
        assert_eq!(f("1.5"), 1.5);
        assert_eq!(f("-1Ki"), -1024.0);
        assert_eq!(f("1e400"), f64::INFINITY);
        assert_eq!(f("-1e400"), f64::NEG_INFINITY);
        assert_eq!(f("0"), 0.0);
        let s = |x: &str| int(global("sign", &[q(x)]));
        assert_eq!((s("-1k"), s("0"), s("1n")), (-1, 0, 1));
        assert_eq!(
            global("sign", &[Value::Int(1)]).unwrap_err().kind,
            ErrorKind::NoSuchOverload
        );
    }

    #[test]
    fn cost_is_charged_by_length() {
        let long = format!("1.{}Ei", "0".repeat(100_000));
        let mut small = Ctx::new(None, Meter::new(100));
        let e = call_in(
            &mut small,
            "quantity",
            false,
            &[Value::string(long.as_str())],
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        // Within a budget it is read exactly.
        assert_eq!(parsed(&long), Quantity::new(1 << 60, 0));
        let mut enough = Ctx::new(None, Meter::new(100));
        assert!(call_in(&mut enough, "isQuantity", false, &[Value::str("1.5Gi")]).is_ok());
    }
}
