//! NATS: connecting to one server or to every server of a cluster, and
//! creating (or bringing up to date) the JetStream work-queue streams that
//! smtp-ingress and delivery-queue share.

use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream::{self, stream};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("NATS URL {0:?}: {1}")]
    Url(String, String),
    #[error("connecting to NATS at {0}: {1}")]
    Connect(String, String),
    #[error("JetStream stream {0}: {1}")]
    Stream(String, String),
}

/// The servers of `urls`, a comma-separated list
/// (`nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222`): with every
/// member of a cluster listed, a service starts while any one of them is up
/// (once connected, the client also learns the others from the server).
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>, NatsError> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>().map_err(|e| NatsError::Url(u.to_string(), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(NatsError::Url(urls.to_string(), "no server given".into()));
    }
    Ok(addrs)
}

/// Connect with `options` to the servers of `urls` (see [`server_addrs`]).
pub async fn connect(urls: &str, options: async_nats::ConnectOptions) -> Result<async_nats::Client, NatsError> {
    options.connect(server_addrs(urls)?).await.map_err(|e| NatsError::Connect(urls.to_string(), e.to_string()))
}

/// Duplicate-detection window of the work-queue streams: a job published
/// again with the same `Nats-Msg-Id` within this time is stored once. It
/// must be longer than the longest time after which the queue can publish
/// the same job again — delivery-queue checks that rule at start
/// (`delivery_queue::redelivery`), smtp-ingress's publish retries stay
/// within it. A longer window costs server memory per message id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The settings of a work-queue stream (the mail queue, the relay queue):
/// a message is removed once acknowledged, kept on disk, and stored on
/// `replicas` servers (R3 on a 3-node cluster: a publish is acknowledged
/// once two of them have it).
pub fn work_queue(name: &str, subject: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// Create the stream, or bring an existing one to `config`: a stream made
/// by an older version (another duplicate window) or with another replica
/// count (a deployment scaled to R3) is updated in place, keeping its
/// messages. The services own these streams' settings; changes made by
/// hand are overwritten at the next start.
pub async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), NatsError> {
    let name = config.name.clone();
    let err = |e: &dyn std::fmt::Display| NatsError::Stream(name.clone(), e.to_string());
    let current = match js.get_stream(&name).await {
        Ok(stream) => stream.cached_info().config.clone(),
        Err(e) if is_not_found(&e.kind()) => {
            // Another service may create it at the same moment: then
            // bring that one to our settings.
            if js.create_stream(config.clone()).await.is_ok() {
                return Ok(());
            }
            js.get_stream(&name).await.map_err(|e| err(&e))?.cached_info().config.clone()
        }
        Err(e) => return Err(err(&e)),
    };
    if current.num_replicas == config.num_replicas.max(1)
        && current.duplicate_window == config.duplicate_window
        && current.subjects == config.subjects
    {
        return Ok(());
    }
    tracing::info!(
        stream = %name,
        replicas = %format!("{} -> {}", current.num_replicas, config.num_replicas),
        duplicate_window = ?config.duplicate_window,
        "bringing the stream to this version's settings"
    );
    js.update_stream(config).await.map_err(|e| err(&e))?;
    Ok(())
}

/// JetStream's "stream not found" answer.
fn is_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_a_comma_separated_list() {
        let addrs = server_addrs("nats://nats-1:4222, nats://nats-2:4222,nats://nats-3:4222").expect("parses");
        assert_eq!(addrs.len(), 3);
        assert_eq!(server_addrs("nats://127.0.0.1:4222").expect("parses").len(), 1);
        assert!(server_addrs("").is_err());
        assert!(server_addrs("nats://a:4222,,").is_ok_and(|a| a.len() == 1));
        assert!(server_addrs("nats://[bad").is_err());
    }

    #[test]
    fn work_queues_keep_at_least_one_replica() {
        assert_eq!(work_queue("Q", "q.jobs", 0).num_replicas, 1);
        assert_eq!(work_queue("Q", "q.jobs", 3).num_replicas, 3);
        assert_eq!(work_queue("Q", "q.jobs", 3).duplicate_window, DUPLICATE_WINDOW);
    }
}
