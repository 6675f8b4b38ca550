//! THREAD and UID THREAD (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES.
//! The criteria go to storage as for SEARCH; storage builds the threads
//! (`Messages.Thread`) and the gateway writes them in the session's
//! numbers.

use std::num::NonZeroU32;

use imap_codec::imap_types::core::{Charset, Vec1, Vec2};
use imap_codec::imap_types::extensions::thread::{Thread, ThreadingAlgorithm};
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::search::SearchKey;
use mailfleet_proto::storage::v1 as pb;
use pb::thread_request::Algorithm;

use super::sort::prepare;
use crate::session::{CmdResult, Done, ImapError, Out, Session};
use crate::store::MailStore;

/// A thread tree in the session's numbers; 0 is a dummy parent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    n: u32,
    children: Vec<Node>,
}

/// Rebuild the trees from storage's pre-order nodes. Malformed input
/// (counts past the end) ends the forest early rather than failing.
fn decode(nodes: &[pb::ThreadNode]) -> Vec<Node> {
    fn one(nodes: &[pb::ThreadNode], at: &mut usize, depth: usize) -> Option<Node> {
        let n = nodes.get(*at)?;
        *at += 1;
        let mut node = Node { n: n.uid, children: Vec::new() };
        // Deeper than any real thread would need: flatten instead of
        // recursing without bound.
        for _ in 0..n.children {
            match one(nodes, at, depth + 1) {
                Some(c) if depth < 512 => node.children.push(c),
                Some(mut c) => {
                    let grandchildren = std::mem::take(&mut c.children);
                    node.children.push(c);
                    node.children.extend(grandchildren);
                }
                None => break,
            }
        }
        Some(node)
    }
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(t) = one(nodes, &mut at, 0) {
        out.push(t);
    }
    out
}

/// Map UIDs to what the client sees (`number`, `None` for a message this
/// session does not know yet). An unknown message is left out and its
/// children take its place; a dummy keeps two or more children at the top
/// and gives them to its parent elsewhere (RFC 5256 §3 REFERENCES (3)).
fn renumber(list: Vec<Node>, top: bool, number: &dyn Fn(u32) -> Option<u32>) -> Vec<Node> {
    let mut out = Vec::with_capacity(list.len());
    for node in list {
        let children = renumber(node.children, false, number);
        let n = if node.n == 0 { None } else { number(node.n) };
        match n {
            Some(n) => out.push(Node { n, children }),
            None if node.n == 0 && top && children.len() >= 2 => out.push(Node { n: 0, children }),
            None => out.extend(children),
        }
    }
    out
}

/// RFC 5256 §4-5: `thread-list = "(" (thread-members / thread-nested) ")"`:
/// a chain of single children is written one after the other, two or more
/// children each as a thread-list of its own. `None` for a dummy without
/// two children, which `renumber` never leaves.
fn to_thread(node: &Node) -> Option<Thread> {
    let nested = |children: &[Node]| -> Option<Vec2<Thread>> {
        Vec2::try_from(children.iter().map(to_thread).collect::<Option<Vec<_>>>()?).ok()
    };
    if node.n == 0 {
        return Some(Thread::Nested { answers: nested(&node.children)? });
    }
    let mut prefix = Vec::new();
    let mut at = node;
    loop {
        prefix.push(NonZeroU32::new(at.n)?);
        match at.children.as_slice() {
            [] => return Some(Thread::Members { prefix: Vec1::try_from(prefix).ok()?, answers: None }),
            [only] if only.n != 0 => at = only,
            many => {
                let answers = Some(nested(many)?);
                return Some(Thread::Members { prefix: Vec1::try_from(prefix).ok()?, answers });
            }
        }
    }
}

/// `* THREAD …` (RFC 5256 §4).
fn thread_data(forest: &[Node]) -> Response<'static> {
    Response::Data(Data::Thread(forest.iter().filter_map(to_thread).collect()))
}

pub async fn thread<S: MailStore>(
    s: &mut Session<S>,
    algorithm: ThreadingAlgorithm<'static>,
    charset: Charset<'static>,
    search_criteria: Vec1<SearchKey<'static>>,
    uid: bool,
    out: &mut Out,
) -> CmdResult {
    let algorithm = match algorithm {
        ThreadingAlgorithm::OrderedSubject => Algorithm::OrderedSubject,
        ThreadingAlgorithm::References => Algorithm::References,
        // RFC 5256 §3: only advertised algorithms; others are an error.
        ThreadingAlgorithm::Other(_) => return Err(ImapError::bad("Unsupported threading algorithm")),
    };
    let prepared = prepare(s, &charset, &search_criteria)?;
    let store = s.store.clone();
    let req = pb::ThreadRequest {
        account_id: prepared.account_id,
        mailbox_id: prepared.mailbox_id,
        criteria: prepared.criteria,
        algorithm: algorithm as i32,
    };
    let found = store.thread(req).await?;
    let (_, mailbox) = s.need_selected()?;
    let number = |u: u32| mailbox.seq_of(u).map(|seq| if uid { u } else { seq });
    let forest = renumber(decode(&found.nodes), true, &number);
    out.push(thread_data(&forest));
    Done::ok("THREAD completed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_line(forest: &[Node]) -> Vec<u8> {
        crate::codec::encode(&thread_data(forest))
    }

    fn node(uid: u32, children: u32) -> pb::ThreadNode {
        pb::ThreadNode { uid, children }
    }

    #[test]
    fn rfc_5256_example_line() {
        // (2)(3 6 (4 23)(44 7 96)) in pre-order.
        let nodes = [node(2, 0), node(3, 1), node(6, 2), node(4, 1), node(23, 0), node(44, 1), node(7, 1), node(96, 0)];
        let forest = renumber(decode(&nodes), true, &Some);
        assert_eq!(thread_line(&forest), b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n");
        // A dummy parent at the top: ((3)(5)).
        let forest = renumber(decode(&[node(0, 2), node(3, 0), node(5, 1), node(9, 0)]), true, &Some);
        assert_eq!(thread_line(&forest), b"* THREAD ((3)(5 9))\r\n");
        assert_eq!(thread_line(&[]), b"* THREAD\r\n");
    }

    #[test]
    fn unknown_messages_give_their_place_to_their_children() {
        // 6 is unknown to the session: 4 and 44 move up under 3.
        let nodes = [node(3, 1), node(6, 2), node(4, 0), node(44, 0)];
        let known = |u: u32| (u != 6).then_some(u * 10);
        let forest = renumber(decode(&nodes), true, &known);
        assert_eq!(thread_line(&forest), b"* THREAD (30 (40)(440))\r\n");
        // A dummy left with one known child is that child.
        let forest = renumber(decode(&[node(0, 2), node(3, 0), node(5, 0)]), true, &|u| (u == 3).then_some(1));
        assert_eq!(thread_line(&forest), b"* THREAD (1)\r\n");
        // Counts past the end are cut off, not trusted.
        assert_eq!(decode(&[node(1, 5)]).len(), 1);
    }
}
