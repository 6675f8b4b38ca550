//! PROXY protocol v1 (text) and v2 (binary), as specified by HAProxy's
//! "The PROXY protocol" (proxy-protocol.txt, versions 1 and 2): a load
//! balancer prepends one header to a TCP connection naming the real client.
//!
//! - [`parse`]: pure, no I/O; bytes in, [`Parse::Incomplete`] or a header.
//! - [`accept`]: right after `TcpListener::accept`. Only peers in the trusted
//!   list may (and then must) send a header; for anyone else the connection
//!   is used as-is and the peer is the client. The header is read exactly, so
//!   every byte after it stays in the stream for the protocol.
//! - [`ProxyProtocol`]: the serde config block every gateway embeds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Spec §2.1: a v1 header is at most 107 bytes, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// Spec §2.2: the 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// Spec §2.2: signature, version/command, family/transport, 2-byte length.
const V2_FIXED_LEN: usize = 16;
/// How long a trusted peer gets to send its header when config does not say.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied TCP connection: the client is `source`, it connected to `destination`.
    Proxy { source: SocketAddr, destination: SocketAddr },
    /// v2 LOCAL (spec §2.2, command 0x0): the proxy's own connection (e.g. a
    /// health check); use the real endpoints.
    Local,
    /// v1 `UNKNOWN` or a v2 family we do not route (UNSPEC, AF_UNIX): use the
    /// real endpoints (spec §2.1 and §2.2).
    Unknown,
}

/// Result of [`parse`] on a buffer that may hold only part of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// Everything so far is a valid beginning; read more.
    Incomplete,
    /// A whole header occupying the first `len` bytes.
    Complete { header: ProxyHeader, len: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid trusted network {0:?}")]
    BadCidr(String),
}

/// Parse a PROXY header (v1 or v2) at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parse, ProxyError> {
    if buf.first() == Some(&b'P') {
        parse_v1(buf)
    } else if buf.first() == Some(&V2_SIGNATURE[0]) {
        parse_v2(buf)
    } else if buf.is_empty() {
        Ok(Parse::Incomplete)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Spec §2.1 (human-readable header):
///
/// ```text
/// header  = "PROXY" SP ( "TCP4" | "TCP6" ) SP src-ip SP dst-ip SP src-port SP dst-port CRLF
///         | "PROXY" SP "UNKNOWN" [ anything up to CRLF ] CRLF
/// ```
/// At most 107 bytes; addresses in their usual textual form, ports 0-65535.
fn parse_v1(buf: &[u8]) -> Result<Parse, ProxyError> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1("longer than 107 bytes"))
        } else {
            Ok(Parse::Incomplete)
        };
    };
    let len = lf + 1;
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ProxyError::V1("line does not end in CRLF"));
    }
    if lf < PREFIX.len() {
        return Err(ProxyError::V1("truncated"));
    }
    let line = std::str::from_utf8(&window[PREFIX.len()..lf - 1]).map_err(|_| ProxyError::V1("not ASCII"))?;
    // "UNKNOWN": the receiver must ignore anything up to the CRLF.
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Parse::Complete { header: ProxyHeader::Unknown, len });
    }
    let mut fields = line.split(' ');
    let proto = fields.next().ok_or(ProxyError::V1("missing protocol"))?;
    let mut next = || fields.next().ok_or(ProxyError::V1("missing field"));
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError::V1("trailing fields"));
    }
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (v1_ip::<Ipv4Addr>(src)?.into(), v1_ip::<Ipv4Addr>(dst)?.into()),
        "TCP6" => (v1_ip::<Ipv6Addr>(src)?.into(), v1_ip::<Ipv6Addr>(dst)?.into()),
        _ => return Err(ProxyError::V1("unknown protocol")),
    };
    let header = ProxyHeader::Proxy {
        source: SocketAddr::new(src, v1_port(sport)?),
        destination: SocketAddr::new(dst, v1_port(dport)?),
    };
    Ok(Parse::Complete { header, len })
}

fn v1_ip<T: FromStr>(s: &str) -> Result<T, ProxyError> {
    s.parse().map_err(|_| ProxyError::V1("bad address"))
}

fn v1_port(s: &str) -> Result<u16, ProxyError> {
    // Decimal digits only ("+1" would parse as u16 otherwise); no leading zeros.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyError::V1("bad port"));
    }
    s.parse().map_err(|_| ProxyError::V1("bad port"))
}

/// Spec §2.2 (binary header):
///
/// ```text
/// sig[12] | ver_cmd (0x2 << 4 | 0x0 LOCAL / 0x1 PROXY) | fam (family << 4 | transport)
///         | len (u16, network order) | addresses | TLVs
/// ```
/// Address blocks: AF_INET 4+4+2+2, AF_INET6 16+16+2+2, AF_UNIX 108+108 bytes;
/// what follows them within `len` (TLVs, §2.2.7) is skipped.
fn parse_v2(buf: &[u8]) -> Result<Parse, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::NotProxy);
    }
    let (Some(&ver_cmd), Some(&fam)) = (buf.get(12), buf.get(13)) else {
        return Ok(Parse::Incomplete);
    };
    if ver_cmd >> 4 != 0x2 {
        return Err(ProxyError::V2("version is not 2"));
    }
    let local = match ver_cmd & 0x0F {
        0x0 => true,
        0x1 => false,
        _ => return Err(ProxyError::V2("unknown command")),
    };
    let Some(len_bytes) = buf.get(14..16) else {
        return Ok(Parse::Incomplete);
    };
    let body_len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let total = V2_FIXED_LEN + body_len;
    let Some(body) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Parse::Incomplete);
    };
    // LOCAL: "the receiver must accept this connection as valid and must use
    // the real connection endpoints and discard the protocol block".
    if local {
        return Ok(Parse::Complete { header: ProxyHeader::Local, len: total });
    }
    let transport = fam & 0x0F;
    let header = match fam >> 4 {
        0x0 => ProxyHeader::Unknown, // AF_UNSPEC
        0x1 | 0x2 if transport == 0x2 => return Err(ProxyError::V2("datagram transport on a stream listener")),
        0x1 => {
            let a = body.get(..12).ok_or(ProxyError::V2("IPv4 address block too short"))?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            ProxyHeader::Proxy {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                destination: SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
            }
        }
        0x2 => {
            let a = body.get(..36).ok_or(ProxyError::V2("IPv6 address block too short"))?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            ProxyHeader::Proxy {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
            }
        }
        0x3 => ProxyHeader::Unknown, // AF_UNIX: no IP to report
        _ => return Err(ProxyError::V2("unknown address family")),
    };
    Ok(Parse::Complete { header, len: total })
}

/// Encode a v2 PROXY header for a TCP connection (tests and tools; the spec's
/// §2.2 layout without TLVs).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address
/// means a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`, what a dual-stack listener reports) match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = ProxyError;
    fn from_str(s: &str) -> Result<Cidr, ProxyError> {
        let bad = || ProxyError::BadCidr(s.to_owned());
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { network, prefix })
    }
}

/// Whether a connection's first bytes are the start of a PROXY header (v1
/// text or the v2 signature): a peer not trusted to send one tried to name
/// another client. The protocols close such connections.
pub fn looks_like_header(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"PROXY ") || first_bytes.starts_with(&V2_SIGNATURE[..4])
}

/// Whether `ip` is in any of `trusted`.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// Read a PROXY header from `stream` if `peer` is trusted, and return the
/// stream (positioned right after the header) and the client's address.
///
/// - Untrusted peer: nothing is read; the client address is `peer`. A header
///   it sends is then just protocol input (and is rejected by the protocol).
/// - Trusted peer: a header is required (the spec forbids guessing whether
///   one is present, §2); garbage, EOF or no header within `timeout` is an
///   error and the caller closes the connection. LOCAL and UNKNOWN headers
///   leave the client address at `peer`.
pub async fn accept<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    trusted: &[Cidr],
    timeout: Duration,
) -> Result<(S, SocketAddr), ProxyError> {
    if !is_trusted(trusted, peer.ip()) {
        return Ok((stream, peer));
    }
    let header =
        tokio::time::timeout(timeout, read_header(&mut stream)).await.map_err(|_| ProxyError::Timeout(timeout))??;
    let client = match header {
        ProxyHeader::Proxy { source, .. } => source,
        ProxyHeader::Local | ProxyHeader::Unknown => peer,
    };
    Ok((stream, client))
}

/// Read exactly one header, never a byte beyond it: the first 6 bytes tell v1
/// from v2 (both are at least 15 bytes long); v2 then announces its length,
/// v1 is read up to its LF.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, ProxyError> {
    let mut buf = vec![0u8; 6];
    stream.read_exact(&mut buf).await?;
    loop {
        match parse(&buf)? {
            Parse::Complete { header, len } => {
                debug_assert_eq!(len, buf.len());
                return Ok(header);
            }
            Parse::Incomplete => {}
        }
        let want = if buf[0] == b'P' {
            1
        } else if buf.len() < V2_FIXED_LEN {
            V2_FIXED_LEN - buf.len()
        } else {
            V2_FIXED_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]])) - buf.len()
        };
        let start = buf.len();
        buf.resize(start + want, 0);
        stream.read_exact(&mut buf[start..]).await?;
    }
}

/// [`accept`] with its settings bundled, for a listener's accept loop:
/// `let (tcp, client) = acceptor.accept(tcp, peer).await?;`
#[derive(Debug, Clone, Default)]
pub struct Acceptor {
    pub trusted: Vec<Cidr>,
    pub timeout: Duration,
}

impl Acceptor {
    /// From a gateway's config block; a disabled block trusts nobody.
    pub fn new(config: &ProxyProtocol, timeout: Duration) -> Result<Acceptor, ProxyError> {
        Ok(Acceptor { trusted: config.trusted_networks()?, timeout })
    }

    /// See [`accept`].
    pub async fn accept<S: AsyncRead + Unpin>(
        &self,
        stream: S,
        peer: SocketAddr,
    ) -> Result<(S, SocketAddr), ProxyError> {
        accept(stream, peer, &self.trusted, self.timeout).await
    }
}

/// The `proxy_protocol` block of a gateway's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyProtocol {
    /// Off (the default): every peer is the client; no header is read.
    pub enabled: bool,
    /// Load balancers allowed to send a header, as CIDRs (`172.16.0.0/12`,
    /// `10.0.0.7`). A list in TOML; in the environment also a comma-separated
    /// string (`MAILFLEET_POP3_PROXY_PROTOCOL__TRUSTED=10.0.0.0/8,::1`).
    #[serde(deserialize_with = "list_or_csv")]
    pub trusted: Vec<String>,
}

impl ProxyProtocol {
    /// The parsed trusted networks; empty when disabled (so nobody is trusted).
    pub fn trusted_networks(&self) -> Result<Vec<Cidr>, ProxyError> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        self.trusted.iter().map(|s| s.parse()).collect()
    }
}

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Csv(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf).unwrap() {
            Parse::Complete { header, len } => (header, len),
            Parse::Incomplete => panic!("incomplete: {buf:?}"),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 110\r\nUSER x\r\n";
        let (h, len) = complete(line);
        assert_eq!(len, 46);
        assert_eq!(h, ProxyHeader::Proxy { source: addr("192.0.2.10:56324"), destination: addr("198.51.100.1:110") });

        let (h, _) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 993\r\n");
        assert_eq!(
            h,
            ProxyHeader::Proxy { source: addr("[2001:db8::1]:4000"), destination: addr("[2001:db8::2]:993") }
        );
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_the_line() {
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (ProxyHeader::Unknown, 15));
        assert_eq!(complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0, ProxyHeader::Unknown);
    }

    #[test]
    fn v1_incomplete_and_errors() {
        for partial in [&b""[..], b"P", b"PROX", b"PROXY TCP4 1.2.3.4", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"] {
            assert_eq!(parse(partial).unwrap(), Parse::Incomplete, "{partial:?}");
        }
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],  // LF without CR
            b"PROXY TCP4 ::1 ::1 1 2\r\n",             // v6 address in TCP4
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",     // v4 address in TCP6
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", // port out of range
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",    // sign
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",    // leading zero
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",       // missing port
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",   // extra field
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",    // double space
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",     // protocol
            b"PROXX TCP4",                             // not PROXY
            b"USER alice\r\n",                         // a client, no header
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'x');
        assert!(matches!(parse(&long), Err(ProxyError::V1(_))), "no CRLF within 107 bytes");
    }

    #[test]
    fn v2_round_trips_and_skips_tlvs() {
        let (s, d) = (addr("203.0.113.7:40000"), addr("10.0.0.2:110"));
        let mut h = encode_v2(s, d);
        assert_eq!(complete(&h), (ProxyHeader::Proxy { source: s, destination: d }, 28));

        let (s6, d6) = (addr("[2001:db8::7]:1"), addr("[2001:db8::8]:995"));
        assert_eq!(complete(&encode_v2(s6, d6)).0, ProxyHeader::Proxy { source: s6, destination: d6 });

        // A TLV (PP2_TYPE_AUTHORITY, §2.2.7) appended: length grows, result same.
        let tlv = [0x02, 0x00, 0x03, b'a', b'b', b'c'];
        h[15] += tlv.len() as u8;
        h.extend_from_slice(&tlv);
        h.extend_from_slice(b"+OK after");
        assert_eq!(complete(&h), (ProxyHeader::Proxy { source: s, destination: d }, 34));
        // Every strict prefix is incomplete.
        for i in 0..34 {
            assert_eq!(parse(&h[..i]).unwrap(), Parse::Incomplete, "prefix {i}");
        }
    }

    #[test]
    fn v2_local_unspec_unix_and_errors() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(complete(&local), (ProxyHeader::Local, 16));

        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
        assert_eq!(complete(&unspec).0, ProxyHeader::Unknown);

        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
        unix.resize(16 + 216, 0);
        assert_eq!(complete(&unix).0, ProxyHeader::Unknown);

        let bad = |ver_cmd: u8, fam: u8, body: &[u8]| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[ver_cmd, fam]);
            h.extend_from_slice(&(body.len() as u16).to_be_bytes());
            h.extend_from_slice(body);
            parse(&h).is_err()
        };
        assert!(bad(0x11, 0x11, &[0; 12]), "version 1 in a v2 header");
        assert!(bad(0x22, 0x11, &[0; 12]), "command 2");
        assert!(bad(0x21, 0x11, &[0; 8]), "IPv4 block too short");
        assert!(bad(0x21, 0x21, &[0; 12]), "IPv6 block too short");
        assert!(bad(0x21, 0x12, &[0; 12]), "UDP");
        assert!(bad(0x21, 0x41, &[0; 12]), "family 4");
        assert!(parse(b"\r\n\r\n\0\r\nQUIX").is_err(), "bad signature");
    }

    #[test]
    fn cidr_matching() {
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains("172.31.255.255".parse().unwrap()));
        assert!(!c.contains("172.32.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:172.20.0.5".parse().unwrap()), "IPv4-mapped IPv6");
        assert!(!c.contains("::1".parse().unwrap()));
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_accepts_list_or_comma_separated() {
        let from_list: ProxyProtocol =
            serde_json::from_str(r#"{"enabled":true,"trusted":["10.0.0.0/8","::1"]}"#).unwrap();
        let from_csv: ProxyProtocol = serde_json::from_str(r#"{"enabled":true,"trusted":"10.0.0.0/8, ::1"}"#).unwrap();
        assert_eq!(from_list, from_csv);
        assert_eq!(from_list.trusted_networks().unwrap().len(), 2);
        let off = ProxyProtocol { enabled: false, ..from_list };
        assert!(off.trusted_networks().unwrap().is_empty(), "disabled: nobody is trusted");
        let bad = ProxyProtocol { enabled: true, trusted: vec!["10.0.0.0/99".into()] };
        assert!(bad.trusted_networks().is_err());
    }

    fn loopback_trusted() -> Vec<Cidr> {
        vec!["127.0.0.0/8".parse().unwrap()]
    }

    #[tokio::test]
    async fn accept_reads_exactly_the_header() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut sent = encode_v2(addr("198.51.100.9:5555"), addr("127.0.0.1:110"));
        sent.extend_from_slice(b"CAPA\r\n");
        client.write_all(&sent).await.unwrap();
        let (mut rest, who) =
            accept(server, addr("127.0.0.1:40000"), &loopback_trusted(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(who, addr("198.51.100.9:5555"));
        let mut buf = [0u8; 6];
        rest.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"CAPA\r\n");

        // v1 as well, with the client's first line right behind it.
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 110\r\nQUIT\r\n").await.unwrap();
        let (mut rest, who) =
            accept(server, addr("127.0.0.1:40000"), &loopback_trusted(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(who, addr("192.0.2.1:1234"));
        let mut buf = [0u8; 6];
        rest.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn acceptor_from_config() {
        let off = Acceptor::new(&ProxyProtocol::default(), Duration::from_secs(1)).unwrap();
        let (_client, server) = tokio::io::duplex(64);
        let peer = addr("127.0.0.1:1");
        assert_eq!(off.accept(server, peer).await.unwrap().1, peer, "disabled: nothing is read");

        let on = ProxyProtocol { enabled: true, trusted: vec!["127.0.0.1".into()] };
        let acceptor = Acceptor::new(&on, Duration::from_secs(5)).unwrap();
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PROXY TCP6 2001:db8::9 2001:db8::1 7 25\r\n").await.unwrap();
        assert_eq!(acceptor.accept(server, peer).await.unwrap().1, addr("[2001:db8::9]:7"));
    }

    #[tokio::test]
    async fn untrusted_peers_are_not_read_and_not_believed() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(&encode_v2(addr("198.51.100.9:5555"), addr("127.0.0.1:110"))).await.unwrap();
        let peer = addr("192.0.2.50:1000");
        let (mut rest, who) = accept(server, peer, &loopback_trusted(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(who, peer, "a header from an untrusted peer is not honoured");
        let mut sig = [0u8; 12];
        rest.read_exact(&mut sig).await.unwrap();
        assert_eq!(sig, V2_SIGNATURE, "and its bytes are left for the protocol to reject");
    }

    #[tokio::test]
    async fn trusted_peer_garbage_eof_or_silence_is_an_error() {
        let peer = addr("127.0.0.1:40000");
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"USER alice\r\n").await.unwrap();
        assert!(matches!(
            accept(server, peer, &loopback_trusted(), Duration::from_secs(5)).await,
            Err(ProxyError::NotProxy)
        ));

        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 1.2").await.unwrap();
        drop(client);
        assert!(matches!(
            accept(server, peer, &loopback_trusted(), Duration::from_secs(5)).await,
            Err(ProxyError::Io(_))
        ));

        let (_client, server) = tokio::io::duplex(1024);
        let r = accept(server, peer, &loopback_trusted(), Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ProxyError::Timeout(_))));

        // LOCAL (a health check from the balancer): the peer itself.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        client.write_all(&local).await.unwrap();
        assert_eq!(accept(server, peer, &loopback_trusted(), Duration::from_secs(5)).await.unwrap().1, peer);
    }

    proptest! {
        /// Fuzz smoke test (arbitrary bytes, alone, after a valid
        /// beginning of either version or after a whole header), with the property the acceptor
        /// relies on while bytes arrive: once a prefix is a whole header
        /// or an error, more bytes change nothing; a buffer that needs
        /// more has only prefixes that need more; a header is never
        /// longer than the buffer.
        #[test]
        fn parse_fuzz_smoke(
            start in 0u8..5,
            s in any::<SocketAddr>(),
            d in any::<SocketAddr>(),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..320,
        ) {
            let mut buf = match start {
                0 => Vec::new(),
                1 => V2_SIGNATURE.to_vec(),
                2 => b"PROXY ".to_vec(),
                3 => encode_v2(s, d),
                _ => format!("PROXY TCP6 {} {} {} {}\r\n", s.ip().to_canonical(), d.ip(), s.port(), d.port()).into_bytes(),
            };
            buf.extend_from_slice(&tail);
            let cut = cut.min(buf.len());
            let (whole, head) = (parse(&buf), parse(&buf[..cut]));
            if let Ok(Parse::Complete { len, .. }) = &whole {
                prop_assert!(*len <= buf.len());
            }
            match &head {
                Ok(Parse::Complete { .. }) => prop_assert_eq!(whole.as_ref().ok(), head.as_ref().ok()),
                Err(e) => prop_assert!(whole.is_err(), "{:?} at {} bytes, then {:?}", e, cut, whole),
                Ok(Parse::Incomplete) => {}
            }
            if matches!(whole, Ok(Parse::Incomplete)) {
                prop_assert!(matches!(head, Ok(Parse::Incomplete)), "{:?}", head);
            }
        }

        #[test]
        fn v2_encode_parse_round_trip(s in any::<SocketAddr>(), d in any::<SocketAddr>()) {
            let h = encode_v2(s, d);
            let (header, len) = complete(&h);
            prop_assert_eq!(len, h.len());
            let ProxyHeader::Proxy { source, destination } = header else { panic!("not Proxy") };
            // Mixed families are sent as IPv6 (IPv4-mapped).
            prop_assert_eq!(source.ip().to_canonical(), s.ip().to_canonical());
            prop_assert_eq!(destination.port(), d.port());
        }

        #[test]
        fn v1_text_round_trip(s in any::<std::net::SocketAddrV4>(), d in any::<std::net::SocketAddrV4>()) {
            let line = format!("PROXY TCP4 {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port());
            let (header, len) = complete(line.as_bytes());
            prop_assert_eq!(len, line.len());
            prop_assert_eq!(header, ProxyHeader::Proxy { source: s.into(), destination: d.into() });
        }
    }
}
