//! The URL library, as Kubernetes defines it for its CEL expressions
//! (`kubernetes.URL`).
//!
//! ```cel
//! url("https://example.com:8443/a%20b?x=1&x=2").getPort() == "8443"
//! isURL(object.attributes.request.http.path)
//! url(object.attributes.request.http.path).getQuery()[?"debug"].hasValue()
//! ```
//!
//! `url(s)` reads an absolute URI (`scheme:...`) or an absolute path
//! (`/...`) the way Kubernetes does, with Go's `net/url` rules: a reference
//! without a scheme that does not start with `/` (`example.com`,
//! `../x`) is refused, as are control characters, a malformed `%` escape, a
//! port that is not all digits, a bracketed host that is not an IPv6
//! address and an ASCII byte escaped in a host. The scheme is read in lower
//! case. `isURL(s)` says whether `url(s)` would read `s` (a malformed escape
//! after a `#` fragment mark is the one thing `isURL` lets through and
//! `url` refuses, as in Kubernetes).
//!
//! Two URLs are equal when they write back the same (Go's `URL.String`).
//! A part decoded from `%` escapes that is not UTF-8 cannot be a CEL string:
//! the getter returns an error for it.

use crate::cel::eval::{Ctx, Error, Function, Key, Object, Value};
use std::any::Any;
use std::fmt;
use std::net::Ipv6Addr;

/// The type name, as `type(x)` gives it and an expression writes it.
pub const TYPE: &str = "kubernetes.URL";
pub const TYPES: &[&str] = &[TYPE];

pub const FUNCTIONS: &[Function] = &[
    Function::global("url", 1, url),
    Function::global("isURL", 1, is_url),
    Function::method("getScheme", 0, get_scheme),
    Function::method("getHost", 0, get_host),
    Function::method("getHostname", 0, get_hostname),
    Function::method("getPort", 0, get_port),
    Function::method("getEscapedPath", 0, get_escaped_path),
    Function::method("getQuery", 0, get_query),
];

/// The declarations the type checker reads.
pub const DECLS: &str = "
url(string) -> kubernetes.URL
isURL(string) -> bool
(kubernetes.URL).getScheme() -> string
(kubernetes.URL).getHost() -> string
(kubernetes.URL).getHostname() -> string
(kubernetes.URL).getPort() -> string
(kubernetes.URL).getEscapedPath() -> string
(kubernetes.URL).getQuery() -> map(string, list(string))
";

/// The library's values have no fields: they are passed to its functions.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = &[(TYPE, &[])];

/// A parsed URL (`kubernetes.URL`): Go's `url.URL`, decoded parts as bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Url {
    scheme: String,
    opaque: String,
    /// User name and optional password, decoded.
    user: Option<(Vec<u8>, Option<Vec<u8>>)>,
    /// `host[:port]`, decoded.
    host: Vec<u8>,
    path: Vec<u8>,
    /// The path as written, when it differs from the default escaping.
    raw_path: String,
    omit_host: bool,
    force_query: bool,
    raw_query: String,
    fragment: Vec<u8>,
    raw_fragment: String,
}

/// Where an escape is read or written: each part has its own rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Zone,
    UserPassword,
    QueryComponent,
    Fragment,
}

/// Why Go's `net/url` refuses a URL. The parts it quotes are kept
/// unquoted: the URL library and `format.uri` quote them in their own ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    ControlCharacter,
    Empty,
    MissingScheme,
    NotForRequest,
    ColonInFirstSegment,
    MissingBracket,
    InvalidPort(String),
    InvalidIpv6(String),
    InvalidEscape(String),
    InvalidHostCharacter(char),
    InvalidUserinfo,
}

impl ParseError {
    /// Go's message, with `quote` writing each quoted part.
    pub(crate) fn message(&self, quote: impl Fn(&str) -> String) -> String {
        match self {
            Self::ControlCharacter => "net/url: invalid control character in URL".into(),
            Self::Empty => "empty url".into(),
            Self::MissingScheme => "missing protocol scheme".into(),
            Self::NotForRequest => "invalid URI for request".into(),
            Self::ColonInFirstSegment => "first path segment in URL cannot contain colon".into(),
            Self::MissingBracket => "missing ']' in host".into(),
            Self::InvalidPort(port) => format!("invalid port {} after host", quote(port)),
            Self::InvalidIpv6(addr) => format!("invalid IPv6 host {}", quote(&shown(addr))),
            Self::InvalidEscape(escape) => format!("invalid URL escape {}", quote(escape)),
            Self::InvalidHostCharacter(c) => {
                format!("invalid character {} in host name", quote(&c.to_string()))
            }
            Self::InvalidUserinfo => "net/url: invalid userinfo".into(),
        }
    }
}

/// RFC 3986's sub-delims, which Go's `net/url` lets stand in a host, in
/// userinfo and in an already escaped path or fragment.
fn sub_delim(c: u8) -> bool {
    matches!(
        c,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if matches!(mode, Mode::Host | Mode::Zone)
        && (sub_delim(c) || matches!(c, b':' | b'[' | b']' | b'<' | b'>' | b'"'))
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => return false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Mode::Path => return c == b'?',
            Mode::UserPassword => return matches!(c, b'@' | b'/' | b'?' | b':'),
            Mode::QueryComponent => return true,
            Mode::Fragment => return false,
            Mode::Host | Mode::Zone => {}
        },
        _ => {}
    }
    if mode == Mode::Fragment && matches!(c, b'!' | b'(' | b')' | b'*') {
        return false;
    }
    true
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// `%XX` escapes of a path (`query`: of a query component, where `+` is a
/// space) decoded as Go's `url.PathUnescape` and `url.QueryUnescape` do;
/// `None` for a bad escape.
pub(crate) fn unescape_component(s: &str, query: bool) -> Option<Vec<u8>> {
    unescape(
        s,
        if query {
            Mode::QueryComponent
        } else {
            Mode::Path
        },
    )
    .ok()
}

/// Decodes `%XX` escapes (and `+` in a query component), refusing what Go
/// refuses in each part.
fn unescape(s: &str, mode: Mode) -> Result<Vec<u8>, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    let end = (i + 3).min(b.len());
                    return Err(ParseError::InvalidEscape(
                        String::from_utf8_lossy(&b[i..end]).into_owned(),
                    ));
                };
                let v = h << 4 | l;
                let escape = &s[i..i + 3];
                if mode == Mode::Host && h < 8 && escape != "%25" {
                    return Err(ParseError::InvalidEscape(escape.to_owned()));
                }
                if mode == Mode::Zone
                    && escape != "%25"
                    && v != b' '
                    && should_escape(v, Mode::Host)
                {
                    return Err(ParseError::InvalidEscape(escape.to_owned()));
                }
                out.push(v);
                i += 3;
            }
            b'+' if mode == Mode::QueryComponent => {
                out.push(b' ');
                i += 1;
            }
            c => {
                if matches!(mode, Mode::Host | Mode::Zone) && c < 0x80 && should_escape(c, mode) {
                    return Err(ParseError::InvalidHostCharacter(c as char));
                }
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Writes `s` with the escapes its part needs.
fn escape(s: &[u8], mode: Mode) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s {
        if !should_escape(c, mode) {
            out.push(c as char);
        } else if c == b' ' && mode == Mode::QueryComponent {
            out.push('+');
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Whether `s` is already a valid escaping for its part.
fn valid_encoded(s: &str, mode: Mode) -> bool {
    s.bytes().all(|c| {
        sub_delim(c) || matches!(c, b':' | b'@' | b'[' | b']' | b'%') || !should_escape(c, mode)
    })
}

fn valid_optional_port(port: &str) -> bool {
    match port.strip_prefix(':') {
        _ if port.is_empty() => true,
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// The scheme and the rest; a scheme is letters, then letters, digits,
/// `+`, `-`, `.`, before a `:`.
fn split_scheme(raw: &str) -> Result<(&str, &str), ParseError> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err(ParseError::MissingScheme),
            b':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn parse_host(host: &str, ipv6: Ipv6Literal) -> Result<Vec<u8>, ParseError> {
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err(ParseError::MissingBracket);
        };
        let port = &host[i + 1..];
        if !valid_optional_port(port) {
            return Err(ParseError::InvalidPort(port.to_owned()));
        }
        let literal = &host[1..i];
        let (addr, zone) = match literal.find("%25") {
            Some(z) => (&literal[..z], Some(z + 1)),
            None => (literal, None),
        };
        if ipv6 == Ipv6Literal::Checked && addr.parse::<Ipv6Addr>().is_err() {
            return Err(ParseError::InvalidIpv6(addr.to_owned()));
        }
        if let Some(z) = zone {
            let mut out = unescape(&host[..z], Mode::Host)?;
            out.extend(unescape(&host[z..i], Mode::Zone)?);
            out.extend(unescape(&host[i..], Mode::Host)?);
            return Ok(out);
        }
    } else if let Some(i) = host.rfind(':') {
        let port = &host[i..];
        if !valid_optional_port(port) {
            return Err(ParseError::InvalidPort(port.to_owned()));
        }
    }
    unescape(host, Mode::Host)
}

fn valid_userinfo(s: &str) -> bool {
    s.bytes().all(|c| {
        c.is_ascii_alphanumeric()
            || sub_delim(c)
            || matches!(c, b'-' | b'.' | b'_' | b':' | b'~' | b'%' | b'@')
    })
}

type User = Option<(Vec<u8>, Option<Vec<u8>>)>;

fn parse_authority(authority: &str, ipv6: Ipv6Literal) -> Result<(User, Vec<u8>), ParseError> {
    let at = authority.rfind('@');
    let host = parse_host(
        match at {
            Some(i) => &authority[i + 1..],
            None => authority,
        },
        ipv6,
    )?;
    let Some(i) = at else {
        return Ok((None, host));
    };
    let info = &authority[..i];
    if !valid_userinfo(info) {
        return Err(ParseError::InvalidUserinfo);
    }
    let user = match info.split_once(':') {
        None => (unescape(info, Mode::UserPassword)?, None),
        Some((name, password)) => (
            unescape(name, Mode::UserPassword)?,
            Some(unescape(password, Mode::UserPassword)?),
        ),
    };
    Ok((Some(user), host))
}

/// Whether a bracketed host must be an IPv6 address (with an optional
/// zone). `format.uri` reads the brackets without looking inside.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ipv6Literal {
    Checked,
    Unchecked,
}

/// Go's `url.ParseRequestURI`: an absolute URI or an absolute path; a `#`
/// is not a fragment mark.
pub(crate) fn parse_request_uri(raw: &str, ipv6: Ipv6Literal) -> Result<Url, ParseError> {
    parse(raw, true, ipv6)
}

/// Go's `url.parse`: `via_request` for `ParseRequestURI`.
fn parse(raw: &str, via_request: bool, ipv6: Ipv6Literal) -> Result<Url, ParseError> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(ParseError::ControlCharacter);
    }
    if raw.is_empty() && via_request {
        return Err(ParseError::Empty);
    }
    let mut u = Url::default();
    if raw == "*" {
        u.path = b"*".to_vec();
        return Ok(u);
    }
    let (scheme, rest) = split_scheme(raw)?;
    u.scheme = scheme.to_ascii_lowercase();
    let mut rest = rest;
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        u.force_query = true;
        rest = &rest[..rest.len() - 1];
    } else if let Some((r, q)) = rest.split_once('?') {
        rest = r;
        u.raw_query = q.to_owned();
    }
    if !rest.starts_with('/') {
        if !u.scheme.is_empty() {
            // A rootless path is opaque.
            u.opaque = rest.to_owned();
            return Ok(u);
        }
        if via_request {
            return Err(ParseError::NotForRequest);
        }
        let segment = rest.split('/').next().unwrap_or("");
        if segment.contains(':') {
            return Err(ParseError::ColonInFirstSegment);
        }
    }
    if (!u.scheme.is_empty() || !via_request && !rest.starts_with("///")) && rest.starts_with("//")
    {
        let authority = &rest[2..];
        let (authority, path) = match authority.find('/') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        };
        let (user, host) = parse_authority(authority, ipv6)?;
        u.user = user;
        u.host = host;
        rest = path;
    } else if !u.scheme.is_empty() && rest.starts_with('/') {
        u.omit_host = true;
    }
    u.path = unescape(rest, Mode::Path)?;
    if escape(&u.path, Mode::Path) != rest {
        u.raw_path = rest.to_owned();
    }
    Ok(u)
}

/// Go's `url.Parse`: a `#` starts the fragment.
fn parse_reference(raw: &str) -> Result<Url, ParseError> {
    let (main, fragment) = match raw.split_once('#') {
        Some((m, f)) => (m, Some(f)),
        None => (raw, None),
    };
    let mut u = parse(main, false, Ipv6Literal::Checked)?;
    if let Some(f) = fragment.filter(|f| !f.is_empty()) {
        u.fragment = unescape(f, Mode::Fragment)?;
        if escape(&u.fragment, Mode::Fragment) != f {
            u.raw_fragment = f.to_owned();
        }
    }
    Ok(u)
}

/// `url(s)`: checked as Kubernetes does with `ParseRequestURI`, then read
/// with `Parse` (which keeps a fragment apart).
fn read(raw: &str) -> Result<Url, ParseError> {
    parse_request_uri(raw, Ipv6Literal::Checked)?;
    parse_reference(raw)
}

impl Url {
    fn escaped_path(&self) -> String {
        if !self.raw_path.is_empty()
            && valid_encoded(&self.raw_path, Mode::Path)
            && unescape(&self.raw_path, Mode::Path).is_ok_and(|p| p == self.path)
        {
            return self.raw_path.clone();
        }
        if self.path == b"*" {
            return "*".into();
        }
        escape(&self.path, Mode::Path)
    }

    fn escaped_fragment(&self) -> String {
        if !self.raw_fragment.is_empty()
            && valid_encoded(&self.raw_fragment, Mode::Fragment)
            && unescape(&self.raw_fragment, Mode::Fragment).is_ok_and(|f| f == self.fragment)
        {
            return self.raw_fragment.clone();
        }
        escape(&self.fragment, Mode::Fragment)
    }

    /// The host and the port (`host[:port]`, brackets of an IPv6 host
    /// removed).
    fn split_host_port(&self) -> (&[u8], &[u8]) {
        let mut host: &[u8] = &self.host;
        let mut port: &[u8] = b"";
        if let Some(c) = host.iter().rposition(|&b| b == b':') {
            if host[c + 1..].iter().all(u8::is_ascii_digit) {
                port = &host[c + 1..];
                host = &host[..c];
            }
        }
        if host.len() >= 2 && host[0] == b'[' && host[host.len() - 1] == b']' {
            host = &host[1..host.len() - 1];
        }
        (host, port)
    }
}

/// Go's `URL.String`, which equality compares.
impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        if !self.scheme.is_empty() {
            out.push_str(&self.scheme);
            out.push(':');
        }
        if !self.opaque.is_empty() {
            out.push_str(&self.opaque);
        } else {
            if !self.scheme.is_empty() || !self.host.is_empty() || self.user.is_some() {
                // `scheme:/path` (no authority written) stays so.
                let authority = !self.host.is_empty() || self.user.is_some();
                if authority || (!self.path.is_empty() && !self.omit_host) {
                    out.push_str("//");
                }
                if let Some((name, password)) = &self.user {
                    out.push_str(&escape(name, Mode::UserPassword));
                    if let Some(p) = password {
                        out.push(':');
                        out.push_str(&escape(p, Mode::UserPassword));
                    }
                    out.push('@');
                }
                out.push_str(&escape(&self.host, Mode::Host));
            }
            let path = self.escaped_path();
            if !path.is_empty() && !path.starts_with('/') && !self.host.is_empty() {
                out.push('/');
            }
            if out.is_empty() && path.split('/').next().is_some_and(|s| s.contains(':')) {
                out.push_str("./");
            }
            out.push_str(&path);
        }
        if self.force_query || !self.raw_query.is_empty() {
            out.push('?');
            out.push_str(&self.raw_query);
        }
        if !self.fragment.is_empty() {
            out.push('#');
            out.push_str(&self.escaped_fragment());
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "url({:?})", self.to_string())
    }
}

impl Object for Url {
    fn type_name(&self) -> &str {
        TYPE
    }
    fn equals(&self, other: &dyn Object) -> bool {
        other
            .as_any()
            .downcast_ref::<Url>()
            .is_some_and(|o| o.to_string() == self.to_string())
    }
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.to_string()))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The text quoted in a message: what was given, cut short when long.
fn shown(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.len() <= SHOWN {
        return s.to_owned();
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The string argument, charged for the two readings of it.
fn text<'a>(ctx: &mut Ctx<'_>, v: &'a Value<'_>) -> Result<Option<&'a str>, Error> {
    match v {
        Value::String(s) => {
            ctx.charge_bytes(s.len().saturating_mul(4))?;
            Ok(Some(s.as_str()))
        }
        _ => Ok(None),
    }
}

fn url<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("url", args));
    };
    read(s).map(Value::object).map_err(|m| {
        Error::function(
            "url",
            format!(
                "URL parse error during conversion from string: parse {:?}: {}",
                shown(s),
                m.message(|part| format!("{part:?}"))
            ),
        )
    })
}

fn is_url<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let Some(s) = text(ctx, &args[0])? else {
        return Err(Error::no_overload("isURL", args));
    };
    Ok(Value::Bool(
        parse_request_uri(s, Ipv6Literal::Checked).is_ok(),
    ))
}

/// The URL a method is called on.
fn receiver<'a>(name: &str, args: &'a [Value<'_>]) -> Result<&'a Url, Error> {
    args.first()
        .and_then(Value::downcast::<Url>)
        .ok_or_else(|| Error::no_overload(name, args))
}

/// A decoded part as a string, charged by its length.
fn part(ctx: &mut Ctx<'_>, name: &'static str, b: &[u8]) -> Result<Value<'static>, Error> {
    ctx.charge_bytes(b.len())?;
    match std::str::from_utf8(b) {
        Ok(s) => Ok(Value::string(s)),
        Err(_) => Err(Error::function(
            name,
            "the decoded URL part is not valid UTF-8",
        )),
    }
}

fn get_scheme<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let u = receiver("getScheme", args)?;
    part(ctx, "getScheme", u.scheme.as_bytes())
}

fn get_host<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let u = receiver("getHost", args)?;
    part(ctx, "getHost", &u.host)
}

fn get_hostname<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let u = receiver("getHostname", args)?;
    part(ctx, "getHostname", u.split_host_port().0)
}

fn get_port<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let u = receiver("getPort", args)?;
    part(ctx, "getPort", u.split_host_port().1)
}

fn get_escaped_path<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let u = receiver("getEscapedPath", args)?;
    ctx.charge_bytes(u.path.len().max(u.raw_path.len()).saturating_mul(3))?;
    Ok(Value::string(u.escaped_path()))
}

/// Go's `URL.Query`: `key=value` pairs split at `&`, decoded as form
/// values; a pair with a `;` or a malformed escape is skipped.
fn get_query<'r>(ctx: &mut Ctx<'r>, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    let u = receiver("getQuery", args)?;
    ctx.charge_bytes(u.raw_query.len())?;
    let mut lists: indexmap::IndexMap<String, Vec<Value<'r>>> = indexmap::IndexMap::new();
    for pair in u.raw_query.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Ok(k), Ok(v)) = (
            unescape(k, Mode::QueryComponent),
            unescape(v, Mode::QueryComponent),
        ) else {
            continue;
        };
        let (Ok(k), Ok(v)) = (String::from_utf8(k), String::from_utf8(v)) else {
            return Err(Error::function(
                "getQuery",
                "a decoded query parameter is not valid UTF-8",
            ));
        };
        ctx.charge(1)?;
        lists.entry(k).or_default().push(Value::string(v));
    }
    Ok(Value::map(
        lists
            .into_iter()
            .map(|(k, v)| (Key::String(k.into()), Value::list(v)))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cel::eval::lib::call as call_in;
    use crate::cel::eval::lib::test_global as global;
    use crate::cel::eval::lib::test_method as method;
    use crate::cel::eval::value::equals;
    use crate::cel::eval::{ErrorKind, Meter};

    fn u(s: &str) -> Value<'static> {
        global("url", &[Value::string(s)]).unwrap_or_else(|e| panic!("url({s:?}): {e}"))
    }

    fn is(s: &str) -> bool {
        matches!(global("isURL", &[Value::string(s)]), Ok(Value::Bool(true)))
    }

    fn get(name: &str, s: &str) -> String {
        match method(name, &[u(s)]) {
            Ok(Value::String(v)) => v.to_string(),
            other => panic!("{name} of {s:?}: {other:?}"),
        }
    }

    #[test]
    fn absolute_uris_and_paths_only() {
        for good in [
            "https://user:pass@example.com:80/path?query=val#fragment",
            "/absolute-path",
            "*",
            "http://example.com",
            "http://example.com:",
            "mailto:someone@example.com",
            "https://[::1]:80/",
            "https://[fe80::1%25en0]/",
            "http://x/a%20b",
            "urn:isbn:0451450523",
            "//example.com/p",
            "HTTP://example.com/",
        ] {
            assert!(is(good), "{good}");
            u(good);
        }
        for bad in [
            "",
            "example.com",
            "../relative-path",
            "relative/path",
            "https://a:b:c/",
            "http://example.com:8a/",
            "http://[::1/",
            "http://[not-ipv6]/",
            "http://[::1]x/",
            "http://ex ample.com/",
            "http://%41.com/",
            "http://x/%zz",
            "http://x/%4",
            "http://x/\n",
            ":foo",
            "http://us er@x/",
            "http://x/#%zz",
        ] {
            assert!(!is(bad), "{bad}");
            let e = global("url", &[Value::string(bad)]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::FunctionError, "{bad}");
            assert!(e.message.starts_with("URL parse error"), "{}", e.message);
        }
        // A bad escape in the fragment: isURL reads it as part of the query,
        // url() refuses it, as in Kubernetes.
        assert!(is("http://x/?a#%zz"));
        assert!(global("url", &[Value::str("http://x/?a#%zz")]).is_err());
        let e = global("url", &[Value::str("example.com")]).unwrap_err();
        assert!(
            e.message.contains("invalid URI for request"),
            "{}",
            e.message
        );
        let e = global("url", &[Value::Int(1)]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
    }

    #[test]
    fn parts() {
        for (getter, raw, want) in [
            ("getScheme", "/path", ""),
            ("getScheme", "HTTPS://example.com/", "https"),
            ("getHost", "https://example.com:80/", "example.com:80"),
            ("getHost", "https://example.com/", "example.com"),
            ("getHost", "https://[::1]:80/", "[::1]:80"),
            ("getHost", "https://[::1]/", "[::1]"),
            ("getHost", "/path", ""),
            ("getHost", "https://user@h%C3%A9.com/", "hé.com"),
            ("getHostname", "https://example.com:80/", "example.com"),
            ("getHostname", "https://127.0.0.1:80/", "127.0.0.1"),
            ("getHostname", "https://[::1]:80/", "::1"),
            ("getHostname", "https://[fe80::1%25en0]:8/", "fe80::1%en0"),
            ("getHostname", "/path", ""),
            ("getPort", "https://example.com:80/", "80"),
            ("getPort", "https://example.com/", ""),
            ("getPort", "https://example.com:/", ""),
            ("getPort", "https://[::1]:443/", "443"),
            ("getPort", "/path", ""),
            ("getEscapedPath", "https://example.com/path", "/path"),
            (
                "getEscapedPath",
                "https://example.com/path with spaces/",
                "/path%20with%20spaces/",
            ),
            ("getEscapedPath", "https://example.com", ""),
            ("getEscapedPath", "https://x/a%2Fb", "/a%2Fb"),
            ("getEscapedPath", "https://x/a%41", "/a%41"),
            ("getEscapedPath", "/a/b#frag", "/a/b"),
            ("getEscapedPath", "*", "*"),
            ("getEscapedPath", "//example.com/p", "/p"),
            ("getHost", "//example.com/p", "example.com"),
            ("getScheme", "mailto:a@b", "mailto"),
            ("getEscapedPath", "mailto:a@b", ""),
        ] {
            assert_eq!(get(getter, raw), want, "{getter} of {raw}");
        }
        let e = method("getHost", &[Value::str("http://x/")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSuchOverload);
        let e = method("getHostname", &[u("http://%ff.com/")]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::FunctionError);
    }

    #[test]
    fn query() {
        let q = |s: &str| method("getQuery", &[u(s)]).unwrap();
        let list = |xs: &[&str]| Value::list(xs.iter().map(|x| Value::string(*x)).collect());
        let map = |entries: &[(&str, &[&str])]| {
            Value::map(
                entries
                    .iter()
                    .map(|(k, v)| (Key::String((*k).to_owned().into()), list(v)))
                    .collect(),
            )
        };
        assert!(equals(
            &q("https://example.com/path?k1=a&k2=b&k2=c"),
            &map(&[("k1", &["a"]), ("k2", &["b", "c"])])
        ));
        assert!(equals(
            &q("https://example.com/path?key with spaces=value with spaces"),
            &map(&[("key with spaces", &["value with spaces"])])
        ));
        assert!(equals(
            &q("/p?a=1+2&b=%2F&c&=x&&d=%zz&e;f=1&g=h=i"),
            &map(&[
                ("a", &["1 2"]),
                ("b", &["/"]),
                ("c", &[""]),
                ("", &["x"]),
                ("g", &["h=i"])
            ])
        ));
        assert!(equals(&q("https://example.com/path?"), &map(&[])));
        assert!(equals(&q("https://example.com/path"), &map(&[])));
        assert!(equals(&q("/p?a=1#b=2"), &map(&[("a", &["1"])])));
        assert!(method("getQuery", &[u("/p?a=%ff")]).is_err());
    }

    #[test]
    fn equality_compares_the_written_form() {
        assert!(equals(
            &u("https://example.com/a"),
            &u("HTTPS://example.com/a")
        ));
        assert!(equals(&u("https://x/a%20b"), &u("https://x/a b")));
        assert!(!equals(&u("https://x/a"), &u("https://x/b")));
        assert!(!equals(&u("https://x/a?"), &u("https://x/a")));
        assert!(!equals(&u("https://x/a#f"), &u("https://x/a")));
        assert!(!equals(&u("file:/a"), &u("file:///a")));
        assert!(!equals(&u("https://x/"), &Value::str("https://x/")));
        assert_eq!(
            crate::cel::eval::value::to_json(&u("https://u:p%40@x/a%2Fb?q=1#f g")),
            Some(serde_json::json!("https://u:p%40@x/a%2Fb?q=1#f%20g"))
        );
    }

    #[test]
    fn cost_is_charged_by_length() {
        let long = format!("https://x/{}", "a".repeat(100_000));
        let mut small = Ctx::new(None, Meter::new(100));
        let e = call_in(&mut small, "url", false, &[Value::string(long.as_str())]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        let mut enough = Ctx::new(None, Meter::new(100));
        assert!(call_in(&mut enough, "isURL", false, &[Value::str("https://x/")]).is_ok());
        let e = global("url", &[Value::string(format!("{long} "))]);
        assert!(e.is_ok());
        let e = global("url", &[Value::string(format!("{long}%"))]).unwrap_err();
        assert!(e.message.len() < 300, "{}", e.message.len());
    }
}
