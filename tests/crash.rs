//! Crashes under load lose and duplicate nothing. While senders submit
//! mail — to two local mailboxes through two smtp-ingress replicas, and to
//! a remote address through submission for the relay — every part of the
//! system is killed with SIGKILL in turn and started again: an
//! smtp-ingress; delivery-queue at a random moment; delivery-queue while
//! its relay waits for the far side's reply to a message; storage; and the
//! NATS server leading the queue stream, on a 3-node cluster whose streams
//! have three replicas (as in compose).
//!
//! Afterwards, within [`BOUND`] of the last restart: every message that
//! got a `250` is in each mailbox, or at the far side, exactly once and
//! with the bytes sent; an attempt whose data went out but that got no
//! `250` (the connection died, or a `4xx` came) is there at most once;
//! nothing else is there; and each account's quota counts exactly the
//! messages it holds (no half-stored message, no leaked quota).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use mailfleet_proto::storage::v1 as pb;
use system::System;
use system::client::Imap;
use system::nats::NatsCluster;
use system::sink::SinkMx;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufStream};
use tokio_rustls::TlsConnector;

/// Everything accepted has arrived this long after the last restart. A job
/// a killed delivery-queue held comes back after its ack_wait (20 s).
const BOUND: Duration = Duration::from_secs(60);
/// A message the far side took this shortly before delivery-queue was
/// killed, or this shortly after, may reach it twice: between the far
/// side's `250` and the queue's acknowledgement of the job (a NATS round
/// trip) the relay dies with the job unfinished, so it is sent again. And
/// a transaction whose final dot was still in the socket when the relay
/// died is completed by the far side after the kill, with a `250` nobody
/// reads (the far side runs on the test's own thread, so it may read that
/// data only once the test yields after the kill). RFC 5321 §6.1 accepts
/// a duplicate over a loss there; any other duplicate fails the test.
const RELAY_WINDOW: Duration = Duration::from_secs(1);
/// Upper bounds of the load.
const MAX_MESSAGES: u32 = 4000;
const MAX_LOAD: Duration = Duration::from_secs(180);
/// Messages accepted after the last restart before the load stops.
const AFTER_CRASHES: u32 = 20;
/// Messages accepted between two crashes (the system is working again).
const BETWEEN: usize = 10;

const ALICE: (&str, &str) = ("alice@example.org", "alice password 1");
const BOB: (&str, &str) = ("bob@example.org", "bob password 12");
const CAROL: &str = "carol@remote.test";

/// The body of message `id`: 0.2 to 12 KB of numbered lines.
fn body(id: u32) -> String {
    let size = 200 + (id as usize * 7919) % 12_000;
    let mut body = String::with_capacity(size + 80);
    let mut n = 0;
    while body.len() < size {
        body.push_str(&format!("{id:06}.{n:04} the quick brown fox jumps over the lazy dog\r\n"));
        n += 1;
    }
    body
}

fn message(id: u32, from: &str, to: &str) -> String {
    format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: crash {id}\r\nX-Test-Id: {id}\r\n\r\n{}", body(id))
}

#[derive(Default)]
struct Load {
    next_id: AtomicU32,
    /// Got a 250: for alice and bob, and for carol (relayed).
    local: Mutex<BTreeSet<u32>>,
    remote: Mutex<BTreeSet<u32>>,
    /// The data went out, no 250 came back.
    uncertain: Mutex<BTreeSet<u32>>,
    crashes_done: AtomicBool,
    after_crashes: AtomicU32,
    retries: AtomicU32,
}

impl Load {
    fn keep_going(&self, started: Instant) -> bool {
        started.elapsed() < MAX_LOAD
            && self.next_id.load(Ordering::SeqCst) < MAX_MESSAGES
            && !(self.crashes_done.load(Ordering::SeqCst) && self.after_crashes.load(Ordering::SeqCst) >= AFTER_CRASHES)
    }
    fn local_count(&self) -> usize {
        self.local.lock().expect("lock").len()
    }
}

/// Where a sender sends: local mail to the MX ports, remote mail through
/// submission over implicit TLS as alice.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Local,
    Remote,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An SMTP client over plain TCP or TLS; every read is bounded.
struct Client(BufStream<Box<dyn Io>>);

impl Client {
    /// The reply's code (its last line's).
    async fn reply(&mut self) -> std::io::Result<u16> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(60), self.0.read_line(&mut line))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let code = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(line.clone()))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> std::io::Result<u16> {
        self.0.write_all(format!("{line}\r\n").as_bytes()).await?;
        self.0.flush().await?;
        self.reply().await
    }

    /// DATA, the message (CRLF lines, none starting with a dot) and the
    /// final dot: the reply to DATA when it refused, else to the dot.
    async fn data(&mut self, message: &str) -> std::io::Result<u16> {
        let go_ahead = self.cmd("DATA").await?;
        if go_ahead != 354 {
            return Ok(go_ahead);
        }
        self.0.write_all(message.as_bytes()).await?;
        self.0.write_all(b".\r\n").await?;
        self.0.flush().await?;
        self.reply().await
    }
}

/// A TLS client that trusts the services' development certificate (they
/// share one self-signed certificate in the test's directory).
fn tls_connector(cert_file: &std::path::Path) -> TlsConnector {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(cert_file)
        .unwrap_or_else(|e| panic!("the development certificate {}: {e}", cert_file.display()));
    for cert in certs {
        roots.add(cert.expect("a certificate")).expect("trusted");
    }
    TlsConnector::from(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
}

async fn open(kind: Kind, addr: SocketAddr, tls: &TlsConnector) -> Option<Client> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let io: Box<dyn Io> = match kind {
        Kind::Local => Box::new(tcp),
        Kind::Remote => {
            let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
            Box::new(tls.connect(name, tcp).await.ok()?)
        }
    };
    let mut c = Client(BufStream::new(io));
    if c.reply().await.ok()? != 220 || c.cmd("EHLO client.test").await.ok()? != 250 {
        return None;
    }
    if kind == Kind::Remote {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{}", ALICE.0, ALICE.1));
        if c.cmd(&format!("AUTH PLAIN {token}")).await.ok()? != 235 {
            return None;
        }
    }
    Some(c)
}

/// One sender: a message at a time, each retried (new connection, next
/// replica) until it gets a 250 — with a new id once its data went out
/// without a 250, since that attempt may still arrive.
async fn sender(load: Arc<Load>, kind: Kind, targets: Vec<SocketAddr>, which: usize, tls: TlsConnector) {
    let started = Instant::now();
    let mut conn: Option<Client> = None;
    let mut turn = which;
    let (from, rcpts): (&str, Vec<&str>) = match kind {
        Kind::Local => ("load@remote.test", vec![ALICE.0, BOB.0]),
        Kind::Remote => (ALICE.0, vec![CAROL]),
    };
    'messages: while load.keep_going(started) {
        let id = load.next_id.fetch_add(1, Ordering::SeqCst);
        let text = message(id, from, rcpts[0]);
        loop {
            if started.elapsed() > MAX_LOAD + Duration::from_secs(60) {
                break 'messages;
            }
            if conn.is_none() {
                turn += 1;
                conn = open(kind, targets[turn % targets.len()], &tls).await;
                if conn.is_none() {
                    load.retries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            // Before the data: a refusal or a lost connection means this
            // attempt cannot arrive; the same id is tried again.
            let mut envelope = vec![format!("MAIL FROM:<{from}>")];
            envelope.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
            let mut refused = None;
            for line in &envelope {
                match c.cmd(line).await {
                    Ok(250) => {}
                    Ok(code) => {
                        refused = Some(code);
                        break;
                    }
                    Err(_) => {
                        refused = Some(0);
                        break;
                    }
                }
            }
            if let Some(code) = refused {
                load.retries.fetch_add(1, Ordering::SeqCst);
                assert!(code == 0 || (400..500).contains(&code), "permanent refusal {code} of message {id}");
                if code == 0 || code == 421 || c.cmd("RSET").await.is_err() {
                    conn = None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            match c.data(&text).await {
                Ok(250) => {
                    let accepted = if kind == Kind::Local { &load.local } else { &load.remote };
                    accepted.lock().expect("lock").insert(id);
                    if load.crashes_done.load(Ordering::SeqCst) {
                        load.after_crashes.fetch_add(1, Ordering::SeqCst);
                    }
                }
                outcome => {
                    load.uncertain.lock().expect("lock").insert(id);
                    load.retries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match outcome {
                        Ok(code) if code != 421 => {
                            if c.cmd("RSET").await.is_err() {
                                conn = None;
                            }
                        }
                        _ => conn = None,
                    }
                }
            }
            continue 'messages;
        }
    }
    if let Some(mut c) = conn {
        let _ = c.cmd("QUIT").await;
    }
}

/// Until `count()` grew by `by`, or fail naming what came before.
async fn progress(what: &str, by: usize, count: impl Fn() -> usize) {
    let target = count() + by;
    let deadline = Instant::now() + Duration::from_secs(90);
    while count() < target {
        assert!(Instant::now() < deadline, "no mail got through after {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A message in a mailbox: its X-Test-Id, RFC822.SIZE and body.
struct Stored {
    id: u32,
    size: u64,
    text: String,
}

fn after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.find(key).map(|i| &line[i + key.len()..])
}

fn leading_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok())
}

/// Every message in the user's INBOX, read over IMAP.
async fn inbox(imap: &system::Service, (user, password): (&str, &str)) -> Vec<Stored> {
    let mut c = Imap::login(imap.port("imap"), user, password)
        .await
        .unwrap_or_else(|e| panic!("IMAP login: {e}; imap-gateway's log:\n{}", imap.log_tail()));
    let exists = c.ok("SELECT INBOX").await.expect("select");
    let empty = exists.iter().any(|l| l.starts_with("* 0 EXISTS"));
    let lines = if empty {
        Vec::new()
    } else {
        c.ok("FETCH 1:* (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (X-Test-Id)] BODY.PEEK[TEXT])").await.expect("fetch")
    };
    c.logout().await;
    let mut out = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with("* ") && l.contains(" FETCH ")) {
        let id = after(line, "X-Test-Id: ").and_then(leading_number).unwrap_or_else(|| panic!("no id in {line}"));
        let size = after(line, "RFC822.SIZE ").and_then(leading_number).expect("size");
        let text = after(line, "BODY[TEXT] {")
            .and_then(|rest| {
                let n: usize = leading_number(rest)?;
                let start = rest.find("}\r\n")? + 3;
                rest.get(start..start + n).map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no body in message {id}"));
        out.push(Stored { id, size, text });
    }
    out
}

/// `seen` holds every id of `accepted` once, ids of `uncertain` at most
/// once, nothing else — but an id of `twice_ok` may be there twice.
/// `Err` lists what is missing so far.
fn check(
    who: &str,
    seen: &[u32],
    accepted: &BTreeSet<u32>,
    uncertain: &BTreeSet<u32>,
    twice_ok: &BTreeSet<u32>,
) -> Result<(), String> {
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for id in seen {
        *counts.entry(*id).or_default() += 1;
    }
    let twice: Vec<u32> =
        counts.iter().filter(|(id, n)| **n > 2 || (**n == 2 && !twice_ok.contains(id))).map(|(id, _)| *id).collect();
    assert!(twice.is_empty(), "{who}: more than once: {twice:?}");
    let unknown: Vec<u32> =
        counts.keys().filter(|id| !accepted.contains(id) && !uncertain.contains(id)).copied().collect();
    assert!(unknown.is_empty(), "{who}: arrived without being sent: {unknown:?}");
    let missing: Vec<u32> = accepted.iter().filter(|id| !counts.contains_key(id)).copied().collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{who}: {} accepted messages missing: {missing:?}", missing.len()))
    }
}

#[tokio::test]
async fn sigkill_of_every_part_under_load_loses_and_duplicates_nothing() {
    let mut sys = System::new(None);
    let mut nats = NatsCluster::start(&sys.dir.path().join("nats"), &sys.pki).await;
    sys.nats_url = nats.url();
    let sink = SinkMx::start().await;
    for (key, value) in [
        // As in compose: every stream on all three servers.
        ("MAILFLEET_SMTP_QUEUE__REPLICAS", "3".to_string()),
        ("MAILFLEET_QUEUE_STREAM_REPLICAS", "3".to_string()),
        ("MAILFLEET_QUEUE_RELAY__ENABLED", "true".to_string()),
        ("MAILFLEET_QUEUE_RELAY__HOSTNAME", "mx.example.org".to_string()),
        ("MAILFLEET_QUEUE_RELAY__SMARTHOST", sink.addr.to_string()),
        // A relay attempt that storage's crash spoiled comes again soon.
        ("MAILFLEET_QUEUE_RELAY__SCHEDULE__INTERVALS", r#"["1s", "2s"]"#.to_string()),
    ] {
        sys.set_env(key, &value);
    }
    sys.start_storage().await;
    for (user, password) in [ALICE, BOB] {
        sys.add_account(user, password).await;
    }
    let mut queue = sys.start_queue("queue").await;
    let mut smtps = [sys.start_smtp("smtp-a").await, sys.start_smtp("smtp-b").await];
    let mx: Vec<SocketAddr> = smtps.iter().map(|s| s.port("mx")).collect();
    let submissions: Vec<SocketAddr> = smtps.iter().map(|s| s.port("submissions")).collect();
    let tls = tls_connector(&sys.dir.path().join("tls/self-signed.crt"));

    let load = Arc::new(Load { next_id: AtomicU32::new(1), ..Load::default() });
    let mut senders: Vec<_> =
        (0..3).map(|i| tokio::spawn(sender(load.clone(), Kind::Local, mx.clone(), i, tls.clone()))).collect();
    senders.push(tokio::spawn(sender(load.clone(), Kind::Remote, submissions, 0, tls)));
    let local = || load.local_count();
    progress("the start", 20, local).await;

    let mut timeline = Vec::new();
    let mut mark = |what: &str, load: &Load| timeline.push((what.to_string(), load.local_count()));

    smtps[0].kill().await;
    smtps[0].start().await;
    mark("smtp-ingress", &load);
    progress("smtp-ingress's crash", BETWEEN, local).await;

    // The relay's kills: a message the far side took just before one may
    // come again (see RELAY_WINDOW).
    let mut relay_kills = vec![Instant::now()];
    queue.kill().await;
    relay_kills.push(Instant::now());
    queue.start().await;
    mark("delivery-queue", &load);
    progress("delivery-queue's crash", BETWEEN, local).await;

    // The relay is in the middle of a transaction: the far side has the
    // data and has not answered yet.
    sink.hold_next();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.holding() {
        assert!(Instant::now() < deadline, "the relay never sent a message to hold");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay_kills.push(Instant::now());
    queue.kill().await;
    relay_kills.push(Instant::now());
    while sink.dropped() == 0 {
        assert!(Instant::now() < deadline, "the far side never saw the relay's connection drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    queue.start().await;
    mark("delivery-queue mid-relay", &load);
    progress("delivery-queue's crash mid-relay", BETWEEN, local).await;

    sys.storage().kill().await;
    sys.storage().start().await;
    mark("storage", &load);
    progress("storage's crash", BETWEEN, local).await;

    // The server leading the queue stream: the stream goes on with the
    // other two (a new leader), mail keeps being accepted meanwhile.
    let js = async_nats::jetstream::new(sys.nats_as("mailctl").await);
    let mut stream = js.get_stream("MAIL_QUEUE").await.expect("queue stream");
    let info = stream.info().await.expect("stream info");
    let leader = info.cluster.as_ref().and_then(|c| c.leader.clone()).expect("the stream has a leader");
    assert_eq!(info.config.num_replicas, 3, "the queue stream has three replicas");
    assert!(nats.names().contains(&leader), "leader {leader}");
    drop(js);
    nats.kill(&leader).await;
    progress("the NATS leader's crash", BETWEEN, local).await;
    nats.start_node(&leader).await;
    nats.wait_ready().await;
    mark("NATS stream leader", &load);
    let last_restart = Instant::now();
    load.crashes_done.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.expect("sender");
    }

    let accepted_local = load.local.lock().expect("lock").clone();
    let accepted_remote = load.remote.lock().expect("lock").clone();
    let uncertain = load.uncertain.lock().expect("lock").clone();
    eprintln!(
        "accepted {} local and {} remote messages, {} uncertain, {} retries; local accepted at each crash: {timeline:?}",
        accepted_local.len(),
        accepted_remote.len(),
        uncertain.len(),
        load.retries.load(Ordering::SeqCst)
    );
    assert!(!accepted_remote.is_empty(), "some mail was relayed");

    let imap = sys.start_imap("imap").await;
    let deadline = last_restart + BOUND;
    for user in [ALICE, BOB] {
        let stored = loop {
            let stored = inbox(&imap, user).await;
            let ids: Vec<u32> = stored.iter().map(|s| s.id).collect();
            match check(user.0, &ids, &accepted_local, &uncertain, &BTreeSet::new()) {
                Ok(()) => break stored,
                Err(missing) => assert!(Instant::now() < deadline, "{missing} {BOUND:?} after the last restart"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        for s in &stored {
            assert!(s.text == body(s.id), "{}: message {} is not what was sent", user.0, s.id);
        }
        // The quota counts exactly what the mailbox holds.
        let mut admin = sys.admin().await;
        let accounts = admin
            .list_accounts(pb::ListAccountsRequest { domain: "example.org".into() })
            .await
            .expect("accounts")
            .into_inner()
            .accounts;
        let account = accounts.iter().find(|a| a.address == user.0).expect("account");
        assert_eq!(account.message_count, stored.len() as u64, "{}: message count", user.0);
        assert_eq!(account.used_bytes, stored.iter().map(|s| s.size).sum::<u64>(), "{}: quota used", user.0);
    }
    loop {
        let received_at = sink.received_at();
        // Taken by the far side within RELAY_WINDOW of a relay's death:
        // its `250` may never have been read or recorded, so it is sent again.
        let twice_ok: BTreeSet<u32> = received_at
            .iter()
            .filter(|(at, _)| {
                relay_kills.chunks(2).any(|kill| {
                    kill[0].saturating_duration_since(*at) < RELAY_WINDOW
                        && at.saturating_duration_since(kill[1]) < RELAY_WINDOW
                })
            })
            .filter_map(|(_, data)| after(&String::from_utf8_lossy(data), "X-Test-Id: ").and_then(leading_number))
            .collect();
        let ids: Vec<u32> = received_at
            .iter()
            .map(|(_, data)| {
                let text = String::from_utf8_lossy(data);
                after(&text, "X-Test-Id: ").and_then(leading_number).expect("relayed message has its id")
            })
            .collect();
        // A message that arrived twice: when, next to the relay's kills (in
        // ms since the first), for whoever reads a failure below.
        let ms = |t: &Instant| {
            t.saturating_duration_since(relay_kills[0]).as_millis() as i128
                - relay_kills[0].saturating_duration_since(*t).as_millis() as i128
        };
        for (i, id) in ids.iter().enumerate().filter(|(i, id)| ids[..*i].contains(id)) {
            let first = ids.iter().position(|x| x == id).expect("seen before");
            eprintln!(
                "message {id} arrived at {} and {} ms; relay kills at {:?} ms",
                ms(&received_at[first].0),
                ms(&received_at[i].0),
                relay_kills.iter().map(ms).collect::<Vec<_>>()
            );
        }
        let received: Vec<Vec<u8>> = received_at.into_iter().map(|(_, data)| data).collect();
        match check(CAROL, &ids, &accepted_remote, &uncertain, &twice_ok) {
            Ok(()) => {
                for (data, id) in received.iter().zip(&ids) {
                    let text = String::from_utf8_lossy(data);
                    assert!(
                        text.ends_with(&format!("\r\n\r\n{}", body(*id))),
                        "relayed message {id} is not what was sent"
                    );
                }
                break;
            }
            Err(missing) => assert!(Instant::now() < deadline, "{missing} {BOUND:?} after the last restart"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("everything arrived {:?} after the last restart", last_restart.elapsed());
}

/// The compose deployment's NATS configuration is one that Debian's
/// nats-server accepts for each of the three servers, and compose gives
/// every service all three servers and the queue streams three replicas.
#[test]
fn the_compose_nats_cluster_is_valid_and_replicated() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The files as the containers see them: the configuration next to the
    // users it includes, and the certificates the pki service copies into
    // /etc/nats/pki (made here by the same `mailctl pki init` code).
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("pki");
    mailfleet_runtime::pki::init(&pki, false).expect("fleet PKI");
    let conf = std::fs::read_to_string(root.join("deploy/nats/nats.conf")).expect("deploy/nats/nats.conf");
    assert!(conf.contains("/etc/nats/pki/nats.crt"), "nats.conf names the server's certificate");
    let conf = conf.replace("/etc/nats/pki/", &format!("{}/", pki.display()));
    std::fs::write(dir.path().join("nats.conf"), conf).expect("write nats.conf");
    std::fs::copy(root.join("deploy/nats/auth.conf"), dir.path().join("auth.conf")).expect("copy auth.conf");
    for name in ["nats-1", "nats-2", "nats-3"] {
        let out = std::process::Command::new(system::nats::nats_server())
            .args(["-t", "-c"])
            .arg(dir.path().join("nats.conf"))
            .env("NATS_SERVER_NAME", name)
            .output()
            .expect("run nats-server -t");
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).expect("docker-compose.yml");
    for expected in [
        "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222",
        "MAILFLEET_SMTP_QUEUE__REPLICAS: \"3\"",
        "MAILFLEET_QUEUE_STREAM_REPLICAS: \"3\"",
    ] {
        assert!(compose.contains(expected), "docker-compose.yml lacks {expected}");
    }
    // (pop3-gateway uses no NATS and has no NATS user.)
    for service in ["STORAGE", "SMTP", "QUEUE", "IMAP"] {
        assert!(compose.contains(&format!("MAILFLEET_{service}_NATS_URL: *nats-url")), "{service} gets every server");
    }
}
