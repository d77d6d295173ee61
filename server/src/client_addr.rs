//! Who the client is when the relay sits behind a load balancer or reverse proxy.
//!
//! Behind an ALB or nginx every connection comes from the proxy's address, so the per-address
//! connection cap would cap the whole deployment and the loopback check of `POST /publish` would
//! see the proxy. With `DATASTREAM_TRUSTED_PROXIES` set, a request whose TCP peer lies in one of
//! those ranges names its client in `X-Forwarded-For`. Each proxy *appends* the address it received
//! the request from, so only the right end of the list is trustworthy: the client is the rightmost
//! entry that is not itself a trusted proxy. Anything to its left was written by the client and
//! is ignored, as is the whole header when the peer is not trusted — spoofing it gains nothing.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use axum::http::HeaderMap;

/// Most `X-Forwarded-For` entries examined, from the right. A real chain has a few proxies; a
/// longer run of trusted entries is a misconfiguration, and a client cannot make the relay walk a
/// huge header.
const MAX_HOPS: usize = 16;

/// Longest entry that can be an address: an IPv6 address in brackets with a port is under 50.
const MAX_ENTRY_LEN: usize = 64;

/// The header proxies add the client's address to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address (`10.1.2.3` is `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The first address of the range (no bits set past the prefix).
    network: IpAddr,
    /// Leading bits that every address in the range shares.
    prefix: u8,
}

/// A range that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before the `/` is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address or CIDR range like 10.0.0.0/8")]
    Address(String),
    /// The prefix length is not a number within the address's length.
    #[error("prefix length {0:?} is not a number from 0 to {1}")]
    Prefix(String, u8),
    /// Bits are set past the prefix: most likely a typo, so it is refused rather than guessed.
    #[error("{given} has bits set past the prefix; the range is {network}")]
    HostBits { given: String, network: String },
}

impl Cidr {
    /// Whether `ip` lies in the range. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a
    /// dual-stack listener reports for an IPv4 peer) count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask_v4(self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask_v6(self.prefix) == u128::from(net),
            _ => false,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| CidrError::Address(addr.to_owned()))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse().ok().filter(|&p| p <= max).ok_or_else(|| CidrError::Prefix(p.to_owned(), max))?,
        };
        let masked = match network {
            IpAddr::V4(ip) => IpAddr::V4((u32::from(ip) & mask_v4(prefix)).into()),
            IpAddr::V6(ip) => IpAddr::V6((u128::from(ip) & mask_v6(prefix)).into()),
        };
        if masked != network {
            return Err(CidrError::HostBits { given: s.to_owned(), network: format!("{masked}/{prefix}") });
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|range| range.contains(ip))
}

/// What `X-Forwarded-For` says about a request's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Not forwarded by a trusted proxy (untrusted peer, or no header): the client is the peer.
    Direct,
    /// Forwarded by a trusted proxy for this client.
    Client(IpAddr),
    /// A trusted proxy sent a header that names no usable client (malformed, or too many hops).
    Unusable,
}

impl Forwarded {
    /// The client's address, falling back to the peer's when the header is unusable.
    pub fn client(self, peer: IpAddr) -> IpAddr {
        match self {
            Forwarded::Client(ip) => ip,
            Forwarded::Direct | Forwarded::Unusable => peer.to_canonical(),
        }
    }

    /// Whether the client is on loopback. A request a trusted proxy forwarded is loopback only if
    /// the client it names is; one whose header is unusable is not, even from a loopback proxy,
    /// so a garbled header can never open what only loopback callers may do.
    pub fn is_loopback(self, peer: IpAddr) -> bool {
        match self {
            Forwarded::Direct => peer.to_canonical().is_loopback(),
            Forwarded::Client(ip) => ip.is_loopback(),
            Forwarded::Unusable => false,
        }
    }
}

/// Reads the client from `headers` for a request from `peer`, trusting `X-Forwarded-For` only when
/// `peer` is in `trusted`: the rightmost entry that is not itself a trusted proxy (or the leftmost,
/// when every entry is trusted).
pub fn forwarded(trusted: &[Cidr], peer: IpAddr, headers: &HeaderMap) -> Forwarded {
    if trusted.is_empty() || !is_trusted(trusted, peer) {
        return Forwarded::Direct;
    }
    // Several header lines form one list, in order.
    let mut values = headers.get_all(X_FORWARDED_FOR).iter().rev().peekable();
    if values.peek().is_none() {
        return Forwarded::Direct;
    }
    let mut hops = 0;
    let mut leftmost = None;
    for value in values {
        let Ok(text) = value.to_str() else { return Forwarded::Unusable };
        for entry in text.rsplit(',') {
            hops += 1;
            if hops > MAX_HOPS {
                return Forwarded::Unusable;
            }
            let Some(ip) = parse_entry(entry) else { return Forwarded::Unusable };
            if !is_trusted(trusted, ip) {
                return Forwarded::Client(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost.map_or(Forwarded::Unusable, Forwarded::Client)
}

/// The client's address for a request from `peer` (the peer's own, unless a trusted proxy names
/// another).
pub fn client_ip(trusted: &[Cidr], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    forwarded(trusted, peer, headers).client(peer)
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:5678`) or in brackets, as some proxies write them.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim_matches([' ', '\t']);
    if entry.is_empty() || entry.len() > MAX_ENTRY_LEN {
        return None;
    }
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ranges(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|r| r.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(r.contains(ip("10.255.1.2")));
        assert!(!r.contains(ip("11.0.0.1")));
        assert!(r.contains(ip("::ffff:10.1.2.3")), "an IPv4-mapped peer matches its IPv4 range");
        assert!(!r.contains(ip("::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = " 2001:db8::/32 ".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
        assert!("::1/128".parse::<Cidr>().unwrap().contains(ip("::1")));
    }

    #[test]
    fn bad_ranges_are_refused_with_the_reason() {
        assert!(matches!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix(_, 32))));
        assert!(matches!("::/129".parse::<Cidr>(), Err(CidrError::Prefix(_, 128))));
        assert!(matches!("10.0.0.0/x".parse::<Cidr>(), Err(CidrError::Prefix(..))));
        assert!(matches!("10.0.0.0/".parse::<Cidr>(), Err(CidrError::Prefix(..))));
        assert!(matches!("example.com/8".parse::<Cidr>(), Err(CidrError::Address(_))));
        assert!(matches!("".parse::<Cidr>(), Err(CidrError::Address(_))));
        let err = "10.1.0.0/8".parse::<Cidr>().unwrap_err();
        assert_eq!(err.to_string(), "10.1.0.0/8 has bits set past the prefix; the range is 10.0.0.0/8");
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_entry() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.5");
        // The client's own claim (left) is ignored; the proxy appended the real address.
        let headers = xff(&["198.51.100.1, 203.0.113.9"]);
        assert_eq!(forwarded(&trusted, peer, &headers), Forwarded::Client(ip("203.0.113.9")));
        // Trusted hops on the right are skipped.
        let headers = xff(&["198.51.100.1, 203.0.113.9, 10.0.0.7, 10.1.1.1"]);
        assert_eq!(client_ip(&trusted, peer, &headers), ip("203.0.113.9"));
        // Several header lines are one list.
        let headers = xff(&["198.51.100.1", "203.0.113.9, 10.0.0.7"]);
        assert_eq!(client_ip(&trusted, peer, &headers), ip("203.0.113.9"));
        // Every entry trusted: the farthest one.
        let headers = xff(&["10.9.9.9, 10.0.0.7"]);
        assert_eq!(client_ip(&trusted, peer, &headers), ip("10.9.9.9"));
        // No header: the peer itself.
        assert_eq!(forwarded(&trusted, peer, &HeaderMap::new()), Forwarded::Direct);
        assert_eq!(client_ip(&trusted, peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn a_header_from_an_untrusted_peer_is_ignored() {
        let headers = xff(&["127.0.0.1"]);
        let peer = ip("203.0.113.9");
        assert_eq!(forwarded(&ranges(&["10.0.0.0/8"]), peer, &headers), Forwarded::Direct);
        assert_eq!(client_ip(&ranges(&["10.0.0.0/8"]), peer, &headers), peer);
        assert!(!forwarded(&ranges(&["10.0.0.0/8"]), peer, &headers).is_loopback(peer), "no spoofed loopback");
        // Nothing trusted: the header means nothing, even from loopback.
        let peer = ip("127.0.0.1");
        assert_eq!(forwarded(&[], peer, &xff(&["203.0.113.9"])), Forwarded::Direct);
    }

    #[test]
    fn a_spoofed_loopback_entry_left_of_the_real_client_does_not_make_it_loopback() {
        let trusted = ranges(&["127.0.0.1/32"]);
        let peer = ip("127.0.0.1");
        let f = forwarded(&trusted, peer, &xff(&["127.0.0.1, 203.0.113.9"]));
        assert_eq!(f, Forwarded::Client(ip("203.0.113.9")));
        assert!(!f.is_loopback(peer));
        // Forwarded for a loopback client, or not forwarded at all: loopback.
        assert!(forwarded(&trusted, peer, &xff(&["127.0.0.1"])).is_loopback(peer));
        assert!(forwarded(&trusted, peer, &HeaderMap::new()).is_loopback(peer));
        assert!(Forwarded::Direct.is_loopback(ip("::ffff:127.0.0.1")), "an IPv4-mapped loopback peer");
    }

    #[test]
    fn ipv6_entries_and_ports() {
        let trusted = ranges(&["10.0.0.0/8", "fd00::/8"]);
        let peer = ip("fd00::1");
        assert_eq!(client_ip(&trusted, peer, &xff(&["2001:db8::1"])), ip("2001:db8::1"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["[2001:db8::2]:4711"])), ip("2001:db8::2"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["[2001:db8::3]"])), ip("2001:db8::3"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["203.0.113.9:4711, fd00::2"])), ip("203.0.113.9"));
        assert_eq!(client_ip(&trusted, peer, &xff(&["::ffff:203.0.113.9"])), ip("203.0.113.9"));
        // A dual-stack listener reports an IPv4 proxy as IPv4-mapped: still trusted.
        assert_eq!(client_ip(&trusted, ip("::ffff:10.0.0.5"), &xff(&["2001:db8::1"])), ip("2001:db8::1"));
    }

    #[test]
    fn malformed_headers_fall_back_to_the_peer_and_are_never_loopback() {
        let trusted = ranges(&["127.0.0.1/32"]);
        let peer = ip("127.0.0.1");
        for bad in ["", "unknown", "203.0.113", "203.0.113.9,", " , ", "not an address, 10.0.0.1x", "[::1"] {
            let f = forwarded(&trusted, peer, &xff(&[bad]));
            assert_eq!(f, Forwarded::Unusable, "{bad:?}");
            assert_eq!(f.client(peer), peer);
            assert!(!f.is_loopback(peer), "{bad:?}");
        }
        // Not visible ASCII.
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap());
        assert_eq!(forwarded(&trusted, peer, &headers), Forwarded::Unusable);
        // Garbage left of the real client is never looked at.
        assert_eq!(forwarded(&trusted, peer, &xff(&["garbage, 203.0.113.9"])), Forwarded::Client(ip("203.0.113.9")));
    }

    #[test]
    fn huge_headers_are_bounded() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        // Many client-written entries on the left cost nothing: the walk stops at the client.
        let long = format!("{}203.0.113.9", "198.51.100.1, ".repeat(10_000));
        assert_eq!(client_ip(&trusted, peer, &xff(&[&long])), ip("203.0.113.9"));
        // More trusted hops than any real chain has: unusable, the peer counts.
        let hops = vec!["10.0.0.2"; MAX_HOPS + 1].join(", ");
        assert_eq!(forwarded(&trusted, peer, &xff(&[&format!("203.0.113.9, {hops}")])), Forwarded::Unusable);
        let hops = vec!["10.0.0.2"; MAX_HOPS - 1].join(", ");
        assert_eq!(client_ip(&trusted, peer, &xff(&[&format!("203.0.113.9, {hops}")])), ip("203.0.113.9"));
        // One huge entry.
        let huge = "1".repeat(100_000);
        assert_eq!(forwarded(&trusted, peer, &xff(&[&huge])), Forwarded::Unusable);
    }
}
