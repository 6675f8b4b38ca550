//! Running smtp-ingress behind a load balancer and restarting it: PROXY
//! protocol, the health endpoint and graceful shutdown, end to end against
//! storage, JetStream and delivery-queue on loopback.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Mail, Raw, expect, strip_trace};
use mailfleet_runtime::proxy::{ProxyProtocol, encode_v2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

/// Connect as a load balancer does: a PROXY v2 header naming `client` first.
async fn connect_proxied(addr: SocketAddr, client: &str) -> Raw {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&encode_v2(client.parse().expect("client address"), addr)).await.expect("header");
    let mut raw = Raw::from_stream(tcp);
    expect(&raw.reply().await, "220 ");
    raw
}

async fn http_get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect to health");
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn message_in_data_finishes_during_shutdown_and_idle_sessions_get_421() {
    let mut mail = Mail::start().await;
    let mx = mail.mx();
    let mut idle = Raw::connect(mx).await;
    expect(&idle.cmd("EHLO idle.test").await, "250");

    let mut sending = Raw::connect(mx).await;
    expect(&sending.cmd("EHLO busy.test").await, "250");
    expect(&sending.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&sending.cmd("RCPT TO:<alice@example.org>").await, "250");
    expect(&sending.cmd("DATA").await, "354");
    sending.send(b"Subject: sent across a restart\r\n\r\nfirst half\r\n").await;

    let mut chunked = Raw::connect(mx).await;
    expect(&chunked.cmd("EHLO chunks.test").await, "250");
    expect(&chunked.cmd("MAIL FROM:<y@remote.test>").await, "250");
    expect(&chunked.cmd("RCPT TO:<bob@example.org>").await, "250");
    chunked.send(b"BDAT 26\r\nSubject: chunked restart\r\n").await;
    expect(&chunked.reply().await, "250 2.0.0 26 octets");

    // SIGTERM.
    let (running, token) = mail.ingress.take().expect("ingress running");
    token.cancel();

    // RFC 5321 §3.8: the idle session is told, and closed.
    expect(&idle.reply().await, "421 4.3.2");
    assert_eq!(idle.rest().await, "");
    // No new connections once the listener is closed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(mx).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "listener still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The message in DATA completes and gets its real reply, then the 421.
    sending.send(b"second half\r\n.\r\n").await;
    expect(&sending.reply().await, "250 2.0.0 Ok: queued as ");
    expect(&sending.reply().await, "421 4.3.2");
    // So does the BDAT transfer that had begun.
    chunked.send(b"BDAT 13 LAST\r\n\r\nchunk two\r\n").await;
    expect(&chunked.reply().await, "250 2.0.0 Ok: queued as ");
    expect(&chunked.reply().await, "421 4.3.2");

    tokio::time::timeout(WAIT, running.task).await.expect("ingress stops once sessions are done").expect("task");
    let alice = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    assert!(
        String::from_utf8_lossy(&alice[0])
            .ends_with("Subject: sent across a restart\r\n\r\nfirst half\r\nsecond half\r\n")
    );
    let bob = mail.wait_inbox(&mail.bob, 1, WAIT).await;
    assert!(String::from_utf8_lossy(&bob[0]).ends_with("Subject: chunked restart\r\n\r\nchunk two\r\n"));
}

#[tokio::test]
async fn a_message_still_arriving_after_the_grace_period_gets_421_and_is_not_delivered() {
    let mut mail = Mail::start_with(|c| c.connection.shutdown_grace = Duration::from_millis(300)).await;
    let mut slow = Raw::connect(mail.mx()).await;
    expect(&slow.cmd("EHLO slow.test").await, "250");
    expect(&slow.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&slow.cmd("RCPT TO:<alice@example.org>").await, "250");
    expect(&slow.cmd("DATA").await, "354");
    slow.send(b"Subject: never finished\r\n\r\n").await;

    mail.stop_ingress().await;
    // The client was told to retry; nothing half-received was stored.
    expect(&slow.reply().await, "421 4.3.2");
    assert_eq!(slow.rest().await, "");
    // The ingress task has ended: nothing of it is still running.
    assert_eq!(mail.inbox_count(&mail.alice).await, 0);
    assert_eq!(mail.stream_len(&mail.queue_config().stream).await, 0);
}

#[tokio::test]
async fn proxy_v2_from_a_trusted_balancer_names_the_client_in_received() {
    let mail = Mail::start_with(|c| {
        c.connection.proxy_protocol = ProxyProtocol { enabled: true, trusted: vec!["127.0.0.0/8".into()] };
        c.connection.proxy_header_timeout = Duration::from_millis(500);
    })
    .await;
    let mut c = connect_proxied(mail.mx(), "203.0.113.7:40025").await;
    expect(&c.cmd("EHLO client.example.net").await, "250");
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    let original = b"Subject: through the balancer\r\n\r\nhello\r\n";
    c.send(original).await;
    expect(&c.cmd(".").await, "250 2.0.0");
    expect(&c.cmd("QUIT").await, "221");

    let inbox = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    let trace = strip_trace(&inbox[0], original);
    // RFC 5321 §4.4: the address the client connected from, not the balancer's.
    assert!(trace.contains("Received: from client.example.net ([203.0.113.7])\r\n"), "{trace}");
    assert!(!trace.contains("127.0.0.1"), "{trace}");

    // Submission listeners read the header too; the remote client is not
    // on loopback, so no AUTH in clear text for it.
    let mut sub = connect_proxied(mail.submission(), "198.51.100.3:50000").await;
    let ehlo = sub.cmd("EHLO laptop").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");

    // Implicit TLS (RFC 8314): the header comes first, then the handshake.
    let tls_session = r#"
import socket, ssl, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(bytes.fromhex(sys.argv[2]))
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s)
f = t.makefile("rb")
print(f.readline().decode().strip())
t.sendall(b"EHLO laptop\r\n")
while True:
    line = f.readline().decode().strip()
    print(line)
    if line[3:4] == " ":
        break
"#;
    let submissions = mail.submissions();
    let header: String = encode_v2("198.51.100.4:50001".parse().expect("addr"), submissions)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = mail.python(tls_session, &[submissions.port().to_string(), header]).await;
    assert!(out.starts_with("220 mx.example.org "), "{out}");
    assert!(out.contains("250-AUTH PLAIN LOGIN") || out.contains("250 AUTH PLAIN LOGIN"), "{out}");

    // A trusted peer must send a header: without one it is closed before
    // any greeting, after proxy_header_timeout.
    let mut bare = Raw::from_stream(TcpStream::connect(mail.mx()).await.expect("connect"));
    bare.send(b"EHLO sneaky\r\n").await;
    assert_eq!(bare.rest().await, "", "no greeting without a PROXY header");
    let mut silent = Raw::from_stream(TcpStream::connect(mail.mx()).await.expect("connect"));
    assert_eq!(silent.rest().await, "");
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_refused() {
    let mail = Mail::start_with(|c| {
        c.connection.proxy_protocol = ProxyProtocol { enabled: true, trusted: vec!["192.0.2.0/24".into()] };
    })
    .await;
    for header in [
        encode_v2("203.0.113.7:1".parse().expect("addr"), mail.mx()),
        b"PROXY TCP4 203.0.113.7 127.0.0.1 1 25\r\n".to_vec(),
    ] {
        let mut c = Raw::connect(mail.mx()).await;
        c.send(&header).await;
        c.send(b"EHLO after.header\r\n").await;
        expect(&c.reply().await, "554 5.7.0");
        assert_eq!(c.rest().await, "");
    }
    // An ordinary client from the same untrusted address is served.
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO plain").await, "250");
}

#[tokio::test]
async fn health_endpoints_serve_until_shutdown() {
    let mut mail = Mail::start_with(|c| c.connection.health_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let health = mail.ingress.as_ref().and_then(|(r, _)| r.health_addr).expect("health endpoint configured");
    let ok = http_get(health).await;
    assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
    mail.stop_ingress().await;
    assert!(TcpStream::connect(health).await.is_err(), "health endpoint closed on shutdown");

    // delivery-queue has one too.
    mail.stop_queue().await;
    let mut config = mail.queue_config();
    config.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let token = tokio_util::sync::CancellationToken::new();
    let queue = delivery_queue::run(config, token.clone()).await.expect("delivery-queue starts");
    let health = queue.health_addr.expect("health endpoint configured");
    let ok = http_get(health).await;
    assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
    token.cancel();
    tokio::time::timeout(WAIT, queue.task).await.expect("queue stops").expect("task");
    assert!(TcpStream::connect(health).await.is_err(), "health endpoint closed on shutdown");
}

/// Jobs of the queue's consumer delivered to a worker and not yet
/// acknowledged (in flight, NAKed, or waiting out ack_wait).
async fn queue_in_flight(mail: &Mail) -> usize {
    let config = mail.queue_config();
    let js = async_nats::jetstream::new(mail.env.nats().await);
    let stream = js.get_stream(&config.stream).await.expect("stream");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&config.consumer).await.expect("consumer");
    consumer.info().await.expect("consumer info").num_ack_pending
}

async fn send_pipelined(mail: &Mail, connections: usize, per_connection: usize) {
    let addr = mail.mx();
    let mut tasks = Vec::new();
    for conn in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            expect(&c.cmd("EHLO load.test").await, "250");
            for n in 0..per_connection {
                c.send(b"MAIL FROM:<load@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n").await;
                expect(&c.reply().await, "250");
                expect(&c.reply().await, "250");
                expect(&c.reply().await, "354");
                c.send(format!("Subject: restart {conn}-{n}\r\n\r\nx\r\n.\r\n").as_bytes()).await;
                expect(&c.reply().await, "250 2.0.0");
            }
            expect(&c.cmd("QUIT").await, "221");
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
}

#[tokio::test]
async fn queue_stopped_with_jobs_in_flight_loses_and_duplicates_nothing() {
    const TOTAL: usize = 200;
    let mut mail = Mail::start_with(|c| c.inbound_auth.enabled = false).await;
    mail.stop_queue().await;
    send_pipelined(&mail, 10, TOTAL / 10).await;
    let stream = mail.queue_config().stream;
    assert_eq!(mail.stream_len(&stream).await, TOTAL as u64);

    // Stop the worker while it is busy (SIGTERM during a backlog).
    mail.start_queue().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while queue_in_flight(&mail).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "worker never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopping = std::time::Instant::now();
    mail.stop_queue().await;
    let stop_took = stopping.elapsed();

    // Every job that left the stream (was acked) is in the mailbox: acked
    // only after storage committed.
    let delivered = mail.inbox_count(&mail.alice).await;
    let waiting = mail.stream_len(&stream).await as usize;
    assert_eq!(delivered + waiting, TOTAL, "delivered {delivered} + waiting {waiting}");
    eprintln!("queue stopped in {stop_took:?} with {delivered} delivered and {waiting} waiting");

    // The next worker delivers the rest, each message exactly once; within
    // WAIT, so none was left to wait out the 5-minute ack_wait.
    mail.start_queue().await;
    let inbox = mail.wait_inbox(&mail.alice, TOTAL, WAIT).await;
    let mut subjects: Vec<String> = inbox
        .iter()
        .filter_map(|m| {
            String::from_utf8_lossy(m).lines().find(|l| l.starts_with("Subject: restart")).map(str::to_string)
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!((inbox.len(), subjects.len()), (TOTAL, TOTAL), "every message exactly once");
}

#[tokio::test]
async fn a_job_stuck_past_the_grace_period_is_given_back_at_once() {
    let mut mail = Mail::start().await;
    mail.stop_queue().await;
    send_pipelined(&mail, 1, 1).await;

    // A storage that accepts connections and never answers: the delivery hangs.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut config = mail.queue_config();
    config.storage_url = format!("https://{}", black_hole.local_addr().expect("addr"));
    config.shutdown_grace = Duration::from_millis(300);
    let token = tokio_util::sync::CancellationToken::new();
    let stuck = delivery_queue::run(config, token.clone()).await.expect("delivery-queue starts");
    let deadline = tokio::time::Instant::now() + WAIT;
    while queue_in_flight(&mail).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    tokio::time::timeout(WAIT, stuck.task).await.expect("stops after the grace period").expect("task");
    assert_eq!(mail.stream_len(&mail.queue_config().stream).await, 1, "the job is still queued");

    // ack_wait is 5 minutes: delivery within WAIT shows the job was given
    // back (NAK) rather than left to time out.
    mail.start_queue().await;
    let inbox = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    assert_eq!(inbox.len(), 1);
    drop(black_hole);
}
