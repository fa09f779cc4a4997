//! Which address a request comes from, for throttling: the caller's own address (the gRPC
//! peer, or Envoy's `source.address` for ext_authz) unless that caller is a configured
//! trusted proxy, in which case the right-most `x-forwarded-for` entry that is not a trusted
//! proxy (the way nginx's `real_ip` module reads it). Entries left of that one were written
//! by the client and are never believed.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::headers::Headers;

/// The configured `credentials.trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From validated config (entries that do not parse were refused by validation).
    pub fn new(networks: &[String]) -> Self {
        Self(
            networks
                .iter()
                .filter_map(|n| crate::vocabulary::parse_network(n))
                .collect(),
        )
    }

    /// Whether the caller at `peer` is a configured trusted proxy (no peer: not trusted).
    pub fn trusts_peer(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|peer| self.trusts(peer))
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client address of a request whose caller is `peer`.
    pub fn client(&self, peer: Option<IpAddr>, headers: Headers<'_>) -> Option<IpAddr> {
        let mut client = peer?.to_canonical();
        if !self.trusts(client) {
            return Some(client);
        }
        let forwarded = headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|(_, value)| value);
        let mut entries: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
        while let Some(entry) = entries.pop() {
            let Some(address) = parse_forwarded_entry(entry) else {
                // Not an address: nothing further left can be believed either.
                return Some(client);
            };
            client = address.to_canonical();
            if !self.trusts(client) {
                return Some(client);
            }
        }
        Some(client)
    }
}

/// An `x-forwarded-for` entry: an address, optionally `addr:port` or `[v6]:port`.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        let proxies = TrustedProxies::new(&["10.0.0.0/8".to_owned(), "192.0.2.1".to_owned()]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let cases = [
            (
                "untrusted peer: its own address",
                &none,
                ip("10.1.1.1"),
                "203.0.113.9",
                ip("10.1.1.1"),
            ),
            (
                "spoofed entry from an untrusted peer",
                &proxies,
                ip("198.51.100.7"),
                "1.2.3.4",
                ip("198.51.100.7"),
            ),
            (
                "trusted proxy: right-most entry",
                &proxies,
                ip("10.1.1.1"),
                "1.2.3.4, 203.0.113.9",
                ip("203.0.113.9"),
            ),
            (
                "trusted hops skipped",
                &proxies,
                ip("10.1.1.1"),
                "1.2.3.4, 203.0.113.9, 10.2.2.2, 192.0.2.1",
                ip("203.0.113.9"),
            ),
            (
                "all trusted: left-most",
                &proxies,
                ip("10.1.1.1"),
                "10.3.3.3, 10.4.4.4",
                ip("10.3.3.3"),
            ),
            (
                "garbage stops the walk",
                &proxies,
                ip("10.1.1.1"),
                "1.2.3.4, not-an-ip",
                ip("10.1.1.1"),
            ),
            (
                "port and v6",
                &proxies,
                ip("10.1.1.1"),
                "[2001:db8::1]:443",
                ip("2001:db8::1"),
            ),
            (
                "v4-mapped v6 peer",
                &proxies,
                ip("::ffff:10.1.1.1"),
                "203.0.113.9",
                ip("203.0.113.9"),
            ),
            ("no peer", &proxies, None, "203.0.113.9", None),
        ];
        for (name, trusted, peer, xff, expected) in cases {
            let pairs = [("x-forwarded-for", xff)];
            assert_eq!(
                trusted.client(peer, Headers::new(&pairs)),
                expected,
                "{name}"
            );
        }
    }
}
