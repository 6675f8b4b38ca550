//! Standard output for listings that are piped into other tools.
//!
//! `println!` panics when the reader has gone away (`mailctl account list |
//! head -1`: Rust ignores SIGPIPE, so the write fails with EPIPE). A reader
//! that stopped reading wanted no more, so that ends mailctl quietly and
//! successfully, as it would end a C tool killed by SIGPIPE without a
//! message; any other write error is reported.

use std::io::{ErrorKind, Write};
use std::process;

/// Write one line to standard output (see the module).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(err) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()) {
        if err.kind() == ErrorKind::BrokenPipe {
            process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {err}");
        process::exit(1);
    }
}

/// `println!` that ends mailctl quietly when the reader has gone away.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use out;
