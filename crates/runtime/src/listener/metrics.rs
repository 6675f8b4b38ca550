//! Connection and authentication metrics, one set of names for every
//! protocol (`protocol` = smtp | imap | pop3 tells them apart). From the
//! global meter that `telemetry::init` installs; no-ops without an OTLP
//! endpoint. The collector's Prometheus exporter shows them as
//! `mailfleet_connections_total`, `mailfleet_connections_active`, ….

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, UpDownCounter};

/// The instruments, with the protocol's name attached. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionMetrics {
    protocol: &'static str,
    /// `mailfleet.connections`: connections accepted (`listener`).
    accepted: Counter<u64>,
    /// `mailfleet.connections.active`: connections open now.
    active: UpDownCounter<i64>,
    /// `mailfleet.connections.rejected`: turned away before a session
    /// (`reason` = max_connections | max_connections_per_ip | proxy_header).
    rejected: Counter<u64>,
    /// `mailfleet.connections.timed_out`: closed by us for silence or a
    /// client that does not read (`timeout` = idle | write | tls_handshake).
    timed_out: Counter<u64>,
    /// `mailfleet.auth.failures`: failed authentication attempts.
    auth_failures: Counter<u64>,
    /// `mailfleet.auth.refused`: attempts refused unchecked because their
    /// source (client address or account) failed too often.
    auth_refused: Counter<u64>,
}

impl ConnectionMetrics {
    pub fn new(protocol: &'static str) -> ConnectionMetrics {
        let meter = opentelemetry::global::meter("mailfleet.listener");
        ConnectionMetrics {
            protocol,
            accepted: meter
                .u64_counter("mailfleet.connections")
                .with_unit("{connection}")
                .with_description("Connections accepted")
                .build(),
            active: meter
                .i64_up_down_counter("mailfleet.connections.active")
                .with_unit("{connection}")
                .with_description("Connections open now")
                .build(),
            rejected: meter
                .u64_counter("mailfleet.connections.rejected")
                .with_unit("{connection}")
                .with_description("Connections refused before a session")
                .build(),
            timed_out: meter
                .u64_counter("mailfleet.connections.timed_out")
                .with_unit("{connection}")
                .with_description("Connections closed because the client was silent or did not read")
                .build(),
            auth_failures: meter
                .u64_counter("mailfleet.auth.failures")
                .with_unit("{attempt}")
                .with_description("Failed authentication attempts")
                .build(),
            auth_refused: meter
                .u64_counter("mailfleet.auth.refused")
                .with_unit("{attempt}")
                .with_description("Authentication attempts refused because their source failed too often")
                .build(),
        }
    }

    fn attrs(&self) -> [KeyValue; 1] {
        [KeyValue::new("protocol", self.protocol)]
    }

    pub(crate) fn opened(&self, listener: &'static str) {
        self.accepted.add(1, &[KeyValue::new("protocol", self.protocol), KeyValue::new("listener", listener)]);
        self.active.add(1, &self.attrs());
    }

    pub(crate) fn closed(&self) {
        self.active.add(-1, &self.attrs());
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.add(1, &[KeyValue::new("protocol", self.protocol), KeyValue::new("reason", reason)]);
    }

    /// `timeout` = idle | write | tls_handshake.
    pub fn timed_out(&self, timeout: &'static str) {
        self.timed_out.add(1, &[KeyValue::new("protocol", self.protocol), KeyValue::new("timeout", timeout)]);
    }

    pub fn auth_failed(&self, attempts: u32) {
        if attempts > 0 {
            self.auth_failures.add(u64::from(attempts), &self.attrs());
        }
    }

    pub fn auth_refused(&self) {
        self.auth_refused.add(1, &self.attrs());
    }
}
