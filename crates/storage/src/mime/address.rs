//! RFC 5322 §3.4 address lists turned into IMAP ENVELOPE addresses
//! (RFC 3501 §7.4.2 / RFC 9051 §7.5.2): `(name adl mailbox host)`, with
//! groups as a start marker (mailbox = group name, host NIL) and an end
//! marker (mailbox NIL, host NIL).
//!
//! Everything stays raw: the personal name is the phrase with its quotes
//! removed but encoded words kept (the client decodes them), comments are
//! dropped except as a fallback name for `addr (Name)` forms.

use mailfleet_proto::storage::v1 as pb;

use super::header::text;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An atom or dot-atom (obs-phrase allows dots in phrases).
    Atom(Vec<u8>),
    /// A quoted string: `raw` keeps the quotes and escapes (for a quoted
    /// local part), `unquoted` is its content (for a display name).
    Quoted {
        raw: Vec<u8>,
        unquoted: Vec<u8>,
    },
    /// A domain literal `[...]`, raw.
    Literal(Vec<u8>),
    /// The content of a comment (RFC 5322 §3.2.2), nesting flattened.
    Comment(Vec<u8>),
    Special(u8),
}

const SPECIALS: &[u8] = b"()<>[]:;@\\,\"";

fn tokenize(s: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        match b {
            // Every byte the atom loop below stops at must be skipped here,
            // or it would push empty atoms for ever (fuzz/mime found a form
            // feed doing that: storage hung on the message, memory growing).
            _ if b.is_ascii_whitespace() => i += 1,
            b'"' => {
                let start = i;
                let mut unquoted = Vec::new();
                i += 1;
                while i < s.len() && s[i] != b'"' {
                    // quoted-pair (§3.2.1): the backslash quotes the next octet.
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    unquoted.push(s[i]);
                    i += 1;
                }
                i = (i + 1).min(s.len()); // the closing quote, if any
                tokens.push(Token::Quoted { raw: s[start..i].to_vec(), unquoted });
            }
            b'(' => {
                let mut depth = 0usize;
                let mut content = Vec::new();
                while i < s.len() {
                    match s[i] {
                        b'\\' if i + 1 < s.len() => {
                            i += 1;
                            content.push(s[i]);
                        }
                        b'(' => {
                            if depth > 0 {
                                content.push(b'(');
                            }
                            depth += 1;
                        }
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                            content.push(b')');
                        }
                        c => content.push(c),
                    }
                    i += 1;
                }
                tokens.push(Token::Comment(content));
            }
            b'[' => {
                let start = i;
                while i < s.len() && s[i] != b']' {
                    i += 1;
                }
                i = (i + 1).min(s.len());
                tokens.push(Token::Literal(s[start..i].to_vec()));
            }
            _ if SPECIALS.contains(&b) => {
                tokens.push(Token::Special(b));
                i += 1;
            }
            _ => {
                let start = i;
                while i < s.len() && !SPECIALS.contains(&s[i]) && !s[i].is_ascii_whitespace() {
                    i += 1;
                }
                tokens.push(Token::Atom(s[start..i].to_vec()));
            }
        }
    }
    tokens
}

fn is_special(t: &Token, c: u8) -> bool {
    *t == Token::Special(c)
}

/// Parses an unfolded address-list field body (From, To, Cc, ...).
pub(crate) fn parse_address_list(value: &[u8]) -> Vec<pb::Address> {
    let tokens = tokenize(value);
    let mut out = Vec::new();
    let mut in_group = false;
    let mut i = 0;
    while i < tokens.len() {
        // Find where this element ends: ',' ends a mailbox, ':' (outside an
        // angle address) starts a group, ';' ends a group.
        let mut j = i;
        let mut terminator = None;
        while j < tokens.len() {
            match &tokens[j] {
                Token::Special(b'<') => {
                    while j < tokens.len() && !is_special(&tokens[j], b'>') {
                        j += 1;
                    }
                    if j == tokens.len() {
                        break;
                    }
                }
                Token::Special(c @ (b',' | b':' | b';')) => {
                    terminator = Some(*c);
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        let element = &tokens[i..j.min(tokens.len())];
        match terminator {
            Some(b':') => {
                if in_group {
                    // Nested group (invalid): close the previous one first.
                    out.push(group_end());
                }
                // RFC 3501 §7.4.2: group start has the group name as mailbox
                // and a NIL host.
                out.push(pb::Address {
                    name: None,
                    adl: None,
                    mailbox: Some(phrase(element).unwrap_or_default()),
                    host: None,
                });
                in_group = true;
            }
            Some(b';') => {
                out.extend(mailbox(element));
                if in_group {
                    out.push(group_end());
                    in_group = false;
                }
            }
            _ => out.extend(mailbox(element)),
        }
        i = j + 1;
    }
    if in_group {
        // A group missing its ';' is still closed for the client.
        out.push(group_end());
    }
    out
}

fn group_end() -> pb::Address {
    pb::Address::default()
}

/// The display name: the words of a phrase joined by one space, quotes
/// removed, encoded words kept. `None` when there are no words.
fn phrase(tokens: &[Token]) -> Option<String> {
    let words: Vec<&[u8]> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Atom(a) => Some(a.as_slice()),
            Token::Quoted { unquoted, .. } => Some(unquoted.as_slice()),
            Token::Literal(l) => Some(l.as_slice()),
            _ => None,
        })
        .collect();
    if words.is_empty() {
        return None;
    }
    Some(text(&words.join(&b' ')))
}

/// One mailbox: `[phrase] "<" [route ":"] addr-spec ">"` or a bare
/// `addr-spec` (RFC 5322 §3.4, obsolete route per §4.4).
fn mailbox(tokens: &[Token]) -> Option<pb::Address> {
    let lt = tokens.iter().position(|t| is_special(t, b'<'));
    let (name, addr_tokens, adl) = match lt {
        Some(lt) => {
            let gt = tokens[lt..].iter().position(|t| is_special(t, b'>')).map_or(tokens.len(), |n| lt + n);
            let inner = &tokens[lt + 1..gt];
            // obs-route: "@a,@b:" before the addr-spec.
            let (adl, spec) = match inner.iter().position(|t| is_special(t, b':')) {
                Some(colon) => (Some(concat(&inner[..colon])), &inner[colon + 1..]),
                None => (None, inner),
            };
            let mut name = phrase(&tokens[..lt]);
            if name.is_none() {
                name = first_comment(&tokens[gt.min(tokens.len())..]);
            }
            (name, spec, adl.filter(|a| !a.is_empty()))
        }
        None => (first_comment(tokens), tokens, None),
    };
    let spec: Vec<&Token> = addr_tokens.iter().filter(|t| !matches!(t, Token::Comment(_))).collect();
    let at = spec.iter().rposition(|t| is_special(t, b'@'));
    let (local, host) = match at {
        Some(at) => (concat_refs(&spec[..at]), concat_refs(&spec[at + 1..])),
        None => (concat_refs(&spec), String::new()),
    };
    if local.is_empty() && host.is_empty() {
        // An empty element, e.g. "a@b, , c@d" or a lone comment.
        return None;
    }
    Some(pb::Address {
        name,
        adl,
        mailbox: Some(local),
        // A missing domain is an empty host, never NIL: NIL host marks groups.
        host: Some(host),
    })
}

fn first_comment(tokens: &[Token]) -> Option<String> {
    tokens.iter().find_map(|t| match t {
        Token::Comment(c) => {
            let c = text(c.trim_ascii());
            (!c.is_empty()).then_some(c)
        }
        _ => None,
    })
}

fn raw_bytes(t: &Token) -> &[u8] {
    match t {
        Token::Atom(a) | Token::Literal(a) => a,
        Token::Quoted { raw, .. } => raw,
        Token::Comment(_) => b"",
        Token::Special(c) => std::slice::from_ref(c),
    }
}

fn concat(tokens: &[Token]) -> String {
    concat_refs(&tokens.iter().collect::<Vec<_>>())
}

/// The raw octets of the tokens, without CFWS (local-part, domain, route).
fn concat_refs(tokens: &[&Token]) -> String {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| raw_bytes(t)).copied().collect();
    text(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: Option<&str>, mailbox: Option<&str>, host: Option<&str>) -> pb::Address {
        pb::Address {
            name: name.map(Into::into),
            adl: None,
            mailbox: mailbox.map(Into::into),
            host: host.map(Into::into),
        }
    }

    #[test]
    fn rfc5322_appendix_a_examples() {
        // RFC 5322 §A.1.2
        let list = parse_address_list(b"A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;");
        assert_eq!(
            list,
            vec![
                addr(None, Some("A Group"), None),
                addr(Some("Ed Jones"), Some("c"), Some("a.test")),
                addr(None, Some("joe"), Some("where.test")),
                addr(Some("John"), Some("jdoe"), Some("one.test")),
                addr(None, None, None),
            ]
        );
        // RFC 5322 §A.5: comments everywhere.
        let list = parse_address_list(b"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>");
        assert_eq!(list, vec![addr(Some("Pete"), Some("pete"), Some("silly.test"))]);
        assert_eq!(
            parse_address_list(b"undisclosed-recipients:;"),
            vec![addr(None, Some("undisclosed-recipients"), None), addr(None, None, None)]
        );
    }

    #[test]
    fn route_quotes_and_legacy_comment_name() {
        let list = parse_address_list(b"\"Doe, John\" <@r1,@r2:\"j d\"@x.test>, a@b (Alice)");
        assert_eq!(list[0].name.as_deref(), Some("Doe, John"));
        assert_eq!(list[0].adl.as_deref(), Some("@r1,@r2"));
        assert_eq!(list[0].mailbox.as_deref(), Some("\"j d\""));
        assert_eq!(list[1], addr(Some("Alice"), Some("a"), Some("b")));
        assert_eq!(parse_address_list(b"nobody"), vec![addr(None, Some("nobody"), Some(""))]);
        assert!(parse_address_list(b" , (c) ,").is_empty());
    }

    #[test]
    fn form_feeds_and_vertical_space_end_atoms_and_are_skipped() {
        // This looped for ever (an empty atom per turn) before the fix.
        let list = parse_address_list(b"c@d.test,\x0c\x0c Group: \x0c e@f\x0c.test;");
        assert_eq!(list[0], addr(None, Some("c"), Some("d.test")));
        assert_eq!(list[1], addr(None, Some("Group"), None));
        assert_eq!(list.len(), 4, "{list:?}");
    }
}
