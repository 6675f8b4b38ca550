//! POP3 wire format, no I/O: split the input into lines, parse command lines
//! into [`Command`]s, format single-line replies, and byte-stuff multi-line
//! responses as they stream (RFC 1939 §3).

use std::fmt;
use std::num::NonZeroU32;

/// RFC 1939 §3: messages in a maildrop are numbered from 1; a number never
/// refers to another message during the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgNum(NonZeroU32);

impl MsgNum {
    pub fn new(n: u32) -> Option<MsgNum> {
        NonZeroU32::new(n).map(MsgNum)
    }
    pub fn get(self) -> u32 {
        self.0.get()
    }
    /// Zero-based position in the maildrop.
    pub fn index(self) -> usize {
        (self.0.get() - 1) as usize
    }
}

impl fmt::Display for MsgNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One client command (RFC 1939 §4–7, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    /// RFC 1939 §7: "the server may treat spaces in the argument as part of
    /// the password", so it is the rest of the line.
    Pass(String),
    Apop {
        name: String,
        digest: String,
    },
    Auth {
        mechanism: Option<String>,
        initial: Option<String>,
    },
    Capa,
    Stls,
    Quit,
    Stat,
    List(Option<MsgNum>),
    Retr(MsgNum),
    Dele(MsgNum),
    Noop,
    Rset,
    Top(MsgNum, u32),
    Uidl(Option<MsgNum>),
}

impl Command {
    /// The keyword, for logs and "not valid in this state" replies.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Apop { .. } => "APOP",
            Command::Auth { .. } => "AUTH",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::Quit => "QUIT",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Top(..) => "TOP",
            Command::Uidl(_) => "UIDL",
        }
    }

    /// The command line a client would send (without CRLF).
    pub fn to_line(&self) -> String {
        let opt = |verb: &str, n: &Option<MsgNum>| match n {
            Some(n) => format!("{verb} {n}"),
            None => verb.to_string(),
        };
        match self {
            Command::User(u) => format!("USER {u}"),
            Command::Pass(p) => format!("PASS {p}"),
            Command::Apop { name, digest } => format!("APOP {name} {digest}"),
            Command::Auth { mechanism: None, .. } => "AUTH".into(),
            Command::Auth { mechanism: Some(m), initial: None } => format!("AUTH {m}"),
            Command::Auth { mechanism: Some(m), initial: Some(i) } => format!("AUTH {m} {i}"),
            Command::List(n) => opt("LIST", n),
            Command::Uidl(n) => opt("UIDL", n),
            Command::Retr(n) => format!("RETR {n}"),
            Command::Dele(n) => format!("DELE {n}"),
            Command::Top(n, l) => format!("TOP {n} {l}"),
            other => other.verb().to_string(),
        }
    }
}

/// Why a command line was rejected; `Display` is the `-ERR` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty command")]
    Empty,
    #[error("command line is not valid UTF-8")]
    NotUtf8,
    #[error("unknown command")]
    Unknown,
    #[error("{0}: missing argument")]
    MissingArgument(&'static str),
    #[error("{0}: too many arguments")]
    TooManyArguments(&'static str),
    #[error("invalid message number")]
    BadNumber,
    #[error("{0}: argument too long")]
    ArgumentTooLong(&'static str),
    #[error("command line contains a control character")]
    ControlCharacter,
}

/// RFC 1939 §3: "arguments may be up to 40 characters long". Passwords and
/// SASL initial responses are allowed more (clients send long ones).
const MAX_ARG: usize = 40;

/// Strip the line terminator (CRLF, or a bare LF from a lenient client).
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parse one command line (terminator optional).
///
/// RFC 1939 §3: `keyword *(SP arg) CRLF`; keywords are case-insensitive,
/// three or four characters; arguments are printable ASCII.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(trim_eol(line)).map_err(|_| ParseError::NotUtf8)?;
    if line.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    // A CR, NUL, escape ... inside the line is no printable argument; it
    // would otherwise reach the session (and anything that echoes it).
    if line.chars().any(char::is_control) {
        return Err(ParseError::ControlCharacter);
    }
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, r),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
    let no_args =
        |v: &'static str, c: Command| if args.is_empty() { Ok(c) } else { Err(ParseError::TooManyArguments(v)) };
    match verb.as_str() {
        "USER" => Ok(Command::User(one_arg("USER", &args)?.to_string())),
        "PASS" => {
            if rest.is_empty() {
                return Err(ParseError::MissingArgument("PASS"));
            }
            Ok(Command::Pass(rest.to_string()))
        }
        "APOP" => match args.as_slice() {
            [name, digest] => {
                check_len("APOP", name)?;
                check_len("APOP", digest)?;
                Ok(Command::Apop { name: name.to_string(), digest: digest.to_string() })
            }
            [] | [_] => Err(ParseError::MissingArgument("APOP")),
            _ => Err(ParseError::TooManyArguments("APOP")),
        },
        "AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth { mechanism: None, initial: None }),
            [m] => Ok(Command::Auth { mechanism: Some(m.to_ascii_uppercase()), initial: None }),
            [m, i] => Ok(Command::Auth { mechanism: Some(m.to_ascii_uppercase()), initial: Some(i.to_string()) }),
            _ => Err(ParseError::TooManyArguments("AUTH")),
        },
        "CAPA" => no_args("CAPA", Command::Capa),
        "STLS" => no_args("STLS", Command::Stls),
        "QUIT" => no_args("QUIT", Command::Quit),
        "STAT" => no_args("STAT", Command::Stat),
        "NOOP" => no_args("NOOP", Command::Noop),
        "RSET" => no_args("RSET", Command::Rset),
        "LIST" => Ok(Command::List(opt_num("LIST", &args)?)),
        "UIDL" => Ok(Command::Uidl(opt_num("UIDL", &args)?)),
        "RETR" => Ok(Command::Retr(msg_num(one_arg("RETR", &args)?)?)),
        "DELE" => Ok(Command::Dele(msg_num(one_arg("DELE", &args)?)?)),
        "TOP" => match args.as_slice() {
            [n, lines] => {
                let lines = parse_u32(lines).ok_or(ParseError::BadNumber)?;
                Ok(Command::Top(msg_num(n)?, lines))
            }
            [] | [_] => Err(ParseError::MissingArgument("TOP")),
            _ => Err(ParseError::TooManyArguments("TOP")),
        },
        _ => Err(ParseError::Unknown),
    }
}

fn check_len(verb: &'static str, arg: &str) -> Result<(), ParseError> {
    if arg.len() > MAX_ARG * 2 { Err(ParseError::ArgumentTooLong(verb)) } else { Ok(()) }
}

fn one_arg<'a>(verb: &'static str, args: &[&'a str]) -> Result<&'a str, ParseError> {
    match args {
        [a] => {
            check_len(verb, a)?;
            Ok(a)
        }
        [] => Err(ParseError::MissingArgument(verb)),
        _ => Err(ParseError::TooManyArguments(verb)),
    }
}

fn opt_num(verb: &'static str, args: &[&str]) -> Result<Option<MsgNum>, ParseError> {
    match args {
        [] => Ok(None),
        [n] => msg_num(n).map(Some),
        _ => Err(ParseError::TooManyArguments(verb)),
    }
}

/// Digits only (no sign, no spaces), fits in u32.
fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn msg_num(s: &str) -> Result<MsgNum, ParseError> {
    parse_u32(s).and_then(MsgNum::new).ok_or(ParseError::BadNumber)
}

/// Result of looking for a line in the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line of this many octets (terminator included) is at the front.
    Complete(usize),
    /// No line terminator yet and still within the limit: read more.
    NeedMore,
    /// More than `limit` octets without a terminator: the caller answers
    /// `-ERR` and discards input up to the next LF (RFC 2449 §4).
    TooLong,
}

/// Find the first line in `buf`, with `limit` octets at most (CRLF included).
pub fn next_line(buf: &[u8], limit: usize) -> Line {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i < limit => Line::Complete(i + 1),
        Some(_) => Line::TooLong,
        None if buf.len() >= limit => Line::TooLong,
        None => Line::NeedMore,
    }
}

/// RFC 2449 §8 response codes (and RFC 3206's SYS/AUTH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    InUse,
    Auth,
    SysTemp,
    SysPerm,
}

impl RespCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::Auth => "AUTH",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
        }
    }
}

/// `+OK text CRLF`.
pub fn ok(text: &str) -> String {
    if text.is_empty() { "+OK\r\n".into() } else { format!("+OK {text}\r\n") }
}

/// `-ERR [CODE] text CRLF`.
pub fn err(code: Option<RespCode>, text: &str) -> String {
    match code {
        Some(c) => format!("-ERR [{}] {text}\r\n", c.as_str()),
        None => format!("-ERR {text}\r\n"),
    }
}

/// A multi-line response body from short lines the server makes up
/// (LIST, UIDL, CAPA), stuffed and terminated.
pub fn multiline<I: IntoIterator<Item = String>>(first: &str, lines: I) -> String {
    let mut out = ok(first);
    for line in lines {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out
}

/// One piece of stuffed message text (see [`Stuffer::retr_pieces`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `chunk[from..to]`, as it is.
    Span(usize, usize),
    /// Octets stuffing adds: a "." before a line that starts with one, or
    /// the CR of a bare LF.
    Insert(&'static [u8]),
}

impl Piece {
    /// The octets of this piece of `chunk`.
    pub fn of(self, chunk: &[u8]) -> &[u8] {
        match self {
            Piece::Span(from, to) => &chunk[from..to],
            Piece::Insert(octets) => octets,
        }
    }
}

/// Streams message text into a multi-line response (RFC 1939 §3): a line
/// starting with "." gets one more ".", bare LFs become CRLF, and `finish`
/// adds a CRLF if the text did not end with one, then the ".\r\n" terminator.
/// With `top_lines` it passes the header, the blank line and that many body
/// lines (RFC 1939 §7 TOP), then reports `done`.
#[derive(Debug)]
pub struct Stuffer {
    at_line_start: bool,
    prev_cr: bool,
    /// Octets in the current line, CR excluded.
    line_len: usize,
    top: Option<TopState>,
    done: bool,
}

#[derive(Debug)]
struct TopState {
    in_header: bool,
    lines_left: u32,
}

impl Stuffer {
    /// The whole message (RETR).
    pub fn retr() -> Stuffer {
        Stuffer { at_line_start: true, prev_cr: false, line_len: 0, top: None, done: false }
    }

    /// Header plus `lines` body lines (TOP).
    pub fn top(lines: u32) -> Stuffer {
        Stuffer { top: Some(TopState { in_header: true, lines_left: lines }), ..Stuffer::retr() }
    }

    /// True once TOP has passed everything it wants: stop reading.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Append the stuffed form of `chunk` to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + 16);
        if self.top.is_none() {
            let mut pieces = Vec::new();
            self.retr_pieces(chunk, &mut pieces);
            for piece in pieces {
                out.extend_from_slice(piece.of(chunk));
            }
        } else {
            self.push_octets(chunk, out);
        }
    }

    /// Whether `retr_pieces` applies (RETR), rather than `push` (TOP).
    pub fn is_retr(&self) -> bool {
        self.top.is_none()
    }

    /// RETR: the stuffed form of `chunk` as pieces, into `pieces` (emptied
    /// first): spans of `chunk` itself and the few octets stuffing inserts.
    /// A RETR of everything is most of what POP3 sends; this way its octets
    /// are looked at once (a SIMD search for line ends) and can be written
    /// out without being copied into a stuffed buffer first. Storage keeps
    /// CRLF line ends, so a span is usually the whole chunk.
    pub fn retr_pieces(&mut self, chunk: &[u8], pieces: &mut Vec<Piece>) {
        pieces.clear();
        if chunk.is_empty() {
            return;
        }
        let mut from = 0;
        if self.at_line_start && chunk[0] == b'.' {
            pieces.push(Piece::Insert(b"."));
        }
        for at in memchr::memchr_iter(b'\n', chunk) {
            let cr_before = if at == 0 { self.prev_cr } else { chunk[at - 1] == b'\r' };
            if !cr_before {
                // A bare LF: CRLF on the wire (RFC 1939 §3).
                pieces.push(Piece::Span(from, at));
                pieces.push(Piece::Insert(b"\r"));
                from = at;
            }
            if chunk.get(at + 1) == Some(&b'.') {
                pieces.push(Piece::Span(from, at + 1));
                pieces.push(Piece::Insert(b"."));
                from = at + 1;
            }
        }
        if from < chunk.len() {
            pieces.push(Piece::Span(from, chunk.len()));
        }
        let last = chunk[chunk.len() - 1];
        self.at_line_start = last == b'\n';
        self.prev_cr = last == b'\r';
    }

    /// TOP: octet by octet, counting header and body lines.
    fn push_octets(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if self.done {
                return;
            }
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            if b == b'\n' && !self.prev_cr {
                out.push(b'\r');
            }
            out.push(b);
            self.prev_cr = b == b'\r';
            if b == b'\n' {
                self.end_of_line();
                self.at_line_start = true;
                self.line_len = 0;
            } else {
                self.at_line_start = false;
                if b != b'\r' {
                    self.line_len += 1;
                }
            }
        }
    }

    fn end_of_line(&mut self) {
        let Some(top) = &mut self.top else { return };
        if top.in_header {
            // RFC 5322 §2.1: the header ends at the first empty line.
            if self.line_len == 0 {
                top.in_header = false;
                self.done = top.lines_left == 0;
            }
        } else {
            top.lines_left = top.lines_left.saturating_sub(1);
            self.done = top.lines_left == 0;
        }
    }

    /// Close the response: final CRLF if missing, then ".\r\n".
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stuff(mut s: Stuffer, chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn parses_every_command() {
        let n = |x| MsgNum::new(x).unwrap();
        let cases = [
            ("USER alice@example.com\r\n", Command::User("alice@example.com".into())),
            ("pass secret with spaces\r\n", Command::Pass("secret with spaces".into())),
            (
                "APOP bob c4c9334bac560ecc979e58001b3e22fb\r\n",
                Command::Apop { name: "bob".into(), digest: "c4c9334bac560ecc979e58001b3e22fb".into() },
            ),
            ("AUTH\r\n", Command::Auth { mechanism: None, initial: None }),
            ("auth plain\r\n", Command::Auth { mechanism: Some("PLAIN".into()), initial: None }),
            (
                "AUTH PLAIN AGFAAHA=\r\n",
                Command::Auth { mechanism: Some("PLAIN".into()), initial: Some("AGFAAHA=".into()) },
            ),
            ("CAPA\r\n", Command::Capa),
            ("STLS\r\n", Command::Stls),
            ("QUIT\n", Command::Quit),
            ("stat\r\n", Command::Stat),
            ("LIST\r\n", Command::List(None)),
            ("LIST 2\r\n", Command::List(Some(n(2)))),
            ("RETR 1\r\n", Command::Retr(n(1))),
            ("DELE 3\r\n", Command::Dele(n(3))),
            ("NOOP\r\n", Command::Noop),
            ("RSET\r\n", Command::Rset),
            ("TOP 1 0\r\n", Command::Top(n(1), 0)),
            ("UIDL\r\n", Command::Uidl(None)),
            ("UIDL 7\r\n", Command::Uidl(Some(n(7)))),
        ];
        for (line, want) in cases {
            assert_eq!(parse_command(line.as_bytes()), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn rejects_bad_lines() {
        assert_eq!(parse_command(b"\r\n"), Err(ParseError::Empty));
        assert_eq!(parse_command(b"XYZZY\r\n"), Err(ParseError::Unknown));
        assert_eq!(parse_command(b"RETR\r\n"), Err(ParseError::MissingArgument("RETR")));
        assert_eq!(parse_command(b"RETR 0\r\n"), Err(ParseError::BadNumber));
        assert_eq!(parse_command(b"RETR -1\r\n"), Err(ParseError::BadNumber));
        assert_eq!(parse_command(b"RETR 99999999999\r\n"), Err(ParseError::BadNumber));
        assert_eq!(parse_command(b"RETR 1 2\r\n"), Err(ParseError::TooManyArguments("RETR")));
        assert_eq!(parse_command(b"TOP 1\r\n"), Err(ParseError::MissingArgument("TOP")));
        assert_eq!(parse_command(b"TOP 1 x\r\n"), Err(ParseError::BadNumber));
        assert_eq!(parse_command(b"STAT 1\r\n"), Err(ParseError::TooManyArguments("STAT")));
        assert_eq!(parse_command(b"PASS\r\n"), Err(ParseError::MissingArgument("PASS")));
        assert_eq!(parse_command(b"USER \xff\r\n"), Err(ParseError::NotUtf8));
        // Found by fuzz/pop3_command: bare CRs (and other controls) inside
        // the line were taken as part of an argument.
        assert_eq!(parse_command(b"AUTH PLAIN\r\r\n"), Err(ParseError::ControlCharacter));
        assert_eq!(parse_command(b"USER a\rRETR 1\r\n"), Err(ParseError::ControlCharacter));
        assert_eq!(parse_command(b"PASS se\x00cret\r\n"), Err(ParseError::ControlCharacter));
        assert_eq!(parse_command(b"USER a\tb\r\n"), Err(ParseError::ControlCharacter));
    }

    #[test]
    fn line_limits() {
        assert_eq!(next_line(b"NOOP\r\nSTAT", 255), Line::Complete(6));
        assert_eq!(next_line(b"NOO", 255), Line::NeedMore);
        assert_eq!(next_line(&[b'a'; 255], 255), Line::TooLong);
        let mut long = vec![b'a'; 300];
        long.extend_from_slice(b"\r\n");
        assert_eq!(next_line(&long, 255), Line::TooLong);
    }

    #[test]
    fn replies() {
        assert_eq!(ok("2 320"), "+OK 2 320\r\n");
        assert_eq!(err(Some(RespCode::InUse), "maildrop already locked"), "-ERR [IN-USE] maildrop already locked\r\n");
        assert_eq!(multiline("", ["1 a".to_string(), ".x".to_string()]), "+OK\r\n1 a\r\n..x\r\n.\r\n");
    }

    #[test]
    fn byte_stuffing_across_chunks() {
        assert_eq!(stuff(Stuffer::retr(), &[b"a\r\n.b\r\n", b".", b"c\r\n"]), "a\r\n..b\r\n..c\r\n.\r\n");
        // Bare LF becomes CRLF; a missing final CRLF is added.
        assert_eq!(stuff(Stuffer::retr(), &[b"a\n.\n", b"end"]), "a\r\n..\r\nend\r\n.\r\n");
        // CR and LF split over chunks.
        assert_eq!(stuff(Stuffer::retr(), &[b"a\r", b"\n.x"]), "a\r\n..x\r\n.\r\n");
        assert_eq!(stuff(Stuffer::retr(), &[]), ".\r\n");
    }

    #[test]
    fn top_stops_after_n_body_lines() {
        let msg: &[u8] = b"Subject: x\r\nFrom: y\r\n\r\nl1\r\n.l2\r\nl3\r\n";
        assert_eq!(stuff(Stuffer::top(0), &[msg]), "Subject: x\r\nFrom: y\r\n\r\n.\r\n");
        assert_eq!(stuff(Stuffer::top(2), &[&msg[..5], &msg[5..]]), "Subject: x\r\nFrom: y\r\n\r\nl1\r\n..l2\r\n.\r\n");
        assert_eq!(stuff(Stuffer::top(10), &[msg]), "Subject: x\r\nFrom: y\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n");
    }

    /// RETR text with CRLF lines and no line starting with "." (what
    /// storage serves almost always) is one piece: the chunk as it is.
    #[test]
    fn plain_text_is_one_piece() {
        let mut s = Stuffer::retr();
        let mut pieces = Vec::new();
        let chunk = b"Subject: x\r\n\r\nline one\r\nline two\r\n";
        s.retr_pieces(chunk, &mut pieces);
        assert_eq!(pieces, vec![Piece::Span(0, chunk.len())]);
        s.retr_pieces(b".dot\r\nx\n.y", &mut pieces);
        assert_eq!(
            pieces,
            vec![
                Piece::Insert(b"."),
                Piece::Span(0, 7),
                Piece::Insert(b"\r"),
                Piece::Span(7, 8),
                Piece::Insert(b"."),
                Piece::Span(8, 10)
            ]
        );
    }

    proptest! {
        // Cheap enough to try many: a valid command with a bad argument is a
        // small share of the lines generated.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Command-shaped lines (any verb, one or two spaces, numbers or
        /// arguments of any characters but SP, control characters
        /// included): one with a control character is refused, and what
        /// parses re-encodes to the same command.
        #[test]
        fn command_shaped_lines_are_refused_or_re_encode_to_themselves(
            line in "(?i)(user|pass|apop|auth|list|uidl|retr|dele|top|capa|stls|quit|stat|noop|rset|xtnd)( {1,2}([0-9]{1,11}|[^ ]{0,12})){0,3}(\r\n)?"
        ) {
            let parsed = parse_command(line.as_bytes());
            let text = std::str::from_utf8(trim_eol(line.as_bytes())).expect("a String");
            if text.chars().any(char::is_control) {
                prop_assert!(parsed.is_err(), "{:?} accepted: {:?}", line, parsed);
            }
            if let Ok(cmd) = parsed {
                prop_assert_eq!(parse_command(cmd.to_line().as_bytes()), Ok(cmd));
            }
        }
    }

    proptest! {
        /// RETR's line-at-a-time stuffing gives the same octets as the
        /// octet-at-a-time path TOP uses (with more lines than the text
        /// has), however the text is cut into chunks.
        #[test]
        fn retr_stuffing_matches_the_octet_path(
            text in proptest::collection::vec(proptest::sample::select(vec![b'a', b'.', b'\r', b'\n']), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([text.len()]) {
                chunks.push(&text[from..cut]);
                from = cut;
            }
            prop_assert_eq!(stuff(Stuffer::retr(), &chunks), stuff(Stuffer::top(u32::MAX), &chunks));
        }

        /// Fuzz smoke test (arbitrary bytes), with the properties that
        /// hold for any input: a line that is not UTF-8 or holds a control
        /// character is refused, an accepted one re-encodes to a line that
        /// parses to the same command, and `next_line` finds exactly the
        /// first LF within the limit.
        #[test]
        fn parser_fuzz_smoke(
            line in proptest::collection::vec(prop_oneof![3 => any::<u8>(), 1 => Just(b'\n')], 0..300),
            limit in 1usize..16,
        ) {
            let parsed = parse_command(&line);
            match std::str::from_utf8(trim_eol(&line)) {
                Err(_) => prop_assert_eq!(&parsed, &Err(ParseError::NotUtf8)),
                Ok(text) if text.chars().any(char::is_control) => prop_assert!(parsed.is_err(), "{:?}", parsed),
                Ok(_) => {}
            }
            if let Ok(cmd) = &parsed {
                prop_assert_eq!(&parse_command(cmd.to_line().as_bytes()), &parsed);
            }
            let first_lf = line.iter().position(|&b| b == b'\n');
            match next_line(&line, limit) {
                Line::Complete(n) => prop_assert!(first_lf == Some(n - 1) && n <= limit),
                Line::NeedMore => prop_assert!(first_lf.is_none() && line.len() < limit),
                Line::TooLong => prop_assert!(first_lf.map_or(line.len() >= limit, |i| i >= limit)),
            }
        }

        #[test]
        fn parse_format_parse_is_identity(line in "(?i)(user|apop|list|retr|dele|top|uidl|stat|noop|auth)( [a-z0-9@.]{1,20}){0,2}") {
            if let Ok(cmd) = parse_command(line.as_bytes()) {
                prop_assert_eq!(parse_command(cmd.to_line().as_bytes()), Ok(cmd));
            }
        }

        #[test]
        fn unstuffing_gives_back_the_crlf_text(lines in proptest::collection::vec("[.a-z]{0,5}", 0..20), split in 0usize..200) {
            let text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
            let bytes = text.as_bytes();
            let cut = split.min(bytes.len());
            let out = stuff(Stuffer::retr(), &[&bytes[..cut], &bytes[cut..]]);
            // Client side (RFC 1939 §3): strip the terminator, un-stuff.
            let body = out.strip_suffix(".\r\n").unwrap();
            let unstuffed: String = body.split_inclusive("\r\n")
                .map(|l| l.strip_prefix('.').unwrap_or(l)).collect();
            prop_assert_eq!(unstuffed, text);
        }
    }
}
