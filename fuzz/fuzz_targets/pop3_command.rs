//! pop3-gateway's line finder and command parser: no panic, and a parsed
//! command written back parses to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailfleet_fuzz::pop3::codec::{Line, next_line, parse_command};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        let len = match next_line(rest, 255) {
            Line::Complete(n) => n,
            Line::NeedMore => rest.len(),
            Line::TooLong => match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    rest = &rest[i + 1..];
                    continue;
                }
                None => return,
            },
        };
        let (line, tail) = rest.split_at(len);
        if let Ok(cmd) = parse_command(line) {
            let again = parse_command(cmd.to_line().as_bytes());
            assert_eq!(again.as_ref().ok(), Some(&cmd), "{cmd:?} written back as {:?}", cmd.to_line());
        }
        rest = tail;
    }
});
