//! QUOTA (RFC 9208): one quota root, "", holding the account's STORAGE
//! limit. Limits are set by the administrator (mailctl), not by SETQUOTA.

use imap_codec::imap_types::core::{AString, Vec1};
use imap_codec::imap_types::extensions::quota::{QuotaGet, Resource};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Data, Response};
use mailfleet_proto::storage::v1 as pb;

use super::mailbox::name_arg;
use crate::codec::wire_mailbox;
use crate::session::{CmdResult, Done, ImapError, Out, Session};
use crate::store::MailStore;

fn root() -> AString<'static> {
    AString::try_from("").unwrap_or_else(|_| AString::try_from("\"\"").expect("valid astring"))
}

/// `* QUOTA "" (STORAGE used limit)`, in units of 1024 octets (RFC 9208 §5.1).
fn quota_data(q: &pb::QuotaInfo) -> Option<Response<'static>> {
    let storage =
        QuotaGet { resource: Resource::Storage, usage: q.used_bytes.div_ceil(1024), limit: q.limit_bytes / 1024 };
    (q.limit_bytes > 0).then(|| Response::Data(Data::Quota { root: root(), quotas: Vec1::from(storage) }))
}

/// RFC 9208 §4.1.1.
pub async fn get_quota<S: MailStore>(s: &Session<S>, name: AString<'static>, out: &mut Out) -> CmdResult {
    let account = s.need_auth()?;
    if !name.as_ref().is_empty() {
        return Err(ImapError::no(Some("NONEXISTENT"), "No such quota root"));
    }
    let quota = s.store.get_quota(account.id).await?;
    match quota_data(&quota) {
        Some(data) => out.push(data),
        None => return Err(ImapError::no(Some("NONEXISTENT"), "No quota is set")),
    }
    Done::ok("GETQUOTA completed")
}

/// RFC 9208 §4.1.2: the roots of a mailbox and their quotas.
pub async fn get_quota_root<S: MailStore>(s: &Session<S>, mailbox: Mailbox<'static>, out: &mut Out) -> CmdResult {
    let account = s.need_auth()?;
    let name = name_arg(&mailbox, s.utf8)?;
    let info = s.store.get_mailbox(account.id, &name, false).await?;
    let quota = s.store.get_quota(account.id).await?;
    let data = quota_data(&quota);
    // An account without a limit has no quota root.
    let roots = if data.is_some() { vec![root()] } else { vec![] };
    out.push(Response::Data(Data::QuotaRoot { mailbox: wire_mailbox(&info.name, s.utf8), roots }));
    out.extend(data);
    Done::ok("GETQUOTAROOT completed")
}

/// RFC 9208 §4.1.3: not offered (no QUOTASET capability).
pub fn set_quota<S: MailStore>(s: &Session<S>) -> CmdResult {
    s.need_auth()?;
    Err(ImapError::no(Some("NOPERM"), "Quotas are set by the administrator"))
}
