//! Where policies come from while celgate runs, and how a change reaches the
//! request path: a complete [`PolicySet`] is rebuilt off the request path
//! and published with one `ArcSwap::store`, so requests in flight finish on
//! the set they started with and no request ever sees half a change. A change
//! that does not load leaves the last good set serving.

pub mod files;
pub mod kube;

use crate::policy::load::{policy_files_with_metadata, Walked};
use crate::policy::{LoadErrors, PolicySet, Reload};
use crate::server::State;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// A reload that did not load: what was wrong and when.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadFailure {
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// Every problem, each naming file, line, policy, field and the error's
    /// kind ([`crate::policy::LoadError::redacted`]): shown on `/readyz`,
    /// so never an expression's text or a value from a document.
    pub errors: Vec<String>,
}

impl ReloadFailure {
    /// Problems logged one line each, at most this many per reload.
    pub const LOGGED: usize = 20;

    pub fn new(errors: &LoadErrors) -> ReloadFailure {
        ReloadFailure {
            at: SystemTime::now(),
            errors: errors.redacted_list(),
        }
    }

    /// One ERROR line for the refusal, then one per problem (the first
    /// [`ReloadFailure::LOGGED`]); `set` names the set (live or shadow).
    fn log(&self, set: &'static str) {
        tracing::error!(
            set,
            problems = self.errors.len(),
            "policy reload refused, the last good set keeps serving (`celgate validate` on the files shows the detail)"
        );
        for e in self.errors.iter().take(Self::LOGGED) {
            tracing::error!(set, problem = %e, "policy reload problem");
        }
        if self.errors.len() > Self::LOGGED {
            tracing::error!(
                set,
                more = self.errors.len() - Self::LOGGED,
                "further policy reload problems not logged"
            );
        }
    }
}

/// Reload outcomes, for `/readyz` and metrics.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// Reloads that published a new set.
    pub applied_total: AtomicU64,
    /// Reloads that found nothing changed.
    pub unchanged_total: AtomicU64,
    /// Reloads refused because the new documents do not load.
    pub errors_total: AtomicU64,
    last_error: Mutex<Option<ReloadFailure>>,
    /// The Kubernetes objects by state (with `--kube`, once listed).
    kube: Mutex<Option<kube::KubeReport>>,
}

impl ReloadStatus {
    /// The failure of the latest reload, cleared by the next good one.
    pub fn last_error(&self) -> Option<ReloadFailure> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How the Kubernetes objects stand: `None` without `--kube`.
    pub fn kube(&self) -> Option<kube::KubeReport> {
        self.kube.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_kube(&self, r: Option<kube::KubeReport>) {
        *self.kube.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    fn set_error(&self, e: Option<ReloadFailure>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

/// What one reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Unchanged,
    Failed,
    /// The sources changed while they were read: nothing published or
    /// reported; the caller reads them again.
    Superseded,
}

/// Everything the served set is built from: the `--policies` paths and the
/// objects the Kubernetes source has seen.
#[derive(Debug, Default)]
pub struct Sources {
    pub paths: Vec<PathBuf>,
    /// Whether a set without any Envoy-mode policy may be served
    /// (`--allow-empty`); otherwise a change to one is refused.
    pub allow_empty: bool,
    /// The objects from the Kubernetes watch, each compiled on its own.
    kube: Mutex<kube::Store>,
    /// One rebuild at a time, so an older build never lands after a newer.
    rebuilding: Mutex<()>,
    /// Whether these sources feed the shadow set (`--shadow-policies`)
    /// rather than the served one.
    pub shadow: bool,
    /// Whether HTTP-mode policies decide anything here (the authorization
    /// listener is on): otherwise a set of only those is an empty one.
    pub http_served: bool,
}

impl Sources {
    pub fn files(paths: Vec<PathBuf>) -> Arc<Sources> {
        Self::new(paths, false)
    }

    pub fn new(paths: Vec<PathBuf>, allow_empty: bool) -> Arc<Sources> {
        Arc::new(Sources {
            paths,
            allow_empty,
            ..Default::default()
        })
    }

    /// Files, and Kubernetes objects with PolicyExceptions counted only in
    /// `exception_namespaces`.
    pub fn with_kube(
        paths: Vec<PathBuf>,
        exception_namespaces: kube::ExceptionNamespaces,
    ) -> Arc<Sources> {
        Self::configured(paths, exception_namespaces, false)
    }

    /// As `serve` sets them up: files, Kubernetes objects (PolicyExceptions
    /// counted only in `exception_namespaces`), and whether an empty set may
    /// be served.
    pub fn configured(
        paths: Vec<PathBuf>,
        exception_namespaces: kube::ExceptionNamespaces,
        allow_empty: bool,
    ) -> Arc<Sources> {
        Self::create(paths, exception_namespaces, allow_empty, false)
    }

    /// As [`Sources::configured`], for a server whose authorization
    /// listener answers HTTP-mode policies (`http_served`) or not.
    pub fn serving(
        paths: Vec<PathBuf>,
        exception_namespaces: kube::ExceptionNamespaces,
        allow_empty: bool,
        http_served: bool,
    ) -> Arc<Sources> {
        let mut s = Arc::into_inner(Self::create(
            paths,
            exception_namespaces,
            allow_empty,
            false,
        ))
        .expect("a new Sources has one owner");
        s.http_served = http_served;
        Arc::new(s)
    }

    /// The sources of the shadow set: its files, and (with the Kubernetes
    /// source) the objects labelled for it.
    pub fn shadow_set(
        paths: Vec<PathBuf>,
        exception_namespaces: kube::ExceptionNamespaces,
        allow_empty: bool,
    ) -> Arc<Sources> {
        Self::create(paths, exception_namespaces, allow_empty, true)
    }

    /// The live set's sources (`shadow` false) or the shadow set's: one
    /// constructor, so both are set up alike.
    fn create(
        paths: Vec<PathBuf>,
        exception_namespaces: kube::ExceptionNamespaces,
        allow_empty: bool,
        shadow: bool,
    ) -> Arc<Sources> {
        Arc::new(Sources {
            paths,
            allow_empty,
            kube: Mutex::new(kube::Store::new(exception_namespaces)),
            shadow,
            ..Default::default()
        })
    }

    /// `live` or `shadow`, for logs.
    pub fn label(&self) -> &'static str {
        if self.shadow {
            "shadow"
        } else {
            "live"
        }
    }

    /// The set these sources feed and where its reloads are reported;
    /// `None` for shadow sources when `state` has no shadow set.
    fn target<'a>(
        &self,
        state: &'a State,
    ) -> Option<(&'a arc_swap::ArcSwap<PolicySet>, &'a ReloadStatus)> {
        if self.shadow {
            let s = state.options.shadow.as_ref()?;
            Some((&s.policies, &s.reload))
        } else {
            Some((&state.policies, &state.reload))
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, kube::Store> {
        self.kube.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces every Kubernetes object of `kind` (after a list).
    pub fn kube_replace(&self, kind: &str, objects: Vec<(String, serde_json::Value)>) {
        self.store().replace(kind, objects);
    }

    pub fn kube_apply(&self, kind: &str, name: String, object: serde_json::Value) {
        self.store().apply(kind, name, object);
    }

    pub fn kube_delete(&self, kind: &str, name: &str) {
        self.store().delete(kind, name);
    }

    /// Builds the set from the files, all together (any error refuses the
    /// change), and from each Kubernetes object on its own: broken, clashing
    /// and ignored objects are left out and reported instead, and so are
    /// PolicyExceptions whose conditions do not compile in the scope of a
    /// policy they name.
    ///
    /// `walked`: the files as a walk that started at the given time listed
    /// them (else they are listed now).
    fn build(
        &self,
        status: &ReloadStatus,
        previous: &PolicySet,
        walked: Option<(Walked, SystemTime)>,
    ) -> Reload {
        let (walked, read_at) = walked.unwrap_or_else(|| {
            let read_at = SystemTime::now();
            (policy_files_with_metadata(&self.paths), read_at)
        });
        let docs = kube::prepare(&self.kube, self.shadow);
        let mut built = PolicySet::reload_walked(walked.clone(), read_at, docs, Some(previous));
        let (clashes, conflicts) = match &built.result {
            Err(e) => (kube::clashes(&e.0), kube::conflicts(&e.0)),
            Ok(_) => Default::default(),
        };
        let docs = kube::refuse_clashing(&self.kube, &clashes, &conflicts);
        if !clashes.is_empty() || !conflicts.is_empty() {
            built = PolicySet::reload_walked(walked, read_at, docs, Some(previous));
        }
        let report = self.store().report();
        if let (Some(r), false) = (&report, self.shadow) {
            crate::telemetry::metrics::global().set_kube_objects(r.ok, r.broken, r.ignored);
        }
        status.set_kube(report);
        built
    }
}

/// Rebuilds the set from every source and publishes it when it loads and
/// differs from the one serving.
pub fn rebuild(state: &State, sources: &Sources) -> ReloadOutcome {
    rebuild_if(state, sources, None, |_| true)
}

/// As [`rebuild`], but once the new set is built (or has failed), publishes
/// or reports nothing unless `unchanged(read)` says the sources held still
/// while they were read (`read`: the files the build read, with the
/// metadata their walk saw). `walked`: the policy files as listed by a walk
/// that started at the given time (else they are listed now).
pub fn rebuild_if(
    state: &State,
    sources: &Sources,
    walked: Option<(Walked, SystemTime)>,
    unchanged: impl FnOnce(&[(PathBuf, std::fs::Metadata)]) -> bool,
) -> ReloadOutcome {
    let _one = sources.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
    let Some((target, status)) = sources.target(state) else {
        return ReloadOutcome::Unchanged;
    };
    let set_name = sources.label();
    let started = Instant::now();
    let previous = target.load_full();
    // A panic while building (a bug) must not end reloading, nor leave the
    // failure unseen: it is a refused reload like any other.
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        debug_hooks::before_rebuild(sources);
        sources.build(status, &previous, walked)
    }));
    let read = built.as_ref().map_or(&[][..], |b| &b.read);
    if !unchanged(read) {
        return ReloadOutcome::Superseded;
    }
    let (result, warnings) = match built {
        Ok(r) => (r.result, r.warnings),
        Err(panic) => {
            tracing::error!(
                set = set_name,
                panic = panic_text(panic.as_ref()),
                "policy reload refused: building the new set panicked (a bug in celgate); the last good set keeps serving"
            );
            return refuse(
                status,
                "internal error: building the policy set panicked (a bug in celgate; the log has the details); the last good set keeps serving".to_owned(),
            );
        }
    };
    if let Ok(set) = &result {
        if set.decides_nothing(sources.http_served) && !sources.allow_empty {
            tracing::error!(
                set = set_name,
                exceptions = set.exceptions.len(),
                "policy reload refused, the last good set keeps serving: {EMPTY_SET}"
            );
            for w in &warnings {
                tracing::warn!("{w}");
            }
            return refuse(status, EMPTY_SET.to_owned());
        }
    }
    match result {
        Ok(mut set) => {
            status.set_error(None);
            if set.same_documents(&previous) {
                status.unchanged_total.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("sources changed, policy documents unchanged");
                return ReloadOutcome::Unchanged;
            }
            let new_warnings: Vec<String> = warnings
                .iter()
                .map(ToString::to_string)
                .filter(|w| !previous.warnings.iter().any(|p| p.to_string() == *w))
                .collect();
            for w in &new_warnings {
                tracing::warn!("{w}");
            }
            let (policies, exceptions, reused, files_read) = (
                set.policies.len(),
                set.exceptions.len(),
                set.reused,
                set.files_read,
            );
            if sources.shadow {
                set.detach_metrics();
            }
            target.store(Arc::new(set));
            status.applied_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                set = set_name,
                policies,
                exceptions,
                reused,
                files_read,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "policy set reloaded"
            );
            ReloadOutcome::Applied
        }
        Err(errors) => {
            let failure = ReloadFailure::new(&errors);
            failure.log(set_name);
            // The error first: whoever sees the count sees the error.
            status.set_error(Some(failure));
            status.errors_total.fetch_add(1, Ordering::Release);
            ReloadOutcome::Failed
        }
    }
}

/// Why a set without policies is refused, at start-up and on reload.
pub const EMPTY_SET: &str = "the sources hold no Envoy-mode ValidatingPolicy (nor an HTTP-mode one answered on --authz-http-addr), so every request would be allowed; refused (start with --allow-empty, CELGATE_ALLOW_EMPTY=true, to serve an empty set on purpose)";

/// Records a refused reload that is not a load error of the documents.
fn refuse(status: &ReloadStatus, error: String) -> ReloadOutcome {
    status.set_error(Some(ReloadFailure {
        at: SystemTime::now(),
        errors: vec![error],
    }));
    status.errors_total.fetch_add(1, Ordering::Release);
    ReloadOutcome::Failed
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Fault injection for the tests, compiled into debug builds only: a file
/// named [`debug_hooks::PANIC_MARKER`] beside the policies makes a rebuild
/// panic. Release builds have no such path.
mod debug_hooks {
    #[cfg(debug_assertions)]
    pub const PANIC_MARKER: &str = ".celgate-debug-panic-on-rebuild";

    #[cfg(debug_assertions)]
    pub fn before_rebuild(sources: &super::Sources) {
        for p in &sources.paths {
            let dir = if p.is_dir() {
                p.as_path()
            } else {
                p.parent().unwrap_or(p)
            };
            if dir.join(PANIC_MARKER).exists() {
                panic!("injected by {PANIC_MARKER} (debug builds only)");
            }
        }
    }

    #[cfg(not(debug_assertions))]
    pub fn before_rebuild(_: &super::Sources) {}
}

pub(crate) mod rfc3339 {
    use std::time::SystemTime;

    pub fn format(t: SystemTime) -> String {
        let t: chrono::DateTime<chrono::Utc> = t.into();
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }
}
