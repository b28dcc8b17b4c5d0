//! Conversions between CEL values and JSON / protobuf `Struct` values.
//!
//! CEL results that leave the engine (metadata, `--explain` output) are turned
//! into JSON here; protobuf `Struct`s in the request (metadata) become CEL
//! values on demand.

use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelOptional,
    CelString, CelTimestamp, CelUInt, Kind,
};
use cel::common::value::Val;
use envoy_types::pb::google::protobuf as pbs;
use serde_json::Value as Json;
use std::collections::HashMap;

/// Converts a CEL value to JSON. Bytes become base64, timestamps RFC 3339,
/// optionals their value or null; a value of a type JSON cannot hold is an
/// error naming that type.
pub fn to_json(v: &dyn Val) -> Result<Json, String> {
    let ty = v.get_type();
    Ok(match ty.kind() {
        Kind::NullType => Json::Null,
        Kind::Boolean => Json::Bool(*v.downcast_ref::<CelBool>().ok_or_else(|| bad(v))?.inner()),
        Kind::Int => Json::from(*v.downcast_ref::<CelInt>().ok_or_else(|| bad(v))?.inner()),
        Kind::UInt => Json::from(*v.downcast_ref::<CelUInt>().ok_or_else(|| bad(v))?.inner()),
        Kind::Double => serde_json::Number::from_f64(
            *v.downcast_ref::<CelDouble>().ok_or_else(|| bad(v))?.inner(),
        )
        .map(Json::Number)
        .unwrap_or(Json::Null),
        Kind::String => Json::String(
            v.downcast_ref::<CelString>()
                .ok_or_else(|| bad(v))?
                .inner()
                .to_owned(),
        ),
        Kind::Bytes => {
            use base64::Engine;
            Json::String(
                base64::engine::general_purpose::STANDARD
                    .encode(v.downcast_ref::<CelBytes>().ok_or_else(|| bad(v))?.inner()),
            )
        }
        Kind::Timestamp => Json::String(
            v.downcast_ref::<CelTimestamp>()
                .ok_or_else(|| bad(v))?
                .inner()
                .to_rfc3339(),
        ),
        Kind::List => {
            let it = v.as_iterable().ok_or("list without elements")?;
            let mut out = Vec::new();
            let mut iter = it.iter();
            while let Some(e) = iter.next() {
                out.push(to_json(e)?);
            }
            Json::Array(out)
        }
        Kind::Map => {
            let mut out = serde_json::Map::new();
            if let Some(m) = v.downcast_ref::<CelMap>() {
                for (k, val) in m.inner() {
                    out.insert(key_string(k.inner())?, to_json(val.as_ref())?);
                }
            } else {
                let keys = v.as_iterable().ok_or("map without keys")?;
                let idx = v.as_indexer().ok_or("map without lookup")?;
                let mut iter = keys.iter();
                while let Some(k) = iter.next() {
                    let val = idx.get(k).map_err(|e| e.to_string())?;
                    out.insert(key_string(k)?, to_json(&*val)?);
                }
            }
            Json::Object(out)
        }
        Kind::Opaque if v.downcast_ref::<CelOptional>().is_some() => {
            match v.downcast_ref::<CelOptional>().and_then(|o| o.inner()) {
                Some(inner) => to_json(inner)?,
                None => Json::Null,
            }
        }
        _ if v.downcast_ref::<crate::cel::mcp::McpRequest>().is_some() => v
            .downcast_ref::<crate::cel::mcp::McpRequest>()
            .map(crate::cel::mcp::McpRequest::to_json)
            .unwrap_or_default(),
        _ if v.downcast_ref::<crate::cel::mcp::Section>().is_some() => v
            .downcast_ref::<crate::cel::mcp::Section>()
            .map(crate::cel::mcp::Section::to_json)
            .unwrap_or_default(),
        _ => {
            return Err(format!(
                "a value of type {} cannot be converted to JSON",
                ty.name()
            ))
        }
    })
}

fn bad(v: &dyn Val) -> String {
    format!("unexpected representation of {}", v.get_type().name())
}

fn key_string(k: &dyn Val) -> Result<String, String> {
    match to_json(k)? {
        Json::String(s) => Ok(s),
        other => Ok(other.to_string()),
    }
}

/// A JSON value as a CEL value (owned). Numbers become `double`, as for a
/// protobuf `Struct` (which is how cel-go sees JSON, e.g. JWT claims in the
/// Kyverno Authz Server), so expressions written there work unchanged.
pub fn json_to_val(v: &Json) -> Box<dyn Val + 'static> {
    match v {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Box::new(CelString::from(s.clone())),
        Json::Array(a) => Box::new(CelList::from(a.iter().map(json_to_val).collect::<Vec<_>>())),
        Json::Object(o) => Box::new(json_object_to_map(o)),
    }
}

/// A JSON object as a CEL map with string keys (owned).
pub fn json_object_to_map(o: &serde_json::Map<String, Json>) -> CelMap<'static> {
    let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = o
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.clone()), json_to_val(v)))
        .collect();
    CelMap::from(map)
}

/// A protobuf `Value` as a CEL value (owned).
pub fn proto_value_to_val(v: &pbs::Value) -> Box<dyn Val + 'static> {
    use pbs::value::Kind as K;
    match &v.kind {
        None | Some(K::NullValue(_)) => Box::new(CelNull),
        Some(K::NumberValue(n)) => Box::new(CelDouble::from(*n)),
        Some(K::StringValue(s)) => Box::new(CelString::from(s.clone())),
        Some(K::BoolValue(b)) => Box::new(CelBool::from(*b)),
        Some(K::StructValue(s)) => proto_struct_to_val(s),
        Some(K::ListValue(l)) => Box::new(CelList::from(
            l.values.iter().map(proto_value_to_val).collect::<Vec<_>>(),
        )),
    }
}

/// A protobuf `Struct` as a CEL map (owned).
pub fn proto_struct_to_val(s: &pbs::Struct) -> Box<dyn Val + 'static> {
    let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = s
        .fields
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.clone()), proto_value_to_val(v)))
        .collect();
    Box::new(CelMap::from(map))
}

/// JSON as a protobuf `Value`.
pub fn json_to_proto_value(v: &Json) -> pbs::Value {
    use pbs::value::Kind as K;
    let kind = match v {
        Json::Null => K::NullValue(0),
        Json::Bool(b) => K::BoolValue(*b),
        Json::Number(n) => K::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => K::StringValue(s.clone()),
        Json::Array(a) => K::ListValue(pbs::ListValue {
            values: a.iter().map(json_to_proto_value).collect(),
        }),
        Json::Object(o) => K::StructValue(json_to_proto_struct(o)),
    };
    pbs::Value { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct`.
pub fn json_to_proto_struct(o: &serde_json::Map<String, Json>) -> pbs::Struct {
    pbs::Struct {
        fields: o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_proto_value(v)))
            .collect(),
    }
}

/// A protobuf `Value` as JSON.
pub fn proto_value_to_json(v: &pbs::Value) -> Json {
    use pbs::value::Kind as K;
    match &v.kind {
        None | Some(K::NullValue(_)) => Json::Null,
        Some(K::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(Json::Number)
            .unwrap_or(Json::Null),
        Some(K::StringValue(s)) => Json::String(s.clone()),
        Some(K::BoolValue(b)) => Json::Bool(*b),
        Some(K::StructValue(s)) => proto_struct_to_json(s),
        Some(K::ListValue(l)) => Json::Array(l.values.iter().map(proto_value_to_json).collect()),
    }
}

/// A protobuf `Struct` as a JSON object.
pub fn proto_struct_to_json(s: &pbs::Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), proto_value_to_json(v)))
            .collect(),
    )
}
