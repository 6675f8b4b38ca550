//! The real binary and a real SIGTERM (what `docker compose stop` and a
//! rolling restart send): smtp-ingress lets a message in DATA finish, exits
//! 0, and the message is delivered once.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Mail, Raw, expect};
use mailfleet_testkit::process;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

fn sigterm(child: &Child) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
    assert!(status.success());
}

async fn exits_zero(mut child: Child) {
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits in time").expect("wait");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn sigterm_during_data_the_message_is_delivered_once_and_the_process_exits_zero() {
    let mut mail = Mail::start().await;
    mail.stop_ingress().await;
    mail.stop_queue().await;
    let ingress = mail.ingress_config();
    let queue = mail.queue_config();

    let tmp = tempfile::tempdir().expect("tempdir");
    let ready_file = tmp.path().join("ready");
    let mut smtp = Command::new(env!("CARGO_BIN_EXE_smtp-ingress"))
        .arg("--ready-file")
        .arg(&ready_file)
        .env("MAILFLEET_SMTP_HOSTNAME", &ingress.hostname)
        .env("MAILFLEET_SMTP_MX_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_SMTP_SUBMISSION_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_SMTP_SUBMISSIONS_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_SMTP_HEALTH_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_SMTP_STORAGE_URL", &ingress.storage_url)
        .envs(mailfleet_testkit::identity_env("MAILFLEET_SMTP_", "smtp-ingress"))
        .env("MAILFLEET_SMTP_NATS_URL", &ingress.nats_url)
        .env("MAILFLEET_SMTP_QUEUE__STREAM", &ingress.queue.stream)
        .env("MAILFLEET_SMTP_QUEUE__SUBJECT", &ingress.queue.subject)
        .env("MAILFLEET_SMTP_INBOUND_AUTH__ENABLED", "false")
        .env("MAILFLEET_SMTP_TLS__CERT_FILE", &mail.cert_file)
        .env("MAILFLEET_SMTP_TLS__KEY_FILE", &mail.key_file)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("smtp-ingress starts");
    let listeners = process::wait_ready(&mut smtp, &ready_file, WAIT).await.expect("smtp-ingress ready");
    let mx = process::listener(&listeners, "mx_listen");

    let mut c = Raw::connect(mx).await;
    expect(&c.cmd("EHLO sender.test").await, "250");
    expect(&c.cmd("MAIL FROM:<x@remote.test>").await, "250");
    expect(&c.cmd("RCPT TO:<alice@example.org>").await, "250");
    expect(&c.cmd("DATA").await, "354");
    c.send(b"Subject: across SIGTERM\r\n\r\nfirst line\r\n").await;
    sigterm(&smtp);
    // The listener goes away at once...
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(mx).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...but the message being sent completes and is acknowledged.
    c.send(b"last line\r\n.\r\n").await;
    expect(&c.reply().await, "250 2.0.0 Ok: queued as ");
    expect(&c.reply().await, "421 4.3.2");
    exits_zero(smtp).await;
    assert_eq!(mail.stream_len(&queue.stream).await, 1, "the job is durable");

    mail.start_queue().await;
    let inbox = mail.wait_inbox(&mail.alice, 1, WAIT).await;
    assert!(String::from_utf8_lossy(&inbox[0]).ends_with("Subject: across SIGTERM\r\n\r\nfirst line\r\nlast line\r\n"));
    mail.stop_queue().await;
    assert_eq!(mail.inbox_count(&mail.alice).await, 1, "delivered once");
}
