//! Kyverno's `json` library: a JSON document to a CEL value and back.
//!
//! ```cel
//! json.unmarshal(object.attributes.request.http.body).tenant == "a"
//! json.marshal({"user": "alice", "roles": ["admin"]})
//! ```
//!
//! `json.unmarshal(s)` reads one JSON document: objects are maps, arrays
//! lists, numbers `double` (as Kyverno's Go decoder reads them), and
//! `null`, `true`, `false`, strings as themselves. A document that is not
//! JSON, holds an object with a duplicate key (parsers disagree on which
//! one wins), is longer than [`MAX_BYTES`] or nested deeper than
//! [`MAX_DEPTH`] is an evaluation error, which the policy's
//! `failurePolicy` decides.
//!
//! `json.marshal(v)` writes `v` as Go's encoder does: map keys (strings
//! only) sorted, `<`, `>` and `&` escaped, bytes as base64, a timestamp as
//! RFC 3339 text, a duration as its number of nanoseconds.
//!
//! Both are charged by size before the work: the document's bytes, the
//! value's elements and bytes.

use crate::cel::eval::value::{push_fraction, Key, OwnedMap};
use crate::cel::eval::{Ctx, Error, Function, Str, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// The longest document `json.unmarshal` reads (1 MiB, the default limit
/// of an MCP body).
pub const MAX_BYTES: usize = 1 << 20;

/// The deepest nesting of arrays and objects either function accepts.
pub const MAX_DEPTH: usize = 100;

pub const FUNCTIONS: &[Function] = &[
    Function::global("json.unmarshal", 1, unmarshal),
    Function::global("json.marshal", 1, marshal),
];

/// The declarations the type checker reads.
pub const DECLS: &str = "
json.unmarshal(string) -> dyn
json.marshal(dyn) -> string
";

fn unmarshal<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    const F: &str = "json.unmarshal";
    let [Value::String(s)] = args else {
        return Err(Error::no_overload(F, args));
    };
    if s.len() > MAX_BYTES {
        return Err(Error::function(
            F,
            format!(
                "the document is {} bytes, over the limit of {MAX_BYTES} bytes",
                s.len()
            ),
        ));
    }
    ctx.charge_bytes(s.len())?;
    let mut d = serde_json::Deserializer::from_str(s);
    let v = Seed { depth: 0 }
        .deserialize(&mut d)
        .and_then(|v| d.end().map(|()| v))
        .map_err(|e| Error::function(F, format!("invalid JSON: {e}")))?;
    Ok(v)
}

/// Reads one JSON value as a CEL value, `depth` levels deep.
struct Seed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value<'static>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value<'static>, D::Error> {
        d.deserialize_any(self)
    }
}

impl Seed {
    fn deeper<E: de::Error>(&self) -> Result<Seed, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format_args!(
                "nested more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(Seed {
            depth: self.depth + 1,
        })
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Value<'static>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value<'static>, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value<'static>, E> {
        Ok(Value::Double(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value<'static>, E> {
        Ok(Value::Double(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value<'static>, E> {
        Ok(Value::Double(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value<'static>, E> {
        Ok(Value::string(v))
    }
    fn visit_unit<E>(self) -> Result<Value<'static>, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'static>, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.deeper()?)? {
            out.push(v);
        }
        Ok(Value::list(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'static>, A::Error> {
        let mut out = OwnedMap::default();
        while let Some(key) = map.next_key::<String>()? {
            let key = Key::String(Str::Owned(Arc::from(key)));
            if out.contains_key(&key) {
                let Key::String(k) = key else {
                    unreachable!("the key was built as a string")
                };
                return Err(de::Error::custom(format_args!(
                    "duplicate key {:?} in an object",
                    k.as_str()
                )));
            }
            let v = map.next_value_seed(self.deeper()?)?;
            out.insert(key, v);
        }
        Ok(Value::map(out))
    }
}

fn marshal<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [v] = args else {
        return Err(Error::no_overload("json.marshal", args));
    };
    let mut out = String::new();
    write_value(ctx, &mut out, v, 0)?;
    Ok(Value::string(out))
}

fn refused(message: impl Into<String>) -> Error {
    Error::function("json.marshal", message)
}

/// Writes `v` as Go's `encoding/json` does; charges each value, and each
/// string's bytes, before writing it.
fn write_value(
    ctx: &mut Ctx<'_>,
    out: &mut String,
    v: &Value<'_>,
    depth: usize,
) -> Result<(), Error> {
    ctx.charge(1)?;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Uint(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Double(d) => write_double(out, *d)?,
        Value::String(s) => {
            ctx.charge_bytes(s.len())?;
            write_string(out, s);
        }
        Value::Bytes(b) => {
            use base64::Engine as _;
            ctx.charge_bytes(b.len() * 4 / 3)?;
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(b.as_bytes(), out);
            out.push('"');
        }
        Value::Timestamp(t) => {
            let _ = write!(out, "\"{}", t.format("%Y-%m-%dT%H:%M:%S"));
            push_fraction(out, t.timestamp_subsec_nanos());
            out.push_str("Z\"");
        }
        Value::Duration(d) => match d.num_nanoseconds() {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => return Err(refused("duration out of range")),
        },
        Value::List(l) => {
            if depth >= MAX_DEPTH {
                return Err(refused(format!("nested more than {MAX_DEPTH} levels deep")));
            }
            ctx.charge(l.len() as u64)?;
            out.push('[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(ctx, out, e, depth + 1)?;
            }
            out.push(']');
        }
        Value::Map(m) => {
            if depth >= MAX_DEPTH {
                return Err(refused(format!("nested more than {MAX_DEPTH} levels deep")));
            }
            let n = m.len() as u64;
            // Sorting compares n log n pairs of keys.
            ctx.charge(n.saturating_mul(u64::from(n.max(2).ilog2())))?;
            let mut entries = Vec::with_capacity(m.len());
            for (k, e) in m.entries() {
                match k {
                    Value::String(k) => entries.push((k, e)),
                    other => {
                        return Err(refused(format!(
                            "a map key must be a string, not {}",
                            other.type_name()
                        )))
                    }
                }
            }
            entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            out.push('{');
            for (i, (k, e)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ctx.charge_bytes(k.len())?;
                write_string(out, k);
                out.push(':');
                write_value(ctx, out, e, depth + 1)?;
            }
            out.push('}');
        }
        other => {
            return Err(refused(format!(
                "a value of type {} has no JSON form",
                other.type_name()
            )))
        }
    }
    Ok(())
}

/// A double as Go writes it: the shortest digits that read back the same,
/// in exponent form below 1e-6 and from 1e21 on.
fn write_double(out: &mut String, d: f64) -> Result<(), Error> {
    if !d.is_finite() {
        let shown = if d.is_nan() {
            "NaN"
        } else if d > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        };
        return Err(refused(format!("unsupported value: {shown}")));
    }
    let abs = d.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        let _ = write!(out, "{d}");
    } else {
        let e = format!("{d:e}");
        match e.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => {
                let _ = write!(out, "{mantissa}e+{exp}");
            }
            _ => out.push_str(&e),
        }
    }
    Ok(())
}

/// A string as Go writes it, HTML-safe.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::call;
    use crate::cel::eval::lib::test_global as global;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::{ErrorKind, Meter};
    use chrono::{TimeDelta, TimeZone, Utc};

    fn parse(s: &str) -> Result<Value<'static>, Error> {
        global("json.unmarshal", &[Value::string(s)])
    }

    fn write(v: Value<'static>) -> String {
        match global("json.marshal", &[v]) {
            Ok(Value::String(s)) => s.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn documents_read_as_kyverno_reads_them() {
        let v = parse(r#" {"a": 1, "b": [true, null, "x", 2.5], "c": {}} "#).unwrap();
        let Value::Map(m) = &v else { panic!("{v:?}") };
        let a = m.get(&Value::string("a")).unwrap();
        assert!(matches!(a, Value::Double(d) if d == 1.0), "{a:?}");
        let b = m.get(&Value::string("b")).unwrap();
        let want = Value::list(vec![
            Value::Bool(true),
            Value::Null,
            Value::string("x"),
            Value::Double(2.5),
        ]);
        assert!(equals(&b, &want));
        assert!(equals(&parse("\"s\"").unwrap(), &Value::string("s")));
        assert!(matches!(
            parse("12345678901234567890").unwrap(),
            Value::Double(_)
        ));
        assert!(matches!(parse("-3").unwrap(), Value::Double(d) if d == -3.0));
    }

    #[test]
    fn bad_documents_are_errors() {
        for bad in [
            "",
            "  ",
            "{",
            "{\"a\":1,}",
            "[1] [2]",
            "nul",
            "{'a':1}",
            "1e400",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::FunctionError, "{bad}");
            assert!(
                e.message.starts_with("invalid JSON: "),
                "{bad}: {}",
                e.message
            );
        }
        let e = parse(r#"{"a": 1, "b": {"x": 1, "x": 2}}"#).unwrap_err();
        assert!(e.message.contains("duplicate key \"x\""), "{}", e.message);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("nested more than"), "{}", e.message);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let e = global("json.unmarshal", &[Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn long_documents_are_refused_and_charged() {
        let long = format!("\"{}\"", "x".repeat(MAX_BYTES));
        let e = parse(&long).unwrap_err();
        assert!(e.message.contains("over the limit"), "{}", e.message);
        let doc = format!("[{}1]", "1,".repeat(50_000));
        let mut ctx = Ctx::new(None, Meter::new(1_000));
        let e = call(&mut ctx, "json.unmarshal", false, &[Value::string(&doc)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        let big = Value::list(vec![Value::Int(1); 10_000]);
        let mut ctx = Ctx::new(None, Meter::new(1_000));
        let e = call(&mut ctx, "json.marshal", false, &[big]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
    }

    #[test]
    fn values_write_as_go_writes_them() {
        let mut m = OwnedMap::default();
        m.insert(Key::String("b".into()), Value::Int(1));
        m.insert(Key::String("a".into()), Value::string("<&>"));
        assert_eq!(write(Value::map(m)), r#"{"a":"\u003c\u0026\u003e","b":1}"#);
        assert_eq!(
            write(Value::list(vec![
                Value::Uint(3),
                Value::Null,
                Value::Bool(false)
            ])),
            "[3,null,false]"
        );
        assert_eq!(
            write(Value::string("a\"\\\n\u{1}\u{2028}é")),
            r#""a\"\\\n\u0001\u2028é""#
        );
        assert_eq!(write(Value::Double(2.75)), "2.75");
        assert_eq!(write(Value::Double(1.0)), "1");
        assert_eq!(write(Value::Double(1e21)), "1e+21");
        assert_eq!(write(Value::Double(1.5e-7)), "1.5e-7");
        assert_eq!(write(Value::Double(123456789.0)), "123456789");
        assert_eq!(write(Value::bytes(*b"hi")), r#""aGk=""#);
        let t = Utc.timestamp_opt(1_700_000_000, 500_000_000).unwrap();
        assert_eq!(write(Value::Timestamp(t)), r#""2023-11-14T22:13:20.5Z""#);
        assert_eq!(
            write(Value::Duration(TimeDelta::milliseconds(1500))),
            "1500000000"
        );
        // A document read and written back.
        let doc = r#"{"a":"b","n":[1,2.5,{"x":null}]}"#;
        assert_eq!(write(parse(doc).unwrap()), doc);
    }

    #[test]
    fn values_without_a_json_form_are_errors() {
        let mut m = OwnedMap::default();
        m.insert(Key::Int(1), Value::Int(1));
        for v in [
            Value::Double(f64::NAN),
            Value::Double(f64::INFINITY),
            Value::map(m),
            Value::some(Value::Int(1)),
            Value::Type(crate::cel::eval::Type::Int),
        ] {
            let e = global("json.marshal", &[v]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::FunctionError);
        }
    }
}
