//! What can be checked here of the container set-up, with no Docker engine
//! on these machines: the compose file against the Compose Specification
//! schema and against the demo it claims to run, the Dockerfile's shape, the
//! binary's shared libraries against the runtime image, and every Envoy
//! config shipped (`envoy --mode validate`).

mod common;

use common::{envoy_cluster_address, files_under, locate_envoy, port_of, repo_root};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn compose() -> Value {
    yaml(&read("docker-compose.yaml"))
}

/// `check-jsonschema` (PyPI), which ships the Compose Specification schema:
/// `$CELGATE_CHECK_JSONSCHEMA`, else `.venv/bin/check-jsonschema` (installed
/// by scripts/test.sh), else on PATH. Never skips.
fn locate_check_jsonschema() -> PathBuf {
    if let Some(p) = std::env::var_os("CELGATE_CHECK_JSONSCHEMA") {
        return p.into();
    }
    let venv = repo_root().join(".venv/bin/check-jsonschema");
    if venv.is_file() {
        return venv;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("check-jsonschema"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "check-jsonschema not found; this test does not skip. Install it with\n    \
                 .venv/bin/pip install check-jsonschema==0.39.0\n(./scripts/test.sh does)"
            )
        })
}

fn check_compose_schema(file: &Path) -> (bool, String) {
    let out = Command::new(locate_check_jsonschema())
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn compose_file_matches_the_compose_specification() {
    let (ok, text) = check_compose_schema(&repo_root().join("docker-compose.yaml"));
    assert!(ok, "{text}");
    // The checker does reject a misspelt key.
    let bad = read("docker-compose.yaml").replace("    healthcheck:", "    healthchek:");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker-compose.yaml");
    std::fs::write(&path, bad).unwrap();
    let (ok, text) = check_compose_schema(&path);
    assert!(!ok && text.contains("healthchek"), "{text}");
}

/// Host path and container path of each bind mount of a service.
fn mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let mut parts = v.as_str().expect("short volume syntax").split(':');
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            )
        })
        .collect()
}

/// `ENV` values of the Dockerfile's last stage.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn env_of(key: &str) -> String {
    dockerfile_env()
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("Dockerfile sets {key}"))
        .1
}

#[test]
fn compose_runs_the_demo_topology_that_local_demo_runs() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    for name in ["envoy", "celgate", "upstream", "jaeger"] {
        assert!(services.contains_key(name), "service {name}");
    }
    // Every bind mount exists in the repository.
    for (name, s) in services {
        for (host, _) in mounts(s) {
            assert!(
                repo_root().join(&host).exists(),
                "{name} mounts {host}, which does not exist"
            );
        }
    }
    // Images are pinned; Envoy is the version the tests and the local demo run.
    let wheel = read("scripts/test.sh")
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION=").map(str::to_string))
        .unwrap();
    assert!(read("examples/local-demo.sh").contains(&format!("ENVOY_VERSION={wheel}")));
    assert_eq!(
        services["envoy"]["image"],
        format!("envoyproxy/envoy:v{wheel}")
    );
    for (name, s) in services {
        let image = s["image"].as_str().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "{name}: image {image} is not pinned to a tag"
        );
    }

    // Envoy runs the demo's config, the very file local-demo.sh rewrites.
    let envoy_mounts = mounts(&services["envoy"]);
    assert!(envoy_mounts.contains(&(
        "./examples/demo/envoy.yaml".into(),
        "/etc/envoy/envoy.yaml".into()
    )));
    assert!(read("examples/local-demo.sh").contains("cp examples/demo/envoy.yaml"));
    let config = yaml(&read("examples/demo/envoy.yaml"));
    let listen = config["static_resources"]["listeners"][0]["address"]["socket_address"]
        ["port_value"]
        .as_u64()
        .unwrap();
    assert!(
        services["envoy"]["ports"]
            .as_array()
            .unwrap()
            .contains(&Value::from(format!("127.0.0.1:{listen}:{listen}"))),
        "the gateway port {listen} is published"
    );
    // On the host's loopback only, as every example listens.
    for (name, service) in services.iter() {
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(port.starts_with("127.0.0.1:"), "{name}: {port}");
        }
    }
    // Each Envoy cluster reaches a compose service on the port it listens on.
    let celgate = &services["celgate"];
    for cluster in config["static_resources"]["clusters"].as_array().unwrap() {
        let cluster = cluster["name"].as_str().unwrap();
        let (host, port) = envoy_cluster_address(&config, cluster);
        assert!(services.contains_key(&host), "{cluster} → {host}");
        let expected = match host.as_str() {
            "celgate" => port_of(&env_of("CELGATE_GRPC_ADDR")),
            "upstream" => port_of(
                services["upstream"]["command"]
                    .as_array()
                    .unwrap()
                    .last()
                    .unwrap()
                    .as_str()
                    .unwrap(),
            ),
            "jaeger" => 4317,
            other => panic!("unexpected cluster host {other}"),
        };
        assert_eq!(port, expected, "cluster {cluster}");
    }
    // celgate: built here, serving the mounted demo policies, exporting to Jaeger.
    // The demo builds plain (fast) and does not take the profile-guided
    // image's tag.
    assert_eq!(celgate["build"]["context"], ".");
    assert_eq!(celgate["build"]["args"]["PGO"], "0");
    assert_eq!(celgate["image"], "celgate:0.1.0-demo");
    let args: Vec<&str> = celgate["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let policies = args[args.iter().position(|a| *a == "--policies").unwrap() + 1];
    assert!(mounts(celgate).contains(&("./examples/demo/policies".into(), policies.into())));
    assert!(read("examples/local-demo.sh").contains("--policies examples/demo/policies"));
    assert_eq!(
        celgate["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://jaeger:4317"
    );
    assert_eq!(
        celgate["healthcheck"]["test"],
        serde_json::json!(["CMD", "/usr/local/bin/celgate", "healthcheck"])
    );
    assert_eq!(
        services["envoy"]["depends_on"]["celgate"]["condition"],
        "service_healthy"
    );
    assert_eq!(
        services["upstream"]["volumes"][0],
        "./examples/demo/echo.py:/app/echo.py:ro"
    );
}

#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, args) = line.split_once(' ').unwrap_or((line, ""));
        let i = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        if i.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("FROM first").push(i);
    }
    stages
}

fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec (JSON) form: {args}: {e}"))
}

#[test]
fn dockerfile_builds_with_a_pinned_toolchain_and_runs_non_root_without_a_shell() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage");
    let (build, run) = (&stages[0], stages.last().unwrap());
    let get = |stage: &[Instruction], k: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|i| i.keyword == k)
            .map(|i| i.args.clone())
            .collect()
    };

    // The builder's toolchain is pinned and not older than the crate needs.
    let builder = &get(build, "FROM")[0];
    let version = builder
        .strip_prefix("rust:")
        .and_then(|r| r.split(['-', ' ']).next())
        .unwrap_or_else(|| panic!("builder is a pinned rust image: {builder}"));
    let manifest: toml_like::Manifest = toml_like::parse(&read("Cargo.toml"));
    assert!(
        toml_like::version_at_least(version, &manifest.rust_version),
        "rust:{version} is older than rust-version {}",
        manifest.rust_version
    );
    // Two builds: profile-guided by default (scripts/pgo-build.sh), plain with PGO=0.
    let runs = get(build, "RUN");
    assert!(
        get(build, "ARG").iter().any(|a| a == "PGO=1"),
        "the profile-guided build is the default"
    );
    assert!(runs.iter().any(
        |r| r.contains("cargo build --release --locked --bin celgate")
            && r.contains("install -D -m 0755 target/release/celgate /out/celgate")
    ));
    assert!(runs.iter().any(|r| r.contains("scripts/pgo-build.sh")
        && r.contains("install -D -m 0755 target/pgo/use/release/celgate /out/celgate")));
    let script = read("scripts/pgo-build.sh");
    assert!(script.contains("--bin celgate") && script.contains("--target-dir \"$PGO_DIR/use\""));
    // llvm-profdata reads only its own LLVM's profiles: the Debian package's
    // major version must be the LLVM of the image's rustc. This machine's
    // rustc says which that is when it is the image's release.
    let llvm = runs
        .iter()
        .flat_map(|r| r.split_whitespace())
        .find_map(|w| w.strip_prefix("llvm-")?.parse::<u32>().ok())
        .expect("the PGO build installs an llvm-N package");
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let rustc = String::from_utf8_lossy(&rustc.stdout).into_owned();
    let field = |k: &str| {
        rustc
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or_else(|| panic!("rustc -vV has {k}"))
            .to_string()
    };
    if field("release:").starts_with(&format!("{version}.")) {
        let major: u32 = field("LLVM version:")
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .expect("LLVM major version");
        assert_eq!(
            llvm, major,
            "llvm-{llvm} for rustc {version}'s LLVM {major}"
        );
    }

    // The runtime: distroless (no shell), pinned, non-root by number.
    let base = &get(run, "FROM")[0];
    assert!(
        base.starts_with("gcr.io/distroless/cc-debian12:"),
        "runtime base {base}"
    );
    assert!(
        builder.contains("bookworm"),
        "same Debian (glibc) as the runtime"
    );
    assert!(
        get(run, "RUN").is_empty(),
        "no RUN: the runtime has no shell"
    );
    let user = get(run, "USER");
    let uid: u32 = user
        .last()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0);
    assert!(get(run, "COPY")
        .iter()
        .any(|c| c.starts_with("--from=build ") && c.ends_with("/usr/local/bin/celgate")));

    // Exec forms only (a shell form would need /bin/sh).
    assert_eq!(
        exec_form(&get(run, "ENTRYPOINT")[0]),
        ["/usr/local/bin/celgate"]
    );
    assert_eq!(exec_form(&get(run, "CMD")[0]), ["serve"]);
    let health = &get(run, "HEALTHCHECK")[0];
    let cmd = health.split_once("CMD ").unwrap().1;
    assert_eq!(exec_form(cmd), ["/usr/local/bin/celgate", "healthcheck"]);

    // Listens where it says, serves the policies it ships.
    let exposed: Vec<u16> = get(run, "EXPOSE")
        .iter()
        .flat_map(|e| e.split(' ').map(|p| p.parse().unwrap()).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        exposed,
        [
            port_of(&env_of("CELGATE_GRPC_ADDR")),
            port_of(&env_of("CELGATE_HTTP_ADDR"))
        ]
    );
    assert!(env_of("CELGATE_GRPC_ADDR").starts_with("0.0.0.0:"));
    let policies = env_of("CELGATE_POLICIES");
    assert!(get(run, "COPY")
        .iter()
        .any(|c| c.starts_with("policies/") && c.ends_with(&format!("{policies}/"))));

    // The build context leaves out build outputs and the virtualenv.
    let ignore = read(".dockerignore");
    for entry in ["target/", ".venv/", ".git/"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore: {entry}");
    }
}

#[test]
fn image_entrypoint_and_environment_alone_serve_and_pass_the_health_check() {
    // What the image runs, with nothing but the image's environment: the
    // ENTRYPOINT with CMD's arguments, the Dockerfile's ENV (addresses moved
    // to free loopback ports, the policies directory to where COPY would put
    // them), no HOME, no PATH. The HEALTHCHECK command then finds it through
    // the same environment.
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("etc/celgate/policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(repo_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    let ports = common::free_ports(2);
    let env: Vec<(String, String)> = dockerfile_env()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "CELGATE_POLICIES" => {
                assert_eq!(v, "/etc/celgate/policies");
                (k, policies.display().to_string())
            }
            "CELGATE_GRPC_ADDR" => (k, format!("0.0.0.0:{}", ports[0])),
            "CELGATE_HTTP_ADDR" => (k, format!("0.0.0.0:{}", ports[1])),
            _ => (k, v),
        })
        .collect();
    let stages = dockerfile_stages();
    let run = stages.last().unwrap();
    let last = |k: &str| exec_form(&run.iter().rfind(|i| i.keyword == k).unwrap().args);
    let (entrypoint, cmd) = (last("ENTRYPOINT"), last("CMD"));
    let health_args = {
        let h = &run
            .iter()
            .rfind(|i| i.keyword == "HEALTHCHECK")
            .unwrap()
            .args;
        exec_form(h.split_once("CMD ").unwrap().1)
    };
    let bin = env!("CARGO_BIN_EXE_celgate");
    let command = |argv: &[String]| {
        assert_eq!(argv[0], "/usr/local/bin/celgate");
        let mut c = Command::new(bin);
        c.args(&argv[1..])
            .env_clear()
            .envs(env.clone())
            .current_dir("/");
        c
    };
    let mut argv = entrypoint.clone();
    argv.extend(cmd);
    let mut server = common::ChildGuard::spawn("celgate", command(&argv), dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        server.check_alive().unwrap_or_else(|e| panic!("{e}"));
        let out = command(&health_args).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health check never passed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_tail()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // JSON log lines, as the image's CELGATE_LOG_FORMAT says.
    let log = server.log_tail();
    let first = log.lines().next().unwrap_or_default();
    let line: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(line["fields"]["message"].is_string(), "{line}");
    server.stop();
    // And the health check fails once it is gone.
    assert!(!command(&health_args).output().unwrap().status.success());
}

/// A few fields of Cargo.toml, without a TOML dependency.
mod toml_like {
    pub struct Manifest {
        pub rust_version: String,
    }

    pub fn parse(text: &str) -> Manifest {
        let rust_version = text
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = "))
            .map(|v| v.trim_matches('"').to_string())
            .expect("Cargo.toml has rust-version");
        Manifest { rust_version }
    }

    pub fn version_at_least(have: &str, need: &str) -> bool {
        let parts = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
        parts(have) >= parts(need)
    }
}

#[test]
fn binary_needs_only_libraries_the_distroless_cc_image_has() {
    // gcr.io/distroless/cc-debian12: glibc (libc, libm, ld.so and the old
    // split-out libraries) and libgcc_s; no OpenSSL, no libstdc++ needed.
    let provided = [
        "linux-vdso.so.1",
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
    ];
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_celgate"))
        .output()
        .expect("ldd (libc-bin) is installed");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let needed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|lib| lib.rsplit('/').next().unwrap())
        .collect();
    assert!(needed.contains(&"libc.so.6"), "{text}");
    for lib in needed {
        assert!(
            provided.contains(&lib),
            "celgate needs {lib}, which the runtime image lacks:\n{text}"
        );
    }
}

/// Every Envoy bootstrap shipped: YAML files under examples/ and deploy/ with
/// `static_resources`, and such files carried inside ConfigMaps.
fn shipped_envoy_configs() -> Vec<(String, String)> {
    let root = repo_root().canonicalize().unwrap();
    let mut found = Vec::new();
    for path in ["examples", "deploy"]
        .iter()
        .flat_map(|d| files_under(&root.join(d)))
    {
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let Ok(doc) = Value::deserialize(doc) else {
                continue;
            };
            if doc.get("static_resources").is_some() {
                found.push((name.clone(), text.clone()));
            }
            if doc["kind"] == "ConfigMap" {
                for (key, value) in doc["data"].as_object().into_iter().flatten() {
                    let inner = value.as_str().unwrap_or("");
                    if inner.contains("static_resources:") {
                        found.push((format!("{name} (ConfigMap key {key})"), inner.into()));
                    }
                }
            }
        }
    }
    found.sort();
    found
}

/// A CA and a certificate of it, PEM, for configs that name TLS files.
struct StandIn {
    ca: String,
    cert: String,
    key: String,
}

impl StandIn {
    fn new() -> StandIn {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["celgate.internal".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        StandIn {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Points every file a config names at a stand-in in `dir`: certificate
/// chains, private keys and trusted CAs at generated PEM files, file-based
/// SDS sources at an empty resource list (validation checks they exist, not
/// what they hold), watched directories at `dir`. Returns how many it
/// replaced.
fn stand_in_files(v: &mut Value, dir: &Path, pki: &StandIn) -> usize {
    let mut n = 0;
    match v {
        Value::Object(m) => {
            for (key, child) in m.iter_mut() {
                let content = match key.as_str() {
                    "certificate_chain" => Some(&pki.cert),
                    "private_key" => Some(&pki.key),
                    "trusted_ca" => Some(&pki.ca),
                    _ => None,
                };
                if let (Some(content), Some(_)) = (content, child.get("filename")) {
                    let file = dir.join(format!("{key}.pem"));
                    std::fs::write(&file, content).unwrap();
                    child["filename"] = file.to_str().unwrap().into();
                    n += 1;
                } else if key == "path_config_source" {
                    let file = dir.join("sds.yaml");
                    std::fs::write(&file, "resources: []\n").unwrap();
                    child["path"] = file.to_str().unwrap().into();
                    if child.get("watched_directory").is_some() {
                        child["watched_directory"]["path"] = dir.to_str().unwrap().into();
                    }
                    n += 1;
                } else {
                    n += stand_in_files(child, dir, pki);
                }
            }
        }
        Value::Array(a) => {
            for child in a {
                n += stand_in_files(child, dir, pki);
            }
        }
        _ => {}
    }
    n
}

/// Every HttpConnectionManager config in an Envoy bootstrap.
fn connection_managers(config: &Value) -> Vec<&Value> {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(m) => {
                if m.get("@type").and_then(Value::as_str).is_some_and(|t| {
                    t.ends_with("http_connection_manager.v3.HttpConnectionManager")
                }) {
                    out.push(v);
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(config, &mut out);
    assert!(!out.is_empty(), "no HttpConnectionManager");
    out
}

#[test]
fn every_shipped_envoy_config_validates_and_normalizes_paths() {
    let envoy = locate_envoy();
    let configs = shipped_envoy_configs();
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "examples/demo/envoy.yaml",
        "examples/envoy/envoy.yaml",
        "examples/first-policy/envoy.yaml",
        "examples/mcp-gateway/envoy.yaml",
        "examples/mcp-gateway/oauth/envoy.yaml",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let tls_configs = [
        "examples/envoy/envoy-mtls.yaml",
        "deploy/kubernetes/tls/gateway/envoy.yaml",
    ];
    for expected in tls_configs {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = StandIn::new();
    for (i, (name, text)) in configs.iter().enumerate() {
        for hcm in connection_managers(&yaml(text)) {
            // Policies match on the path: it must be the one the upstream serves.
            assert_eq!(hcm["normalize_path"], true, "{name}: normalize_path");
            assert_eq!(hcm["merge_slashes"], true, "{name}: merge_slashes");
            assert_eq!(
                hcm["path_with_escaped_slashes_action"], "UNESCAPE_AND_REDIRECT",
                "{name}: path_with_escaped_slashes_action"
            );
        }
        // Validation opens the certificate and SDS files a config names.
        let mut config = yaml(text);
        let files = dir.path().join(i.to_string());
        std::fs::create_dir(&files).unwrap();
        let named = stand_in_files(&mut config, &files, &pki);
        if tls_configs.contains(&name.as_str()) {
            assert!(named > 0, "{name}: names no certificate file");
        }
        let path = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && log.contains("OK"),
            "envoy --mode validate {name}:\n{log}"
        );
    }
}

/// Every listener and admin address of the shipped Envoy configurations.
fn listen_addresses(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            // Listener and admin `address:` blocks; a cluster's endpoints are
            // where Envoy connects, not where it listens.
            if let Some(a) = m
                .get("address")
                .and_then(|a| a["socket_address"]["address"].as_str())
            {
                out.push(a.to_owned());
            }
            for (k, v) in m {
                if k != "clusters" {
                    listen_addresses(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| listen_addresses(v, out)),
        _ => {}
    }
}

/// The examples listen on loopback; a configuration that listens on every
/// interface says why, next to the address (in a container or a pod,
/// loopback is reached by nothing).
#[test]
fn examples_listen_on_loopback_unless_the_file_says_why_not() {
    let mut checked = 0;
    for (name, text) in shipped_envoy_configs() {
        let mut addresses = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            if let Ok(doc) = Value::deserialize(doc) {
                listen_addresses(&doc, &mut addresses);
            }
        }
        assert!(!addresses.is_empty(), "{name}: no listener found");
        for a in &addresses {
            if a != "127.0.0.1" {
                assert_eq!(a, "0.0.0.0", "{name}");
                assert!(
                    text.contains("# Every interface"),
                    "{name} listens on {a} without saying why"
                );
            }
        }
        if name.starts_with("examples/envoy/") || name.starts_with("examples/mcp-gateway/") {
            assert!(
                addresses.iter().all(|a| a == "127.0.0.1"),
                "{name}: {addresses:?}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 4, "{checked} configurations");
}
