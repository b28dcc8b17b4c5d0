//! The request's types, read from the Envoy protos vendored in `proto/`
//! (compiled into a descriptor set by `build.rs`): every message reachable
//! from `envoy.service.auth.v3.CheckRequest`, with its fields typed as CEL
//! sees them.

use super::cost::Bound;
use super::decls::{Field, Object};
use super::types::Ty;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type as PType};
use prost_types::{DescriptorProto, FileDescriptorSet};
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

/// The type of `object`.
pub const CHECK_REQUEST: &str = "envoy.service.auth.v3.CheckRequest";

const DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/authz_descriptor.bin"));

/// Every message of the vendored protos, by full name.
pub fn objects() -> Result<HashMap<String, Object>, String> {
    let set = FileDescriptorSet::decode(DESCRIPTOR).map_err(|e| e.to_string())?;
    let mut messages: HashMap<String, &DescriptorProto> = HashMap::new();
    for file in &set.file {
        let package = file.package();
        for m in &file.message_type {
            collect(package, m, &mut messages);
        }
    }
    let mut out = HashMap::new();
    for (name, m) in &messages {
        if m.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let mut fields = BTreeMap::new();
        for f in &m.field {
            let ty = field_type(f, &messages);
            let bound = match (&ty, f.name()) {
                (_, "body" | "raw_body") => Bound::Body,
                (Ty::String | Ty::Bytes, _) => Bound::Header,
                (Ty::List(_) | Ty::Map(..), _) => Bound::HeaderList,
                (Ty::Dyn, _) => Bound::HeaderJson,
                _ => Bound::Fixed,
            };
            fields.insert(f.name().to_owned(), Field { ty, bound });
        }
        out.insert(
            name.clone(),
            Object {
                fields: Some(fields),
            },
        );
    }
    if !out.contains_key(CHECK_REQUEST) {
        return Err(format!("{CHECK_REQUEST} is not in the vendored protos"));
    }
    Ok(out)
}

/// The value of an enum constant of the vendored protos by its full name
/// (`envoy.type.v3.StatusCode.Forbidden` is 403), as cel-go reads one: an
/// `int`.
pub fn enum_constant(name: &str) -> Option<i64> {
    static CONSTANTS: LazyLock<HashMap<String, i64>> = LazyLock::new(|| {
        let mut out = HashMap::new();
        // The descriptor is part of the program; `objects` reports it
        // unreadable, here it only has no constants.
        let Ok(set) = FileDescriptorSet::decode(DESCRIPTOR) else {
            return out;
        };
        fn message(scope: &str, m: &DescriptorProto, out: &mut HashMap<String, i64>) {
            let name = format!("{scope}.{}", m.name());
            for e in &m.enum_type {
                enumeration(&name, e, out);
            }
            for nested in &m.nested_type {
                message(&name, nested, out);
            }
        }
        fn enumeration(
            scope: &str,
            e: &prost_types::EnumDescriptorProto,
            out: &mut HashMap<String, i64>,
        ) {
            for v in &e.value {
                out.insert(
                    format!("{scope}.{}.{}", e.name(), v.name()),
                    i64::from(v.number()),
                );
            }
        }
        for file in &set.file {
            for e in &file.enum_type {
                enumeration(file.package(), e, &mut out);
            }
            for m in &file.message_type {
                message(file.package(), m, &mut out);
            }
        }
        out
    });
    CONSTANTS
        .get(name.strip_prefix('.').unwrap_or(name))
        .copied()
}

fn collect<'a>(
    scope: &str,
    m: &'a DescriptorProto,
    out: &mut HashMap<String, &'a DescriptorProto>,
) {
    let name = format!("{scope}.{}", m.name());
    for nested in &m.nested_type {
        collect(&name, nested, out);
    }
    out.insert(name, m);
}

fn field_type(
    f: &prost_types::FieldDescriptorProto,
    messages: &HashMap<String, &DescriptorProto>,
) -> Ty {
    let element = match f.r#type() {
        PType::Double | PType::Float => Ty::Double,
        PType::Int64
        | PType::Int32
        | PType::Sint32
        | PType::Sint64
        | PType::Sfixed32
        | PType::Sfixed64
        | PType::Enum => Ty::Int,
        PType::Uint64 | PType::Uint32 | PType::Fixed64 | PType::Fixed32 => Ty::Uint,
        PType::Bool => Ty::Bool,
        PType::String => Ty::String,
        PType::Bytes => Ty::Bytes,
        PType::Message | PType::Group => {
            let name = f.type_name().trim_start_matches('.');
            if let Some(entry) = messages
                .get(name)
                .filter(|m| m.options.as_ref().is_some_and(|o| o.map_entry()))
            {
                let kv: Vec<Ty> = entry
                    .field
                    .iter()
                    .map(|x| field_type(x, messages))
                    .collect();
                if let [k, v] = kv.as_slice() {
                    return Ty::map(k.clone(), v.clone());
                }
                return Ty::Dyn;
            }
            well_known(name)
        }
    };
    if f.label() == Label::Repeated {
        Ty::list(element)
    } else {
        element
    }
}

/// Messages CEL sees as its own types.
fn well_known(name: &str) -> Ty {
    match name {
        "google.protobuf.Timestamp" => Ty::Timestamp,
        "google.protobuf.Duration" => Ty::Duration,
        "google.protobuf.Struct" => Ty::map(Ty::String, Ty::Dyn),
        "google.protobuf.ListValue" => Ty::list(Ty::Dyn),
        "google.protobuf.Value" | "google.protobuf.Any" => Ty::Dyn,
        n if n.starts_with("google.protobuf.") && n.ends_with("Value") => Ty::Dyn,
        n => Ty::object(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_types_come_from_the_protos() {
        let o = objects().unwrap();
        let http = o["envoy.service.auth.v3.AttributeContext.HttpRequest"]
            .fields
            .as_ref()
            .unwrap();
        assert_eq!(http["headers"].ty, Ty::map(Ty::String, Ty::String));
        assert_eq!(http["size"].ty, Ty::Int);
        assert_eq!(http["raw_body"].ty, Ty::Bytes);
        assert_eq!(http["body"].bound, Bound::Body);
        let req = o[CHECK_REQUEST].fields.as_ref().unwrap();
        assert_eq!(
            req["attributes"].ty,
            Ty::object("envoy.service.auth.v3.AttributeContext")
        );
        let r = o["envoy.service.auth.v3.AttributeContext.Request"]
            .fields
            .as_ref()
            .unwrap();
        assert_eq!(r["time"].ty, Ty::Timestamp);
    }

    #[test]
    fn enum_constants_are_ints() {
        assert_eq!(
            enum_constant("envoy.type.v3.StatusCode.Forbidden"),
            Some(403)
        );
        assert_eq!(
            enum_constant(
                "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD"
            ),
            Some(2)
        );
        assert_eq!(enum_constant(".envoy.type.v3.StatusCode.OK"), Some(200));
        assert_eq!(enum_constant("envoy.type.v3.StatusCode.Nope"), None);
        assert_eq!(enum_constant("envoy.type.v3.StatusCode"), None);
    }
}
