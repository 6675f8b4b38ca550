//! A POP3 client session (RFC 1939): AUTHORIZATION with USER/PASS, then
//! TRANSACTION commands, then QUIT. No DELE, so a run leaves the
//! maildrop as it found it.

use std::net::SocketAddr;

use crate::conn::Conn;

use super::Pop3Error;
use super::codec::{Status, parse_multiline, parse_status};

/// A message number (RFC 1939 §5: 1-based, valid for the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MsgNum(pub u32);

pub struct Pop3Client {
    conn: Conn,
}

impl Pop3Client {
    /// Connects and reads the `+OK` greeting (RFC 1939 §4).
    pub async fn connect(addr: SocketAddr) -> Result<Self, Pop3Error> {
        let mut client = Self { conn: Conn::connect(addr).await? };
        client.status("greeting").await?;
        Ok(client)
    }

    /// USER and PASS (RFC 1939 §7). The maildrop is locked from here on.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), Pop3Error> {
        if user.contains(['\r', '\n']) || password.contains(['\r', '\n']) {
            return Err(Pop3Error::Unsendable);
        }
        self.command("USER", &format!("USER {user}")).await?;
        self.command("PASS", &format!("PASS {password}")).await?;
        Ok(())
    }

    /// STAT (§5): `+OK nn mm`, message count and maildrop size in octets.
    pub async fn stat(&mut self) -> Result<(u32, u64), Pop3Error> {
        let text = self.command("STAT", "STAT").await?;
        let mut words = text.split_whitespace();
        let count = words.next().and_then(|w| w.parse().ok());
        let size = words.next().and_then(|w| w.parse().ok());
        count.zip(size).ok_or_else(|| Pop3Error::Syntax(format!("STAT reply {text:?}")))
    }

    /// LIST (§5): a scan listing, `msg octets` per message.
    pub async fn list(&mut self) -> Result<Vec<(MsgNum, u64)>, Pop3Error> {
        let body = self.multiline("LIST", "LIST").await?;
        listing(&body, |w| w.parse().ok())
    }

    /// UIDL (§7): `msg unique-id` per message.
    pub async fn uidl(&mut self) -> Result<Vec<(MsgNum, String)>, Pop3Error> {
        let body = self.multiline("UIDL", "UIDL").await?;
        listing(&body, |w| Some(w.to_owned()))
    }

    /// RETR (§5): the whole message, un-stuffed.
    pub async fn retr(&mut self, msg: MsgNum) -> Result<Vec<u8>, Pop3Error> {
        self.multiline("RETR", &format!("RETR {}", msg.0)).await
    }

    /// QUIT (§6). Without DELE the UPDATE state removes nothing.
    pub async fn quit(mut self) -> Result<(), Pop3Error> {
        self.command("QUIT", "QUIT").await?;
        self.conn.shutdown().await;
        Ok(())
    }

    async fn command(&mut self, verb: &'static str, line: &str) -> Result<String, Pop3Error> {
        self.conn.send(format!("{line}\r\n").as_bytes()).await?;
        self.status(verb).await
    }

    async fn multiline(&mut self, verb: &'static str, line: &str) -> Result<Vec<u8>, Pop3Error> {
        self.command(verb, line).await?;
        self.conn.read_item(parse_multiline).await
    }

    async fn status(&mut self, verb: &'static str) -> Result<String, Pop3Error> {
        match self.conn.read_item(parse_status).await? {
            Status::Ok(text) => Ok(text),
            Status::Err(text) => Err(Pop3Error::Err { command: verb, text }),
        }
    }

    pub fn bytes_in(&self) -> u64 {
        self.conn.bytes_in()
    }
}

/// Lines of `msg value` (LIST and UIDL, RFC 1939 §5 and §7).
fn listing<T>(body: &[u8], value: impl Fn(&str) -> Option<T>) -> Result<Vec<(MsgNum, T)>, Pop3Error> {
    String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            let msg = words.next().and_then(|w| w.parse().ok()).map(MsgNum);
            let val = words.next().and_then(&value);
            msg.zip(val).ok_or_else(|| Pop3Error::Syntax(format!("listing line {line:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings() {
        let sizes = listing(b"1 120\r\n2 3000\r\n", |w| w.parse::<u64>().ok()).expect("list");
        assert_eq!(sizes, [(MsgNum(1), 120), (MsgNum(2), 3000)]);
        let uids = listing(b"1 whqtswO00WBw418f9t5JxYwZ\r\n", |w| Some(w.to_owned())).expect("uidl");
        assert_eq!(uids[0].1, "whqtswO00WBw418f9t5JxYwZ");
        assert!(listing(b"one 2\r\n", |w| w.parse::<u64>().ok()).is_err());
    }
}
