//! A minimal OTLP/gRPC trace receiver.
//!
//! - Load tests of the tracing path: accepts every export, counts spans,
//!   prints the count every 5 s on standard error (`cargo run --release --example otlp_sink -- 127.0.0.1:4317`).
//! - The local demo's trace backend (`examples/local-demo.sh`): with `--print`,
//!   also writes one JSON line per span on standard output: trace and span
//!   ids, parent, service, name and attributes, so a request's spans from
//!   Envoy and celgate can be followed by trace id.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Default, Clone)]
struct Sink {
    spans: Arc<AtomicU64>,
    print: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> serde_json::Value {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.as_str().into(),
        Some(AnyValue::BoolValue(b)) => (*b).into(),
        Some(AnyValue::IntValue(i)) => (*i).into(),
        Some(AnyValue::DoubleValue(d)) => (*d).into(),
        Some(other) => format!("{other:?}").into(),
        None => serde_json::Value::Null,
    }
}

fn attributes(kvs: &[KeyValue]) -> serde_json::Map<String, serde_json::Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(&kv.value)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut lines = String::new();
        let mut n = 0u64;
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                n += 1;
                if self.print {
                    let line = serde_json::json!({
                        "trace": hex(&span.trace_id),
                        "span": hex(&span.span_id),
                        "parent": hex(&span.parent_span_id),
                        "service": service,
                        "name": span.name,
                        "duration_us": span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) / 1000,
                        "attributes": attributes(&span.attributes),
                    });
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                }
            }
        }
        self.spans.fetch_add(n, Ordering::Relaxed);
        if !lines.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(lines.as_bytes());
            let _ = out.flush();
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = "127.0.0.1:4317".to_string();
    let mut print = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--print" => print = true,
            a if a.starts_with('-') => return Err(format!("unknown option {a}").into()),
            a => addr = a.to_string(),
        }
    }
    let sink = Sink {
        print,
        ..Default::default()
    };
    let spans = sink.spans.clone();
    tokio::spawn(async move {
        if print {
            return;
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            eprintln!("otlp_sink: {} spans", spans.load(Ordering::Relaxed));
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve(addr.parse()?)
        .await?;
    Ok(())
}
