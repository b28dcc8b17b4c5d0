//! MCP (Model Context Protocol) messages, JSON-RPC 2.0 over Streamable
//! HTTP, as the `mcp` library reads them from a request body
//! ([`crate::cel::eval::lib::mcp`]): the body limit, the reading and
//! checking of one message, a fixed reason for each refusal, the method
//! constants, and the MCP authorization spec's denials.
//!
//! **Refused** (an evaluation error, so `failurePolicy: Fail` denies): a body
//! Envoy marked partial (`x-envoy-auth-partial-body: true` on the current
//! request), a body over the limit ([`configure`], default 1 MiB), invalid
//! JSON or JSON with a duplicate key, a JSON-RPC batch (top-level array),
//! anything that is not a JSON-RPC 2.0 message (`jsonrpc` not `"2.0"`, no
//! `method` and not a response, an `id` that is not a string or an integer,
//! `params` that is not an object), and the authorization-relevant parameters
//! of a method missing or mistyped (`tools/call` without a string `name`,
//! `prompts/get` without a `name` or with non-object `arguments`,
//! `resources/read` without a `uri`). The messages never quote the body.
//!
//! **Not refused**: a `tools/call` whose `arguments` is not an object (an
//! array, a string, ...) has no arguments (`{}`), as the MCP servers that
//! take any JSON there read it.

use crate::response::{DeniedResponse, HeaderOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bodies longer than this are refused unless [`configure`]d otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The request header Envoy's ext_authz filter sets to `true` when it sent
/// only the first `max_request_bytes` of the body (`allow_partial_message`).
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

static MAX_BODY: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_BODY_BYTES);

/// Sets the largest body `mcp.Parse` accepts, for the whole process
/// (`celgate serve --mcp-max-body-bytes`). Call it at start-up.
pub fn configure(max_body_bytes: usize) {
    MAX_BODY.store(max_body_bytes, Ordering::Relaxed);
}

/// The limit in force on this thread: a [`with_max_body_bytes`] override,
/// else the configured one.
pub fn max_body_bytes() -> usize {
    match LIMIT_OVERRIDE.get() {
        Some(n) => n,
        None => MAX_BODY.load(Ordering::Relaxed),
    }
}

/// Runs `f` with another body limit on this thread only (test suites use it
/// so that a suite's limit cannot leak into evaluations on other threads).
pub fn with_max_body_bytes<R>(max_body_bytes: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LIMIT_OVERRIDE.set(self.0);
        }
    }
    let _restore = Restore(LIMIT_OVERRIDE.replace(Some(max_body_bytes)));
    f()
}

/// How many bodies this thread has parsed (each cache miss of `mcp.Parse`,
/// refusals included). Tests use it to prove that a request is parsed once.
pub fn parse_count() -> u64 {
    PARSES.get()
}

thread_local! {
    static PARSES: Cell<u64> = const { Cell::new(0) };
    static LIMIT_OVERRIDE: Cell<Option<usize>> = const { Cell::new(None) };
}

fn same_buffer(a: &[u8], b: &[u8]) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()
}

/// One of the request's two body buffers.
#[derive(Clone, Copy)]
pub enum Slot {
    Body,
    RawBody,
}

/// `mcp.Parse` of `bytes` in a request whose HTTP attributes are `http`:
/// refused when Envoy marked the body partial, else [`parse_message`].
/// Not memoised; counted in [`parse_count`].
pub fn parse_checked(http: Option<&HttpRequest>, bytes: &[u8]) -> Result<Message, String> {
    let partial = http.is_some_and(|h| {
        crate::cel::eval::request::request_header(h, PARTIAL_BODY_HEADER)
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"true"))
    });
    if partial {
        PARSES.set(PARSES.get() + 1);
        return Err(
            "the body is incomplete (Envoy sent only part of it: x-envoy-auth-partial-body: true); \
             raise with_request_body.max_request_bytes or keep MCP bodies smaller"
                .into(),
        );
    }
    parse_message(bytes)
}

/// Which of the request's body buffers `bytes` is, if it is one of them
/// (by address and length: the value was read from the request in place).
pub fn body_slot(http: Option<&HttpRequest>, bytes: &[u8]) -> Option<Slot> {
    http.and_then(|h| {
        if same_buffer(bytes, h.body.as_bytes()) {
            Some(Slot::Body)
        } else if same_buffer(bytes, &h.raw_body) {
            Some(Slot::RawBody)
        } else {
            None
        }
    })
}

/// A fixed name for one of this module's refusal messages, safe to log
/// (the server logs `mcp_parse` with this reason, never the message).
pub fn refusal_reason(message: &str) -> &'static str {
    let m = message;
    if m.starts_with("the body is incomplete") {
        "partial_body"
    } else if m.contains("over the MCP body limit") {
        "body_too_large"
    } else if m.starts_with("the body is empty") {
        "empty_body"
    } else if m.contains("duplicate key") {
        "duplicate_key"
    } else if m.starts_with("the body is not valid JSON") {
        "invalid_json"
    } else if m.starts_with("a JSON-RPC batch") {
        "batch"
    } else if m.starts_with("not JSON-RPC 2.0") || m.starts_with("not a JSON-RPC") {
        "not_jsonrpc"
    } else if m.starts_with("the JSON-RPC id") {
        "invalid_id"
    } else if m.starts_with("the JSON-RPC method") || m.starts_with("a JSON-RPC message cannot") {
        "invalid_method"
    } else if m.starts_with("params must be") || m.contains(": params.") {
        "invalid_params"
    } else if m.starts_with("expects") {
        "invalid_argument"
    } else {
        "other"
    }
}

/// Reads and checks one MCP (JSON-RPC 2.0) message, with every check
/// `mcp.Parse` makes except the partial-body header, which needs the
/// request ([`parse_checked`]). Not memoised; counted in [`parse_count`].
pub fn parse_message(bytes: &[u8]) -> Result<Message, String> {
    PARSES.set(PARSES.get() + 1);
    let limit = max_body_bytes();
    if bytes.len() > limit {
        return Err(format!(
            "the body is {} bytes, over the MCP body limit of {limit} bytes (--mcp-max-body-bytes)",
            bytes.len()
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the body is empty: not a JSON-RPC message".into());
    }
    let Strict(json) = serde_json::from_slice::<Strict>(bytes)
        .map_err(|e| format!("the body is not valid JSON: {e}"))?;
    Message::from_json(json)
}

/// A JSON value read with duplicate object keys refused: parsers disagree on
/// which duplicate wins, and a gateway must read what the server will read.
struct Strict(Json);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Json::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Json::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Json::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(
            serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Json::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Json::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Json::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Json::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                // The key is the client's text: not quoted (errors are logged).
                return Err(de::Error::custom("duplicate key in an object"));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Strict(Json::Object(out)))
    }
}

/// Method names, as `mcp.<Name>` constants (the planner makes each a
/// constant when the policy loads).
pub const CONSTANTS: &[(&str, &str)] = &[
    ("InitializeMethod", "initialize"),
    ("PingMethod", "ping"),
    ("ToolsListMethod", "tools/list"),
    ("ToolsCallMethod", "tools/call"),
    ("ResourcesListMethod", "resources/list"),
    ("ResourcesTemplatesListMethod", "resources/templates/list"),
    ("ResourcesReadMethod", "resources/read"),
    ("ResourcesSubscribeMethod", "resources/subscribe"),
    ("ResourcesUnsubscribeMethod", "resources/unsubscribe"),
    ("PromptsListMethod", "prompts/list"),
    ("PromptsGetMethod", "prompts/get"),
    ("CompletionCompleteMethod", "completion/complete"),
    ("SetLogLevelMethod", "logging/setLevel"),
    ("ElicitationCreateMethod", "elicitation/create"),
    ("SamplingCreateMessageMethod", "sampling/createMessage"),
    ("RootsListMethod", "roots/list"),
    ("InitializedNotification", "notifications/initialized"),
    ("CancelledNotification", "notifications/cancelled"),
];

/// The value of `mcp.<name>`, if it is one of [`CONSTANTS`].
pub fn constant(name: &str) -> Option<&'static str> {
    CONSTANTS.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// Whether `mcp.<name>` is a constant (for the load-time check of names).
pub fn is_constant(name: &str) -> bool {
    CONSTANTS.iter().any(|(k, _)| *k == name)
}

/// What kind of JSON-RPC message a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Notification,
    Response,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Request => "request",
            MessageKind::Notification => "notification",
            MessageKind::Response => "response",
        }
    }
}

/// The section of a message (`req.ToolCall`, ...): at most one per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    ToolCall,
    ResourceRead,
    PromptGet,
    Initialize,
    Paginated,
    SetLogLevel,
    Elicitation,
}

impl SectionKind {
    /// The request's field that holds the section, and the section's type.
    pub const ALL: [(SectionKind, &'static str, &'static str); 7] = [
        (SectionKind::ToolCall, "ToolCall", "mcp.ToolCall"),
        (
            SectionKind::ResourceRead,
            "ResourceRead",
            "mcp.ResourceRead",
        ),
        (SectionKind::PromptGet, "PromptGet", "mcp.PromptGet"),
        (SectionKind::Initialize, "Initialize", "mcp.Initialize"),
        (SectionKind::Paginated, "Paginated", "mcp.Paginated"),
        (SectionKind::SetLogLevel, "SetLogLevel", "mcp.SetLogLevel"),
        (SectionKind::Elicitation, "Elicitation", "mcp.Elicitation"),
    ];
}

/// A checked message, as JSON: what the `mcp` library's values are made of.
#[derive(Debug)]
pub struct Message {
    pub kind: MessageKind,
    /// `""` for a response.
    pub method: String,
    /// A string, an integer, or null.
    pub id: Json,
    /// `params.name` or `params.uri`, else `""`.
    pub name: String,
    /// The method's section and its fields, in order.
    pub section: Option<(SectionKind, Vec<(&'static str, Json)>)>,
}

fn refuse<T>(message: impl Into<String>) -> Result<T, String> {
    Err(message.into())
}

/// What a client's value is, without quoting it: error messages are logged
/// and must not carry the client's data (nor grow with its size).
fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

impl Message {
    fn from_json(json: Json) -> Result<Message, String> {
        let mut msg = match json {
            Json::Object(m) => m,
            Json::Array(_) => return refuse(
                "a JSON-RPC batch (top-level array) is refused: MCP sends one message per request",
            ),
            other => {
                return refuse(format!(
                    "not a JSON-RPC message: the body is {}, not an object",
                    kind_of(&other)
                ))
            }
        };
        match msg.get("jsonrpc") {
            Some(Json::String(v)) if v == "2.0" => {}
            Some(v) => {
                return refuse(format!(
                    "not JSON-RPC 2.0: \"jsonrpc\" is {}, not \"2.0\"",
                    match v {
                        Json::String(_) => "another string",
                        other => kind_of(other),
                    }
                ))
            }
            None => return refuse("not JSON-RPC 2.0: no \"jsonrpc\": \"2.0\" member"),
        }
        let id = match msg.get("id") {
            None => Json::Null,
            Some(Json::String(s)) => Json::String(s.clone()),
            Some(Json::Number(n)) if n.is_i64() => Json::from(n.as_i64().unwrap_or_default()),
            Some(Json::Null) if msg.contains_key("error") && !msg.contains_key("method") => {
                Json::Null
            }
            Some(other) => {
                return refuse(format!(
                    "the JSON-RPC id must be a string or an integer, not {}",
                    match other {
                        Json::Number(_) =>
                            "a number out of the 64-bit integer range or with a fraction",
                        other => kind_of(other),
                    }
                ))
            }
        };
        let method = match msg.remove("method") {
            Some(Json::String(m)) => Some(m),
            Some(other) => {
                return refuse(format!(
                    "the JSON-RPC method must be a string, not {}",
                    kind_of(&other)
                ))
            }
            None => None,
        };
        let has_result = msg.contains_key("result");
        let has_error = msg.contains_key("error");
        let kind = match &method {
            Some(_) if has_result || has_error => {
                return refuse("a JSON-RPC message cannot have both a method and a result or error")
            }
            Some(_) if msg.contains_key("id") => MessageKind::Request,
            Some(_) => MessageKind::Notification,
            None if msg.contains_key("id") && (has_result ^ has_error) => MessageKind::Response,
            None => {
                return refuse(
                    "not a JSON-RPC request: no \"method\" (and not a response with an id and one of result or error)",
                )
            }
        };
        let method = method.unwrap_or_default();
        let mut params = match msg.remove("params") {
            None | Some(Json::Null) => serde_json::Map::new(),
            Some(Json::Object(p)) => p,
            Some(other) => {
                return refuse(format!(
                    "params must be an object (MCP uses named parameters), not {}",
                    kind_of(&other)
                ))
            }
        };

        let mut section = None;
        let name = match method.as_str() {
            "tools/call" | "prompts/get" => {
                let name = required_string(&mut params, "name", &method)?;
                let kind = if method == "tools/call" {
                    SectionKind::ToolCall
                } else {
                    SectionKind::PromptGet
                };
                let arguments = if kind == SectionKind::ToolCall {
                    // Any JSON is taken there; only an object holds arguments.
                    match params.remove("arguments") {
                        Some(Json::Object(m)) => m,
                        _ => serde_json::Map::new(),
                    }
                } else {
                    object_or_empty(&mut params, "arguments", &method)?
                };
                section = Some((
                    kind,
                    vec![
                        ("Name", Json::String(name.clone())),
                        ("Arguments", Json::Object(arguments)),
                    ],
                ));
                name
            }
            "resources/read" => {
                let uri = required_string(&mut params, "uri", "resources/read")?;
                let arguments = object_or_empty(&mut params, "arguments", "resources/read")?;
                section = Some((
                    SectionKind::ResourceRead,
                    vec![
                        ("URI", Json::String(uri.clone())),
                        ("Arguments", Json::Object(arguments)),
                    ],
                ));
                uri
            }
            "resources/subscribe" | "resources/unsubscribe" => {
                required_string(&mut params, "uri", &method)?
            }
            "initialize" => {
                let version = optional_string(&mut params, "protocolVersion", "initialize")?;
                let client = object_or_empty(&mut params, "clientInfo", "initialize")?;
                let caps = object_or_empty(&mut params, "capabilities", "initialize")?;
                section = Some((
                    SectionKind::Initialize,
                    vec![
                        ("ProtocolVersion", Json::String(version)),
                        ("ClientInfo", Json::Object(client)),
                        ("Capabilities", Json::Object(caps)),
                    ],
                ));
                String::new()
            }
            "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list" => {
                let cursor = optional_string(&mut params, "cursor", &method)?;
                section = Some((
                    SectionKind::Paginated,
                    vec![("Cursor", Json::String(cursor))],
                ));
                String::new()
            }
            "logging/setLevel" => {
                let level = optional_string(&mut params, "level", "logging/setLevel")?;
                section = Some((
                    SectionKind::SetLogLevel,
                    vec![("Level", Json::String(level))],
                ));
                String::new()
            }
            "elicitation/create" => {
                const M: &str = "elicitation/create";
                let mode = optional_string(&mut params, "mode", M)?;
                let message = optional_string(&mut params, "message", M)?;
                let schema = object_or_empty(&mut params, "requestedSchema", M)?;
                let url = optional_string(&mut params, "url", M)?;
                let elicitation_id = optional_string(&mut params, "elicitationId", M)?;
                section = Some((
                    SectionKind::Elicitation,
                    vec![
                        ("Mode", Json::String(mode)),
                        ("Message", Json::String(message)),
                        ("RequestedSchema", Json::Object(schema)),
                        ("URL", Json::String(url)),
                        ("ElicitationID", Json::String(elicitation_id)),
                    ],
                ));
                String::new()
            }
            _ => String::new(),
        };
        Ok(Message {
            kind,
            method,
            id,
            name,
            section,
        })
    }
}

fn required_string(
    params: &mut serde_json::Map<String, Json>,
    key: &str,
    method: &str,
) -> Result<String, String> {
    match params.remove(key) {
        Some(Json::String(s)) => Ok(s),
        Some(other) => refuse(format!(
            "{method}: params.{key} must be a string, not {}",
            kind_of(&other)
        )),
        None => refuse(format!("{method}: params.{key} is required")),
    }
}

fn optional_string(
    params: &mut serde_json::Map<String, Json>,
    key: &str,
    method: &str,
) -> Result<String, String> {
    match params.remove(key) {
        Some(Json::String(s)) => Ok(s),
        None | Some(Json::Null) => Ok(String::new()),
        Some(other) => refuse(format!(
            "{method}: params.{key} must be a string, not {}",
            kind_of(&other)
        )),
    }
}

fn object_or_empty(
    params: &mut serde_json::Map<String, Json>,
    key: &str,
    method: &str,
) -> Result<serde_json::Map<String, Json>, String> {
    match params.remove(key) {
        Some(Json::Object(m)) => Ok(m),
        None | Some(Json::Null) => Ok(serde_json::Map::new()),
        Some(other) => refuse(format!(
            "{method}: params.{key} must be an object, not {}",
            kind_of(&other)
        )),
    }
}

/// A value for a quoted-string parameter of `WWW-Authenticate` (RFC 9110):
/// `"` and `\` escaped; control characters refused (no header injection).
fn quoted_text(what: &str, v: &str) -> Result<String, String> {
    if v.chars().any(|c| c.is_control()) {
        return Err(format!("the {what} contains a control character"));
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

fn www_authenticate(status: i32, value: String) -> DeniedResponse {
    DeniedResponse {
        status,
        headers: vec![HeaderOption::new("www-authenticate", value)],
        body: String::new(),
    }
}

/// `mcp.Unauthorized(resourceMetadata [, scope])`: the MCP authorization
/// spec's 401, `WWW-Authenticate: Bearer resource_metadata="…"[, scope="…"]`.
pub fn unauthorized_response(
    resource: &str,
    scope: Option<&str>,
) -> Result<DeniedResponse, String> {
    let mut value = format!(
        "Bearer resource_metadata={}",
        quoted_text("resource metadata URL", resource)?
    );
    if let Some(scope) = scope {
        value.push_str(&format!(", scope={}", quoted_text("scope", scope)?));
    }
    Ok(www_authenticate(401, value))
}

/// `mcp.InsufficientScope(scope [, resourceMetadata])`: the 403 of a token
/// without the scope an operation needs,
/// `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"[, resource_metadata="…"]`.
pub fn insufficient_scope_response(
    scope: &str,
    resource: Option<&str>,
) -> Result<DeniedResponse, String> {
    let mut value = format!(
        "Bearer error=\"insufficient_scope\", scope={}",
        quoted_text("scope", scope)?
    );
    if let Some(resource) = resource {
        value.push_str(&format!(
            ", resource_metadata={}",
            quoted_text("resource metadata URL", resource)?
        ));
    }
    Ok(www_authenticate(403, value))
}

/// The text of a JSON-RPC error response with `id` (checked), `code` and
/// `message`.
pub fn error_body_text(id: &Json, code: i64, message: &str) -> String {
    // Written out so the members keep JSON-RPC's customary order whatever
    // serde_json's map ordering is.
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{}}}}}"#,
        Json::String(message.to_owned())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Message, String> {
        parse_message(s.as_bytes())
    }

    #[test]
    fn refusals() {
        let cases = [
            (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, "batch"),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping""#,
                "not valid JSON",
            ),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                "not JSON-RPC 2.0",
            ),
            (r#"{"id":1,"method":"ping"}"#, "not JSON-RPC 2.0"),
            (r#"{"jsonrpc":"2.0","id":1}"#, "no \"method\""),
            (
                r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
                "id must be",
            ),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
                "id must be",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
                "method must be a string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#,
                "params must be an object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
                "params.name is required",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"x","arguments":[1]}}"#,
                "params.arguments must be an object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"u","arguments":"a"}}"#,
                "params.arguments must be an object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"elicitation/create","params":{"message":1}}"#,
                "params.message must be a string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"elicitation/create","params":{"message":"m","requestedSchema":"s"}}"#,
                "params.requestedSchema must be an object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":3}}"#,
                "params.uri must be a string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
                "duplicate key",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
                "duplicate key",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
                "both a method",
            ),
            ("  ", "empty"),
            ("42", "not an object"),
        ];
        for (body, want) in cases {
            let e = parse(body).expect_err(body);
            assert!(e.contains(want), "{body}: {e}");
            assert_ne!(refusal_reason(&e), "other", "{e}");
        }
        assert_eq!(
            refusal_reason(
                r#"the body is not valid JSON: duplicate key in an object at line 1 column 9"#
            ),
            "duplicate_key"
        );
    }

    #[test]
    fn refusals_never_quote_the_body_and_stay_short() {
        const S: &str = "SECRET-c4f1e2";
        let big = format!("{S}{}", "x".repeat(900_000));
        let bodies = [
            format!(r#"{{"jsonrpc":"{S}","id":1,"method":"ping"}}"#),
            format!(r#"{{"jsonrpc":{{"{S}":1}},"id":1,"method":"ping"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":{{"{S}":"{big}"}},"method":"ping"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":[{S:?}],"method":"ping"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"{S}":1,"{S}":2,"method":"ping"}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":{{"{S}":1}}}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":["{S}"]}}"#),
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":["{S}"]}}}}"#
            ),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{S}","result":1}}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping"}} {S}"#),
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","x":"{S}\q"}}"#),
            format!(r#"{{"{S}": tru}}"#),
            format!("[\"{S}\"]"),
            format!("\"{big}\""),
        ];
        for body in &bodies {
            let e = parse(body).expect_err(body);
            assert!(!e.contains("SECRET"), "quotes the body: {e}");
            assert!(e.len() < 300, "{} bytes: {e}", e.len());
        }
    }

    #[test]
    fn tool_call_arguments_that_are_not_an_object_are_none() {
        for args in ["[1]", "\"a\"", "7", "true", "null"] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{args}}}}}"#
            );
            let m = parse(&body).expect(&body);
            let (kind, fields) = m.section.expect("a section");
            assert_eq!(kind, SectionKind::ToolCall);
            assert_eq!(fields[1], ("Arguments", serde_json::json!({})), "{body}");
        }
    }

    #[test]
    fn elicitation_and_resource_arguments() {
        let m = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"elicitation/create","params":{"message":"Your name?","requestedSchema":{"type":"object"}}}"#,
        )
        .unwrap();
        let (kind, fields) = m.section.unwrap();
        assert_eq!(kind, SectionKind::Elicitation);
        assert_eq!(
            Json::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
            serde_json::json!({"Mode": "", "Message": "Your name?",
                "RequestedSchema": {"type": "object"}, "URL": "", "ElicitationID": ""})
        );
        let m = parse(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"u","arguments":{"a":1}}}"#,
        )
        .unwrap();
        let (_, fields) = m.section.unwrap();
        assert_eq!(fields[1], ("Arguments", serde_json::json!({"a": 1})));
    }

    #[test]
    fn size_limit_is_per_thread_when_overridden() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert!(parse(body).is_ok());
        let e = with_max_body_bytes(10, || parse(body)).unwrap_err();
        assert!(e.contains("over the MCP body limit of 10 bytes"), "{e}");
        assert!(parse(body).is_ok(), "the override ends with the closure");
    }

    #[test]
    fn quoted_strings_escape_and_refuse_control_characters() {
        assert_eq!(quoted_text("x", r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert!(quoted_text("x", "a\r\nSet-Cookie: x").is_err());
    }
}
