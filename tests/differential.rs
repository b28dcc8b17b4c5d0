//! Constant folding against no folding, on random expressions.
//!
//! When a policy loads, the planner computes what needs nothing of a
//! request: a call of a pure function on constants, a list or map literal
//! of constants, a comparison of constants (`celgate::cel::eval::plan`).
//! Folding must change no result. Random expressions of the typed grammar
//! of `tests/common/grammar.rs` (request fields, literals, operators,
//! functions, comprehensions, optionals) that load as the variable `v` of a
//! policy are planned twice, folded (as policies are) and not folded
//! (`plan::compile_unfolded`), and evaluated on three requests (headers and
//! an MCP body; neither; a text body). For each evaluation:
//!
//! * neither plan panics;
//! * the two agree: equal values of the same type, or errors of the same
//!   kind and message (an error is never folded away: the planner leaves a
//!   constant expression that fails to run at request time);
//! * the engine, which runs the folded plan with the request's budget,
//!   agrees with it: the value of `v` in its trace, or an error of the same
//!   kind in its decision.
//!
//! The cases are the same every run; `PROPTEST_CASES` runs more,
//! `PROPTEST_RNG_SEED` others.

#[path = "common/grammar.rs"]
mod grammar;

use celgate::cel::eval::{self, plan, Ctx, Meter, Value};
use celgate::engine::{self, EngineConfig};
use celgate::policy::{load::parse_documents, PolicySet};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use grammar::{Gen, Tape, TYPES};
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

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

/// The budget of the plan that is not folded: what the folded plan computed
/// when it loaded is computed at request time there, so it may spend more
/// than a request's budget.
const UNFOLDED_BUDGET: u64 = 1 << 40;

/// What one plan made of an expression on a request.
#[derive(Debug)]
enum Outcome {
    /// The value's type, its JSON (`None` when it has none) and its text.
    Value(String, Option<serde_json::Value>, String),
    Error(eval::ErrorKind, String),
}

impl Outcome {
    fn of(r: Result<Value<'_>, eval::Error>) -> Outcome {
        match r {
            Ok(v) => Outcome::Value(
                v.type_name().to_owned(),
                eval::value::to_json(&v),
                format!("{v:?}"),
            ),
            Err(e) => Outcome::Error(e.kind, e.message.clone()),
        }
    }

    fn agrees(&self, other: &Outcome) -> bool {
        match (self, other) {
            // JSON when the values have one, else their text.
            (Outcome::Value(ta, ja, da), Outcome::Value(tb, jb, db)) => {
                ta == tb && ja == jb && (ja.is_some() || da == db)
            }
            (Outcome::Error(ka, ma), Outcome::Error(kb, mb)) => ka == kb && ma == mb,
            _ => false,
        }
    }
}

/// Evaluates `program` on `request`, a panic reported as an error.
fn run(
    program: &eval::Program,
    request: &CheckRequest,
    budget: u64,
) -> Result<Outcome, TestCaseError> {
    catch_unwind(AssertUnwindSafe(|| {
        let mut ctx = Ctx::new(Some(request), Meter::new(budget));
        Outcome::of(program.eval(&mut ctx))
    }))
    .map_err(|_| TestCaseError::fail("evaluation panicked"))
}

#[test]
fn unfolded_plans_fold_nothing() {
    let parsed = celgate::cel::env().compile("size([1, 2]) + 1").unwrap();
    let folded = plan::compile(parsed.expression(), &|_| None).unwrap();
    let unfolded = plan::compile_unfolded(parsed.expression(), &|_| None).unwrap();
    assert!(matches!(folded.constant(), Some(Value::Int(3))));
    assert!(unfolded.constant().is_none());
    let mut ctx = Ctx::new(None, Meter::new(1_000));
    assert!(matches!(unfolded.eval(&mut ctx), Ok(Value::Int(3))));
    assert!(ctx.meter.used() > 0, "the unfolded plan runs its calls");
}

#[test]
fn generated_expressions_evaluate_the_same_folded_and_unfolded() {
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
    let config = EngineConfig::default();
    let compared = Cell::new(0u32);
    let errors = Cell::new(0u32);
    let folded_plans = Cell::new(0u32);
    let over_budget = Cell::new(0u32);
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
        // Only what loads as a policy (parsed, checked, planned) is compared.
        let Ok(set) = PolicySet::compile(docs) else {
            return Ok(());
        };
        let parsed = celgate::cel::env().compile(&g.text).map_err(|e| {
            TestCaseError::fail(format!("{}: loads but does not parse: {e}", g.text))
        })?;
        let folded = plan::compile(parsed.expression(), &|_| None)
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", g.text)))?;
        let unfolded = plan::compile_unfolded(parsed.expression(), &|_| None)
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", g.text)))?;
        if format!("{folded:?}") != format!("{unfolded:?}") {
            folded_plans.set(folded_plans.get() + 1);
        }
        for (name, request) in &requests {
            let fail = |what: &str| TestCaseError::fail(format!("`{}` on {name}: {what}", g.text));
            let f = run(&folded, request, config.cost_budget).map_err(|e| fail(&e.to_string()))?;
            if matches!(f, Outcome::Error(eval::ErrorKind::CostExceeded, _)) {
                // The unfolded plan spends more of a budget: nothing to compare.
                over_budget.set(over_budget.get() + 1);
                continue;
            }
            let u = run(&unfolded, request, UNFOLDED_BUDGET).map_err(|e| fail(&e.to_string()))?;
            compared.set(compared.get() + 1);
            if !f.agrees(&u) {
                return Err(fail(&format!("\n  folded:   {f:?}\n  unfolded: {u:?}")));
            }
            // The engine runs the folded plan: its trace says the same.
            let (d, trace) = catch_unwind(AssertUnwindSafe(|| {
                engine::evaluate_traced(&set, &config, request)
            }))
            .map_err(|_| fail("the engine panicked"))?;
            match (&f, &d.error) {
                (Outcome::Value(ty, json, _), None) => {
                    let v = trace
                        .iter()
                        .flat_map(|p| &p.variables)
                        .find(|v| v.name == "v")
                        .ok_or_else(|| fail("no value of v in the trace"))?;
                    let want = json.clone().unwrap_or_else(|| format!("<{ty}>").into());
                    if v.result != want {
                        return Err(fail(&format!("the engine traced {} for {want}", v.result)));
                    }
                }
                (Outcome::Error(kind, _), Some(e)) if e.kind == *kind || is_mcp(*kind, e.kind) => {
                    errors.set(errors.get() + 1);
                }
                (f, e) => {
                    return Err(fail(&format!(
                        "the plan gave {f:?}, the engine's decision {e:?}"
                    )))
                }
            }
        }
        Ok(())
    });
    println!(
        "{} evaluations compared ({} errors), {} of the expressions' plans folded, \
         {} evaluations over the budget",
        compared.get(),
        errors.get(),
        folded_plans.get(),
        over_budget.get()
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
        "{} of {} evaluations failed",
        errors.get(),
        compared.get()
    );
    assert!(
        folded_plans.get() > cases / 10,
        "folding changed only {} of {cases} plans: the comparison proves little",
        folded_plans.get()
    );
}

/// The engine reports a refusal of `mcp.Parse` as its own kind.
fn is_mcp(plan: eval::ErrorKind, engine: eval::ErrorKind) -> bool {
    plan == eval::ErrorKind::FunctionError && engine == eval::ErrorKind::McpParse
}
