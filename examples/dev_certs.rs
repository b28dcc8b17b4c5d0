//! Writes a throwaway CA and two certificates it issued, for trying celgate's
//! TLS flags and `examples/envoy/envoy-mtls.yaml` locally (and for
//! `scripts/bench-tls.sh`). Development only: the CA key is not kept, the
//! certificates do not expire for a very long time.
//!
//! ```text
//! cargo run --example dev_certs -- --out certs
//! ```
//!
//! Writes into `--out` (created if needed; existing files are not replaced):
//!
//! - `ca.pem`: the CA certificate (for `--tls-client-ca`, and the trust of
//!   clients checking celgate);
//! - `celgate.pem`, `celgate.key`: celgate's server certificate (DNS names
//!   `--server-dns`, default `celgate.internal`, and `localhost`; IP address
//!   127.0.0.1), for `--tls-cert`/`--tls-key`;
//! - `envoy.pem`, `envoy.key`: a client certificate with the URI name
//!   `--client-uri` (default `spiffe://cluster.local/ns/gw/sa/envoy`).

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

const USAGE: &str = "usage: dev_certs --out DIR [--server-dns NAME (default celgate.internal)] \
[--client-uri URI (default spiffe://cluster.local/ns/gw/sa/envoy)]";

struct Args {
    out: PathBuf,
    server_dns: String,
    client_uri: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut out = None;
    let mut server_dns = "celgate.internal".to_owned();
    let mut client_uri = "spiffe://cluster.local/ns/gw/sa/envoy".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--server-dns" => server_dns = value()?,
            "--client-uri" => client_uri = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Args {
        out: out.with_context(|| format!("--out is required\n{USAGE}"))?,
        server_dns,
        client_uri,
    })
}

/// Signs a leaf certificate with these names and extended key usage.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `text` to `dir/name`, refusing to replace a file; keys are
/// readable by their owner only.
fn write_new(dir: &Path, name: &str, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "celgate development CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;

    let server = leaf(
        &ca,
        "celgate",
        vec![
            SanType::DnsName(args.server_dns.as_str().try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let client = leaf(
        &ca,
        "envoy",
        vec![SanType::URI(args.client_uri.as_str().try_into()?)],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    write_new(&args.out, "ca.pem", &ca.pem(), false)?;
    write_new(&args.out, "celgate.pem", &server.0, false)?;
    write_new(&args.out, "celgate.key", &server.1, true)?;
    write_new(&args.out, "envoy.pem", &client.0, false)?;
    write_new(&args.out, "envoy.key", &client.1, true)?;
    println!(
        "wrote ca.pem, celgate.pem/.key ({}, localhost, 127.0.0.1) and envoy.pem/.key ({}) in {}",
        args.server_dns,
        args.client_uri,
        args.out.display()
    );
    Ok(())
}
