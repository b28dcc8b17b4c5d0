//! The declarations the checker knows: every function overload of the
//! environment, read from the tables in `std.decls` and the libraries'
//! `DECLS`, and the object types with their fields (the request's messages
//! from the vendored Envoy protos, the libraries' objects).

use super::proto;
use super::types::{self, Ty};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::LazyLock;

/// One overload: `(receiver).name(params) -> result` or `name(params) -> result`.
#[derive(Debug, Clone)]
pub struct Overload {
    pub receiver: Option<Ty>,
    pub params: Vec<Ty>,
    pub result: Ty,
}

impl Overload {
    /// Shown in error messages, as declared.
    pub fn signature(&self, name: &str) -> String {
        let params: Vec<String> = self.params.iter().map(Ty::to_string).collect();
        let shown = display_name(name);
        match &self.receiver {
            Some(r) => format!("{r}.{shown}({}) -> {}", params.join(", "), self.result),
            None => format!("{shown}({}) -> {}", params.join(", "), self.result),
        }
    }
}

/// How a function is written in an expression: `_+_` is `+`.
pub fn display_name(name: &str) -> String {
    match name {
        "_[_]" => "[]".into(),
        "_[?_]" => "[?]".into(),
        "_?_:_" => "?:".into(),
        "@in" => "in".into(),
        "!_" => "!".into(),
        "-_" => "-(negation)".into(),
        "math.@max" => "math.greatest".into(),
        "math.@min" => "math.least".into(),
        other => match other.strip_prefix('_').and_then(|o| o.strip_suffix('_')) {
            Some(op) if !op.is_empty() => op.to_owned(),
            _ => other.to_owned(),
        },
    }
}

/// A field of an object type, with the bound on its size the cost estimate
/// assumes.
#[derive(Debug, Clone)]
pub struct Field {
    pub ty: Ty,
    pub bound: super::cost::Bound,
}

/// An object type: its fields, or none for an opaque value that is only
/// passed to functions (a response builder).
#[derive(Debug, Clone, Default)]
pub struct Object {
    pub fields: Option<BTreeMap<String, Field>>,
}

/// A library's object type as it declares it: its name and its fields
/// (name, type, size bound); no fields for an opaque value.
pub type ObjectDecl = (
    &'static str,
    &'static [(&'static str, &'static str, super::cost::Bound)],
);

pub struct Decls {
    pub functions: HashMap<String, Vec<Overload>>,
    pub objects: HashMap<String, Object>,
}

#[derive(Debug)]
pub struct DeclError(String);

impl fmt::Display for DeclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

static DECLS: LazyLock<Decls> = LazyLock::new(|| {
    // The tables are part of the program: a mistake in one is a bug that
    // every test run shows.
    build().unwrap_or_else(|e| panic!("celgate's CEL declaration tables: {e}"))
});

/// The declarations of celgate's environment.
pub fn get() -> &'static Decls {
    &DECLS
}

/// Every table, with where it comes from (for errors in the tables).
pub fn tables() -> [(&'static str, &'static str); 14] {
    [
        ("std.decls", include_str!("std.decls")),
        ("envoy", crate::cel::eval::lib::envoy::DECLS),
        ("jwt", crate::cel::eval::lib::jwt::DECLS),
        ("http", crate::cel::eval::lib::http::DECLS),
        ("httpauthz", crate::cel::eval::lib::httpauthz::DECLS),
        ("mcp", crate::cel::eval::lib::mcp::DECLS),
        ("net", crate::cel::eval::lib::net::DECLS),
        ("url", crate::cel::eval::lib::url::DECLS),
        ("quantity", crate::cel::eval::lib::quantity::DECLS),
        ("semver", crate::cel::eval::lib::semver::DECLS),
        ("regex", crate::cel::eval::lib::regex::DECLS),
        ("format", crate::cel::eval::lib::format::DECLS),
        ("json", crate::cel::eval::lib::json::DECLS),
        (
            "kubernetes lists",
            crate::cel::eval::lib::lists::KUBERNETES_DECLS,
        ),
    ]
}

fn build() -> Result<Decls, DeclError> {
    let mut functions: HashMap<String, Vec<Overload>> = HashMap::new();
    for (table, text) in tables() {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, overload) =
                parse_line(line).map_err(|e| DeclError(format!("{table}:{}: {e}", i + 1)))?;
            // The three other orderings take what `<` takes.
            let names: &[&str] = if name == "_<_" {
                &["_<_", "_<=_", "_>_", "_>=_"]
            } else {
                &[name.as_str()]
            };
            for n in names {
                functions
                    .entry((*n).to_owned())
                    .or_default()
                    .push(overload.clone());
            }
        }
    }
    let mut objects = proto::objects().map_err(DeclError)?;
    for (message, field) in crate::cel::eval::request::UNREAD_FIELDS {
        objects
            .get_mut(*message)
            .and_then(|o| o.fields.as_mut())
            .and_then(|fields| fields.remove(*field))
            .ok_or_else(|| {
                DeclError(format!(
                    "request::UNREAD_FIELDS: no field {message}.{field}"
                ))
            })?;
    }
    for (name, fields) in crate::cel::eval::lib::envoy::OBJECTS
        .iter()
        .chain(crate::cel::eval::lib::jwt::OBJECTS)
        .chain(crate::cel::eval::lib::http::OBJECTS)
        .chain(crate::cel::eval::lib::httpauthz::OBJECTS)
        .chain(crate::cel::eval::lib::mcp::OBJECTS)
        .chain(crate::cel::eval::lib::net::OBJECTS)
        .chain(crate::cel::eval::lib::url::OBJECTS)
        .chain(crate::cel::eval::lib::quantity::OBJECTS)
        .chain(crate::cel::eval::lib::semver::OBJECTS)
        .chain(crate::cel::eval::lib::format::OBJECTS)
    {
        let fields = if fields.is_empty() {
            None
        } else {
            let mut map = BTreeMap::new();
            for (f, t, bound) in *fields {
                let ty = types::parse(t).map_err(|e| DeclError(format!("{name}.{f}: {e}")))?;
                map.insert((*f).to_owned(), Field { ty, bound: *bound });
            }
            Some(map)
        };
        // A library's object replaces the message of the same name: the
        // value is the library's, and only what the library offers works.
        objects.insert((*name).to_owned(), Object { fields });
    }
    Ok(Decls { functions, objects })
}

/// `(receiver).name(a, b) -> r` or `name(a, b) -> r`.
fn parse_line(line: &str) -> Result<(String, Overload), String> {
    let (sig, result) = line
        .rsplit_once("->")
        .ok_or_else(|| format!("no `->` in {line:?}"))?;
    let result = types::parse(result)?;
    let sig = sig.trim();
    let (receiver, rest) = if let Some(after) = sig.strip_prefix('(') {
        let close = matching_paren(after).ok_or("unbalanced receiver")?;
        let receiver = types::parse(&after[..close])?;
        let rest = after[close + 1..]
            .strip_prefix('.')
            .ok_or("a receiver must be followed by `.name(`")?;
        (Some(receiver), rest)
    } else {
        (None, sig)
    };
    let open = rest.find('(').ok_or("no parameter list")?;
    let name = rest[..open].trim().to_owned();
    let params_text = rest[open + 1..]
        .strip_suffix(')')
        .ok_or("parameter list not closed")?;
    let mut params = Vec::new();
    let mut remaining = params_text.trim();
    while !remaining.is_empty() {
        match types::split_top(remaining) {
            Some((first, rest)) => {
                params.push(types::parse(first)?);
                remaining = rest.trim();
            }
            None => {
                params.push(types::parse(remaining)?);
                remaining = "";
            }
        }
    }
    if name.is_empty() {
        return Err("no function name".into());
    }
    Ok((
        name,
        Overload {
            receiver,
            params,
            result,
        },
    ))
}

fn matching_paren(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_parses() {
        let d = get();
        assert!(d.functions["_+_"].len() > 5);
        assert_eq!(d.functions["_>=_"].len(), d.functions["_<_"].len());
        let m = &d.functions["startsWith"][0];
        assert_eq!(m.receiver, Some(Ty::String));
        assert_eq!(
            m.signature("startsWith"),
            "string.startsWith(string) -> bool"
        );
        assert!(d.objects.contains_key("envoy.service.auth.v3.CheckRequest"));
    }

    #[test]
    fn lines_parse() {
        let (n, o) = parse_line("(map(K, V)).size() -> int").unwrap();
        assert_eq!(n, "size");
        assert!(o.params.is_empty());
        let (n, o) = parse_line("_?_:_(bool, A, A) -> A").unwrap();
        assert_eq!(n, "_?_:_");
        assert_eq!(o.params.len(), 3);
        assert!(parse_line("f(int) int").is_err());
    }
}
