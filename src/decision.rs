//! A decision's response as the Envoy `CheckResponse` protobuf, and as JSON.

use crate::response::{CheckResponse, HeaderOption, Outcome};
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3 as pb;
use envoy_types::pb::google::protobuf as pbs;
use envoy_types::pb::google::rpc::Status;
use serde_json::{json, Value as Json};

/// gRPC status code of an allowed request.
pub const GRPC_OK: i32 = 0;
/// gRPC status code of a denied request.
pub const GRPC_PERMISSION_DENIED: i32 = 7;

fn header(h: HeaderOption) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: h.key,
            value: h.value,
            ..Default::default()
        }),
        keep_empty_value: h.keep_empty_value,
        append_action: h.append_action,
        ..Default::default()
    }
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

/// The protobuf response Envoy receives: `r`'s strings moved into it, not
/// copied (the decision has been logged and counted by then).
pub fn to_check_response(r: CheckResponse) -> pb::CheckResponse {
    let (code, http) = match r.outcome {
        Outcome::Ok(ok) => (
            GRPC_OK,
            pb::check_response::HttpResponse::OkResponse(pb::OkHttpResponse {
                headers: ok.headers.into_iter().map(header).collect(),
                headers_to_remove: ok.headers_to_remove,
                response_headers_to_add: ok
                    .response_headers_to_add
                    .into_iter()
                    .map(header)
                    .collect(),
                query_parameters_to_set: ok
                    .query_parameters_to_set
                    .into_iter()
                    .map(|q| QueryParameter {
                        key: q.key,
                        value: q.value,
                    })
                    .collect(),
                query_parameters_to_remove: ok.query_parameters_to_remove,
                ..Default::default()
            }),
        ),
        Outcome::Denied(den) => (
            GRPC_PERMISSION_DENIED,
            pb::check_response::HttpResponse::DeniedResponse(pb::DeniedHttpResponse {
                status: Some(HttpStatus { code: den.status }),
                headers: den.headers.into_iter().map(header).collect(),
                body: den.body,
            }),
        ),
    };
    pb::CheckResponse {
        status: Some(Status {
            code,
            message: r.message,
            details: Vec::new(),
        }),
        dynamic_metadata: r.metadata.as_ref().map(json_to_proto_struct),
        http_response: Some(http),
    }
}

fn headers_json(hs: &[HeaderOption]) -> Json {
    Json::Array(
        hs.iter()
            .map(|h| {
                let mut o = json!({"key": h.key, "value": h.value});
                if h.keep_empty_value {
                    o["keepEmptyValue"] = Json::Bool(true);
                }
                if h.append_action != 0 {
                    // The protobuf JSON mapping writes an enum by its name.
                    o["appendAction"] = usize::try_from(h.append_action)
                        .ok()
                        .and_then(|i| crate::response::HEADER_APPEND_ACTIONS.get(i))
                        .map_or_else(|| json!(h.append_action), |n| json!(n));
                }
                o
            })
            .collect(),
    )
}

/// A response as JSON in the shape of the protobuf JSON mapping (camelCase).
pub fn response_json(r: &CheckResponse) -> Json {
    let mut out = serde_json::Map::new();
    let (code, key, http) = match &r.outcome {
        Outcome::Ok(ok) => {
            let mut o = serde_json::Map::new();
            if !ok.headers.is_empty() {
                o.insert("headers".into(), headers_json(&ok.headers));
            }
            if !ok.headers_to_remove.is_empty() {
                o.insert("headersToRemove".into(), json!(ok.headers_to_remove));
            }
            if !ok.response_headers_to_add.is_empty() {
                o.insert(
                    "responseHeadersToAdd".into(),
                    headers_json(&ok.response_headers_to_add),
                );
            }
            if !ok.query_parameters_to_set.is_empty() {
                let qs: Vec<Json> = ok
                    .query_parameters_to_set
                    .iter()
                    .map(|q| json!({"key": q.key, "value": q.value}))
                    .collect();
                o.insert("queryParametersToSet".into(), Json::Array(qs));
            }
            if !ok.query_parameters_to_remove.is_empty() {
                o.insert(
                    "queryParametersToRemove".into(),
                    json!(ok.query_parameters_to_remove),
                );
            }
            (GRPC_OK, "okResponse", Json::Object(o))
        }
        Outcome::Denied(d) => {
            let mut o = serde_json::Map::new();
            o.insert("status".into(), json!({"code": d.status}));
            if !d.headers.is_empty() {
                o.insert("headers".into(), headers_json(&d.headers));
            }
            if !d.body.is_empty() {
                o.insert("body".into(), Json::String(d.body.clone()));
            }
            (GRPC_PERMISSION_DENIED, "deniedResponse", Json::Object(o))
        }
    };
    let mut status = json!({"code": code});
    if !r.message.is_empty() {
        status["message"] = Json::String(r.message.clone());
    }
    out.insert("status".into(), status);
    out.insert(key.into(), http);
    if let Some(m) = &r.metadata {
        out.insert("dynamicMetadata".into(), Json::Object(m.clone()));
    }
    Json::Object(out)
}
