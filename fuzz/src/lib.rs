//! The services' own parser source files, compiled here as they are (the
//! paths below point into crates/), so the fuzz targets exercise exactly
//! the code the services run, without building the services' dependencies.
//! A parser file that starts using something else needs it added to
//! Cargo.toml; `scripts/fuzz.sh` (run by scripts/test.sh) notices.

#[path = "../../crates/smtp-ingress/src"]
pub mod smtp {
    pub mod codec;
}

#[path = "../../crates/imap-gateway/src"]
pub mod imap {
    pub mod codec;
}

#[path = "../../crates/pop3-gateway/src"]
pub mod pop3 {
    pub mod codec;
}

#[path = "../../crates/storage/src"]
pub mod storage {
    pub mod mime;
}

#[path = "../../crates/runtime/src"]
pub mod runtime {
    pub mod proxy;
}
