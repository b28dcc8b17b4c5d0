//! The semantic version library, as Kubernetes defines it for its CEL
//! expressions (`kubernetes.Semver`).
//!
//! ```cel
//! semver("1.2.3-rc.1").isLessThan(semver("1.2.3"))
//! semver(object.attributes.request.http.headers["x-client-version"], true).major() >= 2
//! isSemver("1.2.3+build.7")
//! ```
//!
//! `semver(s)` reads a version of [Semantic Versioning 2.0.0] strictly:
//! `MAJOR.MINOR.PATCH`, then an optional `-prerelease` and `+build`, no
//! leading zero in a number, no `v` prefix, no whitespace. `semver(s, true)`
//! normalizes first, as Kubernetes does: one leading `v` is dropped, leading
//! zeros of the three numbers are removed and a missing minor or patch number
//! is `0` (`semver("v01.2", true) == semver("1.2.0")`); a shortened version
//! cannot carry a prerelease or build. Versions compare by precedence:
//! numbers numerically, a version with a prerelease below the same version
//! without one, prerelease identifiers one by one (numeric ones numerically
//! and below alphanumeric ones, which compare as ASCII), a longer list of
//! identifiers above its prefix; build metadata is ignored, by `==` too.
//! Each number must fit an unsigned 64-bit integer; `major()`, `minor()` and
//! `patch()` of one above the largest `int` are an overflow error.

use crate::cel::eval::{Ctx, Error, Function, Object, Value};
use std::any::Any;
use std::cmp::Ordering;
use std::fmt;

/// The type name, as `type(x)` gives it and an expression writes it.
pub const TYPE: &str = "kubernetes.Semver";
pub const TYPES: &[&str] = &[TYPE];

pub const FUNCTIONS: &[Function] = &[
    Function::global("semver", 1, semver),
    Function::global("semver", 2, semver),
    Function::global("isSemver", 1, is_semver),
    Function::global("isSemver", 2, is_semver),
    Function::method("major", 0, major),
    Function::method("minor", 0, minor),
    Function::method("patch", 0, patch),
    Function::method("isGreaterThan", 1, is_greater_than),
    Function::method("isLessThan", 1, is_less_than),
    Function::method("compareTo", 1, compare_to),
];

/// The declarations the type checker reads.
pub const DECLS: &str = "
semver(string) -> kubernetes.Semver
semver(string, bool) -> kubernetes.Semver
isSemver(string) -> bool
isSemver(string, bool) -> bool
(kubernetes.Semver).major() -> int
(kubernetes.Semver).minor() -> int
(kubernetes.Semver).patch() -> int
(kubernetes.Semver).isGreaterThan(kubernetes.Semver) -> bool
(kubernetes.Semver).isLessThan(kubernetes.Semver) -> bool
(kubernetes.Semver).compareTo(kubernetes.Semver) -> int
";

/// The library's values have no fields: they are passed to its functions.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = &[(TYPE, &[])];

/// One dot-separated identifier of a prerelease.
#[derive(Clone, PartialEq, Eq)]
enum Pre {
    Num(u64),
    Text(Box<str>),
}

impl Pre {
    fn cmp(&self, other: &Pre) -> Ordering {
        match (self, other) {
            (Pre::Num(a), Pre::Num(b)) => a.cmp(b),
            (Pre::Num(_), Pre::Text(_)) => Ordering::Less,
            (Pre::Text(_), Pre::Num(_)) => Ordering::Greater,
            (Pre::Text(a), Pre::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        }
    }
}

/// A semantic version (`kubernetes.Semver`).
#[derive(Clone)]
pub struct Semver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Pre>,
    build: Vec<Box<str>>,
}

impl Semver {
    /// Precedence order (build metadata ignored).
    pub fn precedence(&self, other: &Semver) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        match a.cmp(b) {
                            Ordering::Equal => {}
                            o => return o,
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

impl fmt::Display for Semver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (i, p) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            match p {
                Pre::Num(n) => write!(f, "{n}")?,
                Pre::Text(t) => f.write_str(t)?,
            }
        }
        for (i, b) in self.build.iter().enumerate() {
            f.write_str(if i == 0 { "+" } else { "." })?;
            f.write_str(b)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Semver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "semver({:?})", self.to_string())
    }
}

impl Object for Semver {
    fn type_name(&self) -> &str {
        TYPE
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other
            .as_any()
            .downcast_ref::<Semver>()
            .is_some_and(|o| self.precedence(o) == Ordering::Equal)
    }
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.to_string()))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The text quoted in a message: what was given, cut short when long.
fn quoted(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        return format!("{s:?}");
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("\"{}…\" ({} bytes)", &s[..end], s.len())
}

fn digits_only(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn alphanumeric(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn leading_zero(s: &str) -> bool {
    s.len() > 1 && s.starts_with('0')
}

/// A number of the version: decimal digits, no leading zero, at most
/// `u64::MAX`.
fn number(s: &str, what: &str) -> Result<u64, String> {
    if !digits_only(s) {
        return Err(format!(
            "invalid character(s) found in {what} number {}",
            quoted(s)
        ));
    }
    if leading_zero(s) {
        return Err(format!(
            "{what} number must not contain leading zeroes {}",
            quoted(s)
        ));
    }
    if s.is_empty() {
        return Err(format!("{what} number is empty"));
    }
    s.parse()
        .map_err(|_| format!("{what} number {} is out of range", quoted(s)))
}

/// `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`, strictly.
fn parse(s: &str) -> Result<Semver, String> {
    if s.is_empty() {
        return Err("version string empty".into());
    }
    let mut parts = s.splitn(3, '.');
    let (Some(major), Some(minor), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("no Major.Minor.Patch elements found".into());
    };
    let major = number(major, "major")?;
    let minor = number(minor, "minor")?;
    let (rest, build) = match rest.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (rest, None),
    };
    let (patch, pre) = match rest.split_once('-') {
        Some((p, pre)) => (p, Some(pre)),
        None => (rest, None),
    };
    let patch = number(patch, "patch")?;
    let mut v = Semver {
        major,
        minor,
        patch,
        pre: Vec::new(),
        build: Vec::new(),
    };
    for id in pre.into_iter().flat_map(|p| p.split('.')) {
        if id.is_empty() {
            return Err("prerelease is empty".into());
        }
        if digits_only(id) {
            if leading_zero(id) {
                return Err(format!(
                    "numeric prerelease version must not contain leading zeroes {}",
                    quoted(id)
                ));
            }
            let n = id
                .parse()
                .map_err(|_| format!("numeric prerelease {} is out of range", quoted(id)))?;
            v.pre.push(Pre::Num(n));
        } else if alphanumeric(id) {
            v.pre.push(Pre::Text(id.into()));
        } else {
            return Err(format!(
                "invalid character(s) found in prerelease {}",
                quoted(id)
            ));
        }
    }
    for id in build.into_iter().flat_map(|b| b.split('.')) {
        if id.is_empty() {
            return Err("build meta data is empty".into());
        }
        if !alphanumeric(id) {
            return Err(format!(
                "invalid character(s) found in build meta data {}",
                quoted(id)
            ));
        }
        v.build.push(id.into());
    }
    Ok(v)
}

/// Kubernetes' normalization, then [`parse`]: one leading `v` dropped,
/// leading zeros of the first three dot-separated parts removed, a missing
/// minor or patch number filled with `0`.
fn normalize_and_parse(s: &str) -> Result<Semver, String> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut parts: Vec<String> = s
        .splitn(3, '.')
        .map(|p| {
            if p.len() <= 1 {
                return p.to_owned();
            }
            let t = p.trim_start_matches('0');
            if t.starts_with(|c: char| c.is_ascii_digit()) {
                t.to_owned()
            } else {
                format!("0{t}")
            }
        })
        .collect();
    if parts.len() < 3 {
        if parts.last().is_some_and(|p| p.contains(['+', '-'])) {
            return Err("short version cannot contain PreRelease/Build meta data".into());
        }
        parts.resize(3, "0".to_owned());
    }
    parse(&parts.join("."))
}

/// The version string and whether to normalize it, charged by its length.
fn args<'a>(
    ctx: &mut Ctx<'_>,
    name: &str,
    args: &'a [Value<'_>],
) -> Result<(&'a str, bool), Error> {
    let normalize = match args.get(1) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::no_overload(name, args)),
    };
    match &args[0] {
        Value::String(s) => {
            ctx.charge_bytes(s.len())?;
            Ok((s.as_str(), normalize))
        }
        _ => Err(Error::no_overload(name, args)),
    }
}

fn read(s: &str, normalize: bool) -> Result<Semver, String> {
    if normalize {
        normalize_and_parse(s)
    } else {
        parse(s)
    }
}

fn semver<'r>(ctx: &mut Ctx<'r>, a: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (s, normalize) = args(ctx, "semver", a)?;
    read(s, normalize)
        .map(Value::object)
        .map_err(|m| Error::function("semver", format!("invalid semantic version: {m}")))
}

fn is_semver<'r>(ctx: &mut Ctx<'r>, a: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (s, normalize) = args(ctx, "isSemver", a)?;
    Ok(Value::Bool(read(s, normalize).is_ok()))
}

/// The version a method is called on.
fn receiver<'a>(name: &str, args: &'a [Value<'_>]) -> Result<&'a Semver, Error> {
    args.first()
        .and_then(Value::downcast::<Semver>)
        .ok_or_else(|| Error::no_overload(name, args))
}

/// The receiver and the version it is compared with.
fn pair(name: &str, args: &[Value<'_>]) -> Result<Ordering, Error> {
    let a = receiver(name, args)?;
    let b = args
        .get(1)
        .and_then(Value::downcast::<Semver>)
        .ok_or_else(|| Error::no_overload(name, args))?;
    Ok(a.precedence(b))
}

fn int(name: &str, n: u64) -> Result<Value<'static>, Error> {
    i64::try_from(n)
        .map(Value::Int)
        .map_err(|_| Error::overflow(name))
}

fn major<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    int("major", receiver("major", args)?.major)
}

fn minor<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    int("minor", receiver("minor", args)?.minor)
}

fn patch<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    int("patch", receiver("patch", args)?.patch)
}

fn is_greater_than<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(
        pair("isGreaterThan", args)? == Ordering::Greater,
    ))
}

fn is_less_than<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Bool(pair("isLessThan", args)? == Ordering::Less))
}

fn compare_to<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    Ok(Value::Int(pair("compareTo", args)? as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::call as call_in;
    use crate::cel::eval::lib::test_global as global;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::{ErrorKind, Meter};

    fn v(s: &str) -> Value<'static> {
        global("semver", &[Value::string(s)]).unwrap_or_else(|e| panic!("semver({s:?}): {e}"))
    }

    fn is(s: &str) -> bool {
        matches!(
            global("isSemver", &[Value::string(s)]),
            Ok(Value::Bool(true))
        )
    }

    fn is_normalized(s: &str) -> bool {
        matches!(
            global("isSemver", &[Value::string(s), Value::Bool(true)]),
            Ok(Value::Bool(true))
        )
    }

    fn cmp(a: &str, b: &str) -> i64 {
        match method("compareTo", &[v(a), v(b)]) {
            Ok(Value::Int(i)) => i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_parse_strictly() {
        for good in [
            "0.0.0",
            "1.2.3",
            "1.2.3-beta.1+build.1",
            "1.0.0-alpha-1",
            "1.0.0+b-c.d",
            "18446744073709551615.0.0",
            "1.0.0-0.3.7",
            "1.0.0-x.7.z.92",
        ] {
            assert!(is(good), "{good}");
        }
        for bad in [
            "",
            "v1.0.0",
            " 1.0.0",
            "1.0.0 ",
            "1. 0.0",
            "01.01.01",
            "1.02.0",
            "1.0.03",
            "1",
            "1.1",
            "1.2.3.4",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-a..b",
            "1.2.3-01",
            "1.2.3-a_b",
            "1.2.3+a+b",
            "18446744073709551616.0.0",
            "..",
            "1..3",
            "a.b.c",
        ] {
            assert!(!is(bad), "{bad}");
            let e = global("semver", &[Value::string(bad)]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::FunctionError, "{bad}");
        }
        let e = global("semver", &[Value::str("v1.0")]).unwrap_err();
        assert!(e.message.contains("Major.Minor.Patch"), "{}", e.message);
        let e = global("semver", &[Value::str("1.01.0")]).unwrap_err();
        assert!(e.message.contains("leading zeroes"), "{}", e.message);
        let e = global("isSemver", &[Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn normalization() {
        for good in [
            "v1.0.0",
            "01.01.01",
            "1",
            "1.1",
            "v01.01",
            "1.2.3-rc.1",
            "0",
            "v1.0.00",
        ] {
            assert!(is_normalized(good), "{good}");
        }
        for bad in [
            "", " 1.0.0", "1.0.0 ", "1. 0.0", "1-rc", "1.1+b", "vv1.0.0", "v",
        ] {
            assert!(!is_normalized(bad), "{bad}");
        }
        let n = global("semver", &[Value::str("v01.01"), Value::Bool(true)]).unwrap();
        assert!(equals(&n, &v("1.1.0")));
        let n = global("semver", &[Value::str("1.2.00-rc"), Value::Bool(true)]).unwrap();
        assert!(equals(&n, &v("1.2.0-rc")));
        // Normalization off is the strict reading.
        assert!(global("semver", &[Value::str("v1.0.0"), Value::Bool(false)]).is_err());
        let e = global("semver", &[Value::str("1-rc"), Value::Bool(true)]).unwrap_err();
        assert!(e.message.contains("short version"), "{}", e.message);
    }

    #[test]
    fn parts() {
        let x = v("10.20.30-rc.1+b");
        let part = |name: &str| method(name, std::slice::from_ref(&x)).unwrap();
        assert!(equals(&part("major"), &Value::Int(10)));
        assert!(equals(&part("minor"), &Value::Int(20)));
        assert!(equals(&part("patch"), &Value::Int(30)));
        let e = method("major", &[v("18446744073709551615.0.0")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overflow);
        let e = method("major", &[Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn precedence_follows_the_specification() {
        // The ordering example of Semantic Versioning 2.0.0, §11.
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "2.0.0",
            "10.0.0",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(cmp(a, b), (i.cmp(&j)) as i64, "{a} vs {b}");
            }
        }
        assert_eq!(cmp("1.0.0-B", "1.0.0-a"), -1);
        assert_eq!(cmp("1.0.0+a", "1.0.0+b"), 0);
        assert!(equals(&v("1.0.0+a"), &v("1.0.0+b")));
        assert!(!equals(&v("1.0.0"), &v("1.0.1")));
        assert!(!equals(&v("1.0.0"), &Value::str("1.0.0")));
        let gt = method("isGreaterThan", &[v("1.2.3"), v("1.0.0")]).unwrap();
        assert!(equals(&gt, &Value::Bool(true)));
        let gt = method("isGreaterThan", &[v("1.0.0"), v("1.0.0")]).unwrap();
        assert!(equals(&gt, &Value::Bool(false)));
        let lt = method("isLessThan", &[v("1.0.0"), v("1.2.3")]).unwrap();
        assert!(equals(&lt, &Value::Bool(true)));
        let e = method("isLessThan", &[v("1.0.0"), Value::str("1.2.3")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn cost_is_charged_by_length() {
        let long = format!("1.0.0-{}", "a".repeat(100_000));
        let mut small = Ctx::new(None, Meter::new(100));
        let e = call_in(&mut small, "semver", false, &[Value::string(long.as_str())]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        let mut enough = Ctx::new(None, Meter::new(100));
        assert!(call_in(&mut enough, "isSemver", false, &[Value::str("1.0.0")]).is_ok());
        let e = global("semver", &[Value::string(format!("{long}!"))]).unwrap_err();
        assert!(e.message.len() < 300, "{}", e.message.len());
    }
}
