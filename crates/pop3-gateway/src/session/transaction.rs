//! TRANSACTION state (RFC 1939 §5, §7): STAT, LIST, UIDL, RETR, TOP, DELE,
//! RSET. Message numbers refer to the login snapshot; a number marked by
//! DELE stays unusable until RSET and is never given to another message.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Flow, Maildrop, Session, State, store_error, write_flow};
use crate::codec::{self, MsgNum, Stuffer};
use crate::store::{Account, ByteStream, MailStore, MessageInfo, StoreError};

impl Maildrop {
    /// The message behind `n`, or the `-ERR` line (RFC 1939 §5: commands on
    /// deleted messages fail).
    fn get(&self, n: MsgNum) -> Result<&MessageInfo, String> {
        let Some(msg) = self.messages.get(n.index()) else {
            return Err(codec::err(
                None,
                &format!("no such message, only {} messages in maildrop", self.messages.len()),
            ));
        };
        if self.marked.contains(&n) {
            return Err(codec::err(None, &format!("message {n} already deleted")));
        }
        Ok(msg)
    }

    /// Messages not marked as deleted, with their numbers.
    fn live(&self) -> impl Iterator<Item = (MsgNum, &MessageInfo)> {
        self.messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| MsgNum::new(i as u32 + 1).map(|n| (n, m)))
            .filter(|(n, _)| !self.marked.contains(n))
    }

    /// RFC 1939 §5 STAT/RSET totals, deleted messages excluded.
    pub fn totals(&self) -> (usize, u64) {
        self.live().fold((0, 0), |(n, size), (_, m)| (n + 1, size + m.size))
    }

    /// RFC 1939 §7 UIDL: "<uid_validity>.<uid>", the message's IMAP identity,
    /// stable across sessions (1–70 characters in 0x21–0x7E).
    fn unique_id(&self, m: &MessageInfo) -> String {
        format!("{}.{}", self.uid_validity, m.uid)
    }
}

/// Messages read ahead in one storage call, and the octets of one batch at
/// most (a batch held and the next on its way: twice that per session).
const READ_AHEAD_MESSAGES: usize = 32;
const READ_AHEAD_OCTETS: u64 = 1024 * 1024;
/// Larger messages are streamed as they are sent, never held.
const READ_AHEAD_LARGEST: u64 = 256 * 1024;

impl Maildrop {
    /// The octets of message `n` if read-ahead has (or now gets) them;
    /// `None` when `n` is to be streamed. A RETR right after the previous
    /// one reads the following messages too; a storage failure here only
    /// means the message is streamed the ordinary way.
    async fn read_ahead<S: MailStore>(&mut self, n: MsgNum, account: &Account, store: &S) -> Option<Bytes> {
        let index = n.index();
        let sequential = self.ahead.last.is_some_and(|last| last + 1 == index);
        self.ahead.last = Some(index);
        if !self.ahead.held.contains_key(&index)
            && let Some(pending) = self.ahead.pending.take()
            && pending.indexes.contains(&index)
        {
            // The batch asked for in the background: wait for the rest of it.
            match pending.task.await {
                Ok(Ok(fetched)) => self.hold(pending.indexes, fetched),
                Ok(Err(e)) => tracing::debug!(error = %e, "read-ahead failed; streaming instead"),
                Err(e) => tracing::debug!(error = %e, "read-ahead task ended"),
            }
        }
        if let Some(data) = self.ahead.held.remove(&index) {
            self.read_on(index, account, store);
            return Some(data);
        }
        // Out of order: what was read ahead is not what the client wants.
        self.ahead.held.clear();
        self.ahead.pending = None;
        if !sequential {
            self.ahead.window = 0;
            return None;
        }
        self.ahead.window = (self.ahead.window * 2).clamp(2, READ_AHEAD_MESSAGES);
        let batch = self.batch_from(index);
        if batch.first().is_none_or(|(i, _)| *i != index) {
            return None;
        }
        let (indexes, uids): (Vec<usize>, Vec<u32>) = batch.into_iter().unzip();
        match store.fetch_many(account, self.mailbox_id, uids).await {
            Ok(fetched) => self.hold(indexes, fetched),
            Err(e) => {
                tracing::debug!(error = %e, "read-ahead failed; streaming instead");
                return None;
            }
        }
        let first = self.ahead.held.remove(&index);
        self.read_on(index, account, store);
        first
    }

    /// The messages one batch from `index` on asks for: (index, UID), the
    /// deleted skipped, up to the window, the octet bound or a message too
    /// big to hold.
    fn batch_from(&self, index: usize) -> Vec<(usize, u32)> {
        let (mut batch, mut octets) = (Vec::new(), 0u64);
        for (i, m) in self.messages.iter().enumerate().skip(index) {
            let deleted = MsgNum::new(i as u32 + 1).is_some_and(|k| self.marked.contains(&k));
            if deleted {
                continue;
            }
            if m.size > READ_AHEAD_LARGEST || octets + m.size > READ_AHEAD_OCTETS || batch.len() >= self.ahead.window {
                break;
            }
            octets += m.size;
            batch.push((i, m.uid));
        }
        batch
    }

    fn hold(&mut self, indexes: Vec<usize>, fetched: Vec<Option<Bytes>>) {
        for (i, data) in indexes.into_iter().zip(fetched) {
            if let Some(data) = data {
                self.ahead.held.insert(i, data);
            }
        }
    }

    /// After `index` was served from what is held: once at most half a
    /// window is left, ask for the batch after it in the background.
    fn read_on<S: MailStore>(&mut self, index: usize, account: &Account, store: &S) {
        if self.ahead.pending.is_some() || self.ahead.held.len() > self.ahead.window / 2 {
            return;
        }
        let from = self.ahead.held.keys().next_back().map_or(index, |last| *last) + 1;
        self.ahead.window = (self.ahead.window * 2).clamp(2, READ_AHEAD_MESSAGES);
        let batch = self.batch_from(from);
        if batch.is_empty() {
            return;
        }
        let (indexes, uids): (Vec<usize>, Vec<u32>) = batch.into_iter().unzip();
        let task = tokio::spawn(store.fetch_many(account, self.mailbox_id, uids));
        self.ahead.pending =
            Some(super::PendingBatch { indexes, task: tokio_util::task::AbortOnDropHandle::new(task) });
    }
}

impl Session {
    fn drop_mut(&mut self) -> Option<&mut Maildrop> {
        match &mut self.state {
            State::Transaction { drop, .. } => Some(drop),
            _ => None,
        }
    }

    pub(super) async fn stat<W: AsyncWrite + Unpin + Send>(&mut self, out: &mut W) -> io::Result<Flow> {
        let Some(drop) = self.drop_mut() else { return Ok(Flow::Continue) };
        let (n, size) = drop.totals();
        write_flow(out, codec::ok(&format!("{n} {size}"))).await
    }

    /// RFC 1939 §5 LIST [msg]: the size of one message or a scan listing.
    pub(super) async fn list<W: AsyncWrite + Unpin + Send>(
        &mut self,
        n: Option<MsgNum>,
        out: &mut W,
    ) -> io::Result<Flow> {
        let Some(drop) = self.drop_mut() else { return Ok(Flow::Continue) };
        let reply = match n {
            Some(n) => match drop.get(n) {
                Ok(m) => codec::ok(&format!("{n} {}", m.size)),
                Err(e) => e,
            },
            None => {
                let (count, size) = drop.totals();
                let lines: Vec<String> = drop.live().map(|(n, m)| format!("{n} {}", m.size)).collect();
                codec::multiline(&format!("{count} messages ({size} octets)"), lines)
            }
        };
        write_flow(out, reply).await
    }

    /// RFC 1939 §7 UIDL [msg].
    pub(super) async fn uidl<W: AsyncWrite + Unpin + Send>(
        &mut self,
        n: Option<MsgNum>,
        out: &mut W,
    ) -> io::Result<Flow> {
        let Some(drop) = self.drop_mut() else { return Ok(Flow::Continue) };
        let reply = match n {
            Some(n) => match drop.get(n) {
                Ok(m) => codec::ok(&format!("{n} {}", drop.unique_id(m))),
                Err(e) => e,
            },
            None => {
                let lines: Vec<String> = drop.live().map(|(n, m)| format!("{n} {}", drop.unique_id(m))).collect();
                codec::multiline("unique-id listing follows", lines)
            }
        };
        write_flow(out, reply).await
    }

    /// RFC 1939 §5 DELE: only marks; UPDATE removes.
    pub(super) async fn dele<W: AsyncWrite + Unpin + Send>(&mut self, n: MsgNum, out: &mut W) -> io::Result<Flow> {
        let Some(drop) = self.drop_mut() else { return Ok(Flow::Continue) };
        let reply = match drop.get(n) {
            Ok(_) => {
                drop.marked.insert(n);
                drop.ahead.held.remove(&n.index());
                codec::ok(&format!("message {n} deleted"))
            }
            Err(e) => e,
        };
        write_flow(out, reply).await
    }

    /// RFC 1939 §5 RSET: unmark everything.
    pub(super) async fn rset<W: AsyncWrite + Unpin + Send>(&mut self, out: &mut W) -> io::Result<Flow> {
        let Some(drop) = self.drop_mut() else { return Ok(Flow::Continue) };
        drop.marked.clear();
        let (n, size) = drop.totals();
        write_flow(out, codec::ok(&format!("maildrop has {n} messages ({size} octets)"))).await
    }

    /// RFC 1939 §5 RETR. The message streams from storage to the client,
    /// stuffed on the fly. The message becomes `\Seen` in the IMAP view
    /// when the session ends with QUIT (as Dovecot does; TOP leaves it
    /// unseen): one flag update for the session instead of a committed
    /// write per message retrieved.
    pub(super) async fn retr<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        n: MsgNum,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let State::Transaction { account, drop, .. } = &mut self.state else { return Ok(Flow::Continue) };
        let (uid, size, seen) = match drop.get(n) {
            Ok(m) => (m.uid, m.size, m.seen),
            Err(e) => return write_flow(out, e).await,
        };
        let status = format!("{size} octets");
        let flow = match drop.read_ahead(n, account, store).await {
            Some(data) => {
                let stream: ByteStream = Box::pin(futures::stream::once(async move { Ok(data) }));
                send_stream(Ok(stream), uid, &status, Stuffer::retr(), out).await?
            }
            None => {
                let which = Which { account: account.clone(), mailbox_id: drop.mailbox_id, uid, length: None };
                send_message(store, which, &status, Stuffer::retr(), out).await?
            }
        };
        if flow == Flow::Continue && !seen {
            drop.retrieved.insert(uid);
            if let Some(m) = drop.messages.get_mut(n.index()) {
                m.seen = true;
            }
        }
        Ok(flow)
    }

    /// RFC 1939 §7 TOP msg n: the header, the blank line and n body lines.
    pub(super) async fn top<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        n: MsgNum,
        lines: u32,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let State::Transaction { account, drop, .. } = &mut self.state else { return Ok(Flow::Continue) };
        let (uid, header_size) = match drop.get(n) {
            Ok(m) => (m.uid, m.header_size),
            Err(e) => return write_flow(out, e).await,
        };
        // TOP n 0 needs the header only: ask for just that (the stuffer
        // still finds the blank line itself, so a wrong size cannot matter).
        let length = (lines == 0 && header_size > 0).then_some(header_size);
        let stuffer = Stuffer::top(lines);
        let which = Which { account: account.clone(), mailbox_id: drop.mailbox_id, uid, length };
        send_message(store, which, "top of message follows", stuffer, out).await
    }
}

/// The message (or its first `length` octets) to send.
struct Which {
    account: Arc<Account>,
    mailbox_id: i64,
    uid: u32,
    length: Option<u64>,
}

/// Storage going quiet this long in the middle of a message counts as failed.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

async fn next_chunk(stream: &mut ByteStream) -> Option<Result<Bytes, StoreError>> {
    match tokio::time::timeout(CHUNK_TIMEOUT, stream.next()).await {
        Ok(chunk) => chunk,
        Err(_) => Some(Err(StoreError::Unavailable("message stream stalled".into()))),
    }
}

/// Stream a message as a multi-line response. Storage errors before the
/// first byte become `-ERR [SYS/TEMP]`; after `+OK` was sent the response
/// cannot be completed honestly, so the connection is closed (without UPDATE).
async fn send_message<S: MailStore, W: AsyncWrite + Unpin + Send>(
    store: &S,
    which: Which,
    status: &str,
    stuffer: Stuffer,
    out: &mut W,
) -> io::Result<Flow> {
    let stream = store.fetch(&which.account, which.mailbox_id, which.uid, which.length).await;
    send_stream(stream, which.uid, status, stuffer, out).await
}

/// The multi-line response of `send_message`, from a stream already asked for.
async fn send_stream<W: AsyncWrite + Unpin + Send>(
    stream: Result<ByteStream, StoreError>,
    uid: u32,
    status: &str,
    mut stuffer: Stuffer,
    out: &mut W,
) -> io::Result<Flow> {
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => return write_flow(out, store_error(&e)).await,
    };
    let first = match next_chunk(&mut stream).await {
        Some(Err(e)) => return write_flow(out, store_error(&e)).await,
        other => other,
    };
    out.write_all(codec::ok(status).as_bytes()).await?;
    let mut buf = Vec::new();
    let mut pieces = Vec::new();
    let mut next = first;
    while let Some(chunk) = next {
        match chunk {
            Ok(data) if stuffer.is_retr() => {
                // Written as pieces of the chunk: no stuffed copy first.
                stuffer.retr_pieces(&data, &mut pieces);
                for piece in &pieces {
                    out.write_all(piece.of(&data)).await?;
                }
            }
            Ok(data) => {
                buf.clear();
                stuffer.push(&data, &mut buf);
                out.write_all(&buf).await?;
            }
            Err(e) => {
                tracing::warn!(error = %e, uid, "message stream broke off; closing the connection");
                return Ok(Flow::Close);
            }
        }
        if stuffer.done() {
            break; // TOP has what it needs; dropping the stream cancels it.
        }
        next = next_chunk(&mut stream).await;
    }
    buf.clear();
    stuffer.finish(&mut buf);
    out.write_all(&buf).await?;
    Ok(Flow::Continue)
}
