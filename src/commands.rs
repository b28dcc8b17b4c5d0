//! The policy authors' commands (`check`, `validate`, `test`, `diff`) and the
//! container health check (`healthcheck`).
//!
//! Each returns the process exit status; see `celgate --help` for the table
//! (docs/src/troubleshooting.md has the same one).

use celgate::engine::{self, EngineConfig};
use celgate::policy::PolicySet;
use celgate::{decision, explain, request_json, suite, validate as report};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The policies do not load (a path that does not exist, YAML or CEL
/// errors): the same status in every command, `serve` included (its error
/// path in `main` exits 1 too), so scripts need one rule. `validate` has
/// always said "1: the policies have errors", which is the same fault.
pub const NOT_LOADED: u8 = 1;
/// A usage error, or input other than the policies that cannot be used: the
/// request of `check`, no suites (or no case) to run for `test`.
pub const USAGE: u8 = 2;
/// `diff`: a request's decision changed. 1, as a failed case of `test`:
/// the check did not pass (`--allow-changes` makes it 0, which leaves 1 to
/// policies that do not load).
pub const CHANGED: u8 = 1;
pub const DENIED: u8 = 3;
pub const DENIED_BY_ERROR: u8 = 4;

/// Writes `bytes` to standard output. A reader that has gone away
/// (`celgate check | head`) ends the output quietly and the command keeps its
/// exit status; any other error is returned.
pub fn print(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// [`print`] for the commands that return their exit status: another error
/// is reported and ends the command with 1.
fn print_or_fail(text: &str) -> Result<(), ExitCode> {
    print(text.as_bytes()).map_err(|e| {
        say!("celgate: writing to standard output: {e}");
        ExitCode::FAILURE
    })
}

/// Loads the policies of `check` and `diff` (`side`: `""`, or `--from: `
/// naming the flag), saying why on standard error when they cannot be used.
fn load_policies(
    policies: &[PathBuf],
    allow_empty: bool,
    side: &str,
) -> Result<PolicySet, ExitCode> {
    load_policies_for(policies, allow_empty, side, false)
}

/// As [`load_policies`]; `http`: the set must hold HTTP-mode policies
/// rather than Envoy-mode ones.
fn load_policies_for(
    policies: &[PathBuf],
    allow_empty: bool,
    side: &str,
    http: bool,
) -> Result<PolicySet, ExitCode> {
    let set = match PolicySet::load(policies) {
        Ok(set) => set,
        Err(e) => {
            say!("celgate: {side}the policies do not load:\n{e}");
            return Err(ExitCode::from(NOT_LOADED));
        }
    };
    // As `serve`: a set that would allow everything is refused unless asked for.
    let none = if http {
        set.http_policies.is_empty()
    } else {
        set.policies.is_empty()
    };
    if none {
        let mut what = celgate::policy::no_envoy_policy(policies);
        if http {
            what = what.replacen("Envoy-mode", "HTTP-mode", 1);
        }
        if !allow_empty {
            say!(
                "celgate: {side}{what}; refused, as `serve` refuses to start with none \
                 (--allow-empty, CELGATE_ALLOW_EMPTY=true, accepts an empty set)"
            );
            return Err(ExitCode::from(NOT_LOADED));
        }
        say!("celgate: warning: {side}{what} (accepted: --allow-empty)");
    }
    Ok(set)
}

/// What `celgate check` decides: an Envoy `CheckRequest` (JSON), or an HTTP
/// request for the HTTP-mode policies with the HTTP server's options.
pub enum CheckInput<'a> {
    Envoy(&'a Path),
    Http(&'a Path, celgate::httpmode::HttpModeOptions),
}

/// The bytes of `request` (`-`: standard input), or the exit status after
/// saying why they cannot be read.
fn read_input(request: &Path) -> Result<Vec<u8>, ExitCode> {
    if request == Path::new("-") {
        let mut s = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut s) {
            say!("celgate: reading the request from standard input: {e}");
            return Err(ExitCode::from(USAGE));
        }
        Ok(s)
    } else {
        std::fs::read(request).map_err(|e| {
            say!("celgate: {}: {e}", request.display());
            ExitCode::from(USAGE)
        })
    }
}

/// The exit status of a decision: 0 allowed, 3 denied, 4 denied on an error.
fn decision_status(allowed: bool, error: bool) -> ExitCode {
    if allowed {
        ExitCode::SUCCESS
    } else if error {
        ExitCode::from(DENIED_BY_ERROR)
    } else {
        ExitCode::from(DENIED)
    }
}

/// `celgate check`.
pub fn check(
    policies: &[PathBuf],
    allow_empty: bool,
    input: CheckInput<'_>,
    explain: bool,
    config: EngineConfig,
) -> anyhow::Result<ExitCode> {
    let request = match input {
        CheckInput::Envoy(r) => r,
        CheckInput::Http(r, options) => {
            return check_http(policies, allow_empty, r, &options, explain, config)
        }
    };
    let set = match load_policies(policies, allow_empty, "") {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let text = match read_input(request) {
        Ok(b) => match String::from_utf8(b) {
            Ok(s) => s,
            Err(_) => {
                say!("celgate: {}: not UTF-8", request.display());
                return Ok(ExitCode::from(USAGE));
            }
        },
        Err(code) => return Ok(code),
    };
    let req = match request_json::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            say!("celgate: {}: not a CheckRequest: {e}", request.display());
            return Ok(ExitCode::from(USAGE));
        }
    };
    let (d, traces) = engine::evaluate_traced(&set, &config, &req);
    let json = serde_json::to_string_pretty(&decision::response_json(&d.response))?;
    print(format!("{json}\n").as_bytes())?;
    if explain {
        say!("{}", explain::render(&set, &d, &traces).trim_end());
    }
    Ok(decision_status(d.allowed(), d.error.is_some()))
}

/// `celgate check --http-request`: the HTTP-mode policies' answer to an
/// HTTP request, printed as HTTP (status line, headers, body).
fn check_http(
    policies: &[PathBuf],
    allow_empty: bool,
    request: &Path,
    options: &celgate::httpmode::HttpModeOptions,
    explain: bool,
    config: EngineConfig,
) -> anyhow::Result<ExitCode> {
    let mode = match celgate::httpmode::HttpMode::compile(options) {
        Ok(m) => m,
        Err(e) => {
            say!("celgate: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let set = match load_policies_for(policies, allow_empty, "", true) {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let bytes = match read_input(request) {
        Ok(b) => b,
        Err(code) => return Ok(code),
    };
    let wire = crlf_head(&bytes);
    let (parts, body) = match celgate::httpmode::nested_request(&wire) {
        Ok(r) => r,
        Err(e) => {
            say!(
                "celgate: {}: not an HTTP/1.1 request: {e}",
                request.display()
            );
            return Ok(ExitCode::from(USAGE));
        }
    };
    let a = celgate::httpmode::answer_detailed(&set, &config, &mode, &parts, body, explain);
    let r = &a.response;
    let mut out = format!(
        "HTTP/1.1 {} {}\n",
        r.status().as_u16(),
        r.status().canonical_reason().unwrap_or("")
    );
    for (name, value) in r.headers() {
        out.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out.push('\n');
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(r.body());
    if !r.body().is_empty() && !r.body().ends_with(b"\n") {
        bytes.push(b'\n');
    }
    print(&bytes)?;
    if explain {
        let d = a.decision.as_decision(i32::from(r.status().as_u16()));
        say!("{}", explain::render(&set, &d, &a.trace).trim_end());
    }
    Ok(decision_status(
        a.decision.allowed(),
        a.decision.error.is_some(),
    ))
}

/// A request written with LF line ends, as HTTP's CRLF: the head only (the
/// body is kept as it is). A request already in CRLF is unchanged.
fn crlf_head(bytes: &[u8]) -> Vec<u8> {
    if bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        return bytes.to_vec();
    }
    let (head, body) = match bytes.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&bytes[..i], &bytes[i + 2..]),
        None => (bytes.strip_suffix(b"\n").unwrap_or(bytes), &b""[..]),
    };
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for (i, line) in head.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// What `celgate diff` compares and how it reports.
#[derive(Debug)]
pub struct DiffOptions<'a> {
    pub from: &'a [PathBuf],
    pub to: &'a [PathBuf],
    pub requests: &'a [PathBuf],
    pub allow_empty: bool,
    pub json: bool,
    /// Exit 0 even when a decision changed.
    pub allow_changes: bool,
    pub config: EngineConfig,
}

/// `celgate diff`: 0 when no decision changed, 1 when one did (0 with
/// `allow_changes`) or a side's policies do not load, 2 when the requests
/// cannot be read or there are none.
pub fn diff(o: &DiffOptions<'_>) -> ExitCode {
    let from = match load_policies(o.from, o.allow_empty, "--from: ") {
        Ok(set) => set,
        Err(code) => return code,
    };
    let to = match load_policies(o.to, o.allow_empty, "--to: ") {
        Ok(set) => set,
        Err(code) => return code,
    };
    let corpus = match celgate::diff::Corpus::find(o.requests) {
        Ok(c) => c,
        Err(e) => {
            say!("celgate: --requests: {e}");
            return ExitCode::from(USAGE);
        }
    };
    for p in &corpus.skipped {
        say!(
            "celgate: note: {}: not a CheckRequest (no `attributes`), skipped",
            p.display()
        );
    }
    let list = || {
        let l: Vec<String> = o.requests.iter().map(|p| p.display().to_string()).collect();
        l.join(", ")
    };
    if corpus.is_empty() {
        say!(
            "celgate: --requests: no requests under {} (CheckRequest .json files, test suites, \
             decision logs .jsonl)",
            list()
        );
        return ExitCode::from(USAGE);
    }
    let report = match celgate::diff::run(&from, &to, &o.config, corpus) {
        Ok(r) => r,
        Err(e) => {
            say!("celgate: --requests: {e}");
            return ExitCode::from(USAGE);
        }
    };
    if report.requests == 0 {
        say!(
            "celgate: --requests: the decision logs under {} hold no line",
            list()
        );
        return ExitCode::from(USAGE);
    }
    let text = if o.json {
        match serde_json::to_string_pretty(&report.to_json()) {
            Ok(s) => s + "\n",
            Err(e) => {
                say!("celgate: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        report.render_text()
    };
    if let Err(code) = print_or_fail(&text) {
        return code;
    }
    if report.changes.is_empty() || o.allow_changes {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(CHANGED)
    }
}

/// `celgate validate`.
pub fn validate(
    policies: &[PathBuf],
    allow_empty: bool,
    warn_unindexed: bool,
    json: bool,
) -> ExitCode {
    let r = report::validate_with(policies, allow_empty, warn_unindexed);
    let text = if json {
        match serde_json::to_string_pretty(&r) {
            Ok(s) => s + "\n",
            Err(e) => {
                say!("celgate: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        report::render_text(&r)
    };
    if let Err(code) = print_or_fail(&text) {
        return code;
    }
    if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_LOADED)
    }
}

/// `celgate test`.
pub fn test(paths: &[PathBuf], filter: Option<&str>, junit: bool) -> ExitCode {
    // A path that does not exist or a suite file that does not parse: as a
    // policy path that does not load in the other commands.
    let found = match suite::find(paths) {
        Ok(f) => f,
        Err(e) => {
            say!("celgate: {e}");
            return ExitCode::from(NOT_LOADED);
        }
    };
    if found.is_empty() {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        say!(
            "celgate: no test suites (apiVersion: {}, kind: Test) under {}",
            suite::API_VERSION,
            list.join(", ")
        );
        return ExitCode::from(USAGE);
    }
    let mut runs = Vec::new();
    for (file, mut doc) in found {
        if let Some(f) = filter {
            doc.cases.retain(|c| c.name.contains(f));
            if doc.cases.is_empty() {
                continue;
            }
        }
        let name = doc
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| file.display().to_string());
        let mut notes = Vec::new();
        let result = suite::run_noting(&file, &doc, &mut notes);
        // On stderr, as `check` says them: the report may go to a file (JUnit).
        // The error names the suite's file; a suite without a name of its
        // own is not named twice.
        let suite = match &doc.metadata.name {
            Some(n) => format!("suite {n}"),
            None => "suite".to_owned(),
        };
        for note in &notes {
            match &doc.metadata.name {
                Some(n) => say!("celgate: warning: suite {n} ({}): {note}", file.display()),
                None => say!("celgate: warning: {}: {note}", file.display()),
            }
        }
        if let Err(e) = &result {
            say!("celgate: {suite} did not run: {}", e.summary());
        }
        runs.push(suite::SuiteRun { file, name, result });
    }
    if runs.is_empty() {
        say!(
            "celgate: no case matches --filter {:?}",
            filter.unwrap_or_default()
        );
        return ExitCode::from(USAGE);
    }
    let report = if junit {
        suite::render_junit(&runs)
    } else {
        suite::render_table(&runs)
    };
    if let Err(code) = print_or_fail(&report) {
        return code;
    }
    if suite::Totals::of(&runs).ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How `healthcheck` speaks HTTPS: the CA bundle to trust (none: the web
/// PKI roots) and the name the certificate must carry (none: the IP
/// address asked).
#[derive(Debug)]
pub struct HealthcheckTls {
    pub ca_cert: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// `celgate healthcheck`: GET `path` on a running server's HTTP address
/// (over TLS with `tls`); 0 on 200, 1 otherwise, with the reason on stderr.
pub fn healthcheck(
    mut addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
    tls: Option<HealthcheckTls>,
) -> ExitCode {
    // A server bound to 0.0.0.0 / :: is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    if let Some(tls) = tls {
        return match https_status(addr, path, timeout, &tls) {
            Ok(200) => ExitCode::SUCCESS,
            Ok(status) => {
                say!("celgate healthcheck: {path} on {addr} (HTTPS) answered {status}");
                ExitCode::FAILURE
            }
            Err(e) => {
                say!("celgate healthcheck: {path} on {addr} (HTTPS): {e}");
                ExitCode::FAILURE
            }
        };
    }
    match plain_http_agent(timeout)
        .get(format!("http://{addr}{path}"))
        .call()
    {
        Ok(r) if r.status() == 200 => ExitCode::SUCCESS,
        Ok(r) => {
            say!(
                "celgate healthcheck: {path} on {addr} answered {}",
                r.status().as_u16()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            say!("celgate healthcheck: {path} on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The roots `healthcheck` trusts: the certificates of `ca_cert`, or the
/// web PKI roots.
fn healthcheck_roots(ca_cert: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca_cert else {
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        return Ok(roots);
    };
    let bad = |e: &dyn std::fmt::Display| format!("--ca-cert {}: {e}", path.display());
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(roots)
}

/// GET `path` over HTTPS/1.1; the status code answered.
fn https_status(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
    tls: &HealthcheckTls,
) -> Result<u16, String> {
    let (name, host) = match &tls.server_name {
        Some(n) => (n.clone(), n.clone()),
        None => (addr.ip().to_string(), addr.to_string()),
    };
    https_get(
        addr,
        &name,
        &host,
        path,
        timeout,
        tls.ca_cert.as_deref(),
        false,
    )
    .map(|r| r.0)
}

/// The largest answer `report` reads.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// GET `path` over HTTPS/1.1 from `addr`, expecting a certificate for
/// `name`; the status code and, with `body`, the body (else only the
/// status line is read).
fn https_get(
    addr: std::net::SocketAddr,
    name: &str,
    host: &str,
    path: &str,
    timeout: std::time::Duration,
    ca_cert: Option<&Path>,
    body: bool,
) -> Result<(u16, Vec<u8>), String> {
    use rustls::pki_types::ServerName;
    let deadline = std::time::Instant::now() + timeout;
    let roots = healthcheck_roots(ca_cert)?;
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(name.to_owned())
        .map_err(|e| format!("--server-name {name:?}: {e}"))?;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_owned())
    };
    let tcp = std::net::TcpStream::connect_timeout(&addr, left()?).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // A TLS failure says what about the certificate did not hold.
    let failed =
        |e: std::io::Error| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(_)) => {
                format!("{e} (--ca-cert names the CA to trust, --server-name the name to expect)")
            }
            _ => e.to_string(),
        };
    stream
        .sock
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    stream
        .sock
        .set_read_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: celgate\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| stream.flush())
    .map_err(failed)?;
    // Without `body`, the status line is all that is read.
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let enough = if body {
            head.len() > MAX_ANSWER_BYTES
        } else {
            head.windows(2).any(|w| w == b"\r\n") || head.len() >= 1024
        };
        if enough {
            break;
        }
        stream
            .sock
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            // A server that closes without close_notify has still sent it all.
            Err(e) if body && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(failed(e)),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default();
    let status = match line.split(' ').collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/1.") => code
            .parse()
            .map_err(|_| "the answer is not HTTP".to_owned())?,
        _ => return Err("the answer is not HTTP".to_owned()),
    };
    if !body {
        return Ok((status, Vec::new()));
    }
    let split = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "the answer has no end of headers".to_owned())?;
    let headers = String::from_utf8_lossy(&head[..split]).to_ascii_lowercase();
    let rest = &head[split + 4..];
    let chunked = headers
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    Ok((
        status,
        if chunked {
            dechunk(rest)?
        } else {
            rest.to_vec()
        },
    ))
}

/// The body of a `Transfer-Encoding: chunked` answer.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "the answer's chunked body is malformed".to_owned();
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size = std::str::from_utf8(&data[..eol]).map_err(|_| bad())?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad())?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Where `report` asks: scheme, host (for the certificate and the Host
/// header), port and path prefix of `--url`.
#[derive(Debug, PartialEq)]
struct ReportUrl {
    https: bool,
    host: String,
    port: u16,
    prefix: String,
}

fn parse_report_url(url: &str) -> Result<ReportUrl, String> {
    let bad = |why: &str| format!("--url {url:?}: {why} (expected http(s)://host[:port])");
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad("not an http:// or https:// URL"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') || path.contains(['?', '#']) {
        return Err(bad("user names, queries and fragments are not taken"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or_else(|| bad("unclosed ["))?;
        let port = v6[end + 1..].strip_prefix(':');
        if port.is_none() && end + 1 != v6.len() {
            return Err(bad("text after the address"));
        }
        (v6[..end].to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        None if https => 443,
        None => 80,
    };
    Ok(ReportUrl {
        https,
        host,
        port,
        prefix: path.trim_end_matches('/').to_owned(),
    })
}

/// `celgate report` (what a running server's policies have been doing):
/// GET /report from a running server and print it (a
/// table, or its JSON as it is); 0 when printed, 1 when there is no
/// report to print, 2 on a --url that cannot be used.
pub fn report(
    url: &str,
    json: bool,
    timeout: std::time::Duration,
    force_tls: bool,
    tls: HealthcheckTls,
) -> ExitCode {
    let u = match parse_report_url(url) {
        Ok(u) => u,
        Err(e) => {
            say!("celgate report: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let path = format!("{}/report", u.prefix);
    let authority = if u.host.contains(':') {
        format!("[{}]:{}", u.host, u.port)
    } else {
        format!("{}:{}", u.host, u.port)
    };
    let answer = if u.https || force_tls {
        use std::net::ToSocketAddrs as _;
        // Each address of the host in turn (localhost may be ::1 first).
        match (u.host.as_str(), u.port).to_socket_addrs() {
            Err(e) => Err(e.to_string()),
            Ok(addrs) => {
                let name = tls.server_name.as_deref().unwrap_or(&u.host);
                let mut answer = Err("no address".to_owned());
                for addr in addrs {
                    answer = https_get(
                        addr,
                        name,
                        &authority,
                        &path,
                        timeout,
                        tls.ca_cert.as_deref(),
                        true,
                    );
                    if answer.is_ok() {
                        break;
                    }
                }
                answer
            }
        }
    } else {
        plain_http_agent(timeout)
            .get(format!("http://{authority}{path}"))
            .call()
            .map_err(|e| e.to_string())
            .and_then(|mut r| {
                let status = r.status().as_u16();
                r.body_mut()
                    .with_config()
                    .limit(MAX_ANSWER_BYTES as u64)
                    .read_to_vec()
                    .map(|b| (status, b))
                    .map_err(|e| e.to_string())
            })
    };
    let shown = if u.https || force_tls {
        format!("https://{authority}{path}")
    } else {
        format!("http://{authority}{path}")
    };
    let body = match answer {
        Ok((200, body)) => body,
        Ok((status, _)) => {
            say!("celgate report: {shown} answered {status}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            say!("celgate report: {shown}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = if json {
        match serde_json::from_slice::<serde_json::Value>(&body)
            .and_then(|v| serde_json::to_string_pretty(&v))
        {
            Ok(s) => s + "\n",
            Err(e) => {
                say!("celgate report: {shown}: not JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        match serde_json::from_slice::<celgate::telemetry::report::ReportDoc>(&body) {
            Ok(doc) => celgate::telemetry::report::render_table(&doc),
            Err(e) => {
                say!("celgate report: {shown}: not a report: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    match print_or_fail(&text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
/// The plain-HTTP client of the commands that ask a running server
/// (`healthcheck`, `report`): the same settings as the JWKS fetches, never
/// through a proxy, no redirects, and every status returned as an answer
/// rather than an error.
fn plain_http_agent(timeout: std::time::Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_urls() {
        let u = parse_report_url("http://127.0.0.1:9192").unwrap();
        assert_eq!(
            u,
            ReportUrl {
                https: false,
                host: "127.0.0.1".into(),
                port: 9192,
                prefix: String::new()
            }
        );
        let u = parse_report_url("https://celgate.example/admin/").unwrap();
        assert_eq!((u.https, u.port, u.prefix.as_str()), (true, 443, "/admin"));
        let u = parse_report_url("http://[::1]:9192").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9192));
        for bad in [
            "127.0.0.1:9192",
            "ftp://x",
            "http://",
            "http://h:port",
            "http://u@h",
            "http://h/?q",
        ] {
            assert!(parse_report_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_err());
    }
}
