//! Configuration: one typed struct from flags and `CONVERGER_*` variables, validated
//! before anything starts.
//!
//! Every default is written once, in the clap definition below; [`Config::default`]
//! and [`Config::new`] are read from it. Address lists are parsed into networks when
//! the config is loaded. This module configures the node and runs nothing: it must not
//! import the edges, `ingest` or `delivery`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, FromArgMatches, ValueEnum};
use ipnet::IpNet;

use crate::access::parse_cidrs;
use crate::secrets::{KEY_BYTES, SecretKey};
use crate::store::{Backend, redact_url};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of a Converger node. Each flag can also be given as the environment
/// variable named in its help.
#[derive(Clone, PartialEq, Args)]
pub struct Config {
    /// Database: `sqlite://PATH` (embedded, the default) or `postgres://...`.
    #[arg(
        long,
        env = "CONVERGER_DATABASE_URL",
        default_value = "sqlite://converger.db",
        global = true
    )]
    pub database_url: String,

    /// Most database connections this node opens (readers, for SQLite).
    #[arg(
        long,
        env = "CONVERGER_DATABASE_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub database_max_connections: u32,

    /// Address to serve HTTP and WebSocket on (HTTPS and WSS with `CONVERGER_TLS_CERT`).
    #[arg(
        long,
        env = "CONVERGER_LISTEN",
        default_value = "0.0.0.0:4000",
        global = true
    )]
    pub listen: SocketAddr,

    /// Base of the URLs shown to users, such as channels' inbound URLs.
    #[arg(
        long,
        env = "CONVERGER_PUBLIC_URL",
        default_value = "http://localhost:4000",
        global = true
    )]
    pub public_url: String,

    /// HS256 key for channel and client tokens, at least 32 bytes. Required with
    /// PostgreSQL; with SQLite, a random key is generated and kept next to the database
    /// file (`<file>.jwt-secret`) when unset.
    #[arg(
        long,
        env = "CONVERGER_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// Key encrypting channel secrets and the secret fields of channel configs in the
    /// database: base64 of 32 random bytes (`openssl rand -base64 32`). With SQLite, a
    /// key is generated and kept next to the database file (`<file>.secret-key`) when
    /// unset. With PostgreSQL, unset keeps them unencrypted (a warning at start-up):
    /// set it in production, the same on every node.
    #[arg(
        long,
        env = "CONVERGER_SECRET_KEY",
        hide_env_values = true,
        global = true
    )]
    pub secret_key: Option<String>,

    /// Earlier values of `CONVERGER_SECRET_KEY`, comma-separated: only to read what was
    /// encrypted with them. What is written is encrypted with the current key;
    /// `converger secrets reencrypt` rewrites the rest.
    #[arg(
        long,
        env = "CONVERGER_SECRET_KEY_PREVIOUS",
        hide_env_values = true,
        global = true
    )]
    pub secret_key_previous: Option<String>,

    /// Largest accepted request body, in bytes; larger ones get 413.
    #[arg(long, env = "CONVERGER_MAX_BODY_BYTES", default_value_t = 256 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Log format: `text` or `json`. Log levels come from `RUST_LOG` (default `info`).
    #[arg(
        long,
        env = "CONVERGER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// WebSocket: close a socket that sent no frame at all (heartbeats included) for
    /// this many seconds. Clients heartbeat every 30 s.
    #[arg(
        long,
        env = "CONVERGER_SOCKET_IDLE_TIMEOUT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub socket_idle_timeout_secs: u64,

    /// WebSocket: largest accepted client frame, in bytes; a larger one closes the
    /// socket with code 1009.
    #[arg(long, env = "CONVERGER_SOCKET_MAX_FRAME_BYTES", default_value_t = 256 * 1024, global = true)]
    pub socket_max_frame_bytes: usize,

    /// WebSocket: most topics one socket may have joined at once; further joins get
    /// the error reply `too many channels joined`.
    #[arg(
        long,
        env = "CONVERGER_SOCKET_MAX_CHANNELS",
        default_value_t = 100,
        global = true
    )]
    pub socket_max_channels: usize,

    /// WebSocket: client messages per second and socket (heartbeats excepted), with
    /// bursts of as many; beyond it they get the error reply `rate_limited`.
    #[arg(
        long,
        env = "CONVERGER_SOCKET_PUSH_RATE",
        default_value_t = 50,
        global = true
    )]
    pub socket_push_rate: u32,

    /// WebSocket: server messages queued for one socket. A socket that falls behind
    /// its conversation while this queue is full is closed with code 1013 (try again
    /// later); the client reconnects and resumes from its last activity.
    #[arg(
        long,
        env = "CONVERGER_SOCKET_OUTBOUND_QUEUE",
        default_value_t = 256,
        global = true
    )]
    pub socket_outbound_queue: usize,

    /// WebSocket: seconds a write to a client may wait while the client does not read;
    /// then the socket is closed, and the client resumes after reconnecting.
    #[arg(
        long,
        env = "CONVERGER_SOCKET_SEND_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub socket_send_timeout_secs: u64,

    /// Long-poll: seconds a poll waits for messages before it answers that there are
    /// none (the client polls again at once). Keep it under the client's request
    /// timeout (20 s in phoenix.js). A session nobody polls for
    /// `CONVERGER_SOCKET_IDLE_TIMEOUT_SECS` after its last poll ends.
    #[arg(
        long,
        env = "CONVERGER_LONGPOLL_WINDOW_SECS",
        default_value_t = 10,
        global = true
    )]
    pub longpoll_window_secs: u64,

    /// Most connections this node holds open at once: HTTP, WebSocket and TLS
    /// handshakes alike. Beyond it a new connection is answered `503
    /// too_many_connections` and closed. Unset: three quarters of the process's
    /// open-file limit, so the node refuses before it runs out of descriptors.
    #[arg(long, env = "CONVERGER_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,

    /// Most connections from one client address (`429 too_many_connections` beyond
    /// it); 0 = no limit. Trusted proxies are not counted; WebSockets through them are
    /// counted per forwarded client address instead.
    #[arg(
        long,
        env = "CONVERGER_MAX_CONNECTIONS_PER_IP",
        default_value_t = 512,
        global = true
    )]
    pub max_connections_per_ip: usize,

    /// Seconds a client has to send a request's headers; for HTTP/1 also how long a
    /// kept-alive connection waits for its next request. Slower connections are closed.
    #[arg(
        long,
        env = "CONVERGER_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub header_read_timeout_secs: u64,

    /// Seconds a connection may pass without moving a byte either way (a stalled
    /// request body, a response the client does not read, a silent HTTP/2 connection)
    /// before it is closed.
    #[arg(
        long,
        env = "CONVERGER_IDLE_TIMEOUT_SECS",
        default_value_t = 120,
        global = true
    )]
    pub idle_timeout_secs: u64,

    /// Run delivery workers on this node. Turn off for API-only nodes.
    #[arg(long, env = "CONVERGER_DELIVERY_ENABLED", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub delivery_enabled: bool,

    /// Delivery attempts in flight on this node (HTTP requests to receivers; database
    /// connections are not held while waiting on a receiver).
    #[arg(
        long,
        env = "CONVERGER_DELIVERY_CONCURRENCY",
        default_value_t = 256,
        global = true
    )]
    pub delivery_concurrency: usize,

    /// Multiplies every retry wait (30 s, 90 s, 270 s, 810 s and `Retry-After`); a small
    /// value runs the whole schedule in moments, for tests.
    #[arg(
        long,
        env = "CONVERGER_DELIVERY_BACKOFF_SCALE",
        default_value_t = 1.0,
        global = true
    )]
    pub delivery_backoff_scale: f64,

    /// Seconds a claimed delivery stays leased to this node. If the node dies, another
    /// takes the delivery over after this; every attempt times out well before it.
    #[arg(
        long,
        env = "CONVERGER_DELIVERY_LEASE_SECS",
        default_value_t = 90,
        global = true
    )]
    pub delivery_lease_secs: u64,

    /// Seconds between this node's heartbeats in the node registry. A node silent for
    /// three of them is taken for dead, and its delivery leases are given back at once
    /// instead of at expiry.
    #[arg(
        long,
        env = "CONVERGER_NODE_HEARTBEAT_SECS",
        default_value_t = 2,
        global = true
    )]
    pub node_heartbeat_secs: u64,

    /// Delivery attempts to one channel that fail in a row (answers other than 2xx,
    /// timeouts, connection failures) before its circuit breaker opens and its
    /// deliveries wait.
    #[arg(
        long,
        env = "CONVERGER_BREAKER_FAILURES",
        default_value_t = 5,
        global = true
    )]
    pub breaker_failures: u32,

    /// Seconds an open breaker waits before letting one probe through; each further
    /// open without a success doubles it, up to `CONVERGER_BREAKER_MAX_COOLDOWN_SECS`.
    #[arg(
        long,
        env = "CONVERGER_BREAKER_COOLDOWN_SECS",
        default_value_t = 60,
        global = true
    )]
    pub breaker_cooldown_secs: u64,

    /// The longest cool-down of an open breaker, in seconds.
    #[arg(
        long,
        env = "CONVERGER_BREAKER_MAX_COOLDOWN_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub breaker_max_cooldown_secs: u64,

    /// Seconds a channel may fail without a single success before it is paused (shown
    /// as disabled, until resumed); 0 = never. Default: 5 days.
    #[arg(
        long,
        env = "CONVERGER_BREAKER_DISABLE_AFTER_SECS",
        default_value_t = 432_000,
        global = true
    )]
    pub breaker_disable_after_secs: u64,

    /// API requests per second from one client address (bursts of twice that); 0 = off.
    /// Limits hold per node.
    #[arg(
        long,
        env = "CONVERGER_RATE_LIMIT_PER_IP",
        default_value_t = 2000,
        global = true
    )]
    pub rate_limit_per_ip: u32,

    /// API requests per second of one tenant (bursts of twice that); 0 = off.
    #[arg(
        long,
        env = "CONVERGER_RATE_LIMIT_PER_TENANT",
        default_value_t = 5000,
        global = true
    )]
    pub rate_limit_per_tenant: u32,

    /// Inbound webhook requests per second of one channel (bursts of twice that); 0 = off.
    #[arg(
        long,
        env = "CONVERGER_RATE_LIMIT_INBOUND_PER_CHANNEL",
        default_value_t = 500,
        global = true
    )]
    pub rate_limit_inbound_per_channel: u32,

    /// Client tokens issued per minute to one client address; 0 = off.
    #[arg(
        long,
        env = "CONVERGER_RATE_LIMIT_TOKENS_PER_MINUTE",
        default_value_t = 10,
        global = true
    )]
    pub rate_limit_tokens_per_minute: u32,

    /// Client tokens issued per minute to one tenant's application, authenticated with
    /// its API key (bursts of the whole minute's worth); 0 = off. Requests with a
    /// channel token, which may come from browsers, count per address instead
    /// (`CONVERGER_RATE_LIMIT_TOKENS_PER_MINUTE`).
    #[arg(
        long,
        env = "CONVERGER_RATE_LIMIT_TOKENS_PER_TENANT_PER_MINUTE",
        default_value_t = 600,
        global = true
    )]
    pub rate_limit_tokens_per_tenant_per_minute: u32,

    /// Browser origins allowed to call the API (CORS): comma-separated exact origins,
    /// or `*` for any (development). Unset: no CORS headers.
    #[arg(long, env = "CONVERGER_CORS_ORIGINS", global = true)]
    pub cors_origins: Option<String>,

    /// Addresses allowed into `/admin`: comma-separated CIDRs or addresses, IPv4 and IPv6.
    // `std::vec::Vec` keeps clap from taking the list for a repeated flag: the whole
    // comma-separated value is one argument, parsed by `parse_cidrs`.
    #[arg(
        long,
        env = "CONVERGER_ADMIN_ALLOWED_IPS",
        default_value = "127.0.0.1/32,::1/128",
        value_parser = parse_cidrs,
        global = true
    )]
    pub admin_allowed_ips: std::vec::Vec<IpNet>,

    /// When set, `/admin` also asks for this password (a signed, HttpOnly session
    /// cookie afterwards; scripts send it as `Authorization: Bearer`).
    #[arg(
        long,
        env = "CONVERGER_ADMIN_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub admin_password: Option<String>,

    /// Networks outbound requests may reach although they are not public (loopback,
    /// private, link-local, ...): comma-separated CIDRs. Unset: channel URLs and
    /// provider base URLs must resolve to public addresses only.
    #[arg(
        long,
        env = "CONVERGER_EGRESS_ALLOW",
        default_value = "",
        value_parser = parse_cidrs,
        global = true
    )]
    pub egress_allow: std::vec::Vec<IpNet>,

    /// Proxies whose `X-Forwarded-For` (and, for `CONVERGER_FORCE_HTTPS`,
    /// `X-Forwarded-Proto`) is believed: comma-separated CIDRs. Unset: the TCP peer is
    /// the client.
    #[arg(
        long,
        env = "CONVERGER_TRUSTED_PROXIES",
        default_value = "",
        value_parser = parse_cidrs,
        global = true
    )]
    pub trusted_proxies: std::vec::Vec<IpNet>,

    /// Delete activities older than this many days whose deliveries all succeeded
    /// (checked hourly). Unset: keep everything. `converger prune` does the same once.
    #[arg(long, env = "CONVERGER_PRUNE_AFTER_DAYS", global = true)]
    pub prune_after_days: Option<u64>,

    /// Close active conversations that had no activity for this many hours (fractions
    /// allowed), recording each close as a `conversationUpdate` activity. Checked by
    /// every node every `CONVERGER_CONVERSATION_IDLE_CHECK_SECS`. Unset: never.
    #[arg(long, env = "CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS", global = true)]
    pub conversation_idle_close_hours: Option<f64>,

    /// Seconds between two looks of the idle closer for idle conversations.
    #[arg(
        long,
        env = "CONVERGER_CONVERSATION_IDLE_CHECK_SECS",
        default_value_t = 60,
        global = true
    )]
    pub conversation_idle_check_secs: u64,

    /// PEM file of the certificate chain to serve HTTPS and WSS with, leaf first.
    /// Needs `CONVERGER_TLS_KEY`. Unset: plain HTTP (behind a TLS-terminating proxy).
    #[arg(long, env = "CONVERGER_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM file of the private key of `CONVERGER_TLS_CERT` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CONVERGER_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Behind a TLS-terminating proxy: answer plain-HTTP requests with a 308 redirect to
    /// https (`/health`, `/ready` and `/metrics` excepted) and send
    /// `Strict-Transport-Security` on HTTPS responses. The scheme is read from
    /// `X-Forwarded-Proto` of `CONVERGER_TRUSTED_PROXIES` only. The redirect goes to
    /// `CONVERGER_PUBLIC_URL`'s host when that is https, else to the request's host.
    #[arg(long, env = "CONVERGER_FORCE_HTTPS", default_value_t = false, action = clap::ArgAction::Set, global = true)]
    pub force_https: bool,

    /// Seconds between a shutdown signal (SIGTERM, Ctrl-C) and closing the listener.
    /// Meanwhile `/ready` answers 503 and everything else is served, so that load
    /// balancers stop sending traffic before connections are refused.
    #[arg(
        long,
        env = "CONVERGER_SHUTDOWN_DELAY_SECS",
        default_value_t = 0,
        global = true
    )]
    pub shutdown_delay_secs: u64,

    /// Seconds that in-flight requests and delivery attempts get to finish once the
    /// listener is closed. Then they are abandoned: the deliveries' leases are given
    /// back, so another node takes them over at once.
    #[arg(
        long,
        env = "CONVERGER_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    pub shutdown_timeout_secs: u64,
}

/// Shortest accepted JWT secret.
const MIN_JWT_SECRET_BYTES: usize = 32;
/// Longest shutdown delay or timeout: a larger value is taken for milliseconds given
/// as seconds, and would also overflow deadline arithmetic.
const MAX_SHUTDOWN_SECS: u64 = 3600;
/// Longest idle time before closing that `CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS` takes
/// (ten years): beyond it, leave the setting unset.
const MAX_IDLE_CLOSE_HOURS: f64 = 87_600.0;

impl Default for Config {
    /// The defaults of the clap definition: what `converger` runs with when no flag
    /// and no `CONVERGER_*` variable is given. The environment is not read.
    fn default() -> Self {
        let command = Config::augment_args(clap::Command::new("converger"))
            .no_binary_name(true)
            .mut_args(|arg| arg.env(None));
        let parsed = command
            .try_get_matches_from(std::iter::empty::<String>())
            .and_then(|matches| Config::from_arg_matches(&matches));
        parsed.unwrap_or_else(|e| unreachable!("the defaults of the clap definition parse: {e}"))
    }
}

impl Config {
    /// A configuration with every default over `database_url`, listening on an
    /// ephemeral loopback port, for tests and embedding.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }

    /// Checks the rules that span settings; reports every problem at once.
    ///
    /// # Errors
    /// One line per broken rule.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let backend = Backend::from_url(&self.database_url);
        if backend.is_none() {
            problems.push(format!(
                "CONVERGER_DATABASE_URL `{}` is neither sqlite://PATH nor postgres://...",
                redact_url(&self.database_url)
            ));
        }
        match &self.jwt_secret {
            Some(secret) if secret.len() < MIN_JWT_SECRET_BYTES => problems.push(format!(
                "CONVERGER_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes"
            )),
            None if backend == Some(Backend::Postgres) => problems.push(
                "CONVERGER_JWT_SECRET is required with PostgreSQL, so that every node signs \
                 and verifies tokens with the same key"
                    .into(),
            ),
            _ => {}
        }
        problems.extend(self.secret_key_problems());
        match url::Url::parse(&self.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(format!(
                "CONVERGER_PUBLIC_URL `{}` is not an http(s) URL",
                self.public_url
            )),
        }
        if self.database_max_connections == 0 {
            problems.push("CONVERGER_DATABASE_MAX_CONNECTIONS must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            problems.push("CONVERGER_MAX_BODY_BYTES must be at least 1024".into());
        }
        for (name, value) in [
            (
                "CONVERGER_SOCKET_IDLE_TIMEOUT_SECS",
                self.socket_idle_timeout_secs,
            ),
            (
                "CONVERGER_SOCKET_MAX_CHANNELS",
                self.socket_max_channels as u64,
            ),
            (
                "CONVERGER_SOCKET_PUSH_RATE",
                u64::from(self.socket_push_rate),
            ),
            (
                "CONVERGER_SOCKET_OUTBOUND_QUEUE",
                self.socket_outbound_queue as u64,
            ),
            (
                "CONVERGER_SOCKET_SEND_TIMEOUT_SECS",
                self.socket_send_timeout_secs,
            ),
            ("CONVERGER_LONGPOLL_WINDOW_SECS", self.longpoll_window_secs),
            (
                "CONVERGER_MAX_CONNECTIONS",
                self.max_connections.map_or(1, |n| n as u64),
            ),
            (
                "CONVERGER_HEADER_READ_TIMEOUT_SECS",
                self.header_read_timeout_secs,
            ),
            ("CONVERGER_IDLE_TIMEOUT_SECS", self.idle_timeout_secs),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.delivery_concurrency == 0 {
            problems.push("CONVERGER_DELIVERY_CONCURRENCY must be at least 1".into());
        }
        if !self.delivery_backoff_scale.is_finite() || self.delivery_backoff_scale < 0.0 {
            problems.push("CONVERGER_DELIVERY_BACKOFF_SCALE must be a number ≥ 0".into());
        }
        if let Some(origins) = &self.cors_origins {
            for origin in origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty() && *o != "*")
            {
                let valid = url::Url::parse(origin).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.path() == "/"
                        && !origin.ends_with('/')
                });
                if !valid {
                    problems.push(format!(
                        "CONVERGER_CORS_ORIGINS: `{origin}` is not an origin like https://app.example.com"
                    ));
                }
            }
        }
        if self.admin_password.as_deref().is_some_and(|p| p.len() < 8) {
            problems.push("CONVERGER_ADMIN_PASSWORD must be at least 8 characters".into());
        }
        if self.prune_after_days == Some(0) {
            problems.push("CONVERGER_PRUNE_AFTER_DAYS must be at least 1 when set".into());
        }
        if let Some(hours) = self.conversation_idle_close_hours
            && !(hours.is_finite() && hours > 0.0 && hours <= MAX_IDLE_CLOSE_HOURS)
        {
            problems.push(format!(
                "CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS must be above 0 and at most \
                 {MAX_IDLE_CLOSE_HOURS} when set"
            ));
        }
        if self.conversation_idle_check_secs == 0 {
            problems.push("CONVERGER_CONVERSATION_IDLE_CHECK_SECS must be at least 1".into());
        }
        if self.delivery_lease_secs == 0 {
            problems.push("CONVERGER_DELIVERY_LEASE_SECS must be at least 1".into());
        }
        if self.node_heartbeat_secs == 0 {
            problems.push("CONVERGER_NODE_HEARTBEAT_SECS must be at least 1".into());
        }
        if self.breaker_failures == 0 {
            problems.push("CONVERGER_BREAKER_FAILURES must be at least 1".into());
        }
        if self.breaker_cooldown_secs == 0 {
            problems.push("CONVERGER_BREAKER_COOLDOWN_SECS must be at least 1".into());
        }
        if self.breaker_max_cooldown_secs < self.breaker_cooldown_secs {
            problems.push(
                "CONVERGER_BREAKER_MAX_COOLDOWN_SECS must be at least CONVERGER_BREAKER_COOLDOWN_SECS"
                    .into(),
            );
        }
        if self.socket_max_frame_bytes < 1024 {
            problems.push("CONVERGER_SOCKET_MAX_FRAME_BYTES must be at least 1024".into());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                problems.push("CONVERGER_TLS_CERT is set without CONVERGER_TLS_KEY".into())
            }
            (None, Some(_)) => {
                problems.push("CONVERGER_TLS_KEY is set without CONVERGER_TLS_CERT".into())
            }
            _ => {}
        }
        for (name, path) in [
            ("CONVERGER_TLS_CERT", &self.tls_cert),
            ("CONVERGER_TLS_KEY", &self.tls_key),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                problems.push(format!("{name} must name a file when set"));
            }
        }
        if self.shutdown_delay_secs > MAX_SHUTDOWN_SECS {
            problems.push(format!(
                "CONVERGER_SHUTDOWN_DELAY_SECS must be at most {MAX_SHUTDOWN_SECS}"
            ));
        }
        if !(1..=MAX_SHUTDOWN_SECS).contains(&self.shutdown_timeout_secs) {
            problems.push(format!(
                "CONVERGER_SHUTDOWN_TIMEOUT_SECS must be between 1 and {MAX_SHUTDOWN_SECS}"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// What is wrong with `CONVERGER_SECRET_KEY` and `CONVERGER_SECRET_KEY_PREVIOUS`.
    fn secret_key_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(key) = &self.secret_key
            && let Err(e) = SecretKey::from_base64(key)
        {
            problems.push(format!("CONVERGER_SECRET_KEY {e}: give base64 of {KEY_BYTES} random bytes (openssl rand -base64 32)"));
        }
        for (i, key) in self.previous_secret_keys().enumerate() {
            if let Err(e) = SecretKey::from_base64(key) {
                problems.push(format!("CONVERGER_SECRET_KEY_PREVIOUS: key {} {e}", i + 1));
            }
        }
        if self.secret_key.is_none() && self.previous_secret_keys().next().is_some() {
            problems.push(
                "CONVERGER_SECRET_KEY_PREVIOUS is set without CONVERGER_SECRET_KEY, the key \
                 that replaces them"
                    .into(),
            );
        }
        problems
    }

    /// The entries of `CONVERGER_SECRET_KEY_PREVIOUS`, blanks skipped.
    pub fn previous_secret_keys(&self) -> impl Iterator<Item = &str> {
        self.secret_key_previous
            .iter()
            .flat_map(|keys| keys.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
    }

    /// The file of an SQLite database, as the URL names it (relative to the working
    /// directory unless absolute); `None` for PostgreSQL and in-memory databases.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        let path = self
            .database_url
            .strip_prefix("sqlite://")
            .or_else(|| self.database_url.strip_prefix("sqlite:"))?;
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path.contains(":memory:") {
            return None;
        }
        Some(PathBuf::from(path))
    }

    /// The database as the CLI names it: an SQLite file by its absolute path
    /// (`sqlite:///srv/converger.db`), a PostgreSQL URL without its password or its
    /// parameters (which may hold one).
    pub fn database_display(&self) -> String {
        if let Some(file) = self.sqlite_file() {
            let absolute = std::path::absolute(&file).unwrap_or(file);
            return format!("sqlite://{}", absolute.display());
        }
        match url::Url::parse(&self.database_url) {
            Ok(mut url) if Backend::from_url(&self.database_url) == Some(Backend::Postgres) => {
                let _ = url.set_password(None);
                url.set_query(None);
                url.to_string()
            }
            _ => redact_url(&self.database_url),
        }
    }

    /// Where an SQLite installation keeps a key it generated, `<file><suffix>`, if
    /// this is one with a file.
    fn sqlite_key_path(&self, suffix: &str) -> Option<PathBuf> {
        let mut path = self.sqlite_file()?.into_os_string();
        path.push(suffix);
        Some(PathBuf::from(path))
    }

    /// Where the generated JWT secret of an SQLite installation is kept, if this is one.
    pub fn sqlite_jwt_secret_path(&self) -> Option<PathBuf> {
        self.sqlite_key_path(".jwt-secret")
    }

    /// Where the generated encryption key of an SQLite installation is kept, if this is
    /// one.
    pub fn sqlite_secret_key_path(&self) -> Option<PathBuf> {
        self.sqlite_key_path(".secret-key")
    }

    /// How long a conversation may go without an activity before the idle closer
    /// closes it, if it is on (`CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS`, validated).
    pub fn conversation_idle_close(&self) -> Option<std::time::Duration> {
        self.conversation_idle_close_hours
            .and_then(|hours| std::time::Duration::try_from_secs_f64(hours * 3600.0).ok())
            .filter(|d| !d.is_zero())
    }

    /// `public_url` without a trailing slash.
    pub fn public_base(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}

/// Why a command line did not become a configuration.
#[derive(Debug)]
pub enum CliError {
    /// Help, version, an unknown flag, a missing subcommand: clap's own answer, shown
    /// as clap shows it ([`clap::Error::exit`]).
    Clap(clap::Error),
    /// Every setting with a value that does not parse, then every rule between settings
    /// that the others break: one line each.
    Invalid(Vec<String>),
}

/// Parses a command line of `P`, whose settings include the [`Config`] that `config`
/// reaches, reporting every bad setting at once.
///
/// clap stops at the first value it cannot parse. Here each such setting is noted and
/// set aside (its flag dropped, its variable ignored) and the command line parsed
/// again, until the rest parses; then [`Config::validate`] adds the problems between
/// settings. A bad number in one variable and a bad network in another are so reported
/// in one run.
///
/// # Errors
/// [`CliError::Invalid`] listing every problem, or [`CliError::Clap`] when the command
/// line is wrong in another way (or asks for help).
pub fn parse_all<P: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<OsString>>,
    config: impl Fn(&P) -> &Config,
) -> Result<P, CliError> {
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = P::command();
    let mut set_aside = HashSet::new();
    let mut problems = Vec::new();
    loop {
        let error = match command.clone().try_get_matches_from(args.clone()) {
            Ok(matches) => {
                let parsed = P::from_arg_matches(&matches).map_err(CliError::Clap)?;
                if let Err(more) = config(&parsed).validate() {
                    problems.extend(more);
                }
                return if problems.is_empty() {
                    Ok(parsed)
                } else {
                    Err(CliError::Invalid(problems))
                };
            }
            Err(error) => error,
        };
        let bad_value = matches!(
            error.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        );
        let culprit = bad_value
            .then(|| culprit(&command, &error))
            .flatten()
            .filter(|arg| !set_aside.contains(arg.get_id()));
        let Some(arg) = culprit else {
            if problems.is_empty() {
                return Err(CliError::Clap(error));
            }
            problems.push(first_line(&error));
            return Err(CliError::Invalid(problems));
        };
        problems.push(value_problem(&arg, &error));
        if let Some(long) = arg.get_long() {
            drop_flag(&mut args, long);
        }
        set_aside.insert(arg.get_id().clone());
        command = command.mut_arg(arg.get_id().clone(), |a| a.env(None));
    }
}

/// The argument of `command` that `error` names.
fn culprit(command: &clap::Command, error: &clap::Error) -> Option<clap::Arg> {
    let Some(ContextValue::String(named)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // `--listen <LISTEN>`: the flag names the argument.
    let long = named.split(' ').next()?.strip_prefix("--")?;
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .cloned()
}

/// `CONVERGER_LISTEN `abc`: invalid socket address syntax`, the value left out for
/// settings whose values are secret.
fn value_problem(arg: &clap::Arg, error: &clap::Error) -> String {
    let name = arg.get_env().map_or_else(
        || format!("--{}", arg.get_long().unwrap_or_default()),
        |env| env.to_string_lossy().into_owned(),
    );
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) if !arg.is_hide_env_values_set() => {
            format!(" `{value}`")
        }
        _ => String::new(),
    };
    let why = match std::error::Error::source(error) {
        Some(cause) => cause.to_string(),
        None => match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => format!("must be one of {}", valid.join(", ")),
            _ => "invalid value".to_owned(),
        },
    };
    format!("{name}{value}: {why}")
}

/// The first line of clap's message, without its `error: ` label.
fn first_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// Removes `--long VALUE` and `--long=VALUE` from a command line (its first item, the
/// program, kept).
fn drop_flag(args: &mut Vec<OsString>, long: &str) {
    let flag = format!("--{long}");
    let with_value = format!("{flag}=");
    let mut kept = Vec::with_capacity(args.len());
    let mut items = std::mem::take(args).into_iter();
    if let Some(program) = items.next() {
        kept.push(program);
    }
    while let Some(item) = items.next() {
        match item.to_str() {
            Some(s) if s == flag => {
                items.next();
            }
            Some(s) if s.starts_with(&with_value) => {}
            _ => kept.push(item),
        }
    }
    *args = kept;
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "***"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .field(
                "secret_key_previous",
                &self.secret_key_previous.as_ref().map(|_| "***"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("log_format", &self.log_format)
            .field("socket_idle_timeout_secs", &self.socket_idle_timeout_secs)
            .field("socket_max_frame_bytes", &self.socket_max_frame_bytes)
            .field("socket_max_channels", &self.socket_max_channels)
            .field("socket_push_rate", &self.socket_push_rate)
            .field("socket_outbound_queue", &self.socket_outbound_queue)
            .field("socket_send_timeout_secs", &self.socket_send_timeout_secs)
            .field("longpoll_window_secs", &self.longpoll_window_secs)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("delivery_enabled", &self.delivery_enabled)
            .field("delivery_concurrency", &self.delivery_concurrency)
            .field("delivery_backoff_scale", &self.delivery_backoff_scale)
            .field("delivery_lease_secs", &self.delivery_lease_secs)
            .field("node_heartbeat_secs", &self.node_heartbeat_secs)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown_secs", &self.breaker_cooldown_secs)
            .field("breaker_max_cooldown_secs", &self.breaker_max_cooldown_secs)
            .field(
                "breaker_disable_after_secs",
                &self.breaker_disable_after_secs,
            )
            .field("prune_after_days", &self.prune_after_days)
            .field(
                "conversation_idle_close_hours",
                &self.conversation_idle_close_hours,
            )
            .field(
                "conversation_idle_check_secs",
                &self.conversation_idle_check_secs,
            )
            .field("rate_limit_per_ip", &self.rate_limit_per_ip)
            .field("rate_limit_per_tenant", &self.rate_limit_per_tenant)
            .field(
                "rate_limit_inbound_per_channel",
                &self.rate_limit_inbound_per_channel,
            )
            .field(
                "rate_limit_tokens_per_minute",
                &self.rate_limit_tokens_per_minute,
            )
            .field(
                "rate_limit_tokens_per_tenant_per_minute",
                &self.rate_limit_tokens_per_tenant_per_minute,
            )
            .field("cors_origins", &self.cors_origins)
            .field("admin_allowed_ips", &self.admin_allowed_ips)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "***"),
            )
            .field("egress_allow", &self.egress_allow)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("force_https", &self.force_https)
            .field("shutdown_delay_secs", &self.shutdown_delay_secs)
            .field("shutdown_timeout_secs", &self.shutdown_timeout_secs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_comes_from_the_clap_definition() {
        let defaults = Config::default();
        // What `converger` parses with no flag and no `CONVERGER_*` variable set.
        let command =
            Config::augment_args(clap::Command::new("converger")).mut_args(|arg| arg.env(None));
        let matches = command.try_get_matches_from(["converger"]).unwrap();
        assert_eq!(Config::from_arg_matches(&matches).unwrap(), defaults);
        assert_eq!(defaults.database_url, "sqlite://converger.db");
        assert_eq!(defaults.listen, SocketAddr::from(([0, 0, 0, 0], 4000)));
        assert_eq!(
            defaults.admin_allowed_ips,
            parse_cidrs("127.0.0.1/32,::1/128").unwrap()
        );
        assert!(defaults.trusted_proxies.is_empty());
        assert!(defaults.egress_allow.is_empty());
        // `Config::new` differs in the database and the listen address only.
        let new = Config::new("sqlite::memory:");
        assert_eq!(new.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(
            Config {
                database_url: defaults.database_url.clone(),
                listen: defaults.listen,
                ..new
            },
            defaults
        );
    }

    #[test]
    fn address_lists_are_parsed_when_loaded() {
        let command =
            Config::augment_args(clap::Command::new("converger")).mut_args(|arg| arg.env(None));
        let matches = command
            .clone()
            .try_get_matches_from(["converger", "--trusted-proxies", "10.0.0.0/8, 192.0.2.1"])
            .unwrap();
        let config = Config::from_arg_matches(&matches).unwrap();
        assert_eq!(
            config.trusted_proxies,
            parse_cidrs("10.0.0.0/8,192.0.2.1/32").unwrap()
        );
        let refused = command
            .try_get_matches_from(["converger", "--admin-allowed-ips", "10.0.0.0/8,nonsense"])
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("`nonsense` is not an IP network")
        );
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::new("sqlite://converger.db").validate(), Ok(()));
    }

    #[test]
    fn reports_every_problem() {
        let mut c = Config::new("postgres://u:pw@h/db");
        c.public_url = "nope".into();
        c.database_max_connections = 0;
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("CONVERGER_JWT_SECRET"));
        c.jwt_secret = Some("short".into());
        assert!(c.validate().unwrap_err()[0].contains("at least 32 bytes"));
    }

    #[test]
    fn idle_close_is_off_unless_set_to_a_positive_time() {
        let mut c = Config::new("sqlite://converger.db");
        assert_eq!(c.conversation_idle_close(), None);
        c.conversation_idle_close_hours = Some(0.5);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.conversation_idle_close(),
            Some(std::time::Duration::from_secs(1800))
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            c.conversation_idle_close_hours = Some(bad);
            let problems = c.validate().unwrap_err();
            assert!(
                problems[0].contains("CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS"),
                "{bad}: {problems:?}"
            );
        }
        c.conversation_idle_close_hours = None;
        c.conversation_idle_check_secs = 0;
        assert!(c.validate().unwrap_err()[0].contains("IDLE_CHECK_SECS"));
    }

    #[test]
    fn socket_limits_must_be_positive() {
        let mut c = Config::new("sqlite://converger.db");
        c.socket_push_rate = 0;
        c.socket_outbound_queue = 0;
        c.socket_max_frame_bytes = 10;
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("CONVERGER_SOCKET_PUSH_RATE"));
    }

    #[test]
    fn breaker_settings_are_checked_together() {
        let mut c = Config::new("sqlite://converger.db");
        c.breaker_failures = 0;
        c.breaker_cooldown_secs = 120;
        c.breaker_max_cooldown_secs = 60;
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("CONVERGER_BREAKER_FAILURES"));
        assert!(problems[1].contains("CONVERGER_BREAKER_MAX_COOLDOWN_SECS"));
        c.breaker_failures = 1;
        c.breaker_cooldown_secs = 0;
        c.breaker_max_cooldown_secs = 0;
        assert!(c.validate().unwrap_err()[0].contains("CONVERGER_BREAKER_COOLDOWN_SECS"));
        c.breaker_cooldown_secs = 60;
        c.breaker_max_cooldown_secs = 60;
        c.breaker_disable_after_secs = 0;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn tls_needs_both_files_and_shutdown_bounds() {
        let mut c = Config::new("sqlite://converger.db");
        c.tls_cert = Some("cert.pem".into());
        c.shutdown_timeout_secs = 0;
        c.shutdown_delay_secs = 86_400;
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("without CONVERGER_TLS_KEY"));
        assert!(problems[1].contains("CONVERGER_SHUTDOWN_DELAY_SECS"));
        assert!(problems[2].contains("CONVERGER_SHUTDOWN_TIMEOUT_SECS"));
        c.tls_cert = None;
        c.tls_key = Some("key.pem".into());
        c.shutdown_timeout_secs = 30;
        c.shutdown_delay_secs = 10;
        assert!(c.validate().unwrap_err()[0].contains("without CONVERGER_TLS_CERT"));
        c.tls_cert = Some("".into());
        assert!(c.validate().unwrap_err()[0].contains("CONVERGER_TLS_CERT must name a file"));
        c.tls_cert = Some("cert.pem".into());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut c = Config::new("postgres://u:hunter2@h/db");
        c.jwt_secret = Some("x".repeat(40));
        c.secret_key = Some(SecretKey::generate().to_base64());
        c.secret_key_previous = Some(SecretKey::generate().to_base64());
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains(&"x".repeat(40)));
        assert!(!shown.contains(c.secret_key.as_deref().unwrap()));
        assert!(!shown.contains(c.secret_key_previous.as_deref().unwrap()));
    }

    #[test]
    fn secret_keys_are_base64_of_32_bytes_and_every_bad_one_is_named() {
        let mut c = Config::new("sqlite://converger.db");
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        c.secret_key = Some(a.to_base64());
        c.secret_key_previous = Some(format!("{}, ,{}", b.to_base64(), a.to_base64()));
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.previous_secret_keys().count(), 2);
        c.secret_key = Some("short".into());
        c.secret_key_previous = Some(format!("{},%%%,c2hvcnQ=", b.to_base64()));
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("CONVERGER_SECRET_KEY "),
            "{problems:?}"
        );
        assert!(problems[1].contains("key 2 is not base64"), "{problems:?}");
        assert!(
            problems[2].contains("key 3 must be 32 bytes"),
            "{problems:?}"
        );
        c.secret_key = None;
        c.secret_key_previous = Some(b.to_base64());
        assert!(c.validate().unwrap_err()[0].contains("without CONVERGER_SECRET_KEY"));
    }

    /// A command line of settings alone, as `converger` parses them.
    #[derive(clap::Parser, Debug)]
    struct Settings {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Settings, CliError> {
        let args = std::iter::once("converger").chain(args.iter().copied());
        parse_all::<Settings>(args, |s| &s.config)
    }

    fn problems(args: &[&str]) -> Vec<String> {
        match parse(args) {
            Err(CliError::Invalid(problems)) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_unparsable_value_is_reported_with_the_rules_between_settings() {
        let found = problems(&[
            "--delivery-concurrency",
            "lots",
            "--admin-allowed-ips=10.0.0.0/8,nonsense,10.0.0.0/33",
            "--listen",
            "nowhere",
            "--log-format",
            "xml",
            "--database-url",
            "postgres://u:hunter2@h/db",
        ]);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(
            found[0].starts_with("CONVERGER_DELIVERY_CONCURRENCY `lots`: invalid digit"),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("CONVERGER_ADMIN_ALLOWED_IPS")
                    && p.contains("`nonsense`, `10.0.0.0/33` are not IP networks")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("CONVERGER_LISTEN `nowhere`: invalid socket address")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p == "CONVERGER_LOG_FORMAT `xml`: must be one of text, json"),
            "{found:#?}"
        );
        // The rules between settings still run, over the settings that parsed.
        assert!(
            found[4].starts_with("CONVERGER_JWT_SECRET is required with PostgreSQL"),
            "{found:#?}"
        );
        assert!(!format!("{found:?}").contains("hunter2"));
    }

    #[test]
    fn good_settings_parse_and_other_mistakes_are_clap_s_to_report() {
        let parsed =
            parse(&["--listen", "127.0.0.1:9000", "--trusted-proxies=10.0.0.0/8"]).unwrap();
        assert_eq!(
            parsed.config.listen,
            SocketAddr::from(([127, 0, 0, 1], 9000))
        );
        assert!(matches!(
            parse(&["--no-such-flag"]),
            Err(CliError::Clap(e)) if e.kind() == ErrorKind::UnknownArgument
        ));
    }

    #[test]
    fn secret_file_sits_next_to_the_database() {
        let c = Config::new("sqlite://data/converger.db?mode=rwc");
        assert_eq!(
            c.sqlite_jwt_secret_path(),
            Some(PathBuf::from("data/converger.db.jwt-secret"))
        );
        assert_eq!(
            Config::new("sqlite::memory:").sqlite_jwt_secret_path(),
            None
        );
        assert_eq!(
            c.sqlite_secret_key_path(),
            Some(PathBuf::from("data/converger.db.secret-key"))
        );
        assert_eq!(c.sqlite_file(), Some(PathBuf::from("data/converger.db")));
        assert_eq!(
            Config::new("sqlite:///var/lib/converger.db").sqlite_file(),
            Some(PathBuf::from("/var/lib/converger.db"))
        );
        assert_eq!(Config::new("postgres://h/db").sqlite_file(), None);
        assert_eq!(
            Config::new("sqlite:///var/lib/converger.db?mode=rwc").database_display(),
            "sqlite:///var/lib/converger.db"
        );
        let relative = Config::new("sqlite://converger.db").database_display();
        let expected = std::env::current_dir().unwrap().join("converger.db");
        assert_eq!(relative, format!("sqlite://{}", expected.display()));
        assert_eq!(
            Config::new("postgres://app:hunter2@db.internal:5432/hub?password=x&sslmode=require")
                .database_display(),
            "postgres://app@db.internal:5432/hub"
        );
        assert_eq!(
            Config::new("sqlite::memory:").database_display(),
            "sqlite::memory:"
        );
    }
}
