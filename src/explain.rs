//! A readable account of one decision, for `celgate check --explain`.

use crate::engine::{Decision, ExprTrace, PolicyTrace};
use crate::policy::PolicySet;
use std::fmt::Write as _;

/// Renders what each policy did and which one decided.
///
/// ```text
/// 3 policies, evaluated in name order:
///
/// allow-public-paths: skipped (a matchCondition is false)
///   matchCondition public-path = false
/// require-api-key: decided
///   variable key = "demo-key-bob" (evaluated once)
///   validations[0] = null
///   validations[1] = {"okResponse":{...},"status":{"code":0}}
///
/// decision: allowed by policy require-api-key, spec.validations[1]
/// ```
pub fn render(set: &PolicySet, decision: &Decision, traces: &[PolicyTrace]) -> String {
    let mut out = String::new();
    let n = set.policies.len();
    let _ = writeln!(
        out,
        "{n} {}, evaluated in name order:",
        if n == 1 { "policy" } else { "policies" }
    );
    out.push('\n');
    for t in traces {
        let outcome = match t.outcome.as_str() {
            "skipped" => "skipped (a matchCondition is false)".to_owned(),
            "skipped by index" => format!(
                "skipped by the policy index, not evaluated (a matchCondition is false: indexed on {})",
                set.selection(&t.policy)
                    .map(|s| s.describe())
                    .unwrap_or_else(|| "?".to_owned())
            ),
            "exempted" => format!(
                "exempted by PolicyException {}",
                t.exception.as_deref().unwrap_or("?")
            ),
            "no result" => "no result (every validation returned null)".to_owned(),
            "error (ignored)" => "evaluation error, ignored (failurePolicy: Ignore)".to_owned(),
            "error (denied)" => "evaluation error, request denied (failurePolicy: Fail)".to_owned(),
            "would deny (not enforced)" => format!(
                "would deny: recorded, not enforced (validationActions {}); evaluation goes on",
                actions(set, &t.policy)
            ),
            "allow (not enforced)" => format!(
                "allow, not enforced (validationActions {}): it does not decide; evaluation goes on",
                actions(set, &t.policy)
            ),
            "error (not enforced)" => format!(
                "evaluation error: recorded, not enforced (validationActions {}); evaluation goes on",
                actions(set, &t.policy)
            ),
            other => other.to_owned(),
        };
        let _ = writeln!(out, "{}: {outcome}", t.policy);
        if let Some(p) = set.get(&t.policy) {
            let _ = writeln!(out, "  from {}", p.location);
        }
        if let (Some(x), true) = (&t.exception, t.outcome.starts_with("error")) {
            let _ = writeln!(out, "  the error is in a condition of PolicyException {x}");
        }
        lines(&mut out, "matchCondition", &t.match_conditions);
        lines(&mut out, "variable", &t.variables);
        lines(&mut out, "", &t.validations);
    }
    let ruled_out = traces
        .iter()
        .filter(|t| t.outcome == "skipped by index")
        .count();
    if ruled_out > 0 {
        let _ = writeln!(
            out,
            "the policy index ruled out {ruled_out} of them without evaluating their matchConditions"
        );
    }
    let not_reached: Vec<&str> = set
        .policies
        .iter()
        .skip(traces.len())
        .map(|p| p.name.as_str())
        .collect();
    if !not_reached.is_empty() {
        let _ = writeln!(
            out,
            "not evaluated (an earlier policy decided): {}",
            not_reached.join(", ")
        );
    }
    out.push('\n');
    let verdict = if decision.allowed() {
        "allowed".to_owned()
    } else {
        format!("denied with HTTP {}", decision.http_status())
    };
    match (&decision.policy, decision.validation, &decision.error) {
        (Some(p), Some(i), _) => {
            let _ = writeln!(
                out,
                "decision: {verdict} by policy {p}, spec.validations[{i}]"
            );
        }
        (Some(p), None, Some(e)) => {
            // The user's own machine: the full message, request values included.
            let _ = writeln!(
                out,
                "decision: {verdict} because policy {p} failed to evaluate (failurePolicy: Fail): {} [{}]",
                e.detailed(),
                e.kind
            );
        }
        (None, _, Some(e)) => {
            let _ = writeln!(
                out,
                "decision: {verdict} because the request could not be decided: {}",
                e.detailed()
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "decision: {verdict}: no policy returned a response, so the request is allowed"
            );
        }
    }
    for a in &decision.audit {
        let what = match (&a.error, a.validation) {
            (Some(e), _) => format!("failed to evaluate ({e})"),
            (None, Some(i)) => format!("spec.validations[{i}]"),
            (None, None) => String::new(),
        };
        let verb = if a.enforced {
            "denied"
        } else {
            "would have denied"
        };
        let warned = if a.warned {
            "; the client is warned"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "audit: policy {} {verb} with HTTP {}: {what} (validationActions {}){warned}",
            a.policy,
            a.status,
            actions(set, &a.policy)
        );
    }
    out
}

/// A policy's `validationActions`, as written.
fn actions(set: &PolicySet, policy: &str) -> String {
    set.get(policy)
        .map(|p| p.actions.describe())
        .unwrap_or_else(|| "?".to_owned())
}

fn lines(out: &mut String, label: &str, items: &[ExprTrace]) {
    for e in items {
        let value = match &e.result {
            serde_json::Value::String(s) if s.starts_with("error: ") => s.clone(),
            v => v.to_string(),
        };
        let times = match e.evaluations {
            Some(1) => " (evaluated once)".to_owned(),
            Some(n) => format!(" (evaluated {n} times)"),
            None => String::new(),
        };
        let name = if label.is_empty() {
            e.name.clone()
        } else {
            format!("{label} {}", e.name)
        };
        let _ = writeln!(out, "  {name} = {value}{times}");
    }
}
