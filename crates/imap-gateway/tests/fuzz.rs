//! Properties over arbitrary input: the codec never panics (fuzz smoke)
//! and takes each command's tag from the input, and a session
//! fed any sequence of commands answers each with exactly one tagged
//! response (or a continuation) without panicking.

use std::sync::Arc;

use imap_gateway::codec::{Framer, Input, Mode};
use imap_gateway::session::{Context, Session, Then};
use imap_gateway::store::fake::FakeStore;
use proptest::prelude::*;

const COMMANDS: &[&str] = &[
    "CAPABILITY",
    "NOOP",
    "LOGIN alice@example.org pw",
    "LOGIN alice@example.org nope",
    "AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHB3",
    "SELECT INBOX",
    "EXAMINE INBOX",
    "SELECT Nope",
    "CREATE Work",
    "DELETE Work",
    "RENAME Work Play",
    "LIST \"\" *",
    "LSUB \"\" *",
    "STATUS INBOX (MESSAGES UNSEEN HIGHESTMODSEQ)",
    "FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE)",
    "FETCH 1 BODY[]",
    "FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.5>",
    "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)",
    "FETCH 9 FLAGS",
    "STORE 1 +FLAGS (\\Deleted)",
    "UID STORE 1:* -FLAGS.SILENT (\\Seen)",
    "STORE 1:2 (UNCHANGEDSINCE 1) FLAGS (\\Flagged)",
    "SEARCH OR SEEN NOT DELETED",
    "UID SEARCH 1:* SUBJECT hello",
    "COPY 1 Work",
    "UID MOVE 1:* Work",
    "EXPUNGE",
    "UID EXPUNGE 1",
    "CLOSE",
    "UNSELECT",
    "NAMESPACE",
    "ID NIL",
    "ENABLE CONDSTORE",
    "GETQUOTAROOT INBOX",
    "IDLE",
    "STARTTLS",
    "LOGOUT",
];

/// Feed `bytes` to a framer; the tags of the commands it produced must
/// each begin a line of the input (the framer takes a tag from what the
/// client sent, never makes one up).
fn framer_events(bytes: &[u8]) -> Result<usize, String> {
    let mut f = Framer::new(4096);
    f.push(bytes);
    let mut n = 0;
    for mode in [Mode::Command, Mode::AuthData, Mode::IdleDone].iter().cycle().take(64) {
        match f.next(*mode, imap_gateway::codec::Limits { line: 2048, literals: 1024 }) {
            Input::NeedMore | Input::LineTooLong => break,
            Input::Command(cmd) => {
                let tag = format!("{} ", cmd.tag.inner());
                let begins_a_line = bytes.starts_with(tag.as_bytes())
                    || bytes.windows(tag.len() + 1).any(|w| w[0] == b'\n' && &w[1..] == tag.as_bytes());
                if !begins_a_line {
                    return Err(format!("tag {:?} is not in the input", cmd.tag.inner()));
                }
                n += 1;
            }
            _ => n += 1,
        }
    }
    Ok(n)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Fuzz smoke test: arbitrary bytes never panic the framer, and every
    /// command it yields carries a tag the input holds.
    #[test]
    fn codec_fuzz_smoke(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert_eq!(framer_events(&bytes).map(drop), Ok(()));
    }

    /// The same on IMAP-like lines (tags, atoms, lists, literals), where
    /// commands do come out.
    #[test]
    fn codec_fuzz_smoke_on_imap_like_input(
        lines in proptest::collection::vec("[a-zA-Z0-9 ()\\[\\]{}+*\"\\\\.<>:%-]{0,40}", 0..8)
    ) {
        let text = lines.join("\r\n") + "\r\n";
        prop_assert_eq!(framer_events(text.as_bytes()).map(drop), Ok(()));
    }

    #[test]
    fn every_command_gets_one_tagged_answer(picks in proptest::collection::vec(0..COMMANDS.len(), 1..25)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
            store.add_message(1, "INBOX", b"Subject: hello\r\n\r\nbody\r\n", &[]);
            store.add_message(1, "INBOX", b"Subject: two\r\n\r\nbody 2\r\n", &["\\Seen"]);
            let ctx = Context { tls: false, starttls_available: false, plaintext_auth_allowed: true, max_auth_failures: 100, client: std::net::Ipv4Addr::LOCALHOST.into() };
            let mut session = Session::new(store, ctx);
            let mut framer = Framer::new(65536);
            for (i, pick) in picks.iter().enumerate() {
                let tag = format!("t{i}");
                framer.push(format!("{tag} {}\r\n", COMMANDS[*pick]).as_bytes());
                let Input::Command(cmd) = framer.next(Mode::Command, imap_gateway::codec::Limits { line: 64 * 1024, literals: 1024 }) else {
                    panic!("{} did not parse", COMMANDS[*pick]);
                };
                let mut reply = session.handle(cmd).await;
                if reply.then == Then::Idle {
                    reply = session.idle_done().await;
                }
                let wire: Vec<String> = reply
                    .responses
                    .iter()
                    .map(|r| String::from_utf8_lossy(&imap_gateway::codec::encode(r)).to_string())
                    .collect();
                let tagged = wire.iter().filter(|l| l.starts_with(&format!("{tag} "))).count();
                prop_assert_eq!(tagged, 1, "{} -> {:?}", COMMANDS[*pick], wire);
                if reply.then == Then::Close {
                    break;
                }
            }
            Ok(())
        })?;
    }
}
