//! The queue end to end: delivery-queue stopped or storage down while mail
//! arrives, alias expansion, redelivered jobs, and a bounded load run.

mod common;
// The relay tests' scripted far-side MX, shared rather than written twice.
#[path = "../../delivery-queue/tests/relay_common/mod.rs"]
mod relay_common;

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
    // is finished: with every job done, only the message and its DSN were
    // ever queued, and alice has the one DSN.
    assert_eq!(mail.settled(WAIT).await, 2, "the message and one DSN, no DSN about the DSN");
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
/// not remembered), and a changed alias still leads where it did while the
/// entry lives, for mail accepted then. The TTL is far longer than the test
/// so that nothing expires during it however slow the machine is.
#[tokio::test]
async fn a_remembered_recipient_leads_where_it_did_within_the_cache_ttl() {
    const TTL: Duration = Duration::from_secs(600);
    let mail = Mail::start_with(|c| c.recipient_cache_ttl = TTL).await;
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

    admin.delete_alias(pb::DeleteAliasRequest { address: "desk@example.org".into() }).await.expect("delete");
    admin.add_alias(alias("bob@example.org")).await.expect("alias again");
    send(&mail, "x@remote.test", &["desk@example.org"], "remembered").await;
    let alice = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    assert!(String::from_utf8_lossy(&alice[0]).contains("Subject: remembered"));
    assert_eq!(mail.settled(WAIT).await, 1);
    assert_eq!(mail.inbox_count(&mail.bob).await, 0, "the alias as remembered counts");
}

/// After `recipient_cache_ttl` a changed alias counts. Sleeping longer than
/// the TTL is always safe, so this one can be short.
#[tokio::test]
async fn a_changed_alias_counts_after_the_cache_ttl() {
    const TTL: Duration = Duration::from_secs(1);
    let mail = Mail::start_with(|c| c.recipient_cache_ttl = TTL).await;
    let mut admin = mail.env.admin().await;
    let alias =
        |target: &str| pb::AddAliasRequest { address: "desk@example.org".into(), targets: vec![target.to_string()] };
    admin.add_alias(alias("alice@example.org")).await.expect("alias");
    send(&mail, "x@remote.test", &["desk@example.org"], "remembered").await;
    admin.delete_alias(pb::DeleteAliasRequest { address: "desk@example.org".into() }).await.expect("delete");
    admin.add_alias(alias("bob@example.org")).await.expect("alias again");
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    send(&mail, "x@remote.test", &["desk@example.org"], "looked up again").await;
    let bob = mail.wait_inbox(&mail.bob, 1, WAIT).await;
    assert!(String::from_utf8_lossy(&bob[0]).contains("Subject: looked up again"));
    let alice = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    assert!(String::from_utf8_lossy(&alice[0]).contains("Subject: remembered"));
}

/// Submission → local delivery → relay → remote MX as one flow, with the
/// DSN parameters a client gives (RFC 3461: RET, ENVID, NOTIFY, ORCPT)
/// carried all the way to the notices the sender gets back: a far side
/// without DSN gets the message once and a "relayed" notice goes back for
/// the recipient that asked for success; a refused recipient bounces with
/// headers only (RET=HDRS) and the envelope id; the local recipient gets
/// its copy.
#[tokio::test]
async fn submission_to_a_remote_mx_with_dsn_parameters_end_to_end() {
    use relay_common::{Script, ScriptedMx, resolver_for};
    let mx = ScriptedMx::start(Script {
        pipelining: true,
        reject_rcpt: vec!["gone@remote.test".into()],
        ..Script::default()
    })
    .await;
    let mail = Mail::start().await;
    let mut config = mail.queue_config();
    config.relay.hostname = "mx.example.org".into();
    config.relay.schedule.intervals = vec![Duration::from_secs(600)];
    let relay_stop = tokio_util::sync::CancellationToken::new();
    let relay = delivery_queue::relay::run(
        config,
        std::sync::Arc::new(resolver_for("remote.test", mx.addr)),
        relay_stop.clone(),
    )
    .await
    .expect("relay starts");

    // A real client (smtplib) on the submission port: STARTTLS, AUTH, and
    // the DSN parameters per command (RFC 3461 §§4.1-4.4, 5.2-5.4).
    let out = mail
        .python(
            r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='laptop.example.org')
s.starttls(context=ctx)
s.login('alice@example.org', 'alice-password')
assert 'dsn' in s.esmtp_features, s.esmtp_features
print('mail', s.mail('alice@example.org', ['RET=HDRS', 'ENVID=flow+2D42'])[0])
print('rcpt', s.rcpt('friend@remote.test', ['NOTIFY=SUCCESS,FAILURE', 'ORCPT=rfc822;Friend@remote.test'])[0])
print('rcpt', s.rcpt('gone@remote.test', ['NOTIFY=FAILURE'])[0])
print('rcpt', s.rcpt('bob@example.org')[0])
print('data', s.data(b'From: alice@example.org\r\nTo: friend@remote.test\r\nSubject: flow\r\n\r\nthe body text\r\n')[0])
s.quit()
"#,
            &[mail.submission().port().to_string(), mail.cert_file.display().to_string()],
        )
        .await;
    assert_eq!(out, "mail 250\nrcpt 250\nrcpt 250\nrcpt 250\ndata 250\n");

    mail.wait_inbox(&mail.bob, 1, WAIT).await;
    // Both notices (success and failure) are in alice's INBOX, in one or two messages.
    let deadline = Instant::now() + WAIT;
    let notices = loop {
        let inbox: Vec<String> =
            mail.inbox(&mail.alice).await.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
        let all = inbox.concat();
        if all.contains("Final-Recipient: rfc822; friend@remote.test")
            && all.contains("Final-Recipient: rfc822; gone@remote.test")
        {
            break inbox;
        }
        assert!(Instant::now() < deadline, "notices for both remote recipients: {inbox:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got = mx.received();
    assert_eq!(got.len(), 1, "one transaction to remote.test");
    assert_eq!(got[0].mail_from, "alice@example.org");
    assert_eq!(got[0].rcpts, vec!["friend@remote.test"]);
    assert!(String::from_utf8_lossy(&got[0].data).ends_with("Subject: flow\r\n\r\nthe body text\r\n"));

    let all = notices.concat();
    for expected in [
        "Original-Envelope-Id: flow-42",
        "Original-Recipient: rfc822; Friend@remote.test",
        "Action: relayed",
        "Action: failed",
        "Status: 5.1.1",
        "Content-Type: text/rfc822-headers",
        "Subject: flow",
    ] {
        assert!(all.contains(expected), "notices lack {expected:?}:\n{all}");
    }
    assert!(!all.contains("the body text"), "RET=HDRS: no body in any notice");
    assert!(!all.contains("bob@example.org"), "no notice about the local recipient");

    relay_stop.cancel();
    relay.await.expect("relay stops");
}
