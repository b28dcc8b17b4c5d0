//! The policy selection index against the linear evaluation, on random
//! policy sets and requests.
//!
//! Random sets of policies (matchConditions on the host, the method, a
//! header, a path prefix, a context extension; `in` lists, conjunctions,
//! disjunctions; conditions the index cannot read; conditions that fail;
//! exceptions reading the policy's variables;
//! `failurePolicy` Fail and Ignore; `validationActions` Deny, Audit, Warn;
//! exceptions, some failing) are evaluated on random requests (matching
//! none, one or several policies; headers absent, text or bytes) with the
//! index and without (`EngineConfig::policy_index`): the decisions must be
//! equal in everything but `evaluated` (the policies looked at), which the
//! index lowers by design. The conditions the index proves true, and which
//! the engine therefore does not evaluate, are counted so that the
//! generator is known to reach them.
//!
//! The cases are the same every run; `PROPTEST_CASES` runs more,
//! `PROPTEST_RNG_SEED` others.

use celgate::engine::{self, EngineConfig};
use celgate::policy::{load::parse_documents, PolicySet};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::json;

/// Reads choices off a tape of random numbers (0 once it runs out).
struct Tape<'a>(&'a [u32], usize);

impl Tape<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let v = self.0.get(self.1).copied().unwrap_or(0);
        self.1 += 1;
        v as usize % n
    }

    fn one<'s>(&mut self, items: &[&'s str]) -> &'s str {
        items[self.pick(items.len())]
    }
}

const HTTP: &str = "object.attributes.request.http";

/// A condition: indexable or not, failing on some requests or not.
fn condition(t: &mut Tape<'_>) -> String {
    let host = || format!("{HTTP}.host");
    match t.pick(16) {
        0 | 1 => format!(r#"{} == "{}""#, host(), t.one(&["h0", "h1", "h2", "h3"])),
        2 => format!(r#""{}" == {}"#, t.one(&["h0", "h1"]), host()),
        3 => format!(r#"{} in ["h0", "{}"]"#, host(), t.one(&["h1", "h2"])),
        4 => format!(r#"{HTTP}.method == "{}""#, t.one(&["GET", "POST"])),
        5 => format!(
            r#"{HTTP}.headers["x-tenant"] == "{}""#,
            t.one(&["t0", "t1"])
        ),
        6 => format!(
            r#"{HTTP}.headers[?"x-tenant"].orValue("{}") == "t0""#,
            t.one(&["", "t0"])
        ),
        7 => format!(
            r#"{HTTP}.path.startsWith("{}")"#,
            t.one(&["/api/", "/a", "/"])
        ),
        8 => format!(
            r#"object.attributes.context_extensions["k"] == "{}""#,
            t.one(&["v", "w"])
        ),
        9 => format!("{} && {}", condition(t), condition(t)),
        10 => format!(
            r#"{}.host == "h0" || {}.host == "{}""#,
            HTTP,
            HTTP,
            t.one(&["h1", "h3"])
        ),
        11 => format!(r#"{HTTP}.path == "/b" || {HTTP}.path.startsWith("/api/")"#),
        // Not indexable.
        12 => format!(r#"{}.endsWith("{}")"#, host(), t.one(&["1", "h"])),
        13 => format!(r#"!({} == "h0")"#, host()),
        // Fails on some requests.
        14 => format!(r#"int({HTTP}.headers[?"x-n"].orValue("x")) == 1"#),
        _ => format!(r#"{HTTP}.headers["x-n"] == "1""#),
    }
}

fn validation(t: &mut Tape<'_>) -> String {
    match t.pick(6) {
        0 => "envoy.Denied(403).Response()".into(),
        1 => "envoy.Allowed().Response()".into(),
        2 => "null".into(),
        3 => r#"int("x") == 1 ? null : null"#.into(),
        4 => format!(
            r#"{HTTP}.headers[?"x-tenant"].orValue("") == "t1" ? envoy.Denied(401).Response() : null"#
        ),
        _ => format!(
            r#"variables.h == "h2" ? envoy.Denied(402).Response() : envoy.Allowed().WithHeader("x-by", "{}").Response()"#,
            t.pick(100)
        ),
    }
}

/// A policy set of 1–8 policies and 0–2 exceptions, as YAML.
fn policy_set(t: &mut Tape<'_>) -> String {
    let n = 1 + t.pick(8);
    let mut docs = Vec::new();
    for i in 0..n {
        let conditions: Vec<_> = (0..t.pick(4))
            .map(|c| json!({"name": format!("c{c}"), "expression": condition(t)}))
            .collect();
        let validations: Vec<_> = (0..1 + t.pick(2))
            .map(|_| json!({"expression": validation(t)}))
            .collect();
        let actions = match t.pick(6) {
            0 => json!(["Audit"]),
            1 => json!(["Warn"]),
            2 => json!(["Deny", "Audit"]),
            3 => json!(["Audit", "Warn"]),
            _ => json!(["Deny"]),
        };
        docs.push(json!({
            "apiVersion": "policies.kyverno.io/v1",
            "kind": "ValidatingPolicy",
            "metadata": {"name": format!("p{i}")},
            "spec": {
                "evaluation": {"mode": "Envoy"},
                "failurePolicy": if t.pick(3) == 0 { "Ignore" } else { "Fail" },
                "validationActions": actions,
                "matchConditions": conditions,
                "variables": [{"name": "h", "expression": format!("{HTTP}.host")}],
                "validations": validations,
            },
        }));
    }
    for e in 0..t.pick(3) {
        let refs: Vec<_> = (0..1 + t.pick(2))
            .map(|_| json!({"name": format!("p{}", t.pick(n)), "kind": "ValidatingPolicy"}))
            .collect();
        let mut refs_unique = refs.clone();
        refs_unique.dedup();
        let conditions: Vec<_> = (0..1 + t.pick(2))
            .map(|c| {
                let expression = match t.pick(4) {
                    0 => r#"variables.h.startsWith("h1")"#.to_owned(),
                    _ => condition(t),
                };
                json!({"name": format!("e{c}"), "expression": expression})
            })
            .collect();
        docs.push(json!({
            "apiVersion": "policies.kyverno.io/v1",
            "kind": "PolicyException",
            "metadata": {"name": format!("x{e}")},
            "spec": {
                "evaluationMode": "Envoy",
                "policyRefs": refs_unique,
                "matchConditions": conditions,
            },
        }));
    }
    docs.iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn request(t: &mut Tape<'_>) -> CheckRequest {
    let mut headers = serde_json::Map::new();
    match t.pick(4) {
        0 => {}
        1 => {
            headers.insert("x-tenant".into(), "t0".into());
        }
        2 => {
            headers.insert("x-tenant".into(), "t1".into());
        }
        _ => {
            headers.insert("x-tenant".into(), "t2".into());
        }
    }
    match t.pick(3) {
        0 => {}
        1 => {
            headers.insert("x-n".into(), "1".into());
        }
        _ => {
            headers.insert("x-n".into(), "x".into());
        }
    }
    let mut http = json!({
        "host": t.one(&["h0", "h1", "h2", "h3", "", "H0"]),
        "method": t.one(&["GET", "POST"]),
        "path": t.one(&["/api/x", "/a", "/b", "/", ""]),
        "headers": headers,
    });
    if t.pick(6) == 0 {
        // The headers as a header_map, x-tenant not UTF-8 (bytes).
        http["headers"] = json!({});
        http["headerMap"] = json!({"headers": [
            {"key": "x-tenant", "rawValue": "/w=="},
            {"key": "x-n", "value": "1"},
        ]});
    }
    let mut attributes = json!({"request": {"http": http}});
    match t.pick(3) {
        0 => {}
        1 => attributes["contextExtensions"] = json!({"k": "v"}),
        _ => attributes["contextExtensions"] = json!({"k": "w"}),
    }
    celgate::request_json::from_value(&json!({ "attributes": attributes })).unwrap()
}

fn compile(yaml: &str) -> PolicySet {
    let docs = parse_documents("set.yaml".as_ref(), yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    PolicySet::compile(docs).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// The decision and its error's full text, `evaluated` left out.
fn comparable(mut d: engine::Decision) -> (engine::Decision, Option<String>) {
    d.evaluated = 0;
    let detail = d.error.as_ref().map(|e| e.detailed());
    (d, detail)
}

#[test]
fn the_index_decides_as_the_linear_evaluation() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x1dec5);
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    });
    let on = EngineConfig {
        audit_header: Some("x-audit".into()),
        ..EngineConfig::default()
    };
    let off = EngineConfig {
        policy_index: false,
        ..on.clone()
    };
    let pruned = std::cell::Cell::new(0usize);
    let proven = std::cell::Cell::new(0usize);
    let decided_by_policy = std::cell::Cell::new(0usize);
    let tape = prop::collection::vec(any::<u32>(), 64..400);
    runner
        .run(&tape, |tape| {
            let mut t = Tape(&tape, 0);
            let yaml = policy_set(&mut t);
            let set = compile(&yaml);
            for _ in 0..8 {
                let r = request(&mut t);
                let with = engine::evaluate(&set, &on, &r);
                let without = engine::evaluate(&set, &off, &r);
                assert!(with.evaluated <= without.evaluated);
                pruned.set(pruned.get() + set.index.ruled_out(&set, &r).len());
                // Candidates whose indexed condition the index found true,
                // which the engine does not evaluate again.
                let mut walk = set.index.walk(set.policies.len(), Some(&r), false);
                proven.set(
                    proven.get()
                        + std::iter::from_fn(|| walk.next(false))
                            .filter(|(_, m)| matches!(m, celgate::policy::index::Mark::Proven(_)))
                            .count(),
                );
                decided_by_policy.set(decided_by_policy.get() + usize::from(with.policy.is_some()));
                prop_assert_eq!(
                    comparable(with),
                    comparable(without),
                    "policies:\n{}\nrequest: {:?}",
                    yaml,
                    r
                );
                // The trace lists every policy, the ruled-out ones as such,
                // and decides the same.
                let (traced, trace) = engine::evaluate_traced(&set, &on, &r);
                prop_assert_eq!(
                    comparable(traced),
                    comparable(engine::evaluate(&set, &on, &r))
                );
                let ruled_out = set.index.ruled_out(&set, &r);
                for tr in &trace {
                    if tr.outcome == "skipped by index" {
                        prop_assert!(ruled_out.contains(&tr.policy.as_str()));
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    // The generator exercises what it is for.
    let (pruned, decided) = (pruned.get(), decided_by_policy.get());
    assert!(pruned > cases as usize, "{pruned} policies ruled out");
    assert!(
        proven.get() > cases as usize,
        "{} conditions proven",
        proven.get()
    );
    assert!(decided > cases as usize, "{decided} decided by a policy");
}

fn policy(name: &str, failure: &str, conditions: &[&str], validation: &str) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": name},
        "spec": {
            "evaluation": {"mode": "Envoy"},
            "failurePolicy": failure,
            "matchConditions": conditions.iter().enumerate()
                .map(|(i, c)| json!({"name": format!("c{i}"), "expression": c}))
                .collect::<Vec<_>>(),
            "validations": [{"expression": validation}],
        },
    }))
    .unwrap()
}

/// Once the cost budget is spent every expression fails: a ruled-out
/// `Fail` policy after that point denies, as it does without the index.
#[test]
fn a_spent_budget_reaches_the_ruled_out_policies() {
    let yaml = [
        policy(
            "a-walk",
            "Ignore",
            &[],
            "lists.range(5000).all(i, i >= 0) ? null : null",
        ),
        policy(
            "b-other-tenant",
            "Fail",
            &[r#"object.attributes.request.http.host == "other""#],
            "envoy.Denied(401).Response()",
        ),
        policy(
            "c-this-tenant",
            "Fail",
            &[r#"object.attributes.request.http.host == "this""#],
            "envoy.Allowed().Response()",
        ),
    ]
    .join("\n---\n");
    let set = compile(&yaml);
    let r = celgate::request_json::from_value(
        &json!({"attributes": {"request": {"http": {"host": "this"}}}}),
    )
    .unwrap();
    assert_eq!(set.index.ruled_out(&set, &r), vec!["b-other-tenant"]);
    let tight = EngineConfig {
        cost_budget: 1_000,
        ..EngineConfig::default()
    };
    let with = engine::evaluate(&set, &tight, &r);
    let without = engine::evaluate(
        &set,
        &EngineConfig {
            policy_index: false,
            ..tight.clone()
        },
        &r,
    );
    assert_eq!(with.policy.as_deref(), Some("b-other-tenant"));
    assert!(with.error.is_some());
    assert_eq!(comparable(with), comparable(without));
    // Within the budget the ruled-out policy is not looked at.
    let d = engine::evaluate(&set, &EngineConfig::default(), &r);
    assert_eq!(d.policy.as_deref(), Some("c-this-tenant"));
    assert_eq!(d.evaluated, 2);
}

/// Exceptions come after the matchConditions (Kyverno's order): a failing
/// exception of a policy the index rules out is not evaluated, as it would
/// not be without the index; of a policy that matches, it fails under Fail.
#[test]
fn the_exceptions_of_a_ruled_out_policy_are_not_evaluated() {
    let exception = serde_json::to_string(&json!({
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "PolicyException",
        "metadata": {"name": "broken"},
        "spec": {
            "evaluationMode": "Envoy",
            "policyRefs": [{"name": "a-other-tenant", "kind": "ValidatingPolicy"}],
            "matchConditions": [{"name": "n",
                "expression": r#"int(object.attributes.request.http.headers[?"x-n"].orValue("x")) == 1"#}],
        },
    }))
    .unwrap();
    let yaml = [
        policy(
            "a-other-tenant",
            "Fail",
            &[r#"object.attributes.request.http.host == "other""#],
            "envoy.Denied(401).Response()",
        ),
        policy("b-allow", "Fail", &[], "envoy.Allowed().Response()"),
        exception,
    ]
    .join("\n---\n");
    let set = compile(&yaml);
    let this = celgate::request_json::from_value(
        &json!({"attributes": {"request": {"http": {"host": "this"}}}}),
    )
    .unwrap();
    assert_eq!(set.index.ruled_out(&set, &this), vec!["a-other-tenant"]);
    for index in [true, false] {
        let config = EngineConfig {
            policy_index: index,
            ..EngineConfig::default()
        };
        let (d, trace) = engine::evaluate_traced(&set, &config, &this);
        assert_eq!(d.policy.as_deref(), Some("b-allow"), "index {index}");
        assert!(d.error.is_none(), "index {index}");
        assert_eq!(trace[0].exception, None, "index {index}");
        let d = engine::evaluate(&set, &config, &this);
        assert_eq!(d.evaluated, if index { 1 } else { 2 }, "index {index}");
    }
    let (_, trace) = engine::evaluate_traced(&set, &EngineConfig::default(), &this);
    assert_eq!(trace[0].outcome, "skipped by index");
    // The tenant's own request reaches the exception, which fails.
    let other = celgate::request_json::from_value(
        &json!({"attributes": {"request": {"http": {"host": "other"}}}}),
    )
    .unwrap();
    let d = engine::evaluate(&set, &EngineConfig::default(), &other);
    assert_eq!(d.policy.as_deref(), Some("a-other-tenant"));
    assert!(d
        .error
        .as_ref()
        .is_some_and(|e| e.field.starts_with("PolicyException broken")));
}
