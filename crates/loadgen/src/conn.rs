//! The only socket code: a TCP connection with a read buffer that the
//! protocol codecs parse in place. Codecs are pure functions over the
//! buffered bytes; this module just fills the buffer until they are happy.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a codec says about the bytes buffered so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole item, and how many buffered bytes it used.
    Done(T, usize),
    /// Not enough bytes yet; retry once at least this many are buffered.
    Incomplete(usize),
}

/// How much to ask the kernel for per read. Large enough that a FETCH of
/// a 200 KB message takes a handful of reads.
const READ_CHUNK: usize = 64 * 1024;

pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    bytes_in: u64,
    bytes_out: u64,
}

impl Conn {
    /// Connects with Nagle off: every protocol here is request/response,
    /// and Nagle plus delayed ACKs would add 40 ms stalls to small writes.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: BytesMut::with_capacity(READ_CHUNK), bytes_in: 0, bytes_out: 0 })
    }

    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data).await?;
        self.bytes_out += data.len() as u64;
        Ok(())
    }

    /// Reads until `parse` returns an item, then drops its bytes from the
    /// buffer. Cancel-safe: bytes read so far stay in the buffer, so a
    /// `select!` may drop this future and call it again later.
    pub async fn read_item<T, E>(&mut self, parse: impl Fn(&[u8]) -> Result<Parsed<T>, E>) -> Result<T, E>
    where
        E: From<io::Error>,
    {
        let mut want = 0;
        loop {
            if self.buf.len() >= want {
                match parse(&self.buf)? {
                    Parsed::Done(item, used) => {
                        self.buf.advance(used);
                        return Ok(item);
                    }
                    Parsed::Incomplete(need) => want = need.max(self.buf.len() + 1),
                }
            }
            self.buf.reserve(READ_CHUNK.max(want.saturating_sub(self.buf.len())).min(16 * READ_CHUNK));
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.bytes_in += n as u64;
        }
    }

    /// Bytes received on this connection, all protocol overhead included.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    pub async fn shutdown(&mut self) {
        // Best effort: the peer may already have closed after QUIT/LOGOUT.
        let _ = self.stream.shutdown().await;
    }
}
