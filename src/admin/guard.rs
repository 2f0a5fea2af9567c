//! Who may use the admin panel: IP allow-list (with `X-Forwarded-For` believed only
//! from trusted proxies), an optional password with a signed session cookie, and
//! CSRF tokens bound to that cookie. Pure functions plus one middleware.
//!
//! A refused request gets 403 before any handler runs, so it touches nothing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Name of the admin session cookie.
pub const COOKIE: &str = "cvg_admin";
/// Lifetime of an admin session, in seconds.
const SESSION_SECS: i64 = 12 * 3600;
/// Security headers of every admin response. No inline script or style is allowed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The admin panel's access rules, built once from the config.
pub struct AdminAccess {
    pub allowed: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    pub password: Option<String>,
    /// Signs session cookies and CSRF tokens; derived from the JWT secret so every
    /// node of an installation accepts the same sessions.
    key: [u8; 32],
    /// Mark cookies `Secure` (the public URL is https).
    pub secure_cookies: bool,
}

impl AdminAccess {
    /// Access rules with a signing key derived from `secret`.
    pub fn new(
        allowed: Vec<IpNet>,
        trusted_proxies: Vec<IpNet>,
        password: Option<String>,
        secret: &[u8],
        secure_cookies: bool,
    ) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"converger-admin-session:");
        hasher.update(secret);
        Self {
            allowed,
            trusted_proxies,
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

    /// Whether a client address may reach the panel.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.iter().any(|net| net.contains(&ip))
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

/// An admin browser session (also without a password: it carries the CSRF binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub sid: String,
    pub authenticated: bool,
    pub expires: i64,
}

/// What handlers learn from the guard.
#[derive(Debug, Clone)]
pub struct AdminContext {
    pub session: Session,
    pub csrf: String,
    /// Whether a password protects the panel (then the logout link is shown).
    pub password_required: bool,
}

/// IPv4-mapped IPv6 addresses count as their IPv4 form.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is one of the proxies whose `X-Forwarded-*` headers are believed.
pub fn is_trusted_proxy(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which
/// case `X-Forwarded-For` is read from the right, skipping trusted proxies.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| is_trusted_proxy(*ip, trusted);
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().parse::<IpAddr>().map(canonical))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    forwarded
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .copied()
        .or_else(|| forwarded.first().copied())
        .unwrap_or(peer)
}

/// Parses a comma-separated CIDR list; bare addresses are single-host networks.
///
/// # Errors
/// The entries that are neither.
pub fn parse_cidrs(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{s}` is not an IP network (CIDR) or address"))
        })
        .collect()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn refuse(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError::new(status, code, message).into_response()
}

fn with_security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The guard in front of every `/admin` route.
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let access: Arc<AdminAccess> = state.admin.clone();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip());
    let Some(peer) = peer else {
        return refuse(
            StatusCode::FORBIDDEN,
            "admin_forbidden",
            "the client address is unknown",
        );
    };
    let ip = client_ip(peer, request.headers(), &access.trusted_proxies);
    if !access.ip_allowed(ip) {
        tracing::warn!(%ip, path = %request.uri().path(), "admin request refused by the IP allow-list");
        return with_security_headers(refuse(
            StatusCode::FORBIDDEN,
            "admin_forbidden",
            "the admin panel is not open to this address",
        ));
    }
    // Browsers label cross-site requests; none is ever legitimate here.
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let cross_site = request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site");
    if unsafe_method && cross_site {
        return with_security_headers(refuse(
            StatusCode::FORBIDDEN,
            "csrf_rejected",
            "cross-site request refused",
        ));
    }

    let now = chrono::Utc::now().timestamp();
    let path = request.uri().path().to_owned();
    let is_api = path.starts_with("/admin/api");
    let bearer_ok = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|p| access.password_matches(p.trim()));
    let existing = cookie_value(request.headers(), COOKIE).and_then(|v| access.decode(v, now));
    let fresh = existing.is_none();
    let session = existing.unwrap_or_else(|| access.new_session(false, now));
    let password_required = access.password.is_some();
    let open_paths = ["/admin/login", "/admin/static/admin.css"];
    if password_required
        && !session.authenticated
        && !bearer_ok
        && !open_paths.contains(&path.as_str())
    {
        let response = if is_api {
            refuse(
                StatusCode::UNAUTHORIZED,
                "admin_login_required",
                "log in or send the admin password as a bearer token",
            )
        } else {
            Redirect::to("/admin/login").into_response()
        };
        let mut response = with_security_headers(response);
        if fresh {
            response
                .headers_mut()
                .append(header::SET_COOKIE, access.set_cookie(&session));
        }
        return response;
    }
    // JSON mutations need a JSON body (or none): browsers' cross-site forms always
    // send another content type, and cross-site JSON needs CORS, which /admin never
    // grants.
    if is_api && unsafe_method {
        let json_or_empty = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().is_ok_and(|v| v.starts_with("application/json")))
            .unwrap_or(true);
        if !json_or_empty {
            return with_security_headers(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "admin API requests carry JSON bodies",
            ));
        }
    }
    let csrf = access.csrf_token(&session);
    request.extensions_mut().insert(AdminContext {
        session: session.clone(),
        csrf,
        password_required,
    });
    let mut response = next.run(request).await;
    if fresh && !response.headers().contains_key(header::SET_COOKIE) {
        response
            .headers_mut()
            .append(header::SET_COOKIE, access.set_cookie(&session));
    }
    with_security_headers(response)
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
        assert_eq!(client_ip(stranger, &xff("127.0.0.1"), &trusted), stranger);
        assert_eq!(
            client_ip(proxy, &xff("198.51.100.7"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A client cannot hide behind a spoofed left-most entry.
        assert_eq!(
            client_ip(proxy, &xff("127.0.0.1, 198.51.100.7, 10.9.9.9"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &xff("garbage"), &trusted), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }

    #[test]
    fn allow_list_matches_v4_v6_and_mapped() {
        let access = AdminAccess::new(
            nets("127.0.0.1/32, ::1/128, 192.168.1.0/24"),
            vec![],
            None,
            b"k",
            false,
        );
        for ok in ["127.0.0.1", "::1", "192.168.1.77", "::ffff:127.0.0.1"] {
            assert!(access.ip_allowed(ok.parse().unwrap()), "{ok}");
        }
        for no in ["127.0.0.2", "::2", "10.0.0.1"] {
            assert!(!access.ip_allowed(no.parse().unwrap()), "{no}");
        }
        assert!(parse_cidrs("10.0.0.0/8, nonsense").is_err());
        assert_eq!(
            parse_cidrs("10.0.0.1").unwrap()[0].to_string(),
            "10.0.0.1/32"
        );
    }

    #[test]
    fn sessions_are_signed_and_expire() {
        let access = AdminAccess::new(vec![], vec![], Some("pw".into()), b"secret", false);
        let s = access.new_session(true, 1000);
        let cookie = access.encode(&s);
        assert_eq!(access.decode(&cookie, 1001), Some(s.clone()));
        assert_eq!(access.decode(&cookie, s.expires + 1), None);
        assert!(access.decode(&cookie.replace(&s.sid, "x"), 1001).is_none());
        // Promoting an anonymous session to an authenticated one breaks the signature.
        let anon = access.encode(&access.new_session(false, 1000));
        let parts: Vec<&str> = anon.split('.').collect();
        let promoted = format!("{}.1.{}.{}", parts[0], parts[2], parts[3]);
        assert_eq!(access.decode(&promoted, 1001), None);
        let other = AdminAccess::new(vec![], vec![], None, b"other", false);
        assert_eq!(other.decode(&cookie, 1001), None);
        assert_ne!(
            access.csrf_token(&s),
            access.csrf_token(&access.new_session(true, 1000))
        );
        assert!(access.password_matches("pw") && !access.password_matches("pW"));
    }
}
