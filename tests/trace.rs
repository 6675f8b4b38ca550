//! One message, one trace: the real binaries export spans by OTLP to a
//! collector of our own on loopback, and the message submitted by SMTP is
//! followed through storage (blob write), the queue publish, delivery-queue,
//! storage's delivery and its change event, to the IMAP session idling on
//! the mailbox — every span of that trace connected to one root.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use system::System;
use system::client::{Imap, Smtp};
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Debug, Clone)]
struct SpanSeen {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<SpanSeen>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                seen.push(SpanSeen {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_collector() -> (String, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let collector = Collector::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (format!("http://{addr}"), collector)
}

const SERVICES: [&str; 4] = ["smtp-ingress", "storage", "delivery-queue", "imap-gateway"];

#[tokio::test]
async fn a_submitted_message_is_one_connected_trace_from_smtp_to_the_idling_imap_session() {
    let (endpoint, collector) = start_collector().await;
    let mut sys = System::new(Some(endpoint));
    sys.start_storage().await;
    sys.add_account("alice@example.org", "alice password 1").await;
    let mut queue = sys.start_queue("queue").await;
    let mut smtp = sys.start_smtp("smtp").await;
    let mut imap = sys.start_imap("imap").await;

    let mut idler = Imap::login(imap.port("imap"), "alice@example.org", "alice password 1").await.expect("login");
    idler.ok("SELECT INBOX").await.expect("select");
    idler.idle().await.expect("idle");

    let mut sender = Smtp::connect(smtp.port("mx")).await.expect("smtp");
    let reply = sender
        .send_mail("bob@remote.test", "alice@example.org", "Subject: traced\r\n\r\nfollow me\r\n")
        .await
        .expect("send");
    assert_eq!(reply.code, 250, "{reply:?}");
    sender.quit().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = idler.next_line(deadline.saturating_duration_since(Instant::now())).await.expect("IDLE push");
        if line.ends_with("EXISTS") {
            break;
        }
    }
    idler.done().await.expect("done");
    idler.logout().await;

    // SIGTERM flushes every exporter (spans still open end at shutdown).
    imap.stop().await;
    smtp.stop().await;
    queue.stop().await;
    sys.storage().stop().await;

    let spans = collector.spans.lock().expect("lock").clone();
    // The trace that holds smtp-ingress's session and reaches the IMAP push.
    let mut by_trace: HashMap<Vec<u8>, Vec<SpanSeen>> = HashMap::new();
    for s in &spans {
        by_trace.entry(s.trace_id.clone()).or_default().push(s.clone());
    }
    let (_, trace) = by_trace
        .iter()
        .find(|(_, t)| t.iter().any(|s| s.service == "smtp-ingress") && t.iter().any(|s| s.service == "imap-gateway"))
        .unwrap_or_else(|| {
            let summary: Vec<(String, String)> = spans.iter().map(|s| (s.service.clone(), s.name.clone())).collect();
            panic!("no trace from smtp-ingress to imap-gateway; spans: {summary:?}")
        });
    let summary: Vec<String> = trace.iter().map(|s| format!("{}: {}", s.service, s.name)).collect();
    eprintln!("the message's trace has {} spans:\n  {}", trace.len(), summary.join("\n  "));
    let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    for want in SERVICES {
        assert!(services.contains(want), "{want} in the trace: {services:?}");
    }
    let names: BTreeSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "smtp session",
        "mailfleet.storage.v1.Messages/PutBlob",
        "publish mail.queue.jobs",
        "process mail.queue.jobs",
        "mailfleet.storage.v1.Messages/Deliver",
        "mail.events process",
    ] {
        assert!(names.contains(want), "span {want} in the trace: {names:?}");
    }
    // Connected: one root, and every other span's parent is in the trace.
    let ids: BTreeSet<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
    let roots: Vec<&SpanSeen> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root span: {roots:?}");
    assert_eq!(roots[0].service, "smtp-ingress", "the SMTP session starts the trace");
    for s in trace {
        assert!(
            s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_slice()),
            "span {} of {} has its parent in the trace",
            s.name,
            s.service
        );
    }
}
