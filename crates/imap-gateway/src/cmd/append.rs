//! APPEND (RFC 3501 §6.3.11) with UIDPLUS's APPENDUID (RFC 4315 §3).

use std::num::NonZeroU32;

use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::Code;
use mailfleet_proto::storage::v1 as pb;

use super::mailbox::name_arg;
use crate::session::{CmdResult, Done, ImapError, Session};
use crate::store::{MailStore, StoreError};

pub async fn append<S: MailStore>(
    s: &mut Session<S>,
    mailbox: Mailbox<'static>,
    flags: Vec<Flag<'static>>,
    date: Option<DateTime>,
    message: LiteralOrLiteral8<'static>,
) -> CmdResult {
    let bytes = match message {
        LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
        // RFC 3516 §4.4: binary content in a literal8; its binary parts
        // are stored base64-encoded, every octet kept (cmd/binary_append.rs).
        LiteralOrLiteral8::Literal8(l) => {
            super::binary_append::encode_binary_parts(&l.data).unwrap_or_else(|| l.data.into_owned())
        }
    };
    append_bytes(s, mailbox, flags, date, bytes).await
}

/// Store one message (plain APPEND, or RFC 6855 §4 `UTF8 (~{n}…)`, whose
/// 8-bit headers storage keeps as they are).
pub async fn append_bytes<S: MailStore>(
    s: &mut Session<S>,
    mailbox: Mailbox<'static>,
    flags: Vec<Flag<'static>>,
    date: Option<DateTime>,
    bytes: Vec<u8>,
) -> CmdResult {
    let account = s.need_auth()?;
    let name = name_arg(&mailbox, s.utf8)?;
    let header = pb::AppendHeader {
        account_id: account.id,
        mailbox: name,
        flags: flags.iter().map(|f| f.to_string()).collect(),
        internal_date: date.map(|d| prost_types::Timestamp { seconds: d.as_ref().timestamp(), nanos: 0 }),
    };
    // Architecture: the tagged OK means the message is durable in storage.
    let stored = s.store.append(header, bytes).await.map_err(|e| match e {
        // RFC 3501 §6.3.11: a missing target mailbox gets [TRYCREATE].
        StoreError::NotFound(_) => ImapError::no(Some("TRYCREATE"), "No such mailbox"),
        other => other.into(),
    })?;
    match (NonZeroU32::new(stored.uid_validity), NonZeroU32::new(stored.uid)) {
        (Some(uid_validity), Some(uid)) => Done::with_code(Code::AppendUid { uid_validity, uid }, "APPEND completed"),
        _ => Done::ok("APPEND completed"),
    }
}
