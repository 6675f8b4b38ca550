//! Throughput bench against a running system (not a test):
//!
//! ```text
//! cargo run --release -p smtp-ingress --example smtp_bench -- \
//!     127.0.0.1:2525 alice@example.org 10 2000 10240
//! ```
//! Arguments: MX address, recipient, concurrent connections, messages,
//! message size in bytes. Prints the accept rate (250 replies per second).
//! Delivery can be followed with `mailctl account list`.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<String> {
    loop {
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + pos + 1];
            if line.len() >= 4 && line[3] == b' ' {
                let end = start + pos + 1;
                let text = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end);
                return Ok(text);
            }
            start += pos + 1;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:2525".into());
    let rcpt = args.get(2).cloned().unwrap_or_else(|| "alice@example.org".into());
    let conns: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let total: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let size: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(10 * 1024);
    let line = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    let body: String = line.repeat(size / line.len() + 1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, rcpt, body) = (addr.clone(), rcpt.clone(), body.clone());
        let count = total / conns + usize::from(c < total % conns);
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await?;
            let mut buf = Vec::new();
            reply(&mut s, &mut buf).await?;
            s.write_all(b"EHLO bench.test\r\n").await?;
            reply(&mut s, &mut buf).await?;
            let mut ok = 0usize;
            for n in 0..count {
                let cmds = format!("MAIL FROM:<bench@bench.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
                s.write_all(cmds.as_bytes()).await?;
                for _ in 0..3 {
                    reply(&mut s, &mut buf).await?;
                }
                s.write_all(format!("Subject: bench {c}-{n}\r\n\r\n{body}.\r\n").as_bytes()).await?;
                if reply(&mut s, &mut buf).await?.starts_with("250") {
                    ok += 1;
                }
            }
            s.write_all(b"QUIT\r\n").await?;
            Ok::<usize, std::io::Error>(ok)
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{accepted} of {total} messages accepted in {secs:.2} s: {:.0} msg/s", accepted as f64 / secs);
    Ok(())
}
