//! The types the checker reasons with, and how an argument's type is matched
//! against a declared parameter's (type parameters bound along the way).
//!
//! Checking is gradual, as in cel-go: `dyn` (a JWT claim, an MCP argument, a
//! JSON value) fits any parameter, and any value fits a `dyn` parameter; such
//! values are checked again when the expression runs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    /// Not known until the expression runs.
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Optional(Box<Ty>),
    /// A protobuf message (the request) or a library's object (a response
    /// builder, a decoded token), by its full name.
    Object(Arc<str>),
    /// A type as a value: `int`, `type(x)`.
    Type(Box<Ty>),
    /// A type parameter of a declaration (`A` in `size(list(A))`).
    Param(char),
}

impl Ty {
    pub fn object(name: &str) -> Ty {
        Ty::Object(Arc::from(name))
    }
    pub fn list(t: Ty) -> Ty {
        Ty::List(Box::new(t))
    }
    pub fn map(k: Ty, v: Ty) -> Ty {
        Ty::Map(Box::new(k), Box::new(v))
    }
    pub fn optional(t: Ty) -> Ty {
        Ty::Optional(Box::new(t))
    }

    pub fn is_dyn(&self) -> bool {
        matches!(self, Ty::Dyn)
    }

    /// Type parameters still unbound after a call resolved become `dyn`.
    pub fn substitute(&self, s: &Subst) -> Ty {
        match self {
            Ty::Param(p) => s.get(p).cloned().unwrap_or(Ty::Dyn),
            Ty::List(t) => Ty::list(t.substitute(s)),
            Ty::Map(k, v) => Ty::map(k.substitute(s), v.substitute(s)),
            Ty::Optional(t) => Ty::optional(t.substitute(s)),
            Ty::Type(t) => Ty::Type(Box::new(t.substitute(s))),
            other => other.clone(),
        }
    }

    /// The more general of two types a value may have (the branches of a
    /// conditional, the elements of a list literal): `None` when neither
    /// fits the other.
    pub fn join(&self, other: &Ty) -> Option<Ty> {
        if self == other {
            return Some(self.clone());
        }
        match (self, other) {
            (Ty::Dyn, _) | (_, Ty::Dyn) => Some(Ty::Dyn),
            (Ty::Null, t) | (t, Ty::Null) if t.nullable() => Some(t.clone()),
            (Ty::List(a), Ty::List(b)) => Some(Ty::list(a.join(b)?)),
            (Ty::Map(ak, av), Ty::Map(bk, bv)) => Some(Ty::map(ak.join(bk)?, av.join(bv)?)),
            (Ty::Optional(a), Ty::Optional(b)) => Some(Ty::optional(a.join(b)?)),
            (Ty::Type(_), Ty::Type(_)) => Some(Ty::Type(Box::new(Ty::Dyn))),
            _ => None,
        }
    }

    /// Whether `null` is one of this type's values (messages, as in cel-go).
    pub fn nullable(&self) -> bool {
        matches!(self, Ty::Null | Ty::Dyn | Ty::Object(_))
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Dyn => f.write_str("dyn"),
            Ty::Null => f.write_str("null_type"),
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Duration => f.write_str("google.protobuf.Duration"),
            Ty::Timestamp => f.write_str("google.protobuf.Timestamp"),
            Ty::List(t) => write!(f, "list({t})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Optional(t) => write!(f, "optional_type({t})"),
            Ty::Object(n) => f.write_str(n),
            Ty::Type(t) => write!(f, "type({t})"),
            Ty::Param(p) => write!(f, "{p}"),
        }
    }
}

/// Bindings of type parameters while one overload is matched.
pub type Subst = HashMap<char, Ty>;

/// Whether an argument of type `arg` may be passed where `param` is
/// declared, binding `param`'s type parameters in `s`.
pub fn assignable(param: &Ty, arg: &Ty, s: &mut Subst) -> bool {
    match (param, arg) {
        (Ty::Param(p), _) => match s.get(p).cloned() {
            None => {
                s.insert(*p, arg.clone());
                true
            }
            Some(bound) => match bound.join(arg) {
                Some(j) => {
                    s.insert(*p, j);
                    true
                }
                None => false,
            },
        },
        (Ty::Dyn, _) | (_, Ty::Dyn) => {
            // Still bind the parameters inside `param` (as `dyn`).
            bind_dyn(param, s);
            true
        }
        (Ty::List(p), Ty::List(a)) => assignable(p, a, s),
        (Ty::Map(pk, pv), Ty::Map(ak, av)) => assignable(pk, ak, s) && assignable(pv, av, s),
        (Ty::Optional(p), Ty::Optional(a)) => assignable(p, a, s),
        (Ty::Type(_), Ty::Type(_)) => true,
        (p, Ty::Null) if p.nullable() => true,
        (p, a) => p == a,
    }
}

fn bind_dyn(param: &Ty, s: &mut Subst) {
    match param {
        Ty::Param(p) => {
            s.entry(*p).or_insert(Ty::Dyn);
        }
        Ty::List(t) | Ty::Optional(t) | Ty::Type(t) => bind_dyn(t, s),
        Ty::Map(k, v) => {
            bind_dyn(k, s);
            bind_dyn(v, s);
        }
        _ => {}
    }
}

/// Parses a type as written in the declaration tables: `int`, `list(A)`,
/// `map(string, dyn)`, `optional(A)`, `type(A)`, a single capital letter for
/// a type parameter, any other name for an object type.
pub fn parse(text: &str) -> Result<Ty, String> {
    let text = text.trim();
    if let Some(inner) = generic(text, "list") {
        return Ok(Ty::list(parse(inner)?));
    }
    if let Some(inner) = generic(text, "optional") {
        return Ok(Ty::optional(parse(inner)?));
    }
    if let Some(inner) = generic(text, "type") {
        return Ok(Ty::Type(Box::new(parse(inner)?)));
    }
    if let Some(inner) = generic(text, "map") {
        let (k, v) = split_top(inner).ok_or_else(|| format!("map needs two types: {text}"))?;
        return Ok(Ty::map(parse(k)?, parse(v)?));
    }
    Ok(match text {
        "dyn" => Ty::Dyn,
        "null" => Ty::Null,
        "bool" => Ty::Bool,
        "int" => Ty::Int,
        "uint" => Ty::Uint,
        "double" => Ty::Double,
        "string" => Ty::String,
        "bytes" => Ty::Bytes,
        "duration" => Ty::Duration,
        "timestamp" => Ty::Timestamp,
        p if p.len() == 1 && p.as_bytes()[0].is_ascii_uppercase() => {
            Ty::Param(p.chars().next().unwrap_or('A'))
        }
        "" => return Err("empty type".into()),
        name if name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_') =>
        {
            Ty::object(name)
        }
        other => return Err(format!("not a type: {other}")),
    })
}

fn generic<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.strip_prefix(name)?
        .strip_prefix('(')?
        .strip_suffix(')')
}

/// Splits `a, b` at its top-level comma.
pub(crate) fn split_top(text: &str) -> Option<(&str, &str)> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => return Some((&text[..i], &text[i + 1..])),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for t in ["list(int)", "map(string, dyn)", "optional_type(A)"] {
            let parsed = parse(&t.replace("optional_type", "optional")).unwrap();
            assert_eq!(parsed.to_string(), t);
        }
        assert_eq!(parse("jwt.Token").unwrap(), Ty::object("jwt.Token"));
        assert!(parse("list(").is_err());
    }

    #[test]
    fn parameters_bind_and_join() {
        let mut s = Subst::new();
        assert!(assignable(&Ty::Param('A'), &Ty::Int, &mut s));
        assert!(!assignable(&Ty::Param('A'), &Ty::String, &mut s));
        assert!(assignable(&Ty::Param('A'), &Ty::Dyn, &mut s));
        let mut s = Subst::new();
        let resp = Ty::object("envoy.service.auth.v3.CheckResponse");
        assert!(assignable(&Ty::Param('A'), &Ty::Null, &mut s));
        assert!(assignable(&Ty::Param('A'), &resp, &mut s));
        assert_eq!(Ty::Param('A').substitute(&s), resp);
        let mut s = Subst::new();
        assert!(assignable(&Ty::list(Ty::Param('A')), &Ty::Dyn, &mut s));
        assert_eq!(Ty::Param('A').substitute(&s), Ty::Dyn);
    }
}
