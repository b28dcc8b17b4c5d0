//! Writes one gRPC-framed `envoy.service.auth.v3.CheckRequest` to a file, for
//! `h2load -d FILE` (and for `check_once --file FILE`).
//!
//! Frame: 1 byte 0 (not compressed), 4-byte big-endian length, the protobuf bytes.
//!
//! ```text
//! cargo run --release --example make_request -- --out req.bin \
//!     --method GET --path /api/orders --host example.com \
//!     --header x-api-key=k-alice-1 --header user-agent=curl/8.5.0
//! ```
//!
//! The request looks like what Envoy sends: header keys lower-cased, the pseudo-headers
//! `:authority`, `:method`, `:path`, `:scheme` present in the header map (leave them out with
//! `--no-pseudo-headers`), source and destination socket addresses filled in.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context::{HttpRequest, Peer, Request},
    AttributeContext, CheckRequest,
};
use prost::Message;

const USAGE: &str = "usage: make_request --out FILE [--method GET] [--path /api/orders] \
[--host example.com] [--scheme https] [--protocol HTTP/1.1] [--header k=v]... \
[--body TEXT] [--id REQUEST_ID] [--no-pseudo-headers]";

struct Args {
    out: String,
    method: String,
    path: String,
    host: String,
    scheme: String,
    protocol: String,
    headers: Vec<(String, String)>,
    body: String,
    id: String,
    pseudo: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        out: String::new(),
        method: "GET".into(),
        path: "/api/orders".into(),
        host: "example.com".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        headers: Vec::new(),
        body: String::new(),
        id: "11111111-2222-3333-4444-555555555555".into(),
        pseudo: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("{name} needs a value\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "--out" => a.out = value("--out")?,
            "--method" => a.method = value("--method")?,
            "--path" => a.path = value("--path")?,
            "--host" => a.host = value("--host")?,
            "--scheme" => a.scheme = value("--scheme")?,
            "--protocol" => a.protocol = value("--protocol")?,
            "--body" => a.body = value("--body")?,
            "--id" => a.id = value("--id")?,
            "--header" | "-H" => {
                let kv = value("--header")?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--header wants k=v, got {kv:?}"))?;
                a.headers
                    .push((k.trim().to_ascii_lowercase(), v.to_string()));
            }
            "--no-pseudo-headers" => a.pseudo = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.out.is_empty() {
        anyhow::bail!("--out is required\n{USAGE}");
    }
    Ok(a)
}

fn socket(addr: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;

    let mut headers: HashMap<String, String> = HashMap::new();
    if a.pseudo {
        headers.insert(":authority".into(), a.host.clone());
        headers.insert(":method".into(), a.method.clone());
        headers.insert(":path".into(), a.path.clone());
        headers.insert(":scheme".into(), a.scheme.clone());
        headers.insert("x-request-id".into(), a.id.clone());
    }
    for (k, v) in &a.headers {
        // Envoy joins repeated headers with ",".
        headers
            .entry(k.clone())
            .and_modify(|old| {
                old.push(',');
                old.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }

    let req = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: socket("127.0.0.1", 5555),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: socket("127.0.0.1", 5555),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: a.id.clone(),
                    method: a.method.clone(),
                    headers,
                    path: a.path.clone(),
                    host: a.host.clone(),
                    scheme: a.scheme.clone(),
                    protocol: a.protocol.clone(),
                    size: a.body.len() as i64,
                    body: a.body.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };

    let pb = req.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + pb.len());
    framed.push(0u8);
    framed.extend_from_slice(&(pb.len() as u32).to_be_bytes());
    framed.extend_from_slice(&pb);
    std::fs::write(&a.out, &framed)?;
    eprintln!(
        "make_request: wrote {} ({} bytes: 5-byte frame header + {} protobuf)",
        a.out,
        framed.len(),
        pb.len()
    );
    Ok(())
}
