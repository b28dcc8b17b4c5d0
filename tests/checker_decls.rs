//! The type checker's declaration tables against the runtime environment.
//!
//! The checker (`celgate::cel::check`) decides at load time from its own
//! tables (`std.decls` and each library's `DECLS`) whether a call can work;
//! the runtime (`celgate::cel::env()`) is the `cel` crate's `Env` with its
//! own registrations. When the two disagree, a policy either passes the
//! checker and then fails on every request, or is refused although it works.
//!
//! * `every_declared_overload_runs`: every overload of every table is called
//!   with sample arguments of its declared types (type parameters
//!   instantiated, once with `int` and once with `string`); the runtime must
//!   have the overload (no `no_such_overload`, `undeclared_reference`,
//!   `invalid_argument_count` or type mismatch), must answer without error
//!   with these samples, and the value must have the declared result type.
//!   The checker must accept the same call and give it the declared type.
//! * `argument_getters_return_their_declared_types`: the MCP argument
//!   getters, on arguments that are there, return the declared types.
//! * `every_runtime_function_is_declared`: the functions and operators the
//!   runtime registers (read from the `cel` crate's sources and celgate's
//!   libraries, listed here by hand) each have a declaration of the same
//!   shape; the list itself is checked against the runtime where a call can
//!   be written, and every declared name is in it.
//! * `every_declared_request_field_reads_as_declared`: every field the
//!   checker knows on the request's messages (from the vendored protos) is
//!   one the request view reads, as a value of the declared type.
//! * `checked_expressions_run_without_type_errors`: random expressions from
//!   a small typed grammar (request fields, literals, operators, functions,
//!   comprehensions, optionals), some mixed with ill-typed operands, are
//!   loaded as policies: nothing panics, a well-typed expression is never
//!   refused, and one the checker accepts never fails at run time for want
//!   of an overload unless a `dyn` value is involved.

use cel::common::types::{CelBool, CelOptional, CelString};
use cel::common::value::Val;
use cel::{Context, ExecutionError, Value};
use celgate::cel::check::decls::{self, Overload};
use celgate::cel::check::{self as checker, Scope, Ty};
use celgate::cel::view::Node;
use celgate::cel::ErrorKind;
use celgate::engine::{self, EngineConfig};
use celgate::policy::{load::parse_documents, PolicySet};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

// ------------------------------------------------------------ evaluation

/// The JWKS URL preloaded for `jwks.Fetch`, so that nothing is fetched.
const JWKS_URL: &str = "https://issuer.example.com/.well-known/jwks.json";

/// A `tools/call` whose arguments hold one value of each kind the argument
/// getters read.
const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"s":"x","i":2,"f":1.5,"b":true,"ss":["x","y"],"is":[1,2],"fs":[1.5],"bs":[true]}}}"#;
const PROMPTS_GET: &str = r#"{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"p","arguments":{"s":"x"}}}"#;

fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let jwks = std::fs::read(root.join("examples/identity/keys/jwks.json")).unwrap();
        celgate::identity::jwks::preload(JWKS_URL, &jwks).unwrap();
    });
}

/// Evaluates `expr` in celgate's environment, outside any request, and hands
/// the outcome to `f`.
fn eval<R>(expr: &str, f: impl FnOnce(Result<&dyn Val, &ExecutionError>) -> R) -> R {
    setup();
    let env = Arc::clone(celgate::cel::env());
    let program = env
        .compile(expr)
        .unwrap_or_else(|e| panic!("{expr}: does not parse: {e}"));
    let ctx = Context::with_env(env);
    match Value::resolve_val(program.expression(), &ctx) {
        Ok(v) => f(Ok(v.as_ref())),
        Err(e) => f(Err(&e)),
    }
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
    checker::check(&program, &Scope::default())
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
/// object: a decoded token is a map with three fixed keys, a `header_map`
/// entry a map with `key` and `value`.
const RUNTIME_TYPE_OF_OBJECT: &[(&str, &str)] = &[
    ("jwt.Token", "map"),
    ("envoy.config.core.v3.HeaderValue", "map"),
];

/// Whether `v` is a value of the declared type `t` (type parameters and
/// `dyn` accept anything), looking into lists, maps and optionals.
fn conforms(v: &dyn Val, t: &Ty) -> Result<(), String> {
    let got = v.get_type().name().to_owned();
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
    match t {
        Ty::List(elem) => {
            let mut it = v
                .as_iterable()
                .ok_or("a list that cannot be iterated")?
                .iter();
            while let Some(e) = it.next() {
                conforms(e, elem).map_err(|m| format!("element: {m}"))?;
            }
        }
        Ty::Map(key, value) => {
            let mut it = v
                .as_iterable()
                .ok_or("a map that cannot be iterated")?
                .iter();
            let indexer = v.as_indexer().ok_or("a map that cannot be indexed")?;
            while let Some(k) = it.next() {
                conforms(k, key).map_err(|m| format!("key: {m}"))?;
                let e = indexer.get(k).map_err(|e| e.to_string())?;
                conforms(e.as_ref(), value).map_err(|m| format!("value: {m}"))?;
            }
        }
        Ty::Optional(inner) => {
            let o = v
                .downcast_ref::<CelOptional>()
                .ok_or("an optional_type that is not an optional")?;
            if let Some(x) = o.inner() {
                conforms(x, inner).map_err(|m| format!("optional value: {m}"))?;
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
            "mcp.MCPRequest" => format!("mcp.Parse('{TOOLS_CALL}')"),
            "mcp.ToolCall" => format!("mcp.Parse('{TOOLS_CALL}').ToolCall"),
            "mcp.PromptGet" => format!("mcp.Parse('{PROMPTS_GET}').PromptGet"),
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
    ("jwt.Decode", 0, "string", "'x.y.z'"),
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
        _ => match &o.receiver {
            Some(_) => format!("{}.{name}({})", a(0), args[1..].join(", ")),
            None => format!("{name}({})", args.join(", ")),
        },
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
                        let (kind, _) = ErrorKind::of(e);
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
                assert!(v.equals(&CelBool::from(true)), "{expr} gave its default");
            });
        }
    }
}

// ------------------------------------------------- runtime → declared

/// How a runtime function is called.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `f(a, ...)` with this many arguments.
    Global(usize),
    /// `x.f(a, ...)` with this many arguments besides the receiver.
    Member(usize),
    /// An operator the interpreter evaluates itself, by its internal name.
    Operator(usize),
}

use Shape::{Global, Member, Operator};

/// What the runtime environment registers, from the `cel` crate's sources
/// (`common/types/*.rs` stdlib functions, `extensions/*.rs`, the operators
/// the interpreter evaluates in `objects.rs`) and celgate's libraries
/// (`src/cel/{sets,regex_cache,envoy,jwt,mcp}.rs`).
const RUNTIME: &[(&str, Shape)] = &[
    // Operators.
    ("_?_:_", Operator(3)),
    ("_&&_", Operator(2)),
    ("_||_", Operator(2)),
    ("!_", Operator(1)),
    ("-_", Operator(1)),
    ("@not_strictly_false", Operator(1)),
    ("_==_", Operator(2)),
    ("_!=_", Operator(2)),
    ("_<_", Operator(2)),
    ("_<=_", Operator(2)),
    ("_>_", Operator(2)),
    ("_>=_", Operator(2)),
    ("_+_", Operator(2)),
    ("_-_", Operator(2)),
    ("_*_", Operator(2)),
    ("_/_", Operator(2)),
    ("_%_", Operator(2)),
    ("_[_]", Operator(2)),
    ("_[?_]", Operator(2)),
    ("@in", Operator(2)),
    // Standard library: conversions and sizes.
    ("bool", Global(1)),
    ("bytes", Global(1)),
    ("double", Global(1)),
    ("int", Global(1)),
    ("uint", Global(1)),
    ("string", Global(1)),
    ("duration", Global(1)),
    ("timestamp", Global(1)),
    ("dyn", Global(1)),
    ("type", Global(1)),
    ("size", Global(1)),
    ("size", Member(0)),
    // Strings.
    ("contains", Member(1)),
    ("startsWith", Member(1)),
    ("endsWith", Member(1)),
    ("matches", Global(2)),
    ("matches", Member(1)),
    // Time.
    ("getHours", Member(0)),
    ("getMinutes", Member(0)),
    ("getSeconds", Member(0)),
    ("getMilliseconds", Member(0)),
    ("getFullYear", Member(0)),
    ("getMonth", Member(0)),
    ("getDayOfYear", Member(0)),
    ("getDayOfMonth", Member(0)),
    ("getDate", Member(0)),
    ("getDayOfWeek", Member(0)),
    ("getHours", Member(1)),
    ("getMinutes", Member(1)),
    ("getSeconds", Member(1)),
    ("getMilliseconds", Member(1)),
    ("getFullYear", Member(1)),
    ("getMonth", Member(1)),
    ("getDayOfYear", Member(1)),
    ("getDayOfMonth", Member(1)),
    ("getDate", Member(1)),
    ("getDayOfWeek", Member(1)),
    // Optional values.
    ("optional.none", Global(0)),
    ("optional.of", Global(1)),
    ("optional.ofNonZeroValue", Global(1)),
    ("value", Member(0)),
    ("hasValue", Member(0)),
    ("or", Member(1)),
    ("orValue", Member(1)),
    // Strings extension.
    ("charAt", Member(1)),
    ("indexOf", Member(1)),
    ("indexOf", Member(2)),
    ("lastIndexOf", Member(1)),
    ("lastIndexOf", Member(2)),
    ("join", Member(0)),
    ("join", Member(1)),
    ("lowerAscii", Member(0)),
    ("upperAscii", Member(0)),
    ("trim", Member(0)),
    ("replace", Member(2)),
    ("replace", Member(3)),
    ("split", Member(1)),
    ("split", Member(2)),
    ("substring", Member(1)),
    ("substring", Member(2)),
    ("format", Member(1)),
    ("reverse", Member(0)),
    ("strings.quote", Global(1)),
    // Lists extension.
    ("slice", Member(2)),
    ("flatten", Member(0)),
    ("flatten", Member(1)),
    ("distinct", Member(0)),
    ("sort", Member(0)),
    ("@sortByAssociatedKeys", Member(1)),
    ("lists.range", Global(1)),
    // Sets.
    ("sets.contains", Global(2)),
    ("sets.equivalent", Global(2)),
    ("sets.intersects", Global(2)),
    // Math extension.
    ("math.ceil", Global(1)),
    ("math.floor", Global(1)),
    ("math.round", Global(1)),
    ("math.trunc", Global(1)),
    ("math.isInf", Global(1)),
    ("math.isNaN", Global(1)),
    ("math.isFinite", Global(1)),
    ("math.abs", Global(1)),
    ("math.sign", Global(1)),
    ("math.bitAnd", Global(2)),
    ("math.bitOr", Global(2)),
    ("math.bitXor", Global(2)),
    ("math.bitNot", Global(1)),
    ("math.bitShiftLeft", Global(2)),
    ("math.bitShiftRight", Global(2)),
    ("math.sqrt", Global(1)),
    ("math.@max", Global(1)),
    ("math.@max", Global(2)),
    ("math.@min", Global(1)),
    ("math.@min", Global(2)),
    // Encoders.
    ("base64.encode", Global(1)),
    ("base64.decode", Global(1)),
    // envoy.
    ("envoy.Allowed", Global(0)),
    ("envoy.Denied", Global(1)),
    ("envoy.Header", Global(2)),
    ("envoy.QueryParam", Global(2)),
    ("KeepEmptyValue", Member(0)),
    ("KeepEmptyValue", Member(1)),
    ("WithHeader", Member(1)),
    ("WithHeader", Member(2)),
    ("WithoutHeader", Member(1)),
    ("WithResponseHeader", Member(1)),
    ("WithResponseHeader", Member(2)),
    ("WithQueryParam", Member(1)),
    ("WithQueryParam", Member(2)),
    ("WithoutQueryParam", Member(1)),
    ("WithBody", Member(1)),
    ("Response", Member(0)),
    ("WithMessage", Member(1)),
    ("WithMetadata", Member(1)),
    // jwt and jwks.
    ("jwt.Decode", Global(2)),
    ("jwks.Fetch", Global(1)),
    // mcp.
    ("mcp.Parse", Global(1)),
    ("mcp.Unauthorized", Global(1)),
    ("mcp.Unauthorized", Global(2)),
    ("mcp.InsufficientScope", Global(1)),
    ("mcp.InsufficientScope", Global(2)),
    ("mcp.ErrorBody", Global(3)),
    ("ErrorBody", Member(2)),
    ("GetStringArgument", Member(2)),
    ("GetIntArgument", Member(2)),
    ("GetFloatArgument", Member(2)),
    ("GetBoolArgument", Member(2)),
    ("GetStringSliceArgument", Member(2)),
    ("GetIntSliceArgument", Member(2)),
    ("GetFloatSliceArgument", Member(2)),
    ("GetBoolSliceArgument", Member(2)),
];

/// Functions of one argument of any type.
const TAKES_NULL: &[&str] = &["dyn", "type", "optional.of", "optional.ofNonZeroValue"];

#[test]
fn every_runtime_function_is_declared() {
    let decls = decls::get();
    let mut missing = Vec::new();
    for (name, shape) in RUNTIME {
        let (member, arity) = match *shape {
            Global(n) | Operator(n) => (false, n),
            Member(n) => (true, n),
        };
        let declared = decls.functions.get(*name).is_some_and(|os| {
            os.iter()
                .any(|o| o.receiver.is_some() == member && o.params.len() == arity)
        });
        if !declared {
            missing.push(format!("{name} {shape:?}"));
        }
        // The list itself: a name the runtime does not know is answered
        // `undeclared_reference`, one it knows with other argument types
        // `no_such_overload`. Internal names cannot be written.
        if matches!(shape, Operator(_)) || name.contains('@') {
            continue;
        }
        let nulls = vec!["null"; arity].join(", ");
        let expr = if member {
            format!("null.{name}({nulls})")
        } else {
            format!("{name}({nulls})")
        };
        eval(&expr, |r| match r {
            Err(e) => assert_ne!(
                ErrorKind::of(e).0,
                ErrorKind::UndeclaredReference,
                "`{expr}`: the runtime has no {name}: drop it from RUNTIME"
            ),
            // What takes no argument or any value, and the MCP getters on
            // an absent section.
            Ok(_) => assert!(
                (arity == 0 && !member) || TAKES_NULL.contains(name) || name.starts_with("Get"),
                "`{expr}` ran"
            ),
        });
    }
    assert!(
        missing.is_empty(),
        "the runtime has these, the checker does not declare them:\n{}",
        missing.join("\n")
    );
}

/// Every declared name is in [`RUNTIME`], so the two lists are the same
/// set of names: a new declaration needs a runtime function to list.
#[test]
fn every_declared_name_is_a_runtime_function() {
    let listed: BTreeSet<&str> = RUNTIME.iter().map(|(n, _)| *n).collect();
    let mut unlisted: Vec<&String> = decls::get()
        .functions
        .keys()
        .filter(|n| !listed.contains(n.as_str()))
        .collect();
    unlisted.sort();
    assert!(
        unlisted.is_empty(),
        "declared, but not in RUNTIME: {unlisted:?}"
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
            let outcome = read(&request, &expr["object.".len()..], |r| match r {
                Ok(v) => conforms(v, &field.ty).map_err(|m| format!("reads {m}")),
                Err(m) => Err(format!("fails: {m}")),
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

/// Reads `path` (`attributes.request.http.header_map.headers[0].key`) of
/// `request` as the engine reads `object.<path>`: the message fields in one
/// go ([`Node::path`], unset ones as their zero values), then an element of
/// a list and the entries of what it holds.
fn read<R>(request: &CheckRequest, path: &str, f: impl FnOnce(Result<&dyn Val, String>) -> R) -> R {
    let (fields, rest) = path.split_once("[0]").unwrap_or((path, ""));
    let Some(mut v) = Node::CheckRequest(request).path(fields) else {
        return f(Err(format!("no field at {fields}")));
    };
    if path.contains("[0]") {
        let first = v
            .as_iterable()
            .and_then(|l| l.iter().next().map(|e| e.clone_as_boxed()));
        let Some(first) = first else {
            return f(Err(format!("{fields} is not a list with an element")));
        };
        v = first;
        for name in rest.split('.').filter(|s| !s.is_empty()) {
            let got = v
                .as_indexer()
                .ok_or_else(|| format!("{name}: not readable"))
                .and_then(|i| {
                    i.get(&CelString::from(name))
                        .map(|x| x.as_ref().clone_as_boxed())
                        .map_err(|e| format!("{name}: {e}"))
                });
            match got {
                Ok(x) => v = x,
                Err(m) => return f(Err(m)),
            }
        }
    }
    f(Ok(&*v))
}

// ------------------------------------------------- random expressions

/// The request every generated policy is evaluated on.
fn request() -> &'static CheckRequest {
    static R: OnceLock<CheckRequest> = OnceLock::new();
    R.get_or_init(|| {
        celgate::request_json::from_value(&json!({"attributes": {
            "source": {
                "address": {"socketAddress": {"address": "10.0.0.1", "portValue": 443}},
                "principal": "spiffe://a", "labels": {"app": "a"},
            },
            "destination": {"service": "s"},
            "contextExtensions": {"x-a": "ctx"},
            "request": {
                "time": "2026-01-01T00:00:00Z",
                "http": {
                    "method": "POST",
                    "path": "/a/b",
                    "host": "example.com",
                    "scheme": "https",
                    "protocol": "HTTP/1.1",
                    "id": "r1",
                    "size": 12,
                    "query": "x=1",
                    "headers": {"x-a": "1", "x-b": "two", "host": "example.com"},
                    "headerMap": {"headers": [{"key": "x-a", "value": "1"}]},
                    "body": TOOLS_CALL,
                }
            }
        }}))
        .unwrap()
    })
}

/// Where the generator's choices come from: proptest's values, then zeros
/// (the first alternative, a leaf), so that shrinking simplifies.
struct Tape<'a> {
    choices: &'a [u16],
    at: usize,
}

impl Tape<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let c = self.choices.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        usize::from(c) % n
    }
}

/// The types the grammar builds values of.
#[derive(Clone, Copy, Debug, PartialEq)]
enum T {
    Bool,
    Int,
    Uint,
    Double,
    Str,
    Bytes,
    ListInt,
    ListStr,
    MapStrStr,
    MapStrInt,
    Dur,
    Ts,
    OptInt,
    OptStr,
}

const TYPES: [T; 14] = [
    T::Bool,
    T::Int,
    T::Uint,
    T::Double,
    T::Str,
    T::Bytes,
    T::ListInt,
    T::ListStr,
    T::MapStrStr,
    T::MapStrInt,
    T::Dur,
    T::Ts,
    T::OptInt,
    T::OptStr,
];

/// A generated expression: its text, whether a value of unknown type
/// (`dyn`) is involved, and whether it was built ill-typed on purpose.
#[derive(Clone, Debug, Default)]
struct G {
    text: String,
    dynamic: bool,
    mixed: bool,
}

fn leaf(s: &str) -> G {
    G {
        text: s.to_owned(),
        ..G::default()
    }
}

const HTTP: &str = "object.attributes.request.http";
const SOCKET: &str = "object.attributes.source.address.socket_address";

struct Gen<'a, 'b> {
    tape: &'a mut Tape<'b>,
}

impl Gen<'_, '_> {
    /// `template` with `$0`, `$1`, ... replaced by `parts`, each in
    /// parentheses; the flags are the parts'.
    fn build(&self, template: &str, parts: Vec<G>) -> G {
        let mut text = template.to_owned();
        for (i, p) in parts.iter().enumerate().rev() {
            text = text.replace(&format!("${i}"), &format!("({})", p.text));
        }
        G {
            text,
            dynamic: parts.iter().any(|p| p.dynamic),
            mixed: parts.iter().any(|p| p.mixed),
        }
    }

    fn any(&mut self, depth: u32) -> G {
        let t = TYPES[self.tape.pick(TYPES.len())];
        self.gen(t, depth)
    }

    /// Two operands of one random type, or (rarely) of two.
    fn pair(&mut self, depth: u32) -> (G, G, T) {
        let t = TYPES[self.tape.pick(TYPES.len())];
        let a = self.gen(t, depth);
        if self.tape.pick(8) == 7 {
            let mut b = self.any(depth);
            b.mixed = true;
            (a, b, t)
        } else {
            (a, self.gen(t, depth), t)
        }
    }

    fn gen(&mut self, t: T, depth: u32) -> G {
        let leaves: &[&str] = match t {
            T::Bool => &["true", "false"],
            T::Int => &["0", "1", "-3", "42"],
            T::Uint => &["0u", "7u"],
            T::Double => &["0.5", "2.0", "-1.25"],
            T::Str => &["'a'", "''", "'GET'", "'/a'"],
            T::Bytes => &["b'x'", "b''"],
            T::ListInt => &["[1, 2, 3]", "lists.range(3)"],
            T::ListStr => &["['a', 'b']", "['x-a']"],
            T::MapStrStr => &["{'a': 'b'}"],
            T::MapStrInt => &["{'a': 1, 'b': 2}"],
            T::Dur => &["duration('1s')", "duration('1h30m')"],
            T::Ts => &["timestamp('2026-01-01T00:00:00Z')"],
            T::OptInt => &["optional.of(1)", "[1, 2][?1]", "{'a': 1}[?'a']"],
            T::OptStr => &["optional.of('a')", "{'a': 'b'}.?a"],
        };
        // Fields of the request, and values of unknown type.
        let fields: Vec<G> = match t {
            T::Int => vec![
                leaf(&format!("{HTTP}.size")),
                leaf(&format!("{SOCKET}.protocol")),
                G {
                    text: format!("int(mcp.Parse({HTTP}.body).ToolCall.Arguments.i)"),
                    dynamic: true,
                    mixed: false,
                },
            ],
            T::Uint => vec![leaf(&format!("{SOCKET}.port_value"))],
            T::Str => [
                "method", "path", "host", "scheme", "protocol", "id", "query", "body",
            ]
            .iter()
            .map(|f| format!("{HTTP}.{f}"))
            .chain(
                [
                    "source.principal",
                    "destination.service",
                    "destination.address.socket_address.address",
                    "tls_session.sni",
                    "request.http.fragment",
                ]
                .iter()
                .map(|f| format!("object.attributes.{f}")),
            )
            .chain([
                format!("mcp.Parse({HTTP}.body).Method"),
                format!("mcp.Parse({HTTP}.body).ToolCall.GetStringArgument('s', '')"),
            ])
            .map(|f| leaf(&f))
            .chain([G {
                text: "jwt.Decode('x.y.z', 'secret').Claims.?sub.orValue('')".into(),
                dynamic: true,
                mixed: false,
            }])
            .collect(),
            T::Bytes => vec![leaf(&format!("{HTTP}.raw_body"))],
            T::MapStrStr => vec![
                leaf(&format!("{HTTP}.headers")),
                leaf("object.attributes.context_extensions"),
                leaf("object.attributes.source.labels"),
            ],
            T::ListStr => vec![leaf(&format!("{HTTP}.header_map.headers.map(h, h.key)"))],
            T::Ts => vec![leaf("object.attributes.request.time")],
            T::OptStr => vec![
                leaf(&format!("{HTTP}.headers[?'x-a']")),
                leaf(&format!("{HTTP}.headers.?host")),
            ],
            T::ListInt => vec![
                G {
                    text: "[]".into(),
                    dynamic: true,
                    mixed: false,
                },
                leaf(&format!(
                    "mcp.Parse({HTTP}.body).GetIntSliceArgument('is', [])"
                )),
            ],
            T::Bool => vec![
                leaf(&format!("has({HTTP}.headers.host)")),
                leaf("jwt.Decode('x.y.z', 'secret').Valid"),
                leaf(&format!("{SOCKET}.ipv4_compat")),
            ],
            _ => vec![],
        };
        let n_leaves = leaves.len() + fields.len();
        let composites = if depth == 0 { 0 } else { 24 };
        let i = self.tape.pick(n_leaves + composites);
        if i < leaves.len() {
            return leaf(leaves[i]);
        }
        if i < n_leaves {
            return fields[i - leaves.len()].clone();
        }
        let d = depth - 1;
        let c = i - n_leaves;
        match t {
            T::Bool => self.bool_op(c, d),
            T::Int => self.int_op(c, d),
            T::Uint => match c % 6 {
                0 => self.bin("$0 + $1", T::Uint, T::Uint, d),
                1 => self.bin("$0 * $1", T::Uint, T::Uint, d),
                2 => self.un("uint($0)", T::Int, d),
                3 => self.un("math.abs($0)", T::Uint, d),
                4 => self.bin("$0 / $1", T::Uint, T::Uint, d),
                _ => self.un("uint($0)", T::Double, d),
            },
            T::Double => match c % 7 {
                0 => self.bin("$0 + $1", T::Double, T::Double, d),
                1 => self.bin("$0 * $1", T::Double, T::Double, d),
                2 => self.un("double($0)", T::Int, d),
                3 => self.un("double($0)", T::Uint, d),
                4 => self.un("math.floor($0)", T::Double, d),
                // Of a non-negative number: ordering a NaN is an error.
                5 => self.un("math.sqrt(math.abs($0))", T::Int, d),
                _ => self.un("double($0)", T::Str, d),
            },
            T::Str => self.str_op(c, d),
            T::Bytes => match c % 3 {
                0 => self.un("bytes($0)", T::Str, d),
                1 => self.bin("$0 + $1", T::Bytes, T::Bytes, d),
                _ => self.un("base64.decode($0)", T::Str, d),
            },
            T::ListInt => match c % 10 {
                0 => self.bin("$0 + $1", T::ListInt, T::ListInt, d),
                1 => self.un("$0.map(x, x + 1)", T::ListInt, d),
                2 => self.bin("$0.filter(x, x > $1)", T::ListInt, T::Int, d),
                3 => self.bin("[$0, $1]", T::Int, T::Int, d),
                4 => self.un("$0.sort()", T::ListInt, d),
                5 => self.un("$0.distinct()", T::ListInt, d),
                6 => self.un("$0.sortBy(x, -x)", T::ListInt, d),
                7 => self.un("$0.map(x, size(x))", T::ListStr, d),
                8 => self.tern(T::ListInt, d),
                _ => self.un("$0.slice(0, 1)", T::ListInt, d),
            },
            T::ListStr => match c % 7 {
                0 => self.bin("$0 + $1", T::ListStr, T::ListStr, d),
                1 => self.bin("$0.split($1)", T::Str, T::Str, d),
                2 => self.bin("[$0, $1]", T::Str, T::Str, d),
                3 => self.un("$0.map(k, k)", T::MapStrStr, d),
                4 => self.bin("$0.filter(x, x != $1)", T::ListStr, T::Str, d),
                5 => self.un("$0.map(x, string(x))", T::ListInt, d),
                _ => self.un("$0.reverse()", T::ListStr, d),
            },
            T::MapStrStr => match c % 2 {
                0 => self.bin("{$0: $1}", T::Str, T::Str, d),
                _ => self.tern(T::MapStrStr, d),
            },
            T::MapStrInt => match c % 2 {
                0 => self.bin("{$0: $1}", T::Str, T::Int, d),
                _ => self.tern(T::MapStrInt, d),
            },
            T::Dur => match c % 4 {
                0 => self.bin("$0 + $1", T::Dur, T::Dur, d),
                1 => self.bin("$0 - $1", T::Ts, T::Ts, d),
                2 => self.bin("$0 - $1", T::Dur, T::Dur, d),
                _ => self.un("duration($0)", T::Str, d),
            },
            T::Ts => match c % 4 {
                0 => self.bin("$0 + $1", T::Ts, T::Dur, d),
                1 => self.bin("$0 - $1", T::Ts, T::Dur, d),
                2 => self.bin("$0 + $1", T::Dur, T::Ts, d),
                _ => self.un("timestamp($0)", T::Int, d),
            },
            T::OptInt => match c % 6 {
                0 => self.bin("$0[?$1]", T::ListInt, T::Int, d),
                1 => self.bin("$0.or($1)", T::OptInt, T::OptInt, d),
                2 => self.bin("$0[?$1]", T::MapStrInt, T::Str, d),
                3 => self.un("optional.of($0)", T::Int, d),
                4 => self.un("optional.ofNonZeroValue($0)", T::Int, d),
                _ => self.bin("optional.of($0)[$1]", T::ListInt, T::Int, d),
            },
            T::OptStr => match c % 4 {
                0 => self.bin("$0[?$1]", T::MapStrStr, T::Str, d),
                1 => self.bin("$0.or($1)", T::OptStr, T::OptStr, d),
                2 => self.bin("$0[?$1]", T::ListStr, T::Int, d),
                _ => self.un("optional.of($0)", T::Str, d),
            },
        }
    }

    fn un(&mut self, template: &str, a: T, d: u32) -> G {
        let a = self.gen(a, d);
        self.build(template, vec![a])
    }

    fn bin(&mut self, template: &str, a: T, b: T, d: u32) -> G {
        let a = self.gen(a, d);
        let b = self.gen(b, d);
        self.build(template, vec![a, b])
    }

    fn tern(&mut self, t: T, d: u32) -> G {
        let c = self.gen(T::Bool, d);
        let a = self.gen(t, d);
        let b = self.gen(t, d);
        self.build("$0 ? $1 : $2", vec![c, a, b])
    }

    fn bool_op(&mut self, c: usize, d: u32) -> G {
        match c % 24 {
            0 => self.un("!$0", T::Bool, d),
            1 => self.bin("$0 && $1", T::Bool, T::Bool, d),
            2 => self.bin("$0 || $1", T::Bool, T::Bool, d),
            3 | 4 => {
                let (a, b, _) = self.pair(d);
                let op = ["==", "!="][c % 2];
                self.build(&format!("$0 {op} $1"), vec![a, b])
            }
            5 | 6 => {
                let (a, b, t) = self.pair(d);
                let op = ["<", ">=", "<=", ">"][self.tape.pick(4)];
                let mut g = self.build(&format!("$0 {op} $1"), vec![a, b]);
                // Lists, maps and optionals have no order.
                g.mixed |= matches!(
                    t,
                    T::ListInt | T::ListStr | T::MapStrStr | T::MapStrInt | T::OptInt | T::OptStr
                );
                g
            }
            7 => self.bin("$0 < $1", T::Int, T::Double, d),
            8 => self.bin("$0 >= $1", T::Uint, T::Int, d),
            9 => self.bin("$0.startsWith($1)", T::Str, T::Str, d),
            10 => self.bin("$0.contains($1)", T::Str, T::Str, d),
            11 => self.un("$0.matches('^[a-z]+$')", T::Str, d),
            12 => self.bin("$0 in $1", T::Int, T::ListInt, d),
            13 => self.bin("$0 in $1", T::Str, T::MapStrStr, d),
            14 => self.bin("$0.exists(x, x > $1)", T::ListInt, T::Int, d),
            15 => self.un("$0.all(x, x.size() < 5)", T::ListStr, d),
            16 => self.un("$0.hasValue()", T::OptInt, d),
            17 => self.bin("sets.contains($0, $1)", T::ListInt, T::ListInt, d),
            18 => self.un("math.isNaN($0)", T::Double, d),
            19 => self.tern(T::Bool, d),
            20 => self.un("$0.exists_one(k, k.startsWith('x'))", T::MapStrStr, d),
            21 => {
                // An operator applied to operands of any two types.
                let a = self.any(d);
                let b = self.any(d);
                let op = ["in", "==", "<", "+"][self.tape.pick(4)];
                let mut g = self.build(&format!("$0 {op} $1"), vec![a, b]);
                g.mixed = true;
                g
            }
            22 => self.bin("$0.endsWith($1)", T::Str, T::Str, d),
            _ => {
                let mut g = self.un("dyn($0) == 1", T::Int, d);
                g.dynamic = true;
                g
            }
        }
    }

    fn int_op(&mut self, c: usize, d: u32) -> G {
        match c % 24 {
            0 => self.bin("$0 + $1", T::Int, T::Int, d),
            1 => self.bin("$0 - $1", T::Int, T::Int, d),
            2 => self.bin("$0 * $1", T::Int, T::Int, d),
            3 => self.bin("$0 / $1", T::Int, T::Int, d),
            4 => self.bin("$0 % $1", T::Int, T::Int, d),
            5 => self.un("-$0", T::Int, d),
            6 => self.un("size($0)", T::Str, d),
            7 => self.un("$0.size()", T::ListInt, d),
            8 => self.bin("$0[$1]", T::ListInt, T::Int, d),
            9 => self.un("int($0)", T::Str, d),
            10 => self.un("int($0)", T::Double, d),
            11 => self.un("math.abs($0)", T::Int, d),
            12 => self.bin("math.greatest($0, $1)", T::Int, T::Int, d),
            13 => self.tern(T::Int, d),
            14 => self.bin("$0.indexOf($1)", T::Str, T::Str, d),
            15 => self.bin("$0.filter(x, x > $1).size()", T::ListInt, T::Int, d),
            16 => self.bin("$0.orValue($1)", T::OptInt, T::Int, d),
            17 => self.bin("$0[$1]", T::MapStrInt, T::Str, d),
            18 => self.un("$0.getSeconds()", T::Dur, d),
            19 => self.un("$0.getFullYear()", T::Ts, d),
            20 => self.un("int($0)", T::Ts, d),
            21 => self.un("size($0)", T::MapStrStr, d),
            22 => {
                // A function of numbers applied to an operand of any type.
                let a = self.any(d);
                let f = ["math.abs", "size", "int", "math.bitNot"][self.tape.pick(4)];
                let mut g = self.build(&format!("{f}($0)"), vec![a]);
                g.mixed = true;
                g
            }
            _ => {
                let mut g = self.bin("math.greatest($0, $1)", T::Int, T::Double, d);
                g.dynamic = true;
                // An int, a double: compared as numbers, then made an int.
                G {
                    text: format!("int({})", g.text),
                    ..g
                }
            }
        }
    }

    fn str_op(&mut self, c: usize, d: u32) -> G {
        match c % 24 {
            0 | 1 => self.bin("$0 + $1", T::Str, T::Str, d),
            2 => self.un("$0.lowerAscii()", T::Str, d),
            3 => self.un("$0.upperAscii()", T::Str, d),
            4 => self.un("$0.trim()", T::Str, d),
            5 => self.un("string($0)", T::Int, d),
            6 => self.un("string($0)", T::Double, d),
            7 => self.bin("$0[$1]", T::MapStrStr, T::Str, d),
            8 => self.un("$0.join(',')", T::ListStr, d),
            9 => self.un("$0.substring(0)", T::Str, d),
            10 => self.un("$0.replace('a', 'b')", T::Str, d),
            11 => self.tern(T::Str, d),
            12 => self.bin("$0.orValue($1)", T::OptStr, T::Str, d),
            13 => self.un("$0.charAt(0)", T::Str, d),
            14 => self.un("strings.quote($0)", T::Str, d),
            15 => self.un("base64.encode($0)", T::Bytes, d),
            16 => self.un("string($0)", T::Dur, d),
            17 => self.un("$0.reverse()", T::Str, d),
            18 => self.un("'%s!'.format([$0])", T::Str, d),
            19 => self.un("string($0)", T::Uint, d),
            20 => self.un("string($0)", T::Ts, d),
            21 => self.bin("$0[$1]", T::ListStr, T::Int, d),
            22 => self.un("$0.value()", T::OptStr, d),
            _ => {
                // A request's header map read with a key from anywhere.
                let a = self.any(d);
                let mut g = self.build(&format!("{HTTP}.headers[$0]"), vec![a]);
                g.mixed = true;
                g
            }
        }
    }
}

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
        let d = engine::evaluate(&set, &EngineConfig::default(), request());
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
