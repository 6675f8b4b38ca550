//! Email addresses as the directory sees them: `local@domain`, compared
//! case-insensitively (we treat local parts as case-insensitive, as Postfix
//! and Dovecot do in practice, although RFC 5321 §2.4 allows otherwise).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address `{0}` has no `@`")]
    NoAt(String),
    #[error("address `{0}` has an empty local part")]
    EmptyLocal(String),
    #[error("address `{0}` has an invalid domain")]
    BadDomain(String),
    #[error("address `{0}` contains a forbidden character")]
    BadChar(String),
    #[error("address `{0}` is too long")]
    TooLong(String),
}

/// A lowercase `local@domain` address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress {
    local: String,
    domain: String,
}

/// RFC 5321 §4.5.3.1.1 and §4.5.3.1.2: 64 octets of local part, 255 of domain.
const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let s = input.trim();
        let s = s.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(s);
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(|| AddressError::NoAt(s.into()))?;
        if local.is_empty() {
            return Err(AddressError::EmptyLocal(s.into()));
        }
        if local.len() > MAX_LOCAL {
            return Err(AddressError::TooLong(s.into()));
        }
        if local
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | '@' | ',' | ';' | '"' | '\\'))
        {
            return Err(AddressError::BadChar(s.into()));
        }
        let domain = parse_domain(domain).ok_or_else(|| AddressError::BadDomain(s.into()))?;
        Ok(EmailAddress { local: local.to_lowercase(), domain })
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The address with a `+tag` sub-address removed (`user+tag` → `user`).
    pub fn without_subaddress(&self) -> EmailAddress {
        match self.local.split_once('+') {
            Some((base, _)) if !base.is_empty() => {
                EmailAddress { local: base.to_string(), domain: self.domain.clone() }
            }
            _ => self.clone(),
        }
    }

    /// RFC 5321 §4.5.1: `postmaster` is recognised in any case.
    pub fn is_postmaster(&self) -> bool {
        self.local == "postmaster"
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Validate and lowercase a domain name (LDH labels, or a UTF-8 label for
/// SMTPUTF8 mail). Returns None when it is not a plausible domain.
pub fn parse_domain(input: &str) -> Option<String> {
    let d = input.trim().trim_end_matches('.').to_lowercase();
    if d.is_empty() || d.len() > MAX_DOMAIN {
        return None;
    }
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            return None;
        }
        if !label.chars().all(|c| c.is_alphanumeric() || c == '-') {
            return None;
        }
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_lowercases() {
        let a = EmailAddress::parse("<Alice@Example.ORG>").unwrap();
        assert_eq!(a.to_string(), "alice@example.org");
        assert_eq!(a.domain(), "example.org");
    }

    #[test]
    fn strips_subaddress() {
        let a = EmailAddress::parse("bob+lists@example.org").unwrap();
        assert_eq!(a.without_subaddress().to_string(), "bob@example.org");
        // A bare "+x" local part is not a sub-address of an empty user.
        let b = EmailAddress::parse("+x@example.org").unwrap();
        assert_eq!(b.without_subaddress().to_string(), "+x@example.org");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(EmailAddress::parse(""), Err(AddressError::Empty));
        assert!(matches!(EmailAddress::parse("nobody"), Err(AddressError::NoAt(_))));
        assert!(matches!(EmailAddress::parse("@x.org"), Err(AddressError::EmptyLocal(_))));
        assert!(matches!(EmailAddress::parse("a@-x.org"), Err(AddressError::BadDomain(_))));
        assert!(matches!(EmailAddress::parse("a@x..org"), Err(AddressError::BadDomain(_))));
        assert!(matches!(EmailAddress::parse("a b@x.org"), Err(AddressError::BadChar(_))));
        assert!(matches!(EmailAddress::parse(&format!("{}@x.org", "a".repeat(65))), Err(AddressError::TooLong(_))));
    }

    #[test]
    fn postmaster_any_case() {
        assert!(EmailAddress::parse("PostMaster@example.org").unwrap().is_postmaster());
    }
}
