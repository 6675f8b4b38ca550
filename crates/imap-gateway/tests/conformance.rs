//! Conformance failures Dovecot's imaptest found (issue 19), each as the
//! conversation a client has, over loopback TCP with the in-memory store.

mod common;

use std::sync::Arc;

use common::{Gateway, transcript};
use imap_gateway::store::fake::FakeStore;

async fn gateway() -> (Gateway, Arc<FakeStore>) {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    (Gateway::start_with(store.clone(), |_| {}).await, store)
}

/// RFC 3501 §9: every one of these characters is an ATOM-CHAR, so the
/// argument is an astring: a mailbox that does not exist (NO), and for
/// LIST a pattern (which may add `%` and `*`) that matches nothing. The
/// `&` starts text that is not valid modified UTF-7 (§5.1.3), which names
/// no mailbox but is no syntax error. A BAD does not end the session.
#[tokio::test]
async fn every_atom_char_is_a_mailbox_name() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 LIST "" ~foo
        S: a1 OK LIST completed
        C: a2 SELECT ~foo
        S: a2 NO [NONEXISTENT] No such mailbox
        C: a3 SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}
        S: a3 NO [NONEXISTENT] Mailbox name is not valid modified UTF-7
        C: a4 LIST "" !#$&'+,-.0123456789:;<=>?@^_`|[}%*
        S: a4 OK LIST completed
        C: a5 LSUB "" !#$&'+,-.0123456789:;<=>?@^_`|[}%*
        S: a5 OK LSUB completed
        C: a6 SELECT !#$'+,-.0123456789:;<=>?@^_`|[]}
        S: a6 NO [NONEXISTENT] No such mailbox
        C: a7 FROB
        S: a7 BAD Syntax error
        C: a8 NOOP
        S: a8 OK NOOP completed
        "#,
    )
    .await;
}
