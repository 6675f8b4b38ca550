//! smtp-ingress's command reader (line framing, smtp-proto, DSN parameter
//! decoding) and SASL line reader, fed in two reads split where the first
//! input byte says: no panic, every byte consumed, bounded output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailfleet_fuzz::smtp::codec::{CommandReader, LineReader, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let split = usize::from(split).min(data.len());
    let mut reader = CommandReader::default();
    let mut parsed = 0usize;
    for chunk in [&data[..split], &data[split..]] {
        let mut it = chunk.iter();
        while let Some(p) = reader.next(&mut it) {
            parsed += 1;
            if let Parsed::Command(cmd) = &p {
                // What the session would echo must not break a line.
                if let smtp_proto::Request::Rcpt { to } = cmd {
                    assert!(!to.orcpt.as_deref().unwrap_or("").contains(['\r', '\n']));
                }
                if let smtp_proto::Request::Mail { from } = cmd {
                    assert!(!from.env_id.as_deref().unwrap_or("").contains(['\r', '\n']));
                }
            }
        }
        assert!(it.as_slice().is_empty(), "the reader leaves nothing unread");
    }
    assert!(parsed <= data.len());
    let mut lines = LineReader::default();
    let mut it = data.iter();
    while lines.next(&mut it, 512).is_some() {}
});
