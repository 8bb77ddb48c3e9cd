//! What a webhook URL may point at: `https` (or `http` with
//! `CRM_WEBHOOK_ALLOW_PRIVATE`), and only public addresses unless that
//! setting allows private ones. Checked when an endpoint is created or
//! changed, and again at every delivery by the client's resolver
//! ([`GuardedResolver`]), which refuses a name that resolves to a private
//! address, so a name that changes its address later (DNS rebinding)
//! cannot reach the inside either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Why a URL was refused; the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Parses and checks the form of a URL (scheme, host, no credentials), and
/// an address written in it.
pub fn check_form(raw: &str, allow_private: bool) -> Result<Url, Refused> {
    let url = Url::parse(raw.trim())
        .map_err(|_| Refused("must be an absolute URL, e.g. https://example.com/hooks".into()))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return Err(Refused(
                "must use https (http only with CRM_WEBHOOK_ALLOW_PRIVATE=true)".into(),
            ))
        }
        _ => return Err(Refused("must be an https URL".into())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused("must not carry a user name or password".into()));
    }
    if raw.len() > 2048 {
        return Err(Refused("must be at most 2048 characters".into()));
    }
    match url.host() {
        None => return Err(Refused("must name a host".into())),
        Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), allow_private)?,
        Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), allow_private)?,
        Some(url::Host::Domain(name)) => {
            if !allow_private && is_internal_name(name) {
                return Err(Refused(format!(
                    "{name} is a local name (allowed only with CRM_WEBHOOK_ALLOW_PRIVATE=true)"
                )));
            }
        }
    }
    Ok(url)
}

/// [`check_form`], then resolves the host and checks every address.
pub async fn check(raw: &str, allow_private: bool) -> Result<Url, Refused> {
    let url = check_form(raw, allow_private)?;
    if allow_private {
        return Ok(url);
    }
    if let Some(url::Host::Domain(name)) = url.host() {
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| Refused(format!("{name} does not resolve")))?
            .collect();
        if addrs.is_empty() {
            return Err(Refused(format!("{name} does not resolve")));
        }
        for a in addrs {
            check_ip(a.ip(), false)?;
        }
    }
    Ok(url)
}

fn is_internal_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with(".local")
        || name.ends_with(".internal")
        || name == "metadata"
}

/// Refuses an address that is not public, unless allowed.
pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), Refused> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(Refused(format!(
            "{ip} is not a public address (allowed only with CRM_WEBHOOK_ALLOW_PRIVATE=true)"
        )))
    }
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local (with the cloud metadata address), CGNAT, unique-local,
/// multicast, documentation or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // CGNAT 100.64.0.0/10
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments 192.0.0.0/24
        || (a == 192 && b == 0 && c == 0)
        // benchmarking 198.18.0.0/15
        || (a == 198 && (b == 18 || b == 19))
        // reserved 240.0.0.0/4
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 64:ff9b::/96 carries an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // unique local fc00::/7 (with AWS's metadata fd00:ec2::254)
        || (s[0] & 0xfe00) == 0xfc00
        // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfe80
        // site-local fec0::/10 (deprecated)
        || (s[0] & 0xffc0) == 0xfec0
        // IPv4-compatible ::/96
        || s[..6] == [0, 0, 0, 0, 0, 0]
        // documentation 2001:db8::/32
        || (s[0] == 0x2001 && s[1] == 0x0db8))
}

/// The HTTP client's resolver: the system's, without the addresses
/// [`is_public`] refuses (unless private ones are allowed). A name with no
/// address left fails to connect.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if found.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(Refused(format!("{host} resolves to no public address")));
                return Err(refused);
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

impl GuardedResolver {
    pub fn shared(allow_private: bool) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { allow_private })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn inside_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "1.1.1.1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_inside_addresses() {
        let name = || -> Name { "localhost".parse().unwrap() };
        let refused = GuardedResolver {
            allow_private: false,
        }
        .resolve(name())
        .await;
        assert!(refused.is_err());
        let allowed: Vec<SocketAddr> = GuardedResolver {
            allow_private: true,
        }
        .resolve(name())
        .await
        .unwrap()
        .collect();
        assert!(allowed.iter().any(|a| a.ip().is_loopback()), "{allowed:?}");
    }

    #[test]
    fn urls_are_checked_for_scheme_host_and_literal_addresses() {
        assert!(check_form("https://example.com/hooks", false).is_ok());
        assert!(check_form("http://example.com/hooks", false).is_err());
        assert!(check_form("http://example.com/hooks", true).is_ok());
        assert!(check_form("ftp://example.com/", true).is_err());
        assert!(check_form("https://127.0.0.1/", false).is_err());
        assert!(check_form("https://[::1]/", false).is_err());
        assert!(check_form("https://localhost/", false).is_err());
        assert!(check_form("https://metadata.google.internal/", false).is_err());
        assert!(check_form("https://user:pw@example.com/", false).is_err());
        assert!(check_form("https://127.0.0.1/", true).is_ok());
        assert!(check_form("not a url", true).is_err());
    }
}
