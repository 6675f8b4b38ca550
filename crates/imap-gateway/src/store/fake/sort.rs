//! SORT and THREAD for the fake store: a rough in-Rust stand-in (crude
//! header parsing, ORDEREDSUBJECT-style threads for every algorithm) so
//! protocol tests can run without Postgres. Storage computes the real
//! thing (`storage::messages::sort`).

use mailfleet_proto::storage::v1 as pb;
use pb::sort_criterion::Key;

/// One key's value for one message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Val {
    Num(i64),
    Text(String),
}

/// A rough base subject: leading "re:"/"fw:"/"fwd:" and a trailing "(fwd)" go.
pub(super) fn base_subject(subject: &str) -> String {
    let mut s = subject.trim().to_ascii_uppercase();
    loop {
        let before = s.len();
        for prefix in ["RE:", "FWD:", "FW:"] {
            if let Some(rest) = s.strip_prefix(prefix) {
                s = rest.trim_start().to_string();
            }
        }
        if let Some(rest) = s.strip_suffix("(FWD)") {
            s = rest.trim_end().to_string();
        }
        if s.len() == before {
            return s;
        }
    }
}

/// `Name <local@host>` → (display, local part).
fn address(value: &str) -> (String, String) {
    let first = value.split(',').next().unwrap_or("").trim();
    let (name, addr) = match (first.find('<'), first.find('>')) {
        (Some(a), Some(b)) if a < b => (first[..a].trim().trim_matches('"').trim(), &first[a + 1..b]),
        _ => ("", first),
    };
    let local = addr.split('@').next().unwrap_or("").to_ascii_uppercase();
    let display = if name.is_empty() { addr.to_ascii_uppercase() } else { name.to_ascii_uppercase() };
    (display, local)
}

/// The value `key` sorts one message by; `header` reads a header field.
pub(super) fn value(key: Key, size: usize, internal_date: i64, header: &dyn Fn(&str) -> Option<String>) -> Val {
    let text = |field: &str| header(field).unwrap_or_default();
    match key {
        Key::Arrival | Key::Unspecified => Val::Num(internal_date),
        Key::Date => Val::Num(
            header("Date")
                .and_then(|d| chrono::DateTime::parse_from_rfc2822(&d).ok())
                .map(|d| d.timestamp())
                .unwrap_or(internal_date),
        ),
        Key::Size => Val::Num(size as i64),
        Key::Subject => Val::Text(base_subject(&text("Subject"))),
        Key::From => Val::Text(address(&text("From")).1),
        Key::To => Val::Text(address(&text("To")).1),
        Key::Cc => Val::Text(address(&text("Cc")).1),
        Key::DisplayFrom => Val::Text(address(&text("From")).0),
        Key::DisplayTo => Val::Text(address(&text("To")).0),
    }
}

/// Sort `(uid, values)` rows by the criteria; ties by UID.
pub(super) fn sort(order: &[pb::SortCriterion], mut rows: Vec<(u32, Vec<Val>)>) -> Vec<u32> {
    rows.sort_by(|(ua, a), (ub, b)| {
        for (i, c) in order.iter().enumerate() {
            let ord = a[i].cmp(&b[i]);
            let ord = if c.reverse { ord.reverse() } else { ord };
            if ord.is_ne() {
                return ord;
            }
        }
        ua.cmp(ub)
    });
    rows.into_iter().map(|(uid, _)| uid).collect()
}

/// ORDEREDSUBJECT-style threads of `(uid, base subject, date)` rows.
pub(super) fn threads(mut rows: Vec<(u32, String, i64)>) -> Vec<pb::ThreadNode> {
    rows.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
    let mut groups: Vec<Vec<(u32, String, i64)>> = Vec::new();
    for row in rows {
        match groups.last_mut() {
            Some(g) if g[0].1 == row.1 => g.push(row),
            _ => groups.push(vec![row]),
        }
    }
    groups.sort_by_key(|g| (g[0].2, g[0].0));
    let mut nodes = Vec::new();
    for g in groups {
        nodes.push(pb::ThreadNode { uid: g[0].0, children: (g.len() - 1) as u32 });
        nodes.extend(g[1..].iter().map(|r| pb::ThreadNode { uid: r.0, children: 0 }));
    }
    nodes
}
