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

    ctx.env.add_account("ed@ed.test", "ed-password").await;

    let from_local = b"From: Alice <alice@local.test>\r\nTo: bob@remote.test\r\nSubject: signed\r\nDate: Sun, 22 Nov 2026 05:00:00 +0000\r\nMessage-ID: <d1@local.test>\r\n\r\nSigned body.\r\n";
    let from_ed = b"From: Ed <ed@ed.test>\r\nTo: bob@remote.test\r\nSubject: signed too\r\n\r\nEd body.\r\n";
    let unsigned = b"From: Nobody <x@nokey.test>\r\nTo: bob@remote.test\r\nSubject: plain\r\n\r\nNo key.\r\n";
    // alice names ed as the author: ed.test has a key, but not for her.
    let forged = b"From: Ed <ed@ed.test>\r\nTo: bob@remote.test\r\nSubject: forged\r\n\r\nForged body.\r\n";
    let as_user = |user: &'static str| move |j: &mut mailfleet_proto::queue::v1::DeliveryJob| j.auth_user = user.into();
    ctx.queue("D1", SENDER, vec![rcpt("bob@remote.test")], from_local, as_user(SENDER)).await;
    ctx.queue("D2", "ed@ed.test", vec![rcpt("bob@remote.test")], from_ed, as_user("ed@ed.test")).await;
    ctx.queue("D3", "x@nokey.test", vec![rcpt("bob@remote.test")], unsigned, as_user(SENDER)).await;
    ctx.queue("D4", SENDER, vec![rcpt("bob@remote.test")], forged, as_user(SENDER)).await;
    // Not from an authenticated user (and not our own DSN): never signed.
    ctx.queue("D5", SENDER, vec![rcpt("bob@remote.test")], from_local, |_| {}).await;
    ctx.relay_idle(Duration::from_secs(20)).await;
    let got = mx.received();
    assert_eq!(got.len(), 5);
    let records = [rsa, ed];
    let mut signed_local = 0;
    for r in &got {
        let body = text(&r.data);
        if body.contains("No key.") || body.contains("Forged body.") {
            assert!(!body.contains("DKIM-Signature"), "no key, or not the sender's author: no signature\n{body}");
            continue;
        }
        if !body.contains("DKIM-Signature") {
            assert!(body.contains("Signed body."), "only D5 goes unsigned:\n{body}");
            continue;
        }
        let results = verify(&r.data, &records).await;
        assert_eq!(results, vec![DkimResult::Pass], "signature verifies:\n{body}");
        if body.contains("Ed body.") {
            assert!(body.contains("a=ed25519-sha256") && body.contains("d=ed.test") && body.contains("s=e1"), "{body}");
        } else {
            signed_local += 1;
            assert!(body.contains("a=rsa-sha256") && body.contains("d=local.test") && body.contains("s=s1"), "{body}");
        }
    }
    assert_eq!(signed_local, 1, "D1 signed, D5 (no authenticated user) not");

    // Tampering is detected by the same verifier (the check is not vacuous).
    let signed = got
        .iter()
        .find(|r| text(&r.data).contains("Signed body.") && text(&r.data).contains("DKIM-Signature"))
        .expect("signed message");
    let tampered = text(&signed.data).replace("Signed body.", "Changed body.");
    let results = verify(tampered.as_bytes(), &records).await;
    assert!(!results.contains(&DkimResult::Pass), "{results:?}");
    ctx.stop().await;
}
