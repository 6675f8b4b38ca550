//! CONDSTORE/QRESYNC (RFC 7162 §3.1.4, §3.2.5): what changed after a MODSEQ.
//! IMAP gateways ask this after every command, so it is one statement (one
//! round trip, one snapshot) and cheap when nothing changed.

use mailfleet_proto::storage::v1 as pb;
use sqlx::Row;

use super::{u32_of, u64_of};
use crate::Store;
use crate::error::{StorageError, StorageResult};

/// Rows of the answer: a changed message, an expunged UID, the mailbox's
/// HIGHESTMODSEQ, a UID claimed as \Recent.
const CHANGED: i16 = 0;
const VANISHED: i16 = 1;
const HIGHEST: i16 = 2;
const RECENT: i16 = 3;

/// `$1` mailbox, `$2` account, `$3` since, `$4` include vanished, `$5` claim
/// \Recent. The claim moves `recent_floor` up to the UIDNEXT this snapshot
/// sees (never past messages it cannot see), from the floor as it is after
/// the row lock (another session may have claimed some meanwhile); the row
/// is locked only when there is something to claim.
///
/// A claim commits without waiting for the WAL flush (`lazy`): an idling
/// session claims every new message this way, and what a crash could undo
/// is only that a message is \Recent once more for the next session
/// (RFC 3501 §2.3.2 asks no more; IMAP4rev2 dropped \Recent).
const CHANGES: &str = "
WITH mb AS (
    SELECT highest_modseq, uid_next FROM mailboxes WHERE id = $1 AND account_id = $2
), lazy AS (
    SELECT set_config('synchronous_commit', 'off', true)
), claim AS (
    UPDATE mailboxes m SET recent_floor = mb.uid_next
    FROM mb, lazy, (SELECT id, recent_floor FROM mailboxes
              WHERE $5 AND id = $1 AND account_id = $2 AND recent_floor < uid_next FOR UPDATE) old
    WHERE m.id = old.id AND old.recent_floor < mb.uid_next
    RETURNING old.recent_floor AS lo, mb.uid_next AS hi
)
SELECT 2::int2 AS kind, 0::int8 AS uid, NULL::text[] AS flags, highest_modseq AS modseq FROM mb
UNION ALL
SELECT 0::int2, uid, flags, modseq FROM messages
    WHERE mailbox_id = $1 AND modseq > $3 AND EXISTS (SELECT 1 FROM mb WHERE highest_modseq > $3)
UNION ALL
SELECT 1::int2, uid, NULL, modseq FROM expunged
    WHERE $4 AND mailbox_id = $1 AND modseq > $3 AND EXISTS (SELECT 1 FROM mb WHERE highest_modseq > $3)
UNION ALL
SELECT 3::int2, uid, NULL, 0 FROM messages, claim
    WHERE mailbox_id = $1 AND uid >= claim.lo AND uid < claim.hi
";

impl Store {
    pub(crate) async fn changes(&self, req: &pb::ChangesRequest) -> StorageResult<pb::ChangesResponse> {
        let since = i64::try_from(req.since_modseq).unwrap_or(i64::MAX);
        let rows = sqlx::query(CHANGES)
            .bind(req.mailbox_id)
            .bind(req.account_id)
            .bind(since)
            .bind(req.include_vanished)
            .bind(req.claim_recent)
            .fetch_all(&self.pool)
            .await?;
        let mut out = pb::ChangesResponse::default();
        let mut found = false;
        for row in rows {
            let uid = u32_of(row.get("uid"));
            match row.get::<i16, _>("kind") {
                CHANGED => out.changed.push(pb::MessageFlags {
                    uid,
                    flags: row.get("flags"),
                    modseq: u64_of(row.get("modseq")),
                }),
                VANISHED => out.vanished.push(uid),
                HIGHEST => {
                    found = true;
                    out.highest_modseq = u64_of(row.get("modseq"));
                }
                RECENT => out.recent_uids.push(uid),
                _ => {}
            }
        }
        if !found {
            return Err(StorageError::NotFound(format!("no mailbox {}", req.mailbox_id)));
        }
        // UNION ALL keeps no order: the protocol promises UID order.
        out.changed.sort_unstable_by_key(|m| m.uid);
        out.vanished.sort_unstable();
        out.recent_uids.sort_unstable();
        Ok(out)
    }
}
