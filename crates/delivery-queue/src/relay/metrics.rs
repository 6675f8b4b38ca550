//! OpenTelemetry instruments of the relay, from the global meter that
//! `mailfleet_runtime::telemetry::init` installs (no-ops without an OTLP
//! endpoint).

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

#[derive(Clone)]
pub struct Metrics {
    /// `mailfleet.relay.recipients`: per-recipient outcomes of relay attempts
    /// (`outcome` = delivered | deferred | failed | expired).
    recipients: Counter<u64>,
    /// `mailfleet.relay.dsns`: DSNs queued (`action` = failed | delayed | relayed).
    dsns: Counter<u64>,
    /// `mailfleet.relay.connections`: SMTP connections opened (`tls` after STARTTLS).
    connections: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let meter = opentelemetry::global::meter("delivery-queue");
        Metrics {
            recipients: meter
                .u64_counter("mailfleet.relay.recipients")
                .with_unit("{recipient}")
                .with_description("Outcomes of relay attempts per recipient")
                .build(),
            dsns: meter
                .u64_counter("mailfleet.relay.dsns")
                .with_unit("{message}")
                .with_description("Delivery status notifications queued")
                .build(),
            connections: meter
                .u64_counter("mailfleet.relay.connections")
                .with_unit("{connection}")
                .with_description("Outbound SMTP connections opened")
                .build(),
        }
    }

    pub fn recipient(&self, outcome: &'static str) {
        self.recipients.add(1, &[KeyValue::new("outcome", outcome)]);
    }

    pub fn dsn(&self, action: &'static str) {
        self.dsns.add(1, &[KeyValue::new("action", action)]);
    }

    pub fn connection(&self, tls: bool) {
        self.connections.add(1, &[KeyValue::new("tls", tls)]);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
