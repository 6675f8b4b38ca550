//! Tracing set-up. Logs go to stderr; when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, spans and metrics are also exported by OTLP/gRPC (metrics every
//! `OTEL_METRIC_EXPORT_INTERVAL` ms, 60 s by default; instruments come from
//! `opentelemetry::global::meter(..)` and are no-ops without an endpoint). W3C trace context is carried in
//! gRPC metadata and NATS headers through the helpers at the bottom.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::codegen::http;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the exporters alive; flushes spans and metrics when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let (provider, meters) = (self.provider.take(), self.meters.take());
        if provider.is_some() || meters.is_some() {
            // shutdown() blocks until the last batch is exported; do it off
            // the async worker threads.
            let _ = std::thread::spawn(move || {
                if let Some(p) = provider {
                    let _ = p.shutdown();
                }
                if let Some(m) = meters {
                    let _ = m.shutdown();
                }
            })
            .join();
        }
    }
}

/// Initialise tracing for `service`. Must be called inside a Tokio runtime
/// (the OTLP exporter is built on tonic).
pub fn init(service: &'static str) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);

    let endpoint = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.is_empty());
    // service.instance.id tells replicas apart (e.g. connections per gateway
    // replica): the container's host name under Docker, else host and pid.
    let pid = std::process::id();
    let instance = std::env::var("OTEL_SERVICE_INSTANCE_ID").unwrap_or_else(|_| match std::env::var("HOSTNAME") {
        Ok(host) => format!("{host}-{pid}"),
        Err(_) => format!("pid-{pid}"),
    });
    let resource = || {
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance.clone()))
            .build()
    };
    let provider =
        endpoint.as_ref().and_then(|_| match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => {
                Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource()).build())
            }
            Err(err) => {
                eprintln!("OTLP exporter disabled: {err}");
                None
            }
        });
    // The periodic reader runs on its own thread and honours
    // OTEL_METRIC_EXPORT_INTERVAL; shutdown() exports what is left.
    let meters =
        endpoint.as_ref().and_then(|_| match opentelemetry_otlp::MetricExporter::builder().with_tonic().build() {
            Ok(exporter) => {
                Some(SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource()).build())
            }
            Err(err) => {
                eprintln!("OTLP metrics exporter disabled: {err}");
                None
            }
        });

    let otel_layer = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let _ = tracing_subscriber::registry().with(filter).with(fmt).with(otel_layer).try_init();
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
    if let Some(m) = &meters {
        opentelemetry::global::set_meter_provider(m.clone());
    }
    TelemetryGuard { provider, meters }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);
impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);
impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Put the current span's trace context into outgoing gRPC metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// The server span of one gRPC call, named and tagged after the OTel RPC
/// semantic conventions (`rpc.system`, `rpc.service`, `rpc.method`; name
/// `package.Service/Method`), child of the caller's W3C trace context.
/// For `tonic::transport::Server::trace_fn`, so every RPC gets one.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path().trim_start_matches('/');
    // Health probes every few seconds would only bury the mail in noise.
    if path.starts_with("grpc.health.") {
        return tracing::Span::none();
    }
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    let cx = TraceContextPropagator::new().extract(&HttpExtractor(request.headers()));
    let _ = span.set_parent(cx);
    span
}

struct HttpExtractor<'a>(&'a http::HeaderMap);
impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A gRPC request carrying the current span's trace context.
pub fn grpc_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    inject_grpc(request.metadata_mut());
    request
}

/// Make `span` a child of the trace context found in incoming gRPC metadata.
pub fn link_grpc(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let cx = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    let _ = span.set_parent(cx);
}

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);
impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);
impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Put the current span's trace context into NATS message headers.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut NatsInjector(headers));
}

/// Make `span` a child of the trace context found in NATS headers.
pub fn link_nats(span: &tracing::Span, headers: &async_nats::HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&NatsExtractor(headers));
    let _ = span.set_parent(cx);
}
