//! The directory: domains, accounts, aliases, catch-alls; authentication and
//! recipient resolution.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use mail_types::EmailAddress;
use mailfleet_proto::storage::v1 as pb;
use mailfleet_proto::storage::v1::directory_server::Directory;
use md5::{Digest, Md5};
use pb::resolve_recipient_response::Kind;
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::Store;
use crate::error::{StorageError, StorageResult};
use crate::password;

pub struct DirectoryService(pub Arc<Store>);

/// Columns selected wherever an `Account` message is built.
pub(crate) const ACCOUNT_COLUMNS: &str =
    "id, address, disabled, quota_bytes, used_bytes, apop_secret IS NOT NULL AS has_apop, message_count";

pub(crate) fn account_from_row(row: &sqlx::postgres::PgRow) -> pb::Account {
    pb::Account {
        id: row.get("id"),
        address: row.get("address"),
        disabled: row.get("disabled"),
        quota_bytes: row.get::<i64, _>("quota_bytes").max(0) as u64,
        used_bytes: row.get::<i64, _>("used_bytes").max(0) as u64,
        has_apop_secret: row.get("has_apop"),
        message_count: row.get::<i64, _>("message_count").max(0) as u64,
    }
}

/// A hash to verify against when the user does not exist, so a failed login
/// takes as long for an unknown user as for a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| password::hash("mailfleet-timing-equaliser").unwrap_or_default())
}

impl Store {
    pub async fn account_by_address(&self, address: &str) -> StorageResult<Option<pb::Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE address = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(address).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(account_from_row))
    }

    pub async fn account_by_id(&self, id: i64) -> StorageResult<pb::Account> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(account_from_row).ok_or_else(|| StorageError::NotFound(format!("no account {id}")))
    }

    /// A password login from `client` (the gateway's client; `None`:
    /// unknown), through the auth throttle: refused unchecked when the
    /// address or the account failed too often lately, counted when it fails.
    pub async fn authenticate(
        &self,
        username: &str,
        password_text: &str,
        client: Option<IpAddr>,
    ) -> StorageResult<pb::Account> {
        let attempt = self.auth_throttle.admit(&self.pool, client, username).await?;
        let result = self.check_password(username, password_text).await;
        self.settle(attempt, result).await
    }

    /// Count a failed attempt, forgive on success; the attempt's own result otherwise.
    async fn settle(
        &self,
        attempt: crate::auth_throttle::Admitted,
        result: StorageResult<pb::Account>,
    ) -> StorageResult<pb::Account> {
        match &result {
            Err(StorageError::AuthFailed | StorageError::Disabled) => {
                self.auth_throttle.failed(&self.pool, attempt).await?
            }
            Ok(_) => self.auth_throttle.succeeded(&self.pool, attempt).await?,
            Err(_) => {}
        }
        result
    }

    async fn check_password(&self, username: &str, password_text: &str) -> StorageResult<pb::Account> {
        let address = EmailAddress::parse(username).map_err(|_| StorageError::AuthFailed)?;
        let row = sqlx::query("SELECT id, password_hash, disabled FROM accounts WHERE address = $1")
            .bind(address.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let (id, hash, disabled): (i64, String, bool) = match row {
            Some(r) => (r.get("id"), r.get("password_hash"), r.get("disabled")),
            None => (0, dummy_hash().to_string(), false),
        };
        // argon2 is deliberately slow: keep it off the async workers.
        let ok = password::verify_async(password_text.to_string(), hash).await?;
        if !ok || id == 0 {
            return Err(StorageError::AuthFailed);
        }
        if disabled {
            return Err(StorageError::Disabled);
        }
        self.account_by_id(id).await
    }

    /// RFC 1939 §7: digest = MD5(timestamp || secret), in lowercase hex;
    /// through the auth throttle like a password.
    pub async fn authenticate_apop(
        &self,
        username: &str,
        timestamp: &str,
        digest: &str,
        client: Option<IpAddr>,
    ) -> StorageResult<pb::Account> {
        let attempt = self.auth_throttle.admit(&self.pool, client, username).await?;
        let result = self.check_apop(username, timestamp, digest).await;
        self.settle(attempt, result).await
    }

    async fn check_apop(&self, username: &str, timestamp: &str, digest: &str) -> StorageResult<pb::Account> {
        let address = EmailAddress::parse(username).map_err(|_| StorageError::AuthFailed)?;
        let row = sqlx::query("SELECT id, apop_secret, disabled FROM accounts WHERE address = $1")
            .bind(address.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Err(StorageError::AuthFailed);
        };
        let Some(secret): Option<String> = row.get("apop_secret") else {
            return Err(StorageError::AuthFailed);
        };
        let mut md5 = Md5::new();
        md5.update(timestamp.as_bytes());
        md5.update(secret.as_bytes());
        let expected = hex::encode(md5.finalize());
        if !constant_time_eq(expected.as_bytes(), digest.trim().to_ascii_lowercase().as_bytes()) {
            return Err(StorageError::AuthFailed);
        }
        if row.get::<bool, _>("disabled") {
            return Err(StorageError::Disabled);
        }
        self.account_by_id(row.get("id")).await
    }

    pub async fn resolve_recipient(&self, input: &str) -> StorageResult<pb::ResolveRecipientResponse> {
        let address = EmailAddress::parse(input)?;
        let canonical = address.without_subaddress();
        // The domain and an account with exactly this address in one
        // statement: the common case, one round trip.
        let sql = format!(
            "SELECT d.id AS domain_id, d.catch_all_account_id, a.* FROM domains d
             LEFT JOIN LATERAL (SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE address = $2) a ON true
             WHERE d.name = $1"
        );
        let domain = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(address.domain())
            .bind(address.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(domain) = domain else {
            return Ok(pb::ResolveRecipientResponse {
                kind: Kind::NotLocal as i32,
                accounts: vec![],
                canonical: canonical.to_string(),
            });
        };
        let domain_id: i64 = domain.get("domain_id");
        let catch_all: Option<i64> = domain.get("catch_all_account_id");
        let exact = domain.get::<Option<i64>, _>("id").is_some().then(|| account_from_row(&domain));

        // The full address first (a local part may really contain '+'),
        // then the address without its sub-address.
        let mut accounts = match exact {
            Some(account) => vec![account],
            None => self.aliased_accounts(&address.to_string()).await?,
        };
        if accounts.is_empty() && canonical != address {
            accounts = self.accounts_for_address(&canonical.to_string()).await?;
        }
        if accounts.is_empty() && canonical.is_postmaster() {
            // RFC 5321 §4.5.1: postmaster must always be deliverable. Without
            // an explicit account or alias it goes to the catch-all, else to
            // the domain's first account.
            let fallback: Option<i64> = match catch_all {
                Some(id) => Some(id),
                None => {
                    sqlx::query_scalar(
                        "SELECT id FROM accounts WHERE domain_id = $1 AND NOT disabled ORDER BY id LIMIT 1",
                    )
                    .bind(domain_id)
                    .fetch_optional(&self.pool)
                    .await?
                }
            };
            if let Some(id) = fallback {
                accounts.push(self.account_by_id(id).await?);
            }
        }
        if accounts.is_empty()
            && let Some(id) = catch_all
        {
            accounts.push(self.account_by_id(id).await?);
        }
        // A disabled account receives nothing, as if it did not exist.
        accounts.retain(|a| !a.disabled);
        let kind = if accounts.is_empty() { Kind::UnknownUser } else { Kind::Local };
        Ok(pb::ResolveRecipientResponse { kind: kind as i32, accounts, canonical: canonical.to_string() })
    }

    /// The account with this address, or the targets of the alias.
    async fn accounts_for_address(&self, address: &str) -> StorageResult<Vec<pb::Account>> {
        if let Some(account) = self.account_by_address(address).await? {
            return Ok(vec![account]);
        }
        self.aliased_accounts(address).await
    }

    /// The accounts an alias with this address leads to.
    async fn aliased_accounts(&self, address: &str) -> StorageResult<Vec<pb::Account>> {
        let rows = sqlx::query(
            "SELECT a.id, a.address, a.disabled, a.quota_bytes, a.used_bytes,
                    a.apop_secret IS NOT NULL AS has_apop, a.message_count
             FROM accounts a
             JOIN alias_targets t ON t.account_id = a.id
             JOIN aliases al ON al.id = t.alias_id
             WHERE al.address = $1 ORDER BY a.id",
        )
        .bind(address)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(account_from_row).collect())
    }

    /// May this account use `address` as its sender? Its own address (any
    /// sub-address of it) or an alias delivering to it.
    pub async fn can_send_as(&self, account_id: i64, input: &str) -> StorageResult<bool> {
        let Ok(address) = EmailAddress::parse(input) else {
            return Ok(false);
        };
        let canonical = address.without_subaddress().to_string();
        let allowed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1 AND address = ANY($2))
                 OR EXISTS (SELECT 1 FROM aliases al JOIN alias_targets t ON t.alias_id = al.id
                            WHERE t.account_id = $1 AND al.address = ANY($2))",
        )
        .bind(account_id)
        .bind(vec![address.to_string(), canonical])
        .fetch_one(&self.pool)
        .await?;
        Ok(allowed)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The address failures count under (IPv6 by /64); `None` when the gateway
/// did not say.
fn client_source(client_ip: &str) -> Option<IpAddr> {
    client_ip.parse().ok().map(mailfleet_runtime::listener::source_of)
}

#[tonic::async_trait]
impl Directory for DirectoryService {
    async fn authenticate(&self, req: Request<pb::AuthenticateRequest>) -> Result<Response<pb::SessionToken>, Status> {
        let r = req.into_inner();
        let account = self.0.authenticate(&r.username, &r.password, client_source(&r.client_ip)).await?;
        Ok(Response::new(self.0.sessions.issue(account)))
    }

    async fn authenticate_apop(
        &self,
        req: Request<pb::AuthenticateApopRequest>,
    ) -> Result<Response<pb::SessionToken>, Status> {
        let r = req.into_inner();
        let client = client_source(&r.client_ip);
        let account = self.0.authenticate_apop(&r.username, &r.timestamp, &r.digest, client).await?;
        Ok(Response::new(self.0.sessions.issue(account)))
    }

    /// Only a valid, unexpired token renews, and only while its account
    /// exists and is enabled: disabling an account ends its sessions within
    /// one token lifetime.
    async fn renew_session(&self, req: Request<pb::RenewSessionRequest>) -> Result<Response<pb::SessionToken>, Status> {
        let claims = self.0.sessions.claims(&req)?;
        let account = match self.0.account_by_id(claims.account_id).await {
            Ok(account) if !account.disabled => account,
            Ok(_) => return Err(StorageError::Disabled.into()),
            Err(StorageError::NotFound(_)) => return Err(Status::permission_denied("the account no longer exists")),
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(self.0.sessions.issue(account)))
    }

    async fn resolve_recipient(
        &self,
        req: Request<pb::ResolveRecipientRequest>,
    ) -> Result<Response<pb::ResolveRecipientResponse>, Status> {
        Ok(Response::new(self.0.resolve_recipient(&req.get_ref().address).await?))
    }

    /// Token-scoped: an account's own session only (by address too, so the
    /// answer is checked after the look-up; NOT_FOUND for an unknown address
    /// tells no more than ResolveRecipient does).
    async fn get_account(&self, req: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        use pb::get_account_request::Key;
        let claims = self.0.sessions.claims(&req)?;
        if let Some(Key::Id(id)) = req.get_ref().key {
            claims.require(id).map_err(|e| self.0.sessions.refuse(&req, e))?;
        }
        let account = match req.get_ref().key.clone() {
            Some(Key::Id(id)) => self.0.account_by_id(id).await?,
            Some(Key::Address(a)) => {
                let address = EmailAddress::parse(&a).map_err(StorageError::from)?;
                self.0
                    .account_by_address(&address.to_string())
                    .await?
                    .ok_or_else(|| StorageError::NotFound(format!("no account {address}")))?
            }
            None => return Err(Status::invalid_argument("id or address is required")),
        };
        claims.require(account.id).map_err(|e| self.0.sessions.refuse(&req, e))?;
        Ok(Response::new(account))
    }

    /// A directory look-up (the relay asks it for DKIM without a session):
    /// role-scoped. A submission session sends its token, which must then
    /// name the account asked about.
    async fn can_send_as(&self, req: Request<pb::CanSendAsRequest>) -> Result<Response<pb::CanSendAsResponse>, Status> {
        if req.metadata().contains_key("authorization") {
            self.0.sessions.check(&req, req.get_ref().account_id)?;
        }
        let r = req.into_inner();
        Ok(Response::new(pb::CanSendAsResponse { allowed: self.0.can_send_as(r.account_id, &r.address).await? }))
    }

    async fn get_dkim_key(&self, req: Request<pb::GetDkimKeyRequest>) -> Result<Response<pb::DkimKey>, Status> {
        Ok(Response::new(self.0.get_dkim_key(&req.get_ref().domain).await?))
    }
}
