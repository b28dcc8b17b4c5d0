//! The strings extension (`charAt`, `indexOf`, `split`, `format`, ...,
//! `strings.quote`) and the encoders extension (`base64.encode`,
//! `base64.decode`), with cel-go's `ext` semantics.
//!
//! Indices are counted in Unicode code points. Every function charges the
//! bytes it walks before walking them, and those whose result may be far
//! larger than their input (`replace`, `split`, `format`, `join`) also
//! charge the size of the result before building it.

use crate::cel::eval::value::{format_duration, Bin, Map};
use crate::cel::eval::{Ctx, Error, ErrorData, ErrorKind, Function, Str, Value};

pub const FUNCTIONS: &[Function] = &[
    Function::method("charAt", 1, char_at),
    Function::method("indexOf", 1, index_of),
    Function::method("indexOf", 2, index_of),
    Function::method("lastIndexOf", 1, last_index_of),
    Function::method("lastIndexOf", 2, last_index_of),
    Function::method("lowerAscii", 0, lower_ascii),
    Function::method("upperAscii", 0, upper_ascii),
    Function::method("trim", 0, trim),
    Function::method("replace", 2, replace),
    Function::method("replace", 3, replace),
    Function::method("split", 1, split),
    Function::method("split", 2, split),
    Function::method("substring", 1, substring),
    Function::method("substring", 2, substring),
    Function::method("reverse", 0, reverse),
    Function::method("join", 0, join),
    Function::method("join", 1, join),
    Function::method("format", 1, format),
    Function::global("strings.quote", 1, quote),
    Function::global("base64.encode", 1, base64_encode),
    Function::global("base64.decode", 1, base64_decode),
];

/// Most precision a `format` clause may ask for (`%.Nf`, `%.Ne`).
const MAX_PRECISION: usize = 100;

fn out_of_range(function: &'static str, index: i64) -> Error {
    ErrorData {
        kind: ErrorKind::IndexOutOfBounds,
        function: Some(function.into()),
        message: format!("index out of range: {index}"),
    }
    .into()
}

/// `s[a..b]` as a value: borrowed when `s` is, and the same string when the
/// range is all of it.
fn sub<'r>(s: &Str<'r>, a: usize, b: usize) -> Value<'r> {
    match s {
        Str::Borrowed(x) => Value::String(Str::Borrowed(&x[a..b])),
        Str::Owned(_) if a == 0 && b == s.len() => Value::String(s.clone()),
        Str::Owned(x) => Value::string(&x[a..b]),
    }
}

/// The byte offset of code point `index` of `s`: `s.len()` for the index
/// just past the end, `None` beyond it or for a negative index.
fn byte_offset(s: &str, index: i64) -> Option<usize> {
    let i = usize::try_from(index).ok()?;
    if i == 0 {
        return Some(0);
    }
    match s.char_indices().nth(i) {
        Some((b, _)) => Some(b),
        None if s.chars().count() == i => Some(s.len()),
        None => None,
    }
}

fn count_chars(s: &str) -> i64 {
    s.chars().count() as i64
}

/// The largest char boundary of `s` at or below `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn char_at<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(s), Value::Int(i)] = args else {
        return Err(Error::no_overload("charAt", args));
    };
    ctx.charge_bytes(s.len())?;
    let start = byte_offset(s, *i).ok_or_else(|| out_of_range("charAt", *i))?;
    let end = s[start..]
        .chars()
        .next()
        .map_or(start, |c| start + c.len_utf8());
    Ok(sub(s, start, end))
}

fn index_of<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (s, needle, offset) = match args {
        [Value::String(s), Value::String(n)] => (s, n, 0),
        [Value::String(s), Value::String(n), Value::Int(o)] => (s, n, *o),
        _ => return Err(Error::no_overload("indexOf", args)),
    };
    ctx.charge_bytes(s.len() + needle.len())?;
    let start = byte_offset(s, offset).ok_or_else(|| out_of_range("indexOf", offset))?;
    Ok(Value::Int(match find(&s[start..], needle) {
        Some(p) => offset + count_chars(&s[start..start + p]),
        None => -1,
    }))
}

fn last_index_of<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (s, needle, offset) = match args {
        [Value::String(s), Value::String(n)] => (s, n, None),
        [Value::String(s), Value::String(n), Value::Int(o)] => (s, n, Some(*o)),
        _ => return Err(Error::no_overload("lastIndexOf", args)),
    };
    ctx.charge_bytes(s.len() + needle.len())?;
    // The matches considered start at or before this byte.
    let limit = match offset {
        None => s.len(),
        Some(o) => byte_offset(s, o).ok_or_else(|| out_of_range("lastIndexOf", o))?,
    };
    let end = floor_boundary(s, limit.saturating_add(needle.len()));
    Ok(Value::Int(match s[..end].rfind(needle.as_str()) {
        Some(p) => count_chars(&s[..p]),
        None => -1,
    }))
}

fn lower_ascii<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(s)] = args else {
        return Err(Error::no_overload("lowerAscii", args));
    };
    ctx.charge_bytes(s.len())?;
    if !s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(Value::String(s.clone()));
    }
    Ok(ascii_mapped(s, <[u8]>::make_ascii_lowercase))
}

fn upper_ascii<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(s)] = args else {
        return Err(Error::no_overload("upperAscii", args));
    };
    ctx.charge_bytes(s.len())?;
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Ok(Value::String(s.clone()));
    }
    Ok(ascii_mapped(s, <[u8]>::make_ascii_uppercase))
}

/// `s` with its ASCII letters changed by `map`, built on the stack when
/// short and copied once into the value.
fn ascii_mapped(s: &str, map: fn(&mut [u8])) -> Value<'static> {
    let mut buf: smallvec::SmallVec<[u8; 128]> = smallvec::SmallVec::from_slice(s.as_bytes());
    map(&mut buf);
    // Changing ASCII letters keeps UTF-8 valid.
    Value::string(std::str::from_utf8(&buf).expect("ASCII case mapping keeps UTF-8 valid"))
}

/// Trims Unicode white space (the `White_Space` property, as Go's
/// `unicode.IsSpace`) from both ends.
fn trim<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(s)] = args else {
        return Err(Error::no_overload("trim", args));
    };
    ctx.charge_bytes(s.len())?;
    let start = s.len() - s.trim_start().len();
    let end = s.trim_end().len().max(start);
    Ok(sub(s, start, end))
}

fn replace<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (s, from, to, limit) = match args {
        [Value::String(s), Value::String(f), Value::String(t)] => (s, f, t, -1),
        [Value::String(s), Value::String(f), Value::String(t), Value::Int(n)] => (s, f, t, *n),
        _ => return Err(Error::no_overload("replace", args)),
    };
    ctx.charge_bytes(s.len() + from.len())?;
    // A negative count replaces every match, as Go's `strings.Replace`.
    let all = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from.as_str()).count()
    };
    let n = if limit < 0 {
        all
    } else {
        all.min(usize::try_from(limit).unwrap_or(usize::MAX))
    };
    if n == 0 {
        return Ok(Value::String(s.clone()));
    }
    let size = (s.len() - n * from.len()).saturating_add(n.saturating_mul(to.len()));
    ctx.charge_bytes(size)?;
    Ok(Value::string(s.replacen(from.as_str(), to, n)))
}

/// Where `needle` first occurs in `hay`. `str::find` walks a long string
/// byte by byte through its generic searcher; memchr's searches use the
/// CPU's vector instructions, but a substring searcher costs a setup that
/// only a longer string pays back.
pub(crate) fn find(hay: &str, needle: &str) -> Option<usize> {
    let h = hay.as_bytes();
    match needle.as_bytes() {
        [] => Some(0),
        [b] => memchr::memchr(*b, h),
        n if n.len() > h.len() => None,
        // A short haystack: each place of the first byte compared, cheaper
        // than setting up a searcher (at most 64 places).
        n if h.len() < 64 => {
            memchr::memchr_iter(n[0], &h[..=h.len() - n.len()]).find(|&i| h[i..].starts_with(n))
        }
        n => memchr::memmem::find(h, n),
    }
}

/// Where a non-empty separator occurs in a string, not overlapping, as
/// Go's `strings.Split` finds it: what `split` and the fused
/// `s.split(sep)[k]` both cut at. A short-lived local: the substring
/// searcher's size is held on the stack rather than boxed, which would
/// cost an allocation per call.
#[allow(clippy::large_enum_variant)]
enum Separators<'a> {
    Byte(memchr::Memchr<'a>),
    Bytes(memchr::memmem::FindIter<'a, 'a>),
}

impl<'a> Separators<'a> {
    fn of(hay: &'a str, sep: &'a str) -> Self {
        match sep.as_bytes() {
            [b] => Separators::Byte(memchr::memchr_iter(*b, hay.as_bytes())),
            n => Separators::Bytes(memchr::memmem::find_iter(hay.as_bytes(), n)),
        }
    }
}

impl Iterator for Separators<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Separators::Byte(m) => m.next(),
            Separators::Bytes(m) => m.next(),
        }
    }

    /// memchr's own count of one byte is vectorised.
    fn count(self) -> usize {
        match self {
            Separators::Byte(m) => m.count(),
            Separators::Bytes(m) => m.count(),
        }
    }
}

/// The parts of a string `len` bytes long between the matches (not
/// overlapping, as Go's `strings.Split` finds them) of a separator
/// `sep_len` bytes long, at most `max` parts, the last holding the rest.
fn parts_between(
    len: usize,
    sep_len: usize,
    max: usize,
    matches: impl Iterator<Item = usize>,
) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for b in matches {
        if ranges.len() + 1 == max {
            break;
        }
        ranges.push((start, b));
        start = b + sep_len;
    }
    ranges.push((start, len));
    ranges
}

/// `s.split(sep)[k]` read without building the list (the planner fuses
/// the two when `sep` is not empty): the part count, charged as `split`
/// charges it, then [`split_nth`] picks the part.
pub(crate) fn split_count(ctx: &mut Ctx<'_>, s: &str, sep: &str) -> Result<usize, Error> {
    debug_assert!(!sep.is_empty());
    ctx.charge_bytes(s.len() + sep.len())?;
    let parts = Separators::of(s, sep).count() + 1;
    ctx.charge(parts as u64)?;
    Ok(parts)
}

/// Part `k` of `s.split(sep)` (`sep` not empty); `None` past the last.
pub(crate) fn split_nth<'r>(s: &Str<'r>, sep: &str, k: usize) -> Option<Value<'r>> {
    let mut start = 0;
    let mut found = 0;
    let hit = Separators::of(s, sep).find_map(|m| {
        if found == k {
            return Some((start, m));
        }
        found += 1;
        start = m + sep.len();
        None
    });
    let (a, b) = match hit {
        Some(r) => r,
        None if found == k => (start, s.len()),
        None => return None,
    };
    Some(sub(s, a, b))
}

fn split<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (s, sep, limit) = match args {
        [Value::String(s), Value::String(p)] => (s, p, -1),
        [Value::String(s), Value::String(p), Value::Int(n)] => (s, p, *n),
        _ => return Err(Error::no_overload("split", args)),
    };
    ctx.charge_bytes(s.len() + sep.len())?;
    if limit == 0 {
        return Ok(Value::list(Vec::new()));
    }
    // As Go's `strings.SplitN`: at most `limit` parts (all when negative),
    // the last one holding the rest; an empty separator splits between
    // code points.
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    if sep.is_empty() {
        for (b, c) in s.char_indices() {
            if ranges.len() + 1 == max {
                ranges.push((b, s.len()));
                break;
            }
            ranges.push((b, b + c.len_utf8()));
        }
    } else {
        ranges = parts_between(s.len(), sep.len(), max, Separators::of(s, sep));
    }
    ctx.charge(ranges.len() as u64)?;
    Ok(Value::list(
        ranges.into_iter().map(|(a, b)| sub(s, a, b)).collect(),
    ))
}

fn substring<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (s, start, end) = match args {
        [Value::String(s), Value::Int(a)] => (s, *a, None),
        [Value::String(s), Value::Int(a), Value::Int(b)] => (s, *a, Some(*b)),
        _ => return Err(Error::no_overload("substring", args)),
    };
    if let Some(end) = end {
        if start > end {
            return Err(ErrorData {
                kind: ErrorKind::IndexOutOfBounds,
                function: Some("substring".into()),
                message: format!("invalid substring range. start: {start}, end: {end}"),
            }
            .into());
        }
    }
    ctx.charge_bytes(s.len())?;
    let a = byte_offset(s, start).ok_or_else(|| out_of_range("substring", start))?;
    let b = match end {
        None => s.len(),
        Some(end) => byte_offset(s, end).ok_or_else(|| out_of_range("substring", end))?,
    };
    Ok(sub(s, a, b))
}

fn reverse<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(s)] = args else {
        return Err(Error::no_overload("reverse", args));
    };
    ctx.charge_bytes(s.len())?;
    Ok(Value::string(s.chars().rev().collect::<String>()))
}

fn join<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let (list, sep) = match args {
        [Value::List(l)] => (l, ""),
        [Value::List(l), Value::String(sep)] => (l, sep.as_str()),
        _ => return Err(Error::no_overload("join", args)),
    };
    ctx.charge(list.len() as u64)?;
    let mut size = sep.len().saturating_mul(list.len().saturating_sub(1));
    for v in list.iter() {
        match v {
            Value::String(s) => size = size.saturating_add(s.len()),
            other => {
                return Err(Error::function(
                    "join",
                    format!(
                        "join: invalid input: a list element is {}",
                        other.type_name()
                    ),
                ))
            }
        }
    }
    ctx.charge_bytes(size)?;
    let mut out = String::with_capacity(size);
    for (i, v) in list.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        if let Value::String(s) = v {
            out.push_str(s);
        }
    }
    Ok(Value::string(out))
}

/// `strings.quote`: the string as a double-quoted CEL string literal.
fn quote<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(s)] = args else {
        return Err(Error::no_overload("strings.quote", args));
    };
    ctx.charge_bytes(s.len().saturating_mul(2))?;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(Value::string(out))
}

fn base64_encode<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    use base64::Engine as _;
    let [Value::Bytes(b)] = args else {
        return Err(Error::no_overload("base64.encode", args));
    };
    ctx.charge_bytes(b.len().saturating_mul(2))?;
    Ok(Value::string(
        base64::engine::general_purpose::STANDARD.encode(b.as_bytes()),
    ))
}

/// Accepts padded and unpadded input, and ignores line breaks, as Go's
/// decoder (which cel-go tries padded, then unpadded).
fn base64_decode<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let [Value::String(s)] = args else {
        return Err(Error::no_overload("base64.decode", args));
    };
    ctx.charge_bytes(s.len().saturating_mul(2))?;
    let decoded = if s.contains(['\r', '\n']) {
        let cleaned: String = s.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
        LENIENT.decode(cleaned)
    } else {
        LENIENT.decode(s.as_bytes())
    };
    decoded
        .map(Value::bytes)
        .map_err(|e| Error::function("base64.decode", format!("base64.decode: {e}")))
}

// ---------------------------------------------------------------------------
// format

fn format_error(message: String) -> Error {
    Error::function("format", format!("error during formatting: {message}"))
}

fn parse_error(message: impl std::fmt::Display) -> Error {
    Error::function(
        "format",
        format!("could not parse formatting clause: {message}"),
    )
}

/// `"...".format([args])`: cel-go's clauses `%s %d %f %e %b %x %X %o`, an
/// optional precision (`%.3f`), and `%%`.
fn format<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let [Value::String(template), Value::List(list)] = args else {
        return Err(Error::no_overload("format", args));
    };
    ctx.charge_bytes(template.len())?;
    let t = template.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(t.len());
    let mut next_arg = 0usize;
    let mut i = 0;
    while i < t.len() {
        if t[i] != b'%' {
            // Copy the run of literal text up to the next clause.
            let end = t[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(t.len(), |p| i + p);
            out.extend_from_slice(&t[i..end]);
            i = end;
            continue;
        }
        if t.get(i + 1) == Some(&b'%') {
            out.push(b'%');
            i += 2;
            continue;
        }
        let Some(arg) = list.get(next_arg) else {
            return Err(Error::function(
                "format",
                format!("index {next_arg} out of range"),
            ));
        };
        i += 1;
        if i >= t.len() {
            return Err(Error::function("format", "unexpected end of string"));
        }
        let mut precision = None;
        if t[i] == b'.' {
            i += 1;
            let digits = t[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            if i + digits >= t.len() {
                return Err(parse_error(
                    "error while parsing precision: could not find end of precision specifier",
                ));
            }
            let text = std::str::from_utf8(&t[i..i + digits]).unwrap_or("");
            let p: usize = text.parse().map_err(|_| {
                parse_error(format!(
                    "error while parsing precision: invalid precision {text:?}"
                ))
            })?;
            if p > MAX_PRECISION {
                return Err(parse_error(format!(
                    "error while parsing precision: precision {p} exceeds maximum allowed precision {MAX_PRECISION}"
                )));
            }
            precision = Some(p);
            i += digits;
        }
        let verb = template[i..].chars().next().unwrap_or('%');
        i += verb.len_utf8();
        let before = out.len();
        match verb {
            's' => format_string(ctx, arg, &mut out)?,
            'd' => out.extend_from_slice(decimal(arg)?.as_bytes()),
            'f' => out.extend_from_slice(fixed(arg, precision.unwrap_or(6))?.as_bytes()),
            'e' => out.extend_from_slice(scientific(arg, precision.unwrap_or(6))?.as_bytes()),
            'b' => out.extend_from_slice(binary(arg)?.as_bytes()),
            'x' | 'X' => hex(ctx, arg, verb == 'X', &mut out)?,
            'o' => out.extend_from_slice(octal(arg)?.as_bytes()),
            other => {
                return Err(parse_error(format!(
                    "unrecognized formatting clause \"{other}\""
                )))
            }
        }
        ctx.charge_bytes(out.len() - before)?;
        next_arg += 1;
    }
    // The template is UTF-8 and every clause writes UTF-8 (bytes through
    // `%s` are made valid as they are written).
    Ok(Value::string(String::from_utf8(out).map_err(|_| {
        Error::internal("format wrote invalid UTF-8")
    })?))
}

/// A double as Go's `strconv.FormatFloat(d, 'f', -1, 64)` writes it
/// (shortest exact digits, no exponent), with cel-go's names for the
/// special values.
fn double_text(d: f64) -> String {
    if d.is_nan() {
        "NaN".to_owned()
    } else if d.is_infinite() {
        if d > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        format!("{d}")
    }
}

/// A timestamp as Go's `time.RFC3339Nano` (UTC, trailing zeros of the
/// fraction dropped).
fn timestamp_text(t: &chrono::DateTime<chrono::Utc>) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

fn string_clause_error(v: &Value<'_>) -> Error {
    format_error(format!(
        "string clause can only be used on strings, bools, bytes, ints, doubles, maps, lists, types, durations, and timestamps, was given {}",
        v.type_name()
    ))
}

/// `%s`: lists and maps element by element (map entries sorted by their
/// key's text), strings and bytes as they are, the rest as `string(v)`.
/// Recursion follows the value's nesting, which literals and JSON bound.
fn format_string(ctx: &mut Ctx<'_>, v: &Value<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Uint(u) => out.extend_from_slice(u.to_string().as_bytes()),
        Value::Double(d) => out.extend_from_slice(double_text(*d).as_bytes()),
        Value::String(s) => {
            ctx.charge_bytes(s.len())?;
            out.extend_from_slice(s.as_bytes())
        }
        Value::Bytes(b) => {
            ctx.charge_bytes(b.len())?;
            out.extend_from_slice(String::from_utf8_lossy(b.as_bytes()).as_bytes())
        }
        Value::Duration(d) => out.extend_from_slice(format_duration(*d).as_bytes()),
        Value::Timestamp(t) => out.extend_from_slice(timestamp_text(t).as_bytes()),
        Value::Type(t) => out.extend_from_slice(t.name().as_bytes()),
        Value::List(l) => {
            ctx.charge(l.len() as u64)?;
            out.push(b'[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                format_string(ctx, e, out)?;
            }
            out.push(b']');
        }
        Value::Map(m) => format_map(ctx, m, out)?,
        Value::Optional(_) | Value::Node(_) | Value::Object(_) => {
            return Err(string_clause_error(v))
        }
    }
    Ok(())
}

fn format_map(ctx: &mut Ctx<'_>, m: &Map<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
    ctx.charge(m.len() as u64)?;
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(m.len());
    for (k, v) in m.entries() {
        let mut key = Vec::new();
        format_string(ctx, &k, &mut key)?;
        let mut value = Vec::new();
        format_string(ctx, &v, &mut value)?;
        entries.push((key, value));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    out.push(b'{');
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(k);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
    }
    out.push(b'}');
    Ok(())
}

fn decimal(v: &Value<'_>) -> Result<String, Error> {
    Ok(match v {
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::Double(d) => double_text(*d),
        other => {
            return Err(format_error(format!(
                "decimal clause can only be used on ints, uints, and doubles, was given {}",
                other.type_name()
            )))
        }
    })
}

/// The number of a `%f` or `%e` clause.
fn float_arg(v: &Value<'_>, clause: &str) -> Result<f64, Error> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Uint(u) => Ok(*u as f64),
        Value::Double(d) => Ok(*d),
        other => Err(format_error(format!(
            "{clause} clause can only be used on ints, uints, and doubles, was given {}",
            other.type_name()
        ))),
    }
}

fn fixed(v: &Value<'_>, precision: usize) -> Result<String, Error> {
    let d = float_arg(v, "fixed-point")?;
    if !d.is_finite() {
        return Ok(double_text(d));
    }
    Ok(format!("{d:.precision$}"))
}

/// `%e` as Go writes it: `1.052033e+03` (a sign and at least two digits
/// in the exponent).
fn scientific(v: &Value<'_>, precision: usize) -> Result<String, Error> {
    let d = float_arg(v, "scientific")?;
    if !d.is_finite() {
        return Ok(double_text(d));
    }
    let s = format!("{d:.precision$e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exp),
    };
    Ok(format!("{mantissa}e{sign}{digits:0>2}"))
}

fn binary(v: &Value<'_>) -> Result<String, Error> {
    Ok(match v {
        Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
        Value::Int(i) if *i < 0 => format!("-{:b}", i.unsigned_abs()),
        Value::Int(i) => format!("{i:b}"),
        Value::Uint(u) => format!("{u:b}"),
        other => {
            return Err(format_error(format!(
                "only ints, uints, and bools can be formatted as binary, was given {}",
                other.type_name()
            )))
        }
    })
}

fn octal(v: &Value<'_>) -> Result<String, Error> {
    Ok(match v {
        Value::Int(i) if *i < 0 => format!("-{:o}", i.unsigned_abs()),
        Value::Int(i) => format!("{i:o}"),
        Value::Uint(u) => format!("{u:o}"),
        other => {
            return Err(format_error(format!(
                "octal clause can only be used on ints and uints, was given {}",
                other.type_name()
            )))
        }
    })
}

fn hex(ctx: &mut Ctx<'_>, v: &Value<'_>, upper: bool, out: &mut Vec<u8>) -> Result<(), Error> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut bytes = |b: &[u8], ctx: &mut Ctx<'_>| -> Result<(), Error> {
        ctx.charge_bytes(b.len().saturating_mul(2))?;
        for &x in b {
            out.push(digits[usize::from(x >> 4)]);
            out.push(digits[usize::from(x & 15)]);
        }
        Ok(())
    };
    let text = match v {
        Value::String(s) => return bytes(s.as_bytes(), ctx),
        Value::Bytes(b) => return bytes(Bin::as_bytes(b), ctx),
        Value::Int(i) if *i < 0 && upper => format!("-{:X}", i.unsigned_abs()),
        Value::Int(i) if *i < 0 => format!("-{:x}", i.unsigned_abs()),
        Value::Int(i) if upper => format!("{i:X}"),
        Value::Int(i) => format!("{i:x}"),
        Value::Uint(u) if upper => format!("{u:X}"),
        Value::Uint(u) => format!("{u:x}"),
        other => {
            return Err(format_error(format!(
                "only ints, uints, bytes, and strings can be formatted as hex, was given {}",
                other.type_name()
            )))
        }
    };
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn find_agrees_with_the_standard_search_at_every_length() {
        let needles = ["", "a", "ab", "aab", "bb", "é", "éa", "x64", "abcabd", "ü€"];
        let alphabet = ['a', 'b', 'é', '€', 'ü'];
        for len in 0..80usize {
            // A haystack of `len` characters, repetitive so that partial
            // matches abound, with a needle's worth of text near the end.
            let mut hay: String = (0..len)
                .map(|i| alphabet[(i * 7 + i / 3) % alphabet.len()])
                .collect();
            for (k, n) in needles.iter().enumerate() {
                assert_eq!(super::find(&hay, n), hay.find(n), "{hay:?} {n:?}");
                if k == len % needles.len() {
                    hay.push_str(n);
                    assert_eq!(super::find(&hay, n), hay.find(n), "{hay:?} {n:?}");
                }
            }
        }
    }

    use crate::cel::eval::lib::call as call_in;
    use crate::cel::eval::lib::test_global as global;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::{Ctx, Error, ErrorKind, Meter, Value};

    fn s(v: &str) -> Value<'_> {
        Value::str(v)
    }

    fn i(v: i64) -> Value<'static> {
        Value::Int(v)
    }

    fn text(r: Result<Value<'_>, Error>) -> String {
        match r {
            Ok(Value::String(s)) => s.to_string(),
            other => panic!("not a string: {other:?}"),
        }
    }

    fn int(r: Result<Value<'_>, Error>) -> i64 {
        match r {
            Ok(Value::Int(i)) => i,
            other => panic!("not an int: {other:?}"),
        }
    }

    fn strings(r: Result<Value<'_>, Error>) -> Vec<String> {
        match r {
            Ok(Value::List(l)) => l
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect(),
            other => panic!("not a list: {other:?}"),
        }
    }

    fn err(r: Result<Value<'_>, Error>) -> Error {
        match r {
            Err(e) => e,
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    fn format<'r>(template: &'r str, args: Vec<Value<'r>>) -> Result<Value<'r>, Error> {
        method("format", &[s(template), Value::list(args)])
    }

    #[test]
    fn char_at_counts_code_points() {
        assert_eq!(text(method("charAt", &[s("tacocat"), i(3)])), "o");
        assert_eq!(text(method("charAt", &[s("tacocat"), i(7)])), "");
        assert_eq!(text(method("charAt", &[s("©αT"), i(1)])), "α");
        let e = err(method("charAt", &[s("tacocat"), i(30)]));
        assert_eq!(e.message, "index out of range: 30");
        err(method("charAt", &[s("tacocat"), i(-1)]));
        let e = err(method("charAt", &[s("hello"), Value::Bool(true)]));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = err(method("charAt", &[i(42), i(2)]));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn substrings_of_borrowed_strings_borrow() {
        let owner = String::from("  tacocat ");
        let v = method("trim", &[Value::str(&owner)]).unwrap();
        let Value::String(crate::cel::eval::Str::Borrowed(b)) = v else {
            panic!("trim copied its result: {v:?}");
        };
        assert_eq!(b, "tacocat");
        assert!(std::ptr::eq(b.as_ptr(), owner[2..].as_ptr()));
    }

    #[test]
    fn index_of_and_last_index_of() {
        assert_eq!(int(method("indexOf", &[s("tacocat"), s("")])), 0);
        assert_eq!(int(method("indexOf", &[s("tacocat"), s("ac")])), 1);
        assert_eq!(int(method("indexOf", &[s("tacocat"), s("none")])), -1);
        assert_eq!(int(method("indexOf", &[s("tacocat"), s(""), i(3)])), 3);
        assert_eq!(int(method("indexOf", &[s("tacocat"), s("at"), i(3)])), 5);
        assert_eq!(int(method("indexOf", &[s("ta©o©αT"), s("©")])), 2);
        assert_eq!(int(method("indexOf", &[s("ta©o©αT"), s("©αT"), i(3)])), 4);
        assert_eq!(int(method("indexOf", &[s("ta©o©αT"), s("©α"), i(5)])), -1);
        assert_eq!(int(method("indexOf", &[s(""), s("a")])), -1);
        err(method("indexOf", &[s("tacocat"), s("a"), i(30)]));
        err(method("indexOf", &[s("tacocat"), s("a"), i(-1)]));
        let e = err(method("indexOf", &[s("42"), s("4"), s("0")]));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);

        assert_eq!(int(method("lastIndexOf", &[s(""), s("@@")])), -1);
        assert_eq!(int(method("lastIndexOf", &[s("tacocat"), s("")])), 7);
        assert_eq!(int(method("lastIndexOf", &[s("tacocat"), s("at")])), 5);
        assert_eq!(int(method("lastIndexOf", &[s("tacocat"), s(""), i(3)])), 3);
        assert_eq!(int(method("lastIndexOf", &[s("tacocat"), s("a"), i(3)])), 1);
        assert_eq!(int(method("lastIndexOf", &[s("ta©o©αT"), s("©")])), 4);
        assert_eq!(int(method("lastIndexOf", &[s("ta©o©αT"), s("©"), i(3)])), 2);
        assert_eq!(
            int(method("lastIndexOf", &[s("ta©o©αT"), s("©α"), i(4)])),
            4
        );
        assert_eq!(
            int(method("lastIndexOf", &[s("hello wello"), s("ello"), i(6)])),
            1
        );
        assert_eq!(
            int(method("lastIndexOf", &[s("bananananana"), s("nana"), i(7)])),
            6
        );
        assert_eq!(int(method("lastIndexOf", &[s("aaaa"), s("aa"), i(1)])), 1);
        assert_eq!(
            int(method("lastIndexOf", &[s("hello wello"), s("hello wello")])),
            0
        );
        err(method("lastIndexOf", &[s("tacocat"), s("a"), i(-1)]));
        err(method("lastIndexOf", &[s("tacocat"), s("a"), i(30)]));
    }

    #[test]
    fn casing_trim_reverse() {
        assert_eq!(
            text(method("lowerAscii", &[s("TacoCÆt Xii")])),
            "tacocÆt xii"
        );
        assert_eq!(text(method("upperAscii", &[s("tacoCαt")])), "TACOCαT");
        assert_eq!(
            text(method("trim", &[s(" \u{c}\n\r\t\u{b}text  ")])),
            "text"
        );
        assert_eq!(
            text(method("trim", &[s("\u{85}\u{a0}\u{1680}text\u{3000}")])),
            "text"
        );
        let kept = "\u{180e}text\u{200b}\u{200c}\u{200d}\u{2060}\u{feff}";
        assert_eq!(text(method("trim", &[s(kept)])), kept);
        assert_eq!(text(method("trim", &[s("   ")])), "");
        assert_eq!(text(method("reverse", &[s("Ta©oCαt")])), "tαCo©aT");
        assert_eq!(text(method("reverse", &[s("")])), "");
    }

    #[test]
    fn replace_and_split_as_go() {
        assert_eq!(
            text(method(
                "replace",
                &[s("{0} days {0} hours"), s("{0}"), s("2")]
            )),
            "2 days 2 hours"
        );
        assert_eq!(
            text(method(
                "replace",
                &[s("{0} days {0} hours"), s("{0}"), s("2"), i(1)]
            )),
            "2 days {0} hours"
        );
        assert_eq!(
            text(method("replace", &[s("abc"), s("b"), s("x"), i(0)])),
            "abc"
        );
        assert_eq!(
            text(method("replace", &[s("abc"), s(""), s("-")])),
            "-a-b-c-"
        );
        assert_eq!(
            text(method("replace", &[s("abc"), s(""), s("-"), i(2)])),
            "-a-bc"
        );
        assert_eq!(
            text(method("replace", &[s("1 ©αT taco"), s("αT"), s("o©α")])),
            "1 ©o©α taco"
        );
        let e = err(method("replace", &[s("42"), s("2"), i(1)]));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);

        assert_eq!(
            strings(method("split", &[s("hello world"), s(" ")])),
            ["hello", "world"]
        );
        assert!(strings(method("split", &[s("a b c"), s(" "), i(0)])).is_empty());
        assert_eq!(
            strings(method("split", &[s("a b c"), s(" "), i(1)])),
            ["a b c"]
        );
        assert_eq!(
            strings(method("split", &[s("a b c"), s(" "), i(2)])),
            ["a", "b c"]
        );
        assert_eq!(
            strings(method("split", &[s("o©o©o©o"), s("©"), i(-1)])),
            ["o", "o", "o", "o"]
        );
        assert_eq!(
            strings(method("split", &[s("a©c"), s("")])),
            ["a", "©", "c"]
        );
        assert_eq!(
            strings(method("split", &[s("a©c"), s(""), i(2)])),
            ["a", "©c"]
        );
        assert!(strings(method("split", &[s(""), s("")])).is_empty());
        assert_eq!(strings(method("split", &[s(""), s(",")])), [""]);
        // Matches do not overlap, as Go's `strings.Split`: "aaa" by "aa".
        assert_eq!(strings(method("split", &[s("aaa"), s("aa")])), ["", "a"]);
        assert_eq!(
            strings(method("split", &[s("a::b:::c"), s("::")])),
            ["a", "b", ":c"]
        );
    }

    #[test]
    fn substring_ranges() {
        assert_eq!(text(method("substring", &[s("tacocat"), i(4)])), "cat");
        assert_eq!(text(method("substring", &[s("tacocat"), i(7)])), "");
        assert_eq!(
            text(method("substring", &[s("tacocat"), i(0), i(4)])),
            "taco"
        );
        assert_eq!(
            text(method("substring", &[s("ta©o©αT"), i(2), i(6)])),
            "©o©α"
        );
        assert_eq!(text(method("substring", &[s("ta©o©αT"), i(7), i(7)])), "");
        assert_eq!(
            err(method("substring", &[s("tacocat"), i(40)])).message,
            "index out of range: 40"
        );
        assert_eq!(
            err(method("substring", &[s("tacocat"), i(-1)])).message,
            "index out of range: -1"
        );
        assert_eq!(
            err(method("substring", &[s("tacocat"), i(1), i(50)])).message,
            "index out of range: 50"
        );
        assert_eq!(
            err(method("substring", &[s("tacocat"), i(49), i(50)])).message,
            "index out of range: 49"
        );
        assert_eq!(
            err(method("substring", &[s("tacocat"), i(4), i(3)])).message,
            "invalid substring range. start: 4, end: 3"
        );
    }

    #[test]
    fn join_and_quote() {
        let xy = Value::list(vec![s("x"), s("y")]);
        assert_eq!(text(method("join", std::slice::from_ref(&xy))), "xy");
        assert_eq!(text(method("join", &[xy, s("-")])), "x-y");
        assert_eq!(text(method("join", &[Value::list(vec![]), s("-")])), "");
        err(method("join", &[Value::list(vec![s("x"), i(1)])]));

        assert_eq!(
            text(global("strings.quote", &[s("first\nsecond")])),
            "\"first\\nsecond\""
        );
        assert_eq!(
            text(global(
                "strings.quote",
                &[s("\u{7}\u{8}\u{c}\r\t\u{b}\\\"")]
            )),
            "\"\\a\\b\\f\\r\\t\\v\\\\\\\"\""
        );
        assert_eq!(
            text(global("strings.quote", &[s("ta©o©αT😀")])),
            "\"ta©o©αT😀\""
        );
        assert_eq!(text(global("strings.quote", &[s("")])), "\"\"");
    }

    #[test]
    fn base64_both_ways() {
        assert_eq!(
            text(global("base64.encode", &[Value::bytes(b"hello".to_vec())])),
            "aGVsbG8="
        );
        for input in ["aGVsbG8=", "aGVsbG8", "aGVs\nbG8="] {
            match global("base64.decode", &[s(input)]) {
                Ok(Value::Bytes(b)) => assert_eq!(b.as_bytes(), b"hello"),
                other => panic!("{input}: {other:?}"),
            }
        }
        let e = err(global("base64.decode", &[s("a*b")]));
        assert_eq!(e.kind, ErrorKind::FunctionError);
        let e = err(global(
            "base64.decode",
            &[Value::bytes(b"aGVsbG8=".to_vec())],
        ));
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn format_clauses() {
        let cases: Vec<(&str, Vec<Value<'static>>, &str)> = vec![
            ("no substitution", vec![], "no substitution"),
            ("%%%s%%", vec![s("text")], "%text%"),
            ("%d %s, %d", vec![i(1), s("A"), Value::Uint(64)], "1 A, 64"),
            ("%.3f", vec![Value::Double(1.2345)], "1.234"),
            (
                "%b %b %b",
                vec![i(5), Value::Uint(64), Value::Bool(true)],
                "101 1000000 1",
            ),
            (
                "%b %o %x %X",
                vec![i(-5), i(-8), i(-255), i(-255)],
                "-101 -10 -ff -FF",
            ),
            ("%o %o", vec![i(11), Value::Uint(65535)], "13 177777"),
            ("%x %X", vec![i(30), Value::Uint(6000)], "1e 1770"),
            ("%x", vec![s("Hello world!")], "48656c6c6f20776f726c6421"),
            (
                "%X",
                vec![Value::bytes(b"byte string".to_vec())],
                "6279746520737472696E67",
            ),
            ("%.6e", vec![Value::Double(1052.032911275)], "1.052033e+03"),
            (
                "%e %e",
                vec![i(2), Value::Double(1e-300)],
                "2.000000e+00 1.000000e-300",
            ),
            ("%f %f", vec![i(2), Value::Uint(3)], "2.000000 3.000000"),
            (
                "%e %f %d",
                vec![
                    Value::Double(f64::NAN),
                    Value::Double(f64::INFINITY),
                    Value::Double(f64::NEG_INFINITY),
                ],
                "NaN Infinity -Infinity",
            ),
            (
                "%.0f %.0f %.0f %.0f",
                vec![
                    Value::Double(3.5001),
                    Value::Double(3.4999),
                    Value::Double(1.5),
                    Value::Double(2.5),
                ],
                "4 3 2 2",
            ),
            (
                "%.3f %.5f",
                vec![Value::Double(-123.4999), Value::Double(-1.2)],
                "-123.500 -1.20000",
            ),
            (
                "%s %s %s",
                vec![Value::Null, i(999999999999), Value::bytes(b"xyz".to_vec())],
                "null 999999999999 xyz",
            ),
            (
                "%s",
                vec![Value::Type(crate::cel::eval::Type::String)],
                "string",
            ),
            (
                "%s, %s",
                vec![Value::Bool(true), Value::Double(56.8)],
                "true, 56.8",
            ),
            ("%s", vec![Value::Double(1e20)], "100000000000000000000"),
            ("%d", vec![Value::Double(2.5)], "2.5"),
        ];
        for (template, args, want) in cases {
            assert_eq!(text(format(template, args)), want, "{template}");
        }
    }

    #[test]
    fn format_composites() {
        use chrono::{TimeDelta, TimeZone, Utc};
        let ts = Value::Timestamp(Utc.with_ymd_and_hms(2023, 2, 3, 23, 31, 20).unwrap());
        let list = Value::list(vec![
            s("abc"),
            Value::Double(2.25),
            Value::Null,
            Value::list(vec![i(9), i(8)]),
            ts.clone(),
        ]);
        assert_eq!(
            text(format("%s", vec![list])),
            "[abc, 2.25, null, [9, 8], 2023-02-03T23:31:20Z]"
        );
        let frac = Value::Timestamp(Utc.timestamp_opt(1, 120_000_000).unwrap());
        assert_eq!(text(format("%s", vec![frac])), "1970-01-01T00:00:01.12Z");
        assert_eq!(
            text(format(
                "%s",
                vec![Value::Duration(TimeDelta::seconds(6347))]
            )),
            "6347s"
        );
        let mut m = crate::cel::eval::value::OwnedMap::default();
        m.insert(crate::cel::eval::Key::String("strKey".into()), s("x"));
        m.insert(
            crate::cel::eval::Key::Int(6),
            Value::Duration(TimeDelta::seconds(422)),
        );
        m.insert(crate::cel::eval::Key::Bool(true), Value::Double(f64::NAN));
        assert_eq!(
            text(format("%s", vec![Value::map(m)])),
            "{6: 422s, strKey: x, true: NaN}"
        );
    }

    #[test]
    fn format_errors() {
        let cases: Vec<(&str, Vec<Value<'static>>, &str)> = vec![
            ("%a", vec![i(1)], "unrecognized formatting clause \"a\""),
            ("%d %d %d", vec![i(0), i(1)], "index 2 out of range"),
            ("%b", vec![s("abc")], "binary"),
            ("%d", vec![Value::Null], "decimal clause"),
            ("%o", vec![s("a")], "octal clause"),
            ("%x", vec![Value::Double(0.5)], "hex"),
            (
                "%E",
                vec![Value::Double(0.5)],
                "unrecognized formatting clause \"E\"",
            ),
            ("%e", vec![Value::Null], "scientific clause"),
            ("%f", vec![Value::Null], "fixed-point clause"),
            ("%s", vec![Value::NONE], "string clause"),
            (
                "%s",
                vec![Value::list(vec![i(1), Value::NONE])],
                "string clause",
            ),
            ("%", vec![i(1)], "unexpected end of string"),
            ("%.3", vec![i(1)], "precision"),
            ("%.1000f", vec![i(1)], "precision"),
        ];
        for (template, args, want) in cases {
            let e = err(format(template, args));
            assert!(e.message.contains(want), "{template}: {}", e.message);
        }
    }

    #[test]
    fn big_results_are_charged_before_they_are_built() {
        let big = "a".repeat(10_000);
        // 10,001 insertions of 10,000 bytes: 100 MB, far past the budget.
        let mut ctx = Ctx::new(None, Meter::new(1_000_000));
        let e = err(call_in(
            &mut ctx,
            "replace",
            true,
            &[s(&big), s(""), s(&big)],
        ));
        assert_eq!(e.kind, ErrorKind::CostExceeded);

        let mut ctx = Ctx::new(None, Meter::new(1_000));
        let e = err(call_in(&mut ctx, "split", true, &[s(&big), s("")]));
        assert_eq!(e.kind, ErrorKind::CostExceeded);

        let mut ctx = Ctx::new(None, Meter::new(1_000_000));
        assert_eq!(
            int(call_in(&mut ctx, "indexOf", true, &[s(&big), s("b")])),
            -1
        );
        let used = ctx.meter.used();
        assert!(
            (1_000..=1_100).contains(&used),
            "indexOf of 10 kB charged {used}"
        );

        let mut ctx = Ctx::new(None, Meter::new(100));
        let args = Value::list(vec![s(&big)]);
        let e = err(call_in(&mut ctx, "format", true, &[s("%s%s"), args]));
        assert_eq!(e.kind, ErrorKind::CostExceeded);
    }
}
