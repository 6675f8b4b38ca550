//! THREAD algorithms (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES over
//! the sort fields storage keeps per message (`sortkeys`). Pure: rows in,
//! a forest of UIDs out, in the pre-order form of `ThreadResponse`.

use std::collections::HashMap;

use mailfleet_proto::storage::v1 as pb;

/// Hostile mail must not make THREAD recurse without end or go quadratic:
/// anyone can send a mailbox messages whose References: build a chain
/// thousands deep. Only the last `MAX_REFERENCES` of a message's
/// references are linked (the last is its parent, RFC 5256 §3 step 1.B;
/// older ones only join ancestors), a loop check walks at most `MAX_WALK`
/// parents (a longer walk counts as a loop: the link is not made), and
/// before the recursive steps a thread deeper than `MAX_DEPTH` is cut
/// there: what lies below that depth hangs directly from the message at
/// it. No real conversation comes near these numbers.
pub const MAX_REFERENCES: usize = 100;
const MAX_WALK: usize = 10_000;
pub const MAX_DEPTH: usize = 1_000;
/// The thread the algorithms run on: room for `MAX_DEPTH` levels of the
/// recursive steps (and the drop of the tree) in any build.
const STACK_BYTES: usize = 64 * 1024 * 1024;

/// Which RFC 5256 §3 algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    OrderedSubject,
    References,
}

/// THREAD over `msgs` (in sequence order), in `ThreadResponse` form; run
/// on a thread of its own with a stack sized for [`MAX_DEPTH`].
pub fn thread(algorithm: Algorithm, msgs: Vec<ThreadMsg>) -> std::io::Result<Vec<pb::ThreadNode>> {
    let worker =
        std::thread::Builder::new().name("thread-algorithm".into()).stack_size(STACK_BYTES).spawn(move || {
            let forest = match algorithm {
                Algorithm::OrderedSubject => ordered_subject(&msgs),
                Algorithm::References => references(&msgs),
            };
            encode(&forest)
        })?;
    worker.join().map_err(|_| std::io::Error::other("the threading algorithm panicked"))
}

/// One message as THREAD sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadMsg {
    pub uid: u32,
    /// Base subject, already mapped for comparison (`sortkeys`).
    pub base_subject: String,
    pub subject_is_reply: bool,
    /// RFC 5256 §2.2 sent date (internal date when unknown), UTC microseconds.
    pub sent: i64,
    pub message_id: Option<String>,
    /// Oldest first (References:, else In-Reply-To:).
    pub references: Vec<String>,
}

/// A thread tree: `uid` 0 is a dummy parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub uid: u32,
    pub children: Vec<Tree>,
}

/// The forest in `ThreadResponse` order (pre-order, child counts).
pub fn encode(forest: &[Tree]) -> Vec<pb::ThreadNode> {
    fn walk(t: &Tree, out: &mut Vec<pb::ThreadNode>) {
        out.push(pb::ThreadNode { uid: t.uid, children: t.children.len() as u32 });
        for c in &t.children {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    for t in forest {
        walk(t, &mut out);
    }
    out
}

/// RFC 5256 §3 ORDEREDSUBJECT: messages sorted by base subject then sent
/// date, split into one thread per base subject whose first message is the
/// parent of all the others; threads ordered by their first message's sent
/// date. Ties go by sequence number, that is by UID.
pub fn ordered_subject(msgs: &[ThreadMsg]) -> Vec<Tree> {
    let mut sorted: Vec<&ThreadMsg> = msgs.iter().collect();
    sorted.sort_by(|a, b| a.base_subject.cmp(&b.base_subject).then(a.sent.cmp(&b.sent)).then(a.uid.cmp(&b.uid)));
    let mut threads: Vec<(i64, u32, Tree)> = Vec::new();
    let mut current: Option<&str> = None;
    for m in sorted {
        match threads.last_mut() {
            Some((_, _, t)) if current == Some(m.base_subject.as_str()) => {
                t.children.push(Tree { uid: m.uid, children: vec![] });
            }
            _ => {
                threads.push((m.sent, m.uid, Tree { uid: m.uid, children: vec![] }));
                current = Some(m.base_subject.as_str());
            }
        }
    }
    threads.sort_by_key(|(sent, uid, _)| (*sent, *uid));
    threads.into_iter().map(|(_, _, t)| t).collect()
}

/// A container of the REFERENCES algorithm: a message, or a dummy for a
/// msg-id no message in the set has.
#[derive(Debug, Clone, Default)]
struct Node {
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Forest<'a> {
    msgs: &'a [ThreadMsg],
    nodes: Vec<Node>,
}

impl Forest<'_> {
    fn new_node(&mut self, msg: Option<usize>) -> usize {
        self.nodes.push(Node { msg, ..Node::default() });
        self.nodes.len() - 1
    }

    fn is_dummy(&self, n: usize) -> bool {
        self.nodes[n].msg.is_none()
    }

    /// Is `a` an ancestor of `b` (or `b` itself)?
    /// Is `a` among `b` and its parents? A walk longer than [`MAX_WALK`]
    /// answers yes, so the caller does not link (see [`MAX_REFERENCES`]).
    fn is_ancestor(&self, a: usize, b: usize) -> bool {
        let mut at = Some(b);
        let mut steps = 0;
        while let Some(n) = at {
            if n == a || steps == MAX_WALK {
                return true;
            }
            at = self.nodes[n].parent;
            steps += 1;
        }
        false
    }

    /// Cut every thread at [`MAX_DEPTH`]: the descendants of a node at
    /// that depth become its children, in no order (step 6 sorts them).
    /// Iterative, so depth costs no stack.
    fn cut_deep_threads(&mut self, roots: &[usize]) {
        let mut stack: Vec<(usize, usize)> = roots.iter().map(|&r| (r, 0)).collect();
        while let Some((n, depth)) = stack.pop() {
            if depth < MAX_DEPTH {
                stack.extend(self.nodes[n].children.iter().map(|&c| (c, depth + 1)));
                continue;
            }
            let mut below = Vec::new();
            let mut pending = std::mem::take(&mut self.nodes[n].children);
            while let Some(d) = pending.pop() {
                pending.append(&mut self.nodes[d].children);
                self.nodes[d].parent = Some(n);
                below.push(d);
            }
            self.nodes[n].children = below;
        }
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.nodes[child].parent.take() {
            self.nodes[p].children.retain(|&c| c != child);
        }
    }

    /// Link `child` under `parent` unless that would make a loop.
    fn link(&mut self, parent: usize, child: usize) -> bool {
        if self.is_ancestor(child, parent) {
            return false;
        }
        self.unlink(child);
        self.nodes[child].parent = Some(parent);
        self.nodes[parent].children.push(child);
        true
    }

    /// RFC 5256 §2.2 order of siblings: sent date, then sequence number;
    /// a dummy sorts as its first child.
    fn key(&self, n: usize) -> (i64, u32) {
        match self.nodes[n].msg {
            Some(m) => (self.msgs[m].sent, self.msgs[m].uid),
            None => self.nodes[n].children.first().map(|&c| self.key(c)).unwrap_or((i64::MAX, u32::MAX)),
        }
    }

    fn sort_children(&mut self, n: usize, deep: bool) {
        let mut children = std::mem::take(&mut self.nodes[n].children);
        if deep {
            for &c in &children {
                self.sort_children(c, true);
            }
        }
        children.sort_by_key(|&c| self.key(c));
        self.nodes[n].children = children;
    }

    /// The thread subject (step 5.B.i): the message's, or a dummy's first child's.
    fn subject(&self, n: usize) -> Option<(&str, bool)> {
        match self.nodes[n].msg {
            Some(m) => Some((self.msgs[m].base_subject.as_str(), self.msgs[m].subject_is_reply)),
            None => self.nodes[n].children.first().and_then(|&c| self.subject(c)),
        }
    }

    fn is_reply(&self, n: usize) -> bool {
        self.nodes[n].msg.is_some_and(|m| self.msgs[m].subject_is_reply)
    }

    /// Step (3): prune dummies in `list` (children of one parent, the root
    /// when `root`), bottom-up.
    fn prune(&mut self, list: Vec<usize>, parent: Option<usize>) -> Vec<usize> {
        let mut out = Vec::with_capacity(list.len());
        for n in list {
            let children = std::mem::take(&mut self.nodes[n].children);
            let children = self.prune(children, Some(n));
            self.nodes[n].children = children;
            if !self.is_dummy(n) {
                out.push(n);
                continue;
            }
            let count = self.nodes[n].children.len();
            // A dummy without children goes; one with children gives them
            // to its parent, but to the root only a single child.
            if count == 0 {
                continue;
            }
            if parent.is_some() || count == 1 {
                for c in std::mem::take(&mut self.nodes[n].children) {
                    self.nodes[c].parent = parent;
                    out.push(c);
                }
            } else {
                out.push(n);
            }
        }
        out
    }

    fn tree(&self, n: usize) -> Tree {
        Tree {
            uid: self.nodes[n].msg.map(|m| self.msgs[m].uid).unwrap_or(0),
            children: self.nodes[n].children.iter().map(|&c| self.tree(c)).collect(),
        }
    }
}

/// RFC 5256 §3 REFERENCES, steps (1) to (6). `msgs` in sequence (UID) order.
pub fn references(msgs: &[ThreadMsg]) -> Vec<Tree> {
    let mut f = Forest { msgs, nodes: Vec::with_capacity(msgs.len() * 2) };
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        // (1) A message without a valid Message-ID, or whose Message-ID an
        // earlier message already has, gets a unique id of its own (a
        // container no reference can reach). A dummy created for the id
        // by an earlier reference becomes this message.
        let node = match m.message_id.as_deref() {
            Some(id) => match by_id.get(id) {
                Some(&n) if f.is_dummy(n) => {
                    f.nodes[n].msg = Some(i);
                    n
                }
                Some(_) => f.new_node(Some(i)),
                None => {
                    let n = f.new_node(Some(i));
                    by_id.insert(id, n);
                    n
                }
            },
            None => f.new_node(Some(i)),
        };
        // (1.A) Link the references in order, each the parent of the
        // next; a missing one becomes a dummy; an existing link is kept;
        // no link that would make a loop.
        let mut previous: Option<usize> = None;
        for r in &m.references[m.references.len().saturating_sub(MAX_REFERENCES)..] {
            let n = match by_id.get(r.as_str()) {
                Some(&n) => n,
                None => {
                    let n = f.new_node(None);
                    by_id.insert(r.as_str(), n);
                    n
                }
            };
            if let Some(p) = previous
                && f.nodes[n].parent.is_none()
            {
                f.link(p, n);
            }
            previous = Some(n);
        }
        // (1.B) The last reference is the message's parent: a parent it
        // got from a truncated References: of another message is replaced;
        // with no references it has none.
        match previous {
            // RFC 5256 §3 step 1.B: the current parent link goes first,
            // then the new one is made unless it would make a loop (and
            // the message is left a root).
            Some(p) if p != node => {
                f.unlink(node);
                if !f.is_ancestor(node, p) {
                    f.link(p, node);
                }
            }
            Some(_) => {}
            None => f.unlink(node),
        }
    }
    // (2) The root set: containers without a parent.
    let roots: Vec<usize> = (0..f.nodes.len()).filter(|&n| f.nodes[n].parent.is_none()).collect();
    f.cut_deep_threads(&roots);
    // (3) Prune dummies.
    let mut roots = f.prune(roots, None);
    // (4) Sort the root set by sent date (a dummy by its first child).
    for &r in &roots {
        if f.is_dummy(r) {
            f.sort_children(r, false);
        }
    }
    roots.sort_by_key(|&r| f.key(r));
    // (5) Gather threads with the same base subject.
    // (5.A, B) One thread per subject: a dummy is preferred, then a
    // message that is not a reply.
    let mut table: HashMap<String, usize> = HashMap::new();
    for &r in &roots {
        let Some((subject, _)) = f.subject(r) else { continue };
        if subject.is_empty() {
            continue;
        }
        match table.get(subject) {
            None => {
                table.insert(subject.to_string(), r);
            }
            Some(&t) => {
                if !f.is_dummy(t) && (f.is_dummy(r) || (f.is_reply(t) && !f.is_reply(r))) {
                    table.insert(subject.to_string(), r);
                }
            }
        }
    }
    // (5.C) Merge each other thread of that subject into it.
    let mut gone = vec![false; f.nodes.len()];
    let mut new_roots: Vec<usize> = Vec::new();
    for &r in &roots {
        if gone[r] || f.nodes[r].parent.is_some() {
            continue;
        }
        let Some((subject, _)) = f.subject(r) else { continue };
        if subject.is_empty() {
            continue;
        }
        let subject = subject.to_string();
        let Some(&t) = table.get(&subject) else { continue };
        if t == r {
            continue;
        }
        match (f.is_dummy(t), f.is_dummy(r)) {
            (true, true) => {
                for c in std::mem::take(&mut f.nodes[r].children) {
                    f.nodes[c].parent = None;
                    f.link(t, c);
                }
                gone[r] = true;
            }
            (true, false) => {
                f.link(t, r);
            }
            _ if f.is_reply(r) && !f.is_reply(t) => {
                f.link(t, r);
            }
            _ => {
                let d = f.new_node(None);
                gone.push(false);
                f.link(d, t);
                f.link(d, r);
                table.insert(subject, d);
                new_roots.push(d);
            }
        }
    }
    let mut roots: Vec<usize> =
        roots.into_iter().chain(new_roots).filter(|&r| !gone[r] && f.nodes[r].parent.is_none()).collect();
    // (6) Sort every set of siblings by sent date, the deepest first.
    for &r in &roots {
        f.sort_children(r, true);
    }
    roots.sort_by_key(|&r| f.key(r));
    roots.iter().map(|&r| f.tree(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(uid: u32, subject: &str, sent: i64, id: Option<&str>, refs: &[&str]) -> ThreadMsg {
        let (base_subject, subject_is_reply) = crate::sortkeys::base_subject(subject);
        ThreadMsg {
            uid,
            base_subject,
            subject_is_reply,
            sent,
            message_id: id.map(String::from),
            references: refs.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The IMAP form (RFC 5256 §4) of a forest, for readable assertions.
    fn show(forest: &[Tree]) -> String {
        fn members(t: &Tree, out: &mut String) {
            if t.uid != 0 {
                out.push_str(&t.uid.to_string());
            }
            match t.children.len() {
                0 => {}
                1 => {
                    if t.uid != 0 {
                        out.push(' ');
                    }
                    members(&t.children[0], out);
                }
                _ => {
                    if t.uid != 0 {
                        out.push(' ');
                    }
                    for c in &t.children {
                        out.push('(');
                        members(c, out);
                        out.push(')');
                    }
                }
            }
        }
        forest
            .iter()
            .map(|t| {
                let mut s = String::from("(");
                members(t, &mut s);
                s.push(')');
                s
            })
            .collect()
    }

    #[test]
    fn ordered_subject_groups_by_base_subject() {
        let msgs = vec![
            msg(1, "b", 50, None, &[]),
            msg(2, "a", 10, None, &[]),
            msg(3, "Re: a", 30, None, &[]),
            msg(4, "Re: b", 20, None, &[]),
            msg(5, "[list] a", 20, None, &[]),
            msg(6, "c", 5, None, &[]),
        ];
        // Thread "A": 2 (10), 5 (20), 3 (30); "B": 4 (20), 1 (50); "C": 6.
        assert_eq!(show(&ordered_subject(&msgs)), "(6)(2 (5)(3))(4 1)");
    }

    #[test]
    fn references_links_replies_and_subject_changes() {
        let msgs = vec![
            msg(1, "Plans", 10, Some("a@x"), &[]),
            msg(2, "Re: Plans", 20, Some("b@x"), &["a@x"]),
            // A reply with a new subject stays in the thread (References).
            msg(3, "Something else", 30, Some("c@x"), &["a@x", "b@x"]),
            msg(4, "Re: Plans", 25, Some("d@x"), &["a@x"]),
            msg(5, "Lunch", 5, Some("e@x"), &[]),
        ];
        assert_eq!(show(&references(&msgs)), "(5)(1 (2 3)(4))");
    }

    #[test]
    fn references_dummy_parents_for_missing_messages() {
        // 2 and 3 both answer a message that is not there: they become
        // siblings under a dummy root; a lone missing parent vanishes.
        let msgs = vec![
            msg(1, "x", 10, Some("p@x"), &["gone@x"]),
            msg(2, "y", 20, Some("q@x"), &["missing@x"]),
            msg(3, "z", 30, Some("r@x"), &["missing@x"]),
            msg(4, "w", 40, Some("s@x"), &["gone@x", "missing2@x", "p@x"]),
        ];
        assert_eq!(show(&references(&msgs)), "(1 4)((2)(3))");
        // Missing middle of a chain: the child goes up to the known ancestor.
        let msgs = vec![msg(1, "x", 10, Some("a@x"), &[]), msg(2, "x", 20, Some("c@x"), &["a@x", "b@x"])];
        assert_eq!(show(&references(&msgs)), "(1 2)");
    }

    #[test]
    fn references_duplicate_message_ids() {
        // The second "a@x" is a message of its own; replies go to the first.
        let msgs = vec![
            msg(1, "one", 10, Some("a@x"), &[]),
            msg(2, "two", 20, Some("a@x"), &[]),
            msg(3, "Re: one", 30, Some("c@x"), &["a@x"]),
        ];
        assert_eq!(show(&references(&msgs)), "(1 3)(2)");
    }

    #[test]
    fn references_gathers_by_subject() {
        let msgs = vec![
            // No references, same base subject: a reply joins the original.
            msg(1, "Party", 10, Some("a@x"), &[]),
            msg(2, "Re: Party", 20, Some("b@x"), &[]),
            // Two originals of the same subject: siblings under a dummy.
            msg(3, "News", 30, Some("c@x"), &[]),
            msg(4, "News", 40, Some("d@x"), &[]),
            // Empty subjects are never gathered.
            msg(5, "", 50, Some("e@x"), &[]),
            msg(6, "Re:", 60, Some("f@x"), &[]),
        ];
        assert_eq!(show(&references(&msgs)), "(1 2)((3)(4))(5)(6)");
    }

    #[test]
    fn references_loops_and_self_references_are_ignored() {
        let msgs = vec![
            msg(1, "a", 10, Some("a@x"), &["b@x"]),
            msg(2, "b", 20, Some("b@x"), &["a@x"]),
            msg(3, "c", 30, Some("c@x"), &["c@x"]),
        ];
        let out = show(&references(&msgs));
        // 2 refers to 1 last (step 1.B replaces 1's link to 2): one thread.
        assert_eq!(out, "(2 1)(3)");
    }

    /// imaptest's `thread` group: 2 refers to 1 and 3 (so 3 hangs under
    /// 1 and 2 under 3); then 3 refers to 2. Step 1.B drops 3's link to 1
    /// first, and as 3 under 2 would be a loop, 3 is left a root.
    #[test]
    fn a_parent_link_is_dropped_even_when_the_new_one_would_loop() {
        let msgs = vec![
            msg(1, "", 17, Some("a@b"), &[]),
            msg(2, "", 15, Some("b@b"), &["a@b", "c@b"]),
            msg(3, "", 16, Some("c@b"), &["b@b"]),
        ];
        assert_eq!(show(&references(&msgs)), "(3 2)(1)");
    }

    #[test]
    fn rfc_example_shape_and_encoding() {
        // (2)(3 6 (4 23)(44 7 96)): 3 → 6 → {4 → 23, 44 → 7 → 96}.
        let msgs = vec![
            msg(2, "solo", 1, Some("m2"), &[]),
            msg(3, "t", 2, Some("m3"), &[]),
            msg(4, "t", 4, Some("m4"), &["m3", "m6"]),
            msg(6, "t", 3, Some("m6"), &["m3"]),
            msg(7, "t", 7, Some("m7"), &["m3", "m6", "m44"]),
            msg(23, "t", 5, Some("m23"), &["m3", "m6", "m4"]),
            msg(44, "t", 6, Some("m44"), &["m3", "m6"]),
            msg(96, "t", 8, Some("m96"), &["m3", "m6", "m44", "m7"]),
        ];
        let forest = references(&msgs);
        assert_eq!(show(&forest), "(2)(3 6 (4 23)(44 7 96))");
        let nodes = encode(&forest);
        assert_eq!(nodes.len(), 8);
        assert_eq!((nodes[1].uid, nodes[1].children), (3, 1));
        assert_eq!((nodes[2].uid, nodes[2].children), (6, 2));
    }

    /// The depth of the deepest node of `ThreadResponse` nodes.
    fn depth(nodes: &[pb::ThreadNode]) -> usize {
        let mut open: Vec<u32> = Vec::new();
        let mut deepest = 0;
        for n in nodes {
            while open.last() == Some(&0) {
                open.pop();
            }
            if let Some(left) = open.last_mut() {
                *left -= 1;
            }
            open.push(n.children);
            deepest = deepest.max(open.len());
        }
        deepest
    }

    /// A reply chain far deeper than any conversation (hostile mail): the
    /// algorithm neither overflows the stack nor loses a message, and the
    /// thread is cut at MAX_DEPTH — whether the replies arrive in order
    /// or the other way round (the chain then grows at its top).
    #[test]
    fn a_hostile_reply_chain_is_cut_not_followed() {
        let n = 12_000u32;
        let ids: Vec<String> = (0..n).map(|i| format!("{i}@x")).collect();
        // The message at position `p` (UID p + 1) is link `i` of the chain.
        let link = |p: u32, i: u32| {
            let refs: Vec<&str> = if i == 0 { vec![] } else { vec![ids[i as usize - 1].as_str()] };
            // Subjects of their own: no thread is gathered by subject (step 5).
            msg(p + 1, &format!("s{p}"), i64::from(p), Some(&ids[i as usize]), &refs)
        };
        let in_order: Vec<ThreadMsg> = (0..n).map(|p| link(p, p)).collect();
        let reversed: Vec<ThreadMsg> = (0..n).map(|p| link(p, n - 1 - p)).collect();
        for msgs in [in_order, reversed] {
            let nodes = thread(Algorithm::References, msgs).expect("threads");
            assert_eq!(nodes.len(), n as usize, "every message, no dummy");
            // The root is level 1; below the message at level MAX_DEPTH + 1
            // hangs the rest of the chain.
            assert_eq!(depth(&nodes), MAX_DEPTH + 2);
        }
        // A single message referring to more ancestors than are linked.
        let refs: Vec<String> = (0..5_000).map(|i| format!("r{i}@x")).collect();
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let nodes = thread(Algorithm::References, vec![msg(1, "s", 0, Some("m@x"), &refs)]).expect("threads");
        assert_eq!(depth(&nodes), 1, "the dummies of its references are pruned away");
        assert_eq!(nodes.len(), 1);
    }
}
