//! COPY (RFC 3501 §6.4.7, UIDPLUS RFC 4315 §3) and MOVE (RFC 6851).

use mailfleet_proto::storage::v1 as pb;

use crate::Store;
use crate::error::{StorageError, StorageResult};

impl Store {
    pub(crate) async fn copy_messages(&self, _req: &pb::CopyRequest) -> StorageResult<pb::CopyResponse> {
        Err(StorageError::Internal("copy: not yet implemented".into()))
    }
}
