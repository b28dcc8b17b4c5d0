//! The answer a policy gives Envoy: the `CheckResponse` that the `envoy`
//! library's builders make ([`crate::cel::eval::lib::envoy`]), and the
//! checks they apply to what they are given.
//!
//! Builders refuse what Envoy could not send: a denial status must be in
//! 300–599 (a denial is never a 1xx or 2xx), a header name must be an HTTP
//! token (RFC 9110 `tchar`s, so no `:` pseudo-headers, no spaces and no
//! control characters) and a header or query value must hold no CR, LF or
//! NUL (header splitting). The refusal never quotes the value. The mapping
//! onto the protobuf message lives in [`crate::decision`].

/// `envoy.Header(name, value)`: a header to add, `keep_empty_value` optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOption {
    pub key: String,
    pub value: String,
    pub keep_empty_value: bool,
    /// `HeaderValueOption.append_action` (a [`HEADER_APPEND_ACTIONS`]
    /// value): 0, append to an existing header or add, unless a
    /// `HeaderValueOption{...}` message sets another.
    pub append_action: i32,
}

/// The values of Envoy's `HeaderValueOption.HeaderAppendAction`, in order
/// (the enum's numbers are the indices).
pub const HEADER_APPEND_ACTIONS: [&str; 4] = [
    "APPEND_IF_EXISTS_OR_ADD",
    "ADD_IF_ABSENT",
    "OVERWRITE_IF_EXISTS_OR_ADD",
    "OVERWRITE_IF_EXISTS",
];

impl HeaderOption {
    /// A header celgate itself sets (not checked: the caller's name is known good).
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderOption {
            key: key.into(),
            value: value.into(),
            keep_empty_value: false,
            append_action: 0,
        }
    }
}

/// `envoy.QueryParam(name, value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParam {
    pub key: String,
    pub value: String,
}

/// `envoy.Allowed()` and what its `With*` methods add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OkResponse {
    /// Added to the request that goes upstream.
    pub headers: Vec<HeaderOption>,
    /// Removed from the request before it goes upstream.
    pub headers_to_remove: Vec<String>,
    /// Added to the response the client gets.
    pub response_headers_to_add: Vec<HeaderOption>,
    pub query_parameters_to_set: Vec<QueryParam>,
    pub query_parameters_to_remove: Vec<String>,
}

/// `envoy.Denied(status)` and what its `With*` methods add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeniedResponse {
    /// HTTP status sent to the client.
    pub status: i32,
    /// Headers on the denial sent to the client.
    pub headers: Vec<HeaderOption>,
    pub body: String,
}

/// The outcome half of a [`CheckResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(OkResponse),
    Denied(DeniedResponse),
}

/// `.Response()`: what a validation returns to decide a request.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResponse {
    pub outcome: Outcome,
    /// `google.rpc.Status.message`.
    pub message: String,
    /// `dynamic_metadata`, set by `WithMetadata`.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl CheckResponse {
    pub fn allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }
}

/// HTTP statuses a denial may carry.
pub const DENIAL_STATUSES: std::ops::RangeInclusive<i64> = 300..=599;

/// `envoy.Denied(code)`: refused unless `code` is a denial status.
pub fn denial(code: i64) -> Result<DeniedResponse, String> {
    if !DENIAL_STATUSES.contains(&code) {
        return Err(format!(
            "HTTP status {code} is not a denial status (300 to 599)"
        ));
    }
    Ok(DeniedResponse {
        status: code as i32,
        ..Default::default()
    })
}

/// The bytes of an HTTP token (RFC 9110 `tchar`), as a table: every header
/// name a policy sends is checked, on every request.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// Why a header name cannot be sent, if it cannot. Never quotes the name.
pub fn header_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the header name is empty".into());
    }
    name.bytes().position(|b| !TCHAR[b as usize]).map(|i| {
        format!(
            "the header name is not an HTTP token ({} at byte {i})",
            byte_kind(name.as_bytes()[i])
        )
    })
}

/// Why a header value cannot be sent, if it cannot. Never quotes the value.
pub fn header_value_problem(value: &str) -> Option<String> {
    value
        .bytes()
        .position(|b| matches!(b, b'\r' | b'\n' | 0))
        .map(|i| {
            format!(
                "the header value holds {} at byte {i}",
                byte_kind(value.as_bytes()[i])
            )
        })
}

fn byte_kind(b: u8) -> &'static str {
    match b {
        b'\r' => "a CR",
        b'\n' => "a LF",
        0 => "a NUL",
        b':' => "a colon",
        b' ' | b'\t' => "whitespace",
        b if b.is_ascii_control() => "a control character",
        b if !b.is_ascii() => "a non-ASCII character",
        _ => "a separator",
    }
}

/// A header to send, refused (with why) unless the name is a token and the
/// value free of CR, LF and NUL.
pub fn header_option(
    key: String,
    value: String,
    keep_empty_value: bool,
) -> Result<HeaderOption, String> {
    if let Some(p) = header_name_problem(&key) {
        return Err(p);
    }
    if let Some(p) = header_value_problem(&value) {
        return Err(format!("header {key:?}: {p}"));
    }
    Ok(HeaderOption {
        key,
        value,
        keep_empty_value,
        append_action: 0,
    })
}

/// Why a query parameter's name or value cannot be sent, if it cannot:
/// Envoy writes it into the request line, where CR, LF or NUL would split
/// or end it. Never quotes the text.
fn query_problem(what: &str, text: &str) -> Option<String> {
    text.bytes()
        .position(|b| matches!(b, b'\r' | b'\n' | 0))
        .map(|i| {
            format!(
                "the query parameter {what} holds {} at byte {i}",
                byte_kind(text.as_bytes()[i])
            )
        })
}

/// A query parameter to set or remove, refused (with why) when it cannot be
/// sent.
pub fn query_param_checked(key: String, value: String) -> Result<QueryParam, String> {
    if key.is_empty() {
        return Err("the query parameter name is empty".into());
    }
    if let Some(p) = query_problem("name", &key).or_else(|| query_problem("value", &value)) {
        return Err(p);
    }
    Ok(QueryParam { key, value })
}

/// The argument of `WithMetadata`, as JSON: it must be an object.
pub fn metadata_object(
    j: serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match j {
        serde_json::Value::Object(m) => Ok(m),
        other => Err(format!(
            "expects a map with string keys, got {}",
            json_kind(&other)
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_name_is_made_of_the_token_bytes_of_rfc_9110() {
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        for b in 0..=255u8 {
            let name = [b'x', b];
            let ok = std::str::from_utf8(&name).is_ok_and(|n| header_name_problem(n).is_none());
            assert_eq!(ok, tchar(b), "byte {b}");
        }
    }

    #[test]
    fn header_problems_never_quote_the_value() {
        let secret = "SUPERSECRET-TOKEN\r\nx-evil: 1";
        let p = header_value_problem(secret).unwrap();
        assert_eq!(p, "the header value holds a CR at byte 17");
        assert!(!p.contains("SUPERSECRET"));
        let p = header_name_problem("SECRET\nname").unwrap();
        assert!(!p.contains("SECRET"), "{p}");
        assert!(header_value_problem("a\tb \u{e9}").is_none());
        assert!(header_name_problem("x-Custom_1.!#$%&'*+^`|~").is_none());
        for bad in ["", ":path", "x a", "x\u{e9}", "x(y)", "x\0", "a,b"] {
            assert!(header_name_problem(bad).is_some(), "{bad:?}");
        }
        let e = header_option("x-user".into(), secret.into(), false).unwrap_err();
        assert!(!format!("{e:?}").contains("SUPERSECRET"), "{e:?}");
    }
}
