//! URLs of outbound requests (`jwks.Fetch`, the `http` library): parsed,
//! normalised, matched against an allow-list, and redacted for logs and
//! metrics.
//!
//! A URL is normalised before it is checked, cached or fetched, so the URL
//! that passed the allow-list is exactly the one requested: scheme and host
//! lower-cased, a trailing dot of the host dropped, the default port
//! dropped, percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`)
//! decoded and other escapes upper-cased, dot segments (`.`, `..`, also
//! written `%2E`) resolved, the fragment dropped. Refused outright: schemes
//! other than `http`/`https`, userinfo (`user:pass@`), an empty or
//! percent-encoded host, a port out of range, bytes outside printable ASCII,
//! backslashes, malformed escapes and encoded slashes (`%2F`, `%5C`; servers
//! disagree on them, so a prefix could not be trusted).
//!
//! Allow-list entries are normalised the same way. An entry with `://` is a
//! URL prefix: same scheme, host and port, and the path equal or below it
//! on a segment boundary (`https://iss/tenant` admits `/tenant` and
//! `/tenant/x`, not `/tenant2`); the entry itself may carry no query or
//! fragment. An entry without `://` is a host or `host:port`, matched
//! exactly.

use std::fmt;

/// A parsed, normalised http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    https: bool,
    /// Lower-case; an IPv6 literal keeps its brackets.
    host: String,
    /// The port, default or not.
    port: u16,
    /// Starts with `/`; normalised.
    path: String,
    query: Option<String>,
}

/// Why a URL (or allow-list entry) cannot be used. Never holds the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem(pub &'static str);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

impl JwksUrl {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<JwksUrl, Problem> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or(Problem("not an absolute http or https URL"))?;
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return Err(Problem("the scheme is not http or https"));
        };
        if let Some(b) = rest.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
            return Err(Problem(if b == b' ' {
                "the URL holds a space"
            } else {
                "the URL holds a byte outside printable ASCII"
            }));
        }
        if rest.contains('\\') {
            return Err(Problem("the URL holds a backslash"));
        }
        let rest = rest.split('#').next().unwrap_or("");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (host, port) = authority_parts(authority, https)?;
        Ok(JwksUrl {
            https,
            host,
            port,
            path: normalise_path(path)?,
            query: query
                .map(|q| check_escapes(q).map(|()| q.to_owned()))
                .transpose()?,
        })
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The normalised path (starts with `/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// `scheme://host[:port]`, the port only when not the scheme's default.
    pub fn origin(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            format!("{}://{}", self.scheme(), self.host)
        } else {
            format!("{}://{}:{}", self.scheme(), self.host, self.port)
        }
    }

    /// The URL to fetch and to cache under.
    pub fn normalised(&self) -> String {
        match &self.query {
            Some(q) => format!("{}{}?{q}", self.origin(), self.path),
            None => format!("{}{}", self.origin(), self.path),
        }
    }

    /// The URL for logs, errors and metric labels: without the query (and,
    /// like every normalised URL, without userinfo and fragment).
    pub fn redacted(&self) -> String {
        format!("{}{}", self.origin(), self.path)
    }

    /// Whether `self`, as an allow-list prefix, admits `url`.
    fn admits(&self, url: &JwksUrl) -> bool {
        if self.https != url.https || self.host != url.host || self.port != url.port {
            return false;
        }
        let p = self.path.as_str();
        match url.path.strip_prefix(p) {
            None => false,
            Some(rest) => p.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        }
    }
}

/// Host (lower-case) and port of an authority. Userinfo is refused.
fn authority_parts(authority: &str, https: bool) -> Result<(String, u16), Problem> {
    if authority.contains('@') {
        return Err(Problem("the URL holds userinfo (user:password@)"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or(Problem("an IPv6 host lacks its closing bracket"))?;
        let ip: std::net::Ipv6Addr = addr
            .parse()
            .map_err(|_| Problem("the IPv6 host is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(Problem("junk after the IPv6 host"))?,
            ),
        };
        (format!("[{ip}]"), port)
    } else {
        let (h, p) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let h = h.strip_suffix('.').unwrap_or(h);
        if h.is_empty() {
            return Err(Problem("the URL has no host"));
        }
        if !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(Problem(
                "the host holds characters other than letters, digits, '-', '.' and '_'",
            ));
        }
        (h.to_ascii_lowercase(), p)
    };
    let default = if https { 443 } else { 80 };
    let port = match port {
        None | Some("") => default,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(Problem("the port is not a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Escapes must be `%` and two hex digits.
fn check_escapes(s: &str) -> Result<(), Problem> {
    let b = s.as_bytes();
    for (i, _) in s.match_indices('%') {
        if b.len() < i + 3 || hex(b[i + 1]).is_none() || hex(b[i + 2]).is_none() {
            return Err(Problem("a '%' is not followed by two hex digits"));
        }
    }
    Ok(())
}

/// Decodes escaped unreserved characters, upper-cases the other escapes,
/// refuses encoded slashes, and resolves dot segments (RFC 3986 5.2.4).
fn normalise_path(path: &str) -> Result<String, Problem> {
    check_escapes(path)?;
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        decoded.push('/');
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let v = hex(b[i + 1]).unwrap_or(0) << 4 | hex(b[i + 2]).unwrap_or(0);
            if v == b'/' || v == b'\\' {
                return Err(Problem("the path holds an encoded slash (%2F or %5C)"));
            }
            if is_unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push(b[i + 1].to_ascii_uppercase() as char);
                decoded.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            decoded.push(b[i] as char);
            i += 1;
        }
    }
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.into_iter().enumerate() {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        if i == last {
            out.push("");
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// One `--jwks-allowed-urls` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// `host` or `host:port`: https (or http where allowed) to that host.
    Host { host: String, port: Option<u16> },
    /// `scheme://host[:port][/path]`: that origin, at or below the path.
    Prefix(JwksUrl),
}

impl AllowEntry {
    /// Parses and normalises an entry.
    pub fn parse(entry: &str) -> Result<AllowEntry, Problem> {
        let entry = entry.trim();
        if entry.contains("://") {
            if entry.contains(['?', '#']) {
                return Err(Problem(
                    "a URL prefix names scheme, host, port and path: no query or fragment",
                ));
            }
            return JwksUrl::parse(entry).map(AllowEntry::Prefix);
        }
        if entry.contains(['/', '?', '#']) {
            return Err(Problem(
                "a host entry is `host` or `host:port`; write a URL prefix with its scheme",
            ));
        }
        let has_port = match entry.rfind(':') {
            Some(i) => !entry.starts_with('[') || entry[..i].ends_with(']'),
            None => false,
        };
        let (host, port) = authority_parts(entry, true)?;
        Ok(AllowEntry::Host {
            host,
            port: has_port.then_some(port),
        })
    }
}

/// How an allow-list judged a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Only an https URL would be allowed.
    PlainHttp,
    NotListed,
}

/// Judges `url` against `entries` (empty: every host). Plain `http` passes
/// only with `allow_http` or an `http://` prefix entry that admits it.
pub fn judge(entries: &[AllowEntry], allow_http: bool, url: &JwksUrl) -> Verdict {
    let scheme_ok = |explicit_http: bool| url.https || allow_http || explicit_http;
    if entries.is_empty() {
        return if scheme_ok(false) {
            Verdict::Allowed
        } else {
            Verdict::PlainHttp
        };
    }
    let mut verdict = Verdict::NotListed;
    for e in entries {
        let (matched, explicit_http) = match e {
            AllowEntry::Host { host, port } => (
                *host == url.host && port.is_none_or(|p| p == url.port),
                false,
            ),
            AllowEntry::Prefix(p) => (p.admits(url), !p.https),
        };
        if matched {
            if scheme_ok(explicit_http) {
                return Verdict::Allowed;
            }
            verdict = Verdict::PlainHttp;
        }
    }
    verdict
}

/// A loggable form of a string that did not parse as a URL: no userinfo,
/// query or fragment, at most 200 bytes.
pub fn redact_raw(s: &str) -> String {
    let s = s.split(['?', '#']).next().unwrap_or("");
    let s = match s.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            let host = authority.rsplit('@').next().unwrap_or("");
            format!("{scheme}://{host}{path}")
        }
        None => s.to_owned(),
    };
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    if out.len() > 200 {
        let mut cut = 200;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        JwksUrl::parse(s).unwrap().normalised()
    }

    #[test]
    fn normalisation() {
        for (given, want) in [
            ("HTTPS://Issuer.Example:443/a", "https://issuer.example/a"),
            (
                "https://issuer.example.:8443",
                "https://issuer.example:8443/",
            ),
            ("http://h:80/x?q=1#frag", "http://h/x?q=1"),
            ("https://h/tenant/../x", "https://h/x"),
            ("https://h/tenant/%2e%2E/x", "https://h/x"),
            ("https://h/a/./b/.", "https://h/a/b/"),
            ("https://h/a/b/..", "https://h/a/"),
            ("https://h/../../x", "https://h/x"),
            ("https://h/%7e%41%2d/%3f%3a", "https://h/~A-/%3F%3A"),
            ("https://h?x=%2F", "https://h/?x=%2F"),
            ("https://[0:0::1]:8443/k", "https://[::1]:8443/k"),
            ("https://h:/k", "https://h/k"),
        ] {
            assert_eq!(norm(given), want, "{given}");
        }
    }

    #[test]
    fn refused_urls() {
        for bad in [
            "ftp://h/",
            "file:///etc/passwd",
            "https://",
            "https:///x",
            "https://u:p@h/",
            "https://u@h/",
            "issuer",
            "https://h:0/",
            "https://h:70000/",
            "https://h:+1/",
            "https://h/a%2Fb",
            "https://h/a%5cb",
            "https://h\\@evil/",
            "https://h/a b",
            "https://h/%zz",
            "https://h/%4",
            "https://h%2eevil/",
            "https://hé/",
            "https://[::1/",
            "https://[nope]/",
            "https://h/x\r\n",
        ] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
    }

    fn entries(list: &[&str]) -> Vec<AllowEntry> {
        list.iter().map(|e| AllowEntry::parse(e).unwrap()).collect()
    }

    fn verdict(entries: &[AllowEntry], allow_http: bool, url: &str) -> Verdict {
        judge(entries, allow_http, &JwksUrl::parse(url).unwrap())
    }

    #[test]
    fn prefixes_match_on_segment_boundaries_after_normalisation() {
        let list = entries(&["https://iss/tenant", "https://keys.example/jwks/"]);
        for ok in [
            "https://iss/tenant",
            "https://ISS:443/tenant/jwks",
            "https://iss/tenant?x=1",
            "https://iss/other/../tenant/jwks",
            "https://iss/%74enant/jwks",
            "https://keys.example/jwks/a",
            "https://keys.example/jwks/",
        ] {
            assert_eq!(verdict(&list, false, ok), Verdict::Allowed, "{ok}");
        }
        for refused in [
            "https://iss/tenant/../x",
            "https://iss/tenant/%2e%2e/x",
            "https://iss/tenant/./../x",
            "https://iss/tenant2",
            "https://iss/tenant2/jwks",
            "https://iss/tenan",
            "https://iss:8443/tenant",
            "https://iss.evil/tenant",
            "https://keys.example/jwks",
            "https://keys.example/jwksx",
        ] {
            assert_eq!(
                verdict(&list, false, refused),
                Verdict::NotListed,
                "{refused}"
            );
        }
        // the prefix names https: plain http to it is refused, not admitted
        assert_eq!(
            verdict(&list, false, "http://iss/tenant"),
            Verdict::NotListed
        );
    }

    #[test]
    fn plain_http_needs_an_explicit_opt_in() {
        let none: Vec<AllowEntry> = Vec::new();
        assert_eq!(verdict(&none, false, "http://h/k"), Verdict::PlainHttp);
        assert_eq!(verdict(&none, true, "http://h/k"), Verdict::Allowed);
        assert_eq!(verdict(&none, false, "https://h/k"), Verdict::Allowed);
        let hosts = entries(&["127.0.0.1", "keys.example:8080"]);
        assert_eq!(
            verdict(&hosts, false, "http://127.0.0.1:5/k"),
            Verdict::PlainHttp
        );
        assert_eq!(
            verdict(&hosts, true, "http://127.0.0.1:5/k"),
            Verdict::Allowed
        );
        assert_eq!(
            verdict(&hosts, false, "https://keys.example:8080/k"),
            Verdict::Allowed
        );
        assert_eq!(
            verdict(&hosts, true, "https://keys.example/k"),
            Verdict::NotListed
        );
        let prefix = entries(&["http://127.0.0.1:8080/realms/"]);
        assert_eq!(
            verdict(&prefix, false, "http://127.0.0.1:8080/realms/a/jwks"),
            Verdict::Allowed
        );
        assert_eq!(
            verdict(&prefix, false, "http://127.0.0.1:8081/realms/a/jwks"),
            Verdict::NotListed
        );
    }

    #[test]
    fn entries_are_checked() {
        for bad in [
            "https://iss/tenant?x=1",
            "https://iss/#x",
            "iss/tenant",
            "u:p@iss",
            "https://u@iss/",
            "iss:99999",
            "",
        ] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            AllowEntry::parse("Issuer.Example").unwrap(),
            AllowEntry::Host {
                host: "issuer.example".into(),
                port: None
            }
        );
        assert_eq!(
            AllowEntry::parse("[::1]:8443").unwrap(),
            AllowEntry::Host {
                host: "[::1]".into(),
                port: Some(8443)
            }
        );
        assert_eq!(
            AllowEntry::parse("[::1]").unwrap(),
            AllowEntry::Host {
                host: "[::1]".into(),
                port: None
            }
        );
    }

    #[test]
    fn redaction() {
        let u = JwksUrl::parse("https://iss/jwks?api_key=SECRET#x").unwrap();
        assert_eq!(u.redacted(), "https://iss/jwks");
        assert_eq!(
            redact_raw("https://user:SECRET@iss/jwks?key=SECRET#SECRET"),
            "https://iss/jwks"
        );
        assert_eq!(redact_raw("ftp://iss/a?SECRET"), "ftp://iss/a");
        assert!(redact_raw(&"x".repeat(1000)).len() < 210);
    }
}
