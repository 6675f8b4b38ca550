//! Who may call what: the caller's service identity decides which RPCs it
//! may call at all (`identity`), and session tokens scope account calls to
//! the account a session logged in to (`session`).

pub mod identity;
pub mod session;
