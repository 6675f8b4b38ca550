//! Command forms imap-codec 2.0.0-alpha.10 does not parse, recognised here
//! so the session can serve them: extended LIST (RFC 5258, RFC 5819, RFC
//! 6154 §5.1), SEARCH RETURN (RFC 4731 §3.1), CREATE … (USE (…)) (RFC 6154
//! §5.2) and APPEND … UTF8 (~{n}…) (RFC 6855 §4). Pure: bytes in, values out.
//!
//! The standard parts of these commands (mailbox names, search criteria,
//! flags, dates, literals) are handed back to imap-codec by re-assembling
//! the command without the extension syntax, so they follow exactly the
//! same rules as everywhere else.

mod esort;

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{Charset, Tag, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::sort::SortCriterion;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::status::StatusDataItemName;

/// One client command: a standard one, or one of the forms parsed here.
#[derive(Debug, Clone)]
pub struct ClientCommand {
    pub tag: Tag<'static>,
    pub body: ClientBody,
    /// The command used "$" (RFC 5182 §2.1), parsed as `SAVED_PLACEHOLDER`
    /// for the session to replace with the saved search result.
    pub saved: bool,
}

/// Stands for "$" in a parsed sequence set. UID 4294967295 is legal but
/// never reached in practice; it only takes this meaning in a command that
/// was sent with "$".
pub const SAVED_PLACEHOLDER: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub enum ClientBody {
    Std(CommandBody<'static>),
    Ext(ExtBody),
    /// An extension form with a syntax error: tagged BAD with this text.
    Bad(&'static str),
}

impl ClientBody {
    /// The command's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ClientBody::Std(body) => body.name(),
            ClientBody::Ext(ExtBody::List(_)) => "LIST",
            ClientBody::Ext(ExtBody::Search { .. }) => "SEARCH",
            ClientBody::Ext(ExtBody::Sort { .. }) => "SORT",
            ClientBody::Ext(ExtBody::Create { .. }) => "CREATE",
            ClientBody::Ext(ExtBody::AppendUtf8 { .. }) => "APPEND",
            ClientBody::Bad(_) => "BAD",
        }
    }
}

impl From<Command<'static>> for ClientCommand {
    fn from(c: Command<'static>) -> Self {
        ClientCommand { tag: c.tag, body: ClientBody::Std(c.body), saved: false }
    }
}

#[derive(Debug, Clone)]
pub enum ExtBody {
    List(ListCommand),
    /// SEARCH with a RETURN clause: answered with ESEARCH (RFC 4731 §3.1).
    Search {
        uid: bool,
        options: SearchReturn,
        charset: Option<Charset<'static>>,
        criteria: Vec1<SearchKey<'static>>,
    },
    /// SORT with a RETURN clause: answered with ESEARCH (RFC 5267 §3.2).
    Sort {
        uid: bool,
        options: SearchReturn,
        sort_criteria: Vec1<SortCriterion>,
        charset: Charset<'static>,
        search_criteria: Vec1<SearchKey<'static>>,
    },
    /// CREATE with special-use attributes (RFC 6154 §5.2); the attribute
    /// names as sent (with their backslash).
    Create {
        mailbox: Mailbox<'static>,
        special_use: Vec<String>,
    },
    /// APPEND with the UTF8 data item (RFC 6855 §4).
    AppendUtf8 {
        mailbox: Mailbox<'static>,
        flags: Vec<Flag<'static>>,
        date: Option<DateTime>,
        message: Vec<u8>,
    },
}

/// SEARCH RETURN options (RFC 4731 §3.1, SAVE from RFC 5182 §2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    pub save: bool,
}

/// LIST in RFC 5258 form; a basic LIST is the same with no options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListCommand {
    /// Reference and patterns as sent (still modified UTF-7 when not UTF-8).
    pub reference: String,
    pub patterns: Vec<String>,
    pub select_subscribed: bool,
    pub select_remote: bool,
    pub select_recursive: bool,
    pub select_special_use: bool,
    pub return_subscribed: bool,
    pub return_children: bool,
    pub return_special_use: bool,
    /// RFC 5819 RETURN (STATUS (…)).
    pub return_status: Option<Vec<StatusDataItemName>>,
    /// Sent with selection/return options or several patterns: the
    /// response carries extended data (RFC 5258 §3, CHILDINFO).
    pub extended: bool,
}

/// Why an extension form was refused: the text of the tagged BAD.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExtError(pub &'static str);

// ---------------------------------------------------------------- tokens

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Atom(Vec<u8>),
    /// A quoted string or a literal, its content.
    Str(Vec<u8>),
    Open,
    Close,
}

/// A token with its byte span in the message.
#[derive(Debug, Clone)]
struct Spanned {
    tok: Tok,
    start: usize,
    end: usize,
}

/// Split a complete message (lines and literals, RFC 3501 §4) into tokens.
fn tokenize(msg: &[u8]) -> Result<Vec<Spanned>, ExtError> {
    let bad = ExtError("Syntax error");
    let mut out = Vec::new();
    let mut i = 0;
    while i < msg.len() {
        let start = i;
        match msg[i] {
            b' ' => i += 1,
            // RFC 3501 §9: a line end only ends the command (a literal's
            // own CRLF is taken with it below); anywhere else it is no
            // separator but a syntax error.
            b'\r' | b'\n' if matches!(&msg[i..], b"\r\n" | b"\n") => i = msg.len(),
            b'\r' | b'\n' => return Err(bad),
            b'(' => {
                out.push(Spanned { tok: Tok::Open, start, end: i + 1 });
                i += 1;
            }
            b')' => {
                out.push(Spanned { tok: Tok::Close, start, end: i + 1 });
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match msg.get(i) {
                        Some(b'\\') => {
                            let c = *msg.get(i + 1).ok_or(bad.clone())?;
                            if c != b'\\' && c != b'"' {
                                return Err(bad);
                            }
                            s.push(c);
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\r' | b'\n') | None => return Err(bad),
                        Some(c) => {
                            s.push(*c);
                            i += 1;
                        }
                    }
                }
                out.push(Spanned { tok: Tok::Str(s), start, end: i });
            }
            b'{' | b'~' if literal_at(msg, i).is_some() => {
                let (data_start, len) = literal_at(msg, i).ok_or(bad.clone())?;
                let end = data_start.checked_add(len).filter(|e| *e <= msg.len()).ok_or(bad.clone())?;
                out.push(Spanned { tok: Tok::Str(msg[data_start..end].to_vec()), start, end });
                i = end;
            }
            _ => {
                while i < msg.len() && !matches!(msg[i], b' ' | b'(' | b')' | b'"' | b'\r' | b'\n') {
                    i += 1;
                }
                out.push(Spanned { tok: Tok::Atom(msg[start..i].to_vec()), start, end: i });
            }
        }
    }
    Ok(out)
}

/// `["~"] "{" number ["+"] "}" CRLF` at `i`: where the data starts and its length.
fn literal_at(msg: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if msg.get(j) == Some(&b'~') {
        j += 1;
    }
    if msg.get(j) != Some(&b'{') {
        return None;
    }
    j += 1;
    let digits = msg[j..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let len: usize = std::str::from_utf8(&msg[j..j + digits]).ok()?.parse().ok()?;
    j += digits;
    if msg.get(j) == Some(&b'+') || msg.get(j) == Some(&b'-') {
        j += 1;
    }
    if msg.get(j..j + 3) != Some(b"}\r\n") {
        return None;
    }
    Some((j + 3, len))
}

fn is_atom(t: &Spanned, word: &str) -> bool {
    matches!(&t.tok, Tok::Atom(a) if a.eq_ignore_ascii_case(word.as_bytes()))
}

/// A parenthesised list of atoms starting at `toks[i]` (which is `(`).
/// Returns the upper-cased atoms and the index after `)`.
fn atom_list(toks: &[Spanned], mut i: usize) -> Result<(Vec<String>, usize), ExtError> {
    let bad = ExtError("Syntax error in option list");
    if !matches!(toks.get(i).map(|t| &t.tok), Some(Tok::Open)) {
        return Err(bad);
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        match toks.get(i).map(|t| &t.tok) {
            Some(Tok::Close) => return Ok((out, i + 1)),
            Some(Tok::Atom(a)) => {
                out.push(String::from_utf8_lossy(a).to_ascii_uppercase());
                i += 1;
            }
            _ => return Err(bad),
        }
    }
}

fn decode_std(bytes: &[u8]) -> Option<Command<'static>> {
    match CommandCodec::new().decode(bytes) {
        Ok((b"", cmd)) => Some(cmd.into_static()),
        _ => None,
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ExtError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ExtError("Mailbox name is not UTF-8"))
}

/// Try the extension forms on a complete message the standard parser
/// refused. `None`: not one of them (the caller answers `Syntax error`);
/// `Some(Err)`: one of them, malformed (BAD with that text).
pub fn parse(msg: &[u8]) -> Option<Result<ClientCommand, ExtError>> {
    if let Some(substituted) = substitute_saved(msg) {
        let parsed = match decode_std(&substituted) {
            Some(cmd) => Some(Ok(ClientCommand::from(cmd))),
            None => parse_forms(&substituted),
        };
        return parsed.map(|r| r.map(|c| ClientCommand { saved: true, ..c }));
    }
    parse_forms(msg)
}

/// Search keys whose next argument is a string (RFC 3501 §6.4.4), where a
/// "$" is text, not the saved result.
const STRING_KEYS: [&str; 10] =
    ["BCC", "BODY", "CC", "FROM", "KEYWORD", "SUBJECT", "TEXT", "TO", "UNKEYWORD", "HEADER"];

/// The message with each "$" that stands for a sequence set (RFC 5182
/// §2.1: FETCH, STORE, COPY, MOVE, UID EXPUNGE and SEARCH) replaced by
/// `SAVED_PLACEHOLDER`; `None` when there is none.
fn substitute_saved(msg: &[u8]) -> Option<Vec<u8>> {
    let toks = tokenize(msg).ok()?;
    let mut verb = 1;
    if toks.get(1).is_some_and(|t| is_atom(t, "UID")) {
        verb = 2;
    }
    let verb_tok = toks.get(verb)?;
    let is_dollar = |t: &Spanned| matches!(&t.tok, Tok::Atom(a) if a == b"$");
    let mut spans: Vec<(usize, usize)> = Vec::new();
    if ["FETCH", "STORE", "COPY", "MOVE", "EXPUNGE"].iter().any(|v| is_atom(verb_tok, v)) {
        if let Some(t) = toks.get(verb + 1).filter(|t| is_dollar(t)) {
            spans.push((t.start, t.end));
        }
    } else if is_atom(verb_tok, "SEARCH") {
        for (i, t) in toks.iter().enumerate().skip(verb + 1) {
            let after = |n: usize| i >= n && STRING_KEYS.iter().any(|k| is_atom(&toks[i - n], k));
            let header_value = i >= 2 && is_atom(&toks[i - 2], "HEADER");
            if is_dollar(t) && !after(1) && !header_value {
                spans.push((t.start, t.end));
            }
        }
    }
    if spans.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(msg.len() + 16);
    let mut at = 0;
    for (start, end) in spans {
        out.extend_from_slice(&msg[at..start]);
        out.extend_from_slice(SAVED_PLACEHOLDER.to_string().as_bytes());
        at = end;
    }
    out.extend_from_slice(&msg[at..]);
    Some(out)
}

fn parse_forms(msg: &[u8]) -> Option<Result<ClientCommand, ExtError>> {
    let toks = tokenize(msg).ok()?;
    // RFC 3501 §9: a command begins with its tag; nothing (not even a
    // stray line end) comes before it.
    let tag_tok = toks.first().filter(|t| t.start == 0)?;
    let Tok::Atom(tag_bytes) = &tag_tok.tok else { return None };
    let tag = Tag::try_from(String::from_utf8(tag_bytes.clone()).ok()?).ok()?.into_static();
    let verb = toks.get(1)?;
    let result = if is_atom(verb, "LIST") {
        parse_list(&toks[2..]).map(ExtBody::List)
    } else if is_atom(verb, "SEARCH") {
        parse_search(msg, &toks, 1, false)?
    } else if is_atom(verb, "UID") && toks.get(2).is_some_and(|t| is_atom(t, "SEARCH")) {
        parse_search(msg, &toks, 2, true)?
    } else if is_atom(verb, "SORT") {
        esort::parse_esort(msg, &toks, 1, false)?
    } else if is_atom(verb, "UID") && toks.get(2).is_some_and(|t| is_atom(t, "SORT")) {
        esort::parse_esort(msg, &toks, 2, true)?
    } else if is_atom(verb, "CREATE") {
        parse_create(msg, &toks)?
    } else if is_atom(verb, "APPEND") {
        parse_append_utf8(msg, &toks)?
    } else {
        return None;
    };
    Some(result.map(|body| ClientCommand { tag, body: ClientBody::Ext(body), saved: false }))
}

/// RFC 5258 §6:
/// `list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]`.
fn parse_list(toks: &[Spanned]) -> Result<ListCommand, ExtError> {
    let mut cmd = ListCommand::default();
    let mut i = 0;
    if matches!(toks.first().map(|t| &t.tok), Some(Tok::Open)) {
        cmd.extended = true;
        let (opts, next) = atom_list(toks, 0)?;
        i = next;
        for o in opts {
            match o.as_str() {
                "SUBSCRIBED" => cmd.select_subscribed = true,
                "REMOTE" => cmd.select_remote = true,
                "RECURSIVEMATCH" => cmd.select_recursive = true,
                "SPECIAL-USE" => cmd.select_special_use = true,
                // RFC 5258 §3: an unknown selection option is an error.
                _ => return Err(ExtError("Unknown LIST selection option")),
            }
        }
        // RFC 5258 §3: RECURSIVEMATCH needs another option to refine.
        if cmd.select_recursive && !cmd.select_subscribed && !cmd.select_special_use {
            return Err(ExtError("RECURSIVEMATCH needs another selection option"));
        }
    }
    let reference = toks.get(i).ok_or(ExtError("Missing reference"))?;
    cmd.reference = match &reference.tok {
        Tok::Atom(a) | Tok::Str(a) => utf8(a)?,
        _ => return Err(ExtError("Missing reference")),
    };
    i += 1;
    match toks.get(i).map(|t| &t.tok) {
        Some(Tok::Open) => {
            cmd.extended = true;
            i += 1;
            loop {
                match toks.get(i).map(|t| &t.tok) {
                    Some(Tok::Close) if !cmd.patterns.is_empty() => {
                        i += 1;
                        break;
                    }
                    Some(Tok::Atom(a) | Tok::Str(a)) => {
                        cmd.patterns.push(utf8(a)?);
                        i += 1;
                    }
                    _ => return Err(ExtError("Bad pattern list")),
                }
            }
        }
        Some(Tok::Atom(a) | Tok::Str(a)) => {
            cmd.patterns.push(utf8(a)?);
            i += 1;
        }
        _ => return Err(ExtError("Missing pattern")),
    }
    if let Some(t) = toks.get(i) {
        if !is_atom(t, "RETURN") {
            return Err(ExtError("Syntax error after pattern"));
        }
        cmd.extended = true;
        i += 1;
        if !matches!(toks.get(i).map(|t| &t.tok), Some(Tok::Open)) {
            return Err(ExtError("RETURN needs a list"));
        }
        i += 1;
        loop {
            let t = toks.get(i).ok_or(ExtError("Unterminated RETURN list"))?;
            match &t.tok {
                Tok::Close => {
                    i += 1;
                    break;
                }
                Tok::Atom(a) => {
                    match a.to_ascii_uppercase().as_slice() {
                        b"SUBSCRIBED" => cmd.return_subscribed = true,
                        b"CHILDREN" => cmd.return_children = true,
                        b"SPECIAL-USE" => cmd.return_special_use = true,
                        b"STATUS" => {
                            let (items, next) = atom_list(toks, i + 1)?;
                            let mut names = Vec::new();
                            for item in items {
                                names.push(status_item(&item).ok_or(ExtError("Unknown STATUS item"))?);
                            }
                            if names.is_empty() {
                                return Err(ExtError("STATUS needs items"));
                            }
                            cmd.return_status = Some(names);
                            i = next;
                            continue;
                        }
                        _ => return Err(ExtError("Unknown LIST return option")),
                    }
                    i += 1;
                }
                _ => return Err(ExtError("Syntax error in RETURN list")),
            }
        }
        if i != toks.len() {
            return Err(ExtError("Syntax error after RETURN"));
        }
    }
    Ok(cmd)
}

/// RFC 3501 §6.3.10 status attributes, plus RFC 9051's DELETED and RFC 8438 SIZE.
fn status_item(name: &str) -> Option<StatusDataItemName> {
    Some(match name {
        "MESSAGES" => StatusDataItemName::Messages,
        "RECENT" => StatusDataItemName::Recent,
        "UIDNEXT" => StatusDataItemName::UidNext,
        "UIDVALIDITY" => StatusDataItemName::UidValidity,
        "UNSEEN" => StatusDataItemName::Unseen,
        "DELETED" => StatusDataItemName::Deleted,
        "DELETED-STORAGE" => StatusDataItemName::DeletedStorage,
        "SIZE" => StatusDataItemName::Size,
        "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
        _ => return None,
    })
}

/// RFC 4731 §3.1: `"SEARCH" [search-return-opts] SP search-criteria`;
/// the criteria are parsed by imap-codec once RETURN (…) is cut out.
fn parse_search(msg: &[u8], toks: &[Spanned], verb: usize, uid: bool) -> Option<Result<ExtBody, ExtError>> {
    if !toks.get(verb + 1).is_some_and(|t| is_atom(t, "RETURN")) {
        return None;
    }
    Some((|| {
        let (options, rebuilt) = cut_return(msg, toks, verb, ReturnOf::Search)?;
        match decode_std(&rebuilt).map(|c| c.body) {
            Some(CommandBody::Search { charset, criteria, uid: u }) if u == uid => {
                Ok(ExtBody::Search { uid, options, charset, criteria })
            }
            _ => Err(ExtError("Syntax error in search criteria")),
        }
    })())
}

/// Which command's RETURN (…) [`cut_return`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReturnOf {
    Search,
    Sort,
}

/// The return options of `toks[verb] RETURN (…) rest` (RFC 4731 §3.1, for
/// SORT RFC 5267 §3.2), and the command without them — `… VERB rest`,
/// for imap-codec to parse as a plain SEARCH or SORT.
fn cut_return(msg: &[u8], toks: &[Spanned], verb: usize, of: ReturnOf) -> Result<(SearchReturn, Vec<u8>), ExtError> {
    let (opts, next) = atom_list(toks, verb + 2)?;
    let mut options = SearchReturn::default();
    for o in &opts {
        match (o.as_str(), of) {
            ("MIN", _) => options.min = true,
            ("MAX", _) => options.max = true,
            ("ALL", _) => options.all = true,
            ("COUNT", _) => options.count = true,
            ("SAVE", ReturnOf::Search) => options.save = true,
            // RFC 4731 §3.1: unknown return options are a syntax error.
            (_, ReturnOf::Search) => return Err(ExtError("Unknown SEARCH return option")),
            // RFC 5267 §4.4 PARTIAL and UPDATE/CONTEXT belong to
            // CONTEXT=SORT, SAVE to SEARCHRES with SORT: not offered.
            (_, ReturnOf::Sort) => return Err(ExtError("Unknown or unsupported SORT return option")),
        }
    }
    // RFC 4731 §3.1: "RETURN ()" means ALL.
    if opts.is_empty() {
        options.all = true;
    }
    let missing = match of {
        ReturnOf::Search => "Missing search criteria",
        ReturnOf::Sort => "Missing sort criteria",
    };
    let rest = toks.get(next).ok_or(ExtError(missing))?;
    let mut rebuilt = msg[..toks[verb].end].to_vec();
    rebuilt.push(b' ');
    rebuilt.extend_from_slice(&msg[rest.start..]);
    Ok((options, rebuilt))
}

/// RFC 6154 §5.2: `create = "CREATE" SP mailbox [create-params]`,
/// `create-param = "USE" SP "(" [use-attr *(SP use-attr)] ")"`.
fn parse_create(msg: &[u8], toks: &[Spanned]) -> Option<Result<ExtBody, ExtError>> {
    let name = toks.get(2)?;
    if !matches!(toks.get(3).map(|t| &t.tok), Some(Tok::Open)) {
        return None;
    }
    Some((|| {
        if !toks.get(4).is_some_and(|t| is_atom(t, "USE")) {
            return Err(ExtError("Unknown CREATE parameter"));
        }
        let (uses, next) = atom_list(toks, 5)?;
        if !matches!(toks.get(next).map(|t| &t.tok), Some(Tok::Close)) || next + 1 != toks.len() {
            return Err(ExtError("Syntax error in CREATE parameters"));
        }
        let mut rebuilt = msg[..name.end].to_vec();
        rebuilt.extend_from_slice(b"\r\n");
        let Some(CommandBody::Create { mailbox }) = decode_std(&rebuilt).map(|c| c.body) else {
            return Err(ExtError("Bad mailbox name"));
        };
        // Atoms were upper-cased; keep RFC 6154's spelling for storage.
        let special_use = uses
            .iter()
            .map(|u| {
                let lower = u.to_ascii_lowercase();
                let mut chars = lower.trim_start_matches('\\').chars();
                let head: String = chars.next().map(|c| c.to_ascii_uppercase()).into_iter().collect();
                format!("\\{head}{}", chars.as_str())
            })
            .collect();
        Ok(ExtBody::Create { mailbox, special_use })
    })())
}

/// RFC 6855 §4: `append-data =/ "UTF8" SP "(" literal8 ")"`. The form
/// without `UTF8 (` … `)` is plain APPEND with a literal8.
fn parse_append_utf8(msg: &[u8], toks: &[Spanned]) -> Option<Result<ExtBody, ExtError>> {
    let at = toks.iter().position(|t| is_atom(t, "UTF8"))?;
    if at < 3 {
        return None;
    }
    Some((|| {
        let bad = ExtError("Syntax error in APPEND UTF8");
        let open = toks.get(at + 1).filter(|t| t.tok == Tok::Open).ok_or(bad.clone())?;
        let lit = toks.get(at + 2).ok_or(bad.clone())?;
        // The data must be a literal8 (`~{n}`), not a quoted string.
        if msg.get(lit.start) != Some(&b'~') {
            return Err(bad);
        }
        let close = toks.get(at + 3).filter(|t| t.tok == Tok::Close).ok_or(bad.clone())?;
        if at + 4 != toks.len() {
            return Err(bad);
        }
        let mut rebuilt = msg[..toks[at].start].to_vec();
        rebuilt.extend_from_slice(&msg[lit.start..lit.end]);
        rebuilt.extend_from_slice(&msg[close.end..]);
        let _ = open;
        match decode_std(&rebuilt).map(|c| c.body) {
            Some(CommandBody::Append { mailbox, flags, date, message: LiteralOrLiteral8::Literal8(l) }) => {
                Ok(ExtBody::AppendUtf8 { mailbox, flags, date, message: l.data.into_owned() })
            }
            _ => Err(bad),
        }
    })())
}

/// The message bytes of the standard LIST form, as RFC 5258 sees it.
pub fn list_of_std(reference: &Mailbox<'_>, pattern: &[u8]) -> ListCommand {
    let reference = match reference {
        Mailbox::Inbox => "INBOX".to_string(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).to_string(),
    };
    ListCommand { reference, patterns: vec![String::from_utf8_lossy(pattern).to_string()], ..ListCommand::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(line: &str) -> ExtBody {
        match parse(line.as_bytes()) {
            Some(Ok(ClientCommand { body: ClientBody::Ext(b), .. })) => b,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn ext_err(line: &str) -> String {
        match parse(line.as_bytes()) {
            Some(Err(e)) => e.0.to_string(),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn list_extended_forms() {
        let ExtBody::List(l) =
            ext("a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"a\" b%) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n")
        else {
            panic!()
        };
        assert!(l.select_subscribed && l.select_recursive && l.return_children && l.extended);
        assert_eq!(l.patterns, vec!["a", "b%"]);
        assert_eq!(l.return_status, Some(vec![StatusDataItemName::Messages, StatusDataItemName::Unseen]));
        let ExtBody::List(l) = ext("a LIST \"\" * RETURN (SPECIAL-USE)\r\n") else { panic!() };
        assert!(l.return_special_use && l.extended && !l.select_subscribed);
        assert_eq!(ext_err("a LIST (RECURSIVEMATCH) \"\" *\r\n"), "RECURSIVEMATCH needs another selection option");
        assert_eq!(ext_err("a LIST (FOO) \"\" *\r\n"), "Unknown LIST selection option");
        assert_eq!(ext_err("a LIST \"\" * RETURN (BAR)\r\n"), "Unknown LIST return option");
        assert_eq!(ext_err("a LIST \"\" () \r\n"), "Bad pattern list");
        assert_eq!(ext_err("a LIST \"\" * RETURN (STATUS ())\r\n"), "STATUS needs items");
    }

    #[test]
    fn list_with_literal_pattern() {
        let ExtBody::List(l) = ext("a LIST \"\" ({1}\r\n* \"x\") RETURN ()\r\n") else { panic!() };
        assert_eq!(l.patterns, vec!["*", "x"]);
    }

    #[test]
    fn search_return() {
        let ExtBody::Search { uid, options, criteria, .. } =
            ext("a UID SEARCH RETURN (MIN COUNT) UNSEEN FROM {3}\r\nbob\r\n")
        else {
            panic!()
        };
        assert!(uid && options.min && options.count && !options.all);
        assert_eq!(criteria.as_ref().len(), 2);
        let ExtBody::Search { options, .. } = ext("a SEARCH RETURN () ALL\r\n") else { panic!() };
        assert!(options.all);
        assert_eq!(ext_err("a SEARCH RETURN (FOO) ALL\r\n"), "Unknown SEARCH return option");
        assert_eq!(ext_err("a SEARCH RETURN (MIN) FROBNICATE\r\n"), "Syntax error in search criteria");
        assert!(parse(b"a SEARCH FROBNICATE\r\n").is_none());
    }

    #[test]
    fn create_use() {
        let ExtBody::Create { special_use, .. } = ext("a CREATE Sent (USE (\\SENT \\archive))\r\n") else { panic!() };
        assert_eq!(special_use, vec!["\\Sent", "\\Archive"]);
        assert_eq!(ext_err("a CREATE x (FOO (\\Sent))\r\n"), "Unknown CREATE parameter");
        assert!(parse(b"a CREATE\r\n").is_none());
    }

    #[test]
    fn append_utf8() {
        let ExtBody::AppendUtf8 { message, flags, .. } = ext("a APPEND INBOX (\\Seen) UTF8 (~{5}\r\nhello)\r\n") else {
            panic!()
        };
        assert_eq!(message, b"hello");
        assert_eq!(flags, vec![Flag::Seen]);
        assert_eq!(ext_err("a APPEND INBOX UTF8 ({5}\r\nhello)\r\n"), "Syntax error in APPEND UTF8");
    }

    #[test]
    fn saved_result_dollar() {
        let c = parse(b"a UID FETCH $ (FLAGS)\r\n").expect("parsed").expect("ok");
        assert!(c.saved);
        let ClientBody::Std(CommandBody::Fetch { sequence_set, uid: true, .. }) = c.body else { panic!() };
        use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
        assert!(
            matches!(sequence_set.0.as_ref(), [Sequence::Single(SeqOrUid::Value(n))] if n.get() == SAVED_PLACEHOLDER)
        );
        let c = parse(b"a SEARCH RETURN (SAVE) $ SUBJECT $\r\n").expect("parsed").expect("ok");
        assert!(c.saved);
        let ClientBody::Ext(ExtBody::Search { criteria, options, .. }) = c.body else { panic!() };
        assert!(options.save);
        assert_eq!(criteria.as_ref().len(), 2);
        assert!(matches!(&criteria.as_ref()[1], SearchKey::Subject(s) if s.as_ref() == b"$"));
        assert!(parse(b"a COPY 1 $\r\n").is_none());
        assert!(parse(b"a STORE $ +FLAGS (\\Seen)\r\n").expect("parsed").expect("ok").saved);
    }

    /// What every accepted command must show: the tag the client sent,
    /// its first word.
    fn accepted_with_the_clients_tag(bytes: &[u8]) -> Result<(), String> {
        match parse(bytes) {
            Some(Ok(cmd)) => {
                let first = bytes.split(|&b| b == b' ').next().unwrap_or_default();
                if cmd.tag.inner().as_bytes() == first {
                    Ok(())
                } else {
                    Err(format!("tag {:?} from {:?}", cmd.tag.inner(), String::from_utf8_lossy(bytes)))
                }
            }
            _ => Ok(()),
        }
    }

    proptest::proptest! {
        /// Fuzz smoke tests: any bytes, and any splice of the extension
        /// forms, parse or fail without panicking; a command accepted
        /// carries the tag the client sent; a form with nothing spliced
        /// in is accepted.
        #[test]
        fn fuzz_smoke(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            proptest::prop_assert_eq!(accepted_with_the_clients_tag(&bytes), Ok(()));
        }

        #[test]
        fn spliced_forms_fuzz_smoke(seed in 0usize..8, cut in 0usize..80, junk in "[ ()\\\"{}~$0-9A-Z%*+\r\n]{0,12}") {
            let forms = [
                "a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"a\" b%) RETURN (CHILDREN STATUS (MESSAGES))\r\n",
                "a UID SEARCH RETURN (MIN SAVE) $ FROM {3}\r\nbob\r\n",
                "a CREATE Sent (USE (\\Sent))\r\n",
                "a APPEND INBOX (\\Seen) UTF8 (~{5}\r\nhello)\r\n",
                "a UID FETCH $ (FLAGS)\r\n",
                "a SEARCH OR $ 1 HEADER X $\r\n",
                "a LIST \"\" ({1}\r\n* \"x\")\r\n",
                "a STORE $ +FLAGS (\\Seen)\r\n",
            ];
            let form = forms[seed].as_bytes();
            let at = cut.min(form.len());
            let mut bytes = form[..at].to_vec();
            bytes.extend_from_slice(junk.as_bytes());
            bytes.extend_from_slice(&form[at..]);
            proptest::prop_assert_eq!(accepted_with_the_clients_tag(&bytes), Ok(()));
            if junk.is_empty() {
                proptest::prop_assert!(matches!(parse(form), Some(Ok(_))), "{:?} refused", forms[seed]);
            }
        }
    }

    /// Truncated and malformed extension forms are refused (BAD), never
    /// taken for a command.
    #[test]
    fn truncated_forms_are_refused() {
        for line in [
            "",
            "a",
            "a LIST",
            "a LIST (",
            "a UID",
            "a SEARCH RETURN",
            "a SEARCH RETURN (",
            "a CREATE x (",
            "a APPEND x UTF8",
            "a APPEND x UTF8 (~{99}\r\nab)",
            "a LIST \"\" \"\\q\"",
            "a {3}\r\n",
            // Found by spliced_forms_fuzz_smoke: a line end before the tag,
            // or between two words.
            "\na LIST \"\" ({1}\r\n* \"x\")\r\n",
            "a\r LIST \"\" ({1}\r\n* \"x\")\r\n",
            "a LIST \"\"\r\n(\"x\")\r\n",
            " a LIST \"\" (\"x\")\r\n",
        ] {
            assert!(!matches!(parse(line.as_bytes()), Some(Ok(_))), "{line:?} accepted");
        }
    }
}
