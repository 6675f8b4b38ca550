//! An SMTP client session (RFC 5321 §3): greeting, EHLO, mail
//! transactions on one connection, QUIT.

use std::net::SocketAddr;
use std::time::Instant;

use crate::conn::Conn;

use super::SmtpError;
use super::codec::{END_OF_DATA, Reply, ehlo_keywords, parse_reply};

/// Where in a mail transaction (RFC 5321 §3.3) a reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Mail,
    Rcpt,
    Data,
    /// The reply to the final `.` (§4.1.1.4).
    EndOfData,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::EndOfData => "end-of-data",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 250 after the final dot: the server took responsibility (§4.2.5 / §6.1).
    Accepted,
    Rejected {
        stage: Stage,
        code: u16,
    },
}

/// Timings of one transaction, taken on this side of the socket.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub outcome: Outcome,
    /// Just before MAIL FROM was written.
    pub started: Instant,
    /// Just before the final `.` was written (the content having been
    /// handed to the kernel), if DATA got that far.
    pub end_of_data_sent: Option<Instant>,
    /// When the last reply of the transaction had been read.
    pub finished: Instant,
}

pub struct SmtpClient {
    conn: Conn,
    keywords: Vec<String>,
}

impl SmtpClient {
    /// Connects and reads the 220 greeting (§4.3.1: 554 means no service).
    pub async fn connect(addr: SocketAddr) -> Result<Self, SmtpError> {
        let mut client = Self { conn: Conn::connect(addr).await?, keywords: Vec::new() };
        let greeting = client.read_reply().await?;
        if greeting.code != 220 {
            return Err(SmtpError::Refused { command: "greeting", reply: greeting });
        }
        Ok(client)
    }

    /// EHLO (§4.1.1.1); remembers the advertised extensions.
    pub async fn ehlo(&mut self, domain: &str) -> Result<(), SmtpError> {
        let reply = self.command(&format!("EHLO {domain}")).await?;
        if reply.code != 250 {
            return Err(SmtpError::Refused { command: "EHLO", reply });
        }
        self.keywords = ehlo_keywords(&reply);
        Ok(())
    }

    pub fn supports(&self, keyword: &str) -> bool {
        self.keywords.iter().any(|k| k.eq_ignore_ascii_case(keyword))
    }

    pub async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        self.conn.send(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        let reply = self.conn.read_item(parse_reply).await?;
        // §3.8: 421 means the server is closing the channel.
        if reply.code == 421 {
            return Err(SmtpError::Closing(reply));
        }
        Ok(reply)
    }

    /// One mail transaction for one recipient. `stuffed` must come from
    /// [`super::codec::dot_stuff`]. With `pipelining` (RFC 2920, only if the
    /// server advertised PIPELINING) MAIL, RCPT and DATA go in one write.
    ///
    /// A refusal is an [`Outcome`], not an error; after one the transaction
    /// is reset with RSET (§4.1.1.5) so the connection can go on.
    pub async fn send_mail(
        &mut self,
        from: &str,
        to: &str,
        stuffed: &[u8],
        pipelining: bool,
    ) -> Result<Transaction, SmtpError> {
        let mail = format!("MAIL FROM:<{from}>\r\n");
        let rcpt = format!("RCPT TO:<{to}>\r\n");
        let pipelined = pipelining && self.supports("PIPELINING");
        let started = Instant::now();
        let refused = if pipelined {
            self.envelope_pipelined(&mail, &rcpt).await?
        } else {
            self.envelope_serial(&mail, &rcpt).await?
        };
        if let Some((stage, code)) = refused {
            self.command("RSET").await?;
            return Ok(Transaction {
                outcome: Outcome::Rejected { stage, code },
                started,
                end_of_data_sent: None,
                finished: Instant::now(),
            });
        }
        self.conn.send(stuffed).await?;
        let end_of_data_sent = Some(Instant::now());
        self.conn.send(END_OF_DATA).await?;
        let reply = self.read_reply().await?;
        let finished = Instant::now();
        let outcome = if reply.code == 250 {
            Outcome::Accepted
        } else {
            Outcome::Rejected { stage: Stage::EndOfData, code: reply.code }
        };
        Ok(Transaction { outcome, started, end_of_data_sent, finished })
    }

    /// MAIL, RCPT, DATA, each waiting for its reply. `Some` names the
    /// first refusal.
    async fn envelope_serial(&mut self, mail: &str, rcpt: &str) -> Result<Option<(Stage, u16)>, SmtpError> {
        for (line, stage) in [(mail, Stage::Mail), (rcpt, Stage::Rcpt)] {
            self.conn.send(line.as_bytes()).await?;
            let reply = self.read_reply().await?;
            if !reply.is_positive() {
                return Ok(Some((stage, reply.code)));
            }
        }
        let data = self.command("DATA").await?;
        Ok((data.code != 354).then_some((Stage::Data, data.code)))
    }

    /// RFC 2920 §3.1: MAIL, RCPT and DATA in one write (DATA last in the
    /// group), then the three replies in order.
    async fn envelope_pipelined(&mut self, mail: &str, rcpt: &str) -> Result<Option<(Stage, u16)>, SmtpError> {
        self.conn.send(format!("{mail}{rcpt}DATA\r\n").as_bytes()).await?;
        let (m, r, d) = (self.read_reply().await?, self.read_reply().await?, self.read_reply().await?);
        let refused = if !m.is_positive() {
            Some((Stage::Mail, m.code))
        } else if !r.is_positive() {
            Some((Stage::Rcpt, r.code))
        } else if d.code != 354 {
            Some((Stage::Data, d.code))
        } else {
            None
        };
        if refused.is_some() && d.is_intermediate() {
            // DATA was accepted although the envelope was not (§3.1 says a
            // server should refuse it): end the empty content at once.
            self.conn.send(END_OF_DATA).await?;
            self.read_reply().await?;
        }
        Ok(refused)
    }

    /// QUIT (§4.1.1.10) and close.
    pub async fn quit(mut self) -> Result<(), SmtpError> {
        let reply = self.command("QUIT").await;
        self.conn.shutdown().await;
        match reply {
            Ok(_) | Err(SmtpError::Closing(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn bytes_out(&self) -> u64 {
        self.conn.bytes_out()
    }
}
