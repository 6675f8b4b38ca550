//! Keeps the deployment files valid by construction (there is no Docker
//! engine here): `docker-compose config` must accept docker-compose.yml,
//! scaled services must be scalable (no fixed container name, no host port),
//! the load balancer must publish every standard mail port and pass PROXY v2
//! to compose services, and the dashboard must be valid JSON. HAProxy's own
//! `haproxy -c` runs too when the binary is installed.
//!
//! It lives with the runtime crate because the mechanisms it deploys (PROXY
//! protocol, health endpoint, OTLP) live here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Services that `docker compose up --scale` multiplies.
const SCALED: [&str; 4] = ["smtp-ingress", "imap-gateway", "pop3-gateway", "delivery-queue"];
/// RFC 5321 (25), RFC 6409 (587), RFC 8314 (465, 993, 995), RFC 1939 (110), RFC 9051 (143).
const MAIL_PORTS: [u16; 7] = [25, 465, 587, 110, 995, 143, 993];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn has(binary: &str) -> bool {
    Command::new(binary).arg("--version").output().is_ok_and(|o| o.status.success())
        || Command::new(binary).arg("-v").output().is_ok_and(|o| o.status.success())
}

fn compose(args: &[&str]) -> String {
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(root().join("docker-compose.yml"))
        .args(args)
        // Defaults only: the test must not depend on the caller's settings.
        .env_remove("MAILFLEET_EDGE_SUBNET")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run docker-compose");
    assert!(out.status.success(), "docker-compose {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The lines of one service in `docker-compose config` output (2-space YAML).
fn service_block<'a>(config: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let mut lines = config.lines().skip_while(|l| *l != "services:").skip(1);
    let _ = lines.by_ref().find(|l| *l == header).unwrap_or_else(|| panic!("service {name} missing"));
    lines.take_while(|l| l.starts_with("   ")).collect()
}

#[test]
fn compose_file_is_valid_and_scalable() {
    if !has("docker-compose") {
        eprintln!("docker-compose not installed (scripts/test.sh installs it); skipping");
        return;
    }
    compose(&["config", "-q"]);
    let config = compose(&["config"]);
    let services = compose(&["config", "--services"]);
    for s in SCALED.iter().chain(&["lb", "otel-collector", "jaeger", "prometheus", "grafana", "storage", "postgres"]) {
        assert!(services.lines().any(|l| l == *s), "service {s} in docker-compose.yml");
    }
    for s in SCALED {
        let block = service_block(&config, s);
        assert!(!block.iter().any(|l| l.trim_start().starts_with("container_name:")), "{s}: fixed container_name");
        assert!(!block.iter().any(|l| l.trim_start().starts_with("ports:")), "{s}: host ports block scaling");
    }
    let lb = service_block(&config, "lb").join("\n");
    for port in MAIL_PORTS {
        assert!(lb.contains(&format!("published: {port}\n")), "lb publishes {port}");
    }
    // PROXY trust is the edge network's subnet, and the gateways are on it.
    let pop3 = service_block(&config, "pop3-gateway").join("\n");
    assert!(pop3.contains("MAILFLEET_POP3_PROXY_PROTOCOL__ENABLED: \"true\""), "{pop3}");
    assert!(pop3.contains("MAILFLEET_POP3_PROXY_PROTOCOL__TRUSTED: 172.29.0.0/24"), "{pop3}");
    assert!(pop3.contains("edge"), "pop3-gateway joins the edge network");
    assert!(config.contains("- subnet: 172.29.0.0/24"), "edge subnet");
    assert!(pop3.contains("OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4317"), "{pop3}");
}

#[test]
fn haproxy_sends_proxy_v2_to_compose_services() {
    let path = root().join("deploy/haproxy.cfg");
    let cfg = std::fs::read_to_string(&path).expect("deploy/haproxy.cfg");
    let templates: Vec<&str> = cfg.lines().map(str::trim).filter(|l| l.starts_with("server-template")).collect();
    assert_eq!(templates.len(), MAIL_PORTS.len(), "one backend per mail port");
    for t in &templates {
        // Only gateways that read PROXY headers get them (pop3-gateway so
        // far); sending one to a service that does not parse it breaks it.
        assert_eq!(t.contains("send-proxy-v2"), t.contains(" pop3-gateway:"), "{t}");
        assert!(SCALED.iter().any(|s| t.contains(&format!(" {s}:"))), "{t} targets a compose service");
    }
    if has("haproxy") {
        let out = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().expect("run haproxy -c");
        assert!(out.status.success(), "haproxy -c:\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn observability_files_exist_and_the_dashboard_parses() {
    let deploy = root().join("deploy");
    for f in [
        "otel-collector.yaml",
        "prometheus.yml",
        "grafana/provisioning/datasources/datasources.yaml",
        "grafana/provisioning/dashboards/dashboards.yaml",
    ] {
        assert!(deploy.join(f).is_file(), "deploy/{f}");
    }
    let text = std::fs::read_to_string(deploy.join("grafana/dashboards/mailfleet.json")).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let titles: Vec<&str> =
        dash["panels"].as_array().expect("panels").iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Messages received",
        "Messages delivered",
        "Delivery latency",
        "Queue depth",
        "Connections per gateway replica",
        "Errors",
        "Authentication failures",
    ] {
        assert!(titles.contains(&want), "panel {want:?} in {titles:?}");
    }
    // The metric the POP3 gateway emits today is on the dashboard.
    assert!(text.contains("mailfleet_pop3_active_connections") || text.contains("(smtp|imap|pop3)_active_connections"));
}
