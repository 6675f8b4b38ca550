//! One file per command group; `session::Session::handle` dispatches here.

pub mod any;
pub mod append;
pub mod auth;
pub mod binary;
pub mod binary_append;
pub mod bodystructure;
pub mod copy;
pub mod expunge;
pub mod fetch;
pub mod fetch_stream;
pub mod flags;
pub mod idle;
pub mod list;
pub mod mailbox;
pub mod quota;
pub mod search;
pub mod searchres;
pub mod select;
pub mod sort;
pub mod thread;
pub mod wildcard;
