//! Who the client is: the TCP peer, or an `X-Forwarded-For` entry when `trustedProxies`
//! says which hops may name it.

use std::net::IpAddr;

use scopegate_core::cidr::canonical;
pub use scopegate_core::cidr::{Cidr, CidrError};
use scopegate_core::config::TrustedProxiesConfig;

/// `trustedProxies`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedProxies {
    /// This many proxies in front, each appending to `X-Forwarded-For`.
    Hops(u8),
    /// Proxies inside these blocks.
    Cidrs(Vec<Cidr>),
}

impl TrustedProxies {
    /// Parses the config form.
    pub fn from_config(config: &TrustedProxiesConfig) -> Result<Self, CidrError> {
        Ok(match config {
            TrustedProxiesConfig::Hops(n) => TrustedProxies::Hops(*n),
            TrustedProxiesConfig::Cidrs(list) => TrustedProxies::Cidrs(
                list.iter()
                    .map(|c| Cidr::parse(c))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

impl TrustedProxies {
    /// Whether the TCP peer is a proxy that may name the client and the original scheme and
    /// host: with `Hops(n)` for n ≥ 1 every peer is (the policy says proxies stand in front),
    /// with CIDRs only a peer inside one of them.
    pub fn trusts_peer(&self, peer: IpAddr) -> bool {
        match self {
            TrustedProxies::Hops(n) => *n > 0,
            TrustedProxies::Cidrs(blocks) => {
                let peer = canonical(peer);
                blocks.iter().any(|b| b.contains(peer))
            }
        }
    }
}

/// The client address. `forwarded_for` is every `X-Forwarded-For` value in order. Without
/// trusted proxies the peer is the client. With `Hops(n)` the client is the n-th entry from
/// the right (the peer when the list is shorter); with CIDRs, entries are skipped from the
/// right, starting at the peer, while they are trusted proxies.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: Option<&TrustedProxies>,
) -> IpAddr {
    let peer = canonical(peer);
    let Some(trusted) = trusted else {
        return peer;
    };
    let entries: Vec<&str> = forwarded_for
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let parse = |e: &str| e.parse::<IpAddr>().ok().map(canonical);
    match trusted {
        TrustedProxies::Hops(0) => peer,
        TrustedProxies::Hops(n) => {
            let n = usize::from(*n);
            if entries.len() < n {
                return peer;
            }
            parse(entries[entries.len() - n]).unwrap_or(peer)
        }
        TrustedProxies::Cidrs(blocks) => {
            let trusted = |ip: IpAddr| blocks.iter().any(|b| b.contains(ip));
            if !trusted(peer) {
                return peer;
            }
            let mut client = peer;
            for entry in entries.iter().rev() {
                let Some(ip) = parse(entry) else {
                    return client;
                };
                client = ip;
                if !trusted(ip) {
                    return ip;
                }
            }
            client
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_is_the_client_without_trusted_proxies() {
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["1.2.3.4"].into_iter(), None),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn hops_count_from_the_right() {
        let hops = TrustedProxies::Hops(1);
        let xff = ["6.6.6.6, 1.2.3.4"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), Some(&hops)),
            ip("1.2.3.4")
        );
        let hops2 = TrustedProxies::Hops(2);
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), Some(&hops2)),
            ip("6.6.6.6")
        );
        let hops3 = TrustedProxies::Hops(3);
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), Some(&hops3)),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn cidrs_skip_trusted_entries() {
        let cidrs = TrustedProxies::from_config(&TrustedProxiesConfig::Cidrs(vec![
            "10.0.0.0/8".into(),
            "fd00::/8".into(),
        ]))
        .unwrap();
        let xff = ["6.6.6.6", "1.2.3.4, 10.1.1.1"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), xff.into_iter(), Some(&cidrs)),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(ip("8.8.8.8"), xff.into_iter(), Some(&cidrs)),
            ip("8.8.8.8")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), ["garbage"].into_iter(), Some(&cidrs)),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn only_listed_peers_are_trusted_proxies() {
        let cidrs =
            TrustedProxies::from_config(&TrustedProxiesConfig::Cidrs(vec!["10.0.0.0/8".into()]))
                .unwrap();
        assert!(cidrs.trusts_peer(ip("10.1.2.3")));
        assert!(cidrs.trusts_peer(ip("::ffff:10.1.2.3")));
        assert!(!cidrs.trusts_peer(ip("11.0.0.1")));
        assert!(TrustedProxies::Hops(1).trusts_peer(ip("8.8.8.8")));
        assert!(!TrustedProxies::Hops(0).trusts_peer(ip("8.8.8.8")));
        // An untrusted peer's X-Forwarded-For is never read.
        assert_eq!(
            client_ip(
                ip("11.0.0.1"),
                ["10.0.0.1, 1.2.3.4"].into_iter(),
                Some(&cidrs)
            ),
            ip("11.0.0.1")
        );
    }

    #[test]
    fn cidr_parsing() {
        assert!(
            Cidr::parse("10.0.0.0/8")
                .unwrap()
                .contains(ip("10.255.0.1"))
        );
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.1.1.1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("1.2.3.4").unwrap().contains(ip("1.2.3.4")));
        for bad in ["10.0.0.0/33", "x/8", "::/129", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
