//! SEARCH and UID SEARCH (RFC 3501 §6.4.4): the criteria become storage's
//! `SearchKey` tree (evaluated in Postgres) once sequence numbers are UIDs.

use std::num::{NonZeroU32, NonZeroU64};

use imap_codec::imap_types::core::{AString, Charset, Tag, Vec1};
use imap_codec::imap_types::datetime::NaiveDate;
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::search::SearchKey;
use mailfleet_proto::storage::v1 as pb;
use pb::search_key::Key;

use super::select::search_members;
use crate::codec::ext::SearchReturn;
use crate::session::{CmdResult, Done, ImapError, Out, Selected, Session};
use crate::store::{MailStore, uid_ranges};

pub(crate) fn key(k: Key) -> pb::SearchKey {
    pb::SearchKey { key: Some(k) }
}

fn text(a: &AString<'_>) -> String {
    String::from_utf8_lossy(a.as_ref()).to_string()
}

fn header(field: &str, a: &AString<'_>) -> pb::SearchKey {
    key(Key::Header(pb::HeaderMatch { field: field.into(), value: text(a) }))
}

fn date(relation: pb::date_key::Relation, d: &NaiveDate, sent: bool) -> pb::SearchKey {
    let dk = pb::DateKey { relation: relation as i32, date: d.as_ref().format("%Y-%m-%d").to_string() };
    key(if sent { Key::SentDate(dk) } else { Key::InternalDate(dk) })
}

fn uids(list: Vec<u32>) -> pb::SearchKey {
    key(Key::UidSet(pb::UidSet { ranges: uid_ranges(&list) }))
}

fn not(k: pb::SearchKey) -> pb::SearchKey {
    key(Key::Not(Box::new(k)))
}

/// Translate one IMAP search key (RFC 3501 §6.4.4).
pub(crate) fn translate(mailbox: &Selected, k: &SearchKey<'_>) -> Result<pb::SearchKey, ImapError> {
    use pb::date_key::Relation::{Before, On, Since};
    let has = |f: &str| key(Key::HasFlag(f.into()));
    let lacks = |f: &str| key(Key::LacksFlag(f.into()));
    let recent = || uids(mailbox.recent.iter().copied().collect());
    Ok(match k {
        SearchKey::All => key(Key::All(true)),
        SearchKey::And(keys) => {
            let keys = keys.as_ref().iter().map(|k| translate(mailbox, k)).collect::<Result<_, _>>()?;
            key(Key::And(pb::SearchKeyList { keys }))
        }
        SearchKey::Or(a, b) => {
            key(Key::Or(pb::SearchKeyList { keys: vec![translate(mailbox, a)?, translate(mailbox, b)?] }))
        }
        SearchKey::Not(a) => not(translate(mailbox, a)?),
        SearchKey::SequenceSet(set) => uids(search_members(mailbox, set, false).into_iter().map(|(_, u)| u).collect()),
        SearchKey::Uid(set) => uids(search_members(mailbox, set, true).into_iter().map(|(_, u)| u).collect()),
        SearchKey::Answered => has("\\Answered"),
        SearchKey::Deleted => has("\\Deleted"),
        SearchKey::Draft => has("\\Draft"),
        SearchKey::Flagged => has("\\Flagged"),
        SearchKey::Seen => has("\\Seen"),
        SearchKey::Keyword(a) => has(a.inner()),
        SearchKey::Unanswered => lacks("\\Answered"),
        SearchKey::Undeleted => lacks("\\Deleted"),
        SearchKey::Undraft => lacks("\\Draft"),
        SearchKey::Unflagged => lacks("\\Flagged"),
        SearchKey::Unseen => lacks("\\Seen"),
        SearchKey::Unkeyword(a) => lacks(a.inner()),
        // \Recent is per session (RFC 3501 §2.3.2): known here, not in storage.
        SearchKey::Recent => recent(),
        SearchKey::New => key(Key::And(pb::SearchKeyList { keys: vec![recent(), lacks("\\Seen")] })),
        SearchKey::Old => not(recent()),
        SearchKey::Bcc(a) => header("Bcc", a),
        SearchKey::Cc(a) => header("Cc", a),
        SearchKey::From(a) => header("From", a),
        SearchKey::To(a) => header("To", a),
        SearchKey::Subject(a) => header("Subject", a),
        SearchKey::Header(f, a) => header(&text(f), a),
        SearchKey::Body(a) => key(Key::Body(text(a))),
        SearchKey::Text(a) => key(Key::Text(text(a))),
        SearchKey::Larger(n) => key(Key::Larger(u64::from(*n))),
        SearchKey::Smaller(n) => key(Key::Smaller(u64::from(*n))),
        SearchKey::Before(d) => date(Before, d, false),
        SearchKey::On(d) => date(On, d, false),
        SearchKey::Since(d) => date(Since, d, false),
        SearchKey::SentBefore(d) => date(Before, d, true),
        SearchKey::SentOn(d) => date(On, d, true),
        SearchKey::SentSince(d) => date(Since, d, true),
        // RFC 7162 §3.1.5; the per-flag entry is not distinguished (storage
        // keeps one MODSEQ per message, which RFC 7162 allows).
        SearchKey::ModSequence { modseq, .. } => key(Key::ModseqAtLeast(*modseq)),
    })
}

/// Keys in one search program at most: each is a condition Postgres
/// evaluates for every message of the mailbox (text keys scan the text).
pub const MAX_SEARCH_KEYS: usize = 100;
/// Nesting (parentheses, NOT, OR) at most.
pub const MAX_SEARCH_DEPTH: usize = 16;

/// The keys of a program and its deepest nesting.
fn size(k: &SearchKey<'_>) -> (usize, usize) {
    let nested = |children: &mut dyn Iterator<Item = &SearchKey<'_>>| {
        children.map(size).fold((1, 1), |(n, d), (cn, cd)| (n + cn, d.max(cd + 1)))
    };
    match k {
        SearchKey::And(keys) => nested(&mut keys.as_ref().iter()),
        SearchKey::Or(a, b) => nested(&mut [a.as_ref(), b.as_ref()].into_iter()),
        SearchKey::Not(a) => nested(&mut std::iter::once(a.as_ref())),
        _ => (1, 1),
    }
}

/// RFC 5530 §3 LIMIT: a program over the bounds is refused before any work.
pub(crate) fn check_size(criteria: &[SearchKey<'_>]) -> Result<(), ImapError> {
    let (keys, depth) = criteria.iter().map(size).fold((0, 0), |(n, d), (cn, cd)| (n + cn, d.max(cd)));
    if keys > MAX_SEARCH_KEYS || depth > MAX_SEARCH_DEPTH {
        return Err(ImapError::no(Some("LIMIT"), "Search program too large"));
    }
    Ok(())
}

pub(crate) fn has_modseq(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::ModSequence { .. } => true,
        SearchKey::Not(a) => has_modseq(a),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::And(keys) => keys.as_ref().iter().any(has_modseq),
        _ => false,
    }
}

/// What a search found: UIDs of messages this session knows (ascending),
/// with their sequence numbers, and the highest MODSEQ when asked for.
struct Found {
    hits: Vec<(u32, u32)>,
    modseq: Option<NonZeroU64>,
}

/// RFC 3501 §6.4.4: US-ASCII must be supported, and UTF-8 is what storage
/// compares; any other charset is NO [BADCHARSET (the two)]. SORT and
/// THREAD (RFC 5256 §3) check theirs the same way.
pub(crate) fn check_charset(charset: &Charset<'_>) -> Result<(), ImapError> {
    let name = match charset {
        Charset::Atom(a) => a.inner(),
        Charset::Quoted(q) => q.inner(),
    };
    if name.eq_ignore_ascii_case("US-ASCII") || name.eq_ignore_ascii_case("UTF-8") {
        return Ok(());
    }
    let supported = || -> Option<Vec<Charset<'static>>> {
        Some(vec![Charset::try_from("US-ASCII").ok()?, Charset::try_from("UTF-8").ok()?])
    };
    let code = supported().map(imap_codec::imap_types::response::Code::badcharset);
    Err(ImapError::No(code, "Unsupported charset".into()))
}

async fn run<S: MailStore>(
    s: &mut Session<S>,
    charset: Option<Charset<'static>>,
    criteria: Vec1<SearchKey<'static>>,
) -> Result<Found, ImapError> {
    check_size(criteria.as_ref())?;
    let store = s.store.clone();
    let uses_modseq = criteria.as_ref().iter().any(has_modseq);
    if uses_modseq {
        s.condstore = true;
    }
    let (account, mailbox) = s.need_selected()?;
    if let Some(cs) = &charset {
        check_charset(cs)?;
    }
    let keys = criteria.as_ref().iter().map(|k| translate(mailbox, k)).collect::<Result<Vec<_>, _>>()?;
    let criteria =
        if keys.len() == 1 { keys.into_iter().next() } else { Some(key(Key::And(pb::SearchKeyList { keys }))) };
    let req = pb::SearchRequest { account_id: account.id, mailbox_id: mailbox.id, criteria };
    let found = store.search(req).await?;
    // Only messages this session knows of (the map).
    let hits: Vec<(u32, u32)> = found.uids.iter().filter_map(|u| mailbox.seq_of(*u).map(|seq| (seq, *u))).collect();
    // RFC 7162 §3.1.5: with MODSEQ in the criteria, the highest MODSEQ of
    // the matches is reported.
    let modseq = if uses_modseq && !hits.is_empty() { NonZeroU64::new(found.highest_modseq) } else { None };
    Ok(Found { hits, modseq })
}

pub async fn search<S: MailStore>(
    s: &mut Session<S>,
    charset: Option<Charset<'static>>,
    criteria: Vec1<SearchKey<'static>>,
    uid: bool,
    out: &mut Out,
) -> CmdResult {
    let found = run(s, charset, criteria).await?;
    let hits: Vec<NonZeroU32> =
        found.hits.iter().filter_map(|&(seq, u)| NonZeroU32::new(if uid { u } else { seq })).collect();
    out.push(Response::Data(Data::Search(hits, found.modseq)));
    Done::ok("SEARCH completed")
}

/// Numbers as an IMAP sequence set, runs collapsed ("1:3,5").
fn set_string(numbers: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        let mut end = start;
        while i + 1 < numbers.len() && numbers[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = numbers[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// `* ESEARCH (TAG "t") [UID] [MIN n] [MAX n] [COUNT n] [ALL set] [MODSEQ n]`
/// (RFC 4731 §3.1, §4; MODSEQ from RFC 7162 §3.1.5).
pub fn esearch_line(tag: &str, uid: bool, options: &SearchReturn, numbers: &[u32], modseq: Option<u64>) -> Vec<u8> {
    // A tag is ASTRING-CHAR without "+": nothing to escape in a quoted string.
    let mut line = format!("* ESEARCH (TAG \"{tag}\")");
    if uid {
        line.push_str(" UID");
    }
    // RFC 4731 §3.1: MIN, MAX and ALL are left out when nothing matched.
    if let (true, Some(min)) = (options.min, numbers.first()) {
        line.push_str(&format!(" MIN {min}"));
    }
    if let (true, Some(max)) = (options.max, numbers.last()) {
        line.push_str(&format!(" MAX {max}"));
    }
    if options.count {
        line.push_str(&format!(" COUNT {}", numbers.len()));
    }
    if options.all && !numbers.is_empty() {
        line.push_str(&format!(" ALL {}", set_string(numbers)));
    }
    if let Some(m) = modseq {
        line.push_str(&format!(" MODSEQ {m}"));
    }
    line.push_str("\r\n");
    line.into_bytes()
}

/// SEARCH RETURN (…) answered with ESEARCH (RFC 4731 §3.1).
pub async fn esearch<S: MailStore>(
    s: &mut Session<S>,
    tag: &Tag<'static>,
    options: &SearchReturn,
    charset: Option<Charset<'static>>,
    criteria: Vec1<SearchKey<'static>>,
    uid: bool,
    out: &mut Out,
) -> CmdResult {
    let found = match run(s, charset, criteria).await {
        Ok(found) => found,
        Err(e) => {
            // RFC 5182 §2.1: a failed SEARCH ... SAVE leaves "$" empty.
            if options.save
                && let Ok((_, mailbox)) = s.need_selected()
            {
                mailbox.saved.clear();
            }
            return Err(e);
        }
    };
    if options.save {
        let uids: Vec<u32> = found.hits.iter().map(|&(_, u)| u).collect();
        let (_, mailbox) = s.need_selected()?;
        mailbox.saved = super::searchres::to_save(options, &uids);
    }
    // RFC 5182 §2.1: with SAVE alone there is no ESEARCH response.
    if options.min || options.max || options.all || options.count {
        let numbers: Vec<u32> = found.hits.iter().map(|&(seq, u)| if uid { u } else { seq }).collect();
        let modseq = match found.modseq {
            Some(highest) => Some(returned_modseq(s, options, &found.hits, highest).await?),
            None => None,
        };
        out.push_raw(esearch_line(tag.inner(), uid, options, &numbers, modseq));
    }
    Done::ok("SEARCH completed")
}

/// The MODSEQ an ESEARCH answer carries (RFC 7162 §3.1.5, RFC 4731 §3.2):
/// with ALL or COUNT it covers every match (the highest of them all); with
/// only MIN and/or MAX, just the message(s) returned, so it is the MODSEQ
/// of that message (the higher of the two for MIN and MAX).
async fn returned_modseq<S: MailStore>(
    s: &mut Session<S>,
    options: &SearchReturn,
    hits: &[(u32, u32)],
    highest: NonZeroU64,
) -> Result<u64, ImapError> {
    if options.all || options.count {
        return Ok(highest.get());
    }
    let mut returned: Vec<u32> = Vec::with_capacity(2);
    if let (true, Some(&(_, first))) = (options.min, hits.first()) {
        returned.push(first);
    }
    if let (true, Some(&(_, last))) = (options.max, hits.last())
        && !returned.contains(&last)
    {
        returned.push(last);
    }
    let store = s.store.clone();
    let (account, mailbox) = s.need_selected()?;
    let req = pb::ListMessagesRequest {
        account_id: account.id,
        mailbox_id: mailbox.id,
        uids: uid_ranges(&returned),
        ..Default::default()
    };
    let metas = store.list_messages(req).await?;
    Ok(metas.iter().map(|m| m.modseq).max().unwrap_or(highest.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esearch_lines() {
        let all = SearchReturn { min: true, max: true, all: true, count: true, save: false };
        assert_eq!(
            esearch_line("a1", true, &all, &[2, 3, 4, 7, 9, 10], None),
            b"* ESEARCH (TAG \"a1\") UID MIN 2 MAX 10 COUNT 6 ALL 2:4,7,9:10\r\n"
        );
        assert_eq!(esearch_line("a2", false, &all, &[], None), b"* ESEARCH (TAG \"a2\") COUNT 0\r\n");
        let count = SearchReturn { count: true, ..Default::default() };
        assert_eq!(esearch_line("t", false, &count, &[5], Some(9)), b"* ESEARCH (TAG \"t\") COUNT 1 MODSEQ 9\r\n");
    }
}
