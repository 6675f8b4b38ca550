//! storage's MIME parser (ENVELOPE, BODYSTRUCTURE with byte offsets, search
//! text), which every stored message goes through: no panic, and every
//! part's byte ranges lie inside the message (IMAP serves them as they are).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailfleet_proto::storage::v1::BodyPart;

fn check(part: &BodyPart, len: u64, depth: usize) {
    assert!(depth <= 200, "nesting is bounded");
    assert!(part.header_offset.saturating_add(part.header_length) <= len, "{part:?}");
    assert!(part.body_offset.saturating_add(part.body_length) <= len, "{part:?}");
    for child in part.parts.iter().chain(part.message_body.as_deref()) {
        check(child, len, depth + 1);
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = mailfleet_fuzz::storage::mime::parse(data);
    let len = data.len() as u64;
    assert!(parsed.header_size <= len);
    check(&parsed.body_structure, len, 0);
});
