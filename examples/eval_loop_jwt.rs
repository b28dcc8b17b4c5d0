//! Evaluates the identity example's two policies (`examples/identity/policies`:
//! an RS256 bearer token checked against the issuer's JWKS, then a role) on an
//! allowed request N times in a loop, for instruction counts under callgrind,
//! as `eval_loop` does for the six bench policies. The issuer's JWKS is
//! preloaded from `examples/identity/keys/jwks.json` and the token minted at
//! start, so nothing is fetched. Run from the repository root:
//!
//! ```text
//! cargo build --release --example eval_loop_jwt
//! valgrind --tool=callgrind target/release/examples/eval_loop_jwt 20000
//! valgrind --tool=callgrind target/release/examples/eval_loop_jwt 40000
//! ```
//! (instructions per evaluation = (I refs at 40000 - I refs at 20000) / 20000)

use celgate::engine::{evaluate, EngineConfig};
use celgate::policy::PolicySet;
use std::hint::black_box;

fn main() {
    let n: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 20_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("usage: eval_loop_jwt [N] ({e})");
            std::process::exit(2);
        }
    };
    let jwks = std::fs::read("examples/identity/keys/jwks.json")
        .unwrap_or_else(|e| panic!("run from the repository root: {e}"));
    celgate::identity::jwks::preload("https://issuer.example.com/.well-known/jwks.json", &jwks)
        .expect("the example JWKS loads");
    let spec: celgate::suite_token::TokenSpec = serde_yaml_ng::from_str(
        r#"{key: examples/identity/keys/issuer.pem, kid: issuer-1, expiresIn: 2h,
            claims: {iss: "https://issuer.example.com/", aud: orders-api, sub: alice, roles: [reader]}}"#,
    )
    .expect("the token spec parses");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs() as i64;
    let token = celgate::suite_token::mint(&spec, std::path::Path::new("."), now)
        .expect("the token is minted");
    let config = EngineConfig::default();
    let set = PolicySet::load(&["examples/identity/policies".into()]).expect("the policies load");
    let request = celgate::request_json::from_value(&serde_json::json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "10.0.0.7", "portValue": 51234}}},
            "request": {"http": {
                "id": "4b8f8a8e-1c1a-4b7e-9a55-1d2b3c4d5e6f",
                "method": "GET", "path": "/api/orders", "host": "api.example.com",
                "scheme": "https", "protocol": "HTTP/1.1", "headers": {
                    "authorization": format!("Bearer {token}"),
                    ":authority": "api.example.com", "x-request-id": "4b8f8a8e"
                }
            }}
        }
    }))
    .expect("the request parses");
    let allowed = (0..n)
        .filter(|_| evaluate(black_box(&set), &config, black_box(&request)).allowed())
        .count();
    assert_eq!(allowed, n, "every evaluation allows the request");
    println!("{n} evaluations");
}
