//! The real binary and a real SIGTERM (what `docker compose stop` and a
//! rolling restart send): delivery-queue reports healthy, then on SIGTERM
//! closes its health endpoint, stops pulling and exits 0.

use std::process::Stdio;
use std::time::Duration;

use mailfleet_testkit::process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sigterm_stops_the_worker_with_exit_status_zero() {
    let id = mailfleet_testkit::unique();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ready_file = tmp.path().join("ready");
    let (stream, relay_stream, bucket) = (format!("MQ_SIG_{id}"), format!("MR_SIG_{id}"), format!("QS_SIG_{id}"));
    let mut worker = Command::new(env!("CARGO_BIN_EXE_delivery-queue"))
        .arg("--ready-file")
        .arg(&ready_file)
        .env("MAILFLEET_QUEUE_NATS_URL", mailfleet_testkit::nats_url())
        // Never contacted: no job arrives on this test's stream.
        .env("MAILFLEET_QUEUE_STORAGE_URL", "https://127.0.0.1:9")
        .envs(mailfleet_testkit::identity_env("MAILFLEET_QUEUE_", "delivery-queue"))
        .env("MAILFLEET_QUEUE_STREAM", &stream)
        .env("MAILFLEET_QUEUE_SUBJECT", format!("sig{id}.jobs"))
        .env("MAILFLEET_QUEUE_CONSUMER", format!("sig{id}"))
        .env("MAILFLEET_QUEUE_RELAY_STREAM", &relay_stream)
        .env("MAILFLEET_QUEUE_RELAY_SUBJECT", format!("sig{id}.relay"))
        .env("MAILFLEET_QUEUE_STATE_BUCKET", &bucket)
        .env("MAILFLEET_QUEUE_HEALTH_LISTEN", "127.0.0.1:0")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("delivery-queue starts");

    let listeners = process::wait_ready(&mut worker, &ready_file, WAIT).await.expect("delivery-queue ready");
    let health = process::listener(&listeners, "health_listen");
    let mut s = TcpStream::connect(health).await.expect("health endpoint listens once ready");
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");

    let pid = worker.id().expect("running");
    let kill = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
    assert!(kill.success());
    let status = tokio::time::timeout(WAIT, worker.wait()).await.expect("exits in time").expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(TcpStream::connect(health).await.is_err(), "health endpoint closed");

    let js = async_nats::jetstream::new(async_nats::connect(mailfleet_testkit::nats_url()).await.expect("NATS"));
    for name in [stream, relay_stream, format!("KV_{bucket}")] {
        js.delete_stream(name).await.expect("clean up the test's stream");
    }
}
