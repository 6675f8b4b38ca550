//! Service binaries started as processes by tests: they bind port 0 and
//! report the ports they got in a ready file (`mailfleet_runtime::ready`),
//! so no test guesses a free port that another process can take first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::process::Child;

/// Wait until `child` wrote `ready_file` (the `--ready-file` it was given)
/// and return its listeners by configuration key. An error when the child
/// exits first or nothing comes within `within`.
pub async fn wait_ready(
    child: &mut Child,
    ready_file: &Path,
    within: Duration,
) -> Result<BTreeMap<String, SocketAddr>, String> {
    let deadline = Instant::now() + within;
    loop {
        match mailfleet_runtime::ready::read(ready_file) {
            Ok(Some(listeners)) => return Ok(listeners),
            Ok(None) => {}
            Err(e) => return Err(format!("reading {}: {e}", ready_file.display())),
        }
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("exited with {status} before it was ready")),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the process: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The listener configured by `key` in a ready file; panics when missing.
#[track_caller]
pub fn listener(listeners: &BTreeMap<String, SocketAddr>, key: &str) -> SocketAddr {
    *listeners.get(key).unwrap_or_else(|| panic!("no {key} in the ready file: {listeners:?}"))
}
