//! DKIM signing of relayed mail, checked by an independent verifier:
//! mail-auth's DKIM verifier with the published TXT records pre-loaded
//! (no DNS query leaves the machine).

mod relay_common;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, ResolverCache, Txt};
use mailfleet_proto::storage::v1 as pb;
use relay_common::*;

/// TXT answers from a table, as if published in DNS.
struct PublishedTxt(HashMap<Box<str>, Txt>);

impl ResolverCache<Box<str>, Txt> for PublishedTxt {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }
    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

async fn verify(message: &[u8], records: &[pb::DkimKey]) -> Vec<DkimResult> {
    let mut map = HashMap::new();
    for k in records {
        let key = DomainKey::parse(k.dns_value.as_bytes()).expect("published record parses");
        map.insert(format!("{}.", k.dns_name).into_boxed_str(), Txt::DomainKey(Arc::new(key)));
    }
    let txt = PublishedTxt(map);
    // A name server on a closed loopback port: any real lookup would fail.
    let mut udp = ConnectionConfig::udp();
    udp.port = 9;
    let servers = vec![NameServerConfig::new("127.0.0.1".parse().expect("ip"), true, vec![udp])];
    let auth = MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), ResolverOpts::default())
        .expect("authenticator");
    let parsed = AuthenticatedMessage::parse(message).expect("message parses");
    let out = auth.verify_dkim(mail_auth::Parameters::new(&parsed).with_txt_cache(&txt)).await;
    out.iter().map(|o| o.result().clone()).collect()
}

#[tokio::test]
async fn outgoing_mail_is_dkim_signed_per_author_domain() {
    let mx = ScriptedMx::start(Script { pipelining: true, ..Script::default() }).await;
    let ctx = Ctx::start(resolver_for("remote.test", mx.addr), |_| {}).await;
    let mut admin = ctx.env.admin().await;
    admin.add_domain(pb::AddDomainRequest { name: "ed.test".into() }).await.expect("domain");
    let rsa = admin
        .generate_dkim_key(pb::GenerateDkimKeyRequest {
            domain: "local.test".into(),
            selector: "s1".into(),
            algorithm: "rsa-sha256".into(),
        })
        .await
        .expect("rsa key")
        .into_inner();
    let ed = admin
        .generate_dkim_key(pb::GenerateDkimKeyRequest {
            domain: "ed.test".into(),
            selector: "e1".into(),
            algorithm: "ed25519".into(),
        })
        .await
        .expect("ed25519 key")
        .into_inner();
    assert!(rsa.private_key_pem.is_empty(), "the admin API does not hand out private keys");

    let from_local = b"From: Alice <alice@local.test>\r\nTo: bob@remote.test\r\nSubject: signed\r\nDate: Sun, 22 Nov 2026 05:00:00 +0000\r\nMessage-ID: <d1@local.test>\r\n\r\nSigned body.\r\n";
    let from_ed = b"From: Ed <ed@ed.test>\r\nTo: bob@remote.test\r\nSubject: signed too\r\n\r\nEd body.\r\n";
    let unsigned = b"From: Nobody <x@nokey.test>\r\nTo: bob@remote.test\r\nSubject: plain\r\n\r\nNo key.\r\n";
    ctx.queue("D1", SENDER, vec![rcpt("bob@remote.test")], from_local, |_| {}).await;
    ctx.queue("D2", "ed@ed.test", vec![rcpt("bob@remote.test")], from_ed, |_| {}).await;
    ctx.queue("D3", "x@nokey.test", vec![rcpt("bob@remote.test")], unsigned, |_| {}).await;
    ctx.relay_idle(Duration::from_secs(20)).await;
    let got = mx.received();
    assert_eq!(got.len(), 3);
    let records = [rsa, ed];
    for r in &got {
        let body = text(&r.data);
        if body.contains("No key.") {
            assert!(!body.contains("DKIM-Signature"), "no key, no signature");
            continue;
        }
        let results = verify(&r.data, &records).await;
        assert_eq!(results, vec![DkimResult::Pass], "signature verifies:\n{body}");
        if body.contains("Ed body.") {
            assert!(body.contains("a=ed25519-sha256") && body.contains("d=ed.test") && body.contains("s=e1"), "{body}");
        } else {
            assert!(body.contains("a=rsa-sha256") && body.contains("d=local.test") && body.contains("s=s1"), "{body}");
        }
    }

    // Tampering is detected by the same verifier (the check is not vacuous).
    let signed = got.iter().find(|r| text(&r.data).contains("Signed body.")).expect("signed message");
    let tampered = text(&signed.data).replace("Signed body.", "Changed body.");
    let results = verify(tampered.as_bytes(), &records).await;
    assert!(!results.contains(&DkimResult::Pass), "{results:?}");
    ctx.stop().await;
}
