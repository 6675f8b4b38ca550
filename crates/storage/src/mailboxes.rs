//! Mailboxes service: the per-account mailbox tree (separator "/", INBOX
//! case-insensitive, RFC 3501 §5.1), status counters, \Recent claiming on
//! SELECT (RFC 3501 §2.3.2), create/rename/delete/subscribe and quota.
//!
//! Structural changes (create, rename, delete) lock the account row first,
//! which serialises them per account and keeps the lock order of the
//! Messages service (account, then mailboxes by ascending id).

use std::sync::Arc;

use mail_types::{HIERARCHY_SEPARATOR, MailboxName};
use mailfleet_proto::storage::v1 as pb;
use pb::mail_event::Kind;
use pb::mailboxes_server::Mailboxes;
use sqlx::{PgConnection, Row};
use tonic::{Request, Response, Status};

use crate::Store;
use crate::error::{StorageError, StorageResult, is_unique_violation};
use crate::messages::{
    MAILBOX_COLUMNS, MailboxRow, add_usage, allocate_uids, bump_modseq, lock_account, mailbox_by_name, u32_of, u64_of,
};

pub struct MailboxesService(pub Arc<Store>);

/// RFC 6154 §2 special-use attributes a mailbox may carry.
const SPECIAL_USE: [&str; 7] = ["\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"];

fn normalize_special_use(given: &[String]) -> StorageResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for g in given {
        let attr = SPECIAL_USE
            .iter()
            .find(|s| s.eq_ignore_ascii_case(g))
            .ok_or_else(|| StorageError::InvalidArgument(format!("unknown special-use attribute {g:?} (RFC 6154)")))?;
        if !out.iter().any(|o| o == attr) {
            out.push((*attr).to_string());
        }
    }
    Ok(out)
}

async fn require_account(conn: &mut PgConnection, account_id: i64) -> StorageResult<()> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)")
        .bind(account_id)
        .fetch_one(conn)
        .await?;
    if exists { Ok(()) } else { Err(StorageError::NotFound(format!("no account {account_id}"))) }
}

/// Counters of one mailbox (RFC 3501 §6.3.10 STATUS items and SELECT data).
async fn fill_status(conn: &mut PgConnection, mb: &MailboxRow, info: &mut pb::MailboxInfo) -> StorageResult<()> {
    let row = sqlx::query(
        "SELECT count(*) AS messages,
                count(*) FILTER (WHERE NOT ('\\Seen' = ANY(flags))) AS unseen,
                count(*) FILTER (WHERE uid >= $2) AS recent,
                coalesce(sum(size), 0)::bigint AS size,
                min(uid) FILTER (WHERE NOT ('\\Seen' = ANY(flags))) AS first_unseen
         FROM messages WHERE mailbox_id = $1",
    )
    .bind(mb.id)
    .bind(mb.recent_floor)
    .fetch_one(&mut *conn)
    .await?;
    info.messages = u32_of(row.get("messages"));
    info.unseen = u32_of(row.get("unseen"));
    info.recent = u32_of(row.get("recent"));
    info.size = u64_of(row.get("size"));
    info.first_unseen_uid = row.get::<Option<i64>, _>("first_unseen").map(u32_of).unwrap_or(0);
    info.keywords =
        sqlx::query_scalar("SELECT DISTINCT f FROM messages, unnest(flags) AS f WHERE mailbox_id = $1 ORDER BY f")
            .bind(mb.id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(())
}

/// The basic info of a mailbox (no counters).
async fn basic_info(conn: &mut PgConnection, mb: &MailboxRow) -> StorageResult<pb::MailboxInfo> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE account_id = $1 AND name = $2) AS subscribed,
                EXISTS (SELECT 1 FROM mailboxes WHERE account_id = $1 AND starts_with(name, $2 || '/')) AS has_children",
    )
    .bind(mb.account_id)
    .bind(&mb.name)
    .fetch_one(conn)
    .await?;
    Ok(pb::MailboxInfo {
        id: mb.id,
        name: mb.name.clone(),
        special_use: mb.special_use.clone(),
        subscribed: row.get("subscribed"),
        uid_validity: u32_of(mb.uid_validity),
        uid_next: u32_of(mb.uid_next),
        highest_modseq: u64_of(mb.highest_modseq),
        has_children: row.get("has_children"),
        ..Default::default()
    })
}

fn parse_name(name: &str) -> StorageResult<MailboxName> {
    Ok(MailboxName::parse(name)?)
}

/// Create `name`'s missing ancestors (RFC 3501 §6.3.3: "the server SHOULD
/// create any superior hierarchical names that are needed"). Returns the
/// created (id, name) pairs.
async fn create_ancestors(
    conn: &mut PgConnection,
    account_id: i64,
    name: &MailboxName,
) -> StorageResult<Vec<(i64, String)>> {
    let mut created = Vec::new();
    for a in name.ancestors() {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO mailboxes (account_id, name) VALUES ($1, $2) ON CONFLICT (account_id, name) DO NOTHING RETURNING id",
        )
        .bind(account_id)
        .bind(a.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = id {
            created.push((id, a.to_string()));
        }
    }
    Ok(created)
}

impl Store {
    pub async fn list_mailboxes(&self, req: &pb::ListMailboxesRequest) -> StorageResult<pb::ListMailboxesResponse> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        require_account(&mut tx, req.account_id).await?;
        let sql = format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = $1 ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(req.account_id).fetch_all(&mut *tx).await?;
        let mailboxes: Vec<MailboxRow> = rows.iter().map(MailboxRow::from_row).collect();
        let subscriptions: Vec<String> =
            sqlx::query_scalar("SELECT name FROM subscriptions WHERE account_id = $1 ORDER BY name")
                .bind(req.account_id)
                .fetch_all(&mut *tx)
                .await?;
        let mut out = Vec::with_capacity(mailboxes.len());
        for mb in &mailboxes {
            let child_prefix = format!("{}{HIERARCHY_SEPARATOR}", mb.name);
            let mut info = pb::MailboxInfo {
                id: mb.id,
                name: mb.name.clone(),
                special_use: mb.special_use.clone(),
                subscribed: subscriptions.contains(&mb.name),
                uid_validity: u32_of(mb.uid_validity),
                uid_next: u32_of(mb.uid_next),
                highest_modseq: u64_of(mb.highest_modseq),
                has_children: mailboxes.iter().any(|c| c.name.starts_with(&child_prefix)),
                ..Default::default()
            };
            if req.with_status {
                fill_status(&mut tx, mb, &mut info).await?;
            }
            out.push(info);
        }
        tx.commit().await?;
        Ok(pb::ListMailboxesResponse { mailboxes: out, subscriptions })
    }

    /// SELECT/EXAMINE/STATUS data. With `select`, the \Recent messages are
    /// claimed for this caller in the same transaction (RFC 3501 §2.3.2:
    /// "the flag is only set in one session").
    pub async fn get_mailbox(&self, req: &pb::GetMailboxRequest) -> StorageResult<pb::MailboxInfo> {
        let name = parse_name(&req.name)?;
        let mut conn = self.pool.acquire().await?;
        let Some(mb) = mailbox_by_name(&mut conn, req.account_id, name.as_str(), false).await? else {
            require_account(&mut conn, req.account_id).await?;
            return Err(StorageError::NotFound(format!("no mailbox {name}")));
        };
        let mut info = basic_info(&mut conn, &mb).await?;
        fill_status(&mut conn, &mb, &mut info).await?;
        if req.select {
            // RFC 3501 §2.3.2: SELECT claims the \Recent messages. Only when
            // there are any, and in one statement, so the row lock lasts
            // that statement: many sessions selecting one mailbox (a phone,
            // a laptop, a webmail) do not queue behind each other.
            let mut recent: Vec<i64> = Vec::new();
            if mb.recent_floor < mb.uid_next {
                let claimed: Option<(i64, i64)> = sqlx::query_as(
                    "UPDATE mailboxes m SET recent_floor = m.uid_next
                     FROM (SELECT id, recent_floor FROM mailboxes WHERE id = $1 FOR UPDATE) old
                     WHERE m.id = old.id AND old.recent_floor < m.uid_next
                     RETURNING old.recent_floor, m.uid_next",
                )
                .bind(mb.id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some((lo, hi)) = claimed {
                    recent = sqlx::query_scalar(
                        "SELECT uid FROM messages WHERE mailbox_id = $1 AND uid >= $2 AND uid < $3 ORDER BY uid",
                    )
                    .bind(mb.id)
                    .bind(lo)
                    .bind(hi)
                    .fetch_all(&mut *conn)
                    .await?;
                }
            }
            info.recent = recent.len() as u32;
            info.recent_uids = recent.into_iter().map(u32_of).collect();
        }
        Ok(info)
    }

    async fn mailbox_info_by_name(&self, account_id: i64, name: &str) -> StorageResult<pb::MailboxInfo> {
        let mut conn = self.pool.acquire().await?;
        let mb = mailbox_by_name(&mut conn, account_id, name, false)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no mailbox {name}")))?;
        let mut info = basic_info(&mut conn, &mb).await?;
        fill_status(&mut conn, &mb, &mut info).await?;
        Ok(info)
    }

    pub async fn create_mailbox(&self, req: &pb::CreateMailboxRequest) -> StorageResult<pb::MailboxInfo> {
        let name = parse_name(&req.name)?;
        let special_use = normalize_special_use(&req.special_use)?;
        let mut tx = self.pool.begin().await?;
        lock_account(&mut tx, req.account_id)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no account {}", req.account_id)))?;
        // RFC 3501 §6.3.3: creating an existing name (INBOX always exists) fails.
        let exists = || StorageError::AlreadyExists(format!("mailbox {name} already exists"));
        if mailbox_by_name(&mut tx, req.account_id, name.as_str(), false).await?.is_some() {
            return Err(exists());
        }
        let mut created = create_ancestors(&mut tx, req.account_id, &name).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO mailboxes (account_id, name, special_use) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(req.account_id)
        .bind(name.as_str())
        .bind(&special_use)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| if is_unique_violation(&e) { exists() } else { e.into() })?;
        created.push((id, name.to_string()));
        tx.commit().await?;
        for (mailbox_id, name) in created {
            self.events.publish(req.account_id, 0, Kind::MailboxCreated(pb::MailboxCreated { mailbox_id, name })).await;
        }
        self.mailbox_info_by_name(req.account_id, name.as_str()).await
    }

    /// RFC 3501 §6.3.5 RENAME: children move with the mailbox and keep their
    /// UIDVALIDITY. Renaming INBOX moves its messages into a new mailbox (new
    /// UIDs there) and leaves INBOX empty; INBOX's children stay.
    pub async fn rename_mailbox(&self, req: &pb::RenameMailboxRequest) -> StorageResult<pb::MailboxInfo> {
        let from = parse_name(&req.from)?;
        let to = parse_name(&req.to)?;
        let mut tx = self.pool.begin().await?;
        lock_account(&mut tx, req.account_id)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no account {}", req.account_id)))?;
        let source = mailbox_by_name(&mut tx, req.account_id, from.as_str(), true)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no mailbox {from}")))?;
        let target_exists = || StorageError::AlreadyExists(format!("mailbox {to} already exists"));
        if mailbox_by_name(&mut tx, req.account_id, to.as_str(), false).await?.is_some() {
            return Err(target_exists());
        }
        if !from.is_inbox() && to.as_str().starts_with(&format!("{from}{HIERARCHY_SEPARATOR}")) {
            return Err(StorageError::InvalidArgument(format!("cannot rename {from} into its own child {to}")));
        }
        let mut created = create_ancestors(&mut tx, req.account_id, &to).await?;

        if from.is_inbox() {
            let inbox_uids: Vec<i64> =
                sqlx::query_scalar("SELECT uid FROM messages WHERE mailbox_id = $1 ORDER BY uid")
                    .bind(source.id)
                    .fetch_all(&mut *tx)
                    .await?;
            let new_id: i64 =
                sqlx::query_scalar("INSERT INTO mailboxes (account_id, name) VALUES ($1, $2) RETURNING id")
                    .bind(req.account_id)
                    .bind(to.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| if is_unique_violation(&e) { target_exists() } else { e.into() })?;
            created.push((new_id, to.to_string()));
            let mut expunged_modseq = None;
            if !inbox_uids.is_empty() {
                let (first_uid, modseq) = allocate_uids(&mut tx, new_id, inbox_uids.len() as i64).await?;
                sqlx::query(
                    "UPDATE messages m SET mailbox_id = $2, uid = $3 + s.rn - 1, modseq = $4
                     FROM (SELECT uid, row_number() OVER (ORDER BY uid) AS rn FROM messages WHERE mailbox_id = $1) s
                     WHERE m.mailbox_id = $1 AND m.uid = s.uid",
                )
                .bind(source.id)
                .bind(new_id)
                .bind(first_uid)
                .bind(modseq)
                .execute(&mut *tx)
                .await?;
                let inbox_modseq = bump_modseq(&mut tx, source.id).await?;
                sqlx::query(
                    "INSERT INTO expunged (mailbox_id, uid, modseq) SELECT $1, u, $3 FROM unnest($2::bigint[]) AS u",
                )
                .bind(source.id)
                .bind(&inbox_uids)
                .bind(inbox_modseq)
                .execute(&mut *tx)
                .await?;
                expunged_modseq = Some(inbox_modseq);
            }
            tx.commit().await?;
            for (mailbox_id, name) in created {
                self.events
                    .publish(req.account_id, 0, Kind::MailboxCreated(pb::MailboxCreated { mailbox_id, name }))
                    .await;
            }
            if let Some(modseq) = expunged_modseq {
                let uids = inbox_uids.into_iter().map(u32_of).collect();
                self.events
                    .publish(
                        req.account_id,
                        u64_of(modseq),
                        Kind::Expunged(pb::MessagesExpunged { mailbox_id: source.id, uids }),
                    )
                    .await;
            }
            return self.mailbox_info_by_name(req.account_id, to.as_str()).await;
        }

        let moved = sqlx::query(
            "SELECT id, name FROM mailboxes WHERE account_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))
             ORDER BY id FOR UPDATE",
        )
        .bind(req.account_id)
        .bind(from.as_str())
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE mailboxes SET name = $3 || substr(name, length($2) + 1)
             WHERE account_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))",
        )
        .bind(req.account_id)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| if is_unique_violation(&e) { target_exists() } else { StorageError::from(e) })?;
        // Subscriptions follow the mailboxes they name.
        sqlx::query(
            "INSERT INTO subscriptions (account_id, name)
             SELECT account_id, $3 || substr(name, length($2) + 1) FROM subscriptions
             WHERE account_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))
             ON CONFLICT DO NOTHING",
        )
        .bind(req.account_id)
        .bind(from.as_str())
        .bind(to.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM subscriptions WHERE account_id = $1 AND (name = $2 OR starts_with(name, $2 || '/'))")
            .bind(req.account_id)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for (mailbox_id, name) in created {
            self.events.publish(req.account_id, 0, Kind::MailboxCreated(pb::MailboxCreated { mailbox_id, name })).await;
        }
        for row in &moved {
            let old_name: String = row.get("name");
            let new_name = format!("{to}{}", &old_name[from.as_str().len()..]);
            self.events
                .publish(
                    req.account_id,
                    0,
                    Kind::MailboxRenamed(pb::MailboxRenamed { mailbox_id: row.get("id"), old_name, new_name }),
                )
                .await;
        }
        self.mailbox_info_by_name(req.account_id, to.as_str()).await
    }

    /// RFC 3501 §6.3.4 DELETE. INBOX cannot be deleted. A mailbox with
    /// children is refused (FAILED_PRECONDITION "has children"), rather than
    /// turned into a \Noselect placeholder: delete the children first. The
    /// messages go with it and the account's usage drops.
    pub async fn delete_mailbox(&self, req: &pb::DeleteMailboxRequest) -> StorageResult<()> {
        let name = parse_name(&req.name)?;
        if name.is_inbox() {
            return Err(StorageError::FailedPrecondition("INBOX cannot be deleted".into()));
        }
        let mut tx = self.pool.begin().await?;
        lock_account(&mut tx, req.account_id)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no account {}", req.account_id)))?;
        let mb = mailbox_by_name(&mut tx, req.account_id, name.as_str(), true)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no mailbox {name}")))?;
        let has_children: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM mailboxes WHERE account_id = $1 AND starts_with(name, $2 || '/'))",
        )
        .bind(req.account_id)
        .bind(name.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if has_children {
            return Err(StorageError::FailedPrecondition(format!("mailbox {name} has children; delete them first")));
        }
        let (bytes, count): (i64, i64) =
            sqlx::query_as("SELECT coalesce(sum(size), 0)::bigint, count(*) FROM messages WHERE mailbox_id = $1")
                .bind(mb.id)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM mailboxes WHERE id = $1").bind(mb.id).execute(&mut *tx).await?;
        add_usage(&mut tx, req.account_id, -bytes, -count).await?;
        tx.commit().await?;
        self.events
            .publish(req.account_id, 0, Kind::MailboxDeleted(pb::MailboxDeleted { mailbox_id: mb.id, name: mb.name }))
            .await;
        Ok(())
    }

    /// RFC 3501 §6.3.6: a subscription may name a mailbox that does not exist.
    pub async fn set_subscribed(&self, req: &pb::SetSubscribedRequest) -> StorageResult<()> {
        let name = parse_name(&req.name)?;
        let mut conn = self.pool.acquire().await?;
        require_account(&mut conn, req.account_id).await?;
        if req.subscribed {
            sqlx::query("INSERT INTO subscriptions (account_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(req.account_id)
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?;
        } else {
            sqlx::query("DELETE FROM subscriptions WHERE account_id = $1 AND name = $2")
                .bind(req.account_id)
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    pub async fn get_quota(&self, req: &pb::GetQuotaRequest) -> StorageResult<pb::QuotaInfo> {
        let account = self.account_by_id(req.account_id).await?;
        Ok(pb::QuotaInfo {
            used_bytes: account.used_bytes,
            limit_bytes: account.quota_bytes,
            message_count: account.message_count,
        })
    }
}

#[tonic::async_trait]
impl Mailboxes for MailboxesService {
    async fn list_mailboxes(
        &self,
        req: Request<pb::ListMailboxesRequest>,
    ) -> Result<Response<pb::ListMailboxesResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.list_mailboxes(req.get_ref()).await?))
    }
    async fn get_mailbox(&self, req: Request<pb::GetMailboxRequest>) -> Result<Response<pb::MailboxInfo>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.get_mailbox(req.get_ref()).await?))
    }
    async fn create_mailbox(
        &self,
        req: Request<pb::CreateMailboxRequest>,
    ) -> Result<Response<pb::MailboxInfo>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.create_mailbox(req.get_ref()).await?))
    }
    async fn rename_mailbox(
        &self,
        req: Request<pb::RenameMailboxRequest>,
    ) -> Result<Response<pb::MailboxInfo>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.rename_mailbox(req.get_ref()).await?))
    }
    async fn delete_mailbox(
        &self,
        req: Request<pb::DeleteMailboxRequest>,
    ) -> Result<Response<pb::DeleteMailboxResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        self.0.delete_mailbox(req.get_ref()).await?;
        Ok(Response::new(pb::DeleteMailboxResponse {}))
    }
    async fn set_subscribed(
        &self,
        req: Request<pb::SetSubscribedRequest>,
    ) -> Result<Response<pb::SetSubscribedResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        self.0.set_subscribed(req.get_ref()).await?;
        Ok(Response::new(pb::SetSubscribedResponse {}))
    }
    async fn get_quota(&self, req: Request<pb::GetQuotaRequest>) -> Result<Response<pb::QuotaInfo>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        Ok(Response::new(self.0.get_quota(req.get_ref()).await?))
    }
}
