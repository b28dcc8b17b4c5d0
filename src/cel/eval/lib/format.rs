//! The Kubernetes format library: named string formats and their
//! validation, with the messages Kubernetes gives.
//!
//! ```cel
//! format.dns1123Label().validate("my-name") == optional.none()
//! format.named("uuid").value().validate(id).hasValue()
//! format.dns1123Subdomain().validate(host).orValue([]).join("; ")
//! ```
//!
//! `format.<name>()` gives a `kubernetes.NamedFormat`, `format.named(name)`
//! an optional of one (`optional.none()` for an unknown name), and
//! `<format>.validate(s)` `optional.none()` when `s` is valid, else an
//! optional list of the reasons. Validation walks the string once (it is
//! charged by its length) and compiles nothing.

use super::url::Ipv6Literal;
use crate::cel::eval::{Ctx, Error, Function, Object, Value};
use std::any::Any;
use std::fmt::{self, Write as _};

/// The type name of a format, as `type(x)` gives it.
pub const FORMAT_TYPE: &str = "kubernetes.NamedFormat";
pub const TYPES: &[&str] = &[FORMAT_TYPE];

pub const FUNCTIONS: &[Function] = &[
    Function::global("format.named", 1, named),
    Function::method("validate", 1, validate),
    Function::global("format.dns1123Label", 0, |_, _| Ok(by_name("dns1123Label"))),
    Function::global("format.dns1123Subdomain", 0, |_, _| {
        Ok(by_name("dns1123Subdomain"))
    }),
    Function::global("format.dns1035Label", 0, |_, _| Ok(by_name("dns1035Label"))),
    Function::global("format.qualifiedName", 0, |_, _| {
        Ok(by_name("qualifiedName"))
    }),
    Function::global("format.dns1123LabelPrefix", 0, |_, _| {
        Ok(by_name("dns1123LabelPrefix"))
    }),
    Function::global("format.dns1123SubdomainPrefix", 0, |_, _| {
        Ok(by_name("dns1123SubdomainPrefix"))
    }),
    Function::global("format.dns1035LabelPrefix", 0, |_, _| {
        Ok(by_name("dns1035LabelPrefix"))
    }),
    Function::global("format.labelValue", 0, |_, _| Ok(by_name("labelValue"))),
    Function::global("format.uri", 0, |_, _| Ok(by_name("uri"))),
    Function::global("format.uuid", 0, |_, _| Ok(by_name("uuid"))),
    Function::global("format.byte", 0, |_, _| Ok(by_name("byte"))),
    Function::global("format.date", 0, |_, _| Ok(by_name("date"))),
    Function::global("format.datetime", 0, |_, _| Ok(by_name("datetime"))),
];

/// The declarations the type checker reads.
pub const DECLS: &str = "
format.named(string) -> optional(kubernetes.NamedFormat)
(kubernetes.NamedFormat).validate(string) -> optional(list(string))
format.dns1123Label() -> kubernetes.NamedFormat
format.dns1123Subdomain() -> kubernetes.NamedFormat
format.dns1035Label() -> kubernetes.NamedFormat
format.qualifiedName() -> kubernetes.NamedFormat
format.dns1123LabelPrefix() -> kubernetes.NamedFormat
format.dns1123SubdomainPrefix() -> kubernetes.NamedFormat
format.dns1035LabelPrefix() -> kubernetes.NamedFormat
format.labelValue() -> kubernetes.NamedFormat
format.uri() -> kubernetes.NamedFormat
format.uuid() -> kubernetes.NamedFormat
format.byte() -> kubernetes.NamedFormat
format.date() -> kubernetes.NamedFormat
format.datetime() -> kubernetes.NamedFormat
";

/// A format has no fields: it is passed to `validate`.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = &[(FORMAT_TYPE, &[])];

/// A named format (`kubernetes.NamedFormat`).
#[derive(Clone, Copy)]
pub struct Format {
    name: &'static str,
    check: fn(&[u8]) -> Vec<String>,
}

impl fmt::Debug for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "format.{}()", self.name)
    }
}

impl Object for Format {
    fn type_name(&self) -> &str {
        FORMAT_TYPE
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other
            .as_any()
            .downcast_ref::<Format>()
            .is_some_and(|o| o.name == self.name)
    }
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(format!("format.{}()", self.name)))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Every format, by the name `format.named` takes.
const FORMATS: &[Format] = &[
    Format {
        name: "dns1123Label",
        check: |s| dns1123_label(s),
    },
    Format {
        name: "dns1123Subdomain",
        check: |s| dns1123_subdomain(s),
    },
    Format {
        name: "dns1035Label",
        check: |s| dns1035_label(s),
    },
    Format {
        name: "qualifiedName",
        check: qualified_name,
    },
    Format {
        name: "dns1123LabelPrefix",
        check: |s| dns1123_label(&mask_trailing_dash(s)),
    },
    Format {
        name: "dns1123SubdomainPrefix",
        check: |s| dns1123_subdomain(&mask_trailing_dash(s)),
    },
    Format {
        name: "dns1035LabelPrefix",
        check: |s| dns1035_label(&mask_trailing_dash(s)),
    },
    Format {
        name: "labelValue",
        check: label_value,
    },
    Format {
        name: "uri",
        check: uri,
    },
    Format {
        name: "uuid",
        check: |s| reason(is_uuid(s), "does not match the UUID format"),
    },
    Format {
        name: "byte",
        check: |s| reason(is_base64(s), "invalid base64"),
    },
    Format {
        name: "date",
        check: |s| reason(is_date(s), "invalid date"),
    },
    Format {
        name: "datetime",
        check: |s| reason(is_datetime(s), "invalid datetime"),
    },
];

fn by_name(name: &str) -> Value<'static> {
    match FORMATS.iter().find(|f| f.name == name) {
        Some(f) => Value::object(*f),
        None => Value::Null,
    }
}

/// `format.named(name)`: the format, or `optional.none()`.
fn named<'r>(_: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(name)] = args else {
        return Err(Error::no_overload("format.named", args));
    };
    Ok(match FORMATS.iter().find(|f| f.name == name.as_str()) {
        Some(f) => Value::some(Value::object(*f)),
        None => Value::NONE,
    })
}

/// `format.validate(s)`: `optional.none()` when valid, else the reasons.
fn validate<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (Some(f), Some(Value::String(s))) = (
        args.first().and_then(Value::downcast::<Format>),
        args.get(1),
    ) else {
        return Err(Error::no_overload("validate", args));
    };
    ctx.charge_bytes(s.len())?;
    let reasons = (f.check)(s.as_bytes());
    Ok(if reasons.is_empty() {
        Value::NONE
    } else {
        Value::some(Value::list(
            reasons.into_iter().map(Value::string).collect(),
        ))
    })
}

fn reason(valid: bool, why: &str) -> Vec<String> {
    if valid {
        Vec::new()
    } else {
        vec![why.to_owned()]
    }
}

// ---------------------------------------------------------------------------
// Names (Kubernetes' apimachinery validation). Strings are validated as
// bytes, lengths counted in bytes, as Kubernetes does.

const LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const SUBDOMAIN_FMT: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const KEY_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// Kubernetes' wording of a pattern mismatch, with examples.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = msg.to_owned();
    if examples.is_empty() {
        let _ = write!(out, " (regex used for validation is '{fmt}')");
        return out;
    }
    out.push_str(" (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        let _ = write!(out, "'{e}', ");
    }
    let _ = write!(out, "regex used for validation is '{fmt}')");
    out
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, with `[a-z]` first when `alpha_first`;
/// with upper case, `_` and `.` inside when `key`.
fn is_label(s: &[u8], alpha_first: bool, key: bool) -> bool {
    let end_ok = |c: &u8| {
        if key {
            c.is_ascii_alphanumeric()
        } else {
            c.is_ascii_lowercase() || c.is_ascii_digit()
        }
    };
    let inner_ok = |c: &u8| end_ok(c) || *c == b'-' || (key && (*c == b'_' || *c == b'.'));
    match (s.first(), s.last()) {
        (Some(first), Some(last)) => {
            (if alpha_first {
                first.is_ascii_lowercase()
            } else {
                end_ok(first)
            }) && end_ok(last)
                && s.iter().all(inner_ok)
        }
        _ => false,
    }
}

fn is_subdomain(s: &[u8]) -> bool {
    s.split(|c| *c == b'.').all(|l| is_label(l, false, false))
}

fn dns1123_label(s: &[u8]) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !is_label(s, false, false) {
        if is_subdomain(s) {
            errs.push("must not contain dots".to_owned());
        } else {
            errs.push(regex_error(LABEL_MSG, LABEL_FMT, &["my-name", "123-abc"]));
        }
    }
    errs
}

/// `bytes` says which wording of the length limit: Kubernetes' newer
/// validators (label keys) count "bytes", the older "characters".
fn subdomain(s: &[u8], unit: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(format!("must be no more than 253 {unit}"));
    }
    if !is_subdomain(s) {
        errs.push(regex_error(SUBDOMAIN_MSG, SUBDOMAIN_FMT, &["example.com"]));
    }
    errs
}

fn dns1123_subdomain(s: &[u8]) -> Vec<String> {
    subdomain(s, "characters")
}

fn dns1035_label(s: &[u8]) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !is_label(s, true, false) {
        errs.push(regex_error(
            DNS1035_MSG,
            DNS1035_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// A prefix for generated names may end with `-`: Kubernetes validates
/// it with its last two bytes replaced by `a`.
fn mask_trailing_dash(s: &[u8]) -> Vec<u8> {
    if s.len() > 1 && s.ends_with(b"-") {
        let mut out = s[..s.len() - 2].to_vec();
        out.push(b'a');
        out
    } else {
        s.to_vec()
    }
}

const KEY_EXAMPLES: &[&str] = &["MyName", "my.name", "123-abc"];

/// A label key: an optional DNS subdomain prefix and `/`, then a name.
fn qualified_name(s: &[u8]) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&[u8]> = s.split(|c| *c == b'/').collect();
    let name = match parts.as_slice() {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                for e in subdomain(prefix, "bytes") {
                    errs.push(format!("prefix part {e}"));
                }
            }
            name
        }
        _ => {
            errs.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(KEY_MSG, KEY_FMT, KEY_EXAMPLES)
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 bytes".to_owned());
    }
    if !is_label(name, false, true) {
        errs.push(format!(
            "name part {}",
            regex_error(KEY_MSG, KEY_FMT, KEY_EXAMPLES)
        ));
    }
    errs
}

fn label_value(s: &[u8]) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 bytes".to_owned());
    }
    if !(s.is_empty() || is_label(s, false, true)) {
        errs.push(regex_error(
            VALUE_MSG,
            VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

// ---------------------------------------------------------------------------
// The OpenAPI string formats Kubernetes checks (`uuid`, `byte`, `date`,
// `date-time`).

/// Hex groups of 8, 4, 4, 4 and 12 digits, any case, each `-` optional.
fn is_uuid(s: &[u8]) -> bool {
    let mut rest = s;
    for (i, n) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        if rest.len() < n || !rest[..n].iter().all(u8::is_ascii_hexdigit) {
            return false;
        }
        rest = &rest[n..];
        if i < 4 {
            if let Some(after) = rest.strip_prefix(b"-") {
                rest = after;
            }
        }
    }
    rest.is_empty()
}

/// Standard base64 with padding, at least one group of four.
fn is_base64(s: &[u8]) -> bool {
    let alphabet = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return false;
    }
    let (body, last) = s.split_at(s.len() - 4);
    body.iter().all(alphabet)
        && match last {
            [a, b, b'=', b'='] => alphabet(a) && alphabet(b),
            [a, b, c, b'='] => alphabet(a) && alphabet(b) && alphabet(c),
            _ => last.iter().all(alphabet),
        }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
}

/// `YYYY-MM-DD`, a day that exists.
fn is_date(s: &[u8]) -> bool {
    let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = s else {
        return false;
    };
    let (Some(year), Some(month), Some(day)) = (
        digits(&[*y0, *y1, *y2, *y3]),
        digits(&[*m0, *m1]),
        digits(&[*d0, *d1]),
    ) else {
        return false;
    };
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// A date, `T`, then `hh:mm:ss`, an optional fraction and `Z` or an
/// offset; case-insensitive. As Kubernetes' OpenAPI validation reads it:
/// the text is cut at each `t` and only the first two pieces are looked
/// at, and the fraction's separator may be any character.
fn is_datetime(s: &[u8]) -> bool {
    if s.len() < 4 {
        return false;
    }
    let Ok(text) = std::str::from_utf8(s) else {
        return false;
    };
    let lower = text.to_lowercase();
    let mut pieces = lower.split('t');
    let (Some(date), Some(time)) = (pieces.next(), pieces.next()) else {
        return false;
    };
    is_date(date.as_bytes()) && is_time(time)
}

/// `^(\d{2}):(\d{2}):(\d{2})(.[0-9]+)?(z|([+-]\d{2}:\d{2}))$`, hours up
/// to 23, minutes and seconds up to 59.
fn is_time(t: &str) -> bool {
    let b = t.as_bytes();
    let two = |i: usize| b.get(i..i + 2).and_then(digits);
    let (Some(h), Some(m), Some(sec)) = (two(0), two(3), two(6)) else {
        return false;
    };
    if b.get(2) != Some(&b':') || b.get(5) != Some(&b':') || h > 23 || m > 59 || sec > 59 {
        return false;
    }
    let rest = &t[8..];
    let middle = if let Some(m) = rest.strip_suffix('z') {
        m
    } else {
        let r = rest.as_bytes();
        let n = r.len();
        let offset = n >= 6
            && matches!(r[n - 6], b'+' | b'-')
            && digits(&r[n - 5..n - 3]).is_some()
            && r[n - 3] == b':'
            && digits(&r[n - 2..]).is_some();
        if !offset {
            return false;
        }
        &rest[..n - 6]
    };
    // Empty, or any one character (not a newline) then digits.
    let mut chars = middle.chars();
    match chars.next() {
        None => true,
        Some('\n') => false,
        Some(_) => {
            let d = chars.as_str();
            !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit())
        }
    }
}

// ---------------------------------------------------------------------------
// `uri`: an absolute URI or an absolute path, as Go's
// `url.ParseRequestURI` reads it, with its error messages.

fn uri(s: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(s) else {
        return vec!["invalid UTF-8".to_owned()];
    };
    match super::url::parse_request_uri(text, Ipv6Literal::Unchecked) {
        Ok(_) => Vec::new(),
        Err(why) => vec![format!(
            "parse {}: {}",
            go_quote(text),
            why.message(go_quote)
        )],
    }
}

/// `s` quoted as Go's `%q` writes it.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::call;
    use crate::cel::eval::lib::test_global as global;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::{ErrorKind, Meter};

    fn format(name: &str) -> Value<'static> {
        global(&format!("format.{name}"), &[]).unwrap()
    }

    /// The reasons `s` is not of format `name` (none when it is).
    fn reasons(name: &str, s: &str) -> Vec<String> {
        match method("validate", &[format(name), Value::string(s)]).unwrap() {
            Value::Optional(None) => Vec::new(),
            Value::Optional(Some(l)) => match &*l {
                Value::List(l) => l.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                other => panic!("not a list: {other:?}"),
            },
            other => panic!("not an optional: {other:?}"),
        }
    }

    fn valid(name: &str, s: &str) -> bool {
        reasons(name, s).is_empty()
    }

    #[test]
    fn every_format_by_name_and_function() {
        for f in FORMATS {
            let by_fn = format(f.name);
            let by_name = global("format.named", &[Value::string(f.name)]).unwrap();
            assert!(equals(&by_name, &Value::some(by_fn.clone())), "{}", f.name);
            for g in FORMATS.iter().filter(|g| g.name != f.name) {
                assert!(!equals(&by_fn, &format(g.name)));
            }
            assert_eq!(by_fn.type_name(), "kubernetes.NamedFormat");
        }
        assert_eq!(FORMATS.len(), 13);
        let none = global("format.named", &[Value::string("unknown")]).unwrap();
        assert!(equals(&none, &Value::NONE));
        let e = global("format.named", &[Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = method("validate", &[Value::string("x"), Value::string("y")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = method("validate", &[format("uuid"), Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn kubernetes_examples_are_valid() {
        for (f, s) in [
            ("dns1123Label", "my-label-name"),
            ("dns1123Subdomain", "apiextensions.k8s.io"),
            ("dns1035Label", "my-label-name"),
            ("qualifiedName", "apiextensions.k8s.io/v1beta1"),
            ("qualifiedName", "my.name"),
            ("dns1123LabelPrefix", "my-label-prefix-"),
            ("dns1123SubdomainPrefix", "mysubdomain.prefix.-"),
            ("dns1035LabelPrefix", "my-label-prefix-"),
            ("labelValue", "my-cool-label-Value"),
            ("labelValue", ""),
            ("uri", "http://example.com"),
            ("uuid", "123e4567-e89b-12d3-a456-426614174000"),
            ("byte", "aGVsbG8="),
            ("date", "2021-01-01"),
            ("datetime", "2021-01-01T00:00:00Z"),
        ] {
            assert!(valid(f, s), "{f} {s}: {:?}", reasons(f, s));
        }
    }

    #[test]
    fn kubernetes_messages() {
        let label = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
        assert_eq!(reasons("dns1123Label", "contains a space"), [label]);
        assert_eq!(reasons("dns1123LabelPrefix", "contains a space-"), [label]);
        let subdomain = r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
        assert_eq!(reasons("dns1123Subdomain", "contains a space"), [subdomain]);
        assert_eq!(
            reasons("dns1123SubdomainPrefix", "contains a space-"),
            [subdomain]
        );
        let dns1035 = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
        assert_eq!(reasons("dns1035Label", "contains a space"), [dns1035]);
        assert_eq!(
            reasons("dns1035LabelPrefix", "contains a space-"),
            [dns1035]
        );
        assert_eq!(
            reasons("qualifiedName", "contains a space"),
            ["name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"]
        );
        assert_eq!(
            reasons("labelValue", "my-cool-label-Value!!\n\n!!!"),
            ["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"]
        );
        assert_eq!(reasons("byte", "aGVsbG8"), ["invalid base64"]);
        assert_eq!(reasons("date", "2020-01-32"), ["invalid date"]);
        assert_eq!(
            reasons("datetime", "2020-01-32T00:00:00Z"),
            ["invalid datetime"]
        );
        assert_eq!(reasons("uuid", "nope"), ["does not match the UUID format"]);
    }

    #[test]
    fn names() {
        assert_eq!(reasons("dns1123Label", "a.b"), ["must not contain dots"]);
        let long = "a".repeat(64);
        assert_eq!(
            reasons("dns1123Label", &long),
            ["must be no more than 63 characters"]
        );
        assert!(valid("dns1123Label", &long[..63]));
        assert!(valid("dns1123Label", "0-a"));
        assert!(!valid("dns1123Label", "-a") && !valid("dns1123Label", "a-"));
        assert!(!valid("dns1123Label", "") && !valid("dns1123Label", "A"));
        assert!(!valid("dns1035Label", "0a") && valid("dns1035Label", "a0"));
        assert!(valid("dns1123Subdomain", "a.b-c.d") && !valid("dns1123Subdomain", "a..b"));
        let long_domain = format!("{}.{}", "a".repeat(200), "b".repeat(60));
        assert_eq!(
            reasons("dns1123Subdomain", &long_domain),
            ["must be no more than 253 characters"]
        );
        // A prefix: its last two bytes stand for `a` ("ab-" is read "aa").
        assert!(valid("dns1123LabelPrefix", "ab-") && !valid("dns1123LabelPrefix", "-"));
        assert_eq!(
            reasons("dns1123LabelPrefix", "a.b.-"),
            ["must not contain dots"]
        );
        assert!(valid("qualifiedName", "example.com/My_Name.x"));
        assert_eq!(
            reasons("qualifiedName", "/name"),
            ["prefix part must be non-empty"]
        );
        assert_eq!(
            reasons("qualifiedName", "Example.com/name")[0],
            format!(
                "prefix part {}",
                regex_error(SUBDOMAIN_MSG, SUBDOMAIN_FMT, &["example.com"])
            )
        );
        assert_eq!(
            reasons("qualifiedName", "a/b/c")[0],
            "a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        );
        let r = reasons("qualifiedName", "a/");
        assert_eq!(r[0], "name part must be non-empty");
        assert_eq!(r.len(), 2);
        assert_eq!(
            reasons("qualifiedName", &"n".repeat(64)),
            ["name part must be no more than 63 bytes"]
        );
        assert_eq!(
            reasons("labelValue", &"v".repeat(64)),
            ["must be no more than 63 bytes"]
        );
        assert!(!valid("labelValue", "é"));
    }

    #[test]
    fn openapi_formats() {
        for good in [
            "123e4567-e89b-12d3-a456-426614174000",
            "123E4567E89B12D3A456426614174000",
            "123e4567-e89b12d3-a456-426614174000",
        ] {
            assert!(valid("uuid", good), "{good}");
        }
        for bad in [
            "123e4567-e89b-12d3-a456-42661417400",
            "123e4567--e89b-12d3-a456-426614174000",
            "g23e4567-e89b-12d3-a456-426614174000",
            "123e4567-e89b-12d3-a456-426614174000-",
        ] {
            assert!(!valid("uuid", bad), "{bad}");
        }
        for good in ["aGVsbG8=", "aGk=", "aGVsbG8h", "+/+/"] {
            assert!(valid("byte", good), "{good}");
        }
        for bad in ["", "aGVsbG8", "aG=k", "aGVsbG8_", "a==="] {
            assert!(!valid("byte", bad), "{bad}");
        }
        for good in ["2020-02-29", "2000-02-29", "0000-01-01", "2021-12-31"] {
            assert!(valid("date", good), "{good}");
        }
        for bad in [
            "2021-02-29",
            "1900-02-29",
            "2021-13-01",
            "2021-00-10",
            "2021-01-00",
            "2021-1-01",
            "21-01-01",
            "2021-01-01x",
        ] {
            assert!(!valid("date", bad), "{bad}");
        }
        for good in [
            "2021-01-01t00:00:00z",
            "2021-01-01T23:59:59.999999Z",
            "2021-01-01T12:00:00+05:30",
            "2021-01-01T12:00:00,5-99:99",
        ] {
            assert!(valid("datetime", good), "{good}");
        }
        for bad in [
            "2021-01-01",
            "2021-01-01T24:00:00Z",
            "2021-01-01T12:60:00Z",
            "2021-01-01T12:00:00",
            "2021-01-01T12:00:00.Z",
            "2021-01-01 12:00:00Z",
            "x",
        ] {
            assert!(!valid("datetime", bad), "{bad}");
        }
    }

    #[test]
    fn uris_as_go_reads_a_request_uri() {
        for good in [
            "http://example.com",
            "https://user:pass@example.com:8443/a/b?q=1",
            "/just/a/path",
            "*",
            "mailto:someone@example.com",
            "http://[fe80::1%25en0]:80/",
            "http://example.com/a%20b",
            "http://example.com/#frag",
            "http://example.com?",
        ] {
            assert!(valid("uri", good), "{good}: {:?}", reasons("uri", good));
        }
        for (bad, why) in [
            ("", r#"parse "": empty url"#),
            (
                "example.com",
                r#"parse "example.com": invalid URI for request"#,
            ),
            (":foo", r#"parse ":foo": missing protocol scheme"#),
            (
                "http://a b.com/",
                r#"parse "http://a b.com/": invalid character " " in host name"#,
            ),
            (
                "http://example.com:80x/",
                r#"parse "http://example.com:80x/": invalid port ":80x" after host"#,
            ),
            (
                "http://example.com/%zz",
                r#"parse "http://example.com/%zz": invalid URL escape "%zz""#,
            ),
            (
                "http://[::1/",
                r#"parse "http://[::1/": missing ']' in host"#,
            ),
            (
                "http://a\nb/",
                r#"parse "http://a\nb/": net/url: invalid control character in URL"#,
            ),
            (
                "http://us er@host/",
                r#"parse "http://us er@host/": net/url: invalid userinfo"#,
            ),
            (
                "http://ex%41mple.com/",
                r#"parse "http://ex%41mple.com/": invalid URL escape "%41""#,
            ),
        ] {
            assert_eq!(reasons("uri", bad), [why], "{bad}");
        }
    }

    #[test]
    fn validation_is_charged_by_length() {
        let long = "a".repeat(100_000);
        let f = format("dns1123Subdomain");
        let mut ctx = Ctx::new(None, Meter::new(1_000));
        let e = call(
            &mut ctx,
            "validate",
            true,
            &[f.clone(), Value::string(&long)],
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        let mut ctx = Ctx::new(None, Meter::new(1_000));
        assert!(call(
            &mut ctx,
            "validate",
            true,
            &[f, Value::string("ok.example")]
        )
        .is_ok());
    }
}
