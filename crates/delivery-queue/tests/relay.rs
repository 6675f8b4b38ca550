//! Outbound relay against a scripted remote MX on loopback, with real
//! storage (Postgres) and NATS JetStream. The resolver is a table that points
//! the test domains at the scripted MX; nothing leaves the machine.

mod relay_common;

use std::time::Duration;

use delivery_queue::relay::route::TableResolver;
use relay_common::*;

const MSG: &[u8] = b"From: Alice <alice@local.test>\r\nTo: bob@remote.test\r\nSubject: relay test\r\nMessage-ID: <t1@local.test>\r\n\r\nHello remote.\r\n.leading dot survives\r\n";

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn delivers_once_per_domain_with_starttls_pipelining_and_relayed_dsn() {
    let tls_mx =
        ScriptedMx::start(Script { starttls: true, pipelining: true, eight_bit: true, ..Script::default() }).await;
    let plain_mx = ScriptedMx::start(Script { helo_only: true, ..Script::default() }).await;
    let resolver = resolver_for("remote.test", tls_mx.addr)
        .with_mx("other.test", 5, "mx.other.test")
        .with_host("mx.other.test", plain_mx.addr);
    let ctx = Ctx::start(resolver, |_| {}).await;

    let mut carol = rcpt("carol@remote.test");
    carol.notify = 2 | 4; // SUCCESS,FAILURE
    ctx.queue("Q1", SENDER, vec![rcpt("bob@remote.test"), carol, rcpt("dave@other.test")], MSG, |_| {}).await;
    ctx.relay_idle(WAIT).await;

    // One transaction per domain, both recipients of remote.test together.
    let got = tls_mx.received();
    assert_eq!(got.len(), 1, "exactly one delivery to remote.test");
    assert_eq!(got[0].rcpts, vec!["bob@remote.test", "carol@remote.test"]);
    assert_eq!(got[0].mail_from, SENDER);
    assert!(got[0].tls, "STARTTLS was offered, so the message went encrypted");
    let body = text(&got[0].data);
    assert!(body.contains("Subject: relay test"));
    assert!(body.ends_with("Hello remote.\r\n.leading dot survives\r\n"), "dot-stuffing undone intact: {body:?}");
    let other = plain_mx.received();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].rcpts, vec!["dave@other.test"]);
    assert!(!other[0].tls);

    // carol asked for NOTIFY=SUCCESS and remote.test lacks DSN: a "relayed" DSN.
    wait_for(WAIT, "relayed DSN in alice's INBOX", || async { !ctx.inbox().await.is_empty() }).await;
    let inbox = ctx.inbox().await;
    assert_eq!(inbox.len(), 1, "only carol asked for a success notice");
    let dsn = text(&inbox[0]);
    assert!(dsn.contains("Return-Path: <>"), "DSN comes from the null sender:\n{dsn}");
    assert!(dsn.contains("Final-Recipient: rfc822; carol@remote.test"));
    assert!(dsn.contains("Action: relayed"));
    assert!(dsn.contains("Remote-MTA: dns; mx.remote.test"));
    assert!(dsn.contains("Content-Type: text/rfc822-headers"), "success notices carry headers only by default");
    assert!(!dsn.contains("bob@remote.test>: relayed"));

    // Nothing is sent twice: once every job is finished (the relay job
    // acked and gone from its work queue, the DSN delivered) no copy is
    // left that could be sent again, and JetStream handed the job out once.
    ctx.settled(WAIT).await;
    assert_eq!(ctx.relay_deliveries().await, 1, "the relay job was never redelivered");
    assert_eq!(tls_mx.count_for("bob@remote.test"), 1);
    assert_eq!(plain_mx.count_for("dave@other.test"), 1);
    ctx.stop().await;
}

#[tokio::test]
async fn temporary_failure_is_retried_on_schedule_and_shown_in_queue_state() {
    let mx = ScriptedMx::start(Script { pipelining: true, tempfail_rcpt: 2, ..Script::default() }).await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |c| {
        c.relay.schedule.intervals = vec![Duration::from_millis(700)];
    })
    .await;
    ctx.queue("Q2", SENDER, vec![rcpt("bob@remote.test")], MSG, |_| {}).await;

    // While it waits, `mailctl queue` sees it: recipient, attempts, next
    // attempt and the far side's answer.
    wait_for(WAIT, "relay state entry", || async { ctx.relay_state("Q2").await.is_some() }).await;
    let state = ctx.relay_state("Q2").await.expect("state");
    assert!(state.remote);
    assert_eq!(state.stream, ctx.config.relay_stream, "stream_seq refers to the relay stream");
    assert_eq!(state.recipients, vec!["bob@remote.test"]);
    assert!(state.attempts >= 1);
    assert!(state.next_retry > 0);
    assert!(state.last_error.contains("451 4.7.1 greylisted"), "{}", state.last_error);

    ctx.relay_idle(WAIT).await;
    assert_eq!(mx.count_for("bob@remote.test"), 1, "delivered exactly once");
    assert_eq!(mx.transactions.load(std::sync::atomic::Ordering::SeqCst), 3, "two refusals, then success");
    let at = mx.attempts_at.lock().expect("lock").clone();
    for pair in at.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(600), "retries follow the schedule: {at:?}");
    }
    // The entry is removed just after the ack that emptied the stream.
    wait_for(WAIT, "state removed once delivered", || async { ctx.relay_state("Q2").await.is_none() }).await;
    ctx.settled(WAIT).await;
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 0, "no DSN queued");
    assert!(ctx.inbox().await.is_empty(), "no DSN for a delivered message without NOTIFY=SUCCESS");
    ctx.stop().await;
}

#[tokio::test]
async fn permanent_failure_bounces_to_the_sender_with_dsn_fields() {
    let mx = ScriptedMx::start(Script {
        pipelining: true,
        reject_rcpt: vec!["bob@remote.test".into(), "erin@remote.test".into()],
        ..Script::default()
    })
    .await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |_| {}).await;

    // RET=HDRS, ENVID and ORCPT given.
    let mut bob = rcpt("bob@remote.test");
    bob.orcpt = "rfc822;Bob@Remote.test".into();
    ctx.queue("Q3", SENDER, vec![bob, rcpt("carol@remote.test")], MSG, |j| {
        j.ret = "HDRS".into();
        j.envid = "ENV-42".into();
    })
    .await;
    // No RET: the whole message comes back.
    ctx.queue("Q4", SENDER, vec![rcpt("erin@remote.test")], MSG, |_| {}).await;

    wait_for(WAIT, "two bounces in alice's INBOX", || async { ctx.inbox().await.len() >= 2 }).await;
    ctx.relay_idle(WAIT).await;
    assert_eq!(mx.count_for("carol@remote.test"), 1, "the good recipient got it once");
    let inbox: Vec<String> = ctx.inbox().await.iter().map(|m| text(m)).collect();
    assert_eq!(inbox.len(), 2);
    let hdrs = inbox.iter().find(|m| m.contains("Final-Recipient: rfc822; bob@")).expect("bounce for bob");
    for needle in [
        "Return-Path: <>",
        "From: Mail Delivery System <MAILER-DAEMON@mx.local.test>",
        "Auto-Submitted: auto-replied",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Content-Type: message/delivery-status",
        "Reporting-MTA: dns; mx.local.test",
        "Original-Envelope-Id: ENV-42",
        "Arrival-Date: ",
        "Original-Recipient: rfc822; Bob@Remote.test",
        "Final-Recipient: rfc822; bob@remote.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.remote.test",
        "Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: no such user here",
        "Content-Type: text/rfc822-headers",
        "Subject: relay test",
    ] {
        assert!(hdrs.contains(needle), "missing {needle:?} in\n{hdrs}");
    }
    assert!(!hdrs.contains("Hello remote."), "RET=HDRS: no body");
    assert!(!hdrs.contains("carol@remote.test"), "only failed recipients are reported");
    let full = inbox.iter().find(|m| m.contains("Final-Recipient: rfc822; erin@")).expect("bounce for erin");
    assert!(full.contains("Content-Type: message/rfc822"), "{full}");
    assert!(full.contains("Hello remote."), "no RET: full message attached");
    assert!(!full.contains("Original-Envelope-Id"), "no ENVID given");
    // Well-formed MIME, as storage's parser sees it (RFC 6522 report).
    for (top, parts) in inbox_structure(&ctx.env, ctx.alice.id).await {
        assert_eq!(top, "multipart/report");
        assert_eq!(parts[..2], ["text/plain", "message/delivery-status"]);
        assert!(parts[2] == "text/rfc822-headers" || parts[2] == "message/rfc822", "{parts:?}");
    }
    ctx.stop().await;
}

#[tokio::test]
async fn no_bounce_for_a_bounce_and_notify_never() {
    let mx = ScriptedMx::start(Script { reject_rcpt: vec!["bob@remote.test".into()], ..Script::default() }).await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |_| {}).await;
    // A DSN (null sender) that fails, and a message with NOTIFY=NEVER.
    ctx.queue("Q5", "", vec![rcpt("bob@remote.test")], MSG, |_| {}).await;
    let mut never = rcpt("bob@remote.test");
    never.notify = 1;
    ctx.queue("Q6", SENDER, vec![never], MSG, |_| {}).await;
    ctx.relay_idle(WAIT).await;
    wait_for(WAIT, "both attempts", || async { mx.transactions.load(std::sync::atomic::Ordering::SeqCst) >= 2 }).await;
    let first = mx.received();
    assert!(first.is_empty(), "bob was refused");
    // Nothing was queued for local delivery: no DSN at all. A DSN is
    // published before the failed job is acked, so with both jobs finished
    // the count is final.
    ctx.settled(WAIT).await;
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 0, "no DSN queued");
    assert!(ctx.inbox().await.is_empty());
    ctx.stop().await;
}

#[tokio::test]
async fn connection_lost_mid_data_is_retried_and_delivered_once() {
    let mx = ScriptedMx::start(Script { drop_mid_data: 1, pipelining: true, ..Script::default() }).await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |_| {}).await;
    ctx.queue("Q7", SENDER, vec![rcpt("bob@remote.test")], MSG, |_| {}).await;
    ctx.settled(WAIT).await;
    assert_eq!(mx.count_for("bob@remote.test"), 1);
    assert_eq!(mx.transactions.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 0, "no bounce: the retry succeeded");
    assert!(ctx.inbox().await.is_empty(), "no bounce: the retry succeeded");
    ctx.stop().await;
}

#[tokio::test]
async fn null_mx_fails_at_once_and_bounces() {
    let resolver = TableResolver::new().with_null_mx("nomail.test");
    let ctx = Ctx::start(resolver, |c| {
        // Long retry interval: a bounce within the test proves there was no retry.
        c.relay.schedule.intervals = vec![Duration::from_secs(600)];
    })
    .await;
    ctx.queue("Q8", SENDER, vec![rcpt("bob@nomail.test")], MSG, |_| {}).await;
    wait_for(WAIT, "bounce", || async { !ctx.inbox().await.is_empty() }).await;
    let dsn = text(&ctx.inbox().await[0]);
    assert!(dsn.contains("Status: 5.1.10"), "{dsn}");
    assert!(dsn.contains("Diagnostic-Code: X-Mailfleet; domain nomail.test does not accept mail (null MX"), "{dsn}");
    assert!(!dsn.contains("Remote-MTA"), "no server was contacted");
    ctx.relay_idle(WAIT).await;
    ctx.stop().await;
}

#[tokio::test]
async fn required_tls_is_not_downgraded() {
    let mx = ScriptedMx::start(Script::default()).await; // no STARTTLS
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |c| {
        c.relay.require_tls = vec!["remote.test".into()];
        c.relay.schedule.intervals = vec![Duration::from_secs(600)];
    })
    .await;
    ctx.queue("Q9", SENDER, vec![rcpt("bob@remote.test")], MSG, |_| {}).await;
    wait_for(WAIT, "deferred state", || async { ctx.relay_state("Q9").await.is_some() }).await;
    let state = ctx.relay_state("Q9").await.expect("state");
    assert!(state.last_error.contains("TLS required"), "{}", state.last_error);
    assert!(mx.received().is_empty(), "nothing sent in plain text");
    // The attempt ended (its state is saved just before the nak); a bounce
    // would have been queued before that.
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 0, "deferred, not bounced");
    ctx.stop().await;
}

#[tokio::test]
async fn too_large_for_the_far_side_and_smtputf8_rules() {
    let mx = ScriptedMx::start(Script { size: Some(64), ..Script::default() }).await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |_| {}).await;
    ctx.queue("Q10", SENDER, vec![rcpt("bob@remote.test")], MSG, |_| {}).await;
    // Needs SMTPUTF8 (non-ASCII recipient); the server lacks it: RFC 6531.
    ctx.queue("Q11", SENDER, vec![rcpt("jörg@remote.test")], b"Subject: x\r\n\r\nhi\r\n", |j| j.smtputf8 = true).await;
    wait_for(WAIT, "two bounces", || async { ctx.inbox().await.len() >= 2 }).await;
    let inbox: Vec<String> = ctx.inbox().await.iter().map(|m| text(m)).collect();
    assert!(inbox.iter().any(|m| m.contains("Status: 5.3.4")), "SIZE exceeded");
    assert!(inbox.iter().any(|m| m.contains("Status: 5.6.7")), "SMTPUTF8 missing");
    assert!(mx.received().is_empty());
    ctx.stop().await;
}

#[tokio::test]
async fn connections_are_reused_and_limited_per_destination() {
    let mx = ScriptedMx::start(Script {
        pipelining: true,
        data_delay: Some(Duration::from_millis(50)),
        ..Script::default()
    })
    .await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |c| c.relay.per_destination = 1).await;
    for i in 0..6 {
        ctx.queue(&format!("C{i}"), SENDER, vec![rcpt(&format!("u{i}@remote.test"))], MSG, |_| {}).await;
    }
    ctx.relay_idle(WAIT).await;
    for i in 0..6 {
        assert_eq!(mx.count_for(&format!("u{i}@remote.test")), 1);
    }
    assert_eq!(mx.max_active.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection at a time to remote.test");
    assert_eq!(mx.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection carried all six");
    ctx.stop().await;
}

#[tokio::test]
async fn deferred_mail_survives_a_relay_restart() {
    let mx = ScriptedMx::start(Script { tempfail_rcpt: 1, ..Script::default() }).await;
    let mut ctx = Ctx::start(resolver_for("remote.test", mx.addr), |c| {
        c.relay.schedule.intervals = vec![Duration::from_millis(800)];
    })
    .await;
    ctx.queue("R1", SENDER, vec![rcpt("bob@remote.test")], MSG, |_| {}).await;
    wait_for(WAIT, "first refusal", || async { ctx.relay_state("R1").await.is_some() }).await;
    ctx.stop_relay().await;
    assert_eq!(mx.count_for("bob@remote.test"), 0);
    ctx.start_relay().await;
    ctx.relay_idle(WAIT).await;
    assert_eq!(mx.count_for("bob@remote.test"), 1, "delivered once after the restart");
    assert_eq!(ctx.relay_state("R1").await, None);
    ctx.stop().await;
}

#[tokio::test]
async fn delay_notice_then_expiry_bounce() {
    // The message is aged by moving the services' clock past max_age, so
    // no real time has to pass and a slow first attempt cannot find the
    // message already expired.
    const MAX_AGE: Duration = Duration::from_secs(3600);
    let mx = ScriptedMx::start(Script { tempfail_rcpt: usize::MAX, ..Script::default() }).await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |c| {
        c.relay.schedule.intervals = vec![Duration::from_millis(300)];
        c.relay.schedule.max_age = MAX_AGE;
        c.relay.delay_notice_after = Some(Duration::ZERO);
    })
    .await;
    let mut bob = rcpt("bob@remote.test");
    bob.notify = 4 | 8; // FAILURE,DELAY
    ctx.queue("E1", SENDER, vec![bob], MSG, |_| {}).await;
    wait_for(WAIT, "delay notice", || async { !ctx.inbox().await.is_empty() }).await;
    // More attempts after the notice, each of which could have sent another.
    wait_for(WAIT, "three attempts", || async { mx.transactions.load(std::sync::atomic::Ordering::SeqCst) >= 3 }).await;
    assert_eq!(ctx.stream_len(&ctx.config.relay_stream).await, 1, "not expired yet: still queued");
    ctx.clock_ahead.store(MAX_AGE.as_secs(), std::sync::atomic::Ordering::SeqCst);
    // Expired at its next attempt: bounced, and every DSN delivered.
    ctx.settled(WAIT).await;
    let inbox: Vec<String> = ctx.inbox().await.iter().map(|m| text(m)).collect();
    assert_eq!(inbox.len(), 2, "one delay notice (not one per attempt) and one bounce");
    let delayed = inbox.iter().find(|m| m.contains("Action: delayed")).expect("delay notice");
    assert!(delayed.contains("Status: 4.7.1"), "{delayed}");
    assert!(delayed.contains("451 4.7.1 greylisted"));
    let failed = inbox.iter().find(|m| m.contains("Action: failed")).expect("bounce");
    assert!(failed.contains("Status: 4.4.7"), "expired: {failed}");
    assert!(failed.contains("Diagnostic-Code: smtp; 451 4.7.1 greylisted"), "{failed}");
    ctx.stop().await;
}

#[tokio::test]
async fn dsn_parameters_pass_to_a_dsn_server_and_8bit_rules() {
    let dsn_mx = ScriptedMx::start(Script { dsn: true, eight_bit: true, pipelining: true, ..Script::default() }).await;
    let old_mx = ScriptedMx::start(Script::default()).await; // neither 8BITMIME nor DSN
    let resolver = resolver_for("remote.test", dsn_mx.addr)
        .with_mx("old.test", 10, "mx.old.test")
        .with_host("mx.old.test", old_mx.addr);
    let ctx = Ctx::start(resolver, |_| {}).await;
    let eight_bit = "From: alice@local.test\r\nSubject: caf\u{e9}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nd\u{e9}j\u{e0} vu\r\n";
    let mut bob = rcpt("bob@remote.test");
    bob.notify = 2 | 4;
    bob.orcpt = "rfc822;bob+tag@remote.test".into();
    ctx.queue("P1", SENDER, vec![bob], eight_bit.as_bytes(), |j| {
        j.body_type = "8BITMIME".into();
        j.envid = "E 1".into();
        j.ret = "HDRS".into();
    })
    .await;
    ctx.queue("P2", SENDER, vec![rcpt("carl@old.test")], eight_bit.as_bytes(), |j| j.body_type = "8BITMIME".into())
        .await;
    wait_for(WAIT, "bounce for the 8-bit message", || async { !ctx.inbox().await.is_empty() }).await;
    ctx.relay_idle(WAIT).await;

    let got = dsn_mx.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_params, "BODY=8BITMIME RET=HDRS ENVID=E+201");
    assert_eq!(
        got[0].rcpt_lines,
        vec!["RCPT TO:<bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+2Btag@remote.test"]
    );
    assert_eq!(got[0].data, eight_bit.as_bytes(), "8-bit body passed intact");

    // RFC 6152 §3: no 8-bit data to a server without 8BITMIME: bounced 5.6.3.
    assert!(old_mx.received().is_empty());
    let inbox: Vec<String> = ctx.inbox().await.iter().map(|m| text(m)).collect();
    assert_eq!(inbox.len(), 1, "no success DSN: the DSN-capable server reports itself");
    assert!(inbox[0].contains("Final-Recipient: rfc822; carl@old.test"));
    assert!(inbox[0].contains("Status: 5.6.3"), "{}", inbox[0]);
    ctx.stop().await;
}

#[tokio::test]
async fn submitted_mail_reaches_local_and_remote_recipients_and_remote_bounces_go_out_from_null_sender() {
    let mx = ScriptedMx::start(Script {
        pipelining: true,
        reject_rcpt: vec!["gone@remote.test".into()],
        ..Script::default()
    })
    .await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |_| {}).await;
    let bob = ctx.env.add_account("bob@local.test", "bob-password").await;

    // As smtp-ingress queues it: one local and one remote recipient.
    ctx.submit("S1", SENDER, vec![rcpt("bob@local.test"), rcpt("friend@remote.test")], MSG).await;
    wait_for(WAIT, "remote delivery", || async { mx.count_for("friend@remote.test") == 1 }).await;
    wait_for(WAIT, "local delivery", || async { inbox_of(&ctx.env, bob.id).await.len() == 1 }).await;
    assert_eq!(mx.received()[0].rcpts, vec!["friend@remote.test"], "the local recipient is not relayed");

    // A remote sender's message to a recipient that fails: the DSN is
    // relayed to the sender's domain from the null sender.
    ctx.submit("S2", "author@remote.test", vec![rcpt("gone@remote.test")], MSG).await;
    wait_for(WAIT, "the DSN relayed to the sender's MX", || async {
        mx.received().iter().any(|r| r.mail_from.is_empty())
    })
    .await;
    let got = mx.received();
    let dsn = got.iter().find(|r| r.mail_from.is_empty()).expect("DSN");
    assert_eq!(dsn.rcpts, vec!["author@remote.test"]);
    assert!(text(&dsn.data).contains("Final-Recipient: rfc822; gone@remote.test"));

    // When the DSN itself fails, nothing more is generated (no bounce loop).
    ctx.submit("S3", "gone@remote.test", vec![rcpt("gone@remote.test")], MSG).await;
    // S1, S2, S3, the DSN for S2 and the DSN for S3: five jobs on the main
    // queue. Once the DSN for S3 is queued and every job is finished (its
    // relay attempt failed and was acked), a DSN about it would already
    // have been published.
    wait_for(WAIT, "the DSN for S3", || async { ctx.stream_published(&ctx.config.stream).await >= 5 }).await;
    ctx.settled(WAIT).await;
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 5, "the failed DSN produced no DSN");
    assert_eq!(mx.received().iter().filter(|r| r.mail_from.is_empty()).count(), 1);
    ctx.stop().await;
}

#[tokio::test]
async fn falls_back_to_the_next_mx_and_honours_smarthosts() {
    let backup = ScriptedMx::start(Script::default()).await;
    let relay_host = ScriptedMx::start(Script::default()).await;
    // The preferred MX refuses connections: a port bound for the whole
    // test but never listening (a port bound and released could be taken
    // by another test's server meanwhile, which would then answer).
    let dead_socket = tokio::net::TcpSocket::new_v4().expect("socket");
    dead_socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let dead = dead_socket.local_addr().expect("addr");
    let resolver = TableResolver::new()
        .with_mx("remote.test", 10, "mx1.remote.test")
        .with_mx("remote.test", 20, "mx2.remote.test")
        .with_host("mx1.remote.test", dead)
        .with_host("mx2.remote.test", backup.addr);
    let smarthost = relay_host.addr.to_string();
    let ctx = Ctx::start(resolver, move |c| {
        // No DNS at all for via-smarthost.test: everything goes to the smarthost.
        c.relay.smarthosts.insert("via-smarthost.test".into(), smarthost);
    })
    .await;
    ctx.queue("F1", SENDER, vec![rcpt("bob@remote.test"), rcpt("sam@via-smarthost.test")], MSG, |_| {}).await;
    ctx.relay_idle(WAIT).await;
    assert_eq!(backup.count_for("bob@remote.test"), 1, "RFC 5321 §5.1: next MX when the first is unreachable");
    assert_eq!(relay_host.count_for("sam@via-smarthost.test"), 1);
    // The job is finished: a bounce would have been queued before its ack.
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 0, "no bounce");
    ctx.stop().await;
    drop(dead_socket);
}

#[tokio::test]
async fn local_permanent_failures_can_be_bounced_with_the_same_dsn_path() {
    let ctx = Ctx::start(TableResolver::new(), |_| {}).await;
    let sender =
        delivery_queue::relay::DsnSender::new(ctx.env.channel_as("delivery-queue").await, ctx.js.clone(), &ctx.config);
    // A stored message and the job that carried it.
    let mut messages =
        mailfleet_proto::storage::v1::messages_client::MessagesClient::new(ctx.env.channel_as("delivery-queue").await);
    let chunks = vec![mailfleet_proto::storage::v1::PutBlobRequest { chunk: MSG.to_vec() }];
    let blob = messages.put_blob(futures::stream::iter(chunks)).await.expect("blob").into_inner();
    let mut never = rcpt("quiet@local.test");
    never.notify = 1;
    let job = mailfleet_proto::queue::v1::DeliveryJob {
        queue_id: "L1".into(),
        blob_id: blob.blob_id,
        mail_from: SENDER.into(),
        recipients: vec![rcpt("ghost@local.test"), never],
        ..Default::default()
    };
    let failures = vec![
        ("ghost@local.test".to_string(), "5.1.1".to_string(), "no such user".to_string()),
        ("quiet@local.test".to_string(), "5.2.2".to_string(), "over quota".to_string()),
    ];
    sender.bounce_failures(&job, &failures).await.expect("queued");
    // From the null sender: never reported.
    let null =
        mailfleet_proto::queue::v1::DeliveryJob { queue_id: "L2".into(), mail_from: String::new(), ..job.clone() };
    sender.bounce_failures(&null, &failures).await.expect("nothing to do");

    wait_for(WAIT, "local bounce", || async { !ctx.inbox().await.is_empty() }).await;
    let inbox: Vec<String> = ctx.inbox().await.iter().map(|m| text(m)).collect();
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].contains("Final-Recipient: rfc822; ghost@local.test"));
    assert!(inbox[0].contains("Status: 5.1.1"));
    assert!(inbox[0].contains("Diagnostic-Code: X-Mailfleet; no such user"));
    assert!(!inbox[0].contains("quiet@local.test"), "NOTIFY=NEVER honoured");
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 1, "only one DSN queued");
    ctx.stop().await;
}

#[tokio::test]
async fn a_wrong_smarthost_password_defers() {
    // (A successful login, and none to an unverified certificate: relay_tls.rs.)
    let ca = mailfleet_testkit::tls::TestCa::new();
    let dir = tempfile::tempdir().expect("dir");
    let roots = ca.write_cert(dir.path());
    let isp = ScriptedMx::start(Script {
        starttls: true,
        auth: Some(("relay-user".into(), "s3cret".into())),
        cert: Some(ca.issue(&["smtp.isp.test"])),
        ..Script::default()
    })
    .await;
    let smarthost = format!("smtp.isp.test:{}", isp.addr.port());
    // A wrong password is our configuration's problem: the mail waits.
    let ctx = Ctx::start(TableResolver::new().with_host("smtp.isp.test", isp.addr), move |c| {
        c.relay.smarthost = Some(smarthost);
        c.relay.smarthost_auth = Some(delivery_queue::relay::client::Credentials {
            username: "relay-user".into(),
            password: "wrong".into(),
        });
        c.relay.tls_extra_roots = Some(roots);
        c.relay.schedule.intervals = vec![Duration::from_secs(600)];
    })
    .await;
    ctx.queue("A2", SENDER, vec![rcpt("anyone@anywhere.test")], MSG, |_| {}).await;
    wait_for(WAIT, "deferred", || async { ctx.relay_state("A2").await.is_some() }).await;
    let state = ctx.relay_state("A2").await.expect("state");
    assert!(state.last_error.contains("535 5.7.8"), "{}", state.last_error);
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 0, "deferred, not bounced");
    assert!(isp.received().is_empty(), "nothing delivered");
    ctx.stop().await;
}

#[tokio::test]
async fn a_slow_far_side_does_not_cause_a_redelivery() {
    // The session takes longer than JetStream's ack wait; progress acks keep
    // the job with this relay, so it is delivered once.
    let mx = ScriptedMx::start(Script { data_delay: Some(Duration::from_millis(2500)), ..Script::default() }).await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |c| c.relay.ack_wait = Duration::from_secs(1)).await;
    ctx.queue("W1", SENDER, vec![rcpt("bob@remote.test")], MSG, |_| {}).await;
    ctx.relay_idle(WAIT).await;
    // A redelivery after the ack wait would be a second delivery of the
    // job by JetStream, counted by the consumer whether or not its attempt
    // had reached the MX yet; the ack removed the job, so none can follow.
    assert_eq!(ctx.relay_deliveries().await, 1, "JetStream redelivered the job during the slow session");
    assert_eq!(mx.count_for("bob@remote.test"), 1);
    assert_eq!(mx.transactions.load(std::sync::atomic::Ordering::SeqCst), 1, "no second attempt");
    ctx.stop().await;
}

#[tokio::test]
async fn the_relay_runs_inside_delivery_queue_when_enabled() {
    let env = mailfleet_testkit::TestEnv::start().await;
    let id = env.id.clone();
    let mut config = delivery_queue::QueueConfig {
        storage_url: env.storage_url(),
        identity: mailfleet_testkit::identity("delivery-queue"),
        nats_url: env.nats_url.clone(),
        stream: format!("EQ_{id}"),
        subject: format!("t{id}.queue"),
        relay_stream: format!("ER_{id}"),
        relay_subject: format!("t{id}.relay"),
        state_bucket: format!("ES_{id}"),
        ..delivery_queue::QueueConfig::default()
    };
    config.relay.enabled = true; // the production wiring: system resolver
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = delivery_queue::run(config.clone(), shutdown.clone()).await.expect("starts with the relay");
    let js = async_nats::jetstream::new(env.nats().await);
    let mut stream = js.get_stream(&config.relay_stream).await.expect("relay stream");
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&config.relay.consumer).await.expect("the relay's durable consumer exists");
    drop(consumer);
    assert!(stream.info().await.expect("info").state.consumer_count >= 1);
    shutdown.cancel();
    tokio::time::timeout(WAIT, running.task).await.expect("stops on shutdown").expect("task");
    for s in [&config.stream, &config.relay_stream, &format!("KV_{}", config.state_bucket)] {
        let _ = js.delete_stream(s).await;
    }
}

#[tokio::test]
async fn dsn_parameters_are_encoded_again_and_cannot_inject_commands() {
    let mx = ScriptedMx::start(Script { dsn: true, pipelining: true, ..Script::default() }).await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |_| {}).await;
    // As smtp-ingress stores them: decoded, `addr-type;address`.
    let mut bob = rcpt("bob@remote.test");
    bob.orcpt = "utf-8;jörg+x@remote.test".into();
    ctx.queue("I1", SENDER, vec![bob], MSG, |j| j.envid = "id=1+2".into()).await;
    // What an ORCPT of `a+0D+0ARCPT+20TO:<evil@remote.test>+0D+0AX+3Bb`
    // became before: a job whose "address type" carries a command.
    let mut carol = rcpt("carol@remote.test");
    carol.orcpt = "a\r\nRCPT TO:<evil@remote.test>\r\nX;b".into();
    ctx.queue("I2", SENDER, vec![carol], MSG, |j| j.envid = "E\r\nRSET".into()).await;
    ctx.relay_idle(WAIT).await;

    let got = mx.received();
    assert_eq!(got.len(), 2, "{got:?}");
    let bob = got.iter().find(|r| r.rcpts == ["bob@remote.test"]).expect("bob's message");
    assert_eq!(bob.mail_params, "ENVID=id+3D1+2B2");
    assert_eq!(bob.rcpt_lines, vec!["RCPT TO:<bob@remote.test> ORCPT=utf-8;j\\x{F6}rg\\x{2B}x@remote.test"]);
    let carol = got.iter().find(|r| r.rcpts == ["carol@remote.test"]).expect("carol's message");
    assert_eq!(carol.rcpt_lines, vec!["RCPT TO:<carol@remote.test>"], "the bad ORCPT is left off");
    assert_eq!(carol.mail_params, "", "the bad ENVID is left off");
    assert_eq!(mx.count_for("evil@remote.test"), 0);
    ctx.stop().await;
}
