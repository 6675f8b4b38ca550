//! LIST (RFC 3501 §6.3.8) with LIST-EXTENDED (RFC 5258): selection options
//! SUBSCRIBED, REMOTE, RECURSIVEMATCH and SPECIAL-USE (RFC 6154 §5.1),
//! return options SUBSCRIBED, CHILDREN, SPECIAL-USE and STATUS (RFC 5819),
//! several patterns, and CHILDINFO extended data.

use std::collections::{BTreeMap, BTreeSet};

use imap_codec::imap_types::core::QuotedChar;
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Data, Response};
use mailfleet_proto::storage::v1 as pb;

use super::mailbox::{DELIMITER, attr, has_children, status_items};
use super::wildcard::Pattern;
use crate::codec::ext::ListCommand;
use crate::codec::{self, wire_mailbox};
use crate::session::{CmdResult, Done, Out, Session};
use crate::store::MailStore;

/// One name in the answer.
#[derive(Debug, Default)]
struct Entry {
    /// Listed only because descendants match the selection (RFC 5258 §3.5,
    /// RECURSIVEMATCH): CHILDINFO says why.
    childinfo: bool,
}

/// `name` and each of its ancestors ("a/b/c" → "a", "a/b").
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices(DELIMITER).map(move |(i, _)| &name[..i])
}

pub async fn list<S: MailStore>(s: &mut Session<S>, cmd: ListCommand, out: &mut Out) -> CmdResult {
    let account = s.need_auth()?;
    let utf8 = s.utf8;
    // Modified UTF-7 is ASCII only: 8-bit text is UTF-8 (RFC 6855 §3).
    // RFC 3501 §9: text that is not valid modified UTF-7 is still a valid
    // reference or pattern; it names no mailbox (names are always sent in
    // valid modified UTF-7), so it matches nothing rather than being BAD.
    let decode = |raw: &str| -> Option<String> {
        if utf8 || !raw.is_ascii() { Some(raw.to_string()) } else { codec::decode_mutf7(raw).ok() }
    };
    let reference = if cmd.reference.eq_ignore_ascii_case("INBOX") {
        "INBOX".into()
    } else {
        match decode(&cmd.reference) {
            Some(reference) => reference,
            None => return Done::ok("LIST completed"),
        }
    };
    let delimiter = Some(QuotedChar::unvalidated(DELIMITER));
    if matches!(cmd.patterns.as_slice(), [p] if p.is_empty()) {
        // RFC 3501 §6.3.8 / RFC 9051 §6.3.9: an empty pattern asks for the
        // delimiter and root.
        out.push(Response::Data(Data::List {
            items: vec![FlagNameAttribute::Noselect],
            delimiter,
            mailbox: Mailbox::try_from("").unwrap_or(Mailbox::Inbox),
        }));
        return Done::ok("LIST completed");
    }
    // RFC 5258 §3: the reference is prepended to each pattern; an empty
    // pattern in a list matches nothing.
    let mut patterns = Vec::new();
    let mut wildcard_percent = false;
    for p in cmd.patterns.iter().filter(|p| !p.is_empty()) {
        let Some(pattern) = decode(p) else { continue };
        let full = format!("{reference}{pattern}");
        wildcard_percent |= full.contains('%');
        patterns.push(Pattern::new(&full));
    }
    let listing = s.store.list_mailboxes(account.id, false).await?;
    let existing: BTreeMap<&str, &pb::MailboxInfo> = listing.mailboxes.iter().map(|m| (m.name.as_str(), m)).collect();
    let subscribed: BTreeSet<&str> = listing.subscriptions.iter().map(String::as_str).collect();
    let matching = |name: &str| patterns.iter().any(|p| p.matches(name));
    // RFC 5258 §3.1 / RFC 6154 §5.1: what the selection options keep.
    let selected = |name: &str| {
        (!cmd.select_subscribed || subscribed.contains(name))
            && (!cmd.select_special_use || existing.get(name).is_some_and(|m| !m.special_use.is_empty()))
            && (cmd.select_subscribed || existing.contains_key(name))
    };
    let base: BTreeSet<&str> =
        if cmd.select_subscribed { subscribed.iter().copied().collect() } else { existing.keys().copied().collect() };
    let filtering = cmd.select_subscribed || cmd.select_special_use;
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for name in base.iter().copied().filter(|n| selected(n)) {
        let listed = matching(name);
        if listed {
            entries.entry(name.to_string()).or_default();
        }
        for parent in ancestors(name) {
            if !matching(parent) || selected(parent) {
                continue;
            }
            if cmd.select_recursive {
                // RFC 5258 §3.5: a parent of a selected mailbox is listed
                // with CHILDINFO when only its descendants qualify, to tell
                // of a descendant the pattern hides; one the pattern
                // matches is listed itself and needs no CHILDINFO.
                if !listed {
                    entries.entry(parent.to_string()).or_default().childinfo = true;
                }
            } else if !filtering && wildcard_percent {
                // RFC 3501 §6.3.8: with "%", a parent that is not a mailbox
                // is listed so the client can descend.
                entries.entry(parent.to_string()).or_default();
            }
        }
    }
    let names: BTreeSet<&str> = existing.keys().copied().collect();
    let has_children = |name: &str| has_children(&names, name);
    let show_subscribed = cmd.return_subscribed || cmd.select_subscribed;
    for (name, entry) in entries {
        let info = existing.get(name.as_str()).copied();
        let mut items = Vec::new();
        match info {
            Some(info) => {
                // RFC 6154 §2: special-use attributes.
                items.extend(info.special_use.iter().filter_map(|u| attr(u.trim_start_matches('\\'))));
            }
            // RFC 5258 §3.4: \NonExistent (which implies \Noselect) in
            // extended answers; RFC 3501 placeholders are \Noselect.
            None if cmd.extended => items.extend(attr("NonExistent")),
            None => items.push(FlagNameAttribute::Noselect),
        }
        // RFC 3348 / RFC 5258 §4: CHILDREN is always answered here.
        if info.is_some() || has_children(&name) {
            items.extend(attr(if has_children(&name) { "HasChildren" } else { "HasNoChildren" }));
        }
        if show_subscribed && subscribed.contains(name.as_str()) {
            items.extend(attr("Subscribed"));
        }
        let line = Response::Data(Data::List { items, delimiter, mailbox: wire_mailbox(&name, utf8) });
        if entry.childinfo {
            // RFC 5258 §3.5: `mbox-list-extended = "(" "CHILDINFO" SP "(" "SUBSCRIBED" ")" ")"`.
            let mut bytes = codec::encode(&line);
            bytes.truncate(bytes.len().saturating_sub(2));
            bytes.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
            out.push_raw(bytes);
        } else {
            out.push(line);
        }
        // RFC 5819 §2: STATUS follows the LIST of each selectable mailbox;
        // a mailbox whose status cannot be read is simply left out.
        if let (Some(names), Some(info)) = (&cmd.return_status, info) {
            match s.store.get_mailbox(account.id, &info.name, false).await {
                Ok(full) => match status_items(s, &account, &full, names).await {
                    Ok(items) => out.push(Response::Data(Data::Status {
                        mailbox: wire_mailbox(&full.name, utf8),
                        items: items.into(),
                    })),
                    Err(e) => tracing::debug!(error = %e, "LIST-STATUS item failed"),
                },
                Err(e) => tracing::debug!(error = %e, "LIST-STATUS mailbox failed"),
            }
        }
        if !out.flush(false).await {
            break;
        }
    }
    Done::ok("LIST completed")
}

#[cfg(test)]
mod tests {
    use super::ancestors;

    #[test]
    fn ancestors_of_a_name() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a", "a/b"]);
        assert!(ancestors("a").next().is_none());
    }
}
