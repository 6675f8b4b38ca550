//! Properties over arbitrary input: the codec never panics, and a session
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

fn framer_events(bytes: &[u8]) -> usize {
    let mut f = Framer::new(4096);
    f.push(bytes);
    let mut n = 0;
    for mode in [Mode::Command, Mode::AuthData, Mode::IdleDone].iter().cycle().take(64) {
        match f.next(*mode, imap_gateway::codec::Limits { line: 2048, literals: 1024 }) {
            Input::NeedMore | Input::LineTooLong => break,
            _ => n += 1,
        }
    }
    n
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn codec_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        framer_events(&bytes);
    }

    #[test]
    fn codec_never_panics_on_imap_like_input(
        lines in proptest::collection::vec("[a-zA-Z0-9 ()\\[\\]{}+*\"\\\\.<>:%-]{0,40}", 0..8)
    ) {
        let text = lines.join("\r\n") + "\r\n";
        framer_events(text.as_bytes());
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
