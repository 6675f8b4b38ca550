//! SMTP wire format: client commands in (framed here, parsed by
//! smtp-proto, DSN parameters decoded by `mail_types::dsn`), replies out.
//! Pure: no I/O.

use std::fmt;

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

/// RFC 5321 §4.5.3.1.4: 512 octets, more with extensions' parameters;
/// smtp-proto's limit.
pub const MAX_COMMAND_LINE: usize = smtp_proto::request::receiver::MAX_LINE_LENGTH;

/// Reads commands from a byte stream that may split lines anywhere.
///
/// Lines are framed here, not by smtp-proto, so the parameters this server
/// passes on to other MTAs (ENVID, ORCPT) are read from the line as the
/// client sent it and decoded by [`mail_types::dsn`], which refuses control
/// characters (smtp-proto decodes xtext leniently, keeping `+0D+0A`).
/// A line longer than [`MAX_COMMAND_LINE`] is dropped up to its end (never
/// kept, never read as commands) and answered with one error.
#[derive(Default)]
pub struct CommandReader {
    line: Vec<u8>,
    too_long: bool,
}

impl CommandReader {
    /// Parse the next command from `bytes`, consuming what it used. `None`
    /// means more input is needed (a partial line is kept internally).
    pub fn next(&mut self, bytes: &mut std::slice::Iter<'_, u8>) -> Option<Parsed> {
        let rest = bytes.as_slice();
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n');
        let chunk = &rest[..end.map_or(rest.len(), |pos| pos + 1)];
        *bytes = rest[chunk.len()..].iter();
        if self.too_long || chunk.len() > MAX_COMMAND_LINE - self.line.len() {
            self.too_long = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(chunk);
        }
        end?;
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.too_long) {
            return Some(Parsed::Error(Reply::new(500, [5, 5, 2], "Line too long")));
        }
        Some(parse_line(&line))
    }
}

/// Parse one complete command line (ending in LF).
fn parse_line(line: &[u8]) -> Parsed {
    let verb = line.get(..5).map(|v| v.to_ascii_uppercase());
    let (line, extracted) = match verb.as_deref() {
        Some(b"MAIL " | b"RCPT ") => match extract_dsn_params(line) {
            Ok(found) => found,
            Err(reply) => return Parsed::Error(reply),
        },
        _ => (std::borrow::Cow::Borrowed(line), Extracted::default()),
    };
    match Request::parse(&mut line.iter()) {
        Ok(req) => {
            let mut req = req.into_owned();
            match &mut req {
                Request::Mail { from } => from.env_id = extracted.envid.map(|e| e.as_str().to_string()),
                Request::Rcpt { to } => {
                    to.orcpt = extracted.orcpt.map(|o| o.to_string());
                    if extracted.bare_postmaster {
                        to.address = "postmaster".into();
                    }
                }
                _ => {}
            }
            Parsed::Command(req)
        }
        Err(err) => Parsed::Error(error_reply(&err)),
    }
}

/// What [`extract_dsn_params`] took out of a MAIL or RCPT line.
#[derive(Default)]
struct Extracted {
    envid: Option<mail_types::Envid>,
    orcpt: Option<mail_types::OriginalRecipient>,
    /// RFC 5321 §4.5.1: `RCPT TO:<Postmaster>`, no domain.
    bare_postmaster: bool,
}

/// The placeholder smtp-proto parses in place of a bare `<Postmaster>`,
/// which it would refuse for lacking a domain.
const POSTMASTER_PLACEHOLDER: &[u8] = b"<postmaster@postmaster.invalid>";

/// Take ENVID (MAIL, RFC 3461 §4.4) and ORCPT (RCPT, RFC 3461 §4.2) out of
/// the line and decode them; give back the line without them for
/// smtp-proto. A value that does not decode, or decodes to control
/// characters, is refused with `501 5.5.4` (RFC 3461 §4: syntax error in
/// parameters), and so is a parameter given twice.
fn extract_dsn_params(line: &[u8]) -> Result<(std::borrow::Cow<'_, [u8]>, Extracted), Reply> {
    let mut found = Extracted::default();
    // The path ends at the first ">" after the first "<"; parameters follow.
    let Some(open) = line.iter().position(|&b| b == b'<') else {
        return Ok((line.into(), found));
    };
    let Some(close) = line[open..].iter().position(|&b| b == b'>').map(|p| open + p) else {
        return Ok((line.into(), found));
    };
    let is_rcpt = line[..4].eq_ignore_ascii_case(b"RCPT");
    let params = line[close + 1..].trim_ascii_end();
    let mut rest: Vec<&[u8]> = Vec::new();
    for token in params.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty()) {
        let (key, value) = match token.iter().position(|&b| b == b'=') {
            Some(eq) => (&token[..eq], &token[eq + 1..]),
            None => (token, &b""[..]),
        };
        let bad = |name: &str| Reply::new(501, [5, 5, 4], format!("Invalid {name} parameter"));
        let text = || std::str::from_utf8(value).ok();
        if is_rcpt && key.eq_ignore_ascii_case(b"ORCPT") {
            let orcpt =
                text().and_then(|v| mail_types::OriginalRecipient::from_param(v).ok()).ok_or_else(|| bad("ORCPT"))?;
            if found.orcpt.replace(orcpt).is_some() {
                return Err(Reply::new(501, [5, 5, 4], "Duplicate ORCPT parameter"));
            }
        } else if !is_rcpt && key.eq_ignore_ascii_case(b"ENVID") {
            let envid = text().and_then(|v| mail_types::Envid::from_param(v).ok()).ok_or_else(|| bad("ENVID"))?;
            if found.envid.replace(envid).is_some() {
                return Err(Reply::new(501, [5, 5, 4], "Duplicate ENVID parameter"));
            }
        } else {
            rest.push(token);
        }
    }
    found.bare_postmaster = is_rcpt && line[open + 1..close].eq_ignore_ascii_case(b"postmaster");
    if found.envid.is_none() && found.orcpt.is_none() && !found.bare_postmaster {
        return Ok((line.into(), found));
    }
    let mut rebuilt = line[..open].to_vec();
    if found.bare_postmaster {
        rebuilt.extend_from_slice(POSTMASTER_PLACEHOLDER);
    } else {
        rebuilt.extend_from_slice(&line[open..=close]);
    }
    for token in rest {
        rebuilt.push(b' ');
        rebuilt.extend_from_slice(token);
    }
    rebuilt.extend_from_slice(b"\r\n");
    Ok((rebuilt.into(), found))
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
        let parsed = parse_all(&["RCPT TO:<PostMaster>\r\nNOOP\r\nRCPT TO:<post", "master> NOTIFY=NEVER\r\n"]);
        match &parsed[0] {
            Parsed::Command(Request::Rcpt { to }) => assert_eq!(to.address, "postmaster"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&parsed[1], Parsed::Command(Request::Noop { .. })));
        match &parsed[2] {
            Parsed::Command(Request::Rcpt { to }) => {
                assert_eq!(to.address, "postmaster");
                assert_eq!(to.flags & smtp_proto::RCPT_NOTIFY_NEVER, smtp_proto::RCPT_NOTIFY_NEVER);
            }
            other => panic!("{other:?}"),
        }
    }

    fn error_text(p: &Parsed) -> String {
        match p {
            Parsed::Error(r) => r.to_string(),
            Parsed::Command(c) => panic!("accepted: {c:?}"),
        }
    }

    #[test]
    fn dsn_parameters_with_control_characters_are_refused() {
        for line in [
            "RCPT TO:<a@b.test> ORCPT=rfc822;a@b.test+0D+0ARSET\r\n",
            "RCPT TO:<a@b.test> NOTIFY=NEVER ORCPT=rfc822;x+0Amail+20from:<e@vil>\r\n",
            "RCPT TO:<a@b.test> ORCPT=utf-8;a\\x{0D}\\x{0A}@b.test\r\n",
            "RCPT TO:<a@b.test> ORCPT=rfc822;a+00@b.test\r\n",
            "RCPT TO:<a@b.test> ORCPT=rfc822;a@b.test ORCPT=rfc822;c@d.test\r\n",
            "RCPT TO:<a@b.test> ORCPT=a@b.test\r\n",
            "MAIL FROM:<a@b.test> ENVID=x+0D+0AQUIT\r\n",
            "MAIL FROM:<a@b.test> ENVID=x+1B[31m\r\n",
        ] {
            let parsed = parse_all(&[line]);
            assert_eq!(parsed.len(), 1, "{line}");
            assert!(error_text(&parsed[0]).starts_with("501 5.5.4 "), "{line}: {:?}", parsed[0]);
        }
    }

    #[test]
    fn dsn_parameters_are_decoded() {
        let parsed = parse_all(&[
            "MAIL FROM:<a@b.test> ENVID=QQ+2B314 SIZE=10\r\n",
            "RCPT TO:<c@d.test> ORCPT=rfc822;C+2Bx@D.test NOTIFY=SUCCESS\r\n",
            "RCPT TO:<c@d.test> ORCPT=utf-8;j\\x{F6}rg@d.test\r\n",
        ]);
        match &parsed[0] {
            Parsed::Command(Request::Mail { from }) => {
                assert_eq!((from.env_id.as_deref(), from.size), (Some("QQ+314"), 10));
            }
            other => panic!("{other:?}"),
        }
        match &parsed[1] {
            Parsed::Command(Request::Rcpt { to }) => {
                assert_eq!(to.orcpt.as_deref(), Some("rfc822;C+x@D.test"));
                assert_ne!(to.flags & smtp_proto::RCPT_NOTIFY_SUCCESS, 0);
            }
            other => panic!("{other:?}"),
        }
        match &parsed[2] {
            Parsed::Command(Request::Rcpt { to }) => assert_eq!(to.orcpt.as_deref(), Some("utf-8;jörg@d.test")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_overlong_line_is_one_error_and_its_tail_is_no_command() {
        let long = format!("NOOP {}", "x".repeat(MAX_COMMAND_LINE));
        let (head, tail) = long.split_at(3000);
        let tail = format!("{tail} RSET\r\nQUIT\r\n");
        let parsed = parse_all(&[head, &tail]);
        assert_eq!(parsed.len(), 2, "{parsed:?}");
        assert!(error_text(&parsed[0]).starts_with("500 5.5.2 Line too long"));
        assert!(matches!(&parsed[1], Parsed::Command(Request::Quit)));
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

    /// Everything the reader makes of `chunks` delivered one after another.
    fn read_all(chunks: &[&[u8]]) -> Vec<Parsed> {
        let mut reader = CommandReader::default();
        let mut out = Vec::new();
        for chunk in chunks {
            let mut it = chunk.iter();
            while let Some(parsed) = reader.next(&mut it) {
                out.push(parsed);
            }
            assert!(it.as_slice().is_empty(), "input left unread");
        }
        out
    }

    proptest::proptest! {
        /// Fuzz smoke test (arbitrary bytes; fuzz/ runs the real fuzzer) with
        /// the properties the session relies on: one result, command or
        /// error reply, per line (RFC 5321 §4.1.1: every command gets a
        /// reply, none is swallowed or doubled), and the same results however
        /// TCP splits the bytes.
        #[test]
        fn reader_fuzz_smoke_one_result_per_line_however_split(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cut in 0usize..600,
        ) {
            let whole = read_all(&[&data]);
            let lines = data.iter().filter(|&&b| b == b'\n').count();
            proptest::prop_assert_eq!(whole.len(), lines);
            let cut = cut.min(data.len());
            proptest::prop_assert_eq!(read_all(&[&data[..cut], &data[cut..]]), whole);
        }
    }
}
