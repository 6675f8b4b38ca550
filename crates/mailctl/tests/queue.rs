//! `mailctl queue` against a real JetStream: a queue stream and a state
//! bucket laid out as delivery-queue writes them.

use std::process::Command;

use async_nats::jetstream;

fn mailctl(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailctl")).args(args).output().expect("run mailctl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn list_retry_and_delete_queued_jobs() {
    let id = mailfleet_testkit::unique();
    let nats_url = mailfleet_testkit::nats_url();
    let (stream_name, subject, bucket) = (format!("MQ_{id}"), format!("t{id}.queue.jobs"), format!("QS_{id}"));
    let js = jetstream::new(async_nats::connect(nats_url.as_str()).await.expect("NATS is reachable"));
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .expect("stream");
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .expect("bucket stream");
    let kv = js.get_key_value(bucket.clone()).await.expect("bucket");
    let ack = js.publish(subject.clone(), "job-bytes".into()).await.expect("publish").await.expect("ack");
    let state = format!(
        r#"{{"queue_id":"Q1","stream_seq":{},"attempts":3,"next_retry":{},"last_error":"deliver: Unavailable: storage down","mail_from":"x@remote.test","recipients":["bob@example.org"],"relayed":true,"bounced":["carol@example.org"],"done":["dave@remote.test"]}}"#,
        ack.sequence,
        u64::MAX / 2
    );
    kv.put("Q1", state.into()).await.expect("put state");

    let common =
        ["queue", "--nats-url", nats_url.as_str(), "--stream", stream_name.as_str(), "--bucket", bucket.as_str()];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        mailctl(&args)
    };

    let (ok, out) = run(&["list"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("1 job(s) in {stream_name}; 1 with failed attempts")), "{out}");
    assert!(out.contains("Q1\tfrom=<x@remote.test>\tto=bob@example.org\tattempts=3\tnext=in "), "{out}");
    assert!(out.contains("error=deliver: Unavailable: storage down"), "{out}");

    let (ok, out) = run(&["retry", "Q1"]);
    assert!(ok, "{out}");
    // The waiting copy is gone, a fresh one (same bytes) is queued.
    assert!(stream.get_raw_message(ack.sequence).await.is_err());
    let state = stream.info().await.expect("info").state.clone();
    assert_eq!(state.messages, 1);
    let copy = stream.get_raw_message(state.last_sequence).await.expect("copy");
    assert_eq!(&copy.payload[..], b"job-bytes");
    // The copy starts over at delivery count 1: it is marked so the worker
    // resumes from the recorded progress, and that progress is kept intact
    // (otherwise done recipients would get the mail again).
    assert!(copy.headers.get(delivery_queue::state::RESUME_HEADER).is_some());
    let kept = delivery_queue::state::JobState::from_json(&kv.get("Q1").await.expect("get").expect("state"))
        .expect("state parses");
    assert!(kept.relayed);
    assert_eq!(kept.bounced, vec!["carol@example.org"]);
    assert_eq!(kept.done, vec!["dave@remote.test"]);
    assert_eq!(kept.stream_seq, state.last_sequence);

    let (ok, out) = run(&["delete", "Q1"]);
    assert!(ok, "{out}");
    assert_eq!(stream.info().await.expect("info").state.messages, 0);
    assert!(kv.get("Q1").await.expect("get").is_none());

    let (ok, out) = run(&["retry", "nope"]);
    assert!(!ok && out.contains("no queued job nope"), "{out}");
    let _ = js.delete_stream(&stream_name).await;
    let _ = js.delete_stream(format!("KV_{bucket}")).await;
}
