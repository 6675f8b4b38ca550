//! Admin API error cases: bad input is refused clearly and changes nothing.

use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use tonic::Code;

#[tokio::test]
async fn new_accounts_get_the_special_use_mailboxes() {
    let env = TestEnv::start().await;
    let alice = env.add_account("alice@example.org", "password-a1").await;
    let rows: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT name, special_use FROM mailboxes WHERE account_id = $1 ORDER BY name")
            .bind(alice.id)
            .fetch_all(&env.store().pool)
            .await
            .unwrap();
    let got: Vec<(String, Vec<String>)> = rows;
    let want: Vec<(String, Vec<String>)> = vec![
        ("Archive".into(), vec!["\\Archive".into()]),
        ("Drafts".into(), vec!["\\Drafts".into()]),
        ("INBOX".into(), vec![]),
        ("Junk".into(), vec!["\\Junk".into()]),
        ("Sent".into(), vec!["\\Sent".into()]),
        ("Trash".into(), vec!["\\Trash".into()]),
    ];
    assert_eq!(got, want);
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let env = TestEnv::start().await;
    let mut admin = env.admin().await;
    admin.add_domain(pb::AddDomainRequest { name: "example.org".into() }).await.unwrap();

    let dup_domain = admin.add_domain(pb::AddDomainRequest { name: "EXAMPLE.org".into() }).await.unwrap_err();
    assert_eq!(dup_domain.code(), Code::AlreadyExists);
    let bad_domain = admin.add_domain(pb::AddDomainRequest { name: "not a domain".into() }).await.unwrap_err();
    assert_eq!(bad_domain.code(), Code::InvalidArgument);

    let add = |address: &str, password: &str| pb::AddAccountRequest {
        address: address.into(),
        password: password.into(),
        quota_bytes: 0,
    };
    let unknown_domain = admin.add_account(add("x@nowhere.net", "password-x1")).await.unwrap_err();
    assert_eq!(unknown_domain.code(), Code::NotFound);
    assert!(unknown_domain.message().contains("unknown domain"), "{}", unknown_domain.message());
    let malformed = admin.add_account(add("no-at-sign", "password-x1")).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    let empty_pw = admin.add_account(add("x@example.org", "")).await.unwrap_err();
    assert_eq!(empty_pw.code(), Code::InvalidArgument);
    let weak_pw = admin.add_account(add("x@example.org", "abc")).await.unwrap_err();
    assert_eq!(weak_pw.code(), Code::InvalidArgument);
    assert!(weak_pw.message().contains("weak"), "{}", weak_pw.message());

    admin.add_account(add("x@example.org", "password-x1")).await.unwrap();
    let dup = admin.add_account(add("X@example.org", "password-x2")).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);

    // Nothing half-created: exactly one account and its six mailboxes.
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&env.store().pool).await.unwrap();
    let mailboxes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM mailboxes").fetch_one(&env.store().pool).await.unwrap();
    assert_eq!((accounts, mailboxes), (1, 6));

    let alias_to_nobody = admin
        .add_alias(pb::AddAliasRequest { address: "a@example.org".into(), targets: vec!["ghost@example.org".into()] })
        .await
        .unwrap_err();
    assert_eq!(alias_to_nobody.code(), Code::NotFound);
    let alias_over_account = admin
        .add_alias(pb::AddAliasRequest { address: "x@example.org".into(), targets: vec!["x@example.org".into()] })
        .await
        .unwrap_err();
    assert_eq!(alias_over_account.code(), Code::AlreadyExists);
    let aliases: i64 = sqlx::query_scalar("SELECT count(*) FROM aliases").fetch_one(&env.store().pool).await.unwrap();
    assert_eq!(aliases, 0);

    let busy_domain = admin.delete_domain(pb::DeleteDomainRequest { name: "example.org".into() }).await.unwrap_err();
    assert_eq!(busy_domain.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn quota_and_listing() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "password-a1").await;
    env.add_account("bob@other.net", "password-b1").await;
    let mut admin = env.admin().await;
    let a = admin
        .set_quota(pb::SetQuotaRequest { address: "alice@example.org".into(), quota_bytes: 10 << 20 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.quota_bytes, 10 << 20);
    let all = admin.list_accounts(pb::ListAccountsRequest { domain: String::new() }).await.unwrap().into_inner();
    let names: Vec<_> = all.accounts.iter().map(|a| a.address.as_str()).collect();
    assert_eq!(names, vec!["alice@example.org", "bob@other.net"]);
    let one = admin.list_accounts(pb::ListAccountsRequest { domain: "other.net".into() }).await.unwrap().into_inner();
    assert_eq!(one.accounts.len(), 1);
    let domains = admin.list_domains(pb::ListDomainsRequest {}).await.unwrap().into_inner();
    assert_eq!(domains.domains.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), vec!["example.org", "other.net"]);
    let missing = admin
        .set_quota(pb::SetQuotaRequest { address: "nobody@example.org".into(), quota_bytes: 1 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn admin_token_is_enforced_when_configured() {
    let mut env = TestEnv::start().await;
    env.stop_storage().await;
    let mut config = env.storage_config();
    config.admin_token = Some("let-me-in".into());
    let token = tokio_util::sync::CancellationToken::new();
    let running = storage::serve(config, token.clone()).await.unwrap();
    let mut admin = mailfleet_proto::storage::v1::admin_client::AdminClient::new(
        mailfleet_testkit::channel_as(&format!("https://{}", running.admin_addr), "mailctl").await,
    );
    let denied = admin.list_domains(pb::ListDomainsRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::ListDomainsRequest {});
    req.metadata_mut().insert("authorization", "Bearer let-me-in".parse().unwrap());
    admin.list_domains(req).await.expect("token accepted");
    token.cancel();
}
