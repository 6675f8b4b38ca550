//! A tiny health endpoint for services that do not speak gRPC to the outside
//! (the gateways): plain HTTP/1.0 on its own port, `GET /healthz` answers
//! `200 OK` while the service is serving and `503` before that and once
//! shutdown began. Compose healthchecks and load balancers (HAProxy
//! `option httpchk`) call it; nothing else is served there.
//!
//! A service that serves but needs its operator soon (its certificate is
//! about to expire) is *degraded*: still `200` — taking it out of service
//! would turn a warning into an outage — with the reasons in the body
//! (`serving, degraded: …`), which monitoring can look for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A request line longer than this is not a health check.
const MAX_REQUEST: usize = 1024;
/// A checker gets this long to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared "is the service serving" flag. Clones share the state.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    /// Not serving yet.
    pub fn new() -> Health {
        Health::default()
    }
    pub fn set_serving(&self, serving: bool) {
        self.0.store(serving, Ordering::SeqCst);
    }
    pub fn is_serving(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why this process is degraded; every health endpoint in it reports them.
static DEGRADED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Report the process degraded for `reason` (once per distinct reason).
pub fn report_degraded(reason: String) {
    if let Ok(mut reasons) = DEGRADED.lock()
        && !reasons.contains(&reason)
    {
        reasons.push(reason);
    }
}

/// The reasons reported so far.
pub fn degraded() -> Vec<String> {
    DEGRADED.lock().map(|r| r.clone()).unwrap_or_default()
}

/// A bound health endpoint.
pub struct HealthServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Bind `addr` and answer health checks until `shutdown`; then mark `health`
/// not serving and stop listening, so checkers see the service go at once.
pub async fn serve(addr: SocketAddr, health: Health, shutdown: CancellationToken) -> std::io::Result<HealthServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => {
                    health.set_serving(false);
                    return;
                }
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "health endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let serving = health.is_serving();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(READ_TIMEOUT, answer(stream, serving)).await;
            });
        }
    });
    Ok(HealthServer { addr, task })
}

async fn answer(mut stream: TcpStream, serving: bool) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    // Read the request line only (RFC 9112 §3: method SP target SP version CRLF).
    let line = loop {
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break buf[..end].to_vec();
        }
        if buf.len() > MAX_REQUEST {
            return Ok(());
        }
    };
    let mut words = line.split(|&b| b == b' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let reasons = degraded();
    let (status, body) = match (method, target) {
        (b"GET" | b"HEAD", b"/healthz") if serving && reasons.is_empty() => ("200 OK", "serving\n".to_string()),
        (b"GET" | b"HEAD", b"/healthz") if serving => {
            ("200 OK", format!("serving, degraded: {}\n", reasons.join("; ")))
        }
        (b"GET" | b"HEAD", b"/healthz") => ("503 Service Unavailable", "not serving\n".to_string()),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if method == b"HEAD" { "" } else { body.as_str() }
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn reports_serving_state_and_stops_on_shutdown() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let server = serve("127.0.0.1:0".parse().unwrap(), health.clone(), shutdown.clone()).await.unwrap();

        assert!(get(server.addr, "/healthz").await.starts_with("HTTP/1.0 503 "));
        health.set_serving(true);
        let ok = get(server.addr, "/healthz").await;
        // (`serving, degraded: …` when the other test reported a reason.)
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n") && ok.contains("\r\n\r\nserving"), "{ok}");
        assert!(get(server.addr, "/").await.starts_with("HTTP/1.0 404 "));

        shutdown.cancel();
        server.task.await.unwrap();
        assert!(!health.is_serving());
        assert!(TcpStream::connect(server.addr).await.is_err(), "listener closed after shutdown");
    }

    #[tokio::test]
    async fn a_degraded_service_still_serves_and_says_why() {
        let health = Health::new();
        health.set_serving(true);
        let shutdown = CancellationToken::new();
        let server = serve("127.0.0.1:0".parse().unwrap(), health.clone(), shutdown.clone()).await.unwrap();
        report_degraded("certificate test expires in 3 days".into());
        report_degraded("certificate test expires in 3 days".into());
        let answer = get(server.addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("serving, degraded: certificate test expires in 3 days\n"), "{answer}");
        shutdown.cancel();
    }
}
