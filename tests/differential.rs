//! The safety net of the evaluator switch: celgate's own evaluator against
//! the `cel` crate's interpreter it replaces.
//!
//! * `every_suite_decides_the_same_on_both_evaluators`: every suite of the
//!   repository (`tests/cases`, `policies/`, `examples/`) is decided by both,
//!   and the two decisions must be the same for every case: the response
//!   (status, headers, body, metadata), the deciding policy and validation,
//!   whether an error decided and in which expression, and the audit
//!   entries. Where the old interpreter was wrong (a conformance fix of the
//!   new evaluator), the case is listed in [`KNOWN`] with why.
//! * `generated_expressions_evaluate_the_same_on_both_evaluators`: random
//!   expressions of the typed grammar of `tests/common/grammar.rs` (request
//!   fields, literals, operators, functions, comprehensions, optionals) are
//!   loaded as the variable `v` of a policy and evaluated on three requests
//!   (headers and an MCP body; neither; a text body) by both; the values of
//!   `v` in the two traces must be equal as JSON, or both be errors (error
//!   kinds may differ: the evaluation order of operands is not fixed; they
//!   are printed as notes). The classes of expressions on which the old
//!   interpreter is wrong are listed in [`KNOWN_GENERATED`], each with a
//!   rewrite that takes out exactly that difference. The cases are the same
//!   every run; `PROPTEST_CASES` runs more, `PROPTEST_RNG_SEED` others.

#[path = "common/grammar.rs"]
mod grammar;

use celgate::cel::ErrorKind;
use celgate::engine::{self, Decision, EngineConfig, Evaluator};
use celgate::policy::{load::parse_documents, PolicySet};
use celgate::suite;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use grammar::{Gen, Tape, TYPES};
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Cases whose decision changed on purpose: `suite file :: case` → why.
const KNOWN: &[(&str, &str)] = &[
    (
        "tests/cases/optional-errors/optional-errors.test.yaml :: .? on a value that has no fields is an error, as in cel-go",
        "the cel crate read `dyn(string).?field` as optional.none(); cel-go reports an error, which Fail denies",
    ),
    (
        "tests/cases/evaluator/evaluator.test.yaml :: a request map equals a map literal on either side",
        "the cel crate's map equality only knew its own maps: a literal on the left never equalled a request map",
    ),
    (
        "tests/cases/evaluator/evaluator.test.yaml :: an unset field read through a comprehension or cel.bind variable is its zero value",
        "the cel crate read an unset field through a variable as an error; cel-go reads its zero value",
    ),
    (
        "tests/cases/evaluator/evaluator.test.yaml :: two-variable macros over the request headers",
        "the cel crate has no two-variable comprehensions",
    ),
    (
        "tests/cases/evaluator/evaluator.test.yaml :: two-variable macros, no red tag",
        "the cel crate has no two-variable comprehensions",
    ),
    (
        "tests/cases/evaluator/evaluator.test.yaml :: the same walk over a longer list spends the request's budget and Fail denies",
        "the cel crate's interpreter has no run-time cost budget",
    ),
];

/// What must agree between the two evaluators.
fn essence(d: &Decision) -> String {
    let audit: Vec<String> = d
        .audit
        .iter()
        .map(|a| {
            format!(
                "{}:{}:{:?}:{}:{}",
                a.policy,
                a.status,
                a.validation,
                a.error.is_some(),
                a.enforced
            )
        })
        .collect();
    format!(
        "response={:?}\npolicy={:?} validation={:?}\nerror_in={:?}\naudit={audit:?}",
        d.response,
        d.policy,
        d.validation,
        d.error.as_ref().map(|e| e.field.clone())
    )
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn every_suite_decides_the_same_on_both_evaluators() {
    let suites =
        suite::find(&[repo("tests/cases"), repo("policies"), repo("examples")]).expect("suites");
    assert!(suites.len() >= 20, "suites found: {}", suites.len());
    let mut cases = 0;
    let mut differences = Vec::new();
    let mut kinds = Vec::new();
    let mut refused = 0;
    for (path, doc) in &suites {
        let new = suite::decisions(path, doc, Evaluator::Planned);
        let old = suite::decisions(path, doc, Evaluator::Legacy);
        let (new, old) = match (new, old) {
            (Ok(n), Ok(o)) => (n, o),
            (Err(a), Err(_)) => {
                // A suite whose policies do not load is refused by both
                // (tests/cases/refused-style suites expect that).
                println!("refused by both: {}: {a}", path.display());
                refused += 1;
                continue;
            }
            (n, o) => {
                differences.push(format!(
                    "{}: loads on one evaluator only: new {:?}, old {:?}",
                    path.display(),
                    n.err().map(|e| e.to_string()),
                    o.err().map(|e| e.to_string())
                ));
                continue;
            }
        };
        for ((name, n), (_, o)) in new.iter().zip(&old) {
            cases += 1;
            let id = format!(
                "{} :: {name}",
                path.strip_prefix(repo("")).unwrap_or(path).display()
            );
            if KNOWN.iter().any(|(k, _)| *k == id) {
                continue;
            }
            let (en, eo) = (essence(n), essence(o));
            if en != eo {
                differences.push(format!("{id}\n--- new\n{en}\n--- old\n{eo}"));
            } else if n.error.as_ref().map(|e| e.kind) != o.error.as_ref().map(|e| e.kind) {
                kinds.push(format!(
                    "{id}: error kind {:?} (old {:?})",
                    n.error.as_ref().map(|e| e.kind),
                    o.error.as_ref().map(|e| e.kind)
                ));
            }
        }
    }
    for k in &kinds {
        println!("note: {k}");
    }
    println!("{cases} cases compared, {refused} suites refused by both");
    assert!(cases >= 200, "cases compared: {cases}");
    assert!(refused <= 2, "suites refused by both: {refused}");
    assert!(
        differences.is_empty(),
        "{} of {cases} cases decide differently:\n\n{}",
        differences.len(),
        differences.join("\n\n")
    );
}

// ------------------------------------------------- random expressions

/// Classes of generated expressions on which the two evaluators differ
/// without the new one being wrong, each with a rewrite of the expression
/// that takes out exactly that difference: an expression on which the two
/// disagree is accepted when, rewritten by every class that applies to it,
/// the two agree (see [`Known`]). A rewrite returns `None` when its class
/// does not apply. Generated expressions put every operand in parentheses
/// and have no parentheses in string literals, which the rewrites rely on.
const KNOWN_GENERATED: &[Known] = &[
    Known {
        what: "old interpreter: `a.or(b)` and `a.orValue(b)` evaluate `b` (and fail \
               with it) even when `a` has a value; cel-go evaluates `b` only when `a` \
               is none",
        rewrite: lazy_or,
        both: false,
    },
    Known {
        what: "old interpreter: `string(double)` writes 1767225600 and 0.00001; cel-go \
               writes Go's %g: 1.7672256e+09 and 1e-05 (exponent form below 1e-4 and \
               from 1e6, +Inf, -Inf)",
        rewrite: string_of_double,
        both: true,
    },
    Known {
        what: "unspecified: the order in which `m.map(k, k)` lists a map's keys; the \
               old interpreter lists a request's header map in hash order (random), \
               the new one in key order (cel-go: Go's map order, random)",
        rewrite: sorted_keys,
        both: true,
    },
];

/// A class of known differences.
struct Known {
    /// The difference: the old interpreter's behaviour and cel-go's.
    what: &'static str,
    rewrite: fn(&str) -> Option<String>,
    /// false: the old interpreter evaluates the rewritten expression as
    /// cel-go (and the new evaluator) evaluate the original. true: the
    /// rewrite takes out what differs, and both evaluate it.
    both: bool,
}

/// `(a).or((b))` as `cel.bind(lhsN, (a), lhsN.hasValue() ? lhsN : (b))`,
/// `(a).orValue((b))` likewise with `lhsN.value()`.
fn lazy_or(expr: &str) -> Option<String> {
    let mut text = expr.to_owned();
    let mut n = 0;
    for (method, then) in [(").or((", ""), (").orValue((", ".value()")] {
        while let Some(at) = text.find(method) {
            let open = matching(&text, at, false)?;
            let arg = at + method.len() - 1;
            let close = matching(&text, arg, true)?;
            // The call's own closing parenthesis follows the argument's.
            if text.as_bytes().get(close + 1) != Some(&b')') {
                return None;
            }
            let (a, b) = (&text[open..=at], &text[arg..=close]);
            text = format!(
                "{}cel.bind(lhs{n}, {a}, lhs{n}.hasValue() ? lhs{n}{then} : {b}){}",
                &text[..open],
                &text[close + 2..]
            );
            n += 1;
        }
    }
    (n > 0).then_some(text)
}

/// `string((x))` as `'<double>'` when `x` is a double that Go's %g writes
/// in exponent form (or an infinity), else as before.
fn string_of_double(expr: &str) -> Option<String> {
    let mut text = expr.to_owned();
    let mut n = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("string((") {
        let at = from + found;
        from = at + 1;
        let before = text[..at].bytes().last();
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            continue;
        }
        let arg = at + "string(".len();
        let close = matching(&text, arg, true)?;
        if text.as_bytes().get(close + 1) != Some(&b')') {
            return None;
        }
        let x = &text[arg..=close];
        let d = format!("dyn(d{n})");
        text = format!(
            "{}cel.bind(d{n}, {x}, type(d{n}) == double && \
             !(math.abs({d}) < 1e6 && (math.abs({d}) >= 1e-4 || {d} == 0.0)) \
             ? '<double>' : string(d{n})){}",
            &text[..at],
            &text[close + 2..]
        );
        n += 1;
    }
    (n > 0).then_some(text)
}

/// `.map(k, k)` (a map's keys) as `.map(k, k).sort()`.
fn sorted_keys(expr: &str) -> Option<String> {
    expr.contains(".map(k, k)")
        .then(|| expr.replace(".map(k, k)", ".map(k, k).sort()"))
}

/// The index of the parenthesis matching the one at `at` in `s`, looking
/// forward from an opening one or back from a closing one.
fn matching(s: &str, at: usize, forward: bool) -> Option<usize> {
    let b = s.as_bytes();
    let (open, close) = if forward { (b'(', b')') } else { (b')', b'(') };
    let mut depth = 0usize;
    let mut i = at;
    loop {
        if b[i] == open {
            depth += 1;
        } else if b[i] == close {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
        i = if forward { i + 1 } else { i.checked_sub(1)? };
        if i >= b.len() {
            return None;
        }
    }
}

/// The known classes that explain a disagreement on `expr`: every class
/// whose rewrite applies rewrites it (those evaluated by both first), and
/// the new evaluator on the result must agree with the old one on the
/// result of all of them. `None` when they still disagree (or the
/// rewritten expression does not load).
fn explained(expr: &str, request: &CheckRequest) -> Option<Vec<&'static str>> {
    let mut met = Vec::new();
    let mut new_text = expr.to_owned();
    for k in KNOWN_GENERATED.iter().filter(|k| k.both) {
        if let Some(t) = (k.rewrite)(&new_text) {
            new_text = t;
            met.push(k.what);
        }
    }
    let mut old_text = new_text.clone();
    for k in KNOWN_GENERATED.iter().filter(|k| !k.both) {
        if let Some(t) = (k.rewrite)(&old_text) {
            old_text = t;
            met.push(k.what);
        }
    }
    if met.is_empty() {
        return None;
    }
    let load = |text: &str| {
        let docs = parse_documents(Path::new("rewritten.json"), &variable_policy(text)).ok()?;
        PolicySet::compile(docs).ok()
    };
    let new = outcome(&load(&new_text)?, Evaluator::Planned, request);
    let old = outcome(&load(&old_text)?, Evaluator::Legacy, request);
    new.agrees(&old).then_some(met)
}

/// What one evaluator made of the variable `v`: its value as JSON (made
/// comparable: see [`canonical`]), or the kind and message of its error.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Value(serde_json::Value),
    Error(ErrorKind, String),
}

impl Outcome {
    /// The same, but for the kind of error.
    fn agrees(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::Value(a), Outcome::Value(b)) => a == b,
            (Outcome::Error(..), Outcome::Error(..)) => true,
            _ => false,
        }
    }
}

/// A policy with the generated expression as its variable `v`, read by a
/// validation that returns no response whatever its value (and fails when
/// `v` fails).
fn variable_policy(expr: &str) -> String {
    serde_json::json!({
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": "generated"},
        "spec": {
            "evaluation": {"mode": "Envoy"},
            "variables": [{"name": "v", "expression": expr}],
            "validations": [{"expression": "size([variables.v]) == 1 ? null : null"}],
        },
    })
    .to_string()
}

/// The value of `v` in one evaluator's trace, or its error.
fn outcome(set: &PolicySet, evaluator: Evaluator, request: &CheckRequest) -> Outcome {
    let config = EngineConfig {
        evaluator,
        ..EngineConfig::default()
    };
    let (d, trace) = engine::evaluate_traced(set, &config, request);
    if let Some(e) = &d.error {
        return Outcome::Error(e.kind, e.detailed());
    }
    let v = trace
        .iter()
        .flat_map(|p| &p.variables)
        .find(|v| v.name == "v")
        .unwrap_or_else(|| panic!("no value of v in the trace: {trace:?}"));
    Outcome::Value(canonical(&v.result))
}

/// The traces' JSON, with the differences of representation between the
/// two evaluators' conversions taken out: timestamps (`Z` or `+00:00`)
/// become `Z`; a duration, which the old conversion cannot write (it writes
/// its type name), becomes `<duration>` on both; a double that is not a
/// number (`null` in the old conversion, its text in the new) `<nan>`.
fn canonical(j: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match j {
        J::String(s) => {
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                J::String(
                    t.with_timezone(&chrono::Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                )
            } else if s == "<google.protobuf.Duration>" || is_duration_text(s) {
                J::String("<duration>".into())
            } else if matches!(s.as_str(), "NaN" | "inf" | "-inf") {
                J::String("<nan>".into())
            } else {
                j.clone()
            }
        }
        J::Null => J::String("<nan>".into()),
        J::Array(a) => J::Array(a.iter().map(canonical).collect()),
        J::Object(o) => J::Object(o.iter().map(|(k, v)| (k.clone(), canonical(v))).collect()),
        other => other.clone(),
    }
}

/// Whether `s` reads as the new conversion writes a duration (`1.5s`).
fn is_duration_text(s: &str) -> bool {
    let Some(n) = s.strip_suffix('s') else {
        return false;
    };
    let n = n.strip_prefix('-').unwrap_or(n);
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// The requests every generated expression runs on: the grammar's (headers,
/// an MCP body), one with neither headers nor body, and one with other
/// headers and a body that is not JSON.
fn requests() -> Vec<(&'static str, CheckRequest)> {
    let bare = celgate::request_json::from_value(&serde_json::json!({"attributes": {
        "request": {"http": {"method": "GET", "path": "/", "host": "h"}}
    }}))
    .unwrap();
    let other = celgate::request_json::from_value(&serde_json::json!({"attributes": {
        "source": {"address": {"socketAddress": {"address": "::1", "portValue": 8080}}},
        "request": {"http": {
            "method": "get", "path": "", "host": "", "scheme": "http",
            "headers": {"x-a": "", "x-c": "a,b"},
            "body": "not json",
        }}
    }}))
    .unwrap();
    vec![
        ("the MCP request", grammar::request().clone()),
        ("a bare request", bare),
        ("a request with a text body", other),
    ]
}

#[test]
fn generated_expressions_evaluate_the_same_on_both_evaluators() {
    // `PROPTEST_CASES` runs more and `PROPTEST_RNG_SEED` other ones, as for
    // every proptest target; by default the same cases every run.
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let base = Config::default();
    let rng_seed = match base.rng_seed {
        RngSeed::Random => RngSeed::Fixed(0xce1_9a7e),
        fixed => fixed,
    };
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed,
        failure_persistence: None,
        ..base
    });
    let requests = requests();
    let compared = Cell::new(0u32);
    let errors = Cell::new(0u32);
    // Error kinds that differ, with the shortest expression of each.
    let notes = RefCell::new(BTreeMap::<String, String>::new());
    let skipped = RefCell::new(BTreeMap::<&str, u32>::new());
    let strategy = proptest::collection::vec(proptest::prelude::any::<u16>(), 0..120);
    let result = runner.run(&strategy, |choices| {
        let mut tape = Tape {
            choices: &choices,
            at: 0,
        };
        let depth = tape.pick(5) as u32;
        let t = TYPES[tape.pick(TYPES.len())];
        let g = Gen { tape: &mut tape }.gen(t, depth);
        let docs = parse_documents(Path::new("generated.json"), &variable_policy(&g.text))
            .map_err(|e| TestCaseError::fail(format!("{}: not a document: {e}", g.text)))?;
        // One policy set for both: what does not load is refused for both.
        let Ok(set) = PolicySet::compile(docs) else {
            return Ok(());
        };
        for (name, request) in &requests {
            let new = outcome(&set, Evaluator::Planned, request);
            let old = outcome(&set, Evaluator::Legacy, request);
            compared.set(compared.get() + 1);
            match (&new, &old) {
                (Outcome::Value(a), Outcome::Value(b)) if a == b => continue,
                (Outcome::Error(a, _), Outcome::Error(b, _)) => {
                    errors.set(errors.get() + 1);
                    if a != b {
                        let key = format!("error kind {} (old {})", a.as_str(), b.as_str());
                        let mut notes = notes.borrow_mut();
                        let e = notes.entry(key).or_insert_with(|| g.text.clone());
                        if g.text.len() < e.len() {
                            e.clone_from(&g.text);
                        }
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(met) = explained(&g.text, request) {
                let mut skipped = skipped.borrow_mut();
                for what in met {
                    *skipped.entry(what).or_default() += 1;
                }
                continue;
            }
            return Err(TestCaseError::fail(format!(
                "`{}` on {name}:\n  new: {new:?}\n  old: {old:?}",
                g.text
            )));
        }
        Ok(())
    });
    for (n, e) in notes.borrow().iter() {
        println!("note: {n}, e.g. `{e}`");
    }
    for (what, n) in skipped.borrow().iter() {
        println!("known difference, {n} evaluations: {what}");
    }
    println!(
        "{} evaluations compared ({} errors on both)",
        compared.get(),
        errors.get()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        compared.get() > cases,
        "only {} evaluations of {cases} expressions",
        compared.get()
    );
    assert!(
        errors.get() < compared.get() / 2,
        "{} of {} evaluations failed on both",
        errors.get(),
        compared.get()
    );
}
