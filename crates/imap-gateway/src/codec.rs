//! Bytes ↔ IMAP values, no I/O. Framing (lines and literals, RFC 3501 §2.2)
//! uses imap-codec's `Fragmentizer`, parsing its `CommandCodec` /
//! `AuthenticateDataCodec` / `IdleDoneCodec`, formatting its `ResponseCodec`.

use std::borrow::Cow;

use base64::Engine;
use imap_codec::fragmentizer::{DecodeMessageError, FragmentInfo, Fragmentizer};
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::core::{LiteralMode, Tag};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{
    Code, CodeOther, CommandContinuationRequest, Greeting, GreetingKind, Response, Status,
};
use imap_codec::{
    AuthenticateDataCodec, CommandCodec, GreetingCodec, IdleDoneCodec, ResponseCodec,
    encode::{Encoder, Fragment},
};

pub mod ext;
pub use ext::{ClientBody, ClientCommand};

/// What the next complete client message is expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Command,
    /// A SASL response line after `+` (RFC 3501 §6.2.2).
    AuthData,
    /// `DONE` ending IDLE (RFC 2177 §3).
    IdleDone,
}

#[derive(Debug)]
pub enum Input {
    /// More bytes are needed.
    NeedMore,
    /// A synchronising literal was announced and is accepted: send a
    /// continuation request (RFC 3501 §7.5) before the client sends it.
    ContinueLiteral,
    /// A literal over the limit was announced. For a synchronising literal
    /// the command is already discarded (the client waits for `+`); a
    /// non-synchronising one (RFC 7888 §4) cannot be refused: close.
    LiteralTooBig {
        tag: Option<Tag<'static>>,
        sync: bool,
    },
    /// A command; `ClientBody::Bad` when an extension form is malformed.
    Command(ClientCommand),
    AuthData(AuthenticateData<'static>),
    IdleDone,
    /// A complete message that does not parse: BAD, and the session goes on.
    Malformed {
        tag: Option<Tag<'static>>,
        too_long: bool,
    },
    /// A command line (or a whole command) over its limit, still arriving:
    /// there is no telling where the next command would start, so the
    /// connection is closed (what was received is dropped, not kept).
    LineTooLong,
}

/// What one command may take: each line on its own, and its literals
/// together (RFC 7888 §4 / RFC 4469: refused as TOOBIG). The whole command
/// is at most their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub line: u32,
    pub literals: u32,
}

/// Splits the client byte stream into IMAP messages.
pub struct Framer {
    frag: Fragmentizer,
    max_message: u32,
    /// Octets pushed and octets belonging to finished messages: equal
    /// when nothing is pending, so the buffers can be released.
    pushed: u64,
    consumed: u64,
    /// End of the latest fragment within the current message.
    fragment_end: usize,
    /// Size of the last finished message.
    last_message: usize,
    /// Literal octets announced so far in the current message.
    literals: u64,
    /// The current message's literal is being received (not a line).
    in_literal: bool,
}

/// Buffers grown past this by one big message (an APPEND) are released
/// once it is done, so an idle connection stays small.
const KEEP_BUFFER: usize = 64 * 1024;

impl Framer {
    /// `max_message` bounds one command including its literals; bytes over it
    /// are dropped while the rest of the command is skipped.
    pub fn new(max_message: u32) -> Framer {
        Framer {
            frag: Fragmentizer::new(max_message),
            max_message,
            pushed: 0,
            consumed: 0,
            fragment_end: 0,
            last_message: 0,
            literals: 0,
            in_literal: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.pushed += bytes.len() as u64;
        self.frag.enqueue_bytes(bytes);
    }

    /// No partial message or unread bytes are buffered.
    pub fn is_idle(&self) -> bool {
        self.pushed == self.consumed
    }

    /// Release buffers a big message left behind, when nothing is pending.
    pub fn shrink(&mut self) {
        if self.is_idle() && self.last_message > KEEP_BUFFER {
            self.frag = Fragmentizer::new(self.max_message);
            self.last_message = 0;
        }
    }

    fn message_done(&mut self) {
        self.consumed += self.fragment_end as u64;
        self.last_message = self.fragment_end;
        self.fragment_end = 0;
        self.literals = 0;
        self.in_literal = false;
    }

    /// The next event, with `limits` for the command being read (before
    /// login they are a few KiB: a client that has not logged in cannot
    /// make the gateway hold more).
    pub fn next(&mut self, mode: Mode, limits: Limits) -> Input {
        loop {
            let fragment = self.frag.progress();
            if let Some(f) = fragment {
                self.fragment_end = f.range().end;
            }
            // The whole command: its lines (many short ones too, between
            // empty literals) and literals together.
            let buffered = self.frag.message_bytes().len();
            if buffered as u64 > u64::from(limits.line) + u64::from(limits.literals) {
                return Input::LineTooLong;
            }
            match fragment {
                None => {
                    // Bytes of a line still arriving (a literal's size was
                    // checked when it was announced).
                    let partial_line = buffered.saturating_sub(self.fragment_end);
                    if !self.in_literal && partial_line > limits.line as usize {
                        return Input::LineTooLong;
                    }
                    return Input::NeedMore;
                }
                Some(FragmentInfo::Literal { .. }) => self.in_literal = false,
                Some(FragmentInfo::Line { start, end, .. }) if end - start > limits.line as usize => {
                    return Input::LineTooLong;
                }
                Some(FragmentInfo::Line { announcement: Some(ann), .. }) if mode == Mode::Command => {
                    self.literals += u64::from(ann.length);
                    if self.literals > u64::from(limits.literals) {
                        let tag = self.frag.decode_tag().map(IntoStatic::into_static);
                        let sync = ann.mode == LiteralMode::Sync;
                        if sync {
                            self.frag.skip_message();
                            self.message_done();
                        }
                        return Input::LiteralTooBig { tag, sync };
                    }
                    self.in_literal = true;
                    if ann.mode == LiteralMode::Sync {
                        return Input::ContinueLiteral;
                    }
                }
                Some(_) if !self.frag.is_message_complete() => {}
                Some(_) => {
                    let input = self.decode(mode);
                    self.message_done();
                    return input;
                }
            }
        }
    }

    fn decode(&self, mode: Mode) -> Input {
        let malformed =
            |too_long: bool| Input::Malformed { tag: self.frag.decode_tag().map(IntoStatic::into_static), too_long };
        if self.frag.is_max_message_size_exceeded() {
            return malformed(true);
        }
        match mode {
            Mode::Command => match self.frag.decode_message(&CommandCodec::new()) {
                Ok(cmd) => Input::Command(ClientCommand::from(cmd.into_static())),
                Err(DecodeMessageError::MessageTooLong { .. }) => malformed(true),
                // Forms imap-codec does not know (RFC 5258, 4731, 6154, 6855).
                Err(_) => match ext::parse(self.frag.message_bytes()) {
                    Some(Ok(cmd)) => Input::Command(cmd),
                    Some(Err(e)) => match self.frag.decode_tag() {
                        Some(tag) => Input::Command(ClientCommand {
                            tag: tag.into_static(),
                            body: ClientBody::Bad(e.0),
                            saved: false,
                        }),
                        None => malformed(false),
                    },
                    None => malformed(false),
                },
            },
            Mode::AuthData => match self.frag.decode_message(&AuthenticateDataCodec::new()) {
                Ok(data) => Input::AuthData(data.into_static()),
                Err(_) => malformed(false),
            },
            Mode::IdleDone => match self.frag.decode_message(&IdleDoneCodec::new()) {
                Ok(_) => Input::IdleDone,
                Err(_) => malformed(false),
            },
        }
    }
}

/// Wire form of one response (literals included, as `{n}\r\n` + data).
pub fn encode(response: &Response<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(response, &mut out);
    out
}

/// `encode`, appended to `out`: each fragment (a literal is one) is copied
/// once, straight from the encoder into the output chunk.
pub fn encode_into(response: &Response<'_>, out: &mut Vec<u8>) {
    for fragment in ResponseCodec::new().encode(response) {
        match fragment {
            Fragment::Line { data } | Fragment::Literal { data, .. } => out.extend_from_slice(&data),
        }
    }
}

/// `* OK [CAPABILITY ...] text` (RFC 3501 §7.1.1).
pub fn encode_greeting(code: Option<Code<'static>>, text: &str) -> Vec<u8> {
    let greeting = Greeting { kind: GreetingKind::Ok, code, text: text_or_dot(text) };
    GreetingCodec::new().encode(&greeting).dump()
}

fn text_or_dot(text: &str) -> imap_codec::imap_types::core::Text<'static> {
    // `text` must be non-empty and free of CR/LF (RFC 3501 §9 `text`).
    let clean: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    clean.try_into().unwrap_or_else(|_| "done".try_into().expect("static text is valid"))
}

/// A status response; a text that is not valid IMAP `text` is replaced.
pub fn status(
    tag: Option<Tag<'static>>,
    kind: StatusKindArg,
    code: Option<Code<'static>>,
    text: &str,
) -> Response<'static> {
    let text = text_or_dot(text);
    let body = imap_codec::imap_types::response::StatusBody { kind: kind.into(), code, text };
    Response::Status(match tag {
        Some(tag) => Status::Tagged(imap_codec::imap_types::response::Tagged { tag, body }),
        None => Status::Untagged(body),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKindArg {
    Ok,
    No,
    Bad,
}

impl From<StatusKindArg> for imap_codec::imap_types::response::StatusKind {
    fn from(k: StatusKindArg) -> Self {
        use imap_codec::imap_types::response::StatusKind;
        match k {
            StatusKindArg::Ok => StatusKind::Ok,
            StatusKindArg::No => StatusKind::No,
            StatusKindArg::Bad => StatusKind::Bad,
        }
    }
}

/// `* BYE text` (RFC 3501 §7.1.5).
pub fn bye(code: Option<Code<'static>>, text: &str) -> Response<'static> {
    Response::Status(Status::Bye(imap_codec::imap_types::response::Bye { code, text: text_or_dot(text) }))
}

/// `+ text` (RFC 3501 §7.5).
pub fn continuation(text: &str) -> Response<'static> {
    Response::CommandContinuationRequest(
        CommandContinuationRequest::basic(None, text_or_dot(text))
            .unwrap_or(CommandContinuationRequest::Base64(Cow::Borrowed(b""))),
    )
}

/// `+ ` with base64 data (SASL challenge, RFC 3501 §6.2.2).
pub fn continuation_base64(data: &[u8]) -> Response<'static> {
    Response::CommandContinuationRequest(CommandContinuationRequest::Base64(Cow::Owned(data.to_vec())))
}

/// A response code not modelled by imap-types (RFC 5530: UNAVAILABLE,
/// ALREADYEXISTS, NONEXISTENT, ...). `atom` must be a valid atom.
pub fn code(atom: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(atom.as_bytes()))
}

// ---------------------------------------------------------------- mailbox names

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mailbox name is not valid modified UTF-7 (RFC 3501 §5.1.3)")]
pub struct BadMailboxName;

/// The storage name of a mailbox argument: INBOX canonical; modified
/// UTF-7 decoded (RFC 3501 §5.1.3) unless the client enabled UTF-8 names
/// (RFC 6855 §3, RFC 9051 §5.1), where names are taken as sent.
pub fn mailbox_name(mailbox: &Mailbox<'_>, utf8: bool) -> Result<String, BadMailboxName> {
    match mailbox {
        Mailbox::Inbox => Ok("INBOX".into()),
        Mailbox::Other(other) => {
            let raw = std::str::from_utf8(other.as_ref()).map_err(|_| BadMailboxName)?;
            // Modified UTF-7 is pure ASCII: 8-bit text can only be UTF-8.
            let name = if utf8 || !raw.is_ascii() { raw.to_string() } else { decode_mutf7(raw)? };
            if name.eq_ignore_ascii_case("INBOX") { Ok("INBOX".into()) } else { Ok(name) }
        }
    }
}

/// A storage name as an IMAP mailbox: modified UTF-7, or UTF-8 in a
/// quoted string once the client enabled UTF-8 names (RFC 6855 §3).
pub fn wire_mailbox(name: &str, utf8: bool) -> Mailbox<'static> {
    use imap_codec::imap_types::core::{AString, IString};
    use imap_codec::imap_types::extensions::utf8::QuotedUtf8;
    if utf8
        && !name.is_ascii()
        && let Ok(q) = QuotedUtf8::try_from(name.to_string())
    {
        return Mailbox::from(AString::String(IString::QuotedUtf8(q)));
    }
    let wire = if utf8 { name.to_string() } else { encode_mutf7(name) };
    Mailbox::try_from(wire).unwrap_or(Mailbox::Inbox)
}

fn mutf7_engine() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(&base64::alphabet::IMAP_MUTF7, base64::engine::general_purpose::NO_PAD)
}

/// RFC 3501 §5.1.3: printable US-ASCII stands for itself except "&", which
/// is "&-"; other characters are UTF-16 in modified BASE64 between "&" and "-".
pub fn decode_mutf7(s: &str) -> Result<String, BadMailboxName> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find('-').ok_or(BadMailboxName)?;
        let b64 = &after[..end];
        if b64.is_empty() {
            out.push('&');
        } else {
            let bytes = mutf7_engine().decode(b64).map_err(|_| BadMailboxName)?;
            if bytes.len() % 2 != 0 {
                return Err(BadMailboxName);
            }
            let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            out.push_str(&String::from_utf16(&units).map_err(|_| BadMailboxName)?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub fn encode_mutf7(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if !pending.is_empty() {
            let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
            out.push('&');
            out.push_str(&mutf7_engine().encode(bytes));
            out.push('-');
            pending.clear();
        }
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' { out.push_str("&-") } else { out.push(c) }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of up to 1000 octets, 100 octets of literals per command.
    const SMALL: Limits = Limits { line: 1000, literals: 100 };

    fn events(framer: &mut Framer) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match framer.next(Mode::Command, SMALL) {
                Input::NeedMore => return out,
                Input::Command(c) => out.push(format!("cmd {}", c.tag.inner())),
                other => out.push(format!("{other:?}")),
            }
        }
    }

    #[test]
    fn sync_literal_asks_for_continuation_once() {
        let mut f = Framer::new(10_000);
        f.push(b"a1 LOGIN {5}\r\n");
        assert_eq!(events(&mut f), vec!["ContinueLiteral"]);
        f.push(b"al");
        assert!(events(&mut f).is_empty());
        f.push(b"ice pw\r\n");
        assert_eq!(events(&mut f), vec!["cmd a1"]);
    }

    #[test]
    fn non_sync_literal_needs_no_continuation() {
        let mut f = Framer::new(10_000);
        f.push(b"a1 LOGIN {5+}\r\nalice pw\r\na2 NOOP\r\n");
        assert_eq!(events(&mut f), vec!["cmd a1", "cmd a2"]);
    }

    #[test]
    fn too_big_sync_literal_is_refused_and_the_session_goes_on() {
        let mut f = Framer::new(10_000);
        f.push(b"a1 APPEND INBOX {1000}\r\na2 NOOP\r\n");
        let ev = events(&mut f);
        assert!(ev[0].starts_with("LiteralTooBig"), "{ev:?}");
        assert!(ev[0].contains("sync: true"), "{ev:?}");
        assert_eq!(ev[1], "cmd a2");
    }

    #[test]
    fn garbage_is_malformed_with_tag() {
        let mut f = Framer::new(10_000);
        f.push(b"a1 FROB\r\n\r\na3 NOOP\r\n");
        let ev = events(&mut f);
        assert!(ev[0].starts_with("Malformed") && ev[0].contains("a1"), "{ev:?}");
        assert!(ev[1].starts_with("Malformed { tag: None"), "{ev:?}");
        assert_eq!(ev[2], "cmd a3");
    }

    #[test]
    fn an_overlong_line_is_cut_off_complete_or_still_arriving() {
        let mut f = Framer::new(1 << 20);
        let mut line = b"a1 NOOP ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 1500));
        f.push(&line);
        assert!(matches!(f.next(Mode::Command, SMALL), Input::LineTooLong), "still arriving");
        let mut f = Framer::new(1 << 20);
        line.extend_from_slice(b"\r\n");
        f.push(&line);
        assert!(matches!(f.next(Mode::Command, SMALL), Input::LineTooLong), "complete");
        // A line within the limit is not affected by a long literal before it.
        let mut f = Framer::new(1 << 20);
        f.push(b"a1 LOGIN {90+}\r\n");
        f.push(&[b'x'; 90]);
        f.push(b" pw\r\n");
        assert!(matches!(f.next(Mode::Command, Limits { line: 20, literals: 100 }), Input::Command(_)));
    }

    #[test]
    fn literals_count_together_per_command() {
        // Chained non-synchronising literals, each under the limit alone.
        let mut f = Framer::new(1 << 20);
        f.push(b"a1 LOGIN {60+}\r\n");
        f.push(&[b'x'; 60]);
        f.push(b" {60+}\r\n");
        assert!(matches!(f.next(Mode::Command, SMALL), Input::LiteralTooBig { sync: false, .. }));
        // And many empty ones: the command as a whole is bounded too.
        let mut f = Framer::new(1 << 20);
        f.push(b"a1 LOGIN");
        for _ in 0..200 {
            f.push(b" {0+}\r\n");
        }
        let mut cut = false;
        for _ in 0..1000 {
            match f.next(Mode::Command, SMALL) {
                Input::LineTooLong => {
                    cut = true;
                    break;
                }
                Input::NeedMore => break,
                _ => {}
            }
        }
        assert!(cut, "a command of 200 empty literals is more than line + literals");
    }

    #[test]
    fn knows_when_nothing_is_pending() {
        let mut f = Framer::new(1 << 20);
        f.push(b"a NOOP\r\nb NO");
        assert!(matches!(f.next(Mode::Command, SMALL), Input::Command(_)));
        assert!(!f.is_idle());
        f.push(b"OP\r\n");
        assert!(matches!(f.next(Mode::Command, SMALL), Input::Command(_)));
        assert!(f.is_idle());
        // A literal, sent in pieces: pending until the closing line ends.
        let big = vec![b'x'; 100_000];
        f.push(format!("c APPEND INBOX {{{}}}\r\n", big.len()).as_bytes());
        assert!(matches!(f.next(Mode::Command, Limits { line: 1000, literals: 1 << 20 }), Input::ContinueLiteral));
        f.push(&big);
        assert!(matches!(f.next(Mode::Command, Limits { line: 1000, literals: 1 << 20 }), Input::NeedMore));
        assert!(!f.is_idle());
        f.push(b"\r\n");
        assert!(matches!(f.next(Mode::Command, Limits { line: 1000, literals: 1 << 20 }), Input::Command(_)));
        assert!(f.is_idle());
        f.shrink();
        // Still works after the buffers were released.
        f.push(b"d NOOP\r\n");
        assert!(matches!(f.next(Mode::Command, SMALL), Input::Command(c) if c.tag.inner() == "d"));
        assert!(f.is_idle());
        // A refused literal counts as done too.
        f.push(b"e APPEND INBOX {999}\r\n");
        assert!(matches!(
            f.next(Mode::Command, Limits { line: 1000, literals: 10 }),
            Input::LiteralTooBig { sync: true, .. }
        ));
        assert!(f.is_idle());
    }

    #[test]
    fn mutf7_round_trip() {
        // RFC 3501 §5.1.3 example.
        let wire = "~peter/mail/&U,BTFw-/&ZeVnLIqe-";
        let name = decode_mutf7(wire).expect("valid");
        assert_eq!(name, "~peter/mail/台北/日本語");
        assert_eq!(encode_mutf7(&name), wire);
        assert_eq!(decode_mutf7("a&-b").expect("valid"), "a&b");
        assert_eq!(encode_mutf7("a&b"), "a&-b");
        assert!(decode_mutf7("&Jjo").is_err());
    }

    #[test]
    fn responses_encode() {
        let tag = Tag::try_from("a1").expect("tag");
        let r = status(Some(tag), StatusKindArg::No, Some(code("UNAVAILABLE")), "storage down");
        assert_eq!(encode(&r), b"a1 NO [UNAVAILABLE] storage down\r\n");
    }
}
