//! Stopping storage: calls in progress get `shutdown_grace`, and then it
//! stops whatever its clients do.

mod common;

use std::time::{Duration, Instant};

use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;

/// The grace calls in progress get (storage's `shutdown_grace`).
const GRACE: Duration = Duration::from_secs(1);

/// A Fetch whose client reads the first chunk of a 16 MB message and then
/// never reads on: the call cannot end (flow control holds the rest), and
/// a graceful shutdown alone would wait for it for ever. The first chunk
/// is the proof that storage is serving the call when the stop begins
/// (no sleep standing in for "it has reached storage by now").
#[tokio::test]
async fn a_call_that_never_ends_does_not_keep_storage_from_stopping() {
    let mut env = TestEnv::start_with(|c| c.shutdown_grace = GRACE).await;
    let alice = env.add_account("alice@example.org", "correct horse battery").await;
    let mut messages = pb::messages_client::MessagesClient::new(env.session_channel(alice.id).await)
        .max_encoding_message_size(common::MAX);
    let line = format!("{}\r\n", "x".repeat(78));
    let raw = format!("Subject: big\r\n\r\n{}", line.repeat(16 * 1024 * 1024 / line.len())).into_bytes();
    let appended = common::append_with(&mut messages, alice.id, "INBOX", &raw, &[], None).await.expect("append");

    let fetch = pb::FetchRequest {
        account_id: alice.id,
        mailbox_id: appended.mailbox_id,
        uid: appended.uid,
        offset: 0,
        length: None,
    };
    let mut call = messages.fetch(fetch).await.expect("fetch").into_inner();
    let first = call.message().await.expect("first chunk").expect("a chunk");
    assert_eq!(first.total_size, raw.len() as u64);
    assert!((first.data.len() as u64) < first.total_size, "the call is still in progress");

    let stopping = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(30), env.stop_storage()).await;
    assert!(stopped.is_ok(), "storage still running 30 s after shutdown");
    assert!(stopping.elapsed() >= GRACE, "the call in progress got its grace: {:?}", stopping.elapsed());
    // The service's process exits here and takes the connection with it;
    // in this test's process its task lives on, so the call is dropped.
    drop(call);
}
