//! The planner: a parsed, checked expression → an executable plan, and the
//! plan's evaluation.
//!
//! What can be decided when the policy loads is: `object.a.b.c` becomes one
//! path read from the request, `variables.x` a slot of the evaluation
//! context, `mcp.ToolsCallMethod` and the type names constants, each call
//! the library functions of its name and arity, and a call of a pure
//! function on constants its value. Comprehension and `cel.bind` variables
//! are numbered slots; a comprehension that appends to its accumulator
//! (`map`, `filter`, `transformList`, `transformMap`) appends in place.
//!
//! Evaluation recurses over the plan, whose depth the load-time limits
//! bound; it never recurses over the size of the input (comprehensions
//! loop).

use super::lib;
use super::request::{Field, Node as ReqNode};
use super::value::{compare, equals, orderable, Key, Map, OwnedMap, Type, Value};
use super::{Ctx, Error, ErrorKind, Function, Meter};
use cel::common::ast::{CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::sync::{Arc, LazyLock};

/// A compiled expression. Cloning it shares the plan: policies that
/// hold the same expression (many tenants' policies differ only in a
/// literal or two) hold one plan of it.
#[derive(Debug, Clone)]
pub struct Program(Arc<Planned>);

#[derive(Debug)]
struct Planned {
    root: Node,
    /// Comprehension and `cel.bind` variables.
    slots: usize,
}

/// Why an expression could not be planned. The checker refuses these
/// first; the planner reports what slipped through rather than panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

#[derive(Debug)]
enum Node {
    Const(Value<'static>),
    /// `object`.
    Object,
    /// `object.a.b.c`: fields read from the request in one go.
    ObjectPath(Box<[PathStep]>),
    /// `variables.<name>`.
    Var(usize),
    /// A comprehension or `cel.bind` variable.
    Local(usize),
    Select(Box<Node>, Box<str>),
    Has(Box<Node>, Box<str>),
    OptSelect(Box<Node>, Box<str>),
    Index(Box<Node>, Box<Node>),
    /// `s.split(sep)[k]`: the `split` call, and the index.
    SplitIndex(Box<CallPlan>, Box<Node>),
    OptIndex(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    NotStrictlyFalse(Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Eq(Box<Node>, Box<Node>),
    Ne(Box<Node>, Box<Node>),
    Cmp(Box<Node>, Box<Node>, Rel),
    In(Box<Node>, Box<Node>),
    OptOr(Box<Node>, Box<Node>),
    OptOrValue(Box<Node>, Box<Node>),
    /// `a[?k].orValue(d)`, read without building the optional.
    IndexOr(Box<Node>, Box<Node>, Box<Node>),
    /// `a.?f.orValue(d)`, likewise.
    SelectOr(Box<Node>, Box<str>, Box<Node>),
    Call(Box<CallPlan>),
    List(Vec<Node>, Vec<bool>),
    MapLit(Vec<(Node, Node, bool)>),
    /// `cel.@mapInsert(map, key, value)` and `cel.@mapInsert(map, entries)`.
    MapInsert(Vec<Node>),
    /// A message literal (`envoy.service.auth.v3.CheckResponse{...}`).
    Message(Box<MessagePlan>),
    Comprehension(Box<Loop>),
}

/// A message literal: the message and its fields, each the index of its
/// declaration, its value, and whether it is an optional entry (`?f: v`).
#[derive(Debug)]
struct MessagePlan {
    message: &'static lib::messages::MessageDecl,
    fields: Vec<(usize, Node, bool)>,
}

/// A step of an [`Node::ObjectPath`]: the field's name, resolved to a
/// field of the request's messages where it names one (past a map, a
/// step is a key).
#[derive(Debug)]
struct PathStep {
    field: Option<Field>,
    name: Box<str>,
}

impl PathStep {
    fn new(name: Box<str>) -> Self {
        PathStep {
            field: Field::of(&name),
            name,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Rel {
    Lt,
    Le,
    Gt,
    Ge,
}

struct CallPlan {
    name: Box<str>,
    functions: Vec<&'static Function>,
    args: Vec<Node>,
}

impl std::fmt::Debug for CallPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({:?})", self.name, self.args)
    }
}

#[derive(Debug)]
struct Loop {
    range: Node,
    var1: usize,
    var2: Option<usize>,
    accu: usize,
    init: Node,
    cond: Node,
    /// `Some(v)` when `cond` is the quantifier macros' own
    /// (`@not_strictly_false(!accu)` for `exists`: `Some(true)`,
    /// `@not_strictly_false(accu)` for `all`: `Some(false)`): the loop
    /// stops once the accumulator is `v`, read without evaluating `cond`.
    stop_at: Option<bool>,
    step: Step,
    result: Node,
}

/// A comprehension's step, with the shapes that grow the accumulator in
/// place recognised.
#[derive(Debug)]
enum Step {
    Any(Node),
    /// `accu + [elems]`.
    Append(Vec<Node>),
    /// `cond ? accu + [elems] : accu`.
    AppendIf(Node, Vec<Node>),
    /// `cel.@mapInsert(accu, ...)`.
    Insert(Vec<Node>),
    /// `cond ? cel.@mapInsert(accu, ...) : accu`.
    InsertIf(Node, Vec<Node>),
    /// `accu || test` (`Logic(true, test)`) or `accu && test`
    /// (`Logic(false, test)`): the quantifier macros' step, with the
    /// accumulator read in place.
    Logic(bool, Node),
}

/// Compiles `expr`. `variable` gives the slot of each `variables.<name>`
/// the policy declares.
pub fn compile(
    expr: &IdedExpr,
    variable: &dyn Fn(&str) -> Option<usize>,
) -> Result<Program, PlanError> {
    plan(expr, variable, true)
}

/// [`compile`] without constant folding: every call, operator and literal
/// of `expr` runs when the program is evaluated. Folding must not change
/// any result; tests compare the two plans of an expression to prove it.
#[doc(hidden)]
pub fn compile_unfolded(
    expr: &IdedExpr,
    variable: &dyn Fn(&str) -> Option<usize>,
) -> Result<Program, PlanError> {
    plan(expr, variable, false)
}

fn plan(
    expr: &IdedExpr,
    variable: &dyn Fn(&str) -> Option<usize>,
    folds: bool,
) -> Result<Program, PlanError> {
    let mut p = Planner {
        variable,
        folds,
        scopes: Vec::new(),
        next_slot: 0,
        max_slots: 0,
    };
    let root = p.expr(expr)?;
    Ok(Program(Arc::new(Planned {
        root,
        slots: p.max_slots,
    })))
}

struct Planner<'a> {
    variable: &'a dyn Fn(&str) -> Option<usize>,
    /// Whether constant sub-expressions are folded ([`fold`]).
    folds: bool,
    /// Local names in scope, innermost last, with their slots.
    scopes: Vec<(String, usize)>,
    next_slot: usize,
    max_slots: usize,
}

fn err<T>(m: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(m.into()))
}

/// `a.b.c` as text, when `e` spells a qualified name.
fn qualified(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Ident(n) => Some(n.clone()),
        Expr::Select(s) if !s.test => Some(format!("{}.{}", qualified(&s.operand)?, s.field)),
        _ => None,
    }
}

fn literal(l: &LiteralValue) -> Value<'static> {
    match l {
        LiteralValue::Boolean(b) => Value::Bool(*b.inner()),
        LiteralValue::Bytes(b) => Value::bytes(b.inner().to_vec()),
        LiteralValue::Double(d) => Value::Double(*d.inner()),
        LiteralValue::Int(i) => Value::Int(*i.inner()),
        LiteralValue::Null => Value::Null,
        LiteralValue::String(s) => Value::string(s.inner()),
        LiteralValue::UInt(u) => Value::Uint(*u.inner()),
    }
}

fn type_constant(name: &str) -> Option<Type> {
    Some(match name {
        "bool" => Type::Bool,
        "int" => Type::Int,
        "uint" => Type::Uint,
        "double" => Type::Double,
        "string" => Type::String,
        "bytes" => Type::Bytes,
        "list" => Type::List,
        "map" => Type::Map,
        "null_type" => Type::Null,
        "type" => Type::Type,
        "optional_type" => Type::Optional,
        "google.protobuf.Timestamp" => Type::Timestamp,
        "google.protobuf.Duration" => Type::Duration,
        _ => return None,
    })
}

impl Planner<'_> {
    fn fold(&self, node: Node) -> Node {
        if self.folds {
            fold(node)
        } else {
            node
        }
    }

    fn local(&self, name: &str) -> Option<usize> {
        self.scopes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
    }

    fn bind(&mut self, name: &str) -> usize {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.max_slots = self.max_slots.max(self.next_slot);
        self.scopes.push((name.to_owned(), slot));
        slot
    }

    fn unbind(&mut self, n: usize) {
        for _ in 0..n {
            self.scopes.pop();
            self.next_slot -= 1;
        }
    }

    fn boxed(&mut self, e: &IdedExpr) -> Result<Box<Node>, PlanError> {
        self.expr(e).map(Box::new)
    }

    fn expr(&mut self, e: &IdedExpr) -> Result<Node, PlanError> {
        Ok(match &e.expr {
            Expr::Literal(l) => Node::Const(literal(l)),
            Expr::Ident(name) => self.ident(name)?,
            Expr::Select(s) => {
                if !s.test {
                    if let Some(n) = self.select_root(e)? {
                        return Ok(n);
                    }
                }
                let operand = self.boxed(&s.operand)?;
                let field: Box<str> = s.field.as_str().into();
                if s.test {
                    Node::Has(operand, field)
                } else {
                    match *operand {
                        // `object.a` then `.b`: one path.
                        Node::Object => Node::ObjectPath(vec![PathStep::new(field)].into()),
                        Node::ObjectPath(p) => {
                            let mut p = p.into_vec();
                            p.push(PathStep::new(field));
                            Node::ObjectPath(p.into())
                        }
                        other => Node::Select(Box::new(other), field),
                    }
                }
            }
            Expr::Call(c) => self.call(c)?,
            Expr::List(l) => {
                let elems = l
                    .elements
                    .iter()
                    .map(|x| self.expr(x))
                    .collect::<Result<Vec<_>, _>>()?;
                let optional = (0..elems.len())
                    .map(|i| l.optional_indices.contains(&i))
                    .collect();
                self.fold(Node::List(elems, optional))
            }
            Expr::Map(m) => {
                let mut entries = Vec::with_capacity(m.entries.len());
                for entry in &m.entries {
                    let EntryExpr::MapEntry(me) = &entry.expr else {
                        return err("a message field initialiser is not a map entry");
                    };
                    entries.push((self.expr(&me.key)?, self.expr(&me.value)?, me.optional));
                }
                self.fold(Node::MapLit(entries))
            }
            Expr::Struct(s) => return self.message(s),
            Expr::Comprehension(c) => self.comprehension(c)?,
            Expr::Unspecified => return err("an incomplete expression"),
        })
    }

    /// A message literal; one whose fields are all constants is built now,
    /// and one that cannot be built refuses the policy.
    fn message(&mut self, s: &cel::common::ast::StructExpr) -> Result<Node, PlanError> {
        let Some(message) = lib::messages::lookup(&s.type_name) else {
            return err(format!("unknown message type `{}`", s.type_name));
        };
        let mut fields = Vec::with_capacity(s.entries.len());
        for entry in &s.entries {
            let EntryExpr::StructField(f) = &entry.expr else {
                return err("a map entry in a message literal");
            };
            let Some((index, _)) = message.field(&f.field) else {
                return err(format!("no field {:?} on {}", f.field, message.name));
            };
            fields.push((index, self.expr(&f.value)?, f.optional));
        }
        let node = Node::Message(Box::new(MessagePlan { message, fields }));
        if !self.folds {
            return Ok(node);
        }
        // A constant literal that cannot be built is refused here, where
        // other constant expressions are left to fail when they run.
        try_fold(node).map_err(|(_, e)| PlanError(e.message.clone()))
    }

    fn ident(&mut self, name: &str) -> Result<Node, PlanError> {
        if let Some(slot) = self.local(name) {
            return Ok(Node::Local(slot));
        }
        if name == "object" {
            return Ok(Node::Object);
        }
        if let Some(t) = type_constant(name) {
            return Ok(Node::Const(Value::Type(t)));
        }
        err(format!("undeclared reference to `{name}`"))
    }

    /// `variables.x`, `mcp.Constant` and qualified type names.
    fn select_root(&mut self, e: &IdedExpr) -> Result<Option<Node>, PlanError> {
        let Expr::Select(s) = &e.expr else {
            return Ok(None);
        };
        if let Some(q) = qualified(e) {
            if self.local(q.split('.').next().unwrap_or("")).is_none() {
                if let Some(i) = crate::cel::check::proto::enum_constant(&q) {
                    return Ok(Some(Node::Const(Value::Int(i))));
                }
            }
        }
        let Expr::Ident(root) = &s.operand.expr else {
            if let Some(q) = qualified(e) {
                if self.local(q.split('.').next().unwrap_or("")).is_none() {
                    if let Some(t) = type_constant(&q) {
                        return Ok(Some(Node::Const(Value::Type(t))));
                    }
                }
            }
            return Ok(None);
        };
        if self.local(root).is_some() {
            return Ok(None);
        }
        match root.as_str() {
            "variables" => match (self.variable)(&s.field) {
                Some(slot) => Ok(Some(Node::Var(slot))),
                None => err(format!("undeclared variable `variables.{}`", s.field)),
            },
            "mcp" => match lib::mcp::constant(&s.field) {
                Some(v) => Ok(Some(Node::Const(v))),
                None => err(format!("unknown constant `mcp.{}`", s.field)),
            },
            "net" | "kubernetes" => {
                let name = format!("{root}.{}", s.field);
                Ok(lib::is_type_name(&name)
                    .then(|| Node::Const(Value::Type(Type::Named(Arc::from(name))))))
            }
            _ => Ok(None),
        }
    }

    fn call(&mut self, c: &CallExpr) -> Result<Node, PlanError> {
        let mut name = c.func_name.clone();
        let mut target = c.target.as_deref();
        if let Some(t) = target {
            if let Some(q) = qualified(t) {
                let root = q.split('.').next().unwrap_or("");
                let is_value = self.local(root).is_some() || matches!(root, "object" | "variables");
                if !is_value {
                    name = format!("{q}.{}", c.func_name);
                    target = None;
                }
            }
        }
        let two = |p: &mut Self| -> Result<(Box<Node>, Box<Node>), PlanError> {
            match (c.args.first(), c.args.get(1), c.args.len()) {
                (Some(a), Some(b), 2) => Ok((p.boxed(a)?, p.boxed(b)?)),
                _ => err(format!("`{}` takes two operands", c.func_name)),
            }
        };
        let node = match (name.as_str(), target) {
            ("_&&_", None) => {
                let (a, b) = two(self)?;
                Node::And(a, b)
            }
            ("_||_", None) => {
                let (a, b) = two(self)?;
                Node::Or(a, b)
            }
            ("!_", None) if c.args.len() == 1 => Node::Not(self.boxed(&c.args[0])?),
            ("@not_strictly_false", None) if c.args.len() == 1 => {
                Node::NotStrictlyFalse(self.boxed(&c.args[0])?)
            }
            ("_?_:_", None) if c.args.len() == 3 => Node::Cond(
                self.boxed(&c.args[0])?,
                self.boxed(&c.args[1])?,
                self.boxed(&c.args[2])?,
            ),
            ("_==_", None) => {
                let (a, b) = two(self)?;
                Node::Eq(a, b)
            }
            ("_!=_", None) => {
                let (a, b) = two(self)?;
                Node::Ne(a, b)
            }
            ("_<_", None) | ("_<=_", None) | ("_>_", None) | ("_>=_", None) => {
                let rel = match name.as_str() {
                    "_<_" => Rel::Lt,
                    "_<=_" => Rel::Le,
                    "_>_" => Rel::Gt,
                    _ => Rel::Ge,
                };
                let (a, b) = two(self)?;
                Node::Cmp(a, b, rel)
            }
            ("@in", None) => {
                let (a, b) = two(self)?;
                Node::In(a, b)
            }
            ("_[_]", None) => {
                // `variables["name"]` is `variables.name`.
                if let (Some(Expr::Ident(root)), Some(Expr::Literal(LiteralValue::String(n)))) = (
                    c.args.first().map(|a| &a.expr),
                    c.args.get(1).map(|a| &a.expr),
                ) {
                    if root == "variables" && self.local(root).is_none() {
                        return match (self.variable)(n.inner()) {
                            Some(slot) => Ok(Node::Var(slot)),
                            None => err(format!("undeclared variable `variables.{}`", n.inner())),
                        };
                    }
                }
                let (a, b) = two(self)?;
                match *a {
                    // `s.split(sep)[k]`: the part read without building the
                    // list (the bearer token of `authorization`, a path
                    // segment).
                    Node::Call(c)
                        if &*c.name == "split" && c.args.len() == 2 && c.functions.len() == 1 =>
                    {
                        Node::SplitIndex(c, b)
                    }
                    a => Node::Index(Box::new(a), b),
                }
            }
            ("_[?_]", None) => {
                let (a, b) = two(self)?;
                Node::OptIndex(a, b)
            }
            ("_?._", None) => {
                let (Some(a), Some(Expr::Literal(LiteralValue::String(f)))) =
                    (c.args.first(), c.args.get(1).map(|x| &x.expr))
                else {
                    return err("`.?` takes a field name");
                };
                Node::OptSelect(self.boxed(a)?, f.inner().into())
            }
            ("or", Some(t)) if c.args.len() == 1 => {
                Node::OptOr(self.boxed(t)?, self.boxed(&c.args[0])?)
            }
            ("orValue", Some(t)) if c.args.len() == 1 => {
                let default = self.boxed(&c.args[0])?;
                match self.expr(t)? {
                    Node::OptIndex(a, k) => Node::IndexOr(a, k, default),
                    Node::OptSelect(a, f) => Node::SelectOr(a, f, default),
                    other => Node::OptOrValue(Box::new(other), default),
                }
            }
            ("cel.@mapInsert", None) if matches!(c.args.len(), 2 | 3) => Node::MapInsert(
                c.args
                    .iter()
                    .map(|a| self.expr(a))
                    .collect::<Result<_, _>>()?,
            ),
            _ => {
                let functions = lib::lookup(&name, target.is_some(), c.args.len());
                if functions.is_empty() {
                    return err(format!(
                        "undeclared {} `{name}` with {} argument(s)",
                        if target.is_some() {
                            "method"
                        } else {
                            "function"
                        },
                        c.args.len()
                    ));
                }
                let mut args = Vec::with_capacity(c.args.len() + 1);
                if let Some(t) = target {
                    args.push(self.expr(t)?);
                }
                for a in &c.args {
                    args.push(self.expr(a)?);
                }
                // A literal pattern (`matches`, `find`, `findAll`) is
                // compiled now, once; one that does not compile refuses
                // the policy.
                if let Some(Node::Const(Value::String(p))) = args.get(1) {
                    if let Some(compiled) = lib::regex::literal(&name, p) {
                        args[1] = Node::Const(compiled.map_err(PlanError)?);
                    }
                }
                Node::Call(Box::new(CallPlan {
                    name: name.into(),
                    functions,
                    args,
                }))
            }
        };
        Ok(self.fold(node))
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) -> Result<Node, PlanError> {
        let range = self.expr(&c.iter_range)?;
        let init = self.expr(&c.accu_init)?;
        let accu = self.bind(&c.accu_var);
        let var1 = self.bind(&c.iter_var);
        let var2 = c.iter_var2.as_deref().map(|v| self.bind(v));
        let cond = self.expr(&c.loop_cond)?;
        let is_accu = |n: &Node| matches!(n, Node::Local(s) if *s == accu);
        let stop_at = match &cond {
            Node::NotStrictlyFalse(a) => match &**a {
                Node::Not(a) if is_accu(a) => Some(true),
                a if is_accu(a) => Some(false),
                _ => None,
            },
            _ => None,
        };
        let step = self.step(&c.loop_step, accu)?;
        self.unbind(if var2.is_some() { 2 } else { 1 });
        let result = self.expr(&c.result)?;
        self.unbind(1);
        Ok(Node::Comprehension(Box::new(Loop {
            range,
            var1,
            var2,
            accu,
            init,
            cond,
            stop_at,
            step,
            result,
        })))
    }

    fn step(&mut self, e: &IdedExpr, accu: usize) -> Result<Step, PlanError> {
        let node = self.expr(e)?;
        let is_accu = |n: &Node| matches!(n, Node::Local(s) if *s == accu);
        Ok(match node {
            Node::Call(c) if &*c.name == "_+_" && c.args.len() == 2 && is_accu(&c.args[0]) => {
                let mut args = c.args;
                match args.pop() {
                    Some(Node::List(elems, opt)) if !opt.contains(&true) => Step::Append(elems),
                    Some(other) => Step::Any(Node::Call(Box::new(CallPlan {
                        name: c.name,
                        functions: c.functions,
                        args: {
                            args.push(other);
                            args
                        },
                    }))),
                    None => return err("a comprehension step lost its operands"),
                }
            }
            Node::MapInsert(args) if is_accu(&args[0]) => Step::Insert(args),
            Node::Cond(test, then, otherwise) if is_accu(&otherwise) => match *then {
                Node::Call(c)
                    if &*c.name == "_+_"
                        && c.args.len() == 2
                        && is_accu(&c.args[0])
                        && matches!(&c.args[1], Node::List(_, opt) if !opt.contains(&true)) =>
                {
                    let mut args = c.args;
                    let Some(Node::List(elems, _)) = args.pop() else {
                        return err("a comprehension step lost its operands");
                    };
                    Step::AppendIf(*test, elems)
                }
                Node::MapInsert(args) if is_accu(&args[0]) => Step::InsertIf(*test, args),
                then => Step::Any(Node::Cond(test, Box::new(then), otherwise)),
            },
            Node::Or(a, test) if is_accu(&a) => Step::Logic(true, *test),
            Node::And(a, test) if is_accu(&a) => Step::Logic(false, *test),
            other => Step::Any(other),
        })
    }
}

/// Folds a node whose operands are all constants into its value, when
/// computing it needs nothing of a request: a pure function's call, a list,
/// map or message literal. An error is left to happen at run time, where the
/// policy's `failurePolicy` decides it.
fn fold(node: Node) -> Node {
    try_fold(node).unwrap_or_else(|(node, _)| node)
}

/// [`fold`], giving back the node and the error when its evaluation fails.
fn try_fold(node: Node) -> Result<Node, (Node, Error)> {
    let foldable = match &node {
        Node::Call(c) => {
            c.functions.iter().all(|f| f.pure) && c.args.iter().all(|a| matches!(a, Node::Const(_)))
        }
        Node::List(elems, _) => elems.iter().all(|a| matches!(a, Node::Const(_))),
        Node::MapLit(entries) => entries
            .iter()
            .all(|(k, v, _)| matches!(k, Node::Const(_)) && matches!(v, Node::Const(_))),
        Node::Eq(a, b) | Node::Ne(a, b) | Node::Cmp(a, b, _) | Node::In(a, b) => {
            matches!(**a, Node::Const(_)) && matches!(**b, Node::Const(_))
        }
        Node::Not(a) => matches!(**a, Node::Const(_)),
        Node::Message(m) => m.fields.iter().all(|(_, v, _)| matches!(v, Node::Const(_))),
        _ => false,
    };
    if !foldable {
        return Ok(node);
    }
    let program = Planned {
        root: node,
        slots: 0,
    };
    let result = {
        let mut ctx = Ctx::new(None, Meter::new(1_000_000));
        program.eval(&mut ctx).map(Value::into_static)
    };
    match result {
        Ok(v) => Ok(Node::Const(v)),
        Err(e) => Err((program.root, e)),
    }
}

static EMPTY_REQUEST: LazyLock<CheckRequest> = LazyLock::new(CheckRequest::default);

/// Comprehension and `cel.bind` variables: on the stack for the few that
/// most expressions have.
type Locals<'r> = smallvec::SmallVec<[Result<Value<'r>, Error>; 4]>;

impl Planned {
    fn eval<'r>(&'r self, ctx: &mut Ctx<'r>) -> Result<Value<'r>, Error> {
        let mut locals: Locals<'r> = Locals::new();
        for _ in 0..self.slots {
            locals.push(Ok(Value::Null));
        }
        self.root.eval(ctx, &mut locals)
    }
}

impl Program {
    /// Evaluates the expression in `ctx`.
    pub fn eval<'r>(&'r self, ctx: &mut Ctx<'r>) -> Result<Value<'r>, Error> {
        self.0.eval(ctx)
    }

    /// Whether `other` is this very plan (shared, not merely equal).
    pub fn shares_plan_with(&self, other: &Program) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The value, when the expression is a constant.
    pub fn constant(&self) -> Option<&Value<'static>> {
        match &self.0.root {
            Node::Const(v) => Some(v),
            _ => None,
        }
    }
}

/// `a && b` (`decisive` false) or `a || b` (`decisive` true), as CEL
/// evaluates them: the decisive value on either side wins, even over an
/// error on the other; otherwise an error on either side is the result.
#[inline(never)]
fn logic<'r>(
    op: &str,
    a: &'r Node,
    b: &'r Node,
    decisive: bool,
    ctx: &mut Ctx<'r>,
    locals: &mut Locals<'r>,
) -> Result<Value<'r>, Error> {
    let left = as_bool(op, a.value(ctx, locals));
    logic_after(op, left, b, decisive, ctx, locals)
}

/// [`logic`] once its left operand is known: `b` is evaluated only when
/// `left` does not decide.
fn logic_after<'r>(
    op: &str,
    left: Result<bool, Error>,
    b: &'r Node,
    decisive: bool,
    ctx: &mut Ctx<'r>,
    locals: &mut Locals<'r>,
) -> Result<Value<'r>, Error> {
    if matches!(left, Ok(l) if l == decisive) {
        return Ok(Value::Bool(decisive));
    }
    let right = as_bool(op, b.value(ctx, locals));
    match (left, right) {
        (_, Ok(r)) if r == decisive => Ok(Value::Bool(decisive)),
        (Err(e), _) | (_, Err(e)) => Err(e),
        _ => Ok(Value::Bool(!decisive)),
    }
}

fn no_bool(op: &str, v: &Value<'_>) -> Error {
    Error::no_overload(op, std::slice::from_ref(v))
}

fn as_bool(op: &str, r: Result<Value<'_>, Error>) -> Result<bool, Error> {
    match r? {
        Value::Bool(b) => Ok(b),
        other => Err(no_bool(op, &other)),
    }
}

/// `i` as a list index: an `int`, a `uint`, or a `double` with an integral
/// value (as cel-go's heterogeneous indexing).
fn list_index(i: &Value<'_>) -> Result<i64, Error> {
    match i {
        Value::Int(i) => Ok(*i),
        Value::Uint(u) => i64::try_from(*u).map_err(|_| Error::index_out_of_bounds(i64::MAX, 0)),
        Value::Double(d) if d.fract() == 0.0 && d.is_finite() => Ok(*d as i64),
        Value::Double(_) => Err(Error::type_mismatch("a list index must be an integer")),
        other => Err(Error::type_mismatch(format!(
            "a list index must be an int, not {}",
            other.type_name()
        ))),
    }
}

#[inline(never)]
fn select<'r>(v: Value<'r>, field: &str) -> Result<Value<'r>, Error> {
    match v {
        Value::Map(m) => m
            .get(&Value::str(field))
            .ok_or_else(|| Error::no_such_key(&Value::str(field))),
        Value::Node(n) => super::request::field(n, field)
            .ok_or_else(|| Error::no_such_field(n.type_name(), field)),
        Value::Object(o) => o
            .field(field)
            .ok_or_else(|| Error::no_such_field(o.type_name(), field)),
        // Selecting on an optional selects on its value, if any.
        Value::Optional(o) => match o {
            None => Ok(Value::Optional(None)),
            Some(v) => opt_select(Value::clone(&v), field),
        },
        other => Err(Error::type_mismatch(format!(
            "{} has no fields (selecting {field:?})",
            other.type_name()
        ))),
    }
}

/// `v.?field`: none when the field or key is absent; an error for a value
/// that has no fields.
#[inline(never)]
fn opt_select<'r>(v: Value<'r>, field: &str) -> Result<Value<'r>, Error> {
    opt_select_raw(v, field).map(|o| o.map_or(Value::Optional(None), Value::some))
}

/// As [`opt_select`], the value itself when present.
#[inline(never)]
fn opt_select_raw<'r>(v: Value<'r>, field: &str) -> Result<Option<Value<'r>>, Error> {
    match v {
        Value::Map(m) => Ok(m.get(&Value::str(field))),
        Value::Node(n) => match super::request::has(n, field) {
            Some(true) => Ok(super::request::field(n, field)),
            Some(false) => Ok(None),
            None => Err(Error::no_such_field(n.type_name(), field)),
        },
        Value::Object(o) => match o.has(field) {
            Some(true) => Ok(o.field(field)),
            Some(false) => Ok(None),
            None => Err(Error::no_such_field(o.type_name(), field)),
        },
        Value::Optional(None) => Ok(None),
        Value::Optional(Some(v)) => opt_select_raw(Value::clone(&v), field),
        other => Err(Error::type_mismatch(format!(
            "{} has no fields (selecting {field:?})",
            other.type_name()
        ))),
    }
}

#[inline(never)]
fn has<'r>(v: Value<'r>, field: &str) -> Result<bool, Error> {
    match v {
        // On an optional, whether its value has the field.
        Value::Optional(None) => Ok(false),
        Value::Optional(Some(v)) => has(Value::clone(&v), field),
        Value::Map(m) => Ok(m.contains_key(&Value::str(field))),
        Value::Node(n) => {
            super::request::has(n, field).ok_or_else(|| Error::no_such_field(n.type_name(), field))
        }
        Value::Object(o) => o
            .has(field)
            .ok_or_else(|| Error::no_such_field(o.type_name(), field)),
        other => Err(Error::type_mismatch(format!(
            "has() on {}, which has no fields",
            other.type_name()
        ))),
    }
}

/// Refuses a map index that can be no key (a double with a fraction still
/// looks up nothing, as in cel-go).
fn usable_key(i: &Value<'_>) -> Result<(), Error> {
    if Key::lookup(i).is_none() && !matches!(i, Value::Double(_)) {
        return Err(Error::type_mismatch(format!(
            "a map key cannot be a {}",
            i.type_name()
        )));
    }
    Ok(())
}

fn not_a_field_name(i: &Value<'_>) -> Error {
    Error::type_mismatch(format!(
        "a field name must be a string, not {}",
        i.type_name()
    ))
}

fn not_indexable(v: &Value<'_>) -> Error {
    Error::type_mismatch(format!("{} cannot be indexed", v.type_name()))
}

#[inline(never)]
fn index<'r>(v: Value<'r>, i: &Value<'r>) -> Result<Value<'r>, Error> {
    match v {
        Value::List(l) => {
            let idx = list_index(i)?;
            usize::try_from(idx)
                .ok()
                .and_then(|u| l.get(u).cloned())
                .ok_or_else(|| Error::index_out_of_bounds(idx, l.len()))
        }
        Value::Map(m) => {
            usable_key(i)?;
            m.get(i).ok_or_else(|| Error::no_such_key(i))
        }
        Value::Optional(None) => Ok(Value::Optional(None)),
        Value::Optional(Some(inner)) => opt_index(Value::clone(&inner), i),
        Value::Object(o) => match i {
            Value::String(f) => select(Value::Object(o), f),
            other => Err(not_a_field_name(other)),
        },
        Value::Node(n) => match i {
            Value::String(f) => select(Value::Node(n), f),
            other => Err(not_a_field_name(other)),
        },
        other => Err(not_indexable(&other)),
    }
}

/// `v[?i]`: none when the index is out of range or the key absent.
#[inline(never)]
fn opt_index<'r>(v: Value<'r>, i: &Value<'r>) -> Result<Value<'r>, Error> {
    opt_index_raw(v, i).map(|o| o.map_or(Value::Optional(None), Value::some))
}

/// As [`opt_index`], the value itself when present.
#[inline(never)]
fn opt_index_raw<'r>(v: Value<'r>, i: &Value<'r>) -> Result<Option<Value<'r>>, Error> {
    match v {
        Value::List(l) => {
            let idx = list_index(i)?;
            Ok(usize::try_from(idx).ok().and_then(|u| l.get(u).cloned()))
        }
        Value::Map(m) => {
            usable_key(i)?;
            Ok(m.get(i))
        }
        Value::Optional(None) => Ok(None),
        Value::Optional(Some(inner)) => opt_index_raw(Value::clone(&inner), i),
        Value::Node(n) => match i {
            Value::String(f) => opt_select_raw(Value::Node(n), f),
            other => Err(not_a_field_name(other)),
        },
        other => Err(not_indexable(&other)),
    }
}

#[inline(never)]
fn contains<'r>(ctx: &mut Ctx<'r>, x: &Value<'r>, c: Value<'r>) -> Result<bool, Error> {
    match c {
        Value::List(l) => {
            ctx.charge(l.len() as u64)?;
            Ok(l.iter().any(|e| equals(x, e)))
        }
        Value::Map(m) => Ok(m.contains_key(x)),
        other => Err(Error::no_overload("@in", &[x.clone(), other])),
    }
}

#[inline(never)]
fn map_insert<'r>(
    ctx: &mut Ctx<'r>,
    mut map: Value<'r>,
    rest: &[Value<'r>],
) -> Result<Value<'r>, Error> {
    let Value::Map(m) = &mut map else {
        return Err(Error::no_overload("cel.@mapInsert", rest));
    };
    let mut owned = match m {
        Map::Owned(o) => std::mem::take(Arc::make_mut(o)),
        other => {
            let mut o = OwnedMap::default();
            for (k, v) in other.entries() {
                if let Some(k) = Key::of(&k) {
                    o.insert(k, v);
                }
            }
            o
        }
    };
    let mut insert = |k: &Value<'r>, v: Value<'r>| -> Result<(), Error> {
        let key = Key::of(k).ok_or_else(|| {
            Error::type_mismatch(format!("a map key cannot be a {}", k.type_name()))
        })?;
        if owned.contains_key(&key) {
            return Err(Error::new(
                ErrorKind::DuplicateKey,
                "insert failed: the key is already in the map",
            ));
        }
        owned.insert(key, v);
        Ok(())
    };
    match rest {
        [k, v] => insert(k, v.clone())?,
        [Value::Map(entries)] => {
            ctx.charge(entries.len() as u64)?;
            for (k, v) in entries.entries() {
                insert(&k, v)?;
            }
        }
        _ => return Err(Error::no_overload("cel.@mapInsert", rest)),
    }
    Ok(Value::map(owned))
}

/// A message literal built per request (a constant one is built at load):
/// out of line, so that the hot arms of [`Node::eval`] stay small.
#[inline(never)]
fn eval_message<'r>(
    m: &'r MessagePlan,
    ctx: &mut Ctx<'r>,
    locals: &mut Locals<'r>,
) -> Result<Value<'r>, Error> {
    let mut fields = Vec::with_capacity(m.fields.len());
    for (index, node, optional) in &m.fields {
        let v = match (node.value(ctx, locals)?, optional) {
            // Unset: a message field set to null, an empty optional.
            (Value::Null, _) if m.message.fields[*index].is_message() => continue,
            (Value::Optional(None), true) => continue,
            (Value::Optional(Some(v)), true) => Value::clone(&v),
            (other, true) => {
                return Err(Error::type_mismatch(format!(
                    "an optional field `?f: v` takes an optional value, not {}",
                    other.type_name()
                )))
            }
            (v, false) => v,
        };
        fields.push((*index, v));
    }
    ctx.charge(1)?;
    lib::messages::build(ctx, m.message, fields)
}

impl Node {
    /// The node's value: a constant or a local read in place, anything
    /// else through [`Node::eval`]. Most operands are constants or locals,
    /// and this saves each of them a call of the tree walk.
    #[inline(always)]
    fn value<'r>(&'r self, ctx: &mut Ctx<'r>, locals: &mut Locals<'r>) -> Result<Value<'r>, Error> {
        match self {
            Node::Const(v) => Ok(v.reborrow()),
            Node::Local(s) => locals[*s].clone(),
            _ => self.eval(ctx, locals),
        }
    }

    fn eval<'r>(&'r self, ctx: &mut Ctx<'r>, locals: &mut Locals<'r>) -> Result<Value<'r>, Error> {
        match self {
            Node::Const(v) => Ok(v.reborrow()),
            Node::Message(m) => eval_message(m, ctx, locals),
            Node::Local(s) => locals[*s].clone(),
            Node::Object => match ctx.http_object() {
                Some(o) => Ok(o.clone()),
                None => Ok(Value::Node(ReqNode::CheckRequest(
                    ctx.request().unwrap_or(&EMPTY_REQUEST),
                ))),
            },
            Node::ObjectPath(path) => {
                ctx.charge(1)?;
                object_path(ctx, path)
            }
            Node::Var(slot) => {
                ctx.charge(1)?;
                ctx.variable(*slot)
            }
            Node::Select(operand, field) => {
                let v = operand.value(ctx, locals)?;
                ctx.charge(1)?;
                select(v, field)
            }
            Node::Has(operand, field) => {
                let v = operand.value(ctx, locals)?;
                ctx.charge(1)?;
                has(v, field).map(Value::Bool)
            }
            Node::OptSelect(operand, field) => {
                let v = operand.value(ctx, locals)?;
                ctx.charge(1)?;
                opt_select(v, field)
            }
            Node::Index(a, i) => {
                let v = a.value(ctx, locals)?;
                let i = i.value(ctx, locals)?;
                ctx.charge(1)?;
                index(v, &i)
            }
            Node::SplitIndex(c, i) => split_index(c, i, ctx, locals),
            Node::OptIndex(a, i) => {
                let v = a.value(ctx, locals)?;
                let i = i.value(ctx, locals)?;
                ctx.charge(1)?;
                opt_index(v, &i)
            }
            Node::And(a, b) => logic("_&&_", a, b, false, ctx, locals),
            Node::Or(a, b) => logic("_||_", a, b, true, ctx, locals),
            Node::Not(a) => as_bool("!_", a.value(ctx, locals)).map(|b| Value::Bool(!b)),
            Node::NotStrictlyFalse(a) => Ok(Value::Bool(!matches!(
                a.value(ctx, locals),
                Ok(Value::Bool(false))
            ))),
            Node::Cond(c, t, f) => match c.value(ctx, locals)? {
                Value::Bool(true) => t.value(ctx, locals),
                Value::Bool(false) => f.value(ctx, locals),
                other => Err(no_bool("_?_:_", &other)),
            },
            Node::Eq(a, b) => {
                let x = a.value(ctx, locals)?;
                let y = b.value(ctx, locals)?;
                ctx.charge(1)?;
                Ok(Value::Bool(equals(&x, &y)))
            }
            Node::Ne(a, b) => {
                let x = a.value(ctx, locals)?;
                let y = b.value(ctx, locals)?;
                ctx.charge(1)?;
                Ok(Value::Bool(!equals(&x, &y)))
            }
            Node::Cmp(a, b, rel) => {
                let x = a.value(ctx, locals)?;
                let y = b.value(ctx, locals)?;
                ctx.charge(1)?;
                ordering(x, y, *rel)
            }
            Node::In(a, b) => {
                let x = a.value(ctx, locals)?;
                let c = b.value(ctx, locals)?;
                ctx.charge(1)?;
                contains(ctx, &x, c).map(Value::Bool)
            }
            Node::OptOr(a, b) => match a.value(ctx, locals)? {
                Value::Optional(Some(v)) => Ok(Value::Optional(Some(v))),
                Value::Optional(None) => match b.value(ctx, locals)? {
                    v @ Value::Optional(_) => Ok(v),
                    other => Err(Error::no_overload("or", &[Value::Optional(None), other])),
                },
                other => Err(Error::no_overload("or", &[other])),
            },
            Node::IndexOr(a, k, d) => {
                let v = a.value(ctx, locals)?;
                let k = k.value(ctx, locals)?;
                ctx.charge(1)?;
                match opt_index_raw(v, &k)? {
                    Some(v) => Ok(v),
                    None => d.value(ctx, locals),
                }
            }
            Node::SelectOr(a, f, d) => {
                let v = a.value(ctx, locals)?;
                ctx.charge(1)?;
                match opt_select_raw(v, f)? {
                    Some(v) => Ok(v),
                    None => d.value(ctx, locals),
                }
            }
            Node::OptOrValue(a, b) => match a.value(ctx, locals)? {
                Value::Optional(Some(v)) => Ok(Value::clone(&v)),
                Value::Optional(None) => b.value(ctx, locals),
                other => Err(Error::no_overload("orValue", &[other])),
            },
            Node::Call(c) => eval_call(c, ctx, locals),
            Node::List(elems, optional) => eval_list(elems, optional, ctx, locals),
            Node::MapLit(entries) => eval_map(entries, ctx, locals),
            Node::MapInsert(args) => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(a.value(ctx, locals)?);
                }
                ctx.charge(1)?;
                let map = vals.remove(0);
                map_insert(ctx, map, &vals)
            }
            Node::Comprehension(l) => l.eval(ctx, locals),
        }
    }
}

/// `object.a.b.c`: the fields read from the request in one go. Out of
/// line, so that the frame of [`Node::eval`] stays small.
#[inline(never)]
fn object_path<'r>(ctx: &Ctx<'r>, path: &'r [PathStep]) -> Result<Value<'r>, Error> {
    if let Some(o) = ctx.http_object() {
        return http_path(o.clone(), path);
    }
    let request = ctx.request().unwrap_or(&EMPTY_REQUEST);
    // `object.attributes.request.http...` (most paths) starts
    // at the HTTP request in one step.
    let (mut node, skip) = match path {
        [a, r, h, ..]
            if a.field == Some(Field::Attributes)
                && r.field == Some(Field::Request)
                && h.field == Some(Field::Http) =>
        {
            (ReqNode::Http(super::request::http_of(request)), 3)
        }
        _ => (ReqNode::CheckRequest(request), 0),
    };
    if skip == path.len() {
        return Ok(Value::Node(node));
    }
    let last = path.len() - 1;
    for (i, step) in path.iter().enumerate().skip(skip) {
        let v = step
            .field
            .and_then(|f| super::request::field_of(node, f))
            .ok_or_else(|| Error::no_such_field(node.type_name(), &step.name))?;
        if i == last {
            return Ok(v);
        }
        match v {
            Value::Node(n) => node = n,
            other => {
                let mut v = other;
                for step in &path[i + 1..] {
                    v = select(v, &step.name)?;
                }
                return Ok(v);
            }
        }
    }
    Err(Error::internal("an empty field path"))
}

/// `x < y` and the other orderings. Out of line, as [`object_path`].
#[inline(never)]
fn ordering<'r>(x: Value<'r>, y: Value<'r>, rel: Rel) -> Result<Value<'r>, Error> {
    if !orderable(&x, &y) {
        let op = match rel {
            Rel::Lt => "_<_",
            Rel::Le => "_<=_",
            Rel::Gt => "_>_",
            Rel::Ge => "_>=_",
        };
        return Err(Error::no_overload(op, &[x, y]));
    }
    use std::cmp::Ordering::*;
    Ok(Value::Bool(match (compare(&x, &y), rel) {
        // NaN is unordered: every comparison with it is false.
        (None, _) => false,
        (Some(o), Rel::Lt) => o == Less,
        (Some(o), Rel::Le) => o != Greater,
        (Some(o), Rel::Gt) => o == Greater,
        (Some(o), Rel::Ge) => o != Less,
    }))
}

/// `object.a.b` in HTTP mode, where `object` is a library's value.
#[inline(never)]
fn http_path<'r>(object: Value<'r>, path: &[PathStep]) -> Result<Value<'r>, Error> {
    path.iter()
        .try_fold(object, |v, step| select(v, &step.name))
}

/// A call: its arguments, then the function. Out of line, as are the other
/// rare or bulky cases, so that the frame of [`Node::eval`], which every
/// step of an evaluation goes through, stays small.
#[inline(never)]
fn eval_call<'r>(
    c: &'r CallPlan,
    ctx: &mut Ctx<'r>,
    locals: &mut Locals<'r>,
) -> Result<Value<'r>, Error> {
    // Most calls take at most four values: no allocation for them.
    let mut args: smallvec::SmallVec<[Value<'r>; 4]> = smallvec::SmallVec::new();
    for a in &c.args {
        args.push(a.value(ctx, locals)?);
    }
    ctx.charge(1)?;
    if let [Function {
        owning: Some(f), ..
    }] = c.functions[..]
    {
        return f(ctx, &mut args);
    }
    call(ctx, c, &args)
}

/// `s.split(sep)[k]` as [`Node::Index`] over the [`eval_call`] of `split`
/// would evaluate it, charges and errors in the same order, without the
/// list when `s` and `sep` are strings and `sep` is not empty.
#[inline(never)]
fn split_index<'r>(
    c: &'r CallPlan,
    i: &'r Node,
    ctx: &mut Ctx<'r>,
    locals: &mut Locals<'r>,
) -> Result<Value<'r>, Error> {
    let s = c.args[0].value(ctx, locals)?;
    let sep = c.args[1].value(ctx, locals)?;
    let (text, sep_str) = match (&s, &sep) {
        (Value::String(t), Value::String(p)) if !p.is_empty() => (t, p),
        _ => return generic_split_index(c, i, s, sep, ctx, locals),
    };
    ctx.charge(1)?;
    let parts = lib::strings::split_count(ctx, text, sep_str)?;
    let k = i.value(ctx, locals)?;
    ctx.charge(1)?;
    let k = list_index(&k)?;
    usize::try_from(k)
        .ok()
        .and_then(|k| lib::strings::split_nth(text, sep_str, k))
        .ok_or_else(|| Error::index_out_of_bounds(k, parts))
}

fn generic_split_index<'r>(
    c: &'r CallPlan,
    i: &'r Node,
    s: Value<'r>,
    sep: Value<'r>,
    ctx: &mut Ctx<'r>,
    locals: &mut Locals<'r>,
) -> Result<Value<'r>, Error> {
    ctx.charge(1)?;
    let list = call(ctx, c, &[s, sep])?;
    let k = i.value(ctx, locals)?;
    ctx.charge(1)?;
    index(list, &k)
}

#[inline(never)]
fn eval_list<'r>(
    elems: &'r [Node],
    optional: &[bool],
    ctx: &mut Ctx<'r>,
    locals: &mut Locals<'r>,
) -> Result<Value<'r>, Error> {
    let mut out = Vec::with_capacity(elems.len());
    for (e, opt) in elems.iter().zip(optional) {
        let v = e.value(ctx, locals)?;
        if *opt {
            match v {
                Value::Optional(Some(v)) => out.push(Value::clone(&v)),
                Value::Optional(None) => {}
                other => {
                    return Err(Error::type_mismatch(format!(
                        "an optional element `?x` must be an optional, not {}",
                        other.type_name()
                    )))
                }
            }
        } else {
            out.push(v);
        }
    }
    ctx.charge(1)?;
    Ok(Value::list(out))
}

#[inline(never)]
fn eval_map<'r>(
    entries: &'r [(Node, Node, bool)],
    ctx: &mut Ctx<'r>,
    locals: &mut Locals<'r>,
) -> Result<Value<'r>, Error> {
    let mut out = OwnedMap::with_capacity_and_hasher(entries.len(), Default::default());
    for (k, v, opt) in entries {
        let kv = k.value(ctx, locals)?;
        let key = Key::of(&kv).ok_or_else(|| {
            Error::type_mismatch(format!("a map key cannot be a {}", kv.type_name()))
        })?;
        let vv = v.value(ctx, locals)?;
        let vv = if *opt {
            match vv {
                Value::Optional(Some(v)) => Value::clone(&v),
                Value::Optional(None) => continue,
                other => {
                    return Err(Error::type_mismatch(format!(
                        "an optional entry `?k: v` must hold an optional, not {}",
                        other.type_name()
                    )))
                }
            }
        } else {
            vv
        };
        if out.insert(key, vv).is_some() {
            return Err(Error::new(
                ErrorKind::DuplicateKey,
                format!("a map literal has the key {kv:?} twice"),
            ));
        }
    }
    ctx.charge(1)?;
    Ok(Value::map(out))
}

fn call<'r>(ctx: &mut Ctx<'r>, c: &CallPlan, args: &[Value<'r>]) -> Result<Value<'r>, Error> {
    lib::dispatch(ctx, &c.functions, &c.name, args)
}

impl Loop {
    fn eval<'r>(&'r self, ctx: &mut Ctx<'r>, locals: &mut Locals<'r>) -> Result<Value<'r>, Error> {
        // A list written in the policy is walked in place: its strings are
        // borrowed from the plan, not counted.
        if let Node::Const(Value::List(items)) = &self.range {
            let init = self.init.value(ctx, locals)?;
            locals[self.accu] = Ok(init);
            self.each(ctx, locals, items.iter().map(Value::reborrow))?;
            return self.result.value(ctx, locals);
        }
        let range = self.range.value(ctx, locals)?;
        let init = self.init.value(ctx, locals)?;
        locals[self.accu] = Ok(init);
        match range {
            Value::List(items) => self.each(ctx, locals, items.iter().cloned())?,
            Value::Map(m) => {
                let entries: Vec<(Value<'r>, Value<'r>)> = match self.var2 {
                    Some(_) => m.entries(),
                    None => m.keys().into_iter().map(|k| (k, Value::Null)).collect(),
                };
                for (k, v) in entries {
                    locals[self.var1] = Ok(k);
                    if let Some(v2) = self.var2 {
                        locals[v2] = Ok(v);
                    }
                    if !self.iterate(ctx, locals)? {
                        break;
                    }
                }
            }
            other => {
                return Err(Error::type_mismatch(format!(
                    "cannot iterate over {}: a comprehension needs a list or a map",
                    other.type_name()
                )))
            }
        }
        self.result.value(ctx, locals)
    }

    /// The iterations over the elements of a list, until the loop
    /// condition says stop.
    fn each<'r>(
        &'r self,
        ctx: &mut Ctx<'r>,
        locals: &mut Locals<'r>,
        items: impl Iterator<Item = Value<'r>>,
    ) -> Result<(), Error> {
        for (i, item) in items.enumerate() {
            match self.var2 {
                Some(v2) => {
                    locals[self.var1] = Ok(Value::Int(i as i64));
                    locals[v2] = Ok(item);
                }
                None => locals[self.var1] = Ok(item),
            }
            if !self.iterate(ctx, locals)? {
                break;
            }
        }
        Ok(())
    }

    /// One iteration: false once the loop condition says stop.
    fn iterate<'r>(&'r self, ctx: &mut Ctx<'r>, locals: &mut Locals<'r>) -> Result<bool, Error> {
        ctx.charge(1)?;
        match self.stop_at {
            // What `cond` would say: false only when the accumulator holds
            // the value that decides the quantifier.
            Some(v) => {
                if matches!(locals[self.accu], Ok(Value::Bool(b)) if b == v) {
                    return Ok(false);
                }
            }
            None => match self.cond.value(ctx, locals) {
                Ok(Value::Bool(false)) => return Ok(false),
                Ok(Value::Bool(true)) => {}
                Ok(other) => return Err(no_bool("loop condition", &other)),
                Err(e) => return Err(e),
            },
        }
        let next = match &self.step {
            Step::Logic(decisive, test) => {
                // `logic` with the accumulator as its left operand, not
                // copied out of its slot.
                let op = if *decisive { "_||_" } else { "_&&_" };
                let left = match &locals[self.accu] {
                    Ok(Value::Bool(b)) => Ok(*b),
                    Ok(other) => Err(no_bool(op, other)),
                    Err(e) => Err(e.clone()),
                };
                logic_after(op, left, test, *decisive, ctx, locals)
            }
            Step::Any(n) => n.value(ctx, locals),
            Step::Append(elems) => self.append(ctx, locals, elems),
            Step::AppendIf(test, elems) => match test.value(ctx, locals) {
                Ok(Value::Bool(true)) => self.append(ctx, locals, elems),
                Ok(Value::Bool(false)) => return Ok(true),
                Ok(other) => Err(no_bool("_?_:_", &other)),
                Err(e) => Err(e),
            },
            Step::Insert(args) => self.insert(ctx, locals, args),
            Step::InsertIf(test, args) => match test.value(ctx, locals) {
                Ok(Value::Bool(true)) => self.insert(ctx, locals, args),
                Ok(Value::Bool(false)) => return Ok(true),
                Ok(other) => Err(no_bool("_?_:_", &other)),
                Err(e) => Err(e),
            },
        };
        locals[self.accu] = next;
        Ok(true)
    }

    fn append<'r>(
        &'r self,
        ctx: &mut Ctx<'r>,
        locals: &mut Locals<'r>,
        elems: &'r [Node],
    ) -> Result<Value<'r>, Error> {
        let mut vals = Vec::with_capacity(elems.len());
        for e in elems {
            vals.push(e.value(ctx, locals)?);
        }
        ctx.charge(1)?;
        match std::mem::replace(&mut locals[self.accu], Ok(Value::Null)) {
            Ok(Value::List(mut l)) => {
                Arc::make_mut(&mut l).extend(vals);
                Ok(Value::List(l))
            }
            Ok(other) => {
                let f = lib::lookup("_+_", false, 2);
                let plan = CallPlan {
                    name: "_+_".into(),
                    functions: f,
                    args: Vec::new(),
                };
                call(ctx, &plan, &[other, Value::list(vals)])
            }
            Err(e) => Err(e),
        }
    }

    fn insert<'r>(
        &'r self,
        ctx: &mut Ctx<'r>,
        locals: &mut Locals<'r>,
        args: &'r [Node],
    ) -> Result<Value<'r>, Error> {
        let mut vals = Vec::with_capacity(args.len() - 1);
        for a in &args[1..] {
            vals.push(a.value(ctx, locals)?);
        }
        ctx.charge(1)?;
        let map = std::mem::replace(&mut locals[self.accu], Ok(Value::Null))?;
        map_insert(ctx, map, &vals)
    }
}

/// Evaluates `source` on its own (no request, no variables): for tests and
/// the tools. The expression is parsed, checked and planned as a policy's.
pub fn eval_standalone(source: &str) -> Result<Value<'static>, String> {
    let parsed = crate::cel::env()
        .compile(source)
        .map_err(|e| e.to_string())?;
    let program = compile(parsed.expression(), &|_| None).map_err(|e| e.0)?;
    let mut ctx = Ctx::new(None, Meter::new(super::ctx::DEFAULT_BUDGET));
    let v = program.eval(&mut ctx).map_err(|e| e.0.message)?;
    Ok(v.into_static())
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Program>();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(text: &str) -> Result<Program, PlanError> {
        let p = crate::cel::env().compile(text).unwrap();
        compile(p.expression(), &|_| None)
    }

    #[test]
    fn a_constant_message_literal_is_built_when_the_policy_loads() {
        let p = planned(
            "envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{code: 7}, \
             denied_response: envoy.service.auth.v3.DeniedHttpResponse{body: 'no'}}",
        )
        .unwrap();
        let r = p.constant().expect("folded");
        assert_eq!(r.type_name(), "envoy.service.auth.v3.CheckResponse");
        // One that reads the request is built per request, around the
        // constant parts.
        let p = planned(
            "envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{code: 7}, \
             denied_response: envoy.service.auth.v3.DeniedHttpResponse{body: object.attributes.request.http.path}}",
        )
        .unwrap();
        assert!(p.constant().is_none());
        let Node::Message(m) = &p.0.root else {
            panic!("{:?}", p.0.root)
        };
        assert!(matches!(m.fields[0].1, Node::Const(_)));
        // Unfolded, the same literal is built when it runs.
        let text = "envoy.service.auth.v3.CheckResponse{}";
        let ast = crate::cel::env().compile(text).unwrap();
        let p = compile_unfolded(ast.expression(), &|_| None).unwrap();
        assert!(p.constant().is_none());
        let mut ctx = Ctx::new(None, Meter::new(1000));
        assert_eq!(
            p.eval(&mut ctx).unwrap().type_name(),
            "envoy.service.auth.v3.CheckResponse"
        );
    }

    /// Evaluated as planned, nothing folded (the ranges below are literals).
    fn run_unfolded(text: &str) -> Result<Value<'static>, Error> {
        let ast = crate::cel::env().compile(text).unwrap();
        let p = compile_unfolded(ast.expression(), &|_| None).unwrap();
        let p: &'static Program = Box::leak(Box::new(p));
        let mut ctx = Ctx::new(None, Meter::new(10_000));
        p.eval(&mut ctx)
    }

    /// Evaluated as planned, folded, with the cost it spent.
    fn run_costed(text: &str) -> (Result<Value<'static>, Error>, u64) {
        let p: &'static Program = Box::leak(Box::new(planned(text).unwrap()));
        let mut ctx = Ctx::new(None, Meter::new(10_000));
        let r = p.eval(&mut ctx);
        (r, ctx.meter.used())
    }

    #[test]
    fn a_split_part_is_read_as_from_the_list_split_builds() {
        // `s` is a loop variable, so nothing is folded: `s.split(sep)[k]`
        // is the fused read; `[s.split(sep)][0][k]` indexes the list.
        let texts = ["a-b-c", "", "-", "a--b", "-a-", "aaa", "o©o©o", "x"];
        let seps = ["-", "aa", "©", ""];
        let ks = [
            "0",
            "1",
            "2",
            "3",
            "-1",
            "1u",
            "1.0",
            "1.5",
            "'x'",
            "9223372036854775807",
        ];
        let mut fused_seen = 0;
        for text in texts {
            for sep in seps {
                for k in ks {
                    let fused = format!("['{text}'].map(s, s.split('{sep}')[{k}])");
                    let listed = format!("['{text}'].map(s, [s.split('{sep}')][0][{k}])");
                    let loop_body = |t: &str| match &planned(t).unwrap().0.root {
                        Node::Comprehension(l) => match &l.step {
                            Step::Append(e) => matches!(e[0], Node::SplitIndex(..)),
                            _ => false,
                        },
                        _ => false,
                    };
                    assert!(!loop_body(&listed), "{listed}");
                    fused_seen += usize::from(loop_body(&fused));
                    let (a, cost_a) = run_costed(&fused);
                    let (b, cost_b) = run_costed(&listed);
                    match (&a, &b) {
                        (Ok(x), Ok(y)) => assert_eq!(format!("{x:?}"), format!("{y:?}"), "{fused}"),
                        (Err(x), Err(y)) => assert_eq!(x.to_string(), y.to_string(), "{fused}"),
                        _ => panic!("{fused}: {a:?} against {b:?}"),
                    }
                    // The list's own element and index charges aside, the
                    // same cost: the fused read is never cheaper to the meter.
                    assert!(
                        cost_a + 2 >= cost_b && cost_a <= cost_b,
                        "{fused}: {cost_a} / {cost_b}"
                    );
                }
            }
        }
        assert!(fused_seen > 0, "the fused form was never planned");
        // A non-string receiver or separator fails as `split` fails.
        let (a, _) = run_costed("[1].map(s, dyn(s).split('-')[0])");
        let (b, _) = run_costed("[1].map(s, [dyn(s).split('-')][0][0])");
        assert_eq!(a.unwrap_err().to_string(), b.unwrap_err().to_string());
    }

    fn quantifier(root: &Node) -> Option<(Option<bool>, &Step)> {
        match root {
            Node::Comprehension(l) => Some((l.stop_at, &l.step)),
            _ => None,
        }
    }

    #[test]
    fn exists_and_all_read_their_accumulator_in_place_with_the_macros_semantics() {
        // The macros' loops are recognised (else this test would not test
        // the short path)...
        for (text, decisive) in [
            ("[1, 2].exists(x, x == 2)", true),
            ("[1, 2].all(x, x > 0)", false),
            ("{'a': 1}.exists(k, v, v == 1)", true),
            ("[1, 2].all(i, v, v > i)", false),
        ] {
            let ast = crate::cel::env().compile(text).unwrap();
            let p = compile_unfolded(ast.expression(), &|_| None).unwrap();
            let Some((stop_at, Step::Logic(d, _))) = quantifier(&p.0.root) else {
                panic!("{text}: {:?}", p.0.root)
            };
            assert_eq!((stop_at, *d), (Some(decisive), decisive), "{text}");
        }
        // ... and decide as `||` and `&&` over the elements would: the
        // deciding value wins over an error anywhere, else the first error
        // is the answer.
        let bool_of = |text: &str| match run_unfolded(text) {
            Ok(Value::Bool(b)) => b,
            other => panic!("{text}: {other:?}"),
        };
        let error_of = |text: &str| match run_unfolded(text) {
            Err(e) => e.to_string(),
            other => panic!("{text}: {other:?}"),
        };
        assert!(bool_of("[1, 2, 3].exists(x, x == 2)"));
        assert!(!bool_of("[1, 2, 3].exists(x, x == 5)"));
        assert!(!bool_of("[].exists(x, x == 5)"));
        assert!(
            bool_of("[1, 0, 2].exists(x, 4 / x == 2)"),
            "true absorbs the error"
        );
        assert!(
            bool_of("[1, 2, 0].exists(x, 4 / x == 4)"),
            "stops at the first true"
        );
        assert!(error_of("[0, 1].exists(x, 4 / x == 3)").contains("division by zero"));
        let first = error_of("[0, 1, 2].exists(x, [1][x - 1] == 7 || 4 / x == 9)");
        assert!(
            first.contains("index") || first.contains("bounds"),
            "{first}"
        );
        assert!(bool_of("[1, 2].all(x, x > 0)"));
        assert!(bool_of("[].all(x, x > 0)"));
        assert!(
            !bool_of("[1, 0, -1].all(x, 4 / x > 0)"),
            "false absorbs the error"
        );
        assert!(error_of("[1, 0].all(x, 4 / x > 0)").contains("division by zero"));
        assert!(bool_of("{'a': 1, 'b': 2}.exists(k, v, v == 2 && k == 'b')"));
        assert!(!bool_of("[3, 1].all(i, v, v > i + 1)"));
    }

    #[test]
    fn a_constant_literal_that_cannot_be_built_refuses_the_policy() {
        let e = planned("envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{code: 2}}")
            .unwrap_err();
        assert_eq!(
            e.0,
            "envoy.service.auth.v3.CheckResponse.status: code 2 cannot be sent: celgate allows with 0 (OK) and denies with 7 (PERMISSION_DENIED)"
        );
        assert!(matches!(
            planned("envoy.type.v3.StatusCode.Forbidden")
                .unwrap()
                .constant(),
            Some(Value::Int(403))
        ));
    }
}
