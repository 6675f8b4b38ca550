//! Who may call what: session tokens scope account calls to the account a
//! session logged in to (`session`).

pub mod session;
