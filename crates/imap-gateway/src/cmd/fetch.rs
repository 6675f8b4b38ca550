//! FETCH and UID FETCH (RFC 3501 §6.4.5, §7.4.2). Metadata comes from one
//! `ListMessages` call; body sections are byte ranges read with `Fetch`.

use std::collections::BTreeSet;

use futures::StreamExt;
use std::num::{NonZeroU32, NonZeroU64};

use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::core::{IString, Literal, NString, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::envelope::{Address, Envelope};
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Part, Section};
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::sequence::SequenceSet;
use mailfleet_proto::storage::v1 as pb;

use super::bodystructure::body_structure;
use super::select::{fetch_flags, resolve, sequence_set};
use crate::session::{CmdResult, Done, ImapError, Out, Session};
use crate::store::{MailStore, RangeStream, StoreError, uid_ranges};

/// Messages, and byte ranges, whose octets one FetchRanges call reads
/// (storage takes 10,000 ranges at most). Measured on 5,000 messages of
/// 10 KB: batches of 500 were faster than one call for all of them.
const FETCH_BATCH_MESSAGES: usize = 500;
const FETCH_BATCH_RANGES: usize = 2000;

fn nstring(s: Option<&str>) -> NString<'static> {
    NString(s.and_then(|s| IString::try_from(s.to_string()).ok()))
}

/// Octets as an IMAP literal. RFC 3501 §4.3: literals cannot carry NUL, so
/// a NUL (invalid in a message anyway) is sent as a space; the size stays.
/// todo(RFC 3516): BINARY would carry such content unchanged.
fn literal(mut data: Vec<u8>) -> NString<'static> {
    // Bodies are most of what a big FETCH sends: look for a NUL with a
    // word-at-a-time search and touch the octets only when there is one
    // (a per-octet loop here was a third of the gateway's CPU in a
    // `FETCH 1:* BODY.PEEK[]`).
    if data.contains(&0) {
        for b in data.iter_mut().filter(|b| **b == 0) {
            *b = b' ';
        }
    }
    // No NUL is left, which is all `Literal::validate` asks (`CHAR8`), so
    // imap-types need not scan the octets again.
    NString(Some(IString::from(Literal::unvalidated(data))))
}

fn addresses(list: &[pb::Address]) -> Vec<Address<'static>> {
    list.iter()
        .map(|a| Address {
            name: nstring(a.name.as_deref()),
            adl: nstring(a.adl.as_deref()),
            mailbox: nstring(a.mailbox.as_deref()),
            host: nstring(a.host.as_deref()),
        })
        .collect()
}

/// RFC 3501 §7.4.2 ENVELOPE; Sender and Reply-To default to From.
pub fn envelope(e: &pb::Envelope) -> Envelope<'static> {
    let from = addresses(&e.from);
    let or_from = |l: &[pb::Address]| if l.is_empty() { from.clone() } else { addresses(l) };
    Envelope {
        date: nstring(e.date.as_deref()),
        subject: nstring(e.subject.as_deref()),
        sender: or_from(&e.sender),
        reply_to: or_from(&e.reply_to),
        from: from.clone(),
        to: addresses(&e.to),
        cc: addresses(&e.cc),
        bcc: addresses(&e.bcc),
        in_reply_to: nstring(e.in_reply_to.as_deref()),
        message_id: nstring(e.message_id.as_deref()),
    }
}

/// Where a section's octets are: a byte range of the message, or a header
/// range to filter by field names (RFC 3501 §6.4.5 HEADER.FIELDS[.NOT]).
enum Source {
    Range { offset: u64, length: Option<u64> },
    Fields { offset: u64, length: u64, names: Vec<String>, not: bool },
}

/// The part at `path` (RFC 3501 §6.4.5 part numbers): parts of a multipart
/// are numbered from 1; a non-multipart body is its own part 1; inside a
/// message/rfc822 part the numbering continues in the enclosed body.
pub(crate) fn find_part<'a>(top: &'a pb::BodyPart, path: &[NonZeroU32]) -> Option<&'a pb::BodyPart> {
    let mut cur = top;
    for (i, n) in path.iter().enumerate() {
        let idx = n.get() as usize - 1;
        if i > 0 && cur.media_type == "message" && cur.media_subtype == "rfc822" {
            cur = cur.message_body.as_ref()?;
        }
        cur = if cur.media_type == "multipart" {
            cur.parts.get(idx)?
        } else if idx == 0 {
            cur
        } else {
            return None;
        };
    }
    Some(cur)
}

/// The encapsulated message of a message/rfc822 part, whose header and
/// body are `n.HEADER` and `n.TEXT` (RFC 3501 §6.4.5).
fn embedded(part: &pb::BodyPart) -> Option<&pb::BodyPart> {
    part.message_body.as_deref()
}

fn source(meta: &pb::MessageMeta, section: &Option<Section<'_>>) -> Result<Source, ImapError> {
    let header = meta.header_size;
    let fields = |offset, length, list: &Vec1<imap_codec::imap_types::core::AString<'_>>, not| Source::Fields {
        offset,
        length,
        names: list.as_ref().iter().map(|a| String::from_utf8_lossy(a.as_ref()).to_ascii_lowercase()).collect(),
        not,
    };
    let part = |p: &Part| -> Result<Option<&pb::BodyPart>, ImapError> {
        match &meta.body_structure {
            Some(top) => find_part(top, p.0.as_ref()).map(Some).ok_or_else(|| ImapError::no(None, "No such body part")),
            None => Ok(None),
        }
    };
    let nested = |p: &Part| -> Result<&pb::BodyPart, ImapError> {
        part(p)?.and_then(embedded).ok_or_else(|| ImapError::no(None, "Part is not a message/rfc822"))
    };
    Ok(match section {
        None => Source::Range { offset: 0, length: None },
        Some(Section::Header(None)) => Source::Range { offset: 0, length: Some(header) },
        Some(Section::Text(None)) => Source::Range { offset: header, length: None },
        Some(Section::HeaderFields(None, list)) => fields(0, header, list, false),
        Some(Section::HeaderFieldsNot(None, list)) => fields(0, header, list, true),
        Some(Section::Part(p)) => match part(p)? {
            Some(bp) => Source::Range { offset: bp.body_offset, length: Some(bp.body_length) },
            None if p.0.as_ref().len() == 1 && p.0.as_ref()[0].get() == 1 => {
                Source::Range { offset: header, length: None }
            }
            None => return Err(ImapError::no(Some("UNAVAILABLE"), "Body structure not available")),
        },
        Some(Section::Mime(p)) => match part(p)? {
            Some(bp) => Source::Range { offset: bp.header_offset, length: Some(bp.header_length) },
            None => return Err(ImapError::no(Some("UNAVAILABLE"), "Body structure not available")),
        },
        Some(Section::Header(Some(p))) => {
            let m = nested(p)?;
            Source::Range { offset: m.header_offset, length: Some(m.header_length) }
        }
        Some(Section::Text(Some(p))) => {
            let m = nested(p)?;
            Source::Range { offset: m.body_offset, length: Some(m.body_length) }
        }
        Some(Section::HeaderFields(Some(p), list)) => {
            let m = nested(p)?;
            fields(m.header_offset, m.header_length, list, false)
        }
        Some(Section::HeaderFieldsNot(Some(p), list)) => {
            let m = nested(p)?;
            fields(m.header_offset, m.header_length, list, true)
        }
    })
}

/// RFC 3501 §6.4.5 HEADER.FIELDS: the matching header lines (with their
/// continuation lines), then the blank line.
pub fn filter_header(raw: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in raw.split_inclusive(|b| *b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !(line.starts_with(b" ") || line.starts_with(b"\t")) {
            let name = line.split(|b| *b == b':').next().unwrap_or_default();
            let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
            keep = names.contains(&name) != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The octets one FETCH item needs, planned before any are read, so that
/// a whole FETCH reads its bodies in few storage calls.
pub(crate) enum Octets {
    /// Nothing (an empty section, or a partial beyond its end).
    Empty,
    /// This range of the message, as is.
    Range(pb::ByteRange),
    /// A header range filtered by field names (RFC 3501 §6.4.5), then the
    /// partial applied to the filtered octets.
    Fields { range: pb::ByteRange, names: Vec<String>, not: bool, partial: Option<(u32, NonZeroU32)> },
}

impl Octets {
    pub(crate) fn range(&self) -> Option<&pb::ByteRange> {
        match self {
            Octets::Empty => None,
            Octets::Range(r) | Octets::Fields { range: r, .. } => Some(r),
        }
    }

    /// The item's octets from the range's raw octets.
    pub(crate) fn finish(self, raw: Vec<u8>) -> Vec<u8> {
        match self {
            Octets::Empty => Vec::new(),
            Octets::Range(_) => raw,
            Octets::Fields { names, not, partial, .. } => {
                let data = filter_header(&raw, &names, not);
                match partial {
                    Some((origin, count)) => {
                        let start = (origin as usize).min(data.len());
                        let end = start.saturating_add(count.get() as usize).min(data.len());
                        data[start..end].to_vec()
                    }
                    None => data,
                }
            }
        }
    }
}

/// Where a section's octets are (`<origin.octets>` applied, RFC 3501 §6.4.5).
pub(crate) fn plan_section(
    meta: &pb::MessageMeta,
    section: &Option<Section<'_>>,
    partial: Option<(u32, NonZeroU32)>,
) -> Result<Octets, ImapError> {
    let range =
        |offset: u64, length: u64| pb::ByteRange { uid: meta.uid, offset, length: Some(length), ..Default::default() };
    Ok(match source(meta, section)? {
        Source::Range { offset, length } => {
            let end = length.map_or(meta.size, |l| (offset + l).min(meta.size));
            let (offset, end) = match partial {
                Some((origin, count)) => {
                    let start = (offset + u64::from(origin)).min(end);
                    (start, (start + u64::from(count.get())).min(end))
                }
                None => (offset, end),
            };
            if offset >= end { Octets::Empty } else { Octets::Range(range(offset, end - offset)) }
        }
        Source::Fields { offset, length, names, not } => {
            Octets::Fields { range: range(offset, length), names, not, partial }
        }
    })
}

/// One section of one message, read by itself (BINARY decoding).
pub(crate) async fn section_bytes<S: MailStore + ?Sized>(
    store: &S,
    account: i64,
    mailbox: i64,
    meta: &pb::MessageMeta,
    section: &Option<Section<'_>>,
    partial: Option<(u32, NonZeroU32)>,
) -> Result<Vec<u8>, ImapError> {
    let plan = plan_section(meta, section, partial)?;
    let raw = match plan.range() {
        Some(r) => {
            let req = pb::FetchRequest {
                account_id: account,
                mailbox_id: mailbox,
                uid: meta.uid,
                offset: r.offset,
                length: r.length,
            };
            store.fetch(req).await?
        }
        None => Vec::new(),
    };
    Ok(plan.finish(raw))
}

/// The octets each item of `items` needs, in item order (BINARY items
/// read their own: they are decoded per part).
fn plan_items(meta: &pb::MessageMeta, items: &[MessageDataItemName<'static>]) -> Result<Vec<Octets>, ImapError> {
    let mut plans = Vec::new();
    for item in items {
        let plan = match item {
            MessageDataItemName::BodyExt { section, partial, .. } => plan_section(meta, section, *partial)?,
            MessageDataItemName::Rfc822 => plan_section(meta, &None, None)?,
            MessageDataItemName::Rfc822Header => plan_section(meta, &Some(Section::Header(None)), None)?,
            MessageDataItemName::Rfc822Text => plan_section(meta, &Some(Section::Text(None)), None)?,
            _ => continue,
        };
        plans.push(plan);
    }
    Ok(plans)
}

/// An octet item that storage can answer by section, with no metadata
/// read first: the whole message, its header (also filtered by field
/// names) or its text (RFC 3501 §6.4.5).
enum DirectSection {
    Full,
    Header,
    Text,
    Fields { names: Vec<String>, not: bool },
}

fn direct_section(item: &MessageDataItemName<'static>) -> Option<(DirectSection, Option<(u32, NonZeroU32)>)> {
    let names = |list: &Vec1<imap_codec::imap_types::core::AString<'_>>| {
        list.as_ref().iter().map(|a| String::from_utf8_lossy(a.as_ref()).to_ascii_lowercase()).collect()
    };
    Some(match item {
        MessageDataItemName::BodyExt { section, partial, .. } => {
            let section = match section {
                None => DirectSection::Full,
                Some(Section::Header(None)) => DirectSection::Header,
                Some(Section::Text(None)) => DirectSection::Text,
                Some(Section::HeaderFields(None, list)) => DirectSection::Fields { names: names(list), not: false },
                Some(Section::HeaderFieldsNot(None, list)) => DirectSection::Fields { names: names(list), not: true },
                Some(_) => return None,
            };
            (section, *partial)
        }
        MessageDataItemName::Rfc822 => (DirectSection::Full, None),
        MessageDataItemName::Rfc822Header => (DirectSection::Header, None),
        MessageDataItemName::Rfc822Text => (DirectSection::Text, None),
        _ => return None,
    })
}

/// Whether a FETCH can skip reading metadata: UID (which the session
/// knows) and exactly one item of octets storage finds by itself. That is
/// what fetching new mail's header fields, or a whole message, looks like.
fn is_direct(items: &[MessageDataItemName<'static>]) -> bool {
    let octets = items.iter().filter(|i| direct_section(i).is_some()).count();
    octets == 1 && items.iter().all(|i| *i == MessageDataItemName::Uid || direct_section(i).is_some())
}

/// The plan of a direct FETCH (see `is_direct`): one range, by section.
fn plan_direct(uid: u32, items: &[MessageDataItemName<'static>]) -> Vec<Octets> {
    use pb::byte_range::Section as Whole;
    let range = |section: Whole, partial: Option<(u32, NonZeroU32)>| pb::ByteRange {
        uid,
        offset: partial.map_or(0, |(origin, _)| u64::from(origin)),
        length: partial.map(|(_, count)| u64::from(count.get())),
        section: section as i32,
    };
    items
        .iter()
        .filter_map(direct_section)
        .map(|(section, partial)| match section {
            DirectSection::Full => Octets::Range(range(Whole::Full, partial)),
            DirectSection::Header => Octets::Range(range(Whole::Header, partial)),
            DirectSection::Text => Octets::Range(range(Whole::Text, partial)),
            // The partial applies to the filtered octets (RFC 3501 §6.4.5).
            DirectSection::Fields { names, not } => {
                Octets::Fields { range: range(Whole::Header, None), names, not, partial }
            }
        })
        .collect()
}

/// The first chunk of range `index`; `None` when the message is gone.
async fn first_chunk(stream: &mut RangeStream, index: u32) -> Result<Option<pb::RangeChunk>, ImapError> {
    let chunk = stream.next().await.ok_or_else(|| StoreError::Unavailable("range stream ended early".into()))??;
    if chunk.index != index {
        return Err(StoreError::Unavailable(format!("range {} answered out of order", chunk.index)).into());
    }
    Ok((!chunk.missing).then_some(chunk))
}

/// The rest of a range whose first chunk is `first`, whole.
async fn rest_of_range(stream: &mut RangeStream, first: pb::RangeChunk) -> Result<Vec<u8>, ImapError> {
    if first.last {
        // One chunk, as most bodies come.
        return Ok(first.data.into());
    }
    let mut data: Vec<u8> = first.data.into();
    loop {
        let chunk = first_chunk(stream, first.index)
            .await?
            .ok_or_else(|| StoreError::Unavailable("range went missing midway".into()))?;
        data.extend_from_slice(&chunk.data);
        if chunk.last {
            return Ok(data);
        }
    }
}

/// The next range of a `fetch_ranges` answer, whole; `None` when the
/// message is gone.
pub(crate) async fn next_range(stream: &mut RangeStream, index: u32) -> Result<Option<Vec<u8>>, ImapError> {
    match first_chunk(stream, index).await? {
        Some(first) => Ok(Some(rest_of_range(stream, first).await?)),
        None => Ok(None),
    }
}

/// A message of a FETCH: its sequence number, whether it is \Recent to
/// this session, and its metadata.
type FetchJob<'a> = (u32, bool, &'a pb::MessageMeta);

/// Take the next batch off `pending`: its messages, each one's plan, and
/// the ranges one FetchRanges call reads for them (`None`: nothing left).
#[allow(clippy::type_complexity)]
fn next_batch<'j, 'a>(
    pending: &mut &'j [FetchJob<'a>],
    items: &[MessageDataItemName<'static>],
    direct: bool,
) -> Result<Option<(&'j [FetchJob<'a>], Vec<Vec<Octets>>, Vec<pb::ByteRange>)>, ImapError> {
    if pending.is_empty() {
        return Ok(None);
    }
    let mut plans = Vec::new();
    let mut ranges = Vec::new();
    for (_, _, meta) in pending.iter() {
        let plan = if direct { plan_direct(meta.uid, items) } else { plan_items(meta, items)? };
        let needed = plan.iter().filter(|o| o.range().is_some()).count();
        let full = plans.len() >= FETCH_BATCH_MESSAGES || ranges.len() + needed > FETCH_BATCH_RANGES;
        if full && !plans.is_empty() {
            break;
        }
        ranges.extend(plan.iter().filter_map(Octets::range).cloned());
        plans.push(plan);
    }
    let (batch, rest) = pending.split_at(plans.len());
    *pending = rest;
    Ok(Some((batch, plans, ranges)))
}

fn internal_date(meta: &pb::MessageMeta) -> Option<DateTime> {
    let ts = meta.internal_date.as_ref()?;
    let utc = chrono::DateTime::from_timestamp(ts.seconds, 0)?;
    DateTime::try_from(utc.fixed_offset()).ok()
}

/// The FETCH items of one message (RFC 3501 §7.4.2).
/// `octets` holds what `plan_items` planned, read, in item order.
#[allow(clippy::too_many_arguments)] // the message and the request's context
pub(crate) async fn message_items<S: MailStore>(
    store: &S,
    account_id: i64,
    mailbox_id: i64,
    meta: &pb::MessageMeta,
    items: &[MessageDataItemName<'static>],
    mut octets: std::vec::IntoIter<Vec<u8>>,
    recent: bool,
    seen_now: bool,
    condstore: bool,
) -> Result<Vec<MessageDataItem<'static>>, ImapError> {
    let mut data: Vec<MessageDataItem<'static>> = Vec::new();
    let mut next = || octets.next().unwrap_or_default();
    for item in items {
        data.push(match item {
            MessageDataItemName::Uid => MessageDataItem::Uid(NonZeroU32::new(meta.uid).unwrap_or(NonZeroU32::MIN)),
            MessageDataItemName::Flags => MessageDataItem::Flags(fetch_flags(&meta.flags, recent)),
            MessageDataItemName::ModSeq => {
                MessageDataItem::ModSeq(NonZeroU64::new(meta.modseq).unwrap_or(NonZeroU64::MIN))
            }
            MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(meta.size.min(u64::from(u32::MAX)) as u32),
            MessageDataItemName::InternalDate => match internal_date(meta) {
                Some(d) => MessageDataItem::InternalDate(d),
                None => continue,
            },
            MessageDataItemName::Envelope => {
                MessageDataItem::Envelope(envelope(meta.envelope.as_ref().unwrap_or(&pb::Envelope::default())))
            }
            MessageDataItemName::BodyExt { section, partial, .. } => MessageDataItem::BodyExt {
                section: section.clone(),
                origin: partial.map(|(o, _)| o),
                data: literal(next()),
            },
            MessageDataItemName::Rfc822 => MessageDataItem::Rfc822(literal(next())),
            MessageDataItemName::Rfc822Header => MessageDataItem::Rfc822Header(literal(next())),
            MessageDataItemName::Rfc822Text => MessageDataItem::Rfc822Text(literal(next())),
            MessageDataItemName::Body | MessageDataItemName::BodyStructure => {
                let Some(part) = meta.body_structure.as_ref() else {
                    return Err(ImapError::no(Some("UNAVAILABLE"), "Body structure not available"));
                };
                if *item == MessageDataItemName::Body {
                    MessageDataItem::Body(body_structure(part, false))
                } else {
                    MessageDataItem::BodyStructure(body_structure(part, true))
                }
            }
            // RFC 3516 / RFC 9051 §6.4.5, in cmd/binary.rs.
            binary if super::binary::is_binary(binary) => {
                super::binary::item(store, account_id, mailbox_id, meta, binary).await?
            }
            other => return Err(ImapError::bad(format!("FETCH item {other:?} is not supported"))),
        });
    }
    // RFC 3501 §6.4.5: a \Seen set by this fetch is reported.
    if seen_now && !items.contains(&MessageDataItemName::Flags) {
        data.push(MessageDataItem::Flags(fetch_flags(&meta.flags, recent)));
        if condstore && !items.contains(&MessageDataItemName::ModSeq) {
            data.push(MessageDataItem::ModSeq(NonZeroU64::new(meta.modseq).unwrap_or(NonZeroU64::MIN)));
        }
    }
    Ok(data)
}

pub async fn fetch<S: MailStore>(
    s: &mut Session<S>,
    set: SequenceSet,
    names: MacroOrMessageDataItemNames<'static>,
    uid: bool,
    modifiers: Vec<FetchModifier>,
    out: &mut Out,
) -> CmdResult {
    let store = s.store.clone();
    let mut changed_since = 0;
    let mut vanished = false;
    for m in &modifiers {
        match m {
            // RFC 7162 §3.1.4.1: only messages changed after this MODSEQ.
            FetchModifier::ChangedSince(n) => changed_since = n.get(),
            FetchModifier::Vanished => vanished = true,
        }
    }
    // RFC 7162 §3.2.6: VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC.
    if vanished && !(uid && changed_since > 0 && s.qresync) {
        return Err(ImapError::bad("VANISHED needs UID FETCH with CHANGEDSINCE after ENABLE QRESYNC"));
    }
    let mut items: Vec<MessageDataItemName<'static>> = match &names {
        MacroOrMessageDataItemNames::Macro(m) => {
            m.expand().into_iter().map(imap_codec::imap_types::IntoStatic::into_static).collect()
        }
        MacroOrMessageDataItemNames::MessageDataItemNames(list) => list.clone(),
    };
    // RFC 3501 §6.4.8: UID FETCH always returns the UID.
    if uid && !items.contains(&MessageDataItemName::Uid) {
        items.insert(0, MessageDataItemName::Uid);
    }
    // RFC 7162 §3.1.4: CHANGEDSINCE implies MODSEQ; both enable CONDSTORE.
    if changed_since > 0 && !items.contains(&MessageDataItemName::ModSeq) {
        items.push(MessageDataItemName::ModSeq);
    }
    if items.contains(&MessageDataItemName::ModSeq) {
        s.condstore = true;
    }
    let condstore = s.condstore;
    let (account, mailbox) = s.need_selected()?;
    if vanished {
        let req = pb::ChangesRequest {
            account_id: account.id,
            mailbox_id: mailbox.id,
            since_modseq: changed_since,
            include_vanished: true,
            claim_recent: false,
        };
        // RFC 7162 §3.2.6: only UIDs in the asked set (`*` = the highest UID).
        let asked = super::select::Ranges::new(&set, mailbox.uids.last().copied().unwrap_or(0));
        let gone: Vec<u32> = store.changes(req).await?.vanished.into_iter().filter(|u| asked.contains(*u)).collect();
        if let Some(known_uids) = sequence_set(&gone) {
            out.push(Response::Data(Data::Vanished { earlier: true, known_uids }));
        }
    }
    let targets = resolve(mailbox, &set, uid)?;
    if targets.is_empty() {
        return Done::ok("FETCH completed");
    }
    let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
    let with_envelope = items.contains(&MessageDataItemName::Envelope);
    // Part numbers are resolved with the MIME tree's offsets.
    let with_structure = items.iter().any(|i| match i {
        MessageDataItemName::BodyStructure | MessageDataItemName::Body => true,
        MessageDataItemName::BodyExt { section: Some(section), .. } => !matches!(
            section,
            Section::Header(None)
                | Section::Text(None)
                | Section::HeaderFields(None, _)
                | Section::HeaderFieldsNot(None, _)
        ),
        binary => super::binary::needs_structure(binary),
    });
    // RFC 3501 §6.4.5: BODY[...], RFC822 and RFC822.TEXT set \Seen.
    let sets_seen = !mailbox.read_only
        && items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::BodyExt { peek: false, .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Text
            ) || super::binary::sets_seen(i)
        });
    let list = |uids: &[u32]| pb::ListMessagesRequest {
        account_id: account.id,
        mailbox_id: mailbox.id,
        uids: uid_ranges(uids),
        with_envelope,
        with_body_structure: with_structure,
        changed_since,
    };
    let has_body = items.iter().any(|i| {
        matches!(
            i,
            MessageDataItemName::BodyExt { .. }
                | MessageDataItemName::Rfc822
                | MessageDataItemName::Rfc822Header
                | MessageDataItemName::Rfc822Text
        ) || super::binary::is_binary(i)
    });
    // Metadata is read only when an item needs it: a FETCH of a whole
    // message or of header fields by UID goes straight to the octets.
    let direct = !sets_seen && changed_since == 0 && is_direct(&items);
    let mut metas = if direct {
        uids.iter().map(|&uid| pb::MessageMeta { uid, ..Default::default() }).collect()
    } else {
        store.list_messages(list(&uids)).await?
    };
    let mut seen_now: BTreeSet<u32> = BTreeSet::new();
    if sets_seen {
        let unseen: Vec<u32> = metas.iter().filter(|m| !m.flags.iter().any(|f| f == "\\Seen")).map(|m| m.uid).collect();
        if !unseen.is_empty() {
            let req = pb::StoreFlagsRequest {
                account_id: account.id,
                mailbox_id: mailbox.id,
                uids: uid_ranges(&unseen),
                operation: pb::store_flags_request::Operation::Add as i32,
                flags: vec!["\\Seen".into()],
                unchanged_since: None,
            };
            let stored = store.store_flags(req).await?;
            // Reported with this FETCH (RFC 3501 §6.4.5), not again by the sync.
            mailbox.own_changes.extend(stored.updated.iter().map(|m| (m.uid, m.modseq)));
            for m in metas.iter_mut().filter(|m| unseen.contains(&m.uid)) {
                m.flags.push("\\Seen".into());
                if let Some(u) = stored.updated.iter().find(|u| u.uid == m.uid) {
                    m.modseq = u.modseq;
                }
                seen_now.insert(m.uid);
            }
        }
    }
    if items.contains(&MessageDataItemName::Flags) {
        super::select::announce_keywords(mailbox, metas.iter().flat_map(|m| &m.flags), out);
    }
    // UIDs expunged elsewhere are skipped (RFC 2180 §4.1.2).
    let jobs: Vec<FetchJob> =
        metas.iter().filter_map(|m| Some((mailbox.seq_of(m.uid)?, mailbox.recent.contains(&m.uid), m))).collect();
    let (account_id, mailbox_id, items) = (account.id, mailbox.id, &items);
    // Bodies are read in batches: one FetchRanges call streams the octets
    // of many messages, in order, while the responses go out. The call for
    // the next batch is made before this one is sent, so storage reads it
    // meanwhile and the client never waits for a batch to start.
    let open = |ranges: Vec<pb::ByteRange>| async {
        if ranges.is_empty() {
            Ok::<_, ImapError>(None)
        } else {
            Ok(Some(store.fetch_ranges(pb::FetchRangesRequest { account_id, mailbox_id, ranges }).await?))
        }
    };
    let mut pending = jobs.as_slice();
    let mut current = match next_batch(&mut pending, items, direct)? {
        Some((batch, plans, ranges)) => Some((batch, plans, open(ranges).await?)),
        None => None,
    };
    while let Some((batch, plans, mut stream)) = current.take() {
        current = match next_batch(&mut pending, items, direct)? {
            Some((batch, plans, ranges)) => Some((batch, plans, open(ranges).await?)),
            None => None,
        };
        let mut index = 0u32;
        for ((seq, recent, meta), plan) in batch.iter().zip(plans) {
            let seen = seen_now.contains(&meta.uid);
            // A direct FETCH learns the size from the range's first chunk
            // (which also tells whether the message is still there).
            let mut first = None;
            let big = match stream.as_mut() {
                Some(stream) if direct => match first_chunk(stream, index).await? {
                    // Expunged meanwhile: skipped like the others.
                    None => {
                        index += 1;
                        continue;
                    }
                    Some(chunk) => {
                        let big = !chunk.last
                            && chunk.size > super::fetch_stream::STREAM_OVER
                            && matches!(plan.first(), Some(Octets::Range(_)));
                        first = Some(chunk);
                        big
                    }
                },
                Some(_) => super::fetch_stream::wants_streaming(&plan) && !items.iter().any(super::binary::is_binary),
                None => false,
            };
            if big && let Some(stream) = stream.as_mut() {
                let m = super::fetch_stream::Message {
                    seq: *seq,
                    meta,
                    account_id,
                    mailbox_id,
                    recent: *recent,
                    seen_now: seen,
                    condstore,
                };
                super::fetch_stream::send(&*store, m, items, plan, stream, &mut index, first, out).await?;
                if !out.flush(true).await {
                    return Err(ImapError::bad("Client went away"));
                }
                continue;
            }
            let mut octets = Vec::with_capacity(plan.len());
            let mut gone = false;
            for octet in plan {
                let raw = match (octet.range(), stream.as_mut()) {
                    (Some(_), Some(stream)) => {
                        let got = match first.take() {
                            Some(chunk) => Some(rest_of_range(stream, chunk).await?),
                            None => next_range(stream, index).await?,
                        };
                        index += 1;
                        got.unwrap_or_else(|| {
                            gone = true;
                            Vec::new()
                        })
                    }
                    _ => Vec::new(),
                };
                octets.push(octet.finish(raw));
            }
            // Expunged since ListMessages: skipped like the others.
            if gone {
                continue;
            }
            let body_octets: usize = octets.iter().map(Vec::len).sum();
            let data = message_items(
                &*store,
                account_id,
                mailbox_id,
                meta,
                items,
                octets.into_iter(),
                *recent,
                seen,
                condstore,
            )
            .await?;
            // A partial BINARY item needs its <origin> (cmd/binary.rs).
            super::binary::push_fetch(out, *seq, data, items);
            // Output goes to the client in chunks of many responses, or of
            // enough body octets.
            let sent = if has_body { out.flush_after_body(body_octets).await } else { out.flush(false).await };
            if !sent {
                return Err(ImapError::bad("Client went away"));
            }
        }
    }
    Done::ok("FETCH completed")
}
