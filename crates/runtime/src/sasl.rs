//! The SASL mechanisms every gateway offers — PLAIN (RFC 4616) and LOGIN
//! (draft-murchison-sasl-login) — for SMTP AUTH (RFC 4954), IMAP
//! AUTHENTICATE (RFC 3501 §6.2.2, SASL-IR RFC 4959) and POP3 AUTH
//! (RFC 5034), and the one policy every credential passes, whether it came
//! through SASL, IMAP LOGIN or POP3 USER/PASS. Pure: decoded bytes in,
//! credentials or a challenge out; each protocol frames the lines itself.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// A user name longer than this is no address (RFC 5321 §4.5.3.1.3: 256).
pub const MAX_USERNAME: usize = 256;
/// A password longer than this is not one anybody types.
pub const MAX_PASSWORD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Every mechanism offered, in the order the capabilities list them.
    pub const ALL: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

    /// The mechanism a client named (case-insensitive, RFC 4422 §3.1).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4, RFC 5034 §4, RFC 3501 §6.2.2).
    #[error("authentication cancelled")]
    Cancelled,
    #[error("invalid base64 in SASL response")]
    Base64,
    /// The PLAIN message is not `[authzid] NUL authcid NUL passwd`.
    #[error("malformed PLAIN response")]
    Malformed,
    /// An authorization identity other than the user itself.
    #[error("cannot act as another user")]
    OtherIdentity,
    /// Not UTF-8, a control character, or too long: never valid
    /// credentials, so a failed login (counted like a wrong password).
    #[error("invalid credentials")]
    Invalid,
}

/// A user name and password that passed the policy: valid UTF-8 (no lossy
/// conversion, so two different byte strings are never one password), no
/// control characters (RFC 4013 §2.3 prohibits them; `mailctl` refuses
/// them in new passwords), bounded lengths.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

fn text(bytes: &[u8], max: usize) -> Result<String, SaslError> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(SaslError::Invalid);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| SaslError::Invalid)?;
    if s.chars().any(char::is_control) {
        return Err(SaslError::Invalid);
    }
    Ok(s.to_owned())
}

impl Credentials {
    /// Apply the policy to a user name and password as the client sent them.
    pub fn new(username: &[u8], password: &[u8]) -> Result<Credentials, SaslError> {
        Ok(Credentials { username: text(username, MAX_USERNAME)?, password: text(password, MAX_PASSWORD)? })
    }
}

/// Decode one client response line of a SASL exchange (CRLF removed):
/// base64, `=` for an empty initial response, `*` to cancel.
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    match line.trim_ascii() {
        b"*" => Err(SaslError::Cancelled),
        b"=" => Ok(Vec::new()),
        b64 => B64.decode(b64).map_err(|_| SaslError::Base64),
    }
}

/// Base64 of a challenge, for the protocols that frame it themselves.
pub fn encode_challenge(challenge: &[u8]) -> String {
    B64.encode(challenge)
}

/// What comes after a response.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge (raw; base64 it for the wire) and wait for the next response.
    Challenge(&'static [u8]),
    /// The exchange is over: check these.
    Done(Credentials),
}

/// One exchange in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange(State);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for `[authzid] NUL authcid NUL passwd`.
    Plain,
    /// LOGIN: waiting for the user name, then the password.
    LoginUser,
    LoginPassword(Vec<u8>),
}

impl Exchange {
    pub fn new(mechanism: Mechanism) -> Exchange {
        Exchange(match mechanism {
            Mechanism::Plain => State::Plain,
            Mechanism::Login => State::LoginUser,
        })
    }

    /// The challenge that asks for the next response: empty for PLAIN
    /// (RFC 4616 §2), `Username:`/`Password:` for LOGIN.
    pub fn challenge(&self) -> &'static [u8] {
        match self.0 {
            State::Plain => b"",
            State::LoginUser => b"Username:",
            State::LoginPassword(_) => b"Password:",
        }
    }

    /// Feed one decoded response (an initial response counts as the first).
    pub fn respond(&mut self, response: &[u8]) -> Result<Step, SaslError> {
        match &self.0 {
            State::Plain => plain(response).map(Step::Done),
            State::LoginUser => {
                // Checked now, so a bad name never reaches the password prompt's answer.
                text(response, MAX_USERNAME)?;
                self.0 = State::LoginPassword(response.to_vec());
                Ok(Step::Challenge(self.challenge()))
            }
            State::LoginPassword(user) => Credentials::new(user, response).map(Step::Done),
        }
    }
}

/// RFC 4616 §2: `message = [authzid] UTF8NUL authcid UTF8NUL passwd`; we
/// act only as the user who authenticates (an authzid naming anybody else
/// is refused).
fn plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let credentials = Credentials::new(authcid, passwd)?;
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(authcid) {
        return Err(SaslError::OtherIdentity);
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn done(step: Result<Step, SaslError>) -> Credentials {
        match step {
            Ok(Step::Done(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_with_and_without_authzid() {
        let c = done(Exchange::new(Mechanism::Plain).respond("\0alice@example.org\0pässword".as_bytes()));
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice@example.org", "pässword"));
        done(Exchange::new(Mechanism::Plain).respond(b"Alice@Example.org\0alice@example.org\0pw"));
        assert_eq!(
            Exchange::new(Mechanism::Plain).respond(b"bob@example.org\0alice@example.org\0pw"),
            Err(SaslError::OtherIdentity)
        );
        for bad in [&b"alice\0pw"[..], b"", b"a\0b\0c\0d"] {
            assert_eq!(Exchange::new(Mechanism::Plain).respond(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn login_asks_for_the_name_then_the_password() {
        let mut x = Exchange::new(Mechanism::Login);
        assert_eq!(x.challenge(), b"Username:");
        assert_eq!(x.respond(b"alice@example.org"), Ok(Step::Challenge(b"Password:")));
        let c = done(x.respond(b"secret"));
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice@example.org", "secret"));
    }

    #[test]
    fn one_utf8_policy_for_every_credential() {
        // Lossy decoding would have made these two passwords one.
        assert_eq!(Credentials::new(b"alice", b"pass\xffword"), Err(SaslError::Invalid));
        assert_eq!(Credentials::new(b"alice", b"pass\xfeword"), Err(SaslError::Invalid));
        assert_eq!(Credentials::new(b"ali\rce", b"pw"), Err(SaslError::Invalid));
        assert_eq!(Credentials::new(b"alice", b"p\nw"), Err(SaslError::Invalid));
        assert_eq!(Credentials::new(b"", b"pw"), Err(SaslError::Invalid));
        assert_eq!(Credentials::new(&[b'a'; MAX_USERNAME + 1], b"pw"), Err(SaslError::Invalid));
        assert_eq!(Credentials::new(b"alice", &vec![b'p'; MAX_PASSWORD + 1]), Err(SaslError::Invalid));
        assert!(Credentials::new("älice".as_bytes(), "pa ss wörd".as_bytes()).is_ok());
        let mut x = Exchange::new(Mechanism::Login);
        assert_eq!(x.respond(b"\xff"), Err(SaslError::Invalid));
    }

    #[test]
    fn response_lines() {
        assert_eq!(decode_response(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response(b"="), Ok(Vec::new()));
        assert_eq!(decode_response(b"YWxpY2U= "), Ok(b"alice".to_vec()));
        assert_eq!(decode_response(b"not base64!"), Err(SaslError::Base64));
        assert_eq!(encode_challenge(b"Username:"), "VXNlcm5hbWU6");
        assert_eq!(Mechanism::from_name("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::from_name("CRAM-MD5"), None);
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let c = Credentials::new(b"alice", b"hunter22").unwrap();
        assert!(!format!("{c:?}").contains("hunter22"));
    }

    proptest! {
        #[test]
        fn any_response_is_answered_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for mechanism in Mechanism::ALL {
                let mut x = Exchange::new(mechanism);
                let _ = x.respond(&bytes);
                let _ = x.respond(&bytes);
            }
            let _ = decode_response(&bytes);
        }
    }
}
