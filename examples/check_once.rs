//! Sends one Check (read from a gRPC-framed file written by `make_request`) with the tonic
//! client, prints the decision, and optionally asserts it. The load script uses it to make sure
//! the answer being measured is the decision meant to be measured (h2load only counts HTTP 200s
//! and never reads `grpc-status`).
//!
//! ```text
//! cargo run --release --example check_once -- --addr 127.0.0.1:9391 --file req.bin \
//!     --expect-allowed --expect-header x-user=alice --expect-remove x-api-key
//! cargo run --release --example check_once -- --addr 127.0.0.1:9391 --file deny.bin \
//!     --expect-denied 401
//! cargo run --release --example check_once -- --addr 127.0.0.1:9591 --file req.bin \
//!     --tls-ca certs/ca.pem --tls-domain celgate.internal --expect-allowed
//! ```
//!
//! With `--tls-ca`, the call goes over TLS, trusting that CA for the name
//! `--tls-domain` (default `localhost`); `--tls-cert`/`--tls-key` add a
//! client certificate.
//!
//! Prints one line, e.g.
//! `decision=allowed grpc=OK status=0 http=200 headers=[x-user: alice] remove=[x-api-key]`.
//! Exit status: 0 on success (and when every expectation holds), 1 when an expectation fails,
//! 2 on usage, transport or gRPC errors.

use envoy_types::pb::envoy::service::auth::v3::{
    authorization_client::AuthorizationClient, check_response::HttpResponse, CheckRequest,
};
use prost::Message;

const USAGE: &str = "usage: check_once --file FILE [--addr HOST:PORT (default 127.0.0.1:9391)] \
[--tls-ca PEM [--tls-domain NAME] [--tls-cert PEM --tls-key PEM]] \
[--expect-allowed | --expect-denied HTTP_STATUS] [--expect-header k=v]... [--expect-remove k]...";

enum Expect {
    Nothing,
    Allowed,
    Denied(i32),
}

struct Args {
    addr: String,
    file: String,
    expect: Expect,
    headers: Vec<(String, String)>,
    removes: Vec<String>,
    tls_ca: Option<String>,
    tls_domain: String,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        addr: "127.0.0.1:9391".into(),
        file: String::new(),
        expect: Expect::Nothing,
        headers: Vec::new(),
        removes: Vec::new(),
        tls_ca: None,
        tls_domain: "localhost".into(),
        tls_cert: None,
        tls_key: None,
    };
    let mut args = std::env::args().skip(1);
    let mut next = |name: &str| -> anyhow::Result<String> {
        args.next()
            .ok_or_else(|| anyhow::anyhow!("{name} needs a value\n{USAGE}"))
    };
    loop {
        let Ok(arg) = next("") else { break };
        match arg.as_str() {
            "--addr" => a.addr = next("--addr")?,
            "--file" => a.file = next("--file")?,
            "--tls-ca" => a.tls_ca = Some(next("--tls-ca")?),
            "--tls-domain" => a.tls_domain = next("--tls-domain")?,
            "--tls-cert" => a.tls_cert = Some(next("--tls-cert")?),
            "--tls-key" => a.tls_key = Some(next("--tls-key")?),
            "--expect-allowed" => a.expect = Expect::Allowed,
            "--expect-denied" => a.expect = Expect::Denied(next("--expect-denied")?.parse()?),
            "--expect-header" => {
                let kv = next("--expect-header")?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--expect-header wants k=v, got {kv:?}"))?;
                a.headers.push((k.to_ascii_lowercase(), v.to_string()));
            }
            "--expect-remove" => a
                .removes
                .push(next("--expect-remove")?.to_ascii_lowercase()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.file.is_empty() {
        anyhow::bail!("--file is required\n{USAGE}");
    }
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        anyhow::bail!("--tls-cert and --tls-key go together\n{USAGE}");
    }
    if a.tls_ca.is_none() && a.tls_cert.is_some() {
        anyhow::bail!("--tls-cert needs --tls-ca\n{USAGE}");
    }
    Ok(a)
}

fn read_framed(path: &str) -> anyhow::Result<CheckRequest> {
    let bytes = std::fs::read(path)?;
    anyhow::ensure!(bytes.len() >= 5, "{path}: shorter than a gRPC frame header");
    anyhow::ensure!(bytes[0] == 0, "{path}: compressed frames are not supported");
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    anyhow::ensure!(
        bytes.len() == 5 + len,
        "{path}: frame says {len} bytes, file holds {}",
        bytes.len() - 5
    );
    Ok(CheckRequest::decode(&bytes[5..])?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("check_once: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let a = parse_args()?;
    let req = read_framed(&a.file)?;
    let channel = match &a.tls_ca {
        None => {
            tonic::transport::Endpoint::from_shared(format!("http://{}", a.addr))?
                .connect()
                .await?
        }
        Some(ca) => {
            use tonic::transport::{Certificate, ClientTlsConfig, Identity};
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
                .domain_name(a.tls_domain.clone());
            if let (Some(cert), Some(key)) = (&a.tls_cert, &a.tls_key) {
                tls = tls.identity(Identity::from_pem(
                    std::fs::read(cert)?,
                    std::fs::read(key)?,
                ));
            }
            tonic::transport::Endpoint::from_shared(format!("https://{}", a.addr))?
                .tls_config(tls)?
                .connect()
                .await?
        }
    };
    let mut client = AuthorizationClient::new(channel);
    let resp = match client.check(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            println!(
                "decision=grpc-error grpc={:?} message={:?}",
                status.code(),
                status.message()
            );
            anyhow::bail!("the Check call failed: {status}");
        }
    };

    let code = resp.status.as_ref().map(|s| s.code).unwrap_or(0);
    let message = resp
        .status
        .as_ref()
        .map(|s| s.message.as_str())
        .unwrap_or("");
    let grpc = tonic::Code::from_i32(code);
    let mut added: Vec<(String, String)> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let (kind, http) = match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            for h in ok.headers.iter().filter_map(|o| o.header.as_ref()) {
                added.push((h.key.to_ascii_lowercase(), h.value.clone()));
            }
            removed.extend(ok.headers_to_remove.iter().map(|k| k.to_ascii_lowercase()));
            ("ok_response", 200)
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            for h in d.headers.iter().filter_map(|o| o.header.as_ref()) {
                added.push((h.key.to_ascii_lowercase(), h.value.clone()));
            }
            (
                "denied_response",
                d.status.as_ref().map(|s| s.code).unwrap_or(403),
            )
        }
        Some(HttpResponse::ErrorResponse(_)) => ("error_response", 0),
        None => ("no_http_response", if code == 0 { 200 } else { 403 }),
    };
    let decision = if code == 0 { "allowed" } else { "denied" };
    let fmt_headers = added
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "decision={decision} grpc={grpc:?} status={code} http={http} body={kind} \
         message={message:?} headers=[{fmt_headers}] remove=[{}]",
        removed.join(", ")
    );

    let mut ok = true;
    match a.expect {
        Expect::Nothing => {}
        Expect::Allowed => {
            if code != 0 {
                eprintln!("check_once: expected allowed (status 0), got status {code} http {http}");
                ok = false;
            }
        }
        Expect::Denied(want) => {
            if code == 0 || http != want {
                eprintln!(
                    "check_once: expected denied with HTTP {want}, got status {code} http {http}"
                );
                ok = false;
            }
        }
    }
    for (k, v) in &a.headers {
        if !added.iter().any(|(hk, hv)| hk == k && hv == v) {
            eprintln!("check_once: expected header {k}: {v}, got [{fmt_headers}]");
            ok = false;
        }
    }
    for k in &a.removes {
        if !removed.contains(k) {
            eprintln!("check_once: expected {k} in headers_to_remove, got {removed:?}");
            ok = false;
        }
    }
    Ok(ok)
}
