//! STORE and UID STORE (RFC 3501 §6.4.6), with CONDSTORE's UNCHANGEDSINCE
//! (RFC 7162 §3.1.3).

use imap_codec::imap_types::command::StoreModifier;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::response::{Code, Data, Response};
use imap_codec::imap_types::sequence::SequenceSet;
use mailfleet_proto::storage::v1 as pb;
use pb::store_flags_request::Operation;

use super::select::{announce_keywords, flag_items, need_writable, resolve, sequence_set};
use crate::session::{CmdResult, Done, Out, Session};
use crate::store::{MailStore, uid_ranges};

#[allow(clippy::too_many_arguments)] // one per STORE argument (RFC 3501 §6.4.6, RFC 7162 §3.1.3)
pub async fn store<S: MailStore>(
    s: &mut Session<S>,
    set: SequenceSet,
    kind: StoreType,
    response: StoreResponse,
    flags: Vec<Flag<'static>>,
    uid: bool,
    modifiers: Vec<StoreModifier>,
    out: &mut Out,
) -> CmdResult {
    let store = s.store.clone();
    let mut unchanged_since = None;
    for m in &modifiers {
        let StoreModifier::UnchangedSince(n) = m;
        unchanged_since = Some(*n);
        // RFC 7162 §3.1: UNCHANGEDSINCE enables CONDSTORE.
        s.condstore = true;
    }
    let condstore = s.condstore;
    let (account, mailbox) = s.need_selected()?;
    need_writable(mailbox)?;
    let targets = resolve(mailbox, &set, uid)?;
    if targets.is_empty() {
        return Done::ok("STORE completed");
    }
    let uids: Vec<u32> = targets.iter().map(|(_, u)| *u).collect();
    let operation = match kind {
        StoreType::Add => Operation::Add,
        StoreType::Remove => Operation::Remove,
        StoreType::Replace => Operation::Replace,
    };
    let req = pb::StoreFlagsRequest {
        account_id: account.id,
        mailbox_id: mailbox.id,
        uids: uid_ranges(&uids),
        operation: operation as i32,
        flags: flags.iter().map(|f| f.to_string()).collect(),
        unchanged_since,
    };
    let stored = store.store_flags(req).await?;
    // Keywords this STORE added are in the mailbox now, answered or not.
    if !matches!(kind, StoreType::Remove) {
        let added: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        announce_keywords(mailbox, &added, out);
    }
    // Our own change is answered here (or not wanted: .SILENT); the sync
    // after the command skips exactly these MODSEQs, nothing else.
    mailbox.own_changes.extend(stored.updated.iter().map(|m| (m.uid, m.modseq)));
    if response == StoreResponse::Answer {
        // RFC 3501 §6.4.6: the new flags of every message, changed or not.
        let req = pb::ListMessagesRequest {
            account_id: account.id,
            mailbox_id: mailbox.id,
            uids: uid_ranges(&uids),
            ..Default::default()
        };
        let metas = store.list_messages(req).await?;
        announce_keywords(mailbox, metas.iter().flat_map(|m| &m.flags), out);
        for m in metas {
            let Some(seq) = mailbox.seq_of(m.uid) else { continue };
            if stored.modified.contains(&m.uid) {
                continue;
            }
            let items = flag_items(&m, mailbox.recent.contains(&m.uid), uid, condstore);
            if let Ok(data) = Data::fetch(seq, items) {
                out.push(Response::Data(data));
            }
        }
    } else if condstore {
        // RFC 7162 §3.1.3: even .SILENT reports the new MODSEQ.
        for m in &stored.updated {
            let (Some(seq), Some(modseq)) = (mailbox.seq_of(m.uid), std::num::NonZeroU64::new(m.modseq)) else {
                continue;
            };
            let mut items = Vec::new();
            if uid && let Some(u) = std::num::NonZeroU32::new(m.uid) {
                items.push(MessageDataItem::Uid(u));
            }
            items.push(MessageDataItem::ModSeq(modseq));
            if let Ok(data) = Data::fetch(seq, items) {
                out.push(Response::Data(data));
            }
        }
    }
    if !stored.modified.is_empty() {
        // RFC 7162 §3.1.3: [MODIFIED set] names what failed UNCHANGEDSINCE,
        // as UIDs for UID STORE, sequence numbers otherwise.
        let numbers: Vec<u32> = if uid {
            stored.modified.clone()
        } else {
            stored.modified.iter().filter_map(|u| mailbox.seq_of(*u)).collect()
        };
        if let Some(set) = sequence_set(&numbers) {
            return Done::with_code(Code::Modified(set), "Conditional STORE failed for some messages");
        }
    }
    Done::ok("STORE completed")
}
