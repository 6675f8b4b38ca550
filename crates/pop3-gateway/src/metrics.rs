//! OpenTelemetry instruments of the gateway, from the global meter that
//! `mailfleet_runtime::telemetry::init` installs (no-ops without an OTLP
//! endpoint). Names follow the semantic-convention style: dotted,
//! `{unit}` annotations, attributes instead of one metric per variant. The
//! collector's Prometheus exporter shows them as e.g.
//! `mailfleet_pop3_connections_total`.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, UpDownCounter};

#[derive(Clone)]
pub struct Metrics {
    /// `mailfleet.pop3.connections`: accepted connections (`tls` = implicit TLS).
    connections: Counter<u64>,
    /// `mailfleet.pop3.active_connections`: connections open now.
    active: UpDownCounter<i64>,
    /// `mailfleet.pop3.commands`: command lines handled (`pop3.command` = verb).
    commands: Counter<u64>,
    /// `mailfleet.pop3.auth.failures`: failed USER/PASS, APOP or AUTH attempts.
    auth_failures: Counter<u64>,
    /// `mailfleet.pop3.connections.rejected`: refused by a limit or a bad PROXY header
    /// (`reason` = `per_client_limit` | `proxy_header`).
    rejected: Counter<u64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let meter = opentelemetry::global::meter("pop3-gateway");
        Metrics {
            connections: meter
                .u64_counter("mailfleet.pop3.connections")
                .with_unit("{connection}")
                .with_description("POP3 connections accepted")
                .build(),
            active: meter
                .i64_up_down_counter("mailfleet.pop3.active_connections")
                .with_unit("{connection}")
                .with_description("POP3 connections currently open")
                .build(),
            commands: meter
                .u64_counter("mailfleet.pop3.commands")
                .with_unit("{command}")
                .with_description("POP3 command lines handled")
                .build(),
            auth_failures: meter
                .u64_counter("mailfleet.pop3.auth.failures")
                .with_unit("{attempt}")
                .with_description("Failed POP3 authentication attempts")
                .build(),
            rejected: meter
                .u64_counter("mailfleet.pop3.connections.rejected")
                .with_unit("{connection}")
                .with_description("POP3 connections refused before the greeting")
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

    pub fn command(&self, verb: &str) {
        self.commands.add(1, &[KeyValue::new("pop3.command", verb.to_owned())]);
    }

    pub fn auth_failed(&self, failures: u32) {
        self.auth_failures.add(u64::from(failures), &[]);
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.add(1, &[KeyValue::new("reason", reason)]);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
