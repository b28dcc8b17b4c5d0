//! The static cost estimate: an upper bound of the work one evaluation of an
//! expression can do, computed when the policy loads from bounds on what a
//! request can hold, in the spirit of the Kubernetes CEL cost estimator (the
//! model and the numbers are celgate's own).
//!
//! One unit is one step of evaluation: reading a name or a field, a literal,
//! a call. Functions that walk a string cost a tenth of a unit per byte they
//! may walk; functions that walk a list cost a unit per element (or per pair
//! of elements, for those that compare every pair). A comprehension
//! (`exists`, `all`, `map`, `filter`, ...) costs its body once per element its
//! range may hold. Reading `variables.x` costs one unit: the variable is
//! evaluated at most once per request and its own expression is estimated
//! (and held to the budget) where it is declared.
//!
//! What the request may hold, for the estimate:
//! - a string from the request's headers, path, host, ...: at most
//!   [`HEADER_BYTES`] bytes (Envoy's default `max_request_headers_kb`);
//! - the headers map, and any other map or list of the request: at most
//!   [`MAX_HEADERS`] entries (Envoy's default `max_headers_count`);
//! - the body: at most `--mcp-max-body-bytes` bytes;
//! - a value decoded from a header (JWT claims): as large as the header;
//!   from the body (MCP arguments): as large as the body. A list decoded
//!   from `n` bytes holds at most `n / 2` elements.

use super::types::Ty;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest estimate accepted by default, in units.
pub const DEFAULT_BUDGET: u64 = 10_000_000;
/// Bound of one string of the request's headers.
pub const HEADER_BYTES: f64 = 60.0 * 1024.0;
/// Bound of the number of headers, or of entries of any request map or list.
pub const MAX_HEADERS: f64 = 100.0;

static BUDGET: AtomicU64 = AtomicU64::new(DEFAULT_BUDGET);

/// Sets the budget (`--max-expression-cost`), before policies load.
pub fn configure(budget: u64) {
    BUDGET.store(budget.max(1), Ordering::Relaxed);
}

/// The budget every expression's estimate is held to.
pub fn budget() -> u64 {
    BUDGET.load(Ordering::Relaxed)
}

/// Where a value of the request comes from, for its size bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A scalar or a message: size 1.
    Fixed,
    /// A string of the headers.
    Header,
    /// The body.
    Body,
    /// A map or list of the request.
    HeaderList,
    /// A value decoded from a header.
    HeaderJson,
    /// A value decoded from the body.
    BodyJson,
}

impl Bound {
    /// (size, size of each element).
    /// The bound of the sum of the elements' sizes, when it is smaller
    /// than the product of the two [`Bound::sizes`].
    pub fn total(self) -> Option<f64> {
        match self {
            Bound::HeaderList | Bound::HeaderJson => Some(HEADER_BYTES),
            Bound::BodyJson => Some(crate::mcp::max_body_bytes() as f64),
            _ => None,
        }
    }

    pub fn sizes(self) -> (f64, f64) {
        let body = crate::mcp::max_body_bytes() as f64;
        match self {
            Bound::Fixed => (1.0, 1.0),
            Bound::Header | Bound::HeaderJson => (HEADER_BYTES, HEADER_BYTES),
            Bound::Body | Bound::BodyJson => (body, body),
            Bound::HeaderList => (MAX_HEADERS, HEADER_BYTES),
        }
    }
}

/// What the checker knows of a sub-expression: its type, the bounds of its
/// size (bytes of a string, elements of a list or map; for `dyn`, both) and
/// of its elements' size, and the estimated cost of evaluating it.
#[derive(Debug, Clone)]
pub struct Info {
    pub ty: Ty,
    pub size: f64,
    pub elem: f64,
    pub cost: f64,
    /// A bound of the sum of the elements' sizes when it is smaller than
    /// `size * elem`: the pieces of a split string share its bytes, the
    /// headers share the header bytes.
    pub total: Option<f64>,
}

impl Info {
    pub fn new(ty: Ty) -> Info {
        Info {
            ty,
            size: 1.0,
            elem: 1.0,
            cost: 1.0,
            total: None,
        }
    }
    pub fn sized(ty: Ty, (size, elem): (f64, f64)) -> Info {
        Info {
            ty,
            size,
            elem,
            cost: 1.0,
            total: None,
        }
    }
    /// The bound of the sum of the elements' sizes.
    pub fn total(&self) -> f64 {
        let mut all = self.count() * self.elem;
        // A value decoded from `size` bytes holds no more than that.
        if self.ty.is_dyn() {
            all = all.min(self.size);
        }
        self.total.map_or(all, |t| t.min(all))
    }
    /// As many elements as a list decoded from this value may hold.
    pub fn count(&self) -> f64 {
        match self.ty {
            Ty::Dyn => (self.size / 2.0).max(1.0),
            _ => self.size.max(1.0),
        }
    }
}

const BYTE: f64 = 0.1;

/// The cost of a call beyond evaluating its arguments, and the result's
/// (size, element size).
pub fn call(name: &str, recv: Option<&Info>, args: &[Info], result: &Ty) -> (f64, (f64, f64)) {
    let all: Vec<&Info> = recv.into_iter().chain(args).collect();
    let first = all.first().copied();
    let walk = |i: Option<&&Info>| i.map_or(0.0, |i| BYTE * i.size);
    let same = first.map_or((1.0, 1.0), |i| (i.size, i.elem));
    let largest = all.iter().map(|i| i.size).fold(1.0, f64::max);
    let scalar = matches!(
        result,
        Ty::Bool | Ty::Int | Ty::Uint | Ty::Double | Ty::Null | Ty::Duration | Ty::Timestamp
    );
    let (cost, sizes) = match name {
        // A list's `indexOf` compares each element (the Kubernetes lists
        // library); a string's walks its bytes.
        "indexOf" | "lastIndexOf" | "includes"
            if first.is_some_and(|f| matches!(f.ty, Ty::List(_) | Ty::Dyn)) =>
        {
            let l = first.map_or(1.0, |f| f.count() + BYTE * f.total());
            (l, (1.0, 1.0))
        }
        "contains" | "startsWith" | "endsWith" | "indexOf" | "lastIndexOf" | "charAt" => {
            (walk(all.first()) + walk(all.get(1)), (1.0, 1.0))
        }
        // The Kubernetes lists library: a unit per element.
        "isSorted" | "sum" | "min" | "max" => {
            let n = first.map_or(1.0, Info::count);
            (n, first.map_or((1.0, 1.0), |f| (f.elem, f.elem)))
        }
        "lowerAscii" | "upperAscii" | "trim" | "reverse" | "substring" | "strings.quote"
        | "base64.encode" | "base64.decode" | "string" | "bytes" | "int" | "uint" | "double"
        | "bool" | "duration" | "timestamp" => (walk(all.first()), same),
        "matches" | "find" | "findAll" => {
            let (input, pattern) = (all.first(), all.get(1));
            let cost = walk(input) * (1.0 + pattern.map_or(0.0, |p| p.size) / 16.0);
            // A match is a piece of the input; there are at most as many
            // as the input has bytes, plus one.
            let sizes = match name {
                "find" => (same.0, 1.0),
                "findAll" => (same.0 + 1.0, same.0),
                _ => (1.0, 1.0),
            };
            (cost, sizes)
        }
        "split" => (walk(all.first()), (same.0, same.0)),
        "replace" => {
            let growth = all.get(2).map_or(1.0, |r| r.size.max(1.0));
            (walk(all.first()), (same.0 * growth, 1.0))
        }
        "join" => {
            let l = first.map_or(1.0, Info::total);
            (BYTE * l, (l, 1.0))
        }
        "format" => {
            let args: f64 = all.iter().map(|i| i.size).sum();
            (BYTE * args, (args, 1.0))
        }
        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
            let n = all.iter().map(|i| i.size).fold(f64::INFINITY, f64::min);
            let n = if n.is_finite() { n } else { 1.0 };
            let per = match first.map(|i| &i.ty) {
                Some(Ty::List(_) | Ty::Map(..) | Ty::Dyn) => {
                    1.0 + BYTE * first.map_or(1.0, |i| i.elem)
                }
                _ => BYTE,
            };
            (n * per, (1.0, 1.0))
        }
        "_+_" => {
            let sum: f64 = all.iter().map(|i| i.size).sum();
            let elem = all.iter().map(|i| i.elem).fold(1.0, f64::max);
            let cost = match result {
                Ty::String | Ty::Bytes => BYTE * sum,
                Ty::List(_) | Ty::Dyn => all.get(1).map_or(0.0, |i| i.size),
                _ => 0.0,
            };
            (cost, (sum, elem))
        }
        "@in" => match args.get(1) {
            Some(c) if matches!(c.ty, Ty::List(_) | Ty::Dyn) => (
                c.count() * (1.0 + BYTE * c.elem.min(args[0].size)),
                (1.0, 1.0),
            ),
            _ => (0.0, (1.0, 1.0)),
        },
        "sort" | "@sortByAssociatedKeys" => {
            let n = first.map_or(1.0, Info::count);
            (n * (n.log2().max(1.0)), same)
        }
        "distinct" => {
            let n = first.map_or(1.0, Info::count);
            (n * n, same)
        }
        "flatten" | "slice" | "math.@max" | "math.@min" => (first.map_or(1.0, Info::count), same),
        "sets.contains" | "sets.equivalent" | "sets.intersects" => {
            (all.iter().map(|i| i.count()).product::<f64>(), (1.0, 1.0))
        }
        "_[_]" | "_[?_]" => (0.0, first.map_or((1.0, 1.0), |i| (i.elem, i.elem))),
        "value" | "orValue" | "or" | "optional.of" | "optional.ofNonZeroValue" | "dyn" => {
            let s = all.iter().map(|i| i.size).fold(1.0, f64::max);
            let e = all.iter().map(|i| i.elem).fold(1.0, f64::max);
            (0.0, (s, e))
        }
        "jwt.Decode" => (100.0 + walk(all.first()), same),
        "jwks.Fetch" => (100.0, (1.0, 1.0)),
        // An answer is read whole (charged by its size) and is as large as
        // the response limit allows; what is sent is walked once.
        "http.Get" | "http.get" | "http.Post" | "http.post" | "Get" | "get" | "Post" | "post" => {
            let body = crate::outbound::http::config().max_response_bytes as f64;
            let sent: f64 = all.iter().map(|i| BYTE * i.size).sum();
            (100.0 + sent + BYTE * body, (body, body))
        }
        "mcp.Parse" => (walk(all.first()), same),
        // A document's values are as large as its text.
        "json.unmarshal" => (walk(all.first()), same),
        // A format's validation walks the string once; it gives at most a
        // few reasons, each a message of its own (`uri`'s quotes the input).
        "validate" => {
            let input = all.get(1).map_or(1.0, |a| a.size);
            (walk(all.get(1)), (4.0, input + 400.0))
        }
        // A unit per value, a tenth per byte; escaping may make the text
        // up to six times as long as the strings it holds.
        "json.marshal" => {
            let (n, total) = first.map_or((1.0, 1.0), |f| (f.count(), f.total()));
            (n + BYTE * total, (6.0 * total, 1.0))
        }
        "lists.range" => (0.0, (1e6, 1.0)),
        // An address or a range: parsing reads a bounded prefix of the
        // string; the value's size is that of its text.
        "ip" | "cidr" | "masked" => {
            let text = crate::cel::eval::lib::net::MAX_TEXT as f64;
            (BYTE * text, (text, text))
        }
        // The Kubernetes libraries read their text in a few linear passes;
        // a URL's parts are no longer than its text.
        "url" | "isURL" => (4.0 * walk(all.first()), same),
        "quantity" | "isQuantity" => (2.0 * walk(all.first()), (1.0, 1.0)),
        "semver" | "isSemver" => (walk(all.first()), (1.0, 1.0)),
        "getScheme" | "getHost" | "getHostname" | "getPort" => (walk(all.first()), same),
        "getEscapedPath" => (3.0 * walk(all.first()), (3.0 * same.0, 1.0)),
        "getQuery" => {
            let n = first.map_or(1.0, |i| i.size);
            (BYTE * n + n / 2.0, ((n / 2.0).max(1.0), n))
        }
        _ if scalar => (0.0, (1.0, 1.0)),
        _ => (0.0, (largest, largest)),
    };
    (1.0 + cost, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walking_a_string_costs_a_tenth_per_byte() {
        let body = Info::sized(Ty::String, (1000.0, 1000.0));
        let needle = Info::sized(Ty::String, (3.0, 3.0));
        let (c, _) = call("contains", Some(&body), &[needle], &Ty::Bool);
        assert!((c - (1.0 + 100.0 + 0.3)).abs() < 1e-9, "{c}");
    }
}
