//! Load-time limits on the shape of an expression, so that no policy can
//! crash or hang the process through its size or nesting.
//!
//! Everything that walks an expression recurses over it: the `cel` crate's
//! parser (ANTLR, several frames per bracket), its parse-tree visitor,
//! dropping the tree, and celgate's own walks (the type checker, the planner
//! and the evaluator, which recurses over the plan). Each is bounded by
//! the depth of the expression, so the depth is bounded when a policy loads:
//!
//! 1. [`check_source`], before the text reaches the parser: its length, how
//!    many brackets and conditionals are open at once, and an upper bound of
//!    the parsed depth read from the text (operators chained at one level,
//!    each adding a level to the tree). It is a single loop over the bytes.
//! 2. [`depth`], after parsing: the exact depth of the tree (an explicit
//!    stack, no recursion), which [`crate::policy`] adds up through the
//!    variables an expression reads (evaluating `variables.x` evaluates `x`'s
//!    expression on the same stack).
//!
//! The limits are chosen so that evaluation at the limit fits comfortably in
//! the evaluation threads' stacks ([`EVAL_STACK_BYTES`]) and parsing at the
//! limit in the loading threads' stacks ([`LOAD_STACK_BYTES`]), even in an
//! unoptimised build (about 160 KiB per bracket to parse, measured on cel
//! 0.15; 40 KiB per level to evaluate, measured on the `cel` crate's
//! interpreter that celgate's evaluator replaced).

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// Longest expression accepted, in bytes (cel-go's default is 100,000 code
/// points).
pub const MAX_EXPRESSION_BYTES: usize = 100_000;
/// Most brackets (`(`, `[`, `{`) and conditionals (`?:`) open at once.
pub const MAX_NESTING: usize = 32;
/// Deepest parsed expression, counting through the variables it reads.
pub const MAX_DEPTH: usize = 100;
/// The bound read from the text before parsing may overestimate the parsed
/// depth (a parenthesis, a number's `.`, a run of operators); text whose bound
/// is above this is refused without parsing it.
const MAX_TEXT_DEPTH: usize = 2 * MAX_DEPTH;
/// Stack of the threads that compile policies.
pub const LOAD_STACK_BYTES: usize = 32 << 20;
/// Stack of the threads that evaluate policies.
pub const EVAL_STACK_BYTES: usize = 16 << 20;

/// An expression over one of the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("expression is {0} bytes long, over the limit of {MAX_EXPRESSION_BYTES} bytes")]
    TooLong(usize),
    #[error("brackets and conditionals nest more deeply than the limit of {MAX_NESTING}")]
    TooNested,
    #[error("expression is nested more deeply than the limit of {MAX_DEPTH} levels")]
    TooDeep,
    #[error("expression is {0} levels deep counting the variables it reads, over the limit of {MAX_DEPTH} levels")]
    TooDeepThroughVariables(usize),
}

/// The checks on an expression's text, before it is parsed.
pub fn check_source(source: &str) -> Result<(), LimitError> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(LimitError::TooLong(source.len()));
    }
    let shape = scan(source.as_bytes());
    if shape.nesting > MAX_NESTING {
        return Err(LimitError::TooNested);
    }
    if shape.depth > MAX_TEXT_DEPTH {
        return Err(LimitError::TooDeep);
    }
    Ok(())
}

/// What [`scan`] reads from a text.
#[derive(Debug, Default)]
struct Shape {
    /// Most brackets and conditionals open at once.
    nesting: usize,
    /// An upper bound of the parsed depth.
    depth: usize,
}

/// One pass over the text, in time linear in its length.
fn scan(b: &[u8]) -> Shape {
    // Per open bracket (the first entry is the expression itself), a bound of
    // the depth it adds (`Level::value`): the conditionals open at that level,
    // the `&&`/`||` seen there (the parser balances their chains: they add
    // about twice their logarithm), and, for the operand being read (since
    // the last `,` `:` `?` `&&` `||`), its operators and the deepest bracket
    // closed in it. The bound for a point of the text is the sum over the
    // open levels, kept as the text is read.
    #[derive(Default)]
    struct Level {
        ternaries: usize,
        logic: usize,
        chain: usize,
        inner: usize,
        max: usize,
    }
    impl Level {
        fn value(&self) -> usize {
            1 + self.ternaries
                + 2 * (usize::BITS - self.logic.leading_zeros()) as usize
                + self.chain
                + self.inner
        }
    }
    struct Scan {
        levels: Vec<Level>,
        sum: usize,
        ternaries: usize,
        shape: Shape,
    }
    impl Scan {
        /// Changes the innermost level, keeping the sums.
        fn top(&mut self, f: impl FnOnce(&mut Level)) {
            let l = self.levels.last_mut().expect("the outer level stays");
            self.sum -= l.value();
            self.ternaries -= l.ternaries;
            f(l);
            self.sum += l.value();
            self.ternaries += l.ternaries;
            l.max = l.max.max(l.value());
            self.shape.depth = self.shape.depth.max(self.sum);
            self.shape.nesting = self
                .shape
                .nesting
                .max(self.levels.len() - 1 + self.ternaries);
        }
    }
    let mut st = Scan {
        levels: Vec::new(),
        sum: 0,
        ternaries: 0,
        shape: Shape::default(),
    };
    let open = |st: &mut Scan| {
        let l = Level::default();
        st.sum += l.value();
        st.levels.push(l);
        st.top(|_| {});
    };
    open(&mut st);
    // The last byte that was not blank, to tell a conditional's `?` from the
    // optional syntax (`.?f`, `[?i]`, `{?k: v}`, `[?e]`).
    let mut prev = b'\0';
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        // A string is skipped only when it is closed: the lexer skips the
        // quote of one that is not and reads on, so the scan must too.
        if matches!(c, b'"' | b'\'') {
            if let Some(end) = skip_string(b, i, false) {
                i = end;
                prev = c;
                continue;
            }
        }
        match c {
            // A comment runs to the end of the line.
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => open(&mut st),
            b')' | b']' | b'}' => {
                let mut inner = 0;
                if st.levels.len() > 1 {
                    st.top(|l| inner = l.max);
                    let l = st.levels.pop().expect("more than one level");
                    st.sum -= l.value();
                    st.ternaries -= l.ternaries;
                }
                // A call, an index or a literal is one node above what was
                // inside.
                st.top(|l| {
                    l.inner = l.inner.max(inner);
                    l.chain += 1;
                });
            }
            b',' | b':' | b'&' | b'|' | b'?' => {
                let ternary = c == b'?' && !matches!(prev, b'.' | b'[' | b'{' | b',');
                let logic = matches!(c, b'&' | b'|');
                // The operand read so far is below the new node...
                st.top(|l| {
                    l.ternaries += usize::from(ternary);
                    l.logic += usize::from(logic);
                });
                // ... and the next one starts afresh.
                st.top(|l| {
                    l.chain = 0;
                    l.inner = 0;
                });
                while logic && b.get(i + 1) == Some(&c) {
                    i += 1;
                }
            }
            c if is_operator(c) => {
                // A run of operator characters is one operator.
                while b.get(i + 1).is_some_and(|&n| is_operator(n)) {
                    i += 1;
                }
                st.top(|l| l.chain += 1);
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let start = i;
                while b
                    .get(i + 1)
                    .is_some_and(|&n| n.is_ascii_alphanumeric() || n == b'_')
                {
                    i += 1;
                }
                let word = &b[start..=i];
                // A string's prefix (`r"…"`, `b'…'`, `rb"…"`).
                if word.len() <= 2
                    && word.iter().all(|c| matches!(c, b'r' | b'R' | b'b' | b'B'))
                    && matches!(b.get(i + 1), Some(b'"' | b'\''))
                {
                    let raw = word.iter().any(|c| matches!(c, b'r' | b'R'));
                    if let Some(end) = skip_string(b, i + 1, raw) {
                        i = end;
                        prev = b'"';
                        continue;
                    }
                }
                if word == b"in" {
                    st.top(|l| l.chain += 1);
                }
            }
            _ => {}
        }
        if !c.is_ascii_whitespace() {
            prev = c;
        }
        i += 1;
    }
    st.shape
}

fn is_operator(c: u8) -> bool {
    matches!(
        c,
        b'+' | b'-' | b'*' | b'/' | b'%' | b'<' | b'>' | b'=' | b'!' | b'.'
    )
}

/// The index just past the string literal opening at `start` (a quote),
/// escapes honoured unless it is `raw`; `None` if it is not closed (a quoted
/// string ends at the end of its line).
fn skip_string(b: &[u8], start: usize, raw: bool) -> Option<usize> {
    let q = b[start];
    let triple = b.get(start + 1) == Some(&q) && b.get(start + 2) == Some(&q);
    let mut i = start + if triple { 3 } else { 1 };
    while i < b.len() {
        match b[i] {
            b'\n' | b'\r' if !triple => return None,
            b'\\' if !raw => {
                if !triple && matches!(b.get(i + 1), Some(b'\n' | b'\r')) {
                    return None;
                }
                i += 2;
            }
            c if c == q && !triple => return Some(i + 1),
            c if c == q && b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) => {
                return Some(i + 3)
            }
            _ => i += 1,
        }
    }
    None
}

/// The depth of a parsed expression (a literal or a name is 1), computed
/// without recursion.
pub fn depth(expr: &IdedExpr) -> usize {
    let mut max = 0;
    let mut stack: Vec<(&IdedExpr, usize)> = vec![(expr, 1)];
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        let d = d + 1;
        match &e.expr {
            Expr::Call(c) => {
                stack.extend(c.target.as_deref().map(|t| (t, d)));
                stack.extend(c.args.iter().map(|a| (a, d)));
            }
            Expr::Comprehension(c) => {
                for x in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    stack.push((x, d));
                }
            }
            Expr::List(l) => stack.extend(l.elements.iter().map(|x| (x, d))),
            Expr::Map(m) => {
                for e in &m.entries {
                    entry(&e.expr, d, &mut stack);
                }
            }
            Expr::Struct(s) => {
                for e in &s.entries {
                    entry(&e.expr, d, &mut stack);
                }
            }
            Expr::Select(s) => stack.push((&s.operand, d)),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    max
}

fn entry<'a>(e: &'a EntryExpr, d: usize, stack: &mut Vec<(&'a IdedExpr, usize)>) {
    match e {
        EntryExpr::MapEntry(m) => {
            stack.push((&m.key, d + 1));
            stack.push((&m.value, d + 1));
        }
        EntryExpr::StructField(s) => stack.push((&s.value, d + 1)),
    }
}

/// Runs `f` on a thread with a stack of [`LOAD_STACK_BYTES`], for work that
/// parses expressions; on the calling thread if no thread can be started.
pub fn on_load_stack<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let f = std::sync::Mutex::new(Some(f));
    let take = || f.lock().unwrap_or_else(|e| e.into_inner()).take();
    let started = std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("celgate-load".into())
            .stack_size(LOAD_STACK_BYTES)
            .spawn_scoped(s, || take().map(|f| f()))
            .ok()?;
        Some(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    });
    match started.flatten() {
        Some(r) => r,
        None => take().expect("the work runs once")(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed_depth(s: &str) -> usize {
        depth(crate::cel::env().compile(s).unwrap().expression())
    }

    #[test]
    fn text_bound_is_never_below_the_parsed_depth() {
        for s in [
            "1",
            "a.b.c.d == 'x.y.z'",
            "object.attributes.request.http.headers['x'] == 'y' && a || b",
            "[1, 2, [3, [4]]].all(x, x > 0) ? envoy.Allowed().Response() : null",
            "a ? b : c ? d : e ? f : g",
            "{'a': {'b': [1 + 2 * 3 - 4]}}.a.b[0] in [1, 2]",
            "-(-(-1)) + !true ? 1 : 2",
            "r'a.b(c' + b\"x]\" + '''q\"\"''' + 'it\\'s'",
            "x.?y.orValue(1) + [?a.?b][0] + {?'k': optional.none()}.size()",
            "1 + 1 + 1 + 1 + 1 + 1 + 1 + 1",
        ] {
            assert_eq!(check_source(s), Ok(()), "{s}");
            let (bound, parsed) = (scan(s.as_bytes()).depth, parsed_depth(s));
            assert!(bound >= parsed, "{s}: text says {bound}, parsed {parsed}");
        }
    }

    #[test]
    fn shapes_over_the_limits_are_refused_before_parsing() {
        let chain = format!("1{} > 0", " + 1".repeat(2000));
        assert_eq!(check_source(&chain), Err(LimitError::TooDeep));
        let parens = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        assert_eq!(check_source(&parens), Err(LimitError::TooNested));
        let lists = format!("{}1{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(check_source(&lists), Err(LimitError::TooNested));
        let ternaries = format!("{}1", "true ? 1 : ".repeat(40));
        assert_eq!(check_source(&ternaries), Err(LimitError::TooNested));
        let index = format!("a{}", "[0]".repeat(300));
        assert_eq!(check_source(&index), Err(LimitError::TooDeep));
        let ins = format!("a{}", " in b".repeat(300));
        assert_eq!(check_source(&ins), Err(LimitError::TooDeep));
        let select = format!("a{}", ".b".repeat(300));
        assert_eq!(check_source(&select), Err(LimitError::TooDeep));
        let long = format!("'{}'", "a".repeat(MAX_EXPRESSION_BYTES));
        assert_eq!(
            check_source(&long),
            Err(LimitError::TooLong(MAX_EXPRESSION_BYTES + 2))
        );
        // Brackets inside strings are text...
        let quoted = format!("'{}' == x", "(".repeat(1000));
        assert_eq!(check_source(&quoted), Ok(()));
        let quoted = format!("r\"\"\"{}\n\"\"\" == x", "(".repeat(1000));
        assert_eq!(check_source(&quoted), Ok(()));
        // ... unless the string is not closed (the lexer reads on)...
        for open in ["'", "\"", "r'", "'''", "'a\\\n"] {
            let unclosed = format!("{open} {}1", "(".repeat(40));
            assert_eq!(
                check_source(&unclosed),
                Err(LimitError::TooNested),
                "{open}"
            );
            if !open.starts_with("'''") {
                let next_line = format!("{open}\n{}1", "(".repeat(40));
                assert_eq!(
                    check_source(&next_line),
                    Err(LimitError::TooNested),
                    "{open}"
                );
            }
        }
        // ... and a comment ends at its line.
        let commented = format!("x // it's (\n{}1", "(".repeat(40));
        assert_eq!(check_source(&commented), Err(LimitError::TooNested));
        let commented = format!("x // {}\n", "(".repeat(40));
        assert_eq!(check_source(&commented), Ok(()));
        // A long conjunction is balanced by the parser: not deep.
        let and = vec!["a.b.c == 1"; 2000].join(" && ");
        assert_eq!(check_source(&and), Ok(()));
        assert!(parsed_depth(&and) < 30);
    }

    #[test]
    fn at_the_limits_parsing_and_depth_fit_the_load_stack() {
        let nested = format!("{}1{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(check_source(&nested), Ok(()));
        let d = on_load_stack(|| parsed_depth(&nested));
        assert!(d <= MAX_DEPTH, "{d}");
        let chain = format!("1{}", " + 1".repeat(MAX_DEPTH - 1));
        assert_eq!(check_source(&chain), Ok(()));
        assert_eq!(on_load_stack(|| parsed_depth(&chain)), MAX_DEPTH);
    }

    /// Random texts built from the pieces that matter to the scan (most are
    /// not valid CEL): whatever the scan lets through parses on the load
    /// stack without overflowing it, and when it parses, its depth is within
    /// the scan's bound.
    #[test]
    fn whatever_passes_the_scan_parses_within_its_bound() {
        const PIECES: [&str; 24] = [
            "(", ")", "[", "]", "{", "}", "1", " + ", ".a", " ? ", " : ", ", ", "'", "\"", "r'",
            "'''", " // ", "\n", " in ", "!", " && ", "x", "f(", "[?",
        ];
        let mut seed: u64 = 0x5eed;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        let mut texts = Vec::new();
        for _ in 0..600 {
            let len = 1 + next(400);
            let mut s = String::new();
            for _ in 0..len {
                // Opening brackets are favoured, to reach the limits.
                let p = if next(3) == 0 {
                    next(3) * 2
                } else {
                    next(PIECES.len())
                };
                s.push_str(PIECES[p]);
            }
            texts.push(s);
        }
        let (passed, parsed) = on_load_stack(move || {
            let (mut passed, mut parsed) = (0, 0);
            for s in texts {
                if check_source(&s).is_err() {
                    continue;
                }
                passed += 1;
                if let Ok(p) = crate::cel::env().compile(&s) {
                    parsed += 1;
                    let bound = scan(s.as_bytes()).depth;
                    assert!(depth(p.expression()) <= bound, "{s:?}");
                }
            }
            (passed, parsed)
        });
        eprintln!("{passed} passed the scan, {parsed} parsed");
        assert!(passed > 100, "{passed}");
    }

    /// Random valid expressions, up to twice the depth limit: the scan's
    /// bound is never below the parsed depth, so nothing deeper than the
    /// bound reaches the evaluator.
    #[test]
    fn the_scan_bound_holds_for_random_valid_expressions() {
        let mut seed: u64 = 0xce1;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        fn gen(next: &mut dyn FnMut(usize) -> usize, budget: usize) -> String {
            if budget == 0 {
                return ["1", "x", "'s(['", "r\"]\"", "2.5"][next(5)].to_owned();
            }
            let mut sub = || gen(next, budget - 1);
            let (a, b) = (sub(), sub());
            match next(14) {
                0 => format!("({a})"),
                1 => format!("[{a}, {b}]"),
                2 => format!("{{'k': {a}}}"),
                3 => format!("{a} + {b}"),
                4 => format!("({a}).f"),
                5 => format!("{a} ? ({b}) : 1"),
                6 => format!("size({a})"),
                7 => format!("{a} in [{b}]"),
                8 => format!("!({a})"),
                9 => format!("{a} && {b} || x"),
                10 => format!("x[{a}][0]"),
                11 => format!("({a}).?g.orValue({b})"),
                12 => format!("({a}).all(v, v > {b})"),
                _ => format!("(x.y.z == {a} // (('\n + {b})"),
            }
        }
        let texts: Vec<String> = (0..300)
            .map(|_| {
                let budget = 1 + next(8);
                gen(&mut next, budget)
            })
            .collect();
        let checked = on_load_stack(move || {
            let mut checked = 0;
            for s in texts {
                let p = crate::cel::env()
                    .compile(&s)
                    .unwrap_or_else(|e| panic!("{s:?}: {e}"));
                let (bound, parsed) = (scan(s.as_bytes()).depth, depth(p.expression()));
                assert!(parsed <= bound, "{s:?}: text says {bound}, parsed {parsed}");
                checked += 1;
            }
            checked
        });
        assert_eq!(checked, 300);
    }
}
