//! `mailfleet_proto::storage::v1`, messages only (see build.rs).
pub mod storage {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mailfleet.storage.v1.rs"));
    }
}
