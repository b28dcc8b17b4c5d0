//! Engine behaviour that data files cannot show: laziness counts, and the
//! messages a broken policy set produces.

use celgate::engine::{evaluate_traced, EngineConfig};
use celgate::policy::{load::parse_documents, LoadError, PolicySet};
use std::path::Path;

fn compile(files: &[(&str, &str)]) -> Result<PolicySet, celgate::policy::LoadErrors> {
    let mut docs = Vec::new();
    for (name, text) in files {
        docs.extend(parse_documents(Path::new(name), text).expect("yaml"));
    }
    PolicySet::compile(docs)
}

fn request(path: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    celgate::request_json::parse(&format!(
        r#"{{"attributes":{{"request":{{"http":{{"method":"GET","path":"{path}","headers":{{"x-user":"ann"}}}}}}}}}}"#
    ))
    .unwrap()
}

const LAZY: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: lazy }
spec:
  evaluation: { mode: Envoy }
  variables:
  - name: user
    expression: object.attributes.request.http.headers[?"x-user"].orValue("")
  - name: never
    expression: 1 / 0 == 1
  - name: greeting
    expression: '"hello " + variables.user'
  validations:
  - expression: 'variables.user == "" ? envoy.Denied(401).Response() : null'
  - expression: 'variables.user == "root" ? envoy.Denied(403).Response() : null'
  - expression: envoy.Allowed().WithHeader("x-greeting", variables.greeting).WithHeader("x-user", variables.user).Response()
"#;

#[test]
fn variables_are_lazy_and_evaluated_once() {
    let set = compile(&[("lazy.yaml", LAZY)]).unwrap();
    let (d, trace) = evaluate_traced(&set, &EngineConfig::default(), &request("/"));
    assert!(d.allowed(), "{d:?}");
    let t = &trace[0];
    let evaluated: Vec<(&str, Option<u32>)> = t
        .variables
        .iter()
        .map(|v| (v.name.as_str(), v.evaluations))
        .collect();
    // `user` is referenced four times, `greeting` once; `never` (which would
    // fail) is not referenced and so never runs.
    assert_eq!(evaluated, vec![("user", Some(1)), ("greeting", Some(1))]);
    assert_eq!(t.variables[1].result, serde_json::json!("hello ann"));
}

fn load_errors(files: &[(&str, &str)]) -> Vec<String> {
    match compile(files) {
        Ok(_) => panic!("expected the set to be refused"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const BROKEN: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: broken }
spec:
  evaluation: { mode: Envoy }
  failurePolicy: Sometimes
  variables:
  - name: a
    expression: variables.b + 1
  - name: b
    expression: variables.a + 1
  validations:
  - expression: envoy.Allowed().Response()
  - expression: 'variables.missing == 1 ? null : null'
  - expression: 'object.attributes.request.http.path.matches("(unclosed")'
  - expression: 'envoy.Allowed(.Response()'
"#;

#[test]
fn every_problem_is_reported_with_file_policy_and_field() {
    let errors = load_errors(&[("dir/broken.yaml", BROKEN)]);
    let all = errors.join("\n");
    for needle in [
        "spec.failurePolicy: must be Fail or Ignore, not \"Sometimes\"",
        "variables refer to each other in a cycle: a -> b -> a",
        "spec.validations[1].expression: CEL error in `variables.missing == 1 ? null : null` at 1:11: undefined variable `variables.missing` (declared: a, b)",
        "spec.validations[2].expression: CEL error",
        "invalid regex",
        "spec.validations[3].expression: CEL error in `envoy.Allowed(.Response()`",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    for e in &errors {
        assert!(e.starts_with("dir/broken.yaml:"), "no file in {e}");
        assert!(
            e.contains("ValidatingPolicy \"broken\""),
            "no policy in {e}"
        );
    }
}

#[test]
fn duplicate_names_across_files_are_refused() {
    let p = |name: &str| {
        format!(
            "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: {name} }}\nspec:\n  evaluation: {{ mode: Envoy }}\n  validations:\n  - expression: envoy.Allowed().Response()\n"
        )
    };
    let (a, b) = (p("same"), p("same"));
    let errors = compile(&[("a.yaml", &a), ("b.yaml", &b)]).unwrap_err();
    assert!(
        matches!(&errors.0[..], [LoadError::Duplicate { name, .. }] if name == "same"),
        "{errors}"
    );
    assert!(
        errors.to_string().contains("a.yaml:1") && errors.to_string().contains("b.yaml:1"),
        "{errors}"
    );
}

#[test]
fn match_conditions_cannot_use_variables() {
    let text = "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: { name: m }\nspec:\n  evaluation: { mode: Envoy }\n  matchConditions:\n  - name: c\n    expression: variables.x == 1\n  variables:\n  - name: x\n    expression: '1'\n  validations:\n  - expression: envoy.Allowed().Response()\n";
    let all = load_errors(&[("m.yaml", text)]).join("\n");
    assert!(
        all.contains("spec.matchConditions[0].expression") && all.contains("cannot use variables"),
        "{all}"
    );
}

#[test]
fn broken_yaml_names_the_file_and_document() {
    let text = "apiVersion: v1\nkind: ConfigMap\n---\nkey: [unclosed\n";
    let err = parse_documents(Path::new("x.yaml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("x.yaml: document 2: not valid YAML/JSON"),
        "{err}"
    );
}

#[test]
fn missing_path_is_an_error() {
    let err = PolicySet::load(&["/nonexistent/celgate-policies".into()]).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/celgate-policies"),
        "{err}"
    );
}
