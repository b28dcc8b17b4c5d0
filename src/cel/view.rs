//! `object`: the Envoy `CheckRequest` as CEL sees it, resolved on demand.
//!
//! Nothing is copied up front: each field access borrows straight from the
//! decoded protobuf message (strings, header maps, bytes). Field names are
//! the proto names (`raw_body`, `context_extensions`, `tls_session`, ...),
//! as in cel-go's protobuf support. An unset message field reads as the
//! empty message and an unset scalar as its zero value, so
//! `object.attributes.request.http.path` never fails on a sparse request,
//! while `has()` and `.?` follow protobuf presence (unset or zero = absent),
//! as in cel-go. An unknown field name is an error.

use crate::cel::convert::proto_struct_to_val;
use cel::common::traits::{Container, Indexer, Iterable, Iterator as CelIterator, Sizer};
use cel::common::types::{
    CelBool, CelBytes, CelInt, CelMap, CelMapKey, CelString, CelTimestamp, CelUInt, Type, MAP_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::ExecutionError;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, HeaderMap, HeaderValue, Metadata,
    SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

macro_rules! default_of {
    ($name:ident, $ty:ty) => {
        static $name: LazyLock<$ty> = LazyLock::new(<$ty>::default);
    };
}
default_of!(EMPTY_ATTRIBUTES, AttributeContext);
default_of!(EMPTY_PEER, Peer);
default_of!(EMPTY_REQUEST, Request);
default_of!(EMPTY_HTTP, HttpRequest);
default_of!(EMPTY_TLS, TlsSession);
default_of!(EMPTY_METADATA, Metadata);
default_of!(EMPTY_ADDRESS, Address);
default_of!(EMPTY_SOCKET, SocketAddress);
default_of!(EMPTY_HEADER_MAP, HeaderMap);

static CHECK_REQUEST_T: Type = Type::new_struct_type("envoy.service.auth.v3.CheckRequest");
static ATTRIBUTES_T: Type = Type::new_struct_type("envoy.service.auth.v3.AttributeContext");
static PEER_T: Type = Type::new_struct_type("envoy.service.auth.v3.AttributeContext.Peer");
static REQUEST_T: Type = Type::new_struct_type("envoy.service.auth.v3.AttributeContext.Request");
static HTTP_T: Type = Type::new_struct_type("envoy.service.auth.v3.AttributeContext.HttpRequest");
static TLS_T: Type = Type::new_struct_type("envoy.service.auth.v3.AttributeContext.TLSSession");
static METADATA_T: Type = Type::new_struct_type("envoy.config.core.v3.Metadata");
static ADDRESS_T: Type = Type::new_struct_type("envoy.config.core.v3.Address");
static SOCKET_T: Type = Type::new_struct_type("envoy.config.core.v3.SocketAddress");
static HEADER_MAP_T: Type = Type::new_struct_type("envoy.config.core.v3.HeaderMap");

/// Fields of the vendored protos' request messages that this view does not
/// read, by message: the type checker drops them, so that a policy naming
/// one is refused when it loads rather than failing on every request.
pub const UNREAD_FIELDS: &[(&str, &str)] = &[
    ("envoy.config.core.v3.Address", "pipe"),
    ("envoy.config.core.v3.Address", "envoy_internal_address"),
    (
        "envoy.config.core.v3.SocketAddress",
        "network_namespace_filepath",
    ),
    ("envoy.config.core.v3.Metadata", "typed_filter_metadata"),
    // A `header_map` entry is `{key, value}`, `value` read from `raw_value`
    // when that is set.
    ("envoy.config.core.v3.HeaderValue", "raw_value"),
];

/// One message of the request tree, borrowed from the decoded `CheckRequest`.
#[derive(Debug, Clone, Copy)]
pub enum Node<'r> {
    CheckRequest(&'r CheckRequest),
    Attributes(&'r AttributeContext),
    Peer(&'r Peer),
    Request(&'r Request),
    Http(&'r HttpRequest),
    Tls(&'r TlsSession),
    Metadata(&'r Metadata),
    Address(&'r Address),
    Socket(&'r SocketAddress),
    HeaderMap(&'r HeaderMap),
}

/// A field's value: another message of the tree, or a leaf value.
pub enum Field<'r> {
    Node(Node<'r>),
    Val(Box<dyn Val + 'r>),
}

impl<'r> Field<'r> {
    pub fn into_val(self) -> Box<dyn Val + 'r> {
        match self {
            Field::Node(n) => Box::new(n),
            Field::Val(v) => v,
        }
    }
}

impl<'r> Node<'r> {
    /// Resolves a dotted path below this message (`attributes.request.http.path`)
    /// in one go, without the interpreter's per-segment name resolution.
    /// `None` if any segment is not a field, so the caller can fall back to
    /// the general path and report the error there.
    pub fn path(self, path: &str) -> Option<Box<dyn Val + 'r>> {
        let mut node = self;
        let mut segments = path.split('.').peekable();
        while let Some(seg) = segments.next() {
            match node.field(seg).ok()? {
                Field::Node(n) if segments.peek().is_some() => node = n,
                f if segments.peek().is_none() => return Some(f.into_val()),
                Field::Val(_) | Field::Node(_) => return None,
            }
        }
        None
    }

    pub fn field(&self, name: &str) -> Result<Field<'r>, ExecutionError> {
        fn s(v: &str) -> Field<'_> {
            Field::Val(Box::new(CelString::from(v)))
        }
        fn node(n: Node<'_>) -> Field<'_> {
            Field::Node(n)
        }
        fn map(m: &HashMap<String, String>) -> Field<'_> {
            Field::Val(Box::new(StrMap::new(m)))
        }
        let missing = || Err(ExecutionError::no_such_key(name));
        Ok(match *self {
            Node::CheckRequest(r) => match name {
                "attributes" => node(Node::Attributes(
                    r.attributes.as_ref().unwrap_or(&EMPTY_ATTRIBUTES),
                )),
                _ => return missing(),
            },
            Node::Attributes(a) => match name {
                "source" => node(Node::Peer(a.source.as_ref().unwrap_or(&EMPTY_PEER))),
                "destination" => node(Node::Peer(a.destination.as_ref().unwrap_or(&EMPTY_PEER))),
                "request" => node(Node::Request(a.request.as_ref().unwrap_or(&EMPTY_REQUEST))),
                "context_extensions" => map(&a.context_extensions),
                "metadata_context" => node(Node::Metadata(
                    a.metadata_context.as_ref().unwrap_or(&EMPTY_METADATA),
                )),
                "route_metadata_context" => node(Node::Metadata(
                    a.route_metadata_context.as_ref().unwrap_or(&EMPTY_METADATA),
                )),
                "tls_session" => node(Node::Tls(a.tls_session.as_ref().unwrap_or(&EMPTY_TLS))),
                _ => return missing(),
            },
            Node::Peer(p) => match name {
                "address" => node(Node::Address(p.address.as_ref().unwrap_or(&EMPTY_ADDRESS))),
                "service" => s(&p.service),
                "labels" => map(&p.labels),
                "principal" => s(&p.principal),
                "certificate" => s(&p.certificate),
                _ => return missing(),
            },
            Node::Request(r) => match name {
                "time" => {
                    let t = r.time.unwrap_or_default();
                    let dt = chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                        .unwrap_or_default()
                        .fixed_offset();
                    Field::Val(Box::new(CelTimestamp::from(dt)))
                }
                "http" => node(Node::Http(r.http.as_ref().unwrap_or(&EMPTY_HTTP))),
                _ => return missing(),
            },
            Node::Http(h) => match name {
                "id" => s(&h.id),
                "method" => s(&h.method),
                "headers" => match derived_headers(h) {
                    Some(m) => Field::Val(Box::new(HeaderMapView::new(m))),
                    None => map(&h.headers),
                },
                "header_map" => node(Node::HeaderMap(
                    h.header_map.as_ref().unwrap_or(&EMPTY_HEADER_MAP),
                )),
                "path" => s(&h.path),
                "host" => s(&h.host),
                "scheme" => s(&h.scheme),
                "query" => s(&h.query),
                "fragment" => s(&h.fragment),
                "size" => Field::Val(Box::new(CelInt::from(h.size))),
                "protocol" => s(&h.protocol),
                // `body` and `raw_body` read the same bytes whichever one
                // Envoy filled (`pack_as_bytes`): `body` is a string when
                // they are UTF-8 and `bytes` when not.
                "body" if h.body.is_empty() => {
                    Field::Val(text_or_bytes(Cow::Borrowed(&h.raw_body)))
                }
                "body" => s(&h.body),
                "raw_body" if h.raw_body.is_empty() => {
                    Field::Val(Box::new(CelBytes::from(h.body.as_bytes())))
                }
                "raw_body" => Field::Val(Box::new(CelBytes::from(h.raw_body.as_slice()))),
                _ => return missing(),
            },
            Node::Tls(t) => match name {
                "sni" => s(&t.sni),
                _ => return missing(),
            },
            Node::Metadata(m) => match name {
                "filter_metadata" => {
                    let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = m
                        .filter_metadata
                        .iter()
                        .map(|(k, v)| (CelMapKey::from(k.clone()), proto_struct_to_val(v)))
                        .collect();
                    Field::Val(Box::new(CelMap::from(map)))
                }
                _ => return missing(),
            },
            Node::Address(a) => match (&a.address, name) {
                (Some(address::Address::SocketAddress(sa)), "socket_address") => {
                    node(Node::Socket(sa))
                }
                (None | Some(_), "socket_address") => node(Node::Socket(&EMPTY_SOCKET)),
                _ => return missing(),
            },
            Node::Socket(sa) => match name {
                "address" => s(&sa.address),
                "port_value" => Field::Val(Box::new(CelUInt::from(match sa.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => u64::from(p),
                    _ => 0,
                }))),
                "named_port" => s(match &sa.port_specifier {
                    Some(PortSpecifier::NamedPort(p)) => p,
                    _ => "",
                }),
                "protocol" => Field::Val(Box::new(CelInt::from(i64::from(sa.protocol)))),
                "resolver_name" => s(&sa.resolver_name),
                "ipv4_compat" => Field::Val(Box::new(CelBool::from(sa.ipv4_compat))),
                _ => return missing(),
            },
            Node::HeaderMap(hm) => match name {
                "headers" => {
                    let list: Vec<Box<dyn Val>> = hm
                        .headers
                        .iter()
                        .map(|h| {
                            let mut m: HashMap<CelMapKey<'_>, Box<dyn Val>> = HashMap::new();
                            m.insert(
                                CelMapKey::from("key"),
                                Box::new(CelString::from(h.key.as_str())),
                            );
                            m.insert(
                                CelMapKey::from("value"),
                                text_or_bytes(Cow::Borrowed(raw_value(h))),
                            );
                            Box::new(CelMap::from(m)) as Box<dyn Val>
                        })
                        .collect();
                    Field::Val(Box::new(cel::common::types::CelList::from(list)))
                }
                _ => return missing(),
            },
        })
    }

    /// The request message behind a value, if it is one.
    pub fn of<'a>(v: &'a (dyn Val + 'r)) -> Option<&'a Node<'r>> {
        node_of(v)
    }
}

fn node_of<'a, 'x>(v: &'a (dyn Val + 'x)) -> Option<&'a Node<'x>> {
    {
        let t: *const Type = v.get_type();
        let ours = [
            &CHECK_REQUEST_T,
            &ATTRIBUTES_T,
            &PEER_T,
            &REQUEST_T,
            &HTTP_T,
            &TLS_T,
            &METADATA_T,
            &ADDRESS_T,
            &SOCKET_T,
            &HEADER_MAP_T,
        ];
        if ours.iter().any(|o| std::ptr::eq(*o, t)) {
            // SAFETY: these type statics are private to this module and
            // returned by `Node::get_type` alone, so a value reporting one of
            // them is a `Node`; it borrows the request for the same 'r.
            Some(unsafe { &*(v as *const (dyn Val + 'x) as *const Node<'x>) })
        } else {
            None
        }
    }
}

impl<'r> Node<'r> {
    /// Protobuf presence, as cel-go reports it for `has()` and `.?`: a message
    /// field is present when set, a scalar when not its zero value, a map or
    /// list when not empty. Unknown names are absent.
    pub(crate) fn is_set(&self, name: &str) -> bool {
        match *self {
            Node::CheckRequest(r) => name == "attributes" && r.attributes.is_some(),
            Node::Attributes(a) => match name {
                "source" => a.source.is_some(),
                "destination" => a.destination.is_some(),
                "request" => a.request.is_some(),
                "context_extensions" => !a.context_extensions.is_empty(),
                "metadata_context" => a.metadata_context.is_some(),
                "route_metadata_context" => a.route_metadata_context.is_some(),
                "tls_session" => a.tls_session.is_some(),
                _ => false,
            },
            Node::Peer(p) => match name {
                "address" => p.address.is_some(),
                "service" => !p.service.is_empty(),
                "labels" => !p.labels.is_empty(),
                "principal" => !p.principal.is_empty(),
                "certificate" => !p.certificate.is_empty(),
                _ => false,
            },
            Node::Request(r) => match name {
                "time" => r.time.is_some(),
                "http" => r.http.is_some(),
                _ => false,
            },
            Node::Http(h) => match name {
                "id" => !h.id.is_empty(),
                "method" => !h.method.is_empty(),
                "headers" => !h.headers.is_empty() || derived_headers(h).is_some(),
                "header_map" => h.header_map.is_some(),
                "path" => !h.path.is_empty(),
                "host" => !h.host.is_empty(),
                "scheme" => !h.scheme.is_empty(),
                "query" => !h.query.is_empty(),
                "fragment" => !h.fragment.is_empty(),
                "size" => h.size != 0,
                "protocol" => !h.protocol.is_empty(),
                "body" | "raw_body" => !h.body.is_empty() || !h.raw_body.is_empty(),
                _ => false,
            },
            Node::Tls(t) => name == "sni" && !t.sni.is_empty(),
            Node::Metadata(m) => name == "filter_metadata" && !m.filter_metadata.is_empty(),
            Node::Address(a) => {
                name == "socket_address"
                    && matches!(a.address, Some(address::Address::SocketAddress(_)))
            }
            Node::Socket(sa) => match name {
                "address" => !sa.address.is_empty(),
                "port_value" => matches!(sa.port_specifier, Some(PortSpecifier::PortValue(_))),
                "named_port" => matches!(sa.port_specifier, Some(PortSpecifier::NamedPort(_))),
                "protocol" => sa.protocol != 0,
                "resolver_name" => !sa.resolver_name.is_empty(),
                "ipv4_compat" => sa.ipv4_compat,
                _ => false,
            },
            Node::HeaderMap(hm) => name == "headers" && !hm.headers.is_empty(),
        }
    }

    /// The message's full name, e.g. `envoy.service.auth.v3.AttributeContext`.
    pub fn type_name(&self) -> &'static str {
        self.cel_type_of().name()
    }

    fn cel_type_of(&self) -> &'static Type {
        match self {
            Node::CheckRequest(_) => &CHECK_REQUEST_T,
            Node::Attributes(_) => &ATTRIBUTES_T,
            Node::Peer(_) => &PEER_T,
            Node::Request(_) => &REQUEST_T,
            Node::Http(_) => &HTTP_T,
            Node::Tls(_) => &TLS_T,
            Node::Metadata(_) => &METADATA_T,
            Node::Address(_) => &ADDRESS_T,
            Node::Socket(_) => &SOCKET_T,
            Node::HeaderMap(_) => &HEADER_MAP_T,
        }
    }

    pub(crate) fn same(&self, other: &Node<'_>) -> bool {
        use std::ptr::eq;
        match (self, other) {
            (Node::CheckRequest(a), Node::CheckRequest(b)) => eq(*a, *b) || a == b,
            (Node::Attributes(a), Node::Attributes(b)) => eq(*a, *b) || a == b,
            (Node::Peer(a), Node::Peer(b)) => a == b,
            (Node::Request(a), Node::Request(b)) => a == b,
            (Node::Http(a), Node::Http(b)) => eq(*a, *b) || a == b,
            (Node::Tls(a), Node::Tls(b)) => a == b,
            (Node::Metadata(a), Node::Metadata(b)) => a == b,
            (Node::Address(a), Node::Address(b)) => a == b,
            (Node::Socket(a), Node::Socket(b)) => a == b,
            (Node::HeaderMap(a), Node::HeaderMap(b)) => a == b,
            _ => false,
        }
    }
}

impl<'r> Indexer for Node<'r> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        // Field selection through the indexer is what `has()`, `.?` and
        // selections off computed values use: an unset field is absent
        // there, as in cel-go. Plain `object.a.b.c` paths are answered by
        // `Node::path` with zero values instead (see `engine::Activation`).
        let name = super::string_key(idx)?;
        if !self.is_set(name) {
            return Err(ExecutionError::no_such_key(name));
        }
        let v: Box<dyn Val + 'r> = self.field(name)?.into_val();
        Ok(CowVal::Owned(v))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = super::string_key(idx)?;
        if !self.is_set(name) {
            return Err(ExecutionError::no_such_key(name));
        }
        Ok(self.field(name)?.into_val())
    }
}

impl<'r> Val for Node<'r> {
    fn get_type(&self) -> &Type {
        self.cel_type_of()
    }
    fn cel_type() -> &'static Type {
        &CHECK_REQUEST_T
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn equals(&self, other: &dyn Val) -> bool {
        // Another view of an equal message of the same kind.
        node_of(other).is_some_and(|o| self.same(o))
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(*self)
    }
}

/// A `map<string, string>` of the request (headers, labels, context
/// extensions), borrowed. Keys are materialised only if the map is iterated.
#[derive(Debug)]
pub struct StrMap<'r> {
    map: &'r HashMap<String, String>,
    keys: OnceLock<Vec<CelString<'r>>>,
}

impl<'r> StrMap<'r> {
    pub fn new(map: &'r HashMap<String, String>) -> Self {
        StrMap {
            map,
            keys: OnceLock::new(),
        }
    }

    fn keys(&self) -> &[CelString<'r>] {
        self.keys.get_or_init(|| {
            self.map
                .keys()
                .map(|k| CelString::from(k.as_str()))
                .collect()
        })
    }
}

impl<'r> Indexer for StrMap<'r> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let key = super::string_key(idx)?;
        match self.map.get(key) {
            Some(v) => {
                let v: Box<dyn Val + 'r> = Box::new(CelString::from(v.as_str()));
                Ok(CowVal::Owned(v))
            }
            None => Err(ExecutionError::no_such_key(key)),
        }
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let key = super::string_key(idx)?;
        match self.map.get(key) {
            Some(v) => Ok(Box::new(CelString::from(v.as_str()))),
            None => Err(ExecutionError::no_such_key(key)),
        }
    }
}

impl Container for StrMap<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(value
            .downcast_ref::<CelString>()
            .is_some_and(|k| self.map.contains_key(k.inner())))
    }
}

impl Sizer for StrMap<'_> {
    fn size(&self) -> CelInt {
        CelInt::from(self.map.len() as i64)
    }
}

struct KeyIter<'b, 'r>(std::slice::Iter<'b, CelString<'r>>);

impl<'b, 'r: 'v, 'v> CelIterator<'b, 'v> for KeyIter<'b, 'r> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.0.next().map(|k| k as &(dyn Val + 'v))
    }
}

impl<'r> Iterable for StrMap<'r> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn CelIterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(KeyIter(self.keys().iter()))
    }
}

impl<'r> Val for StrMap<'r> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }
    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }
    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }
    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn equals(&self, other: &dyn Val) -> bool {
        // Equal to any map with the same string entries.
        let (Some(size), Some(idx)) = (other.as_sizer(), other.as_indexer()) else {
            return false;
        };
        if other.get_type().kind() != cel::common::types::Kind::Map
            || *size.size().inner() != self.map.len() as i64
        {
            return false;
        }
        self.map.iter().all(|(k, v)| {
            idx.get(&CelString::from(k.as_str())).is_ok_and(|o| {
                o.downcast_ref::<CelString>()
                    .is_some_and(|o| o.inner() == v)
            })
        })
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(StrMap::new(self.map))
    }
}

/// The bytes of a `header_map` entry: `raw_value` when set (Envoy's
/// `encode_raw_headers`), else `value`.
pub(crate) fn raw_value(h: &HeaderValue) -> &[u8] {
    if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    }
}

/// A CEL string when `b` is UTF-8, else CEL `bytes`: bytes that are not text
/// never pass for a string (comparing them with one, or calling a string
/// function on them, is a type error, so `failurePolicy: Fail` denies).
fn text_or_bytes(b: Cow<'_, [u8]>) -> Box<dyn Val + '_> {
    match b {
        Cow::Borrowed(b) => match std::str::from_utf8(b) {
            Ok(s) => Box::new(CelString::from(s)),
            Err(_) => Box::new(CelBytes::from(b)),
        },
        Cow::Owned(b) => match String::from_utf8(b) {
            Ok(s) => Box::new(CelString::from(s)),
            Err(e) => Box::new(CelBytes::from(e.into_bytes())),
        },
    }
}

/// The `header_map` that `headers` is read from: when the request carries
/// its headers there (Envoy's `encode_raw_headers: true`) and `headers` is
/// empty.
pub(crate) fn derived_headers(h: &HttpRequest) -> Option<&HeaderMap> {
    if !h.headers.is_empty() {
        return None;
    }
    h.header_map.as_ref().filter(|m| !m.headers.is_empty())
}

/// The value of header `name` (lower case) as `headers` has it, in either
/// encoding: from `headers`, or from `header_map` (names matched without
/// regard to case; repeated names joined with ",", as Envoy joins them in
/// `headers`). Bytes, since a raw value need not be UTF-8.
pub fn request_header<'r>(h: &'r HttpRequest, name: &str) -> Option<Cow<'r, [u8]>> {
    match derived_headers(h) {
        None => h.headers.get(name).map(|v| Cow::Borrowed(v.as_bytes())),
        Some(m) => joined(m, name),
    }
}

/// The header names of the request, in either encoding (lower case).
pub fn request_header_names(h: &HttpRequest) -> Vec<&str> {
    match derived_headers(h) {
        None => h.headers.keys().map(String::as_str).collect(),
        Some(m) => {
            let mut seen = std::collections::HashSet::new();
            m.headers
                .iter()
                .filter(|e| seen.insert(e.key.to_ascii_lowercase()))
                .map(|e| e.key.as_str())
                .collect()
        }
    }
}

fn joined<'r>(m: &'r HeaderMap, name: &str) -> Option<Cow<'r, [u8]>> {
    let mut out: Option<Cow<'r, [u8]>> = None;
    for e in m
        .headers
        .iter()
        .filter(|e| e.key.eq_ignore_ascii_case(name))
    {
        let v = raw_value(e);
        out = Some(match out {
            None => Cow::Borrowed(v),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b',');
                joined.extend_from_slice(v);
                Cow::Owned(joined)
            }
        });
    }
    out
}

/// `headers` read from a `header_map`: a `map<string, string>` (with `bytes`
/// values where a raw value is not UTF-8), keyed by lower-case name, each
/// repeated name once with its values joined by ",". Looked up in place;
/// keys are materialised only if the map is iterated.
#[derive(Debug)]
pub struct HeaderMapView<'r> {
    map: &'r HeaderMap,
    keys: OnceLock<Vec<CelString<'static>>>,
}

impl<'r> HeaderMapView<'r> {
    fn new(map: &'r HeaderMap) -> Self {
        HeaderMapView {
            map,
            keys: OnceLock::new(),
        }
    }

    fn keys(&self) -> &[CelString<'static>] {
        self.keys.get_or_init(|| {
            // In order of first appearance; a set keeps a long list linear.
            let mut seen = std::collections::HashSet::new();
            self.map
                .headers
                .iter()
                .map(|e| e.key.to_ascii_lowercase())
                .filter(|k| seen.insert(k.clone()))
                .map(CelString::from)
                .collect()
        })
    }

    fn lookup(&self, name: &str) -> Result<Box<dyn Val + 'r>, ExecutionError> {
        // Keys are lower case, as in `headers`: an upper-case lookup misses.
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ExecutionError::no_such_key(name));
        }
        joined(self.map, name)
            .map(text_or_bytes)
            .ok_or_else(|| ExecutionError::no_such_key(name))
    }
}

impl<'r> Indexer for HeaderMapView<'r> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let v: Box<dyn Val + 'r> = self.lookup(super::string_key(idx)?)?;
        Ok(CowVal::Owned(v))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.lookup(super::string_key(idx)?)
    }
}

impl Container for HeaderMapView<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(value
            .downcast_ref::<CelString>()
            .is_some_and(|k| self.keys().iter().any(|o| o.inner() == k.inner())))
    }
}

impl Sizer for HeaderMapView<'_> {
    fn size(&self) -> CelInt {
        CelInt::from(self.keys().len() as i64)
    }
}

impl<'r> Iterable for HeaderMapView<'r> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn CelIterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(KeyIter(self.keys().iter()))
    }
}

impl<'r> Val for HeaderMapView<'r> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }
    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }
    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }
    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn equals(&self, other: &dyn Val) -> bool {
        // Equal to any map with the same entries.
        let (Some(size), Some(idx)) = (other.as_sizer(), other.as_indexer()) else {
            return false;
        };
        if other.get_type().kind() != cel::common::types::Kind::Map
            || *size.size().inner() != self.keys().len() as i64
        {
            return false;
        }
        self.keys().iter().all(|k| {
            let (Ok(mine), Ok(theirs)) = (self.lookup(k.inner()), idx.get(k)) else {
                return false;
            };
            mine.equals(theirs.as_ref())
        })
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(HeaderMapView::new(self.map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(key: &str, value: &str, raw: &[u8]) -> HeaderValue {
        HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: raw.to_vec(),
        }
    }

    fn raw_request() -> HttpRequest {
        HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![
                    hv("traceparent", "", b"00-abc-01"),
                    hv("X-Multi", "a", b""),
                    hv("x-multi", "", b"b"),
                    hv("x-bin", "", b"\xff"),
                    hv("x-both", "ignored", b"raw"),
                ],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn request_header_reads_either_encoding() {
        let r = raw_request();
        let get = |n| request_header(&r, n).map(|v| v.into_owned());
        assert_eq!(get("traceparent").as_deref(), Some(&b"00-abc-01"[..]));
        assert_eq!(get("x-multi").as_deref(), Some(&b"a,b"[..]));
        assert_eq!(get("x-bin").as_deref(), Some(&b"\xff"[..]));
        assert_eq!(
            get("x-both").as_deref(),
            Some(&b"raw"[..]),
            "raw_value wins"
        );
        assert_eq!(get("x-none"), None);
        assert_eq!(
            request_header_names(&r),
            ["traceparent", "X-Multi", "x-bin", "x-both"]
        );
        // With `headers` set, `headers` is what is read.
        let mut r = r;
        r.headers.insert("x-multi".into(), "plain".into());
        assert_eq!(
            request_header(&r, "x-multi").as_deref(),
            Some(&b"plain"[..])
        );
        assert_eq!(request_header(&r, "traceparent"), None);
        assert_eq!(request_header_names(&r), ["x-multi"]);
    }

    #[test]
    fn headers_from_header_map_are_strings_or_bytes() {
        let r = raw_request();
        let Field::Val(v) = Node::Http(&r).field("headers").unwrap() else {
            panic!("a value")
        };
        let idx = v.as_indexer().unwrap();
        let multi = idx.get(&CelString::from("x-multi")).unwrap();
        assert_eq!(
            multi.downcast_ref::<CelString>().map(|s| s.inner()),
            Some("a,b")
        );
        let bin = idx.get(&CelString::from("x-bin")).unwrap();
        assert_eq!(
            bin.downcast_ref::<CelBytes>().map(|b| b.inner()),
            Some(&b"\xff"[..])
        );
        assert!(
            idx.get(&CelString::from("X-Multi")).is_err(),
            "keys are lower case"
        );
        assert_eq!(*v.as_sizer().unwrap().size().inner(), 4);
        assert!(Node::Http(&r).is_set("headers"));
        assert!(!Node::Http(&HttpRequest::default()).is_set("headers"));
    }

    #[test]
    fn a_huge_header_map_stays_linear() {
        // Quadratic work would take minutes here.
        let n = 50_000;
        let r = HttpRequest {
            header_map: Some(HeaderMap {
                headers: (0..n).map(|i| hv(&format!("x-{i}"), "v", b"")).collect(),
            }),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let view = HeaderMapView::new(r.header_map.as_ref().unwrap());
        assert_eq!(*view.size().inner(), n as i64);
        assert!(view.contains(&CelString::from("x-49999")).unwrap());
        assert_eq!(request_header_names(&r).len(), n);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
