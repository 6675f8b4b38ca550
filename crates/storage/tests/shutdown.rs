//! Stopping storage: calls in progress get `shutdown_grace`, and then it
//! stops whatever its clients do.

use std::time::{Duration, Instant};

use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// A PutBlob whose client sends one chunk and never ends the stream: a
/// graceful shutdown alone would wait for it for ever.
#[tokio::test]
async fn a_call_that_never_ends_does_not_keep_storage_from_stopping() {
    let mut env = TestEnv::start().await;
    env.stop_storage().await;
    let mut config = env.storage_config();
    config.shutdown_grace = Duration::from_secs(1);
    let token = CancellationToken::new();
    let running = storage::serve(config, token.clone()).await.expect("storage starts");

    let channel = mailfleet_testkit::channel_as(&format!("https://{}", running.addr), "smtp-ingress").await;
    let mut messages = pb::messages_client::MessagesClient::new(channel);
    let (chunks, rx) = tokio::sync::mpsc::channel(1);
    chunks.send(pb::PutBlobRequest { chunk: b"Subject: never ends\r\n".to_vec() }).await.expect("queue a chunk");
    let call = tokio::spawn(async move { messages.put_blob(ReceiverStream::new(rx)).await });
    // Let the call reach storage.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = Instant::now();
    token.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(15), running.task).await;
    assert!(stopped.is_ok(), "storage still running 15 s after shutdown");
    assert!(stopping.elapsed() >= Duration::from_millis(900), "the call in progress got its grace");
    // The service's process exits here and takes the connection with it;
    // in this test's process its task lives on, so the call is dropped.
    call.abort();
    drop(chunks);
}
