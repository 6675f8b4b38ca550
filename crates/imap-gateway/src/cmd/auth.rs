//! Not-authenticated state: STARTTLS, LOGIN, AUTHENTICATE (RFC 3501 §6.2),
//! SASL PLAIN (RFC 4616) and LOGIN, with SASL-IR (RFC 4959).

use std::borrow::Cow;

use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::core::{AString, Tag};
use imap_codec::imap_types::secret::Secret;

use mailfleet_runtime::sasl::{Credentials, Exchange, Mechanism, SaslError, Step};

use crate::codec;
use crate::session::{CmdResult, Done, ImapError, Out, PendingAuth, Session, State, Then};
use crate::store::{MailStore, StoreError};

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
    let credentials = Credentials::new(username.as_ref(), password.declassify().as_ref());
    complete_login(s, credentials).await
}

/// Credentials that passed the SASL policy go to storage; any that did not
/// are a failed login without asking it.
async fn complete_login<S: MailStore>(s: &mut Session<S>, credentials: Result<Credentials, SaslError>) -> CmdResult {
    let (account, session) = match credentials {
        Ok(c) => s.store.authenticate(&c.username, &c.password, s.ctx.client).await?,
        Err(SaslError::OtherIdentity) => {
            return Err(ImapError::no(Some("AUTHORIZATIONFAILED"), "Cannot act as another user"));
        }
        Err(_) => return Err(StoreError::BadCredentials.into()),
    };
    s.store = S::for_session(&s.store, session);
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
    let mechanism = match mechanism {
        AuthMechanism::Plain => Mechanism::Plain,
        AuthMechanism::Login => Mechanism::Login,
        other => return Err(ImapError::no(Some("CANNOT"), format!("Unsupported mechanism {other}"))),
    };
    let pending = PendingAuth { tag: tag.clone(), exchange: Exchange::new(mechanism) };
    match initial {
        Some(response) => respond(s, pending, response.declassify(), out).await,
        None => {
            out.push(codec::continuation_base64(pending.exchange.challenge()));
            s.state = State::NotAuthenticated { pending: Some(pending) };
            Done::then(Then::AuthData, "")
        }
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
    respond(s, pending, data.declassify(), out).await
}

/// One decoded response: the next challenge, or the login.
async fn respond<S: MailStore>(
    s: &mut Session<S>,
    mut pending: PendingAuth,
    response: &[u8],
    out: &mut Out,
) -> CmdResult {
    match pending.exchange.respond(response) {
        Ok(Step::Challenge(challenge)) => {
            out.push(codec::continuation_base64(challenge));
            s.state = State::NotAuthenticated { pending: Some(pending) };
            Done::then(Then::AuthData, "")
        }
        Ok(Step::Done(credentials)) => complete_login(s, Ok(credentials)).await,
        Err(SaslError::Malformed) => Err(ImapError::bad("Malformed PLAIN response")),
        Err(e) => complete_login(s, Err(e)).await,
    }
}
