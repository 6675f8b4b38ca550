//! SEARCH (RFC 3501 §6.4.4, RFC 9051 §6.4.4, CONDSTORE MODSEQ RFC 7162
//! §3.1.5) evaluated in Postgres: the criteria tree becomes one WHERE
//! clause with bind parameters (user input is never spliced into SQL), so
//! no message is loaded into the service to be tested.

use mailfleet_proto::storage::v1 as pb;
use pb::date_key::Relation;
use pb::search_key::Key;
use sqlx::{Postgres, QueryBuilder, Row};

use super::flags::{SYSTEM_FLAGS, normalize_flag};
use super::{UID_STAR, UidSet, mailbox_by_id, u32_of, u64_of};
use crate::Store;
use crate::error::{StorageError, StorageResult};

/// Deeper criteria trees are refused rather than recursed into.
const MAX_DEPTH: usize = 64;

/// The decoded header lines of the blob plus the per-recipient prefix lines
/// (Return-Path, Delivered-To), one `name: value` per line. The prefix is raw
/// octets: `encode(.., 'escape')` turns it into text without failing on
/// non-UTF-8 bytes.
const HEADER_TEXT: &str = "(coalesce(b.header_text, '') || replace(encode(m.header_prefix, 'escape'), E'\\r', ''))";
const BODY_TEXT: &str = "coalesce(b.body_text, '')";

fn bad(msg: impl Into<String>) -> StorageError {
    StorageError::InvalidArgument(msg.into())
}

fn parse_date(s: &str) -> StorageResult<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, format).map_err(|_| bad(format!("bad search date {s:?}, expected YYYY-MM-DD")))
}

fn relation_op(d: &pb::DateKey) -> StorageResult<&'static str> {
    match Relation::try_from(d.relation) {
        Ok(Relation::Before) => Ok("<"),
        Ok(Relation::On) => Ok("="),
        Ok(Relation::Since) => Ok(">="),
        _ => Err(bad("date relation must be BEFORE, ON or SINCE")),
    }
}

/// RFC 5322 §3.6.8: field names are printable ASCII except ':'.
fn check_field_name(name: &str) -> StorageResult<String> {
    if name.is_empty() || name.len() > 200 || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(bad(format!("bad header field name {name:?}")));
    }
    Ok(name.to_ascii_lowercase())
}

struct Builder {
    qb: QueryBuilder<Postgres>,
    /// Largest UID in the mailbox, for `n:*` (RFC 3501 §6.4.8).
    max_uid: Option<i64>,
}

impl Builder {
    /// Case-insensitive substring test of `text_sql` (RFC 3501 §6.4.4:
    /// "the matching is case-insensitive"). strpos needs no LIKE escaping.
    fn contains(&mut self, text_sql: &str, needle: &str) {
        self.qb.push(format_args!("strpos(lower({text_sql}), lower("));
        self.qb.push_bind(needle.to_string());
        self.qb.push(")) > 0");
    }

    fn flag_test(&mut self, flag: &str) -> StorageResult<()> {
        let flag = normalize_flag(flag)?;
        if SYSTEM_FLAGS.contains(&flag.as_str()) {
            self.qb.push_bind(flag);
            self.qb.push(" = ANY(m.flags)");
        } else {
            // Keywords compare case-insensitively.
            self.qb.push("EXISTS (SELECT 1 FROM unnest(m.flags) AS f WHERE lower(f) = lower(");
            self.qb.push_bind(flag);
            self.qb.push("))");
        }
        Ok(())
    }

    fn header_test(&mut self, h: &pb::HeaderMatch) -> StorageResult<()> {
        let field = check_field_name(&h.field)?;
        // A line of that field whose value contains the string; an empty
        // string matches every message that has the field.
        self.qb.push(format_args!(
            "EXISTS (SELECT 1 FROM regexp_split_to_table({HEADER_TEXT}, E'\\n') AS l WHERE starts_with(lower(l), "
        ));
        self.qb.push_bind(format!("{field}:"));
        self.qb.push(") AND strpos(lower(substr(l, ");
        self.qb.push_bind(field.chars().count() as i32 + 2);
        self.qb.push(")), lower(");
        self.qb.push_bind(h.value.clone());
        self.qb.push(")) > 0)");
        Ok(())
    }

    fn key(&mut self, key: &pb::SearchKey, depth: usize) -> StorageResult<()> {
        if depth > MAX_DEPTH {
            return Err(bad("search criteria nested too deeply"));
        }
        let Some(k) = &key.key else {
            return Err(bad("empty search key"));
        };
        match k {
            Key::All(_) => {
                self.qb.push("TRUE");
            }
            Key::HasFlag(f) => self.flag_test(f)?,
            Key::LacksFlag(f) => {
                self.qb.push("NOT (");
                self.flag_test(f)?;
                self.qb.push(")");
            }
            // RFC 3501 §6.4.4: dates disregard time and timezone; the
            // internal date is compared by its UTC date.
            Key::InternalDate(d) => {
                let op = relation_op(d)?;
                let date = parse_date(&d.date)?;
                self.qb.push(format_args!("(m.internal_date AT TIME ZONE 'UTC')::date {op} "));
                self.qb.push_bind(date);
            }
            // Sent date = the Date: field's date; a message without a
            // usable Date: falls back to its internal date.
            Key::SentDate(d) => {
                let op = relation_op(d)?;
                let date = parse_date(&d.date)?;
                self.qb.push(format_args!("coalesce(b.sent_date, (m.internal_date AT TIME ZONE 'UTC')::date) {op} "));
                self.qb.push_bind(date);
            }
            Key::Larger(n) => {
                self.qb.push("m.size > ");
                self.qb.push_bind(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            Key::Smaller(n) => {
                self.qb.push("m.size < ");
                self.qb.push_bind(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            Key::Header(h) => self.header_test(h)?,
            Key::Body(s) => self.contains(BODY_TEXT, s),
            Key::Text(s) => {
                self.qb.push("(");
                self.contains(HEADER_TEXT, s);
                self.qb.push(" OR ");
                self.contains(BODY_TEXT, s);
                self.qb.push(")");
            }
            Key::ModseqAtLeast(n) => {
                self.qb.push("m.modseq >= ");
                self.qb.push_bind(i64::try_from(*n).unwrap_or(i64::MAX));
            }
            Key::Not(inner) => {
                self.qb.push("NOT (");
                self.key(inner, depth + 1)?;
                self.qb.push(")");
            }
            Key::Or(list) => {
                if list.keys.is_empty() {
                    return Err(bad("OR needs at least one key"));
                }
                self.list(&list.keys, " OR ", depth)?;
            }
            Key::And(list) => {
                if list.keys.is_empty() {
                    self.qb.push("TRUE");
                } else {
                    self.list(&list.keys, " AND ", depth)?;
                }
            }
            Key::UidSet(set) => {
                let mut set = UidSet::parse(&set.ranges)?;
                if set.is_empty() {
                    self.qb.push("FALSE");
                    return Ok(());
                }
                if let Some(max) = self.max_uid {
                    for (s, e) in set.starts.iter_mut().zip(set.ends.iter()) {
                        if *e == i64::from(UID_STAR) && *s > max {
                            *s = max;
                        }
                    }
                }
                self.qb.push("EXISTS (SELECT 1 FROM unnest(");
                self.qb.push_bind(set.starts);
                self.qb.push("::bigint[], ");
                self.qb.push_bind(set.ends);
                self.qb.push("::bigint[]) AS r(s, e) WHERE m.uid BETWEEN r.s AND r.e)");
            }
        }
        Ok(())
    }

    fn list(&mut self, keys: &[pb::SearchKey], sep: &str, depth: usize) -> StorageResult<()> {
        self.qb.push("(");
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                self.qb.push(sep);
            }
            self.qb.push("(");
            self.key(k, depth + 1)?;
            self.qb.push(")");
        }
        self.qb.push(")");
        Ok(())
    }
}

/// `SELECT {columns} FROM messages m JOIN blobs b … WHERE` the mailbox's
/// messages match `criteria`: the query SEARCH runs, and SORT and THREAD
/// extend (RFC 5256 §3: their searching criteria are SEARCH's). The caller
/// appends ORDER BY.
pub(super) async fn matching(
    conn: &mut sqlx::PgConnection,
    mailbox_id: i64,
    columns: &str,
    criteria: Option<&pb::SearchKey>,
) -> StorageResult<QueryBuilder<Postgres>> {
    let max_uid: Option<i64> = sqlx::query_scalar("SELECT max(uid) FROM messages WHERE mailbox_id = $1")
        .bind(mailbox_id)
        .fetch_one(&mut *conn)
        .await?;
    let mut b = Builder {
        qb: QueryBuilder::new(format!(
            "SELECT {columns} FROM messages m JOIN blobs b ON b.id = m.blob_id WHERE m.mailbox_id = "
        )),
        max_uid,
    };
    b.qb.push_bind(mailbox_id);
    b.qb.push(" AND (");
    match criteria {
        Some(c) => b.key(c, 0)?,
        None => {
            b.qb.push("TRUE");
        }
    }
    b.qb.push(")");
    Ok(b.qb)
}

impl Store {
    pub(crate) async fn search(&self, req: &pb::SearchRequest) -> StorageResult<pb::SearchResponse> {
        let mut conn = self.pool.acquire().await?;
        let mailbox = mailbox_by_id(&mut conn, req.account_id, req.mailbox_id, false).await?;
        let mut qb = matching(&mut conn, mailbox.id, "m.uid, m.modseq", req.criteria.as_ref()).await?;
        qb.push(" ORDER BY m.uid");
        let rows = qb.build().fetch_all(&mut *conn).await?;
        let mut uids = Vec::with_capacity(rows.len());
        let mut highest = 0;
        for r in &rows {
            uids.push(u32_of(r.get("uid")));
            highest = highest.max(u64_of(r.get("modseq")));
        }
        Ok(pb::SearchResponse { uids, highest_modseq: highest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_field_names_are_validated() {
        assert!(parse_date("2026-02-30").is_err());
        assert_eq!(parse_date("1994-02-07").unwrap().to_string(), "1994-02-07");
        assert!(check_field_name("Subject").is_ok());
        assert!(check_field_name("Sub ject").is_err());
        assert!(check_field_name("X:Y").is_err());
        assert!(check_field_name("").is_err());
    }
}
