//! APPEND (RFC 3501 §6.3.11) and PutBlob, plus the pieces every operation
//! that creates a message shares: parse-once blob metadata, pinning a blob
//! against the sweeper, and inserting a message row.

use mailfleet_proto::storage::v1 as pb;
use pb::mail_event::Kind;
use prost::Message;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tonic::Streaming;

use super::flags::normalize_flags;
use super::{add_usage, allocate_uids, internal_date, lock_account, mailbox_by_name, u32_of, u64_of};
use crate::Store;
use crate::auth::session::Claims;
use crate::error::{StorageError, StorageResult};

/// A broken request stream: the client is gone or sent garbage.
fn stream_error(status: tonic::Status) -> StorageError {
    StorageError::InvalidArgument(format!("request stream failed: {}", status.message()))
}

/// Blob ids are lowercase hex SHA-256.
pub(crate) fn check_blob_id(id: &str) -> StorageResult<()> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(StorageError::InvalidArgument(format!("malformed blob id {id:?}")))
    }
}

/// The MIME metadata of a message, parsed on a blocking thread.
async fn parse_blocking(raw: bytes::Bytes) -> StorageResult<crate::mime::ParsedMessage> {
    tokio::task::spawn_blocking(move || crate::mime::parse(&raw))
        .await
        .map_err(|e| StorageError::Internal(format!("MIME parser failed: {e}")))
}

/// Postgres TEXT cannot hold NUL.
pub(super) fn pg_text(s: String) -> String {
    if s.contains('\0') { s.replace('\0', "") } else { s }
}

/// What a new message row needs.
pub(crate) struct NewMessage<'a> {
    pub blob_id: &'a str,
    pub header_prefix: &'a [u8],
    /// prefix + blob octets
    pub size: i64,
    pub internal_date: OffsetDateTime,
    pub flags: &'a [String],
}

impl Store {
    /// Parse a blob's MIME structure and record it on the blob's row, once
    /// per blob: a delivery to many recipients, or the same content stored
    /// again, reuses it. Returns the blob size.
    pub(crate) async fn record_blob(&self, blob_id: &str, raw: bytes::Bytes) -> StorageResult<i64> {
        let size = raw.len() as i64;
        let parsed = parse_blocking(raw).await?;
        self.record_metadata(blob_id, size, parsed).await?;
        Ok(size)
    }

    /// Store `raw` durably and record its parsed metadata; (blob id, size).
    /// The file write (with its fsyncs) and the MIME parse run side by
    /// side on two blocking threads: neither waits for the other.
    ///
    /// A write of content stored before refreshes the file's age, and the
    /// row upsert waits for a sweep deciding about that blob; should the
    /// sweep have removed the file all the same (it looked at the age just
    /// before the refresh), the file is written again (see `crate::sweep`).
    async fn store_blob(&self, raw: bytes::Bytes) -> StorageResult<(String, i64)> {
        let size = raw.len() as i64;
        let (id, parsed) = tokio::join!(self.blobs.put(raw.clone()), parse_blocking(raw.clone()));
        let id = id?;
        self.record_metadata(&id, size, parsed?).await?;
        if !self.blobs.exists(&id).await? {
            tracing::info!(blob = %id, "blob swept while it was stored again; writing it again");
            self.blobs.put(raw).await?;
        }
        Ok((id, size))
    }

    /// The blob row with its metadata. The upsert also takes the row lock,
    /// which waits for a sweep deciding about this blob.
    ///
    /// Committed without waiting for the WAL flush (`synchronous_commit`
    /// off for this statement's own transaction, set by `set_config(…,
    /// true)` in the statement itself, so it stays one round trip): the row
    /// only caches what the durable file says, nothing is acknowledged on
    /// it alone, and every message that points at the blob is committed
    /// synchronously later in the WAL, which makes this row durable first.
    /// Should a crash still lose it, the first delivery parses the file
    /// again (`deliver`, status `no_blob`).
    async fn record_metadata(&self, blob_id: &str, size: i64, parsed: crate::mime::ParsedMessage) -> StorageResult<()> {
        // The sort fields (RFC 5256, `sortkeys`) go in the same statement.
        let sort = crate::sortkeys::SortFields::compute(&parsed.envelope, &parsed.header_text);
        sqlx::query(
            "INSERT INTO blobs (id, size, envelope, body_structure, header_size, sent_date, header_text, body_text,
                sort_version, base_subject, subject_is_reply, sort_from, sort_to, sort_cc, display_from, display_to,
                sent_at, message_id, thread_refs)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS c
             ON CONFLICT (id) DO UPDATE SET size = EXCLUDED.size,
                envelope = COALESCE(blobs.envelope, EXCLUDED.envelope),
                body_structure = COALESCE(blobs.body_structure, EXCLUDED.body_structure),
                header_size = COALESCE(blobs.header_size, EXCLUDED.header_size),
                sent_date = CASE WHEN blobs.header_size IS NULL THEN EXCLUDED.sent_date ELSE blobs.sent_date END,
                header_text = COALESCE(blobs.header_text, EXCLUDED.header_text),
                body_text = COALESCE(blobs.body_text, EXCLUDED.body_text),
                sort_version = EXCLUDED.sort_version, base_subject = EXCLUDED.base_subject,
                subject_is_reply = EXCLUDED.subject_is_reply, sort_from = EXCLUDED.sort_from,
                sort_to = EXCLUDED.sort_to, sort_cc = EXCLUDED.sort_cc, display_from = EXCLUDED.display_from,
                display_to = EXCLUDED.display_to, sent_at = EXCLUDED.sent_at, message_id = EXCLUDED.message_id,
                thread_refs = EXCLUDED.thread_refs",
        )
        .bind(blob_id)
        .bind(size)
        .bind(parsed.envelope.encode_to_vec())
        .bind(parsed.body_structure.encode_to_vec())
        .bind(i64::try_from(parsed.header_size).unwrap_or(size))
        .bind(parsed.sent_date)
        .bind(pg_text(parsed.header_text))
        .bind(pg_text(parsed.body_text))
        .bind(crate::sortkeys::SORT_VERSION)
        .bind(pg_text(sort.base_subject))
        .bind(sort.subject_is_reply)
        .bind(pg_text(sort.from_mailbox))
        .bind(pg_text(sort.to_mailbox))
        .bind(pg_text(sort.cc_mailbox))
        .bind(pg_text(sort.display_from))
        .bind(pg_text(sort.display_to))
        .bind(sort.sent_at)
        .bind(sort.message_id.map(pg_text))
        .bind(pg_text(sort.references.join(" ")))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// For a blob stored before its metadata was recorded at arrival: read
    /// it back and record it. NOT_FOUND when the blob is not in the store.
    pub(crate) async fn ensure_blob_metadata(&self, blob_id: &str) -> StorageResult<i64> {
        check_blob_id(blob_id)?;
        if !self.blobs.exists(blob_id).await? {
            return Err(StorageError::NotFound(format!("unknown blob {blob_id}")));
        }
        let mut raw = Vec::new();
        self.blobs.reader(blob_id, 0, None).await?.read_to_end(&mut raw).await?;
        self.record_blob(blob_id, raw.into()).await
    }

    /// Inside the transaction that will point a message at `blob_id`: take
    /// the blob row lock (the upsert waits for a running sweep that holds it)
    /// and make sure the file is still there, so a committed message never
    /// refers to a missing blob.
    pub(crate) async fn pin_blob(&self, conn: &mut PgConnection, blob_id: &str, size: i64) -> StorageResult<()> {
        sqlx::query("INSERT INTO blobs (id, size) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET size = EXCLUDED.size")
            .bind(blob_id)
            .bind(size)
            .execute(&mut *conn)
            .await?;
        if !self.blobs.exists(blob_id).await? {
            return Err(StorageError::NotFound(format!("blob {blob_id} is gone")));
        }
        Ok(())
    }

    /// Receive the request's data chunks, enforcing the size limit and
    /// (early) the quota. Returns the message's octets (bare LF made CRLF),
    /// held once in memory, as the parser needs them whole anyway.
    async fn receive_raw<T>(
        &self,
        stream: &mut Streaming<T>,
        mut chunk_of: impl FnMut(T) -> Option<Vec<u8>>,
        room: Option<u64>,
    ) -> StorageResult<bytes::Bytes> {
        let max = self.config.max_message_size;
        let mut crlf = CrlfNormalizer::default();
        let mut raw: Vec<u8> = Vec::new();
        while let Some(msg) = stream.message().await.map_err(stream_error)? {
            let Some(data) = chunk_of(msg) else {
                return Err(StorageError::InvalidArgument("unexpected header after data".into()));
            };
            let chunk = crlf.normalize(&data);
            let total = (raw.len() + chunk.len()) as u64;
            if total > max {
                return Err(StorageError::OverQuota(format!("message larger than the limit of {max} bytes")));
            }
            if room.is_some_and(|r| total > r) {
                return Err(StorageError::OverQuota("over quota".into()));
            }
            raw.extend_from_slice(&chunk);
        }
        Ok(bytes::Bytes::from(raw))
    }

    pub(crate) async fn put_blob(
        &self,
        mut stream: Streaming<pb::PutBlobRequest>,
    ) -> StorageResult<pb::PutBlobResponse> {
        let raw = self.receive_raw(&mut stream, |m| Some(m.chunk), None).await?;
        // The file is durable and its metadata recorded (parsed now, so
        // that delivery only points at it). Until a message refers to it,
        // only the sweeper's minimum age keeps it alive.
        let (blob_id, size) = self.store_blob(raw).await?;
        Ok(pb::PutBlobResponse { blob_id, size: u64_of(size) })
    }

    /// `session`: the claims of the call's token, which must name the
    /// header's account.
    pub(crate) async fn append(
        &self,
        session: Claims,
        mut stream: Streaming<pb::AppendRequest>,
    ) -> StorageResult<pb::AppendResponse> {
        let header = match stream.message().await.map_err(stream_error)?.and_then(|m| m.part) {
            Some(pb::append_request::Part::Header(h)) => h,
            _ => return Err(StorageError::InvalidArgument("the first Append message must be the header".into())),
        };
        session.require(header.account_id)?;
        let flags = normalize_flags(&header.flags)?;
        let date = internal_date(header.internal_date.as_ref())?;
        let name = mail_types::MailboxName::parse(&header.mailbox)?;
        // Fail fast, before reading the data: unknown mailbox (IMAP turns it
        // into NO [TRYCREATE]) or an account already at its quota.
        let mut conn = self.pool.acquire().await?;
        let room = {
            let row = sqlx::query("SELECT quota_bytes, used_bytes FROM accounts WHERE id = $1")
                .bind(header.account_id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("no account {}", header.account_id)))?;
            let (quota, used): (i64, i64) = (row.get("quota_bytes"), row.get("used_bytes"));
            (quota > 0).then(|| u64_of(quota - used))
        };
        mailbox_by_name(&mut conn, header.account_id, name.as_str(), false)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no mailbox {name}")))?;
        drop(conn);

        let raw = self
            .receive_raw(
                &mut stream,
                |m| match m.part {
                    Some(pb::append_request::Part::Chunk(c)) => Some(c),
                    _ => None,
                },
                room,
            )
            .await?;
        let (blob_id, size) = self.store_blob(raw).await?;

        let mut tx = self.pool.begin().await?;
        self.pin_blob(&mut tx, &blob_id, size).await?;
        let account = lock_account(&mut tx, header.account_id)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no account {}", header.account_id)))?;
        account.check_quota(size)?;
        let mailbox = mailbox_by_name(&mut tx, header.account_id, name.as_str(), true)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no mailbox {name}")))?;
        let new = NewMessage { blob_id: &blob_id, header_prefix: &[], size, internal_date: date, flags: &flags };
        let (uid, modseq) = insert_message(&mut tx, header.account_id, mailbox.id, &new).await?;
        tx.commit().await?;

        self.events
            .publish(
                header.account_id,
                u64_of(modseq),
                Kind::Added(pb::MessagesAdded { mailbox_id: mailbox.id, uids: vec![u32_of(uid)] }),
            )
            .await;
        Ok(pb::AppendResponse {
            mailbox_id: mailbox.id,
            uid_validity: u32_of(mailbox.uid_validity),
            uid: u32_of(uid),
            modseq: u64_of(modseq),
        })
    }
}

/// Insert one message into a mailbox. The caller holds the account row lock
/// (quota checked) and the transaction takes the mailbox row lock here.
/// Returns (uid, modseq).
pub(crate) async fn insert_message(
    conn: &mut PgConnection,
    account_id: i64,
    mailbox_id: i64,
    msg: &NewMessage<'_>,
) -> StorageResult<(i64, i64)> {
    let (uid, modseq) = allocate_uids(&mut *conn, mailbox_id, 1).await?;
    sqlx::query(
        "INSERT INTO messages (account_id, mailbox_id, uid, modseq, blob_id, header_prefix, size, internal_date, flags)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(account_id)
    .bind(mailbox_id)
    .bind(uid)
    .bind(modseq)
    .bind(msg.blob_id)
    .bind(msg.header_prefix)
    .bind(msg.size)
    .bind(msg.internal_date)
    .bind(msg.flags)
    .execute(&mut *conn)
    .await?;
    add_usage(conn, account_id, msg.size, 1).await?;
    Ok((uid, modseq))
}

/// RFC 5322 §2.3 / RFC 3501 §2.3.5: messages use CRLF line ends. Clients that
/// send bare LF (IMAP APPEND from a Unix mbox, say) get them turned into CRLF
/// before storing, so RFC822.SIZE, POP3 LIST sizes and the octets served are
/// always the same number. Works across chunk boundaries.
#[derive(Default)]
pub(crate) struct CrlfNormalizer {
    previous_was_cr: bool,
}

impl CrlfNormalizer {
    pub(crate) fn normalize<'a>(&mut self, chunk: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let mut prev = self.previous_was_cr;
        let needs_change = chunk.iter().any(|&b| {
            let bare = b == b'\n' && !prev;
            prev = b == b'\r';
            bare
        });
        if !needs_change {
            self.previous_was_cr = chunk.last().map_or(self.previous_was_cr, |&b| b == b'\r');
            return std::borrow::Cow::Borrowed(chunk);
        }
        let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 32 + 2);
        for &b in chunk {
            if b == b'\n' && !self.previous_was_cr {
                out.push(b'\r');
            }
            out.push(b);
            self.previous_was_cr = b == b'\r';
        }
        std::borrow::Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::CrlfNormalizer;

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut n = CrlfNormalizer::default();
        chunks.iter().flat_map(|c| n.normalize(c).into_owned()).collect()
    }

    #[test]
    fn bare_lf_becomes_crlf_even_across_chunks() {
        assert_eq!(run(&[b"a\r\nb\nc\n"]), b"a\r\nb\r\nc\r\n");
        assert_eq!(run(&[b"a\r", b"\nb\n"]), b"a\r\nb\r\n");
        assert_eq!(run(&[b"a", b"\n", b"\n"]), b"a\r\n\r\n");
        assert_eq!(run(&[b"already\r\nfine\r\n"]), b"already\r\nfine\r\n");
        assert_eq!(run(&[b"\n"]), b"\r\n");
    }
}
