//! Decoded text of text/* parts, for IMAP SEARCH BODY and TEXT
//! (RFC 3501 §6.4.4: matching is on the decoded content, in any charset the
//! server supports).

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::html::html_to_text;
use mailfleet_proto::storage::v1 as pb;

use super::structure::param;

/// Appends the decoded text of one text/* leaf to `out`.
pub(crate) fn append(out: &mut String, part: &pb::BodyPart, body: &[u8]) {
    let decoded = transfer_decode(&part.encoding, body);
    let charset = param(&part.params, "charset").unwrap_or("us-ascii");
    let mut text = charset_decode(charset, &decoded);
    if part.media_subtype == "html" {
        text = html_to_text(&text);
    }
    if text.trim().is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&text);
}

/// Undoes the Content-Transfer-Encoding (RFC 2045 §6). Undecodable content
/// is searched as written rather than dropped.
fn transfer_decode(encoding: &str, body: &[u8]) -> Vec<u8> {
    match encoding {
        "BASE64" => {
            // RFC 2045 §6.8: characters outside the alphabet are ignored.
            let clean: Vec<u8> =
                body.iter().copied().filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')).collect();
            base64_decode(&clean).unwrap_or_else(|| body.to_vec())
        }
        "QUOTED-PRINTABLE" => quoted_printable(body),
        _ => body.to_vec(),
    }
}

/// RFC 2045 §6.7, leniently: a soft line break (`=` at the end of a line)
/// is removed, `=XX` becomes the octet, and any other `=` is kept as it is
/// (the note to rule (1) recommends exactly that robustness).
fn quoted_printable(body: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'=' {
            // Soft line break, possibly with trailing whitespace before it.
            let mut j = i + 1;
            while j < body.len() && matches!(body[j], b' ' | b'\t') {
                j += 1;
            }
            if body.get(j) == Some(&b'\n') {
                i = j + 1;
                continue;
            }
            if body.get(j) == Some(&b'\r') && body.get(j + 1) == Some(&b'\n') {
                i = j + 2;
                continue;
            }
            if let (Some(h), Some(l)) = (body.get(i + 1).and_then(|&b| hex(b)), body.get(i + 2).and_then(|&b| hex(b))) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(body[i]);
        i += 1;
    }
    out
}

/// Converts to UTF-8 by the declared charset. us-ascii text that is really
/// UTF-8 (common in practice) is taken as UTF-8; unknown charsets fall back
/// to UTF-8 with replacement characters.
fn charset_decode(charset: &str, bytes: &[u8]) -> String {
    let is_default = charset.eq_ignore_ascii_case("us-ascii")
        || charset.eq_ignore_ascii_case("ascii")
        || charset.eq_ignore_ascii_case("utf-8")
        || charset.eq_ignore_ascii_case("utf8");
    if is_default {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return s.to_owned();
        }
        if let Some(decode) = charset_decoder(b"windows-1252") {
            return decode(bytes);
        }
    }
    match charset_decoder(charset.as_bytes()) {
        Some(decode) => decode(bytes),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_printable_is_lenient() {
        assert_eq!(quoted_printable(b"caf=C3=A9 =\r\nok = x=4"), "café ok = x=4".as_bytes());
    }

    #[test]
    fn charsets() {
        assert_eq!(charset_decode("iso-8859-1", b"\xe9t\xe9"), "été");
        assert_eq!(charset_decode("us-ascii", "été".as_bytes()), "été");
        assert_eq!(charset_decode("x-unknown", b"ab"), "ab");
    }
}
