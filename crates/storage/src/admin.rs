//! The Admin API behind mailctl: domains, accounts, aliases, quotas, blobs.

use std::sync::Arc;

use mail_types::EmailAddress;
use mail_types::address::parse_domain;
use mailfleet_proto::storage::v1 as pb;
use mailfleet_proto::storage::v1::admin_server::Admin;
use sqlx::Row;
use tonic::{Request, Response, Status};

use crate::Store;
use crate::directory::{ACCOUNT_COLUMNS, account_from_row};
use crate::error::{StorageError, StorageResult, is_unique_violation};
use crate::password;

pub struct AdminService(pub Arc<Store>);

/// Mailboxes every new account gets, with their RFC 6154 attributes.
pub const DEFAULT_MAILBOXES: &[(&str, Option<&str>)] = &[
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
    ("Archive", Some("\\Archive")),
];

fn quota_to_db(bytes: u64) -> StorageResult<i64> {
    i64::try_from(bytes).map_err(|_| StorageError::InvalidArgument("quota is too large".into()))
}

impl Store {
    async fn domain_info(&self, name: &str) -> StorageResult<pb::Domain> {
        let row = sqlx::query(
            "SELECT d.name, coalesce(c.address, '') AS catch_all,
                    (SELECT count(*) FROM accounts a WHERE a.domain_id = d.id) AS accounts
             FROM domains d LEFT JOIN accounts c ON c.id = d.catch_all_account_id
             WHERE d.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("unknown domain {name}")))?;
        Ok(pb::Domain {
            name: row.get("name"),
            catch_all: row.get("catch_all"),
            accounts: row.get::<i64, _>("accounts") as u64,
        })
    }

    pub async fn add_domain(&self, name: &str) -> StorageResult<pb::Domain> {
        let domain =
            parse_domain(name).ok_or_else(|| StorageError::InvalidArgument(format!("malformed domain `{name}`")))?;
        sqlx::query("INSERT INTO domains (name) VALUES ($1)").bind(&domain).execute(&self.pool).await.map_err(|e| {
            if is_unique_violation(&e) {
                StorageError::AlreadyExists(format!("domain {domain} already exists"))
            } else {
                e.into()
            }
        })?;
        self.domain_info(&domain).await
    }

    pub async fn list_domains(&self) -> StorageResult<Vec<pb::Domain>> {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM domains ORDER BY name").fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(self.domain_info(&n).await?);
        }
        Ok(out)
    }

    pub async fn delete_domain(&self, name: &str) -> StorageResult<()> {
        let domain =
            parse_domain(name).ok_or_else(|| StorageError::InvalidArgument(format!("malformed domain `{name}`")))?;
        let info = self.domain_info(&domain).await?;
        if info.accounts > 0 {
            return Err(StorageError::FailedPrecondition(format!(
                "domain {domain} still has {} account(s); delete them first",
                info.accounts
            )));
        }
        sqlx::query("DELETE FROM domains WHERE name = $1").bind(&domain).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn set_catch_all(&self, domain: &str, target: &str) -> StorageResult<pb::Domain> {
        let domain = parse_domain(domain)
            .ok_or_else(|| StorageError::InvalidArgument(format!("malformed domain `{domain}`")))?;
        self.domain_info(&domain).await?;
        let account_id: Option<i64> = if target.trim().is_empty() {
            None
        } else {
            let address = EmailAddress::parse(target)?;
            let account = self
                .account_by_address(&address.to_string())
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("no account {address}")))?;
            Some(account.id)
        };
        sqlx::query("UPDATE domains SET catch_all_account_id = $2 WHERE name = $1")
            .bind(&domain)
            .bind(account_id)
            .execute(&self.pool)
            .await?;
        self.domain_info(&domain).await
    }

    pub async fn add_account(
        &self,
        address: &str,
        password_text: &str,
        quota_bytes: u64,
    ) -> StorageResult<pb::Account> {
        let address = EmailAddress::parse(address)?;
        password::check_strength(password_text, self.config.min_password_length)?;
        let quota = quota_to_db(quota_bytes)?;
        let domain_id: i64 = sqlx::query_scalar("SELECT id FROM domains WHERE name = $1")
            .bind(address.domain())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("unknown domain {}; add it first", address.domain())))?;
        let alias_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM aliases WHERE address = $1)")
            .bind(address.to_string())
            .fetch_one(&self.pool)
            .await?;
        if alias_exists {
            return Err(StorageError::AlreadyExists(format!("{address} is already an alias")));
        }
        let hash = password::hash_async(password_text.to_string()).await?;

        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO accounts (domain_id, local_part, address, password_hash, quota_bytes)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(domain_id)
        .bind(address.local())
        .bind(address.to_string())
        .bind(&hash)
        .bind(quota)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StorageError::AlreadyExists(format!("account {address} already exists"))
            } else {
                e.into()
            }
        })?;
        for (name, special) in DEFAULT_MAILBOXES {
            let special: Vec<String> = special.iter().map(|s| s.to_string()).collect();
            sqlx::query("INSERT INTO mailboxes (account_id, name, special_use) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(name)
                .bind(&special)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO subscriptions (account_id, name) VALUES ($1, $2)")
                .bind(id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.account_by_id(id).await
    }

    pub async fn list_accounts(&self, domain: &str) -> StorageResult<Vec<pb::Account>> {
        let rows = if domain.trim().is_empty() {
            let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY address");
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?
        } else {
            let d = parse_domain(domain)
                .ok_or_else(|| StorageError::InvalidArgument(format!("malformed domain `{domain}`")))?;
            self.domain_info(&d).await?;
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE domain_id = (SELECT id FROM domains WHERE name = $1) ORDER BY address"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(d).fetch_all(&self.pool).await?
        };
        Ok(rows.iter().map(account_from_row).collect())
    }

    async fn existing_account(&self, address: &str) -> StorageResult<(EmailAddress, pb::Account)> {
        let address = EmailAddress::parse(address)?;
        let account = self
            .account_by_address(&address.to_string())
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no account {address}")))?;
        Ok((address, account))
    }

    pub async fn delete_account(&self, address: &str) -> StorageResult<()> {
        let (_, account) = self.existing_account(address).await?;
        // Messages, mailboxes, aliases' targets and leases go with it; blobs
        // stay until the sweeper finds them unreferenced.
        sqlx::query("DELETE FROM accounts WHERE id = $1").bind(account.id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn set_password(&self, address: &str, password_text: &str) -> StorageResult<pb::Account> {
        let (_, account) = self.existing_account(address).await?;
        password::check_strength(password_text, self.config.min_password_length)?;
        let hash = password::hash_async(password_text.to_string()).await?;
        sqlx::query("UPDATE accounts SET password_hash = $2 WHERE id = $1")
            .bind(account.id)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        self.account_by_id(account.id).await
    }

    pub async fn set_quota(&self, address: &str, quota_bytes: u64) -> StorageResult<pb::Account> {
        let (_, account) = self.existing_account(address).await?;
        sqlx::query("UPDATE accounts SET quota_bytes = $2 WHERE id = $1")
            .bind(account.id)
            .bind(quota_to_db(quota_bytes)?)
            .execute(&self.pool)
            .await?;
        self.account_by_id(account.id).await
    }

    pub async fn set_disabled(&self, address: &str, disabled: bool) -> StorageResult<pb::Account> {
        let (_, account) = self.existing_account(address).await?;
        sqlx::query("UPDATE accounts SET disabled = $2 WHERE id = $1")
            .bind(account.id)
            .bind(disabled)
            .execute(&self.pool)
            .await?;
        self.account_by_id(account.id).await
    }

    pub async fn set_apop_secret(&self, address: &str, secret: &str) -> StorageResult<pb::Account> {
        let (_, account) = self.existing_account(address).await?;
        let secret = if secret.is_empty() {
            None
        } else {
            password::check_strength(secret, self.config.min_password_length)?;
            Some(secret.to_string())
        };
        sqlx::query("UPDATE accounts SET apop_secret = $2 WHERE id = $1")
            .bind(account.id)
            .bind(secret)
            .execute(&self.pool)
            .await?;
        self.account_by_id(account.id).await
    }

    pub async fn add_alias(&self, address: &str, targets: &[String]) -> StorageResult<pb::Alias> {
        let address = EmailAddress::parse(address)?;
        if targets.is_empty() {
            return Err(StorageError::InvalidArgument("an alias needs at least one target account".into()));
        }
        let domain_id: i64 = sqlx::query_scalar("SELECT id FROM domains WHERE name = $1")
            .bind(address.domain())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("unknown domain {}; add it first", address.domain())))?;
        if self.account_by_address(&address.to_string()).await?.is_some() {
            return Err(StorageError::AlreadyExists(format!("{address} is already an account")));
        }
        let mut target_ids = Vec::new();
        for t in targets {
            let (_, account) = self.existing_account(t).await?;
            if !target_ids.contains(&account.id) {
                target_ids.push(account.id);
            }
        }
        let mut tx = self.pool.begin().await?;
        let alias_id: i64 = sqlx::query_scalar("INSERT INTO aliases (domain_id, address) VALUES ($1, $2) RETURNING id")
            .bind(domain_id)
            .bind(address.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StorageError::AlreadyExists(format!("alias {address} already exists"))
                } else {
                    e.into()
                }
            })?;
        for id in target_ids {
            sqlx::query("INSERT INTO alias_targets (alias_id, account_id) VALUES ($1, $2)")
                .bind(alias_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.alias_info(&address.to_string()).await
    }

    async fn alias_info(&self, address: &str) -> StorageResult<pb::Alias> {
        let targets: Vec<String> = sqlx::query_scalar(
            "SELECT a.address FROM aliases al JOIN alias_targets t ON t.alias_id = al.id
             JOIN accounts a ON a.id = t.account_id WHERE al.address = $1 ORDER BY a.address",
        )
        .bind(address)
        .fetch_all(&self.pool)
        .await?;
        Ok(pb::Alias { address: address.to_string(), targets })
    }

    pub async fn list_aliases(&self, domain: &str) -> StorageResult<Vec<pb::Alias>> {
        let addresses: Vec<String> = if domain.trim().is_empty() {
            sqlx::query_scalar("SELECT address FROM aliases ORDER BY address").fetch_all(&self.pool).await?
        } else {
            let d = parse_domain(domain)
                .ok_or_else(|| StorageError::InvalidArgument(format!("malformed domain `{domain}`")))?;
            self.domain_info(&d).await?;
            sqlx::query_scalar(
                "SELECT address FROM aliases WHERE domain_id = (SELECT id FROM domains WHERE name = $1) ORDER BY address",
            )
            .bind(d)
            .fetch_all(&self.pool)
            .await?
        };
        let mut out = Vec::new();
        for a in addresses {
            out.push(self.alias_info(&a).await?);
        }
        Ok(out)
    }

    pub async fn delete_alias(&self, address: &str) -> StorageResult<()> {
        let address = EmailAddress::parse(address)?;
        let done =
            sqlx::query("DELETE FROM aliases WHERE address = $1").bind(address.to_string()).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("no alias {address}")));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn add_domain(&self, req: Request<pb::AddDomainRequest>) -> Result<Response<pb::Domain>, Status> {
        Ok(Response::new(self.0.add_domain(&req.get_ref().name).await?))
    }
    async fn list_domains(
        &self,
        _: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        Ok(Response::new(pb::ListDomainsResponse { domains: self.0.list_domains().await? }))
    }
    async fn delete_domain(
        &self,
        req: Request<pb::DeleteDomainRequest>,
    ) -> Result<Response<pb::DeleteDomainResponse>, Status> {
        self.0.delete_domain(&req.get_ref().name).await?;
        Ok(Response::new(pb::DeleteDomainResponse {}))
    }
    async fn set_catch_all(&self, req: Request<pb::SetCatchAllRequest>) -> Result<Response<pb::Domain>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.set_catch_all(&r.domain, &r.target).await?))
    }
    async fn add_account(&self, req: Request<pb::AddAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.add_account(&r.address, &r.password, r.quota_bytes).await?))
    }
    async fn list_accounts(
        &self,
        req: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        Ok(Response::new(pb::ListAccountsResponse { accounts: self.0.list_accounts(&req.get_ref().domain).await? }))
    }
    async fn delete_account(
        &self,
        req: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        self.0.delete_account(&req.get_ref().address).await?;
        Ok(Response::new(pb::DeleteAccountResponse {}))
    }
    async fn set_password(&self, req: Request<pb::SetPasswordRequest>) -> Result<Response<pb::Account>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.set_password(&r.address, &r.password).await?))
    }
    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> Result<Response<pb::Account>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.set_quota(&r.address, r.quota_bytes).await?))
    }
    async fn set_disabled(&self, req: Request<pb::SetDisabledRequest>) -> Result<Response<pb::Account>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.set_disabled(&r.address, r.disabled).await?))
    }
    async fn set_apop_secret(&self, req: Request<pb::SetApopSecretRequest>) -> Result<Response<pb::Account>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.set_apop_secret(&r.address, &r.secret).await?))
    }
    async fn add_alias(&self, req: Request<pb::AddAliasRequest>) -> Result<Response<pb::Alias>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.add_alias(&r.address, &r.targets).await?))
    }
    async fn list_aliases(
        &self,
        req: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        Ok(Response::new(pb::ListAliasesResponse { aliases: self.0.list_aliases(&req.get_ref().domain).await? }))
    }
    async fn delete_alias(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        self.0.delete_alias(&req.get_ref().address).await?;
        Ok(Response::new(pb::DeleteAliasResponse {}))
    }
    async fn sweep_blobs(
        &self,
        req: Request<pb::SweepBlobsRequest>,
    ) -> Result<Response<pb::SweepBlobsResponse>, Status> {
        let r = self.0.sweep_blobs(req.get_ref().min_age_seconds).await?;
        Ok(Response::new(pb::SweepBlobsResponse { removed: r.removed, kept: r.kept, queued: r.queued }))
    }
    async fn generate_dkim_key(
        &self,
        req: Request<pb::GenerateDkimKeyRequest>,
    ) -> Result<Response<pb::DkimKey>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.generate_dkim_key(&r.domain, &r.selector, &r.algorithm).await?))
    }
    async fn list_dkim_keys(
        &self,
        req: Request<pb::ListDkimKeysRequest>,
    ) -> Result<Response<pb::ListDkimKeysResponse>, Status> {
        Ok(Response::new(pb::ListDkimKeysResponse { keys: self.0.list_dkim_keys(&req.get_ref().domain).await? }))
    }
}
