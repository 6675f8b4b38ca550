//! Header fields whose reading decides what we vouch for, read once and
//! the same way everywhere: the author (`From:`, RFC 5322 §3.6.2), which
//! decides the DKIM signing domain, and `Authentication-Results:` (RFC
//! 8601), which claims checks were done.
//!
//! The header block is split by mail-parser, as mail-auth (our DKIM/DMARC
//! code) splits it, so the submission check and the signer cannot disagree
//! about which `From:` a message has.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

use crate::EmailAddress;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderFromError {
    #[error("the message has no From: field")]
    Missing,
    /// RFC 5322 §3.6: exactly one From: field.
    #[error("the message has more than one From: field")]
    Multiple,
    #[error("the From: field holds no usable mailbox address")]
    NoAddress,
}

/// The mailboxes of a message's one `From:` field (RFC 5322 §3.6.2 allows
/// several authors), lowercased and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFrom {
    authors: Vec<EmailAddress>,
}

impl HeaderFrom {
    /// Read the author(s) from the message's header. Groups, mailboxes
    /// without an address and addresses that do not validate make the
    /// field unusable ([`HeaderFromError::NoAddress`]), as do a missing
    /// or a repeated `From:` field.
    pub fn parse(message: &[u8]) -> Result<HeaderFrom, HeaderFromError> {
        let parsed = MessageParser::new().parse_headers(message).ok_or(HeaderFromError::Missing)?;
        let mut fields = parsed.root_part().headers().iter().filter(|h| h.name == HeaderName::From);
        let field = fields.next().ok_or(HeaderFromError::Missing)?;
        if fields.next().is_some() {
            return Err(HeaderFromError::Multiple);
        }
        let HeaderValue::Address(Address::List(list)) = &field.value else {
            return Err(HeaderFromError::NoAddress);
        };
        let authors = list
            .iter()
            .map(|a| a.address.as_deref().and_then(|a| EmailAddress::parse(a).ok()))
            .collect::<Option<Vec<_>>>()
            .filter(|a| !a.is_empty())
            .ok_or(HeaderFromError::NoAddress)?;
        Ok(HeaderFrom { authors })
    }

    pub fn authors(&self) -> &[EmailAddress] {
        &self.authors
    }

    /// The author domain a DKIM signature may be made for: the domain of
    /// every author, when they share one (RFC 7489 §6.6.1 leaves several
    /// author domains to the receiver; we do not sign those).
    pub fn domain(&self) -> Option<&str> {
        let first = self.authors.first()?.domain();
        self.authors.iter().all(|a| a.domain() == first).then_some(first)
    }
}

/// The message without the `Authentication-Results:` fields that claim
/// `authserv_id` (compared case-insensitively) as theirs, or `None` when
/// it has none. RFC 8601 §5: results under our own name that arrive with a
/// message were not made by us and must be removed before ours is added.
pub fn strip_authentication_results(message: &[u8], authserv_id: &str) -> Option<Vec<u8>> {
    let parsed = MessageParser::new().parse_headers(message)?;
    let forged: Vec<(usize, usize)> = parsed
        .root_part()
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::AuthenticationResults)
        .filter(|h| {
            let value = message.get(h.offset_start as usize..h.offset_end as usize).unwrap_or_default();
            authserv_id_of(value).is_some_and(|id| id.eq_ignore_ascii_case(authserv_id))
        })
        .map(|h| (h.offset_field as usize, h.offset_end as usize))
        .collect();
    if forged.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    let mut at = 0;
    for (start, end) in forged {
        out.extend_from_slice(message.get(at..start)?);
        at = end;
    }
    out.extend_from_slice(message.get(at..)?);
    Some(out)
}

/// RFC 8601 §2.2: `authres-header-field = [CFWS] authserv-id [CFWS
/// authres-version] ...`; the id is a `value` (a token or a quoted string).
fn authserv_id_of(value: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(value);
    let mut rest = skip_cfws(&text);
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut id = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(id),
                '\\' => id.push(chars.next()?),
                c => id.push(c),
            }
        }
        return None;
    }
    let end = rest.find(|c: char| c == ';' || c == '(' || c.is_whitespace()).unwrap_or(rest.len());
    rest = &rest[..end];
    (!rest.is_empty()).then(|| rest.to_string())
}

/// Skip folding white space and (nested) comments, RFC 5322 §3.2.2.
fn skip_cfws(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        let Some(mut inner) = s.strip_prefix('(') else { return s };
        let mut depth = 1;
        while depth > 0 {
            let Some(c) = inner.chars().next() else { return inner };
            inner = &inner[c.len_utf8()..];
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '\\' => {
                    if let Some(n) = inner.chars().next() {
                        inner = &inner[n.len_utf8()..];
                    }
                }
                _ => {}
            }
        }
        s = inner;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authors(message: &str) -> Result<Vec<String>, HeaderFromError> {
        HeaderFrom::parse(message.as_bytes()).map(|f| f.authors().iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn the_author_is_what_the_verifier_sees() {
        assert_eq!(authors("From: Alice <Alice@A.test>\r\n\r\nx"), Ok(vec!["alice@a.test".into()]));
        assert_eq!(authors("Subject: s\r\nfrom: a@a.test\r\n\r\n"), Ok(vec!["a@a.test".into()]));
        assert_eq!(authors("From: \"A\"\r\n <a@folded.test>\r\n\r\n"), Ok(vec!["a@folded.test".into()]));
        // A comment or a display name naming another address is not an author.
        assert_eq!(authors("From: alice@a.test (ceo@b.test)\r\n\r\n"), Ok(vec!["alice@a.test".into()]));
        assert_eq!(authors("From: \"ceo@b.test\" <alice@a.test>\r\n\r\n"), Ok(vec!["alice@a.test".into()]));
        assert_eq!(authors("From: a@a.test, ceo@b.test\r\n\r\n"), Ok(vec!["a@a.test".into(), "ceo@b.test".into()]));
        assert_eq!(authors("Subject: none\r\n\r\nFrom: a@body.test\r\n"), Err(HeaderFromError::Missing));
        assert_eq!(authors("From: a@a.test\r\nFrom: ceo@b.test\r\n\r\n"), Err(HeaderFromError::Multiple));
        assert_eq!(authors("From: undisclosed:;\r\n\r\n"), Err(HeaderFromError::NoAddress));
        assert_eq!(authors("From: just a name\r\n\r\n"), Err(HeaderFromError::NoAddress));
        let f = HeaderFrom::parse(b"From: a@a.test, b@A.test\r\n\r\n").expect("two authors");
        assert_eq!(f.domain(), Some("a.test"));
        let f = HeaderFrom::parse(b"From: a@a.test, ceo@b.test\r\n\r\n").expect("two domains");
        assert_eq!(f.domain(), None);
    }

    #[test]
    fn our_own_authentication_results_are_stripped() {
        let msg = "Received: x\r\n\
                   Authentication-Results: mx.example.org; dkim=pass header.d=bank.test\r\n\
                   Authentication-Results: other.test; spf=pass\r\n\
                   authentication-results: (forged)\r\n  MX.Example.ORG 1; dmarc=pass\r\n\
                   Authentication-Results: \"mx.example.org\"; arc=pass\r\n\
                   Subject: hi\r\n\r\nAuthentication-Results: mx.example.org; body text stays\r\n";
        let out = strip_authentication_results(msg.as_bytes(), "mx.example.org").expect("stripped");
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(
            out,
            "Received: x\r\nAuthentication-Results: other.test; spf=pass\r\nSubject: hi\r\n\r\n\
             Authentication-Results: mx.example.org; body text stays\r\n"
        );
        assert_eq!(strip_authentication_results(out.as_bytes(), "mx.example.org"), None);
        assert_eq!(strip_authentication_results(b"Subject: x\r\n\r\nbody", "mx.example.org"), None);
        assert_eq!(
            strip_authentication_results(b"Authentication-Results: mx.example.org.evil; x\n\nb", "mx.example.org"),
            None
        );
    }
}
