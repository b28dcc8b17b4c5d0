//! Runs every data-driven case under `tests/cases` and every suite shipped
//! beside the policies in `policies/` and `examples/`: policy files + request
//! + expected decision, one harness.

use celgate::suite;
use std::path::PathBuf;

fn run_all(root: &str, min_cases: usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(root);
    let suites = suite::find(std::slice::from_ref(&root)).unwrap_or_else(|e| panic!("{e}"));
    let mut total = 0;
    let mut failed = Vec::new();
    for (path, doc) in &suites {
        let results = suite::run(path, doc).unwrap_or_else(|e| panic!("{e}"));
        for r in results {
            total += 1;
            if !r.passed() {
                failed.push(format!(
                    "{} / {}:\n    {}",
                    r.file.display(),
                    r.case,
                    r.failures.join("\n    ")
                ));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(
        total >= min_cases,
        "only {total} cases found under {}: expected at least {min_cases}",
        root.display()
    );
}

#[test]
fn semantics_cases() {
    run_all("tests/cases", 100);
}

#[test]
fn bundled_policy_suites() {
    run_all("policies", 6);
}

#[test]
fn example_suites() {
    run_all("examples", 0);
}

/// Every policy file shipped in `policies/` and `examples/` is loaded by at
/// least one suite, so nothing ships untested.
#[test]
fn every_shipped_policy_has_a_suite() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let roots = [base.join("policies"), base.join("examples")];
    let suites = suite::find(&roots).unwrap_or_else(|e| panic!("{e}"));
    let mut covered = std::collections::BTreeSet::new();
    for (path, doc) in &suites {
        let dir = path.parent().expect("suite dir");
        let paths: Vec<PathBuf> = doc.policies.iter().map(|p| dir.join(p)).collect();
        for f in celgate::policy::load::policy_files(&paths).unwrap_or_else(|e| panic!("{e}")) {
            covered.insert(f.canonicalize().expect("canonical path"));
        }
    }
    let mut missing = Vec::new();
    for f in celgate::policy::load::policy_files(&roots).unwrap_or_else(|e| panic!("{e}")) {
        let docs = celgate::policy::load::read_documents(&f).unwrap_or_else(|e| panic!("{e}"));
        let is_policy = docs.iter().any(|d| {
            matches!(
                d.value.get("kind").and_then(|k| k.as_str()),
                Some("ValidatingPolicy" | "PolicyException")
            )
        });
        if is_policy && !covered.contains(&f.canonicalize().expect("canonical path")) {
            missing.push(f.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "policy files with no suite loading them: {missing:?}"
    );
    assert!(!covered.is_empty());
}
