//! SELECT, EXAMINE (RFC 3501 §6.3.1/§6.3.2), CLOSE (§6.4.2), UNSELECT
//! (RFC 3691), and the mailbox updates sent after commands (§7.3, §7.4).

use std::collections::BTreeSet;

use std::num::{NonZeroU32, NonZeroU64};

use imap_codec::imap_types::command::SelectParameter;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, FlagFetch, FlagPerm};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data, Response};
use mailfleet_proto::storage::v1 as pb;

use super::mailbox::name_arg;
use crate::codec::{self, StatusKindArg};
use crate::session::{CmdResult, Done, ImapError, KnownKeywords, Out, Selected, Session, State};
use crate::store::{Account, MailStore};

/// The five system flags a client may set (RFC 3501 §2.3.2).
fn system_flags() -> Vec<Flag<'static>> {
    vec![Flag::Answered, Flag::Flagged, Flag::Deleted, Flag::Seen, Flag::Draft]
}

/// A storage flag name as an IMAP flag; `None` for names IMAP cannot carry.
pub fn flag_of(name: &str) -> Option<Flag<'static>> {
    Flag::try_from(name).ok().map(imap_codec::imap_types::IntoStatic::into_static)
}

/// FETCH FLAGS items for a message: stored flags plus this session's \Recent.
pub fn fetch_flags(flags: &[String], recent: bool) -> Vec<FlagFetch<'static>> {
    let mut out: Vec<FlagFetch<'static>> = flags.iter().filter_map(|f| flag_of(f)).map(FlagFetch::Flag).collect();
    if recent {
        out.push(FlagFetch::Recent);
    }
    out
}

/// A keyword (RFC 3501 §2.3.2) IMAP can carry, not a system flag.
fn is_keyword(name: &str) -> bool {
    !name.starts_with('\\') && flag_of(name).is_some()
}

/// The FLAGS list (system flags and `keywords`) and the PERMANENTFLAGS
/// list (RFC 3501 §7.1: none for a read-only mailbox; `\*` as any new
/// keyword may be stored).
fn flags_and_permanent(keywords: &KnownKeywords, read_only: bool) -> (Vec<Flag<'static>>, Vec<FlagPerm<'static>>) {
    // Keywords only (no system flag), each once: KnownKeywords sees to it.
    let mut flags = system_flags();
    flags.extend(keywords.as_slice().iter().filter_map(|k| flag_of(k)));
    let mut perm: Vec<FlagPerm<'static>> = Vec::new();
    if !read_only {
        perm.extend(flags.iter().cloned().map(FlagPerm::Flag));
        perm.push(FlagPerm::Asterisk);
    }
    (flags, perm)
}

/// RFC 3501 §7.2.6: the client learns the flags of the mailbox from FLAGS
/// (and PERMANENTFLAGS), so before a FETCH shows a keyword the session has
/// not announced (set by this session's STORE or APPEND, or by another
/// session), updated FLAGS and PERMANENTFLAGS go out. Keywords compare
/// case-insensitively, as storage matches them.
pub fn announce_keywords<'a>(mailbox: &mut Selected, flags: impl IntoIterator<Item = &'a String>, out: &mut Out) {
    let mut added = false;
    for f in flags {
        // Cheapest test first: this runs for every flag of every message.
        if !f.starts_with('\\') && !mailbox.keywords.knows(f) && is_keyword(f) {
            added |= mailbox.keywords.add(f);
        }
    }
    if added {
        let (flags, perm) = flags_and_permanent(&mailbox.keywords, mailbox.read_only);
        out.push(Response::Data(Data::Flags(flags)));
        out.push(codec::status(None, StatusKindArg::Ok, Some(Code::PermanentFlags(perm)), "Flags permitted"));
    }
}

pub async fn select<S: MailStore>(
    s: &mut Session<S>,
    mailbox: Mailbox<'static>,
    parameters: Vec<SelectParameter>,
    read_only: bool,
    out: &mut Out,
) -> CmdResult {
    let account = s.need_auth()?;
    let name = name_arg(&mailbox, s.utf8)?;
    let mut resync = None;
    for p in parameters {
        match p {
            // RFC 7162 §3.1.8: SELECT (CONDSTORE) enables CONDSTORE.
            SelectParameter::CondStore => s.condstore = true,
            // RFC 7162 §3.2.5: only after ENABLE QRESYNC.
            SelectParameter::QResync { .. } if !s.qresync => return Err(ImapError::bad("ENABLE QRESYNC first")),
            SelectParameter::QResync { uid_validity, mod_sequence_value, known_uids, .. } => {
                resync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids));
            }
        }
    }
    // RFC 3501 §6.3.1: selecting deselects first, even if this SELECT fails;
    // RFC 7162 §3.2.11: [CLOSED] marks where the old mailbox's updates end.
    if matches!(s.state, State::Selected { .. }) {
        out.push(codec::status(None, StatusKindArg::Ok, Some(codec::code("CLOSED")), "Previous mailbox closed"));
    }
    s.state = State::Authenticated { account: account.clone() };
    let info = s.store.get_mailbox(account.id, &name, !read_only).await?;
    let uids = s.store.list_uids(account.id, info.id).await?;
    let mut keywords = KnownKeywords::default();
    for k in info.keywords.iter().filter(|k| is_keyword(k)) {
        keywords.add(k);
    }
    let (flags, perm) = flags_and_permanent(&keywords, read_only);
    let mut selected = Selected {
        id: info.id,
        name: info.name.clone(),
        read_only,
        uid_validity: uids.uid_validity.max(info.uid_validity),
        // RFC 9051 Appendix E: no \Recent in rev2.
        recent: if s.rev2 {
            Default::default()
        } else if read_only {
            unclaimed_recent(&info, &uids.uids)
        } else {
            info.recent_uids.iter().copied().collect()
        },
        uids: uids.uids,
        highest_modseq: uids.highest_modseq,
        saved: Vec::new(),
        pending_expunges: BTreeSet::new(),
        own_changes: Default::default(),
        keywords,
    };
    out.push(Response::Data(Data::Flags(flags)));
    out.push(Response::Data(Data::Exists(selected.exists())));
    if s.rev2 {
        // RFC 9051 §6.3.2: a LIST response with the mailbox name and
        // accurate attributes (no RECENT, no [UNSEEN] in rev2).
        let mut items: Vec<_> =
            info.special_use.iter().filter_map(|u| super::mailbox::attr(u.trim_start_matches('\\'))).collect();
        items.extend(super::mailbox::attr(if info.has_children { "HasChildren" } else { "HasNoChildren" }));
        out.push(Response::Data(Data::List {
            items,
            delimiter: Some(imap_codec::imap_types::core::QuotedChar::unvalidated(super::mailbox::DELIMITER)),
            mailbox: codec::wire_mailbox(&info.name, true),
        }));
    } else {
        out.push(Response::Data(Data::Recent(selected.recent.len() as u32)));
    }
    if !s.rev2
        && let Some(seq) = selected.seq_of(info.first_unseen_uid)
        && let Ok(code) = Code::unseen(seq)
    {
        out.push(codec::status(None, StatusKindArg::Ok, Some(code), &format!("Message {seq} is first unseen")));
    }
    out.push(codec::status(None, StatusKindArg::Ok, Some(Code::PermanentFlags(perm)), "Flags permitted"));
    if let Ok(code) = Code::uidvalidity(selected.uid_validity) {
        out.push(codec::status(None, StatusKindArg::Ok, Some(code), "UIDs valid"));
    }
    if let Ok(code) = Code::uidnext(uids.uid_next.max(1)) {
        out.push(codec::status(None, StatusKindArg::Ok, Some(code), "Predicted next UID"));
    }
    // RFC 7162 §3.1.2.1: every SELECT/EXAMINE reports HIGHESTMODSEQ.
    let highest = NonZeroU64::new(uids.highest_modseq).unwrap_or(NonZeroU64::MIN);
    out.push(codec::status(None, StatusKindArg::Ok, Some(Code::HighestModSeq(highest)), "Highest"));
    if let Some((uid_validity, since, known)) = resync
        && uid_validity == selected.uid_validity
    {
        resync_report(&*s.store, &account, &mut selected, since, known, out).await?;
    }
    s.state = State::Selected { account, mailbox: selected };
    if read_only {
        Done::with_code(Code::ReadOnly, "EXAMINE completed")
    } else {
        Done::with_code(Code::ReadWrite, "SELECT completed")
    }
}

/// RFC 3501 §6.3.2: EXAMINE reports the \Recent messages without taking
/// the flag away from the next SELECT. Storage counts them (`recent`: the
/// messages at or above its recent floor, i.e. the newest ones) without
/// claiming; they are the last `recent` UIDs that existed when it counted
/// (below its `uid_next`), whatever arrived after.
fn unclaimed_recent(info: &pb::MailboxInfo, uids: &[u32]) -> BTreeSet<u32> {
    let known = uids.partition_point(|u| *u < info.uid_next);
    let first = known.saturating_sub(info.recent as usize);
    uids[first..known].iter().copied().collect()
}

/// RFC 7162 §3.2.5.2: what the client missed since `since`: VANISHED
/// (EARLIER) for expunged UIDs it knew of, then FETCH (UID FLAGS MODSEQ)
/// for messages changed since.
pub async fn resync_report<S: MailStore + ?Sized>(
    store: &S,
    account: &Account,
    mailbox: &mut Selected,
    since: u64,
    known: Option<imap_codec::imap_types::sequence::SequenceSet>,
    out: &mut Out,
) -> Result<(), ImapError> {
    let req = pb::ChangesRequest {
        account_id: account.id,
        mailbox_id: mailbox.id,
        since_modseq: since,
        include_vanished: true,
        claim_recent: false,
    };
    let changes = store.changes(req).await?;
    let known = known.map(|set| {
        let max = changes.vanished.iter().copied().max().unwrap_or(1).max(1);
        let max = NonZeroU32::new(max).unwrap_or(NonZeroU32::MIN);
        set.iter(max).map(|n| n.get()).collect::<BTreeSet<u32>>()
    });
    let vanished: Vec<u32> =
        changes.vanished.iter().copied().filter(|u| known.as_ref().is_none_or(|k| k.contains(u))).collect();
    if let Some(known_uids) = sequence_set(&vanished) {
        out.push(Response::Data(Data::Vanished { earlier: true, known_uids }));
    }
    announce_keywords(mailbox, changes.changed.iter().flat_map(|m| &m.flags), out);
    for m in &changes.changed {
        let Some(seq) = mailbox.seq_of(m.uid) else { continue };
        let meta = pb::MessageMeta { uid: m.uid, flags: m.flags.clone(), modseq: m.modseq, ..Default::default() };
        if let Ok(data) = Data::fetch(seq, flag_items(&meta, mailbox.recent.contains(&m.uid), true, true)) {
            out.push(Response::Data(data));
        }
    }
    Ok(())
}

/// RFC 3501 §6.4.2: silently expunge (unless read-only), then deselect.
pub async fn close<S: MailStore>(s: &mut Session<S>) -> CmdResult {
    let (account, mailbox) = s.need_selected()?;
    if !mailbox.read_only {
        let req = pb::ExpungeRequest { account_id: account.id, mailbox_id: mailbox.id, ..Default::default() };
        s.store.expunge(req).await?;
    }
    s.state = State::Authenticated { account };
    Done::ok("CLOSE completed")
}

/// RFC 3691 §2: deselect without expunging.
pub fn unselect<S: MailStore>(s: &mut Session<S>) -> CmdResult {
    let (account, _) = s.need_selected()?;
    s.state = State::Authenticated { account };
    Done::ok("UNSELECT completed")
}

/// Extensions the client enabled, which change how updates look.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ext {
    pub condstore: bool,
    pub qresync: bool,
}

/// Remove `uids` from the map and tell the client: `* n EXPUNGE` per
/// message (RFC 3501 §7.4.1; each shifts the later sequence numbers), or
/// one `* VANISHED uid-set` once QRESYNC is enabled (RFC 7162 §3.2.10).
pub fn report_expunges(mailbox: &mut Selected, uids: &[u32], qresync: bool, out: &mut Out) {
    let mut gone = Vec::new();
    for &uid in uids {
        if let Some(seq) = mailbox.seq_of(uid) {
            mailbox.uids.remove(seq as usize - 1);
            mailbox.recent.remove(&uid);
            gone.push(uid);
            if !qresync && let Ok(data) = Data::expunge(seq) {
                out.push(Response::Data(data));
            }
        }
    }
    if qresync && let Some(known_uids) = sequence_set(&gone) {
        out.push(Response::Data(Data::Vanished { earlier: false, known_uids }));
    }
}

/// Bring the session's view up to date with storage and tell the client:
/// EXISTS for new messages, EXPUNGE for removed ones (only when allowed),
/// FETCH FLAGS for flag changes made elsewhere (RFC 3501 §7.3.1, §7.4).
///
/// One `Changes` call asks storage for what changed after the MODSEQ the
/// session has seen (RFC 7162 bookkeeping): cheap when nothing changed,
/// whatever the mailbox's size. Expunges that may not be reported yet
/// (during FETCH, STORE, SEARCH) wait in `pending_expunges`.
/// A failure here is logged, not reported: the command's own result stands.
pub async fn sync<S: MailStore + ?Sized>(
    store: &S,
    account: &Account,
    mailbox: &mut Selected,
    expunge_ok: bool,
    ext: Ext,
    out: &mut Out,
) {
    let req = pb::ChangesRequest {
        account_id: account.id,
        mailbox_id: mailbox.id,
        since_modseq: mailbox.highest_modseq,
        include_vanished: true,
        // RFC 3501 §2.3.2: the first session told of a new message sees it
        // as \Recent; a read-write session claims it (EXAMINE does not).
        claim_recent: !mailbox.read_only,
    };
    let changes = match store.changes(req).await {
        Ok(changes) => changes,
        Err(e) => {
            tracing::warn!(error = %e, "mailbox sync failed");
            return;
        }
    };
    let last = mailbox.uids.last().copied().unwrap_or(0);
    announce_keywords(mailbox, changes.changed.iter().flat_map(|m| &m.flags), out);
    mailbox.pending_expunges.extend(changes.vanished.iter().copied().filter(|u| *u <= last));
    if expunge_ok && !mailbox.pending_expunges.is_empty() {
        let gone: Vec<u32> = std::mem::take(&mut mailbox.pending_expunges).into_iter().collect();
        report_expunges(mailbox, &gone, ext.qresync, out);
    }
    // RFC 3501 §2.3.1.1: new messages have UIDs above every known one;
    // one that came and went before this sync is not announced.
    let vanished: BTreeSet<u32> = changes.vanished.iter().copied().collect();
    let new: Vec<u32> = changes.changed.iter().map(|m| m.uid).filter(|u| *u > last && !vanished.contains(u)).collect();
    if !new.is_empty() {
        mailbox.uids.extend(new);
        out.push(Response::Data(Data::Exists(mailbox.exists())));
    }
    if !changes.recent_uids.is_empty() {
        mailbox.recent.extend(changes.recent_uids.iter().copied());
        out.push(Response::Data(Data::Recent(mailbox.recent.len() as u32)));
    }
    for m in changes.changed.iter().filter(|m| m.uid <= last) {
        // Our own STORE (or \Seen by FETCH) was reported when it was made.
        if mailbox.own_changes.get(&m.uid) == Some(&m.modseq) {
            continue;
        }
        if let Some(seq) = mailbox.seq_of(m.uid) {
            // RFC 7162 §3.2.4: with QRESYNC, updates carry the UID.
            let meta = pb::MessageMeta { uid: m.uid, flags: m.flags.clone(), modseq: m.modseq, ..Default::default() };
            let items = flag_items(&meta, mailbox.recent.contains(&m.uid), ext.qresync, ext.condstore);
            if let Ok(data) = Data::fetch(seq, items) {
                out.push(Response::Data(data));
            }
        }
    }
    mailbox.own_changes.clear();
    mailbox.highest_modseq = mailbox.highest_modseq.max(changes.highest_modseq);
}

/// The items of a flag update: FLAGS, the UID for UID commands (RFC 3501
/// §6.4.8), and MODSEQ once CONDSTORE is on (RFC 7162 §3.1.4).
pub fn flag_items(m: &pb::MessageMeta, recent: bool, uid: bool, condstore: bool) -> Vec<MessageDataItem<'static>> {
    let mut items = Vec::with_capacity(3);
    if uid && let Some(u) = NonZeroU32::new(m.uid) {
        items.push(MessageDataItem::Uid(u));
    }
    items.push(MessageDataItem::Flags(fetch_flags(&m.flags, recent)));
    if condstore && let Some(modseq) = NonZeroU64::new(m.modseq) {
        items.push(MessageDataItem::ModSeq(modseq));
    }
    items
}

/// A list of numbers as a sequence set (RFC 7162 §3.1.3 [MODIFIED ...]).
pub fn sequence_set(numbers: &[u32]) -> Option<imap_codec::imap_types::sequence::SequenceSet> {
    use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
    let mut sorted: Vec<NonZeroU32> = numbers.iter().filter_map(|n| NonZeroU32::new(*n)).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(NonZeroU32, NonZeroU32)> = Vec::new();
    for n in sorted {
        match runs.last_mut() {
            Some((_, hi)) if hi.get().checked_add(1) == Some(n.get()) => *hi = n,
            _ => runs.push((n, n)),
        }
    }
    let list: Vec<Sequence> = runs
        .into_iter()
        .map(|(lo, hi)| {
            if lo == hi {
                Sequence::Single(SeqOrUid::Value(lo))
            } else {
                Sequence::Range(SeqOrUid::Value(lo), SeqOrUid::Value(hi))
            }
        })
        .collect();
    imap_codec::imap_types::core::Vec1::try_from(list).ok().map(SequenceSet)
}

/// `BAD` unless the mailbox may be changed (EXAMINE makes it read-only).
pub fn need_writable(mailbox: &Selected) -> Result<(), ImapError> {
    if mailbox.read_only { Err(ImapError::no(Some("READ-ONLY"), "Mailbox is read-only")) } else { Ok(()) }
}

/// A sequence or UID set as sorted, merged, inclusive ranges (`*`
/// resolved): a message's membership is a binary search, so a set of many
/// ranges over a big mailbox costs N log R, not N × R.
pub struct Ranges(Vec<(u32, u32)>);

impl Ranges {
    /// `largest`: what `*` stands for (the last sequence number or UID).
    pub fn new(set: &imap_codec::imap_types::sequence::SequenceSet, largest: u32) -> Ranges {
        use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
        let value = |v: &SeqOrUid| match v {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => largest,
        };
        let mut ranges: Vec<(u32, u32)> = set
            .0
            .as_ref()
            .iter()
            .map(|seq| {
                let (a, b) = match seq {
                    Sequence::Single(v) => (value(v), value(v)),
                    Sequence::Range(a, b) => (value(a), value(b)),
                };
                (a.min(b), a.max(b))
            })
            // `*` in an empty mailbox names nothing.
            .filter(|&(_, hi)| hi != 0)
            .map(|(lo, hi)| (lo.max(1), hi))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ranges(merged)
    }

    pub fn contains(&self, n: u32) -> bool {
        let i = self.0.partition_point(|&(lo, _)| lo <= n);
        i > 0 && n <= self.0[i - 1].1
    }

    /// The highest number named.
    fn max(&self) -> Option<u32> {
        self.0.last().map(|&(_, hi)| hi)
    }
}

/// Messages named by a sequence set, as (sequence number, UID), ascending.
/// RFC 3501 §6.4.8: UIDs not in the mailbox are ignored; `*` is the last
/// message. A sequence number beyond EXISTS is a client error (BAD).
pub fn resolve(
    mailbox: &Selected,
    set: &imap_codec::imap_types::sequence::SequenceSet,
    uid: bool,
) -> Result<Vec<(u32, u32)>, ImapError> {
    let largest = if uid { mailbox.uids.last().copied().unwrap_or(0) } else { mailbox.exists() };
    let ranges = Ranges::new(set, largest);
    if !uid && ranges.max().is_some_and(|hi| hi > largest) {
        return Err(ImapError::bad("Invalid sequence number"));
    }
    Ok(members(mailbox, &ranges, uid))
}

/// Messages named by a sequence set used as a SEARCH key, as (sequence
/// number, UID): there a number beyond EXISTS is no error, it simply
/// matches no message (RFC 3501 §6.4.4 `<sequence set>`: "messages with
/// message sequence numbers corresponding to the specified set").
pub fn search_members(
    mailbox: &Selected,
    set: &imap_codec::imap_types::sequence::SequenceSet,
    uid: bool,
) -> Vec<(u32, u32)> {
    let largest = if uid { mailbox.uids.last().copied().unwrap_or(0) } else { mailbox.exists() };
    members(mailbox, &Ranges::new(set, largest), uid)
}

fn members(mailbox: &Selected, ranges: &Ranges, uid: bool) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for (i, &u) in mailbox.uids.iter().enumerate() {
        let seq = i as u32 + 1;
        if ranges.contains(if uid { u } else { seq }) {
            out.push((seq, u));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Ranges;
    use imap_codec::imap_types::sequence::SequenceSet;

    fn ranges(set: &str, largest: u32) -> Ranges {
        Ranges::new(&SequenceSet::try_from(set).expect("sequence set"), largest)
    }

    #[test]
    fn ranges_merge_and_answer_membership() {
        let r = ranges("9:7,1,3,2,20:*,15,16", 30);
        assert_eq!(r.0, [(1, 3), (7, 9), (15, 16), (20, 30)]);
        let members: Vec<u32> = (0..=31).filter(|n| r.contains(*n)).collect();
        assert_eq!(members, [1, 2, 3, 7, 8, 9, 15, 16, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]);
        assert!(ranges("*", 0).0.is_empty(), "`*` in an empty mailbox names nothing");
        assert_eq!(ranges("4294967295,1:4294967294", 5).0, [(1, u32::MAX)]);
    }
}
