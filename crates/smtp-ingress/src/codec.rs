//! SMTP wire format: client commands in (through smtp-proto's
//! `RequestReceiver`, which buffers partial lines), replies out. Pure: no I/O.

use std::fmt;

use smtp_proto::request::receiver::RequestReceiver;
use smtp_proto::{EhloResponse, Error as ProtoError, Request, Response};

/// A command line as parsed by smtp-proto, owned.
pub type Command = Request<String>;

/// One server reply (RFC 5321 §4.2). `Status` carries an enhanced status code
/// (RFC 2034 / RFC 3463); `Plain` is for the greeting and SASL challenges,
/// which carry none (RFC 2034 §3, RFC 4954 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(Response<String>),
    Ehlo(EhloResponse<String>),
    Plain { code: u16, text: String },
}

impl Reply {
    pub fn new(code: u16, esc: [u8; 3], text: impl Into<String>) -> Reply {
        Reply::Status(Response { code, esc, message: text.into() })
    }

    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply::Plain { code, text: text.into() }
    }

    pub fn code(&self) -> u16 {
        match self {
            Reply::Status(r) => r.code,
            Reply::Ehlo(_) => 250,
            Reply::Plain { code, .. } => *code,
        }
    }

    /// Append the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail.
        let _ = match self {
            Reply::Status(r) => r.write(&mut *out),
            Reply::Ehlo(r) => r.write(&mut *out),
            Reply::Plain { code, text } => {
                out.extend_from_slice(format!("{code} {text}\r\n").as_bytes());
                Ok(())
            }
        };
    }

    // ---- the replies the session uses, in one place (RFC 5321 §4.2.2/§4.2.3)

    pub fn ok() -> Reply {
        Reply::new(250, [2, 0, 0], "Ok")
    }
    pub fn bad_sequence(text: &str) -> Reply {
        Reply::new(503, [5, 5, 1], text)
    }
    pub fn syntax(text: &str) -> Reply {
        Reply::new(501, [5, 5, 4], text)
    }
    pub fn unavailable() -> Reply {
        Reply::new(451, [4, 3, 0], "Temporary failure, please try again later")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// What came out of the command reader.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Command(Command),
    /// Protocol error; the session answers it and goes on.
    Error(Reply),
}

/// Turns an smtp-proto parse error into the reply RFC 5321 §4.2.2 asks for.
pub fn error_reply(err: &ProtoError) -> Reply {
    match err {
        ProtoError::UnknownCommand => Reply::new(500, [5, 5, 2], "Command unrecognized"),
        ProtoError::InvalidSenderAddress => Reply::new(501, [5, 1, 7], "Bad sender address syntax"),
        ProtoError::InvalidRecipientAddress => Reply::new(501, [5, 1, 3], "Bad recipient address syntax"),
        ProtoError::SyntaxError { syntax } => Reply::new(501, [5, 5, 4], format!("Syntax: {syntax}")),
        ProtoError::InvalidParameter { param } => Reply::new(501, [5, 5, 4], format!("Invalid parameter {param}")),
        ProtoError::UnsupportedParameter { param } => {
            Reply::new(555, [5, 5, 4], format!("Unsupported parameter {param}"))
        }
        // RFC 5321 §4.5.3.1.4: command lines are limited; smtp-proto enforces 4096.
        ProtoError::ResponseTooLong => Reply::new(500, [5, 5, 2], "Line too long"),
        ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
            Reply::new(500, [5, 5, 2], "Syntax error")
        }
    }
}

/// Reads commands from a byte stream that may split lines anywhere.
#[derive(Default)]
pub struct CommandReader {
    inner: RequestReceiver,
}

impl CommandReader {
    /// Parse the next command from `bytes`, consuming what it used. `None`
    /// means more input is needed (a partial line is kept internally).
    pub fn next(&mut self, bytes: &mut std::slice::Iter<'_, u8>) -> Option<Parsed> {
        if bytes.as_slice().is_empty() {
            return None;
        }
        if self.inner.buf().is_empty()
            && let Some(cmd) = bare_postmaster(bytes)
        {
            return Some(Parsed::Command(cmd));
        }
        match self.inner.ingest(bytes) {
            Ok(req) => Some(Parsed::Command(req.into_owned())),
            Err(ProtoError::NeedsMoreData { .. }) => None,
            Err(err) => Some(Parsed::Error(error_reply(&err))),
        }
    }
}

/// RFC 5321 §4.5.1: `RCPT TO:<Postmaster>` (no domain, any case) must be
/// accepted; smtp-proto refuses an address without a domain, so this one
/// form is recognised here. The session maps it to the configured postmaster.
fn bare_postmaster(bytes: &mut std::slice::Iter<'_, u8>) -> Option<Command> {
    let rest = bytes.as_slice();
    let end = rest.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&rest[..end]).ok()?.trim_end_matches('\r');
    let upper = line.to_ascii_uppercase();
    let after = upper.strip_prefix("RCPT TO:")?.trim_start();
    if after.trim_end() != "<POSTMASTER>" {
        return None;
    }
    *bytes = rest[end + 1..].iter();
    Some(Request::Rcpt { to: smtp_proto::RcptTo { address: "postmaster".into(), orcpt: None, rrvs: 0, flags: 0 } })
}

/// Reads one raw line (SASL responses, RFC 4954 §4), without the CRLF.
/// Returns `None` until a full line is available; lines longer than `max`
/// are reported as `Some(Err(()))` once complete.
#[derive(Default)]
pub struct LineReader {
    buf: Vec<u8>,
    overflow: bool,
}

impl LineReader {
    pub fn next(&mut self, bytes: &mut std::slice::Iter<'_, u8>, max: usize) -> Option<Result<String, ()>> {
        let rest = bytes.as_slice();
        match rest.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                self.push(&rest[..pos], max);
                *bytes = rest[pos + 1..].iter();
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if std::mem::take(&mut self.overflow) {
                    return Some(Err(()));
                }
                Some(String::from_utf8(line).map_err(|_| ()))
            }
            None => {
                self.push(rest, max);
                *bytes = [].iter();
                None
            }
        }
    }

    fn push(&mut self, chunk: &[u8], max: usize) {
        let free = max.saturating_sub(self.buf.len());
        if chunk.len() > free {
            self.overflow = true;
        }
        self.buf.extend_from_slice(&chunk[..chunk.len().min(free)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&str]) -> Vec<Parsed> {
        let mut reader = CommandReader::default();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut it = chunk.as_bytes().iter();
            while let Some(p) = reader.next(&mut it) {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn commands_split_across_reads() {
        let parsed = parse_all(&["MAIL FROM:<a@exa", "mple.org> SIZE=10\r\nRCPT TO:<b@example.org>\r\nDA", "TA\r\n"]);
        assert_eq!(parsed.len(), 3);
        match &parsed[0] {
            Parsed::Command(Request::Mail { from }) => {
                assert_eq!(from.address, "a@example.org");
                assert_eq!(from.size, 10);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&parsed[2], Parsed::Command(Request::Data)));
    }

    #[test]
    fn unknown_command_and_bad_syntax_are_replies() {
        let parsed = parse_all(&["FOO bar\r\n", "MAIL FROM:a@b\r\n"]);
        let codes: Vec<u16> = parsed
            .iter()
            .map(|p| match p {
                Parsed::Error(r) => r.code(),
                Parsed::Command(c) => panic!("{c:?}"),
            })
            .collect();
        assert_eq!(codes, vec![500, 501]);
    }

    #[test]
    fn bare_postmaster_is_a_recipient() {
        let parsed = parse_all(&["RCPT TO:<PostMaster>\r\nNOOP\r\n"]);
        match &parsed[0] {
            Parsed::Command(Request::Rcpt { to }) => assert_eq!(to.address, "postmaster"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&parsed[1], Parsed::Command(Request::Noop { .. })));
    }

    #[test]
    fn reply_wire_forms() {
        assert_eq!(Reply::ok().to_string(), "250 2.0.0 Ok\r\n");
        assert_eq!(Reply::plain(334, "VXNlcm5hbWU6").to_string(), "334 VXNlcm5hbWU6\r\n");
    }

    #[test]
    fn raw_lines() {
        let mut r = LineReader::default();
        let mut it = b"dGVz".iter();
        assert_eq!(r.next(&mut it, 100), None);
        let mut it = b"dA==\r\nrest".iter();
        assert_eq!(r.next(&mut it, 100), Some(Ok("dGVzdA==".into())));
        assert_eq!(it.as_slice(), b"rest");
        let mut it = b"0123456789\r\n".iter();
        assert_eq!(r.next(&mut it, 4), Some(Err(())));
    }

    proptest::proptest! {
        #[test]
        fn reader_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut reader = CommandReader::default();
            let mut it = data.iter();
            let mut n = 0;
            while reader.next(&mut it).is_some() && n < 1000 { n += 1; }
        }
    }
}
