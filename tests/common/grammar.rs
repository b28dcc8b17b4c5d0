//! A small typed grammar of random CEL expressions over the request, shared
//! by the tests that generate policies (`checker_decls`, `differential`).
//!
//! A [`Tape`] of proptest's numbers drives [`Gen`], which builds an
//! expression of a chosen [`T`]: request fields, literals, operators,
//! functions, comprehensions, optionals, some mixed with ill-typed operands
//! ([`G::mixed`]) or values of unknown type ([`G::dynamic`]). Zeros pick the
//! first alternative, a leaf, so shrinking simplifies.
//!
//! Use from a test file with
//! `#[path = "common/grammar.rs"] mod grammar;` (not through `common`, so
//! the tests that do not generate expressions do not build it).

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde_json::json;
use std::sync::OnceLock;

/// A `tools/call` whose arguments hold one value of each kind the argument
/// getters read.
pub const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"s":"x","i":2,"f":1.5,"b":true,"ss":["x","y"],"is":[1,2],"fs":[1.5],"bs":[true]}}}"#;

/// The request every generated policy is evaluated on.
pub fn request() -> &'static CheckRequest {
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
pub struct Tape<'a> {
    pub choices: &'a [u16],
    pub at: usize,
}

impl Tape<'_> {
    pub fn pick(&mut self, n: usize) -> usize {
        let c = self.choices.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        usize::from(c) % n
    }
}

/// The types the grammar builds values of.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum T {
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

pub const TYPES: [T; 14] = [
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
pub struct G {
    pub text: String,
    pub dynamic: bool,
    pub mixed: bool,
}

pub fn leaf(s: &str) -> G {
    G {
        text: s.to_owned(),
        ..G::default()
    }
}

pub const HTTP: &str = "object.attributes.request.http";
pub const SOCKET: &str = "object.attributes.source.address.socket_address";

pub struct Gen<'a, 'b> {
    pub tape: &'a mut Tape<'b>,
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

    pub fn any(&mut self, depth: u32) -> G {
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

    pub fn gen(&mut self, t: T, depth: u32) -> G {
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
