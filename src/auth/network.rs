//! Client networks: CIDR lists, and the client address of a request, taken from
//! `X-Forwarded-For` only when the connection comes from a trusted proxy.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// A list of networks, such as `auth.allowed_networks`.
#[derive(Debug, Clone, Default)]
pub struct Networks(Vec<IpNet>);

impl Networks {
    /// Parses CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`) and single addresses (`192.0.2.7`);
    /// the error names the entry at fault by its position from 1.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut networks = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let network =
                parse_network(entry).map_err(|reason| format!("entry {}: {reason}", index + 1))?;
            networks.push(network);
        }
        Ok(Self(networks))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns whether `address` lies in one of the networks. An IPv4 address written as an
    /// IPv6 one (`::ffff:192.0.2.7`, as a dual-stack listener reports it) counts as IPv4.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|network| network.contains(&address))
    }
}

fn parse_network(entry: &str) -> Result<IpNet, String> {
    if entry.is_empty() {
        return Err("is empty".to_owned());
    }
    let network = if entry.contains('/') {
        entry.parse::<IpNet>().map_err(|_| {
            format!("`{entry}` is not a CIDR block such as 10.0.0.0/8 or 2001:db8::/32")
        })?
    } else {
        let address = entry.parse::<IpAddr>().map_err(|_| {
            format!("`{entry}` is neither an IP address nor a CIDR block such as 10.0.0.0/8")
        })?;
        IpNet::from(address)
    };
    // `10.1.2.3/8` means 10.0.0.0/8; bits after the prefix play no part in matching.
    Ok(ipv4_form(network).trunc())
}

/// Returns an IPv4 network written in IPv4-mapped IPv6 form (`::ffff:192.0.2.0/120`) as the
/// IPv4 network (`192.0.2.0/24`): client addresses are compared in IPv4 form, so the mapped
/// form would never match.
fn ipv4_form(network: IpNet) -> IpNet {
    if let IpNet::V6(v6) = network
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4);
    }
    network
}

/// Returns the address of the client that sent a request arriving from `peer`. When `peer` is
/// a trusted proxy, `forwarded_for` (the `X-Forwarded-For` values in order) is read from the
/// right, skipping addresses of trusted proxies, and the first other address is the client. Each
/// proxy appends the address it received from, so only entries that a trusted proxy wrote
/// can be believed, and anything to their left may be forged by the client.
///
/// An entry that is not an IP address ends the walk at the last trusted proxy, and a list of
/// trusted proxies only ends at its left-most entry.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted_proxies: &Networks,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted_proxies.contains(peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Ok(address) = entry.parse::<IpAddr>() else {
            return client;
        };
        client = address.to_canonical();
        if !trusted_proxies.contains(client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn networks(entries: &[&str]) -> Networks {
        let entries: Vec<String> = entries.iter().map(|entry| (*entry).to_owned()).collect();
        Networks::parse(&entries).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_blocks_and_addresses_parse() {
        let list = networks(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.1.2.3/16"]);
        assert!(list.contains(ip("10.200.0.1")));
        assert!(list.contains(ip("192.0.2.7")));
        assert!(!list.contains(ip("192.0.2.8")));
        assert!(list.contains(ip("2001:db8:1::5")));
        assert!(!list.contains(ip("2001:db9::1")));
        assert!(list.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped IPv6");
        assert_eq!(list.len(), 4);
    }

    #[test]
    fn ipv4_mapped_entries_match_ipv4_clients() {
        let list = networks(&["::ffff:127.0.0.2", "::ffff:192.0.2.0/120"]);
        assert!(list.contains(ip("127.0.0.2")));
        assert!(list.contains(ip("192.0.2.77")));
        assert!(list.contains(ip("::ffff:192.0.2.77")));
        assert!(!list.contains(ip("192.0.3.1")));
    }

    #[test]
    fn bad_entries_are_named() {
        for (entry, expected) in [
            ("10.0.0.0/33", "entry 1: `10.0.0.0/33` is not a CIDR block"),
            ("10.0.0/8", "entry 1: `10.0.0/8` is not a CIDR block"),
            ("example.com", "entry 1: `example.com` is neither"),
            ("", "entry 1: is empty"),
        ] {
            let error = Networks::parse(&[entry.to_owned()]).unwrap_err();
            assert!(error.starts_with(expected), "{entry}: {error}");
        }
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let trusted = networks(&["127.0.0.1"]);
        let client = client_address(ip("203.0.113.9"), ["198.51.100.1"], &trusted);
        assert_eq!(client, ip("203.0.113.9"));
        let client = client_address(ip("203.0.113.9"), ["198.51.100.1"], &Networks::default());
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn rightmost_untrusted_entry_is_the_client() {
        let trusted = networks(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        let cases: [(&[&str], &str); 8] = [
            (&["198.51.100.1"], "198.51.100.1"),
            (&["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
            (&["6.6.6.6, 198.51.100.1, 10.0.0.2"], "198.51.100.1"),
            (&["6.6.6.6", "198.51.100.1, 10.0.0.2"], "198.51.100.1"),
            (&["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            (&[], "127.0.0.1"),
            (&["6.6.6.6, garbage, 10.0.0.2"], "10.0.0.2"),
            (&["2001:db8::1 , ::ffff:10.0.0.2"], "2001:db8::1"),
        ];
        for (header, expected) in cases {
            let client = client_address(peer, header.iter().copied(), &trusted);
            assert_eq!(client, ip(expected), "{header:?}");
        }
    }

    proptest! {
        #[test]
        fn forged_entries_left_of_the_client_are_ignored(
            forged in prop::collection::vec(any::<Ipv4Addr>(), 0..5),
            client in any::<Ipv4Addr>(),
            hops in 0usize..3,
        ) {
            let trusted = networks(&["127.0.0.0/8"]);
            prop_assume!(!client.is_loopback());
            let mut entries: Vec<String> = forged.iter().map(ToString::to_string).collect();
            entries.push(client.to_string());
            entries.extend((0..hops).map(|hop| format!("127.0.0.{}", hop + 2)));
            let header = entries.join(", ");
            let found = client_address(ip("127.0.0.1"), [header.as_str()], &trusted);
            prop_assert_eq!(found, IpAddr::V4(client));
        }

        #[test]
        fn untrusted_peers_cannot_forge(
            peer in any::<Ipv6Addr>(),
            forged in any::<Ipv4Addr>(),
        ) {
            let trusted = networks(&["127.0.0.1"]);
            let peer = IpAddr::V6(peer);
            prop_assume!(!trusted.contains(peer));
            let forged = forged.to_string();
            let found = client_address(peer, [forged.as_str()], &trusted);
            prop_assert_eq!(found, peer.to_canonical());
        }
    }
}
