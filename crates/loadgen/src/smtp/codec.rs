//! SMTP replies and message transparency, no I/O (RFC 5321).

use crate::conn::Parsed;

use super::SmtpError;

/// RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets; servers exceed it
/// in EHLO lists, so allow more before calling it garbage.
const MAX_LINE: usize = 4096;
/// A reply longer than this many lines is not a reply.
const MAX_LINES: usize = 512;

/// One (possibly multi-line) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text of each line, after the code and the separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// RFC 5321 §4.2.1: 2yz is a positive completion.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3yz: positive intermediate (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn text(&self) -> String {
        self.lines.join(" / ")
    }
}

/// Parses one reply from the front of `buf`.
///
/// RFC 5321 §4.2:
/// ```text
/// Reply-line = *( Reply-code "-" [ textstring ] CRLF )
///              Reply-code [ SP textstring ] CRLF
/// ```
/// A bare LF is accepted as a line end.
pub fn parse_reply(buf: &[u8]) -> Result<Parsed<Reply>, SmtpError> {
    let mut lines = Vec::new();
    let mut pos = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                return Err(SmtpError::Syntax("reply line too long".into()));
            }
            return Ok(Parsed::Incomplete(buf.len() + 1));
        };
        let line = rest.get(..lf).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE || lines.len() >= MAX_LINES {
            return Err(SmtpError::Syntax("reply too long".into()));
        }
        let (code, last, text) = parse_reply_line(line)?;
        lines.push(text);
        pos += lf + 1;
        if last {
            return Ok(Parsed::Done(Reply { code, lines }, pos));
        }
    }
}

/// `(code, is_last_line, text)` of one reply line without its CRLF.
fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, String), SmtpError> {
    let bad = || SmtpError::Syntax(format!("bad reply line {:?}", String::from_utf8_lossy(line)));
    let digits = line.get(..3).ok_or_else(bad)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let code = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let (last, text) = match line.get(3) {
        None => (true, &[][..]),
        Some(b' ') => (true, line.get(4..).unwrap_or_default()),
        Some(b'-') => (false, line.get(4..).unwrap_or_default()),
        Some(_) => return Err(bad()),
    };
    Ok((code, last, String::from_utf8_lossy(text).into_owned()))
}

/// The EHLO keywords of a 250 reply (RFC 5321 §4.1.1.1: the first line
/// greets, each further line is `ehlo-keyword *(SP ehlo-param)`), upper-cased.
pub fn ehlo_keywords(reply: &Reply) -> Vec<String> {
    reply.lines.iter().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_ascii_uppercase).collect()
}

/// RFC 5321 §4.5.2 transparency: a line that starts with "." gets one
/// more "." in front. Also makes sure the content ends with CRLF, so that
/// the caller can append the `.` CRLF terminator (§4.1.1.4).
pub fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 512 + 2);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = prev == b'\r' && b == b'\n';
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The end-of-data indication, RFC 5321 §4.1.1.4.
pub const END_OF_DATA: &[u8] = b".\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Reply {
        match parse_reply(bytes) {
            Ok(Parsed::Done(r, n)) => {
                assert_eq!(n, bytes.len());
                r
            }
            other => panic!("not a whole reply: {other:?}"),
        }
    }

    #[test]
    fn single_line() {
        let r = parse_all(b"250 2.0.0 Ok: queued as 4F\r\n");
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, ["2.0.0 Ok: queued as 4F"]);
        assert!(r.is_positive());
        assert_eq!(parse_all(b"354\r\n").code, 354);
    }

    #[test]
    fn multi_line_ehlo() {
        let ehlo = b"250-mx.bench.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n";
        let r = parse_all(ehlo);
        assert_eq!(r.lines.len(), 4);
        assert_eq!(ehlo_keywords(&r), ["PIPELINING", "SIZE", "8BITMIME"]);
    }

    #[test]
    fn incomplete_until_last_line() {
        let full = b"250-one\r\n250-two\r\n250 three\r\n";
        for cut in 0..full.len() {
            assert!(matches!(parse_reply(&full[..cut]), Ok(Parsed::Incomplete(_))), "cut at {cut}");
        }
        // The next reply stays in the buffer.
        let mut two = full.to_vec();
        two.extend_from_slice(b"221 bye\r\n");
        assert!(matches!(parse_reply(&two), Ok(Parsed::Done(_, n)) if n == full.len()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"25x ok\r\n").is_err());
        assert!(parse_reply(b"250+ok\r\n").is_err());
        assert!(parse_reply(&[b'2'; MAX_LINE + 2]).is_err());
    }

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b".hidden\r\nok\r\n..two\r\n"), b"..hidden\r\nok\r\n...two\r\n");
        assert_eq!(dot_stuff(b"a\r\n.\r\nb"), b"a\r\n..\r\nb\r\n");
        // A dot after a bare LF is not at a line start in SMTP's sense.
        assert_eq!(dot_stuff(b"a\n.b\r\n"), b"a\n.b\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n");
    }
}
