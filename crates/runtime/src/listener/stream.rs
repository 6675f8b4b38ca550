//! A client connection's byte stream: plain TCP or TLS, every write bounded
//! by the write timeout.
//!
//! The write timeout lives under TLS, on the socket itself: a client that
//! stops reading fills its receive window and our send buffer, the next
//! write stays pending, and after `write_timeout` without progress it fails
//! with `TimedOut`. The session's write returns that error, the session ends
//! and gives back what it held (a POP3 maildrop lease, buffers, its
//! connection slot). A timer is armed only while a write is blocked, so
//! writes that go through cost nothing extra.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::metrics::ConnectionMetrics;

/// What the TLS layer negotiated, for `Received:` fields (RFC 5321 §4.4,
/// RFC 8314 §4.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// A TCP stream whose writes fail after `timeout` without progress.
pub struct TimedTcp {
    tcp: TcpStream,
    timeout: Duration,
    /// Running while a write is blocked; reset on every blocked write after progress.
    timer: Pin<Box<Sleep>>,
    armed: bool,
    metrics: ConnectionMetrics,
}

impl TimedTcp {
    fn new(tcp: TcpStream, timeout: Duration, metrics: ConnectionMetrics) -> TimedTcp {
        TimedTcp { tcp, timeout, timer: Box::pin(tokio::time::sleep(timeout)), armed: false, metrics }
    }

    /// The inner write made no progress: start the clock if it is not
    /// running, and fail once it ran out.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
        ready!(self.timer.as_mut().poll(cx));
        self.metrics.timed_out("write");
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "client did not read within the write timeout"))
    }

    fn progressed<T>(&mut self, r: T) -> Poll<T> {
        self.armed = false;
        Poll::Ready(r)
    }
}

impl AsyncRead for TimedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write(cx, buf) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.blocked(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.blocked(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_shutdown(cx) {
            Poll::Ready(r) => this.progressed(r),
            Poll::Pending => this.blocked(cx).map(Err),
        }
    }
}

/// How a connection can start TLS: the acceptor and the handshake's time limit.
#[derive(Clone)]
pub(crate) struct TlsUpgrade {
    pub acceptor: TlsAcceptor,
    pub timeout: Duration,
}

impl TlsUpgrade {
    async fn handshake(&self, tcp: TimedTcp, metrics: &ConnectionMetrics) -> io::Result<TlsStream<TimedTcp>> {
        match tokio::time::timeout(self.timeout, self.acceptor.accept(tcp)).await {
            Ok(r) => r,
            Err(_) => {
                metrics.timed_out("tls_handshake");
                Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))
            }
        }
    }
}

enum Inner {
    Plain(TimedTcp),
    Tls(Box<TlsStream<TimedTcp>>),
}

/// A client connection, before or after TLS (implicit, or STARTTLS/STLS).
pub struct Stream {
    inner: Inner,
    tls: Option<Arc<TlsUpgrade>>,
    metrics: ConnectionMetrics,
}

impl Stream {
    pub(crate) fn plain(
        tcp: TcpStream,
        write_timeout: Duration,
        tls: Option<Arc<TlsUpgrade>>,
        metrics: ConnectionMetrics,
    ) -> Stream {
        let _ = tcp.set_nodelay(true);
        Stream { inner: Inner::Plain(TimedTcp::new(tcp, write_timeout, metrics.clone())), tls, metrics }
    }

    /// Whether TLS is active on the connection.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// Whether [`Stream::start_tls`] can work: a certificate is configured
    /// and TLS is not active yet.
    pub fn can_start_tls(&self) -> bool {
        self.tls.is_some() && !self.is_tls()
    }

    /// Run the server side of a TLS handshake (implicit TLS, or after the
    /// protocol's STARTTLS reply), within the handshake timeout. The caller
    /// must drop whatever it buffered from the plaintext phase (RFC 3207 §5,
    /// RFC 2595 §3.1, CVE-2011-0411): only bytes read after the handshake
    /// are commands.
    pub async fn start_tls(self) -> io::Result<Stream> {
        let (Inner::Plain(tcp), Some(tls)) = (self.inner, self.tls.as_ref()) else {
            return Err(io::Error::other("TLS is not available on this connection"));
        };
        let stream = tls.handshake(tcp, &self.metrics).await?;
        Ok(Stream { inner: Inner::Tls(Box::new(stream)), tls: self.tls, metrics: self.metrics })
    }

    /// The negotiated TLS version and cipher, when TLS is active.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let Inner::Tls(s) = &self.inner else { return None };
        let conn = s.get_ref().1;
        let version = conn.protocol_version().map(|v| format!("{v:?}").replace('_', ".")).unwrap_or_default();
        let cipher = conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
        Some(TlsInfo { version, cipher })
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Plain(s) => s.is_write_vectored(),
            Inner::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
