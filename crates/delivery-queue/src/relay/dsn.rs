//! Delivery status notifications (RFC 3464) honouring the DSN parameters of
//! RFC 3461: NOTIFY, RET, ENVID and ORCPT.
//!
//! The report is `multipart/report; report-type=delivery-status` (RFC 6522)
//! with three parts: a human-readable explanation, the
//! `message/delivery-status` fields, and the original message
//! (`message/rfc822`) or its header (`text/rfc822-headers`).

use chrono::{DateTime, Utc};

/// RFC 3461 §4.1 NOTIFY bits as carried in the job.
pub const NOTIFY_NEVER: u32 = 1;
pub const NOTIFY_SUCCESS: u32 = 2;
pub const NOTIFY_FAILURE: u32 = 4;
pub const NOTIFY_DELAY: u32 = 8;

/// RFC 3464 §2.3.3 Action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    /// Handed to a server that does not speak DSN (RFC 3461 §6.2.1.1 ...
    /// "relayed": no further notification can be expected).
    Relayed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// Does the sender want a DSN of this kind for a recipient with `notify` bits?
/// RFC 3461 §4.1: NEVER suppresses every DSN; without NOTIFY the MTA
/// behaves as for NOTIFY=FAILURE (delays are reported only when asked for).
pub fn wanted(notify: u32, action: Action) -> bool {
    if notify & NOTIFY_NEVER != 0 {
        return false;
    }
    let notify = if notify == 0 { NOTIFY_FAILURE } else { notify };
    match action {
        Action::Failed => notify & NOTIFY_FAILURE != 0,
        Action::Delayed => notify & NOTIFY_DELAY != 0,
        Action::Delivered | Action::Relayed => notify & NOTIFY_SUCCESS != 0,
    }
}

/// Per-recipient fields (RFC 3464 §2.3).
#[derive(Debug, Clone)]
pub struct RecipientReport {
    pub final_recipient: String,
    /// ORCPT as given ("rfc822;user@example.org"), empty if none.
    pub original_recipient: String,
    pub action: Action,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// The MX that answered, if any.
    pub remote_mta: Option<String>,
    /// The far side's reply, e.g. "550 5.1.1 no such user".
    pub diagnostic: Option<String>,
    pub last_attempt: Option<DateTime<Utc>>,
}

pub struct Report<'a> {
    /// Our host name (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// Who gets the report: the original envelope sender.
    pub to: &'a str,
    pub envid: &'a str,
    pub arrival: DateTime<Utc>,
    /// RFC 3461 RET from the job: "FULL", "HDRS" or "".
    pub ret: &'a str,
    pub original: &'a [u8],
    pub recipients: Vec<RecipientReport>,
    /// Larger originals are returned as headers only.
    pub max_return: usize,
}

/// The header block of a message (up to and including the empty line).
pub fn header_part(message: &[u8]) -> &[u8] {
    for (i, w) in message.windows(4).enumerate() {
        if w == b"\r\n\r\n" {
            return &message[..i + 4];
        }
    }
    for (i, w) in message.windows(2).enumerate() {
        if w == b"\n\n" {
            return &message[..i + 2];
        }
    }
    message
}

/// Whether the full message is returned.
///
/// RFC 3461 §4.3: RET=HDRS asks for the header only, RET=FULL for the whole
/// message; without RET the choice is the MTA's. Like common MTAs we return
/// the whole message with a failure and only the header with success or
/// delay notices (which are about mail that still got, or may get, through).
pub fn returns_full(ret: &str, action: Action, size: usize, max_return: usize) -> bool {
    if size > max_return {
        return false;
    }
    match ret.to_ascii_uppercase().as_str() {
        "HDRS" => false,
        "FULL" => true,
        _ => action == Action::Failed,
    }
}

fn rfc2822(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// A value that goes into a header field: control characters (CR and LF
/// first: they would start a field of their own; others, such as escape
/// sequences in a far side's reply, have no business in a report either)
/// become spaces.
fn field(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Build the DSN message (CRLF line endings), from `MAILER-DAEMON@<host>`.
pub fn build(report: &Report<'_>, now: DateTime<Utc>, message_id: &str) -> Vec<u8> {
    // RFC 2046 §5.1.1: at most 70 characters from a restricted set; "=_"
    // cannot occur in base64 or quoted-printable content.
    let boundary = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        message_id.hash(&mut h);
        format!("=_dsn_{:016x}", h.finish())
    };
    let worst = if report.recipients.iter().any(|r| r.action == Action::Failed) {
        Action::Failed
    } else if report.recipients.iter().any(|r| r.action == Action::Delayed) {
        Action::Delayed
    } else {
        report.recipients.first().map(|r| r.action).unwrap_or(Action::Failed)
    };
    let subject = match worst {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        Action::Delivered | Action::Relayed => "Successful Mail Delivery Report",
    };
    let host = field(report.reporting_mta);
    let mut out = String::new();
    out.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"));
    out.push_str(&format!("To: <{}>\r\n", field(report.to)));
    out.push_str(&format!("Subject: {subject}\r\n"));
    out.push_str(&format!("Date: {}\r\n", rfc2822(now)));
    out.push_str(&format!("Message-ID: <{}>\r\n", field(message_id)));
    // RFC 3834 §5: automatic responses are marked, so nobody answers them.
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    out.push_str("\r\nThis is a MIME-encapsulated delivery status notification.\r\n");

    // Part 1: for humans (RFC 3464 §2: text explaining the report).
    out.push_str(&format!("\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"));
    out.push_str(&format!("This is the mail system at host {host}.\r\n\r\n"));
    match worst {
        Action::Failed => out.push_str(
            "Your message could not be delivered to one or more recipients.\r\n\
             It is attached below.\r\n\r\n",
        ),
        Action::Delayed => {
            out.push_str("Your message has not been delivered yet to one or more recipients.\r\nDelivery will be retried; no action is needed.\r\n\r\n")
        }
        _ => out.push_str("Your message was delivered as requested to the recipients below.\r\n\r\n"),
    }
    for r in &report.recipients {
        out.push_str(&format!("<{}>: {}", field(&r.final_recipient), r.action.as_str()));
        if r.status == "4.4.7" {
            // RFC 3463 4.4.7: delivery time expired.
            out.push_str(" (gave up: still failing at the end of the retry period)");
        }
        if let Some(d) = &r.diagnostic {
            out.push_str(&format!(": {}", field(d)));
        }
        out.push_str("\r\n");
    }

    // Part 2: the machine-readable status (RFC 3464 §2.2, §2.3).
    out.push_str(&format!("\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"));
    out.push_str(&format!("Reporting-MTA: dns; {host}\r\n"));
    // RFC 3464 §2.2.1: the ENVID as the sender gave it (decoded from xtext).
    if let Ok(envid) = mail_types::Envid::new(report.envid.to_string()) {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", envid.as_str()));
    }
    out.push_str(&format!("Arrival-Date: {}\r\n", rfc2822(report.arrival)));
    for r in &report.recipients {
        out.push_str("\r\n");
        // RFC 3464 §2.3.1: Original-Recipient only when ORCPT was given
        // (RFC 6533 §3: a non-ASCII one in its 7-bit utf-8-addr-xtext form).
        if let Ok(orcpt) = mail_types::OriginalRecipient::parse_stored(&r.original_recipient) {
            out.push_str(&format!("Original-Recipient: {}\r\n", orcpt.to_report_field()));
        }
        out.push_str(&format!("Final-Recipient: rfc822; {}\r\n", field(&r.final_recipient)));
        out.push_str(&format!("Action: {}\r\n", r.action.as_str()));
        out.push_str(&format!("Status: {}\r\n", field(&r.status)));
        if let Some(m) = &r.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", field(m)));
        }
        if let Some(d) = &r.diagnostic {
            // RFC 3464 §2.3.6: "smtp" for a reply of the far side; our own
            // diagnostics (DNS, connection) use a private X- type.
            let kind = if d.as_bytes().get(..3).is_some_and(|c| c.iter().all(u8::is_ascii_digit)) {
                "smtp"
            } else {
                "X-Mailfleet"
            };
            out.push_str(&format!("Diagnostic-Code: {kind}; {}\r\n", field(d)));
        }
        if let Some(t) = r.last_attempt {
            out.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc2822(t)));
        }
    }

    // Part 3: the original (RFC 3462/6522 §4: message/rfc822 or
    // text/rfc822-headers).
    let mut bytes = out.into_bytes();
    let full = returns_full(report.ret, worst, report.original.len(), report.max_return);
    let eight_bit = report.original.iter().any(|b| *b >= 0x80);
    let cte = if eight_bit { "Content-Transfer-Encoding: 8bit\r\n" } else { "" };
    if full {
        bytes.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n{cte}Content-Disposition: attachment\r\n\r\n")
                .as_bytes(),
        );
        bytes.extend_from_slice(report.original);
    } else {
        bytes.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n{cte}\r\n").as_bytes(),
        );
        bytes.extend_from_slice(header_part(report.original));
    }
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ret: &'static str, action: Action) -> Vec<u8> {
        let t = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        build(
            &Report {
                reporting_mta: "mx.local.test",
                to: "alice@local.test",
                envid: "ENV-1",
                arrival: t,
                ret,
                original: b"Subject: hi\r\nFrom: alice@local.test\r\n\r\nbody line\r\n",
                recipients: vec![RecipientReport {
                    final_recipient: "bob@remote.test".into(),
                    original_recipient: "rfc822;Bob@remote.test".into(),
                    action,
                    status: "5.1.1".into(),
                    remote_mta: Some("mx.remote.test".into()),
                    diagnostic: Some("550 5.1.1 no such user".into()),
                    last_attempt: Some(t),
                }],
                max_return: 1 << 20,
            },
            t,
            "abc@mx.local.test",
        )
    }

    #[test]
    fn failure_report_fields_and_full_return() {
        let dsn = String::from_utf8(sample("", Action::Failed)).expect("utf8");
        for needle in [
            "From: Mail Delivery System <MAILER-DAEMON@mx.local.test>",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Reporting-MTA: dns; mx.local.test",
            "Original-Envelope-Id: ENV-1",
            "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000",
            "Original-Recipient: rfc822; Bob@remote.test",
            "Final-Recipient: rfc822; bob@remote.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.remote.test",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
            "Content-Type: message/rfc822",
            "body line",
        ] {
            assert!(dsn.contains(needle), "missing {needle:?} in\n{dsn}");
        }
        let hdrs = String::from_utf8(sample("HDRS", Action::Failed)).expect("utf8");
        assert!(hdrs.contains("Content-Type: text/rfc822-headers"));
        assert!(hdrs.contains("Subject: hi") && !hdrs.contains("body line"));
    }

    #[test]
    fn hostile_values_stay_inside_their_fields() {
        let t = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let recipient = |orcpt: &str| RecipientReport {
            final_recipient: "bob@remote.test".into(),
            original_recipient: orcpt.into(),
            action: Action::Failed,
            status: "5.1.1".into(),
            remote_mta: None,
            diagnostic: Some("550 5.1.1 \u{1b}[2Jgone\r\nX-Injected: yes".into()),
            last_attempt: None,
        };
        let dsn = build(
            &Report {
                reporting_mta: "mx.local.test",
                to: "alice@local.test",
                envid: "E\r\nX-Injected: yes",
                arrival: t,
                ret: "",
                original: b"Subject: hi\r\n\r\nbody\r\n",
                recipients: vec![recipient("rfc822;b@r.test\r\nX-Injected: yes"), recipient("utf-8;jörg@r.test")],
                max_return: 1 << 20,
            },
            t,
            "abc@mx.local.test",
        );
        let dsn = String::from_utf8(dsn).expect("utf8");
        assert!(!dsn.contains("\nX-Injected"), "{dsn}");
        assert!(!dsn.contains('\u{1b}'), "{dsn}");
        assert!(!dsn.contains("Original-Envelope-Id"), "an ENVID with a line break is left out:\n{dsn}");
        assert_eq!(dsn.matches("Original-Recipient:").count(), 1, "{dsn}");
        assert!(dsn.contains("Original-Recipient: utf-8; j\\x{F6}rg@r.test\r\n"), "{dsn}");
    }

    #[test]
    fn notify_rules() {
        assert!(wanted(0, Action::Failed));
        assert!(!wanted(0, Action::Delayed));
        assert!(!wanted(0, Action::Relayed));
        assert!(!wanted(NOTIFY_NEVER, Action::Failed));
        assert!(wanted(NOTIFY_SUCCESS, Action::Relayed));
        assert!(!wanted(NOTIFY_SUCCESS, Action::Failed));
        assert!(wanted(NOTIFY_DELAY | NOTIFY_FAILURE, Action::Delayed));
        assert!(!returns_full("", Action::Relayed, 10, 100));
        assert!(returns_full("FULL", Action::Relayed, 10, 100));
        assert!(!returns_full("FULL", Action::Failed, 1000, 100));
    }
}
