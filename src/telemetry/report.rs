//! What each policy has been doing: per-policy counts since the process
//! started and over recent windows (the last 5 minutes, the last hour),
//! served at `GET /report`, printed by `celgate report` and optionally
//! written to Kubernetes as OpenReports objects ([`super::openreports`]).
//!
//! The counts are read from the per-policy outcome counters and the shadow
//! disagreement counters of [`super::metrics`], so the request path does no
//! extra work. Windows come
//! from a small ring of snapshots of those counters, one a minute, kept for
//! the longest window: a window's counts are the counters now minus the
//! newest snapshot at least that old. Memory is bounded per policy (about
//! 60 snapshots of a dozen numbers).
//!
//! Counts are keyed by the outcome labels of
//! `authz_policy_evaluations_total` ([`field_of_label`]): an outcome whose
//! label is already a field name (`audit_deny`, `audit_error`) is counted
//! without any change here. Only policy names and numbers appear; nothing
//! from requests.

use super::metrics::{self, PolicyOutcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The count fields of every policy and window, in output order.
///
/// - `evaluated`: times the policy was considered for a request (the sum of
///   its outcome counts);
/// - `allowed`, `denied`: it returned an allow or a denial;
/// - `no_result`: every validation returned null (the next policy decides);
/// - `skipped`: a matchCondition was false;
/// - `exempted`: a PolicyException applied;
/// - `errors`: it could not be evaluated (denied under failurePolicy Fail,
///   ignored under Ignore);
/// - `audit_deny`: a would-be denial of an Audit or Warn policy (the request
///   went on);
/// - `audit_error`: an evaluation error of an Audit or Warn policy;
/// - `shadow_disagreements`: the shadow set (`serve --shadow-policies`)
///   decided a request otherwise than the served set, and this policy
///   decided it on one side (counted once on each side's deciding policy;
///   the counts of `celgate_shadow_disagreements_total`).
pub const FIELDS: [&str; 10] = [
    "evaluated",
    "allowed",
    "denied",
    "no_result",
    "skipped",
    "exempted",
    "errors",
    "audit_deny",
    "audit_error",
    "shadow_disagreements",
];
const EVALUATED: usize = 0;
const SHADOW: usize = 9;

/// The recent windows, by field name and length in minutes.
pub const WINDOWS: [(&str, u32); 2] = [("last_5m", 5), ("last_1h", 60)];

/// The field an outcome label of `authz_policy_evaluations_total` counts
/// in. Labels that differ from their field are mapped; any other label is
/// its own field, if there is one of that name.
pub fn field_of_label(label: &str) -> Option<usize> {
    let field = match label {
        "allow" => "allowed",
        "deny" => "denied",
        "none" => "no_result",
        "error" => "errors",
        other => other,
    };
    FIELDS.iter().position(|f| *f == field)
}

/// One count per [`FIELDS`] entry; serialized as an object with those names
/// (read back leniently: missing fields are 0, unknown ones ignored, so a
/// `celgate report` of one version reads the server of another).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; FIELDS.len()]);

impl Counts {
    /// The count of `field` (0 for a name that is not a field).
    pub fn get(&self, field: &str) -> u64 {
        FIELDS
            .iter()
            .position(|f| *f == field)
            .map_or(0, |i| self.0[i])
    }

    fn since(&self, earlier: &Counts) -> Counts {
        let mut out = *self;
        for (o, e) in out.0.iter_mut().zip(earlier.0) {
            *o = o.saturating_sub(e);
        }
        out
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(FIELDS.len()))?;
        for (f, n) in FIELDS.iter().zip(self.0) {
            m.serialize_entry(f, &n)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
        let mut c = Counts::default();
        for (i, f) in FIELDS.iter().enumerate() {
            if let Some(v) = m.get(*f) {
                c.0[i] = v
                    .as_u64()
                    .ok_or_else(|| serde::de::Error::custom(format!("{f}: not a count")))?;
            }
        }
        Ok(c)
    }
}

/// The report served at `GET /report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportDoc {
    /// When the report was made (RFC 3339).
    pub generated_at: String,
    /// When counting started (the process's start).
    pub started_at: String,
    /// False under `serve --no-metrics`: nothing is counted, every count is 0.
    pub counting: bool,
    /// What each recent window covers, by window field.
    pub windows: BTreeMap<String, WindowSpan>,
    /// The policies being served, in evaluation order, then those of the
    /// shadow set that are not served (`shadow: true`), then those a reload
    /// removed that still have counts in the longest window
    /// (`served: false`).
    pub policies: Vec<PolicyReport>,
}

/// The span a recent window covers: it starts at a minute snapshot, so it
/// is between `minutes` and one minute more long (shorter while the process
/// is younger than the window).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowSpan {
    pub minutes: u32,
    /// Start of the window (RFC 3339).
    pub from: String,
    /// Its length in whole seconds.
    pub seconds: u64,
}

/// One policy's counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyReport {
    pub name: String,
    /// False once a reload removed the policy, and for a policy of the
    /// shadow set only.
    pub served: bool,
    /// A policy of the shadow set (evaluated beside the served set, never
    /// enforced): only its `shadow_disagreements` count, its evaluations
    /// are not the served policies'.
    #[serde(default)]
    pub shadow: bool,
    pub since_start: Counts,
    pub last_5m: Counts,
    pub last_1h: Counts,
}

impl PolicyReport {
    /// The counts of a window by field name (`since_start` or a [`WINDOWS`]
    /// name).
    pub fn window(&self, name: &str) -> Option<&Counts> {
        match name {
            "since_start" => Some(&self.since_start),
            "last_5m" => Some(&self.last_5m),
            "last_1h" => Some(&self.last_1h),
            _ => None,
        }
    }
}

struct Snapshot {
    at: Instant,
    wall: SystemTime,
    counts: BTreeMap<String, Counts>,
}

/// The collector: the ring of minute snapshots.
pub struct Report {
    started: Instant,
    started_wall: SystemTime,
    /// Length of a "minute" in nanoseconds: 60 s, shorter only in tests.
    minute_nanos: AtomicU64,
    ring: Mutex<VecDeque<Snapshot>>,
}

static REPORT: LazyLock<Report> = LazyLock::new(Report::new);

/// The process's report.
pub fn global() -> &'static Report {
    &REPORT
}

impl Default for Report {
    fn default() -> Self {
        Self::new()
    }
}

impl Report {
    pub fn new() -> Report {
        Report {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            minute_nanos: AtomicU64::new(60_000_000_000),
            ring: Mutex::default(),
        }
    }

    /// The length of a snapshot interval (a minute).
    pub fn minute(&self) -> Duration {
        Duration::from_nanos(self.minute_nanos.load(Relaxed))
    }

    /// Shortens the minute, so tests see windows pass. Not for production.
    pub fn set_minute(&self, d: Duration) {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.minute_nanos.store(n, Relaxed);
    }

    /// Every policy's counts since the start.
    fn cumulative(&self) -> BTreeMap<String, Counts> {
        let mut out: BTreeMap<String, Counts> = BTreeMap::new();
        for (name, m) in metrics::policies() {
            let c = out.entry(name).or_default();
            for o in PolicyOutcome::ALL {
                let n = m.evaluations(o);
                c.0[EVALUATED] += n;
                if let Some(i) = field_of_label(o.as_str()) {
                    c.0[i] += n;
                }
            }
        }
        // A disagreement counts on the deciding policy of each side (once
        // when both are the same name; none for the default allow).
        for d in metrics::global().shadow_disagreements_by_policy() {
            for name in [&d.live_policy, &d.shadow_policy] {
                if !name.is_empty() {
                    out.entry(name.clone()).or_default().0[SHADOW] += d.count;
                }
                if d.live_policy == d.shadow_policy {
                    break;
                }
            }
        }
        out
    }

    fn longest(&self) -> Duration {
        let minutes = WINDOWS.iter().map(|w| w.1).max().unwrap_or(1);
        self.minute() * minutes
    }

    /// Takes a snapshot unless one was taken less than half a minute ago,
    /// and forgets those the longest window no longer needs.
    pub fn tick(&self, now: Instant) {
        let counts = self.cumulative();
        let minute = self.minute();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring
            .back()
            .is_some_and(|s| now.saturating_duration_since(s.at) < minute / 2)
        {
            return;
        }
        let wall = SystemTime::now() - Instant::now().saturating_duration_since(now);
        ring.push_back(Snapshot {
            at: now,
            wall,
            counts,
        });
        // One snapshot at least as old as the longest window is kept: the
        // baseline of that window.
        let longest = self.longest();
        while ring.len() >= 2 && now.saturating_duration_since(ring[1].at) >= longest {
            ring.pop_front();
        }
    }

    /// The report at `now`: the `served` policies (in that order), then the
    /// `shadow` set's that are not served, then the removed ones that still
    /// count in the longest window.
    pub fn view(&self, served: &[&str], shadow: &[&str], now: Instant) -> ReportDoc {
        let current = self.cumulative();
        let minute = self.minute();
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let wall_now = SystemTime::now() - Instant::now().saturating_duration_since(now);
        let empty = BTreeMap::new();
        // Per window: its start and the counts then.
        let baselines: Vec<(SystemTime, Duration, &BTreeMap<String, Counts>)> = WINDOWS
            .iter()
            .map(|(_, minutes)| {
                let length = minute * *minutes;
                match ring
                    .iter()
                    .rev()
                    .find(|s| now.saturating_duration_since(s.at) >= length)
                {
                    Some(s) => (s.wall, now.saturating_duration_since(s.at), &s.counts),
                    None => (
                        self.started_wall,
                        now.saturating_duration_since(self.started),
                        &empty,
                    ),
                }
            })
            .collect();
        let zero = Counts::default();
        let shadow_set: BTreeSet<&str> = shadow.iter().copied().collect();
        let report = |name: &str, served: bool| {
            let since_start = current.get(name).copied().unwrap_or_default();
            let w: Vec<Counts> = baselines
                .iter()
                .map(|(_, _, b)| since_start.since(b.get(name).unwrap_or(&zero)))
                .collect();
            PolicyReport {
                name: name.to_owned(),
                served,
                shadow: shadow_set.contains(name),
                since_start,
                last_5m: w[0],
                last_1h: w[1],
            }
        };
        let mut policies: Vec<PolicyReport> = served.iter().map(|n| report(n, true)).collect();
        let mut listed: BTreeSet<&str> = served.iter().copied().collect();
        for name in shadow {
            if listed.insert(name) {
                policies.push(report(name, false));
            }
        }
        for name in current.keys() {
            if !listed.contains(name.as_str()) {
                let r = report(name, false);
                if !r.last_1h.is_zero() {
                    policies.push(r);
                }
            }
        }
        ReportDoc {
            generated_at: crate::sources::rfc3339::format(wall_now),
            started_at: crate::sources::rfc3339::format(self.started_wall),
            counting: metrics::global().enabled(),
            windows: WINDOWS
                .iter()
                .zip(&baselines)
                .map(|((name, minutes), (from, length, _))| {
                    (
                        (*name).to_owned(),
                        WindowSpan {
                            minutes: *minutes,
                            from: crate::sources::rfc3339::format(*from),
                            seconds: length.as_secs(),
                        },
                    )
                })
                .collect(),
            policies,
        }
    }
}

/// The report of a running server: its served set, in evaluation order, and
/// its shadow set, if any.
pub fn view(state: &crate::server::State) -> ReportDoc {
    let set = state.policies.load();
    let served: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    let shadow_set = state
        .options
        .shadow
        .as_ref()
        .map(|s| s.policies.load_full());
    let shadow: Vec<&str> = shadow_set
        .iter()
        .flat_map(|s| s.policies.iter().map(|p| p.name.as_str()))
        .collect();
    global().view(&served, &shadow, Instant::now())
}

/// Takes the minute snapshots for as long as the runtime runs (one at
/// once, then every minute). Started by the server.
pub fn spawn_ticker() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let report = global();
        let mut interval = tokio::time::interval(report.minute());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            report.tick(Instant::now());
        }
    })
}

/// The rows of the table, per policy: since start, then each window.
const TABLE_WINDOWS: [(&str, &str); 3] = [
    ("since_start", "since start"),
    ("last_5m", "last 5m"),
    ("last_1h", "last 1h"),
];

fn heading(field: &str) -> String {
    match field {
        "shadow_disagreements" => "SHADOW_DIFF".to_owned(),
        f => f.to_ascii_uppercase(),
    }
}

/// The report as an aligned table (`celgate report`): a row per policy and
/// window; a removed policy's name is followed by `(removed)`, a policy of
/// the shadow set only by `(shadow)`.
pub fn render_table(doc: &ReportDoc) -> String {
    let mut header: Vec<String> = vec!["POLICY".into(), "WINDOW".into()];
    header.extend(FIELDS.iter().map(|f| heading(f)));
    let mut rows: Vec<Vec<String>> = Vec::new();
    for p in &doc.policies {
        for (i, (key, label)) in TABLE_WINDOWS.iter().enumerate() {
            let name = match (i, p.served, p.shadow) {
                (0, true, _) => p.name.clone(),
                (0, false, true) => format!("{} (shadow)", p.name),
                (0, false, false) => format!("{} (removed)", p.name),
                _ => String::new(),
            };
            let mut row = vec![name, (*label).to_owned()];
            let counts = p.window(key).copied().unwrap_or_default();
            row.extend(counts.0.iter().map(u64::to_string));
            rows.push(row);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            if c < 2 {
                let _ = write!(line, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(line, "{cell:>w$}", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if doc.policies.is_empty() {
        out.push_str("(no policies)\n");
    }
    if !doc.counting {
        out.push_str("(not counting: the server runs with --no-metrics)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> Counts {
        let mut c = Counts::default();
        for (f, n) in pairs {
            c.0[FIELDS.iter().position(|x| x == f).unwrap()] = *n;
        }
        c
    }

    #[test]
    fn every_outcome_label_has_a_field() {
        for o in PolicyOutcome::ALL {
            assert!(field_of_label(o.as_str()).is_some(), "{}", o.as_str());
        }
        // Outcomes whose label is their field need no mapping.
        assert_eq!(field_of_label("audit_deny"), Some(7));
        assert_eq!(field_of_label("audit_error"), Some(8));
        assert_eq!(field_of_label("unknown"), None);
    }

    #[test]
    fn counts_serialize_by_field_name_and_read_back_leniently() {
        let c = counts(&[("allowed", 2), ("audit_deny", 1)]);
        let v = serde_json::to_value(c).unwrap();
        assert_eq!(v["allowed"], 2);
        assert_eq!(v["audit_deny"], 1);
        assert_eq!(v["shadow_disagreements"], 0);
        assert_eq!(v.as_object().unwrap().len(), FIELDS.len());
        let back: Counts =
            serde_json::from_value(serde_json::json!({"denied": 3, "later_field": 9})).unwrap();
        assert_eq!(back, counts(&[("denied", 3)]));
    }

    #[test]
    fn windows_subtract_the_newest_snapshot_old_enough() {
        let r = Report::new();
        r.set_minute(Duration::from_secs(60));
        let t0 = r.started;
        let snap = |at: Instant, c: Counts| Snapshot {
            at,
            wall: SystemTime::now(),
            counts: [("report-window-test".to_owned(), c)].into(),
        };
        {
            let mut ring = r.ring.lock().unwrap();
            ring.push_back(snap(t0, Counts::default()));
            ring.push_back(snap(
                t0 + Duration::from_secs(60),
                counts(&[("evaluated", 5)]),
            ));
            ring.push_back(snap(
                t0 + Duration::from_secs(120),
                counts(&[("evaluated", 7)]),
            ));
        }
        // `report-window-test` is not in the metrics registry: its "now" is
        // one shadow disagreement (decided by it on both sides).
        metrics::global().shadow_disagreement(
            "report-window-test",
            "report-window-test",
            metrics::ShadowKind::Status,
        );
        // Now = 6 min: the 5-minute window starts at the 1-minute snapshot.
        let now = t0 + Duration::from_secs(360);
        let ring = r.ring.lock().unwrap();
        let found = ring
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= Duration::from_secs(300))
            .unwrap();
        assert_eq!(found.at, t0 + Duration::from_secs(60));
        drop(ring);
        let doc = r.view(&["report-window-test"], &[], now);
        assert_eq!(doc.windows["last_5m"].seconds, 300);
        assert_eq!(doc.windows["last_1h"].seconds, 360);
        let p = &doc.policies[0];
        assert_eq!(p.since_start.get("shadow_disagreements"), 1);
        assert_eq!(p.last_5m.get("shadow_disagreements"), 1);
        // Snapshots' counts above current ones saturate at 0.
        assert_eq!(p.last_5m.get("evaluated"), 0);
    }

    #[test]
    fn the_ring_keeps_one_snapshot_older_than_the_longest_window() {
        let r = Report::new();
        r.set_minute(Duration::from_millis(10));
        let t0 = Instant::now();
        for i in 0..200u32 {
            r.tick(t0 + Duration::from_millis(10) * i);
        }
        let ring = r.ring.lock().unwrap();
        // 60 minutes of 10 ms, plus the baseline.
        assert_eq!(ring.len(), 61);
        let now = t0 + Duration::from_millis(10) * 199;
        assert!(now.saturating_duration_since(ring[0].at) >= Duration::from_millis(600));
        assert!(now.saturating_duration_since(ring[1].at) < Duration::from_millis(600));
        drop(ring);
        // A second ticker within half a minute adds nothing.
        r.tick(now + Duration::from_millis(1));
        assert_eq!(r.ring.lock().unwrap().len(), 61);
    }

    #[test]
    fn shadow_disagreements_count_on_both_deciding_policies() {
        let r = Report::new();
        let m = metrics::global();
        m.shadow_disagreement("rt-live", "rt-shadow", metrics::ShadowKind::AllowDeny);
        m.shadow_disagreement("rt-live", "rt-live", metrics::ShadowKind::Status);
        // The default allow on one side counts on the other side only.
        m.shadow_disagreement("", "rt-shadow", metrics::ShadowKind::AllowDeny);
        let doc = r.view(&["rt-live"], &["rt-shadow"], Instant::now());
        let get = |name: &str| doc.policies.iter().find(|p| p.name == name).unwrap();
        assert_eq!(get("rt-live").since_start.get("shadow_disagreements"), 2);
        assert_eq!(get("rt-shadow").since_start.get("shadow_disagreements"), 2);
        assert!(get("rt-shadow").shadow && !get("rt-shadow").served);
        assert!(doc.policies.iter().all(|p| !p.name.is_empty()));
    }

    #[test]
    fn removed_policies_stay_while_they_count_in_the_last_hour() {
        let r = Report::new();
        metrics::global().shadow_disagreement("rm-live", "rm-gone", metrics::ShadowKind::Status);
        let doc = r.view(&["rm-live"], &[], Instant::now());
        let names: Vec<_> = doc
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.served, p.shadow))
            .collect();
        assert!(names.contains(&("rm-live", true, false)), "{names:?}");
        assert!(names.contains(&("rm-gone", false, false)), "{names:?}");
        // Once the hour has passed without counts, it drops out.
        r.set_minute(Duration::from_millis(1));
        let t = Instant::now();
        r.tick(t);
        let doc = r.view(&["rm-live"], &[], t + Duration::from_millis(100));
        assert!(
            doc.policies.iter().all(|p| p.name != "rm-gone"),
            "{:?}",
            doc.policies
        );
    }

    #[test]
    fn table_is_aligned_and_marks_removed_policies() {
        let doc = ReportDoc {
            generated_at: String::new(),
            started_at: String::new(),
            counting: true,
            windows: BTreeMap::new(),
            policies: vec![
                PolicyReport {
                    name: "a".into(),
                    served: true,
                    shadow: false,
                    since_start: counts(&[("evaluated", 12), ("allowed", 12)]),
                    last_5m: counts(&[("evaluated", 2), ("allowed", 2)]),
                    last_1h: counts(&[("evaluated", 12), ("allowed", 12)]),
                },
                PolicyReport {
                    name: "gone".into(),
                    served: false,
                    shadow: false,
                    since_start: counts(&[("evaluated", 1), ("denied", 1)]),
                    last_5m: Counts::default(),
                    last_1h: counts(&[("evaluated", 1), ("denied", 1)]),
                },
            ],
        };
        let t = render_table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("POLICY          WINDOW       EVALUATED"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("a               since start         12"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("                last 5m              2"),
            "{t}"
        );
        assert!(
            lines[4].starts_with("gone (removed)  since start          1"),
            "{t}"
        );
        assert_eq!(lines.len(), 7, "{t}");
    }
}
