//! `telemetry::init` exports spans and metrics by OTLP/gRPC: an in-process
//! collector (opentelemetry-proto's tonic server stubs) on 127.0.0.1:0
//! receives them. `init` sets process-global state, so this binary holds
//! exactly one test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Default, Clone)]
struct Collector {
    /// (service.name, span name) of every span received.
    spans: Arc<Mutex<Vec<(String, String)>>>,
    /// (service.name, metric name) of every metric received.
    metrics: Arc<Mutex<Vec<(String, String)>>>,
    /// service.instance.id of every metric batch.
    instances: Arc<Mutex<Vec<String>>>,
}

fn service_name(resource: &Option<Resource>) -> String {
    attribute(resource, "service.name")
}

fn attribute(resource: &Option<Resource>, key: &str) -> String {
    resource
        .iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = service_name(&rs.resource);
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s.name)));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().expect("lock");
        for rm in request.into_inner().resource_metrics {
            let service = service_name(&rm.resource);
            self.instances.lock().expect("lock").push(attribute(&rm.resource, "service.instance.id"));
            for sm in rm.scope_metrics {
                metrics.extend(sm.metrics.into_iter().map(|m| (service.clone(), m.name)));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .add_service(MetricsServiceServer::new(collector.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);

    // SAFETY: this binary has one test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
        std::env::set_var("OTEL_SERVICE_INSTANCE_ID", "replica-7");
    }
    let guard = mailfleet_runtime::telemetry::init("otlp-test");
    {
        let span = tracing::info_span!("otlp_test_span", answer = 42);
        let _entered = span.enter();
        tracing::info!("inside the span");
    }
    let counter = opentelemetry::global::meter("otlp-test").u64_counter("mailfleet.test.events").build();
    counter.add(3, &[KeyValue::new("kind", "test")]);

    // Dropping the guard flushes both pipelines (blocking, so off the runtime).
    tokio::task::spawn_blocking(move || drop(guard)).await.expect("shutdown");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector.spans.lock().expect("lock").clone();
        let metrics = collector.metrics.lock().expect("lock").clone();
        let span_ok = spans.contains(&("otlp-test".into(), "otlp_test_span".into()));
        let metric_ok = metrics.contains(&("otlp-test".into(), "mailfleet.test.events".into()));
        if span_ok && metric_ok {
            assert!(collector.instances.lock().expect("lock").iter().all(|i| i == "replica-7"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "collector got spans {spans:?} and metrics {metrics:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
