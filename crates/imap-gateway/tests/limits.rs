//! Algorithmic limits: no command a logged-in client can send makes the
//! gateway work for long. LIST wildcards match in linear time; a search
//! program over its bounds is refused with NO [LIMIT]; a sequence set of
//! many ranges costs little.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Gateway};
use imap_gateway::store::fake::FakeStore;

async fn logged_in() -> (Gateway, Client, Arc<FakeStore>) {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    let gw = Gateway::start_with(store.clone(), |_| {}).await;
    let mut c = Client::connect(gw.addr).await;
    assert!(c.line().await.starts_with("* OK"));
    assert!(c.cmd("a", "LOGIN alice@example.org pw").await.last().is_some_and(|l| l.starts_with("a OK")));
    (gw, c, store)
}

#[tokio::test]
async fn list_with_a_pathological_pattern_answers_at_once() {
    let (_gw, mut c, _) = logged_in().await;
    // A deep mailbox, so that every `*` and `%` has many places to stop.
    let deep: Vec<String> = (b'a'..=b'p').map(|l| (l as char).to_string()).collect();
    let name = deep.join("/");
    assert!(c.cmd("c", &format!("CREATE {name}")).await.last().is_some_and(|l| l.starts_with("c OK")));
    let started = Instant::now();
    let reply = c.cmd("l", r#"LIST "" "*%*%*%*%*%*%*%*%*%*%*%*%*%*%*x""#).await;
    let took = started.elapsed();
    assert_eq!(reply.last().map(String::as_str), Some("l OK LIST completed"), "{reply:?}");
    assert_eq!(reply.len(), 1, "nothing ends in x: {reply:?}");
    let reply = c.cmd("m", r#"LIST "" "*%*%*%*%*%*%*%*%*%*%*%*%*%*%*p""#).await;
    assert!(reply.iter().any(|l| l.ends_with(&format!(" {name}"))), "{reply:?}");
    // Backtracking took longer than the age of the universe here; generous
    // for a loaded machine.
    assert!(took < Duration::from_secs(5), "LIST took {took:?}");
}

#[tokio::test]
async fn a_search_program_over_its_bounds_is_refused() {
    let (_gw, mut c, store) = logged_in().await;
    store.add_message(1, "INBOX", b"Subject: one\r\n\r\nbody\r\n", &[]);
    assert!(c.cmd("s", "SELECT INBOX").await.last().is_some_and(|l| l.starts_with("s OK")));
    let within = vec!["SUBJECT one"; 100].join(" ");
    let reply = c.cmd("a", &format!("SEARCH {within}")).await;
    assert_eq!(reply, ["* SEARCH 1", "a OK SEARCH completed"]);
    let over = vec!["SUBJECT one"; 101].join(" ");
    let reply = c.cmd("b", &format!("SEARCH {over}")).await;
    assert_eq!(reply, ["b NO [LIMIT] Search program too large"]);
    let nested = format!("{}ALL{}", "NOT (".repeat(9), ")".repeat(9));
    let reply = c.cmd("c", &format!("SEARCH {nested}")).await;
    let last = reply.last().cloned().unwrap_or_default();
    assert!(last.starts_with("c NO [LIMIT]") || last.starts_with("c BAD"), "{reply:?}");
    assert!(c.cmd("d", "NOOP").await.last().is_some_and(|l| l.starts_with("d OK")), "the session goes on");
}

#[tokio::test]
async fn a_sequence_set_of_many_ranges_is_answered_correctly() {
    let (_gw, mut c, store) = logged_in().await;
    for i in 0..20 {
        store.add_message(1, "INBOX", format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(), &[]);
    }
    assert!(c.cmd("s", "SELECT INBOX").await.last().is_some_and(|l| l.starts_with("s OK")));
    // Overlapping, unordered, reversed ranges and `*`.
    let reply = c.cmd("f", "FETCH 19:*,3,5:4,2:3,7,7,30000:30001 (FLAGS)").await;
    assert_eq!(reply.last().map(String::as_str), Some("f BAD Invalid sequence number"), "beyond EXISTS");
    let reply = c.cmd("g", "FETCH 19:*,3,5:4,2:3,7,7 (UID)").await;
    let fetched: Vec<&str> =
        reply.iter().filter_map(|l| l.strip_prefix("* ")).map(|l| l.split(' ').next().unwrap_or("")).collect();
    assert_eq!(fetched, ["2", "3", "4", "5", "7", "19", "20"]);
    let many = (1..=10_000).map(|i| (i * 2).to_string()).collect::<Vec<_>>().join(",");
    let reply = c.cmd("u", &format!("UID FETCH {many} (FLAGS)")).await;
    assert_eq!(reply.len(), 11, "the ten even UIDs and the tagged OK: {reply:?}");
}
