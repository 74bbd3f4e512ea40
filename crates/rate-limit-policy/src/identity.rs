//! Who a request counts against: the first configured identity source that has a value.
//!
//! Sources are headers set by the authentication filters (`x-api-key-id`, `x-user-id`,
//! `x-tenant-id`: trustworthy only because those filters remove any copy the client
//! sent), any other header, several headers together, or the downstream address with its
//! host bits masked off (so one IPv6 /64 counts as one client). This module only turns a
//! request into an identity string; it does not decide whether a header can be trusted.

use crate::RequestView;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use wasmgate_config::HeaderName;

/// One place to look for the client's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A header's value, e.g. `x-api-key-id` set by the API-key filter.
    Header(HeaderName),
    /// Several headers, all required, together (e.g. tenant and user).
    Headers(Vec<HeaderName>),
    /// The downstream address, keeping `ipv4_prefix` / `ipv6_prefix` leading bits.
    Address { ipv4_prefix: u8, ipv6_prefix: u8 },
}

/// The identity shared by requests that no source identified.
pub const ANONYMOUS: &str = "anonymous";

impl IdentitySource {
    /// The identity this source gives the request, tagged with where it came from so that
    /// the same text from two sources never names the same client.
    pub fn resolve(&self, view: &dyn RequestView) -> Option<String> {
        match self {
            IdentitySource::Header(name) => header(view, name).map(|v| format!("{name}={v}")),
            IdentitySource::Headers(names) => {
                let parts = names
                    .iter()
                    .map(|name| header(view, name).map(|v| format!("{name}={v}")))
                    .collect::<Option<Vec<_>>>()?;
                // U+001F cannot appear in a header value, so parts cannot run together.
                Some(parts.join("\u{1f}"))
            }
            IdentitySource::Address {
                ipv4_prefix,
                ipv6_prefix,
            } => {
                let ip = parse_ip(&view.source_address()?)?;
                Some(match ip {
                    IpAddr::V4(v4) => format!("ip={}/{ipv4_prefix}", mask_v4(v4, *ipv4_prefix)),
                    IpAddr::V6(v6) => format!("ip={}/{ipv6_prefix}", mask_v6(v6, *ipv6_prefix)),
                })
            }
        }
    }
}

impl IdentitySource {
    /// The same identity as descriptor entries for a rate-limit service (key, value):
    /// each header under its own name, an address as `remote_address` (the key Envoy's own
    /// `remote_address` action uses), with its prefix length when masked.
    pub(crate) fn entries(&self, view: &dyn RequestView) -> Option<Vec<(String, String)>> {
        match self {
            IdentitySource::Header(name) => {
                header(view, name).map(|v| vec![(name.as_str().to_owned(), v)])
            }
            IdentitySource::Headers(names) => names
                .iter()
                .map(|name| header(view, name).map(|v| (name.as_str().to_owned(), v)))
                .collect(),
            IdentitySource::Address {
                ipv4_prefix,
                ipv6_prefix,
            } => {
                let ip = parse_ip(&view.source_address()?)?;
                let value = match ip {
                    IpAddr::V4(v4) if *ipv4_prefix == 32 => v4.to_string(),
                    IpAddr::V4(v4) => format!("{}/{ipv4_prefix}", mask_v4(v4, *ipv4_prefix)),
                    IpAddr::V6(v6) if *ipv6_prefix == 128 => v6.to_string(),
                    IpAddr::V6(v6) => format!("{}/{ipv6_prefix}", mask_v6(v6, *ipv6_prefix)),
                };
                Some(vec![("remote_address".to_owned(), value)])
            }
        }
    }
}

/// The identity of a request: the first source with a value, else [`ANONYMOUS`].
pub fn identify(sources: &[IdentitySource], view: &dyn RequestView) -> String {
    sources
        .iter()
        .find_map(|source| source.resolve(view))
        .unwrap_or_else(|| ANONYMOUS.to_owned())
}

fn header(view: &dyn RequestView, name: &HeaderName) -> Option<String> {
    view.header(name.as_str()).filter(|v| !v.is_empty())
}

/// `10.0.0.1:5555`, `[2001:db8::1]:443`, or a bare address. IPv4-mapped IPv6 addresses
/// (`::ffff:10.0.0.1`) count as the IPv4 address they carry.
fn parse_ip(address: &str) -> Option<IpAddr> {
    let ip = address
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| address.parse::<IpAddr>())
        .ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0);
    Ipv6Addr::from(bits & mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::FakeRequest;

    fn name(n: &str) -> HeaderName {
        HeaderName::new(n).unwrap()
    }

    fn address(v4: u8, v6: u8) -> IdentitySource {
        IdentitySource::Address {
            ipv4_prefix: v4,
            ipv6_prefix: v6,
        }
    }

    #[test]
    fn first_source_with_a_value_wins() {
        let sources = [
            IdentitySource::Header(name("x-api-key-id")),
            IdentitySource::Header(name("x-user-id")),
            address(32, 128),
        ];
        let view = FakeRequest::default()
            .with_header("x-user-id", "alice")
            .with_address("10.1.2.3:4444");
        assert_eq!(identify(&sources, &view), "x-user-id=alice");
        let view = view.with_header("x-api-key-id", "key-7");
        assert_eq!(identify(&sources, &view), "x-api-key-id=key-7");
        let anonymous_user = FakeRequest::default().with_address("10.1.2.3:4444");
        assert_eq!(identify(&sources, &anonymous_user), "ip=10.1.2.3/32");
        // An empty header is no identity.
        let empty = FakeRequest::default().with_header("x-user-id", "");
        assert_eq!(identify(&sources, &empty), ANONYMOUS);
    }

    #[test]
    fn the_same_value_in_two_headers_is_two_clients() {
        let a = IdentitySource::Header(name("x-user-id"));
        let b = IdentitySource::Header(name("x-tenant-id"));
        let view = FakeRequest::default()
            .with_header("x-user-id", "acme")
            .with_header("x-tenant-id", "acme");
        assert_ne!(a.resolve(&view), b.resolve(&view));
    }

    #[test]
    fn compound_sources_need_every_header() {
        let source = IdentitySource::Headers(vec![name("x-tenant-id"), name("x-user-id")]);
        let only_user = FakeRequest::default().with_header("x-user-id", "alice");
        assert_eq!(source.resolve(&only_user), None);
        let both = only_user.with_header("x-tenant-id", "acme");
        assert_eq!(
            source.resolve(&both).as_deref(),
            Some("x-tenant-id=acme\u{1f}x-user-id=alice")
        );
    }

    #[test]
    fn addresses_are_masked_to_their_prefix() {
        let view = |a: &str| FakeRequest::default().with_address(a);
        let cases = [
            (address(24, 64), "192.168.7.9:5000", "ip=192.168.7.0/24"),
            (address(32, 64), "192.168.7.9:5000", "ip=192.168.7.9/32"),
            (address(0, 64), "192.168.7.9:5000", "ip=0.0.0.0/0"),
            (
                address(24, 64),
                "[2001:db8:1:2:3:4:5:6]:443",
                "ip=2001:db8:1:2::/64",
            ),
            (
                address(24, 128),
                "[2001:db8:1:2:3:4:5:6]:443",
                "ip=2001:db8:1:2:3:4:5:6/128",
            ),
            (address(24, 48), "2001:db8:1:2::9", "ip=2001:db8:1::/48"),
            (address(16, 64), "[::ffff:10.9.8.7]:1", "ip=10.9.0.0/16"),
        ];
        for (source, addr, expected) in cases {
            assert_eq!(
                source.resolve(&view(addr)).as_deref(),
                Some(expected),
                "{addr}"
            );
        }
    }

    #[test]
    fn descriptor_entries_name_where_the_identity_came_from() {
        let view = FakeRequest::default()
            .with_header("x-tenant-id", "acme")
            .with_header("x-user-id", "alice")
            .with_address("10.1.2.3:4444");
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            IdentitySource::Header(name("x-tenant-id")).entries(&view),
            Some(vec![pair("x-tenant-id", "acme")])
        );
        assert_eq!(
            IdentitySource::Headers(vec![name("x-tenant-id"), name("x-user-id")]).entries(&view),
            Some(vec![
                pair("x-tenant-id", "acme"),
                pair("x-user-id", "alice")
            ])
        );
        assert_eq!(
            address(32, 64).entries(&view),
            Some(vec![pair("remote_address", "10.1.2.3")])
        );
        assert_eq!(
            address(24, 64).entries(&view),
            Some(vec![pair("remote_address", "10.1.2.0/24")])
        );
        assert_eq!(
            IdentitySource::Header(name("x-api-key-id")).entries(&view),
            None
        );
    }

    #[test]
    fn unusable_addresses_fall_through() {
        let sources = [address(32, 128)];
        for addr in [
            "",
            "envoy://internal_client_address/",
            "/tmp/socket",
            "10.0.0",
        ] {
            let view = FakeRequest::default().with_address(addr);
            assert_eq!(identify(&sources, &view), ANONYMOUS, "{addr}");
        }
    }
}
