//! The real binary and a real SIGTERM (what `docker compose stop` and a
//! rolling restart send): an IDLE session gets `* BYE` at once and the
//! process exits 0.

use std::process::Stdio;
use std::time::Duration;

use mailfleet_testkit::{TestEnv, process};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);

async fn line(io: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    match tokio::time::timeout(WAIT, io.read_line(&mut l)).await.expect("answer in time") {
        Ok(0) | Err(_) => "<EOF>".into(),
        Ok(_) => l.trim_end().to_string(),
    }
}

async fn cmd(io: &mut BufReader<TcpStream>, tag: &str, command: &str) -> String {
    io.get_mut().write_all(format!("{tag} {command}\r\n").as_bytes()).await.expect("write");
    loop {
        let l = line(io).await;
        if l.starts_with(&format!("{tag} ")) || l.starts_with('+') || l == "<EOF>" {
            return l;
        }
    }
}

#[tokio::test]
async fn sigterm_says_bye_to_an_idle_session_and_exits_zero() {
    let env = TestEnv::start().await;
    env.add_account("sig@example.org", "sig-password").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let ready_file = tmp.path().join("ready");
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_imap-gateway"))
        .arg("--ready-file")
        .arg(&ready_file)
        .env("MAILFLEET_IMAP_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_IMAP_TLS_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_IMAP_HEALTH_LISTEN", "127.0.0.1:0")
        .env("MAILFLEET_IMAP_STORAGE_URL", env.storage_url())
        .envs(mailfleet_testkit::identity_env("MAILFLEET_IMAP_", "imap-gateway"))
        .env("MAILFLEET_IMAP_NATS_URL", &env.nats_url)
        .env("MAILFLEET_IMAP_EVENTS_PREFIX", &env.events_prefix)
        .env("MAILFLEET_IMAP_TLS__SELF_SIGNED_DIR", tmp.path())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("imap-gateway starts");
    let listeners = process::wait_ready(&mut gateway, &ready_file, WAIT).await.expect("imap-gateway ready");
    let listen = process::listener(&listeners, "listen");

    let mut io = BufReader::new(TcpStream::connect(listen).await.expect("connect"));
    assert!(line(&mut io).await.starts_with("* OK"));
    assert!(cmd(&mut io, "a", "LOGIN sig@example.org sig-password").await.starts_with("a OK"));
    assert!(cmd(&mut io, "b", "SELECT INBOX").await.starts_with("b OK"));
    assert_eq!(cmd(&mut io, "c", "IDLE").await, "+ idling");

    let pid = gateway.id().expect("running");
    let kill = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
    assert!(kill.success());
    let bye = line(&mut io).await;
    assert!(bye.starts_with("* BYE "), "{bye}");
    assert_eq!(line(&mut io).await, "<EOF>");
    let status = tokio::time::timeout(WAIT, gateway.wait()).await.expect("exits in time").expect("wait");
    assert!(status.success(), "exit status {status}");
}
