//! BODYSTRUCTURE with byte offsets (RFC 3501 §7.4.2 / RFC 9051 §7.5.2),
//! built from a walk over the raw octets.
//!
//! The MIME entity boundaries are found here rather than taken from
//! mail-parser's `MessagePart` offsets because IMAP needs exact ranges of
//! the *stored* octets for `BODY[n]`, `BODY[n.MIME]` and `BODY[n.HEADER]`,
//! and mail-parser 0.11 (a) accepts `--boundary` anywhere in a line, not
//! only at its start (RFC 2046 §5.1.1), (b) parses base64-encoded nested
//! messages from the decoded bytes, so their offsets do not point into the
//! stored message, and (c) has no limit on nesting of unencoded messages.
//! mail-parser is still used for the field syntax it gets right: Content-Type
//! and Content-Disposition parameters (RFC 2045 §5.1, RFC 2231), dates,
//! RFC 2047 words, transfer decoding and charsets.

use mail_parser::parsers::MessageStream;
use mail_parser::{ContentType, HeaderValue};
use mailfleet_proto::storage::v1 as pb;

use super::body_text;
use super::envelope::envelope;
use super::header::{HeaderBlock, raw_value, split_header, text, unfold};

/// Deeper multiparts and messages are kept as one opaque
/// application/octet-stream part, so a hostile message cannot make the
/// parser (or the IMAP client) recurse without bound.
pub const MAX_DEPTH: usize = 64;

/// At most this many parts are split out of one message; delimiters after
/// that are left inside the last part's body.
pub const MAX_PARTS: usize = 10_000;

/// The type a part has when it has no (valid) Content-Type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DefaultType {
    /// RFC 2045 §5.2: text/plain; charset=us-ascii.
    TextPlain,
    /// RFC 2046 §5.1.5: a part of multipart/digest defaults to message/rfc822.
    MessageRfc822,
}

pub(crate) struct Walker<'a> {
    raw: &'a [u8],
    parts: usize,
    /// Decoded text of every text/* leaf, for SEARCH BODY/TEXT.
    pub body_text: String,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Walker { raw, parts: 0, body_text: String::new() }
    }

    /// Describes the MIME entity `raw[start..end]`: its header, then its
    /// body, recursing into multiparts and message/rfc822.
    pub(crate) fn entity(
        &mut self,
        start: usize,
        end: usize,
        header: &HeaderBlock<'a>,
        default: DefaultType,
        depth: usize,
    ) -> pb::BodyPart {
        let body_start = (start + header.len).min(end);
        let mut part = pb::BodyPart {
            header_offset: start as u64,
            header_length: (body_start - start) as u64,
            body_offset: body_start as u64,
            body_length: (end - body_start) as u64,
            size: (end - body_start) as u64,
            ..Default::default()
        };
        describe(&mut part, header, default);

        let body = &self.raw[body_start..end];
        let is_container =
            part.media_type == "multipart" || (part.media_type == "message" && is_encapsulated(&part.media_subtype));
        if is_container && depth >= MAX_DEPTH {
            // Too deep: one opaque leaf.
            part.media_type = "application".into();
            part.media_subtype = "octet-stream".into();
            part.params.clear();
            return part;
        }
        if part.media_type == "multipart" {
            let children = param(&part.params, "boundary")
                .filter(|b| !b.is_empty())
                .map(|b| self.split_multipart(body_start, end, b.as_bytes()))
                .unwrap_or_default();
            if children.is_empty() {
                // No boundary, or it never occurs: RFC 2045 §5.2 advises
                // treating an unusable Content-Type as text/plain.
                part.media_type = "text".into();
                part.media_subtype = "plain".into();
                part.params = vec![us_ascii()];
            } else {
                let child_default =
                    if part.media_subtype == "digest" { DefaultType::MessageRfc822 } else { DefaultType::TextPlain };
                for (s, e) in children {
                    let h = split_header(&self.raw[s..e]);
                    let child = self.entity(s, e, &h, child_default, depth + 1);
                    part.parts.push(child);
                }
                return part;
            }
        }
        if part.media_type == "message" && is_encapsulated(&part.media_subtype) {
            // RFC 3501 §7.4.2: message/rfc822 carries the envelope, the body
            // structure and the line count of the encapsulated message.
            let inner_header = split_header(body);
            part.message_envelope = Some(envelope(&inner_header));
            let inner = self.entity(body_start, end, &inner_header, DefaultType::TextPlain, depth + 1);
            part.message_body = Some(Box::new(inner));
            part.lines = count_lines(body);
            return part;
        }
        if part.media_type == "text" {
            part.lines = count_lines(body);
            body_text::append(&mut self.body_text, &part, body);
        }
        part
    }

    /// Finds the body parts of a multipart body `raw[start..end]` (RFC 2046
    /// §5.1.1). A delimiter is a line starting with `--boundary`, followed by
    /// optional transport padding (WSP); `--boundary--` closes. The line
    /// break before a delimiter belongs to the delimiter, not to the part.
    /// The preamble and the epilogue belong to no part. Without a closing
    /// delimiter the last part runs to `end`.
    fn split_multipart(&mut self, start: usize, end: usize, boundary: &[u8]) -> Vec<(usize, usize)> {
        let raw = self.raw;
        let mut parts = Vec::new();
        let mut current: Option<usize> = None;
        let mut pos = start;
        while pos < end {
            let line_end = raw[pos..end].iter().position(|&b| b == b'\n').map_or(end, |i| pos + i + 1);
            let line = &raw[pos..line_end];
            if let Some(rest) = line.strip_prefix(b"--").and_then(|l| l.strip_prefix(boundary)) {
                let is_close = rest.starts_with(b"--");
                let is_delimiter = is_close
                    || rest.iter().all(|b| b.is_ascii_whitespace())
                    || matches!(rest.first(), Some(b' ' | b'\t'));
                let may_open = self.parts < MAX_PARTS;
                if is_delimiter && (is_close || may_open || current.is_none()) {
                    if let Some(s) = current.take() {
                        parts.push((s, line_break_start(raw, s, pos)));
                    }
                    if is_close {
                        return parts;
                    }
                    self.parts += 1;
                    current = Some(line_end);
                }
            }
            pos = line_end;
        }
        if let Some(s) = current {
            parts.push((s, end));
        }
        parts
    }
}

/// Where the line break that ends at `pos` starts (CRLF or LF), not before
/// `floor`.
fn line_break_start(raw: &[u8], floor: usize, pos: usize) -> usize {
    let mut e = pos;
    if e > floor && raw[e - 1] == b'\n' {
        e -= 1;
        if e > floor && raw[e - 1] == b'\r' {
            e -= 1;
        }
    }
    e
}

/// message/rfc822 (RFC 2046 §5.2.1) and message/global (RFC 6532 §3.7,
/// RFC 9051 body-type-msg) encapsulate a whole message.
fn is_encapsulated(subtype: &str) -> bool {
    subtype == "rfc822" || subtype == "global"
}

/// Lines of an encoded body: its line breaks, plus a last line without one.
pub(crate) fn count_lines(body: &[u8]) -> u32 {
    let mut n = body.iter().filter(|&&b| b == b'\n').count();
    if body.last().is_some_and(|&b| b != b'\n') {
        n += 1;
    }
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn us_ascii() -> pb::Param {
    pb::Param { name: "charset".into(), value: "us-ascii".into() }
}

pub(crate) fn param<'p>(params: &'p [pb::Param], name: &str) -> Option<&'p str> {
    params.iter().find(|p| p.name.eq_ignore_ascii_case(name)).map(|p| p.value.as_str())
}

/// Parses a Content-Type or Content-Disposition field body with
/// mail-parser (RFC 2045 §5.1 parameters, RFC 2231 continuations and
/// charsets, quoted strings).
fn content_type(value: &[u8]) -> Option<ContentType<'static>> {
    let mut value = unfold(value);
    value.push(b'\n');
    match MessageStream::new(&value).parse_content_type() {
        HeaderValue::ContentType(ct) => Some(ContentType {
            c_type: ct.c_type.into_owned().into(),
            c_subtype: ct.c_subtype.map(|s| s.into_owned().into()),
            attributes: ct.attributes.map(|a| {
                a.into_iter()
                    .map(|a| mail_parser::Attribute {
                        name: a.name.into_owned().into(),
                        value: a.value.into_owned().into(),
                    })
                    .collect()
            }),
        }),
        _ => None,
    }
}

fn params(ct: &ContentType<'_>) -> Vec<pb::Param> {
    ct.attributes()
        .unwrap_or_default()
        .iter()
        .map(|a| pb::Param { name: a.name.to_ascii_lowercase(), value: a.value.to_string() })
        .collect()
}

/// RFC 2045 §5.1 token: what a valid type or subtype consists of.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// Fills the fields that come from the part's own MIME header.
fn describe(part: &mut pb::BodyPart, header: &HeaderBlock<'_>, default: DefaultType) {
    let ct = header.first("content-type").and_then(|f| content_type(f.value));
    match ct {
        Some(ct) if is_token(&ct.c_type) && ct.c_subtype.as_deref().is_some_and(is_token) => {
            part.media_type = ct.c_type.to_ascii_lowercase();
            part.media_subtype = ct.c_subtype.as_deref().unwrap_or_default().to_ascii_lowercase();
            part.params = params(&ct);
        }
        _ => match default {
            DefaultType::TextPlain => {
                part.media_type = "text".into();
                part.media_subtype = "plain".into();
                part.params = vec![us_ascii()];
            }
            DefaultType::MessageRfc822 => {
                part.media_type = "message".into();
                part.media_subtype = "rfc822".into();
            }
        },
    }
    // RFC 2045 §6.1: mechanism is a token, case-insensitive; 7BIT by default.
    part.encoding = header
        .first("content-transfer-encoding")
        .map(|f| unfold(f.value))
        .and_then(|v| {
            let token: Vec<u8> =
                v.iter().copied().take_while(|b| !b.is_ascii_whitespace() && *b != b'(' && *b != b';').collect();
            (!token.is_empty()).then(|| text(&token).to_ascii_uppercase())
        })
        .unwrap_or_else(|| "7BIT".into());
    part.id = raw_value(header.first("content-id"));
    part.description = raw_value(header.first("content-description"));
    part.md5 = raw_value(header.first("content-md5"));
    part.location = raw_value(header.first("content-location"));
    // RFC 2183: disposition type and parameters.
    if let Some(cd) =
        header.first("content-disposition").and_then(|f| content_type(f.value)).filter(|cd| is_token(&cd.c_type))
    {
        part.disposition = Some(cd.c_type.to_ascii_lowercase());
        part.disposition_params = params(&cd);
    }
    // RFC 3282: Content-Language is a comma-separated list of tags.
    if let Some(f) = header.first("content-language") {
        part.language =
            text(&unfold(f.value)).split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
    }
}
