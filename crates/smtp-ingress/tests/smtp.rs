//! smtp-ingress end to end: real clients (Python smtplib, a raw pipelining
//! client) against smtp-ingress + delivery-queue + storage on loopback; the
//! delivered message is read back through storage's gRPC API.

mod common;

use std::time::Duration;

use common::{Mail, Raw, expect, strip_trace};

const WAIT: Duration = Duration::from_secs(30);

/// smtplib: EHLO, MAIL with BODY=8BITMIME SMTPUTF8, RCPT, DATA (it dot-stuffs).
const SEND: &str = r#"
import smtplib, sys
host, port, sender, rcpts, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(','), sys.argv[5]
msg = open(path, 'rb').read()
s = smtplib.SMTP(host, port, local_hostname='client.example.net')
s.ehlo()
print('features', ' '.join(sorted(s.esmtp_features)))
try:
    refused = s.sendmail(sender, rcpts, msg, mail_options=['BODY=8BITMIME', 'SMTPUTF8'])
    print('refused', refused)
except smtplib.SMTPRecipientsRefused as e:
    print('all-refused', {k: v[0] for k, v in e.recipients.items()})
except smtplib.SMTPResponseException as e:
    print('error', e.smtp_code)
s.quit()
"#;

#[tokio::test]
async fn smtplib_message_arrives_byte_for_byte() {
    let mail = Mail::start().await;
    let original = "From: X <x@remote.test>\r\nTo: alice@example.org\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
        Grüße, Jörg ✓\r\n.leading dot\r\n..two dots\r\n.\r\n \r\nlast line\r\n"
        .as_bytes()
        .to_vec();
    let path = mail.env.blob_dir.with_file_name("msg.eml");
    std::fs::write(&path, &original).expect("write message");
    let out = mail
        .python(
            SEND,
            &[
                "127.0.0.1".into(),
                mail.mx().port().to_string(),
                "x@remote.test".into(),
                "alice@example.org,nobody@example.org".into(),
                path.display().to_string(),
            ],
        )
        .await;
    for ext in ["pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn", "starttls"] {
        assert!(out.contains(ext), "{ext} advertised: {out}");
    }
    assert!(out.contains("refused {'nobody@example.org': (550, b'5.1.1"), "{out}");

    let inbox = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    assert_eq!(inbox.len(), 1);
    let trace = strip_trace(&inbox[0], &original);
    let lines: Vec<&str> = trace.split("\r\n").collect();
    assert_eq!(lines[0], "Return-Path: <x@remote.test>");
    assert_eq!(lines[1], "Delivered-To: alice@example.org");
    assert!(lines[2].starts_with("Received: from client.example.net ([127.0.0.1])"), "{trace}");
    assert!(trace.contains("by mx.example.org (Mailfleet) with UTF8ESMTP id "), "{trace}");
    assert!(trace.contains("\tfor <alice@example.org>;"), "{trace}");
    // SPF/DKIM/DMARC ran (DNS is a closed loopback port here: temperror/none).
    assert!(trace.contains("Authentication-Results: mx.example.org;\r\n\tspf=temperror"), "{trace}");
    assert!(trace.contains("dmarc="), "{trace}");
    assert!(mail.inbox(&mail.bob).await.is_empty());
}

#[tokio::test]
async fn pipelined_session_unknown_user_relay_refusal_and_bdat() {
    let mail = Mail::start().await;
    let mut c = Raw::connect(mail.mx()).await;
    // RFC 2920: the whole group in one write; replies come back in order.
    c.send(
        b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.org>\r\n\
          RCPT TO:<nobody@example.org>\r\nRCPT TO:<someone@elsewhere.test>\r\nRCPT TO:<POSTMASTER@example.org>\r\nDATA\r\n",
    )
    .await;
    let ehlo = c.reply().await;
    assert!(ehlo.contains("250-PIPELINING\r\n") && ehlo.contains("250-CHUNKING\r\n"), "{ehlo}");
    expect(&c.reply().await, "250 2.0.0");
    expect(&c.reply().await, "250 2.0.0");
    expect(&c.reply().await, "550 5.1.1");
    expect(&c.reply().await, "554 5.7.1 Relay access denied");
    expect(&c.reply().await, "250 2.0.0");
    expect(&c.reply().await, "354 ");
    c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<y@remote.test>\r\nRCPT TO:<alice@example.org>\r\nBDAT 20\r\nSubject: chunked\r\n\r\nBDAT 7 LAST\r\nhello\r\n")
        .await;
    expect(&c.reply().await, "250 2.0.0 Ok: queued as ");
    expect(&c.reply().await, "250 2.0.0");
    expect(&c.reply().await, "250 2.0.0");
    expect(&c.reply().await, "250 2.0.0 20 octets received");
    expect(&c.reply().await, "250 2.0.0 Ok: queued as ");
    // Out of sequence and unknown commands: errors, and the session goes on.
    expect(&c.cmd("DATA").await, "503 5.5.1");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "503 5.5.1");
    expect(&c.cmd("FROB").await, "500 5.5.2");
    expect(&c.cmd("MAIL FROM:bad").await, "501");
    expect(&c.cmd("VRFY alice").await, "252 2.5.0");
    expect(&c.cmd("NOOP").await, "250 2.0.0");
    expect(&c.cmd("HELP").await, "214");
    expect(&c.cmd("QUIT").await, "221 2.0.0");

    let inbox = mail.wait_inbox(&mail.alice, 2, WAIT).await;
    // POSTMASTER@ resolves to the domain's first account (alice): she still
    // gets one copy only (each account once per job).
    // Jobs are delivered concurrently: find each message whatever its UID.
    let bodies: Vec<String> = inbox.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
    assert_eq!(bodies.len(), 2);
    let pipelined = bodies.iter().find(|b| b.ends_with("Subject: pipelined\r\n\r\nbody\r\n")).expect("DATA message");
    let chunked = bodies
        .iter()
        .find(|b| b.ends_with("\r\nSubject: chunked\r\n\r\nhello\r\n"))
        .unwrap_or_else(|| panic!("BDAT message in {bodies:?}"));
    assert!(pipelined.contains("Return-Path: <x@remote.test>"), "{pipelined}");
    assert!(chunked.contains("with ESMTP id"), "{chunked}");
}

#[tokio::test]
async fn ten_megabyte_message_and_size_limits() {
    let mail = Mail::start_with(|c| c.max_message_size = 12 * 1024 * 1024).await;
    let mut c = Raw::connect(mail.mx()).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.contains("250-SIZE 12582912\r\n"), "{ehlo}");
    // RFC 1870 §6: a declared size above the limit is refused at MAIL.
    expect(&c.cmd("MAIL FROM:<x@remote.test> SIZE=20000000").await, "552 5.3.4");

    let mut body = Vec::with_capacity(10 * 1024 * 1024 + 200);
    body.extend_from_slice(b"Subject: big\r\n\r\n");
    let mut i = 0u64;
    while body.len() < 10 * 1024 * 1024 {
        body.extend_from_slice(
            format!("{i:08} abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n").as_bytes(),
        );
        i += 1;
    }
    expect(&c.cmd("MAIL FROM:<x@remote.test> SIZE=10485800").await, "250");
    expect(&c.cmd("RCPT TO:<bob@example.org>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    c.send(&body).await;
    c.send(b".\r\n").await;
    expect(&c.reply().await, "250 2.0.0 Ok: queued as");

    // Undeclared size, more data than allowed: read to the end, then 552.
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<bob@example.org>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    c.send(&body).await;
    c.send(&body[16..]).await;
    c.send(b".\r\n").await;
    expect(&c.reply().await, "552 5.3.4");
    // Same for BDAT.
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<bob@example.org>").await, "250");
    c.send(format!("BDAT {} LAST\r\n", body.len() * 2).as_bytes()).await;
    c.send(&body).await;
    c.send(&body).await;
    expect(&c.reply().await, "552 5.3.4");
    expect(&c.cmd("NOOP").await, "250");
    expect(&c.cmd("QUIT").await, "221");

    let inbox = mail.wait_inbox(&mail.bob, 1, WAIT).await;
    strip_trace(&inbox[0], &body);
    // Nothing else arrives: the refused messages were never queued.
    assert_eq!(mail.settled(WAIT).await, 1, "only the message that fit was queued");
    assert_eq!(mail.inbox(&mail.bob).await.len(), 1);
}

/// smtplib on the submission ports: STARTTLS with the test certificate,
/// AUTH, sender ownership, remote recipients.
const SUBMIT: &str = r#"
import smtplib, ssl, sys
mode, port, cafile, user, pw, sender, rcpts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7].split(',')
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False  # the certificate is verified against the test CA file
if mode == 'implicit':
    s = smtplib.SMTP_SSL('127.0.0.1', port, context=ctx, local_hostname='laptop.example.org')
    s.ehlo()
else:
    s = smtplib.SMTP('127.0.0.1', port, local_hostname='laptop.example.org')
    s.ehlo()
    code, msg = s.mail(sender)
    print('mail-before-tls', code, msg.decode())
    s.starttls(context=ctx)
    s.ehlo()
print('auth-offered', s.has_extn('auth'), s.esmtp_features.get('auth', ''))
code, msg = s.mail(sender)
print('mail-before-auth', code)
s.rset()
try:
    s.login(user, 'wrong-password')
except smtplib.SMTPAuthenticationError as e:
    print('bad-login', e.smtp_code)
s.login(user, pw)
print('login ok')
code, msg = s.mail('bob@example.org')
print('foreign-sender', code)
s.rset()
refused = s.sendmail(sender, rcpts, b'Subject: submitted\r\n\r\nhello from ' + mode.encode() + b'\r\n')
print('refused', refused)
s.quit()
"#;

#[tokio::test]
async fn submission_starttls_auth_and_implicit_tls() {
    let mail = Mail::start().await;
    let out = mail
        .python(
            SUBMIT,
            &[
                "starttls".into(),
                mail.submission().port().to_string(),
                mail.cert_file.display().to_string(),
                "alice@example.org".into(),
                "alice-password".into(),
                "alice@example.org".into(),
                "bob@example.org,friend@elsewhere.test".into(),
            ],
        )
        .await;
    assert!(out.contains("mail-before-tls 530 5.7.0 Must issue a STARTTLS command first"), "{out}");
    assert!(out.contains("auth-offered True  PLAIN LOGIN"), "{out}");
    assert!(out.contains("mail-before-auth 530"), "{out}");
    assert!(out.contains("bad-login 535"), "{out}");
    assert!(out.contains("login ok"), "{out}");
    assert!(out.contains("foreign-sender 553"), "{out}");
    assert!(out.contains("refused {}"), "{out}");

    let out = mail
        .python(
            SUBMIT,
            &[
                "implicit".into(),
                mail.submissions().port().to_string(),
                mail.cert_file.display().to_string(),
                "alice@example.org".into(),
                "alice-password".into(),
                "alice@example.org".into(),
                "bob@example.org".into(),
            ],
        )
        .await;
    assert!(out.contains("login ok") && out.contains("refused {}"), "{out}");

    let inbox = mail.wait_inbox(&mail.bob, 2, WAIT).await;
    let texts: Vec<String> = inbox.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
    let first = texts.iter().find(|t| t.ends_with("hello from starttls\r\n")).expect("STARTTLS submission");
    assert!(
        first.starts_with(
            "Return-Path: <alice@example.org>\r\nDelivered-To: bob@example.org\r\nReceived: from laptop.example.org"
        ),
        "{first}"
    );
    assert!(first.contains("with ESMTPSA id"), "{first}");
    assert!(first.contains("(version=TLSv1.3 cipher=TLS13_"), "{first}");
    assert!(first.contains("(authenticated user alice@example.org)"), "{first}");
    assert!(!first.contains("Authentication-Results"), "no inbound checks on submission: {first}");
    assert!(first.ends_with("Subject: submitted\r\n\r\nhello from starttls\r\n"), "{first}");
    assert!(texts.iter().any(|t| t.ends_with("hello from implicit\r\n")), "{texts:?}");

    // The remote recipient was handed to the relay stream (issue 4), not dropped.
    let relay = mail.queue_config().relay_stream;
    let deadline = std::time::Instant::now() + WAIT;
    while mail.stream_len(&relay).await < 1 {
        assert!(std::time::Instant::now() < deadline, "relay job not published: {:?}", mail.queue_state().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn plaintext_auth_refused_off_loopback_policy() {
    // With plaintext AUTH disabled, AUTH before STARTTLS is refused (RFC 4954 §4).
    let mail = Mail::start_with(|c| {
        c.allow_plaintext_auth_on_loopback = false;
        c.postmaster = "postmaster@example.org".into();
    })
    .await;
    let mut c = Raw::connect(mail.mx()).await;
    let ehlo = c.cmd("EHLO c").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    expect(&c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAGFsaWNlLXBhc3N3b3Jk").await, "538 5.7.11");
    // RFC 5321 §4.5.1: bare Postmaster is accepted.
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<Postmaster>").await, "250 2.0.0");
    expect(&c.cmd("RSET").await, "250");
    expect(&c.cmd("STARTTLS").await, "220 2.0.0");
}

#[tokio::test]
async fn storage_down_gives_451_and_loses_nothing() {
    let mut mail = Mail::start().await;
    // Keep the queue still so the stream shows exactly what was published.
    mail.stop_queue().await;
    let stream = mail.queue_config().stream;
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO c").await, "250");
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
    mail.env.stop_storage().await;
    expect(&c.cmd("RCPT TO:<bob@example.org>").await, "451 4.3.0");
    expect(&c.cmd("DATA").await, "354");
    c.send(b"Subject: during outage\r\n\r\nx\r\n.\r\n").await;
    expect(&c.reply().await, "451 4.3.0");
    // No job that could deliver later.
    assert_eq!(mail.stream_len(&stream).await, 0);
    expect(&c.cmd("QUIT").await, "221");

    // Storage back (on a new port): the sender's retry goes through, once.
    mail.env.start_storage().await;
    mail.stop_ingress().await;
    mail.start_ingress().await;
    mail.start_queue().await;
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO c").await, "250");
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    c.send(b"Subject: retried\r\n\r\nx\r\n.\r\n").await;
    expect(&c.reply().await, "250 2.0.0");
    let inbox = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    assert_eq!(inbox.len(), 1);
    assert!(String::from_utf8_lossy(&inbox[0]).ends_with("Subject: retried\r\n\r\nx\r\n"));
}

/// A TLS session on the implicit-TLS port, its greeting read.
async fn submissions_session(mail: &Mail) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncReadExt;
    let pem = std::fs::read(&mail.cert_file).expect("certificate");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(mail.submissions()).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.expect("TLS");
    let mut greeting = [0u8; 4];
    tls.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting, b"220 ");
    tls
}

#[tokio::test]
async fn connection_caps_count_every_listener() {
    let mail = Mail::start_with(|c| c.connection.max_connections_per_ip = 2).await;
    let a = Raw::connect(mail.mx()).await;
    let b = submissions_session(&mail).await;
    let mut third = tokio::net::TcpStream::connect(mail.submission()).await.expect("connect");
    let mut buf = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut third, &mut buf).await.expect("read");
    expect(&buf, "421 4.7.0");
    drop((a, b));
    // Slots are released when connections close.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut s = tokio::net::TcpStream::connect(mail.mx()).await.expect("connect");
        let mut b = [0u8; 3];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut b).await.expect("read");
        if &b == b"220" {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The service-wide cap counts every listener too.
    let mail = Mail::start_with(|c| {
        c.connection.max_connections = 2;
        c.connection.max_connections_per_ip = 0;
    })
    .await;
    let _a = submissions_session(&mail).await;
    let _b = Raw::connect(mail.submission()).await;
    let mut third = tokio::net::TcpStream::connect(mail.mx()).await.expect("connect");
    let mut buf = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut third, &mut buf).await.expect("read");
    expect(&buf, "421 4.3.2");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let mail = Mail::start_with(|c| c.connection.write_timeout = Duration::from_millis(500)).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = socket.connect(mail.mx()).await.expect("connect");
    // Pipelined commands whose replies the client never reads: once the
    // replies fill the buffers, the gateway's write waits, times out, and
    // the connection is closed (so the client's own writes fail).
    let noops = b"NOOP\r\n".repeat(64 * 1024);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, tcp.write_all(&noops)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => panic!("the gateway still holds a connection that reads nothing"),
        }
    }
}

#[tokio::test]
async fn spf_and_dmarc_results_and_reject_policy() {
    // TXT answers pinned in the configuration; any other lookup goes to a
    // closed loopback port (temperror), so nothing leaves the machine.
    let mail = Mail::start_with(|c| {
        c.inbound_auth.reject_on_dmarc_reject = true;
        for (name, txt) in [
            ("remote.test", "v=spf1 ip4:127.0.0.1 -all"),
            ("_dmarc.remote.test", "v=DMARC1; p=reject"),
            ("evil.test", "v=spf1 -all"),
            ("_dmarc.evil.test", "v=DMARC1; p=reject"),
        ] {
            c.inbound_auth.static_txt.insert(name.into(), txt.into());
        }
    })
    .await;
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO client.test").await, "250");
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    c.send(b"From: x@remote.test\r\nSubject: aligned\r\n\r\nok\r\n.\r\n").await;
    expect(&c.reply().await, "250 2.0.0");
    // SPF fails and nothing else aligns: DMARC p=reject → refused (RFC 7489 §6.6.2).
    expect(&c.cmd("MAIL FROM:<y@evil.test>").await, "250");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    c.send(b"From: y@evil.test\r\nSubject: forged\r\n\r\nno\r\n.\r\n").await;
    expect(&c.reply().await, "550 5.7.1");
    expect(&c.cmd("QUIT").await, "221");

    let inbox = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    let text = String::from_utf8_lossy(&inbox[0]).into_owned();
    assert!(text.contains("\tspf=pass "), "{text}");
    assert!(text.contains("\tdmarc=pass header.from=remote.test policy.dmarc=reject"), "{text}");
    assert_eq!(mail.settled(WAIT).await, 1, "the forged message was not queued");
    assert_eq!(mail.inbox_count(&mail.alice).await, 1, "the forged message was not delivered");
}

#[tokio::test]
async fn idle_timeout_and_shutdown_say_421() {
    let mut mail = Mail::start_with(|c| c.connection.idle_timeout = Duration::from_millis(300)).await;
    // RFC 5321 §4.5.3.2: an idle client is disconnected with 421.
    let mut idle = Raw::connect(mail.mx()).await;
    expect(&idle.reply().await, "421 4.4.2");
    // Shutdown: a connected client is told 421 before the listener goes away.
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO c").await, "250");
    let stop = mail.stop_ingress();
    let (_, reply) = tokio::join!(stop, c.reply());
    expect(&reply, "421 4.3.2");
}

#[tokio::test]
async fn queue_unavailable_gives_451() {
    let mail = Mail::start().await;
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO c").await, "250");
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
    // The stream disappears: JetStream cannot acknowledge the job.
    let js = async_nats::jetstream::new(mail.env.nats().await);
    js.delete_stream(mail.queue_config().stream).await.expect("delete stream");
    expect(&c.cmd("DATA").await, "354");
    c.send(b"Subject: no queue\r\n\r\nx\r\n.\r\n").await;
    expect(&c.reply().await, "451 4.3.0");
    // The session goes on.
    expect(&c.cmd("NOOP").await, "250");
    assert_eq!(mail.inbox_count(&mail.alice).await, 0);
}

#[tokio::test]
async fn an_authenticated_user_cannot_send_as_another_domain_in_the_header() {
    let mail = Mail::start().await;
    let mut admin = mail.env.admin().await;
    admin
        .add_domain(mailfleet_proto::storage::v1::AddDomainRequest { name: "b.test".into() })
        .await
        .expect("domain b.test");
    mail.env.add_account("ceo@b.test", "ceo-password").await;
    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO c").await, "250");
    // alice@example.org, on loopback (plaintext AUTH is the development default).
    expect(&c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAGFsaWNlLXBhc3N3b3Jk").await, "235");
    let mut send = async |message: &str| {
        expect(&c.cmd("MAIL FROM:<alice@example.org>").await, "250");
        expect(&c.cmd("RCPT TO:<bob@example.org>").await, "250");
        expect(&c.cmd("DATA").await, "354");
        c.cmd(&format!("{message}\r\n.")).await
    };
    let refused = send("From: CEO <ceo@b.test>\r\nSubject: wire the money\r\n\r\nnow").await;
    expect(&refused, "550 5.7.1");
    let refused = send("From: alice@example.org\r\nFrom: ceo@b.test\r\nSubject: two\r\n\r\nx").await;
    expect(&refused, "550 5.7.1");
    let accepted = send("From: Alice <alice@example.org>\r\nSubject: mine\r\n\r\nfine").await;
    expect(&accepted, "250 2.0.0");
    let inbox = mail.wait_inbox(&mail.bob, 1, WAIT).await;
    assert_eq!(mail.settled(WAIT).await, 1, "only alice's own message was queued");
    assert_eq!(mail.inbox(&mail.bob).await.len(), 1, "only alice's own message arrived");
    assert!(String::from_utf8_lossy(&inbox[0]).ends_with("Subject: mine\r\n\r\nfine\r\n"));
}

/// A test signing key (Ed25519, RFC 8463), made for this test only; its
/// public half is pinned as the DKIM key record of the test domains.
const ED25519_SEED: [u8; 32] = [
    0x14, 0xf5, 0xba, 0x7e, 0x5e, 0x20, 0xf0, 0xfa, 0x62, 0x35, 0x9e, 0x1d, 0x16, 0xb8, 0x20, 0x76, 0xa1, 0x86, 0x3b,
    0x4b, 0xe6, 0xaf, 0x9b, 0x05, 0xc7, 0x18, 0x42, 0xa7, 0xb3, 0xeb, 0xed, 0xdf,
];
const ED25519_PUBLIC: [u8; 32] = [
    0x62, 0x2c, 0x7d, 0xbb, 0x72, 0xa3, 0x4f, 0x9d, 0x8b, 0x0d, 0xf4, 0x2a, 0xdc, 0x02, 0xee, 0x4e, 0xc6, 0x20, 0xae,
    0x83, 0x13, 0x64, 0xfe, 0x81, 0x41, 0xb4, 0xb4, 0x30, 0xd0, 0x6e, 0x06, 0xb1,
];
const ED25519_RECORD: &str = "v=DKIM1; k=ed25519; p=Yix9u3KjT52LDfQq3ALuTsYgroMTZP6BQbS0MNBuBrE=";

fn test_key() -> mail_auth::common::crypto::Ed25519Key {
    mail_auth::common::crypto::Ed25519Key::from_seed_and_public_key(&ED25519_SEED, &ED25519_PUBLIC).expect("key")
}

/// `message` with a DKIM-Signature of signed.test (selector s1) on top.
fn dkim_signed(message: &str) -> String {
    use mail_auth::common::headers::HeaderWriter;
    let signature = mail_auth::dkim::DkimSigner::from_key(test_key())
        .domain("signed.test")
        .selector("s1")
        .headers(["From", "To", "Subject"])
        .sign(message.as_bytes())
        .expect("sign");
    format!("{}{message}", signature.to_header())
}

/// `message` with the first ARC set (RFC 8617 §5.1) of forwarder.test on top,
/// as a mailing list that checked it would add.
fn arc_sealed(message: &str) -> String {
    use mail_auth::common::headers::HeaderWriter;
    let parsed = mail_auth::AuthenticatedMessage::parse(message.as_bytes()).expect("parse");
    let results = mail_auth::AuthenticationResults::new("forwarder.test");
    let set = mail_auth::arc::ArcSealer::from_key(test_key())
        .domain("forwarder.test")
        .selector("arc")
        .headers(["From", "To", "Subject"])
        .seal(&parsed, &results, &mail_auth::ArcOutput::default())
        .expect("seal");
    format!("{}{message}", set.to_header())
}

/// Inbound DKIM (RFC 6376 §6) and ARC (RFC 8617 §5.2) verification end to
/// end: the results reach the delivered message, a DKIM signature aligned
/// with the From domain satisfies DMARC on its own (SPF fails here), and a
/// message changed after signing fails both and is refused under p=reject.
#[tokio::test]
async fn inbound_dkim_and_arc_are_verified() {
    let mail = Mail::start_with(|c| {
        c.inbound_auth.reject_on_dmarc_reject = true;
        for (name, txt) in [
            ("signed.test", "v=spf1 -all"),
            ("_dmarc.signed.test", "v=DMARC1; p=reject"),
            ("s1._domainkey.signed.test", ED25519_RECORD),
            ("arc._domainkey.forwarder.test", ED25519_RECORD),
            ("list.test", "v=spf1 ip4:127.0.0.1 -all"),
        ] {
            c.inbound_auth.static_txt.insert(name.into(), txt.into());
        }
    })
    .await;
    let signed = dkim_signed("From: a@signed.test\r\nTo: alice@example.org\r\nSubject: signed\r\n\r\nsigned body\r\n");
    let tampered = signed.replace("signed body", "changed body");
    let sealed = arc_sealed("From: b@list.test\r\nTo: alice@example.org\r\nSubject: sealed\r\n\r\nsealed body\r\n");
    let broken = sealed.replace("sealed body", "changed body").replace("Subject: sealed", "Subject: broken");

    let mut c = Raw::connect(mail.mx()).await;
    expect(&c.cmd("EHLO client.test").await, "250");
    let mut send = async |from: &str, message: &str| {
        expect(&c.cmd(&format!("MAIL FROM:<{from}>")).await, "250");
        expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
        expect(&c.cmd("DATA").await, "354");
        c.cmd(&format!("{message}.")).await
    };
    expect(&send("a@signed.test", &signed).await, "250 2.0.0");
    expect(&send("a@signed.test", &tampered).await, "550 5.7.1");
    expect(&send("b@list.test", &sealed).await, "250 2.0.0");
    expect(&send("b@list.test", &broken).await, "250 2.0.0");
    expect(&c.cmd("QUIT").await, "221");

    assert_eq!(mail.settled(WAIT).await, 3, "the tampered message was refused, not queued");
    let inbox: Vec<String> =
        mail.inbox(&mail.alice).await.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
    let find = |subject: &str| {
        inbox.iter().find(|m| m.contains(&format!("Subject: {subject}\r\n"))).unwrap_or_else(|| panic!("{subject}"))
    };
    // Only the results header this system prepends counts (RFC 8601 §5:
    // one naming its own host), not anything a sender wrote.
    let results = |m: &str| {
        let start = m.find("Authentication-Results: mx.example.org").unwrap_or_else(|| panic!("no results: {m}"));
        let header = &m[start..];
        let end = header.match_indices("\r\n").map(|(i, _)| i).find(|&i| !header[i + 2..].starts_with([' ', '\t']));
        header[..end.expect("header ends")].to_string()
    };
    let signed = results(find("signed"));
    assert!(signed.contains("dkim=pass header.d=signed.test"), "{signed}");
    assert!(signed.contains("spf=fail"), "{signed}");
    assert!(signed.contains("dmarc=pass header.from=signed.test"), "DKIM alignment alone passes DMARC: {signed}");
    let sealed = results(find("sealed"));
    assert!(sealed.contains("arc=pass"), "{sealed}");
    // Changed after sealing: the last ARC-Message-Signature's body hash no
    // longer matches, so the chain does not pass (mail-auth reports it as
    // neutral with the reason).
    let broken = results(find("broken"));
    assert!(broken.contains("arc=neutral (body hash did not verify)"), "{broken}");
}
