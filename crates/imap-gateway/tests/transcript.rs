//! RFC 3501 conversations against the gateway over loopback TCP, with the
//! in-memory store behind it (codec + session + driver, no storage service).

mod common;

use std::sync::Arc;

use common::{Gateway, transcript};
use imap_gateway::store::fake::FakeStore;

const MSG1: &[u8] = b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: Hello\r\nMessage-ID: <1@example.org>\r\n\r\nHi Alice!\r\n";
const MSG2: &[u8] = b"From: carol@example.org\r\nSubject: Lunch\r\n\r\nNoon?\r\n";

async fn gateway() -> (Gateway, Arc<FakeStore>) {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    (Gateway::start_with(store.clone(), |_| {}).await, store)
}

const CAPS_PRE: &str = "IMAP4REV1 IMAP4rev2 LITERAL+ SASL-IR STARTTLS AUTH=PLAIN AUTH=LOGIN IDLE ID NAMESPACE UNSELECT UIDPLUS MOVE ENABLE CONDSTORE QRESYNC STATUS=SIZE COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE CHILDREN UTF8=ACCEPT BINARY LIST-EXTENDED LIST-STATUS SPECIAL-USE CREATE-SPECIAL-USE ESEARCH SEARCHRES SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES ESORT";
const CAPS_POST: &str = "IMAP4REV1 IMAP4rev2 LITERAL+ SASL-IR IDLE ID NAMESPACE UNSELECT UIDPLUS MOVE ENABLE CONDSTORE QRESYNC STATUS=SIZE COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE CHILDREN UTF8=ACCEPT BINARY LIST-EXTENDED LIST-STATUS SPECIAL-USE CREATE-SPECIAL-USE ESEARCH SEARCHRES SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES ESORT";

#[tokio::test]
async fn greeting_capability_noop_logout() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        &format!(
            "
        S: * OK [CAPABILITY {CAPS_PRE}] Mailfleet IMAP ready
        C: a1 CAPABILITY
        S: * CAPABILITY {CAPS_PRE}
        S: a1 OK CAPABILITY completed
        C: a2 NOOP
        S: a2 OK NOOP completed
        C: a3 LOGOUT
        S: * BYE Mailfleet IMAP logging out
        S: a3 OK LOGOUT completed
        "
        ),
    )
    .await;
}

#[tokio::test]
async fn login_and_errors() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        &format!(
            "
        S: * OK ...
        C: a1 SELECT INBOX
        S: a1 BAD Not authenticated
        C: a2 LOGIN alice@example.org wrong
        S: a2 NO [AUTHENTICATIONFAILED] Authentication failed
        C: a3 FROB
        S: a3 BAD Syntax error
        C: a4 LOGIN alice@example.org pw
        S: a4 OK [CAPABILITY {CAPS_POST}] Logged in
        C: a5 LOGIN alice@example.org pw
        S: a5 BAD Already authenticated
        C: a6 CAPABILITY
        S: * CAPABILITY {CAPS_POST}
        S: a6 OK CAPABILITY completed
        "
        ),
    )
    .await;
}

#[tokio::test]
async fn too_many_bad_logins_closes() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        "
        S: * OK ...
        C: a1 LOGIN alice@example.org x
        S: a1 NO [AUTHENTICATIONFAILED] Authentication failed
        C: a2 LOGIN alice@example.org y
        S: a2 NO [AUTHENTICATIONFAILED] Authentication failed
        C: a3 LOGIN alice@example.org z
        S: a3 NO [AUTHENTICATIONFAILED] Authentication failed
        S: * BYE Too many failed logins
        ",
    )
    .await;
}

#[tokio::test]
async fn login_with_literals() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        "
        S: * OK ...
        C: a1 LOGIN {17}
        S: + Ready for literal data
        C: alice@example.org {2}
        S: + Ready for literal data
        C: pw
        S: a1 OK [CAPABILITY ...] Logged in
        ",
    )
    .await;
    transcript(
        gw.addr,
        "
        S: * OK ...
        C+: a1 LOGIN {17+}
        C: alice@example.org pw
        S: a1 OK [CAPABILITY ...] Logged in
        ",
    )
    .await;
}

#[tokio::test]
async fn authenticate_plain_and_login() {
    let (gw, _) = gateway().await;
    // base64("\0alice@example.org\0pw")
    let plain = "AGFsaWNlQGV4YW1wbGUub3JnAHB3";
    transcript(
        gw.addr,
        &format!(
            "
        S: * OK ...
        C: a1 AUTHENTICATE PLAIN {plain}
        S: a1 OK [CAPABILITY ...] Logged in
        "
        ),
    )
    .await;
    transcript(
        gw.addr,
        &format!(
            "
        S: * OK ...
        C: a1 AUTHENTICATE PLAIN
        S: + ...
        C: {plain}
        S: a1 OK [CAPABILITY ...] Logged in
        "
        ),
    )
    .await;
    transcript(
        gw.addr,
        "
        S: * OK ...
        C: a1 AUTHENTICATE PLAIN
        S: + ...
        C: *
        S: a1 BAD Authentication cancelled
        C: a2 AUTHENTICATE LOGIN
        S: + VXNlcm5hbWU6
        C: YWxpY2VAZXhhbXBsZS5vcmc=
        S: + UGFzc3dvcmQ6
        C: cHc=
        S: a2 OK [CAPABILITY ...] Logged in
        ",
    )
    .await;
}

#[tokio::test]
async fn login_disabled_without_tls_off_loopback_policy() {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    let gw = Gateway::start_with(store, |c| c.allow_plaintext_auth_on_loopback = false).await;
    transcript(
        gw.addr,
        "
        S: * OK [CAPABILITY IMAP4REV1 IMAP4rev2 LITERAL+ SASL-IR STARTTLS LOGINDISABLED IDLE ID NAMESPACE UNSELECT UIDPLUS MOVE ENABLE CONDSTORE QRESYNC STATUS=SIZE COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE CHILDREN UTF8=ACCEPT BINARY LIST-EXTENDED LIST-STATUS SPECIAL-USE CREATE-SPECIAL-USE ESEARCH SEARCHRES SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES ESORT] Mailfleet IMAP ready
        C: a1 LOGIN alice@example.org pw
        S: a1 NO [PRIVACYREQUIRED] Use STARTTLS first
        C: a2 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHB3
        S: a2 NO [PRIVACYREQUIRED] Use STARTTLS first
        ",
    )
    .await;
}

#[tokio::test]
async fn mailbox_management() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 CREATE Work/Projects
        S: a1 OK CREATE completed
        C: a2 CREATE Work/Projects
        S: a2 NO [ALREADYEXISTS] Mailbox already exists
        C: a3 CREATE INBOX
        S: a3 NO [ALREADYEXISTS] INBOX always exists
        C: a31 CREATE "a*b"
        S: a31 NO [CANNOT] Invalid mailbox name
        C: a4 LIST "" *
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\HasNoChildren) "/" Work/Projects
        S: a4 OK LIST completed
        C: a5 LIST "" %
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\Noselect \HasChildren) "/" Work
        S: a5 OK LIST completed
        C: a6 LIST "" ""
        S: * LIST (\Noselect) "/" ""
        S: a6 OK LIST completed
        C: a7 RENAME Work/Projects Archive
        S: a7 OK RENAME completed
        C: a8 DELETE Nope
        S: a8 NO [NONEXISTENT] No such mailbox
        C: a9 SUBSCRIBE Archive
        S: a9 OK SUBSCRIBE completed
        C: b1 LSUB "" *
        S: * LSUB (\HasNoChildren) "/" Archive
        S: b1 OK LSUB completed
        C: b2 UNSUBSCRIBE Archive
        S: b2 OK UNSUBSCRIBE completed
        C: b3 DELETE Archive
        S: b3 OK DELETE completed
        C: b4 DELETE INBOX
        S: b4 NO [CANNOT] INBOX cannot be deleted
        C: b5 CREATE &ZeVnLIqe-
        S: b5 OK CREATE completed
        C: b6 LIST "" &ZeVnLIqe-
        S: * LIST (\HasNoChildren) "/" &ZeVnLIqe-
        S: b6 OK LIST completed
        C: b7 STATUS INBOX (MESSAGES UNSEEN UIDNEXT UIDVALIDITY RECENT)
        S: * STATUS INBOX (MESSAGES 0 UNSEEN 0 UIDNEXT 1 UIDVALIDITY 1001 RECENT 0)
        S: b7 OK STATUS completed
        C: b8 NAMESPACE
        S: * NAMESPACE (("" "/")) NIL NIL
        S: b8 OK NAMESPACE completed
        C: b9 ID ("name" "test")
        S: * ID ("name" "Mailfleet" "version" "0.1.0")
        S: b9 OK ID completed
        C: c1 ENABLE CONDSTORE X-UNKNOWN
        S: * ENABLED CONDSTORE
        S: c1 OK ENABLE completed
        C: c2 ENABLE CONDSTORE
        S: * ENABLED
        S: c2 OK ENABLE completed
        "#,
    )
    .await;
}

#[tokio::test]
async fn select_fetch_store_expunge() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", MSG1, &[]);
    store.add_message(1, "INBOX", MSG2, &["\\Flagged"]);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 FETCH 1 FLAGS
        S: a1 BAD No mailbox selected
        C: a2 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * 2 EXISTS
        S: * 2 RECENT
        S: * OK [UNSEEN 1] Message 1 is first unseen
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] Flags permitted
        S: * OK [UIDVALIDITY 1001] UIDs valid
        S: * OK [UIDNEXT 3] Predicted next UID
        S: * OK [HIGHESTMODSEQ ...] Highest
        S: a2 OK [READ-WRITE] SELECT completed
        C: a3 FETCH 1:* (UID FLAGS RFC822.SIZE)
        S: * 1 FETCH (UID 1 FLAGS (\Recent) RFC822.SIZE 104)
        S: * 2 FETCH (UID 2 FLAGS (\Flagged \Recent) RFC822.SIZE 50)
        S: a3 OK FETCH completed
        C: a4 FETCH 3 FLAGS
        S: a4 BAD Invalid sequence number
        C: a5 FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]
        S: * 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}
        S: Subject: Lunch
        S:
        S: )
        S: a5 OK FETCH completed
        C: a6 FETCH 2 BODY[TEXT]
        S: * 2 FETCH (BODY[TEXT] {7}
        S: Noon?
        S:  FLAGS (\Flagged \Seen \Recent))
        S: a6 OK FETCH completed
        C: a7 UID FETCH 1 (BODY.PEEK[]<0.4> ENVELOPE)
        S: * 1 FETCH (UID 1 BODY[]<0> {4}
        S: From ENVELOPE (NIL "Hello" NIL NIL NIL NIL NIL NIL NIL "<1@example.org>"))
        S: a7 OK FETCH completed
        C: a8 STORE 1 +FLAGS (\Deleted)
        S: * 1 FETCH (FLAGS (\Deleted \Recent))
        S: a8 OK STORE completed
        C: a9 UID STORE 2 -FLAGS.SILENT (\Flagged)
        S: a9 OK STORE completed
        C: b1 SEARCH UNSEEN
        S: * SEARCH 1
        S: b1 OK SEARCH completed
        C: b2 UID SEARCH SEEN
        S: * SEARCH 2
        S: b2 OK SEARCH completed
        C: b3 SEARCH OR DELETED SUBJECT lunch
        S: * SEARCH 1 2
        S: b3 OK SEARCH completed
        C: b4 SEARCH CHARSET KOI8-R ALL
        S: b4 NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset
        C: b5 EXPUNGE
        S: * 1 EXPUNGE
        S: b5 OK EXPUNGE completed
        C: b6 FETCH * UID
        S: * 1 FETCH (UID 2)
        S: b6 OK FETCH completed
        C: b7 UNSELECT
        S: b7 OK UNSELECT completed
        "#,
    )
    .await;
}

#[tokio::test]
async fn idle_reports_new_mail_and_ends_with_done() {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    store.add_message(1, "INBOX", MSG1, &["\\Seen"]);
    // No NATS here: the periodic check finds the change.
    let gw = Gateway::start_with(store.clone(), |c| c.idle_poll_interval = std::time::Duration::from_millis(50)).await;
    let mut c = common::Client::connect(gw.addr).await;
    c.line().await;
    c.cmd("a1", "LOGIN alice@example.org pw").await;
    c.cmd("a2", "SELECT INBOX").await;
    assert_eq!(c.cmd("a3", "IDLE").await, vec!["+ idling"]);
    store.add_message(1, "INBOX", MSG2, &[]);
    assert_eq!(c.line().await, "* 2 EXISTS");
    // RFC 3501 §2.3.2: this session is the first to see it, so it is \Recent here.
    assert_eq!(c.line().await, "* 2 RECENT");
    c.send(b"DONE\r\n").await;
    assert_eq!(c.until("a3").await, vec!["a3 OK IDLE terminated"]);
    // Anything but DONE ends IDLE with BAD; the session goes on.
    assert_eq!(c.cmd("a4", "IDLE").await, vec!["+ idling"]);
    c.send(b"a5 NOOP\r\n").await;
    assert_eq!(c.until("a4").await, vec!["a4 BAD Expected DONE"]);
    assert_eq!(c.cmd("a6", "NOOP").await, vec!["a6 OK NOOP completed"]);
}

#[tokio::test]
async fn read_only_examine_close_copy_move() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", MSG1, &[]);
    store.add_message(1, "INBOX", MSG2, &["\\Deleted"]);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 EXAMINE INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * 2 EXISTS
        S: * 2 RECENT
        S: * OK [UNSEEN 1] Message 1 is first unseen
        S: * OK [PERMANENTFLAGS ()] Flags permitted
        S: * OK [UIDVALIDITY 1001] UIDs valid
        S: * OK [UIDNEXT 3] Predicted next UID
        S: * OK [HIGHESTMODSEQ ...] Highest
        S: a1 OK [READ-ONLY] EXAMINE completed
        C: a2 STORE 1 +FLAGS (\Seen)
        S: a2 NO [READ-ONLY] Mailbox is read-only
        C: a3 FETCH 1 BODY[TEXT]
        S: * 1 FETCH (BODY[TEXT] {11}
        S: Hi Alice!
        S: )
        S: a3 OK FETCH completed
        C: a4 COPY 1:2 Nowhere
        S: a4 NO [TRYCREATE] No such mailbox
        C: a5 CREATE Saved
        S: a5 OK CREATE completed
        C: a6 COPY 1:2 Saved
        S: a6 OK [COPYUID 1002 1:2 1:2] COPY completed
        C: a7 CLOSE
        S: a7 OK CLOSE completed
        C: a8 SELECT INBOX
        S: ...
        S: ...
        S: ...
        S: ...
        S: ...
        S: ...
        S: ...
        S: ...
        S: a8 OK [READ-WRITE] SELECT completed
        C: a9 UID MOVE 2 Saved
        S: * OK [COPYUID 1002 2 3] Moved UIDs
        S: * 2 EXPUNGE
        S: a9 OK MOVE completed
        C: b1 UID EXPUNGE 1
        S: b1 OK EXPUNGE completed
        C: b2 STORE 1 FLAGS (\Deleted)
        S: * 1 FETCH (FLAGS (\Deleted \Recent))
        S: b2 OK STORE completed
        C: b3 CLOSE
        S: b3 OK CLOSE completed
        C: b4 STATUS INBOX (MESSAGES)
        S: * STATUS INBOX (MESSAGES 0)
        S: b4 OK STATUS completed
        C: b5 EXPUNGE
        S: b5 BAD No mailbox selected
        "#,
    )
    .await;
}

#[tokio::test]
async fn append_with_literals_and_limits() {
    let (gw, store) = gateway().await;
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 APPEND INBOX (\Seen) "14-Nov-2023 22:13:20 +0000" {11}
        S: + Ready for literal data
        C: hello world
        S: a1 OK [APPENDUID 1001 1] APPEND completed
        C+: a2 APPEND INBOX {5+}
        C: howdy
        S: a2 OK [APPENDUID 1001 2] APPEND completed
        C: a3 APPEND Nope {2}
        S: + Ready for literal data
        C: hi
        S: a3 NO [TRYCREATE] No such mailbox
        C: a4 APPEND INBOX {999999999}
        S: a4 NO [TOOBIG] Literal too large
        C: a5 NOOP
        S: a5 OK NOOP completed
        "#,
    )
    .await;
    store.set_down(true);
    transcript(
        gw.addr,
        "
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 NO [UNAVAILABLE] Storage is unavailable, try again later
        ",
    )
    .await;
}

#[tokio::test]
async fn literal_before_login_is_bounded() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        "
        S: * OK ...
        C: a1 LOGIN {100000}
        S: a1 NO [TOOBIG] Literal too large
        C: a2 NOOP
        S: a2 OK NOOP completed
        ",
    )
    .await;
}

#[tokio::test]
async fn quota_and_deleted_status() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", MSG1, &["\\Deleted"]);
    store.add_message(1, "INBOX", MSG2, &[]);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 GETQUOTAROOT INBOX
        S: * QUOTAROOT INBOX
        S: a1 OK GETQUOTAROOT completed
        C: a2 GETQUOTA ""
        S: a2 NO [NONEXISTENT] No quota is set
        C: a3 STATUS INBOX (DELETED DELETED-STORAGE MESSAGES SIZE)
        S: * STATUS INBOX (DELETED 1 DELETED-STORAGE 104 MESSAGES 2 SIZE 154)
        S: a3 OK STATUS completed
        C: a4 SETQUOTA "" (STORAGE 10)
        S: a4 NO [NOPERM] Quotas are set by the administrator
        "#,
    )
    .await;
    store.set_quota(10 * 1024);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 GETQUOTAROOT INBOX
        S: * QUOTAROOT INBOX ""
        S: * QUOTA "" (STORAGE 1 10)
        S: a1 OK GETQUOTAROOT completed
        C: a2 GETQUOTA ""
        S: * QUOTA "" (STORAGE 1 10)
        S: a2 OK GETQUOTA completed
        C: a3 GETQUOTA "other"
        S: a3 NO [NONEXISTENT] No such quota root
        C: a4 GETQUOTAROOT Nope
        S: a4 NO [NONEXISTENT] No such mailbox
        "#,
    )
    .await;
    store.set_quota(150);
    transcript(
        gw.addr,
        "
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 APPEND INBOX {5}
        S: + Ready for literal data
        C: howdy
        S: a1 NO [OVERQUOTA] Over quota
        ",
    )
    .await;
}

#[tokio::test]
async fn condstore() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", MSG1, &[]); // modseq 2
    store.add_message(1, "INBOX", MSG2, &[]); // modseq 3
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 STATUS INBOX (HIGHESTMODSEQ)
        S: * STATUS INBOX (HIGHESTMODSEQ 3)
        S: a1 OK STATUS completed
        C: a2 SELECT INBOX (CONDSTORE)
        S: * FLAGS ...
        S: * 2 EXISTS
        S: * 2 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ...
        S: * OK [UIDVALIDITY 1001] UIDs valid
        S: * OK [UIDNEXT 3] Predicted next UID
        S: * OK [HIGHESTMODSEQ 3] Highest
        S: a2 OK [READ-WRITE] SELECT completed
        C: a3 FETCH 1:* (FLAGS) (CHANGEDSINCE 2)
        S: * 2 FETCH (FLAGS (\Recent) MODSEQ (3))
        S: a3 OK FETCH completed
        C: a4 STORE 1 +FLAGS.SILENT (\Seen)
        S: * 1 FETCH (MODSEQ (4))
        S: a4 OK STORE completed
        C: a5 UID STORE 1:2 (UNCHANGEDSINCE 3) +FLAGS (\Flagged)
        S: * 2 FETCH (UID 2 FLAGS (\Flagged \Recent) MODSEQ (5))
        S: a5 OK [MODIFIED 1] Conditional STORE failed for some messages
        C: a6 SEARCH MODSEQ 5
        S: * SEARCH 2 (MODSEQ 5)
        S: a6 OK SEARCH completed
        C: a7 SEARCH MODSEQ 99
        S: * SEARCH
        S: a7 OK SEARCH completed
        C: a8 FETCH 1 (MODSEQ)
        S: * 1 FETCH (MODSEQ (4))
        S: a8 OK FETCH completed
        C: a9 SELECT INBOX (QRESYNC (1001 1))
        S: a9 BAD ENABLE QRESYNC first
        C: b1 UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)
        S: b1 BAD VANISHED needs UID FETCH with CHANGEDSINCE after ENABLE QRESYNC
        "#,
    )
    .await;
}

#[tokio::test]
async fn autologout_and_shutdown_say_bye() {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    let gw = Gateway::start_with(store.clone(), |c| c.login_timeout = std::time::Duration::from_millis(100)).await;
    let mut idle = common::Client::connect(gw.addr).await;
    idle.line().await;
    // RFC 3501 §5.4: autologout with BYE, then the connection closes.
    assert_eq!(idle.line().await, "* BYE Autologout; idle for too long");
    assert_eq!(idle.line().await, "<EOF>");

    let (gw, _) = gateway().await;
    let mut c = common::Client::connect(gw.addr).await;
    c.line().await;
    c.cmd("a1", "LOGIN alice@example.org pw").await;
    gw.shutdown.cancel();
    assert_eq!(c.line().await, "* BYE Server shutting down");
    assert_eq!(c.line().await, "<EOF>");
}

#[tokio::test]
async fn ten_thousand_messages() {
    let (gw, store) = gateway().await;
    for i in 0..10_000 {
        store.add_message(1, "INBOX", format!("Subject: m{i}\r\n\r\nbody {i}\r\n").as_bytes(), &[]);
    }
    let mut c = common::Client::connect(gw.addr).await;
    c.line().await;
    c.cmd("a1", "LOGIN alice@example.org pw").await;
    let started = std::time::Instant::now();
    let sel = c.cmd("a2", "SELECT INBOX").await;
    assert!(sel.contains(&"* 10000 EXISTS".to_string()), "{sel:?}");
    let all = c.cmd("a3", "FETCH 1:* (UID FLAGS ENVELOPE)").await;
    assert_eq!(all.len(), 10_001);
    assert!(
        all[9_999].starts_with("* 10000 FETCH (UID 10000 FLAGS (\\Recent) ENVELOPE (NIL \"m9999\""),
        "{}",
        all[9_999]
    );
    let search = c.cmd("a4", "UID SEARCH 9990:*").await;
    assert_eq!(search[0], "* SEARCH 9990 9991 9992 9993 9994 9995 9996 9997 9998 9999 10000");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
}

/// The session hands FETCH output to the driver in chunks while it runs.
#[tokio::test]
async fn fetch_output_is_streamed_in_order() {
    use imap_gateway::codec::{Framer, Input, Mode, encode};
    use imap_gateway::session::{Context, Session};
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    for i in 0..200 {
        store.add_message(1, "INBOX", format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(), &[]);
    }
    let ctx = Context {
        tls: false,
        starttls_available: false,
        plaintext_auth_allowed: true,
        max_auth_failures: 3,
        client: std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let mut session = Session::new(store, ctx);
    let mut framer = Framer::new(4096);
    framer.push(b"a LOGIN alice@example.org pw\r\nb SELECT INBOX\r\nc FETCH 1:* (UID RFC822.SIZE)\r\n");
    let mut next = || match framer.next(Mode::Command, imap_gateway::codec::Limits { line: 64 * 1024, literals: 100 }) {
        Input::Command(c) => c,
        other => panic!("{other:?}"),
    };
    session.handle(next()).await;
    session.handle(next()).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let collect = async {
        let mut chunks = Vec::new();
        while let Some(c) = rx.recv().await {
            chunks.push(c);
        }
        chunks
    };
    let (reply, chunks) = tokio::join!(session.handle_streaming(next(), Some(tx)), collect);
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let mut wire: Vec<u8> = chunks.concat();
    for r in &reply.responses {
        wire.extend(encode(r));
    }
    let text = String::from_utf8(wire).expect("ascii");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 201);
    for (i, line) in lines[..200].iter().enumerate() {
        assert!(line.starts_with(&format!("* {} FETCH (UID {} ", i + 1, i + 1)), "{line}");
    }
    assert_eq!(lines[200], "c OK FETCH completed");
}

#[tokio::test]
async fn qresync() {
    let (gw, store) = gateway().await;
    for m in [MSG1, MSG2, MSG1] {
        store.add_message(1, "INBOX", m, &[]); // modseqs 2, 3, 4
    }
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 ENABLE QRESYNC
        S: * ENABLED QRESYNC
        S: a1 OK ENABLE completed
        C: a2 SELECT INBOX
        S: * FLAGS ...
        S: * 3 EXISTS
        S: * 3 RECENT
        S: ...
        S: ...
        S: ...
        S: ...
        S: * OK [HIGHESTMODSEQ 4] Highest
        S: a2 OK [READ-WRITE] SELECT completed
        C: a3 STORE 1 +FLAGS.SILENT (\Deleted)
        S: * 1 FETCH (MODSEQ (5))
        S: a3 OK STORE completed
        C: a4 EXPUNGE
        S: * VANISHED 1
        S: a4 OK EXPUNGE completed
        C: a5 SELECT INBOX (QRESYNC (1001 4 1:3))
        S: * OK [CLOSED] Previous mailbox closed
        S: * FLAGS ...
        S: * 2 EXISTS
        S: * 0 RECENT
        S: ...
        S: ...
        S: ...
        S: ...
        S: * OK [HIGHESTMODSEQ 6] Highest
        S: * VANISHED (EARLIER) 1
        S: a5 OK [READ-WRITE] SELECT completed
        C: a6 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)
        S: * VANISHED (EARLIER) 1
        S: * 1 FETCH (UID 2 FLAGS () MODSEQ (3))
        S: * 2 FETCH (UID 3 FLAGS () MODSEQ (4))
        S: a6 OK FETCH completed
        C: a7 FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)
        S: a7 BAD VANISHED needs UID FETCH with CHANGEDSINCE after ENABLE QRESYNC
        C: a8 SELECT INBOX (QRESYNC (999 1))
        S: * OK [CLOSED] Previous mailbox closed
        S: ...
        S: ...
        S: ...
        S: ...
        S: ...
        S: ...
        S: ...
        S: * OK [HIGHESTMODSEQ 6] Highest
        S: a8 OK [READ-WRITE] SELECT completed
        "#,
    )
    .await;
}

/// COMPRESS=DEFLATE (RFC 4978): after the OK, both directions are raw
/// DEFLATE with sync flushes; a second COMPRESS is refused.
#[tokio::test]
async fn compress_deflate() {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", MSG1, &[]);
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let mut buf = vec![0u8; 65536];
    let n = tcp.read(&mut buf).await.expect("greeting");
    assert!(buf[..n].starts_with(b"* OK"));
    tcp.write_all(b"a1 LOGIN alice@example.org pw\r\na2 COMPRESS DEFLATE\r\n").await.expect("write");
    let mut plain = Vec::new();
    while !plain.ends_with(b"a2 OK DEFLATE active\r\n") {
        let n = tcp.read(&mut buf).await.expect("read");
        assert!(n > 0, "{}", String::from_utf8_lossy(&plain));
        plain.extend_from_slice(&buf[..n]);
    }
    let (mut tx, mut rx) = (Compress::new(Compression::fast(), false), Decompress::new(false));
    let mut exchange = async |tcp: &mut tokio::net::TcpStream, cmd: &str, tag: &str| -> String {
        let mut out = Vec::with_capacity(cmd.len() + 64);
        tx.compress_vec(cmd.as_bytes(), &mut out, FlushCompress::Sync).expect("deflate");
        tcp.write_all(&out).await.expect("write");
        let mut text = Vec::with_capacity(1 << 20);
        while !String::from_utf8_lossy(&text).contains(&format!("{tag} ")) {
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0);
            rx.decompress_vec(&buf[..n], &mut text, FlushDecompress::Sync).expect("inflate");
        }
        String::from_utf8_lossy(&text).to_string()
    };
    assert_eq!(exchange(&mut tcp, "b1 NOOP\r\n", "b1").await, "b1 OK NOOP completed\r\n");
    let sel = exchange(&mut tcp, "b2 EXAMINE INBOX\r\n", "b2").await;
    assert!(sel.contains("* 1 EXISTS\r\n") && sel.ends_with("b2 OK [READ-ONLY] EXAMINE completed\r\n"), "{sel}");
    let body = exchange(&mut tcp, "b3 FETCH 1 BODY[TEXT]\r\n", "b3").await;
    assert_eq!(body, "* 1 FETCH (BODY[TEXT] {11}\r\nHi Alice!\r\n)\r\nb3 OK FETCH completed\r\n");
    let again = exchange(&mut tcp, "b4 COMPRESS DEFLATE\r\n", "b4").await;
    assert_eq!(again, "b4 NO [COMPRESSIONACTIVE] Compression is already active\r\n");
}

/// A flood of commands is slowed to the configured rate, and every command
/// is still answered.
#[tokio::test]
async fn command_rate_is_paced() {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    let gw = Gateway::start_with(store, |c| {
        c.commands_per_second = 100;
        c.command_burst = 5;
    })
    .await;
    let mut c = common::Client::connect(gw.addr).await;
    c.line().await;
    let started = std::time::Instant::now();
    let flood: String = (0..35).map(|i| format!("n{i} NOOP\r\n")).collect();
    c.send(flood.as_bytes()).await;
    for i in 0..35 {
        assert_eq!(c.line().await, format!("n{i} OK NOOP completed"));
    }
    // 5 at once, then 30 at 100/s: at least ~300 ms.
    assert!(started.elapsed() >= std::time::Duration::from_millis(250), "{:?}", started.elapsed());
}

/// IDLE updates do not reset the autologout clock (RFC 3501 §5.4,
/// RFC 2177 §3: the client must re-issue IDLE; a dead one is dropped).
#[tokio::test]
async fn idling_client_is_logged_out_eventually() {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    let gw = Gateway::start_with(store, |c| {
        c.connection.idle_timeout = std::time::Duration::from_millis(400);
        c.idle_poll_interval = std::time::Duration::from_millis(50);
    })
    .await;
    let mut c = common::Client::connect(gw.addr).await;
    c.line().await;
    c.cmd("a1", "LOGIN alice@example.org pw").await;
    c.cmd("a2", "SELECT INBOX").await;
    assert_eq!(c.cmd("a3", "IDLE").await, vec!["+ idling"]);
    assert_eq!(c.line().await, "* BYE Autologout; idle for too long");
    assert_eq!(c.line().await, "<EOF>");
}

/// A failed login is answered only after a pause (slows password
/// guessing); a good one is not. The pause is long (2 s) so that a loaded
/// machine cannot make an undelayed login look delayed.
#[tokio::test]
async fn failed_login_is_delayed() {
    const DELAY: std::time::Duration = std::time::Duration::from_secs(2);
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    let gw = Gateway::start_with(store, |c| c.connection.auth_failure_delay = DELAY).await;
    let mut c = common::Client::connect(gw.addr).await;
    c.line().await;
    let started = std::time::Instant::now();
    assert_eq!(
        c.cmd("a1", "LOGIN alice@example.org nope").await,
        vec!["a1 NO [AUTHENTICATIONFAILED] Authentication failed"]
    );
    assert!(started.elapsed() >= DELAY, "{:?}", started.elapsed());
    let started = std::time::Instant::now();
    assert_eq!(c.cmd("a2", "LOGIN alice@example.org pw").await.len(), 1);
    assert!(started.elapsed() < DELAY, "a good login was delayed: {:?}", started.elapsed());
}

/// STARTTLS (RFC 3501 §6.2.1): commands pipelined before the handshake are
/// discarded, not executed inside the TLS session (no injection, RFC 7817 §3).
#[tokio::test]
async fn starttls_discards_pipelined_plaintext() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (gw, _) = gateway().await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let mut plain = BufReader::new(&mut tcp);
    let mut line = String::new();
    plain.read_line(&mut line).await.expect("greeting");
    plain.get_mut().write_all(b"a STARTTLS\r\nb LOGIN alice@example.org pw\r\n").await.expect("write");
    line.clear();
    plain.read_line(&mut line).await.expect("ok");
    assert_eq!(line, "a OK Begin TLS negotiation now\r\n");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = gw.tls_client().connect(name, tcp).await.expect("TLS handshake");
    let mut tls = BufReader::new(tls);
    tls.get_mut().write_all(b"c CAPABILITY\r\n").await.expect("write");
    let mut got = Vec::new();
    loop {
        line.clear();
        tls.read_line(&mut line).await.expect("read");
        got.push(line.trim_end().to_string());
        if line.starts_with("c ") || line.is_empty() {
            break;
        }
    }
    // Not logged in (b was dropped), no STARTTLS offered any more.
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("* CAPABILITY IMAP4REV1") && got[0].contains("AUTH=PLAIN"), "{got:?}");
    assert!(!got[0].contains("STARTTLS"), "{got:?}");
    assert_eq!(got[1], "c OK CAPABILITY completed");
}

/// Another session's change is reported even when this session's own STORE
/// raised the MODSEQ past it in the meantime; our own change is reported
/// once; an expunge made elsewhere waits until it may be sent (RFC 3501
/// §7.4.1: not during FETCH, STORE or SEARCH).
#[tokio::test]
async fn concurrent_changes_are_reported_once_and_expunges_wait_for_their_moment() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", MSG1, &["\\Seen"]);
    store.add_message(1, "INBOX", MSG2, &["\\Seen"]);
    let mut a = common::Client::connect(gw.addr).await;
    let mut b = common::Client::connect(gw.addr).await;
    for c in [&mut a, &mut b] {
        c.line().await;
        c.cmd("x1", "LOGIN alice@example.org pw").await;
        c.cmd("x2", "SELECT INBOX").await;
    }
    assert_eq!(b.cmd("b1", "STORE 1 +FLAGS.SILENT (\\Flagged)").await, vec!["b1 OK STORE completed"]);
    // A's STORE comes after B's: A hears of B's change and of its own, each once.
    let mut got = a.cmd("a1", "STORE 2 +FLAGS (\\Answered)").await;
    got.sort();
    assert_eq!(
        got,
        vec![
            "* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))",
            "* 2 FETCH (FLAGS (\\Answered \\Seen \\Recent))",
            "a1 OK STORE completed"
        ]
    );
    assert_eq!(a.cmd("a2", "NOOP").await, vec!["a2 OK NOOP completed"]);
    // B expunges message 1: A's FETCH must not report it, A's NOOP does.
    b.cmd("b2", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(b.cmd("b3", "EXPUNGE").await, vec!["* 1 EXPUNGE", "b3 OK EXPUNGE completed"]);
    let fetched = a.cmd("a3", "FETCH 2 (UID)").await;
    assert_eq!(fetched, vec!["* 2 FETCH (UID 2)", "a3 OK FETCH completed"]);
    let searched = a.cmd("a4", "SEARCH ALL").await;
    assert_eq!(searched, vec!["* SEARCH 2", "a4 OK SEARCH completed"]);
    assert_eq!(a.cmd("a5", "NOOP").await, vec!["* 1 EXPUNGE", "a5 OK NOOP completed"]);
    assert_eq!(a.cmd("a6", "FETCH 1 (UID)").await, vec!["* 1 FETCH (UID 2)", "a6 OK FETCH completed"]);
}
