//! Flags: validation and normalisation (RFC 3501 §2.3.2) and STORE with
//! CONDSTORE's UNCHANGEDSINCE (RFC 7162 §3.1.3).

use std::collections::BTreeMap;

use mailfleet_proto::storage::v1 as pb;
use pb::mail_event::Kind;
use pb::store_flags_request::Operation;
use sqlx::Row;

use super::{UidSet, bump_modseq, mailbox_by_id, u32_of, u64_of};
use crate::Store;
use crate::error::{StorageError, StorageResult};

/// RFC 3501 §2.3.2 system flags a client may set, in our canonical order.
/// `\Recent` is session state (see `recent_floor`), never stored.
pub const SYSTEM_FLAGS: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"];

const MAX_FLAG_LEN: usize = 255;

/// RFC 3501 §9: `flag-keyword = atom`; ATOM-CHAR is any CHAR except
/// atom-specials `( ) { SP CTL % * " \ ]`.
fn is_atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// One flag, validated: system flags case-insensitively mapped to their
/// canonical spelling, keywords kept as given.
pub fn normalize_flag(flag: &str) -> StorageResult<String> {
    if let Some(name) = flag.strip_prefix('\\') {
        if let Some(sys) = SYSTEM_FLAGS.iter().find(|s| s[1..].eq_ignore_ascii_case(name)) {
            return Ok((*sys).to_string());
        }
        if name.eq_ignore_ascii_case("Recent") {
            return Err(StorageError::InvalidArgument("\\Recent cannot be stored (RFC 3501 §2.3.2)".into()));
        }
        return Err(StorageError::InvalidArgument(format!("unknown system flag {flag}")));
    }
    if flag.is_empty() || flag.len() > MAX_FLAG_LEN || !flag.bytes().all(is_atom_char) {
        return Err(StorageError::InvalidArgument(format!("malformed flag keyword {flag:?}")));
    }
    Ok(flag.to_string())
}

/// Validate a flag list; duplicates (case-insensitive) are dropped and the
/// result is in canonical order: system flags first, then keywords as given.
pub fn normalize_flags(flags: &[String]) -> StorageResult<Vec<String>> {
    let mut out = Vec::with_capacity(flags.len());
    for f in flags {
        out.push(normalize_flag(f)?);
    }
    Ok(canonical(out))
}

/// Deduplicate (case-insensitively) and order already validated flags.
fn canonical(flags: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(flags.len());
    for sys in SYSTEM_FLAGS {
        if flags.iter().any(|f| f == sys) {
            out.push(sys.to_string());
        }
    }
    for f in flags {
        if !f.starts_with('\\') && !out.iter().any(|o| o.eq_ignore_ascii_case(&f)) {
            out.push(f);
        }
    }
    out
}

fn contains_flag(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

/// The flags after applying `op` with `given` to `current`.
fn apply(op: Operation, current: &[String], given: &[String]) -> Vec<String> {
    match op {
        Operation::Add => {
            let mut v = current.to_vec();
            v.extend(given.iter().filter(|g| !contains_flag(current, g)).cloned());
            canonical(v)
        }
        Operation::Remove => canonical(current.iter().filter(|c| !contains_flag(given, c)).cloned().collect()),
        Operation::Replace | Operation::Unspecified => given.to_vec(),
    }
}

fn same_flags(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|f| contains_flag(b, f))
}

impl Store {
    /// STORE / UID STORE. Only messages whose flags really change get the
    /// (one, shared) new MODSEQ; with UNCHANGEDSINCE, messages whose modseq is
    /// above it are reported in `modified` and left alone (RFC 7162 §3.1.3).
    pub(crate) async fn store_flags(&self, req: &pb::StoreFlagsRequest) -> StorageResult<pb::StoreFlagsResponse> {
        let op = match Operation::try_from(req.operation) {
            Ok(op @ (Operation::Add | Operation::Remove | Operation::Replace)) => op,
            _ => return Err(StorageError::InvalidArgument("operation must be ADD, REMOVE or REPLACE".into())),
        };
        let given = normalize_flags(&req.flags)?;
        let mut set = UidSet::parse(&req.uids)?;
        if set.is_empty() {
            return Err(StorageError::InvalidArgument("bad UID set: empty".into()));
        }
        let unchanged_since = req.unchanged_since.map(|v| i64::try_from(v).unwrap_or(i64::MAX));

        let mut tx = self.pool.begin().await?;
        // Flag-only change: the mailbox row lock alone serialises it.
        let mailbox = mailbox_by_id(&mut tx, req.account_id, req.mailbox_id, true).await?;
        let rows = set.select_messages(&mut tx, mailbox.id, "m.uid, m.flags, m.modseq", "").await?;

        let mut modified = Vec::new();
        let mut changes: Vec<(i64, Vec<String>)> = Vec::new();
        for row in &rows {
            let uid: i64 = row.get("uid");
            let modseq: i64 = row.get("modseq");
            let current: Vec<String> = row.get("flags");
            if unchanged_since.is_some_and(|u| modseq > u) {
                modified.push(u32_of(uid));
                continue;
            }
            let new = apply(op, &current, &given);
            if !same_flags(&new, &current) {
                changes.push((uid, new));
            }
        }

        let mut highest = mailbox.highest_modseq;
        let mut updated = Vec::with_capacity(changes.len());
        if !changes.is_empty() {
            let modseq = bump_modseq(&mut tx, mailbox.id).await?;
            highest = modseq;
            // One UPDATE per distinct resulting flag set (usually one or two).
            let mut groups: BTreeMap<Vec<String>, Vec<i64>> = BTreeMap::new();
            for (uid, flags) in &changes {
                groups.entry(flags.clone()).or_default().push(*uid);
            }
            for (flags, uids) in groups {
                sqlx::query("UPDATE messages SET flags = $3, modseq = $4 WHERE mailbox_id = $1 AND uid = ANY($2)")
                    .bind(mailbox.id)
                    .bind(&uids)
                    .bind(&flags)
                    .bind(modseq)
                    .execute(&mut *tx)
                    .await?;
            }
            updated = changes
                .into_iter()
                .map(|(uid, flags)| pb::MessageFlags { uid: u32_of(uid), flags, modseq: u64_of(modseq) })
                .collect();
        }
        tx.commit().await?;

        if !updated.is_empty() {
            let event = pb::FlagsChanged {
                mailbox_id: mailbox.id,
                changes: updated
                    .iter()
                    .map(|m| pb::FlagChange { uid: m.uid, flags: m.flags.clone(), modseq: m.modseq })
                    .collect(),
            };
            self.events.publish(req.account_id, u64_of(highest), Kind::Flags(event)).await;
        }
        Ok(pb::StoreFlagsResponse { updated, modified, highest_modseq: u64_of(highest) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn system_flags_normalise_and_keywords_validate() {
        assert_eq!(
            normalize_flags(&s(&["\\seen", "\\SEEN", "$Label1", "\\draft"])).unwrap(),
            s(&["\\Seen", "\\Draft", "$Label1"])
        );
        assert!(normalize_flag("\\Recent").is_err());
        assert!(normalize_flag("\\Important").is_err());
        assert!(normalize_flag("bad flag").is_err());
        assert!(normalize_flag("a]b").is_err());
        assert!(normalize_flag("").is_err());
        assert_eq!(normalize_flags(&s(&["Work", "work"])).unwrap(), s(&["Work"]));
    }

    #[test]
    fn add_remove_replace() {
        let cur = s(&["\\Seen", "Work"]);
        assert_eq!(apply(Operation::Add, &cur, &s(&["\\Flagged", "work"])), s(&["\\Seen", "\\Flagged", "Work"]));
        assert_eq!(apply(Operation::Remove, &cur, &s(&["WORK"])), s(&["\\Seen"]));
        assert_eq!(apply(Operation::Replace, &cur, &s(&["\\Deleted"])), s(&["\\Deleted"]));
        assert!(same_flags(&apply(Operation::Add, &cur, &s(&["\\Seen"])), &cur));
    }
}
