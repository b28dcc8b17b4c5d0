//! Evaluation micro-benchmarks: one decision against a compiled policy set,
//! without the network. `cargo bench --bench evaluate`.

use celgate::engine::{evaluate, EngineConfig};
use celgate::policy::PolicySet;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::PathBuf;

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn request(
    path: &str,
    headers: serde_json::Value,
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    celgate::request_json::from_value(&serde_json::json!({
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "10.0.0.7", "portValue": 51234}}},
            "request": {"http": {
                "id": "4b8f8a8e-1c1a-4b7e-9a55-1d2b3c4d5e6f",
                "method": "GET", "path": path, "host": "api.example.com",
                "scheme": "https", "protocol": "HTTP/1.1", "headers": headers
            }}
        }
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let config = EngineConfig::default();
    let six = PolicySet::load(&[repo("benches/policies")]).unwrap();
    let allowed = request(
        "/api/orders?limit=10",
        serde_json::json!({
            "x-api-key": "k-alice-7f3a9c", "x-tenant": "acme",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench", "accept": "application/json",
            ":authority": "api.example.com", "x-request-id": "4b8f8a8e", "x-forwarded-proto": "https"
        }),
    );
    assert!(evaluate(&six, &config, &allowed).allowed());
    c.bench_function(
        "six policies, request passes all (allow + mutations)",
        |b| b.iter(|| evaluate(black_box(&six), &config, black_box(&allowed))),
    );
    let denied = request("/api/orders", serde_json::json!({"x-tenant": "acme"}));
    assert!(!evaluate(&six, &config, &denied).allowed());
    c.bench_function("six policies, missing key (early 401)", |b| {
        b.iter(|| evaluate(black_box(&six), &config, black_box(&denied)))
    });
    // The same request through a seventh policy that checks the source address with
    // `cidr().containsIP()` and a callback header with `url()`.
    let seven = PolicySet::load(&[repo("benches/policies-net"), repo("benches/policies")]).unwrap();
    let with_callback = request(
        "/api/orders?limit=10",
        serde_json::json!({
            "x-api-key": "k-alice-7f3a9c", "x-tenant": "acme",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench", "accept": "application/json",
            ":authority": "api.example.com", "x-request-id": "4b8f8a8e", "x-forwarded-proto": "https",
            "x-callback-url": "https://hooks.example.com/orders/done?id=7"
        }),
    );
    assert!(evaluate(&seven, &config, &with_callback).allowed());
    c.bench_function("six policies + cidr/url policy, request passes all", |b| {
        b.iter(|| evaluate(black_box(&seven), &config, black_box(&with_callback)))
    });
    let bundled = PolicySet::load(&[repo("policies")]).unwrap();
    let api = request(
        "/api/orders",
        serde_json::json!({"x-api-key": "demo-key-alice"}),
    );
    c.bench_function("bundled policies, api key allowed", |b| {
        b.iter(|| evaluate(black_box(&bundled), &config, black_box(&api)))
    });
    c.bench_function("compile the six bench policies", |b| {
        b.iter(|| PolicySet::load(black_box(&[repo("benches/policies")])).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
