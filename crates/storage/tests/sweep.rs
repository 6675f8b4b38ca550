//! The blob sweep never removes what a job waiting in the queue needs,
//! however old; sweeps nothing when it cannot read the queue; runs by
//! itself on a schedule, one sweep at a time across replicas; and a blob
//! stored again while a sweep removes it is written again.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use mailfleet_proto::queue::v1 as qpb;
use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use prost::Message;
use sqlx::Connection;
use storage::StorageConfig;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const DAY: u64 = 86_400;

/// Storage (restarted) with `tune` applied to its configuration.
async fn storage_with(
    env: &mut TestEnv,
    tune: impl FnOnce(&mut StorageConfig),
) -> (storage::RunningStorage, CancellationToken) {
    env.stop_storage().await;
    let mut config = env.storage_config();
    tune(&mut config);
    let token = CancellationToken::new();
    (storage::serve(config, token.clone()).await.expect("storage starts"), token)
}

async fn put_blob(running: &storage::RunningStorage, data: &[u8]) -> String {
    let mut messages = pb::messages_client::MessagesClient::new(
        mailfleet_testkit::channel_as(&format!("https://{}", running.addr), "smtp-ingress").await,
    );
    let chunks = vec![pb::PutBlobRequest { chunk: data.to_vec() }];
    messages.put_blob(futures::stream::iter(chunks)).await.expect("put blob").into_inner().blob_id
}

async fn sweep(running: &storage::RunningStorage, min_age: u64) -> Result<pb::SweepBlobsResponse, tonic::Status> {
    let mut admin = pb::admin_client::AdminClient::new(
        mailfleet_testkit::channel_as(&format!("https://{}", running.admin_addr), "mailctl").await,
    );
    admin.sweep_blobs(pb::SweepBlobsRequest { min_age_seconds: min_age }).await.map(|r| r.into_inner())
}

/// Pretend blob `id` was stored `days` ago.
fn age_blob(blob_dir: &Path, id: &str, days: u64) {
    let file = std::fs::File::options().write(true).open(blob_dir.join(&id[..2]).join(id)).expect("blob file");
    file.set_modified(SystemTime::now() - Duration::from_secs(days * DAY)).expect("set mtime");
}

fn blob_exists(blob_dir: &Path, id: &str) -> bool {
    blob_dir.join(&id[..2]).join(id).exists()
}

async fn publish_job(js: &jetstream::Context, subject: &str, queue_id: &str, blob_id: &str) -> u64 {
    let job = qpb::DeliveryJob { queue_id: queue_id.into(), blob_id: blob_id.into(), ..Default::default() };
    js.publish(subject.to_string(), job.encode_to_vec().into()).await.expect("publish").await.expect("ack").sequence
}

#[tokio::test]
async fn a_queued_jobs_blob_is_kept_however_old_until_the_job_is_done() {
    let mut env = TestEnv::start().await;
    let id = env.id.clone();
    let (queue, relay) = (format!("SWQ_{id}"), format!("SWR_{id}"));
    let js = jetstream::new(env.nats().await);
    for (name, subject) in [(&queue, format!("t{id}.q")), (&relay, format!("t{id}.r"))] {
        mailfleet_runtime::nats::ensure_stream(&js, mailfleet_runtime::nats::work_queue(name, &subject, 1))
            .await
            .expect("stream");
    }
    let streams = vec![queue.clone(), relay.clone()];
    let (running, token) = storage_with(&mut env, |c| c.sweep.queue_streams = streams).await;

    // A message for a mailbox over quota for ten days: its job waits.
    let waiting = put_blob(&running, b"Subject: waits\r\n\r\nfor a mailbox over quota\r\n").await;
    let orphan = put_blob(&running, b"Subject: orphan\r\n\r\nits job was never published\r\n").await;
    for blob in [&waiting, &orphan] {
        age_blob(&env.blob_dir, blob, 10);
    }
    let seq = publish_job(&js, &format!("t{id}.q"), "Q1", &waiting).await;

    let r = sweep(&running, 7 * DAY).await.expect("sweep");
    assert_eq!((r.removed, r.kept, r.queued), (1, 1, 1));
    assert!(blob_exists(&env.blob_dir, &waiting), "the queued job's blob is kept");
    assert!(!blob_exists(&env.blob_dir, &orphan), "the orphan is removed");

    // Handed to the relay (published there, then acknowledged here): kept.
    publish_job(&js, &format!("t{id}.r"), "Q1", &waiting).await;
    js.get_stream(&queue).await.expect("stream").delete_message(seq).await.expect("ack the local job");
    assert_eq!(sweep(&running, 7 * DAY).await.expect("sweep").queued, 1);
    assert!(blob_exists(&env.blob_dir, &waiting));

    // The relay is done with it: now nothing needs it.
    js.get_stream(&relay).await.expect("stream").purge().await.expect("relay job done");
    let r = sweep(&running, 7 * DAY).await.expect("sweep");
    assert_eq!((r.removed, r.queued), (1, 0));
    assert!(!blob_exists(&env.blob_dir, &waiting));
    token.cancel();
    for s in [&queue, &relay] {
        let _ = js.delete_stream(s).await;
    }
}

#[tokio::test]
async fn nothing_is_swept_when_the_queue_cannot_be_read() {
    let mut env = TestEnv::start().await;
    let missing = format!("SWMISSING_{}", env.id);
    let (running, token) = storage_with(&mut env, |c| c.sweep.queue_streams = vec![missing]).await;
    let orphan = put_blob(&running, b"Subject: maybe queued\r\n\r\nwho knows\r\n").await;
    age_blob(&env.blob_dir, &orphan, 10);
    let err = sweep(&running, 7 * DAY).await.expect_err("no sweep without the queue");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(blob_exists(&env.blob_dir, &orphan));
    token.cancel();
}

#[tokio::test]
async fn the_sweep_runs_by_itself_one_replica_at_a_time() {
    let mut env = TestEnv::start().await;
    let interval = Duration::from_millis(800);
    let tune = |c: &mut StorageConfig| {
        c.sweep.interval = interval;
        c.sweep.min_age = Duration::from_secs(DAY);
    };
    let (first, token) = storage_with(&mut env, tune).await;
    // A second replica on the same database and blob store.
    let mut config = env.storage_config();
    tune(&mut config);
    let second = storage::serve(config, token.clone()).await.expect("second replica");

    // While something else holds the sweep's lock, no replica sweeps and
    // an operator's sweep is told so.
    let mut holder = sqlx::PgConnection::connect(&env.database_url).await.expect("connect");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(storage::sweep::SWEEP_LOCK).execute(&mut holder).await.unwrap();
    let orphan = put_blob(&first, b"Subject: orphan\r\n\r\nswept by itself\r\n").await;
    age_blob(&env.blob_dir, &orphan, 2);
    let busy = sweep(&second, DAY).await.expect_err("a sweep is running");
    assert_eq!(busy.code(), Code::Aborted, "{busy:?}");
    // Each replica's scheduler comes round (twice, so at least once after
    // the blob was aged) and finds the lock taken: only then is the blob's
    // presence proof that none swept.
    let deferred = |s: &storage::RunningStorage| s.store.sweeps_deferred.load(std::sync::atomic::Ordering::Relaxed);
    let (first_before, second_before) = (deferred(&first), deferred(&second));
    let deadline = Instant::now() + Duration::from_secs(30);
    while deferred(&first) < first_before + 2 || deferred(&second) < second_before + 2 {
        assert!(Instant::now() < deadline, "the schedulers never came round");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(blob_exists(&env.blob_dir, &orphan), "no sweep while the lock is held");

    // Released: one of the replicas sweeps, by itself, and records it.
    holder.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while blob_exists(&env.blob_dir, &orphan) {
        assert!(Instant::now() < deadline, "the scheduled sweep never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut db = sqlx::PgConnection::connect(&env.database_url).await.expect("connect");
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM maintenance WHERE name = 'blob_sweep'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(runs, 1);
    token.cancel();
    let _ = (first.task.await, second.task.await);
}

#[tokio::test]
async fn a_blob_stored_again_while_the_sweep_removes_it_is_written_again() {
    let mut env = TestEnv::start().await;
    let (running, token) = storage_with(&mut env, |_| {}).await;
    let data = b"Subject: again\r\n\r\nthe same content twice\r\n";
    let blob = put_blob(&running, data).await;
    age_blob(&env.blob_dir, &blob, 10);

    // A sweep has decided to remove the blob and holds its row.
    let mut sweeper = sqlx::PgConnection::connect(&env.database_url).await.expect("connect");
    let mut tx = sweeper.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM blobs WHERE id = $1 FOR UPDATE").bind(&blob).execute(&mut *tx).await.unwrap();
    // The same content arrives: PutBlob refreshes the file and waits for the row.
    let again = {
        let addr = running.addr;
        tokio::spawn(async move {
            let mut messages = pb::messages_client::MessagesClient::new(
                mailfleet_testkit::channel_as(&format!("https://{addr}"), "smtp-ingress").await,
            );
            let chunks = vec![pb::PutBlobRequest { chunk: data.to_vec() }];
            messages.put_blob(futures::stream::iter(chunks)).await.map(|r| r.into_inner().blob_id)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "PutBlob never waited for the row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The sweep goes on: file and row removed.
    std::fs::remove_file(env.blob_dir.join(&blob[..2]).join(&blob)).expect("remove the file");
    sqlx::query("DELETE FROM blobs WHERE id = $1").bind(&blob).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(again.await.unwrap().expect("PutBlob succeeds"), blob);
    let stored = std::fs::read(env.blob_dir.join(&blob[..2]).join(&blob)).expect("the blob is there again");
    assert_eq!(stored, data);
    token.cancel();
}

/// Deliveries of ten-day-old blobs racing sweeps of them (no queue to
/// protect them: the job is being delivered right now): each delivery
/// either stores a message whose octets read back whole, or is NOT_FOUND
/// and stores nothing; no sweep, then or later, removes a blob a message
/// refers to.
#[tokio::test]
async fn a_delivery_racing_the_sweep_is_readable_or_refused() {
    use futures::StreamExt;
    use pb::delivery_result::Status as D;
    let env = TestEnv::start().await;
    let account = env.add_account(&format!("alice@{}.test", env.id), "correct horse battery").await;
    let queue = pb::messages_client::MessagesClient::new(env.channel_as("delivery-queue").await);
    let admin = env.admin().await;
    // An operator's sweep; ABORTED (another sweep holds the lock) is tried again.
    let sweep_now = async |mut admin: pb::admin_client::AdminClient<tonic::transport::Channel>| loop {
        match admin.sweep_blobs(pb::SweepBlobsRequest { min_age_seconds: 7 * DAY }).await {
            Ok(r) => return r.into_inner(),
            Err(e) if e.code() == Code::Aborted => tokio::task::yield_now().await,
            Err(e) => panic!("sweep: {e}"),
        }
    };

    let mut delivered = Vec::new();
    let mut refused = 0;
    for round in 0..24u32 {
        let raw = format!("Subject: round {round}\r\n\r\nstored ten days ago\r\n").into_bytes();
        let chunks = vec![pb::PutBlobRequest { chunk: raw.clone() }];
        let blob = queue.clone().put_blob(futures::stream::iter(chunks)).await.expect("put blob").into_inner().blob_id;
        age_blob(&env.blob_dir, &blob, 10);
        let target = pb::DeliveryTarget {
            account_id: account.id,
            mailbox: String::new(),
            delivery_key: format!("job-{round}:alice"),
            header_prefix: vec![],
            flags: vec![],
        };
        let req = pb::DeliverRequest { blob_id: blob.clone(), targets: vec![target], internal_date: None };
        let sweeping = tokio::spawn(sweep_now(admin.clone()));
        let mut q = queue.clone();
        let delivering = tokio::spawn(async move { q.deliver(req).await.map(|r| r.into_inner().results) });
        let (swept, result) = (sweeping.await.expect("sweep task"), delivering.await.expect("deliver task"));
        match result {
            Ok(results) => {
                assert_eq!(results.iter().map(|r| r.status()).collect::<Vec<_>>(), vec![D::Delivered]);
                assert!(blob_exists(&env.blob_dir, &blob), "round {round}: delivered, then swept ({swept:?})");
                delivered.push((results[0].mailbox_id, results[0].uid, raw));
            }
            Err(e) if e.code() == Code::NotFound => {
                assert!(!blob_exists(&env.blob_dir, &blob), "round {round}: NOT_FOUND with the blob there");
                refused += 1;
            }
            Err(e) => panic!("round {round}: deliver: {e}"),
        }
    }
    // Once more with nothing racing: what messages refer to stays.
    assert_eq!(sweep_now(admin.clone()).await.removed, 0);
    let mut messages = pb::messages_client::MessagesClient::new(env.session_channel(account.id).await);
    for (mailbox_id, uid, raw) in &delivered {
        let req =
            pb::FetchRequest { account_id: account.id, mailbox_id: *mailbox_id, uid: *uid, offset: 0, length: None };
        let mut stream = messages.fetch(req).await.expect("fetch").into_inner();
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.expect("a chunk of a delivered message").data);
        }
        assert_eq!(&got, raw, "uid {uid}");
    }
    let q = pb::mailboxes_client::MailboxesClient::new(env.session_channel(account.id).await)
        .get_quota(pb::GetQuotaRequest { account_id: account.id })
        .await
        .expect("quota")
        .into_inner();
    assert_eq!(q.message_count, delivered.len() as u64, "{refused} refused");
}
