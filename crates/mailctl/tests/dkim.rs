//! `mailctl dkim` end to end: the real binary against a real storage service.

use std::process::{Command, Output};

use mailfleet_testkit::TestEnv;

fn mailctl(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailctl"))
        .env("MAILCTL_PKI", mailfleet_testkit::fleet_pki())
        .arg("--admin-url")
        .arg(env.admin_url())
        .args(args)
        .output()
        .expect("run mailctl")
}

#[tokio::test(flavor = "multi_thread")]
async fn administrator_generates_dkim_keys_and_gets_the_dns_record() {
    let env = TestEnv::start().await;
    let out = mailctl(&env, &["domain", "add", "example.org"]);
    assert!(out.status.success());

    let out = mailctl(&env, &["dkim", "generate", "example.org"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("generated rsa-sha256 key for example.org (selector mailfleet)"), "{stdout}");
    assert!(stdout.contains("mailfleet._domainkey.example.org. IN TXT ( \"v=DKIM1; k=rsa; p=MII"), "{stdout}");

    let out = mailctl(&env, &["dkim", "generate", "example.org", "--selector", "ed1", "--algorithm", "ed25519"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("ed1._domainkey.example.org. IN TXT ( \"v=DKIM1; k=ed25519; p="), "{stdout}");

    let out = mailctl(&env, &["dkim", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.lines().count(), 2, "{listing}");
    assert!(listing.contains("example.org\ted1\ted25519-sha256"));
    assert!(!listing.contains("PRIVATE KEY"), "the admin API never shows private keys");

    // Errors are clear.
    let out = mailctl(&env, &["dkim", "generate", "unknown.org"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no domain unknown.org"));
    let out = mailctl(&env, &["dkim", "generate", "example.org", "--algorithm", "dsa"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown DKIM algorithm"));
}
