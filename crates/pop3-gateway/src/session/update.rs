//! UPDATE state (RFC 1939 §6): QUIT in TRANSACTION flags what RETR
//! retrieved as `\Seen`, removes the messages marked by DELE, releases the
//! maildrop and ends the session. `+OK` is sent only once storage committed
//! the expunge; if it fails nothing is removed and the client is told to
//! try again later.

use std::io;

use tokio::io::AsyncWrite;

use super::{Flow, Session, State, write};
use crate::codec::{self, RespCode};
use crate::store::MailStore;

impl Session {
    pub(super) async fn quit<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let State::Transaction { account, drop, lease } = std::mem::replace(&mut self.state, State::Done) else {
            return Ok(Flow::Close);
        };
        let uids: Vec<u32> = drop.marked.iter().filter_map(|n| drop.messages.get(n.index())).map(|m| m.uid).collect();
        let seen: Vec<u32> = drop.retrieved.iter().copied().filter(|u| !uids.contains(u)).collect();
        if !seen.is_empty()
            && !lease.is_lost()
            && let Err(e) = store.mark_seen(&account, drop.mailbox_id, &seen).await
        {
            // The client has its messages; a missing flag is not worth an error.
            tracing::warn!(error = %e, "setting \\Seen at QUIT failed");
        }
        let reply = if uids.is_empty() {
            None
        } else if lease.is_lost() {
            // Our lease lapsed and another session has the maildrop now.
            Some(codec::err(Some(RespCode::InUse), "maildrop lock lost, no messages removed"))
        } else {
            match store.expunge(&account, drop.mailbox_id, &uids).await {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "expunge at QUIT failed; nothing removed");
                    // RFC 1939 §6: "-ERR some deleted messages not removed".
                    Some(codec::err(Some(RespCode::SysTemp), "some deleted messages not removed, try again later"))
                }
            }
        };
        lease.release(store).await;
        let reply = reply.unwrap_or_else(|| {
            let left = drop.messages.len() - uids.len();
            codec::ok(&format!("Mailfleet POP3 server signing off ({left} messages left)"))
        });
        write(out, reply).await?;
        Ok(Flow::Close)
    }
}
