//! SEARCH (RFC 3501 §6.4.4) evaluated in Postgres.

use mailfleet_proto::storage::v1 as pb;

use crate::Store;
use crate::error::{StorageError, StorageResult};

impl Store {
    pub(crate) async fn search(&self, _req: &pb::SearchRequest) -> StorageResult<pb::SearchResponse> {
        Err(StorageError::Internal("search: not yet implemented".into()))
    }
}
