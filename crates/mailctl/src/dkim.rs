//! `mailctl dkim`: DKIM signing keys (RFC 6376) kept by storage.
//!
//! `generate` creates a key for a served domain and prints the TXT record
//! to publish; the relay signs mail of that domain from then on (within a
//! few minutes: it caches keys). `list` shows the keys and their records.

use crate::output::out;
use clap::Subcommand;
use mailfleet_proto::storage::v1 as pb;

#[derive(Subcommand)]
pub enum DkimCmd {
    /// Generate a signing key for a domain and print the DNS record to publish.
    Generate {
        domain: String,
        /// Selector: the key is published at <selector>._domainkey.<domain>.
        #[arg(long, default_value = "mailfleet")]
        selector: String,
        /// rsa (2048 bits, understood everywhere) or ed25519 (RFC 8463).
        #[arg(long, default_value = "rsa")]
        algorithm: String,
    },
    /// List keys (all domains, or one) with their DNS records.
    List { domain: Option<String> },
}

/// A TXT record in zone-file syntax; RFC 1035 §3.3.14 character-strings hold
/// at most 255 octets, so long values (RSA keys) are split into several.
pub fn zone_record(name: &str, value: &str) -> String {
    let parts: Vec<String> =
        value.as_bytes().chunks(255).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
    format!("{name}. IN TXT ( {} )", parts.join(" "))
}

pub async fn run(admin: &mut crate::Admin, cmd: DkimCmd) -> anyhow::Result<()> {
    match cmd {
        DkimCmd::Generate { domain, selector, algorithm } => {
            let key = admin
                .generate_dkim_key(pb::GenerateDkimKeyRequest { domain, selector, algorithm })
                .await
                .map_err(crate::explain)?
                .into_inner();
            out!("generated {} key for {} (selector {})", key.algorithm, key.domain, key.selector);
            out!("publish this DNS record:");
            out!("{}", zone_record(&key.dns_name, &key.dns_value));
        }
        DkimCmd::List { domain } => {
            let list = admin
                .list_dkim_keys(pb::ListDkimKeysRequest { domain: domain.unwrap_or_default() })
                .await
                .map_err(crate::explain)?
                .into_inner();
            for key in list.keys {
                out!(
                    "{}\t{}\t{}\t{}",
                    key.domain,
                    key.selector,
                    key.algorithm,
                    zone_record(&key.dns_name, &key.dns_value)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_records_are_split() {
        let value = format!("v=DKIM1; k=rsa; p={}", "A".repeat(400));
        let r = zone_record("s._domainkey.example.org", &value);
        assert!(r.starts_with("s._domainkey.example.org. IN TXT ( \"v=DKIM1; k=rsa; p="));
        assert_eq!(r.matches('"').count(), 4, "two character-strings: {r}");
    }
}
