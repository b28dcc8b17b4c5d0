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
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = if json {
        fmt.json().with_filter(env_filter).boxed()
    } else {
        fmt.with_filter(env_filter).boxed()
    };
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
                .with_filter(targets),
        )
    } else {
        None
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    Ok(guard)
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
