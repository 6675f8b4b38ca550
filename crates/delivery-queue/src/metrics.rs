//! OpenTelemetry instruments of the delivery worker, from the global meter
//! that `mailfleet_runtime::telemetry::init` installs (no-ops without an
//! OTLP endpoint). The collector's Prometheus exporter renders the dots as
//! underscores and adds the unit (`mailfleet_queue_delivery_duration_seconds`),
//! which is what the Grafana dashboard in `deploy/grafana` queries. The relay
//! has its own instruments (`relay::metrics`).

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};

/// Histogram buckets in seconds, from a local delivery (milliseconds) to a
/// job retried for hours (RFC 5321 §4.5.4.1 retry intervals).
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// Per-recipient result of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Stored in the recipient's mailbox.
    Delivered,
    /// Temporary failure; the job is retried.
    Deferred,
    /// Permanent failure; a DSN went to the sender (RFC 3464).
    Bounced,
    /// Remote recipient handed to the outbound relay.
    Relayed,
}

impl DeliveryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Deferred => "deferred",
            DeliveryOutcome::Bounced => "bounced",
            DeliveryOutcome::Relayed => "relayed",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    /// `mailfleet.queue.messages.delivered`: message copies by outcome, one
    /// per recipient and attempt (`outcome` = delivered | deferred | bounced | relayed).
    delivered: Counter<u64>,
    /// `mailfleet.queue.delivery.duration`: from acceptance by smtp-ingress
    /// (the job's `received_at`) to the end of the job, retries included.
    duration: Histogram<f64>,
    /// `mailfleet.queue.depth`: jobs in the consumer not yet acknowledged
    /// (waiting plus in flight), sampled every few seconds (`stream`).
    depth: Gauge<u64>,
    /// `mailfleet.errors`: a dependency failed (`error.type` = storage_unavailable | nats_unavailable).
    errors: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let meter = opentelemetry::global::meter("delivery-queue");
        Metrics {
            delivered: meter
                .u64_counter("mailfleet.queue.messages.delivered")
                .with_unit("{message}")
                .with_description("Message copies handled by delivery-queue, per recipient, by outcome")
                .build(),
            duration: meter
                .f64_histogram("mailfleet.queue.delivery.duration")
                .with_unit("s")
                .with_description("Time from acceptance by smtp-ingress to the end of delivery")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            depth: meter
                .u64_gauge("mailfleet.queue.depth")
                .with_unit("{job}")
                .with_description("Jobs in the JetStream consumer not yet acknowledged")
                .build(),
            errors: meter
                .u64_counter("mailfleet.errors")
                .with_unit("{error}")
                .with_description("Operations that failed because a dependency was unavailable")
                .build(),
        }
    }

    pub fn outcome(&self, outcome: DeliveryOutcome, recipients: usize) {
        if recipients > 0 {
            self.delivered.add(recipients as u64, &[KeyValue::new("outcome", outcome.as_str())]);
        }
    }

    pub fn job_done(&self, since_received: Duration) {
        self.duration.record(since_received.as_secs_f64(), &[]);
    }

    pub fn depth(&self, stream: &str, jobs: u64) {
        self.depth.record(jobs, &[KeyValue::new("stream", stream.to_owned())]);
    }

    pub fn storage_unavailable(&self) {
        self.errors.add(1, &[KeyValue::new("error.type", "storage_unavailable")]);
    }

    pub fn nats_unavailable(&self) {
        self.errors.add(1, &[KeyValue::new("error.type", "nats_unavailable")]);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
