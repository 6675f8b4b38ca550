//! IMAP stress in the manner of Dovecot's imaptest: concurrent sessions on
//! two imap-gateway replicas in front of one storage select the same
//! mailbox and run random FETCH, STORE, SEARCH, EXPUNGE and NOOP commands
//! while mail keeps arriving by SMTP (smtp-ingress → delivery-queue →
//! storage). Every session keeps a model of its view — the sequence
//! number → UID map, each message's flags, the keywords announced — built
//! only from the responses it received, and checks every response
//! against it:
//!
//! - UIDs strictly ascend with sequence numbers (RFC 3501 §2.3.1.1), a
//!   sequence number keeps its UID until an EXPUNGE moves it, and a UID
//!   never names two messages (each message carries an `X-Test-Id`);
//! - EXISTS never decreases (RFC 3501 §7.3.1: only EXPUNGE removes);
//! - no EXPUNGE while responding to FETCH, STORE or SEARCH (RFC 3501
//!   §7.4.1; the UID variants may carry one);
//! - a keyword is announced in an untagged FLAGS before a FETCH shows it
//!   (RFC 3501 §7.2.6);
//! - no BAD, no BYE, no disconnect; only FETCH and STORE may be refused
//!   (NO, RFC 2180 §4.1.2, §4.2.2) when they name a message expunged elsewhere.
//!
//! Each round ends with a checkpoint: the load stops, every sent message
//! is delivered, a session opened for it reads the mailbox as it is, and
//! every session, after one NOOP (RFC 3501 §6.1.2, §7.4.1: changes by
//! other sessions are reported at the latest then), must hold as many
//! messages, none expunged elsewhere, with the same flags for every
//! message whose flags it knows; after a FETCH, exactly the same UIDs.
//!
//! The random choices come from a fixed seed; every read has a deadline,
//! and so does the whole run.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use system::System;
use system::client::{Lines, Smtp};
use tokio::sync::Barrier;

const USER: &str = "stress@example.org";
const PASSWORD: &str = "stress password 1";
/// Sessions, alternating between the two replicas.
const SESSIONS: usize = 8;
const ROUNDS: usize = 12;
/// Commands each session runs per round between checkpoints.
const COMMANDS_PER_ROUND: usize = 60;
/// Messages sent by SMTP before the sessions start, and during each round.
const MAILS_BEFORE: u32 = 10;
const MAILS_PER_ROUND: u32 = 10;
const SEED: u64 = 0x1319_5EED_0019;
/// One response line, a barrier, or a delivery may take this long.
const STEP: Duration = Duration::from_secs(20);
/// The whole run (about 15 s on a 2-core machine).
const RUN: Duration = Duration::from_secs(120);
/// Keywords the sessions store: new ones keep appearing during the run.
const KEYWORDS: [&str; 3] = ["$Stress0", "$Stress1", "$Stress2"];

/// splitmix64: reproducible choices without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What all sessions learned together, and the checkpoint's reference.
#[derive(Default)]
struct Known {
    /// UID → X-Test-Id and back: a UID names one message, a message has one UID.
    by_uid: HashMap<u32, String>,
    by_id: HashMap<String, u32>,
    /// The mailbox at the last checkpoint: (UID, flags) in sequence order.
    reference: Vec<(u32, BTreeSet<String>)>,
}

struct Shared {
    known: Mutex<Known>,
    /// Messages accepted (250) by SMTP so far, their ids `m1..=m{sent}`.
    sent: AtomicU32,
    barrier: Barrier,
    /// The two imap-gateway replicas.
    replicas: [(std::net::SocketAddr, &'static str); 2],
}

impl Shared {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn wait(&self, who: &str, point: &str) {
        // The reference may wait up to STEP for deliveries first.
        if tokio::time::timeout(3 * STEP, self.barrier.wait()).await.is_err() {
            panic!("{who}: not everyone reached {point} within {:?}", 3 * STEP);
        }
    }
}

/// One message in a session's view: what it was told of it.
#[derive(Clone, Debug, Default)]
struct Msg {
    uid: Option<u32>,
    /// Flags without \Recent (which is per session, RFC 3501 §2.3.2).
    flags: Option<BTreeSet<String>>,
}

/// The items of one FETCH response this test asks for.
#[derive(Debug, Default)]
struct Fetched {
    uid: Option<u32>,
    flags: Option<Vec<String>>,
    test_id: Option<String>,
}

/// One IMAP session and its model of the selected mailbox.
struct Session {
    name: String,
    conn: Lines,
    tag: u32,
    /// `msgs[seq - 1]` (RFC 3501 §2.3.1.2).
    msgs: Vec<Msg>,
    /// Keywords announced by FLAGS (lower case: keywords are
    /// case-insensitive, RFC 3501 §2.3.2).
    announced: BTreeSet<String>,
    /// The command in progress and the lines received for it so far.
    command: String,
    received: Vec<String>,
    shared: Arc<Shared>,
    /// Counts for the summary: refusals (NO) and EXPUNGEs received.
    refused: u32,
    expunges: u32,
    commands: u32,
}

impl Session {
    async fn open(name: String, addr: std::net::SocketAddr, shared: Arc<Shared>) -> Session {
        let mut conn = Lines::connect(addr).await.unwrap_or_else(|e| panic!("{name}: connect {addr}: {e}"));
        let greeting = conn.line_within(STEP).await.unwrap_or_else(|e| panic!("{name}: greeting: {e}"));
        assert!(greeting.starts_with("* OK"), "{name}: greeting {greeting:?}");
        let mut s = Session {
            name,
            conn,
            tag: 0,
            msgs: Vec::new(),
            announced: BTreeSet::new(),
            command: String::new(),
            received: Vec::new(),
            shared,
            refused: 0,
            expunges: 0,
            commands: 0,
        };
        s.run(&format!("LOGIN \"{USER}\" \"{PASSWORD}\"")).await;
        s.run("SELECT INBOX").await;
        s
    }

    /// Fail naming the session, the command and what it received.
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "{}: command {:?}: {what}\nlines received for it:\n  {}",
            self.name,
            self.command,
            self.received.join("\n  ")
        );
    }

    /// Run a command that must succeed (tagged OK).
    async fn run(&mut self, command: &str) {
        if !self.exchange(command).await {
            self.fail("refused (NO)");
        }
    }

    /// Send a command, apply every untagged response to the model, and
    /// return whether it ended in OK (`false`: NO). BAD, BYE, EOF and a
    /// read past its deadline fail the test.
    async fn exchange(&mut self, command: &str) -> bool {
        self.tag += 1;
        self.commands += 1;
        let tag = format!("t{}", self.tag);
        self.command = command.to_string();
        self.received.clear();
        if let Err(e) = self.conn.send(format!("{tag} {command}\r\n").as_bytes()).await {
            self.fail(format!("send: {e}"));
        }
        loop {
            let line = self.response().await;
            self.received.push(line.clone());
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                if rest.starts_with("OK") {
                    return true;
                }
                if rest.starts_with("NO") {
                    self.refused += 1;
                    return false;
                }
                self.fail("tagged response is not OK or NO");
            }
            if let Some(untagged) = line.strip_prefix("* ") {
                self.apply(untagged);
            } else {
                self.fail(format!("unexpected line {line:?}"));
            }
        }
    }

    /// One response with its literals inlined (RFC 3501 §4.3: `{n}` CRLF
    /// and n octets, then the rest of the response).
    async fn response(&mut self) -> String {
        let mut line = self.read_line().await;
        while let Some(n) = literal_size(&line) {
            let data = match self.conn.exact(n).await {
                Ok(data) => data,
                Err(e) => self.fail(format!("reading a {n}-octet literal after {line:?}: {e}")),
            };
            line.push_str("\r\n");
            line.push_str(&String::from_utf8_lossy(&data));
            let rest = self.read_line().await;
            line.push_str(&rest);
        }
        line
    }

    async fn read_line(&mut self) -> String {
        match self.conn.line_within(STEP).await {
            Ok(line) => line,
            Err(e) => self.fail(format!("connection: {e}")),
        }
    }

    /// Apply one untagged response (after `* `) to the model, checking it.
    fn apply(&mut self, data: &str) {
        // RFC 3501 §7.1.5: BYE only as LOGOUT's answer, else a disconnect.
        if data.starts_with("BYE") && self.command != "LOGOUT" {
            self.fail("BYE");
        }
        if let Some(list) = data.strip_prefix("FLAGS (") {
            // RFC 3501 §7.2.6: the flags defined in the mailbox from now on.
            self.announced = list
                .trim_end_matches(')')
                .split_whitespace()
                .filter(|f| !f.starts_with('\\'))
                .map(str::to_ascii_lowercase)
                .collect();
            return;
        }
        let Some((number, rest)) = data.split_once(' ') else { return };
        let Ok(n) = number.parse::<usize>() else { return };
        let keyword = rest.split(' ').next().unwrap_or_default().to_ascii_uppercase();
        match keyword.as_str() {
            "EXISTS" => {
                // RFC 3501 §7.3.1: the mailbox only shrinks by EXPUNGE.
                if n < self.msgs.len() {
                    self.fail(format!("EXISTS {n} after {} messages, no EXPUNGE between", self.msgs.len()));
                }
                self.msgs.resize(n, Msg::default());
            }
            "EXPUNGE" => {
                // RFC 3501 §7.4.1: never while responding to FETCH, STORE
                // or SEARCH (their UID forms are other commands and may).
                let verb = self.command.split(' ').next().unwrap_or_default().to_ascii_uppercase();
                if matches!(verb.as_str(), "FETCH" | "STORE" | "SEARCH") {
                    self.fail(format!("EXPUNGE {n} during {verb} (RFC 3501 §7.4.1)"));
                }
                if n == 0 || n > self.msgs.len() {
                    self.fail(format!("EXPUNGE {n} with {} messages", self.msgs.len()));
                }
                self.msgs.remove(n - 1);
                self.expunges += 1;
            }
            "FETCH" => {
                let items = rest.get("FETCH ".len()..).unwrap_or_default();
                let fetched = match parse_fetch(items) {
                    Ok(f) => f,
                    Err(e) => self.fail(format!("unparsable FETCH response: {e}")),
                };
                self.fetched(n, fetched);
            }
            _ => {}
        }
    }

    /// A FETCH response for sequence number `seq`.
    fn fetched(&mut self, seq: usize, f: Fetched) {
        if seq == 0 || seq > self.msgs.len() {
            self.fail(format!("FETCH for {seq} with {} messages", self.msgs.len()));
        }
        let i = seq - 1;
        if let Some(uid) = f.uid {
            // A sequence number keeps its UID until an EXPUNGE moves it.
            if let Some(before) = self.msgs[i].uid
                && before != uid
            {
                self.fail(format!("message {seq} was UID {before}, now UID {uid}"));
            }
            // RFC 3501 §2.3.1.1: UIDs strictly ascend with sequence numbers.
            let below = self.msgs[..i].iter().rev().find_map(|m| m.uid);
            let above = self.msgs[i + 1..].iter().find_map(|m| m.uid);
            if below.is_some_and(|b| b >= uid) || above.is_some_and(|a| a <= uid) {
                self.fail(format!("UID {uid} at {seq} is out of order: UID {below:?} before it, {above:?} after"));
            }
            self.msgs[i].uid = Some(uid);
        }
        if let Some(flags) = f.flags {
            // RFC 3501 §7.2.6: a keyword is announced by FLAGS first.
            for k in flags.iter().filter(|f| !f.starts_with('\\')) {
                if !self.announced.contains(&k.to_ascii_lowercase()) {
                    self.fail(format!("keyword {k} in a FETCH before any FLAGS announced it ({:?})", self.announced));
                }
            }
            self.msgs[i].flags = Some(flags.into_iter().filter(|f| !f.eq_ignore_ascii_case("\\Recent")).collect());
        }
        if let Some(id) = f.test_id {
            let Some(uid) = self.msgs[i].uid else { return };
            let clash = {
                let mut known = self.shared.known();
                let named = known.by_uid.entry(uid).or_insert_with(|| id.clone()).clone();
                let placed = *known.by_id.entry(id.clone()).or_insert(uid);
                (named != id || placed != uid)
                    .then(|| format!("UID {uid} is {id}, but UID {uid} was {named} and {id} was UID {placed}"))
            };
            if let Some(clash) = clash {
                self.fail(clash);
            }
        }
    }

    /// A random sequence number, or None in an empty view.
    fn some_seq(&self, rng: &mut Rng) -> Option<usize> {
        (!self.msgs.is_empty()).then(|| rng.below(self.msgs.len()) + 1)
    }

    /// One random command of the load.
    async fn random_command(&mut self, rng: &mut Rng) {
        let flag = match rng.below(4) {
            0 => "\\Seen".to_string(),
            1 => "\\Flagged".to_string(),
            _ => KEYWORDS[rng.below(KEYWORDS.len())].to_string(),
        };
        let seq = self.some_seq(rng);
        let command = match (rng.below(20), seq) {
            (0..=2, _) | (_, None) => "NOOP".to_string(),
            (3, _) => "CHECK".to_string(),
            (4..=5, _) => "FETCH 1:* (UID FLAGS)".to_string(),
            (6..=7, Some(s)) => {
                // Past the last message is BAD (RFC 9051 §6.4.5); stay inside.
                let to = (s + rng.below(4)).min(self.msgs.len());
                format!("FETCH {s}:{to} (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-Test-Id)])")
            }
            (8, _) => {
                let from = self.msgs.iter().filter_map(|m| m.uid).nth(rng.below(self.msgs.len().max(1))).unwrap_or(1);
                format!("UID FETCH {from}:* (FLAGS BODY.PEEK[HEADER.FIELDS (X-Test-Id)])")
            }
            (9..=11, Some(s)) => format!("STORE {s} +FLAGS ({flag})"),
            (12..=13, Some(s)) => format!("STORE {s} -FLAGS ({flag})"),
            (14, _) => match self.msgs.iter().filter_map(|m| m.uid).nth(rng.below(self.msgs.len().max(1))) {
                Some(uid) => format!("UID STORE {uid} +FLAGS ({flag})"),
                None => "NOOP".to_string(),
            },
            (15, _) => "SEARCH ALL".to_string(),
            (16, _) => "SEARCH FLAGGED".to_string(),
            (17, _) => "UID SEARCH UNSEEN".to_string(),
            (18, Some(s)) => {
                // Few deletions, fewer than arrivals, so the mailbox grows.
                if rng.below(3) == 0 {
                    // Its X-Test-Id first: the checkpoint waits for every
                    // sent message to be seen, so none may go unseen.
                    if self.may_refuse(&format!("FETCH {s} (UID BODY.PEEK[HEADER.FIELDS (X-Test-Id)])")).await {
                        self.may_refuse(&format!("STORE {s} +FLAGS.SILENT (\\Deleted)")).await;
                    }
                    "EXPUNGE".to_string()
                } else {
                    "NOOP".to_string()
                }
            }
            _ => "NOOP".to_string(),
        };
        self.may_refuse(&command).await;
    }

    /// Run a load command: FETCH and STORE may be refused (RFC 2180
    /// §4.1.2, §4.2.2: a message expunged by another session), nothing else.
    async fn may_refuse(&mut self, command: &str) -> bool {
        let ok = self.exchange(command).await;
        let verb = command.trim_start_matches("UID ").split(' ').next().unwrap_or_default();
        if !ok && !matches!(verb, "FETCH" | "STORE") {
            self.fail("refused (NO)");
        }
        ok
    }

    /// The checkpoint's reference, by a session opened for it (so no
    /// session's history can be wrong in it): wait until every message
    /// sent so far arrived, then read the whole mailbox.
    async fn take_reference(mut self) {
        let sent = self.shared.sent.load(Ordering::SeqCst);
        let deadline = Instant::now() + STEP;
        loop {
            self.run("NOOP").await;
            self.run("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (X-Test-Id)])").await;
            let missing: Vec<u32> = {
                let known = self.shared.known();
                (1..=sent).filter(|n| !known.by_id.contains_key(&format!("m{n}"))).collect()
            };
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                self.fail(format!("messages {missing:?} accepted by SMTP never arrived"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut reference = Vec::new();
        for (i, m) in self.msgs.iter().enumerate() {
            match (m.uid, &m.flags) {
                (Some(uid), Some(flags)) => reference.push((uid, flags.clone())),
                _ => self.fail(format!("message {} has no UID or FLAGS after FETCH 1:*: {m:?}", i + 1)),
            }
        }
        self.shared.known().reference = reference;
        self.run("LOGOUT").await;
    }

    /// Checkpoint for every session: after one NOOP, its messages and the
    /// flags it knows are the reference's; after a FETCH, so are all UIDs.
    async fn compare_with_reference(&mut self) {
        let reference = self.shared.known().reference.clone();
        self.run("NOOP").await;
        if self.msgs.len() != reference.len() {
            self.fail(format!("after NOOP {} messages, the mailbox has {}", self.msgs.len(), reference.len()));
        }
        let flags: HashMap<u32, &BTreeSet<String>> = reference.iter().map(|(u, f)| (*u, f)).collect();
        for (i, m) in self.msgs.iter().enumerate() {
            let Some(uid) = m.uid else { continue };
            match (flags.get(&uid), &m.flags) {
                (None, _) => self.fail(format!("after NOOP message {} is UID {uid}, expunged elsewhere", i + 1)),
                (Some(theirs), Some(mine)) if *theirs != mine => self.fail(format!(
                    "after NOOP message {} (UID {uid}) has flags {mine:?}, the mailbox has {theirs:?}",
                    i + 1
                )),
                _ => {}
            }
        }
        self.run("FETCH 1:* (UID FLAGS)").await;
        let mine: Vec<u32> = self.msgs.iter().map(|m| m.uid.unwrap_or(0)).collect();
        let theirs: Vec<u32> = reference.iter().map(|(u, _)| *u).collect();
        if mine != theirs {
            self.fail(format!("this session holds UIDs {mine:?}, the mailbox {theirs:?}"));
        }
    }
}

/// `{n}` or `{n+}` at the end of a line: n octets of literal follow.
fn literal_size(line: &str) -> Option<usize> {
    let open = line.strip_suffix('}')?.rfind('{')?;
    line[open + 1..line.len() - 1].trim_end_matches('+').parse().ok()
}

/// The parenthesized attribute list of a FETCH response (literals inlined
/// as `{n}` CRLF data): UID, FLAGS and the X-Test-Id of a header fetch.
fn parse_fetch(s: &str) -> Result<Fetched, String> {
    let b = s.as_bytes();
    if b.first() != Some(&b'(') {
        return Err(format!("no list: {s:?}"));
    }
    let mut i = 1;
    let mut out = Fetched::default();
    loop {
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        match b.get(i) {
            Some(b')') => return Ok(out),
            None => return Err(format!("unterminated: {s:?}")),
            _ => {}
        }
        // The item name; BODY[HEADER.FIELDS (X)] has spaces in brackets.
        let start = i;
        let mut depth = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'[' => depth += 1,
                b']' => depth -= 1,
                b' ' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        let name = s[start..i].to_ascii_uppercase();
        i += 1;
        let value_start = i;
        let value: &str = match b.get(i) {
            Some(b'(') => {
                let mut depth = 0;
                while let Some(&c) = b.get(i) {
                    i += 1;
                    match c {
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                &s[value_start + 1..i - 1]
            }
            Some(b'{') => {
                let close = s[i..].find('}').ok_or_else(|| format!("bad literal in {s:?}"))? + i;
                let n: usize =
                    s[i + 1..close].trim_end_matches('+').parse().map_err(|_| format!("bad literal {s:?}"))?;
                let data = close + 3; // "}\r\n"
                i = data + n;
                s.get(data..i).ok_or_else(|| format!("short literal in {s:?}"))?
            }
            Some(b'"') => {
                i += 1;
                while let Some(&c) = b.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
                &s[value_start..i]
            }
            _ => {
                while b.get(i).is_some_and(|c| *c != b' ' && *c != b')') {
                    i += 1;
                }
                &s[value_start..i]
            }
        };
        match name.as_str() {
            "UID" => out.uid = Some(value.parse().map_err(|_| format!("UID {value:?}"))?),
            "FLAGS" => out.flags = Some(value.split_whitespace().map(str::to_string).collect()),
            n if n.starts_with("BODY[HEADER.FIELDS") => {
                out.test_id = value.lines().find_map(|l| {
                    let (field, v) = l.split_once(':')?;
                    field.eq_ignore_ascii_case("X-Test-Id").then(|| v.trim().to_string())
                });
            }
            _ => {}
        }
    }
}

/// A session's part: rounds of random commands, each ended by a checkpoint.
async fn session_task(index: usize, addr: std::net::SocketAddr, replica: &'static str, shared: Arc<Shared>) -> String {
    let name = format!("session {index} on {replica}");
    let mut rng = Rng(SEED ^ (index as u64 + 1).wrapping_mul(0x0123_4567_89AB_CDEF));
    let mut s = Session::open(name.clone(), addr, shared.clone()).await;
    for round in 0..ROUNDS {
        for _ in 0..COMMANDS_PER_ROUND {
            s.random_command(&mut rng).await;
        }
        shared.wait(&name, &format!("the end of round {round}")).await;
        if index == 0 {
            // Each replica in turn.
            let (addr, replica) = shared.replicas[round % 2];
            let name = format!("reference session of round {round} on {replica}");
            Session::open(name, addr, shared.clone()).await.take_reference().await;
        }
        shared.wait(&name, &format!("the reference of round {round}")).await;
        s.compare_with_reference().await;
        shared.wait(&name, &format!("the checkpoint of round {round}")).await;
    }
    s.run("LOGOUT").await;
    format!("{name}: {} commands, {} refused (NO), {} EXPUNGEs received", s.commands, s.refused, s.expunges)
}

fn message(n: u32) -> String {
    format!(
        "From: <sender@remote.test>\r\nTo: <{USER}>\r\nSubject: stress {n}\r\nX-Test-Id: m{n}\r\n\r\nmarker m{n}\r\n"
    )
}

async fn send(smtp: &mut Smtp, shared: &Shared) {
    let n = shared.sent.load(Ordering::SeqCst) + 1;
    let r = smtp.send_mail("sender@remote.test", USER, &message(n)).await.unwrap_or_else(|e| panic!("SMTP m{n}: {e}"));
    assert_eq!(r.code, 250, "SMTP m{n}: {r:?}");
    shared.sent.store(n, Ordering::SeqCst);
}

/// Mail arriving during each round's load; it stops at the checkpoints.
async fn sender_task(mx: std::net::SocketAddr, shared: Arc<Shared>) -> String {
    let mut smtp = Smtp::connect(mx).await.unwrap_or_else(|e| panic!("SMTP connect: {e}"));
    for round in 0..ROUNDS {
        for _ in 0..MAILS_PER_ROUND {
            send(&mut smtp, &shared).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        for point in ["the end of round", "the reference of round", "the checkpoint of round"] {
            shared.wait("SMTP sender", &format!("{point} {round}")).await;
        }
    }
    smtp.quit().await;
    format!("SMTP sender: {} messages", shared.sent.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_on_two_replicas_keep_imap_invariants() {
    let mut sys = System::new(None);
    sys.start_storage().await;
    sys.add_account(USER, PASSWORD).await;
    let _queue = sys.start_queue("queue").await;
    let smtp = sys.start_smtp("smtp").await;
    let imap_a = sys.start_imap("imap-a").await;
    let imap_b = sys.start_imap("imap-b").await;

    let shared = Arc::new(Shared {
        known: Mutex::new(Known::default()),
        sent: AtomicU32::new(0),
        barrier: Barrier::new(SESSIONS + 1),
        replicas: [(imap_a.port("imap"), "imap-a"), (imap_b.port("imap"), "imap-b")],
    });
    let mut first = Smtp::connect(smtp.port("mx")).await.expect("SMTP");
    for _ in 0..MAILS_BEFORE {
        send(&mut first, &shared).await;
    }
    first.quit().await;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(sender_task(smtp.port("mx"), shared.clone()));
    for i in 0..SESSIONS {
        let (addr, replica) = shared.replicas[i % 2];
        tasks.spawn(session_task(i, addr, replica, shared.clone()));
    }
    let mut summary = Vec::new();
    loop {
        let next = match tokio::time::timeout(RUN.saturating_sub(started.elapsed()), tasks.join_next()).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(_) => panic!("the run did not finish within {RUN:?}; finished: {summary:?}"),
        };
        match next {
            Ok(line) => summary.push(line),
            // The first failure is the cause; the others then wait at a
            // barrier and are dropped with the set.
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let text = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{text}\nimap-a log:\n{}\nimap-b log:\n{}", imap_a.log_tail(), imap_b.log_tail());
            }
            Err(e) => panic!("a task ended: {e}"),
        }
    }
    eprintln!("stress run took {:?}:\n  {}", started.elapsed(), summary.join("\n  "));
    let known = shared.known();
    assert!(!known.reference.is_empty(), "the mailbox ended empty: the load expunged all it received");
}
