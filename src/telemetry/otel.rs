//! Logging and OpenTelemetry tracing set-up.
//!
//! Traces are exported over OTLP/gRPC only when the standard variables ask
//! for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
//! `OTEL_SDK_DISABLED=true` turns it off). Without an endpoint there is no
//! exporter and the decision spans are disabled at their call site, so they
//! cost nothing. `OTEL_SERVICE_NAME` (default `celgate`),
//! `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*` and the other standard
//! variables are read by the SDK.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// The target of decision spans (and of their per-policy events).
pub const DECISION_TARGET: &str = "celgate::decision";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {message}")]
    Filter { filter: String, message: String },
    #[error("cannot start the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Flushes and stops the exporter when dropped (or on [`Guard::shutdown`]).
#[derive(Debug, Default)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Whether decision spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops. Call outside any Tokio runtime.
    pub fn shutdown(mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("celgate: flushing traces: {e}");
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether the environment asks for trace export.
pub fn export_requested() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v != "none")
}

/// Installs the global subscriber: human or JSON logs on stderr filtered by
/// `filter`, and, when `may_export` (the server) and the environment asks
/// for one, the OTLP exporter. The other commands never export: a container
/// health check run every few seconds must not start an exporter each time.
pub fn init(filter: &str, json: bool, may_export: bool) -> Result<Guard, TelemetryError> {
    let mut guard = Guard::default();
    let otel = if may_export && export_requested() {
        let provider = provider()?;
        let tracer = provider.tracer("celgate");
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        guard.provider = Some(provider);
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target(DECISION_TARGET, tracing::Level::TRACE);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(targets)
                .boxed(),
        )
    } else {
        None
    };
    subscriber(filter, json, otel)?
        .try_init()
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    Ok(guard)
}

type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The log layer, and the exporter's layer when there is one. Without an
/// exporter no layer is there to take a decision span, so the span is
/// disabled at its call site (a `None` layer in the stack would instead
/// count as one that wants every span).
fn subscriber(
    filter: &str,
    json: bool,
    otel: Option<BoxedLayer>,
) -> Result<impl tracing::Subscriber + Send + Sync, TelemetryError> {
    // Decision spans are for the exporter, never for the log lines.
    let directives = format!("{filter},{DECISION_TARGET}=off");
    let env_filter = tracing_subscriber::EnvFilter::try_new(&directives).map_err(|e| {
        TelemetryError::Filter {
            filter: filter.to_owned(),
            message: e.to_string(),
        }
    })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(CappedStderr { json })
        .with_ansi(ansi);
    let mut layers: Vec<BoxedLayer> = vec![if json {
        fmt.json().with_filter(env_filter).boxed()
    } else {
        fmt.with_filter(env_filter).boxed()
    }];
    layers.extend(otel);
    Ok(tracing_subscriber::registry().with(layers))
}

fn provider() -> Result<SdkTracerProvider, TelemetryError> {
    // The SDK's batch processor exports from its own OS thread, but the
    // tonic exporter needs a Tokio reactor: give it a runtime of its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("celgate-otlp")
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let exporter = {
        let _enter = rt.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?
    };
    let resource = if env_set("OTEL_SERVICE_NAME") {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name("celgate").build()
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: exporter,
            rt,
        })
        .with_resource(resource)
        .build())
}

/// A span exporter driven on a runtime it owns.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    rt: tokio::runtime::Runtime,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // Called on the batch processor's thread, outside any runtime.
        let result = self.rt.block_on(self.inner.export(batch));
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The longest log line written, in bytes (newline included). Messages are
/// short by construction (errors are logged as a field and a kind); this is
/// the backstop that keeps one request from writing a line of any size.
pub const MAX_LOG_LINE: usize = 8 * 1024;

/// Standard error, one event per write, each line cut to [`MAX_LOG_LINE`].
struct CappedStderr {
    json: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CappedStderr {
    type Writer = CappedLine;
    fn make_writer(&'a self) -> CappedLine {
        CappedLine {
            json: self.json,
            buf: Vec::new(),
        }
    }
}

/// One formatted event, written (capped) when dropped.
struct CappedLine {
    json: bool,
    buf: Vec<u8>,
}

impl std::io::Write for CappedLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CappedLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        let line = cap_line(line, self.json, MAX_LOG_LINE);
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &line);
    }
}

/// `line` (one event, ending in a newline) within `max` bytes: JSON lines
/// stay valid JSON (long strings shortened, else only the level, time,
/// target and a note), text lines are cut with a note.
fn cap_line(line: Vec<u8>, json: bool, max: usize) -> Vec<u8> {
    if line.len() <= max {
        return line;
    }
    let total = line.len();
    if json {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&line) {
            shorten_strings(&mut v, 256);
            if let Some(o) = v.as_object_mut() {
                o.insert("truncatedBytes".into(), total.into());
            }
            let mut out = v.to_string().into_bytes();
            out.push(b'\n');
            if out.len() <= max {
                return out;
            }
            let keep = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
            let mut out = serde_json::json!({
                "timestamp": keep("timestamp"),
                "level": keep("level"),
                "target": keep("target"),
                "fields": {"message": "log line cut: over the length limit"},
                "truncatedBytes": total,
            })
            .to_string()
            .into_bytes();
            out.push(b'\n');
            return out;
        }
    }
    let note = format!(" ... [log line cut: {total} bytes]\n");
    let mut end = max.saturating_sub(note.len());
    // Not inside a UTF-8 sequence.
    while end > 0 && (line[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    let mut out = line[..end].to_vec();
    out.extend_from_slice(note.as_bytes());
    out
}

fn shorten_strings(v: &mut serde_json::Value, max: usize) {
    match v {
        serde_json::Value::String(s) if s.len() > max => {
            let mut end = max;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push_str("...");
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| shorten_strings(x, max)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| shorten_strings(x, max)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::cap_line;

    #[test]
    fn without_an_exporter_decision_spans_are_disabled() {
        let sub = super::subscriber("debug", false, None).unwrap();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!(target: super::DECISION_TARGET, "ext_authz check");
            assert!(span.is_disabled());
            let other = tracing::info_span!("a log span");
            assert!(
                !other.is_disabled(),
                "the log layer still takes its own spans"
            );
        });
    }

    #[test]
    fn with_an_exporter_layer_decision_spans_are_recorded() {
        use tracing_subscriber::Layer as _;
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target(super::DECISION_TARGET, tracing::Level::TRACE);
        let layer = tracing_subscriber::layer::Identity::new()
            .with_filter(targets)
            .boxed();
        let sub = super::subscriber("info", false, Some(layer)).unwrap();
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!(target: super::DECISION_TARGET, "ext_authz check");
            assert!(!span.is_disabled());
        });
    }

    #[test]
    fn short_lines_pass_unchanged() {
        let l = b"2026-01-01 INFO hello\n".to_vec();
        assert_eq!(cap_line(l.clone(), false, 100), l);
        assert_eq!(cap_line(l.clone(), true, 100), l);
    }

    #[test]
    fn long_text_lines_are_cut_on_a_character_boundary() {
        let line = format!("WARN {}\n", "é".repeat(5000)).into_bytes();
        let out = cap_line(line, false, 1000);
        assert!(out.len() <= 1000, "{}", out.len());
        let text = String::from_utf8(out).expect("still UTF-8");
        assert!(text.ends_with("[log line cut: 10006 bytes]\n"), "{text}");
    }

    #[test]
    fn long_json_lines_stay_one_valid_json_object() {
        let big = "x".repeat(100_000);
        for (fields, kept) in [
            (serde_json::json!({"message": "m", "body": big}), true),
            (
                serde_json::json!({"message": "m", "many": vec!["x"; 100_000]}),
                false,
            ),
        ] {
            let line = format!(
                "{}\n",
                serde_json::json!({"timestamp": "t", "level": "WARN", "target": "celgate", "fields": fields})
            );
            let out = cap_line(line.into_bytes(), true, 8192);
            assert!(out.len() <= 8192, "{}", out.len());
            assert_eq!(out.last(), Some(&b'\n'));
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(v["level"], "WARN");
            assert!(v["truncatedBytes"].as_u64().unwrap() > 100_000);
            assert_eq!(v["fields"]["message"] == "m", kept, "{v}");
        }
    }
}
