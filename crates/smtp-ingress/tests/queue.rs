//! The queue end to end: delivery-queue stopped or storage down while mail
//! arrives, alias expansion, redelivered jobs, and a bounded load run.

mod common;

use std::time::{Duration, Instant};

use common::{Mail, Raw, expect};
use mailfleet_proto::storage::v1 as pb;

const WAIT: Duration = Duration::from_secs(60);

async fn send(mail: &Mail, from: &str, rcpts: &[&str], subject: &str) {
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO client.test").await, "250");
    expect(&c.cmd(&format!("MAIL FROM:<{from}>")).await, "250");
    for r in rcpts {
        expect(&c.cmd(&format!("RCPT TO:<{r}>")).await, "250");
    }
    expect(&c.cmd("DATA").await, "354");
    c.send(format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n.\r\n").as_bytes()).await;
    expect(&c.reply().await, "250 2.0.0 Ok: queued as");
    expect(&c.cmd("QUIT").await, "221");
}

#[tokio::test]
async fn queue_stopped_while_mail_arrives_then_delivers_once() {
    let mut mail = Mail::start().await;
    let mut admin = mail.env.admin().await;
    admin
        .add_alias(pb::AddAliasRequest {
            address: "team@example.org".into(),
            targets: vec!["alice@example.org".into(), "bob@example.org".into()],
        })
        .await
        .expect("alias");
    mail.stop_queue().await;
    // Alias + direct recipient: alice must still get one copy per message.
    for i in 0..3 {
        send(&mail, "x@remote.test", &["team@example.org", "alice@example.org"], &format!("m{i}")).await;
    }
    let stream = mail.queue_config().stream;
    assert_eq!(mail.stream_len(&stream).await, 3, "jobs wait in the stream");
    assert!(mail.inbox(&mail.alice).await.is_empty());

    // Keep a copy of one job to replay it later (a redelivery).
    let js = async_nats::jetstream::new(mail.env.nats().await);
    let first = js.get_stream(&stream).await.expect("stream").get_raw_message(1).await.expect("job 1");

    mail.start_queue().await;
    mail.wait_inbox(&mail.alice, 3, WAIT).await;
    mail.wait_inbox(&mail.bob, 3, WAIT).await;

    // The same job again (as JetStream would redeliver it): delivery keys
    // make it a no-op.
    js.publish(mail.queue_config().subject, first.payload.clone()).await.expect("publish").await.expect("ack");
    let deadline = Instant::now() + WAIT;
    while mail.stream_len(&stream).await > 0 {
        assert!(Instant::now() < deadline, "replayed job not consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Consumed from a work queue = acked, i.e. processed.
    assert_eq!(mail.inbox(&mail.alice).await.len(), 3);
    assert_eq!(mail.inbox(&mail.bob).await.len(), 3);
    let a = String::from_utf8_lossy(&mail.inbox(&mail.alice).await[0]).into_owned();
    assert!(a.starts_with("Return-Path: <x@remote.test>\r\nDelivered-To: alice@example.org\r\n"), "{a}");
}

#[tokio::test]
async fn storage_down_during_delivery_is_retried_with_backoff() {
    let mut mail = Mail::start().await;
    mail.stop_queue().await;
    send(&mail, "x@remote.test", &["bob@example.org"], "patience").await;
    mail.env.stop_storage().await;
    mail.start_queue().await;
    // The job fails, is kept, and retried with a growing delay.
    let deadline = Instant::now() + WAIT;
    let state = loop {
        let states = mail.queue_state().await;
        if let Some(s) = states.iter().find(|s| s.attempts >= 3) {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no retries recorded: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!state.last_error.is_empty());
    assert_eq!(state.recipients, vec!["bob@example.org".to_string()]);
    assert_eq!(mail.stream_len(&mail.queue_config().stream).await, 1, "the job is still queued");

    // Storage comes back (new port): a queue pointed at it delivers the job.
    mail.env.start_storage().await;
    mail.stop_queue().await;
    mail.start_queue().await;
    let inbox = mail.wait_inbox(&mail.bob, 1, WAIT).await;
    assert!(String::from_utf8_lossy(&inbox[0]).ends_with("body of patience\r\n"));
    let deadline = Instant::now() + WAIT;
    while !mail.queue_state().await.is_empty() {
        assert!(Instant::now() < deadline, "state entry not removed after delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn thousand_messages_from_twenty_connections_arrive_exactly_once() {
    // The write path only: SPF/DMARC here would just wait on the test's
    // unanswered DNS server.
    let mail = Mail::start_with(|c| c.inbound_auth.enabled = false).await;
    let started = Instant::now();
    let addr = mail.mx();
    let mut tasks = Vec::new();
    for conn in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::connect(addr).await;
            expect(&c.cmd("EHLO load.test").await, "250");
            for n in 0..50 {
                // PIPELINING: MAIL, RCPT and DATA in one write.
                c.send(b"MAIL FROM:<load@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n").await;
                expect(&c.reply().await, "250");
                expect(&c.reply().await, "250");
                expect(&c.reply().await, "354");
                let body = format!("Subject: load {conn}-{n}\r\n\r\n{}\r\n.\r\n", "x".repeat(1000));
                c.send(body.as_bytes()).await;
                expect(&c.reply().await, "250 2.0.0");
            }
            expect(&c.cmd("QUIT").await, "221");
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let accepted = started.elapsed();
    let inbox = mail.wait_inbox(&mail.alice, 1000, Duration::from_secs(120)).await;
    let delivered = started.elapsed();
    assert_eq!(inbox.len(), 1000);
    let mut subjects: Vec<String> = inbox
        .iter()
        .filter_map(|m| String::from_utf8_lossy(m).lines().find(|l| l.starts_with("Subject: load")).map(str::to_string))
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 1000, "every message exactly once");
    eprintln!("1000 messages: accepted in {accepted:?}, delivered in {delivered:?}");
}

#[tokio::test]
async fn over_quota_is_retried_until_space_is_freed() {
    let mail = Mail::start().await;
    let mut admin = mail.env.admin().await;
    admin.set_quota(pb::SetQuotaRequest { address: "bob@example.org".into(), quota_bytes: 10 }).await.expect("quota");
    send(&mail, "x@remote.test", &["bob@example.org"], "too big for the quota").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let states = mail.queue_state().await;
        if states.iter().any(|s| s.last_error.contains("bob@example.org: over quota")) {
            break;
        }
        assert!(Instant::now() < deadline, "over-quota failure not recorded: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mail.inbox_count(&mail.bob).await, 0);
    // Temporary by default: once the quota allows it, the retry delivers.
    admin.set_quota(pb::SetQuotaRequest { address: "bob@example.org".into(), quota_bytes: 0 }).await.expect("quota");
    mail.wait_inbox(&mail.bob, 1, WAIT).await;
}

#[tokio::test]
async fn a_permanent_local_failure_is_bounced_to_the_sender_once() {
    let mut mail = Mail::start().await;
    // Over quota as a permanent failure (RFC 3463 5.2.2) instead of retrying.
    mail.stop_queue().await;
    let mut config = mail.queue_config();
    config.over_quota = delivery_queue::config::OverQuota::Permanent;
    let token = tokio_util::sync::CancellationToken::new();
    let running = delivery_queue::run(config, token.clone()).await.expect("delivery-queue starts");
    mail.queue = Some((running, token));

    let mut admin = mail.env.admin().await;
    admin.set_quota(pb::SetQuotaRequest { address: "bob@example.org".into(), quota_bytes: 10 }).await.expect("quota");
    send(&mail, "alice@example.org", &["bob@example.org"], "does not fit").await;

    let inbox = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    let dsn = String::from_utf8_lossy(&inbox[0]);
    for expected in [
        "Return-Path: <>",
        "multipart/report",
        "report-type=delivery-status",
        "Final-Recipient: rfc822; bob@example.org",
        "Action: failed",
        "Status: 5.2.2",
        "Diagnostic-Code: smtp; 550 5.2.2 over quota",
        "Subject: does not fit",
    ] {
        assert!(dsn.contains(expected), "DSN lacks {expected:?}:\n{dsn}");
    }
    assert_eq!(mail.inbox_count(&mail.bob).await, 0);
    // The bounce comes from <>, so it is never bounced in turn, and the job
    // is finished: no second DSN arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mail.inbox_count(&mail.alice).await, 1);
}

/// Aliases are expanded when the message is accepted (as Postfix's cleanup
/// does): the job carries the accounts, and a first delivery attempt goes
/// where the alias led at receipt even if it changed while the job waited.
#[tokio::test]
async fn aliases_are_expanded_at_receipt() {
    let mut mail = Mail::start().await;
    let mut admin = mail.env.admin().await;
    let alias = |targets: &[&str]| pb::AddAliasRequest {
        address: "desk@example.org".into(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
    };
    admin.add_alias(alias(&["alice@example.org"])).await.expect("alias");
    mail.stop_queue().await;
    send(&mail, "x@remote.test", &["desk@example.org"], "for the desk").await;
    admin.delete_alias(pb::DeleteAliasRequest { address: "desk@example.org".into() }).await.expect("delete alias");
    admin.add_alias(alias(&["bob@example.org"])).await.expect("alias again");
    mail.start_queue().await;
    mail.wait_inbox(&mail.alice, 1, WAIT).await;
    let stream = mail.queue_config().stream;
    let deadline = Instant::now() + WAIT;
    while mail.stream_len(&stream).await > 0 {
        assert!(Instant::now() < deadline, "job not consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(mail.inbox(&mail.bob).await.is_empty(), "the alias as it was at receipt counts");
}

/// Where a recipient leads is remembered for `recipient_cache_ttl`: an
/// address that was unknown is accepted as soon as it exists (unknowns are
/// not remembered), a changed alias counts from the next lookup after the
/// TTL, and mail accepted before that goes where the alias led then.
#[tokio::test]
async fn directory_changes_reach_rcpt_within_the_cache_ttl() {
    let mail = Mail::start_with(|c| c.recipient_cache_ttl = Duration::from_secs(2)).await;
    let mut admin = mail.env.admin().await;
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO client.test").await, "250");
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<desk@example.org>").await, "550 5.1.1");
    let alias =
        |target: &str| pb::AddAliasRequest { address: "desk@example.org".into(), targets: vec![target.to_string()] };
    admin.add_alias(alias("alice@example.org")).await.expect("alias");
    expect(&c.cmd("RCPT TO:<desk@example.org>").await, "250");
    expect(&c.cmd("QUIT").await, "221");

    // Within the TTL the alias still leads to alice; after it, to bob.
    admin.delete_alias(pb::DeleteAliasRequest { address: "desk@example.org".into() }).await.expect("delete");
    admin.add_alias(alias("bob@example.org")).await.expect("alias again");
    send(&mail, "x@remote.test", &["desk@example.org"], "remembered").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    send(&mail, "x@remote.test", &["desk@example.org"], "looked up again").await;
    let alice = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    let bob = mail.wait_inbox(&mail.bob, 1, WAIT).await;
    assert!(String::from_utf8_lossy(&alice[0]).contains("Subject: remembered"));
    assert!(String::from_utf8_lossy(&bob[0]).contains("Subject: looked up again"));
}
