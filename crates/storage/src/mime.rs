//! MIME metadata computed once per stored message: the IMAP ENVELOPE, the
//! BODYSTRUCTURE with byte offsets of every part, the sent date and the
//! decoded header and body text that SEARCH works on.
//!
//! Pure: no I/O. [`parse`] never panics and accepts any octets; malformed
//! MIME yields a best-effort structure whose offsets always lie inside the
//! input.
//!
//! Offsets (all from the start of the stored message):
//! - `header_offset..+header_length`: the entity's header including the empty
//!   line that ends it. For the top level that is the message header
//!   (`BODY[HEADER]`); for a part it is its MIME header (`BODY[n.MIME]`).
//! - `body_offset..+body_length`: the entity's body (`BODY[TEXT]`, `BODY[n]`).
//!   For a multipart that is the whole raw multipart body (preamble,
//!   delimiters, parts, epilogue); for a part it ends before the line break
//!   that precedes the next delimiter (RFC 2046 §5.1.1).
//! - message/rfc822: `message_body` is the encapsulated message, whose
//!   header is `BODY[n.HEADER]` and whose body is `BODY[n.TEXT]`.
//!
//! A message with no empty line is all header with an empty body.

use mailfleet_proto::storage::v1 as pb;

mod address;
mod body_text;
mod envelope;
mod header;
mod structure;

pub(crate) use header::decode_words;
pub use structure::{MAX_DEPTH, MAX_PARTS};

/// What storage keeps about a message besides its raw octets.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedMessage {
    /// RFC 3501 §7.4.2 ENVELOPE: raw header values, NIL when absent.
    pub envelope: pb::Envelope,
    /// The full MIME tree with byte offsets into the raw message.
    pub body_structure: pb::BodyPart,
    /// Octets of the top-level header including the empty line.
    pub header_size: u64,
    /// Date part of the Date: field as written (SEARCH SENTBEFORE/ON/SINCE).
    pub sent_date: Option<time::Date>,
    /// Every top-level header field, unfolded and RFC 2047 decoded, one
    /// `name: value\n` line each with the name in lowercase (SEARCH HEADER,
    /// FROM, SUBJECT, ...).
    pub header_text: String,
    /// Decoded text of all text/* parts (transfer encoding and charset
    /// undone; HTML reduced to text), for SEARCH BODY/TEXT.
    pub body_text: String,
}

/// Parses a raw message (RFC 5322 + MIME). Never panics.
pub fn parse(raw: &[u8]) -> ParsedMessage {
    let top = header::split_header(raw);
    let mut walker = structure::Walker::new(raw);
    let body_structure = walker.entity(0, raw.len(), &top, structure::DefaultType::TextPlain, 0);
    ParsedMessage {
        envelope: envelope::envelope(&top),
        header_size: top.len as u64,
        sent_date: envelope::sent_date(&top),
        header_text: header_text(&top),
        body_structure,
        body_text: walker.body_text,
    }
}

/// Fields that hold address lists (RFC 5322 §3.6.2, §3.6.3).
const ADDRESS_FIELDS: [&str; 6] = ["from", "sender", "reply-to", "to", "cc", "bcc"];

fn header_text(top: &header::HeaderBlock<'_>) -> String {
    let mut out = String::new();
    for field in &top.fields {
        let name = header::text(field.name).to_ascii_lowercase();
        let unfolded = header::unfold(field.value);
        let value = header::decode_words(&unfolded);
        let start = out.len();
        out.push_str(&name);
        out.push_str(": ");
        // One line per field, whatever the encoded words decoded to.
        out.extend(value.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }));
        if ADDRESS_FIELDS.contains(&name.as_str()) {
            // RFC 3501 §6.4.4: FROM, TO, CC and BCC search the addresses
            // (the envelope's), not just the text as written: an address
            // spelled with comments or white space inside it
            // (`<user (c)@ (c) example.org>`, RFC 5322 §3.4.1 CFWS) is
            // added in its plain `mailbox@host` form when the line does
            // not already hold it.
            for a in address::parse_address_list(&unfolded) {
                let (Some(mailbox), Some(host)) = (&a.mailbox, &a.host) else { continue };
                let plain = format!("{mailbox}@{host}");
                if plain.contains(['\r', '\n']) || out[start..].to_lowercase().contains(&plain.to_lowercase()) {
                    continue;
                }
                out.push(' ');
                out.push_str(&plain);
            }
        }
        out.push('\n');
    }
    out
}
