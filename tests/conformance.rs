//! CEL conformance: the official cel-spec "simple" test data, vendored in
//! `tests/cel-spec/` (JSON, see its README), run through celgate's CEL.
//!
//! Each test that applies here is loaded as a policy would be: its
//! expression becomes the one variable of a `ValidatingPolicy` that
//! `PolicySet::compile` loads (parse, limits, type check, cost), and, once
//! loaded, it is evaluated by celgate's evaluator (`celgate::cel::eval`),
//! as the engine evaluates a variable. A test
//! passes when the value is the expected one (CEL equality: a NaN matches a
//! NaN, maps compare whatever their order), or, when an error is expected,
//! when evaluation fails or the policy is refused at load time.
//!
//! Not applicable here (counted, not run): tests with bindings or
//! declarations (a policy has no free variables besides `object` and
//! `variables`), with a container, tests that only check the deduced type,
//! tests run with the type checker off (celgate checks every expression when
//! its policy loads), tests that build a protobuf message in the expression
//! (`google.protobuf.Int64Value{...}`), and tests whose expression or
//! expected value needs a protobuf message or enum of the conformance suite
//! (`cel.expr.conformance.…`).
//!
//! Measured on this harness: 1574 of the 2456 tests apply; celgate's
//! evaluator passes 1566, the `cel` crate's interpreter it replaced 1479.
//!
//! The outcome is pinned in `tests/cel-spec/expected-pass.txt`
//! (`file/section/test`, one per line): the test fails when a listed test no
//! longer passes, and when a test that is not listed now passes, so that the
//! list only changes deliberately. `CELGATE_BLESS=1 cargo test --test
//! conformance` rewrites it. A panic in the evaluator is caught per test and
//! counted as a failure.

use base64::Engine as _;
use celgate::cel::eval::ctx::DEFAULT_BUDGET;
use celgate::cel::eval::{Ctx, Meter, Value};
use celgate::policy::{load::parse_documents, PolicySet};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cel-spec")
}

const EXPECTED: &str = "expected-pass.txt";

/// What became of one applicable test.
enum Outcome {
    /// The expected value.
    Value,
    /// An expected error, raised when evaluating.
    EvalError,
    /// An expected error: the policy was refused at load time.
    Refused,
    /// Anything else, with why.
    Fail(String),
    /// A panic while loading or evaluating.
    Panic(String),
}

static MESSAGE_LITERAL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"google\.protobuf\.[A-Za-z0-9]+\s*\{").expect("a valid pattern")
});

/// Why a test does not apply here, or `None` when it does.
fn not_applicable(t: &Json) -> Option<&'static str> {
    let non_empty = |k: &str| match &t[k] {
        Json::Object(m) => !m.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::String(s) => !s.is_empty(),
        _ => false,
    };
    if non_empty("bindings") {
        return Some("bindings");
    }
    if non_empty("type_env") {
        return Some("declarations");
    }
    if non_empty("container") {
        return Some("container");
    }
    if t["check_only"] == json!(true) {
        return Some("type deduction only");
    }
    // The test runs its expression with the type checker off, to see what
    // an ill-typed expression does at run time; celgate checks every
    // expression when its policy loads and refuses those.
    if t["disable_check"] == json!(true) {
        return Some("type checking disabled");
    }
    // Protobuf messages built in the expression (`google.protobuf.Int64Value{...}`,
    // `google.protobuf.Struct{...}`): a policy reads the request's messages
    // but builds none.
    if t["expr"]
        .as_str()
        .is_some_and(|e| MESSAGE_LITERAL.is_match(e))
    {
        return Some("message literal");
    }
    // Some parse tests split the message name with spaces and comments.
    if t["expr"]
        .as_str()
        .is_some_and(|e| e.contains("conformance"))
    {
        return Some("conformance messages");
    }
    let expected = t.get("value").or_else(|| t.get("typed_result"));
    if expected.is_some_and(|v| {
        let s = v.to_string();
        s.contains("\"object\"") || s.contains("\"enum\"")
    }) {
        return Some("message or enum value");
    }
    None
}

/// A policy whose one variable is `expr`.
fn policy(expr: &str) -> String {
    json!({
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": "conformance"},
        "spec": {
            "evaluation": {"mode": "Envoy"},
            "variables": [{"name": "v", "expression": expr}],
            "validations": [{"expression": "null"}],
        },
    })
    .to_string()
}

fn run(t: &Json) -> Outcome {
    let expr = t["expr"].as_str().unwrap_or_default();
    let want_error = t["result_kind"] == json!("eval_error");
    let docs = match parse_documents(Path::new("conformance.json"), &policy(expr)) {
        Ok(d) => d,
        Err(e) => return Outcome::Fail(format!("not a policy document: {e}")),
    };
    let set = match PolicySet::compile(docs) {
        Ok(set) => set,
        Err(e) if want_error => {
            let _ = e;
            return Outcome::Refused;
        }
        Err(e) => {
            let why = e.to_string();
            return Outcome::Fail(format!(
                "refused at load: {}",
                why.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    };
    let Some(policy) = set.policies.first() else {
        return Outcome::Fail("the policy did not load".into());
    };
    let mut ctx = Ctx::new(None, Meter::new(DEFAULT_BUDGET));
    ctx.enter_policy(&policy.plans.variables);
    let got = ctx.variable(0);
    match (got, want_error) {
        (Err(_), true) => Outcome::EvalError,
        (Ok(v), true) => Outcome::Fail(format!("expected an error, got {v:?}")),
        (Err(e), false) => Outcome::Fail(format!("error: {e}")),
        (Ok(v), false) => {
            let want = match t["result_kind"].as_str() {
                Some("value") => &t["value"],
                Some("typed_result") => &t["typed_result"]["value"],
                other => return Outcome::Fail(format!("unknown result kind {other:?}")),
            };
            match equal(want, &v) {
                Ok(true) => Outcome::Value,
                Ok(false) => Outcome::Fail(format!("expected {want}, got {v:?}")),
                Err(why) => Outcome::Fail(format!("expected {want}, got {v:?} ({why})")),
            }
        }
    }
}

fn int_of(s: &Json) -> Result<i64, String> {
    s.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad int {s}"))
}

fn uint_of(s: &Json) -> Result<u64, String> {
    s.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad uint {s}"))
}

fn double_of(d: &Json) -> Result<f64, String> {
    match d {
        Json::Number(n) => n.as_f64().ok_or_else(|| format!("bad double {d}")),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => s.parse().map_err(|_| format!("bad double {d}")),
        },
        _ => Err(format!("bad double {d}")),
    }
}

fn key_of(want: &Json) -> Result<Value<'static>, String> {
    let (tag, v) = tagged(want)?;
    Ok(match tag {
        "int" => Value::Int(int_of(v)?),
        "uint" => Value::Uint(uint_of(v)?),
        "bool" => Value::Bool(v.as_bool().ok_or("bad bool")?),
        "string" => Value::string(v.as_str().ok_or("bad string")?),
        _ => return Err(format!("map key {want}")),
    })
}

fn tagged(want: &Json) -> Result<(&str, &Json), String> {
    match want.as_object() {
        Some(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one entry");
            Ok((k.as_str(), v))
        }
        _ => Err(format!("not a tagged value: {want}")),
    }
}

/// CEL equality of a tagged expected value and a value, types included.
fn equal(want: &Json, got: &Value<'_>) -> Result<bool, String> {
    let (tag, w) = tagged(want)?;
    Ok(match (tag, got) {
        ("null", Value::Null) => true,
        ("bool", Value::Bool(b)) => w.as_bool() == Some(*b),
        ("int", Value::Int(i)) => int_of(w)? == *i,
        ("uint", Value::Uint(u)) => uint_of(w)? == *u,
        ("double", Value::Double(f)) => {
            let d = double_of(w)?;
            (d.is_nan() && f.is_nan()) || d == *f
        }
        ("string", Value::String(s)) => w.as_str() == Some(s.as_str()),
        ("bytes", Value::Bytes(b)) => {
            let d = base64::engine::general_purpose::STANDARD
                .decode(w.as_str().ok_or("bad bytes")?)
                .map_err(|e| e.to_string())?;
            d == b.as_bytes()
        }
        ("type", Value::Type(t)) => w.as_str() == Some(t.name()),
        ("list", Value::List(items)) => {
            let w = w.as_array().ok_or("bad list")?;
            if w.len() != items.len() {
                return Ok(false);
            }
            for (a, b) in w.iter().zip(items.iter()) {
                if !equal(a, b)? {
                    return Ok(false);
                }
            }
            true
        }
        ("map", Value::Map(m)) => {
            let w = w.as_array().ok_or("bad map")?;
            if w.len() != m.len() {
                return Ok(false);
            }
            for pair in w {
                let (k, v) = match pair.as_array().map(Vec::as_slice) {
                    Some([k, v]) => (k, v),
                    _ => return Err(format!("bad map entry {pair}")),
                };
                match m.get(&key_of(k)?) {
                    Some(g) if equal(v, &g)? => {}
                    _ => return Ok(false),
                }
            }
            true
        }
        _ => false,
    })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".into())
}

#[derive(Default)]
struct Counts {
    tests: usize,
    applicable: usize,
    passed: usize,
    refused: usize,
    panics: usize,
}

#[test]
fn conformance() {
    // Deeply nested expressions of the parse tests need the stack a
    // policy load gets.
    let report = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(run_all)
        .expect("a thread")
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    if let Err(e) = report {
        panic!("{e}");
    }
}

fn run_all() -> Result<(), String> {
    let dir = data_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/cel-spec")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "conformance data missing: {files:?}");

    // The panic hook would print every caught panic; keep one line each.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));

    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut passing = BTreeSet::new();
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    let mut panics = Vec::new();
    let mut total = 0;
    let double_as_text =
        regex::Regex::new(r#""double": (-?[0-9][0-9.eE+-]*)"#).expect("a valid pattern");
    // Upstream repeats a few names within a section: the second is `#2`.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for path in &files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).expect("readable data");
        // serde_json's default number parsing can be one ulp off; doubles
        // are read as text and parsed by Rust, which rounds correctly.
        let text = double_as_text.replace_all(&text, "\"double\": \"$1\"");
        let data: Json = serde_json::from_str(&text).expect("valid JSON");
        let c = counts.entry(stem.clone()).or_default();
        for t in data["tests"].as_array().expect("tests") {
            total += 1;
            c.tests += 1;
            if not_applicable(t).is_some() {
                continue;
            }
            c.applicable += 1;
            let mut id = format!(
                "{stem}/{}/{}",
                t["section"].as_str().unwrap_or_default(),
                t["name"].as_str().unwrap_or_default()
            );
            let n = seen.entry(id.clone()).or_default();
            *n += 1;
            if *n > 1 {
                id = format!("{id}#{n}");
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| run(t)))
                .unwrap_or_else(|p| Outcome::Panic(panic_message(p.as_ref())));
            match outcome {
                Outcome::Value | Outcome::EvalError => {}
                Outcome::Refused => c.refused += 1,
                Outcome::Fail(why) => {
                    failures.insert(id, why);
                    continue;
                }
                Outcome::Panic(msg) => {
                    c.panics += 1;
                    panics.push(format!("{id}: {} — {msg}", t["expr"]));
                    failures.insert(id, format!("panic: {msg}"));
                    continue;
                }
            }
            c.passed += 1;
            passing.insert(id);
        }
    }
    std::panic::set_hook(hook);
    assert_eq!(total, 2456, "the vendored data has 2456 tests");

    println!(
        "{:<16} {:>6} {:>10} {:>7} {:>7} {:>14} {:>7}",
        "file", "tests", "applicable", "passed", "failed", "(load refusal)", "panics"
    );
    let mut sum = Counts::default();
    for (f, c) in &counts {
        println!(
            "{f:<16} {:>6} {:>10} {:>7} {:>7} {:>14} {:>7}",
            c.tests,
            c.applicable,
            c.passed,
            c.applicable - c.passed,
            c.refused,
            c.panics
        );
        sum.tests += c.tests;
        sum.applicable += c.applicable;
        sum.passed += c.passed;
        sum.refused += c.refused;
        sum.panics += c.panics;
    }
    println!(
        "{:<16} {:>6} {:>10} {:>7} {:>7} {:>14} {:>7}",
        "total",
        sum.tests,
        sum.applicable,
        sum.passed,
        sum.applicable - sum.passed,
        sum.refused,
        sum.panics
    );
    for p in &panics {
        println!("PANIC {p}");
    }
    if std::env::var_os("CONFORMANCE_VERBOSE").is_some() {
        for (id, why) in &failures {
            println!("FAIL {id}: {why}");
        }
    }

    let expected_path = dir.join(EXPECTED);
    if std::env::var_os("CELGATE_BLESS").is_some() {
        let mut out = String::new();
        for id in &passing {
            out.push_str(id);
            out.push('\n');
        }
        std::fs::write(&expected_path, out).expect("write expected-pass.txt");
        println!("wrote {} passing tests to {}", passing.len(), EXPECTED);
        return Ok(());
    }
    let listed: BTreeSet<String> = std::fs::read_to_string(&expected_path)
        .map_err(|e| format!("{EXPECTED}: {e} (CELGATE_BLESS=1 writes it)"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let regressed: Vec<_> = listed.difference(&passing).collect();
    let new: Vec<_> = passing.difference(&listed).collect();
    let mut msg = String::new();
    if !regressed.is_empty() {
        msg.push_str(&format!(
            "{} listed tests no longer pass:\n",
            regressed.len()
        ));
        for id in &regressed {
            let why = failures.get(*id).map_or("not run", String::as_str);
            msg.push_str(&format!("  {id}: {why}\n"));
        }
    }
    if !new.is_empty() {
        msg.push_str(&format!(
            "{} tests pass that {EXPECTED} does not list; add these lines (or run with CELGATE_BLESS=1):\n",
            new.len()
        ));
        for id in &new {
            msg.push_str(&format!("{id}\n"));
        }
    }
    if msg.is_empty() {
        Ok(())
    } else {
        Err(msg)
    }
}
