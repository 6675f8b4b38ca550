//! Commands valid in any state (RFC 3501 §6.1) and ID (RFC 2971).

use imap_codec::imap_types::core::{IString, NString};
use imap_codec::imap_types::response::{Data, Response};

use crate::codec;
use crate::session::{CmdResult, Done, ImapError, Out, Session, State, Then, capability_data};
use crate::store::MailStore;

/// RFC 3501 §6.1.1.
pub fn capability<S: MailStore>(s: &Session<S>, out: &mut Out) -> CmdResult {
    out.push(capability_data(s.capabilities()));
    Done::ok("CAPABILITY completed")
}

/// RFC 3501 §6.1.2 NOOP and §6.4.1 CHECK: the pending updates are sent by
/// the session after every command, so nothing else to do.
pub fn noop<S: MailStore>(_s: &Session<S>) -> CmdResult {
    Done::ok("NOOP completed")
}

/// RFC 3501 §6.1.3: BYE, then the tagged OK, then close.
pub fn logout<S: MailStore>(s: &mut Session<S>, out: &mut Out) -> CmdResult {
    out.push(codec::bye(None, "Mailfleet IMAP logging out"));
    s.state = State::Logout;
    Done::then(Then::Close, "LOGOUT completed")
}

/// RFC 4978 §3: after the OK, both directions are raw DEFLATE (the driver
/// switches); DEFLATE is the only algorithm, so the argument needs no check.
pub fn compress<S: MailStore>(s: &mut Session<S>) -> CmdResult {
    s.need_auth()?;
    if s.compressed {
        return Err(ImapError::no(Some("COMPRESSIONACTIVE"), "Compression is already active"));
    }
    s.compressed = true;
    Done::then(Then::Compress, "DEFLATE active")
}

/// RFC 2971 §3.1: the server's identification.
pub fn id(out: &mut Out) -> CmdResult {
    let pair = |k: &'static str, v: &'static str| -> Option<(IString<'static>, NString<'static>)> {
        Some((IString::try_from(k).ok()?, NString(Some(IString::try_from(v).ok()?))))
    };
    let params =
        [pair("name", "Mailfleet"), pair("version", env!("CARGO_PKG_VERSION"))].into_iter().flatten().collect();
    out.push(Response::Data(Data::Id { parameters: Some(params) }));
    Done::ok("ID completed")
}
