//! The `mcp` CEL library: Model Context Protocol requests (JSON-RPC 2.0 over
//! Streamable HTTP) read from the request body.
//!
//! ```cel
//! mcp.Parse(object.attributes.request.http.body).ToolCall.Name
//! mcp.Parse(object.attributes.request.http.raw_body).Method == mcp.ToolsCallMethod
//! variables.req.ToolCall.GetStringArgument("repo", "")
//! mcp.Unauthorized("https://mcp.example.com/.well-known/oauth-protected-resource").Response()
//! ```
//!
//! **Parsed once per request.** The engine runs each request inside
//! [`in_request`], which makes the request visible to this module through a
//! thread-local for exactly that long (a request is evaluated synchronously
//! on one thread). `mcp.Parse` given the request's own `body` or `raw_body`
//! buffer (recognised by address and length, directly or through a variable)
//! parses it the first time and hands every later call, in any expression of
//! any policy, the same parsed value (an `Arc`). Policies that never call it
//! cost nothing beyond two thread-local writes per request: no parse, no
//! allocation. Any other string is parsed on each call.
//!
//! **Refused** (an evaluation error, so `failurePolicy: Fail` denies): a body
//! Envoy marked partial (`x-envoy-auth-partial-body: true` on the current
//! request), a body over the limit ([`configure`], default 1 MiB), invalid
//! JSON or JSON with a duplicate key, a JSON-RPC batch (top-level array),
//! anything that is not a JSON-RPC 2.0 message (`jsonrpc` not `"2.0"`, no
//! `method` and not a response, an `id` that is not a string or an integer,
//! `params` that is not an object), and the authorization-relevant parameters
//! of a method missing or mistyped (`tools/call` without a string `name` or
//! with non-object `arguments`, `prompts/get` without a `name`,
//! `resources/read` without a `uri`).
//!
//! **Result shape.** An `mcp.MCPRequest` with `Method`, `ID` (int, string or
//! null), `Kind` (`request`, `notification` or `response`), `Name` (what the
//! `Mcp-Name` header mirrors: `params.name` or `params.uri`, else `""`), and
//! one section per method, `null` when the message is another method:
//! `ToolCall` (`Name`, `Arguments`), `ResourceRead` (`URI`), `PromptGet`
//! (`Name`, `Arguments`), `Initialize` (`ProtocolVersion`, `ClientInfo`,
//! `Capabilities`), `Paginated` (`Cursor`, the list methods), `SetLogLevel`
//! (`Level`). An absent section is a null that can be selected into safely:
//! `req.ToolCall.?Name.orValue("")` is `""` and `has(req.ToolCall.Name)` is
//! false on a `tools/list`; `req.ToolCall == null` tells them apart.

use crate::cel::envoy::{DeniedResponse, HeaderOption};
use cel::common::traits::Indexer;
use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
    Type, BOOL_TYPE, BYTES_TYPE, DOUBLE_TYPE, DYN_TYPE, INT_TYPE, LIST_TYPE, NULL_TYPE,
    STRING_TYPE,
};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::{DeclarationError, Env, ExecutionError};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

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

type Cached = Result<Arc<Parsed>, Arc<str>>;

#[derive(Default)]
struct Cache {
    body: Option<Cached>,
    raw_body: Option<Cached>,
}

thread_local! {
    /// The request being evaluated on this thread, while [`in_request`] runs.
    static CURRENT: Cell<*const CheckRequest> = const { Cell::new(std::ptr::null()) };
    static CACHE: RefCell<Cache> = const { RefCell::new(Cache { body: None, raw_body: None }) };
    static PARSES: Cell<u64> = const { Cell::new(0) };
    static LIMIT_OVERRIDE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `f` (the evaluation of `request`) with `request` visible to the
/// `mcp` functions on this thread and a fresh parse cache, both dropped when
/// `f` returns or unwinds. Touches nothing else: a policy set that never
/// calls `mcp.Parse` pays two thread-local writes.
pub fn in_request<R>(request: &CheckRequest, f: impl FnOnce() -> R) -> R {
    struct Reset {
        previous: *const CheckRequest,
        cache: Cache,
    }
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.set(self.previous);
            let previous = std::mem::take(&mut self.cache);
            CACHE.with_borrow_mut(|c| *c = previous);
        }
    }
    let previous = CURRENT.replace(request);
    let cache = CACHE.with_borrow_mut(std::mem::take);
    let _reset = Reset { previous, cache };
    f()
}

/// The request [`in_request`] is running, if any.
fn current<'a>() -> Option<&'a CheckRequest> {
    let p = CURRENT.get();
    // SAFETY: `CURRENT` is only non-null inside `in_request`, which borrows
    // the request for its whole run and resets the pointer (through a guard
    // that callers cannot forget) before it returns or unwinds. Every caller
    // of `current` runs inside an evaluation, i.e. within that borrow, and
    // does not keep the reference past its own call.
    unsafe { p.as_ref() }
}

fn same_buffer(a: &[u8], b: &[u8]) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()
}

/// One of the request's two body buffers.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    Body,
    RawBody,
}

/// `mcp.Parse(body)`: the memoised parse of `bytes`.
fn parse_in_request(bytes: &[u8]) -> Cached {
    let request = current();
    let http = request
        .and_then(|r| r.attributes.as_ref())
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let slot = body_slot(http, bytes);
    if let Some(slot) = slot {
        let hit = CACHE.with_borrow(|c| match slot {
            Slot::Body => c.body.clone(),
            Slot::RawBody => c.raw_body.clone(),
        });
        if let Some(hit) = hit {
            return hit;
        }
    }
    let result = parse_checked(http, bytes)
        .map(|m| Arc::new(Parsed::from_message(m)))
        .map_err(Arc::from);
    if let Some(slot) = slot {
        CACHE.with_borrow_mut(|c| {
            let cell = match slot {
                Slot::Body => &mut c.body,
                Slot::RawBody => &mut c.raw_body,
            };
            *cell = Some(result.clone());
        });
    }
    result
}

/// `mcp.Parse` of `bytes` in a request whose HTTP attributes are `http`:
/// refused when Envoy marked the body partial, else [`parse_message`].
/// Not memoised; counted in [`parse_count`].
pub(crate) fn parse_checked(http: Option<&HttpRequest>, bytes: &[u8]) -> Result<Message, String> {
    let partial = http.is_some_and(|h| {
        crate::cel::view::request_header(h, PARTIAL_BODY_HEADER)
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
pub(crate) fn body_slot(http: Option<&HttpRequest>, bytes: &[u8]) -> Option<Slot> {
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

/// Parses one MCP (JSON-RPC 2.0) message, with every check `mcp.Parse`
/// makes except the partial-body header, which needs the request. Not
/// memoised; counted in [`parse_count`].
pub fn parse_body(bytes: &[u8]) -> Result<McpRequest, String> {
    parse_message(bytes).map(|m| McpRequest(Arc::new(Parsed::from_message(m))))
}

/// [`parse_body`]'s checks and reading, before the message is turned into
/// values of either evaluator.
pub(crate) fn parse_message(bytes: &[u8]) -> Result<Message, String> {
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

const REQUEST: Type = Type::new_struct_type("mcp.MCPRequest");
const TOOL_CALL: Type = Type::new_struct_type("mcp.ToolCall");
const PROMPT_GET: Type = Type::new_struct_type("mcp.PromptGet");
static REQUEST_T: Type = REQUEST;
static TOOL_CALL_T: Type = TOOL_CALL;
static PROMPT_GET_T: Type = PROMPT_GET;
static RESOURCE_READ_T: Type = Type::new_struct_type("mcp.ResourceRead");
static INITIALIZE_T: Type = Type::new_struct_type("mcp.Initialize");
static PAGINATED_T: Type = Type::new_struct_type("mcp.Paginated");
static SET_LOG_LEVEL_T: Type = Type::new_struct_type("mcp.SetLogLevel");

/// Method names, as `mcp.<Name>` constants (answered by the engine's
/// variable resolver, so reading one allocates nothing).
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

static CONSTANT_VALS: LazyLock<Vec<(&'static str, CelString<'static>)>> = LazyLock::new(|| {
    CONSTANTS
        .iter()
        .map(|(k, v)| (*k, CelString::from(*v)))
        .collect()
});

/// The value of `mcp.<name>`, if it is one of [`CONSTANTS`].
pub fn constant(name: &str) -> Option<&'static CelString<'static>> {
    CONSTANT_VALS
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MessageKind::Request => "request",
            MessageKind::Notification => "notification",
            MessageKind::Response => "response",
        }
    }
}

/// The section of a message (`req.ToolCall`, ...): at most one per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SectionKind {
    ToolCall,
    ResourceRead,
    PromptGet,
    Initialize,
    Paginated,
    SetLogLevel,
}

impl SectionKind {
    /// The request's field that holds the section, and the section's type.
    pub(crate) const ALL: [(SectionKind, &'static str, &'static str); 6] = [
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
    ];
}

/// A checked message, as JSON: what both evaluators' values are made of.
#[derive(Debug)]
pub(crate) struct Message {
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

/// One parsed message, shared by every value handed out for it.
#[derive(Debug)]
pub struct Parsed {
    kind: MessageKind,
    kind_val: CelString<'static>,
    method: CelString<'static>,
    id: Box<dyn Val>,
    name: CelString<'static>,
    tool_call: Option<Section>,
    resource_read: Option<Section>,
    prompt_get: Option<Section>,
    initialize: Option<Section>,
    paginated: Option<Section>,
    set_log_level: Option<Section>,
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
            "tools/call" => {
                let name = required_string(&mut params, "name", "tools/call")?;
                let arguments = object_or_empty(&mut params, "arguments", "tools/call")?;
                section = Some((
                    SectionKind::ToolCall,
                    vec![
                        ("Name", Json::String(name.clone())),
                        ("Arguments", Json::Object(arguments)),
                    ],
                ));
                name
            }
            "prompts/get" => {
                let name = required_string(&mut params, "name", "prompts/get")?;
                let arguments = object_or_empty(&mut params, "arguments", "prompts/get")?;
                section = Some((
                    SectionKind::PromptGet,
                    vec![
                        ("Name", Json::String(name.clone())),
                        ("Arguments", Json::Object(arguments)),
                    ],
                ));
                name
            }
            "resources/read" => {
                let uri = required_string(&mut params, "uri", "resources/read")?;
                section = Some((
                    SectionKind::ResourceRead,
                    vec![("URI", Json::String(uri.clone()))],
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

impl Parsed {
    fn from_message(m: Message) -> Parsed {
        let mut parsed = Parsed {
            kind: m.kind,
            kind_val: CelString::from(m.kind.as_str()),
            method: CelString::from(m.method),
            id: json_into_val(m.id),
            name: CelString::from(m.name),
            tool_call: None,
            resource_read: None,
            prompt_get: None,
            initialize: None,
            paginated: None,
            set_log_level: None,
        };
        if let Some((kind, fields)) = m.section {
            let fields = fields
                .into_iter()
                .map(|(k, v)| (k, json_into_val(v)))
                .collect();
            let (slot, ty) = match kind {
                SectionKind::ToolCall => (&mut parsed.tool_call, &TOOL_CALL_T),
                SectionKind::ResourceRead => (&mut parsed.resource_read, &RESOURCE_READ_T),
                SectionKind::PromptGet => (&mut parsed.prompt_get, &PROMPT_GET_T),
                SectionKind::Initialize => (&mut parsed.initialize, &INITIALIZE_T),
                SectionKind::Paginated => (&mut parsed.paginated, &PAGINATED_T),
                SectionKind::SetLogLevel => (&mut parsed.set_log_level, &SET_LOG_LEVEL_T),
            };
            *slot = Some(Section::new(ty, fields));
        }
        parsed
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

/// JSON as an owned CEL value: numbers become `int` when they are integers
/// that fit, `uint` above `int`'s range, else `double`.
fn json_into_val(v: Json) -> Box<dyn Val + 'static> {
    match v {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(b)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Json::String(s) => Box::new(CelString::from(s)),
        Json::Array(a) => Box::new(CelList::from(
            a.into_iter().map(json_into_val).collect::<Vec<_>>(),
        )),
        Json::Object(o) => {
            let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = o
                .into_iter()
                .map(|(k, v)| (CelMapKey::from(k), json_into_val(v)))
                .collect();
            Box::new(CelMap::from(map))
        }
    }
}

/// A method's parameters as CEL sees them (`req.ToolCall`, ...): named
/// fields, shared (cloning one is an `Arc` increment).
#[derive(Debug, Clone)]
pub struct Section(Arc<SectionData>);

#[derive(Debug)]
struct SectionData {
    ty: &'static Type,
    fields: Vec<(&'static str, Box<dyn Val>)>,
}

impl Section {
    fn new(ty: &'static Type, fields: Vec<(&'static str, Box<dyn Val>)>) -> Section {
        Section(Arc::new(SectionData { ty, fields }))
    }

    fn field(&self, name: &str) -> Option<&(dyn Val + 'static)> {
        self.0
            .fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The `Arguments` map, if the section has one.
    fn arguments(&self) -> Option<&(dyn Val + 'static)> {
        self.field("Arguments")
    }

    pub fn to_json(&self) -> Json {
        let mut out = serde_json::Map::new();
        for (k, v) in &self.0.fields {
            out.insert(
                (*k).to_owned(),
                crate::cel::convert::to_json(v.as_ref()).unwrap_or(Json::Null),
            );
        }
        Json::Object(out)
    }
}

impl Indexer for Section {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let key = super::string_key(idx)?;
        self.field(key)
            .map(CowVal::Borrowed)
            .ok_or_else(|| ExecutionError::no_such_key(key))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Val for Section {
    fn get_type(&self) -> &Type {
        self.0.ty
    }
    fn cel_type() -> &'static Type {
        &DYN_TYPE
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Section>().is_some_and(|o| {
            Arc::ptr_eq(&self.0, &o.0)
                || (std::ptr::eq(self.0.ty, o.0.ty)
                    && self.0.fields.len() == o.0.fields.len()
                    && self
                        .0
                        .fields
                        .iter()
                        .zip(&o.0.fields)
                        .all(|((ka, va), (kb, vb))| ka == kb && va.equals(vb.as_ref())))
        })
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Section {}

/// A section the message does not have (`req.ToolCall` on a `tools/list`):
/// `null` (its type is `null_type`, it equals `null` when on the left of
/// `==`), which, unlike a plain `null`, can be selected into safely:
/// `has(x.Name)` is false and `x.?Name` is empty. `x.Name` is an error.
#[derive(Debug, Clone, Copy)]
pub struct Absent;

static ABSENT: Absent = Absent;

impl Indexer for Absent {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        Err(ExecutionError::no_such_key(super::string_key(idx)?))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        Err(ExecutionError::no_such_key(super::string_key(idx)?))
    }
}

impl Val for Absent {
    fn get_type(&self) -> &Type {
        &NULL_TYPE
    }
    fn cel_type() -> &'static Type {
        &NULL_TYPE
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.get_type().kind() == cel::common::types::Kind::NullType
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(Absent)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Absent {}

/// `mcp.Parse(body)`: one parsed MCP message. Cloning it is an `Arc`
/// increment; values read from it are borrowed from the shared parse.
#[derive(Debug, Clone)]
pub struct McpRequest(Arc<Parsed>);

impl McpRequest {
    pub fn method(&self) -> &str {
        self.0.method.inner()
    }

    pub fn kind(&self) -> MessageKind {
        self.0.kind
    }

    /// The tool's name for `tools/call`.
    pub fn tool_name(&self) -> Option<&str> {
        self.0
            .tool_call
            .as_ref()
            .and_then(|s| s.field("Name"))
            .and_then(|v| v.downcast_ref::<CelString>())
            .map(|s| s.inner())
    }

    /// Whether two values are the very same parse (the memoisation at work).
    pub fn same_parse(&self, other: &McpRequest) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn section<'a>(&'a self, s: &'a Option<Section>) -> CowVal<'a, 'static> {
        match s {
            Some(s) => CowVal::Borrowed(s),
            None => CowVal::Borrowed(&ABSENT),
        }
    }

    /// The arguments getters read: `tools/call`'s, else `prompts/get`'s.
    fn arguments(&self) -> Option<&(dyn Val + 'static)> {
        self.0
            .tool_call
            .as_ref()
            .or(self.0.prompt_get.as_ref())
            .and_then(Section::arguments)
    }

    pub fn to_json(&self) -> Json {
        let p = &self.0;
        let section = |s: &Option<Section>| s.as_ref().map_or(Json::Null, Section::to_json);
        serde_json::json!({
            "Method": p.method.inner(),
            "ID": crate::cel::convert::to_json(p.id.as_ref()).unwrap_or(Json::Null),
            "Kind": p.kind.as_str(),
            "Name": p.name.inner(),
            "ToolCall": section(&p.tool_call),
            "ResourceRead": section(&p.resource_read),
            "PromptGet": section(&p.prompt_get),
            "Initialize": section(&p.initialize),
            "Paginated": section(&p.paginated),
            "SetLogLevel": section(&p.set_log_level),
        })
    }
}

impl Indexer for McpRequest {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let p = &self.0;
        Ok(match super::string_key(idx)? {
            "Method" => CowVal::Borrowed(&p.method),
            "ID" => CowVal::Borrowed(p.id.as_ref()),
            "Kind" => CowVal::Borrowed(&p.kind_val),
            "Name" => CowVal::Borrowed(&p.name),
            "ToolCall" => self.section(&p.tool_call),
            "ResourceRead" => self.section(&p.resource_read),
            "PromptGet" => self.section(&p.prompt_get),
            "Initialize" => self.section(&p.initialize),
            "Paginated" => self.section(&p.paginated),
            "SetLogLevel" => self.section(&p.set_log_level),
            other => return Err(ExecutionError::no_such_key(other)),
        })
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Val for McpRequest {
    fn get_type(&self) -> &Type {
        &REQUEST_T
    }
    fn cel_type() -> &'static Type {
        &REQUEST_T
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other
            .downcast_ref::<McpRequest>()
            .is_some_and(|o| self.same_parse(o) || self.to_json() == o.to_json())
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for McpRequest {}

type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;
type Ret<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

fn fn_error(f: &str, message: impl std::fmt::Display) -> ExecutionError {
    ExecutionError::function_error(f, message)
}

fn string_arg<'a>(
    f: &str,
    args: &'a [CowVal<'_, '_>],
    i: usize,
) -> Result<&'a str, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| fn_error(f, format!("argument {i} must be a string")))
}

pub fn extension(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_overload("mcp.Parse", "mcp_parse_string", vec![STRING_TYPE], parse)?;
    env.add_overload("mcp.Parse", "mcp_parse_bytes", vec![BYTES_TYPE], parse)?;
    env.add_overload(
        "mcp.Unauthorized",
        "mcp_unauthorized_string",
        vec![STRING_TYPE],
        unauthorized,
    )?;
    env.add_overload(
        "mcp.Unauthorized",
        "mcp_unauthorized_string_string",
        vec![STRING_TYPE, STRING_TYPE],
        unauthorized,
    )?;
    env.add_overload(
        "mcp.InsufficientScope",
        "mcp_insufficient_scope_string",
        vec![STRING_TYPE],
        insufficient_scope,
    )?;
    env.add_overload(
        "mcp.InsufficientScope",
        "mcp_insufficient_scope_string_string",
        vec![STRING_TYPE, STRING_TYPE],
        insufficient_scope,
    )?;
    env.add_overload(
        "mcp.ErrorBody",
        "mcp_error_body_dyn_int_string",
        vec![DYN_TYPE, INT_TYPE, STRING_TYPE],
        error_body,
    )?;
    env.add_member_overload(
        "ErrorBody",
        "mcp_request_error_body_int_string",
        REQUEST,
        vec![INT_TYPE, STRING_TYPE],
        error_body,
    )?;

    // Argument getters: on the request (Kyverno's form: the arguments of
    // tools/call, else of prompts/get), on ToolCall and PromptGet, and on an
    // absent section (`req.ToolCall` of a tools/list), which has none.
    type Getter = (&'static str, fn() -> Type, cel::common::functions::Function);
    let getters: [Getter; 8] = [
        ("GetStringArgument", || STRING_TYPE, get_string),
        ("GetIntArgument", || INT_TYPE, get_int),
        ("GetFloatArgument", || DOUBLE_TYPE, get_float),
        ("GetBoolArgument", || BOOL_TYPE, get_bool),
        ("GetStringSliceArgument", || LIST_TYPE, get_string_slice),
        ("GetIntSliceArgument", || LIST_TYPE, get_int_slice),
        ("GetFloatSliceArgument", || LIST_TYPE, get_float_slice),
        ("GetBoolSliceArgument", || LIST_TYPE, get_bool_slice),
    ];
    for (name, default, f) in getters {
        for (target, tname) in [
            (REQUEST, "request"),
            (TOOL_CALL, "tool_call"),
            (PROMPT_GET, "prompt_get"),
            (NULL_TYPE, "absent"),
        ] {
            env.add_member_overload(
                name,
                &format!("mcp_{tname}_{name}"),
                target,
                vec![STRING_TYPE, default()],
                f,
            )?;
        }
    }
    Ok(())
}

fn parse<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let arg = args
        .first()
        .ok_or_else(|| fn_error("mcp.Parse", "expects the body"))?;
    let bytes: &[u8] = if let Some(s) = arg.downcast_ref::<CelString>() {
        s.inner().as_bytes()
    } else if let Some(b) = arg.downcast_ref::<CelBytes>() {
        b.inner()
    } else {
        return Err(fn_error(
            "mcp.Parse",
            format!(
                "expects the body as a string or bytes, not {}",
                arg.get_type().name()
            ),
        ));
    };
    match parse_in_request(bytes) {
        Ok(p) => Ok(CowVal::owned(McpRequest(p))),
        Err(e) => Err(fn_error("mcp.Parse", e)),
    }
}

/// A value for a quoted-string parameter of `WWW-Authenticate` (RFC 9110):
/// `"` and `\` escaped; control characters refused (no header injection).
#[cfg(test)]
fn quoted(f: &str, what: &str, v: &str) -> Result<String, ExecutionError> {
    quoted_text(what, v).map_err(|e| fn_error(f, e))
}

/// [`quoted`], with its refusal as text.
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
fn unauthorized<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let f = "mcp.Unauthorized";
    let resource = string_arg(f, &args, 0)?;
    let scope = if args.len() > 1 {
        Some(string_arg(f, &args, 1)?)
    } else {
        None
    };
    Ok(CowVal::owned(
        unauthorized_response(resource, scope).map_err(|e| fn_error(f, e))?,
    ))
}

/// The denial of [`unauthorized`].
pub(crate) fn unauthorized_response(
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
fn insufficient_scope<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    let f = "mcp.InsufficientScope";
    let scope = string_arg(f, &args, 0)?;
    let resource = if args.len() > 1 {
        Some(string_arg(f, &args, 1)?)
    } else {
        None
    };
    Ok(CowVal::owned(
        insufficient_scope_response(scope, resource).map_err(|e| fn_error(f, e))?,
    ))
}

/// The denial of [`insufficient_scope`].
pub(crate) fn insufficient_scope_response(
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

/// `mcp.ErrorBody(id, code, message)` and `req.ErrorBody(code, message)`:
/// a JSON-RPC error response, as text for `Denied(..).WithBody(..)`.
fn error_body<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    // Both forms take (id or request, code, message).
    let f = "ErrorBody";
    let id = match args.first().and_then(|a| a.downcast_ref::<McpRequest>()) {
        Some(req) => crate::cel::convert::to_json(req.0.id.as_ref()).unwrap_or(Json::Null),
        None => {
            let id = args.first().ok_or_else(|| fn_error(f, "expects an id"))?;
            let id = crate::cel::convert::to_json(&**id).map_err(|e| fn_error(f, e))?;
            if !matches!(id, Json::Null | Json::String(_) | Json::Number(_)) {
                return Err(fn_error(f, "the id must be a string, an integer or null"));
            }
            id
        }
    };
    let code = args
        .get(1)
        .and_then(|a| a.downcast_ref::<CelInt>())
        .map(|c| *c.inner())
        .ok_or_else(|| fn_error(f, "the code must be an int"))?;
    let message = string_arg(f, &args, 2)?;
    Ok(CowVal::owned(CelString::from(error_body_text(
        &id, code, message,
    ))))
}

/// The text of a JSON-RPC error response with `id` (checked), `code` and
/// `message`.
pub(crate) fn error_body_text(id: &Json, code: i64, message: &str) -> String {
    // Written out so the members keep JSON-RPC's customary order whatever
    // serde_json's map ordering is.
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{}}}}}"#,
        Json::String(message.to_owned())
    )
}

/// The value of argument `key` for a getter call `target.Get…Argument(key, default)`.
fn argument<'a>(target: &'a (dyn Val + '_), key: &str) -> Option<CowVal<'a, 'a>> {
    let args = if let Some(req) = target.downcast_ref::<McpRequest>() {
        req.arguments()?
    } else if let Some(section) = target.downcast_ref::<Section>() {
        section.arguments()?
    } else {
        return None; // an absent section: no arguments
    };
    args.as_indexer()?.get(&CelString::from(key)).ok()
}

/// `target.Get…Argument(key, default)`: the argument converted by `convert`,
/// or `default` when it is missing or of another type.
fn getter<'b, 'v>(
    name: &str,
    args: Args<'b, 'v>,
    convert: impl FnOnce(&dyn Val) -> Option<Box<dyn Val + 'static>>,
) -> Ret<'b, 'v> {
    let key = string_arg(name, &args, 1)?;
    let target = args
        .first()
        .ok_or_else(|| fn_error(name, "expects a receiver"))?;
    let found = argument(&**target, key).and_then(|v| convert(&*v));
    match found {
        Some(v) => Ok(CowVal::Owned(v)),
        None => args
            .into_iter()
            .nth(2)
            .ok_or_else(|| fn_error(name, "expects a default")),
    }
}

fn as_int(v: &dyn Val) -> Option<i64> {
    if let Some(i) = v.downcast_ref::<CelInt>() {
        Some(*i.inner())
    } else if let Some(u) = v.downcast_ref::<CelUInt>() {
        i64::try_from(*u.inner()).ok()
    } else if let Some(d) = v.downcast_ref::<CelDouble>() {
        // JSON has one number type: 3.0 is the integer 3.
        let d = *d.inner();
        (d.fract() == 0.0 && d >= i64::MIN as f64 && d < i64::MAX as f64).then_some(d as i64)
    } else {
        None
    }
}

fn as_float(v: &dyn Val) -> Option<f64> {
    if let Some(d) = v.downcast_ref::<CelDouble>() {
        Some(*d.inner())
    } else if let Some(i) = v.downcast_ref::<CelInt>() {
        Some(*i.inner() as f64)
    } else {
        v.downcast_ref::<CelUInt>().map(|u| *u.inner() as f64)
    }
}

fn get_string<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    getter("GetStringArgument", args, |v| {
        v.downcast_ref::<CelString>()
            .map(|s| Box::new(CelString::from(s.inner().to_owned())) as Box<dyn Val>)
    })
}

fn get_int<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    getter("GetIntArgument", args, |v| {
        as_int(v).map(|i| Box::new(CelInt::from(i)) as Box<dyn Val>)
    })
}

fn get_float<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    getter("GetFloatArgument", args, |v| {
        as_float(v).map(|d| Box::new(CelDouble::from(d)) as Box<dyn Val>)
    })
}

fn get_bool<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    getter("GetBoolArgument", args, |v| {
        v.downcast_ref::<CelBool>()
            .map(|b| Box::new(CelBool::from(*b.inner())) as Box<dyn Val>)
    })
}

/// A list argument whose every element converts; any other element makes
/// the whole argument "of another type" (the default), never a shorter list.
fn slice(
    v: &dyn Val,
    element: impl Fn(&dyn Val) -> Option<Box<dyn Val + 'static>>,
) -> Option<Box<dyn Val + 'static>> {
    let list = v.downcast_ref::<CelList>()?;
    let items = list
        .inner()
        .iter()
        .map(|e| element(e.as_ref()))
        .collect::<Option<Vec<_>>>()?;
    Some(Box::new(CelList::from(items)))
}

fn get_string_slice<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    getter("GetStringSliceArgument", args, |v| {
        slice(v, |e| {
            e.downcast_ref::<CelString>()
                .map(|s| Box::new(CelString::from(s.inner().to_owned())) as Box<dyn Val>)
        })
    })
}

fn get_int_slice<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    getter("GetIntSliceArgument", args, |v| {
        slice(v, |e| {
            as_int(e).map(|i| Box::new(CelInt::from(i)) as Box<dyn Val>)
        })
    })
}

fn get_float_slice<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    getter("GetFloatSliceArgument", args, |v| {
        slice(v, |e| {
            as_float(e).map(|d| Box::new(CelDouble::from(d)) as Box<dyn Val>)
        })
    })
}

fn get_bool_slice<'b, 'v>(args: Args<'b, 'v>) -> Ret<'b, 'v> {
    getter("GetBoolSliceArgument", args, |v| {
        slice(v, |e| {
            e.downcast_ref::<CelBool>()
                .map(|b| Box::new(CelBool::from(*b.inner())) as Box<dyn Val>)
        })
    })
}

/// The library's overloads, for the type checker. A request's sections
/// (`ToolCall`, `PromptGet`, ...) are absent or present by request, so they
/// are `dyn`, and the argument getters are declared on every receiver they
/// take. A getter returns its default as given, so the default is declared
/// with the result's type (`[]` is a `list(dyn)`, which fits any).
pub const DECLS: &str = "
mcp.Parse(string) -> mcp.MCPRequest
mcp.Parse(bytes) -> mcp.MCPRequest
mcp.Unauthorized(string) -> envoy.service.auth.v3.DeniedHttpResponse
mcp.Unauthorized(string, string) -> envoy.service.auth.v3.DeniedHttpResponse
mcp.InsufficientScope(string) -> envoy.service.auth.v3.DeniedHttpResponse
mcp.InsufficientScope(string, string) -> envoy.service.auth.v3.DeniedHttpResponse
mcp.ErrorBody(dyn, int, string) -> string
(mcp.MCPRequest).ErrorBody(int, string) -> string
(mcp.MCPRequest).GetStringArgument(string, string) -> string
(mcp.ToolCall).GetStringArgument(string, string) -> string
(mcp.PromptGet).GetStringArgument(string, string) -> string
(null).GetStringArgument(string, string) -> string
(mcp.MCPRequest).GetIntArgument(string, int) -> int
(mcp.ToolCall).GetIntArgument(string, int) -> int
(mcp.PromptGet).GetIntArgument(string, int) -> int
(null).GetIntArgument(string, int) -> int
(mcp.MCPRequest).GetFloatArgument(string, double) -> double
(mcp.ToolCall).GetFloatArgument(string, double) -> double
(mcp.PromptGet).GetFloatArgument(string, double) -> double
(null).GetFloatArgument(string, double) -> double
(mcp.MCPRequest).GetBoolArgument(string, bool) -> bool
(mcp.ToolCall).GetBoolArgument(string, bool) -> bool
(mcp.PromptGet).GetBoolArgument(string, bool) -> bool
(null).GetBoolArgument(string, bool) -> bool
(mcp.MCPRequest).GetStringSliceArgument(string, list(string)) -> list(string)
(mcp.ToolCall).GetStringSliceArgument(string, list(string)) -> list(string)
(mcp.PromptGet).GetStringSliceArgument(string, list(string)) -> list(string)
(null).GetStringSliceArgument(string, list(string)) -> list(string)
(mcp.MCPRequest).GetIntSliceArgument(string, list(int)) -> list(int)
(mcp.ToolCall).GetIntSliceArgument(string, list(int)) -> list(int)
(mcp.PromptGet).GetIntSliceArgument(string, list(int)) -> list(int)
(null).GetIntSliceArgument(string, list(int)) -> list(int)
(mcp.MCPRequest).GetFloatSliceArgument(string, list(double)) -> list(double)
(mcp.ToolCall).GetFloatSliceArgument(string, list(double)) -> list(double)
(mcp.PromptGet).GetFloatSliceArgument(string, list(double)) -> list(double)
(null).GetFloatSliceArgument(string, list(double)) -> list(double)
(mcp.MCPRequest).GetBoolSliceArgument(string, list(bool)) -> list(bool)
(mcp.ToolCall).GetBoolSliceArgument(string, list(bool)) -> list(bool)
(mcp.PromptGet).GetBoolSliceArgument(string, list(bool)) -> list(bool)
(null).GetBoolSliceArgument(string, list(bool)) -> list(bool)
";

/// A parsed request's fields.
pub const OBJECTS: &[crate::cel::check::decls::ObjectDecl] = {
    use crate::cel::check::cost::Bound::{Body, BodyJson};
    &[(
        "mcp.MCPRequest",
        &[
            ("Method", "string", Body),
            ("ID", "dyn", BodyJson),
            ("Kind", "string", Body),
            ("Name", "string", Body),
            ("ToolCall", "dyn", BodyJson),
            ("ResourceRead", "dyn", BodyJson),
            ("PromptGet", "dyn", BodyJson),
            ("Initialize", "dyn", BodyJson),
            ("Paginated", "dyn", BodyJson),
            ("SetLogLevel", "dyn", BodyJson),
        ],
    )]
};

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<McpRequest, String> {
        parse_body(s.as_bytes())
    }

    #[test]
    fn tools_call() {
        let r = parse(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"git_push","arguments":{"repo":"a/b","n":3}}}"#,
        )
        .unwrap();
        assert_eq!(r.method(), "tools/call");
        assert_eq!(r.kind(), MessageKind::Request);
        assert_eq!(r.tool_name(), Some("git_push"));
        assert_eq!(
            r.to_json()["ToolCall"]["Arguments"],
            serde_json::json!({"repo": "a/b", "n": 3})
        );
        assert_eq!(r.to_json()["ID"], 7);
        assert_eq!(r.to_json()["Name"], "git_push");
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
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}"#,
                "params.arguments must be an object",
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
    fn notifications_and_responses() {
        let n = parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.kind(), MessageKind::Notification);
        assert_eq!(n.to_json()["ID"], Json::Null);
        let r = parse(r#"{"jsonrpc":"2.0","id":"s-1","result":{"action":"accept"}}"#).unwrap();
        assert_eq!(r.kind(), MessageKind::Response);
        assert_eq!(r.method(), "");
        let e = parse(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}"#).unwrap();
        assert_eq!(e.kind(), MessageKind::Response);
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
        assert_eq!(quoted("f", "x", r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert!(quoted("f", "x", "a\r\nSet-Cookie: x").is_err());
    }
}
