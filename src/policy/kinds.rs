//! Which documents are celgate's, which belong to something else, and which
//! look like celgate's with a typo.
//!
//! Skipping a document is safe only when it really is someone else's: a
//! policy skipped because of a typo in its kind or mode checks nothing, and
//! the requests it should deny are let through. So the line is drawn by
//! closeness: a value that matches one celgate reads except for letter case
//! or a few letters (`mode: envoy`, `mode: Enovy`, `kind:
//! ValidatingPolicies`, `apiVersion: policy.kyverno.io/v1`), or a kind of
//! `policies.kyverno.io` that Kyverno does not define, is an error. Known
//! kinds of other tools, Kyverno's other policy kinds and the other
//! evaluation modes (`Kubernetes`, `JSON`) are skipped with a warning, as
//! before. celgate serves two modes: `Envoy` and `HTTP`.

use super::edit_distance;
use super::model::{API_VERSIONS, POLICY_GROUP};
use serde_json::Value;

/// The kinds celgate serves.
pub const OUR_KINDS: [&str; 2] = ["ValidatingPolicy", "PolicyException"];

/// Kyverno's other kinds in `policies.kyverno.io`: not ours, skipped.
pub const OTHER_KYVERNO_KINDS: [&str; 10] = [
    "NamespacedValidatingPolicy",
    "ImageValidatingPolicy",
    "NamespacedImageValidatingPolicy",
    "MutatingPolicy",
    "NamespacedMutatingPolicy",
    "GeneratingPolicy",
    "NamespacedGeneratingPolicy",
    "DeletingPolicy",
    "NamespacedDeletingPolicy",
    "ValidatingPolicyBinding",
];

/// The evaluation modes celgate serves.
pub const ENVOY: &str = "Envoy";
pub const HTTP: &str = "HTTP";

/// Kyverno's other evaluation modes: not ours, skipped.
pub const OTHER_MODES: [&str; 2] = ["Kubernetes", "JSON"];

/// Whether `value` is `target` or a near miss of it: equal ignoring ASCII
/// case, or within a few edits (2, or a fifth of the target's length for
/// long names: `ValidatingPolicies` is 3 edits from `ValidatingPolicy`).
pub fn near(value: &str, target: &str) -> bool {
    let (v, t) = (
        value.trim().to_ascii_lowercase(),
        target.to_ascii_lowercase(),
    );
    v == t || edit_distance(&v, &t) <= (t.chars().count() / 5).max(2)
}

/// The closest of `known` to `value`, when it is a near miss.
pub fn closest<'a>(value: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let v = value.trim().to_ascii_lowercase();
    known
        .into_iter()
        .filter(|k| near(value, k))
        .min_by_key(|k| edit_distance(&v, &k.to_ascii_lowercase()))
}

/// What to do with a document, from its `apiVersion` and `kind`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A ValidatingPolicy or PolicyException celgate reads.
    Ours(&'static str),
    /// Someone else's document: skip it, with this warning.
    NotOurs(String),
    /// Meant for celgate, but misspelt: an error.
    Misspelt {
        /// The kind it was most likely meant to be (or `document`).
        kind: &'static str,
        field: &'static str,
        message: String,
    },
}

/// `group/version`, or a bare `version` of the core group. A bare value with
/// a dot is a group that lacks its version.
fn split_api(api: &str) -> (&str, &str) {
    match api.split_once('/') {
        Some((g, v)) => (g, v),
        None if api.contains('.') => (api, ""),
        None => ("", api),
    }
}

/// The mode a document declares: `spec.evaluation.mode` (policies) or
/// `spec.evaluationMode` (exceptions).
fn declared_mode(doc: &Value) -> Option<&str> {
    doc.pointer("/spec/evaluation/mode")
        .or_else(|| doc.pointer("/spec/evaluationMode"))
        .and_then(Value::as_str)
}

fn our_kind(kind: &str) -> Option<&'static str> {
    OUR_KINDS.iter().copied().find(|k| near(kind, k))
}

fn expected_api() -> String {
    format!(
        "{POLICY_GROUP}/{} (or {})",
        API_VERSIONS[0],
        API_VERSIONS[1..].join(", ")
    )
}

pub fn classify(api_version: Option<&str>, kind: Option<&str>, doc: &Value) -> Verdict {
    let api = api_version.unwrap_or("");
    let (group, version) = split_api(api);
    let kind = kind.unwrap_or("");
    let shown_api = if api.is_empty() {
        "(no apiVersion)"
    } else {
        api
    };
    let not_ours = || {
        Verdict::NotOurs(format!(
            "skipped: {shown_api} {kind:?} is not served by celgate"
        ))
    };
    if group == POLICY_GROUP {
        if let Some(k) = OUR_KINDS.iter().copied().find(|k| *k == kind) {
            return if API_VERSIONS.contains(&version) {
                Verdict::Ours(k)
            } else {
                Verdict::Misspelt {
                    kind: k,
                    field: "apiVersion",
                    message: format!(
                        "{api:?} is not a version celgate reads: use {}",
                        expected_api()
                    ),
                }
            };
        }
        if OTHER_KYVERNO_KINDS.contains(&kind) {
            return not_ours();
        }
        let all = OUR_KINDS.iter().chain(&OTHER_KYVERNO_KINDS).copied();
        let message = match closest(kind, all) {
            Some(k) => format!("{kind:?} is not a kind of {POLICY_GROUP}: did you mean {k}?"),
            None => format!(
                "{kind:?} is not a kind of {POLICY_GROUP} (celgate serves {} and {})",
                OUR_KINDS[0], OUR_KINDS[1]
            ),
        };
        return Verdict::Misspelt {
            kind: our_kind(kind).unwrap_or("document"),
            field: "kind",
            message,
        };
    }
    if !group.is_empty() && near(group, POLICY_GROUP) {
        return Verdict::Misspelt {
            kind: our_kind(kind).unwrap_or("document"),
            field: "apiVersion",
            message: format!("{api:?}: did you mean {}?", expected_api()),
        };
    }
    // Another group, or none, but a kind of ours declaring Envoy mode: meant
    // for celgate with the wrong (or no) apiVersion.
    if let (Some(k), Some(mode)) = (our_kind(kind), declared_mode(doc)) {
        if near(mode, ENVOY) || near(mode, HTTP) {
            let message = if api.is_empty() {
                format!("is missing: an Envoy-mode {k} needs {}", expected_api())
            } else {
                format!(
                    "{api:?} is not one celgate reads for an Envoy-mode {k}: use {}",
                    expected_api()
                )
            };
            return Verdict::Misspelt {
                kind: k,
                field: "apiVersion",
                message,
            };
        }
    }
    not_ours()
}

/// What to do with an evaluation mode.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    Envoy,
    Http,
    /// Another tool's mode (or none): skip, with this description.
    Other(String),
    /// A near miss of `Envoy`: an error with this message.
    Misspelt(String),
}

pub fn mode(mode: Option<&str>) -> Mode {
    match mode {
        Some(ENVOY) => Mode::Envoy,
        Some(HTTP) => Mode::Http,
        None => Mode::Other("unset (Kubernetes admission)".to_owned()),
        Some(m) if OTHER_MODES.contains(&m) => Mode::Other(format!("{m:?}")),
        Some(m) if near(m, ENVOY) || near(m, HTTP) => {
            let meant = if near(m, ENVOY) { ENVOY } else { HTTP };
            Mode::Misspelt(format!(
                "{m:?} is not an evaluation mode: did you mean {meant}? (modes are case-sensitive; as written, the document would be skipped)"
            ))
        }
        Some(m) => match closest(m, OTHER_MODES) {
            Some(k) => Mode::Other(format!("{m:?} (not a known mode: did you mean {k}?)")),
            None => Mode::Other(format!(
                "{m:?} (not a known mode: {ENVOY}, {HTTP}, {})",
                OTHER_MODES.join(", ")
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(api: &str, kind: &str) -> Verdict {
        classify(Some(api), Some(kind), &json!({}))
    }

    #[test]
    fn ours_and_others() {
        assert_eq!(
            c("policies.kyverno.io/v1", "ValidatingPolicy"),
            Verdict::Ours("ValidatingPolicy")
        );
        assert_eq!(
            c("policies.kyverno.io/v1alpha1", "PolicyException"),
            Verdict::Ours("PolicyException")
        );
        for (api, kind) in [
            ("v1", "ConfigMap"),
            ("policies.kyverno.io/v1", "MutatingPolicy"),
            (
                "admissionregistration.k8s.io/v1",
                "ValidatingAdmissionPolicy",
            ),
            ("admissionregistration.k8s.io/v1", "ValidatingPolicy"),
            ("kyverno.io/v2", "PolicyException"),
            ("kyverno.io/v1", "ClusterPolicy"),
            ("reports.kyverno.io/v1", "ClusterEphemeralReport"),
            ("json.kyverno.io/v1alpha1", "ValidatingPolicy"),
        ] {
            assert!(matches!(c(api, kind), Verdict::NotOurs(_)), "{api} {kind}");
        }
    }

    #[test]
    fn near_misses_are_errors() {
        for (api, kind, field, hint) in [
            (
                "policies.kyverno.io/v1",
                "ValidatingPolicies",
                "kind",
                "ValidatingPolicy",
            ),
            (
                "policies.kyverno.io/v1",
                "validatingpolicy",
                "kind",
                "ValidatingPolicy",
            ),
            (
                "policies.kyverno.io/v1",
                "PolicyExceptions",
                "kind",
                "PolicyException",
            ),
            (
                "policies.kyverno.io/v1",
                "MutatingPolcy",
                "kind",
                "MutatingPolicy",
            ),
            ("policies.kyverno.io/v1", "Gadget", "kind", "serves"),
            (
                "policies.kyverno.io/v2",
                "ValidatingPolicy",
                "apiVersion",
                "v1",
            ),
            (
                "policies.kyverno.io",
                "ValidatingPolicy",
                "apiVersion",
                "v1",
            ),
            (
                "policy.kyverno.io/v1",
                "ValidatingPolicy",
                "apiVersion",
                "policies.kyverno.io/v1",
            ),
            (
                "Policies.Kyverno.io/v1",
                "ValidatingPolicy",
                "apiVersion",
                "policies",
            ),
        ] {
            match c(api, kind) {
                Verdict::Misspelt {
                    field: f, message, ..
                } => {
                    assert_eq!(f, field, "{api} {kind}");
                    assert!(message.contains(hint), "{api} {kind}: {message}");
                }
                v => panic!("{api} {kind}: {v:?}"),
            }
        }
    }

    #[test]
    fn a_kind_of_ours_in_envoy_mode_needs_our_api_version() {
        let envoy = json!({"spec": {"evaluation": {"mode": "Envoy"}}});
        let v = classify(Some("kyverno.io/v1"), Some("ValidatingPolicy"), &envoy);
        assert!(
            matches!(
                v,
                Verdict::Misspelt {
                    field: "apiVersion",
                    ..
                }
            ),
            "{v:?}"
        );
        let v = classify(None, Some("ValidatingPolicy"), &envoy);
        assert!(
            matches!(
                v,
                Verdict::Misspelt {
                    field: "apiVersion",
                    ..
                }
            ),
            "{v:?}"
        );
        let k8s = json!({"spec": {"evaluation": {"mode": "Kubernetes"}}});
        let v = classify(Some("kyverno.io/v1"), Some("ValidatingPolicy"), &k8s);
        assert!(matches!(v, Verdict::NotOurs(_)), "{v:?}");
    }

    #[test]
    fn modes() {
        assert_eq!(mode(Some("Envoy")), Mode::Envoy);
        for m in [
            "envoy", "ENVOY", "Enovy", "Envoi", "Envy", " Envoy", "Envoy ",
        ] {
            assert!(matches!(mode(Some(m)), Mode::Misspelt(_)), "{m:?}");
        }
        assert_eq!(mode(Some("HTTP")), Mode::Http);
        for m in ["http", "Http", "HTPP", " HTTP"] {
            assert!(
                matches!(mode(Some(m)), Mode::Misspelt(ref e) if e.contains("did you mean HTTP")),
                "{m:?}"
            );
        }
        for m in [
            None,
            Some("Kubernetes"),
            Some("JSON"),
            Some("kubernetes"),
            Some("Gateway"),
        ] {
            assert!(matches!(mode(m), Mode::Other(_)), "{m:?}");
        }
        assert!(
            matches!(mode(Some("kubernetes")), Mode::Other(m) if m.contains("did you mean Kubernetes"))
        );
        // The other modes are not near misses of ours.
        for m in OTHER_MODES {
            assert!(!near(m, ENVOY) && !near(m, HTTP), "{m}");
        }
    }
}
