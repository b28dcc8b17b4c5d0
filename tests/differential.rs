//! The safety net of the evaluator switch: every suite of the repository
//! (`tests/cases`, `policies/`, `examples/`) is decided by celgate's own
//! evaluator and by the `cel` crate's interpreter it replaces, and the two
//! decisions must be the same for every case: the response (status,
//! headers, body, metadata), the deciding policy and validation, whether an
//! error decided and in which expression, and the audit entries.
//!
//! Where the old interpreter was wrong (a conformance fix of the new
//! evaluator), the case is listed in [`KNOWN`] with why.

use celgate::engine::{Decision, Evaluator};
use celgate::suite;
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
