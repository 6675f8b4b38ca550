//! A tiny in-process "mail system" on 127.0.0.1:0 for testing the
//! clients: SMTP delivers straight into an in-memory store that IMAP and
//! POP3 serve. It implements only what loadgen sends, loosely; it tests
//! the client, not a mail system.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const PASSWORD: &str = "pw";

#[derive(Clone, Default)]
struct Msg {
    uid: u32,
    bytes: Vec<u8>,
    flags: Vec<String>,
}

#[derive(Default)]
struct Boxes {
    boxes: HashMap<String, (u32, Vec<Msg>)>,
}

/// The shared mail store; `changes` ticks on every delivery.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Boxes>>,
    changes: watch::Sender<u64>,
}

impl Store {
    pub fn new() -> Self {
        Self { inner: Arc::default(), changes: watch::channel(0).0 }
    }

    pub fn deliver(&self, user: &str, bytes: Vec<u8>, flags: Vec<String>) {
        {
            let mut b = self.inner.lock().expect("lock");
            let (next, msgs) = b.boxes.entry(user.to_owned()).or_insert((1, Vec::new()));
            msgs.push(Msg { uid: *next, bytes, flags });
            *next += 1;
        }
        self.changes.send_modify(|n| *n += 1);
    }

    fn snapshot(&self, user: &str) -> (u32, Vec<Msg>) {
        self.inner.lock().expect("lock").boxes.get(user).cloned().unwrap_or((1, Vec::new()))
    }

    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        self.snapshot(user).1.into_iter().map(|m| m.bytes).collect()
    }
}

/// Which optional behaviour the fake IMAP server shows.
#[derive(Clone, Copy)]
pub struct ImapOptions {
    pub idle: bool,
    pub literal_plus: bool,
    /// IDLE is accepted but never announces anything.
    pub idle_silent: bool,
}

pub struct Fake {
    pub store: Store,
    pub smtp: SocketAddr,
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
}

impl Fake {
    pub async fn start(imap: ImapOptions) -> Self {
        let store = Store::new();
        let smtp = serve(store.clone(), smtp_session).await;
        let imap = serve(store.clone(), move |s, st| imap_session(s, st, imap)).await;
        let pop3 = serve(store.clone(), pop3_session).await;
        Self { store, smtp, imap, pop3 }
    }
}

async fn serve<F, Fut>(store: Store, session: F) -> SocketAddr
where
    F: Fn(TcpStream, Store) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(session(stream, store.clone()));
        }
    });
    addr
}

struct Io {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl Io {
    fn new(s: TcpStream) -> Self {
        let (r, w) = s.into_split();
        Self { lines: BufReader::new(r).lines(), w }
    }

    async fn line(&mut self) -> std::io::Result<Option<String>> {
        self.lines.next_line().await
    }

    async fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.w.write_all(text.as_bytes()).await
    }

    async fn read_exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.lines.get_mut().read_exact(&mut buf).await?;
        Ok(buf)
    }
}

fn unstuff_line(line: &str) -> &str {
    line.strip_prefix('.').unwrap_or(line)
}

async fn smtp_session(s: TcpStream, store: Store) -> std::io::Result<()> {
    let mut io = Io::new(s);
    io.send("220 fake ESMTP\r\n").await?;
    let mut rcpt = None::<String>;
    while let Some(line) = io.line().await? {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            io.send("250-fake\r\n250-PIPELINING\r\n250 8BITMIME\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            io.send("250 2.1.0 Ok\r\n").await?;
        } else if let Some(to) = upper.strip_prefix("RCPT TO:<") {
            if to.starts_with("REJECT") {
                io.send("550 5.1.1 no such user\r\n").await?;
            } else {
                rcpt = Some(line["RCPT TO:<".len()..line.len() - 1].to_owned());
                io.send("250 2.1.5 Ok\r\n").await?;
            }
        } else if upper == "DATA" {
            let Some(to) = rcpt.take() else {
                io.send("554 5.5.1 no valid recipients\r\n").await?;
                continue;
            };
            io.send("354 go ahead\r\n").await?;
            let mut message = Vec::new();
            loop {
                let Some(l) = io.line().await? else { return Ok(()) };
                if l == "." {
                    break;
                }
                message.extend_from_slice(unstuff_line(&l).as_bytes());
                message.extend_from_slice(b"\r\n");
            }
            store.deliver(&to, message, Vec::new());
            io.send("250 2.0.0 Ok: queued\r\n").await?;
        } else if upper == "RSET" {
            rcpt = None;
            io.send("250 Ok\r\n").await?;
        } else if upper == "QUIT" {
            io.send("221 bye\r\n").await?;
            return Ok(());
        } else {
            io.send("502 5.5.2 what\r\n").await?;
        }
    }
    Ok(())
}

fn capabilities(o: ImapOptions) -> String {
    let mut caps = "IMAP4rev1".to_owned();
    if o.idle {
        caps += " IDLE";
    }
    if o.literal_plus {
        caps += " LITERAL+";
    }
    caps
}

/// RFC 3501 §6.4.8: `n:*` with n above every UID still returns the last message.
fn uid_range(set: &str, msgs: &[Msg]) -> Vec<usize> {
    let max = msgs.last().map_or(0, |m| m.uid);
    let bound = |s: &str| if s == "*" { max } else { s.parse().unwrap_or(0) };
    let (lo, hi) = match set.split_once(':') {
        Some((a, b)) => (bound(a), bound(b)),
        None => (bound(set), bound(set)),
    };
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    (0..msgs.len()).filter(|&i| (lo..=hi).contains(&msgs[i].uid)).collect()
}

fn header_field(message: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut out = String::new();
    for line in head.split("\r\n") {
        if line.to_ascii_lowercase().starts_with(&format!("{}:", name.to_ascii_lowercase())) {
            out += line;
            out += "\r\n";
        }
    }
    out + "\r\n"
}

async fn imap_session(s: TcpStream, store: Store, o: ImapOptions) -> std::io::Result<()> {
    let mut io = Io::new(s);
    io.send(&format!("* OK [CAPABILITY {}] fake ready\r\n", capabilities(o))).await?;
    let mut user = None::<String>;
    let mut changes = store.changes.subscribe();
    let mut known = 0usize;
    while let Some(line) = io.line().await? {
        let mut parts = line.splitn(3, ' ');
        let tag = parts.next().unwrap_or_default().to_owned();
        let verb = parts.next().unwrap_or_default().to_ascii_uppercase();
        let rest = parts.next().unwrap_or_default().to_owned();
        let mailbox = |user: &Option<String>| store.snapshot(user.as_deref().unwrap_or_default());
        match verb.as_str() {
            "CAPABILITY" => io.send(&format!("* CAPABILITY {}\r\n{tag} OK done\r\n", capabilities(o))).await?,
            "LOGIN" => {
                let args: Vec<&str> = rest.split('"').collect();
                if args.get(3) == Some(&PASSWORD) {
                    user = args.get(1).map(|u| u.to_string());
                    io.send(&format!("{tag} OK logged in\r\n")).await?;
                } else {
                    io.send(&format!("{tag} NO [AUTHENTICATIONFAILED] bad password\r\n")).await?;
                }
            }
            "SELECT" => {
                let (next, msgs) = mailbox(&user);
                known = msgs.len();
                io.send(&format!(
                    "* FLAGS (\\Seen \\Flagged)\r\n* {known} EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT {next}] ok\r\n{tag} OK [READ-WRITE] selected\r\n"
                ))
                .await?;
            }
            "NOOP" => {
                let (_, msgs) = mailbox(&user);
                if msgs.len() != known {
                    known = msgs.len();
                    io.send(&format!("* {known} EXISTS\r\n")).await?;
                }
                io.send(&format!("{tag} OK noop\r\n")).await?;
            }
            "APPEND" => {
                let open = rest.rfind('{').unwrap_or(0);
                let spec = rest[open + 1..rest.len() - 1].to_owned();
                let n: usize = spec.trim_end_matches('+').parse().unwrap_or(0);
                if !spec.ends_with('+') {
                    io.send("+ ready for literal\r\n").await?;
                }
                let bytes = io.read_exact(n).await?;
                let tail = io.line().await?.unwrap_or_default();
                assert!(tail.is_empty(), "junk after the APPEND literal: {tail:?}");
                let flags = if rest.contains("\\Seen") { vec!["\\Seen".to_owned()] } else { vec![] };
                store.deliver(user.as_deref().unwrap_or_default(), bytes, flags);
                io.send(&format!("{tag} OK [APPENDUID 7 1] appended\r\n")).await?;
            }
            "UID" => {
                let mut words = rest.splitn(3, ' ');
                let sub = words.next().unwrap_or_default().to_ascii_uppercase();
                let set = words.next().unwrap_or_default().to_owned();
                let items = words.next().unwrap_or_default().to_ascii_uppercase();
                let (_, msgs) = mailbox(&user);
                match sub.as_str() {
                    "FETCH" => {
                        for i in uid_range(&set, &msgs) {
                            let m = &msgs[i];
                            let mut head = format!("* {} FETCH (UID {}", i + 1, m.uid);
                            if items.contains("FLAGS") {
                                head += &format!(" FLAGS ({})", m.flags.join(" "));
                            }
                            if items.contains("ENVELOPE") {
                                head += " ENVELOPE (\"Mon, 1 Jan 2024 00:00:00 +0000\" \"a (subject)\" NIL NIL NIL NIL NIL NIL NIL \"<x@y>\")";
                            }
                            let literal = if items.contains("HEADER.FIELDS") {
                                Some((
                                    "BODY[HEADER.FIELDS (X-BENCH-ID)]",
                                    header_field(&m.bytes, "X-Bench-Id").into_bytes(),
                                ))
                            } else if items.contains("BODY.PEEK[]") {
                                Some(("BODY[]", m.bytes.clone()))
                            } else {
                                None
                            };
                            match literal {
                                Some((name, bytes)) => {
                                    io.send(&format!("{head} {name} {{{}}}\r\n", bytes.len())).await?;
                                    // In pieces, so the client sees a literal over several reads.
                                    for piece in bytes.chunks(bytes.len() / 3 + 1) {
                                        io.w.write_all(piece).await?;
                                        tokio::task::yield_now().await;
                                    }
                                    io.send(")\r\n").await?;
                                }
                                None => io.send(&format!("{head})\r\n")).await?,
                            }
                        }
                        io.send(&format!("{tag} OK fetched\r\n")).await?;
                    }
                    "STORE" => {
                        for i in uid_range(&set, &msgs) {
                            io.send(&format!("* {} FETCH (UID {} FLAGS (\\Flagged))\r\n", i + 1, msgs[i].uid)).await?;
                        }
                        io.send(&format!("{tag} OK stored\r\n")).await?;
                    }
                    "SEARCH" => {
                        let uids: Vec<String> = msgs.iter().map(|m| m.uid.to_string()).collect();
                        io.send(&format!("* SEARCH {}\r\n{tag} OK searched\r\n", uids.join(" "))).await?;
                    }
                    _ => io.send(&format!("{tag} BAD what\r\n")).await?,
                }
            }
            "IDLE" if o.idle => {
                io.send("+ idling\r\n").await?;
                loop {
                    tokio::select! {
                        l = io.lines.next_line() => {
                            match l? {
                                Some(l) if l.eq_ignore_ascii_case("DONE") => break,
                                Some(other) => panic!("expected DONE, got {other:?}"),
                                None => return Ok(()),
                            }
                        }
                        changed = changes.changed() => {
                            if changed.is_err() { return Ok(()) }
                            let (_, msgs) = mailbox(&user);
                            if msgs.len() != known && !o.idle_silent {
                                known = msgs.len();
                                io.send(&format!("* {known} EXISTS\r\n")).await?;
                            }
                        }
                    }
                }
                io.send(&format!("{tag} OK idle done\r\n")).await?;
            }
            "LOGOUT" => {
                io.send(&format!("* BYE see you\r\n{tag} OK bye\r\n")).await?;
                return Ok(());
            }
            _ => io.send(&format!("{tag} BAD unknown command\r\n")).await?,
        }
    }
    Ok(())
}

fn stuff(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out += line;
    }
    out
}

async fn pop3_session(s: TcpStream, store: Store) -> std::io::Result<()> {
    let mut io = Io::new(s);
    io.send("+OK fake POP3\r\n").await?;
    let mut user = String::new();
    let mut msgs = Vec::new();
    while let Some(line) = io.line().await? {
        let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "USER" => {
                user = arg.to_owned();
                io.send("+OK\r\n").await?;
            }
            "PASS" if arg == PASSWORD => {
                msgs = store.snapshot(&user).1;
                io.send("+OK maildrop locked\r\n").await?;
            }
            "PASS" => io.send("-ERR [AUTH] no\r\n").await?,
            "STAT" => {
                let size: usize = msgs.iter().map(|m| m.bytes.len()).sum();
                io.send(&format!("+OK {} {size}\r\n", msgs.len())).await?;
            }
            "LIST" => {
                let mut out = "+OK scan listing\r\n".to_owned();
                for (i, m) in msgs.iter().enumerate() {
                    out += &format!("{} {}\r\n", i + 1, m.bytes.len());
                }
                io.send(&(out + ".\r\n")).await?;
            }
            "UIDL" => {
                let mut out = "+OK\r\n".to_owned();
                for (i, m) in msgs.iter().enumerate() {
                    out += &format!("{} uid{}\r\n", i + 1, m.uid);
                }
                io.send(&(out + ".\r\n")).await?;
            }
            "RETR" => match arg.parse::<usize>().ok().and_then(|n| msgs.get(n.wrapping_sub(1))) {
                Some(m) => {
                    let body = stuff(&m.bytes);
                    io.send(&format!("+OK {} octets\r\n{body}.\r\n", m.bytes.len())).await?;
                }
                None => io.send("-ERR no such message\r\n").await?,
            },
            "QUIT" => {
                io.send("+OK bye\r\n").await?;
                return Ok(());
            }
            _ => io.send("-ERR what\r\n").await?,
        }
    }
    Ok(())
}
