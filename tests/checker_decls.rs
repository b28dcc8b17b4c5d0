//! The type checker's declaration tables against the runtime, celgate's own
//! evaluator (`celgate::cel::eval`).
//!
//! The checker (`celgate::cel::check`) decides at load time from its own
//! tables (`std.decls` and each library's `DECLS` and `OBJECTS`) whether a
//! call can work; the planner (`eval::compile`) binds each call to the
//! library functions of the registry (`eval::lib`) or to an operator it
//! evaluates itself. When the two disagree, a policy either passes the
//! checker and then fails on every request, or is refused although it works.
//!
//! * `every_declared_overload_runs`: every overload of every table is called
//!   with sample arguments of its declared types (type parameters
//!   instantiated, once with `int` and once with `string`), parsed with
//!   celgate's macros, planned and evaluated outside any request; the
//!   runtime must have the overload (the call plans, and no
//!   `no_such_overload`, `undeclared_reference`, `invalid_argument_count` or
//!   `type_mismatch`), must answer without error with these samples, and the
//!   value must have the declared result type (looking into lists, maps,
//!   optionals and the declared fields of library objects). The checker
//!   must accept the same call and give it the declared type. Internal names
//!   are called through the macros that produce them (`cel.@mapInsert`
//!   through `transformMap` and `transformMapEntry`, `math.@max` through
//!   `math.greatest`, ...).
//! * `argument_getters_return_their_declared_types`: the MCP argument
//!   getters, on arguments that are there, return the declared types.
//! * `every_runtime_function_is_declared`: every function of the registry
//!   (`eval::lib::all_functions`) and every operator or internal name the
//!   planner evaluates itself ([`PLANNER`]) has a declaration of the same
//!   shape (global or method, number of arguments).
//! * `every_declared_name_is_a_runtime_function`: every declared name is
//!   one of those, so the two are the same set of names.
//! * `every_declared_request_field_reads_as_declared`: every field the
//!   checker knows on the request's messages (from the vendored protos) is
//!   one the evaluator reads on `object`, as a value of the declared type.
//! * `checked_expressions_run_without_type_errors`: random expressions from
//!   a small typed grammar (request fields, literals, operators, functions,
//!   comprehensions, optionals), some mixed with ill-typed operands, are
//!   loaded as policies and evaluated by the engine's evaluator: nothing
//!   panics, a well-typed expression is never refused, and one the checker
//!   accepts never fails at run time for want of an overload unless a `dyn`
//!   value is involved.

#[path = "common/grammar.rs"]
mod grammar;

use celgate::cel::check::decls::{self, Overload};
use celgate::cel::check::{self as checker, Scope, Ty};
use celgate::cel::eval::ctx::DEFAULT_BUDGET;
use celgate::cel::eval::{self, Ctx, Error, Meter, Value};
use celgate::cel::ErrorKind;
use celgate::engine::{self, EngineConfig};
use celgate::policy::{load::parse_documents, PolicySet};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use grammar::{request, Gen, Tape, TOOLS_CALL};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

// ------------------------------------------------------------ evaluation

/// The JWKS URL preloaded for `jwks.Fetch`, so that nothing is fetched.
const JWKS_URL: &str = "https://issuer.example.com/.well-known/jwks.json";

/// The URL preloaded for the `http` library, so that nothing is requested.
const HTTP_URL: &str = "https://data.example.com/v1";

/// A `tools/call` whose arguments hold one value of each kind the argument
/// getters read.
const PROMPTS_GET: &str = r#"{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"p","arguments":{"s":"x"}}}"#;
/// A `resources/read` with arguments, and an `elicitation/create`.
const RESOURCES_READ: &str = r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"u","arguments":{"i":"7"}}}"#;
const ELICITATION: &str =
    r#"{"jsonrpc":"2.0","id":4,"method":"elicitation/create","params":{"message":"m"}}"#;

fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let jwks = std::fs::read(root.join("examples/identity/keys/jwks.json")).unwrap();
        celgate::identity::jwks::preload(JWKS_URL, &jwks).unwrap();
        celgate::outbound::http::preload(HTTP_URL, br#"{"a": 1}"#).unwrap();
    });
}

/// Evaluates `expr` with celgate's evaluator, outside any request, and
/// hands the outcome to `f`.
fn eval<R>(expr: &str, f: impl FnOnce(Result<&Value<'_>, &Error>) -> R) -> R {
    eval_on(None, expr, f)
}

/// Evaluates `expr` on `request` (`object`), as the engine does: parsed
/// with celgate's macros, planned, run against a fresh context. An
/// expression the planner refuses has a call the runtime cannot bind: it
/// is handed to `f` as an `undeclared_reference` error.
fn eval_on<R>(
    request: Option<&CheckRequest>,
    expr: &str,
    f: impl FnOnce(Result<&Value<'_>, &Error>) -> R,
) -> R {
    setup();
    let parsed = celgate::cel::env()
        .compile(expr)
        .unwrap_or_else(|e| panic!("{expr}: does not parse: {e}"));
    let program = match eval::compile(parsed.expression(), &|_| None) {
        Ok(p) => p,
        Err(e) => {
            let e = Error::new(ErrorKind::UndeclaredReference, format!("not planned: {e}"));
            return f(Err(&e));
        }
    };
    let mut ctx = Ctx::new(request, Meter::new(DEFAULT_BUDGET));
    let r = program.eval(&mut ctx);
    f(r.as_ref())
}

/// Errors that mean the runtime has no overload for the call as written.
fn is_missing_overload(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::NoSuchOverload
            | ErrorKind::UndeclaredReference
            | ErrorKind::InvalidArgumentCount
            | ErrorKind::TypeMismatch
    )
}

/// The type the checker gives `expr`, or its errors.
fn checked_type(expr: &str) -> Result<Ty, String> {
    let program = celgate::cel::env()
        .compile(expr)
        .map_err(|e| e.to_string())?;
    // HTTP mode's functions are checked in HTTP mode (Envoy mode refuses
    // them, and the other way round).
    checker::check(&program, &Scope::default())
        .or_else(|_| {
            let http = Scope {
                mode: checker::Mode::Http,
                ..Default::default()
            };
            checker::check(&program, &http)
        })
        .map(|info| info.ty)
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
}

/// Objects whose runtime value has another CEL type than the declared
/// object: an entry of the request's `header_map` is a map with `key` and
/// `value`. (Every library object has its declared type name: a decoded
/// token is a `jwt.Token`, a parsed MCP request a `mcp.MCPRequest`, the
/// envoy builders their response and option types.)
const RUNTIME_TYPE_OF_OBJECT: &[(&str, &str)] = &[("envoy.config.core.v3.HeaderValue", "map")];

/// Whether `v` is a value of the declared type `t` (type parameters and
/// `dyn` accept anything), looking into lists, maps, optionals and the
/// declared fields of library objects.
fn conforms(v: &Value<'_>, t: &Ty) -> Result<(), String> {
    // An absent MCP section is an object of type `null_type`: a null.
    let got = v.type_of().name().to_owned();
    let want: String = match t {
        Ty::Dyn | Ty::Param(_) => return Ok(()),
        Ty::Null => "null_type".into(),
        Ty::Bool => "bool".into(),
        Ty::Int => "int".into(),
        Ty::Uint => "uint".into(),
        Ty::Double => "double".into(),
        Ty::String => "string".into(),
        Ty::Bytes => "bytes".into(),
        Ty::Duration => "google.protobuf.Duration".into(),
        Ty::Timestamp => "google.protobuf.Timestamp".into(),
        Ty::List(_) => "list".into(),
        Ty::Map(..) => "map".into(),
        Ty::Optional(_) => "optional_type".into(),
        Ty::Type(_) => "type".into(),
        Ty::Object(name) => RUNTIME_TYPE_OF_OBJECT
            .iter()
            .find(|(n, _)| *n == &**name)
            .map_or(&**name, |(_, r)| *r)
            .into(),
    };
    if got != want {
        return Err(format!("a {got} where {t} is declared"));
    }
    match (t, v) {
        (Ty::List(elem), Value::List(items)) => {
            for e in items.iter() {
                conforms(e, elem).map_err(|m| format!("element: {m}"))?;
            }
        }
        (Ty::Map(key, value), Value::Map(m)) => {
            for (k, e) in m.entries() {
                conforms(&k, key).map_err(|m| format!("key: {m}"))?;
                conforms(&e, value).map_err(|m| format!("value: {m}"))?;
            }
        }
        (Ty::Optional(inner), Value::Optional(Some(x))) => {
            conforms(x, inner).map_err(|m| format!("optional value: {m}"))?;
        }
        (Ty::Object(name), Value::Object(o)) => {
            let declared = decls::get()
                .objects
                .get(&**name)
                .and_then(|d| d.fields.as_ref());
            for (field, decl) in declared.into_iter().flatten() {
                let x = o
                    .field(field)
                    .ok_or_else(|| format!("a {name} without its field {field}"))?;
                conforms(&x, &decl.ty).map_err(|m| format!("field {field}: {m}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ------------------------------------------------- declared → runtime

/// One instantiation of the type parameters of the tables.
struct Instance {
    a: Ty,
    k: Ty,
    v: Ty,
}

const INSTANCES: [fn() -> Instance; 2] = [
    || Instance {
        a: Ty::Int,
        k: Ty::String,
        v: Ty::Int,
    },
    || Instance {
        a: Ty::String,
        k: Ty::Int,
        v: Ty::String,
    },
];

fn instantiate(t: &Ty, i: &Instance) -> Ty {
    match t {
        Ty::Param('K') => i.k.clone(),
        Ty::Param('V') => i.v.clone(),
        Ty::Param(_) => i.a.clone(),
        Ty::List(e) => Ty::list(instantiate(e, i)),
        Ty::Map(k, v) => Ty::map(instantiate(k, i), instantiate(v, i)),
        Ty::Optional(e) => Ty::optional(instantiate(e, i)),
        Ty::Type(e) => Ty::Type(Box::new(instantiate(e, i))),
        other => other.clone(),
    }
}

fn params_of(t: &Ty, out: &mut BTreeSet<char>) {
    match t {
        Ty::Param(p) => {
            out.insert(*p);
        }
        Ty::List(e) | Ty::Optional(e) | Ty::Type(e) => params_of(e, out),
        Ty::Map(k, v) => {
            params_of(k, out);
            params_of(v, out);
        }
        _ => {}
    }
}

/// `t` with the type parameters not in `bound` made `dyn`.
fn unbind(t: &Ty, bound: &BTreeSet<char>) -> Ty {
    match t {
        Ty::Param(p) if !bound.contains(p) => Ty::Dyn,
        Ty::List(e) => Ty::list(unbind(e, bound)),
        Ty::Map(k, v) => Ty::map(unbind(k, bound), unbind(v, bound)),
        Ty::Optional(e) => Ty::optional(unbind(e, bound)),
        Ty::Type(e) => Ty::Type(Box::new(unbind(e, bound))),
        other => other.clone(),
    }
}

fn has_param(t: &Ty) -> bool {
    match t {
        Ty::Param(_) => true,
        Ty::List(e) | Ty::Optional(e) | Ty::Type(e) => has_param(e),
        Ty::Map(k, v) => has_param(k) || has_param(v),
        _ => false,
    }
}

/// An expression whose value has the (concrete) type `t`.
fn sample(t: &Ty) -> String {
    match t {
        Ty::Dyn => "dyn(1)".into(),
        Ty::Null => "null".into(),
        Ty::Bool => "true".into(),
        Ty::Int => "1".into(),
        Ty::Uint => "1u".into(),
        Ty::Double => "1.5".into(),
        Ty::String => "'ab'".into(),
        Ty::Bytes => "b'ab'".into(),
        Ty::Duration => "duration('1s')".into(),
        Ty::Timestamp => "timestamp('2026-01-01T00:00:00Z')".into(),
        Ty::List(e) => {
            let e = sample(e);
            format!("[{e}, {e}]")
        }
        Ty::Map(k, v) => format!("{{{}: {}}}", sample(k), sample(v)),
        Ty::Optional(e) => format!("optional.of({})", sample(e)),
        Ty::Object(name) => match &**name {
            "envoy.service.auth.v3.OkHttpResponse" => "envoy.Allowed()".into(),
            "envoy.service.auth.v3.DeniedHttpResponse" => "envoy.Denied(403)".into(),
            "envoy.service.auth.v3.CheckResponse" => "envoy.Allowed().Response()".into(),
            "envoy.config.core.v3.HeaderValueOption" => "envoy.Header('x-a', 'b')".into(),
            "envoy.config.core.v3.QueryParameter" => "envoy.QueryParam('a', 'b')".into(),
            "jwt.Token" => "jwt.Decode('x.y.z', 'secret')".into(),
            "jwks.Set" => format!("jwks.Fetch('{JWKS_URL}')"),
            "http.Context" => "http.Client('')".into(),
            "http.CheckRequestAttributes" => {
                "http.CheckRequestAttributes{method: 'GET', header: {'X-A': ['b']}}".into()
            }
            "http.CheckResponseOk" => "http.Allowed()".into(),
            "http.CheckResponseDenied" => "http.Denied('no')".into(),
            "http.CheckResponse" => "http.Allowed().Response()".into(),
            "mcp.MCPRequest" => format!("mcp.Parse('{TOOLS_CALL}')"),
            "mcp.ToolCall" => format!("mcp.Parse('{TOOLS_CALL}').ToolCall"),
            "mcp.PromptGet" => format!("mcp.Parse('{PROMPTS_GET}').PromptGet"),
            "mcp.ResourceRead" => format!("mcp.Parse('{RESOURCES_READ}').ResourceRead"),
            "mcp.Elicitation" => format!("mcp.Parse('{ELICITATION}').Elicitation"),
            "net.IP" => "ip('10.1.2.3')".into(),
            "net.CIDR" => "cidr('10.0.0.0/8')".into(),
            "kubernetes.URL" => "url('https://example.com:8443/a?x=1')".into(),
            "kubernetes.Quantity" => "quantity('1.5Gi')".into(),
            "kubernetes.Semver" => "semver('1.2.3-rc.1')".into(),
            "kubernetes.NamedFormat" => "format.dns1123Label()".into(),
            other => panic!("no sample value for the object type {other}: add one"),
        },
        Ty::Type(_) | Ty::Param(_) => panic!("no sample value for {t}: add one"),
    }
}

/// Arguments the default samples would make fail, by function name,
/// position (0 = the receiver or the first argument of a function, then on)
/// and declared type.
const ARGUMENT_SAMPLES: &[(&str, usize, &str, &str)] = &[
    ("bool", 0, "string", "'true'"),
    ("int", 0, "string", "'7'"),
    ("uint", 0, "string", "'7'"),
    ("double", 0, "string", "'1.5'"),
    ("duration", 0, "string", "'90s'"),
    ("timestamp", 0, "string", "'2026-01-01T00:00:00Z'"),
    ("base64.decode", 0, "string", "'YWI='"),
    ("format", 0, "string", "'%s'"),
    ("format", 1, "list(dyn)", "[dyn(1)]"),
    ("getFullYear", 1, "string", "'UTC'"),
    ("getMonth", 1, "string", "'UTC'"),
    ("getDayOfYear", 1, "string", "'UTC'"),
    ("getDayOfMonth", 1, "string", "'UTC'"),
    ("getDate", 1, "string", "'UTC'"),
    ("getDayOfWeek", 1, "string", "'UTC'"),
    ("getHours", 1, "string", "'UTC'"),
    ("getMinutes", 1, "string", "'UTC'"),
    ("getSeconds", 1, "string", "'UTC'"),
    ("getMilliseconds", 1, "string", "'UTC'"),
    ("envoy.Denied", 0, "int", "403"),
    ("ip", 0, "string", "'10.1.2.3'"),
    ("ip.isCanonical", 0, "string", "'10.1.2.3'"),
    ("cidr", 0, "string", "'10.0.0.0/8'"),
    ("containsIP", 1, "string", "'10.1.2.3'"),
    ("containsCIDR", 1, "string", "'10.1.0.0/16'"),
    ("jwt.Decode", 0, "string", "'x.y.z'"),
    ("url", 0, "string", "'https://example.com/a?x=1'"),
    ("quantity", 0, "string", "'250m'"),
    ("semver", 0, "string", "'1.2.3'"),
    ("http.Get", 0, "string", "'https://data.example.com/v1'"),
    ("http.get", 0, "string", "'https://data.example.com/v1'"),
    ("http.Post", 0, "string", "'https://data.example.com/v1'"),
    ("http.post", 0, "string", "'https://data.example.com/v1'"),
    ("Get", 1, "string", "'https://data.example.com/v1'"),
    ("get", 1, "string", "'https://data.example.com/v1'"),
    ("Post", 1, "string", "'https://data.example.com/v1'"),
    ("post", 1, "string", "'https://data.example.com/v1'"),
    ("http.Client", 0, "string", "''"),
    ("http.client", 0, "string", "''"),
    ("Client", 1, "string", "''"),
    ("client", 1, "string", "''"),
    ("json.unmarshal", 0, "string", "'{\"a\": [1, \"b\"]}'"),
    (
        "jwks.Fetch",
        0,
        "string",
        "'https://issuer.example.com/.well-known/jwks.json'",
    ),
    (
        "mcp.Parse",
        0,
        "string",
        "'{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}'",
    ),
    (
        "mcp.Parse",
        0,
        "bytes",
        "b'{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}'",
    ),
];

/// An overload's call as written in an expression.
/// Records in `used` which [`ARGUMENT_SAMPLES`] it took.
fn call_text(name: &str, o: &Overload, inst: &Instance, used: &mut BTreeSet<usize>) -> String {
    let mut positions: Vec<&Ty> = o.receiver.iter().collect();
    positions.extend(&o.params);
    let args: Vec<String> = positions
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let shown = t.to_string().replace("optional_type", "optional");
            match ARGUMENT_SAMPLES
                .iter()
                .position(|(n, at, ty, _)| *n == name && *at == i && *ty == shown)
            {
                Some(k) => {
                    used.insert(k);
                    ARGUMENT_SAMPLES[k].3.to_owned()
                }
                None => sample(&instantiate(t, inst)),
            }
        })
        .collect();
    let a = |i: usize| format!("({})", args[i]);
    let binary = |op: &str| format!("{} {op} {}", a(0), a(1));
    match name {
        "!_" => format!("!{}", a(0)),
        "-_" => format!("-{}", a(0)),
        "_&&_" => binary("&&"),
        "_||_" => binary("||"),
        "_==_" => binary("=="),
        "_!=_" => binary("!="),
        "_<_" => binary("<"),
        "_<=_" => binary("<="),
        "_>_" => binary(">"),
        "_>=_" => binary(">="),
        "_+_" => binary("+"),
        "_-_" => binary("-"),
        "_*_" => binary("*"),
        "_/_" => binary("/"),
        "_%_" => binary("%"),
        "@in" => binary("in"),
        "_?_:_" => format!("{} ? {} : {}", a(0), a(1), a(2)),
        "_[_]" => format!("{}[{}]", a(0), args[1]),
        "_[?_]" => format!("{}[?{}]", a(0), args[1]),
        // What the comprehension macros test their accumulator with.
        "@not_strictly_false" => format!("[{}].all(x, x)", args[0]),
        // `math.greatest` and `math.least` expand to these; a list literal
        // must be of numbers, so any list is passed through `dyn`.
        "math.@max" | "math.@min" => {
            let public = if name == "math.@max" {
                "greatest"
            } else {
                "least"
            };
            let args: Vec<String> = o
                .params
                .iter()
                .zip(&args)
                .map(|(t, s)| match t {
                    Ty::List(_) => format!("dyn({s})"),
                    _ => s.clone(),
                })
                .collect();
            format!("math.{public}({})", args.join(", "))
        }
        // `sortBy` expands to this, with the keys its second argument makes.
        "@sortByAssociatedKeys" => format!("{}.sortBy(x, x)", a(0)),
        // The accumulator of `transformMap` (key, value) and of
        // `transformMapEntry` (a map of entries); the sample map's own
        // entries are inserted.
        "cel.@mapInsert" if args.len() == 3 => format!("{}.transformMap(k, v, v)", a(0)),
        "cel.@mapInsert" => format!("{}.transformMapEntry(k, v, {{k: v}})", a(0)),
        _ => match &o.receiver {
            Some(_) => format!("{}.{name}({})", a(0), args[1..].join(", ")),
            None => format!("{name}({})", args.join(", ")),
        },
    }
}

/// Whether `t` is `want` with some of its parts `dyn`.
fn less_precise(t: &Ty, want: &Ty) -> bool {
    match (t, want) {
        (Ty::Dyn, _) => true,
        (Ty::List(a), Ty::List(b)) | (Ty::Optional(a), Ty::Optional(b)) => less_precise(a, b),
        (Ty::Map(ak, av), Ty::Map(bk, bv)) => less_precise(ak, bk) && less_precise(av, bv),
        _ => t == want,
    }
}

#[test]
fn every_declared_overload_runs() {
    let decls = decls::get();
    let mut names: Vec<&String> = decls.functions.keys().collect();
    names.sort();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut used_samples = BTreeSet::new();
    let mut calls = 0;
    for name in names {
        for o in &decls.functions[name] {
            let generic = o.params.iter().chain(&o.receiver).any(has_param) || has_param(&o.result);
            let instances = if generic {
                &INSTANCES[..]
            } else {
                &INSTANCES[..1]
            };
            for inst in instances {
                let inst = inst();
                let expr = call_text(name, o, &inst, &mut used_samples);
                if !seen.insert(expr.clone()) {
                    continue;
                }
                calls += 1;
                let signature = o.signature(name);
                // A parameter only the result has is left unbound: `dyn`.
                let mut bound = BTreeSet::new();
                for t in o.params.iter().chain(&o.receiver) {
                    params_of(t, &mut bound);
                }
                let want = instantiate(&unbind(&o.result, &bound), &inst);
                let outcome = eval(&expr, |r| match r {
                    Ok(v) => conforms(v, &want).map_err(|m| format!("returns {m}")),
                    Err(e) => {
                        let kind = e.kind;
                        if is_missing_overload(kind) {
                            Err(format!("the runtime has no such overload: {kind}: {e}"))
                        } else {
                            Err(format!("fails with the samples: {kind}: {e}"))
                        }
                    }
                });
                if let Err(m) = outcome {
                    problems.push(format!("{signature}: `{expr}` {m}"));
                }
                // The checker takes the same call, and types it as declared
                // where one overload answers.
                match checked_type(&expr) {
                    Err(m) => problems.push(format!(
                        "{signature}: `{expr}` is refused by the checker: {m}"
                    )),
                    Ok(t) if t.is_dyn() || want.is_dyn() || t == want => {}
                    // The macros build their result from an empty literal,
                    // which the checker types `map(dyn, dyn)`.
                    Ok(t) if name == "cel.@mapInsert" && less_precise(&t, &want) => {}
                    Ok(t) => problems.push(format!(
                        "{signature}: `{expr}` is checked as {t}, declared {want}"
                    )),
                }
            }
        }
    }
    for (i, (n, at, ty, _)) in ARGUMENT_SAMPLES.iter().enumerate() {
        assert!(
            used_samples.contains(&i),
            "ARGUMENT_SAMPLES entry {n} #{at} {ty} matches no declared overload"
        );
    }
    assert!(calls > 250, "only {calls} calls: the tables did not load?");
    assert!(
        problems.is_empty(),
        "{} of {calls} declared calls disagree with the runtime:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The argument getters on the values they read: a found argument of the
/// getter's kind is returned with the declared result type.
#[test]
fn argument_getters_return_their_declared_types() {
    let getters = [
        ("GetStringArgument", "s", "''"),
        ("GetIntArgument", "i", "0"),
        ("GetFloatArgument", "f", "0.0"),
        ("GetBoolArgument", "b", "false"),
        ("GetStringSliceArgument", "ss", "[]"),
        ("GetIntSliceArgument", "is", "[]"),
        ("GetFloatSliceArgument", "fs", "[]"),
        ("GetBoolSliceArgument", "bs", "[]"),
    ];
    let decls = decls::get();
    for (getter, key, default) in getters {
        let overloads = &decls.functions[getter];
        for receiver in [
            format!("mcp.Parse('{TOOLS_CALL}')"),
            format!("mcp.Parse('{TOOLS_CALL}').ToolCall"),
        ] {
            let expr = format!("{receiver}.{getter}('{key}', {default})");
            let want = &overloads[0].result;
            eval(&expr, |r| {
                let v = r.unwrap_or_else(|e| panic!("{expr}: {e}"));
                conforms(v, want).unwrap_or_else(|m| panic!("{expr}: {m}"));
            });
            // Found, not the (empty or zero) default.
            let found = format!("{expr} != {default}");
            eval(&found, |r| {
                let v = r.unwrap_or_else(|e| panic!("{found}: {e}"));
                assert!(matches!(v, Value::Bool(true)), "{expr} gave its default");
            });
        }
    }
}

// ------------------------------------------------- runtime → declared

/// How a runtime function is called.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// `f(a, ...)` with this many arguments.
    Global(usize),
    /// `x.f(a, ...)` with this many arguments besides the receiver.
    Member(usize),
    /// A global function of any number of arguments (`math.@max`).
    Variadic,
    /// An operator or internal name the planner evaluates itself.
    Operator(usize),
}

use Shape::{Global, Member, Operator, Variadic};

/// What the planner evaluates itself rather than through the registry
/// (`Planner::call` in `src/cel/eval/plan.rs`). Not listed: `_?._`
/// (`a.?f`), a field selection the checker types itself, and the macros
/// (`has`, the comprehensions, `cel.bind`), which the parser expands.
const PLANNER: &[(&str, Shape)] = &[
    ("_&&_", Operator(2)),
    ("_||_", Operator(2)),
    ("!_", Operator(1)),
    ("_?_:_", Operator(3)),
    ("@not_strictly_false", Operator(1)),
    ("_==_", Operator(2)),
    ("_!=_", Operator(2)),
    ("_<_", Operator(2)),
    ("_<=_", Operator(2)),
    ("_>_", Operator(2)),
    ("_>=_", Operator(2)),
    ("@in", Operator(2)),
    ("_[_]", Operator(2)),
    ("_[?_]", Operator(2)),
    ("or", Member(1)),
    ("orValue", Member(1)),
    ("cel.@mapInsert", Operator(2)),
    ("cel.@mapInsert", Operator(3)),
];

/// Every name the runtime can call, with its shape: the registry's
/// functions, then the planner's own.
fn runtime() -> Vec<(&'static str, Shape)> {
    let mut out: Vec<(&'static str, Shape)> = Vec::new();
    let registry = eval::lib::all_functions().map(|f| {
        let shape = match (f.receiver, f.arity) {
            (false, Some(n)) => Global(n),
            (true, Some(n)) => Member(n),
            (false, None) => Variadic,
            (true, None) => panic!("{f:?}: a method of any arity: give the test a shape for it"),
        };
        (f.name, shape)
    });
    for entry in registry.chain(PLANNER.iter().copied()) {
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out
}

#[test]
fn every_runtime_function_is_declared() {
    let decls = decls::get();
    let runtime = runtime();
    assert!(
        runtime.len() > 120,
        "only {} runtime functions: the registry did not load?",
        runtime.len()
    );
    let mut missing = Vec::new();
    for (name, shape) in &runtime {
        let overloads = decls.functions.get(*name).map_or(&[][..], Vec::as_slice);
        let declared = match *shape {
            Global(n) | Operator(n) => overloads
                .iter()
                .any(|o| o.receiver.is_none() && o.params.len() == n),
            Member(n) => overloads
                .iter()
                .any(|o| o.receiver.is_some() && o.params.len() == n),
            Variadic => overloads.iter().any(|o| o.receiver.is_none()),
        };
        if !declared {
            missing.push(format!("{name} {shape:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the runtime has these, the checker does not declare them:\n{}",
        missing.join("\n")
    );
}

/// Every declared name is one the runtime has, so the two are the same set
/// of names: a declaration needs a function in the registry (or an
/// operator of the planner's) to call.
#[test]
fn every_declared_name_is_a_runtime_function() {
    let runtime = runtime();
    let known: BTreeSet<&str> = runtime.iter().map(|(n, _)| *n).collect();
    let mut unknown: Vec<&String> = decls::get()
        .functions
        .keys()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    unknown.sort();
    assert!(
        unknown.is_empty(),
        "declared, but the runtime has no such function: {unknown:?}"
    );
}

// ------------------------------------------------- the request's fields

/// A request with every message of the tree present, and one raw header.
fn full_request() -> CheckRequest {
    let peer = json!({
        "address": {"socketAddress": {"address": "10.0.0.1", "portValue": 443}},
        "service": "s", "labels": {"l": "v"}, "principal": "p", "certificate": "c",
    });
    celgate::request_json::from_value(&json!({"attributes": {
        "source": peer,
        "destination": peer,
        "contextExtensions": {"k": "v"},
        "metadataContext": {"filterMetadata": {"f": {"k": "v"}}},
        "routeMetadataContext": {"filterMetadata": {"f": {"k": 1}}},
        "tlsSession": {"sni": "example.com"},
        "request": {
            "time": "2026-01-01T00:00:00Z",
            "http": {
                "id": "r1", "method": "GET", "path": "/", "host": "h", "scheme": "https",
                "query": "q", "fragment": "f", "size": 1, "protocol": "HTTP/2",
                "headers": {"x-a": "1"},
                "headerMap": {"headers": [{"key": "x-a", "value": "1"}]},
                "body": "b",
            }
        }
    }}))
    .unwrap()
}

/// Every field the checker declares on the request's messages (from the
/// vendored protos, or the override of the runtime's shape) reads on a full
/// request, as a value of the declared type.
#[test]
fn every_declared_request_field_reads_as_declared() {
    let decls = decls::get();
    let request = full_request();
    let mut problems = Vec::new();
    let mut reads = 0;
    let mut todo = vec![(
        "object".to_owned(),
        celgate::cel::check::proto::CHECK_REQUEST.to_owned(),
    )];
    let mut seen = BTreeSet::new();
    while let Some((path, type_name)) = todo.pop() {
        if !seen.insert(type_name.clone()) {
            continue;
        }
        let fields = decls.objects[&type_name]
            .fields
            .as_ref()
            .unwrap_or_else(|| panic!("{type_name} has no fields"));
        for (name, field) in fields {
            let expr = format!("{path}.{name}");
            reads += 1;
            // As a policy reads it: `object.a.b`, an element `[0]` of a
            // list, then its entries.
            let outcome = eval_on(Some(&request), &expr, |r| match r {
                Ok(v) => conforms(v, &field.ty).map_err(|m| format!("reads {m}")),
                Err(e) => Err(format!("fails: {}: {e}", e.kind)),
            });
            if let Err(m) = outcome {
                problems.push(format!("{type_name}.{name}: `{expr}` {m}"));
            }
            match &field.ty {
                Ty::Object(n) => todo.push((expr, n.to_string())),
                Ty::List(e) => {
                    if let Ty::Object(n) = &**e {
                        todo.push((format!("{expr}[0]"), n.to_string()));
                    }
                }
                _ => {}
            }
        }
    }
    assert!(reads > 30, "only {reads} fields");
    assert!(
        problems.is_empty(),
        "declared request fields the runtime does not read as declared:\n{}",
        problems.join("\n")
    );
}

// ------------------------------------------------- random expressions
//
// The grammar and the request they run on: tests/common/grammar.rs.

/// A policy whose one validation evaluates `expr` once, whatever its type.
fn policy(expr: &str) -> String {
    json!({
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": "generated"},
        "spec": {
            "evaluation": {"mode": "Envoy"},
            "validations": [{"expression": format!("size([{expr}]) == 1 ? null : null")}],
        },
    })
    .to_string()
}

#[test]
fn checked_expressions_run_without_type_errors() {
    // `PROPTEST_CASES` runs more, as for every proptest target.
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let accepted = Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(proptest::prelude::any::<u16>(), 0..120);
    let result = runner.run(&strategy, |choices| {
        let mut tape = Tape {
            choices: &choices,
            at: 0,
        };
        let depth = tape.pick(5) as u32;
        let g = Gen { tape: &mut tape }.any(depth);
        let docs = parse_documents(Path::new("generated.json"), &policy(&g.text))
            .map_err(|e| TestCaseError::fail(format!("{}: not a document: {e}", g.text)))?;
        let set = match PolicySet::compile(docs) {
            Ok(set) => set,
            Err(_) if g.mixed || g.dynamic => return Ok(()),
            // A limit (the cost budget) is no type error.
            Err(e)
                if e.0
                    .iter()
                    .all(|x| matches!(x.kind(), "cost_exceeded" | "limit_exceeded")) =>
            {
                return Ok(())
            }
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "well typed, refused: {}\n{e}",
                    g.text
                )))
            }
        };
        accepted.set(accepted.get() + 1);
        let config = EngineConfig::default();
        let d = engine::evaluate(&set, &config, request());
        if let Some(e) = &d.error {
            if !g.dynamic && is_missing_overload(e.kind) {
                return Err(TestCaseError::fail(format!(
                    "checked, then failed for want of an overload: {}\n{}",
                    g.text,
                    e.detailed()
                )));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        accepted.get() > cases / 2,
        "only {} of {cases} generated expressions loaded",
        accepted.get()
    );
}
