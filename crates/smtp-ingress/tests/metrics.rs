//! smtp-ingress and delivery-queue export the metrics the Grafana dashboard
//! reads: an in-process OTLP collector (opentelemetry-proto's tonic stubs) on
//! 127.0.0.1:0, `telemetry::init` pointed at it, then one message through the
//! real system. Telemetry is process-global, so this binary holds exactly one
//! test.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::{Mail, Raw, expect};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, number_data_point};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Latest value per "metric{attr=value,...}": sums and gauges by value,
/// histograms by their count of observations (cumulative, so the last
/// export is the total).
#[derive(Default, Clone)]
struct Collector(Arc<Mutex<HashMap<String, i64>>>);

fn key(name: &str, attributes: &[KeyValue]) -> String {
    let mut attrs: Vec<String> = attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            format!("{}={v}", kv.key)
        })
        .collect();
    attrs.sort();
    format!("{name}{{{}}}", attrs.join(","))
}

fn number(p: &NumberDataPoint) -> Option<i64> {
    match p.value {
        Some(number_data_point::Value::AsInt(i)) => Some(i),
        Some(number_data_point::Value::AsDouble(d)) => Some(d as i64),
        None => None,
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut seen = self.0.lock().expect("lock");
        let metrics =
            request.into_inner().resource_metrics.into_iter().flat_map(|r| r.scope_metrics).flat_map(|s| s.metrics);
        for m in metrics {
            let points: Vec<(String, i64)> = match &m.data {
                Some(Data::Sum(sum)) => {
                    sum.data_points.iter().filter_map(|p| Some((key(&m.name, &p.attributes), number(p)?))).collect()
                }
                Some(Data::Gauge(g)) => {
                    g.data_points.iter().filter_map(|p| Some((key(&m.name, &p.attributes), number(p)?))).collect()
                }
                Some(Data::Histogram(h)) => {
                    h.data_points.iter().map(|p| (key(&m.name, &p.attributes), p.count as i64)).collect()
                }
                _ => Vec::new(),
            };
            seen.extend(points);
        }
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_through_the_system_is_counted_as_the_dashboard_expects() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let otlp = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // SAFETY: this binary has one test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"));
    }
    let guard = mailfleet_runtime::telemetry::init("smtp-ingress");

    let mut mail = Mail::start_with(|c| c.inbound_auth.enabled = false).await;
    // One failed AUTH on submission (plain text is allowed on loopback).
    let mut sub = Raw::connect(mail.submission()).await;
    expect(&sub.cmd("EHLO laptop").await, "250");
    let wrong = base64::engine::general_purpose::STANDARD.encode("\0alice@example.org\0wrong");
    expect(&sub.cmd(&format!("AUTH PLAIN {wrong}")).await, "535");
    expect(&sub.cmd("QUIT").await, "221");
    // One message on the MX port, delivered.
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO client.test").await, "250");
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    expect(&c.cmd("Subject: counted\r\n\r\nx\r\n.").await, "250 2.0.0");
    expect(&c.cmd("QUIT").await, "221");
    mail.wait_inbox(&mail.alice, 1, Duration::from_secs(30)).await;
    let stream = mail.queue_config().stream;
    mail.stop_ingress().await;
    mail.stop_queue().await;

    // Dropping the guard exports the final (cumulative) values.
    tokio::task::spawn_blocking(move || drop(guard)).await.expect("telemetry shutdown");
    let want = [
        ("mailfleet.smtp.messages.received{listener=mx}".to_string(), Some(1)),
        ("mailfleet.connections{listener=mx,protocol=smtp}".to_string(), Some(1)),
        ("mailfleet.connections{listener=submission,protocol=smtp}".to_string(), Some(1)),
        ("mailfleet.connections.active{protocol=smtp}".to_string(), Some(0)),
        ("mailfleet.auth.failures{protocol=smtp}".to_string(), Some(1)),
        ("mailfleet.queue.messages.delivered{outcome=delivered}".to_string(), Some(1)),
        ("mailfleet.queue.delivery.duration{}".to_string(), Some(1)),
        // Sampled every few seconds: present, whatever the backlog was then.
        (format!("mailfleet.queue.depth{{stream={stream}}}"), None),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = collector.0.lock().expect("lock").clone();
        if want.iter().all(|(k, v)| match v {
            Some(v) => seen.get(k) == Some(v),
            None => seen.contains_key(k),
        }) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "collector saw {seen:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
