//! Observability: Prometheus metrics, OpenTelemetry traces, decision logs.

pub mod metrics;

/// Series owned outside the metrics registry (decision log; identity caches
/// when present), appended to `/metrics`.
pub fn extra_metrics() -> String {
    let (written, dropped) = decision_log::counts();
    format!(
        "# HELP celgate_decision_log_written_total Decision log lines written.\n\
         # TYPE celgate_decision_log_written_total counter\n\
         celgate_decision_log_written_total {written}\n\
         # HELP celgate_decision_log_dropped_total Decision log lines dropped because the writer fell behind.\n\
         # TYPE celgate_decision_log_dropped_total counter\n\
         celgate_decision_log_dropped_total {dropped}\n"
    )
}
pub mod decision_log;
pub mod otel;
