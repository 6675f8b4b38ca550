//! Service identity: storage's listeners speak mutual TLS only, and each
//! fleet identity may call the RPCs its role needs and no other
//! (`storage::auth::identity::ROLES`). Checked for every RPC storage
//! serves, with every identity the fleet has, through the real listeners.

use mailfleet_proto::storage::v1 as pb;
use mailfleet_runtime::grpc::FleetIdentity;
use mailfleet_testkit::TestEnv;
use storage::auth::identity::ROLES;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Call `method` with an empty request, whatever its real shape: the
/// identity check comes before the request is read.
async fn call(channel: Channel, method: &str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = PathAndQuery::try_from(method).expect("path");
    grpc.unary(tonic::Request::new(()), path, codec).await.map(|_| ())
}

#[tokio::test]
async fn each_identity_calls_what_its_role_allows_and_nothing_else() {
    let env = TestEnv::start().await;
    let mut refused = 0;
    for name in mailfleet_runtime::pki::IDENTITIES {
        let service = env.channel_as(name).await;
        let admin = mailfleet_testkit::channel_as(&env.admin_url(), name).await;
        for (method, callers) in ROLES {
            let channel = if method.contains(".Admin/") { admin.clone() } else { service.clone() };
            let result = call(channel, method).await;
            if callers.contains(name) {
                // Let through: whatever the handler makes of an empty
                // request, it is not the identity check's refusal.
                if let Err(e) = result {
                    assert!(!e.message().contains("may not call"), "{name} refused {method}: {e}");
                }
            } else {
                let e = result.expect_err(&format!("{name} must not call {method}"));
                assert_eq!(e.code(), Code::PermissionDenied, "{name} calling {method}: {e}");
                // Refused for who the caller is, not for a missing token.
                assert!(e.message().contains("may not call"), "{name} calling {method}: {e}");
                refused += 1;
            }
        }
    }
    // Most pairs are refused: each service has a narrow role.
    assert!(refused > ROLES.len() * 4, "{refused}");
}

#[tokio::test]
async fn a_gateway_cannot_reach_the_admin_api_nor_read_without_a_login() {
    let env = TestEnv::start().await;
    let alice = env.add_account(&format!("alice@{}.test", env.id), "correct horse battery").await;
    for name in ["imap-gateway", "pop3-gateway", "smtp-ingress", "delivery-queue", "storage"] {
        let channel = mailfleet_testkit::channel_as(&env.admin_url(), name).await;
        let e = pb::admin_client::AdminClient::new(channel)
            .list_accounts(pb::ListAccountsRequest { domain: String::new() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{name}: {e}");
    }
    // The imap-gateway's certificate alone reads no mailbox: the account's
    // session token is missing.
    let mut mailboxes = pb::mailboxes_client::MailboxesClient::new(env.channel_as("imap-gateway").await);
    let e = mailboxes
        .list_mailboxes(pb::ListMailboxesRequest { account_id: alice.id, with_status: true })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    // And smtp-ingress, which stores what it accepts, reads nothing back.
    let mut messages = pb::messages_client::MessagesClient::new(env.channel_as("smtp-ingress").await);
    let e = messages.fetch_blob(pb::FetchBlobRequest { blob_id: "0".repeat(64) }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
}

#[tokio::test]
async fn no_certificate_no_plaintext_and_no_foreign_ca_get_in() {
    let env = TestEnv::start().await;
    let ca = std::fs::read(mailfleet_runtime::pki::cert_path(mailfleet_testkit::fleet_pki(), "ca")).expect("ca");
    let method = "/mailfleet.storage.v1.Directory/ResolveRecipient";

    // TLS that trusts storage but shows no certificate of its own.
    let anonymous = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)).domain_name("storage");
    for url in [env.storage_url(), env.admin_url()] {
        let endpoint = Endpoint::from_shared(url.clone()).expect("url").tls_config(anonymous.clone()).expect("tls");
        match endpoint.connect().await {
            Err(_) => {}
            Ok(channel) => {
                let e = call(channel, method).await.expect_err("a call without a client certificate");
                assert_ne!(e.code(), Code::Ok, "{url}");
            }
        }
    }

    // Plain HTTP/2 to a TLS listener.
    let plain = env.storage_url().replace("https://", "http://");
    if let Ok(channel) = Endpoint::from_shared(plain).expect("url").connect().await {
        call(channel, method).await.expect_err("plaintext is refused");
    }
    // The client side refuses to send anything but TLS to storage.
    let err = mailfleet_runtime::grpc::storage_channel(
        &env.storage_url().replace("https://", "http://"),
        &mailfleet_testkit::identity("smtp-ingress"),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("https://"), "{err}");

    // A certificate named like a fleet service, from another CA.
    let other = tempfile::tempdir().expect("dir");
    mailfleet_runtime::pki::init(other.path(), false).expect("another PKI");
    let impostor = FleetIdentity {
        ca_file: Some(mailfleet_runtime::pki::cert_path(mailfleet_testkit::fleet_pki(), "ca")),
        ..FleetIdentity::in_dir(other.path(), "smtp-ingress")
    };
    let endpoint = mailfleet_runtime::grpc::storage_endpoint(&env.storage_url(), &impostor, None).expect("endpoint");
    if let Ok(channel) = endpoint.connect().await {
        call(channel, method).await.expect_err("a foreign CA's certificate is refused");
    }

    // And storage still serves the fleet.
    let channel = env.channel_as("smtp-ingress").await;
    let resolved = pb::directory_client::DirectoryClient::new(channel)
        .resolve_recipient(pb::ResolveRecipientRequest { address: "nobody@nowhere.test".into() })
        .await;
    assert!(resolved.is_ok(), "{resolved:?}");
}

#[tokio::test]
async fn storage_does_not_start_without_its_identity() {
    let env = TestEnv::start().await;
    let mut config = env.storage_config();
    config.identity = FleetIdentity::default();
    let token = tokio_util::sync::CancellationToken::new();
    let err = storage::serve(config, token).await.err().expect("refused to start");
    assert!(format!("{err:#}").contains("identity"), "{err:#}");
}
