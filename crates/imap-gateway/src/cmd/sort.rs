//! SORT and UID SORT (RFC 5256 §3, RFC 5957 DISPLAYFROM/DISPLAYTO), and
//! with a RETURN clause ESORT (RFC 5267 §3.2). The search criteria become
//! storage's `SearchKey` exactly as for SEARCH (`cmd::search`); storage
//! orders the matches (`Messages.Sort`) and the gateway only maps UIDs to
//! the session's sequence numbers.

use std::num::{NonZeroU32, NonZeroU64};

use imap_codec::imap_types::core::{Atom, Charset, Tag, Vec1};
use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_codec::imap_types::response::{Capability, Data, Response};
use imap_codec::imap_types::search::SearchKey;
use mailfleet_proto::storage::v1 as pb;
use pb::search_key::Key;

use super::search::{check_size, has_modseq, key, translate};
use crate::codec::ext::SearchReturn;
use crate::session::{CmdResult, Done, ImapError, Out, Session};
use crate::store::MailStore;

/// RFC 5256 §1 SORT and THREAD=…, RFC 5957 §2 SORT=DISPLAY, RFC 5267
/// §3 ESORT (not CONTEXT=SORT: no PARTIAL, no UPDATE contexts).
pub fn capabilities(caps: &mut Vec<Capability<'static>>) {
    use imap_codec::imap_types::extensions::sort::SortAlgorithm;
    use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
    caps.push(Capability::Sort(None));
    caps.push(Capability::Sort(Some(SortAlgorithm::Display)));
    caps.push(Capability::Thread(ThreadingAlgorithm::OrderedSubject));
    caps.push(Capability::Thread(ThreadingAlgorithm::References));
    if let Ok(esort) = Atom::try_from("ESORT") {
        caps.push(Capability::from(esort));
    }
}

/// SORT/THREAD criteria ready for storage.
pub(crate) struct Prepared {
    pub account_id: i64,
    pub mailbox_id: i64,
    pub criteria: Option<pb::SearchKey>,
    /// A MODSEQ criterion was used (RFC 7162 §3.1.5: report the highest).
    pub uses_modseq: bool,
}

/// The search part of SORT and THREAD, as SEARCH does it (RFC 5256 §3).
pub(crate) fn prepare<S: MailStore>(
    s: &mut Session<S>,
    charset: &Charset<'static>,
    criteria: &Vec1<SearchKey<'static>>,
) -> Result<Prepared, ImapError> {
    check_size(criteria.as_ref())?;
    let uses_modseq = criteria.as_ref().iter().any(has_modseq);
    if uses_modseq {
        s.condstore = true;
    }
    let (account, mailbox) = s.need_selected()?;
    // RFC 5256 §3: the charset is required, checked as SEARCH checks it.
    super::search::check_charset(charset)?;
    let keys = criteria.as_ref().iter().map(|k| translate(mailbox, k)).collect::<Result<Vec<_>, _>>()?;
    let criteria =
        if keys.len() == 1 { keys.into_iter().next() } else { Some(key(Key::And(pb::SearchKeyList { keys }))) };
    Ok(Prepared { account_id: account.id, mailbox_id: mailbox.id, criteria, uses_modseq })
}

fn criterion(c: &SortCriterion) -> pb::SortCriterion {
    use pb::sort_criterion::Key as K;
    let key = match c.key {
        SortKey::Arrival => K::Arrival,
        SortKey::Cc => K::Cc,
        SortKey::Date => K::Date,
        SortKey::From => K::From,
        SortKey::Size => K::Size,
        SortKey::Subject => K::Subject,
        SortKey::To => K::To,
        SortKey::DisplayFrom => K::DisplayFrom,
        SortKey::DisplayTo => K::DisplayTo,
    };
    pb::SortCriterion { key: key as i32, reverse: c.reverse }
}

/// `* SORT n…` (RFC 5256 §4), with `(MODSEQ m)` when the criteria had a
/// MODSEQ key and something matched (RFC 7162 §3.1.5).
fn sort_data(numbers: &[u32], modseq: Option<u64>) -> Response<'static> {
    let numbers = numbers.iter().filter_map(|&n| NonZeroU32::new(n)).collect();
    Response::Data(Data::Sort(numbers, modseq.and_then(NonZeroU64::new)))
}

/// SORT, UID SORT and (with `options`) their ESORT form.
#[allow(clippy::too_many_arguments)]
pub async fn sort<S: MailStore>(
    s: &mut Session<S>,
    tag: &Tag<'static>,
    options: Option<&SearchReturn>,
    sort_criteria: Vec1<SortCriterion>,
    charset: Charset<'static>,
    search_criteria: Vec1<SearchKey<'static>>,
    uid: bool,
    out: &mut Out,
) -> CmdResult {
    let prepared = prepare(s, &charset, &search_criteria)?;
    let store = s.store.clone();
    let req = pb::SortRequest {
        account_id: prepared.account_id,
        mailbox_id: prepared.mailbox_id,
        criteria: prepared.criteria,
        order: sort_criteria.as_ref().iter().map(criterion).collect(),
    };
    let found = store.sort(req).await?;
    let (_, mailbox) = s.need_selected()?;
    // Only messages this session knows of, in storage's order.
    let numbers: Vec<u32> =
        found.uids.iter().filter_map(|&u| mailbox.seq_of(u).map(|seq| if uid { u } else { seq })).collect();
    let modseq =
        (prepared.uses_modseq && !numbers.is_empty() && found.highest_modseq > 0).then_some(found.highest_modseq);
    match options {
        // RFC 5267 §3.2: MIN and MAX are the first and last in sort
        // order, ALL lists them in sort order; `esearch_line` takes the
        // list as given (runs only where numbers ascend by one).
        Some(options) => out.push_raw(super::search::esearch_line(tag.inner(), uid, options, &numbers, modseq)),
        None => out.push(sort_data(&numbers, modseq)),
    }
    Done::ok("SORT completed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sort_line(numbers: &[u32], modseq: Option<u64>) -> Vec<u8> {
        crate::codec::encode(&sort_data(numbers, modseq))
    }

    #[test]
    fn sort_lines() {
        assert_eq!(sort_line(&[2, 3, 1], None), b"* SORT 2 3 1\r\n");
        assert_eq!(sort_line(&[], None), b"* SORT\r\n");
        assert_eq!(sort_line(&[5], Some(9)), b"* SORT 5 (MODSEQ 9)\r\n");
        // ESORT's ALL keeps the sort order.
        let all = SearchReturn { min: true, max: true, all: true, count: true, save: false };
        assert_eq!(
            super::super::search::esearch_line("t", false, &all, &[4, 1, 2, 3, 9], None),
            b"* ESEARCH (TAG \"t\") MIN 4 MAX 9 COUNT 5 ALL 4,1:3,9\r\n"
        );
    }
}
