//! The evaluation context: everything one request's evaluation holds.
//!
//! The engine creates one [`Ctx`] per request and passes it down to every
//! expression it evaluates: the request, the cost meter (one budget for the
//! whole request, all policies together), the lazily computed variables of
//! the policy being evaluated, and the libraries' per-request caches (the
//! MCP parse of the body, ...). Nothing of a request lives in a
//! thread-local or a global.

use super::plan::Program;
use super::{Error, ErrorKind, Value};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::any::{Any, TypeId};
use std::time::Instant;

/// Default run-time cost budget of one request, in units (see [`Meter`]).
pub const DEFAULT_BUDGET: u64 = 10_000_000;

/// Counts the work of an evaluation: one unit per step (a field read, a
/// call, an operator), one per comprehension iteration, and the size of
/// what string and list functions walk (a tenth of a unit per byte, a unit
/// per element; a unit per pair for those that compare every pair).
#[derive(Debug, Clone)]
pub struct Meter {
    used: u64,
    budget: u64,
    deadline: Option<Instant>,
    /// Past this many units used, [`Meter::charge`] looks further: the
    /// budget, or with a deadline the next point to read the clock at.
    check_at: u64,
    /// The budget is a first slice of the real one (see [`Meter::slice`]).
    slice: bool,
    /// The evaluation reached the end of its slice, or a call that would
    /// block: its result stands for nothing and it is run again in full.
    yielded: bool,
}

/// How often (in units) the deadline is read: a clock read is far dearer
/// than a unit.
const CLOCK_EVERY: u64 = 16_384;

impl Meter {
    pub fn new(budget: u64) -> Self {
        Meter {
            used: 0,
            budget,
            deadline: None,
            check_at: budget,
            slice: false,
            yielded: false,
        }
    }

    /// A meter for a first attempt at an evaluation within `units` of
    /// `budget`: past them the evaluation stops as if over budget and the
    /// meter says it [yielded](Meter::yielded), so that the caller runs it
    /// again in full elsewhere. With `units >= budget` it is the plain
    /// meter of `budget`.
    pub fn slice(units: u64, budget: u64) -> Self {
        Meter {
            slice: units < budget,
            ..Meter::new(units.min(budget))
        }
    }

    /// Whether the evaluation stopped short of its real budget (or at a
    /// call that would block): nothing it decided counts.
    pub fn yielded(&self) -> bool {
        self.yielded
    }

    /// Stops the evaluation as one that needs more than its slice allows.
    #[cold]
    pub fn give_up(&mut self) -> Error {
        self.yielded = true;
        Error::new(
            ErrorKind::CostExceeded,
            "the evaluation continues where it may take longer",
        )
    }

    /// Also stops the evaluation (as a cost error) once `deadline` passes.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self.check_at = self.next_check();
        self
    }

    /// Where [`Meter::charge`] looks next: the budget, or sooner to read
    /// the clock when there is a deadline.
    fn next_check(&self) -> u64 {
        match self.deadline {
            Some(_) => self.budget.min(self.used.saturating_add(CLOCK_EVERY)),
            None => self.budget,
        }
    }

    /// When the evaluation must have ended, if it has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Charges `units`; an error once the budget is spent. The common case
    /// (nothing to look at yet) is an addition and a comparison, inlined
    /// where it is charged; the rest is out of line.
    #[inline(always)]
    pub fn charge(&mut self, units: u64) -> Result<(), Error> {
        self.used = self.used.saturating_add(units);
        if self.used > self.check_at {
            return self.charge_slow();
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn charge_slow(&mut self) -> Result<(), Error> {
        if self.used > self.budget {
            if self.slice {
                return Err(self.give_up());
            }
            return Err(Error::new(
                ErrorKind::CostExceeded,
                format!(
                    "the request's evaluation cost exceeds its budget of {} units",
                    self.budget
                ),
            ));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::new(
                ErrorKind::CostExceeded,
                "the request's evaluation ran past its deadline",
            ));
        }
        self.check_at = self.next_check();
        Ok(())
    }
}

/// What the server provides to libraries that reach outside the process
/// (blocking calls, made on the evaluation's own thread). The default
/// ([`DefaultHost`]) is celgate's own process-wide caches.
pub trait Host: Send + Sync {
    /// The JSON Web Key Set at `url` (`jwks.Fetch`), from the cache or
    /// fetched within the allow-list and limits the server configured.
    fn jwks(&self, url: &str) -> Result<std::sync::Arc<crate::identity::jwks::KeySet>, String>;

    /// The key set at `url` if it can be had without blocking (cached);
    /// `None` when answering would take a fetch.
    fn jwks_cached(&self, url: &str) -> Option<std::sync::Arc<crate::identity::jwks::KeySet>> {
        let _ = url;
        None
    }

    /// A call of the `http` library, made within the allow-list and limits
    /// the server configured. The default refuses: a host that offers
    /// outbound requests says so.
    fn http(&self, call: &HttpCall<'_>) -> Result<std::sync::Arc<HttpResponse>, String> {
        let _ = call;
        Err("the http library is not available here".into())
    }

    /// The answer of `call` if it can be had without blocking (a cached
    /// `GET`); `None` when answering would take a request.
    fn http_cached(&self, call: &HttpCall<'_>) -> Option<std::sync::Arc<HttpResponse>> {
        let _ = call;
        None
    }
}

pub use crate::outbound::http::{Call as HttpCall, Response as HttpResponse};

/// celgate's process-wide JWKS cache and `http` library.
pub struct DefaultHost;

impl Host for DefaultHost {
    fn jwks(&self, url: &str) -> Result<std::sync::Arc<crate::identity::jwks::KeySet>, String> {
        crate::identity::jwks::fetch(url).map_err(|e| e.to_string())
    }

    fn jwks_cached(&self, url: &str) -> Option<std::sync::Arc<crate::identity::jwks::KeySet>> {
        crate::identity::jwks::cached(url)
    }

    fn http(&self, call: &HttpCall<'_>) -> Result<std::sync::Arc<HttpResponse>, String> {
        crate::outbound::http::call(call).map_err(|e| e.to_string())
    }

    fn http_cached(&self, call: &HttpCall<'_>) -> Option<std::sync::Arc<HttpResponse>> {
        crate::outbound::http::cached(call)
    }
}

/// A variable's slot.
#[derive(Clone)]
enum Cell<'r> {
    Empty,
    Busy,
    Done(Result<Value<'r>, Error>),
}

/// The evaluation context of one request.
pub struct Ctx<'r> {
    request: Option<&'r CheckRequest>,
    /// In HTTP mode, `object`: the `http.CheckRequest` (or, for the
    /// server's output expression, the `http.CheckResponse`).
    http_object: Option<Value<'r>>,
    pub meter: Meter,
    host: &'r dyn Host,
    vars: &'r [Program],
    /// Each variable's state and how many times it was evaluated (for
    /// traces). A `Vec` (one allocation per request, reused by each
    /// policy) rather than an inline array, which would make `Ctx`
    /// invariant over `'r`.
    cells: Vec<(Cell<'r>, u32)>,
    /// The libraries' caches, by type: a few at most, found by a scan
    /// (no hashing of the key on every use).
    caches: Vec<(TypeId, Box<dyn Any + Send>)>,
    may_block: bool,
}

static DEFAULT_HOST: DefaultHost = DefaultHost;

impl<'r> Ctx<'r> {
    /// A context for `request` (none: an expression evaluated on its own,
    /// as the conformance tests and `celgate check` of a constant do).
    pub fn new(request: Option<&'r CheckRequest>, meter: Meter) -> Self {
        Ctx {
            request,
            http_object: None,
            meter,
            host: &DEFAULT_HOST,
            vars: &[],
            cells: Vec::new(),
            caches: Vec::new(),
            may_block: true,
        }
    }

    /// A context whose `object` is `object`, a value of HTTP mode
    /// ([`super::lib::httpauthz`]): the request, or the response the
    /// server's output expression shapes.
    pub fn for_http(object: Value<'r>, meter: Meter) -> Self {
        let mut ctx = Ctx::new(None, meter);
        ctx.http_object = Some(object);
        ctx
    }

    /// `object` in HTTP mode; `None` in Envoy mode.
    #[inline]
    pub fn http_object(&self) -> Option<&Value<'r>> {
        self.http_object.as_ref()
    }

    /// A context on a thread that must not block (an async worker): a call
    /// that would, or that would take long ([`Host::jwks`] without a cached
    /// answer, a token signature to verify), gives up ([`Meter::give_up`])
    /// instead.
    pub fn without_blocking(mut self) -> Self {
        self.may_block = false;
        self
    }

    /// Whether calls may block this thread.
    pub fn may_block(&self) -> bool {
        self.may_block
    }

    pub fn with_host(mut self, host: &'r dyn Host) -> Self {
        self.host = host;
        self
    }

    pub fn request(&self) -> Option<&'r CheckRequest> {
        self.request
    }

    pub fn host(&self) -> &'r dyn Host {
        self.host
    }

    /// Charges the meter.
    #[inline(always)]
    pub fn charge(&mut self, units: u64) -> Result<(), Error> {
        self.meter.charge(units)
    }

    /// Charges a walk over `bytes` bytes (a tenth of a unit per byte).
    #[inline]
    pub fn charge_bytes(&mut self, bytes: usize) -> Result<(), Error> {
        self.meter.charge(1 + bytes as u64 / 10)
    }

    /// A library's per-request cache of type `T`, created empty on first use.
    pub fn cache<T: Default + Send + 'static>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let i = match self.caches.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.caches.push((id, Box::new(T::default())));
                self.caches.len() - 1
            }
        };
        self.caches[i]
            .1
            .downcast_mut::<T>()
            .expect("cache entries are keyed by their type")
    }

    /// Starts a policy: its variables, none computed yet.
    pub fn enter_policy(&mut self, vars: &'r [Program]) {
        self.vars = vars;
        self.cells.clear();
        for _ in vars {
            self.cells.push((Cell::Empty, 0));
        }
    }

    /// The value of variable `slot` of the current policy, computed on
    /// first use and kept for the rest of the policy's evaluation (an
    /// error too).
    pub fn variable(&mut self, slot: usize) -> Result<Value<'r>, Error> {
        match self.cells.get(slot) {
            Some((Cell::Done(r), _)) => return r.clone(),
            Some((Cell::Busy, _)) => {
                // Cycles are refused when policies load; this keeps the
                // invariant from turning into a stack overflow.
                return Err(Error::internal("a variable refers to itself"));
            }
            Some((Cell::Empty, _)) => {}
            None => return Err(Error::internal("no such variable slot")),
        }
        self.cells[slot].0 = Cell::Busy;
        self.cells[slot].1 += 1;
        let vars = self.vars;
        let r = vars[slot].eval(self);
        self.cells[slot].0 = Cell::Done(r.clone());
        r
    }

    /// The variables computed so far, for traces: slot, evaluations, result.
    pub fn computed_variables(&self) -> Vec<(usize, u32, Result<Value<'r>, Error>)> {
        self.cells
            .iter()
            .enumerate()
            .filter_map(|(i, (c, runs))| match c {
                Cell::Done(r) => Some((i, *runs, r.clone())),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_spent_exactly_and_not_a_unit_more() {
        let mut m = Meter::new(10);
        assert!(m.charge(4).is_ok());
        assert!(m.charge(6).is_ok(), "up to the budget is within it");
        let e = m.charge(1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        assert!(!m.yielded());
        // Saturates rather than wraps.
        let mut m = Meter::new(u64::MAX);
        assert!(m.charge(u64::MAX).is_ok());
        assert!(m.charge(u64::MAX).is_ok());
    }

    #[test]
    fn a_slice_gives_up_where_its_units_end() {
        let mut m = Meter::slice(5, 100);
        assert!(m.charge(5).is_ok());
        assert!(m.charge(1).is_err());
        assert!(m.yielded(), "past its slice the evaluation yields");
        // A slice as large as the budget is the plain meter.
        let mut m = Meter::slice(100, 10);
        assert!(m.charge(11).is_err());
        assert!(!m.yielded());
    }

    #[test]
    fn a_passed_deadline_stops_within_a_clock_period_of_units() {
        let past = Instant::now() - std::time::Duration::from_millis(1);
        let mut m = Meter::new(u64::MAX).with_deadline(Some(past));
        let mut charged = 0;
        let e = loop {
            match m.charge(1) {
                Ok(()) => charged += 1,
                Err(e) => break e,
            }
            assert!(charged <= CLOCK_EVERY, "the clock was not read");
        };
        assert_eq!(e.kind, ErrorKind::CostExceeded);
        assert!(e.message.contains("deadline"), "{}", e.message);
        // A deadline in the future stops nothing, and the budget still
        // counts beside it.
        let later = Instant::now() + std::time::Duration::from_secs(3600);
        let mut m = Meter::new(3 * CLOCK_EVERY).with_deadline(Some(later));
        for _ in 0..3 * CLOCK_EVERY {
            assert!(m.charge(1).is_ok());
        }
        let e = m.charge(1).unwrap_err();
        assert!(e.message.contains("budget"), "{}", e.message);
    }
}
