//! The IMAP4rev1 state machine (RFC 3501 §3; IMAP4rev2, RFC 9051, after
//! ENABLE): one command in, responses out, storage behind the `MailStore`
//! trait. No sockets here.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::{Atom, Tag};
use imap_codec::imap_types::mailbox::ListMailbox;
use imap_codec::imap_types::response::{Capability, Code, Data, Response};

use crate::cmd;
use crate::codec::ext::ExtBody;
use crate::codec::{self, ClientBody, ClientCommand, StatusKindArg};
use crate::store::{Account, MailStore, StoreError};

/// What the driver does after sending a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Read the next command.
    Command,
    /// Read a SASL response line (AUTHENTICATE in progress).
    AuthData,
    /// Start TLS on the connection, then read commands (RFC 3501 §6.2.1).
    StartTls,
    /// Close the connection (after LOGOUT or too many bad logins).
    Close,
    /// IDLE (RFC 2177): push updates until DONE.
    Idle,
    /// COMPRESS=DEFLATE (RFC 4978): deflate both directions from now on.
    Compress,
}

/// Responses to send, in order, and what comes next.
#[derive(Debug)]
pub struct Reply {
    pub responses: Vec<Response<'static>>,
    pub then: Then,
    /// Slow the client down before answering (failed login).
    pub delay: bool,
}

/// Why a command failed, with its wire form (STYLE.md §4).
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// Tagged BAD: syntax, or a command not valid in this state.
    #[error("{0}")]
    Bad(String),
    /// Tagged NO, optionally with a response code.
    #[error("{1}")]
    No(Option<Code<'static>>, String),
    /// A storage failure mapped to NO with an RFC 5530 code.
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl ImapError {
    pub fn bad(text: impl Into<String>) -> Self {
        ImapError::Bad(text.into())
    }
    pub fn no(code: Option<&'static str>, text: impl Into<String>) -> Self {
        ImapError::No(code.map(codec::code), text.into())
    }

    fn into_response(self, tag: Tag<'static>) -> Response<'static> {
        match self {
            ImapError::Bad(text) => codec::status(Some(tag), StatusKindArg::Bad, None, &text),
            ImapError::No(code, text) => codec::status(Some(tag), StatusKindArg::No, code, &text),
            ImapError::Store(e) => {
                if let StoreError::Unavailable(detail) = &e {
                    tracing::warn!(error = %detail, "storage failure");
                }
                // RFC 5530 §3 response codes.
                let (code, text) = match &e {
                    StoreError::Unavailable(_) => {
                        (codec::code("UNAVAILABLE"), "Storage is unavailable, try again later".to_string())
                    }
                    StoreError::NotFound(_) => (codec::code("NONEXISTENT"), "No such mailbox".to_string()),
                    StoreError::AlreadyExists(_) => {
                        (codec::code("ALREADYEXISTS"), "Mailbox already exists".to_string())
                    }
                    StoreError::OverQuota(_) => (Code::OverQuota, "Over quota".to_string()),
                    StoreError::Invalid(m) | StoreError::NotAllowed(m) => (codec::code("CANNOT"), m.clone()),
                    StoreError::BadCredentials => {
                        (codec::code("AUTHENTICATIONFAILED"), "Authentication failed".to_string())
                    }
                    StoreError::Disabled => (codec::code("AUTHORIZATIONFAILED"), "Account disabled".to_string()),
                    StoreError::SessionEnded(_) => {
                        (codec::code("AUTHORIZATIONFAILED"), "Session ended, log in again".to_string())
                    }
                    // RFC 5530 §3: UNAVAILABLE, try again later.
                    StoreError::Throttled => (
                        codec::code("UNAVAILABLE"),
                        "Too many failed logins from your address, try again later".to_string(),
                    ),
                };
                codec::status(Some(tag), StatusKindArg::No, Some(code), &text)
            }
        }
    }
}

pub type CmdResult = Result<Done, ImapError>;

/// A command's successful completion: the tagged OK and what comes next.
#[derive(Debug)]
pub struct Done {
    pub code: Option<Code<'static>>,
    pub text: String,
    pub then: Then,
}

impl Done {
    pub fn ok(text: impl Into<String>) -> CmdResult {
        Ok(Done { code: None, text: text.into(), then: Then::Command })
    }
    pub fn with_code(code: Code<'static>, text: impl Into<String>) -> CmdResult {
        Ok(Done { code: Some(code), text: text.into(), then: Then::Command })
    }
    pub fn then(then: Then, text: impl Into<String>) -> CmdResult {
        Ok(Done { code: None, text: text.into(), then })
    }
}

/// The untagged responses of the command in progress. With a sink, large
/// outputs (FETCH over many messages or big bodies) go to the driver in
/// chunks while the command runs, so they are never all in memory.
pub struct Out {
    items: Vec<Item>,
    sink: Option<mpsc::Sender<Vec<u8>>>,
    /// Body octets in `items` (see `flush_after_body`).
    body_octets: usize,
}

/// One untagged response: a value imap-types models, or wire bytes
/// formatted here for responses it does not (ESEARCH, extended LIST).
enum Item {
    Response(Response<'static>),
    Raw(Vec<u8>),
}

/// Responses buffered before a chunk is handed to the driver.
const CHUNK_RESPONSES: usize = 64;
/// Body octets buffered before they are handed to the driver: a FETCH of
/// many small bodies then goes out in few writes, not one per message.
const CHUNK_BODY_OCTETS: usize = 64 * 1024;

impl Out {
    pub fn new(sink: Option<mpsc::Sender<Vec<u8>>>) -> Out {
        Out { items: Vec::new(), sink, body_octets: 0 }
    }

    pub fn push(&mut self, response: Response<'static>) {
        self.items.push(Item::Response(response));
    }

    /// A complete untagged response line (CRLF included) in wire form.
    /// Delivered through the sink: `Session::handle_streaming` with a sink
    /// (as the driver always calls it) sends these in order.
    pub fn push_raw(&mut self, line: Vec<u8>) {
        self.items.push(Item::Raw(line));
    }

    pub fn extend(&mut self, responses: impl IntoIterator<Item = Response<'static>>) {
        self.items.extend(responses.into_iter().map(Item::Response));
    }

    /// Drop queued responses (not yet sent) that `keep` refuses.
    pub fn retain(&mut self, keep: impl Fn(&Response<'static>) -> bool) {
        self.items.retain(|i| match i {
            Item::Response(r) => keep(r),
            Item::Raw(_) => true,
        });
    }

    fn has_raw(&self) -> bool {
        self.items.iter().any(|i| matches!(i, Item::Raw(_)))
    }

    /// Send what has accumulated when it is large, or now with `force`
    /// (after a body). `false` when the client is gone.
    pub async fn flush(&mut self, force: bool) -> bool {
        let Some(sink) = &self.sink else { return true };
        if self.items.is_empty() || (!force && self.items.len() < CHUNK_RESPONSES) {
            return true;
        }
        let mut chunk = Vec::new();
        for item in self.items.drain(..) {
            match item {
                Item::Response(r) => codec::encode_into(&r, &mut chunk),
                Item::Raw(bytes) => chunk.extend(bytes),
            }
        }
        sink.send(chunk).await.is_ok()
    }

    /// After a response carrying `octets` of message bodies: send what has
    /// accumulated once it holds enough body octets (or responses).
    pub async fn flush_after_body(&mut self, octets: usize) -> bool {
        self.body_octets += octets;
        if self.body_octets < CHUNK_BODY_OCTETS {
            return self.flush(false).await;
        }
        self.body_octets = 0;
        self.flush(true).await
    }

    /// The responses not yet sent. Raw lines are only ever sent through a
    /// sink (see `push_raw`); without one they are dropped here.
    pub fn into_responses(self) -> Vec<Response<'static>> {
        self.items
            .into_iter()
            .filter_map(|i| match i {
                Item::Response(r) => Some(r),
                Item::Raw(_) => None,
            })
            .collect()
    }
}

/// The open mailbox in Selected state (RFC 3501 §3.3).
#[derive(Debug, Clone)]
pub struct Selected {
    pub id: i64,
    pub name: String,
    /// EXAMINE (RFC 3501 §6.3.2): no flag changes, no expunges.
    pub read_only: bool,
    pub uid_validity: u32,
    /// The sequence-number ↔ UID map (RFC 3501 §2.3.1.2): `uids[seq-1]`.
    /// UIDs expunged elsewhere stay until an EXPUNGE may be reported.
    pub uids: Vec<u32>,
    /// Messages this session sees as \Recent (RFC 3501 §2.3.2).
    pub recent: BTreeSet<u32>,
    pub highest_modseq: u64,
    /// UIDs saved by SEARCH RETURN (SAVE), named "$" (RFC 5182 §2.1).
    pub saved: Vec<u32>,
    /// Expunged elsewhere, not yet reported: RFC 3501 §7.4.1 forbids
    /// EXPUNGE during FETCH, STORE and SEARCH.
    pub pending_expunges: BTreeSet<u32>,
    /// Flag changes this session made and already reported (UID → MODSEQ),
    /// so the next sync does not report them twice; anything else that
    /// changed meanwhile is still reported.
    pub own_changes: std::collections::HashMap<u32, u64>,
    /// Keywords the client was told of in FLAGS (RFC 3501 §7.2.6).
    pub keywords: KnownKeywords,
}

/// Keywords a session announced in FLAGS: in the order and spelling first
/// seen, and sets for the check a FETCH of FLAGS makes for every flag of
/// every message (a hash look-up, not a scan of the list). Keywords
/// compare case-insensitively, as storage matches them.
// Boxed: a session's State stays small while no mailbox is selected.
#[derive(Debug, Default, Clone)]
pub struct KnownKeywords(Box<Keywords>);

#[derive(Debug, Default, Clone)]
struct Keywords {
    order: Vec<String>,
    as_spelled: std::collections::HashSet<String>,
    folded: std::collections::HashSet<String>,
}

impl KnownKeywords {
    pub fn knows(&self, keyword: &str) -> bool {
        self.0.as_spelled.contains(keyword) || self.0.folded.contains(&keyword.to_ascii_lowercase())
    }
    /// Remember `keyword`; false when it was known already.
    pub fn add(&mut self, keyword: &str) -> bool {
        if self.knows(keyword) {
            return false;
        }
        self.0.order.push(keyword.to_string());
        self.0.as_spelled.insert(keyword.to_string());
        self.0.folded.insert(keyword.to_ascii_lowercase());
        true
    }
    pub fn as_slice(&self) -> &[String] {
        &self.0.order
    }
}

impl Selected {
    pub fn exists(&self) -> u32 {
        self.uids.len() as u32
    }
    /// The sequence number of `uid`, if it is in the map.
    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.uids.binary_search(&uid).ok().map(|i| i as u32 + 1)
    }
}

/// An AUTHENTICATE waiting for the client's response line.
#[derive(Debug, Clone)]
pub struct PendingAuth {
    pub tag: Tag<'static>,
    pub exchange: mailfleet_runtime::sasl::Exchange,
}

#[derive(Debug)]
pub enum State {
    NotAuthenticated { pending: Option<PendingAuth> },
    Authenticated { account: Account },
    Selected { account: Account, mailbox: Selected },
    Logout,
}

/// Per-connection facts the session needs but does not own.
#[derive(Debug, Clone)]
pub struct Context {
    /// The connection is encrypted (implicit TLS or after STARTTLS).
    pub tls: bool,
    /// STARTTLS can be offered (a TLS configuration exists).
    pub starttls_available: bool,
    /// LOGIN/AUTHENTICATE allowed on this connection without TLS.
    pub plaintext_auth_allowed: bool,
    pub max_auth_failures: u32,
    /// The real client (after PROXY): storage counts failed logins per address.
    pub client: std::net::IpAddr,
}

pub struct Session<S: MailStore> {
    pub(crate) store: Arc<S>,
    pub(crate) state: State,
    pub(crate) ctx: Context,
    pub(crate) bad_logins: u32,
    /// The tag of a running IDLE, answered at DONE.
    pub(crate) idle_tag: Option<Tag<'static>>,
    /// CONDSTORE enabled (RFC 7162 §3.1): MODSEQ in every FETCH update.
    pub(crate) condstore: bool,
    /// QRESYNC enabled (RFC 7162 §3.2): VANISHED instead of EXPUNGE.
    pub(crate) qresync: bool,
    /// COMPRESS=DEFLATE is active (RFC 4978 §3: only once).
    pub(crate) compressed: bool,
    /// UTF8=ACCEPT enabled (RFC 6855 §3): mailbox names are UTF-8 on the wire.
    pub(crate) utf8: bool,
    /// IMAP4rev2 enabled (RFC 9051 §6.3.1): no \Recent, ESEARCH answers.
    pub(crate) rev2: bool,
    /// Storage announced no change of this account since the last sync
    /// (set by the driver from the NATS feed before each command).
    pub(crate) quiet: bool,
    /// When the open mailbox was last brought up to date.
    pub(crate) last_sync: std::time::Instant,
}

/// A read-only command may skip the after-command sync while storage
/// announced nothing; this long at most, in case an event was lost.
const QUIET_SYNC_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl<S: MailStore> Session<S> {
    pub fn new(store: Arc<S>, ctx: Context) -> Session<S> {
        Session {
            store,
            state: State::NotAuthenticated { pending: None },
            ctx,
            bad_logins: 0,
            idle_tag: None,
            condstore: false,
            qresync: false,
            compressed: false,
            utf8: false,
            rev2: false,
            quiet: false,
            last_sync: std::time::Instant::now(),
        }
    }

    /// Whether a change may have happened since the last command: with a
    /// live NATS feed, `quiet` says storage announced none.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Called by the driver once the TLS handshake after STARTTLS is done.
    pub fn tls_started(&mut self) {
        self.ctx.tls = true;
    }

    pub fn account(&self) -> Option<&Account> {
        match &self.state {
            State::Authenticated { account } | State::Selected { account, .. } => Some(account),
            _ => None,
        }
    }

    /// Authentication is possible without LOGINDISABLED (RFC 3501 §6.2.3).
    pub(crate) fn auth_allowed(&self) -> bool {
        self.ctx.tls || self.ctx.plaintext_auth_allowed
    }

    /// Capabilities for the current state; only complete extensions appear.
    pub fn capabilities(&self) -> Vec<Capability<'static>> {
        // RFC 9051 §6.1.1: IMAP4rev2 next to IMAP4rev1; rev2 after ENABLE.
        let mut caps = vec![
            Capability::Imap4Rev1,
            Capability::from(Atom::try_from("IMAP4rev2").expect("static atom")),
            Capability::LiteralPlus,
            Capability::SaslIr,
        ];
        if !self.ctx.tls && self.ctx.starttls_available && matches!(self.state, State::NotAuthenticated { .. }) {
            caps.push(Capability::StartTls);
        }
        if matches!(self.state, State::NotAuthenticated { .. }) {
            if self.auth_allowed() {
                caps.push(Capability::Auth(AuthMechanism::Plain));
                caps.push(Capability::Auth(AuthMechanism::Login));
            } else {
                caps.push(Capability::LoginDisabled);
            }
        }
        caps.extend([
            Capability::Idle,
            Capability::Id,
            Capability::Namespace,
            Capability::Unselect,
            Capability::UidPlus,
            Capability::Move,
            Capability::Enable,
            Capability::CondStore,
            Capability::QResync,
            Capability::StatusSize,
            Capability::Compress {
                algorithm: imap_codec::imap_types::extensions::compress::CompressionAlgorithm::Deflate,
            },
            Capability::Quota,
            Capability::QuotaRes(imap_codec::imap_types::extensions::quota::Resource::Storage),
            Capability::from(Atom::try_from("CHILDREN").expect("static atom")),
            Capability::Utf8(imap_codec::imap_types::extensions::utf8::Utf8Kind::Accept),
        ]);
        // RFC 3516; RFC 5258, RFC 5819, RFC 6154, RFC 4731, RFC 5182.
        caps.push(Capability::Binary);
        for atom in ["LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE", "CREATE-SPECIAL-USE", "ESEARCH", "SEARCHRES"] {
            caps.push(Capability::from(Atom::try_from(atom).expect("static atom")));
        }
        cmd::sort::capabilities(&mut caps);
        caps
    }

    /// Handle one command, all responses in the reply. Responses
    /// imap-types cannot model (ESEARCH, extended LIST) need a sink: use
    /// `handle_streaming` for those.
    pub async fn handle(&mut self, command: impl Into<ClientCommand>) -> Reply {
        self.handle_streaming(command, None).await
    }

    /// Handle one command (RFC 3501 §6). The dispatch table: one line each.
    /// With a `sink`, large outputs are streamed through it before the reply.
    pub async fn handle_streaming(
        &mut self,
        command: impl Into<ClientCommand>,
        sink: Option<mpsc::Sender<Vec<u8>>>,
    ) -> Reply {
        let ClientCommand { tag, body, saved } = command.into();
        let mut out = Out::new(sink);
        let condstore_before = self.condstore;
        let mut body = match body {
            ClientBody::Std(body) => body,
            ClientBody::Ext(mut ext) => {
                if saved {
                    match (&self.state, &mut ext) {
                        (State::Selected { mailbox, .. }, ExtBody::Search { criteria, .. }) => {
                            cmd::searchres::rewrite_criteria(mailbox, criteria);
                        }
                        _ => return self.finish(tag, Err(ImapError::bad("$ needs a selected mailbox")), out),
                    }
                }
                let result = self.handle_ext(&tag, ext, &mut out).await;
                self.report_condstore_enabled(condstore_before, &mut out);
                return self.finish_with_sync(tag, result, out, true).await;
            }
            ClientBody::Bad(text) => return self.finish(tag, Err(ImapError::bad(text)), out),
        };
        let name = body.name();
        // RFC 5182 §2.1: "$" is the saved search result.
        if saved {
            let rewritten = match &self.state {
                State::Selected { mailbox, .. } => cmd::searchres::rewrite(mailbox, &mut body),
                _ => return self.finish(tag, Err(ImapError::bad("$ needs a selected mailbox")), out),
            };
            if let cmd::searchres::Rewritten::Empty = rewritten {
                return self
                    .finish_with_sync(tag, Done::ok(format!("{name} completed (no messages)")), out, true)
                    .await;
            }
        }
        // RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE or SEARCH (sequence
        // numbers must not shift under the client's feet).
        let expunge_ok = !matches!(
            body,
            CommandBody::Fetch { .. }
                | CommandBody::Store { .. }
                | CommandBody::Search { .. }
                | CommandBody::Sort { .. }
                | CommandBody::Thread { .. }
        );
        let just_selected = matches!(body, CommandBody::Select { .. } | CommandBody::Examine { .. });
        // Commands that change nothing need no sync while storage announced
        // no change (every change is announced on NATS); NOOP and CHECK
        // are the client's explicit polls and always look (RFC 3501 §6.1.2).
        let looks_only = matches!(
            body,
            CommandBody::Fetch { .. }
                | CommandBody::Idle
                | CommandBody::Search { .. }
                | CommandBody::Sort { .. }
                | CommandBody::Thread { .. }
                | CommandBody::Status { .. }
                | CommandBody::List { .. }
                | CommandBody::Lsub { .. }
                | CommandBody::Capability
                | CommandBody::Namespace
                | CommandBody::GetQuota { .. }
                | CommandBody::GetQuotaRoot { .. }
        );
        let skip_sync = looks_only && self.nothing_announced();
        let result = match body {
            CommandBody::Capability => cmd::any::capability(self, &mut out),
            CommandBody::Noop | CommandBody::Check => cmd::any::noop(self),
            CommandBody::Idle => cmd::idle::idle(self, &tag, &mut out),
            CommandBody::Compress { .. } => cmd::any::compress(self),
            CommandBody::Logout => cmd::any::logout(self, &mut out),
            CommandBody::Id { .. } => cmd::any::id(&mut out),
            CommandBody::StartTLS => cmd::auth::starttls(self),
            CommandBody::Login { username, password } => cmd::auth::login(self, username, password).await,
            CommandBody::Authenticate { mechanism, initial_response } => {
                cmd::auth::authenticate(self, &tag, mechanism, initial_response, &mut out).await
            }
            CommandBody::Enable { capabilities } => cmd::mailbox::enable(self, capabilities, &mut out),
            CommandBody::Namespace => cmd::mailbox::namespace(self, &mut out),
            CommandBody::List { reference, mailbox_wildcard } => {
                let pattern = match &mailbox_wildcard {
                    ListMailbox::Token(t) => t.as_ref().to_vec(),
                    ListMailbox::String(s) => s.as_ref().to_vec(),
                };
                let mut list = codec::ext::list_of_std(&reference, &pattern);
                // RFC 9051 §6.3.9: rev2 LIST has the RFC 5258 semantics.
                list.extended = self.rev2 && !pattern.is_empty();
                cmd::list::list(self, list, &mut out).await
            }
            CommandBody::Lsub { reference, mailbox_wildcard } => {
                cmd::mailbox::list(self, reference, mailbox_wildcard, true, &mut out).await
            }
            CommandBody::Status { mailbox, item_names } => {
                cmd::mailbox::status(self, mailbox, &item_names, &mut out).await
            }
            CommandBody::Create { mailbox } => cmd::mailbox::create(self, mailbox, vec![]).await,
            CommandBody::Delete { mailbox } => cmd::mailbox::delete(self, mailbox).await,
            CommandBody::Rename { from, to } => cmd::mailbox::rename(self, from, to).await,
            CommandBody::Subscribe { mailbox } => cmd::mailbox::subscribe(self, mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => cmd::mailbox::subscribe(self, mailbox, false).await,
            CommandBody::Select { mailbox, parameters } => {
                cmd::select::select(self, mailbox, parameters, false, &mut out).await
            }
            CommandBody::Examine { mailbox, parameters } => {
                cmd::select::select(self, mailbox, parameters, true, &mut out).await
            }
            CommandBody::Close => cmd::select::close(self).await,
            CommandBody::Unselect => cmd::select::unselect(self),
            CommandBody::Append { mailbox, flags, date, message } => {
                cmd::append::append(self, mailbox, flags, date, message).await
            }
            CommandBody::Expunge => cmd::expunge::expunge(self, None, &mut out).await,
            CommandBody::ExpungeUid { sequence_set } => cmd::expunge::expunge(self, Some(sequence_set), &mut out).await,
            CommandBody::Fetch { sequence_set, macro_or_item_names, uid, modifiers } => {
                cmd::fetch::fetch(self, sequence_set, macro_or_item_names, uid, modifiers, &mut out).await
            }
            CommandBody::Store { sequence_set, kind, response, flags, uid, modifiers } => {
                cmd::flags::store(self, sequence_set, kind, response, flags, uid, modifiers, &mut out).await
            }
            CommandBody::Copy { sequence_set, mailbox, uid } => {
                cmd::copy::copy(self, sequence_set, mailbox, uid, false, &mut out).await
            }
            CommandBody::Move { sequence_set, mailbox, uid } => {
                cmd::copy::copy(self, sequence_set, mailbox, uid, true, &mut out).await
            }
            CommandBody::GetQuota { root } => cmd::quota::get_quota(self, root, &mut out).await,
            CommandBody::GetQuotaRoot { mailbox } => cmd::quota::get_quota_root(self, mailbox, &mut out).await,
            CommandBody::SetQuota { .. } => cmd::quota::set_quota(self),
            // RFC 9051 §6.4.4: rev2 answers SEARCH with ESEARCH (ALL).
            CommandBody::Search { charset, criteria, uid } if self.rev2 => {
                let all = codec::ext::SearchReturn { all: true, ..Default::default() };
                cmd::search::esearch(self, &tag, &all, charset, criteria, uid, &mut out).await
            }
            CommandBody::Search { charset, criteria, uid } => {
                cmd::search::search(self, charset, criteria, uid, &mut out).await
            }
            CommandBody::Sort { sort_criteria, charset, search_criteria, uid } => {
                cmd::sort::sort(self, &tag, None, sort_criteria, charset, search_criteria, uid, &mut out).await
            }
            CommandBody::Thread { algorithm, charset, search_criteria, uid } => {
                cmd::thread::thread(self, algorithm, charset, search_criteria, uid, &mut out).await
            }
            // Every command imap-codec parses with the enabled features is
            // served; this arm is for those a feature change would add.
            #[allow(unreachable_patterns)]
            _ => Err(ImapError::bad(format!("{name} is not supported"))),
        };
        if let State::Selected { account, mailbox } = &mut self.state
            && !just_selected
            && !skip_sync
        {
            let ext = cmd::select::Ext { condstore: self.condstore, qresync: self.qresync };
            cmd::select::sync(&*self.store, account, mailbox, expunge_ok, ext, &mut out).await;
            self.last_sync = std::time::Instant::now();
            if self.rev2 {
                forget_recent(mailbox, &mut out);
            }
        }
        if !just_selected {
            self.report_condstore_enabled(condstore_before, &mut out);
        }
        self.finish_with_sync(tag, result, out, false).await
    }

    /// RFC 7162 §3.1: when a command other than SELECT/EXAMINE enables
    /// CONDSTORE while a mailbox is selected, the client learns the
    /// mailbox's HIGHESTMODSEQ (an untagged OK), which SELECT gave it
    /// before MODSEQs mattered to it.
    fn report_condstore_enabled(&self, condstore_before: bool, out: &mut Out) {
        if condstore_before || !self.condstore {
            return;
        }
        if let State::Selected { mailbox, .. } = &self.state {
            // As SELECT reports it (an empty mailbox has none yet).
            let highest = std::num::NonZeroU64::new(mailbox.highest_modseq).unwrap_or(std::num::NonZeroU64::MIN);
            out.push(codec::status(None, StatusKindArg::Ok, Some(Code::HighestModSeq(highest)), "Highest"));
        }
    }

    /// The command forms imap-codec does not parse (`codec::ext`).
    async fn handle_ext(&mut self, tag: &Tag<'static>, body: ExtBody, out: &mut Out) -> CmdResult {
        match body {
            ExtBody::List(list) => cmd::list::list(self, list, out).await,
            ExtBody::Search { uid, options, charset, criteria } => {
                cmd::search::esearch(self, tag, &options, charset, criteria, uid, out).await
            }
            ExtBody::Sort { uid, options, sort_criteria, charset, search_criteria } => {
                cmd::sort::sort(self, tag, Some(&options), sort_criteria, charset, search_criteria, uid, out).await
            }
            ExtBody::Create { mailbox, special_use } => cmd::mailbox::create(self, mailbox, special_use).await,
            ExtBody::AppendUtf8 { mailbox, flags, date, message } => {
                // RFC 6855 §4: the UTF8 data item only after ENABLE UTF8=ACCEPT.
                if !self.utf8 {
                    return Err(ImapError::bad("ENABLE UTF8=ACCEPT first"));
                }
                cmd::append::append_bytes(self, mailbox, flags, date, message).await
            }
        }
    }

    /// Pending mailbox updates for extension commands (SEARCH must not
    /// report EXPUNGE, RFC 3501 §7.4.1), then raw lines out, then the reply.
    async fn finish_with_sync(&mut self, tag: Tag<'static>, result: CmdResult, mut out: Out, ext: bool) -> Reply {
        if ext && let State::Selected { account, mailbox } = &mut self.state {
            let flags = cmd::select::Ext { condstore: self.condstore, qresync: self.qresync };
            cmd::select::sync(&*self.store, account, mailbox, false, flags, &mut out).await;
            self.last_sync = std::time::Instant::now();
            if self.rev2 {
                forget_recent(mailbox, &mut out);
            }
        }
        if out.has_raw() {
            out.flush(true).await;
        }
        self.finish(tag, result, out)
    }

    /// A SASL response line after AUTHENTICATE's continuation request.
    pub async fn auth_data(&mut self, data: AuthenticateData<'static>) -> Reply {
        let mut out = Out::new(None);
        let pending = match &mut self.state {
            State::NotAuthenticated { pending } => pending.take(),
            _ => None,
        };
        let Some(pending) = pending else {
            return Reply {
                responses: vec![codec::status(None, StatusKindArg::Bad, None, "No authentication in progress")],
                then: Then::Command,
                delay: false,
            };
        };
        let tag = pending.tag.clone();
        let result = cmd::auth::continue_authenticate(self, pending, data, &mut out).await;
        self.finish(tag, result, out)
    }

    /// While idling: report what changed (RFC 2177 §3 allows any untagged
    /// response, EXPUNGE included).
    pub async fn idle_update(&mut self) -> Vec<Response<'static>> {
        let mut out = Out::new(None);
        if let State::Selected { account, mailbox } = &mut self.state {
            let ext = cmd::select::Ext { condstore: self.condstore, qresync: self.qresync };
            cmd::select::sync(&*self.store, account, mailbox, true, ext, &mut out).await;
            self.last_sync = std::time::Instant::now();
            if self.rev2 {
                forget_recent(mailbox, &mut out);
            }
        }
        out.into_responses()
    }

    /// Storage announced no change since the last look, and the last sync
    /// is recent enough to trust that: a sync would find nothing.
    fn nothing_announced(&self) -> bool {
        self.quiet && self.last_sync.elapsed() < QUIET_SYNC_AT_LEAST_EVERY
    }

    /// DONE ends IDLE with the tagged OK (RFC 2177 §3).
    pub async fn idle_done(&mut self) -> Reply {
        // Every change announced during IDLE was reported as it came; with
        // none announced since, there is nothing new to look for.
        let mut out = if self.nothing_announced() { Vec::new() } else { self.idle_update().await };
        match self.idle_tag.take() {
            Some(tag) => out.push(codec::status(Some(tag), StatusKindArg::Ok, None, "IDLE terminated")),
            None => out.push(codec::status(None, StatusKindArg::Bad, None, "Not idling")),
        }
        Reply { responses: out, then: Then::Command, delay: false }
    }

    /// Anything but DONE while idling ends IDLE with BAD.
    pub fn idle_abort(&mut self) -> Reply {
        let tag = self.idle_tag.take();
        Reply {
            responses: vec![codec::status(tag, StatusKindArg::Bad, None, "Expected DONE")],
            then: Then::Command,
            delay: false,
        }
    }

    /// A complete line the codec could not parse (RFC 3501 §7.1.3 BAD).
    pub fn malformed(&self, tag: Option<Tag<'static>>, too_long: bool) -> Reply {
        let text = if too_long { "Command line too long" } else { "Syntax error" };
        let code = too_long.then(|| codec::code("TOOBIG"));
        Reply { responses: vec![codec::status(tag, StatusKindArg::Bad, code, text)], then: Then::Command, delay: false }
    }

    fn finish(&mut self, tag: Tag<'static>, result: CmdResult, out: Out) -> Reply {
        let mut out = out.into_responses();
        let mut delay = false;
        let then = match result {
            Ok(done) => {
                // AUTHENTICATE continuations and IDLE answer later.
                if !matches!(done.then, Then::AuthData | Then::Idle) {
                    out.push(codec::status(Some(tag), StatusKindArg::Ok, done.code, &done.text));
                }
                done.then
            }
            Err(e) => {
                let auth_failure = matches!(e, ImapError::Store(StoreError::BadCredentials | StoreError::Throttled));
                out.push(e.into_response(tag));
                if auth_failure {
                    delay = true;
                    self.bad_logins += 1;
                    if self.bad_logins >= self.ctx.max_auth_failures {
                        out.push(codec::bye(None, "Too many failed logins"));
                        self.state = State::Logout;
                        return Reply { responses: out, then: Then::Close, delay };
                    }
                }
                match &self.state {
                    State::NotAuthenticated { pending: Some(_) } => Then::AuthData,
                    _ => Then::Command,
                }
            }
        };
        Reply { responses: out, then, delay }
    }

    /// The account, or BAD: the command needs Authenticated or Selected state.
    pub(crate) fn need_auth(&self) -> Result<Account, ImapError> {
        self.account().cloned().ok_or_else(|| ImapError::bad("Not authenticated"))
    }

    /// Account and open mailbox, or BAD: the command needs Selected state.
    pub(crate) fn need_selected(&mut self) -> Result<(Account, &mut Selected), ImapError> {
        match &mut self.state {
            State::Selected { account, mailbox } => Ok((account.clone(), mailbox)),
            _ => Err(ImapError::bad("No mailbox selected")),
        }
    }
}

/// RFC 9051 Appendix E: rev2 has no \Recent flag and no RECENT response.
fn forget_recent(mailbox: &mut Selected, out: &mut Out) {
    mailbox.recent.clear();
    out.retain(|r| !matches!(r, Response::Data(Data::Recent(_))));
}

/// Untagged capability data (RFC 3501 §7.2.1).
pub(crate) fn capability_data(caps: Vec<Capability<'static>>) -> Response<'static> {
    Response::Data(Data::Capability(
        caps.try_into().unwrap_or_else(|_| vec![Capability::Imap4Rev1].try_into().expect("non-empty")),
    ))
}
