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

/// Each variable of a policy's trace with how many times it was evaluated.
fn evaluations(t: &celgate::engine::PolicyTrace) -> Vec<(&str, Option<u32>)> {
    t.variables
        .iter()
        .map(|v| (v.name.as_str(), v.evaluations))
        .collect()
}

#[test]
fn variables_are_lazy_and_evaluated_once() {
    let set = compile(&[("lazy.yaml", LAZY)]).unwrap();
    let (d, trace) = evaluate_traced(&set, &EngineConfig::default(), &request("/"));
    assert!(d.allowed(), "{d:?}");
    let t = &trace[0];
    let evaluated = evaluations(t);
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

/// Each policy fails on a request header whose value the CEL error message
/// quotes (a missing map key, a failed conversion, a string function on it).
const QUOTING_ERRORS: &str = r#"
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: a-secret-policy-name }
spec:
  evaluation: { mode: Envoy }
  matchConditions:
  - name: a
    expression: object.attributes.request.http.path == "/key"
  validations:
  - expression: '{"known": 1}[object.attributes.request.http.headers["x-secret"]] == 1 ? null : null'
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: b-secret-policy-name }
spec:
  evaluation: { mode: Envoy }
  matchConditions:
  - name: b
    expression: object.attributes.request.http.path == "/int"
  validations:
  - expression: 'int(object.attributes.request.http.headers["x-secret"]) == 1 ? null : null'
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: c-secret-policy-name }
spec:
  evaluation: { mode: Envoy }
  matchConditions:
  - name: c
    expression: object.attributes.request.http.path == "/dyn"
  validations:
  - expression: 'dyn(object.attributes.request.http.headers["x-secret"]) + 1 == 1 ? null : null'
"#;

const SECRET: &str = "SECRET-7f3a9";

fn secret_request(path: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    celgate::request_json::parse(&format!(
        r#"{{"attributes":{{"request":{{"http":{{"method":"GET","path":"{path}","headers":{{"x-secret":"{SECRET}"}}}}}}}}}}"#
    ))
    .unwrap()
}

/// What the client of the denied request receives: status, headers, body.
fn client_view(d: &celgate::engine::Decision) -> (i32, Vec<(String, String)>, String) {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let r = celgate::decision::to_check_response(d.response.clone());
    let Some(HttpResponse::DeniedResponse(den)) = r.http_response else {
        panic!("not a denial: {r:?}");
    };
    let headers = den
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    (den.status.unwrap().code, headers, den.body)
}

#[test]
fn the_failure_denial_is_marked_by_default_and_carries_nothing_of_the_error() {
    let set = compile(&[("quoting.yaml", QUOTING_ERRORS)]).unwrap();
    for path in ["/key", "/int", "/dyn"] {
        let (d, _) = evaluate_traced(&set, &EngineConfig::default(), &secret_request(path));
        let error = d.error.as_ref().expect("an evaluation error");
        // The error is there to be read on one's own machine...
        // (`/int` and `/dyn` fail on a type, whose message names no value.)
        if path == "/key" {
            assert!(
                error.detailed().contains(SECRET),
                "{path}: {}",
                error.detailed()
            );
        }
        // ... and none of it, nor the policy's name, reaches the client.
        let (status, headers, body) = client_view(&d);
        assert_eq!(status, 403, "{path}");
        assert_eq!(
            headers,
            vec![("x-celgate-failure".to_owned(), "evaluation".to_owned())],
            "{path}"
        );
        assert_eq!(body, "request denied: a policy could not be evaluated\n");
        let seen = format!("{headers:?}{body}");
        assert!(
            !seen.contains(SECRET) && !seen.contains("secret-policy"),
            "{seen}"
        );
    }
}

#[test]
fn the_failure_denial_body_and_header_can_be_changed_or_turned_off() {
    let set = compile(&[("quoting.yaml", QUOTING_ERRORS)]).unwrap();
    let config = EngineConfig {
        failure_status: 500,
        failure_body: Some("{\"error\":\"authz\"}".into()),
        failure_header: celgate::engine::failure_header_name("X-Authz-Why").unwrap(),
        ..Default::default()
    };
    let (d, _) = evaluate_traced(&set, &config, &secret_request("/key"));
    assert_eq!(
        client_view(&d),
        (
            500,
            vec![("x-authz-why".to_owned(), "evaluation".to_owned())],
            "{\"error\":\"authz\"}".to_owned()
        )
    );
    let off = EngineConfig {
        failure_body: Some(String::new()),
        failure_header: celgate::engine::failure_header_name("").unwrap(),
        ..Default::default()
    };
    let (d, _) = evaluate_traced(&set, &off, &secret_request("/key"));
    assert_eq!(client_view(&d), (403, Vec::new(), String::new()));
}

#[test]
fn every_failure_reason_has_its_own_fixed_marker_and_body() {
    use celgate::engine::{failure_decision, FailureReason};
    let config = EngineConfig::default();
    let mut seen = std::collections::BTreeSet::new();
    for reason in FailureReason::ALL {
        let d = failure_decision(&config, reason, format!("described as {SECRET}"));
        let (status, headers, body) = client_view(&d);
        let expected_status = if reason == FailureReason::Overload {
            503
        } else {
            403
        };
        assert_eq!(status, expected_status, "{reason:?}");
        assert_eq!(
            headers[0],
            ("x-celgate-failure".into(), reason.as_str().into())
        );
        assert_eq!(body, reason.default_body());
        assert!(body.starts_with("request denied: ") && !body.contains(SECRET));
        assert!(seen.insert(reason.as_str()), "one word per reason");
        if reason == FailureReason::Overload {
            assert_eq!(headers[1], ("retry-after".into(), "1".into()));
        } else {
            assert_eq!(headers.len(), 1);
        }
    }
}

#[test]
fn failure_header_names_are_checked_and_lower_cased() {
    use celgate::engine::failure_header_name as name;
    assert_eq!(name("X-Why").unwrap().as_deref(), Some("x-why"));
    assert_eq!(name("").unwrap(), None);
    assert_eq!(name("  ").unwrap(), None);
    for bad in [
        "x why",
        "x:y",
        ":status",
        "x\r\nset-cookie: a",
        "é",
        "content-length",
        "Host",
        "retry-after",
    ] {
        assert!(name(bad).is_err(), "{bad:?}");
    }
}

/// An exception reading `user` and `greeting` of policy `lazy`.
fn exception(name: &str, policies: &[&str], condition: &str) -> String {
    let refs: Vec<String> = policies
        .iter()
        .map(|p| format!("{{ name: {p} }}"))
        .collect();
    format!(
        "apiVersion: policies.kyverno.io/v1\nkind: PolicyException\nmetadata: {{ name: {name} }}\nspec:\n  policyRefs: [{}]\n  matchConditions:\n  - name: c\n    expression: '{condition}'\n",
        refs.join(", ")
    )
}

#[test]
fn an_exception_shares_the_policy_variables_computed_once() {
    let x = exception("not-bob", &["lazy"], r#"variables.greeting == "hello bob""#);
    let set = compile(&[("x.yaml", &x), ("lazy.yaml", LAZY)]).unwrap();
    let (d, trace) = evaluate_traced(&set, &EngineConfig::default(), &request("/"));
    assert!(d.allowed(), "{d:?}");
    let t = &trace[0];
    assert_eq!(t.outcome, "decided");
    // The exception computed `greeting` (and `user`); the validations
    // reused both.
    let evaluated = evaluations(t);
    assert_eq!(evaluated, vec![("user", Some(1)), ("greeting", Some(1))]);

    let x = exception("ann", &["lazy"], r#"variables.greeting == "hello ann""#);
    let set = compile(&[("x.yaml", &x), ("lazy.yaml", LAZY)]).unwrap();
    let (d, trace) = evaluate_traced(&set, &EngineConfig::default(), &request("/"));
    assert!(d.allowed() && d.policy.is_none(), "{d:?}");
    assert_eq!(trace[0].outcome, "exempted");
    assert_eq!(trace[0].exception.as_deref(), Some("ann"));

    // An error in the condition: the policy's, naming the exception.
    let x = exception("broken", &["lazy"], "variables.never");
    let set = compile(&[("x.yaml", &x), ("lazy.yaml", LAZY)]).unwrap();
    let (d, trace) = evaluate_traced(&set, &EngineConfig::default(), &request("/"));
    assert!(!d.allowed(), "{d:?}");
    assert_eq!(
        d.error.as_ref().map(|e| e.summary()).as_deref(),
        Some("PolicyException broken: spec.matchConditions[0].expression: division_by_zero")
    );
    assert_eq!(trace[0].outcome, "error (denied)");
    assert_eq!(trace[0].exception.as_deref(), Some("broken"));
}

#[test]
fn exceptions_and_policies_load_in_any_order_and_a_missing_policy_is_a_warning() {
    let x = exception("x", &["lazy", "elsewhere"], r#"variables.user == "ann""#);
    for files in [
        [("x.yaml", x.as_str()), ("lazy.yaml", LAZY)],
        [("lazy.yaml", LAZY), ("x.yaml", x.as_str())],
    ] {
        let set = compile(&files).unwrap();
        let p = set.get("lazy").unwrap();
        assert_eq!(p.exceptions.len(), 1);
        assert_eq!(p.exceptions[0].exception.name, "x");
        let warned: Vec<String> = set.warnings.iter().map(ToString::to_string).collect();
        assert!(
            warned
                .iter()
                .any(|w| w.contains(r#"names policy "elsewhere", which is not loaded"#)),
            "{warned:?}"
        );
        let (d, _) = evaluate_traced(&set, &EngineConfig::default(), &request("/"));
        assert!(d.allowed() && d.policy.is_none(), "{d:?}");
    }
    // Alone, its variables cannot be checked: it loads, and is checked
    // when the policy comes.
    compile(&[("x.yaml", &x)]).unwrap();
    // `variables` other than by name is refused with or without the policy.
    let misused = exception("m", &["lazy"], "[variables][0].user == 1");
    for files in [
        vec![("m.yaml", misused.as_str())],
        vec![("m.yaml", misused.as_str()), ("lazy.yaml", LAZY)],
    ] {
        let all = load_errors(&files).join("\n");
        assert!(
            all.contains("variables_misused") || all.contains("`variables` can only"),
            "{all}"
        );
    }
}

#[test]
fn an_inline_attempt_gives_up_in_an_exception_rather_than_ignore_its_error() {
    let guard = "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: { name: a-guard }\nspec:\n  evaluation: { mode: Envoy }\n  failurePolicy: Ignore\n  variables:\n  - name: walk\n    expression: lists.range(5000).all(i, i >= 0)\n  validations:\n  - expression: envoy.Denied(403).Response()\n";
    let x = exception("walks", &["a-guard"], "variables.walk");
    let set = compile(&[("g.yaml", guard), ("x.yaml", &x)]).unwrap();
    let config = EngineConfig::default();
    assert!(celgate::engine::evaluate_inline(&set, &config, &request("/"), 2_000, false).is_none());
    let (d, _) = evaluate_traced(&set, &config, &request("/"));
    assert!(d.allowed() && d.policy.is_none(), "exempted: {d:?}");
}

/// A response written as a message literal and the same response written
/// with the builders give Envoy the identical `CheckResponse`, field for field.
#[test]
fn message_literals_and_builders_send_the_same_response() {
    const HVO: &str = "envoy.config.core.v3.HeaderValueOption";
    const HV: &str = "envoy.config.core.v3.HeaderValue";
    let header = |k: &str, v: &str| format!(r#"{HVO}{{header: {HV}{{key: "{k}", value: {v}}}}}"#);
    let pairs = [
        (
            format!(
                r#"envoy.service.auth.v3.CheckResponse{{status: google.rpc.Status{{code: 0}}, ok_response: envoy.service.auth.v3.OkHttpResponse{{headers: [{}], headers_to_remove: ["x-b"], response_headers_to_add: [{HVO}{{header: {HV}{{key: "x-r", value: ""}}, keep_empty_value: true}}], query_parameters_to_set: [envoy.config.core.v3.QueryParameter{{key: "k", value: "v"}}], query_parameters_to_remove: ["p"]}}}}"#,
                header("x-a", r#""b""#)
            ),
            r#"envoy.Allowed().WithHeader("x-a", "b").WithoutHeader("x-b").WithResponseHeader(envoy.Header("x-r", "").KeepEmptyValue()).WithQueryParam("k", "v").WithoutQueryParam("p").Response()"#.to_owned(),
        ),
        (
            format!(
                r#"envoy.service.auth.v3.CheckResponse{{status: google.rpc.Status{{code: 7, message: "m"}}, denied_response: envoy.service.auth.v3.DeniedHttpResponse{{status: envoy.type.v3.HttpStatus{{code: 403}}, body: "no", headers: [{}]}}}}"#,
                header("x-a", r#""b""#)
            ),
            r#"envoy.Denied(403).WithHeader("x-a", "b").WithBody("no").Response().WithMessage("m")"#.to_owned(),
        ),
        (
            "envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{code: 7}}".to_owned(),
            "envoy.Denied(403).Response()".to_owned(),
        ),
        (
            "envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{code: 7}, denied_response: envoy.service.auth.v3.DeniedHttpResponse{status: envoy.type.v3.HttpStatus{code: envoy.type.v3.StatusCode.Unauthorized}}}".to_owned(),
            "envoy.Denied(401).Response()".to_owned(),
        ),
        (
            "envoy.service.auth.v3.CheckResponse{}".to_owned(),
            "envoy.Allowed().Response()".to_owned(),
        ),
        (
            r#"envoy.service.auth.v3.CheckResponse{dynamic_metadata: {"a": {"b": [1, "x"]}, "c": true}}"#.to_owned(),
            r#"envoy.Allowed().Response().WithMetadata({"a": {"b": [1, "x"]}, "c": true})"#.to_owned(),
        ),
        (
            format!(
                "envoy.service.auth.v3.CheckResponse{{ok_response: envoy.service.auth.v3.OkHttpResponse{{headers: [{}]}}}}",
                header("x-user", r#"object.attributes.request.http.headers["x-user"]"#)
            ),
            r#"envoy.Allowed().WithHeader("x-user", object.attributes.request.http.headers["x-user"]).Response()"#.to_owned(),
        ),
    ];
    let policy = |expr: &str| {
        format!(
            "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: p }}\nspec:\n  evaluation: {{ mode: Envoy }}\n  validations:\n  - expression: {}\n",
            serde_json::to_string(expr).unwrap()
        )
    };
    let wire = |expr: &str| {
        let set = compile(&[("p.yaml", &policy(expr))]).unwrap_or_else(|e| panic!("{expr}: {e:?}"));
        let (d, _) = evaluate_traced(&set, &EngineConfig::default(), &request("/"));
        assert!(d.error.is_none(), "{expr}");
        prost::Message::encode_to_vec(&celgate::decision::to_check_response(d.response))
    };
    // Read back from the wire: a map (the metadata) is encoded in no
    // particular order, so the bytes may differ where the messages do not.
    let read = |bytes: &[u8]| {
        <envoy_types::pb::envoy::service::auth::v3::CheckResponse as prost::Message>::decode(bytes)
            .unwrap()
    };
    for (message, builders) in &pairs {
        let (m, b) = (wire(message), wire(builders));
        assert!(!m.is_empty());
        assert_eq!(read(&m), read(&b), "{message}\n  against\n{builders}");
    }
    // The request's header reached the response.
    let last = wire(&pairs[6].0);
    assert!(last.windows(3).any(|w| w == b"ann"));
}
