//! The policy selection index: which policies a request can concern, read
//! from their `matchConditions` when a set loads, so that a gateway with one
//! policy per tenant or host evaluates the few that match a request rather
//! than every policy's conditions.
//!
//! A policy is *indexed* on one **constraint**: a request attribute (a
//! string field of `object.attributes.request.http`, a header, a context
//! extension) and the string literals it must equal or start with, taken
//! from a matchCondition (or a conjunct `&&` of one) of these shapes:
//!
//! * `attr == "x"` and `"x" == attr`;
//! * `attr in ["x", "y"]` (a list of string literals only);
//! * `attr.startsWith("/x")` (for the `http` fields, never a map value,
//!   whose `bytes` values have no `startsWith`);
//! * `a || b` where both are such shapes on the same attribute;
//!
//! where `attr` is `object.attributes.request.http.<host|method|path|…>`,
//! `object.attributes.request.http.headers["name"]`,
//! `object.attributes.context_extensions["name"]`, or either map read as
//! `m[?"name"].orValue("default")`.
//!
//! The index only ever rules a policy out when the linear evaluation would
//! have found that condition `false` — never an error:
//!
//! * a policy is skipped when any of its matchConditions is false, whatever
//!   the others (true, false or an error) and whichever comes first, and a
//!   conjunct that is false makes its `&&` false whatever the other conjunct;
//! * the attribute is read through the evaluator's own accessors
//!   ([`field_of`], [`Map::get`]) and compared with its equality: a header
//!   read as `bytes` (from a `header_map` that is not UTF-8) equals no string;
//! * `m["name"]` of a name that is absent is an error, not false: a request
//!   without it keeps every policy indexed on it a candidate.
//!
//! A candidate whose indexed condition is the whole of its constraint (a
//! matchCondition of one of the shapes above, not a conjunct of one) and
//! whose attribute matched is *proven*: that condition is true for the
//! request, read through the same accessors and equality, and the engine
//! evaluates the policy's other conditions only ([`Mark::Proven`]). A
//! traced walk proves nothing, so the trace shows every condition.
//!
//! Policies with no such condition are always candidates. The engine
//! evaluates the candidates in name order as it would every policy (a
//! ruled-out policy's exceptions are not evaluated, as they would not be:
//! exceptions come after the matchConditions, as in Kyverno), and falls back to evaluating every remaining policy once the request's
//! cost budget is spent (where every expression fails, as it would have).

use crate::cel::eval::request::{field_of, Field, Node};
use crate::cel::eval::{Str, Value};
use cel::common::ast::{Expr, LiteralValue};
use cel::IdedExpr;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

/// The string fields of `object.attributes.request.http` a constraint may
/// read: never absent (an unset field reads as `""`), always a `string`.
const HTTP_FIELDS: [&str; 8] = [
    "host", "method", "path", "scheme", "query", "fragment", "protocol", "id",
];

/// A request map whose values a constraint may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapField {
    /// `object.attributes.request.http.headers`
    Headers,
    /// `object.attributes.context_extensions`
    ContextExtensions,
}

/// A request attribute the index reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    /// `object.attributes.request.http.<name>`, one of [`HTTP_FIELDS`].
    Http(&'static str),
    /// `map["key"]` (absent: an error) or, with a default,
    /// `map[?"key"].orValue("default")` (absent: the default).
    Map {
        map: MapField,
        key: String,
        default: Option<String>,
    },
}

impl fmt::Display for Attribute {
    /// As it is written in a condition, without `object.attributes.`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Http(name) => write!(f, "request.http.{name}"),
            Attribute::Map { map, key, default } => {
                let map = match map {
                    MapField::Headers => "request.http.headers",
                    MapField::ContextExtensions => "context_extensions",
                };
                match default {
                    None => write!(f, "{map}[{key:?}]"),
                    Some(d) => write!(f, "{map}[?{key:?}].orValue({d:?})"),
                }
            }
        }
    }
}

/// What a condition says of one attribute: it is false when the attribute
/// is a string that equals none of `exact` and starts with none of
/// `prefixes` (or is not a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub attribute: Attribute,
    pub exact: BTreeSet<String>,
    pub prefixes: BTreeSet<String>,
    /// The matchCondition (by its place in the policy) that this
    /// constraint is the whole of, not a conjunct: a request whose
    /// attribute matches makes that condition true, and the engine need
    /// not evaluate it.
    pub whole: Option<u32>,
}

impl Constraint {
    /// Whether `value` (the attribute of a request, present) satisfies it.
    pub fn admits(&self, value: &str) -> bool {
        self.exact.contains(value) || self.prefixes.iter().any(|p| value.starts_with(p.as_str()))
    }

    /// Preference among a policy's constraints, lowest first: an exact
    /// lookup over a prefix walk, an attribute that is never absent, fewer
    /// literals.
    fn cost(&self) -> (bool, bool, usize) {
        (
            !self.prefixes.is_empty(),
            matches!(self.attribute, Attribute::Map { default: None, .. }),
            self.exact.len() + self.prefixes.len(),
        )
    }
}

/// How a policy is selected, for `GET /policies`, `--explain` and
/// `validate --warn-unindexed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Candidate for the requests whose attribute matches the constraint
    /// (and, for a map entry read without a default, those that lack it).
    Indexed(Constraint),
    /// Candidate for every request: no matchConditions.
    Unconditional,
    /// Candidate for every request: no matchCondition has an indexable shape.
    Unindexed,
}

impl Selection {
    /// A short description that names the attribute and counts the literals
    /// (`request.http.host: 1 value`); never a literal, which may be a
    /// tenant's name.
    pub fn describe(&self) -> String {
        match self {
            Selection::Indexed(c) => {
                let mut parts = Vec::new();
                let n = c.exact.len();
                if n > 0 || c.prefixes.is_empty() {
                    parts.push(format!("{n} value{}", if n == 1 { "" } else { "s" }));
                }
                let p = c.prefixes.len();
                if p > 0 {
                    parts.push(format!("{p} prefix{}", if p == 1 { "" } else { "es" }));
                }
                format!("{}: {}", c.attribute, parts.join(", "))
            }
            Selection::Unconditional => "always (no matchConditions)".into(),
            Selection::Unindexed => "always (no matchCondition the index can read)".into(),
        }
    }

    /// As JSON for `GET /policies`: the attribute and the number of values
    /// and prefixes, no literal.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Selection::Indexed(c) => serde_json::json!({
                "indexed": true,
                "attribute": c.attribute.to_string(),
                "values": c.exact.len(),
                "prefixes": c.prefixes.len(),
            }),
            Selection::Unconditional => serde_json::json!({
                "indexed": false,
                "reason": "no matchConditions",
            }),
            Selection::Unindexed => serde_json::json!({
                "indexed": false,
                "reason": "no matchCondition the index can read",
            }),
        }
    }
}

/// The constraints a matchCondition puts on the request: each one, false,
/// makes the condition false.
pub fn constraints(condition: &IdedExpr) -> Vec<Constraint> {
    let mut out = Vec::new();
    conjuncts(condition, &mut out);
    out
}

fn conjuncts(e: &IdedExpr, out: &mut Vec<Constraint>) {
    match &e.expr {
        Expr::Call(c) if c.target.is_none() && c.func_name == "_&&_" && c.args.len() == 2 => {
            conjuncts(&c.args[0], out);
            conjuncts(&c.args[1], out);
        }
        _ => out.extend(atom(e)),
    }
}

/// One comparison of an attribute with literals, or a disjunction of such
/// on the same attribute.
fn atom(e: &IdedExpr) -> Option<Constraint> {
    let Expr::Call(c) = &e.expr else {
        return None;
    };
    let one = |attribute: Attribute, exact: Vec<&str>, prefix: Option<&str>| Constraint {
        attribute,
        exact: exact.into_iter().map(str::to_owned).collect(),
        prefixes: prefix.into_iter().map(str::to_owned).collect(),
        whole: None,
    };
    match (c.func_name.as_str(), c.target.as_deref(), c.args.as_slice()) {
        ("_==_", None, [a, b]) => match (string_literal(a), string_literal(b)) {
            (None, Some(l)) => Some(one(attribute(a)?, vec![l], None)),
            (Some(l), None) => Some(one(attribute(b)?, vec![l], None)),
            _ => None,
        },
        ("@in", None, [a, list]) => {
            let Expr::List(l) = &list.expr else {
                return None;
            };
            if !l.optional_indices.is_empty() {
                return None;
            }
            let values = l
                .elements
                .iter()
                .map(string_literal)
                .collect::<Option<Vec<_>>>()?;
            Some(one(attribute(a)?, values, None))
        }
        ("startsWith", Some(t), [p]) => match attribute(t)? {
            a @ Attribute::Http(_) => Some(one(a, Vec::new(), Some(string_literal(p)?))),
            Attribute::Map { .. } => None,
        },
        ("_||_", None, [a, b]) => {
            let (mut x, y) = (atom(a)?, atom(b)?);
            if x.attribute != y.attribute {
                return None;
            }
            x.exact.extend(y.exact);
            x.prefixes.extend(y.prefixes);
            Some(x)
        }
        _ => None,
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// The field names of a selection chain from `object`
/// (`object.attributes.request.http` → `[attributes, request, http]`);
/// `None` for anything else, `has()` tests included.
fn object_path(e: &IdedExpr) -> Option<Vec<&str>> {
    match &e.expr {
        Expr::Ident(i) if i == "object" => Some(Vec::new()),
        Expr::Select(s) if !s.test => {
            let mut path = object_path(&s.operand)?;
            path.push(s.field.as_str());
            Some(path)
        }
        _ => None,
    }
}

fn map_field(e: &IdedExpr) -> Option<MapField> {
    match object_path(e)?.as_slice() {
        ["attributes", "request", "http", "headers"] => Some(MapField::Headers),
        ["attributes", "context_extensions"] => Some(MapField::ContextExtensions),
        _ => None,
    }
}

fn attribute(e: &IdedExpr) -> Option<Attribute> {
    match &e.expr {
        Expr::Select(_) => match object_path(e)?.as_slice() {
            ["attributes", "request", "http", name] => HTTP_FIELDS
                .iter()
                .find(|f| *f == name)
                .map(|f| Attribute::Http(f)),
            _ => None,
        },
        Expr::Call(c) => match (c.func_name.as_str(), c.target.as_deref(), c.args.as_slice()) {
            ("_[_]", None, [m, k]) => Some(Attribute::Map {
                map: map_field(m)?,
                key: string_literal(k)?.to_owned(),
                default: None,
            }),
            ("orValue", Some(t), [d]) => {
                let Expr::Call(opt) = &t.expr else {
                    return None;
                };
                match (
                    opt.func_name.as_str(),
                    opt.target.as_deref(),
                    opt.args.as_slice(),
                ) {
                    ("_[?_]", None, [m, k]) => Some(Attribute::Map {
                        map: map_field(m)?,
                        key: string_literal(k)?.to_owned(),
                        default: Some(string_literal(d)?.to_owned()),
                    }),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// How a policy with these matchConditions is selected: on its preferred
/// constraint, or always.
pub fn select<'a>(conditions: impl IntoIterator<Item = &'a IdedExpr>) -> Selection {
    let mut any = false;
    let mut best: Option<Constraint> = None;
    for (j, c) in conditions.into_iter().enumerate() {
        any = true;
        // A condition that is one atom (not a conjunction) is the whole
        // of its constraint; a conjunction's constraints are parts of it.
        let found = match atom(c) {
            Some(mut k) => {
                k.whole = u32::try_from(j).ok();
                vec![k]
            }
            None => constraints(c),
        };
        for k in found {
            if best.as_ref().is_none_or(|b| k.cost() < b.cost()) {
                best = Some(k);
            }
        }
    }
    match (best, any) {
        (Some(c), _) => Selection::Indexed(c),
        (None, true) => Selection::Unindexed,
        (None, false) => Selection::Unconditional,
    }
}

/// Policies (by their place in the set) under one attribute.
#[derive(Debug, Default)]
struct Postings {
    exact: ahash::AHashMap<Box<str>, Vec<u32>>,
    prefixes: ahash::AHashMap<Box<str>, Vec<u32>>,
    /// The distinct lengths of `prefixes`, in bytes.
    prefix_lengths: Vec<usize>,
    /// Every policy indexed here: the candidates when the attribute is
    /// absent (reading it is an error).
    all: Vec<u32>,
}

/// The index of a [`crate::policy::PolicySet`], built when it loads.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    /// Each policy's selection, in the set's order.
    selections: Vec<Arc<Selection>>,
    attributes: Vec<(Attribute, Postings)>,
    /// Policies that are candidates for every request, in order.
    always: Vec<u32>,
}

impl PolicyIndex {
    /// The index of policies given by their matchConditions, in the set's
    /// order.
    pub fn build<'a, C>(policies: impl IntoIterator<Item = C>) -> PolicyIndex
    where
        C: IntoIterator<Item = &'a IdedExpr>,
    {
        Self::from_selections(policies.into_iter().map(|c| Arc::new(select(c))))
    }

    /// The index of policies given by their selections ([`select`]), in the
    /// set's order: a policy's selection depends on its matchConditions
    /// alone, so a reload takes an unchanged policy's over.
    pub fn from_selections(selections: impl IntoIterator<Item = Arc<Selection>>) -> PolicyIndex {
        let mut index = PolicyIndex::default();
        let mut by_attribute: HashMap<Attribute, Postings> = HashMap::new();
        for (i, selection) in selections.into_iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 policies");
            match &*selection {
                Selection::Indexed(c) => {
                    let p = by_attribute.entry(c.attribute.clone()).or_default();
                    for v in &c.exact {
                        p.exact.entry(v.as_str().into()).or_default().push(i);
                    }
                    for v in &c.prefixes {
                        p.prefixes.entry(v.as_str().into()).or_default().push(i);
                    }
                    p.all.push(i);
                }
                Selection::Unconditional | Selection::Unindexed => index.always.push(i),
            }
            index.selections.push(selection);
        }
        let mut attributes: Vec<(Attribute, Postings)> = by_attribute.into_iter().collect();
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, p) in &mut attributes {
            let lengths: BTreeSet<usize> = p.prefixes.keys().map(|k| k.len()).collect();
            p.prefix_lengths = lengths.into_iter().collect();
        }
        index.attributes = attributes;
        index
    }

    /// How policy `i` of the set is selected.
    pub fn selection(&self, i: usize) -> Option<&Selection> {
        self.selections.get(i).map(|s| &**s)
    }

    /// Whether any policy is indexed (else every request is a linear walk).
    pub fn is_useful(&self) -> bool {
        !self.attributes.is_empty()
    }

    /// The policies that `request` may concern, in order: those the index
    /// does not rule out.
    pub fn candidates(&self, request: &CheckRequest) -> Candidates {
        self.collect(request, None)
    }

    /// [`Self::candidates`]; with `proven`, also those whose attribute
    /// matched their constraint (unsorted, a policy possibly twice).
    fn collect(&self, request: &CheckRequest, mut proven: Option<&mut Candidates>) -> Candidates {
        let mut out = Candidates::from_slice(&self.always);
        // The policies whose constraint `value` matches, noted as proven.
        let mut matching = |postings: &Postings, value: &str, out: &mut Candidates| {
            let from = out.len();
            postings.matching(value, out);
            if let Some(p) = proven.as_deref_mut() {
                p.extend_from_slice(&out[from..]);
            }
        };
        let root = Node::CheckRequest(request);
        let attrs = node(root, Field::Attributes);
        let http = attrs
            .and_then(|a| node(a, Field::Request))
            .and_then(|r| node(r, Field::Http));
        for (attribute, postings) in &self.attributes {
            let value = match attribute {
                Attribute::Http(name) => {
                    Field::of(name).zip(http).and_then(|(f, h)| field_of(h, f))
                }
                Attribute::Map { map, key, default } => {
                    let (parent, field) = match map {
                        MapField::Headers => (http, Field::Headers),
                        MapField::ContextExtensions => (attrs, Field::ContextExtensions),
                    };
                    let found = match parent.and_then(|p| field_of(p, field)) {
                        Some(Value::Map(m)) => m.get(&Value::String(Str::Borrowed(key))),
                        _ => None,
                    };
                    if let (None, Some(d)) = (&found, default) {
                        matching(postings, d, &mut out);
                        continue;
                    }
                    found
                }
            };
            match value {
                Some(Value::String(s)) => matching(postings, &s, &mut out),
                // Another kind (bytes) equals no string literal.
                Some(_) => {}
                // Absent, or unreadable: the condition is an error, or the
                // request is not what the index knows; never ruled out.
                None => out.extend_from_slice(&postings.all),
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The order in which the engine visits the policies of a set of `n`
    /// for `request`: `None` for every policy, unpruned; with `all`, every
    /// policy, the ruled-out ones marked.
    pub fn walk(&self, n: usize, request: Option<&CheckRequest>, all: bool) -> Walk {
        let linear = Walk {
            steps: Steps::new(),
            pos: 0,
            next: 0,
            n,
            linear: true,
        };
        let Some(request) = request else {
            return linear;
        };
        if !self.is_useful() || self.selections.len() != n {
            return linear;
        }
        let steps = if all {
            // Traced: every condition evaluated, so the trace shows each.
            let candidates = self.candidates(request);
            let mut steps: Steps = (0..n as u32).map(|i| (i, Mark::RuledOut)).collect();
            for &c in &candidates {
                steps[c as usize].1 = Mark::Candidate;
            }
            steps
        } else {
            let mut proven = Candidates::new();
            let candidates = self.collect(request, Some(&mut proven));
            let mut steps: Steps = candidates
                .into_iter()
                .map(|c| (c, Mark::Candidate))
                .collect();
            for p in proven {
                let Selection::Indexed(Constraint { whole: Some(j), .. }) =
                    *self.selections[p as usize]
                else {
                    continue;
                };
                if let Ok(at) = steps.binary_search_by_key(&p, |s| s.0) {
                    steps[at].1 = Mark::Proven(j);
                }
            }
            steps
        };
        Walk {
            steps,
            pos: 0,
            next: 0,
            n,
            linear: false,
        }
    }

    /// The names of the policies of `set` that the index rules out for
    /// `request`.
    pub fn ruled_out<'s>(
        &self,
        set: &'s crate::policy::PolicySet,
        request: &CheckRequest,
    ) -> Vec<&'s str> {
        if !self.is_useful() {
            return Vec::new();
        }
        let candidates = self.candidates(request);
        set.policies
            .iter()
            .enumerate()
            .filter(|(i, _)| candidates.binary_search(&(*i as u32)).is_err())
            .map(|(_, p)| p.name.as_str())
            .collect()
    }
}

fn node(parent: Node<'_>, field: Field) -> Option<Node<'_>> {
    match field_of(parent, field)? {
        Value::Node(n) => Some(n),
        _ => None,
    }
}

impl Postings {
    fn matching(&self, value: &str, out: &mut Candidates) {
        if let Some(p) = self.exact.get(value) {
            out.extend_from_slice(p);
        }
        for &l in &self.prefix_lengths {
            let Some(prefix) = value.get(..l) else {
                // Past the value, or inside a character: no prefix of that
                // length can match.
                if l > value.len() {
                    break;
                }
                continue;
            };
            if let Some(p) = self.prefixes.get(prefix) {
                out.extend_from_slice(p);
            }
        }
    }
}

/// The policies a request may concern ([`PolicyIndex::candidates`]): on
/// the stack when they are few, as they are for most requests.
pub type Candidates = smallvec::SmallVec<[u32; 16]>;

type Steps = smallvec::SmallVec<[(u32, Mark); 16]>;

/// What the index says of a policy the engine visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Not ruled out: evaluated as without the index.
    Candidate,
    /// Ruled out: one of its matchConditions is false for this request.
    RuledOut,
    /// A candidate whose matchCondition at this place is true for this
    /// request (its attribute matched a constraint that is the whole
    /// condition): the engine evaluates the others only.
    Proven(u32),
}

/// The engine's walk over a set for one request ([`PolicyIndex::walk`]).
#[derive(Debug)]
pub struct Walk {
    /// (policy, what the index says of it) in order.
    steps: Steps,
    pos: usize,
    /// The first policy not yet visited.
    next: usize,
    n: usize,
    /// Every policy from `next` on, none ruled out.
    linear: bool,
}

impl Walk {
    /// The next policy to visit and what the index says of it.
    /// `linear`: visit every policy from here on, none ruled out nor
    /// proven (the request's cost budget is spent: every expression of
    /// every policy fails, as in an evaluation without the index).
    pub fn next(&mut self, linear: bool) -> Option<(usize, Mark)> {
        self.linear |= linear;
        if self.linear {
            let i = self.next;
            if i >= self.n {
                return None;
            }
            self.next += 1;
            return Some((i, Mark::Candidate));
        }
        while let Some(&(i, mark)) = self.steps.get(self.pos) {
            self.pos += 1;
            if (i as usize) < self.next {
                continue;
            }
            self.next = i as usize + 1;
            return Some((i as usize, mark));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(expr: &str) -> cel::Program {
        crate::cel::env()
            .compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn selection(conditions: &[&str]) -> Selection {
        let programs: Vec<cel::Program> = conditions.iter().map(|c| parse(c)).collect();
        select(programs.iter().map(|p| p.expression()))
    }

    fn describe(conditions: &[&str]) -> String {
        selection(conditions).describe()
    }

    const HOST: &str = "object.attributes.request.http.host";

    #[test]
    fn recognises_each_indexable_shape() {
        for (condition, described) in [
            (format!(r#"{HOST} == "a.example""#), "request.http.host: 1 value"),
            (format!(r#""a.example" == {HOST}"#), "request.http.host: 1 value"),
            (
                r#"object.attributes.request.http.method == "GET""#.into(),
                "request.http.method: 1 value",
            ),
            (
                r#"object.attributes.request.http.path.startsWith("/api/")"#.into(),
                "request.http.path: 1 prefix",
            ),
            (
                format!(r#"{HOST} in ["a", "b", "c"]"#),
                "request.http.host: 3 values",
            ),
            (
                r#"object.attributes.request.http.headers["x-tenant"] == "acme""#.into(),
                r#"request.http.headers["x-tenant"]: 1 value"#,
            ),
            (
                r#"object.attributes.request.http.headers[?"x-tenant"].orValue("") == "acme""#
                    .into(),
                r#"request.http.headers[?"x-tenant"].orValue(""): 1 value"#,
            ),
            (
                r#"object.attributes.context_extensions["tenant"] == "acme""#.into(),
                r#"context_extensions["tenant"]: 1 value"#,
            ),
            (
                format!(r#"{HOST} == "a" || {HOST} == "b""#),
                "request.http.host: 2 values",
            ),
            (
                r#"object.attributes.request.http.path == "/" || object.attributes.request.http.path.startsWith("/api/")"#.into(),
                "request.http.path: 1 value, 1 prefix",
            ),
            (
                format!(r#"object.attributes.request.http.path.startsWith("/x") && {HOST} == "a""#),
                "request.http.host: 1 value",
            ),
            (format!("{HOST} in []"), "request.http.host: 0 values"),
        ] {
            assert_eq!(describe(&[&condition]), described, "{condition}");
        }
    }

    #[test]
    fn leaves_near_misses_unindexed() {
        for condition in [
            format!(r#"{HOST} != "a""#),
            format!(r#"!({HOST} == "a")"#),
            format!(r#"{HOST} == "a" || object.attributes.request.http.method == "GET""#),
            format!(r#"{HOST} == "a" || true"#),
            format!(r#"{HOST}.endsWith("a")"#),
            format!(r#"{HOST}.lowerAscii() == "a""#),
            format!(r#"{HOST} in ["a", 1]"#),
            format!(r#"{HOST} in ["a", ?optional.of("b")]"#),
            r#"object.attributes.request.http.headers["x"].startsWith("a")"#.into(),
            r#"object.attributes.request.http.headers[?"x"].orValue(dyn("")) == "a""#.into(),
            r#"object.attributes.request.http.headers.x == "a""#.into(),
            r#"object.attributes.request.http.body == "a""#.into(),
            r#"object.attributes.source.principal == "a""#.into(),
            r#"variables.host == "a""#.into(),
            r#"[object][0].attributes.request.http.host == "a""#.into(),
            r#"has(object.attributes.request.http.host) == true"#.into(),
            r#"object.attributes.request.http.host == object.attributes.request.http.path"#.into(),
            r#""a" == "a""#.into(),
            r#"cel.bind(h, object.attributes.request.http.host, h == "a")"#.into(),
        ] {
            assert_eq!(
                selection(&[&condition]),
                Selection::Unindexed,
                "{condition}"
            );
        }
        assert_eq!(selection(&[]), Selection::Unconditional);
    }

    #[test]
    fn prefers_an_exact_lookup_on_an_attribute_never_absent() {
        let host = format!(r#"{HOST} in ["a", "b"]"#);
        let header = r#"object.attributes.request.http.headers["x"] == "a""#;
        let path = r#"object.attributes.request.http.path.startsWith("/")"#;
        assert_eq!(
            describe(&[path, header, &host]),
            "request.http.host: 2 values"
        );
        assert_eq!(
            describe(&[path, header]),
            r#"request.http.headers["x"]: 1 value"#
        );
        // An unindexable condition beside an indexable one.
        assert_eq!(
            describe(&[r#"variables.x == 1"#, path]),
            "request.http.path: 1 prefix"
        );
    }

    fn request(v: serde_json::Value) -> CheckRequest {
        crate::request_json::from_value(&v).unwrap()
    }

    fn index(policies: &[&[&str]]) -> (Vec<Vec<cel::Program>>, PolicyIndex) {
        let programs: Vec<Vec<cel::Program>> = policies
            .iter()
            .map(|cs| cs.iter().map(|c| parse(c)).collect())
            .collect();
        let index = PolicyIndex::build(programs.iter().map(|ps| ps.iter().map(|p| p.expression())));
        (programs, index)
    }

    #[test]
    fn candidates_are_those_not_ruled_out_in_order() {
        let (_p, index) = index(&[
            &[r#"object.attributes.request.http.host == "a""#],
            &[r#"object.attributes.request.http.host in ["a", "b"]"#],
            &[r#"object.attributes.request.http.path.startsWith("/api/")"#],
            &[r#"object.attributes.request.http.path.startsWith("/api/v1/")"#],
            &[r#"object.attributes.request.http.headers["x-t"] == "t1""#],
            &[r#"object.attributes.request.http.headers[?"x-t"].orValue("t1") == "t1""#],
            &[r#"object.attributes.context_extensions["k"] == "v""#],
            &[r#"variables.anything"#],
            &[],
        ]);
        let r = request(serde_json::json!({"attributes": {"request": {"http": {
            "host": "b", "path": "/api/v1/x", "headers": {"x-t": "t2"}}}}}));
        assert_eq!(index.candidates(&r).as_slice(), [1, 2, 3, 6, 7, 8]);
        let r = request(serde_json::json!({"attributes": {
            "contextExtensions": {"k": "v"},
            "request": {"http": {"host": "a", "path": "/api/", "headers": {"x-t": "t1"}}}}}));
        assert_eq!(index.candidates(&r).as_slice(), [0, 1, 2, 4, 5, 6, 7, 8]);
        // No request at all: attributes read as empty; absent map entries
        // keep their policies.
        assert_eq!(
            index.candidates(&CheckRequest::default()).as_slice(),
            [4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn a_header_that_is_not_text_equals_no_literal() {
        let (_p, index) = index(&[
            &[r#"object.attributes.request.http.headers["x-t"] == "a""#],
            &[r#"object.attributes.request.http.headers["x-u"] == "a""#],
        ]);
        let r = request(serde_json::json!({"attributes": {"request": {"http": {
            "headerMap": {"headers": [{"key": "x-t", "rawValue": "/w=="}]}}}}}));
        // x-t is bytes (not UTF-8): false; x-u is absent: an error.
        assert_eq!(index.candidates(&r).as_slice(), [1]);
    }

    #[test]
    fn a_walk_visits_the_candidates_and_goes_linear_on_demand() {
        use Mark::{Candidate, Proven, RuledOut};
        let programs: Vec<cel::Program> = (0..6)
            .map(|i| parse(&format!(r#"object.attributes.request.http.host == "h{i}""#)))
            .collect();
        let index = PolicyIndex::build(programs.iter().map(|p| std::iter::once(p.expression())));
        let r = request(serde_json::json!({"attributes": {"request": {"http": {"host": "h3"}}}}));
        let mut w = index.walk(6, Some(&r), false);
        assert_eq!(w.next(false), Some((3, Proven(0))));
        assert_eq!(w.next(false), None);
        let r1 = request(serde_json::json!({"attributes": {"request": {"http": {"host": "h1"}}}}));
        let mut w = index.walk(6, Some(&r1), false);
        assert_eq!(w.next(false), Some((1, Proven(0))));
        // Linear: nothing ruled out, nothing proven.
        assert_eq!(w.next(true), Some((2, Candidate)));
        assert_eq!(w.next(false), Some((3, Candidate)));
        assert_eq!(w.next(false), Some((4, Candidate)));
        // Traced: every policy, nothing proven (the trace shows each
        // condition's result).
        let mut w = index.walk(6, Some(&r), true);
        let all: Vec<_> = std::iter::from_fn(|| w.next(false)).collect();
        assert_eq!(
            all,
            vec![
                (0, RuledOut),
                (1, RuledOut),
                (2, RuledOut),
                (3, Candidate),
                (4, RuledOut),
                (5, RuledOut)
            ]
        );
        let mut w = index.walk(6, None, false);
        assert_eq!(std::iter::from_fn(|| w.next(false)).count(), 6);
    }

    #[test]
    fn a_condition_is_proven_only_when_it_is_the_whole_of_a_matched_constraint() {
        use Mark::{Candidate, Proven};
        let (_p, index) = index(&[
            // 0: the indexed condition is the second one.
            &[
                r#"variables.anything"#,
                r#"object.attributes.request.http.path.startsWith("/api/")"#,
            ],
            // 1: a conjunct of the condition, not its whole.
            &[r#"object.attributes.request.http.host == "a" && variables.x"#],
            // 2: a disjunction on one attribute is a whole.
            &[
                r#"object.attributes.request.http.host == "a" || object.attributes.request.http.host == "b""#,
            ],
            // 3: absent map entry without a default: a candidate, unproven.
            &[r#"object.attributes.request.http.headers["x-absent"] == "v""#],
            // 4: absent map entry whose default matches: proven.
            &[r#"object.attributes.request.http.headers[?"x-absent"].orValue("v") == "v""#],
            // 5: no indexable condition.
            &[r#"variables.anything"#],
            // 6: no condition.
            &[],
        ]);
        let r = request(serde_json::json!({"attributes": {"request": {"http": {
            "host": "a", "path": "/api/x"}}}}));
        let mut w = index.walk(7, Some(&r), false);
        let all: Vec<_> = std::iter::from_fn(|| w.next(false)).collect();
        assert_eq!(
            all,
            vec![
                (0, Proven(1)),
                (1, Candidate),
                (2, Proven(0)),
                (3, Candidate),
                (4, Proven(0)),
                (5, Candidate),
                (6, Candidate)
            ]
        );
    }
}
