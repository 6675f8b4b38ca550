//! Several gateway replicas (separate processes, as `--scale` makes them)
//! in front of one storage: what one replica's client does, another
//! replica's client is told at once; the POP3 maildrop lock holds across
//! replicas.

use std::time::{Duration, Instant};

use system::System;
use system::client::{Imap, Pop3, Smtp};

const PUSH: Duration = Duration::from_secs(10);

/// Read IDLE pushes until one contains `want`.
async fn pushed(idler: &mut Imap, want: &str) -> String {
    let deadline = Instant::now() + PUSH;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = idler.next_line(left).await.unwrap_or_else(|e| panic!("waiting for {want:?}: {e}"));
        if line.contains(want) {
            return line;
        }
    }
}

#[tokio::test]
async fn two_imap_and_two_pop3_replicas_share_one_storage() {
    let mut sys = System::new(None);
    sys.start_storage().await;
    sys.add_account("alice@example.org", "alice password 1").await;
    sys.add_account("bob@example.org", "bob password 12").await;
    let _queue = sys.start_queue("queue").await;
    let smtp = sys.start_smtp("smtp").await;
    let imap_a = sys.start_imap("imap-a").await;
    let imap_b = sys.start_imap("imap-b").await;
    let pop_a = sys.start_pop3("pop3-a").await;
    let pop_b = sys.start_pop3("pop3-b").await;

    // IDLE on replica A sees mail delivered by SMTP (smtp-ingress →
    // delivery-queue → storage → NATS event → replica A).
    let mut a = Imap::login(imap_a.port("imap"), "alice@example.org", "alice password 1").await.expect("login A");
    a.ok("SELECT INBOX").await.expect("select A");
    a.idle().await.expect("idle A");
    let mut sender = Smtp::connect(smtp.port("mx")).await.expect("smtp");
    for n in 1..=2 {
        let r = sender
            .send_mail("carol@remote.test", "alice@example.org", &format!("Subject: n{n}\r\n\r\nbody {n}\r\n"))
            .await
            .expect("send");
        assert_eq!(r.code, 250, "{r:?}");
        pushed(&mut a, &format!("* {n} EXISTS")).await;
    }

    // A flag set through replica B is pushed to A's IDLE.
    let mut b = Imap::login(imap_b.port("imap"), "alice@example.org", "alice password 1").await.expect("login B");
    b.ok("SELECT INBOX").await.expect("select B");
    b.ok("STORE 1 +FLAGS (\\Flagged)").await.expect("store B");
    let line = pushed(&mut a, "FETCH").await;
    assert!(line.starts_with("* 1 FETCH") && line.contains("\\Flagged"), "{line}");

    // An expunge through B reaches A as EXPUNGE (allowed during IDLE,
    // RFC 2177 §3), and A's sequence numbers follow it.
    b.ok("STORE 1 +FLAGS (\\Deleted)").await.expect("delete B");
    b.ok("EXPUNGE").await.expect("expunge B");
    pushed(&mut a, "* 1 EXPUNGE").await;
    a.done().await.expect("done A");
    let fetched = a.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await.expect("fetch A");
    assert!(fetched.iter().any(|l| l.contains("Subject: n2")), "{fetched:?}");
    a.logout().await;
    b.logout().await;

    // POP3: one session per maildrop across replicas (RFC 1939 §8 [IN-USE]).
    let r = sender
        .send_mail("carol@remote.test", "bob@example.org", "Subject: for bob\r\n\r\npop me\r\n")
        .await
        .expect("send");
    assert_eq!(r.code, 250, "{r:?}");
    sender.quit().await;
    let deadline = Instant::now() + PUSH;
    let mut first = loop {
        let mut p = Pop3::login(pop_a.port("pop3"), "bob@example.org", "bob password 12")
            .await
            .expect("pop3 A")
            .expect("bob logs in on A");
        if p.cmd("STAT").await.expect("stat").starts_with("+OK 1 ") {
            break p;
        }
        p.quit().await.expect("quit");
        assert!(Instant::now() < deadline, "bob's message never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused = Pop3::login(pop_b.port("pop3"), "bob@example.org", "bob password 12").await.expect("pop3 B");
    match refused {
        Err(reply) => assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}"),
        Ok(_) => panic!("replica B opened a maildrop that replica A holds"),
    }
    assert!(first.cmd("DELE 1").await.expect("dele").starts_with("+OK"));
    assert!(first.quit().await.expect("quit").starts_with("+OK"));
    // The lock is released at QUIT: B gets the maildrop, and the DELE held.
    let mut second = Pop3::login(pop_b.port("pop3"), "bob@example.org", "bob password 12")
        .await
        .expect("pop3 B")
        .expect("B logs in once A quit");
    assert!(second.cmd("STAT").await.expect("stat").starts_with("+OK 0 "));
    second.quit().await.expect("quit");
}
