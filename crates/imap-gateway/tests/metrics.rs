//! imap-gateway exports the metrics the Grafana dashboard reads: an
//! in-process OTLP collector (opentelemetry-proto's tonic stubs) on
//! 127.0.0.1:0, `telemetry::init` pointed at it, then a real IMAP
//! conversation against real storage. Telemetry is process-global, so this
//! binary holds exactly one test.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailfleet_testkit::TestEnv;
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
async fn connections_commands_and_auth_failures_are_exported() {
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
    let guard = mailfleet_runtime::telemetry::init("imap-gateway");

    let mut env = TestEnv::start().await;
    env.add_account("metrics@example.org", "right-password").await;
    let mut gw = common::Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = common::Client::connect(gw.addr).await;
    assert!(c.line().await.starts_with("* OK"));
    let wrong = c.cmd("a", "LOGIN metrics@example.org wrong").await;
    assert!(wrong.last().is_some_and(|l| l.starts_with("a NO")), "{wrong:?}");
    let right = c.cmd("b", "LOGIN metrics@example.org right-password").await;
    assert!(right.last().is_some_and(|l| l.starts_with("b OK")), "{right:?}");
    let select = c.cmd("c", "SELECT INBOX").await;
    assert!(select.last().is_some_and(|l| l.starts_with("c OK")), "{select:?}");
    // Storage goes away: the client is told to come back later.
    env.stop_storage().await;
    let status = c.cmd("e", "STATUS INBOX (MESSAGES)").await;
    assert!(status.last().is_some_and(|l| l.starts_with("e NO [UNAVAILABLE]")), "{status:?}");
    let logout = c.cmd("d", "LOGOUT").await;
    assert!(logout.last().is_some_and(|l| l.starts_with("d OK")), "{logout:?}");
    assert_eq!(c.line().await, "<EOF>");
    gw.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), &mut gw.task).await.expect("gateway stops").expect("task");

    // Dropping the guard exports the final (cumulative) values.
    tokio::task::spawn_blocking(move || drop(guard)).await.expect("telemetry shutdown");
    let want = [
        ("mailfleet.connections{listener=imap,protocol=imap}", 1),
        ("mailfleet.connections.active{protocol=imap}", 0),
        ("mailfleet.auth.failures{protocol=imap}", 1),
        ("mailfleet.imap.commands{imap.command=LOGIN}", 2),
        ("mailfleet.imap.commands{imap.command=SELECT}", 1),
        ("mailfleet.imap.command.duration{imap.command=LOGIN}", 2),
        ("mailfleet.errors{error.type=dependency_unavailable}", 1),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = collector.0.lock().expect("lock").clone();
        if want.iter().all(|(k, v)| seen.get(*k) == Some(v)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "collector saw {seen:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
