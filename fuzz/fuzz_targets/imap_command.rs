//! imap-gateway's framer and command decoding (imap-codec plus our own
//! extension parser), in every mode, with a small literal limit: no panic,
//! and the framer always comes back asking for more.
#![no_main]

use mailfleet_fuzz::imap::codec::{Framer, Input, Limits, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else { return };
    let mode = match selector % 3 {
        0 => Mode::Command,
        1 => Mode::AuthData,
        _ => Mode::IdleDone,
    };
    let split = (usize::from(selector) * 7).min(data.len());
    let mut framer = Framer::new(64 * 1024);
    for chunk in [&data[..split], &data[split..]] {
        framer.push(chunk);
        // Every event consumes input, so this ends; the bound catches a loop.
        for _ in 0..=data.len() + 1 {
            match framer.next(mode, Limits { line: 4096, literals: 1024 }) {
                Input::NeedMore => break,
                Input::LiteralTooBig { sync: false, .. } | Input::LineTooLong => return,
                _ => {}
            }
        }
        framer.shrink();
    }
});
