//! Where outbound HTTP may go: the egress policy and the one HTTP client every
//! adapter sends through.
//!
//! Channel configs are written by tenants, so a webhook `url` or a provider
//! `api_base_url` is untrusted: left alone it reaches this node's own admin API,
//! the cloud metadata service or anything else on the private network. The policy
//! refuses every address that is not globally routable (loopback, private,
//! link-local, unique-local, shared, multicast, unspecified, documentation and
//! reserved ranges, and the IPv4-mapped, NAT64 and 6to4 forms of them), unless the
//! operator opens a network with `CONVERGER_EGRESS_ALLOW`.
//!
//! It is enforced where it cannot be raced:
//! - host names are resolved by [`PolicyResolver`], which hands the connector only
//!   the addresses it checked, so a name cannot resolve to a public address for the
//!   check and to a private one for the connection (DNS rebinding);
//! - literal addresses never reach a resolver, so [`EgressClient::request`] checks
//!   them before anything is sent, and the redirect policy checks every hop again;
//! - environment proxies are not used: a proxy would connect on our behalf to
//!   addresses nobody checked.
//!
//! Pure apart from the resolver; no knowledge of channels, the store or HTTP
//! serving.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// User agent of every outbound request. The admin guard refuses requests whose user
/// agent starts with [`USER_AGENT_PRODUCT`], so a delivery that the allow-list lets
/// reach a node never acts on its admin panel.
pub const USER_AGENT: &str = concat!("Converger/", env!("CARGO_PKG_VERSION"));
/// The product part of [`USER_AGENT`], whatever the version.
pub const USER_AGENT_PRODUCT: &str = "Converger/";

/// Redirect hops followed at most.
const MAX_REDIRECTS: usize = 5;

/// Networks that are not globally reachable (IANA special-purpose registries).
/// IPv4-mapped, NAT64 and 6to4 addresses are judged by the IPv4 address they carry.
const NON_GLOBAL: &[&str] = &[
    // IPv4
    "0.0.0.0/8",       // "this network", includes the unspecified address
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // shared address space (carrier-grade NAT)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, cloud metadata services
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation
    "192.88.99.0/24",  // deprecated 6to4 relay anycast
    "192.168.0.0/16",  // private
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation
    "203.0.113.0/24",  // documentation
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, includes broadcast
    // IPv6
    "::/96",          // unspecified, loopback and the deprecated IPv4-compatible form
    "64:ff9b:1::/48", // local-use NAT64
    "100::/64",       // discard
    "2001::/23",      // IETF protocol assignments (Teredo, ORCHID, ...)
    "2001:db8::/32",  // documentation
    "3fff::/20",      // documentation
    "fc00::/7",       // unique-local
    "fe80::/10",      // link-local
    "fec0::/10",      // deprecated site-local
    "ff00::/8",       // multicast
];

static NON_GLOBAL_NETS: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    NON_GLOBAL
        .iter()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| unreachable!("{s} is a valid network"))
        })
        .collect()
});

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRefused {
    /// The host as written, or the address it resolved to.
    pub target: String,
    pub reason: &'static str,
}

impl fmt::Display for EgressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "egress to {} refused: {}", self.target, self.reason)
    }
}

impl StdError for EgressRefused {}

/// The address an IPv6 form carries for an IPv4 one (mapped, NAT64, 6to4), if any.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let o = v6.octets();
    match s {
        // 64:ff9b::/96, the well-known NAT64 prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(Ipv4Addr::new(o[12], o[13], o[14], o[15])),
        // 2002::/16, 6to4: the IPv4 address follows the prefix.
        [0x2002, _, _, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

/// Whether `ip` is globally reachable (the IPv4 address an IPv6 form carries counts).
pub fn is_global(ip: IpAddr) -> bool {
    let nets = &*NON_GLOBAL_NETS;
    let listed = |ip: IpAddr| nets.iter().any(|net| net.contains(&ip));
    match ip {
        IpAddr::V4(_) => !listed(ip),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => !listed(IpAddr::V4(v4)) && !listed(ip),
            None => !listed(ip),
        },
    }
}

/// Which destinations outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Networks opened despite not being global (`CONVERGER_EGRESS_ALLOW`).
    allow: Vec<IpNet>,
}

impl EgressPolicy {
    /// Global addresses, plus the networks in `allow`.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Whether a connection to `ip` is permitted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let canonical = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
            || is_global(ip)
    }

    fn permits_all_loopback(&self) -> bool {
        self.permits(IpAddr::V4(Ipv4Addr::LOCALHOST))
            && self.permits(IpAddr::V6(Ipv6Addr::LOCALHOST))
    }

    /// Checks what can be known of `url` without resolving it: an http(s) scheme, and
    /// a host that is not a refused literal address or a `localhost` name. Names are
    /// checked again, after resolution, when a connection is made.
    ///
    /// # Errors
    /// Why the URL may not be used as a destination.
    pub fn check_url(&self, url: &Url) -> Result<(), EgressRefused> {
        let refused = |reason| EgressRefused {
            target: url.host_str().unwrap_or_default().to_owned(),
            reason,
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused("only http and https destinations are allowed"));
        }
        // The url crate reads every IPv4 spelling (`2130706433`, `0x7f000001`,
        // `127.1`) as the address it means, so literals arrive here normalised.
        match url.host() {
            None => Err(refused("the URL has no host")),
            Some(Host::Ipv4(v4)) if !self.permits(IpAddr::V4(v4)) => {
                Err(refused("the address is not publicly routable"))
            }
            Some(Host::Ipv6(v6)) if !self.permits(IpAddr::V6(v6)) => {
                Err(refused("the address is not publicly routable"))
            }
            Some(Host::Domain(name)) if is_localhost(name) && !self.permits_all_loopback() => {
                Err(refused("the name is this host"))
            }
            Some(_) => Ok(()),
        }
    }
}

/// `localhost` and names below it (RFC 6761 says they resolve to loopback).
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Resolves host names and keeps only the addresses the policy permits; the
/// connector connects to exactly those.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| policy.permits(addr.ip()))
                .collect();
            if permitted.is_empty() {
                let target = resolved
                    .first()
                    .map_or_else(|| host.clone(), |a| format!("{host} ({})", a.ip()));
                return Err(Box::new(EgressRefused {
                    target,
                    reason: "the name resolves to no publicly routable address",
                }) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// The one outbound HTTP client: every adapter sends through it, so every request
/// obeys the policy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EgressClient {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl EgressClient {
    /// A client under `policy`.
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(policy: EgressPolicy) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let hops = policy.clone();
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            // Redirects stay on the origin (scheme, host and port) they started from: a
            // receiver must not bounce signed payloads or credentials elsewhere. The
            // policy is checked again on every hop.
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                let same_origin = attempt
                    .previous()
                    .first()
                    .is_some_and(|first| first.origin() == attempt.url().origin());
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error("too many redirects")
                } else if !same_origin {
                    attempt.error("redirect to another origin refused")
                } else if let Err(refused) = hops.check_url(attempt.url()) {
                    attempt.error(refused)
                } else {
                    attempt.follow()
                }
            }))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { http, policy })
    }

    /// The policy this client obeys (channel validation checks URLs against it).
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// A request to `url`, once the policy permits what it can see of it.
    ///
    /// # Errors
    /// When the URL names a refused destination.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &Url,
    ) -> Result<reqwest::RequestBuilder, EgressRefused> {
        self.policy.check_url(url)?;
        Ok(self.http.request(method, url.clone()))
    }
}

/// The policy's refusal behind a request error, if that is what stopped it.
pub fn refusal<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a EgressRefused> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<EgressRefused>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

/// Request headers a channel config may not set: they steer proxies and receivers
/// (where the request goes, who sent it, how it is framed), not the receiver's API.
pub fn is_reserved_header(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    const RESERVED: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
        "forwarded",
        "via",
        "x-real-ip",
        "user-agent",
    ];
    RESERVED.contains(&name.as_str())
        || name.starts_with("proxy-")
        || name.starts_with("x-forwarded-")
}

/// Reads at most `limit` bytes of a response body; the rest is never read.
///
/// # Errors
/// Transport errors while reading.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await? {
            Some(chunk) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            None => break,
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn internal_literals_are_refused_in_every_spelling() {
        let policy = EgressPolicy::default();
        for target in [
            "http://127.0.0.1:4000/admin/api/tenants",
            "http://[::1]/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "http://0.0.0.0/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://user:pw@127.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
            "http://[::]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:7f00:1::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "ftp://example.com/",
            "file:///etc/passwd",
        ] {
            assert!(
                policy.check_url(&url(target)).is_err(),
                "{target} was let through"
            );
        }
    }

    #[test]
    fn public_destinations_pass() {
        let policy = EgressPolicy::default();
        for target in [
            "https://hooks.example.com/in",
            "http://93.184.216.34/",
            "https://[2606:4700::1111]/",
            "http://[::ffff:93.184.216.34]/",
            "https://graph.facebook.com/v21.0",
        ] {
            assert_eq!(policy.check_url(&url(target)), Ok(()), "{target}");
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_networks() {
        let policy = EgressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        assert_eq!(policy.check_url(&url("http://127.0.0.1:9/")), Ok(()));
        assert_eq!(policy.check_url(&url("http://[::ffff:127.0.0.1]/")), Ok(()));
        assert_eq!(policy.check_url(&url("http://localhost:9/")), Ok(()));
        assert!(policy.check_url(&url("http://10.0.0.1/")).is_err());
        assert!(policy.check_url(&url("http://169.254.169.254/")).is_err());
        // `localhost` is opened only when both loopback families are.
        let v4_only = EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(v4_only.check_url(&url("http://localhost/")).is_err());
    }

    #[test]
    fn routing_and_framing_headers_are_reserved() {
        for reserved in [
            "Host",
            "X-Forwarded-For",
            "x-forwarded-host",
            "Forwarded",
            "Connection",
            "Transfer-Encoding",
            "Proxy-Authorization",
            "X-Real-IP",
            "User-Agent",
        ] {
            assert!(is_reserved_header(reserved), "{reserved}");
        }
        for free in ["Authorization", "X-Team", "X-Api-Key", "Accept"] {
            assert!(!is_reserved_header(free), "{free}");
        }
    }

    #[test]
    fn a_refusal_is_found_behind_wrapping_errors() {
        #[derive(Debug)]
        struct Outer(EgressRefused);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connect error")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let inner = EgressRefused {
            target: "x".into(),
            reason: "r",
        };
        assert_eq!(refusal(&Outer(inner.clone())), Some(&inner));
        assert_eq!(refusal(&std::io::Error::other("no")), None);
    }

    #[tokio::test]
    async fn the_resolver_hands_on_only_permitted_addresses() {
        let closed = PolicyResolver {
            policy: Arc::new(EgressPolicy::default()),
        };
        let err = closed
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("refused");
        assert!(refusal(err.as_ref()).is_some(), "{err}");
        let open = PolicyResolver {
            policy: Arc::new(EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])),
        };
        let addrs: Vec<SocketAddr> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
        assert!(
            addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()),
            "{addrs:?}"
        );
    }

    proptest! {
        /// Every address in a non-global network is refused, in its IPv4 and its
        /// IPv4-mapped IPv6 spelling alike.
        #[test]
        fn mapped_forms_judge_like_their_ipv4(bits in any::<u32>()) {
            let v4 = Ipv4Addr::from(bits);
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            prop_assert_eq!(is_global(IpAddr::V4(v4)), is_global(mapped));
            let policy = EgressPolicy::default();
            let literal = url(&format!("http://{v4}/"));
            let decimal = url(&format!("http://{bits}/"));
            prop_assert_eq!(policy.check_url(&literal).is_ok(), is_global(IpAddr::V4(v4)));
            prop_assert_eq!(policy.check_url(&decimal).is_ok(), is_global(IpAddr::V4(v4)));
        }
    }
}
