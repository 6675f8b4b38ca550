//! ESEARCH, LIST-EXTENDED / LIST-STATUS, SPECIAL-USE CREATE and UTF8=ACCEPT
//! against the real storage service (Postgres + NATS via
//! `mailfleet_testkit::TestEnv`), driven by Python's imaplib.

mod common;

use common::Gateway;
use mailfleet_testkit::TestEnv;

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run client");
    assert!(
        out.status.success(),
        "client failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Run a Python imaplib script against a gateway over real storage; the
/// script gets the port as argv[1] and must print "ok".
async fn imaplib(script: &'static str) {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let port = gw.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(std::process::Command::new("timeout").args(["60", "python3", "-c", script, &port]))
    })
    .await
    .expect("join");
    assert!(out.lines().any(|l| l == "ok"), "{out}");
}

#[tokio::test]
async fn esearch_with_imaplib() {
    imaplib(
        r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice@example.org", "secret-pw")
typ, caps = m.capability()
assert b"ESEARCH" in caps[0].split(), caps
for i in range(1, 8):
    msg = ("From: bob@example.org\r\nSubject: note %d\r\n\r\nbody %d\r\n" % (i, i)).encode()
    flags = r"(\Seen)" if i % 2 == 0 else "()"
    typ, data = m.append("INBOX", flags, None, msg)
    assert typ == "OK", data
m.select("INBOX")
typ, data = m.uid("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN")
assert typ == "OK", data
# imaplib files untagged ESEARCH under its own name.
typ, data = m._untagged_response(typ, data, "ESEARCH")
line = data[-1].decode()
assert line.endswith('UID MIN 1 MAX 7 COUNT 4 ALL 1,3,5,7'), line
assert line.startswith('(TAG "'), line
typ, data = m.search(None, "RETURN", "(COUNT)", "SEEN")
typ, data = m._untagged_response(typ, data, "ESEARCH")
assert data[-1].decode().endswith("COUNT 3"), data
typ, data = m.search(None, "RETURN", "(MIN)", "SUBJECT", '"note 9"')
typ, data = m._untagged_response(typ, data, "ESEARCH")
assert data[-1].decode().count(" ") == 1, data
try:
    m.search(None, "RETURN", "(BOGUS)", "ALL")
    raise SystemExit("BOGUS accepted")
except imaplib.IMAP4.error as e:
    assert "Unknown SEARCH return option" in str(e), e
typ, data = m.search(None, "UNSEEN")
assert data == [b"1 3 5 7"], data
m.logout()
print("ok")
"#,
    )
    .await;
}

#[tokio::test]
async fn list_status_and_special_use_with_imaplib() {
    imaplib(
        r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice@example.org", "secret-pw")
typ, caps = m.capability()
for c in (b"LIST-EXTENDED", b"LIST-STATUS", b"SPECIAL-USE", b"CREATE-SPECIAL-USE"):
    assert c in caps[0].split(), caps
# New accounts come with Archive, Drafts, Junk, Sent and Trash.
typ, data = m._simple_command("CREATE", "Outgoing", r"(USE (\Sent))")
assert typ == "OK", data
typ, data = m._simple_command("CREATE", "Bin", r"(USE (\Trash))")
assert typ == "OK", data
typ, data = m._simple_command("CREATE", "Odd", r"(USE (\Important))")
assert typ == "NO" and b"[USEATTR]" in data[0], (typ, data)
m.create("Work/Reports")
m.subscribe("Work/Reports")
m.subscribe("Gone")
m.append("Outgoing", r"(\Seen)", None, b"Subject: sent\r\n\r\nx\r\n")
m.append("Outgoing", "()", None, b"Subject: draft\r\n\r\ny\r\n")

typ, data = m._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
typ, data = m._untagged_response(typ, data, "LIST")
assert b'(\\Sent \\HasNoChildren) "/" Outgoing' in data, data
assert b'(\\Trash \\HasNoChildren) "/" Bin' in data, data
assert len(data) == 7 and not any(b"INBOX" in d or b"Work" in d for d in data), data

typ, data = m._simple_command("LIST", '""', '("INBOX" "Outgoing")', "RETURN", "(STATUS (MESSAGES UNSEEN UIDNEXT))")
status = m.untagged_responses.pop("STATUS", [])
lists = m.untagged_responses.pop("LIST", [])
assert typ == "OK", data
assert lists == [b'(\\HasNoChildren) "/" INBOX', b'(\\Sent \\HasNoChildren) "/" Outgoing'], lists
assert status == [b'INBOX (MESSAGES 0 UNSEEN 0 UIDNEXT 1)', b'Outgoing (MESSAGES 2 UNSEEN 1 UIDNEXT 3)'], status

# The default mailboxes are subscribed too: look at these two only.
typ, data = m._simple_command("LIST", "(SUBSCRIBED)", '""', '("Gone" "W*")')
typ, data = m._untagged_response(typ, data, "LIST")
assert data == [b'(\\NonExistent \\Subscribed) "/" Gone', b'(\\HasNoChildren \\Subscribed) "/" Work/Reports'], data

typ, data = m._simple_command("LIST", "(SUBSCRIBED RECURSIVEMATCH)", '""', '("G%" "W%")')
typ, data = m._untagged_response(typ, data, "LIST")
assert data == [b'(\\NonExistent \\Subscribed) "/" Gone',
                b'(\\HasChildren) "/" Work ("CHILDINFO" ("SUBSCRIBED"))'], data
m.logout()
print("ok")
"#,
    )
    .await;
}

#[tokio::test]
async fn utf8_accept_with_imaplib() {
    imaplib(
        r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice@example.org", "secret-pw")
typ, caps = m.capability()
assert b"UTF8=ACCEPT" in caps[0].split(), caps
# Before ENABLE: modified UTF-7 (RFC 3501 5.1.3).
typ, data = m.create("&ZeVnLIqe-")
assert typ == "OK", data
typ, data = m.enable("UTF8=ACCEPT")
assert typ == "OK", data
assert m.utf8_enabled
# imaplib now sends UTF-8 quoted strings.
typ, data = m.create('"Données"')
assert typ == "OK", data
typ, data = m.list()
names = [d.decode("utf-8") for d in data]
assert '(\\HasNoChildren) "/" "Données"' in names, names
assert '(\\HasNoChildren) "/" "日本語"' in names, names
typ, data = m.status('"Données"', "(MESSAGES)")
assert data == ['"Données" (MESSAGES 0)'.encode()], data
m.logout()
print("ok")
"#,
    )
    .await;
}

/// RFC 6855 §4 APPEND … UTF8 (~{n}…) with 8-bit headers, read back whole.
#[tokio::test]
async fn append_utf8_with_real_storage() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = common::Client::connect(gw.addr).await;
    assert!(c.line().await.starts_with("* OK"));
    c.cmd("l", "LOGIN alice@example.org secret-pw").await;
    assert_eq!(c.cmd("e", "ENABLE UTF8=ACCEPT").await, vec!["* ENABLED UTF8=ACCEPT", "e OK ENABLE completed"]);
    let msg = "Subject: Grüße\r\nFrom: zoë@example.org\r\n\r\nschön\r\n";
    c.send(format!("a APPEND INBOX UTF8 (~{{{}+}}\r\n{msg})\r\n", msg.len()).as_bytes()).await;
    let got = c.until("a").await;
    assert!(got.last().is_some_and(|l| l.starts_with("a OK [APPENDUID ")), "{got:?}");
    c.cmd("s", "SELECT INBOX").await;
    let got = c.cmd("f", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE)").await;
    assert!(got.iter().any(|l| l == "Subject: Grüße"), "{got:?}");
}

#[tokio::test]
async fn imap4rev2_binary_and_searchres_with_imaplib() {
    imaplib(
        r#"
import imaplib, sys, base64
m = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
m.login("alice@example.org", "secret-pw")
typ, caps = m.capability()
for c in (b"IMAP4rev2", b"BINARY", b"SEARCHRES"):
    assert c in caps[0].split(), caps
blob = bytes(range(256)) * 3
b64 = base64.encodebytes(blob).replace(b"\n", b"\r\n")
msg = (b"From: bob@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
       b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
       b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln, eine sehr lange Zeile die weich umbrochen =\r\nwird.\r\n"
       b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       + b64 + b"--XX--\r\n")
typ, data = m.append("INBOX", None, None, msg)
assert typ == "OK", data
m.append("INBOX", r"(\Seen)", None, b"Subject: plain\r\n\r\nplain body\r\n")
typ, data = m._simple_command("ENABLE", "IMAP4rev2")
assert typ == "OK" and m.untagged_responses.pop("ENABLED") == [b"IMAP4rev2"], data
typ, data = m.select("INBOX")
assert typ == "OK", data
assert "RECENT" not in m.untagged_responses, m.untagged_responses
assert m.untagged_responses.pop("LIST") == [b'(\\HasNoChildren) "/" INBOX'], m.untagged_responses
typ, data = m.select("Sent", readonly=True)
assert m.untagged_responses.pop("LIST") == [b'(\\Sent \\HasNoChildren) "/" Sent'], m.untagged_responses
m.select("INBOX")
typ, data = m.fetch("1", "(BINARY.SIZE[2] BINARY.PEEK[2] BINARY.PEEK[1] BODY.PEEK[2])")
assert typ == "OK", data
head = data[0][0]
assert head.startswith(b"1 (BINARY.SIZE[2] 768 BINARY[2] ~{768}"), head
assert data[0][1] == blob, len(data[0][1])
# The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1).
assert data[1][1] == "Grüße aus Köln, eine sehr lange Zeile die weich umbrochen wird.".encode(), data[1]
assert data[2][1] == b64[:-2], data[2]
typ, data = m.fetch("1", "(FLAGS)")
assert data == [b"1 (FLAGS ())"], data
typ, data = m.fetch("1", "(BINARY[1])")
assert b"\\Seen" in data[1], data
typ, data = m.search(None, "UNSEEN")
assert data == [None], data
# Both are \Seen now: ESEARCH with only the tag (RFC 4731 §3.1).
esearch = m.untagged_responses.pop("ESEARCH")
assert len(esearch) == 1 and esearch[0].startswith(b"(TAG ") and b"ALL" not in esearch[0], esearch
typ, data = m.search(None, "SEEN")
esearch = m.untagged_responses.pop("ESEARCH")
assert esearch[0].endswith(b" ALL 1:2"), esearch
typ, data = m._simple_command("SEARCH", "RETURN", "(SAVE)", "SUBJECT", "plain")
assert typ == "OK" and "ESEARCH" not in m.untagged_responses, m.untagged_responses
typ, data = m.fetch("$", "(UID BINARY.SIZE[1])")
assert data == [b"2 (UID 2 BINARY.SIZE[1] 12)"], data
typ, data = m.uid("STORE", "$", "+FLAGS", r"(\Flagged)")
assert typ == "OK", data
typ, data = m.status("INBOX", "(MESSAGES DELETED SIZE)")
assert data[0].startswith(b"INBOX (MESSAGES 2 DELETED 0 SIZE "), data
m.logout()
print("ok")
"#,
    )
    .await;
}
