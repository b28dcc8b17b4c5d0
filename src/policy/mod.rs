//! Policies: loading documents, compiling every CEL expression once, and the
//! immutable [`PolicySet`] the engine evaluates.

pub mod index;
pub mod kinds;
pub mod load;
pub mod model;

use crate::cel::{check_literal_patterns, env, limits};
use cel::common::ast::Expr;
use cel::Program;
use model::{ExceptionSpec, Header, NamedExpression, PolicySpec, IGNORED_SPEC_FIELDS};
use sha2::Digest as _;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The pseudo-path of objects read from the Kubernetes API:
/// `kubernetes:/ValidatingPolicy/<name>`.
pub const KUBE_PREFIX: &str = "kubernetes:";

/// What `check`, `validate` and `test` say of policies under `paths` that
/// load without any Envoy-mode ValidatingPolicy: nothing would decide, so
/// every request would be allowed. (`serve` refuses such a set with
/// [`crate::sources::EMPTY_SET`].)
pub fn no_envoy_policy(paths: &[PathBuf]) -> String {
    let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    format!(
        "no Envoy-mode ValidatingPolicy in {}, so every request would be allowed",
        if list.is_empty() {
            "no policy paths".to_owned()
        } else {
            list.join(", ")
        }
    )
}

/// Where a document came from: file, position, and the policy's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub document: usize,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.path.display(),
            self.line,
            self.document
        )
    }
}

/// A problem that keeps a policy set from loading.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}: document {document}: not valid YAML/JSON: {message}", path.display())]
    Parse {
        path: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{location}: {kind} {policy:?}: {field}: {message}")]
    Invalid {
        location: Box<Location>,
        kind: &'static str,
        policy: String,
        field: String,
        message: String,
    },
    #[error("{location}: {kind} {policy:?}: {field}: CEL error in `{expression}`{}: {message}", checked.as_ref().map(|c| expression_position(expression, c.offset)).unwrap_or_default())]
    Cel {
        location: Box<Location>,
        kind: &'static str,
        policy: String,
        field: String,
        expression: Box<str>,
        message: String,
        /// Where the type checker found the mistake, and its kind.
        checked: Option<Box<Checked>>,
    },
    #[error("{kind} {name:?} is defined twice: at {first} and at {second}")]
    Duplicate {
        kind: &'static str,
        name: String,
        first: Box<Location>,
        second: Box<Location>,
    },
}

impl LoadError {
    /// The problem's kind, a fixed name: `io_error`, `invalid_yaml`,
    /// `missing_field`, `invalid_value`, `invalid_spec`, `duplicate_name`,
    /// `variable_cycle`, `invalid`, `cel_syntax`, `cel_compile`,
    /// `invalid_regex`, `undefined_variable`, `type_error`, `result_type`,
    /// `cost_exceeded`, `variables_not_allowed`, `variables_misused`,
    /// `limit_exceeded`, `cel_error`, `duplicate_policy`.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Io { .. } => "io_error",
            LoadError::Parse { .. } => "invalid_yaml",
            LoadError::Invalid { field, message, .. } => invalid_kind(field, message),
            LoadError::Cel {
                message, checked, ..
            } => checked
                .as_ref()
                .map_or_else(|| cel_kind(message), |c| c.code),
            LoadError::Duplicate { .. } => "duplicate_policy",
        }
    }

    /// The problem as the server shows it (logs, `/readyz`): where it is
    /// (file, line, document, policy, field) and its [`LoadError::kind`],
    /// never the expression's text, a YAML snippet or a value from the
    /// document — an expression may hold an inlined secret. `celgate
    /// validate` on the files shows the full detail (the `Display` text).
    pub fn redacted(&self) -> String {
        self.redacted_in(&mut crate::validate::Lines::default())
    }

    /// As [`LoadError::redacted`], with the line of the field found in the
    /// file (read once per file through `lines`).
    fn redacted_in(&self, lines: &mut crate::validate::Lines) -> String {
        match self {
            // The OS's message (no file content).
            LoadError::Io { path, message } => {
                format!("{}: io_error ({message})", path.display())
            }
            LoadError::Parse {
                path,
                document,
                message,
            } => {
                let at = line_column(message)
                    .map(|(l, c)| format!(" at line {l} column {c}"))
                    .unwrap_or_default();
                format!(
                    "{}: document {document}: not valid YAML/JSON{at} (invalid_yaml)",
                    path.display()
                )
            }
            LoadError::Invalid {
                location,
                kind,
                policy,
                field,
                ..
            } => {
                let line = lines.find(location, Some(field), None);
                format!(
                    "{}:{line} (document {}): {kind} {policy:?}: {field}: {}",
                    location.path.display(),
                    location.document,
                    self.kind()
                )
            }
            LoadError::Cel {
                location,
                kind,
                policy,
                field,
                expression,
                checked,
                ..
            } => {
                // The expression only helps find the place; it is not shown.
                let at = checked.as_ref().map(|c| c.offset);
                let (line, column) = lines.position(location, field, expression, at);
                let column = column.map(|c| format!(":{c}")).unwrap_or_default();
                format!(
                    "{}:{line}{column} (document {}): {kind} {policy:?}: {field}: {}",
                    location.path.display(),
                    location.document,
                    self.kind()
                )
            }
            // Names and places only.
            LoadError::Duplicate { .. } => self.to_string(),
        }
    }
}

/// Where in an expression the type checker found a mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Byte offset in the expression of the sub-expression at fault.
    pub offset: usize,
    /// The problem's kind: `type_error`, `result_type`, `cost_exceeded`,
    /// `undefined_variable`.
    pub code: &'static str,
}

/// The kind of an `Invalid` problem, from its (fixed) wording.
fn invalid_kind(field: &str, message: &str) -> &'static str {
    if message.ends_with("is required")
        || message.starts_with("must name at least one")
        || message.starts_with("must have at least one")
    {
        "missing_field"
    } else if message.contains("is used twice") {
        "duplicate_name"
    } else if message.contains("in a cycle") {
        "variable_cycle"
    } else if message.contains("the limit of") {
        "limit_exceeded"
    } else if message.starts_with("must be ") {
        "invalid_value"
    } else if field == "spec" {
        // serde's message about the spec's shape (it quotes values).
        "invalid_spec"
    } else {
        "invalid"
    }
}

/// ` at line:column` of byte `at` in an expression's text (1-based).
fn expression_position(expression: &str, at: usize) -> String {
    let before = &expression[..at.min(expression.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!(" at {line}:{column}")
}

/// The kind of a `Cel` problem, from its wording.
fn cel_kind(message: &str) -> &'static str {
    if message.contains("Syntax error") {
        "cel_syntax"
    } else if message.starts_with("ERROR:") {
        "cel_compile"
    } else if message.starts_with("invalid regex") {
        "invalid_regex"
    } else if message.contains("cannot use variables") {
        "variables_not_allowed"
    } else if message.starts_with("`variables` can only") {
        "variables_misused"
    } else {
        "cel_error"
    }
}

/// `(line, column)` of a parser message ending in "at line N column M".
fn line_column(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.rfind("at line ")? + "at line ".len()..];
    let (line, rest) = rest.split_once(" column ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

/// Every problem found while loading, not only the first.
#[derive(Debug, Clone)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in the policies:", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

impl LoadErrors {
    /// As the `Display` text, each problem [`LoadError::redacted`]: for the
    /// server's logs and endpoints.
    pub fn redacted(&self) -> String {
        let mut out = format!(
            "{} problem(s) in the policies (`celgate validate` on the files shows the detail):",
            self.0.len()
        );
        for e in self.redacted_list() {
            out.push_str("\n  - ");
            out.push_str(&e);
        }
        out
    }

    /// Each problem [`LoadError::redacted`].
    pub fn redacted_list(&self) -> Vec<String> {
        let mut lines = crate::validate::Lines::default();
        self.0.iter().map(|e| e.redacted_in(&mut lines)).collect()
    }
}

/// Something loaded but worth telling the author: skipped documents, fields
/// celgate ignores.
#[derive(Debug, Clone)]
pub struct Warning {
    pub location: Location,
    /// The policy or exception it concerns, when there is one.
    pub policy: Option<String>,
    /// The field it concerns, e.g. `spec.validations[1].expression`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        if let Some(p) = &self.policy {
            write!(f, "{p}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    Fail,
    Ignore,
}

/// `spec.validationActions`: what a policy's denial does, with the meanings
/// Kubernetes gives them. `Deny` enforces it; `Audit` records it (metrics,
/// decision log, trace); `Warn` tells the client in a `warning` response
/// header. A policy without `Deny` never decides a request: its answers,
/// allow or deny, are recorded and evaluation goes on as if it had said
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidationActions {
    pub deny: bool,
    pub audit: bool,
    pub warn: bool,
}

impl ValidationActions {
    /// What a policy without `validationActions` does: enforce.
    pub const DENY: ValidationActions = ValidationActions {
        deny: true,
        audit: false,
        warn: false,
    };

    /// Whether the policy's answers decide requests.
    pub fn enforced(self) -> bool {
        self.deny
    }

    /// Reads the field as Kubernetes does for a ValidatingAdmissionPolicy
    /// binding: a non-empty list of `Deny`, `Audit` and `Warn`, none twice,
    /// and not `Deny` with `Warn` (the denial already tells the client).
    pub fn parse(value: &serde_json::Value) -> Result<ValidationActions, String> {
        const NAMES: [&str; 3] = ["Deny", "Audit", "Warn"];
        let Some(list) = value.as_array() else {
            return Err(format!(
                "must be a list of Deny, Audit and Warn (e.g. [Audit]), not {value}"
            ));
        };
        if list.is_empty() {
            return Err(
                "must name at least one action (Deny, Audit or Warn); leave the field out to enforce the policy"
                    .to_owned(),
            );
        }
        let mut a = ValidationActions {
            deny: false,
            audit: false,
            warn: false,
        };
        for (i, item) in list.iter().enumerate() {
            let name = item.as_str().unwrap_or_default();
            let slot = match name {
                "Deny" => &mut a.deny,
                "Audit" => &mut a.audit,
                "Warn" => &mut a.warn,
                _ => {
                    let hint = NAMES
                        .iter()
                        .find(|n| n.eq_ignore_ascii_case(name.trim()))
                        .map(|n| format!("; did you mean {n:?}?"))
                        .unwrap_or_default();
                    return Err(format!(
                        "must be Deny, Audit or Warn, not {item} (item {i}){hint}"
                    ));
                }
            };
            if *slot {
                return Err(format!("{name:?} is used twice"));
            }
            *slot = true;
        }
        if a.deny && a.warn {
            return Err(
                "cannot hold both Deny and Warn, as in Kubernetes: the denial already tells the \
                 client. Use [Deny] or [Deny, Audit] to enforce, [Warn] or [Audit, Warn] to \
                 report without enforcing"
                    .to_owned(),
            );
        }
        Ok(a)
    }

    /// The actions, in the order Deny, Audit, Warn.
    pub fn names(self) -> Vec<&'static str> {
        [
            (self.deny, "Deny"),
            (self.audit, "Audit"),
            (self.warn, "Warn"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect()
    }

    /// The actions as written in a policy, e.g. `[Audit, Warn]`.
    pub fn describe(self) -> String {
        format!("[{}]", self.names().join(", "))
    }
}

/// The evaluation mode of a ValidatingPolicy (`spec.evaluation.mode`) or a
/// PolicyException (`spec.evaluationMode`): which server decides with it
/// and what its `object` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvaluationMode {
    /// Envoy's ext_authz: `object` is the Envoy `CheckRequest`.
    #[default]
    Envoy,
    /// The HTTP authorization server: `object` is an `http.CheckRequest`.
    Http,
}

impl EvaluationMode {
    /// As the documents write it.
    pub fn as_str(self) -> &'static str {
        match self {
            EvaluationMode::Envoy => kinds::ENVOY,
            EvaluationMode::Http => kinds::HTTP,
        }
    }

    /// The environment the checker checks its expressions in.
    pub fn check_mode(self) -> crate::cel::check::Mode {
        match self {
            EvaluationMode::Envoy => crate::cel::check::Mode::Envoy,
            EvaluationMode::Http => crate::cel::check::Mode::Http,
        }
    }
}

/// A compiled CEL expression with the field it came from, for messages.
#[derive(Debug)]
pub struct Expression {
    /// e.g. `spec.validations[2].expression`
    pub field: String,
    pub source: String,
    /// Shared by the expressions of a load with the same text.
    pub program: Arc<Program>,
}

#[derive(Debug)]
pub struct NamedProgram {
    pub name: String,
    pub expr: Expression,
}

/// A policy's expressions as the evaluator runs them, in the order of the
/// policy's lists.
#[derive(Debug)]
pub struct Plans {
    pub match_conditions: Vec<crate::cel::eval::Program>,
    /// Indexed by variable slot: the policy's `variables` in order.
    pub variables: Vec<crate::cel::eval::Program>,
    pub validations: Vec<crate::cel::eval::Program>,
}

#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub location: Location,
    /// What its document compiles to, shared by every set that holds the
    /// same document: a reload reuses it for a document that did not
    /// change. Its fields read as the policy's (`policy.validations`).
    pub compiled: Arc<Compiled>,
    /// Exceptions that name this policy, in name order, each compiled in
    /// this policy's scope.
    pub exceptions: Vec<Exemption>,
    /// Hash of the policy's document: a reload keeps `loaded_at` of a policy
    /// whose document did not change.
    pub digest: u64,
    /// When this version of the policy was first loaded.
    pub loaded_at: SystemTime,
    /// Its metric series (shared by every version of the policy).
    pub metrics: Arc<crate::telemetry::metrics::PolicyMetrics>,
}

/// What a ValidatingPolicy document compiles to, whatever its place: the
/// same text compiles to the same, so a reload takes it from the set it
/// replaces rather than parse, check and plan it again.
#[derive(Debug)]
pub struct Compiled {
    /// Envoy-mode policies are in [`PolicySet::policies`], HTTP-mode ones in
    /// [`PolicySet::http_policies`].
    pub mode: EvaluationMode,
    pub failure_policy: FailurePolicy,
    /// `spec.validationActions` ([`ValidationActions::DENY`] when absent).
    pub actions: ValidationActions,
    pub match_conditions: Vec<NamedProgram>,
    pub variables: Vec<NamedProgram>,
    pub validations: Vec<Expression>,
    /// The expressions planned for the evaluator, in the same order.
    pub plans: Plans,
    /// How the selection index picks it, from its matchConditions.
    pub selection: Arc<index::Selection>,
    /// What the type checker knows of each variable, for the conditions of
    /// the exceptions that name this policy.
    pub variable_types: HashMap<String, crate::cel::check::Info>,
    /// The warnings its document gave (field, message), said again, at the
    /// document's place then, when it is reused.
    warnings: Vec<(Option<String>, String)>,
    /// SHA-256 of the document's canonical JSON: what a reuse matches.
    content: [u8; 32],
}

impl std::ops::Deref for Policy {
    type Target = Compiled;
    fn deref(&self) -> &Compiled {
        &self.compiled
    }
}

/// A PolicyException as read: its conditions are parsed and checked on
/// their own (`variables.x` as `dyn`); each policy it names compiles them
/// again in its own scope ([`Exemption`]).
#[derive(Debug)]
pub struct Exception {
    pub name: String,
    pub location: Location,
    /// `spec.evaluationMode` (Envoy when absent): the exception applies to
    /// the policies of this mode only, as in Kyverno.
    pub mode: EvaluationMode,
    /// The policies it names, each once, in the order written.
    pub policy_refs: Vec<String>,
    pub match_conditions: Vec<NamedProgram>,
    pub digest: u64,
    pub loaded_at: SystemTime,
}

/// An exception compiled in the scope of one policy it names: its
/// conditions may read that policy's `variables`, type-checked against
/// them, and are planned with the policy's variable slots, so that a
/// variable is computed once per request for the exception and the policy
/// together.
#[derive(Debug)]
pub struct Exemption {
    pub exception: Arc<Exception>,
    /// The conditions planned for the evaluator, in the exception's order.
    pub plans: Vec<crate::cel::eval::Program>,
}

/// An immutable, fully compiled set of policies, ordered by name.
#[derive(Debug)]
pub struct PolicySet {
    /// The Envoy-mode policies, which decide ext_authz requests.
    pub policies: Vec<Policy>,
    /// The HTTP-mode policies (`spec.evaluation.mode: HTTP`), which decide
    /// the requests of the HTTP authorization server, ordered by name.
    /// Names are unique across both lists.
    pub http_policies: Vec<Policy>,
    pub exceptions: Vec<Arc<Exception>>,
    pub warnings: Vec<Warning>,
    pub loaded_at: SystemTime,
    /// Which policies a request can concern, from their matchConditions
    /// ([`index::PolicyIndex`]), in the order of `policies`.
    pub index: index::PolicyIndex,
    /// How many policies were not compiled again: their documents were the
    /// same as in the set this one replaced, whose compiled form they share.
    pub reused: usize,
    /// What this set knows of each policy file it was read from, so that the
    /// next reload takes an unchanged file's policies over without reading it.
    files: ahash::AHashMap<PathBuf, FileState>,
    /// How many policy files the load that built this set read (those it
    /// took over unchanged are not read).
    pub files_read: usize,
}

/// What [`PolicySet::reload_walked`] built, and from which files.
#[derive(Debug)]
pub struct Reload {
    pub result: Result<PolicySet, LoadErrors>,
    pub warnings: Vec<Warning>,
    /// The files it read (or failed to), with the metadata the walk saw;
    /// the others' policies were taken over unread.
    pub read: Vec<(PathBuf, std::fs::Metadata)>,
}

/// A policy file as a load read it.
#[derive(Debug, Clone)]
struct FileState {
    stamp: load::Stamp,
    /// When the load that read it started (before it looked at the file).
    read_at: SystemTime,
    /// The ValidatingPolicies its documents compiled to, by their place in
    /// the set that read it, when every document of the file is one;
    /// `None`: the file is read again.
    policies: Option<Vec<PolicyAt>>,
}

/// Where a policy is in its set: in `http_policies` or `policies`, at
/// `index`.
#[derive(Debug, Clone, Copy)]
struct PolicyAt {
    http: bool,
    index: u32,
}

impl PolicySet {
    fn at(&self, at: PolicyAt) -> Option<&Policy> {
        let list = if at.http {
            &self.http_policies
        } else {
            &self.policies
        };
        list.get(at.index as usize)
    }
}

impl FileState {
    /// Whether a file now stamped `now` is this one, unchanged: the same
    /// stamp, written well before it was read, all of it policies.
    fn unchanged(&self, now: &load::Stamp) -> bool {
        self.policies.is_some() && self.stamp == *now && self.stamp.settled_by(self.read_at)
    }
}

impl PolicySet {
    pub fn empty() -> Self {
        PolicySet {
            policies: Vec::new(),
            http_policies: Vec::new(),
            exceptions: Vec::new(),
            warnings: Vec::new(),
            loaded_at: SystemTime::now(),
            index: index::PolicyIndex::default(),
            reused: 0,
            files: Default::default(),
            files_read: 0,
        }
    }

    /// Reads and compiles every policy under `paths`.
    pub fn load(paths: &[PathBuf]) -> Result<PolicySet, LoadErrors> {
        Self::load_report(paths).0
    }

    /// As [`PolicySet::load`], also returning the warnings when the set does
    /// not load (a skipped document often explains a missing policy).
    pub fn load_report(paths: &[PathBuf]) -> (Result<PolicySet, LoadErrors>, Vec<Warning>) {
        Self::reload(paths, Vec::new(), None)
    }

    /// As [`PolicySet::load_report`], with documents from another source
    /// (Kubernetes) added to those of the files; policies and exceptions
    /// whose documents are unchanged since `previous` keep their `loaded_at`.
    pub fn reload(
        paths: &[PathBuf],
        extra: Vec<load::Document>,
        previous: Option<&PolicySet>,
    ) -> (Result<PolicySet, LoadErrors>, Vec<Warning>) {
        // Before any file is looked at: what a file's time stamp is judged
        // against next time.
        let read_at = SystemTime::now();
        let walked = load::policy_files_with_metadata(paths);
        let r = Self::reload_walked(walked, read_at, extra, previous);
        (r.result, r.warnings)
    }

    /// As [`PolicySet::reload`], with the files already listed
    /// ([`load::policy_files_with_metadata`]) by a walk that started at
    /// `read_at`.
    pub fn reload_walked(
        walked: load::Walked,
        read_at: SystemTime,
        extra: Vec<load::Document>,
        previous: Option<&PolicySet>,
    ) -> Reload {
        let files = match walked {
            Ok(f) => f,
            Err(e) => {
                return Reload {
                    result: Err(LoadErrors(vec![e])),
                    warnings: Vec::new(),
                    read: Vec::new(),
                }
            }
        };
        enum Read<'p> {
            Docs(Vec<load::Document>, Option<FileState>),
            /// Unchanged since `previous`: its policies are taken over.
            Unchanged(FileState, Vec<&'p Policy>),
            Failed(LoadError),
        }
        let read = par_map(&files, 32, |(f, meta)| {
            // Size and modification time alone do not tell a file changed
            // (only Unix gives its change time and identity): read it again.
            let stamp = cfg!(unix).then(|| load::Stamp::of(meta));
            if let (Some(prev), Some(now), Some(set)) =
                (previous.and_then(|p| p.files.get(f)), &stamp, previous)
            {
                if prev.unchanged(now) {
                    let taken: Option<Vec<&Policy>> = prev
                        .policies
                        .iter()
                        .flatten()
                        .map(|&at| set.at(at).filter(|p| &p.location.path == f))
                        .collect();
                    if let Some(taken) = taken {
                        return Read::Unchanged(prev.clone(), taken);
                    }
                }
            }
            match load::read_documents(f) {
                Ok(d) => {
                    let state = stamp.map(|stamp| FileState {
                        stamp,
                        read_at,
                        policies: None,
                    });
                    Read::Docs(d, state)
                }
                Err(e) => Read::Failed(e),
            }
        });
        let mut docs = Vec::new();
        let mut errors = Vec::new();
        let mut taken = Vec::new();
        // Each file's state for the next reload, and how many documents it
        // held (its policies are known once the set is compiled).
        let mut states: Vec<(PathBuf, FileState, usize)> = Vec::new();
        let mut files_read = Vec::new();
        for ((f, meta), r) in files.into_iter().zip(read) {
            if !matches!(r, Read::Unchanged(..)) {
                files_read.push((f.clone(), meta));
            }
            match r {
                Read::Docs(d, state) => {
                    if let Some(state) = state {
                        states.push((f, state, d.len()));
                    }
                    docs.extend(d);
                }
                Read::Unchanged(state, policies) => {
                    let n = policies.len();
                    taken.extend(policies);
                    states.push((f, state, n));
                }
                Read::Failed(e) => errors.push(e),
            }
        }
        docs.extend(extra);
        let (result, warnings) = Self::compile_report(docs, taken, previous);
        let result = match result {
            Ok(mut set) if errors.is_empty() => {
                set.note_files(states);
                set.files_read = files_read.len();
                Ok(set)
            }
            Ok(_) => Err(LoadErrors(errors)),
            Err(LoadErrors(more)) => {
                errors.extend(more);
                Err(LoadErrors(errors))
            }
        };
        Reload {
            result,
            warnings,
            read: files_read,
        }
    }

    /// Records what the files of `states` compiled to: a file each of whose
    /// documents is a policy of this set can be taken over unread next time.
    fn note_files(&mut self, states: Vec<(PathBuf, FileState, usize)>) {
        let mut files: ahash::AHashMap<PathBuf, (FileState, usize)> = states
            .into_iter()
            .map(|(path, mut state, documents)| {
                state.policies = None;
                (path, (state, documents))
            })
            .collect();
        fn places(http: bool, list: &[Policy]) -> impl Iterator<Item = (&PathBuf, PolicyAt)> {
            list.iter().enumerate().map(move |(i, p)| {
                let index = u32::try_from(i).expect("fewer than 2^32 policies");
                (&p.location.path, PolicyAt { http, index })
            })
        }
        let all = places(false, &self.policies).chain(places(true, &self.http_policies));
        for (path, at) in all {
            if let Some((state, _)) = files.get_mut(path) {
                state.policies.get_or_insert_with(Vec::new).push(at);
            }
        }
        self.files = files
            .into_iter()
            .map(|(path, (mut state, documents))| {
                if state.policies.as_ref().map(Vec::len) != Some(documents) {
                    state.policies = None;
                }
                (path, state)
            })
            .collect();
    }

    /// Compiles documents already read (from files or another source).
    pub fn compile(docs: Vec<load::Document>) -> Result<PolicySet, LoadErrors> {
        Self::compile_report(docs, Vec::new(), None).0
    }

    /// `taken`: policies of `previous` whose files did not change, taken
    /// over as they are (exceptions are attached again).
    fn compile_report(
        docs: Vec<load::Document>,
        taken: Vec<&Policy>,
        previous: Option<&PolicySet>,
    ) -> (Result<PolicySet, LoadErrors>, Vec<Warning>) {
        // Parsing recurses over the expression: it runs on threads whose
        // stack fits an expression at the limits, whatever thread loads.
        limits::on_load_stack(|| Self::compile_on_this_thread(docs, taken, previous))
    }

    fn compile_on_this_thread(
        docs: Vec<load::Document>,
        taken: Vec<&Policy>,
        previous: Option<&PolicySet>,
    ) -> (Result<PolicySet, LoadErrors>, Vec<Warning>) {
        let mut c = Compiler {
            previous,
            ..Compiler::default()
        };
        // Compiling CEL is the costly part of a load: spread the documents
        // over the cores, then merge in document order.
        let chunks = chunked(docs);
        if chunks.len() > 1 {
            let parts = par_map(&chunks, 2, |chunk| {
                let mut part = Compiler {
                    previous,
                    ..Compiler::default()
                };
                for d in chunk.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                    part.document(d);
                }
                part
            });
            for part in parts {
                c.policies.extend(part.policies);
                c.exceptions.extend(part.exceptions);
                c.warnings.extend(part.warnings);
                c.errors.extend(part.errors);
                c.reused += part.reused;
            }
        } else {
            for chunk in chunks {
                for d in chunk.into_inner().unwrap_or_else(|e| e.into_inner()) {
                    c.document(d);
                }
            }
        }
        for p in taken {
            c.take_over(p);
        }
        c.finish()
    }

    /// Whether `other` holds exactly the same documents (names and digests).
    pub fn same_documents(&self, other: &PolicySet) -> bool {
        fn policy(p: &Policy) -> (&str, u64) {
            (&p.name, p.digest)
        }
        fn exception(e: &Arc<Exception>) -> (&str, u64) {
            (&e.name, e.digest)
        }
        let policies = |s: &PolicySet| s.policies.len() + s.http_policies.len();
        policies(self) == policies(other)
            && self
                .all_policies()
                .map(policy)
                .eq(other.all_policies().map(policy))
            && self
                .exceptions
                .iter()
                .map(exception)
                .eq(other.exceptions.iter().map(exception))
    }

    /// Gives every policy series of its own that `/metrics` does not show,
    /// and forgets the registered ones nothing else uses: for a set that is
    /// evaluated beside the served one (the shadow set), whose evaluations
    /// must not count as the served policies'.
    pub fn detach_metrics(&mut self) {
        for p in self.policies.iter_mut().chain(&mut self.http_policies) {
            p.metrics = Arc::new(Default::default());
            crate::telemetry::metrics::release_unused(&p.name);
        }
    }

    /// How the selection index picks policy `name`.
    pub fn selection(&self, name: &str) -> Option<&index::Selection> {
        let i = self
            .policies
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()?;
        self.index.selection(i)
    }

    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.policies[i])
    }

    /// The HTTP-mode policy `name`.
    pub fn get_http(&self, name: &str) -> Option<&Policy> {
        self.http_policies
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.http_policies[i])
    }

    /// The policy `name`, of either mode.
    pub fn any_policy(&self, name: &str) -> Option<&Policy> {
        self.get(name).or_else(|| self.get_http(name))
    }

    /// The PolicyException `name`.
    pub fn exception(&self, name: &str) -> Option<&Exception> {
        self.exceptions
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .map(|i| &*self.exceptions[i])
    }

    /// Every policy, Envoy mode's then HTTP mode's, each list in name order.
    pub fn all_policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.iter().chain(&self.http_policies)
    }

    /// No policy of either served mode: every request would be allowed.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.http_policies.is_empty()
    }

    /// Whether a server decides nothing with this set: no Envoy-mode
    /// policy, and no HTTP-mode one that it answers (`http_served`: the
    /// authorization listener is on). HTTP-mode policies alone on a server
    /// without that listener would leave every gRPC Check allowed.
    pub fn decides_nothing(&self, http_served: bool) -> bool {
        self.policies.is_empty() && (!http_served || self.http_policies.is_empty())
    }
}

#[derive(Default)]
struct Compiler<'p> {
    /// The set being replaced: an unchanged document keeps its `loaded_at`,
    /// and an unchanged policy its compiled form (matched by name and the
    /// hash of its content).
    previous: Option<&'p PolicySet>,
    /// How many documents were taken from `previous`.
    reused: usize,
    /// Expressions parsed so far, by text: the same text parses to the
    /// same program, which the policies holding it share.
    parsed: HashMap<String, Arc<Program>>,
    /// Expressions planned so far, by text and the slots of the variables
    /// they read: the same plan, shared.
    planned: HashMap<(String, Vec<Option<usize>>), crate::cel::eval::Program>,
    policies: Vec<Policy>,
    exceptions: Vec<Exception>,
    warnings: Vec<Warning>,
    errors: Vec<LoadError>,
}

struct Ctx<'a> {
    digest: u64,
    location: &'a Location,
    kind: &'static str,
    name: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, field: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError::Invalid {
            location: Box::new(self.location.clone()),
            kind: self.kind,
            policy: self.name.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
    fn cel(&self, field: &str, expression: &str, message: impl Into<String>) -> LoadError {
        LoadError::Cel {
            location: Box::new(self.location.clone()),
            kind: self.kind,
            policy: self.name.to_owned(),
            field: field.to_owned(),
            expression: expression.trim().into(),
            message: message.into(),
            checked: None,
        }
    }
    /// A mistake the type checker found at byte `offset` of `source`.
    fn checked(
        &self,
        field: &str,
        source: &str,
        offset: usize,
        message: String,
        code: &'static str,
    ) -> LoadError {
        let lead = source.len() - source.trim_start().len();
        let trimmed = source.trim();
        LoadError::Cel {
            location: Box::new(self.location.clone()),
            kind: self.kind,
            policy: self.name.to_owned(),
            field: field.to_owned(),
            expression: trimmed.into(),
            message,
            checked: Some(Box::new(Checked {
                offset: offset.saturating_sub(lead).min(trimmed.len()),
                code,
            })),
        }
    }
}

impl Compiler<'_> {
    fn loaded_at(&self, ctx: &Ctx<'_>) -> SystemTime {
        let before = self.previous.and_then(|p| {
            if ctx.kind == "PolicyException" {
                p.exception(ctx.name).map(|e| (e.digest, e.loaded_at))
            } else {
                p.any_policy(ctx.name).map(|x| (x.digest, x.loaded_at))
            }
        });
        match before {
            Some((d, t)) if d == ctx.digest => t,
            _ => SystemTime::now(),
        }
    }

    fn warn(&mut self, location: &Location, message: String) {
        self.warnings.push(Warning {
            location: location.clone(),
            policy: None,
            field: None,
            message,
        });
    }

    fn warn_at(&mut self, ctx: &Ctx<'_>, field: impl Into<String>, message: String) {
        self.warnings.push(Warning {
            location: ctx.location.clone(),
            policy: Some(ctx.name.to_owned()),
            field: Some(field.into()),
            message,
        });
    }

    fn document(&mut self, doc: load::Document) {
        let location = Location {
            path: doc.path,
            document: doc.index,
            line: doc.line,
        };
        let header: Header = match serde_json::from_value(doc.value.clone()) {
            Ok(h) => h,
            Err(_) => {
                self.warn(
                    &location,
                    "skipped: not a Kubernetes-style object (no apiVersion/kind)".into(),
                );
                return;
            }
        };
        if crate::suite::is_test_doc(&doc.value) {
            // Test suites may live beside the policies they test.
            return;
        }
        let kind_name = match kinds::classify(
            header.api_version.as_deref(),
            header.kind.as_deref(),
            &doc.value,
        ) {
            kinds::Verdict::Ours(k) => k,
            kinds::Verdict::NotOurs(message) => {
                self.warn(&location, message);
                return;
            }
            kinds::Verdict::Misspelt {
                kind,
                field,
                message,
            } => {
                self.errors.push(LoadError::Invalid {
                    location: Box::new(location),
                    kind,
                    policy: header.metadata.name.unwrap_or_default(),
                    field: field.to_owned(),
                    message,
                });
                return;
            }
        };
        let kind = kind_name;
        let Some(name) = header.metadata.name.filter(|n| !n.is_empty()) else {
            self.errors.push(LoadError::Invalid {
                location: Box::new(location),
                kind: kind_name,
                policy: String::new(),
                field: "metadata.name".into(),
                message: "is required".into(),
            });
            return;
        };
        let spec = doc
            .value
            .get("spec")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let canonical = doc.value.to_string();
        let ctx = Ctx {
            digest: digest(&canonical),
            location: &location,
            kind: kind_name,
            name: &name,
        };
        if kind == "ValidatingPolicy" {
            let content: [u8; 32] = sha2::Sha256::digest(canonical.as_bytes()).into();
            let before = self.previous.and_then(|p| p.any_policy(&name));
            if let Some(before) = before.filter(|p| p.compiled.content == content) {
                // The same canonical text: the same digest, so it keeps when
                // it was loaded.
                self.reuse_policy(&ctx, before);
                return;
            }
            match serde_json::from_value::<PolicySpec>(spec) {
                Ok(spec) => self.policy(&ctx, spec, content),
                Err(e) => self.errors.push(ctx.invalid("spec", e.to_string())),
            }
        } else {
            match serde_json::from_value::<ExceptionSpec>(spec) {
                Ok(spec) => self.exception(&ctx, spec),
                Err(e) => self.errors.push(ctx.invalid("spec", e.to_string())),
            }
        }
    }

    /// A policy whose document is the same as `before`'s, its namesake in
    /// the set being replaced: its compiled form, `loaded_at` and metrics
    /// again, its warnings said again at its place now.
    fn reuse_policy(&mut self, ctx: &Ctx<'_>, before: &Policy) {
        let compiled = before.compiled.clone();
        for (field, message) in &compiled.warnings {
            self.warnings.push(Warning {
                location: ctx.location.clone(),
                policy: Some(ctx.name.to_owned()),
                field: field.clone(),
                message: message.clone(),
            });
        }
        self.reused += 1;
        self.policies.push(Policy {
            name: ctx.name.to_owned(),
            location: ctx.location.clone(),
            compiled,
            exceptions: Vec::new(),
            digest: ctx.digest,
            loaded_at: before.loaded_at,
            metrics: before.metrics.clone(),
        });
    }

    /// A policy of the set being replaced whose file did not change: taken
    /// over unread, at its place, with when it was loaded.
    fn take_over(&mut self, p: &Policy) {
        let ctx = Ctx {
            digest: p.digest,
            location: &p.location,
            kind: "ValidatingPolicy",
            name: &p.name,
        };
        self.reuse_policy(&ctx, p);
    }

    fn policy(&mut self, ctx: &Ctx<'_>, spec: PolicySpec, content: [u8; 32]) {
        let warned = self.warnings.len();
        let mode = spec.evaluation.as_ref().and_then(|e| e.mode.as_deref());
        let mode = match kinds::mode(mode) {
            kinds::Mode::Envoy => EvaluationMode::Envoy,
            kinds::Mode::Http => EvaluationMode::Http,
            kinds::Mode::Misspelt(message) => {
                self.errors
                    .push(ctx.invalid("spec.evaluation.mode", message));
                return;
            }
            kinds::Mode::Other(described) => {
                if let Some(e) = misplaced_mode(&spec) {
                    self.errors.push(ctx.invalid(e.0, e.1));
                    return;
                }
                self.warn(
                    ctx.location,
                    format!(
                        "skipped: ValidatingPolicy {:?} has spec.evaluation.mode {described}; only Envoy-mode and HTTP-mode policies are served",
                        ctx.name,
                    ),
                );
                return;
            }
        };
        for key in spec.other.keys() {
            if !IGNORED_SPEC_FIELDS.contains(&key.as_str()) {
                let known: Vec<&str> = READ_SPEC_FIELDS
                    .iter()
                    .chain(&IGNORED_SPEC_FIELDS)
                    .copied()
                    .collect();
                self.warn_at(ctx, format!("spec.{key}"), unknown_field(key, &known));
            }
        }
        let before = self.errors.len();
        let actions = match &spec.validation_actions {
            None => ValidationActions::DENY,
            Some(v) => ValidationActions::parse(v).unwrap_or_else(|message| {
                self.errors
                    .push(ctx.invalid("spec.validationActions", message));
                ValidationActions::DENY
            }),
        };
        let failure_policy = match spec.failure_policy.as_deref() {
            None | Some("Fail") => FailurePolicy::Fail,
            Some("Ignore") => FailurePolicy::Ignore,
            Some(other) => {
                self.errors.push(ctx.invalid(
                    "spec.failurePolicy",
                    format!("must be Fail or Ignore, not {other:?}"),
                ));
                FailurePolicy::Fail
            }
        };
        let match_conditions = self.named(ctx, "spec.matchConditions", spec.match_conditions);
        let variables = self.named(ctx, "spec.variables", spec.variables);
        let var_names: Vec<&str> = variables.iter().map(|v| v.name.as_str()).collect();
        // Variables may refer to each other, but not in a cycle.
        for v in &variables {
            self.check_variables(ctx, &v.expr, &var_names);
        }
        let var_depths = match variable_depths(&variables) {
            Ok(d) => d,
            Err(cycle) => {
                self.errors.push(ctx.invalid(
                    "spec.variables",
                    format!(
                        "variables refer to each other in a cycle: {}",
                        cycle.join(" -> ")
                    ),
                ));
                Vec::new()
            }
        };
        for (v, d) in variables.iter().zip(&var_depths) {
            self.check_depth(ctx, &v.expr, &variables, &var_depths, *d);
        }
        for m in &match_conditions {
            if references_root(&m.expr.program, "variables") {
                self.errors.push(ctx.cel(
                    &m.expr.field,
                    &m.expr.source,
                    "matchConditions cannot use variables (they are evaluated before variables exist)",
                ));
            }
        }
        if spec.validations.is_empty() {
            self.warn_at(
                ctx,
                "spec.validations",
                "is missing or empty: the policy never decides a request".to_owned(),
            );
        }
        let mut validations = Vec::new();
        for (i, v) in spec.validations.into_iter().enumerate() {
            let field = format!("spec.validations[{i}].expression");
            for key in v.other.keys() {
                if !matches!(key.as_str(), "message" | "messageExpression" | "reason") {
                    self.warn_at(
                        ctx,
                        format!("spec.validations[{i}].{key}"),
                        unknown_field(
                            key,
                            &["expression", "message", "messageExpression", "reason"],
                        ),
                    );
                }
            }
            let Some(src) = v.expression.filter(|s| !s.trim().is_empty()) else {
                self.errors.push(ctx.invalid(field, "is required"));
                continue;
            };
            if let Some(expr) = self.expression(ctx, field, src) {
                self.check_variables(ctx, &expr, &var_names);
                self.check_depth_through(ctx, &expr, &variables, &var_depths);
                validations.push(expr);
            }
        }
        if let Some(i) = validations
            .iter()
            .position(|v| always_responds(&v.program.expression().expr))
        {
            if i + 1 < validations.len() {
                let later: Vec<&str> = validations[i + 1..]
                    .iter()
                    .map(|v| v.field.as_str())
                    .collect();
                self.warn_at(
                    ctx,
                    validations[i].field.clone(),
                    format!(
                        "this validation always returns a response (it can never be null), so {} will never run",
                        later.join(", ")
                    ),
                );
            }
        }
        let variable_types =
            self.type_check(ctx, mode, &match_conditions, &variables, &validations);
        if self.errors.len() > before {
            return;
        }
        let var_slot = |name: &str| variable_slot(&variables, name);
        let plans = Plans {
            match_conditions: self
                .plan_all(ctx, match_conditions.iter().map(|m| &m.expr), &|_| None),
            variables: self.plan_all(ctx, variables.iter().map(|v| &v.expr), &var_slot),
            validations: self.plan_all(ctx, validations.iter(), &var_slot),
        };
        if self.errors.len() > before {
            return;
        }
        let warnings = self.warnings[warned..]
            .iter()
            .map(|w| (w.field.clone(), w.message.clone()))
            .collect();
        let selection = Arc::new(index::select(
            match_conditions.iter().map(|m| m.expr.program.expression()),
        ));
        self.policies.push(Policy {
            name: ctx.name.to_owned(),
            location: ctx.location.clone(),
            compiled: Arc::new(Compiled {
                selection,
                mode,
                failure_policy,
                actions,
                match_conditions,
                variables,
                validations,
                plans,
                variable_types,
                warnings,
                content,
            }),
            exceptions: Vec::new(),
            digest: ctx.digest,
            loaded_at: self.loaded_at(ctx),
            metrics: crate::telemetry::metrics::policy(ctx.name),
        });
    }

    fn exception(&mut self, ctx: &Ctx<'_>, spec: ExceptionSpec) {
        let mut mode = EvaluationMode::Envoy;
        if let Some(declared) = spec.evaluation_mode.as_deref() {
            match kinds::mode(Some(declared)) {
                kinds::Mode::Envoy => {}
                kinds::Mode::Http => mode = EvaluationMode::Http,
                kinds::Mode::Misspelt(message) => {
                    self.errors
                        .push(ctx.invalid("spec.evaluationMode", message));
                    return;
                }
                kinds::Mode::Other(described) => {
                    self.warn(
                        ctx.location,
                        format!(
                            "skipped: PolicyException {:?} has evaluationMode {described}",
                            ctx.name
                        ),
                    );
                    return;
                }
            }
        }
        for key in spec.other.keys() {
            self.warn_at(
                ctx,
                format!("spec.{key}"),
                unknown_field(
                    key,
                    &[
                        "policyRefs",
                        "matchConditions",
                        "evaluationMode",
                        "exceptions",
                    ],
                ),
            );
        }
        let before = self.errors.len();
        let mut refs: Vec<String> = Vec::new();
        for (i, r) in spec.policy_refs.iter().enumerate() {
            match (&r.name, r.kind.as_deref()) {
                (Some(n), None | Some("ValidatingPolicy")) if !n.is_empty() => {
                    if !refs.contains(n) {
                        refs.push(n.clone());
                    }
                }
                (Some(_), Some(k)) => self.warn_at(
                    ctx,
                    format!("spec.policyRefs[{i}].kind"),
                    format!("kind {k:?} is ignored: only ValidatingPolicy references are served"),
                ),
                _ => self
                    .errors
                    .push(ctx.invalid(format!("spec.policyRefs[{i}].name"), "is required")),
            }
        }
        if refs.is_empty() {
            self.errors
                .push(ctx.invalid("spec.policyRefs", "must name at least one ValidatingPolicy"));
        }
        let match_conditions = self.named(ctx, "spec.matchConditions", spec.match_conditions);
        if match_conditions.is_empty() {
            self.errors.push(ctx.invalid("spec.matchConditions", "must have at least one condition (an exception without one would exempt every request)"));
        }
        // What does not depend on the policy: `variables` read by name
        // only, and the conditions checked with every variable as `dyn`.
        // Each policy the exception names checks them again in its own
        // scope once the set is complete (`Compiler::exemption`).
        for m in &match_conditions {
            if variables_misused(&m.expr.program) {
                self.errors
                    .push(ctx.cel(&m.expr.field, &m.expr.source, VARIABLES_MISUSED));
                continue;
            }
            self.check_expression(
                ctx,
                &m.expr,
                &crate::cel::check::Scope {
                    mode: mode.check_mode(),
                    ..Default::default()
                },
                Want::Bool("an exception condition"),
            );
        }
        if self.errors.len() > before {
            return;
        }
        self.exceptions.push(Exception {
            name: ctx.name.to_owned(),
            location: ctx.location.clone(),
            mode,
            policy_refs: refs,
            match_conditions,
            digest: ctx.digest,
            loaded_at: self.loaded_at(ctx),
        });
    }

    /// Compiles `exception`'s conditions in the scope of `policy`: every
    /// `variables.x` must be one of the policy's variables, the conditions
    /// are type-checked against their types and planned with their slots.
    /// A mistake is the exception's, and names the policy.
    fn exemption(&mut self, exception: &Arc<Exception>, policy: &Policy) -> Option<Exemption> {
        let ctx = Ctx {
            digest: exception.digest,
            location: &exception.location,
            kind: "PolicyException",
            name: &exception.name,
        };
        let before = self.errors.len();
        let names: Vec<&str> = policy.variables.iter().map(|v| v.name.as_str()).collect();
        let scope = crate::cel::check::Scope {
            mode: policy.mode.check_mode(),
            variables: Some(policy.variable_types.clone()),
        };
        // The policy loaded, so its variables have no cycle.
        let depths = variable_depths(&policy.variables).unwrap_or_default();
        for m in &exception.match_conditions {
            let known = self.errors.len();
            self.check_variables(&ctx, &m.expr, &names);
            if self.errors.len() > known {
                continue;
            }
            self.check_depth_through(&ctx, &m.expr, &policy.variables, &depths);
            self.check_expression(&ctx, &m.expr, &scope, Want::Bool("an exception condition"));
        }
        let plans = if self.errors.len() > before {
            Vec::new()
        } else {
            let var_slot = |name: &str| variable_slot(&policy.variables, name);
            self.plan_all(
                &ctx,
                exception.match_conditions.iter().map(|m| &m.expr),
                &var_slot,
            )
        };
        if self.errors.len() > before {
            for e in &mut self.errors[before..] {
                in_scope_of(e, &policy.name);
            }
            return None;
        }
        Some(Exemption {
            exception: exception.clone(),
            plans,
        })
    }

    fn named(
        &mut self,
        ctx: &Ctx<'_>,
        list: &str,
        items: Vec<NamedExpression>,
    ) -> Vec<NamedProgram> {
        let mut out: Vec<NamedProgram> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let name = match item.name.filter(|n| !n.is_empty()) {
                Some(n) => n,
                None => {
                    self.errors
                        .push(ctx.invalid(format!("{list}[{i}].name"), "is required"));
                    continue;
                }
            };
            if out.iter().any(|o| o.name == name) {
                self.errors.push(ctx.invalid(
                    format!("{list}[{i}].name"),
                    format!("{name:?} is used twice"),
                ));
                continue;
            }
            let field = format!("{list}[{i}].expression");
            let Some(src) = item.expression.filter(|s| !s.trim().is_empty()) else {
                self.errors.push(ctx.invalid(field, "is required"));
                continue;
            };
            if let Some(expr) = self.expression(ctx, field, src) {
                out.push(NamedProgram { name, expr });
            }
        }
        out
    }

    /// Plans checked expressions for the evaluator ([`crate::cel::eval`]);
    /// `variable` gives the slot of each of the policy's variables.
    fn plan_all<'e>(
        &mut self,
        ctx: &Ctx<'_>,
        exprs: impl Iterator<Item = &'e Expression>,
        variable: &dyn Fn(&str) -> Option<usize>,
    ) -> Vec<crate::cel::eval::Program> {
        let mut out = Vec::new();
        for e in exprs {
            let slots = variable_refs(&e.program)
                .iter()
                .map(|r| variable(r))
                .collect();
            let key = (e.source.clone(), slots);
            if let Some(p) = self.planned.get(&key) {
                out.push(p.clone());
                continue;
            }
            match crate::cel::eval::compile(e.program.expression(), variable) {
                Ok(p) => {
                    self.planned.insert(key, p.clone());
                    out.push(p);
                }
                Err(err) => self.errors.push(ctx.cel(&e.field, &e.source, err.0)),
            }
        }
        out
    }

    fn expression(&mut self, ctx: &Ctx<'_>, field: String, source: String) -> Option<Expression> {
        if let Some(program) = self.parsed.get(&source) {
            // The same text passed every check below already.
            return Some(Expression {
                field,
                program: program.clone(),
                source,
            });
        }
        // The text's shape is checked before the parser sees it: the parser
        // itself recurses once per bracket.
        if let Err(e) = limits::check_source(&source) {
            self.errors.push(ctx.invalid(field, e.to_string()));
            return None;
        }
        let program = match env().compile(&source) {
            Ok(p) => p,
            Err(e) => {
                self.errors
                    .push(ctx.cel(&field, &source, e.to_string().trim().to_owned()));
                return None;
            }
        };
        if limits::depth(program.expression()) > limits::MAX_DEPTH {
            self.errors
                .push(ctx.invalid(field, limits::LimitError::TooDeep.to_string()));
            return None;
        }
        if let Err(e) = check_literal_patterns(program.expression()) {
            self.errors.push(ctx.cel(&field, &source, e));
            return None;
        }
        let program = Arc::new(program);
        self.parsed.insert(source.clone(), program.clone());
        Some(Expression {
            field,
            source,
            program,
        })
    }

    /// Type-checks and estimates the cost of a policy's expressions (see
    /// [`crate::cel::check`]): each variable once the variables it reads are
    /// typed (a cycle is reported by the cycle check), then the conditions,
    /// which must be bools, and the validations, which must return a
    /// response or null. Returns what is known of each variable.
    fn type_check(
        &mut self,
        ctx: &Ctx<'_>,
        mode: EvaluationMode,
        conditions: &[NamedProgram],
        variables: &[NamedProgram],
        validations: &[Expression],
    ) -> HashMap<String, crate::cel::check::Info> {
        use crate::cel::check::{Info, Scope, Ty};
        let mut scope = Scope {
            mode: mode.check_mode(),
            variables: Some(HashMap::new()),
        };
        let declared = |n: &String| variables.iter().any(|v| &v.name == n);
        let mut pending: Vec<(&NamedProgram, Vec<String>)> = variables
            .iter()
            .map(|v| (v, variable_refs(&v.expr.program)))
            .collect();
        loop {
            let known = scope.variables.as_ref().map_or(0, HashMap::len);
            let (ready, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(_, refs)| {
                refs.iter().all(|r| {
                    !declared(r) || scope.variables.as_ref().is_some_and(|k| k.contains_key(r))
                })
            });
            pending = rest;
            for (v, _) in ready {
                let info = self
                    .check_expression(ctx, &v.expr, &scope, Want::Any)
                    .unwrap_or_else(|| Info::new(Ty::Dyn));
                if let Some(k) = scope.variables.as_mut() {
                    k.insert(v.name.clone(), info);
                }
            }
            if pending.is_empty() || scope.variables.as_ref().map_or(0, HashMap::len) == known {
                break;
            }
        }
        let no_variables = Scope {
            mode: mode.check_mode(),
            ..Default::default()
        };
        for m in conditions {
            self.check_expression(ctx, &m.expr, &no_variables, Want::Bool("a match condition"));
        }
        for v in validations {
            self.check_expression(ctx, v, &scope, Want::Response);
        }
        scope.variables.unwrap_or_default()
    }

    /// Checks one expression: its mistakes, its result's type and its
    /// estimated cost are errors of the policy.
    fn check_expression(
        &mut self,
        ctx: &Ctx<'_>,
        expr: &Expression,
        scope: &crate::cel::check::Scope,
        want: Want,
    ) -> Option<crate::cel::check::Info> {
        use crate::cel::check;
        let start = expr.source.len() - expr.source.trim_start().len();
        match check::check(&expr.program, scope) {
            Ok(info) => {
                let wrong = match want {
                    Want::Any => None,
                    Want::Bool(what) => {
                        check::result_error(&info.ty, true).map(|m| format!("{what} {m}"))
                    }
                    Want::Response => check::result_error_in(scope.mode, &info.ty, false)
                        .map(|m| format!("a validation {m}")),
                };
                if let Some(m) = wrong {
                    self.errors.push(ctx.checked(
                        &expr.field,
                        &expr.source,
                        start,
                        m,
                        "result_type",
                    ));
                    return None;
                }
                let budget = check::cost::budget();
                if info.cost > budget as f64 {
                    self.errors.push(ctx.checked(
                        &expr.field,
                        &expr.source,
                        start,
                        format!(
                            "estimated worst-case cost is {} units, over the budget of {budget} (see --max-expression-cost)",
                            info.cost.ceil() as u64
                        ),
                        "cost_exceeded",
                    ));
                    return None;
                }
                Some(info)
            }
            Err(errors) => {
                for e in errors {
                    self.errors.push(ctx.checked(
                        &expr.field,
                        &expr.source,
                        e.offset,
                        e.message,
                        "type_error",
                    ));
                }
                None
            }
        }
    }

    /// `variables.x` must name a declared variable, and `variables` is
    /// used for nothing else.
    fn check_variables(&mut self, ctx: &Ctx<'_>, expr: &Expression, names: &[&str]) {
        if variables_misused(&expr.program) {
            self.errors
                .push(ctx.cel(&expr.field, &expr.source, VARIABLES_MISUSED));
            return;
        }
        for used in variable_refs(&expr.program) {
            if !names.contains(&used.as_str()) {
                let at = variable_offset(&expr.program, &used).unwrap_or(0);
                self.errors.push(ctx.checked(
                    &expr.field,
                    &expr.source,
                    at,
                    format!(
                        "undefined variable `variables.{used}` (declared: {})",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                    "undefined_variable",
                ));
            }
        }
    }

    /// An expression `depth` levels deep counting the variables it reads is
    /// refused past the limit, where the limit is crossed (not again for
    /// every expression that reads one already refused).
    /// [`check_depth`](Self::check_depth) of an expression that may read
    /// `vars` (whose depths are `depths`; none when they are in a cycle,
    /// which is refused on its own).
    fn check_depth_through(
        &mut self,
        ctx: &Ctx<'_>,
        expr: &Expression,
        vars: &[NamedProgram],
        depths: &[usize],
    ) {
        if !depths.is_empty() {
            let d = through_variables(&expr.program, vars, depths);
            self.check_depth(ctx, expr, vars, depths, d);
        }
    }

    fn check_depth(
        &mut self,
        ctx: &Ctx<'_>,
        expr: &Expression,
        vars: &[NamedProgram],
        depths: &[usize],
        depth: usize,
    ) {
        if depth <= limits::MAX_DEPTH {
            return;
        }
        let reads_refused = variable_refs(&expr.program).iter().any(|n| {
            vars.iter()
                .position(|v| &v.name == n)
                .is_some_and(|i| depths[i] > limits::MAX_DEPTH)
        });
        if !reads_refused {
            self.errors.push(ctx.invalid(
                expr.field.clone(),
                limits::LimitError::TooDeepThroughVariables(depth).to_string(),
            ));
        }
    }

    fn finish(mut self) -> (Result<PolicySet, LoadErrors>, Vec<Warning>) {
        // Names are unique within a set; order by name is the evaluation order.
        let policies = self.policies.iter().map(|p| (&p.name, &p.location));
        let dup_policies = duplicates("ValidatingPolicy", policies);
        let exceptions = self.exceptions.iter().map(|e| (&e.name, &e.location));
        let dup_exceptions = duplicates("PolicyException", exceptions);
        self.errors
            .extend(dup_policies.into_iter().chain(dup_exceptions));
        self.policies.sort_by(|a, b| a.name.cmp(&b.name));
        self.exceptions.sort_by(|a, b| a.name.cmp(&b.name));
        let exceptions: Vec<Arc<Exception>> = std::mem::take(&mut self.exceptions)
            .into_iter()
            .map(Arc::new)
            .collect();
        // Exceptions and policies may come in any order, from any source:
        // each exception compiles in the scope of each policy it names once
        // all are read. One that names a policy not loaded is only warned
        // of (the policy may come later, or be skipped for its mode).
        let mut policies = std::mem::take(&mut self.policies);
        let mut missing = Vec::new();
        let mut other_mode = Vec::new();
        for e in &exceptions {
            for r in &e.policy_refs {
                match policies.binary_search_by(|p| p.name.as_str().cmp(r)) {
                    // An exception applies to the policies of its own
                    // evaluation mode only.
                    Ok(i) if policies[i].mode != e.mode => {
                        other_mode.push((e, r, policies[i].mode));
                    }
                    Ok(i) => {
                        if let Some(x) = self.exemption(e, &policies[i]) {
                            policies[i].exceptions.push(x);
                        }
                    }
                    Err(_) => missing.push((e, r)),
                }
            }
        }
        for (e, policy, mode) in other_mode {
            self.warnings.push(Warning {
                location: e.location.clone(),
                policy: Some(e.name.clone()),
                field: Some("spec.policyRefs".into()),
                message: format!(
                    "names policy {policy:?}, which is in {} mode: an exception of evaluationMode {} does not apply to it (set spec.evaluationMode: {})",
                    mode.as_str(),
                    e.mode.as_str(),
                    mode.as_str()
                ),
            });
        }
        let (http, envoy): (Vec<Policy>, Vec<Policy>) = policies
            .into_iter()
            .partition(|p| p.mode == EvaluationMode::Http);
        self.policies = envoy;
        let http_policies = http;
        if !self.errors.is_empty() {
            return (Err(LoadErrors(self.errors)), self.warnings);
        }
        for (e, policy) in missing {
            self.warnings.push(Warning {
                location: e.location.clone(),
                policy: Some(e.name.clone()),
                field: Some("spec.policyRefs".into()),
                message: format!("names policy {policy:?}, which is not loaded"),
            });
        }
        let warnings = self.warnings.clone();
        let index =
            index::PolicyIndex::from_selections(self.policies.iter().map(|p| p.selection.clone()));
        let set = PolicySet {
            policies: self.policies,
            http_policies,
            exceptions,
            warnings: self.warnings,
            loaded_at: SystemTime::now(),
            index,
            reused: self.reused,
            files: Default::default(),
            files_read: 0,
        };
        (Ok(set), warnings)
    }
}

/// Marks a mistake found compiling an exception's conditions in the scope
/// of `policy`: the same condition may compile for one policy it names and
/// not for another.
fn in_scope_of(e: &mut LoadError, policy: &str) {
    if let LoadError::Cel { message, .. } | LoadError::Invalid { message, .. } = e {
        *message = format!("in the scope of ValidatingPolicy {policy:?}: {message}");
    }
}

/// What an expression must return.
#[derive(Clone, Copy)]
enum Want {
    Any,
    /// A bool; the text names the expression (`a match condition`).
    Bool(&'static str),
    /// A response or null.
    Response,
}

/// Where `variables.<name>` is first written in a program's text.
fn variable_offset(program: &Program, name: &str) -> Option<usize> {
    let mut first: Option<usize> = None;
    crate::cel::walk(program.expression(), &mut |e| {
        if let Expr::Select(s) = &e.expr {
            if matches!(&s.operand.expr, Expr::Ident(v) if v == "variables") && s.field == name {
                if let Some((start, _)) = program.source_info().offset_for(e.id) {
                    let start = start as usize;
                    first = Some(first.map_or(start, |f| f.min(start)));
                }
            }
        }
    });
    // The select's position is its dot: point at the name after it.
    let source = &program.source_info().source;
    let dotted = format!(".{name}");
    first.map(|f| source[f..].find(&dotted).map_or(f, |i| f + i + 1))
}

/// A policy that is not in Envoy mode only because the mode sits under a
/// misspelt key (`spec.evalution.mode`, `spec.evaluation.Mode`) holding
/// something close to `Envoy`: (field, message) of the error.
fn misplaced_mode(spec: &PolicySpec) -> Option<(String, String)> {
    let envoyish = |v: &serde_json::Value| v.as_str().is_some_and(|m| kinds::near(m, kinds::ENVOY));
    if let Some(e) = &spec.evaluation {
        for (key, value) in &e.other {
            if envoyish(value) {
                return Some((
                    format!("spec.evaluation.{key}"),
                    "unknown field holding an evaluation mode: did you mean mode? (the policy would otherwise be skipped and check nothing)".to_owned(),
                ));
            }
        }
    }
    for (key, value) in &spec.other {
        let holds_mode = value.as_object().is_some_and(|o| o.values().any(envoyish));
        if holds_mode && kinds::near(key, "evaluation") {
            return Some((
                format!("spec.{key}"),
                "unknown field holding an evaluation mode: did you mean evaluation? (the policy would otherwise be skipped and check nothing)".to_owned(),
            ));
        }
    }
    None
}

/// A `Duplicate` error for each name seen more than once.
fn duplicates<'a>(
    kind: &'static str,
    items: impl Iterator<Item = (&'a String, &'a Location)>,
) -> Vec<LoadError> {
    let mut seen: HashMap<&str, &Location> = HashMap::new();
    let mut out = Vec::new();
    for (name, location) in items {
        if let Some(first) = seen.insert(name, location) {
            out.push(LoadError::Duplicate {
                kind,
                name: name.clone(),
                first: Box::new(first.clone()),
                second: Box::new(location.clone()),
            });
        }
    }
    out
}

/// The names `x` of every `variables.x` (and `variables["x"]`) in a program.
pub fn variable_refs(program: &Program) -> Vec<String> {
    let mut out = Vec::new();
    crate::cel::walk(program.expression(), &mut |e| match &e.expr {
        Expr::Select(s)
            if matches!(&s.operand.expr, Expr::Ident(i) if i == "variables")
                && !out.contains(&s.field) =>
        {
            out.push(s.field.clone());
        }
        Expr::Call(c) if c.func_name == "_[_]" || c.func_name == "_[?_]" => {
            if let (
                Some(Expr::Ident(i)),
                Some(Expr::Literal(cel::common::ast::LiteralValue::String(k))),
            ) = (
                c.args.first().map(|a| &a.expr),
                c.args.get(1).map(|a| &a.expr),
            ) {
                if i == "variables" && !out.iter().any(|o| o == k.inner()) {
                    out.push(k.inner().to_owned());
                }
            }
        }
        _ => {}
    });
    out
}

/// Documents split into one chunk per core (one chunk when there are few).
fn chunked(docs: Vec<load::Document>) -> Vec<std::sync::Mutex<Vec<load::Document>>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || docs.len() < 32 {
        return vec![std::sync::Mutex::new(docs)];
    }
    let size = docs.len().div_ceil(cores);
    let mut out = Vec::new();
    let mut it = docs.into_iter().peekable();
    while it.peek().is_some() {
        out.push(std::sync::Mutex::new(it.by_ref().take(size).collect()));
    }
    out
}

/// `f` over `items` on up to one thread per core, results in order.
/// Sequential below `min` items.
fn par_map<T: Sync, R: Send>(items: &[T], min: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || items.len() < min.max(2) {
        return items.iter().map(&f).collect();
    }
    let size = items.len().div_ceil(cores);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(size)
            .map(|c| {
                let work = || c.iter().map(&f).collect::<Vec<R>>();
                // Parsing recurses over the expression (see `limits`).
                std::thread::Builder::new()
                    .stack_size(limits::LOAD_STACK_BYTES)
                    .spawn_scoped(s, work)
                    .map_err(|_| c)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                // No thread: this one does the chunk (on its own stack).
                Err(c) => c.iter().map(&f).collect(),
            })
            .collect()
    })
}

/// A stable hash of a document's canonical JSON text.
fn digest(canonical: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    canonical.hash(&mut h);
    h.finish()
}

/// Fields of a ValidatingPolicy spec celgate reads (those it knowingly
/// ignores are `IGNORED_SPEC_FIELDS`).
const READ_SPEC_FIELDS: [&str; 6] = [
    "evaluation",
    "failurePolicy",
    "validationActions",
    "matchConditions",
    "variables",
    "validations",
];

/// "unknown field x is ignored", with the closest known name when it looks
/// like a typo.
fn unknown_field(key: &str, known: &[&str]) -> String {
    let close = known
        .iter()
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                k,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min();
    match close {
        Some((_, k)) => format!("unknown field, ignored (did you mean {k}?)"),
        None => "unknown field, ignored".to_owned(),
    }
}

pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Whether an expression can be seen, without running it, to always give a
/// response and never `null`: a builder chain ending in `.Response()` (or a
/// `WithMessage`/`WithMetadata` on one), or a conditional whose branches
/// both do. Anything else might be null, so it is not reported.
fn always_responds(e: &Expr) -> bool {
    match e {
        Expr::Call(c) if c.func_name == "_?_:_" && c.args.len() == 3 => {
            always_responds(&c.args[1].expr) && always_responds(&c.args[2].expr)
        }
        Expr::Call(c) if c.target.is_some() => match c.func_name.as_str() {
            "Response" => true,
            "WithMessage" | "WithMetadata" => {
                c.target.as_ref().is_some_and(|t| always_responds(&t.expr))
            }
            _ => false,
        },
        Expr::Struct(s) => crate::cel::eval::lib::messages::lookup(&s.type_name).is_some_and(|m| {
            m.name == crate::cel::eval::lib::messages::CHECK_RESPONSE
                || m.name == crate::cel::eval::lib::httpauthz::CHECK_RESPONSE
        }),
        _ => false,
    }
}

fn references_root(program: &Program, ident: &str) -> bool {
    let mut found = false;
    crate::cel::walk(program.expression(), &mut |e| {
        if matches!(&e.expr, Expr::Ident(i) if i == ident) {
            found = true;
        }
    });
    found
}

/// What `variables` may be used for: `variables.x`, `has(variables.x)`,
/// `variables["x"]` (and `variables[?"x"]`), each naming one variable.
const VARIABLES_MISUSED: &str = "`variables` can only be used to read a declared variable by name (`variables.name` or `variables[\"name\"]`)";

/// Whether `variables` appears anywhere other than as the operand of a
/// field selection or of an index by a string literal: `[variables][0].a`,
/// `variables[x]`, `variables` as a value. Such reads would escape the
/// reference walk that finds cycles and undeclared names.
pub fn variables_misused(program: &Program) -> bool {
    let (mut all, mut named) = (0usize, 0usize);
    crate::cel::walk(program.expression(), &mut |e| match &e.expr {
        Expr::Ident(i) if i == "variables" => all += 1,
        Expr::Select(s) if matches!(&s.operand.expr, Expr::Ident(i) if i == "variables") => {
            named += 1;
        }
        Expr::Call(c)
            if (c.func_name == "_[_]" || c.func_name == "_[?_]") && c.target.is_none() =>
        {
            if let (
                Some(Expr::Ident(i)),
                Some(Expr::Literal(cel::common::ast::LiteralValue::String(_))),
            ) = (
                c.args.first().map(|a| &a.expr),
                c.args.get(1).map(|a| &a.expr),
            ) {
                if i == "variables" && c.args.len() == 2 {
                    named += 1;
                }
            }
        }
        _ => {}
    });
    all > named
}

/// The slot of variable `name` in a policy's plans: its place in `vars`.
fn variable_slot(vars: &[NamedProgram], name: &str) -> Option<usize> {
    vars.iter().position(|v| v.name == name)
}

/// The depth of an expression counting the variables it reads: its own
/// depth plus that of the deepest variable it reads (whose expression is
/// evaluated below the reference).
fn through_variables(program: &Program, vars: &[NamedProgram], depths: &[usize]) -> usize {
    let below = variable_refs(program)
        .iter()
        .filter_map(|n| vars.iter().position(|v| &v.name == n))
        .map(|i| depths[i])
        .max()
        .unwrap_or(0);
    limits::depth(program.expression()) + below
}

/// Each variable's depth counting the variables it reads, or a cycle among
/// them as the names along it. An explicit stack: the number of variables
/// is not bounded.
fn variable_depths(vars: &[NamedProgram]) -> Result<Vec<usize>, Vec<String>> {
    let index: HashMap<&str, usize> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = vars
        .iter()
        .map(|v| {
            variable_refs(&v.expr.program)
                .iter()
                .filter_map(|n| index.get(n.as_str()).copied())
                .collect()
        })
        .collect();
    let own: Vec<usize> = vars
        .iter()
        .map(|v| limits::depth(v.expr.program.expression()))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state = vec![0u8; vars.len()];
    let mut depth = vec![0usize; vars.len()];
    for root in 0..vars.len() {
        if state[root] != 0 {
            continue;
        }
        // (variable, next dependency to look at)
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (i, ref mut next)) = stack.last_mut() {
            if let Some(&d) = deps[i].get(*next) {
                *next += 1;
                match state[d] {
                    0 => {
                        state[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        let start = stack.iter().position(|&(s, _)| s == d).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[start..]
                            .iter()
                            .map(|&(s, _)| vars[s].name.clone())
                            .collect();
                        cycle.push(vars[d].name.clone());
                        return Err(cycle);
                    }
                    _ => {}
                }
            } else {
                let below = deps[i].iter().map(|&d| depth[d]).max().unwrap_or(0);
                depth[i] = own[i] + below;
                state[i] = 2;
                stack.pop();
            }
        }
    }
    Ok(depth)
}

impl Location {
    /// `kubernetes` for objects from the API server, `file` otherwise.
    pub fn source(&self) -> &'static str {
        if self.path.starts_with(KUBE_PREFIX) {
            "kubernetes"
        } else {
            "file"
        }
    }

    pub fn for_path(path: &Path) -> Self {
        Location {
            path: path.to_path_buf(),
            document: 1,
            line: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "HMACSECRET-0a1b";

    #[test]
    fn validation_actions_read_as_kubernetes_reads_them() {
        let parse = |v: serde_json::Value| ValidationActions::parse(&v);
        for (list, deny, audit, warn) in [
            (serde_json::json!(["Deny"]), true, false, false),
            (serde_json::json!(["Audit"]), false, true, false),
            (serde_json::json!(["Warn"]), false, false, true),
            (serde_json::json!(["Audit", "Deny"]), true, true, false),
            (serde_json::json!(["Warn", "Audit"]), false, true, true),
        ] {
            let a = parse(list.clone()).unwrap();
            assert_eq!((a.deny, a.audit, a.warn), (deny, audit, warn), "{list}");
            assert_eq!(a.enforced(), deny, "{list}");
        }
        assert_eq!(
            parse(serde_json::json!(["Audit", "Warn"]))
                .unwrap()
                .describe(),
            "[Audit, Warn]"
        );
        for (list, says) in [
            (serde_json::json!([]), "at least one"),
            (serde_json::json!(["Deny", "Warn"]), "both Deny and Warn"),
            (
                serde_json::json!(["Warn", "Audit", "Deny"]),
                "both Deny and Warn",
            ),
            (serde_json::json!(["Deny", "Deny"]), "used twice"),
            (serde_json::json!(["Enforce"]), "not \"Enforce\""),
            (serde_json::json!(["warn"]), "did you mean \"Warn\""),
            (serde_json::json!([1]), "not 1"),
            (serde_json::json!("Audit"), "must be a list"),
            (serde_json::json!({"Audit": true}), "must be a list"),
        ] {
            let e = parse(list.clone()).unwrap_err();
            assert!(e.contains(says), "{list}: {e}");
        }
    }

    fn location() -> Box<Location> {
        Box::new(Location {
            path: PathBuf::from("kubernetes:/ValidatingPolicy/p"),
            document: 1,
            line: 1,
        })
    }

    #[test]
    fn redacted_problems_name_place_and_kind_never_the_text() {
        let cases = [
            (
                LoadError::Parse {
                    path: "p.yaml".into(),
                    document: 2,
                    message: format!("found {SECRET:?} at line 7 column 3, while parsing"),
                },
                "p.yaml: document 2: not valid YAML/JSON at line 7 column 3 (invalid_yaml)",
            ),
            (
                LoadError::Invalid {
                    location: location(),
                    kind: "ValidatingPolicy",
                    policy: "p".into(),
                    field: "spec".into(),
                    message: format!("invalid type: string {SECRET:?}, expected a map"),
                },
                "kubernetes:/ValidatingPolicy/p:1 (document 1): ValidatingPolicy \"p\": spec: invalid_spec",
            ),
            (
                LoadError::Cel {
                    location: location(),
                    kind: "PolicyException",
                    policy: "x".into(),
                    field: "spec.matchConditions[0].expression".into(),
                    expression: format!("k == {SECRET:?} && (").into(),
                    message: format!("ERROR: <input>:1:9: Syntax error: ...\n | k == {SECRET:?} && ("),
                    checked: None,
                },
                "kubernetes:/ValidatingPolicy/p:1 (document 1): PolicyException \"x\": spec.matchConditions[0].expression: cel_syntax",
            ),
        ];
        for (e, want) in cases {
            assert!(e.to_string().contains(SECRET), "Display keeps the detail");
            assert_eq!(e.redacted(), want);
        }
        let all = LoadErrors(vec![LoadError::Invalid {
            location: location(),
            kind: "ValidatingPolicy",
            policy: "p".into(),
            field: "spec.failurePolicy".into(),
            message: format!("must be Fail or Ignore, not {SECRET:?}"),
        }]);
        // Limits and misused variables have kinds of their own.
        let limit = LoadError::Invalid {
            location: location(),
            kind: "ValidatingPolicy",
            policy: "p".into(),
            field: "spec.validations[0].expression".into(),
            message: crate::cel::limits::LimitError::TooDeep.to_string(),
        };
        assert_eq!(limit.kind(), "limit_exceeded");
        let misused = LoadError::Cel {
            location: location(),
            kind: "ValidatingPolicy",
            policy: "p".into(),
            field: "spec.variables[0].expression".into(),
            expression: "[variables][0].a".into(),
            message: VARIABLES_MISUSED.into(),
            checked: None,
        };
        assert_eq!(misused.kind(), "variables_misused");
        assert!(misused
            .redacted()
            .ends_with("spec.variables[0].expression: variables_misused"));
        assert!(!all.redacted().contains(SECRET));
        assert!(all
            .redacted()
            .ends_with("spec.failurePolicy: invalid_value"));
    }
}
