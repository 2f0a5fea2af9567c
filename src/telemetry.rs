//! Logging set-up (human-readable or JSON lines, levels from `RUST_LOG`) and the
//! request id that ties the log lines of one request together, from the HTTP edge
//! through ingest to every delivery attempt it caused.

use std::future::Future;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Longest request id taken from a client; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// A request id from a client, if it is safe to log and to store: short, and only
/// letters, digits and `-_.:`, so it can never forge a log line.
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new request id.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Runs `future` with `id` as the current request id (see [`current_request_id`]).
pub async fn with_request_id<F: Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// The id of the request the current task serves, if any: set for HTTP handlers,
/// socket sessions (their upgrade request) and delivery attempts (the request that
/// created the activity).
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_taken() {
        for ok in ["a", "0190b7c8-3a4e-7000-8000-000000000000", "req_1.2:3"] {
            assert!(valid_request_id(ok), "{ok}");
        }
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for bad in [
            "",
            "a b",
            "a\nlevel=error forged",
            "ü",
            "a\"b",
            long.as_str(),
        ] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_id_is_scoped_to_its_future() {
        assert_eq!(current_request_id(), None);
        let seen = with_request_id("r1".into(), async { current_request_id() }).await;
        assert_eq!(seen.as_deref(), Some("r1"));
        assert_eq!(current_request_id(), None);
    }
}
