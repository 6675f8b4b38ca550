//! A rolling restart under load loses and duplicates nothing: while senders
//! keep submitting mail to two smtp-ingress replicas (retrying, as an MTA
//! does, on 4xx replies and dropped connections), every service is sent
//! SIGTERM and started again, one after the other — both smtp-ingress
//! replicas, both delivery-queue replicas, storage, imap-gateway and
//! pop3-gateway. Afterwards every message that got a `250` is in the
//! mailbox exactly once, and no attempt that did not get one is stored (a
//! sender retries those, so a stored one would be a duplicate); the load
//! still gets through after the last restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use system::client::{Imap, Pop3, Smtp};
use system::{Service, System};
use tokio::sync::Mutex;

/// The load runs until this many messages were accepted after the last
/// restart; failing that, it stops after `MAX_LOAD` and the test fails.
const AFTER_RESTARTS: u32 = 20;
const MAX_LOAD: Duration = Duration::from_secs(180);
const SENDERS: usize = 4;

const USERS: [(&str, &str); 2] = [("alice@example.org", "alice password 1"), ("bob@example.org", "bob password 12")];

/// What became of one attempt to send a message (one SMTP transaction).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// `250` to the final dot.
    Accepted,
    /// A temporary refusal (`4xx`) to the final dot.
    Refused(u16),
    /// The connection was lost after the final dot, before its reply.
    ReplyLost,
}

struct Load {
    next_id: AtomicU32,
    /// (message id, attempt) of every attempt whose data was sent, and what
    /// the server answered to it.
    attempts: std::sync::Mutex<BTreeMap<(u32, u32), Outcome>>,
    restarts_done: AtomicBool,
    accepted_after_restarts: AtomicU32,
    /// Temporary refusals and dropped connections the senders rode out.
    retries: AtomicU32,
}

impl Load {
    fn keep_going(&self, started: Instant) -> bool {
        started.elapsed() < MAX_LOAD
            && !(self.restarts_done.load(Ordering::SeqCst)
                && self.accepted_after_restarts.load(Ordering::SeqCst) >= AFTER_RESTARTS)
    }

    fn record(&self, id: u32, attempt: u32, outcome: Outcome) {
        self.attempts.lock().expect("lock").insert((id, attempt), outcome);
    }

    /// Message id -> the attempt that got the `250`.
    fn accepted(&self) -> BTreeMap<u32, u32> {
        let attempts = self.attempts.lock().expect("lock");
        attempts.iter().filter(|(_, o)| **o == Outcome::Accepted).map(|((id, attempt), _)| (*id, *attempt)).collect()
    }
}

/// One sender: messages one after another; each is retried (new
/// connection, next replica) until it gets a 250. Every attempt carries
/// its own number, so the mailbox shows which attempt was stored.
async fn sender(load: Arc<Load>, mx: Vec<std::net::SocketAddr>, which: usize) {
    let started = Instant::now();
    let mut conn: Option<Smtp> = None;
    let mut turn = which;
    while load.keep_going(started) {
        let id = load.next_id.fetch_add(1, Ordering::SeqCst);
        let mut attempt = 0;
        // Retried until accepted, or until the load ends (which the test
        // then reports, if it came too early).
        while load.keep_going(started) {
            if conn.is_none() {
                turn += 1;
                conn = Smtp::connect(mx[turn % mx.len()]).await.ok();
                if conn.is_none() {
                    load.retries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            attempt += 1;
            let message =
                format!("Subject: load {id}\r\nX-Test-Id: {id}\r\nX-Attempt: {attempt}\r\n\r\nmessage number {id}\r\n");
            // Two recipients: storage delivers to both in one transaction.
            let mut data_sent = false;
            let reply = async {
                for cmd in ["MAIL FROM:<load@remote.test>", "RCPT TO:<alice@example.org>", "RCPT TO:<bob@example.org>"]
                {
                    let r = c.cmd(cmd).await?;
                    if r.code != 250 {
                        return Ok(r);
                    }
                }
                data_sent = true;
                c.send_mail_data(&message).await
            }
            .await;
            match reply {
                Ok(r) if r.code == 250 => {
                    load.record(id, attempt, Outcome::Accepted);
                    if load.restarts_done.load(Ordering::SeqCst) {
                        load.accepted_after_restarts.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                Ok(r) => {
                    // 421/451 and friends: not accepted, try again.
                    assert!(r.code >= 400 && r.code < 500, "permanent refusal {r:?}");
                    if data_sent {
                        load.record(id, attempt, Outcome::Refused(r.code));
                    }
                    load.retries.fetch_add(1, Ordering::SeqCst);
                    if r.code == 421 {
                        conn = None;
                    } else {
                        let _ = c.cmd("RSET").await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    if data_sent {
                        load.record(id, attempt, Outcome::ReplyLost);
                    }
                    load.retries.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                }
            }
        }
    }
    if let Some(c) = conn {
        c.quit().await;
    }
}

/// Readers on the IMAP and POP3 gateways ride out their restarts too.
async fn reader(sys_imap: Arc<Mutex<Service>>, sys_pop: Arc<Mutex<Service>>, stop: Arc<AtomicBool>) -> u32 {
    let mut reads = 0;
    while !stop.load(Ordering::SeqCst) {
        let imap = sys_imap.lock().await.port("imap");
        if let Ok(mut c) = Imap::login(imap, USERS[0].0, USERS[0].1).await
            && c.ok("STATUS INBOX (MESSAGES)").await.is_ok()
        {
            reads += 1;
            c.logout().await;
        }
        let pop = sys_pop.lock().await.port("pop3");
        if let Ok(Ok(mut p)) = Pop3::login(pop, USERS[1].0, USERS[1].1).await
            && p.cmd("STAT").await.is_ok_and(|s| s.starts_with("+OK"))
        {
            reads += 1;
            let _ = p.quit().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reads
}

/// (X-Test-Id, X-Attempt) of every message in the user's INBOX, with how
/// often each occurs.
async fn attempts_in_inbox(imap: std::net::SocketAddr, user: &str, password: &str) -> BTreeMap<(u32, u32), u32> {
    let mut c = Imap::login(imap, user, password).await.expect("login");
    c.ok("SELECT INBOX").await.expect("select");
    // UID FETCH: an empty INBOX is an empty answer, not an error.
    let lines = c.ok("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (X-Test-Id X-Attempt)])").await.expect("fetch");
    c.logout().await;
    let header = |line: &str, name: &str| -> u32 {
        let rest = line.split(name).nth(1).unwrap_or_else(|| panic!("no {name} in {line:?}"));
        rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()).expect("a number")
    };
    let mut seen = BTreeMap::new();
    for line in lines.iter().filter(|l| l.starts_with("* ") && l.contains(" FETCH ")) {
        *seen.entry((header(line, "X-Test-Id: "), header(line, "X-Attempt: "))).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn rolling_restart_of_every_service_under_load_loses_and_duplicates_nothing() {
    let mut sys = System::new(None);
    sys.start_storage().await;
    for (user, password) in USERS {
        sys.add_account(user, password).await;
    }
    let mut queues = [sys.start_queue("queue-a").await, sys.start_queue("queue-b").await];
    let mut smtps = [sys.start_smtp("smtp-a").await, sys.start_smtp("smtp-b").await];
    let imap = Arc::new(Mutex::new(sys.start_imap("imap").await));
    let pop = Arc::new(Mutex::new(sys.start_pop3("pop3").await));
    let mx: Vec<_> = smtps.iter().map(|s| s.port("mx")).collect();

    let load = Arc::new(Load {
        next_id: AtomicU32::new(1),
        attempts: Default::default(),
        restarts_done: AtomicBool::new(false),
        accepted_after_restarts: AtomicU32::new(0),
        retries: AtomicU32::new(0),
    });
    let senders: Vec<_> = (0..SENDERS).map(|i| tokio::spawn(sender(load.clone(), mx.clone(), i))).collect();
    let stop_readers = Arc::new(AtomicBool::new(false));
    let readers = tokio::spawn(reader(imap.clone(), pop.clone(), stop_readers.clone()));

    // Let the load get going, then restart one service at a time.
    let accepted = || load.accepted().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted() < 20 {
        assert!(Instant::now() < deadline, "no load got through before the restarts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut timeline = Vec::new();
    for s in smtps.iter_mut().chain(queues.iter_mut()) {
        s.restart().await;
        timeline.push((s.name.clone(), accepted()));
    }
    sys.storage().restart().await;
    timeline.push(("storage".into(), accepted()));
    imap.lock().await.restart().await;
    timeline.push(("imap".into(), accepted()));
    pop.lock().await.restart().await;
    timeline.push(("pop3".into(), accepted()));
    load.restarts_done.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.expect("sender");
    }
    stop_readers.store(true, Ordering::SeqCst);
    let reads = readers.await.expect("reader");

    let sent = load.accepted();
    let attempts = load.attempts.lock().expect("lock").clone();
    let after = load.accepted_after_restarts.load(Ordering::SeqCst);
    eprintln!(
        "accepted {} messages ({after} after the last restart), {} retries by the senders, {} reads through the gateways; accepted so far at each restart: {timeline:?}",
        sent.len(),
        load.retries.load(Ordering::SeqCst),
        reads
    );
    assert!(after >= AFTER_RESTARTS, "only {after} messages accepted after the last restart within {MAX_LOAD:?}");
    assert!(reads > 0, "the readers got through");

    // Every accepted message arrives, once, for both recipients; the copy
    // stored is the attempt that got the 250 — an attempt that got 4xx or
    // no reply was retried, so storing it too would deliver it twice.
    let imap_addr = imap.lock().await.port("imap");
    let deadline = Instant::now() + Duration::from_secs(60);
    for (user, password) in USERS {
        loop {
            let seen = attempts_in_inbox(imap_addr, user, password).await;
            let not_accepted: Vec<_> = seen
                .keys()
                .filter(|(id, attempt)| sent.get(id) != Some(attempt))
                .map(|key| (*key, attempts.get(key).copied()))
                .collect();
            assert!(not_accepted.is_empty(), "{user}: stored without a 250 ((id, attempt), reply): {not_accepted:?}");
            let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(key, _)| *key).collect();
            assert!(twice.is_empty(), "{user}: delivered more than once: {twice:?}");
            let missing: Vec<u32> = sent.keys().filter(|id| !seen.contains_key(&(**id, sent[*id]))).copied().collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{user}: {} accepted messages never arrived: {missing:?}",
                missing.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
