//! The PROXY protocol v1/v2 header parser (runtime), which reads what a
//! load balancer, or anyone pretending to be one, sends first: no panic,
//! and a complete header never claims more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailfleet_fuzz::runtime::proxy::{Parse, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Complete { len, .. }) = parse(data) {
        assert!(len <= data.len());
    }
});
