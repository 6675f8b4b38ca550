//! NATS as deployed (TLS, a user per fleet certificate, the permissions of
//! `deploy/nats/auth.conf`) lets each service do what it needs and nothing
//! else: a client without a fleet certificate does not get in at all;
//! smtp-ingress's certificate publishes jobs but cannot take them off the
//! queue, reconfigure it or publish events; a gateway's publishes nothing.
//! What the services need is proven by the other system tests, which run
//! the real services against such a server.
//!
//! A refused publish or subscription is what the server answers
//! (`-ERR 'Permissions Violation for Publish to "…"'`), awaited here.

use std::time::Duration;

use async_nats::jetstream;
use system::nats::{NatsCluster, Pki};
use tokio::sync::mpsc;

/// How long the server's answer may take.
const ANSWER: Duration = Duration::from_secs(10);

struct Nats {
    _dir: tempfile::TempDir,
    pki: Pki,
    server: NatsCluster,
}

async fn nats() -> Nats {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::create(&dir.path().join("pki"));
    let server = NatsCluster::single(&dir.path().join("nats"), &pki).await;
    Nats { _dir: dir, pki, server }
}

/// A client as identity `name`, with the server's errors in `errors`.
struct Client {
    name: String,
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn connect_as(nats: &Nats, name: &str) -> Client {
    let tls = nats.pki.nats_tls(name).client_config().expect("TLS settings").expect("TLS on");
    let (tx, errors) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(tls)
        .custom_inbox_prefix(format!("_INBOX.{name}"))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.server.url())
        .await
        .unwrap_or_else(|e| panic!("{name} connects: {e}"));
    Client { name: name.to_string(), client, errors }
}

impl Client {
    /// The server refuses `what` ("Publish", "Subscription") to `subject`.
    async fn refused(&mut self, what: &str, subject: &str) {
        let want = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
        let found = tokio::time::timeout(ANSWER, async {
            while let Some(error) = self.errors.recv().await {
                if error.to_lowercase().contains(&want) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(found == Ok(true), "{}: no refusal of {what} to {subject}", self.name);
    }

    async fn cannot_publish(&mut self, subject: &str) {
        self.client.publish(subject.to_string(), "x".into()).await.expect("sent");
        self.client.flush().await.expect("flushed");
        self.refused("Publish", subject).await;
    }

    async fn cannot_subscribe(&mut self, subject: &str) {
        let _sub = self.client.subscribe(subject.to_string()).await.expect("sent");
        self.refused("Subscription", subject).await;
    }
}

/// The queue stream as delivery-queue creates it.
async fn queue_stream(nats: &Nats) -> jetstream::stream::Stream {
    let js = jetstream::new(connect_as(nats, "delivery-queue").await.client);
    mailfleet_runtime::nats::ensure_stream(
        &js,
        mailfleet_runtime::nats::work_queue("MAIL_QUEUE", "mail.queue.jobs", 1),
    )
    .await
    .expect("delivery-queue creates the queue stream");
    js.get_stream("MAIL_QUEUE").await.expect("the stream")
}

#[tokio::test]
async fn without_a_fleet_certificate_nothing_gets_in() {
    let nats = nats().await;
    let url = nats.server.url();
    let try_connect = |options: async_nats::ConnectOptions| {
        let url = url.clone();
        async move { options.connection_timeout(ANSWER).connect(url).await }
    };
    // No TLS, no certificate: the server wants TLS.
    assert!(try_connect(async_nats::ConnectOptions::new()).await.is_err(), "anonymous plain client refused");
    // TLS that trusts the fleet CA, but no client certificate.
    let ca = nats.pki.dir.join("ca.crt");
    let no_cert = async_nats::ConnectOptions::new().require_tls(true).add_root_certificates(ca.clone());
    assert!(try_connect(no_cert).await.is_err(), "a client without a certificate is refused");
    // A certificate named smtp-ingress from another CA.
    let other = Pki::create(&nats.pki.dir.join("other-ca"));
    let forged = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(other.nats_tls("smtp-ingress").client_config().expect("tls").expect("on"))
        .add_root_certificates(ca);
    assert!(try_connect(forged).await.is_err(), "a certificate from another CA is refused");
    // A fleet certificate whose name is no NATS user.
    nats.pki.issue("intruder");
    let stranger = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(nats.pki.nats_tls("intruder").client_config().expect("tls").expect("on"));
    match try_connect(stranger).await {
        Ok(_) => panic!("a certificate naming no user is refused"),
        Err(e) => assert!(e.to_string().to_lowercase().contains("authorization"), "{e}"),
    }
    // pop3-gateway does not use NATS: its certificate is no NATS user.
    let pop3 = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(nats.pki.nats_tls("pop3-gateway").client_config().expect("tls").expect("on"));
    assert!(try_connect(pop3).await.is_err(), "pop3-gateway has no NATS user");
}

#[tokio::test]
async fn smtp_ingress_publishes_jobs_and_nothing_else() {
    let nats = nats().await;
    let mut stream = queue_stream(&nats).await;
    let mut smtp = connect_as(&nats, "smtp-ingress").await;
    let js = jetstream::new(smtp.client.clone());
    let ack = js.publish("mail.queue.jobs", "job".into()).await.expect("sent").await.expect("JetStream stored the job");
    assert_eq!(ack.stream, "MAIL_QUEUE");

    // It cannot take jobs off the queue, or reconfigure, purge or delete it.
    for subject in [
        "$JS.API.CONSUMER.CREATE.MAIL_QUEUE.delivery",
        "$JS.API.CONSUMER.MSG.NEXT.MAIL_QUEUE.delivery",
        "$JS.API.STREAM.UPDATE.MAIL_QUEUE",
        "$JS.API.STREAM.PURGE.MAIL_QUEUE",
        "$JS.API.STREAM.DELETE.MAIL_QUEUE",
        "$JS.API.STREAM.MSG.GET.MAIL_QUEUE",
    ] {
        smtp.cannot_publish(subject).await;
    }
    // Nor publish events, relay jobs or the queue's state.
    for subject in ["mail.events.1", "mail.relay.jobs", "$KV.MAIL_QUEUE_STATE.x"] {
        smtp.cannot_publish(subject).await;
    }
    // Nor read events, or the replies JetStream sends delivery-queue.
    for subject in ["mail.events.>", "_INBOX.delivery-queue.>", ">"] {
        smtp.cannot_subscribe(subject).await;
    }
    assert_eq!(stream.info().await.expect("stream info").state.messages, 1, "the job is still queued");
}

#[tokio::test]
async fn gateways_only_listen_and_storage_only_announces() {
    let nats = nats().await;
    let _stream = queue_stream(&nats).await;
    let mut imap = connect_as(&nats, "imap-gateway").await;
    let mut events = imap.client.subscribe("mail.events.>").await.expect("subscribed");
    imap.client.flush().await.expect("flushed");
    let mut storage = connect_as(&nats, "storage").await;
    storage.client.publish("mail.events.42", "changed".into()).await.expect("sent");
    let event = tokio::time::timeout(ANSWER, futures_next(&mut events)).await.expect("the event arrives");
    assert_eq!(event.subject.as_str(), "mail.events.42");

    for subject in ["mail.queue.jobs", "mail.events.42", "$JS.API.INFO", "$JS.API.STREAM.INFO.MAIL_QUEUE"] {
        imap.cannot_publish(subject).await;
    }
    for subject in ["mail.queue.jobs", "_INBOX.>", "$JS.ACK.>"] {
        imap.cannot_subscribe(subject).await;
    }
    // Storage announces; it does not queue or relay mail.
    for subject in ["mail.queue.jobs", "mail.relay.jobs", "$JS.API.CONSUMER.CREATE.MAIL_QUEUE.delivery"] {
        storage.cannot_publish(subject).await;
    }
    // delivery-queue does not make events.
    let mut queue = connect_as(&nats, "delivery-queue").await;
    queue.cannot_publish("mail.events.42").await;
    queue.cannot_subscribe("mail.events.>").await;
}

async fn futures_next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    use tokio_stream::StreamExt;
    sub.next().await.expect("subscription open")
}
