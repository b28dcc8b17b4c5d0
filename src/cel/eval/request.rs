//! `object`, the Envoy `CheckRequest`, in the evaluator's value model: each
//! field is read in place from the decoded message when an expression
//! selects it. Field names are the proto names (`raw_body`,
//! `context_extensions`, ...). An unset message reads as the empty message
//! and an unset scalar as its zero value, so `object.attributes.request.
//! http.path` never fails on a sparse request; `has()` and `.?` follow
//! protobuf presence (unset or zero = absent), as in cel-go.

use super::value::{Bin, Map, Str, Value};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, HeaderMap, HeaderValue,
};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

macro_rules! default_of {
    ($name:ident, $ty:ty) => {
        static $name: LazyLock<$ty> = LazyLock::new(<$ty>::default);
    };
}
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
default_of!(EMPTY_ATTRIBUTES, AttributeContext);
default_of!(EMPTY_PEER, Peer);
default_of!(EMPTY_REQUEST, Request);
default_of!(EMPTY_HTTP, HttpRequest);
default_of!(EMPTY_TLS, TlsSession);
default_of!(EMPTY_METADATA, Metadata);
default_of!(EMPTY_ADDRESS, Address);
default_of!(EMPTY_SOCKET, SocketAddress);
default_of!(EMPTY_HEADER_MAP, HeaderMap);

/// The name of a field of the request's messages, resolved when a policy
/// loads so that reading `object.attributes.request.http.path` compares no
/// text. One name may be a field of several messages (`address`,
/// `protocol`, `headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Address,
    Attributes,
    Body,
    Certificate,
    ContextExtensions,
    Destination,
    FilterMetadata,
    Fragment,
    HeaderMap,
    Headers,
    Host,
    Http,
    Id,
    Ipv4Compat,
    Labels,
    MetadataContext,
    Method,
    NamedPort,
    Path,
    PortValue,
    Principal,
    Protocol,
    Query,
    RawBody,
    Request,
    ResolverName,
    RouteMetadataContext,
    Scheme,
    Service,
    Size,
    Sni,
    SocketAddress,
    Source,
    Time,
    TlsSession,
}

impl Field {
    /// The field called `name`, if any message of the request has one.
    pub fn of(name: &str) -> Option<Field> {
        Some(match name {
            "address" => Field::Address,
            "attributes" => Field::Attributes,
            "body" => Field::Body,
            "certificate" => Field::Certificate,
            "context_extensions" => Field::ContextExtensions,
            "destination" => Field::Destination,
            "filter_metadata" => Field::FilterMetadata,
            "fragment" => Field::Fragment,
            "header_map" => Field::HeaderMap,
            "headers" => Field::Headers,
            "host" => Field::Host,
            "http" => Field::Http,
            "id" => Field::Id,
            "ipv4_compat" => Field::Ipv4Compat,
            "labels" => Field::Labels,
            "metadata_context" => Field::MetadataContext,
            "method" => Field::Method,
            "named_port" => Field::NamedPort,
            "path" => Field::Path,
            "port_value" => Field::PortValue,
            "principal" => Field::Principal,
            "protocol" => Field::Protocol,
            "query" => Field::Query,
            "raw_body" => Field::RawBody,
            "request" => Field::Request,
            "resolver_name" => Field::ResolverName,
            "route_metadata_context" => Field::RouteMetadataContext,
            "scheme" => Field::Scheme,
            "service" => Field::Service,
            "size" => Field::Size,
            "sni" => Field::Sni,
            "socket_address" => Field::SocketAddress,
            "source" => Field::Source,
            "time" => Field::Time,
            "tls_session" => Field::TlsSession,
            _ => return None,
        })
    }
}

/// The value of field `name` of `node`; `None` when the message has no
/// such field (the checker refuses such a name when the policy loads).
pub fn field<'r>(node: Node<'r>, name: &str) -> Option<Value<'r>> {
    field_of(node, Field::of(name)?)
}

/// The value of `field` of `node`, as [`field`] reads it by name.
/// `request.attributes.request.http`, unset messages read as empty: the
/// start of most paths a policy reads, taken in one step.
pub(crate) fn http_of(r: &CheckRequest) -> &HttpRequest {
    r.attributes
        .as_ref()
        .unwrap_or(&EMPTY_ATTRIBUTES)
        .request
        .as_ref()
        .unwrap_or(&EMPTY_REQUEST)
        .http
        .as_ref()
        .unwrap_or(&EMPTY_HTTP)
}

pub fn field_of<'r>(node: Node<'r>, field: Field) -> Option<Value<'r>> {
    fn s(v: &str) -> Value<'_> {
        Value::String(Str::Borrowed(v))
    }
    fn strings(m: &std::collections::HashMap<String, String>) -> Value<'_> {
        Value::Map(Map::Strings(m))
    }
    let n = Value::Node;
    Some(match node {
        Node::CheckRequest(r) => match field {
            Field::Attributes => n(Node::Attributes(
                r.attributes.as_ref().unwrap_or(&EMPTY_ATTRIBUTES),
            )),
            _ => return None,
        },
        Node::Attributes(a) => match field {
            Field::Source => n(Node::Peer(a.source.as_ref().unwrap_or(&EMPTY_PEER))),
            Field::Destination => n(Node::Peer(a.destination.as_ref().unwrap_or(&EMPTY_PEER))),
            Field::Request => n(Node::Request(a.request.as_ref().unwrap_or(&EMPTY_REQUEST))),
            Field::ContextExtensions => strings(&a.context_extensions),
            Field::MetadataContext => n(Node::Metadata(
                a.metadata_context.as_ref().unwrap_or(&EMPTY_METADATA),
            )),
            Field::RouteMetadataContext => n(Node::Metadata(
                a.route_metadata_context.as_ref().unwrap_or(&EMPTY_METADATA),
            )),
            Field::TlsSession => n(Node::Tls(a.tls_session.as_ref().unwrap_or(&EMPTY_TLS))),
            _ => return None,
        },
        Node::Peer(p) => match field {
            Field::Address => n(Node::Address(p.address.as_ref().unwrap_or(&EMPTY_ADDRESS))),
            Field::Service => s(&p.service),
            Field::Labels => strings(&p.labels),
            Field::Principal => s(&p.principal),
            Field::Certificate => s(&p.certificate),
            _ => return None,
        },
        Node::Request(r) => match field {
            Field::Time => {
                let t = r.time.unwrap_or_default();
                Value::Timestamp(
                    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                        .unwrap_or_default(),
                )
            }
            Field::Http => n(Node::Http(r.http.as_ref().unwrap_or(&EMPTY_HTTP))),
            _ => return None,
        },
        Node::Http(h) => match field {
            Field::Id => s(&h.id),
            Field::Method => s(&h.method),
            Field::Headers => match derived_headers(h) {
                Some(m) => Value::Map(Map::HeaderMap(m)),
                None => strings(&h.headers),
            },
            Field::HeaderMap => n(Node::HeaderMap(
                h.header_map.as_ref().unwrap_or(&EMPTY_HEADER_MAP),
            )),
            Field::Path => s(&h.path),
            Field::Host => s(&h.host),
            Field::Scheme => s(&h.scheme),
            Field::Query => s(&h.query),
            Field::Fragment => s(&h.fragment),
            Field::Size => Value::Int(h.size),
            Field::Protocol => s(&h.protocol),
            // `body` and `raw_body` read the same bytes whichever one Envoy
            // filled (`pack_as_bytes`): `body` is a string when they are
            // UTF-8 and `bytes` when not.
            Field::Body if h.body.is_empty() => text_or_bytes(&h.raw_body),
            Field::Body => s(&h.body),
            Field::RawBody if h.raw_body.is_empty() => {
                Value::Bytes(Bin::Borrowed(h.body.as_bytes()))
            }
            Field::RawBody => Value::Bytes(Bin::Borrowed(&h.raw_body)),
            _ => return None,
        },
        Node::Tls(t) => match field {
            Field::Sni => s(&t.sni),
            _ => return None,
        },
        Node::Metadata(m) => match field {
            Field::FilterMetadata => Value::map(
                m.filter_metadata
                    .iter()
                    .map(|(k, v)| {
                        (
                            super::Key::String(Str::Borrowed(k.as_str())),
                            proto_struct(v),
                        )
                    })
                    .collect(),
            ),
            _ => return None,
        },
        Node::Address(a) => match (&a.address, field) {
            (Some(address::Address::SocketAddress(sa)), Field::SocketAddress) => {
                n(Node::Socket(sa))
            }
            (None | Some(_), Field::SocketAddress) => n(Node::Socket(&EMPTY_SOCKET)),
            _ => return None,
        },
        Node::Socket(sa) => match field {
            Field::Address => s(&sa.address),
            Field::PortValue => Value::Uint(match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => u64::from(p),
                _ => 0,
            }),
            Field::NamedPort => s(match &sa.port_specifier {
                Some(PortSpecifier::NamedPort(p)) => p,
                _ => "",
            }),
            Field::Protocol => Value::Int(i64::from(sa.protocol)),
            Field::ResolverName => s(&sa.resolver_name),
            Field::Ipv4Compat => Value::Bool(sa.ipv4_compat),
            _ => return None,
        },
        Node::HeaderMap(hm) => match field {
            Field::Headers => Value::list(
                hm.headers
                    .iter()
                    .map(|h| {
                        let mut m =
                            super::value::OwnedMap::with_capacity_and_hasher(2, Default::default());
                        m.insert(
                            super::Key::String(Str::Borrowed("key")),
                            Value::String(Str::Borrowed(h.key.as_str())),
                        );
                        m.insert(
                            super::Key::String(Str::Borrowed("value")),
                            text_or_bytes(raw_value(h)),
                        );
                        Value::map(m)
                    })
                    .collect(),
            ),
            _ => return None,
        },
    })
}

/// Protobuf presence of field `name`, for `has()` and `.?`; `None` when the
/// message has no such field.
pub fn has(node: Node<'_>, name: &str) -> Option<bool> {
    field(node, name)?;
    Some(node.is_set(name))
}

/// A string when `b` is UTF-8, else bytes: bytes that are not text never
/// pass for a string.
fn text_or_bytes(b: &[u8]) -> Value<'_> {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(Str::Borrowed(s)),
        Err(_) => Value::Bytes(Bin::Borrowed(b)),
    }
}

/// A `google.protobuf.Struct` as a CEL map (numbers are `double`, as in
/// cel-go).
pub fn proto_struct(s: &envoy_types::pb::google::protobuf::Struct) -> Value<'_> {
    Value::map(
        s.fields
            .iter()
            .map(|(k, v)| {
                (
                    super::Key::String(Str::Borrowed(k.as_str())),
                    proto_value(v),
                )
            })
            .collect(),
    )
}

fn proto_value(v: &envoy_types::pb::google::protobuf::Value) -> Value<'_> {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Value::Double(*n),
        Some(Kind::StringValue(s)) => Value::String(Str::Borrowed(s)),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => proto_struct(s),
        Some(Kind::ListValue(l)) => Value::list(l.values.iter().map(proto_value).collect()),
    }
}

/// The lower-case header names of a `header_map`, each once, in order of
/// first appearance.
pub fn header_map_names(m: &HeaderMap) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    m.headers
        .iter()
        .map(|e| e.key.to_ascii_lowercase())
        .filter(|k| seen.insert(k.clone()))
        .collect()
}

/// Header `name` (lower case) of a `header_map`: its values joined with
/// `,`, a string when UTF-8, else bytes. An upper-case name misses, as in
/// `headers`.
pub fn header_map_get<'r>(m: &'r HeaderMap, name: &str) -> Option<Value<'r>> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut found: Option<&'r [u8]> = None;
    let mut joined: Option<Vec<u8>> = None;
    for e in m
        .headers
        .iter()
        .filter(|e| e.key.eq_ignore_ascii_case(name))
    {
        let v = raw_value(e);
        match (&mut joined, found) {
            (Some(j), _) => {
                j.push(b',');
                j.extend_from_slice(v);
            }
            (None, Some(first)) => {
                let mut j = first.to_vec();
                j.push(b',');
                j.extend_from_slice(v);
                joined = Some(j);
            }
            (None, None) => found = Some(v),
        }
    }
    match (joined, found) {
        (Some(j), _) => Some(match String::from_utf8(j) {
            Ok(s) => Value::String(Str::Owned(Arc::from(s))),
            Err(e) => Value::Bytes(Bin::Owned(Arc::from(e.into_bytes()))),
        }),
        (None, Some(v)) => Some(text_or_bytes(v)),
        (None, None) => None,
    }
}

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
        match self {
            Node::CheckRequest(_) => "envoy.service.auth.v3.CheckRequest",
            Node::Attributes(_) => "envoy.service.auth.v3.AttributeContext",
            Node::Peer(_) => "envoy.service.auth.v3.AttributeContext.Peer",
            Node::Request(_) => "envoy.service.auth.v3.AttributeContext.Request",
            Node::Http(_) => "envoy.service.auth.v3.AttributeContext.HttpRequest",
            Node::Tls(_) => "envoy.service.auth.v3.AttributeContext.TLSSession",
            Node::Metadata(_) => "envoy.config.core.v3.Metadata",
            Node::Address(_) => "envoy.config.core.v3.Address",
            Node::Socket(_) => "envoy.config.core.v3.SocketAddress",
            Node::HeaderMap(_) => "envoy.config.core.v3.HeaderMap",
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

/// The bytes of a `header_map` entry: `raw_value` when set (Envoy's
/// `encode_raw_headers`), else `value`.
pub(crate) fn raw_value(h: &HeaderValue) -> &[u8] {
    if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
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
        let m = r.header_map.as_ref().unwrap();
        assert!(matches!(
            header_map_get(m, "x-multi"),
            Some(Value::String(s)) if s.as_str() == "a,b"
        ));
        assert!(matches!(
            header_map_get(m, "x-bin"),
            Some(Value::Bytes(b)) if Bin::as_bytes(&b) == b"\xff"
        ));
        assert!(
            header_map_get(m, "X-Multi").is_none(),
            "keys are lower case"
        );
        assert_eq!(header_map_names(m).len(), 4);
        assert_eq!(has(Node::Http(&r), "headers"), Some(true));
        assert_eq!(
            has(Node::Http(&HttpRequest::default()), "headers"),
            Some(false)
        );
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
        let m = r.header_map.as_ref().unwrap();
        assert_eq!(header_map_names(m).len(), n);
        assert!(header_map_get(m, "x-49999").is_some());
        assert_eq!(request_header_names(&r).len(), n);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
