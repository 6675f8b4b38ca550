//! APPEND of a `literal8` (RFC 3516 §4.4): the message may hold parts with
//! `Content-Transfer-Encoding: binary`, whose octets (NUL, bare CR or LF)
//! are only safe in a literal8. Storage keeps messages as RFC 5322 text
//! (it turns bare LF into CRLF, and BODY[...] must be sent in a plain
//! literal), so such parts are stored base64-encoded (RFC 2045 §6.8),
//! which keeps every octet: BINARY[...] decodes them back to exactly what
//! the client appended, and BINARY.SIZE counts those octets.

use base64::Engine;

/// Nesting of multiparts followed at most (deeper ones are kept as sent).
const MAX_DEPTH: usize = 16;

/// The message with every `binary` part base64-encoded; `None` when it has
/// none (the message is stored as sent).
pub fn encode_binary_parts(raw: &[u8]) -> Option<Vec<u8>> {
    entity(raw, 0)
}

/// One MIME entity (header, empty line, body): re-encoded, or `None` when
/// nothing in it changes.
fn entity(raw: &[u8], depth: usize) -> Option<Vec<u8>> {
    let (header_len, body_start) = header_end(raw)?;
    let header = &raw[..header_len];
    let body = &raw[body_start..];
    let fields = fields(header);
    let value = |name: &str| {
        fields.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name)).map(|(_, v, range)| (v.clone(), range.clone()))
    };
    if let Some((cte, range)) = value("content-transfer-encoding")
        && cte.trim().eq_ignore_ascii_case("binary")
    {
        let mut out = Vec::with_capacity(raw.len() * 4 / 3 + 64);
        out.extend_from_slice(&header[..range.start]);
        out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
        out.extend_from_slice(&header[range.end..]);
        out.extend_from_slice(&raw[header_len..body_start]);
        out.extend_from_slice(&base64_lines(body));
        return Some(out);
    }
    let (content_type, _) = value("content-type")?;
    if depth >= MAX_DEPTH || !content_type.trim_start().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    let boundary = boundary(&content_type)?;
    let body = multipart(body, boundary.as_bytes(), depth)?;
    let mut out = raw[..body_start].to_vec();
    out.extend_from_slice(&body);
    Some(out)
}

/// Where the header ends: its length including the empty line, and where
/// the body starts (RFC 5322 §2.1; bare LF accepted).
fn header_end(raw: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = 0;
    while line_start < raw.len() {
        let end = raw[line_start..].iter().position(|b| *b == b'\n').map(|p| line_start + p + 1)?;
        let line = &raw[line_start..end];
        if line == b"\n" || line == b"\r\n" {
            return Some((line_start, end));
        }
        line_start = end;
    }
    None
}

/// Header fields: lowercase-insensitive name, unfolded value, and the byte
/// range of the whole field (continuation lines included).
fn fields(header: &[u8]) -> Vec<(String, String, std::ops::Range<usize>)> {
    let mut out: Vec<(String, String, std::ops::Range<usize>)> = Vec::new();
    let mut start = 0;
    while start < header.len() {
        let end = header[start..].iter().position(|b| *b == b'\n').map_or(header.len(), |p| start + p + 1);
        let line = String::from_utf8_lossy(&header[start..end]);
        let text = line.trim_end_matches(['\r', '\n']);
        if text.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(text.trim());
                last.2.end = end;
            }
        } else if let Some((name, value)) = text.split_once(':') {
            out.push((name.trim().to_string(), value.trim().to_string(), start..end));
        }
        start = end;
    }
    out
}

/// The `boundary` parameter of a Content-Type value (RFC 2046 §5.1.1),
/// quoted or not.
fn boundary(content_type: &str) -> Option<String> {
    for param in content_type.split(';').skip(1) {
        let Some((name, value)) = param.split_once('=') else { continue };
        if name.trim().eq_ignore_ascii_case("boundary") {
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            return (!value.is_empty()).then(|| value.to_string());
        }
    }
    None
}

/// A multipart body with its parts re-encoded; `None` when none changes.
/// Delimiter lines, preamble and epilogue stay as they are; a part ends
/// before the line break that precedes the next delimiter (RFC 2046 §5.1.1).
fn multipart(body: &[u8], boundary: &[u8], depth: usize) -> Option<Vec<u8>> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    // Start of every delimiter line, and where the line ends.
    let mut lines: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = body[start..].iter().position(|b| *b == b'\n').map_or(body.len(), |p| start + p + 1);
        if body[start..end].starts_with(&delimiter) {
            lines.push((start, end));
        }
        start = end;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut copied = 0;
    let mut changed = false;
    for pair in lines.windows(2) {
        let (part_start, next) = (pair[0].1, pair[1].0);
        // The CRLF (or LF) before the next delimiter belongs to it.
        let mut part_end = next;
        if part_end > part_start && body[part_end - 1] == b'\n' {
            part_end -= 1;
            if part_end > part_start && body[part_end - 1] == b'\r' {
                part_end -= 1;
            }
        }
        if let Some(part) = entity(&body[part_start..part_end], depth + 1) {
            out.extend_from_slice(&body[copied..part_start]);
            out.extend_from_slice(&part);
            copied = part_end;
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

/// Base64 in lines of 76 characters (RFC 2045 §6.8), each ending in CRLF.
fn base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 76 * 2 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_binary_parts;

    #[test]
    fn a_binary_single_part_becomes_base64() {
        let raw = b"From: a@b.test\r\nContent-Transfer-Encoding: binary\r\n\r\n\0-\xe4\n\r\n\n";
        let out = encode_binary_parts(raw).expect("changed");
        assert_eq!(out, b"From: a@b.test\r\nContent-Transfer-Encoding: base64\r\n\r\nAC3kCg0KCg==\r\n");
        assert!(encode_binary_parts(b"Subject: x\r\n\r\nplain\r\n").is_none());
    }

    #[test]
    fn only_the_binary_part_of_a_multipart_changes() {
        let raw = b"Content-Type: multipart/mixed; boundary=\"xx\"\r\n\r\npre\r\n--xx\r\nContent-Type: text/plain\r\n\r\nhello\r\n--xx\r\nContent-Transfer-Encoding: BINARY\r\n\r\n\0\x01\r\n--xx--\r\nepi\r\n";
        let out = encode_binary_parts(raw).expect("changed");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Content-Type: multipart/mixed; boundary=\"xx\"\r\n\r\npre\r\n--xx\r\nContent-Type: text/plain\r\n\r\nhello\r\n--xx\r\nContent-Transfer-Encoding: base64\r\n\r\nAAE=\r\n\r\n--xx--\r\nepi\r\n"
        );
    }
}
