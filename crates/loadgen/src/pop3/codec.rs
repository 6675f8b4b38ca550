//! POP3 responses, no I/O (RFC 1939 §3).

use crate::conn::Parsed;

use super::Pop3Error;

/// RFC 1939 §3 caps a response line at 512 octets; RFC 2449 §4 lets
/// CAPA lines be longer, and some servers exceed it; be lenient.
const MAX_STATUS_LINE: usize = 4096;
/// Lines of a multi-line response (message content) may reach 998
/// octets (RFC 5322 §2.1.1); allow much more before calling it garbage.
const MAX_CONTENT_LINE: usize = 1 << 20;
/// Largest multi-line response we will buffer.
const MAX_MULTILINE: usize = 256 << 20;

/// The status indicator and the rest of the first line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok(String),
    Err(String),
}

/// `+OK text` or `-ERR text` CRLF (RFC 1939 §3).
pub fn parse_status(buf: &[u8]) -> Result<Parsed<Status>, Pop3Error> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_STATUS_LINE {
            return Err(Pop3Error::Syntax("status line too long".into()));
        }
        return Ok(Parsed::Incomplete(buf.len() + 1));
    };
    let line = buf.get(..lf).unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = |rest: &[u8]| String::from_utf8_lossy(rest.strip_prefix(b" ").unwrap_or(rest)).into_owned();
    let status = if let Some(rest) = line.strip_prefix(b"+OK") {
        Status::Ok(text(rest))
    } else if let Some(rest) = line.strip_prefix(b"-ERR") {
        Status::Err(text(rest))
    } else {
        return Err(Pop3Error::Syntax(format!("bad status line {:?}", String::from_utf8_lossy(line))));
    };
    Ok(Parsed::Done(status, lf + 1))
}

/// The body of a multi-line response, after its status line (RFC 1939 §3):
/// CRLF-terminated lines, ended by a line holding only ".". A line that
/// starts with "." was byte-stuffed; the first "." is removed here.
///
/// The client must cost little next to the server it measures: a RETR of
/// tens of kilobytes arrives in several reads and is parsed again after
/// each, so the terminator and the stuffed lines are found with SIMD
/// substring searches (`\n.`) rather than line by line, and the body is
/// copied in spans between stuffed dots.
pub fn parse_multiline(buf: &[u8]) -> Result<Parsed<Vec<u8>>, Pop3Error> {
    let Some(end) = terminator(buf) else {
        let line_start = memchr::memrchr(b'\n', buf).map_or(0, |lf| lf + 1);
        if buf.len() - line_start > MAX_CONTENT_LINE || buf.len() > MAX_MULTILINE {
            return Err(Pop3Error::Syntax("multi-line response too long".into()));
        }
        return Ok(Parsed::Incomplete(buf.len() + 1));
    };
    let content = buf.get(..end).unwrap_or_default();
    let mut body = Vec::with_capacity(end);
    // Every line that starts with "." loses that "."; the first line too.
    let mut from = usize::from(content.first() == Some(&b'.'));
    for lf in memchr::memmem::find_iter(content, b"\n.") {
        body.extend_from_slice(&content[from..=lf]);
        from = lf + 2;
    }
    body.extend_from_slice(content.get(from..).unwrap_or_default());
    let terminator = if buf.get(end + 1) == Some(&b'\r') { 3 } else { 2 };
    Ok(Parsed::Done(body, end + terminator))
}

/// Where the line holding only "." starts, if it has arrived whole (its
/// LF read): at the very start, or right after an LF.
fn terminator(buf: &[u8]) -> Option<usize> {
    let ends_line = |at: usize| matches!(buf.get(at..), Some([b'\n', ..] | [b'\r', b'\n', ..]));
    if buf.first() == Some(&b'.') && ends_line(1) {
        return Some(0);
    }
    memchr::memmem::find_iter(buf, b"\n.").map(|lf| lf + 1).find(|&dot| ends_line(dot + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"+OK 2 320\r\n").expect("ok"), Parsed::Done(Status::Ok("2 320".into()), 11));
        assert_eq!(parse_status(b"+OK\r\n").expect("ok"), Parsed::Done(Status::Ok(String::new()), 5));
        assert_eq!(
            parse_status(b"-ERR [IN-USE] locked\r\n").expect("err"),
            Parsed::Done(Status::Err("[IN-USE] locked".into()), 22)
        );
        assert!(matches!(parse_status(b"+OK 2"), Ok(Parsed::Incomplete(_))));
        assert!(parse_status(b"* OK imap?\r\n").is_err());
    }

    #[test]
    fn multiline_unstuffs() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\n...\r\nplain\r\n.\r\n+OK next\r\n";
        let Parsed::Done(body, used) = parse_multiline(wire).expect("parse") else { panic!("incomplete") };
        assert_eq!(body, b"Subject: x\r\n\r\n.leading dot\r\n..\r\nplain\r\n");
        assert_eq!(&wire[used..], b"+OK next\r\n");
    }

    #[test]
    fn empty_multiline() {
        assert_eq!(parse_multiline(b".\r\n").expect("parse"), Parsed::Done(Vec::new(), 3));
    }

    /// Stuffed CRLF lines and the terminator give back the lines, whatever
    /// dots they hold; a prefix of the wire is never a whole response.
    #[test]
    fn unstuffing_round_trips() {
        let lines: &[&[&str]] = &[&[], &["."], &["..", "a.b", ".x."], &["", ".", "", "..."], &["x", ".\r"]];
        for body in lines {
            let mut text = Vec::new();
            let mut wire = Vec::new();
            for line in *body {
                text.extend_from_slice(line.as_bytes());
                text.extend_from_slice(b"\r\n");
                if line.starts_with('.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            assert_eq!(parse_multiline(&wire).expect("parse"), Parsed::Done(text, wire.len()), "{body:?}");
            for cut in 0..wire.len() {
                assert!(matches!(parse_multiline(&wire[..cut]), Ok(Parsed::Incomplete(_))), "{body:?} cut {cut}");
            }
        }
    }

    #[test]
    fn multiline_split_anywhere() {
        let wire = b"1 120\r\n2 200\r\n..x\r\n.\r\n";
        for cut in 0..wire.len() {
            assert!(matches!(parse_multiline(&wire[..cut]), Ok(Parsed::Incomplete(_))), "cut {cut}");
        }
        // ".x" after un-stuffing; a line that is "." plus more is content.
        assert_eq!(parse_multiline(wire).expect("p"), Parsed::Done(b"1 120\r\n2 200\r\n.x\r\n".to_vec(), wire.len()));
        assert!(matches!(parse_multiline(b"a\r\n.\r"), Ok(Parsed::Incomplete(_))));
    }
}
