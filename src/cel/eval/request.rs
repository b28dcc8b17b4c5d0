//! `object`, the Envoy `CheckRequest`, in the evaluator's value model: each
//! field is read in place from the decoded message when an expression
//! selects it. Field names are the proto names (`raw_body`,
//! `context_extensions`, ...). An unset message reads as the empty message
//! and an unset scalar as its zero value, so `object.attributes.request.
//! http.path` never fails on a sparse request; `has()` and `.?` follow
//! protobuf presence (unset or zero = absent), as in cel-go.

use super::value::{Bin, Map, Str, Value};
use crate::cel::view::{derived_headers, raw_value, Node};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier, HeaderMap};
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

/// The value of field `name` of `node`; `None` when the message has no
/// such field (the checker refuses such a name when the policy loads).
pub fn field<'r>(node: Node<'r>, name: &str) -> Option<Value<'r>> {
    fn s(v: &str) -> Value<'_> {
        Value::String(Str::Borrowed(v))
    }
    fn strings(m: &std::collections::HashMap<String, String>) -> Value<'_> {
        Value::Map(Map::Strings(m))
    }
    let n = Value::Node;
    Some(match node {
        Node::CheckRequest(r) => match name {
            "attributes" => n(Node::Attributes(
                r.attributes.as_ref().unwrap_or(&EMPTY_ATTRIBUTES),
            )),
            _ => return None,
        },
        Node::Attributes(a) => match name {
            "source" => n(Node::Peer(a.source.as_ref().unwrap_or(&EMPTY_PEER))),
            "destination" => n(Node::Peer(a.destination.as_ref().unwrap_or(&EMPTY_PEER))),
            "request" => n(Node::Request(a.request.as_ref().unwrap_or(&EMPTY_REQUEST))),
            "context_extensions" => strings(&a.context_extensions),
            "metadata_context" => n(Node::Metadata(
                a.metadata_context.as_ref().unwrap_or(&EMPTY_METADATA),
            )),
            "route_metadata_context" => n(Node::Metadata(
                a.route_metadata_context.as_ref().unwrap_or(&EMPTY_METADATA),
            )),
            "tls_session" => n(Node::Tls(a.tls_session.as_ref().unwrap_or(&EMPTY_TLS))),
            _ => return None,
        },
        Node::Peer(p) => match name {
            "address" => n(Node::Address(p.address.as_ref().unwrap_or(&EMPTY_ADDRESS))),
            "service" => s(&p.service),
            "labels" => strings(&p.labels),
            "principal" => s(&p.principal),
            "certificate" => s(&p.certificate),
            _ => return None,
        },
        Node::Request(r) => match name {
            "time" => {
                let t = r.time.unwrap_or_default();
                Value::Timestamp(
                    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                        .unwrap_or_default(),
                )
            }
            "http" => n(Node::Http(r.http.as_ref().unwrap_or(&EMPTY_HTTP))),
            _ => return None,
        },
        Node::Http(h) => match name {
            "id" => s(&h.id),
            "method" => s(&h.method),
            "headers" => match derived_headers(h) {
                Some(m) => Value::Map(Map::HeaderMap(m)),
                None => strings(&h.headers),
            },
            "header_map" => n(Node::HeaderMap(
                h.header_map.as_ref().unwrap_or(&EMPTY_HEADER_MAP),
            )),
            "path" => s(&h.path),
            "host" => s(&h.host),
            "scheme" => s(&h.scheme),
            "query" => s(&h.query),
            "fragment" => s(&h.fragment),
            "size" => Value::Int(h.size),
            "protocol" => s(&h.protocol),
            // `body` and `raw_body` read the same bytes whichever one Envoy
            // filled (`pack_as_bytes`): `body` is a string when they are
            // UTF-8 and `bytes` when not.
            "body" if h.body.is_empty() => text_or_bytes(&h.raw_body),
            "body" => s(&h.body),
            "raw_body" if h.raw_body.is_empty() => Value::Bytes(Bin::Borrowed(h.body.as_bytes())),
            "raw_body" => Value::Bytes(Bin::Borrowed(&h.raw_body)),
            _ => return None,
        },
        Node::Tls(t) => match name {
            "sni" => s(&t.sni),
            _ => return None,
        },
        Node::Metadata(m) => match name {
            "filter_metadata" => Value::map(
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
        Node::Address(a) => match (&a.address, name) {
            (Some(address::Address::SocketAddress(sa)), "socket_address") => n(Node::Socket(sa)),
            (None | Some(_), "socket_address") => n(Node::Socket(&EMPTY_SOCKET)),
            _ => return None,
        },
        Node::Socket(sa) => match name {
            "address" => s(&sa.address),
            "port_value" => Value::Uint(match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => u64::from(p),
                _ => 0,
            }),
            "named_port" => s(match &sa.port_specifier {
                Some(PortSpecifier::NamedPort(p)) => p,
                _ => "",
            }),
            "protocol" => Value::Int(i64::from(sa.protocol)),
            "resolver_name" => s(&sa.resolver_name),
            "ipv4_compat" => Value::Bool(sa.ipv4_compat),
            _ => return None,
        },
        Node::HeaderMap(hm) => match name {
            "headers" => Value::list(
                hm.headers
                    .iter()
                    .map(|h| {
                        let mut m = super::value::OwnedMap::with_capacity(2);
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
