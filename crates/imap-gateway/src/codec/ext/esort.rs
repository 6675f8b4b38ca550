//! `SORT RETURN (…) (keys) charset criteria` (RFC 5267 §3.2, ESORT),
//! which imap-codec does not parse: the RETURN clause is taken off here and
//! the rest handed back to imap-codec as a plain SORT, so keys, charset and
//! criteria follow the same rules as there.

use imap_codec::imap_types::command::CommandBody;

use super::{ExtBody, ExtError, ReturnOf, Spanned, cut_return, decode_std, is_atom};

/// `toks[verb]` is SORT (`uid`: after UID). `None` when there is no RETURN.
pub(super) fn parse_esort(msg: &[u8], toks: &[Spanned], verb: usize, uid: bool) -> Option<Result<ExtBody, ExtError>> {
    if !toks.get(verb + 1).is_some_and(|t| is_atom(t, "RETURN")) {
        return None;
    }
    Some((|| {
        let (options, rebuilt) = cut_return(msg, toks, verb, ReturnOf::Sort)?;
        match decode_std(&rebuilt).map(|c| c.body) {
            Some(CommandBody::Sort { sort_criteria, charset, search_criteria, uid: u }) if u == uid => {
                Ok(ExtBody::Sort { uid, options, sort_criteria, charset, search_criteria })
            }
            _ => Err(ExtError("Syntax error in SORT arguments")),
        }
    })())
}

#[cfg(test)]
mod tests {
    use super::super::{ClientBody, SearchReturn, parse};
    use super::*;

    fn ext(line: &[u8]) -> ExtBody {
        match parse(line) {
            Some(Ok(c)) => match c.body {
                ClientBody::Ext(e) => e,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sort_return_options() {
        let ExtBody::Sort { uid, options, sort_criteria, .. } =
            ext(b"a UID SORT RETURN (MIN COUNT) (REVERSE DATE SUBJECT) UTF-8 ALL\r\n")
        else {
            panic!("not SORT")
        };
        assert!(uid);
        assert_eq!(options, SearchReturn { min: true, count: true, ..Default::default() });
        assert_eq!(sort_criteria.as_ref().len(), 2);
        assert!(sort_criteria.as_ref()[0].reverse);
        let ExtBody::Sort { uid, options, .. } = ext(b"a SORT RETURN () (ARRIVAL) US-ASCII FROM \"x\"\r\n") else {
            panic!("not SORT")
        };
        assert!(!uid);
        assert!(options.all);
        assert!(matches!(parse(b"a SORT RETURN (PARTIAL 1:5) (DATE) UTF-8 ALL\r\n"), Some(Err(_))));
        assert!(matches!(parse(b"a SORT RETURN (MIN) (NOSUCHKEY) UTF-8 ALL\r\n"), Some(Err(_))));
        // Without RETURN it is not this form.
        assert!(parse(b"a SORT (DATE) UTF-8 ALL BOGUS\r\n").is_none());
    }
}
