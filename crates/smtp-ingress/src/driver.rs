//! The connection driver: listeners, TLS, timeouts, limits. Bytes in, the
//! session decides, replies out. The only module that does I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, field};

use crate::codec::{CommandReader, LineReader, Parsed, Reply};
use crate::config::IngressConfig;
use crate::session::{Backend, Body, Next, Policy, Port, Session, Step, TlsInfo};

/// Which listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Mx,
    /// STARTTLS submission (587).
    Submission,
    /// Implicit TLS submission (465, RFC 8314 §3.3).
    Submissions,
}

/// Longest SASL response line (RFC 4954 §4 sets no limit; 12 KiB is plenty
/// for PLAIN/LOGIN).
const MAX_AUTH_LINE: usize = 12 * 1024;
const READ_CHUNK: usize = 64 * 1024;

pub struct Shared<B> {
    pub config: Arc<IngressConfig>,
    pub backend: B,
    pub tls: TlsAcceptor,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl<B> Shared<B> {
    pub fn new(config: Arc<IngressConfig>, backend: B, tls: TlsAcceptor, shutdown: CancellationToken) -> Shared<B> {
        Shared { config, backend, tls, shutdown, tracker: TaskTracker::new(), per_ip: Mutex::new(HashMap::new()) }
    }
}

/// Holds one of the per-IP connection slots; released on drop.
struct IpSlot<B> {
    shared: Arc<Shared<B>>,
    ip: IpAddr,
}

impl<B> Drop for IpSlot<B> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.shared.per_ip.lock()
            && let Some(n) = map.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn take_slot<B>(shared: &Arc<Shared<B>>, ip: IpAddr) -> Option<IpSlot<B>> {
    let mut map = shared.per_ip.lock().ok()?;
    let n = map.entry(ip).or_insert(0);
    if *n >= shared.config.max_connections_per_ip {
        return None;
    }
    *n += 1;
    Some(IpSlot { shared: shared.clone(), ip })
}

/// Accept connections until shutdown.
pub async fn accept_loop<B: Backend + Clone + 'static>(listener: TcpListener, kind: Listener, shared: Arc<Shared<B>>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!("conn", proto = "smtp", listener = ?kind, %peer, user = field::Empty);
        let shared2 = shared.clone();
        shared.tracker.spawn(
            async move {
                let Some(slot) = take_slot(&shared2, peer.ip()) else {
                    let mut stream = stream;
                    let _ = stream.write_all(b"421 4.7.0 Too many connections from your address\r\n").await;
                    return;
                };
                connection(shared2, stream, peer, kind).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
        }
    }
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(data).await,
            Io::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
}

fn tls_info(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> TlsInfo {
    let conn = stream.get_ref().1;
    let version = conn.protocol_version().map(|v| format!("{v:?}").replace('_', ".")).unwrap_or_default();
    let cipher = conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
    TlsInfo { version, cipher }
}

async fn handshake(shared: &Shared<impl Sized>, stream: TcpStream) -> Option<Io> {
    let timeout = shared.config.timeouts.tls_handshake;
    match tokio::time::timeout(timeout, shared.tls.accept(stream)).await {
        Ok(Ok(tls)) => Some(Io::Tls(Box::new(tls))),
        Ok(Err(err)) => {
            tracing::info!(error = %err, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!("TLS handshake timed out");
            None
        }
    }
}

/// Buffered connection: input not yet consumed, output not yet written.
struct Conn {
    io: Io,
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
}

enum Input {
    More,
    Eof,
    Timeout,
    Shutdown,
}

impl Conn {
    fn pending(&self) -> &[u8] {
        &self.inbuf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.inbuf.len() {
            self.inbuf.clear();
            self.pos = 0;
        }
    }

    fn push(&mut self, replies: &[Reply]) {
        for r in replies {
            r.write_to(&mut self.out);
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.io.write_all(&out).await?;
        }
        Ok(())
    }

    /// RFC 2920 §3.2: replies may wait until the server would block on
    /// input, so a pipelined group is answered in one write.
    async fn fill(&mut self, timeout: Duration, shutdown: &CancellationToken) -> std::io::Result<Input> {
        self.flush().await?;
        if self.pos > 0 {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.inbuf.len();
        self.inbuf.resize(len + READ_CHUNK, 0);
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, self.io.read(&mut self.inbuf[len..])) => Some(r),
            _ = shutdown.cancelled() => None,
        };
        let Some(result) = result else {
            self.inbuf.truncate(len);
            return Ok(Input::Shutdown);
        };
        match result {
            Ok(Ok(0)) => {
                self.inbuf.truncate(len);
                Ok(Input::Eof)
            }
            Ok(Ok(n)) => {
                self.inbuf.truncate(len + n);
                Ok(Input::More)
            }
            Ok(Err(e)) => {
                self.inbuf.truncate(len);
                Err(e)
            }
            Err(_) => {
                self.inbuf.truncate(len);
                Ok(Input::Timeout)
            }
        }
    }
}

async fn connection<B: Backend + Clone>(shared: Arc<Shared<B>>, stream: TcpStream, peer: SocketAddr, kind: Listener) {
    let (io, tls) = if kind == Listener::Submissions {
        match handshake(&shared, stream).await {
            Some(Io::Tls(s)) => {
                let info = tls_info(&s);
                (Io::Tls(s), Some(info))
            }
            _ => return,
        }
    } else {
        (Io::Plain(stream), None)
    };
    let config = &shared.config;
    let policy = Policy {
        hostname: config.hostname.clone(),
        port: if kind == Listener::Mx { Port::Mx } else { Port::Submission },
        max_message_size: config.max_message_size,
        max_recipients: config.max_recipients,
        max_auth_failures: config.max_auth_failures,
        starttls_available: tls.is_none(),
        plaintext_auth_allowed: config.allow_plaintext_auth_on_loopback && peer.ip().is_loopback(),
        enforce_sender_ownership: config.enforce_sender_ownership,
        verify_inbound: config.inbound_auth.enabled,
        postmaster: if config.postmaster.is_empty() {
            format!("postmaster@{}", config.hostname)
        } else {
            config.postmaster.clone()
        },
    };
    let session = Session::new(policy, shared.backend.clone(), peer.ip(), tls);
    let conn = Conn { io, inbuf: Vec::with_capacity(READ_CHUNK), pos: 0, out: Vec::new() };
    match run(&shared, session, conn).await {
        Ok(()) => {}
        Err(err) => tracing::debug!(error = %err, "connection ended with an I/O error"),
    }
}

async fn run<B: Backend>(shared: &Shared<B>, mut session: Session<B>, mut conn: Conn) -> std::io::Result<()> {
    let config = &shared.config;
    let shutdown = &shared.shutdown;
    let mut commands = CommandReader::default();
    let mut lines = LineReader::default();
    // The message being received (DATA, or BDAT chunks so far).
    let mut message: Vec<u8> = Vec::new();
    conn.push(&[session.greeting()]);
    let mut next = Next::Command;
    loop {
        let step: Step = match next {
            Next::Command => {
                let mut it = conn.pending().iter();
                let before = it.len();
                let parsed = commands.next(&mut it);
                let used = before - it.len();
                conn.consume(used);
                match parsed {
                    Some(Parsed::Command(cmd)) => {
                        let verb = cmd.name();
                        let step = session.command(cmd).instrument(tracing::debug_span!("cmd", verb)).await;
                        if !session.in_transaction() {
                            message = Vec::new();
                        }
                        if let Some(user) = session.user() {
                            tracing::Span::current().record("user", user.address.as_str());
                        }
                        step
                    }
                    Some(Parsed::Error(reply)) => Step { replies: vec![reply], next: Next::Command },
                    None => {
                        match conn.fill(config.timeouts.command, shutdown).await? {
                            Input::More => {}
                            Input::Eof => return Ok(()),
                            Input::Timeout => {
                                conn.push(&[session.timeout_reply()]);
                                return conn.flush().await;
                            }
                            Input::Shutdown => {
                                conn.push(&[session.shutdown_reply()]);
                                return conn.flush().await;
                            }
                        }
                        continue;
                    }
                }
            }
            Next::AuthLine => {
                let mut it = conn.pending().iter();
                let before = it.len();
                let line = lines.next(&mut it, MAX_AUTH_LINE);
                let used = before - it.len();
                conn.consume(used);
                match line {
                    Some(line) => session.auth_line(line).await,
                    None => {
                        match conn.fill(config.timeouts.command, shutdown).await? {
                            Input::More => {}
                            Input::Eof => return Ok(()),
                            Input::Timeout | Input::Shutdown => {
                                conn.push(&[session.timeout_reply()]);
                                return conn.flush().await;
                            }
                        }
                        continue;
                    }
                }
            }
            Next::Data => {
                conn.flush().await?;
                let body = match read_data(&mut conn, config, shutdown, std::mem::take(&mut message)).await? {
                    Some(body) => body,
                    None => {
                        conn.push(&[session.timeout_reply()]);
                        return conn.flush().await;
                    }
                };
                session.end_of_data(body).await
            }
            Next::Bdat { size, last } => {
                let max = config.max_message_size;
                let too_large = message.len().saturating_add(size) > max;
                let keep = if too_large { None } else { Some(&mut message) };
                if !read_exact(&mut conn, config, shutdown, size, keep).await? {
                    conn.push(&[session.timeout_reply()]);
                    return conn.flush().await;
                }
                if too_large {
                    // RFC 1870 §6 / RFC 3030 §2: refuse now; the transaction is over.
                    message = Vec::new();
                    session.end_of_data(Body::TooLarge).await
                } else if last {
                    session.end_of_data(Body::Complete(std::mem::take(&mut message))).await
                } else {
                    Step { replies: vec![session.bdat_chunk_received(size)], next: Next::Command }
                }
            }
            Next::DiscardBdat { size } => {
                if !read_exact(&mut conn, config, shutdown, size, None).await? {
                    conn.push(&[session.timeout_reply()]);
                    return conn.flush().await;
                }
                Step { replies: vec![], next: Next::Command }
            }
            Next::StartTls => {
                conn.flush().await?;
                // RFC 3207 §5 / CVE-2011-0411: nothing sent before the
                // handshake may be taken as a command after it.
                conn.inbuf.clear();
                conn.pos = 0;
                let Io::Plain(tcp) = conn.io else {
                    return Ok(());
                };
                let Some(io) = handshake(shared, tcp).await else {
                    return Ok(());
                };
                if let Io::Tls(s) = &io {
                    session.tls_started(tls_info(s));
                }
                conn = Conn { io, inbuf: Vec::with_capacity(READ_CHUNK), pos: 0, out: Vec::new() };
                commands = CommandReader::default();
                Step { replies: vec![], next: Next::Command }
            }
            Next::Close => {
                return conn.flush().await;
            }
        };
        conn.push(&step.replies);
        next = step.next;
        if next == Next::Close {
            return conn.flush().await;
        }
    }
}

/// Read message text up to `<CRLF>.<CRLF>` (dot-unstuffed by smtp-proto's
/// `DataReceiver`, RFC 5321 §4.5.2). Past the size limit the rest is read and
/// dropped (RFC 1870 §6). `None` on timeout or shutdown.
async fn read_data(
    conn: &mut Conn,
    config: &IngressConfig,
    shutdown: &CancellationToken,
    mut message: Vec<u8>,
) -> std::io::Result<Option<Body>> {
    let max = config.max_message_size;
    let mut receiver = DataReceiver::new();
    let mut too_large = false;
    message.clear();
    loop {
        let mut it = conn.pending().iter();
        let before = it.len();
        let done = receiver.ingest(&mut it, &mut message);
        let used = before - it.len();
        conn.consume(used);
        if message.len() > max {
            too_large = true;
        }
        if too_large {
            message.clear();
        }
        if done {
            return Ok(Some(if too_large { Body::TooLarge } else { Body::Complete(message) }));
        }
        match conn.fill(config.timeouts.data_block, shutdown).await? {
            Input::More => {}
            Input::Eof => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Input::Timeout | Input::Shutdown => return Ok(None),
        }
    }
}

/// Read exactly `size` octets (a BDAT chunk), appending them to `keep`
/// or dropping them. `false` on timeout or shutdown.
async fn read_exact(
    conn: &mut Conn,
    config: &IngressConfig,
    shutdown: &CancellationToken,
    mut size: usize,
    mut keep: Option<&mut Vec<u8>>,
) -> std::io::Result<bool> {
    if let Some(buf) = keep.as_deref_mut() {
        buf.reserve(size.min(config.max_message_size));
    }
    loop {
        let take = size.min(conn.pending().len());
        if let Some(buf) = keep.as_deref_mut() {
            buf.extend_from_slice(&conn.pending()[..take]);
        }
        conn.consume(take);
        size -= take;
        if size == 0 {
            return Ok(true);
        }
        match conn.fill(config.timeouts.data_block, shutdown).await? {
            Input::More => {}
            Input::Eof => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Input::Timeout | Input::Shutdown => return Ok(false),
        }
    }
}
