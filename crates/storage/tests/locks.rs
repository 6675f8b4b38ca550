//! Maildrop leases (POP3): one holder at a time, expiring by themselves.

use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use pb::locks_client::LocksClient;

fn req(account_id: i64, holder: &str, ttl_seconds: u32) -> pb::LockRequest {
    pb::LockRequest { account_id, name: "pop3".into(), holder: holder.into(), ttl_seconds }
}

#[tokio::test]
async fn one_holder_at_a_time_and_leases_expire() {
    let env = TestEnv::start().await;
    let alice = env.add_account("alice@example.org", "password-a1").await;
    let mut locks = LocksClient::new(env.session_channel_as("pop3-gateway", alice.id).await);

    assert!(locks.acquire(req(alice.id, "gw-a", 60)).await.unwrap().into_inner().held);
    assert!(!locks.acquire(req(alice.id, "gw-b", 60)).await.unwrap().into_inner().held, "second holder refused");
    assert!(locks.renew(req(alice.id, "gw-a", 60)).await.unwrap().into_inner().held);
    locks.release(req(alice.id, "gw-a", 60)).await.unwrap();
    assert!(locks.acquire(req(alice.id, "gw-b", 1)).await.unwrap().into_inner().held, "free after release");

    // A crashed holder stops renewing: its lease lapses by itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if locks.acquire(req(alice.id, "gw-c", 60)).await.unwrap().into_inner().held {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(!locks.renew(req(alice.id, "gw-b", 60)).await.unwrap().into_inner().held, "lapsed holder lost it");
}

#[tokio::test]
async fn bad_lock_requests_are_invalid() {
    let env = TestEnv::start().await;
    let mut locks = LocksClient::new(env.session_channel_as("pop3-gateway", 1).await);
    let err = locks.acquire(req(1, "", 60)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = locks.acquire(req(1, "x", 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = locks.acquire(env.as_account(424242, req(424242, "x", 10))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}
