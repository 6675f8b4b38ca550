//! COPY (RFC 3501 §6.4.7) and MOVE (RFC 6851), with COPYUID (RFC 4315 §3).

use std::num::NonZeroU32;

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::Code;
use imap_codec::imap_types::sequence::SequenceSet;
use mailfleet_proto::storage::v1 as pb;

use super::mailbox::name_arg;
use super::select::{need_writable, report_expunges, resolve};
use crate::codec::{self, StatusKindArg};
use crate::session::{CmdResult, Done, ImapError, Out, Session};
use crate::store::{MailStore, StoreError, uid_ranges};

/// UIDs in the given order, runs of consecutive ones as ranges (the
/// COPYUID sets are paired element by element, so order matters).
fn uid_set(uids: &[u32]) -> Option<UidSet> {
    let mut out: Vec<UidElement> = Vec::new();
    for &u in uids {
        let u = NonZeroU32::new(u)?;
        match out.last_mut() {
            Some(UidElement::Single(a)) if a.get().checked_add(1) == Some(u.get()) => {
                *out.last_mut()? = UidElement::Range(*a, u)
            }
            Some(UidElement::Range(a, b)) if b.get().checked_add(1) == Some(u.get()) => {
                *out.last_mut()? = UidElement::Range(*a, u)
            }
            _ => out.push(UidElement::Single(u)),
        }
    }
    Vec1::try_from(out).ok().map(UidSet)
}

fn copy_uid(resp: &pb::CopyResponse) -> Option<Code<'static>> {
    Some(Code::CopyUid {
        uid_validity: NonZeroU32::new(resp.destination_uid_validity)?,
        source: uid_set(&resp.source_uids)?,
        destination: uid_set(&resp.destination_uids)?,
    })
}

pub async fn copy<S: MailStore>(
    s: &mut Session<S>,
    set: SequenceSet,
    destination: Mailbox<'static>,
    uid: bool,
    is_move: bool,
    out: &mut Out,
) -> CmdResult {
    let store = s.store.clone();
    let qresync = s.qresync;
    let utf8 = s.utf8;
    let (account, mailbox) = s.need_selected()?;
    if is_move {
        need_writable(mailbox)?;
    }
    let destination = name_arg(&destination, utf8)?;
    let targets: Vec<u32> = resolve(mailbox, &set, uid)?.into_iter().map(|(_, u)| u).collect();
    let verb = if is_move { "MOVE" } else { "COPY" };
    if targets.is_empty() {
        return Done::ok(format!("{verb} completed"));
    }
    let req = pb::CopyRequest {
        account_id: account.id,
        mailbox_id: mailbox.id,
        uids: uid_ranges(&targets),
        destination,
        r#move: is_move,
    };
    let done = store.copy(req).await.map_err(|e| match e {
        // RFC 3501 §6.4.7: [TRYCREATE] when the destination does not exist.
        StoreError::NotFound(_) => ImapError::no(Some("TRYCREATE"), "No such mailbox"),
        other => other.into(),
    })?;
    let code = copy_uid(&done);
    if is_move {
        // RFC 6851 §4.3/§4.4: COPYUID in an untagged OK before the EXPUNGEs.
        if let Some(code) = code {
            out.push(codec::status(None, StatusKindArg::Ok, Some(code), "Moved UIDs"));
        }
        report_expunges(mailbox, &done.source_uids, qresync, out);
        return Done::ok("MOVE completed");
    }
    match code {
        Some(code) => Done::with_code(code, "COPY completed"),
        None => Done::ok("COPY completed"),
    }
}
