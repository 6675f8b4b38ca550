//! Mailboxes service (placeholder: being implemented).
use std::sync::Arc;

use mailfleet_proto::storage::v1 as pb;
use pb::mailboxes_server::Mailboxes;
use tonic::{Request, Response, Status};

use crate::Store;

pub struct MailboxesService(pub Arc<Store>);

#[tonic::async_trait]
impl Mailboxes for MailboxesService {
    async fn list_mailboxes(
        &self,
        _: Request<pb::ListMailboxesRequest>,
    ) -> Result<Response<pb::ListMailboxesResponse>, Status> {
        Err(Status::unimplemented("list_mailboxes"))
    }
    async fn get_mailbox(&self, _: Request<pb::GetMailboxRequest>) -> Result<Response<pb::MailboxInfo>, Status> {
        Err(Status::unimplemented("get_mailbox"))
    }
    async fn create_mailbox(&self, _: Request<pb::CreateMailboxRequest>) -> Result<Response<pb::MailboxInfo>, Status> {
        Err(Status::unimplemented("create_mailbox"))
    }
    async fn rename_mailbox(&self, _: Request<pb::RenameMailboxRequest>) -> Result<Response<pb::MailboxInfo>, Status> {
        Err(Status::unimplemented("rename_mailbox"))
    }
    async fn delete_mailbox(
        &self,
        _: Request<pb::DeleteMailboxRequest>,
    ) -> Result<Response<pb::DeleteMailboxResponse>, Status> {
        Err(Status::unimplemented("delete_mailbox"))
    }
    async fn set_subscribed(
        &self,
        _: Request<pb::SetSubscribedRequest>,
    ) -> Result<Response<pb::SetSubscribedResponse>, Status> {
        Err(Status::unimplemented("set_subscribed"))
    }
    async fn get_quota(&self, _: Request<pb::GetQuotaRequest>) -> Result<Response<pb::QuotaInfo>, Status> {
        Err(Status::unimplemented("get_quota"))
    }
}
