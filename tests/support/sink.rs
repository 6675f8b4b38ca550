//! A far side for the relay: an SMTP server on loopback that takes every
//! message and keeps those it answered `250` to. On request it holds the
//! reply to the next final dot until the connection drops: a sender that
//! dies then never got its `250`, and the message was not taken (RFC 5321
//! §4.1.1.4: the receiver takes responsibility with its reply).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Shared {
    /// When each message was taken, and its data.
    received: Mutex<Vec<(Instant, Vec<u8>)>>,
    hold_next: AtomicBool,
    holding: AtomicBool,
    dropped: AtomicUsize,
}

pub struct SinkMx {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl SinkMx {
    pub async fn start() -> SinkMx {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the sink");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let for_sessions = shared.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, for_sessions.clone()));
            }
        });
        SinkMx { addr, shared }
    }

    /// Every message taken (the data, dot-unstuffed).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.shared.received.lock().expect("lock").iter().map(|(_, data)| data.clone()).collect()
    }

    /// Every message taken, with the moment it was (its `250` sent).
    pub fn received_at(&self) -> Vec<(Instant, Vec<u8>)> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Hold the reply to the next final dot until the connection drops.
    pub fn hold_next(&self) {
        self.shared.hold_next.store(true, Ordering::SeqCst);
    }

    /// A transaction waits for its held reply right now.
    pub fn holding(&self) -> bool {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// Transactions whose sender went away while their reply was held.
    pub fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

async fn session(socket: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut io = BufReader::new(socket);
    io.get_mut().write_all(b"220 sink.remote.test ESMTP\r\n").await?;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.remote.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n"
        } else if upper == "DATA" {
            io.get_mut().write_all(b"354 go ahead\r\n").await?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if io.read_until(b'\n', &mut l).await? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                data.extend_from_slice(if l.starts_with(b"..") { &l[1..] } else { &l });
            }
            if shared.hold_next.swap(false, Ordering::SeqCst) {
                shared.holding.store(true, Ordering::SeqCst);
                // The sender waits for the reply: the next thing read is
                // the end of the connection.
                let mut rest = Vec::new();
                let _ = io.read_until(b'\n', &mut rest).await;
                shared.dropped.fetch_add(1, Ordering::SeqCst);
                shared.holding.store(false, Ordering::SeqCst);
                return Ok(());
            }
            shared.received.lock().expect("lock").push((Instant::now(), data));
            b"250 2.0.0 taken\r\n"
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper.starts_with("MAIL") || upper.starts_with("RCPT") || upper == "RSET" || upper == "NOOP" {
            b"250 2.0.0 ok\r\n"
        } else {
            b"502 5.5.2 not here\r\n"
        };
        io.get_mut().write_all(reply).await?;
    }
}
