//! The reference pages of the documentation (`docs/src/reference/`) against
//! the program, so that they cannot drift from it.
//!
//! * `cli.md` is what `celgate man --format markdown` writes from the
//!   command-line definition. `CELGATE_BLESS=1 cargo test --test reference`
//!   rewrites it.
//! * `request.md` lists exactly the fields of `object` a policy can read:
//!   every field the type checker knows on the request's messages (the
//!   vendored Envoy protos less `request::UNREAD_FIELDS`), walked from
//!   `CheckRequest`, with its type. A field whose type is a message is
//!   walked into (its own row is not listed); a list of messages is walked
//!   into as `path[i]`; everything else (scalars, maps, lists of scalars,
//!   `dyn`) is a leaf with a row, `google.protobuf.Struct` metadata included
//!   (`map(string, dyn)`: its contents are whatever Envoy was given).
//! * `cel.md` names every function of the environment (the checker's
//!   declaration tables: `std.decls` and the libraries' `DECLS`) with
//!   exactly its declared signatures, plus the macros, and the fields of the
//!   libraries' objects with their types; every function and macro has an
//!   example that calls it.
//! * Every example on `request.md` and `cel.md` is loaded as a policy (so the
//!   load-time checks apply) and evaluated by the engine on the page's sample
//!   request, and must give what the page says.
//!
//! Page formats the tests read:
//!
//! * a table whose header starts `| field | type |`: rows
//!   ``| `path` | type | meaning |``;
//! * a table whose header starts `| function | signatures |`: rows
//!   ``| `name` | `signature`<br>`signature` | meaning |`` (several names in
//!   the first cell share the signatures, written with the first name);
//! * examples, one list item each:
//!   ``- `expression` → `expected` `` (equal, and of the same type),
//!   ``- `expression` → error`` (an evaluation error),
//!   ``- `expression` → refused`` (refused when the policy loads),
//!   ``- `expression` → response `{json}` `` (a validation's response, as
//!   `celgate check` prints it);
//! * the sample request: the first ```` ```json norun ```` block after a line
//!   `<!-- sample request -->`;
//! * HTTP mode: the examples after a line `<!-- http mode -->` and before
//!   the next `## ` heading are loaded as HTTP-mode policies and evaluated
//!   on the HTTP request written in the first ```` ```http norun ```` block
//!   after `<!-- http sample request -->`.

use celgate::cel::check::decls::{self, Overload};
use celgate::cel::check::Ty;
use celgate::cel::eval::lib::httpauthz::CheckRequest as HttpCheckRequest;
use celgate::engine::{self, EngineConfig};
use celgate::policy::{load::parse_documents, PolicySet};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn page(name: &str) -> (PathBuf, String) {
    let path = root().join("docs/src/reference").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

fn blessing() -> bool {
    std::env::var_os("CELGATE_BLESS").is_some_and(|v| v == "1")
}

// ------------------------------------------------------------ cli.md

#[test]
fn cli_page_is_what_the_program_writes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["man", "--format", "markdown"])
        .output()
        .expect("running celgate");
    assert!(
        out.status.success(),
        "celgate man --format markdown: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let path = root().join(celgate::manual::PAGE);
    if blessing() {
        std::fs::write(&path, &generated).expect("writing the page");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is not what `celgate man --format markdown` writes (first difference at line {}):\n  \
             committed: {:?}\n  generated: {:?}\n\
             Run `CELGATE_BLESS=1 cargo test --test reference` to rewrite it.",
            path.display(),
            first + 1,
            committed.lines().nth(first).unwrap_or("<end>"),
            generated.lines().nth(first).unwrap_or("<end>"),
        );
    }
    // What the page must hold whatever the flags are.
    for needle in [
        "## `celgate serve`",
        "## `celgate check`",
        "`--policies <POLICIES>...`",
        "env `CELGATE_GRPC_ADDR`",
        "## Exit status",
        "| 4 |",
    ] {
        assert!(generated.contains(needle), "the page lacks {needle:?}");
    }
}

// ------------------------------------------------------- page parsing

/// The cells of a table row, `\|` kept as `|` inside a cell.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

/// The code spans of a cell, in order.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

/// Rows of the tables whose header starts with `header` (e.g. `field`),
/// with their line numbers.
fn table_rows(text: &str, header: &str) -> Vec<(usize, Vec<String>)> {
    let mut rows = Vec::new();
    let mut in_table = false;
    let mut header_seen = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if !t.starts_with('|') {
            in_table = false;
            header_seen = false;
            continue;
        }
        if !header_seen {
            header_seen = true;
            in_table = cells(t).first().is_some_and(|c| c == header);
            continue;
        }
        if in_table && !t.starts_with("|-") && !t.starts_with("| -") {
            rows.push((i + 1, cells(t)));
        }
    }
    rows
}

/// `| `path` | type | meaning |` rows: path → (type, line).
fn field_rows(text: &str) -> BTreeMap<String, (String, usize)> {
    let mut out = BTreeMap::new();
    for (line, c) in table_rows(text, "field") {
        let path = code_spans(&c[0]);
        assert_eq!(
            path.len(),
            1,
            "line {line}: the first cell is not one `path`"
        );
        let ty = c
            .get(1)
            .map(|t| t.trim_matches('`').to_owned())
            .unwrap_or_default();
        let meaning = c.get(2).map(String::as_str).unwrap_or("");
        assert!(
            !meaning.is_empty(),
            "line {line}: {} has no meaning",
            path[0]
        );
        let old = out.insert(path[0].clone(), (ty, line));
        assert!(old.is_none(), "line {line}: {} twice", path[0]);
    }
    out
}

#[derive(Debug)]
enum Expect {
    Value(String),
    Error,
    Refused,
    Response(serde_json::Value),
}

#[derive(Debug)]
struct Example {
    line: usize,
    expr: String,
    expect: Expect,
    /// An HTTP-mode example (`<!-- http mode -->`).
    http: bool,
}

/// The page's ``- `expression` → ...`` list items.
fn examples(text: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut http = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim() == "<!-- http mode -->" {
            http = true;
        } else if line.starts_with("## ") {
            http = false;
        }
        let Some(rest) = line.trim().strip_prefix("- `") else {
            continue;
        };
        let Some((expr, after)) = rest.split_once("` → ") else {
            continue;
        };
        let after = after.trim();
        let expect = if after == "error" {
            Expect::Error
        } else if after == "refused" {
            Expect::Refused
        } else if let Some(json) = after.strip_prefix("response `") {
            let json = json.strip_suffix('`').unwrap_or_else(|| {
                panic!("line {}: a response example ends with a backtick", i + 1)
            });
            Expect::Response(
                serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("line {}: the response is not JSON: {e}", i + 1)),
            )
        } else {
            let value = after
                .strip_prefix('`')
                .and_then(|v| v.strip_suffix('`'))
                .unwrap_or_else(|| {
                    panic!(
                        "line {}: an example's result is `value`, error, refused or response `json`",
                        i + 1
                    )
                });
            Expect::Value(value.to_owned())
        };
        out.push(Example {
            line: i + 1,
            expr: expr.to_owned(),
            expect,
            http,
        });
    }
    out
}

/// The request under `<!-- sample request -->`.
fn sample_request(text: &str) -> CheckRequest {
    let (_, after) = text
        .split_once("<!-- sample request -->")
        .expect("the page has a `<!-- sample request -->` marker");
    // Marked `norun` for tests/docs.rs: this test is the one that reads it.
    let (_, block) = after
        .split_once("```json norun\n")
        .expect("a ```json norun block");
    let (json, _) = block.split_once("```").expect("the block ends");
    celgate::request_json::parse(json).unwrap_or_else(|e| panic!("the sample request: {e}"))
}

/// An HTTP sample request for the checker's own test.
const HTTP_SAMPLE: &str = "<!-- http sample request -->\n\n```http norun\nPUT /x HTTP/1.1\nHost: a.example\nFoo: bar\n```\n";

/// The HTTP request under `<!-- http sample request -->`, as the HTTP
/// authorization server would build it; the default when there is none.
fn http_sample_request(text: &str) -> HttpCheckRequest {
    let Some((_, after)) = text.split_once("<!-- http sample request -->") else {
        return celgate::httpmode::check_request(&http::Request::new(()).into_parts().0, b"");
    };
    let (_, block) = after
        .split_once("```http norun\n")
        .expect("a ```http norun block");
    let (raw, _) = block.split_once("```").expect("the block ends");
    // The block's lines as an HTTP/1.1 message: CRLF, the body after the
    // blank line (its trailing newline is the block's, not the body's).
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
    let mut wire = head.replace('\n', "\r\n");
    wire.push_str("\r\n\r\n");
    wire.push_str(body.strip_suffix('\n').unwrap_or(body));
    let (parts, body) = celgate::httpmode::nested_request(wire.as_bytes())
        .unwrap_or_else(|e| panic!("the HTTP sample request: {e}"));
    celgate::httpmode::check_request(&parts, body)
}

/// CEL's names for the checker's types.
fn doc_type(t: &Ty) -> String {
    match t {
        Ty::Dyn => "dyn".into(),
        Ty::Null => "null".into(),
        Ty::Bool => "bool".into(),
        Ty::Int => "int".into(),
        Ty::Uint => "uint".into(),
        Ty::Double => "double".into(),
        Ty::String => "string".into(),
        Ty::Bytes => "bytes".into(),
        Ty::Duration => "duration".into(),
        Ty::Timestamp => "timestamp".into(),
        Ty::List(e) => format!("list({})", doc_type(e)),
        Ty::Map(k, v) => format!("map({}, {})", doc_type(k), doc_type(v)),
        Ty::Optional(e) => format!("optional({})", doc_type(e)),
        Ty::Object(n) => n.to_string(),
        Ty::Type(e) => format!("type({})", doc_type(e)),
        Ty::Param(p) => p.to_string(),
    }
}

/// Every declared field of `type_name` and what it holds, walked as the
/// module documentation says, under `prefix`.
fn walk_fields(prefix: &str, type_name: &str, depth: usize, out: &mut BTreeMap<String, String>) {
    assert!(
        depth < 10,
        "{prefix}: the request's messages nest deeper than 10"
    );
    let object = decls::get()
        .objects
        .get(type_name)
        .unwrap_or_else(|| panic!("{type_name} is not declared"));
    let fields = object
        .fields
        .as_ref()
        .unwrap_or_else(|| panic!("{type_name} has no fields"));
    for (name, field) in fields {
        let path = format!("{prefix}.{name}");
        match &field.ty {
            Ty::Object(n) => walk_fields(&path, n, depth + 1, out),
            Ty::List(e) if matches!(**e, Ty::Object(_)) => {
                let Ty::Object(n) = &**e else { unreachable!() };
                walk_fields(&format!("{path}[i]"), n, depth + 1, out);
            }
            t => {
                out.insert(path, doc_type(t));
            }
        }
    }
}

/// Compares documented fields with declared ones.
fn compare_fields(
    page: &Path,
    documented: &BTreeMap<String, (String, usize)>,
    declared: &BTreeMap<String, String>,
) {
    let mut problems = Vec::new();
    for (path, ty) in declared {
        match documented.get(path) {
            None => problems.push(format!("missing: | `{path}` | {ty} | … |")),
            Some((t, line)) if t != ty => {
                problems.push(format!("line {line}: {path} is a {ty}, not {t}"))
            }
            Some(_) => {}
        }
    }
    for (path, (_, line)) in documented {
        if !declared.contains_key(path) {
            problems.push(format!(
                "line {line}: {path} is not a field a policy can read"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}:\n{}",
        page.display(),
        problems.join("\n")
    );
}

// -------------------------------------------------------- request.md

#[test]
fn request_page_lists_exactly_the_readable_fields() {
    let (path, text) = page("request.md");
    let mut declared = BTreeMap::new();
    walk_fields(
        "object",
        celgate::cel::check::proto::CHECK_REQUEST,
        0,
        &mut declared,
    );
    let documented: BTreeMap<_, _> = field_rows(&text)
        .into_iter()
        .filter(|(p, _)| p.starts_with("object."))
        .collect();
    assert!(declared.len() > 30, "only {} fields", declared.len());
    compare_fields(&path, &documented, &declared);
    // Fields dropped by the view are not documented as readable.
    for (message, field) in celgate::cel::eval::request::UNREAD_FIELDS {
        assert!(
            !documented.keys().any(|p| p.ends_with(&format!(".{field}"))),
            "{field} ({message}) is not read, yet documented"
        );
    }
}

#[test]
fn request_page_examples_evaluate_as_shown() {
    let (path, text) = page("request.md");
    let n = run_examples(&path, &text);
    assert!(n >= 5, "only {n} examples on {}", path.display());
}

// ------------------------------------------------------------ cel.md

/// Macros: expanded by the parser, so not in the declaration tables.
const MACROS: &[&str] = &[
    "has",
    "all",
    "exists",
    "exists_one",
    "existsOne",
    "map",
    "filter",
    "sortBy",
    "transformList",
    "transformMap",
    "transformMapEntry",
    "cel.bind",
];

/// Declared functions that only macros call; not documented as functions.
const INTERNAL: &[&str] = &[
    "@not_strictly_false",
    "@sortByAssociatedKeys",
    "cel.@mapInsert",
];

/// The name a function is documented under: as written in an expression.
fn page_name(name: &str) -> String {
    match name {
        "-_" => "-".into(),
        n => decls::display_name(n),
    }
}

/// A declared overload as the page writes it.
fn signature(name: &str, o: &Overload) -> String {
    let p: Vec<String> = o.params.iter().map(doc_type).collect();
    let r = doc_type(&o.result);
    match name {
        "_[_]" => format!("{}[{}] -> {r}", p[0], p[1]),
        "_[?_]" => format!("{}[?{}] -> {r}", p[0], p[1]),
        "_?_:_" => format!("{} ? {} : {} -> {r}", p[0], p[1], p[2]),
        "@in" => format!("{} in {} -> {r}", p[0], p[1]),
        "!_" | "-_" => format!("{}{} -> {r}", &name[..1], p[0]),
        n if n.len() > 2 && n.starts_with('_') && n.ends_with('_') && p.len() == 2 => {
            format!("{} {} {} -> {r}", p[0], &n[1..n.len() - 1], p[1])
        }
        n => {
            let shown = page_name(n);
            match &o.receiver {
                Some(t) => format!("{}.{shown}({}) -> {r}", doc_type(t), p.join(", ")),
                None => format!("{shown}({}) -> {r}", p.join(", ")),
            }
        }
    }
}

/// Page name → the declared signatures, as the page writes them.
fn declared_functions() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, overloads) in &decls::get().functions {
        if INTERNAL.contains(&name.as_str()) {
            continue;
        }
        let entry = out.entry(page_name(name)).or_default();
        for o in overloads {
            entry.insert(signature(name, o));
        }
    }
    out
}

#[test]
fn cel_page_documents_every_function_with_its_signatures() {
    let (path, text) = page("cel.md");
    let declared = declared_functions();
    let mut documented: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for (line, c) in table_rows(&text, "function") {
        let names = code_spans(&c[0]);
        assert!(
            !names.is_empty(),
            "line {line}: no `name` in the first cell"
        );
        let written: BTreeSet<String> = code_spans(c.get(1).map(String::as_str).unwrap_or(""))
            .into_iter()
            .collect();
        if c.get(2).is_none_or(|m| m.is_empty()) {
            problems.push(format!("line {line}: no meaning"));
        }
        for (k, name) in names.iter().enumerate() {
            if documented.insert(name.clone(), line).is_some() {
                problems.push(format!("line {line}: `{name}` documented twice"));
            }
            if MACROS.contains(&name.as_str()) {
                continue;
            }
            let Some(sigs) = declared.get(name) else {
                problems.push(format!(
                    "line {line}: `{name}` is neither a declared function nor a macro"
                ));
                continue;
            };
            // Further names share the first one's signatures.
            let sigs: BTreeSet<String> = if k == 0 {
                sigs.clone()
            } else {
                sigs.iter()
                    .map(|s| s.replacen(&format!(" {name} "), &format!(" {} ", names[0]), 1))
                    .collect()
            };
            if written != sigs {
                let row: Vec<String> = sigs.iter().map(|s| format!("`{s}`")).collect();
                problems.push(format!(
                    "line {line}: the signatures of `{name}` are\n    {}",
                    row.join("<br>").replace('|', "\\|")
                ));
            }
        }
    }
    for (name, sigs) in &declared {
        if !documented.contains_key(name) {
            let row: Vec<String> = sigs.iter().map(|s| format!("`{s}`")).collect();
            problems.push(format!(
                "missing: | `{name}` | {} | … |",
                row.join("<br>").replace('|', "\\|")
            ));
        }
    }
    for m in MACROS {
        if !documented.contains_key(*m) {
            problems.push(format!("missing macro `{m}`"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}:\n{}",
        path.display(),
        problems.join("\n")
    );
    assert!(
        documented.len() > 100,
        "only {} functions",
        documented.len()
    );
}

#[test]
fn cel_page_documents_the_libraries_objects() {
    let (path, text) = page("cel.md");
    let mut declared = BTreeMap::new();
    for (name, fields) in celgate::cel::eval::lib::envoy::OBJECTS
        .iter()
        .chain(celgate::cel::eval::lib::jwt::OBJECTS)
        .chain(celgate::cel::eval::lib::mcp::OBJECTS)
    {
        if !fields.is_empty() {
            walk_fields(name, name, 0, &mut declared);
        }
    }
    let documented: BTreeMap<_, _> = field_rows(&text).into_iter().collect();
    compare_fields(&path, &documented, &declared);
}

/// Every function and macro has an example that calls it, and every `mcp`
/// constant one that reads it.
#[test]
fn cel_page_has_an_example_of_every_function() {
    let (path, text) = page("cel.md");
    let mut called = BTreeSet::new();
    for ex in examples(&text) {
        let program = celgate::cel::env()
            .compile(&ex.expr)
            .unwrap_or_else(|e| panic!("line {}: {}: {e}", ex.line, ex.expr));
        celgate::cel::walk(program.expression(), &mut |e| {
            if let cel::common::ast::Expr::Call(c) = &e.expr {
                let name = match c.target.as_deref().map(|t| &t.expr) {
                    Some(cel::common::ast::Expr::Ident(ns))
                        if decls::get()
                            .functions
                            .contains_key(&format!("{ns}.{}", c.func_name)) =>
                    {
                        format!("{ns}.{}", c.func_name)
                    }
                    _ => c.func_name.clone(),
                };
                called.insert(page_name(&name));
            }
        });
        for m in MACROS {
            if ex.expr.contains(&format!("{m}(")) {
                called.insert((*m).to_owned());
            }
        }
        for (k, _) in celgate::mcp::CONSTANTS {
            if ex.expr.contains(&format!("mcp.{k}")) {
                called.insert(format!("mcp.{k}"));
            }
        }
    }
    let mut missing: Vec<String> = declared_functions()
        .into_keys()
        .chain(MACROS.iter().map(|m| (*m).to_owned()))
        .chain(
            celgate::mcp::CONSTANTS
                .iter()
                .map(|(k, _)| format!("mcp.{k}")),
        )
        .filter(|n| !called.contains(n))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{}: no example calls {}",
        path.display(),
        missing.join(", ")
    );
}

#[test]
fn cel_page_examples_evaluate_as_shown() {
    let (path, text) = page("cel.md");
    let n = run_examples(&path, &text);
    assert!(n > 100, "only {n} examples on {}", path.display());
}

// ------------------------------------------------------- evaluation

/// The JWKS URL the examples name, preloaded so that nothing is fetched.
const JWKS_URL: &str = "https://issuer.example.com/.well-known/jwks.json";

fn setup() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let jwks = std::fs::read(root().join("examples/identity/keys/jwks.json")).unwrap();
        celgate::identity::jwks::preload(JWKS_URL, &jwks).unwrap();
        // The `http` examples' services, answered without a request.
        celgate::outbound::http::preload(
            "https://entitlements.example.com/v1/users/alice",
            br#"{"plan": "pro", "features": ["reports", "export"]}"#,
        )
        .unwrap();
        celgate::outbound::http::preload(
            "https://flags.example.com/v1/evaluate",
            br#"{"enabled": true}"#,
        )
        .unwrap();
        celgate::outbound::http::preload("https://flags.example.com/v1/list", br#"["a", "b"]"#)
            .unwrap();
    });
}

fn policy(http: bool, variable: Option<&str>, validation: &str) -> String {
    let mut spec = json!({
        "evaluation": {"mode": if http { "HTTP" } else { "Envoy" }},
        "validations": [{"expression": validation}],
    });
    if let Some(v) = variable {
        spec["variables"] = json!([{"name": "got", "expression": v}]);
    }
    json!({
        "apiVersion": "policies.kyverno.io/v1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": "example"},
        "spec": spec,
    })
    .to_string()
}

fn compile(doc: &str) -> Result<PolicySet, String> {
    let docs = parse_documents(Path::new("example.json"), doc).map_err(|e| e.to_string())?;
    PolicySet::compile(docs).map_err(|e| e.to_string())
}

/// Loads each example of `text` as a policy and evaluates it on the page's
/// sample request; returns how many ran.
fn run_examples(path: &Path, text: &str) -> usize {
    let list = examples(text);
    let problems = example_problems(&list, &sample_request(text), &http_sample_request(text));
    assert!(
        problems.is_empty(),
        "{}: {} of {} examples:\n{}",
        path.display(),
        problems.len(),
        list.len(),
        problems.join("\n")
    );
    list.len()
}

/// What is wrong with each example that does not give what it says.
fn example_problems(
    list: &[Example],
    request: &CheckRequest,
    http_request: &HttpCheckRequest,
) -> Vec<String> {
    setup();
    let config = EngineConfig::default();
    let mut problems = Vec::new();
    for ex in list {
        let at = format!("line {}: `{}`", ex.line, ex.expr);
        let deny = if ex.http {
            r#"http.Denied("example").Response()"#
        } else {
            "envoy.Denied(418).Response()"
        };
        let doc = match &ex.expect {
            Expect::Value(v) => policy(
                ex.http,
                Some(&ex.expr),
                &format!(
                    "type(variables.got) == type({v}) && variables.got == ({v}) ? null : {deny}"
                ),
            ),
            Expect::Error | Expect::Refused => policy(
                ex.http,
                Some(&ex.expr),
                "size([variables.got]) == 1 ? null : null",
            ),
            Expect::Response(_) => policy(ex.http, None, &ex.expr),
        };
        let set = match (compile(&doc), &ex.expect) {
            (Err(_), Expect::Refused) => continue,
            (Ok(_), Expect::Refused) => {
                problems.push(format!("{at}: loads, but the page says it is refused"));
                continue;
            }
            (Err(e), _) => {
                problems.push(format!("{at}: refused when it loads:\n    {e}"));
                continue;
            }
            (Ok(set), _) => set,
        };
        // Allowed or not, the error, the response as JSON, and the traces.
        let (allowed, error, response, traces) = if ex.http {
            let (h, traces) = engine::evaluate_http(&set, &config, http_request, None, true);
            let json = celgate::cel::eval::Object::to_json(&h.response).unwrap_or_default();
            (h.allowed(), h.error, json, traces)
        } else {
            let (d, traces) = engine::evaluate_traced(&set, &config, request);
            let json = celgate::decision::response_json(&d.response);
            (d.allowed(), d.error, json, traces)
        };
        let got = traces
            .first()
            .and_then(|t| t.variables.first())
            .map(|v| v.result.to_string())
            .unwrap_or_default();
        match &ex.expect {
            Expect::Value(v) => {
                if let Some(e) = &error {
                    problems.push(format!("{at}: fails: {}", e.detailed()));
                } else if !allowed {
                    problems.push(format!("{at}: gives {got}, not {v}"));
                }
            }
            Expect::Error => {
                if error.is_none() {
                    problems.push(format!("{at}: gives {got}, but the page says error"));
                }
            }
            Expect::Response(want) => {
                if let Some(e) = &error {
                    problems.push(format!("{at}: fails: {}", e.detailed()));
                } else if &response != want {
                    problems.push(format!("{at}: responds\n    {response}"));
                }
            }
            Expect::Refused => unreachable!(),
        }
    }
    problems
}

/// The example checker itself: each of these examples is wrong (a value of
/// another type, another value, an error where a value is said, a value
/// where an error is said, a response that differs) and must be reported.
#[test]
fn wrong_examples_are_reported() {
    let page = r#"
- `1 + 2` → `4`
- `1 + 2` → `3u`
- `1 + 2` → `3.0`
- `"a"` → `b"a"`
- `[1, 2]` → `[2, 1]`
- `{"a": 1}` → `{"a": 2}`
- `optional.of(1)` → `optional.none()`
- `1 / 0` → `0`
- `1 / 1` → error
- `1 + 1` → refused
- `1 + "a"` → `2`
- `envoy.Denied(403).Response()` → response `{"status":{"code":7},"deniedResponse":{"status":{"code":401}}}`
- `object.attributes.request.http.method` → `"GET"`
"#;
    let list = examples(page);
    assert_eq!(list.len(), 13);
    let request = celgate::request_json::parse(
        r#"{"attributes": {"request": {"http": {"method": "POST"}}}}"#,
    )
    .unwrap();
    let http_request = http_sample_request(HTTP_SAMPLE);
    for ex in &list {
        let problems = example_problems(std::slice::from_ref(ex), &request, &http_request);
        assert_eq!(problems.len(), 1, "`{}` is not reported", ex.expr);
    }
    // In HTTP mode too.
    let wrong = examples(&format!(
        "<!-- http mode -->\n{HTTP_SAMPLE}\n\
         - `object.attributes.method` → `\"GET\"`\n\
         - `object.attributes.Header(\"foo\")` → `[]`\n\
         - `http.Denied(\"no\").Response()` → response `{{\"denied\":{{\"reason\":\"yes\"}}}}`\n\
         - `envoy.Allowed().Response()` → response `{{}}`\n"
    ));
    assert_eq!(wrong.len(), 4);
    assert!(wrong.iter().all(|e| e.http));
    for ex in &wrong {
        let problems = example_problems(std::slice::from_ref(ex), &request, &http_request);
        assert_eq!(problems.len(), 1, "`{}` is not reported", ex.expr);
    }
    let right = examples(
        "<!-- http mode -->\n\
         - `object.attributes.method` → `\"PUT\"`\n\
         - `object.attributes.Header(\"FOO\")` → `[\"bar\"]`\n\
         - `http.Denied(\"no\").Response()` → response `{\"denied\":{\"reason\":\"no\"}}`\n",
    );
    assert_eq!(
        example_problems(&right, &request, &http_request),
        Vec::<String>::new()
    );
    // And right ones are not.
    let right = examples(
        "- `1 + 2` → `3`\n- `1 / 0` → error\n- `1 + \"a\"` → refused\n\
         - `object.attributes.request.http.method` → `\"POST\"`\n",
    );
    assert_eq!(right.len(), 4);
    assert_eq!(
        example_problems(&right, &request, &http_request),
        Vec::<String>::new()
    );
}
