//! Logging set-up (human-readable or JSON lines, levels from `RUST_LOG`; OTLP trace
//! export with the `otlp` feature) and the
//! request id that ties the log lines of one request together, from the HTTP edge
//! through ingest to every delivery attempt it caused.
//!
//! Below the modules that use it: the edges set the request id, `ingest` and
//! `delivery` read it. It must not import them (nor `http` or `admin`); it knows only
//! the log format of the config.

use std::future::Future;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// What must outlive the program's work for its telemetry to be complete: the trace
/// exporter, flushed when this is dropped.
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.tracer_provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "trace export did not flush");
        }
    }
}

/// Installs the global tracing subscriber. Call once, from `main`, and keep the
/// returned value until the program ends.
pub fn init(format: LogFormat) -> Telemetry {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let (text, json) = match format {
        LogFormat::Text => (
            // Colours only for a person at a terminal, not in files or log shippers.
            Some(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal())),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(tracing_subscriber::fmt::layer().json().flatten_event(true)),
        ),
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    #[cfg(feature = "otlp")]
    {
        let (layer, tracer_provider) = match otlp::tracer_provider() {
            Some(provider) => (Some(otlp::layer(&provider)), Some(provider)),
            None => (None, None),
        };
        registry.with(layer).init();
        Telemetry { tracer_provider }
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.init();
        Telemetry {}
    }
}

/// OpenTelemetry trace export over OTLP/HTTP, configured by the standard
/// `OTEL_EXPORTER_OTLP_*` and `OTEL_SERVICE_NAME` variables. Spans are exported in
/// batches from a thread of their own: a collector that is down or slow costs
/// dropped spans and a warning, never a failed or delayed request.
#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::SpanExporter;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::registry::LookupSpan;

    /// The provider exporting to `OTEL_EXPORTER_OTLP_ENDPOINT`, when it is set.
    pub(super) fn tracer_provider() -> Option<SdkTracerProvider> {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())?;
        let exporter = match SpanExporter::builder().with_http().build() {
            Ok(exporter) => exporter,
            Err(e) => {
                // Logging is not set up yet.
                eprintln!("converger: traces not exported to {endpoint}: {e}");
                return None;
            }
        };
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("converger");
        }
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.build())
                .build(),
        )
    }

    /// The tracing layer turning spans into OpenTelemetry spans.
    pub(super) fn layer<S>(
        provider: &SdkTracerProvider,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("converger"))
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

/// What names this node in the records it leaves (the attempt log): its host name and
/// process id, `host:pid`. Two processes on one host differ by pid; a restarted
/// process gets a new name.
pub fn node_name() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host = if host.is_empty() { "unknown" } else { &host };
    format!("{host}:{}", std::process::id())
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
    fn the_node_is_named_by_host_and_process() {
        let name = node_name();
        let (host, pid) = name.rsplit_once(':').expect("host:pid");
        assert!(!host.is_empty());
        assert_eq!(pid, std::process::id().to_string());
    }

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

    proptest::proptest! {
        /// Whatever a client sends, an id that is taken can neither break a header nor
        /// a log line.
        #[test]
        fn taken_ids_are_safe_anywhere(id in "\\PC{0,200}|[A-Za-z0-9._:-]{1,140}") {
            if valid_request_id(&id) {
                proptest::prop_assert!(axum::http::HeaderValue::from_str(&id).is_ok());
                proptest::prop_assert!(id.len() <= MAX_REQUEST_ID);
                proptest::prop_assert!(!id.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"'));
            }
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
