//! Keeps the deployment files valid by construction (there is no Docker
//! engine here): `docker-compose config` must accept docker-compose.yml,
//! scaled services must be scalable (no fixed container name, no host port),
//! the load balancer must publish every standard mail port, pass PROXY v2 to
//! every gateway and check its /healthz, and the dashboard must be valid JSON, and
//! HAProxy's own `haproxy -c` must accept deploy/haproxy.cfg. The networks
//! must keep storage, PostgreSQL and NATS private (issue 15) and every NATS
//! client must have its own identity. Without
//! docker-compose or haproxy these tests fail (scripts/test.sh installs both).
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

/// A check that cannot run must not pass: a tool that is missing fails the test.
#[track_caller]
fn require(binary: &str, package: &str) {
    let runs = |arg: &str| Command::new(binary).arg(arg).output().is_ok_and(|o| o.status.success());
    assert!(
        runs("--version") || runs("-v"),
        "{binary} is not installed: run the suite with scripts/test.sh, which installs it (Debian package {package})"
    );
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
    require("docker-compose", "docker-compose");
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
        // Long syntax, or short when an address is given (MAILFLEET_PUBLISH_ADDRESS).
        assert!(
            lb.contains(&format!("published: {port}\n")) || lb.contains(&format!("- 0.0.0.0:{port}:")),
            "lb publishes {port} on every address by default:\n{lb}"
        );
    }
    // Every gateway reads PROXY headers, trusted from the edge network's
    // subnet only, joins that network and serves /healthz on the port
    // deploy/haproxy.cfg checks.
    for (service, prefix, health) in
        [("smtp-ingress", "SMTP", 8025), ("imap-gateway", "IMAP", 8143), ("pop3-gateway", "POP3", 8110)]
    {
        let block = service_block(&config, service).join("\n");
        assert!(block.contains(&format!("MAILFLEET_{prefix}_PROXY_PROTOCOL__ENABLED: \"true\"")), "{block}");
        assert!(block.contains(&format!("MAILFLEET_{prefix}_PROXY_PROTOCOL__TRUSTED: 172.29.0.0/24")), "{block}");
        assert!(block.contains(&format!("MAILFLEET_{prefix}_HEALTH_LISTEN: 0.0.0.0:{health}")), "{block}");
        assert!(block.contains(&format!("127.0.0.1 {health}")), "{service}: compose healthcheck asks /healthz");
        assert!(block.contains("edge"), "{service} joins the edge network");
        assert!(block.contains("OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4317"), "{block}");
    }
    assert!(config.contains("- subnet: 172.29.0.0/24"), "edge subnet");
    // Storage is checked with the gRPC health service, through its own binary.
    let storage = service_block(&config, "storage").join("\n");
    assert!(storage.contains("- health"), "{storage}");
    // Docker's default 10 s before SIGKILL is shorter than shutdown_grace.
    for s in SCALED.iter().chain(&["storage"]) {
        let block = service_block(&config, s).join("\n");
        assert!(block.contains("stop_grace_period: 45s"), "{s}: stop_grace_period");
    }
}

/// The lines of one entry of a top-level section (`networks:`, `volumes:`)
/// in `docker-compose config` output.
fn top_level_block<'a>(config: &'a str, section: &str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let section = format!("{section}:");
    let mut lines = config.lines().skip_while(|l| *l != section).skip(1).take_while(|l| l.starts_with(' '));
    let _ = lines.by_ref().find(|l| l.trim_end() == header.trim_end() || l.starts_with(&format!("{header} ")));
    lines.take_while(|l| l.starts_with("   ")).collect()
}

/// The networks a service joins (`networks:` of its block, map or list form).
fn networks_of(config: &str, service: &str) -> Vec<String> {
    service_block(config, service)
        .into_iter()
        .skip_while(|l| *l != "    networks:")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .filter(|l| !l.starts_with("       "))
        .map(|l| l.trim().trim_start_matches("- ").split(':').next().unwrap_or_default().to_string())
        .collect()
}

/// Issue 15's network split, for the deployment as shipped and as the
/// offline override runs it: storage, PostgreSQL and NATS only on the
/// internal `backend`, never on `edge` and without a published port; the
/// dashboards sharing no network with them (they meet the fleet at the
/// collector only); `edge` holding just the balancer and the gateways.
fn assert_networks_are_split(config: &str) {
    let backend = top_level_block(config, "networks", "backend").join("\n");
    assert!(backend.contains("internal: true"), "the backend network is internal:\n{backend}");
    let private = ["storage", "postgres", "nats-1", "nats-2", "nats-3"];
    for s in private {
        let networks = networks_of(config, s);
        assert!(!networks.is_empty(), "{s} names its networks");
        assert!(!networks.iter().any(|n| n == "edge"), "{s} is on the edge network: {networks:?}");
        let block = service_block(config, s);
        assert!(!block.iter().any(|l| l.trim_start().starts_with("ports:")), "{s} publishes a port");
    }
    let private_networks: Vec<String> = private.iter().flat_map(|s| networks_of(config, s)).collect();
    for dashboard in ["jaeger", "prometheus", "grafana"] {
        let shared: Vec<String> =
            networks_of(config, dashboard).into_iter().filter(|n| private_networks.contains(n)).collect();
        assert!(shared.is_empty(), "{dashboard} shares {shared:?} with storage, postgres or nats");
    }
    let services = compose(&["config", "--services"]);
    let mut on_edge: Vec<&str> =
        services.lines().filter(|s| networks_of(config, s).iter().any(|n| n == "edge")).collect();
    on_edge.sort_unstable();
    assert_eq!(on_edge, ["imap-gateway", "lb", "pop3-gateway", "smtp-ingress"], "who is on the edge network");
}

#[test]
fn storage_postgres_and_nats_are_private_and_the_dashboards_cannot_reach_them() {
    require("docker-compose", "docker-compose");
    assert_networks_are_split(&compose(&["config"]));
    let offline = root().join("deploy/compose.offline.yml");
    assert_networks_are_split(&compose(&["-f", offline.to_str().expect("utf-8 path"), "config"]));
}

/// `block` (a service's `docker-compose config` lines) sets `{settings}CA_FILE`,
/// `CERT_FILE` and `KEY_FILE` to the CA and `service`'s own certificate and
/// key in its pki mount.
fn assert_own_pki_files(block: &str, service: &str, settings: &str) {
    for (key, file) in [
        ("CA_FILE", "ca.crt".to_string()),
        ("CERT_FILE", format!("{service}.crt")),
        ("KEY_FILE", format!("{service}.key")),
    ] {
        let line = format!("{settings}{key}: /etc/mailfleet/pki/{file}");
        assert!(block.contains(&line), "{service}: no {line}:\n{block}");
    }
}

#[test]
fn every_caller_of_storage_has_its_own_identity_and_speaks_tls() {
    require("docker-compose", "docker-compose");
    let config = compose(&["config"]);
    for (service, prefix) in [
        ("storage", "STORAGE"),
        ("smtp-ingress", "SMTP"),
        ("delivery-queue", "QUEUE"),
        ("imap-gateway", "IMAP"),
        ("pop3-gateway", "POP3"),
    ] {
        let block = service_block(&config, service).join("\n");
        assert_own_pki_files(&block, service, &format!("MAILFLEET_{prefix}_IDENTITY__"));
        if service != "storage" {
            assert!(block.contains(&format!("MAILFLEET_{prefix}_STORAGE_URL: https://storage:50051")), "{block}");
        }
    }
    assert!(!config.contains("http://storage:"), "a plaintext storage URL");
    // The operator's mailctl, inside the storage container, is mailctl.
    let storage = service_block(&config, "storage").join("\n");
    assert!(storage.contains("MAILCTL_PKI: /etc/mailfleet/pki-mailctl"), "{storage}");
    assert!(storage.contains("- pki-mailctl:/etc/mailfleet/pki-mailctl:ro"), "{storage}");
}

#[test]
fn every_nats_client_has_its_own_identity_and_nats_requires_one() {
    require("docker-compose", "docker-compose");
    let config = compose(&["config"]);
    for (service, prefix) in
        [("storage", "STORAGE"), ("smtp-ingress", "SMTP"), ("delivery-queue", "QUEUE"), ("imap-gateway", "IMAP")]
    {
        let block = service_block(&config, service).join("\n");
        assert_own_pki_files(&block, service, &format!("MAILFLEET_{prefix}_NATS_TLS__"));
    }
    // Each container mounts its own identity's volume only, read-only.
    for service in ["storage", "smtp-ingress", "delivery-queue", "imap-gateway", "pop3-gateway"] {
        let block = service_block(&config, service).join("\n");
        assert!(block.contains(&format!("- pki-{service}:/etc/mailfleet/pki:ro")), "{service}: {block}");
        assert!(!block.contains("- pki:"), "{service} mounts the CA's volume");
    }
    for nats in ["nats-1", "nats-2", "nats-3"] {
        let block = service_block(&config, nats).join("\n");
        assert!(block.contains("- pki-nats:/etc/nats/pki:ro"), "{block}");
        assert!(block.contains("/etc/nats/auth.conf:ro"), "{nats} mounts auth.conf next to nats.conf");
        assert!(block.contains("pki:\n        condition: service_completed_successfully"), "{nats} waits for pki");
    }
    // The configuration the three servers run: TLS, a client certificate
    // mapped to a user, the shipped users.
    let nats_conf = std::fs::read_to_string(root().join("deploy/nats/nats.conf")).expect("deploy/nats/nats.conf");
    let active: String = nats_conf.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    for want in [
        "cert_file: /etc/nats/pki/nats.crt",
        "ca_file: /etc/nats/pki/ca.crt",
        "verify_and_map: true",
        "include auth.conf",
    ] {
        assert!(active.contains(want), "nats.conf: {want}");
    }
}

#[test]
fn the_tls_override_mounts_certificates_into_every_gateway() {
    require("docker-compose", "docker-compose");
    let tls = root().join("deploy/compose.tls.yml");
    let config = compose(&["-f", tls.to_str().expect("utf-8 path"), "config"]);
    for (service, prefix) in [("smtp-ingress", "SMTP"), ("imap-gateway", "IMAP"), ("pop3-gateway", "POP3")] {
        let block = service_block(&config, service).join("\n");
        assert!(
            block.contains(&format!("MAILFLEET_{prefix}_TLS__CERT_FILE: /etc/mailfleet/tls/fullchain.pem")),
            "{block}"
        );
        assert!(
            block.contains(&format!("MAILFLEET_{prefix}_TLS__KEY_FILE: /etc/mailfleet/tls/privkey.pem")),
            "{block}"
        );
        assert!(block.contains("deploy/tls:/etc/mailfleet/tls:ro"), "{service} mounts deploy/tls: {block}");
    }
}

#[test]
fn haproxy_sends_proxy_v2_to_compose_services() {
    let path = root().join("deploy/haproxy.cfg");
    let cfg = std::fs::read_to_string(&path).expect("deploy/haproxy.cfg");
    let templates: Vec<&str> = cfg.lines().map(str::trim).filter(|l| l.starts_with("server-template")).collect();
    assert_eq!(templates.len(), MAIL_PORTS.len(), "one backend per mail port");
    for t in &templates {
        // Every gateway reads PROXY headers and is health-checked on the
        // /healthz port compose configures for it.
        assert!(t.contains("send-proxy-v2"), "{t}");
        let health = [(" smtp-ingress:", 8025), (" imap-gateway:", 8143), (" pop3-gateway:", 8110)]
            .iter()
            .find(|(s, _)| t.contains(s))
            .map(|(_, port)| *port)
            .unwrap_or_else(|| panic!("{t} targets a gateway"));
        assert!(t.contains(&format!("check port {health}")), "{t}");
    }
    assert_eq!(cfg.matches("option httpchk GET /healthz").count(), MAIL_PORTS.len(), "every backend checks /healthz");
    require("haproxy", "haproxy");
    let out = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().expect("run haproxy -c");
    assert!(out.status.success(), "haproxy -c:\n{}", String::from_utf8_lossy(&out.stderr));
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
    // The connection layer's metrics (one name for every gateway) are on the dashboard.
    for metric in
        ["mailfleet_connections_active", "mailfleet_auth_failures_total", "mailfleet_connections_rejected_total"]
    {
        assert!(text.contains(metric), "{metric} on the dashboard");
    }
}

#[test]
fn the_image_builds_every_binary_once_and_runs_unprivileged_with_a_healthcheck() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("deploy/Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    // Multi-stage: a Rust build stage, then a small runtime stage.
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].contains("rust:") && froms[1].contains("-slim"), "{froms:?}");
    for binary in ["storage", "mailctl", "smtp-ingress", "delivery-queue", "imap-gateway", "pop3-gateway"] {
        assert!(text.contains(binary), "{binary} is built and copied");
    }
    // The runtime stage runs as a user of its own, and checks its health.
    let user = lines.iter().rfind(|l| l.starts_with("USER ")).expect("USER");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    assert!(lines.iter().any(|l| l.starts_with("HEALTHCHECK ") && l.contains("health")), "HEALTHCHECK");
}

#[test]
fn the_offline_override_uses_only_images_built_by_the_images_script() {
    require("docker-compose", "docker-compose");
    let offline = root().join("deploy/compose.offline.yml");
    let config = compose(&["-f", offline.to_str().expect("utf-8 path"), "config"]);
    let script = std::fs::read_to_string(root().join("scripts/images.sh")).expect("scripts/images.sh");
    let images: Vec<&str> = config.lines().filter_map(|l| l.trim_start().strip_prefix("image: ")).collect::<Vec<_>>();
    let services = compose(&["-f", offline.to_str().expect("utf-8 path"), "config", "--services"]);
    // Every service names an image, and each is one scripts/images.sh
    // builds: nothing is pulled from a registry.
    assert_eq!(images.len(), services.lines().count(), "{config}");
    for image in images {
        assert!(image == "mailfleet:latest" || image.starts_with("mailfleet-offline/"), "{image} needs a registry");
        let (name, tag) = image.split_once(':').expect("tagged image");
        let built = script.contains(image)
            || (name == "mailfleet-offline/debian" && script.contains("SUITE=") && script.contains(tag));
        assert!(built, "scripts/images.sh builds {image}");
    }
}
