//! Domain newtypes shared by the services: addresses and mailbox names.
//! Constructors check their invariants, so invalid values cannot exist.

#![forbid(unsafe_code)]

pub mod address;
pub mod dsn;
pub mod header;
pub mod mailbox;

pub use address::{AddressError, EmailAddress};
pub use dsn::{DsnParamError, Envid, OriginalRecipient};
pub use header::{HeaderFrom, HeaderFromError};
pub use mailbox::{HIERARCHY_SEPARATOR, MailboxName, MailboxNameError};
