//! Directory and Admin API over gRPC against real Postgres: accounts,
//! aliases, catch-all, sub-addressing, authentication, APOP.

use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use md5::{Digest, Md5};
use pb::directory_client::DirectoryClient;
use pb::resolve_recipient_response::Kind;
use tonic::Code;

/// The directory as smtp-ingress sees it: it resolves recipients, checks
/// logins and who may send as whom.
async fn directory(env: &TestEnv) -> DirectoryClient<tonic::transport::Channel> {
    DirectoryClient::new(env.channel_as("smtp-ingress").await)
}

async fn resolve(env: &TestEnv, address: &str) -> pb::ResolveRecipientResponse {
    directory(env)
        .await
        .resolve_recipient(pb::ResolveRecipientRequest { address: address.into() })
        .await
        .expect("resolve")
        .into_inner()
}

fn addresses(r: &pb::ResolveRecipientResponse) -> Vec<String> {
    r.accounts.iter().map(|a| a.address.clone()).collect()
}

#[tokio::test]
async fn accounts_authenticate_with_their_password_only() {
    let env = TestEnv::start().await;
    let alice = env.add_account("Alice@Example.org", "correct horse battery").await;
    assert_eq!(alice.address, "alice@example.org");
    let mut dir = directory(&env).await;

    let ok = dir
        .authenticate(pb::AuthenticateRequest {
            username: "ALICE@example.org".into(),
            password: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .expect("login with the right password")
        .into_inner();
    assert_eq!(ok.account.map(|a| a.id), Some(alice.id));
    assert!(!ok.token.is_empty(), "a login comes with its session token");

    let bad = dir
        .authenticate(pb::AuthenticateRequest {
            username: "alice@example.org".into(),
            password: "wrong".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);
    let unknown = dir
        .authenticate(pb::AuthenticateRequest {
            username: "nobody@example.org".into(),
            password: "whatever1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);

    // Disabled accounts cannot log in and receive nothing.
    env.admin()
        .await
        .set_disabled(pb::SetDisabledRequest { address: "alice@example.org".into(), disabled: true })
        .await
        .unwrap();
    let disabled = dir
        .authenticate(pb::AuthenticateRequest {
            username: "alice@example.org".into(),
            password: "correct horse battery".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(disabled.code(), Code::PermissionDenied);
    assert_eq!(resolve(&env, "alice@example.org").await.kind, Kind::UnknownUser as i32);
}

#[tokio::test]
async fn password_is_stored_as_argon2id_hash() {
    let env = TestEnv::start().await;
    env.add_account("bob@example.org", "s3cret-passphrase").await;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM accounts WHERE address = 'bob@example.org'")
        .fetch_one(&env.store().pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "hash is {hash}");
    assert!(!hash.contains("s3cret-passphrase"));
}

#[tokio::test]
async fn recipients_resolve_through_accounts_aliases_subaddresses_and_catch_all() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "password-a1").await;
    env.add_account("bob@example.org", "password-b1").await;
    let mut admin = env.admin().await;
    admin
        .add_alias(pb::AddAliasRequest {
            address: "team@example.org".into(),
            targets: vec!["alice@example.org".into(), "bob@example.org".into()],
        })
        .await
        .unwrap();

    let direct = resolve(&env, "Alice@EXAMPLE.org").await;
    assert_eq!(direct.kind, Kind::Local as i32);
    assert_eq!(addresses(&direct), vec!["alice@example.org"]);

    let tagged = resolve(&env, "alice+lists@example.org").await;
    assert_eq!(tagged.kind, Kind::Local as i32);
    assert_eq!(tagged.canonical, "alice@example.org");
    assert_eq!(addresses(&tagged), vec!["alice@example.org"]);

    let team = resolve(&env, "team@example.org").await;
    assert_eq!(addresses(&team), vec!["alice@example.org", "bob@example.org"]);

    assert_eq!(resolve(&env, "carol@example.org").await.kind, Kind::UnknownUser as i32);
    assert_eq!(resolve(&env, "carol@elsewhere.net").await.kind, Kind::NotLocal as i32);

    // postmaster is always deliverable (RFC 5321 §4.5.1), in any case.
    let pm = resolve(&env, "PostMaster@example.org").await;
    assert_eq!(pm.kind, Kind::Local as i32);
    assert_eq!(addresses(&pm), vec!["alice@example.org"]);

    admin
        .set_catch_all(pb::SetCatchAllRequest { domain: "example.org".into(), target: "bob@example.org".into() })
        .await
        .unwrap();
    let caught = resolve(&env, "carol@example.org").await;
    assert_eq!(caught.kind, Kind::Local as i32);
    assert_eq!(addresses(&caught), vec!["bob@example.org"]);

    let malformed = directory(&env)
        .await
        .resolve_recipient(pb::ResolveRecipientRequest { address: "not an address".into() })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn can_send_as_own_address_and_aliases_only() {
    let env = TestEnv::start().await;
    let alice = env.add_account("alice@example.org", "password-a1").await;
    env.add_account("bob@example.org", "password-b1").await;
    env.admin()
        .await
        .add_alias(pb::AddAliasRequest {
            address: "sales@example.org".into(),
            targets: vec!["alice@example.org".into()],
        })
        .await
        .unwrap();
    let mut dir = directory(&env).await;
    for (address, expected) in [
        ("alice@example.org", true),
        ("ALICE+x@example.org", true),
        ("sales@example.org", true),
        ("bob@example.org", false),
        ("alice@elsewhere.net", false),
        ("garbage", false),
    ] {
        let r = dir
            .can_send_as(pb::CanSendAsRequest { account_id: alice.id, address: address.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.allowed, expected, "{address}");
    }
}

#[tokio::test]
async fn apop_digest_is_checked_against_the_shared_secret() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "password-a1").await;
    // APOP is POP3's alone.
    let mut dir = DirectoryClient::new(env.channel_as("pop3-gateway").await);
    let banner = "<1896.697170952@dbc.mtview.ca.us>";
    let digest = |secret: &str| {
        let mut h = Md5::new();
        h.update(banner.as_bytes());
        h.update(secret.as_bytes());
        hex::encode(h.finalize())
    };
    // No secret set: APOP is not possible for this account.
    let none = dir
        .authenticate_apop(pb::AuthenticateApopRequest {
            username: "alice@example.org".into(),
            timestamp: banner.into(),
            digest: digest("tanstaaf-secret"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);

    let account = env
        .admin()
        .await
        .set_apop_secret(pb::SetApopSecretRequest {
            address: "alice@example.org".into(),
            secret: "tanstaaf-secret".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(account.has_apop_secret);
    let ok = dir
        .authenticate_apop(pb::AuthenticateApopRequest {
            username: "alice@example.org".into(),
            timestamp: banner.into(),
            digest: digest("tanstaaf-secret"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.account.map(|a| a.address).as_deref(), Some("alice@example.org"));
    assert!(!ok.token.is_empty(), "APOP comes with a session token too");
    let wrong = dir
        .authenticate_apop(pb::AuthenticateApopRequest {
            username: "alice@example.org".into(),
            timestamp: banner.into(),
            digest: digest("another-secret"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
}
