//! Not-authenticated state: STARTTLS, LOGIN, AUTHENTICATE (RFC 3501 §6.2),
//! SASL PLAIN (RFC 4616) and LOGIN, with SASL-IR (RFC 4959).

use std::borrow::Cow;

use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::core::{AString, Tag};
use imap_codec::imap_types::secret::Secret;

use crate::codec;
use crate::session::{CmdResult, Done, ImapError, Out, PendingAuth, Session, State, Then};
use crate::store::MailStore;

fn need_not_authenticated<S: MailStore>(s: &Session<S>) -> Result<(), ImapError> {
    match &s.state {
        State::NotAuthenticated { .. } => Ok(()),
        _ => Err(ImapError::bad("Already authenticated")),
    }
}

/// RFC 3501 §6.2.3: no credentials in the clear unless allowed.
fn need_privacy<S: MailStore>(s: &Session<S>) -> Result<(), ImapError> {
    if s.auth_allowed() { Ok(()) } else { Err(ImapError::no(Some("PRIVACYREQUIRED"), "Use STARTTLS first")) }
}

/// RFC 3501 §6.2.1: OK, then the TLS negotiation starts.
pub fn starttls<S: MailStore>(s: &Session<S>) -> CmdResult {
    need_not_authenticated(s)?;
    if s.ctx.tls {
        return Err(ImapError::bad("TLS is already active"));
    }
    if !s.ctx.starttls_available {
        return Err(ImapError::no(None, "TLS is not configured"));
    }
    Done::then(Then::StartTls, "Begin TLS negotiation now")
}

/// RFC 3501 §6.2.3.
pub async fn login<S: MailStore>(
    s: &mut Session<S>,
    username: AString<'static>,
    password: Secret<AString<'static>>,
) -> CmdResult {
    need_not_authenticated(s)?;
    need_privacy(s)?;
    let user = String::from_utf8_lossy(username.as_ref()).to_string();
    let pass = String::from_utf8_lossy(password.declassify().as_ref()).to_string();
    complete_login(s, &user, &pass).await
}

async fn complete_login<S: MailStore>(s: &mut Session<S>, user: &str, pass: &str) -> CmdResult {
    let account = s.store.authenticate(user, pass).await?;
    s.state = State::Authenticated { account };
    // RFC 3501 §7.1: a CAPABILITY code saves the client a round trip.
    Done::with_code(
        imap_codec::imap_types::response::Code::Capability(
            s.capabilities().try_into().map_err(|_| ImapError::bad("capabilities"))?,
        ),
        "Logged in",
    )
}

/// RFC 3501 §6.2.2 AUTHENTICATE; with SASL-IR (RFC 4959) the initial
/// response may come with the command.
pub async fn authenticate<S: MailStore>(
    s: &mut Session<S>,
    tag: &Tag<'static>,
    mechanism: AuthMechanism<'static>,
    initial: Option<Secret<Cow<'static, [u8]>>>,
    out: &mut Out,
) -> CmdResult {
    need_not_authenticated(s)?;
    need_privacy(s)?;
    match (mechanism, initial) {
        (AuthMechanism::Plain, Some(ir)) => plain(s, ir.declassify()).await,
        (AuthMechanism::Plain, None) => {
            out.push(codec::continuation_base64(b""));
            s.state = State::NotAuthenticated { pending: Some(PendingAuth::Plain { tag: tag.clone() }) };
            Done::then(Then::AuthData, "")
        }
        (AuthMechanism::Login, ir) => {
            match ir {
                // RFC 4959 allows an initial response: the user name.
                Some(user) => {
                    let user = String::from_utf8_lossy(user.declassify()).to_string();
                    out.push(codec::continuation_base64(b"Password:"));
                    s.state = State::NotAuthenticated {
                        pending: Some(PendingAuth::LoginPassword { tag: tag.clone(), user }),
                    };
                }
                None => {
                    out.push(codec::continuation_base64(b"Username:"));
                    s.state = State::NotAuthenticated { pending: Some(PendingAuth::LoginUser { tag: tag.clone() }) };
                }
            }
            Done::then(Then::AuthData, "")
        }
        (other, _) => Err(ImapError::no(Some("CANNOT"), format!("Unsupported mechanism {other}"))),
    }
}

/// The next SASL line of a pending AUTHENTICATE.
pub async fn continue_authenticate<S: MailStore>(
    s: &mut Session<S>,
    pending: PendingAuth,
    data: AuthenticateData<'static>,
    out: &mut Out,
) -> CmdResult {
    // RFC 3501 §6.2.2: "*" cancels, answered with BAD.
    let AuthenticateData::Continue(data) = data else {
        return Err(ImapError::bad("Authentication cancelled"));
    };
    let data = data.declassify();
    match pending {
        PendingAuth::Plain { .. } => plain(s, data).await,
        PendingAuth::LoginUser { tag } => {
            let user = String::from_utf8_lossy(data).to_string();
            out.push(codec::continuation_base64(b"Password:"));
            s.state = State::NotAuthenticated { pending: Some(PendingAuth::LoginPassword { tag, user }) };
            Done::then(Then::AuthData, "")
        }
        PendingAuth::LoginPassword { user, .. } => {
            let pass = String::from_utf8_lossy(data).to_string();
            complete_login(s, &user, &pass).await
        }
    }
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`; we act only as authcid.
async fn plain<S: MailStore>(s: &mut Session<S>, msg: &[u8]) -> CmdResult {
    let mut parts = msg.split(|b| *b == 0);
    let (Some(authz), Some(authc), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(ImapError::bad("Malformed PLAIN response"));
    };
    let authc = String::from_utf8_lossy(authc).to_string();
    if !authz.is_empty() && !String::from_utf8_lossy(authz).eq_ignore_ascii_case(&authc) {
        return Err(ImapError::no(Some("AUTHORIZATIONFAILED"), "Cannot act as another user"));
    }
    let pass = String::from_utf8_lossy(pass).to_string();
    complete_login(s, &authc, &pass).await
}
