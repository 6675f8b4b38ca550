//! Messages service (placeholder: being implemented).
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use mailfleet_proto::storage::v1 as pb;
use pb::messages_server::Messages;
use tonic::{Request, Response, Status, Streaming};

use crate::Store;

pub struct MessagesService(pub Arc<Store>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Messages for MessagesService {
    async fn append(&self, _: Request<Streaming<pb::AppendRequest>>) -> Result<Response<pb::AppendResponse>, Status> {
        Err(Status::unimplemented("append"))
    }
    async fn put_blob(
        &self,
        _: Request<Streaming<pb::PutBlobRequest>>,
    ) -> Result<Response<pb::PutBlobResponse>, Status> {
        Err(Status::unimplemented("put_blob"))
    }
    async fn deliver(&self, _: Request<pb::DeliverRequest>) -> Result<Response<pb::DeliverResponse>, Status> {
        Err(Status::unimplemented("deliver"))
    }
    type FetchStream = BoxStream<pb::FetchChunk>;
    async fn fetch(&self, _: Request<pb::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        Err(Status::unimplemented("fetch"))
    }
    type FetchBlobStream = BoxStream<pb::FetchChunk>;
    async fn fetch_blob(&self, _: Request<pb::FetchBlobRequest>) -> Result<Response<Self::FetchBlobStream>, Status> {
        Err(Status::unimplemented("fetch_blob"))
    }
    type ListMessagesStream = BoxStream<pb::MessageMeta>;
    async fn list_messages(
        &self,
        _: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<Self::ListMessagesStream>, Status> {
        Err(Status::unimplemented("list_messages"))
    }
    async fn list_uids(&self, _: Request<pb::ListUidsRequest>) -> Result<Response<pb::ListUidsResponse>, Status> {
        Err(Status::unimplemented("list_uids"))
    }
    async fn store_flags(&self, _: Request<pb::StoreFlagsRequest>) -> Result<Response<pb::StoreFlagsResponse>, Status> {
        Err(Status::unimplemented("store_flags"))
    }
    async fn copy(&self, _: Request<pb::CopyRequest>) -> Result<Response<pb::CopyResponse>, Status> {
        Err(Status::unimplemented("copy"))
    }
    async fn expunge(&self, _: Request<pb::ExpungeRequest>) -> Result<Response<pb::ExpungeResponse>, Status> {
        Err(Status::unimplemented("expunge"))
    }
    async fn changes(&self, _: Request<pb::ChangesRequest>) -> Result<Response<pb::ChangesResponse>, Status> {
        Err(Status::unimplemented("changes"))
    }
    async fn search(&self, _: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        Err(Status::unimplemented("search"))
    }
}
