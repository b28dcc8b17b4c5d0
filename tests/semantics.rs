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
