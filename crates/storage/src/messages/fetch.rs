//! Streaming raw message bytes: `header_prefix || blob`, optionally a byte
//! range of that concatenation, in ~64 KiB chunks and never the whole
//! message in memory.

use std::collections::HashMap;
use std::sync::Arc;

use mailfleet_proto::storage::v1 as pb;
use sqlx::Row;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::append::check_blob_id;
use super::{BoxStream, mailbox_by_id, u64_of};
use crate::Store;
use crate::error::{StorageError, StorageResult};

const CHUNK: usize = 64 * 1024;
/// FetchRanges reads small ranges together, in groups of up to this many
/// octets or ranges, and streams a larger range by itself.
const GROUP_OCTETS: u64 = 1024 * 1024;
const GROUP_RANGES: usize = 128;
/// Ranges one FetchRanges call may ask for.
const MAX_RANGES: usize = 10_000;

type RangeSender = mpsc::Sender<Result<pb::RangeChunk, Status>>;

/// The window `[start, end)` of a message of `total` octets.
fn window(total: u64, offset: u64, length: Option<u64>) -> (u64, u64) {
    let start = offset.min(total);
    let end = match length {
        Some(len) => start.saturating_add(len).min(total),
        None => total,
    };
    (start, end)
}

/// One range of a FetchRanges call, resolved: the prefix octets it covers
/// and the blob window after them.
struct Planned {
    index: u32,
    prefix: Vec<u8>,
    blob: Option<(String, u64, u64)>,
}

/// A message as FetchRanges needs it.
struct Stored {
    blob_id: String,
    prefix: Vec<u8>,
    size: u64,
    /// Octets of the top-level header including the prefix; when the
    /// request has no HEADER or TEXT range, not asked for (0).
    header: u64,
}

impl Stored {
    /// The window `[start, end)` of the message that `range` asks for.
    fn window_of(&self, range: &pb::ByteRange) -> (u64, u64) {
        use pb::byte_range::Section;
        let header = self.header.min(self.size);
        let (base, len) = match range.section() {
            Section::Full => (0, self.size),
            Section::Header => (0, header),
            Section::Text => (header, self.size - header),
        };
        let (start, end) = window(len, range.offset, range.length);
        (base + start, base + end)
    }
}

impl Planned {
    fn blob_len(&self) -> u64 {
        self.blob.as_ref().map_or(0, |(_, _, len)| *len)
    }
}

/// Send `data` as the chunks of range `index`, the last one marked and
/// the first one carrying the range's size.
async fn send_range(tx: &RangeSender, index: u32, prefix: Vec<u8>, data: Vec<u8>) -> bool {
    let size = (prefix.len() + data.len()) as u64;
    // The common case, a message without prefix that fits one chunk, goes
    // out as read, without another copy.
    if prefix.is_empty() && data.len() <= CHUNK {
        let chunk = pb::RangeChunk { index, data: data.into(), last: true, missing: false, size };
        return tx.send(Ok(chunk)).await.is_ok();
    }
    let mut all = prefix;
    all.extend_from_slice(&data);
    let all = bytes::Bytes::from(all);
    if all.is_empty() {
        let empty = pb::RangeChunk { index, data: all, last: true, missing: false, size: 0 };
        return tx.send(Ok(empty)).await.is_ok();
    }
    let mut at = 0;
    while at < all.len() {
        let end = (at + CHUNK).min(all.len());
        let chunk = pb::RangeChunk {
            index,
            data: all.slice(at..end),
            last: end == all.len(),
            missing: false,
            size: if at == 0 { size } else { 0 },
        };
        if tx.send(Ok(chunk)).await.is_err() {
            return false;
        }
        at = end;
    }
    true
}

type ChunkSender = mpsc::Sender<Result<pb::FetchChunk, Status>>;

/// Send `len` bytes (or all) of `reader` as chunks; `total` goes in the first
/// chunk only. Returns false when the client went away.
async fn pump(
    tx: &ChunkSender,
    reader: &mut (dyn AsyncRead + Send + Unpin),
    first: &mut Option<u64>,
) -> std::io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut filled = 0;
        // Fill whole chunks so the client sees few, large messages.
        while filled < CHUNK {
            let n = reader.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(true);
        }
        let chunk = pb::FetchChunk {
            data: bytes::Bytes::copy_from_slice(&buf[..filled]),
            total_size: first.take().unwrap_or(0),
        };
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(false);
        }
        if filled < CHUNK {
            return Ok(true);
        }
    }
}

impl Store {
    pub(crate) async fn fetch(self: Arc<Self>, req: pb::FetchRequest) -> StorageResult<BoxStream<pb::FetchChunk>> {
        // The message, in a mailbox of this account: one statement.
        let row = sqlx::query(
            "SELECT m.blob_id, m.header_prefix, m.size FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id
             WHERE m.mailbox_id = $1 AND m.uid = $2 AND b.account_id = $3",
        )
        .bind(req.mailbox_id)
        .bind(i64::from(req.uid))
        .bind(req.account_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("no message with UID {} in that mailbox", req.uid)))?;
        let blob_id: String = row.get("blob_id");
        let prefix: Vec<u8> = row.get("header_prefix");
        let total = u64_of(row.get("size"));

        // The requested window [start, end) of prefix || blob.
        let (start, end) = window(total, req.offset, req.length);
        let plen = prefix.len() as u64;
        let from = start.max(plen) - plen;
        let blob_len = end.saturating_sub(plen).saturating_sub(from);
        if blob_len <= GROUP_OCTETS {
            // Most messages: read whole in one blocking call, sent as one
            // chunk (a POP3 RETR or an IMAP body of ordinary size).
            let mut data = prefix[start.min(plen) as usize..end.min(plen) as usize].to_vec();
            if blob_len > 0 {
                let mut read = self.blobs.read_many(vec![(blob_id, from, blob_len)]).await?;
                data.extend(read.pop().unwrap_or_default());
            }
            let chunk = pb::FetchChunk { data: data.into(), total_size: total };
            return Ok(Box::pin(futures::stream::once(async move { Ok(chunk) })));
        }
        // Open the blob before answering so a missing blob is an error
        // status, not a truncated stream.
        let blob_reader = if end > plen {
            let from = start.max(plen) - plen;
            Some(self.blobs.reader(&blob_id, from, Some(end - plen - from)).await?)
        } else {
            None
        };

        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut first = Some(total);
            if start < plen {
                let part = prefix[start as usize..end.min(plen) as usize].to_vec();
                let mut slice: &[u8] = &part;
                match pump(&tx, &mut slice, &mut first).await {
                    Ok(true) => {}
                    _ => return,
                }
            }
            if let Some(mut reader) = blob_reader
                && let Err(e) = pump(&tx, &mut reader, &mut first).await
            {
                let _ = tx.send(Err(StorageError::Blob(e).into())).await;
                return;
            }
            if let Some(total) = first {
                // Empty range: still tell the client the size.
                let _ = tx.send(Ok(pb::FetchChunk { data: bytes::Bytes::new(), total_size: total })).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Many ranges in one call: one query for every message, blobs read in
    /// groups (one blocking task each), chunks streamed in request order.
    pub(crate) async fn fetch_ranges(
        self: Arc<Self>,
        req: pb::FetchRangesRequest,
    ) -> StorageResult<BoxStream<pb::RangeChunk>> {
        if req.ranges.len() > MAX_RANGES {
            return Err(StorageError::InvalidArgument(format!("at most {MAX_RANGES} ranges per call")));
        }
        let uids: Vec<i64> = req.ranges.iter().map(|r| i64::from(r.uid)).collect();
        // The account's ownership of the mailbox is part of the one
        // statement: an IMAP session's FETCH costs one round trip here.
        // Header and text sections need the header's size from the blob.
        let sections = req.ranges.iter().any(|r| r.section() != pb::byte_range::Section::Full);
        let sql = if sections {
            "SELECT m.uid, m.blob_id, m.header_prefix, m.size,
                    length(m.header_prefix) + COALESCE(bl.header_size, 0) AS header
             FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id JOIN blobs bl ON bl.id = m.blob_id
             WHERE m.mailbox_id = $1 AND b.account_id = $2 AND m.uid = ANY($3)"
        } else {
            "SELECT m.uid, m.blob_id, m.header_prefix, m.size, 0::bigint AS header
             FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id
             WHERE m.mailbox_id = $1 AND b.account_id = $2 AND m.uid = ANY($3)"
        };
        let rows = sqlx::query(sql).bind(req.mailbox_id).bind(req.account_id).bind(&uids).fetch_all(&self.pool).await?;
        if rows.is_empty() {
            // Nothing found: someone else's (or no) mailbox is refused
            // before anything is sent; otherwise every range is missing.
            mailbox_by_id(&mut *self.pool.acquire().await?, req.account_id, req.mailbox_id, false).await?;
        }
        let mut messages: HashMap<i64, Stored> = HashMap::with_capacity(rows.len());
        for row in rows {
            let stored = Stored {
                blob_id: row.get("blob_id"),
                prefix: row.get("header_prefix"),
                size: u64_of(row.get("size")),
                header: u64_of(row.get::<i64, _>("header")),
            };
            messages.insert(row.get("uid"), stored);
        }
        let planned: Vec<Option<Planned>> = req
            .ranges
            .iter()
            .enumerate()
            .map(|(index, range)| {
                let stored = messages.get(&i64::from(range.uid))?;
                let (start, end) = stored.window_of(range);
                let plen = stored.prefix.len() as u64;
                let head = stored.prefix[start.min(plen) as usize..end.min(plen) as usize].to_vec();
                let from = start.max(plen) - plen;
                let blob = (end > plen).then(|| (stored.blob_id.clone(), from, end - plen - from));
                Some(Planned { index: index as u32, prefix: head, blob })
            })
            .collect();

        let (tx, rx) = mpsc::channel(8);
        let store = self.clone();
        tokio::spawn(async move {
            let mut group: Vec<Planned> = Vec::new();
            let mut group_octets = 0u64;
            for (index, plan) in planned.into_iter().enumerate() {
                let Some(plan) = plan else {
                    if !store.send_group(&tx, std::mem::take(&mut group)).await {
                        return;
                    }
                    group_octets = 0;
                    let missing = pb::RangeChunk {
                        index: index as u32,
                        data: bytes::Bytes::new(),
                        last: true,
                        missing: true,
                        size: 0,
                    };
                    if tx.send(Ok(missing)).await.is_err() {
                        return;
                    }
                    continue;
                };
                if plan.blob_len() > GROUP_OCTETS {
                    // A big range streams by itself, never whole in memory.
                    if !store.send_group(&tx, std::mem::take(&mut group)).await || !store.stream_range(&tx, plan).await
                    {
                        return;
                    }
                    group_octets = 0;
                    continue;
                }
                group_octets += plan.blob_len();
                group.push(plan);
                if group_octets >= GROUP_OCTETS || group.len() >= GROUP_RANGES {
                    if !store.send_group(&tx, std::mem::take(&mut group)).await {
                        return;
                    }
                    group_octets = 0;
                }
            }
            store.send_group(&tx, group).await;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Read a group of small ranges together and send them in order.
    async fn send_group(&self, tx: &RangeSender, group: Vec<Planned>) -> bool {
        if group.is_empty() {
            return true;
        }
        let reads: Vec<(String, u64, u64)> = group.iter().filter_map(|p| p.blob.clone()).collect();
        let mut data = match self.blobs.read_many(reads).await {
            Ok(data) => data.into_iter(),
            Err(e) => {
                let _ = tx.send(Err(StorageError::Blob(e).into())).await;
                return false;
            }
        };
        for plan in group {
            let body = if plan.blob.is_some() { data.next().unwrap_or_default() } else { Vec::new() };
            if !send_range(tx, plan.index, plan.prefix, body).await {
                return false;
            }
        }
        true
    }

    /// One big range: its prefix octets, then the blob in chunks.
    async fn stream_range(&self, tx: &RangeSender, plan: Planned) -> bool {
        let Some((blob_id, from, len)) = plan.blob else { return true };
        let mut reader = match self.blobs.reader(&blob_id, from, Some(len)).await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(StorageError::Blob(e).into())).await;
                return false;
            }
        };
        let index = plan.index;
        let mut size = plan.prefix.len() as u64 + len;
        if !plan.prefix.is_empty() {
            let head = pb::RangeChunk { index, data: plan.prefix.into(), last: false, missing: false, size };
            if tx.send(Ok(head)).await.is_err() {
                return false;
            }
            size = 0;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let mut filled = 0;
            while filled < CHUNK {
                match reader.read(&mut buf[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        let _ = tx.send(Err(StorageError::Blob(e).into())).await;
                        return false;
                    }
                }
            }
            let last = filled < CHUNK;
            let chunk = pb::RangeChunk {
                index,
                data: bytes::Bytes::copy_from_slice(&buf[..filled]),
                last,
                missing: false,
                size: std::mem::take(&mut size),
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return false;
            }
            if last {
                return true;
            }
        }
    }

    pub(crate) async fn fetch_blob(&self, req: pb::FetchBlobRequest) -> StorageResult<BoxStream<pb::FetchChunk>> {
        check_blob_id(&req.blob_id)?;
        let mut reader = match self.blobs.reader(&req.blob_id, 0, None).await {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(format!("unknown blob {}", req.blob_id)));
            }
            Err(e) => return Err(e.into()),
        };
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE id = $1")
            .bind(&req.blob_id)
            .fetch_optional(&self.pool)
            .await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut first = Some(size.map(u64_of).unwrap_or(0));
            if let Err(e) = pump(&tx, &mut reader, &mut first).await {
                let _ = tx.send(Err(StorageError::Blob(e).into())).await;
                return;
            }
            if let Some(total) = first {
                let _ = tx.send(Ok(pb::FetchChunk { data: bytes::Bytes::new(), total_size: total })).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
