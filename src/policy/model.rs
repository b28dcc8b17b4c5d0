//! The documents celgate reads: Kyverno `ValidatingPolicy` (Envoy mode) and
//! `PolicyException`, as serde types. Only the fields the authorization
//! engine uses are typed; the rest of `spec` is kept so that fields celgate
//! does not know can be reported rather than silently dropped.

use serde::Deserialize;
use std::collections::BTreeMap;

pub const POLICY_GROUP: &str = "policies.kyverno.io";
pub const API_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha1"];

/// Fields of a `ValidatingPolicy` spec that Kubernetes admission uses and the
/// authorization engine accepts and ignores.
pub const IGNORED_SPEC_FIELDS: [&str; 6] = [
    "matchConstraints",
    "auditAnnotations",
    "webhookConfiguration",
    "autogen",
    "admission",
    "background",
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    pub evaluation: Option<Evaluation>,
    pub failure_policy: Option<String>,
    #[serde(default)]
    pub match_conditions: Vec<NamedExpression>,
    #[serde(default)]
    pub variables: Vec<NamedExpression>,
    #[serde(default)]
    pub validations: Vec<Validation>,
    /// Read as it is written, so that a mistake in it is reported in the
    /// loader's words rather than serde's.
    pub validation_actions: Option<serde_json::Value>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct Evaluation {
    pub mode: Option<String>,
    /// Kyverno's other evaluation settings (`admission`, `background`), and
    /// misspelt keys.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct NamedExpression {
    pub name: Option<String>,
    pub expression: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    pub expression: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExceptionSpec {
    pub evaluation_mode: Option<String>,
    #[serde(default)]
    pub policy_refs: Vec<PolicyRef>,
    #[serde(default)]
    pub match_conditions: Vec<NamedExpression>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct PolicyRef {
    pub name: Option<String>,
    pub kind: Option<String>,
}
