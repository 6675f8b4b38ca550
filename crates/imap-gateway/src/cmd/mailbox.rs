//! Authenticated-state mailbox commands (RFC 3501 §6.3): LIST, LSUB, STATUS,
//! CREATE, DELETE, RENAME, (UN)SUBSCRIBE; NAMESPACE (RFC 2342), ENABLE (RFC 5161).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use imap_codec::imap_types::core::{Atom, IString, QuotedChar, Vec1};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::extensions::namespace::Namespace;
use imap_codec::imap_types::extensions::utf8::Utf8Kind;
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};

use super::wildcard::Pattern;
use crate::codec::{self, mailbox_name, wire_mailbox};
use crate::session::{CmdResult, Done, ImapError, Out, Session, State};
use crate::store::{MailStore, StoreError};

/// RFC 6154 §2 special-use attributes (storage accepts the same seven).
pub const SPECIAL_USE: [&str; 7] = ["\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"];

/// The single hierarchy delimiter (storage.proto: "/").
pub const DELIMITER: char = '/';

pub(crate) fn name_arg(mailbox: &Mailbox<'_>, utf8: bool) -> Result<String, ImapError> {
    // RFC 3501 §9: any astring is a valid mailbox argument, so a name that
    // is not valid modified UTF-7 (§5.1.3) is no syntax error (BAD): no
    // mailbox can have it, which is a NO.
    let name = mailbox_name(mailbox, utf8)
        .map_err(|_| ImapError::no(Some("NONEXISTENT"), "Mailbox name is not valid modified UTF-7"))?;
    // RFC 3501 §6.3.3: a trailing delimiter only says "I want children".
    Ok(name.trim_end_matches(DELIMITER).to_string())
}

pub(crate) fn attr(atom: &str) -> Option<FlagNameAttribute<'static>> {
    Atom::try_from(atom.to_string()).ok().map(FlagNameAttribute::from)
}

/// RFC 5161 §3.1: ENABLED lists what this command newly enabled:
/// CONDSTORE, QRESYNC (RFC 7162), UTF8=ACCEPT (RFC 6855 §3) and IMAP4rev2.
pub fn enable<S: MailStore>(s: &mut Session<S>, caps: Vec1<CapabilityEnable<'static>>, out: &mut Out) -> CmdResult {
    s.need_auth()?;
    let mut enabled = Vec::new();
    for cap in caps.into_iter() {
        if cap == CapabilityEnable::CondStore && !s.condstore {
            s.condstore = true;
            enabled.push(cap);
        } else if cap.to_string().eq_ignore_ascii_case("QRESYNC") && !s.qresync {
            // RFC 7162 §3.2.3: QRESYNC implies CONDSTORE.
            s.qresync = true;
            s.condstore = true;
            enabled.push(cap);
        } else if cap == CapabilityEnable::Utf8(Utf8Kind::Accept) && !s.utf8 {
            s.utf8 = true;
            enabled.push(cap);
        } else if cap.to_string().eq_ignore_ascii_case("IMAP4rev2") && !s.rev2 {
            // RFC 9051 §6.3.1; rev2 mailbox names are UTF-8 (§5.1).
            s.rev2 = true;
            s.utf8 = true;
            enabled.push(cap);
        }
    }
    out.push(Response::Data(Data::Enabled { capabilities: enabled }));
    Done::ok("ENABLE completed")
}

/// RFC 2342 §5: one personal namespace, no prefix, "/" delimiter.
pub fn namespace<S: MailStore>(s: &Session<S>, out: &mut Out) -> CmdResult {
    s.need_auth()?;
    let personal = Namespace {
        prefix: IString::try_from("").map_err(|_| ImapError::bad("namespace"))?,
        delimiter: Some(QuotedChar::unvalidated(DELIMITER)),
        extensions: vec![],
    };
    out.push(Response::Data(Data::Namespace { personal: vec![personal], other: vec![], shared: vec![] }));
    Done::ok("NAMESPACE completed")
}

/// RFC 3501 §6.3.9 LSUB (LIST, with RFC 5258, is in `cmd/list.rs`).
pub async fn list<S: MailStore>(
    s: &Session<S>,
    reference: Mailbox<'static>,
    wildcard: ListMailbox<'static>,
    lsub: bool,
    out: &mut Out,
) -> CmdResult {
    let account = s.need_auth()?;
    let verb = if lsub { "LSUB" } else { "LIST" };
    let reference = match &reference {
        Mailbox::Inbox => Ok("INBOX".to_string()),
        Mailbox::Other(o) => codec::decode_mutf7(&String::from_utf8_lossy(o.inner().as_ref())),
    };
    let raw = match &wildcard {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).to_string(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).to_string(),
    };
    // RFC 3501 §9: a reference or pattern that is not valid modified UTF-7
    // is still a valid argument; it names no mailbox (every name is sent
    // in valid modified UTF-7), so the answer is empty, not BAD.
    let (Ok(reference), Ok(pattern)) = (reference, codec::decode_mutf7(&raw)) else {
        return Done::ok(format!("{verb} completed"));
    };
    let delimiter = Some(QuotedChar::unvalidated(DELIMITER));
    if pattern.is_empty() && !lsub {
        // RFC 3501 §6.3.8: an empty pattern asks for the delimiter and root.
        out.push(Response::Data(Data::List {
            items: vec![FlagNameAttribute::Noselect],
            delimiter,
            mailbox: Mailbox::try_from("").unwrap_or(Mailbox::Inbox),
        }));
        return Done::ok("LIST completed");
    }
    let full = format!("{reference}{pattern}");
    let compiled = Pattern::new(&full);
    let listing = s.store.list_mailboxes(account.id, false).await?;

    // name → attributes; existing mailboxes first, then implied parents.
    let mut entries: BTreeMap<String, Vec<FlagNameAttribute<'static>>> = BTreeMap::new();
    let existing: BTreeSet<&str> = listing.mailboxes.iter().map(|m| m.name.as_str()).collect();
    let subscribed: BTreeSet<&str> = listing.subscriptions.iter().map(String::as_str).collect();
    let names: &BTreeSet<&str> = if lsub { &subscribed } else { &existing };
    for name in names {
        if compiled.matches(name) {
            let mut attrs = Vec::new();
            if let Some(info) = listing.mailboxes.iter().find(|m| m.name == *name) {
                // RFC 6154 §2: special-use attributes.
                attrs.extend(info.special_use.iter().filter_map(|u| attr(u.trim_start_matches('\\'))));
            } else {
                attrs.push(FlagNameAttribute::Noselect);
            }
            // RFC 3348 CHILDREN.
            attrs.extend(attr(if has_children(&existing, name) { "HasChildren" } else { "HasNoChildren" }));
            entries.insert(name.to_string(), attrs);
        }
        // RFC 3501 §6.3.8: with "%", a parent that is not itself a mailbox
        // is listed as \Noselect so the client can descend.
        let mut parent = String::new();
        for segment in
            name.split(DELIMITER).collect::<Vec<_>>().split_last().map(|(_, p)| p.to_vec()).unwrap_or_default()
        {
            if !parent.is_empty() {
                parent.push(DELIMITER);
            }
            parent.push_str(segment);
            if full.contains('%') && !names.contains(parent.as_str()) && compiled.matches(&parent) {
                let mut attrs = vec![FlagNameAttribute::Noselect];
                attrs.extend(attr("HasChildren"));
                entries.entry(parent.clone()).or_insert(attrs);
            }
        }
    }
    for (name, items) in entries {
        let mailbox = wire_mailbox(&name, s.utf8);
        out.push(Response::Data(if lsub {
            Data::Lsub { items, delimiter, mailbox }
        } else {
            Data::List { items, delimiter, mailbox }
        }));
    }
    Done::ok(format!("{verb} completed"))
}

/// RFC 9208 §4.2 STATUS DELETED / DELETED-STORAGE: how many messages,
/// and how many octets, carry \Deleted (what EXPUNGE would free).
async fn deleted<S: MailStore>(
    s: &Session<S>,
    account: &crate::store::Account,
    info: &mailfleet_proto::storage::v1::MailboxInfo,
    with_size: bool,
) -> Result<(u32, u64), ImapError> {
    use mailfleet_proto::storage::v1 as pb;
    let criteria = pb::SearchKey { key: Some(pb::search_key::Key::HasFlag("\\Deleted".into())) };
    let req = pb::SearchRequest { account_id: account.id, mailbox_id: info.id, criteria: Some(criteria) };
    let uids = s.store.search(req).await?.uids;
    let mut size = 0;
    if with_size && !uids.is_empty() {
        let req = pb::ListMessagesRequest {
            account_id: account.id,
            mailbox_id: info.id,
            uids: crate::store::uid_ranges(&uids),
            ..Default::default()
        };
        size = s.store.list_messages(req).await?.iter().map(|m| m.size).sum();
    }
    Ok((uids.len() as u32, size))
}

/// RFC 3501 §6.3.10.
pub async fn status<S: MailStore>(
    s: &mut Session<S>,
    mailbox: Mailbox<'static>,
    names: &[StatusDataItemName],
    out: &mut Out,
) -> CmdResult {
    let account = s.need_auth()?;
    let name = name_arg(&mailbox, s.utf8)?;
    let info = s.store.get_mailbox(account.id, &name, false).await?;
    let items = status_items(s, &account, &info, names).await?;
    out.push(Response::Data(Data::Status { mailbox: wire_mailbox(&info.name, s.utf8), items: items.into() }));
    Done::ok("STATUS completed")
}

/// The STATUS data items of one mailbox (RFC 3501 §6.3.10; also LIST-STATUS, RFC 5819).
pub(crate) async fn status_items<S: MailStore>(
    s: &mut Session<S>,
    account: &crate::store::Account,
    info: &mailfleet_proto::storage::v1::MailboxInfo,
    names: &[StatusDataItemName],
) -> Result<Vec<StatusDataItem>, ImapError> {
    let mut items = Vec::new();
    for n in names {
        items.push(match n {
            StatusDataItemName::Messages => StatusDataItem::Messages(info.messages),
            StatusDataItemName::Recent => StatusDataItem::Recent(info.recent),
            StatusDataItemName::UidNext => {
                StatusDataItem::UidNext(NonZeroU32::new(info.uid_next).unwrap_or(NonZeroU32::MIN))
            }
            StatusDataItemName::UidValidity => {
                StatusDataItem::UidValidity(NonZeroU32::new(info.uid_validity).unwrap_or(NonZeroU32::MIN))
            }
            StatusDataItemName::Unseen => StatusDataItem::Unseen(info.unseen),
            StatusDataItemName::Deleted => StatusDataItem::Deleted(deleted(s, account, info, false).await?.0),
            StatusDataItemName::DeletedStorage => {
                StatusDataItem::DeletedStorage(deleted(s, account, info, true).await?.1)
            }
            // RFC 8438: the mailbox's total size in octets.
            StatusDataItemName::Size => StatusDataItem::Size(info.size),
            StatusDataItemName::HighestModSeq => {
                // RFC 7162 §3.1.8: asking for it enables CONDSTORE.
                s.condstore = true;
                StatusDataItem::HighestModSeq(info.highest_modseq)
            }
        });
    }
    Ok(items)
}

/// RFC 3501 §6.3.3, with RFC 6154 §3 USE attributes.
pub async fn create<S: MailStore>(s: &Session<S>, mailbox: Mailbox<'static>, special_use: Vec<String>) -> CmdResult {
    let account = s.need_auth()?;
    let name = name_arg(&mailbox, s.utf8)?;
    if name == "INBOX" {
        return Err(ImapError::no(Some("ALREADYEXISTS"), "INBOX always exists"));
    }
    // RFC 3501 §5.1: "%" and "*" are LIST wildcards, not name characters.
    if name.is_empty() || name.contains(['%', '*']) {
        return Err(ImapError::no(Some("CANNOT"), "Invalid mailbox name"));
    }
    // RFC 6154 §3: an attribute the server does not know is [USEATTR].
    if let Some(unknown) = special_use.iter().find(|u| !SPECIAL_USE.contains(&u.as_str())) {
        return Err(ImapError::no(Some("USEATTR"), format!("Unknown special-use attribute {unknown}")));
    }
    s.store.create_mailbox(account.id, &name, &special_use).await.map_err(|e| match e {
        // Storage refuses what it cannot keep (e.g. a duplicate \All).
        StoreError::Invalid(m) if !special_use.is_empty() => ImapError::no(Some("USEATTR"), m),
        other => other.into(),
    })?;
    Done::ok("CREATE completed")
}

/// RFC 3501 §6.3.4.
pub async fn delete<S: MailStore>(s: &Session<S>, mailbox: Mailbox<'static>) -> CmdResult {
    let account = s.need_auth()?;
    let name = name_arg(&mailbox, s.utf8)?;
    if name == "INBOX" {
        return Err(ImapError::no(Some("CANNOT"), "INBOX cannot be deleted"));
    }
    if let State::Selected { mailbox, .. } = &s.state
        && mailbox.name == name
    {
        return Err(ImapError::no(Some("INUSE"), "Mailbox is selected; close it first"));
    }
    s.store.delete_mailbox(account.id, &name).await?;
    Done::ok("DELETE completed")
}

/// RFC 3501 §6.3.5.
pub async fn rename<S: MailStore>(s: &Session<S>, from: Mailbox<'static>, to: Mailbox<'static>) -> CmdResult {
    let account = s.need_auth()?;
    let (from, to) = (name_arg(&from, s.utf8)?, name_arg(&to, s.utf8)?);
    if to == "INBOX" {
        return Err(ImapError::no(Some("ALREADYEXISTS"), "INBOX always exists"));
    }
    s.store.rename_mailbox(account.id, &from, &to).await?;
    Done::ok("RENAME completed")
}

/// RFC 3501 §6.3.6/§6.3.7.
pub async fn subscribe<S: MailStore>(s: &Session<S>, mailbox: Mailbox<'static>, on: bool) -> CmdResult {
    let account = s.need_auth()?;
    let name = name_arg(&mailbox, s.utf8)?;
    match s.store.set_subscribed(account.id, &name, on).await {
        Ok(()) => {}
        // RFC 3501 §6.3.7: unsubscribing a name that is gone is fine.
        Err(StoreError::NotFound(_)) if !on => {}
        Err(e) => return Err(e.into()),
    }
    Done::ok(if on { "SUBSCRIBE completed" } else { "UNSUBSCRIBE completed" })
}

/// RFC 3348: whether `name` has a child among `names` (sorted: a look at
/// the first name after `name/`, not a scan of them all).
pub(crate) fn has_children(names: &BTreeSet<&str>, name: &str) -> bool {
    let prefix = format!("{name}{DELIMITER}");
    names.range(prefix.as_str()..).next().is_some_and(|n| n.starts_with(&prefix))
}
