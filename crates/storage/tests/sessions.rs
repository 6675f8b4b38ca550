//! Account scoping by session: every token-scoped RPC (storage.proto,
//! "Session tokens") is refused with PERMISSION_DENIED unless its call
//! carries a valid, unexpired token of storage's own for the request's
//! account; the right token works, and a live session renews its token.

use std::time::{Duration, SystemTime};

use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use pb::directory_client::DirectoryClient;
use pb::locks_client::LocksClient;
use pb::mailboxes_client::MailboxesClient;
use pb::messages_client::MessagesClient;
use storage::auth::session::SessionKeys;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Every RPC a gateway makes for an account.
const SCOPED: &[&str] = &[
    "ListMailboxes",
    "GetMailbox",
    "CreateMailbox",
    "RenameMailbox",
    "DeleteMailbox",
    "SetSubscribed",
    "GetQuota",
    "Append",
    "Fetch",
    "FetchRanges",
    "ListMessages",
    "ListUids",
    "StoreFlags",
    "Copy",
    "Expunge",
    "Changes",
    "Search",
    "Sort",
    "Thread",
    "Acquire",
    "Renew",
    "Release",
    "GetAccount",
    "GetAccountByAddress",
];

/// Alice's account with INBOX holding one message and the mailboxes the
/// destructive calls work on.
struct Fixture {
    env: TestEnv,
    /// As imap-gateway: may make every account call but POP3's locks.
    channel: Channel,
    /// As pop3-gateway: the maildrop locks.
    pop3: Channel,
    alice: pb::Account,
    bob: pb::Account,
    inbox: i64,
}

async fn fixture() -> Fixture {
    let env = TestEnv::start().await;
    let alice = env.add_account(&format!("alice@{}.test", env.id), "correct horse battery").await;
    let bob = env.add_account(&format!("bob@{}.test", env.id), "correct horse battery").await;
    let channel = env.channel_as("imap-gateway").await;
    let pop3 = env.channel_as("pop3-gateway").await;
    let mut mailboxes = MailboxesClient::new(env.session_channel(alice.id).await);
    for name in ["Work", "Old", "Gone"] {
        let create = pb::CreateMailboxRequest { account_id: alice.id, name: name.into(), special_use: vec![] };
        mailboxes.create_mailbox(create).await.expect("create");
    }
    let mut messages = MessagesClient::new(env.session_channel(alice.id).await);
    messages.append(tokio_stream::iter(append_parts(alice.id))).await.expect("append");
    let inbox = mailboxes
        .get_mailbox(pb::GetMailboxRequest { account_id: alice.id, name: "INBOX".into(), select: false })
        .await
        .expect("INBOX")
        .into_inner()
        .id;
    Fixture { env, channel, pop3, alice, bob, inbox }
}

fn append_parts(account_id: i64) -> Vec<pb::AppendRequest> {
    use pb::append_request::Part;
    let header = pb::AppendHeader { account_id, mailbox: "INBOX".into(), flags: vec![], internal_date: None };
    vec![
        pb::AppendRequest { part: Some(Part::Header(header)) },
        pb::AppendRequest { part: Some(Part::Chunk(b"Subject: hi\r\n\r\nhello\r\n".to_vec())) },
    ]
}

/// `message` with `authorization: Bearer <token>` when a token is given.
fn with<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    }
    request
}

/// One call of `rpc` for alice's account, carrying `token`.
async fn call(f: &Fixture, rpc: &str, token: Option<&str>) -> Result<(), Status> {
    let (id, inbox) = (f.alice.id, f.inbox);
    let mut mailboxes = MailboxesClient::new(f.channel.clone());
    let mut messages = MessagesClient::new(f.channel.clone());
    let mut locks = LocksClient::new(f.pop3.clone());
    let mut directory = DirectoryClient::new(f.channel.clone());
    let uids = vec![pb::UidRange { start: 1, end: 1 }];
    let lock = pb::LockRequest { account_id: id, name: "pop3".into(), holder: "h".into(), ttl_seconds: 60 };
    match rpc {
        "ListMailboxes" => {
            mailboxes
                .list_mailboxes(with(token, pb::ListMailboxesRequest { account_id: id, with_status: true }))
                .await?;
        }
        "GetMailbox" => {
            let request = pb::GetMailboxRequest { account_id: id, name: "INBOX".into(), select: true };
            mailboxes.get_mailbox(with(token, request)).await?;
        }
        "CreateMailbox" => {
            let request = pb::CreateMailboxRequest { account_id: id, name: "New".into(), special_use: vec![] };
            mailboxes.create_mailbox(with(token, request)).await?;
        }
        "RenameMailbox" => {
            let request = pb::RenameMailboxRequest { account_id: id, from: "Gone".into(), to: "Play".into() };
            mailboxes.rename_mailbox(with(token, request)).await?;
        }
        "DeleteMailbox" => {
            mailboxes
                .delete_mailbox(with(token, pb::DeleteMailboxRequest { account_id: id, name: "Old".into() }))
                .await?;
        }
        "SetSubscribed" => {
            let request = pb::SetSubscribedRequest { account_id: id, name: "INBOX".into(), subscribed: true };
            mailboxes.set_subscribed(with(token, request)).await?;
        }
        "GetQuota" => {
            mailboxes.get_quota(with(token, pb::GetQuotaRequest { account_id: id })).await?;
        }
        "Append" => {
            messages.append(with(token, tokio_stream::iter(append_parts(id)))).await?;
        }
        "Fetch" => {
            let request = pb::FetchRequest { account_id: id, mailbox_id: inbox, uid: 1, offset: 0, length: None };
            drain(messages.fetch(with(token, request)).await?.into_inner()).await?;
        }
        "FetchRanges" => {
            let ranges = vec![pb::ByteRange { uid: 1, ..Default::default() }];
            let request = pb::FetchRangesRequest { account_id: id, mailbox_id: inbox, ranges };
            drain(messages.fetch_ranges(with(token, request)).await?.into_inner()).await?;
        }
        "ListMessages" => {
            let request = pb::ListMessagesRequest { account_id: id, mailbox_id: inbox, uids, ..Default::default() };
            drain(messages.list_messages(with(token, request)).await?.into_inner()).await?;
        }
        "ListUids" => {
            messages.list_uids(with(token, pb::ListUidsRequest { account_id: id, mailbox_id: inbox })).await?;
        }
        "StoreFlags" => {
            let request = pb::StoreFlagsRequest {
                account_id: id,
                mailbox_id: inbox,
                uids,
                operation: pb::store_flags_request::Operation::Add as i32,
                flags: vec!["\\Flagged".into()],
                unchanged_since: None,
            };
            messages.store_flags(with(token, request)).await?;
        }
        "Copy" => {
            let request =
                pb::CopyRequest { account_id: id, mailbox_id: inbox, uids, destination: "Work".into(), r#move: false };
            messages.copy(with(token, request)).await?;
        }
        "Expunge" => {
            let request = pb::ExpungeRequest { account_id: id, mailbox_id: inbox, uids, ignore_deleted_flag: false };
            messages.expunge(with(token, request)).await?;
        }
        "Changes" => {
            let request = pb::ChangesRequest { account_id: id, mailbox_id: inbox, ..Default::default() };
            messages.changes(with(token, request)).await?;
        }
        "Search" => {
            let request = pb::SearchRequest { account_id: id, mailbox_id: inbox, criteria: None };
            messages.search(with(token, request)).await?;
        }
        "Sort" => {
            let order = vec![pb::SortCriterion { key: pb::sort_criterion::Key::Subject as i32, reverse: false }];
            let request = pb::SortRequest { account_id: id, mailbox_id: inbox, criteria: None, order };
            messages.sort(with(token, request)).await?;
        }
        "Thread" => {
            let algorithm = pb::thread_request::Algorithm::References as i32;
            let request = pb::ThreadRequest { account_id: id, mailbox_id: inbox, criteria: None, algorithm };
            messages.thread(with(token, request)).await?;
        }
        "Acquire" => {
            locks.acquire(with(token, lock)).await?;
        }
        "Renew" => {
            locks.renew(with(token, lock)).await?;
        }
        "Release" => {
            locks.release(with(token, lock)).await?;
        }
        "GetAccount" => {
            let request = pb::GetAccountRequest { key: Some(pb::get_account_request::Key::Id(id)) };
            directory.get_account(with(token, request)).await?;
        }
        "GetAccountByAddress" => {
            let key = pb::get_account_request::Key::Address(f.alice.address.clone());
            directory.get_account(with(token, pb::GetAccountRequest { key: Some(key) })).await?;
        }
        other => panic!("no such RPC in this test: {other}"),
    }
    Ok(())
}

async fn drain<T>(mut stream: tonic::Streaming<T>) -> Result<(), Status> {
    while stream.message().await?.is_some() {}
    Ok(())
}

#[tokio::test]
async fn account_calls_need_a_valid_token_for_that_very_account() {
    let f = fixture().await;
    let keys = &f.env.store().sessions;
    let now = SystemTime::now();
    let valid = keys.mint(f.alice.id, now + Duration::from_secs(600));
    let bobs = keys.mint(f.bob.id, now + Duration::from_secs(600));
    let expired = keys.mint(f.alice.id, now - Duration::from_secs(1));
    let forged = SessionKeys::new(&[42; 32], Duration::from_secs(600)).mint(f.alice.id, now + Duration::from_secs(600));
    // Alice's token with bob's id put in: the MAC no longer matches.
    let tampered = valid.replacen(&format!(".{}.", f.alice.id), &format!(".{}.", f.bob.id), 1);
    let refused: [(&str, Option<&str>); 6] = [
        ("no token", None),
        ("bob's token", Some(&bobs)),
        ("an expired token", Some(&expired)),
        ("a token signed with another key", Some(&forged)),
        ("a tampered token", Some(&tampered)),
        ("garbage", Some("not-a-token")),
    ];
    for rpc in SCOPED {
        for (what, token) in refused {
            let e = call(&f, rpc, token).await.expect_err(&format!("{rpc} with {what} must be refused"));
            assert_eq!(e.code(), Code::PermissionDenied, "{rpc} with {what}: {e}");
        }
        call(&f, rpc, Some(&valid)).await.unwrap_or_else(|e| panic!("{rpc} with alice's token: {e}"));
    }
    // The refused calls changed nothing: the one valid Append added one message.
    let mut messages = MessagesClient::new(f.env.session_channel(f.alice.id).await);
    let uids = messages.list_uids(pb::ListUidsRequest { account_id: f.alice.id, mailbox_id: f.inbox }).await;
    assert_eq!(uids.expect("list").into_inner().uids.len(), 2);
}

#[tokio::test]
async fn a_token_for_one_account_reads_nothing_of_another_even_naming_its_mailbox() {
    let f = fixture().await;
    let bobs = f.env.session_token(f.bob.id);
    // Bob's session asking for alice's account id: refused by the token.
    let mut messages = MessagesClient::with_interceptor(f.channel.clone(), bobs.clone());
    let e = messages.list_uids(pb::ListUidsRequest { account_id: f.alice.id, mailbox_id: f.inbox }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Bob's session naming alice's mailbox under its own id: not found.
    let e = messages.list_uids(pb::ListUidsRequest { account_id: f.bob.id, mailbox_id: f.inbox }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Submission's CanSendAs: a token, when sent, must be the account's own.
    let submission = f.env.channel_as("smtp-ingress").await;
    let mut directory = DirectoryClient::with_interceptor(submission, bobs);
    let ask = pb::CanSendAsRequest { account_id: f.alice.id, address: f.alice.address.clone() };
    assert_eq!(directory.can_send_as(ask.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    // Without one it is the relay's directory look-up (role-scoped).
    let relay = f.env.channel_as("delivery-queue").await;
    let allowed = DirectoryClient::new(relay).can_send_as(ask).await.expect("look-up").into_inner();
    assert!(allowed.allowed);
}

#[tokio::test]
async fn logins_issue_tokens_that_renew_while_valid_and_end_with_the_account() {
    let f = fixture().await;
    let mut directory = DirectoryClient::new(f.channel.clone());
    let login = pb::AuthenticateRequest {
        username: f.alice.address.clone(),
        password: "correct horse battery".into(),
        client_ip: "192.0.2.1".into(),
    };
    let grant = directory.authenticate(login).await.expect("login").into_inner();
    assert_eq!(grant.account.as_ref().map(|a| a.id), Some(f.alice.id));
    assert_eq!(grant.valid_for_ms, 15 * 60 * 1000);
    let expires = grant.expires_at.expect("expiry");
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((now + 14 * 60..=now + 16 * 60).contains(&expires.seconds), "{expires:?}");

    // The login's token serves alice's calls ...
    let mut messages = MessagesClient::new(f.channel.clone());
    let list = pb::ListUidsRequest { account_id: f.alice.id, mailbox_id: f.inbox };
    messages.list_uids(with(Some(&grant.token), list)).await.expect("the login's token works");

    // ... and renews into a new one that works as well.
    let renewed = directory
        .renew_session(with(Some(&grant.token), pb::RenewSessionRequest {}))
        .await
        .expect("renew")
        .into_inner();
    assert_ne!(renewed.token, grant.token);
    messages.list_uids(with(Some(&renewed.token), list)).await.expect("the renewed token works");

    // An expired, forged or missing token renews nothing.
    let expired = f.env.store().sessions.mint(f.alice.id, SystemTime::now() - Duration::from_secs(1));
    for token in [None, Some(expired.as_str()), Some("v1.1.1.x.y")] {
        let e = directory.renew_session(with(token, pb::RenewSessionRequest {})).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{token:?}");
    }

    // Disabling the account ends its sessions at their next renewal.
    f.env
        .admin()
        .await
        .set_disabled(pb::SetDisabledRequest { address: f.alice.address.clone(), disabled: true })
        .await
        .expect("disable");
    let e = directory.renew_session(with(Some(&renewed.token), pb::RenewSessionRequest {})).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

/// Replicas share the key through Postgres: a token from one is good at another.
#[tokio::test]
async fn every_replica_accepts_every_replicas_tokens() {
    let f = fixture().await;
    let token = f.env.session_token(f.alice.id);
    let config = f.env.storage_config();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let other = storage::serve(config, shutdown.clone()).await.expect("a second replica starts");
    let channel = mailfleet_testkit::channel_as(&format!("https://{}", other.addr), "imap-gateway").await;
    let mut messages = MessagesClient::with_interceptor(channel, token);
    let uids = messages.list_uids(pb::ListUidsRequest { account_id: f.alice.id, mailbox_id: f.inbox }).await;
    assert_eq!(uids.expect("the other replica accepts the token").into_inner().uids, vec![1]);
    shutdown.cancel();
}
