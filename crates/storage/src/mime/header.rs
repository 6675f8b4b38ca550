//! Header blocks: splitting a header section into fields with their raw
//! values, unfolding, and RFC 2047 decoding for search text.
//!
//! Everything here works on byte slices of the stored message and records
//! offsets, because IMAP serves `BODY[...HEADER]` and `BODY[...MIME]` as
//! byte ranges of the original octets (RFC 3501 §6.4.5).

use mail_parser::parsers::MessageStream;

/// One header field as it appears in the message (RFC 5322 §2.2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field<'a> {
    /// The field name as written, without the colon and trailing WSP.
    pub name: &'a [u8],
    /// The raw field body: everything after the colon up to (not including)
    /// the line ending of its last line, folding included.
    pub value: &'a [u8],
}

impl Field<'_> {
    pub(crate) fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// A header section (of the message or of a MIME part).
#[derive(Debug, Default)]
pub(crate) struct HeaderBlock<'a> {
    pub fields: Vec<Field<'a>>,
    /// Octets of the header section including the empty line that ends it
    /// (RFC 5322 §2.1). Equals the input length when there is no empty line:
    /// then everything is header and the body is empty.
    pub len: usize,
}

impl<'a> HeaderBlock<'a> {
    /// The first field named `name` (case-insensitive, RFC 5322 §1.2.2).
    pub(crate) fn first(&self, name: &str) -> Option<&Field<'a>> {
        self.fields.iter().find(|f| f.is(name))
    }
}

/// Splits `data` into header fields, stopping after the first empty line.
///
/// RFC 5322 §2.2: a field is `name ":" body CRLF`, and a line starting with
/// WSP continues the previous field (folding, §2.2.3). Both CRLF and bare LF
/// line endings are accepted. Lines that are neither a field nor a
/// continuation (e.g. an mbox `From ` line) are skipped. The name must be
/// non-empty printable ASCII without WSP (§3.6.8 `ftext`), tolerating WSP
/// before the colon (§4.5.8 obsolete syntax).
pub(crate) fn split_header(data: &[u8]) -> HeaderBlock<'_> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut pos = 0;
    // Where the last field's value starts, while continuation lines may
    // still extend it.
    let mut open: Option<usize> = None;
    while pos < data.len() {
        let line_end = data[pos..].iter().position(|&b| b == b'\n').map_or(data.len(), |i| pos + i + 1);
        let line = &data[pos..line_end];
        let content = strip_eol(line);
        if content.is_empty() && line_end > pos && line.last() == Some(&b'\n') {
            // The empty line ending the header section (CRLF or LF alone).
            return HeaderBlock { fields, len: line_end };
        }
        if matches!(content.first(), Some(b' ' | b'\t')) {
            if let (Some(start), Some(last)) = (open, fields.last_mut()) {
                last.value = &data[start..pos + content.len()];
            }
        } else if let Some(colon) = content.iter().position(|&b| b == b':') {
            let name = trim_end_wsp(&content[..colon]);
            if !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b)) {
                let start = pos + colon + 1;
                fields.push(Field { name, value: &data[start..pos + content.len()] });
                open = Some(start);
            } else {
                open = None;
            }
        } else {
            open = None;
        }
        pos = line_end;
    }
    HeaderBlock { fields, len: data.len() }
}

/// `line` without its trailing LF or CRLF.
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_end_wsp(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |i| i + 1);
    &s[..end]
}

/// Unfolds a raw field body (RFC 5322 §2.2.3: remove every CRLF that is
/// followed by WSP; bare LF is treated like CRLF) and trims surrounding
/// whitespace. Other bytes are kept exactly, encoded words included.
pub(crate) fn unfold(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'\r' if value.get(i + 1) == Some(&b'\n') => i += 1,
            b'\n' | b'\r' => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let start = out.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(out.len());
    let end = out.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    out.truncate(end);
    out.drain(..start);
    out
}

/// Bytes to a string without loss of the common cases: UTF-8 when valid
/// (RFC 6532 headers), otherwise each byte as its ISO-8859-1 character, so
/// that raw 8-bit headers still produce readable, stable text.
pub(crate) fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

/// The unfolded, trimmed raw value as a string; `None` when empty.
pub(crate) fn raw_value(field: Option<&Field<'_>>) -> Option<String> {
    let value = unfold(field?.value);
    (!value.is_empty()).then(|| text(&value))
}

/// Decodes RFC 2047 encoded words in unstructured text (§6.2: whitespace
/// between two adjacent encoded words is dropped). Words that do not decode
/// are kept as written.
pub(crate) fn decode_words(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut plain_start = 0;
    // Whitespace seen since the last encoded word, not yet written out.
    let mut pending_ws: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'=' && value.get(i + 1) == Some(&b'?') {
            let mut stream = MessageStream::new(&value[i + 1..]);
            if let Some(word) = stream.decode_rfc2047() {
                let consumed = stream.offset();
                match pending_ws.take() {
                    // Adjacent encoded words: drop the whitespace between.
                    Some((ws_start, ws_end)) if ws_end == i && ws_start == plain_start => {}
                    _ => out.push_str(&text(&value[plain_start..i])),
                }
                out.push_str(&word);
                i += 1 + consumed;
                plain_start = i;
                let ws_end = value[i..].iter().position(|&b| b != b' ' && b != b'\t').map_or(value.len(), |n| i + n);
                if ws_end > i {
                    pending_ws = Some((i, ws_end));
                }
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text(&value[plain_start..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_folded_fields_and_stops_at_blank_line() {
        let raw = b"Subject: a\r\n b\r\nX-Y:z\r\n\r\nbody";
        let h = split_header(raw);
        assert_eq!(h.len, raw.len() - 4);
        assert_eq!(h.fields.len(), 2);
        assert_eq!(h.fields[0].name, b"Subject");
        assert_eq!(h.fields[0].value, b" a\r\n b");
        assert_eq!(unfold(h.fields[0].value), b"a b");
        assert_eq!(h.fields[1].value, b"z");
    }

    #[test]
    fn no_blank_line_means_all_header() {
        let raw = b"Subject: a\nFrom: b";
        let h = split_header(raw);
        assert_eq!(h.len, raw.len());
        assert_eq!(h.fields.len(), 2);
        assert_eq!(h.fields[1].value, b" b");
    }

    #[test]
    fn decodes_adjacent_words_without_space() {
        assert_eq!(decode_words(b"=?utf-8?q?a?= =?utf-8?q?b?= c =?iso-8859-1?q?=E9?="), "ab c \u{e9}");
        assert_eq!(decode_words(b"=?bogus"), "=?bogus");
    }
}
