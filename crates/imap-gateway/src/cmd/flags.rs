//! STORE and UID STORE (RFC 3501 §6.4.6).

use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::sequence::SequenceSet;
use mailfleet_proto::storage::v1 as pb;
use pb::store_flags_request::Operation;

use super::select::{fetch_flags, need_writable, resolve};
use crate::session::{CmdResult, Done, Session};
use crate::store::{MailStore, uid_ranges};

pub async fn store<S: MailStore>(
    s: &mut Session<S>,
    set: SequenceSet,
    kind: StoreType,
    response: StoreResponse,
    flags: Vec<Flag<'static>>,
    uid: bool,
    out: &mut Vec<Response<'static>>,
) -> CmdResult {
    let store = s.store.clone();
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
        unchanged_since: None,
    };
    let stored = store.store_flags(req).await?;
    // Our own change needs no second report from the after-command sync.
    // todo(RFC 7162): track modseqs per message so a concurrent change made
    // elsewhere in the same instant is not folded into ours.
    mailbox.highest_modseq = mailbox.highest_modseq.max(stored.highest_modseq);
    if response == StoreResponse::Answer {
        // RFC 3501 §6.4.6: the new flags of every message, changed or not.
        let req = pb::ListMessagesRequest {
            account_id: account.id,
            mailbox_id: mailbox.id,
            uids: uid_ranges(&uids),
            ..Default::default()
        };
        for m in store.list_messages(req).await? {
            let Some(seq) = mailbox.seq_of(m.uid) else { continue };
            let mut items = vec![MessageDataItem::Flags(fetch_flags(&m.flags, mailbox.recent.contains(&m.uid)))];
            if uid {
                // RFC 3501 §6.4.8: UID commands always report the UID.
                items.push(MessageDataItem::Uid(std::num::NonZeroU32::new(m.uid).unwrap_or(std::num::NonZeroU32::MIN)));
            }
            if let Ok(data) = Data::fetch(seq, items) {
                out.push(Response::Data(data));
            }
        }
    }
    Done::ok("STORE completed")
}
