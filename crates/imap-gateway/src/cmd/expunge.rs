//! EXPUNGE (RFC 3501 §6.4.3) and UID EXPUNGE (RFC 4315 §2.1).

use imap_codec::imap_types::sequence::SequenceSet;
use mailfleet_proto::storage::v1 as pb;

use super::select::{need_writable, report_expunges, resolve};
use crate::session::{CmdResult, Done, Out, Session};
use crate::store::{MailStore, uid_ranges};

pub async fn expunge<S: MailStore>(s: &mut Session<S>, uid_set: Option<SequenceSet>, out: &mut Out) -> CmdResult {
    let store = s.store.clone();
    let qresync = s.qresync;
    let (account, mailbox) = s.need_selected()?;
    need_writable(mailbox)?;
    let uids = match &uid_set {
        Some(set) => {
            let targets: Vec<u32> = resolve(mailbox, set, true)?.into_iter().map(|(_, u)| u).collect();
            if targets.is_empty() {
                return Done::ok("UID EXPUNGE completed");
            }
            uid_ranges(&targets)
        }
        None => vec![],
    };
    let req = pb::ExpungeRequest { account_id: account.id, mailbox_id: mailbox.id, uids, ignore_deleted_flag: false };
    let done = store.expunge(req).await?;
    report_expunges(mailbox, &done.expunged_uids, qresync, out);
    Done::ok("EXPUNGE completed")
}
