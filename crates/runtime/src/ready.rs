//! The ready file: once a service serves, it can write the addresses it
//! bound there (`--ready-file`, `MAILFLEET_READY_FILE`). A supervisor that
//! starts it with port 0 (the test harness does) learns the ports the
//! kernel chose instead of guessing a free one beforehand, which another
//! process could take before the service binds it.
//!
//! The file has one `key address` line per listener, the key being the
//! configuration key that set it (`mx_listen 127.0.0.1:40123`). It is
//! written under a temporary name and renamed, so a reader never sees half
//! of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// Write `listeners` (configuration key, bound address; unset ones are
/// left out) to `path`.
pub fn announce(path: &Path, listeners: &[(&str, Option<SocketAddr>)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (key, addr) in listeners {
        if let Some(addr) = addr {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "{key} {addr}");
        }
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// The listeners in a ready file; `None` while it does not exist yet.
pub fn read(path: &Path) -> std::io::Result<Option<BTreeMap<String, SocketAddr>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut listeners = BTreeMap::new();
    for line in text.lines() {
        let parsed = line.split_once(' ').and_then(|(key, addr)| Some((key, addr.parse().ok()?)));
        let Some((key, addr)) = parsed else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not `key address`: {line:?}", path.display()),
            ));
        };
        listeners.insert(key.to_string(), addr);
    }
    Ok(Some(listeners))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_listeners_read_back_and_unset_ones_are_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready");
        assert!(read(&path).expect("read").is_none(), "no file yet");
        let mx: SocketAddr = "127.0.0.1:40123".parse().expect("addr");
        announce(&path, &[("mx_listen", Some(mx)), ("health_listen", None)]).expect("announce");
        let listeners = read(&path).expect("read").expect("written");
        assert_eq!(listeners, BTreeMap::from([("mx_listen".to_string(), mx)]));
        assert!(!dir.path().join("ready.partial").exists(), "renamed into place");
    }

    #[test]
    fn a_garbled_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready");
        std::fs::write(&path, "mx_listen not-an-address\n").expect("write");
        assert!(read(&path).is_err());
    }
}
