//! IMAP server responses, no I/O (RFC 9051 §7; RFC 3501 §7 for IMAP4rev1).
//!
//! Framing is line based except for literals: a line that ends in
//! `{n}` CRLF is followed by exactly n octets, after which the same
//! response goes on (RFC 9051 §4.3). [`parse_response`] frames one whole
//! response; the accessors below read the few response kinds a load
//! generator needs.

use std::borrow::Cow;

use crate::conn::Parsed;

use super::ImapError;

/// Longest text run between literals we accept. A `FETCH 1:* (FLAGS
/// ENVELOPE)` response line is a few hundred octets per message.
const MAX_LINE: usize = 1 << 20;
/// Largest literal we will buffer (a whole message from `BODY[]`).
const MAX_LITERAL: usize = 256 << 20;

/// One server response: its text with each literal cut out, and the
/// literals. Text and literals alternate: `segments[0]`, `literals[0]`,
/// `segments[1]`, …, and the last segment ends where CRLF was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    segments: Vec<Vec<u8>>,
    literals: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

impl Status {
    fn parse(word: &str) -> Option<Self> {
        match word.to_ascii_uppercase().as_str() {
            "OK" => Some(Status::Ok),
            "NO" => Some(Status::No),
            "BAD" => Some(Status::Bad),
            _ => None,
        }
    }
}

/// RFC 9051 §7.1 (status responses), §7.2–7.5 (server and mailbox data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untagged {
    /// `* OK [code] text` and friends; `code` is inside the brackets.
    Status {
        status: Status,
        code: Option<String>,
        text: String,
    },
    /// `* BYE`: the server is closing the connection (§7.1.5).
    Bye(String),
    /// `* PREAUTH` greeting (§7.1.4).
    Preauth,
    Capability(Vec<String>),
    /// `* n EXISTS` (§7.4.1).
    Exists(u32),
    /// `* n FETCH (…)` (§7.5.2); read the data with [`Response::fetch`].
    Fetch(u32),
    /// `* SEARCH n n …` (RFC 3501 §7.2.5).
    Search(Vec<u32>),
    /// Anything else (FLAGS, LIST, EXPUNGE, RECENT, ESEARCH, …).
    Other,
}

/// What kind of response a [`Response`] is (RFC 9051 §2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `+ text`: the server is ready for a literal or for IDLE's DONE.
    Continuation,
    /// `*` …, see [`Response::untagged`].
    Untagged,
    /// `tag OK|NO|BAD text`, completing the command with that tag.
    Tagged { tag: &'a str, status: Status, code: Option<String>, text: String },
}

/// The data items of one FETCH response that a client here looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FetchData<'a> {
    /// `UID n` (RFC 9051 §7.5.2).
    pub uid: Option<u32>,
    /// `FLAGS (…)`.
    pub flags: Vec<String>,
    /// Every `BODY[…]` / `BINARY[…]` / `RFC822…` item: its name (as sent,
    /// upper-cased) and its value (`None` for NIL).
    pub sections: Vec<(String, Option<Cow<'a, [u8]>>)>,
}

/// Frames one response at the front of `buf`.
///
/// ```text
/// literal  = "{" number64 ["+"] "}" CRLF *CHAR8     ; RFC 9051 §9
/// literal8 = "~{" number64 "}" CRLF *OCTET          ; RFC 3516 §4.2
/// ```
pub fn parse_response(buf: &[u8]) -> Result<Parsed<Response>, ImapError> {
    let mut segments = Vec::new();
    let mut literals = Vec::new();
    let mut pos = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                return Err(ImapError::Syntax("response line too long".into()));
            }
            return Ok(Parsed::Incomplete(buf.len() + 1));
        };
        if lf > MAX_LINE {
            return Err(ImapError::Syntax("response line too long".into()));
        }
        let line = rest.get(..lf).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match literal_at_end(line)? {
            None => {
                segments.push(line.to_vec());
                return Ok(Parsed::Done(Response { segments, literals }, pos + lf + 1));
            }
            Some((text, len)) => {
                let start = pos + lf + 1;
                let end = start.checked_add(len).ok_or_else(|| ImapError::Syntax("literal size".into()))?;
                let Some(literal) = buf.get(start..end) else {
                    // The literal and at least a CRLF after it.
                    return Ok(Parsed::Incomplete(end + 2));
                };
                segments.push(text.to_vec());
                literals.push(literal.to_vec());
                pos = end;
            }
        }
    }
}

/// If `line` ends in a literal announcement, the text before it and the
/// literal's length.
// todo(RFC 9051 §7.1): human-readable resp-text that happens to end in
// "{n}" would be read as a literal; no server we measure sends that.
fn literal_at_end(line: &[u8]) -> Result<Option<(&[u8], usize)>, ImapError> {
    let Some(body) = line.strip_suffix(b"}") else { return Ok(None) };
    let Some(open) = body.iter().rposition(|&b| b == b'{') else { return Ok(None) };
    let inner = body.get(open + 1..).unwrap_or_default();
    let digits = inner.strip_suffix(b"+").unwrap_or(inner);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let len = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|&n| n <= MAX_LITERAL)
        .ok_or_else(|| {
            ImapError::Syntax(format!("literal of {} octets is too large", String::from_utf8_lossy(digits)))
        })?;
    let text = body.get(..open).unwrap_or_default();
    let text = text.strip_suffix(b"~").unwrap_or(text);
    Ok(Some((text, len)))
}

impl Response {
    fn first(&self) -> &[u8] {
        self.segments.first().map(Vec::as_slice).unwrap_or_default()
    }

    pub fn kind(&self) -> Kind<'_> {
        let first = self.first();
        if first.starts_with(b"+") {
            return Kind::Continuation;
        }
        if first.starts_with(b"* ") || first == b"*" {
            return Kind::Untagged;
        }
        let text = std::str::from_utf8(first).unwrap_or_default();
        let mut parts = text.splitn(3, ' ');
        let tag = parts.next().unwrap_or_default();
        match parts.next().and_then(Status::parse) {
            Some(status) => {
                let (code, text) = split_code(parts.next().unwrap_or_default());
                Kind::Tagged { tag, status, code, text }
            }
            // Not a valid response; callers treat a non-matching tag as a
            // protocol error.
            None => Kind::Tagged { tag, status: Status::Bad, code: None, text: text.to_owned() },
        }
    }

    /// The untagged response this is, or `None` if it is not untagged.
    pub fn untagged(&self) -> Option<Untagged> {
        let rest = self.first().strip_prefix(b"* ")?;
        let rest = String::from_utf8_lossy(rest);
        let mut words = rest.splitn(2, ' ');
        let first = words.next().unwrap_or_default();
        let tail = words.next().unwrap_or_default();
        if let Ok(n) = first.parse::<u32>() {
            let what = tail.split(' ').next().unwrap_or_default().to_ascii_uppercase();
            return Some(match what.as_str() {
                "EXISTS" => Untagged::Exists(n),
                "FETCH" => Untagged::Fetch(n),
                _ => Untagged::Other,
            });
        }
        let keyword = first.to_ascii_uppercase();
        Some(match keyword.as_str() {
            "BYE" => Untagged::Bye(tail.to_owned()),
            "PREAUTH" => Untagged::Preauth,
            "CAPABILITY" => Untagged::Capability(tail.split_whitespace().map(str::to_ascii_uppercase).collect()),
            "SEARCH" => Untagged::Search(tail.split_whitespace().filter_map(|n| n.parse().ok()).collect()),
            _ => match Status::parse(&keyword) {
                Some(status) => {
                    let (code, text) = split_code(tail);
                    Untagged::Status { status, code, text }
                }
                None => Untagged::Other,
            },
        })
    }

    /// The data items of a `* n FETCH (…)` response.
    ///
    /// ```text
    /// message-data = nz-number SP "FETCH" SP msg-att     ; RFC 9051 §9
    /// msg-att      = "(" (msg-att-dynamic / msg-att-static)
    ///                    *(SP (msg-att-dynamic / msg-att-static)) ")"
    /// ```
    pub fn fetch(&self) -> Result<FetchData<'_>, ImapError> {
        let bad = |why: &str| ImapError::Syntax(format!("FETCH response: {why}"));
        let tokens = self.tokens()?;
        let mut it = tokens.into_iter();
        // "*" nz-number "FETCH" "("
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(Token::Atom(b"*")), Some(Token::Atom(_)), Some(Token::Atom(f)), Some(Token::Open))
                if f.eq_ignore_ascii_case(b"FETCH") => {}
            _ => return Err(bad("no message data")),
        }
        let mut data = FetchData::default();
        loop {
            let name = match it.next() {
                Some(Token::Close) => return Ok(data),
                Some(Token::Atom(name)) => String::from_utf8_lossy(name).to_ascii_uppercase(),
                _ => return Err(bad("expected a data item name")),
            };
            let value = it.next().ok_or_else(|| bad("data item without a value"))?;
            match (name.as_str(), value) {
                ("UID", Token::Atom(n)) => {
                    data.uid =
                        Some(std::str::from_utf8(n).ok().and_then(|n| n.parse().ok()).ok_or_else(|| bad("UID"))?);
                }
                ("FLAGS", Token::Open) => loop {
                    match it.next() {
                        Some(Token::Close) => break,
                        Some(Token::Atom(flag)) => data.flags.push(String::from_utf8_lossy(flag).into_owned()),
                        _ => return Err(bad("FLAGS")),
                    }
                },
                (_, Token::Open) => skip_list(&mut it).ok_or_else(|| bad("unbalanced list"))?,
                (section, value) if is_section(section) => {
                    let value = match value {
                        Token::Literal(l) => Some(Cow::Borrowed(l)),
                        Token::Quoted(q) => Some(Cow::Owned(q)),
                        Token::Atom(a) if a.eq_ignore_ascii_case(b"NIL") => None,
                        _ => return Err(bad("section value")),
                    };
                    data.sections.push((name, value));
                }
                (_, Token::Close) => return Err(bad("data item without a value")),
                _ => {}
            }
        }
    }

    /// Sum of the literal lengths (message octets of a BODY[] fetch).
    pub fn literal_bytes(&self) -> usize {
        self.literals.iter().map(Vec::len).sum()
    }

    /// Splits the response into tokens, literals in their places.
    fn tokens(&self) -> Result<Vec<Token<'_>>, ImapError> {
        let mut out = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            lex(segment, &mut out)?;
            if let Some(literal) = self.literals.get(i) {
                out.push(Token::Literal(literal));
            }
        }
        Ok(out)
    }
}

/// `BODY[…]`, `BODY[…]<n>`, `BINARY[…]`, `RFC822`, `RFC822.HEADER`, `RFC822.TEXT`.
fn is_section(name: &str) -> bool {
    name.starts_with("BODY[")
        || name.starts_with("BINARY[")
        || matches!(name, "RFC822" | "RFC822.HEADER" | "RFC822.TEXT")
}

/// Skips the rest of a list whose "(" was just taken.
fn skip_list<'a>(it: &mut impl Iterator<Item = Token<'a>>) -> Option<()> {
    let mut depth = 1usize;
    while depth > 0 {
        match it.next()? {
            Token::Open => depth += 1,
            Token::Close => depth -= 1,
            _ => {}
        }
    }
    Some(())
}

/// `[code] text` → (`Some(code)`, text); RFC 9051 §7.1 resp-text.
fn split_code(text: &str) -> (Option<String>, String) {
    if let Some(inner) = text.strip_prefix('[')
        && let Some(close) = inner.find(']')
    {
        let code = inner.get(..close).unwrap_or_default().to_owned();
        let rest = inner.get(close + 1..).unwrap_or_default().trim_start().to_owned();
        return (Some(code), rest);
    }
    (None, text.to_owned())
}

/// The number in a response code such as `UIDNEXT 42`, if it is that code.
pub fn code_number(code: &str, name: &str) -> Option<u32> {
    let (word, value) = code.split_once(' ')?;
    word.eq_ignore_ascii_case(name).then(|| value.trim().parse().ok()).flatten()
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Open,
    Close,
    /// An atom, number, NIL or flag; a section such as
    /// `BODY[HEADER.FIELDS (X-BENCH-ID)]<0>` is one atom, brackets and all.
    Atom(&'a [u8]),
    Quoted(Vec<u8>),
    Literal(&'a [u8]),
}

fn lex<'a>(text: &'a [u8], out: &mut Vec<Token<'a>>) -> Result<(), ImapError> {
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        match b {
            b' ' => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'"' => {
                // quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR may be "\" quoted-specials
                let mut value = Vec::new();
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err(ImapError::Syntax("unterminated quoted string".into())),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            value.push(*text.get(i + 1).ok_or_else(|| ImapError::Syntax("bad escape".into()))?);
                            i += 2;
                        }
                        Some(&c) => {
                            value.push(c);
                            i += 1;
                        }
                    }
                }
                out.push(Token::Quoted(value));
                i += 1;
            }
            _ => {
                let start = i;
                let mut depth = 0usize;
                while let Some(&c) = text.get(i) {
                    match c {
                        b'[' => depth += 1,
                        b']' => depth = depth.saturating_sub(1),
                        b' ' | b'(' | b')' | b'"' if depth == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                out.push(Token::Atom(text.get(start..i).unwrap_or_default()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Response {
        match parse_response(bytes) {
            Ok(Parsed::Done(r, n)) => {
                assert_eq!(n, bytes.len(), "consumed");
                r
            }
            other => panic!("not one whole response: {other:?}"),
        }
    }

    #[test]
    fn tagged_and_untagged() {
        let r = whole(b"A7 NO [TRYCREATE] no such mailbox\r\n");
        assert_eq!(
            r.kind(),
            Kind::Tagged {
                tag: "A7",
                status: Status::No,
                code: Some("TRYCREATE".into()),
                text: "no such mailbox".into()
            }
        );
        assert_eq!(whole(b"* 23 EXISTS\r\n").untagged(), Some(Untagged::Exists(23)));
        assert_eq!(whole(b"* SEARCH 2 3 5\r\n").untagged(), Some(Untagged::Search(vec![2, 3, 5])));
        assert_eq!(whole(b"* SEARCH\r\n").untagged(), Some(Untagged::Search(vec![])));
        let ok = whole(b"* OK [UIDNEXT 4392] Predicted next UID\r\n").untagged();
        let Some(Untagged::Status { status: Status::Ok, code: Some(code), .. }) = ok else { panic!("{ok:?}") };
        assert_eq!(code_number(&code, "UIDNEXT"), Some(4392));
        assert_eq!(code_number(&code, "UIDVALIDITY"), None);
        assert_eq!(whole(b"+ idling\r\n").kind(), Kind::Continuation);
        assert_eq!(whole(b"+\r\n").kind(), Kind::Continuation);
        assert!(matches!(whole(b"* BYE shutting down\r\n").untagged(), Some(Untagged::Bye(_))));
        assert_eq!(
            whole(b"* CAPABILITY IMAP4rev1 IDLE literal+\r\n").untagged(),
            Some(Untagged::Capability(vec!["IMAP4REV1".into(), "IDLE".into(), "LITERAL+".into()]))
        );
    }

    #[test]
    fn fetch_with_literal() {
        let header = b"X-Bench-Id: r1-7\r\n\r\n";
        let mut bytes = format!(
            "* 12 FETCH (UID 4827 FLAGS (\\Seen $Junk) BODY[HEADER.FIELDS (X-BENCH-ID)] {{{}}}\r\n",
            header.len()
        )
        .into_bytes();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(b")\r\n");
        let r = whole(&bytes);
        assert_eq!(r.untagged(), Some(Untagged::Fetch(12)));
        let f = r.fetch().expect("fetch");
        assert_eq!(f.uid, Some(4827));
        assert_eq!(f.flags, ["\\Seen", "$Junk"]);
        assert_eq!(f.sections.len(), 1);
        assert_eq!(f.sections[0].0, "BODY[HEADER.FIELDS (X-BENCH-ID)]");
        assert_eq!(f.sections[0].1.as_deref(), Some(&header[..]));
    }

    #[test]
    fn fetch_envelope_with_literal_inside_list() {
        let r = whole(
            b"* 1 FETCH (FLAGS () ENVELOPE (\"Mon, 1 Jan 2024 00:00:00 +0000\" {5}\r\nhe)lo (\"x\" NIL) NIL) UID 9)\r\n",
        );
        let f = r.fetch().expect("fetch");
        assert_eq!(f.uid, Some(9));
        assert!(f.flags.is_empty());
        assert!(f.sections.is_empty());
    }

    #[test]
    fn quoted_and_nil_sections() {
        let r = whole(b"* 3 FETCH (BODY[]<0> \"a \\\"q\\\"\" BODY[1] NIL UID 3)\r\n");
        let f = r.fetch().expect("fetch");
        assert_eq!(f.sections[0].1.as_deref(), Some(&b"a \"q\""[..]));
        assert_eq!(f.sections[1].1, None);
        assert_eq!(f.uid, Some(3));
    }

    #[test]
    fn literal_split_across_reads() {
        let message = b"Subject: hi\r\n\r\nline one\r\n* 2 EXISTS\r\nA1 OK looks like a tag\r\n";
        let mut bytes = format!("* 1 FETCH (UID 1 BODY[] {{{}}}\r\n", message.len()).into_bytes();
        bytes.extend_from_slice(message);
        bytes.extend_from_slice(b")\r\nA1 OK done\r\n");
        let first_len = bytes.len() - b"A1 OK done\r\n".len();
        // Every cut before the end of the first response needs more bytes,
        // and the hint never asks for more than the response has.
        for cut in 0..first_len {
            match parse_response(&bytes[..cut]).expect("no error") {
                Parsed::Incomplete(need) => assert!(need > cut && need <= first_len + 2, "cut {cut} need {need}"),
                Parsed::Done(..) => panic!("done at cut {cut}"),
            }
        }
        let Parsed::Done(r, used) = parse_response(&bytes).expect("parse") else { panic!("incomplete") };
        assert_eq!(used, first_len);
        assert_eq!(r.literal_bytes(), message.len());
        let f = r.fetch().expect("fetch");
        assert_eq!(f.sections[0].1.as_deref(), Some(&message[..]));
        let Parsed::Done(tagged, _) = parse_response(&bytes[used..]).expect("parse") else { panic!("incomplete") };
        assert!(matches!(tagged.kind(), Kind::Tagged { tag: "A1", status: Status::Ok, .. }));
    }

    #[test]
    fn several_literals_and_literal8() {
        let r = whole(b"* 5 FETCH (BODY[1] {3}\r\nabc BINARY[2] ~{2}\r\nxy UID 8)\r\n");
        let f = r.fetch().expect("fetch");
        assert_eq!(f.sections.len(), 2);
        assert_eq!(f.sections[1].1.as_deref(), Some(&b"xy"[..]));
        assert_eq!(f.uid, Some(8));
    }

    #[test]
    fn limits() {
        assert!(parse_response(b"* 1 FETCH (BODY[] {999999999999}\r\n").is_err());
        assert!(parse_response(&vec![b'a'; MAX_LINE + 2]).is_err());
        assert!(whole(b"* 1 FETCH (UID x)\r\n").fetch().is_err());
        assert!(whole(b"* 1 FETCH (UID 1\r\n").fetch().is_err());
    }
}
