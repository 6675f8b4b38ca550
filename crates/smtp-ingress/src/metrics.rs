//! OpenTelemetry instruments of smtp-ingress, from the global meter that
//! `mailfleet_runtime::telemetry::init` installs (no-ops without an OTLP
//! endpoint). The collector's Prometheus exporter renders the dots as
//! underscores (`mailfleet_smtp_messages_received_total`), which is what the
//! Grafana dashboard in `deploy/grafana` queries.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, UpDownCounter};

use crate::driver::Listener;

#[derive(Clone)]
pub struct Metrics {
    /// `mailfleet.smtp.messages.received`: messages answered 250 at the end
    /// of DATA/BDAT, i.e. stored and queued (`listener` = mx | submission | submissions).
    received: Counter<u64>,
    /// `mailfleet.smtp.connections`: accepted connections.
    connections: Counter<u64>,
    /// `mailfleet.smtp.active_connections`: sessions open now.
    active: UpDownCounter<i64>,
    /// `mailfleet.smtp.auth.failures`: failed AUTH attempts.
    auth_failures: Counter<u64>,
    /// `mailfleet.smtp.connections.rejected`: refused before a session
    /// (`reason` = per_ip_limit | proxy_header).
    rejected: Counter<u64>,
    /// `mailfleet.errors`: temporary failures caused by a dependency
    /// (`error.type` = dependency_unavailable), shared name across services.
    errors: Counter<u64>,
}

fn listener_name(kind: Listener) -> &'static str {
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
            connections: meter
                .u64_counter("mailfleet.smtp.connections")
                .with_unit("{connection}")
                .with_description("SMTP connections accepted")
                .build(),
            active: meter
                .i64_up_down_counter("mailfleet.smtp.active_connections")
                .with_unit("{connection}")
                .with_description("SMTP connections currently open")
                .build(),
            auth_failures: meter
                .u64_counter("mailfleet.smtp.auth.failures")
                .with_unit("{attempt}")
                .with_description("Failed SMTP AUTH attempts")
                .build(),
            rejected: meter
                .u64_counter("mailfleet.smtp.connections.rejected")
                .with_unit("{connection}")
                .with_description("SMTP connections refused before a session")
                .build(),
            errors: meter
                .u64_counter("mailfleet.errors")
                .with_unit("{error}")
                .with_description("Requests that failed because a dependency was unavailable")
                .build(),
        }
    }

    pub fn connection_opened(&self, kind: Listener) {
        self.connections.add(1, &[KeyValue::new("listener", listener_name(kind))]);
        self.active.add(1, &[]);
    }

    pub fn connection_closed(&self) {
        self.active.add(-1, &[]);
    }

    pub fn message_received(&self, kind: Listener) {
        self.received.add(1, &[KeyValue::new("listener", listener_name(kind))]);
    }

    pub fn auth_failed(&self, failures: u32) {
        if failures > 0 {
            self.auth_failures.add(u64::from(failures), &[]);
        }
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.add(1, &[KeyValue::new("reason", reason)]);
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
