//! The per-message values SORT and THREAD order by (RFC 5256, RFC 5957),
//! computed once per blob from metadata storage already keeps (the
//! envelope and the decoded header text) and stored next to it in the
//! `blobs` row, so Postgres can order by them.
//!
//! Pure: no I/O, never panics on any input.

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;
use mailfleet_proto::storage::v1 as pb;

/// Bumped when the extraction below changes: rows computed by an older
/// version are computed again on their next SORT/THREAD (see
/// `messages::sort`), so a change never needs a data migration.
pub const SORT_VERSION: i16 = 2;

/// What SORT and THREAD need of one message. Strings that are compared
/// are already mapped for the i;ascii-casemap collation (RFC 5256 §3:
/// "the default collation"; RFC 4790 §9.2: ASCII letters upper-cased), so
/// Postgres compares them octet by octet (`COLLATE "C"`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SortFields {
    /// RFC 5256 §2.1 base subject.
    pub base_subject: String,
    /// The extraction removed a reply/forward marker ("Re:", "Fwd:",
    /// "(fwd)", "[fwd: …]"): RFC 5256 §3 REFERENCES step (5) uses it.
    pub subject_is_reply: bool,
    /// RFC 5256 §3 FROM/TO/CC: addr-mailbox (local part) of the first address.
    pub from_mailbox: String,
    pub to_mailbox: String,
    pub cc_mailbox: String,
    /// RFC 5957 §3 DISPLAYFROM/DISPLAYTO: the decoded display name of the
    /// first address, or its addr-spec when it has none.
    pub display_from: String,
    pub display_to: String,
    /// RFC 5256 §2.2 sent date in UTC; `None` when the Date: field is
    /// missing or unparsable (SORT then uses the internal date).
    pub sent_at: Option<time::OffsetDateTime>,
    /// The msg-id of Message-ID:, without angle brackets.
    pub message_id: Option<String>,
    /// RFC 5256 §3 REFERENCES step (1): the References: msg-ids, or the
    /// first msg-id of In-Reply-To: when References: has none. Oldest first.
    pub references: Vec<String>,
}

impl SortFields {
    /// From the stored envelope and header text (`mime::ParsedMessage`).
    pub fn compute(envelope: &pb::Envelope, header_text: &str) -> SortFields {
        let field = |name: &str| first_field(header_text, name);
        let (base_subject, subject_is_reply) = base_subject(field("subject").unwrap_or(""));
        let mut references = field("references").map(msg_ids).unwrap_or_default();
        if references.is_empty() {
            references = field("in-reply-to").map(msg_ids).unwrap_or_default().into_iter().take(1).collect();
        }
        // THREAD links only the last few (`threading::MAX_REFERENCES`); a
        // sender's References: of thousands of ids is not stored whole.
        references.drain(..references.len().saturating_sub(crate::threading::MAX_REFERENCES));
        SortFields {
            base_subject,
            subject_is_reply,
            from_mailbox: casemap(&first_mailbox(&envelope.from)),
            to_mailbox: casemap(&first_mailbox(&envelope.to)),
            cc_mailbox: casemap(&first_mailbox(&envelope.cc)),
            display_from: casemap(&display(&envelope.from)),
            display_to: casemap(&display(&envelope.to)),
            sent_at: field("date").and_then(sent_at),
            message_id: field("message-id").and_then(|v| msg_ids(v).into_iter().next()),
            references,
        }
    }
}

/// RFC 4790 §9.2 i;ascii-casemap: only ASCII letters are folded.
fn casemap(s: &str) -> String {
    s.to_ascii_uppercase()
}

/// The value of the first `name:` line of the header text (`mime`'s
/// `name: value\n` lines, names in lowercase, values decoded and unfolded).
fn first_field<'a>(header_text: &'a str, name: &str) -> Option<&'a str> {
    header_text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(": ").or_else(|| rest.strip_prefix(':'))
    })
}

/// The first address of the list. A group comes first as its start
/// marker (RFC 3501 §7.4.2: no host, the group's name as mailbox), and
/// the group's name is what SORT compares then, for CC and FROM/TO as for
/// DISPLAYFROM/DISPLAYTO — as Dovecot does (imaptest's sort-addresses
/// and sort-display-to): `Cc: team: a@x;` sorts as "team", not "a".
fn first_address(list: &[pb::Address]) -> Option<&pb::Address> {
    list.iter().find(|a| a.mailbox.is_some() || a.host.is_some())
}

fn first_mailbox(list: &[pb::Address]) -> String {
    first_address(list).and_then(|a| a.mailbox.clone()).unwrap_or_default()
}

/// RFC 5957 §3: the display name (RFC 2047 decoded) of the first address;
/// without one, the addr-spec.
fn display(list: &[pb::Address]) -> String {
    let Some(a) = first_address(list) else { return String::new() };
    let name = a.name.as_deref().map(|n| crate::mime::decode_words(n.as_bytes())).unwrap_or_default();
    let name = name.trim();
    if !name.is_empty() {
        return name.to_string();
    }
    match (&a.mailbox, &a.host) {
        (Some(m), Some(h)) => format!("{m}@{h}"),
        (Some(m), None) => m.clone(),
        _ => String::new(),
    }
}

/// RFC 5256 §2.2: the Date: field's date and time, compared in UTC.
fn sent_at(value: &str) -> Option<time::OffsetDateTime> {
    let mut bytes = value.as_bytes().to_vec();
    bytes.push(b'\n');
    match MessageStream::new(&bytes).parse_date() {
        HeaderValue::DateTime(dt) if dt.is_valid() => time::OffsetDateTime::from_unix_timestamp(dt.to_timestamp()).ok(),
        _ => None,
    }
}

/// Every `<msg-id>` of a field value (RFC 5322 §3.6.4), without the angle
/// brackets and with any whitespace inside removed; empty ones are skipped.
pub fn msg_ids(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else { break };
        let id: String = after[..close].chars().filter(|c| !c.is_whitespace()).collect();
        // An id with another "<" inside is garbage up to that point.
        if let Some(inner) = id.rfind('<') {
            let id = &id[inner + 1..];
            if !id.is_empty() {
                out.push(id.to_string());
            }
        } else if !id.is_empty() {
            out.push(id);
        }
        rest = &after[close + 1..];
    }
    out
}

/// RFC 5256 §2.1 base subject, mapped for i;ascii-casemap, and whether a
/// reply/forward marker was removed on the way.
pub fn base_subject(subject: &str) -> (String, bool) {
    // (1) Encoded words are already decoded (header text); tabs and
    // line breaks become spaces, runs of spaces one space.
    let mut s = String::with_capacity(subject.len());
    for c in subject.chars() {
        let c = if c == '\t' || c == '\r' || c == '\n' { ' ' } else { c };
        if c == ' ' && s.ends_with(' ') {
            continue;
        }
        s.push(c);
    }
    let mut s = casemap(&s);
    let mut reply = false;
    loop {
        // (2) Remove trailing "(fwd)" and whitespace (subj-trailer).
        loop {
            let trimmed = s.trim_end_matches(' ');
            if let Some(t) = trimmed.strip_suffix("(FWD)") {
                reply = true;
                s = t.to_string();
            } else if trimmed.len() != s.len() {
                s = trimmed.to_string();
            } else {
                break;
            }
        }
        // (5) Repeat (3) and (4) until neither removes anything.
        loop {
            // (3) Remove leading subj-leader: whitespace, or blobs
            // followed by "re"/"fw"/"fwd" [blob] ":".
            let mut changed = false;
            loop {
                if let Some(t) = s.strip_prefix(' ') {
                    s = t.to_string();
                    changed = true;
                } else if let Some(t) = strip_refwd(&s) {
                    s = t.to_string();
                    reply = true;
                    changed = true;
                } else {
                    break;
                }
            }
            // (4) Remove a leading subj-blob if something is left after it.
            if let Some(t) = strip_blob(&s)
                && !t.is_empty()
            {
                s = t.to_string();
                changed = true;
            }
            if !changed {
                break;
            }
        }
        // (6) "[fwd:" … "]" around the whole: unwrap and start over at (2).
        if let Some(inner) = s.strip_prefix("[FWD:").and_then(|t| t.strip_suffix(']')) {
            s = inner.to_string();
            reply = true;
            continue;
        }
        return (s, reply);
    }
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP` at the start: what follows it.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let close = rest.find(['[', ']'])?;
    if !rest[close..].starts_with(']') {
        return None;
    }
    Some(rest[close + 1..].trim_start_matches(' '))
}

/// `*subj-blob subj-refwd` at the start, where
/// `subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"`: what follows.
fn strip_refwd(s: &str) -> Option<&str> {
    let mut rest = s;
    loop {
        if let Some(after) = refwd(rest) {
            return Some(after);
        }
        // Not yet a refwd: a blob may precede it.
        rest = strip_blob(rest)?;
    }
}

fn refwd(s: &str) -> Option<&str> {
    let rest = s
        .strip_prefix("RE")
        .or_else(|| s.strip_prefix("FWD"))
        .or_else(|| s.strip_prefix("FW"))?
        .trim_start_matches(' ');
    let rest = strip_blob(rest).unwrap_or(rest);
    rest.strip_prefix(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> String {
        base_subject(s).0
    }

    #[test]
    fn base_subject_strips_reply_markers() {
        assert_eq!(base_subject("Re: hello"), ("HELLO".into(), true));
        assert_eq!(base_subject("hello"), ("HELLO".into(), false));
        assert_eq!(base("RE: Re: re:hello"), "HELLO");
        assert_eq!(base("Fwd: hello"), "HELLO");
        assert_eq!(base("FW: hello"), "HELLO");
        assert_eq!(base("Re [2]: hello"), "HELLO");
        assert_eq!(base("Re[3]:hello"), "HELLO");
        // Not a marker: "Re" must be followed by ":" (after an optional blob).
        assert_eq!(base_subject("Regarding: x"), ("REGARDING: X".into(), false));
        assert_eq!(base_subject("Reply needed"), ("REPLY NEEDED".into(), false));
    }

    #[test]
    fn base_subject_list_blobs() {
        // (3): blobs before a reply marker go with it.
        assert_eq!(base_subject("[list] Re: hello"), ("HELLO".into(), true));
        // (4): a leading blob alone goes when something is left.
        assert_eq!(base_subject("[list] hello"), ("HELLO".into(), false));
        assert_eq!(base("[a][b] hello"), "HELLO");
        // ... but not when it is all there is.
        assert_eq!(base("[list]"), "[LIST]");
        assert_eq!(base("Re: [list]"), "[LIST]");
        // Blobs and markers nested in any order.
        assert_eq!(base("Re: [list] Fwd: [other] Re: hello"), "HELLO");
    }

    #[test]
    fn base_subject_fwd_trailer_and_wrapper() {
        assert_eq!(base_subject("hello (fwd)"), ("HELLO".into(), true));
        assert_eq!(base("hello (fwd) (FWD)  "), "HELLO");
        assert_eq!(base_subject("[Fwd: hello]"), ("HELLO".into(), true));
        assert_eq!(base("[fwd: Re: hello (fwd)]"), "HELLO");
        assert_eq!(base("Re: [fwd: [fwd: hello]]"), "HELLO");
        // Not a wrapper when it does not close at the end.
        assert_eq!(base("[fwd: a] b"), "B");
    }

    #[test]
    fn base_subject_whitespace() {
        assert_eq!(base("  Re:\t  hello \t world  "), "HELLO WORLD");
        assert_eq!(base(""), "");
        assert_eq!(base("Re:"), "");
        assert_eq!(base("Re: (fwd)"), "");
        // Non-ASCII letters are not folded (i;ascii-casemap).
        assert_eq!(base("Re: café"), "CAFé");
    }

    #[test]
    fn fields_from_envelope_and_header_text() {
        let addr = |name: Option<&str>, mailbox: &str, host: &str| pb::Address {
            name: name.map(String::from),
            adl: None,
            mailbox: Some(mailbox.into()),
            host: Some(host.into()),
        };
        let group = pb::Address { name: None, adl: None, mailbox: Some("team".into()), host: None };
        let envelope = pb::Envelope {
            from: vec![addr(Some("=?UTF-8?Q?Zo=C3=A9?="), "zoe", "example.org")],
            to: vec![group, addr(None, "bob", "Example.NET"), addr(Some("Carol"), "carol", "x")],
            cc: vec![],
            ..Default::default()
        };
        let text = "subject: Re: [dev] Plans\nreferences: <a@x>\t<b@x>\nmessage-id: < m1@x >\n\
                    in-reply-to: <b@x>\ndate: Tue, 2 Jan 2024 23:30:00 -0500\n";
        let f = SortFields::compute(&envelope, text);
        assert_eq!(f.base_subject, "PLANS");
        assert!(f.subject_is_reply);
        assert_eq!(f.from_mailbox, "ZOE");
        // A group first: its name is what sorts (Dovecot's order too).
        assert_eq!(f.to_mailbox, "TEAM");
        assert_eq!(f.cc_mailbox, "");
        assert_eq!(f.display_from, "ZOé");
        assert_eq!(f.display_to, "TEAM");
        assert_eq!(f.message_id.as_deref(), Some("m1@x"));
        assert_eq!(f.references, vec!["a@x", "b@x"]);
        assert_eq!(f.sent_at.map(|t| t.unix_timestamp()), Some(1_704_256_200));
        // In-Reply-To when References has no msg-id; its first id only.
        let f = SortFields::compute(&envelope, "in-reply-to: <p@x> <q@x>\nreferences: none\ndate: garbage\n");
        assert_eq!(f.references, vec!["p@x"]);
        // Only the last MAX_REFERENCES ids are kept, the parent last.
        let many: String = (0..500).map(|i| format!("<r{i}@x> ")).collect();
        let f = SortFields::compute(&envelope, &format!("references: {many}\n"));
        assert_eq!(f.references.len(), crate::threading::MAX_REFERENCES);
        assert_eq!(f.references.last().map(String::as_str), Some("r499@x"));
        assert_eq!(f.sent_at, None);
        assert_eq!(f.message_id, None);
    }
}
