//! HTTPS enforcement (docs/design.md#security): redirect plain-HTTP requests to https and
//! send HSTS on HTTPS responses.
//!
//! Stage 1, one middleware around every route. It decides a request's scheme and
//! answers plain-HTTP requests with a redirect when `CONVERGER_FORCE_HTTPS` asks for
//! it; it reads no body and no state beyond the config and the trusted proxies.
//!
//! The scheme is `https` when this node serves TLS itself (it then has no plain-HTTP
//! listener at all). Otherwise it is what a trusted proxy (`CONVERGER_TRUSTED_PROXIES`,
//! the same rule as for `X-Forwarded-For`) says in `X-Forwarded-Proto`, and `http` for
//! every other peer: a forged header neither skips the redirect nor earns HSTS.
//!
//! Where the redirect goes: to `CONVERGER_PUBLIC_URL` only, never to a host the
//! request names (`Host`, an absolute URI, `X-Forwarded-Host`), so no request can turn
//! the redirect towards another site. An https public URL gives its origin; an http
//! one its host over https, port dropped since the plain-HTTP port is not the HTTPS
//! one.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::config::Config;

/// `Strict-Transport-Security` of HTTPS responses: one year, subdomains included.
pub const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000; includeSubDomains");

/// Served over plain HTTP even with `CONVERGER_FORCE_HTTPS`: load balancers' checks and
/// Prometheus scrapes usually reach a node directly, without TLS.
const PLAIN_HTTP_PATHS: [&str; 3] = ["/health", "/ready", "/metrics"];

/// Middleware: redirects plain-HTTP requests to https when `CONVERGER_FORCE_HTTPS` is
/// on, and marks HTTPS responses with HSTS (always with direct TLS; behind a proxy
/// only with `CONVERGER_FORCE_HTTPS`, the operator's opt-in).
pub async fn enforce(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let direct_tls = state.config.tls_cert.is_some();
    if !direct_tls && !state.config.force_https {
        return next.run(request).await;
    }
    let https = direct_tls || forwarded_https(&state, &request);
    if !https {
        if PLAIN_HTTP_PATHS.contains(&request.uri().path()) {
            return next.run(request).await;
        }
        return redirect(&state.config, &request);
    }
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .entry(header::STRICT_TRANSPORT_SECURITY)
        .or_insert(HSTS);
    response
}

/// Whether a trusted proxy says the client spoke https to it.
fn forwarded_https(state: &AppState, request: &Request) -> bool {
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else {
        return false;
    };
    crate::access::is_trusted_proxy(peer.ip(), &state.config.trusted_proxies)
        && forwarded_proto(request.headers()).is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// The scheme the client used with the first proxy: proxies that append to
/// `X-Forwarded-Proto` keep the client-facing one first.
fn forwarded_proto(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-forwarded-proto")?
        .to_str()
        .ok()?
        .split(',')
        .next()
        .map(str::trim)
}

/// 308 (method and body kept, so API clients repeat a POST) to the https URL of the
/// request on the public host, or 400 when the public URL names no host.
fn redirect(config: &Config, request: &Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = https_origin(config)
        .and_then(|origin| HeaderValue::from_str(&format!("{origin}{path}")).ok());
    match location {
        Some(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        None => ApiError::https_required().into_response(),
    }
}

/// `https://host[:port]` to redirect to, from `CONVERGER_PUBLIC_URL` alone: its origin
/// when it is https, else its host over https (the plain-HTTP port is not the HTTPS
/// one). Nothing the request says is used, so no request can redirect elsewhere.
fn https_origin(config: &Config) -> Option<String> {
    let public = url::Url::parse(&config.public_url).ok()?;
    if public.scheme() == "https" {
        return Some(public.origin().ascii_serialization());
    }
    public.host_str().map(|host| format!("https://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(uri: &str, host: Option<&str>) -> Request {
        let mut builder = Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(Body::empty()).unwrap()
    }

    fn location(config: &Config, request: &Request) -> Option<String> {
        let response = redirect(config, request);
        (response.status() == StatusCode::PERMANENT_REDIRECT).then(|| {
            response.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned()
        })
    }

    #[test]
    fn redirects_to_an_https_public_url_whatever_the_host() {
        let mut config = Config::new("sqlite://x.db");
        config.public_url = "https://hub.example.com:8443/base/".into();
        let req = request("/api/v1/channels?cursor=a%20b", Some("evil.example"));
        assert_eq!(
            location(&config, &req).as_deref(),
            Some("https://hub.example.com:8443/api/v1/channels?cursor=a%20b")
        );
        config.public_url = "https://hub.example.com".into();
        assert_eq!(
            location(&config, &request("/", None)).as_deref(),
            Some("https://hub.example.com/")
        );
    }

    #[test]
    fn an_http_public_url_redirects_to_its_host_whatever_the_request_says() {
        let mut config = Config::new("sqlite://x.db");
        config.public_url = "http://hub.example.com:8080".into();
        for host in [
            Some("hub.example.com:8080"),
            Some("evil.example"),
            Some("user@evil.example"),
            Some("a b"),
            None,
        ] {
            assert_eq!(
                location(&config, &request("/a?b=c", host)).as_deref(),
                Some("https://hub.example.com/a?b=c"),
                "{host:?}"
            );
        }
        // An absolute request URI names no destination either.
        assert_eq!(
            location(&config, &request("http://evil.example/x", None)).as_deref(),
            Some("https://hub.example.com/x")
        );
        config.public_url = "http://[2001:db8::1]:80".into();
        assert_eq!(
            location(&config, &request("/", Some("evil.example"))).as_deref(),
            Some("https://[2001:db8::1]/")
        );
    }

    #[test]
    fn forwarded_proto_is_the_first_value() {
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_proto(&headers), None);
        headers.insert("x-forwarded-proto", "HTTPS , http".parse().unwrap());
        assert_eq!(forwarded_proto(&headers), Some("HTTPS"));
    }
}
