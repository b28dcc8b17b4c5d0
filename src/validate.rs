//! `celgate validate`: every problem in a set of policy files, with where it is.

use crate::policy::{LoadError, Location, PolicySet, Warning};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, in a shape meant for both people and tools.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub file: Option<PathBuf>,
    /// 1-based; the line of the field when it can be found, else of the document.
    pub line: Option<usize>,
    /// 1-based position of the YAML document in its file.
    pub document: Option<usize>,
    pub kind: Option<String>,
    pub policy: Option<String>,
    pub field: Option<String>,
    pub expression: Option<String>,
    /// 1-based column in the file of the sub-expression at fault, when the
    /// type checker points at one.
    pub column: Option<usize>,
    /// Byte offset of that sub-expression in `expression`.
    #[serde(skip)]
    pub at: Option<usize>,
    pub message: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Policies that loaded, by name (only when there were no errors):
    /// the Envoy-mode ones.
    pub policies: Vec<String>,
    /// The HTTP-mode policies that loaded (`spec.evaluation.mode: HTTP`).
    #[serde(rename = "httpPolicies", skip_serializing_if = "Vec::is_empty")]
    pub http_policies: Vec<String>,
    pub errors: usize,
    pub warnings: usize,
    pub problems: Vec<Problem>,
}

impl Problem {
    /// A problem that is nowhere in particular: fill in what is known.
    fn new(severity: Severity, message: String) -> Problem {
        Problem {
            severity,
            file: None,
            line: None,
            document: None,
            kind: None,
            policy: None,
            field: None,
            expression: None,
            column: None,
            at: None,
            message,
        }
    }
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors == 0
    }
}

/// Loads and compiles everything under `paths` and reports every problem.
/// A set that loads but holds no ValidatingPolicy of either mode is an error, as
/// `serve` refuses to start with it, unless `allow_empty` (then a warning).
pub fn validate(paths: &[PathBuf], allow_empty: bool) -> Report {
    validate_with(paths, allow_empty, false)
}

/// As [`validate`]; with `warn_unindexed`, also a warning for each policy
/// whose matchConditions the selection index cannot read, which are so
/// evaluated on every request ([`crate::policy::index`]).
pub fn validate_with(paths: &[PathBuf], allow_empty: bool, warn_unindexed: bool) -> Report {
    let mut files = Lines::default();
    let mut report = Report::default();
    let (result, mut warnings) = PolicySet::load_report(paths);
    let empty = match result {
        Ok(set) => {
            report.policies = set.policies.iter().map(|p| p.name.clone()).collect();
            report.http_policies = set.http_policies.iter().map(|p| p.name.clone()).collect();
            if warn_unindexed {
                warnings.extend(unindexed(&set));
            }
            // A set of HTTP-mode policies only decides the HTTP server's
            // requests: not empty.
            report.policies.is_empty() && report.http_policies.is_empty()
        }
        Err(errors) => {
            for e in &errors.0 {
                report.problems.push(error(&mut files, e));
            }
            false
        }
    };
    for w in &warnings {
        report.problems.push(warning(&mut files, w));
    }
    report.problems.sort_by(|a, b| {
        (&a.file, a.line, a.severity == Severity::Warning).cmp(&(
            &b.file,
            b.line,
            b.severity == Severity::Warning,
        ))
    });
    // Last, after the warnings that often explain it (skipped documents).
    if empty {
        let (severity, message) = if allow_empty {
            (
                Severity::Warning,
                format!(
                    "{} (accepted: --allow-empty)",
                    crate::policy::no_envoy_policy(paths)
                ),
            )
        } else {
            (
                Severity::Error,
                format!(
                    "{}; refused, as `serve` refuses to start with none (--allow-empty, \
                     CELGATE_ALLOW_EMPTY=true, accepts an empty set)",
                    crate::policy::no_envoy_policy(paths)
                ),
            )
        };
        report.problems.push(Problem::new(severity, message));
    }
    report.errors = report
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    report.warnings = report.problems.len() - report.errors;
    report
}

/// A warning for each policy that has matchConditions of which the
/// selection index reads none.
fn unindexed(set: &PolicySet) -> Vec<Warning> {
    set.policies
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            matches!(
                set.index.selection(*i),
                Some(crate::policy::index::Selection::Unindexed)
            )
        })
        .map(|(_, p)| Warning {
            location: p.location.clone(),
            policy: Some(p.name.clone()),
            field: Some("spec.matchConditions".into()),
            message: "the policy index reads none of these conditions, so they are \
                      evaluated on every request (it reads a request attribute compared with \
                      string literals, e.g. object.attributes.request.http.host == \"x\")"
                .into(),
        })
        .collect()
}

fn warning(files: &mut Lines, w: &Warning) -> Problem {
    let line = files.find(&w.location, w.field.as_deref(), None);
    Problem {
        file: Some(w.location.path.clone()),
        line: Some(line),
        document: Some(w.location.document),
        policy: w.policy.clone(),
        field: w.field.clone(),
        ..Problem::new(Severity::Warning, w.message.clone())
    }
}

fn error(files: &mut Lines, e: &LoadError) -> Problem {
    let base = Problem::new(Severity::Error, String::new());
    match e {
        LoadError::Io { path, message } => Problem {
            file: Some(path.clone()),
            message: message.clone(),
            ..base
        },
        LoadError::Parse {
            path,
            document,
            message,
        } => Problem {
            file: Some(path.clone()),
            document: Some(*document),
            line: yaml_error_line(message),
            message: format!("not valid YAML/JSON: {message}"),
            ..base
        },
        LoadError::Invalid {
            location,
            kind,
            policy,
            field,
            message,
        } => Problem {
            file: Some(location.path.clone()),
            line: Some(files.find(location, Some(field), None)),
            document: Some(location.document),
            kind: Some((*kind).to_owned()),
            policy: Some(policy.clone()).filter(|p| !p.is_empty()),
            field: Some(field.clone()),
            message: message.clone(),
            ..base
        },
        LoadError::Cel {
            location,
            kind,
            policy,
            field,
            expression,
            message,
            checked,
            ..
        } => {
            let at = checked.as_ref().map(|c| c.offset);
            let (line, column) = files.position(location, field, expression, at);
            Problem {
                file: Some(location.path.clone()),
                line: Some(line),
                column,
                at,
                document: Some(location.document),
                kind: Some((*kind).to_owned()),
                policy: Some(policy.clone()),
                field: Some(field.clone()),
                expression: Some(expression.to_string()),
                message: message.clone(),
                ..base
            }
        }
        LoadError::Duplicate {
            kind,
            name,
            first,
            second,
        } => Problem {
            file: Some(second.path.clone()),
            line: Some(second.line),
            document: Some(second.document),
            kind: Some((*kind).to_owned()),
            policy: Some(name.clone()),
            field: Some("metadata.name".into()),
            message: format!("{kind} {name:?} is already defined at {first}"),
            ..base
        },
    }
}

/// `serde_yaml` messages end in "at line N column M".
fn yaml_error_line(message: &str) -> Option<usize> {
    let rest = &message[message.find("at line ")? + "at line ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// File contents, read once, to find the line of a field.
#[derive(Default)]
pub(crate) struct Lines {
    files: HashMap<PathBuf, Vec<String>>,
}

impl Lines {
    /// The line of `field` (or of the expression's first line) within the
    /// document at `location`; the document's first line when not found.
    pub(crate) fn find(
        &mut self,
        location: &Location,
        field: Option<&str>,
        expression: Option<&str>,
    ) -> usize {
        let lines = self
            .files
            .entry(location.path.clone())
            .or_insert_with(|| read_lines(&location.path));
        let start = location.line.saturating_sub(1);
        let doc_end = lines
            .iter()
            .enumerate()
            .skip(start + 1)
            .find(|(_, l)| l.as_str() == "---" || l.starts_with("--- "))
            .map_or(lines.len(), |(i, _)| i);
        let doc = lines.get(start..doc_end).unwrap_or(&[]);
        if let Some(first) = expression
            .and_then(|e| e.lines().map(str::trim).find(|l| !l.is_empty()))
            .filter(|l| l.len() >= 3)
        {
            if let Some(i) = doc.iter().position(|l| l.contains(first)) {
                return start + i + 1;
            }
        }
        if let Some(f) = field {
            if let Some(n) = field_line(doc, f) {
                return start + n + 1;
            }
        }
        location.line
    }
}

impl Lines {
    /// The line and column in the file of byte `at` of `expression` (the
    /// text of `field`), found by lining up the expression's characters,
    /// spaces aside, with the file's from the field's line on: that works
    /// for every YAML scalar style, folded and quoted ones included. Without
    /// `at`, or when the text cannot be lined up, the line of [`Lines::find`]
    /// and no column.
    pub(crate) fn position(
        &mut self,
        location: &Location,
        field: &str,
        expression: &str,
        at: Option<usize>,
    ) -> (usize, Option<usize>) {
        let Some(at) = at else {
            return (self.find(location, Some(field), Some(expression)), None);
        };
        let from = self.find(location, Some(field), None).saturating_sub(1);
        let file: Vec<(usize, usize, char)> = self.files[&location.path]
            .iter()
            .enumerate()
            .skip(from)
            // This document only.
            .take_while(|(l, text)| {
                *l == from || !(text.as_str() == "---" || text.starts_with("--- "))
            })
            .flat_map(|(l, text)| {
                text.chars()
                    .enumerate()
                    .filter(|(_, c)| !c.is_whitespace())
                    .map(move |(col, c)| (l + 1, col + 1, c))
            })
            .collect();
        let want: Vec<(usize, char)> = expression
            .char_indices()
            .filter(|(_, c)| !c.is_whitespace())
            .collect();
        // The character at `at`, or the next one that is not a space.
        let target = want.iter().position(|(i, _)| *i >= at).unwrap_or(0);
        // Bounded work, however repetitive the text: past the budget the
        // column is left out.
        let mut budget: usize = 4_000_000;
        'search: for quote in [None, Some('\''), Some('"')] {
            for start in 0..file.len() {
                match line_up(&file[start..], &want, target, quote, &mut budget) {
                    Ok(found) => return (found.0, Some(found.1)),
                    Err(true) => break 'search,
                    Err(false) => {}
                }
            }
        }
        (self.find(location, Some(field), Some(expression)), None)
    }
}

/// Whether `want` (the expression's characters) starts `file` (the file's,
/// each with its line and column), and where `want[target]` is; `Err(true)`
/// once `budget` character comparisons are spent. A quoted
/// YAML scalar writes a quote twice (`''`) or escaped (`\"`).
fn line_up(
    file: &[(usize, usize, char)],
    want: &[(usize, char)],
    target: usize,
    quote: Option<char>,
    budget: &mut usize,
) -> Result<(usize, usize), bool> {
    let mut f = 0;
    let mut found = None;
    for (k, (_, c)) in want.iter().enumerate() {
        if *budget == 0 {
            return Err(true);
        }
        *budget -= 1;
        let doubled = quote == Some('\'')
            && *c == '\''
            && file.get(f).ok_or(false)?.2 == '\''
            && file.get(f + 1).ok_or(false)?.2 == '\'';
        let escaped =
            quote == Some('"') && (*c == '"' || *c == '\\') && file.get(f).ok_or(false)?.2 == '\\';
        if doubled || escaped {
            f += 1;
        }
        let (l, col, fc) = *file.get(f).ok_or(false)?;
        if fc != *c {
            return Err(false);
        }
        if k == target {
            found = Some((l, col));
        }
        f += 1;
    }
    found.ok_or(false)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Follows a field path like `spec.validations[2].expression` through block
/// YAML by keys and list items, as far as it can.
fn field_line(doc: &[String], field: &str) -> Option<usize> {
    let mut from = 0;
    let mut found = None;
    for seg in field.split('.') {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let i = (from..doc.len()).find(|&i| {
            let t = doc[i].trim_start().trim_start_matches("- ");
            t.starts_with(&format!("{key}:")) || t.starts_with(&format!("\"{key}\":"))
        })?;
        found = Some(i);
        from = i + 1;
        if let Some(n) = index {
            // The n-th list item after the key, at the first item's indent.
            let mut items = (from..doc.len()).filter(|&j| doc[j].trim_start().starts_with("- "));
            let first = items.next()?;
            let indent = doc[first].len() - doc[first].trim_start().len();
            let nth = std::iter::once(first)
                .chain(items.filter(|&j| doc[j].len() - doc[j].trim_start().len() == indent))
                .nth(n)?;
            found = Some(nth);
            from = nth;
        }
    }
    found
}

/// The report as text for people: one block per problem, then a summary.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    for p in &r.problems {
        let place = match (&p.file, p.line) {
            (Some(f), Some(l)) => match p.column {
                Some(c) => format!("{}:{l}:{c}", f.display()),
                None => format!("{}:{l}", f.display()),
            },
            (Some(f), None) => f.display().to_string(),
            // A problem of the whole set: its message names the paths.
            _ => String::new(),
        };
        let sev = match p.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if place.is_empty() {
            let _ = write!(out, "{sev}");
        } else {
            let _ = write!(out, "{place}: {sev}");
        }
        if let Some(policy) = &p.policy {
            let _ = write!(out, ": {} {policy}", p.kind.as_deref().unwrap_or("policy"));
        }
        if let Some(field) = &p.field {
            let _ = write!(out, ": {field}");
        }
        let mut lines = p.message.lines();
        let _ = writeln!(out, ": {}", lines.next().unwrap_or(""));
        let rest: Vec<&str> = lines.collect();
        // CEL syntax errors quote the expression themselves.
        let quoted = rest.iter().any(|l| l.starts_with("| "));
        for l in rest {
            let _ = writeln!(out, "    {l}");
        }
        if let (Some(e), false) = (&p.expression, quoted) {
            let mut start = 0;
            for l in e.split('\n') {
                let _ = writeln!(out, "    | {}", l.trim_end());
                // A caret under the character at fault.
                if let Some(at) = p.at.filter(|a| (start..=start + l.len()).contains(a)) {
                    let width = l[..at - start].chars().count();
                    let _ = writeln!(out, "    | {}^", " ".repeat(width));
                }
                start += l.len() + 1;
            }
        }
    }
    if r.ok() {
        let _ = writeln!(
            out,
            "ok: {} {} valid{}, {} warning(s)",
            r.policies.len() + r.http_policies.len(),
            if r.policies.len() + r.http_policies.len() == 1 {
                "policy"
            } else {
                "policies"
            },
            if r.http_policies.is_empty() {
                String::new()
            } else {
                format!(" ({} in HTTP mode)", r.http_policies.len())
            },
            r.warnings
        );
    } else {
        let _ = writeln!(
            out,
            "invalid: {} error(s), {} warning(s)",
            r.errors, r.warnings
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_list_items_and_keys() {
        let doc: Vec<String> = "apiVersion: x\nspec:\n  variables:\n  - name: a\n    expression: 1\n  validations:\n  - expression: a\n  - expression: >\n      b\n"
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(field_line(&doc, "spec.validations[1].expression"), Some(7));
        assert_eq!(field_line(&doc, "spec.validations[0]"), Some(6));
        assert_eq!(field_line(&doc, "spec.variables[0].expression"), Some(4));
        assert_eq!(field_line(&doc, "spec.nothing"), None);
    }

    #[test]
    fn lines_up_expressions_in_every_scalar_style() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(
            &path,
            "kind: x\nspec:\n  validations:\n  - expression: 'a == ''b'' + c'\n  - expression: >\n      f(x,\n        y.z)\n",
        )
        .unwrap();
        let location = Location {
            path,
            document: 1,
            line: 1,
        };
        let mut lines = Lines::default();
        // Single-quoted, the quotes written twice: `c` is column 31.
        let e = "a == 'b' + c";
        assert_eq!(
            lines.position(&location, "spec.validations[0].expression", e, Some(11)),
            (4, Some(31))
        );
        // Folded: `z` of `y.z` on the next line.
        let e = "f(x, y.z)\n";
        assert_eq!(
            lines.position(&location, "spec.validations[1].expression", e, Some(7)),
            (7, Some(11))
        );
    }

    #[test]
    fn lining_up_stops_when_its_budget_is_spent() {
        // A repetitive text that almost matches everywhere.
        let file: Vec<(usize, usize, char)> = (0..1000).map(|i| (1, i + 1, 'a')).collect();
        let mut want: Vec<(usize, char)> = (0..999).map(|i| (i, 'a')).collect();
        want.push((999, 'b'));
        let mut budget = 10_000;
        let mut spent = false;
        for start in 0..file.len() {
            if line_up(&file[start..], &want, 0, None, &mut budget) == Err(true) {
                spent = true;
                break;
            }
        }
        assert!(spent);
        assert_eq!(budget, 0);
    }

    #[test]
    fn yaml_line_from_message() {
        assert_eq!(
            yaml_error_line("did not find expected key at line 12 column 3"),
            Some(12)
        );
        assert_eq!(yaml_error_line("no position"), None);
    }
}
