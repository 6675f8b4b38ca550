//! A rolling restart under load loses and duplicates nothing: while senders
//! keep submitting mail to two smtp-ingress replicas (retrying, as an MTA
//! does, on 4xx replies and dropped connections), every service is sent
//! SIGTERM and started again, one after the other — both smtp-ingress
//! replicas, both delivery-queue replicas, storage, imap-gateway and
//! pop3-gateway. Afterwards every message that got a `250` is in the
//! mailbox exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use system::client::{Imap, Pop3, Smtp};
use system::{Service, System};
use tokio::sync::Mutex;

/// Upper bounds: the load stops at this many messages or this long.
const MAX_MESSAGES: u32 = 2000;
const MAX_LOAD: Duration = Duration::from_secs(150);
/// At least this many messages are accepted after the last restart.
const AFTER_RESTARTS: u32 = 20;
const SENDERS: usize = 4;

const USERS: [(&str, &str); 2] = [("alice@example.org", "alice password 1"), ("bob@example.org", "bob password 12")];

struct Load {
    next_id: AtomicU32,
    /// Ids that got a 250, with the number of 250s each got.
    accepted: std::sync::Mutex<BTreeMap<u32, u32>>,
    restarts_done: AtomicBool,
    accepted_after_restarts: AtomicU32,
    /// Temporary refusals and dropped connections the senders rode out.
    retries: AtomicU32,
}

impl Load {
    fn keep_going(&self, started: Instant) -> bool {
        started.elapsed() < MAX_LOAD
            && self.next_id.load(Ordering::SeqCst) < MAX_MESSAGES
            && !(self.restarts_done.load(Ordering::SeqCst)
                && self.accepted_after_restarts.load(Ordering::SeqCst) >= AFTER_RESTARTS)
    }
}

/// One sender: messages one after another; each is retried (new
/// connection, next replica) until it gets a 250.
async fn sender(load: Arc<Load>, mx: Vec<std::net::SocketAddr>, which: usize) {
    let started = Instant::now();
    let mut conn: Option<Smtp> = None;
    let mut turn = which;
    while load.keep_going(started) {
        let id = load.next_id.fetch_add(1, Ordering::SeqCst);
        let message = format!("Subject: load {id}\r\nX-Test-Id: {id}\r\n\r\nmessage number {id}\r\n");
        loop {
            assert!(started.elapsed() < MAX_LOAD + Duration::from_secs(60), "message {id} never accepted");
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
            // Two recipients: storage delivers to both in one transaction.
            let reply = async {
                for cmd in ["MAIL FROM:<load@remote.test>", "RCPT TO:<alice@example.org>", "RCPT TO:<bob@example.org>"]
                {
                    let r = c.cmd(cmd).await?;
                    if r.code != 250 {
                        return Ok(r);
                    }
                }
                c.send_mail_data(&message).await
            }
            .await;
            match reply {
                Ok(r) if r.code == 250 => {
                    *load.accepted.lock().expect("lock").entry(id).or_default() += 1;
                    if load.restarts_done.load(Ordering::SeqCst) {
                        load.accepted_after_restarts.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                Ok(r) => {
                    // 421/451 and friends: not accepted, try again.
                    assert!(r.code >= 400 && r.code < 500, "permanent refusal {r:?}");
                    load.retries.fetch_add(1, Ordering::SeqCst);
                    if r.code == 421 {
                        conn = None;
                    } else {
                        let _ = c.cmd("RSET").await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
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

/// X-Test-Id of every message in the user's INBOX, with how often it occurs.
async fn ids_in_inbox(imap: std::net::SocketAddr, user: &str, password: &str) -> BTreeMap<u32, u32> {
    let mut c = Imap::login(imap, user, password).await.expect("login");
    c.ok("SELECT INBOX").await.expect("select");
    let lines = c.ok("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (X-Test-Id)])").await.unwrap_or_default();
    c.logout().await;
    let mut ids = BTreeMap::new();
    for line in lines {
        if let Some(rest) = line.split("X-Test-Id: ").nth(1) {
            let id: u32 = rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()).expect("id");
            *ids.entry(id).or_default() += 1;
        }
    }
    ids
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
        accepted: Default::default(),
        restarts_done: AtomicBool::new(false),
        accepted_after_restarts: AtomicU32::new(0),
        retries: AtomicU32::new(0),
    });
    let senders: Vec<_> = (0..SENDERS).map(|i| tokio::spawn(sender(load.clone(), mx.clone(), i))).collect();
    let stop_readers = Arc::new(AtomicBool::new(false));
    let readers = tokio::spawn(reader(imap.clone(), pop.clone(), stop_readers.clone()));

    // Let the load get going, then restart one service at a time.
    let accepted = || load.accepted.lock().expect("lock").len();
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

    let sent: BTreeMap<u32, u32> = load.accepted.lock().expect("lock").clone();
    eprintln!(
        "accepted {} messages, {} retries by the senders, {} reads through the gateways; accepted so far at each restart: {timeline:?}",
        sent.len(),
        load.retries.load(Ordering::SeqCst),
        reads
    );
    assert!(sent.values().all(|n| *n == 1), "a message got two 250s");
    assert!(reads > 0, "the readers got through");

    // Every accepted message arrives, once, for both recipients.
    let imap_addr = imap.lock().await.port("imap");
    let deadline = Instant::now() + Duration::from_secs(60);
    for (user, password) in USERS {
        loop {
            let seen = ids_in_inbox(imap_addr, user, password).await;
            let missing: Vec<u32> = sent.keys().filter(|id| !seen.contains_key(id)).copied().collect();
            let twice: Vec<u32> = seen.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id).collect();
            assert!(twice.is_empty(), "{user}: delivered more than once: {twice:?}");
            let unknown: Vec<u32> = seen.keys().filter(|id| !sent.contains_key(id)).copied().collect();
            assert!(unknown.is_empty(), "{user}: delivered without a 250: {unknown:?}");
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
