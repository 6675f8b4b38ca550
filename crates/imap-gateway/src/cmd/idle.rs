//! IDLE (RFC 2177): `+ idling`, then untagged updates as they happen,
//! until the client sends DONE.

use imap_codec::imap_types::core::Tag;

use crate::codec;
use crate::session::{CmdResult, Done, ImapError, Out, Session, Then};
use crate::store::MailStore;

pub fn idle<S: MailStore>(s: &mut Session<S>, tag: &Tag<'static>, out: &mut Out) -> CmdResult {
    s.need_auth()?;
    if s.idle_tag.is_some() {
        return Err(ImapError::bad("Already idling"));
    }
    // RFC 2177 §3: a continuation request starts the idle period.
    out.push(codec::continuation("idling"));
    s.idle_tag = Some(tag.clone());
    Done::then(Then::Idle, "")
}
