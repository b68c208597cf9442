//! Which addresses image downloads may connect to. On a shared worker a
//! task's URL must not reach the instance metadata service (169.254.169.254,
//! fd00:ec2::254), the worker's own loopback services or the private network
//! behind it: by default only public addresses are allowed. The check runs on
//! the addresses a name resolves to, at connect time, for every redirect hop,
//! and the connection goes to the checked address only (no second lookup
//! that DNS rebinding could answer differently).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// What kind of address an IP is, as far as downloads care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// 169.254.0.0/16 (the metadata service), fe80::/10.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7 (fd00:ec2::254 included).
    Private,
    /// 100.64.0.0/10, carrier-grade NAT (and some clouds' metadata).
    SharedNat,
    /// 0.0.0.0/8, `::`.
    Unspecified,
    Multicast,
    Broadcast,
    /// Documentation, benchmarking and reserved ranges.
    Reserved,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public",
            AddressClass::Loopback => "a loopback",
            AddressClass::LinkLocal => "a link-local",
            AddressClass::Private => "a private",
            AddressClass::SharedNat => "a shared (carrier-grade NAT)",
            AddressClass::Unspecified => "an unspecified",
            AddressClass::Multicast => "a multicast",
            AddressClass::Broadcast => "a broadcast",
            AddressClass::Reserved => "a reserved",
        }
    }
}

/// The class of `ip`; IPv6 forms that carry an IPv4 address (mapped,
/// compatible, NAT64, 6to4) are classed by that address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => AddressClass::Unspecified,
        (127, _, _) => AddressClass::Loopback,
        (169, 254, _) => AddressClass::LinkLocal,
        (10, _, _) | (192, 168, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedNat,
        (224..=239, _, _) => AddressClass::Multicast,
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (240..=255, _, _) => AddressClass::Reserved,
        // IETF protocol assignments, documentation, benchmarking.
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) | (198, 18..=19, _) => {
            AddressClass::Reserved
        }
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        classify_v4(Ipv4Addr::new(a, b, c, d))
    };
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
        [0, 0, 0, 0, 0, 0xffff | 0, hi, lo] => embedded_v4(hi, lo),
        // NAT64, well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => embedded_v4(hi, lo),
        // NAT64 for local use, 64:ff9b:1::/48.
        [0x64, 0xff9b, 1, ..] => AddressClass::Private,
        // 6to4: 2002:a.b.c.d::/48 reaches a.b.c.d.
        [0x2002, hi, lo, ..] => match embedded_v4(hi, lo) {
            AddressClass::Public => AddressClass::Public,
            _ => AddressClass::Reserved,
        },
        [0xfe80..=0xfebf, ..] => AddressClass::LinkLocal,
        // Unique local (fc00::/7) and the deprecated site-local fec0::/10.
        [0xfc00..=0xfdff, ..] | [0xfec0..=0xfeff, ..] => AddressClass::Private,
        [0xff00..=0xffff, ..] => AddressClass::Multicast,
        // Documentation 2001:db8::/32, discard-only 100::/64.
        [0x2001, 0xdb8, ..] | [0x100, 0, 0, 0, ..] => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

/// Where downloads may connect: public addresses always; others only when
/// allowed (all of them, or listed networks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow_all: bool,
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// Public addresses only: for a worker shared by tenants.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Every address: for `cloudkon run` on one's own machine.
    pub fn allow_all() -> Self {
        Self {
            allow_all: true,
            allowed: Vec::new(),
        }
    }

    /// Public addresses and these networks (an on-premises image server,
    /// or a test's loopback server).
    pub fn allowing(networks: Vec<IpNet>) -> Self {
        Self {
            allow_all: false,
            allowed: networks,
        }
    }

    /// Whether a download may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let class = classify(ip);
        let canonical = ip.to_canonical();
        if self.allow_all
            || class == AddressClass::Public
            || self
                .allowed
                .iter()
                .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            Ok(())
        } else {
            Err(Refused { ip, class })
        }
    }
}

/// A download refused for where it would connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "refused to connect to {ip}: {} address (this worker downloads images from public addresses only)",
    class.describe()
)]
pub struct Refused {
    pub ip: IpAddr,
    pub class: AddressClass,
}

/// Resolves names and keeps only the addresses the policy allows: the
/// connector then connects to those and nothing else.
#[derive(Clone, Debug)]
pub struct CheckedResolver {
    policy: Arc<AddressPolicy>,
}

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            vetted(&policy, resolved).map(Vec::into_iter)
        })
    }
}

/// The allowed addresses of `resolved`; the first refusal when none is.
fn vetted(policy: &AddressPolicy, resolved: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, BoxError> {
    let mut refused = None;
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|addr| match policy.check(addr.ip()) {
            Ok(()) => true,
            Err(e) => {
                refused.get_or_insert(e);
                false
            }
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (false, _) => Ok(allowed),
        (true, Some(refused)) => Err(Box::new(refused)),
        (true, None) => {
            Err(io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address").into())
        }
    }
}

/// The TCP connector of downloads: names through [`CheckedResolver`], and IP
/// literals (which the HTTP connector does not resolve) checked here, before
/// any connection is made.
#[derive(Clone, Debug)]
pub struct CheckedConnector {
    policy: Arc<AddressPolicy>,
    inner: HttpConnector<CheckedResolver>,
}

impl CheckedConnector {
    pub fn new(policy: AddressPolicy) -> Self {
        let policy = Arc::new(policy);
        let mut inner = HttpConnector::new_with_resolver(CheckedResolver {
            policy: policy.clone(),
        });
        inner.enforce_http(false); // https URLs pass through to the TLS layer
        inner.set_nodelay(true);
        Self { policy, inner }
    }
}

impl tower_service::Service<Uri> for CheckedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let literal = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if let Some(ip) = literal
            && let Err(refused) = self.policy.check(ip)
        {
            return Box::pin(async move { Err(Box::new(refused) as BoxError) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The refusal in an error's chain, if a refusal caused it.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(*refused);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        use AddressClass::*;
        let cases = [
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("172.15.255.255", Public),
            ("172.32.0.1", Public),
            ("100.63.255.255", Public),
            ("100.128.0.1", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedNat),
            ("100.100.100.200", SharedNat),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.2.1", Reserved),
            ("198.18.0.1", Reserved),
            ("2606:4700:4700::1111", Public),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fd00:ec2::254", Private),
            ("fc00::1", Private),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("2001:db8::1", Reserved),
            // IPv4 inside IPv6: classed by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:8.8.8.8", Public),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::808:808", Public),
            ("64:ff9b:1::1", Private),
            ("2002:a9fe:a9fe::1", Reserved),
            ("2002:808:808::1", Public),
        ];
        for (ip, want) in cases {
            assert_eq!(classify(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn only_public_addresses_pass_by_default() {
        let policy = AddressPolicy::public_only();
        assert_eq!(policy.check("93.184.216.34".parse().unwrap()), Ok(()));
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "10.0.0.1",
            "0.0.0.0",
        ] {
            let refused = policy.check(ip.parse().unwrap()).unwrap_err();
            assert_eq!(refused.ip, ip.parse::<IpAddr>().unwrap());
        }
        assert_eq!(
            policy
                .check("169.254.169.254".parse().unwrap())
                .unwrap_err()
                .to_string(),
            "refused to connect to 169.254.169.254: a link-local address (this worker downloads images from public addresses only)"
        );
    }

    #[test]
    fn allowed_networks_and_allow_all_open_the_rest() {
        let policy = AddressPolicy::allowing(vec!["127.0.0.2/32".parse().unwrap()]);
        assert_eq!(policy.check("127.0.0.2".parse().unwrap()), Ok(()));
        // The IPv4-mapped form of an allowed address is allowed too.
        assert_eq!(policy.check("::ffff:127.0.0.2".parse().unwrap()), Ok(()));
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_err());
        assert!(policy.check("169.254.169.254".parse().unwrap()).is_err());
        assert_eq!(policy.check("8.8.8.8".parse().unwrap()), Ok(()));
        let all = AddressPolicy::allow_all();
        for ip in ["127.0.0.1", "169.254.169.254", "fd00:ec2::254", "10.1.1.1"] {
            assert_eq!(all.check(ip.parse().unwrap()), Ok(()), "{ip}");
        }
    }

    #[test]
    fn resolved_addresses_are_filtered_and_a_name_with_none_left_is_refused() {
        let policy = AddressPolicy::public_only();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        // A name that resolves to a public and a private address: only the
        // public one is connected to.
        let kept = vetted(&policy, vec![addr("10.0.0.1:0"), addr("8.8.8.8:0")]).unwrap();
        assert_eq!(kept, vec![addr("8.8.8.8:0")]);
        // A rebinding name that resolves to the metadata service only.
        let err = vetted(&policy, vec![addr("169.254.169.254:0")]).unwrap_err();
        assert_eq!(
            refusal(err.as_ref()).map(|r| r.class),
            Some(AddressClass::LinkLocal)
        );
    }
}
