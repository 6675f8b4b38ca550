//! Harness for the end-to-end tests: a TestEnv (Postgres + storage), an
//! smtp-ingress and a delivery-queue in-process, all on loopback, with stream
//! names unique to the test. Helpers read a mailbox back through storage's
//! gRPC API and speak SMTP as a raw client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use delivery_queue::{QueueConfig, RunningQueue};
use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use pb::mailboxes_client::MailboxesClient;
use pb::messages_client::MessagesClient;
use smtp_ingress::{IngressConfig, RunningIngress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub struct Mail {
    pub env: TestEnv,
    pub ingress: Option<(RunningIngress, CancellationToken)>,
    pub queue: Option<(RunningQueue, CancellationToken)>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub alice: pb::Account,
    pub bob: pb::Account,
    /// Changes to the ingress configuration made by a test before start.
    pub tweak: fn(&mut IngressConfig),
    _tmp: tempfile::TempDir,
}

impl Mail {
    /// Storage with alice@ and bob@example.org, smtp-ingress and delivery-queue.
    pub async fn start() -> Mail {
        Mail::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: fn(&mut IngressConfig)) -> Mail {
        let env = TestEnv::start().await;
        let alice = env.add_account("alice@example.org", "alice-password").await;
        let bob = env.add_account("bob@example.org", "bob-password").await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cert, key) = mailfleet_runtime::tls::generate_self_signed("localhost").expect("cert");
        let cert_file = tmp.path().join("cert.pem");
        let key_file = tmp.path().join("key.pem");
        std::fs::write(&cert_file, cert).expect("write cert");
        std::fs::write(&key_file, key).expect("write key");
        let mut mail = Mail { env, ingress: None, queue: None, cert_file, key_file, alice, bob, tweak, _tmp: tmp };
        mail.start_ingress().await;
        mail.start_queue().await;
        mail
    }

    pub fn ingress_config(&self) -> IngressConfig {
        let id = &self.env.id;
        let mut c = IngressConfig {
            hostname: "mx.example.org".into(),
            mx_listen: Some("127.0.0.1:0".parse().expect("addr")),
            submission_listen: Some("127.0.0.1:0".parse().expect("addr")),
            submissions_listen: Some("127.0.0.1:0".parse().expect("addr")),
            storage_url: self.env.storage_url(),
            identity: mailfleet_testkit::identity("smtp-ingress"),
            nats_url: self.env.nats_url.clone(),
            ..IngressConfig::default()
        };
        c.tls.cert_file = Some(self.cert_file.clone());
        c.tls.key_file = Some(self.key_file.clone());
        c.connection.auth_failure_delay = std::time::Duration::ZERO;
        c.queue.stream = format!("MAIL_QUEUE_{id}");
        c.queue.subject = format!("t{id}.queue.jobs");
        // Every DNS lookup goes to a closed loopback port: temperror, never the network.
        c.inbound_auth.nameservers = vec!["127.0.0.1:9".parse().expect("addr")];
        c.inbound_auth.dns_timeout = Duration::from_millis(300);
        (self.tweak)(&mut c);
        c
    }

    pub fn queue_config(&self) -> QueueConfig {
        let id = &self.env.id;
        QueueConfig {
            storage_url: self.env.storage_url(),
            identity: mailfleet_testkit::identity("delivery-queue"),
            nats_url: self.env.nats_url.clone(),
            stream: format!("MAIL_QUEUE_{id}"),
            subject: format!("t{id}.queue.jobs"),
            consumer: format!("delivery_{id}"),
            relay_stream: format!("MAIL_RELAY_{id}"),
            relay_subject: format!("t{id}.relay.jobs"),
            state_bucket: format!("QSTATE_{id}"),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(1),
            ..QueueConfig::default()
        }
    }

    pub async fn start_ingress(&mut self) {
        let token = CancellationToken::new();
        let running = smtp_ingress::serve(self.ingress_config(), token.clone()).await.expect("smtp-ingress starts");
        self.ingress = Some((running, token));
    }

    pub async fn stop_ingress(&mut self) {
        if let Some((running, token)) = self.ingress.take() {
            token.cancel();
            // A service that panicked must fail the test, not pass as stopped.
            running.task.await.expect("the service task ends without panicking");
        }
    }

    pub async fn start_queue(&mut self) {
        let token = CancellationToken::new();
        let running = delivery_queue::run(self.queue_config(), token.clone()).await.expect("delivery-queue starts");
        self.queue = Some((running, token));
    }

    pub async fn stop_queue(&mut self) {
        if let Some((running, token)) = self.queue.take() {
            token.cancel();
            // A service that panicked must fail the test, not pass as stopped.
            running.task.await.expect("the service task ends without panicking");
        }
    }

    fn running(&self) -> &RunningIngress {
        &self.ingress.as_ref().expect("ingress running").0
    }
    pub fn mx(&self) -> SocketAddr {
        self.running().mx_addr.expect("mx")
    }
    pub fn submission(&self) -> SocketAddr {
        self.running().submission_addr.expect("submission")
    }
    pub fn submissions(&self) -> SocketAddr {
        self.running().submissions_addr.expect("submissions")
    }

    /// Every message in the account's INBOX, raw bytes, ascending UID.
    pub async fn inbox(&self, account: &pb::Account) -> Vec<Vec<u8>> {
        let channel = self.env.session_channel(account.id).await;
        let mut mailboxes = MailboxesClient::new(channel.clone());
        let mut messages = MessagesClient::new(channel).max_decoding_message_size(64 << 20);
        let mailbox = mailboxes
            .get_mailbox(pb::GetMailboxRequest { account_id: account.id, name: "INBOX".into(), select: false })
            .await
            .expect("GetMailbox")
            .into_inner();
        let uids = messages
            .list_uids(pb::ListUidsRequest { account_id: account.id, mailbox_id: mailbox.id })
            .await
            .expect("ListUids")
            .into_inner()
            .uids;
        let mut out = Vec::new();
        for uid in uids {
            let mut stream = messages
                .fetch(pb::FetchRequest {
                    account_id: account.id,
                    mailbox_id: mailbox.id,
                    uid,
                    offset: 0,
                    length: None,
                })
                .await
                .expect("Fetch")
                .into_inner();
            let mut data = Vec::new();
            while let Some(chunk) = stream.message().await.expect("fetch chunk") {
                data.extend_from_slice(&chunk.data);
            }
            out.push(data);
        }
        out
    }

    /// Number of messages in the account's INBOX (cheap: ListUids only).
    pub async fn inbox_count(&self, account: &pb::Account) -> usize {
        let channel = self.env.session_channel(account.id).await;
        let mailbox = MailboxesClient::new(channel.clone())
            .get_mailbox(pb::GetMailboxRequest { account_id: account.id, name: "INBOX".into(), select: false })
            .await
            .expect("GetMailbox")
            .into_inner();
        MessagesClient::new(channel)
            .list_uids(pb::ListUidsRequest { account_id: account.id, mailbox_id: mailbox.id })
            .await
            .expect("ListUids")
            .into_inner()
            .uids
            .len()
    }

    /// Poll the INBOX until it holds `n` messages (panics after `within`),
    /// then read them all.
    pub async fn wait_inbox(&self, account: &pb::Account, n: usize, within: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            let count = self.inbox_count(account).await;
            if count >= n {
                return self.inbox(account).await;
            }
            assert!(Instant::now() < deadline, "{} has {count} messages, expected {n}", account.address);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Messages waiting in a stream of this test.
    pub async fn stream_len(&self, stream: &str) -> u64 {
        let js = async_nats::jetstream::new(self.env.nats().await);
        let mut s = js.get_stream(stream).await.expect("stream exists");
        s.info().await.expect("stream info").state.messages
    }

    /// Entries of the queue-state bucket (jobs that failed at least once).
    pub async fn queue_state(&self) -> Vec<delivery_queue::state::JobState> {
        use futures::TryStreamExt;
        let js = async_nats::jetstream::new(self.env.nats().await);
        let bucket = self.queue_config().state_bucket;
        let kv = js.get_key_value(&bucket).await.expect("state bucket");
        // The keys from the bucket's stream's subjects, not `kv.keys()`:
        // its ordered consumer was seen to wait for ever on a bucket with
        // nothing in it yet (1 run in 3), which hung the test.
        let stream = js.get_stream(format!("KV_{bucket}")).await.expect("state stream");
        let prefix = format!("$KV.{bucket}.");
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .expect("state subjects")
            .try_collect()
            .await
            .expect("state subjects");
        let keys: Vec<String> =
            subjects.into_iter().filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_string)).collect();
        let mut out = Vec::new();
        for k in keys {
            // A read error or an unparseable entry fails the test: read as
            // "no entry", every "state removed" check would pass with NATS
            // unreachable. An entry deleted since the listing is just gone.
            let Some(v) = kv.get(&k).await.expect("read a queue-state entry") else { continue };
            out.push(
                delivery_queue::state::JobState::from_json(&v)
                    .unwrap_or_else(|| panic!("unparseable queue state {k}: {}", String::from_utf8_lossy(&v))),
            );
        }
        out
    }

    /// Jobs ever published to a stream of this test.
    pub async fn stream_published(&self, stream: &str) -> u64 {
        let js = async_nats::jetstream::new(self.env.nats().await);
        let mut s = js.get_stream(stream).await.expect("stream exists");
        s.info().await.expect("stream info").state.last_sequence
    }

    /// Wait until every job queued so far is finished (the work-queue
    /// stream is empty: a job leaves it only when acked, after its delivery
    /// and any DSN it causes are done) and return how many were ever
    /// queued. smtp-ingress queues a message before it answers 250, and
    /// queues nothing for a refused one, so after the replies were read the
    /// count is final and absence checked after this is not a guess.
    pub async fn settled(&self, within: Duration) -> u64 {
        let stream = self.queue_config().stream;
        let deadline = Instant::now() + within;
        while self.stream_len(&stream).await > 0 {
            assert!(Instant::now() < deadline, "queued jobs not finished within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stream_published(&stream).await
    }

    /// Run a Python script (smtplib is the real client); returns stdout.
    pub async fn python(&self, script: &str, args: &[String]) -> String {
        // Async: the services run on this test's runtime.
        let out = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .await
            .expect("python3 runs (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "python failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Mail {
    fn drop(&mut self) {
        // Remove this test's streams from the shared NATS server (best effort;
        // Drop cannot await, so use a separate thread and runtime).
        let q = self.queue_config();
        let url = self.env.nats_url.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(client) = async_nats::connect(url.as_str()).await {
                    let js = async_nats::jetstream::new(client);
                    for name in [q.stream, q.relay_stream, format!("KV_{}", q.state_bucket)] {
                        let _ = js.delete_stream(name).await;
                    }
                }
            });
        })
        .join();
    }
}

/// Split a delivered message into its trace header lines (prepended by the
/// system) and the rest, which must equal what the client sent.
pub fn strip_trace(delivered: &[u8], original: &[u8]) -> String {
    assert!(
        delivered.ends_with(original),
        "delivered message does not end with the original bytes:\n{}",
        String::from_utf8_lossy(delivered)
    );
    String::from_utf8_lossy(&delivered[..delivered.len() - original.len()]).into_owned()
}

/// A plain SMTP client speaking raw bytes: for pipelining, BDAT and errors.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut raw = Raw { stream, buf: Vec::new() };
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        raw
    }

    /// A connection on which something (a PROXY header) was already sent;
    /// the greeting has not been read yet.
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw { stream, buf: Vec::new() }
    }

    /// Whatever the server sends until it closes the connection (a reset,
    /// when it closed with our input unread, counts as closing).
    pub async fn rest(&mut self) -> String {
        let mut rest = std::mem::take(&mut self.buf);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline.into(), self.stream.read(&mut chunk))
                .await
                .expect("server closes within 30 s")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&rest).into_owned()
    }

    pub async fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).await.expect("write");
    }

    /// One complete (possibly multi-line) reply.
    pub async fn reply(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A reply ends with a line whose 4th byte is a space.
            let mut start = 0;
            while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[start..start + pos + 1];
                if line.len() >= 4 && line[3] == b' ' {
                    let end = start + pos + 1;
                    let reply = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end);
                    return reply;
                }
                start += pos + 1;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline.into(), self.stream.read(&mut chunk))
                .await
                .expect("reply within 30 s")
                .expect("read");
            if n == 0 {
                return String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Send one command line and return the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }
}

/// Assert a reply starts with `code` (e.g. "250 2.0.0").
#[track_caller]
pub fn expect(reply: &str, prefix: &str) {
    assert!(reply.starts_with(prefix), "expected `{prefix}`, got `{}`", reply.escape_debug());
}
