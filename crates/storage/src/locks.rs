//! Leases in Postgres. A session holds a lease for `ttl_seconds` and renews
//! it; a crashed gateway stops renewing, so its lease lapses by itself and
//! no replica can hold a maildrop forever.

use std::sync::Arc;

use mailfleet_proto::storage::v1::locks_server::Locks;
use mailfleet_proto::storage::v1::{LockRequest, LockResponse};
use tonic::{Request, Response, Status};

use crate::Store;
use crate::error::{StorageError, StorageResult};

pub struct LocksService(pub Arc<Store>);

fn check(req: &LockRequest) -> StorageResult<()> {
    if req.name.is_empty() || req.holder.is_empty() {
        return Err(StorageError::InvalidArgument("lock name and holder are required".into()));
    }
    if req.ttl_seconds == 0 || req.ttl_seconds > 3600 {
        return Err(StorageError::InvalidArgument("ttl_seconds must be between 1 and 3600".into()));
    }
    Ok(())
}

impl Store {
    /// Take the lease if it is free, expired, or already ours.
    pub async fn acquire_lock(&self, req: &LockRequest) -> StorageResult<bool> {
        check(req)?;
        let row: Option<(String,)> = sqlx::query_as(
            "INSERT INTO locks (account_id, name, holder, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))
             ON CONFLICT (account_id, name) DO UPDATE
               SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
               WHERE locks.expires_at < now() OR locks.holder = EXCLUDED.holder
             RETURNING holder",
        )
        .bind(req.account_id)
        .bind(&req.name)
        .bind(&req.holder)
        .bind(req.ttl_seconds as f64)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
                StorageError::NotFound(format!("no account {}", req.account_id))
            }
            _ => StorageError::Database(e),
        })?;
        Ok(row.is_some())
    }

    /// Extend our lease; false if it lapsed and somebody else took it.
    pub async fn renew_lock(&self, req: &LockRequest) -> StorageResult<bool> {
        check(req)?;
        let done = sqlx::query(
            "UPDATE locks SET expires_at = now() + make_interval(secs => $4)
             WHERE account_id = $1 AND name = $2 AND holder = $3",
        )
        .bind(req.account_id)
        .bind(&req.name)
        .bind(&req.holder)
        .bind(req.ttl_seconds as f64)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        // Lapsed but nobody took it: take it again.
        self.acquire_lock(req).await
    }

    pub async fn release_lock(&self, req: &LockRequest) -> StorageResult<()> {
        sqlx::query("DELETE FROM locks WHERE account_id = $1 AND name = $2 AND holder = $3")
            .bind(req.account_id)
            .bind(&req.name)
            .bind(&req.holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Locks for LocksService {
    async fn acquire(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        let held = self.0.acquire_lock(req.get_ref()).await?;
        Ok(Response::new(LockResponse { held }))
    }

    async fn renew(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        let held = self.0.renew_lock(req.get_ref()).await?;
        Ok(Response::new(LockResponse { held }))
    }

    async fn release(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.0.sessions.check(&req, req.get_ref().account_id)?;
        self.0.release_lock(req.get_ref()).await?;
        Ok(Response::new(LockResponse { held: false }))
    }
}
