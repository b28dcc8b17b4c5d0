//! Reading a `Check` call off the wire: the gRPC frame (bounded by
//! `--max-request-bytes`) and a lenient protobuf decode of the
//! `CheckRequest`.
//!
//! Lenient means: bytes that only a client's own request can carry (header
//! values, the body) are read as bytes, so a value that is not UTF-8 does not
//! reject the whole message. Such a value is then carried where the
//! `CheckRequest` has room for raw bytes, and policies see it as a CEL
//! `bytes` value (see `cel::eval::request`):
//!
//! - a `headers` map with a non-UTF-8 value becomes a `header_map` (all its
//!   entries, the bad ones as `raw_value`), as Envoy's `encode_raw_headers`
//!   would have sent it;
//! - a `header_map` entry whose `value` is not UTF-8 keeps it as `raw_value`;
//! - a `body` that is not UTF-8 moves to `raw_body`.
//!
//! Every other string field (path, method, host, header names, labels,
//! metadata, ...) must be UTF-8, as protobuf requires: otherwise the request
//! cannot be read, and the caller answers with the failure denial.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::Timestamp;
use prost::Message as _;
use std::collections::HashMap;
use tonic::codegen::Bytes;

/// 1 MiB: room for the request headers (Envoy's own limit is 60 KiB by
/// default) and every other attribute, above the body.
pub const HEADROOM_BYTES: usize = 1 << 20;

/// The default `--max-request-bytes`: `--mcp-max-body-bytes` plus
/// [`HEADROOM_BYTES`].
pub fn default_max_request_bytes(mcp_max_body_bytes: usize) -> usize {
    mcp_max_body_bytes.saturating_add(HEADROOM_BYTES)
}

/// Why a `Check` call could not be read. The text names the problem only,
/// never request data.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("the request is {size} bytes, over --max-request-bytes ({limit})")]
    TooLarge { size: u64, limit: usize },
    #[error("not a gRPC message: {0}")]
    Framing(&'static str),
    #[error("compressed gRPC messages are not accepted")]
    Compressed,
    #[error("the request body could not be received")]
    Transport,
    #[error("the request did not arrive in time")]
    Slow,
    #[error("not a valid CheckRequest: {0}")]
    Protobuf(prost::DecodeError),
    #[error("not a valid CheckRequest: {0}")]
    Ambiguous(&'static str),
}

impl Unreadable {
    /// A short, fixed name for logs, spans and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Unreadable::TooLarge { .. } => "too large",
            Unreadable::Framing(_) | Unreadable::Compressed => "bad framing",
            Unreadable::Transport => "transport",
            Unreadable::Slow => "slow",
            Unreadable::Protobuf(_) | Unreadable::Ambiguous(_) => "bad protobuf",
        }
    }
}

/// gRPC's length-prefixed message header: a compression flag and a 4-byte
/// big-endian length.
const PREFIX: usize = 5;

/// Reads the one message of a unary call from `body`, holding at most
/// `limit` bytes of it (plus one HTTP/2 frame): a message that declares
/// more, or a body that runs past it, is refused at once and the rest is
/// never read.
pub async fn read_message<B>(body: B, limit: usize) -> Result<Bytes, Unreadable>
where
    B: tonic::codegen::Body<Data = Bytes> + Unpin,
{
    let mut body = body;
    let mut buf: Vec<u8> = Vec::new();
    let mut seen: u64 = 0;
    let cap = limit.saturating_add(PREFIX) as u64;
    let mut declared: Option<usize> = None;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(Unreadable::Transport),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers: nothing to read
            },
        };
        seen += data.len() as u64;
        if seen > cap && declared.is_some() {
            return Err(Unreadable::TooLarge { size: seen, limit });
        }
        if declared.is_none() {
            // Only the prefix is needed before the length is known.
            let want = PREFIX - buf.len();
            buf.extend_from_slice(&data[..want.min(data.len())]);
            if buf.len() < PREFIX {
                continue;
            }
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > limit {
                return Err(Unreadable::TooLarge {
                    size: len as u64,
                    limit,
                });
            }
            if seen > cap {
                return Err(Unreadable::TooLarge { size: seen, limit });
            }
            declared = Some(len);
            buf.reserve(len);
            buf.extend_from_slice(&data[want.min(data.len())..]);
            continue;
        }
        buf.extend_from_slice(&data);
    }
    let Some(len) = declared else {
        return Err(Unreadable::Framing("shorter than a gRPC message header"));
    };
    match buf[0] {
        0 => {}
        1 => return Err(Unreadable::Compressed),
        _ => return Err(Unreadable::Framing("unknown compression flag")),
    }
    let got = buf.len() - PREFIX;
    if got < len {
        return Err(Unreadable::Framing("the message is cut short"));
    }
    if got > len {
        return Err(Unreadable::Framing("more than one message in a unary call"));
    }
    Ok(Bytes::from(buf).slice(PREFIX..))
}

/// Decodes a `CheckRequest`, reading header values and the body as bytes
/// (see the module documentation).
pub fn decode_check_request(bytes: &[u8]) -> Result<CheckRequest, Unreadable> {
    let wire = WireCheckRequest::decode(bytes).map_err(Unreadable::Protobuf)?;
    Ok(CheckRequest {
        attributes: wire
            .attributes
            .map(WireAttributes::into_proto)
            .transpose()?,
    })
}

// The path from `CheckRequest` down to the fields that may carry a client's
// bytes, mirrored with those fields as `bytes`; everything else is decoded by
// the Envoy types themselves. Every field of the mirrored messages is listed,
// so nothing is dropped (the round-trip test in this module fails otherwise).

#[derive(Clone, PartialEq, prost::Message)]
struct WireCheckRequest {
    #[prost(message, optional, tag = "1")]
    attributes: Option<WireAttributes>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireAttributes {
    #[prost(message, optional, tag = "1")]
    source: Option<Peer>,
    #[prost(message, optional, tag = "2")]
    destination: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    request: Option<WireRequest>,
    #[prost(map = "string, string", tag = "10")]
    context_extensions: HashMap<String, String>,
    #[prost(message, optional, tag = "11")]
    metadata_context: Option<Metadata>,
    #[prost(message, optional, tag = "13")]
    route_metadata_context: Option<Metadata>,
    #[prost(message, optional, tag = "12")]
    tls_session: Option<TlsSession>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireRequest {
    #[prost(message, optional, tag = "1")]
    time: Option<Timestamp>,
    #[prost(message, optional, tag = "2")]
    http: Option<WireHttp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireHttp {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    method: String,
    // A protobuf map is a repeated key/value message on the wire; read as a
    // list, the entries go into one map sized for them (a map decoded entry
    // by entry grows, and rehashes, several times per request).
    #[prost(message, repeated, tag = "3")]
    headers: Vec<WireHeaderEntry>,
    #[prost(message, optional, tag = "13")]
    header_map: Option<WireHeaderMap>,
    #[prost(string, tag = "4")]
    path: String,
    #[prost(string, tag = "5")]
    host: String,
    #[prost(string, tag = "6")]
    scheme: String,
    #[prost(string, tag = "7")]
    query: String,
    #[prost(string, tag = "8")]
    fragment: String,
    #[prost(int64, tag = "9")]
    size: i64,
    #[prost(string, tag = "10")]
    protocol: String,
    #[prost(bytes = "vec", tag = "11")]
    body: Vec<u8>,
    #[prost(bytes = "vec", tag = "12")]
    raw_body: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireHeaderEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireHeaderMap {
    #[prost(message, repeated, tag = "1")]
    headers: Vec<WireHeaderValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireHeaderValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    raw_value: Vec<u8>,
}

impl WireAttributes {
    fn into_proto(self) -> Result<AttributeContext, Unreadable> {
        Ok(AttributeContext {
            source: self.source,
            destination: self.destination,
            request: self
                .request
                .map(|r| -> Result<Request, Unreadable> {
                    Ok(Request {
                        time: r.time,
                        http: r.http.map(WireHttp::into_proto).transpose()?,
                    })
                })
                .transpose()?,
            context_extensions: self.context_extensions,
            metadata_context: self.metadata_context,
            route_metadata_context: self.route_metadata_context,
            tls_session: self.tls_session,
        })
    }
}

impl WireHeaderValue {
    fn into_proto(self) -> HeaderValue {
        match String::from_utf8(self.value) {
            Ok(value) => HeaderValue {
                key: self.key,
                value,
                raw_value: self.raw_value,
            },
            // Not UTF-8: a raw value, unless one is there already (then it
            // wins anyway, and the bad `value` is never read).
            Err(e) if self.raw_value.is_empty() => HeaderValue {
                key: self.key,
                value: String::new(),
                raw_value: e.into_bytes(),
            },
            Err(_) => HeaderValue {
                key: self.key,
                value: String::new(),
                raw_value: self.raw_value,
            },
        }
    }
}

impl WireHttp {
    fn into_proto(self) -> Result<HttpRequest, Unreadable> {
        let mut header_map = self.header_map.map(|m| HeaderMap {
            headers: m
                .headers
                .into_iter()
                .map(WireHeaderValue::into_proto)
                .collect(),
        });
        let mut headers = HashMap::with_capacity(self.headers.len());
        let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
        // A key sent twice keeps its last value, as a decoded map would.
        for WireHeaderEntry { key, value } in self.headers {
            match String::from_utf8(value) {
                Ok(v) => {
                    if !raw.is_empty() {
                        raw.retain(|(k, _)| *k != key);
                    }
                    headers.insert(key, v);
                }
                Err(e) => {
                    headers.remove(&key);
                    raw.retain(|(k, _)| *k != key);
                    raw.push((key, e.into_bytes()));
                }
            }
        }
        if !raw.is_empty() {
            // Some value is not UTF-8: carry the whole map as raw values,
            // where bytes have a place. Only when the request has no
            // `header_map` of its own, so the two never mix.
            if header_map.as_ref().is_some_and(|m| !m.headers.is_empty()) {
                return Err(Unreadable::Ambiguous(
                    "both `headers` and `header_map` are set and `headers` has a value that is not UTF-8",
                ));
            }
            let mut all: Vec<HeaderValue> = headers
                .drain()
                .map(|(key, value)| HeaderValue {
                    key,
                    value,
                    raw_value: Vec::new(),
                })
                .chain(raw.into_iter().map(|(key, raw_value)| HeaderValue {
                    key,
                    value: String::new(),
                    raw_value,
                }))
                .collect();
            all.sort_by(|a, b| a.key.cmp(&b.key));
            header_map = Some(HeaderMap { headers: all });
        }
        let mut raw_body = self.raw_body;
        let body = match String::from_utf8(self.body) {
            Ok(body) => body,
            Err(_) if !raw_body.is_empty() => {
                return Err(Unreadable::Ambiguous(
                    "both `body` and `raw_body` are set and `body` is not UTF-8",
                ));
            }
            Err(e) => {
                raw_body = e.into_bytes();
                String::new()
            }
        };
        Ok(HttpRequest {
            id: self.id,
            method: self.method,
            headers,
            header_map,
            path: self.path,
            host: self.host,
            scheme: self.scheme,
            query: self.query,
            fragment: self.fragment,
            size: self.size,
            protocol: self.protocol,
            body,
            raw_body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

    fn full_http() -> HttpRequest {
        // No `..Default::default()`: a field added to the message must be
        // added here, and then to the mirror.
        HttpRequest {
            id: "id-1".into(),
            method: "POST".into(),
            headers: HashMap::from([("x-a".into(), "1".into()), ("x-b".into(), "é".into())]),
            header_map: Some(HeaderMap {
                headers: vec![
                    HeaderValue {
                        key: "x-c".into(),
                        value: "v".into(),
                        raw_value: Vec::new(),
                    },
                    HeaderValue {
                        key: "x-d".into(),
                        value: String::new(),
                        raw_value: b"raw".to_vec(),
                    },
                ],
            }),
            path: "/p?q=1".into(),
            host: "h.example".into(),
            scheme: "https".into(),
            query: "q=1".into(),
            fragment: "f".into(),
            size: 42,
            protocol: "HTTP/2".into(),
            body: "{\"a\":1}".into(),
            raw_body: b"raw body".to_vec(),
        }
    }

    fn full() -> CheckRequest {
        let peer = Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "10.0.0.1".into(),
                    ..Default::default()
                })),
            }),
            service: "svc".into(),
            labels: HashMap::from([("l".into(), "v".into())]),
            principal: "spiffe://x".into(),
            certificate: "cert".into(),
        };
        let metadata = Metadata {
            filter_metadata: HashMap::from([(
                "f".into(),
                Struct {
                    fields: [(
                        "k".to_string(),
                        Value {
                            kind: Some(Kind::StringValue("v".into())),
                        },
                    )]
                    .into(),
                },
            )]),
            typed_filter_metadata: HashMap::new(),
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer.clone()),
                destination: Some(peer),
                request: Some(Request {
                    time: Some(Timestamp {
                        seconds: 1,
                        nanos: 2,
                    }),
                    http: Some(full_http()),
                }),
                context_extensions: HashMap::from([("e".into(), "x".into())]),
                metadata_context: Some(metadata.clone()),
                route_metadata_context: Some(metadata),
                tls_session: Some(TlsSession { sni: "sni".into() }),
            }),
        }
    }

    #[test]
    fn a_valid_request_round_trips_field_for_field() {
        let r = full();
        assert_eq!(decode_check_request(&r.encode_to_vec()).unwrap(), r);
        let empty = CheckRequest::default();
        assert_eq!(decode_check_request(&empty.encode_to_vec()).unwrap(), empty);
    }

    /// `field` (tag) of HttpRequest set to `bytes`, inside a whole request.
    fn with_http_field(tag: u32, bytes: &[u8]) -> Vec<u8> {
        let mut http = Vec::new();
        prost::encoding::bytes::encode(tag, &bytes.to_vec(), &mut http);
        let mut request = Vec::new();
        prost::encoding::bytes::encode(2, &http, &mut request);
        let mut attrs = Vec::new();
        prost::encoding::bytes::encode(4, &request, &mut attrs);
        let mut out = Vec::new();
        prost::encoding::bytes::encode(1, &attrs, &mut out);
        out
    }

    fn map_entry(k: &[u8], v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        prost::encoding::bytes::encode(1, &k.to_vec(), &mut e);
        prost::encoding::bytes::encode(2, &v.to_vec(), &mut e);
        e
    }

    fn http_of(r: &CheckRequest) -> &HttpRequest {
        r.attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .unwrap()
    }

    #[test]
    fn a_non_utf8_header_value_becomes_a_raw_value() {
        let bytes = with_http_field(3, &map_entry(b"x-bad", b"\xff\xfe"));
        assert!(
            CheckRequest::decode(bytes.as_slice()).is_err(),
            "strict decode refuses it"
        );
        let r = decode_check_request(&bytes).unwrap();
        let h = http_of(&r);
        assert!(h.headers.is_empty());
        let m = h.header_map.as_ref().unwrap();
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.headers[0].key, "x-bad");
        assert_eq!(m.headers[0].raw_value, b"\xff\xfe");
    }

    #[test]
    fn a_header_sent_twice_keeps_its_last_value() {
        let mut entries = with_http_field(3, &map_entry(b"x-a", b"first"));
        entries.extend(with_http_field(3, &map_entry(b"x-b", b"kept")));
        entries.extend(with_http_field(3, &map_entry(b"x-a", b"last")));
        let strict = CheckRequest::decode(entries.as_slice()).unwrap();
        let lenient = decode_check_request(&entries).unwrap();
        assert_eq!(http_of(&lenient).headers, http_of(&strict).headers);
        assert_eq!(http_of(&lenient).headers["x-a"], "last");
        assert_eq!(http_of(&lenient).headers.len(), 2);

        // A bad value replaced by a good one: no raw value is left.
        let mut bad_then_good = with_http_field(3, &map_entry(b"x-a", b"\xff"));
        bad_then_good.extend(with_http_field(3, &map_entry(b"x-a", b"ok")));
        let h = http_of(&decode_check_request(&bad_then_good).unwrap()).clone();
        assert_eq!(h.headers["x-a"], "ok");
        assert!(h.header_map.is_none());

        // A good value replaced by a bad one: only the raw value is left.
        let mut good_then_bad = with_http_field(3, &map_entry(b"x-a", b"ok"));
        good_then_bad.extend(with_http_field(3, &map_entry(b"x-a", b"\xff")));
        let h = http_of(&decode_check_request(&good_then_bad).unwrap()).clone();
        assert!(h.headers.is_empty());
        let m = h.header_map.unwrap();
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.headers[0].raw_value, b"\xff");
    }

    #[test]
    fn a_non_utf8_header_map_value_becomes_a_raw_value() {
        let mut hv = Vec::new();
        prost::encoding::bytes::encode(1, &b"x-bad".to_vec(), &mut hv);
        prost::encoding::bytes::encode(2, &b"a\xffb".to_vec(), &mut hv);
        let mut hm = Vec::new();
        prost::encoding::bytes::encode(1, &hv, &mut hm);
        let r = decode_check_request(&with_http_field(13, &hm)).unwrap();
        let v = &http_of(&r).header_map.as_ref().unwrap().headers[0];
        assert_eq!(
            (v.value.as_str(), v.raw_value.as_slice()),
            ("", &b"a\xffb"[..])
        );
    }

    #[test]
    fn a_non_utf8_body_moves_to_raw_body() {
        let r = decode_check_request(&with_http_field(11, b"{\"a\":\"\xc3\x28\"}")).unwrap();
        let h = http_of(&r);
        assert_eq!(h.body, "");
        assert_eq!(h.raw_body, b"{\"a\":\"\xc3\x28\"}");
    }

    #[test]
    fn other_string_fields_must_be_utf8() {
        for tag in [1, 2, 4, 5, 6, 7, 8, 10] {
            let e = decode_check_request(&with_http_field(tag, b"\xff")).unwrap_err();
            assert!(matches!(e, Unreadable::Protobuf(_)), "tag {tag}: {e}");
        }
        // A header name.
        let e = decode_check_request(&with_http_field(3, &map_entry(b"\xff", b"v"))).unwrap_err();
        assert!(matches!(e, Unreadable::Protobuf(_)), "{e}");
        // The error names the field, never the bytes.
        let e = decode_check_request(&with_http_field(4, b"secret\xff")).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn garbage_is_a_protobuf_error_not_a_panic() {
        for bytes in [
            &b"\xff\xff\xff\xff"[..],
            b"\x0a\x05ab",
            b"\x0a",
            b"\x08\x80\x80",
        ] {
            assert!(decode_check_request(bytes).is_err(), "{bytes:?}");
        }
    }

    fn frame(compressed: u8, msg: &[u8]) -> Vec<u8> {
        let mut f = vec![compressed];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    struct Chunks(Vec<Bytes>);

    impl tonic::codegen::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(if self.0.is_empty() {
                None
            } else {
                Some(Ok(http_body::Frame::data(self.0.remove(0))))
            })
        }
    }

    fn read(chunks: Vec<Vec<u8>>, limit: usize) -> Result<Bytes, Unreadable> {
        let body = Chunks(chunks.into_iter().map(Bytes::from).collect());
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_message(body, limit))
    }

    #[test]
    fn framing() {
        let f = frame(0, b"hello");
        assert_eq!(read(vec![f.clone()], 5).unwrap(), &b"hello"[..]);
        // Split anywhere, even inside the prefix.
        assert_eq!(
            read(vec![f[..2].to_vec(), f[2..6].to_vec(), f[6..].to_vec()], 5).unwrap(),
            &b"hello"[..]
        );
        assert!(matches!(
            read(vec![f.clone()], 4),
            Err(Unreadable::TooLarge { size: 5, .. })
        ));
        assert!(matches!(
            read(vec![frame(1, b"x")], 9),
            Err(Unreadable::Compressed)
        ));
        assert!(matches!(
            read(vec![frame(7, b"x")], 9),
            Err(Unreadable::Framing(_))
        ));
        assert!(matches!(read(vec![], 9), Err(Unreadable::Framing(_))));
        assert!(matches!(
            read(vec![f[..3].to_vec()], 9),
            Err(Unreadable::Framing(_))
        ));
        assert!(matches!(
            read(vec![f[..7].to_vec()], 9),
            Err(Unreadable::Framing(_))
        ));
        let two = [f.clone(), f.clone()].concat();
        assert!(matches!(read(vec![two], 20), Err(Unreadable::Framing(_))));
        // A declared length within the limit but a body that keeps going:
        // refused once past the limit, without reading on.
        let mut endless = vec![frame(0, b"ab")];
        endless.extend(std::iter::repeat_n(vec![0u8; 100], 1000));
        assert!(matches!(
            read(endless, 50),
            Err(Unreadable::TooLarge { .. })
        ));
    }
}
