//! A FETCH response whose body is too big to hold (an attachment of tens of
//! megabytes): written item by item, the big literal as its octets arrive
//! from storage, so a connection never holds more than a chunk of it.
//! RFC 3501 §4.3: a literal is `{octets}` CRLF and then exactly that many
//! octets; storage's ranges are exact, so the count is known beforehand.

use imap_codec::imap_types::fetch::{MessageDataItem, MessageDataItemName};
use imap_codec::imap_types::response::{Data, Response};
use mailfleet_proto::storage::v1 as pb;

use futures::StreamExt;

use super::fetch::{Octets, next_range};
use crate::codec;
use crate::session::{ImapError, Out};
use crate::store::{MailStore, RangeStream, StoreError};

/// Bodies larger than this are streamed rather than held whole.
pub(crate) const STREAM_OVER: u64 = 1024 * 1024;

/// Whether the planned octets of one message are to be streamed: exactly
/// one plain range above the threshold (several big ones are rare enough
/// to be held).
pub(crate) fn wants_streaming(plans: &[Octets]) -> bool {
    plans.iter().filter(|p| matches!(p, Octets::Range(r) if r.length.unwrap_or(u64::MAX) > STREAM_OVER)).count() == 1
}

/// Items that carry message octets, in the order `plan_items` plans them.
fn carries_octets(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Header
            | MessageDataItemName::Rfc822Text
    )
}

/// One item as it appears inside `* n FETCH (...)`.
fn encode_item(seq: u32, item: MessageDataItem<'static>) -> Vec<u8> {
    let prefix = format!("* {seq} FETCH (");
    let Ok(data) = Data::fetch(seq, vec![item]) else { return Vec::new() };
    let bytes = codec::encode(&Response::Data(data));
    bytes.get(prefix.len()..bytes.len().saturating_sub(3)).map(<[u8]>::to_vec).unwrap_or_default()
}

/// What precedes a literal: the item's name (`BODY[1.2]<0>`, `RFC822`, …),
/// taken from the codec's own formatting of the item with NIL data.
fn literal_name(seq: u32, item: &MessageDataItemName<'static>) -> Vec<u8> {
    let empty = imap_codec::imap_types::core::NString(None);
    let placeholder = match item {
        MessageDataItemName::BodyExt { section, partial, .. } => {
            MessageDataItem::BodyExt { section: section.clone(), origin: partial.map(|(o, _)| o), data: empty }
        }
        MessageDataItemName::Rfc822Text => MessageDataItem::Rfc822Text(empty),
        MessageDataItemName::Rfc822Header => MessageDataItem::Rfc822Header(empty),
        _ => MessageDataItem::Rfc822(empty),
    };
    let mut name = encode_item(seq, placeholder);
    name.truncate(name.len().saturating_sub(" NIL".len()));
    name
}

/// Read past the remaining ranges of a message that turned out to be gone
/// (each answered `missing`), so the next message's ranges line up.
async fn skip_rest(
    plans: impl Iterator<Item = Octets>,
    stream: &mut RangeStream,
    index: &mut u32,
) -> Result<(), ImapError> {
    for plan in plans {
        if plan.range().is_some() {
            next_range(stream, *index).await?;
            *index += 1;
        }
    }
    Ok(())
}

/// The request context one message's items need (see `fetch::message_items`).
pub(crate) struct Message<'a> {
    pub seq: u32,
    pub meta: &'a pb::MessageMeta,
    pub account_id: i64,
    pub mailbox_id: i64,
    pub recent: bool,
    pub seen_now: bool,
    pub condstore: bool,
}

impl Message<'_> {
    /// One item of this message in wire form (without the `* n FETCH (`
    /// frame), from the octets its plan read (none for metadata items).
    async fn encode_one<S: MailStore>(
        &self,
        store: &S,
        item: &MessageDataItemName<'static>,
        octets: Vec<Vec<u8>>,
    ) -> Result<Vec<u8>, ImapError> {
        let data = super::fetch::message_items(
            store,
            self.account_id,
            self.mailbox_id,
            self.meta,
            std::slice::from_ref(item),
            octets.into_iter(),
            self.recent,
            false,
            self.condstore,
        )
        .await?;
        Ok(data.into_iter().flat_map(|d| encode_item(self.seq, d)).collect())
    }
}

/// Write the FETCH response of `m`, reading its ranges from `stream`
/// (`index` is the next range's index) and streaming the big one.
/// `Ok(false)`: the message was expunged meanwhile and is skipped.
///
/// `first`: the big range's first chunk, already read, whose `size`
/// announces the literal (a FETCH planned without metadata, where the plan
/// does not know the length).
#[allow(clippy::too_many_arguments)] // the message, its plan and the stream's position
pub(crate) async fn send<S: MailStore>(
    store: &S,
    m: Message<'_>,
    items: &[MessageDataItemName<'static>],
    plans: Vec<Octets>,
    stream: &mut RangeStream,
    index: &mut u32,
    mut first: Option<pb::RangeChunk>,
    out: &mut Out,
) -> Result<bool, ImapError> {
    let mut line = format!("* {} FETCH (", m.seq).into_bytes();
    let mut plans = plans.into_iter();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        if !carries_octets(item) {
            line.extend(m.encode_one(store, item, Vec::new()).await?);
            continue;
        }
        let plan = plans.next().ok_or_else(|| ImapError::bad("FETCH plan does not match its items"))?;
        let length = match (&plan, &first) {
            (Octets::Range(_), Some(chunk)) => chunk.size,
            (Octets::Range(r), None) if r.length.unwrap_or(u64::MAX) > STREAM_OVER => r.length.unwrap_or(0),
            _ => {
                let raw = match plan.range() {
                    Some(_) => {
                        let got = next_range(stream, *index).await?;
                        *index += 1;
                        match got {
                            Some(raw) => raw,
                            None => {
                                skip_rest(plans, stream, index).await?;
                                return Ok(false);
                            }
                        }
                    }
                    None => Vec::new(),
                };
                line.extend(m.encode_one(store, item, vec![plan.finish(raw)]).await?);
                continue;
            }
        };
        // The big one: name, count, then the octets as they come. A message
        // expunged meanwhile answers with one `missing` chunk: skipped.
        let mut next = match first.take() {
            Some(chunk) => Some(Ok(chunk)),
            None => stream.next().await,
        };
        if let Some(Ok(chunk)) = &next
            && chunk.index == *index
            && chunk.missing
        {
            *index += 1;
            skip_rest(plans, stream, index).await?;
            return Ok(false);
        }
        line.extend(literal_name(m.seq, item));
        line.extend(format!(" {{{length}}}\r\n").into_bytes());
        out.push_raw(std::mem::take(&mut line));
        let mut sent = 0u64;
        let failure = loop {
            let chunk = match next.take() {
                Some(Ok(chunk)) if chunk.index == *index && !chunk.missing => chunk,
                Some(Ok(chunk)) => break Some(format!("range {} answered out of order", chunk.index)),
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("range stream ended early".to_string()),
            };
            let mut data: Vec<u8> = chunk.data.into();
            // RFC 3501 §4.3: no NUL in a literal (as `fetch::literal`).
            for b in data.iter_mut().filter(|b| **b == 0) {
                *b = b' ';
            }
            let too_many = sent + data.len() as u64 > length;
            data.truncate((length - sent) as usize);
            sent += data.len() as u64;
            out.push_raw(data);
            if !out.flush(true).await {
                return Err(ImapError::bad("Client went away"));
            }
            if too_many {
                break Some(format!("literal of {length} octets got more"));
            }
            if chunk.last {
                break (sent != length).then(|| format!("literal of {length} octets got {sent}"));
            }
            next = stream.next().await;
        };
        *index += 1;
        if let Some(why) = failure {
            // The count is on the wire: keep the protocol in step with
            // filler octets, end the response, and fail the command, so the
            // client knows the data is not to be used (NO [UNAVAILABLE]).
            let mut left = length.saturating_sub(sent);
            while left > 0 {
                let n = left.min(64 * 1024);
                out.push_raw(vec![b' '; n as usize]);
                out.flush(true).await;
                left -= n;
            }
            out.push_raw(b")\r\n".to_vec());
            return Err(StoreError::Unavailable(why).into());
        }
    }
    // RFC 3501 §6.4.5: a \Seen set by this fetch is reported.
    if m.seen_now && !items.contains(&MessageDataItemName::Flags) {
        let mut extra = vec![MessageDataItemName::Flags];
        if m.condstore && !items.contains(&MessageDataItemName::ModSeq) {
            extra.push(MessageDataItemName::ModSeq);
        }
        let data = super::fetch::message_items(
            store,
            m.account_id,
            m.mailbox_id,
            m.meta,
            &extra,
            Vec::new().into_iter(),
            m.recent,
            false,
            m.condstore,
        )
        .await?;
        for d in data {
            line.push(b' ');
            line.extend(encode_item(m.seq, d));
        }
    }
    line.extend_from_slice(b")\r\n");
    out.push_raw(line);
    Ok(true)
}
