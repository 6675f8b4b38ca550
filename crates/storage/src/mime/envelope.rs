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
/// and timezone".
pub(crate) fn sent_date(header: &HeaderBlock<'_>) -> Option<time::Date> {
    let value = unfold(header.first("date")?.value);
    date_part(&value).or_else(|| {
        // Unusual layouts: let mail-parser's lenient parser try.
        let mut value = value;
        value.push(b'\n');
        match MessageStream::new(&value).parse_date() {
            HeaderValue::DateTime(dt) => {
                time::Date::from_calendar_date(i32::from(dt.year), time::Month::try_from(dt.month).ok()?, dt.day).ok()
            }
            _ => None,
        }
    })
}

/// RFC 5322 §3.3 `[day-of-week ","] day month year ...`, with comments
/// ignored and §4.3 obsolete years (2 digits: < 50 → 20xx, else 19xx;
/// 3 digits: + 1900). The time of day, which may lack seconds, is not needed.
fn date_part(value: &[u8]) -> Option<time::Date> {
    let mut clean = Vec::with_capacity(value.len());
    let mut depth = 0usize;
    for &b in value {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => clean.push(if b == b',' { b' ' } else { b }),
            _ => {}
        }
    }
    let mut words = clean.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).peekable();
    if words.peek().is_some_and(|w| w.iter().all(u8::is_ascii_alphabetic)) {
        words.next(); // day-of-week
    }
    let number = |w: &[u8]| -> Option<i32> {
        (!w.is_empty() && w.len() <= 4 && w.iter().all(u8::is_ascii_digit))
            .then(|| w.iter().fold(0i32, |n, d| n * 10 + i32::from(d - b'0')))
    };
    let day = u8::try_from(number(words.next()?)?).ok()?;
    let month = words.next()?;
    const MONTHS: [&[u8]; 12] =
        [b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"];
    let month = MONTHS.iter().position(|m| month.len() >= 3 && month[..3].eq_ignore_ascii_case(m))?;
    let year_word = words.next()?;
    let mut year = number(year_word)?;
    match year_word.len() {
        2 if year < 50 => year += 2000,
        2 | 3 => year += 1900,
        _ => {}
    }
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    time::Date::from_calendar_date(year, month, day).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mime::header::split_header;

    fn sent(value: &str) -> Option<String> {
        let raw = format!("Date: {value}\r\n\r\n");
        sent_date(&split_header(raw.as_bytes())).map(|d| d.to_string())
    }

    #[test]
    fn date_as_written() {
        assert_eq!(sent("Tue, 2 Jan 2024 23:30:00 -0500").as_deref(), Some("2024-01-02"));
        assert_eq!(sent("2 Jan 24 10:00 GMT").as_deref(), Some("2024-01-02"), "no seconds, 2-digit year");
        assert_eq!(sent("Sat, 2 Jan 99 10:00:00 +0000").as_deref(), Some("1999-01-02"));
        assert_eq!(sent("(comment) Thu,\r\n 29 Feb 2024 23:59:60 -1200").as_deref(), Some("2024-02-29"));
        assert_eq!(sent("1 January 2024 10:00").as_deref(), Some("2024-01-01"));
        assert_eq!(sent("Mon, 31 Feb 2024 10:00 +0000"), None);
        assert_eq!(sent("garbage"), None);
        assert_eq!(sent(""), None);
    }
}
