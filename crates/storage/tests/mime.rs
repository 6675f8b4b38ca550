//! MIME metadata (`storage::mime::parse`): ENVELOPE, BODYSTRUCTURE with byte
//! offsets, sent date and search text. Pure and fast: no database needed.
//!
//! Every fixture is checked twice, with bare LF and with CRLF line endings,
//! and every part is checked by slicing the raw message at its offsets.

use mailfleet_proto::storage::v1 as pb;
use proptest::prelude::*;
use storage::mime::{self, MAX_DEPTH, MAX_PARTS, ParsedMessage};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/mime/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Converts every bare LF to CRLF.
fn crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 16);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The fixture with LF endings and with CRLF endings, plus a function that
/// turns expected text (written with `\n`) into that variant's bytes.
/// Expected text (written with `\n`) as bytes of one line-ending variant.
type Eol = fn(&str) -> Vec<u8>;

fn variants(name: &str) -> Vec<(Vec<u8>, Eol)> {
    let lf = fixture(name);
    assert!(!lf.contains(&b'\r'), "fixtures are stored with LF endings");
    let as_lf: Eol = |s| s.as_bytes().to_vec();
    let as_crlf: Eol = |s| crlf(s.as_bytes());
    vec![(crlf(&lf), as_crlf), (lf, as_lf)]
}

fn header_of<'a>(raw: &'a [u8], p: &pb::BodyPart) -> &'a [u8] {
    &raw[p.header_offset as usize..(p.header_offset + p.header_length) as usize]
}

fn body_of<'a>(raw: &'a [u8], p: &pb::BodyPart) -> &'a [u8] {
    &raw[p.body_offset as usize..(p.body_offset + p.body_length) as usize]
}

#[track_caller]
fn assert_bytes(actual: &[u8], expected: &[u8]) {
    assert_eq!(String::from_utf8_lossy(actual), String::from_utf8_lossy(expected), "bytes differ");
}

fn addr(name: Option<&str>, mailbox: Option<&str>, host: Option<&str>) -> pb::Address {
    pb::Address { name: name.map(Into::into), adl: None, mailbox: mailbox.map(Into::into), host: host.map(Into::into) }
}

fn param(name: &str, value: &str) -> pb::Param {
    pb::Param { name: name.into(), value: value.into() }
}

fn date(y: i32, m: time::Month, d: u8) -> Option<time::Date> {
    Some(time::Date::from_calendar_date(y, m, d).expect("valid date"))
}

/// Every range lies inside its parent and inside `raw`; header and body are
/// adjacent; size is the body length.
fn check_offsets(raw: &[u8], p: &pb::BodyPart, lo: u64, hi: u64) -> Result<(), String> {
    let end = p.body_offset.checked_add(p.body_length).ok_or("overflow")?;
    if p.header_offset < lo || end > hi || hi > raw.len() as u64 {
        return Err(format!("part {}..{} outside {lo}..{hi}", p.header_offset, end));
    }
    if p.header_offset + p.header_length != p.body_offset {
        return Err("header and body not adjacent".into());
    }
    if p.size != p.body_length {
        return Err("size differs from body length".into());
    }
    for child in &p.parts {
        check_offsets(raw, child, p.body_offset, end)?;
    }
    if let Some(inner) = &p.message_body {
        if inner.header_offset != p.body_offset || inner.body_offset + inner.body_length != end {
            return Err("message/rfc822 body does not span the part body".into());
        }
        check_offsets(raw, inner, p.body_offset, end)?;
    }
    if p.media_type == "multipart" && p.parts.is_empty() {
        return Err("multipart without parts".into());
    }
    if p.media_type.is_empty() || p.media_subtype.is_empty() || p.encoding.is_empty() {
        return Err("empty type, subtype or encoding".into());
    }
    Ok(())
}

#[track_caller]
fn parse_checked(raw: &[u8]) -> ParsedMessage {
    let parsed = mime::parse(raw);
    let p = &parsed.body_structure;
    assert_eq!(p.header_offset, 0);
    assert_eq!(p.body_offset + p.body_length, raw.len() as u64, "top level spans the message");
    assert_eq!(parsed.header_size, p.header_length);
    if let Err(e) = check_offsets(raw, p, 0, raw.len() as u64) {
        panic!("{e}: {p:#?}");
    }
    parsed
}

#[test]
fn plain_text_message() {
    for (raw, eol) in variants("plain.eml") {
        let m = parse_checked(&raw);
        let e = &m.envelope;
        assert_eq!(e.date.as_deref(), Some("Mon, 7 Feb 1994 21:52:25 -0800 (PST)"));
        // Unfolded: CRLF + WSP becomes the WSP.
        assert_eq!(e.subject.as_deref(), Some("Lunch on Friday?"));
        let alice = addr(Some("Alice Example"), Some("alice"), Some("example.org"));
        assert_eq!(e.from, vec![alice.clone()]);
        assert_eq!(e.sender, vec![alice.clone()], "sender defaults to from");
        assert_eq!(e.reply_to, vec![alice], "reply-to defaults to from");
        assert_eq!(e.to, vec![addr(None, Some("bob"), Some("example.com"))]);
        assert!(e.cc.is_empty() && e.bcc.is_empty());
        assert_eq!(e.in_reply_to, None);
        assert_eq!(e.message_id.as_deref(), Some("<B27397-0100000@example.org>"));
        assert_eq!(m.sent_date, date(1994, time::Month::February, 7));

        let p = &m.body_structure;
        assert_eq!((p.media_type.as_str(), p.media_subtype.as_str()), ("text", "plain"));
        assert_eq!(p.params, vec![param("charset", "us-ascii")], "RFC 2045 §5.2 default");
        assert_eq!(p.encoding, "7BIT");
        assert_eq!(p.lines, 3);
        assert!(p.parts.is_empty() && p.message_body.is_none() && p.disposition.is_none());
        assert_bytes(body_of(&raw, p), &eol("Hi Bob,\n\nlunch on Friday?\n"));
        let header = header_of(&raw, p);
        assert!(header.starts_with(b"Return-Path: <alice@example.org>"));
        assert!(header.ends_with(&eol("Message-ID: <B27397-0100000@example.org>\n\n")));

        assert!(m.header_text.contains("subject: Lunch on Friday?\n"), "{}", m.header_text);
        assert!(m.header_text.starts_with("return-path: <alice@example.org>\ndate: Mon, 7 Feb 1994"));
        assert_eq!(m.header_text.lines().count(), 6);
        assert!(m.body_text.contains("lunch on Friday?"));
    }
}

#[test]
fn multipart_alternative() {
    for (raw, eol) in variants("alternative.eml") {
        let m = parse_checked(&raw);
        let e = &m.envelope;
        assert_eq!(e.from, vec![addr(Some("Carol, C."), Some("carol"), Some("example.net"))]);
        assert_eq!(e.sender, vec![addr(None, Some("bounces"), Some("example.net"))]);
        assert_eq!(e.reply_to, vec![addr(None, Some("list"), Some("example.net"))]);
        assert_eq!(
            e.to,
            vec![addr(Some("Dave"), Some("dave"), Some("example.com")), addr(None, Some("erin"), Some("example.com"))]
        );
        assert_eq!(e.cc, vec![addr(None, Some("frank"), Some("example.com"))]);
        assert_eq!(e.in_reply_to.as_deref(), Some("<prev@example.net>"));
        // 23:30 at -0500 is the 3rd in UTC; SENTON uses the date as written.
        assert_eq!(m.sent_date, date(2024, time::Month::January, 2));

        let p = &m.body_structure;
        assert_eq!((p.media_type.as_str(), p.media_subtype.as_str()), ("multipart", "alternative"));
        assert_eq!(p.params, vec![param("boundary", "alt-1")]);
        // BODY[TEXT] of a multipart is the raw multipart body, preamble to epilogue.
        let body = body_of(&raw, p);
        assert!(body.starts_with(b"This is a multi-part message"));
        assert!(body.ends_with(&eol("--alt-1--\nepilogue\n")));
        assert_eq!(p.parts.len(), 2);

        let text = &p.parts[0];
        assert_eq!((text.media_type.as_str(), text.media_subtype.as_str()), ("text", "plain"));
        assert_eq!(text.params, vec![param("charset", "utf-8")]);
        assert_eq!(text.encoding, "QUOTED-PRINTABLE");
        assert_bytes(
            header_of(&raw, text),
            &eol("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"),
        );
        // The line break before the delimiter belongs to the delimiter.
        assert_bytes(body_of(&raw, text), b"Caf=C3=A9 news: plain");
        assert_eq!(text.lines, 1);
        assert_eq!(text.size, 21);

        let html = &p.parts[1];
        assert_eq!(html.media_subtype, "html");
        assert_eq!(html.encoding, "7BIT");
        assert_bytes(body_of(&raw, html), b"<html><body><p>Caf&eacute; news: <b>html</b></p></body></html>");

        assert!(m.body_text.contains("Café news: plain"), "{}", m.body_text);
        assert!(m.body_text.contains("html"));
        assert!(!m.body_text.contains("<b>"), "HTML tags are not searchable text");
    }
}

#[test]
fn multipart_mixed_with_five_attachments() {
    for (raw, eol) in variants("mixed5.eml") {
        let m = parse_checked(&raw);
        let p = &m.body_structure;
        assert_eq!(p.media_subtype, "mixed");
        assert_eq!(p.params, vec![param("boundary", "mix")]);
        assert_eq!(p.parts.len(), 6);
        let [text, pdf, png, csv, bin, ogg] = &p.parts[..] else { unreachable!() };

        assert_bytes(header_of(&raw, text), &eol("Content-Type: text/plain; charset=us-ascii\n\n"));
        assert_bytes(body_of(&raw, text), b"See the five attachments.");

        assert_eq!((pdf.media_type.as_str(), pdf.media_subtype.as_str()), ("application", "pdf"));
        assert_eq!(pdf.params, vec![param("name", "report.pdf")]);
        assert_eq!(pdf.encoding, "BASE64");
        assert_eq!(pdf.disposition.as_deref(), Some("attachment"));
        assert_eq!(pdf.disposition_params, vec![param("filename", "report.pdf"), param("size", "6")]);
        assert_eq!(pdf.description.as_deref(), Some("Quarterly report"));
        assert_eq!(pdf.md5.as_deref(), Some("Q2hlY2sgSW50ZWdyaXR5IQ=="));
        assert_eq!(pdf.lines, 0, "lines only for text/* and message/rfc822");
        assert_bytes(
            header_of(&raw, pdf),
            &eol("Content-Type: application/pdf; name=\"report.pdf\"\nContent-Transfer-Encoding: base64\n\
                  Content-Disposition: attachment; filename=\"report.pdf\"; size=6\n\
                  Content-Description: Quarterly report\nContent-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n\n"),
        );
        assert_bytes(body_of(&raw, pdf), b"JVBERi0x");

        assert_eq!(png.media_subtype, "png");
        assert!(png.params.is_empty());
        assert_eq!(png.id.as_deref(), Some("<logo@example.com>"));
        assert_eq!(png.disposition.as_deref(), Some("inline"));
        assert!(png.disposition_params.is_empty());
        assert_bytes(body_of(&raw, png), b"iVBORw0KGgo=");

        assert_eq!((csv.media_type.as_str(), csv.media_subtype.as_str()), ("text", "csv"));
        assert_eq!(csv.params, vec![param("charset", "iso-8859-1")]);
        // RFC 2231 extended parameter, decoded from ISO-8859-1.
        assert_eq!(csv.disposition_params, vec![param("filename", "résumé.csv")]);
        assert_eq!(csv.language, vec!["fr".to_string(), "en-GB".to_string()]);
        assert_eq!(csv.lines, 2);
        assert_bytes(body_of(&raw, csv), &eol("name,city\nJos=E9,Z=FCrich"));

        assert_eq!(bin.encoding, "BASE64");
        assert_eq!(bin.location.as_deref(), Some("http://example.com/blob.bin"));
        assert_bytes(body_of(&raw, bin), b"AAECAwQF");

        assert_eq!((ogg.media_type.as_str(), ogg.media_subtype.as_str()), ("audio", "ogg"));
        assert_bytes(body_of(&raw, ogg), b"T2dnUw==");
        // The MIME header of each part starts right after its delimiter line.
        let before = &raw[..ogg.header_offset as usize];
        assert!(before.ends_with(&eol("--mix\n")));

        assert!(m.body_text.contains("See the five attachments."));
        assert!(m.body_text.contains("José,Zürich"), "QP + ISO-8859-1 decoded: {}", m.body_text);
        assert!(!m.body_text.contains("JVBERi0x"), "only text/* parts are searchable text");
    }
}

#[test]
fn nested_multiparts() {
    for (raw, eol) in variants("nested.eml") {
        let m = parse_checked(&raw);
        let p = &m.body_structure;
        let shape = |p: &pb::BodyPart| format!("{}/{}", p.media_type, p.media_subtype);
        assert_eq!(shape(p), "multipart/mixed");
        assert_eq!(p.parts.len(), 2);
        let alt = &p.parts[0];
        assert_eq!(shape(alt), "multipart/alternative");
        assert_eq!(alt.parts.len(), 2);
        let related = &alt.parts[1];
        assert_eq!(shape(related), "multipart/related");
        assert_eq!(related.parts.iter().map(shape).collect::<Vec<_>>(), vec!["text/html", "image/gif"]);
        assert_eq!(shape(&p.parts[1]), "application/zip");

        // A nested multipart's body is its raw body, up to the parent's delimiter.
        assert_bytes(
            body_of(&raw, related),
            &eol("--rel\nContent-Type: text/html\n\n<p>rel html</p>\n--rel\nContent-Type: image/gif\n\
                  Content-Transfer-Encoding: base64\n\nR0lGODlh\n--rel--"),
        );
        assert_bytes(header_of(&raw, related), &eol("Content-Type: multipart/related; boundary=\"rel\"\n\n"));
        let plain = &alt.parts[0];
        assert_bytes(body_of(&raw, plain), b"plain body");
        // A Content-Type without parameters has none (the default applies only
        // when the field is absent).
        assert!(plain.params.is_empty());
        assert_bytes(body_of(&raw, &related.parts[1]), b"R0lGODlh");
        assert_bytes(body_of(&raw, &p.parts[1]), b"PK");
        assert!(m.body_text.contains("plain body") && m.body_text.contains("rel html"));
    }
}

#[test]
fn message_rfc822_attachment() {
    for (raw, eol) in variants("rfc822.eml") {
        let m = parse_checked(&raw);
        let p = &m.body_structure;
        assert_eq!(p.parts.len(), 2);
        let msg = &p.parts[1];
        assert_eq!((msg.media_type.as_str(), msg.media_subtype.as_str()), ("message", "rfc822"));
        assert_eq!(msg.disposition.as_deref(), Some("attachment"));
        let env = msg.message_envelope.as_ref().expect("inner envelope");
        assert_eq!(env.subject.as_deref(), Some("original"));
        assert_eq!(env.from, vec![addr(None, Some("orig"), Some("example.org"))]);
        assert_eq!(env.date.as_deref(), Some("Fri, 1 Mar 2024 10:00:00 +0100"));
        assert_eq!(env.message_id.as_deref(), Some("<orig@example.org>"));
        assert_eq!(msg.lines, 16);

        // BODY[2] is the whole encapsulated message.
        let whole = body_of(&raw, msg);
        assert!(whole.starts_with(b"From: orig@example.org"));
        assert!(whole.ends_with(b"--g--"));
        let inner = msg.message_body.as_deref().expect("inner body");
        // BODY[2.HEADER] and BODY[2.TEXT].
        assert!(header_of(&raw, inner).starts_with(b"From: orig@example.org"));
        assert!(header_of(&raw, inner).ends_with(&eol("boundary=\"g\"\n\n")));
        assert!(body_of(&raw, inner).starts_with(&eol("--g\nContent-Type: text/plain\n\ninner text")));
        assert_eq!(inner.media_subtype, "mixed");
        assert_eq!(inner.parts.len(), 2);
        // BODY[2.1] and BODY[2.2].
        assert_bytes(body_of(&raw, &inner.parts[0]), b"inner text");
        assert_bytes(body_of(&raw, &inner.parts[1]), b"inner attachment");
        assert_eq!(inner.parts[1].params, vec![param("name", "notes.txt")]);

        // The outer envelope is unaffected by the inner one.
        assert_eq!(m.envelope.subject.as_deref(), Some("Fwd: original"));
        assert!(m.body_text.contains("Forwarding.") && m.body_text.contains("inner attachment"));
        assert!(!m.header_text.contains("orig@example.org"), "only top-level fields");
    }
}

#[test]
fn multipart_digest_defaults_to_messages() {
    for (raw, eol) in variants("digest.eml") {
        let m = parse_checked(&raw);
        let p = &m.body_structure;
        assert_eq!(p.parts.len(), 2);
        let first = &p.parts[0];
        // RFC 2046 §5.1.5: no Content-Type in a digest means message/rfc822.
        assert_eq!((first.media_type.as_str(), first.media_subtype.as_str()), ("message", "rfc822"));
        assert_eq!(first.header_length, eol("\n").len() as u64, "empty MIME header");
        let env = first.message_envelope.as_ref().expect("envelope");
        assert_eq!(env.subject.as_deref(), Some("first"));
        assert_bytes(body_of(&raw, first.message_body.as_deref().expect("body")), b"first body");
        assert_eq!(p.parts[1].media_type, "text");
    }
}

#[test]
fn encoded_words_raw_in_envelope_decoded_in_header_text() {
    for (raw, _) in variants("encoded.eml") {
        let m = parse_checked(&raw);
        let e = &m.envelope;
        // RFC 3501 §7.4.2: the envelope carries the raw strings.
        assert_eq!(e.from, vec![addr(Some("=?UTF-8?Q?J=C3=B6rg_M=C3=BCller?="), Some("joerg"), Some("example.de"))]);
        assert_eq!(e.to[0].name.as_deref(), Some("=?ISO-8859-1?B?Suly9G1l?="));
        // RFC 6532 UTF-8 header text stays UTF-8.
        assert_eq!(e.to[1], addr(Some("Zoë Ünïcode"), Some("zoe"), Some("example.de")));
        assert_eq!(e.subject.as_deref(), Some("=?UTF-8?B?w4ljb2xl?= =?UTF-8?Q?_d=C3=A9t=C3=A9?= und Grüße"));

        let h = &m.header_text;
        assert!(h.contains("from: Jörg Müller <joerg@example.de>\n"), "{h}");
        assert!(h.contains("to: Jérôme <jerome@example.fr>, Zoë Ünïcode <zoe@example.de>\n"), "{h}");
        // RFC 2047 §6.2: the space between adjacent encoded words disappears.
        assert!(h.contains("subject: École dété und Grüße\n"), "{h}");
        assert!(h.contains("x-raw: plain\n"));

        let p = &m.body_structure;
        assert_eq!(p.encoding, "8BIT");
        assert_eq!(p.params, vec![param("charset", "utf-8")]);
        assert!(m.body_text.contains("Grüße aus München."));
    }
}

#[test]
fn latin1_8bit_header_is_kept_readable() {
    let raw = b"Subject: caf\xe9\r\nFrom: Ren\xe9 <r@x.test>\r\n\r\nbody\r\n";
    let m = parse_checked(raw);
    assert_eq!(m.envelope.subject.as_deref(), Some("café"));
    assert_eq!(m.envelope.from[0].name.as_deref(), Some("René"));
    assert!(m.header_text.contains("subject: café\n"));
}

#[test]
fn group_addresses() {
    for (raw, _) in variants("group.eml") {
        let e = parse_checked(&raw).envelope;
        assert_eq!(
            e.to,
            vec![
                // RFC 3501 §7.4.2: group start = (NIL NIL "Team" NIL) ...
                addr(None, Some("Team"), None),
                addr(None, Some("ann"), Some("example.com")),
                addr(Some("Bo B."), Some("bo"), Some("example.com")),
                // ... group end = (NIL NIL NIL NIL).
                addr(None, None, None),
                addr(None, Some("solo"), Some("example.com")),
            ]
        );
        assert_eq!(e.cc, vec![addr(None, Some("undisclosed-recipients"), None), addr(None, None, None)]);
        assert_eq!(e.bcc, vec![addr(Some("hidden"), Some("hidden"), Some("example.com"))]);
    }
}

#[test]
fn missing_headers_are_nil() {
    let m = parse_checked(b"X-Only: 1\n\nbody\n");
    let e = &m.envelope;
    assert_eq!(e, &pb::Envelope::default(), "every member NIL / empty");
    assert_eq!(m.sent_date, None);

    // Present but empty Sender / Reply-To default to From as well.
    let m = parse_checked(b"From: a@b.test\r\nSender:\r\nReply-To: \r\nSubject:\r\n\r\n");
    assert_eq!(m.envelope.sender, m.envelope.from);
    assert_eq!(m.envelope.reply_to, m.envelope.from);
    assert_eq!(m.envelope.subject, None);
    assert_eq!(m.body_structure.body_length, 0);

    // No header at all: the empty line comes first.
    let m = parse_checked(b"\r\njust a body\r\n");
    assert_eq!(m.header_size, 2);
    assert_eq!(m.body_structure.lines, 1);
}

#[test]
fn no_blank_line_means_header_only() {
    let raw = b"From: a@b.test\r\nSubject: no body";
    let m = parse_checked(raw);
    assert_eq!(m.header_size, raw.len() as u64);
    assert_eq!(m.body_structure.body_offset, raw.len() as u64);
    assert_eq!(m.body_structure.body_length, 0);
    assert_eq!(m.envelope.subject.as_deref(), Some("no body"), "last field without line break");

    let m = parse_checked(b"");
    assert_eq!(m.header_size, 0);
    assert_eq!(m.body_structure.media_type, "text");
}

#[test]
fn missing_closing_boundary_runs_to_the_end() {
    let raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nfirst\n--b\nContent-Type: text/html\n\nsecond\n";
    let m = parse_checked(raw);
    let p = &m.body_structure;
    assert_eq!(p.parts.len(), 2);
    assert_bytes(body_of(raw, &p.parts[0]), b"first");
    assert_bytes(body_of(raw, &p.parts[1]), b"second\n");
    assert_eq!(p.parts[1].media_subtype, "html");
}

#[test]
fn unusable_multipart_becomes_text() {
    // Boundary never seen, boundary missing, invalid Content-Type: RFC 2045
    // §5.2 says treat as text/plain; charset=us-ascii.
    for raw in [
        &b"Content-Type: multipart/mixed; boundary=zz\n\nno delimiter here\n"[..],
        b"Content-Type: multipart/mixed\n\n--\n",
        b"Content-Type: garbage\n\nhello\n",
        b"Content-Type: /\n\nhello\n",
    ] {
        let p = parse_checked(raw).body_structure;
        assert_eq!((p.media_type.as_str(), p.media_subtype.as_str()), ("text", "plain"), "{raw:?}");
        assert_eq!(p.params, vec![param("charset", "us-ascii")]);
    }
}

#[test]
fn delimiters_only_at_line_start_and_whole() {
    // RFC 2046 §5.1.1: a delimiter starts a line; "--bx" is not "--b".
    let raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\ntext --b inline\n--bx not a delimiter\n--b  \n\ntwo\n--b--\n";
    let p = parse_checked(raw).body_structure;
    assert_eq!(p.parts.len(), 2, "{p:#?}");
    assert_bytes(body_of(raw, &p.parts[0]), b"text --b inline\n--bx not a delimiter");
    assert_bytes(body_of(raw, &p.parts[1]), b"two");
}

#[test]
fn bad_parameters_do_not_break_parsing() {
    let raw = b"Content-Type: text/plain; charset=; ;;=x; name=\"unterminated\n\
                Content-Disposition: ; filename\n\
                Content-Transfer-Encoding: \n\nbody\n";
    let p = parse_checked(raw).body_structure;
    assert_eq!((p.media_type.as_str(), p.media_subtype.as_str()), ("text", "plain"));
    assert_eq!(p.encoding, "7BIT");
    assert_eq!(p.disposition, None);
}

#[test]
fn binary_garbage_is_survived() {
    let mut raw = b"Content-Type: multipart/mixed; boundary=\"=_b\"\r\nSubject: \x80\x81\r\n\r\n--=_b\r\n\r\n".to_vec();
    raw.extend((0..=255u8).cycle().take(4096));
    raw.extend_from_slice(b"\r\n--=_b--\r\n");
    let m = parse_checked(&raw);
    assert_eq!(m.body_structure.parts.len(), 1);
    assert_eq!(m.body_structure.parts[0].body_length, 4096);
    assert_eq!(m.envelope.subject.as_deref(), Some("\u{80}\u{81}"));

    // A boundary outside the RFC 2046 §5.1.1 `bchars` (here 8-bit) cannot be
    // matched; the part is then shown as text.
    let raw = b"Content-Type: multipart/mixed; boundary=\"\xff\xfe\"\n\n--\xff\xfe\nx\n--\xff\xfe--\n";
    assert_eq!(parse_checked(raw).body_structure.media_type, "text");
}

fn deeply_nested(depth: usize) -> Vec<u8> {
    let mut raw = Vec::new();
    for i in 0..depth {
        raw.extend(format!("Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n").bytes());
    }
    raw.extend_from_slice(b"Content-Type: text/plain\n\ndeep\n");
    for i in (0..depth).rev() {
        raw.extend(format!("--b{i}--\n").bytes());
    }
    raw
}

#[test]
fn deep_nesting_is_capped() {
    let raw = deeply_nested(200);
    let m = parse_checked(&raw);
    let mut p = &m.body_structure;
    let mut depth = 0;
    while let Some(child) = p.parts.first() {
        p = child;
        depth += 1;
    }
    assert_eq!(depth, MAX_DEPTH);
    assert_eq!((p.media_type.as_str(), p.media_subtype.as_str()), ("application", "octet-stream"));

    let mut raw = b"Subject: top\n".to_vec();
    for _ in 0..200 {
        raw.extend_from_slice(b"Content-Type: message/rfc822\n\nSubject: inner\n");
    }
    raw.extend_from_slice(b"\nend\n");
    let m = parse_checked(&raw);
    let mut p = &m.body_structure;
    let mut depth = 0;
    while let Some(inner) = p.message_body.as_deref() {
        p = inner;
        depth += 1;
    }
    assert_eq!(depth, MAX_DEPTH);
    assert_eq!((p.media_type.as_str(), p.media_subtype.as_str()), ("application", "octet-stream"));
}

#[test]
fn part_count_is_capped() {
    let mut raw = b"Content-Type: multipart/mixed; boundary=b\n\n".to_vec();
    for _ in 0..(MAX_PARTS + 500) {
        raw.extend_from_slice(b"--b\n\nx\n");
    }
    raw.extend_from_slice(b"--b--\n");
    let p = parse_checked(&raw).body_structure;
    assert_eq!(p.parts.len(), MAX_PARTS);
    assert!(body_of(&raw, &p.parts[MAX_PARTS - 1]).ends_with(b"--b\n\nx"), "rest stays in the last part");
}

#[test]
fn crlf_and_lf_give_the_same_structure() {
    fn shape(p: &pb::BodyPart) -> String {
        let kids: Vec<String> = p.parts.iter().chain(p.message_body.as_deref()).map(shape).collect();
        format!("{}/{}:{}:{}({})", p.media_type, p.media_subtype, p.encoding, p.lines, kids.join(","))
    }
    for name in ["plain.eml", "alternative.eml", "mixed5.eml", "nested.eml", "rfc822.eml", "encoded.eml", "digest.eml"]
    {
        let v = variants(name);
        let (a, b) = (mime::parse(&v[0].0), mime::parse(&v[1].0));
        assert_eq!(shape(&a.body_structure), shape(&b.body_structure), "{name}");
        assert_eq!(a.envelope, b.envelope, "{name}");
        assert_eq!(a.header_text, b.header_text, "{name}");
        assert_eq!(a.sent_date, b.sent_date, "{name}");
    }
}

/// Fragments that steer random input into the interesting code paths.
fn mime_fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"Content-Type: multipart/mixed; boundary=b\n".to_vec()),
        Just(b"Content-Type: multipart/digest; boundary=\"c\"\r\n".to_vec()),
        Just(b"Content-Type: message/rfc822\n".to_vec()),
        Just(b"Content-Type: text/html; charset=iso-2022-jp\n".to_vec()),
        Just(b"Content-Transfer-Encoding: base64\n".to_vec()),
        Just(b"Content-Transfer-Encoding: quoted-printable\n".to_vec()),
        Just(b"Content-Disposition: attachment; filename*0*=utf-8''a%; filename*1=b\n".to_vec()),
        Just(b"From: \"x\\\" <y@z>, g: a@b; (c\n".to_vec()),
        Just(b"Subject: =?utf-8?q?a=FF?= =?x?b?\n".to_vec()),
        Just(b"Date: 31 Feb 99999 25:61 +9999\n".to_vec()),
        Just(b"--b\n".to_vec()),
        Just(b"--b--\n".to_vec()),
        Just(b"--c\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b" folded\n".to_vec()),
        Just(b"<p>&amp;&#x110000;</p>=4=\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_random_bytes(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let m = mime::parse(&raw);
        let p = &m.body_structure;
        prop_assert_eq!(p.body_offset + p.body_length, raw.len() as u64);
        prop_assert_eq!(check_offsets(&raw, p, 0, raw.len() as u64), Ok(()));
    }

    #[test]
    fn never_panics_on_mime_like_input(parts in proptest::collection::vec(mime_fragment(), 0..60)) {
        let raw = parts.concat();
        let m = mime::parse(&raw);
        let p = &m.body_structure;
        prop_assert_eq!(p.body_offset + p.body_length, raw.len() as u64);
        prop_assert_eq!(m.header_size, p.header_length);
        prop_assert_eq!(check_offsets(&raw, p, 0, raw.len() as u64), Ok(()));
        prop_assert!(m.header_text.lines().count() <= raw.len());
    }
}

#[test]
fn body_text_undoes_base64_and_charsets() {
    // "Grüße, Ελλάδα" in UTF-8, base64 (RFC 2045 §6.8), folded over two lines.
    let raw = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\
                Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                R3LDvMOfZSwg\r\nzpXOu867zqzOtM6x\r\n--x\r\n\
                Content-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                \x80 5 na\xefve\r\n--x--\r\n";
    let m = parse_checked(raw);
    assert!(m.body_text.contains("Grüße, Ελλάδα"), "{}", m.body_text);
    assert!(m.body_text.contains("€ 5 naïve"), "{}", m.body_text);
    assert_eq!(m.body_structure.parts[0].lines, 2, "lines of the encoded body");
}

#[test]
fn message_global_and_encoded_rfc822_keep_the_message_shape() {
    // RFC 6532 §3.7 message/global is an encapsulated message as well.
    let raw = b"Content-Type: message/global\r\n\r\nSubject: \xc3\xa9t\xc3\xa9\r\n\r\ninner\r\n";
    let p = parse_checked(raw).body_structure;
    let env = p.message_envelope.as_ref().expect("envelope");
    assert_eq!(env.subject.as_deref(), Some("été"));
    assert_bytes(body_of(raw, p.message_body.as_deref().expect("body")), b"inner\r\n");

    // RFC 2046 §5.2.1 forbids base64 for message/rfc822; when it happens the
    // part still has an (empty) envelope and a body, so clients can render it.
    let raw = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogeA0KDQp5\r\n";
    let p = parse_checked(raw).body_structure;
    assert_eq!(p.encoding, "BASE64");
    assert_eq!(p.message_envelope, Some(pb::Envelope::default()));
    assert_eq!(p.message_body.as_deref().map(|b| b.media_type.as_str()), Some("text"));
}

#[test]
fn header_text_holds_addresses_written_with_comments_in_plain_form() {
    // RFC 3501 §6.4.4 FROM/TO/CC/BCC match addresses; CFWS inside one
    // (RFC 5322 §3.4.1) must not hide it from a search for mailbox@host.
    let raw = b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: RealTo <user-to@domain.org>\r\nSubject: x <a (b)@c>\r\n\r\nbody\r\n";
    let m = parse_checked(raw);
    let h = &m.header_text;
    assert!(h.contains("from: <user-from (comment)@ (comment) domain.org> user-from@domain.org\n"), "{h}");
    // Already there as written: nothing added; not an address field: untouched.
    assert!(h.contains("to: RealTo <user-to@domain.org>\n"), "{h}");
    assert!(h.contains("subject: x <a (b)@c>\n"), "{h}");
}
