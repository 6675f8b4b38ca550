//! OpenTelemetry instruments of smtp-ingress, from the global meter that
//! `mailfleet_runtime::telemetry::init` installs (no-ops without an OTLP
//! endpoint). Connections and authentication are counted by the connection
//! layer under names shared by every gateway
//! (`mailfleet_runtime::listener::ConnectionMetrics`). The collector's Prometheus exporter renders the dots as
//! underscores (`mailfleet_smtp_messages_received_total`), which is what the
//! Grafana dashboard in `deploy/grafana` queries.

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

use crate::driver::Listener;

#[derive(Clone)]
pub struct Metrics {
    /// `mailfleet.smtp.messages.received`: messages answered 250 at the end
    /// of DATA/BDAT, i.e. stored and queued (`listener` = mx | submission | submissions).
    received: Counter<u64>,
    /// `mailfleet.errors`: temporary failures caused by a dependency
    /// (`error.type` = dependency_unavailable), shared name across services.
    errors: Counter<u64>,
}

/// The `listener` attribute, as the connection layer names the listeners.
pub fn listener_name(kind: Listener) -> &'static str {
    match kind {
        Listener::Mx => "mx",
        Listener::Submission => "submission",
        Listener::Submissions => "submissions",
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let meter = opentelemetry::global::meter("smtp-ingress");
        Metrics {
            received: meter
                .u64_counter("mailfleet.smtp.messages.received")
                .with_unit("{message}")
                .with_description("Messages accepted (stored and queued) by smtp-ingress")
                .build(),
            errors: meter
                .u64_counter("mailfleet.errors")
                .with_unit("{error}")
                .with_description("Requests that failed because a dependency was unavailable")
                .build(),
        }
    }

    pub fn message_received(&self, kind: Listener) {
        self.received.add(1, &[KeyValue::new("listener", listener_name(kind))]);
    }

    pub fn dependency_unavailable(&self) {
        self.errors.add(1, &[KeyValue::new("error.type", "dependency_unavailable")]);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
