//! FETCH BINARY[…], BINARY.PEEK[…] and BINARY.SIZE[…] (RFC 3516, RFC 9051
//! §6.4.5): a part's content with its Content-Transfer-Encoding removed.
//! Storage keeps each part's offsets and encoding (storage.proto
//! `BodyPart`), so only the part itself is read, then decoded here.

use std::num::NonZeroU32;

use base64::Engine;
use imap_codec::imap_types::core::{IString, Literal, LiteralMode, NString, NString8, Vec1};
use imap_codec::imap_types::extensions::binary::Literal8;
use imap_codec::imap_types::fetch::{MessageDataItem, MessageDataItemName, Part, Section};
use mailfleet_proto::storage::v1 as pb;

use imap_codec::imap_types::response::{Data, Response};

use super::fetch::{find_part, section_bytes};
use crate::codec;
use crate::session::{ImapError, Out};
use crate::store::MailStore;

/// A BINARY item (RFC 3516 §4.2).
pub fn is_binary(item: &MessageDataItemName<'_>) -> bool {
    matches!(item, MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. })
}

/// Part numbers are resolved with the MIME tree (BINARY[] is the whole message).
pub fn needs_structure(item: &MessageDataItemName<'_>) -> bool {
    match item {
        MessageDataItemName::Binary { section, .. } | MessageDataItemName::BinarySize { section } => {
            !section.is_empty()
        }
        _ => false,
    }
}

/// RFC 3516 §4.2: BINARY sets \Seen like BODY; BINARY.PEEK and BINARY.SIZE do not.
pub fn sets_seen(item: &MessageDataItemName<'_>) -> bool {
    matches!(item, MessageDataItemName::Binary { peek: false, .. })
}

/// The FETCH data for one BINARY item of one message.
pub async fn item<S: MailStore + ?Sized>(
    store: &S,
    account: i64,
    mailbox: i64,
    meta: &pb::MessageMeta,
    item: &MessageDataItemName<'static>,
) -> Result<MessageDataItem<'static>, ImapError> {
    match item {
        MessageDataItemName::Binary { section, partial, .. } => {
            let mut data = decoded(store, account, mailbox, meta, section).await?;
            // RFC 3516 §4.2: <origin.octets> counts decoded octets.
            if let Some((origin, count)) = partial {
                let start = (*origin as usize).min(data.len());
                let end = start.saturating_add(count.get() as usize).min(data.len());
                data = data[start..end].to_vec();
            }
            Ok(MessageDataItem::Binary { section: section.clone(), value: nstring8(data) })
        }
        MessageDataItemName::BinarySize { section } => {
            let size = match known_size(meta, section) {
                Some(size) => size,
                None => decoded(store, account, mailbox, meta, section).await?.len() as u64,
            };
            Ok(MessageDataItem::BinarySize { section: section.clone(), size: u32::try_from(size).unwrap_or(u32::MAX) })
        }
        _ => Err(ImapError::bad("not a BINARY item")),
    }
}

/// Queue one FETCH response. imap-types has no origin for BINARY data, but
/// a partial BINARY answer carries one (RFC 9051 §7.5.2: `"BINARY"
/// section-binary ["<" number ">"]`): such a response is formatted here,
/// item by item, with `<origin>` after the section.
pub fn push_fetch(
    out: &mut Out,
    seq: u32,
    data: Vec<MessageDataItem<'static>>,
    names: &[MessageDataItemName<'static>],
) {
    // The origin of each BINARY item in `data`, matched to the requested
    // items in order by section.
    let mut partials: Vec<(&Vec<NonZeroU32>, u32)> = names
        .iter()
        .filter_map(|n| match n {
            MessageDataItemName::Binary { section, partial: Some((origin, _)), .. } => Some((section, *origin)),
            _ => None,
        })
        .collect();
    if partials.is_empty() {
        if let Ok(d) = Data::fetch(seq, data) {
            out.push(Response::Data(d));
        }
        return;
    }
    let prefix = format!("* {seq} FETCH (");
    let mut line = prefix.clone().into_bytes();
    for item in data {
        let origin = match &item {
            MessageDataItem::Binary { section, .. } => {
                partials.iter().position(|(s, _)| *s == section).map(|at| partials.remove(at).1)
            }
            _ => None,
        };
        let Ok(one) = Data::fetch(seq, vec![item]) else { continue };
        let bytes = codec::encode(&Response::Data(one));
        // `* seq FETCH (` item `)\r\n`
        let Some(mut body) = bytes.get(prefix.len()..bytes.len().saturating_sub(3)).map(<[u8]>::to_vec) else {
            continue;
        };
        if let Some(origin) = origin
            && let Some(close) = body.iter().position(|b| *b == b']')
        {
            body.splice(close + 1..close + 1, format!("<{origin}>").into_bytes());
        }
        if line.len() > prefix.len() {
            line.push(b' ');
        }
        line.extend(body);
    }
    line.extend_from_slice(b")\r\n");
    out.push_raw(line);
}

/// The decoded size without reading the part, when nothing needs decoding:
/// the whole message (BINARY[]), or a 7bit/8bit/binary part whose length
/// storage recorded.
fn known_size(meta: &pb::MessageMeta, section: &[NonZeroU32]) -> Option<u64> {
    if section.is_empty() {
        return Some(meta.size);
    }
    let part = find_part(meta.body_structure.as_ref()?, section)?;
    let identity = matches!(part.encoding.to_ascii_lowercase().as_str(), "" | "7bit" | "8bit" | "binary")
        || part.media_type == "multipart"
        || part.media_type == "message";
    identity.then_some(part.body_length)
}

/// A literal, or a literal8 when the data holds NUL (RFC 3516 §4.2).
fn nstring8(data: Vec<u8>) -> NString8<'static> {
    if data.contains(&0) {
        NString8::Literal8(Literal8 { data: data.into(), mode: LiteralMode::Sync })
    } else {
        match Literal::try_from(data) {
            Ok(l) => NString8::NString(NString(Some(IString::Literal(l)))),
            Err(_) => NString8::NString(NString(None)),
        }
    }
}

async fn decoded<S: MailStore + ?Sized>(
    store: &S,
    account: i64,
    mailbox: i64,
    meta: &pb::MessageMeta,
    section: &[NonZeroU32],
) -> Result<Vec<u8>, ImapError> {
    let Ok(path) = Vec1::try_from(section.to_vec()) else {
        // BINARY[]: the whole message as stored (its top-level encoding
        // belongs to part 1).
        return section_bytes(store, account, mailbox, meta, &None, None).await;
    };
    let encoding = match meta.body_structure.as_ref() {
        Some(top) => {
            let part = find_part(top, section).ok_or_else(|| ImapError::no(None, "No such body part"))?;
            // A multipart or message/rfc822 body is 7bit/8bit/binary by
            // definition (RFC 2045 §6.4): nothing to decode.
            if part.media_type == "multipart" || part.media_type == "message" {
                String::new()
            } else {
                part.encoding.clone()
            }
        }
        // No MIME tree (a store without one): only a single-part message.
        None => {
            let header = section_bytes(store, account, mailbox, meta, &Some(Section::Header(None)), None).await?;
            header_encoding(&header)
        }
    };
    let raw = section_bytes(store, account, mailbox, meta, &Some(Section::Part(Part(path))), None).await?;
    decode(&encoding, &raw)
}

/// Content-Transfer-Encoding of a header block ("" when absent).
fn header_encoding(header: &[u8]) -> String {
    let mut value: Option<String> = None;
    for line in header.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((name, rest)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-transfer-encoding")
        {
            value = Some(rest.trim().to_string());
        }
    }
    value.unwrap_or_default()
}

/// Undo a Content-Transfer-Encoding (RFC 2045 §6). Unknown encodings are
/// `NO [UNKNOWN-CTE]` (RFC 3516 §4.3).
pub fn decode(encoding: &str, raw: &[u8]) -> Result<Vec<u8>, ImapError> {
    match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "7bit" | "8bit" | "binary" => Ok(raw.to_vec()),
        "base64" => Ok(decode_base64(raw)),
        "quoted-printable" => Ok(decode_qp(raw)),
        other => Err(ImapError::no(Some("UNKNOWN-CTE"), format!("Cannot decode {other}"))),
    }
}

/// RFC 2045 §6.8: characters outside the alphabet are ignored; decoding
/// stops at the first "=" padding.
fn decode_base64(raw: &[u8]) -> Vec<u8> {
    let mut clean: Vec<u8> = raw
        .iter()
        .copied()
        .take_while(|b| *b != b'=')
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    // A lone trailing sextet carries no whole octet.
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(&clean).unwrap_or_default()
}

/// RFC 2045 §6.7: "=XX" is an octet, "=" at the end of a line is a soft
/// line break, trailing white space on a line is dropped; anything else
/// (a stray "=") is kept as it is.
fn decode_qp(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut lines = raw.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut end = line.len();
        while end > 0 && matches!(line[end - 1], b' ' | b'\t') {
            end -= 1;
        }
        let line = &line[..end];
        let (body, soft) = match line.strip_suffix(b"=") {
            Some(b) => (b, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < body.len() {
            if body[i] == b'='
                && let (Some(h), Some(l)) =
                    (body.get(i + 1).and_then(|b| hex(*b)), body.get(i + 2).and_then(|b| hex(*b)))
            {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            out.push(body[i]);
            i += 1;
        }
        if !soft && !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_with_line_breaks_and_junk() {
        assert_eq!(decode("BASE64", b"aGVs\r\nbG8g\r\nd29y bGQ=\r\n").expect("ok"), b"hello world");
        assert_eq!(decode("base64", b"AAEC/w==").expect("ok"), [0, 1, 2, 255]);
        assert_eq!(decode("base64", b"!!!").expect("ok"), b"");
    }

    #[test]
    fn quoted_printable() {
        let raw = b"Gr=C3=BC=C3=9Fe   \r\nsoft=\r\nbreak=3D=\r\n\r\nend =XY=";
        assert_eq!(decode("Quoted-Printable", raw).expect("ok"), "Grüße\r\nsoftbreak=\r\nend =XY".as_bytes());
    }

    #[test]
    fn identity_and_unknown() {
        assert_eq!(decode("8bit", b"a\r\nb").expect("ok"), b"a\r\nb");
        assert!(matches!(decode("x-uuencode", b""), Err(ImapError::No(..))));
    }

    #[test]
    fn size_without_reading_when_nothing_to_decode() {
        let part = |encoding: &str, len: u64| pb::BodyPart {
            media_type: "text".into(),
            media_subtype: "plain".into(),
            encoding: encoding.into(),
            body_length: len,
            ..Default::default()
        };
        let top = pb::BodyPart {
            media_type: "multipart".into(),
            media_subtype: "mixed".into(),
            parts: vec![part("7BIT", 10), part("BASE64", 20)],
            ..Default::default()
        };
        let meta = pb::MessageMeta { size: 99, body_structure: Some(top), ..Default::default() };
        let n = |v: u32| NonZeroU32::new(v).expect("non-zero");
        assert_eq!(known_size(&meta, &[]), Some(99));
        assert_eq!(known_size(&meta, &[n(1)]), Some(10));
        assert_eq!(known_size(&meta, &[n(2)]), None);
        assert_eq!(known_size(&meta, &[n(3)]), None);
    }

    #[test]
    fn header_cte() {
        let h = b"Subject: x\r\nContent-Transfer-Encoding:\r\n base64\r\nX: y\r\n\r\n";
        assert_eq!(header_encoding(h), "base64");
        assert_eq!(header_encoding(b"Subject: x\r\n\r\n"), "");
    }
}
