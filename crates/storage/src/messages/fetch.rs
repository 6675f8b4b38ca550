//! Streaming raw message bytes: `header_prefix || blob`, optionally a byte
//! range of that concatenation, in ~64 KiB chunks and never the whole
//! message in memory.

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
        let chunk = pb::FetchChunk { data: buf[..filled].to_vec(), total_size: first.take().unwrap_or(0) };
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
        let mut conn = self.pool.acquire().await?;
        mailbox_by_id(&mut conn, req.account_id, req.mailbox_id, false).await?;
        let row = sqlx::query("SELECT blob_id, header_prefix, size FROM messages WHERE mailbox_id = $1 AND uid = $2")
            .bind(req.mailbox_id)
            .bind(i64::from(req.uid))
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no message with UID {}", req.uid)))?;
        drop(conn);
        let blob_id: String = row.get("blob_id");
        let prefix: Vec<u8> = row.get("header_prefix");
        let total = u64_of(row.get("size"));

        // The requested window [start, end) of prefix || blob.
        let start = req.offset.min(total);
        let end = match req.length {
            Some(len) => start.saturating_add(len).min(total),
            None => total,
        };
        let plen = prefix.len() as u64;
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
                let _ = tx.send(Ok(pb::FetchChunk { data: Vec::new(), total_size: total })).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
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
                let _ = tx.send(Ok(pb::FetchChunk { data: Vec::new(), total_size: total })).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
