//! gRPC contracts of Mailfleet, generated at build time from `proto/`.
//! Nothing but generated code lives here.

#![forbid(unsafe_code)]

pub mod storage {
    pub mod v1 {
        tonic::include_proto!("mailfleet.storage.v1");
    }
}

pub mod queue {
    pub mod v1 {
        tonic::include_proto!("mailfleet.queue.v1");
    }
}
