//! An IMAP client session (RFC 9051 / RFC 3501): tagged commands, one at a
//! time, each read through to its tagged completion.

use std::net::SocketAddr;

use crate::conn::Conn;

use super::ImapError;
use super::codec::{Kind, Response, Status, Untagged, code_number, parse_response};

/// What SELECT reported (RFC 9051 §6.3.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selected {
    /// `* n EXISTS`.
    pub exists: u32,
    /// `* OK [UIDNEXT n]`; every message appended later gets a UID ≥ this.
    pub uid_next: Option<u32>,
}

/// The tagged completion of a command that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub code: Option<String>,
    pub text: String,
}

/// An IDLE command in progress (RFC 2177): the server said `+`.
#[derive(Debug)]
pub struct Idling {
    tag: String,
}

pub struct ImapClient {
    conn: Conn,
    next_tag: u32,
    capabilities: Vec<String>,
}

impl ImapClient {
    /// Connects and reads the greeting (RFC 9051 §7.1): OK or PREAUTH,
    /// possibly with a CAPABILITY response code; BYE is a refusal.
    pub async fn connect(addr: SocketAddr) -> Result<Self, ImapError> {
        let mut client = Self { conn: Conn::connect(addr).await?, next_tag: 1, capabilities: Vec::new() };
        let greeting = client.read_response().await?;
        match greeting.untagged() {
            Some(Untagged::Status { status: Status::Ok, code, .. }) => client.note_capability_code(code.as_deref()),
            Some(Untagged::Preauth) => {}
            _ => return Err(ImapError::Syntax("greeting is neither OK nor PREAUTH".into())),
        }
        Ok(client)
    }

    /// LOGIN with quoted strings (RFC 9051 §6.2.3), then learns the
    /// capabilities, which may change after authentication.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), ImapError> {
        let command = format!("LOGIN {} {}", quoted(user)?, quoted(password)?);
        let done = self.run_with(&command, |_| Ok(())).await?;
        self.capabilities.clear();
        self.note_capability_code(done.code.as_deref());
        if self.capabilities.is_empty() {
            let mut caps = Vec::new();
            self.run_with("CAPABILITY", |r| {
                if let Some(Untagged::Capability(c)) = r.untagged() {
                    caps = c;
                }
                Ok(())
            })
            .await?;
            self.capabilities = caps;
        }
        Ok(())
    }

    fn note_capability_code(&mut self, code: Option<&str>) {
        if let Some(list) = code.and_then(|c| c.strip_prefix("CAPABILITY ")) {
            self.capabilities = list.split_whitespace().map(str::to_ascii_uppercase).collect();
        }
    }

    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c.eq_ignore_ascii_case(name))
    }

    /// SELECT (RFC 9051 §6.3.2).
    pub async fn select(&mut self, mailbox: &str) -> Result<Selected, ImapError> {
        let mut selected = Selected::default();
        self.run_with(&format!("SELECT {}", quoted(mailbox)?), |r| {
            match r.untagged() {
                Some(Untagged::Exists(n)) => selected.exists = n,
                Some(Untagged::Status { code: Some(code), .. }) => {
                    if let Some(n) = code_number(&code, "UIDNEXT") {
                        selected.uid_next = Some(n);
                    }
                }
                _ => {}
            }
            Ok(())
        })
        .await?;
        Ok(selected)
    }

    /// APPEND (RFC 9051 §6.3.12). The message goes as a synchronising
    /// literal, waiting for `+`, unless the server advertised LITERAL+
    /// (RFC 7888 §3), in which case `{n+}` sends it in the same write.
    pub async fn append(&mut self, mailbox: &str, flags: &[&str], message: &[u8]) -> Result<(), ImapError> {
        let flags = if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(" ")) };
        let non_sync = self.has_capability("LITERAL+");
        let plus = if non_sync { "+" } else { "" };
        let tag = self.tag();
        let head = format!("{tag} APPEND {}{flags} {{{}{plus}}}\r\n", quoted(mailbox)?, message.len());
        if non_sync {
            let mut all = head.into_bytes();
            all.extend_from_slice(message);
            all.extend_from_slice(b"\r\n");
            self.conn.send(&all).await?;
        } else {
            self.conn.send(head.as_bytes()).await?;
            loop {
                let r = self.read_response().await?;
                match r.kind() {
                    Kind::Continuation => break,
                    Kind::Untagged => {}
                    Kind::Tagged { .. } => {
                        return Err(completion_error("APPEND", &tag, &r).unwrap_or(ImapError::NoContinuation));
                    }
                }
            }
            self.conn.send(message).await?;
            self.conn.send(b"\r\n").await?;
        }
        self.complete("APPEND", &tag, |_| Ok(())).await?;
        Ok(())
    }

    /// Starts IDLE (RFC 2177 §3) and waits for the `+`. Untagged
    /// responses that come before it are passed to `on_untagged`.
    pub async fn idle(
        &mut self,
        mut on_untagged: impl FnMut(&Response) -> Result<(), ImapError>,
    ) -> Result<Idling, ImapError> {
        let tag = self.send("IDLE").await?;
        loop {
            let r = self.read_response().await?;
            match r.kind() {
                Kind::Continuation => return Ok(Idling { tag }),
                Kind::Untagged => on_untagged(&r)?,
                Kind::Tagged { .. } => {
                    return Err(completion_error("IDLE", &tag, &r).unwrap_or(ImapError::NoContinuation));
                }
            }
        }
    }

    /// Ends IDLE with DONE and reads through to its tagged completion.
    pub async fn done(
        &mut self,
        idling: Idling,
        on_untagged: impl FnMut(&Response) -> Result<(), ImapError>,
    ) -> Result<(), ImapError> {
        self.conn.send(b"DONE\r\n").await?;
        self.complete("IDLE", &idling.tag, on_untagged).await?;
        Ok(())
    }

    /// Sends `command` under a new tag, passes each untagged response to
    /// `on_untagged`, and returns the tagged OK; NO and BAD are errors.
    pub async fn run_with(
        &mut self,
        command: &str,
        on_untagged: impl FnMut(&Response) -> Result<(), ImapError>,
    ) -> Result<Completion, ImapError> {
        let tag = self.send(command).await?;
        self.complete(verb(command), &tag, on_untagged).await
    }

    /// Writes `tag command` CRLF; returns the tag.
    async fn send(&mut self, command: &str) -> Result<String, ImapError> {
        let tag = self.tag();
        self.conn.send(format!("{tag} {command}\r\n").as_bytes()).await?;
        Ok(tag)
    }

    fn tag(&mut self) -> String {
        let tag = format!("A{}", self.next_tag);
        self.next_tag += 1;
        tag
    }

    /// Reads until the tagged response for `tag` (RFC 9051 §2.2.2).
    async fn complete(
        &mut self,
        verb: &str,
        tag: &str,
        mut on_untagged: impl FnMut(&Response) -> Result<(), ImapError>,
    ) -> Result<Completion, ImapError> {
        loop {
            let r = self.read_response().await?;
            match r.kind() {
                Kind::Untagged => on_untagged(&r)?,
                Kind::Continuation => return Err(ImapError::Syntax(format!("unexpected continuation during {verb}"))),
                Kind::Tagged { status: Status::Ok, tag: t, code, text } if t == tag => {
                    return Ok(Completion { code, text });
                }
                Kind::Tagged { .. } => {
                    return Err(completion_error(verb, tag, &r)
                        .unwrap_or_else(|| ImapError::Syntax(format!("response for another tag during {verb}"))));
                }
            }
        }
    }

    /// The next response; an untagged BYE (RFC 9051 §7.1.5) is an error.
    pub async fn read_response(&mut self) -> Result<Response, ImapError> {
        let r = self.conn.read_item(parse_response).await?;
        if let Some(Untagged::Bye(text)) = r.untagged() {
            return Err(ImapError::Bye(text));
        }
        Ok(r)
    }

    /// LOGOUT (RFC 9051 §6.1.3): the server says BYE, then OK, then closes.
    pub async fn logout(mut self) -> Result<(), ImapError> {
        let tag = self.send("LOGOUT").await?;
        loop {
            match self.read_response().await {
                Err(ImapError::Bye(_)) => continue,
                Err(ImapError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
                Ok(r) => {
                    if matches!(r.kind(), Kind::Tagged { tag: t, .. } if t == tag) {
                        break;
                    }
                }
            }
        }
        self.conn.shutdown().await;
        Ok(())
    }

    /// Octets received on this connection so far.
    pub fn bytes_in(&self) -> u64 {
        self.conn.bytes_in()
    }
}

/// The error for a tagged NO or BAD with `tag`, if `r` is one.
fn completion_error(verb: &str, tag: &str, r: &Response) -> Option<ImapError> {
    match r.kind() {
        Kind::Tagged { tag: t, status: Status::No, text, .. } if t == tag => {
            Some(ImapError::No { command: verb.to_owned(), text })
        }
        Kind::Tagged { tag: t, status: Status::Bad, text, .. } if t == tag => {
            Some(ImapError::Bad { command: verb.to_owned(), text })
        }
        _ => None,
    }
}

/// The command name for error messages: never the arguments (LOGIN's
/// password), but `UID FETCH` rather than just `UID`.
fn verb(command: &str) -> &str {
    let mut ends = command.match_indices(' ').map(|(i, _)| i);
    let first = ends.next().unwrap_or(command.len());
    let name = command.get(..first).unwrap_or(command);
    if name.eq_ignore_ascii_case("UID") {
        let second = ends.next().unwrap_or(command.len());
        return command.get(..second).unwrap_or(command);
    }
    name
}

/// A quoted string (RFC 9051 §4.3: `"` and `\` escaped; no CR or LF).
pub fn quoted(s: &str) -> Result<String, ImapError> {
    if s.contains(['\r', '\n', '\0']) {
        return Err(ImapError::Unquotable);
    }
    Ok(format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quoted("load1@bench.test").expect("q"), "\"load1@bench.test\"");
        assert_eq!(quoted(r#"pa"ss\word"#).expect("q"), r#""pa\"ss\\word""#);
        assert!(quoted("a\r\nb").is_err());
    }

    #[test]
    fn verbs_hide_arguments() {
        assert_eq!(verb("LOGIN \"u\" \"secret\""), "LOGIN");
        assert_eq!(verb("UID FETCH 1:* (FLAGS)"), "UID FETCH");
        assert_eq!(verb("NOOP"), "NOOP");
        assert_eq!(verb("uid"), "uid");
    }
}
