//! mailctl end to end: the real binary against a real storage service.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use mailfleet_testkit::TestEnv;

fn mailctl(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .env("MAILCTL_PKI", mailfleet_testkit::fleet_pki())
        .arg("--admin-url")
        .arg(env.admin_url())
        .args(args)
        .output()
        .expect("run mailctl")
}

fn ok(env: &TestEnv, args: &[&str]) -> String {
    let out = mailctl(env, args);
    assert!(out.status.success(), "mailctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(env: &TestEnv, args: &[&str]) -> String {
    let out = mailctl(env, args);
    assert!(!out.status.success(), "mailctl {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn administrator_sets_up_a_domain() {
    let env = TestEnv::start().await;
    let listing_before = ok(&env, &["account", "list"]);
    assert_eq!(listing_before, "");

    assert!(ok(&env, &["domain", "add", "example.org"]).contains("added domain example.org"));
    ok(&env, &["account", "add", "alice@example.org", "--password", "correct horse", "--quota", "1G"]);

    // Password from stdin, as a script would pass it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .env("MAILCTL_PKI", mailfleet_testkit::fleet_pki())
        .args(["--admin-url", &env.admin_url(), "account", "add", "bob@example.org"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"bobs long password\n").unwrap();
    assert!(child.wait().unwrap().success());

    ok(&env, &["alias", "add", "team@example.org", "alice@example.org", "bob@example.org"]);
    ok(&env, &["account", "quota", "bob@example.org", "500M"]);
    ok(&env, &["domain", "catch-all", "example.org", "alice@example.org"]);

    let accounts = ok(&env, &["account", "list"]);
    assert!(accounts.contains("alice@example.org\tquota=1G"), "{accounts}");
    assert!(accounts.contains("bob@example.org\tquota=500M"), "{accounts}");
    let aliases = ok(&env, &["alias", "list"]);
    assert_eq!(aliases.trim(), "team@example.org\t-> alice@example.org, bob@example.org");
    let domains = ok(&env, &["domain", "list"]);
    assert_eq!(domains.trim(), "example.org\taccounts=2\tcatch-all=alice@example.org");

    // Errors are clear and change nothing.
    assert!(
        fails(&env, &["account", "add", "carol@nowhere.net", "--password", "long enough"]).contains("unknown domain")
    );
    assert!(
        fails(&env, &["account", "add", "alice@example.org", "--password", "long enough"]).contains("already exists")
    );
    assert!(fails(&env, &["account", "add", "not-an-address", "--password", "long enough"]).contains("no `@`"));
    assert!(fails(&env, &["account", "add", "dave@example.org", "--password", "weak"]).contains("too weak"));
    assert!(fails(&env, &["account", "add", "dave@example.org", "--password", ""]).contains("empty"));
    assert!(fails(&env, &["account", "quota", "alice@example.org", "lots"]).contains("malformed size"));
    assert_eq!(ok(&env, &["account", "list"]), accounts);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_storage_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .env("MAILCTL_PKI", mailfleet_testkit::fleet_pki())
        .args(["--admin-url", "https://127.0.0.1:1", "domain", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach storage admin API"));
}

/// `mailctl account list | head -1`: the reader goes away before mailctl
/// writes; mailctl ends quietly instead of panicking on the broken pipe.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_goes_away_ends_the_listing_quietly() {
    let env = TestEnv::start().await;
    ok(&env, &["domain", "add", "example.org"]);
    for n in 0..3 {
        ok(&env, &["account", "add", &format!("user{n}@example.org"), "--password", "correct horse"]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .env("MAILCTL_PKI", mailfleet_testkit::fleet_pki())
        .args(["--admin-url", &env.admin_url(), "account", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mailctl");
    // Closing the only read end makes every write fail with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for mailctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}, stderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `mailctl blobs sweep` through the binary: blobs older than
/// --min-age-days that no message refers to are removed, the one a
/// delivered message needs stays (and the message reads back whole), a
/// young orphan stays until --min-age-days 0.
#[tokio::test(flavor = "multi_thread")]
async fn blobs_sweep_removes_old_orphans_only() {
    use futures::StreamExt;
    use mailfleet_proto::storage::v1 as pb;
    let env = TestEnv::start().await;
    let alice = env.add_account("alice@example.org", "correct horse").await;
    let mut queue = pb::messages_client::MessagesClient::new(env.channel_as("delivery-queue").await);
    let mut put = async |data: &[u8]| {
        let chunks = vec![pb::PutBlobRequest { chunk: data.to_vec() }];
        queue.put_blob(futures::stream::iter(chunks)).await.expect("put blob").into_inner().blob_id
    };
    let kept_msg = b"Subject: delivered\r\n\r\nin alice's INBOX for ten days\r\n";
    let (kept, old, young) = (
        put(kept_msg).await,
        put(b"Subject: old orphan\r\n\r\nits job failed ten days ago\r\n").await,
        put(b"Subject: young orphan\r\n\r\nstored a moment ago\r\n").await,
    );
    let target = pb::DeliveryTarget {
        account_id: alice.id,
        mailbox: String::new(),
        delivery_key: "job-1:alice".into(),
        header_prefix: vec![],
        flags: vec![],
    };
    let req = pb::DeliverRequest { blob_id: kept.clone(), targets: vec![target], internal_date: None };
    let uid = queue.deliver(req).await.expect("deliver").into_inner().results[0].uid;
    let file = |id: &str| env.blob_dir.join(&id[..2]).join(id);
    for id in [&kept, &old] {
        let f = std::fs::File::options().write(true).open(file(id)).expect("blob file");
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400)).expect("age");
    }

    let out = ok(&env, &["blobs", "sweep"]);
    assert_eq!(out, "removed 1 blob(s), kept 2 (0 for queued jobs)\n");
    assert!(!file(&old).exists(), "the old orphan is removed");
    assert!(file(&kept).exists() && file(&young).exists(), "the delivered and the young blob stay");

    let out = ok(&env, &["blobs", "sweep", "--min-age-days", "0"]);
    assert_eq!(out, "removed 1 blob(s), kept 1 (0 for queued jobs)\n");
    assert!(!file(&young).exists(), "the young orphan goes at --min-age-days 0");

    // alice's message reads back whole.
    let mut messages = pb::messages_client::MessagesClient::new(env.session_channel(alice.id).await);
    let inbox = pb::mailboxes_client::MailboxesClient::new(env.session_channel(alice.id).await)
        .get_mailbox(pb::GetMailboxRequest { account_id: alice.id, name: "INBOX".into(), select: false })
        .await
        .expect("INBOX")
        .into_inner()
        .id;
    let req = pb::FetchRequest { account_id: alice.id, mailbox_id: inbox, uid, offset: 0, length: None };
    let mut stream = messages.fetch(req).await.expect("fetch").into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("chunk").data);
    }
    assert_eq!(got, kept_msg);

    assert!(fails(&env, &["blobs", "sweep", "--min-age-days", "soon"]).contains("invalid value"));
}
