//! Mailbox names: one hierarchy separator, INBOX case-insensitive.

use std::fmt;

/// The single hierarchy separator of every account's mailbox tree.
pub const HIERARCHY_SEPARATOR: char = '/';

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailboxNameError {
    #[error("mailbox name is empty")]
    Empty,
    #[error("mailbox name has an empty hierarchy level")]
    EmptyLevel,
    #[error("mailbox name contains a control character or wildcard")]
    BadChar,
    #[error("mailbox name is too long")]
    TooLong,
}

/// A valid mailbox name; "INBOX" in any case is stored as "INBOX"
/// (RFC 3501 §5.1), and so is the INBOX prefix of its children.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MailboxName(String);

const MAX_NAME: usize = 1000;

impl MailboxName {
    /// The longest name, in octets.
    pub const MAX_LEN: usize = MAX_NAME;

    pub fn parse(input: &str) -> Result<Self, MailboxNameError> {
        let trimmed = input.trim_end_matches(HIERARCHY_SEPARATOR);
        if trimmed.is_empty() {
            return Err(MailboxNameError::Empty);
        }
        if trimmed.len() > MAX_NAME {
            return Err(MailboxNameError::TooLong);
        }
        // RFC 3501 §5.1: '%' and '*' are LIST wildcards, not name characters.
        if trimmed.chars().any(|c| c.is_control() || c == '%' || c == '*') {
            return Err(MailboxNameError::BadChar);
        }
        if trimmed.split(HIERARCHY_SEPARATOR).any(str::is_empty) {
            return Err(MailboxNameError::EmptyLevel);
        }
        let name = match trimmed.split_once(HIERARCHY_SEPARATOR) {
            Some((first, rest)) if first.eq_ignore_ascii_case("INBOX") => {
                format!("INBOX{HIERARCHY_SEPARATOR}{rest}")
            }
            None if trimmed.eq_ignore_ascii_case("INBOX") => "INBOX".to_string(),
            _ => trimmed.to_string(),
        };
        Ok(MailboxName(name))
    }

    pub fn inbox() -> Self {
        MailboxName("INBOX".into())
    }

    pub fn is_inbox(&self) -> bool {
        self.0 == "INBOX"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Every ancestor, nearest last: `a/b/c` → `a`, `a/b`.
    pub fn ancestors(&self) -> Vec<MailboxName> {
        let mut out = Vec::new();
        for (i, c) in self.0.char_indices() {
            if c == HIERARCHY_SEPARATOR {
                out.push(MailboxName(self.0[..i].to_string()));
            }
        }
        out
    }
}

impl fmt::Display for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_is_case_insensitive() {
        assert_eq!(MailboxName::parse("inbox").unwrap().as_str(), "INBOX");
        assert_eq!(MailboxName::parse("Inbox/Lists").unwrap().as_str(), "INBOX/Lists");
        assert_eq!(MailboxName::parse("Inboxes").unwrap().as_str(), "Inboxes");
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(MailboxName::parse(""), Err(MailboxNameError::Empty));
        assert_eq!(MailboxName::parse("a//b"), Err(MailboxNameError::EmptyLevel));
        assert_eq!(MailboxName::parse("a*"), Err(MailboxNameError::BadChar));
        // A trailing separator is allowed on CREATE (RFC 3501 §6.3.3) and dropped.
        assert_eq!(MailboxName::parse("a/").unwrap().as_str(), "a");
    }

    #[test]
    fn ancestors_nearest_last() {
        let n = MailboxName::parse("a/b/c").unwrap();
        let names: Vec<_> = n.ancestors().iter().map(|m| m.to_string()).collect();
        assert_eq!(names, vec!["a", "a/b"]);
    }
}
