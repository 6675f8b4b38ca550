//! Push across replicas: storage publishes a `MailEvent` on
//! `<prefix>.<account_id>` after each change. One NATS connection per
//! gateway; one subscription per logged-in account, shared by all of its
//! sessions and dropped with the last one, so an idle client costs a
//! `watch::Receiver` and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt;
use mailfleet_proto::storage::v1::MailEvent;
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The latest event of an account, as the sessions see it.
#[derive(Debug, Clone, Default)]
pub struct Signal {
    /// Events seen so far.
    pub count: u64,
    /// The headers of the latest event: its W3C trace context, so the
    /// IDLE push it causes joins the trace of the change (e.g. a delivery).
    pub headers: Option<async_nats::HeaderMap>,
}

/// Events of one account.
pub struct AccountFeed {
    rx: watch::Receiver<Signal>,
    task: JoinHandle<()>,
}

impl AccountFeed {
    pub fn receiver(&self) -> watch::Receiver<Signal> {
        self.rx.clone()
    }
}

impl Drop for AccountFeed {
    fn drop(&mut self) {
        // Dropping the subscriber unsubscribes on the NATS connection.
        self.task.abort();
    }
}

pub struct EventHub {
    client: Option<async_nats::Client>,
    prefix: String,
    feeds: Mutex<HashMap<i64, Weak<AccountFeed>>>,
}

impl EventHub {
    /// Connects in the background (retrying); until NATS answers, sessions
    /// rely on the periodic check while idling.
    pub async fn connect(url: &str, tls: &mailfleet_runtime::nats::NatsTls, prefix: &str) -> EventHub {
        let options = async_nats::ConnectOptions::new().retry_on_initial_connect();
        let client = mailfleet_runtime::nats::connect(url, tls, "imap-gateway", options)
            .await
            .map_err(|e| tracing::warn!(error = %e, "NATS connection failed; IDLE falls back to polling"))
            .ok();
        EventHub { client, prefix: prefix.to_string(), feeds: Mutex::new(HashMap::new()) }
    }

    /// NATS is connected now, so every change is being announced.
    pub fn live(&self) -> bool {
        self.client.as_ref().is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// A hub without NATS (tests with the in-memory store).
    pub fn disconnected() -> EventHub {
        EventHub { client: None, prefix: String::new(), feeds: Mutex::new(HashMap::new()) }
    }

    /// The shared feed of `account`, subscribing on first use.
    pub fn subscribe(&self, account: i64) -> Option<Arc<AccountFeed>> {
        let client = self.client.clone()?;
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.get(&account).and_then(Weak::upgrade) {
            return Some(feed);
        }
        feeds.retain(|_, w| w.strong_count() > 0);
        let (tx, rx) = watch::channel(Signal::default());
        let subject = format!("{}.{account}", self.prefix);
        let task = tokio::spawn(async move {
            let mut sub = match client.subscribe(subject.clone()).await {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::warn!(error = %e, %subject, "NATS subscribe failed");
                    return;
                }
            };
            while let Some(msg) = sub.next().await {
                match MailEvent::decode(msg.payload.as_ref()) {
                    Ok(_) => tx.send_modify(|signal| {
                        signal.count += 1;
                        signal.headers = msg.headers.clone();
                    }),
                    Err(e) => tracing::debug!(error = %e, "undecodable mail event"),
                }
            }
        });
        let feed = Arc::new(AccountFeed { rx, task });
        feeds.insert(account, Arc::downgrade(&feed));
        Some(feed)
    }
}
