//! `mailctl pki init`: what an operator (or compose's one-off `pki`
//! service) runs to give every service its certificate.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn pki_init(dir: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .args(["pki", "init"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("run mailctl");
    assert!(out.status.success(), "mailctl pki init failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pki_init_creates_every_identity_once_and_force_rotates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let first = pki_init(&dir, &[]);
    let names = ["ca", "storage", "smtp-ingress", "delivery-queue", "imap-gateway", "pop3-gateway", "mailctl", "nats"];
    for name in names {
        assert!(first.contains(&format!("created\t{}", dir.join(format!("{name}.crt")).display())), "{first}");
        let key = std::fs::metadata(dir.join(format!("{name}.key"))).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600, "{name}.key is for its owner only");
    }
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();

    // Run again (as compose does at every `up`): nothing changes.
    let second = pki_init(&dir, &[]);
    assert!(!second.contains("created"), "{second}");
    assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), ca);

    let rotated = pki_init(&dir, &["--force"]);
    assert!(!rotated.contains("kept"), "{rotated}");
    assert_ne!(std::fs::read(dir.join("ca.crt")).unwrap(), ca);
}
