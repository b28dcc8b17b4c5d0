//! A `CheckRequest` from JSON, for the CLI and test suites.
//!
//! Follows the protobuf JSON mapping: field names in `lowerCamelCase` or their
//! original `snake_case`, `rawBody` and `headerMap.headers[].rawValue` as
//! base64, `time` as RFC 3339. Names in `headers` are lower-cased, as Envoy
//! sends them (`headerMap` keeps them as written). A key that is not a field of
//! the message is an error, so a typo never silently drops part of a request.

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, HeaderMap, HeaderValue, Metadata,
    SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::Timestamp;
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
#[error("request: {path}: {message}")]
pub struct RequestError {
    pub path: String,
    pub message: String,
}

type R<T> = Result<T, RequestError>;

struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
    used: Vec<&'a str>,
}

fn err(path: &str, message: impl Into<String>) -> RequestError {
    RequestError {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl<'a> Obj<'a> {
    fn new(path: &str, v: &'a Value) -> R<Self> {
        let map = v
            .as_object()
            .ok_or_else(|| err(path, "must be an object"))?;
        Ok(Obj {
            path: path.to_owned(),
            map,
            used: Vec::new(),
        })
    }

    /// The field under its snake_case or camelCase name.
    fn get(&mut self, snake: &'static str) -> Option<(String, &'a Value)> {
        let camel = to_camel(snake);
        for (k, v) in self.map {
            if k == snake || *k == camel {
                self.used.push(k);
                return Some((format!("{}.{k}", self.path), v));
            }
        }
        None
    }

    fn string(&mut self, snake: &'static str) -> R<String> {
        match self.get(snake) {
            None | Some((_, Value::Null)) => Ok(String::new()),
            Some((_, Value::String(s))) => Ok(s.clone()),
            Some((p, _)) => Err(err(&p, "must be a string")),
        }
    }

    fn str_map(&mut self, snake: &'static str, lower: bool) -> R<HashMap<String, String>> {
        match self.get(snake) {
            None | Some((_, Value::Null)) => Ok(HashMap::new()),
            Some((p, Value::Object(m))) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return Err(err(&format!("{p}.{k}"), "must be a string")),
                    };
                    Ok((
                        if lower {
                            k.to_ascii_lowercase()
                        } else {
                            k.clone()
                        },
                        v,
                    ))
                })
                .collect(),
            Some((p, _)) => Err(err(&p, "must be an object of strings")),
        }
    }

    fn finish(self) -> R<()> {
        for k in self.map.keys() {
            if !self.used.contains(&k.as_str()) {
                return Err(err(&format!("{}.{k}", self.path), "unknown field"));
            }
        }
        Ok(())
    }
}

fn to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The request's HTTP attributes, created empty where absent: for building a
/// request in code.
pub fn http_mut(request: &mut CheckRequest) -> &mut HttpRequest {
    request
        .attributes
        .get_or_insert_with(Default::default)
        .request
        .get_or_insert_with(Default::default)
        .http
        .get_or_insert_with(Default::default)
}

/// Parses a `CheckRequest` from JSON text.
pub fn parse(text: &str) -> R<CheckRequest> {
    let v: Value = serde_json::from_str(text).map_err(|e| err("$", e.to_string()))?;
    from_value(&v)
}

/// Builds a `CheckRequest` from a JSON (or YAML-decoded) value.
pub fn from_value(v: &Value) -> R<CheckRequest> {
    let mut o = Obj::new("$", v)?;
    let attributes = match o.get("attributes") {
        Some((p, v)) => Some(attributes(&p, v)?),
        None => None,
    };
    o.finish()?;
    Ok(CheckRequest { attributes })
}

fn attributes(path: &str, v: &Value) -> R<AttributeContext> {
    let mut o = Obj::new(path, v)?;
    let mut a = AttributeContext::default();
    if let Some((p, v)) = o.get("source") {
        a.source = Some(peer(&p, v)?);
    }
    if let Some((p, v)) = o.get("destination") {
        a.destination = Some(peer(&p, v)?);
    }
    if let Some((p, v)) = o.get("request") {
        a.request = Some(request(&p, v)?);
    }
    a.context_extensions = o.str_map("context_extensions", false)?;
    if let Some((p, v)) = o.get("metadata_context") {
        a.metadata_context = Some(metadata(&p, v)?);
    }
    if let Some((p, v)) = o.get("route_metadata_context") {
        a.route_metadata_context = Some(metadata(&p, v)?);
    }
    if let Some((p, v)) = o.get("tls_session") {
        let mut t = Obj::new(&p, v)?;
        let sni = t.string("sni")?;
        t.finish()?;
        a.tls_session = Some(TlsSession { sni });
    }
    o.finish()?;
    Ok(a)
}

fn peer(path: &str, v: &Value) -> R<Peer> {
    let mut o = Obj::new(path, v)?;
    let mut p = Peer::default();
    if let Some((ap, av)) = o.get("address") {
        let mut a = Obj::new(&ap, av)?;
        if let Some((sp, sv)) = a.get("socket_address") {
            let mut s = Obj::new(&sp, sv)?;
            let mut sa = SocketAddress {
                address: s.string("address")?,
                ..Default::default()
            };
            if let Some((pp, pv)) = s.get("port_value") {
                let port = pv
                    .as_u64()
                    .or_else(|| pv.as_str().and_then(|s| s.parse().ok()))
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| err(&pp, "must be a port number"))?;
                sa.port_specifier = Some(PortSpecifier::PortValue(port));
            }
            s.finish()?;
            a.finish()?;
            p.address = Some(Address {
                address: Some(address::Address::SocketAddress(sa)),
            });
        } else {
            a.finish()?;
        }
    }
    p.service = o.string("service")?;
    p.labels = o.str_map("labels", false)?;
    p.principal = o.string("principal")?;
    p.certificate = o.string("certificate")?;
    o.finish()?;
    Ok(p)
}

fn request(path: &str, v: &Value) -> R<Request> {
    let mut o = Obj::new(path, v)?;
    let mut r = Request::default();
    if let Some((p, v)) = o.get("time") {
        let s = v
            .as_str()
            .ok_or_else(|| err(&p, "must be an RFC 3339 string"))?;
        let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| err(&p, e.to_string()))?;
        r.time = Some(Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        });
    }
    if let Some((p, v)) = o.get("http") {
        let mut h = Obj::new(&p, v)?;
        let mut http = HttpRequest {
            id: h.string("id")?,
            method: h.string("method")?,
            headers: h.str_map("headers", true)?,
            path: h.string("path")?,
            host: h.string("host")?,
            scheme: h.string("scheme")?,
            query: h.string("query")?,
            fragment: h.string("fragment")?,
            protocol: h.string("protocol")?,
            body: h.string("body")?,
            ..Default::default()
        };
        if let Some((sp, sv)) = h.get("size") {
            http.size = sv
                .as_i64()
                .or_else(|| sv.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| err(&sp, "must be an integer"))?;
        }
        if let Some((mp, mv)) = h.get("header_map") {
            http.header_map = Some(header_map(&mp, mv)?);
        }
        if let Some((bp, bv)) = h.get("raw_body") {
            use base64::Engine;
            let s = bv
                .as_str()
                .ok_or_else(|| err(&bp, "must be a base64 string"))?;
            http.raw_body = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| err(&bp, format!("not base64: {e}")))?;
        }
        h.finish()?;
        r.http = Some(http);
    }
    o.finish()?;
    Ok(r)
}

/// `header_map` (Envoy's `encode_raw_headers`): `{headers: [{key, value}
/// or {key, raw_value (base64)}]}`, names kept as written, order kept.
fn header_map(path: &str, v: &Value) -> R<HeaderMap> {
    use base64::Engine;
    let mut o = Obj::new(path, v)?;
    let mut m = HeaderMap::default();
    if let Some((p, v)) = o.get("headers") {
        let list = v.as_array().ok_or_else(|| err(&p, "must be a list"))?;
        for (i, e) in list.iter().enumerate() {
            let ep = format!("{p}[{i}]");
            let mut h = Obj::new(&ep, e)?;
            let mut hv = HeaderValue {
                key: h.string("key")?,
                value: h.string("value")?,
                ..Default::default()
            };
            if let Some((rp, rv)) = h.get("raw_value") {
                let s = rv
                    .as_str()
                    .ok_or_else(|| err(&rp, "must be a base64 string"))?;
                hv.raw_value = base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| err(&rp, format!("not base64: {e}")))?;
            }
            h.finish()?;
            m.headers.push(hv);
        }
    }
    o.finish()?;
    Ok(m)
}

fn metadata(path: &str, v: &Value) -> R<Metadata> {
    let mut o = Obj::new(path, v)?;
    let mut m = Metadata::default();
    if let Some((p, v)) = o.get("filter_metadata") {
        let obj = v.as_object().ok_or_else(|| err(&p, "must be an object"))?;
        for (k, v) in obj {
            let s = v
                .as_object()
                .ok_or_else(|| err(&format!("{p}.{k}"), "must be an object"))?;
            m.filter_metadata
                .insert(k.clone(), crate::decision::json_to_proto_struct(s));
        }
    }
    o.finish()?;
    Ok(m)
}
