//! Transcript tests: client lines in, exact server lines out, against the
//! in-memory store. Every command in every state, and the `-ERR` cases.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};

use super::*;
use crate::store::fake::FakeStore;

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "pop.test".into(),
        apop_enabled: true,
        allow_plaintext_auth: false,
        allow_plaintext_auth_on_loopback: true,
        auth_failure_delay: Duration::ZERO,
        max_auth_failures: 3,
        max_bad_commands: 4,
        lock_ttl_secs: 60,
        tls_available: false,
        capa_expire: None,
        capa_login_delay: None,
    }
}

fn loopback(cfg: SessionConfig) -> Session {
    Session::new(Arc::new(cfg), false, std::net::Ipv4Addr::LOCALHOST.into())
}

fn escape(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// Run a `C:`/`S:` script; returns the flow of the last command.
async fn transcript(session: &mut Session, store: &FakeStore, script: &str) -> Flow {
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in script.lines().map(str::trim_start).filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix("C:") {
            steps.push((c.strip_prefix(' ').unwrap_or(c).to_string(), Vec::new()));
        } else if let Some(s) = line.strip_prefix("S:") {
            // "<SP>" marks a trailing space that an editor would strip.
            let s = s.strip_prefix(' ').unwrap_or(s).replace("<SP>", " ");
            steps.last_mut().expect("S: after C:").1.push(s);
        } else {
            panic!("bad script line {line:?}");
        }
    }
    let mut flow = Flow::Continue;
    for (client, server) in steps {
        let mut out = Vec::new();
        flow = session.handle_line(format!("{client}\r\n").as_bytes(), store, &mut out).await.unwrap();
        let want: String = server.iter().map(|l| format!("{l}\r\n")).collect();
        assert_eq!(escape(&out), escape(want.as_bytes()), "\nC: {client}");
    }
    flow
}

async fn logged_in(store: &FakeStore) -> Session {
    let mut s = loopback(cfg());
    let n = store.uids().len();
    let script =
        format!("C: USER alice\nS: +OK send PASS\nC: PASS pw\nS: +OK alice has {n} messages ({} octets)", n * 56);
    transcript(&mut s, store, &script).await;
    s
}

#[tokio::test]
async fn greeting_carries_the_apop_timestamp() {
    let s = loopback(cfg());
    let g = s.greeting();
    assert!(g.starts_with("+OK Mailfleet POP3 ready <") && g.ends_with("@pop.test>\r\n"), "{g}");
    let s = loopback(SessionConfig { apop_enabled: false, ..cfg() });
    assert_eq!(s.greeting(), "+OK Mailfleet POP3 ready\r\n");
}

#[tokio::test]
async fn full_session_with_every_transaction_command() {
    let store = FakeStore::alice(3);
    let mut s = logged_in(&store).await;
    transcript(
        &mut s,
        &store,
        "
        C: STAT
        S: +OK 3 168
        C: LIST
        S: +OK 3 messages (168 octets)
        S: 1 56
        S: 2 56
        S: 3 56
        S: .
        C: LIST 2
        S: +OK 2 56
        C: UIDL
        S: +OK unique-id listing follows
        S: 1 1700.10
        S: 2 1700.20
        S: 3 1700.30
        S: .
        C: UIDL 3
        S: +OK 3 1700.30
        C: RETR 1
        S: +OK 56 octets
        S: Subject: msg 1
        S: From: a@b
        S:
        S: line 1
        S: ..dot line
        S: line 3
        S: .
        C: TOP 2 0
        S: +OK top of message follows
        S: Subject: msg 2
        S: From: a@b
        S:
        S: .
        C: TOP 2 2
        S: +OK top of message follows
        S: Subject: msg 2
        S: From: a@b
        S:
        S: line 1
        S: ..dot line
        S: .
        C: NOOP
        S: +OK
        C: DELE 1
        S: +OK message 1 deleted
        C: STAT
        S: +OK 2 112
        C: LIST
        S: +OK 2 messages (112 octets)
        S: 2 56
        S: 3 56
        S: .
        C: RSET
        S: +OK maildrop has 3 messages (168 octets)
        C: DELE 2
        S: +OK message 2 deleted
        ",
    )
    .await;
    // TOP n 0 fetched the header octets only.
    assert_eq!(*store.fetch_lengths.lock().unwrap(), vec![None, Some(29), None]);
    // Nothing is removed, and no flag set, before QUIT.
    assert_eq!(store.uids(), vec![10, 20, 30]);
    assert!(store.seen().is_empty());
    let flow = transcript(&mut s, &store, "C: QUIT\nS: +OK Mailfleet POP3 server signing off (2 messages left)").await;
    assert_eq!(flow, Flow::Close);
    assert_eq!(store.uids(), vec![10, 30]);
    // RETR marks \Seen in the IMAP view at QUIT; TOP does not.
    assert_eq!(store.seen(), vec![10]);
    assert!(store.locks.lock().unwrap().is_empty(), "QUIT releases the maildrop");
}

#[tokio::test]
async fn bad_and_deleted_message_numbers() {
    let store = FakeStore::alice(3);
    let mut s = logged_in(&store).await;
    transcript(
        &mut s,
        &store,
        "
        C: DELE 2
        S: +OK message 2 deleted
        C: DELE 2
        S: -ERR message 2 already deleted
        C: RETR 2
        S: -ERR message 2 already deleted
        C: TOP 2 1
        S: -ERR message 2 already deleted
        C: LIST 2
        S: -ERR message 2 already deleted
        C: UIDL 2
        S: -ERR message 2 already deleted
        C: LIST 4
        S: -ERR no such message, only 3 messages in maildrop
        C: RETR 4
        S: -ERR no such message, only 3 messages in maildrop
        C: DELE 4
        S: -ERR no such message, only 3 messages in maildrop
        C: UIDL
        S: +OK unique-id listing follows
        S: 1 1700.10
        S: 3 1700.30
        S: .
        ",
    )
    .await;
}

#[tokio::test]
async fn bad_arguments() {
    let store = FakeStore::alice(1);
    let mut s = loopback(SessionConfig { max_bad_commands: 20, ..cfg() });
    transcript(
        &mut s,
        &store,
        "
        C: USER
        S: -ERR USER: missing argument
        C: APOP alice
        S: -ERR APOP: missing argument
        C: APOP alice nothex
        S: -ERR APOP digest must be 32 hex digits
        C: XTND XMIT
        S: -ERR unknown command
        C: USER alice
        S: +OK send PASS
        C: PASS pw
        S: +OK alice has 1 messages (56 octets)
        C: RETR
        S: -ERR RETR: missing argument
        C: RETR 0
        S: -ERR invalid message number
        C: RETR one
        S: -ERR invalid message number
        C: TOP 1
        S: -ERR TOP: missing argument
        C: TOP 1 -1
        S: -ERR invalid message number
        C: DELE 1 2
        S: -ERR DELE: too many arguments
        C: STAT 1
        S: -ERR STAT: too many arguments
        C: LIST x
        S: -ERR invalid message number
        ",
    )
    .await;
}

#[tokio::test]
async fn commands_in_the_wrong_state() {
    let store = FakeStore::alice(1);
    let mut s = loopback(cfg());
    transcript(
        &mut s,
        &store,
        "
        C: STAT
        S: -ERR STAT not allowed in the AUTHORIZATION state
        C: LIST
        S: -ERR LIST not allowed in the AUTHORIZATION state
        C: RETR 1
        S: -ERR RETR not allowed in the AUTHORIZATION state
        C: TOP 1 1
        S: -ERR TOP not allowed in the AUTHORIZATION state
        C: DELE 1
        S: -ERR DELE not allowed in the AUTHORIZATION state
        C: UIDL
        S: -ERR UIDL not allowed in the AUTHORIZATION state
        C: RSET
        S: -ERR RSET not allowed in the AUTHORIZATION state
        C: NOOP
        S: -ERR NOOP not allowed in the AUTHORIZATION state
        C: PASS pw
        S: -ERR USER first
        C: STLS
        S: -ERR TLS is not available
        ",
    )
    .await;
    let mut s = logged_in(&store).await;
    transcript(
        &mut s,
        &store,
        "
        C: USER alice
        S: -ERR USER not allowed in the TRANSACTION state
        C: PASS pw
        S: -ERR PASS not allowed in the TRANSACTION state
        C: APOP alice 00000000000000000000000000000000
        S: -ERR APOP not allowed in the TRANSACTION state
        C: AUTH PLAIN
        S: -ERR AUTH not allowed in the TRANSACTION state
        C: STLS
        S: -ERR STLS not allowed in the TRANSACTION state
        ",
    )
    .await;
}

#[tokio::test]
async fn quit_in_authorization_closes_without_touching_anything() {
    let store = FakeStore::alice(1);
    let mut s = loopback(cfg());
    assert_eq!(transcript(&mut s, &store, "C: QUIT\nS: +OK Mailfleet POP3 server signing off").await, Flow::Close);
}

#[tokio::test]
async fn capa_depends_on_state_and_tls() {
    let store = FakeStore::alice(1);
    let with =
        SessionConfig { tls_available: true, capa_expire: Some("NEVER".into()), capa_login_delay: Some(0), ..cfg() };
    let mut s = loopback(with.clone());
    transcript(
        &mut s,
        &store,
        "
        C: CAPA
        S: +OK Capability list follows
        S: TOP
        S: UIDL
        S: RESP-CODES
        S: AUTH-RESP-CODE
        S: PIPELINING
        S: USER
        S: SASL PLAIN LOGIN
        S: STLS
        S: EXPIRE NEVER
        S: LOGIN-DELAY 0
        S: IMPLEMENTATION Mailfleet
        S: .
        ",
    )
    .await;
    // Not loopback, no TLS yet: no plaintext mechanisms, only STLS.
    let mut s = Session::new(Arc::new(with.clone()), false, "192.0.2.1".parse().unwrap());
    transcript(
        &mut s,
        &store,
        "
        C: CAPA
        S: +OK Capability list follows
        S: TOP
        S: UIDL
        S: RESP-CODES
        S: AUTH-RESP-CODE
        S: PIPELINING
        S: STLS
        S: EXPIRE NEVER
        S: LOGIN-DELAY 0
        S: IMPLEMENTATION Mailfleet
        S: .
        C: USER alice
        S: -ERR [AUTH] plaintext authentication disallowed on non-secure connections; use STLS
        C: AUTH PLAIN AGFsaWNlAHB3
        S: -ERR [AUTH] plaintext authentication disallowed on non-secure connections; use STLS
        ",
    )
    .await;
    assert_eq!(transcript(&mut s, &store, "C: STLS\nS: +OK Begin TLS negotiation").await, Flow::StartTls);
    s.tls_started();
    transcript(
        &mut s,
        &store,
        "
        C: STLS
        S: -ERR already using TLS
        C: USER alice
        S: +OK send PASS
        C: PASS pw
        S: +OK alice has 1 messages (56 octets)
        C: CAPA
        S: +OK Capability list follows
        S: TOP
        S: UIDL
        S: RESP-CODES
        S: AUTH-RESP-CODE
        S: PIPELINING
        S: EXPIRE NEVER
        S: LOGIN-DELAY 0
        S: IMPLEMENTATION Mailfleet
        S: .
        ",
    )
    .await;
}

#[tokio::test]
async fn apop_login() {
    let store = FakeStore::alice(1);
    let mut s = loopback(cfg());
    let digest = hex::encode(Md5::digest(format!("{}tanstaaf", s.timestamp())));
    transcript(
        &mut s,
        &store,
        &format!(
            "
            C: APOP alice 0123456789abcdef0123456789abcdef
            S: -ERR [AUTH] authentication failed
            C: APOP alice {digest}
            S: +OK alice has 1 messages (56 octets)
            "
        ),
    )
    .await;
    let mut s = loopback(SessionConfig { apop_enabled: false, ..cfg() });
    transcript(&mut s, &store, &format!("C: APOP alice {digest}\nS: -ERR APOP not available")).await;
}

#[tokio::test]
async fn sasl_plain_and_login() {
    let store = FakeStore::alice(1);
    let plain = B64.encode(b"\0alice\0pw");
    let mut s = loopback(cfg());
    transcript(&mut s, &store, &format!("C: AUTH PLAIN {plain}\nS: +OK alice has 1 messages (56 octets)")).await;
    s.abort(&store).await;

    let mut s = loopback(cfg());
    transcript(
        &mut s,
        &store,
        &format!(
            "
            C: AUTH
            S: +OK SASL mechanisms follow
            S: PLAIN
            S: LOGIN
            S: .
            C: AUTH CRAM-MD5
            S: -ERR unsupported SASL mechanism
            C: AUTH PLAIN
            S: +<SP>
            C: *
            S: -ERR authentication cancelled
            C: AUTH PLAIN
            S: +<SP>
            C: !!notbase64
            S: -ERR invalid base64 in SASL response
            C: AUTH PLAIN
            S: +<SP>
            C: {}
            S: -ERR [AUTH] authentication failed
            C: AUTH PLAIN
            S: +<SP>
            C: {plain}
            S: +OK alice has 1 messages (56 octets)
            ",
            B64.encode(b"bob\0alice\0pw"),
        ),
    )
    .await;
    s.abort(&store).await;

    let mut s = loopback(cfg());
    transcript(
        &mut s,
        &store,
        &format!(
            "
            C: AUTH LOGIN
            S: + VXNlcm5hbWU6
            C: {}
            S: + UGFzc3dvcmQ6
            C: {}
            S: +OK alice has 1 messages (56 octets)
            ",
            B64.encode("alice"),
            B64.encode("pw")
        ),
    )
    .await;
}

#[tokio::test]
async fn repeated_bad_passwords_close_the_connection() {
    let store = FakeStore::alice(1);
    let mut s = loopback(cfg());
    let flow = transcript(
        &mut s,
        &store,
        "
        C: USER alice
        S: +OK send PASS
        C: PASS wrong
        S: -ERR [AUTH] authentication failed
        C: USER nobody
        S: +OK send PASS
        C: PASS pw
        S: -ERR [AUTH] authentication failed
        C: USER alice
        S: +OK send PASS
        C: PASS wrong again
        S: -ERR [AUTH] too many authentication failures, closing
        ",
    )
    .await;
    assert_eq!(flow, Flow::Close);
}

#[tokio::test]
async fn an_over_long_line_closes_before_login_and_is_a_bad_command_after() {
    let mut s = loopback(cfg());
    let mut out = Vec::new();
    assert_eq!(s.line_too_long(&mut out).await.unwrap(), Flow::Close);
    assert_eq!(String::from_utf8(out).unwrap(), "-ERR line too long, closing connection\r\n");
}

#[tokio::test]
async fn repeated_bad_commands_close_the_connection() {
    let store = FakeStore::alice(1);
    let mut s = logged_in(&store).await;
    let mut out = Vec::new();
    assert_eq!(s.line_too_long(&mut out).await.unwrap(), Flow::Continue);
    let flow = transcript(
        &mut s,
        &store,
        "
        C: FOO
        S: -ERR unknown command
        C: BAR
        S: -ERR unknown command
        C: BAZ
        S: -ERR unknown command; too many errors, closing connection
        ",
    )
    .await;
    assert_eq!(String::from_utf8(out).unwrap(), "-ERR line too long\r\n");
    assert_eq!(flow, Flow::Close);
}

#[tokio::test]
async fn second_session_gets_in_use() {
    let store = FakeStore::alice(1);
    let mut first = logged_in(&store).await;
    let mut second = loopback(cfg());
    transcript(
        &mut second,
        &store,
        "
        C: USER alice
        S: +OK send PASS
        C: PASS pw
        S: -ERR [IN-USE] maildrop already locked
        ",
    )
    .await;
    // The lock holder leaving (even without QUIT) frees the maildrop.
    first.abort(&store).await;
    transcript(
        &mut second,
        &store,
        "C: USER alice\nS: +OK send PASS\nC: PASS pw\nS: +OK alice has 1 messages (56 octets)",
    )
    .await;
}

#[tokio::test]
async fn drop_without_quit_deletes_nothing() {
    let store = FakeStore::alice(2);
    let mut s = loopback(cfg());
    transcript(&mut s, &store, "C: USER alice\nS: +OK send PASS\nC: PASS pw\nS: +OK alice has 2 messages (112 octets)\nC: DELE 1\nS: +OK message 1 deleted").await;
    s.abort(&store).await;
    assert_eq!(store.uids(), vec![10, 20]);
    assert!(store.locks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn storage_outage_gives_sys_temp_and_loses_nothing() {
    let store = FakeStore::alice(2);
    store.set_down(true);
    let mut s = loopback(cfg());
    transcript(
        &mut s,
        &store,
        "
        C: USER alice
        S: +OK send PASS
        C: PASS pw
        S: -ERR [SYS/TEMP] storage temporarily unavailable, try again later
        ",
    )
    .await;
    store.set_down(false);
    transcript(&mut s, &store, "C: USER alice\nS: +OK send PASS\nC: PASS pw\nS: +OK alice has 2 messages (112 octets)")
        .await;
    store.set_down(true);
    transcript(
        &mut s,
        &store,
        "
        C: RETR 1
        S: -ERR [SYS/TEMP] storage temporarily unavailable, try again later
        C: STAT
        S: +OK 2 112
        C: DELE 1
        S: +OK message 1 deleted
        ",
    )
    .await;
    store.set_down(false);
    store.expunge_down.store(true, Ordering::SeqCst);
    let flow =
        transcript(&mut s, &store, "C: QUIT\nS: -ERR [SYS/TEMP] some deleted messages not removed, try again later")
            .await;
    assert_eq!(flow, Flow::Close);
    assert_eq!(store.uids(), vec![10, 20]);
}

#[tokio::test]
async fn quit_after_the_lease_was_lost_removes_nothing() {
    let store = FakeStore::alice(2);
    let mut s = logged_in(&store).await;
    transcript(&mut s, &store, "C: DELE 1\nS: +OK message 1 deleted").await;
    // Our lease lapsed and another session took the maildrop.
    store.locks.lock().unwrap().insert(1, "other".into());
    assert_eq!(s.lease().unwrap().renew(&store).await, Renewal::Lost);
    let flow = transcript(&mut s, &store, "C: QUIT\nS: -ERR [IN-USE] maildrop lock lost, no messages removed").await;
    assert_eq!(flow, Flow::Close);
    assert_eq!(store.uids(), vec![10, 20]);
    assert_eq!(store.locks.lock().unwrap().get(&1).map(String::as_str), Some("other"), "the other holder keeps it");
}

#[tokio::test]
async fn retr_writes_while_the_message_is_still_arriving() {
    use tokio::io::AsyncReadExt;
    let store = Arc::new(FakeStore::alice(1));
    store.stall_fetch.store(true, Ordering::SeqCst);
    let mut s = logged_in(&store).await;
    let (mut client, mut server) = tokio::io::duplex(1024);
    let task = {
        let store = store.clone();
        tokio::spawn(async move { s.handle_line(b"RETR 1\r\n", store.as_ref(), &mut server).await })
    };
    // The reply and the first chunk arrive although storage has not finished.
    let want = b"+OK 56 octets\r\nSub";
    let mut got = vec![0; want.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, want);
    task.abort();
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn line() -> impl Strategy<Value = Vec<u8>> {
        let verbs = prop::sample::select(vec![
            "USER", "PASS", "APOP", "AUTH", "CAPA", "STLS", "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET",
            "TOP", "UIDL", "user", "XYZ", "",
        ]);
        let arg = prop_oneof!["[0-9]{1,3}", "alice", "pw", "PLAIN", "LOGIN", "[ -~]{0,12}", "=", "\\*"];
        prop_oneof![
            4 => (verbs, prop::collection::vec(arg, 0..3)).prop_map(|(v, args)| {
                let mut l = v.to_string();
                for a in args {
                    l.push(' ');
                    l.push_str(&a);
                }
                l.into_bytes()
            }),
            1 => prop::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any sequence of lines, in any state: no panic, every reply is a
        /// well-formed status line (or a SASL continuation), the maildrop is
        /// only changed by a QUIT that said +OK.
        #[test]
        fn session_never_panics(lines in prop::collection::vec(line(), 1..25), login_first in any::<bool>()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let store = FakeStore::alice(3);
                let mut s = loopback(SessionConfig { max_bad_commands: 1000, max_auth_failures: 1000, ..cfg() });
                if login_first {
                    let mut out = Vec::new();
                    s.handle_line(b"USER alice\r\n", &store, &mut out).await.unwrap();
                    s.handle_line(b"PASS pw\r\n", &store, &mut out).await.unwrap();
                }
                for line in lines {
                    let mut out = Vec::new();
                    let flow = s.handle_line(&line, &store, &mut out).await.unwrap();
                    assert!(out.starts_with(b"+OK") || out.starts_with(b"-ERR") || out.starts_with(b"+ "), "{}", escape(&out));
                    assert!(out.ends_with(b"\r\n"));
                    if flow == Flow::Close {
                        break;
                    }
                }
                if store.uids().len() < 3 {
                    assert!(matches!(s.state(), State::Done), "messages removed outside UPDATE");
                }
            });
        }
    }
}

/// RETR in order (as fetchmail or a phone app downloads a maildrop): after
/// the second, the next messages come from storage in one call per batch,
/// the batch doubling; a deleted message is skipped; out-of-order RETR is
/// streamed by itself. What the client receives is the same either way.
#[tokio::test]
async fn sequential_retr_reads_ahead_in_growing_batches() {
    let store = FakeStore::alice(9);
    let mut s = logged_in(&store).await;
    let retr = |i: u32| {
        format!(
            "C: RETR {i}\nS: +OK 56 octets\nS: Subject: msg {i}\nS: From: a@b\nS:\nS: line 1\nS: ..dot line\nS: line 3\nS: ."
        )
    };
    transcript(&mut s, &store, &format!("C: DELE 6\nS: +OK message 6 deleted\n{}", retr(1))).await;
    assert!(store.fetch_many_calls.lock().unwrap().is_empty(), "one RETR reads nothing ahead");
    for i in [2, 3, 4, 5, 7, 8, 9] {
        transcript(&mut s, &store, &retr(i)).await;
    }
    // Batches of 2 (RETR 2), then 4 (asked for while RETR 3 is served,
    // skipping the deleted 6), then up to 8 (during RETR 5: the last
    // message).
    assert_eq!(*store.fetch_many_calls.lock().unwrap(), vec![vec![20, 30], vec![40, 50, 70, 80], vec![90]]);
    // Only RETR 1 went through the streaming fetch.
    assert_eq!(*store.fetch_lengths.lock().unwrap(), vec![None]);
    // Out of order: streamed alone, and the sequence starts over.
    transcript(&mut s, &store, &retr(3)).await;
    assert_eq!(*store.fetch_lengths.lock().unwrap(), vec![None, None]);
    assert_eq!(store.fetch_many_calls.lock().unwrap().len(), 3);
}
