//! The guard in front of every `/admin` route: the IP allow-list (with
//! `X-Forwarded-For` believed only from trusted proxies), the optional password with
//! a signed session cookie, CSRF tokens bound to that cookie, and the panel's security
//! headers. The rules themselves live in [`crate::access`]; this is only the middleware.
//!
//! A refused request gets 403 before any handler runs, so it touches nothing.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use subtle::ConstantTimeEq;

use crate::access::{self, Session};
use crate::egress;
use crate::http::error::ApiError;
use crate::http::state::AppState;

pub use crate::access::COOKIE;

/// Security headers of every admin response. No inline script or style is allowed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// What handlers learn from the guard.
#[derive(Debug, Clone)]
pub struct AdminContext {
    pub session: Session,
    pub csrf: String,
    /// Whether a password protects the panel (then the logout link is shown).
    pub password_required: bool,
    /// The client's address, as the allow-list saw it (wrong passwords count per
    /// address).
    pub client: IpAddr,
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
    let signer = state.admin.clone();
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
    let Ok(ip) = access::client_ip(peer, request.headers(), &state.config.trusted_proxies) else {
        tracing::warn!(%peer, path = %request.uri().path(), "admin request refused: unreadable X-Forwarded-For");
        return with_security_headers(refuse(
            StatusCode::FORBIDDEN,
            "admin_forbidden",
            "the client address is unknown",
        ));
    };
    if !access::is_allowed(ip, &state.config.admin_allowed_ips) {
        tracing::warn!(%ip, path = %request.uri().path(), "admin request refused by the IP allow-list");
        return with_security_headers(refuse(
            StatusCode::FORBIDDEN,
            "admin_forbidden",
            "the admin panel is not open to this address",
        ));
    }
    // DNS rebinding: a page on another name that resolves here must get no answer.
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let public_host = url::Url::parse(&state.config.public_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned));
    let listen = state.config.listen.ip();
    let loopback_reaches = listen.is_loopback() || listen.is_unspecified();
    if !access::host_allowed(host, public_host.as_deref(), loopback_reaches) {
        tracing::warn!(%ip, host, "admin request refused: Host is not this node's public name");
        return with_security_headers(refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "admin_host_refused",
            "the admin panel answers only on the host of CONVERGER_PUBLIC_URL",
        ));
    }
    // Deliveries (of any node) that an egress allow-list lets reach this panel.
    let from_delivery = request.headers().get(header::USER_AGENT).is_some_and(|ua| {
        ua.as_bytes()
            .starts_with(egress::USER_AGENT_PRODUCT.as_bytes())
    });
    if from_delivery {
        tracing::warn!(%ip, path = %request.uri().path(), "admin request from a delivery client refused");
        return with_security_headers(refuse(
            StatusCode::FORBIDDEN,
            "admin_forbidden",
            "the admin panel does not answer delivery requests",
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
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let tries_password =
        bearer.is_some() || (*request.method() == Method::POST && path == "/admin/login");
    if tries_password && let Err(wait) = state.limits.admin_passwords.check(ip, Instant::now()) {
        tracing::warn!(%ip, "admin password attempt refused: too many wrong passwords");
        return with_security_headers(
            ApiError::rate_limited(wait, "admin password attempts").into_response(),
        );
    }
    let bearer_ok = bearer.is_some_and(|p| signer.password_matches(p));
    if bearer.is_some() && !bearer_ok {
        tracing::warn!(%ip, "admin bearer password refused");
        state
            .limits
            .admin_passwords
            .record_failure(ip, Instant::now());
    }
    let mut existing = cookie_value(request.headers(), COOKIE).and_then(|v| signer.decode(v, now));
    // A logged-out session stays signed until it expires: every node looks it up.
    if let Some(session) = existing.as_ref().filter(|s| s.authenticated) {
        match state.store.admin_session_revoked(&session.sid).await {
            Ok(false) => {}
            Ok(true) => existing = None,
            Err(e) => return with_security_headers(ApiError::from(e).into_response()),
        }
    }
    let fresh = existing.is_none();
    let session = existing.unwrap_or_else(|| signer.new_session(false, now));
    let password_required = signer.password.is_some();
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
                .append(header::SET_COOKIE, signer.set_cookie(&session));
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
    let csrf = signer.csrf_token(&session);
    // A body-less POST from a sibling site (`Sec-Fetch-Site: same-site`) passes the
    // content-type rule and carries the session cookie: browser requests that change
    // something through the JSON API prove they come from the panel with the
    // session's CSRF token (`x-csrf-token`), or authenticate with `Authorization`.
    // Clients that are not browsers send no `Sec-Fetch-Site` and carry no ambient
    // credentials to abuse.
    let from_other_page = request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| !matches!(v.as_bytes(), b"same-origin" | b"none"));
    if is_api && unsafe_method && from_other_page {
        let token_ok = request
            .headers()
            .get("x-csrf-token")
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(csrf.as_bytes())));
        if !token_ok && !request.headers().contains_key(header::AUTHORIZATION) {
            return with_security_headers(refuse(
                StatusCode::FORBIDDEN,
                "csrf_rejected",
                "send the session's CSRF token in x-csrf-token, or an Authorization header",
            ));
        }
    }
    request.extensions_mut().insert(AdminContext {
        session: session.clone(),
        csrf,
        password_required,
        client: ip,
    });
    let mut response = next.run(request).await;
    if fresh && !response.headers().contains_key(header::SET_COOKIE) {
        response
            .headers_mut()
            .append(header::SET_COOKIE, signer.set_cookie(&session));
    }
    with_security_headers(response)
}
