//! The client's address, for login throttling: the socket's peer, unless
//! the peer is a proxy named in `CRM_TRUSTED_PROXIES`; then the right-most
//! `X-Forwarded-For` entry that is not a trusted proxy. Entries left of it
//! were written by the client and are never believed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;

/// An IP network: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                masked(u32::from(net).into(), 32, self.prefix)
                    == masked(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The first `prefix` bits of a `bits`-bit address.
fn masked(address: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        address >> (bits - prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (address, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{raw:?} is not an IP address or network (a.b.c.d/n)"))?;
        let network = network.to_canonical();
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{raw:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Who the client is, given the socket's peer and the request headers.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |a: IpAddr| trusted.iter().any(|c| c.contains(a));
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    // Every X-Forwarded-For line, in order, split at commas.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(address) = parse_entry(entry) else {
            // Garbage from the client side of the chain: the last address
            // a trusted proxy vouched for is the client.
            return client;
        };
        client = address;
        if !is_trusted(address) {
            return address;
        }
    }
    client
}

/// `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]:443` or `192.0.2.1:443`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(a) = entry.parse::<IpAddr>() {
        return Some(a.to_canonical());
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(net.contains(ip("::ffff:10.1.0.1")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("2001:db8::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["10.0.0.0/33", "::/129", "proxy", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let xff = headers(&["198.51.100.1"]);
        // Untrusted peer: its header is ignored.
        assert_eq!(
            client_address(ip("203.0.113.5"), &xff, &trusted),
            ip("203.0.113.5")
        );
        // No proxies configured: the same.
        assert_eq!(client_address(ip("10.0.0.2"), &xff, &[]), ip("10.0.0.2"));
        // Trusted peer: the forwarded client.
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &trusted),
            ip("198.51.100.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        let trusted = cidrs(&["10.0.0.0/8", "2001:db8:a::/48"]);
        // The client forged the first entry; two proxies appended theirs.
        let xff = headers(&["1.2.3.4, 198.51.100.7", "10.0.0.9"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &trusted),
            ip("198.51.100.7")
        );
        let xff = headers(&["[2001:db8:b::1]:5000, 2001:db8:a::2"]);
        assert_eq!(
            client_address(ip("2001:db8:a::1"), &xff, &trusted),
            ip("2001:db8:b::1")
        );
        // All trusted: the left-most.
        let xff = headers(&["10.9.9.9, 10.0.0.9"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &trusted),
            ip("10.9.9.9")
        );
        // Garbage after a trusted hop: the last vouched-for address.
        let xff = headers(&["198.51.100.7, not-an-ip, 10.0.0.9"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &xff, &trusted),
            ip("10.0.0.9")
        );
    }
}
