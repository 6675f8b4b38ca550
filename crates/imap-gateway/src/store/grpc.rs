//! `MailStore` over gRPC to the storage service.

use futures::StreamExt;
use mailfleet_proto::storage::v1 as pb;
use pb::directory_client::DirectoryClient;
use pb::mailboxes_client::MailboxesClient;
use pb::messages_client::MessagesClient;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

use mailfleet_runtime::telemetry::grpc_request as traced;

use super::{Account, MailStore, RangeStream, SessionToken, StoreError, StoreResult};

/// Append streams the message in chunks of this size.
const APPEND_CHUNK: usize = 64 * 1024;

/// A client whose every call carries the session's token.
type Scoped = InterceptedService<Channel, SessionToken>;

/// Shared by every connection until login; each logged-in session has its
/// own copy whose mailbox and message calls carry its token.
#[derive(Clone)]
pub struct GrpcStore {
    channel: Channel,
    directory: DirectoryClient<Channel>,
    mailboxes: MailboxesClient<Scoped>,
    messages: MessagesClient<Scoped>,
}

impl GrpcStore {
    /// A lazily connected client: storage being down at start-up is a
    /// temporary failure of each command (`NO [UNAVAILABLE]`), not a crash.
    pub fn connect_lazy(
        url: &str,
        identity: &mailfleet_runtime::grpc::FleetIdentity,
    ) -> Result<GrpcStore, mailfleet_runtime::grpc::GrpcError> {
        let channel = mailfleet_runtime::grpc::storage_channel(url, identity, None)?;
        Ok(GrpcStore::scoped(channel, SessionToken::default()))
    }

    fn scoped(channel: Channel, session: SessionToken) -> GrpcStore {
        GrpcStore {
            directory: DirectoryClient::new(channel.clone()),
            mailboxes: MailboxesClient::with_interceptor(channel.clone(), session.clone()),
            messages: MessagesClient::with_interceptor(channel.clone(), session),
            channel,
        }
    }
}

impl MailStore for GrpcStore {
    async fn authenticate(
        &self,
        username: &str,
        password: &str,
        client: std::net::IpAddr,
    ) -> StoreResult<(Account, SessionToken)> {
        let req = pb::AuthenticateRequest {
            username: username.into(),
            password: password.into(),
            client_ip: client.to_string(),
        };
        let a = match self.directory.clone().authenticate(traced(req)).await {
            Ok(a) => a.into_inner(),
            // Authenticate's RESOURCE_EXHAUSTED is the auth throttle, not a quota.
            Err(s) if s.code() == tonic::Code::ResourceExhausted => return Err(StoreError::Throttled),
            // A login's PERMISSION_DENIED is a disabled account.
            Err(s) if s.code() == tonic::Code::PermissionDenied => return Err(StoreError::Disabled),
            Err(s) => return Err(s.into()),
        };
        let account = a.account.clone().unwrap_or_default();
        if account.disabled {
            return Err(StoreError::Disabled);
        }
        let session =
            SessionToken::renewed(&a, self.directory.clone()).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok((Account { id: account.id, address: account.address }, session))
    }

    fn for_session(store: &std::sync::Arc<Self>, session: SessionToken) -> std::sync::Arc<Self> {
        std::sync::Arc::new(GrpcStore::scoped(store.channel.clone(), session))
    }

    async fn list_mailboxes(&self, account: i64, with_status: bool) -> StoreResult<pb::ListMailboxesResponse> {
        let req = pb::ListMailboxesRequest { account_id: account, with_status };
        Ok(self.mailboxes.clone().list_mailboxes(traced(req)).await?.into_inner())
    }

    async fn get_mailbox(&self, account: i64, name: &str, select: bool) -> StoreResult<pb::MailboxInfo> {
        let req = pb::GetMailboxRequest { account_id: account, name: name.into(), select };
        Ok(self.mailboxes.clone().get_mailbox(traced(req)).await?.into_inner())
    }

    async fn create_mailbox(&self, account: i64, name: &str, special_use: &[String]) -> StoreResult<pb::MailboxInfo> {
        let req =
            pb::CreateMailboxRequest { account_id: account, name: name.into(), special_use: special_use.to_vec() };
        Ok(self.mailboxes.clone().create_mailbox(traced(req)).await?.into_inner())
    }

    async fn rename_mailbox(&self, account: i64, from: &str, to: &str) -> StoreResult<pb::MailboxInfo> {
        let req = pb::RenameMailboxRequest { account_id: account, from: from.into(), to: to.into() };
        Ok(self.mailboxes.clone().rename_mailbox(traced(req)).await?.into_inner())
    }

    async fn delete_mailbox(&self, account: i64, name: &str) -> StoreResult<()> {
        let req = pb::DeleteMailboxRequest { account_id: account, name: name.into() };
        self.mailboxes.clone().delete_mailbox(traced(req)).await?;
        Ok(())
    }

    async fn set_subscribed(&self, account: i64, name: &str, subscribed: bool) -> StoreResult<()> {
        let req = pb::SetSubscribedRequest { account_id: account, name: name.into(), subscribed };
        self.mailboxes.clone().set_subscribed(traced(req)).await?;
        Ok(())
    }

    async fn append(&self, header: pb::AppendHeader, message: Vec<u8>) -> StoreResult<pb::AppendResponse> {
        let mut parts = vec![pb::AppendRequest { part: Some(pb::append_request::Part::Header(header)) }];
        parts.extend(
            message
                .chunks(APPEND_CHUNK)
                .map(|c| pb::AppendRequest { part: Some(pb::append_request::Part::Chunk(c.to_vec())) }),
        );
        Ok(self.messages.clone().append(traced(futures::stream::iter(parts))).await?.into_inner())
    }

    async fn list_uids(&self, account: i64, mailbox: i64) -> StoreResult<pb::ListUidsResponse> {
        let req = pb::ListUidsRequest { account_id: account, mailbox_id: mailbox };
        Ok(self.messages.clone().list_uids(traced(req)).await?.into_inner())
    }

    async fn list_messages(&self, req: pb::ListMessagesRequest) -> StoreResult<Vec<pb::MessageMeta>> {
        let mut stream = self.messages.clone().list_messages(traced(req)).await?.into_inner();
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            out.push(meta?);
        }
        Ok(out)
    }

    async fn fetch(&self, req: pb::FetchRequest) -> StoreResult<Vec<u8>> {
        let mut stream = self.messages.clone().fetch(traced(req)).await?.into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?.data);
        }
        Ok(out)
    }

    async fn fetch_ranges(&self, req: pb::FetchRangesRequest) -> StoreResult<RangeStream> {
        let stream = self.messages.clone().fetch_ranges(traced(req)).await?.into_inner();
        Ok(Box::pin(stream.map(|chunk| chunk.map_err(StoreError::from))))
    }

    async fn store_flags(&self, req: pb::StoreFlagsRequest) -> StoreResult<pb::StoreFlagsResponse> {
        Ok(self.messages.clone().store_flags(traced(req)).await?.into_inner())
    }

    async fn copy(&self, req: pb::CopyRequest) -> StoreResult<pb::CopyResponse> {
        Ok(self.messages.clone().copy(traced(req)).await?.into_inner())
    }

    async fn expunge(&self, req: pb::ExpungeRequest) -> StoreResult<pb::ExpungeResponse> {
        Ok(self.messages.clone().expunge(traced(req)).await?.into_inner())
    }

    async fn search(&self, req: pb::SearchRequest) -> StoreResult<pb::SearchResponse> {
        Ok(self.messages.clone().search(traced(req)).await?.into_inner())
    }

    async fn sort(&self, req: pb::SortRequest) -> StoreResult<pb::SortResponse> {
        Ok(self.messages.clone().sort(traced(req)).await?.into_inner())
    }

    async fn thread(&self, req: pb::ThreadRequest) -> StoreResult<pb::ThreadResponse> {
        Ok(self.messages.clone().thread(traced(req)).await?.into_inner())
    }

    async fn changes(&self, req: pb::ChangesRequest) -> StoreResult<pb::ChangesResponse> {
        Ok(self.messages.clone().changes(traced(req)).await?.into_inner())
    }

    async fn get_quota(&self, account: i64) -> StoreResult<pb::QuotaInfo> {
        Ok(self.mailboxes.clone().get_quota(traced(pb::GetQuotaRequest { account_id: account })).await?.into_inner())
    }
}
