//! An in-memory `MailStore` for protocol tests: mailboxes, UIDs, flags and
//! raw messages behave like storage's contract, without Postgres or gRPC.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use mailfleet_proto::storage::v1 as pb;

mod sort;

use super::{Account, MailStore, RangeStream, SessionToken, StoreError, StoreResult, in_ranges};

#[derive(Debug, Clone)]
struct Msg {
    flags: BTreeSet<String>,
    raw: Vec<u8>,
    internal_date: i64,
    modseq: u64,
    recent: bool,
}

#[derive(Debug, Clone)]
struct Mbox {
    id: i64,
    uid_validity: u32,
    uid_next: u32,
    modseq: u64,
    subscribed: bool,
    messages: BTreeMap<u32, Msg>,
    /// Expunged UIDs with the MODSEQ of their removal (QRESYNC).
    vanished: Vec<(u32, u64)>,
    /// RFC 6154 attributes given at CREATE.
    special_use: Vec<String>,
}

#[derive(Default)]
struct Data {
    accounts: Vec<(String, String, i64)>,
    quota_limit: u64,
    mailboxes: BTreeMap<(i64, String), Mbox>,
    next_mailbox_id: i64,
}

/// The fake store. `set_down(true)` makes every call fail as UNAVAILABLE.
#[derive(Default)]
pub struct FakeStore {
    data: Mutex<Data>,
    down: AtomicBool,
}

fn canonical(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") { "INBOX".into() } else { name.to_string() }
}

impl FakeStore {
    /// An account `user` / `password` (id 1) with an empty INBOX.
    pub fn with_account(user: &str, password: &str) -> FakeStore {
        let store = FakeStore::default();
        {
            let mut d = store.lock();
            d.accounts.push((user.to_string(), password.to_string(), 1));
        }
        store.create(1, "INBOX").expect("fresh store");
        store
    }

    /// Storage quota in octets for every account (0 = unlimited).
    pub fn set_quota(&self, limit: u64) {
        self.lock().quota_limit = limit;
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Put a message straight in (test setup); returns its UID.
    pub fn add_message(&self, account: i64, mailbox: &str, raw: &[u8], flags: &[&str]) -> u32 {
        let mut d = self.lock();
        let mb = d.mailboxes.get_mut(&(account, canonical(mailbox))).expect("mailbox exists");
        add(mb, raw.to_vec(), flags.iter().map(|f| f.to_string()).collect(), 1_700_000_000)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("fake store is down".into()))
        } else {
            Ok(())
        }
    }

    fn create(&self, account: i64, name: &str) -> StoreResult<pb::MailboxInfo> {
        let mut d = self.lock();
        let key = (account, canonical(name));
        if d.mailboxes.contains_key(&key) {
            return Err(StoreError::AlreadyExists(name.into()));
        }
        d.next_mailbox_id += 1;
        let mb = Mbox {
            id: d.next_mailbox_id,
            uid_validity: 1000 + d.next_mailbox_id as u32,
            uid_next: 1,
            modseq: 1,
            subscribed: false,
            messages: BTreeMap::new(),
            vanished: Vec::new(),
            special_use: Vec::new(),
        };
        let info = info(&key.1, &mb, false);
        d.mailboxes.insert(key, mb);
        Ok(info)
    }

    fn with_mailbox_id<T>(&self, account: i64, id: i64, f: impl FnOnce(&mut Mbox) -> StoreResult<T>) -> StoreResult<T> {
        self.check()?;
        let mut d = self.lock();
        let mb = d
            .mailboxes
            .iter_mut()
            .find(|((a, _), m)| *a == account && m.id == id)
            .map(|(_, m)| m)
            .ok_or_else(|| StoreError::NotFound(format!("mailbox {id}")))?;
        f(mb)
    }
}

fn add(mb: &mut Mbox, raw: Vec<u8>, flags: BTreeSet<String>, internal_date: i64) -> u32 {
    let uid = mb.uid_next;
    mb.uid_next += 1;
    mb.modseq += 1;
    mb.messages.insert(uid, Msg { flags, raw, internal_date, modseq: mb.modseq, recent: true });
    uid
}

fn info(name: &str, mb: &Mbox, has_children: bool) -> pb::MailboxInfo {
    let unseen: Vec<u32> = mb.messages.iter().filter(|(_, m)| !m.flags.contains("\\Seen")).map(|(u, _)| *u).collect();
    pb::MailboxInfo {
        id: mb.id,
        name: name.to_string(),
        subscribed: mb.subscribed,
        uid_validity: mb.uid_validity,
        uid_next: mb.uid_next,
        highest_modseq: mb.modseq,
        messages: mb.messages.len() as u32,
        unseen: unseen.len() as u32,
        recent: mb.messages.values().filter(|m| m.recent).count() as u32,
        size: mb.messages.values().map(|m| m.raw.len() as u64).sum(),
        has_children,
        first_unseen_uid: unseen.first().copied().unwrap_or(0),
        special_use: mb.special_use.clone(),
        // As storage: every flag and keyword in use in the mailbox.
        keywords: mb
            .messages
            .values()
            .flat_map(|m| m.flags.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn header_size(raw: &[u8]) -> usize {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(raw.len())
}

fn header_value(raw: &[u8], field: &str) -> Option<String> {
    let head = String::from_utf8_lossy(&raw[..header_size(raw)]).to_string();
    let prefix = format!("{}:", field.to_ascii_lowercase());
    head.split("\r\n")
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
}

fn contains_ci(hay: &[u8], needle: &str) -> bool {
    let hay = String::from_utf8_lossy(hay).to_lowercase();
    hay.contains(&needle.to_lowercase())
}

fn matches(key: &pb::SearchKey, uid: u32, m: &Msg) -> StoreResult<bool> {
    use pb::search_key::Key;
    Ok(match key.key.as_ref().ok_or_else(|| StoreError::Invalid("empty search key".into()))? {
        Key::All(_) => true,
        Key::HasFlag(f) => m.flags.iter().any(|x| x.eq_ignore_ascii_case(f)),
        Key::LacksFlag(f) => !m.flags.iter().any(|x| x.eq_ignore_ascii_case(f)),
        Key::Larger(n) => m.raw.len() as u64 > *n,
        Key::Smaller(n) => (m.raw.len() as u64) < *n,
        Key::Header(h) => match header_value(&m.raw, &h.field) {
            Some(v) => v.to_lowercase().contains(&h.value.to_lowercase()),
            None => false,
        },
        Key::Body(s) => contains_ci(&m.raw[header_size(&m.raw)..], s),
        Key::Text(s) => contains_ci(&m.raw, s),
        Key::Not(k) => !matches(k, uid, m)?,
        Key::Or(l) => {
            let mut any = false;
            for k in &l.keys {
                any |= matches(k, uid, m)?;
            }
            any
        }
        Key::And(l) => {
            let mut all = true;
            for k in &l.keys {
                all &= matches(k, uid, m)?;
            }
            all
        }
        Key::UidSet(s) => in_ranges(uid, &s.ranges),
        Key::ModseqAtLeast(n) => m.modseq >= *n,
        other => return Err(StoreError::Invalid(format!("fake store cannot search {other:?}"))),
    })
}

fn meta(uid: u32, m: &Msg, with_envelope: bool) -> pb::MessageMeta {
    let envelope = with_envelope.then(|| pb::Envelope {
        date: header_value(&m.raw, "Date"),
        subject: header_value(&m.raw, "Subject"),
        message_id: header_value(&m.raw, "Message-ID"),
        ..Default::default()
    });
    pb::MessageMeta {
        uid,
        modseq: m.modseq,
        flags: m.flags.iter().cloned().collect(),
        internal_date: Some(prost_types::Timestamp { seconds: m.internal_date, nanos: 0 }),
        size: m.raw.len() as u64,
        envelope,
        body_structure: None,
        header_size: header_size(&m.raw) as u64,
    }
}

impl MailStore for FakeStore {
    async fn authenticate(
        &self,
        username: &str,
        password: &str,
        _client: std::net::IpAddr,
    ) -> StoreResult<(Account, SessionToken)> {
        self.check()?;
        let d = self.lock();
        let account = d
            .accounts
            .iter()
            .find(|(u, p, _)| u.eq_ignore_ascii_case(username) && p == password)
            .map(|(u, _, id)| Account { id: *id, address: u.clone() })
            .ok_or(StoreError::BadCredentials)?;
        let token =
            SessionToken::fixed(&format!("fake.{}", account.id)).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok((account, token))
    }

    /// In memory there is nobody to show a token to.
    fn for_session(store: &std::sync::Arc<Self>, _session: SessionToken) -> std::sync::Arc<Self> {
        store.clone()
    }

    async fn list_mailboxes(&self, account: i64, _with_status: bool) -> StoreResult<pb::ListMailboxesResponse> {
        self.check()?;
        let d = self.lock();
        let names: Vec<&String> = d.mailboxes.keys().filter(|(a, _)| *a == account).map(|(_, n)| n).collect();
        let mailboxes = d
            .mailboxes
            .iter()
            .filter(|((a, _), _)| *a == account)
            .map(|((_, n), mb)| {
                let children = names.iter().any(|c| c.starts_with(&format!("{n}/")));
                info(n, mb, children)
            })
            .collect::<Vec<_>>();
        let subscriptions = mailboxes.iter().filter(|m| m.subscribed).map(|m| m.name.clone()).collect();
        Ok(pb::ListMailboxesResponse { mailboxes, subscriptions })
    }

    async fn get_mailbox(&self, account: i64, name: &str, select: bool) -> StoreResult<pb::MailboxInfo> {
        self.check()?;
        let mut d = self.lock();
        let name = canonical(name);
        let mb = d.mailboxes.get_mut(&(account, name.clone())).ok_or_else(|| StoreError::NotFound(name.clone()))?;
        let mut out = info(&name, mb, false);
        if select {
            // RFC 3501 §2.3.2: the selecting session claims \Recent.
            for (uid, m) in mb.messages.iter_mut() {
                if m.recent {
                    out.recent_uids.push(*uid);
                    m.recent = false;
                }
            }
        }
        Ok(out)
    }

    async fn create_mailbox(&self, account: i64, name: &str, special_use: &[String]) -> StoreResult<pb::MailboxInfo> {
        self.check()?;
        if name.is_empty() || name.starts_with('/') || name.contains("//") {
            return Err(StoreError::Invalid(name.into()));
        }
        let mut info = self.create(account, name)?;
        if let Some(mb) = self.lock().mailboxes.get_mut(&(account, canonical(name))) {
            mb.special_use = special_use.to_vec();
            info.special_use = mb.special_use.clone();
        }
        Ok(info)
    }

    async fn rename_mailbox(&self, account: i64, from: &str, to: &str) -> StoreResult<pb::MailboxInfo> {
        self.check()?;
        let (from, to) = (canonical(from), canonical(to));
        let mut d = self.lock();
        if d.mailboxes.contains_key(&(account, to.clone())) {
            return Err(StoreError::AlreadyExists(to));
        }
        let old = d.mailboxes.remove(&(account, from.clone())).ok_or_else(|| StoreError::NotFound(from.clone()))?;
        let children: Vec<String> = d
            .mailboxes
            .keys()
            .filter(|(a, n)| *a == account && n.starts_with(&format!("{from}/")))
            .map(|(_, n)| n.clone())
            .collect();
        for c in children {
            if let Some(mb) = d.mailboxes.remove(&(account, c.clone())) {
                d.mailboxes.insert((account, format!("{to}{}", &c[from.len()..])), mb);
            }
        }
        let out = info(&to, &old, false);
        if from == "INBOX" {
            // RFC 3501 §6.3.5: messages move, INBOX stays (empty).
            let mut moved = old.clone();
            d.next_mailbox_id += 1;
            moved.id = d.next_mailbox_id;
            d.mailboxes.insert((account, to), moved);
            let mut inbox = old;
            inbox.messages.clear();
            d.mailboxes.insert((account, from), inbox);
        } else {
            d.mailboxes.insert((account, to), old);
        }
        Ok(out)
    }

    async fn delete_mailbox(&self, account: i64, name: &str) -> StoreResult<()> {
        self.check()?;
        let name = canonical(name);
        if name == "INBOX" {
            return Err(StoreError::NotAllowed("INBOX cannot be deleted".into()));
        }
        let mut d = self.lock();
        d.mailboxes.remove(&(account, name.clone())).map(|_| ()).ok_or(StoreError::NotFound(name))
    }

    async fn set_subscribed(&self, account: i64, name: &str, subscribed: bool) -> StoreResult<()> {
        self.check()?;
        let mut d = self.lock();
        let name = canonical(name);
        let mb = d.mailboxes.get_mut(&(account, name.clone())).ok_or(StoreError::NotFound(name))?;
        mb.subscribed = subscribed;
        Ok(())
    }

    async fn append(&self, header: pb::AppendHeader, message: Vec<u8>) -> StoreResult<pb::AppendResponse> {
        self.check()?;
        let mut d = self.lock();
        let used: u64 = d.mailboxes.values().flat_map(|m| m.messages.values()).map(|m| m.raw.len() as u64).sum();
        if d.quota_limit > 0 && used + message.len() as u64 > d.quota_limit {
            return Err(StoreError::OverQuota("storage quota".into()));
        }
        let name = canonical(&header.mailbox);
        let mb = d.mailboxes.get_mut(&(header.account_id, name.clone())).ok_or(StoreError::NotFound(name))?;
        let date = header.internal_date.map(|t| t.seconds).unwrap_or(1_700_000_000);
        let uid = add(mb, message, header.flags.into_iter().collect(), date);
        Ok(pb::AppendResponse { mailbox_id: mb.id, uid_validity: mb.uid_validity, uid, modseq: mb.modseq })
    }

    async fn list_uids(&self, account: i64, mailbox: i64) -> StoreResult<pb::ListUidsResponse> {
        self.with_mailbox_id(account, mailbox, |mb| {
            Ok(pb::ListUidsResponse {
                uids: mb.messages.keys().copied().collect(),
                highest_modseq: mb.modseq,
                uid_next: mb.uid_next,
                uid_validity: mb.uid_validity,
            })
        })
    }

    async fn list_messages(&self, req: pb::ListMessagesRequest) -> StoreResult<Vec<pb::MessageMeta>> {
        self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            Ok(mb
                .messages
                .iter()
                .filter(|(uid, m)| in_ranges(**uid, &req.uids) && m.modseq > req.changed_since)
                .map(|(uid, m)| meta(*uid, m, req.with_envelope))
                .collect())
        })
    }

    async fn fetch(&self, req: pb::FetchRequest) -> StoreResult<Vec<u8>> {
        self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            let m = mb.messages.get(&req.uid).ok_or_else(|| StoreError::NotFound(format!("uid {}", req.uid)))?;
            let start = (req.offset as usize).min(m.raw.len());
            let end = match req.length {
                Some(l) => start.saturating_add(l as usize).min(m.raw.len()),
                None => m.raw.len(),
            };
            Ok(m.raw[start..end].to_vec())
        })
    }

    async fn fetch_ranges(&self, req: pb::FetchRangesRequest) -> StoreResult<RangeStream> {
        let chunks = self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            Ok(req
                .ranges
                .iter()
                .enumerate()
                .map(|(index, r)| {
                    let index = index as u32;
                    let Some(m) = mb.messages.get(&r.uid) else {
                        return Ok(pb::RangeChunk {
                            index,
                            data: Default::default(),
                            last: true,
                            missing: true,
                            size: 0,
                        });
                    };
                    let header = header_size(&m.raw);
                    let section = match r.section() {
                        pb::byte_range::Section::Full => &m.raw[..],
                        pb::byte_range::Section::Header => &m.raw[..header],
                        pb::byte_range::Section::Text => &m.raw[header..],
                    };
                    let start = (r.offset as usize).min(section.len());
                    let end = r.length.map_or(section.len(), |l| start.saturating_add(l as usize).min(section.len()));
                    let data = section[start..end].to_vec();
                    Ok(pb::RangeChunk { index, size: data.len() as u64, data: data.into(), last: true, missing: false })
                })
                .collect::<Vec<_>>())
        })?;
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    async fn store_flags(&self, req: pb::StoreFlagsRequest) -> StoreResult<pb::StoreFlagsResponse> {
        use pb::store_flags_request::Operation;
        self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            let op = Operation::try_from(req.operation).map_err(|_| StoreError::Invalid("operation".into()))?;
            let mut updated = Vec::new();
            let mut modified = Vec::new();
            let mut modseq = mb.modseq;
            for (uid, m) in mb.messages.iter_mut().filter(|(u, _)| in_ranges(**u, &req.uids)) {
                if req.unchanged_since.is_some_and(|s| m.modseq > s) {
                    modified.push(*uid);
                    continue;
                }
                let before = m.flags.clone();
                match op {
                    Operation::Add => m.flags.extend(req.flags.iter().cloned()),
                    Operation::Remove => m.flags.retain(|f| !req.flags.iter().any(|r| r.eq_ignore_ascii_case(f))),
                    Operation::Replace => m.flags = req.flags.iter().cloned().collect(),
                    Operation::Unspecified => return Err(StoreError::Invalid("operation".into())),
                }
                if m.flags != before {
                    modseq += 1;
                    m.modseq = modseq;
                    updated.push(pb::MessageFlags { uid: *uid, flags: m.flags.iter().cloned().collect(), modseq });
                }
            }
            mb.modseq = modseq;
            Ok(pb::StoreFlagsResponse { updated, modified, highest_modseq: modseq })
        })
    }

    async fn copy(&self, req: pb::CopyRequest) -> StoreResult<pb::CopyResponse> {
        self.check()?;
        let mut d = self.lock();
        let source: Vec<(u32, Msg)> = d
            .mailboxes
            .iter()
            .find(|((a, _), m)| *a == req.account_id && m.id == req.mailbox_id)
            .map(|(_, m)| {
                m.messages.iter().filter(|(u, _)| in_ranges(**u, &req.uids)).map(|(u, m)| (*u, m.clone())).collect()
            })
            .ok_or_else(|| StoreError::NotFound("source mailbox".into()))?;
        let dest_name = canonical(&req.destination);
        let dest = d.mailboxes.get_mut(&(req.account_id, dest_name.clone())).ok_or(StoreError::NotFound(dest_name))?;
        let mut out = pb::CopyResponse {
            destination_uid_validity: dest.uid_validity,
            destination_mailbox_id: dest.id,
            ..Default::default()
        };
        for (uid, m) in &source {
            let new = add(dest, m.raw.clone(), m.flags.clone(), m.internal_date);
            out.source_uids.push(*uid);
            out.destination_uids.push(new);
        }
        if req.r#move
            && let Some(src) = d.mailboxes.values_mut().find(|m| m.id == req.mailbox_id)
        {
            src.modseq += 1;
            for (uid, _) in &source {
                src.messages.remove(uid);
                src.vanished.push((*uid, src.modseq));
            }
        }
        Ok(out)
    }

    async fn expunge(&self, req: pb::ExpungeRequest) -> StoreResult<pb::ExpungeResponse> {
        self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            let gone: Vec<u32> = mb
                .messages
                .iter()
                .filter(|(u, m)| {
                    (req.uids.is_empty() || in_ranges(**u, &req.uids))
                        && (req.ignore_deleted_flag || m.flags.contains("\\Deleted"))
                })
                .map(|(u, _)| *u)
                .collect();
            if !gone.is_empty() {
                mb.modseq += 1;
            }
            for u in &gone {
                mb.messages.remove(u);
                mb.vanished.push((*u, mb.modseq));
            }
            Ok(pb::ExpungeResponse { expunged_uids: gone, highest_modseq: mb.modseq })
        })
    }

    async fn changes(&self, req: pb::ChangesRequest) -> StoreResult<pb::ChangesResponse> {
        self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            let changed = mb
                .messages
                .iter()
                .filter(|(_, m)| m.modseq > req.since_modseq)
                .map(|(uid, m)| pb::MessageFlags {
                    uid: *uid,
                    flags: m.flags.iter().cloned().collect(),
                    modseq: m.modseq,
                })
                .collect();
            let mut vanished: Vec<u32> = if req.include_vanished {
                mb.vanished.iter().filter(|(_, m)| *m > req.since_modseq).map(|(u, _)| *u).collect()
            } else {
                vec![]
            };
            vanished.sort_unstable();
            // RFC 3501 §2.3.2: a read-write session claims \Recent.
            let mut recent_uids = Vec::new();
            if req.claim_recent {
                for (uid, m) in mb.messages.iter_mut().filter(|(_, m)| m.recent) {
                    recent_uids.push(*uid);
                    m.recent = false;
                }
            }
            Ok(pb::ChangesResponse { changed, vanished, highest_modseq: mb.modseq, recent_uids })
        })
    }

    async fn get_quota(&self, account: i64) -> StoreResult<pb::QuotaInfo> {
        self.check()?;
        let d = self.lock();
        let boxes = d.mailboxes.iter().filter(|((a, _), _)| *a == account).map(|(_, m)| m);
        let (mut used, mut count) = (0u64, 0u64);
        for mb in boxes {
            used += mb.messages.values().map(|m| m.raw.len() as u64).sum::<u64>();
            count += mb.messages.len() as u64;
        }
        Ok(pb::QuotaInfo { used_bytes: used, limit_bytes: d.quota_limit, message_count: count })
    }

    async fn search(&self, req: pb::SearchRequest) -> StoreResult<pb::SearchResponse> {
        self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            let key = req.criteria.clone().unwrap_or(pb::SearchKey { key: Some(pb::search_key::Key::All(true)) });
            let mut uids = Vec::new();
            let mut highest_modseq = 0;
            for (uid, m) in &mb.messages {
                if matches(&key, *uid, m)? {
                    uids.push(*uid);
                    highest_modseq = highest_modseq.max(m.modseq);
                }
            }
            Ok(pb::SearchResponse { uids, highest_modseq })
        })
    }

    async fn sort(&self, req: pb::SortRequest) -> StoreResult<pb::SortResponse> {
        self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            let key = req.criteria.clone().unwrap_or(pb::SearchKey { key: Some(pb::search_key::Key::All(true)) });
            let mut rows = Vec::new();
            let mut highest_modseq = 0;
            for (uid, m) in &mb.messages {
                if matches(&key, *uid, m)? {
                    let header = |f: &str| header_value(&m.raw, f);
                    let values = req
                        .order
                        .iter()
                        .map(|c| {
                            let k = pb::sort_criterion::Key::try_from(c.key).unwrap_or_default();
                            sort::value(k, m.raw.len(), m.internal_date, &header)
                        })
                        .collect();
                    rows.push((*uid, values));
                    highest_modseq = highest_modseq.max(m.modseq);
                }
            }
            Ok(pb::SortResponse { uids: sort::sort(&req.order, rows), highest_modseq })
        })
    }

    async fn thread(&self, req: pb::ThreadRequest) -> StoreResult<pb::ThreadResponse> {
        self.with_mailbox_id(req.account_id, req.mailbox_id, |mb| {
            let key = req.criteria.clone().unwrap_or(pb::SearchKey { key: Some(pb::search_key::Key::All(true)) });
            let mut rows = Vec::new();
            for (uid, m) in &mb.messages {
                if matches(&key, *uid, m)? {
                    let subject = sort::base_subject(&header_value(&m.raw, "Subject").unwrap_or_default());
                    let header = |f: &str| header_value(&m.raw, f);
                    let date = match sort::value(pb::sort_criterion::Key::Date, 0, m.internal_date, &header) {
                        sort::Val::Num(n) => n,
                        sort::Val::Text(_) => m.internal_date,
                    };
                    rows.push((*uid, subject, date));
                }
            }
            Ok(pb::ThreadResponse { nodes: sort::threads(rows) })
        })
    }
}
