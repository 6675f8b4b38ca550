//! OpenTelemetry instruments of the POP3 protocol, from the global meter
//! that `mailfleet_runtime::telemetry::init` installs (no-ops without an
//! OTLP endpoint). Connections and authentication are counted by the
//! connection layer under names shared by every gateway
//! (`mailfleet_runtime::listener::ConnectionMetrics`). The collector's
//! Prometheus exporter shows this one as `mailfleet_pop3_commands_total`.

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

#[derive(Clone)]
pub struct Metrics {
    /// `mailfleet.pop3.commands`: command lines handled (`pop3.command` = verb).
    commands: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let meter = opentelemetry::global::meter("pop3-gateway");
        Metrics {
            commands: meter
                .u64_counter("mailfleet.pop3.commands")
                .with_unit("{command}")
                .with_description("POP3 command lines handled")
                .build(),
        }
    }

    pub fn command(&self, verb: &str) {
        self.commands.add(1, &[KeyValue::new("pop3.command", verb.to_owned())]);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
