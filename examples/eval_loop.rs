//! Evaluates the six bench policies' worst request (`benches/evaluate.rs`:
//! allowed, with mutations) N times in a loop, with nothing else around it:
//! for instruction counts under callgrind, where criterion's own work would
//! blur them. Run from the repository root; the difference between two
//! counts is the cost of the evaluations between them:
//!
//! ```text
//! cargo build --release --example eval_loop
//! valgrind --tool=callgrind target/release/examples/eval_loop 20000
//! valgrind --tool=callgrind target/release/examples/eval_loop 40000
//! ```
//! (instructions per evaluation = (I refs at 40000 - I refs at 20000) / 20000)
//!
//! With `THRASH_KB=K` (K > 0), the data caches are made cold before each
//! evaluation (one byte written in every 64-byte line of a K-kibibyte
//! buffer, as a request's network and HTTP/2 work evicts what the last
//! evaluation touched), each evaluation alone is timed, and the mean is
//! printed: how much of its time is the memory it reads.
//! `for kb in 0 1024 4096; do THRASH_KB=$kb target/release/examples/eval_loop 50000; done`
//! (`THRASH_KB=0` times the evaluations without thrashing).

use celgate::engine::{evaluate, EngineConfig};
use celgate::policy::PolicySet;
use std::hint::black_box;

fn main() {
    let n: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 20_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("usage: eval_loop [N] ({e})");
            std::process::exit(2);
        }
    };
    let config = EngineConfig::default();
    let six = PolicySet::load(&["benches/policies".into()])
        .unwrap_or_else(|e| panic!("run from the repository root: {e}"));
    let request = celgate::request_json::from_value(&serde_json::json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "10.0.0.7", "portValue": 51234}}},
            "request": {"http": {
                "id": "4b8f8a8e-1c1a-4b7e-9a55-1d2b3c4d5e6f",
                "method": "GET", "path": "/api/orders?limit=10", "host": "api.example.com",
                "scheme": "https", "protocol": "HTTP/1.1", "headers": {
                    "x-api-key": "k-alice-7f3a9c", "x-tenant": "acme",
                    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench",
                    "accept": "application/json", ":authority": "api.example.com",
                    "x-request-id": "4b8f8a8e", "x-forwarded-proto": "https"
                }
            }}
        }
    }))
    .expect("the request parses");
    let Some(kb) = std::env::var("THRASH_KB").ok() else {
        let allowed = (0..n)
            .filter(|_| evaluate(black_box(&six), &config, black_box(&request)).allowed())
            .count();
        assert_eq!(allowed, n, "every evaluation allows the request");
        println!("{n} evaluations");
        return;
    };
    let kb: usize = kb.parse().expect("THRASH_KB is a number of KiB");
    let mut buf = vec![0u8; kb * 1024];
    let mut spent = std::time::Duration::ZERO;
    for i in 0..n {
        for j in (0..buf.len()).step_by(64) {
            buf[j] = buf[j].wrapping_add(i as u8);
        }
        black_box(&buf);
        let t = std::time::Instant::now();
        let allowed = evaluate(black_box(&six), &config, black_box(&request)).allowed();
        spent += t.elapsed();
        assert!(allowed, "every evaluation allows the request");
    }
    println!(
        "{n} evaluations, THRASH_KB={kb}: {} ns each",
        spent.as_nanos() / n as u128
    );
}
