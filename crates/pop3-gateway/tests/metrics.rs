//! The gateway's OpenTelemetry metrics reach an OTLP collector: an
//! in-process collector (opentelemetry-proto's tonic stubs) on 127.0.0.1:0,
//! `telemetry::init` pointed at it, then a real POP3 conversation against a
//! real storage service. Telemetry is process-global, so this binary holds
//! exactly one test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailfleet_runtime::listener::ConnectionConfig;
use mailfleet_testkit::TestEnv;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use pop3_gateway::Pop3Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Latest value per "metric{attr=value,...}" (cumulative sums: the last export is the total).
#[derive(Default, Clone)]
struct Collector(Arc<Mutex<HashMap<String, i64>>>);

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
            let Some(Data::Sum(sum)) = m.data else { continue };
            for p in sum.data_points {
                let mut attrs: Vec<String> = p
                    .attributes
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
                let value = match p.value {
                    Some(number_data_point::Value::AsInt(i)) => i,
                    Some(number_data_point::Value::AsDouble(d)) => d as i64,
                    None => continue,
                };
                seen.insert(format!("{}{{{}}}", m.name, attrs.join(",")), value);
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

async fn line(io: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(30), io.read_line(&mut l)).await.expect("reply in time").expect("read");
    l
}

async fn cmd(io: &mut BufReader<TcpStream>, c: &str) -> String {
    io.get_mut().write_all(format!("{c}\r\n").as_bytes()).await.expect("write");
    line(io).await
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
    let guard = mailfleet_runtime::telemetry::init("pop3-gateway");

    let env = TestEnv::start().await;
    env.add_account("alice@example.com", "correct horse").await;
    let shutdown = CancellationToken::new();
    let config = Pop3Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls_listen: None,
        tls_enabled: false,
        storage_url: env.storage_url(),
        identity: mailfleet_testkit::identity("pop3-gateway"),
        connection: ConnectionConfig { auth_failure_delay: Duration::from_millis(10), ..ConnectionConfig::default() },
        ..Pop3Config::default()
    };
    let gw = pop3_gateway::serve(config, shutdown.clone()).await.expect("gateway starts");

    let mut io = BufReader::new(TcpStream::connect(gw.addr).await.expect("connect"));
    assert!(line(&mut io).await.starts_with("+OK "));
    assert_eq!(cmd(&mut io, "USER alice@example.com").await, "+OK send PASS\r\n");
    assert_eq!(cmd(&mut io, "PASS wrong").await, "-ERR [AUTH] authentication failed\r\n");
    assert_eq!(cmd(&mut io, "USER alice@example.com").await, "+OK send PASS\r\n");
    assert!(cmd(&mut io, "PASS correct horse").await.starts_with("+OK"));
    assert!(cmd(&mut io, "QUIT").await.starts_with("+OK"));
    shutdown.cancel();
    gw.task.await.expect("gateway stops");

    // Dropping the guard exports the final (cumulative) values.
    tokio::task::spawn_blocking(move || drop(guard)).await.expect("telemetry shutdown");
    let want = [
        ("mailfleet.connections{listener=pop3,protocol=pop3}", 1),
        ("mailfleet.connections.active{protocol=pop3}", 0),
        ("mailfleet.pop3.commands{pop3.command=USER}", 2),
        ("mailfleet.pop3.commands{pop3.command=PASS}", 2),
        ("mailfleet.pop3.commands{pop3.command=QUIT}", 1),
        ("mailfleet.auth.failures{protocol=pop3}", 1),
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
