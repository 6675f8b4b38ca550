//! SEARCHRES (RFC 5182, part of RFC 9051): "$" names the messages saved by
//! the last `SEARCH RETURN (SAVE)`. The codec parses "$" as
//! `SAVED_PLACEHOLDER`; here it becomes the saved messages before the
//! command runs.

use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use super::select::sequence_set;
use crate::codec::ext::{SAVED_PLACEHOLDER, SearchReturn};
use crate::session::Selected;

fn is_placeholder(set: &SequenceSet) -> bool {
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(SeqOrUid::Value(n)) => n.get() == SAVED_PLACEHOLDER,
        Sequence::Range(SeqOrUid::Value(a), SeqOrUid::Value(b)) => {
            a.get() == SAVED_PLACEHOLDER || b.get() == SAVED_PLACEHOLDER
        }
        _ => false,
    })
}

/// The saved messages still in the mailbox, as UIDs or sequence numbers;
/// `None` when there are none (RFC 5182 §2.1: "$" is then empty).
fn saved_set(mailbox: &Selected, uid: bool) -> Option<SequenceSet> {
    let numbers: Vec<u32> =
        mailbox.saved.iter().filter_map(|u| mailbox.seq_of(*u).map(|seq| if uid { *u } else { seq })).collect();
    sequence_set(&numbers)
}

/// RFC 5182 §2.1 in a search key: the saved messages, by UID.
fn rewrite_key(mailbox: &Selected, key: &mut SearchKey<'static>) {
    match key {
        SearchKey::SequenceSet(set) | SearchKey::Uid(set) if is_placeholder(set) => {
            *key = match saved_set(mailbox, true) {
                Some(uids) => SearchKey::Uid(uids),
                None => SearchKey::Not(Box::new(SearchKey::All)),
            };
        }
        SearchKey::Not(inner) => rewrite_key(mailbox, inner),
        SearchKey::Or(a, b) => {
            rewrite_key(mailbox, a);
            rewrite_key(mailbox, b);
        }
        SearchKey::And(keys) => {
            let mut list: Vec<SearchKey<'static>> = keys.as_ref().to_vec();
            list.iter_mut().for_each(|k| rewrite_key(mailbox, k));
            if let Ok(v) = Vec1::try_from(list) {
                *keys = v;
            }
        }
        _ => {}
    }
}

pub fn rewrite_criteria(mailbox: &Selected, criteria: &mut Vec1<SearchKey<'static>>) {
    let mut list: Vec<SearchKey<'static>> = criteria.as_ref().to_vec();
    list.iter_mut().for_each(|k| rewrite_key(mailbox, k));
    if let Ok(v) = Vec1::try_from(list) {
        *criteria = v;
    }
}

/// What "$" became in a command.
pub enum Rewritten {
    /// The command now names the saved messages.
    Ready,
    /// "$" is empty: the command has nothing to act on (tagged OK).
    Empty,
}

/// Replace "$" in a standard command's sequence set or search criteria.
pub fn rewrite(mailbox: &Selected, body: &mut CommandBody<'static>) -> Rewritten {
    let replace = |set: &mut SequenceSet, uid: bool| -> Rewritten {
        if !is_placeholder(set) {
            return Rewritten::Ready;
        }
        match saved_set(mailbox, uid) {
            Some(saved) => {
                *set = saved;
                Rewritten::Ready
            }
            None => Rewritten::Empty,
        }
    };
    match body {
        CommandBody::Fetch { sequence_set, uid, .. }
        | CommandBody::Store { sequence_set, uid, .. }
        | CommandBody::Copy { sequence_set, uid, .. }
        | CommandBody::Move { sequence_set, uid, .. } => {
            let uid = *uid;
            replace(sequence_set, uid)
        }
        CommandBody::ExpungeUid { sequence_set } => replace(sequence_set, true),
        CommandBody::Search { criteria, .. } => {
            rewrite_criteria(mailbox, criteria);
            Rewritten::Ready
        }
        _ => Rewritten::Ready,
    }
}

/// RFC 5182 §2.4: what SAVE keeps: the minimum and/or maximum when only
/// MIN/MAX are asked for, otherwise every match. `uids` ascending.
pub fn to_save(options: &SearchReturn, uids: &[u32]) -> Vec<u32> {
    if (options.min || options.max) && !options.all && !options.count {
        let mut out = Vec::new();
        if options.min {
            out.extend(uids.first());
        }
        if options.max {
            out.extend(uids.last().filter(|m| Some(*m) != uids.first() || !options.min));
        }
        return out;
    }
    uids.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_keeps_min_max_or_all() {
        let all = [3, 5, 9];
        let min = SearchReturn { min: true, save: true, ..Default::default() };
        let max = SearchReturn { max: true, save: true, ..Default::default() };
        let both = SearchReturn { min: true, max: true, save: true, ..Default::default() };
        let count = SearchReturn { min: true, count: true, save: true, ..Default::default() };
        assert_eq!(to_save(&min, &all), vec![3]);
        assert_eq!(to_save(&max, &all), vec![9]);
        assert_eq!(to_save(&both, &all), vec![3, 9]);
        assert_eq!(to_save(&both, &[4]), vec![4]);
        assert_eq!(to_save(&count, &all), vec![3, 5, 9]);
        assert!(to_save(&min, &[]).is_empty());
    }

    #[test]
    fn placeholder_is_recognised() {
        let n = std::num::NonZeroU32::new(SAVED_PLACEHOLDER).expect("non-zero");
        let set = SequenceSet(Vec1::from(Sequence::Single(SeqOrUid::Value(n))));
        assert!(is_placeholder(&set));
    }
}
