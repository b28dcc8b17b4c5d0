//! Reload of a large policy set, end to end: from a file change on disk to
//! the new set serving (watcher, quiet period, full rebuild, swap).
//!
//! `cargo bench --bench reload` (env: POLICIES=1000, ROUNDS=15, QUIET_MS=50).
//! Also the reload of one changed file in process, without the watcher's
//! quiet and settle periods.

use celgate::engine::{evaluate, EngineConfig};
use celgate::policy::PolicySet;
use celgate::server::State;
use std::time::{Duration, Instant};

fn policy(i: usize, status: u32) -> String {
    format!(
        r#"apiVersion: policies.kyverno.io/v1alpha1
kind: ValidatingPolicy
metadata:
  name: p{i:05}
spec:
  evaluation:
    mode: Envoy
  matchConditions:
  - name: path
    expression: object.attributes.request.http.path.startsWith("/svc{i}/")
  variables:
  - name: key
    expression: object.attributes.request.http.headers[?"x-api-key"].orValue("")
  validations:
  - expression: >
      variables.key == "" ? envoy.Denied({status}).WithBody("no key").Response() : null
  - expression: >
      envoy.Allowed().WithHeader("x-svc", "{i}").Response()
"#
    )
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("POLICIES", 1000);
    let rounds = env("ROUNDS", 15);
    let quiet = Duration::from_millis(env("QUIET_MS", 50) as u64);
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 0..n {
        std::fs::write(dir.path().join(format!("p{i:05}.yaml")), policy(i, 401)).unwrap();
    }
    let paths = vec![dir.path().to_path_buf()];

    let mut loads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let set = PolicySet::load(&paths).expect("loads");
        loads.push(t.elapsed());
        assert_eq!(set.policies.len(), n);
    }
    // One file changed, reloaded in process against the set it replaces
    // (no watcher, no quiet or settle period): the work a reload does.
    let mut set = PolicySet::load(&paths).unwrap();
    let mut one = Vec::new();
    for r in 0..5u32 {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(dir.path().join("p00001.yaml"), policy(1, 402 + r % 2)).unwrap();
        let t = Instant::now();
        let next = PolicySet::reload(&paths, Vec::new(), Some(&set))
            .0
            .expect("reloads");
        one.push(t.elapsed());
        assert_eq!(next.policies.len(), n);
        set = next;
    }
    let state = State::new(set, EngineConfig::default());
    let _w = celgate::sources::files::watch(
        state.clone(),
        celgate::sources::Sources::files(paths.clone()),
        quiet,
    )
    .unwrap();
    let req = celgate::request_json::from_value(&serde_json::json!(
        {"attributes": {"request": {"http": {"method": "GET", "path": "/svc0/x"}}}}
    ))
    .unwrap();
    let mut e2e = Vec::new();
    for r in 0..rounds {
        let want = 402 + (r % 2) as i32;
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        std::fs::write(dir.path().join("p00000.yaml"), policy(0, want as u32)).unwrap();
        loop {
            let d = evaluate(&state.policies.load(), &EngineConfig::default(), &req);
            if d.http_status() == want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "reload never applied"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        e2e.push(t.elapsed());
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 9 / 10], v[v.len() - 1])
    };
    let (lm, _, lmax) = stats(&mut loads);
    let (om, _, omax) = stats(&mut one);
    let (m, p90, max) = stats(&mut e2e);
    println!("policies: {n}, quiet period: {} ms", quiet.as_millis());
    println!(
        "full load + compile: median {:.1} ms, max {:.1} ms ({} runs)",
        lm.as_secs_f64() * 1e3,
        lmax.as_secs_f64() * 1e3,
        loads.len()
    );
    println!(
        "reload of one changed file, in process: median {:.1} ms, max {:.1} ms ({} runs)",
        om.as_secs_f64() * 1e3,
        omax.as_secs_f64() * 1e3,
        one.len()
    );
    println!(
        "file change -> new set serving: median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({rounds} rounds)",
        m.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}
