//! Counting outcomes and latencies, and printing the report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::Args;

/// How one request ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A complete HTTP response with this status.
    Status(u16),
    /// No complete response: `timeout`, `connect`, `body` or `request`.
    Transport(&'static str),
}

impl Outcome {
    /// Classifies a reqwest error.
    pub fn from_error(e: &reqwest::Error) -> Self {
        Outcome::Transport(if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else if e.is_body() || e.is_decode() {
            "body"
        } else {
            "request"
        })
    }
}

/// Outcomes of the measured requests (and a count of the warm-up ones).
pub struct Stats {
    /// Latency of every measured request, whatever its outcome, in microseconds.
    latency_us: Histogram<u64>,
    created: u64,
    /// Responses other than 201, by status.
    statuses: BTreeMap<u16, u64>,
    /// Requests without a complete response, by kind.
    transport: BTreeMap<&'static str, u64>,
    warmup_requests: u64,
    /// When the last measured request completed.
    last_done: Option<Instant>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            // 1 µs .. 1 h at 3 significant digits; `saturating_record` caps the rest.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            created: 0,
            statuses: BTreeMap::new(),
            transport: BTreeMap::new(),
            warmup_requests: 0,
            last_done: None,
        }
    }

    /// Records one request; `measured` is false during the warm-up.
    pub fn record(&mut self, measured: bool, outcome: Outcome, latency: Duration, done: Instant) {
        if !measured {
            self.warmup_requests += 1;
            return;
        }
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latency_us.saturating_record(us);
        match outcome {
            Outcome::Status(201) => self.created += 1,
            Outcome::Status(s) => *self.statuses.entry(s).or_default() += 1,
            Outcome::Transport(kind) => *self.transport.entry(kind).or_default() += 1,
        }
        self.last_done = self.last_done.max(Some(done));
    }

    /// Adds another worker's counts to these.
    pub fn merge(&mut self, other: Stats) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms share their bounds");
        self.created += other.created;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        for (k, n) in other.transport {
            *self.transport.entry(k).or_default() += n;
        }
        self.warmup_requests += other.warmup_requests;
        self.last_done = self.last_done.max(other.last_done);
    }

    fn measured(&self) -> u64 {
        self.latency_us.len()
    }

    fn errors(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport.values().sum::<u64>()
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }
}

/// The result of a run.
pub struct Report {
    pub stats: Stats,
    /// Start of the measured window (end of the warm-up).
    pub measure_from: Instant,
    /// Open loop only: scheduled measured requests never sent because the in-flight
    /// bound stayed full until the end of the run.
    pub unsent: u64,
    /// `closed` or `open`.
    pub mode: &'static str,
}

impl Report {
    /// The measured window: the requested duration, or longer when the last measured
    /// request completed after it.
    fn window_secs(&self, args: &Args) -> f64 {
        let until_last = self
            .stats
            .last_done
            .map_or(0.0, |t| (t - self.measure_from).as_secs_f64());
        until_last.max(args.duration)
    }

    fn throughput(&self, args: &Args) -> f64 {
        self.stats.created as f64 / self.window_secs(args)
    }

    fn error_map(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        for (s, n) in &self.stats.statuses {
            map.insert(s.to_string(), json!(n));
        }
        for (k, n) in &self.stats.transport {
            map.insert((*k).to_owned(), json!(n));
        }
        map
    }

    /// A few lines for people.
    pub fn human(&self, args: &Args) -> String {
        let s = &self.stats;
        let target = if args.rate > 0.0 {
            format!(
                "{}/s open loop, <= {} in flight",
                args.rate, args.concurrency
            )
        } else {
            format!("max, {} in flight", args.concurrency)
        };
        let errors = if s.errors() == 0 {
            "0".to_owned()
        } else {
            let parts: Vec<String> = self
                .error_map()
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("{} ({})", s.errors(), parts.join(", "))
        };
        format!(
            "== loadgen {label}({target}, {convs} conversations)\n\
             requests     {sent} measured in {window:.1} s (+{warm} in {warmup} s warm-up)\n\
             201 Created  {created}\n\
             errors       {errors}\n\
             unsent       {unsent}\n\
             throughput   {tput:.0} activities/s\n\
             latency ms   p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  max {max:.2}",
            label = if args.label.is_empty() {
                String::new()
            } else {
                format!("{} ", args.label)
            },
            convs = args.conversations,
            sent = s.measured(),
            window = self.window_secs(args),
            warm = s.warmup_requests,
            warmup = args.warmup,
            created = s.created,
            unsent = self.unsent,
            tput = self.throughput(args),
            p50 = s.percentile_ms(0.50),
            p95 = s.percentile_ms(0.95),
            p99 = s.percentile_ms(0.99),
            max = s.max_ms(),
        )
    }

    /// One JSON object on one line, for scripts.
    pub fn json(&self, args: &Args) -> String {
        let s = &self.stats;
        json!({
            "label": args.label,
            "mode": self.mode,
            "target_rate": args.rate,
            "concurrency": args.concurrency,
            "conversations": args.conversations,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "window_s": round2(self.window_secs(args)),
            "sent": s.measured(),
            "created": s.created,
            "errors": s.errors(),
            "errors_by_status": self.error_map(),
            "unsent": self.unsent,
            "throughput": round2(self.throughput(args)),
            "p50_ms": round2(s.percentile_ms(0.50)),
            "p95_ms": round2(s.percentile_ms(0.95)),
            "p99_ms": round2(s.percentile_ms(0.99)),
            "max_ms": round2(s.max_ms()),
        })
        .to_string()
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
