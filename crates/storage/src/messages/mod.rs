//! Messages service: append, delivery, fetch, listing, flags, copy/move,
//! expunge, CONDSTORE/QRESYNC changes and search. One file per operation;
//! this module holds the helpers they share (mailbox locking, UID sets,
//! UID/MODSEQ allocation, row conversions).
//!
//! Locking order in every write transaction (avoids deadlocks): the blob row
//! of a new message (Append/Deliver pin it against the sweeper), then the
//! account row (only when sizes change: quota, used_bytes, message_count),
//! then mailbox rows in ascending id order. Transactions that lock two
//! mailboxes (copy/move, rename) always hold the account row first. Holding the mailbox row lock while
//! assigning `uid_next`/`highest_modseq` makes UIDs and MODSEQs strictly
//! ascending under concurrency (RFC 3501 §2.3.1.1, RFC 7162 §3).

mod append;
mod changes;
mod copy;
mod deliver;
mod expunge;
mod fetch;
pub(crate) mod flags;
mod list;
mod search;
mod sort;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use mailfleet_proto::storage::v1 as pb;
use pb::messages_server::Messages;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;
use tonic::{Request, Response, Status, Streaming};

use crate::Store;
use crate::error::{StorageError, StorageResult};

pub struct MessagesService(pub Arc<Store>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `UidRange.end` value standing for "*" (the largest UID in use).
pub const UID_STAR: u32 = u32::MAX;

/// Largest UID a mailbox can assign (UIDs are 32-bit, RFC 3501 §2.3.1.1).
const MAX_UID: i64 = u32::MAX as i64;

/// A mailbox row as read (possibly under `FOR UPDATE`).
#[derive(Debug, Clone)]
pub(crate) struct MailboxRow {
    pub id: i64,
    pub account_id: i64,
    pub name: String,
    pub special_use: Vec<String>,
    pub uid_validity: i64,
    pub uid_next: i64,
    pub highest_modseq: i64,
    pub recent_floor: i64,
}

pub(crate) const MAILBOX_COLUMNS: &str =
    "id, account_id, name, special_use, uid_validity, uid_next, highest_modseq, recent_floor";

impl MailboxRow {
    pub(crate) fn from_row(row: &PgRow) -> MailboxRow {
        MailboxRow {
            id: row.get("id"),
            account_id: row.get("account_id"),
            name: row.get("name"),
            special_use: row.get("special_use"),
            uid_validity: row.get("uid_validity"),
            uid_next: row.get("uid_next"),
            highest_modseq: row.get("highest_modseq"),
            recent_floor: row.get("recent_floor"),
        }
    }
}

/// A mailbox of `account_id` by id; NOT_FOUND for another account's mailbox,
/// so one account can never reach another's messages.
pub(crate) async fn mailbox_by_id(
    conn: &mut PgConnection,
    account_id: i64,
    mailbox_id: i64,
    lock: bool,
) -> StorageResult<MailboxRow> {
    let sql = format!(
        "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = $1 AND account_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id).bind(account_id).fetch_optional(conn).await?;
    row.as_ref().map(MailboxRow::from_row).ok_or_else(|| StorageError::NotFound(format!("no mailbox {mailbox_id}")))
}

/// A mailbox of `account_id` by its normalised name.
pub(crate) async fn mailbox_by_name(
    conn: &mut PgConnection,
    account_id: i64,
    name: &str,
    lock: bool,
) -> StorageResult<Option<MailboxRow>> {
    let sql = format!(
        "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 AND name = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account_id).bind(name).fetch_optional(conn).await?;
    Ok(row.as_ref().map(MailboxRow::from_row))
}

/// The account row, locked: quota and usage counters change under it.
#[derive(Debug, Clone)]
pub(crate) struct AccountLock {
    pub quota_bytes: i64,
    pub used_bytes: i64,
}

pub(crate) async fn lock_account(conn: &mut PgConnection, account_id: i64) -> StorageResult<Option<AccountLock>> {
    let row = sqlx::query("SELECT quota_bytes, used_bytes FROM accounts WHERE id = $1 FOR UPDATE")
        .bind(account_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| AccountLock { quota_bytes: r.get("quota_bytes"), used_bytes: r.get("used_bytes") }))
}

impl AccountLock {
    /// `quota_bytes = 0` means unlimited.
    pub(crate) fn check_quota(&self, adding: i64) -> StorageResult<()> {
        if self.quota_bytes > 0 && self.used_bytes.saturating_add(adding) > self.quota_bytes {
            return Err(StorageError::OverQuota(format!(
                "over quota: {} of {} bytes used, {adding} more needed",
                self.used_bytes, self.quota_bytes
            )));
        }
        Ok(())
    }
}

/// Adjust the account's usage counters (the account row must be locked).
pub(crate) async fn add_usage(conn: &mut PgConnection, account_id: i64, bytes: i64, count: i64) -> StorageResult<()> {
    sqlx::query(
        "UPDATE accounts SET used_bytes = greatest(used_bytes + $2, 0), message_count = greatest(message_count + $3, 0)
         WHERE id = $1",
    )
    .bind(account_id)
    .bind(bytes)
    .bind(count)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reserve `n` consecutive UIDs and one new MODSEQ in a mailbox whose row the
/// transaction holds (or takes here). Returns (first uid, modseq).
pub(crate) async fn allocate_uids(conn: &mut PgConnection, mailbox_id: i64, n: i64) -> StorageResult<(i64, i64)> {
    let row = sqlx::query(
        "UPDATE mailboxes SET uid_next = uid_next + $2, highest_modseq = highest_modseq + 1
         WHERE id = $1 RETURNING uid_next - $2 AS first_uid, uid_next, highest_modseq",
    )
    .bind(mailbox_id)
    .bind(n)
    .fetch_one(conn)
    .await?;
    let uid_next: i64 = row.get("uid_next");
    // RFC 3501 §2.3.1.1: UIDs are 32-bit; a mailbox that ran out must be
    // recreated (new UIDVALIDITY). The transaction is rolled back by the caller.
    if uid_next - 1 > MAX_UID {
        return Err(StorageError::FailedPrecondition("mailbox has run out of UIDs; recreate it".into()));
    }
    Ok((row.get("first_uid"), row.get("highest_modseq")))
}

/// A new MODSEQ for a mailbox (flag changes, expunges).
pub(crate) async fn bump_modseq(conn: &mut PgConnection, mailbox_id: i64) -> StorageResult<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 RETURNING highest_modseq",
    )
    .bind(mailbox_id)
    .fetch_one(conn)
    .await?)
}

/// A validated set of UID ranges, as two parallel arrays for SQL `unnest`.
#[derive(Debug, Clone, Default)]
pub(crate) struct UidSet {
    pub starts: Vec<i64>,
    pub ends: Vec<i64>,
}

impl UidSet {
    /// Ranges are inclusive; `4:2` means `2:4` (RFC 3501 §9 seq-range).
    /// UID 0 is never valid.
    pub(crate) fn parse(ranges: &[pb::UidRange]) -> StorageResult<UidSet> {
        let mut set = UidSet::default();
        for r in ranges {
            if r.start == 0 || r.end == 0 {
                return Err(StorageError::InvalidArgument(format!(
                    "bad UID set: {}:{} (UIDs start at 1)",
                    r.start, r.end
                )));
            }
            let (a, b) = if r.start <= r.end { (r.start, r.end) } else { (r.end, r.start) };
            set.starts.push(a as i64);
            set.ends.push(b as i64);
        }
        Ok(set)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// RFC 3501 §6.4.8: "a UID range of 559:* always includes the UID of the
    /// last message in the mailbox, even if 559 is higher than any assigned
    /// UID value". Rewrite `n:*` with n above the largest UID to `max:max`.
    pub(crate) async fn resolve_star(&mut self, conn: &mut PgConnection, mailbox_id: i64) -> StorageResult<()> {
        if !self.ends.contains(&(UID_STAR as i64)) {
            return Ok(());
        }
        let max: Option<i64> = sqlx::query_scalar("SELECT max(uid) FROM messages WHERE mailbox_id = $1")
            .bind(mailbox_id)
            .fetch_one(conn)
            .await?;
        if let Some(max) = max {
            for (s, e) in self.starts.iter_mut().zip(self.ends.iter()) {
                if *e == UID_STAR as i64 && *s > max {
                    *s = max;
                }
            }
        }
        Ok(())
    }

    /// Lowest and highest UID covered, to bound index scans.
    pub(crate) fn bounds(&self) -> (i64, i64) {
        let lo = self.starts.iter().copied().min().unwrap_or(1);
        let hi = self.ends.iter().copied().max().unwrap_or(MAX_UID);
        (lo, hi)
    }

    /// Bind the parameters of `uid_set_condition` (which must come next in
    /// the statement's numbering): the bounds, then the ranges.
    pub(crate) fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let (lo, hi) = self.bounds();
        query.bind(lo).bind(hi).bind(&self.starts).bind(&self.ends)
    }

    /// `columns` (over alias `m`) of the messages of `mailbox_id` in this
    /// set, ascending UID, after resolving `*`. `extra` is a further SQL
    /// condition written in the code, never client input.
    pub(crate) async fn select_messages(
        &mut self,
        conn: &mut PgConnection,
        mailbox_id: i64,
        columns: &str,
        extra: &str,
    ) -> StorageResult<Vec<PgRow>> {
        self.resolve_star(conn, mailbox_id).await?;
        let sql = format!(
            "SELECT {columns} FROM messages m WHERE m.mailbox_id = $1 AND {} {extra} ORDER BY m.uid",
            uid_set_condition(2, 3, 4, 5)
        );
        Ok(self.bind(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id)).fetch_all(conn).await?)
    }
}

/// SQL condition on alias `m` matching a UidSet bound at `$lo, $hi, $starts, $ends`.
pub(crate) fn uid_set_condition(lo: usize, hi: usize, starts: usize, ends: usize) -> String {
    format!(
        "m.uid BETWEEN ${lo} AND ${hi} AND EXISTS (SELECT 1 FROM unnest(${starts}::bigint[], ${ends}::bigint[]) AS r(s, e)
          WHERE m.uid BETWEEN r.s AND r.e)"
    )
}

pub(crate) fn to_timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

/// The client's internal date, or now (RFC 3501 §6.3.11: APPEND without a
/// date-time uses the current time).
pub(crate) fn internal_date(ts: Option<&prost_types::Timestamp>) -> StorageResult<OffsetDateTime> {
    match ts {
        None => Ok(OffsetDateTime::now_utc()),
        Some(ts) => {
            let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos.clamp(0, 999_999_999));
            // Postgres keeps microseconds; truncate so what we return equals what is stored.
            let nanos = nanos - nanos.rem_euclid(1000);
            OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .map_err(|_| StorageError::InvalidArgument("internal date out of range".into()))
        }
    }
}

/// Shift every offset in a blob's BodyPart tree by the per-recipient header
/// prefix: prefix lines are header lines of the top-level message, so the
/// top-level header grows and everything after it moves.
pub(crate) fn shift_body_structure(part: &mut pb::BodyPart, prefix_len: u64) {
    if prefix_len == 0 {
        return;
    }
    fn shift(p: &mut pb::BodyPart, by: u64) {
        p.header_offset += by;
        p.body_offset += by;
        for c in &mut p.parts {
            shift(c, by);
        }
        if let Some(inner) = p.message_body.as_mut() {
            shift(inner, by);
        }
    }
    shift(part, prefix_len);
    part.header_offset -= prefix_len;
    part.header_length += prefix_len;
}

pub(crate) fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[tonic::async_trait]
impl Messages for MessagesService {
    async fn append(&self, req: Request<Streaming<pb::AppendRequest>>) -> Result<Response<pb::AppendResponse>, Status> {
        // The account is in the stream's first message: checked there.
        let claims = self.0.sessions.claims(&req)?;
        let peer = req.remote_addr();
        match self.0.append(claims, req.into_inner()).await {
            Ok(appended) => Ok(Response::new(appended)),
            Err(StorageError::Session(e)) => Err(self.0.sessions.refuse_from(peer, e)),
            Err(e) => Err(e.into()),
        }
    }
    async fn put_blob(
        &self,
        req: Request<Streaming<pb::PutBlobRequest>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        Ok(Response::new(self.0.put_blob(req.into_inner()).await?))
    }
    async fn deliver(&self, req: Request<pb::DeliverRequest>) -> Result<Response<pb::DeliverResponse>, Status> {
        Ok(Response::new(self.0.deliver(req.into_inner()).await?))
    }
    type FetchRangesStream = BoxStream<pb::RangeChunk>;
    async fn fetch_ranges(
        &self,
        req: Request<pb::FetchRangesRequest>,
    ) -> Result<Response<Self::FetchRangesStream>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.clone().fetch_ranges(req.into_inner()).await?))
    }
    type FetchStream = BoxStream<pb::FetchChunk>;
    async fn fetch(&self, req: Request<pb::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.clone().fetch(req.into_inner()).await?))
    }
    type FetchBlobStream = BoxStream<pb::FetchChunk>;
    async fn fetch_blob(&self, req: Request<pb::FetchBlobRequest>) -> Result<Response<Self::FetchBlobStream>, Status> {
        Ok(Response::new(self.0.fetch_blob(req.into_inner()).await?))
    }
    type ListMessagesStream = BoxStream<pb::MessageMeta>;
    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<Self::ListMessagesStream>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.clone().list_messages(req.into_inner()).await?))
    }
    async fn list_uids(&self, req: Request<pb::ListUidsRequest>) -> Result<Response<pb::ListUidsResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.list_uids(req.get_ref()).await?))
    }
    async fn store_flags(
        &self,
        req: Request<pb::StoreFlagsRequest>,
    ) -> Result<Response<pb::StoreFlagsResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.store_flags(req.get_ref()).await?))
    }
    async fn copy(&self, req: Request<pb::CopyRequest>) -> Result<Response<pb::CopyResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.copy_messages(req.get_ref()).await?))
    }
    async fn expunge(&self, req: Request<pb::ExpungeRequest>) -> Result<Response<pb::ExpungeResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.expunge(req.get_ref()).await?))
    }
    async fn changes(&self, req: Request<pb::ChangesRequest>) -> Result<Response<pb::ChangesResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.changes(req.get_ref()).await?))
    }
    async fn search(&self, req: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.search(req.get_ref()).await?))
    }
    async fn sort(&self, req: Request<pb::SortRequest>) -> Result<Response<pb::SortResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.sort(req.get_ref()).await?))
    }
    async fn thread(&self, req: Request<pb::ThreadRequest>) -> Result<Response<pb::ThreadResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.thread(req.get_ref()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_shifts_every_offset_and_grows_the_top_header() {
        let leaf = |h: u64, b: u64| pb::BodyPart {
            header_offset: h,
            header_length: 10,
            body_offset: b,
            body_length: 5,
            ..Default::default()
        };
        let mut top = pb::BodyPart {
            header_offset: 0,
            header_length: 40,
            body_offset: 40,
            body_length: 100,
            parts: vec![leaf(50, 60), pb::BodyPart { message_body: Some(Box::new(leaf(90, 100))), ..leaf(70, 80) }],
            ..Default::default()
        };
        shift_body_structure(&mut top, 30);
        assert_eq!((top.header_offset, top.header_length, top.body_offset, top.body_length), (0, 70, 70, 100));
        assert_eq!((top.parts[0].header_offset, top.parts[0].body_offset), (80, 90));
        assert_eq!(top.parts[0].header_length, 10);
        let inner = top.parts[1].message_body.as_ref().unwrap();
        assert_eq!((inner.header_offset, inner.body_offset), (120, 130));
    }

    #[test]
    fn uid_sets_are_validated_and_normalised() {
        let set =
            UidSet::parse(&[pb::UidRange { start: 9, end: 3 }, pb::UidRange { start: 20, end: UID_STAR }]).unwrap();
        assert_eq!((set.starts.clone(), set.ends.clone()), (vec![3, 20], vec![9, i64::from(UID_STAR)]));
        assert_eq!(set.bounds(), (3, i64::from(UID_STAR)));
        assert!(UidSet::parse(&[pb::UidRange { start: 0, end: 3 }]).is_err());
        assert!(UidSet::parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn internal_dates_round_to_what_postgres_keeps() {
        let t = internal_date(Some(&prost_types::Timestamp { seconds: 1_000, nanos: 123_456_789 })).unwrap();
        assert_eq!(to_timestamp(t), prost_types::Timestamp { seconds: 1_000, nanos: 123_456_000 });
        assert!(internal_date(Some(&prost_types::Timestamp { seconds: i64::MAX, nanos: 0 })).is_err());
    }
}
