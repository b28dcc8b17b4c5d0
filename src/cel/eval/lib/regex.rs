//! Regular expressions: the pattern cache behind `matches`, and the
//! Kubernetes regex library (`find`, `findAll`).
//!
//! ```cel
//! "abc 123".find("[0-9]+") == "123"
//! "a1 b22 c333".findAll("[0-9]+") == ["1", "22", "333"]
//! "a1 b22 c333".findAll("[0-9]+", 2) == ["1", "22"]
//! ```
//!
//! A pattern written as a string literal is compiled once, when the policy
//! loads: the planner replaces the literal by its compiled [`Pattern`]
//! ([`literal`]), and a literal that does not compile refuses the policy.
//! A pattern computed at run time is compiled on first use and kept in a
//! per-thread cache ([`compiled`]); it is charged by its length each time.
//! Patterns are RE2 syntax (Rust's `regex` crate), matched unanchored.

use crate::cel::eval::{Ctx, Error, Function, Object, Str, Value};
use ::regex::Regex;
use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

pub const FUNCTIONS: &[Function] = &[
    Function::method("find", 1, find),
    Function::method("findAll", 1, find_all),
    Function::method("findAll", 2, find_all),
];

/// The declarations the type checker reads.
pub const DECLS: &str = "
(string).find(string) -> string
(string).findAll(string) -> list(string)
(string).findAll(string, int) -> list(string)
";

/// The functions whose second argument (after the text) is a pattern.
const PATTERN_FUNCTIONS: &[&str] = &["matches", "find", "findAll"];

/// A pattern compiled when the policy loaded, standing in for the string
/// literal it was written as.
pub struct Pattern {
    source: Box<str>,
    re: Regex,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.source, f)
    }
}

impl Object for Pattern {
    /// A pattern is a string to the user: a type error names it so.
    fn type_name(&self) -> &str {
        "string"
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other
            .as_any()
            .downcast_ref::<Pattern>()
            .is_some_and(|o| o.source == self.source)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// For the planner: when `function` takes a pattern and `pattern` is the
/// literal written for it, the compiled pattern to use instead (`None`
/// for other functions), or why the literal does not compile.
pub fn literal(function: &str, pattern: &str) -> Option<Result<Value<'static>, String>> {
    if !PATTERN_FUNCTIONS.contains(&function) {
        return None;
    }
    Some(match Regex::new(pattern) {
        Ok(re) => Ok(Value::object(Pattern {
            source: pattern.into(),
            re,
        })),
        Err(e) => Err(format!("invalid regex {pattern:?}: {}", describe(&e))),
    })
}

/// The regex crate's error on one line: a syntax error's last line says
/// what is wrong (the lines above it draw the pattern and a caret).
fn describe(e: &::regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let last = last.trim();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

/// Patterns kept per thread before the cache is emptied; bounds memory when
/// policies build patterns from request data.
const MAX_CACHED_PATTERNS: usize = 512;

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

/// `pattern` compiled (RE2 syntax), from this thread's cache when it was
/// seen before; `error` words the refusal of one that does not compile.
pub fn compiled(pattern: &str, error: impl FnOnce(String) -> Error) -> Result<Regex, Error> {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(re) = cache.get(pattern) {
            return Ok(re.clone());
        }
        let re = Regex::new(pattern).map_err(|e| error(describe(&e)))?;
        if cache.len() >= MAX_CACHED_PATTERNS {
            cache.clear();
        }
        cache.insert(pattern.to_owned(), re.clone());
        Ok(re)
    })
}

/// The regex of a pattern argument: the one compiled when the policy
/// loaded, or a string compiled now (charged by its length). `None`: the
/// argument is not a pattern.
pub fn argument(
    ctx: &mut Ctx<'_>,
    v: &Value<'_>,
    error: impl FnOnce(String) -> Error,
) -> Result<Option<Regex>, Error> {
    match v {
        Value::String(p) => {
            ctx.charge_bytes(p.len())?;
            compiled(p, error).map(Some)
        }
        other => Ok(other.downcast::<Pattern>().map(|p| p.re.clone())),
    }
}

/// Kubernetes' words for a pattern that does not compile.
fn illegal(e: String) -> Error {
    Error::function("find", format!("Illegal regex: {e}"))
}

/// `s[a..b]`, borrowed when `s` is.
fn piece<'r>(s: &Str<'r>, a: usize, b: usize) -> Value<'r> {
    match s {
        Str::Borrowed(x) => Value::String(Str::Borrowed(&x[a..b])),
        Str::Owned(x) => Value::string(&x[a..b]),
    }
}

/// `text.find(re)`: the first match, or `""` when there is none.
fn find<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(text), pattern] = args else {
        return Err(Error::no_overload("find", args));
    };
    let Some(re) = argument(ctx, pattern, illegal)? else {
        return Err(Error::no_overload("find", args));
    };
    ctx.charge_bytes(text.len())?;
    Ok(match re.find(text) {
        Some(m) => piece(text, m.start(), m.end()),
        None => Value::str(""),
    })
}

/// `text.findAll(re)`, `text.findAll(re, n)`: the successive matches that
/// do not overlap, at most `n` of them when `n` is not negative. An empty
/// match right after the end of the previous match is skipped (as Go's
/// `FindAllString`).
fn find_all<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (text, pattern, limit) = match args {
        [Value::String(t), p] => (t, p, -1),
        [Value::String(t), p, Value::Int(n)] => (t, p, *n),
        _ => return Err(Error::no_overload("findAll", args)),
    };
    let Some(re) = argument(ctx, pattern, |e| {
        Error::function("findAll", format!("Illegal regex: {e}"))
    })?
    else {
        return Err(Error::no_overload("findAll", args));
    };
    ctx.charge_bytes(text.len())?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut previous_end = None;
    for m in re.find_iter(text) {
        if out.len() >= limit {
            break;
        }
        if m.is_empty() && previous_end == Some(m.start()) {
            continue;
        }
        previous_end = Some(m.end());
        // A unit per match: the result is a list that long.
        ctx.charge(1)?;
        out.push(piece(text, m.start(), m.end()));
    }
    Ok(Value::list(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::call;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::{ErrorKind, Meter};

    fn s(x: &str) -> Value<'static> {
        Value::string(x)
    }

    fn strings(v: Value<'_>) -> Vec<String> {
        match v {
            Value::List(l) => l
                .iter()
                .map(|x| x.as_str().expect("a string").to_owned())
                .collect(),
            other => panic!("not a list: {other:?}"),
        }
    }

    #[test]
    fn find_gives_the_first_match_or_empty() {
        let r = method("find", &[s("abc 123 456"), s("[0-9]+")]).unwrap();
        assert_eq!(r.as_str(), Some("123"));
        let r = method("find", &[s("abc"), s("[0-9]+")]).unwrap();
        assert_eq!(r.as_str(), Some(""));
        let r = method("find", &[s("😀x😀"), s("x.")]).unwrap();
        assert_eq!(r.as_str(), Some("x😀"));
        // A borrowed text gives a borrowed piece.
        let text = String::from("key=value");
        let r = method("find", &[Value::str(&text), s("[a-z]+$")]).unwrap();
        assert!(matches!(r, Value::String(Str::Borrowed("value"))));
    }

    #[test]
    fn find_all_with_and_without_a_limit() {
        let all = method("findAll", &[s("a1 b22 c333"), s("[0-9]+")]).unwrap();
        assert_eq!(strings(all), ["1", "22", "333"]);
        let two = method("findAll", &[s("a1 b22 c333"), s("[0-9]+"), Value::Int(2)]).unwrap();
        assert_eq!(strings(two), ["1", "22"]);
        let none = method("findAll", &[s("a1 b22"), s("[0-9]+"), Value::Int(0)]).unwrap();
        assert!(strings(none).is_empty());
        let neg = method("findAll", &[s("a1 b22"), s("[0-9]+"), Value::Int(-5)]).unwrap();
        assert_eq!(strings(neg), ["1", "22"]);
        let miss = method("findAll", &[s("abc"), s("[0-9]+")]).unwrap();
        assert!(strings(miss).is_empty());
    }

    #[test]
    fn empty_matches_follow_go() {
        // Go: regexp.MustCompile("a*").FindAllString("baaab", -1)
        let r = method("findAll", &[s("baaab"), s("a*")]).unwrap();
        assert_eq!(strings(r), ["", "aaa", ""]);
        let r = method("findAll", &[s("abc"), s("")]).unwrap();
        assert_eq!(strings(r), ["", "", "", ""]);
        let r = method("findAll", &[s("😀😀"), s("")]).unwrap();
        assert_eq!(strings(r), ["", "", ""]);
    }

    #[test]
    fn invalid_patterns_are_errors_and_other_types_no_overload() {
        let e = method("find", &[s("x"), s("(")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FunctionError);
        assert!(e.message.starts_with("Illegal regex: "), "{}", e.message);
        let e = method("findAll", &[s("x"), s("[a-")]).unwrap_err();
        assert!(e.message.starts_with("Illegal regex: "), "{}", e.message);
        let e = method("find", &[s("x"), Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = method("findAll", &[Value::Int(1), s("x")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn literal_patterns_compile_once_for_the_planner() {
        assert!(literal("contains", "(").is_none());
        let e = literal("find", "(").unwrap().unwrap_err();
        assert_eq!(e, "invalid regex \"(\": unclosed group");
        let p = literal("findAll", "[0-9]+").unwrap().unwrap();
        let r = method("findAll", &[s("a1b2"), p.clone()]).unwrap();
        assert_eq!(strings(r), ["1", "2"]);
        let r = method("find", &[s("a1b2"), p.clone()]).unwrap();
        assert!(equals(&r, &s("1")));
        let r = method("matches", &[s("a1b2"), p.clone()]).unwrap();
        assert!(equals(&r, &Value::Bool(true)));
        let r = crate::cel::eval::lib::test_global("matches", &[s("ab"), p]).unwrap();
        assert!(equals(&r, &Value::Bool(false)));
    }

    #[test]
    fn the_pattern_cache_is_bounded() {
        for i in 0..(MAX_CACHED_PATTERNS + 10) {
            let r = crate::cel::eval::lib::test_global(
                "matches",
                &[
                    Value::string(format!("ax{i}")),
                    Value::string(format!("x{i}")),
                ],
            );
            assert!(matches!(r, Ok(Value::Bool(true))));
        }
        PATTERNS.with(|p| assert!(p.borrow().len() <= MAX_CACHED_PATTERNS));
    }

    #[test]
    fn a_small_budget_stops_a_long_text() {
        let long = "x1".repeat(100_000);
        let mut ctx = Ctx::new(None, Meter::new(1_000));
        let e = call(&mut ctx, "findAll", true, &[s(&long), s("[0-9]")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        let mut ctx = Ctx::new(None, Meter::new(1_000));
        let e = call(&mut ctx, "find", true, &[s(&long), s("y")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        // Every match is charged: a short text with many matches too.
        let many = "1".repeat(5_000);
        let mut ctx = Ctx::new(None, Meter::new(2_000));
        let e = call(&mut ctx, "findAll", true, &[s(&many), s("[0-9]")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
    }
}
