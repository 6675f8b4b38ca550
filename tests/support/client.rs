//! Minimal SMTP, IMAP and POP3 clients for the end-to-end tests: plain TCP
//! on loopback, one line at a time, every read bounded by a deadline.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A read that takes longer than this fails the exchange.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
}

/// A line-oriented connection.
pub struct Lines {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Lines {
    pub async fn connect(addr: SocketAddr) -> io::Result<Lines> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Lines { reader: BufReader::new(r), writer: w })
    }

    /// Connect as a load balancer would for `client`: a PROXY v2 header first.
    pub async fn connect_as(addr: SocketAddr, client: SocketAddr) -> io::Result<Lines> {
        let mut lines = Lines::connect(addr).await?;
        lines.send(&mailfleet_runtime::proxy::encode_v2(client, addr)).await?;
        Ok(lines)
    }

    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.writer.write_all(data).await
    }

    /// One line without its CRLF; EOF is an error.
    pub async fn line_within(&mut self, timeout: Duration) -> io::Result<String> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(timeout, self.reader.read_until(b'\n', &mut line))
            .await
            .map_err(|_| timed_out())??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    pub async fn line(&mut self) -> io::Result<String> {
        self.line_within(READ_TIMEOUT).await
    }

    /// Exactly `n` octets (a literal's data, RFC 3501 §4.3).
    pub async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(READ_TIMEOUT, self.reader.read_exact(&mut buf)).await.map_err(|_| timed_out())??;
        Ok(buf)
    }
}

/// An SMTP reply: code and the text of every line.
#[derive(Debug, Clone)]
pub struct SmtpReply {
    pub code: u16,
    pub text: String,
}

pub struct Smtp(Lines);

impl Smtp {
    /// Connect, read the greeting (which must be 220) and say EHLO.
    pub async fn connect(addr: SocketAddr) -> io::Result<Smtp> {
        let mut c = Smtp(Lines::connect(addr).await?);
        let greeting = c.reply().await?;
        if greeting.code != 220 {
            return Err(io::Error::other(format!("greeting {greeting:?}")));
        }
        let ehlo = c.cmd("EHLO client.test").await?;
        if ehlo.code != 250 {
            return Err(io::Error::other(format!("EHLO {ehlo:?}")));
        }
        Ok(c)
    }

    pub async fn reply(&mut self) -> io::Result<SmtpReply> {
        let mut text = String::new();
        loop {
            let line = self.0.line().await?;
            let code = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| io::Error::other(line.clone()))?;
            text.push_str(line.get(4..).unwrap_or_default());
            text.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(SmtpReply { code, text });
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> io::Result<SmtpReply> {
        self.0.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// One transaction; the reply to the final dot (or the first refusal).
    pub async fn send_mail(&mut self, from: &str, to: &str, message: &str) -> io::Result<SmtpReply> {
        for line in [format!("MAIL FROM:<{from}>"), format!("RCPT TO:<{to}>")] {
            let r = self.cmd(&line).await?;
            if r.code >= 400 {
                return Ok(r);
            }
        }
        self.send_mail_data(message).await
    }

    /// DATA and the message after MAIL and RCPT: the reply to the final dot.
    pub async fn send_mail_data(&mut self, message: &str) -> io::Result<SmtpReply> {
        let r = self.cmd("DATA").await?;
        if r.code != 354 {
            return Ok(r);
        }
        let mut data = String::new();
        for line in message.lines() {
            // RFC 5321 §4.5.2: transparency.
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.0.send(data.as_bytes()).await?;
        self.reply().await
    }

    pub async fn quit(mut self) {
        let _ = self.cmd("QUIT").await;
    }
}

pub struct Imap {
    lines: Lines,
    next_tag: u32,
}

impl Imap {
    /// Connect and LOGIN.
    pub async fn login(addr: SocketAddr, user: &str, password: &str) -> io::Result<Imap> {
        let mut c = Imap { lines: Lines::connect(addr).await?, next_tag: 1 };
        let greeting = c.lines.line().await?;
        if !greeting.starts_with("* OK") {
            return Err(io::Error::other(greeting));
        }
        c.ok(&format!("LOGIN \"{user}\" \"{password}\"")).await?;
        Ok(c)
    }

    /// Run a command; every response line up to and including the tagged
    /// one (literals inlined). A tagged NO or BAD is an error.
    pub async fn ok(&mut self, command: &str) -> io::Result<Vec<String>> {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        self.lines.send(format!("{tag} {command}\r\n").as_bytes()).await?;
        let mut out = Vec::new();
        loop {
            let mut line = self.lines.line().await?;
            // A line ending in {n} announces n octets of literal.
            while let Some(n) = literal_size(&line) {
                let data = self.lines.exact(n).await?;
                line.push_str("\r\n");
                line.push_str(&String::from_utf8_lossy(&data));
                line.push_str(&self.lines.line().await?);
            }
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                if rest.starts_with("OK") {
                    out.push(line);
                    return Ok(out);
                }
                return Err(io::Error::other(format!("{command}: {line}")));
            }
            out.push(line);
        }
    }

    /// Start IDLE (RFC 2177); returns once the server sent its `+`.
    pub async fn idle(&mut self) -> io::Result<()> {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        self.lines.send(format!("{tag} IDLE\r\n").as_bytes()).await?;
        let line = self.lines.line().await?;
        if line.starts_with('+') { Ok(()) } else { Err(io::Error::other(line)) }
    }

    /// While idling: the next untagged line, or a timeout.
    pub async fn next_line(&mut self, timeout: Duration) -> io::Result<String> {
        self.lines.line_within(timeout).await
    }

    /// End IDLE: DONE, then read up to the tagged OK.
    pub async fn done(&mut self) -> io::Result<Vec<String>> {
        self.lines.send(b"DONE\r\n").await?;
        let mut out = Vec::new();
        loop {
            let line = self.lines.line().await?;
            let tagged = line.starts_with('a');
            out.push(line);
            if tagged {
                return Ok(out);
            }
        }
    }

    pub async fn logout(mut self) {
        let _ = self.ok("LOGOUT").await;
    }
}

fn literal_size(line: &str) -> Option<usize> {
    let open = line.strip_suffix('}')?.rfind('{')?;
    line[open + 1..line.len() - 1].trim_end_matches('+').parse().ok()
}

pub struct Pop3(Lines);

impl Pop3 {
    /// Connect; `Ok(Err(reply))` when USER/PASS is refused (e.g. `[IN-USE]`).
    pub async fn login(addr: SocketAddr, user: &str, password: &str) -> io::Result<Result<Pop3, String>> {
        let mut c = Pop3(Lines::connect(addr).await?);
        let greeting = c.0.line().await?;
        if !greeting.starts_with("+OK") {
            return Err(io::Error::other(greeting));
        }
        let r = c.cmd(&format!("USER {user}")).await?;
        if !r.starts_with("+OK") {
            return Ok(Err(r));
        }
        let r = c.cmd(&format!("PASS {password}")).await?;
        if !r.starts_with("+OK") {
            return Ok(Err(r));
        }
        Ok(Ok(c))
    }

    pub async fn cmd(&mut self, line: &str) -> io::Result<String> {
        self.0.send(format!("{line}\r\n").as_bytes()).await?;
        self.0.line().await
    }

    /// A multi-line command: the status line and the body lines, unstuffed.
    pub async fn multi(&mut self, line: &str) -> io::Result<(String, Vec<String>)> {
        let status = self.cmd(line).await?;
        let mut body = Vec::new();
        if status.starts_with("+OK") {
            loop {
                let l = self.0.line().await?;
                if l == "." {
                    break;
                }
                body.push(l.strip_prefix('.').map(str::to_string).unwrap_or(l));
            }
        }
        Ok((status, body))
    }

    pub async fn quit(mut self) -> io::Result<String> {
        self.cmd("QUIT").await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn literal_sizes_are_read_from_the_line_end() {
        assert_eq!(super::literal_size("* 1 FETCH (BODY[] {12}"), Some(12));
        assert_eq!(super::literal_size("* 1 FETCH (BODY[] {12+}"), Some(12));
        assert_eq!(super::literal_size("* OK done"), None);
    }
}
