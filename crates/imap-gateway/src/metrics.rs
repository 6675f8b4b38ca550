//! OpenTelemetry instruments of the gateway, from the global meter that
//! `mailfleet_runtime::telemetry::init` installs (no-ops without an OTLP
//! endpoint). The collector's Prometheus exporter renders the dots as
//! underscores (`mailfleet_imap_active_connections`), which is what the
//! Grafana dashboard in `deploy/grafana` queries.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

/// Command durations in seconds: a NOOP takes microseconds, a FETCH of a
/// big mailbox or an APPEND of a large message seconds.
const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone)]
pub struct Metrics {
    /// `mailfleet.imap.connections`: accepted connections (`tls` = implicit TLS).
    connections: Counter<u64>,
    /// `mailfleet.imap.active_connections`: connections open now.
    active: UpDownCounter<i64>,
    /// `mailfleet.imap.commands`: commands handled (`imap.command` = name).
    commands: Counter<u64>,
    /// `mailfleet.imap.command.duration`: time to answer a command, in seconds
    /// (`imap.command` = name; for IDLE only until the `+ idling`).
    duration: Histogram<f64>,
    /// `mailfleet.imap.auth.failures`: failed LOGIN/AUTHENTICATE attempts.
    auth_failures: Counter<u64>,
    /// `mailfleet.imap.connections.rejected`: refused before the greeting
    /// (`reason` = proxy_header).
    rejected: Counter<u64>,
    /// `mailfleet.errors`: commands answered `NO [UNAVAILABLE]` because
    /// storage did not answer (`error.type` = dependency_unavailable), a name
    /// shared by every service.
    errors: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let meter = opentelemetry::global::meter("imap-gateway");
        Metrics {
            connections: meter
                .u64_counter("mailfleet.imap.connections")
                .with_unit("{connection}")
                .with_description("IMAP connections accepted")
                .build(),
            active: meter
                .i64_up_down_counter("mailfleet.imap.active_connections")
                .with_unit("{connection}")
                .with_description("IMAP connections currently open")
                .build(),
            commands: meter
                .u64_counter("mailfleet.imap.commands")
                .with_unit("{command}")
                .with_description("IMAP commands handled")
                .build(),
            duration: meter
                .f64_histogram("mailfleet.imap.command.duration")
                .with_unit("s")
                .with_description("Time to answer an IMAP command")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            auth_failures: meter
                .u64_counter("mailfleet.imap.auth.failures")
                .with_unit("{attempt}")
                .with_description("Failed IMAP authentication attempts")
                .build(),
            rejected: meter
                .u64_counter("mailfleet.imap.connections.rejected")
                .with_unit("{connection}")
                .with_description("IMAP connections refused before the greeting")
                .build(),
            errors: meter
                .u64_counter("mailfleet.errors")
                .with_unit("{error}")
                .with_description("Requests that failed because a dependency was unavailable")
                .build(),
        }
    }

    pub fn connection_opened(&self, implicit_tls: bool) {
        self.connections.add(1, &[KeyValue::new("tls", implicit_tls)]);
        self.active.add(1, &[]);
    }

    pub fn connection_closed(&self) {
        self.active.add(-1, &[]);
    }

    /// `name` comes from the parsed command (a fixed set), never client text.
    pub fn command(&self, name: &'static str, took: Duration) {
        let attrs = [KeyValue::new("imap.command", name)];
        self.commands.add(1, &attrs);
        self.duration.record(took.as_secs_f64(), &attrs);
    }

    pub fn auth_failed(&self) {
        self.auth_failures.add(1, &[]);
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
