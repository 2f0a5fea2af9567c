//! Who is calling, and whether they may: the client's address behind trusted proxies,
//! CIDR allow-lists, and the signer of admin sessions (signed cookies, CSRF tokens,
//! the admin password).
//!
//! Pure rules over addresses, headers and bytes, used by the edges. No routing, no
//! middleware, no application state: this module imports neither `http` nor `admin`,
//! and config parses its address lists with [`parse_cidrs`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Name of the admin session cookie.
pub const COOKIE: &str = "cvg_admin";
/// Lifetime of an admin session, in seconds.
const SESSION_SECS: i64 = 12 * 3600;

/// IPv4-mapped IPv6 addresses count as their IPv4 form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether one of `nets` holds `ip`, IPv4-mapped addresses counting as IPv4.
fn in_any(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|net| net.contains(&ip))
}

/// Whether a client address is on an allow-list (such as `CONVERGER_ADMIN_ALLOWED_IPS`).
pub fn is_allowed(ip: IpAddr, allowed: &[IpNet]) -> bool {
    in_any(ip, allowed)
}

/// Whether `ip` is one of the proxies whose `X-Forwarded-*` headers are believed.
pub fn is_trusted_proxy(ip: IpAddr, trusted: &[IpNet]) -> bool {
    in_any(ip, trusted)
}

/// Why a request's client address cannot be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownClient;

/// The client's address: the TCP peer, unless the peer is a trusted proxy. Then
/// `X-Forwarded-For` is walked from the right (the entry the nearest proxy added)
/// past trusted proxies; the first untrusted entry is the client.
///
/// An entry that is not an address (`unknown`, `garbage`, an empty one) ends the
/// walk: whoever wrote it is the client, and that client is unknown. It is never
/// taken to be the proxy, which the allow-list may admit. When every entry is a
/// trusted proxy the left-most is the client; without the header, the peer is.
///
/// # Errors
/// [`UnknownClient`] when the entry that names the client does not parse.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<IpAddr, UnknownClient> {
    let peer = canonical(peer);
    if !is_trusted_proxy(peer, trusted) {
        return Ok(peer);
    }
    let mut entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Vec<_>>();
    if entries.is_empty() {
        return Ok(peer);
    }
    // Header lines in order, each a comma-separated list; a line that is not text
    // is one unreadable entry.
    let mut left_most = None;
    while let Some(line) = entries.pop() {
        let Some(line) = line else {
            return Err(UnknownClient);
        };
        for entry in line.rsplit(',') {
            let ip = parse_forwarded_entry(entry).ok_or(UnknownClient)?;
            if !is_trusted_proxy(ip, trusted) {
                return Ok(ip);
            }
            left_most = Some(ip);
        }
    }
    Ok(left_most.unwrap_or(peer))
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:443`) or in brackets (`[2001:db8::1]`), as proxies write them.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(canonical(ip))
}

/// Wrong passwords allowed from one address per [`PASSWORD_WINDOW`].
pub const PASSWORD_FAILURES: u32 = 10;
/// The window over which wrong passwords are counted.
pub const PASSWORD_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; beyond it, expired windows are forgotten first.
const PASSWORD_TRACKED: usize = 10_000;

/// Counts wrong admin passwords per client address in fixed windows. Only failures
/// count, so a script with the right password is never slowed down; once an
/// address has used up its window, every password attempt from it is refused until
/// the window ends, right or wrong, so guessing cannot go on.
#[derive(Debug, Default)]
pub struct PasswordAttempts {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl PasswordAttempts {
    /// `Err(wait)` while `ip` may not try a password.
    ///
    /// # Errors
    /// How long until the address may try again.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        match windows.get(&canonical(ip)) {
            Some(&(start, failures)) if failures >= PASSWORD_FAILURES => {
                let end = start + PASSWORD_WINDOW;
                if now < end { Err(end - now) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong password from `ip`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= PASSWORD_TRACKED {
            windows.retain(|_, (start, _)| now < *start + PASSWORD_WINDOW);
        }
        let entry = windows.entry(canonical(ip)).or_insert((now, 0));
        if now >= entry.0 + PASSWORD_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// Whether a request's `Host` (or HTTP/2 `:authority`) names this node: the host of
/// the public URL, or a loopback name when the node listens on loopback only. A
/// page on another name (DNS rebinding: `rebind.attacker.example` resolving to
/// 127.0.0.1) never gets an answer. Ports are not compared: proxies may change them.
pub fn host_allowed(host: &str, public_host: Option<&str>, listens_on_loopback: bool) -> bool {
    let name = host_name(host).to_ascii_lowercase();
    if public_host.is_some_and(|p| p.eq_ignore_ascii_case(&name)) {
        return true;
    }
    listens_on_loopback
        && (name == "localhost"
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| canonical(ip).is_loopback()))
}

/// The name part of a `Host` value (`name:port`, `[v6]:port`, `name`).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(v6, _)| v6)
            .trim_start_matches('[');
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Parses a comma-separated CIDR list; bare addresses are single-host networks.
///
/// # Errors
/// Every entry that is neither, named in one message.
pub fn parse_cidrs(list: &str) -> Result<Vec<IpNet>, String> {
    let mut networks = Vec::new();
    let mut bad = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(network) => networks.push(network),
            Err(_) => bad.push(format!("`{entry}`")),
        }
    }
    match bad.as_slice() {
        [] => Ok(networks),
        [one] => Err(format!("{one} is not an IP network (CIDR) or address")),
        many => Err(format!(
            "{} are not IP networks (CIDR) or addresses",
            many.join(", ")
        )),
    }
}

/// An admin browser session (also without a password: it carries the CSRF binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub sid: String,
    pub authenticated: bool,
    pub expires: i64,
}

/// Signs and checks admin sessions and CSRF tokens, and knows the admin password.
pub struct SessionSigner {
    /// The admin password; `None`: the panel asks for none.
    pub password: Option<String>,
    /// Signs session cookies and CSRF tokens; derived from the JWT secret so every
    /// node of an installation accepts the same sessions.
    key: [u8; 32],
    /// Mark cookies `Secure` (the public URL is https).
    pub secure_cookies: bool,
}

impl SessionSigner {
    /// A signer with a key derived from `secret` and the admin password, so that
    /// changing the password (on every node) ends every session signed before.
    pub fn new(password: Option<String>, secret: &[u8], secure_cookies: bool) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"converger-admin-session:");
        // Length-prefixed, so no secret/password pair collides with another.
        hasher.update((secret.len() as u64).to_be_bytes());
        hasher.update(secret);
        if let Some(password) = &password {
            hasher.update(Sha256::digest(password.as_bytes()));
        }
        Self {
            password,
            key: hasher.finalize().into(),
            secure_cookies,
        }
    }

    fn sign(&self, data: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(data.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Whether `given` is the admin password (constant-time).
    pub fn password_matches(&self, given: &str) -> bool {
        self.password.as_deref().is_some_and(|p| {
            Sha256::digest(p.as_bytes())
                .ct_eq(&Sha256::digest(given.as_bytes()))
                .into()
        })
    }

    /// A new session cookie value.
    pub fn new_session(&self, authenticated: bool, now: i64) -> Session {
        let sid_bytes: [u8; 16] = rand::rng().random();
        Session {
            sid: URL_SAFE_NO_PAD.encode(sid_bytes),
            authenticated,
            expires: now + SESSION_SECS,
        }
    }

    /// The cookie value of a session.
    pub fn encode(&self, s: &Session) -> String {
        let data = format!("{}.{}.{}", s.sid, u8::from(s.authenticated), s.expires);
        format!("{data}.{}", self.sign(&data))
    }

    /// A session from its cookie value, if the signature holds and it has not expired.
    pub fn decode(&self, value: &str, now: i64) -> Option<Session> {
        let (data, sig) = value.rsplit_once('.')?;
        if !bool::from(self.sign(data).as_bytes().ct_eq(sig.as_bytes())) {
            return None;
        }
        let mut parts = data.split('.');
        let (sid, auth, exp) = (parts.next()?, parts.next()?, parts.next()?);
        let expires: i64 = exp.parse().ok()?;
        (parts.next().is_none() && expires > now).then(|| Session {
            sid: sid.to_owned(),
            authenticated: auth == "1",
            expires,
        })
    }

    /// The CSRF token of a session: forms carry it back in `_csrf`.
    pub fn csrf_token(&self, session: &Session) -> String {
        self.sign(&format!("csrf.{}", session.sid))
    }

    /// The `Set-Cookie` header for a session.
    pub fn set_cookie(&self, session: &Session) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        let value = format!(
            "{COOKIE}={}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}",
            self.encode(session)
        );
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &str) -> Vec<IpNet> {
        parse_cidrs(s).unwrap()
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets("10.0.0.0/8");
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &xff("127.0.0.1"), &trusted),
            Ok(stranger)
        );
        assert_eq!(
            client_ip(proxy, &xff("198.51.100.7"), &trusted),
            Ok("198.51.100.7".parse::<IpAddr>().unwrap())
        );
        // A client cannot hide behind a spoofed left-most entry.
        assert_eq!(
            client_ip(proxy, &xff("127.0.0.1, 198.51.100.7, 10.9.9.9"), &trusted),
            Ok("198.51.100.7".parse::<IpAddr>().unwrap())
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), Ok(proxy));
    }

    #[test]
    fn an_unparsable_entry_makes_the_client_unknown_never_the_proxy() {
        let trusted = nets("127.0.0.1/32");
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let client = Ok("10.0.0.5".parse::<IpAddr>().unwrap());
        // What nginx writes when a client sends its own header.
        assert_eq!(
            client_ip(proxy, &xff("garbage, 10.0.0.5"), &trusted),
            client
        );
        assert_eq!(
            client_ip(proxy, &xff("unknown, 10.0.0.5"), &trusted),
            client
        );
        assert_eq!(client_ip(proxy, &xff(", 10.0.0.5"), &trusted), client);
        assert_eq!(client_ip(proxy, &xff("10.0.0.5:4711"), &trusted), client);
        assert_eq!(
            client_ip(proxy, &xff("[2001:db8::1]"), &trusted),
            Ok("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            client_ip(proxy, &xff("[2001:db8::1]:443"), &trusted),
            Ok("2001:db8::1".parse().unwrap())
        );
        for unknown in [
            "garbage",
            "unknown",
            "",
            " , ",
            "10.0.0.5, nonsense",
            "127.0.0.1, x, 127.0.0.1",
        ] {
            assert_eq!(
                client_ip(proxy, &xff(unknown), &trusted),
                Err(UnknownClient),
                "{unknown:?}"
            );
        }
        // Every entry a trusted proxy: the left-most is the client.
        assert_eq!(
            client_ip(proxy, &xff("127.0.0.1, 127.0.0.1"), &trusted),
            Ok(proxy)
        );
        // Several header lines read as one list, the last line nearest.
        let mut two = HeaderMap::new();
        two.append("x-forwarded-for", "203.0.113.1".parse().unwrap());
        two.append("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(proxy, &two, &trusted), Err(UnknownClient));
    }

    /// What the walk must find: the right-most entry that is not a trusted proxy,
    /// unknown when an entry up to it does not parse.
    fn model(
        peer: IpAddr,
        entries: &[Option<IpAddr>],
        trusted: &[IpNet],
    ) -> Result<IpAddr, UnknownClient> {
        if !is_trusted_proxy(peer, trusted) || entries.is_empty() {
            return Ok(peer);
        }
        for entry in entries.iter().rev() {
            match entry {
                None => return Err(UnknownClient),
                Some(ip) if !is_trusted_proxy(*ip, trusted) => return Ok(*ip),
                Some(_) => {}
            }
        }
        Ok(entries[0].unwrap_or(peer))
    }

    proptest::proptest! {
        #[test]
        fn forwarded_for_walk_matches_the_model(
            peer_trusted in proptest::bool::ANY,
            entries in proptest::collection::vec(
                proptest::option::weighted(0.85, 0u8..8),
                1..6,
            ),
        ) {
            // 10.0.0.0-3 are proxies, 10.0.0.4-7 are clients; None is junk.
            let trusted = nets("10.0.0.0/30");
            let addr = |n: u8| IpAddr::from([10, 0, 0, n]);
            let peer = if peer_trusted { addr(1) } else { addr(6) };
            let written: Vec<String> = entries
                .iter()
                .map(|e| e.map_or_else(|| "unknown".to_owned(), |n| addr(n).to_string()))
                .collect();
            let parsed: Vec<Option<IpAddr>> = entries.iter().map(|e| e.map(addr)).collect();
            let got = client_ip(peer, &xff(&written.join(", ")), &trusted);
            proptest::prop_assert_eq!(got, model(peer, &parsed, &trusted));
        }

        /// Any header at all: no panic, and a trusted proxy is the answer only when
        /// the header names nothing else.
        #[test]
        fn arbitrary_forwarded_for_never_yields_the_proxy(header in "[ -~]{0,64}") {
            let trusted = nets("127.0.0.1/32");
            let proxy: IpAddr = "127.0.0.1".parse().unwrap();
            let Ok(value) = header.parse() else { return Ok(()) };
            let mut headers = HeaderMap::new();
            headers.insert("x-forwarded-for", value);
            if let Ok(ip) = client_ip(proxy, &headers, &trusted) {
                let only_proxies = header
                    .split(',')
                    .all(|e| parse_forwarded_entry(e) == Some(proxy));
                proptest::prop_assert!(ip != proxy || only_proxies, "{header:?} gave the proxy");
            }
        }
    }

    #[test]
    fn a_new_password_ends_every_session() {
        let before = SessionSigner::new(Some("old password".into()), b"secret", false);
        let after = SessionSigner::new(Some("new password".into()), b"secret", false);
        let cookie = before.encode(&before.new_session(true, 1000));
        assert!(before.decode(&cookie, 1001).is_some());
        assert_eq!(after.decode(&cookie, 1001), None);
        let unset = SessionSigner::new(None, b"secret", false);
        assert_eq!(unset.decode(&cookie, 1001), None);
    }

    #[test]
    fn wrong_passwords_are_limited_per_address_and_window() {
        let attempts = PasswordAttempts::default();
        let (a, b): (IpAddr, IpAddr) = (
            "198.51.100.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
        let t0 = Instant::now();
        for _ in 0..PASSWORD_FAILURES {
            assert_eq!(attempts.check(a, t0), Ok(()));
            attempts.record_failure(a, t0);
        }
        let wait = attempts.check(a, t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(wait, PASSWORD_WINDOW - Duration::from_secs(1));
        // The mapped form is the same client; another address is not held up.
        assert!(
            attempts
                .check("::ffff:198.51.100.1".parse().unwrap(), t0)
                .is_err()
        );
        assert_eq!(attempts.check(b, t0), Ok(()));
        // A new window starts afresh.
        let later = t0 + PASSWORD_WINDOW;
        assert_eq!(attempts.check(a, later), Ok(()));
        attempts.record_failure(a, later);
        assert_eq!(attempts.check(a, later), Ok(()));
    }

    #[test]
    fn only_this_nodes_names_are_answered() {
        let public = Some("hub.example.com");
        assert!(host_allowed("hub.example.com", public, false));
        assert!(host_allowed("HUB.example.com:8443", public, false));
        assert!(!host_allowed("rebind.attacker.example", public, true));
        assert!(!host_allowed("rebind.attacker.example:4000", public, true));
        assert!(!host_allowed(
            "hub.example.com.attacker.example",
            public,
            true
        ));
        assert!(!host_allowed("localhost:4000", public, false));
        for loopback in [
            "localhost:4000",
            "127.0.0.1:4000",
            "127.0.0.1",
            "[::1]:4000",
            "[::1]",
        ] {
            assert!(host_allowed(loopback, public, true), "{loopback}");
        }
        assert!(!host_allowed("", public, true));
    }

    #[test]
    fn allow_list_matches_v4_v6_and_mapped() {
        let allowed = nets("127.0.0.1/32, ::1/128, 192.168.1.0/24");
        for ok in ["127.0.0.1", "::1", "192.168.1.77", "::ffff:127.0.0.1"] {
            assert!(is_allowed(ok.parse().unwrap(), &allowed), "{ok}");
        }
        for no in ["127.0.0.2", "::2", "10.0.0.1"] {
            assert!(!is_allowed(no.parse().unwrap(), &allowed), "{no}");
        }
        assert_eq!(
            parse_cidrs("10.0.0.0/8, nonsense"),
            Err("`nonsense` is not an IP network (CIDR) or address".into())
        );
        assert_eq!(
            parse_cidrs("bad, 10.0.0.0/8, 10.0.0.0/33,,worse"),
            Err("`bad`, `10.0.0.0/33`, `worse` are not IP networks (CIDR) or addresses".into())
        );
        assert_eq!(
            parse_cidrs("10.0.0.1").unwrap()[0].to_string(),
            "10.0.0.1/32"
        );
    }

    #[test]
    fn sessions_are_signed_and_expire() {
        let signer = SessionSigner::new(Some("pw".into()), b"secret", false);
        let s = signer.new_session(true, 1000);
        let cookie = signer.encode(&s);
        assert_eq!(signer.decode(&cookie, 1001), Some(s.clone()));
        assert_eq!(signer.decode(&cookie, s.expires + 1), None);
        assert!(signer.decode(&cookie.replace(&s.sid, "x"), 1001).is_none());
        // Promoting an anonymous session to an authenticated one breaks the signature.
        let anon = signer.encode(&signer.new_session(false, 1000));
        let parts: Vec<&str> = anon.split('.').collect();
        let promoted = format!("{}.1.{}.{}", parts[0], parts[2], parts[3]);
        assert_eq!(signer.decode(&promoted, 1001), None);
        let other = SessionSigner::new(None, b"other", false);
        assert_eq!(other.decode(&cookie, 1001), None);
        assert_ne!(
            signer.csrf_token(&s),
            signer.csrf_token(&signer.new_session(true, 1000))
        );
        assert!(signer.password_matches("pw") && !signer.password_matches("pW"));
    }
}
