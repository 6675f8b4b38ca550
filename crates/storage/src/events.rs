//! Change events on NATS, published after the transaction commits so a
//! gateway that reacts to one always finds the change in Postgres.

use mailfleet_proto::storage::v1::{MailEvent, mail_event};
use prost::Message;

#[derive(Clone)]
pub struct EventPublisher {
    client: Option<async_nats::Client>,
    prefix: String,
}

impl EventPublisher {
    pub fn new(client: Option<async_nats::Client>, prefix: impl Into<String>) -> Self {
        EventPublisher { client, prefix: prefix.into() }
    }

    pub fn subject(&self, account_id: i64) -> String {
        format!("{}.{}", self.prefix, account_id)
    }

    /// Fire and forget: a lost event only delays a push (clients also poll
    /// with NOOP), while failing the already committed change would be wrong.
    pub async fn publish(&self, account_id: i64, modseq: u64, kind: mail_event::Kind) {
        let Some(client) = &self.client else { return };
        let event = MailEvent { account_id, modseq, kind: Some(kind) };
        let mut headers = async_nats::HeaderMap::new();
        mailfleet_runtime::telemetry::inject_nats(&mut headers);
        if let Err(err) =
            client.publish_with_headers(self.subject(account_id), headers, event.encode_to_vec().into()).await
        {
            tracing::warn!(error = %err, account_id, "could not publish change event");
        }
    }
}
