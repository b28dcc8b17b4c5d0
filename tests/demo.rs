//! The README's demo, run for real: `examples/local-demo.sh` (Envoy 1.40,
//! celgate, the echo upstream, the span printer) and the exact requests of
//! the README's demo block, each checked against the status the README
//! promises, plus what the upstream saw and the trace the request left in
//! the demo's `traces.log` (celgate's decision span under Envoy's ext_authz
//! span).

mod common;

use common::{celgate_bin, free_ports, locate_envoy, repo_root};
use serde_json::Value;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One request of the README's demo block.
#[derive(Debug)]
struct Example {
    status: u16,
    says: String,
    command: String,
}

/// The README's demo block: `NAME=value` lines, then `# NNN: text` lines each
/// followed by one command (continued with a trailing backslash).
fn readme_examples() -> (Vec<String>, Vec<Example>) {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme
        .find("<!-- demo-requests")
        .expect("README has a demo-requests block");
    let end = readme.find("<!-- /demo-requests -->").unwrap();
    let block = &readme[start..end];
    let body = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code)
        .expect("a sh code block inside the markers");
    let (mut vars, mut examples) = (Vec::new(), Vec::new());
    let mut pending: Option<(u16, String)> = None;
    let mut lines = body.lines();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let (code, says) = comment.split_once(": ").expect("`# NNN: text`");
            pending = Some((code.parse().expect("a status"), says.to_string()));
            continue;
        }
        let mut command = line.to_string();
        while command.ends_with('\\') {
            command.pop();
            command.push_str(lines.next().expect("continued line"));
        }
        match pending.take() {
            Some((status, says)) => examples.push(Example {
                status,
                says,
                command,
            }),
            None => {
                assert!(
                    examples.is_empty() && command.contains('='),
                    "a command without its `# NNN:` line: {command}"
                );
                vars.push(command);
            }
        }
    }
    (vars, examples)
}

/// The demo script in its own process group, stopped (the whole group) on drop.
struct Demo {
    child: Child,
    dir: PathBuf,
}

impl Demo {
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("script.out")).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut s = format!("--- script\n{}", self.output());
        for name in ["celgate", "envoy", "upstream"] {
            let log =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(3000)..];
            s.push_str(&format!("\n--- {name}.log\n{tail}"));
        }
        s
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_group("-TERM");
            std::thread::sleep(Duration::from_secs(2));
            self.signal_group("-KILL");
            let _ = self.child.wait();
        }
    }
}

/// The span printer (`examples/otlp_sink.rs`), built beside the test
/// binaries by `./scripts/test.sh` (`cargo build --example otlp_sink`).
fn sink_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SINK_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("examples/otlp_sink");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --example otlp_sink` \
         (./scripts/test.sh does), or set SINK_BIN",
        bin.display()
    );
    bin
}

/// Starts the demo on free ports; a port taken between picking and binding
/// (tests run in parallel) makes the script exit early, so up to three tries
/// on fresh ports. Returns the demo and its ports.
fn start_demo(dir: &Path) -> (Demo, Vec<u16>) {
    let mut last = String::new();
    for _ in 0..3 {
        let ports = free_ports(6);
        match try_start_demo(dir, &ports) {
            Ok(demo) => return (demo, ports),
            Err(e) => last = e,
        }
    }
    panic!("local-demo.sh did not start in three tries; the last:\n{last}");
}

fn try_start_demo(dir: &Path, ports: &[u16]) -> Result<Demo, String> {
    let out = std::fs::File::create(dir.join("script.out")).unwrap();
    let child = Command::new("bash")
        .arg(repo_root().join("examples/local-demo.sh"))
        .env("CELGATE_BIN", celgate_bin())
        .env("ENVOY", locate_envoy())
        .env("DEMO_DIR", dir)
        .env("DEMO_PORT", ports[0].to_string())
        .env("DEMO_ADMIN_PORT", ports[1].to_string())
        .env("DEMO_GRPC_PORT", ports[2].to_string())
        .env("DEMO_HTTP_PORT", ports[3].to_string())
        .env("DEMO_UPSTREAM_PORT", ports[4].to_string())
        .env("DEMO_OTLP_PORT", ports[5].to_string())
        .env("SINK_BIN", sink_bin())
        .env_remove("DEMO_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .process_group(0)
        .spawn()
        .unwrap();
    let mut demo = Demo {
        child,
        dir: dir.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !demo.output().contains("celgate demo ready") {
        if let Some(status) = demo.child.try_wait().unwrap() {
            return Err(format!(
                "local-demo.sh exited ({status}) before ready:\n{}",
                demo.logs()
            ));
        }
        assert!(
            Instant::now() < deadline,
            "local-demo.sh not ready:\n{}",
            demo.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(demo)
}

/// Runs a README command against the demo's port: (status, headers, body).
fn run(vars: &[String], command: &str, port: u16) -> (u16, String, String) {
    let command = command.replace("localhost:8080", &format!("127.0.0.1:{port}"));
    let script = format!("{}\n{command} -sS --max-time 10", vars.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{command}: not an HTTP response: {text}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_demo_requests_answer_as_promised_and_leave_joined_traces() {
    let (vars, examples) = readme_examples();
    assert_eq!(vars.len(), 2, "ALICE and BOB");
    assert_eq!(
        examples.len(),
        9,
        "the README's demo requests: {examples:#?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (demo, ports) = tokio::task::spawn_blocking(move || start_demo(&path))
        .await
        .unwrap();
    let port = ports[0];

    let mut answers = Vec::new();
    for ex in &examples {
        let (vars, command) = (vars.clone(), ex.command.clone());
        let answer = tokio::task::spawn_blocking(move || run(&vars, &command, port))
            .await
            .unwrap();
        assert_eq!(
            answer.0,
            ex.status,
            "README promises {} ({}) for\n  {}\ngot {answer:?}\n{}",
            ex.status,
            ex.says,
            ex.command,
            demo.logs()
        );
        answers.push(answer);
    }

    // What the README says beyond the status.
    let (_, head, _) = &answers[1];
    assert!(head.contains("www-authenticate: bearer realm=\"celgate-demo\""));
    let echoed: Value = serde_json::from_str(&answers[2].2).unwrap();
    assert_eq!(echoed["headers"]["x-user"], "alice");
    assert_eq!(echoed["headers"]["x-user-roles"], "reader");
    assert!(
        echoed["headers"].get("authorization").is_none(),
        "the token never reaches the upstream: {echoed}"
    );
    assert!(answers[3].2.contains("alice may not POST /api/orders"));
    let echoed: Value = serde_json::from_str(&answers[4].2).unwrap();
    assert_eq!(echoed["headers"]["x-user"], "bob");
    assert_eq!(echoed["body"], r#"{"item":"book"}"#, "body intact upstream");
    let rpc: Value = serde_json::from_str(&answers[5].2).unwrap();
    assert_eq!(rpc["id"], 1);
    assert_eq!(
        rpc["result"]["content"][0]["text"],
        "ran search_docs for alice"
    );
    let rpc: Value = serde_json::from_str(&answers[6].2).unwrap();
    assert_eq!(
        rpc,
        serde_json::json!({"jsonrpc": "2.0", "id": 2,
            "error": {"code": -32001, "message": "alice may not call delete_repo"}})
    );
    assert!(answers[6].1.contains("content-type: application/json"));
    assert!(answers[8].2.contains("bearer token required"));

    // The denied MCP call's trace, as traces.log shows it: Envoy's ingress
    // span → its ext_authz client span → celgate's decision span. Envoy
    // flushes every 5 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ingress, egress, decision) = loop {
        let spans: Vec<Value> = std::fs::read_to_string(dir.path().join("traces.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let parent_of = |child: &Value| {
            spans
                .iter()
                .find(|s| {
                    s["service"] == "envoy"
                        && s["trace"] == child["trace"]
                        && s["span"] == child["parent"]
                })
                .cloned()
        };
        let decision = spans.iter().find(|s| {
            s["service"] == "celgate"
                && s["attributes"]["celgate.policy"] == "demo-3-mcp-tools"
                && s["attributes"]["decision"] == "deny"
        });
        if let Some(d) = decision {
            if let Some(egress) = parent_of(d) {
                if let Some(ingress) = parent_of(&egress) {
                    break (ingress, egress, d.clone());
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no joined trace for the denied MCP call in traces.log:\n{}",
            spans
                .iter()
                .map(|s| format!("{} {} {}", s["service"], s["name"], s["trace"]))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        egress["name"],
        "async envoy.service.auth.v3.Authorization.Check egress"
    );
    assert_eq!(ingress["name"], "ingress");
    assert_eq!(ingress["attributes"]["http.status_code"], "403");
    assert_eq!(decision["attributes"]["http.response.status_code"], 403);
    assert_eq!(decision["attributes"]["url.path"], "/mcp");

    // Ctrl-C (SIGINT to the group, as a terminal sends) stops everything.
    tokio::task::spawn_blocking(move || {
        let mut demo = demo;
        demo.signal_group("-INT");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = demo.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "did not stop:\n{}", demo.logs());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "exit {status}:\n{}", demo.logs());
        // Nothing of the demo is left running.
        let group = format!("-{}", demo.child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Command::new("kill")
            .args(["-0", "--", &group])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "processes of the demo outlived it"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}

#[test]
fn readme_tokens_are_the_demo_issuers_and_do_not_expire_soon() {
    let (vars, _) = readme_examples();
    for var in vars {
        let (name, token) = var.split_once('=').unwrap();
        let payload = token.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], "https://issuer.demo.celgate.dev/", "{name}");
        assert_eq!(claims["aud"], "celgate-demo", "{name}");
        assert!(claims["exp"].as_i64().unwrap() >= 4_102_444_800, "{name}");
    }
}

/// Runs `examples/local-demo.sh` with `env` and `TMPDIR` set to `tmp`, none
/// of the DEMO_* or binary variables inherited; its exit status and output.
fn run_script(tmp: &Path, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("examples/local-demo.sh"))
        .env("TMPDIR", tmp)
        .stdin(Stdio::null());
    for var in [
        "DEMO_DIR",
        "DEMO_OTLP_ENDPOINT",
        "CELGATE_BIN",
        "ENVOY",
        "SINK_BIN",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn port_vars(ports: &[u16]) -> Vec<(&'static str, String)> {
    [
        "DEMO_PORT",
        "DEMO_ADMIN_PORT",
        "DEMO_GRPC_PORT",
        "DEMO_HTTP_PORT",
        "DEMO_UPSTREAM_PORT",
        "DEMO_OTLP_PORT",
    ]
    .into_iter()
    .zip(ports.iter().map(u16::to_string))
    .collect()
}

/// A busy port stops the script before it installs or builds anything (no
/// ENVOY, CELGATE_BIN or SINK_BIN is given, so either would come next), the
/// message names the port and, where `ss` or `lsof` can tell, what holds it,
/// and the temporary directory is gone.
#[test]
fn local_demo_checks_its_ports_first_and_names_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = listener.local_addr().unwrap().port();
    let mut ports = free_ports(6);
    ports[2] = busy;
    let (code, out) = run_script(tmp.path(), &port_vars(&ports));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("port {busy} on 127.0.0.1 is in use")),
        "{out}"
    );
    assert!(
        !out.contains("installing") && !out.contains("building"),
        "{out}"
    );
    let can_tell = ["ss", "lsof"].iter().any(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .is_ok_and(|s| s.success())
    });
    if can_tell {
        assert!(
            out.contains(&format!("pid {})", std::process::id())),
            "the holder (this test) is named: {out}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the temporary directory is left: {left:?}");
    drop(listener);
}

/// A start that fails shows the last lines of the logs, then removes the
/// temporary directory they were in.
#[test]
fn local_demo_removes_its_directory_after_a_failed_start() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("celgate");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'celgate: refusing to start: on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut env = port_vars(&free_ports(6));
    env.push(("CELGATE_BIN", fake.display().to_string()));
    // Stand-ins that stay up, so celgate is the process that fails.
    let idle = bin.path().join("idle");
    std::fs::write(&idle, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&idle, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    env.push(("ENVOY", idle.display().to_string()));
    env.push(("SINK_BIN", idle.display().to_string()));
    let (code, out) = run_script(tmp.path(), &env);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("a demo process exited"), "{out}");
    assert!(
        out.contains("--- last lines of celgate.log")
            && out.contains("refusing to start: on purpose"),
        "{out}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the temporary directory is left: {left:?}");
}
