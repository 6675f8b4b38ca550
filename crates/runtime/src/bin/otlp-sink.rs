//! `otlp-sink`: an OTLP/gRPC receiver that writes what it receives to
//! standard output, one line per span and per metric data point. It stands
//! in for the OpenTelemetry Collector where no collector image can be had
//! (`deploy/compose.offline.yml`, no registry): every service exports to it
//! exactly as to the collector, and the compose test reads its log.
//!
//! ```text
//! span trace=<hex> span=<hex> parent=<hex or -> service=<service.name> name=<span name>
//! metric service=<service.name> instance=<service.instance.id> name=<metric> <attr>=<value>... value=<number>
//! ```
//!
//! Usage: `otlp-sink [LISTEN]` (default `0.0.0.0:4317`). Logs are accepted
//! and dropped. SIGTERM ends it at once (it holds nothing).

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::resource::v1::Resource;

/// A string attribute of a resource or data point, as one word: spaces
/// would split the line's `key=value` fields.
fn attr(attrs: &[KeyValue], key: &str) -> String {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(value_word)
        .unwrap_or_else(|| "-".into())
}

fn value_word(value: &Value) -> String {
    let text = match value {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        _ => "?".into(),
    };
    text.chars().map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c }).collect()
}

fn resource_attr(resource: Option<&Resource>, key: &str) -> String {
    resource.map(|r| attr(&r.attributes, key)).unwrap_or_else(|| "-".into())
}

fn hex_or_dash(bytes: &[u8]) -> String {
    if bytes.is_empty() { "-".into() } else { bytes.iter().map(|b| format!("{b:02x}")).collect() }
}

/// Writes the lines at once: a reader of the container log must see a span
/// as soon as it was exported.
fn emit(lines: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (log driver gone) is no reason to fail the exporter.
    let _ = out.write_all(lines.as_bytes());
    let _ = out.flush();
}

#[derive(Clone, Copy)]
struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut lines = String::new();
        for rs in request.into_inner().resource_spans {
            let service = resource_attr(rs.resource.as_ref(), "service.name");
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let name: String = span.name.chars().map(|c| if c.is_control() { '_' } else { c }).collect();
                lines.push_str(&format!(
                    "span trace={} span={} parent={} service={service} name={name}\n",
                    hex_or_dash(&span.trace_id),
                    hex_or_dash(&span.span_id),
                    hex_or_dash(&span.parent_span_id),
                ));
            }
        }
        emit(&lines);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut lines = String::new();
        for rm in request.into_inner().resource_metrics {
            let service = resource_attr(rm.resource.as_ref(), "service.name");
            let instance = resource_attr(rm.resource.as_ref(), "service.instance.id");
            for metric in rm.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let points = match metric.data {
                    Some(Data::Sum(sum)) => sum.data_points,
                    Some(Data::Gauge(gauge)) => gauge.data_points,
                    // Histograms: only their presence matters to a reader here.
                    _ => continue,
                };
                for point in points {
                    let value = match point.value {
                        Some(number_data_point::Value::AsDouble(d)) => d.to_string(),
                        Some(number_data_point::Value::AsInt(i)) => i.to_string(),
                        None => continue,
                    };
                    let mut line = format!("metric service={service} instance={instance} name={}", metric.name);
                    for kv in &point.attributes {
                        if let Some(v) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            line.push_str(&format!(" {}={}", kv.key, value_word(v)));
                        }
                    }
                    line.push_str(&format!(" value={value}\n"));
                    lines.push_str(&line);
                }
            }
        }
        emit(&lines);
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportLogsServiceResponse { partial_success: None }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::args().nth(1).as_deref().unwrap_or("0.0.0.0:4317").parse()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    eprintln!("otlp-sink: listening on {listen}");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink))
        .add_service(MetricsServiceServer::new(Sink))
        .add_service(LogsServiceServer::new(Sink))
        .serve_with_shutdown(listen, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
