//! The DSN parameters a client hands us for other MTAs (RFC 3461 §4):
//! ENVID and ORCPT, in xtext (RFC 3461 §4) or, for the `utf-8` address
//! type, in the utf-8-addr-xtext / utf-8-addr-unitext forms of RFC 6533 §3.
//!
//! They are decoded once, when they arrive, and checked: a decoded value
//! with a control character (CR, LF, NUL, DEL, C1 …) is refused, so nothing
//! a client sends can end a line in another SMTP session or a header field.
//! Going out they are encoded again from the decoded value, never passed on
//! as received. Between services (the queue job) the decoded form is
//! carried: `ENVID` as it is, `ORCPT` as `addr-type;address`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnParamError {
    #[error("malformed xtext")]
    Xtext,
    #[error("malformed utf-8 address encoding")]
    Utf8Addr,
    #[error("decoded value is not UTF-8")]
    NotUtf8,
    #[error("value contains a control character")]
    Control,
    #[error("value is empty")]
    Empty,
    #[error("value is too long")]
    TooLong,
    #[error("malformed address type")]
    AddrType,
    #[error("ENVID must be printable US-ASCII")]
    EnvidCharset,
}

/// RFC 3461 §4.4: ENVID is at most 100 characters (encoded).
pub const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: the whole ORCPT value is at most 500 characters.
pub const MAX_ORCPT: usize = 500;

/// RFC 3461 §4: xchar = any ASCII from "!" to "~" except "+" and "=".
fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

/// RFC 6533 §3 QCHAR: printable ASCII except "+", "=" and "\".
fn is_qchar(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\')
}

/// Decode xtext (RFC 3461 §4): `+XX` is the octet XX. The decoded octets
/// must be UTF-8. Lower-case hex digits are accepted (be liberal); anything
/// outside xchar/hexchar is an error.
pub fn decode_xtext(s: &str) -> Result<String, DsnParamError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            let hex = bytes.get(i + 1..i + 3).ok_or(DsnParamError::Xtext)?;
            let hex = std::str::from_utf8(hex).map_err(|_| DsnParamError::Xtext)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| DsnParamError::Xtext)?);
            i += 3;
        } else if is_xchar(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(DsnParamError::Xtext);
        }
    }
    String::from_utf8(out).map_err(|_| DsnParamError::NotUtf8)
}

/// Encode as xtext (RFC 3461 §4): every octet outside xchar becomes `+XX`.
pub fn encode_xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if is_xchar(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decode utf-8-addr-xtext or utf-8-addr-unitext (RFC 6533 §3): QCHARs and
/// (unitext) non-ASCII characters stand for themselves, `\x{HEX}` is the
/// code point HEX.
pub fn decode_utf8_addr(s: &str) -> Result<String, DsnParamError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            let inner = rest.strip_prefix("\\x{").ok_or(DsnParamError::Utf8Addr)?;
            let end = inner.find('}').ok_or(DsnParamError::Utf8Addr)?;
            let hex = &inner[..end];
            if hex.is_empty() || hex.len() > 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(DsnParamError::Utf8Addr);
            }
            let code = u32::from_str_radix(hex, 16).map_err(|_| DsnParamError::Utf8Addr)?;
            out.push(char::from_u32(code).ok_or(DsnParamError::Utf8Addr)?);
            rest = &inner[end + 1..];
        } else if is_qchar(c) || !c.is_ascii() {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        } else {
            return Err(DsnParamError::Utf8Addr);
        }
    }
    Ok(out)
}

/// Encode as utf-8-addr-xtext (RFC 6533 §3): pure ASCII, so it is valid
/// whether or not the next hop announced SMTPUTF8.
pub fn encode_utf8_addr_xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_qchar(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:02X}}}", c as u32));
        }
    }
    out
}

fn check_no_control(s: &str) -> Result<(), DsnParamError> {
    if s.chars().any(char::is_control) { Err(DsnParamError::Control) } else { Ok(()) }
}

/// RFC 3461 §4.4 ENVID, decoded: printable US-ASCII (graphic and space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envid(String);

impl Envid {
    /// From the MAIL parameter value as the client sent it (xtext).
    pub fn from_param(raw: &str) -> Result<Envid, DsnParamError> {
        if raw.len() > MAX_ENVID {
            return Err(DsnParamError::TooLong);
        }
        Envid::new(decode_xtext(raw)?)
    }

    /// From the decoded form (as carried in the queue job).
    pub fn new(decoded: String) -> Result<Envid, DsnParamError> {
        if decoded.is_empty() {
            return Err(DsnParamError::Empty);
        }
        check_no_control(&decoded)?;
        if !decoded.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(DsnParamError::EnvidCharset);
        }
        if encode_xtext(&decoded).len() > MAX_ENVID {
            return Err(DsnParamError::TooLong);
        }
        Ok(Envid(decoded))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parameter value to send on (xtext).
    pub fn to_param(&self) -> String {
        encode_xtext(&self.0)
    }
}

/// RFC 3461 §4.2 ORCPT: an address type and the original recipient address,
/// decoded. RFC 3461 does not constrain the address to its type's syntax,
/// so only the encoding and the absence of control characters are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRecipient {
    /// Lower case: `rfc822`, `utf-8` (RFC 6533), or another registered type.
    addr_type: String,
    address: String,
}

impl OriginalRecipient {
    /// From the RCPT parameter value as the client sent it:
    /// `addr-type ";" xtext`, or `utf-8;` with a utf-8-addr form.
    pub fn from_param(raw: &str) -> Result<OriginalRecipient, DsnParamError> {
        if raw.len() > MAX_ORCPT {
            return Err(DsnParamError::TooLong);
        }
        let (addr_type, value) = raw.split_once(';').ok_or(DsnParamError::AddrType)?;
        let addr_type = parse_addr_type(addr_type)?;
        let address = if addr_type == "utf-8" { decode_utf8_addr(value)? } else { decode_xtext(value)? };
        OriginalRecipient::new(addr_type, address)
    }

    /// From the decoded `addr-type;address` form carried in the queue job.
    pub fn parse_stored(stored: &str) -> Result<OriginalRecipient, DsnParamError> {
        let (addr_type, address) = stored.split_once(';').ok_or(DsnParamError::AddrType)?;
        OriginalRecipient::new(parse_addr_type(addr_type)?, address.to_string())
    }

    fn new(addr_type: String, address: String) -> Result<OriginalRecipient, DsnParamError> {
        if address.is_empty() {
            return Err(DsnParamError::Empty);
        }
        check_no_control(&address)?;
        let recipient = OriginalRecipient { addr_type, address };
        if recipient.to_param().len() > MAX_ORCPT {
            return Err(DsnParamError::TooLong);
        }
        Ok(recipient)
    }

    pub fn addr_type(&self) -> &str {
        &self.addr_type
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The parameter value to send on: xtext, or utf-8-addr-xtext for the
    /// `utf-8` type (7-bit, valid with or without SMTPUTF8).
    pub fn to_param(&self) -> String {
        let value =
            if self.addr_type == "utf-8" { encode_utf8_addr_xtext(&self.address) } else { encode_xtext(&self.address) };
        format!("{};{value}", self.addr_type)
    }

    /// The `Original-Recipient:` value of a message/delivery-status part
    /// (RFC 3464 §2.3.1), which is 7-bit: an ASCII address as it is, a
    /// non-ASCII one as `utf-8; utf-8-addr-xtext` (RFC 6533 §3).
    pub fn to_report_field(&self) -> String {
        if self.address.is_ascii() && self.addr_type != "utf-8" {
            format!("{}; {}", self.addr_type, self.address)
        } else {
            format!("utf-8; {}", encode_utf8_addr_xtext(&self.address))
        }
    }
}

/// The decoded form carried in the queue job: `addr-type;address`.
impl fmt::Display for OriginalRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, self.address)
    }
}

/// RFC 3461 §4.2 addr-type is an atom naming a registered type; the
/// registered ones are letters, digits and "-", which is all we take.
fn parse_addr_type(s: &str) -> Result<String, DsnParamError> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(DsnParamError::AddrType);
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_round_trip() {
        assert_eq!(decode_xtext("George+20@Tax-+20ME+20.GOV").as_deref(), Ok("George @Tax- ME .GOV"));
        assert_eq!(encode_xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(decode_xtext("caf+C3+A9").as_deref(), Ok("café"));
        assert_eq!(decode_xtext(&encode_xtext("x\r\ny+=é")).as_deref(), Ok("x\r\ny+=é"));
        for bad in ["a+", "a+4", "a+ZZ", "a b", "a=b", "caf\u{e9}"] {
            assert_eq!(decode_xtext(bad), Err(DsnParamError::Xtext), "{bad}");
        }
        assert_eq!(decode_xtext("+FF"), Err(DsnParamError::NotUtf8));
    }

    #[test]
    fn orcpt_with_encoded_line_breaks_is_refused() {
        for raw in [
            "rfc822;a@b.test+0D+0ARSET",
            "rfc822;a@b.test+0A",
            "rfc822;a+00@b.test",
            "rfc822;a+7F@b.test",
            "rfc822;a+C2+85@b.test",
            "utf-8;a\\x{0D}\\x{0A}@b.test",
            "utf-8;a\\x{85}@b.test",
        ] {
            assert_eq!(OriginalRecipient::from_param(raw), Err(DsnParamError::Control), "{raw}");
        }
        assert_eq!(OriginalRecipient::parse_stored("rfc822;a@b\r\nRSET"), Err(DsnParamError::Control));
        assert_eq!(OriginalRecipient::parse_stored("rfc\r\n822;a@b"), Err(DsnParamError::AddrType));
        assert_eq!(OriginalRecipient::from_param("rfc822;"), Err(DsnParamError::Empty));
        assert_eq!(OriginalRecipient::from_param("a@b.test"), Err(DsnParamError::AddrType));
        assert_eq!(OriginalRecipient::from_param(&format!("rfc822;{}", "a".repeat(500))), Err(DsnParamError::TooLong));
    }

    #[test]
    fn orcpt_types_decode_and_encode_again() {
        let o = OriginalRecipient::from_param("RFC822;Bob+2Bx@Example.COM").expect("rfc822");
        assert_eq!((o.addr_type(), o.address()), ("rfc822", "Bob+x@Example.COM"));
        assert_eq!(o.to_param(), "rfc822;Bob+2Bx@Example.COM");
        assert_eq!(o.to_string(), "rfc822;Bob+x@Example.COM");
        assert_eq!(OriginalRecipient::parse_stored(&o.to_string()), Ok(o));

        // RFC 6533 §3: the 7-bit form and the unitext form name the same address.
        let x = OriginalRecipient::from_param("utf-8;j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.test").expect("xtext form");
        let u = OriginalRecipient::from_param("utf-8;jörg\\x{2B}x@bücher.test").expect("unitext form");
        assert_eq!(x, u);
        assert_eq!(x.address(), "jörg+x@bücher.test");
        assert_eq!(x.to_param(), "utf-8;j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.test");
        assert!(x.to_param().is_ascii());
        assert_eq!(x.to_report_field(), "utf-8; j\\x{F6}rg\\x{2B}x@b\\x{FC}cher.test");
        assert_eq!(decode_utf8_addr("\\x{1F600}").as_deref(), Ok("\u{1F600}"));
        for bad in ["a+b", "a=b", "a b", "a\\b", "\\x{}", "\\x{D800}", "\\x{110000}", "\\x{41"] {
            assert_eq!(decode_utf8_addr(bad), Err(DsnParamError::Utf8Addr), "{bad}");
        }
        // Other registered types pass through as xtext.
        let other = OriginalRecipient::from_param("x400;c+3Dus+3Ba+3Dx").expect("x400");
        assert_eq!(other.to_param(), "x400;c+3Dus;a+3Dx");
        assert_eq!(other.to_report_field(), "x400; c=us;a=x");
    }

    #[test]
    fn envid() {
        assert_eq!(Envid::from_param("QQ314159").map(|e| e.to_param()), Ok("QQ314159".into()));
        assert_eq!(Envid::from_param("hi+20there").map(|e| e.as_str().to_string()), Ok("hi there".into()));
        assert_eq!(Envid::from_param("x+0D+0AQUIT"), Err(DsnParamError::Control));
        assert_eq!(Envid::from_param("caf+C3+A9"), Err(DsnParamError::EnvidCharset));
        assert_eq!(Envid::from_param(&"a".repeat(101)), Err(DsnParamError::TooLong));
        assert_eq!(Envid::new("a\nb".into()), Err(DsnParamError::Control));
        assert_eq!(Envid::new("a+b".into()).map(|e| e.to_param()), Ok("a+2Bb".into()));
    }
}
