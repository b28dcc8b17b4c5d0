//! `jwt.Decode` micro-benchmarks: signature verification without the token
//! cache ("uncached") against a repeated token answered from it ("cached"),
//! for RS256 (RSA 2048) and ES256, directly and through a CEL expression.
//! `cargo bench --bench jwt`.

use cel::{Context, Value};
use celgate::identity::token::{decode, Keys};
use celgate::identity::{self, JwtConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::hint::black_box;

const RSA: &str = include_str!("../tests/keys/rsa.pem");
const RSA_PUB: &str = include_str!("../tests/keys/rsa.pub.pem");
const EC256: &str = include_str!("../tests/keys/ec256.pem");
const EC256_PUB: &str = include_str!("../tests/keys/ec256.pub.pem");

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "iss": "https://issuer.example", "sub": "alice", "aud": "api", "role": "admin",
        "exp": exp, "iat": exp - 3600, "scope": "orders:read orders:write",
        "groups": ["dev", "ops"]
    });
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "rs256",
            token(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap(),
            ),
            RSA_PUB,
        ),
        (
            "es256",
            token(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(EC256.as_bytes()).unwrap(),
            ),
            EC256_PUB,
        ),
    ];
    let mut g = c.benchmark_group("jwt");
    for (name, token, public) in &cases {
        identity::configure(JwtConfig {
            token_cache_size: 0,
            ..JwtConfig::default()
        });
        let key = identity::keys::prepared(public).unwrap();
        assert!(decode(token, Keys::One(&key)).valid);
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| decode(black_box(token), Keys::One(&key)).valid)
        });
        identity::configure(JwtConfig::default());
        let key = identity::keys::prepared(public).unwrap();
        assert!(decode(token, Keys::One(&key)).valid);
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| decode(black_box(token), Keys::One(&key)).valid)
        });

        // The whole CEL call as a policy writes it: key string lookup,
        // cache hit, result value, optional claim access.
        let env = celgate::cel::env().clone();
        let program = env
            .compile(r#"jwt.Decode(token, key).Claims.?role.orValue("") == "admin""#)
            .unwrap();
        let mut ctx = Context::with_env(env);
        ctx.add_variable_from_value("token", token.clone());
        ctx.add_variable_from_value("key", public.to_string());
        assert_eq!(program.execute(&ctx), Ok(Value::Bool(true)));
        g.bench_function(format!("{name}/cel_cached"), |b| {
            b.iter(|| program.execute(black_box(&ctx)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
