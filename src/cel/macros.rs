//! Macros celgate adds to the parser's standard ones, expanded into
//! comprehensions when an expression is parsed, as cel-go expands them:
//!
//! - the two-variable comprehensions: `all(k, v, p)`, `exists(k, v, p)`,
//!   `existsOne(k, v, p)` (and `exists_one`), `transformList(i, v, [p,] f)`,
//!   `transformMap(k, v, [p,] f)`, `transformMapEntry(k, v, [p,] f)`; on a
//!   list the first variable is the index, on a map the key;
//! - `cel.bind(name, init, body)`: `body` with `name` bound to `init`,
//!   evaluated once;
//! - `cel.block([e0, ...], body)` with `cel.index(i)`, `cel.iterVar(d, n)`
//!   and `cel.accuVar(d, n)`, the form cel-go's optimizer writes shared
//!   subexpressions in.

use cel::common::ast::{
    operators, CallExpr, ComprehensionExpr, Expr, IdedExpr, ListExpr, LiteralValue, MapExpr,
};
use cel::parser::{Macro, MacroExprHelper, ParseError};

const ACCU: &str = "@result";

type Args<'a> = &'a mut Vec<IdedExpr>;

fn ident(h: &MacroExprHelper<'_>, e: &IdedExpr, what: &str) -> Result<String, ParseError> {
    match &e.expr {
        Expr::Ident(n) => Ok(n.clone()),
        _ => Err(h.new_error(e.id, format!("{what} must be a simple name"))),
    }
}

fn call(h: &mut MacroExprHelper<'_>, name: &str, args: Vec<IdedExpr>) -> IdedExpr {
    h.next_expr(Expr::Call(CallExpr {
        func_name: name.to_owned(),
        target: None,
        args,
    }))
}

fn accu(h: &mut MacroExprHelper<'_>) -> IdedExpr {
    h.next_expr(Expr::Ident(ACCU.to_owned()))
}

fn lit(h: &mut MacroExprHelper<'_>, l: LiteralValue) -> IdedExpr {
    h.next_expr(Expr::Literal(l))
}

#[allow(clippy::too_many_arguments)]
fn comprehension(
    h: &mut MacroExprHelper<'_>,
    range: IdedExpr,
    v1: String,
    v2: Option<String>,
    init: IdedExpr,
    cond: IdedExpr,
    step: IdedExpr,
    result: IdedExpr,
) -> IdedExpr {
    h.next_expr(Expr::Comprehension(Box::new(ComprehensionExpr {
        iter_range: range,
        iter_var: v1,
        iter_var2: v2,
        accu_var: ACCU.to_owned(),
        accu_init: init,
        loop_cond: cond,
        loop_step: step,
        result,
    })))
}

/// The two variables of a two-variable comprehension, checked distinct.
fn two_vars(h: &MacroExprHelper<'_>, args: &[IdedExpr]) -> Result<(String, String), ParseError> {
    let a = ident(h, &args[0], "a comprehension variable")?;
    let b = ident(h, &args[1], "a comprehension variable")?;
    if a == b {
        return Err(h.new_error(
            args[1].id,
            "the two variables of a comprehension must differ",
        ));
    }
    if a == ACCU || b == ACCU {
        return Err(h.new_error(args[0].id, "a comprehension variable cannot be @result"));
    }
    Ok((a, b))
}

#[derive(Clone, Copy)]
enum Quantifier {
    All,
    Exists,
    ExistsOne,
}

fn quantifier(q: Quantifier) -> Macro {
    let name = match q {
        Quantifier::All => "all",
        Quantifier::Exists => "exists",
        Quantifier::ExistsOne => "existsOne",
    };
    Macro::receiver(name, 3, move |h, target, args: Args<'_>| {
        quantify(q, h, target, args).map(Some)
    })
}

fn quantify(
    q: Quantifier,
    h: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: Args<'_>,
) -> Result<IdedExpr, ParseError> {
    let (k, v) = two_vars(h, args)?;
    let pred = args.remove(2);
    let range = target.take().expect("a receiver macro has a target");
    let (init, cond, step, result) = match q {
        Quantifier::All => {
            let init = lit(h, LiteralValue::Boolean(true.into()));
            let a = accu(h);
            let cond = call(h, operators::NOT_STRICTLY_FALSE, vec![a]);
            let a = accu(h);
            let step = call(h, operators::LOGICAL_AND, vec![a, pred]);
            (init, cond, step, accu(h))
        }
        Quantifier::Exists => {
            let init = lit(h, LiteralValue::Boolean(false.into()));
            let a = accu(h);
            let not = call(h, operators::LOGICAL_NOT, vec![a]);
            let cond = call(h, operators::NOT_STRICTLY_FALSE, vec![not]);
            let a = accu(h);
            let step = call(h, operators::LOGICAL_OR, vec![a, pred]);
            (init, cond, step, accu(h))
        }
        Quantifier::ExistsOne => {
            let init = lit(h, LiteralValue::Int(0.into()));
            let cond = lit(h, LiteralValue::Boolean(true.into()));
            let a = accu(h);
            let one = lit(h, LiteralValue::Int(1.into()));
            let inc = call(h, operators::ADD, vec![a, one]);
            let a = accu(h);
            let step = call(h, operators::CONDITIONAL, vec![pred, inc, a]);
            let a = accu(h);
            let one = lit(h, LiteralValue::Int(1.into()));
            let result = call(h, operators::EQUALS, vec![a, one]);
            (init, cond, step, result)
        }
    };
    Ok(comprehension(
        h,
        range,
        k,
        Some(v),
        init,
        cond,
        step,
        result,
    ))
}

#[derive(Clone, Copy)]
enum Transform {
    List,
    Map,
    MapEntry,
}

fn transform(t: Transform, arity: usize) -> Macro {
    let name = match t {
        Transform::List => "transformList",
        Transform::Map => "transformMap",
        Transform::MapEntry => "transformMapEntry",
    };
    Macro::receiver(name, arity, move |h, target, args: Args<'_>| {
        let (k, v) = two_vars(h, args)?;
        let f = args.pop().expect("arity checked");
        let filter = (args.len() == 3).then(|| args.pop().expect("arity checked"));
        let range = target.take().expect("a receiver macro has a target");
        let init = match t {
            Transform::List => h.next_expr(Expr::List(ListExpr::new(Vec::new()))),
            Transform::Map | Transform::MapEntry => h.next_expr(Expr::Map(MapExpr {
                entries: Vec::new(),
            })),
        };
        let cond = lit(h, LiteralValue::Boolean(true.into()));
        let a = accu(h);
        let grow = match t {
            Transform::List => {
                let one = h.next_expr(Expr::List(ListExpr::new(vec![f])));
                call(h, operators::ADD, vec![a, one])
            }
            Transform::Map => {
                let key = h.next_expr(Expr::Ident(k.clone()));
                call(h, "cel.@mapInsert", vec![a, key, f])
            }
            Transform::MapEntry => call(h, "cel.@mapInsert", vec![a, f]),
        };
        let step = match filter {
            Some(p) => {
                let a = accu(h);
                call(h, operators::CONDITIONAL, vec![p, grow, a])
            }
            None => grow,
        };
        let result = accu(h);
        Ok(Some(comprehension(
            h,
            range,
            k,
            Some(v),
            init,
            cond,
            step,
            result,
        )))
    })
}

/// `cel.bind(name, init, body)`: a comprehension over nothing whose
/// accumulator is `name`.
fn bind() -> Macro {
    Macro::receiver("bind", 3, |h, target, args: Args<'_>| {
        if !on_cel(target) {
            return Ok(None);
        }
        let name = ident(h, &args[0], "the name cel.bind binds")?;
        let body = args.pop().expect("arity checked");
        let init = args.pop().expect("arity checked");
        Ok(Some(bound(h, name, init, body)))
    })
}

/// The comprehension binding `name` to `init` in `body`: what `cel.bind`
/// and each slot of `cel.block` expand to.
fn bound(h: &mut MacroExprHelper<'_>, name: String, init: IdedExpr, body: IdedExpr) -> IdedExpr {
    let range = h.next_expr(Expr::List(ListExpr::new(Vec::new())));
    let cond = lit(h, LiteralValue::Boolean(false.into()));
    let step = h.next_expr(Expr::Ident(name.clone()));
    h.next_expr(Expr::Comprehension(Box::new(ComprehensionExpr {
        iter_range: range,
        iter_var: "#unused".to_owned(),
        iter_var2: None,
        accu_var: name,
        accu_init: init,
        loop_cond: cond,
        loop_step: step,
        result: body,
    })))
}

fn on_cel(target: &Option<IdedExpr>) -> bool {
    matches!(target.as_ref().map(|t| &t.expr), Some(Expr::Ident(n)) if n == "cel")
}

fn int_arg(h: &MacroExprHelper<'_>, e: &IdedExpr) -> Result<i64, ParseError> {
    match &e.expr {
        Expr::Literal(LiteralValue::Int(i)) if *i.inner() >= 0 => Ok(*i.inner()),
        _ => Err(h.new_error(e.id, "expected a non-negative int literal")),
    }
}

/// `cel.block([e0, e1, ...], body)`, the form cel-go's optimizer writes
/// common subexpressions in: `cel.index(i)` in a later slot or in `body` is
/// the value of slot `i`; `cel.iterVar(d, n)` and `cel.accuVar(d, n)` name
/// the variables of comprehensions.
fn block() -> Vec<Macro> {
    let block = Macro::receiver("block", 2, |h, target, args: Args<'_>| {
        if !on_cel(target) {
            return Ok(None);
        }
        let body = args.pop().expect("arity checked");
        let slots = args.pop().expect("arity checked");
        let Expr::List(list) = slots.expr else {
            return Err(h.new_error(slots.id, "cel.block takes a list literal of slots"));
        };
        let mut out = body;
        for (i, e) in list.elements.into_iter().enumerate().rev() {
            out = bound(h, format!("@index{i}"), e, out);
        }
        Ok(Some(out))
    });
    let index = Macro::receiver("index", 1, |h, target, args: Args<'_>| {
        if !on_cel(target) {
            return Ok(None);
        }
        let i = int_arg(h, &args[0])?;
        Ok(Some(h.next_expr(Expr::Ident(format!("@index{i}")))))
    });
    let var = |name: &'static str, prefix: &'static str| {
        Macro::receiver(name, 2, move |h, target, args: Args<'_>| {
            if !on_cel(target) {
                return Ok(None);
            }
            let a = int_arg(h, &args[0])?;
            let b = int_arg(h, &args[1])?;
            Ok(Some(h.next_expr(Expr::Ident(format!("{prefix}:{a}:{b}")))))
        })
    };
    vec![block, index, var("iterVar", "@it"), var("accuVar", "@ac")]
}

/// Every macro celgate adds.
pub fn all() -> Vec<Macro> {
    let mut out = vec![
        quantifier(Quantifier::All),
        quantifier(Quantifier::Exists),
        quantifier(Quantifier::ExistsOne),
        bind(),
    ];
    // `exists_one` is the older spelling of `existsOne`.
    out.push(Macro::receiver(
        "exists_one",
        3,
        |h, target, args: Args<'_>| quantify(Quantifier::ExistsOne, h, target, args).map(Some),
    ));
    for t in [Transform::List, Transform::Map, Transform::MapEntry] {
        out.push(transform(t, 3));
        out.push(transform(t, 4));
    }
    out.extend(block());
    out
}
