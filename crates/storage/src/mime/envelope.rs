//! IMAP ENVELOPE (RFC 3501 §7.4.2, RFC 9051 §7.5.2) from a header block.

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;
use mailfleet_proto::storage::v1 as pb;

use super::address::parse_address_list;
use super::header::{HeaderBlock, raw_value, unfold};

/// Builds the envelope from the raw header fields. Strings are the raw
/// (unfolded) field bodies with encoded words kept; absent or empty fields
/// are NIL. When several fields have the same name the first one counts.
pub(crate) fn envelope(header: &HeaderBlock<'_>) -> pb::Envelope {
    let addresses = |name: &str| header.first(name).map(|f| parse_address_list(&unfold(f.value))).unwrap_or_default();
    let from = addresses("from");
    let mut sender = addresses("sender");
    let mut reply_to = addresses("reply-to");
    // RFC 3501 §7.4.2: "If the Sender or Reply-To lines are absent in the
    // [RFC-2822] header, or are present but empty, the server sets the
    // corresponding member of the envelope to be the same value as the from
    // member."
    if sender.is_empty() {
        sender = from.clone();
    }
    if reply_to.is_empty() {
        reply_to = from.clone();
    }
    pb::Envelope {
        date: raw_value(header.first("date")),
        subject: raw_value(header.first("subject")),
        from,
        sender,
        reply_to,
        to: addresses("to"),
        cc: addresses("cc"),
        bcc: addresses("bcc"),
        in_reply_to: raw_value(header.first("in-reply-to")),
        message_id: raw_value(header.first("message-id")),
    }
}

/// The calendar date of the Date: field as written, ignoring time and zone:
/// RFC 3501 §6.4.4 SENTBEFORE/SENTON/SENTSINCE compare "disregarding time
/// and timezone". RFC 5322 §3.3 syntax, leniently (obsolete forms included).
pub(crate) fn sent_date(header: &HeaderBlock<'_>) -> Option<time::Date> {
    let mut value = unfold(header.first("date")?.value);
    // mail-parser's field parsers read up to the end of the field's line.
    value.push(b'\n');
    match MessageStream::new(&value).parse_date() {
        HeaderValue::DateTime(dt) => {
            time::Date::from_calendar_date(i32::from(dt.year), time::Month::try_from(dt.month).ok()?, dt.day).ok()
        }
        _ => None,
    }
}
