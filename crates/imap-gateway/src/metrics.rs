//! OpenTelemetry instruments of the IMAP protocol, from the global meter
//! that `mailfleet_runtime::telemetry::init` installs (no-ops without an
//! OTLP endpoint). Connections and authentication are counted by the
//! connection layer under names shared by every gateway
//! (`mailfleet_runtime::listener::ConnectionMetrics`). The collector's Prometheus exporter renders the dots as
//! underscores (`mailfleet_imap_active_connections`), which is what the
//! Grafana dashboard in `deploy/grafana` queries.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

/// Command durations in seconds: a NOOP takes microseconds, a FETCH of a
/// big mailbox or an APPEND of a large message seconds.
const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone)]
pub struct Metrics {
    /// `mailfleet.imap.commands`: commands handled (`imap.command` = name).
    commands: Counter<u64>,
    /// `mailfleet.imap.command.duration`: time to answer a command, in seconds
    /// (`imap.command` = name; for IDLE only until the `+ idling`).
    duration: Histogram<f64>,
    /// `mailfleet.errors`: commands answered `NO [UNAVAILABLE]` because
    /// storage did not answer (`error.type` = dependency_unavailable), a name
    /// shared by every service.
    errors: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let meter = opentelemetry::global::meter("imap-gateway");
        Metrics {
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
            errors: meter
                .u64_counter("mailfleet.errors")
                .with_unit("{error}")
                .with_description("Requests that failed because a dependency was unavailable")
                .build(),
        }
    }

    /// `name` comes from the parsed command (a fixed set), never client text.
    pub fn command(&self, name: &'static str, took: Duration) {
        let attrs = [KeyValue::new("imap.command", name)];
        self.commands.add(1, &attrs);
        self.duration.record(took.as_secs_f64(), &attrs);
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
