//! PostgreSQL connection set-up.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use super::{Store, StoreOptions, StoreResult};

/// Longest a statement may run before PostgreSQL cancels it, so that a stuck query
/// cannot hold a pooled connection forever. Every statement of the hot path takes
/// milliseconds; the longest legitimate ones (pruning, head repair) work in bounded
/// batches.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a session may sit inside a transaction without sending a statement before
/// PostgreSQL ends it. This node's transactions run their statements back to back;
/// one left open means its node is gone or cut off mid-transaction (a partition,
/// not a refused connection), and its row locks would otherwise stall every node
/// writing the same conversations until TCP gives up, minutes later.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn connect(url: &str, options: &StoreOptions) -> StoreResult<Store> {
    let mut connect = PgConnectOptions::from_str(url)?
        .application_name("converger")
        .options([
            (
                "statement_timeout",
                format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
            ),
            (
                "idle_in_transaction_session_timeout",
                format!("{}ms", IDLE_IN_TRANSACTION_TIMEOUT.as_millis()),
            ),
        ]);
    if tls_pointless(url, std::env::var_os("PGSSLMODE").is_some()) {
        // TLS to a server on this host protects nothing and costs both processes about
        // a tenth of their CPU; a URL (or PGSSLMODE) that asks for TLS still gets it.
        tracing::info!("PostgreSQL on this host without sslmode: connecting without TLS");
        connect = connect.ssl_mode(PgSslMode::Disable);
    }
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await?;
    Ok(Store::Postgres(pool, Default::default()))
}

/// Whether the URL leaves TLS to the default (`prefer`) for a server on this host: a
/// loopback address, `localhost`, or a Unix socket. Remote hosts keep the default.
fn tls_pointless(url: &str, sslmode_from_env: bool) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let mut socket_dir = false;
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" | "ssl-mode" => return false,
            "host" => socket_dir = value.starts_with('/'),
            _ => {}
        }
    }
    if sslmode_from_env {
        return false;
    }
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    socket_dir
        || host.is_empty()
        || host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::tls_pointless;

    #[test]
    fn tls_is_dropped_only_for_this_host_without_an_explicit_mode() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/db",
            "postgres://postgres@localhost/db",
            "postgres://postgres@[::1]:5432/db",
            "postgres:///db?host=/var/run/postgresql",
        ] {
            assert!(tls_pointless(url, false), "{url}");
            assert!(!tls_pointless(url, true), "{url} with PGSSLMODE");
        }
        for url in [
            "postgres://postgres@db.internal:5432/db",
            "postgres://postgres@10.0.0.5/db",
            "postgres://postgres@127.0.0.1/db?sslmode=require",
            "postgres://postgres@localhost/db?sslmode=prefer",
            "not a url",
        ] {
            assert!(!tls_pointless(url, false), "{url}");
        }
    }
}
