//! Test messages: RFC 5322 headers over a pool of MIME bodies.
//!
//! Bodies are made once per run (before anything is timed) so that the
//! generator costs the measured system no CPU during a scenario; each
//! message then gets its own header block. Sizes are log-uniform over the
//! range (most messages small, some big) and exact: the Subject absorbs
//! the few octets by which header blocks differ.

use base64::Engine as _;
use rand::Rng;
use rand::rngs::StdRng;

use crate::smtp::codec::dot_stuff;

/// Below this a message is mostly header; the generator needs room for
/// the MIME structure.
pub const MIN_SIZE: usize = 1024;
/// Content lines are at most this long before CRLF; RFC 5322 §2.1.1
/// says SHOULD be ≤ 78, MUST be ≤ 998.
const MAX_LINE: usize = 76;
/// Every Subject is at least this long, so that it can absorb the
/// differences between header blocks…
const MIN_SUBJECT: usize = 40;
/// …and at most this long, so that its line stays within 78 characters.
const MAX_SUBJECT: usize = 78 - "Subject: ".len();
/// How many distinct bodies a run uses.
const POOL: usize = 256;
/// The domain of the generated Message-IDs and header From addresses.
const DOMAIN: &str = "bench.test";

/// Words for text and subjects (ours; any ordinary words would do).
const WORDS: &[&str] = &[
    "account", "agenda", "answer", "april", "budget", "build", "calendar", "change", "client", "coffee", "comment",
    "contract", "copy", "daily", "data", "deadline", "delivery", "design", "draft", "estimate", "event", "factory",
    "feedback", "figure", "final", "garden", "harbour", "holiday", "invoice", "issue", "journey", "kitchen", "launch",
    "letter", "library", "lunch", "market", "meeting", "minutes", "monday", "morning", "network", "notes", "office",
    "order", "outline", "package", "paper", "payment", "people", "picture", "plan", "planning", "project", "proposal",
    "quarter", "question", "receipt", "record", "release", "report", "request", "review", "river", "room", "sample",
    "schedule", "season", "second", "server", "shipment", "signal", "status", "storage", "summary", "supplier",
    "survey", "team", "thanks", "ticket", "timeline", "today", "travel", "update", "vendor", "version", "visit",
    "weekly", "window", "winter", "workshop", "the", "and", "for", "with", "from", "about", "next", "after", "before",
    "please", "our", "your", "will", "should", "could", "would", "this", "that", "new", "old", "first", "last",
    "small", "large", "quick", "short", "long", "early", "late", "again", "also", "here", "there", "soon",
];

/// Display name and address of header From (invented people).
const SENDERS: &[(&str, &str)] = &[
    ("Mira Tansley", "mira.tansley"),
    ("Joss Okonkwo-Reyes", "joss.okonkwo"),
    ("Ilse Varga", "ilse.varga"),
    ("Teodor Brandt", "teodor.brandt"),
    ("Anouk Delacroix", "anouk.delacroix"),
    ("Piet Hollander", "piet.hollander"),
    ("Sunniva Holt", "sunniva.holt"),
    ("Rafael Quintero", "rafael.quintero"),
    ("Yuki Aramaki", "yuki.aramaki"),
    ("Dara Finnegan", "dara.finnegan"),
    ("Oskar Lindqvist", "oskar.lindqvist"),
    ("Amara Osei", "amara.osei"),
];

/// Attachment kinds: Content-Type and file extension.
const ATTACHMENTS: &[(&str, &str)] = &[
    ("application/pdf", "pdf"),
    ("image/jpeg", "jpg"),
    ("application/zip", "zip"),
    ("application/octet-stream", "bin"),
];

#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    #[error("message sizes must be at least {MIN_SIZE} octets")]
    TooSmall,
    #[error("--size-min is larger than --size-max")]
    Inverted,
}

/// Inclusive range of message sizes in octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

impl SizeRange {
    pub fn new(min: usize, max: usize) -> Result<Self, SizeError> {
        if min < MIN_SIZE {
            return Err(SizeError::TooSmall);
        }
        if min > max {
            return Err(SizeError::Inverted);
        }
        Ok(Self { min, max })
    }

    /// Log-uniform: ln(size) uniform over [ln min, ln max].
    fn sample(&self, rng: &mut impl Rng) -> usize {
        if self.min == self.max {
            return self.min;
        }
        let (lo, hi) = ((self.min as f64).ln(), (self.max as f64).ln());
        let size = rng.random_range(lo..=hi).exp().round() as usize;
        size.clamp(self.min, self.max)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// text/plain, 7bit.
    Plain,
    /// multipart/mixed (RFC 2046 §5.1.3): a text part and a base64 attachment.
    Mixed,
}

/// Everything after the per-message header fields: the MIME header
/// fields, the blank line and the content.
struct Body {
    shape: Shape,
    /// The whole message size this body was made for.
    target: usize,
    bytes: Vec<u8>,
    /// `bytes` with SMTP transparency applied (RFC 5321 §4.5.2).
    stuffed: Vec<u8>,
}

/// The per-message parts of a message.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// The recipient, for To.
    pub to: &'a str,
    /// A number unique within the run, for the Message-ID.
    pub seq: u64,
    /// Value of the `X-Bench-Id` header field, if any.
    pub bench_id: Option<&'a str>,
}

/// The bodies of a run and how long every header block is.
pub struct Corpus {
    bodies: Vec<Body>,
    header_len: usize,
    run: String,
}

impl Corpus {
    /// `longest_to` and `longest_bench_id` bound the per-message fields, so
    /// that every header block can be made exactly `header_len` long; the
    /// messages must carry an X-Bench-Id if and only if `longest_bench_id`
    /// is given, or their sizes drift from the targets.
    pub fn new(
        rng: &mut StdRng,
        sizes: SizeRange,
        run: &str,
        longest_to: usize,
        longest_bench_id: Option<usize>,
    ) -> Self {
        let to = "x".repeat(longest_to);
        let bench_id = longest_bench_id.map(|n| "x".repeat(n));
        let date = date_now();
        let header_len = SENDERS
            .iter()
            .map(|sender| {
                let fields = Fields { to: &to, seq: 0, bench_id: bench_id.as_deref() };
                render_header(sender, &fields, &date, &message_id(run, 0, 0), "").len()
            })
            .max()
            .unwrap_or(0)
            + MIN_SUBJECT;
        let bodies = (0..POOL)
            .map(|i| {
                let target = sizes.sample(rng);
                let bytes = make_body(rng, target.saturating_sub(header_len), i);
                let stuffed = dot_stuff(&bytes);
                let shape = if bytes.starts_with(b"Content-Type: multipart/") { Shape::Mixed } else { Shape::Plain };
                Body { shape, target, bytes, stuffed }
            })
            .collect();
        Self { bodies, header_len, run: run.to_owned() }
    }

    /// A whole message: `stuffed` for SMTP DATA (without the final dot),
    /// plain for IMAP APPEND. Its size (plain) is one of the pool's targets.
    pub fn message(&self, rng: &mut impl Rng, fields: &Fields<'_>, stuffed: bool) -> Vec<u8> {
        let body = self.bodies.get(rng.random_range(0..self.bodies.len().max(1)));
        let sender = SENDERS.get(rng.random_range(0..SENDERS.len())).unwrap_or(&SENDERS[0]);
        let date = date_now();
        let id = message_id(&self.run, fields.seq, rng.random());
        let rest = render_header(sender, fields, &date, &id, "").len();
        let subject = subject(rng, self.header_len.saturating_sub(rest).clamp(MIN_SUBJECT / 2, MAX_SUBJECT));
        let header = render_header(sender, fields, &date, &id, &subject);
        let content = body.map(|b| if stuffed { &b.stuffed } else { &b.bytes });
        let mut out = Vec::with_capacity(header.len() + content.map_or(0, |c| c.len()));
        out.extend_from_slice(header.as_bytes());
        if let Some(c) = content {
            out.extend_from_slice(c);
        }
        out
    }

    /// Sizes and shapes of the pool, for tests and notes.
    pub fn pool(&self) -> impl Iterator<Item = (usize, Shape)> + '_ {
        self.bodies.iter().map(|b| (b.target, b.shape))
    }
}

/// A word that occurs in some subjects, for `SEARCH SUBJECT`.
pub fn subject_word(rng: &mut impl Rng) -> &'static str {
    // Skip the short filler words at the end of the list: they match
    // nearly every subject.
    let topical = WORDS.iter().take_while(|w| **w != "the").count();
    WORDS.get(rng.random_range(0..topical.max(1))).copied().unwrap_or("report")
}

/// A surname of some header From, for `SEARCH FROM`.
pub fn sender_word(rng: &mut impl Rng) -> &'static str {
    let (name, _) = SENDERS.get(rng.random_range(0..SENDERS.len())).copied().unwrap_or(SENDERS[0]);
    name.rsplit(' ').next().unwrap_or(name)
}

/// RFC 5322 §3.6: the origination date, originator, destination,
/// identification and informational fields, plus RFC 2045 MIME-Version.
fn render_header(sender: &(&str, &str), f: &Fields<'_>, date: &str, id: &str, subject: &str) -> String {
    let (name, local) = sender;
    let mut h = format!(
        "From: {name} <{local}@{DOMAIN}>\r\nTo: <{}>\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: {id}\r\nMIME-Version: 1.0\r\n",
        f.to
    );
    if let Some(b) = f.bench_id {
        h += &format!("X-Bench-Id: {b}\r\n");
    }
    h
}

/// RFC 5322 §3.6.4 msg-id, fixed width for a given run.
fn message_id(run: &str, seq: u64, nonce: u32) -> String {
    format!("<{run}.{seq:012}.{nonce:08x}@{DOMAIN}>")
}

/// RFC 5322 §3.3 date-time (the RFC 2822 form is the same).
fn date_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 2026 00:00:00 +0000".to_owned())
}

/// A subject of exactly `len` characters.
fn subject(rng: &mut impl Rng, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS.get(rng.random_range(0..WORDS.len())).copied().unwrap_or("note"));
    }
    s.truncate(len);
    if s.ends_with(' ') {
        s.pop();
        s.push('s');
    }
    s
}

/// The MIME header fields, blank line and content, `budget` octets in all.
fn make_body(rng: &mut StdRng, budget: usize, index: usize) -> Vec<u8> {
    let mixed_share = if budget >= 16 * 1024 { 0.7 } else { 0.3 };
    if budget >= 4096
        && rng.random_bool(mixed_share)
        && let Some(body) = mixed_body(rng, budget, index)
    {
        return body;
    }
    plain_body(rng, budget)
}

const SIGNATURE: &[u8] = b"-- \r\nsent by loadgen\r\n";

fn plain_body(rng: &mut StdRng, budget: usize) -> Vec<u8> {
    let head = b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n";
    let mut out = Vec::with_capacity(budget);
    out.extend_from_slice(head);
    text(rng, budget.saturating_sub(head.len() + SIGNATURE.len()), &mut out);
    out.extend_from_slice(SIGNATURE);
    out
}

/// RFC 2046 §5.1.1: each boundary delimiter is CRLF "--" boundary, the
/// close delimiter adds "--"; the preamble is ignored by readers.
fn mixed_body(rng: &mut StdRng, budget: usize, index: usize) -> Option<Vec<u8>> {
    let boundary = format!("=_lg_{:016x}", rng.random::<u64>());
    let (mime, ext) = ATTACHMENTS.get(rng.random_range(0..ATTACHMENTS.len())).copied()?;
    let file = format!("{}-{index}.{ext}", WORDS.get(index % WORDS.len()).copied().unwrap_or("file"));
    let pre = format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    );
    let mid = format!(
        "\r\n--{boundary}\r\nContent-Type: {mime}; name=\"{file}\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{file}\"\r\n\r\n"
    );
    let post = format!("\r\n--{boundary}--\r\n");
    let room = budget.checked_sub(pre.len() + mid.len() + post.len())?;
    // Most of the room to the attachment, and at least 300 octets of text.
    let wrapped = ((room as f64) * rng.random_range(0.6..0.9)) as usize;
    let wrapped = wrapped.min(room.checked_sub(300)?);
    let mut raw = vec![0u8; wrapped / (MAX_LINE + 2) * 57];
    rng.fill(&mut raw[..]);
    let attachment = base64_lines(&raw);
    let text_len = room.checked_sub(attachment.len())?;
    let mut out = Vec::with_capacity(budget);
    out.extend_from_slice(pre.as_bytes());
    text(rng, text_len, &mut out);
    out.extend_from_slice(mid.as_bytes());
    out.extend_from_slice(&attachment);
    out.extend_from_slice(post.as_bytes());
    Some(out)
}

/// RFC 2045 §6.8: base64 in lines of at most 76 characters.
fn base64_lines(raw: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / MAX_LINE * 2 + 2);
    for line in encoded.as_bytes().chunks(MAX_LINE) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Exactly `len` octets of text lines (CRLF, ≤ 76 characters each, some
/// paragraph breaks, now and then a line starting with "." so that SMTP
/// transparency and POP3 byte-stuffing get exercised). A lone octet
/// left over is an "x" without CRLF; callers always follow the text
/// with more lines.
fn text(rng: &mut StdRng, len: usize, out: &mut Vec<u8>) {
    let end = out.len() + len;
    while out.len() < end {
        let remaining = end - out.len();
        if remaining == 1 {
            out.push(b'x');
            break;
        }
        if remaining <= MAX_LINE + 2 {
            line(rng, remaining - 2, out);
            break;
        }
        let mut width = match rng.random_range(0..60) {
            0..=5 => 0,
            6 => 1,
            _ => rng.random_range(30..=MAX_LINE),
        };
        if remaining - (width + 2) == 1 {
            width += 1;
        }
        if width == 1 {
            out.extend_from_slice(b".\r\n");
        } else {
            line(rng, width, out);
        }
    }
}

/// One line of exactly `width` characters plus CRLF.
fn line(rng: &mut StdRng, width: usize, out: &mut Vec<u8>) {
    let start = out.len();
    if width > 8 && rng.random_range(0..40) == 0 {
        out.extend_from_slice(b"...");
    }
    while out.len() - start < width {
        if out.len() > start {
            out.push(b' ');
        }
        out.extend_from_slice(WORDS.get(rng.random_range(0..WORDS.len())).copied().unwrap_or("x").as_bytes());
    }
    out.truncate(start + width);
    if out.last() == Some(&b' ') {
        out.pop();
        out.push(b'e');
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn corpus(seed: u64, min: usize, max: usize) -> Corpus {
        corpus_with(seed, min, max, Some(20))
    }

    fn corpus_with(seed: u64, min: usize, max: usize, bench_id: Option<usize>) -> Corpus {
        let mut rng = StdRng::seed_from_u64(seed);
        Corpus::new(&mut rng, SizeRange::new(min, max).expect("range"), "r0a1b2c3", 24, bench_id)
    }

    fn lines(msg: &[u8]) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = msg.split_inclusive(|&b| b == b'\n').collect();
        if v.last().is_some_and(|l| l.is_empty()) {
            v.pop();
        }
        v
    }

    #[test]
    fn sizes_within_bounds_and_exact() {
        for (min, max) in [(2048, 204_800), (1024, 1100), (5000, 5000), (10_000, 10_240)] {
            let c = corpus(7, min, max);
            let mut rng = StdRng::seed_from_u64(1);
            for seq in 0..300u64 {
                let to = format!("load{}@bench.test", seq % 50 + 1);
                let id = format!("r0a1b2c3-{seq}");
                let msg = c.message(&mut rng, &Fields { to: &to, seq, bench_id: Some(&id) }, false);
                assert!((min..=max).contains(&msg.len()), "{} not in {min}..={max}", msg.len());
            }
            for (target, _) in c.pool() {
                assert!((min..=max).contains(&target));
            }
        }
    }

    #[test]
    fn log_uniform_mostly_small() {
        let c = corpus(3, 2048, 204_800);
        let small = c.pool().filter(|(s, _)| *s < 20_480).count();
        // ln-uniform: half the mass is below sqrt(min*max) ≈ 20 KB.
        assert!(small > POOL / 3 && small < POOL * 2 / 3, "{small} of {POOL} below 20 KB");
        assert!(c.pool().any(|(_, s)| s == Shape::Mixed));
        assert!(c.pool().any(|(_, s)| s == Shape::Plain));
    }

    #[test]
    fn well_formed_lines() {
        let c = corpus_with(11, 2048, 65_536, None);
        let mut rng = StdRng::seed_from_u64(2);
        let mut saw_dot = false;
        for seq in 0..200u64 {
            let msg = c.message(&mut rng, &Fields { to: "load3@bench.test", seq, bench_id: None }, false);
            assert!(msg.ends_with(b"\r\n"));
            for l in lines(&msg) {
                assert!(l.ends_with(b"\r\n"), "bare line end in {:?}", String::from_utf8_lossy(l));
                let content = &l[..l.len() - 2];
                assert!(!content.contains(&b'\r') && !content.contains(&b'\n'));
                assert!(
                    content.len() <= 78,
                    "line of {} octets: {:?}",
                    content.len(),
                    String::from_utf8_lossy(content)
                );
                assert!(content.iter().all(|b| b.is_ascii() && !b.is_ascii_control()));
                saw_dot |= content.starts_with(b".");
            }
            let text = String::from_utf8_lossy(&msg);
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            for field in
                ["From: ", "To: <load3@bench.test>", "Subject: ", "Date: ", "Message-ID: <", "MIME-Version: 1.0"]
            {
                assert!(head.contains(field), "{field} missing");
            }
            if head.contains("multipart/mixed") {
                assert!(text.contains("Content-Transfer-Encoding: base64"));
                assert!(text.trim_end().ends_with("--"));
            }
        }
        assert!(saw_dot, "no line starting with '.' in 200 messages");
    }

    #[test]
    fn stuffed_form_matches_dot_stuffing() {
        let c = corpus(5, 2048, 32_768);
        let fields = Fields { to: "load1@bench.test", seq: 9, bench_id: Some("r-9") };
        let raw = c.message(&mut StdRng::seed_from_u64(4), &fields, false);
        let stuffed = c.message(&mut StdRng::seed_from_u64(4), &fields, true);
        // Same seed, same message, except Date may tick over a second.
        let strip_date = |m: &[u8]| {
            String::from_utf8_lossy(m).lines().filter(|l| !l.starts_with("Date: ")).collect::<Vec<_>>().join("\n")
        };
        assert_eq!(strip_date(&dot_stuff(&raw)), strip_date(&stuffed));
        assert!(String::from_utf8_lossy(&raw).contains("\r\nX-Bench-Id: r-9\r\n"));
    }

    #[test]
    fn exact_text() {
        let mut rng = StdRng::seed_from_u64(9);
        for len in 0..400 {
            let mut out = Vec::new();
            text(&mut rng, len, &mut out);
            assert_eq!(out.len(), len);
        }
    }

    #[test]
    fn size_range_checks() {
        assert!(SizeRange::new(100, 2000).is_err());
        assert!(SizeRange::new(4000, 2000).is_err());
        assert!(SizeRange::new(2048, 2048).is_ok());
    }
}
